//! `[usage]` (phase: report): how the upstream reports the images it saved,
//! with the check of the report token and the count bound.

use serde::{Deserialize, Serialize};

use super::{ByteSize, Config, ConfigError, CountMode, HeaderField};

/// How the upstream reports that it saved images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Response header carrying the count; removed before the client sees
    /// it. Empty string = not read.
    pub report_header: HeaderField,
    /// Top-level field of a JSON response carrying a count, a boolean or an
    /// array. Empty string = not read.
    pub report_json_field: String,
    /// Largest JSON response parsed for the field; larger ones, and ones
    /// without a `Content-Length`, stream on unread, and count one image
    /// for a flagged request (fail closed).
    pub max_json_bytes: ByteSize,
    /// `requests`: +1 per response that saved images; `images`: + the count.
    pub count: CountMode,
    /// Markers around an in-band report at the end of a streamed body, e.g.
    /// `[IMAGES_SAVED]{"count": 1}[IMAGES_SAVED_END]`. Unset = not scanned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_marker: Option<ReportMarker>,
    /// Remove in-band markers from what the client receives.
    pub strip_marker: bool,
    /// Server-Sent Events event type whose data is a report, e.g.
    /// `images_saved`. Empty = not read.
    pub report_sse_event: String,
    /// Request header carrying a fresh random token to the upstream on
    /// every inspected request (a client's own is removed from every
    /// request). Empty = no token sent.
    pub report_token_header: HeaderField,
    /// In-band reports (markers, SSE events) count only when their JSON
    /// carries the request's token: the app echoes what users type.
    pub require_report_token: bool,
    /// Largest count one response may report; a larger, negative,
    /// fractional or non-numeric count is a malformed report (counted as 1
    /// when the response otherwise succeeded).
    pub max_images_per_response: u64,
}

/// The start and end markers of an in-band report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportMarker {
    /// Text that opens a report, e.g. `[IMAGES_SAVED]`.
    pub start: String,
    /// Text that closes it, e.g. `[IMAGES_SAVED_END]`.
    pub end: String,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            report_header: HeaderField::from_static("x-images-saved"),
            report_json_field: "images_saved".to_owned(),
            max_json_bytes: ByteSize::new(1024 * 1024),
            count: CountMode::Requests,
            report_marker: None,
            strip_marker: true,
            report_sse_event: String::new(),
            report_token_header: HeaderField::from_static("x-quota-report-token"),
            require_report_token: true,
            max_images_per_response: 16,
        }
    }
}

impl Config {
    /// Checks the report token and count bound of `[usage]`.
    pub(super) fn validate_report_token(&self) -> Result<(), ConfigError> {
        let usage = &self.usage;
        let in_band = usage.report_marker.is_some() || !usage.report_sse_event.is_empty();
        if in_band && usage.require_report_token && usage.report_token_header.is_off() {
            return Err(ConfigError::invalid(
                "usage.report_token_header",
                "must be set while usage.require_report_token is true (or set that to false, \
                 and any user who can make the app echo text can report images)",
            ));
        }
        if usage.max_images_per_response == 0 {
            return Err(ConfigError::invalid(
                "usage.max_images_per_response",
                "must be above 0",
            ));
        }
        Ok(())
    }
}
