//! Operations, on the real binary: the admin listener (probes, metrics,
//! usage API), the command line, and the logs. Each test starts
//! `quota-proxy serve` with a temporary config on free loopback ports, a
//! loopback upstream, and a private `redis-server` where the store must
//! outlive the process. Signals and reloads (SIGTERM/SIGINT drain, SIGHUP
//! and the admin reload) are in `ops_signals.rs`, which shares the helpers
//! here.

use std::time::{Duration, Instant};

use crate::support::binary::{Binary, run_cli};
use crate::support::proxy::{Answer, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};
use serde_json::{Value, json};

pub(crate) const GEN: &str = "/gen/";

/// Every bounded wait of this file.
pub(crate) const WITHIN: Duration = Duration::from_secs(10);

/// A config with one inspected route and two plans; `upstream` is filled in.
pub(crate) fn config(upstream: &TestUpstream, extra: &str) -> String {
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
pub(crate) async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        if request.uri.path() == GEN {
            Reply::ok().header("x-images-saved", "1").body("an image")
        } else {
            Reply::ok().body("a page")
        }
    })
    .await
}

pub(crate) async fn generate(client: &TestClient, user: &str, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("x-user-id", user), ("content-type", "application/json")];
    all.extend_from_slice(headers);
    client
        .send(Method::POST, GEN, &all, r#"{"generate_image": true}"#)
        .await
}

pub(crate) async fn admin(
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

pub(crate) async fn get(binary: &Binary, path: &str) -> Answer {
    admin(binary, Method::GET, path, None, "").await
}

/// Polls `GET /readyz` until it answers `status` (bounded).
pub(crate) async fn wait_ready_status(binary: &Binary, status: StatusCode) -> Answer {
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

pub(crate) fn metric_value(metrics: &str, series: &str) -> f64 {
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
    // The memory store answers in place (no future to wait on) and is
    // timed all the same: a reserve for each flagged request (allowed,
    // denied), a settle for the allowed one.
    for (op, calls) in [("reserve", 2.0), ("settle", 1.0)] {
        let series =
            format!(r#"quota_proxy_store_call_duration_seconds_count{{op="{op}",outcome="ok"}}"#);
        assert_eq!(metric_value(&text, &series), calls, "{series}");
    }
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
