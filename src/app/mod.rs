//! Wiring (phases: startup and shutdown): the store, the quota layer and the
//! forwarding service on the proxy listener, the admin API on its own
//! listener, reloads, and the drain.
//!
//! Startup never waits for Redis ([`Opening::Eventually`]): with Redis down
//! the proxy serves, flagged requests follow `store.on_store_error` until
//! Redis answers, and the store is pinged every 5 s so its health
//! (`/healthz`, `quota_proxy_store_up`) stays current.
//!
//! Shutdown ([`Control::Shutdown`], SIGTERM or SIGINT in the binary):
//! 1. readiness turns 503 at once (the admin listener keeps answering);
//! 2. the proxy listener closes: new connections are refused;
//! 3. requests in flight run on for up to `shutdown_grace`, then are cut;
//! 4. settlements still pending (streamed responses settle in tasks of their
//!    own) are waited for until `shutdown_grace` has passed since the
//!    signal, and at least [`SETTLE_FLUSH_MIN`]; answers still being read
//!    for their reports are then settled as cut (a flagged one counts one
//!    image), for up to [`SETTLE_FLUSH_MIN`] more;
//! 5. the admin listener stops and [`run`] returns `Ok`.
//!
//! A second shutdown signal cuts steps 3 and 4 short.

mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tower::Layer;

pub use self::workers::{Workers, thread_count};
use crate::admin::{AdminToken, AppState, Current, TokenError};
use crate::config::Config;
use crate::metrics::{TimedStore, UpstreamMetrics};
use crate::proxy::ProxyService;
use crate::quota::QuotaLayer;
use crate::server::{AcceptBalance, ConnectionLimits, StreamBudget};
use crate::store::{Opening, StoreError, open_store};

/// Least time given to pending settlements after the drain, even when the
/// grace is used up: a store call takes at most `store.command_timeout`.
pub const SETTLE_FLUSH_MIN: Duration = Duration::from_secs(5);

/// How often the store is pinged and the metrics' upkeep runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Longest wait for the serving threads to stop once everything they ran is
/// done or given up.
const WORKERS_STOP: Duration = Duration::from_secs(2);

/// Why the proxy could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The config is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The admin token cannot be read.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A listener could not be bound.
    #[error("{field}: cannot listen on {addr}: {source}")]
    Bind {
        /// `listen` or `admin.listen`.
        field: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// What the running process is told from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Drain and stop (SIGTERM, SIGINT); a second one stops at once.
    Shutdown,
    /// Re-read the config file (SIGHUP).
    Reload,
}

/// The proxy's and the admin API's listeners.
#[derive(Debug)]
pub struct Listeners {
    /// Where clients connect (`listen`).
    pub proxy: TcpListener,
    /// The admin API (`admin.listen`).
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `listen` and `admin.listen`.
    pub async fn bind(config: &Config) -> Result<Self, AppError> {
        let bind = |field, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Bind {
                    field,
                    addr,
                    source,
                })
        };
        Ok(Self {
            proxy: bind("listen", config.listen).await?,
            admin: bind("admin.listen", config.admin.listen).await?,
        })
    }
}

/// Serves `layer` in front of the proxy to `config.upstream` on `listener`
/// until `shutdown` completes, then lets in-flight requests finish for up
/// to `config.shutdown_grace`. Runs on the caller's runtime; [`run`] runs it
/// on each of its serving threads ([`Workers`]), each with its share of
/// the listener's connections (`balance`; [`AcceptBalance::alone`] for a
/// listener only this call serves).
pub async fn serve(
    config: &Config,
    layer: QuotaLayer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    balance: AcceptBalance,
) -> Result<(), AppError> {
    serve_limited(
        config,
        layer,
        listener,
        shutdown,
        balance,
        connection_limits(config),
    )
    .await
}

/// The connection limits `config` sets, counted anew: `max_connections`,
/// or fewer when the process's open-files limit cannot hold them (then
/// the oldest connections are evicted before `accept` fails, which would
/// let no newcomer in; `server::connections_that_fit`), and the HTTP/2
/// requests beyond each connection's first that the limit holds beside
/// them (`server::extra_streams_that_fit`).
fn connection_limits(config: &Config) -> ConnectionLimits {
    let configured = config.max_connections;
    let Some(limit) = crate::server::open_files_limit() else {
        return ConnectionLimits::new(configured, config.max_connections_per_ip)
            .with_head_timeout(config.timeouts.client_head.get());
    };
    let fit = crate::server::connections_that_fit(configured.get(), limit);
    if fit < configured.get() {
        tracing::warn!(
            open_files_limit = limit,
            needed = crate::server::open_files_needed(configured.get()),
            max_connections = configured.get(),
            kept_open = fit,
            "the open-files limit cannot hold max_connections: at most kept_open \
             connections are kept open (the oldest are evicted past it); raise the \
             limit (LimitNOFILE, the container runtime's ulimit) to keep more"
        );
    }
    let max = NonZeroU32::new(fit).unwrap_or(configured);
    let streams = crate::server::extra_streams_that_fit(max.get(), limit);
    tracing::debug!(
        max_connections = max.get(),
        http2_extra_requests = streams,
        "connection limits"
    );
    ConnectionLimits::new(max, config.max_connections_per_ip)
        .with_stream_budget(StreamBudget::new(streams))
        .with_head_timeout(config.timeouts.client_head.get())
}

/// [`serve`] with the connection counts `limits`, shared with the other
/// threads serving the same listener.
pub async fn serve_limited(
    config: &Config,
    layer: QuotaLayer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    balance: AcceptBalance,
    limits: ConnectionLimits,
) -> Result<(), AppError> {
    let proxy = ProxyService::new(config.upstream.authority.clone(), &config.timeouts);
    let service = layer.layer(UpstreamMetrics::new(proxy));
    let grace = config.shutdown_grace.get();
    crate::server::serve_limited(listener, service, shutdown, grace, balance, limits).await?;
    Ok(())
}

/// Runs the proxy and the admin API on `listeners` until told to shut down
/// through `control` (or until every sender of `control` is gone), then
/// drains (see the module docs). The proxy listener is served by
/// `config.threads` threads of their own ([`Workers`]); the admin API, the
/// control and the store's connections run on the caller's runtime (the
/// binary gives it one thread). What the binary runs; `config_path` is
/// where reloads read from.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    listeners: Listeners,
    control: mpsc::Receiver<Control>,
) -> Result<(), AppError> {
    let metrics = match crate::metrics::install() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "/metrics is unavailable");
            None
        }
    };
    let token = AdminToken::from_config(&config.admin)?;
    let opened = open_store(&config, Opening::Eventually).await?;
    let store = TimedStore::wrap(opened.store.clone());
    let layer = QuotaLayer::builder(&config)?
        .store(Arc::clone(&store))
        .build();
    tracing::info!(
        listen = %listeners.proxy.local_addr()?,
        admin = %listeners.admin.local_addr()?,
        upstream = %String::from(config.upstream.clone()),
        store = %config.store.kind,
        routes = config.routes.len(),
        usage_api = if token.is_some() { "on" } else { "off" },
        "quota-proxy serving"
    );
    if config.routes.is_empty() {
        tracing::warn!(
            "no [[routes]]: every request is passed through, nothing is checked or counted"
        );
    }
    let state = Arc::new(AppState::new(
        config_path,
        Current {
            config: config.clone(),
            store,
            resilient: opened.resilient.clone(),
            token,
        },
        layer.clone(),
        metrics.clone(),
    ));

    let (admin_stop, admin_stopped) = oneshot::channel::<()>();
    let admin = tokio::spawn(crate::admin::serve(
        Arc::clone(&state),
        listeners.admin,
        async {
            let _ = admin_stopped.await;
        },
    ));
    let upkeep = {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let mut dropped_seen = 0;
            loop {
                tokio::time::sleep(UPKEEP_EVERY).await;
                // Keeps the store's health current while no request calls
                // it, and notices a Redis that came back.
                state.check_store().await;
                if let Some(handle) = &metrics {
                    handle.run_upkeep();
                    // The Redis stores' retry queues (the one in force and
                    // any a reload retired), exported as they stand.
                    crate::counters::settlements_pending("retry_queue", state.pending_settles());
                    let dropped = state.dropped_settles();
                    crate::counters::settlements_dropped(
                        crate::counters::DROPPED_RETRY_QUEUE,
                        dropped.saturating_sub(dropped_seen),
                    );
                    dropped_seen = dropped;
                }
            }
        })
    };
    let drain = CancellationToken::new();
    let (cut, cut_short) = oneshot::channel::<()>();
    let controller = tokio::spawn(obey(Arc::clone(&state), control, drain.clone(), cut));

    let grace = config.shutdown_grace.get();
    let mut workers = Workers::start(&config, &layer, listeners.proxy, &drain)?;
    let drained = async {
        workers.served().await?;
        flush(&state, &layer, grace).await;
        // Requests and their settlements are done: usage Redis could not
        // take yet gets one last chance before the process exits.
        // The store in force after any reloads, and any it replaced.
        let flush_timeout = state.current().config.store.flush_timeout;
        let deadline = tokio::time::Instant::now() + flush_timeout;
        let unsent = state.flush_stores(deadline).await;
        if unsent > 0 {
            tracing::error!(
                unsent,
                "stopped with settles Redis did not take (logged above)"
            );
        }
        Ok::<_, AppError>(())
    };
    let result = tokio::select! {
        result = drained => result,
        Ok(()) = cut_short => {
            tracing::warn!(
                pending = layer.settlements().len(),
                "second shutdown signal: stopping without waiting"
            );
            Ok(())
        }
    };
    // After an error too: no thread may serve on.
    drain.cancel();
    workers.release(WORKERS_STOP).await;
    controller.abort();
    upkeep.abort();
    let _ = admin_stop.send(());
    match admin.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "admin listener failed"),
        Err(e) if e.is_panic() => tracing::error!(error = %e, "admin listener panicked"),
        _ => {}
    }
    if result.is_ok() {
        tracing::info!("quota-proxy stopped");
    }
    result
}

/// Follows `control`: reloads, and the first and second shutdown.
async fn obey(
    state: Arc<AppState>,
    mut control: mpsc::Receiver<Control>,
    drain: CancellationToken,
    cut: oneshot::Sender<()>,
) {
    let begin = |drain: CancellationToken| {
        state.start_drain();
        tracing::info!("shutdown: draining (readiness now fails)");
        drain.cancel();
    };
    let mut drain = Some(drain);
    loop {
        match control.recv().await {
            Some(Control::Reload) => {
                // The outcome is logged by the reload itself.
                let _ = state.reload().await;
            }
            Some(Control::Shutdown) => match drain.take() {
                Some(drain) => begin(drain),
                None => {
                    let _ = cut.send(());
                    return;
                }
            },
            // Nobody left to give orders: drain (once) and stop following.
            None => {
                if let Some(drain) = drain.take() {
                    begin(drain);
                }
                return;
            }
        }
    }
}

/// Waits for pending settlements until `grace` has passed since the drain
/// began, and at least [`SETTLE_FLUSH_MIN`].
async fn flush(state: &AppState, layer: &QuotaLayer, grace: Duration) {
    let settlements = layer.settlements();
    settlements.close();
    let elapsed = state
        .drain_started()
        .map_or(Duration::ZERO, |t| t.elapsed());
    let budget = grace.saturating_sub(elapsed).max(SETTLE_FLUSH_MIN);
    let pending = settlements.len();
    if pending > 0 {
        tracing::info!(pending, ?budget, "waiting for pending settlements");
    }
    if tokio::time::timeout(budget, settlements.wait())
        .await
        .is_ok()
    {
        tracing::info!("all settlements recorded");
        return;
    }
    // Answers still read for their reports: none can come now. Each
    // settles as cut (a flagged request is charged one image: its app may
    // save the image after the proxy is gone), with one store call's time.
    tracing::warn!(
        left = settlements.len(),
        "grace over with answers still streaming; settling them as cut (fail closed)"
    );
    settlements.cut();
    match tokio::time::timeout(SETTLE_FLUSH_MIN, settlements.wait()).await {
        Ok(()) => tracing::info!("all settlements recorded"),
        Err(_) => tracing::warn!(
            left = settlements.len(),
            "settlements still pending are lost; their reservations expire by themselves"
        ),
    }
}

/// Sends [`Control::Shutdown`] on SIGTERM and SIGINT and [`Control::Reload`]
/// on SIGHUP. Call inside the runtime; the handlers are in place when it
/// returns.
#[cfg(unix)]
pub fn signals() -> std::io::Result<mpsc::Receiver<Control>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let (name, control) = tokio::select! {
                Some(()) = terminate.recv() => ("SIGTERM", Control::Shutdown),
                Some(()) = interrupt.recv() => ("SIGINT", Control::Shutdown),
                Some(()) = hangup.recv() => ("SIGHUP", Control::Reload),
                else => return,
            };
            tracing::info!(signal = name, "signal received");
            if tx.send(control).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Sends [`Control::Shutdown`] on Ctrl-C (no SIGHUP reload on this platform;
/// use `POST /v1/reload`).
#[cfg(not(unix))]
pub fn signals() -> std::io::Result<mpsc::Receiver<Control>> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(Control::Shutdown).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}
