//! The memory a large inspected body takes, end to end on the real proxy
//! with `upload.rs`'s uploads: every allocation of this test process
//! (proxy, client and upstream alike) is counted by a global allocator,
//! and the peak of live heap bytes during the body is asserted, with a
//! client and an upstream that hold no more than a chunk, so no test
//! buffer can hide or inflate what the proxy holds: a 50 MB upload stays
//! bounded, and a 10 MB JSON body is held once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::proxy::{Answer, Proxy, StoreChoice};
use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::upload::{
    BUFFER, CHUNK, Digest, EXCLUSIVE, MIB, Upload, answer, config, now, post, send, spool_dir,
    wait_open_in,
};

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
