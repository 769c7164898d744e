//! Idle HTTP/1 connections parked (src/server/park.rs), on the real
//! binary: once a keep-alive connection idles, hyper's connection is shut
//! down without closing the socket (`quota_proxy_connections_parked_total`
//! counts it) and its next bytes get a new one. Each test waits for that
//! count, so it observes a park, and then checks what the client sees:
//! the same connection keeps serving, and a request that arrives on it,
//! whole or begun before the park, is still checked and counted. A request
//! body left unread after its answer (Django answering early, a
//! `client_body` timeout) is never parsed as requests of its own: an
//! attack session smuggled `GET /smuggled` to Django that way before hyper
//! had to find the connection idle for a park. What clients do across a
//! park is in `parking_clients.rs`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::limits::{gauge, metrics};
use crate::support::binary::Binary;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};

/// A user allowed one image a day, identified by headers; the chat route
/// inspected; `extra` top-level TOML.
pub(crate) fn config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
upstream = "http://{upstream}"
{extra}

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
pub(crate) async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let asked = String::from_utf8_lossy(&request.body).contains("\"generate_image\": true");
        Reply::ok()
            .header("x-images-saved", if asked { "1" } else { "0" })
            .body("generated")
    })
    .await
}

/// The JSON body of an image request.
pub(crate) const IMAGE_BODY: &str = r#"{"message": "a cat", "generate_image": true}"#;

/// Alice asking for an image, as one HTTP/1.1 keep-alive request.
pub(crate) fn generate() -> Vec<u8> {
    format!(
        "POST /chat/7/send/ HTTP/1.1\r\nhost: app\r\nx-user-id: alice\r\n\
         x-subscription-type: free\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{IMAGE_BODY}",
        IMAGE_BODY.len()
    )
    .into_bytes()
}

/// A keep-alive GET of a page no route inspects.
pub(crate) const GET: &[u8] = b"GET /page HTTP/1.1\r\nhost: app\r\n\r\n";

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
    let (head, _) = read_answer(stream, Duration::from_secs(5)).await?;
    Some(head)
}

/// Reads one whole answer (with a `Content-Length`, or none) and returns
/// its head, lowercased, and its body; `None` on a close first. Panics
/// past `within`.
pub(crate) async fn read_answer(
    stream: &mut TcpStream,
    within: Duration,
) -> Option<(String, Vec<u8>)> {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .expect("an answer or a close in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        received.extend_from_slice(&buf[..n]);
        if let Some((head, body)) = whole_message(&received) {
            return Some((head, body.to_vec()));
        }
    }
}

/// The head, lowercased, and the body of the HTTP/1 message `received`
/// holds whole (by its `Content-Length`; none means no body), or `None`
/// while it is incomplete.
pub(crate) fn whole_message(received: &[u8]) -> Option<(String, &[u8])> {
    let end = received.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&received[..end]).to_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let body = received[end + 4..].get(..length)?;
    Some((head, body))
}

/// Waits until the proxy has parked `at_least` times in all and returns
/// the count; panics after 5 s (a connection parks within 0.5 s of
/// idling).
pub(crate) async fn wait_for_parks(binary: &Binary, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let parked = parks(binary).await;
        if parked >= at_least {
            return parked;
        }
        assert!(
            Instant::now() < deadline,
            "only {parked} parks within 5 s, {at_least} awaited"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A keep-alive connection to `binary` that has served one GET and been
/// parked (the first park of `binary`).
pub(crate) async fn parked_connection(binary: &Binary) -> TcpStream {
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(answer_on(&mut stream, GET).await, Some(200));
    wait_for_parks(binary, 1.0).await;
    stream
}

/// Parks so far (the counter exists from the first).
pub(crate) async fn parks(binary: &Binary) -> f64 {
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
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(answer_on(&mut stream, GET).await, Some(200));
    let parked = wait_for_parks(&binary, 1.0).await;
    assert_eq!(answer_on(&mut stream, GET).await, Some(200));
    wait_for_parks(&binary, parked + 1.0).await;
    assert_eq!(answer_on(&mut stream, GET).await, Some(200));
    assert_eq!(upstream.count(), 3);
}

/// A user at the limit is denied on a parked connection, on that very
/// request: a new hyper connection is still the quota layer's.
#[tokio::test]
async fn a_user_at_the_limit_is_denied_after_a_park() {
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(answer_on(&mut stream, &generate()).await, Some(200));
    wait_for_parks(&binary, 1.0).await;
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
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(answer_on(&mut stream, &generate()).await, Some(200));
    let request = generate();
    let (first, rest) = request.split_at(40);
    stream.write_all(first).await.expect("first half");
    wait_for_parks(&binary, 1.0).await;
    assert_eq!(answer_on(&mut stream, rest).await, Some(429));
    assert_eq!(upstream.count(), 1, "the denied request reached Django");
    // And the connection goes on: a GET is forwarded.
    assert_eq!(answer_on(&mut stream, GET).await, Some(200));
}

/// A request whose answer is slow to start (Django thinking for 1.5 s, six
/// looks of the watch) is not parked under way: its connection stays
/// keep-alive. Parking it would have shut hyper's connection down
/// gracefully mid-request, and hyper then sends `Connection: close`.
#[tokio::test]
async fn a_slow_answer_is_not_parked_under_way() {
    let upstream = TestUpstream::always(Reply::ok().delay_head(Duration::from_millis(1500))).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    let head = head_on(&mut stream, GET).await.expect("an answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    assert_eq!(answer_on(&mut stream, GET).await, Some(200));
}

/// Reads until EOF or `within`; returns the bytes and whether EOF came.
pub(crate) async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return (all, false),
            Ok(Ok(0) | Err(_)) => return (all, true),
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// An upstream that answers each request head at once (`200`, body "ok")
/// without reading its body, then holds the connection `hold` and closes
/// it. Records each request line.
async fn early_answering_upstream(hold: Duration) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&lines);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&got)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let saved = if line.contains("/chat/") { "1" } else { "0" };
                seen.lock().expect("lock").push(line);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nx-images-saved: {saved}\r\ncontent-length: 2\r\n\r\nok"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                tokio::time::sleep(hold).await;
                drop(socket);
            });
        }
    });
    (addr, lines)
}

/// A streamed (not inspected) upload that Django answers before reading
/// its body, then closes: the proxy's answer ends while the client's body
/// is still paused, the watch parks the connection, and hyper drops the
/// unread body. The rest of that body must never be parsed as requests
/// of their own (request smuggling): without parking, hyper closes such a
/// connection.
#[tokio::test]
async fn a_body_left_unread_after_an_early_answer_is_not_served_as_requests() {
    let (upstream, lines) = early_answering_upstream(Duration::from_millis(1200)).await;
    let binary = Binary::start(&config(upstream, ""), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    let smuggled = b"GET /smuggled HTTP/1.1\r\nhost: app\r\n\r\n";
    let declared = 10 + smuggled.len() + 500;
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: app\r\ncontent-type: application/octet-stream\r\n\
         content-length: {declared}\r\n\r\n0123456789"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let (answer, _) = read_answer(&mut stream, Duration::from_secs(5))
        .await
        .expect("the early answer");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    // Django closes after 1.2 s; by then the watch has looked four times.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let parked = parks(&binary).await;
    // The client's body goes on: bytes that look like a request.
    let _ = stream.write_all(smuggled).await;
    let (after, closed) = read_to_close(&mut stream, Duration::from_secs(3)).await;
    let after = String::from_utf8_lossy(&after).to_string();
    let seen = lines.lock().expect("lock").clone();
    assert!(
        !seen.iter().any(|l| l.contains("/smuggled")),
        "body bytes of an upload reached Django as a request of their own \
         (parks: {parked}); Django saw {seen:?}; client got {after:?} (closed: {closed})"
    );
    assert!(
        !after.contains("HTTP/1.1"),
        "body bytes were answered as a request (parks: {parked}): {after:?}"
    );
}

/// Alice uses her one image; then, on another connection, an upload that
/// Django answers early (unread body, parked, see above) carries in its
/// body Alice's next image request. If it is parsed as a request, it must
/// still be checked: denied (429), never reaching Django.
#[tokio::test]
async fn a_request_smuggled_in_an_unread_body_is_still_checked() {
    let (upstream, lines) = early_answering_upstream(Duration::from_millis(1200)).await;
    let binary = Binary::start(&config(upstream, ""), &[]).await;
    let mut first = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(answer_on(&mut first, &generate()).await, Some(200));
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    let smuggled = generate();
    let declared = 10 + smuggled.len() + 500;
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: app\r\ncontent-type: application/octet-stream\r\n\
         content-length: {declared}\r\n\r\n0123456789"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    read_answer(&mut stream, Duration::from_secs(5))
        .await
        .expect("the early answer");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let _ = stream.write_all(&smuggled).await;
    let (after, _) = read_to_close(&mut stream, Duration::from_secs(3)).await;
    let after = String::from_utf8_lossy(&after).to_string();
    let seen = lines.lock().expect("lock").clone();
    eprintln!("smuggled image request: client got {after:?}; Django saw {seen:?}");
    let chats = seen.iter().filter(|l| l.contains("/chat/")).count();
    assert_eq!(chats, 1, "Django generated a second image: {seen:?}");
}

/// An inspected request refused at once (413: its Content-Length is past
/// max_body_bytes) while its body pauses: the rest of the body is never
/// parsed as a request (the connection closes, as hyper does for a body
/// it gives up on).
#[tokio::test]
async fn a_refused_inspected_body_is_not_served_as_requests() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr(), "max_body_bytes = 1000"), &[]).await;
    let mut stream = parked_connection(&binary).await;
    let head = "POST /chat/7/send/ HTTP/1.1\r\nhost: app\r\nx-user-id: alice\r\n\
         x-subscription-type: free\r\ncontent-type: application/json\r\n\
         content-length: 5000\r\n\r\n{\"message\": ";
    stream.write_all(head.as_bytes()).await.expect("head");
    let first = read_answer(&mut stream, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stream
        .write_all(b"GET /smuggled HTTP/1.1\r\nhost: app\r\n\r\n")
        .await;
    let (after, closed) = read_to_close(&mut stream, Duration::from_secs(3)).await;
    let after = String::from_utf8_lossy(&after).to_string();
    eprintln!(
        "413 case: first {:?}; after {after:?} closed {closed}",
        first.as_ref().map(|a| &a.0)
    );
    let paths: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| format!("{:?}", r))
        .filter(|r| r.contains("smuggled"))
        .collect();
    assert!(paths.is_empty(), "smuggled request reached Django");
    assert!(
        !after.contains("HTTP/1.1"),
        "body bytes answered as a request: {after:?}"
    );
}

/// The same desync without Django closing anything: Django answers the
/// upload early and keeps its connection; the client's body then stays
/// silent past `timeouts.client_body` (1 s), so the proxy gives the body
/// up ("408 and the connection closed", but the answer is already sent).
/// The connection must close; instead, parked, it serves what follows.
#[tokio::test]
async fn a_body_given_up_by_client_body_timeout_is_not_served_as_requests() {
    let (upstream, lines) = early_answering_upstream(Duration::from_secs(30)).await;
    let extra = "[timeouts]\nclient_body = \"1s\"\n";
    let binary = Binary::start(&config(upstream, extra), &[]).await;
    let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
    let smuggled = b"GET /smuggled HTTP/1.1\r\nhost: app\r\n\r\n";
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: app\r\ncontent-type: application/octet-stream\r\n\
         content-length: {}\r\n\r\n0123456789",
        10 + smuggled.len() + 500
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    read_answer(&mut stream, Duration::from_secs(5))
        .await
        .expect("the early answer");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let parked = parks(&binary).await;
    let _ = stream.write_all(smuggled).await;
    let (after, closed) = read_to_close(&mut stream, Duration::from_secs(3)).await;
    let after = String::from_utf8_lossy(&after).to_string();
    let seen = lines.lock().expect("lock").clone();
    eprintln!(
        "client_body timeout case: parks {parked}; Django saw {seen:?}; client got {after:?} closed {closed}"
    );
    assert!(
        !seen.iter().any(|l| l.contains("/smuggled")),
        "body bytes reached Django as a request (parks: {parked}): {seen:?}"
    );
    assert!(
        !after.contains("HTTP/1.1"),
        "answered as a request: {after:?}"
    );
}

/// The window of the desync above: Django closing 0 ms, 300 ms or 700 ms
/// after its early answer. Fails naming each hold after which the body's
/// bytes were served as a request.
#[tokio::test]
async fn the_unread_body_desync_by_how_long_django_holds() {
    let mut smuggled_after = Vec::new();
    for hold in [0u64, 300, 700] {
        let (upstream, lines) = early_answering_upstream(Duration::from_millis(hold)).await;
        let binary = Binary::start(&config(upstream, ""), &[]).await;
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        let smuggled = b"GET /smuggled HTTP/1.1\r\nhost: app\r\n\r\n";
        let head = format!(
            "POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: {}\r\n\r\n0123456789",
            10 + smuggled.len() + 500
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        let _ = read_answer(&mut stream, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(hold + 1000)).await;
        let _ = stream.write_all(smuggled).await;
        let _ = read_to_close(&mut stream, Duration::from_secs(2)).await;
        let seen = lines.lock().expect("lock").clone();
        eprintln!(
            "hold {hold} ms: parks {}, Django saw {seen:?}",
            parks(&binary).await
        );
        if seen.iter().any(|l| l.contains("/smuggled")) {
            smuggled_after.push(hold);
        }
    }
    assert!(
        smuggled_after.is_empty(),
        "smuggled after holds (ms): {smuggled_after:?}"
    );
}
