//! JSON bodies (phase: classify), read exactly as Python's `json` reads them:
//! the flag is a top-level key of an object, and the last of duplicate keys
//! wins (`dict(pairs)`).
//!
//! Two readers, one scanner:
//!
//! - [`Decoding::Loads`]: `json.loads(request.body)` on bytes (CPython
//!   `Lib/json/__init__.py`): the encoding is guessed by `detect_encoding`
//!   (UTF-32/UTF-16/UTF-8 byte-order marks, then the NUL pattern of the first
//!   four bytes), the bytes are decoded with `errors="surrogatepass"`
//!   (UTF-8-encoded surrogates pass), and `NaN`, `Infinity`, `-Infinity` are
//!   numbers.
//! - [`Decoding::Drf`]: REST framework's `JSONParser` (`rest_framework/
//!   parsers.py`): `codecs.getreader("utf-8")` then `json.load` with
//!   `parse_constant=strict_constant`: strict UTF-8, except that an
//!   incomplete sequence at the very end is dropped (the stream reader keeps
//!   it for a next read that never comes); a byte-order mark is an error
//!   ("Unexpected UTF-8 BOM"); `NaN`, `Infinity` are errors.
//!
//! The grammar is that of CPython's C scanner (`Modules/_json.c`):
//! whitespace is ` \t\n\r`; numbers `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`
//! with ASCII digits, parsed by `int()` / `float()` (so `1e400` is `inf`,
//! `1e-400` is `0.0`); strings reject raw code points below U+0020, accept
//! the eight short escapes and `\uXXXX` (a high and a low surrogate escape
//! join; a lone one stays), and nothing else. The body is walked once, in
//! place; only the flag's value is decoded, up to a cap.
//!
//! Not sure, so [`JsonError::Unsure`] (counted as flagged): nesting deeper
//! than [`MAX_DEPTH`] (Python raises `RecursionError` at a depth that depends
//! on its version and stack). Integers of more than 4,300 digits are read as
//! numbers, although Python 3.11+ raises on them: that errs towards counting.

mod decode;

use super::truth::FlagValue;
use decode::decode;

/// Nesting deeper than this is not judged (Python's own limit depends on the
/// interpreter's version and the depth of the stack it parses from; every
/// version parses this deep).
pub(super) const MAX_DEPTH: usize = 400;

/// How the body's bytes become text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decoding {
    /// `json.loads(bytes)`.
    Loads,
    /// REST framework's `JSONParser` with the UTF-8 charset.
    Drf,
}

/// Why a body is not judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum JsonError {
    /// Python raises: the backend answers an error.
    Invalid(String),
    /// Python may or may not raise (see the module docs).
    Unsure(String),
}

/// What the top level of a JSON document is.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum TopLevel {
    /// An object; the flag's last value, if present.
    Object(Option<Owned>),
    /// Anything else (an array, a string, a number, `null`…).
    Other,
}

/// A flag value taken out of the body.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Owned {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number, as Python's `int()` / `float()` makes it (compared only with
    /// 0 and 1, which no rounding reaches).
    Number(f64),
    /// A string, decoded.
    Str(String),
    /// A non-empty string that equals no rule's string: longer than the cap,
    /// or holding a lone surrogate.
    OtherText,
    /// An array or object.
    Container {
        /// It has no element.
        empty: bool,
    },
}

impl Owned {
    /// The value as the rules take it.
    pub(super) fn as_value(&self) -> FlagValue<'_> {
        match self {
            Owned::Null => FlagValue::Null,
            Owned::Bool(b) => FlagValue::Bool(*b),
            Owned::Number(n) => FlagValue::Number(*n),
            Owned::Str(s) => FlagValue::Str(s),
            Owned::OtherText => FlagValue::OtherText,
            Owned::Container { empty } => FlagValue::Container { empty: *empty },
        }
    }
}

/// Parses `body` as Python would and returns its top level, with the flag's
/// last value when it is an object. `cap` bounds the decoded flag string
/// kept (longer ones are [`Owned::OtherText`]).
pub(super) fn parse(
    body: &[u8],
    decoding: Decoding,
    flag: &str,
    cap: usize,
) -> Result<TopLevel, JsonError> {
    let text = decode(body, decoding)?;
    let mut scanner = Scanner {
        s: &text,
        i: 0,
        constants: decoding == Decoding::Loads,
        flag,
        cap,
    };
    scanner.skip_ws();
    let top = if scanner.peek() == Some(b'{') {
        scanner.i += 1;
        TopLevel::Object(scanner.object_body(1, true)?.0)
    } else {
        scanner.value(0, false)?;
        TopLevel::Other
    };
    scanner.skip_ws();
    if scanner.i != scanner.s.len() {
        return Err(invalid("Extra data", scanner.i));
    }
    Ok(top)
}

fn invalid(what: &str, at: usize) -> JsonError {
    JsonError::Invalid(format!("invalid JSON: {what} at byte {at}"))
}

/// A decoded string being collected: the flag's value or a key compared
/// with the flag.
struct Collected {
    text: String,
    cap: usize,
    /// Longer than `cap`, or holding a lone surrogate: equals nothing.
    other: bool,
    empty: bool,
}

impl Collected {
    fn new(cap: usize) -> Self {
        Self {
            text: String::new(),
            cap,
            other: false,
            empty: true,
        }
    }

    fn push(&mut self, c: u32) {
        self.empty = false;
        if self.other {
            return;
        }
        match char::from_u32(c) {
            Some(c) if self.text.len() + c.len_utf8() <= self.cap => self.text.push(c),
            _ => {
                self.other = true;
                self.text = String::new();
            }
        }
    }
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
    /// `NaN`, `Infinity`, `-Infinity` are numbers (else an error).
    constants: bool,
    flag: &'a str,
    cap: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, literal: &[u8]) -> bool {
        if self.s[self.i..].starts_with(literal) {
            self.i += literal.len();
            true
        } else {
            false
        }
    }

    /// One value at `self.i` (no leading whitespace, as in `scan_once`);
    /// kept only when `keep`.
    fn value(&mut self, depth: usize, keep: bool) -> Result<Option<Owned>, JsonError> {
        let start = self.i;
        let Some(c) = self.peek() else {
            return Err(invalid("Expecting value", start));
        };
        let owned = match c {
            b'"' => {
                self.i += 1;
                let mut collected = Collected::new(if keep { self.cap } else { 0 });
                self.string(keep.then_some(&mut collected))?;
                if collected.empty {
                    Owned::Str(String::new())
                } else if collected.other {
                    Owned::OtherText
                } else {
                    Owned::Str(collected.text)
                }
            }
            b'{' => {
                self.i += 1;
                let empty = self.container_body(depth + 1, b'}')?;
                Owned::Container { empty }
            }
            b'[' => {
                self.i += 1;
                let empty = self.container_body(depth + 1, b']')?;
                Owned::Container { empty }
            }
            b'n' if self.eat(b"null") => Owned::Null,
            b't' if self.eat(b"true") => Owned::Bool(true),
            b'f' if self.eat(b"false") => Owned::Bool(false),
            b'N' if self.eat(b"NaN") => self.constant(start, f64::NAN)?,
            b'I' if self.eat(b"Infinity") => self.constant(start, f64::INFINITY)?,
            b'-' if self.eat(b"-Infinity") => self.constant(start, f64::NEG_INFINITY)?,
            _ => self.number()?,
        };
        Ok(keep.then_some(owned))
    }

    fn constant(&self, start: usize, n: f64) -> Result<Owned, JsonError> {
        if self.constants {
            Ok(Owned::Number(n))
        } else {
            Err(invalid(
                "Out of range float values are not JSON compliant",
                start,
            ))
        }
    }

    /// `_match_number_unicode`: the longest number at `self.i`.
    fn number(&mut self) -> Result<Owned, JsonError> {
        let start = self.i;
        let digit = |s: &Self, i: usize| s.s.get(i).is_some_and(u8::is_ascii_digit);
        let mut i = self.i;
        if self.s.get(i) == Some(&b'-') {
            i += 1;
        }
        match self.s.get(i) {
            Some(b'1'..=b'9') => {
                i += 1;
                while digit(self, i) {
                    i += 1;
                }
            }
            Some(b'0') => i += 1,
            _ => return Err(invalid("Expecting value", start)),
        }
        if self.s.get(i) == Some(&b'.') && digit(self, i + 1) {
            i += 2;
            while digit(self, i) {
                i += 1;
            }
        }
        if matches!(self.s.get(i), Some(b'e' | b'E')) {
            let mut j = i + 1;
            if matches!(self.s.get(j), Some(b'-' | b'+')) {
                j += 1;
            }
            if digit(self, j) {
                while digit(self, j) {
                    j += 1;
                }
                i = j;
            }
        }
        self.i = i;
        // ASCII by construction; Rust's parse rounds correctly, as `float()`.
        let literal = std::str::from_utf8(&self.s[start..i]).unwrap_or("0");
        Ok(Owned::Number(literal.parse::<f64>().unwrap_or(f64::NAN)))
    }

    /// After `{` or `[`: the rest of a container, skipped. True if empty.
    fn container_body(&mut self, depth: usize, close: u8) -> Result<bool, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::Unsure(format!(
                "JSON nested deeper than {MAX_DEPTH} levels"
            )));
        }
        if close == b'}' {
            return Ok(self.object_body(depth, false)?.1);
        }
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(true);
        }
        loop {
            self.value(depth, false)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(false);
                }
                _ => return Err(invalid("Expecting ',' delimiter", self.i)),
            }
        }
    }

    /// After `{`: the members, with the flag's last value when `top`, and
    /// whether there were none.
    fn object_body(&mut self, depth: usize, top: bool) -> Result<(Option<Owned>, bool), JsonError> {
        let mut found = None;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok((None, true));
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(invalid(
                    "Expecting property name enclosed in double quotes",
                    self.i,
                ));
            }
            self.i += 1;
            let is_flag = if top {
                self.top_key_is_flag()?
            } else {
                self.string(None)?;
                false
            };
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(invalid("Expecting ':' delimiter", self.i));
            }
            self.i += 1;
            self.skip_ws();
            let value = self.value(depth, is_flag)?;
            if is_flag {
                found = value;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok((found, false));
                }
                _ => return Err(invalid("Expecting ',' delimiter", self.i)),
            }
        }
    }

    /// After a top-level key's `"`: the rest of the key, and whether it is
    /// the flag's name. A key without escapes is its own text (generalized
    /// UTF-8 decodes to itself), so it is compared where it lies, without
    /// collecting it.
    fn top_key_is_flag(&mut self) -> Result<bool, JsonError> {
        let rest = &self.s[self.i..];
        if let Some(end) = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            && rest[end] == b'"'
        {
            self.i += end + 1;
            return Ok(&rest[..end] == self.flag.as_bytes());
        }
        let mut key = Collected::new(self.flag.len());
        self.string(Some(&mut key))?;
        Ok(!key.other && key.text == self.flag)
    }

    /// After `"`: the rest of a string, decoded into `out` if given.
    fn string(&mut self, mut out: Option<&mut Collected>) -> Result<(), JsonError> {
        loop {
            if out.is_none() {
                // Not collected: only where the string ends matters, so the
                // plain run is skipped whole (no byte of a multi-byte
                // sequence is `"`, `\` or a control character).
                let rest = &self.s[self.i..];
                self.i += rest
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                    .unwrap_or(rest.len());
            }
            let Some(c) = self.peek() else {
                return Err(invalid("Unterminated string", self.i));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(());
                }
                b'\\' => {
                    let code = self.escape()?;
                    if let Some(out) = out.as_deref_mut() {
                        out.push(code);
                    }
                }
                0..=0x1f => return Err(invalid("Invalid control character", self.i)),
                0x20..=0x7f => {
                    self.i += 1;
                    if let Some(out) = out.as_deref_mut() {
                        out.push(u32::from(c));
                    }
                }
                _ => {
                    // Generalized UTF-8, already checked.
                    let (len, init) = match c {
                        0xc0..=0xdf => (2, u32::from(c & 0x1f)),
                        0xe0..=0xef => (3, u32::from(c & 0x0f)),
                        _ => (4, u32::from(c & 0x07)),
                    };
                    let end = (self.i + len).min(self.s.len());
                    let code = self.s[self.i + 1..end]
                        .iter()
                        .fold(init, |acc, b| (acc << 6) | u32::from(b & 0x3f));
                    self.i = end;
                    if let Some(out) = out.as_deref_mut() {
                        out.push(code);
                    }
                }
            }
        }
    }

    /// At `\`: one escape, as a code point.
    fn escape(&mut self) -> Result<u32, JsonError> {
        let at = self.i;
        let Some(&c) = self.s.get(self.i + 1) else {
            return Err(invalid("Unterminated string", at));
        };
        self.i += 2;
        Ok(match c {
            b'"' => 0x22,
            b'\\' => 0x5c,
            b'/' => 0x2f,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => 0x0a,
            b'r' => 0x0d,
            b't' => 0x09,
            b'u' => {
                let high = self.hex4(at)?;
                if (0xd800..0xdc00).contains(&high) && self.s[self.i..].starts_with(b"\\u") {
                    let save = self.i;
                    self.i += 2;
                    let low = self.hex4(at)?;
                    if (0xdc00..0xe000).contains(&low) {
                        return Ok(0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00));
                    }
                    self.i = save;
                }
                high
            }
            _ => return Err(invalid("Invalid \\escape", at)),
        })
    }

    fn hex4(&mut self, at: usize) -> Result<u32, JsonError> {
        let digits = self
            .s
            .get(self.i..self.i + 4)
            .ok_or_else(|| invalid("Invalid \\uXXXX escape", at))?;
        let mut n = 0;
        for &d in digits {
            let v = (d as char)
                .to_digit(16)
                .ok_or_else(|| invalid("Invalid \\uXXXX escape", at))?;
            n = (n << 4) | v;
        }
        self.i += 4;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
