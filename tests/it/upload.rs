//! Large uploads on an inspected route, end to end: the real proxy between a
//! client that streams a ~50 MB `multipart/form-data` body (five 10 MB
//! files of pseudo-random bytes, generated as they are sent, chunked) and
//! an upstream on loopback.
//!
//! - the body reaches the upstream byte for byte, with a `Content-Length`,
//!   and is counted when it asks for an image, not when it does not, and
//!   the last flag field wins even after 50 MB of files;
//! - it waits for the decision in a temporary file in `spool_dir`: seen open
//!   in `/proc/self/fd` while the upload is under way, gone once answered.
//!
//! The memory it takes is measured in `upload_memory.rs`, which shares the
//! uploads and helpers here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::proxy::{Answer, Proxy};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, stream};
use http::{Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::StreamBody;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::RwLock;

/// The memory test runs alone (write lock); the others share (read lock),
/// so their 50 MB recordings never show in its peak.
pub(crate) static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

/// A Wednesday, 13:30 in Tehran.
const NOW: &str = "2031-05-14T10:00:00Z";
const SEND: &str = "/chat/session/17/send/";
const BOUNDARY: &str = "----quota-proxy-upload-7MA4YWxkTrZu0gW";
pub(crate) const MIB: usize = 1024 * 1024;
/// `body_buffer_bytes` in every test.
pub(crate) const BUFFER: usize = MIB;
/// What the client sends per chunk.
pub(crate) const CHUNK: usize = 64 * 1024;

/// The config of most tests: uploads up to 64 MiB, 1 MiB in memory, the
/// rest in files under `spool_dir`.
pub(crate) fn config(spool_dir: &Path) -> String {
    config_with(spool_dir, 64 * MIB, BUFFER)
}

fn config_with(spool_dir: &Path, max: usize, buffer: usize) -> String {
    format!(
        r#"
max_body_bytes = {max}
body_buffer_bytes = {buffer}
spool_dir = {dir:?}
[timeouts]
response_head = "20s"
[identity]
default_plan = "free"
[plans]
free = {{ daily = 3, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/chat/session/{{session_id}}/send/"
deny_status = 403
"#,
        dir = spool_dir.display().to_string(),
    )
}

pub(crate) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .expect("test instant")
        .with_timezone(&Utc)
}

/// A `spool_dir` of the test's own, removed with it.
pub(crate) fn spool_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("spool dir");
    let path = dir.path().canonicalize().expect("canonical spool dir");
    (dir, path)
}

/// One part of an upload.
#[derive(Clone)]
enum Part {
    Field(&'static str, &'static str),
    /// A file of `len` pseudo-random bytes drawn from `seed`.
    File {
        len: usize,
        seed: u64,
    },
}

/// A multipart body described by its parts and generated as it is sent, in
/// [`CHUNK`]-byte chunks: the test never holds it.
#[derive(Clone)]
pub(crate) struct Upload(Vec<Part>);

/// A piece of the generated body.
enum Piece {
    Text(Bytes),
    Random { left: usize, state: u64 },
}

impl Upload {
    /// The issue's upload: message, use_web_search, generate_image and five
    /// 10 MB files.
    pub(crate) fn chat(generate_image: &'static str) -> Self {
        let mut parts = vec![
            Part::Field("message", "a cat on the moon, like these photos"),
            Part::Field("use_web_search", "false"),
            Part::Field("generate_image", generate_image),
        ];
        parts.extend((1..=5).map(|seed| Part::File {
            len: 10_000_000,
            seed,
        }));
        Upload(parts)
    }

    fn pieces(&self) -> Vec<Piece> {
        let mut pieces = Vec::new();
        for (i, part) in self.0.iter().enumerate() {
            let (head, body) = match part {
                Part::Field(name, value) => (
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
                    Piece::Text(Bytes::from_static(value.as_bytes())),
                ),
                Part::File { len, seed } => (
                    format!(
                        "Content-Disposition: form-data; name=\"files\"; filename=\"photo{i}.jpg\"\r\n\
                         Content-Type: image/jpeg\r\n"
                    ),
                    Piece::Random {
                        left: *len,
                        state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
                    },
                ),
            };
            pieces.push(Piece::Text(Bytes::from(format!(
                "--{BOUNDARY}\r\n{head}\r\n"
            ))));
            pieces.push(body);
            pieces.push(Piece::Text(Bytes::from_static(b"\r\n")));
        }
        pieces.push(Piece::Text(Bytes::from(format!("--{BOUNDARY}--\r\n"))));
        pieces
    }

    /// The body, chunk by chunk.
    fn chunks(&self) -> impl Iterator<Item = Bytes> + Send + 'static {
        let mut pieces = std::collections::VecDeque::from(self.pieces());
        std::iter::from_fn(move || {
            loop {
                match pieces.front_mut()? {
                    Piece::Text(text) => {
                        let text = std::mem::take(text);
                        pieces.pop_front();
                        if !text.is_empty() {
                            return Some(text);
                        }
                    }
                    Piece::Random { left: 0, .. } => {
                        pieces.pop_front();
                    }
                    Piece::Random { left, state } => {
                        let n = CHUNK.min(*left);
                        *left -= n;
                        let mut chunk = Vec::with_capacity(n + 8);
                        while chunk.len() < n {
                            // xorshift64
                            *state ^= *state << 13;
                            *state ^= *state >> 7;
                            *state ^= *state << 17;
                            chunk.extend_from_slice(&state.to_le_bytes());
                        }
                        chunk.truncate(n);
                        return Some(Bytes::from(chunk));
                    }
                }
            }
        })
    }

    /// Length and digest of the body.
    pub(crate) fn digest(&self) -> Digest {
        let mut digest = Digest::default();
        self.chunks().for_each(|c| digest.update(&c));
        digest
    }
}

/// Length and FNV-1a hash of a byte stream, whatever its cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest {
    pub(crate) len: u64,
    pub(crate) hash: u64,
}

impl Default for Digest {
    fn default() -> Self {
        Self {
            len: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Digest {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        for &b in bytes {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn of(bytes: &[u8]) -> Self {
        let mut digest = Self::default();
        digest.update(bytes);
        digest
    }
}

/// Temporary files of this process open in `dir` (an unlinked file still
/// shows, as `dir/… (deleted)`).
fn open_in(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Waits (bounded) until `open_in(dir) == n`.
pub(crate) async fn wait_open_in(dir: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_in(dir) != n {
        assert!(
            Instant::now() < deadline,
            "waited for {n} open files in the spool dir, see {}",
            open_in(dir)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The upload as a client body. With `pause`, the client stops after 30 MB
/// until the proxy has a temporary file open in that directory.
fn body(
    upload: &Upload,
    pause: Option<PathBuf>,
) -> impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Unpin + 'static {
    let chunks = upload.chunks();
    Box::pin(stream::unfold(
        (chunks, 0usize, pause),
        |(mut chunks, sent, mut pause)| async move {
            if sent >= 30_000_000
                && let Some(dir) = pause.take()
            {
                wait_open_in(&dir, 1).await;
            }
            let chunk = chunks.next()?;
            let sent = sent + chunk.len();
            Some((Ok(Frame::data(chunk)), (chunks, sent, pause)))
        },
    ))
}

/// Sends the upload as a chunked body (no `Content-Length`) from `user`.
pub(crate) async fn send(
    addr: SocketAddr,
    user: &str,
    upload: &Upload,
    pause: Option<PathBuf>,
) -> Answer {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let request = post(addr, user, &content_type).body(StreamBody::new(body(upload, pause)));
    answer(request.expect("request")).await
}

/// A `POST` to the inspected route from `user` on the free plan.
pub(crate) fn post(addr: SocketAddr, user: &str, content_type: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{SEND}"))
        .header("x-user-id", user)
        .header("x-subscription-type", "free")
        .header("content-type", content_type)
}

/// Sends `request` to the proxy and reads the whole answer.
pub(crate) async fn answer<B>(request: Request<B>) -> Answer
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.expect("proxy answers");
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("answer body").to_bytes(),
    }
}

/// The upload's `generate_image` as Django's `request.POST` would read it:
/// the last plain field of that name (a later field overrides an earlier
/// one, whatever lies between).
fn last_flag(body: &[u8]) -> Option<&[u8]> {
    let head = b"form-data; name=\"generate_image\"\r\n\r\n";
    let at = memchr::memmem::rfind(body, head)? + head.len();
    let value = &body[at..];
    let end = memchr::memmem::find(value, b"\r\n--")?;
    Some(&value[..end])
}

/// An upstream like the chat view: it saves an image, and says so in
/// `X-Images-Saved`, only when the upload's own last flag field is `true`
/// (the app's `== 'true'`), never because the proxy counted it.
async fn flag_reading_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let saved = last_flag(&request.body) == Some(b"true");
        Reply::ok().header("x-images-saved", if saved { "1" } else { "0" })
    })
    .await
}

/// The request the upstream saw was exactly `upload`, framed by length.
fn assert_forwarded(upstream: &TestUpstream, upload: &Upload) {
    let seen = upstream.last_request();
    let sent = upload.digest();
    assert_eq!(Digest::of(&seen.body), sent, "forwarded byte for byte");
    assert_eq!(
        seen.header("content-length"),
        Some(sent.len.to_string().as_str())
    );
    assert_eq!(seen.header("transfer-encoding"), None);
}

#[tokio::test]
async fn flagged_upload_is_forwarded_exactly_and_counted() {
    let _shared = EXCLUSIVE.read().await;
    let (_dir, spool) = spool_dir();
    let upstream = flag_reading_upstream().await;
    let proxy = Proxy::memory(&config(&spool), &upstream, now()).await;
    let upload = Upload::chat("true");

    // The client waits mid-upload until the proxy spools to a file.
    let answer = send(proxy.addr, "alice", &upload, Some(spool.clone())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_forwarded(&upstream, &upload);
    assert_eq!(proxy.wait_settled("alice", 1).await[0].used, 1);
    wait_open_in(&spool, 0).await;
    assert_eq!(std::fs::read_dir(&spool).expect("spool dir").count(), 0);
}

#[tokio::test]
async fn unflagged_upload_is_forwarded_exactly_and_not_counted() {
    let _shared = EXCLUSIVE.read().await;
    let (_dir, spool) = spool_dir();
    let upstream = flag_reading_upstream().await;
    let proxy = Proxy::memory(&config(&spool), &upstream, now()).await;
    let upload = Upload::chat("false");

    let answer = send(proxy.addr, "bob", &upload, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_forwarded(&upstream, &upload);
    assert_eq!(
        proxy.store.calls(),
        0,
        "no store call for an unflagged upload"
    );
    wait_open_in(&spool, 0).await;
}

/// A chat upload whose `generate_image` field says `first` before two
/// 3 MB files and `last` after them.
fn flag_around_two_files(first: &'static str, last: &'static str) -> Upload {
    let file = |seed| Part::File {
        len: 3_000_000,
        seed,
    };
    Upload(vec![
        Part::Field("message", "a cat"),
        Part::Field("generate_image", first),
        file(7),
        file(8),
        Part::Field("generate_image", last),
    ])
}

#[tokio::test]
async fn a_later_flag_field_overrides_an_earlier_one() {
    let _shared = EXCLUSIVE.read().await;
    let (_dir, spool) = spool_dir();

    let upstream = flag_reading_upstream().await;
    let proxy = Proxy::memory(&config(&spool), &upstream, now()).await;
    let true_then_false = flag_around_two_files("true", "false");
    let answer = send(proxy.addr, "carol", &true_then_false, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_forwarded(&upstream, &true_then_false);
    assert_eq!(proxy.store.calls(), 0, "the last field says false");

    let false_then_true = flag_around_two_files("false", "true");
    let answer = send(proxy.addr, "carol", &false_then_true, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_forwarded(&upstream, &false_then_true);
    assert_eq!(
        proxy.wait_settled("carol", 1).await[0].used,
        1,
        "the last field says true"
    );
    wait_open_in(&spool, 0).await;
}

/// A user already at the limit sends an upload whose flag field says
/// `false` first and `true` last, after 6 MB of files (so the body is
/// spooled to a file before the verdict): denied on that very request, never
/// forwarded, and the spool file is gone. The same upload with the fields
/// the other way round is forwarded without a store call.
#[tokio::test]
async fn a_late_flag_after_a_spooled_file_is_denied_at_the_limit() {
    let _shared = EXCLUSIVE.read().await;
    let (_dir, spool) = spool_dir();
    let upstream = flag_reading_upstream().await;
    let proxy = Proxy::memory(&config(&spool), &upstream, now()).await;
    proxy.fill("full", 3).await;
    let calls = proxy.store.calls();

    // The client waits mid-upload until the proxy spools to a file.
    let late_true = flag_around_two_files("false", "true");
    let denied = send(proxy.addr, "full", &late_true, Some(spool.clone())).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text());
    assert_eq!(upstream.count(), 0, "denied before the upstream");
    assert_eq!(proxy.store.calls(), calls + 1, "one reserve, refused");
    wait_open_in(&spool, 0).await;

    let late_false = flag_around_two_files("true", "false");
    let answer = send(proxy.addr, "full", &late_false, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_forwarded(&upstream, &late_false);
    assert_eq!(proxy.store.calls(), calls + 1, "no store call");
    assert_eq!(proxy.wait_settled("full", 3).await[0].used, 3);
    wait_open_in(&spool, 0).await;
}

#[tokio::test]
async fn upload_over_max_body_bytes_is_refused_and_its_file_removed() {
    let _shared = EXCLUSIVE.read().await;
    let (_dir, spool) = spool_dir();
    let upstream = TestUpstream::always(Reply::ok()).await;
    let config = config_with(&spool, 200_000, 64 * 1024);
    let proxy = Proxy::memory(&config, &upstream, now()).await;
    let upload = Upload(vec![
        Part::Field("generate_image", "true"),
        Part::File {
            len: 210_000,
            seed: 9,
        },
    ]);
    let answer = send(proxy.addr, "dave", &upload, None).await;
    assert_eq!(
        answer.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer.text()
    );
    assert_eq!(upstream.count(), 0);
    assert_eq!(proxy.store.calls(), 0);
    wait_open_in(&spool, 0).await;
}
