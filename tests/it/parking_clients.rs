//! Clients across a park (src/server/park.rs), on the real binary: what
//! an attack session tried on parked idle HTTP/1 connections, each a
//! behaviour a client relies on or a way to get a request past the quota
//! (pipelining, heads dripped across a park, half-closes, HTTP/1.0,
//! `Expect: 100-continue`, slow readers, silent streams, the HTTP/2 preface
//! in pieces, shutdown and `max_connections` with parked connections).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::parking::{
    GET, IMAGE_BODY, answer_on, config, generate, parked_connection, parks, read_answer,
    read_to_close, saving_upstream, wait_for_parks, whole_message,
};
use crate::support::binary::Binary;
use crate::support::upstream::{Reply, TestUpstream};

/// Requests arriving at every phase of the watch (idle 0.2 s to 0.8 s,
/// cycling, so some land while a park is under way), on several
/// connections: every one answered 200 exactly once on its keep-alive
/// connection, Django sees each once.
#[tokio::test]
async fn requests_racing_the_park_are_each_answered_once() {
    let upstream = TestUpstream::always(Reply::ok().body("x")).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let connections = 8;
    let rounds = 14;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let proxy = binary.proxy;
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(proxy).await.expect("connect");
            let mut failures = Vec::new();
            for r in 0..rounds {
                let idle = 200 + ((c * 37 + r * 53) % 13) * 50;
                tokio::time::sleep(Duration::from_millis(idle as u64)).await;
                match answer_on(&mut stream, GET).await {
                    Some(200) => {}
                    other => {
                        failures.push(format!("conn {c} round {r} idle {idle} ms: {other:?}"));
                        stream = TcpStream::connect(proxy).await.expect("reconnect");
                    }
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.expect("task"));
    }
    let parked = parks(&binary).await;
    eprintln!(
        "race: {} requests, {} failures, {parked} parks",
        connections * rounds,
        failures.len()
    );
    assert!(parked > 0.0, "no park happened at all");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed ({parked} parks): {failures:?}",
        failures.len(),
        connections * rounds
    );
    assert_eq!(upstream.count(), connections * rounds, "Django's count");
}

/// Two pipelined requests written in one segment to a parked connection,
/// the second a flagged image request of a user at the limit: both
/// answered in order, the second denied.
#[tokio::test]
async fn pipelined_requests_after_a_park_are_answered_in_order_and_checked() {
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(answer_on(&mut stream, &generate()).await, Some(200));
    wait_for_parks(&binary, 1.0).await;
    let mut both = GET.to_vec();
    both.extend_from_slice(&generate());
    stream.write_all(&both).await.expect("write");
    // Both answers, read from one buffer: the proxy may write them in one
    // segment, which `read_answer` would read past the first.
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let heads = loop {
        let (first, rest) = match whole_message(&received) {
            Some((head, body)) => {
                // The head (ASCII), its blank line, the body.
                let used = head.len() + 4 + body.len();
                (Some(head), received[used..].to_vec())
            }
            None => (None, Vec::new()),
        };
        if let (Some(first), Some((second, _))) = (&first, whole_message(&rest)) {
            break (first.clone(), second);
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("both answers in time")
            .expect("read");
        assert!(
            n > 0,
            "closed after {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    };
    assert!(heads.0.starts_with("http/1.1 200"), "{}", heads.0);
    assert!(heads.1.starts_with("http/1.1 429"), "{}", heads.1);
    assert_eq!(upstream.count(), 2, "GET and the first image only");
}

/// After a park, a head dripped one byte every 600 ms (each byte after a
/// park window) must still be cut by the head deadline (`timeouts.client_head`,
/// 5 s here): it may restart at most once, so the connection closes within
/// one deadline of the first byte.
#[tokio::test]
async fn a_head_dripped_after_a_park_meets_the_head_deadline() {
    const HEAD: Duration = Duration::from_secs(5);
    let upstream = TestUpstream::always(Reply::ok()).await;
    let extra = format!("[timeouts]\nclient_head = \"{}s\"", HEAD.as_secs());
    let binary = Binary::start(&config(upstream.addr(), &extra), &[]).await;
    let mut stream = parked_connection(&binary).await;
    let drip = b"GET /page HTTP/1.1\r\nhost: app\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let start = Instant::now();
    let mut closed_at = None;
    for byte in drip.iter().cycle() {
        if start.elapsed() > HEAD * 3 {
            break;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(600), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(_) => {
                closed_at = Some(start.elapsed());
                break;
            }
        }
    }
    let parks_during = parks(&binary).await;
    eprintln!("drip: closed at {closed_at:?}, parks {parks_during}");
    let closed_at = closed_at.unwrap_or_else(|| {
        panic!(
            "a dripped head held the connection {:?} (parks: {parks_during})",
            HEAD * 3
        )
    });
    assert!(
        closed_at < HEAD + Duration::from_secs(3),
        "closed only {closed_at:?} after the drip began (parks: {parks_during})"
    );
}

/// X-Forwarded-For still names the client on a request after a park.
#[tokio::test]
async fn the_client_address_is_forwarded_after_a_park() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = parked_connection(&binary).await;
    assert_eq!(answer_on(&mut stream, GET).await, Some(200));
    let last = upstream.last_request();
    let xff = last.header_all("x-forwarded-for").join(",");
    assert!(
        xff.contains("127.0.0.1"),
        "x-forwarded-for after a park: {xff:?}"
    );
}

/// A flagged image request whose body pauses 1.2 s (five looks) mid-way,
/// on a parked connection: the whole body reaches the check, the user
/// gets one image and is then denied.
#[tokio::test]
async fn a_flagged_body_paused_past_the_watch_is_checked_whole() {
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = parked_connection(&binary).await;
    let request = generate();
    let split = request.len() - 20;
    stream
        .write_all(&request[..split])
        .await
        .expect("first part");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(answer_on(&mut stream, &request[split..]).await, Some(200));
    assert_eq!(&upstream.last_request().body[..], IMAGE_BODY.as_bytes());
    assert_eq!(answer_on(&mut stream, &generate()).await, Some(429));
    assert_eq!(upstream.count(), 2);
}

/// A chunked streamed upload pausing 1.2 s between chunks after a park:
/// Django gets the body whole, the client its answer, the connection
/// goes on.
#[tokio::test]
async fn a_chunked_upload_paused_past_the_watch_arrives_whole() {
    let upstream = TestUpstream::always(Reply::ok().body("stored")).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = parked_connection(&binary).await;
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .expect("first chunk");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    stream
        .write_all(b"6\r\n world\r\n")
        .await
        .expect("second chunk");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(answer_on(&mut stream, b"0\r\n\r\n").await, Some(200));
    assert_eq!(&upstream.last_request().body[..], b"hello world");
    assert_eq!(answer_on(&mut stream, GET).await, Some(200));
}

/// `Expect: 100-continue` on a parked connection, then a 1.2 s pause
/// before the body: the body is read, the answer is 200, keep-alive holds.
#[tokio::test]
async fn expect_continue_then_a_pause_after_a_park() {
    let upstream = TestUpstream::always(Reply::ok().body("stored")).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = parked_connection(&binary).await;
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: app\r\nexpect: 100-continue\r\ncontent-length: 11\r\n\r\n")
        .await
        .expect("head");
    let mut interim = Vec::new();
    let mut buf = [0u8; 256];
    if let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(1200), stream.read(&mut buf)).await
    {
        interim.extend_from_slice(&buf[..n]);
    }
    let interim = String::from_utf8_lossy(&interim).to_string();
    assert!(
        interim.is_empty() || interim.starts_with("HTTP/1.1 100"),
        "{interim:?}"
    );
    assert_eq!(answer_on(&mut stream, b"hello world").await, Some(200));
    assert_eq!(&upstream.last_request().body[..], b"hello world");
    assert_eq!(answer_on(&mut stream, GET).await, Some(200));
}

/// A client that reads nothing of an 8 MiB answer for 1.5 s (six looks),
/// then reads it all: every byte arrives, and the connection serves on.
#[tokio::test]
async fn a_slow_reader_gets_a_large_answer_whole() {
    let size = 8 * 1024 * 1024;
    let upstream = TestUpstream::always(Reply::ok().body(vec![b'z'; size])).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = parked_connection(&binary).await;
    stream.write_all(GET).await.expect("write");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (head, body) = read_answer(&mut stream, Duration::from_secs(20))
        .await
        .expect("the whole answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body.len(), size);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(answer_on(&mut stream, GET).await.map(|_| ()), Some(()));
}

/// A streamed answer silent 700 ms between chunks (past a park window)
/// after a park: every chunk and the terminator arrive, no
/// `Connection: close`, and the connection serves on.
#[tokio::test]
async fn a_streamed_answer_with_silences_is_not_cut() {
    let silence = Duration::from_millis(700);
    let upstream = TestUpstream::always(Reply::ok().stream([
        ("one,", silence),
        ("two,", silence),
        ("three", silence),
    ]))
    .await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    stream.write_all(GET).await.expect("write");
    let (text, closed) = {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut all = Vec::new();
        let mut buf = [0u8; 1024];
        let mut closed = false;
        while !all.ends_with(b"0\r\n\r\n") && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) | Err(_) => {
                    closed = true;
                    break;
                }
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
            }
        }
        (String::from_utf8_lossy(&all).to_lowercase(), closed)
    };
    assert!(!closed, "cut: {text:?}");
    assert!(
        text.contains("three") && text.ends_with("0\r\n\r\n"),
        "{text:?}"
    );
    assert!(!text.contains("connection: close"), "{text:?}");
    assert_eq!(
        answer_on(&mut stream, b"GET /x HTTP/1.1\r\nhost: app\r\n\r\n")
            .await
            .map(|_| ()),
        Some(())
    );
}

/// A client that writes its request to a parked connection and then
/// half-closes (shutdown(WR)) is treated as on a fresh connection: same
/// answer, same number of requests reaching Django. (Probe: hyper's
/// `half_close(false)` answers neither; the request still reaches Django.)
#[tokio::test]
async fn a_half_closing_client_is_treated_after_a_park_as_on_a_fresh_connection() {
    let upstream = TestUpstream::always(Reply::ok().body("fine")).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut fresh = TcpStream::connect(binary.proxy).await.expect("connect");
    fresh.write_all(GET).await.expect("write");
    fresh.shutdown().await.expect("half-close");
    let (fresh_bytes, fresh_closed) = read_to_close(&mut fresh, Duration::from_secs(5)).await;
    let fresh_text = String::from_utf8_lossy(&fresh_bytes).to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fresh_django = upstream.count();

    let mut stream = parked_connection(&binary).await;
    stream.write_all(GET).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let (bytes, closed) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&bytes).to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let parked_django = upstream.count() - fresh_django - 1;
    eprintln!(
        "half-close: fresh answer {fresh_text:?} closed {fresh_closed}, Django saw {fresh_django}; \
         after park answer {text:?} closed {closed}, Django saw {parked_django}"
    );
    assert!(closed && fresh_closed, "left open after a half-close");
    assert_eq!(
        text.starts_with("HTTP/1.1 200"),
        fresh_text.starts_with("HTTP/1.1 200"),
        "after a park: {text:?}; fresh: {fresh_text:?}"
    );
    // Not asserted: whether the half-closed request reaches Django is a
    // race in hyper (seen 1 of 12 runs under load after a park), not
    // the park's; half_closed_image_requests_after_a_park_never_exceed_the_limit
    // checks that it is counted.
}

/// HTTP/1.0 with `Connection: keep-alive` across a park; and an HTTP/1.0
/// request without it is answered and closed.
#[tokio::test]
async fn http10_keep_alive_across_a_park() {
    let upstream = TestUpstream::always(Reply::ok().body("ten")).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    let ka = b"GET /page HTTP/1.0\r\nhost: app\r\nconnection: keep-alive\r\n\r\n";
    assert_eq!(answer_on(&mut stream, ka).await, Some(200));
    wait_for_parks(&binary, 1.0).await;
    assert_eq!(answer_on(&mut stream, ka).await, Some(200));
    let close = b"GET /page HTTP/1.0\r\nhost: app\r\n\r\n";
    stream.write_all(close).await.expect("write");
    let (bytes, closed) = read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "HTTP/1.0 without keep-alive left open");
    assert!(String::from_utf8_lossy(&bytes).contains(" 200 "));
}

/// SIGTERM with 50 parked connections (and a long grace): the proxy exits
/// promptly, each parked client sees its connection closed.
#[tokio::test]
async fn sigterm_closes_parked_connections_promptly() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let mut binary = Binary::start(&config(upstream.addr(), "shutdown_grace = \"20s\""), &[]).await;
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        assert_eq!(answer_on(&mut stream, GET).await, Some(200));
        streams.push(stream);
    }
    wait_for_parks(&binary, 50.0).await;
    let start = Instant::now();
    binary.signal("TERM");
    for stream in &mut streams {
        let (_, closed) = read_to_close(stream, Duration::from_secs(5)).await;
        assert!(closed, "a parked connection still open 5 s after SIGTERM");
    }
    binary.wait_exit(Duration::from_secs(10)).await;
    eprintln!("sigterm: exit {:?} after TERM", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "exit took {:?}",
        start.elapsed()
    );
}

/// max_connections = 4, four parked: a fifth client is served, and an
/// evicted parked client sees a clean close (no half answer).
#[tokio::test]
async fn a_parked_connection_makes_room_at_max_connections() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr(), "max_connections = 4"), &[]).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        assert_eq!(answer_on(&mut stream, GET).await, Some(200));
        streams.push(stream);
    }
    wait_for_parks(&binary, 4.0).await;
    let mut fifth = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(answer_on(&mut fifth, GET).await, Some(200));
    let (bytes, closed) = read_to_close(&mut streams[0], Duration::from_secs(5)).await;
    assert!(closed, "the oldest parked connection was not evicted");
    assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes));
}

/// A request head beginning "P" alone in its first segment (a strict
/// prefix of the HTTP/2 preface), then the rest: served as HTTP/1, and
/// checked (the flagged route), denied at the limit.
#[tokio::test]
async fn a_post_whose_first_segment_is_p_is_served_and_checked() {
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    for (n, expected) in [(1usize, 200u16), (2, 429), (3, 429)] {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        let request = generate();
        stream.write_all(&request[..n]).await.expect("first");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            answer_on(&mut stream, &request[n..]).await,
            Some(expected),
            "split at {n}"
        );
        assert_eq!(
            answer_on(&mut stream, &generate()).await,
            Some(429),
            "second, split at {n}"
        );
    }
    assert_eq!(upstream.count(), 1);
}

/// h2c prior-knowledge clients whose preface arrives in pieces (split
/// after 1, 3, 16 and 23 bytes, 300 ms apart): each served over HTTP/2.
#[tokio::test]
async fn an_h2c_preface_in_pieces_is_served_as_http2() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    for split in [1usize, 3, 16, 23] {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        stream.write_all(&preface[..split]).await.expect("piece");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let io = SkipFirst {
            inner: stream,
            skip: split,
        };
        let (mut sender, connection) = tokio::time::timeout(
            Duration::from_secs(5),
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)),
        )
        .await
        .expect("handshake in time")
        .expect("h2 handshake");
        tokio::spawn(connection);
        let request = http::Request::get("http://app.example/page")
            .version(http::Version::HTTP_2)
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
            .await
            .unwrap_or_else(|_| panic!("split {split}: no answer in 5 s"))
            .unwrap_or_else(|e| panic!("split {split}: {e}"));
        assert_eq!(response.status(), 200, "split {split}");
        let _ = response.into_body().collect().await;
    }
}

/// Image requests written after a park and half-closed at once (the
/// client gets no answer: hyper's `half_close(false)`), twelve times for a
/// user allowed one image: however many reach Django, at most one is
/// let through uncounted — Django generates at most one image.
#[tokio::test]
async fn half_closed_image_requests_after_a_park_never_exceed_the_limit() {
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut streams = Vec::new();
    for _ in 0..12 {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        assert_eq!(answer_on(&mut stream, GET).await, Some(200));
        streams.push(stream);
    }
    wait_for_parks(&binary, 12.0).await;
    let mut tasks = Vec::new();
    for mut stream in streams {
        tasks.push(tokio::spawn(async move {
            let _ = stream.write_all(&generate()).await;
            let _ = stream.shutdown().await;
            read_to_close(&mut stream, Duration::from_secs(5)).await
        }));
    }
    let mut answered = 0;
    for t in tasks {
        let (bytes, _) = t.await.expect("task");
        if bytes.starts_with(b"HTTP/1.1 ") {
            answered += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let images = upstream
        .requests()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("generate_image"))
        .count();
    let mut check = TcpStream::connect(binary.proxy).await.expect("connect");
    let after = answer_on(&mut check, &generate()).await;
    eprintln!(
        "half-closed images: {answered} answered, Django generated {images}, next: {after:?}"
    );
    assert!(
        images <= 1,
        "Django generated {images} images for a one-a-day user"
    );
    // One that reached Django was counted: the next is denied. (Whether a
    // half-closed request reaches Django at all is hyper's race.)
    let expected = if images == 1 { 429 } else { 200 };
    assert_eq!(after, Some(expected), "{images} image(s) generated before");
}

/// Writes, skipping the first `skip` bytes its user writes (already sent
/// by hand, in pieces).
struct SkipFirst {
    inner: TcpStream,
    skip: usize,
}

impl tokio::io::AsyncRead for SkipFirst {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SkipFirst {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.skip > 0 {
            let n = self.skip.min(buf.len());
            self.skip -= n;
            return std::task::Poll::Ready(Ok(n));
        }
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
