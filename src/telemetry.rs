//! Logs and traces (phase: every phase).
//!
//! Logs: `tracing` to stderr, as readable lines or one JSON object per line
//! (`[log] format`), filtered by `[log] filter` unless `RUST_LOG` is set.
//! What is logged: one line per inspected request (route, user, decision,
//! period when denied, upstream status, images, latency), startup, reloads
//! and shutdown. Never cookies, tokens, `Authorization` headers or bodies:
//! no code in this crate puts a header value or a body in a log field.
//!
//! Lines are handed to a thread of their own that writes them to stderr,
//! through a queue of [`LOG_QUEUE`] lines: a serving thread never waits on
//! stderr. stderr is a pipe to a log collector, and one that stalls (a
//! container runtime's `blocking` log mode, a busy journald) would
//! otherwise block the thread writing the next line, and every other on
//! stderr's lock: every request of the app stopped while the probes still
//! answered 200 (`tests/it/faults_dec06.rs`). While the queue is full,
//! lines are dropped and counted (`quota_proxy_log_lines_dropped_total`),
//! and the writer says how many before its next line. [`flush_logs`]
//! writes what is queued before the process exits.
//!
//! Traces (`[tracing]`, docs/tracing.md): with `otlp_endpoint` set, the
//! phase spans of inspected requests ([`crate::quota::SPANS`]) go to an
//! OpenTelemetry layer and on, in batches, to that OTLP/HTTP receiver; the
//! batches are sent from the runtime [`init`] runs on, and [`Telemetry::shutdown`]
//! sends what is left. The logs never show those spans. Unset, no
//! subscriber enables them, so none is made.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
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
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let filter = match from_env.as_deref().map(parse_log_filter) {
        Some(Ok(filter)) => filter,
        Some(Err(reason)) => {
            eprintln!("quota-proxy: RUST_LOG ignored: {reason}");
            configured(&log.filter)
        }
        None => configured(&log.filter),
    };
    // The phase spans are for the traces, never in a log line.
    let filter = match format!("{SPANS}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(LogSink::start(log.format))
        // Colours only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let lines = match log.format {
        LogFormat::Pretty => lines.boxed(),
        LogFormat::Json => lines.json().flatten_event(true).boxed(),
    };
    let provider = (traces.otlp_endpoint.as_ref())
        .map(|endpoint| tracer_provider(endpoint, traces))
        .transpose()?;
    let spans = provider.as_ref().map(|provider| {
        let tracer = provider.tracer("quota-proxy");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_filter(Targets::new().with_target(SPANS, tracing::Level::INFO))
    });
    let _ = Registry::default()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init();
    Ok(Telemetry { traces: provider })
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

/// The sink of the process's log lines, once [`init`] made it.
static LOGS: OnceLock<LogSink> = OnceLock::new();

/// What the log writer thread is sent.
enum LogMessage {
    /// One formatted line (or event), newline included.
    Line(Vec<u8>),
    /// Answer once every line before it is written.
    Flush(SyncSender<()>),
}

/// Log lines to stderr through a bounded queue and a thread of their own:
/// the `tracing` writer of [`init`].
#[derive(Clone)]
struct LogSink {
    queue: SyncSender<LogMessage>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// The process's sink, its writer thread started on the first call.
    fn start(format: LogFormat) -> Self {
        LOGS.get_or_init(|| {
            let (queue, lines) = std::sync::mpsc::sync_channel(LOG_QUEUE);
            let dropped = Arc::new(AtomicU64::new(0));
            let counted = Arc::clone(&dropped);
            let started = std::thread::Builder::new()
                .name("log-writer".to_owned())
                .spawn(move || write_lines(&lines, &counted, format));
            if let Err(e) = started {
                eprintln!("quota-proxy: cannot start the log writer thread: {e}");
            }
            Self { queue, dropped }
        })
        .clone()
    }

    fn send(&self, line: Vec<u8>) {
        match self.queue.try_send(LogMessage::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::AcqRel);
                metrics::counter!("quota_proxy_log_lines_dropped_total").increment(1);
            }
            // No writer thread: write it here, as before.
            Err(TrySendError::Disconnected(LogMessage::Line(line))) => {
                let _ = std::io::stderr().write_all(&line);
            }
            Err(TrySendError::Disconnected(LogMessage::Flush(_))) => {}
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LogLine {
            sink: self,
            line: Vec::new(),
        }
    }
}

/// One event's text, queued when the formatter is done with it.
struct LogLine<'a> {
    sink: &'a LogSink,
    line: Vec<u8>,
}

impl std::io::Write for LogLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine<'_> {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.sink.send(std::mem::take(&mut self.line));
        }
    }
}

/// The writer thread: each line to stderr, after a note of the lines
/// dropped since the last one written.
fn write_lines(lines: &Receiver<LogMessage>, dropped: &AtomicU64, format: LogFormat) {
    let mut stderr = std::io::stderr();
    for message in lines {
        match message {
            LogMessage::Line(line) => {
                let lost = dropped.swap(0, Ordering::AcqRel);
                if lost > 0 {
                    let _ = stderr.write_all(dropped_note(lost, format).as_bytes());
                }
                let _ = stderr.write_all(&line);
            }
            LogMessage::Flush(done) => {
                let _ = stderr.flush();
                let _ = done.send(());
            }
        }
    }
}

/// The line that says `lost` lines were dropped, in the logs' format.
fn dropped_note(lost: u64, format: LogFormat) -> String {
    let message = "log lines dropped: stderr did not take them in time";
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    match format {
        LogFormat::Json => format!(
            "{{\"timestamp\":\"{at}\",\"level\":\"WARN\",\"message\":\"{message}\",\"dropped\":{lost},\"target\":\"quota_proxy::telemetry\"}}\n"
        ),
        LogFormat::Pretty => {
            format!("{at}  WARN quota_proxy::telemetry: {message} dropped={lost}\n")
        }
    }
}

/// Writes the log lines still queued, waiting at most `within` (stderr may
/// be what stalls); call before the process exits.
pub fn flush_logs(within: Duration) {
    let Some(sink) = LOGS.get() else { return };
    let deadline = Instant::now() + within;
    let (done, flushed) = std::sync::mpsc::sync_channel(1);
    let mut message = LogMessage::Flush(done);
    loop {
        match sink.queue.try_send(message) {
            Ok(()) => break,
            Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                message = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    match flushed.recv_timeout(left) {
        Ok(()) | Err(RecvTimeoutError::Disconnected | RecvTimeoutError::Timeout) => {}
    }
}

#[cfg(test)]
mod log_sink_tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (queue, lines) = std::sync::mpsc::sync_channel(2);
        let sink = LogSink {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        for n in 0..5 {
            let mut line = tracing_subscriber::fmt::MakeWriter::make_writer(&sink);
            writeln!(line, "line {n}").expect("write");
        }
        assert_eq!(sink.dropped.load(Ordering::Acquire), 3);
        let kept: Vec<Vec<u8>> = lines
            .try_iter()
            .filter_map(|message| match message {
                LogMessage::Line(line) => Some(line),
                LogMessage::Flush(_) => None,
            })
            .collect();
        assert_eq!(kept, [b"line 0\n".to_vec(), b"line 1\n".to_vec()]);
        let note = dropped_note(3, LogFormat::Json);
        let json: serde_json::Value = serde_json::from_str(&note).expect("a JSON line");
        assert_eq!(json["dropped"], 3);
        assert!(note.ends_with('\n'));
    }
}
