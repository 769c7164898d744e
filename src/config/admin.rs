//! The operator's sections (phase: startup, and every reload): `[admin]`
//! (the admin listener and its token), `[log]`, and their checks together
//! with `shutdown_grace`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use tracing_subscriber::EnvFilter;

use super::{Config, ConfigError};

/// The admin listener: `/healthz`, `/readyz`, `/metrics`, and the usage API
/// under `/v1/` when a token is configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, fields at the top level, for log collectors.
    Json,
}

/// Parses a `RUST_LOG`-style filter, or says why it cannot be used.
pub fn parse_log_filter(filter: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder().parse(filter).map_err(|e| {
        format!("{filter:?} is not a log filter ({e}); e.g. \"info\" or \"quota_proxy=debug,info\"")
    })
}

/// Logs: one line per inspected request, and the proxy's own events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl Config {
    /// Checks `[admin]` and `[log]`.
    pub(super) fn validate_operations(&self) -> Result<(), ConfigError> {
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
        parse_log_filter(&self.log.filter)
            .map_err(|reason| ConfigError::invalid("log.filter", reason))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_say_why() {
        assert!(parse_log_filter("info").is_ok());
        assert!(parse_log_filter("quota_proxy=debug,hyper=warn").is_ok());
        let err = parse_log_filter("quota_proxy=loud").expect_err("bad level");
        assert!(err.contains("quota_proxy=loud"), "{err}");
    }
}
