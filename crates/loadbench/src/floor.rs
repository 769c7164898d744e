//! The floor the load bench measures quota-proxy against: the least a
//! hyper 1.x reverse proxy can do per request. Not a product; a yardstick.
//!
//! The bench runs it as a process of its own (`load floor LISTEN UPSTREAM
//! THREADS`, the bench binary re-run): one current-thread runtime per
//! thread accepting from one socket, in turn with the others as
//! quota-proxy's threads do (`server::AcceptBalance`: without it one
//! thread often took every connection of a run, which is the accept loop's
//! flaw, not hyper's), hyper's HTTP/1.1 server, and for each
//! client connection one upstream connection of hyper's HTTP/1.1 client,
//! opened on its first request. Each request is forwarded as it came (no
//! header rewriting, no routes, no metrics, no timeouts, the system
//! allocator) and the response streamed back. What quota-proxy spends
//! beyond this floor is its own; what the floor spends beyond nginx is
//! hyper's and tokio's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use quota_proxy::server::AcceptBalance;
use tokio::net::{TcpListener, TcpStream};

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// Serves on `listener` with `threads` threads, forwarding to `upstream`;
/// returns only if a thread fails.
pub fn run(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    threads: usize,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let handles: Vec<_> = AcceptBalance::shares(threads.max(1))
        .into_iter()
        .map(|balance| {
            let listener = listener.try_clone()?;
            Ok(std::thread::spawn(move || {
                serve(listener, upstream, balance)
            }))
        })
        .collect::<std::io::Result<_>>()?;
    for handle in handles {
        handle
            .join()
            .map_err(|_| std::io::Error::other("a floor thread panicked"))??;
    }
    Ok(())
}

fn serve(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    balance: AcceptBalance,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let balance = Arc::new(balance);
    let open = Arc::new(AtomicUsize::new(0));
    balance.set_open(0);
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            balance.turn().await;
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            balance.set_open(open.fetch_add(1, Ordering::Relaxed) + 1);
            let slot: Arc<Mutex<Option<SendRequest<Incoming>>>> = Arc::default();
            let service = service_fn(move |request| forward(Arc::clone(&slot), upstream, request));
            let (balance, open) = (Arc::clone(&balance), Arc::clone(&open));
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                balance.set_open(open.fetch_sub(1, Ordering::Relaxed) - 1);
            });
        }
    })
}

async fn forward(
    slot: Arc<Mutex<Option<SendRequest<Incoming>>>>,
    upstream: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let taken = slot.lock().expect("slot").take();
    let ready = match taken {
        Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
        None => None,
    };
    let sender = match ready {
        Some(sender) => Some(sender),
        None => connect(upstream).await,
    };
    let Some(mut sender) = sender else {
        return Ok(bad_gateway());
    };
    match sender.send_request(request).await {
        Ok(response) => {
            *slot.lock().expect("slot") = Some(sender);
            Ok(response.map(BodyExt::boxed_unsync))
        }
        Err(_) => Ok(bad_gateway()),
    }
}

/// A new upstream connection, driven by a task of its own; `None` when it
/// cannot be opened.
async fn connect(upstream: SocketAddr) -> Option<SendRequest<Incoming>> {
    let stream = TcpStream::connect(upstream).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
