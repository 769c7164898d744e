//! Stopping and reloading the real binary: SIGTERM drains the requests in
//! flight and records their usage, a second signal or SIGINT stops at
//! once, a stalled log stream does not hang the exit, and a reload (SIGHUP
//! or the admin API) swaps plans and messages and keeps the running config
//! on errors. Shares `ops.rs`'s helpers.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::binary::Binary;
use crate::support::proxy::TestClient;
use crate::support::raw_http::status_on_new_connection;
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};
use quota_proxy::periods::Calendar;
use quota_proxy::store::{QuotaStore, RedisStore};
use serde_json::{Value, json};

use crate::ops::{
    GEN, WITHIN, admin, config, generate, get, metric_value, saving_upstream, wait_ready_status,
};

/// The marker config the streamed test responses report with.
const MARKER: &str = r#"
[usage]
report_marker = { start = "[IMAGES_SAVED]", end = "[IMAGES_SAVED_END]" }
"#;

/// A slow generation whose report comes last, in-band: its settlement runs
/// in a task of its own after the body ends. `last` is the delay before
/// the final chunk. The report carries the request's token.
fn slow_generation(request: &RecordedRequest, last: Duration) -> Reply {
    let token = request.header("x-quota-report-token").unwrap_or("");
    Reply::ok().stream([
        ("generating".to_owned(), Duration::from_millis(200)),
        (" still generating".to_owned(), Duration::from_millis(400)),
        (
            format!(r#" done[IMAGES_SAVED]{{"count": 1, "token": "{token}"}}[IMAGES_SAVED_END]"#),
            last,
        ),
    ])
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_records_their_usage() {
    let redis = RedisServer::start();
    // "gone" hangs up after the response head; the proxy reads the rest of
    // the upstream's answer in the background, for longer than the other
    // requests take, and must still record it before exiting.
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        if request.header("x-user-id") == Some("gone") {
            slow_generation(&request, Duration::from_millis(1500))
        } else {
            slow_generation(&request, Duration::from_millis(400))
        }
    })
    .await;
    // More serving threads than this machine may have cores: requests in
    // flight on every thread are waited for, and their settlements too.
    let extra = format!(
        "shutdown_grace = \"8s\"\nthreads = 3\n[store]\nkind = \"redis\"\nurl = \"{}\"\n{MARKER}",
        redis.url()
    );
    let mut binary = Binary::start(&config(&upstream, &extra), &[]).await;
    // The serving threads start just after the "serving" line: wait for
    // them (bounded) rather than race them on a loaded machine.
    let deadline = Instant::now() + WITHIN;
    loop {
        let mut serving: Vec<_> = binary
            .thread_names()
            .into_iter()
            .filter(|name| name.starts_with("quota-proxy-"))
            .collect();
        serving.sort();
        if serving == ["quota-proxy-0", "quota-proxy-1", "quota-proxy-2"]
            || Instant::now() > deadline
        {
            assert_eq!(serving, ["quota-proxy-0", "quota-proxy-1", "quota-proxy-2"]);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let proxy = TestClient::new(binary.proxy);
    let users: [&'static str; 3] = ["u1", "u2", "u3"];
    let clients: Vec<_> = users
        .into_iter()
        .map(|user| {
            let proxy = proxy.clone();
            tokio::spawn(async move { generate(&proxy, user, &[]).await })
        })
        .collect();
    hang_up_after_head(binary.proxy, "gone").await;
    upstream.wait_for_requests(users.len() + 1).await;

    binary.signal("TERM");
    // Not ready from the first moment; the admin listener still answers.
    let draining = wait_ready_status(&binary, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        draining.json()["reason"]
            .as_str()
            .expect("reason")
            .contains("draining")
    );
    // New connections to the proxy are refused.
    let deadline = Instant::now() + WITHIN;
    while TcpStream::connect_timeout(&binary.proxy, Duration::from_millis(200)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the proxy still accepts while draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for client in clients {
        let answer = tokio::time::timeout(WITHIN, client)
            .await
            .expect("the in-flight request finishes")
            .expect("client task");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text(), "generating still generating done");
    }
    let status = binary.wait_exit(WITHIN).await;
    assert_eq!(status.code(), Some(0), "{}", binary.logs().join("\n"));

    let store = RedisStore::connect(&redis.url(), "quota:", Duration::from_secs(2))
        .await
        .expect("redis store");
    let calendar = Calendar::new(chrono_tz::Asia::Tehran, chrono::Weekday::Mon);
    let now = chrono::Utc::now();
    for user in users.into_iter().chain(["gone"]) {
        let usage = store
            .usage(user, &calendar.windows(now), now)
            .await
            .expect("usage");
        assert_eq!(
            (usage[0].used, usage[0].reserved),
            (1, 0),
            "{user}: {usage:?}\n{}",
            binary.logs().join("\n")
        );
    }
    assert!(
        binary
            .find_log(|l| l["message"] == "all settlements recorded")
            .is_some()
    );
}

/// Sends a flagged request for `user` over a raw connection, reads the
/// start of the answer, and closes the connection.
async fn hang_up_after_head(proxy: std::net::SocketAddr, user: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"generate_image": true}"#;
    let request = format!(
        "POST {GEN} HTTP/1.1\r\nhost: test\r\nx-user-id: {user}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut head = [0u8; 12];
    tokio::time::timeout(WITHIN, stream.read_exact(&mut head))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    assert_eq!(&head, b"HTTP/1.1 200");
}

#[tokio::test]
async fn a_second_signal_stops_without_waiting() {
    // The upstream never answers in time: only the second signal ends it.
    let upstream = TestUpstream::always(Reply::ok().delay_head(Duration::from_secs(60))).await;
    let extra = "shutdown_grace = \"60s\"\n[timeouts]\nresponse_head = \"120s\"";
    let mut binary = Binary::start(&config(&upstream, extra), &[]).await;
    let proxy = TestClient::new(binary.proxy);
    let stuck = tokio::spawn(async move { generate(&proxy, "7", &[]).await });
    upstream.wait_for_requests(1).await;
    binary.signal("INT");
    wait_ready_status(&binary, StatusCode::SERVICE_UNAVAILABLE).await;
    binary.signal("INT");
    let status = binary.wait_exit(WITHIN).await;
    assert_eq!(status.code(), Some(0));
    stuck.abort();
}

#[tokio::test]
async fn sigint_stops_an_idle_proxy_at_once() {
    let upstream = saving_upstream().await;
    let mut binary = Binary::start(&config(&upstream, ""), &[]).await;
    binary.signal("INT");
    let started = Instant::now();
    let status = binary.wait_exit(WITHIN).await;
    assert_eq!(status.code(), Some(0));
    // Nothing in flight: the drain and the settle flush end at once.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reload_swaps_plans_and_messages_and_keeps_the_config_on_errors() {
    let upstream = saving_upstream().await;
    let with = |daily: u32, message: &str, extra: &str| {
        config(
            &upstream,
            &format!("{extra}\n[messages]\ndaily = \"{message} {{limit}}\"\n"),
        )
        .replace(
            "free = { daily = 1,",
            &format!("free = {{ daily = {daily},"),
        )
    };
    let token = "env-token-321";
    let admin_section = "[admin]\ntoken_env = \"QP_TEST_ADMIN_TOKEN\"";
    let binary = Binary::start(
        &with(1, "first", admin_section),
        &[("QP_TEST_ADMIN_TOKEN", token)],
    )
    .await;
    let proxy = TestClient::new(binary.proxy);
    let reloads = |l: &Value| l["message"] == "config reloaded";
    let failures = |l: &Value| l["message"] == "config reload failed; keeping the running config";

    assert_eq!(generate(&proxy, "7", &[]).await.status, StatusCode::OK);
    let denied = generate(&proxy, "7", &[]).await;
    assert_eq!(denied.json()["error"], "first 1");

    // SIGHUP: a new limit and message, the usage counted so far kept.
    binary.write_config(&with(3, "second", admin_section));
    binary.signal("HUP");
    binary.wait_for_logs(1, WITHIN, reloads).await;
    assert_eq!(generate(&proxy, "7", &[]).await.status, StatusCode::OK);
    assert_eq!(generate(&proxy, "7", &[]).await.status, StatusCode::OK);
    assert_eq!(generate(&proxy, "7", &[]).await.json()["error"], "second 3");

    // A broken file keeps the running config and logs why.
    binary.write_raw_config("[plans]\nfree = { daly = 3 }\n");
    binary.signal("HUP");
    binary.wait_for_logs(1, WITHIN, failures).await;
    let failure = binary.find_log(failures).expect("failure line");
    assert!(
        failure["error"].as_str().expect("error").contains("daly"),
        "{failure}"
    );
    assert_eq!(generate(&proxy, "7", &[]).await.json()["error"], "second 3");

    // The admin reload answers the reason.
    let refused = admin(&binary, Method::POST, "/v1/reload", Some(token), "").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.text().contains("daly"), "{}", refused.text());
    let unauthorized = admin(&binary, Method::POST, "/v1/reload", None, "").await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);

    // A good file through the admin API; a changed upstream needs a restart
    // and the running one stays in use.
    let moved =
        with(4, "third", admin_section).replace(&upstream.authority().to_string(), "127.0.0.1:1");
    binary.write_config(&moved);
    let reloaded = admin(&binary, Method::POST, "/v1/reload", Some(token), "").await;
    assert_eq!(reloaded.status, StatusCode::OK, "{}", reloaded.text());
    assert_eq!(
        reloaded.json(),
        json!({"reloaded": true, "restart_required": ["upstream"], "store_reconnected": false})
    );
    assert_eq!(generate(&proxy, "7", &[]).await.status, StatusCode::OK);
    assert_eq!(generate(&proxy, "7", &[]).await.json()["error"], "third 4");

    let metrics = get(&binary, "/metrics").await.text();
    assert_eq!(
        metric_value(&metrics, r#"quota_proxy_config_reloads_total{result="ok"}"#),
        2.0
    );
    assert_eq!(
        metric_value(
            &metrics,
            r#"quota_proxy_config_reloads_total{result="error"}"#
        ),
        2.0
    );
    assert!(!binary.logs().join("\n").contains(token));
}

/// Slack for a busy 2-core machine on top of what is measured.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Flaw: at exit the log writer's guard (tracing-appender's `WorkerGuard`)
/// is dropped to write the queued lines; when the queue is full it waits
/// 100 ms, then `println!`s "Failed to send shutdown signal to logging
/// worker" to stdout, and stdout blocks. A systemd service's stdout and
/// stderr are one stream to journald by default (the shipped unit sets
/// neither): with journald stalled (the fault the non-blocking writer was
/// made for), the drained proxy hung at its very last step until
/// `TimeoutStopSec` (55 s) sent SIGKILL, and a restart of the app waited
/// that long with nothing listening. Here stdout and stderr are one
/// unread pipe, the queue is full (lines counted dropped), and the proxy
/// is told to stop: it must exit.
#[tokio::test]
async fn a_stalled_log_stream_does_not_hang_the_exit() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let config = format!(
        r#"
upstream = "http://{}"
threads = 1
shutdown_grace = "1s"

[plans.free]
daily = 100000

[identity]
default_plan = "free"

[[routes]]
method = "POST"
path = "/chat/{{id}}/send/"
"#,
        upstream.addr()
    );
    // Every inspected request logs lines, more at trace: the queue fills.
    let mut binary = Binary::start_with_stdout_on_stderr(&config, &[("RUST_LOG", "trace")]).await;
    let admin = crate::support::proxy::TestClient::new(binary.admin);
    binary.stop_reading_logs();
    let mut dropped = 0;
    // One line per image request: the pipe (about 200 lines) and the
    // 4,096-line queue are full after some 4,300.
    for _ in 0..20 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let proxy = binary.proxy;
            batch.spawn(async move {
                for _ in 0..125 {
                    let answer = image_request(proxy).await;
                    assert_eq!(answer, Ok(200), "an image request with the log unread");
                }
            });
        }
        while let Some(done) = batch.join_next().await {
            done.expect("client task");
        }
        let metrics = admin
            .send(http::Method::GET, "/metrics", &[], "")
            .await
            .text();
        dropped = metrics
            .lines()
            .find_map(|l| l.strip_prefix("quota_proxy_log_lines_dropped_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if dropped > 0 {
            break;
        }
    }
    assert!(
        dropped > 0,
        "the log queue never filled; {} lines read",
        binary.logs().len()
    );
    binary.signal("TERM");
    let status = binary.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

/// An image request to the inspected route on a new connection, closed
/// after its answer: its status, or why there is none.
async fn image_request(proxy: SocketAddr) -> Result<u16, String> {
    let body = r#"{"generate_image": true}"#;
    let request = format!(
        "POST /chat/1/send/ HTTP/1.1\r\nhost: app\r\nx-user-id: u1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    status_on_new_connection(proxy, request.as_bytes(), ANSWER_WITHIN).await
}
