//! Reading the upstream's report of saved images (phase: report).
//!
//! The upstream says how many images a response saved, in a response header
//! (`X-Images-Saved: 2`, removed before the client sees it), in a top-level
//! field of a JSON response (`"images_saved": true | 2 | [..]`), or in-band
//! in a streamed body: a marker (`marker.rs`) or an SSE event (`sse.rs`),
//! which count only with the request's [`ReportToken`] (`count.rs`: the app
//! echoes what users type). Every count is bounded by
//! `usage.max_images_per_response`. Streamed responses are never buffered
//! to find a report: only a JSON response that declares a `Content-Length`
//! within `usage.max_json_bytes` is read ([`JsonBody`]).

mod count;
mod marker;
#[cfg(test)]
mod props;
mod sse;

pub use self::count::{ReportRules, ReportToken, UsageReport, header_count, in_band, json_count};
pub use self::marker::{MAX_PAYLOAD, MarkerScanner};
pub use self::sse::{MAX_LINE, SseScanner};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

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
    token_header: Option<HeaderName>,
    require_token: bool,
    max_images: u64,
}

impl ReportReader {
    /// A reader for the `[usage]` section.
    pub fn new(config: &UsageConfig) -> Self {
        Self {
            header: config.report_header.name().cloned(),
            json_field: Some(config.report_json_field.clone()).filter(|f| !f.is_empty()),
            max_json_bytes: config.max_json_bytes.get(),
            count: config.count,
            marker: config.report_marker.clone(),
            strip_marker: config.strip_marker,
            sse_event: Some(config.report_sse_event.clone()).filter(|e| !e.is_empty()),
            token_header: config.report_token_header.name().cloned(),
            require_token: config.require_report_token,
            max_images: config.max_images_per_response.max(1),
        }
    }

    /// True when in-band markers are cut from what the client receives.
    pub fn strips_markers(&self) -> bool {
        self.marker.is_some() && self.strip_marker
    }

    /// The request header that carries the report token to the upstream;
    /// a client's own is removed from every request.
    pub fn token_header(&self) -> Option<&HeaderName> {
        self.token_header.as_ref()
    }

    /// Removes the client's own report token header from `headers`, in
    /// every spelling the backend would read as it: WSGI servers turn both
    /// `-` and `_` into `_` (`HTTP_X_QUOTA_REPORT_TOKEN`), so
    /// `X_Quota_Report_Token` would reach Django as the token.
    pub fn strip_client_token(&self, headers: &mut HeaderMap) {
        let Some(name) = &self.token_header else {
            return;
        };
        headers.remove(name);
        let wsgi_same = |key: &HeaderName| {
            let (a, b) = (key.as_str().as_bytes(), name.as_str().as_bytes());
            a.len() == b.len()
                && a.contains(&b'_')
                && a.iter()
                    .zip(b)
                    .all(|(&x, &y)| x == y || (x == b'_' && y == b'-'))
        };
        // No allocation unless such a header is there (almost never).
        while let Some(key) = headers.keys().find(|k| wsgi_same(k)).cloned() {
            headers.remove(&key);
        }
    }

    /// True when the data of a body with these headers may carry a report
    /// (a marker, an SSE event), not only its trailers: checked before
    /// a watcher is built for a response the header reported on.
    pub fn body_data_can_report(&self, headers: &HeaderMap) -> bool {
        self.marker.is_some() || (self.sse_event.is_some() && is_event_stream(headers))
    }

    /// A watcher for reports inside the body of a response with these
    /// headers (markers, SSE events, trailers), or `None` when nothing in its
    /// body could report. `token` is the one sent with the request.
    pub fn stream_report(
        &self,
        headers: &HeaderMap,
        token: Option<ReportToken>,
    ) -> Option<StreamReport> {
        let is_event_stream = is_event_stream(headers);
        let rules = ReportRules {
            token,
            require_token: self.require_token,
            max_images: self.max_images,
        };
        let sse = self
            .sse_event
            .as_deref()
            .filter(|_| is_event_stream)
            .map(|event| SseScanner::new(event, rules.clone()));
        let report = StreamReport {
            marker: self.marker.as_ref().map(|m| {
                let scanner = MarkerScanner::new(&m.start, &m.end, self.strip_marker, rules);
                // An SSE report carries the token outside any marker.
                if sse.is_some() {
                    scanner.without_token_watch()
                } else {
                    scanner
                }
            }),
            sse,
            trailer: self.header.clone(),
            trailer_report: None,
            header_report: None,
            max_images: self.max_images,
        };
        let can_report =
            report.marker.is_some() || report.sse.is_some() || report.trailer.is_some();
        can_report.then_some(report)
    }

    /// Removes the report header from `headers` and returns what it
    /// reports, if it was there.
    pub fn take_header(&self, headers: &mut HeaderMap) -> Option<UsageReport> {
        let name = self.header.as_ref()?;
        // One lookup: every response of every route passes here.
        let header::Entry::Occupied(found) = headers.entry(name) else {
            return None;
        };
        // Every copy is removed; if an upstream sends several, the largest
        // wins so usage is never under-counted.
        let report = found
            .iter()
            .map(|value| header_count(value.as_bytes(), self.max_images))
            .reduce(UsageReport::or_max);
        drop(found.remove_entry_mult());
        report
    }

    /// The content coding of a response with these headers, when it has
    /// one: its body's reports (JSON field, markers, SSE events) are then
    /// out of the reader's sight. `identity` is no coding.
    pub fn coding<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        headers.get_all(header::CONTENT_ENCODING).iter().find(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"))
        })
    }

    /// Whether a response with these headers has a JSON body to read for
    /// the report field: one that declares a `Content-Length` within
    /// `max_json_bytes` is read; a longer one, or one that declares none
    /// (streamed), is not.
    pub fn json_body(&self, headers: &HeaderMap) -> JsonBody {
        if self.json_field.is_none() {
            return JsonBody::None;
        }
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.subtype() == mime::JSON || m.suffix().is_some_and(|s| s == mime::JSON)
            });
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match length {
            _ if !is_json => JsonBody::None,
            Some(len) if len <= self.max_json_bytes => JsonBody::Read,
            Some(_) | None => JsonBody::Unread,
        }
    }

    /// What a JSON body reports in the configured field.
    pub fn read_json(&self, body: &[u8]) -> Option<UsageReport> {
        let field = self.json_field.as_deref()?;
        let value: serde_json::Value = serde_json::from_slice(body).ok()?;
        json_count(value.get(field)?, self.max_images)
    }

    /// The usage to charge for a response that saved `images` images.
    pub fn amount(&self, images: u64) -> u64 {
        match self.count {
            CountMode::Requests => images.min(1),
            CountMode::Images => images.min(self.max_images),
        }
    }
}

/// True for a `text/event-stream` body (media types are case-insensitive,
/// RFC 9110 8.3.1).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .get(..17)
                .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
        })
}

/// What [`ReportReader::json_body`] makes of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonBody {
    /// A JSON body within `max_json_bytes`: read it for the report field.
    Read,
    /// A JSON body declared longer than `max_json_bytes`, or with no
    /// declared length: a report field in it is not read.
    Unread,
    /// Not a JSON body (or no field configured).
    None,
}

/// Watches one streamed response body for in-band reports, frame by frame.
#[derive(Debug)]
pub struct StreamReport {
    marker: Option<MarkerScanner>,
    sse: Option<SseScanner>,
    trailer: Option<HeaderName>,
    trailer_report: Option<UsageReport>,
    /// The response header's report, sent with the head.
    header_report: Option<UsageReport>,
    max_images: u64,
}

impl StreamReport {
    /// Reads a data chunk; returns what to send on (reports cut out when
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
            let n = header_count(value.as_bytes(), self.max_images);
            self.trailer_report = Some(self.trailer_report.map_or(n, |m| m.or_max(n)));
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

    /// Also counts the response header's report, sent with the head: an app
    /// that streams may know its count only at the end of the body, so the
    /// header does not end the watch.
    pub fn with_header(mut self, report: UsageReport) -> Self {
        self.header_report = Some(report);
        self
    }

    /// What the in-band sources reported so far (summed, within the
    /// bound), or `None`; with a header report, the larger of the two (an
    /// app may report the same images both ways).
    pub fn report(&self) -> Option<UsageReport> {
        match (self.in_band(), self.header_report) {
            (Some(in_band), Some(header)) => Some(in_band.or_max(header)),
            (in_band, header) => in_band.or(header),
        }
    }

    /// [`Self::report`] for a body cut before its end: a header that said
    /// no image is no report then (the app reports at the end of the
    /// stream, which never came), so the cut still fails closed.
    pub fn report_if_cut(&self) -> Option<UsageReport> {
        match self.in_band() {
            Some(_) => self.report(),
            None => self.header_report.filter(|header| header.images > 0),
        }
    }

    fn in_band(&self) -> Option<UsageReport> {
        [
            self.marker.as_ref().and_then(MarkerScanner::report),
            self.sse.as_ref().and_then(SseScanner::report),
            self.trailer_report,
        ]
        .into_iter()
        .flatten()
        .reduce(|a, b| a.plus(b, self.max_images))
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(r.take_header(&mut h), Some(UsageReport::images(2)));
        assert!(h.get("x-images-saved").is_none());
        assert!(h.get("x-other").is_some());
        assert_eq!(r.take_header(&mut h), None);
    }

    #[test]
    fn the_client_token_goes_in_every_spelling() {
        let r = reader(CountMode::Requests);
        let mut h = HeaderMap::new();
        for name in [
            "x-quota-report-token",
            "x_quota_report_token",
            "x-quota_report-token",
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_static("mine"),
            );
        }
        // Kept: other lengths, the same length with no `_`, and a `_`
        // spelling that differs elsewhere.
        let kept = [
            "x-quota-report-tokens",
            "x_other",
            "x-quota-report-other",
            "x_quota-reportxtoken",
        ];
        for name in kept {
            h.insert(name, HeaderValue::from_static("kept"));
        }
        r.strip_client_token(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        let mut kept = kept.to_vec();
        kept.sort_unstable();
        assert_eq!(left, kept);
    }

    #[test]
    fn several_headers_the_largest_wins() {
        let r = reader(CountMode::Images);
        let mut h = HeaderMap::new();
        h.append("x-images-saved", HeaderValue::from_static("1"));
        h.append("x-images-saved", HeaderValue::from_static("3"));
        assert_eq!(r.take_header(&mut h), Some(UsageReport::images(3)));
        h.append(
            "x-images-saved",
            HeaderValue::from_static("18446744073709551615"),
        );
        let report = r.take_header(&mut h).expect("a report");
        assert!(report.malformed && report.charged(true) == 1, "{report:?}");
    }

    #[test]
    fn json_field_forms() {
        let r = reader(CountMode::Images);
        let n = |n| Some(UsageReport::images(n));
        assert_eq!(r.read_json(br#"{"images_saved": true}"#), n(1));
        assert_eq!(r.read_json(br#"{"images_saved": false}"#), n(0));
        assert_eq!(r.read_json(br#"{"images_saved": 4}"#), n(4));
        assert_eq!(r.read_json(br#"{"images_saved": ["a", "b"]}"#), n(2));
        assert_eq!(
            r.read_json(br#"{"images_saved": 18446744073709551615}"#),
            Some(UsageReport::MALFORMED)
        );
        assert_eq!(r.read_json(br#"{"images_saved": null}"#), None);
        assert_eq!(r.read_json(br#"{"other": 1}"#), None);
        assert_eq!(r.read_json(b"not json"), None);
    }

    #[test]
    fn count_mode() {
        assert_eq!(reader(CountMode::Requests).amount(4), 1);
        assert_eq!(reader(CountMode::Requests).amount(0), 0);
        assert_eq!(reader(CountMode::Images).amount(4), 4);
        assert_eq!(reader(CountMode::Images).amount(u64::MAX), 16);
    }

    #[test]
    fn a_content_coding_is_found_in_any_of_its_forms() {
        let r = reader(CountMode::Requests);
        let coding = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("content-encoding", HeaderValue::from_static(v));
            }
            r.coding(&h).map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(coding(&[]), None);
        assert_eq!(coding(&["identity"]), None);
        assert_eq!(coding(&[" Identity , "]), None);
        assert_eq!(coding(&["gzip"]).as_deref(), Some("gzip"));
        assert_eq!(coding(&["identity, br"]).as_deref(), Some("identity, br"));
        assert_eq!(
            coding(&["identity", "x-custom"]).as_deref(),
            Some("x-custom")
        );
    }

    #[test]
    fn only_small_declared_json_is_read() {
        let r = reader(CountMode::Requests);
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(
            r.json_body(&h),
            JsonBody::Unread,
            "no content-length: streamed"
        );
        h.insert("content-length", HeaderValue::from_static("120"));
        assert_eq!(r.json_body(&h), JsonBody::Read);
        h.insert("content-length", HeaderValue::from_static("99999999"));
        assert_eq!(r.json_body(&h), JsonBody::Unread);
        h.insert("content-length", HeaderValue::from_static("10"));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/problem+json"),
        );
        assert_eq!(r.json_body(&h), JsonBody::Read, "a +json type is JSON");
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        assert_eq!(r.json_body(&h), JsonBody::None);
    }

    /// A reader with markers `[S]`…`[E]`, SSE events and the default header.
    fn in_band_reader() -> ReportReader {
        ReportReader::new(&UsageConfig {
            count: CountMode::Images,
            report_marker: Some(ReportMarker {
                start: "[S]".to_owned(),
                end: "[E]".to_owned(),
            }),
            report_sse_event: "images_saved".to_owned(),
            ..UsageConfig::default()
        })
    }

    #[test]
    fn markers_are_stripped_and_the_token_sent_as_configured() {
        let default = reader(CountMode::Requests);
        assert!(!default.strips_markers(), "no marker: nothing to strip");
        assert!(in_band_reader().strips_markers());
        let kept = ReportReader::new(&UsageConfig {
            strip_marker: false,
            report_marker: Some(ReportMarker {
                start: "[S]".to_owned(),
                end: "[E]".to_owned(),
            }),
            ..UsageConfig::default()
        });
        assert!(!kept.strips_markers());
        assert_eq!(
            default.token_header().map(HeaderName::as_str),
            Some("x-quota-report-token")
        );
        let none = ReportReader::new(&UsageConfig {
            report_token_header: crate::config::HeaderField::off(),
            ..UsageConfig::default()
        });
        assert_eq!(none.token_header(), None);
    }

    #[test]
    fn a_body_is_watched_only_when_something_in_it_can_report() {
        let mut sse = HeaderMap::new();
        sse.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        let plain = HeaderMap::new();
        let token = || Some(ReportToken::from(7));
        // The report header, read as a trailer, alone.
        assert!(
            reader(CountMode::Images)
                .stream_report(&plain, token())
                .is_some()
        );
        let no_header = |usage: UsageConfig| {
            ReportReader::new(&UsageConfig {
                report_header: crate::config::HeaderField::off(),
                ..usage
            })
        };
        let marker_only = no_header(UsageConfig {
            report_marker: Some(ReportMarker {
                start: "[S]".to_owned(),
                end: "[E]".to_owned(),
            }),
            ..UsageConfig::default()
        });
        assert!(marker_only.stream_report(&plain, token()).is_some());
        let sse_only = no_header(UsageConfig {
            report_sse_event: "images_saved".to_owned(),
            ..UsageConfig::default()
        });
        assert!(sse_only.stream_report(&sse, token()).is_some());
        assert!(
            sse_only.stream_report(&plain, token()).is_none(),
            "not an event stream"
        );
        let nothing = no_header(UsageConfig::default());
        assert!(nothing.stream_report(&sse, token()).is_none());
    }

    #[test]
    fn a_stream_report_sums_markers_events_and_trailers() {
        let token = ReportToken::from(7);
        let t = token.as_str();
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        let mut report = in_band_reader()
            .stream_report(&h, Some(token.clone()))
            .expect("watched");
        assert_eq!(report.report(), None);
        let event = format!("event: images_saved\ndata: {{\"count\": 2, \"token\": \"{t}\"}}\n\n");
        let body = format!("data: hi\n\n[S]{{\"count\": 1, \"token\": \"{t}\"}}[E]\n{event}");
        let out = report.data(Bytes::from(body));
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("data: hi\n\n\n{event}"),
            "the marker is cut, the event passes"
        );
        // A possible start of a marker is held back until the end.
        assert_eq!(&report.data(Bytes::from_static(b"bye [S"))[..], b"bye ");
        assert_eq!(&report.finish()[..], b"[S");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-images-saved", HeaderValue::from_static("3"));
        report.trailers(&mut trailers);
        assert!(trailers.is_empty(), "the trailer is removed");
        assert_eq!(report.report(), Some(UsageReport::images(6)));
    }
}
