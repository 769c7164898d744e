//! The log lines, written without the formatting machinery of
//! tracing-subscriber's formatters: the same bytes, at a fraction of the
//! cost. Its JSON formatter (`json().flatten_event(true)`) serializes each
//! key and value through `serde_json` into an `io::Write` adaptor over
//! `fmt::Write`, and its text formatter goes through `fmt` for every piece:
//! about 27,000 and 20,000 instructions for the line of each inspected
//! request (callgrind), a quarter of a flagged request's. Here the line is
//! built in a buffer of the thread's and handed on whole.
//!
//! What only tracing-subscriber knows how to write goes to its own
//! formatter: an event inside a span (the admin listener's), a record of
//! the `log` crate, and in the text line colours, an error value (with its
//! sources), a raw (`r#`) field name, or a message with a control
//! character it escapes. Tests hold every other line to that formatter's,
//! byte for byte.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Json, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats an event as one line, built in place by `build` or, for what
/// only tracing-subscriber writes (see the module doc), by its `full`
/// formatter.
pub(super) struct InPlace<F> {
    full: F,
    /// Writes the line of an event; false when it leaves it to `full`.
    build: fn(&mut String, &Event<'_>) -> bool,
}

/// One JSON object per line: `json().flatten_event(true)`'s line.
pub(super) fn json() -> InPlace<Format<Json, SystemTime>> {
    InPlace {
        full: tracing_subscriber::fmt::format().json().flatten_event(true),
        build: json_line,
    }
}

/// One line of text: tracing-subscriber's default line.
pub(super) fn text() -> InPlace<Format<Full, SystemTime>> {
    InPlace {
        full: tracing_subscriber::fmt::format(),
        build: text_line,
    }
}

thread_local! {
    /// The line being built.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Longest buffer a thread keeps between lines.
const KEPT: usize = 4096;

/// Whether `event` is left to tracing-subscriber's formatter whatever the
/// format: inside a span, or a `log` record.
fn left_to_full<S, N>(ctx: &FmtContext<'_, S, N>, event: &Event<'_>) -> bool
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    ctx.lookup_current().is_some() || event.metadata().fields().field("log.target").is_some()
}

/// Builds a line in the thread's buffer with `build` and writes it whole;
/// false (nothing written) when `build` leaves it to the full formatter.
/// Never entered twice at once: an event logged while a line is built (a
/// field's `Debug` that logs) is not dispatched at all, tracing's own guard.
fn built(
    writer: &mut Writer<'_>,
    build: impl FnOnce(&mut String) -> bool,
) -> Result<bool, fmt::Error> {
    LINE.with_borrow_mut(|line| {
        line.clear();
        let whole = build(line);
        let written = if whole {
            writer.write_str(line).map(|()| true)
        } else {
            Ok(false)
        };
        if line.capacity() > KEPT {
            *line = String::new();
        }
        written
    })
}

thread_local! {
    /// The second the last timestamp fell in, and its text up to the `.`.
    static SECOND: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
}

/// The timestamp, as tracing-subscriber's `SystemTime` writes it
/// (`2026-12-07T14:39:28.839315Z`): the date and time rendered once a
/// second, the microseconds on each line (the rendering was 3,500
/// instructions a line).
fn push_timestamp(line: &mut String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    push_timestamp_at(line, seconds, now.subsec_micros());
}

/// [`push_timestamp`] for `seconds` since the epoch and `micros` past it.
fn push_timestamp_at(line: &mut String, seconds: i64, micros: u32) {
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != seconds {
            text.clear();
            match chrono::DateTime::from_timestamp(seconds, 0) {
                Some(at) => {
                    let _ = write!(text, "{}", at.format("%Y-%m-%dT%H:%M:%S."));
                }
                None => text.push_str("<unknown time>"),
            }
            *second = seconds;
        }
        line.push_str(text);
    });
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(micros);
    line.extend(std::iter::repeat_n(
        '0',
        6usize.saturating_sub(digits.len()),
    ));
    line.push_str(digits);
    line.push('Z');
}

impl<S, N, F> FormatEvent<S, N> for InPlace<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Colours (a person at a terminal) are the full formatter's too.
        if writer.has_ansi_escapes() || left_to_full(ctx, event) {
            return self.full.format_event(ctx, writer, event);
        }
        if built(&mut writer, |line| (self.build)(line, event))? {
            Ok(())
        } else {
            self.full.format_event(ctx, writer, event)
        }
    }
}

/// The JSON line of `event`.
fn json_line(line: &mut String, event: &Event<'_>) -> bool {
    let meta = event.metadata();
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line);
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push('"');
    event.record(&mut JsonFields(line));
    line.push_str(",\"target\":");
    push_json_str(line, meta.target());
    line.push_str("}\n");
    true
}

/// The text line of `event`; false on what only tracing-subscriber writes.
fn text_line(line: &mut String, event: &Event<'_>) -> bool {
    let meta = event.metadata();
    push_timestamp(line);
    line.push(' ');
    line.push_str(match *meta.level() {
        tracing::Level::INFO => " INFO",
        tracing::Level::WARN => " WARN",
        level => level.as_str(),
    });
    line.push(' ');
    line.push_str(meta.target());
    line.push_str(": ");
    let mut fields = TextFields {
        line,
        first: true,
        whole: true,
    };
    event.record(&mut fields);
    fields.line.push('\n');
    fields.whole
}

/// Appends each field as `,"name":value`.
struct JsonFields<'a>(&'a mut String);

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push(',');
        push_json_str(self.0, field.name());
        self.0.push(':');
    }
}

impl Visit for JsonFields<'_> {
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

/// Appends the fields as tracing-subscriber's default visitor writes them
/// without colours: the message as it is, then ` name=value` with values
/// in their `Debug` form. `whole` turns false on what only that visitor
/// writes (see the module doc).
struct TextFields<'a> {
    line: &'a mut String,
    first: bool,
    whole: bool,
}

impl TextFields<'_> {
    /// The separator and `name=`; false when the field is not written
    /// here.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") || name.starts_with("r#") {
            self.whole = false;
            return false;
        }
        if !std::mem::take(&mut self.first) {
            self.line.push(' ');
        }
        if name != "message" {
            self.line.push_str(name);
            self.line.push('=');
        }
        true
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.record_debug(field, &format_args!("{value}"));
        }
        if !self.key(field) {
            return;
        }
        // `Debug` leaves printable ASCII but `"` and `\` as it is.
        if value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.line.push('"');
            self.line.push_str(value);
            self.line.push('"');
        } else {
            let _ = write!(self.line, "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            self.line.push_str(itoa::Buffer::new().format(value));
        }
    }

    fn record_error(&mut self, _: &Field, _: &(dyn std::error::Error + 'static)) {
        self.whole = false;
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.key(field) {
            return;
        }
        let from = self.line.len();
        let _ = write!(self.line, "{value:?}");
        // The characters tracing-subscriber escapes in a message.
        if field.name() == "message"
            && self.line[from..].chars().any(|c| {
                matches!(
                    c,
                    '\x07' | '\x08' | '\x0c' | '\x1b' | '\x7f' | '\u{80}'..='\u{9f}'
                )
            })
        {
            self.whole = false;
        }
    }
}

#[cfg(test)]
mod tests;
