//! Reports a JSON chat API's answer could hide, against the real binary:
//! an answer made long by the user's echoed message, or sent chunked with
//! no `Content-Length`, is not read for its `images_saved`; a flagged 2xx
//! then counts one image (fail closed), so a free user gets no more than
//! the plan's images.

use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::proxy::TestClient;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};

/// A JSON chat API in front of `upstream`: one inspected route, 2 images a
/// day, denials answered 429.
fn json_api_config(upstream: &TestUpstream) -> String {
    format!(
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
    )
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
    let binary = Binary::start(&json_api_config(&upstream), &[]).await;
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

/// The JSON report (`usage.report_json_field`, `images_saved`) is read
/// only from an answer that declares a `Content-Length`. A JSON answer sent
/// chunked (a Django project without `CommonMiddleware`, which adds the
/// length, behind gunicorn, which then chunks; a `StreamingHttpResponse`
/// of JSON) was streamed on unread and settled with no report: every image
/// it reported in the field was free. Now it counts one image for a
/// flagged 2xx, as one declared too long does (found by an attack
/// session).
#[tokio::test]
async fn a_chunked_json_answer_hides_its_report() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        let sent: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let generate = sent["generate_image"] == true;
        let body = serde_json::json!({
            "reply": "here is your image",
            "images_saved": u32::from(generate),
        })
        .to_string();
        Reply::ok()
            .header("content-type", "application/json")
            .stream([(body, Duration::ZERO)])
    })
    .await;
    let binary = Binary::start(&json_api_config(&upstream), &[]).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let answer = TestClient::new(binary.proxy)
            .send(
                Method::POST,
                "/api/chatbot/sessions/5/send/",
                &[
                    ("x-user-id", "chunked"),
                    ("content-type", "application/json"),
                ],
                r#"{"message": "a cat", "generate_image": true}"#,
            )
            .await;
        statuses.push(answer.status);
        // Let the streamed answer settle before the next request.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let generated = upstream.count();
    assert!(
        generated <= 2 && statuses.iter().filter(|s| **s == StatusCode::OK).count() <= 2,
        "a free user (2 a day) had {generated} images generated and reported \
         (\"images_saved\": 1 in each JSON answer, sent chunked; statuses {statuses:?}): a \
         JSON answer without Content-Length is never read for its report, and the \
         reservation is released"
    );
}
