//! Logs people can use, read from the real binary's JSON lines: each
//! decision names the route, the plan, the period that decided, what is left
//! per period and the request id, which is the `X-Request-Id` the upstream
//! saw and the client got back (the client's own only under
//! `log.trust_request_id = true`). The pass-through report warning names the
//! path, at most once a minute (every report counted in a metric), and a
//! report of 0 is not worth one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::proxy::{Answer, TestClient};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};
use serde_json::Value;

/// Every bounded wait of this file.
const WITHIN: Duration = Duration::from_secs(10);

const ROUTE: &str = "POST /gen/";

/// An upstream that saves an image on `/gen/`, reports `X-Images-Saved`
/// with the number in the path elsewhere (`/report/0`, `/report/2`), and
/// remembers the `X-Request-Id` of each request.
async fn upstream(seen: Arc<Mutex<Vec<String>>>) -> TestUpstream {
    TestUpstream::start(move |request: RecordedRequest| {
        let seen = Arc::clone(&seen);
        async move {
            seen.lock()
                .expect("lock")
                .push(request.header("x-request-id").unwrap_or("").to_owned());
            match request.uri.path().strip_prefix("/report/") {
                Some(n) => Reply::ok().header("x-images-saved", n).body("a page"),
                None => Reply::ok().header("x-images-saved", "1").body("an image"),
            }
        }
    })
    .await
}

fn config(upstream: &TestUpstream, extra: &str) -> String {
    format!(
        r#"
upstream = "http://{}"
[log]
{extra}
[identity]
default_plan = "free"
[plans]
free = {{ daily = 2, weekly = 10 }}
[[routes]]
method = "POST"
path = "/gen/"
"#,
        upstream.authority()
    )
}

async fn generate(proxy: &TestClient, request_id: Option<&str>) -> Answer {
    let mut headers = vec![
        ("x-user-id", "7"),
        ("x-subscription-type", "free"),
        ("content-type", "application/json"),
    ];
    if let Some(id) = request_id {
        headers.push(("x-request-id", id));
    }
    proxy
        .send(
            Method::POST,
            "/gen/",
            &headers,
            r#"{"generate_image": true}"#,
        )
        .await
}

fn returned_id(answer: &Answer) -> String {
    answer
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("the answer carries X-Request-Id")
        .to_owned()
}

/// The one log line with `message` and `request_id`, waited for.
async fn line(binary: &Binary, message: &str, request_id: &str) -> Value {
    let matches = |l: &Value| l["message"] == message && l["request_id"] == request_id;
    binary.wait_for_logs(1, WITHIN, matches).await;
    binary.find_log(matches).expect("line")
}

#[tokio::test]
async fn decision_lines_carry_plan_period_remaining_and_the_request_id() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = upstream(Arc::clone(&seen)).await;
    let binary = Binary::start(&config(&upstream, ""), &[]).await;
    let proxy = TestClient::new(binary.proxy);

    // Admitted: the id the upstream saw is the one returned and logged;
    // the client's own is replaced (not trusted by default).
    let first = generate(&proxy, Some("client-chosen")).await;
    assert_eq!(first.status, StatusCode::OK);
    let id = returned_id(&first);
    assert_ne!(id, "client-chosen");
    assert_eq!(seen.lock().expect("lock").last(), Some(&id));
    let allowed = line(&binary, "inspected request", &id).await;
    assert_eq!(allowed["route"], ROUTE);
    assert_eq!(allowed["plan"], "free");
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(allowed["period"], "daily");
    assert_eq!(allowed["remaining_daily"], 1);
    assert_eq!(allowed["remaining_weekly"], 9);
    assert!(
        allowed.get("remaining_monthly").is_none(),
        "monthly is unlimited: {allowed}"
    );

    assert_eq!(generate(&proxy, None).await.status, StatusCode::OK);
    // Denied on the spot: the line says which period and what is left.
    let denied = generate(&proxy, None).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    let id = returned_id(&denied);
    let line = line(&binary, "image quota exceeded", &id).await;
    assert_eq!(line["route"], ROUTE);
    assert_eq!(line["plan"], "free");
    assert_eq!(line["decision"], "denied");
    assert_eq!(line["period"], "daily");
    assert_eq!(line["remaining_daily"], 0);
    assert_eq!(line["remaining_weekly"], 8);
    assert_eq!(
        seen.lock().expect("lock").len(),
        2,
        "a denial never reaches the upstream"
    );

    // Pass-through answers carry an id too, and the upstream saw it.
    let page = proxy.send(Method::GET, "/report/0", &[], "").await;
    assert_eq!(seen.lock().expect("lock").last(), Some(&returned_id(&page)));
}

#[tokio::test]
async fn a_trusted_request_id_is_kept_when_sane() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = upstream(Arc::clone(&seen)).await;
    let binary = Binary::start(&config(&upstream, "trust_request_id = true"), &[]).await;
    let proxy = TestClient::new(binary.proxy);

    let answer = generate(&proxy, Some("front-abc-123")).await;
    assert_eq!(returned_id(&answer), "front-abc-123");
    assert_eq!(
        seen.lock().expect("lock").last().map(String::as_str),
        Some("front-abc-123")
    );
    line(&binary, "inspected request", "front-abc-123").await;

    // Text that is no id is replaced even when trusted.
    let odd = "two words";
    let answer = generate(&proxy, Some(odd)).await;
    assert_ne!(returned_id(&answer), odd);
    assert!(!binary.logs().join("\n").contains(odd));
}

#[tokio::test]
async fn pass_through_reports_warn_with_the_path_unless_zero() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = upstream(seen).await;
    let binary = Binary::start(&config(&upstream, ""), &[]).await;
    let proxy = TestClient::new(binary.proxy);
    let warning = |l: &Value| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("a route that is not inspected reported"))
    };

    let zero = proxy.send(Method::GET, "/report/0", &[], "").await;
    assert_eq!(zero.status, StatusCode::OK);
    assert!(
        zero.headers.get("x-images-saved").is_none(),
        "the report is removed"
    );
    let two = proxy.send(Method::GET, "/report/2", &[], "").await;
    binary.wait_for_logs(1, WITHIN, warning).await;
    let found = binary.find_log(warning).expect("warning");
    assert_eq!(found["path"], "/report/2");
    assert_eq!(found["images"], 2);
    assert_eq!(found["request_id"], returned_id(&two).as_str());
    assert_eq!(
        binary.count_logs(warning),
        1,
        "no warning for a report of 0"
    );

    // An upstream that reports on every answer of such a route: each report
    // counted, one warning a minute (not one log write per request).
    for _ in 0..5 {
        let again = proxy.send(Method::GET, "/report/2", &[], "").await;
        assert_eq!(again.status, StatusCode::OK);
    }
    let metrics = TestClient::new(binary.admin)
        .send(Method::GET, "/metrics", &[], "")
        .await
        .text();
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("quota_proxy_uninspected_reports_total "))
        .unwrap_or_else(|| panic!("no uninspected reports counter in:\n{metrics}"));
    assert_eq!(counted.trim(), "6", "every non-zero report counted");
    assert_eq!(
        binary.count_logs(warning),
        1,
        "the five later reports are within the minute: counted, not logged"
    );
}
