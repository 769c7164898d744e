//! [`Quota`]: the service the layer makes, and the life of an inspected
//! request; its response future is in `future.rs`.
//!
//! A request on a route that is not inspected is handed to the inner service
//! as it is: no body read, no store call, no allocation beyond the inner
//! service's own. An inspected request goes through `pipeline.rs`, phase by
//! phase (the names are the crate's, see `lib.rs`):
//!
//! 1. **classify**: the route is matched (`routes/`); the body is read, up
//!    to `max_body_bytes` (413 beyond), into memory or for an upload
//!    (`multipart/form-data`) into a spool, memory then a temporary file,
//!    while it is flagged as it streams ([`crate::flag::detect`]), as the
//!    backend will decide. A body the proxy cannot be sure about counts as
//!    asking; a body the backend refuses while parsing (`Rejected`) is
//!    forwarded unreserved and unprobed, as it cannot generate. A route's
//!    probe may force the rest (an image-editing session, `probe.rs`);
//! 2. **identify** the user and their limits (flagged requests, and probes);
//! 3. **admit**: reserve one unit in the store, atomically against all three
//!    limits, or answer the denial (`admit.rs`);
//! 4. **forward** the exact bytes to the inner service; the call and its
//!    accounting move to a task of their own if the client disconnects, so
//!    a disconnect cannot cancel the accounting (`forward.rs`);
//! 5. **report**: the saved-images header, JSON field, or in-band report of
//!    a streamed body (`usage_body.rs`);
//! 6. **settle** the reservation into usage, or release it (`settle.rs`).

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header, request};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::Service;

use super::body::{QuotaBody, RequestBody};
use super::budget::{BUDGET_RETRY_AFTER, BodyBudget, Held, HeldBytes};
use super::deadline::ClientBody;
use super::future::{Kind, ResponseFuture, passthrough_response};
use super::pipeline;
use super::request_id::{self, X_REQUEST_ID};
use super::spans;
use super::spool::{self, ReadError};
use super::state::QuotaState;
use super::status;
use crate::BoxError;
use crate::config::RequestBuffering;
use crate::flag::{self, FlagVerdict};
use crate::identity::strip_client_headers;
use crate::quota::routes::Route;
use crate::response::json_error;

/// Enforces quotas in front of `S`; made by [`super::QuotaLayer`].
pub struct Quota<S> {
    inner: S,
    shared: Arc<ArcSwap<QuotaState>>,
}

impl<S> Quota<S> {
    pub(crate) fn new(inner: S, shared: Arc<ArcSwap<QuotaState>>) -> Self {
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
        let request_id = request_id::ensure(request.headers_mut(), shared.trust_request_id);
        if let Some(names) = &shared.identity_headers {
            // Nothing downstream may believe an identity the client chose.
            strip_client_headers(request.headers_mut(), names);
        }
        // Nor a path prefix it chose (`SCRIPT_NAME`…): Django must route
        // the path the route is found from.
        shared.routing_headers.strip(request.headers_mut());
        // Only the proxy gives the upstream a report token (forward.rs).
        shared.reports.strip_client_token(request.headers_mut());
        if shared.status_path.as_deref() == Some(request.uri().path()) {
            let future = Box::pin(status::respond(shared, request));
            let kind = Kind::Inspected { future };
            return ResponseFuture { kind, request_id };
        }
        let Some(matched) = shared.routes.find(request.method(), request.uri().path()) else {
            shared.passthrough.increment(1);
            let (parts, body) = request.into_parts();
            if shared.request_buffering == RequestBuffering::All && !body.is_end_stream() {
                // Received whole before the upstream is called (boxed: the
                // spool's state would otherwise size every pass-through).
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                return ResponseFuture {
                    kind: Kind::Inspected {
                        future: Box::pin(buffered_passthrough(shared, inner, parts, body)),
                    },
                    request_id,
                };
            }
            // A cheap copy (shared bytes): the report warning names the path.
            let uri = parts.uri.clone();
            let body = RequestBody::streaming(body, shared.client_body);
            let future = self.inner.call(Request::from_parts(parts, body));
            return ResponseFuture {
                kind: Kind::Passthrough {
                    future,
                    shared,
                    uri,
                },
                request_id,
            };
        };
        let span = spans::request(&request, &matched.route.name, &request_id);
        // The ready service goes into the task; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let future = spans::traced(span, pipeline::inspect(shared, inner, matched, request));
        ResponseFuture {
            kind: Kind::Inspected {
                future: Box::pin(future),
            },
            request_id,
        }
    }
}

/// A request on no inspected route under `request_buffering = "all"`: its
/// body is received whole (memory, then the spool; within `max_body_bytes`,
/// the body budget and the client-body deadline) before the upstream is
/// called, so a slow client never holds an upstream worker.
async fn buffered_passthrough<S, ReqB, ResB>(
    shared: Arc<QuotaState>,
    mut inner: S,
    parts: request::Parts,
    body: ReqB,
) -> Result<Response<QuotaBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
{
    // For the report warning, as the parts move on with the request.
    let path = parts.uri.path().to_owned();
    let id = parts
        .headers
        .get(&X_REQUEST_ID)
        .cloned()
        .unwrap_or(http::HeaderValue::from_static("-"));
    let max = shared.max_body_bytes;
    let read = if declared_length(&parts).is_some_and(|len| len > max) {
        Err(ReadError::TooLarge(max))
    } else {
        let body = ClientBody::new(body, shared.client_body);
        spool::read(
            body,
            max,
            &shared.spool,
            &shared.budget,
            |feed| async move {
                // Nothing to judge: the feed is dropped and only the spool reads.
                drop(feed);
            },
        )
        .await
    };
    let body = match read {
        Ok((body, ())) => body,
        Err(e) => return Ok(local(read_error_answer(e, "(not inspected)"))),
    };
    let response = inner
        .call(Request::from_parts(parts, RequestBody::spooled(body)))
        .await?;
    Ok(passthrough_response(&shared, response, &path, &id))
}

/// Reads a whole body of at most `max` bytes into one buffer, its bytes
/// taken from `budget` as they come: a body that comes in one piece is kept
/// as it is; a longer one is copied piece by piece into one buffer, each
/// piece dropped once copied, so the body is held about once, never as
/// pieces plus a copy of them.
///
/// The buffer grows as bytes arrive, doubling, never past `declared` (the
/// `Content-Length`) or `max`: an honest length gets a buffer of exactly
/// its size, a false one gets no more than twice what was really sent.
async fn read_whole<B>(
    body: B,
    max: u64,
    declared: Option<u64>,
    budget: &BodyBudget,
) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut held = budget.hold();
    let mut first: Option<Bytes> = None;
    let mut joined: Option<Vec<u8>> = None;
    let mut total: u64 = 0;
    let ceiling = usize::try_from(declared.unwrap_or(max).min(max)).unwrap_or(usize::MAX);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|e| ReadError::client(e.into()))?.into_data() else {
            continue; // trailers: not part of the bytes forwarded
        };
        total = total.saturating_add(data.len() as u64);
        if total > max {
            return Err(ReadError::TooLarge(max));
        }
        match (&mut joined, first.take()) {
            (Some(buffer), _) => {
                grow(buffer, data.len(), ceiling, &mut held).await?;
                buffer.extend_from_slice(&data);
            }
            (None, None) => {
                held.grow(data.len()).await?;
                first = Some(data);
            }
            (None, Some(earlier)) => {
                let mut buffer = Vec::new();
                grow(&mut buffer, earlier.len() + data.len(), ceiling, &mut held).await?;
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&data);
                held.release(earlier.len());
                joined = Some(buffer);
            }
        }
    }
    Ok(match (joined, first) {
        (Some(buffer), _) => Bytes::from_owner(HeldBytes {
            bytes: buffer,
            _held: held,
        }),
        (None, Some(first)) => Bytes::from_owner(HeldBytes {
            bytes: first,
            _held: held,
        }),
        (None, None) => Bytes::new(),
    })
}

/// Makes room in `buffer` for `more` bytes: doubling its capacity, never
/// past `ceiling` unless the bytes need it, the growth taken from `held`.
async fn grow(
    buffer: &mut Vec<u8>,
    more: usize,
    ceiling: usize,
    held: &mut Held,
) -> Result<(), ReadError> {
    let needed = buffer.len().saturating_add(more);
    if needed <= buffer.capacity() {
        return Ok(());
    }
    let target = needed
        .max(buffer.capacity().saturating_mul(2))
        .min(ceiling.max(needed));
    held.grow(target - buffer.capacity()).await?;
    buffer.reserve_exact(target - buffer.len());
    Ok(())
}

/// The request's `Content-Length`, when it has a valid one.
fn declared_length(parts: &request::Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads an inspected request's body, refusing more than `max_body_bytes`,
/// and judges its flag. An upload (`multipart/form-data`) is judged as it
/// streams and waits in a spool ([`spool::read`]); any other body is read
/// into memory, as it is parsed whole. Either way, under the client-body
/// deadline and within the body budget.
pub(super) async fn read_body<B>(
    shared: &QuotaState,
    route: &Route,
    parts: &request::Parts,
    body: B,
) -> Result<(RequestBody<B>, FlagVerdict), Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let max = shared.max_body_bytes;
    // As the WSGI server gives it: header bytes read as Latin-1. With
    // several `Content-Type` lines servers differ (gunicorn keeps the last),
    // so such a request counts (`several`).
    let mut types = parts.headers.get_all(header::CONTENT_TYPE).iter();
    let content_type = types.next().map(|v| match v.to_str() {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => v.as_bytes().iter().map(|&b| char::from(b)).collect(),
    });
    let several = types.next().is_some();
    let content_type = content_type.as_deref();
    let query = parts.uri.query();
    let declared = declared_length(parts);
    let body = ClientBody::new(body, shared.client_body);
    let read = if declared.is_some_and(|len| len > max) {
        Err(ReadError::TooLarge(max))
    } else if flag::is_multipart(content_type, &route.flag_rules) {
        // Boxed, as is the probe below: uploads are the rare case, and their
        // state would otherwise size (and be moved with) every inspected
        // request's future.
        Box::pin(spool::read(
            body,
            max,
            &shared.spool,
            &shared.budget,
            |feed| flag::detect_stream(content_type, feed, query, &route.flag, &route.flag_rules),
        ))
        .await
        .map(|(body, verdict)| (RequestBody::spooled(body), verdict))
    } else {
        async {
            let bytes = read_whole(body, max, declared, &shared.budget).await?;
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
    let read = read.map(|(body, verdict)| match verdict {
        verdict if several && !matches!(verdict, FlagVerdict::Flagged(_)) => (
            body,
            FlagVerdict::Unreadable("several Content-Type headers".to_owned()),
        ),
        verdict => (body, verdict),
    });
    read.map_err(|e| read_error_answer(e, &route.name))
}

/// The answer to a body that could not be read. A body left unread (too
/// slow, no room for it) closes its connection: the rest of it is never
/// read, so the connection cannot carry another request.
fn read_error_answer(error: ReadError, route: &str) -> Response<Full<Bytes>> {
    let closing = |mut answer: Response<Full<Bytes>>| {
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        answer
    };
    match error {
        ReadError::TooLarge(_) => json_error(StatusCode::PAYLOAD_TOO_LARGE, &error.to_string()),
        ReadError::Client(source) => {
            tracing::debug!(error = %source, "request body could not be read");
            json_error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
        ReadError::Timeout(timeout) => {
            tracing::info!(%route, error = %timeout, "request body too slow; closing the connection");
            metrics::counter!("quota_proxy_client_body_timeouts_total").increment(1);
            closing(json_error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ))
        }
        ReadError::Busy(full) => {
            tracing::warn!(%route, error = %full, "no room for a request body; answering 503");
            let mut answer = closing(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the proxy is busy receiving other requests; try again shortly",
            ));
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(BUDGET_RETRY_AFTER));
            answer
        }
        ReadError::Spool(source) => {
            tracing::error!(%route, error = %source, "request body could not be spooled");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request body could not be stored",
            )
        }
    }
}

pub(super) fn local<B>(response: Response<Full<Bytes>>) -> Response<QuotaBody<B>> {
    response.map(QuotaBody::full)
}

#[cfg(test)]
mod tests;
