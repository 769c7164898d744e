//! The configuration file (phase: startup). One TOML file, every field
//! optional with a default that runs: `config/quota-proxy.toml` documents
//! each one. Values are checked once here, so the rest of the proxy never
//! handles a malformed setting; errors name the field to fix.
//!
//! # Contents
//!
//! This file holds [`Config`] (the top-level fields) and how it is loaded;
//! each section of the file has its own module, and every type is
//! re-exported here:
//!
//! | module | holds |
//! |---|---|
//! | `timeouts` | `[timeouts]`: [`Timeouts`] |
//! | `store` | `[store]`: [`StoreConfig`], [`SentinelConfig`], [`BreakerConfig`] |
//! | `periods` | `[periods]`: [`PeriodsConfig`] |
//! | `identity` | `[identity]`: [`IdentityConfig`], [`ForwardAuthConfig`], [`JwtConfig`] |
//! | `routes` | `[[routes]]`: [`RouteConfig`], [`ProbeConfig`] |
//! | `status` | `[status]`: [`StatusConfig`] |
//! | `usage` | `[usage]`: [`UsageConfig`], [`ReportMarker`] |
//! | `messages` | `[messages]`: [`Messages`] |
//! | `admin` | `[admin]` and `[log]`: [`AdminConfig`], [`LogConfig`] |
//! | `traces` | `[tracing]`: [`TracesConfig`] and its value types |
//! | `types` | value types that parse from what a person writes |
//! | `values` | values that cannot be bad: [`HeaderField`], [`RequiredHeader`], [`NonZeroDuration`], [`ByteSize`], [`NonZeroByteSize`] |
//! | `error` | [`ConfigError`] |
//! | `validate` | [`Config::validate`] and the checks against the machine |

mod admin;
mod error;
mod identity;
mod messages;
mod periods;
mod routes;
mod status;
mod store;
mod timeouts;
mod traces;
mod types;
mod usage;
mod validate;
mod values;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use self::admin::{AdminConfig, LogConfig, LogFormat, parse_log_filter};
pub use self::error::ConfigError;
pub use self::identity::{ForwardAuthConfig, IdentityConfig, JwtConfig, JwtKeySource};
pub use self::messages::Messages;
pub use self::periods::PeriodsConfig;
pub use self::routes::{DEFAULT_ROUTING_HEADERS, ProbeConfig, RouteConfig};
pub use self::status::StatusConfig;
pub use self::store::{BreakerConfig, SentinelConfig, StoreConfig};
pub use self::timeouts::Timeouts;
pub use self::traces::{OTLP_TRACES_PATH, OtlpEndpoint, SampleRatio, ServiceName, TracesConfig};
pub use self::usage::{ReportMarker, UsageConfig};
pub use types::{
    AnonymousPolicy, CountMode, FlagRule, FlagRuleName, FlagRules, FlagTable, IdentityErrorPolicy,
    IdentityKind, Limits, Method, Plan, PlanCase, StoreErrorPolicy, StoreKind, TimeZone,
    UpstreamUrl, UserIdFormat, WeekStart,
};
pub use validate::{STANDARD_METHODS, mask_url};
pub use values::{ByteSize, HeaderField, NonZeroByteSize, NonZeroDuration, RequiredHeader};

/// Where the binary looks for its config when neither `--config` nor
/// `QUOTA_PROXY_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "config/quota-proxy.toml";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// The service every request is forwarded to: `http://host:port`.
    pub upstream: UpstreamUrl,
    /// Largest request body read on an inspected route; larger → 413.
    pub max_body_bytes: NonZeroByteSize,
    /// Bytes of an inspected `multipart/form-data` body kept in memory while
    /// it waits for the decision; the rest goes to a temporary file (nginx's
    /// `client_body_buffer_size`).
    pub body_buffer_bytes: ByteSize,
    /// Directory of those temporary files; the system's temporary directory
    /// when unset. The files are unlinked as they are made, so nothing is
    /// left behind, even after a crash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
    /// Most bytes of request bodies the proxy holds at once, in memory and
    /// in spool files together (inspected bodies, and every body under
    /// `request_buffering = "all"`); a request that finds no room within a
    /// short wait gets 503 with `Retry-After`. See docs/limits.md.
    pub body_budget_bytes: ByteSize,
    /// Which request bodies are received whole before the upstream is
    /// called: `inspected` (only those the proxy must judge), `all` (every
    /// body: slow clients cannot hold the upstream's workers) or `off`.
    pub request_buffering: RequestBuffering,
    /// Most connections open at once, in all; past it, the oldest one is
    /// shut down gracefully to let a new one in. Each idle keep-alive connection
    /// holds about 22 KB: size the memory limit for it (docs/limits.md).
    pub max_connections: std::num::NonZeroU32,
    /// Most connections open at once from one client address; a connection
    /// past it is closed as soon as it is accepted. Unset = no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<std::num::NonZeroU32>,
    /// How long in-flight requests may run on after SIGTERM or SIGINT before
    /// they are cut; pending settlements are then flushed.
    pub shutdown_grace: NonZeroDuration,
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
    /// Plans by name, with their limits (0 = unlimited) and `shadow`.
    pub plans: BTreeMap<String, Plan>,
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
    pub strip_routing_headers: Vec<RequiredHeader>,
    /// Shadow mode everywhere: no request is denied for a reached limit;
    /// it is forwarded, logged as `would deny`, counted as `shadow_denied`
    /// and flagged to the upstream in `shadow_header`. Routes and plans
    /// have their own `shadow` too; any of the three puts a request in
    /// shadow.
    pub shadow: bool,
    /// Request header that tells the upstream a request in shadow mode
    /// would have been denied, and for which period (`daily`, `weekly`,
    /// `monthly`); a client's own header of that name is always removed.
    /// `""` sends none.
    pub shadow_header: HeaderField,
    /// `[status]`: the quota a signed-in user can read about themselves.
    pub status: StatusConfig,
    /// How the upstream reports saved images.
    pub usage: UsageConfig,
    /// Denial messages per period.
    pub messages: Messages,
    /// The admin listener: probes, metrics, usage API, reload.
    pub admin: AdminConfig,
    /// Log format and filter.
    pub log: LogConfig,
    /// Traces of inspected requests, exported over OTLP (`[tracing]`).
    pub tracing: TracesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: UpstreamUrl::default(),
            max_body_bytes: NonZeroByteSize::new(10 * 1024 * 1024),
            body_buffer_bytes: ByteSize::new(1024 * 1024),
            spool_dir: None,
            body_budget_bytes: ByteSize::new(256 * 1024 * 1024),
            request_buffering: RequestBuffering::Inspected,
            max_connections: std::num::NonZeroU32::new(10_000).expect("not zero"),
            max_connections_per_ip: None,
            shutdown_grace: NonZeroDuration::from_secs(30),
            threads: 0,
            timeouts: Timeouts::default(),
            store: StoreConfig::default(),
            periods: PeriodsConfig::default(),
            identity: IdentityConfig::default(),
            plans: BTreeMap::new(),
            routes: Vec::new(),
            extension_methods: Vec::new(),
            strip_routing_headers: DEFAULT_ROUTING_HEADERS
                .map(RequiredHeader::from_static)
                .to_vec(),
            shadow: false,
            shadow_header: HeaderField::from_static("x-quota-shadow-denied"),
            status: StatusConfig::default(),
            usage: UsageConfig::default(),
            messages: Messages::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            tracing: TracesConfig::default(),
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

    /// Parses and validates a config from TOML text. A value its type
    /// refuses is an error naming the field (`timeouts.idle: …`), with the
    /// parser's line and column.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let syntax = |e: toml::de::Error| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        };
        let document = toml::Deserializer::parse(text).map_err(syntax)?;
        let config: Config = serde_path_to_error::deserialize(document).map_err(|e| {
            let field = e.path().to_string();
            match field.as_str() {
                // The document itself: a syntax error or an unknown top-level key.
                "." | "?" => syntax(e.into_inner()),
                _ => ConfigError::invalid(field, e.into_inner().to_string()),
            }
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
}

#[cfg(test)]
mod tests;
