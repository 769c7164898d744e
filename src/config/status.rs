//! `[status]` (phase: classify): the path where a signed-in user reads
//! their own quota, answered by the proxy and never forwarded.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Where the quota-status endpoint answers; off when `path` is unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// The exact request path, e.g. `/quota-status/`: `GET` there answers
    /// the caller's plan, usage and what is left in each period as JSON.
    /// No inspected route may match it (checked where the routes are
    /// built, `QuotaLayer::builder`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl StatusConfig {
    /// The path is a path: it starts with `/`, without a query or control
    /// characters.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match &self.path {
            Some(path)
                if !path.starts_with('/')
                    || path.contains(['?', '#'])
                    || path.chars().any(char::is_control) =>
            {
                Err(ConfigError::invalid(
                    "status.path",
                    format!("{path:?} must be a path starting with \"/\", e.g. \"/quota-status/\""),
                ))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn path_must_be_absolute() {
        assert!(Config::from_toml("[status]\npath = \"/quota-status/\"").is_ok());
        for bad in ["quota-status/", "/q?x=1", ""] {
            let err = Config::from_toml(&format!("[status]\npath = {bad:?}")).expect_err(bad);
            assert!(err.to_string().starts_with("status.path: "), "{err}");
        }
    }
}
