//! `application/x-www-form-urlencoded` pairs (phase: classify): urlencoded
//! bodies and query strings, read as Django's `QueryDict.get` reads them.
//!
//! The last pair with the flag's name decides. Pairs are split here so that
//! only names are decoded; a value is decoded only when its name is the
//! flag's, and not at all when it is too long to matter (see
//! [`truth::value_cap`]). Splitting follows `form_urlencoded::parse` (and
//! Django): `&` between pairs, the first `=` between name and value, empty
//! pairs skipped, a pair without `=` has the value `""`.

use std::borrow::Cow;

use super::truth::{self, FlagValue};
use crate::config::FlagRule;

/// Whether the last `flag` pair in `input` is true under `rule`; false when
/// there is none. Decoding is lossy (as Django's `errors="replace"`), so
/// nothing here is unreadable.
pub(super) fn judge(input: &[u8], flag: &str, rule: &FlagRule) -> bool {
    let cap = truth::value_cap(rule);
    let mut verdict = false;
    let mut start = 0;
    for end in memchr::memchr_iter(b'&', input).chain(std::iter::once(input.len())) {
        let pair = &input[start..end];
        start = end + 1;
        let (raw_name, raw_value) = match memchr::memchr(b'=', pair) {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        if pair.is_empty() || decode_name(raw_name) != flag {
            continue;
        }
        // Decoding shrinks a value at most threefold (`%XX` → one byte), so a
        // raw value over three caps decodes to more than one: no need to.
        verdict = if raw_value.len() > cap.saturating_mul(3) {
            truth::is_true(rule, FlagValue::LongText)
        } else {
            let value = form_urlencoded::parse(pair)
                .next()
                .map(|(_, value)| value)
                .unwrap_or_default();
            truth::is_true(rule, FlagValue::Str(&value))
        };
    }
    verdict
}

/// Decodes a pair's name (`+` and `%XX`); it borrows when there is nothing
/// to decode.
fn decode_name(raw: &[u8]) -> Cow<'_, str> {
    // `raw` holds no `&` or `=`, so it parses as one pair whose name is `raw`
    // decoded: the crate's own decoding, without a copy of its code here.
    form_urlencoded::parse(raw)
        .next()
        .map(|(name, _)| name)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_decoded() {
        let rule = FlagRule::Exact(vec!["a b&c".to_owned()]);
        assert!(judge(b"generate%5Fimage=a+b%26c", "generate_image", &rule));
        assert!(judge(
            b"x=1&&generate_image=a%20b%26c&",
            "generate_image",
            &rule
        ));
        assert!(!judge(b"generate_image=a+b", "generate_image", &rule));
        // `+` in a name is a space.
        assert!(judge(b"my+flag=a+b%26c", "my flag", &rule));
    }

    #[test]
    fn a_pair_without_equals_is_empty() {
        assert!(!judge(
            b"generate_image",
            "generate_image",
            &FlagRule::PYTHON
        ));
        assert!(judge(
            b"generate_image=%3D",
            "generate_image",
            &FlagRule::PYTHON
        ));
    }

    #[test]
    fn long_values_are_judged_unread() {
        let long = format!("generate_image={}", "%74".repeat(64 * 1024 + 1));
        assert!(judge(long.as_bytes(), "generate_image", &FlagRule::PYTHON));
        assert!(!judge(long.as_bytes(), "generate_image", &FlagRule::DRF));
    }
}
