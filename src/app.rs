//! Wiring (phase: startup): the store, the quota layer and the forwarding
//! service, served on a listener until a shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tower::Layer;

use crate::config::{Config, StoreKind};
use crate::proxy::ProxyService;
use crate::quota::QuotaLayer;
use crate::store::{MemoryStore, QuotaStore, RedisStore, StoreError};

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

/// Opens the store the config names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn QuotaStore>, StoreError> {
    Ok(match config.store.kind {
        StoreKind::Memory => Arc::new(MemoryStore::new(config.store.memory_max_users)),
        StoreKind::Redis => Arc::new(
            RedisStore::connect(
                &config.store.url,
                &config.store.key_prefix,
                config.store.command_timeout,
            )
            .await?,
        ),
    })
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
    let store = open_store(&config).await?;
    let layer = QuotaLayer::builder(&config)?.store(store).build();
    serve(&config, layer, listener, shutdown).await
}
