//! The running process's state (phases: startup, reload, shutdown): the
//! config in force with its store and admin token, readiness, the store's
//! health, and reload.
//!
//! Readiness means "this pod can serve its app": it fails while draining,
//! and depends on the store only when `admin.ready_requires_store` is set.
//! The store's state is shown by `/healthz` and two gauges instead.
//!
//! A reload re-reads the config file and swaps in what changed: plans,
//! routes, messages, identity and usage settings, periods, the admin token,
//! and a Redis store whose connection settings (or `local`-ness of
//! `on_store_error`) changed. A file that does not load, a token that
//! cannot be read or a new store that cannot be reached keeps the running
//! config. What cannot change while running (listeners, threads, upstream,
//! timeouts, log, tracing, grace, a memory store's settings) is kept and reported as
//! needing a restart; listeners and store connections that did not change
//! are never touched.
//!
//! A store swapped out is *retired*, not dropped: its settle queue keeps
//! draining to its Redis, and the shutdown flushes it with the one in force,
//! so after any number of reloads every queued settle is flushed and
//! measured (`quota_proxy_settlements_pending{stage="retry_queue"}`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::time::Instant;

use super::{AdminToken, TokenError};
use crate::config::{Config, ConfigError, StoreErrorPolicy, StoreKind};
use crate::quota::QuotaLayer;
use crate::store::{Opening, QuotaStore, ResilientStore, StoreError, StoreHealth, open_store};

/// Longest wait for the store's answer to a readiness check.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

/// The config in force, and what was made from it.
pub struct Current {
    /// The config.
    pub config: Config,
    /// The store usage is counted in (timed for metrics).
    pub store: Arc<dyn QuotaStore>,
    /// The same store's outage handling (settle queue, breaker, health);
    /// `None` for the memory store.
    pub resilient: Option<Arc<ResilientStore>>,
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
    /// Stores swapped out by reloads, still draining their settle queues.
    retired: Mutex<Retired>,
}

/// Stores a reload swapped out, kept until nothing uses them and their
/// queue is empty.
#[derive(Default)]
struct Retired {
    stores: Vec<Arc<ResilientStore>>,
    /// Settles dropped by retired stores already let go.
    dropped: u64,
}

impl Retired {
    /// Lets go of the stores nobody else holds whose queue is empty.
    fn prune(&mut self) {
        let dropped = &mut self.dropped;
        self.stores.retain(|store| {
            let done = Arc::strong_count(store) == 1 && store.pending_settles() == 0;
            if done {
                *dropped += store.dropped_settles();
            }
            !done
        });
    }
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
            retired: Mutex::new(Retired::default()),
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

    /// Ready: not draining, and, only when `admin.ready_requires_store` is
    /// set, the store answers a ping.
    pub async fn readiness(&self) -> Result<(), NotReady> {
        if self.drain_started().is_some() {
            return Err(NotReady::Draining);
        }
        let current = self.current();
        if !current.config.admin.ready_requires_store {
            return Ok(());
        }
        let store = Arc::clone(&current.store);
        match tokio::time::timeout(READINESS_TIMEOUT, store.ping()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(NotReady::Timeout(READINESS_TIMEOUT)),
        }
    }

    /// The health of the store in force, without calling it.
    pub fn store_health(&self) -> StoreHealth {
        match &self.current().resilient {
            Some(resilient) => resilient.health(),
            None => StoreHealth::memory(),
        }
    }

    /// Pings the store in force (bounded), so its health stays current
    /// while no request calls it, and a Redis that came back closes the
    /// breaker and drains the settle queue without waiting for traffic.
    pub async fn check_store(&self) {
        let current = self.current();
        if current.resilient.is_some() {
            let store = Arc::clone(&current.store);
            // The outcome is recorded by the store itself.
            let _ = tokio::time::timeout(READINESS_TIMEOUT, store.ping()).await;
        }
    }

    /// Settles queued for Redis, in the store in force and in retired ones.
    pub fn pending_settles(&self) -> usize {
        let mut retired = self.retired();
        retired.prune();
        let current = self.current();
        current
            .resilient
            .iter()
            .chain(retired.stores.iter())
            .map(|s| s.pending_settles())
            .sum()
    }

    /// Settles given up on since start, by every store this process used.
    pub fn dropped_settles(&self) -> u64 {
        let retired = self.retired();
        let current = self.current();
        retired.dropped
            + current
                .resilient
                .iter()
                .chain(retired.stores.iter())
                .map(|s| s.dropped_settles())
                .sum::<u64>()
    }

    /// Sends the settles queued in the store in force and in every retired
    /// one to their Redis until `deadline`; returns how many were not known
    /// to have landed.
    pub async fn flush_stores(&self, deadline: Instant) -> usize {
        let stores: Vec<Arc<ResilientStore>> = {
            let retired = self.retired();
            self.current()
                .resilient
                .iter()
                .chain(retired.stores.iter())
                .cloned()
                .collect()
        };
        let flushes = stores.iter().map(|store| store.flush(deadline));
        futures_util::future::join_all(flushes)
            .await
            .into_iter()
            .sum()
    }

    fn retired(&self) -> std::sync::MutexGuard<'_, Retired> {
        self.retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The Prometheus text exposition, or `None` when no recorder of ours
    /// is installed.
    pub fn render_metrics(&self) -> Option<String> {
        let handle = self.metrics.as_ref()?;
        crate::counters::settlements_pending("in_flight", self.layer.settlements().len());
        crate::metrics::store_health(&self.store_health());
        crate::metrics::log_lines_dropped(crate::telemetry::dropped_log_lines());
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
        if next.routes.is_empty() && !running.routes.is_empty() {
            // A file cut while it was written (an attack session reloaded
            // one cut before its routes): nothing would be checked.
            return Err(ConfigError::invalid(
                "routes",
                "the new file has no [[routes]], so nothing would be checked; \
                 write the config whole (to a temporary file, then rename it) and reload again",
            )
            .into());
        }
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
            (
                "max_connections",
                running.max_connections != next.max_connections,
            ),
            (
                "max_connections_per_ip",
                running.max_connections_per_ip != next.max_connections_per_ip,
            ),
            ("log", differs(&running.log, &next.log)),
            ("tracing", differs(&running.tracing, &next.tracing)),
        ] {
            if changed {
                restart_required.push(field);
            }
        }
        // What needs a restart keeps its running value, in the layer built
        // now as in the config later reloads compare with.
        let mut next = next;
        next.listen = running.listen;
        next.admin.listen = running.admin.listen;
        next.upstream = running.upstream.clone();
        next.timeouts = running.timeouts.clone();
        next.shutdown_grace = running.shutdown_grace;
        next.threads = running.threads;
        next.max_connections = running.max_connections;
        next.max_connections_per_ip = running.max_connections_per_ip;
        next.log = running.log.clone();
        next.tracing = running.tracing.clone();
        let mut store_reconnected = false;
        let kept = (Arc::clone(&current.store), current.resilient.clone());
        let (store, resilient) = if connection(running) == connection(&next) {
            kept
        } else if next.store.kind == StoreKind::Redis && running.store.kind == StoreKind::Redis {
            store_reconnected = true;
            let opened = open_store(&next, Opening::MustAnswer).await?;
            (
                crate::metrics::TimedStore::wrap(opened.store),
                opened.resilient,
            )
        } else {
            // A memory store's counts (and the settles of the answers still
            // streaming) would be lost to a new store of either kind, which
            // starts from zero: kept until a restart.
            restart_required.push("store");
            next.store = running.store.clone();
            kept
        };
        let builder = crate::quota::QuotaLayer::builder(&next)?.store(Arc::clone(&store));
        self.layer.reload(builder);
        if store_reconnected {
            let mut retired = self.retired();
            retired.prune();
            // Still draining its queue to the old Redis; flushed at
            // shutdown with the new one.
            retired.stores.extend(current.resilient.clone());
        }
        self.current.store(Arc::new(Current {
            config: next,
            store,
            resilient,
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
        // `allow` and `deny` are read per request; `local` is built into
        // the store (its memory count), so only that difference counts.
        let local = config.store.on_store_error == StoreErrorPolicy::Local;
        table.insert("on_store_error".to_owned(), toml::Value::Boolean(local));
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
        b.store.reservation_ttl = crate::config::NonZeroDuration::from_secs(1);
        b.store.on_store_error = crate::config::StoreErrorPolicy::Deny;
        assert_eq!(connection(&a), connection(&b));
        b.store.on_store_error = crate::config::StoreErrorPolicy::Local;
        assert_ne!(connection(&a), connection(&b), "local is built in");
        b.store.on_store_error = crate::config::StoreErrorPolicy::Deny;
        b.store.key_prefix = "other:".to_owned();
        assert_ne!(connection(&a), connection(&b));
        assert!(differs(&a.listen, &"127.0.0.1:1".parse().expect("addr")));
    }
}
