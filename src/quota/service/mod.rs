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
//! 2. **identify** the user and their limits (every request of the route);
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
use http::{Request, Response, request};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use super::body::{QuotaBody, RequestBody};
use super::deadline::ClientBody;
use super::future::{Kind, ResponseFuture, passthrough_response};
use super::pipeline;
use super::read::{declared_length, read_error_answer};
use super::request_id::{self, X_REQUEST_ID};
use super::routes::{
    host_of, join_cookie_crumbs, strip_underscore_names, trim_field_values, trim_wsgi_field_values,
};
use super::spans;
use super::spool::{self, ReadError};
use super::state::QuotaState;
use super::status;
use crate::BoxError;
use crate::config::RequestBuffering;
use crate::hop_by_hop;
use crate::identity::strip_client_headers;

/// Enforces quotas in front of `S`; made by [`super::QuotaLayer`].
pub struct Quota<S> {
    inner: S,
    current: Arc<ArcSwap<QuotaState>>,
}

impl<S> Quota<S> {
    pub(crate) fn new(inner: S, current: Arc<ArcSwap<QuotaState>>) -> Self {
        Self { inner, current }
    }
}

impl<S: Clone> Clone for Quota<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            current: Arc::clone(&self.current),
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
        // What ends at this hop never reaches the upstream: the request is
        // judged without it, first of all, or a client could name
        // `Content-Type` or the report token in `Connection` and have them
        // judged here but dropped on the way (tests/it/django, header/connection).
        hop_by_hop::strip_request_hop_by_hop(request.headers_mut());
        if request.version() == http::Version::HTTP_2 {
            // Each value as the upstream's HTTP/1 parser will read it: no
            // spaces or tabs around it (`routes/headers.rs`).
            trim_field_values(request.headers_mut());
            // One `Cookie`, as the identity call and the app must both read it.
            join_cookie_crumbs(request.headers_mut());
        }
        // The `Host` Django will see, for the identity call and the probe
        // too: without one, the proxy writes it from the target's authority
        // (HTTP/2's `:authority`, an HTTP/1 absolute-form target), and an
        // identity call without it failed `ALLOWED_HOSTS` at the client's
        // will (`tests/it/attack_identity.rs`).
        // The same `host[:port]` the forwarding writes (`routes::host_of`).
        if !request.headers().contains_key(http::header::HOST)
            && let Some(host) = request.uri().authority().and_then(host_of)
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        // The config this request lives by, even if a reload swaps it.
        let state = self.current.load_full();
        let request_id = request_id::ensure(request.headers_mut(), state.routing.trust_request_id);
        if let Some(names) = &state.routing.identity_headers {
            // Nothing downstream may believe an identity the client chose.
            strip_client_headers(request.headers_mut(), names);
        }
        // Nor a path prefix it chose (`SCRIPT_NAME`…): Django must route
        // the path the route is found from.
        state.routing.routing_headers.strip(request.headers_mut());
        // Only the proxy gives the upstream a report token (forward.rs).
        state
            .policy
            .reports
            .strip_client_token(request.headers_mut());
        if state.routing.status_path.as_deref() == Some(request.uri().path()) {
            let future = Box::pin(status::respond(state, request));
            let kind = Kind::Inspected { future };
            return ResponseFuture { kind, request_id };
        }
        // Django reads the method upper-cased (`WSGIRequest`), and gunicorn
        // 21 (the chat app's) lets `POSt` through as `POST` (`METH_RE.match`
        // checks three characters): such a request is the route's, judged as
        // its method and forwarded as sent, for the server to take or refuse
        // (`tests/it/attack_app_stack.rs`).
        let found = state
            .routing
            .routes
            .find(request.method(), request.uri().path())
            .or_else(|| {
                let upper = upper_method(request.method())?;
                state.routing.routes.find(&upper, request.uri().path())
            });
        let Some(matched) = found else {
            state.deps.passthrough.increment(1);
            let (parts, body) = request.into_parts();
            if state.limits.request_buffering == RequestBuffering::All && !body.is_end_stream() {
                // Received whole before the upstream is called (boxed: the
                // spool's state would otherwise size every pass-through).
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                return ResponseFuture {
                    kind: Kind::Inspected {
                        future: Box::pin(buffered_passthrough(state, inner, parts, body)),
                    },
                    request_id,
                };
            }
            // A cheap copy (shared bytes): the report warning names the path.
            let uri = parts.uri.clone();
            let body = RequestBody::streaming(body, state.limits.client_body);
            let future = self.inner.call(Request::from_parts(parts, body));
            return ResponseFuture {
                kind: Kind::Passthrough { future, state, uri },
                request_id,
            };
        };
        // Judged as Django will read it: a WSGI server may merge a name
        // holding `_` into the `-` one (`routes/headers.rs`).
        strip_underscore_names(request.headers_mut());
        // And each value as the WSGI server trims it (gunicorn 21: NBSP too).
        trim_wsgi_field_values(request.headers_mut());
        let span = spans::request(&request, &matched.route.name, &request_id);
        // The ready service goes into the task; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let future = spans::traced(span, pipeline::inspect(state, inner, matched, request));
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
    state: Arc<QuotaState>,
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
    let max = state.limits.max_body_bytes;
    let read = if declared_length(&parts).is_some_and(|len| len > max) {
        Err(ReadError::TooLarge(max))
    } else {
        let body = ClientBody::new(body, state.limits.client_body);
        spool::read(
            body,
            max,
            &state.limits.spool,
            state.limits.hold_body(&parts),
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
    Ok(passthrough_response(&state, response, &path, &id))
}

/// `method` upper-cased, when it has a lower-case letter (hyper keeps any
/// token as it came; Django upper-cases what the WSGI server hands it).
fn upper_method(method: &http::Method) -> Option<http::Method> {
    let bytes = method.as_str().as_bytes();
    if !bytes.iter().any(u8::is_ascii_lowercase) {
        return None;
    }
    http::Method::from_bytes(&bytes.to_ascii_uppercase()).ok()
}

pub(super) fn local<B>(response: Response<Full<Bytes>>) -> Response<QuotaBody<B>> {
    response.map(QuotaBody::full)
}
