//! The plan table: plan names to limits, with the default for users whose
//! plan is missing or unknown.

use std::collections::BTreeMap;

use crate::config::Limits;

/// Plans by name and the fallback plan.
#[derive(Debug, Clone, Default)]
pub struct PlanTable {
    plans: BTreeMap<String, Limits>,
    default_plan: Option<String>,
}

impl PlanTable {
    /// A table of `plans`; users without a known plan get `default_plan`, or
    /// no limit at all when it is `None` (as Django does for a user without a
    /// subscription). The config validator ensures the default exists.
    pub fn new(plans: BTreeMap<String, Limits>, default_plan: Option<String>) -> Self {
        Self {
            plans,
            default_plan,
        }
    }

    /// The plan name and limits for a user who claims `plan`.
    pub fn resolve(&self, plan: Option<&str>) -> (Option<String>, Limits) {
        if let Some((name, limits)) = plan.and_then(|p| self.plans.get_key_value(p)) {
            return (Some(name.clone()), *limits);
        }
        match &self.default_plan {
            Some(name) => (
                Some(name.clone()),
                self.plans.get(name).copied().unwrap_or_default(),
            ),
            None => (None, Limits::default()),
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
}
