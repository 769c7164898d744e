//! User ids in canonical form (phase: identify).
//!
//! `identity.user_id_format` says what a user id is. Counters, cache keys
//! and logs use the canonical form, so every spelling of one id is one
//! user; an id that is not in the format is anonymous (`identity.anonymous`
//! decides what its flagged requests get).
//!
//! | format | accepted (as Python reads it) | canonical |
//! |---|---|---|
//! | `string` | any non-empty text | as it is |
//! | `integer` | `int(text)`: surrounding whitespace, one `+` or `-`, ASCII digits with single `_` between them, leading zeros (`0017`, ` +1_7 `) | decimal, no leading zeros (`17`; `-0` is `0`) |
//! | `uuid` | `uuid.UUID(text)`'s usual forms: hyphens anywhere, `{…}`, `urn:uuid:` prefix, any case | lower-case hyphenated |
//!
//! Differences from Python, all of them making an id anonymous rather than
//! someone else: non-ASCII digits (`int("١٧")` is 17 in Python), and the
//! whitespace, sign or `_` that `int(text, 16)` would also let into a UUID.
//! Python refuses integers above 4300 digits; here they are still read (a
//! padded id stays its user), so an id Django cannot use is counted rather
//! than let through.

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderMap;

use super::{Identity, IdentityError, IdentitySource};
use crate::config::UserIdFormat;

/// `source` with its user ids in `format`'s canonical form (and ids not in
/// it anonymous); `source` itself for `string`.
pub fn canonical_ids(
    source: Arc<dyn IdentitySource>,
    format: UserIdFormat,
) -> Arc<dyn IdentitySource> {
    match format {
        UserIdFormat::String => source,
        UserIdFormat::Integer | UserIdFormat::Uuid => Arc::new(CanonicalIds {
            inner: source,
            format,
        }),
    }
}

/// The canonical form of user id `id` in `format`, or `None` when it is not
/// an id of that format.
pub fn canonical_user_id(format: UserIdFormat, id: &str) -> Option<String> {
    match format {
        UserIdFormat::String => (!id.is_empty()).then(|| id.to_owned()),
        UserIdFormat::Integer => canonical_integer(id),
        UserIdFormat::Uuid => canonical_uuid(id),
    }
}

struct CanonicalIds {
    inner: Arc<dyn IdentitySource>,
    format: UserIdFormat,
}

#[async_trait]
impl IdentitySource for CanonicalIds {
    async fn identify(&self, headers: &HeaderMap) -> Result<Option<Identity>, IdentityError> {
        let Some(mut who) = self.inner.identify(headers).await? else {
            return Ok(None);
        };
        match canonical_user_id(self.format, &who.user_id) {
            Some(canonical) => {
                who.user_id = canonical;
                Ok(Some(who))
            }
            // A client's own header in another form: not an id.
            None if self.inner.trusts_client_headers() => {
                tracing::debug!(format = ?self.format, "user id not in identity.user_id_format; anonymous");
                Ok(None)
            }
            // A user the app (or a signed token) vouched for: the format
            // does not fit the app. Not anonymous, which would let every
            // signed-in user through unchecked; an identity error.
            None => Err(IdentityError::Unavailable(format!(
                "the verified user id {:?} is not in identity.user_id_format = {:?}; \
                 set the format the app's ids have",
                who.user_id.chars().take(64).collect::<String>(),
                self.format
            ))),
        }
    }

    fn trusts_client_headers(&self) -> bool {
        self.inner.trusts_client_headers()
    }
}

/// Python's `str.isspace()` for the characters a user id can hold.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `int(text)` (base 10), written back in decimal.
fn canonical_integer(text: &str) -> Option<String> {
    let text = text.trim_matches(is_python_space);
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let bytes = digits.as_bytes();
    // Digits, with single underscores between two digits.
    let well_formed = !bytes.is_empty()
        && bytes.first().is_some_and(u8::is_ascii_digit)
        && bytes.last().is_some_and(u8::is_ascii_digit)
        && bytes.iter().all(|b| b.is_ascii_digit() || *b == b'_')
        && !digits.contains("__");
    if !well_formed {
        return None;
    }
    let value: String = digits
        .chars()
        .filter(char::is_ascii_digit)
        .skip_while(|c| *c == '0')
        .collect();
    Some(match (negative, value.is_empty()) {
        (_, true) => "0".to_owned(),
        (true, false) => format!("-{value}"),
        (false, false) => value,
    })
}

/// `str(uuid.UUID(text))` for the usual spellings.
fn canonical_uuid(text: &str) -> Option<String> {
    let text = text.replace("urn:", "").replace("uuid:", "");
    let hex: String = text
        .trim_matches(['{', '}'])
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_as_python_reads_them() {
        // Each accepted case checked against CPython 3.11's int().
        for (id, canonical) in [
            ("17", "17"),
            ("0017", "17"),
            (" 17 ", "17"),
            ("\t+17\n", "17"),
            ("1_7", "17"),
            ("0_0_17", "17"),
            ("-17", "-17"),
            ("-0", "0"),
            ("000", "0"),
        ] {
            assert_eq!(
                canonical_user_id(UserIdFormat::Integer, id).as_deref(),
                Some(canonical),
                "{id:?}"
            );
        }
        let padded = format!("{}17", "0".repeat(5000));
        assert_eq!(
            canonical_user_id(UserIdFormat::Integer, &padded).as_deref(),
            Some("17")
        );
        for id in [
            "", " ", "+", "-", "1__7", "_17", "17_", "+_17", "1 7", "17a", "0x11", "1e3", "١٧",
            "--17", "17.0", "}17", "{17}",
        ] {
            assert_eq!(canonical_user_id(UserIdFormat::Integer, id), None, "{id:?}");
        }
    }

    #[test]
    fn uuids_in_lower_case_hyphenated_form() {
        let canonical = "0f3c8a2e-1b4d-4c5e-9f60-7a8b9c0d1e2f";
        for id in [
            canonical,
            "0F3C8A2E-1B4D-4C5E-9F60-7A8B9C0D1E2F",
            "0f3c8a2e1b4d4c5e9f607a8b9c0d1e2f",
            "{0f3c8a2e-1b4d-4c5e-9f60-7a8b9c0d1e2f}",
            "urn:uuid:0f3c8a2e-1b4d-4c5e-9f60-7a8b9c0d1e2f",
        ] {
            assert_eq!(
                canonical_user_id(UserIdFormat::Uuid, id).as_deref(),
                Some(canonical),
                "{id}"
            );
        }
        for id in [
            "",
            "17",
            "0f3c8a2e-1b4d-4c5e-9f60-7a8b9c0d1e2",
            "g".repeat(32).as_str(),
        ] {
            assert_eq!(canonical_user_id(UserIdFormat::Uuid, id), None, "{id}");
        }
    }

    #[tokio::test]
    async fn the_source_answers_canonical_ids_or_anonymous() {
        let mut config = crate::config::Config::default();
        config.identity.user_id_format = UserIdFormat::Integer;
        let source = canonical_ids(
            crate::identity::from_config(&config).expect("source"),
            config.identity.user_id_format,
        );
        let ask = |id: &'static str| {
            let source = Arc::clone(&source);
            async move {
                let mut h = HeaderMap::new();
                h.insert("x-user-id", id.parse().expect("value"));
                source
                    .identify(&h)
                    .await
                    .expect("answer")
                    .map(|who| who.user_id)
            }
        };
        assert_eq!(ask("0017").await.as_deref(), Some("17"));
        assert_eq!(ask("17").await.as_deref(), Some("17"));
        assert_eq!(ask("bob").await, None);
        assert!(source.trusts_client_headers());
    }
}
