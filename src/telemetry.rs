//! Logging (phase: every phase): `tracing` to stderr, as readable lines or
//! one JSON object per line (`[log] format`), filtered by `[log] filter`
//! unless `RUST_LOG` is set.
//!
//! What is logged: one line per inspected request (route, user, decision,
//! period when denied, upstream status, images, latency), startup, reloads
//! and shutdown. Never cookies, tokens, `Authorization` headers or bodies:
//! no code in this crate puts a header value or a body in a log field.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat, parse_log_filter};

/// Installs the global subscriber for `config`; later calls do nothing.
///
/// `RUST_LOG`, when set and not empty, replaces `config.filter`; a
/// `RUST_LOG` that does not parse is reported on stderr and ignored.
pub fn init(config: &LogConfig) {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = match from_env.as_deref().map(parse_log_filter) {
        Some(Ok(filter)) => filter,
        Some(Err(reason)) => {
            eprintln!("quota-proxy: RUST_LOG ignored: {reason}");
            configured(&config.filter)
        }
        None => configured(&config.filter),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The configured filter (validated with the config), or `info`.
fn configured(filter: &str) -> EnvFilter {
    parse_log_filter(filter).unwrap_or_else(|_| EnvFilter::new("info"))
}
