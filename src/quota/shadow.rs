//! Shadow mode (phase: admit): a flagged request over a limit is forwarded
//! instead of denied when the config (`shadow`), its route
//! (`routes[i].shadow`) or its user's plan (`[plans] x = { …, shadow =
//! true }`) says so; any one of them is enough.
//!
//! Everything else is as in enforce mode: a request with room reserves and
//! settles as usual, RateLimit headers are sent, usage is counted. A request
//! that would be denied is logged as `would deny` with its period, counted
//! as `decision="shadow_denied"`, and carries `shadow_header: <period>` to
//! the upstream. It holds no reservation (the store refused one): its
//! usage is settled from the upstream's report as a report for a request
//! without a reservation is (counted once), so usage stays true and
//! switching to enforce starts from real numbers.
//!
//! Shadow mode changes only limit denials: anonymous callers, identity and
//! store failures follow their own policies (`identity.anonymous`,
//! `identity.on_identity_error`, `store.on_store_error`).

use std::collections::HashSet;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Config, PlanCase};
use crate::periods::Period;
use crate::quota::routes::Route;

/// Who is in shadow mode, and how the upstream is told.
#[derive(Debug, Clone)]
pub(crate) struct ShadowPolicy {
    /// Top-level `shadow`.
    everywhere: bool,
    /// Plans with `shadow = true`; lower case under `plan_case =
    /// "insensitive"`.
    plans: HashSet<String>,
    case: PlanCase,
    /// `shadow_header`; `None` when `""`.
    header: Option<HeaderName>,
}

impl ShadowPolicy {
    /// The policy of a validated `config`.
    pub(crate) fn new(config: &Config) -> Self {
        let case = config.identity.plan_case;
        Self {
            everywhere: config.shadow,
            plans: config
                .plans
                .iter()
                .filter(|(_, plan)| plan.shadow)
                .map(|(name, _)| fold(case, name))
                .collect(),
            case,
            header: config.shadow_header.name().cloned(),
        }
    }

    /// Whether a user on `plan` is in shadow mode wherever they ask (the
    /// top-level switch or their plan's).
    pub(crate) fn of_user(&self, plan: Option<&str>) -> bool {
        self.everywhere || plan.is_some_and(|plan| self.plans.contains(&fold(self.case, plan)))
    }

    /// Whether a request on `route` by a user on `plan` is in shadow mode.
    pub(crate) fn applies(&self, route: &Route, plan: Option<&str>) -> bool {
        route.shadow || self.of_user(plan)
    }

    /// Tells the upstream which period would have denied the request.
    pub(crate) fn mark(&self, headers: &mut HeaderMap, period: Period) {
        if let Some(name) = &self.header {
            headers.insert(name.clone(), HeaderValue::from_static(period.as_str()));
        }
    }
}

fn fold(case: PlanCase, name: &str) -> String {
    match case {
        PlanCase::Sensitive => name.to_owned(),
        PlanCase::Insensitive => name.to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> ShadowPolicy {
        ShadowPolicy::new(&Config::from_toml(toml).expect("config"))
    }

    #[test]
    fn any_of_config_route_or_plan_puts_a_request_in_shadow() {
        let plans = "[plans]\nfree = { daily = 3, shadow = true }\npro = { daily = 50 }\n";
        let by_plan = policy(plans);
        let mut route = crate::quota::routes::RouteTable::new(
            &Config::from_toml("[[routes]]\nmethod = \"POST\"\npath = \"/gen/\"\n")
                .expect("config")
                .routes,
        )
        .expect("routes")
        .find(&http::Method::POST, "/gen/")
        .expect("route")
        .route
        .as_ref()
        .clone();
        assert!(by_plan.applies(&route, Some("free")));
        assert!(!by_plan.applies(&route, Some("pro")));
        assert!(
            !by_plan.applies(&route, Some("FREE")),
            "names match exactly"
        );
        assert!(!by_plan.applies(&route, None));
        let insensitive = policy(&format!("[identity]\nplan_case = \"insensitive\"\n{plans}"));
        assert!(insensitive.applies(&route, Some("FREE")));
        assert!(policy(&format!("shadow = true\n{plans}")).applies(&route, Some("pro")));
        route.shadow = true;
        assert!(by_plan.applies(&route, Some("pro")));
        assert!(
            !by_plan.of_user(Some("pro")),
            "a route's shadow is not the user's"
        );
    }

    #[test]
    fn the_header_names_the_period_or_is_off() {
        let mut headers = HeaderMap::new();
        policy("").mark(&mut headers, Period::Weekly);
        assert_eq!(headers["x-quota-shadow-denied"], "weekly");
        let mut headers = HeaderMap::new();
        policy("shadow_header = \"\"").mark(&mut headers, Period::Daily);
        assert!(headers.is_empty());
    }
}
