//! Base64 parts as Django 5.1 decodes them: its file loop run beside
//! 5.2's (the chat app pins 5.1.2), so a part one version reads and the
//! other refuses is known. Both run CPython's lenient decoder
//! ([`crate::pybase64`]).

use super::is_ascii_space;
use crate::pybase64::A2bBase64;

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
    open: Option<(A2bBase64, usize)>,
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
                None => (A2bBase64::standard(), 0, rest.len()),
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

    fn decoded(&mut self, state: &A2bBase64) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
