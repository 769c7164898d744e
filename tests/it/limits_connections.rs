//! Connection limits against the real binary (docs/limits.md): connections
//! past `max_connections_per_ip` are closed, a silent connection is closed
//! like a slow head, an idle HTTP/2 connection is closed (a busy one is
//! not), and a reload keeps the running `[timeouts]` as it says. Shares
//! `limits.rs`'s helpers; each wait is bounded.

use std::time::{Duration, Instant};

use crate::support::binary::Binary;
use crate::support::upstream::{Reply, TestUpstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::{CLIENT_BODY, CLIENT_HEAD, SLACK, config, post_head, stall, with_client_head};

/// Sends one keep-alive `GET /healthz` on `stream` and returns the status,
/// or `None` when the connection closes first.
async fn get_on(stream: &mut TcpStream) -> Option<u16> {
    crate::parking::answer_on(stream, b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n").await
}

/// Measures: with `max_connections_per_ip = 2` (and two serving threads,
/// which share the count), a third connection from the same address is
/// closed unanswered while two are open, and accepted again once one of
/// them closes.
#[tokio::test]
async fn connections_past_max_connections_per_ip_are_closed() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let extra = "max_connections_per_ip = 2\nthreads = 2";
    let binary = Binary::start(&config(upstream.addr(), extra), &[]).await;
    let mut first = TcpStream::connect(binary.proxy).await.expect("connect");
    let mut second = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(get_on(&mut first).await, Some(200));
    assert_eq!(get_on(&mut second).await, Some(200));
    let mut third = TcpStream::connect(binary.proxy).await.expect("connect");
    assert_eq!(
        get_on(&mut third).await,
        None,
        "a third connection was served"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = TcpStream::connect(binary.proxy).await.expect("connect");
        if get_on(&mut again).await == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get_on(&mut second).await, Some(200));
}

/// A connection that sends nothing, or only the start of the HTTP/2
/// preface, or the whole preface and then nothing, is closed once it has not
/// started a request within the head deadline (`timeouts.client_head`, here
/// [`CLIENT_HEAD`]). hyper's own head timer starts only once hyper-util's `auto`
/// builder has decided the version, which needs bytes, and HTTP/2 has none:
/// before, each such connection held a file descriptor for as long as the
/// client liked, and one client opening `ulimit -n` of them made `accept`
/// fail with EMFILE so nobody else was served (found by an attack session:
/// 19,985 silent connections, then a GET through the proxy timed out).
#[tokio::test]
async fn a_silent_connection_is_closed_like_a_slow_head() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&with_client_head(&config(upstream.addr(), "")), &[]).await;
    let starts: [(&str, &[u8]); 4] = [
        ("nothing", b""),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
        (
            "the HTTP/2 preface and SETTINGS, then nothing",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        ),
        (
            "part of an HTTP/1.1 head (closed: the control)",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
        ),
    ];
    let mut streams = Vec::new();
    for (what, bytes) in starts {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        streams.push((what, stream));
    }
    // Give the head deadline slack.
    tokio::time::sleep(CLIENT_HEAD + SLACK + SLACK).await;
    let mut open = Vec::new();
    for (what, mut stream) in streams {
        let mut buf = vec![0u8; 65536];
        let closed = loop {
            match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => break false,
            }
        };
        if !closed {
            open.push(what);
        }
    }
    assert!(
        open.is_empty(),
        "still open after {:?}: {open:?}",
        CLIENT_HEAD + SLACK + SLACK
    );
}

/// One GET over an HTTP/2 connection of its own, through `sender`; panics
/// unless it answers 200 within 10 s.
async fn h2_get(sender: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>) {
    let request = http::Request::get("http://app.example/page")
        .version(http::Version::HTTP_2)
        .body(Empty::new())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answer within 10 s")
        .expect("response");
    assert_eq!(response.status(), http::StatusCode::OK);
    let _ = response.into_body().collect().await;
}

/// An HTTP/2 connection that made a request and then starts none for a
/// whole head deadline (`timeouts.client_head`) is sent a GOAWAY and closed, as an
/// idle HTTP/1.1 keep-alive connection is; before, it stayed open for as
/// long as the client liked (hyper has no HTTP/2 idle timeout). One that
/// keeps making requests stays open.
#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&with_client_head(&config(upstream.addr(), "")), &[]).await;
    let connect = || async {
        let stream = TcpStream::connect(binary.proxy).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("h2 handshake");
        (sender, tokio::spawn(connection))
    };
    let (mut idle, idle_connection) = connect().await;
    let (mut busy, busy_connection) = connect().await;
    h2_get(&mut idle).await;
    // Closed between one and two deadlines after its request; the busy
    // one makes a request every half deadline meanwhile.
    let idle_for = CLIENT_HEAD * 2 + SLACK + SLACK;
    let until = Instant::now() + idle_for;
    while Instant::now() < until {
        h2_get(&mut busy).await;
        tokio::time::sleep((CLIENT_HEAD / 2).min(until - Instant::now())).await;
    }
    assert!(
        idle_connection.is_finished(),
        "an HTTP/2 connection idle for {idle_for:?} is still open"
    );
    assert!(!busy_connection.is_finished(), "a busy one was closed");
    h2_get(&mut busy).await;
}

/// `[timeouts]` needs a restart: a reload that changes it says so
/// (`restart_required`) and keeps the running values everywhere. The quota
/// layer took the new `client_body` (and `idle`) at once before, while the
/// proxy kept the old ones and the reload said they were kept (found by an
/// attack session).
#[tokio::test]
async fn a_reload_keeps_the_running_timeouts_as_it_says() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr(), ""), &[]).await;
    binary.write_config(
        &config(upstream.addr(), "").replace("client_body = \"1s\"", "client_body = \"30s\""),
    );
    binary.signal("HUP");
    let reloaded = |l: &serde_json::Value| l["message"] == "config reloaded";
    binary
        .wait_for_logs(1, Duration::from_secs(15), reloaded)
        .await;
    let line = binary.find_log(reloaded).expect("the reload's line");
    assert!(line.to_string().contains("timeouts"), "{line}");
    let head = post_head("/chat/1/send/", "application/json", 100_000);
    let seen = stall(binary.proxy, &head, &[b'-'; 1000], CLIENT_BODY + SLACK).await;
    assert_eq!(
        seen.status,
        Some(408),
        "a stalled inspected body was not cut after the running client_body (1 s): {seen:?}"
    );
}
