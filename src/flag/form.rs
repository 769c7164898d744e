//! `application/x-www-form-urlencoded` pairs (phase: classify): urlencoded
//! bodies and query strings, read as Django's `QueryDict` reads them
//! (`django/http/request.py` `QueryDict.__init__` → CPython
//! `urllib.parse.parse_qsl(keep_blank_values=True)`): `&` between pairs
//! (never `;`), empty pairs skipped, the first `=` between name and value, a
//! pair without `=` has the value `""`, `+` is a space, `%XX` is decoded
//! and the bytes read as UTF-8 with `errors="replace"`; `QueryDict.get` and
//! `dictionary[name]` give the last value.
//!
//! One difference, which no preset's strings can see: when the body is not
//! UTF-8 Django decodes it as Latin-1 first, so a raw non-ASCII byte becomes
//! a Latin-1 character where this module puts U+FFFD. Neither is ASCII, and
//! an empty value stays empty, so the verdict is the same.
//!
//! Pairs are split here so that only names are decoded; a value is decoded
//! only when its name is the flag's, and not at all when it is too long to
//! matter (see [`super::truth::value_cap`]).

use std::borrow::Cow;

/// The last value of the pair named `flag`, `None` if there is none.
pub(super) fn last_value(input: &[u8], flag: &str, cap: usize) -> Option<FieldValue> {
    let mut last = None;
    let mut start = 0;
    for end in memchr::memchr_iter(b'&', input).chain(std::iter::once(input.len())) {
        let pair = &input[start..end];
        start = end + 1;
        let raw_name = match memchr::memchr(b'=', pair) {
            Some(eq) => &pair[..eq],
            None => pair,
        };
        if pair.is_empty() || decode_name(raw_name) != flag {
            continue;
        }
        let raw_value_len = pair.len() - raw_name.len();
        // Decoding shrinks a value at most threefold (`%XX` → one byte), so a
        // raw value over three caps decodes to more than one: no need to.
        last = Some(if raw_value_len > cap.saturating_mul(3) {
            FieldValue::Long
        } else {
            let value = form_urlencoded::parse(pair)
                .next()
                .map(|(_, value)| value)
                .unwrap_or_default();
            if value.len() > cap {
                FieldValue::Long
            } else {
                FieldValue::Text(value.into_owned())
            }
        });
    }
    last
}

/// A form or multipart field's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FieldValue {
    /// Decoded.
    Text(String),
    /// Longer than the cap: non-empty, equal to no listed string.
    Long,
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

    fn text(s: &str) -> Option<FieldValue> {
        Some(FieldValue::Text(s.to_owned()))
    }

    #[test]
    fn names_and_values_are_decoded_last_wins() {
        let f = "generate_image";
        assert_eq!(
            last_value(b"generate%5Fimage=a+b%26c", f, 100),
            text("a b&c")
        );
        assert_eq!(
            last_value(b"x=1&&generate_image=1&generate_image=a%20b%26c&", f, 100),
            text("a b&c")
        );
        assert_eq!(last_value(b"my+flag=on", "my flag", 100), text("on"));
        assert_eq!(last_value(b"generate_image", f, 100), text(""));
        assert_eq!(last_value(b"generate_image=%3D", f, 100), text("="));
        // `;` is not a separator (Python 3.9.2+).
        assert_eq!(last_value(b"a=1;generate_image=true", f, 100), None);
        assert_eq!(last_value(b"generate_image=%zz", f, 100), text("%zz"));
        assert_eq!(last_value(b"generate_image=%74rue", f, 100), text("true"));
    }

    #[test]
    fn long_values_are_not_decoded() {
        let long = format!("generate_image={}", "%74".repeat(101));
        assert_eq!(
            last_value(long.as_bytes(), "generate_image", 100),
            Some(FieldValue::Long)
        );
    }

    #[test]
    fn values_longer_than_the_cap_are_long() {
        let f = "generate_image";
        let pair = |value: &str| format!("{f}={value}");
        // Decoded, at most `cap` bytes is kept, one more is not.
        let x = "x".repeat(100);
        assert_eq!(last_value(pair(&x).as_bytes(), f, 100), text(&x));
        let x = "x".repeat(101);
        assert_eq!(
            last_value(pair(&x).as_bytes(), f, 100),
            Some(FieldValue::Long)
        );
        // Escapes shrink in decoding: 297 raw bytes make 99.
        let escaped = "%74".repeat(99);
        assert_eq!(
            last_value(pair(&escaped).as_bytes(), f, 100),
            text(&"t".repeat(99))
        );
    }
}
