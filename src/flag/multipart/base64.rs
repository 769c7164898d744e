//! Base64 parts as Django decodes them: CPython's lenient decoder, fed
//! as the chunks arrive, and Django 5.1's file loop run beside 5.2's (the
//! chat app pins 5.1.2), so a part one version reads and the other
//! refuses is known.

use super::is_ascii_space;

/// `binascii.a2b_base64(s, strict_mode=False)` (what `base64.b64decode`
/// runs), fed piece by piece: characters outside the alphabet are skipped,
/// a pad after two or three characters of a quad ends the input; it fails
/// (Python raises) when the input ends inside a quad.
#[derive(Debug, Default)]
pub(super) struct Base64 {
    quad: u8,
    left: u32,
    pads: u8,
    done: bool,
}

impl Base64 {
    pub(super) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
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
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => continue,
            };
            let v = u32::from(v);
            self.pads = 0;
            match self.quad {
                0 => {
                    self.quad = 1;
                    self.left = v;
                }
                1 => {
                    self.quad = 2;
                    out.push(((self.left << 2) | (v >> 4)) as u8);
                    self.left = v & 0x0f;
                }
                2 => {
                    self.quad = 3;
                    out.push(((self.left << 4) | (v >> 2)) as u8);
                    self.left = v & 0x03;
                }
                _ => {
                    self.quad = 0;
                    out.push(((self.left << 6) | v) as u8);
                    self.left = 0;
                }
            }
        }
    }

    pub(super) fn ok(&self) -> bool {
        self.done || self.quad == 0
    }
}

/// Django 5.1's base64 file loop (`MultiPartParser._parse`, 5.1.x, the
/// chat app's pin), run beside 5.2's on the same chunks: each chunk, its
/// whitespace dropped, is read on with `field_stream.read(4 - remaining)`
/// (raw bytes, taken from the chunks after it) until its length is a
/// multiple of 4 or the part ends, and `base64.b64decode`d whole, where an
/// error raises. What the read-ahead took is gone from the next chunk,
/// whose rest is a chunk of its own. 5.2 carries the 1-3 bytes over
/// instead, and raises on any left at the end: `QQ==A` is refused by 5.2
/// and decodes to `A` in 5.1 (the decoder stops at the padding).
#[derive(Debug, Default)]
pub(super) struct Base64Of51 {
    /// The chunk being read on: its decoder and its length modulo 4.
    open: Option<(Base64, usize)>,
    /// Raw bytes the current `read(4 - remaining)` still takes.
    owed: usize,
    /// A `b64decode` raised.
    failed: bool,
    /// The decoder's output, not kept.
    scratch: Vec<u8>,
}

impl Base64Of51 {
    pub(super) fn chunk(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() && !self.failed {
            let (mut state, rem, take) = match self.open.take() {
                // Read on: `owed` raw bytes, whitespace or not.
                Some((state, rem)) => (state, rem, self.owed.min(rest.len())),
                // `for chunk in field_stream`: the rest is a chunk.
                None => (Base64::default(), 0, rest.len()),
            };
            let (head, tail) = rest.split_at(take);
            rest = tail;
            self.scratch.clear();
            // The decoder skips whitespace, as `b"".join(chunk.split())`
            // drops it.
            state.feed(head, &mut self.scratch);
            let rem = (rem + head.iter().filter(|b| !is_ascii_space(**b)).count()) % 4;
            self.owed = self.owed.saturating_sub(take);
            if self.owed > 0 {
                // The read goes on into the next chunk.
                self.open = Some((state, rem));
            } else if rem == 0 {
                self.decoded(&state);
            } else {
                self.owed = 4 - rem;
                self.open = Some((state, rem));
            }
        }
    }

    fn decoded(&mut self, state: &Base64) {
        self.failed |= !state.ok();
    }

    /// At the end of the part: whether Django 5.1 raised.
    pub(super) fn refuses(mut self) -> bool {
        if let Some((state, _)) = self.open.take() {
            self.decoded(&state);
        }
        self.failed
    }
}

/// Whole-input [`Base64`]: `None` where Python raises.
pub(super) fn b64decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut state = Base64::default();
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    state.feed(input, &mut out);
    state.ok().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_pythons_lenient_decoder() {
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
    fn base64_files_are_refused_where_django_5_1_refuses_them() {
        // Pinned against Django 5.1.2 on CPython 3.11: its file loop over a
        // `LazyStream` of these chunks raises or not.
        let cases: &[(&[&[u8]], bool)] = &[
            (&[b"QQ==A"], false),
            (&[b"abcde"], true),
            (&[b"dHJ1ZQ"], true),
            (&[b"dHJ1ZQ=="], false),
            (&[b"dHJ", b"1ZQ=="], false),
            (&[b"dHJ1Z", b"Q=="], false),
            (&[b"QQ==AB", b"CD"], false),
            (&[b"QQ==A", b"BCDE"], true),
            (&[b"A", b" \n", b"BC", b"D"], false),
            (&[b"AB=", b"=A"], true),
            (&[b"ABC", b"=AB"], true),
            (&[b"AB", b"CD=E"], true),
            (&[b"A", b"B", b"C"], true),
            (&[b"QQ", b"==", b"x"], true),
            (&[b"QQ=", b"=xy"], true),
            (&[b"AAAAA", b"AAA=x"], true),
            (&[b"AAA", b"\n\nA=", b"AAAA"], true),
            (&[b"AA==", b"AAAAA"], true),
        ];
        for (chunks, refused) in cases {
            let mut of_51 = Base64Of51::default();
            for chunk in *chunks {
                of_51.chunk(chunk);
            }
            assert_eq!(of_51.refuses(), *refused, "{chunks:?}");
        }
    }
}
