//! Opening the store `[store]` names (phases: startup and reload): the
//! memory store, or Redis (one server, Cluster or Sentinel) wrapped in its
//! outage handling ([`ResilientStore`]).

use std::sync::Arc;

use super::{
    BreakerSettings, MemoryStore, OutagePolicy, QuotaStore, RedisOptions, RedisStore,
    ResilientSettings, ResilientStore, StoreError, StoreHealth, Topology,
};
use crate::config::{Config, StoreConfig, StoreErrorPolicy, StoreKind};

/// The store the config names, and the handle a shutdown flushes.
#[derive(Clone)]
pub struct OpenStore {
    /// What the quota layer calls.
    pub store: Arc<dyn QuotaStore>,
    /// The Redis store's outage handling (settle queue, breaker, local
    /// counts), for [`OpenStore::flush`] and metrics; `None` for memory.
    pub resilient: Option<Arc<ResilientStore>>,
}

impl std::fmt::Debug for OpenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenStore")
            .field("resilient", &self.resilient)
            .finish_non_exhaustive()
    }
}

impl OpenStore {
    /// Sends queued settles to Redis until `deadline`; returns how many
    /// were not known to have landed (0 for the memory store).
    pub async fn flush(&self, deadline: tokio::time::Instant) -> usize {
        match &self.resilient {
            Some(resilient) => resilient.flush(deadline).await,
            None => 0,
        }
    }

    /// The store's health, without calling it.
    pub fn health(&self) -> StoreHealth {
        match &self.resilient {
            Some(resilient) => resilient.health(),
            None => StoreHealth::memory(),
        }
    }
}

/// Whether [`open_store`] waits for Redis to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Redis must answer now, else the store is refused (a reload keeps
    /// its running store; the usage subcommands need an answer).
    MustAnswer,
    /// Serve anyway: the store connects once Redis answers, and until then
    /// `on_store_error` applies to flagged requests (what `serve` does, so
    /// a pod whose Redis is restarting does not crash-loop).
    Eventually,
}

/// Opens the store the config names. A Redis store comes wrapped in a
/// [`ResilientStore`]: settles survive an outage, a breaker stops calls to a
/// failing Redis, and `on_store_error = "local"` counts locally meanwhile.
/// Fails on settings that cannot work (an unreadable `tls_ca_file`, a URL
/// that does not parse), and under [`Opening::MustAnswer`] when Redis does
/// not answer.
pub async fn open_store(config: &Config, opening: Opening) -> Result<OpenStore, StoreError> {
    let store = &config.store;
    if store.kind == StoreKind::Memory {
        return Ok(OpenStore {
            store: Arc::new(MemoryStore::new(store.memory_max_users)),
            resilient: None,
        });
    }
    let root_cert = match &store.tls_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| {
            StoreError::Unavailable(format!(
                "store.tls_ca_file: cannot read {}: {e}",
                path.display()
            ))
        })?),
        None => None,
    };
    let redis = RedisStore::lazy(&RedisOptions {
        topology: topology(store),
        key_prefix: store.key_prefix.clone(),
        command_timeout: store.command_timeout.get(),
        root_cert,
    })?
    // The serving threads (`Workers`) each get a connection of their own.
    .per_thread_connections();
    let unreachable = match (redis.prepare().await, opening) {
        (Ok(()), _) => None,
        (Err(e), Opening::MustAnswer) => return Err(e),
        (Err(e), Opening::Eventually) => {
            tracing::error!(error = %e, on_store_error = ?store.on_store_error,
                "redis does not answer; serving anyway: flagged requests follow \
                 store.on_store_error until it does");
            Some(e)
        }
    };
    let resilient = Arc::new(ResilientStore::new(
        Arc::new(redis),
        ResilientSettings {
            breaker: BreakerSettings {
                failures: store.breaker.failures,
                open_for: store.breaker.open_for.get(),
            },
            settle_queue: store.settle_queue,
            outage: match store.on_store_error {
                StoreErrorPolicy::Local => OutagePolicy::Local,
                StoreErrorPolicy::Allow | StoreErrorPolicy::Deny => OutagePolicy::Fail,
            },
            local_max_users: store.local_max_users,
        },
    ));
    if let Some(e) = unreachable {
        resilient.unreachable(&e);
    }
    Ok(OpenStore {
        store: resilient.clone(),
        resilient: Some(resilient),
    })
}

/// The Redis topology `[store]` describes (validated by
/// [`Config::validate`]): `sentinel`, else `cluster`, else `url`.
pub fn topology(store: &StoreConfig) -> Topology {
    if let Some(sentinel) = &store.sentinel {
        Topology::Sentinel {
            master: sentinel.master.clone(),
            nodes: sentinel.nodes.clone(),
            db: sentinel.db,
            username: sentinel.username.clone(),
            password: sentinel.password.clone(),
            tls: sentinel.tls,
        }
    } else if !store.cluster.is_empty() {
        Topology::Cluster {
            nodes: store.cluster.clone(),
        }
    } else {
        Topology::Single {
            url: store.url.clone(),
        }
    }
}
