//! The path Django's URL resolver sees (phase: classify).
//!
//! The proxy forwards the request target's `path` as it came (origin form;
//! an absolute-form target `POST http://host/chat/…` and an HTTP/2 `:path`
//! are both reduced to their path by hyper, and that path is what the
//! upstream receives, see `proxy/service.rs`). What the view is chosen from
//! is not that path but Django's `request.path_info`, made in two steps:
//!
//! 1. **gunicorn** (`gunicorn/http/message.py` `parse_request_line`,
//!    `gunicorn/util.py` `split_request_uri`, `gunicorn/http/wsgi.py`
//!    `create`): the request line is read as latin-1 text; `urlsplit` cuts
//!    the path at the first `?` or `#` and keeps everything else (`;`
//!    parameters, `//`, `.` and `..` segments are *not* touched); a
//!    `SCRIPT_NAME` prefix is cut from the raw path (see
//!    [`super::RoutingHeaders`]); then `PATH_INFO =
//!    unquote_to_bytes(path).decode("latin-1")`. `unquote_to_bytes` first
//!    encodes the text as UTF-8, so a raw byte ≥ 0x80 in the target becomes
//!    the two UTF-8 bytes of U+0080..U+00FF, and it decodes every `%XX`
//!    with two hex digits (either case), including `%2F` and `%25`; a `%`
//!    not followed by two hex digits stays as it is.
//! 2. **Django** (`django/core/handlers/wsgi.py` `get_path_info`): the
//!    PATH_INFO text is turned back into its latin-1 bytes,
//!    `repercent_broken_unicode` (`django/utils/encoding.py`) writes each
//!    byte of an invalid UTF-8 sequence as `%XX` (upper case; such bytes
//!    are always ≥ 0x80, so `quote` escapes every one of them), and the
//!    bytes are decoded as UTF-8. An empty PATH_INFO is `/`.
//!
//! [`backend_path`] does the same in one pass. Decoding is done once: a
//! `%2565` reaches Django as `%65`, which no converter turns into `e`.
//! Dot segments are not removed: gunicorn and Django leave them, so
//! `/chat/./session/17/send/` is not routed by Django, and not here.

use std::borrow::Cow;

/// The path Django's resolver matches (`request.path_info`) for a request
/// whose target path is `target` (as hyper parsed it: valid UTF-8, no
/// query, no fragment). Borrows `target` when nothing changes (no `%`, no
/// byte ≥ 0x80): the common case costs one scan and no allocation.
pub fn backend_path(target: &str) -> Cow<'_, str> {
    if target.is_empty() {
        return Cow::Borrowed("/");
    }
    if !target.bytes().any(|b| b == b'%' || b >= 0x80) {
        return Cow::Borrowed(target);
    }
    Cow::Owned(repercent_broken_unicode(&path_info_bytes(
        target.as_bytes(),
    )))
}

/// gunicorn's PATH_INFO, as bytes: `unquote_to_bytes(latin1(target))`.
fn path_info_bytes(target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() * 2);
    let mut i = 0;
    while let Some(&b) = target.get(i) {
        if b == b'%'
            && let (Some(hi), Some(lo)) = (
                target.get(i + 1).copied().and_then(hex),
                target.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        if b >= 0x80 {
            // latin-1 text of one byte, encoded as UTF-8.
            out.push(0xC0 | (b >> 6));
            out.push(0x80 | (b & 0x3F));
        } else {
            out.push(b);
        }
        i += 1;
    }
    out
}

/// Django's `repercent_broken_unicode(bytes).decode()`: valid UTF-8 is
/// kept, each byte of an invalid sequence becomes `%XX`.
fn repercent_broken_unicode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for &b in chunk.invalid() {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_like_gunicorn_then_django() {
        // The first nine expected values are `request.path_info` as a real
        // gunicorn 27.0.1 + Django 5.2.19 reported it for that target; the
        // others are CPython 3.11 running gunicorn's `unquote_to_bytes` and
        // Django's `repercent_broken_unicode` (gunicorn 27 answers 400 to a
        // raw non-ASCII byte in the request line; older ones decode it so).
        let cases = [
            ("/a%FFb%C3%A9%e9%zz%4", "/a%FFbé%E9%zz%4"),
            ("/%C3%28x/", "/%C3(x/"),
            ("/%F0%9F%98%80/", "/😀/"),
            ("/chat/session/17/send/%0A", "/chat/session/17/send/\n"),
            ("/chat/session/17/s%65nd/", "/chat/session/17/send/"),
            ("/%63hat/session/17/send/", "/chat/session/17/send/"),
            ("/chat/session/17%2Fsend/", "/chat/session/17/send/"),
            ("/a;b//./..//", "/a;b//./..//"),
            ("/%2565/", "/%65/"),
            ("/chat/session/17%2fsend/", "/chat/session/17/send/"),
            ("/é/%C3%A9/%E9/%e9%zz%4", "/Ã©/é/%E9/%E9%zz%4"),
            ("/%00%0A", "/\u{0}\n"),
            ("/%", "/%"),
            ("", "/"),
        ];
        for (target, django) in cases {
            assert_eq!(backend_path(target), django, "{target}");
        }
    }

    #[test]
    fn plain_paths_are_borrowed() {
        assert!(matches!(
            backend_path("/chat/session/17/send/"),
            Cow::Borrowed(_)
        ));
    }

    /// Percent-encodes every byte of `p` that `keep` does not keep raw.
    fn encode(p: &str, keep: &[bool]) -> String {
        let mut out = String::new();
        for (i, b) in p.bytes().enumerate() {
            let raw = keep.get(i).copied().unwrap_or(false)
                && b.is_ascii()
                && !matches!(b, b'%' | b'?' | b'#')
                && (b.is_ascii_graphic());
            if raw {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    proptest! {
        #[test]
        fn never_panics(target in any::<String>()) {
            let _ = backend_path(&target);
        }

        #[test]
        fn decodes_what_is_encoded(
            p in "/\\PC*",
            keep in proptest::collection::vec(any::<bool>(), 0..64),
        ) {
            let target = encode(&p, &keep);
            prop_assert_eq!(backend_path(&target), p.as_str());
        }

        #[test]
        fn any_bytes_decode_to_valid_text(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let target: String = std::iter::once("/".to_owned())
                .chain(bytes.iter().map(|b| format!("%{b:02x}")))
                .collect();
            let decoded = backend_path(&target);
            // Valid UTF-8 survives; each byte of an invalid sequence is `%XX`.
            match std::str::from_utf8(&bytes) {
                Ok(text) => prop_assert_eq!(decoded.as_ref(), format!("/{text}")),
                Err(_) => prop_assert!(decoded.contains('%')),
            }
        }
    }
}
