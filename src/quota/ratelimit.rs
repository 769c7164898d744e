//! The IETF `RateLimit-Policy` and `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers, draft-11 syntax), one list item per
//! limited period: `RateLimit-Policy: "daily";q=3;w=86400` and
//! `RateLimit: "daily";r=2;t=5400`.

use std::cell::RefCell;

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Limits;
use crate::periods::{Period, PeriodWindows};
use crate::store::PeriodCounts;

/// `RateLimit-Policy`.
pub(crate) static POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`.
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Adds both headers for every period with a limit; nothing when all are
/// unlimited. `RateLimit-Policy` depends only on the plan's limits and the
/// periods' lengths, so each thread renders it once per plan and period
/// and then shares the value; `RateLimit` is rendered per request, on the
/// stack, into one allocation (the header value's own).
pub(crate) fn insert(
    headers: &mut HeaderMap,
    limits: &Limits,
    counts: &PeriodCounts,
    windows: &PeriodWindows,
    now: DateTime<Utc>,
) {
    let mut state = Rendered::new();
    let mut lengths = [0; 3];
    for (period, length) in Period::ALL.into_iter().zip(&mut lengths) {
        let limit = limits.of(period);
        if limit == 0 {
            continue;
        }
        let window = windows.get(period);
        *length = window.length_seconds();
        state.item(
            period,
            [b";r=", b";t="],
            [
                limit.saturating_sub(counts.get(period)),
                window.seconds_left(now),
            ],
        );
    }
    if state.len == 0 {
        return;
    }
    // Both are ASCII built here, so valid header values.
    if let (Some(p), Ok(s)) = (
        policy(limits, lengths),
        HeaderValue::from_bytes(state.bytes()),
    ) {
        headers.insert(POLICY.clone(), p);
        headers.insert(RATELIMIT.clone(), s);
    }
}

/// The policies one thread rendered, keyed by the limits and the lengths
/// of their periods (0 for an unlimited one). Plans are few and lengths
/// change at period boundaries only, so it stays small; it starts over
/// past [`POLICIES_KEPT`] all the same.
type Policies = Vec<((Limits, [u64; 3]), HeaderValue)>;

/// Most policies a thread keeps (see [`Policies`]).
const POLICIES_KEPT: usize = 64;

thread_local! {
    static POLICIES: RefCell<Policies> = const { RefCell::new(Vec::new()) };
}

/// `RateLimit-Policy` for `limits` with periods of `lengths` seconds:
/// cloned from this thread's cache (a reference count), rendered on a miss.
fn policy(limits: &Limits, lengths: [u64; 3]) -> Option<HeaderValue> {
    let key = (*limits, lengths);
    POLICIES.with_borrow_mut(|cache| {
        if let Some((_, value)) = cache.iter().find(|(k, _)| *k == key) {
            return Some(value.clone());
        }
        let mut rendered = Rendered::new();
        for (period, length) in Period::ALL.into_iter().zip(lengths) {
            let limit = limits.of(period);
            if limit != 0 {
                rendered.item(period, [b";q=", b";w="], [limit, length]);
            }
        }
        let value = HeaderValue::from_bytes(rendered.bytes()).ok()?;
        if cache.len() == POLICIES_KEPT {
            cache.clear();
        }
        cache.push((key, value.clone()));
        Some(value)
    })
}

/// A header value's list, built on the stack: three items at most, each
/// under 64 bytes (`"monthly";q=<20 digits>;w=<20 digits>, `).
struct Rendered {
    buf: [u8; 192],
    len: usize,
}

impl Rendered {
    fn new() -> Self {
        Self {
            buf: [0; 192],
            len: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Appends one list item, `"daily";q=3;w=86400`; each key comes with
    /// its `;` and `=`. Built by hand from slices and `itoa`: `write!` cost
    /// more than the rest of the quota check (callgrind: a tenth of a
    /// flagged request's instructions).
    fn item(&mut self, period: Period, keys: [&[u8]; 2], values: [u64; 2]) {
        if self.len != 0 {
            self.push(b", ");
        }
        self.push(match period {
            Period::Daily => b"\"daily\"",
            Period::Weekly => b"\"weekly\"",
            Period::Monthly => b"\"monthly\"",
        });
        let mut digits = itoa::Buffer::new();
        for (key, value) in keys.into_iter().zip(values) {
            self.push(key);
            self.push(digits.format(value).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::periods::Calendar;

    #[test]
    fn lists_limited_periods_only() {
        let cal = Calendar::new(chrono_tz::Asia::Tehran, chrono::Weekday::Mon);
        // 18:00 local in Tehran: 6 hours (21600 s) left in the day.
        let now = DateTime::parse_from_rfc3339("2026-11-28T14:30:00Z")
            .expect("instant")
            .with_timezone(&Utc);
        let windows = cal.windows(now);
        let limits = Limits {
            daily: 3,
            weekly: 0,
            monthly: 30,
        };
        let mut h = HeaderMap::new();
        insert(&mut h, &limits, &PeriodCounts([1, 1, 5]), &windows, now);
        assert_eq!(
            h[&POLICY],
            "\"daily\";q=3;w=86400, \"monthly\";q=30;w=2592000"
        );
        let monthly_left = windows.get(Period::Monthly).seconds_left(now);
        assert_eq!(
            h[&RATELIMIT],
            format!("\"daily\";r=2;t=21600, \"monthly\";r=25;t={monthly_left}").as_str()
        );
    }

    #[test]
    fn a_policy_is_rendered_for_its_own_limits_and_month() {
        // The policy cache must key on the limits and the periods' lengths:
        // a plan seen before, a month of another length, another plan.
        let cal = Calendar::new(chrono_tz::Asia::Tehran, chrono::Weekday::Mon);
        let at = |rfc3339| {
            DateTime::parse_from_rfc3339(rfc3339)
                .expect("instant")
                .with_timezone(&Utc)
        };
        let policy = |limits: &Limits, now: DateTime<Utc>| {
            let mut h = HeaderMap::new();
            insert(
                &mut h,
                limits,
                &PeriodCounts::default(),
                &cal.windows(now),
                now,
            );
            h[&POLICY].to_str().expect("ASCII").to_owned()
        };
        let small = Limits {
            daily: 3,
            weekly: 0,
            monthly: 30,
        };
        let large = Limits {
            monthly: 300,
            ..small
        };
        let (november, december) = (at("2026-11-10T12:00:00Z"), at("2026-12-10T12:00:00Z"));
        for _ in 0..2 {
            assert_eq!(
                policy(&small, november),
                "\"daily\";q=3;w=86400, \"monthly\";q=30;w=2592000"
            );
            assert_eq!(
                policy(&small, december),
                "\"daily\";q=3;w=86400, \"monthly\";q=30;w=2678400"
            );
            assert_eq!(
                policy(&large, december),
                "\"daily\";q=3;w=86400, \"monthly\";q=300;w=2678400"
            );
        }
    }

    #[test]
    fn unlimited_adds_nothing() {
        let cal = Calendar::new(chrono_tz::Asia::Tehran, chrono::Weekday::Mon);
        let now = Utc::now();
        let mut h = HeaderMap::new();
        insert(
            &mut h,
            &Limits::default(),
            &PeriodCounts::default(),
            &cal.windows(now),
            now,
        );
        assert!(h.is_empty());
    }
}
