//! A user's usage as an operator sees it, and the operations on it: show,
//! reset, adjust. The admin API (`/v1/users/{id}/usage`) and the
//! `quota-proxy usage` subcommands both answer with a [`UserUsage`].
//!
//! Reset is `usage` then `adjust(-used)` per period: it removes what was
//! used up to that moment; a settle landing in between still counts.
//! Reservations in flight are not touched (they settle or expire by
//! themselves).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Limits, UserIdFormat};
use crate::identity::canonical_user_id;
use crate::periods::{Calendar, CalendarSystem, Period, PeriodWindows};
use crate::store::{PeriodUsage, QuotaStore, StoreError};

/// Longest user id accepted, in bytes.
const MAX_USER_BYTES: usize = 1024;

/// Which periods an operation touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PeriodChoice {
    /// The current day.
    Daily,
    /// The current week.
    Weekly,
    /// The current month.
    Monthly,
    /// Day, week and month (a refunded image counted in all three).
    All,
}

impl PeriodChoice {
    /// The periods chosen.
    pub fn periods(self) -> &'static [Period] {
        match self {
            PeriodChoice::Daily => &[Period::Daily],
            PeriodChoice::Weekly => &[Period::Weekly],
            PeriodChoice::Monthly => &[Period::Monthly],
            PeriodChoice::All => &Period::ALL,
        }
    }
}

impl std::str::FromStr for PeriodChoice {
    type Err = UsageError;

    fn from_str(s: &str) -> Result<Self, UsageError> {
        match s {
            "daily" => Ok(PeriodChoice::Daily),
            "weekly" => Ok(PeriodChoice::Weekly),
            "monthly" => Ok(PeriodChoice::Monthly),
            "all" => Ok(PeriodChoice::All),
            _ => Err(UsageError::Period(s.to_owned())),
        }
    }
}

/// Why a usage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The user id is empty or too long.
    #[error("user id must be 1 to {MAX_USER_BYTES} bytes")]
    User,
    /// The user id is not of `identity.user_id_format` (the proxy never
    /// counts such an id: it is anonymous).
    #[error("user id {user:?} is not of identity.user_id_format = {format:?}")]
    UserFormat {
        /// The id given.
        user: String,
        /// The configured format.
        format: UserIdFormat,
    },
    /// The plan named is not in `[plans]`.
    #[error("plan {plan:?} is not in [plans] (known: {known})")]
    UnknownPlan {
        /// The plan asked for.
        plan: String,
        /// The configured plans, comma-separated.
        known: String,
    },
    /// Not a period name.
    #[error("period {0:?}: expected daily, weekly, monthly or all")]
    Period(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One user's usage in the current day, week and month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsage {
    /// The user id.
    pub user: String,
    /// The plan the limits come from; `null` when no plan applies (then
    /// nothing is limited).
    pub plan: Option<String>,
    /// The time zone periods are cut in.
    pub timezone: String,
    /// The calendar months are cut in: `gregorian` or `persian`.
    pub calendar: CalendarSystem,
    /// Per period, in daily, weekly, monthly order.
    pub periods: Periods,
}

/// The three periods of a [`UserUsage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Periods {
    /// The current day.
    pub daily: PeriodReport,
    /// The current week.
    pub weekly: PeriodReport,
    /// The current month.
    pub monthly: PeriodReport,
}

/// Usage in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodReport {
    /// The period's name, as in its store key: `d2026-12-03`, `w2026-11-28`,
    /// `m2026-12` or, with the Persian calendar, `p1405-09` (Azar 1405).
    pub label: String,
    /// Settled usage.
    pub used: u64,
    /// Units held by requests in flight.
    pub reserved: u64,
    /// The plan's limit; `null` = unlimited.
    pub limit: Option<u64>,
    /// What is left (`limit - used - reserved`, at least 0); `null` =
    /// unlimited.
    pub remaining: Option<u64>,
    /// First instant of the period, RFC 3339 in the configured zone.
    pub start: String,
    /// First instant of the next period.
    pub end: String,
}

/// Show, reset and adjust usage in one store, with one config's calendar
/// and plans.
pub struct UsageOps<'a> {
    store: Arc<dyn QuotaStore>,
    config: &'a Config,
    calendar: Calendar,
}

impl<'a> UsageOps<'a> {
    /// Operations on `store` as `config` sees it.
    pub fn new(store: Arc<dyn QuotaStore>, config: &'a Config) -> Self {
        let calendar = Calendar::new(config.periods.timezone.0, config.periods.week_start.0)
            .with_months(config.periods.calendar);
        Self {
            store,
            config,
            calendar,
        }
    }

    /// `user`'s usage at `now`, with the limits of `plan` (the default plan
    /// when `None`).
    pub async fn show(
        &self,
        user: &str,
        plan: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, UsageError> {
        let user = &self.user(user)?;
        let (plan, limits) = self.plan(plan)?;
        let windows = self.calendar.windows(now);
        let usage = self.store.usage(user, &windows, now).await?;
        Ok(self.report(user, plan, limits, &windows, usage))
    }

    /// Sets the settled usage of `user` in the chosen periods to 0, and
    /// answers the usage after it.
    pub async fn reset(
        &self,
        user: &str,
        plan: Option<&str>,
        periods: PeriodChoice,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, UsageError> {
        let user = &self.user(user)?;
        self.plan(plan)?;
        let windows = self.calendar.windows(now);
        let usage = self.store.usage(user, &windows, now).await?;
        for &period in periods.periods() {
            let used = usage[period as usize].used;
            if used > 0 {
                let delta = i64::try_from(used).unwrap_or(i64::MAX);
                self.store
                    .adjust(user, windows.get(period), -delta, now)
                    .await?;
            }
        }
        tracing::info!(user, periods = ?periods, "usage reset by an operator");
        self.show(user, plan, now).await
    }

    /// Adds `delta` (negative = refund; never below 0) to `user`'s settled
    /// usage in the chosen periods, and answers the usage after it.
    pub async fn adjust(
        &self,
        user: &str,
        plan: Option<&str>,
        periods: PeriodChoice,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<UserUsage, UsageError> {
        let user = &self.user(user)?;
        self.plan(plan)?;
        let windows = self.calendar.windows(now);
        for &period in periods.periods() {
            self.store
                .adjust(user, windows.get(period), delta, now)
                .await?;
        }
        tracing::info!(user, periods = ?periods, delta, "usage adjusted by an operator");
        self.show(user, plan, now).await
    }

    /// `user` as the proxy counts it: its canonical form under
    /// `identity.user_id_format` (`0017` is `17` with `integer`).
    fn user(&self, user: &str) -> Result<String, UsageError> {
        if user.is_empty() || user.len() > MAX_USER_BYTES {
            return Err(UsageError::User);
        }
        let format = self.config.identity.user_id_format;
        canonical_user_id(format, user).ok_or_else(|| UsageError::UserFormat {
            user: user.to_owned(),
            format,
        })
    }

    /// The plan name and limits for `plan`, or for the default plan.
    fn plan(&self, plan: Option<&str>) -> Result<(Option<String>, Limits), UsageError> {
        let plans = &self.config.plans;
        match plan.or(self.config.identity.default_plan.as_deref()) {
            None => Ok((None, Limits::default())),
            Some(name) => match plans.get(name) {
                Some(found) => Ok((Some(name.to_owned()), found.limits())),
                None => Err(UsageError::UnknownPlan {
                    plan: name.to_owned(),
                    known: if plans.is_empty() {
                        "none".to_owned()
                    } else {
                        plans.keys().cloned().collect::<Vec<_>>().join(", ")
                    },
                }),
            },
        }
    }

    fn report(
        &self,
        user: &str,
        plan: Option<String>,
        limits: Limits,
        windows: &PeriodWindows,
        usage: [PeriodUsage; 3],
    ) -> UserUsage {
        let tz = self.calendar.timezone();
        let period = |period: Period| {
            let PeriodUsage { used, reserved } = usage[period as usize];
            let window = windows.get(period);
            let limit = Some(limits.of(period)).filter(|&l| l > 0);
            PeriodReport {
                label: window.label.to_string(),
                used,
                reserved,
                limit,
                remaining: limit.map(|l| l.saturating_sub(used + reserved)),
                start: window.start.with_timezone(&tz).to_rfc3339(),
                end: window.end.with_timezone(&tz).to_rfc3339(),
            }
        };
        UserUsage {
            user: user.to_owned(),
            plan,
            timezone: tz.name().to_owned(),
            calendar: self.calendar.months(),
            periods: Periods {
                daily: period(Period::Daily),
                weekly: period(Period::Weekly),
                monthly: period(Period::Monthly),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::store::MemoryStore;

    fn config() -> Config {
        Config::from_toml(
            r#"
            [periods]
            timezone = "UTC"
            [identity]
            default_plan = "free"
            [plans]
            free = { daily = 3, weekly = 10, monthly = 0 }
            pro = { daily = 50 }
            "#,
        )
        .expect("config")
    }

    #[tokio::test]
    async fn show_adjust_reset() {
        let config = config();
        let ops = UsageOps::new(Arc::new(MemoryStore::new(10)), &config);
        let now = Utc
            .with_ymd_and_hms(2026, 3, 4, 12, 0, 0)
            .single()
            .expect("instant");
        let shown = ops.show("7", None, now).await.expect("show");
        assert_eq!(shown.plan.as_deref(), Some("free"));
        assert_eq!(shown.periods.daily.limit, Some(3));
        assert_eq!(shown.periods.monthly.limit, None);
        assert_eq!(shown.periods.daily.start, "2026-03-04T00:00:00+00:00");
        assert_eq!(shown.periods.daily.end, "2026-03-05T00:00:00+00:00");

        let after = ops
            .adjust("7", None, PeriodChoice::All, 2, now)
            .await
            .expect("adjust");
        assert_eq!(after.periods.daily.used, 2);
        assert_eq!(after.periods.daily.remaining, Some(1));
        assert_eq!(after.periods.monthly.used, 2);
        let after = ops
            .adjust("7", Some("pro"), PeriodChoice::Daily, -1, now)
            .await
            .expect("refund");
        assert_eq!(after.plan.as_deref(), Some("pro"));
        assert_eq!(
            (after.periods.daily.used, after.periods.weekly.used),
            (1, 2)
        );
        let after = ops
            .reset("7", None, PeriodChoice::Weekly, now)
            .await
            .expect("reset");
        assert_eq!(
            (after.periods.daily.used, after.periods.weekly.used),
            (1, 0)
        );
    }

    #[tokio::test]
    async fn persian_calendar_names_the_persian_month() {
        let config = Config::from_toml(
            r#"
            [periods]
            timezone = "Asia/Tehran"
            week_start = "saturday"
            calendar = "persian"
            [identity]
            default_plan = "free"
            [plans]
            free = { daily = 3, weekly = 10, monthly = 30 }
            "#,
        )
        .expect("config");
        let ops = UsageOps::new(Arc::new(MemoryStore::new(10)), &config);
        // 2026-12-03 13:30 in Tehran is 12 Azar 1405.
        let now = Utc
            .with_ymd_and_hms(2026, 12, 3, 10, 0, 0)
            .single()
            .expect("instant");
        let shown = ops
            .adjust("7", None, PeriodChoice::Monthly, 4, now)
            .await
            .expect("adjust");
        assert_eq!(shown.calendar, CalendarSystem::Persian);
        let month = &shown.periods.monthly;
        assert_eq!(month.label, "p1405-09");
        assert_eq!(month.start, "2026-11-22T00:00:00+03:30");
        assert_eq!(month.end, "2026-12-22T00:00:00+03:30");
        assert_eq!((month.used, month.remaining), (4, Some(26)));
        assert_eq!(shown.periods.daily.label, "d2026-12-03");
        assert_eq!(shown.periods.weekly.label, "w2026-11-28");
        let json = serde_json::to_value(&shown).expect("json");
        assert_eq!(json["calendar"], "persian");
        assert_eq!(json["periods"]["monthly"]["label"], "p1405-09");
    }

    #[tokio::test]
    async fn unknown_plan_and_bad_input_are_errors() {
        let config = config();
        let ops = UsageOps::new(Arc::new(MemoryStore::new(10)), &config);
        let err = ops
            .show("7", Some("gold"), Utc::now())
            .await
            .expect_err("unknown plan");
        assert!(err.to_string().contains("free, pro"), "{err}");
        assert!(matches!(
            ops.show("", None, Utc::now()).await,
            Err(UsageError::User)
        ));
        assert!("hourly".parse::<PeriodChoice>().is_err());
    }

    #[tokio::test]
    async fn user_ids_are_counted_in_their_canonical_form() {
        let config = Config::from_toml(
            "[identity]\nuser_id_format = \"integer\"\ndefault_plan = \"free\"\n\
             [plans]\nfree = { daily = 3 }",
        )
        .expect("config");
        let ops = UsageOps::new(Arc::new(MemoryStore::new(10)), &config);
        let now = Utc::now();
        ops.adjust("0017", None, PeriodChoice::All, 2, now)
            .await
            .expect("adjust");
        let shown = ops.show("+17", None, now).await.expect("show");
        assert_eq!((shown.user.as_str(), shown.periods.daily.used), ("17", 2));
        assert!(matches!(
            ops.show("seventeen", None, now).await,
            Err(UsageError::UserFormat { .. })
        ));
        assert_eq!("all".parse::<PeriodChoice>().ok(), Some(PeriodChoice::All));
    }
}
