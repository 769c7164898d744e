//! The `quota-proxy` binary: command line → config → logs → serve (or a
//! one-shot subcommand).
//!
//! Exit codes: 0 after a clean shutdown or a successful subcommand, 2
//! ([`EXIT_CONFIG`]) when the config cannot work, wherever that is found (on
//! load, or while `serve` builds from it), 1 on any other failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use quota_proxy::app::{self, AppError, Listeners};
use quota_proxy::cli::{Cli, Command, EXIT_CONFIG, UsageCommand};
use quota_proxy::config::Config;
use quota_proxy::telemetry;

/// See Cargo.toml: the allocator measured fastest for this workload.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long the runtime waits for stray blocking work once `run` returned.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("quota-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { online } => check_config(&config, online),
        Command::Serve => serve(config, cli.config),
        Command::Usage(command) => usage(config, command),
    }
}

fn serve(config: Config, path: PathBuf) -> ExitCode {
    // The control runtime: signals, admin API, store connections, trace
    // batches. Requests are served on threads of their own (`app::Workers`).
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    let telemetry = {
        let _on_runtime = runtime.enter();
        match telemetry::init(&config.log, &config.tracing) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("quota-proxy: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    };
    open_files(config.max_connections.get());
    let result = runtime.block_on(async {
        let served = async {
            // Handlers first: a signal during startup is then not fatal.
            let control = app::signals().map_err(AppError::Io)?;
            let listeners = Listeners::bind(&config).await?;
            app::run(config, path, listeners, control).await
        };
        let result = served.await;
        // Every request has ended, and with it its spans.
        telemetry.shutdown().await;
        result
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    if let Err(e) = &result {
        tracing::error!(error = %e, "quota-proxy stopped");
    }
    // The log lines still queued for stderr, unless it stalls.
    telemetry::flush_logs();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quota-proxy: {e}");
            match e {
                AppError::Config(_) | AppError::Token(_) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Raises the soft limit of open files to the hard one: a container's is
/// 1024, far below `max_connections`, and past it nothing is accepted.
/// (Where even the hard one cannot hold `max_connections`, fewer are kept
/// open: `app::serve`.)
fn open_files(max_connections: u32) {
    use quota_proxy::server::{open_files_needed, raise_open_files_limit};
    match raise_open_files_limit() {
        Ok(limit) if limit.now != limit.before => tracing::info!(
            before = limit.before,
            now = limit.now,
            "raised the open-files limit (RLIMIT_NOFILE) to its hard limit"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(
            error = %e,
            needed = open_files_needed(max_connections),
            max_connections,
            "cannot raise the open-files limit (RLIMIT_NOFILE)"
        ),
    }
}

fn check_config(config: &Config, online: bool) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(quota_proxy::cli::check_config(config, online)) {
        Ok(()) => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quota-proxy: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A one-thread runtime, or `None` after saying why there is none.
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .inspect_err(|e| eprintln!("quota-proxy: cannot start the async runtime: {e}"))
        .ok()
}

fn usage(config: Config, command: UsageCommand) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(command.run(&config)) {
        Ok(usage) => match serde_json::to_string_pretty(&usage) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("quota-proxy: cannot print the usage: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("quota-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
