//! Reports of saved images on routes that are not inspected (phase: report):
//! never counted against a quota, but a sign that `[[routes]]` misses a
//! route that saves images. Each one is counted in
//! `quota_proxy_uninspected_reports_total`; a warning names the path at
//! most once per [`WARN_EVERY`], with how many went unlogged since the last
//! one, so an upstream that reports on every answer of such a route neither
//! floods the log nor costs each request a log write (a pass-through
//! request's CPU grew by a third with one: docs/benchmark-history.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::report::UsageReport;

/// The shortest time between two warnings.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// No warning logged yet.
const NEVER: u64 = u64::MAX;

/// The count and the warning throttle, shared by the serving threads.
pub(crate) struct UninspectedReports {
    counter: metrics::Counter,
    /// Since when the process measures (for the atomics below).
    start: Instant,
    /// When the last warning was logged (ms since `start`), or [`NEVER`].
    last_warning_ms: AtomicU64,
    /// Reports seen and not logged since the last warning.
    unlogged: AtomicU64,
}

impl UninspectedReports {
    /// Counting in the metrics recorder installed now.
    pub(crate) fn new() -> Self {
        Self {
            counter: crate::counters::uninspected_reports_counter(),
            start: Instant::now(),
            last_warning_ms: AtomicU64::new(NEVER),
            unlogged: AtomicU64::new(0),
        }
    }

    /// Counts `report` (a non-zero or malformed one) from the answer to a
    /// request on `path`, and warns unless a warning was logged less than
    /// [`WARN_EVERY`] ago. Answers, when it warned, how many reports went
    /// unlogged before this one.
    pub(super) fn seen(&self, report: &UsageReport, path: &str, request_id: &str) -> Option<u64> {
        self.counter.increment(1);
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NEVER - 1);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        let due = last == NEVER || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        // One thread wins the turn; the others count themselves unlogged.
        if !due
            || self
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            path,
            images = report.images,
            malformed = report.malformed,
            request_id,
            unlogged_since_last_warning = unlogged,
            "a route that is not inspected reported saved images; not counted \
             (add it to [[routes]] to enforce and count it); at most one such warning a minute, \
             all counted in quota_proxy_uninspected_reports_total"
        );
        Some(unlogged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_a_minute_says_how_many_went_unlogged() {
        let reports = UninspectedReports::new();
        let report = UsageReport {
            images: 2,
            malformed: false,
        };
        assert_eq!(
            reports.seen(&report, "/a/", "-"),
            Some(0),
            "the first warns"
        );
        for _ in 0..3 {
            assert_eq!(reports.seen(&report, "/a/", "-"), None, "within the minute");
        }
        // The turn comes back (a minute passing, without waiting one).
        reports.last_warning_ms.store(NEVER, Ordering::Relaxed);
        assert_eq!(reports.seen(&report, "/a/", "-"), Some(3));
        assert_eq!(reports.seen(&report, "/a/", "-"), None);
    }
}
