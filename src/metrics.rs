//! Prometheus metrics (phase: every phase), served at `GET /metrics` on the
//! admin listener.
//!
//! Code counts through the [`metrics`] facade, so any module can add a
//! metric without plumbing: `metrics::counter!(NAME, "label" => value)`.
//! What the lower levels count (requests by [`Decision`](crate::decision::Decision), denials,
//! settlements, reports, identities) is named and recorded in
//! [`crate::counters`]; this module is the runtime's part: the exporter,
//! the store and upstream timers, the store gauges and reloads.
//! The binary installs a Prometheus recorder ([`install`]) that only renders
//! the text format; it opens no listener of its own. Without a recorder
//! (the library embedded elsewhere, or the in-process tests) every call is
//! a no-op.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `quota_proxy_requests_total` | counter | `route`, `decision` | requests by what the proxy decided (see [`RouteCounters::request`](crate::counters::RouteCounters::request)) |
//! | `quota_proxy_denials_total` | counter | `route`, `period` | denials by the period whose limit was reached |
//! | `quota_proxy_fail_open_total` | counter | `route` | flagged requests forwarded uncounted because the store failed (`on_store_error = "allow"`) |
//! | `quota_proxy_store_call_duration_seconds` | histogram | `op`, `outcome` | store calls (`reserve`, `settle`, `extend`, `usage`, `adjust`, `ping`), `ok` or `error` |
//! | `quota_proxy_upstream_duration_seconds` | histogram | | time from forwarding a request to the upstream's response head |
//! | `quota_proxy_upstream_responses_total` | counter | `class` | upstream answers by status class (`1xx` … `5xx`; the proxy's own 502/504 count as `5xx`), and `error`: calls that ended in an error, not an answer (never in the binary, whose proxy always answers) |
//! | `quota_proxy_settlements_pending` | gauge | `stage` | admitted requests whose usage is not recorded yet (`in_flight`: still streaming or being written) |
//! | `quota_proxy_settlements_dropped_total` | counter | `reason` | usage that could not be recorded: `store_error` (the store refused a settle), `retry_queue` (the Redis settle queue overflowed or was not flushed at shutdown) |
//! | `quota_proxy_store_up` | gauge | | 1 while the store answered its last call (the memory store: always), 0 while Redis does not answer |
//! | `quota_proxy_store_breaker_open` | gauge | | 1 while the circuit breaker in front of Redis is open (calls fail at once, `on_store_error` applies) |
//! | `quota_proxy_malformed_reports_total` | counter | `route` | upstream reports whose count was negative, fractional, above `usage.max_images_per_response` or not a number (charged as 1 image if the response succeeded) |
//! | `quota_proxy_config_reloads_total` | counter | `result` | reloads, `ok` or `error` |
//! | `quota_proxy_unknown_plan_total` | counter | | identities whose plan name is not in `[plans]` (the default plan applied; each name logged once) |
//! | `quota_proxy_uninspected_reports_total` | counter | | reports of saved images on routes that are not inspected (not counted against any quota; a warning names the path at most once a minute) |
//! | `quota_proxy_build_info` | gauge | `version` | always 1 |
//!
//! The Redis store's settle retry queue is read every 5 s: its depth as
//! [`settlements_pending`](crate::counters::settlements_pending)`("retry_queue", n)`
//! and what it gave up on as
//! [`settlements_dropped`](crate::counters::settlements_dropped)`("retry_queue", n)`. The forward-auth identity
//! cache calls [`identity_cache`](crate::counters::identity_cache) on every
//! lookup.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use http::{Request, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use crate::counters::{
    BODY_BUDGET_CUT, BODY_BUDGET_REFUSED, BODY_SHARE_REFUSED, DENIALS, DROPPED_RETRY_QUEUE,
    DROPPED_STORE_ERROR, FAIL_OPEN, IDENTITY_CACHE, REQUESTS, SETTLEMENTS_DROPPED,
    SETTLEMENTS_PENDING, UNINSPECTED_REPORTS, UNKNOWN_PLAN,
};
use crate::periods::{PeriodWindow, PeriodWindows};
use crate::store::{Admission, PeriodUsage, QuotaStore, Reservation, ReserveRequest, StoreError};

/// Store call latency.
pub const STORE_CALL_SECONDS: &str = "quota_proxy_store_call_duration_seconds";
/// Upstream latency to the response head.
pub const UPSTREAM_SECONDS: &str = "quota_proxy_upstream_duration_seconds";
/// Upstream answers by status class.
pub const UPSTREAM_RESPONSES: &str = "quota_proxy_upstream_responses_total";
/// 1 while the store answers.
pub const STORE_UP: &str = "quota_proxy_store_up";
/// 1 while the breaker in front of Redis is open.
pub const STORE_BREAKER_OPEN: &str = "quota_proxy_store_breaker_open";
/// Config reloads by result.
pub const RELOADS: &str = "quota_proxy_config_reloads_total";
/// Log lines dropped because stderr did not take them in time.
pub const LOG_LINES_DROPPED: &str = "quota_proxy_log_lines_dropped_total";
/// The running version.
pub const BUILD_INFO: &str = "quota_proxy_build_info";

/// Bucket bounds of store calls, in seconds: sub-millisecond to the
/// command timeout's range.
const STORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Bucket bounds of upstream latency, in seconds: up to the 300 s response
/// head timeout image generation may need.
const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Why `/metrics` cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "cannot install the Prometheus recorder: {0} (another metrics recorder may be installed in this process)"
)]
pub struct MetricsError(String);

/// Installs the process-wide Prometheus recorder once and returns the
/// handle that renders it; later calls return the same handle.
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    static INSTALLED: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(STORE_CALL_SECONDS.to_owned()), STORE_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(UPSTREAM_SECONDS.to_owned()),
                        UPSTREAM_BUCKETS,
                    )
                })
                .and_then(PrometheusBuilder::install_recorder)
                .map_err(|e| MetricsError(e.to_string()))?;
            describe();
            Ok(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS, "Requests by route and decision.");
    describe_counter!(DENIALS, "Denied requests by route and exceeded period.");
    describe_counter!(
        FAIL_OPEN,
        "Flagged requests forwarded uncounted because the store failed."
    );
    describe_histogram!(
        STORE_CALL_SECONDS,
        Unit::Seconds,
        "Quota store call latency."
    );
    describe_histogram!(
        UPSTREAM_SECONDS,
        Unit::Seconds,
        "Time from forwarding a request to the upstream's response head."
    );
    describe_counter!(UPSTREAM_RESPONSES, "Upstream responses by status class.");
    describe_gauge!(
        SETTLEMENTS_PENDING,
        "Admitted requests whose usage is not recorded yet."
    );
    describe_counter!(SETTLEMENTS_DROPPED, "Usage that could not be recorded.");
    describe_gauge!(
        STORE_UP,
        "1 while the quota store answers, 0 while it does not."
    );
    describe_gauge!(
        STORE_BREAKER_OPEN,
        "1 while the circuit breaker in front of Redis is open."
    );
    describe_counter!(RELOADS, "Config reloads by result.");
    describe_counter!(IDENTITY_CACHE, "Identity cache lookups by result.");
    describe_counter!(
        UNKNOWN_PLAN,
        "Identities whose plan is not in [plans]; the default plan applied."
    );
    describe_counter!(
        UNINSPECTED_REPORTS,
        "Reports of saved images on routes that are not inspected; not counted."
    );
    for (name, what) in [
        (
            BODY_BUDGET_REFUSED,
            "Request bodies refused 503: no room in body_budget_bytes within 1 s.",
        ),
        (
            BODY_BUDGET_CUT,
            "Request bodies cut (408) for stalling while the body budget, or a connection's share, was short.",
        ),
        (
            BODY_SHARE_REFUSED,
            "Request bodies refused 503: their HTTP/2 connection's share of the body budget was held.",
        ),
    ] {
        describe_counter!(name, what);
        // At 0 from the start, so that an alert adding them sees each.
        metrics::counter!(name).increment(0);
    }
    // At 0 from the start too: an alert on their increase would miss the
    // first event of a series that appears with it.
    for reason in [DROPPED_STORE_ERROR, DROPPED_RETRY_QUEUE] {
        metrics::counter!(SETTLEMENTS_DROPPED, "reason" => reason).increment(0);
    }
    for result in ["ok", "error"] {
        metrics::counter!(RELOADS, "result" => result).increment(0);
    }
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because stderr did not take them in time."
    );
    describe_gauge!(BUILD_INFO, "The running version; always 1.");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Sets the store gauges from `health` (read when `/metrics` is rendered).
pub fn store_health(health: &crate::store::StoreHealth) {
    metrics::gauge!(STORE_UP).set(if health.up { 1.0 } else { 0.0 });
    metrics::gauge!(STORE_BREAKER_OPEN).set(if health.breaker_open { 1.0 } else { 0.0 });
}

/// Sets the count of log lines dropped so far (read when `/metrics` is
/// rendered: the log writer counts them itself).
pub fn log_lines_dropped(dropped: u64) {
    metrics::counter!(LOG_LINES_DROPPED).absolute(dropped);
}

/// Counts a config reload, `ok` or `error`.
pub fn reload(ok: bool) {
    metrics::counter!(RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
}

/// A [`QuotaStore`] that times every call of the store it wraps.
pub struct TimedStore {
    inner: Arc<dyn QuotaStore>,
    /// Per store operation, the histograms of its `ok` and `error` calls,
    /// looked up once (a lookup hashes the name and labels every time).
    timers: [[metrics::Histogram; 2]; StoreOp::COUNT],
}

/// The store operations [`TimedStore`] times, in `timers` order.
#[derive(Clone, Copy)]
enum StoreOp {
    Reserve,
    Settle,
    Extend,
    Usage,
    Adjust,
    Ping,
}

impl StoreOp {
    const COUNT: usize = 6;
    const ALL: [StoreOp; Self::COUNT] = [
        StoreOp::Reserve,
        StoreOp::Settle,
        StoreOp::Extend,
        StoreOp::Usage,
        StoreOp::Adjust,
        StoreOp::Ping,
    ];

    fn label(self) -> &'static str {
        match self {
            StoreOp::Reserve => "reserve",
            StoreOp::Settle => "settle",
            StoreOp::Extend => "extend",
            StoreOp::Usage => "usage",
            StoreOp::Adjust => "adjust",
            StoreOp::Ping => "ping",
        }
    }
}

impl TimedStore {
    /// Wraps `inner`, timing into the recorder installed now (the binary
    /// installs it before it opens the store).
    pub fn wrap(inner: Arc<dyn QuotaStore>) -> Arc<dyn QuotaStore> {
        let timers = StoreOp::ALL.map(|op| {
            ["ok", "error"].map(|outcome| {
                metrics::histogram!(STORE_CALL_SECONDS, "op" => op.label(), "outcome" => outcome)
            })
        });
        Arc::new(Self { inner, timers })
    }

    async fn timed<T>(
        &self,
        op: StoreOp,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.record(op, &result, started);
        result
    }

    /// Times a call the inner store answers in place, if it does.
    fn timed_now<T>(
        &self,
        op: StoreOp,
        call: impl FnOnce() -> Option<Result<T, StoreError>>,
    ) -> Option<Result<T, StoreError>> {
        let started = Instant::now();
        let result = call()?;
        self.record(op, &result, started);
        Some(result)
    }

    fn record<T>(&self, op: StoreOp, result: &Result<T, StoreError>, started: Instant) {
        let [ok, error] = &self.timers[op as usize];
        let timer = if result.is_ok() { ok } else { error };
        timer.record(started.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl QuotaStore for TimedStore {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
        self.timed(StoreOp::Reserve, self.inner.reserve(request))
            .await
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.timed(StoreOp::Settle, self.inner.settle(reservation, amount, now))
            .await
    }

    async fn extend(
        &self,
        reservation: &Reservation,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.timed(StoreOp::Extend, self.inner.extend(reservation, until, now))
            .await
    }

    async fn usage(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> Result<[PeriodUsage; 3], StoreError> {
        self.timed(StoreOp::Usage, self.inner.usage(user, windows, now))
            .await
    }

    async fn adjust(
        &self,
        user: &str,
        window: &PeriodWindow,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.timed(StoreOp::Adjust, self.inner.adjust(user, window, delta, now))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed(StoreOp::Ping, self.inner.ping()).await
    }

    fn reserve_now(&self, request: &ReserveRequest) -> Option<Result<Admission, StoreError>> {
        self.timed_now(StoreOp::Reserve, || self.inner.reserve_now(request))
    }

    fn settle_now(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Option<Result<(), StoreError>> {
        self.timed_now(StoreOp::Settle, || {
            self.inner.settle_now(reservation, amount, now)
        })
    }
}

/// Times the service it wraps (the forwarding service) to the response
/// head, and counts its answers by status class.
#[derive(Clone)]
pub struct UpstreamMetrics<S> {
    inner: S,
    handles: Arc<UpstreamHandles>,
}

/// The upstream series, looked up once (a lookup hashes the name and labels
/// every time): the head-time histogram and one counter per class, in
/// [`CLASSES`] order.
struct UpstreamHandles {
    seconds: metrics::Histogram,
    responses: [metrics::Counter; CLASSES.len()],
}

/// The `class` label values of upstream answers; `error` = no answer.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

impl<S: std::fmt::Debug> std::fmt::Debug for UpstreamMetrics<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamMetrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> UpstreamMetrics<S> {
    /// Wraps `inner`, counting into the recorder installed now (the binary
    /// installs it before it starts serving).
    pub fn new(inner: S) -> Self {
        let handles = UpstreamHandles {
            seconds: metrics::histogram!(UPSTREAM_SECONDS),
            responses: CLASSES.map(|class| metrics::counter!(UPSTREAM_RESPONSES, "class" => class)),
        };
        Self {
            inner,
            handles: Arc::new(handles),
        }
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for UpstreamMetrics<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = UpstreamFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        UpstreamFuture {
            inner: self.inner.call(request),
            started: Instant::now(),
            handles: Arc::clone(&self.handles),
        }
    }
}

pin_project! {
    /// The future of [`UpstreamMetrics`].
    pub struct UpstreamFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        handles: Arc<UpstreamHandles>,
    }
}

impl<F, B, E> Future for UpstreamFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let class = match &result {
            Ok(response) => status_class(response.status()),
            Err(_) => CLASSES.len() - 1,
        };
        this.handles
            .seconds
            .record(this.started.elapsed().as_secs_f64());
        this.handles.responses[class].increment(1);
        Poll::Ready(result)
    }
}

/// The index in [`CLASSES`] of `status`'s class.
fn status_class(status: http::StatusCode) -> usize {
    match status.as_u16() / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let class = |status| CLASSES[status_class(status)];
        assert_eq!(class(http::StatusCode::OK), "2xx");
        assert_eq!(class(http::StatusCode::FOUND), "3xx");
        assert_eq!(class(http::StatusCode::TOO_MANY_REQUESTS), "4xx");
        assert_eq!(class(http::StatusCode::BAD_GATEWAY), "5xx");
    }
}
