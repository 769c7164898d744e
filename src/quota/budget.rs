//! The body budget (phase: read): one count, for the whole process, of the
//! request-body bytes the proxy holds in memory and in spool files
//! (`body_budget_bytes`).
//!
//! Problem: each stalled or slow upload held its memory part and its spool
//! file, with no cap on how many; 200 concurrent uploads could take
//! gigabytes of memory and disk. Mechanism: every buffer of a request body
//! takes its bytes from the budget as it grows (never what a
//! `Content-Length` promises: only what arrived), and gives them back when
//! the body is dropped (forwarded, denied, or failed). Bound: the bodies
//! held never take more than `body_budget_bytes` together, plus one chunk
//! and one write buffer per request in flight.
//!
//! When the budget is spent, a request waits up to [`BUDGET_WAIT`] for
//! room, then gets 503 with `Retry-After` ([`BudgetFull`]): never an
//! abort, and a full budget cannot deadlock, since every waiter gives up
//! in time and releases what it held.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

/// Longest wait for room in the budget before the request is answered 503.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// The `Retry-After` (seconds) of a request refused for lack of budget.
pub(crate) const BUDGET_RETRY_AFTER: u32 = 2;

/// The budget had no room within [`BUDGET_WAIT`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "the proxy holds its whole body budget ({0} bytes, body_budget_bytes) in other requests' bodies"
)]
pub(crate) struct BudgetFull(pub(crate) u64);

/// The process's budget for held request bodies; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
    capacity: u64,
}

impl BodyBudget {
    /// A budget of `capacity` bytes (at most [`Semaphore::MAX_PERMITS`]).
    pub(crate) fn new(capacity: u64) -> Self {
        let capacity = capacity.min(Semaphore::MAX_PERMITS as u64);
        Self {
            bytes: Arc::new(Semaphore::new(
                usize::try_from(capacity).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            capacity,
        }
    }

    /// Its size in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes free now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> u64 {
        self.bytes.available_permits() as u64
    }

    /// A holding of nothing yet, to grow as a body arrives.
    pub(crate) fn hold(&self) -> Held {
        Held {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Bytes taken from a [`BodyBudget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    budget: BodyBudget,
    bytes: u64,
}

impl Held {
    /// Takes `more` bytes, waiting up to [`BUDGET_WAIT`] for room.
    pub(crate) async fn grow(&mut self, more: usize) -> Result<(), BudgetFull> {
        let full = BudgetFull(self.budget.capacity);
        let Ok(more32) = u32::try_from(more) else {
            return Err(full);
        };
        if more32 == 0 {
            return Ok(());
        }
        if u64::from(more32) > self.budget.capacity {
            return Err(full);
        }
        let semaphore = &self.budget.bytes;
        let permit = match semaphore.try_acquire_many(more32) {
            Ok(permit) => permit,
            Err(_) => {
                match tokio::time::timeout(BUDGET_WAIT, semaphore.acquire_many(more32)).await {
                    Ok(Ok(permit)) => permit,
                    // Timed out (or closed, which it never is).
                    _ => {
                        metrics::counter!("quota_proxy_body_budget_refused_total").increment(1);
                        return Err(full);
                    }
                }
            }
        };
        permit.forget();
        self.bytes += u64::from(more32);
        Ok(())
    }

    /// Gives back `fewer` of the bytes held (at most all of them).
    pub(crate) fn release(&mut self, fewer: usize) {
        let fewer = (fewer as u64).min(self.bytes);
        self.bytes -= fewer;
        self.budget
            .bytes
            .add_permits(usize::try_from(fewer).unwrap_or(usize::MAX));
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget
                .bytes
                .add_permits(usize::try_from(self.bytes).unwrap_or(usize::MAX));
        }
    }
}

/// Bytes that give their budget back when the last handle to them is
/// dropped: the owner of a [`bytes::Bytes`] made with `Bytes::from_owner`.
pub(crate) struct HeldBytes<T> {
    pub(crate) bytes: T,
    /// Given back when the bytes are dropped.
    pub(crate) _held: Held,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for HeldBytes<T> {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bytes_come_back_when_dropped() {
        let budget = BodyBudget::new(1000);
        let mut a = budget.hold();
        a.grow(600).await.expect("room");
        assert_eq!(budget.available(), 400);
        let mut b = budget.hold();
        b.grow(400).await.expect("room");
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 600);
        drop(b);
        assert_eq!(budget.available(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_budget_refuses_after_the_wait_and_keeps_nothing() {
        let budget = BodyBudget::new(1000);
        let mut a = budget.hold();
        a.grow(900).await.expect("room");
        let started = tokio::time::Instant::now();
        let mut b = budget.hold();
        b.grow(50).await.expect("room");
        let refused = b.grow(100).await.expect_err("no room");
        assert_eq!(refused.0, 1000);
        assert_eq!(started.elapsed(), BUDGET_WAIT);
        assert_eq!(b.bytes(), 50);
        drop(b);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_room_freed_during_its_wait() {
        let budget = BodyBudget::new(1000);
        let mut a = budget.hold();
        a.grow(1000).await.expect("room");
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move {
                let mut b = budget.hold();
                b.grow(500).await.map(|()| b.bytes())
            }
        });
        tokio::time::sleep(BUDGET_WAIT / 2).await;
        drop(a);
        assert_eq!(waiter.await.expect("joined").expect("room came"), 500);
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = BodyBudget::new(10);
        assert!(budget.hold().grow(11).await.is_err());
    }
}
