//! Header rules of the forward phase, as pure functions over a
//! [`HeaderMap`]: the `X-Forwarded-*` headers the upstream reads to learn
//! who the client is (hop-by-hop removal is [`crate::hop_by_hop`]).

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue};

/// `X-Forwarded-For`: the chain of client addresses.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the host the client asked for.
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

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
    use crate::hop_by_hop::test_map as map;

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
