//! The value rules (phase: classify): does one parsed flag value mean
//! "true" under a [`FlagRule`]? Each rule mirrors what the backend does with
//! the value it reads, so the proxy counts exactly the requests the backend
//! will treat as asking for an image.

use crate::config::{FlagRule, FlagRuleName};

/// Plain form values longer than this (in bytes) are not buffered: no DRF
/// true value comes near it, so such a value is judged by [`FlagValue::LongText`]
/// (its being non-empty) instead of its content.
const MAX_VALUE_LEN: usize = 64 * 1024;

/// Django REST framework's `BooleanField.TRUE_VALUES`, its strings. The
/// non-string members (`1`, `True`) are handled as JSON values.
const DRF_TRUE_STRINGS: [&str; 14] = [
    "t", "T", "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "1",
];

/// One flag value as the body or the query string gave it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum FlagValue<'a> {
    /// JSON `null`.
    Null,
    /// JSON `true` / `false`.
    Bool(bool),
    /// A JSON number. Python compares `1 == 1.0`, and no integer that rounds
    /// in an `f64` comes near 0 or 1, so one `f64` judges every number.
    Number(f64),
    /// A string: a JSON string, or a decoded form or query value.
    Str(&'a str),
    /// A JSON array or object, reduced to what the rules look at.
    Container {
        /// It has no element.
        empty: bool,
    },
    /// A form value longer than [`value_cap`], left unread: non-empty, and
    /// longer than any string a rule can match.
    LongText,
}

/// Whether `value` means "true" under `rule`.
pub(super) fn is_true(rule: &FlagRule, value: FlagValue<'_>) -> bool {
    match rule {
        FlagRule::Named(FlagRuleName::Drf) => match value {
            FlagValue::Bool(b) => b,
            FlagValue::Number(n) => n == 1.0,
            FlagValue::Str(s) => DRF_TRUE_STRINGS.contains(&s),
            FlagValue::Null | FlagValue::Container { .. } | FlagValue::LongText => false,
        },
        FlagRule::Named(FlagRuleName::Python) => match value {
            FlagValue::Null => false,
            FlagValue::Bool(b) => b,
            FlagValue::Number(n) => n != 0.0,
            FlagValue::Str(s) => !s.is_empty(),
            FlagValue::Container { empty } => !empty,
            FlagValue::LongText => true,
        },
        FlagRule::Exact(strings) => match value {
            FlagValue::Str(s) => strings.iter().any(|t| t == s),
            // A JSON non-string never equals a string (`True == "True"` is
            // false in Python), and a long text is longer than every listed
            // string (see `value_cap`).
            FlagValue::Null
            | FlagValue::Bool(_)
            | FlagValue::Number(_)
            | FlagValue::Container { .. }
            | FlagValue::LongText => false,
        },
    }
}

/// The longest form value (decoded, in bytes) worth reading under `rule`:
/// 64 KiB, or the longest string of an exact list if that is longer, so
/// [`FlagValue::LongText`] never hides a match.
pub(super) fn value_cap(rule: &FlagRule) -> usize {
    match rule {
        FlagRule::Exact(strings) => strings
            .iter()
            .map(String::len)
            .fold(MAX_VALUE_LEN, usize::max),
        FlagRule::Named(_) => MAX_VALUE_LEN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drf_accepts_exactly_its_true_values() {
        // Every string is checked end to end in `flag::tests`; here the
        // near misses and the non-strings.
        let rule = FlagRule::DRF;
        assert!(is_true(&rule, FlagValue::Str("True")));
        for s in [
            "", "false", "tRuE", " true", "true ", "yES", "2", "1.0", "oN",
        ] {
            assert!(!is_true(&rule, FlagValue::Str(s)), "{s:?}");
        }
        assert!(is_true(&rule, FlagValue::Bool(true)));
        assert!(is_true(&rule, FlagValue::Number(1.0)));
        for v in [
            FlagValue::Bool(false),
            FlagValue::Number(0.0),
            FlagValue::Number(2.0),
            FlagValue::Null,
            FlagValue::Container { empty: false },
            FlagValue::LongText,
        ] {
            assert!(!is_true(&rule, v), "{v:?}");
        }
    }

    #[test]
    fn python_is_truthiness() {
        let rule = FlagRule::PYTHON;
        for v in [
            FlagValue::Str("false"),
            FlagValue::Str("0"),
            FlagValue::Bool(true),
            FlagValue::Number(-1.0),
            FlagValue::Number(0.5),
            FlagValue::Container { empty: false },
            FlagValue::LongText,
        ] {
            assert!(is_true(&rule, v), "{v:?}");
        }
        for v in [
            FlagValue::Str(""),
            FlagValue::Null,
            FlagValue::Bool(false),
            FlagValue::Number(0.0),
            FlagValue::Number(-0.0),
            FlagValue::Container { empty: true },
        ] {
            assert!(!is_true(&rule, v), "{v:?}");
        }
    }

    #[test]
    fn exact_matches_listed_strings_only() {
        let rule = FlagRule::Exact(vec!["true".to_owned(), "oui".to_owned()]);
        assert!(is_true(&rule, FlagValue::Str("true")));
        assert!(is_true(&rule, FlagValue::Str("oui")));
        for v in [
            FlagValue::Str("True"),
            FlagValue::Str("1"),
            FlagValue::Bool(true),
            FlagValue::Number(1.0),
            FlagValue::LongText,
        ] {
            assert!(!is_true(&rule, v), "{v:?}");
        }
    }

    #[test]
    fn cap_covers_the_longest_exact_string() {
        assert_eq!(value_cap(&FlagRule::DRF), MAX_VALUE_LEN);
        let long = "x".repeat(MAX_VALUE_LEN + 10);
        assert_eq!(value_cap(&FlagRule::Exact(vec![long])), MAX_VALUE_LEN + 10);
    }
}
