//! `multipart/form-data` bodies (phase: classify), parsed by a line-for-line
//! port of Django's own parser (`django/http/multipartparser.py`, Django
//! 5.2: `MultiPartParser._parse`, `LazyStream`, `ChunkIter`,
//! `BoundaryIter`, `parse_boundary_stream`), so every quirk is Django's:
//!
//! - the body is read in chunks of 65,536 bytes (the upload handlers'
//!   `chunk_size`), whatever the network's framing; the port regroups the
//!   stream the same way, so the verdict does not depend on how it arrived;
//! - a part ends wherever `--boundary` occurs, at a line start or not; one
//!   `\n` then one `\r` before it are dropped; the preamble and whatever
//!   follows the closing `--boundary--` are parts too;
//! - a part's headers must end (`\r\n\r\n`) within its first 1,024 bytes,
//!   else the request is refused if the part is that long, and the part is
//!   skipped if it is shorter;
//! - header lines are split on `\r\n`, decoded as strict UTF-8 (a line that
//!   is not is dropped) and parsed by `parse_header_parameters`
//!   ([`super::header`]); the header name is what precedes the first `:`,
//!   lowercased, not stripped;
//! - a part is a field if its last `content-disposition` line has no
//!   non-empty `filename`, a file if it has one; the field's name is the
//!   `name` parameter with ASCII whitespace stripped;
//! - a part without a `content-disposition` or a `name`, or a file whose
//!   name sanitizes to nothing (`""`, `.`, `..`), is skipped *without being
//!   read*, so what Django had not yet pulled of it is parsed as the next
//!   part (the port pulls exactly what Django pulls);
//! - `Content-Transfer-Encoding: base64` is decoded for fields (non-strict,
//!   the raw bytes kept if decoding fails) and for files (an error refuses
//!   the request; one Django 5.1 reads, as its loop differs, is unsure);
//! - field values are decoded as UTF-8 with replacement; the last field of
//!   a name wins (`QueryDict.get`).
//!
//! Django's size and count limits (`DATA_UPLOAD_MAX_MEMORY_SIZE`,
//! `DATA_UPLOAD_MAX_NUMBER_FIELDS`, `DATA_UPLOAD_MAX_NUMBER_FILES`) are
//! settings, so they are not applied: a body over them is judged by its
//! flag, which errs towards counting. File contents are never kept; a
//! field's value is kept only for the flag, up to a cap. What is held at
//! once is bounded by two chunks and a header block.

mod base64;
mod lazy;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use self::base64::Base64Of51;
use crate::pybase64::{A2bBase64, b64decode};
use lazy::{Kind, Lazy, Part, Source};

use super::form::FieldValue;
use super::header;

/// Django's `ChunkIter` size: the default upload handlers' `chunk_size`.
const CHUNK: usize = 64 * 1024;
/// `MAX_TOTAL_HEADER_SIZE`.
const MAX_HEADER: usize = 1024;

/// Why a multipart body is not judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum MultipartError {
    /// Django raises while parsing: the backend answers 400 (or 500).
    Invalid(String),
    /// Django's outcome is not known here (see the flag docs' table).
    Unsure(String),
}

type Result<T> = std::result::Result<T, MultipartError>;

fn invalid(what: impl Into<String>) -> MultipartError {
    MultipartError::Invalid(format!("invalid multipart body: {}", what.into()))
}

/// Django's checks in `MultiPartParser.__init__` on the raw `Content-Type`:
/// the separator (`--` + boundary) to split on.
pub(super) fn separator(content_type: &str) -> Result<Vec<u8>> {
    if !content_type.starts_with("multipart/") {
        return Err(invalid(format!("Invalid Content-Type: {content_type}")));
    }
    if !content_type.is_ascii() {
        return Err(invalid("Invalid non-ASCII Content-Type in multipart"));
    }
    let parsed = header::parse(content_type);
    if parsed.rfc2231.iter().any(|n| n == "boundary") {
        return Err(MultipartError::Unsure(
            "an RFC 2231 boundary*= parameter in Content-Type".to_owned(),
        ));
    }
    let boundary = parsed.param("boundary").unwrap_or("");
    // `boundary_re = [ -~]{0,200}[!-~]`, fullmatch.
    let ok = !boundary.is_empty()
        && boundary.len() <= 201
        && boundary.bytes().all(|b| (b' '..=b'~').contains(&b))
        && !boundary.ends_with(' ');
    if !ok {
        return Err(invalid(format!(
            "Invalid boundary in multipart: {boundary}"
        )));
    }
    let mut sep = b"--".to_vec();
    sep.extend_from_slice(boundary.as_bytes());
    Ok(sep)
}

/// What a multipart body holds under the flag's name.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// The last plain field's value (`request.POST`).
    pub(super) field: Option<FieldValue>,
    /// A file was stored under that name (`request.FILES`): Django stores
    /// a file once the next part begins (`handle_file_complete`), so a file
    /// that ends the body is not stored.
    pub(super) file: bool,
}

/// What the multipart `body`, split on `separator` (from [`separator`]),
/// holds under the name `flag`.
pub(super) async fn last_value<S>(
    body: S,
    separator: &[u8],
    flag: &str,
    cap: usize,
) -> Result<Found>
where
    S: Stream<Item = Bytes> + Send + Unpin,
{
    let mut input = Lazy::new(Source {
        stream: body,
        pending: BytesMut::new(),
        ended: false,
    });
    let rollback = separator.len() + 6;
    let mut found = Found::default();
    let mut file_pending = false;
    // `for item_type, meta_data, field_stream in Parser(stream, boundary)`
    loop {
        // `InterBoundaryIter.__next__` → `BoundaryIter.__init__`.
        let first = input.read(1).await?;
        if first.is_empty() {
            break;
        }
        input.unget(first)?;
        let mut part = Part {
            lazy: Lazy::new(()),
            done: false,
            rollback,
            separator,
        };
        let (kind, headers) = part.headers(&mut input).await?;
        found.file |= std::mem::take(&mut file_pending);
        let Some(disposition) = headers
            .iter()
            .rev()
            .find(|h| h.name == "content-disposition")
        else {
            continue;
        };
        let Some(name) = disposition.value.param("name") else {
            continue;
        };
        let field_name =
            name.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
        let base64 = headers
            .iter()
            .rev()
            .find(|h| h.name == "content-transfer-encoding")
            .is_some_and(|h| header::py_strip(&h.main) == "base64");
        match kind {
            Kind::Field => {
                let keep = field_name == flag;
                let mut value =
                    Capped::new(cap.saturating_mul(2).saturating_add(8), keep && base64);
                while let Some(chunk) = part.next(&mut input).await? {
                    if keep {
                        value.push(&chunk);
                    }
                }
                if keep {
                    found.field = Some(value.finish(cap));
                }
            }
            Kind::File => {
                match sanitized_is_empty(disposition.value.param("filename").unwrap_or("")) {
                    Some(true) => continue,
                    Some(false) => {}
                    None => {
                        return Err(MultipartError::Unsure(
                            "a file name Django's sanitize_file_name may empty".to_owned(),
                        ));
                    }
                }
                // Django 5.2's loop (the 1-3 bytes past a multiple of 4
                // carried on, any left at the end refused), and Django
                // 5.1's beside it (`Base64Of51`): the chat app pins 5.1.2.
                let mut remainder: Vec<u8> = Vec::new();
                let mut refused = false;
                let mut of_51 = Base64Of51::default();
                while let Some(chunk) = part.next(&mut input).await? {
                    if !base64 {
                        continue;
                    }
                    of_51.chunk(&chunk);
                    if refused {
                        continue;
                    }
                    remainder.extend(chunk.iter().copied().filter(|b| !is_ascii_space(*b)));
                    let aligned = remainder.len() / 4 * 4;
                    if aligned == 0 {
                        continue;
                    }
                    if b64decode(&remainder[..aligned]).is_none() {
                        refused = true;
                        remainder.clear();
                        continue;
                    }
                    remainder.drain(..aligned);
                }
                if refused || !remainder.is_empty() {
                    if of_51.refuses() {
                        return Err(invalid("Could not decode base64 data."));
                    }
                    // Refused by 5.2, read by 5.1: `QQ==A` decodes to `A`
                    // (tests/it/attack_app_stack.rs).
                    return Err(MultipartError::Unsure(
                        "a base64 file Django 5.2 refuses and Django 5.1 reads".to_owned(),
                    ));
                }
                file_pending = field_name == flag;
            }
            Kind::Raw => {}
        }
    }
    Ok(found)
}

/// `bytes.isspace` (what `bytes.split()` splits on).
fn is_ascii_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Whether `sanitize_file_name` makes `name` empty (`""`, `.`, `..`), so
/// Django skips the part; `None` when that needs `html.unescape` (an `&`)
/// or Unicode's printable classes beyond letters and digits.
fn sanitized_is_empty(name: &str) -> Option<bool> {
    if name.contains('&') {
        return None;
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    let last = last.rsplit('\\').next().unwrap_or(last);
    let mut dots = 0;
    let mut unsure = false;
    for c in last.chars() {
        if c == '.' {
            dots += 1;
        } else if c.is_ascii() {
            if (' '..='~').contains(&c) {
                return Some(false);
            }
        } else if c.is_alphanumeric() {
            return Some(false);
        } else {
            unsure = true;
        }
    }
    if unsure { None } else { Some(dots <= 2) }
}

/// A field's value, kept up to a byte budget: the raw bytes and, for a
/// base64 field, their decoding as they stream (Django decodes the whole
/// field, and keeps the raw bytes if decoding fails).
struct Capped {
    raw: Vec<u8>,
    raw_over: bool,
    decoded: Option<(A2bBase64, Vec<u8>, bool)>,
    budget: usize,
}

impl Capped {
    fn new(budget: usize, base64: bool) -> Self {
        Self {
            raw: Vec::new(),
            raw_over: false,
            decoded: base64.then(|| (A2bBase64::standard(), Vec::new(), false)),
            budget,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        keep(&mut self.raw, &mut self.raw_over, chunk, self.budget);
        if let Some((state, out, over)) = &mut self.decoded {
            let mut piece = Vec::new();
            state.feed(chunk, &mut piece);
            keep(out, over, &piece, self.budget);
        }
    }

    /// `force_str(data, "utf-8", errors="replace")`, after base64 if asked.
    fn finish(self, cap: usize) -> FieldValue {
        let (data, over) = match self.decoded {
            Some((state, out, over)) if state.ok() => (out, over),
            _ => (self.raw, self.raw_over),
        };
        if over {
            // More than `budget` bytes: longer than the cap once decoded.
            return FieldValue::Long;
        }
        let text = String::from_utf8_lossy(&data);
        if text.len() > cap {
            FieldValue::Long
        } else {
            FieldValue::Text(text.into_owned())
        }
    }
}

fn keep(into: &mut Vec<u8>, over: &mut bool, bytes: &[u8], budget: usize) {
    if *over {
        return;
    }
    if into.len() + bytes.len() > budget {
        *over = true;
        *into = Vec::new();
    } else {
        into.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `last_value` keeps of the one field `f` holding `value`.
    async fn one_field(value: &[u8], cap: usize) -> Option<FieldValue> {
        let mut body = b"--b\r\nContent-Disposition: form-data; name=f\r\n\r\n".to_vec();
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n--b--\r\n");
        let body = futures_util::stream::iter([Bytes::from(body)]);
        last_value(body, b"--b", "f", cap).await.ok()?.field
    }

    #[tokio::test]
    async fn a_field_of_the_cap_is_kept_and_one_byte_more_is_long() {
        let kept = |n| Some(FieldValue::Text("x".repeat(n)));
        assert_eq!(one_field(&[b'x'; 100], 100).await, kept(100));
        assert_eq!(one_field(&[b'x'; 101], 100).await, Some(FieldValue::Long));
        // 34 bytes that are not UTF-8 read as 34 U+FFFD: 102 bytes.
        assert_eq!(one_field(&[0xff; 34], 100).await, Some(FieldValue::Long));
    }

    #[test]
    fn a_value_is_held_up_to_its_budget_and_no_more() {
        let (mut held, mut over) = (Vec::new(), false);
        keep(&mut held, &mut over, &[b'x'; 300], 208);
        assert!(over && held.is_empty(), "one push past the budget");
        let (mut held, mut over) = (Vec::new(), false);
        keep(&mut held, &mut over, &[b'x'; 200], 208);
        keep(&mut held, &mut over, &[b'x'; 8], 208);
        assert_eq!((held.len(), over), (208, false), "exactly the budget");
        keep(&mut held, &mut over, b"x", 208);
        assert!(over && held.is_empty(), "one byte past it");
        keep(&mut held, &mut over, b"", 208);
        assert!(over && held.is_empty(), "and nothing after");
    }

    #[test]
    fn file_names_that_sanitize_to_nothing() {
        for (name, empty) in [
            ("a.png", Some(true).map(|_| false)),
            ("..", Some(true)),
            ("x/..", Some(true)),
            ("x\\.", Some(true)),
            ("...", Some(false)),
            ("\u{1}.", Some(true)),
            ("دوغ", Some(false)),
            ("&period;", None),
            ("\u{200b}", None),
        ] {
            assert_eq!(sanitized_is_empty(name), empty, "{name:?}");
        }
    }

    #[tokio::test]
    async fn a_read_of_n_bytes_takes_n_bytes_and_puts_the_rest_back() {
        // `LazyStream.read(size)`: at most `size` bytes out, the rest of
        // the chunk put back for the next read.
        let mut input = Lazy::new(Source {
            stream: futures_util::stream::iter([
                Bytes::from_static(b"abc"),
                Bytes::from_static(b"def"),
            ]),
            pending: BytesMut::new(),
            ended: false,
        });
        assert_eq!(input.read(1).await, Ok(Bytes::from_static(b"a")));
        assert_eq!(input.read(4).await, Ok(Bytes::from_static(b"bcde")));
        assert_eq!(input.read(9).await, Ok(Bytes::from_static(b"f")));
        assert_eq!(input.read(1).await, Ok(Bytes::new()));
    }

    #[tokio::test]
    async fn sixty_fields_in_one_read_are_not_a_stuck_parser() {
        // `_update_unget_history` refuses the body when more than 40 of the
        // last 50 ungets have one size. Sixty short fields in one 64 KiB
        // read make 180 ungets of distinct sizes but the 1-byte peeks (at
        // most 18 of one size, counted in Django 5.2.19): Django reads
        // them all, and the flag after them.
        let mut body = Vec::new();
        for _ in 0..60 {
            body.extend_from_slice(b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n");
        }
        body.extend_from_slice(
            b"--b\r\nContent-Disposition: form-data; name=f\r\n\r\ntrue\r\n--b--\r\n",
        );
        let body = futures_util::stream::iter([Bytes::from(body)]);
        let found = last_value(body, b"--b", "f", 100).await;
        assert_eq!(
            found.map(|f| f.field),
            Ok(Some(FieldValue::Text("true".to_owned())))
        );
    }

    #[tokio::test]
    async fn a_skipped_part_resumes_where_djangos_read_was_rolled_back() {
        // `BoundaryIter` puts back the last `len(separator) + 6` bytes of
        // each read (9 for `--b`). A part with no Content-Disposition is
        // skipped unread: the rest of its first 64 KiB read is dropped and
        // the next part starts at the bytes put back, `CHUNK - 9`. Pinned
        // against Django 5.2.19's `MultiPartParser`: the field is read with
        // its headers at exactly that offset, and not one byte either side.
        for (at, want) in [
            (CHUNK - 9, Some(FieldValue::Text("true".to_owned()))),
            (CHUNK - 10, None),
            (CHUNK - 8, None),
        ] {
            let mut body = b"--b\r\nX-Skip: 1\r\n\r\n".to_vec();
            body.resize(at, b'x');
            body.extend_from_slice(
                b"Content-Disposition: form-data; name=f\r\n\r\ntrue\r\n--b--\r\n",
            );
            let body = futures_util::stream::iter([Bytes::from(body)]);
            let found = last_value(body, b"--b", "f", 100).await;
            assert_eq!(found.map(|f| f.field), Ok(want), "headers at {at}");
        }
    }
}
