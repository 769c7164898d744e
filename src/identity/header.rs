//! Identity from headers set by a trusted front (an auth gateway, or Django
//! middleware in front of the proxy): `X-User-Id` and `X-Subscription-Type`.
//! Only safe where clients cannot reach the proxy without that front.

use async_trait::async_trait;
use http::{HeaderMap, HeaderName};

use super::{Identity, IdentityError, IdentitySource, PlanTable};

/// Reads the user id and plan name from two configured headers.
#[derive(Debug, Clone)]
pub struct HeaderIdentity {
    user_header: HeaderName,
    plan_header: HeaderName,
    plans: PlanTable,
}

impl HeaderIdentity {
    /// A source reading `user_header` and `plan_header`, resolving plans in
    /// `plans`.
    pub fn new(user_header: HeaderName, plan_header: HeaderName, plans: PlanTable) -> Self {
        Self {
            user_header,
            plan_header,
            plans,
        }
    }

    /// The identity in `headers`, without the async wrapper.
    pub fn read(&self, headers: &HeaderMap) -> Option<Identity> {
        let user_id = headers
            .get(&self.user_header)?
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|u| !u.is_empty())?;
        let claimed = headers
            .get(&self.plan_header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim);
        let (plan, limits) = self.plans.resolve(claimed);
        Some(Identity {
            user_id: user_id.to_owned(),
            plan,
            limits,
        })
    }
}

#[async_trait]
impl IdentitySource for HeaderIdentity {
    async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, IdentityError> {
        Ok(self.read(headers))
    }

    fn trusts_client_headers(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Limits;

    fn source() -> HeaderIdentity {
        let mut plans = BTreeMap::new();
        plans.insert(
            "pro".to_owned(),
            Limits {
                daily: 50,
                weekly: 0,
                monthly: 1000,
            },
        );
        HeaderIdentity::new(
            HeaderName::from_static("x-user-id"),
            HeaderName::from_static("x-subscription-type"),
            PlanTable::new(plans, None),
        )
    }

    #[test]
    fn reads_user_and_plan() {
        let mut h = HeaderMap::new();
        h.insert("x-user-id", "42".parse().expect("value"));
        h.insert("x-subscription-type", "pro".parse().expect("value"));
        let id = source().read(&h).expect("identity");
        assert_eq!(id.user_id, "42");
        assert_eq!(id.plan.as_deref(), Some("pro"));
        assert_eq!(id.limits.daily, 50);
    }

    #[test]
    fn missing_or_blank_user_is_anonymous() {
        let mut h = HeaderMap::new();
        assert!(source().read(&h).is_none());
        h.insert("x-user-id", "  ".parse().expect("value"));
        assert!(source().read(&h).is_none());
    }
}
