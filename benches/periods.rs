//! Benchmarks of period computation (phase: admit): the day, week and month
//! of an instant, needed once per flagged request before it reserves:
//! computed (`window` for each period, the time-zone arithmetic) and as a
//! request gets them (`windows`, remembered per thread within a day).

use std::hint::black_box;

use chrono::{DateTime, Utc, Weekday};
use criterion::{Criterion, criterion_group, criterion_main};
use quota_proxy::periods::{Calendar, CalendarSystem, Period};

fn bench_windows(c: &mut Criterion) {
    let now: DateTime<Utc> = "2031-05-14T10:00:00Z".parse().expect("an instant");
    let mut group = c.benchmark_group("periods");
    let (gregorian, persian) = (CalendarSystem::Gregorian, CalendarSystem::Persian);
    for (name, tz, week_start, months) in [
        (
            "tehran-monday",
            chrono_tz::Asia::Tehran,
            Weekday::Mon,
            gregorian,
        ),
        (
            "tehran-saturday-persian",
            chrono_tz::Asia::Tehran,
            Weekday::Sat,
            persian,
        ),
        ("utc-saturday", chrono_tz::UTC, Weekday::Sat, gregorian),
        (
            "new-york-sunday",
            chrono_tz::America::New_York,
            Weekday::Sun,
            gregorian,
        ),
    ] {
        let calendar = Calendar::new(tz, week_start).with_months(months);
        group.bench_function(format!("computed/{name}"), |b| {
            b.iter(|| Period::ALL.map(|p| calendar.window(p, black_box(now))));
        });
        group.bench_function(format!("remembered/{name}"), |b| {
            b.iter(|| calendar.windows(black_box(now)));
        });
    }
    let calendar = Calendar::new(chrono_tz::Asia::Tehran, Weekday::Mon);
    let windows = calendar.windows(now);
    group.bench_function("seconds_left/daily", |b| {
        b.iter(|| {
            windows
                .get(black_box(Period::Daily))
                .seconds_left(black_box(now))
        });
    });
    group.finish();
}

criterion_group!(benches, bench_windows);
criterion_main!(benches);
