//! The proxy's connections, on the real `server::serve` and `ProxyService`
//! with `transparency.rs`'s helpers: the upstream connection pool (one
//! connection reused, a request never sent twice, dropped and expired
//! connections closed), the graceful shutdown of client connections, and
//! the serving threads sharing a burst of connections. Timeouts are small;
//! timing is checked only as ordering, with wide margins.

use std::convert::Infallible;
use std::time::Duration;

use crate::support::upstream::{Reply, TestUpstream};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use quota_proxy::config::{NonZeroDuration, Timeouts};
use quota_proxy::proxy::POOL_IDLE_TIMEOUT;
use quota_proxy::server;
use tokio::net::{TcpListener, TcpStream};

use crate::transparency::{
    Proxy, body_bytes, body_json, full, get, h1, h2, let_idle_time_pass, ms, send, timeouts, within,
};

#[tokio::test]
async fn request_is_sent_once_when_upstream_hangs_up() {
    let upstream = TestUpstream::start(|request| async move {
        if request.uri.path() == "/hang/" {
            Reply::hang_up()
        } else {
            Reply::ok()
        }
    })
    .await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    // Leave a pooled connection behind: the case where a client would
    // retry on a fresh one.
    body_bytes(send(proxy.addr, get("/warm/")).await).await;
    let request = Request::post("/hang/")
        .header("host", "public.example")
        .body(full("generate_image=on"))
        .expect("request");
    let response = send(proxy.addr, request).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(
        body_json(response).await["error"],
        "upstream failed before responding"
    );
    let hangs = upstream
        .requests()
        .iter()
        .filter(|r| r.uri.path() == "/hang/")
        .count();
    assert_eq!(hangs, 1);
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let upstream = TestUpstream::always(Reply::ok().body("hello")).await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;
    // Each on a client connection of its own: the upstream side is pooled,
    // not tied to a client.
    for _ in 0..5 {
        assert_eq!(
            body_bytes(send(proxy.addr, get("/x/")).await).await,
            "hello"
        );
    }
    let mut sender = h1(proxy.addr).await;
    for _ in 0..5 {
        let response = within("head", sender.send_request(get("/y/")))
            .await
            .expect("response");
        assert_eq!(body_bytes(response).await, "hello");
    }
    assert_eq!(upstream.count(), 10);
    assert_eq!(upstream.connections(), 1, "one idle connection, reused");
}

#[tokio::test]
async fn a_response_dropped_before_its_end_closes_its_upstream_connection() {
    let upstream = TestUpstream::start(|request| async move {
        if request.uri.path() == "/slow/" {
            Reply::ok().stream([("first", ms(0)), ("late", ms(5000))])
        } else {
            Reply::ok().body("whole")
        }
    })
    .await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;
    let mut response = send(proxy.addr, get("/slow/")).await;
    let first = within("first chunk", response.body_mut().frame())
        .await
        .expect("a frame")
        .expect("data");
    assert_eq!(first.into_data().expect("data"), "first");
    drop(response);
    upstream.wait_for_bodies_dropped(1).await;
    // Half a response is still on that connection: never reused.
    assert_eq!(
        body_bytes(send(proxy.addr, get("/x/")).await).await,
        "whole"
    );
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn an_idle_upstream_connection_older_than_the_pool_timeout_is_not_reused() {
    let upstream = TestUpstream::always(Reply::ok().body("hello")).await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;
    body_bytes(send(proxy.addr, get("/x/")).await).await;
    body_bytes(send(proxy.addr, get("/x/")).await).await;
    assert_eq!(upstream.connections(), 1);
    // The upstream may be closing it by now (gunicorn: 2 s): a new one.
    let_idle_time_pass(POOL_IDLE_TIMEOUT + ms(1)).await;
    body_bytes(send(proxy.addr, get("/x/")).await).await;
    assert_eq!(upstream.connections(), 2);
}

#[tokio::test]
async fn an_expired_idle_connection_is_closed_when_another_is_handed_back() {
    let upstream = TestUpstream::start(|request| async move {
        if request.uri.path() == "/slow/" {
            Reply::ok().body("slow").delay_head(ms(300))
        } else {
            Reply::ok().body("fast")
        }
    })
    .await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;
    // Two connections: the fast one idles 300 ms longer than the slow one.
    let slow = tokio::spawn(async move { body_bytes(send(proxy.addr, get("/slow/")).await).await });
    upstream.wait_for_requests(1).await;
    body_bytes(send(proxy.addr, get("/fast/")).await).await;
    assert_eq!(
        within("slow answer", slow).await.expect("slow task"),
        "slow"
    );
    assert_eq!(upstream.connections(), 2);
    // The fast one is now past the timeout, the slow one 150 ms short of it.
    let_idle_time_pass(POOL_IDLE_TIMEOUT - ms(150)).await;
    body_bytes(send(proxy.addr, get("/fast/")).await).await;
    assert_eq!(upstream.connections(), 2, "the fresh one was reused");
    upstream.wait_for_connections_closed(1).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_request_then_refuses() {
    let upstream = TestUpstream::start(|request| async move {
        if request.uri.path() == "/slow/" {
            Reply::ok().body("finished").delay_head(ms(500))
        } else {
            Reply::ok()
        }
    })
    .await;
    // A grace (and a head timeout, 30 s) longer than `within` allows: the
    // idle connection below is closed by the shutdown, not outwaited.
    let mut proxy =
        Proxy::start_with_grace(upstream.authority(), timeouts(), Duration::from_secs(60)).await;

    // An idle keep-alive connection must not hold up the shutdown.
    let mut idle = h1(proxy.addr).await;
    let response = within("warm-up", idle.send_request(get("/warm/")))
        .await
        .expect("response");
    body_bytes(response).await;

    let mut sender = h1(proxy.addr).await;
    let in_flight = tokio::spawn(sender.send_request(get("/slow/")));
    upstream.wait_for_requests(2).await;
    proxy.signal_shutdown();

    let response = within("in-flight response", in_flight)
        .await
        .expect("task")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_bytes(response).await, "finished");

    within("serve returns", &mut proxy.task)
        .await
        .expect("task")
        .expect("serve");
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "listener still accepts"
    );
}

/// An idle HTTP/2 connection is sent its GOAWAY when the proxy stops, and
/// closes: the shutdown does not wait out the grace (60 s) or the head
/// timeout (30 s) for it.
#[tokio::test]
async fn graceful_shutdown_closes_an_idle_http2_connection() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let mut proxy =
        Proxy::start_with_grace(upstream.authority(), timeouts(), Duration::from_secs(60)).await;
    let mut idle = h2(proxy.addr).await;
    let response = within("warm-up", idle.send_request(get("/warm/")))
        .await
        .expect("response");
    body_bytes(response).await;
    proxy.signal_shutdown();
    within("serve returns", &mut proxy.task)
        .await
        .expect("task")
        .expect("serve");
    assert!(idle.is_closed(), "the HTTP/2 connection is still open");
}

#[tokio::test]
async fn grace_period_bounds_the_shutdown() {
    let upstream = TestUpstream::always(Reply::ok().delay_head(Duration::from_secs(30))).await;
    let mut proxy = Proxy::start_with_grace(
        upstream.authority(),
        Timeouts {
            response_head: NonZeroDuration::from_secs(60),
            ..timeouts()
        },
        ms(200),
    )
    .await;

    let mut sender = h1(proxy.addr).await;
    let in_flight = tokio::spawn(sender.send_request(get("/slower-than-grace/")));
    upstream.wait_for_requests(1).await;
    proxy.signal_shutdown();

    within("serve returns", &mut proxy.task)
        .await
        .expect("task")
        .expect("serve");
    // serve returned before the upstream answered, and the client's
    // connection was aborted.
    assert_eq!(upstream.bodies_completed(), 0);
    let result = within("aborted request", in_flight).await.expect("task");
    assert!(
        result.is_err(),
        "expected an aborted connection, got {result:?}"
    );
}

/// Two threads serving one listener, as the binary's serving threads do,
/// answering with the name of the thread that served: a burst of
/// keep-alive connections is split evenly between them. Left to the
/// kernel, the first thread awake takes most or all of a burst.
#[test]
fn serving_threads_share_a_burst_of_connections_evenly() {
    const CONNECTIONS: usize = 40;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let addr = listener.local_addr().expect("local address");
    let stop = tokio_util::sync::CancellationToken::new();
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let threads: Vec<_> = server::AcceptBalance::shares(2)
        .into_iter()
        .enumerate()
        .map(|(index, balance)| {
            let listener = listener.try_clone().expect("clone");
            let stop = stop.clone();
            let ready_tx = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("t{index}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener).expect("listener");
                        let service = tower::service_fn(|_: Request<Incoming>| async {
                            let name = std::thread::current().name().unwrap_or("?").to_owned();
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                        });
                        let grace = Duration::from_secs(1);
                        let serving = tokio::spawn(server::serve(
                            listener,
                            service,
                            stop.cancelled_owned(),
                            grace,
                            balance,
                        ));
                        // The loop has run up to its first accept.
                        tokio::task::yield_now().await;
                        ready_tx.send(()).expect("test waits");
                        serving.await.expect("no panic").expect("serve");
                    });
                })
                .expect("thread")
        })
        .collect();
    for _ in &threads {
        ready.recv().expect("a serving thread started");
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let served_by = runtime.block_on(async {
        // All connect at once, then each asks which thread serves it; all
        // stay open until every answer is in.
        let connecting = (0..CONNECTIONS).map(|_| TcpStream::connect(addr));
        let mut conns = futures_util::future::try_join_all(connecting)
            .await
            .expect("connect");
        let mut served_by = Vec::new();
        for conn in &mut conns {
            served_by.push(ask_thread_name(conn).await);
        }
        served_by
    });
    stop.cancel();
    for thread in threads {
        thread.join().expect("serving thread");
    }
    let on_first = served_by.iter().filter(|name| *name == "t0").count();
    let on_second = served_by.iter().filter(|name| *name == "t1").count();
    assert_eq!(on_first + on_second, CONNECTIONS, "{served_by:?}");
    assert!(
        on_first.abs_diff(on_second) <= 2,
        "connections per thread: {on_first} and {on_second}"
    );
}

/// Sends one keep-alive request on `conn` and returns the answer's body.
async fn ask_thread_name(conn: &mut TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = conn.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed early");
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if body.len() >= length {
                return body[..length].to_owned();
            }
        }
    }
}
