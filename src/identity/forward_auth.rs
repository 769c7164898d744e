//! Identity by asking the Django app (phase: identify): `GET` its identity
//! endpoint with the caller's credential headers (`Cookie`,
//! `Authorization`), and read `{"user_id": …, "plan": …, "limits": {…}}`.
//!
//! | answer | identity |
//! |---|---|
//! | 2xx with a `user_id` | the user; `limits` override the plan's, period by period |
//! | 401, 403, 3xx (`login_required` → `/accounts/login/`) | anonymous |
//! | the same to a request carrying several of the credential headers | [`IdentityError::Ambiguous`] (refused whatever `on_identity_error` says) |
//! | other status, bad JSON, no answer within `timeout` | [`IdentityError::Unavailable`] |
//!
//! A request with none of the credential headers is anonymous without a
//! call. Answers are cached by a digest of the credentials ([`super::cache`]),
//! anonymous ones for a shorter time, errors not at all; concurrent requests
//! with the same credentials make one call between them. The call runs in
//! its own task, so a client that goes away does not waste it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;

use super::cache::{CredentialKey, IdentityCache, Lookup, Outcome};
use super::claims::{LimitOverrides, identity_of, user_id_of};
use super::{Identity, IdentityError, IdentitySource, PlanTable, SITE_HEADERS};
use crate::config::{Config, ConfigError};

/// Largest identity answer read; Django's is well under 1 KiB.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Pooled connections to the identity endpoint are closed after this much
/// idleness: below the keep-alive timeouts of common Django servers
/// (gunicorn's 2 s), so a reused connection is rarely one the server is
/// closing. The one that is gets a single retry (the call is a `GET`).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Asks the Django app who the caller is; see the module docs.
#[derive(Clone)]
pub struct ForwardAuthIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Uri,
    forward_headers: Vec<HeaderName>,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
    plans: PlanTable,
    cache: Arc<IdentityCache>,
}

impl std::fmt::Debug for ForwardAuthIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardAuthIdentity")
            .field("endpoint", &self.inner.endpoint)
            .field("forward_headers", &self.inner.forward_headers)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// The answer's shape. Unknown fields are ignored, so the Django view can
/// grow.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    user_id: Value,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    limits: Option<LimitOverrides>,
}

impl ForwardAuthIdentity {
    /// The source `config.identity.forward_auth` describes, resolving plans
    /// in `config.plans`.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let fa = &config.identity.forward_auth;
        let endpoint = fa.endpoint(&config.upstream)?;
        let forward_headers = fa
            .forward_headers
            .iter()
            .map(|h| h.name().clone())
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(fa.timeout.get()));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                forward_headers,
                timeout: fa.timeout.get(),
                client,
                plans: PlanTable::from_config(config),
                cache: Arc::new(
                    IdentityCache::new(fa.cache_ttl, fa.negative_cache_ttl, fa.cache_max_entries)
                        .with_max_bytes(fa.cache_max_bytes.get()),
                ),
            }),
        })
    }
}

#[async_trait]
impl IdentitySource for ForwardAuthIdentity {
    async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, IdentityError> {
        // Django's answer depends on the site headers the call carries too
        // (an `http://` request is redirected): they are part of the key.
        let Some(key) = CredentialKey::of(headers, &self.inner.forward_headers, &SITE_HEADERS)
        else {
            return Ok(None);
        };
        match self.inner.cache.lookup(key, Instant::now()) {
            Lookup::Hit(identity) => Ok(identity),
            Lookup::Join(waiter) => waiter.outcome().await,
            Lookup::Lead(leader, waiter) => {
                let credentials = self.inner.credentials(headers);
                let inner = Arc::clone(&self.inner);
                tokio::spawn(async move {
                    let outcome = inner.ask(&credentials).await;
                    leader.finish(outcome);
                });
                waiter.outcome().await
            }
        }
    }
}

impl Inner {
    /// The credential headers of `headers`, copied for the call, and its
    /// [`SITE_HEADERS`]: Django checks the `Host` against `ALLOWED_HOSTS`
    /// and the scheme for `SECURE_SSL_REDIRECT` as it will the request's
    /// own (hyper would otherwise send the endpoint's address, which a
    /// production `ALLOWED_HOSTS` refuses).
    fn credentials(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        self.forward_headers
            .iter()
            .chain(&SITE_HEADERS)
            .flat_map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(move |value| (name.clone(), value.clone()))
            })
            .collect()
    }

    /// One identity call, bounded by the timeout.
    async fn ask(&self, credentials: &[(HeaderName, HeaderValue)]) -> Outcome {
        match tokio::time::timeout(self.timeout, self.call(credentials)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.unavailable(format_args!("no answer within {:?}", self.timeout))),
        }
    }

    async fn call(&self, credentials: &[(HeaderName, HeaderValue)]) -> Outcome {
        let response = match self.client.request(self.request(credentials)).await {
            Err(e) if !e.is_connect() => {
                // Most likely a pooled connection the server had just
                // closed; a GET is safe to send again, once.
                tracing::debug!(error = %e, "identity call failed; retrying once");
                self.client.request(self.request(credentials)).await
            }
            other => other,
        }
        .map_err(|e| self.unavailable(format_args!("{e}")))?;
        let status = response.status();
        if status.is_redirection()
            && let Some(location) = self.redirected_to_itself(response.headers())
        {
            // Django's APPEND_SLASH, LocaleMiddleware's language prefix (or
            // any other rewrite of the endpoint's own path) answers every
            // caller alike: not "not logged in",
            // which would make everyone anonymous (an attack session).
            return Err(self.unavailable(format_args!(
                "answered {status} to {location}, its own path rewritten: write \
                 identity.forward_auth.url as the app routes it (with its trailing slash)"
            )));
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
            || status.is_redirection()
        {
            let sent: Vec<&str> = self
                .forward_headers
                .iter()
                .filter(|name| credentials.iter().any(|(n, _)| n == *name))
                .map(HeaderName::as_str)
                .collect();
            if sent.len() > 1 {
                // A view may accept one credential the identity view
                // refused for the other (DRF tries a bad token before the
                // session and answers 401): who the app will see cannot be
                // known. Refused whatever `on_identity_error` says: the
                // client chose it (`IdentityError::Ambiguous`).
                return Err(IdentityError::Ambiguous(format!(
                    "identity endpoint {}: answered {status} (not logged in) to a request \
                     carrying several credentials ({}); which one the app's views use cannot \
                     be known",
                    self.endpoint,
                    sent.join(", ")
                )));
            }
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.unavailable(format_args!("answered {status}")));
        }
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| self.unavailable(format_args!("answer body: {e}")))?
            .to_bytes();
        let answer: Answer = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format_args!("answer is not the expected JSON: {e}")))?;
        let user_id = user_id_of(&answer.user_id).ok_or_else(|| {
            self.unavailable(format_args!(
                "answer has no usable user_id (a non-empty string or an integer); \
                 anonymous callers must get 401"
            ))
        })?;
        Ok(Some(identity_of(
            &self.plans,
            user_id,
            answer.plan.as_deref(),
            answer.limits.unwrap_or_default(),
        )))
    }

    fn request(&self, credentials: &[(HeaderName, HeaderValue)]) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.endpoint.clone();
        let headers = request.headers_mut();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        for (name, value) in credentials {
            headers.append(name.clone(), value.clone());
        }
        request
    }

    /// The `Location` of a redirect to the endpoint's own path, give or
    /// take a trailing slash (`APPEND_SLASH`) or a prefix before it
    /// (`LocaleMiddleware`'s `/en` for an `i18n_patterns` URL written
    /// without it); a login redirect goes elsewhere.
    fn redirected_to_itself<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let location = headers.get(header::LOCATION)?.to_str().ok()?;
        let path = location.parse::<Uri>().ok()?;
        let (to, own) = (
            path.path().trim_end_matches('/'),
            self.endpoint.path().trim_end_matches('/'),
        );
        // `own` starts with `/`: a prefix ends at a segment's boundary.
        (to == own || (!own.is_empty() && to.ends_with(own))).then_some(location)
    }

    fn unavailable(&self, reason: std::fmt::Arguments<'_>) -> IdentityError {
        IdentityError::Unavailable(format!("identity endpoint {}: {reason}", self.endpoint))
    }
}
