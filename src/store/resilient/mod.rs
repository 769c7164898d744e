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
//!   [`MemoryStore`](super::MemoryStore) of this replica, with the same
//!   limits. Each user starts from what Redis last answered this replica
//!   about them (used + reserved per period, remembered for at most
//!   `store.local_max_users` users; a user not remembered starts from
//!   zero). Settles made during the outage count there too, and those
//!   that count (or release a reservation Redis held) also go to Redis
//!   through the queue, each under its own reservation id, so exactly-once
//!   holds when they land; the release of a reservation made locally has
//!   nothing to tell Redis and is not queued. The first reserve Redis
//!   answers again ends the outage and drops the local counts; what a user
//!   was counted locally stays their baseline for the next outage until
//!   Redis answers about them.
//!
//! **The bound under `local`**: during one outage, one replica admits a user
//! at most `limit - baseline` more units per period, where `baseline` is the
//! user's used + reserved count in the last answer about them this replica
//! had, from Redis or from an earlier outage's local count (0 if none). With `R` replicas a user can get at most `R × (limit - baseline)`
//! beyond what Redis knew, and never more than `R × limit` per period and
//! outage. Requests in flight when Redis went away count twice locally,
//! which errs on the side of refusing. While the queue drains after the
//! outage, Redis does not yet see the settles still queued, so for those
//! seconds it may admit up to that many units more.
//!
//! # Layout
//!
//! This file holds the wrapper and its [`QuotaStore`] calls; `queue` the
//! settle retry queue and its task; `local` the fallback under
//! `on_store_error = "local"`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::time::Instant;

use self::local::Local;
use self::queue::{QueuedSettle, SettleQueue, retry};
use super::breaker::{Breaker, BreakerSettings};
use super::health::{Reachability, StoreHealth};
use super::{Admission, PeriodUsage, QuotaStore, Reservation, ReserveRequest, StoreError};
use crate::periods::{PeriodWindow, PeriodWindows};

mod local;
mod queue;
#[cfg(test)]
mod tests;

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
    shared: Arc<ResilientState>,
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

/// What the handle and its retry task share: the wrapped store and its
/// outage handling (breaker, reachability, settle queue, local counts).
struct ResilientState {
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
        let shared = Arc::new(ResilientState {
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
        let queued = QueuedSettle {
            reservation: reservation.clone(),
            amount,
            now,
            since: Instant::now(),
        };
        if self.shared.queue.push(queued, why) {
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

/// Settles worth sending again: Redis did not answer, or refused one
/// user's command (a key of the wrong type, which an operator can fix;
/// `settle.lua` writes nothing before such a refusal).
fn is_retryable(e: &StoreError) -> bool {
    is_outage(e) || matches!(e, StoreError::Refused(_))
}

#[async_trait]
impl QuotaStore for ResilientStore {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
        let error = if self.shared.breaker.allow() {
            let answer = self.shared.inner.reserve(request).await;
            self.observe(&answer);
            match answer {
                Ok(admission) => {
                    let Some(local) = &self.shared.local else {
                        return Ok(admission);
                    };
                    local.remember(request, &admission);
                    local.end_outage().await;
                    let (admission, release) = local.add_carried(request, admission);
                    if let Some(reservation) = release {
                        // Full with the generations admitted in the outage
                        // and still running; a failed release expires.
                        let _ = self.shared.inner.settle(&reservation, 0, request.now).await;
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
        if let Some(local) = &self.shared.local
            && local.settle(reservation, amount, now).await
            && amount == 0
        {
            // Released, and made in this replica's memory: Redis never held
            // it, so there is nothing to tell it. Queued, such releases
            // would crowd out the settles that count (a client's cheap
            // requests that generate nothing, during an outage).
            return Ok(());
        }
        if !self.shared.breaker.allow() {
            return self
                .queue_settle(reservation, amount, now, &self.open_error())
                .await;
        }
        let answer = self.shared.inner.settle(reservation, amount, now).await;
        self.observe(&answer);
        match answer {
            Err(e) if is_retryable(&e) => self.queue_settle(reservation, amount, now, &e).await,
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
