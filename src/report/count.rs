//! Reported counts, and which reports are the backend's own (phase: report).
//!
//! A report comes from the backend, but an in-band one travels inside a
//! body the app fills with what users type: the chat app echoes the user's
//! message in its stream. So:
//!
//! - **Only the backend can make an in-band report.** Each inspected
//!   request carries a fresh 128-bit [`ReportToken`] to the upstream; a
//!   marker or SSE event counts only when its JSON holds that token
//!   ([`in_band`]). Anything else is plain text.
//! - **Every count is bounded** by `usage.max_images_per_response`. A count
//!   that is negative, fractional, above the bound or not a number is a
//!   malformed report ([`UsageReport::malformed`]): logged, counted in a
//!   metric, and charged as one image when the response otherwise
//!   succeeded ([`UsageReport::charged`]): fail closed, never 0, never
//!   `u64::MAX`.
//! - Sums saturate and stay within the bound.

use rand::RngExt;
use serde_json::Value;
use subtle::ConstantTimeEq;

/// What the reports of one response said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageReport {
    /// Images reported by well-formed reports; never above the bound.
    pub images: u64,
    /// A report from the backend had a count that could not be read.
    pub malformed: bool,
}

impl UsageReport {
    /// A well-formed report of `images` images.
    pub const fn images(images: u64) -> Self {
        Self {
            images,
            malformed: false,
        }
    }

    /// A report whose count could not be read.
    pub const MALFORMED: Self = Self {
        images: 0,
        malformed: true,
    };

    /// Two reports of one response together, at most `max` images.
    #[must_use]
    pub fn plus(self, other: Self, max: u64) -> Self {
        Self {
            images: self.images.saturating_add(other.images).min(max),
            malformed: self.malformed || other.malformed,
        }
    }

    /// The larger of two copies of one report (a header sent twice).
    #[must_use]
    pub fn or_max(self, other: Self) -> Self {
        Self {
            images: self.images.max(other.images),
            malformed: self.malformed || other.malformed,
        }
    }

    /// The images to charge: the count, or 1 when the only report was
    /// malformed and the response otherwise `succeeded`.
    pub fn charged(self, succeeded: bool) -> u64 {
        if self.images == 0 && self.malformed && succeeded {
            1
        } else {
            self.images
        }
    }
}

/// A fresh random token (128 bits, 32 lowercase hex digits) sent to the
/// upstream with one request; only reports carrying it count.
#[derive(Clone, PartialEq, Eq)]
pub struct ReportToken([u8; 32]);

impl ReportToken {
    /// A new token from the thread's CSPRNG (seeded from the OS).
    pub fn generate() -> Self {
        Self::from(rand::rng().random::<u128>())
    }

    /// The token as sent and as expected back.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The token as a request header value.
    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_bytes(&self.0)
            .unwrap_or_else(|_| http::HeaderValue::from_static("-"))
    }

    /// True when `candidate` is this token (in constant time).
    pub fn matches(&self, candidate: &str) -> bool {
        candidate.len() == self.0.len() && bool::from(candidate.as_bytes().ct_eq(&self.0))
    }
}

impl From<u128> for ReportToken {
    /// The token of a given number; tests and fuzzers use it to know the
    /// token in advance.
    fn from(n: u128) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, byte) in n.to_be_bytes().iter().enumerate() {
            out[2 * i] = HEX[usize::from(byte >> 4)];
            out[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        Self(out)
    }
}

impl std::fmt::Debug for ReportToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not logged: until its response ends it is what makes a report.
        f.write_str("ReportToken(..)")
    }
}

/// What makes an in-band report count for one response.
#[derive(Debug, Clone)]
pub struct ReportRules {
    /// The token sent with the request, if one was.
    pub token: Option<ReportToken>,
    /// A report without the token is plain text.
    pub require_token: bool,
    /// Largest count one response may report.
    pub max_images: u64,
}

impl ReportRules {
    /// Rules that accept only reports carrying `token`, of at most
    /// `max_images` images.
    pub fn with_token(token: ReportToken, max_images: u64) -> Self {
        Self {
            token: Some(token),
            require_token: true,
            max_images,
        }
    }
}

/// A header or trailer value as a count: `0..=max`, `true` or `false`.
/// Anything else is malformed.
pub fn header_count(value: &[u8], max: u64) -> UsageReport {
    let text = String::from_utf8_lossy(value);
    let text = text.trim();
    if let Some(n) = bounded(text, max) {
        return UsageReport::images(n);
    }
    if text.eq_ignore_ascii_case("true") {
        UsageReport::images(1)
    } else if text.eq_ignore_ascii_case("false") {
        UsageReport::images(0)
    } else {
        tracing::warn!(value = %text.chars().take(64).collect::<String>(),
            "malformed saved-images report header");
        UsageReport::MALFORMED
    }
}

/// A decimal count of at most `max`, digits only.
fn bounded(text: &str, max: u64) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|&n| n <= max)
}

/// A JSON report value as a count: a boolean, an integer in `0..=max`, an
/// array (its length, at most `max`), or an object's `count`. `null` reports
/// nothing; every other value is malformed.
pub fn json_count(value: &Value, max: u64) -> Option<UsageReport> {
    let count = match value {
        Value::Null => return None,
        Value::Bool(b) => Some(u64::from(*b)),
        Value::Number(n) => n.as_u64().filter(|&n| n <= max),
        Value::Array(items) => u64::try_from(items.len()).ok().filter(|&n| n <= max),
        Value::Object(map) => {
            return Some(
                map.get("count")
                    .and_then(|c| json_count(c, max))
                    .unwrap_or(UsageReport::MALFORMED),
            );
        }
        Value::String(_) => None,
    };
    Some(count.map_or(UsageReport::MALFORMED, UsageReport::images))
}

/// The payload of an in-band report (between markers, or an SSE event's
/// data) read under `rules`: `None` when it is not the backend's report (no
/// token, or another one, while one is required) and so plain text.
pub fn in_band(payload: &[u8], rules: &ReportRules) -> Option<UsageReport> {
    let text = String::from_utf8_lossy(payload);
    let text = text.trim();
    let report = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => {
            match map.get("token") {
                Some(Value::String(t)) if rules.token.as_ref().is_some_and(|k| k.matches(t)) => {}
                // Someone else's token, or not a string: not ours.
                Some(_) => return None,
                None if rules.require_token => return None,
                None => {}
            }
            map.get("count")
                .and_then(|c| json_count(c, rules.max_images))
                .unwrap_or(UsageReport::MALFORMED)
        }
        _ if rules.require_token => return None,
        Ok(value) => json_count(&value, rules.max_images).unwrap_or(UsageReport::MALFORMED),
        Err(_) => UsageReport::MALFORMED,
    };
    if report.malformed {
        tracing::warn!(
            payload = %text.chars().take(64).collect::<String>(),
            "malformed in-band saved-images report"
        );
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const MAX: u64 = 16;

    #[test]
    fn header_counts_are_bounded() {
        for (value, want) in [
            ("0", UsageReport::images(0)),
            ("3", UsageReport::images(3)),
            (" 16 ", UsageReport::images(16)),
            ("true", UsageReport::images(1)),
            ("False", UsageReport::images(0)),
            ("17", UsageReport::MALFORMED),
            ("18446744073709551615", UsageReport::MALFORMED),
            ("99999999999999999999999", UsageReport::MALFORMED),
            ("-1", UsageReport::MALFORMED),
            ("+1", UsageReport::MALFORMED),
            ("1.5", UsageReport::MALFORMED),
            ("yes", UsageReport::MALFORMED),
            ("", UsageReport::MALFORMED),
        ] {
            assert_eq!(header_count(value.as_bytes(), MAX), want, "{value:?}");
        }
    }

    #[test]
    fn json_counts_are_bounded() {
        let m = Some(UsageReport::MALFORMED);
        for (value, want) in [
            (json!(true), Some(UsageReport::images(1))),
            (json!(2), Some(UsageReport::images(2))),
            (json!(["a", "b"]), Some(UsageReport::images(2))),
            (json!({"count": 4}), Some(UsageReport::images(4))),
            (json!(null), None),
            (json!(u64::MAX), m),
            (json!(-1), m),
            (json!(1.5), m),
            (json!(1e300), m),
            (json!("1"), m),
            (json!({}), m),
            (json!(vec![0; 17]), m),
        ] {
            assert_eq!(json_count(&value, MAX), want, "{value}");
        }
    }

    #[test]
    fn in_band_needs_the_token() {
        let token = ReportToken::from(7);
        let rules = ReportRules::with_token(token.clone(), MAX);
        let real = format!(r#"{{"count": 1, "token": "{}"}}"#, token.as_str());
        assert_eq!(
            in_band(real.as_bytes(), &rules),
            Some(UsageReport::images(1))
        );
        let other = ReportToken::from(8);
        for forged in [
            r#"{"count": 1}"#.to_owned(),
            "18446744073709551615".to_owned(),
            "1".to_owned(),
            format!(r#"{{"count": 1, "token": "{}"}}"#, other.as_str()),
            r#"{"count": 1, "token": ""}"#.to_owned(),
            r#"{"count": 1, "token": 1}"#.to_owned(),
            "not json".to_owned(),
        ] {
            assert_eq!(in_band(forged.as_bytes(), &rules), None, "{forged}");
        }
        let huge = format!(
            r#"{{"count": 18446744073709551615, "token": "{}"}}"#,
            token.as_str()
        );
        assert_eq!(
            in_band(huge.as_bytes(), &rules),
            Some(UsageReport::MALFORMED)
        );
    }

    #[test]
    fn without_a_required_token_bare_counts_still_read() {
        let rules = ReportRules {
            token: None,
            require_token: false,
            max_images: MAX,
        };
        assert_eq!(in_band(b" 3 ", &rules), Some(UsageReport::images(3)));
        assert_eq!(in_band(b"x", &rules), Some(UsageReport::MALFORMED));
        assert_eq!(
            in_band(br#"{"count": 2, "token": "abc"}"#, &rules),
            None,
            "a token never matches when none was sent"
        );
        assert_eq!(
            in_band(br#"{"count": 2}"#, &rules),
            Some(UsageReport::images(2)),
            "an object without a token counts when none is required"
        );
    }

    #[test]
    fn a_malformed_copy_of_a_header_fails_closed() {
        // A header sent twice, "0" and garbage: the garbage is still
        // charged as one image when the response succeeded.
        let zero = header_count(b"0", MAX);
        let garbage = header_count(b"many", MAX);
        for report in [zero.or_max(garbage), garbage.or_max(zero)] {
            assert!(report.malformed, "{report:?}");
            assert_eq!(report.charged(true), 1);
        }
        assert_eq!(zero.or_max(zero).charged(true), 0);
    }

    #[test]
    fn sums_saturate_within_the_bound() {
        let a = UsageReport::images(10);
        assert_eq!(a.plus(a, MAX), UsageReport::images(MAX));
        let huge = UsageReport::images(u64::MAX);
        assert_eq!(huge.plus(huge, u64::MAX).images, u64::MAX);
        assert_eq!(UsageReport::MALFORMED.charged(true), 1);
        assert_eq!(UsageReport::MALFORMED.charged(false), 0);
        assert_eq!(
            UsageReport::MALFORMED
                .plus(UsageReport::images(3), MAX)
                .charged(true),
            3
        );
    }

    #[test]
    fn tokens_are_fresh_hex() {
        let a = ReportToken::generate();
        let b = ReportToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(a.matches(a.as_str()) && !a.matches(b.as_str()));
        assert_eq!(format!("{a:?}"), "ReportToken(..)");
    }
}
