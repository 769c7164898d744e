//! Admission (phase: reserve): a flagged request's user reserves one unit
//! in the store, or is forwarded over the limit in shadow mode
//! (`shadow.rs`), or gets the answer to send instead — the denial, 401 for
//! an anonymous caller under `anonymous = "deny"`, 503 when the identity
//! source or the store cannot answer and the policy says deny.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use tracing::Instrument;

use super::denial::Denial;
use super::ratelimit;
use super::request_id::{self, X_REQUEST_ID};
use super::settle::Ticket;
use super::spans::{self, decided};
use super::standing::Standing;
use super::state::QuotaState;
use crate::config::{AnonymousPolicy, IdentityErrorPolicy, StoreErrorPolicy};
use crate::decision::Decision;
use crate::identity::{Identity, IdentityError};
use crate::quota::routes::Route;
use crate::response::json_error;
use crate::store::{Admission, ReserveRequest};

/// The answer to a request whose identity error no retry mends, whatever
/// `on_identity_error` says: 401 for credentials that name no single user
/// (the client's to change), 500 for a genuine one the config cannot read
/// (the operators' to fix); `None` for an outage of the identity source.
pub(super) fn refused_identity(error: &IdentityError) -> Option<Response<Full<Bytes>>> {
    match error {
        IdentityError::Ambiguous(_) => Some(json_error(
            StatusCode::UNAUTHORIZED,
            "the request carries credentials that do not name one user (a session and a \
             token that disagree, or a token that is not valid): send only one",
        )),
        IdentityError::Unreadable(_) => Some(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the quota cannot be checked for this credential; the site's operators must fix \
             the quota proxy's identity settings",
        )),
        IdentityError::Unavailable(_) => None,
    }
}

/// Seconds a client is asked to wait when the store cannot answer.
const STORE_ERROR_RETRY_AFTER: u32 = 5;
/// Reserves one unit for the user of a flagged request, or returns the
/// answer to send instead (denial, 401, 503), in the `admit` span.
/// `headers` are the request's: its `X-Request-Id` for the log lines, and
/// where a request forwarded in shadow mode gets `shadow_header`.
pub(super) fn admit<'a>(
    state: &'a QuotaState,
    route: &'a Route,
    identity: Result<Option<Identity>, IdentityError>,
    headers: &'a mut HeaderMap,
) -> impl Future<Output = Result<Ticket, Response<Full<Bytes>>>> + 'a {
    decide(state, route, identity, headers).instrument(spans::admit())
}

async fn decide(
    state: &QuotaState,
    route: &Route,
    identity: Result<Option<Identity>, IdentityError>,
    headers: &mut HeaderMap,
) -> Result<Ticket, Response<Full<Bytes>>> {
    let request_id = headers.get(&X_REQUEST_ID).map_or("-", request_id::as_str);
    let identity = match identity {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            return match state.policy.anonymous {
                AnonymousPolicy::Forward => {
                    route.counters.request(Decision::Anonymous);
                    decided(Decision::Anonymous);
                    Ok(Ticket::Unreserved {
                        identity: None,
                        decision: Decision::Anonymous,
                    })
                }
                AnonymousPolicy::Deny => {
                    let decision = Decision::AnonymousDenied;
                    route.counters.request(decision);
                    decided(decision);
                    tracing::info!(route = %route.name, decision = decision.as_str(), request_id,
                        "flagged request without a user");
                    Err(json_error(
                        StatusCode::UNAUTHORIZED,
                        "authentication is required to generate images",
                    ))
                }
            };
        }
        Err(e) => {
            if let Some(refused) = refused_identity(&e) {
                // Made by the client, or a config that does not fit the
                // app's credentials: never sent on unchecked, and not an
                // outage to retry.
                let decision = Decision::IdentityErrorDenied;
                route.counters.request(decision);
                decided(decision);
                if matches!(e, IdentityError::Unreadable(_)) {
                    tracing::error!(route = %route.name, error = %e, request_id,
                        decision = decision.as_str(),
                        "a genuine credential the identity config cannot read; denying (fix [identity])");
                } else {
                    tracing::info!(route = %route.name, error = %e, request_id,
                        decision = decision.as_str(), "credentials that name no single user; denying");
                }
                return Err(refused);
            }
            return match state.policy.on_identity_error {
                IdentityErrorPolicy::Allow => {
                    let decision = Decision::IdentityErrorAllowed;
                    route.counters.request(decision);
                    decided(decision);
                    tracing::warn!(route = %route.name, error = %e, request_id,
                        decision = decision.as_str(), "cannot identify the user; forwarding uncounted");
                    Ok(Ticket::Unreserved {
                        identity: None,
                        decision,
                    })
                }
                IdentityErrorPolicy::Deny => {
                    let decision = Decision::IdentityErrorDenied;
                    route.counters.request(decision);
                    decided(decision);
                    tracing::warn!(route = %route.name, error = %e, request_id,
                        decision = decision.as_str(), "cannot identify the user; denying");
                    Err(unavailable(
                        "the user cannot be identified right now; try again shortly",
                    ))
                }
            };
        }
    };
    let now = state.deps.clock.now();
    let request = ReserveRequest {
        user: identity.user_id.clone(),
        limits: identity.limits,
        windows: state.deps.calendar.windows(now),
        now,
        ttl: state.limits.reservation_ttl,
    };
    // The memory store answers in place: no boxed future to wait on. One
    // `store.reserve` span either way.
    let store = &state.deps.store;
    let span = spans::store_reserve();
    let answer = match span.in_scope(|| store.reserve_now(&request)) {
        Some(answer) => answer,
        None => store.reserve(&request).instrument(span).await,
    };
    match answer {
        Ok(Admission::Reserved {
            reservation,
            counts,
        }) => {
            route.counters.request(Decision::Allowed);
            decided(Decision::Allowed);
            Ok(Ticket::Reserved {
                reservation,
                identity,
                counts,
            })
        }
        Ok(Admission::Exceeded { period, counts }) => {
            let limit = identity.limits.of(period);
            let standing = Standing::new(&identity.limits, &counts, Some(period));
            if state.policy.shadow.applies(route, identity.plan.as_deref()) {
                route.counters.request(Decision::ShadowDenied);
                decided(Decision::ShadowDenied).record("quota.period", period.as_str());
                tracing::info!(
                    route = %route.name, user = %identity.user_id,
                    plan = identity.plan.as_deref().unwrap_or("-"), decision = "shadow_denied",
                    period = standing.period, limit, request_id,
                    "would deny: image quota exceeded (shadow mode; forwarded)"
                );
                state.policy.shadow.mark(headers, period);
                return Ok(Ticket::ShadowDenied {
                    identity,
                    counts,
                    windows: request.windows,
                    period,
                });
            }
            route.counters.denied(period);
            decided(Decision::Denied).record("quota.period", period.as_str());
            tracing::info!(
                route = %route.name, user = %identity.user_id,
                plan = identity.plan.as_deref().unwrap_or("-"), decision = Decision::Denied.as_str(),
                period = standing.period, limit,
                remaining_daily = standing.daily, remaining_weekly = standing.weekly,
                remaining_monthly = standing.monthly,
                status = route.deny_status.as_u16(), request_id, "image quota exceeded"
            );
            let mut answer = Denial {
                route,
                messages: &state.policy.messages,
                period,
                limit,
                retry_after: request.windows.get(period).seconds_left(now),
            }
            .into_response();
            ratelimit::insert(
                answer.headers_mut(),
                &identity.limits,
                &counts,
                &request.windows,
                now,
            );
            Err(answer)
        }
        Err(e) => match state.policy.on_store_error {
            StoreErrorPolicy::Allow => {
                route.counters.fail_open();
                decided(Decision::StoreErrorAllowed);
                tracing::warn!(
                    route = %route.name, user = %identity.user_id,
                    plan = identity.plan.as_deref().unwrap_or("-"), error = %e, request_id,
                    decision = Decision::StoreErrorAllowed.as_str(), "quota store failed; forwarding unchecked"
                );
                Ok(Ticket::Unreserved {
                    identity: Some(identity),
                    decision: Decision::StoreErrorAllowed,
                })
            }
            // Under `local`, an error reaches here only when the local
            // count cannot answer either (its memory is full).
            StoreErrorPolicy::Deny | StoreErrorPolicy::Local => {
                let decision = Decision::StoreErrorDenied;
                route.counters.request(decision);
                decided(decision);
                tracing::error!(
                    route = %route.name, user = %identity.user_id,
                    plan = identity.plan.as_deref().unwrap_or("-"), error = %e, request_id,
                    decision = decision.as_str(), "quota store failed; denying"
                );
                Err(unavailable(
                    "image quota cannot be checked right now; try again shortly",
                ))
            }
        },
    }
}

fn unavailable(message: &str) -> Response<Full<Bytes>> {
    let mut answer = json_error(StatusCode::SERVICE_UNAVAILABLE, message);
    answer.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(STORE_ERROR_RETRY_AFTER),
    );
    answer
}
