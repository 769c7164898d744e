//! The value rules (phase: classify): what one parsed flag value means to
//! the backend. Each rule is the backend's own code, pinned by the value
//! tables in `flag::tests`:
//!
//! - [`Rule::Drf`]: REST framework's `BooleanField.to_internal_value`
//!   (`rest_framework/fields.py`, 3.15+): a string is lowercased, then
//!   `TRUE_VALUES = {'t', 'y', 'yes', 'true', 'on', '1', 1, True}` and
//!   `FALSE_VALUES = {'f', 'n', 'no', 'false', 'off', '0', 0, 0.0, False}`
//!   (so `1.0` is true, as `1.0 == 1` in Python); anything else, `null`
//!   included, is a validation error (400). Python's `str.lower` maps no
//!   non-ASCII character onto these letters, so an ASCII case-insensitive
//!   match is exact.
//! - [`Rule::Python`]: Python truthiness of the parsed value (`"false"` and
//!   `"0"` are true, `0`, `0.0`, `""`, `[]`, `{}`, `null` false, `NaN` true).
//! - [`Rule::Strings`]: the value is one of these strings (a JSON
//!   non-string never is: `True == "true"` is false in Python), compared as
//!   they are or, with `ignore_case`, lowercased (Rust's Unicode
//!   `to_lowercase`; Python's `str.lower` agrees on every ASCII string).

/// Plain form values longer than this (in bytes) are not buffered: they are
/// judged by [`FlagValue::OtherText`] (non-empty, equal to no listed string).
const MAX_VALUE_LEN: usize = 64 * 1024;

/// How one value is judged.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rule<'a> {
    /// REST framework's `BooleanField`.
    Drf,
    /// Python truthiness.
    Python,
    /// One of these strings (a table's list).
    Strings {
        /// The strings that mean true.
        strings: &'a [String],
        /// Compare lowercased.
        ignore_case: bool,
    },
    /// One of these strings (a preset's).
    Words {
        /// The strings that mean true.
        words: &'static [&'static str],
        /// Compare lowercased.
        ignore_case: bool,
    },
}

/// Whether `s` is one of `list`.
fn one_of<'s>(mut list: impl Iterator<Item = &'s str>, s: &str, ignore_case: bool) -> bool {
    list.any(|t| {
        if ignore_case {
            t.eq_ignore_ascii_case(s)
                || (!(t.is_ascii() && s.is_ascii()) && t.to_lowercase() == s.to_lowercase())
        } else {
            t == s
        }
    })
}

/// What a value means under a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Truth {
    /// Asks for an image.
    True,
    /// Does not.
    False,
    /// The backend refuses the value (`BooleanField`'s 400).
    Invalid,
}

impl From<bool> for Truth {
    fn from(b: bool) -> Self {
        if b { Truth::True } else { Truth::False }
    }
}

/// One flag value as the body or the query string gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum FlagValue<'a> {
    /// JSON `null`.
    Null,
    /// JSON `true` / `false`.
    Bool(bool),
    /// A JSON number, as Python's `int()` / `float()` make it; only its
    /// being 0 or 1 matters, which no rounding reaches.
    Number(f64),
    /// A string: a JSON string, or a decoded form or multipart value.
    Str(&'a str),
    /// A non-empty string that equals no listed string: longer than
    /// [`value_cap`], or holding a lone surrogate.
    OtherText,
    /// A JSON array or object.
    Container {
        /// It has no element.
        empty: bool,
    },
}

const DRF_TRUE: [&str; 6] = ["t", "y", "yes", "true", "on", "1"];
const DRF_FALSE: [&str; 6] = ["f", "n", "no", "false", "off", "0"];

/// What `value` means under `rule`.
pub(super) fn judge(rule: Rule<'_>, value: FlagValue<'_>) -> Truth {
    match rule {
        Rule::Drf => match value {
            FlagValue::Bool(b) => b.into(),
            // `-0.0 == 0.0`, as in Python.
            FlagValue::Number(n) => {
                if n == 1.0 {
                    Truth::True
                } else if n == 0.0 {
                    Truth::False
                } else {
                    Truth::Invalid
                }
            }
            FlagValue::Str(s) if DRF_TRUE.iter().any(|t| t.eq_ignore_ascii_case(s)) => Truth::True,
            FlagValue::Str(s) if DRF_FALSE.iter().any(|t| t.eq_ignore_ascii_case(s)) => {
                Truth::False
            }
            _ => Truth::Invalid,
        },
        Rule::Python => match value {
            FlagValue::Null => Truth::False,
            FlagValue::Bool(b) => b.into(),
            // NaN is truthy: `NaN != 0.0`.
            FlagValue::Number(n) => (n != 0.0).into(),
            FlagValue::Str(s) => (!s.is_empty()).into(),
            FlagValue::OtherText => Truth::True,
            FlagValue::Container { empty } => (!empty).into(),
        },
        Rule::Strings { .. } | Rule::Words { .. } => match value {
            FlagValue::Str(s) => match rule {
                Rule::Strings {
                    strings,
                    ignore_case,
                } => one_of(strings.iter().map(String::as_str), s, ignore_case),
                Rule::Words { words, ignore_case } => one_of(words.iter().copied(), s, ignore_case),
                Rule::Drf | Rule::Python => false,
            }
            .into(),
            FlagValue::Null
            | FlagValue::Bool(_)
            | FlagValue::Number(_)
            | FlagValue::OtherText
            | FlagValue::Container { .. } => Truth::False,
        },
    }
}

/// The longest value (decoded, in bytes) worth keeping under `rule`: 64 KiB,
/// or four times the longest listed string if that is longer (lowercasing
/// can grow a string), so [`FlagValue::OtherText`] never hides a match.
pub(super) fn value_cap(rule: Rule<'_>) -> usize {
    match rule {
        Rule::Strings { strings, .. } => strings
            .iter()
            .map(|s| s.len().saturating_mul(4))
            .fold(MAX_VALUE_LEN, usize::max),
        Rule::Words { .. } | Rule::Drf | Rule::Python => MAX_VALUE_LEN,
    }
}
