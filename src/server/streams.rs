//! HTTP/2 requests open beyond each connection's first (phase: accept,
//! before classify): a budget shared by the process, and a bound per
//! connection on its requests at the app.
//!
//! Problem: each request open holds an upstream connection, a file
//! descriptor, until its answer ends. An HTTP/1 connection has one request
//! open at a time, so `max_connections` bounds them (`open_files.rs`); an
//! HTTP/2 connection has up to `H2_MAX_STREAMS`. While the app was slow,
//! four HTTP/2 connections with 100 slow requests each took every
//! descriptor under a limit of 400: `accept` failed, and no newcomer got
//! in until those requests ended (`tests/it/http2_limits.rs`). And a
//! client may reset a request (`RST_STREAM`) once it was forwarded: the
//! app works on (a gunicorn sync worker does not notice), but the stream
//! no longer counts against `H2_MAX_STREAMS`, so one connection that
//! reset each request 60 ms after sending it put 3,281 requests into the
//! app in 2 s (`tests/it/attack_h2_reset.rs`).
//! Mechanism: each connection may have one request open on its own
//! ([`ConnectionStreams`]); each more at once takes a place in the
//! process's [`StreamBudget`], sized from the open-files limit
//! (`open_files::extra_streams_that_fit`). When none is free the request
//! waits, before anything of it is judged, for a place or for its
//! connection's own (`quota_proxy_http2_requests_waited_total`). A request
//! its client resets keeps its places, and its connection's [`Slot`], until
//! the app's answer head comes (`tracked.rs`), or until the answer's end
//! when the quota layer reads it on for a report ([`SharedPlace`]), and a
//! connection has at most `H2_MAX_STREAMS` requests at the app, open or
//! reset: past that, a new one waits too.
//! Bound: requests open at once ≤ connections open + the budget; requests
//! at the app ≤ `H2_MAX_STREAMS` per connection, the connection counted
//! open (`max_connections`, `max_connections_per_ip`) while any is.
//! Price: while the budget is full (a flood of slow HTTP/2 requests), each
//! HTTP/2 connection without a place gets its requests served one at a
//! time, none refused; HTTP/1 connections are not touched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::H2_MAX_STREAMS;
use super::limits::Slot;

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

/// The places one HTTP/2 connection's requests take: one of the
/// connection's `H2_MAX_STREAMS` at the app, then its own, then the
/// process's budget.
#[derive(Debug)]
pub(super) struct ConnectionStreams {
    /// The connection's requests at the app, open or reset by the client.
    at_app: Arc<Semaphore>,
    own: Arc<Semaphore>,
    budget: StreamBudget,
    /// The connection's place among the connections, kept by its requests
    /// still at the app once it has ended.
    slot: Arc<Slot>,
}

/// A request's place, given back when dropped (with its answer's body, or
/// once the app answered a request its client reset).
#[derive(Debug)]
pub(super) struct StreamPlace {
    _at_app: OwnedSemaphorePermit,
    _permit: OwnedSemaphorePermit,
    slot: Arc<Slot>,
    /// Whether the forwarding service has started sending the request.
    forwarded: AtomicBool,
}

/// A request's place as its extensions carry it to the forwarding service,
/// which keeps it with the upstream's answer body
/// (`proxy::ProxyBody`): an answer the quota layer reads on for its report
/// once the client reset the request (`quota::usage_body`) keeps the place
/// while the app writes it.
#[derive(Debug, Clone)]
pub(crate) struct SharedPlace {
    place: Arc<StreamPlace>,
}

impl SharedPlace {
    /// Another holder of `place`.
    pub(super) fn new(place: &Arc<StreamPlace>) -> Self {
        Self {
            place: Arc::clone(place),
        }
    }

    /// Notes that the request is being sent to the app: from here, a reset
    /// no longer cancels it (`tracked.rs`).
    pub(crate) fn forwarding(&self) {
        self.place.forwarded.store(true, Ordering::Relaxed);
    }
}

impl StreamPlace {
    /// Whether the request was sent to the app, or began to be: a request
    /// reset before is dropped, and never reaches it.
    pub(super) fn forwarded(&self) -> bool {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Cancelled when the request's connection must close at once
    /// (evicted, `limits.rs`): a reset request still at the app then lets
    /// go of it.
    pub(super) fn cut(&self) -> &CancellationToken {
        &self.slot.cut
    }
}

impl ConnectionStreams {
    /// The places of the connection holding `slot`, beside the process's
    /// `budget`.
    pub(super) fn new(budget: &StreamBudget, slot: Arc<Slot>) -> Self {
        Self {
            at_app: Arc::new(Semaphore::new(H2_MAX_STREAMS as usize)),
            own: Arc::new(Semaphore::new(1)),
            budget: budget.clone(),
            slot,
        }
    }

    /// A place for one more request: one at the app (waiting while the
    /// connection has `H2_MAX_STREAMS` there), then the connection's own
    /// when free, else one of the budget's, else the first of the two to
    /// come free.
    pub(super) async fn place(&self) -> StreamPlace {
        // No semaphore here is ever closed, so no acquire fails.
        let never_closed = "a stream semaphore is never closed";
        let (at_app, mut waited) = match Arc::clone(&self.at_app).try_acquire_owned() {
            Ok(at_app) => (at_app, false),
            Err(_) => {
                let at_app = Arc::clone(&self.at_app).acquire_owned().await;
                (at_app.expect(never_closed), true)
            }
        };
        let permit = match Arc::clone(&self.own).try_acquire_owned() {
            Ok(own) => own,
            Err(_) => match Arc::clone(&self.budget.0).try_acquire_owned() {
                Ok(shared) => shared,
                Err(_) => {
                    waited = true;
                    let permit = tokio::select! {
                        own = Arc::clone(&self.own).acquire_owned() => own,
                        shared = Arc::clone(&self.budget.0).acquire_owned() => shared,
                    };
                    permit.expect(never_closed)
                }
            },
        };
        if waited {
            metrics::counter!("quota_proxy_http2_requests_waited_total").increment(1);
        }
        StreamPlace {
            _at_app: at_app,
            _permit: permit,
            slot: Arc::clone(&self.slot),
            forwarded: AtomicBool::new(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::server::limits::ConnectionLimits;

    const SOON: Duration = Duration::from_millis(50);

    /// The places of a new connection, beside `budget`.
    fn connection(budget: &StreamBudget) -> ConnectionStreams {
        let limits = ConnectionLimits::unlimited();
        let slot = limits
            .open([127, 0, 0, 1].into(), &CancellationToken::new())
            .expect("no limit per address");
        ConnectionStreams::new(budget, Arc::new(slot))
    }

    #[tokio::test]
    async fn a_connection_has_one_place_of_its_own_and_shares_the_rest() {
        let budget = StreamBudget::new(1);
        let first = connection(&budget);
        let second = connection(&budget);
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
        let busy = connection(&budget);
        let (_busy_own, busy_shared) = (busy.place().await, busy.place().await);
        let streams = connection(&budget);
        let _own = streams.place().await;
        let waiting = streams.place();
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(SOON, &mut waiting).await.is_err());
        drop(busy_shared);
        assert!(tokio::time::timeout(SOON, &mut waiting).await.is_ok());
    }

    #[tokio::test]
    async fn a_connection_has_at_most_h2_max_streams_places_at_the_app() {
        let budget = StreamBudget::unlimited();
        let streams = connection(&budget);
        let mut places = Vec::new();
        for _ in 0..H2_MAX_STREAMS {
            places.push(
                tokio::time::timeout(SOON, streams.place())
                    .await
                    .expect("a place"),
            );
        }
        let waiting = streams.place();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(SOON, &mut waiting).await.is_err(),
            "a request past H2_MAX_STREAMS at the app waits"
        );
        assert!(
            tokio::time::timeout(SOON, connection(&budget).place())
                .await
                .is_ok(),
            "another connection does not"
        );
        places.pop();
        assert!(tokio::time::timeout(SOON, &mut waiting).await.is_ok());
    }
}
