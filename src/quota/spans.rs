//! Spans of an inspected request (every phase) and W3C trace context
//! propagation. See docs/tracing.md for the tree and its attributes.
//!
//! An inspected request gets a `request` span (continuing the client's
//! trace when its `traceparent` is valid, else a new trace), with one child
//! per phase: `classify`, `identify`, `probe`, `admit` (its store call
//! `store.reserve` below it), `forward` (the upstream call `upstream` below
//! it) and `settle` (`store.settle`). The upstream gets the `traceparent`
//! of its `upstream` span, so the app's own spans hang below that call.
//!
//! The spans carry the target [`SPANS`]. Nothing makes or reads them
//! unless a subscriber enables that target: the binary does so only for
//! its OpenTelemetry layer (`[tracing] otlp_endpoint`, `telemetry/mod.rs`), and
//! keeps them out of its logs. Without it each span is a disabled
//! `Span::none()`, no header is read or written, and a client's
//! `traceparent` and `tracestate` reach the upstream untouched. A request
//! on no inspected route never gets a span at all.
//!
//! The trace context is a correlation id only: nothing in it reaches a
//! quota decision.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use pin_project_lite::pin_project;
use tracing::field::Empty;
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::probe::ProbeAnswer;
use crate::decision::Decision;
use crate::flag::FlagVerdict;
use crate::identity::{Identity, IdentityError};

/// The target of every span of this module; a subscriber that enables it
/// gets the phase spans.
pub const SPANS: &str = "quota_proxy::spans";

/// The `request` span of an inspected `request` on route `route`, child of
/// the trace its headers continue (a valid `traceparent`), else the root of
/// a new trace.
pub(super) fn request<B>(request: &Request<B>, route: &str, request_id: &HeaderValue) -> Span {
    let span = tracing::info_span!(target: SPANS, "request",
        otel.name = route, otel.kind = "server",
        http.request.method = request.method().as_str(), url.path = request.uri().path(),
        quota.route = route, request_id = super::request_id::as_str(request_id),
        http.response.status_code = Empty);
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
        // Fails only without an OpenTelemetry layer: nothing to continue.
        let _ = span.set_parent(parent);
    }
    span
}

/// Runs `inspect` in the request's `span`, then records the status of the
/// answer (the upstream's, or the proxy's own).
pub(super) fn traced<B, E, F>(span: Span, inspect: F) -> Recorded<F, Result<Response<B>, E>>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    Recorded::new(inspect, span, |span, result| {
        if let Ok(response) = result {
            span.record("http.response.status_code", response.status().as_u16());
        }
    })
}

/// Runs `read` (reading and flagging the body) in a `classify` span that
/// records the verdict.
pub(super) fn classify<B, E, F>(read: F) -> Recorded<F, Result<(B, FlagVerdict), E>>
where
    F: Future<Output = Result<(B, FlagVerdict), E>>,
{
    let span = tracing::info_span!(target: SPANS, "classify", quota.flag = Empty);
    Recorded::new(read, span, |span, read| {
        if let Ok((_, verdict)) = read {
            let flag = match verdict {
                FlagVerdict::NotFlagged => "not_flagged",
                FlagVerdict::Flagged(_) => "flagged",
                FlagVerdict::Unreadable(_) => "unreadable",
                FlagVerdict::Rejected(_) => "rejected",
            };
            span.record("quota.flag", flag);
        }
    })
}

/// Runs `identify` in an `identify` span that records whom it found.
pub(super) fn identify<F>(identify: F) -> Recorded<F, Result<Option<Identity>, IdentityError>>
where
    F: Future<Output = Result<Option<Identity>, IdentityError>>,
{
    let span = tracing::info_span!(target: SPANS, "identify", quota.identity = Empty,
        quota.user = Empty, quota.plan = Empty);
    Recorded::new(identify, span, |span, identity| match identity {
        Ok(Some(who)) => {
            span.record("quota.identity", "user");
            span.record("quota.user", who.user_id.as_str());
            span.record("quota.plan", who.plan.as_deref().unwrap_or("-"));
        }
        Ok(None) => {
            span.record("quota.identity", "anonymous");
        }
        Err(_) => {
            span.record("quota.identity", "error");
        }
    })
}

/// Runs `ask` (the probe's call to the upstream) in a `probe` span that
/// records the answer. `ask` is boxed: probes are the rare case, and its
/// state would otherwise size every inspected request's future.
pub(super) fn probe<F>(ask: F) -> Recorded<Pin<Box<F>>, ProbeAnswer>
where
    F: Future<Output = ProbeAnswer>,
{
    let span = tracing::info_span!(target: SPANS, "probe", otel.kind = "client",
        quota.probe = Empty);
    Recorded::new(Box::pin(ask), span, |span, answer| {
        let said = match answer {
            ProbeAnswer::Forced => "forced",
            ProbeAnswer::NotForced => "not_forced",
            ProbeAnswer::Failed => "failed",
        };
        span.record("quota.probe", said);
    })
}

pin_project! {
    /// A future run in a span, whose output is recorded on that span when
    /// it is ready. Polls the future in place: an `async` wrapper would
    /// hold a second copy of it (its argument, and the value it awaits),
    /// and the request's future is large.
    pub(super) struct Recorded<F, T> {
        #[pin]
        inner: Instrumented<F>,
        record: Option<fn(&Span, &T)>,
    }
}

impl<F: Future> Recorded<F, F::Output> {
    fn new(inner: F, span: Span, record: fn(&Span, &F::Output)) -> Self {
        Self {
            inner: inner.instrument(span),
            record: Some(record),
        }
    }
}

impl<F: Future> Future for Recorded<F, F::Output> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let output = std::task::ready!(this.inner.as_mut().poll(cx));
        if let Some(record) = this.record.take() {
            record(this.inner.span(), &output);
        }
        Poll::Ready(output)
    }
}

/// The `admit` span: the reservation, or the answer sent instead; its
/// `quota.decision` (and `quota.period` for a denial) are recorded by
/// `admit.rs`.
pub(super) fn admit() -> Span {
    tracing::info_span!(target: SPANS, "admit", quota.decision = Empty, quota.period = Empty)
}

/// Records `decision` on the current span (`admit`, from `admit.rs`) and
/// returns that span.
pub(super) fn decided(decision: Decision) -> Span {
    let span = Span::current();
    span.record("quota.decision", decision.as_str());
    span
}

/// The store's `reserve` call, below `admit`.
pub(super) fn store_reserve() -> Span {
    tracing::info_span!(target: SPANS, "store.reserve", otel.kind = "client")
}

/// The `forward` span: the request sent on and its answer read.
pub(super) fn forward() -> Span {
    tracing::info_span!(target: SPANS, "forward")
}

/// The `upstream` call below `forward`: until the answer's head arrives.
pub(super) fn upstream(forward: &Span, method: &http::Method) -> Span {
    tracing::info_span!(target: SPANS, parent: forward, "upstream", otel.kind = "client",
        http.request.method = method.as_str(), http.response.status_code = Empty)
}

/// Records the status of the upstream's `answer` on its `upstream` span,
/// and ends that span.
pub(super) fn answered<B, E>(upstream: Span, answer: &Result<Response<B>, E>) {
    if let Ok(response) = answer {
        upstream.record("http.response.status_code", response.status().as_u16());
    }
}

/// The `settle` span, below the request's span: usage recorded.
pub(super) fn settle(request: &Span, decision: &'static str) -> Span {
    tracing::info_span!(target: SPANS, parent: request, "settle", quota.decision = decision,
        quota.images = Empty)
}

/// The store's `settle` call, below `settle`.
pub(super) fn store_settle() -> Span {
    tracing::info_span!(target: SPANS, "store.settle", otel.kind = "client")
}

/// Gives `headers` the trace context of `span` (`traceparent`, and
/// `tracestate` when it has one) in place of whatever they carried. Does
/// nothing when no OpenTelemetry layer records `span`: the headers are
/// then left as the client sent them.
pub(super) fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    // A `tracestate` goes on only with the trace it belongs to.
    headers.remove(&TRACESTATE);
    TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
}

static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Request headers as the propagator reads them: the first value of each.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Request headers as the propagator writes them: one value each, an
/// empty value (no `tracestate`) written as no header.
struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            return;
        };
        match HeaderValue::try_from(value) {
            Ok(value) if !value.is_empty() => {
                self.0.insert(name, value);
            }
            _ => {
                self.0.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn without_a_subscriber_the_client_context_passes_untouched() {
        let span = forward();
        assert!(span.is_disabled());
        let mut sent = headers(&[("traceparent", PARENT), ("tracestate", "a=1")]);
        inject(&span, &mut sent);
        assert_eq!(
            sent,
            headers(&[("traceparent", PARENT), ("tracestate", "a=1")])
        );
    }

    #[test]
    fn the_propagator_reads_and_writes_header_maps() {
        let received = headers(&[("traceparent", PARENT), ("tracestate", "a=1")]);
        let context = TraceContextPropagator::new().extract(&Headers(&received));
        let remote = context.span().span_context().clone();
        assert!(remote.is_valid() && remote.is_remote());
        assert_eq!(
            remote.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );

        let mut sent = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(&mut sent));
        assert_eq!(
            sent.get("traceparent").map(|v| v.as_bytes()),
            Some(PARENT.as_bytes())
        );
        assert_eq!(
            sent.get("tracestate").map(|v| v.as_bytes()),
            Some(&b"a=1"[..])
        );

        // No `tracestate`: no empty header line.
        let bare =
            TraceContextPropagator::new().extract(&Headers(&headers(&[("traceparent", PARENT)])));
        let mut sent = headers(&[("tracestate", "stale=1")]);
        TraceContextPropagator::new().inject_context(&bare, &mut HeadersMut(&mut sent));
        assert!(sent.get("tracestate").is_none());
    }

    #[test]
    fn a_malformed_traceparent_continues_nothing() {
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "garbage",
        ] {
            let received = headers(&[("traceparent", bad)]);
            let context = TraceContextPropagator::new().extract(&Headers(&received));
            assert!(!context.span().span_context().is_valid(), "{bad}");
        }
    }
}
