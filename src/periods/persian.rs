//! The Persian (Solar Hijri) month a local date falls in (phase: admit),
//! for `periods.calendar = "persian"`.
//!
//! The calendar itself comes from ICU4X (`icu_calendar`): its `Persian`
//! calendar knows which years are leap (Esfand has 30 days instead of 29) by
//! the rule Iran uses, so nothing here encodes a leap rule. This module only
//! turns a Gregorian local date into the Gregorian dates of the first day of
//! its Persian month and of the next one; the caller turns those into local
//! midnights in the configured zone, as for every other period.
//!
//! Cost: one conversion (a few arithmetic steps in ICU4X) per call; the
//! caller remembers the answer for the rest of the day.

use chrono::{Datelike, Days, NaiveDate};
use icu_calendar::Date;
use icu_calendar::cal::Persian;

/// One Persian month, as Gregorian local dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PersianMonth {
    /// The Persian year (Anno Persico), e.g. 1405.
    pub(super) year: i32,
    /// The month, 1 (Farvardin) to 12 (Esfand).
    pub(super) month: u8,
    /// The Gregorian date of the month's first day.
    pub(super) first: NaiveDate,
    /// The Gregorian date of the next month's first day.
    pub(super) next: NaiveDate,
}

/// The Persian month `date` (a local, Gregorian date) falls in; `None`
/// outside ICU4X's years (-9999 to 9999), which no clock reaches.
pub(super) fn month_of(date: NaiveDate) -> Option<PersianMonth> {
    let month = u8::try_from(date.month()).ok()?;
    let day = u8::try_from(date.day()).ok()?;
    let persian = Date::try_new_iso(date.year(), month, day)
        .ok()?
        .to_calendar(Persian);
    let day_of_month = persian.day_of_month().0;
    let first = date.checked_sub_days(Days::new(u64::from(day_of_month.checked_sub(1)?)))?;
    let next = first.checked_add_days(Days::new(u64::from(persian.days_in_month())))?;
    Some(PersianMonth {
        year: persian.era_year().year,
        month: persian.month().ordinal,
        first,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().expect("test date")
    }

    fn month(s: &str) -> (i32, u8, String, String) {
        let m = month_of(date(s)).expect("in range");
        (m.year, m.month, m.first.to_string(), m.next.to_string())
    }

    /// Dates checked against a second implementation (Python's
    /// `jdatetime` 6.1.1, 33-year arithmetic rule) and the published
    /// Nowruz dates: 1403 began on 2024-03-20, 1404 on 2025-03-21.
    #[test]
    fn esfand_and_farvardin_in_a_leap_and_a_common_year() {
        // 1402 is common: Esfand 1402 has 29 days, ending 2024-03-19.
        assert_eq!(
            month("2024-03-19"),
            (1402, 12, "2024-02-20".into(), "2024-03-20".into())
        );
        assert_eq!(
            month("2024-03-20"),
            (1403, 1, "2024-03-20".into(), "2024-04-20".into())
        );
        // 1403 is leap: Esfand 1403 has 30 days (2025-02-19 to 2025-03-20).
        assert_eq!(
            month("2025-02-19"),
            (1403, 12, "2025-02-19".into(), "2025-03-21".into())
        );
        assert_eq!(
            month("2025-03-20"),
            (1403, 12, "2025-02-19".into(), "2025-03-21".into())
        );
        assert_eq!(
            month("2025-03-21"),
            (1404, 1, "2025-03-21".into(), "2025-04-21".into())
        );
        // 1404 is common again: Nowruz 1405 is 2026-03-21.
        assert_eq!(
            month("2026-03-20"),
            (1404, 12, "2026-02-20".into(), "2026-03-21".into())
        );
    }

    #[test]
    fn dey_spans_the_gregorian_new_year() {
        // Dey 1403: 2024-12-21 to 2025-01-19.
        for d in ["2024-12-21", "2024-12-31", "2025-01-01", "2025-01-19"] {
            assert_eq!(
                month(d),
                (1403, 10, "2024-12-21".into(), "2025-01-20".into()),
                "{d}"
            );
        }
        assert_eq!(month("2025-01-20").1, 11);
        // Today's month in the example: Azar 1405.
        assert_eq!(
            month("2026-12-03"),
            (1405, 9, "2026-11-22".into(), "2026-12-22".into())
        );
    }

    #[test]
    fn every_day_for_sixty_years_is_in_one_month_and_months_touch() {
        let mut day = date("1990-01-01");
        let mut last: Option<PersianMonth> = None;
        while day < date("2050-01-01") {
            let m = month_of(day).expect("in range");
            assert!(m.first <= day && day < m.next, "{day}: {m:?}");
            let length = (m.next - m.first).num_days();
            assert!((29..=31).contains(&length), "{day}: {length} days");
            if let Some(prev) = last.filter(|p| *p != m) {
                assert_eq!(prev.next, m.first, "contiguous at {day}");
                let expected = if prev.month == 12 {
                    (prev.year + 1, 1)
                } else {
                    (prev.year, prev.month + 1)
                };
                assert_eq!((m.year, m.month), expected, "{day}");
            }
            last = Some(m);
            day = day.succ_opt().expect("next day");
        }
    }

    /// Every Nowruz from 1300 to 1500 as a second implementation computes
    /// it; with consecutive Nowruz dates this checks every leap year too
    /// (Esfand runs up to the next Nowruz: 29 or 30 days).
    #[test]
    fn nowruz_agrees_with_a_second_implementation() {
        let nowruz: Vec<(i32, NaiveDate)> = include_str!("nowruz.txt")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (year, day) = l.split_once(' ').expect("year and date");
                (year.parse().expect("year"), date(day))
            })
            .collect();
        assert_eq!(nowruz.len(), 201);
        for pair in nowruz.windows(2) {
            let [(year, first), (next_year, next)] = pair else {
                unreachable!("windows(2)")
            };
            let farvardin = month_of(*first).expect("in range");
            assert_eq!(
                (farvardin.year, farvardin.month, farvardin.first),
                (*year, 1, *first)
            );
            let esfand = month_of(*next - Days::new(1)).expect("in range");
            assert_eq!((esfand.year, esfand.month, esfand.next), (*year, 12, *next));
            assert_eq!(
                month_of(*next).map(|m| (m.year, m.month)),
                Some((*next_year, 1))
            );
        }
    }

    #[test]
    fn outside_icu_years_is_none() {
        let far = NaiveDate::from_ymd_opt(12_000, 1, 1).expect("date");
        assert_eq!(month_of(far), None);
    }
}
