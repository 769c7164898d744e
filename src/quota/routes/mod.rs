//! The routes to inspect (phase: classify). A request whose method and path
//! match no configured route is forwarded untouched: no body read, no store
//! call.
//!
//! A route is chosen from the path Django's URL resolver will see, not from
//! the bytes of the request target: [`backend_path`] decodes it as gunicorn
//! and Django do (every `%XX`, `%2F` included; `path.rs`), and the route
//! patterns are Django's own `path()` syntax with its converters
//! (`pattern.rs`), whose canonical values (`<int>` of `0017` is `17`) are
//! what the probe URL, cache keys and logs use. Headers that would move the
//! path under the app (`SCRIPT_NAME` and its kin) are removed from every
//! request first (`headers.rs`). The whole story, with the fail-closed
//! cases, is in `docs/routes.md`.
//!
//! Routes are tried in the order they are configured, as Django tries
//! `urlpatterns`; the first one whose method and pattern match wins.

mod headers;
mod path;
mod pattern;
mod syntax;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderName, Method, StatusCode};

pub use self::headers::{
    RoutingHeaders, host_of, join_cookie_crumbs, strip_underscore_names, trim_field_values,
    trim_wsgi_field_values,
};
pub use self::path::backend_path;
pub use self::pattern::{Converter, PathPattern};
use crate::config::{ConfigError, FlagRules, RouteConfig};
use crate::counters::RouteCounters;
use crate::quota::ProbeSpec;

/// One inspected route, ready to use.
#[derive(Debug, Clone)]
pub struct Route {
    /// `METHOD pattern`, as it appears in logs and metrics.
    pub name: String,
    /// The path pattern.
    pub pattern: PathPattern,
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
    /// Shadow mode on this route (`routes[i].shadow`): over a limit is
    /// forwarded and flagged, not denied.
    pub shadow: bool,
    /// Its request, denial and fail-open counters.
    pub counters: RouteCounters,
}

/// A matched route with the canonical values of its path parameters.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    /// The route.
    pub route: Arc<Route>,
    /// Path parameters by name, canonical, e.g. `("session_id", "17")` for
    /// `/chat/session/0017/send/`.
    pub params: Vec<(String, String)>,
}

impl RouteMatch {
    /// The request's path written canonically (`/chat/session/17/send/`):
    /// one name for every spelling Django routes to the same view and
    /// arguments.
    pub fn canonical_path(&self) -> String {
        self.route.pattern.render(&self.params)
    }
}

/// All inspected routes, by method, in configured order.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    by_method: HashMap<Method, Vec<Arc<Route>>>,
}

impl RouteTable {
    /// Builds the table; a pattern that does not parse, or that another
    /// route of the same method already has, names its `routes[i].path`.
    pub fn new(routes: &[RouteConfig]) -> Result<Self, ConfigError> {
        Self::with_credentials(routes, &[])
    }

    /// [`Self::new`], each probe also passing on `credentials`: the
    /// headers the identity source reads the user from, so that the probe
    /// asks as the user its answer is cached under.
    pub fn with_credentials(
        routes: &[RouteConfig],
        credentials: &[HeaderName],
    ) -> Result<Self, ConfigError> {
        let mut by_method: HashMap<Method, Vec<Arc<Route>>> = HashMap::new();
        for (i, config) in routes.iter().enumerate() {
            let field = format!("routes[{i}].path");
            let pattern =
                PathPattern::parse(&config.path).map_err(|e| ConfigError::invalid(&field, e))?;
            let deny_status = StatusCode::from_u16(config.deny_status).map_err(|_| {
                ConfigError::invalid(
                    format!("routes[{i}].deny_status"),
                    format!("{} is not an HTTP status", config.deny_status),
                )
            })?;
            let probe = config
                .probe
                .as_ref()
                .map(|p| ProbeSpec::new(p, &pattern))
                .transpose()
                .map_err(|reason| ConfigError::invalid(format!("routes[{i}].probe"), reason))?
                .map(|probe| probe.also_forwarding(credentials));
            let same_method = by_method.entry(config.method.0.clone()).or_default();
            if let Some(earlier) = same_method.iter().find(|r| r.pattern.same_as(&pattern)) {
                return Err(ConfigError::invalid(
                    field,
                    format!(
                        "{:?} is the same pattern as {:?}",
                        config.path, earlier.name
                    ),
                ));
            }
            let name = format!("{} {}", config.method.0, config.path);
            same_method.push(Arc::new(Route {
                counters: RouteCounters::new(&name),
                name,
                pattern,
                flag: config.flag.clone(),
                flag_rules: config.flag_rules.clone(),
                deny_status,
                message: config.message.clone(),
                probe,
                shadow: config.shadow,
            }));
        }
        Ok(Self { by_method })
    }

    /// The first route, of any method, whose pattern matches `target` (as
    /// received, still percent-encoded): a path the proxy keeps for itself
    /// must be none of these.
    pub fn any_method(&self, target: &str) -> Option<&Route> {
        let path = backend_path(target);
        self.by_method
            .values()
            .flatten()
            .find(|route| route.pattern.matches(&path).is_some())
            .map(Arc::as_ref)
    }

    /// True when no route is inspected.
    pub fn is_empty(&self) -> bool {
        self.by_method.is_empty()
    }

    /// The route a request with `method` and target path `target` (as
    /// received, still percent-encoded) falls on, if any: matched on
    /// [`backend_path`]`(target)`, the path Django resolves.
    pub fn find(&self, method: &Method, target: &str) -> Option<RouteMatch> {
        let routes = self.by_method.get(method)?;
        let path = backend_path(target);
        routes.iter().find_map(|route| {
            let params = route.pattern.matches(&path)?;
            Some(RouteMatch {
                route: Arc::clone(route),
                params,
            })
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
        let config = Config::from_toml(
            r#"
            [[routes]]
            method = "POST"
            path = "/a/{x}/"
            [[routes]]
            method = "POST"
            path = "/a/{y}/"
            "#,
        )
        .expect("parses: patterns are checked when the table is built");
        let Err(err) = RouteTable::new(&config.routes) else {
            panic!("conflicting patterns build a table");
        };
        assert!(err.to_string().starts_with("routes[1].path"), "{err}");
    }

    #[test]
    fn encoded_spellings_find_the_route_with_canonical_values() {
        let t = table(
            r#"
            [[routes]]
            method = "POST"
            path = "chat/session/<int:session_id>/send/"
            "#,
        );
        let padded = format!("/chat/session/{}17/send/", "0".repeat(4000));
        for target in [
            "/chat/session/17/send/",
            "/chat/session/17/s%65nd/",
            "/%63hat/session/17/send/",
            "/chat/session/17%2Fsend/",
            "/chat/session/0017/send/",
            "/chat%2fsession%2F%31%37/send/",
            &padded,
        ] {
            let m = t.find(&Method::POST, target).expect(target);
            assert_eq!(m.params, vec![("session_id".to_owned(), "17".to_owned())]);
            assert_eq!(m.canonical_path(), "/chat/session/17/send/");
        }
        for target in [
            "//chat/session/17/send/",
            "/chat/session/17/./send/",
            "/chat/session/17/send/;x",
            "/chat/session/%2565/send/",
            "/x/chat/session/17/send/",
        ] {
            assert!(t.find(&Method::POST, target).is_none(), "{target}");
        }
    }

    #[test]
    fn first_configured_route_wins() {
        let t = table(
            r#"
            [[routes]]
            method = "POST"
            path = "a/<int:id>/"
            deny_status = 403
            [[routes]]
            method = "POST"
            path = "a/<str:id>/"
            "#,
        );
        let m = t.find(&Method::POST, "/a/7/").expect("int");
        assert_eq!(m.route.deny_status, StatusCode::FORBIDDEN);
        let m = t.find(&Method::POST, "/a/x/").expect("str");
        assert_eq!(m.route.deny_status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn any_method_finds_a_path_taken_by_any_route() {
        let t = table("[[routes]]\nmethod = \"PUT\"\npath = \"q/<int:id>/\"\n");
        let taken = t.any_method("/q/%30017/").expect("the PUT route's path");
        assert_eq!(taken.name, "PUT q/<int:id>/");
        assert!(t.any_method("/quota-status/").is_none());
    }
}
