//! The bytes of a JSON body as Python's text: `json.loads`'s
//! `detect_encoding` and `errors="surrogatepass"` decoding
//! (`Lib/json/__init__.py`), or DRF's UTF-8 stream reader. The text is kept
//! as generalized UTF-8 (surrogates allowed), borrowed when the body
//! already is.

use super::{Decoding, JsonError, invalid};

/// The body as generalized UTF-8 (surrogates allowed, as Python's `str`
/// holds them), borrowed when it already is.
pub(super) fn decode(
    body: &[u8],
    decoding: Decoding,
) -> Result<std::borrow::Cow<'_, [u8]>, JsonError> {
    use std::borrow::Cow;
    match decoding {
        Decoding::Drf => {
            // `codecs.getreader("utf-8")`: strict, and an incomplete sequence
            // at the very end is held back, never decoded.
            match std::str::from_utf8(body) {
                Ok(_) => {}
                Err(e) if e.error_len().is_none() => {
                    return Ok(Cow::Borrowed(&body[..e.valid_up_to()]));
                }
                Err(e) => return Err(invalid("invalid UTF-8", e.valid_up_to())),
            }
            if body.starts_with(b"\xef\xbb\xbf") {
                return Err(invalid("Unexpected UTF-8 BOM", 0));
            }
            Ok(Cow::Borrowed(body))
        }
        Decoding::Loads => {
            // `detect_encoding` (Lib/json/__init__.py), in its order.
            let b = body;
            if b.starts_with(b"\x00\x00\xfe\xff") {
                return utf32(&b[4..], true).map(Cow::Owned);
            }
            if b.starts_with(b"\xff\xfe\x00\x00") {
                return utf32(&b[4..], false).map(Cow::Owned);
            }
            if b.starts_with(b"\xfe\xff") {
                return utf16(&b[2..], true).map(Cow::Owned);
            }
            if b.starts_with(b"\xff\xfe") {
                return utf16(&b[2..], false).map(Cow::Owned);
            }
            if let Some(rest) = b.strip_prefix(b"\xef\xbb\xbf") {
                check_utf8_surrogatepass(rest)?;
                return Ok(Cow::Borrowed(rest));
            }
            if b.len() >= 4 {
                if b[0] == 0 {
                    return if b[1] != 0 {
                        utf16(b, true).map(Cow::Owned)
                    } else {
                        utf32(b, true).map(Cow::Owned)
                    };
                }
                if b[1] == 0 {
                    return if b[2] != 0 || b[3] != 0 {
                        utf16(b, false).map(Cow::Owned)
                    } else {
                        utf32(b, false).map(Cow::Owned)
                    };
                }
            } else if b.len() == 2 {
                if b[0] == 0 {
                    return utf16(b, true).map(Cow::Owned);
                }
                if b[1] == 0 {
                    return utf16(b, false).map(Cow::Owned);
                }
            }
            check_utf8_surrogatepass(b)?;
            Ok(Cow::Borrowed(b))
        }
    }
}

/// UTF-8 with `errors="surrogatepass"`: strict UTF-8, plus the three-byte
/// forms of U+D800..U+DFFF.
fn check_utf8_surrogatepass(mut b: &[u8]) -> Result<(), JsonError> {
    let mut offset = 0;
    loop {
        match std::str::from_utf8(b) {
            Ok(_) => return Ok(()),
            Err(e) => {
                let at = e.valid_up_to();
                let rest = &b[at..];
                if rest.len() >= 3
                    && rest[0] == 0xed
                    && (0xa0..=0xbf).contains(&rest[1])
                    && (0x80..=0xbf).contains(&rest[2])
                {
                    b = &rest[3..];
                    offset += at + 3;
                } else {
                    return Err(invalid("invalid UTF-8", offset + at));
                }
            }
        }
    }
}

/// Appends code point `c` (a surrogate allowed) as generalized UTF-8.
fn push_code_point(out: &mut Vec<u8>, c: u32) {
    if c < 0x80 {
        out.push(c as u8);
    } else if c < 0x800 {
        out.extend_from_slice(&[0xc0 | (c >> 6) as u8, 0x80 | (c & 0x3f) as u8]);
    } else if c < 0x10000 {
        out.extend_from_slice(&[
            0xe0 | (c >> 12) as u8,
            0x80 | ((c >> 6) & 0x3f) as u8,
            0x80 | (c & 0x3f) as u8,
        ]);
    } else {
        out.extend_from_slice(&[
            0xf0 | (c >> 18) as u8,
            0x80 | ((c >> 12) & 0x3f) as u8,
            0x80 | ((c >> 6) & 0x3f) as u8,
            0x80 | (c & 0x3f) as u8,
        ]);
    }
}

/// UTF-16 with `surrogatepass`: pairs join, lone surrogates stay.
fn utf16(b: &[u8], big_endian: bool) -> Result<Vec<u8>, JsonError> {
    if !b.len().is_multiple_of(2) {
        return Err(invalid("truncated UTF-16", b.len()));
    }
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|u| {
            if big_endian {
                u16::from_be_bytes([u[0], u[1]])
            } else {
                u16::from_le_bytes([u[0], u[1]])
            }
        })
        .collect();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < units.len() {
        let u = u32::from(units[i]);
        if (0xd800..0xdc00).contains(&u)
            && let Some(&low) = units.get(i + 1)
            && (0xdc00..0xe000).contains(&low)
        {
            push_code_point(
                &mut out,
                0x10000 + ((u - 0xd800) << 10) + (u32::from(low) - 0xdc00),
            );
            i += 2;
            continue;
        }
        push_code_point(&mut out, u);
        i += 1;
    }
    Ok(out)
}

/// UTF-32 with `surrogatepass`.
fn utf32(b: &[u8], big_endian: bool) -> Result<Vec<u8>, JsonError> {
    if !b.len().is_multiple_of(4) {
        return Err(invalid("truncated UTF-32", b.len()));
    }
    let mut out = Vec::with_capacity(b.len() / 2);
    for (n, u) in b.chunks_exact(4).enumerate() {
        let c = if big_endian {
            u32::from_be_bytes([u[0], u[1], u[2], u[3]])
        } else {
            u32::from_le_bytes([u[0], u[1], u[2], u[3]])
        };
        if c > 0x10ffff {
            return Err(invalid("code point out of range in UTF-32", n * 4));
        }
        push_code_point(&mut out, c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `json.loads`'s text for `body` as generalized UTF-8, or the error's
    /// message.
    fn loads(body: &[u8]) -> Result<Vec<u8>, String> {
        match decode(body, Decoding::Loads) {
            Ok(text) => Ok(text.into_owned()),
            Err(JsonError::Invalid(m) | JsonError::Unsure(m)) => Err(m),
        }
    }

    /// Every UTF-8 length at both ends of its range, and the two ends of
    /// the surrogate pairs' range.
    const EDGES: &str =
        "\"a\u{0}\u{7f}\u{80}\u{7ff}\u{800}\u{d7ff}\u{e000}\u{ffff}\u{10000}\u{10ffff}\"";

    fn utf16(s: &str, be: bool) -> Vec<u8> {
        s.encode_utf16()
            .flat_map(|u| if be { u.to_be_bytes() } else { u.to_le_bytes() })
            .collect()
    }

    fn utf32(s: &str, be: bool) -> Vec<u8> {
        s.chars()
            .flat_map(|c| {
                let c = u32::from(c);
                if be { c.to_be_bytes() } else { c.to_le_bytes() }
            })
            .collect()
    }

    fn bom(mark: &[u8], rest: Vec<u8>) -> Vec<u8> {
        [mark, &rest].concat()
    }

    #[test]
    fn every_encoding_json_detects_decodes_as_python_does() {
        // CPython 3.11: `b.decode(json.detect_encoding(b), "surrogatepass")
        // == EDGES` for each of these bodies.
        for (name, body) in [
            ("utf-16-le", utf16(EDGES, false)),
            ("utf-16-be", utf16(EDGES, true)),
            ("utf-32-le", utf32(EDGES, false)),
            ("utf-32-be", utf32(EDGES, true)),
            ("utf-16 (LE BOM)", bom(b"\xff\xfe", utf16(EDGES, false))),
            ("utf-16 (BE BOM)", bom(b"\xfe\xff", utf16(EDGES, true))),
            (
                "utf-32 (LE BOM)",
                bom(b"\xff\xfe\x00\x00", utf32(EDGES, false)),
            ),
            (
                "utf-32 (BE BOM)",
                bom(b"\x00\x00\xfe\xff", utf32(EDGES, true)),
            ),
            ("utf-8-sig", bom(b"\xef\xbb\xbf", EDGES.as_bytes().to_vec())),
            ("utf-8", EDGES.as_bytes().to_vec()),
        ] {
            assert_eq!(loads(&body).as_deref(), Ok(EDGES.as_bytes()), "{name}");
        }
        // Two bytes: a NUL names UTF-16, as in `detect_encoding`; three
        // bytes are UTF-8 whatever they hold.
        assert_eq!(loads(b"1\x00").as_deref(), Ok(&b"1"[..]));
        assert_eq!(loads(b"\x001").as_deref(), Ok(&b"1"[..]));
        assert_eq!(loads(b"1\x00\x00").as_deref(), Ok(&b"1\x00\x00"[..]));
    }

    #[test]
    fn surrogates_pass_as_python_passes_them() {
        // CPython 3.11, `.encode("utf-8", "surrogatepass")` of the decoded
        // text: a UTF-16 pair joins, lone halves stay, in either order.
        let units = [0x22, 0xd800, 0x41, 0xdc00, 0xdbff];
        let lone = b"\"\xed\xa0\x80A\xed\xb0\x80\xed\xaf\xbf";
        let le: Vec<u8> = units.iter().flat_map(|u: &u16| u.to_le_bytes()).collect();
        let be: Vec<u8> = units.iter().flat_map(|u: &u16| u.to_be_bytes()).collect();
        assert_eq!(loads(&le).as_deref(), Ok(&lone[..]));
        assert_eq!(loads(&be).as_deref(), Ok(&lone[..]));
        // UTF-32 holds surrogates as code points; past U+10FFFF is an error
        // at the unit's position.
        let cps = |cps: &[u32]| {
            cps.iter()
                .flat_map(|c| c.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        assert_eq!(
            loads(&cps(&[0x22, 0xd800, 0xdfff])).as_deref(),
            Ok(&b"\"\xed\xa0\x80\xed\xbf\xbf"[..])
        );
        assert_eq!(
            loads(&cps(&[0x22, 0x0011_0000])),
            Err("invalid JSON: code point out of range in UTF-32 at byte 4".to_owned())
        );
        // UTF-8 with surrogatepass: ED A0..BF 80..BF is a surrogate, at the
        // very end too; D7FF is plain UTF-8; anything else is an error at
        // Python's position.
        for ok in [
            &b"\"\xed\xa0\x80\""[..],
            b"\"\xed\xbf\xbf\"",
            b"\"\xed\x9f\xbf\"",
            b"\"\xed\xa0\x80",
        ] {
            assert_eq!(loads(ok).as_deref(), Ok(ok), "{ok:x?}");
        }
        for (bad, at) in [
            (&b"\"\xed\xc0\x80\""[..], 1),
            (b"\"\xed\xa0\x80\xff\"", 4),
            (b"\"\xed\xa0\x80\xed\xa0\x80\xed\x7f\x80", 7),
            (b"\"\xed\xa0", 1),
        ] {
            assert_eq!(
                loads(bad),
                Err(format!("invalid JSON: invalid UTF-8 at byte {at}")),
                "{bad:x?}"
            );
        }
        // Truncated UTF-16 and UTF-32 are errors (Python: "truncated data").
        assert!(loads(b"\"\x00a\x00\"").is_err());
        assert!(loads(b"\"\x00\x00\x00a").is_err());
    }
}
