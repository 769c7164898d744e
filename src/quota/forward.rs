//! Forwarding and accounting (phases: upstream, report, settle): the
//! request goes on, and its answer is read for a usage report and settled —
//! as the answer is handed to the client, or when its streamed body ends.
//! The accounting moves to a task of its own whenever the client's side
//! stops waiting for it.
//!
//! Every request forwarded here carries a fresh [`ReportToken`] to the
//! upstream in `usage.report_token_header` (the client's own header of
//! that name was removed on arrival, `service.rs`); only in-band reports
//! that carry it back count.
//!
//! The client does not wait for a settle that waits on the store (Redis):
//! until it lands the reservation is still live and counts against the
//! limits, so a next request cannot slip past them, and the settle's round
//! trip stays off the response's latency.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tokio::sync::oneshot;
use tower::Service;
use tracing::Instrument;

use super::body::{QuotaBody, RequestBody};
use super::ratelimit;
use super::service::local;
use super::settle::{Settlement, Ticket};
use super::spans;
use super::state::QuotaState;
use super::usage_body::UsageBody;
use crate::BoxError;
use crate::quota::routes::Route;
use crate::report::{JsonBody, ReportToken, StreamReport, UsageReport};
use crate::response::json_error;

/// Sends the request on and waits for the accounted answer. The
/// accounting (the upstream's answer, its report, the settle) runs in this
/// request's own future and goes on in a task of its own ([`Accounting`])
/// when that future ends first: the client went away, or the answer is out
/// and the settle waits for the store. A store that answers at once (the
/// memory store) settles in place and needs no task.
pub(super) async fn forward<S, ReqB, ResB>(
    state: Arc<QuotaState>,
    mut inner: S,
    route: Arc<Route>,
    mut request: Request<RequestBody<ReqB>>,
    ticket: Ticket,
) -> Result<Response<QuotaBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let (answer_tx, mut answer_rx) = oneshot::channel();
    let request_id = request
        .headers()
        .get(&super::request_id::X_REQUEST_ID)
        .cloned();
    // The answer must reach the report reader as the upstream wrote it: a
    // compressed stream (Django's GZipMiddleware compresses streamed
    // answers for a client that accepts gzip) would hide an in-band report
    // from it, and the images would go uncounted (tests/it/django,
    // a_gzipped_report_still_counts). Inspected routes are asked for
    // answers without a content coding.
    request.headers_mut().remove(header::ACCEPT_ENCODING);
    let token = state.policy.reports.token_header().map(|name| {
        let token = ReportToken::generate();
        request
            .headers_mut()
            .insert(name.clone(), token.header_value());
        token
    });
    // `service.rs` runs this in the request's span; the upstream gets the
    // trace context of the `upstream` call (when traces are on).
    let span = tracing::Span::current();
    let phase = spans::forward();
    let upstream = spans::upstream(&phase, request.method());
    spans::inject(&upstream, request.headers_mut());
    let future = inner.call(request);
    // Made before the accounting starts, so shutdown sees it pending.
    let settlement = Settlement::new(state, route, ticket, request_id, span);
    let mut accounting = Accounting::new(async move {
        // The settlement holds its reservation (`hold.rs`) until settled:
        // a generation slower than the reservation's TTL keeps it.
        let answering = future.instrument(upstream.clone());
        let answer = tokio::select! {
            biased;
            answer = answering => Some(answer),
            () = settlement.state.deps.settlements.cut_signal() => None,
        };
        let Some(answer) = answer else {
            // Shutdown's grace ended before the upstream answered: the
            // view may be saving an image now (a JSON API answers once it
            // has). Settled as an answer cut mid-stream is: one image for
            // a flagged request (fail closed), before the process exits.
            let flagged = !matches!(settlement.ticket, Ticket::Unflagged { .. });
            tracing::warn!(route = %settlement.route.name, flagged,
                "shutdown's grace ended before the upstream answered; settling as cut");
            if let Some(rest) = settlement.settle(flagged.then_some(UsageReport::images(1))) {
                rest.await;
            }
            return;
        };
        spans::answered(upstream, &answer);
        let (result, settle) = match answer {
            Ok(response) => {
                let (response, settle) = match account(settlement, response, token) {
                    Accounted::Now(response, settle) => (response, settle),
                    Accounted::ReadJson(settlement, parts, body) => {
                        read_json(settlement, parts, body).await
                    }
                };
                (Ok(response), settle)
            }
            Err(e) => (Err(e), Some((settlement, None))),
        };
        // The client may be gone; the accounting goes on either way.
        let _ = answer_tx.send(result);
        if let Some(rest) = settle.and_then(|(settlement, images)| settlement.settle(images)) {
            rest.await;
        }
    });
    let answer = std::future::poll_fn(|cx| {
        let done = accounting.poll_step(cx);
        match answer_rx.try_recv() {
            Ok(result) => Poll::Ready(Some(result)),
            Err(oneshot::error::TryRecvError::Empty) if !done => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    })
    .instrument(phase)
    .await;
    // Whatever is left (a settle waiting for Redis) goes on in a task.
    drop(accounting);
    match answer {
        Some(result) => result,
        None => Ok(local(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request failed inside the proxy",
        ))),
    }
}

/// The accounting of one request, driven by the request's future while it
/// lives and handed to a task of its own when it is dropped unfinished, so
/// a client that goes away cannot cancel it.
struct Accounting(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Accounting {
    fn new(work: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(Some(Box::pin(work)))
    }

    /// Polls the work once; true once it is finished.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(work) = &mut self.0
            && work.as_mut().poll(cx).is_ready()
        {
            self.0 = None;
        }
        self.0.is_none()
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let Some(work) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(work);
            }
            // Only when the runtime itself is going away; its tasks are
            // dropped too.
            Err(_) => tracing::warn!("runtime gone: a request's accounting is dropped"),
        }
    }
}

/// What is left to settle once the answer is out: the settlement and the
/// images reported. `None` when a streamed body settles at its end.
type SettleNext = Option<(Settlement, Option<UsageReport>)>;

/// What [`account`] made of an answer: the answer to hand on, or a small
/// JSON body to read first ([`read_json`]).
enum Accounted<B> {
    /// The answer to hand on, and what is left to settle once it is out.
    Now(Response<QuotaBody<B>>, SettleNext),
    /// An answer whose small JSON body carries the report: its head and body.
    ReadJson(Settlement, http::response::Parts, B),
}

/// Reads the upstream's report from a response: from its head (header), its
/// small JSON body (read by the caller), or nothing that could report —
/// settled by the caller once the answer is out — or when the streamed body
/// ends (in-band markers, SSE events, trailers). Synchronous, so the
/// common answers cost the accounting no future of their own.
fn account<B>(
    mut settlement: Settlement,
    response: Response<B>,
    token: Option<ReportToken>,
) -> Accounted<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let state = Arc::clone(&settlement.state);
    let (mut parts, body) = response.into_parts();
    settlement.status = Some(parts.status);
    let standing = match &settlement.ticket {
        Ticket::Reserved {
            reservation,
            identity,
            counts,
        } => Some((identity, counts, &reservation.windows)),
        Ticket::ShadowDenied {
            identity,
            counts,
            windows,
            ..
        } => Some((identity, counts, windows)),
        _ => None,
    };
    if let Some((identity, counts, windows)) = standing {
        ratelimit::insert(
            &mut parts.headers,
            &identity.limits,
            counts,
            windows,
            state.deps.clock.now(),
        );
    }
    if let Some(images) = state.policy.reports.take_header(&mut parts.headers) {
        // A stream may still report at its end (the larger count wins); a
        // compressed or JSON body is not read past the header.
        // Trailers alone do not: the header's count stands, no watch.
        let reports = &state.policy.reports;
        let watched = (reports.body_data_can_report(&parts.headers)
            && reports.coding(&parts.headers).is_none()
            && reports.json_body(&parts.headers) == JsonBody::None)
            .then(|| reports.stream_report(&parts.headers, token))
            .flatten();
        return match watched {
            Some(report) => {
                let (response, settle) =
                    watch(parts, body, report.with_header(images), settlement, &state);
                Accounted::Now(response, settle)
            }
            None => {
                // A header of 0 sent with the head does not vouch for data
                // that may report at its end and cannot be read (compressed
                // unasked): fail closed, as without the header.
                let report = if images.images == 0
                    && reports.body_data_can_report(&parts.headers)
                    && reports.coding(&parts.headers).is_some()
                {
                    settlement.unreadable(None, "its body is compressed; its header said 0")
                } else {
                    Some(images)
                };
                let response = Response::from_parts(parts, QuotaBody::inner(body));
                Accounted::Now(response, Some((settlement, report)))
            }
        };
    }
    if let Some(coding) = state.policy.reports.coding(&parts.headers) {
        // Asked for none (`forward` removed `Accept-Encoding`), the upstream
        // compressed anyway: a report in the body cannot be read.
        tracing::warn!(route = %settlement.route.name, content_encoding = ?coding,
            "compressed answer on an inspected route; disable the upstream's compression there");
        let report = settlement.unreadable(None, "its body is compressed");
        let response = Response::from_parts(parts, QuotaBody::inner(body));
        return Accounted::Now(response, Some((settlement, report)));
    }
    match state.policy.reports.json_body(&parts.headers) {
        JsonBody::Read => return Accounted::ReadJson(settlement, parts, body),
        JsonBody::Unread => {
            // Streamed on unread (over `usage.max_json_bytes`, or no declared
            // length); a report field in it would go unseen, and an app
            // that echoes the user's message lets the user make it long.
            let report = settlement.unreadable(
                None,
                "its JSON body is over usage.max_json_bytes or declares no length",
            );
            let response = Response::from_parts(parts, QuotaBody::inner(body));
            return Accounted::Now(response, Some((settlement, report)));
        }
        JsonBody::None => {}
    }
    let (response, settle) = match state.policy.reports.stream_report(&parts.headers, token) {
        Some(report) => watch(parts, body, report, settlement, &state),
        None => (
            Response::from_parts(parts, QuotaBody::inner(body)),
            Some((settlement, None)),
        ),
    };
    Accounted::Now(response, settle)
}

/// Reads an answer's small JSON body for its report (`usage.max_json_bytes`
/// at most) and hands the body on as read.
async fn read_json<B>(
    settlement: Settlement,
    parts: http::response::Parts,
    body: B,
) -> (Response<QuotaBody<B>>, SettleNext)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let state = &settlement.state;
    let limit = usize::try_from(state.limits.max_json_bytes).unwrap_or(usize::MAX);
    // A JSON body slower than the reservation's TTL keeps it: the
    // settlement holds it.
    let collected = Limited::new(body, limit).collect().await;
    match collected {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            let images = state.policy.reports.read_json(&bytes);
            let response = Response::from_parts(parts, QuotaBody::local(bytes));
            (response, Some((settlement, images)))
        }
        Err(e) => {
            tracing::warn!(route = %settlement.route.name, error = %e,
                "upstream JSON response failed");
            // The view ran to its end before its answer was sent:
            // charged by the upstream's status, not the client's 502.
            let report = settlement.unreadable(None, "its JSON body failed mid-read");
            let response = local(json_error(
                StatusCode::BAD_GATEWAY,
                "the upstream response failed",
            ));
            (response, Some((settlement, report)))
        }
    }
}

/// The answer with its body watched for in-band reports, settled at its end.
fn watch<ResB>(
    mut parts: http::response::Parts,
    body: ResB,
    report: StreamReport,
    settlement: Settlement,
    state: &QuotaState,
) -> (Response<QuotaBody<ResB>>, SettleNext)
where
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if state.policy.reports.strips_markers() {
        // Cutting a marker changes the length.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let body = UsageBody::new(body, report, settlement);
    (Response::from_parts(parts, QuotaBody::watched(body)), None)
}
