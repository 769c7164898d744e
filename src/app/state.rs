//! The running process's state (phases: startup, reload, shutdown): the
//! config in force with its store and admin token, readiness, and reload.
//!
//! A reload re-reads the config file and swaps in what changed: plans,
//! routes, messages, identity and usage settings, periods, the admin token,
//! and a Redis store whose connection settings changed. A file that does
//! not load, a token that cannot be read or a store that cannot be reached
//! keeps the running config. What cannot change while running (listeners,
//! threads, upstream, timeouts, log, grace, a memory store's settings) is kept and
//! reported as needing a restart; listeners and store connections that did
//! not change are never touched.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::time::Instant;

use crate::admin::{AdminToken, TokenError};
use crate::config::{Config, ConfigError, StoreKind};
use crate::quota::QuotaLayer;
use crate::store::{QuotaStore, StoreError};

/// Longest wait for the store's answer to a readiness check.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The config in force, and what was made from it.
pub struct Current {
    /// The config.
    pub config: Config,
    /// The store usage is counted in (timed for metrics).
    pub store: Arc<dyn QuotaStore>,
    /// The admin API token; `None` = the `/v1/` API is off.
    pub token: Option<AdminToken>,
}

/// Why a reload was refused; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The admin token cannot be read.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The new store cannot be reached.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// What a successful reload changed.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    /// Changed settings that only a restart applies; the old values stay
    /// in force.
    pub restart_required: Vec<&'static str>,
    /// True when a new store connection was opened.
    pub store_reconnected: bool,
}

/// Why the proxy is not ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// A shutdown has begun.
    #[error("draining: shutting down")]
    Draining,
    /// The store does not answer.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The store did not answer in time.
    #[error("store: no answer within {0:?}")]
    Timeout(Duration),
}

/// The running process, shared by the admin listener, the signal handler
/// and the shutdown sequence.
pub struct AppState {
    config_path: PathBuf,
    current: ArcSwap<Current>,
    layer: QuotaLayer,
    metrics: Option<PrometheusHandle>,
    /// When the drain began; set once.
    drain_started: OnceLock<Instant>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

impl AppState {
    /// The state of a process serving `current` through `layer`, reloading
    /// from `config_path`.
    pub fn new(
        config_path: PathBuf,
        current: Current,
        layer: QuotaLayer,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        Self {
            config_path,
            current: ArcSwap::from_pointee(current),
            layer,
            metrics,
            drain_started: OnceLock::new(),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The config in force.
    pub fn current(&self) -> Arc<Current> {
        self.current.load_full()
    }

    /// Marks the start of a drain: readiness fails from now on. Returns
    /// when the drain began (the first call's instant).
    pub fn start_drain(&self) -> Instant {
        *self.drain_started.get_or_init(Instant::now)
    }

    /// When the drain began, if it has.
    pub fn drain_started(&self) -> Option<Instant> {
        self.drain_started.get().copied()
    }

    /// Ready: not draining, and the store answers.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        if self.drain_started().is_some() {
            return Err(NotReady::Draining);
        }
        let store = Arc::clone(&self.current().store);
        match tokio::time::timeout(READINESS_TIMEOUT, store.ping()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(NotReady::Timeout(READINESS_TIMEOUT)),
        }
    }

    /// The Prometheus text exposition, or `None` when no recorder of ours
    /// is installed.
    pub fn render_metrics(&self) -> Option<String> {
        let handle = self.metrics.as_ref()?;
        crate::metrics::settlements_pending("in_flight", self.layer.settlements().len());
        Some(handle.render())
    }

    /// Re-reads the config file and swaps in what changed (see the module
    /// docs). Logs the outcome either way.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let result = self.try_reload().await;
        crate::metrics::reload(result.is_ok());
        match &result {
            Ok(reloaded) => tracing::info!(
                path = %self.config_path.display(),
                restart_required = ?reloaded.restart_required,
                store_reconnected = reloaded.store_reconnected,
                "config reloaded"
            ),
            Err(e) => tracing::warn!(
                path = %self.config_path.display(),
                error = %e,
                "config reload failed; keeping the running config"
            ),
        }
        result
    }

    async fn try_reload(&self) -> Result<Reloaded, ReloadError> {
        let next = Config::load(&self.config_path)?;
        let token = AdminToken::from_config(&next.admin)?;
        let current = self.current();
        let running = &current.config;
        let mut restart_required = Vec::new();
        for (field, changed) in [
            ("listen", differs(&running.listen, &next.listen)),
            (
                "admin.listen",
                differs(&running.admin.listen, &next.admin.listen),
            ),
            ("upstream", differs(&running.upstream, &next.upstream)),
            ("timeouts", differs(&running.timeouts, &next.timeouts)),
            (
                "shutdown_grace",
                running.shutdown_grace != next.shutdown_grace,
            ),
            ("threads", running.threads != next.threads),
            ("log", differs(&running.log, &next.log)),
        ] {
            if changed {
                restart_required.push(field);
            }
        }
        let mut store_reconnected = false;
        let store = if connection(running) == connection(&next) {
            Arc::clone(&current.store)
        } else if next.store.kind == StoreKind::Redis {
            store_reconnected = true;
            crate::metrics::TimedStore::wrap(crate::app::open_store(&next).await?.store)
        } else {
            // A new memory store would start from zero: keep the counts.
            restart_required.push("store");
            Arc::clone(&current.store)
        };
        let builder = crate::quota::QuotaLayer::builder(&next)?.store(Arc::clone(&store));
        self.layer.reload(builder);
        self.current.store(Arc::new(Current {
            config: next,
            store,
            token,
        }));
        Ok(Reloaded {
            restart_required,
            store_reconnected,
        })
    }
}

/// True when two config values serialize differently.
fn differs<T: Serialize>(a: &T, b: &T) -> bool {
    toml::Value::try_from(a).ok() != toml::Value::try_from(b).ok()
}

/// The `[store]` settings that need a new connection when they change:
/// all but the ones the quota layer reads per request.
fn connection(config: &Config) -> Option<toml::Value> {
    let mut value = toml::Value::try_from(&config.store).ok()?;
    if let Some(table) = value.as_table_mut() {
        table.remove("on_store_error");
        table.remove("reservation_ttl");
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_request_store_settings_need_no_new_connection() {
        let a = Config::default();
        let mut b = a.clone();
        b.store.reservation_ttl = Duration::from_secs(1);
        b.store.on_store_error = crate::config::StoreErrorPolicy::Deny;
        assert_eq!(connection(&a), connection(&b));
        b.store.key_prefix = "other:".to_owned();
        assert_ne!(connection(&a), connection(&b));
        assert!(differs(&a.listen, &"127.0.0.1:1".parse().expect("addr")));
    }
}
