//! The `Authorization` header (or the one simplejwt's `AUTH_HEADER_NAME`
//! names) as djangorestframework-simplejwt reads it (phase: identify): its
//! scheme and token.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};

/// The scheme and token of a `<name>: <scheme> <token>` header,
/// split on any ASCII whitespace as simplejwt splits it (`header.split()`:
/// a tab counts); whether the scheme is the app's is the caller's
/// question. simplejwt reads the header as the WSGI server hands it on:
/// several lines joined with `,` (gunicorn), as Latin-1 bytes, which it
/// passes to PyJWT. PyJWT 2.8 skips a `,` or a byte above 0x7E in a
/// signature like any other junk, so `Bearer <jwt head>` and
/// `<jwt tail>==` on two lines log the user in: the lines are joined here
/// too, each byte above 0x7E read as `!` (junk of the same length for
/// `pyjwt::pyjwt_signature`), where the first line alone, or a header `to_str`
/// refused, made the request anonymous (`tests/it/attack_identity.rs`).
pub(super) fn authorization_token<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Option<(Cow<'h, str>, Cow<'h, str>)> {
    let mut lines = headers.get_all(name).iter();
    let first = lines.next()?;
    if let (Ok(text), None) = (first.to_str(), lines.next()) {
        let (scheme, token) = two_words(text)?;
        return Some((Cow::Borrowed(scheme), Cow::Borrowed(token)));
    }
    let mut joined = String::new();
    for (n, line) in headers.get_all(name).iter().enumerate() {
        if n > 0 {
            joined.push(',');
        }
        joined.extend(
            line.as_bytes()
                .iter()
                .map(|&b| if b.is_ascii() { char::from(b) } else { '!' }),
        );
    }
    let (scheme, token) = two_words(&joined)?;
    Some((Cow::Owned(scheme.to_owned()), Cow::Owned(token.to_owned())))
}

/// The two words of a `<scheme> <token>` header value; none when there
/// are more or fewer (simplejwt refuses those).
fn two_words(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.split_ascii_whitespace();
    let (scheme, token) = (parts.next()?, parts.next()?);
    parts.next().is_none().then_some((scheme, token))
}

#[cfg(test)]
mod tests {
    use http::header;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        h
    }

    /// The token of the `Authorization` header, with its scheme.
    fn token_of(headers: &HeaderMap) -> Option<(String, String)> {
        authorization_token(headers, &header::AUTHORIZATION)
            .map(|(scheme, token)| (scheme.into_owned(), token.into_owned()))
    }

    fn pair(scheme: &str, token: &str) -> Option<(String, String)> {
        Some((scheme.to_owned(), token.to_owned()))
    }

    #[test]
    fn authorization_tokens() {
        let one = |value: &str| token_of(&headers(&[("authorization", value)]));
        assert_eq!(one("Bearer a.b.c"), pair("Bearer", "a.b.c"));
        assert_eq!(one("bearer  a.b.c "), pair("bearer", "a.b.c"));
        assert_eq!(one("JWT\ta.b.c"), pair("JWT", "a.b.c"));
        assert_eq!(one("Bearer "), None);
        assert_eq!(token_of(&headers(&[])), None);
        // A byte above 0x7E is junk PyJWT 2.8 skips: one `!` each.
        let mut map = HeaderMap::new();
        map.insert(
            header::AUTHORIZATION,
            http::HeaderValue::from_bytes(b"Bearer a.b.c\xa0\xc3\xa9").expect("obs-text"),
        );
        assert_eq!(token_of(&map), pair("Bearer", "a.b.c!!!"));
        // Several lines: joined with `,`, as gunicorn joins them.
        map.append(header::AUTHORIZATION, "d".parse().expect("value"));
        assert_eq!(token_of(&map), pair("Bearer", "a.b.c!!!,d"));
        let mut map = HeaderMap::new();
        map.append(header::AUTHORIZATION, "Bearer a.b".parse().expect("value"));
        map.append(header::AUTHORIZATION, "Bearer c".parse().expect("value"));
        assert_eq!(token_of(&map), None, "three words");
        // Another header, when the app's AUTH_HEADER_NAME names it.
        let custom = HeaderName::from_static("x-access-token");
        let map = headers(&[
            ("x-access-token", "Bearer e.f.g"),
            ("authorization", "Bearer a"),
        ]);
        let token =
            authorization_token(&map, &custom).map(|(s, t)| (s.into_owned(), t.into_owned()));
        assert_eq!(token, pair("Bearer", "e.f.g"));
    }
}
