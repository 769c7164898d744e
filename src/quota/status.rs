//! The quota-status endpoint (`[status] path`; phases: identify, then one
//! store read): a signed-in user asks how much they have left, and the
//! proxy answers for the caller's verified identity, with the same identity
//! source as flagged requests. Never forwarded; one store round trip
//! ([`crate::store::QuotaStore::usage`]), no writes.
//!
//! ```json
//! {"user_id": "7", "plan": "free", "shadow": false, "periods": [
//!   {"period": "daily", "limit": 3, "used": 1, "reserved": 0,
//!    "remaining": 2, "resets_at": "2026-12-05T00:00:00+03:30"}, …]}
//! ```
//!
//! `limit` and `remaining` are `null` for an unlimited period; `resets_at`
//! is the end of the period in `periods.timezone` (Persian months under
//! `periods.calendar = "persian"`). Anonymous → 401, identity source or
//! store failing → 503 with `Retry-After`, credentials refused as on a
//! flagged request → 401 (naming no single user) or 500 (a genuine one the
//! config cannot read), a method other than GET or HEAD → 405; every
//! answer is JSON with `Cache-Control: no-store`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use super::admit::refused_identity;
use super::body::QuotaBody;
use super::request_id::{self, X_REQUEST_ID};
use super::service::local;
use super::state::QuotaState;
use crate::identity::IdentityError;
use crate::periods::Period;
use crate::response::{json_error, json_response};
use crate::store::PeriodUsage;

/// Seconds a client is asked to wait when the identity source or the store
/// cannot answer.
const RETRY_AFTER: u32 = 5;

/// Answers a request on the status path; its body is not read.
pub(super) async fn respond<ReqB, ResB, E>(
    state: Arc<QuotaState>,
    request: Request<ReqB>,
) -> Result<Response<QuotaBody<ResB>>, E> {
    let (parts, _body) = request.into_parts();
    Ok(local(answer(&state, &parts.method, &parts.headers).await))
}

/// The answer to `method` on the status path.
async fn answer(state: &QuotaState, method: &Method, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let mut answer = if method == Method::GET || method == Method::HEAD {
        status(state, headers).await
    } else {
        let mut refused = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "the quota status is read with GET",
        );
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        refused
    };
    answer
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if method == Method::HEAD {
        *answer.body_mut() = Full::default();
    }
    answer
}

async fn status(state: &QuotaState, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let request_id = headers.get(&X_REQUEST_ID).map_or("-", request_id::as_str);
    let identity = match state.deps.identity.identify(headers).await {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            return json_error(StatusCode::UNAUTHORIZED, "sign in to see your image quota");
        }
        Err(e) => {
            if matches!(e, IdentityError::Unreadable(_)) {
                // The operators' to fix, as on a flagged request (`admit.rs`).
                tracing::error!(error = %e, request_id,
                    "quota status: a genuine credential the identity config cannot read (fix [identity])");
            } else {
                tracing::warn!(error = %e, request_id, "quota status: cannot identify the user");
            }
            return refused_identity(&e).unwrap_or_else(|| {
                unavailable("the user cannot be identified right now; try again shortly")
            });
        }
    };
    let now = state.deps.clock.now();
    let windows = state.deps.calendar.windows(now);
    let usage = match state
        .deps
        .store
        .usage(&identity.user_id, &windows, now)
        .await
    {
        Ok(usage) => usage,
        Err(e) => {
            tracing::warn!(user = %identity.user_id, error = %e, request_id,
                "quota status: the store cannot answer");
            return unavailable("the image quota cannot be read right now; try again shortly");
        }
    };
    let tz = state.deps.calendar.timezone();
    let periods: Vec<_> = Period::ALL
        .into_iter()
        .map(|period| {
            let PeriodUsage { used, reserved } = usage[period as usize];
            let limit = Some(identity.limits.of(period)).filter(|&l| l > 0);
            json!({
                "period": period.as_str(),
                "limit": limit,
                "used": used,
                "reserved": reserved,
                "remaining": limit.map(|l| l.saturating_sub(used.saturating_add(reserved))),
                "resets_at": windows.get(period).end.with_timezone(&tz).to_rfc3339(),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "user_id": identity.user_id,
            "plan": identity.plan.as_deref(),
            "shadow": state.policy.shadow.of_user(identity.plan.as_deref()),
            "periods": periods,
        }),
    )
}

fn unavailable(message: &str) -> Response<Full<Bytes>> {
    let mut answer = json_error(StatusCode::SERVICE_UNAVAILABLE, message);
    answer
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER));
    answer
}
