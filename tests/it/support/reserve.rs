//! Reserve requests as the store tests make them: UTC periods, weeks from
//! Monday.

use std::time::Duration;

use chrono::{DateTime, Utc, Weekday};
use quota_proxy::config::Limits;
use quota_proxy::periods::{Calendar, PeriodWindows};
use quota_proxy::store::ReserveRequest;

/// The day, week and month of `now`, in UTC, weeks from Monday.
pub fn utc_windows(now: DateTime<Utc>) -> PeriodWindows {
    Calendar::new(chrono_tz::UTC, Weekday::Mon).windows(now)
}

/// A reserve for `user` at `now` with a daily limit of `daily` (0 =
/// unlimited) and no weekly or monthly one.
pub fn daily_request(user: &str, daily: u64, now: DateTime<Utc>, ttl: Duration) -> ReserveRequest {
    ReserveRequest {
        user: user.to_owned(),
        limits: Limits {
            daily,
            weekly: 0,
            monthly: 0,
        },
        windows: utc_windows(now),
        now,
        ttl,
    }
}
