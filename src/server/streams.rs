//! HTTP/2 requests open beyond each connection's first (phase: accept,
//! before classify): a budget shared by the process.
//!
//! Problem: each request open holds an upstream connection, a file
//! descriptor, until its answer ends. An HTTP/1 connection has one request
//! open at a time, so `max_connections` bounds them (`open_files.rs`); an
//! HTTP/2 connection has up to `H2_MAX_STREAMS`. While the app was slow,
//! four HTTP/2 connections with 100 slow requests each took every
//! descriptor under a limit of 400: `accept` failed, and no newcomer got
//! in until those requests ended (`tests/it/http2_limits.rs`).
//! Mechanism: each connection may have one request open on its own
//! ([`ConnectionStreams`]); each more at once takes a place in the
//! process's [`StreamBudget`], sized from the open-files limit
//! (`open_files::extra_streams_that_fit`). When none is free the request
//! waits, before anything of it is judged, for a place or for its
//! connection's own (`quota_proxy_http2_requests_waited_total`).
//! Bound: requests open at once ≤ connections open + the budget.
//! Price: while the budget is full (a flood of slow HTTP/2 requests), each
//! HTTP/2 connection without a place gets its requests served one at a
//! time, none refused; HTTP/1 connections are not touched.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The places for HTTP/2 requests open beyond each connection's first,
/// shared by every serving thread; clones share them.
#[derive(Debug, Clone)]
pub struct StreamBudget(Arc<Semaphore>);

impl StreamBudget {
    /// `places` requests beyond each connection's first, at most
    /// [`Semaphore::MAX_PERMITS`].
    pub fn new(places: usize) -> Self {
        Self(Arc::new(Semaphore::new(places.min(Semaphore::MAX_PERMITS))))
    }

    /// As many as the process's file descriptors allow.
    pub fn unlimited() -> Self {
        Self::new(Semaphore::MAX_PERMITS)
    }

    /// Places free now.
    #[cfg(test)]
    fn free(&self) -> usize {
        self.0.available_permits()
    }
}

/// The places one HTTP/2 connection's requests take: its own, then the
/// process's budget.
#[derive(Debug)]
pub(super) struct ConnectionStreams {
    own: Arc<Semaphore>,
    budget: StreamBudget,
}

/// A request's place, given back when dropped (with its answer's body).
#[derive(Debug)]
pub(super) struct StreamPlace {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionStreams {
    /// A connection's places, beside the process's `budget`.
    pub(super) fn new(budget: &StreamBudget) -> Self {
        Self {
            own: Arc::new(Semaphore::new(1)),
            budget: budget.clone(),
        }
    }

    /// A place for one more request: the connection's own when free, else
    /// one of the budget's, else the first of the two to come free.
    pub(super) async fn place(&self) -> StreamPlace {
        if let Ok(own) = Arc::clone(&self.own).try_acquire_owned() {
            return StreamPlace { _permit: own };
        }
        if let Ok(shared) = Arc::clone(&self.budget.0).try_acquire_owned() {
            return StreamPlace { _permit: shared };
        }
        metrics::counter!("quota_proxy_http2_requests_waited_total").increment(1);
        // Neither semaphore is ever closed, so neither acquire fails.
        let permit = tokio::select! {
            own = Arc::clone(&self.own).acquire_owned() => own,
            shared = Arc::clone(&self.budget.0).acquire_owned() => shared,
        };
        StreamPlace {
            _permit: permit.expect("a stream semaphore is never closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SOON: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_connection_has_one_place_of_its_own_and_shares_the_rest() {
        let budget = StreamBudget::new(1);
        let first = ConnectionStreams::new(&budget);
        let second = ConnectionStreams::new(&budget);
        let own = first.place().await;
        let shared = first.place().await;
        assert_eq!(
            budget.free(),
            0,
            "the second request took the budget's place"
        );
        // Another connection still has its own.
        let other = tokio::time::timeout(SOON, second.place()).await;
        assert!(other.is_ok(), "a connection's first request never waits");
        // A third request on the first connection waits for a place.
        let waiting = first.place();
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(SOON, &mut waiting).await.is_err());
        drop(own);
        let third = tokio::time::timeout(SOON, &mut waiting).await;
        assert!(third.is_ok(), "the connection's own place came free");
        drop(shared);
        assert_eq!(budget.free(), 1, "a place goes back with its request");
    }

    #[tokio::test]
    async fn a_waiting_request_takes_a_budget_place_that_comes_free() {
        let budget = StreamBudget::new(1);
        let busy = ConnectionStreams::new(&budget);
        let (_busy_own, busy_shared) = (busy.place().await, busy.place().await);
        let streams = ConnectionStreams::new(&budget);
        let _own = streams.place().await;
        let waiting = streams.place();
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(SOON, &mut waiting).await.is_err());
        drop(busy_shared);
        assert!(tokio::time::timeout(SOON, &mut waiting).await.is_ok());
    }
}
