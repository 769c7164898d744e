//! Reading the upstream's report of saved images (phase: report).
//!
//! The upstream says how many images a response saved, in a response header
//! (`X-Images-Saved: 2`, removed before the client sees it) or in a top-level
//! field of a JSON response (`"images_saved": true | 2 | [..]`). Streamed
//! responses are never buffered to find it: only a JSON response that
//! declares a `Content-Length` within `usage.max_json_bytes` is read.

mod marker;
mod sse;

pub use self::marker::{MAX_PAYLOAD, MarkerScanner};
pub use self::sse::{MAX_LINE, SseScanner};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, header};

use crate::config::{CountMode, ReportMarker, UsageConfig};

/// Finds saved-image reports in upstream responses.
#[derive(Debug, Clone)]
pub struct ReportReader {
    header: Option<HeaderName>,
    json_field: Option<String>,
    max_json_bytes: u64,
    count: CountMode,
    marker: Option<ReportMarker>,
    strip_marker: bool,
    sse_event: Option<String>,
}

impl ReportReader {
    /// A reader for the `[usage]` section. The config validator has checked
    /// the header name.
    pub fn new(config: &UsageConfig) -> Self {
        Self {
            header: HeaderName::from_bytes(config.report_header.as_bytes()).ok(),
            json_field: Some(config.report_json_field.clone()).filter(|f| !f.is_empty()),
            max_json_bytes: config.max_json_bytes,
            count: config.count,
            marker: config.report_marker.clone(),
            strip_marker: config.strip_marker,
            sse_event: Some(config.report_sse_event.clone()).filter(|e| !e.is_empty()),
        }
    }

    /// True when in-band markers are cut from what the client receives.
    pub fn strips_markers(&self) -> bool {
        self.marker.is_some() && self.strip_marker
    }

    /// A watcher for reports inside the body of a response with these
    /// headers (markers, SSE events, trailers), or `None` when nothing in its
    /// body could report.
    pub fn stream_report(&self, headers: &HeaderMap) -> Option<StreamReport> {
        let is_event_stream = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        let report = StreamReport {
            marker: self
                .marker
                .as_ref()
                .map(|m| MarkerScanner::new(&m.start, &m.end, self.strip_marker)),
            sse: self
                .sse_event
                .as_deref()
                .filter(|_| is_event_stream)
                .map(SseScanner::new),
            trailer: self.header.clone(),
            trailer_images: None,
        };
        let can_report =
            report.marker.is_some() || report.sse.is_some() || report.trailer.is_some();
        can_report.then_some(report)
    }

    /// Removes the report header from `headers` and returns the number of
    /// images it reports, if it was there.
    pub fn take_header(&self, headers: &mut HeaderMap) -> Option<u64> {
        let name = self.header.as_ref()?;
        // One lookup: every response of every route passes here.
        let header::Entry::Occupied(found) = headers.entry(name) else {
            return None;
        };
        // Every copy is removed; if an upstream sends several, the largest
        // wins so usage is never under-counted.
        let images = found
            .iter()
            .map(|value| parse_header_count(value.as_bytes()))
            .max();
        drop(found.remove_entry_mult());
        images
    }

    /// True when a response with these headers is a JSON body small enough
    /// to read for the report field.
    pub fn wants_json_body(&self, headers: &HeaderMap) -> bool {
        if self.json_field.is_none() {
            return false;
        }
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.subtype() == mime::JSON || m.suffix().is_some_and(|s| s == mime::JSON)
            });
        let small = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len <= self.max_json_bytes);
        is_json && small
    }

    /// The number of images a JSON body reports in the configured field.
    pub fn read_json(&self, body: &[u8]) -> Option<u64> {
        let field = self.json_field.as_deref()?;
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        json_count(value.get(field)?)
    }

    /// The usage to charge for a response that saved `images` images.
    pub fn amount(&self, images: u64) -> u64 {
        match self.count {
            CountMode::Requests => images.min(1),
            CountMode::Images => images,
        }
    }
}

/// Watches one streamed response body for in-band reports, frame by frame.
#[derive(Debug)]
pub struct StreamReport {
    marker: Option<MarkerScanner>,
    sse: Option<SseScanner>,
    trailer: Option<HeaderName>,
    trailer_images: Option<u64>,
}

impl StreamReport {
    /// Reads a data chunk; returns what to send on (markers cut out when
    /// stripping).
    pub fn data(&mut self, chunk: Bytes) -> Bytes {
        if let Some(sse) = &mut self.sse {
            sse.feed(&chunk);
        }
        match &mut self.marker {
            Some(marker) => marker.feed(chunk),
            None => chunk,
        }
    }

    /// Reads, and removes, a report carried in the trailers.
    pub fn trailers(&mut self, trailers: &mut HeaderMap) {
        let Some(name) = &self.trailer else { return };
        for value in trailers.get_all(name) {
            let n = parse_header_count(value.as_bytes());
            self.trailer_images = Some(self.trailer_images.map_or(n, |m| m.max(n)));
        }
        trailers.remove(name);
    }

    /// Ends the stream; returns bytes still held back by the marker scanner.
    pub fn finish(&mut self) -> Bytes {
        self.marker
            .as_mut()
            .map(MarkerScanner::finish)
            .unwrap_or_default()
    }

    /// Images reported so far by any in-band source, or `None`.
    pub fn images(&self) -> Option<u64> {
        [
            self.marker.as_ref().and_then(MarkerScanner::images),
            self.sse.as_ref().and_then(SseScanner::images),
            self.trailer_images,
        ]
        .into_iter()
        .flatten()
        .reduce(|a, b| a + b)
    }
}

/// A header value as a count: a number, or `true`/`false`. Anything else
/// still says that images were saved, so it counts as one (logged).
fn parse_header_count(value: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(value);
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        return n;
    }
    match text.to_ascii_lowercase().as_str() {
        "true" => 1,
        "false" => 0,
        _ => {
            tracing::warn!(value = %text, "unreadable saved-images report header; counting 1");
            1
        }
    }
}

/// A JSON report value as a count: a boolean, a non-negative number, or an
/// array (its length). `null` and other kinds report nothing.
pub fn json_count(value: &serde_json::Value) -> Option<u64> {
    use serde_json::Value;
    match value {
        Value::Bool(b) => Some(u64::from(*b)),
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::Array(items) => Some(items.len() as u64),
        Value::Object(map) => map.get("count").and_then(json_count),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn reader(count: CountMode) -> ReportReader {
        ReportReader::new(&UsageConfig {
            count,
            ..UsageConfig::default()
        })
    }

    #[test]
    fn header_is_read_and_removed() {
        let r = reader(CountMode::Images);
        let mut h = HeaderMap::new();
        h.insert("x-images-saved", HeaderValue::from_static("2"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        assert_eq!(r.take_header(&mut h), Some(2));
        assert!(h.get("x-images-saved").is_none());
        assert!(h.get("x-other").is_some());
        assert_eq!(r.take_header(&mut h), None);
    }

    #[test]
    fn header_forms() {
        for (value, want) in [("0", 0), ("3", 3), ("true", 1), ("False", 0), ("yes", 1)] {
            assert_eq!(parse_header_count(value.as_bytes()), want, "{value}");
        }
    }

    #[test]
    fn json_field_forms() {
        let r = reader(CountMode::Images);
        assert_eq!(r.read_json(br#"{"images_saved": true}"#), Some(1));
        assert_eq!(r.read_json(br#"{"images_saved": false}"#), Some(0));
        assert_eq!(r.read_json(br#"{"images_saved": 4}"#), Some(4));
        assert_eq!(r.read_json(br#"{"images_saved": ["a", "b"]}"#), Some(2));
        assert_eq!(r.read_json(br#"{"images_saved": null}"#), None);
        assert_eq!(r.read_json(br#"{"other": 1}"#), None);
        assert_eq!(r.read_json(b"not json"), None);
    }

    #[test]
    fn count_mode() {
        assert_eq!(reader(CountMode::Requests).amount(4), 1);
        assert_eq!(reader(CountMode::Requests).amount(0), 0);
        assert_eq!(reader(CountMode::Images).amount(4), 4);
    }

    #[test]
    fn only_small_declared_json_is_read() {
        let r = reader(CountMode::Requests);
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(!r.wants_json_body(&h), "no content-length: streamed");
        h.insert("content-length", HeaderValue::from_static("120"));
        assert!(r.wants_json_body(&h));
        h.insert("content-length", HeaderValue::from_static("99999999"));
        assert!(!r.wants_json_body(&h));
        h.insert("content-length", HeaderValue::from_static("10"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert!(!r.wants_json_body(&h));
    }
}
