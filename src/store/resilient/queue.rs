//! The settle retry queue (phase: settle): each [`QueuedSettle`] is a
//! settle Redis could not take; it waits here, bounded by
//! `store.settle_queue`, and one background task ([`retry`]) sends the queue
//! to Redis in batches with a backoff until the
//! [`ResilientStore`](super::ResilientStore) is dropped. A settle that does
//! not fit, that Redis refuses, or that is abandoned at shutdown is logged
//! and counted as dropped, never lost silently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{ResilientState, is_outage};
use crate::store::{Reservation, StoreError};

/// First pause before retrying queued settles after Redis failed them.
const RETRY_MIN: Duration = Duration::from_millis(50);

/// Longest pause between two retries while Redis keeps failing.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Most queued settles sent to Redis at once: enough to drain a long outage
/// in seconds over one multiplexed connection, few enough not to swamp a
/// Redis that just came back.
const RETRY_BATCH: usize = 64;

/// A settle Redis has not taken yet.
pub(super) struct QueuedSettle {
    pub(super) reservation: Reservation,
    pub(super) amount: u64,
    /// The caller's instant when it was made.
    pub(super) now: DateTime<Utc>,
    /// When it was queued, to move `now` on by the time it waited.
    pub(super) since: Instant,
}

impl QueuedSettle {
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

pub(super) struct SettleQueue {
    items: Mutex<VecDeque<QueuedSettle>>,
    pub(super) max: usize,
    /// Queued plus being sent by the retry task.
    pub(super) pending: AtomicUsize,
    pub(super) dropped: AtomicU64,
    /// Wakes the retry task: something was queued, or Redis answers again.
    pub(super) retry_now: Notify,
    /// Wakes flushes when nothing is pending any more.
    pub(super) drained: Notify,
}

impl SettleQueue {
    pub(super) fn new(max: usize) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            max,
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            retry_now: Notify::new(),
            drained: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<QueuedSettle>> {
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues the settle; false (after logging and counting it) when full.
    pub(super) fn push(&self, queued: QueuedSettle, why: &StoreError) -> bool {
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
                queued.lost("the settle queue is full (store.settle_queue)");
                self.dropped.fetch_add(1, Ordering::AcqRel);
                return false;
            }
        }
        tracing::debug!(user = %queued.reservation.user, amount = queued.amount, error = %why,
            "settle queued");
        self.lock().push_back(queued);
        self.retry_now.notify_one();
        true
    }

    fn take(&self, most: usize) -> Vec<QueuedSettle> {
        let mut items = self.lock();
        let n = most.min(items.len());
        items.drain(..n).collect()
    }

    fn put_back(&self, queued: QueuedSettle) {
        self.lock().push_front(queued);
    }

    /// Behind the others: a settle Redis refused must not keep the ones it
    /// would take from being sent (an attack session queued 64 of them at
    /// the front and stalled every settle behind).
    fn put_last(&self, queued: QueuedSettle) {
        self.lock().push_back(queued);
    }

    fn landed(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }

    fn give_up(&self, queued: &QueuedSettle, why: &str) {
        queued.lost(why);
        self.dropped.fetch_add(1, Ordering::AcqRel);
        self.landed();
    }

    /// Gives up on everything queued; returns how many.
    pub(super) fn abandon_all(&self) -> usize {
        let items: Vec<QueuedSettle> = self.lock().drain(..).collect();
        for queued in &items {
            self.give_up(queued, "still queued at shutdown");
        }
        items.len()
    }
}

/// The retry task: sends queued settles until the store is dropped.
pub(super) async fn retry(shared: Arc<ResilientState>) {
    let queue = &shared.queue;
    let mut backoff = RETRY_MIN;
    loop {
        let batch = queue.take(RETRY_BATCH);
        if batch.is_empty() {
            // A push between `take` and here left a permit: no wake is lost.
            queue.retry_now.notified().await;
            continue;
        }
        let sent = batch.into_iter().map(|queued| {
            let inner = Arc::clone(&shared.inner);
            async move {
                let answer = inner
                    .settle(&queued.reservation, queued.amount, queued.now())
                    .await;
                (queued, answer)
            }
        });
        let answers = futures_util::future::join_all(sent).await;
        let failed = answers.iter().find_map(|(_, answer)| match answer {
            Err(e) if is_outage(e) => Some(e.clone()),
            _ => None,
        });
        // Refused (one user's key of the wrong type): Redis is up, but
        // sending it again at once would be refused again.
        let refused = answers.iter().find_map(|(_, answer)| match answer {
            Err(e @ StoreError::Refused(_)) => Some(e.clone()),
            _ => None,
        });
        if failed.is_none() {
            // Closed before the settles count as landed, so whoever waits
            // for the queue to drain (a flush) finds the breaker closed.
            shared.breaker.succeeded();
            shared.reachability.answered();
        }
        let mut landed = 0usize;
        for (queued, answer) in answers {
            match answer {
                Ok(()) => {
                    landed += 1;
                    queue.landed();
                }
                Err(StoreError::Refused(_)) => queue.put_last(queued),
                Err(e) if is_outage(&e) => queue.put_back(queued),
                Err(e) => queue.give_up(&queued, &format!("redis refused it: {e}")),
            }
        }
        match (failed, refused) {
            (None, None) => {
                backoff = RETRY_MIN;
                if queue.pending.load(Ordering::Acquire) == 0 {
                    tracing::info!("every queued settle reached redis");
                } else {
                    tracing::debug!(landed, "queued settles reached redis");
                }
            }
            (None, Some(e)) => {
                // Every answer of Redis wakes the queue (`observe`): a
                // refused settle waits out its backoff instead, or each
                // request would send it again.
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "redis refused a queued settle; kept to be sent again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            (Some(e), _) => {
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
