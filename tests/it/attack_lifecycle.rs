//! Attack session on the connection lifecycle (accept, park, eviction,
//! upstream pool), 2026-12-06. Each test here failed on the code it was
//! written against (6ba22c6): evicted connections that never finish their
//! last exchange (a dripped body, an HTTP/2 client that stopped reading)
//! piled up past `max_connections` and, once every open connection was
//! one of them, every newcomer was refused. The name says what holds now
//! (`server/limits.rs`). (A fourth found that an idle HTTP/2 connection
//! that cannot be written its GOAWAY is never closed; dropping it by a
//! timer cut slow downloads short, `attack_cut.rs`, so it is bounded by
//! `max_connections` alone, as an HTTP/1 client that stops reading is.)

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::limits::metrics;
use crate::parking::{GET, answer_on, config};
use crate::support::binary::Binary;
use crate::support::upstream::{Reply, TestUpstream};

/// `max_connections` in these tests.
const MAX: usize = 4;

/// Evicted connections left to finish at once with `MAX`: `MAX / 8`, at
/// least 1 (`ConnectionLimits::finishing`).
const FINISHING: usize = 1;

/// The head of an image request on the inspected chat route that promises
/// 100,000 body bytes, and the start of its JSON body.
const SLOW_UPLOAD: &[u8] = b"POST /chat/7/send/ HTTP/1.1\r\nhost: app\r\nx-user-id: mallory\r\n\
    x-subscription-type: free\r\ncontent-type: application/json\r\n\
    content-length: 100000\r\n\r\n{\"message\": \"";

/// The proxy with `max_connections = 4` and a 2 s client-body deadline.
async fn proxy() -> (TestUpstream, Binary) {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let extra = format!("max_connections = {MAX}\n[timeouts]\nclient_body = \"2s\"\n");
    let binary = Binary::start(&config(upstream.addr(), &extra), &[]).await;
    (upstream, binary)
}

/// Opens `n` connections, 100 ms apart (so their ages are ordered), each
/// sending [`SLOW_UPLOAD`] and nothing more yet.
async fn slow_uploads(binary: &Binary, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..n {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        stream.write_all(SLOW_UPLOAD).await.expect("head");
        streams.push(stream);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    streams
}

/// One more body byte on each stream: never silent for the deadline.
async fn drip(streams: &mut [TcpStream]) {
    for stream in streams.iter_mut() {
        let _ = stream.write_all(b"a").await;
    }
}

/// Drips on `streams` every 500 ms for `how_long`.
async fn keep_dripping(streams: &mut [TcpStream], how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        drip(streams).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Whether the proxy still holds `stream` open without having answered.
fn held(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Past `max_connections` the oldest connection is shut down gracefully,
/// after its response when busy (docs/limits.md). A connection whose
/// request body trickles (one byte every 500 ms, never silent for the 2 s
/// `client_body` deadline) never gets to its response, so an evicted one
/// stayed open as long as its client liked, and every newer one evicted
/// the next: one client held three times `max_connections` open, and
/// could hold any number (file descriptors, 22 KB and more each). Now
/// evicted ones past `FINISHING` are cut.
#[tokio::test]
async fn evicted_slow_uploads_do_not_hold_the_proxy_past_max_connections() {
    let (_upstream, binary) = proxy().await;
    let mut streams = slow_uploads(&binary, 3 * MAX).await;
    // Three client-body deadlines: a silent body would have been cut.
    keep_dripping(&mut streams, Duration::from_secs(6)).await;
    let open = streams.iter().filter(|s| held(s)).count();
    let m = metrics(&binary).await;
    let evicted = counter(&m, "quota_proxy_connections_evicted_total");
    let cut = counter(&m, "quota_proxy_connections_cut_total");
    assert!(
        open <= MAX + FINISHING,
        "{open} connections still open 6 s later against max_connections = {MAX} \
         ({evicted} evicted, {cut} cut): evicted busy connections are never closed"
    );
    assert_eq!(
        cut as usize,
        3 * MAX - MAX - FINISHING,
        "every evicted one but the newest is cut"
    );
}

/// The lock-out: a client opens `2 × max_connections` trickling uploads
/// (the first half evicted by the second, still open), then closes the
/// second half. Every open connection was then one already shutting down,
/// so each newcomer was closed at once for as long as the client kept
/// trickling four bytes every 500 ms: nobody else was served. The docs
/// promise "one client opening connections by the thousand cannot lock
/// the others out".
#[tokio::test]
async fn evicted_busy_connections_do_not_lock_every_newcomer_out() {
    let (upstream, binary) = proxy().await;
    let mut streams = slow_uploads(&binary, 2 * MAX).await;
    let newest = streams.split_off(MAX);
    drop(newest);
    keep_dripping(&mut streams, Duration::from_secs(1)).await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let mut honest = TcpStream::connect(binary.proxy).await.expect("connect");
        answers.push(answer_on(&mut honest, GET).await);
        keep_dripping(&mut streams, Duration::from_secs(1)).await;
    }
    let still_held = streams.iter().filter(|s| held(s)).count();
    assert!(
        answers.iter().all(|a| *a == Some(200)),
        "honest GETs over 5 s got {answers:?} (None: closed unanswered) while \
         {still_held} evicted trickling uploads stay open; upstream saw {} requests",
        upstream.count()
    );
}

/// An HTTP/2 connection (prior knowledge) that asks for `/page` once and
/// then sends PINGs without ever reading, until the proxy stops taking
/// them (its PONGs fill the socket): the proxy can no longer write to it.
/// The client's receive buffer is made small so that this comes soon.
async fn h2_that_stopped_reading(binary: &Binary) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stream = socket.connect(binary.proxy).await.expect("connect");
    let mut hello = Vec::new();
    hello.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    // SETTINGS, empty.
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    // HEADERS on stream 1, END_STREAM | END_HEADERS: GET http://app/page.
    let block: &[u8] = &[
        0x82, 0x86, 0x44, 0x05, b'/', b'p', b'a', b'g', b'e', 0x41, 0x03, b'a', b'p', b'p',
    ];
    hello.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x5, 0, 0, 0, 1]);
    hello.extend_from_slice(block);
    stream.write_all(&hello).await.expect("preface");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ping: [u8; 17] = [0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let batch: Vec<u8> = ping.iter().copied().cycle().take(17 * 1024).collect();
    let started = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(1), stream.write_all(&batch)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the proxy closed the pinging connection: {e}"),
            Err(_) => return stream,
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the proxy kept reading PINGs for 20 s"
        );
    }
}

/// The same lock-out with no traffic at all: HTTP/2 connections whose
/// client stopped reading (PINGs answered until the socket is full). An
/// evicted one is sent a GOAWAY that can never be written, so it never
/// closed. Four of them, evicted by four newer connections that the client
/// then closes, left every open connection shutting down: each honest
/// newcomer was closed at once, and the attacker sent nothing more.
#[tokio::test]
async fn evicted_http2_connections_that_stopped_reading_do_not_lock_newcomers_out() {
    let (_upstream, binary) = proxy().await;
    let mut stuck = Vec::new();
    for _ in 0..MAX {
        stuck.push(h2_that_stopped_reading(&binary).await);
    }
    // Four newer connections evict them; then they go.
    let mut newer = Vec::new();
    for _ in 0..MAX {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        assert_eq!(answer_on(&mut stream, GET).await, Some(200));
        newer.push(stream);
    }
    drop(newer);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut answers = Vec::new();
    for _ in 0..5 {
        let mut honest = TcpStream::connect(binary.proxy).await.expect("connect");
        answers.push(answer_on(&mut honest, GET).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let m = metrics(&binary).await;
    let evicted = counter(&m, "quota_proxy_connections_evicted_total");
    assert!(
        answers.iter().all(|a| *a == Some(200)),
        "honest GETs got {answers:?} (None: closed unanswered); {evicted} evicted: \
         the {MAX} silent HTTP/2 connections that stopped reading \
         (nothing sent for {} s) are still open, shutting down",
        5 + 2
    );
    drop(stuck);
}
