//! Tests of the calendar periods.

use super::*;

#[test]
fn label_text_is_zero_padded_for_every_year() {
    let first = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("date");
    let cases = [
        (Period::Daily, first(2026, 1, 5), "d2026-01-05"),
        (Period::Weekly, first(987, 12, 30), "w0987-12-30"),
        (Period::Monthly, first(2026, 11, 1), "m2026-11"),
        (Period::Daily, first(0, 2, 29), "d0000-02-29"),
        // Outside four digits, the same text `fmt` gives.
        (Period::Daily, first(12345, 6, 7), "d12345-06-07"),
        (Period::Monthly, first(-1, 1, 1), "m-001-01"),
        (Period::Daily, first(-262_143, 1, 1), "d-262143-01-01"),
    ];
    for (period, first, text) in cases {
        let label = PeriodLabel::gregorian(period, first);
        assert_eq!(label.text().as_str(), text);
        assert_eq!(label.to_string(), text);
    }
}

fn tehran(monday: bool) -> Calendar {
    let start = if monday { Weekday::Mon } else { Weekday::Sat };
    Calendar::new(chrono_tz::Asia::Tehran, start)
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

#[test]
fn day_starts_at_tehran_midnight() {
    // 20:29 UTC is 23:59 in Tehran (+03:30); 20:30 UTC is the next day.
    let cal = tehran(true);
    let before = cal.window(Period::Daily, utc("2026-11-28T20:29:59Z"));
    let after = cal.window(Period::Daily, utc("2026-11-28T20:30:00Z"));
    assert_eq!(before.label.to_string(), "d2026-11-28");
    assert_eq!(after.label.to_string(), "d2026-11-29");
    assert_eq!(after.start, utc("2026-11-28T20:30:00Z"));
    assert_eq!(after.end, utc("2026-11-29T20:30:00Z"));
    assert_eq!(before.end, after.start);
}

#[test]
fn remembered_windows_follow_the_instant_and_the_calendar() {
    let monday = tehran(true);
    let saturday = tehran(false);
    let persian = saturday.with_months(CalendarSystem::Persian);
    let fresh = |cal: Calendar, now| PeriodWindows(Period::ALL.map(|p| cal.window(p, now)));
    // Same thread, so each call may reuse the one before it.
    for now in [
        "2026-11-28T20:29:59Z",
        "2026-11-28T20:30:00Z",
        "2026-11-28T20:29:59Z",
        "2026-11-30T20:30:00Z",
    ] {
        for cal in [monday, saturday, persian, saturday, monday] {
            assert_eq!(cal.windows(utc(now)), fresh(cal, utc(now)), "{now}");
        }
    }
}

#[test]
fn monday_week_start() {
    // 2026-11-28 is a Saturday; its Monday week began 2026-11-23.
    let cal = tehran(true);
    let w = cal.window(Period::Weekly, utc("2026-11-28T10:00:00Z"));
    assert_eq!(w.label.to_string(), "w2026-11-23");
    assert_eq!(w.start, utc("2026-11-22T20:30:00Z"));
    assert_eq!(w.end, utc("2026-11-29T20:30:00Z"));
    // Sunday 23:59 local is still that week; Monday 00:00 is the next.
    let sunday_late = cal.window(Period::Weekly, utc("2026-11-29T20:29:59Z"));
    let monday = cal.window(Period::Weekly, utc("2026-11-29T20:30:00Z"));
    assert_eq!(sunday_late.label.to_string(), "w2026-11-23");
    assert_eq!(monday.label.to_string(), "w2026-11-30");
}

#[test]
fn saturday_week_start() {
    let cal = tehran(false);
    // Friday 23:59 local belongs to the week that began the Saturday before.
    let friday = cal.window(Period::Weekly, utc("2026-11-27T20:29:59Z"));
    let saturday = cal.window(Period::Weekly, utc("2026-11-27T20:30:00Z"));
    assert_eq!(friday.label.to_string(), "w2026-11-21");
    assert_eq!(saturday.label.to_string(), "w2026-11-28");
    assert_eq!(saturday.length_seconds(), 7 * 86_400);
}

#[test]
fn month_and_year_change() {
    let cal = tehran(true);
    let dec = cal.window(Period::Monthly, utc("2026-12-31T20:29:59Z"));
    let jan = cal.window(Period::Monthly, utc("2026-12-31T20:30:00Z"));
    assert_eq!(dec.label.to_string(), "m2026-12");
    assert_eq!(jan.label.to_string(), "m2027-01");
    assert_eq!(dec.end, jan.start);
    // The same month number in another year is another period.
    let next_dec = cal.window(Period::Monthly, utc("2027-12-10T00:00:00Z"));
    assert_ne!(next_dec.label, dec.label);
}

fn persian() -> Calendar {
    tehran(false).with_months(CalendarSystem::Persian)
}

/// (label, start, end) of the Persian month at `now`, in Tehran.
fn persian_month(now: &str) -> (String, DateTime<Utc>, DateTime<Utc>) {
    let w = persian().window(Period::Monthly, utc(now));
    (w.label.to_string(), w.start, w.end)
}

#[test]
fn persian_month_turns_at_tehran_midnight_of_nowruz() {
    // Leap 1403: Esfand has 30 days; Nowruz 1404 is 2025-03-21, whose
    // midnight in Tehran (+03:30) is 20:30 UTC the day before.
    let esfand_1403 = (
        "p1403-12".to_owned(),
        utc("2025-02-18T20:30:00Z"),
        utc("2025-03-20T20:30:00Z"),
    );
    assert_eq!(persian_month("2025-03-20T20:29:59Z"), esfand_1403);
    let farvardin = persian_month("2025-03-20T20:30:00Z");
    assert_eq!(farvardin.0, "p1404-01");
    assert_eq!(
        (farvardin.1, farvardin.2),
        (esfand_1403.2, utc("2025-04-20T20:30:00Z"))
    );
    assert_eq!(esfand_1403.2 - esfand_1403.1, chrono::Duration::days(30));
    // Common 1402: Esfand has 29 days; Nowruz 1403 is 2024-03-20.
    let esfand_1402 = persian_month("2024-03-19T20:29:59Z");
    assert_eq!(esfand_1402.0, "p1402-12");
    assert_eq!(esfand_1402.2 - esfand_1402.1, chrono::Duration::days(29));
    assert_eq!(esfand_1402.2, utc("2024-03-19T20:30:00Z"));
    assert_eq!(persian_month("2024-03-19T20:30:00Z").0, "p1403-01");
}

#[test]
fn persian_dey_spans_the_gregorian_new_year() {
    // Dey 1403 is 2024-12-21 to 2025-01-19: one month across 1 January.
    let dey = persian_month("2024-12-31T20:29:59Z");
    assert_eq!(dey, persian_month("2024-12-31T20:30:00Z"));
    assert_eq!(dey.0, "p1403-10");
    assert_eq!(
        (dey.1, dey.2),
        (utc("2024-12-20T20:30:00Z"), utc("2025-01-19T20:30:00Z"))
    );
    // The Gregorian calendar turns there instead.
    let gregorian = tehran(false);
    let jan = gregorian.window(Period::Monthly, utc("2024-12-31T20:30:00Z"));
    assert_eq!(jan.label.to_string(), "m2025-01");
}

#[test]
fn persian_changes_only_the_month() {
    let now = utc("2026-12-03T10:00:00Z");
    let (p, g) = (persian().windows(now), tehran(false).windows(now));
    assert_eq!(p.get(Period::Daily), g.get(Period::Daily));
    assert_eq!(p.get(Period::Weekly), g.get(Period::Weekly));
    assert_eq!(p.get(Period::Monthly).label.to_string(), "p1405-09");
    assert_eq!(g.get(Period::Monthly).label.to_string(), "m2026-12");
}

#[test]
fn persian_and_gregorian_month_labels_never_collide() {
    // Persian year 1405 is Gregorian 2026/27: the numbers overlap in
    // other years (Gregorian 1405 exists), so only the tag keeps them
    // apart.
    let gregorian = PeriodLabel::gregorian(
        Period::Monthly,
        NaiveDate::from_ymd_opt(1405, 9, 1).expect("date"),
    );
    let persian = PeriodLabel::persian_month(1405, 9);
    assert_eq!(gregorian.to_string(), "m1405-09");
    assert_eq!(persian.to_string(), "p1405-09");
    assert_ne!(gregorian, persian);
}

/// Every instant, hour by hour over eight years (and at each month's
/// edges), is in exactly one Persian month: windows are contiguous, each
/// starts at Tehran midnight of its day 1, and the remembered windows
/// agree.
#[test]
fn persian_months_tile_time() {
    let cal = persian();
    let mut now = utc("2020-01-01T00:00:00Z");
    let mut current = cal.window(Period::Monthly, now);
    let mut months = 0;
    while now < utc("2028-01-01T00:00:00Z") {
        let w = cal.window(Period::Monthly, now);
        assert!(w.start <= now && now < w.end, "{now}: {w:?}");
        assert_eq!(cal.windows(now).get(Period::Monthly), &w, "{now}");
        if w != current {
            assert_eq!(w.start, current.end, "contiguous at {now}");
            let before = cal.window(Period::Monthly, w.start - chrono::Duration::seconds(1));
            assert_eq!(before, current, "the instant before {now}");
            let local = w.start.with_timezone(&cal.timezone());
            assert_eq!(local.time(), chrono::NaiveTime::MIN, "{now}");
            let day_one = persian::month_of(local.date_naive()).expect("month");
            assert_eq!(day_one.first, local.date_naive(), "{now}");
            current = w;
            months += 1;
        }
        now += chrono::Duration::minutes(59);
    }
    assert_eq!(months, 8 * 12);
}

#[test]
fn seconds_left_rounds_up_and_is_positive() {
    let cal = tehran(true);
    let now = utc("2026-11-28T20:29:59.500Z");
    let d = cal.window(Period::Daily, now);
    assert_eq!(d.seconds_left(now), 1);
    assert_eq!(d.seconds_left(d.end), 1);
}

/// Nanoseconds of a second, often whole milliseconds or none, where
/// rounding goes one way or the other.
fn subsec_nanos() -> impl proptest::strategy::Strategy<Value = u32> {
    use proptest::prelude::*;
    prop_oneof![
        Just(0),
        (0u32..1000).prop_map(|ms| ms * 1_000_000),
        0u32..1_000_000_000
    ]
}

proptest::proptest! {
    /// The timestamp arithmetic says what chrono's subtraction says.
    #[test]
    fn timestamp_arithmetic_is_chronos(
        end_secs in -62_000_000_000i64..250_000_000_000,
        before_secs in -3_000_000_000i64..3_000_000_000,
        end_nanos in subsec_nanos(),
        now_nanos in subsec_nanos(),
    ) {
        let at = |secs, nanos| DateTime::from_timestamp(secs, nanos).expect("in range");
        let (end, now) = (at(end_secs, end_nanos), at(end_secs - before_secs, now_nanos));
        let mut window = tehran(true).window(Period::Daily, now);
        (window.start, window.end) = (now, end);
        let ms = (end - now).num_milliseconds().max(0) as u64;
        proptest::prop_assert_eq!(window.seconds_left(now), ms.div_ceil(1000).max(1));
        proptest::prop_assert_eq!(
            window.length_seconds(),
            (end - now).num_seconds().max(0) as u64
        );
    }
}

#[test]
fn historical_dst_day_is_23_hours() {
    // Tehran moved clocks forward at 00:00 on 2021-03-22 (to +04:30), so
    // that day began at 01:00 local and lasted 23 hours.
    let cal = tehran(true);
    let d = cal.window(Period::Daily, utc("2021-03-22T12:00:00Z"));
    assert_eq!(d.start, utc("2021-03-21T20:30:00Z"));
    assert_eq!(d.length_seconds(), 23 * 3600);
}
