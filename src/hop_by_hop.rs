//! Hop-by-hop headers (RFC 9110 §7.6.1): `Connection`, the fixed list, and
//! every header a `Connection` line names belong to one connection and never
//! reach the next hop. A pure rule over a [`HeaderMap`], used twice: the
//! proxy removes them from what it forwards and answers, and the quota layer
//! removes them from a request before it judges it, so that it judges what
//! the upstream will see (a client naming `Content-Type` or the report token
//! in `Connection` must not have them judged here and dropped on the way).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers that are removed whether or not `Connection` names
/// them. `Proxy-Connection` and `Keep-Alive` are not standard but are still
/// sent by old clients and must not reach the other hop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// [`HopByHop::fixed`]'s bit for `Connection`, `HOP_BY_HOP[0]`.
const CONNECTION_BIT: u8 = 1 << 0;
/// [`HopByHop::fixed`]'s bit for `TE`, `HOP_BY_HOP[3]`.
const TE_BIT: u8 = 1 << 3;

/// Removes the hop-by-hop headers of a response: every header named in
/// `Connection`, then the fixed list (RFC 9110 §7.6.1). hyper re-frames the
/// body for the next hop, so a stale `Transfer-Encoding` must not survive.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    HopByHop::find(headers).remove_from(headers);
}

/// Removes the hop-by-hop headers of a request, like [`strip_hop_by_hop`],
/// but keeps `TE: trailers`: it tells the upstream that trailers reach the
/// client (gRPC-style servers refuse to answer without it). The client's
/// other transfer codings are the proxy's business, not the upstream's.
pub fn strip_request_hop_by_hop(headers: &mut HeaderMap) {
    let hop_by_hop = HopByHop::find(headers);
    let accepts_trailers = hop_by_hop.fixed & TE_BIT != 0
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            // A coding may carry a weight: `trailers;q=1` is still trailers.
            .filter_map(|coding| coding.split(';').next())
            .any(|coding| coding.trim().eq_ignore_ascii_case("trailers"));
    hop_by_hop.remove_from(headers);
    if accepts_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The hop-by-hop headers one message holds, found by one pass over its
/// names without hashing: most messages carry none, or only `Connection`
/// listing `keep-alive` or `close` (gunicorn and nginx answer with one).
/// Removing the eight fixed names one by one cost nearly a tenth of a
/// pass-through request; making a `Vec` and a `HeaderName` of each
/// `Connection` token (an allocation for any name outside the standard
/// list) another 250 instructions or so (callgrind).
struct HopByHop {
    /// Bit `i` set: the message holds `HOP_BY_HOP[i]`.
    fixed: u8,
    /// The other headers its `Connection` lines name that it holds; empty
    /// (not allocated) for the common tokens.
    named: Vec<HeaderName>,
}

impl HopByHop {
    fn find(headers: &HeaderMap) -> Self {
        let mut fixed = 0;
        for name in headers.keys() {
            if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
                fixed |= 1 << i;
            }
        }
        let mut named = Vec::new();
        if fixed & CONNECTION_BIT != 0 {
            let tokens = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .map(str::trim);
            for token in tokens {
                // A fixed name is found above, and `close` names no header
                // unless one by that name is there; an invalid token is no
                // header's name, so `contains_key` says no.
                let is_fixed = HOP_BY_HOP
                    .iter()
                    .any(|hop| hop.as_str().eq_ignore_ascii_case(token));
                if is_fixed || !headers.contains_key(token) {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                    && !named.contains(&name)
                {
                    named.push(name);
                }
            }
        }
        Self { fixed, named }
    }

    fn remove_from(self, headers: &mut HeaderMap) {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            if self.fixed & (1 << i) != 0 {
                headers.remove(name);
            }
        }
        for name in self.named {
            headers.remove(name);
        }
    }
}

/// A header map of `pairs`, in order (repeated names append), for tests of
/// header rules here and in the proxy.
#[cfg(test)]
pub(crate) fn test_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::test_map as map;
    use super::*;

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn strips_fixed_list_and_names_in_connection() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Hop"),
            ("connection", "x-other"),
            ("x-hop", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authenticate", "Basic"),
            ("proxy-authorization", "Basic eA=="),
            ("content-type", "text/plain"),
            ("trailer", "x-checksum"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["content-type", "trailer"]);
    }

    #[test]
    fn ignores_invalid_tokens_in_connection() {
        let mut headers = map(&[("connection", "close, , bad header"), ("x-keep", "1")]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-keep"]);
    }

    #[test]
    fn connection_tokens_match_names_in_any_case_and_only_if_present() {
        let mut headers = map(&[
            ("connection", "Keep-Alive, close, X-Gone, x-absent"),
            ("keep-alive", "timeout=5"),
            ("x-gone", "1"),
            ("close-by", "kept"),
            ("x-keep", "1"),
        ]);
        let hop_by_hop = HopByHop::find(&headers);
        // Only a present name outside the fixed list is kept aside.
        assert_eq!(hop_by_hop.named, [HeaderName::from_static("x-gone")]);
        hop_by_hop.remove_from(&mut headers);
        assert_eq!(names(&headers), ["close-by", "x-keep"]);
    }

    #[test]
    fn request_keeps_te_trailers_only() {
        let mut headers = map(&[("te", "gzip, Trailers;q=1"), ("connection", "TE")]);
        strip_request_hop_by_hop(&mut headers);
        assert_eq!(
            headers.get_all(header::TE).iter().collect::<Vec<_>>(),
            ["trailers"]
        );
        assert!(headers.get(header::CONNECTION).is_none());

        let mut headers = map(&[("te", "deflate")]);
        strip_request_hop_by_hop(&mut headers);
        assert!(headers.get(header::TE).is_none());
    }
}
