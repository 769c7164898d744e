//! The local fallback under `on_store_error = "local"` (phase: admit):
//! while Redis cannot answer, [`Local`] reserves in a [`MemoryStore`] of this
//! replica, each user starting from Redis's last answer about them (the bound
//! this keeps is in [the module above](super)).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::periods::Period;
use crate::store::memory::user_key;
use crate::store::{
    Admission, MemoryStore, PeriodCounts, QuotaStore, Reservation, ReservationId, ReserveRequest,
    StoreError,
};

/// Limits enforced from this replica's memory during an outage. Bounded:
/// at most `local_max_users` baselines (all forgotten at once when full)
/// and as many users counted, each keyed by at most
/// [`MAX_KEY_BYTES`](crate::store::memory::MAX_KEY_BYTES) bytes (longer ids by
/// their digest, as in the memory store).
pub(super) struct Local {
    max_users: usize,
    /// Used + reserved per period in Redis's last answer about each user.
    baselines: Mutex<HashMap<String, Baseline>>,
    /// Set while reserves are answered locally.
    active: AtomicBool,
    /// Async lock: seeding a user and reserving must be one step, and the
    /// memory store's methods are async.
    state: tokio::sync::Mutex<LocalState>,
    /// Reservations made here in an outage that ended while they were
    /// still held (a generation running when Redis came back), by user:
    /// Redis does not hold them until their settle lands, so its answers
    /// count them in ([`Local::add_carried`]) until they settle or expire.
    carried: Mutex<HashMap<String, Vec<Reservation>>>,
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
    /// Reservations made in `store` and not yet settled: Redis never held
    /// them, so releasing one needs no word to Redis. At most
    /// [`MAX_HELD`]; beyond, a release goes through the queue as any.
    held: HashMap<ReservationId, Reservation>,
}

/// Most local reservations remembered as held at once.
const MAX_HELD: usize = 65_536;

impl LocalState {
    fn new(max_users: usize) -> Self {
        Self {
            store: MemoryStore::new(max_users),
            seeded: HashSet::new(),
            held: HashMap::new(),
        }
    }
}

impl Local {
    pub(super) fn new(max_users: usize) -> Self {
        Self {
            max_users,
            baselines: Mutex::new(HashMap::new()),
            active: AtomicBool::new(false),
            state: tokio::sync::Mutex::new(LocalState::new(max_users)),
            carried: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Keeps Redis's answer about the user, to start from in an outage.
    pub(super) fn remember(&self, request: &ReserveRequest, admission: &Admission) {
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

    pub(super) async fn reserve(
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
            // Kept, not taken: a later outage starts from it too, unless a
            // newer answer replaced it.
            let baseline = self
                .baselines
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&*key)
                .map(|b| (b.starts, b.counts));
            if let Some((starts, counts)) = baseline {
                for (i, window) in request.windows.0.iter().enumerate() {
                    let count = counts[i];
                    if starts[i] == window.start && count > 0 {
                        let count = i64::try_from(count).unwrap_or(i64::MAX);
                        state
                            .store
                            .adjust(&request.user, window, count, request.now)
                            .await?;
                    }
                }
            }
        }
        let admission = state.store.reserve(request).await?;
        if let Admission::Reserved { reservation, .. } = &admission
            && state.held.len() < MAX_HELD
        {
            state.held.insert(reservation.id, reservation.clone());
        }
        // What this outage counted so far is the baseline of the next one,
        // should Redis answer in between without a word about this user
        // (the settles of this one may still be queued then).
        self.remember(request, &admission);
        Ok(admission)
    }

    /// Counts a settle locally during an outage; true when the reservation
    /// was made here, in this outage (Redis never held it).
    pub(super) async fn settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> bool {
        if self.take_carried(reservation) {
            return true;
        }
        if !self.is_active() {
            return false;
        }
        let mut state = self.state.lock().await;
        let local = state.held.remove(&reservation.id).is_some();
        if let Err(e) = state.store.settle(reservation, amount, now).await {
            // Redis still gets it through the queue; only the local bound
            // is looser for this user.
            tracing::warn!(user = %reservation.user, error = %e,
                "settle not counted in this replica's memory");
        }
        local
    }

    pub(super) async fn extend(
        &self,
        reservation: &Reservation,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        if let Some(held) = self
            .lock_carried()
            .get_mut(&*user_key(&reservation.user))
            .and_then(|held| held.iter_mut().find(|r| r.id == reservation.id))
        {
            held.expires_at = held.expires_at.max(until);
        }
        if !self.is_active() {
            return;
        }
        let state = self.state.lock().await;
        // The memory store's extend never fails (it creates nothing).
        let _ = state.store.extend(reservation, until, now).await;
    }

    /// Redis answered a reserve: drop the local counts; what they counted
    /// reaches Redis through the settle queue, and the reservations still
    /// held are carried until they settle.
    pub(super) async fn end_outage(&self) {
        if !self.is_active() {
            return;
        }
        let mut state = self.state.lock().await;
        if self.active.swap(false, Ordering::AcqRel) {
            let held = std::mem::take(&mut state.held);
            *state = LocalState::new(self.max_users);
            let mut carried = self.lock_carried();
            for reservation in held.into_values() {
                let key = user_key(&reservation.user).into_owned();
                carried.entry(key).or_default().push(reservation);
            }
            tracing::info!(
                carried = carried.values().map(Vec::len).sum::<usize>(),
                "redis answers again; limits are enforced from redis"
            );
        }
    }

    /// Redis's `admission` of `request`, with the user's carried
    /// reservations counted in: when they leave a limit no room, the
    /// admission becomes `Exceeded`, and the reservation Redis made is
    /// returned to be released.
    pub(super) fn add_carried(
        &self,
        request: &ReserveRequest,
        admission: Admission,
    ) -> (Admission, Option<Reservation>) {
        let extra = {
            let mut carried = self.lock_carried();
            if carried.is_empty() {
                return (admission, None);
            }
            let key = user_key(&request.user);
            let Some(held) = carried.get_mut(&*key) else {
                return (admission, None);
            };
            held.retain(|r| r.expires_at > request.now);
            let extra = Period::ALL.map(|p| {
                let start = request.windows.0[p as usize].start;
                held.iter()
                    .filter(|r| r.windows.0[p as usize].start == start)
                    .count() as u64
            });
            if held.is_empty() {
                carried.remove(&*key);
            }
            extra
        };
        let with_extra = |counts: PeriodCounts| {
            PeriodCounts(std::array::from_fn(|i| {
                counts.0[i].saturating_add(extra[i])
            }))
        };
        match admission {
            Admission::Reserved {
                reservation,
                counts,
            } => {
                let counts = with_extra(counts);
                let full = Period::ALL.into_iter().find(|&p| {
                    let limit = request.limits.of(p);
                    limit > 0 && counts.get(p) > limit
                });
                match full {
                    Some(period) => (
                        Admission::Exceeded {
                            period,
                            counts: PeriodCounts(std::array::from_fn(|i| counts.0[i] - 1)),
                        },
                        Some(reservation),
                    ),
                    None => (
                        Admission::Reserved {
                            reservation,
                            counts,
                        },
                        None,
                    ),
                }
            }
            Admission::Exceeded { period, counts } => (
                Admission::Exceeded {
                    period,
                    counts: with_extra(counts),
                },
                None,
            ),
        }
    }

    /// Removes `reservation` from the carried ones; true when it was there.
    fn take_carried(&self, reservation: &Reservation) -> bool {
        let mut carried = self.lock_carried();
        if carried.is_empty() {
            return false;
        }
        let key = user_key(&reservation.user);
        let Some(held) = carried.get_mut(&*key) else {
            return false;
        };
        let before = held.len();
        held.retain(|r| r.id != reservation.id);
        let found = held.len() < before;
        if held.is_empty() {
            carried.remove(&*key);
        }
        found
    }

    fn lock_carried(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Reservation>>> {
        self.carried.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::Local;
    use crate::periods::Period;
    use crate::store::memory::MAX_KEY_BYTES;
    use crate::store::resilient::tests::request;
    use crate::store::{Admission, PeriodCounts, StoreError};

    #[tokio::test]
    async fn local_counts_keep_long_user_ids_as_digests() {
        let local = Local::new(4);
        let long = "y".repeat(10_000);
        let request = request(&long, 5);
        let admission = Admission::Exceeded {
            period: Period::Daily,
            counts: PeriodCounts([5, 5, 5]),
        };
        local.remember(&request, &admission);
        let cause = StoreError::Unavailable("down".to_owned());
        local.reserve(&request, &cause).await.expect("answered");
        {
            let baselines = local.baselines.lock().expect("baselines");
            assert!(baselines.keys().all(|k| k.len() <= MAX_KEY_BYTES));
        }
        let state = local.state.lock().await;
        assert!(state.seeded.iter().all(|k| k.len() <= MAX_KEY_BYTES));
        assert_eq!(state.seeded.len(), 1);
    }
}
