//! What one HTTP/2 connection can make the proxy hold (phase: forward):
//! the streams it may open at once and the answer bytes buffered for each
//! (`src/server/mod.rs`, `H2_MAX_STREAMS`, `H2_SEND_BUFFER`). Found by an
//! attack session: with hyper's defaults (200 streams, 400 KiB each) one
//! connection that stopped reading held tens of MB for as long as it
//! stayed open. The real binary, a real upstream on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::binary::Binary;
use crate::support::raw_http;
use crate::support::upstream::{Reply, TestUpstream};

const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// A connection that reads until `blocked` is set, then never again (a
/// client that stops reading its socket).
struct StopsReading {
    inner: hyper_util::rt::TokioIo<tokio::net::TcpStream>,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
}
impl hyper::rt::Read for StopsReading {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.blocked.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for StopsReading {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One HTTP/2 connection that opens its windows wide, asks 200 pages of
/// 1 MB at once (ordinary pass-through GETs) and stops reading: the proxy
/// buffers each stream's answer in memory up to hyper's per-stream send
/// buffer (400 KiB by default) for all 200 concurrent streams, so one
/// connection makes it hold tens of MB, and every further connection as
/// much again (an HTTP/1.1 connection that stops reading holds one write
/// buffer). Now at most `H2_MAX_STREAMS` streams of `H2_SEND_BUFFER` each.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_stops_reading_holds_little() {
    let upstream = TestUpstream::always(Reply::ok().body(vec![b'x'; 1_000_000])).await;
    let config = format!(
        "upstream = \"http://{}\"\n[identity]\ndefault_plan = \"free\"\n\
         [plans.free]\ndaily = 3\nweekly = 10\nmonthly = 30\n\
         [[routes]]\nmethod = \"POST\"\npath = \"/chat/{{id}}/send/\"\nflag = \"generate_image\"\n",
        upstream.addr()
    );
    let proxy = Binary::start(&config, &[]).await;
    // Warm up (the first requests allocate what every request reuses).
    for _ in 0..3 {
        let warm = b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let answer = raw_http::send(proxy.proxy, warm, false, ANSWER_WITHIN);
        assert_eq!(answer.status, 200, "{:?}", answer.error);
    }
    let before = proxy.memory("VmRSS");

    let blocked = Arc::new(AtomicBool::new(false));
    let tcp = tokio::net::TcpStream::connect(proxy.proxy)
        .await
        .expect("connect");
    let io = StopsReading {
        inner: TokioIo::new(tcp),
        blocked: Arc::clone(&blocked),
    };
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0x7fff_ffff)
        .initial_connection_window_size(0x7fff_ffff)
        .handshake::<_, Empty<bytes::Bytes>>(io)
        .await
        .expect("h2 handshake");
    let client = tokio::spawn(connection);
    let mut streams = Vec::new();
    for i in 0..200 {
        let mut sender = sender.clone();
        let addr = proxy.proxy;
        streams.push(tokio::spawn(async move {
            let request = http::Request::builder()
                .uri(format!("http://{addr}/page/{i}"))
                .body(Empty::new())
                .expect("request");
            let _ = sender.send_request(request).await;
        }));
    }
    // The requests go out; then the client reads nothing more.
    tokio::time::sleep(Duration::from_millis(100)).await;
    blocked.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut grown = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        grown = proxy.memory("VmRSS").saturating_sub(before);
        if grown > 64 << 20 {
            break;
        }
    }
    client.abort();
    for stream in streams {
        stream.abort();
    }
    assert!(
        grown < 32 << 20,
        "one HTTP/2 connection that stopped reading made the proxy hold {} MB more (VmRSS); \
         upstream answered {} requests",
        grown >> 20,
        upstream.count()
    );
}
