//! The accept loop (phase: accept, before classify): serves
//! HTTP/1.1 and cleartext HTTP/2 (h2c, prior knowledge) on one listener,
//! tags each request with the peer address ([`ClientAddr`]), keeps the
//! serving threads' shares of connections even ([`AcceptBalance`]),
//! caps the connections open, in all and from one client address
//! ([`ConnectionLimits`]), parks idle HTTP/1 connections so that they hold
//! little more than their socket ([`PARK_AFTER`], `park.rs`), and shuts
//! down gracefully. Binary and tests run the same [`serve`], with their
//! own listener and shutdown signal.

mod balance;
mod connection;
mod limits;
mod open_files;
mod park;
mod side_wake;
mod streams;
mod tracked;

pub use balance::{AcceptBalance, BALANCE_WAIT};
pub use limits::ConnectionLimits;
pub use open_files::{
    OpenFiles, connections_that_fit, extra_streams_that_fit, open_files_limit, open_files_needed,
    raise_open_files_limit,
};
pub use park::PARK_AFTER;
pub(crate) use streams::SharedPlace;
pub use streams::StreamBudget;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::connection::Protocols;

use crate::BoxError;

/// The head deadline unless [`ConnectionLimits::with_head_timeout`] sets
/// another (`timeouts.client_head`): the longest time a client may take to
/// send a request head, and a connection may sit idle between requests.
/// Stops slowloris clients from holding connections open. A new connection
/// of either version must also start its first request within it, and an
/// HTTP/2 connection that starts none for a whole one is sent a GOAWAY
/// (`connection.rs`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes an HTTP/1 connection reads ahead (hyper's default grows to
/// about 400 KiB while a large body streams in: 160 uploads held that much
/// each, past the shipped memory limit). Also the longest request head
/// accepted (431 beyond; nginx's is 32 KiB, gunicorn's about 8 KiB a line).
const H1_READ_BUFFER: usize = 64 * 1024;

/// Requests one HTTP/2 connection may have open at once (hyper's default
/// is 200; nginx's `http2_max_concurrent_streams` is 128, RFC 9113
/// recommends at least 100).
const H2_MAX_STREAMS: u32 = 100;

/// The HTTP/2 flow-control windows the proxy advertises, per connection
/// and per stream: the most request-body bytes a client may send on one
/// connection before the proxy reads them, which h2 keeps in memory
/// meanwhile, outside `body_budget_bytes`. hyper's default is 1 MiB for
/// both: while the proxy was not reading (an upstream slow to take a body,
/// a wait for room in the budget or for a place among the HTTP/2
/// requests), each connection held up to 1 MiB, 150 connections 191 MiB
/// (`tests/it/attack_availability.rs`). The same as an HTTP/1
/// connection's read buffer ([`H1_READ_BUFFER`]). The price: one
/// connection's uploads move at most this much per round trip (640 KB/s
/// at 100 ms).
const H2_WINDOW: u32 = H1_READ_BUFFER as u32;

/// Answer bytes buffered per HTTP/2 stream for a client that does not read
/// them (hyper's default is 400 KiB): one connection that stops reading
/// holds at most `H2_MAX_STREAMS` × this (3.2 MiB), then the upstream
/// waits. An HTTP/1 connection holds one write buffer.
const H2_SEND_BUFFER: usize = 32 * 1024;

/// How long the loop pauses after an accept error that is not about one
/// connection (EMFILE, ENFILE, ENOMEM): retrying at once would spin the
/// CPU while nothing can be accepted anyway.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// What [`serve`] asks of the service it serves: a tower service of
/// requests as hyper reads them that never fails (errors are answers),
/// cloned for each connection, its futures sent to the connection's task.
/// Every such service is one.
pub trait ServedService<B>:
    tower::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> ServedService<B> for S
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
}

/// What [`serve`] asks of an answer's body. Every such body is one.
pub trait ServedBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> ServedBody for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}

/// The TCP peer of a request, put in its extensions by [`serve`]. The proxy
/// appends it to `X-Forwarded-For`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// Serves `service` on `listener` until `shutdown` completes, then stops
/// accepting (the listener is closed, so new connections are refused),
/// lets in-flight requests finish for up to `grace`, aborts what is left
/// and returns.
///
/// Idle keep-alive connections are closed at shutdown; HTTP/2 clients get a
/// GOAWAY. Accept errors are logged and never end the loop. The `Result`
/// is for future listener set-up; the loop itself does not fail.
///
/// `balance` is this loop's share when several threads serve the same
/// listener ([`AcceptBalance::shares`]): it accepts in turn with them.
/// A listener served by one loop passes [`AcceptBalance::alone`].
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    balance: AcceptBalance,
) -> io::Result<()>
where
    S: ServedService<B>,
    B: ServedBody,
{
    serve_limited(
        listener,
        service,
        shutdown,
        grace,
        balance,
        ConnectionLimits::unlimited(),
    )
    .await
}

/// [`serve`], closing at once each connection past `limits` (shared by
/// every loop given clones of the same [`ConnectionLimits`]).
pub async fn serve_limited<S, B>(
    listener: TcpListener,
    service: S,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    balance: AcceptBalance,
    limits: ConnectionLimits,
) -> io::Result<()>
where
    S: ServedService<B>,
    B: ServedBody,
{
    let protocols = Arc::new(Protocols {
        share_bodies: limits.per_client(),
        ..protocols(limits.head_timeout())
    });

    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    // Dropped when the loop ends, `balance` then stops counting.
    balance.set_open(0);

    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow forever.
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = finished
                    && err.is_panic()
                {
                    tracing::error!(error = %err, "a connection task panicked");
                }
                balance.set_open(connections.len());
                continue;
            }
            accepted = async {
                balance.turn().await;
                listener.accept().await
            } => match accepted {
                Ok(accepted) => accepted,
                Err(err) if is_per_connection(&err) => {
                    tracing::debug!(error = %err, "accept failed for one connection");
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, backoff = ?ACCEPT_ERROR_BACKOFF, "accept failed; pausing");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        let Ok(slot) = limits.open(peer.ip(), &stop) else {
            tracing::debug!(%peer, "max_connections_per_ip reached; closing the connection");
            metrics::counter!("quota_proxy_connections_refused_per_ip_total").increment(1);
            drop(stream);
            continue;
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
        }
        let slot = Arc::new(slot);
        let protocols = Arc::clone(&protocols);
        let service = service.clone();
        let budget = limits.streams().clone();
        connections.spawn(async move {
            connection::serve(stream, peer, &protocols, service, &slot, &budget).await;
            // The connection's place is free again once it ends and none
            // of its requests is still at the app (`streams.rs`).
            drop(slot);
        });
        balance.set_open(connections.len());
    }

    drop(listener);
    tracing::info!(
        open = connections.len(),
        ?grace,
        "shutting down: no longer accepting"
    );
    stop.cancel();
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_ok() {
        tracing::info!("all connections finished");
    } else {
        tracing::warn!(
            open = connections.len(),
            "grace period over; aborting open connections"
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// hyper's servers as every connection is served: timers, the head
/// deadline `head_timeout` and the bounds on what one connection may hold.
/// The `auto` builder's own HTTP/1 and HTTP/2 builders get the same
/// settings (one macro, as their types differ).
fn protocols(head_timeout: Duration) -> Protocols {
    macro_rules! http1_settings {
        ($builder:expr) => {
            $builder
                .timer(TokioTimer::new())
                .header_read_timeout(head_timeout)
                .max_buf_size(H1_READ_BUFFER)
        };
    }
    macro_rules! http2_settings {
        ($builder:expr) => {
            $builder
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_send_buf_size(H2_SEND_BUFFER)
                .initial_connection_window_size(H2_WINDOW)
                .initial_stream_window_size(H2_WINDOW)
        };
    }
    let mut http1 = http1::Builder::new();
    http1_settings!(http1);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2_settings!(http2);
    let mut auto = auto::Builder::new(TokioExecutor::new());
    http1_settings!(auto.http1());
    http2_settings!(auto.http2());
    Protocols {
        http1,
        http2,
        auto,
        head_timeout,
        share_bodies: false,
    }
}

/// Errors that concern one incoming connection only (it was reset before
/// it was accepted): the next accept can follow at once.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's task is allocated at the size of its largest state;
    /// hyper's connection states are boxed so that a parked HTTP/1
    /// connection (`park.rs`) holds little more than its socket. Unboxed,
    /// this future was 3.7 KB; now 448 bytes.
    #[tokio::test]
    async fn a_connections_task_leaves_hypers_state_boxed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        let service = tower::service_fn(|_: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        });
        let protocols = protocols(HEADER_READ_TIMEOUT);
        let limits = ConnectionLimits::unlimited();
        let slot = Arc::new(
            limits
                .open(peer.ip(), &CancellationToken::new())
                .expect("no limit per address"),
        );
        let task = connection::serve(stream, peer, &protocols, service, &slot, limits.streams());
        let size = std::mem::size_of_val(&task);
        assert!(size <= 512, "a connection's task takes {size} bytes");
    }
}
