//! Value types that cannot hold a bad value (phase: startup): a header
//! name ([`HeaderField`], [`RequiredHeader`]), a duration above zero
//! ([`NonZeroDuration`]) and a byte count with units ([`ByteSize`],
//! [`NonZeroByteSize`]). Each is checked once, when the file is parsed;
//! the parser's error shows the line and the key, and the message says
//! what to write. Each is written back in a form that parses to the same
//! value, so `check-config`'s output is itself a valid config.
//!
//! Byte sizes are parsed here rather than with the `bytesize` crate: its
//! serde form writes `"10.0 MiB"` (rounded to one decimal, so a value does
//! not survive `check-config`) and it reads fractions (`"1.5KiB"`) that
//! have no exact byte count. Ours reads whole numbers only and is written
//! back as the plain integer of bytes every existing config uses.

use std::fmt;
use std::time::Duration;

use http::HeaderName;
use humantime_serde::re::humantime;
use serde::{Deserialize, Serialize};

/// An optional header name: `""` turns the feature off, anything else must
/// be a valid header name, kept lower-cased (`X-Images-Saved` is written
/// back as `x-images-saved`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderField(Option<HeaderName>);

impl HeaderField {
    /// A header that is set; `name` must be a lower-case, valid header name
    /// (it is a literal: a bad one panics at once in every test).
    pub const fn from_static(name: &'static str) -> Self {
        Self(Some(HeaderName::from_static(name)))
    }

    /// No header: the feature is off.
    pub const fn off() -> Self {
        Self(None)
    }

    /// The header's name, `None` when off.
    pub fn name(&self) -> Option<&HeaderName> {
        self.0.as_ref()
    }

    /// True when no header is set.
    pub fn is_off(&self) -> bool {
        self.0.is_none()
    }

    /// The header as a [`RequiredHeader`], `None` when off.
    pub fn required(&self) -> Option<RequiredHeader> {
        self.0.clone().map(RequiredHeader)
    }
}

impl TryFrom<String> for HeaderField {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s.is_empty() {
            return Ok(Self::off());
        }
        RequiredHeader::try_from(s)
            .map(|h| Self(Some(h.0)))
            .map_err(|e| format!("{e}, or \"\" to turn it off"))
    }
}

impl From<HeaderField> for String {
    fn from(h: HeaderField) -> String {
        h.0.map(|n| n.as_str().to_owned()).unwrap_or_default()
    }
}

/// A header name that must be set: a valid header name, kept lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequiredHeader(HeaderName);

impl RequiredHeader {
    /// `name` must be a lower-case, valid header name (it is a literal: a
    /// bad one panics at once in every test).
    pub const fn from_static(name: &'static str) -> Self {
        Self(HeaderName::from_static(name))
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.0
    }
}

impl AsRef<str> for RequiredHeader {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<String> for RequiredHeader {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        HeaderName::from_bytes(s.as_bytes()).map(Self).map_err(|_| {
            format!("{s:?} is not a header name; write letters, digits and `-`, e.g. \"X-User-Id\"")
        })
    }
}

impl From<RequiredHeader> for String {
    fn from(h: RequiredHeader) -> String {
        h.0.as_str().to_owned()
    }
}

/// A duration longer than zero, written as humantime text (`"300ms"`,
/// `"2s"`, `"5m"`, `"1h 30m"`); `"0s"` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NonZeroDuration(Duration);

impl NonZeroDuration {
    /// `d`, or `None` when it is zero.
    pub const fn new(d: Duration) -> Option<Self> {
        if d.is_zero() { None } else { Some(Self(d)) }
    }

    /// `secs` seconds; `secs` must be above 0 (a literal: checked at
    /// compile time in a `const`, at once in every test otherwise).
    pub const fn from_secs(secs: u64) -> Self {
        assert!(secs > 0, "a NonZeroDuration of 0s");
        Self(Duration::from_secs(secs))
    }

    /// `ms` milliseconds; `ms` must be above 0.
    pub const fn from_millis(ms: u64) -> Self {
        assert!(ms > 0, "a NonZeroDuration of 0ms");
        Self(Duration::from_millis(ms))
    }

    /// The duration.
    pub const fn get(self) -> Duration {
        self.0
    }
}

impl From<NonZeroDuration> for Duration {
    fn from(d: NonZeroDuration) -> Duration {
        d.0
    }
}

impl TryFrom<String> for NonZeroDuration {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let d = humantime::parse_duration(&s).map_err(|e| {
            format!("{s:?} is not a duration ({e}); write e.g. \"300ms\", \"2s\" or \"5m\"")
        })?;
        Self::new(d).ok_or_else(|| format!("{s:?}: must be longer than 0s, e.g. \"1s\""))
    }
}

impl From<NonZeroDuration> for String {
    fn from(d: NonZeroDuration) -> String {
        humantime::format_duration(d.0).to_string()
    }
}

impl fmt::Display for NonZeroDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

/// A number of bytes: an integer (bytes) or a string of a whole number and
/// a unit, decimal (`"55MB"` = 55,000,000) or binary (`"10MiB"` =
/// 10,485,760): `B`, `kB`/`KB`, `MB`, `GB`, `TB`, `KiB`, `MiB`, `GiB`,
/// `TiB`, with or without a space. Written back as the integer.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(try_from = "BytesRepr", into = "u64")]
pub struct ByteSize(u64);

impl ByteSize {
    /// `bytes` bytes.
    pub const fn new(bytes: u64) -> Self {
        Self(bytes)
    }

    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl TryFrom<BytesRepr> for ByteSize {
    type Error = String;

    fn try_from(repr: BytesRepr) -> Result<Self, String> {
        match repr {
            BytesRepr::Integer(n) => u64::try_from(n)
                .map(Self)
                .map_err(|_| format!("{n} is negative; write a number of bytes, e.g. 1048576")),
            BytesRepr::Text(s) => parse_bytes(&s).map(Self),
        }
    }
}

/// A [`ByteSize`] above zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "BytesRepr", into = "u64")]
pub struct NonZeroByteSize(u64);

impl NonZeroByteSize {
    /// `bytes` bytes; `bytes` must be above 0 (a literal: checked at
    /// compile time in a `const`, at once in every test otherwise).
    pub const fn new(bytes: u64) -> Self {
        assert!(bytes > 0, "a NonZeroByteSize of 0");
        Self(bytes)
    }

    /// The number of bytes.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl From<NonZeroByteSize> for u64 {
    fn from(b: NonZeroByteSize) -> u64 {
        b.0
    }
}

impl fmt::Display for NonZeroByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl TryFrom<BytesRepr> for NonZeroByteSize {
    type Error = String;

    fn try_from(repr: BytesRepr) -> Result<Self, String> {
        match ByteSize::try_from(repr)?.0 {
            0 => Err("must be above 0 bytes, e.g. 1048576 or \"1MiB\"".to_owned()),
            n => Ok(Self(n)),
        }
    }
}

/// What a byte size is written as in the file.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a number of bytes or a string such as \"10MiB\""
)]
enum BytesRepr {
    Integer(i64),
    Text(String),
}

/// Units a byte size may carry, with their factors.
const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// `"55MB"`, `"10 MiB"`, `"512"` → bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let hint = "write a whole number and a unit: \"55MB\" (decimal) or \"10MiB\" (binary)";
    let text = s.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(format!("{s:?} is not a byte size; {hint}"));
    }
    let unit = unit.trim_start().to_ascii_lowercase();
    let factor = UNITS
        .iter()
        .find_map(|&(u, f)| (u == unit).then_some(f))
        .ok_or_else(|| {
            format!(
                "{s:?}: unknown unit {unit:?}; use B, kB, MB, GB, TB (powers of 1000) or KiB, \
                 MiB, GiB, TiB (powers of 1024)"
            )
        })?;
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{s:?} is too large a byte size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Doc {
        #[serde(default)]
        header: Option<HeaderField>,
        #[serde(default)]
        required: Option<RequiredHeader>,
        #[serde(default)]
        wait: Option<NonZeroDuration>,
        #[serde(default)]
        size: Option<ByteSize>,
        #[serde(default)]
        nonzero: Option<NonZeroByteSize>,
    }

    fn parse(line: &str) -> Result<Doc, String> {
        toml::from_str(line).map_err(|e| e.to_string())
    }

    /// `line` parses, and so does its rendering, to the same value.
    fn round_trip(line: &str) -> Doc {
        let doc = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let again = toml::to_string(&doc).expect("render");
        assert_eq!(parse(&again).expect("reparse"), doc, "{line} → {again}");
        doc
    }

    #[test]
    fn byte_sizes() {
        for (input, bytes) in [
            ("0", 0),
            ("1048576", 1_048_576),
            ("\"512\"", 512),
            ("\"512B\"", 512),
            ("\"55MB\"", 55_000_000),
            ("\"55 MB\"", 55_000_000),
            ("\"1kB\"", 1_000),
            ("\"1KB\"", 1_000),
            ("\"512KiB\"", 524_288),
            ("\"10MiB\"", 10_485_760),
            ("\"10mib\"", 10_485_760),
            ("\"1GB\"", 1_000_000_000),
            ("\"1GiB\"", 1_073_741_824),
            ("\"2TiB\"", 2 << 40),
        ] {
            let doc = round_trip(&format!("size = {input}"));
            assert_eq!(doc.size, Some(ByteSize::new(bytes)), "{input}");
        }
        for (input, error) in [
            ("-1", "-1 is negative"),
            ("\"1.5MB\"", "unknown unit \".5mb\""),
            ("\"MB\"", "\"MB\" is not a byte size"),
            ("\"10 furlongs\"", "unknown unit \"furlongs\""),
            ("\"20000000TiB\"", "too large"),
            ("true", "a number of bytes or a string such as \"10MiB\""),
        ] {
            let e = parse(&format!("size = {input}")).expect_err(input);
            assert!(e.contains(error), "{input}: {e}");
            assert!(e.contains("size ="), "the line with the key is shown: {e}");
        }
        assert_eq!(
            round_trip("nonzero = \"1MiB\"").nonzero,
            Some(NonZeroByteSize::new(1 << 20))
        );
        for input in ["0", "\"0MB\""] {
            let e = parse(&format!("nonzero = {input}")).expect_err(input);
            assert!(e.contains("must be above 0 bytes"), "{input}: {e}");
        }
    }

    #[test]
    fn durations() {
        for (input, d) in [
            ("\"300ms\"", Duration::from_millis(300)),
            ("\"2s\"", Duration::from_secs(2)),
            ("\"5m\"", Duration::from_secs(300)),
            ("\"1h 30m\"", Duration::from_secs(5400)),
        ] {
            let doc = round_trip(&format!("wait = {input}"));
            assert_eq!(doc.wait.map(NonZeroDuration::get), Some(d), "{input}");
        }
        for (input, error) in [
            ("\"0s\"", "\"0s\": must be longer than 0s"),
            ("\"0ms\"", "must be longer than 0s"),
            ("\"soon\"", "\"soon\" is not a duration"),
            ("\"5\"", "is not a duration"),
        ] {
            let e = parse(&format!("wait = {input}")).expect_err(input);
            assert!(e.contains(error), "{input}: {e}");
        }
    }

    #[test]
    fn header_names() {
        let doc = round_trip("header = \"X-Images-Saved\"");
        assert_eq!(
            doc.header.as_ref().and_then(HeaderField::name),
            Some(&HeaderName::from_static("x-images-saved"))
        );
        assert!(round_trip("header = \"\"").header.expect("set").is_off());
        assert_eq!(
            round_trip("required = \"X-User-Id\"").required,
            Some(RequiredHeader::from_static("x-user-id"))
        );
        for (input, error) in [
            ("header = \"X Images\"", "\"X Images\" is not a header name"),
            ("header = \"é\"", "or \"\" to turn it off"),
            ("required = \"\"", "\"\" is not a header name"),
            ("required = \"a:b\"", "\"a:b\" is not a header name"),
        ] {
            let e = parse(input).expect_err(input);
            assert!(e.contains(error), "{input}: {e}");
        }
    }
}
