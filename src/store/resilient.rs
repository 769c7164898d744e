//! What the proxy does while Redis is away (phases: admit and settle):
//! [`ResilientStore`] wraps the Redis store so the quota layer never learns
//! about outages beyond an error under `allow` or `deny`.
//!
//! # Nothing lost
//!
//! A settle that cannot reach Redis (refused, dropped, timed out, or the
//! breaker is open) is put in a bounded in-memory queue and the call
//! succeeds. One background task sends the queue to Redis, up to
//! `RETRY_BATCH` (64) settles at a time, with a backoff from 50 ms
//! doubling to 2 s while Redis fails, and at once when another call
//! finds Redis answering again. Each settle keeps its reservation id, and
//! Redis counts an id once, so a retry of a settle that had in fact landed
//! (its answer was lost, or came after the timeout) counts nothing more.
//! A retried settle carries the instant it was made plus the time it waited,
//! so it counts in the periods it was reserved in.
//!
//! Loss is never silent: a settle that does not fit in the queue
//! (`store.settle_queue`), that Redis refuses as malformed, or that is still
//! queued when [`ResilientStore::flush`] runs out of time is logged at error
//! level with its user, amount and id, and counted in
//! [`ResilientStore::dropped_settles`]. [`ResilientStore::pending_settles`]
//! is what is queued or being sent.
//!
//! # Checks during an outage
//!
//! Every call goes through a [circuit breaker](super::breaker): after
//! `store.breaker.failures` outage errors in a row, calls fail at once for
//! `store.breaker.open_for` instead of each waiting `store.command_timeout`.
//! A failed or refused reserve then follows [`OutagePolicy`]:
//!
//! - [`OutagePolicy::Fail`] returns the error, and the quota layer applies
//!   `allow` (forward uncounted; the usage reported still reaches Redis
//!   through the queue) or `deny` (503 with `Retry-After`).
//! - [`OutagePolicy::Local`] (`on_store_error = "local"`) reserves in a
//!   [`MemoryStore`] of this replica, with the same limits. Each user starts
//!   from what Redis last answered this replica about them (used + reserved
//!   per period, remembered for at most `store.local_max_users` users; a
//!   user not remembered starts from zero). Settles made during the outage
//!   count there too, and all of them also go to Redis through the queue,
//!   each under its own reservation id, so exactly-once holds when they land.
//!   The first reserve Redis answers again ends the outage and drops the
//!   local counts.
//!
//! **The bound under `local`**: during one outage, one replica admits a user
//! at most `limit - baseline` more units per period, where `baseline` is the
//! user's used + reserved count in Redis's last answer to that replica (0 if
//! none). With `R` replicas a user can get at most `R × (limit - baseline)`
//! beyond what Redis knew, and never more than `R × limit` per period and
//! outage. Requests in flight when Redis went away count twice locally,
//! which errs on the side of refusing. While the queue drains after the
//! outage, Redis does not yet see the settles still queued, so for those
//! seconds it may admit up to that many units more.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerSettings};
use super::health::{Reachability, StoreHealth};
use super::memory::user_key;
use super::{
    Admission, MemoryStore, PeriodUsage, QuotaStore, Reservation, ReserveRequest, StoreError,
};
use crate::periods::{PeriodWindow, PeriodWindows};

/// First pause before retrying queued settles after Redis failed them.
const RETRY_MIN: Duration = Duration::from_millis(50);

/// Longest pause between two retries while Redis keeps failing.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Most queued settles sent to Redis at once: enough to drain a long outage
/// in seconds over one multiplexed connection, few enough not to swamp a
/// Redis that just came back.
const RETRY_BATCH: usize = 64;

/// What a reserve gets when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutagePolicy {
    /// The error, for the quota layer's `allow` or `deny`.
    Fail,
    /// A reservation from this replica's memory, with the same limits.
    Local,
}

/// How a [`ResilientStore`] behaves during an outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResilientSettings {
    /// When calls stop going to Redis, and for how long.
    pub breaker: BreakerSettings,
    /// Most settles held while Redis cannot take them.
    pub settle_queue: usize,
    /// What a reserve gets when Redis cannot answer.
    pub outage: OutagePolicy,
    /// Under [`OutagePolicy::Local`]: most users remembered and counted
    /// locally.
    pub local_max_users: usize,
}

/// A store (Redis) with a settle retry queue, a circuit breaker and an
/// optional local fallback. Dropping it stops the retry task; call
/// [`ResilientStore::flush`] first.
pub struct ResilientStore {
    shared: Arc<Shared>,
    retrier: tokio::task::AbortHandle,
}

impl std::fmt::Debug for ResilientStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientStore")
            .field("pending_settles", &self.pending_settles())
            .field("dropped_settles", &self.dropped_settles())
            .field("breaker_open", &self.shared.breaker.is_open())
            .finish_non_exhaustive()
    }
}

struct Shared {
    inner: Arc<dyn QuotaStore>,
    breaker: Breaker,
    reachability: Reachability,
    queue: SettleQueue,
    local: Option<Local>,
}

impl ResilientStore {
    /// Wraps `inner` and starts the retry task (so it must be called inside
    /// a tokio runtime).
    pub fn new(inner: Arc<dyn QuotaStore>, settings: ResilientSettings) -> Self {
        let shared = Arc::new(Shared {
            inner,
            breaker: Breaker::new(settings.breaker),
            reachability: Reachability::new(),
            queue: SettleQueue::new(settings.settle_queue),
            local: (settings.outage == OutagePolicy::Local)
                .then(|| Local::new(settings.local_max_users)),
        });
        let retrier = tokio::spawn(retry(Arc::clone(&shared))).abort_handle();
        Self { shared, retrier }
    }

    /// Settles queued or being sent to Redis now.
    pub fn pending_settles(&self) -> usize {
        self.shared.queue.pending.load(Ordering::Acquire)
    }

    /// Settles given up on since start: the queue was full, Redis refused
    /// them as malformed, or a [`flush`](Self::flush) ran out of time. Each
    /// was logged with its user and amount.
    pub fn dropped_settles(&self) -> u64 {
        self.shared.queue.dropped.load(Ordering::Acquire)
    }

    /// True while reserves are answered from this replica's memory.
    pub fn is_local(&self) -> bool {
        self.shared.local.as_ref().is_some_and(Local::is_active)
    }

    /// Whether Redis answered the last call, the breaker, the local count
    /// and the settle queue, read without calling Redis.
    pub fn health(&self) -> StoreHealth {
        StoreHealth {
            kind: "redis",
            up: self.shared.reachability.is_up(),
            breaker_open: self.shared.breaker.is_open(),
            local: self.is_local(),
            pending_settles: self.pending_settles(),
            dropped_settles: self.dropped_settles(),
            last_error: self.shared.reachability.last_error(),
        }
    }

    /// Records that Redis could not be reached outside a call of this store
    /// (at startup, before the first call).
    pub fn unreachable(&self, error: &StoreError) {
        self.shared.reachability.failed(error);
    }

    /// Tries to send every queued settle to Redis before `deadline` (for a
    /// graceful shutdown, after the server has finished its requests).
    /// Returns how many were not known to have landed by then: the ones
    /// still queued are logged and counted as dropped; the ones being sent
    /// at that moment may still land.
    pub async fn flush(&self, deadline: Instant) -> usize {
        let queue = &self.shared.queue;
        queue.retry_now.notify_one();
        loop {
            let drained = queue.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a drain in between is seen.
            drained.as_mut().enable();
            if self.pending_settles() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                break;
            }
        }
        let unsent = self.pending_settles();
        let abandoned = queue.abandon_all();
        tracing::error!(
            abandoned,
            in_flight = unsent.saturating_sub(abandoned),
            "shutting down with settles redis has not taken"
        );
        unsent
    }

    async fn queue_settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
        why: &StoreError,
    ) -> Result<(), StoreError> {
        let owed = Owed {
            reservation: reservation.clone(),
            amount,
            now,
            since: Instant::now(),
        };
        if self.shared.queue.push(owed, why) {
            Ok(())
        } else {
            Err(StoreError::SettleDropped(format!(
                "{why}; the settle queue is full ({} settles), usage lost",
                self.shared.queue.max
            )))
        }
    }

    /// Records an answer from Redis for the breaker; true when Redis was
    /// reachable (even if it refused the call).
    fn observe<T>(&self, answer: &Result<T, StoreError>) -> bool {
        match answer {
            Err(e) if is_outage(e) => {
                self.shared.breaker.failed();
                self.shared.reachability.failed(e);
                false
            }
            _ => {
                self.shared.breaker.succeeded();
                self.shared.reachability.answered();
                if self.pending_settles() > 0 {
                    self.shared.queue.retry_now.notify_one();
                }
                true
            }
        }
    }

    fn open_error(&self) -> StoreError {
        StoreError::Unavailable("redis is failing; circuit breaker open".to_owned())
    }
}

impl Drop for ResilientStore {
    fn drop(&mut self) {
        self.retrier.abort();
        let abandoned = self.shared.queue.abandon_all();
        if abandoned > 0 {
            tracing::error!(
                abandoned,
                "quota store dropped with settles redis has not taken"
            );
        }
    }
}

/// Outage errors: Redis did not answer. Anything else was an answer.
fn is_outage(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(_) | StoreError::Timeout(_))
}

#[async_trait]
impl QuotaStore for ResilientStore {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
        let error = if self.shared.breaker.allow() {
            let answer = self.shared.inner.reserve(request).await;
            self.observe(&answer);
            match answer {
                Ok(admission) => {
                    if let Some(local) = &self.shared.local {
                        local.remember(request, &admission);
                        local.end_outage().await;
                    }
                    return Ok(admission);
                }
                Err(e) if is_outage(&e) => e,
                Err(e) => return Err(e),
            }
        } else {
            self.open_error()
        };
        match &self.shared.local {
            Some(local) => local.reserve(request, &error).await,
            None => Err(error),
        }
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(local) = &self.shared.local {
            local.settle(reservation, amount, now).await;
        }
        if !self.shared.breaker.allow() {
            return self
                .queue_settle(reservation, amount, now, &self.open_error())
                .await;
        }
        let answer = self.shared.inner.settle(reservation, amount, now).await;
        self.observe(&answer);
        match answer {
            Err(e) if is_outage(&e) => self.queue_settle(reservation, amount, now, &e).await,
            other => other,
        }
    }

    async fn extend(
        &self,
        reservation: &Reservation,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(local) = &self.shared.local {
            local.extend(reservation, until, now).await;
        }
        let answer = if self.shared.breaker.allow() {
            let answer = self.shared.inner.extend(reservation, until, now).await;
            self.observe(&answer);
            answer
        } else {
            Err(self.open_error())
        };
        match answer {
            // Under `local` a reservation made during the outage lives in
            // memory, and one made in Redis simply expires there.
            Err(e) if is_outage(&e) && self.shared.local.is_some() => Ok(()),
            other => other,
        }
    }

    async fn usage(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> Result<[PeriodUsage; 3], StoreError> {
        if !self.shared.breaker.allow() {
            return Err(self.open_error());
        }
        let answer = self.shared.inner.usage(user, windows, now).await;
        self.observe(&answer);
        answer
    }

    async fn adjust(
        &self,
        user: &str,
        window: &PeriodWindow,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        // Never queued: an adjustment has no id, so a retry could count twice.
        if !self.shared.breaker.allow() {
            return Err(self.open_error());
        }
        let answer = self.shared.inner.adjust(user, window, delta, now).await;
        self.observe(&answer);
        answer
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // Not behind the breaker: a health check wants the truth.
        let answer = self.shared.inner.ping().await;
        self.observe(&answer);
        answer
    }
}

/// A settle Redis has not taken yet.
struct Owed {
    reservation: Reservation,
    amount: u64,
    /// The caller's instant when it was made.
    now: DateTime<Utc>,
    /// When it was queued, to move `now` on by the time it waited.
    since: Instant,
}

impl Owed {
    fn now(&self) -> DateTime<Utc> {
        let waited = TimeDelta::from_std(self.since.elapsed()).unwrap_or(TimeDelta::zero());
        self.now.checked_add_signed(waited).unwrap_or(self.now)
    }

    fn lost(&self, why: &str) {
        tracing::error!(
            user = %self.reservation.user,
            amount = self.amount,
            reservation = %self.reservation.id,
            why,
            "usage lost: a settle could not be sent to redis"
        );
    }
}

struct SettleQueue {
    items: Mutex<VecDeque<Owed>>,
    max: usize,
    /// Queued plus being sent by the retry task.
    pending: AtomicUsize,
    dropped: AtomicU64,
    /// Wakes the retry task: something was queued, or Redis answers again.
    retry_now: Notify,
    /// Wakes flushes when nothing is pending any more.
    drained: Notify,
}

impl SettleQueue {
    fn new(max: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            max,
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            retry_now: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Owed>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `owed`; false (after logging and counting it) when full.
    fn push(&self, owed: Owed, why: &StoreError) -> bool {
        let taken = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(0) => tracing::warn!(error = %why,
                "redis cannot take settles; queueing them until it answers"),
            Ok(_) => {}
            Err(_) => {
                owed.lost("the settle queue is full (store.settle_queue)");
                self.dropped.fetch_add(1, Ordering::AcqRel);
                return false;
            }
        }
        tracing::debug!(user = %owed.reservation.user, amount = owed.amount, error = %why,
            "settle queued");
        self.lock().push_back(owed);
        self.retry_now.notify_one();
        true
    }

    fn take(&self, most: usize) -> Vec<Owed> {
        let mut items = self.lock();
        let n = most.min(items.len());
        items.drain(..n).collect()
    }

    fn put_back(&self, owed: Owed) {
        self.lock().push_front(owed);
    }

    fn landed(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    fn give_up(&self, owed: &Owed, why: &str) {
        owed.lost(why);
        self.dropped.fetch_add(1, Ordering::AcqRel);
        self.landed();
    }

    /// Gives up on everything queued; returns how many.
    fn abandon_all(&self) -> usize {
        let items: Vec<Owed> = self.lock().drain(..).collect();
        for owed in &items {
            self.give_up(owed, "still queued at shutdown");
        }
        items.len()
    }
}

/// The retry task: sends queued settles until the store is dropped.
async fn retry(shared: Arc<Shared>) {
    let queue = &shared.queue;
    let mut backoff = RETRY_MIN;
    loop {
        let batch = queue.take(RETRY_BATCH);
        if batch.is_empty() {
            // A push between `take` and here left a permit: no wake is lost.
            queue.retry_now.notified().await;
            continue;
        }
        let sent = batch.into_iter().map(|owed| {
            let inner = Arc::clone(&shared.inner);
            async move {
                let answer = inner
                    .settle(&owed.reservation, owed.amount, owed.now())
                    .await;
                (owed, answer)
            }
        });
        let mut failed = None;
        let mut landed = 0usize;
        for (owed, answer) in futures_util::future::join_all(sent).await {
            match answer {
                Ok(()) => {
                    landed += 1;
                    queue.landed();
                }
                Err(e) if is_outage(&e) => {
                    queue.put_back(owed);
                    failed = Some(e);
                }
                Err(e) => queue.give_up(&owed, &format!("redis refused it: {e}")),
            }
        }
        match failed {
            None => {
                backoff = RETRY_MIN;
                shared.breaker.succeeded();
                shared.reachability.answered();
                if queue.pending.load(Ordering::Acquire) == 0 {
                    tracing::info!("every queued settle reached redis");
                } else {
                    tracing::debug!(landed, "queued settles reached redis");
                }
            }
            Some(e) => {
                tracing::debug!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "redis still cannot take queued settles");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = queue.retry_now.notified() => {}
                }
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Limits enforced from this replica's memory during an outage. Bounded:
/// at most `local_max_users` baselines (all forgotten at once when full)
/// and as many users counted, each keyed by at most
/// [`MAX_KEY_BYTES`](super::memory::MAX_KEY_BYTES) bytes (longer ids by
/// their digest, as in the memory store).
struct Local {
    max_users: usize,
    /// Used + reserved per period in Redis's last answer about each user.
    baselines: Mutex<HashMap<String, Baseline>>,
    /// Set while reserves are answered locally.
    active: AtomicBool,
    /// Async lock: seeding a user and reserving must be one step, and the
    /// memory store's methods are async.
    state: tokio::sync::Mutex<LocalState>,
}

struct Baseline {
    /// Starts of the day, week and month the counts belong to.
    starts: [DateTime<Utc>; 3],
    counts: [u64; 3],
}

struct LocalState {
    store: MemoryStore,
    /// Users whose baseline was copied into `store` in this outage.
    seeded: HashSet<String>,
}

impl LocalState {
    fn new(max_users: usize) -> Self {
        Self {
            store: MemoryStore::new(max_users),
            seeded: HashSet::new(),
        }
    }
}

impl Local {
    fn new(max_users: usize) -> Self {
        Self {
            max_users,
            baselines: Mutex::new(HashMap::new()),
            active: AtomicBool::new(false),
            state: tokio::sync::Mutex::new(LocalState::new(max_users)),
        }
    }

    fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Keeps Redis's answer about the user, to start from in an outage.
    fn remember(&self, request: &ReserveRequest, admission: &Admission) {
        let counts = match admission {
            Admission::Reserved { counts, .. } | Admission::Exceeded { counts, .. } => counts.0,
        };
        let baseline = Baseline {
            starts: request.windows.0.each_ref().map(|w| w.start),
            counts,
        };
        let key = user_key(&request.user);
        let mut baselines = self
            .baselines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if baselines.len() >= self.max_users && !baselines.contains_key(&*key) {
            // Bounded without bookkeeping: forgetting everyone only makes
            // the next outage start those users from zero.
            baselines.clear();
        }
        baselines.insert(key.into_owned(), baseline);
    }

    async fn reserve(
        &self,
        request: &ReserveRequest,
        cause: &StoreError,
    ) -> Result<Admission, StoreError> {
        let mut state = self.state.lock().await;
        if !self.active.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %cause,
                "redis unavailable; enforcing limits from this replica's memory until it answers");
        }
        let key = user_key(&request.user);
        if !state.seeded.contains(&*key) {
            if state.seeded.len() >= self.max_users {
                return Err(StoreError::Full(self.max_users));
            }
            state.seeded.insert(key.clone().into_owned());
            let baseline = self
                .baselines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&*key);
            if let Some(baseline) = baseline {
                for (i, window) in request.windows.0.iter().enumerate() {
                    let count = baseline.counts[i];
                    if baseline.starts[i] == window.start && count > 0 {
                        let count = i64::try_from(count).unwrap_or(i64::MAX);
                        state
                            .store
                            .adjust(&request.user, window, count, request.now)
                            .await?;
                    }
                }
            }
        }
        state.store.reserve(request).await
    }

    async fn settle(&self, reservation: &Reservation, amount: u64, now: DateTime<Utc>) {
        if !self.is_active() {
            return;
        }
        let state = self.state.lock().await;
        if let Err(e) = state.store.settle(reservation, amount, now).await {
            // Redis still gets it through the queue; only the local bound
            // is looser for this user.
            tracing::warn!(user = %reservation.user, error = %e,
                "settle not counted in this replica's memory");
        }
    }

    async fn extend(&self, reservation: &Reservation, until: DateTime<Utc>, now: DateTime<Utc>) {
        if !self.is_active() {
            return;
        }
        let state = self.state.lock().await;
        // The memory store's extend never fails (it creates nothing).
        let _ = state.store.extend(reservation, until, now).await;
    }

    /// Redis answered a reserve: drop the local counts; what they counted
    /// reaches Redis through the settle queue.
    async fn end_outage(&self) {
        if !self.is_active() {
            return;
        }
        let mut state = self.state.lock().await;
        if self.active.swap(false, Ordering::AcqRel) {
            *state = LocalState::new(self.max_users);
            tracing::info!("redis answers again; limits are enforced from redis");
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Weekday;

    use super::*;
    use crate::config::Limits;
    use crate::periods::Calendar;

    /// A memory store that can be switched off, standing in for Redis.
    struct Switchable {
        store: MemoryStore,
        down: AtomicBool,
        settles: AtomicUsize,
    }

    impl Switchable {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                store: MemoryStore::new(100),
                down: AtomicBool::new(false),
                settles: AtomicUsize::new(0),
            })
        }

        fn set_down(&self, down: bool) {
            self.down.store(down, Ordering::SeqCst);
        }

        fn check(&self) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                Err(StoreError::Unavailable("switched off".into()))
            } else {
                Ok(())
            }
        }
    }

    #[async_trait]
    impl QuotaStore for Switchable {
        async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
            self.check()?;
            self.store.reserve(request).await
        }
        async fn settle(
            &self,
            reservation: &Reservation,
            amount: u64,
            now: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            self.check()?;
            self.settles.fetch_add(1, Ordering::SeqCst);
            self.store.settle(reservation, amount, now).await
        }
        async fn extend(
            &self,
            reservation: &Reservation,
            until: DateTime<Utc>,
            now: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            self.check()?;
            self.store.extend(reservation, until, now).await
        }
        async fn usage(
            &self,
            user: &str,
            windows: &PeriodWindows,
            now: DateTime<Utc>,
        ) -> Result<[PeriodUsage; 3], StoreError> {
            self.check()?;
            self.store.usage(user, windows, now).await
        }
        async fn adjust(
            &self,
            user: &str,
            window: &PeriodWindow,
            delta: i64,
            now: DateTime<Utc>,
        ) -> Result<u64, StoreError> {
            self.check()?;
            self.store.adjust(user, window, delta, now).await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.check()
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2031-05-14T10:00:00Z")
            .expect("test instant")
            .with_timezone(&Utc)
    }

    fn request(user: &str, daily: u64) -> ReserveRequest {
        ReserveRequest {
            user: user.to_owned(),
            limits: Limits {
                daily,
                weekly: 0,
                monthly: 0,
            },
            windows: Calendar::new(chrono_tz::UTC, Weekday::Mon).windows(now()),
            now: now(),
            ttl: Duration::from_secs(60),
        }
    }

    fn settings(outage: OutagePolicy, settle_queue: usize) -> ResilientSettings {
        ResilientSettings {
            breaker: BreakerSettings {
                failures: 2,
                open_for: Duration::from_secs(1),
            },
            settle_queue,
            outage,
            local_max_users: 100,
        }
    }

    async fn reserved(store: &ResilientStore, user: &str, daily: u64) -> Option<Reservation> {
        match store.reserve(&request(user, daily)).await.expect("reserve") {
            Admission::Reserved { reservation, .. } => Some(reservation),
            Admission::Exceeded { .. } => None,
        }
    }

    async fn used(redis: &Switchable, user: &str) -> u64 {
        redis
            .store
            .usage(user, &request(user, 0).windows, now())
            .await
            .expect("usage")[0]
            .used
    }

    #[tokio::test(start_paused = true)]
    async fn settles_wait_in_the_queue_and_land_once() {
        let redis = Switchable::new();
        let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 100));
        let r = reserved(&store, "alice", 0).await.expect("reserved");
        redis.set_down(true);
        store.settle(&r, 2, now()).await.expect("queued");
        store.settle(&r, 2, now()).await.expect("queued");
        assert_eq!(store.pending_settles(), 2);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(store.pending_settles(), 2, "nothing lands while down");
        redis.set_down(false);
        let left = store.flush(Instant::now() + Duration::from_secs(10)).await;
        assert_eq!(left, 0);
        assert_eq!(used(&redis, "alice").await, 2, "the same id counts once");
        assert_eq!(store.dropped_settles(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_drops_and_counts() {
        let redis = Switchable::new();
        let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 1));
        let r = reserved(&store, "alice", 0).await.expect("reserved");
        let other = reserved(&store, "alice", 0).await.expect("reserved");
        redis.set_down(true);
        store.settle(&r, 1, now()).await.expect("queued");
        store
            .settle(&other, 1, now())
            .await
            .expect_err("no room left");
        assert_eq!((store.pending_settles(), store.dropped_settles()), (1, 1));
        // A flush that runs out of time gives up on what is queued.
        let left = store.flush(Instant::now() + Duration::from_secs(1)).await;
        assert_eq!(left, 1);
        assert_eq!((store.pending_settles(), store.dropped_settles()), (0, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_stops_calls_and_closes_when_redis_is_back() {
        let redis = Switchable::new();
        let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 100));
        redis.set_down(true);
        for _ in 0..2 {
            store.reserve(&request("alice", 5)).await.expect_err("down");
        }
        redis.set_down(false);
        let err = store
            .reserve(&request("alice", 5))
            .await
            .expect_err("breaker open");
        assert!(err.to_string().contains("circuit breaker"), "{err}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(reserved(&store, "alice", 5).await.is_some(), "the probe");
        assert!(reserved(&store, "alice", 5).await.is_some(), "closed again");
    }

    #[tokio::test(start_paused = true)]
    async fn local_policy_starts_from_what_redis_said_and_hands_over() {
        let redis = Switchable::new();
        let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Local, 100));
        // Redis says alice has used 3 of 5.
        for _ in 0..3 {
            let r = reserved(&store, "alice", 5).await.expect("reserved");
            store.settle(&r, 1, now()).await.expect("settle");
        }
        let last = reserved(&store, "alice", 5).await.expect("the fourth");
        store.settle(&last, 0, now()).await.expect("release");
        redis.set_down(true);
        // The last answer counted 4 (3 used + the fourth in flight), so one
        // more unit is left locally.
        let local = reserved(&store, "alice", 5).await.expect("local room");
        assert!(store.is_local());
        assert!(reserved(&store, "alice", 5).await.is_none(), "bounded");
        // Bob was never seen: a full limit from zero.
        for _ in 0..2 {
            reserved(&store, "bob", 2).await.expect("bob's room");
        }
        assert!(reserved(&store, "bob", 2).await.is_none());
        store.settle(&local, 1, now()).await.expect("queued");
        redis.set_down(false);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            store.flush(Instant::now() + Duration::from_secs(5)).await,
            0
        );
        assert_eq!(
            used(&redis, "alice").await,
            4,
            "the local unit reached redis"
        );
        let r = reserved(&store, "alice", 5)
            .await
            .expect("redis has room for one");
        assert!(!store.is_local(), "redis answered: the outage is over");
        store.settle(&r, 1, now()).await.expect("settle");
        assert!(reserved(&store, "alice", 5).await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn health_follows_the_last_call_without_calling() {
        let redis = Switchable::new();
        let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 100));
        assert!(store.health().up);
        redis.set_down(true);
        store.ping().await.expect_err("down");
        let health = store.health();
        assert!(!health.up && !health.breaker_open, "{health:?}");
        assert!(
            health
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("switched off")),
            "{health:?}"
        );
        store.ping().await.expect_err("down");
        assert!(store.health().breaker_open, "two failures open it");
        redis.set_down(false);
        store.ping().await.expect("up again");
        let health = store.health();
        assert!(health.up && !health.breaker_open && health.last_error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn fail_policy_returns_the_error() {
        let redis = Switchable::new();
        let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 100));
        redis.set_down(true);
        let err = store.reserve(&request("alice", 5)).await.expect_err("down");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(!store.is_local());
    }

    #[tokio::test]
    async fn local_counts_keep_long_user_ids_as_digests() {
        let local = Local::new(4);
        let long = "y".repeat(10_000);
        let request = request(&long, 5);
        let admission = Admission::Exceeded {
            period: crate::periods::Period::Daily,
            counts: super::super::PeriodCounts([5, 5, 5]),
        };
        local.remember(&request, &admission);
        let cause = StoreError::Unavailable("down".to_owned());
        local.reserve(&request, &cause).await.expect("answered");
        {
            let baselines = local.baselines.lock().expect("baselines");
            assert!(
                baselines
                    .keys()
                    .all(|k| k.len() <= super::super::memory::MAX_KEY_BYTES)
            );
        }
        let state = local.state.lock().await;
        assert!(
            state
                .seeded
                .iter()
                .all(|k| k.len() <= super::super::memory::MAX_KEY_BYTES)
        );
        assert_eq!(state.seeded.len(), 1);
    }
}
