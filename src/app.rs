//! Wiring (phase: startup): the store, the quota layer and the forwarding
//! service, served on a listener until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tower::Layer;

use crate::config::{Config, StoreConfig, StoreErrorPolicy, StoreKind};
use crate::proxy::ProxyService;
use crate::quota::QuotaLayer;
use crate::store::{
    BreakerSettings, MemoryStore, OutagePolicy, QuotaStore, RedisOptions, RedisStore,
    ResilientSettings, ResilientStore, StoreError, Topology,
};

/// How long in-flight requests may run on after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

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
}

/// Opens the store the config names. A Redis store comes wrapped in a
/// [`ResilientStore`]: settles survive an outage, a breaker stops calls to a
/// failing Redis, and `on_store_error = "local"` counts locally meanwhile.
pub async fn open_store(config: &Config) -> Result<OpenStore, StoreError> {
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
    let redis = RedisStore::open(&RedisOptions {
        topology: topology(store),
        key_prefix: store.key_prefix.clone(),
        command_timeout: store.command_timeout,
        root_cert,
    })
    .await?;
    let resilient = Arc::new(ResilientStore::new(
        Arc::new(redis),
        ResilientSettings {
            breaker: BreakerSettings {
                failures: store.breaker.failures,
                open_for: store.breaker.open_for,
            },
            settle_queue: store.settle_queue,
            outage: match store.on_store_error {
                StoreErrorPolicy::Local => OutagePolicy::Local,
                StoreErrorPolicy::Allow | StoreErrorPolicy::Deny => OutagePolicy::Fail,
            },
            local_max_users: store.local_max_users,
        },
    ));
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

/// Serves `layer` in front of the proxy to `config.upstream` on `listener`
/// until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    config: &Config,
    layer: QuotaLayer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let proxy = ProxyService::new(config.upstream.authority.clone(), &config.timeouts);
    let service = layer.layer(proxy);
    crate::server::serve(listener, service, shutdown, SHUTDOWN_GRACE).await?;
    Ok(())
}

/// Opens the store, builds the layer and serves until `shutdown`: what the
/// binary runs, and what integration tests run on `127.0.0.1:0`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let opened = open_store(&config).await?;
    let layer = QuotaLayer::builder(&config)?
        .store(opened.store.clone())
        .build();
    let served = serve(&config, layer, listener, shutdown).await;
    // Requests have finished: usage Redis could not take yet gets one last
    // chance before the process exits.
    let deadline = tokio::time::Instant::now() + config.store.flush_timeout;
    let unsent = opened.flush(deadline).await;
    if unsent > 0 {
        tracing::error!(
            unsent,
            "stopped with settles redis did not take (logged above)"
        );
    }
    served
}
