//! The life of one accepted connection: served until it ends, closed when
//! it holds its descriptor without using it, and shut down gracefully when
//! the proxy stops.
//!
//! No hyper connection is built before the client's first bytes: a
//! connection that sends none within the head deadline
//! ([`Protocols::head_timeout`], `timeouts.client_head`) of accept is
//! dropped (`quota_proxy_connections_closed_silent_total`). The first bytes
//! (peeked, not read) tell the version: HTTP/1 is served by `park.rs`,
//! which hands an idle connection's buffers back; the HTTP/2 preface by
//! hyper's HTTP/2 server; the start of the preface alone (too few bytes to
//! tell) by hyper-util's `auto` builder, which reads on until it knows.
//!
//! hyper closes an HTTP/1.1 connection that sends no request head within
//! the head deadline, between requests too. HTTP/2 has no such timer
//! at all, so [`watch`] adds it, with one timer per connection: a
//! connection that has started no request within the timeout is dropped
//! (`quota_proxy_connections_closed_silent_total`), and an HTTP/2
//! connection that starts no new request during a whole timeout is sent a
//! GOAWAY (`quota_proxy_connections_closed_idle_total`): the streams it has
//! open finish, and then it closes. (One whose client stopped reading
//! cannot be written its GOAWAY, as an HTTP/1 client that stops reading
//! an answer holds its connection: both are bounded by `max_connections`,
//! whose evicted connections are cut when they do not finish, `limits.rs`.
//! Dropping such a connection by a timer cut slow downloads short.)

use std::future::Future;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use http::Version;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::limits::Slot;
use super::park::{self, Waited};
use super::side_wake::{ConnectionSignals, Signal};
use super::streams::{ConnectionStreams, StreamBudget};
use super::tracked::TrackedService;
use super::{ServedBody, ServedService};
use crate::quota::BodyShare;

/// How a connection is told to end: `shutdown` gracefully (the proxy stops,
/// or it was evicted: `limits.rs`), `cut` at once (evicted, and too many
/// newer evicted ones are finishing). `cut` is looked at only once the
/// connection is shutting down, so a connection serving pays nothing for it.
#[derive(Debug, Clone)]
pub(super) struct EndSignals {
    pub(super) shutdown: CancellationToken,
    pub(super) cut: CancellationToken,
}

/// What a connection's requests tell its watch: flags set by each request
/// and taken (reset) by the watch when it looks, and the requests open
/// (started, their answer's body not yet ended). Relaxed atomics, three
/// operations per request.
#[derive(Debug, Default)]
pub(super) struct Activity {
    flags: AtomicU8,
    open: AtomicUsize,
    /// The last write to the socket would have blocked: hyper holds bytes
    /// it could not write yet (`park.rs` sets it).
    write_blocked: AtomicBool,
}

/// A request started since the watch last looked.
pub(super) const STARTED: u8 = 1;
/// The connection speaks HTTP/2.
const HTTP2: u8 = 2;

impl Activity {
    /// Notes that a request of `version` started.
    pub(super) fn request(&self, version: Version) {
        let http2 = if version == Version::HTTP_2 { HTTP2 } else { 0 };
        self.flags.store(STARTED | http2, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that a request's answer ended (or was dropped).
    pub(super) fn answered(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether a request is open.
    pub(super) fn open(&self) -> bool {
        self.open.load(Ordering::Relaxed) != 0
    }

    /// Notes whether the last write to the socket would have blocked.
    pub(super) fn wrote(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    /// Whether the last write to the socket would have blocked.
    pub(super) fn write_blocked(&self) -> bool {
        self.write_blocked.load(Ordering::Relaxed)
    }

    /// The flags set since the last call.
    pub(super) fn take(&self) -> u8 {
        self.flags.swap(0, Ordering::Relaxed)
    }
}

/// A connection as [`watch`] sees it beside hyper's state: what its
/// requests record, how it is told to end, its peer, and how long it may go
/// without starting a request.
struct Watched {
    activity: Arc<Activity>,
    signals: EndSignals,
    peer: SocketAddr,
    head_timeout: Duration,
}

/// Drives `connection` to its end, closing it when silent or idle for
/// `head_timeout` (see the module), shutting it down gracefully once
/// `signals.shutdown` is cancelled and dropping it once `signals.cut` is.
/// `begin_shutdown` starts a graceful shutdown (hyper's
/// `graceful_shutdown`), after which the connection is polled to its end.
async fn watch<C, T, E>(connection: C, begin_shutdown: impl Fn(Pin<&mut C>), watched: Watched)
where
    C: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let Watched {
        activity,
        signals,
        peer,
        head_timeout,
    } = watched;
    let mut connection = pin!(connection);
    let mut started_any = false;
    let mut http2 = false;
    let mut closing = false;
    let mut own = ConnectionSignals::new(&signals.shutdown, &signals.cut, head_timeout);
    let ended = loop {
        let event = std::future::poll_fn(|cx| match connection.as_mut().poll(cx) {
            Poll::Ready(ended) => Poll::Ready(ControlFlow::Break(ended)),
            Poll::Pending => own.poll(cx, closing).map(ControlFlow::Continue),
        })
        .await;
        match event {
            ControlFlow::Break(ended) => break ended,
            ControlFlow::Continue(Signal::Shutdown) => {
                begin_shutdown(connection.as_mut());
                closing = true;
            }
            ControlFlow::Continue(Signal::Cut) => {
                tracing::debug!(%peer, "evicted connection still busy; cut");
                return;
            }
            ControlFlow::Continue(Signal::Tick) => {
                let seen = activity.take();
                if seen & STARTED != 0 {
                    started_any = true;
                    http2 = seen & HTTP2 != 0;
                } else if !started_any {
                    tracing::debug!(%peer, timeout = ?head_timeout,
                        "no request started in time; closing the connection");
                    metrics::counter!("quota_proxy_connections_closed_silent_total").increment(1);
                    // Dropping the connection closes it.
                    return;
                } else if http2 {
                    tracing::debug!(%peer, timeout = ?head_timeout,
                        "HTTP/2 connection idle; sending GOAWAY");
                    metrics::counter!("quota_proxy_connections_closed_idle_total").increment(1);
                    begin_shutdown(connection.as_mut());
                    closing = true;
                }
            }
        }
    };
    if let Err(err) = ended {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// hyper's servers, configured once for every connection of a loop.
pub(super) struct Protocols {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
    /// For a connection whose first bytes are too few to tell the version.
    pub(super) auto: auto::Builder<TokioExecutor>,
    /// How long a connection may take to start a request, and sit idle
    /// between requests (`timeouts.client_head`).
    pub(super) head_timeout: Duration,
    /// Whether each HTTP/2 connection's request bodies share one
    /// [`BodyShare`] of the body budget: with `max_connections_per_ip`,
    /// where a connection is one client's. Without it (behind a load
    /// balancer, whose HTTP/2 connections carry many clients) a bound per
    /// connection would bound the balancer's clients together.
    pub(super) share_bodies: bool,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `stream`, accepted from `peer`, until it ends or the signals of
/// its `slot` end it (see the module); its HTTP/2 requests beyond the first
/// take places in `budget`, and those still at the app when it ends keep
/// `slot` (`streams.rs`).
pub(super) async fn serve<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    protocols: &Protocols,
    service: S,
    slot: &Arc<Slot>,
    budget: &StreamBudget,
) where
    S: ServedService<B>,
    B: ServedBody,
{
    let signals = EndSignals {
        shutdown: slot.shutdown.clone(),
        cut: slot.cut.clone(),
    };
    // Boxed, as each way below: this task is as large as its largest
    // state, and a parked connection should hold little (`park.rs`).
    match Box::pin(park::wait_for_bytes(
        &stream,
        protocols.head_timeout,
        &signals.shutdown,
    ))
    .await
    {
        Waited::Bytes => {}
        Waited::TimedOut => {
            tracing::debug!(%peer, timeout = ?protocols.head_timeout,
                "nothing sent in time; closing the connection");
            metrics::counter!("quota_proxy_connections_closed_silent_total").increment(1);
            return;
        }
        Waited::Closed | Waited::Stopped => return,
    }
    let mut first = [0u8; HTTP2_PREFACE.len()];
    let Ok(peeked) = stream.peek(&mut first).await else {
        return;
    };
    let activity = Arc::new(Activity::default());
    let http1 = first[..peeked] != HTTP2_PREFACE[..peeked];
    let streams = (!http1).then(|| ConnectionStreams::new(budget, Arc::clone(slot)));
    let bodies = (!http1 && protocols.share_bodies).then(BodyShare::new);
    let service = TrackedService::new(service, Arc::clone(&activity), peer, streams, bodies);
    let watched = Watched {
        activity,
        signals,
        peer,
        head_timeout: protocols.head_timeout,
    };
    if http1 {
        Box::pin(park::serve_http1(
            stream,
            protocols,
            service,
            Arc::clone(&watched.activity),
            &watched.signals,
            peer,
        ))
        .await;
    } else if peeked == HTTP2_PREFACE.len() {
        let connection = protocols
            .http2
            .serve_connection(TokioIo::new(stream), service);
        let shutdown = http2::Connection::graceful_shutdown;
        Box::pin(watch(connection, shutdown, watched)).await;
    } else {
        let connection = protocols
            .auto
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let shutdown = auto::UpgradeableConnection::graceful_shutdown;
        Box::pin(watch(connection, shutdown, watched)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that never ends, told to shut down and then cut: the
    /// watch asks it to shut down, waits, and drops it once cut.
    #[tokio::test(start_paused = true)]
    async fn a_closing_connection_is_dropped_once_cut() {
        let signals = EndSignals {
            shutdown: CancellationToken::new(),
            cut: CancellationToken::new(),
        };
        let activity = Arc::new(Activity::default());
        activity.request(Version::HTTP_11);
        let watched = Watched {
            activity,
            signals: signals.clone(),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            head_timeout: Duration::from_secs(30),
        };
        let asked = Arc::new(AtomicBool::new(false));
        let asked_in_watch = Arc::clone(&asked);
        let connection = std::future::pending::<Result<(), String>>();
        let mut watching = tokio::spawn(watch(
            connection,
            move |_| asked_in_watch.store(true, Ordering::Relaxed),
            watched,
        ));
        // Heads time out meanwhile: a connection that started a request
        // stays open.
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!watching.is_finished());
        signals.shutdown.cancel();
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(asked.load(Ordering::Relaxed), "not asked to shut down");
        assert!(!watching.is_finished(), "dropped before the cut");
        signals.cut.cancel();
        tokio::time::timeout(Duration::from_secs(1), &mut watching)
            .await
            .expect("dropped once cut")
            .expect("watch");
    }
}
