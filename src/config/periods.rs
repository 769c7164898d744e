//! `[periods]` (phase: admit): the time zone and first weekday days,
//! weeks and months are cut in.

use serde::{Deserialize, Serialize};

use super::{TimeZone, WeekStart};

/// How periods are cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeriodsConfig {
    /// IANA time zone name, e.g. `Asia/Tehran`.
    pub timezone: TimeZone,
    /// First day of the week, e.g. `monday` or `saturday`.
    pub week_start: WeekStart,
    /// Calendar months are cut in: `gregorian` (the default) or `persian`
    /// (Solar Hijri months, Farvardin … Esfand). Days and weeks are the same
    /// in both.
    pub calendar: crate::periods::CalendarSystem,
}

impl Default for PeriodsConfig {
    fn default() -> Self {
        Self {
            timezone: TimeZone(chrono_tz::Asia::Tehran),
            week_start: WeekStart(chrono::Weekday::Mon),
            calendar: crate::periods::CalendarSystem::Gregorian,
        }
    }
}
