//! Forced image sessions (phase: flag). Some requests generate images
//! whatever their flag says: in the Django app, every message to a chatbot
//! of type `image_editing`. A route's probe asks the upstream
//! (`GET /chat/session/{session_id}/image-generation-access/`, with the
//! client's credentials, through the same inner service) and a `true` answer
//! makes the request count as flagged.
//!
//! Answers are cached per probe path and user for `cache_ttl`. A response
//! that reports saved images for a request the proxy did not flag marks its
//! path as image-generating for the same time, even without a probe call.
//! A probe that fails (5xx, timeout, unreadable answer) counts the request
//! as flagged: it is checked and reserved, and released if no image is
//! saved, so a failing probe can neither block a user with quota left nor
//! hand out uncounted images.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::body::RequestBody;
use crate::config::ProbeConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest probe answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Most cached answers; past it, expired ones are dropped and new answers
/// are not cached until there is room.
const MAX_CACHED: usize = 100_000;

/// A route's probe, ready to call.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    template: String,
    json_field: String,
    cache_ttl: Duration,
    timeout: Duration,
    forward_headers: Vec<HeaderName>,
}

/// What a probe says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeAnswer {
    /// It will generate images: count it as flagged.
    Forced,
    /// It will not (unless its flag says so).
    NotForced,
    /// The probe could not tell; treated as flagged.
    Failed,
}

impl ProbeSpec {
    /// Checks a probe config against its route's path pattern: every
    /// `{name}` in the probe path must be a parameter of the route.
    pub fn new(config: &ProbeConfig, route_path: &str) -> Result<Self, String> {
        if !config.path.starts_with('/') {
            return Err(format!("path {:?} must start with '/'", config.path));
        }
        for name in params_of(&config.path) {
            if !params_of(route_path).any(|p| p == name) {
                return Err(format!(
                    "path {:?} uses {{{name}}}, which is not a parameter of the route path {route_path:?}",
                    config.path
                ));
            }
        }
        let forward_headers = config
            .forward_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("forward_headers: {h:?} is not a header name"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            template: config.path.clone(),
            json_field: config.json_field.clone(),
            cache_ttl: config.cache_ttl,
            timeout: config.timeout,
            forward_headers,
        })
    }

    /// The probe path for a request with these path parameters.
    pub(crate) fn path(&self, params: &[(String, String)]) -> String {
        let mut path = self.template.clone();
        for (name, value) in params {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        path
    }

    /// Asks the upstream, through `inner`, about a request with `headers`.
    pub(crate) async fn ask<S, ReqB, ResB>(
        &self,
        inner: S,
        path: &str,
        headers: &HeaderMap,
    ) -> ProbeAnswer
    where
        S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
        S::Error: Into<BoxError>,
        ResB: Body<Data = Bytes>,
        ResB::Error: Into<BoxError>,
    {
        let mut request = Request::new(RequestBody::buffered(Bytes::new()));
        *request.method_mut() = Method::GET;
        *request.uri_mut() = match path.parse() {
            Ok(uri) => uri,
            Err(_) => return ProbeAnswer::Failed,
        };
        // Django checks the Host against ALLOWED_HOSTS: send the client's.
        for name in std::iter::once(&header::HOST).chain(&self.forward_headers) {
            for value in headers.get_all(name) {
                request.headers_mut().append(name.clone(), value.clone());
            }
        }
        let call = async {
            let response = inner.oneshot(request).await.map_err(Into::into)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, BoxError>((status, body))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((status, body))) => self.judge(status, &body),
            Ok(Err(e)) => {
                tracing::warn!(probe = path, error = %e, "probe failed; counting the request as flagged");
                ProbeAnswer::Failed
            }
            Err(_) => {
                tracing::warn!(probe = path, timeout = ?self.timeout, "probe timed out; counting the request as flagged");
                ProbeAnswer::Failed
            }
        }
    }

    fn judge(&self, status: StatusCode, body: &[u8]) -> ProbeAnswer {
        if status.is_server_error() {
            return ProbeAnswer::Failed;
        }
        if !status.is_success() {
            // 3xx (login redirect), 403 (not the owner), 404: nothing forced.
            return ProbeAnswer::NotForced;
        }
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(value) if value.get(&self.json_field) == Some(&serde_json::Value::Bool(true)) => {
                ProbeAnswer::Forced
            }
            Ok(_) => ProbeAnswer::NotForced,
            Err(_) => ProbeAnswer::Failed,
        }
    }
}

fn params_of(path: &str) -> impl Iterator<Item = &str> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

/// Probe answers by probe path and user.
#[derive(Debug, Default)]
pub(crate) struct ProbeCache {
    entries: Mutex<HashMap<String, (bool, Instant)>>,
}

impl ProbeCache {
    /// The cache key of a probe path for a user.
    pub(crate) fn key(path: &str, user: &str) -> String {
        format!("{path}\u{0}{user}")
    }

    /// A cached answer that has not expired.
    pub(crate) fn get(&self, key: &str) -> Option<bool> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(forced, _)| *forced)
    }

    /// Remembers an answer for `ttl`.
    pub(crate) fn put(&self, key: String, forced: bool, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= MAX_CACHED {
                return;
            }
        }
        entries.insert(key, (forced, now + ttl));
    }
}

impl ProbeSpec {
    /// How long answers are cached.
    pub(crate) fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProbeSpec {
        ProbeSpec::new(
            &ProbeConfig {
                path: "/chat/session/{session_id}/image-generation-access/".to_owned(),
                json_field: "has_access".to_owned(),
                cache_ttl: Duration::from_secs(600),
                forward_headers: vec!["cookie".to_owned()],
                timeout: Duration::from_secs(5),
            },
            "/chat/session/{session_id}/send/",
        )
        .expect("valid probe")
    }

    #[test]
    fn path_is_filled_from_route_parameters() {
        let path = spec().path(&[("session_id".to_owned(), "17".to_owned())]);
        assert_eq!(path, "/chat/session/17/image-generation-access/");
    }

    #[test]
    fn unknown_parameter_is_an_error() {
        let err = ProbeSpec::new(
            &ProbeConfig {
                path: "/x/{nope}/".to_owned(),
                json_field: "has_access".to_owned(),
                cache_ttl: Duration::from_secs(1),
                forward_headers: vec![],
                timeout: Duration::from_secs(1),
            },
            "/chat/{id}/",
        )
        .expect_err("unknown parameter");
        assert!(err.contains("{nope}"), "{err}");
    }

    #[test]
    fn answers() {
        let s = spec();
        assert_eq!(
            s.judge(StatusCode::OK, br#"{"has_access": true}"#),
            ProbeAnswer::Forced
        );
        assert_eq!(
            s.judge(StatusCode::OK, br#"{"has_access": false}"#),
            ProbeAnswer::NotForced
        );
        assert_eq!(s.judge(StatusCode::OK, br#"{}"#), ProbeAnswer::NotForced);
        assert_eq!(s.judge(StatusCode::FOUND, b""), ProbeAnswer::NotForced);
        assert_eq!(s.judge(StatusCode::FORBIDDEN, b""), ProbeAnswer::NotForced);
        assert_eq!(
            s.judge(StatusCode::INTERNAL_SERVER_ERROR, b""),
            ProbeAnswer::Failed
        );
        assert_eq!(s.judge(StatusCode::OK, b"<html>"), ProbeAnswer::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn cache_expires() {
        let cache = ProbeCache::default();
        let key = ProbeCache::key("/p/1/", "42");
        assert_eq!(cache.get(&key), None);
        cache.put(key.clone(), true, Duration::from_secs(10));
        assert_eq!(cache.get(&key), Some(true));
        assert_eq!(cache.get(&ProbeCache::key("/p/1/", "43")), None);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(cache.get(&key), None);
    }
}
