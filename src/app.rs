//! Wiring (phase: startup): the store, the quota layer and the forwarding
//! service, served on a listener until a shutdown signal.
//!
//! The binary runs [`run_threads`]: one single-threaded runtime per core,
//! each with its own listener (`SO_REUSEPORT`) and upstream pool, like
//! nginx's worker processes. A request then stays on one thread from accept
//! to answer, and the client and upstream connections of a request never
//! wake each other across cores; the load bench measured 22% less CPU per
//! proxied request than one multi-threaded runtime (BENCHMARKS.md).
//! Tests run [`run`] or [`serve`] on their own runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
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

/// Pending connections each listener of [`run_threads`] queues.
const LISTEN_BACKLOG: u32 = 1024;

/// Serves `config` on `threads` threads (at least one), each a
/// current-thread runtime with its own listener on `config.listen`
/// (`SO_REUSEPORT`: the kernel spreads new connections over them) and its
/// own upstream connection pool; the store and the layer are shared. Blocks
/// until `shutdown` completes and every thread has drained.
///
/// `shutdown` runs on the calling thread's own runtime (signals enabled),
/// which also drives a Redis store's connection, and keeps driving it until
/// the last server thread has drained: requests finishing during the grace
/// period can still settle.
pub fn run_threads(
    config: Config,
    threads: usize,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = main.block_on(open_store(&config))?;
    let layer = QuotaLayer::builder(&config)?.store(store).build();
    let runtimes = (0..threads.max(1))
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Bound here, each with its runtime's reactor, so a taken port fails
    // before any thread starts; port 0 is resolved once, for all of them.
    let mut listen = config.listen;
    let mut listeners = Vec::with_capacity(runtimes.len());
    for runtime in &runtimes {
        let _entered = runtime.enter();
        let listener = reuseport_listener(listen)?;
        listen = listener.local_addr()?;
        listeners.push(listener);
    }
    tracing::info!(
        %listen,
        upstream = %String::from(config.upstream.clone()),
        store = %config.store.kind,
        routes = config.routes.len(),
        threads = runtimes.len(),
        "quota-proxy serving"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let config = Arc::new(config);
    let workers = runtimes
        .into_iter()
        .zip(listeners)
        .enumerate()
        .map(|(i, (runtime, listener))| {
            let (config, layer, mut stopped) =
                (Arc::clone(&config), layer.clone(), stopped.clone());
            std::thread::Builder::new()
                .name(format!("quota-proxy-{i}"))
                .spawn(move || {
                    runtime.block_on(serve(&config, layer, listener, async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    }))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    main.block_on(async move {
        shutdown.await;
        let _ = stop.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            workers.into_iter().map(|w| w.join()).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut result = Ok(());
        for worker in joined {
            match worker {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = result.and(Err(e)),
                Err(_) => {
                    result = result.and(Err(AppError::Io(std::io::Error::other(
                        "a server thread panicked",
                    ))))
                }
            }
        }
        result
    })
}

/// A listener on `addr` that other sockets may bind too (`SO_REUSEPORT`).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_serve_on_one_port_and_stop_on_shutdown() {
        let config = Config::from_toml(
            r#"
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:9"
"#,
        )
        .expect("config");
        let started = std::time::Instant::now();
        let result = run_threads(config, 3, async {
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        assert!(result.is_ok(), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_taken_port_fails_before_serving() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let config = Config::from_toml(&format!(
            "listen = \"127.0.0.1:{port}\"\nupstream = \"http://127.0.0.1:9\"\n"
        ))
        .expect("config");
        let result = run_threads(config, 2, std::future::pending());
        assert!(matches!(result, Err(AppError::Io(_))), "{result:?}");
    }
}
