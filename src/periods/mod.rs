//! Calendar periods (phase: admit). The day, week and month an instant falls
//! in, in the configured IANA time zone.
//!
//! A period's label (`d2026-11-28`, `w2026-11-23`, `m2026-11`) is part of
//! every counter's key, so nothing is ever reset: a new day simply counts in a
//! new key, and November of another year is another month. This is what the
//! Django app got wrong by comparing only the month number.
//!
//! Months follow the configured [`CalendarSystem`]: the Gregorian month
//! (`m2026-12`) or the Persian, Solar Hijri, month (`p1405-09`, Azar 1405;
//! computed by ICU4X in `periods/persian.rs`). Each has its own tag, so a
//! Persian and a Gregorian month never share a counter, even in one store.
//! Days and weeks are the same in both.

use std::cell::Cell;
use std::fmt;
use std::fmt::Write as _;

use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

mod persian;

/// One of the three limited periods, in the order denials are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// A calendar day, from local midnight.
    Daily,
    /// A calendar week, from local midnight of the configured first day.
    Weekly,
    /// A calendar month, from local midnight of its first day.
    Monthly,
}

impl Period {
    /// All periods, in the order limits are checked and denials reported.
    pub const ALL: [Period; 3] = [Period::Daily, Period::Weekly, Period::Monthly];

    /// The lowercase name used in config, keys, headers and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which calendar months are cut in (`periods.calendar`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalendarSystem {
    /// Gregorian months, January to December: labels `m2026-12`.
    #[default]
    Gregorian,
    /// Persian (Solar Hijri) months, Farvardin to Esfand, as in Iran:
    /// labels `p1405-09` (Azar 1405).
    Persian,
}

impl CalendarSystem {
    /// The lowercase name used in config and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CalendarSystem::Gregorian => "gregorian",
            CalendarSystem::Persian => "persian",
        }
    }
}

/// The name of one concrete period in store keys: `d2026-11-28` (a day),
/// `w2026-11-23` (a week, by the local date it starts), `m2026-11` (a
/// Gregorian month) or `p1405-09` (a Persian month: year and month in the
/// Persian calendar). Stable across releases: counters in Redis are found by
/// it. A plain value (no allocation); [`fmt::Display`] renders it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeriodLabel {
    /// `d`, `w`, `m` or `p`: the period, and for a month its calendar.
    tag: u8,
    /// Year, month and day of the period's first day in the tag's calendar
    /// (the day is not written for months).
    year: i32,
    month: u32,
    day: u32,
}

impl PeriodLabel {
    /// The label of a day, week or Gregorian month starting on `first`.
    fn gregorian(period: Period, first: NaiveDate) -> Self {
        let tag = match period {
            Period::Daily => b'd',
            Period::Weekly => b'w',
            Period::Monthly => b'm',
        };
        Self {
            tag,
            year: first.year(),
            month: first.month(),
            day: first.day(),
        }
    }

    /// The label of Persian month `month` of `year`.
    fn persian_month(year: i32, month: u8) -> Self {
        Self {
            tag: b'p',
            year,
            month: u32::from(month),
            day: 1,
        }
    }

    /// The label's text, on the stack. Store keys are built from it on
    /// every call, where `write!` with padding cost about 1,000
    /// instructions per key (callgrind).
    pub fn text(&self) -> LabelText {
        let mut text = LabelText {
            bytes: [0; LABEL_MAX],
            len: 0,
        };
        let year = match u32::try_from(self.year) {
            Ok(year) if year <= 9_999 => year,
            _ => return self.text_slowly(text),
        };
        text.push(&[self.tag]);
        text.push_digits(year, 4);
        text.push(b"-");
        text.push_digits(self.month, 2);
        if !self.is_month() {
            text.push(b"-");
            text.push_digits(self.day, 2);
        }
        text
    }

    fn is_month(&self) -> bool {
        matches!(self.tag, b'm' | b'p')
    }

    /// The same text through `fmt`, for years without four digits.
    fn text_slowly(&self, mut text: LabelText) -> LabelText {
        let (tag, year, month, day) = (char::from(self.tag), self.year, self.month, self.day);
        // At most 14 bytes (`d-262143-12-31`): it fits.
        let _ = if self.is_month() {
            write!(text, "{tag}{year:04}-{month:02}")
        } else {
            write!(text, "{tag}{year:04}-{month:02}-{day:02}")
        };
        text
    }
}

impl fmt::Display for PeriodLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// Longest label text: a day of chrono's largest year, `d-262143-12-31`.
const LABEL_MAX: usize = 16;

/// A [`PeriodLabel`]'s text, held on the stack.
#[derive(Clone, Copy)]
pub struct LabelText {
    bytes: [u8; LABEL_MAX],
    len: usize,
}

impl LabelText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(LABEL_MAX);
        self.bytes[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }

    /// `value` as exactly `width` decimal digits, zero-padded.
    fn push_digits(&mut self, mut value: u32, width: usize) {
        let mut digits = [b'0'; 4];
        for digit in digits[..width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.push(&digits[..width]);
    }
}

impl fmt::Write for LabelText {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.len + s.len() > LABEL_MAX {
            return Err(fmt::Error);
        }
        self.push(s.as_bytes());
        Ok(())
    }
}

/// The concrete period an instant falls in: which one, where it starts and
/// ends, and the label that names it in store keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodWindow {
    /// Which period this is.
    pub period: Period,
    /// The first instant of the period.
    pub start: DateTime<Utc>,
    /// The first instant of the next period.
    pub end: DateTime<Utc>,
    /// A stable label, unique per period kind: `d2026-11-28`, `w2026-11-23`
    /// (the local date the week starts), `m2026-11` or `p1405-09` (a
    /// Persian month).
    pub label: PeriodLabel,
}

impl PeriodWindow {
    /// Whole seconds from `now` until the period ends, at least 1.
    pub fn seconds_left(&self, now: DateTime<Utc>) -> u64 {
        let (seconds, nanos) = time_between(now, self.end);
        let ms = seconds
            .saturating_mul(1000)
            .saturating_add(nanos / 1_000_000);
        (ms.max(0) as u64).div_ceil(1000).max(1)
    }

    /// The length of the period in whole seconds (a day is not always 86 400 s
    /// where the zone has daylight saving).
    pub fn length_seconds(&self) -> u64 {
        let (seconds, nanos) = time_between(self.start, self.end);
        (seconds + nanos / 1_000_000_000).max(0) as u64
    }
}

/// The time from `from` to `to` as whole seconds (rounded down) and the
/// nanoseconds past them (0 to 2 s, a leap second's included), from their
/// Unix timestamps: what `to - from` holds, without chrono's date
/// arithmetic (six such subtractions were 1% of a flagged request's
/// instructions, for its `RateLimit` header). Rounded down, a positive
/// time reads as `TimeDelta`'s `num_seconds` and `num_milliseconds` read
/// it; a negative one only ever counts as 0 here.
fn time_between(from: DateTime<Utc>, to: DateTime<Utc>) -> (i64, i64) {
    let mut seconds = to.timestamp() - from.timestamp();
    let mut nanos =
        i64::from(to.timestamp_subsec_nanos()) - i64::from(from.timestamp_subsec_nanos());
    while nanos < 0 {
        seconds -= 1;
        nanos += 1_000_000_000;
    }
    (seconds, nanos)
}

/// The day, week and month of one instant, in [`Period::ALL`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodWindows(pub [PeriodWindow; 3]);

impl PeriodWindows {
    /// The window of one period.
    pub fn get(&self, period: Period) -> &PeriodWindow {
        &self.0[period as usize]
    }

    /// All three windows, daily first.
    pub fn iter(&self) -> impl Iterator<Item = &PeriodWindow> {
        self.0.iter()
    }
}

/// Computes period windows in one time zone with one first day of the week
/// and one calendar for months.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    tz: Tz,
    week_start: Weekday,
    months: CalendarSystem,
}

impl Calendar {
    /// A calendar in `tz` whose weeks start on `week_start`, with Gregorian
    /// months.
    pub fn new(tz: Tz, week_start: Weekday) -> Self {
        Self {
            tz,
            week_start,
            months: CalendarSystem::Gregorian,
        }
    }

    /// The same calendar with months cut in `months`.
    pub fn with_months(self, months: CalendarSystem) -> Self {
        Self { months, ..self }
    }

    /// The calendar months are cut in.
    pub fn months(&self) -> CalendarSystem {
        self.months
    }

    /// The time zone periods are computed in.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The day, week and month that `now` falls in.
    ///
    /// Each thread remembers the last answer: while `now` stays in the same
    /// day (weeks and months start at a day's start, so they stay too) it is
    /// returned again without time-zone arithmetic.
    pub fn windows(&self, now: DateTime<Utc>) -> PeriodWindows {
        thread_local! {
            static LAST: Cell<Option<(Calendar, PeriodWindows)>> = const { Cell::new(None) };
        }
        if let Some((calendar, windows)) = LAST.get() {
            let day = windows.get(Period::Daily);
            if calendar == *self && day.start <= now && now < day.end {
                return windows;
            }
        }
        let windows = PeriodWindows(Period::ALL.map(|p| self.window(p, now)));
        LAST.set(Some((*self, windows)));
        windows
    }

    /// The window of `period` that `now` falls in.
    pub fn window(&self, period: Period, now: DateTime<Utc>) -> PeriodWindow {
        let today = now.with_timezone(&self.tz).date_naive();
        let (first, next) = match period {
            Period::Daily => (today, today + Days::new(1)),
            Period::Weekly => {
                let back = (7 + today.weekday().num_days_from_monday()
                    - self.week_start.num_days_from_monday())
                    % 7;
                let first = today - Days::new(u64::from(back));
                (first, first + Days::new(7))
            }
            Period::Monthly => {
                if self.months == CalendarSystem::Persian
                    && let Some(month) = persian::month_of(today)
                {
                    return PeriodWindow {
                        period,
                        start: self.local_midnight(month.first),
                        end: self.local_midnight(month.next),
                        label: PeriodLabel::persian_month(month.year, month.month),
                    };
                }
                // Gregorian; also a Persian calendar's fallback outside the
                // years -9999 to 9999, which no clock shows.
                let first = today.with_day(1).unwrap_or(today);
                (first, first + Months::new(1))
            }
        };
        PeriodWindow {
            period,
            start: self.local_midnight(first),
            end: self.local_midnight(next),
            label: PeriodLabel::gregorian(period, first),
        }
    }

    /// The first instant of `date` in the zone. Where midnight does not exist
    /// (a daylight-saving jump at 00:00, as Tehran had until 2022) the day
    /// starts at the first instant that does.
    fn local_midnight(&self, date: NaiveDate) -> DateTime<Utc> {
        let mut at = date.and_time(chrono::NaiveTime::MIN);
        for _ in 0..4 {
            match self.tz.from_local_datetime(&at) {
                LocalResult::Single(t) => return t.with_timezone(&Utc),
                LocalResult::Ambiguous(earliest, _) => return earliest.with_timezone(&Utc),
                LocalResult::None => at += chrono::Duration::minutes(30),
            }
        }
        // No zone skips more than two hours; fall back to reading it as UTC.
        Utc.from_utc_datetime(&date.and_time(chrono::NaiveTime::MIN))
    }
}

#[cfg(test)]
mod tests;
