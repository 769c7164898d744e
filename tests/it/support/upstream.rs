//! A loopback HTTP/1.1 upstream for integration tests: a real hyper server
//! on `127.0.0.1:0`, scripted per request with a small [`Reply`] DSL, that
//! records every request it receives.
//!
//! ```ignore
//! let upstream = TestUpstream::start(|req| async move {
//!     if req.uri.path() == "/generate/" {
//!         Reply::ok().header("x-images-saved", "1").json(json!({"images_saved": 1}))
//!     } else {
//!         Reply::status(503).delay_head(Duration::from_secs(2))
//!     }
//! })
//! .await;
//! let proxy = ProxyService::new(upstream.authority(), &timeouts);
//! // …
//! upstream.wait_for_bodies_completed(1).await;
//! assert_eq!(upstream.count(), 1);
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;

/// How long the `wait_for_*` helpers wait before failing the test.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// A request as the upstream received it, body read in full.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The request target (origin-form: `/path?query`).
    pub uri: Uri,
    /// The HTTP version on the wire to the upstream.
    pub version: Version,
    /// All headers, repeated lines kept apart.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The first value of header `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every line of header `name`, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("header value is text"))
            .collect()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What the upstream answers: built with chained calls, e.g.
/// `Reply::status(201).header("x-images-saved", "1").json(json!({…}))`.
#[derive(Debug, Clone)]
pub struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    content: Content,
    trailers: Option<HeaderMap>,
    head_delay: Duration,
    hang_up: bool,
}

#[derive(Debug, Clone)]
enum Content {
    /// Sent with a `Content-Length`.
    Full(Bytes),
    /// Sent chunked: each chunk after its delay.
    Stream(Vec<(Bytes, Duration)>),
}

impl Reply {
    /// An empty answer with `status`.
    pub fn status(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("a valid status code"),
            headers: HeaderMap::new(),
            content: Content::Full(Bytes::new()),
            trailers: None,
            head_delay: Duration::ZERO,
            hang_up: false,
        }
    }

    /// An empty `200 OK`.
    pub fn ok() -> Self {
        Self::status(200)
    }

    /// No answer at all: the upstream reads the request, then closes the
    /// connection without writing a byte.
    pub fn hang_up() -> Self {
        Self {
            hang_up: true,
            ..Self::ok()
        }
    }

    /// Adds a header line (repeat the call for several lines).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
        self
    }

    /// A full body, sent with its `Content-Length`.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.content = Content::Full(body.into());
        self
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(self, value: serde_json::Value) -> Self {
        let body = serde_json::to_vec(&value).expect("serializable JSON");
        self.header("content-type", "application/json").body(body)
    }

    /// A chunked body: each `(chunk, delay)` is sent `delay` after the
    /// previous one (the first, after the head).
    pub fn stream<C: Into<Bytes>>(
        mut self,
        chunks: impl IntoIterator<Item = (C, Duration)>,
    ) -> Self {
        let chunks = chunks
            .into_iter()
            .map(|(chunk, delay)| (chunk.into(), delay))
            .collect();
        self.content = Content::Stream(chunks);
        self
    }

    /// Adds a trailer field after the body, and names it in `Trailer` (hyper
    /// sends only announced trailers). A body with trailers is chunked.
    pub fn trailer(mut self, name: &str, value: &str) -> Self {
        self.trailers.get_or_insert_with(HeaderMap::new).append(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid trailer name"),
            HeaderValue::from_str(value).expect("a valid trailer value"),
        );
        self.header("trailer", name)
    }

    /// Waits `delay` before sending the response head.
    pub fn delay_head(mut self, delay: Duration) -> Self {
        self.head_delay = delay;
        self
    }
}

/// What the upstream has seen so far.
#[derive(Debug, Default)]
struct Stats {
    connections: usize,
    connections_closed: usize,
    requests: Vec<RecordedRequest>,
    bodies_completed: usize,
    bodies_dropped: usize,
}

type Handler =
    Arc<dyn Fn(RecordedRequest) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// A running loopback upstream; stops (and drops its connections) on drop.
pub struct TestUpstream {
    addr: SocketAddr,
    stats: Arc<watch::Sender<Stats>>,
    task: JoinHandle<()>,
}

impl TestUpstream {
    /// Starts a server on `127.0.0.1:0` answering each request with
    /// `handler(request).await`.
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(RecordedRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Reply> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |request| Box::pin(handler(request)));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let stats = Arc::new(watch::Sender::new(Stats::default()));
        let task = tokio::spawn(accept_loop(listener, handler, Arc::clone(&stats)));
        Self { addr, stats, task }
    }

    /// Starts a server answering every request with `reply`.
    pub async fn always(reply: Reply) -> Self {
        Self::start(move |_| {
            let reply = reply.clone();
            async move { reply }
        })
        .await
    }

    /// An upstream that answers 200 at once, except a request whose path
    /// starts with `/slow`, answered only once `gate` gives it a permit
    /// (a slow app the test releases).
    pub async fn gated_slow(gate: &Arc<tokio::sync::Semaphore>) -> Self {
        let gate = Arc::clone(gate);
        Self::start(move |request| {
            let gate = Arc::clone(&gate);
            async move {
                if request.uri.path().starts_with("/slow") {
                    let _ = gate.acquire().await;
                }
                Reply::ok()
            }
        })
        .await
    }

    /// An authority on loopback where nothing listens: connecting to it is
    /// refused. (The port was free a moment ago; another process could take
    /// it, which is unlikely enough for tests.)
    pub fn unreachable_authority() -> Authority {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        drop(listener);
        authority_of(addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:port`, as `ProxyService::new` takes it.
    pub fn authority(&self) -> Authority {
        authority_of(self.addr)
    }

    /// Every request received so far, in arrival order. A request is
    /// recorded as soon as its body is read, before the reply is sent.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.stats.borrow().requests.clone()
    }

    /// The last request received.
    pub fn last_request(&self) -> RecordedRequest {
        self.stats
            .borrow()
            .requests
            .last()
            .cloned()
            .expect("the upstream received a request")
    }

    /// How many connections were accepted.
    pub fn connections(&self) -> usize {
        self.stats.borrow().connections
    }

    /// Waits until `n` connections were closed (by either side); panics
    /// after [`WAIT_LIMIT`].
    pub async fn wait_for_connections_closed(&self, n: usize) {
        self.wait_until("connections closed", n, |s| s.connections_closed)
            .await;
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        self.stats.borrow().requests.len()
    }

    /// How many response bodies were handed to hyper in full (last chunk,
    /// or trailers, given; an empty body counts when its head is sent).
    pub fn bodies_completed(&self) -> usize {
        self.stats.borrow().bodies_completed
    }

    /// How many response bodies were dropped before their end: the proxy
    /// hung up mid-response.
    pub fn bodies_dropped(&self) -> usize {
        self.stats.borrow().bodies_dropped
    }

    /// Waits until `n` requests were received; panics after [`WAIT_LIMIT`].
    pub async fn wait_for_requests(&self, n: usize) {
        self.wait_until("requests received", n, |s| s.requests.len())
            .await;
    }

    /// Waits until `n` bodies completed; panics after [`WAIT_LIMIT`].
    pub async fn wait_for_bodies_completed(&self, n: usize) {
        self.wait_until("bodies completed", n, |s| s.bodies_completed)
            .await;
    }

    /// Waits until `n` bodies were dropped early; panics after [`WAIT_LIMIT`].
    pub async fn wait_for_bodies_dropped(&self, n: usize) {
        self.wait_until("bodies dropped", n, |s| s.bodies_dropped)
            .await;
    }

    async fn wait_until(&self, what: &str, n: usize, count: impl Fn(&Stats) -> usize) {
        let mut rx = self.stats.subscribe();
        let reached = tokio::time::timeout(WAIT_LIMIT, rx.wait_for(|s| count(s) >= n)).await;
        if reached.is_err() {
            let now = count(&self.stats.borrow());
            panic!("upstream: waited {WAIT_LIMIT:?} for {n} {what}, saw {now}");
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every
        // connection task.
        self.task.abort();
    }
}

fn authority_of(addr: SocketAddr) -> Authority {
    addr.to_string()
        .parse()
        .expect("an address is an authority")
}

async fn accept_loop(listener: TcpListener, handler: Handler, stats: Arc<watch::Sender<Stats>>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stats.send_modify(|s| s.connections += 1);
        let closed = Arc::clone(&stats);
        let handler = Arc::clone(&handler);
        let stats = Arc::clone(&stats);
        let service = hyper::service::service_fn(move |request| {
            respond(request, Arc::clone(&handler), Arc::clone(&stats))
        });
        connections.spawn(async move {
            // Errors here are the test's doing (hang-ups, proxy aborts).
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            closed.send_modify(|s| s.connections_closed += 1);
        });
        // Reap finished connections without waiting.
        while connections.try_join_next().is_some() {}
    }
}

/// The service's error for [`Reply::hang_up`]: hyper closes the connection
/// without a response.
#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("scripted hang-up")]
    HangUp,
    #[error("reading the request body failed")]
    RequestBody(#[source] hyper::Error),
}

async fn respond(
    request: Request<Incoming>,
    handler: Handler,
    stats: Arc<watch::Sender<Stats>>,
) -> Result<Response<ReplyBody>, UpstreamError> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(UpstreamError::RequestBody)?
        .to_bytes();
    let recorded = RecordedRequest {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
    };
    stats.send_modify(|s| s.requests.push(recorded.clone()));

    let reply = handler(recorded).await;
    tokio::time::sleep(reply.head_delay).await;
    if reply.hang_up {
        return Err(UpstreamError::HangUp);
    }
    let mut response = Response::new(ReplyBody::new(reply.content, reply.trailers, stats));
    *response.status_mut() = reply.status;
    *response.headers_mut() = reply.headers;
    if let Some(len) = response.body().size_hint().exact() {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(response)
}

/// A reply body that sends its chunks on schedule and counts whether it was
/// sent in full or dropped early.
struct ReplyBody {
    chunks: VecDeque<(Bytes, Duration)>,
    trailers: Option<HeaderMap>,
    exact_len: Option<u64>,
    delay: Option<Pin<Box<Sleep>>>,
    stats: Arc<watch::Sender<Stats>>,
    done: bool,
}

impl ReplyBody {
    fn new(
        content: Content,
        trailers: Option<HeaderMap>,
        stats: Arc<watch::Sender<Stats>>,
    ) -> Self {
        let (chunks, exact_len) = match content {
            Content::Full(bytes) => {
                // With trailers the body must go chunked: no length.
                let len = trailers.is_none().then_some(bytes.len() as u64);
                let chunks = if bytes.is_empty() {
                    VecDeque::new()
                } else {
                    VecDeque::from([(bytes, Duration::ZERO)])
                };
                (chunks, len)
            }
            Content::Stream(chunks) => (chunks.into(), None),
        };
        let mut body = Self {
            chunks,
            trailers,
            exact_len,
            delay: None,
            stats,
            done: false,
        };
        if body.is_end_stream() {
            // hyper never polls an empty body: it is complete as it is.
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        self.done = true;
        self.stats.send_modify(|s| s.bodies_completed += 1);
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let frame = if let Some((_, delay)) = this.chunks.front() {
            if !delay.is_zero() {
                let delay = *delay;
                let sleep = this
                    .delay
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
                ready!(sleep.as_mut().poll(cx));
                this.delay = None;
            }
            this.chunks.pop_front().map(|(chunk, _)| Frame::data(chunk))
        } else {
            this.trailers.take().map(Frame::trailers)
        };
        if frame.is_some() && this.chunks.is_empty() && this.trailers.is_none() && !this.done {
            this.finish();
        }
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.exact_len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl Drop for ReplyBody {
    fn drop(&mut self) {
        if !self.done {
            self.stats.send_modify(|s| s.bodies_dropped += 1);
        }
    }
}
