//! The proxy is transparent: it runs the real `server::serve` and
//! `ProxyService` on loopback against a scripted upstream and checks what
//! each side sees. Timeouts are small; timing is checked only as ordering
//! (who finished first), with wide margins.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use quota_proxy::BoxError;
use quota_proxy::config::{NonZeroDuration, Timeouts};
use quota_proxy::proxy::ProxyService;
use quota_proxy::server;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::upstream::{Reply, TestUpstream};

/// Bound on every await that should finish: a failing test fails, it does
/// not hang.
const LIMIT: Duration = Duration::from_secs(10);

type ClientBody = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {LIMIT:?}"))
}

pub(crate) fn timeouts() -> Timeouts {
    Timeouts {
        connect: NonZeroDuration::from_secs(1),
        response_head: NonZeroDuration::from_secs(5),
        idle: NonZeroDuration::from_secs(5),
        client_body: NonZeroDuration::from_secs(5),
        ..Timeouts::default()
    }
}

/// [`timeouts`] with `idle` cut to `ms` milliseconds.
fn idle_of(ms: u64) -> Timeouts {
    Timeouts {
        idle: NonZeroDuration::from_millis(ms),
        ..timeouts()
    }
}

/// The first data frame of a response body.
async fn first_data(body: &mut Incoming) -> Bytes {
    within("first frame", body.frame())
        .await
        .expect("a frame")
        .expect("data")
        .into_data()
        .expect("data")
}

pub(crate) fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Moves tokio's clock (which the pool's idle timer reads) forward by
/// `by` at once; the sockets stay on real time.
pub(crate) async fn let_idle_time_pass(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// The proxy under test, served by `server::serve` on `127.0.0.1:0`.
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub(crate) task: JoinHandle<std::io::Result<()>>,
}

impl Proxy {
    pub(crate) async fn start(upstream: Authority, timeouts: Timeouts) -> Self {
        Self::start_with_grace(upstream, timeouts, Duration::from_secs(5)).await
    }

    pub(crate) async fn start_with_grace(
        upstream: Authority,
        timeouts: Timeouts,
        grace: Duration,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let service = ProxyService::new(upstream, &timeouts);
        let shutdown = async move {
            let _ = rx.await;
        };
        let task = tokio::spawn(server::serve(
            listener,
            service,
            shutdown,
            grace,
            server::AcceptBalance::alone(),
        ));
        Self {
            addr,
            shutdown: Some(tx),
            task,
        }
    }

    pub(crate) fn signal_shutdown(&mut self) {
        let tx = self.shutdown.take().expect("shutdown signalled once");
        tx.send(()).expect("serve is running");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn full(body: impl Into<Bytes>) -> ClientBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> ClientBody {
    full(Bytes::new())
}

pub(crate) fn get(path: &str) -> Request<ClientBody> {
    Request::get(path)
        .header("host", "public.example")
        .body(empty())
        .expect("request")
}

/// An HTTP/1.1 connection to `addr`; the request goes as built (the test
/// sets `Host` itself).
pub(crate) async fn h1(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<ClientBody> {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("h1 handshake");
    tokio::spawn(connection);
    sender
}

/// An HTTP/2 connection (h2c, prior knowledge) to `addr`.
pub(crate) async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ClientBody> {
    crate::support::proxy::h2_client(addr).await
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub(crate) async fn send(addr: SocketAddr, request: Request<ClientBody>) -> Response<Incoming> {
    let mut sender = h1(addr).await;
    within("response head", sender.send_request(request))
        .await
        .expect("response")
}

pub(crate) async fn body_bytes(response: Response<Incoming>) -> Bytes {
    within("response body", response.into_body().collect())
        .await
        .expect("complete body")
        .to_bytes()
}

pub(crate) async fn body_json(response: Response<Incoming>) -> serde_json::Value {
    let content_type = response.headers()["content-type"]
        .to_str()
        .expect("text")
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    serde_json::from_slice(&body_bytes(response).await).expect("JSON body")
}

#[tokio::test]
async fn forwards_method_path_query_and_body_unchanged() {
    let upstream = TestUpstream::always(
        Reply::status(201)
            .header("x-images-saved", "1")
            .json(json!({"images_saved": 1})),
    )
    .await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    let payload = br#"{"message":"a cat","generate_image":true}"#;
    let request = Request::post("/chat/session/42/send/?a=1&b=%20x&a=2")
        .header("host", "public.example")
        .header("content-type", "application/json")
        .header("content-length", payload.len())
        .body(full(&payload[..]))
        .expect("request");
    let response = send(proxy.addr, request).await;

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["x-images-saved"], "1");
    assert_eq!(body_json(response).await, json!({"images_saved": 1}));

    let seen = upstream.last_request();
    assert_eq!(upstream.count(), 1);
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri, "/chat/session/42/send/?a=1&b=%20x&a=2");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.header("content-length"), Some("41"));
    assert_eq!(seen.body, &payload[..]);

    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let request = Request::builder()
            .method(method.clone())
            .uri("/m/")
            .header("host", "public.example")
            .body(empty())
            .expect("request");
        body_bytes(send(proxy.addr, request).await).await;
        assert_eq!(upstream.last_request().method, method);
    }
}

#[tokio::test]
async fn streams_a_large_chunked_request_body_byte_identical() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    // 4 MiB in 64 KiB chunks of unknown total length: sent chunked.
    let chunks: Vec<Bytes> = (0..64u32)
        .map(|i| {
            Bytes::from(
                (0..65_536u32)
                    .map(|j| ((i * 7 + j) % 251) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(Frame::data(c))),
    );
    let body = StreamBody::new(frames)
        .map_err(|never| match never {})
        .boxed_unsync();
    let request = Request::post("/upload/")
        .header("host", "public.example")
        .body(body)
        .expect("request");
    let response = send(proxy.addr, request).await;
    assert_eq!(response.status(), StatusCode::OK);

    let seen = upstream.last_request();
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert!(seen.header("content-length").is_none());
    assert_eq!(seen.body.len(), expected.len());
    assert!(seen.body == expected, "request body changed in transit");
}

#[tokio::test]
async fn strips_hop_by_hop_request_headers() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    let request = Request::get("/")
        .header("host", "public.example")
        .header("connection", "keep-alive, X-Hop")
        .header("x-hop", "named in Connection")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("te", "trailers, deflate")
        .header("upgrade", "websocket")
        .header("x-end-to-end", "kept")
        .body(empty())
        .expect("request");
    body_bytes(send(proxy.addr, request).await).await;

    let seen = upstream.last_request();
    for name in [
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(
            seen.headers.get(name).is_none(),
            "{name} reached the upstream"
        );
    }
    // hyper's own connection management may add `connection: keep-alive`
    // for the upstream hop; nothing of the client's must remain.
    assert!(
        seen.header_all("connection")
            .iter()
            .all(|v| !v.to_ascii_lowercase().contains("x-hop")),
        "{:?}",
        seen.header_all("connection")
    );
    assert_eq!(seen.header_all("te"), ["trailers"]);
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
}

#[tokio::test]
async fn strips_hop_by_hop_response_headers() {
    let upstream = TestUpstream::always(
        Reply::ok()
            .header("connection", "X-Hop-Response")
            .header("x-hop-response", "named in Connection")
            .header("keep-alive", "timeout=5, max=100")
            .header("proxy-connection", "keep-alive")
            .header("proxy-authenticate", "Basic realm=\"upstream\"")
            .header("upgrade", "h2c")
            .header("x-end-to-end", "kept")
            .body("ok"),
    )
    .await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    let response = send(proxy.addr, get("/")).await;
    let headers = response.headers().clone();
    assert_eq!(body_bytes(response).await, "ok");
    for name in [
        "connection",
        "x-hop-response",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "upgrade",
    ] {
        assert!(
            headers.get(name).is_none(),
            "{name} reached the client: {headers:?}"
        );
    }
    assert_eq!(headers["x-end-to-end"], "kept");
}

#[tokio::test]
async fn appends_the_peer_to_forwarded_for_as_one_line() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    let request = Request::get("/")
        .header("host", "public.example")
        .header("x-forwarded-for", "203.0.113.1")
        .header("x-forwarded-for", "198.51.100.2, 192.0.2.3")
        .body(empty())
        .expect("request");
    body_bytes(send(proxy.addr, request).await).await;
    assert_eq!(
        upstream.last_request().header_all("x-forwarded-for"),
        ["203.0.113.1, 198.51.100.2, 192.0.2.3, 127.0.0.1"]
    );

    body_bytes(send(proxy.addr, get("/")).await).await;
    assert_eq!(
        upstream.last_request().header_all("x-forwarded-for"),
        ["127.0.0.1"]
    );
}

#[tokio::test]
async fn keeps_host_and_sets_forwarded_proto_and_host() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    body_bytes(send(proxy.addr, get("/")).await).await;
    let seen = upstream.last_request();
    assert_eq!(seen.header_all("host"), ["public.example"]);
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("public.example"));

    // A front proxy's values are the true ones and are kept.
    let request = Request::get("/")
        .header("host", "internal:8080")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "front.example")
        .body(empty())
        .expect("request");
    body_bytes(send(proxy.addr, request).await).await;
    let seen = upstream.last_request();
    assert_eq!(seen.header_all("host"), ["internal:8080"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(seen.header_all("x-forwarded-host"), ["front.example"]);
}

#[tokio::test]
async fn http2_client_is_forwarded_as_http11_with_host() {
    let upstream =
        TestUpstream::always(Reply::ok().header("x-from", "upstream").body("over h2")).await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    let mut sender = h2(proxy.addr).await;
    let request = Request::post("http://public.example:8443/h2/?q=1")
        .version(Version::HTTP_2)
        .body(full("hello"))
        .expect("request");
    let response = within("h2 response", sender.send_request(request))
        .await
        .expect("response");
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-from"], "upstream");
    assert_eq!(body_bytes(response).await, "over h2");

    let seen = upstream.last_request();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.uri, "/h2/?q=1");
    assert_eq!(seen.header_all("host"), ["public.example:8443"]);
    assert_eq!(seen.header("x-forwarded-host"), Some("public.example:8443"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.body, "hello");
}

#[tokio::test]
async fn unreachable_upstream_is_502_json() {
    let proxy = Proxy::start(TestUpstream::unreachable_authority(), timeouts()).await;
    let response = send(proxy.addr, get("/")).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(body_json(response).await["error"], "upstream unreachable");
}

#[tokio::test]
async fn slow_response_head_is_504_json() {
    let upstream = TestUpstream::always(
        Reply::ok()
            .body("too late")
            .delay_head(Duration::from_secs(5)),
    )
    .await;
    let proxy = Proxy::start(
        upstream.authority(),
        Timeouts {
            response_head: NonZeroDuration::from_millis(200),
            ..timeouts()
        },
    )
    .await;

    let response = send(proxy.addr, get("/")).await;
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body_json(response).await["error"], "upstream timed out");
    // The 504 came before the upstream answered.
    assert_eq!(upstream.count(), 1);
    assert_eq!(upstream.bodies_completed(), 0);
}

#[tokio::test]
async fn steady_stream_longer_than_idle_completes() {
    let chunks = (0..10).map(|i| (format!("chunk {i};"), ms(100)));
    let upstream = TestUpstream::always(Reply::ok().stream(chunks)).await;
    // Each gap (100 ms) is well below `idle`; the whole stream (1 s) is not.
    let proxy = Proxy::start(upstream.authority(), idle_of(500)).await;

    let response = send(proxy.addr, get("/stream")).await;
    let expected: String = (0..10).map(|i| format!("chunk {i};")).collect();
    assert_eq!(body_bytes(response).await, expected);
    assert_eq!(upstream.bodies_completed(), 1);
}

#[tokio::test]
async fn stream_silent_longer_than_idle_is_cut() {
    let upstream = TestUpstream::always(Reply::ok().stream([
        ("first", Duration::ZERO),
        ("never seen", Duration::from_secs(5)),
    ]))
    .await;
    let proxy = Proxy::start(upstream.authority(), idle_of(300)).await;

    let response = send(proxy.addr, get("/stream")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert_eq!(first_data(&mut body).await, "first");
    let cut = within("the cut", body.frame()).await;
    assert!(
        matches!(cut, Some(Err(_))),
        "expected an aborted body, got {cut:?}"
    );
    // The proxy hung up on the upstream too.
    upstream.wait_for_bodies_dropped(1).await;
    assert_eq!(upstream.bodies_completed(), 0);
}

#[tokio::test]
async fn first_chunk_of_a_slow_stream_arrives_before_the_stream_ends() {
    let upstream = TestUpstream::always(Reply::ok().stream([
        ("first", Duration::ZERO),
        ("second", Duration::from_secs(1)),
    ]))
    .await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    let response = send(proxy.addr, get("/stream")).await;
    let mut body = response.into_body();
    assert_eq!(first_data(&mut body).await, "first");
    assert_eq!(
        upstream.bodies_completed(),
        0,
        "first chunk was held until the stream ended"
    );
    let rest = within("rest", body.collect())
        .await
        .expect("complete")
        .to_bytes();
    assert_eq!(rest, "second");
}

#[tokio::test]
async fn trailers_are_forwarded() {
    let upstream = TestUpstream::always(
        Reply::ok()
            .stream([("part 1;", Duration::ZERO), ("part 2", ms(20))])
            .trailer("x-checksum", "abc123"),
    )
    .await;
    let proxy = Proxy::start(upstream.authority(), timeouts()).await;

    let request = Request::get("/t")
        .header("host", "public.example")
        .header("te", "trailers")
        .body(empty())
        .expect("request");
    let response = send(proxy.addr, request).await;
    let collected = within("body", response.into_body().collect())
        .await
        .expect("complete");
    assert_eq!(
        collected.trailers().expect("trailers")["x-checksum"],
        "abc123"
    );
    assert_eq!(collected.to_bytes(), "part 1;part 2");
    assert_eq!(upstream.last_request().header("te"), Some("trailers"));

    // And to an HTTP/2 client. An upstream like hyper sends trailers only
    // to a client that asked with `TE: trailers` (RFC 9110 §10.1.4).
    let mut sender = h2(proxy.addr).await;
    let request = Request::get("http://public.example/t")
        .header("te", "trailers")
        .body(empty())
        .expect("request");
    let response = within("h2 response", sender.send_request(request))
        .await
        .expect("response");
    let collected = within("body", response.into_body().collect())
        .await
        .expect("complete");
    assert_eq!(
        collected.trailers().expect("trailers")["x-checksum"],
        "abc123"
    );
}
