//! Idle HTTP/1 connections parked (src/server/park.rs), on the real
//! binary: once a keep-alive connection idles, hyper's connection is shut
//! down without closing the socket (`quota_proxy_connections_parked_total`
//! counts it) and its next bytes get a new one. Each test waits for that
//! count, so it observes a park, and then checks what the client sees:
//! the same connection keeps serving, and a request that arrives on it,
//! whole or begun before the park, is still checked and counted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::{gauge, metrics};
use crate::support::binary::Binary;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};

/// A user allowed one image a day, identified by headers; the chat route
/// inspected.
fn config(upstream: SocketAddr) -> String {
    format!(
        r#"
upstream = "http://{upstream}"

[plans.free]
daily = 1
weekly = 10
monthly = 30

[identity]
default_plan = "free"

[[routes]]
method = "POST"
path = "/chat/{{id}}/send/"
deny_status = 429
"#
    )
}

/// An upstream that saves an image for each request asking for one.
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let asked = String::from_utf8_lossy(&request.body).contains("\"generate_image\": true");
        Reply::ok()
            .header("x-images-saved", if asked { "1" } else { "0" })
            .body("generated")
    })
    .await
}

/// Alice asking for an image, as one HTTP/1.1 keep-alive request.
fn generate() -> Vec<u8> {
    let body = r#"{"message": "a cat", "generate_image": true}"#;
    format!(
        "POST /chat/7/send/ HTTP/1.1\r\nhost: app\r\nx-user-id: alice\r\n\
         x-subscription-type: free\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `request` on `stream` and returns the answer's status, or
/// `None` when the connection closes first.
pub(crate) async fn answer_on(stream: &mut TcpStream, request: &[u8]) -> Option<u16> {
    let head = head_on(stream, request).await?;
    head.split(' ').nth(1).and_then(|s| s.parse().ok())
}

/// Writes `request` on `stream`, reads its whole answer (with a
/// `Content-Length`) and returns the head, lowercased, or `None` when the
/// connection closes first.
async fn head_on(stream: &mut TcpStream, request: &[u8]) -> Option<String> {
    stream.write_all(request).await.ok()?;
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer or a close within 5 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        received.extend_from_slice(&buf[..n]);
        if let Some(head) = whole_message_head(&received) {
            return Some(head);
        }
    }
}

/// The head, lowercased, of the HTTP/1 message `received` holds whole
/// (by its `Content-Length`; none means no body), or `None` while it is
/// incomplete.
pub(crate) fn whole_message_head(received: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(received).to_lowercase();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (rest.len() >= length).then(|| head.to_owned())
}

/// Waits until the proxy has parked more than `before` times in all;
/// panics after 5 s (a connection parks within 0.5 s of idling).
async fn wait_for_parks_past(binary: &Binary, before: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let parked = parks(binary).await;
        if parked > before {
            return parked;
        }
        assert!(
            Instant::now() < deadline,
            "no connection parked within 5 s ({parked} in all)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parks so far (the counter exists from the first).
async fn parks(binary: &Binary) -> f64 {
    let metrics = metrics(binary).await;
    if metrics.contains("quota_proxy_connections_parked_total ") {
        gauge(&metrics, "quota_proxy_connections_parked_total")
    } else {
        0.0
    }
}

/// An idle keep-alive connection is parked and serves its next request
/// on the same socket; parked again once idle again.
#[tokio::test]
async fn an_idle_connection_is_parked_and_serves_its_next_request() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr()), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    let get = b"GET /page HTTP/1.1\r\nhost: app\r\n\r\n";
    assert_eq!(answer_on(&mut stream, get).await, Some(200));
    let parked = wait_for_parks_past(&binary, 0.0).await;
    assert_eq!(answer_on(&mut stream, get).await, Some(200));
    wait_for_parks_past(&binary, parked).await;
    assert_eq!(answer_on(&mut stream, get).await, Some(200));
    assert_eq!(upstream.count(), 3);
}

/// A user at the limit is denied on a parked connection, on that very
/// request: a new hyper connection is still the quota layer's.
#[tokio::test]
async fn a_user_at_the_limit_is_denied_after_a_park() {
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(upstream.addr()), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(answer_on(&mut stream, &generate()).await, Some(200));
    wait_for_parks_past(&binary, 0.0).await;
    assert_eq!(answer_on(&mut stream, &generate()).await, Some(429));
    assert_eq!(upstream.count(), 1, "the denied request reached Django");
}

/// A request head begun before a park (hyper had read its first half)
/// is served whole after it: the bytes hyper held are handed to the next
/// hyper connection, and the request is checked (denied: the user is at
/// the limit). Dropping them would have served the rest as a request of
/// its own, or garbage.
#[tokio::test]
async fn a_request_begun_before_a_park_is_checked_whole() {
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(upstream.addr()), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(answer_on(&mut stream, &generate()).await, Some(200));
    let request = generate();
    let (first, rest) = request.split_at(40);
    stream.write_all(first).await.expect("first half");
    wait_for_parks_past(&binary, 0.0).await;
    assert_eq!(answer_on(&mut stream, rest).await, Some(429));
    assert_eq!(upstream.count(), 1, "the denied request reached Django");
    // And the connection goes on: a GET is forwarded.
    let get = b"GET /page HTTP/1.1\r\nhost: app\r\n\r\n";
    assert_eq!(answer_on(&mut stream, get).await, Some(200));
}

/// A request whose answer is slow to start (Django thinking for 1.5 s, six
/// looks of the watch) is not parked under way: its connection stays
/// keep-alive. Parking it would have shut hyper's connection down
/// gracefully mid-request, and hyper then sends `Connection: close`.
#[tokio::test]
async fn a_slow_answer_is_not_parked_under_way() {
    let upstream = TestUpstream::always(Reply::ok().delay_head(Duration::from_millis(1500))).await;
    let binary = Binary::start(&config(upstream.addr()), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    let get = b"GET /page HTTP/1.1\r\nhost: app\r\n\r\n";
    let head = head_on(&mut stream, get).await.expect("an answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(answer_on(&mut stream, get).await, Some(200));
}
