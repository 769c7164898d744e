//! Findings of the third attack session (Redis faults, shutdown, reload),
//! each a test on the real binary with a `redis-server` of its own. Each
//! asserts on what the upstream was asked to generate and what Redis
//! holds, and fails on the code it was written against.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use quota_proxy::periods::Calendar;
use quota_proxy::store::{QuotaStore, RedisStore};

use crate::support::binary::Binary;
use crate::support::proxy::{Answer, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};

const GEN: &str = "/gen/";

/// Every bounded wait of this file.
const WITHIN: Duration = Duration::from_secs(15);

/// An upstream that saves one image per flagged request to `/gen/`, and
/// says so in `X-Images-Saved`.
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let asked = request.uri.path() == GEN
            && String::from_utf8_lossy(&request.body).contains("\"generate_image\": true");
        Reply::ok()
            .header("x-images-saved", if asked { "1" } else { "0" })
            .body("generated")
    })
    .await
}

async fn generate(binary: &Binary, user: &str) -> Answer {
    TestClient::new(binary.proxy)
        .send(
            Method::POST,
            GEN,
            &[("x-user-id", user), ("content-type", "application/json")],
            r#"{"generate_image": true}"#,
        )
        .await
}

async fn healthz(binary: &Binary) -> serde_json::Value {
    TestClient::new(binary.admin)
        .send(Method::GET, "/healthz", &[], "")
        .await
        .json()
}

/// Polls `/healthz` until `check` holds for its `store` object.
async fn wait_health(binary: &Binary, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let health = healthz(binary).await;
        if check(&health["store"]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WITHIN:?} for {what}; /healthz says {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `user`'s settled and reserved usage today as Redis holds it (the
/// binary's default calendar: Asia/Tehran, Monday weeks).
async fn redis_used(redis: &RedisServer, user: &str) -> (u64, u64) {
    let store = RedisStore::connect(&redis.url(), "quota:", Duration::from_secs(2))
        .await
        .expect("redis store");
    let calendar = Calendar::new(chrono_tz::Asia::Tehran, chrono::Weekday::Mon);
    let now = chrono::Utc::now();
    let usage = store
        .usage(user, &calendar.windows(now), now)
        .await
        .expect("usage");
    (usage[0].used, usage[0].reserved)
}

/// Waits until Redis has `user` at `used` images today, nothing reserved.
async fn wait_redis_used(redis: &RedisServer, user: &str, used: u64) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let seen = redis_used(redis, user).await;
        if seen == (used, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user}: waited {WITHIN:?} for {used} used in Redis, it holds {seen:?} (used, reserved)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Under `on_store_error = "local"` the docs promise (docs/redis.md, the
/// `ResilientStore` module docs): "One replica admits a user at most
/// (limit − last known count) more per period and outage", each user
/// starting "from what Redis last told it about the user". But the first
/// local reserve of a user in an outage *removes* that user's baseline
/// (`src/store/resilient/local.rs`, `Local::reserve`:
/// `self.baselines...remove(&*key)`), and the local counts are dropped
/// when Redis answers any reserve again (`Local::end_outage`). So when
/// Redis goes away a second time (a restart, a failover, a Redis that
/// hangs for a moment twice) a user who tried during the first outage and
/// has not been answered by Redis since starts from zero: a free user at
/// the limit gets the whole daily limit again, per flap.
#[tokio::test]
async fn a_second_outage_under_local_forgets_what_redis_said() {
    let redis = RedisServer::start();
    let upstream = saving_upstream().await;
    // Daily 2. A breaker that never opens: every reserve asks Redis first,
    // so the first answer after a pause ends the outage at once.
    let config = format!(
        r#"
upstream = "http://{upstream}"
[store]
kind = "redis"
url = "{url}"
command_timeout = "300ms"
on_store_error = "local"
breaker = {{ failures = 1000000, open_for = "100ms" }}
[identity]
default_plan = "free"
[plans]
free = {{ daily = 2, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/gen/"
deny_status = 429
"#,
        upstream = upstream.authority(),
        url = redis.url(),
    );
    let binary = Binary::start(&config, &[]).await;

    // "x" uses the day's two images; Redis says so.
    for i in 0..2 {
        let answer = generate(&binary, "x").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "image {i}: {}",
            answer.text()
        );
    }
    wait_redis_used(&redis, "x", 2).await;
    assert_eq!(
        generate(&binary, "x").await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "Redis denies the third"
    );

    // First outage: "x" tries again and is denied from Redis's last answer.
    redis.pause();
    let first = generate(&binary, "x").await;
    wait_health(&binary, "the local count to be in force", |s| {
        s["local"] == true
    })
    .await;
    assert_eq!(
        first.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the local count starts from Redis's 2: {}",
        first.text()
    );

    // Redis answers again (another user's request), which ends the outage.
    redis.resume();
    assert_eq!(generate(&binary, "y").await.status, StatusCode::OK);
    wait_health(&binary, "the outage to end", |s| {
        s["local"] == false && s["pending_settles"] == 0
    })
    .await;
    wait_redis_used(&redis, "y", 1).await;

    // Second outage: Redis last told this replica that "x" is at 2 of 2.
    redis.pause();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(generate(&binary, "x").await.status);
    }
    redis.resume();
    let forwarded = upstream
        .requests()
        .iter()
        .filter(|r| r.header("x-user-id") == Some("x"))
        .count();
    // What reached Redis once the local settles were handed over.
    wait_health(&binary, "the settle queue to drain", |s| {
        s["pending_settles"] == 0
    })
    .await;
    let (used, _) = redis_used(&redis, "x").await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "a free user at the limit (2 a day) was admitted during a second Redis outage \
         (statuses {statuses:?}): the first outage consumed the baseline Redis had given \
         (Local::reserve removes it) and the local counts were dropped when Redis answered \
         in between, so the second outage started the user from zero. The upstream was asked \
         {forwarded} times for \"x\"; Redis now holds {used} images for a daily limit of 2"
    );
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
    fn start() -> Self {
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
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\n\
                 transfer-encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
                first.len()
            );
            let _ = stream.flush();
            let _ = answering_tx.send(());
            // Generating: nothing is written, so nothing notices a peer
            // that went away.
            let _ = finish_rx.recv_timeout(Duration::from_secs(60));
            saves.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
    let redis = RedisServer::start();
    let mut app = SlowGeneration::start();
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
            "POST {GEN} HTTP/1.1\r\nhost: test\r\nx-user-id: s\r\n\
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
    assert_eq!(redis_used(&redis, "s").await, (0, 1), "one unit reserved");

    binary.signal("TERM");
    let status = binary.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    client.abort();

    // The generation outlasted the proxy: the app saves its image.
    let saved = app.finish();
    assert_eq!(saved, 1, "the app saved one image");
    let (used, reserved) = redis_used(&redis, "s").await;
    let lost = binary
        .logs()
        .into_iter()
        .filter(|l| l.contains("pending") || l.contains("settle"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        used, 1,
        "the app saved {saved} image for a flagged request admitted by the proxy, but Redis \
         holds {used} used ({reserved} still reserved, expiring by itself): the request was \
         still generating when the shutdown grace ended, and its settlement was dropped \
         instead of charged as the cut answer it is (fail closed)\nproxy logs:\n{lost}"
    );
}

/// The report of a JSON answer is its `usage.report_json_field`
/// (`images_saved`), read only when the answer declares a
/// `Content-Length` of at most `usage.max_json_bytes` (1 MiB;
/// `ReportReader::wants_json_body` in `src/report/mod.rs`): "larger ones
/// stream on unread" (`src/config/usage.rs`). Unread, the answer settles
/// with no report (`forward.rs`, `account`: `stream_report` is `None`, so
/// `Some((settlement, None))`), and the reservation is released. A chat
/// API answers with the message it was sent (the user's text, then the
/// reply), so a client makes the answer large by sending a long message:
/// every image it asks for is generated, saved, reported in the JSON, and
/// never counted. The fail-closed rule the proxy applies to answers whose
/// report it cannot read (compressed unasked, cut before the end: one
/// image for a flagged 2xx, docs/security.md) is not applied to this one.
#[tokio::test]
async fn a_long_message_echoed_in_a_json_answer_hides_its_report() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        let sent: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let generate = sent["generate_image"] == true;
        Reply::ok().json(serde_json::json!({
            "message": sent["message"],
            "reply": "here is your image",
            "images_saved": u32::from(generate),
        }))
    })
    .await;
    let config = format!(
        r#"
upstream = "http://{upstream}"
[identity]
default_plan = "free"
[plans]
free = {{ daily = 2, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/api/chatbot/sessions/{{session_id}}/send/"
deny_status = 429
"#,
        upstream = upstream.authority(),
    );
    let binary = Binary::start(&config, &[]).await;
    let ask = |message: String| {
        let proxy = binary.proxy;
        async move {
            let body = serde_json::json!({"message": message, "generate_image": true});
            TestClient::new(proxy)
                .send(
                    Method::POST,
                    "/api/chatbot/sessions/5/send/",
                    &[("x-user-id", "j"), ("content-type", "application/json")],
                    body.to_string(),
                )
                .await
        }
    };
    // A short message is counted (the JSON report is read).
    assert_eq!(ask("a cat".to_owned()).await.status, StatusCode::OK);
    // Then long ones, each answer over 1 MiB.
    let long = "a cat on a red sofa ".repeat(60_000);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(ask(long.clone()).await.status);
    }
    let generated = upstream
        .requests()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("\"generate_image\":true"))
        .count();
    assert!(
        generated <= 2,
        "a free user (2 a day) had {generated} images generated and reported \
         (\"images_saved\": 1 in each JSON answer; statuses of the long ones {statuses:?}): \
         an answer over usage.max_json_bytes is not read for its report, and the \
         reservation is released instead of charged one image (fail closed)"
    );
}

/// Under `on_store_error = "local"` every settle made during an outage
/// also goes to the Redis retry queue (`ResilientStore::settle`), releases
/// included: a flagged request that generated nothing queues a settle of
/// 0 for a reservation Redis never held (it was made in this replica's
/// memory), which can only add the id to Redis's `done` set. The queue is
/// bounded (`store.settle_queue`), and what does not fit is dropped
/// (`SettleQueue::push`). So during an outage one client decides whose
/// usage reaches Redis: its own cheap requests that generate nothing (a
/// session that is not its own, a refused message: the app answers at
/// once, the local unit is released and can be taken again, so the local
/// limit never stops them) fill the queue with releases, and the real
/// images other users generate meanwhile are dropped. The local counts are
/// thrown away when Redis answers again (`Local::end_outage`), so those
/// images are never counted. Scaled: a queue of 20.
#[tokio::test]
async fn releases_fill_the_outage_queue_and_push_out_other_users_images() {
    let mut redis = RedisServer::start();
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        if request.header("x-user-id") == Some("attacker") {
            // Not the caller's session: refused at once, nothing generated.
            return Reply::status(404).body("no such session");
        }
        Reply::ok().header("x-images-saved", "1").body("generated")
    })
    .await;
    let config = format!(
        r#"
upstream = "http://{upstream}"
[store]
kind = "redis"
url = "{url}"
command_timeout = "300ms"
on_store_error = "local"
settle_queue = 20
[identity]
default_plan = "free"
[plans]
free = {{ daily = 2, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/gen/"
deny_status = 429
"#,
        upstream = upstream.authority(),
        url = redis.url(),
    );
    let binary = Binary::start(&config, &[]).await;
    assert_eq!(generate(&binary, "warmup").await.status, StatusCode::OK);
    wait_redis_used(&redis, "warmup", 1).await;

    redis.kill();
    // The attacker: 25 flagged requests, each refused by the app, each
    // released; the local limit (2) never stops them.
    let mut attacker = Vec::new();
    for _ in 0..25 {
        attacker.push(generate(&binary, "attacker").await.status);
    }
    assert!(
        attacker.iter().all(|s| *s == StatusCode::NOT_FOUND),
        "the attacker's requests reach the app: {attacker:?}"
    );
    // A victim's real image during the same outage.
    let victim = generate(&binary, "victim").await;
    assert_eq!(victim.status, StatusCode::OK, "{}", victim.text());
    let health = healthz(&binary).await;

    redis.restart();
    wait_health(&binary, "the retry queue to drain", |s| {
        s["up"] == true && s["pending_settles"] == 0
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut used = redis_used(&redis, "victim").await;
    while used.0 == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        used = redis_used(&redis, "victim").await;
    }
    assert_eq!(
        used.0, 1,
        "the victim's image, generated during the outage, never reached Redis ({used:?} used, \
         reserved): the retry queue (settle_queue = 20) was full of the attacker's 25 releases \
         of local reservations Redis never held, so the victim's settle was dropped; /healthz \
         during the outage: {health}"
    );
}
