//! The fast upstream the load bench proxies to: a minimal hyper HTTP/1.1
//! server on loopback, on a tokio runtime of its own (one thread unless
//! asked), that stands in for Django without doing any work.
//!
//! - `/stream/…`: `200`, `text/plain`, chunked: a first chunk at once,
//!   then (after `?gap_ms=N` milliseconds, if given) four 1 KB chunks and a
//!   last one holding the in-band report
//!   `[IMAGES_SAVED]{"count": 1, "token": "<X-Quota-Report-Token>"}[IMAGES_SAVED_END]`;
//! - anything else: `200` with a 20-byte body, and `X-Images-Saved: N` when
//!   the request carries `X-Bench-Saved: N` (the bench's way to ask).
//!
//! Request bodies are read to their end and dropped.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The small answer of every route but `/stream/`.
pub const SMALL_BODY: &[u8] = b"hello from upstream\n";

/// The start of the in-band report at the end of every streamed answer
/// (the report carries the request's token, as the app's does).
pub const MARKER: &str = "[IMAGES_SAVED]";

/// A running upstream; stopped (its runtime and every connection dropped)
/// when this is dropped.
pub struct Upstream {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts on `127.0.0.1:0` with `threads` runtime threads (1: a
    /// current-thread runtime).
    pub fn start(threads: usize) -> io::Result<Upstream> {
        let runtime = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("bench-upstream")
                .enable_all()
                .build()?
        };
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-upstream".to_owned())
            .spawn(move || {
                runtime.block_on(accept_loop(listener, stopped));
                // Dropping the runtime here ends every connection task.
            })?;
        Ok(Upstream {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, mut stopped: oneshot::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

type StreamedBody =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

async fn answer(
    request: Request<Incoming>,
) -> Result<Response<Either<Full<Bytes>, StreamedBody>>, Infallible> {
    let saved = request.headers().get("x-bench-saved").cloned();
    let token = request
        .headers()
        .get("x-quota-report-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let streamed = request.uri().path().starts_with("/stream/");
    let gap = request
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("gap_ms="))
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    // Read the request body to its end so the connection stays reusable.
    let mut body = request.into_body();
    while let Some(Ok(_)) = body.frame().await {}

    if streamed {
        let mut response = Response::new(Either::Right(stream_body(gap, token)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(response);
    }
    let mut response = Response::new(Either::Left(Full::new(Bytes::from_static(SMALL_BODY))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(saved) = saved {
        response.headers_mut().insert("x-images-saved", saved);
    }
    Ok(response)
}

/// A first chunk, an optional pause, 4 KB of text, and the report.
fn stream_body(gap: Option<Duration>, token: String) -> StreamedBody {
    use futures_util::StreamExt;
    let text = Bytes::from("streamed reply text, as a chat model writes it. ".repeat(32));
    let first = futures_util::stream::once(async {
        Ok(Frame::data(Bytes::from_static(b"data: first words\n")))
    });
    let pause = futures_util::stream::once(async move {
        if let Some(gap) = gap {
            tokio::time::sleep(gap).await;
        }
        Ok(Frame::data(Bytes::from_static(b"\n")))
    });
    let rest = futures_util::stream::iter(
        (0..4)
            .map(move |_| Ok(Frame::data(text.slice(..1024))))
            .chain(std::iter::once(Ok(Frame::data(Bytes::from(format!(
                "\n{MARKER}{{\"count\": 1, \"token\": \"{token}\"}}[IMAGES_SAVED_END]\n"
            )))))),
    );
    StreamBody::new(first.chain(pause).chain(rest).boxed())
}
