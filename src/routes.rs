//! The routes to inspect (phase: classify). A request whose method and path
//! match no configured route is forwarded untouched: no body read, no store
//! call.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, StatusCode};

use crate::config::{ConfigError, FlagRules, RouteConfig};
use crate::metrics::RouteCounters;
use crate::quota::ProbeSpec;

/// One inspected route, ready to use.
#[derive(Debug, Clone)]
pub struct Route {
    /// `METHOD pattern`, as it appears in logs and metrics.
    pub name: String,
    /// Name of the field that asks for an image.
    pub flag: String,
    /// How the backend reads the flag's value.
    pub flag_rules: FlagRules,
    /// Status of a denial.
    pub deny_status: StatusCode,
    /// Per-route message template overriding `[messages]`.
    pub message: Option<String>,
    /// Asks the upstream whether a request will generate images whatever
    /// its flag says.
    pub probe: Option<ProbeSpec>,
    /// Its request, denial and fail-open counters.
    pub counters: RouteCounters,
}

/// A matched route with the values of its path parameters.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The route.
    pub route: Arc<Route>,
    /// Path parameters by name, e.g. `("session_id", "17")`.
    pub params: Vec<(String, String)>,
}

/// All inspected routes, indexed by method then path.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    by_method: HashMap<Method, matchit::Router<Arc<Route>>>,
}

impl RouteTable {
    /// Builds the table; a pattern that does not parse or conflicts with
    /// another names its `routes[i].path`.
    pub fn new(routes: &[RouteConfig]) -> Result<Self, ConfigError> {
        let mut by_method: HashMap<Method, matchit::Router<Arc<Route>>> = HashMap::new();
        for (i, config) in routes.iter().enumerate() {
            let field = format!("routes[{i}].path");
            if !config.path.starts_with('/') {
                return Err(ConfigError::invalid(
                    field,
                    format!("{:?} must start with '/'", config.path),
                ));
            }
            let deny_status = StatusCode::from_u16(config.deny_status).map_err(|_| {
                ConfigError::invalid(
                    format!("routes[{i}].deny_status"),
                    format!("{} is not an HTTP status", config.deny_status),
                )
            })?;
            let probe = config
                .probe
                .as_ref()
                .map(|p| ProbeSpec::new(p, &config.path))
                .transpose()
                .map_err(|reason| ConfigError::invalid(format!("routes[{i}].probe"), reason))?;
            let name = format!("{} {}", config.method.0, config.path);
            let route = Arc::new(Route {
                counters: RouteCounters::new(&name),
                name,
                flag: config.flag.clone(),
                flag_rules: config.flag_rules.clone(),
                deny_status,
                message: config.message.clone(),
                probe,
            });
            by_method
                .entry(config.method.0.clone())
                .or_default()
                .insert(config.path.clone(), route)
                .map_err(|e| ConfigError::invalid(field, format!("{:?}: {e}", config.path)))?;
        }
        Ok(Self { by_method })
    }

    /// True when no route is inspected.
    pub fn is_empty(&self) -> bool {
        self.by_method.is_empty()
    }

    /// The route `method` and `path` fall on, if any.
    pub fn find(&self, method: &Method, path: &str) -> Option<RouteMatch> {
        let found = self.by_method.get(method)?.at(path).ok()?;
        Some(RouteMatch {
            route: Arc::clone(found.value),
            params: found
                .params
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table(toml: &str) -> RouteTable {
        let config = Config::from_toml(toml).expect("config");
        RouteTable::new(&config.routes).expect("routes")
    }

    #[test]
    fn matches_method_and_parameters() {
        let t = table(
            r#"
            [[routes]]
            method = "POST"
            path = "/chat/session/{session_id}/send/"
            deny_status = 403
            "#,
        );
        let m = t
            .find(&Method::POST, "/chat/session/17/send/")
            .expect("match");
        assert_eq!(m.route.deny_status, StatusCode::FORBIDDEN);
        assert_eq!(m.route.flag, "generate_image");
        assert_eq!(m.params, vec![("session_id".to_owned(), "17".to_owned())]);
        assert!(t.find(&Method::GET, "/chat/session/17/send/").is_none());
        assert!(t.find(&Method::POST, "/chat/session/17/send").is_none());
        assert!(t.find(&Method::POST, "/chat/session/17/other/").is_none());
    }

    #[test]
    fn bad_pattern_names_the_field() {
        let err = Config::from_toml(
            r#"
            [[routes]]
            method = "POST"
            path = "/a/{x}/"
            [[routes]]
            method = "POST"
            path = "/a/{y}/"
            "#,
        )
        .expect_err("conflict");
        assert!(err.to_string().starts_with("routes[1].path"), "{err}");
    }
}
