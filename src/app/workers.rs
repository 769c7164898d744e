//! The threads that serve the proxy listener (phases: accept to settle):
//! one current-thread tokio runtime per thread, each accepting from the same
//! listening socket in turn with the others ([`AcceptBalance`]: connections
//! spread evenly), with its own upstream connection pool.
//!
//! A request stays on the thread that accepted its connection, from the
//! first byte read to the settlement: its server connection, its pooled
//! upstream connection and the task that forwards it never wake each other
//! across cores. On this project's 2-core load bench that took pass-through
//! from 0.60–0.70 to 0.38–0.52 CPU seconds per 10,000 requests against one
//! multi-threaded runtime (BENCHMARKS.md).
//!
//! The quota layer (and so the store, the plans and the settlement tracker)
//! is shared by every thread; a Redis store's connection is driven by the
//! runtime that opened it. Each thread keeps its runtime running after it
//! stopped serving, until [`Workers::release`]: settlements and background
//! reads spawned on it finish there while the drain waits for them.

use std::net::TcpListener as StdListener;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::AppError;
use crate::config::Config;
use crate::quota::QuotaLayer;
use crate::server::{AcceptBalance, ConnectionLimits};

/// The serving threads of one process.
#[derive(Debug)]
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    /// One per thread: how its accept loop ended.
    served: Vec<oneshot::Receiver<Result<(), AppError>>>,
    release: CancellationToken,
}

/// How many serving threads `threads` asks for: itself, or one per CPU the
/// process may use when 0.
pub fn thread_count(threads: usize) -> usize {
    match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

impl Workers {
    /// Starts [`thread_count`]`(config.threads)` threads serving `layer` in
    /// front of the proxy to `config.upstream` on `listener`, until `drain`
    /// is cancelled; see [`super::serve`] for what each does then.
    pub fn start(
        config: &Config,
        layer: &QuotaLayer,
        listener: TcpListener,
        drain: &CancellationToken,
    ) -> Result<Self, AppError> {
        let listener = listener.into_std()?;
        let count = thread_count(config.threads);
        let mut workers = Self {
            threads: Vec::with_capacity(count),
            served: Vec::with_capacity(count),
            release: CancellationToken::new(),
        };
        // One count for the whole process, not per thread.
        let limits = super::connection_limits(config);
        for (index, balance) in AcceptBalance::shares(count).into_iter().enumerate() {
            let (served_tx, served) = oneshot::channel();
            let worker = Worker {
                config: config.clone(),
                layer: layer.clone(),
                listener: listener.try_clone()?,
                balance,
                limits: limits.clone(),
                drain: drain.clone(),
                release: workers.release.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("quota-proxy-{index}"))
                .spawn(move || worker.run(served_tx))?;
            workers.threads.push(thread);
            workers.served.push(served);
        }
        tracing::debug!(threads = count, "serving threads started");
        Ok(workers)
    }

    /// Waits until every thread stopped serving (after the drain began and
    /// in-flight requests finished or the grace ran out). The first error
    /// is returned as soon as it happens.
    pub async fn served(&mut self) -> Result<(), AppError> {
        for served in &mut self.served {
            // No word from a thread means it panicked (`release` logs it).
            if let Ok(result) = served.await {
                result?;
            }
        }
        Ok(())
    }

    /// Stops every thread's runtime (whatever still runs on them is
    /// dropped) and waits for the threads to end, at most `timeout`.
    pub async fn release(self, timeout: Duration) {
        self.release.cancel();
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if let Err(panic) = thread.join() {
                    tracing::error!(?panic, "a serving thread panicked");
                }
            }
        });
        if tokio::time::timeout(timeout, joined).await.is_err() {
            tracing::warn!(?timeout, "serving threads did not stop in time");
        }
    }
}

/// What one serving thread is given.
struct Worker {
    config: Config,
    layer: QuotaLayer,
    listener: StdListener,
    /// Its share of the listener's connections.
    balance: AcceptBalance,
    /// Connections open, shared by every thread.
    limits: ConnectionLimits,
    drain: CancellationToken,
    release: CancellationToken,
}

impl Worker {
    /// The thread's body: serve until the drain, report, then keep the
    /// runtime up until released.
    fn run(self, served: oneshot::Sender<Result<(), AppError>>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = served.send(Err(AppError::Io(e)));
                return;
            }
        };
        let Self {
            config,
            layer,
            listener,
            balance,
            limits,
            drain,
            release,
        } = self;
        runtime.block_on(async move {
            let serving = async {
                let result = match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        let shutdown = drain.cancelled_owned();
                        super::serve_limited(&config, layer, listener, shutdown, balance, limits)
                            .await
                    }
                    Err(e) => Err(AppError::Io(e)),
                };
                let _ = served.send(result);
                // Settlements and background reads spawned here run on.
                release.cancelled().await;
            };
            tokio::select! {
                () = serving => {}
                () = release.cancelled() => {}
            }
        });
    }
}
