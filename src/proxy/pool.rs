//! The upstream connections of one [`ProxyService`](super::ProxyService):
//! hyper's HTTP/1.1 client connections, kept idle between requests and lent
//! to one request at a time.
//!
//! A connection is lent with the request ([`Lease`]) and comes back when
//! the response body has been read to its end: then it is idle, and the
//! next request takes the one idle the shortest time. A response dropped
//! before its end, a failed exchange or a response-head timeout closes it
//! instead, so nothing half-read is ever reused. An idle connection older
//! than [`POOL_IDLE_TIMEOUT`] is closed rather than used, and closed as soon
//! as another request hands a connection back; with no traffic at all it
//! stays open until the upstream closes it (its keep-alive timeout).
//!
//! This is what hyper-util's pooled client did here before, minus what a
//! one-upstream proxy does not need: no pool key to hash, no task spawned
//! per request to wait for the connection to be ready again, no retry.
//! With one pool per serving thread the lock is never contended.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::Response;
use http::uri::Authority;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::ForwardError;

/// Most bytes of an answer read ahead from the upstream while the client
/// has not taken the ones before (hyper's default grows to about 400 KiB):
/// a client that stops reading holds this much per request, with the
/// server side's HTTP/2 stream buffer (`server::H2_SEND_BUFFER`).
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;
use super::service::UpstreamBody;

/// How long an idle upstream connection may be used again. It must be
/// shorter than the upstream's keep-alive timeout (gunicorn's default is
/// 2 s, uvicorn's 5 s): then the proxy never sends a request on a
/// connection the upstream is closing, a race that would end in a 502 the
/// proxy may not retry. Older idle connections are closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The idle connections to one upstream.
#[derive(Debug)]
pub(crate) struct Pool {
    upstream: Authority,
    connect_timeout: Duration,
    /// Oldest first; taken from the end (last in, first out: the most
    /// recently used is the least likely to be closed by the upstream).
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// An upstream connection lent to one request. [`Lease::release`] gives it
/// back; dropping the lease closes the connection.
#[derive(Debug)]
pub(crate) struct Lease {
    sender: SendRequest<UpstreamBody>,
    pool: Arc<Pool>,
}

impl Pool {
    /// An empty pool for `upstream`; connections open on demand, each
    /// within `connect_timeout`.
    pub(crate) fn new(upstream: Authority, connect_timeout: Duration) -> Self {
        Self {
            upstream,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends `request` (origin-form, with `Host`) once, on an idle
    /// connection or a new one, and returns the response head with the
    /// lease of its connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        request: http::Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), ForwardError> {
        let mut sender = match self.checkout() {
            Some(sender) => sender,
            // Boxed: opening a connection is the rare case, and its state
            // (resolver, timer, handshake) would otherwise size, and be
            // moved with, every request's future.
            None => Box::pin(self.connect()).await?,
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ForwardError::from_hyper(&self.upstream, e))?;
        let lease = Lease {
            sender,
            pool: Arc::clone(self),
        };
        Ok((response, lease))
    }

    /// The idle connection used last, if one is ready; closed and too-old
    /// ones are dropped on the way.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(Idle { sender, since }) = idle.pop() {
            // Not ready (yet) means busy finishing an exchange: not ours to
            // wait for. Dropping it closes the connection.
            if sender.is_ready() && now.duration_since(since) < POOL_IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Opens a connection and starts the task that drives it on the
    /// current runtime.
    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, ForwardError> {
        let host = self.upstream.host();
        let port = self.upstream.port_u16().unwrap_or(80);
        let connecting = TcpStream::connect((host, port));
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(ForwardError::connect(&self.upstream, e)),
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.connect_timeout),
                );
                return Err(ForwardError::connect(&self.upstream, e));
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an upstream connection");
        }
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(UPSTREAM_READ_BUFFER)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ForwardError::from_hyper(&self.upstream, e))?;
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%upstream, error = %e, "upstream connection ended with an error");
            }
        });
        tracing::debug!(upstream = %self.upstream, "upstream connection opened");
        Ok(sender)
    }
}

impl Lease {
    /// Gives the connection back to the pool: its response was read to the
    /// end.
    pub(crate) fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self
            .pool
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Oldest first: close those idle too long to be used again.
        let expired = idle.partition_point(|i| now.duration_since(i.since) >= POOL_IDLE_TIMEOUT);
        idle.drain(..expired);
        idle.push(Idle {
            sender: self.sender,
            since: now,
        });
    }
}
