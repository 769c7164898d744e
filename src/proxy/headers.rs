//! Header rules of the forward phase, as pure functions over a
//! [`HeaderMap`]: hop-by-hop removal (RFC 9110 §7.6.1) in both directions,
//! and the `X-Forwarded-*` headers the upstream reads to learn who the
//! client is.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`: the chain of client addresses.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the host the client asked for.
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    HopByHop::find(headers).remove_from(headers);
}

/// Removes the hop-by-hop headers of a request, like [`strip_hop_by_hop`],
/// but keeps `TE: trailers`: it tells the upstream that trailers reach the
/// client (gRPC-style servers refuse to answer without it). The client's
/// other transfer codings are the proxy's business, not the upstream's.
pub(crate) fn strip_request_hop_by_hop(headers: &mut HeaderMap) {
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

/// Appends `peer` to `X-Forwarded-For`, merging every line the client sent
/// into one (`a, b, peer`): some frameworks read only the first line, and a
/// second line could be mistaken for a trusted hop.
pub(crate) fn append_forwarded_for(headers: &mut HeaderMap, peer: IpAddr) {
    let mut merged: Vec<u8> = Vec::with_capacity(64);
    // One lookup for reading and replacing the lines.
    let entry = headers.entry(X_FORWARDED_FOR);
    if let Entry::Occupied(lines) = &entry {
        for value in lines.iter() {
            let value = value.as_bytes().trim_ascii();
            if value.is_empty() {
                continue;
            }
            merged.extend_from_slice(value);
            merged.extend_from_slice(b", ");
        }
    }
    write_address(&mut merged, peer);
    // The buffer becomes the value without a copy.
    let Ok(value) = HeaderValue::try_from(merged) else {
        // Unreachable in practice: the parts were valid header values and
        // the separator is ASCII. Keep the client's value rather than drop it.
        tracing::debug!("cannot merge X-Forwarded-For; left as the client sent it");
        return;
    };
    match entry {
        Entry::Occupied(mut lines) => {
            lines.insert(value);
        }
        Entry::Vacant(slot) => {
            slot.insert(value);
        }
    }
}

/// Appends `peer` as text. A dual-stack listener reports IPv4 clients as
/// `::ffff:a.b.c.d`; they are written as `a.b.c.d`. IPv4 is written with
/// `itoa`: `Ipv4Addr`'s `Display` cost about 1,500 instructions per request
/// (callgrind), as much as a tenth of a whole pass-through request.
fn write_address(out: &mut Vec<u8>, peer: IpAddr) {
    match peer.to_canonical() {
        IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        v6 => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// Sets `X-Forwarded-Proto: http` and `X-Forwarded-Host: <host>` unless the
/// client sent them: when a front proxy (TLS terminator, load balancer) set
/// them, its values are the true ones and are kept.
pub(crate) fn set_forwarded_defaults(headers: &mut HeaderMap, original_host: Option<&HeaderValue>) {
    headers
        .entry(X_FORWARDED_PROTO)
        .or_insert_with(|| HeaderValue::from_static("http"));
    if let Some(host) = original_host {
        headers
            .entry(X_FORWARDED_HOST)
            .or_insert_with(|| host.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

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

    #[test]
    fn forwarded_for_is_one_merged_line() {
        let mut headers = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", " 198.51.100.2, 192.0.2.3 "),
            ("x-forwarded-for", ""),
        ]);
        append_forwarded_for(&mut headers, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));
        let values: Vec<_> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
        assert_eq!(values, ["203.0.113.1, 198.51.100.2, 192.0.2.3, 10.0.0.7"]);
    }

    #[test]
    fn forwarded_for_starts_with_peer_and_unmaps_ipv4() {
        let mut headers = HeaderMap::new();
        let mapped = Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped();
        append_forwarded_for(&mut headers, IpAddr::V6(mapped));
        assert_eq!(headers[&X_FORWARDED_FOR], "192.0.2.9");

        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(headers[&X_FORWARDED_FOR], "::1");

        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, IpAddr::V4(Ipv4Addr::new(255, 0, 100, 1)));
        assert_eq!(headers[&X_FORWARDED_FOR], "255.0.100.1");
    }

    #[test]
    fn forwarded_defaults_keep_a_front_proxys_values() {
        let host = HeaderValue::from_static("app.example");
        let mut headers = HeaderMap::new();
        set_forwarded_defaults(&mut headers, Some(&host));
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
        assert_eq!(headers[&X_FORWARDED_HOST], "app.example");

        let mut headers = map(&[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "front.example"),
        ]);
        set_forwarded_defaults(&mut headers, Some(&host));
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
        assert_eq!(headers[&X_FORWARDED_HOST], "front.example");

        let mut headers = HeaderMap::new();
        set_forwarded_defaults(&mut headers, None);
        assert!(headers.get(&X_FORWARDED_HOST).is_none());
    }
}
