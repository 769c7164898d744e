//! Hostile and slow clients against the real binary (docs/limits.md): the
//! client-body deadline, the body budget, `request_buffering = "all"`, and
//! the bounded identity cache. Each test says what it measures; each is
//! bounded in time (a wait that runs out fails the test). The connection
//! limits (per IP, silent and idle connections, a reload's timeouts) are in
//! `limits_connections.rs`, which shares the helpers here.
//!
//! Clients here speak raw HTTP/1.1 over TCP, so that they can declare one
//! length and send another, stall mid-body, and see exactly when the proxy
//! closes the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::support::binary::Binary;
use crate::support::identity_server::IdentityServer;
use crate::support::upstream::{Reply, TestUpstream};

/// The client-body deadline the tests configure.
pub(crate) const CLIENT_BODY: Duration = Duration::from_secs(1);

/// Slack on top of a deadline for a busy 2-core machine.
pub(crate) const SLACK: Duration = Duration::from_secs(4);

/// The head deadline (`timeouts.client_head`) of the tests that wait for a
/// silent or idle connection to close: seconds, not the default's 30.
pub(crate) const CLIENT_HEAD: Duration = Duration::from_secs(3);

/// `config`, whose `[timeouts]` gains `client_head` = [`CLIENT_HEAD`].
pub(crate) fn with_client_head(config: &str) -> String {
    let with = config.replacen(
        "[timeouts]\n",
        &format!("[timeouts]\nclient_head = \"{}s\"\n", CLIENT_HEAD.as_secs()),
        1,
    );
    assert_ne!(with, config, "the config has no [timeouts] table");
    with
}

/// A config with one inspected route (`POST /chat/{id}/send/`), header
/// identity, and `extra` top-level TOML (`max_body_bytes` of the Django
/// preset unless `extra` sets it).
pub(crate) fn config(upstream: SocketAddr, extra: &str) -> String {
    let max = if extra.contains("max_body_bytes") {
        ""
    } else {
        "max_body_bytes = 55000000"
    };
    format!(
        r#"
upstream = "http://{upstream}"
{max}
{extra}

[timeouts]
client_body = "1s"

[plans.free]
daily = 1000
weekly = 1000
monthly = 1000

[identity]
default_plan = "free"

[[routes]]
method = "POST"
path = "/chat/{{id}}/send/"
"#
    )
}

/// What a raw client saw.
#[derive(Debug)]
pub(crate) struct Seen {
    /// The status of the response, if one came.
    pub(crate) status: Option<u16>,
    /// The response head, lowercased.
    head: String,
    /// Whether the proxy closed the connection (EOF or reset) after it.
    closed: bool,
    /// When the connection was seen closed, since the request started.
    after: Duration,
}

/// Sends `head` and `body` (in two pieces, 50 ms apart, so that the proxy
/// sees more than one chunk), then reads until the proxy closes the
/// connection or `within` passes.
pub(crate) async fn stall(addr: SocketAddr, head: &str, body: &[u8], within: Duration) -> Seen {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send head");
    let (first, second) = body.split_at(body.len() / 2);
    stream.write_all(first).await.expect("send some body");
    if !second.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.write_all(second).await.expect("send some more");
    }
    read_until_closed(&mut stream, started, within).await
}

async fn read_until_closed(stream: &mut TcpStream, started: Instant, within: Duration) -> Seen {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&received).to_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| head.starts_with("http/1.1 "));
    Seen {
        status,
        head,
        closed,
        after: started.elapsed(),
    }
}

pub(crate) fn post_head(path: &str, content_type: &str, length: u64) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\nx-user-id: 7\r\ncontent-type: {content_type}\r\n\
         content-length: {length}\r\n\r\n"
    )
}

/// Measures: 200 connections that declare `Content-Length: 50000000` on an
/// inspected route and send 100 bytes are all answered 408 and closed
/// within `client_body` + slack, and the proxy's address space and resident
/// memory grow by less than 400 MB (each used to reserve 50 MB at once).
#[tokio::test]
async fn declared_huge_bodies_that_stall_take_no_memory_and_are_closed() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    // Warm up (threads, arenas, pools) before the baseline is taken.
    for _ in 0..4 {
        let head = "GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
        stall(binary.proxy, head, b"", Duration::from_secs(5)).await;
    }
    let (size_before, rss_before) = (binary.memory("VmSize"), binary.memory("VmRSS"));

    let mut clients = JoinSet::new();
    for _ in 0..200 {
        let addr = binary.proxy;
        clients.spawn(async move {
            let head = post_head("/chat/1/send/", "application/json", 50_000_000);
            stall(addr, &head, &[b' '; 100], CLIENT_BODY + SLACK).await
        });
    }
    // While they stall (before the deadline), the memory they hold.
    tokio::time::sleep(CLIENT_BODY / 2).await;
    let (size_peak, rss_peak) = (binary.memory("VmSize"), binary.memory("VmRSS"));
    let mut answered = 0;
    while let Some(seen) = clients.join_next().await {
        let seen = seen.expect("client task");
        assert!(
            seen.closed,
            "connection still open after {:?}: {seen:?}",
            seen.after
        );
        assert_eq!(seen.status, Some(408), "{seen:?}");
        assert!(seen.after >= CLIENT_BODY, "cut too early: {seen:?}");
        answered += 1;
    }
    assert_eq!(answered, 200);
    let (size_after, rss_after) = (binary.memory("VmSize"), binary.memory("VmRSS"));
    let grown = |before: u64, peak: u64| peak.saturating_sub(before) / (1024 * 1024);
    eprintln!(
        "VmSize {} -> {} -> {} MiB, VmRSS {} -> {} -> {} MiB",
        size_before >> 20,
        size_peak >> 20,
        size_after >> 20,
        rss_before >> 20,
        rss_peak >> 20,
        rss_after >> 20
    );
    let peak_size = size_peak.max(size_after);
    assert!(
        grown(size_before, peak_size) < 400,
        "address space grew {} MiB",
        grown(size_before, peak_size)
    );
    assert!(
        grown(rss_before, rss_peak.max(rss_after)) < 400,
        "resident memory grew {} MiB",
        grown(rss_before, rss_peak.max(rss_after))
    );
    let panics: Vec<_> = binary
        .logs()
        .into_iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{panics:#?}");
}

/// Measures: a body that stalls mid-way is cut after `client_body` on
/// every path a body takes: an inspected upload (spooled), an inspected
/// JSON body (memory) and a pass-through body streamed to the upstream.
/// Each gets 408 and its connection is closed; the upstream never sees the
/// inspected ones.
#[tokio::test]
async fn bodies_that_stall_are_cut_after_the_deadline_on_every_path() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let cases = [
        ("/chat/1/send/", "multipart/form-data; boundary=x"),
        ("/chat/1/send/", "application/json"),
        ("/upload/", "application/octet-stream"),
    ];
    let mut clients = JoinSet::new();
    for (path, content_type) in cases {
        let addr = binary.proxy;
        clients.spawn(async move {
            let head = post_head(path, content_type, 100_000);
            let seen = stall(addr, &head, &[b'-'; 1000], CLIENT_BODY + SLACK).await;
            (path, content_type, seen)
        });
    }
    while let Some(joined) = clients.join_next().await {
        let (path, content_type, seen) = joined.expect("client task");
        assert!(
            seen.closed,
            "{path} {content_type}: still open after {:?}",
            seen.after
        );
        assert_eq!(seen.status, Some(408), "{path} {content_type}: {seen:?}");
        assert!(
            seen.head.contains("connection: close"),
            "{path}: {}",
            seen.head
        );
        assert!(seen.after >= CLIENT_BODY, "{path}: cut too early: {seen:?}");
    }
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.uri.path() == "/upload/"),
        "an inspected body that never arrived reached the upstream"
    );
}

/// Measures: 200 concurrent uploads, each holding 256 KB of body for about
/// 2 s, against a 4 MiB body budget: every client gets a whole HTTP answer
/// (200; 503 with `Retry-After`; or 408 for an upload that stalled past 1 s
/// and was cut to make room), never a reset; some are refused, some pass;
/// the process lives on, and the budget comes back (a later upload passes
/// at once).
#[tokio::test]
async fn a_small_budget_under_200_uploads_answers_and_never_aborts() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let extra = "body_budget_bytes = 4194304\nmax_body_bytes = 1048576\nbody_buffer_bytes = 65536";
    // A deadline longer than the 2 s each upload holds its budget.
    let config =
        config(upstream.addr(), extra).replace("client_body = \"1s\"", "client_body = \"10s\"");
    let mut binary = Binary::start(&config, &[]).await;
    const HALF: usize = 128 * 1024;

    let mut clients = JoinSet::new();
    for _ in 0..200 {
        let addr = binary.proxy;
        clients.spawn(async move {
            let started = Instant::now();
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (mut read, mut write) = stream.into_split();
            let writer = tokio::spawn(async move {
                let head = post_head("/chat/1/send/", "application/octet-stream", 2 * HALF as u64);
                write.write_all(head.as_bytes()).await?;
                write.write_all(&[b'a'; HALF]).await?;
                // Held for a while: longer than the budget wait.
                tokio::time::sleep(Duration::from_secs(2)).await;
                write.write_all(&[b'b'; HALF]).await?;
                // Kept open until the answer is read.
                tokio::time::sleep(Duration::from_secs(30)).await;
                Ok::<_, std::io::Error>(write)
            });
            let mut received = Vec::new();
            let mut buf = [0u8; 4096];
            let limit = Duration::from_secs(15);
            loop {
                let left = limit.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, read.read(&mut buf)).await {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => {
                        received.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&received);
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    l.to_lowercase()
                                        .strip_prefix("content-length: ")
                                        .map(str::to_owned)
                                })
                                .and_then(|v| v.trim().parse::<usize>().ok());
                            if length.is_some_and(|len| body.len() >= len) {
                                break;
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        writer.abort();
                        return Err(format!("reset after {:?}: {e}", started.elapsed()));
                    }
                    Err(_) => {
                        writer.abort();
                        return Err("no answer within 15 s".to_owned());
                    }
                }
            }
            writer.abort();
            Ok(String::from_utf8_lossy(&received).to_lowercase())
        });
    }
    let (mut ok, mut busy, mut cut, mut failed) = (0, 0, 0, Vec::new());
    while let Some(joined) = clients.join_next().await {
        match joined.expect("client task") {
            Ok(text) if text.starts_with("http/1.1 200") => ok += 1,
            Ok(text) if text.starts_with("http/1.1 503") => {
                assert!(text.contains("retry-after: "), "{text}");
                busy += 1;
            }
            Ok(text) if text.starts_with("http/1.1 408") && text.contains("short of room") => {
                cut += 1;
            }
            Ok(text) => failed.push(format!("unexpected answer: {text}")),
            Err(e) => failed.push(e),
        }
    }
    eprintln!("200 uploads: {ok} passed, {busy} answered 503, {cut} cut (408)");
    assert!(
        failed.is_empty(),
        "{} aborted: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(busy + cut > 0, "the budget refused nothing ({ok} passed)");
    assert!(ok > 0, "the budget let nothing through");
    assert!(binary.try_status().is_none(), "the proxy died");
    // Everything was given back: one more upload passes at once.
    let started = Instant::now();
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    let head = post_head("/chat/1/send/", "application/octet-stream", 2 * HALF as u64);
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&[b'c'; 2 * HALF]).await.expect("body");
    let mut first = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut first))
        .await
        .expect("an answer within 5 s")
        .expect("read");
    assert_eq!(&first, b"HTTP/1.1 200", "after {:?}", started.elapsed());
}

/// A gunicorn-like upstream: one sync worker, one connection at a time,
/// which reads a request's whole body before answering and closes the
/// connection after each answer.
async fn one_at_a_time_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            // Served inline: the next connection waits for this one.
            let mut received = Vec::new();
            let mut buf = [0u8; 8192];
            let complete = loop {
                let Ok(n) = stream.read(&mut buf).await else {
                    break false;
                };
                if n == 0 {
                    break false;
                }
                received.extend_from_slice(&buf[..n]);
                if crate::parking::whole_message(&received).is_some() {
                    break true;
                }
            };
            if complete {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        }
    });
    (addr, served)
}

/// Measures: under `request_buffering = "all"`, a client trickling a
/// pass-through body (never silent long enough to be cut) does not hold
/// the one-worker upstream: other requests are answered meanwhile, and the
/// slow body reaches the upstream whole once it has all arrived. A body
/// that stalls while buffered gets 408 and never reaches the upstream.
#[tokio::test]
async fn a_slow_passthrough_body_does_not_hold_a_one_worker_upstream() {
    let (upstream, served) = one_at_a_time_upstream().await;
    let binary = Binary::start(&config(upstream, "request_buffering = \"all\""), &[]).await;

    let slow_addr = binary.proxy;
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let mut stream = TcpStream::connect(slow_addr).await.expect("connect");
        let head = post_head("/upload/", "application/octet-stream", 12)
            .replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("head");
        for _ in 0..12 {
            stream.write_all(b"x").await.expect("a byte");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        read_until_closed(&mut stream, started, Duration::from_secs(15)).await
    });
    // While the slow body trickles in (3.6 s), quick requests pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let started = Instant::now();
        let head = "GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
        let seen = stall(binary.proxy, head, b"", Duration::from_secs(2)).await;
        assert_eq!(
            seen.status,
            Some(200),
            "quick request {i} not answered within 2 s while a slow body was sent: {seen:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let slow = slow.await.expect("slow client");
    assert_eq!(slow.status, Some(200), "{slow:?}");
    assert_eq!(served.load(Ordering::SeqCst), 4);
    // A body that stalls while it is buffered is cut like any other, and
    // never reaches the upstream.
    let head = post_head("/upload/", "application/octet-stream", 1000);
    let seen = stall(binary.proxy, &head, &[b'-'; 100], CLIENT_BODY + SLACK).await;
    assert!(seen.closed && seen.status == Some(408), "{seen:?}");
    assert!(seen.after >= CLIENT_BODY, "cut too early: {seen:?}");
    assert_eq!(served.load(Ordering::SeqCst), 4);
}

/// One keep-alive connection sending `count` flagged requests, each with
/// its own session cookie `s-<first + i>`; returns how many got 200.
async fn distinct_sessions(addr: SocketAddr, first: usize, count: usize) -> usize {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let body = r#"{"message": "a cat", "generate_image": true}"#;
    let mut ok = 0;
    let mut buf = vec![0u8; 4096];
    for n in first..first + count {
        let request = format!(
            "POST /chat/1/send/ HTTP/1.1\r\nhost: test\r\ncookie: sessionid=s-{n}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut received = Vec::new();
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("an answer within 10 s")
                .expect("read");
            assert!(n > 0, "the proxy closed a keep-alive connection");
            received.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&received).to_lowercase();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: ").map(str::to_owned))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if rest.len() >= length {
                    ok += usize::from(head.starts_with("http/1.1 200"));
                    break;
                }
            }
        }
    }
    ok
}

pub(crate) fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

pub(crate) async fn metrics(binary: &Binary) -> String {
    let head = "GET /metrics HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
    let mut stream = TcpStream::connect(binary.admin).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut text))
        .await
        .expect("metrics within 5 s")
        .expect("read");
    text
}

/// Measures: 10,000 requests with distinct session cookies (each one an
/// identity call and a cached anonymous answer) leave the identity cache
/// within its `cache_max_bytes` (read from its gauge, and its growth in
/// resident memory), while the proxy answers every request.
#[tokio::test]
async fn the_identity_cache_stays_bounded_under_10000_distinct_sessions() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let identity = IdentityServer::start().await;
    const MAX_BYTES: f64 = 65536.0;
    let extra = format!(
        "[identity.forward_auth]\nurl = \"{}/api/quota/identity/\"\n\
         negative_cache_ttl = \"600s\"\ncache_max_bytes = {MAX_BYTES}",
        identity.base()
    );
    let config = config(upstream.addr(), "").replace(
        "default_plan = \"free\"",
        "default_plan = \"free\"\nkind = \"forward_auth\"",
    ) + &extra;
    let binary = Binary::start(&config, &[]).await;
    let rss_before = binary.memory("VmRSS");
    let mut clients = JoinSet::new();
    for worker in 0..20 {
        clients.spawn(distinct_sessions(binary.proxy, worker * 500, 500));
    }
    let mut ok = 0;
    while let Some(joined) = clients.join_next().await {
        ok += joined.expect("client task");
    }
    assert_eq!(ok, 10_000);
    assert!(
        identity.calls() >= 10_000,
        "{} identity calls",
        identity.calls()
    );
    let held = gauge(&metrics(&binary).await, "quota_proxy_identity_cache_bytes");
    let rss_grown = binary.memory("VmRSS").saturating_sub(rss_before) >> 20;
    eprintln!("identity cache: {held} bytes after 10,000 sessions; VmRSS +{rss_grown} MiB");
    assert!(
        held > 0.0 && held <= MAX_BYTES,
        "identity cache holds {held} bytes"
    );
    assert!(rss_grown < 100, "resident memory grew {rss_grown} MiB");
}
