//! Operations, on the real binary: the admin listener (probes, metrics,
//! usage API, reload), signals (SIGTERM/SIGINT drain, SIGHUP reload), the
//! command line, and the logs. Each test starts `quota-proxy serve` with a
//! temporary config on free loopback ports, a loopback upstream, and a
//! private `redis-server` where the store must outlive the process.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::binary::{Binary, run_cli};
use crate::support::proxy::{Answer, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};
use quota_proxy::periods::Calendar;
use quota_proxy::store::{QuotaStore, RedisStore};
use serde_json::{Value, json};

const GEN: &str = "/gen/";

/// Every bounded wait of this file.
const WITHIN: Duration = Duration::from_secs(10);

/// A config with one inspected route and two plans; `upstream` is filled in.
fn config(upstream: &TestUpstream, extra: &str) -> String {
    format!(
        r#"
upstream = "http://{upstream}"
{extra}
[identity]
default_plan = "free"
[plans]
free = {{ daily = 1, weekly = 10, monthly = 30 }}
pro = {{ daily = 50, weekly = 0, monthly = 1000 }}
[[routes]]
method = "POST"
path = "/gen/"
"#,
        upstream = upstream.authority()
    )
}

/// An upstream that saves an image for every request to `/gen/` and says
/// so in `X-Images-Saved`.
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        if request.uri.path() == GEN {
            Reply::ok().header("x-images-saved", "1").body("an image")
        } else {
            Reply::ok().body("a page")
        }
    })
    .await
}

async fn generate(client: &TestClient, user: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("x-user-id", user), ("content-type", "application/json")];
    all.extend_from_slice(headers);
    client
        .send(Method::POST, GEN, &all, r#"{"generate_image": true}"#)
        .await
}

async fn admin(
    binary: &Binary,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("authorization", b)])
        .unwrap_or_default();
    TestClient::new(binary.admin)
        .send(method, path, &headers, body.to_owned())
        .await
}

async fn get(binary: &Binary, path: &str) -> Answer {
    admin(binary, Method::GET, path, None, "").await
}

/// Polls `GET /readyz` until it answers `status` (bounded).
async fn wait_ready_status(binary: &Binary, status: StatusCode) -> Answer {
    let deadline = Instant::now() + WITHIN;
    loop {
        let answer = get(binary, "/readyz").await;
        if answer.status == status {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {} ({}) after {WITHIN:?}",
            answer.status,
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric_line<'a>(metrics: &'a str, prefix: &str) -> Option<&'a str> {
    metrics.lines().find(|l| l.starts_with(prefix))
}

fn metric_value(metrics: &str, series: &str) -> f64 {
    let line = metric_line(metrics, &format!("{series} "))
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {line}"))
}

#[tokio::test]
async fn probes_metrics_and_request_logs() {
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(&upstream, ""), &[]).await;
    let proxy = TestClient::new(binary.proxy);

    let health = get(&binary, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["status"], "ok");
    assert_eq!(health.json()["store"]["kind"], "memory");
    assert_eq!(health.json()["store"]["up"], true);
    let ready = get(&binary, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    assert_eq!(ready.json(), json!({"status": "ready"}));
    // The admin endpoints are not on the proxy port: it forwards them.
    let forwarded = proxy.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(forwarded.text(), "a page");

    let secrets = [
        ("cookie", "sessionid=COOKIE-SECRET-123"),
        ("authorization", "Bearer BEARER-SECRET-456"),
    ];
    assert_eq!(generate(&proxy, "7", &secrets).await.status, StatusCode::OK);
    let denied = generate(&proxy, "7", &secrets).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    let page = proxy.send(Method::GET, "/about/", &[], "").await;
    assert_eq!(page.status, StatusCode::OK);

    let metrics = get(&binary, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .expect("text")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = metrics.text();
    let requests = r#"quota_proxy_requests_total{route="POST /gen/","#;
    assert_eq!(
        metric_value(&text, &format!(r#"{requests}decision="allowed"}}"#)),
        1.0
    );
    assert_eq!(
        metric_value(&text, &format!(r#"{requests}decision="denied"}}"#)),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"quota_proxy_requests_total{route="-",decision="passthrough"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"quota_proxy_denials_total{route="POST /gen/",period="daily"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"quota_proxy_upstream_responses_total{class="2xx"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"quota_proxy_settlements_pending{stage="in_flight"}"#
        ),
        0.0
    );
    for series in [
        r#"quota_proxy_store_call_duration_seconds_bucket{op="reserve",outcome="ok",le="#,
        r#"quota_proxy_store_call_duration_seconds_bucket{op="settle",outcome="ok",le="#,
        r#"quota_proxy_store_call_duration_seconds_count{op="ping",outcome="ok"}"#,
        "quota_proxy_upstream_duration_seconds_bucket{le=",
        "quota_proxy_upstream_duration_seconds_count",
        "quota_proxy_build_info{version=",
    ] {
        assert!(
            metric_line(&text, series).is_some(),
            "{series} missing:\n{text}"
        );
    }

    // One line per inspected request, with what an operator needs.
    binary
        .wait_for_logs(1, WITHIN, |l| l["message"] == "inspected request")
        .await;
    let line = binary
        .find_log(|l| l["message"] == "inspected request")
        .expect("request line");
    assert_eq!(line["route"], "POST /gen/");
    assert_eq!(line["user"], "7");
    assert_eq!(line["decision"], "allowed");
    assert_eq!(line["status"], 200);
    assert_eq!(line["images"], 1);
    assert!(line["latency_ms"].is_u64(), "{line}");
    let denial = binary
        .find_log(|l| l["decision"] == "denied")
        .expect("denial line");
    assert_eq!(denial["period"], "daily");
    assert_eq!(denial["status"], 429);
    assert_eq!(denial["user"], "7");
    // Never a cookie, a token or a body.
    let logs = binary.logs().join("\n");
    for secret in ["COOKIE-SECRET-123", "BEARER-SECRET-456", "generate_image"] {
        assert!(!logs.contains(secret), "{secret} logged:\n{logs}");
    }

    // Unknown paths and wrong methods say what exists.
    let missing = get(&binary, "/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].as_str().is_some());
    let post = admin(&binary, Method::POST, "/healthz", None, "").await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(post.headers["allow"], "GET");
    // No token configured: the usage API is off and says how to enable it.
    let off = get(&binary, "/v1/users/7/usage").await;
    assert_eq!(off.status, StatusCode::FORBIDDEN);
    let message = off.json()["error"].as_str().expect("error").to_owned();
    assert!(
        message.contains("admin.token_env") && message.contains("admin.token_file"),
        "{message}"
    );
}

#[tokio::test]
async fn usage_api_shows_adjusts_and_resets_behind_a_token() {
    let upstream = saving_upstream().await;
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "file-token-789\n").expect("token file");
    let extra = format!(
        "[admin]\ntoken_file = {:?}",
        token_file.display().to_string()
    );
    let binary = Binary::start(&config(&upstream, &extra), &[]).await;
    let proxy = TestClient::new(binary.proxy);
    let token = Some("file-token-789");

    let none = get(&binary, "/v1/users/7/usage").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.headers.contains_key("www-authenticate"));
    let wrong = admin(
        &binary,
        Method::GET,
        "/v1/users/7/usage",
        Some("file-token-780"),
        "",
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    assert_eq!(generate(&proxy, "7", &[]).await.status, StatusCode::OK);
    let shown = admin(&binary, Method::GET, "/v1/users/7/usage", token, "").await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text());
    let shown = shown.json();
    assert_eq!(shown["user"], "7");
    assert_eq!(shown["plan"], "free");
    assert_eq!(shown["timezone"], "Asia/Tehran");
    let daily = &shown["periods"]["daily"];
    assert_eq!(
        (
            &daily["used"],
            &daily["reserved"],
            &daily["limit"],
            &daily["remaining"]
        ),
        (&json!(1), &json!(0), &json!(1), &json!(0))
    );
    assert!(
        daily["start"]
            .as_str()
            .expect("start")
            .ends_with("T00:00:00+03:30"),
        "{daily}"
    );
    assert_eq!(shown["periods"]["weekly"]["limit"], 10);

    let pro = admin(
        &binary,
        Method::GET,
        "/v1/users/7/usage?plan=pro",
        token,
        "",
    )
    .await;
    assert_eq!(pro.json()["periods"]["daily"]["limit"], 50);
    assert_eq!(pro.json()["periods"]["weekly"]["limit"], Value::Null);
    let gold = admin(
        &binary,
        Method::GET,
        "/v1/users/7/usage?plan=gold",
        token,
        "",
    )
    .await;
    assert_eq!(gold.status, StatusCode::BAD_REQUEST);
    assert!(gold.text().contains("free, pro"), "{}", gold.text());

    // Refund the daily unit: the user may generate again today.
    let refund = admin(
        &binary,
        Method::POST,
        "/v1/users/7/usage",
        token,
        r#"{"period": "daily", "delta": -1}"#,
    )
    .await;
    assert_eq!(refund.status, StatusCode::OK, "{}", refund.text());
    let periods = &refund.json()["periods"];
    assert_eq!(
        (&periods["daily"]["used"], &periods["weekly"]["used"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(generate(&proxy, "7", &[]).await.status, StatusCode::OK);

    // No period = all three, as an image is counted.
    let added = admin(
        &binary,
        Method::POST,
        "/v1/users/7/usage",
        token,
        r#"{"delta": 2}"#,
    )
    .await;
    let periods = &added.json()["periods"];
    assert_eq!(
        (
            &periods["daily"]["used"],
            &periods["weekly"]["used"],
            &periods["monthly"]["used"]
        ),
        (&json!(3), &json!(4), &json!(4))
    );
    let bad = admin(
        &binary,
        Method::POST,
        "/v1/users/7/usage",
        token,
        r#"{"delta": "x"}"#,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text().contains("delta"), "{}", bad.text());

    let unsaid = admin(&binary, Method::DELETE, "/v1/users/7/usage", token, "").await;
    assert_eq!(unsaid.status, StatusCode::BAD_REQUEST);
    let reset = admin(
        &binary,
        Method::DELETE,
        "/v1/users/7/usage?period=daily",
        token,
        "",
    )
    .await;
    let periods = &reset.json()["periods"];
    assert_eq!(
        (&periods["daily"]["used"], &periods["weekly"]["used"]),
        (&json!(0), &json!(4))
    );
    let reset = admin(
        &binary,
        Method::DELETE,
        "/v1/users/7/usage?period=all",
        token,
        "",
    )
    .await;
    assert_eq!(reset.json()["periods"]["monthly"]["used"], 0);
    assert_eq!(generate(&proxy, "7", &[]).await.status, StatusCode::OK);

    // Ids are percent-decoded path segments.
    let email = admin(&binary, Method::GET, "/v1/users/a%40b.c/usage", token, "").await;
    assert_eq!(email.json()["user"], "a@b.c");
    let put = admin(&binary, Method::PUT, "/v1/users/7/usage", token, "").await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!binary.logs().join("\n").contains("file-token-789"));
}

#[tokio::test]
async fn readiness_ignores_the_store_unless_asked() {
    let mut redis = RedisServer::start();
    let upstream = saving_upstream().await;
    let extra = format!(
        "[store]\nkind = \"redis\"\nurl = \"{}\"\ncommand_timeout = \"200ms\"",
        redis.url()
    );
    let binary = Binary::start(&config(&upstream, &extra), &[]).await;
    let required = format!("{extra}\n[admin]\nready_requires_store = true");
    let strict = Binary::start(&config(&upstream, &required), &[]).await;
    wait_ready_status(&binary, StatusCode::OK).await;
    wait_ready_status(&strict, StatusCode::OK).await;
    redis.kill();
    // Only the pod that asked for it leaves its Service.
    let down = wait_ready_status(&strict, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(
        down.json()["reason"]
            .as_str()
            .expect("reason")
            .contains("store")
    );
    assert_eq!(get(&binary, "/readyz").await.status, StatusCode::OK);
    // Still alive, and saying why the store is not.
    let health = get(&strict, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.json()["store"]["up"], false, "{}", health.text());
    redis.restart();
    wait_ready_status(&strict, StatusCode::OK).await;
}

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

#[test]
fn help_and_check_config() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["check-config", "--help"],
        &["usage", "--help"],
        &["usage", "show", "--help"],
        &["usage", "reset", "--help"],
        &["usage", "adjust", "--help"],
    ] {
        let output = run_cli(None, args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert!(stdout.contains("Usage: quota-proxy"), "{args:?}: {stdout}");
    }
    let usage_help = run_cli(None, &["usage", "--help"]);
    assert!(String::from_utf8_lossy(&usage_help.stdout).contains("Redis"));

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "shutdown_grace = \"45s\"\n").expect("write");
    let output = run_cli(Some(&path), &["check-config"]);
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "shutdown_grace = \"45s\"",
        "[admin]",
        "listen = \"127.0.0.1:9090\"",
        "[log]",
    ] {
        assert!(printed.contains(expected), "{expected} missing:\n{printed}");
    }
    std::fs::write(&path, "[log]\nfilter = \"quota_proxy=loud\"\n").expect("write");
    let output = run_cli(Some(&path), &["check-config"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("log.filter"), "{stderr}");
}

#[test]
fn usage_subcommands_work_on_redis_and_refuse_a_memory_store() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\n[identity]\ndefault_plan = \"free\"\n\
             [plans]\nfree = {{ daily = 3, weekly = 10, monthly = 30 }}\npro = {{ daily = 50 }}\n",
            redis.url()
        ),
    )
    .expect("write");
    let json_of = |args: &[&str]| -> Value {
        let output = run_cli(Some(&path), args);
        assert!(output.status.success(), "{args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).expect("JSON on stdout")
    };
    let used = |v: &Value, period: &str| v["periods"][period]["used"].as_u64().expect("used");

    let added = json_of(&["usage", "adjust", "42", "--delta", "2"]);
    assert_eq!((used(&added, "daily"), used(&added, "monthly")), (2, 2));
    let refunded = json_of(&[
        "usage", "adjust", "42", "--delta", "-1", "--period", "daily",
    ]);
    assert_eq!(
        (used(&refunded, "daily"), used(&refunded, "weekly")),
        (1, 2)
    );
    let shown = json_of(&["usage", "show", "42", "--plan", "pro"]);
    assert_eq!(shown["plan"], "pro");
    assert_eq!(shown["periods"]["daily"]["limit"], 50);
    assert_eq!(used(&shown, "daily"), 1);
    let reset = json_of(&["usage", "reset", "42", "--period", "all"]);
    assert_eq!(
        (
            used(&reset, "daily"),
            used(&reset, "weekly"),
            used(&reset, "monthly")
        ),
        (0, 0, 0)
    );
    let unknown = run_cli(Some(&path), &["usage", "show", "42", "--plan", "gold"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("gold"));

    std::fs::write(&path, "[store]\nkind = \"memory\"\n").expect("write");
    let refused = run_cli(Some(&path), &["usage", "show", "42"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("memory") && stderr.contains("admin API") && stderr.contains("Redis"),
        "{stderr}"
    );
}
