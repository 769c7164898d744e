//! Forced image sessions (phase: flag). Some requests generate images
//! whatever their flag says: in the Django app, every message to a chatbot
//! of type `image_editing`. A route's probe asks the upstream
//! (`GET /chat/session/<int:session_id>/image-generation-access/`, with the
//! client's credentials, through the same inner service) and a `true` answer
//! makes the request count as flagged. The probe path is written with the
//! route's canonical parameter values: `/chat/session/0…017/send/` is probed
//! as `/chat/session/17/image-generation-access/`.
//!
//! The probe fails closed: only a 2xx answer whose body is a JSON object
//! with a boolean `json_field` is believed. Anything else (a redirect, 403,
//! 404, 414, any 5xx, a timeout, a body that is not JSON or lacks the field
//! or holds something else in it) counts the request as flagged: it is
//! checked against the limits and reserved, and released if no image is
//! saved. So a failing or confused probe can neither hand out uncounted
//! images nor block a user who has quota left.
//!
//! Answers are cached for `cache_ttl`: a `true` per canonical probe path and
//! user, a `false` per probe path, user and the headers the probe was sent
//! ([`ProbeSpec::asked_as`]), so an answer the app gave another caller (or
//! no one) never lets the user's messages go on unchecked. A
//! response that reports saved images for a request the proxy did not flag
//! marks that session (probe path, or canonical request path on a route
//! without a probe) as image-generating for that user for the same time
//! ("learned sessions", `settle.rs`). The cache is bounded in bytes
//! ([`CACHE_MAX_BYTES`]) and evicts the least recently used entry; a key
//! longer than [`MAX_KEY_BYTES`] is kept as its SHA-256.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::body::RequestBody;
use crate::BoxError;
use crate::config::ProbeConfig;
use crate::identity::SITE_HEADERS;
use crate::quota::routes::PathPattern;

/// Largest probe answer read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Bytes the probe cache may hold, keys and bookkeeping counted; past it
/// the least recently used entries go.
pub(crate) const CACHE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Longest key kept as it is; a longer one (a long user id or path) is
/// kept as its SHA-256.
pub(crate) const MAX_KEY_BYTES: usize = 256;
/// What one entry costs beyond its key, held twice (map and recency
/// order): hash slot, value, tree node.
const ENTRY_OVERHEAD: usize = 96;

/// A route's probe, ready to call.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    template: PathPattern,
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
    /// Checks a probe config against its route's pattern: every parameter
    /// of the probe path (`{name}` or `<conv:name>`) must be one of the
    /// route's.
    pub fn new(config: &ProbeConfig, route: &PathPattern) -> Result<Self, String> {
        if !config.path.starts_with('/') {
            return Err(format!("path {:?} must start with '/'", config.path));
        }
        let template = PathPattern::parse(&config.path).map_err(|e| format!("path {e}"))?;
        for (name, _) in template.params() {
            if !route.params().any(|(p, _)| p == name) {
                return Err(format!(
                    "path {:?} uses {{{name}}}, which is not a parameter of the route path",
                    config.path
                ));
            }
        }
        let forward_headers = config
            .forward_headers
            .iter()
            .map(|h| h.name().clone())
            .collect();
        Ok(Self {
            template,
            json_field: config.json_field.clone(),
            cache_ttl: config.cache_ttl,
            timeout: config.timeout,
            forward_headers,
        })
    }

    /// The probe, also passing on each of `names` it does not already.
    pub(crate) fn also_forwarding(mut self, names: &[HeaderName]) -> Self {
        for name in names {
            if !self.forward_headers.contains(name) {
                self.forward_headers.push(name.clone());
            }
        }
        self
    }

    /// The probe path for a request with these canonical path parameters,
    /// percent-encoded.
    pub(crate) fn path(&self, params: &[(String, String)]) -> String {
        self.template.render(params)
    }

    /// Who a probe of a request with `headers` asks as, for the cache key
    /// of a `false` answer: `user` and a digest of every header the probe
    /// sends. The app answers the probe from those headers alone, so a
    /// request whose credentials it would read as another caller (or as no
    /// one) never reuses the answer (`tests/it/jwt_fit.rs`).
    pub(crate) fn asked_as(&self, user: &str, headers: &HeaderMap) -> String {
        let mut hasher = Sha256::new();
        for name in SITE_HEADERS.iter().chain(&self.forward_headers) {
            for value in headers.get_all(name) {
                // Length-prefixed: names and values cannot run together.
                for part in [name.as_str().as_bytes(), value.as_bytes()] {
                    hasher.update((part.len() as u64).to_be_bytes());
                    hasher.update(part);
                }
            }
        }
        let mut asked_as = String::with_capacity(user.len() + 17);
        asked_as.push_str(user);
        asked_as.push('\u{0}');
        push_hex(&mut asked_as, &hasher.finalize()[..8]);
        asked_as
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
        // Django checks the Host against ALLOWED_HOSTS, the scheme for its
        // SSL redirect: send the client's, as the request carries them.
        for name in SITE_HEADERS.iter().chain(&self.forward_headers) {
            for value in headers.get_all(name) {
                request.headers_mut().append(name.clone(), value.clone());
            }
        }
        // Runs in the `probe` span (`spans.rs`): the app sees it as its parent.
        super::spans::inject(&tracing::Span::current(), request.headers_mut());
        let call = async {
            let response = inner.oneshot(request).await.map_err(Into::into)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, BoxError>((status, body))
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((status, body))) => self.judge(status, &body),
            Ok(Err(e)) => {
                tracing::warn!(probe = path, error = %e, "probe failed; counting the request as flagged");
                return ProbeAnswer::Failed;
            }
            Err(_) => {
                tracing::warn!(probe = path, timeout = ?self.timeout, "probe timed out; counting the request as flagged");
                return ProbeAnswer::Failed;
            }
        };
        if answer == ProbeAnswer::Failed {
            tracing::warn!(
                probe = path,
                "probe answer is not a 2xx JSON object with a boolean field; counting the request as flagged"
            );
        }
        answer
    }

    /// Believes only a 2xx JSON object whose `json_field` is a boolean.
    fn judge(&self, status: StatusCode, body: &[u8]) -> ProbeAnswer {
        if !status.is_success() {
            return ProbeAnswer::Failed;
        }
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(object)) => match object.get(&self.json_field) {
                Some(serde_json::Value::Bool(true)) => ProbeAnswer::Forced,
                Some(serde_json::Value::Bool(false)) => ProbeAnswer::NotForced,
                _ => ProbeAnswer::Failed,
            },
            _ => ProbeAnswer::Failed,
        }
    }

    /// How long answers are cached.
    pub(crate) fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }
}

/// Probe answers and learned sessions, by canonical session and user:
/// bounded in bytes, least recently used out first.
#[derive(Debug)]
pub(crate) struct ProbeCache {
    inner: Mutex<Lru>,
}

impl Default for ProbeCache {
    fn default() -> Self {
        Self::with_capacity(CACHE_MAX_BYTES)
    }
}

#[derive(Debug, Default)]
struct Lru {
    entries: HashMap<Box<str>, Slot>,
    /// Recency stamp → key; the first is the least recently used.
    order: BTreeMap<u64, Box<str>>,
    next_stamp: u64,
    bytes: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Slot {
    forced: bool,
    expires: Instant,
    stamp: u64,
}

impl ProbeCache {
    /// A cache holding at most `max_bytes`.
    pub(crate) fn with_capacity(max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Lru {
                max_bytes,
                ..Lru::default()
            }),
        }
    }

    /// The cache key of a session (canonical probe or request path) for a
    /// user; `""` for "any user" (learned-session hints). Keys longer than
    /// [`MAX_KEY_BYTES`] are their SHA-256, so a huge id costs 71 bytes.
    pub(crate) fn key(session: &str, user: &str) -> String {
        let len = session.len() + 1 + user.len();
        if len <= MAX_KEY_BYTES {
            return format!("{session}\u{0}{user}");
        }
        let mut hasher = Sha256::new();
        // Length-prefixed, so (session, user) pairs cannot run together.
        hasher.update((session.len() as u64).to_be_bytes());
        hasher.update(session.as_bytes());
        hasher.update(user.as_bytes());
        let digest = hasher.finalize();
        let mut key = String::with_capacity(71);
        key.push_str("sha256:");
        push_hex(&mut key, &digest);
        key
    }

    /// A cached answer that has not expired; marks it recently used.
    pub(crate) fn get(&self, key: &str) -> Option<bool> {
        let mut lru = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let Lru {
            entries,
            order,
            next_stamp,
            ..
        } = &mut *lru;
        let slot = entries.get_mut(key)?;
        if slot.expires <= now {
            lru.remove(key);
            return None;
        }
        let forced = slot.forced;
        if let Some(owned) = order.remove(&slot.stamp) {
            slot.stamp = *next_stamp;
            order.insert(*next_stamp, owned);
            *next_stamp += 1;
        }
        Some(forced)
    }

    /// Remembers an answer for `ttl`, evicting the least recently used
    /// entries to stay within the byte bound.
    pub(crate) fn put(&self, key: String, forced: bool, ttl: Duration) {
        let mut lru = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        lru.remove(&key);
        let cost = entry_cost(&key);
        if cost > lru.max_bytes {
            return;
        }
        while lru.bytes + cost > lru.max_bytes {
            let Some((_, oldest)) = lru.order.pop_first() else {
                break;
            };
            lru.entries.remove(&oldest);
            lru.bytes = lru.bytes.saturating_sub(entry_cost(&oldest));
        }
        let key: Box<str> = key.into();
        let stamp = lru.next_stamp;
        lru.next_stamp += 1;
        lru.order.insert(stamp, key.clone());
        lru.entries.insert(
            key,
            Slot {
                forced,
                expires: Instant::now() + ttl,
                stamp,
            },
        );
        lru.bytes += cost;
    }

    /// Bytes held, as counted against the bound.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

impl Lru {
    fn remove(&mut self, key: &str) {
        if let Some(slot) = self.entries.remove(key) {
            self.order.remove(&slot.stamp);
            self.bytes = self.bytes.saturating_sub(entry_cost(key));
        }
    }
}

/// Appends `bytes` to `text` in lower-case hex.
fn push_hex(text: &mut String, bytes: &[u8]) {
    for b in bytes {
        text.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(b & 0xF)]));
    }
}

fn entry_cost(key: &str) -> usize {
    2 * key.len() + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> PathPattern {
        PathPattern::parse("/chat/session/<int:session_id>/send/").expect("route")
    }

    fn spec() -> ProbeSpec {
        ProbeSpec::new(
            &ProbeConfig {
                path: "/chat/session/<int:session_id>/image-generation-access/".to_owned(),
                json_field: "has_access".to_owned(),
                cache_ttl: Duration::from_secs(600),
                forward_headers: vec![crate::config::RequiredHeader::from_static("cookie")],
                timeout: Duration::from_secs(5),
            },
            &route(),
        )
        .expect("valid probe")
    }

    #[test]
    fn path_is_filled_from_canonical_route_parameters() {
        let padded = format!("/chat/session/{}17/send/", "0".repeat(4000));
        let params = route().matches(&padded).expect("match");
        assert_eq!(
            spec().path(&params),
            "/chat/session/17/image-generation-access/"
        );
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
            &PathPattern::parse("/chat/{id}/").expect("route"),
        )
        .expect_err("unknown parameter");
        assert!(err.contains("{nope}"), "{err}");
    }

    #[test]
    fn only_a_2xx_object_with_a_boolean_is_believed() {
        let s = spec();
        assert_eq!(
            s.judge(StatusCode::OK, br#"{"has_access": true}"#),
            ProbeAnswer::Forced
        );
        assert_eq!(
            s.judge(StatusCode::OK, br#"{"has_access": false}"#),
            ProbeAnswer::NotForced
        );
        assert_eq!(
            s.judge(
                StatusCode::NON_AUTHORITATIVE_INFORMATION,
                br#"{"has_access": false}"#
            ),
            ProbeAnswer::NotForced
        );
        for (status, body) in [
            (StatusCode::OK, &br#"{}"#[..]),
            (StatusCode::OK, br#"{"has_access": "false"}"#),
            (StatusCode::OK, br#"{"has_access": 0}"#),
            (StatusCode::OK, br#"{"has_access": null}"#),
            (StatusCode::OK, br#"[{"has_access": false}]"#),
            (StatusCode::OK, b"<html>"),
            (StatusCode::OK, b""),
            (StatusCode::FOUND, br#"{"has_access": false}"#),
            (StatusCode::FORBIDDEN, br#"{"has_access": false}"#),
            (StatusCode::NOT_FOUND, b""),
            (StatusCode::URI_TOO_LONG, b""),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"has_access": false}"#,
            ),
            (StatusCode::BAD_GATEWAY, b""),
        ] {
            assert_eq!(
                s.judge(status, body),
                ProbeAnswer::Failed,
                "{status} {body:?}"
            );
        }
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
        assert_eq!(cache.bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn cache_is_bounded_in_bytes_and_evicts_the_least_recently_used() {
        let one = entry_cost(&ProbeCache::key("/p/1/", "1"));
        let cache = ProbeCache::with_capacity(3 * one);
        let ttl = Duration::from_secs(60);
        for user in ["1", "2", "3"] {
            cache.put(ProbeCache::key("/p/1/", user), true, ttl);
        }
        // "1" is used, so "2" is the least recently used when "4" comes.
        assert_eq!(cache.get(&ProbeCache::key("/p/1/", "1")), Some(true));
        cache.put(ProbeCache::key("/p/1/", "4"), false, ttl);
        assert_eq!(cache.get(&ProbeCache::key("/p/1/", "2")), None);
        for user in ["1", "3"] {
            assert_eq!(cache.get(&ProbeCache::key("/p/1/", user)), Some(true));
        }
        assert_eq!(cache.get(&ProbeCache::key("/p/1/", "4")), Some(false));
        assert!(cache.bytes() <= 3 * one);
        // Huge ids cost a hashed key, not their length.
        let huge = "9".repeat(100_000);
        let key = ProbeCache::key("/p/1/", &huge);
        assert_eq!(key.len(), 71);
        assert_ne!(key, ProbeCache::key("/p/1/", &"9".repeat(99_999)));
        let before = cache.bytes();
        cache.put(key.clone(), true, ttl);
        assert_eq!(cache.get(&key), Some(true));
        assert!(cache.bytes() <= before.max(3 * one));
    }
}
