//! `[status]` (phase: classify): the path where a signed-in user reads
//! their own quota, answered by the proxy and never forwarded.

use serde::{Deserialize, Serialize};

use super::{ConfigError, RouteConfig};
use crate::routes::{PathPattern, backend_path};

/// Where the quota-status endpoint answers; off when `path` is unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// The exact request path, e.g. `/quota-status/`: `GET` there answers
    /// the caller's plan, usage and what is left in each period as JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl StatusConfig {
    /// The path starts with `/` and is none of the inspected routes' (the
    /// proxy answers it, so a route there could never be reached).
    pub(super) fn validate(&self, routes: &[RouteConfig]) -> Result<(), ConfigError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !path.starts_with('/') || path.contains(['?', '#']) || path.chars().any(char::is_control)
        {
            return Err(ConfigError::invalid(
                "status.path",
                format!("{path:?} must be a path starting with \"/\", e.g. \"/quota-status/\""),
            ));
        }
        let seen = backend_path(path);
        for (i, route) in routes.iter().enumerate() {
            // A pattern that does not parse is reported as routes[i].path.
            if let Ok(pattern) = PathPattern::parse(&route.path)
                && pattern.matches(&seen).is_some()
            {
                return Err(ConfigError::invalid(
                    "status.path",
                    format!(
                        "{path:?} is also routes[{i}] ({} {}); the proxy answers the status \
                         path itself, so choose a path the app does not serve",
                        route.method.0, route.path
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn path_must_be_absolute_and_free() {
        let routes = "[[routes]]\nmethod = \"POST\"\npath = \"/chat/{id}/\"\n";
        let ok = format!("[status]\npath = \"/quota-status/\"\n{routes}");
        assert!(Config::from_toml(&ok).is_ok());
        let relative =
            Config::from_toml("[status]\npath = \"quota-status/\"").expect_err("relative");
        assert!(
            relative.to_string().starts_with("status.path: "),
            "{relative}"
        );
        let taken = format!("[status]\npath = \"/chat/quota/\"\n{routes}");
        let taken = Config::from_toml(&taken).expect_err("collides");
        assert!(
            taken.to_string().contains("routes[0] (POST /chat/{id}/)"),
            "{taken}"
        );
    }
}
