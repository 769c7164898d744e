//! CPython's lenient base64 decoder, `binascii.a2b_base64(s,
//! strict_mode=False)`, as the backend's Python reads base64: Django's
//! multipart parser (`base64.b64decode`) and PyJWT, simplejwt's verifier
//! (`base64.urlsafe_b64decode`). Characters outside the alphabet are
//! skipped, a pad after two or three characters of a quad ends the input,
//! the unused bits of a last character are dropped, and the input fails
//! (Python raises) when it ends inside a quad. The proxy must read what
//! Python reads: a strict decoder made tokens and file parts the app
//! accepts unreadable here (`tests/it/attack_identity.rs`,
//! `tests/it/attack_app_stack.rs`).

/// The decoder, fed piece by piece.
#[derive(Debug, Default)]
pub struct A2bBase64 {
    /// `-` and `_` read as `+` and `/` (`urlsafe_b64decode` translates
    /// them first), where `b64decode` skips them.
    url_safe: bool,
    quad: u8,
    left: u8,
    pads: u8,
    done: bool,
}

impl A2bBase64 {
    /// What `base64.b64decode` runs.
    pub fn standard() -> Self {
        Self::default()
    }

    /// What `base64.urlsafe_b64decode` runs: both alphabets.
    pub fn url_safe() -> Self {
        Self {
            url_safe: true,
            ..Self::default()
        }
    }

    /// Decodes `input` into `out`, after what was fed before.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &c in input {
            if self.done {
                return;
            }
            if c == b'=' {
                if self.quad >= 2 {
                    self.pads += 1;
                    if self.quad + self.pads >= 4 {
                        self.done = true;
                    }
                }
                continue;
            }
            let value = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'-' if self.url_safe => 62,
                b'_' if self.url_safe => 63,
                _ => continue,
            };
            self.pads = 0;
            match self.quad {
                0 => self.left = value,
                1 => {
                    out.push(self.left << 2 | value >> 4);
                    self.left = value & 0x0f;
                }
                2 => {
                    out.push(self.left << 4 | value >> 2);
                    self.left = value & 0x03;
                }
                _ => out.push(self.left << 6 | value),
            }
            self.quad = (self.quad + 1) % 4;
        }
    }

    /// Whether the input fed so far decodes (Python does not raise).
    pub fn ok(&self) -> bool {
        self.done || self.quad == 0
    }
}

/// `base64.b64decode(input)`: `None` where Python raises.
pub fn b64decode(input: &[u8]) -> Option<Vec<u8>> {
    decode_whole(A2bBase64::standard(), input)
}

/// `base64.urlsafe_b64decode(input)`: `None` where Python raises.
pub fn urlsafe_b64decode(input: &[u8]) -> Option<Vec<u8>> {
    decode_whole(A2bBase64::url_safe(), input)
}

fn decode_whole(mut decoder: A2bBase64, input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    decoder.feed(input, &mut out);
    decoder.ok().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64decode_is_pythons_lenient_decoder() {
        // Pinned against CPython 3.11 `base64.b64decode`.
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"dHJ1ZQ==", Some(b"true")),
            (b"dHJ1ZQ", None),
            (b"dHJ1Z", None),
            (b"dHJ1ZQ==garbage", Some(b"true")),
            (b"d!H!J1ZQ==", Some(b"true")),
            (b"dHJ1ZQ=", None),
            (b"dH=J1ZQ==", Some(b"true")),
            (b"=dHJ1ZQ==", Some(b"true")),
            (b"dHJ1ZQ=x=", Some(b"true\x0c")),
            (b"a===", None),
            (b"ab=c", None),
            (b"abc=d", Some(b"i\xb7")),
            (b"", Some(b"")),
            (b"+/09aZ+/", Some(b"\xfb\xfd=i\x9f\xbf")),
            // `-` and `_` are junk to `b64decode`.
            (b"-_+/09aZ+/", Some(b"\xfb\xfd=i\x9f\xbf")),
        ];
        for (input, want) in cases {
            assert_eq!(
                b64decode(input).as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn urlsafe_b64decode_reads_both_alphabets() {
        // Pinned against CPython 3.11 `base64.urlsafe_b64decode`.
        assert_eq!(
            urlsafe_b64decode(b"-_8=").as_deref(),
            Some(&b"\xfb\xff"[..])
        );
        assert_eq!(
            urlsafe_b64decode(b"+/8=").as_deref(),
            Some(&b"\xfb\xff"[..])
        );
        assert_eq!(urlsafe_b64decode(b"-_8").as_deref(), None);
    }

    #[test]
    fn fed_in_pieces_it_reads_as_whole() {
        let input = b"d!HJ1Z\nQ==ignored";
        for split in 0..=input.len() {
            let mut decoder = A2bBase64::standard();
            let mut out = Vec::new();
            decoder.feed(&input[..split], &mut out);
            decoder.feed(&input[split..], &mut out);
            assert!(decoder.ok());
            assert_eq!(out, b"true", "split at {split}");
        }
    }
}
