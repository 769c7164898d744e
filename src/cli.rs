//! The command line (clap derive): `serve` (the default) and `check-config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_CONFIG_PATH;

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
    /// Run the proxy (the default).
    Serve,
    /// Validate the config file, print it with every default filled in, and
    /// exit non-zero naming the field on an error.
    CheckConfig,
}
