//! The admin listener's requests and answers. Every answer is JSON except
//! `/metrics` (Prometheus text).

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde_json::json;

use super::usage::{PeriodChoice, UsageError, UsageOps, UserUsage};
use super::{AppState, ReloadError};
use crate::BoxError;
use crate::response::{JSON_CONTENT_TYPE, json_error, json_response};

/// Largest request body read (the adjust request is a few bytes).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The Prometheus text format's content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/v1/` answers while no token is configured.
const API_OFF: &str = "the admin /v1/ API is off because no token is configured: set \
    admin.token_env (the name of an environment variable holding the token) or \
    admin.token_file (a file holding it), then restart or reload";

/// Answers one admin request.
pub(crate) async fn handle<B>(state: Arc<AppState>, request: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = route(state, request).await;
    tracing::debug!(%method, %path, status = response.status().as_u16(), "admin request");
    response
}

async fn route<B>(state: Arc<AppState>, request: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let path = request.uri().path();
    match path {
        "/healthz" | "/readyz" | "/metrics" if request.method() != Method::GET => {
            method_not_allowed("GET")
        }
        // Liveness: 200 while the process serves, whatever the store's
        // state, which is shown for people and dashboards.
        "/healthz" => json_response(
            StatusCode::OK,
            &json!({ "status": "ok", "store": state.store_health() }),
        ),
        "/readyz" => match state.readiness().await {
            Ok(()) => json_response(StatusCode::OK, &json!({ "status": "ready" })),
            Err(e) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "not ready", "reason": e.to_string() }),
            ),
        },
        "/metrics" => match state.render_metrics() {
            Some(text) => {
                let mut response = Response::new(Full::new(Bytes::from(text)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(METRICS_CONTENT_TYPE),
                );
                response
            }
            None => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no Prometheus recorder is installed in this process",
            ),
        },
        _ if path == "/v1" || path.starts_with("/v1/") => v1(state, request).await,
        _ => not_found(),
    }
}

/// The token-protected API.
async fn v1<B>(state: Arc<AppState>, request: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let current = state.current();
    let Some(token) = &current.token else {
        return json_error(StatusCode::FORBIDDEN, API_OFF);
    };
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|value| token.authorizes(value.as_bytes()));
    if !authorized {
        let mut response = json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer <admin token>",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"quota-proxy admin\""),
        );
        return response;
    }
    let path = request.uri().path();
    if path == "/v1/reload" {
        if request.method() != Method::POST {
            return method_not_allowed("POST");
        }
        return match state.reload().await {
            Ok(reloaded) => json_response(
                StatusCode::OK,
                &json!({
                    "reloaded": true,
                    "restart_required": reloaded.restart_required,
                    "store_reconnected": reloaded.store_reconnected,
                }),
            ),
            Err(e @ ReloadError::Store(_)) => {
                json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
            }
            Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
    }
    let Some(user) = user_of(path) else {
        return not_found();
    };
    let user = match percent_encoding::percent_decode_str(user).decode_utf8() {
        Ok(user) => user.into_owned(),
        Err(_) => {
            return json_error(StatusCode::BAD_REQUEST, "the user id is not UTF-8");
        }
    };
    let query = match Query::parse(request.uri().query()) {
        Ok(query) => query,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
    };
    let ops = UsageOps::new(Arc::clone(&current.store), &current.config);
    let plan = query.plan.as_deref();
    let now = Utc::now();
    let result = match *request.method() {
        Method::GET => ops.show(&user, plan, now).await,
        Method::DELETE => match query.period {
            Some(period) => ops.reset(&user, plan, period, now).await,
            None => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "say which usage to reset: ?period=daily, weekly, monthly or all",
                );
            }
        },
        Method::POST => match read_adjust(request.into_body()).await {
            Ok(adjust) => {
                ops.adjust(&user, plan, adjust.period, adjust.delta, now)
                    .await
            }
            Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
        },
        _ => return method_not_allowed("GET, POST, DELETE"),
    };
    usage_answer(result)
}

/// `{id}` of `/v1/users/{id}/usage`, still percent-encoded.
fn user_of(path: &str) -> Option<&str> {
    let user = path.strip_prefix("/v1/users/")?.strip_suffix("/usage")?;
    (!user.is_empty() && !user.contains('/')).then_some(user)
}

/// The query parameters of the usage API.
#[derive(Debug, Default)]
struct Query {
    plan: Option<String>,
    period: Option<PeriodChoice>,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut parsed = Query::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*name {
                "plan" => parsed.plan = Some(value.into_owned()),
                "period" => {
                    parsed.period = Some(value.parse().map_err(|e: UsageError| e.to_string())?)
                }
                _ => {
                    return Err(format!(
                        "unknown query parameter {name:?}; expected plan or period"
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

/// The body of `POST /v1/users/{id}/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Adjust {
    /// Added to the usage; negative refunds.
    delta: i64,
    /// Which periods; all three when absent.
    #[serde(default = "all_periods")]
    period: PeriodChoice,
}

fn all_periods() -> PeriodChoice {
    PeriodChoice::All
}

async fn read_adjust<B>(body: B) -> Result<Adjust, String>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("the request body could not be read: {e}"))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "expected a JSON body like {{\"period\": \"daily\", \"delta\": -1}} \
             (period: daily, weekly, monthly or all, default all): {e}"
        )
    })
}

fn usage_answer(result: Result<UserUsage, UsageError>) -> Response<Full<Bytes>> {
    match result {
        // Serialized as the struct is laid out: daily, weekly, monthly.
        Ok(usage) => match serde_json::to_vec(&usage) {
            Ok(bytes) => {
                let mut response = Response::new(Full::new(Bytes::from(bytes)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(JSON_CONTENT_TYPE),
                );
                response
            }
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(e @ UsageError::Store(_)) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e) => json_error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn not_found() -> Response<Full<Bytes>> {
    json_error(
        StatusCode::NOT_FOUND,
        "not an admin endpoint; see GET /healthz, /readyz, /metrics, \
         /v1/users/{id}/usage, POST /v1/reload",
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed here; allowed: {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_paths() {
        assert_eq!(user_of("/v1/users/42/usage"), Some("42"));
        assert_eq!(user_of("/v1/users/a%40b.c/usage"), Some("a%40b.c"));
        assert_eq!(user_of("/v1/users//usage"), None);
        assert_eq!(user_of("/v1/users/1/2/usage"), None);
        assert_eq!(user_of("/v1/users/42"), None);
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some("plan=pro&period=all")).expect("valid");
        assert_eq!(q.plan.as_deref(), Some("pro"));
        assert_eq!(q.period, Some(PeriodChoice::All));
        assert!(Query::parse(Some("period=hourly")).is_err());
        assert!(Query::parse(Some("user=1")).is_err());
        assert!(Query::parse(None).is_ok());
    }
}
