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
