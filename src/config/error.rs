//! Why a config could not be used (phase: startup, and every reload):
//! [`ConfigError`], whose every message names the file or the field to fix.

use std::path::PathBuf;

/// Why a config could not be used. Each message names the file or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or a field has the wrong type or name.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line and the field.
        message: String,
    },
    /// A field's value cannot be used: its type refused it when the file
    /// was parsed (the reason then carries the line and column), or a rule
    /// between fields did.
    #[error("{field}: {reason}")]
    Invalid {
        /// The dotted path of the field, e.g. `identity.default_plan`.
        field: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
