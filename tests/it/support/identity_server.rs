//! A loopback stand-in for the Django identity view the README documents:
//!
//! ```python
//! def quota_identity(request):
//!     if not request.user.is_authenticated:
//!         return JsonResponse({"detail": "not authenticated"}, status=401)
//!     sub = getattr(request.user, "subscription", None)
//!     plan = sub.subscription_type if sub else None
//!     body = {"user_id": str(request.user.pk)}
//!     if plan:
//!         body["plan"] = plan.name
//!         body["limits"] = {"daily": plan.daily_image_generation_limit, …}
//!     return JsonResponse(body)
//! ```
//!
//! Users are found by their `sessionid` cookie, as Django's session
//! middleware does. It counts its calls, records the last request's headers,
//! and can be told to misbehave (answer a status, redirect to the login
//! page, answer slowly, answer garbage).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The path Django serves the view on (the proxy's default).
pub(crate) const PATH: &str = "/api/quota/identity/";

/// A user's subscription plan, as the Django models hold it (limits may be
/// NULL in the database).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) name: &'static str,
    pub(crate) daily: Option<u64>,
    pub(crate) weekly: Option<u64>,
    pub(crate) monthly: Option<u64>,
}

impl Plan {
    /// `free`: 3 a day, 10 a week, 30 a month.
    pub(crate) fn free() -> Self {
        Self {
            name: "free",
            daily: Some(3),
            weekly: Some(10),
            monthly: Some(30),
        }
    }

    /// `pro`: 5 a day, no weekly limit (0), 100 a month.
    pub(crate) fn pro() -> Self {
        Self {
            name: "pro",
            daily: Some(5),
            weekly: Some(0),
            monthly: Some(100),
        }
    }
}

/// How the server answers.
#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Like the Django view.
    Django,
    /// Like the Django view, after a delay.
    Slow(Duration),
    /// Always this status (with a JSON error body).
    Status(StatusCode),
    /// 302 to the login page, as `login_required` does.
    LoginRedirect,
    /// 302 to this location, whoever asks.
    Redirect(&'static str),
    /// 200 with a body that is not JSON.
    Garbage,
}

struct State {
    calls: AtomicUsize,
    mode: Mutex<Mode>,
    sessions: Mutex<HashMap<String, (u64, Option<Plan>)>>,
    last_headers: Mutex<Option<HeaderMap>>,
}

/// A running identity server.
#[derive(Clone)]
pub(crate) struct IdentityServer {
    addr: SocketAddr,
    state: Arc<State>,
}

impl IdentityServer {
    /// Starts a server on `127.0.0.1:0`, in the current runtime.
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            calls: AtomicUsize::new(0),
            mode: Mutex::new(Mode::Django),
            sessions: Mutex::new(HashMap::new()),
            last_headers: Mutex::new(None),
        });
        let server_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&server_state);
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(Arc::clone(&state), request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    /// The server's base URL, `http://127.0.0.1:port`.
    pub(crate) fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Logs in user `pk` under session `session`, with an optional plan.
    pub(crate) fn login(&self, session: &str, pk: u64, plan: Option<Plan>) {
        self.state
            .sessions
            .lock()
            .expect("sessions")
            .insert(session.to_owned(), (pk, plan));
    }

    /// Changes how the server answers from now on.
    pub(crate) fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("mode") = mode;
    }

    /// Requests answered (or being answered) so far.
    pub(crate) fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The headers of the last request.
    pub(crate) fn last_headers(&self) -> HeaderMap {
        self.state
            .last_headers
            .lock()
            .expect("headers")
            .clone()
            .expect("a request was made")
    }
}

/// An address with nothing listening on it.
pub(crate) async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn answer(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.calls.fetch_add(1, Ordering::SeqCst);
    *state.last_headers.lock().expect("headers") = Some(request.headers().clone());
    let mode = state.mode.lock().expect("mode").clone();
    match mode {
        Mode::Django => {}
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::Status(status) => {
            return Ok(json_response(status, &json!({"detail": "told to fail"})));
        }
        Mode::LoginRedirect => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::FOUND;
            response.headers_mut().insert(
                header::LOCATION,
                header::HeaderValue::from_static("/accounts/login/?next=/api/quota/identity/"),
            );
            return Ok(response);
        }
        Mode::Redirect(location) => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::FOUND;
            response
                .headers_mut()
                .insert(header::LOCATION, header::HeaderValue::from_static(location));
            return Ok(response);
        }
        Mode::Garbage => {
            return Ok(Response::new(Full::new(Bytes::from_static(
                b"<html>Server Error</html>",
            ))));
        }
    }
    if request.uri().path() != PATH {
        return Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({"detail": "not found"}),
        ));
    }
    let session = session_of(request.headers());
    let user = session.and_then(|s| state.sessions.lock().expect("sessions").get(&s).cloned());
    let Some((pk, plan)) = user else {
        return Ok(json_response(
            StatusCode::UNAUTHORIZED,
            &json!({"detail": "not authenticated"}),
        ));
    };
    let mut body = json!({"user_id": pk.to_string()});
    if let Some(plan) = plan {
        body["plan"] = json!(plan.name);
        body["limits"] = json!({
            "daily": plan.daily,
            "weekly": plan.weekly,
            "monthly": plan.monthly,
        });
    }
    Ok(json_response(StatusCode::OK, &body))
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == "sessionid").then(|| value.to_owned())
        })
}
