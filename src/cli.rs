//! The command line (clap derive): `serve` (the default), `check-config`,
//! and `usage show|reset|adjust`, which work on the config's store directly.
//!
//! Exit codes, the same wherever a problem is found: 0 success or a clean
//! shutdown; [`EXIT_CONFIG`] (2) the config cannot work (it does not load,
//! names a secret that does not resolve, a key that cannot be read, a spool
//! directory that cannot be written); 1 anything else (a port in use, Redis
//! not answering `check-config --online`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use clap::{Parser, Subcommand};

use crate::admin::{PeriodChoice, UsageError, UsageOps, UserUsage};
use crate::config::{Config, DEFAULT_CONFIG_PATH, StoreKind};
use crate::store::StoreError;

/// Enforces image-generation quotas in front of a Django app.
#[derive(Debug, Parser)]
#[command(name = "quota-proxy", version, about, long_about = None)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        short,
        global = true,
        env = "QUOTA_PROXY_CONFIG",
        default_value = DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,

    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy and its admin listener (the default). SIGTERM or SIGINT
    /// drains and stops; SIGHUP re-reads the config file.
    Serve,
    /// Validate the config file, print it with every default filled in and
    /// secrets masked, and exit 2 naming the field on an error. Secret files
    /// and variables are resolved and the spool directory written to, as
    /// `serve` would.
    CheckConfig {
        /// Also bind both listeners (then let go of them) and ping the
        /// store; exit 1 when one of them fails.
        #[arg(long)]
        online: bool,
    },
    /// Show, reset or adjust a user's usage, in the config's store directly.
    ///
    /// Meant for a Redis store, which every replica shares. A memory store
    /// lives inside the running proxy's process, out of this command's
    /// reach: use the admin API (`/v1/users/{id}/usage`) there.
    #[command(subcommand)]
    Usage(UsageCommand),
}

/// `quota-proxy usage …`: each prints the user's usage afterwards, as JSON.
#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Print a user's usage, reservations in flight and limits per period.
    Show {
        /// The user id.
        user: String,
        /// The plan whose limits to show; the default plan when omitted.
        #[arg(long)]
        plan: Option<String>,
    },
    /// Set a user's usage in the current period(s) to 0.
    Reset {
        /// The user id.
        user: String,
        /// Which period's usage to reset.
        #[arg(long, value_enum)]
        period: PeriodChoice,
        /// The plan whose limits to show; the default plan when omitted.
        #[arg(long)]
        plan: Option<String>,
    },
    /// Add to a user's usage; a negative delta refunds (never below 0).
    Adjust {
        /// The user id.
        user: String,
        /// What to add, e.g. -1 to refund a failed image.
        #[arg(long, allow_negative_numbers = true)]
        delta: i64,
        /// Which period's usage to change; `all` counts an image as it was
        /// counted: in the day, week and month.
        #[arg(long, value_enum, default_value_t = PeriodChoice::All)]
        period: PeriodChoice,
        /// The plan whose limits to show; the default plan when omitted.
        #[arg(long)]
        plan: Option<String>,
    },
}

/// The exit code of every config error, wherever it is found.
pub const EXIT_CONFIG: u8 = 2;

/// Longest wait for the store's answer in `check-config --online`.
const ONLINE_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `check-config` failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The config cannot work (exit 2).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// `--online`: a listener cannot be bound (exit 1).
    #[error("{0}")]
    Bind(crate::app::AppError),
    /// `--online`: the store does not answer (exit 1).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// `--online`: the store did not answer in time (exit 1).
    #[error("store: no answer to PING within {0:?}")]
    StoreTimeout(Duration),
}

impl CheckError {
    /// The process exit code: [`EXIT_CONFIG`] for a config error, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            CheckError::Config(_) => EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// `check-config`: builds everything `serve` builds from the config (the
/// identity source with its keys, the routes); with `online`, also binds
/// the listeners and pings the store.
pub async fn check_config(config: &Config, online: bool) -> Result<(), CheckError> {
    crate::quota::QuotaLayer::builder(config)?;
    if !online {
        return Ok(());
    }
    let listeners = crate::app::Listeners::bind(config)
        .await
        .map_err(CheckError::Bind)?;
    drop(listeners);
    if config.store.kind == StoreKind::Redis {
        let store = crate::store::open_store(config, crate::store::Opening::MustAnswer)
            .await?
            .store;
        tokio::time::timeout(ONLINE_PING_TIMEOUT, store.ping())
            .await
            .map_err(|_| CheckError::StoreTimeout(ONLINE_PING_TIMEOUT))??;
    }
    Ok(())
}

/// Why a `usage` subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum UsageCliError {
    /// The config's store is the memory store of another process.
    #[error(
        "store.kind is \"memory\": usage is counted inside the running proxy's process, and this \
         command would only see an empty store of its own. `quota-proxy usage` is for a Redis \
         store (store.kind = \"redis\"); with a memory store use the running proxy's admin API, \
         e.g. curl -H \"Authorization: Bearer $TOKEN\" http://{0}/v1/users/USER/usage"
    )]
    MemoryStore(SocketAddr),
    /// The store cannot be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The operation failed.
    #[error(transparent)]
    Usage(#[from] UsageError),
}

impl UsageCommand {
    /// Runs the command on `config`'s store; answers the user's usage after
    /// it.
    pub async fn run(self, config: &Config) -> Result<UserUsage, UsageCliError> {
        if config.store.kind == StoreKind::Memory {
            return Err(UsageCliError::MemoryStore(config.admin.listen));
        }
        let store = crate::store::open_store(config, crate::store::Opening::MustAnswer)
            .await?
            .store;
        let ops = UsageOps::new(store, config);
        let now = Utc::now();
        Ok(match self {
            UsageCommand::Show { user, plan } => ops.show(&user, plan.as_deref(), now).await?,
            UsageCommand::Reset { user, period, plan } => {
                ops.reset(&user, plan.as_deref(), period, now).await?
            }
            UsageCommand::Adjust {
                user,
                delta,
                period,
                plan,
            } => {
                ops.adjust(&user, plan.as_deref(), period, delta, now)
                    .await?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn negative_deltas_parse() {
        let cli = Cli::try_parse_from(["quota-proxy", "usage", "adjust", "42", "--delta", "-1"])
            .expect("parses");
        match cli.command {
            Some(Command::Usage(UsageCommand::Adjust { delta, period, .. })) => {
                assert_eq!((delta, period), (-1, PeriodChoice::All));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
