//! The plan table (phase: identify): plan names to limits, with the
//! default for users whose plan is missing or unknown.
//!
//! Names match exactly, or ignoring case under `identity.plan_case =
//! "insensitive"`. A plan name that is not in the table gets the default
//! plan, is counted (`quota_proxy_unknown_plan_total`) and logged once per
//! name, up to [`UNKNOWN_NAMES_LOGGED`] names (the names come from the
//! identity source, so their number is bounded here).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::config::{Config, Limits, PlanCase};

/// Most distinct unknown plan names logged; later ones are only counted.
const UNKNOWN_NAMES_LOGGED: usize = 1000;

/// Plans by name and the fallback plan. Names are shared (`Arc<str>`): an
/// identity names its plan without a copy of the name.
#[derive(Debug, Clone, Default)]
pub struct PlanTable {
    plans: BTreeMap<Arc<str>, Limits>,
    /// Under `plan_case = "insensitive"`: each plan's lower-cased name, with
    /// the name and limits; empty otherwise.
    lowered: Vec<(String, Arc<str>, Limits)>,
    default_plan: Option<Arc<str>>,
    case: PlanCase,
    /// Unknown names already logged, shared by the clones of one table.
    logged: Arc<Mutex<HashSet<String>>>,
}

impl PlanTable {
    /// A table of `plans`; users without a known plan get `default_plan`, or
    /// no limit at all when it is `None` (as Django does for a user without a
    /// subscription). The config validator ensures the default exists.
    pub fn new(plans: BTreeMap<String, Limits>, default_plan: Option<String>) -> Self {
        Self {
            plans: plans
                .into_iter()
                .map(|(name, limits)| (Arc::from(name), limits))
                .collect(),
            lowered: Vec::new(),
            default_plan: default_plan.map(Arc::from),
            case: PlanCase::Sensitive,
            logged: Arc::default(),
        }
    }

    /// The table of `config`: `[plans]`, `identity.default_plan` and
    /// `identity.plan_case`.
    pub fn from_config(config: &Config) -> Self {
        let table = Self::new(
            config
                .plans
                .iter()
                .map(|(name, plan)| (name.clone(), plan.limits()))
                .collect(),
            config.identity.default_plan.clone(),
        );
        let lowered = match config.identity.plan_case {
            PlanCase::Sensitive => Vec::new(),
            PlanCase::Insensitive => table
                .plans
                .iter()
                .map(|(name, limits)| (name.to_lowercase(), Arc::clone(name), *limits))
                .collect(),
        };
        Self {
            case: config.identity.plan_case,
            lowered,
            ..table
        }
    }

    /// The plan name and limits for a user who claims `plan`.
    pub fn resolve(&self, plan: Option<&str>) -> (Option<Arc<str>>, Limits) {
        if let Some(claimed) = plan {
            let found = match self.case {
                PlanCase::Sensitive => self.plans.get_key_value(claimed),
                PlanCase::Insensitive => {
                    let claimed = claimed.to_lowercase();
                    self.lowered
                        .iter()
                        .find(|(lower, _, _)| *lower == claimed)
                        .map(|(_, name, limits)| (name, limits))
                }
            };
            if let Some((name, limits)) = found {
                return (Some(Arc::clone(name)), *limits);
            }
            self.unknown(claimed);
        }
        match &self.default_plan {
            Some(name) => (
                Some(Arc::clone(name)),
                self.plans.get(name).copied().unwrap_or_default(),
            ),
            None => (None, Limits::default()),
        }
    }

    /// Counts an unknown plan name, and logs it the first time it is seen.
    fn unknown(&self, name: &str) {
        crate::counters::unknown_plan();
        let first = match self.logged.lock() {
            Ok(mut logged) if logged.len() < UNKNOWN_NAMES_LOGGED => logged.insert(name.to_owned()),
            _ => false,
        };
        if first {
            tracing::warn!(
                plan = name,
                default_plan = self.default_plan.as_deref().unwrap_or("-"),
                "unknown plan name; the default plan applies (logged once per name; see \
                 identity.plan_case and [plans])"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_or_missing_plan_falls_back() {
        let mut plans = BTreeMap::new();
        plans.insert(
            "free".to_owned(),
            Limits {
                daily: 3,
                weekly: 10,
                monthly: 30,
            },
        );
        plans.insert(
            "pro".to_owned(),
            Limits {
                daily: 50,
                weekly: 0,
                monthly: 1000,
            },
        );
        let with_default = PlanTable::new(plans.clone(), Some("free".to_owned()));
        assert_eq!(with_default.resolve(Some("pro")).1.daily, 50);
        assert_eq!(
            with_default.resolve(Some("gold")).0.as_deref(),
            Some("free")
        );
        assert_eq!(with_default.resolve(None).1.daily, 3);
        let without = PlanTable::new(plans, None);
        assert!(without.resolve(Some("gold")).1.is_unlimited());
        assert_eq!(without.resolve(None).0, None);
    }

    #[test]
    fn plan_case_insensitive_matches_any_case() {
        let mut config = Config::default();
        config.plans.insert(
            "pro".to_owned(),
            crate::config::Plan {
                daily: 50,
                ..Default::default()
            },
        );
        let sensitive = PlanTable::from_config(&config);
        assert_eq!(sensitive.resolve(Some("Pro")).0, None);
        config.identity.plan_case = PlanCase::Insensitive;
        let insensitive = PlanTable::from_config(&config);
        assert_eq!(insensitive.resolve(Some("Pro")).0.as_deref(), Some("pro"));
        assert_eq!(insensitive.resolve(Some("PRO")).1.daily, 50);
    }

    #[test]
    fn unknown_names_are_remembered_once_and_bounded() {
        let table = PlanTable::new(BTreeMap::new(), None);
        table.resolve(Some("gold"));
        table.resolve(Some("gold"));
        for i in 0..UNKNOWN_NAMES_LOGGED + 10 {
            table.resolve(Some(&format!("plan{i}")));
        }
        let logged = table.logged.lock().expect("lock");
        assert_eq!(logged.len(), UNKNOWN_NAMES_LOGGED);
        assert!(logged.contains("gold"));
    }
}
