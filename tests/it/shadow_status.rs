//! Shadow mode and the quota-status endpoint (issue 20). Shadow mode runs
//! on the real binary, on the memory store and on Redis (five flagged
//! requests of a user allowed three a day all reach the upstream, usage
//! shows five, the metrics two shadow denials), and is switched on and off
//! by a reload. The status endpoint runs in the real proxy with a manual
//! clock, so its `resets_at` are exact, with the header, forward-auth
//! (session cookie) identities, and a failing store.

use std::time::{Duration, Instant};

use crate::support::binary::Binary;
use crate::support::instant::at;
use crate::support::proxy::{Answer, Proxy, StoreChoice, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::identity_server::{IdentityServer, Mode, PATH, Plan};
use crate::support::on_both_stores;

/// Every bounded wait of this file.
const WITHIN: Duration = Duration::from_secs(10);
const TOKEN: &str = "shadow-test-token";
const SHADOW: &str = "x-quota-shadow-denied";
const STATUS: &str = "/quota-status/";
/// A Wednesday, 13:30 in Tehran.
const NOW: &str = "2031-05-14T10:00:00Z";

/// An upstream that saves an image for every request but the status path
/// (which it must never see) and says so in `X-Images-Saved`.
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|_: RecordedRequest| async move {
        Reply::ok().header("x-images-saved", "1").body("an image")
    })
    .await
}

/// A flagged request from `user` (header identity) on `path`, with
/// `extra` headers.
async fn generate(client: &TestClient, path: &str, user: &str, extra: &[(&str, &str)]) -> Answer {
    let mut headers = vec![("x-user-id", user), ("content-type", "application/json")];
    headers.extend_from_slice(extra);
    client
        .send(Method::POST, path, &headers, r#"{"generate_image": true}"#)
        .await
}

async fn status_of(client: &TestClient, method: Method, headers: &[(&str, &str)]) -> Answer {
    client.send(method, STATUS, headers, "").await
}

fn metric_value(metrics: &str, series: &str) -> f64 {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{series} ")))
        .unwrap_or_else(|| panic!("no series {series} in:\n{metrics}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {line}"))
}

fn requests(decision: &str) -> String {
    format!(r#"quota_proxy_requests_total{{route="POST /gen/",decision="{decision}"}}"#)
}

// ---------------------------------------------------------------------------
// Shadow mode on the real binary

/// One route, a `free` plan of 3 a day in shadow, the status path, and
/// the admin token; `top` goes above every table, `store` at the end.
fn binary_config(upstream: &TestUpstream, top: &str, free: &str, store: &str) -> String {
    format!(
        r#"
upstream = "http://{upstream}"
{top}
[identity]
default_plan = "free"
[plans]
free = {{ {free} }}
[[routes]]
method = "POST"
path = "/gen/"
[status]
path = "/quota-status/"
[admin]
token_env = "QP_TEST_ADMIN_TOKEN"
{store}
"#,
        upstream = upstream.authority()
    )
}

/// The admin usage API's daily `used` of `user`, once it reaches `used`
/// with nothing reserved (the last settle lands just after its answer).
async fn wait_used(binary: &Binary, user: &str, used: u64) -> Value {
    let admin = TestClient::new(binary.admin);
    let bearer = format!("Bearer {TOKEN}");
    let path = format!("/v1/users/{user}/usage");
    let deadline = Instant::now() + WITHIN;
    loop {
        let shown = admin
            .send(Method::GET, &path, &[("authorization", &bearer)], "")
            .await;
        assert_eq!(shown.status, StatusCode::OK, "{}", shown.text());
        let shown = shown.json();
        let daily = &shown["periods"]["daily"];
        if daily["used"] == used && daily["reserved"] == 0 {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WITHIN:?} for {used} used: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn five_requests_in_shadow_all_reach_the_upstream(store: &str) {
    let upstream = saving_upstream().await;
    let config = binary_config(
        &upstream,
        "",
        "daily = 3, weekly = 10, monthly = 30, shadow = true",
        store,
    );
    let binary = Binary::start(&config, &[("QP_TEST_ADMIN_TOKEN", TOKEN)]).await;
    let proxy = TestClient::new(binary.proxy);
    let mut ids = Vec::new();
    for i in 1..=5 {
        // A client's own copy of the header, in two spellings, never
        // reaches the upstream.
        let spoofed = [(SHADOW, "none"), ("x_quota_shadow_denied", "none")];
        let answer = generate(&proxy, "/gen/", "7", &spoofed).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.text()
        );
        assert_eq!(upstream.count(), i, "request {i} reached the upstream");
        let seen = upstream.last_request().headers;
        assert!(seen.get("x_quota_shadow_denied").is_none());
        let marks: Vec<_> = seen.get_all(SHADOW).iter().collect();
        let left = 3_usize.saturating_sub(i);
        if i <= 3 {
            assert!(marks.is_empty(), "request {i} has room: {marks:?}");
        } else {
            assert_eq!(marks, ["daily"], "request {i} would be denied");
            ids.push(
                answer.headers["x-request-id"]
                    .to_str()
                    .expect("id")
                    .to_owned(),
            );
        }
        // RateLimit headers as in enforce mode, none left once over.
        let ratelimit = answer.headers["ratelimit"].to_str().expect("ratelimit");
        assert!(
            ratelimit.starts_with(&format!("\"daily\";r={left};")),
            "{ratelimit}"
        );
    }
    // Usage kept counting: switching to enforce starts from true numbers.
    let shown = wait_used(&binary, "7", 5).await;
    assert_eq!(shown["periods"]["weekly"]["used"], 5);
    assert_eq!(shown["periods"]["daily"]["remaining"], 0);
    let metrics = TestClient::new(binary.admin)
        .send(Method::GET, "/metrics", &[], "")
        .await
        .text();
    assert_eq!(metric_value(&metrics, &requests("shadow_denied")), 2.0);
    assert_eq!(metric_value(&metrics, &requests("allowed")), 3.0);
    assert_eq!(metric_value(&metrics, &requests("denied")), 0.0);
    // Logged as "would deny", with the period and the request id.
    let would = |l: &Value| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("would deny"))
    };
    binary.wait_for_logs(2, WITHIN, would).await;
    let lines: Vec<Value> = binary.json_logs().into_iter().filter(would).collect();
    assert_eq!(lines.len(), 2);
    for (line, id) in lines.iter().zip(&ids) {
        assert_eq!(line["period"], "daily", "{line}");
        assert_eq!(line["decision"], "shadow_denied", "{line}");
        assert_eq!(line["request_id"], id.as_str(), "{line}");
    }
    // The status endpoint on the binary: the user is in shadow, 0 left.
    let status = status_of(&proxy, Method::GET, &[("x-user-id", "7")]).await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text());
    let status = status.json();
    assert_eq!(status["shadow"], true);
    assert_eq!(status["periods"][0]["used"], 5);
    assert_eq!(status["periods"][0]["remaining"], 0);
    assert_eq!(upstream.count(), 5, "the status call is not forwarded");
}

#[tokio::test]
async fn five_requests_in_shadow_on_the_memory_store() {
    five_requests_in_shadow_all_reach_the_upstream("").await;
}

#[tokio::test]
async fn five_requests_in_shadow_on_redis() {
    let server = RedisServer::start();
    let store = format!("[store]\nkind = \"redis\"\nurl = \"{}\"", server.url());
    five_requests_in_shadow_all_reach_the_upstream(&store).await;
}

#[tokio::test]
async fn reload_switches_shadow_on_and_off() {
    let upstream = saving_upstream().await;
    let config = |top: &str| binary_config(&upstream, top, "daily = 1", "");
    let binary = Binary::start(&config(""), &[("QP_TEST_ADMIN_TOKEN", TOKEN)]).await;
    let proxy = TestClient::new(binary.proxy);
    assert_eq!(
        generate(&proxy, "/gen/", "7", &[]).await.status,
        StatusCode::OK
    );
    let denied = generate(&proxy, "/gen/", "7", &[]).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upstream.count(), 1);

    // SIGHUP into shadow mode everywhere: forwarded, flagged, counted.
    binary.write_config(&config("shadow = true"));
    binary.signal("HUP");
    let reloaded = |l: &Value| l["message"] == "config reloaded";
    binary.wait_for_logs(1, WITHIN, reloaded).await;
    let forwarded = generate(&proxy, "/gen/", "7", &[]).await;
    assert_eq!(forwarded.status, StatusCode::OK, "{}", forwarded.text());
    assert_eq!(upstream.count(), 2);
    assert_eq!(upstream.last_request().headers[SHADOW], "daily");
    wait_used(&binary, "7", 2).await;

    // The admin reload back to enforce: denied again, from the true count.
    binary.write_config(&config(""));
    let bearer = format!("Bearer {TOKEN}");
    let reload = TestClient::new(binary.admin)
        .send(
            Method::POST,
            "/v1/reload",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());
    let denied = generate(&proxy, "/gen/", "7", &[]).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upstream.count(), 2);
}

// ---------------------------------------------------------------------------
// Route shadow, and the status endpoint, in the proxy with a manual clock

const CONFIG: &str = r#"
shadow_header = "X-Would-Deny"
[identity]
default_plan = "free"
[plans]
free = { daily = 3, weekly = 10, monthly = 30 }
[[routes]]
method = "POST"
path = "/gen/"
[[routes]]
method = "POST"
path = "/try/"
shadow = true
[status]
path = "/quota-status/"
"#;

#[tokio::test]
async fn a_route_in_shadow_forwards_while_the_others_deny() {
    let upstream = saving_upstream().await;
    let proxy = Proxy::memory(CONFIG, &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    proxy.fill("7", 3).await;
    let denied = generate(&client, "/gen/", "7", &[]).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upstream.count(), 0);
    let tried = generate(&client, "/try/", "7", &[("x-would-deny", "no")]).await;
    assert_eq!(tried.status, StatusCode::OK);
    assert_eq!(upstream.count(), 1);
    let seen = upstream.last_request().headers;
    assert_eq!(
        seen.get_all("x-would-deny").iter().collect::<Vec<_>>(),
        ["daily"]
    );
    assert!(seen.get(SHADOW).is_none(), "the configured name only");
    proxy.wait_settled("7", 4).await;
    // A user on the route in shadow is not in shadow wherever they ask.
    let status = status_of(&client, Method::GET, &[("x-user-id", "7")]).await;
    assert_eq!(status.json()["shadow"], false);
}

on_both_stores! {
    status_after_one_request_reads_once_and_is_never_forwarded(store) {
        let upstream = saving_upstream().await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        assert_eq!(generate(&client, "/gen/", "7", &[]).await.status, StatusCode::OK);
        proxy.wait_settled("7", 1).await;
        let (reads, writes) = (proxy.store.reads(), proxy.store.calls());

        let answer = status_of(&client, Method::GET, &[("x-user-id", "7")]).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(proxy.store.reads(), reads + 1, "one store round trip");
        assert_eq!(proxy.store.calls(), writes, "no reserve, settle or extend");
        assert_eq!(upstream.count(), 1, "the upstream never saw the status call");
        assert_eq!(answer.headers["cache-control"], "no-store");
        assert_eq!(answer.headers["content-type"], "application/json; charset=utf-8");
        assert!(answer.headers.contains_key("x-request-id"));
        let period = |period: &str, limit: u64, resets_at: &str| {
            json!({"period": period, "limit": limit, "used": 1, "reserved": 0,
                   "remaining": limit - 1, "resets_at": resets_at})
        };
        assert_eq!(
            answer.json(),
            json!({
                "user_id": "7",
                "plan": "free",
                "shadow": false,
                "periods": [
                    period("daily", 3, "2031-05-15T00:00:00+03:30"),
                    period("weekly", 10, "2031-05-19T00:00:00+03:30"),
                    period("monthly", 30, "2031-06-01T00:00:00+03:30"),
                ],
            })
        );

        // HEAD: the same head, no body.
        let head = status_of(&client, Method::HEAD, &[("x-user-id", "7")]).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        // Anonymous: 401 JSON.
        let anonymous = status_of(&client, Method::GET, &[]).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        assert!(anonymous.json()["error"].is_string());
        assert_eq!(anonymous.headers["cache-control"], "no-store");
        // Any other method: 405, not forwarded either.
        let post = status_of(&client, Method::POST, &[("x-user-id", "7")]).await;
        assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers["allow"], "GET, HEAD");
        assert!(post.json()["error"].is_string());
        assert_eq!(upstream.count(), 1);
        // A path next to it is the app's.
        let other = client.send(Method::GET, "/quota-status/x", &[("x-user-id", "7")], "").await;
        assert_eq!(other.status, StatusCode::OK);
        assert_eq!(upstream.count(), 2);
    }
}

#[tokio::test]
async fn status_answers_503_when_the_store_fails() {
    let mut server = RedisServer::start();
    let upstream = saving_upstream().await;
    let store = StoreChoice::Redis(server.url());
    let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let ok = status_of(&client, Method::GET, &[("x-user-id", "7")]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    server.kill();
    let failed = status_of(&client, Method::GET, &[("x-user-id", "7")]).await;
    assert_eq!(
        failed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        failed.text()
    );
    assert!(failed.json()["error"].is_string());
    assert_eq!(failed.headers["retry-after"], "5");
    assert_eq!(failed.headers["cache-control"], "no-store");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn status_for_a_session_via_forward_auth_in_persian_months() {
    let identity = IdentityServer::start().await;
    identity.login("s1", 1, Some(Plan::pro()));
    let config = format!(
        "{CONFIG}\n[periods]\ncalendar = \"persian\"\n\
         [identity.forward_auth]\nurl = \"{}{PATH}\"\n",
        identity.base()
    )
    .replace("[identity]\n", "[identity]\nkind = \"forward_auth\"\n");
    let upstream = saving_upstream().await;
    let proxy = Proxy::memory(&config, &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let cookie = [
        ("cookie", "sessionid=s1"),
        ("content-type", "application/json"),
    ];
    let flagged = client
        .send(
            Method::POST,
            "/gen/",
            &cookie,
            r#"{"generate_image": true}"#,
        )
        .await;
    assert_eq!(flagged.status, StatusCode::OK, "{}", flagged.text());
    proxy.wait_settled("1", 1).await;
    // A client's own identity header is not believed here either.
    let spoofed = [("cookie", "sessionid=s1"), ("x-user-id", "2")];
    let status = status_of(&client, Method::GET, &spoofed).await.json();
    assert_eq!(status["user_id"], "1");
    assert_eq!(status["plan"], "pro");
    let periods = &status["periods"];
    assert_eq!(
        (&periods[0]["limit"], &periods[0]["remaining"]),
        (&json!(5), &json!(4))
    );
    // The session's plan has no weekly limit: unlimited is null.
    assert_eq!(
        (&periods[1]["limit"], &periods[1]["remaining"]),
        (&Value::Null, &Value::Null)
    );
    // 24 Ordibehesht 1410: the Persian month ends with 31 Ordibehesht.
    assert_eq!(periods[2]["resets_at"], "2031-05-22T00:00:00+03:30");
    assert_eq!(periods[2]["remaining"], 99);

    // No session: 401. The identity view failing: 503.
    let none = status_of(&client, Method::GET, &[]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    identity.set_mode(Mode::Status(StatusCode::INTERNAL_SERVER_ERROR));
    let failing = status_of(&client, Method::GET, &[("cookie", "sessionid=s2")]).await;
    assert_eq!(
        failing.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        failing.text()
    );
    assert!(failing.json()["error"].is_string());
    assert_eq!(upstream.count(), 1);
}
