//! What the code counts (phase: every phase): the names of the metrics
//! the lower levels record, and their recording handles, through the
//! [`metrics`] facade. Without a recorder (the library embedded elsewhere,
//! the in-process tests) every call is a no-op; the binary's Prometheus
//! recorder, the rest of the names and the table of every metric are in
//! `crate::metrics` (runtime), which imports this module, never the reverse.

use crate::decision::Decision;
use crate::periods::Period;

/// Requests by route and decision.
pub const REQUESTS: &str = "quota_proxy_requests_total";
/// Denials by route and period.
pub const DENIALS: &str = "quota_proxy_denials_total";
/// Flagged requests forwarded uncounted after a store error.
pub const FAIL_OPEN: &str = "quota_proxy_fail_open_total";
/// Settlements not recorded yet, by stage.
pub const SETTLEMENTS_PENDING: &str = "quota_proxy_settlements_pending";
/// Settlements given up on, by reason.
pub const SETTLEMENTS_DROPPED: &str = "quota_proxy_settlements_dropped_total";
/// `reason` of [`SETTLEMENTS_DROPPED`]: a settle the store answered with an
/// error.
pub const DROPPED_STORE_ERROR: &str = "store_error";
/// `reason` of [`SETTLEMENTS_DROPPED`]: a settle a Redis store's retry
/// queue dropped.
pub const DROPPED_RETRY_QUEUE: &str = "retry_queue";
/// Malformed usage reports by route.
pub const MALFORMED_REPORTS: &str = "quota_proxy_malformed_reports_total";
/// Reports of saved images on routes that are not inspected (not counted
/// against any quota).
pub const UNINSPECTED_REPORTS: &str = "quota_proxy_uninspected_reports_total";
/// Identity cache lookups by result (`hit`, `miss`).
pub const IDENTITY_CACHE: &str = "quota_proxy_identity_cache_total";
/// Plan names not in `[plans]` (the default plan applied).
pub const UNKNOWN_PLAN: &str = "quota_proxy_unknown_plan_total";
/// Request bodies refused 503: no room in `body_budget_bytes` within 1 s.
pub const BODY_BUDGET_REFUSED: &str = "quota_proxy_body_budget_refused_total";
/// Request bodies cut (408) for stalling while the body budget, or their
/// HTTP/2 connection's share of it, was short of room.
pub const BODY_BUDGET_CUT: &str = "quota_proxy_body_budget_cut_total";
/// Request bodies refused 503: their HTTP/2 connection's share of the body
/// budget was held within 1 s.
pub const BODY_SHARE_REFUSED: &str = "quota_proxy_body_share_refused_total";

/// One route's counters: requests by [`Decision`] (a
/// [`Decision::Passthrough`] counts under route `-`, with every other
/// request on no inspected route), denials by period and fail-opens.
/// Looked up once, when the route table is built, so counting takes no
/// registry lookup (no label hashing, no lock, no allocation). Every
/// series exists from then on, at 0 until counted.
#[derive(Debug, Clone)]
pub struct RouteCounters {
    requests: [metrics::Counter; Decision::ALL.len()],
    denials: [metrics::Counter; Period::ALL.len()],
    fail_open: metrics::Counter,
}

impl RouteCounters {
    /// The counters of `route` in the recorder installed now.
    pub fn new(route: &str) -> Self {
        Self {
            requests: Decision::ALL.map(|decision| match decision {
                Decision::Passthrough => passthrough_counter(),
                _ => metrics::counter!(REQUESTS, "route" => route.to_owned(), "decision" => decision.label()),
            }),
            denials: Period::ALL.map(|period| {
                metrics::counter!(DENIALS, "route" => route.to_owned(), "period" => period.as_str())
            }),
            fail_open: metrics::counter!(FAIL_OPEN, "route" => route.to_owned()),
        }
    }

    /// Counts one request with what was decided for it.
    pub fn request(&self, decision: Decision) {
        self.requests[decision as usize].increment(1);
    }

    /// Counts a denial, as a request and by period.
    pub fn denied(&self, period: Period) {
        self.request(Decision::Denied);
        self.denials[period as usize].increment(1);
    }

    /// Counts a flagged request forwarded uncounted after a store error.
    pub fn fail_open(&self) {
        self.request(Decision::StoreErrorAllowed);
        self.fail_open.increment(1);
    }
}

/// The counter of requests on a route that is not inspected, to be kept and
/// incremented per request (the quota layer holds it).
pub fn passthrough_counter() -> metrics::Counter {
    metrics::counter!(REQUESTS, "route" => "-", "decision" => Decision::Passthrough.label())
}

/// The counter of reports of saved images on routes that are not
/// inspected, to be kept and incremented per report.
pub fn uninspected_reports_counter() -> metrics::Counter {
    metrics::counter!(UNINSPECTED_REPORTS)
}

/// Sets how many settlements wait in `stage` (`in_flight`, `retry_queue`).
pub fn settlements_pending(stage: &'static str, pending: usize) {
    metrics::gauge!(SETTLEMENTS_PENDING, "stage" => stage).set(pending as f64);
}

/// Counts one malformed usage report on `route`.
pub fn malformed_report(route: &str) {
    metrics::counter!(MALFORMED_REPORTS, "route" => route.to_owned()).increment(1);
}

/// Counts `count` settlements whose usage could not be recorded, by `reason`.
pub fn settlements_dropped(reason: &'static str, count: u64) {
    metrics::counter!(SETTLEMENTS_DROPPED, "reason" => reason).increment(count);
}

/// Counts an identity whose plan name is not in `[plans]`.
pub fn unknown_plan() {
    metrics::counter!(UNKNOWN_PLAN).increment(1);
}

/// Counts an identity cache lookup.
pub fn identity_cache(hit: bool) {
    metrics::counter!(IDENTITY_CACHE, "result" => if hit { "hit" } else { "miss" }).increment(1);
}
