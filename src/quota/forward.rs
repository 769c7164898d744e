//! Forwarding and accounting (phases: upstream, report, settle): the
//! request goes on in a task of its own, and its answer is read for a usage
//! report and settled — at once, or when its streamed body ends.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tokio::sync::oneshot;
use tower::Service;

use super::body::{QuotaBody, RequestBody};
use super::layer::Shared;
use super::ratelimit;
use super::service::local;
use super::settle::{Settlement, Ticket};
use super::usage_body::UsageBody;
use crate::error::json_error;
use crate::routes::Route;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Sends the request on in a task of its own and waits for the accounted
/// answer. The task outlives a client that goes away, so the upstream's
/// answer is still read and the reservation still settled.
pub(super) async fn forward<S, ReqB, ResB>(
    shared: Arc<Shared>,
    mut inner: S,
    route: Arc<Route>,
    request: Request<RequestBody<ReqB>>,
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
    let (answer_tx, answer_rx) = oneshot::channel();
    let future = inner.call(request);
    // Made before the task, so shutdown sees it pending from the start.
    let settlement = Settlement::new(shared, route, ticket);
    tokio::spawn(async move {
        let result = match future.await {
            Ok(response) => Ok(account(settlement, response).await),
            Err(e) => {
                settlement.settle(None).await;
                Err(e)
            }
        };
        // The client may be gone; the accounting is done or under way.
        let _ = answer_tx.send(result);
    });
    match answer_rx.await {
        Ok(result) => result,
        Err(_) => Ok(local(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the request failed inside the proxy",
        ))),
    }
}

/// Reads the upstream's report from a response and settles, now (header,
/// small JSON body, or nothing that could report) or when the streamed body
/// ends (in-band markers, SSE events, trailers).
async fn account<B>(mut settlement: Settlement, response: Response<B>) -> Response<QuotaBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let shared = Arc::clone(&settlement.shared);
    let (mut parts, body) = response.into_parts();
    settlement.status = Some(parts.status);
    if let Ticket::Reserved {
        reservation,
        identity,
        counts,
    } = &settlement.ticket
    {
        ratelimit::insert(
            &mut parts.headers,
            &identity.limits,
            counts,
            &reservation.windows,
            shared.clock.now(),
        );
    }
    if let Some(images) = shared.reports.take_header(&mut parts.headers) {
        settlement.settle(Some(images)).await;
        return Response::from_parts(parts, QuotaBody::inner(body));
    }
    if shared.reports.wants_json_body(&parts.headers) {
        let limit = usize::try_from(shared.max_json_bytes).unwrap_or(usize::MAX);
        return match Limited::new(body, limit).collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                settlement.settle(shared.reports.read_json(&bytes)).await;
                Response::from_parts(parts, QuotaBody::local(bytes))
            }
            Err(e) => {
                tracing::warn!(route = %settlement.route.name, error = %e,
                    "upstream JSON response failed");
                settlement.status = Some(StatusCode::BAD_GATEWAY);
                settlement.settle(None).await;
                local(json_error(
                    StatusCode::BAD_GATEWAY,
                    "the upstream response failed",
                ))
            }
        };
    }
    match shared.reports.stream_report(&parts.headers) {
        Some(report) => {
            if shared.reports.strips_markers() {
                // Cutting a marker changes the length.
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            let body = UsageBody::new(body, report, settlement);
            Response::from_parts(parts, QuotaBody::watched(body))
        }
        None => {
            settlement.settle(None).await;
            Response::from_parts(parts, QuotaBody::inner(body))
        }
    }
}
