//! A user's standing after a decision, for its log line (phases: admit and
//! settle): what is left in each limited period, and the period that
//! decided: the exceeded one for a denial, the one with the least left for
//! an admission (the limit the user will meet first).

use crate::config::Limits;
use crate::periods::Period;
use crate::store::PeriodCounts;

/// Units left per period (`None` = unlimited) and the deciding period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Standing {
    /// The period that decided; `None` when no period is limited.
    pub(crate) period: Option<&'static str>,
    /// Left today.
    pub(crate) daily: Option<u64>,
    /// Left this week.
    pub(crate) weekly: Option<u64>,
    /// Left this month.
    pub(crate) monthly: Option<u64>,
}

impl Standing {
    /// The standing of a user with `limits` after the store counted
    /// `counts` (used + reserved, this request's unit included when it was
    /// admitted); `exceeded` is the period of a denial.
    pub(crate) fn new(limits: &Limits, counts: &PeriodCounts, exceeded: Option<Period>) -> Self {
        let left = |period: Period| match limits.of(period) {
            0 => None,
            limit => Some(limit.saturating_sub(counts.get(period))),
        };
        let tightest = Period::ALL
            .into_iter()
            .filter_map(|p| left(p).map(|n| (n, p)))
            // The first of equals: the shortest period.
            .min_by_key(|&(n, _)| n)
            .map(|(_, p)| p);
        Self {
            period: exceeded.or(tightest).map(Period::as_str),
            daily: left(Period::Daily),
            weekly: left(Period::Weekly),
            monthly: left(Period::Monthly),
        }
    }

    /// No limit is known (no identity, or an unlimited plan).
    pub(crate) const UNKNOWN: Standing = Standing {
        period: None,
        daily: None,
        weekly: None,
        monthly: None,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_with_least_left_decides_an_admission() {
        let limits = Limits {
            daily: 3,
            weekly: 10,
            monthly: 0,
        };
        let s = Standing::new(&limits, &PeriodCounts([1, 9, 40]), None);
        assert_eq!(
            s,
            Standing {
                period: Some("weekly"),
                daily: Some(2),
                weekly: Some(1),
                monthly: None
            }
        );
        let s = Standing::new(&limits, &PeriodCounts([3, 3, 3]), Some(Period::Daily));
        assert_eq!((s.period, s.daily), (Some("daily"), Some(0)));
        assert_eq!(
            Standing::new(&Limits::default(), &PeriodCounts::default(), None),
            Standing::UNKNOWN
        );
    }
}
