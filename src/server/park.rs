//! Idle HTTP/1 connections parked (phase: accept): their memory handed
//! back while they wait for their next request.
//!
//! Problem: hyper gives every HTTP/1 connection an 8 KiB read buffer and
//! an 8 KiB header write buffer and keeps both for the connection's life;
//! 10,000 idle keep-alive connections held about 240 MB. nginx frees a
//! keep-alive connection's buffers while it waits (`ngx_http_set_keepalive`).
//!
//! Mechanism: a connection's watch looks every [`PARK_AFTER`]; once one
//! look finds no request started since the last, none open and no write
//! waiting for room in the socket, the hyper connection is shut down
//! gracefully *without* closing the socket (`poll_without_shutdown`). hyper
//! hands a connection back without flushing its buffer or reading on, so
//! it is parked only if hyper finds it idle too and ends it at once; one
//! amid an exchange (a request body still coming after its answer ended)
//! is closed after the exchange instead. Only the socket is kept, waiting for
//! bytes (`quota_proxy_connections_parked_total`). When bytes come, a new
//! hyper connection serves them; the client sees one keep-alive
//! connection. Bytes hyper had read and not used (the start of a next
//! request) are handed to the next hyper connection ([`Rewind`]). A hyper
//! connection built for bytes is not parked before a request has started
//! on it, so a client dripping a head cannot restart hyper's head deadline
//! by being parked: it is restarted at most once.
//!
//! Upgrades (WebSocket) are not proxied (`proxy/`), so HTTP/1 is served
//! with hyper's plain connection, which can hand its socket back; to proxy
//! them, take the socket from `into_parts` after a 101.
//!
//! Bound: a connection is parked between one and two [`PARK_AFTER`]s after
//! its last answer ended; parked, it holds its socket and this task (a few
//! KB), and is closed after the head deadline (`timeouts.client_head`)
//! without bytes, as hyper closes an idle one. Cost: one `recv(MSG_PEEK)` and a new hyper
//! connection for the first request after a park.

use std::io;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::connection::{Activity, EndSignals, Protocols, STARTED};
use super::side_wake::{ConnectionSignals, Signal};
use super::tracked::TrackedService;
use super::{ServedBody, ServedService};

/// How often an HTTP/1 connection's watch looks whether it can be parked.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// What waiting for a parked or new connection's bytes ended with.
pub(super) enum Waited {
    /// Bytes are there to read.
    Bytes,
    /// The client closed its side, or the socket failed.
    Closed,
    /// None came within the timeout.
    TimedOut,
    /// The proxy stops, or the connection's place is wanted.
    Stopped,
}

/// Waits up to `timeout` for `stream` to have bytes to read, without
/// reading them.
pub(super) async fn wait_for_bytes(
    stream: &TcpStream,
    timeout: Duration,
    stop: &CancellationToken,
) -> Waited {
    let mut byte = [0u8; 1];
    tokio::select! {
        () = stop.cancelled() => Waited::Stopped,
        peeked = tokio::time::timeout(timeout, stream.peek(&mut byte)) => match peeked {
            Err(_) => Waited::TimedOut,
            Ok(Ok(0) | Err(_)) => Waited::Closed,
            Ok(Ok(_)) => Waited::Bytes,
        },
    }
}

/// Serves HTTP/1 on `stream` until it ends, parking it whenever it idles
/// (see the module). `activity` is the one `service` counts its requests in.
pub(super) async fn serve_http1<S, B>(
    stream: TcpStream,
    protocols: &Protocols,
    mut service: TrackedService<S>,
    activity: Arc<Activity>,
    signals: &EndSignals,
    peer: SocketAddr,
) where
    S: ServedService<B>,
    B: ServedBody,
{
    let mut io = Rewind::new(stream, Arc::clone(&activity));
    // Not before its first request: bytes came, so a head is on its way.
    let mut may_park = false;
    loop {
        // Boxed: freed while parked.
        let mut connection = Box::new(protocols.http1.serve_connection(TokioIo::new(io), service));
        let ending = Box::pin(drive(&mut connection, &activity, signals, &mut may_park)).await;
        let parts = match ending {
            Ok(Ending::Cut) => {
                tracing::debug!(%peer, "evicted connection still busy; cut");
                return;
            }
            Ok(_) => connection.into_parts(),
            Err(err) => {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
                return;
            }
        };
        io = parts.io.into_inner();
        service = parts.service;
        if !matches!(ending, Ok(Ending::Parked)) {
            // hyper left the socket open (`poll_without_shutdown`).
            let _ = io.stream.shutdown().await;
            return;
        }
        metrics::counter!("quota_proxy_connections_parked_total").increment(1);
        // Bytes came (or were left over), so a head is on its way: not
        // parked again before it has started.
        may_park = false;
        if !parts.read_buf.is_empty() {
            io.rewind(parts.read_buf);
            continue;
        }
        // Even empty, `read_buf` may hold hyper's whole read buffer.
        drop(parts.read_buf);
        match Box::pin(wait_for_bytes(
            &io.stream,
            protocols.head_timeout,
            &signals.shutdown,
        ))
        .await
        {
            Waited::Bytes => {}
            Waited::Closed | Waited::TimedOut | Waited::Stopped => return,
        }
    }
}

/// Why [`drive`] let a connection end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// It ended by itself: the client closed it, or asked to.
    ByItself,
    /// It was shut down gracefully because the proxy stops, or because a
    /// park found hyper amid an exchange; the socket is closed after it.
    ShutDown,
    /// It was idle and shut down gracefully to be parked.
    Parked,
    /// Evicted and still busy, it must close at once (`limits.rs`).
    Cut,
}

/// Polls `connection` to its end, shutting it down gracefully when
/// `signals.shutdown` is cancelled or when a look finds it idle and
/// `may_park` (set once a look sees a request started); once shutting
/// down, it ends when `signals.cut` is cancelled.
async fn drive<S, B>(
    connection: &mut http1::Connection<TokioIo<Rewind>, TrackedService<S>>,
    activity: &Activity,
    signals: &EndSignals,
    may_park: &mut bool,
) -> hyper::Result<Ending>
where
    S: ServedService<B>,
    B: ServedBody,
{
    let mut ending = None;
    // Looked at on wakes of their own only (`side_wake.rs`).
    let mut own = ConnectionSignals::new(&signals.shutdown, &signals.cut, PARK_AFTER);
    loop {
        let event = std::future::poll_fn(|cx| match connection.poll_without_shutdown(cx) {
            Poll::Ready(ended) => Poll::Ready(ControlFlow::Break(ended)),
            Poll::Pending => own.poll(cx, ending.is_some()).map(ControlFlow::Continue),
        })
        .await;
        match event {
            ControlFlow::Break(ended) => {
                return ended.map(|()| ending.unwrap_or(Ending::ByItself));
            }
            ControlFlow::Continue(Signal::Shutdown) => {
                Pin::new(&mut *connection).graceful_shutdown();
                ending = Some(Ending::ShutDown);
            }
            ControlFlow::Continue(Signal::Cut) => return Ok(Ending::Cut),
            ControlFlow::Continue(Signal::Tick) => {
                if activity.take() & STARTED != 0 {
                    *may_park = true;
                } else if *may_park && !activity.open() && !activity.write_blocked() {
                    // The tick may have been found ready after the
                    // connection's poll that ended an answer: hyper learns
                    // on its next poll that the request body was dropped,
                    // and one that will not keep the connection alive (a
                    // `Connection: close` answer, its body unread) then
                    // ends by itself. Parked, it would serve that body's
                    // bytes as requests.
                    if let Poll::Ready(ended) = poll_once(connection).await {
                        return ended.map(|()| Ending::ByItself);
                    }
                    // That poll may have started the next request (its
                    // bytes had come): shut down now, it would be answered
                    // with `Connection: close`. The next look decides.
                    if activity.open() || activity.write_blocked() {
                        continue;
                    }
                    // Only a connection hyper itself finds idle closes at
                    // once; hyper hands it back without flushing or reading
                    // on, so amid an exchange (a request body still coming
                    // after its answer ended) its bytes would be lost or
                    // misread: then it closes after the exchange instead.
                    Pin::new(&mut *connection).graceful_shutdown();
                    match poll_once(connection).await {
                        Poll::Ready(ended) => return ended.map(|()| Ending::Parked),
                        Poll::Pending => ending = Some(Ending::ShutDown),
                    }
                }
            }
        }
    }
}

/// Polls `connection` once, whatever it answers.
async fn poll_once<S, B>(
    connection: &mut http1::Connection<TokioIo<Rewind>, TrackedService<S>>,
) -> Poll<hyper::Result<()>>
where
    S: ServedService<B>,
    B: ServedBody,
{
    std::future::poll_fn(|cx| Poll::Ready(connection.poll_without_shutdown(cx))).await
}

/// A socket with bytes already read from it put back in front.
///
/// It notes in the connection's [`Activity`] whether its last write would
/// have blocked: hyper writes until its buffer is empty or the socket is
/// full, so then, and only then, hyper holds bytes not yet written.
pub(super) struct Rewind {
    unread: Bytes,
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl Rewind {
    fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            unread: Bytes::new(),
            stream,
            activity,
        }
    }

    /// Puts `bytes` back to be read first.
    fn rewind(&mut self, bytes: Bytes) {
        debug_assert!(self.unread.is_empty(), "rewound twice");
        self.unread = bytes;
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.activity.wrote(written.is_pending());
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.activity.wrote(written.is_pending());
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client's stream and the server's end of it, on loopback.
    async fn connected() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        (client, stream, peer)
    }

    /// An answer that closes its connection (`Connection: close`, the body
    /// left unread: a 408 of the client-body deadline) ending on the very
    /// tick of the watch: the connection is closed, never parked. Parked,
    /// it waited 30 s for bytes and then served the unread body's bytes as
    /// a new request. Paused time puts the answer and the fourth tick on
    /// the same instant; the select picks its first branch at random, so
    /// the case runs 16 times (each order comes up).
    #[tokio::test(start_paused = true)]
    async fn an_answer_that_closes_on_a_watch_tick_is_never_parked() {
        for _ in 0..16 {
            let (mut client, stream, peer) = connected().await;
            client
                .write_all(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 1000\r\n\r\nabc")
                .await
                .expect("send");
            let answer_late =
                tower::service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                    tokio::time::sleep(PARK_AFTER * 4).await;
                    drop(request);
                    let mut answer =
                        http::Response::new(http_body_util::Full::new(Bytes::from_static(b"late")));
                    *answer.status_mut() = http::StatusCode::REQUEST_TIMEOUT;
                    answer.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                    Ok::<_, std::convert::Infallible>(answer)
                });
            let activity = Arc::new(Activity::default());
            let service = TrackedService::new(answer_late, Arc::clone(&activity), peer, None, None);
            let signals = EndSignals {
                shutdown: CancellationToken::new(),
                cut: CancellationToken::new(),
            };
            let protocols = crate::server::protocols(crate::server::HEADER_READ_TIMEOUT);
            let served = tokio::spawn(async move {
                serve_http1(stream, &protocols, service, activity, &signals, peer).await;
            });
            let mut received = Vec::new();
            let mut buf = [0u8; 1024];
            while !received.windows(4).any(|w| w == b"late") {
                let n = client.read(&mut buf).await.expect("read the answer");
                assert_ne!(n, 0, "closed before its answer");
                received.extend_from_slice(&buf[..n]);
            }
            // Bytes a client sends on: never served as a request.
            let _ = client
                .write_all(b"GET /next HTTP/1.1\r\nhost: t\r\n\r\n")
                .await;
            let rest = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf))
                .await
                .expect("the connection is closed at once, not parked");
            assert!(
                matches!(rest, Ok(0) | Err(_)),
                "more came: {:?}",
                rest.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
            );
            served.await.expect("served");
        }
    }

    /// The watch parks a connection only while hyper has nothing left to
    /// write; hyper writes until the socket is full, so a write that
    /// would block is the sign, and the next one that goes through clears it.
    #[tokio::test]
    async fn a_write_that_would_block_is_noted_until_one_goes_through() {
        let (mut client, stream, _) = connected().await;
        let activity = Arc::new(Activity::default());
        let mut io = Rewind::new(stream, Arc::clone(&activity));
        let chunk = vec![b'x'; 1 << 16];
        let mut written = 0usize;
        while let Some(result) = io.write(&chunk).now_or_never() {
            written += result.expect("write");
            assert!(!activity.write_blocked(), "noted before a write blocked");
        }
        assert!(activity.write_blocked(), "a blocked write went unnoted");
        let mut drained = vec![0u8; written];
        client.read_exact(&mut drained).await.expect("drain");
        io.write_all(b"more").await.expect("write");
        assert!(
            !activity.write_blocked(),
            "still noted after a write went through"
        );
    }
}
