//! The in-memory quota store (phases: admit and settle): one process, nothing
//! to install, and everything is lost on restart.
//!
//! Users are spread over [`SHARDS`] independently locked maps, so requests of
//! different users rarely wait for each other. No lock is held across an
//! `.await` (every method body is synchronous), so `std::sync::Mutex` is
//! enough.
//!
//! Memory is bounded without a background task:
//! - a counter lives until `max(period end, last write) + COUNTER_GRACE`,
//!   exactly like the Redis store's `PEXPIRE`, so a settle that arrives just
//!   after midnight still lands in yesterday's counter and can be read;
//! - reservations live until their deadline;
//! - settled ids are remembered for [`SETTLED_MEMORY`], at most
//!   [`SETTLED_MAX`] per user (the oldest are forgotten first);
//! - expired state of a user is dropped whenever that user is touched, each
//!   shard is swept every [`SWEEP_INTERVAL`] of caller time, and a user with
//!   nothing left is removed;
//! - a new user past `max_users` first triggers a sweep of every shard (at
//!   most once per [`SWEEP_INTERVAL`], so a full store cannot be made to
//!   sweep on every request) that also evicts every user whose periods
//!   have all ended (no live reservation, no counter of a period still
//!   running: only settled ids and counters in their grace), and only then
//!   gets [`StoreError::Full`], counted in
//!   `quota_proxy_memory_store_full_total` (the quota layer logs it and
//!   applies `on_store_error`: 503 under `deny`, forwarded uncounted under
//!   `allow`);
//! - user ids longer than [`MAX_KEY_BYTES`] are kept under their SHA-256
//!   digest, so a key costs at most that many bytes.
//!
//! Every decision uses the `now` passed in; the system clock is never read.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use foldhash::fast::RandomState;

use super::{
    Admission, PeriodCounts, PeriodUsage, QuotaStore, Reservation, ReservationId, ReserveRequest,
    StoreError,
};
use crate::periods::{Period, PeriodLabel, PeriodWindow, PeriodWindows};

/// Maps and sets of the store, hashed with foldhash (randomly seeded per
/// map): ids and user names are short strings, hashed several times per
/// call, where std's SipHash was 2% of a flagged request's CPU.
type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;
type HashSet<T> = std::collections::HashSet<T, RandomState>;

/// Longest user id kept as it is; a longer one is kept as `sha256:<hex>`.
pub(super) const MAX_KEY_BYTES: usize = 128;

/// The key `user` is kept under: itself, or its digest when longer than
/// [`MAX_KEY_BYTES`] (ids come from a trusted identity, but a header front
/// may pass along whatever a client sent).
pub(super) fn user_key(user: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    if user.len() <= MAX_KEY_BYTES {
        return std::borrow::Cow::Borrowed(user);
    }
    let digest = sha2::Sha256::digest(user.as_bytes());
    let mut key = String::with_capacity(7 + 64);
    key.push_str("sha256:");
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    std::borrow::Cow::Owned(key)
}

/// How many independently locked maps users are spread over.
const SHARDS: usize = 32;

/// How long a counter outlives its period (and its last write), so usage
/// reported just after a period ended still counts in that period. Shared
/// with the Redis store so both behave the same.
pub(super) const COUNTER_GRACE: TimeDelta = TimeDelta::hours(1);

/// How long a settled reservation id is remembered, so a retried settle
/// counts once. A day covers any retry the proxy makes (they follow within
/// seconds) with a wide margin. Shared with the Redis store.
pub(super) const SETTLED_MEMORY: TimeDelta = TimeDelta::hours(24);

/// Most settled ids remembered per user; past it the oldest are forgotten
/// first, so one busy user cannot grow without bound. Shared with the Redis
/// store.
pub(super) const SETTLED_MAX: usize = 4096;

/// How often (in caller time) a shard drops expired state of users nobody
/// touched, and the shortest gap between two sweeps of the whole store when
/// it is full.
const SWEEP_INTERVAL: TimeDelta = TimeDelta::minutes(1);

/// The in-memory store: sharded, bounded, for a single proxy instance.
#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Users held across all shards; a slot is taken before a user is
    /// inserted, so the bound holds under concurrency.
    users: AtomicUsize,
    max_users: usize,
    /// When the whole store was last swept because it was full.
    last_full_sweep: Mutex<Option<DateTime<Utc>>>,
}

#[derive(Debug, Default)]
struct Shard {
    users: HashMap<String, UserState>,
    next_sweep: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct UserState {
    /// Settled usage per period label; few entries (three current periods,
    /// maybe the previous ones within their grace), so a scan beats a map.
    counters: Vec<Counter>,
    /// Live reservation id → deadline.
    reservations: HashMap<ReservationId, DateTime<Utc>>,
    /// Settled ids, for idempotency, and the same ids oldest first with
    /// when each is forgotten.
    settled: HashSet<ReservationId>,
    settled_order: VecDeque<(DateTime<Utc>, ReservationId)>,
}

#[derive(Debug)]
struct Counter {
    label: PeriodLabel,
    /// When the period ends (its counter lives on for `COUNTER_GRACE`).
    period_end: DateTime<Utc>,
    value: u64,
    expires_at: DateTime<Utc>,
}

impl MemoryStore {
    /// An empty store that holds at most `max_users` users at once.
    pub fn new(max_users: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::default(),
            users: AtomicUsize::new(0),
            max_users,
            last_full_sweep: Mutex::new(None),
        }
    }

    fn shard(&self, user: &str) -> MutexGuard<'_, Shard> {
        // The hasher is randomly keyed per store, so a client choosing user
        // ids cannot pile every user onto one shard.
        let index = (self.hasher.hash_one(user) % SHARDS as u64) as usize;
        lock(&self.shards[index])
    }

    /// Runs `f` on the state of `user` at `now`, after dropping what expired.
    ///
    /// A user not held yet is created only when `create` is set (taking one of
    /// the `max_users` slots); otherwise `f` sees an empty state that is
    /// thrown away. A user left with nothing is removed.
    fn with_user<T>(
        &self,
        user: &str,
        now: DateTime<Utc>,
        create: bool,
        f: impl FnOnce(&mut UserState) -> T,
    ) -> Result<T, StoreError> {
        let user = &*user_key(user);
        let mut shard = self.shard(user);
        self.sweep_if_due(&mut shard, now);
        if let Some(state) = shard.users.get_mut(user) {
            state.expire(now);
            let answer = f(state);
            if state.is_empty() {
                shard.users.remove(user);
                self.users.fetch_sub(1, Ordering::Relaxed);
            }
            return Ok(answer);
        }
        if !create {
            return Ok(f(&mut UserState::default()));
        }
        if !self.take_slot() {
            // Sweeping locks every shard in turn, so this one must be
            // released first; another call may insert the user meanwhile.
            drop(shard);
            self.sweep_all_if_allowed(now);
            shard = self.shard(user);
            if shard.users.contains_key(user) {
                drop(shard);
                return self.with_user(user, now, create, f);
            }
            if !self.take_slot() {
                metrics::counter!("quota_proxy_memory_store_full_total").increment(1);
                return Err(StoreError::Full(self.max_users));
            }
        }
        let mut state = UserState::default();
        let answer = f(&mut state);
        if state.is_empty() {
            self.users.fetch_sub(1, Ordering::Relaxed);
        } else {
            shard.users.insert(user.to_owned(), state);
        }
        Ok(answer)
    }

    fn take_slot(&self) -> bool {
        self.users
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_users).then_some(n + 1)
            })
            .is_ok()
    }

    fn sweep_if_due(&self, shard: &mut Shard, now: DateTime<Utc>) {
        // A caller clock that jumped backwards sweeps too, rather than
        // waiting for its old `next_sweep` to come round again.
        let due = shard
            .next_sweep
            .is_none_or(|next| now >= next || next - now > SWEEP_INTERVAL);
        if due {
            self.sweep(shard, now);
        }
    }

    fn sweep(&self, shard: &mut Shard, now: DateTime<Utc>) {
        let before = shard.users.len();
        shard.users.retain(|_, state| {
            state.expire(now);
            !state.is_empty()
        });
        self.users
            .fetch_sub(before - shard.users.len(), Ordering::Relaxed);
        shard.next_sweep = Some(now + SWEEP_INTERVAL);
    }

    fn sweep_all_if_allowed(&self, now: DateTime<Utc>) {
        {
            let mut last = lock(&self.last_full_sweep);
            if last.is_some_and(|at| now >= at && now - at < SWEEP_INTERVAL) {
                return;
            }
            *last = Some(now);
        }
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            self.sweep(&mut shard, now);
            // Under pressure: users whose periods have all ended go too.
            let before = shard.users.len();
            shard.users.retain(|_, state| !state.all_ended(now));
            evicted += before - shard.users.len();
            self.users
                .fetch_sub(before - shard.users.len(), Ordering::Relaxed);
        }
        if evicted > 0 {
            tracing::info!(
                evicted,
                "memory store full: evicted users whose periods have all ended"
            );
        }
    }

    /// How many users the store holds now.
    #[cfg(test)]
    fn user_count(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }
}

impl UserState {
    fn expire(&mut self, now: DateTime<Utc>) {
        self.counters.retain(|c| c.expires_at > now);
        self.reservations.retain(|_, deadline| *deadline > now);
        while let Some((forgotten_at, _)) = self.settled_order.front() {
            if *forgotten_at > now {
                break;
            }
            if let Some((_, id)) = self.settled_order.pop_front() {
                self.settled.remove(&id);
            }
        }
    }

    /// Whether nothing of this user counts any more: no live reservation,
    /// no counter of a period still running (what is left is settled ids
    /// and counters in their grace).
    fn all_ended(&self, now: DateTime<Utc>) -> bool {
        self.reservations.values().all(|deadline| *deadline <= now)
            && self.counters.iter().all(|c| c.period_end <= now)
    }

    fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.reservations.is_empty() && self.settled.is_empty()
    }

    fn used(&self, window: &PeriodWindow) -> u64 {
        self.counters
            .iter()
            .find(|c| c.label == window.label)
            .map_or(0, |c| c.value)
    }

    /// The counter of `window`, created at 0 if missing, with its expiry
    /// pushed to `max(window end, now) + COUNTER_GRACE`.
    fn counter(&mut self, window: &PeriodWindow, now: DateTime<Utc>) -> &mut Counter {
        let expires_at = || window.end.max(now) + COUNTER_GRACE;
        let index = match self.counters.iter().position(|c| c.label == window.label) {
            Some(index) => index,
            None => {
                self.counters.push(Counter {
                    label: window.label,
                    period_end: window.end,
                    value: 0,
                    expires_at: expires_at(),
                });
                self.counters.len() - 1
            }
        };
        let counter = &mut self.counters[index];
        // Made with at least `period_end + COUNTER_GRACE`: only a later
        // end (a write after it, or a window reloaded longer) can push it
        // further, so the date arithmetic is skipped on every other write.
        if window.end.max(now) > counter.period_end {
            counter.expires_at = counter.expires_at.max(expires_at());
        }
        counter
    }

    fn remember_settled(&mut self, id: ReservationId, now: DateTime<Utc>) {
        self.settled.insert(id);
        self.settled_order.push_back((now + SETTLED_MEMORY, id));
        while self.settled_order.len() > SETTLED_MAX {
            if let Some((_, old)) = self.settled_order.pop_front() {
                self.settled.remove(&old);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding a lock, and a half-updated counter is
    // better than a store that refuses every later call.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `now + ttl`, or the latest representable instant if that overflows.
/// Shared with the Redis store.
pub(super) fn deadline(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(ttl)
        .ok()
        .and_then(|ttl| now.checked_add_signed(ttl))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl MemoryStore {
    /// [`QuotaStore::reserve`], answered in place.
    fn reserve_at_once(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
        let now = request.now;
        let expires_at = deadline(now, request.ttl);
        self.with_user(&request.user, now, true, |state| {
            let live = state.reservations.len() as u64;
            let counts = PeriodCounts(
                request
                    .windows
                    .0
                    .each_ref()
                    .map(|w| state.used(w).saturating_add(live)),
            );
            if let Some(period) = Period::ALL.into_iter().find(|&p| {
                let limit = request.limits.of(p);
                limit > 0 && counts.get(p) >= limit
            }) {
                return Admission::Exceeded { period, counts };
            }
            let id = Reservation::new_id();
            state.reservations.insert(id, expires_at);
            Admission::Reserved {
                reservation: Reservation {
                    id,
                    user: request.user.clone(),
                    windows: request.windows,
                    expires_at,
                    keys_expire: false,
                },
                counts: PeriodCounts(counts.0.map(|c| c.saturating_add(1))),
            }
        })
    }

    /// [`QuotaStore::settle`], answered in place.
    fn settle_at_once(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.with_user(&reservation.user, now, true, |state| {
            if state.settled.contains(&reservation.id) {
                return;
            }
            state.reservations.remove(&reservation.id);
            if amount > 0 {
                for window in reservation.windows.iter() {
                    let counter = state.counter(window, now);
                    counter.value = counter.value.saturating_add(amount);
                }
            }
            state.remember_settled(reservation.id, now);
        })
    }
}

#[async_trait]
impl QuotaStore for MemoryStore {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
        self.reserve_at_once(request)
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.settle_at_once(reservation, amount, now)
    }

    fn reserve_now(&self, request: &ReserveRequest) -> Option<Result<Admission, StoreError>> {
        Some(self.reserve_at_once(request))
    }

    fn settle_now(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Option<Result<(), StoreError>> {
        Some(self.settle_at_once(reservation, amount, now))
    }

    async fn extend(
        &self,
        reservation: &Reservation,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.with_user(&reservation.user, now, false, |state| {
            if let Some(deadline) = state.reservations.get_mut(&reservation.id) {
                *deadline = until;
            }
        })
    }

    async fn usage(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> Result<[PeriodUsage; 3], StoreError> {
        self.with_user(user, now, false, |state| {
            let reserved = state.reservations.len() as u64;
            windows.0.each_ref().map(|w| PeriodUsage {
                used: state.used(w),
                reserved,
            })
        })
    }

    async fn adjust(
        &self,
        user: &str,
        window: &PeriodWindow,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.with_user(user, now, true, |state| {
            let counter = state.counter(window, now);
            counter.value = counter.value.saturating_add_signed(delta);
            counter.value
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
