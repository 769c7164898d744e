//! The spool (phase: read, for uploads): an inspected `multipart/form-data`
//! body is read frame by frame and never held whole. Each chunk goes
//!
//! - to the flag parser ([`crate::flag::detect_stream`]) through a queue
//!   of [`PARSER_QUEUE`] chunks, so a slow parser slows the reading instead
//!   of piling chunks up; the parser skips file parts without keeping them;
//! - into a [`Spool`]: memory up to `body_buffer_bytes`, then an anonymous
//!   temporary file in `spool_dir` (nginx's `client_body_buffer_size` and
//!   `client_body_temp_path`), where the bytes wait for the decision.
//!
//! The decision needs the whole body (the last flag field wins, as in
//! Django), so both run to the end of the body; then [`SpooledBody`]
//! replays the exact bytes, memory part then file part, in
//! [`REPLAY_CHUNK`]-byte reads, with an exact size hint (the upstream gets
//! a `Content-Length`, whatever framing the client used).
//!
//! The temporary file is made with `tempfile::tempfile_in`: unlinked at
//! creation (or never linked, with `O_TMPFILE`), it has no name to clean
//! up, and the disk space comes back when the body is dropped: once
//! forwarded, when the request is denied, or when the process dies.
//!
//! What one upload holds in memory while it is inspected: the spool's
//! memory part (at most `body_buffer_bytes`), the chunks queued for the
//! parser and multer's buffer (a few chunks, plus an unfinished part header
//! or preamble), and one write buffer of [`WRITE_BUFFER`] bytes.
//!
//! The memory part (as it grows) and the bytes in the file are taken from
//! the process's body budget ([`super::budget`]) as they come, and given
//! back when the [`SpooledBody`] is dropped. The same spool receives whole
//! pass-through bodies under `request_buffering = "all"`, with a judge that
//! reads nothing.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::fs::File;
use tokio::io::{AsyncRead, AsyncSeekExt, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::sync::mpsc;

#[cfg(test)]
use super::budget::BodyBudget;
use super::budget::{BodyCut, BudgetFull, Held, NoRoom};
use super::deadline::ClientBodyTimeout;
use crate::BoxError;

/// Chunks of the body waiting for the parser; the reader waits beyond.
const PARSER_QUEUE: usize = 4;

/// Bytes gathered before one write to the temporary file.
const WRITE_BUFFER: usize = 64 * 1024;

/// Bytes read from the temporary file per frame when the body is replayed.
const REPLAY_CHUNK: usize = 64 * 1024;

/// Where inspected multipart bodies wait for the decision.
#[derive(Debug, Clone)]
pub(crate) struct SpoolSettings {
    /// Bytes kept in memory (`body_buffer_bytes`); the rest goes to a file.
    pub(crate) memory_limit: usize,
    /// The directory of the temporary files (`spool_dir`).
    pub(crate) dir: PathBuf,
}

/// Why an inspected body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The body is longer than `max_body_bytes` (the limit).
    #[error("request body is larger than the {0}-byte limit")]
    TooLarge(u64),
    /// The client's body failed (reset, malformed chunk).
    #[error("the request body could not be read")]
    Client(#[source] BoxError),
    /// The client went silent for longer than `timeouts.client_body`.
    #[error(transparent)]
    Timeout(ClientBodyTimeout),
    /// The body budget had no room for it (`body_budget_bytes`).
    #[error(transparent)]
    Busy(#[from] BudgetFull),
    /// It stalled while the body budget was full, and was cut for room.
    #[error(transparent)]
    Cut(#[from] BodyCut),
    /// The temporary file could not be made or written.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl From<NoRoom> for ReadError {
    fn from(no_room: NoRoom) -> Self {
        match no_room {
            NoRoom::Full(full) => Self::Busy(full),
            NoRoom::Cut(cut) => Self::Cut(cut),
        }
    }
}

impl ReadError {
    /// A failure of the client's body: its silence, or anything else.
    pub(crate) fn client(error: BoxError) -> Self {
        match error.downcast::<ClientBodyTimeout>() {
            Ok(timeout) => Self::Timeout(*timeout),
            Err(error) => Self::Client(error),
        }
    }
}

/// A failure of the temporary file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpoolError {
    /// No temporary file could be made in `spool_dir`.
    #[error("cannot create a temporary file in {dir} (spool_dir): {error}")]
    Create { dir: PathBuf, error: io::Error },
    /// Writing the body to the file failed (a full disk, say).
    #[error("cannot write the request body to its temporary file: {0}")]
    Write(io::Error),
    /// Reading the body back failed.
    #[error("cannot read the request body back from its temporary file: {0}")]
    Read(io::Error),
    /// The file ended before the bytes written to it.
    #[error("the request body's temporary file ended {0} bytes early")]
    Truncated(u64),
}

/// Reads `body` (at most `max` bytes) into a spool, its bytes taken into
/// `held` (from the budget), while `judge` parses the same chunks from the [`Feed`] it is
/// given; returns the body to forward and `judge`'s output, once both have
/// seen the whole body.
///
/// `judge` may stop early (its verdict known): the reading goes on, spooling
/// only. Trailers are not kept, as in the buffered path.
pub(crate) async fn read<B, F, Fut>(
    body: B,
    max: u64,
    settings: &SpoolSettings,
    held: Held,
    judge: F,
) -> Result<(SpooledBody, Fut::Output), ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    F: FnOnce(Feed) -> Fut,
    Fut: Future,
{
    let (tx, rx) = mpsc::channel(PARSER_QUEUE);
    let judged = judge(Feed { rx });
    let spooled = async move {
        let mut parser = Some(tx);
        let mut spool = Spool::new(settings, held);
        let mut body = pin!(body);
        let mut total: u64 = 0;
        loop {
            // Converted at once: the client's error type need not be `Send`,
            // and nothing of it may live across the awaits below.
            let next = spool
                .held
                .until_cut(body.frame())
                .await?
                .map(|frame| frame.map_err(|e| e.into()));
            let Some(frame) = next else {
                break;
            };
            let frame = frame.map_err(ReadError::client)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total = total.saturating_add(data.len() as u64);
            if total > max {
                return Err(ReadError::TooLarge(max));
            }
            spool.held.arrived(data.len());
            spool.write(&data).await?;
            if let Some(tx) = &parser
                && tx.send(data).await.is_err()
            {
                // The parser has its verdict and dropped the feed.
                parser = None;
            }
        }
        // Dropping the sender ends the feed: the parser reads to the end.
        drop(parser);
        spool.held.read_whole();
        Ok(spool.finish().await?)
    };
    let (spooled, judged) = tokio::join!(spooled, judged);
    Ok((spooled?, judged))
}

/// The chunks of a body being spooled, as a stream for the parser; it ends
/// with the body.
#[derive(Debug)]
pub(crate) struct Feed {
    rx: mpsc::Receiver<Bytes>,
}

impl Stream for Feed {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.rx.poll_recv(cx)
    }
}

/// A body being written: memory up to the limit, then a temporary file.
/// Memory holds a prefix of the body: once one chunk goes to the file,
/// every later one does too.
struct Spool<'a> {
    settings: &'a SpoolSettings,
    memory: Vec<u8>,
    file: Option<BufWriter<File>>,
    file_len: u64,
    /// The memory part's capacity plus the file's length, from the budget.
    held: Held,
}

impl<'a> Spool<'a> {
    fn new(settings: &'a SpoolSettings, held: Held) -> Self {
        Self {
            settings,
            memory: Vec::new(),
            file: None,
            file_len: 0,
            held,
        }
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), ReadError> {
        let limit = self.settings.memory_limit;
        let needed = self.memory.len().saturating_add(chunk.len());
        if self.file.is_none() && needed <= limit {
            if needed > self.memory.capacity() {
                // Doubling, but never past the limit: the limit is the
                // memory the spool may take, not half of it.
                let doubled = needed
                    .max(self.memory.capacity().saturating_mul(2))
                    .min(limit);
                // The slack only if it is free now (as `read::grow`).
                let capacity = self.memory.capacity();
                let target = if self.held.try_grow(doubled - capacity) {
                    doubled
                } else {
                    self.held.grow(needed - capacity).await?;
                    needed
                };
                self.memory.reserve_exact(target - self.memory.len());
            }
            self.memory.extend_from_slice(chunk);
            return Ok(());
        }
        self.held.grow(chunk.len()).await?;
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(self.create().await?),
        };
        file.write_all(chunk).await.map_err(SpoolError::Write)?;
        self.file_len += chunk.len() as u64;
        Ok(())
    }

    async fn create(&self) -> Result<BufWriter<File>, SpoolError> {
        let dir = self.settings.dir.clone();
        tracing::debug!(
            dir = %dir.display(), buffered = self.memory.len(),
            "request body outgrew body_buffer_bytes; spooling the rest to a temporary file"
        );
        let made = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir)).await
        };
        let file = match made {
            Ok(Ok(file)) => file,
            Ok(Err(error)) => return Err(SpoolError::Create { dir, error }),
            Err(join) => {
                return Err(SpoolError::Create {
                    dir,
                    error: io::Error::other(join),
                });
            }
        };
        Ok(BufWriter::with_capacity(WRITE_BUFFER, File::from_std(file)))
    }

    async fn finish(self) -> Result<SpooledBody, SpoolError> {
        let file = match self.file {
            None => None,
            Some(mut writer) => {
                writer.flush().await.map_err(SpoolError::Write)?;
                let mut file = writer.into_inner();
                file.rewind().await.map_err(SpoolError::Read)?;
                Some(file)
            }
        };
        Ok(SpooledBody {
            memory: (!self.memory.is_empty()).then(|| Bytes::from(self.memory)),
            file,
            file_left: self.file_len,
            chunk: BytesMut::new(),
            _held: self.held,
        })
    }
}

/// A spooled body replayed: the memory part as one frame, then the
/// temporary file in [`REPLAY_CHUNK`]-byte frames. The file is closed (and
/// so removed) at its last byte, or when the body is dropped.
#[derive(Debug)]
pub(crate) struct SpooledBody {
    memory: Option<Bytes>,
    file: Option<File>,
    file_left: u64,
    chunk: BytesMut,
    /// The budget the spool took, given back with the body.
    _held: Held,
}

impl SpooledBody {
    /// Whether part of the body is in a temporary file.
    #[cfg(test)]
    fn spilled(&self) -> bool {
        self.file.is_some()
    }
}

impl Body for SpooledBody {
    type Data = Bytes;
    type Error = SpoolError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, SpoolError>>> {
        let this = self.get_mut();
        if let Some(memory) = this.memory.take() {
            return Poll::Ready(Some(Ok(Frame::data(memory))));
        }
        let Some(file) = &mut this.file else {
            return Poll::Ready(None);
        };
        let want = usize::try_from(this.file_left)
            .unwrap_or(usize::MAX)
            .min(REPLAY_CHUNK);
        // Kept across a `Pending`: the file holds the bytes it read meanwhile.
        this.chunk.resize(want, 0);
        let mut buf = ReadBuf::new(&mut this.chunk);
        let read = ready!(Pin::new(file).poll_read(cx, &mut buf));
        let filled = buf.filled().len();
        let result = match read {
            Err(e) => Err(SpoolError::Read(e)),
            Ok(()) if filled == 0 => Err(SpoolError::Truncated(this.file_left)),
            Ok(()) => {
                this.file_left -= filled as u64;
                this.chunk.truncate(filled);
                Ok(Frame::data(this.chunk.split().freeze()))
            }
        };
        if result.is_err() || this.file_left == 0 {
            this.file = None;
        }
        Poll::Ready(Some(result))
    }

    fn is_end_stream(&self) -> bool {
        self.memory.is_none() && self.file.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let memory = self.memory.as_ref().map_or(0, |m| m.len() as u64);
        SizeHint::with_exact(
            memory
                + if self.file.is_some() {
                    self.file_left
                } else {
                    0
                },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::StreamExt;
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn settings(memory_limit: usize) -> SpoolSettings {
        SpoolSettings {
            memory_limit,
            dir: std::env::temp_dir(),
        }
    }

    fn unbounded() -> Held {
        BodyBudget::new(u64::MAX).hold(None, u64::MAX)
    }

    /// `len` bytes that differ from chunk to chunk.
    fn pattern(len: usize) -> Bytes {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A client body of `bytes` in `size`-byte frames.
    fn frames(bytes: &Bytes, size: usize) -> impl Body<Data = Bytes, Error = Infallible> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = bytes
            .chunks(size)
            .map(|c| Ok(Frame::data(bytes.slice_ref(c))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    /// Spools `bytes` and returns the body and what the judge counted.
    async fn spool(bytes: &Bytes, size: usize, limit: usize) -> (SpooledBody, usize) {
        read(
            frames(bytes, size),
            u64::MAX,
            &settings(limit),
            unbounded(),
            |feed| feed.fold(0, |n, chunk| async move { n + chunk.len() }),
        )
        .await
        .expect("spooled")
    }

    /// The replayed bytes and how many frames they came in; every frame
    /// after the memory part is at most [`REPLAY_CHUNK`] bytes.
    async fn replay(body: SpooledBody) -> (Bytes, usize) {
        let mut body = pin!(body);
        let memory = body.memory.is_some();
        let mut all = BytesMut::new();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.expect("replayed").into_data().expect("data");
            if frames > 0 || !memory {
                assert!(data.len() <= REPLAY_CHUNK, "frame of {}", data.len());
            }
            all.extend_from_slice(&data);
            frames += 1;
        }
        assert!(body.is_end_stream());
        (all.freeze(), frames)
    }

    #[tokio::test]
    async fn small_body_stays_in_memory() {
        let bytes = pattern(1000);
        let (body, judged) = spool(&bytes, 100, 1024).await;
        assert_eq!(judged, 1000, "the judge saw every byte");
        assert!(!body.spilled());
        assert_eq!(body.size_hint().exact(), Some(1000));
        assert_eq!(replay(body).await, (bytes, 1));
    }

    #[tokio::test]
    async fn large_body_spills_and_replays_exactly() {
        let bytes = pattern(1_000_003);
        let (body, judged) = spool(&bytes, 8191, 100_000).await;
        assert_eq!(judged, bytes.len());
        assert!(body.spilled());
        let memory = body.memory.as_ref().map_or(0, Bytes::len);
        assert!(memory <= 100_000 && memory > 90_000, "memory part {memory}");
        assert_eq!(body.size_hint().exact(), Some(1_000_003));
        let (replayed, frames) = replay(body).await;
        assert_eq!(replayed, bytes);
        assert_eq!(frames, 1 + (1_000_003 - memory).div_ceil(REPLAY_CHUNK));
    }

    #[tokio::test]
    async fn zero_limit_sends_everything_to_the_file() {
        let bytes = pattern(5000);
        let (body, _) = spool(&bytes, 999, 0).await;
        assert!(body.spilled() && body.memory.is_none());
        assert_eq!(replay(body).await.0, bytes);
    }

    #[tokio::test]
    async fn empty_body_is_empty() {
        let (body, judged) = spool(&Bytes::new(), 1, 1024).await;
        assert_eq!(judged, 0);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn judge_that_stops_early_does_not_stop_the_spool() {
        let bytes = pattern(300_000);
        let (body, first) = read(
            frames(&bytes, 1000),
            u64::MAX,
            &settings(0),
            unbounded(),
            |mut feed| async move { feed.next().await.map(|c| c.len()) },
        )
        .await
        .expect("spooled");
        assert_eq!(first, Some(1000));
        assert_eq!(replay(body).await.0, bytes);
    }

    #[tokio::test]
    async fn longer_than_max_is_too_large() {
        let bytes = pattern(10_000);
        let result = read(
            frames(&bytes, 1000),
            9_999,
            &settings(0),
            unbounded(),
            |feed| feed.count(),
        )
        .await;
        assert!(matches!(result, Err(ReadError::TooLarge(9_999))));
        let exact = read(
            frames(&bytes, 1000),
            10_000,
            &settings(0),
            unbounded(),
            |feed| feed.count(),
        )
        .await;
        assert_eq!(exact.expect("at the limit").1, 10);
    }

    #[tokio::test]
    async fn missing_spool_dir_is_a_create_error() {
        let settings = SpoolSettings {
            memory_limit: 10,
            dir: PathBuf::from("/nonexistent/quota-proxy-spool"),
        };
        let body = Full::new(pattern(100));
        let result = read(body, u64::MAX, &settings, unbounded(), |feed| feed.count()).await;
        let err = result.expect_err("no file can be made");
        assert!(
            err.to_string()
                .starts_with("cannot create a temporary file in /nonexistent/quota-proxy-spool"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn the_budget_is_held_until_the_body_is_dropped() {
        let budget = BodyBudget::new(10_000_000);
        let bytes = pattern(300_000);
        let (body, _) = read(
            frames(&bytes, 1000),
            u64::MAX,
            &settings(100_000),
            budget.hold(None, u64::MAX),
            |feed| feed.count(),
        )
        .await
        .expect("spooled");
        // The memory part (its capacity: at most the limit) and the file.
        let held = 10_000_000 - budget.available();
        assert!((300_000..=300_000 + 100_000).contains(&held), "{held}");
        drop(body);
        assert_eq!(budget.available(), 10_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_past_the_budget_is_busy_and_gives_its_bytes_back() {
        let budget = BodyBudget::new(50_000);
        let bytes = pattern(100_000);
        let result = read(
            frames(&bytes, 1000),
            u64::MAX,
            &settings(10_000),
            budget.hold(None, u64::MAX),
            |feed| feed.count(),
        )
        .await;
        assert!(matches!(result, Err(ReadError::Busy(_))), "{result:?}");
        assert_eq!(budget.available(), 50_000);
    }
}
