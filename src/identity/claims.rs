//! What Django's answer or a token says about a user (phase: identify): a
//! user id, maybe a plan name, maybe limits. Turned into an [`Identity`]
//! against the plan table, the same way for both sources.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::{Identity, PlanTable};

/// Limits stated by the identity source, each overriding the plan's for its
/// period; a missing one (or JSON `null`) keeps the plan's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct LimitOverrides {
    pub(crate) daily: Option<u64>,
    pub(crate) weekly: Option<u64>,
    pub(crate) monthly: Option<u64>,
}

impl LimitOverrides {
    fn is_empty(&self) -> bool {
        self.daily.is_none() && self.weekly.is_none() && self.monthly.is_none()
    }
}

/// A user id from JSON: a non-empty string or an integer (Django's `pk`, or
/// simplejwt's `user_id` claim, is either). Strings with control characters
/// are refused: the id is sent on in a header and used in store keys.
pub(crate) fn user_id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() && !s.chars().any(char::is_control) => {
            Some(s.clone())
        }
        Value::Number(n) if n.is_u64() || n.is_i64() => Some(n.to_string()),
        _ => None,
    }
}

/// The identity of `user_id` on `plan`, with `overrides` on top of the
/// plan's limits. The plan name kept is the source's when it stated limits
/// (it is authoritative for them), else the plan table's resolution, so logs
/// name the plan whose limits apply.
pub(crate) fn identity_of(
    plans: &PlanTable,
    user_id: String,
    plan: Option<&str>,
    overrides: LimitOverrides,
) -> Identity {
    let plan = plan.map(str::trim).filter(|p| !p.is_empty());
    let (resolved, mut limits) = plans.resolve(plan);
    let plan = if overrides.is_empty() {
        resolved
    } else {
        plan.map(Arc::from).or(resolved)
    };
    if let Some(daily) = overrides.daily {
        limits.daily = daily;
    }
    if let Some(weekly) = overrides.weekly {
        limits.weekly = weekly;
    }
    if let Some(monthly) = overrides.monthly {
        limits.monthly = monthly;
    }
    Identity {
        user_id,
        plan,
        limits,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::config::Limits;

    fn plans() -> PlanTable {
        let mut plans = BTreeMap::new();
        plans.insert(
            "free".to_owned(),
            Limits {
                daily: 3,
                weekly: 10,
                monthly: 30,
            },
        );
        PlanTable::new(plans, Some("free".to_owned()))
    }

    #[test]
    fn user_ids_from_strings_and_integers() {
        assert_eq!(user_id_of(&json!("42")).as_deref(), Some("42"));
        assert_eq!(user_id_of(&json!(42)).as_deref(), Some("42"));
        assert_eq!(user_id_of(&json!(-7)).as_deref(), Some("-7"));
        for bad in [
            json!(""),
            json!("  "),
            json!("a\nb"),
            json!(4.5),
            json!(null),
            json!(true),
            json!([1]),
        ] {
            assert_eq!(user_id_of(&bad), None, "{bad}");
        }
    }

    #[test]
    fn overrides_replace_only_the_periods_they_name() {
        let id = identity_of(
            &plans(),
            "42".to_owned(),
            Some("free"),
            LimitOverrides {
                daily: Some(5),
                ..LimitOverrides::default()
            },
        );
        assert_eq!(
            id.limits,
            Limits {
                daily: 5,
                weekly: 10,
                monthly: 30
            }
        );
        assert_eq!(id.plan.as_deref(), Some("free"));
    }

    #[test]
    fn plan_name_kept_when_the_source_states_limits() {
        let stated = LimitOverrides {
            daily: Some(1),
            weekly: Some(2),
            monthly: Some(3),
        };
        let id = identity_of(&plans(), "1".to_owned(), Some("gold"), stated);
        assert_eq!(id.plan.as_deref(), Some("gold"));
        assert_eq!(id.limits.monthly, 3);
        // Without limits an unknown plan falls back to the default plan.
        let id = identity_of(
            &plans(),
            "1".to_owned(),
            Some("gold"),
            LimitOverrides::default(),
        );
        assert_eq!(id.plan.as_deref(), Some("free"));
        assert_eq!(id.limits.daily, 3);
    }
}
