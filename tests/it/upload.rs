//! Large uploads on an inspected route, end to end: the real proxy between a
//! client that streams a ~50 MB `multipart/form-data` body (five 10 MB
//! files of pseudo-random bytes, generated as they are sent, chunked) and
//! an upstream on loopback.
//!
//! - the body reaches the upstream byte for byte, with a `Content-Length`,
//!   and is counted when it asks for an image, not when it does not, and
//!   the last flag field wins even after 50 MB of files;
//! - it waits for the decision in a temporary file in `spool_dir`: seen open
//!   in `/proc/self/fd` while the upload is under way, gone once answered;
//! - the memory it takes stays bounded: every allocation of this test
//!   process (proxy, client and upstream alike) is counted by a global
//!   allocator, and the peak of live heap bytes during the upload is
//!   asserted, with a client and an upstream that hold no more than a
//!   chunk, so no test buffer can hide or inflate what the proxy holds.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::proxy::{Answer, Proxy, StoreChoice};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{Stream, stream};
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::RwLock;

/// Counts live heap bytes and their peak, for the whole test process.
struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is passed on to `System` unchanged; the counters are
// only arithmetic on the sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The memory test runs alone (write lock); the others share (read lock),
/// so their 50 MB recordings never show in its peak.
static EXCLUSIVE: RwLock<()> = RwLock::const_new(());

/// A Wednesday, 13:30 in Tehran.
const NOW: &str = "2031-05-14T10:00:00Z";
const SEND: &str = "/chat/session/17/send/";
const BOUNDARY: &str = "----quota-proxy-upload-7MA4YWxkTrZu0gW";
const MIB: usize = 1024 * 1024;
/// `body_buffer_bytes` in every test.
const BUFFER: usize = MIB;
/// What the client sends per chunk.
const CHUNK: usize = 64 * 1024;

/// The config of most tests: uploads up to 64 MiB, 1 MiB in memory, the
/// rest in files under `spool_dir`.
fn config(spool_dir: &Path) -> String {
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

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .expect("test instant")
        .with_timezone(&Utc)
}

/// A `spool_dir` of the test's own, removed with it.
fn spool_dir() -> (tempfile::TempDir, PathBuf) {
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
struct Upload(Vec<Part>);

/// A piece of the generated body.
enum Piece {
    Text(Bytes),
    Random { left: usize, state: u64 },
}

impl Upload {
    /// The issue's upload: message, use_web_search, generate_image and five
    /// 10 MB files.
    fn chat(generate_image: &'static str) -> Self {
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
    fn digest(&self) -> Digest {
        let mut digest = Digest::default();
        self.chunks().for_each(|c| digest.update(&c));
        digest
    }
}

/// Length and FNV-1a hash of a byte stream, whatever its cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest {
    len: u64,
    hash: u64,
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
    fn update(&mut self, bytes: &[u8]) {
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
async fn wait_open_in(dir: &Path, n: usize) {
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
async fn send(addr: SocketAddr, user: &str, upload: &Upload, pause: Option<PathBuf>) -> Answer {
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let request = post(addr, user, &content_type).body(StreamBody::new(body(upload, pause)));
    answer(request.expect("request")).await
}

/// A `POST` to the inspected route from `user` on the free plan.
fn post(addr: SocketAddr, user: &str, content_type: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{SEND}"))
        .header("x-user-id", user)
        .header("x-subscription-type", "free")
        .header("content-type", content_type)
}

/// Sends `request` to the proxy and reads the whole answer.
async fn answer<B>(request: Request<B>) -> Answer
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

#[tokio::test]
async fn a_later_flag_field_overrides_an_earlier_one() {
    let _shared = EXCLUSIVE.read().await;
    let (_dir, spool) = spool_dir();
    let file = |seed| Part::File {
        len: 3_000_000,
        seed,
    };
    let upload = |first, last| {
        Upload(vec![
            Part::Field("message", "a cat"),
            Part::Field("generate_image", first),
            file(7),
            file(8),
            Part::Field("generate_image", last),
        ])
    };

    let upstream = flag_reading_upstream().await;
    let proxy = Proxy::memory(&config(&spool), &upstream, now()).await;
    let true_then_false = upload("true", "false");
    let answer = send(proxy.addr, "carol", &true_then_false, None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_forwarded(&upstream, &true_then_false);
    assert_eq!(proxy.store.calls(), 0, "the last field says false");

    let false_then_true = upload("false", "true");
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
    let file = |seed| Part::File {
        len: 3_000_000,
        seed,
    };
    let upload = |first, last| {
        Upload(vec![
            Part::Field("message", "a cat"),
            Part::Field("generate_image", first),
            file(7),
            file(8),
            Part::Field("generate_image", last),
        ])
    };
    let upstream = flag_reading_upstream().await;
    let proxy = Proxy::memory(&config(&spool), &upstream, now()).await;
    proxy.fill("full", 3).await;
    let calls = proxy.store.calls();

    // The client waits mid-upload until the proxy spools to a file.
    let late_true = upload("false", "true");
    let denied = send(proxy.addr, "full", &late_true, Some(spool.clone())).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text());
    assert_eq!(upstream.count(), 0, "denied before the upstream");
    assert_eq!(proxy.store.calls(), calls + 1, "one reserve, refused");
    wait_open_in(&spool, 0).await;

    let late_false = upload("true", "false");
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

/// An upstream that hashes each request body as it streams in and answers
/// with its digest (`len hash`), holding no more than a frame. It reports
/// one saved image whatever it got: the memory tests that use it send only
/// flagged bodies, and measure memory, not the flag decision (the tests
/// above do that, with [`flag_reading_upstream`]).
async fn hashing_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let framing = format!(
                    "{:?} {:?}",
                    request.headers().get("content-length"),
                    request.headers().get("transfer-encoding")
                );
                let mut body = request.into_body();
                let mut digest = Digest::default();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        digest.update(&data);
                    }
                }
                let answer = format!("{} {:x} {framing}", digest.len, digest.hash);
                let mut response = Response::new(Full::new(Bytes::from(answer)));
                response
                    .headers_mut()
                    .insert("x-images-saved", http::HeaderValue::from_static("1"));
                Ok::<_, hyper::Error>(response)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A proxy on the memory store, spooling to `spool`, in front of
/// [`hashing_upstream`].
async fn hashing_proxy(spool: &Path) -> Proxy {
    let upstream = hashing_upstream().await;
    let authority = upstream.to_string().parse().expect("authority");
    Proxy::start(&config(spool), &authority, &StoreChoice::Memory, now()).await
}

/// Runs `work` and returns its output with the peak growth of the process's
/// live heap bytes meanwhile.
async fn peak_growth<T>(work: impl std::future::Future<Output = T>) -> (T, usize) {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let output = work.await;
    (output, PEAK.load(Ordering::Relaxed) - before)
}

/// Peak live heap bytes of the whole process, above what was live before,
/// while a 50 MB upload is inspected, spooled and forwarded. Measured: about
/// 3 MiB (1 MiB spool memory part, hyper's read buffers on three
/// connections, the parser queue and multer's buffer, the file write and
/// replay buffers); a proxy that held the body would pass 50 MB.
#[tokio::test]
async fn inspecting_a_50_mb_upload_holds_bounded_memory() {
    let _alone = EXCLUSIVE.write().await;
    let (_dir, spool) = spool_dir();
    let proxy = hashing_proxy(&spool).await;
    let upload = Upload::chat("true");
    let sent = upload.digest();

    let (answer, peak) = peak_growth(send(proxy.addr, "erin", &upload, Some(spool.clone()))).await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.text(),
        format!(
            "{} {:x} Some({:?}) None",
            sent.len,
            sent.hash,
            sent.len.to_string()
        ),
        "the upstream got the exact bytes, framed by length"
    );
    println!(
        "peak heap growth during a {} byte upload: {peak} bytes",
        sent.len
    );
    assert!(
        peak < BUFFER + 8 * MIB,
        "peak heap growth {peak} bytes while inspecting {} bytes",
        sent.len
    );
    assert_eq!(proxy.wait_settled("erin", 1).await[0].used, 1);
    wait_open_in(&spool, 0).await;
}

/// Sends a JSON body of `len` bytes asking for an image, with its
/// `Content-Length`, in 64 KiB chunks made as they go (the client holds no
/// more than one).
async fn send_json(addr: SocketAddr, user: &str, len: usize) -> Answer {
    const HEAD: &[u8] = b"{\"message\": \"";
    const TAIL: &[u8] = b"\", \"generate_image\": true}";
    let filler = len - HEAD.len() - TAIL.len();
    // (what comes next: 0 head, 1 filler, 2 tail, 3 nothing; filler left)
    let chunks = stream::unfold((0u8, filler), |(next, left)| async move {
        let (chunk, state) = match next {
            0 => (Bytes::from_static(HEAD), (1, left)),
            1 if left > 0 => {
                let n = left.min(CHUNK);
                (Bytes::from(vec![b'x'; n]), (1, left - n))
            }
            1 => (Bytes::from_static(TAIL), (3, 0)),
            _ => return None,
        };
        Some((Ok::<_, Infallible>(Frame::data(chunk)), state))
    });
    let request = post(addr, user, "application/json")
        .header("content-length", len)
        .body(StreamBody::new(Box::pin(chunks)));
    answer(request.expect("request")).await
}

/// A 10 MB JSON body must be parsed whole, so it is held once: copied
/// piece by piece into one buffer as it arrives, never as the pieces plus a
/// copy of them (which peaked at two bodies).
#[tokio::test]
async fn inspecting_a_10_mb_json_body_holds_it_once() {
    let _alone = EXCLUSIVE.write().await;
    let (_dir, spool) = spool_dir();
    let proxy = hashing_proxy(&spool).await;
    let len = 10 * MIB;

    let (answer, peak) = peak_growth(send_json(proxy.addr, "jo", len)).await;

    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert!(
        answer.text().starts_with(&format!("{len} ")),
        "the upstream got all of it: {}",
        answer.text()
    );
    println!("peak heap growth while inspecting a {len} byte JSON body: {peak} bytes");
    assert!(
        peak < len + 2 * MIB,
        "peak heap growth {peak} bytes for a {len} byte body"
    );
    assert_eq!(proxy.wait_settled("jo", 1).await[0].used, 1);
}
