//! HTTP/2 requests their clients give up while the app works on them (an
//! attack session on commit 92ca005, December 7th): a reset request keeps
//! its places until the app answers (`src/server/streams.rs`,
//! `src/server/tracked.rs`), and an answer read on for a usage report
//! until the app has written it (`src/proxy/body.rs`). The real binary;
//! the apps stand in for gunicorn sync workers, which start a view once
//! its head has come and do not notice a client gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::attack_budget::{H2Body, stalled_body};
use crate::http2_limits::counter;
use crate::open_files::{ANSWER_WITHIN, config};
use crate::support::binary::Binary;
use crate::support::on_both_stores;
use crate::support::proxy::{Proxy, StoreChoice};
use crate::support::raw_http::status_on_new_connection;
use crate::support::redis::RedisServer;
use crate::support::upstream::{Reply, TestUpstream};

/// An app whose workers start on a request once its head has come (a view
/// that does not read the body) and answer `work` later, whatever became
/// of the connection meanwhile; one request per connection.
struct SyncWorkers {
    addr: SocketAddr,
    /// Requests whose work started.
    started: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl SyncWorkers {
    async fn start(work: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let started = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&started);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(work_on(stream, work, Arc::clone(&count)));
            }
        });
        Self {
            addr,
            started,
            task,
        }
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

impl Drop for SyncWorkers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn work_on(mut stream: TcpStream, work: Duration, started: Arc<AtomicUsize>) {
    let mut head = Vec::new();
    let mut buf = [0; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    started.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(work).await;
    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let _ = stream.write_all(answer).await;
}

/// The requests one HTTP/2 connection may have at the app at once
/// (`H2_MAX_STREAMS`).
const AT_APP: usize = 100;

/// An HTTP/2 connection to `addr`, driven by a task of its own (aborted
/// with the handle).
async fn h2_client<B>(addr: SocketAddr) -> (SendRequest<B>, JoinHandle<Result<(), hyper::Error>>)
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, B>(TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    (sender, tokio::spawn(connection))
}

/// Fails unless a flood sent enough requests to tell a bound of
/// [`AT_APP`] from none.
fn assert_flooded(sent: usize) {
    assert!(
        sent >= 3 * AT_APP,
        "the client sent {sent} requests, too few to tell"
    );
}

/// 50 clients on `sender` keep requests made by `request` going until
/// 1.5 s after `started`, each dropped after 100 ms or once its head came
/// (which resets its stream); how many were sent.
async fn reset_flood<B>(
    sender: &SendRequest<B>,
    started: Instant,
    request: impl Fn() -> http::Request<B> + Clone + Send + 'static,
) -> usize
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let flood_for = Duration::from_millis(1500);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (mut sender, request) = (sender.clone(), request.clone());
        clients.spawn(async move {
            let mut sent = 0;
            while started.elapsed() < flood_for {
                let reset = Duration::from_millis(100);
                let _ = tokio::time::timeout(reset, sender.send_request(request())).await;
                sent += 1;
            }
            sent
        });
    }
    let mut sent = 0;
    while let Some(client) = clients.join_next().await {
        sent += client.expect("client");
    }
    sent
}

/// Under `max_connections_per_ip = 1`, the flooding connection closed: a
/// new connection from the same address is refused while its reset
/// requests are at the app (which answers them `work` after `started` at
/// the earliest), and let in once the app has answered them.
async fn assert_address_held_until_answered(binary: &Binary, started: Instant, work: Duration) {
    const PAGE: &[u8] = b"GET /page HTTP/1.1\r\nhost: app\r\n\r\n";
    let held = status_on_new_connection(binary.proxy, PAGE, ANSWER_WITHIN).await;
    assert!(
        started.elapsed() < work,
        "too slow to tell: the app may have answered"
    );
    // Refused at accept, its request unread: closed, or reset by the
    // kernel for the unread bytes, either way no answer.
    assert!(
        held.as_ref().is_err_and(
            |e| e == "closed before an answer" || e.contains("Connection reset by peer")
        ),
        "the address's place, held by requests at the app: {held:?}"
    );
    let within = work + ANSWER_WITHIN;
    let deadline = Instant::now() + work + within;
    loop {
        let page = status_on_new_connection(binary.proxy, PAGE, within).await;
        if page == Ok(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the address's place never came back: {page:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fault: an HTTP/2 request its client reset (`RST_STREAM`) after the proxy
/// forwarded it gave back its place among the connection's at once, and
/// its upstream connection was closed, but the app's worker went on with
/// it (a gunicorn sync worker does not notice): one connection that reset
/// each request about 60 ms after sending it put 3,281 requests into the
/// app in 2 s, whatever `max_connections_per_ip` was (750 here before the
/// fix). Here the app takes 5 s to answer, and one connection keeps 50
/// requests going for 1.5 s, each reset after 100 ms: the app must see at
/// most the connection's 100 (`H2_MAX_STREAMS`) however many were sent.
/// Closing the connection then must not free its address's place while its
/// requests are at the app, and must once the app has answered.
#[tokio::test(flavor = "multi_thread")]
async fn http2_requests_reset_at_the_app_keep_their_places_until_it_answers() {
    const ANSWERED_AFTER: Duration = Duration::from_secs(5);
    let upstream = TestUpstream::always(Reply::ok().delay_head(ANSWERED_AFTER)).await;
    let binary = Binary::start(&config(upstream.addr(), "max_connections_per_ip = 1"), &[]).await;
    let (sender, connection) = h2_client::<http_body_util::Empty<Bytes>>(binary.proxy).await;
    let proxy = binary.proxy;
    let started = Instant::now();
    let sent = reset_flood(&sender, started, move || {
        http::Request::get(format!("http://{proxy}/page"))
            .body(http_body_util::Empty::new())
            .expect("request")
    })
    .await;
    let at_app = upstream.count();
    assert_flooded(sent);
    assert!(
        at_app <= AT_APP,
        "{sent} requests reset after 100 ms put {at_app} into the app at once"
    );
    let resets = counter(&binary, "quota_proxy_http2_requests_reset_at_app_total").await;
    assert!(
        (1..=AT_APP as u64).contains(&resets),
        "{resets} requests counted as reset at the app"
    );
    connection.abort();
    drop(sender);
    assert_address_held_until_answered(&binary, started, ANSWERED_AFTER).await;
}

/// Tried and held: a request reset while its body is still coming (here
/// 16 KiB of it sent, then nothing) keeps its places until the app
/// answers, as one reset once its body was sent does: one connection
/// keeping 50 such requests going for 1.5 s, each reset 100 ms after its
/// head, put 100 (`H2_MAX_STREAMS`) into the app, the 650 others reset
/// while waiting for a place. Closing the connection then does not free its
/// address's place (`max_connections_per_ip = 1`) until the app has
/// answered them.
#[tokio::test(flavor = "multi_thread")]
async fn http2_requests_reset_mid_body_keep_their_places_until_the_app_answers() {
    const WORK: Duration = Duration::from_secs(6);
    let app = SyncWorkers::start(WORK).await;
    let binary = Binary::start(&config(app.addr, "max_connections_per_ip = 1"), &[]).await;
    let (sender, connection) = h2_client::<H2Body>(binary.proxy).await;
    let proxy = binary.proxy;
    let started = Instant::now();
    // Each body left unended: reset mid-body.
    let sent = reset_flood(&sender, started, move || {
        http::Request::get(format!("http://{proxy}/page"))
            .body(stalled_body(16_384))
            .expect("request")
    })
    .await;
    let at_app = app.started();
    assert_flooded(sent);
    assert!(
        at_app <= AT_APP,
        "{sent} requests reset mid-body after 100 ms put {at_app} into the app"
    );
    connection.abort();
    drop(sender);
    assert_address_held_until_answered(&binary, started, WORK).await;
}

/// Fault: a request on an inspected route whose answer streams (a chat
/// answer, words as the app writes them) gave its places back once the
/// answer's head came; reset then, its body is read on to its end for a
/// usage report (`quota::usage_body`), so the app's worker goes on writing
/// the whole answer (5 s here). One connection keeping 50 requests going
/// for 1.5 s, each reset once its head came (or after 100 ms), left 1,374
/// to 1,565 answers streaming at the app 1 s later: it must see at most the
/// connection's 100, whose places come back once they are written.
#[tokio::test(flavor = "multi_thread")]
async fn http2_requests_reset_after_a_streamed_head_keep_their_places_until_it_ends() {
    const ANSWERED_AFTER: Duration = Duration::from_secs(5);
    let app = TestUpstream::start(|_| async {
        let words = (0..10).map(|i| (Bytes::from(format!("word{i} ")), Duration::from_millis(500)));
        Reply::ok()
            .header("content-type", "text/plain; charset=utf-8")
            .stream(words.collect::<Vec<_>>())
    })
    .await;
    let config = format!(
        r#"
upstream = "http://{}"
[identity]
default_plan = "free"
[plans]
free = {{ daily = 1 }}
[[routes]]
method = "POST"
path = "/chat/{{id}}/send/"
[usage]
report_marker = {{ start = "[IMAGES_SAVED]", end = "[IMAGES_SAVED_END]" }}
"#,
        app.addr()
    );
    let binary = Binary::start(&config, &[]).await;
    let (mut sender, _connection) = h2_client::<Full<Bytes>>(binary.proxy).await;
    let proxy = binary.proxy;
    // Dropping an answer once its head came resets its stream too.
    let sent = reset_flood(&sender, Instant::now(), move || chat(proxy)).await;
    // An answer whose upstream connection was closed is seen dropped at
    // its next word, within 500 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let streaming = app.count() - app.bodies_completed() - app.bodies_dropped();
    assert_flooded(sent);
    assert!(
        streaming <= AT_APP,
        "{sent} requests reset once their heads came left {streaming} answers streaming at the app"
    );
    // Once the app has written those answers, the places come back.
    let answer = tokio::time::timeout(
        ANSWERED_AFTER + ANSWER_WITHIN,
        sender.send_request(chat(proxy)),
    )
    .await;
    assert!(matches!(answer, Ok(Ok(_))), "a place came back: {answer:?}");
}

/// A chat message, no image asked for, over HTTP/2.
fn chat(proxy: SocketAddr) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{proxy}/chat/7/send/"))
        .header("x-user-id", "chatter")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"message": "hi"}"#)))
        .expect("request")
}

/// Tried and held: an image request reset before the app's answer head
/// (100 ms after it was sent, the head 1 s later) and one reset once its
/// head came, the app reporting each image in `X-Images-Saved`: each image
/// is counted once, nothing left reserved, and no more a second later.
async fn reset_image_requests_are_counted_once(store: StoreChoice) {
    const CONFIG: &str = r#"
[identity]
default_plan = "free"
[plans]
free = { daily = 5 }
[[routes]]
method = "POST"
path = "/chat/{id}/send/"
"#;
    let app = TestUpstream::always(
        Reply::ok()
            .header("x-images-saved", "1")
            .json(serde_json::json!({"ok": true}))
            .delay_head(Duration::from_secs(1)),
    )
    .await;
    let now = chrono::DateTime::parse_from_rfc3339("2031-05-14T10:00:00Z")
        .expect("instant")
        .with_timezone(&chrono::Utc);
    let proxy = Proxy::start(CONFIG, &app.authority(), &store, now).await;
    let (mut sender, _connection) = h2_client::<Full<Bytes>>(proxy.addr).await;
    let image = |user: &str| {
        http::Request::post(format!("http://{}/chat/7/send/", proxy.addr))
            .header("x-user-id", user)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"message": "a cat", "generate_image": true}"#,
            )))
            .expect("request")
    };
    let before_head = sender.send_request(image("before-head"));
    let reset = tokio::time::timeout(Duration::from_millis(100), before_head).await;
    assert!(reset.is_err(), "precondition: reset before the head");
    let after_head = sender.send_request(image("after-head")).await;
    drop(after_head.expect("the answer's head"));
    assert_eq!(app.count(), 2, "both requests reached the app");
    for user in ["before-head", "after-head"] {
        proxy.wait_settled(user, 1).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for user in ["before-head", "after-head"] {
        let usage = proxy.usage(user).await;
        assert_eq!((usage[0].used, usage[0].reserved), (1, 0), "{user}");
    }
}

/// Tried and held: requests reset at the app hold their places in tasks
/// of their own, which the accept loop does not wait for, and an inspected
/// one's accounting waits for the app; an app that answers none within a
/// minute must not hold a SIGTERM past `shutdown_grace` (2 s here), or the
/// 5 s the inspected ones' settlements get at least (`SETTLE_FLUSH_MIN`):
/// the process exited 5.0 s after it.
#[tokio::test(flavor = "multi_thread")]
async fn reset_requests_at_a_silent_app_do_not_hold_shutdown_past_its_grace() {
    let app = SyncWorkers::start(Duration::from_secs(60)).await;
    let mut binary = Binary::start(&config(app.addr, r#"shutdown_grace = "2s""#), &[]).await;
    let (mut sender, _connection) = h2_client::<Full<Bytes>>(binary.proxy).await;
    for _ in 0..20 {
        let page = http::Request::get(format!("http://{}/page", binary.proxy))
            .body(Full::default())
            .expect("request");
        for request in [page, chat(binary.proxy)] {
            let reset = Duration::from_millis(100);
            let _ = tokio::time::timeout(reset, sender.send_request(request)).await;
        }
    }
    assert_eq!(app.started(), 40, "precondition: every request at the app");
    binary.signal("TERM");
    let exited = Instant::now();
    binary.wait_exit(Duration::from_secs(10)).await;
    assert!(
        exited.elapsed() < Duration::from_secs(7),
        "exited {:?} after SIGTERM, past its 2 s grace and the 5 s floor",
        exited.elapsed()
    );
}

on_both_stores! {
    reset_image_requests_count_once(store) {
        reset_image_requests_are_counted_once(store).await;
    }
}

/// Fault (noticed by the attack session on 92ca005): a request its client
/// reset before it was forwarded (here while the proxy asked who it is,
/// `forward_auth`, 1 s) ran on in its own task and was forwarded once the
/// answer came: the app made an image for a client gone, charged to the
/// user. Before 92ca005 such a request was dropped, and must be again:
/// never forwarded, nothing counted.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_request_reset_before_it_is_forwarded_never_reaches_the_app() {
    use crate::support::identity_server::{IdentityServer, Mode, Plan};
    let identity = IdentityServer::start().await;
    identity.login("s-reset", 7, Some(Plan::free()));
    identity.set_mode(Mode::Slow(Duration::from_secs(1)));
    let app = TestUpstream::always(Reply::ok().header("x-images-saved", "1")).await;
    let config = config(app.addr(), "").replace(
        "default_plan = \"free\"",
        "default_plan = \"free\"\nkind = \"forward_auth\"",
    ) + &format!(
        "[identity.forward_auth]\nurl = \"{}/api/quota/identity/\"\n",
        identity.base()
    );
    let binary = Binary::start(&config, &[]).await;
    let (mut sender, _connection) = h2_client::<Full<Bytes>>(binary.proxy).await;
    let image = || {
        http::Request::post(format!("http://{}/chat/7/send/", binary.proxy))
            .header("cookie", "sessionid=s-reset")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"message": "a cat", "generate_image": true}"#,
            )))
            .expect("request")
    };
    let reset =
        tokio::time::timeout(Duration::from_millis(300), sender.send_request(image())).await;
    assert!(reset.is_err(), "precondition: reset before any answer");
    assert_eq!(
        identity.calls(),
        1,
        "precondition: reset while the proxy asked who it is"
    );
    // The identity answers 1 s after it was asked; forwarding would follow.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.count(),
        0,
        "a request reset before it was forwarded reached the app"
    );
    // The same request, not reset, is forwarded: the route and identity work.
    identity.set_mode(Mode::Django);
    let answer = tokio::time::timeout(ANSWER_WITHIN, sender.send_request(image()))
        .await
        .expect("answered in time")
        .expect("an answer");
    assert_eq!(answer.status(), 200);
    assert_eq!(app.count(), 1);
}
