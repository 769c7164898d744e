//! A cookie read as Django reads it (phase: identify): the token a JWT
//! source verifies must be the one Django's authentication will see, or a
//! user at the limit could send one spelling the proxy reads as anonymous
//! while Django logs them in (found by an attack session).
//!
//! Django's `parse_cookie` (django/http/cookie.py): the `Cookie` lines as
//! the WSGI server hands them over (gunicorn joins repeated lines with
//! `,`), decoded as UTF-8 with replacement (`get_str_from_wsgi`), split on
//! `;`, each piece split at its first `=`, key and value stripped of
//! Python's (Unicode) whitespace, values unquoted by
//! `http.cookies._unquote`, and the last piece of a name wins.

use std::borrow::Cow;

use http::{HeaderMap, header};

/// The value Django gives cookie `name` in these headers; `None` when it
/// has none or an empty one.
pub(crate) fn django_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut lines = headers.get_all(header::COOKIE).iter();
    let mut joined = lines.next()?.as_bytes().to_vec();
    for line in lines {
        joined.push(b',');
        joined.extend_from_slice(line.as_bytes());
    }
    // Django reads HTTP_COOKIE through `get_str_from_wsgi`: the bytes
    // decoded as UTF-8, each invalid sequence replaced.
    let joined = String::from_utf8_lossy(&joined);
    // The last piece of the name wins: searched from the end.
    let value = joined.rsplit(';').find_map(|piece| {
        let (key, value) = piece.split_once('=').unwrap_or(("", piece));
        (py_strip(key) == name).then(|| py_strip(value))
    })?;
    let value = unquote(value).into_owned();
    (!value.is_empty()).then_some(value)
}

/// `str.strip()`: Python's whitespace (`str.isspace`), which is Unicode's
/// (Rust's) plus the four separators U+001C..U+001F.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// `http.cookies._unquote`: a value in double quotes loses them, and its
/// `\ooo` (octal, first digit 0–3) and `\c` escapes are replaced.
fn unquote(value: &str) -> Cow<'_, str> {
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|_| value.len() >= 2)
    else {
        return Cow::Borrowed(value);
    };
    let chars: Vec<char> = inner.chars().collect();
    let mut out = String::with_capacity(inner.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c != '\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let octal = chars.get(i + 1..i + 4).filter(|d| {
            matches!(d[0], '0'..='3') && matches!(d[1], '0'..='7') && matches!(d[2], '0'..='7')
        });
        if let Some(digits) = octal {
            let code = digits
                .iter()
                .fold(0u32, |n, d| n * 8 + d.to_digit(8).unwrap_or(0));
            out.extend(char::from_u32(code));
            i += 4;
        } else if let Some(&next) = chars.get(i + 1).filter(|&&n| n != '\n') {
            out.push(next);
            i += 2;
        } else {
            out.push('\\');
            i += 1;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cookie(lines: &[&[u8]], name: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(
                header::COOKIE,
                HeaderValue::from_bytes(line).expect("header"),
            );
        }
        django_cookie(&headers, name)
    }

    #[test]
    fn the_last_piece_of_a_name_wins() {
        assert_eq!(cookie(&[b"t=x; t=a.b.c"], "t").as_deref(), Some("a.b.c"));
        assert_eq!(
            cookie(&[b"csrftoken=x; t=a.b.c"], "csrftoken").as_deref(),
            Some("x")
        );
        assert_eq!(cookie(&[b"t=a.b.c; t="], "t"), None);
        assert_eq!(cookie(&[b"other=1"], "t"), None);
    }

    #[test]
    fn unicode_spaces_are_stripped_as_python_strips_them() {
        let cases: [&[u8]; 3] = [
            b"access_token=a.b.c\xe3\x80\x80",
            b"\xc2\xa0access_token=a.b.c",
            b"access_token\xe2\x80\x83=a.b.c",
        ];
        for line in cases {
            assert_eq!(
                cookie(&[line], "access_token").as_deref(),
                Some("a.b.c"),
                "{line:?}"
            );
        }
        // A lone byte that is no UTF-8 becomes U+FFFD, which is no space.
        assert_eq!(
            cookie(&[b"t=a.b.c\xa0"], "t").as_deref(),
            Some("a.b.c\u{fffd}")
        );
    }

    #[test]
    fn bytes_beyond_ascii_elsewhere_change_nothing() {
        assert_eq!(
            cookie(&[b"lang=\xc3\xa9t\xc3\xa9; t=a.b.c"], "t").as_deref(),
            Some("a.b.c")
        );
    }

    #[test]
    fn repeated_lines_are_joined_with_a_comma_as_gunicorn_does() {
        // Django then reads `t` as "a.b.c,other=1": no token.
        assert_eq!(
            cookie(&[b"t=a.b.c", b"other=1"], "t").as_deref(),
            Some("a.b.c,other=1")
        );
        assert_eq!(cookie(&[b"other=1", b"t=a.b.c"], "t"), None);
        assert_eq!(
            cookie(&[b"other=1", b"x; t=a.b.c"], "t").as_deref(),
            Some("a.b.c")
        );
    }

    #[test]
    fn values_are_unquoted_as_python_does() {
        assert_eq!(cookie(&[br#"t="\145yJ.x""#], "t").as_deref(), Some("eyJ.x"));
        assert_eq!(
            cookie(&[br#"t="a\"b\\c""#], "t").as_deref(),
            Some(r#"a"b\c"#)
        );
        assert_eq!(cookie(&[br#"t="abc"#], "t").as_deref(), Some("\"abc"));
        assert_eq!(cookie(&[b"t=\"\""], "t"), None);
        assert_eq!(cookie(&[b"t=\""], "t").as_deref(), Some("\""));
        assert_eq!(cookie(&[b" t = a.b.c\t"], "t").as_deref(), Some("a.b.c"));
    }
}
