//! `[store]`, `[store.sentinel]` and `[store.breaker]` (phase: admit and
//! settle): where usage is counted, how Redis is reached, and what happens
//! while it cannot be; with the check of the Redis topology.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, NonZeroDuration, StoreErrorPolicy, StoreKind, mask_url};

/// Where usage is counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub reservation_ttl: NonZeroDuration,
    /// Longest wait for one store call (and one connection attempt) before
    /// it counts as a store error.
    pub command_timeout: NonZeroDuration,
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
            reservation_ttl: NonZeroDuration::from_secs(180),
            command_timeout: NonZeroDuration::from_millis(50),
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
    pub open_for: NonZeroDuration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: 5,
            open_for: NonZeroDuration::from_secs(2),
        }
    }
}

impl StoreConfig {
    /// Checks the Redis topology: one of `url`, `cluster`, `sentinel`, with
    /// Redis URLs.
    pub(super) fn validate_redis(&self) -> Result<(), ConfigError> {
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
