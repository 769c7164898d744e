//! The configuration file (phase: startup). One TOML file, every field
//! optional with a default that runs: `config/quota-proxy.toml` documents
//! each one. Values are checked once here, so the rest of the proxy never
//! handles a malformed setting; errors name the field to fix.

mod types;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::telemetry::LogFormat;
pub use types::{
    AnonymousPolicy, CountMode, FlagRule, FlagRuleName, FlagRules, FlagTable, IdentityErrorPolicy,
    IdentityKind, Limits, Method, PlanCase, StoreErrorPolicy, StoreKind, TimeZone, UpstreamUrl,
    UserIdFormat, WeekStart,
};
pub use validate::{STANDARD_METHODS, mask_url};

/// Where the binary looks for its config when neither `--config` nor
/// `QUOTA_PROXY_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "config/quota-proxy.toml";

/// Why a config could not be used. Each message names the file or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a field has the wrong type or name.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and the field.
        message: String,
    },
    /// A field parsed but its value cannot be used.
    #[error("{field}: {reason}")]
    Invalid {
        /// The dotted path of the field, e.g. `identity.default_plan`.
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// The service every request is forwarded to: `http://host:port`.
    pub upstream: UpstreamUrl,
    /// Largest request body read on an inspected route; larger → 413.
    pub max_body_bytes: u64,
    /// Bytes of an inspected `multipart/form-data` body kept in memory while
    /// it waits for the decision; the rest goes to a temporary file (nginx's
    /// `client_body_buffer_size`).
    pub body_buffer_bytes: u64,
    /// Directory of those temporary files; the system's temporary directory
    /// when unset. The files are unlinked as they are made, so nothing is
    /// left behind, even after a crash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
    /// Most bytes of request bodies the proxy holds at once, in memory and
    /// in spool files together (inspected bodies, and every body under
    /// `request_buffering = "all"`); a request that finds no room within a
    /// short wait gets 503 with `Retry-After`. See docs/limits.md.
    pub body_budget_bytes: u64,
    /// Which request bodies are received whole before the upstream is
    /// called: `inspected` (only those the proxy must judge), `all` (every
    /// body: slow clients cannot hold the upstream's workers) or `off`.
    pub request_buffering: RequestBuffering,
    /// Most connections open at once from one client address; a connection
    /// past it is closed as soon as it is accepted. Unset = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<std::num::NonZeroU32>,
    /// How long in-flight requests may run on after SIGTERM or SIGINT before
    /// they are cut; pending settlements are then flushed.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Threads serving the proxy listener, each with its own event loop and
    /// upstream connection pool; 0 = one per CPU the process may use
    /// (cgroup CPU limits included).
    pub threads: usize,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Where usage is counted.
    pub store: StoreConfig,
    /// How days, weeks and months are cut.
    pub periods: PeriodsConfig,
    /// How the user and plan of a request are found.
    pub identity: IdentityConfig,
    /// Plans by name, with their limits (0 = unlimited).
    pub plans: BTreeMap<String, Limits>,
    /// The routes to inspect; every other request is forwarded untouched.
    pub routes: Vec<RouteConfig>,
    /// Methods beyond the standard ones (GET, HEAD, POST, PUT, DELETE,
    /// CONNECT, OPTIONS, TRACE, PATCH) that a route may name, e.g.
    /// `["PROPFIND"]`; any other method in `[[routes]]` is a config error.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extension_methods: Vec<String>,
    /// Request headers removed from every request because they move the
    /// path Django routes (`SCRIPT_NAME`, `X-Forwarded-Prefix`, …), in any
    /// case and with `-` and `_` alike; see `docs/routes.md`.
    pub strip_routing_headers: Vec<String>,
    /// How the upstream reports saved images.
    pub usage: UsageConfig,
    /// Denial messages per period.
    pub messages: Messages,
    /// The admin listener: probes, metrics, usage API, reload.
    pub admin: AdminConfig,
    /// Log format and filter.
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: UpstreamUrl::default(),
            max_body_bytes: 10 * 1024 * 1024,
            body_buffer_bytes: 1024 * 1024,
            spool_dir: None,
            body_budget_bytes: 256 * 1024 * 1024,
            request_buffering: RequestBuffering::Inspected,
            max_connections_per_ip: None,
            shutdown_grace: Duration::from_secs(30),
            threads: 0,
            timeouts: Timeouts::default(),
            store: StoreConfig::default(),
            periods: PeriodsConfig::default(),
            identity: IdentityConfig::default(),
            plans: BTreeMap::new(),
            routes: Vec::new(),
            extension_methods: Vec::new(),
            strip_routing_headers: crate::routes::DEFAULT_ROUTING_HEADERS
                .map(str::to_owned)
                .to_vec(),
            usage: UsageConfig::default(),
            messages: Messages::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// Which request bodies are received whole before the upstream is called
/// (`request_buffering`), like nginx's `proxy_request_buffering`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestBuffering {
    /// Only bodies of inspected routes, which must be read whole to be
    /// judged; every other body streams to the upstream as it arrives.
    Inspected,
    /// Every body: received completely (memory, then a spool file) before
    /// the upstream is called, within `body_budget_bytes` and
    /// `max_body_bytes`, so a slow client never holds an upstream worker.
    All,
    /// Nothing beyond what inspection needs: the same as `inspected`, since
    /// an inspected body is always read whole.
    Off,
}

/// The admin listener: `/healthz`, `/readyz`, `/metrics`, and the usage API
/// under `/v1/` when a token is configured.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; never the proxy's own `listen`.
    pub listen: SocketAddr,
    /// Environment variable holding the bearer token of the `/v1/` API.
    /// Neither this nor `token_file` set = the `/v1/` API is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File holding the bearer token (e.g. a mounted Kubernetes Secret);
    /// surrounding whitespace is ignored. Re-read on reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `/readyz` also fails while the store does not answer. Off by
    /// default: readiness means "this pod can serve its app", and a sidecar
    /// taken out of its Service takes the whole app down with it. Makes
    /// sense only with `store.on_store_error = "deny"` and a Service that
    /// carries nothing but flagged routes.
    pub ready_requires_store: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token_env: None,
            token_file: None,
            ready_requires_store: false,
        }
    }
}

/// Logs: one line per inspected request, and the proxy's own events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` (for people) or `json` (one object per line, for collectors).
    pub format: LogFormat,
    /// `RUST_LOG`-style filter, e.g. `info` or `quota_proxy=debug,info`;
    /// `RUST_LOG` overrides it when set.
    pub filter: String,
    /// Keep a client's `X-Request-Id` (when it is a sane token) instead of
    /// generating one. Only behind a front that sets it itself.
    pub trust_request_id: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".to_owned(),
            trust_request_id: false,
        }
    }
}

/// Upstream timeouts. None of them bounds a whole response: image generation
/// streams for minutes, and only silence is cut.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time to open a TCP connection to the upstream (→ 502 when exceeded).
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Time from sending the request to receiving the response head (→ 504).
    #[serde(with = "humantime_serde")]
    pub response_head: Duration,
    /// Longest silence between two chunks of a response body; the response
    /// is cut when exceeded.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Longest silence of a client while the proxy reads, spools or
    /// forwards its request body; exceeded → 408 and the connection closed.
    #[serde(with = "humantime_serde")]
    pub client_body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            response_head: Duration::from_secs(300),
            idle: Duration::from_secs(120),
            client_body: Duration::from_secs(30),
        }
    }
}

/// Where usage is counted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory` (one instance, nothing to install) or `redis` (shared).
    pub kind: StoreKind,
    /// Redis URL of one server, `redis://` or `rediss://` (TLS); used when
    /// `kind = "redis"` and neither `cluster` nor `sentinel` is set.
    pub url: String,
    /// Environment variable holding the whole Redis URL (e.g. from a
    /// Kubernetes Secret); replaces `url` when set. Shown masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_env: Option<String>,
    /// File holding the Redis password (e.g. a mounted Secret), added to
    /// `url`, every `cluster` node, or the Sentinel master; re-read on
    /// reload. Shown masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Redis Cluster: `redis://host:port` (or `rediss://`) of some nodes;
    /// any one reachable node reveals the rest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    /// Redis behind Sentinel: the master's name and the Sentinels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<SentinelConfig>,
    /// PEM file of the certificate authority trusted for `rediss://` (and
    /// Sentinel `tls`) instead of the system's roots: for a private CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// What a flagged request gets when the store cannot answer.
    pub on_store_error: StoreErrorPolicy,
    /// How long a reservation lives without being settled.
    #[serde(with = "humantime_serde")]
    pub reservation_ttl: Duration,
    /// Longest wait for one store call (and one connection attempt) before
    /// it counts as a store error.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// When Redis stops being called after repeated failures, and for how
    /// long.
    pub breaker: BreakerConfig,
    /// Most settles held in memory while Redis cannot take them; beyond it
    /// usage is lost (logged and counted).
    pub settle_queue: usize,
    /// How long a graceful shutdown waits for queued settles to reach Redis.
    #[serde(with = "humantime_serde")]
    pub flush_timeout: Duration,
    /// Under `on_store_error = "local"`: most users whose last Redis counts
    /// are remembered, and most users counted locally in one outage.
    pub local_max_users: usize,
    /// Most users the memory store keeps at once; a new user past it is a
    /// store error (see `on_store_error`). Expired periods are dropped first.
    pub memory_max_users: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            url: "redis://127.0.0.1:6379/0".to_owned(),
            url_env: None,
            password_file: None,
            cluster: Vec::new(),
            sentinel: None,
            tls_ca_file: None,
            key_prefix: "quota:".to_owned(),
            on_store_error: StoreErrorPolicy::Allow,
            reservation_ttl: Duration::from_secs(180),
            command_timeout: Duration::from_millis(50),
            breaker: BreakerConfig::default(),
            settle_queue: 100_000,
            flush_timeout: Duration::from_secs(5),
            local_max_users: 100_000,
            memory_max_users: 1_000_000,
        }
    }
}

/// Redis behind Sentinel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The master's name in the Sentinels' config (`sentinel monitor NAME …`).
    pub master: String,
    /// `redis://host:port` (or `rediss://`) of the Sentinels; a password in
    /// these URLs is the Sentinels' own.
    pub nodes: Vec<String>,
    /// Database number on the master.
    #[serde(default)]
    pub db: i64,
    /// ACL user on the master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password on the master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Connect to the master (and replicas it fails over to) with TLS.
    #[serde(default)]
    pub tls: bool,
}

/// The circuit breaker in front of Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failed calls in a row (refused or timed out) that open it.
    pub failures: u32,
    /// How long it stays open: calls fail at once, then one probe call
    /// tries Redis again.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: Duration::from_secs(2),
        }
    }
}

/// How periods are cut.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeriodsConfig {
    /// IANA time zone name, e.g. `Asia/Tehran`.
    pub timezone: TimeZone,
    /// First day of the week, e.g. `monday` or `saturday`.
    pub week_start: WeekStart,
    /// Calendar months are cut in: `gregorian` (the default) or `persian`
    /// (Solar Hijri months, Farvardin … Esfand). Days and weeks are the same
    /// in both.
    pub calendar: crate::periods::CalendarSystem,
}

impl Default for PeriodsConfig {
    fn default() -> Self {
        Self {
            timezone: TimeZone(chrono_tz::Asia::Tehran),
            week_start: WeekStart(chrono::Weekday::Mon),
            calendar: crate::periods::CalendarSystem::Gregorian,
        }
    }
}

/// How a request's user and plan are found.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Header holding the user id, set by a trusted front.
    pub user_header: String,
    /// Header holding the plan name.
    pub plan_header: String,
    /// Plan for a user whose plan is missing or unknown; unlimited when unset.
    pub default_plan: Option<String>,
    /// How plan names are matched against `[plans]`: `sensitive` (the
    /// default) or `insensitive` (`Pro` is `pro`). An unknown plan gets
    /// `default_plan`, is logged once per name and counted
    /// (`quota_proxy_unknown_plan_total`).
    pub plan_case: PlanCase,
    /// What happens to a flagged request with no user id.
    pub anonymous: AnonymousPolicy,
    /// What a user id is: `string` (the default), `integer` (`0017` and
    /// `17` are one user) or `uuid`; an id not in the format is anonymous.
    pub user_id_format: UserIdFormat,
    /// Where identities come from: `header` (the default), `forward_auth` or
    /// `jwt`. With `forward_auth` and `jwt`, clients' own `user_header` and
    /// `plan_header` are removed and set from the verified identity.
    pub kind: IdentityKind,
    /// What a flagged request gets when the identity source cannot answer
    /// (down, slow, or nonsense): `deny` (503 JSON, the default) or `allow`
    /// (forwarded uncounted).
    pub on_identity_error: IdentityErrorPolicy,
    /// Settings of `kind = "forward_auth"`.
    pub forward_auth: ForwardAuthConfig,
    /// Settings of `kind = "jwt"`.
    pub jwt: JwtConfig,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            user_header: "X-User-Id".to_owned(),
            plan_header: "X-Subscription-Type".to_owned(),
            default_plan: None,
            plan_case: PlanCase::Sensitive,
            anonymous: AnonymousPolicy::Forward,
            user_id_format: UserIdFormat::String,
            kind: IdentityKind::Header,
            on_identity_error: IdentityErrorPolicy::Deny,
            forward_auth: ForwardAuthConfig::default(),
            jwt: JwtConfig::default(),
        }
    }
}

/// `[identity.forward_auth]`: ask the Django app who the caller is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardAuthConfig {
    /// The identity endpoint: a path on `upstream` (`/api/quota/identity/`)
    /// or a full `http://host:port/path`.
    pub url: String,
    /// The caller's headers sent along; they carry its credentials. A
    /// request with none of them is anonymous without any call.
    pub forward_headers: Vec<String>,
    /// Longest wait for one answer (connect, head and body); exceeded → the
    /// identity is unavailable (see `on_identity_error`).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a user's answer is reused for the same credentials; `0s`
    /// asks every time.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long an anonymous answer (401, 403, redirect) is reused.
    #[serde(with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
    /// Most answers kept; the least recently used is dropped to make room.
    pub cache_max_entries: usize,
    /// Most bytes the cached answers take (keys, identities and
    /// bookkeeping); the least recently used is dropped to make room.
    pub cache_max_bytes: u64,
}

impl Default for ForwardAuthConfig {
    fn default() -> Self {
        Self {
            url: "/api/quota/identity/".to_owned(),
            forward_headers: vec!["Cookie".to_owned(), "Authorization".to_owned()],
            timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(30),
            negative_cache_ttl: Duration::from_secs(5),
            cache_max_entries: 100_000,
            cache_max_bytes: 32 * 1024 * 1024,
        }
    }
}

impl ForwardAuthConfig {
    /// The absolute URL of the identity endpoint: `url` on `upstream` when it
    /// is a path, else `url` itself.
    pub fn endpoint(&self, upstream: &UpstreamUrl) -> Result<http::Uri, ConfigError> {
        let invalid = |reason: String| ConfigError::invalid("identity.forward_auth.url", reason);
        let url = &self.url;
        let absolute = if url.starts_with('/') {
            format!("http://{}{url}", upstream.authority)
        } else if url.starts_with("http://") {
            url.clone()
        } else if url.starts_with("https://") {
            return Err(invalid(format!(
                "{url:?}: https is not supported; use a path on upstream or http://host:port/path"
            )));
        } else {
            return Err(invalid(format!(
                "{url:?}: expected a path such as \"/api/quota/identity/\" or http://host:port/path"
            )));
        };
        let uri: http::Uri = absolute
            .parse()
            .map_err(|e| invalid(format!("{url:?} is not a URL ({e})")))?;
        if uri.authority().is_none() {
            return Err(invalid(format!("{url:?}: missing host")));
        }
        Ok(uri)
    }
}

/// `[identity.jwt]`: verify a JSON Web Token. Exactly one key source is set:
/// `secret_env` or `secret_file` (HMAC, e.g. djangorestframework-simplejwt
/// signing with Django's `SECRET_KEY`), `public_key_file` (a PEM public key)
/// or `jwks_file` (a local JWK set, keys chosen by `kid`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Environment variable holding the HMAC secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_env: Option<String>,
    /// File holding the HMAC secret (one trailing newline is ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// PEM public key (RSA, EC P-256/P-384 or Ed25519).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// JSON Web Key Set file (`{"keys": […]}`) of public keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// Algorithms accepted, e.g. `["HS256"]`; empty = every algorithm the
    /// key kind can verify. `none` is never accepted, and HMAC algorithms
    /// never with a public key.
    pub algorithms: Vec<String>,
    /// Cookie read for the token when there is no `Authorization: Bearer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Required `iss` claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim. When unset, tokens that carry an `aud` are
    /// refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (whole seconds).
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim with the user id (a string or an integer).
    pub user_id_claim: String,
    /// Claim with the plan name; the plan table decides when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_claim: Option<String>,
    /// Claim with the daily limit, overriding the plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_claim: Option<String>,
    /// Claim with the weekly limit, overriding the plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weekly_claim: Option<String>,
    /// Claim with the monthly limit, overriding the plan's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_claim: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret_env: None,
            secret_file: None,
            public_key_file: None,
            jwks_file: None,
            algorithms: Vec::new(),
            cookie: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            user_id_claim: "user_id".to_owned(),
            plan_claim: None,
            daily_claim: None,
            weekly_claim: None,
            monthly_claim: None,
        }
    }
}

/// The kind of key `[identity.jwt]` verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtKeySource {
    /// A shared HMAC secret (`secret_env`, `secret_file`).
    Secret,
    /// Public keys (`public_key_file`, `jwks_file`).
    PublicKey,
}

impl JwtConfig {
    /// The configured key source, checked to be exactly one.
    pub fn key_source(&self) -> Result<JwtKeySource, ConfigError> {
        let set: Vec<&str> = [
            ("secret_env", self.secret_env.is_some()),
            ("secret_file", self.secret_file.is_some()),
            ("public_key_file", self.public_key_file.is_some()),
            ("jwks_file", self.jwks_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        match set.as_slice() {
            ["secret_env" | "secret_file"] => Ok(JwtKeySource::Secret),
            [_] => Ok(JwtKeySource::PublicKey),
            [] => Err(ConfigError::invalid(
                "identity.jwt",
                "kind = \"jwt\" needs a key: set one of secret_env, secret_file, \
                 public_key_file or jwks_file",
            )),
            several => Err(ConfigError::invalid(
                format!("identity.jwt.{}", several[1]),
                format!(
                    "only one key source may be set, found {}",
                    several.join(", ")
                ),
            )),
        }
    }

    /// The `algorithms` list, parsed and checked against the key source:
    /// `none` is refused, and so is HMAC with a public key (key confusion).
    /// Empty when every algorithm of the key's kind is accepted.
    pub fn allowed_algorithms(&self) -> Result<Vec<jsonwebtoken::Algorithm>, ConfigError> {
        let source = self.key_source()?;
        let hmac = jsonwebtoken::AlgorithmFamily::Hmac.algorithms();
        let mut out = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            let invalid = |reason: String| ConfigError::invalid("identity.jwt.algorithms", reason);
            if name.eq_ignore_ascii_case("none") {
                return Err(invalid(
                    "\"none\" (unsigned tokens) is never accepted".to_owned(),
                ));
            }
            let alg: jsonwebtoken::Algorithm = name.parse().map_err(|_| {
                invalid(format!(
                    "{name:?} is not an algorithm; expected HS256, HS384, HS512, RS256, RS384, \
                     RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA"
                ))
            })?;
            match (source, hmac.contains(&alg)) {
                (JwtKeySource::Secret, false) => {
                    return Err(invalid(format!(
                        "{name} needs a public key, but a secret is configured; use HS256, HS384 \
                         or HS512"
                    )));
                }
                (JwtKeySource::PublicKey, true) => {
                    return Err(invalid(format!(
                        "{name} is refused with a public key (a token signed with the public key \
                         as an HMAC secret would pass); use RS*, PS*, ES* or EdDSA"
                    )));
                }
                _ => out.push(alg),
            }
        }
        Ok(out)
    }
}

/// One route to inspect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// HTTP method, e.g. `POST`.
    pub method: Method,
    /// Path pattern in Django's `path()` syntax, as in `urls.py`
    /// (`chat/session/<int:session_id>/send/`; a leading `/` is optional),
    /// or `{name}` for one segment; see `docs/routes.md`.
    pub path: String,
    /// Name of the field that asks for an image.
    #[serde(default = "default_flag")]
    pub flag: String,
    /// How the backend reads the flag's value.
    #[serde(default)]
    pub flag_rules: FlagRules,
    /// Status of a denial: 403 for Django's web views, 429 for its API.
    #[serde(default = "default_deny_status")]
    pub deny_status: u16,
    /// A message for every period's denial on this route, overriding
    /// `[messages]`; `{limit}` and `{period}` are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// An upstream endpoint that says whether a request on this route will
    /// generate images whatever its flag says (e.g. image-editing sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeConfig>,
}

/// A probe: `GET path` on the upstream, with the client's credentials,
/// answering JSON whose `json_field` is true for requests that will generate
/// images even without the flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Path on the upstream; `<int:name>` or `{name}` is the route's path
    /// parameter of that name, in its canonical form, e.g.
    /// `/chat/session/<int:session_id>/image-generation-access/`.
    pub path: String,
    /// Top-level JSON field that is `true` for image-generating requests.
    #[serde(default = "default_probe_field")]
    pub json_field: String,
    /// How long an answer is reused for the same path and user.
    #[serde(default = "default_probe_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Request headers passed on to the probe (the client's credentials).
    #[serde(default = "default_probe_headers")]
    pub forward_headers: Vec<String>,
    /// Longest wait for the probe's answer; a probe that fails or times out
    /// counts the request as asking for an image (it is checked, and
    /// released if no image is saved).
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_probe_field() -> String {
    "has_access".to_owned()
}

fn default_probe_ttl() -> Duration {
    Duration::from_secs(600)
}

fn default_probe_headers() -> Vec<String> {
    vec!["cookie".to_owned(), "authorization".to_owned()]
}

fn default_flag() -> String {
    "generate_image".to_owned()
}

fn default_deny_status() -> u16 {
    429
}

/// How the upstream reports that it saved images.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Response header carrying the count; removed before the client sees
    /// it. Empty string = not read.
    pub report_header: String,
    /// Top-level field of a JSON response carrying a count, a boolean or an
    /// array. Empty string = not read.
    pub report_json_field: String,
    /// Largest JSON response parsed for the field; larger ones stream on
    /// unread.
    pub max_json_bytes: u64,
    /// `requests`: +1 per response that saved images; `images`: + the count.
    pub count: CountMode,
    /// Markers around an in-band report at the end of a streamed body, e.g.
    /// `[IMAGES_SAVED]{"count": 1}[IMAGES_SAVED_END]`. Unset = not scanned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_marker: Option<ReportMarker>,
    /// Remove in-band markers from what the client receives.
    pub strip_marker: bool,
    /// Server-Sent Events event type whose data is a report, e.g.
    /// `images_saved`. Empty = not read.
    pub report_sse_event: String,
    /// Request header carrying a fresh random token to the upstream on
    /// every inspected request (a client's own is removed from every
    /// request). Empty = no token sent.
    pub report_token_header: String,
    /// In-band reports (markers, SSE events) count only when their JSON
    /// carries the request's token: the app echoes what users type.
    pub require_report_token: bool,
    /// Largest count one response may report; a larger, negative,
    /// fractional or non-numeric count is a malformed report (counted as 1
    /// when the response otherwise succeeded).
    pub max_images_per_response: u64,
}

/// The start and end markers of an in-band report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportMarker {
    /// Text that opens a report, e.g. `[IMAGES_SAVED]`.
    pub start: String,
    /// Text that closes it, e.g. `[IMAGES_SAVED_END]`.
    pub end: String,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            report_header: "X-Images-Saved".to_owned(),
            report_json_field: "images_saved".to_owned(),
            max_json_bytes: 1024 * 1024,
            count: CountMode::Requests,
            report_marker: None,
            strip_marker: true,
            report_sse_event: String::new(),
            report_token_header: "X-Quota-Report-Token".to_owned(),
            require_report_token: true,
            max_images_per_response: 16,
        }
    }
}

/// Denial message templates; `{limit}` is replaced by the period's limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Messages {
    /// When the daily limit is reached.
    pub daily: String,
    /// When the weekly limit is reached.
    pub weekly: String,
    /// When the monthly limit is reached.
    pub monthly: String,
    /// Add `period`, `limit` and `retry_after` to the denial body beside
    /// `error`; `false` makes the body exactly `{"error": "<message>"}`.
    pub details: bool,
}

impl Default for Messages {
    fn default() -> Self {
        Self {
            daily: "شما به حد مجاز تولید تصویر روزانه ({limit} عدد) رسیده‌اید".to_owned(),
            weekly: "شما به حد مجاز تولید تصویر هفتگی ({limit} عدد) رسیده‌اید".to_owned(),
            monthly: "شما به حد مجاز تولید تصویر ماهانه ({limit} عدد) رسیده‌اید".to_owned(),
            details: true,
        }
    }
}

impl StoreConfig {
    /// Checks the Redis topology: one of `url`, `cluster`, `sentinel`, with
    /// Redis URLs.
    fn validate_redis(&self) -> Result<(), ConfigError> {
        fn redis_url(field: String, url: &str) -> Result<(), ConfigError> {
            if url.starts_with("redis://") || url.starts_with("rediss://") {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    field,
                    format!("expected redis:// or rediss://, got {:?}", mask_url(url)),
                ))
            }
        }
        match (&self.cluster[..], &self.sentinel) {
            ([_, ..], Some(_)) => Err(ConfigError::invalid(
                "store.sentinel",
                "set either store.cluster or store.sentinel, not both",
            )),
            ([], None) => redis_url("store.url".to_owned(), &self.url),
            (nodes, None) => nodes
                .iter()
                .enumerate()
                .try_for_each(|(i, url)| redis_url(format!("store.cluster[{i}]"), url)),
            ([], Some(sentinel)) => {
                if sentinel.master.is_empty() {
                    return Err(ConfigError::invalid(
                        "store.sentinel.master",
                        "must name the master Sentinel watches",
                    ));
                }
                if sentinel.nodes.is_empty() {
                    return Err(ConfigError::invalid(
                        "store.sentinel.nodes",
                        "must list at least one Sentinel, e.g. [\"redis://127.0.0.1:26379\"]",
                    ));
                }
                sentinel
                    .nodes
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, url)| redis_url(format!("store.sentinel.nodes[{i}]"), url))
            }
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`, then resolves what
    /// it names outside itself: secrets, a writable spool directory
    /// ([`Config::resolve_environment`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        config.resolve_environment()?;
        Ok(config)
    }

    /// Parses and validates a config from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML, defaults filled in and secrets masked (what
    /// `check-config` prints).
    pub fn to_toml(&self) -> String {
        toml::Value::try_from(self)
            .map(validate::masked)
            .and_then(|value| toml::to_string_pretty(&value))
            .unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }

    /// Checks what types alone cannot: references between fields and ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid("max_body_bytes", "must be above 0"));
        }
        if self.body_budget_bytes < self.max_body_bytes {
            return Err(ConfigError::invalid(
                "body_budget_bytes",
                format!(
                    "{} is below max_body_bytes ({}): a body of the largest allowed size \
                     could never be held",
                    self.body_budget_bytes, self.max_body_bytes
                ),
            ));
        }
        // spool_dir is checked (a writable directory) with the machine, in
        // `resolve_environment`.
        for (field, d) in [
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.response_head", self.timeouts.response_head),
            ("timeouts.idle", self.timeouts.idle),
            ("timeouts.client_body", self.timeouts.client_body),
            ("store.reservation_ttl", self.store.reservation_ttl),
            ("store.command_timeout", self.store.command_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(field, "must be longer than 0s"));
            }
        }
        if self.store.kind == StoreKind::Redis {
            self.store.validate_redis()?;
        }
        if self.store.breaker.failures == 0 {
            return Err(ConfigError::invalid(
                "store.breaker.failures",
                "must be at least 1",
            ));
        }
        if self.store.breaker.open_for.is_zero() {
            return Err(ConfigError::invalid(
                "store.breaker.open_for",
                "must be longer than 0s",
            ));
        }
        for (field, n) in [
            ("store.settle_queue", self.store.settle_queue),
            ("store.local_max_users", self.store.local_max_users),
        ] {
            if n == 0 {
                return Err(ConfigError::invalid(field, "must be above 0"));
            }
        }
        if self.store.memory_max_users == 0 {
            return Err(ConfigError::invalid(
                "store.memory_max_users",
                "must be above 0",
            ));
        }
        if let Some(plan) = &self.identity.default_plan
            && !self.plans.contains_key(plan)
        {
            return Err(ConfigError::invalid(
                "identity.default_plan",
                format!(
                    "plan {plan:?} is not in [plans] (known: {})",
                    self.plan_names()
                ),
            ));
        }
        for (field, header) in [
            ("identity.user_header", &self.identity.user_header),
            ("identity.plan_header", &self.identity.plan_header),
        ] {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    field,
                    format!("{header:?} is not a valid header name"),
                ));
            }
        }
        match self.identity.kind {
            IdentityKind::Header => {}
            IdentityKind::ForwardAuth => self.validate_forward_auth()?,
            IdentityKind::Jwt => self.validate_jwt()?,
        }
        if !self.usage.report_header.is_empty()
            && http::HeaderName::from_bytes(self.usage.report_header.as_bytes()).is_err()
        {
            return Err(ConfigError::invalid(
                "usage.report_header",
                format!("{:?} is not a valid header name", self.usage.report_header),
            ));
        }
        if let Some(marker) = &self.usage.report_marker
            && (marker.start.is_empty() || marker.end.is_empty())
        {
            return Err(ConfigError::invalid(
                "usage.report_marker",
                "start and end must both be non-empty",
            ));
        }
        self.validate_report_token()?;
        for (i, route) in self.routes.iter().enumerate() {
            if !(400..=599).contains(&route.deny_status) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].deny_status"),
                    format!("expected a 4xx or 5xx status, got {}", route.deny_status),
                ));
            }
            if route.flag.is_empty() {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].flag"),
                    "must not be empty",
                ));
            }
        }
        crate::routes::RouteTable::new(&self.routes)?;
        crate::routes::RoutingHeaders::new(&self.strip_routing_headers)
            .map_err(|e| ConfigError::invalid("strip_routing_headers", e))?;
        self.validate_operations()?;
        self.validate_rules()?;
        Ok(())
    }

    /// Checks the report token and count bound of `[usage]`.
    fn validate_report_token(&self) -> Result<(), ConfigError> {
        let usage = &self.usage;
        if !usage.report_token_header.is_empty()
            && http::HeaderName::from_bytes(usage.report_token_header.as_bytes()).is_err()
        {
            return Err(ConfigError::invalid(
                "usage.report_token_header",
                format!("{:?} is not a valid header name", usage.report_token_header),
            ));
        }
        let in_band = usage.report_marker.is_some() || !usage.report_sse_event.is_empty();
        if in_band && usage.require_report_token && usage.report_token_header.is_empty() {
            return Err(ConfigError::invalid(
                "usage.report_token_header",
                "must be set while usage.require_report_token is true (or set that to false, \
                 and any user who can make the app echo text can report images)",
            ));
        }
        if usage.max_images_per_response == 0 {
            return Err(ConfigError::invalid(
                "usage.max_images_per_response",
                "must be above 0",
            ));
        }
        Ok(())
    }

    /// Checks `shutdown_grace`, `[admin]` and `[log]`.
    fn validate_operations(&self) -> Result<(), ConfigError> {
        if self.shutdown_grace.is_zero() {
            return Err(ConfigError::invalid(
                "shutdown_grace",
                "must be longer than 0s",
            ));
        }
        // Port 0 asks the system for a free port: two of them never collide.
        if self.admin.listen == self.listen && self.listen.port() != 0 {
            return Err(ConfigError::invalid(
                "admin.listen",
                format!(
                    "{} is also the proxy's listen address; give the admin listener its own port",
                    self.admin.listen
                ),
            ));
        }
        match (&self.admin.token_env, &self.admin.token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "admin.token_env",
                    "set admin.token_env or admin.token_file, not both",
                ));
            }
            (Some(name), None) if name.is_empty() || name.contains('=') => {
                return Err(ConfigError::invalid(
                    "admin.token_env",
                    format!("{name:?} is not an environment variable name"),
                ));
            }
            _ => {}
        }
        crate::telemetry::parse_filter(&self.log.filter)
            .map_err(|reason| ConfigError::invalid("log.filter", reason))?;
        Ok(())
    }

    fn validate_forward_auth(&self) -> Result<(), ConfigError> {
        let fa = &self.identity.forward_auth;
        fa.endpoint(&self.upstream)?;
        if fa.forward_headers.is_empty() {
            return Err(ConfigError::invalid(
                "identity.forward_auth.forward_headers",
                "must name at least one header, e.g. [\"Cookie\", \"Authorization\"]",
            ));
        }
        for (i, header) in fa.forward_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                return Err(ConfigError::invalid(
                    format!("identity.forward_auth.forward_headers[{i}]"),
                    format!("{header:?} is not a valid header name"),
                ));
            }
        }
        if fa.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "identity.forward_auth.timeout",
                "must be longer than 0s",
            ));
        }
        if fa.cache_max_entries == 0 {
            return Err(ConfigError::invalid(
                "identity.forward_auth.cache_max_entries",
                "must be above 0 (set cache_ttl = \"0s\" to turn the cache off)",
            ));
        }
        if fa.cache_max_bytes == 0 {
            return Err(ConfigError::invalid(
                "identity.forward_auth.cache_max_bytes",
                "must be above 0 (set cache_ttl = \"0s\" to turn the cache off)",
            ));
        }
        Ok(())
    }

    fn validate_jwt(&self) -> Result<(), ConfigError> {
        let jwt = &self.identity.jwt;
        jwt.allowed_algorithms()?;
        for (field, value) in [
            ("identity.jwt.secret_env", jwt.secret_env.as_deref()),
            ("identity.jwt.cookie", jwt.cookie.as_deref()),
            ("identity.jwt.issuer", jwt.issuer.as_deref()),
            ("identity.jwt.audience", jwt.audience.as_deref()),
            (
                "identity.jwt.user_id_claim",
                Some(jwt.user_id_claim.as_str()),
            ),
            ("identity.jwt.plan_claim", jwt.plan_claim.as_deref()),
            ("identity.jwt.daily_claim", jwt.daily_claim.as_deref()),
            ("identity.jwt.weekly_claim", jwt.weekly_claim.as_deref()),
            ("identity.jwt.monthly_claim", jwt.monthly_claim.as_deref()),
        ] {
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    field,
                    "must not be empty; leave it out instead",
                ));
            }
        }
        if let Some(cookie) = &jwt.cookie
            && !cookie
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
        {
            return Err(ConfigError::invalid(
                "identity.jwt.cookie",
                format!("{cookie:?} is not a valid cookie name"),
            ));
        }
        Ok(())
    }

    fn plan_names(&self) -> String {
        if self.plans.is_empty() {
            return "none".to_owned();
        }
        self.plans.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests;
