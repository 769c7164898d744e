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
//!
//! One connection's share ([`BodyShare`]). Problem: an HTTP/1 connection
//! holds one body at a time, so `max_connections_per_ip` (or an ingress's
//! per-client limit) bounds what one client holds; an HTTP/2 connection
//! carries up to 100 requests at once, each with its body, and one such
//! connection filled a 2 MB budget under `max_connections_per_ip = 1` (an
//! attack session), after which every other body waited and got 503.
//! Mechanism: the server puts one [`BodyShare`] in the extensions of every
//! request of an HTTP/2 connection; its bodies take their bytes from the
//! share as well as from the budget. Bound: one connection's bodies hold
//! at most [`BodyShare::bytes`] (twice `max_body_bytes`, what one body can
//! hold while its buffer grows by doubling), as an HTTP/1 connection's one
//! body does. Price: a connection whose bodies hold its share has its
//! next body wait up to [`BUDGET_WAIT`], then answered 503, while other
//! clients' bodies are not touched.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Longest wait for room in the budget before the request is answered 503.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// The `Retry-After` (seconds) of a request refused for lack of budget.
pub(crate) const BUDGET_RETRY_AFTER: u32 = 2;

/// The budget, or the connection's share of it, had no room within
/// [`BUDGET_WAIT`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum BudgetFull {
    /// The process's budget: `body_budget_bytes`.
    #[error(
        "the proxy holds its whole body budget ({0} bytes, body_budget_bytes) in other requests' bodies"
    )]
    Process(u64),
    /// One HTTP/2 connection's share: twice `max_body_bytes`.
    #[error(
        "this connection's other requests hold its whole share of the body budget ({0} bytes, twice max_body_bytes)"
    )]
    Connection(u64),
}

/// One client connection's share of the body budget: the bodies of its
/// requests together hold at most [`BodyShare::bytes`] of it. The server
/// puts one in the extensions of every request of an HTTP/2 connection
/// (an HTTP/1 connection holds one body at a time, and needs none); a
/// server of a library user's may do the same. Clones share it; its size
/// is fixed by its first body, so a reload that changes `max_body_bytes`
/// applies to connections opened after it.
#[derive(Debug, Clone, Default)]
pub struct BodyShare(Arc<OnceLock<Arc<ShareBytes>>>);

/// A [`BodyShare`]'s bytes: free, and in all.
#[derive(Debug)]
struct ShareBytes {
    free: Semaphore,
    size: u64,
}

impl BodyShare {
    /// A share with nothing held yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most one connection's bodies hold together, for a
    /// `max_body_bytes` of `max_body`: twice that, what a single body can
    /// hold at most (memory grows by doubling), so one body alone never
    /// waits for its share.
    pub fn bytes(max_body: u64) -> u64 {
        max_body
            .saturating_mul(2)
            .min(Semaphore::MAX_PERMITS as u64)
    }

    /// The share's bytes, sized for `max_body` on first use.
    fn sized(&self, max_body: u64) -> Arc<ShareBytes> {
        Arc::clone(self.0.get_or_init(|| {
            let size = Self::bytes(max_body);
            Arc::new(ShareBytes {
                free: Semaphore::new(usize::try_from(size).unwrap_or(Semaphore::MAX_PERMITS)),
                size,
            })
        }))
    }
}

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

    /// A holding of nothing yet, to grow as a body arrives: from this
    /// budget and, when the request carries one, its connection's `share`
    /// (sized for a `max_body_bytes` of `max_body`).
    pub(crate) fn hold(&self, share: Option<&BodyShare>, max_body: u64) -> Held {
        Held {
            budget: self.clone(),
            share: share.map(|share| share.sized(max_body)),
            bytes: 0,
        }
    }
}

/// Bytes taken from a [`BodyBudget`] (and from a connection's
/// [`BodyShare`], if any); given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    budget: BodyBudget,
    /// The connection's share, which holds the same bytes.
    share: Option<Arc<ShareBytes>>,
    bytes: u64,
}

impl Held {
    /// Takes `more` bytes, from the connection's share, then from the
    /// budget, waiting up to [`BUDGET_WAIT`] in all for room.
    pub(crate) async fn grow(&mut self, more: usize) -> Result<(), BudgetFull> {
        let full = BudgetFull::Process(self.budget.capacity);
        let Ok(more32) = u32::try_from(more) else {
            return Err(full);
        };
        if more32 == 0 {
            return Ok(());
        }
        if u64::from(more32) > self.budget.capacity {
            return Err(full);
        }
        let mut deadline = None;
        let from_share = match &self.share {
            Some(share) => {
                let full = BudgetFull::Connection(share.size);
                let taken = take(&share.free, more32, full, &mut deadline).await;
                if taken.is_err() {
                    metrics::counter!("quota_proxy_body_share_refused_total").increment(1);
                }
                Some(taken?)
            }
            None => None,
        };
        let Ok(permit) = take(&self.budget.bytes, more32, full, &mut deadline).await else {
            metrics::counter!("quota_proxy_body_budget_refused_total").increment(1);
            return Err(full);
        };
        permit.forget();
        if let Some(permit) = from_share {
            permit.forget();
        }
        self.bytes += u64::from(more32);
        Ok(())
    }

    /// Gives back `fewer` of the bytes held (at most all of them).
    pub(crate) fn release(&mut self, fewer: usize) {
        let fewer = (fewer as u64).min(self.bytes);
        self.bytes -= fewer;
        self.give_back(fewer);
    }

    /// Returns `bytes` to the budget and the share.
    fn give_back(&self, bytes: u64) {
        let permits = usize::try_from(bytes).unwrap_or(usize::MAX);
        self.budget.bytes.add_permits(permits);
        if let Some(share) = &self.share {
            share.free.add_permits(permits);
        }
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
            self.give_back(self.bytes);
        }
    }
}

/// `bytes` permits of `semaphore`, waiting for them until `deadline` (set
/// to [`BUDGET_WAIT`] from now by the first wait of a grow); `full` when
/// they did not come.
async fn take<'a>(
    semaphore: &'a Semaphore,
    bytes: u32,
    full: BudgetFull,
    deadline: &mut Option<Instant>,
) -> Result<SemaphorePermit<'a>, BudgetFull> {
    if let Ok(permit) = semaphore.try_acquire_many(bytes) {
        return Ok(permit);
    }
    let until = *deadline.get_or_insert_with(|| Instant::now() + BUDGET_WAIT);
    match tokio::time::timeout_at(until, semaphore.acquire_many(bytes)).await {
        Ok(Ok(permit)) => Ok(permit),
        // Timed out (or closed, which it never is).
        _ => Err(full),
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
        let mut a = budget.hold(None, u64::MAX);
        a.grow(600).await.expect("room");
        assert_eq!(budget.available(), 400);
        let mut b = budget.hold(None, u64::MAX);
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
        let mut a = budget.hold(None, u64::MAX);
        a.grow(900).await.expect("room");
        let started = tokio::time::Instant::now();
        let mut b = budget.hold(None, u64::MAX);
        b.grow(50).await.expect("room");
        let refused = b.grow(100).await.expect_err("no room");
        assert!(matches!(refused, BudgetFull::Process(1000)), "{refused:?}");
        assert_eq!(started.elapsed(), BUDGET_WAIT);
        assert_eq!(b.bytes(), 50);
        drop(b);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_room_freed_during_its_wait() {
        let budget = BodyBudget::new(1000);
        let mut a = budget.hold(None, u64::MAX);
        a.grow(1000).await.expect("room");
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move {
                let mut b = budget.hold(None, u64::MAX);
                b.grow(500).await.map(|()| b.bytes())
            }
        });
        tokio::time::sleep(BUDGET_WAIT / 2).await;
        drop(a);
        assert_eq!(waiter.await.expect("joined").expect("room came"), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn one_connection_holds_its_share_and_no_more() {
        let budget = BodyBudget::new(1_000_000);
        let share = BodyShare::new();
        // max_body_bytes 100: the connection's bodies hold 200 at most.
        let mut first = budget.hold(Some(&share), 100);
        first.grow(150).await.expect("within the share");
        let mut second = budget.hold(Some(&share), 100);
        second.grow(50).await.expect("the rest of the share");
        let started = tokio::time::Instant::now();
        let mut third = budget.hold(Some(&share), 100);
        let refused = third.grow(1).await.expect_err("the share is held");
        assert!(
            matches!(refused, BudgetFull::Connection(200)),
            "{refused:?}"
        );
        assert_eq!(started.elapsed(), BUDGET_WAIT);
        assert_eq!(
            budget.available(),
            1_000_000 - 200,
            "a refusal takes nothing"
        );
        // Another connection, and a request with no share, are not touched.
        let other = BodyShare::new();
        budget
            .hold(Some(&other), 100)
            .grow(200)
            .await
            .expect("its own share");
        budget.hold(None, 100).grow(5000).await.expect("no share");
        // What a body gives back, its connection may take again.
        drop(first);
        third.grow(150).await.expect("room again");
        drop((second, third));
        assert_eq!(budget.available(), 1_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_alone_never_waits_for_its_share() {
        let budget = BodyBudget::new(1_000_000);
        let share = BodyShare::new();
        let mut alone = budget.hold(Some(&share), 1000);
        // As a buffer doubling past the body's length takes it.
        alone.grow(1024).await.expect("room");
        alone.grow(976).await.expect("room");
        assert_eq!(alone.bytes(), BodyShare::bytes(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn the_share_and_the_budget_wait_one_deadline_together() {
        let budget = BodyBudget::new(1000);
        let share = BodyShare::new();
        let mut held = budget.hold(Some(&share), 500);
        held.grow(1000).await.expect("room");
        // The share frees room after half the wait; the budget never does.
        let waiter = tokio::spawn({
            let budget = budget.clone();
            let share = share.clone();
            async move {
                let started = tokio::time::Instant::now();
                let refused = budget.hold(Some(&share), 500).grow(100).await;
                (refused, started.elapsed())
            }
        });
        tokio::time::sleep(BUDGET_WAIT / 2).await;
        held.release(100);
        let mut other = budget.hold(None, 500);
        other
            .grow(100)
            .await
            .expect("the budget's room, taken at once");
        let (refused, waited) = waiter.await.expect("joined");
        assert!(
            matches!(refused, Err(BudgetFull::Process(1000))),
            "{refused:?}"
        );
        assert_eq!(waited, BUDGET_WAIT, "one wait in all, not one for each");
    }

    #[tokio::test]
    async fn more_than_the_whole_budget_is_refused_at_once() {
        let budget = BodyBudget::new(10);
        assert!(budget.hold(None, u64::MAX).grow(11).await.is_err());
    }
}
