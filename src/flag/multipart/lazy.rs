//! The stream machinery of Django's multipart parser, ported
//! (`django/http/multipartparser.py`: `ChunkIter`, `LazyStream`,
//! `BoundaryIter`, `parse_boundary_stream`); `super` drives it as
//! `MultiPartParser._parse` does.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::{CHUNK, MAX_HEADER, MultipartError, Result, invalid};
use crate::flag::header;

/// `ChunkIter`: the body in chunks of exactly [`CHUNK`] bytes (the last
/// shorter), as `request.read(chunk_size)` gives them, whatever the
/// network's chunks.
pub(super) struct Source<S> {
    pub(super) stream: S,
    pub(super) pending: BytesMut,
    pub(super) ended: bool,
}

impl<S: Stream<Item = Bytes> + Unpin> Source<S> {
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.pending.len() >= CHUNK {
                return Some(self.pending.split_to(CHUNK).freeze());
            }
            if self.ended {
                return (!self.pending.is_empty()).then(|| self.pending.split().freeze());
            }
            match self.stream.next().await {
                Some(more) => self.pending.extend_from_slice(&more),
                None => self.ended = true,
            }
        }
    }
}

/// `LazyStream`'s state: bytes put back, and the unget history that makes
/// Django refuse a parser that seems stuck.
pub(super) struct Lazy<P> {
    producer: P,
    leftover: Bytes,
    history: VecDeque<usize>,
}

impl<P> Lazy<P> {
    pub(super) fn new(producer: P) -> Self {
        Self {
            producer,
            leftover: Bytes::new(),
            history: VecDeque::new(),
        }
    }

    /// `LazyStream.unget`.
    pub(super) fn unget(&mut self, bytes: Bytes) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        // `_update_unget_history`: more than 40 of the last 50 ungets of one
        // size is `SuspiciousMultipartForm` (a 400).
        self.history.push_front(bytes.len());
        self.history.truncate(50);
        if self.history.iter().filter(|&&n| n == bytes.len()).count() > 40 {
            return Err(invalid("The multipart parser got stuck"));
        }
        self.leftover = if self.leftover.is_empty() {
            bytes
        } else {
            let mut joined = BytesMut::with_capacity(bytes.len() + self.leftover.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.leftover);
            joined.freeze()
        };
        Ok(())
    }

    fn take_leftover(&mut self) -> Option<Bytes> {
        (!self.leftover.is_empty()).then(|| std::mem::take(&mut self.leftover))
    }
}

impl<S: Stream<Item = Bytes> + Unpin> Lazy<Source<S>> {
    /// `LazyStream.__next__` over `ChunkIter`.
    async fn next(&mut self) -> Option<Bytes> {
        if let Some(left) = self.take_leftover() {
            return Some(left);
        }
        let chunk = self.producer.next().await;
        self.history.clear();
        chunk
    }

    /// `LazyStream.read(size)`.
    pub(super) async fn read(&mut self, size: usize) -> Result<Bytes> {
        let mut remaining = size;
        let mut out = BytesMut::new();
        while remaining != 0 {
            let Some(mut chunk) = self.next().await else {
                break;
            };
            let rest = chunk.split_off(remaining.min(chunk.len()));
            self.unget(rest)?;
            remaining -= chunk.len();
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

/// What a part is (`parse_boundary_stream`'s `TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Raw,
    Field,
    File,
}

/// One parsed header line of a part.
pub(super) struct PartHeader {
    /// Before the first `:` of the lowercased main value.
    pub(super) name: String,
    /// After it.
    pub(super) main: String,
    /// The parsed line.
    pub(super) value: header::HeaderValue,
}

/// One part: a `LazyStream` over a `BoundaryIter` on the shared input.
pub(super) struct Part<'a> {
    pub(super) lazy: Lazy<()>,
    pub(super) done: bool,
    pub(super) rollback: usize,
    pub(super) separator: &'a [u8],
}

impl Part<'_> {
    /// `BoundaryIter.__next__`.
    async fn boundary_next<S: Stream<Item = Bytes> + Unpin>(
        &mut self,
        input: &mut Lazy<Source<S>>,
    ) -> Result<Option<Bytes>> {
        if self.done {
            return Ok(None);
        }
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut read = 0;
        loop {
            match input.next().await {
                Some(bytes) => {
                    read += bytes.len();
                    let empty = bytes.is_empty();
                    chunks.push(bytes);
                    if read > self.rollback || empty {
                        break;
                    }
                }
                None => {
                    self.done = true;
                    break;
                }
            }
        }
        if chunks.is_empty() {
            return Ok(None);
        }
        let chunk = if chunks.len() == 1 {
            chunks.pop().unwrap_or_default()
        } else {
            let mut joined = BytesMut::with_capacity(read);
            for c in &chunks {
                joined.extend_from_slice(c);
            }
            joined.freeze()
        };
        if let Some(index) = memchr::memmem::find(&chunk, self.separator) {
            // `_find_boundary`: back up over one `\n`, then one `\r`.
            let mut end = index;
            let next = index + self.separator.len();
            if chunk.get(end.saturating_sub(1)) == Some(&b'\n') {
                end -= 1;
            }
            if chunk.get(end.saturating_sub(1)) == Some(&b'\r') {
                end -= 1;
            }
            input.unget(chunk.slice(next..))?;
            self.done = true;
            return Ok(Some(chunk.slice(..end)));
        }
        if chunk.len() <= self.rollback {
            self.done = true;
            return Ok(Some(chunk));
        }
        let cut = chunk.len() - self.rollback;
        input.unget(chunk.slice(cut..))?;
        Ok(Some(chunk.slice(..cut)))
    }

    /// `LazyStream.__next__` over the `BoundaryIter`.
    pub(super) async fn next<S: Stream<Item = Bytes> + Unpin>(
        &mut self,
        input: &mut Lazy<Source<S>>,
    ) -> Result<Option<Bytes>> {
        if let Some(left) = self.lazy.take_leftover() {
            return Ok(Some(left));
        }
        let chunk = self.boundary_next(input).await?;
        self.lazy.history.clear();
        Ok(chunk)
    }

    /// `LazyStream.read(size)` over the `BoundaryIter`.
    async fn read<S: Stream<Item = Bytes> + Unpin>(
        &mut self,
        input: &mut Lazy<Source<S>>,
        size: usize,
    ) -> Result<Bytes> {
        let mut remaining = size;
        let mut out = BytesMut::new();
        while remaining != 0 {
            let Some(mut chunk) = self.next(input).await? else {
                break;
            };
            let rest = chunk.split_off(remaining.min(chunk.len()));
            self.lazy.unget(rest)?;
            remaining -= chunk.len();
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    /// `parse_boundary_stream`: the part's kind and header lines.
    pub(super) async fn headers<S: Stream<Item = Bytes> + Unpin>(
        &mut self,
        input: &mut Lazy<Source<S>>,
    ) -> Result<(Kind, Vec<PartHeader>)> {
        let chunk = self.read(input, MAX_HEADER).await?;
        let Some(end) = memchr::memmem::find(&chunk, b"\r\n\r\n") else {
            self.lazy.unget(chunk.clone())?;
            if chunk.len() < MAX_HEADER {
                return Ok((Kind::Raw, Vec::new()));
            }
            return Err(invalid("Request max total header size exceeded."));
        };
        self.lazy.unget(chunk.slice(end + 4..))?;
        let mut kind = Kind::Raw;
        let mut headers = Vec::new();
        for line in chunk[..end].split_inner(b"\r\n") {
            let Ok(line) = std::str::from_utf8(line) else {
                continue;
            };
            let value = header::parse(line);
            // A part Django 5.1 would name (or call a file) otherwise.
            if header::read_otherwise_by_django_5_1(line, &value, &["name", "filename"]) {
                return Err(MultipartError::Unsure(format!(
                    "a part header Django 5.1 and 5.2 read differently: {line:?}"
                )));
            }
            // Decoded, raising, or skipping the line: not known here.
            if let Some(name) = value.rfc2231.first() {
                return Err(MultipartError::Unsure(format!(
                    "an RFC 2231 parameter {name:?} in a part header"
                )));
            }
            let Some((name, main)) = value.key.split_once(':') else {
                continue;
            };
            if name == "content-disposition" {
                kind = if value.param("filename").is_some_and(|f| !f.is_empty()) {
                    Kind::File
                } else {
                    Kind::Field
                };
            }
            headers.push(PartHeader {
                name: name.to_owned(),
                main: main.to_owned(),
                value,
            });
        }
        if kind == Kind::Raw {
            self.lazy.unget(chunk)?;
        }
        Ok((kind, headers))
    }
}

/// `bytes.split(sep)`.
trait SplitInner {
    fn split_inner<'a>(&'a self, sep: &'a [u8]) -> Box<dyn Iterator<Item = &'a [u8]> + 'a>;
}

impl SplitInner for [u8] {
    fn split_inner<'a>(&'a self, sep: &'a [u8]) -> Box<dyn Iterator<Item = &'a [u8]> + 'a> {
        let mut rest = Some(self);
        Box::new(std::iter::from_fn(move || {
            let s = rest?;
            match memchr::memmem::find(s, sep) {
                Some(i) => {
                    rest = Some(&s[i + sep.len()..]);
                    Some(&s[..i])
                }
                None => {
                    rest = None;
                    Some(s)
                }
            }
        }))
    }
}
