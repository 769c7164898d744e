//! [`Quota`]: the service the layer makes, and the life of an inspected
//! request.
//!
//! A request on a route that is not inspected is handed to the inner service
//! as it is: no body read, no store call, no allocation beyond the inner
//! service's own. An inspected request goes through `inspect`:
//!
//! 1. **read** the body, up to `max_body_bytes` (413 beyond): into memory,
//!    or for an upload (`multipart/form-data`) into a spool, memory then a
//!    temporary file, while it is flagged as it streams;
//! 2. **flag**: does it ask for an image ([`crate::flag::detect`])? A body
//!    that cannot be parsed counts as asking, so it is never let through
//!    unchecked;
//!    A route's probe may force it (an image-editing session, `probe.rs`);
//! 3. **identify** the user and their limits (flagged requests, and probes);
//! 4. **reserve** one unit in the store, atomically against all three
//!    limits, or answer the denial (`admit.rs`);
//! 5. **forward** the exact bytes to the inner service; the call and its
//!    accounting move to a task of their own if the client disconnects, so
//!    a disconnect cannot cancel the accounting (`forward.rs`);
//! 6. **report**: the saved-images header, JSON field, or in-band report of
//!    a streamed body (`usage_body.rs`);
//! 7. **settle** the reservation into usage, or release it (`settle.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header, request};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;
use tower::Service;

use super::admit::admit;
use super::body::{QuotaBody, RequestBody};
use super::forward::forward;
use super::layer::Shared;
use super::probe::{ProbeAnswer, ProbeCache};
use super::settle::Ticket;
use super::spool::{self, ReadError};
use crate::error::json_error;
use crate::flag::{self, FlagVerdict};
use crate::identity::{set_identity_headers, strip_client_headers};
use crate::metrics::Decision;
use crate::routes::{Route, RouteMatch};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Enforces quotas in front of `S`; made by [`super::QuotaLayer`].
pub struct Quota<S> {
    inner: S,
    shared: Arc<ArcSwap<Shared>>,
}

impl<S> Quota<S> {
    pub(crate) fn new(inner: S, shared: Arc<ArcSwap<Shared>>) -> Self {
        Self { inner, shared }
    }
}

impl<S: Clone> Clone for Quota<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Quota<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Quota<S>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<QuotaBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        // The config this request lives by, even if a reload swaps it.
        let shared = self.shared.load_full();
        if let Some(names) = &shared.identity_headers {
            // Nothing downstream may believe an identity the client chose.
            strip_client_headers(request.headers_mut(), names);
        }
        // Only the proxy gives the upstream a report token (forward.rs).
        shared.reports.strip_client_token(request.headers_mut());
        let Some(matched) = shared.routes.find(request.method(), request.uri().path()) else {
            shared.passthrough.increment(1);
            let (parts, body) = request.into_parts();
            let future = self
                .inner
                .call(Request::from_parts(parts, RequestBody::streaming(body)));
            return ResponseFuture {
                kind: Kind::Passthrough { future, shared },
            };
        };
        // The ready service goes into the task; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            kind: Kind::Inspected {
                future: Box::pin(inspect(shared, inner, matched, request)),
            },
        }
    }
}

pin_project! {
    /// The response future of [`Quota`].
    pub struct ResponseFuture<F, E, B> {
        #[pin]
        kind: Kind<F, E, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, E, B> {
        Passthrough { #[pin] future: F, shared: Arc<Shared> },
        Inspected { future: BoxFuture<Result<Response<QuotaBody<B>>, E>> },
    }
}

impl<F, E, B> Future for ResponseFuture<F, E, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<QuotaBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future, shared } => {
                let response = std::task::ready!(future.poll(cx))?;
                let (mut parts, body) = response.into_parts();
                if shared.reports.take_header(&mut parts.headers).is_some() {
                    tracing::warn!(
                        "a route that is not inspected reported saved images; not counted \
                         (add it to [[routes]] to enforce and count it)"
                    );
                }
                Poll::Ready(Ok(Response::from_parts(parts, QuotaBody::inner(body))))
            }
            KindProj::Inspected { future } => future.as_mut().poll(cx),
        }
    }
}

async fn inspect<S, ReqB, ResB>(
    shared: Arc<Shared>,
    inner: S,
    matched: RouteMatch,
    request: Request<ReqB>,
) -> Result<Response<QuotaBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let route = matched.route;
    let (mut parts, body) = request.into_parts();
    let (body, verdict) = match read_body(&shared, &route, &parts, body).await {
        Ok(read) => read,
        Err(answer) => return Ok(local(answer)),
    };
    let mut flagged = match &verdict {
        FlagVerdict::NotFlagged => false,
        FlagVerdict::Flagged(_) => true,
        FlagVerdict::Unreadable(reason) => {
            tracing::debug!(route = %route.name, %reason, "unreadable body counts as flagged");
            true
        }
    };
    // The "session" a forced-image answer is remembered for: the probe's
    // path, or the request's own path on a route without a probe.
    let session = match &route.probe {
        Some(probe) => probe.path(&matched.params),
        None => parts.uri.path().to_owned(),
    };
    if !flagged && shared.probe_cache.get(&session) == Some(true) {
        flagged = true;
    }
    let identity = if flagged || route.probe.is_some() {
        Some(shared.identity.identify(&parts.headers).await)
    } else {
        None
    };
    if !flagged && let (Some(probe), Some(Ok(Some(who)))) = (&route.probe, &identity) {
        let key = ProbeCache::key(&session, &who.user_id);
        flagged = match shared.probe_cache.get(&key) {
            Some(forced) => forced,
            None => match Box::pin(probe.ask(inner.clone(), &session, &parts.headers)).await {
                ProbeAnswer::Forced => {
                    shared.probe_cache.put(key, true, probe.cache_ttl());
                    true
                }
                ProbeAnswer::NotForced => {
                    shared.probe_cache.put(key, false, probe.cache_ttl());
                    false
                }
                ProbeAnswer::Failed => true,
            },
        };
    }
    if let (Some(names), Some(Ok(Some(who)))) = (&shared.identity_headers, &identity)
        && set_identity_headers(&mut parts.headers, who, names).is_err()
    {
        tracing::warn!(route = %route.name, "verified identity cannot be sent as a header");
    }
    let ticket = match identity {
        Some(identity) if flagged => match admit(&shared, &route, identity).await {
            Ok(ticket) => ticket,
            Err(answer) => return Ok(local(answer)),
        },
        _ => {
            route.counters.request(Decision::Unflagged);
            Ticket::Unflagged {
                headers: parts.headers.clone(),
                session,
            }
        }
    };
    let request = Request::from_parts(parts, body);
    forward(shared, inner, route, request, ticket).await
}

/// Reads an inspected request's body, refusing more than `max_body_bytes`,
/// and judges its flag. An upload (`multipart/form-data`) is judged as it
/// streams and waits in a spool ([`spool::read`]); any other body is read
/// into memory, as it is parsed whole.
/// Reads a whole body of at most `max` bytes into one buffer: a body that
/// comes in one piece is kept as it is, a longer one is copied piece by
/// piece into a buffer sized by its `Content-Length` (`declared`), each piece
/// dropped once copied, so the body is held about once, never as pieces plus
/// a copy of them.
async fn read_whole<B>(body: B, max: u64, declared: Option<u64>) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| ReadError::Client(e.into()))?.into_data() else {
            continue; // trailers: not part of the bytes forwarded
        };
        total += data.len() as u64;
        if total > max {
            return Err(ReadError::TooLarge(max));
        }
        match (&mut joined, first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let capacity = declared.unwrap_or(total).max(total);
                let mut buffer = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
    }
    Ok(match (joined, first) {
        (Some(joined), _) => joined.freeze(),
        (None, first) => first.unwrap_or_default(),
    })
}

async fn read_body<B>(
    shared: &Shared,
    route: &Route,
    parts: &request::Parts,
    body: B,
) -> Result<(RequestBody<B>, FlagVerdict), Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let max = shared.max_body_bytes;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let query = parts.uri.query();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = if declared.is_some_and(|len| len > max) {
        Err(ReadError::TooLarge(max))
    } else if flag::is_multipart(content_type) {
        // Boxed, as is the probe below: uploads are the rare case, and their
        // state would otherwise size (and be moved with) every inspected
        // request's future.
        Box::pin(spool::read(body, max, &shared.spool, |feed| {
            flag::detect_stream(content_type, feed, query, &route.flag, &route.flag_rules)
        }))
        .await
        .map(|(body, verdict)| (RequestBody::spooled(body), verdict))
    } else {
        async {
            let bytes = read_whole(body, max, declared).await?;
            let verdict = flag::detect(
                content_type,
                bytes.clone(),
                query,
                &route.flag,
                &route.flag_rules,
            )
            .await;
            Ok((RequestBody::buffered(bytes), verdict))
        }
        .await
    };
    read.map_err(|e| match e {
        ReadError::TooLarge(_) => json_error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()),
        ReadError::Client(source) => {
            tracing::debug!(error = %source, "request body could not be read");
            json_error(StatusCode::BAD_REQUEST, "the request body could not be read")
        }
        ReadError::Spool(source) => {
            tracing::error!(route = %route.name, error = %source, "request body could not be spooled");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request body could not be stored",
            )
        }
    })
}

pub(super) fn local<B>(response: Response<Full<Bytes>>) -> Response<QuotaBody<B>> {
    response.map(QuotaBody::full)
}
