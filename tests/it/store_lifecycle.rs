//! The store's life around the proxy's (phases: startup, reload,
//! shutdown), on the real binary with real `redis-server` processes: the
//! proxy starts and serves while Redis is down (under `allow` and `deny`),
//! and a reload to another Redis hands the whole store over, so the
//! settles queued in the new one are the ones flushed and measured at
//! shutdown; an answer still streaming when the shutdown grace ends is
//! charged as cut. Redis's eviction policy is checked at startup.

use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::gen_route;
use crate::support::proxy::{Answer, TestClient};
use crate::support::redis::{RedisServer, used_today, wait_used_today};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};

/// Every bounded wait of this file.
const WITHIN: Duration = Duration::from_secs(20);

async fn metrics(binary: &Binary) -> String {
    admin_get(binary, "/metrics").await.text()
}

/// The sum of every series whose line starts with `prefix`.
fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// Starting without Redis.

/// An upstream that saves an image on `/gen/` and serves a page elsewhere.
async fn app_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        if request.uri.path() == "/gen/" {
            Reply::ok().header("x-images-saved", "1").body("an image")
        } else {
            Reply::ok().body("a page")
        }
    })
    .await
}

async fn admin_get(binary: &Binary, path: &str) -> Answer {
    TestClient::new(binary.admin)
        .send(Method::GET, path, &[], "")
        .await
}

async fn page(binary: &Binary) -> StatusCode {
    TestClient::new(binary.proxy)
        .send(Method::GET, "/chat/", &[("x-user-id", "alice")], "")
        .await
        .status
}

/// The one value of a series without labels.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

/// Polls `/healthz` until `store.up` is `up` (bounded).
async fn wait_store_up(binary: &Binary, up: bool) {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let health = admin_get(binary, "/healthz").await;
        assert_eq!(health.status, StatusCode::OK, "liveness never fails");
        if health.json()["store"]["up"] == up {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz store.up is not {up}: {}",
            health.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn starts_and_serves_without_redis_under_allow_then_counts_once_it_answers() {
    let upstream = app_upstream().await;
    let mut server = RedisServer::start_persistent();
    let url = server.url();
    server.kill();
    let binary = Binary::start(
        &gen_route::redis_config(
            &upstream,
            "allow",
            &format!("url = \"{url}\"\nbreaker = {{ failures = 5, open_for = \"200ms\" }}"),
        ),
        &[],
    )
    .await;
    // Ready to serve its app; the store's outage is visible elsewhere.
    let ready = admin_get(&binary, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let health = admin_get(&binary, "/healthz").await.json();
    assert_eq!(health["store"]["up"], false, "{health}");
    let reason = health["store"]["last_error"].as_str().expect("last_error");
    assert!(reason.contains("redis"), "{reason}");
    assert_eq!(gauge(&metrics(&binary).await, "quota_proxy_store_up"), 0.0);

    assert_eq!(page(&binary).await, StatusCode::OK, "pass-through");
    assert_eq!(
        gen_route::flagged(&binary, "alice").await,
        StatusCode::OK,
        "allow"
    );
    let m = metrics(&binary).await;
    assert_eq!(metric_sum(&m, "quota_proxy_fail_open_total"), 1.0, "{m}");

    server.restart();
    wait_store_up(&binary, true).await;
    let m = metrics(&binary).await;
    assert_eq!(gauge(&m, "quota_proxy_store_up"), 1.0);
    assert_eq!(gauge(&m, "quota_proxy_store_breaker_open"), 0.0);
    for _ in 0..3 {
        assert_eq!(gen_route::flagged(&binary, "alice").await, StatusCode::OK);
    }
    // The three counted, and the image of the one let through, whose
    // settle waited in the queue for Redis.
    wait_used_today(&url, "alice", 4, WITHIN).await;
    let m = metrics(&binary).await;
    assert_eq!(metric_sum(&m, "quota_proxy_fail_open_total"), 1.0, "{m}");
}

#[tokio::test]
async fn starts_without_redis_under_deny_refusing_flagged_requests_only() {
    let upstream = app_upstream().await;
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let config = gen_route::redis_config(&upstream, "deny", &format!("url = \"{url}\""));
    let binary = Binary::start(&config, &[]).await;
    assert_eq!(admin_get(&binary, "/readyz").await.status, StatusCode::OK);
    assert_eq!(page(&binary).await, StatusCode::OK, "pass-through");
    assert_eq!(
        gen_route::flagged(&binary, "alice").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(upstream.requests().len(), 1, "only the page reached it");
}

// A reload hands the whole store over.

/// Reloads from `store` to a second Redis, queues settles there while it
/// hangs (SIGSTOP), and shuts down: the queue the shutdown flushes and the
/// gauge that measures it are the new store's, and the settles land there.
#[tokio::test]
async fn a_reload_to_another_redis_hands_over_the_queue_flushed_at_shutdown() {
    let upstream = app_upstream().await;
    let first = RedisServer::start();
    let second = RedisServer::start();
    let store = |url: &str| {
        format!(
            "url = \"{url}\"\ncommand_timeout = \"200ms\"\nflush_timeout = \"20s\"\n\
             breaker = {{ failures = 2, open_for = \"30s\" }}"
        )
    };
    let mut binary = Binary::start(
        &gen_route::redis_config(&upstream, "allow", &store(&first.url())),
        &[],
    )
    .await;
    assert_eq!(gen_route::flagged(&binary, "carol").await, StatusCode::OK);
    wait_used_today(&first.url(), "carol", 1, WITHIN).await;

    // Two reloads: to the second Redis, and once more with a change that
    // keeps it (the store in force must stay the second one's).
    binary.write_config(&gen_route::redis_config(
        &upstream,
        "allow",
        &store(&second.url()),
    ));
    binary.signal("HUP");
    let reloaded = |l: &serde_json::Value| l["message"] == "config reloaded";
    binary.wait_for_logs(1, WITHIN, reloaded).await;
    binary.write_config(
        &gen_route::redis_config(&upstream, "deny", &store(&second.url())).replace(
            "on_store_error = \"deny\"",
            "on_store_error = \"allow\"\nreservation_ttl = \"2m\"",
        ),
    );
    binary.signal("HUP");
    binary.wait_for_logs(2, WITHIN, reloaded).await;

    // The second Redis hangs: reserves time out (forwarded under allow,
    // counted as fail-open), and the images they report are queued.
    second.pause();
    for _ in 0..3 {
        assert_eq!(gen_route::flagged(&binary, "carol").await, StatusCode::OK);
    }
    let health = admin_get(&binary, "/healthz").await.json();
    assert_eq!(health["store"]["pending_settles"], 3, "{health}");
    assert_eq!(health["store"]["up"], false, "{health}");
    // Measured: the retry-queue gauge (updated every 5 s) shows them.
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let m = metrics(&binary).await;
        let queued = metric_sum(&m, "quota_proxy_settlements_pending{stage=\"retry_queue\"}");
        if queued == 3.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retry_queue gauge is {queued}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Shut down; the flush waits for the second Redis, which comes back.
    binary.signal("TERM");
    binary
        .wait_for_logs(1, WITHIN, |l| l["message"] == "all settlements recorded")
        .await;
    // The flush waits for the new store's Redis (up to flush_timeout).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        binary.try_status().is_none(),
        "exited without waiting for the queued settles:\n{}",
        binary.logs().join("\n")
    );
    second.resume();
    let status = binary.wait_exit(WITHIN).await;
    assert_eq!(status.code(), Some(0), "{}", binary.logs().join("\n"));
    assert_eq!(
        binary.count_logs(|l| {
            l["message"] == "stopped with settles Redis did not take (logged above)"
        }),
        0,
        "{}",
        binary.logs().join("\n")
    );
    // Settled: the three images. (The reserves that timed out ran once
    // Redis resumed; each holds a unit until reservation_ttl, as any reserve
    // whose answer came too late does.)
    let (used, phantom) = used_today(&second.url(), "carol").await;
    assert_eq!(used, 3, "{}", binary.logs().join("\n"));
    assert!(phantom <= 3, "{phantom}");
    assert_eq!(
        used_today(&first.url(), "carol").await,
        (1, 0),
        "nothing more there"
    );
}

/// A Redis that may evict keys under memory pressure would delete quota
/// counters (they all have TTLs) and users would start over: the proxy
/// says so at startup. The default policy (`noeviction`) is not warned of.
#[tokio::test]
async fn a_redis_that_evicts_is_warned_of_at_startup() {
    let upstream = app_upstream().await;
    let start = |redis: &RedisServer| {
        let config = format!(
            "upstream = \"http://{}\"\n[store]\nkind = \"redis\"\nurl = \"{}\"\n\
             [identity]\ndefault_plan = \"free\"\n[plans]\nfree = {{ daily = 2 }}\n\
             [[routes]]\nmethod = \"POST\"\npath = \"/gen/\"\n",
            upstream.authority(),
            redis.url()
        );
        async move { Binary::start(&config, &[]).await }
    };
    let warned = |l: &serde_json::Value| {
        l["fields"]["maxmemory_policy"].as_str().is_some()
            || l["maxmemory_policy"].as_str().is_some()
    };
    let evicting = RedisServer::start_with(|_| {
        vec!["--maxmemory-policy".to_owned(), "volatile-lru".to_owned()]
    });
    let binary = start(&evicting).await;
    binary
        .wait_for_logs(1, Duration::from_secs(10), warned)
        .await;
    let line = binary.find_log(warned).expect("the warning");
    assert!(line.to_string().contains("volatile-lru"), "{line}");

    let default = RedisServer::start();
    let binary = start(&default).await;
    wait_store_up(&binary, true).await;
    assert_eq!(binary.count_logs(warned), 0, "{}", binary.logs().join("\n"));
}

/// An upstream that answers one request the way the chat app's send view
/// does under gunicorn's sync worker: the response head and a first line at
/// once, then silence while it generates, then the image is saved and the
/// in-band report written. A client (here the proxy) that went away is not
/// noticed until that last write, so the image is saved all the same
/// (`tests/django/harness/views.py`, `send_message` with
/// `HARNESS_SEND_STALL`). The generation ends when `finish` is sent.
struct SlowGeneration {
    addr: std::net::SocketAddr,
    answering: std::sync::mpsc::Receiver<()>,
    finish: std::sync::mpsc::Sender<()>,
    saved: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowGeneration {
    /// An app that generates for a minute, then saves and reports;
    /// `head_first`: it writes its answer's head and first chunk before
    /// generating (a streamed reply), else nothing until it saved (a JSON
    /// API, a view that saves before its first byte).
    fn start(head_first: bool) -> Self {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (answering_tx, answering) = std::sync::mpsc::channel();
        let (finish, finish_rx) = std::sync::mpsc::channel::<()>();
        let saved = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let saves = std::sync::Arc::clone(&saved);
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then the body its Content-Length announces.
            let (head_end, length) = loop {
                let n = stream.read(&mut buf).expect("read request");
                assert!(n > 0, "the proxy closed before sending its request");
                request.extend_from_slice(&buf[..n]);
                if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().expect("length"));
                    break (end + 4, length);
                }
            };
            while request.len() < head_end + length {
                let n = stream.read(&mut buf).expect("read body");
                assert!(n > 0, "the proxy closed mid-body");
                request.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&request[..head_end]).to_string();
            let token = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("x-quota-report-token")
                        .then(|| value.trim().to_owned())
                })
                .unwrap_or_default();
            let first = "generating\n";
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
                 transfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
                first.len()
            );
            if head_first {
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.flush();
            }
            let _ = answering_tx.send(());
            // Generating: nothing is written, so nothing notices a peer
            // that went away.
            let _ = finish_rx.recv_timeout(Duration::from_secs(60));
            saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if !head_first {
                let _ = stream.write_all(head.as_bytes());
            }
            let report =
                format!(r#"[IMAGES_SAVED]{{"count": 1, "token": "{token}"}}[IMAGES_SAVED_END]"#);
            let _ = write!(stream, "{:x}\r\n{report}\r\n0\r\n\r\n", report.len());
            let _ = stream.flush();
        });
        Self {
            addr,
            answering,
            finish,
            saved,
            thread: Some(thread),
        }
    }

    /// Ends the generation: the image is saved, the report written (to
    /// whoever still listens).
    fn finish(&mut self) -> usize {
        let _ = self.finish.send(());
        if let Some(thread) = self.thread.take() {
            thread.join().expect("upstream thread");
        }
        self.saved.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A graceful shutdown (SIGTERM: a rolling update, a restart of the proxy
/// alone under systemd while Django runs on) with a flagged request still
/// generating when `shutdown_grace` ends: the proxy waits for pending
/// settlements for the grace (at least `SETTLE_FLUSH_MIN`, 5 s), logs
/// "settlements still pending at the end of the grace are lost; their
/// reservations expire by themselves" (`src/app/mod.rs`, `flush`) and
/// exits, closing the upstream connection. The app does not notice until
/// it writes its report, after saving the image; the reservation expires
/// in Redis and the image is never counted. The same answer cut by the
/// upstream (a reset, or silence past `timeouts.idle`) is charged one
/// image for a flagged request (fail closed, docs/security.md); cut by the
/// proxy's own shutdown it is charged nothing. The preset lets a
/// generation take 300 s (`timeouts.response_head`, `idle`) against the
/// default 30 s grace.
#[tokio::test]
async fn a_generation_cut_by_the_shutdown_grace_is_never_counted() {
    generation_cut_by_the_shutdown_grace(true).await;
}

/// The same with an app that writes nothing before it saved (a JSON API,
/// a view that saves, then answers): the answer's head never came, and
/// the request's accounting, still waiting for it, was dropped with the
/// process; the image went uncounted (the third attack session of
/// December 6th). Now the end of the grace settles it as cut too.
#[tokio::test]
async fn a_generation_before_its_first_byte_cut_by_the_shutdown_grace_is_counted() {
    generation_cut_by_the_shutdown_grace(false).await;
}

async fn generation_cut_by_the_shutdown_grace(head_first: bool) {
    let redis = RedisServer::start();
    let mut app = SlowGeneration::start(head_first);
    let config = format!(
        r#"
upstream = "http://{upstream}"
shutdown_grace = "1s"
[timeouts]
response_head = "300s"
idle = "300s"
[store]
kind = "redis"
url = "{url}"
reservation_ttl = "180s"
[identity]
default_plan = "free"
[plans]
free = {{ daily = 3, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/gen/"
[usage]
report_marker = {{ start = "[IMAGES_SAVED]", end = "[IMAGES_SAVED_END]" }}
"#,
        upstream = app.addr,
        url = redis.url(),
    );
    let mut binary = Binary::start(&config, &[]).await;
    // The client: a raw connection that reads whatever it gets (the
    // answer is cut at shutdown, which a full HTTP client would report).
    let client = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = r#"{"generate_image": true}"#;
        let request = format!(
            "POST /gen/ HTTP/1.1\r\nhost: test\r\nx-user-id: s\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(binary.proxy)
            .await
            .expect("connect");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send request");
        tokio::spawn(async move {
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            answer
        })
    };
    tokio::task::spawn_blocking({
        let answering = std::mem::replace(&mut app.answering, std::sync::mpsc::channel().1);
        move || answering.recv_timeout(WITHIN)
    })
    .await
    .expect("join")
    .expect("the app started answering");
    assert_eq!(
        used_today(&redis.url(), "s").await,
        (0, 1),
        "one unit reserved"
    );

    binary.signal("TERM");
    let status = binary.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    client.abort();

    // The generation outlasted the proxy: the app saves its image.
    let saved = app.finish();
    assert_eq!(saved, 1, "the app saved one image");
    let (used, reserved) = used_today(&redis.url(), "s").await;
    let lost = binary.log_lines(&["pending", "settle"], usize::MAX);
    assert_eq!(
        used, 1,
        "the app saved {saved} image for a flagged request admitted by the proxy, but Redis \
         holds {used} used ({reserved} still reserved, expiring by itself): the request was \
         still generating when the shutdown grace ended, and its settlement was dropped \
         instead of charged as the cut answer it is (fail closed)\nproxy logs:\n{lost}"
    );
}
