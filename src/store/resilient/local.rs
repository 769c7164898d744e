//! The local fallback under `on_store_error = "local"` (phase: admit):
//! while Redis cannot answer, [`Local`] reserves in a [`MemoryStore`] of this
//! replica, each user starting from Redis's last answer about them (the bound
//! this keeps is in [the module above](super)).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};

use crate::store::memory::user_key;
use crate::store::{
    Admission, MemoryStore, QuotaStore, Reservation, ReservationId, ReserveRequest, StoreError,
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
    held: HashSet<ReservationId>,
}

/// Most local reservations remembered as held at once.
const MAX_HELD: usize = 65_536;

impl LocalState {
    fn new(max_users: usize) -> Self {
        Self {
            store: MemoryStore::new(max_users),
            seeded: HashSet::new(),
            held: HashSet::new(),
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
            state.held.insert(reservation.id);
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
        if !self.is_active() {
            return false;
        }
        let mut state = self.state.lock().await;
        let local = state.held.remove(&reservation.id);
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
        if !self.is_active() {
            return;
        }
        let state = self.state.lock().await;
        // The memory store's extend never fails (it creates nothing).
        let _ = state.store.extend(reservation, until, now).await;
    }

    /// Redis answered a reserve: drop the local counts; what they counted
    /// reaches Redis through the settle queue.
    pub(super) async fn end_outage(&self) {
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
