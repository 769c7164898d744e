//! Request headers that change which view Django runs, or what it reads
//! (phase: classify, before anything reads the request).
//!
//! gunicorn takes a `SCRIPT_NAME` request header from a trusted peer (its
//! `forwarded_allow_ips`, `127.0.0.1` by default: the proxy's own address)
//! and cuts that prefix from the path before Django sees it
//! (`gunicorn/http/wsgi.py` `create`; `forwarder_headers` defaults to
//! `SCRIPT_NAME,PATH_INFO` in `gunicorn/config.py`). So
//! `POST /x/chat/session/17/send/` with `SCRIPT_NAME: /x` runs the send
//! view while the proxy saw another path. Other servers and middlewares do
//! the same with `X-Script-Name`, `X-Forwarded-Prefix` (werkzeug's
//! `ProxyFix`), `X-Original-URL` / `X-Rewrite-URL` (IIS rewrite) and the
//! like.
//!
//! WSGI servers name a header `HTTP_` + its name upper-cased with `-` made
//! `_` (`wsgi.py`: `'HTTP_' + hdr_name.replace('-', '_')`), so
//! `X_Forwarded_Prefix` and `X-Forwarded-Prefix` reach the app under one
//! key. gunicorn 22+ drops names with `_` by default (`header_map = "drop"`)
//! but maps them with `header_map = "dangerous"`, older versions always,
//! and `SCRIPT_NAME` itself is let through as a forwarder header. So each
//! configured name is removed in every spelling: any case, `-` and `_`
//! alike.
//!
//! The list is `strip_routing_headers`; removed from every request,
//! inspected or not, before the route is looked up.
//!
//! On an inspected route every name holding `_` goes too
//! ([`strip_underscore_names`]), as gunicorn's default and nginx's
//! (`underscores_in_headers off`) do: a server that maps them would hand
//! Django `Accept_Encoding: gzip` as `HTTP_ACCEPT_ENCODING`, a header the
//! proxy removed (`forward.rs`), and no list of names can cover what an app
//! reads.

use http::HeaderMap;
use http::header::HeaderName;

use crate::config::RequiredHeader;

/// Header names removed from every request, matched in any case with `-`
/// and `_` alike.
#[derive(Debug, Clone, Default)]
pub struct RoutingHeaders {
    /// Lower case, `_` written as `-`.
    names: Vec<Box<[u8]>>,
}

impl RoutingHeaders {
    /// The list `names` (header names, checked when the config was
    /// parsed).
    pub fn new(names: &[RequiredHeader]) -> Self {
        let names = names
            .iter()
            .map(|name| fold(name.name().as_str().as_bytes()).collect())
            .collect();
        Self { names }
    }

    /// Removes every header `headers` holds under one of the names, in any
    /// spelling. One pass over the names when there is none (the usual
    /// case); no allocation.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if self.names.is_empty() {
            return;
        }
        while let Some(found) = headers.keys().find(|key| self.covers(key)).cloned() {
            headers.remove(found);
        }
    }

    fn covers(&self, key: &HeaderName) -> bool {
        let key = key.as_str().as_bytes();
        self.names
            .iter()
            .any(|name| name.len() == key.len() && fold(key).eq(name.iter().copied()))
    }
}

/// Removes every header whose name holds `_`. One pass over the names
/// when there is none (the usual case); no allocation.
pub fn strip_underscore_names(headers: &mut HeaderMap) {
    let underscored = |key: &&HeaderName| key.as_str().as_bytes().contains(&b'_');
    while let Some(found) = headers.keys().find(underscored).cloned() {
        headers.remove(found);
    }
}

/// Joins the `cookie` fields of an HTTP/2 request ("crumbs", RFC 9113
/// 8.2.3) into one, with `; `, as that RFC asks before a request goes on
/// over HTTP/1.1: gunicorn joins repeated lines with `,`, which Django's
/// `parse_cookie` does not split, so the user would be logged out for the
/// identity call and the app alike. No allocation unless there are several.
pub fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(http::header::COOKIE).iter();
    if crumbs.nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(http::header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Made of header values and `; `, so always a valid value.
    if let Ok(value) = http::HeaderValue::from_bytes(&joined) {
        headers.insert(http::header::COOKIE, value);
    }
}

/// Trims the spaces and tabs around every field value of an HTTP/2
/// request, as an HTTP/1 parser does (RFC 9112 5: optional whitespace
/// around a field value is not part of it). h2 takes any `HeaderValue`,
/// spaces at either end included (RFC 9113 8.2.1 forbids them, h2 does not
/// check), and the request goes on to the upstream over HTTP/1.1, where
/// gunicorn strips them (`gunicorn/http/message.py`: `value.strip(" \t")`)
/// before Django reads the value. Judged untrimmed, `content-type:
/// " multipart/form-data; …"` failed `MultiPartParser`'s raw
/// `startswith("multipart/")` here (a body Django refuses, forwarded
/// unreserved) while Django read the upload and generated
/// (`tests/it/attack_content_type.rs`). No allocation unless a value has them.
pub fn trim_field_values(headers: &mut HeaderMap) {
    trim_values(headers, |b| matches!(b, b' ' | b'\t'));
}

/// Trims from both ends of every field value of an inspected request what
/// a WSGI server may trim before Django reads it (`wsgi_space`), so the
/// value judged is the value forwarded and the one Django sees, whichever
/// gunicorn serves it. gunicorn 21 (the chat app's pinned version) reads a
/// value as Latin-1 and trims it with Python's `str.lstrip()` /
/// `rstrip()`, which take NBSP (0xA0) and NEL (0x85) too, bytes hyper and
/// h2 keep (obs-text): judged untrimmed, `Content-Type: <0xA0>multipart/
/// form-data; …` was a body Django refuses, forwarded unreserved, while
/// Django read the upload and generated (`tests/it/attack_app_stack.rs`).
/// gunicorn 22+ trims only spaces and tabs, and gets the value already
/// trimmed. No allocation unless a value has them.
pub fn trim_wsgi_field_values(headers: &mut HeaderMap) {
    trim_values(headers, wsgi_space);
}

/// A byte Python's `str.strip()` removes from a value read as Latin-1
/// (`str.isspace()`: tab to carriage return, the separators
/// U+001C..U+001F, space, NEL, NBSP). Of these a field value can hold only
/// space, tab, 0x85 and 0xA0; hyper and h2 refuse the others.
fn wsgi_space(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | 0x1c..=0x1f | b' ' | 0x85 | 0xa0)
}

/// Trims the bytes `space` says are spaces from both ends of every value.
fn trim_values(headers: &mut HeaderMap, space: fn(u8) -> bool) {
    let padded =
        |b: &[u8]| b.first().is_some_and(|&c| space(c)) || b.last().is_some_and(|&c| space(c));
    for (_, value) in headers.iter_mut() {
        let bytes = value.as_bytes();
        if !padded(bytes) {
            continue;
        }
        let start = bytes.iter().position(|&b| !space(b)).unwrap_or(bytes.len());
        let end = bytes
            .iter()
            .rposition(|&b| !space(b))
            .map_or(start, |i| i + 1);
        // A part of a valid value: always valid.
        if let Ok(mut trimmed) = http::HeaderValue::from_bytes(&bytes[start..end]) {
            trimmed.set_sensitive(value.is_sensitive());
            *value = trimmed;
        }
    }
}

/// `host[:port]` of a target's authority (HTTP/2's `:authority`, an
/// HTTP/1 absolute-form target), without any `user@`: the `Host` written
/// for a request without one: where the quota layer judges it, and where
/// the proxy forwards it.
pub fn host_of(authority: &http::uri::Authority) -> Option<http::HeaderValue> {
    let host = match authority.port() {
        Some(port) => format!("{}:{}", authority.host(), port),
        None => authority.host().to_owned(),
    };
    http::HeaderValue::from_str(&host).ok()
}

/// `-` and `_` as one, lower case.
fn fold(name: &[u8]) -> impl Iterator<Item = u8> + '_ {
    name.iter().map(|&b| match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_ROUTING_HEADERS;

    #[test]
    fn values_lose_what_a_wsgi_server_trims_and_nothing_else() {
        let mut headers = HeaderMap::new();
        let set = |headers: &mut HeaderMap, name: &'static str, value: &[u8]| {
            headers.insert(name, http::HeaderValue::from_bytes(value).expect("value"));
        };
        set(
            &mut headers,
            "content-type",
            b"\xa0 \x85multipart/form-data; boundary=x\t\xa0",
        );
        set(&mut headers, "cookie", b"sessionid=u1\x85");
        set(&mut headers, "x-inner", b"a\xa0b");
        set(&mut headers, "x-blank", b"\xa0\x85");
        set(&mut headers, "x-other", b"\xc2\xa0x");
        trim_wsgi_field_values(&mut headers);
        assert_eq!(headers["content-type"], "multipart/form-data; boundary=x");
        assert_eq!(headers["cookie"], "sessionid=u1");
        assert_eq!(headers["x-inner"].as_bytes(), b"a\xa0b", "inside: kept");
        assert_eq!(headers["x-blank"], "");
        // UTF-8 NBSP (C2 A0) reads as "\u{c2}\u{a0}" in Latin-1: 0xC2 is no
        // space, so gunicorn 21 keeps it, and so is it kept here.
        assert_eq!(headers["x-other"].as_bytes(), b"\xc2\xa0x");
        // Spaces and tabs only, for HTTP/2 in general.
        set(&mut headers, "x-h2", b" \xa0v\t");
        trim_field_values(&mut headers);
        assert_eq!(headers["x-h2"].as_bytes(), b"\xa0v");
    }

    #[test]
    fn every_spelling_is_removed_and_nothing_else() {
        let strip = RoutingHeaders::new(&DEFAULT_ROUTING_HEADERS.map(RequiredHeader::from_static));
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("script_name", "/x"),
            ("Script-Name", "/x"),
            ("x_forwarded_prefix", "/x"),
            ("X-Forwarded_Prefix", "/y"),
            ("x-original-url", "/chat/session/17/send/"),
            ("x_rewrite_url", "/a"),
            ("path_info", "/a"),
            ("cookie", "sessionid=1"),
            ("x-forwarded-for", "10.0.0.1"),
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        strip.strip(&mut h);
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["cookie", "x-forwarded-for"]);
    }

    #[test]
    fn names_with_underscores_are_removed_and_nothing_else() {
        let mut h = HeaderMap::new();
        for name in ["accept_encoding", "x_a", "_", "accept-encoding", "cookie"] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                "v".parse().expect("value"),
            );
        }
        strip_underscore_names(&mut h);
        let mut left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept-encoding", "cookie"]);
    }

    #[test]
    fn cookie_crumbs_are_joined_in_order() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1".parse().expect("value"));
        join_cookie_crumbs(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1, "one stays as it is");
        h.append("cookie", "sessionid=2".parse().expect("value"));
        h.append("cookie", "c=3".parse().expect("value"));
        join_cookie_crumbs(&mut h);
        let all: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; sessionid=2; c=3"]);
    }

    #[test]
    fn field_values_are_trimmed_of_spaces_and_tabs_only() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("content-type", " multipart/form-data; boundary=x"),
            ("content-type", "\tjson \t"),
            ("cookie", "a=1"),
            ("x-empty", "  "),
            ("x-inner", "a  b"),
        ] {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                value.parse().expect("value"),
            );
        }
        trim_field_values(&mut h);
        let all: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().expect("text")))
            .collect();
        assert_eq!(
            all,
            [
                ("content-type", "multipart/form-data; boundary=x"),
                ("content-type", "json"),
                ("cookie", "a=1"),
                ("x-empty", ""),
                ("x-inner", "a  b"),
            ]
        );
    }

    #[test]
    fn an_empty_list_strips_nothing() {
        let mut h = HeaderMap::new();
        h.insert("script_name", "/x".parse().expect("value"));
        RoutingHeaders::new(&[]).strip(&mut h);
        assert_eq!(h.len(), 1);
    }
}
