//! The JSON log line (`[log] format = "json"`), written without serde: the
//! object tracing-subscriber's `json().flatten_event(true)` writes, key for
//! key, at a fraction of the cost. Its formatter serializes each key and
//! value through `serde_json` into an `io::Write` adaptor over
//! `fmt::Write`: about 25,000 instructions for the line of each inspected
//! request (callgrind), a quarter of a flagged request's. Here the line is
//! built in a buffer of the thread's and handed on whole.
//!
//! An event inside a span (the admin listener's), and a record of the
//! `log` crate, are written by tracing-subscriber's own formatter: both
//! add what only it knows how to write (the span list, the record's own
//! target). A test holds every other line to that formatter's, byte for
//! byte.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats an event as one JSON object per line (see the module doc).
pub(super) struct JsonLine {
    /// tracing-subscriber's formatter, for the lines this one leaves to it.
    full: Format<Json, SystemTime>,
}

impl JsonLine {
    pub(super) fn new() -> Self {
        Self {
            full: tracing_subscriber::fmt::format().json().flatten_event(true),
        }
    }
}

thread_local! {
    /// The line being built.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Longest buffer a thread keeps between lines.
const KEPT: usize = 4096;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if ctx.lookup_current().is_some() || meta.fields().field("log.target").is_some() {
            return self.full.format_event(ctx, writer, event);
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            line.push_str("{\"timestamp\":\"");
            SystemTime.format_time(&mut Writer::new(line))?;
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push('"');
            event.record(&mut Fields(line));
            line.push_str(",\"target\":");
            push_json_str(line, meta.target());
            line.push_str("}\n");
            let written = writer.write_str(line);
            if line.capacity() > KEPT {
                *line = String::new();
            }
            written
        })
    }
}

/// Appends each field as `,"name":value`.
struct Fields<'a>(&'a mut String);

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push(',');
        push_json_str(self.0, field.name());
        self.0.push(':');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.0, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        // serde_json's own rendering (shortest round trip; null when not
        // finite).
        let _ = write!(self.0, "{}", serde_json::json!(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        push_json_str(self.0, &text);
    }
}

/// Appends `text` as a JSON string, escaped as serde_json escapes it.
fn push_json_str(line: &mut String, text: &str) {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        line.push('"');
        line.push_str(text);
        line.push('"');
    } else {
        // Rare in a log line: serde_json itself.
        let _ = write!(line, "{}", serde_json::Value::from(text));
    }
}

#[cfg(test)]
mod tests;
