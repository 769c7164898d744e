//! The life of one accepted connection: served until it ends, closed when
//! it holds its descriptor without using it, and shut down gracefully when
//! the proxy stops.
//!
//! hyper closes an HTTP/1.1 connection that sends no request head within
//! [`HEADER_READ_TIMEOUT`], between requests too. It cannot do so before it
//! knows the version (which needs bytes), and HTTP/2 has no such timer at
//! all, so this watch adds both, with one timer per connection: a
//! connection that has started no request within the timeout of accept is
//! dropped (`quota_proxy_connections_closed_silent_total`), and an HTTP/2
//! connection that starts no new request during a whole timeout is sent a
//! GOAWAY (`quota_proxy_connections_closed_idle_total`): the streams it has
//! open finish, and then it closes.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use http::Version;
use tokio_util::sync::CancellationToken;

use super::HEADER_READ_TIMEOUT;

/// What a connection's requests tell its watch: set by each request, taken
/// (reset) by the watch once per [`HEADER_READ_TIMEOUT`]. One relaxed
/// store per request, nothing else.
#[derive(Debug, Default)]
pub(super) struct Activity(AtomicU8);

/// A request started since the watch last looked.
const STARTED: u8 = 1;
/// The connection speaks HTTP/2.
const HTTP2: u8 = 2;

impl Activity {
    /// Notes that a request of `version` started.
    pub(super) fn request(&self, version: Version) {
        let http2 = if version == Version::HTTP_2 { HTTP2 } else { 0 };
        self.0.store(STARTED | http2, Ordering::Relaxed);
    }

    fn take(&self) -> u8 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

/// Drives `connection` from `peer` to its end, closing it when silent or
/// idle (see the module) and shutting it down gracefully once `stop` is
/// cancelled. `begin_shutdown` starts a graceful shutdown (hyper's
/// `graceful_shutdown`), after which the connection is polled to its end.
pub(super) async fn watch<C, T, E>(
    connection: C,
    begin_shutdown: impl Fn(Pin<&mut C>),
    activity: Arc<Activity>,
    stop: CancellationToken,
    peer: SocketAddr,
) where
    C: Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut connection = pin!(connection);
    let mut started_any = false;
    let mut http2 = false;
    let mut closing = false;
    let ended = loop {
        tokio::select! {
            ended = &mut connection => break ended,
            () = stop.cancelled(), if !closing => {
                begin_shutdown(connection.as_mut());
                closing = true;
            }
            () = tokio::time::sleep(HEADER_READ_TIMEOUT), if !closing => {
                let seen = activity.take();
                if seen & STARTED != 0 {
                    started_any = true;
                    http2 = seen & HTTP2 != 0;
                } else if !started_any {
                    tracing::debug!(%peer, timeout = ?HEADER_READ_TIMEOUT,
                        "no request started in time; closing the connection");
                    metrics::counter!("quota_proxy_connections_closed_silent_total").increment(1);
                    // Dropping the connection closes it.
                    return;
                } else if http2 {
                    tracing::debug!(%peer, timeout = ?HEADER_READ_TIMEOUT,
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
