//! Logs and traces (phase: every phase).
//!
//! Logs: `tracing` to stderr, as readable lines or one JSON object per line
//! (`[log] format`), filtered by `[log] filter` unless `RUST_LOG` is set.
//! What is logged: one line per inspected request (route, user, decision,
//! period when denied, upstream status, images, latency), startup, reloads
//! and shutdown. Never cookies, tokens, `Authorization` headers or bodies:
//! no code in this crate puts a header value or a body in a log field.
//!
//! Lines are handed to a thread of their own that writes them to stderr
//! (tracing-appender's non-blocking writer), through a queue of
//! [`LOG_QUEUE`] lines: a serving thread never waits on stderr. stderr is a
//! pipe to a log collector, and one that stalls (a container runtime's
//! `blocking` log mode, a busy journald) would otherwise block the thread
//! writing the next line, and every other on stderr's lock: every request
//! of the app stopped while the probes still answered 200
//! (`tests/it/log_stalls.rs`). While the queue is full, lines are dropped
//! and counted ([`dropped_log_lines`], exported as
//! `quota_proxy_log_lines_dropped_total`). [`flush_logs`] writes what is
//! queued before the process exits.
//!
//! Traces (`[tracing]`, docs/tracing.md): with `otlp_endpoint` set, the
//! phase spans of inspected requests ([`crate::quota::SPANS`]) go to an
//! OpenTelemetry layer and on, in batches, to that OTLP/HTTP receiver; the
//! batches are sent from the runtime [`init`] runs on, and [`Telemetry::shutdown`]
//! sends what is left. The logs never show those spans. Unset, no
//! subscriber enables them, so none is made.

mod lines;

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogConfig, LogFormat, OtlpEndpoint, TracesConfig, parse_log_filter};
use crate::quota::SPANS;

/// Longest wait for one batch of spans to be taken by the receiver.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait at shutdown for the last spans to be sent: one export.
const FLUSH_WITHIN: Duration = Duration::from_secs(6);

/// Why traces cannot be exported as configured.
#[derive(Debug, thiserror::Error)]
#[error("tracing.otlp_endpoint: cannot export to {endpoint}: {source}")]
pub struct TracesError {
    /// The traces URL.
    endpoint: String,
    /// The exporter's reason.
    source: opentelemetry_otlp::ExporterBuildError,
}

/// What the logs and traces need at shutdown.
#[derive(Debug, Default)]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans not sent yet, waiting at most 6 s;
    /// nothing to do when traces are off.
    pub async fn shutdown(self) {
        let within = FLUSH_WITHIN;
        let Some(provider) = self.traces else { return };
        // The provider blocks its thread until the batch task, which runs on
        // this runtime, has sent the last spans.
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(within, flush).await {
            Ok(Ok(Ok(()))) => tracing::info!("traces sent"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the last traces could not be sent"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the last traces could not be sent"),
            Err(_) => tracing::warn!(?within, "the last traces were not sent in time; dropped"),
        }
    }
}

/// Installs the global subscriber for `log` and `traces`; later calls
/// install nothing. With `traces.otlp_endpoint` set, call it on a tokio
/// runtime that runs until [`Telemetry::shutdown`]: the span batches are
/// sent from it.
///
/// `RUST_LOG`, when set and not empty, replaces `log.filter`; a
/// `RUST_LOG` that does not parse is reported on stderr and ignored.
pub fn init(log: &LogConfig, traces: &TracesConfig) -> Result<Telemetry, TracesError> {
    let provider = (traces.otlp_endpoint.as_ref())
        .map(|endpoint| tracer_provider(endpoint, traces))
        .transpose()?;
    let _ = subscriber(log_filter(log), log.format, provider.as_ref()).try_init();
    Ok(Telemetry { traces: provider })
}

/// The log lines' filter: `RUST_LOG` when set, not empty and valid, else
/// `log.filter`.
fn log_filter(log: &LogConfig) -> EnvFilter {
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    match from_env.as_deref().map(parse_log_filter) {
        Some(Ok(filter)) => filter,
        Some(Err(reason)) => {
            eprintln!("quota-proxy: RUST_LOG ignored: {reason}");
            configured(&log.filter)
        }
        None => configured(&log.filter),
    }
}

/// The subscriber [`init`] installs: the log lines to stderr, those
/// `filter` lets through, in `format`, and, with a tracer `provider`, the
/// phase spans to it.
///
/// Without a provider it has no span layer at all, not an absent one: an
/// `Option` layer that is `None` answers "interested" for every callsite,
/// which made the registry build every phase span of every request (about
/// 20,000 instructions each, callgrind) whenever the log filter let `info`
/// through, the shipped default.
fn subscriber(
    filter: EnvFilter,
    format: LogFormat,
    provider: Option<&SdkTracerProvider>,
) -> tracing::Dispatch {
    // The phase spans are for the traces, never in a log line.
    let filter = match format!("{SPANS}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(log_writer())
        // Colours only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let lines = match format {
        LogFormat::Pretty => lines.event_format(lines::text()).boxed(),
        LogFormat::Json => lines
            .json()
            .flatten_event(true)
            .event_format(lines::json())
            .boxed(),
    };
    let logs = Registry::default().with(lines.with_filter(filter));
    match provider {
        Some(provider) => {
            let spans = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("quota-proxy"))
                .with_location(false)
                .with_threads(false)
                .with_filter(Targets::new().with_target(SPANS, tracing::Level::INFO));
            tracing::Dispatch::new(logs.with(spans))
        }
        None => tracing::Dispatch::new(logs),
    }
}

/// The tracer provider `traces` describes: OTLP/HTTP (protobuf) to
/// `endpoint`, batched on the current tokio runtime, sampled by
/// `sample_ratio` unless the trace is continued from a client.
fn tracer_provider(
    endpoint: &OtlpEndpoint,
    traces: &TracesConfig,
) -> Result<SdkTracerProvider, TracesError> {
    let endpoint = endpoint.traces_url();
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|source| TracesError { endpoint, source })?;
    let batches = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        traces.sample_ratio.get(),
    )));
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name(traces.service_name.as_str().to_owned())
                .build(),
        )
        .build())
}

/// The configured filter (validated with the config), or `info`.
fn configured(filter: &str) -> EnvFilter {
    parse_log_filter(filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Most log lines waiting for stderr to take them; more are dropped (about
/// 300 bytes each in JSON: about 1.2 MB at most).
pub const LOG_QUEUE: usize = 4096;

/// Bytes of log lines the writer gathers before a `write` to stderr (it
/// writes sooner when the queue is empty).
const LOG_WRITE_BUFFER: usize = 64 * 1024;

/// The log writer: the non-blocking writer to stderr, and its guard, which
/// writes the queued lines when dropped ([`flush_logs`]).
struct LogWriter {
    writer: NonBlocking,
    guard: Mutex<Option<WorkerGuard>>,
}

/// The process's log writer, its thread started by the first [`init`] (a
/// second, in tests, shares it).
static LOGS: OnceLock<LogWriter> = OnceLock::new();

/// The writer of the log lines: the non-blocking one to stderr.
fn log_writer() -> NonBlocking {
    LOGS.get_or_init(|| {
        let (writer, guard) = NonBlockingBuilder::default()
            .buffered_lines_limit(LOG_QUEUE)
            .lossy(true)
            .thread_name("log-writer")
            // The writer drains every line queued, then flushes: buffered,
            // a burst of lines is one `write` to stderr, not one each.
            .finish(std::io::BufWriter::with_capacity(
                LOG_WRITE_BUFFER,
                std::io::stderr(),
            ));
        LogWriter {
            writer,
            guard: Mutex::new(Some(guard)),
        }
    })
    .writer
    .clone()
}

/// Log lines dropped so far because stderr did not take them in time.
pub fn dropped_log_lines() -> u64 {
    LOGS.get()
        .map_or(0, |logs| logs.writer.error_counter().dropped_lines() as u64)
}

/// Writes the log lines still queued, waiting about a second at most
/// (stderr may be what stalls); call before the process exits. Lines
/// logged after it are dropped.
///
/// The guard is dropped on a thread of its own, waited for at most
/// [`FLUSH_LOGS_WITHIN`]: with its queue full it `println!`s that it could
/// not stop the writer, and stdout blocks where it shares the stalled
/// stream with stderr (a systemd service's default: one stream to
/// journald), which hung the exit until SIGKILL
/// (`tests/it/ops_signals.rs`).
pub fn flush_logs() {
    let Some(logs) = LOGS.get() else { return };
    let Some(guard) = logs
        .guard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    else {
        return;
    };
    let (done, flushed) = std::sync::mpsc::channel::<()>();
    let flushing = std::thread::Builder::new()
        .name("log-flush".to_owned())
        .spawn(move || {
            drop(guard);
            drop(done);
        });
    if flushing.is_ok() {
        // Disconnected when the guard is dropped; a timeout otherwise.
        let _ = flushed.recv_timeout(FLUSH_LOGS_WITHIN);
    }
}

/// Longest wait for the queued log lines at exit: the writer's own waits
/// (100 ms for room in the queue, then 1 s for the lines), and a margin.
const FLUSH_LOGS_WITHIN: Duration = Duration::from_millis(1500);

#[cfg(test)]
mod tests {
    use super::*;

    /// Without traces no phase span is made, even where the log filter
    /// lets `info` through (the shipped default), while the log lines are.
    /// Asked of the subscriber itself: the callsites' cached interest is
    /// shared with the other tests' subscribers.
    #[test]
    fn without_traces_no_phase_span_is_made() {
        let everything = tracing::Dispatch::new(Registry::default());
        let [span, line] = tracing::dispatcher::with_default(&everything, || {
            [
                tracing::info_span!(target: SPANS, "request").metadata(),
                tracing::info_span!(target: "quota_proxy::quota::settle", "line").metadata(),
            ]
        })
        .map(|meta| meta.expect("made by a subscriber that wants everything"));
        let dispatch = subscriber(EnvFilter::new("info"), LogFormat::Pretty, None);
        assert!(
            dispatch.register_callsite(span).is_never(),
            "a phase span is made"
        );
        assert!(
            !dispatch.register_callsite(line).is_never(),
            "an info line is not logged"
        );
    }
}
