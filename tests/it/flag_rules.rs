//! The flag presets through the real proxy, observed on the decision itself:
//! a user already at the limit sends each body once. A body the backend
//! would generate from (or that the proxy cannot be sure about) must be
//! denied on that very request; a body the backend does not generate from,
//! or refuses while parsing it, must be forwarded (the upstream sees it),
//! unreserved. The upstream never reports an image for these requests, so
//! nothing here passes by being counted afterwards.

use crate::support::proxy::{Proxy, TestClient};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};

const NOW: &str = "2031-05-14T10:00:00Z";

const CONFIG: &str = r#"
[identity]
default_plan = "free"
[plans]
free = { daily = 1, weekly = 0, monthly = 0 }
[[routes]]
method = "POST"
path = "/send/{id}/"
flag_rules = "django-send-message"
deny_status = 403
[[routes]]
method = "POST"
path = "/api/{id}/"
deny_status = 429
[[routes]]
method = "POST"
path = "/form/{id}/"
flag_rules = "django-form"
deny_status = 403
"#;

const B: &str = "XyZ";
const MULTIPART: &str = "multipart/form-data; boundary=XyZ";

fn multipart(value: &str, file_first: bool) -> Vec<u8> {
    let mut body = Vec::new();
    if file_first {
        body.extend_from_slice(
            format!(
                "--{B}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend(std::iter::repeat_n(b'x', 200_000));
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(
        format!(
            "--{B}\r\nContent-Disposition: form-data; name=\"generate_image\"\r\n\r\n{value}\r\n--{B}--\r\n"
        )
        .as_bytes(),
    );
    body
}

#[tokio::test]
async fn presets_decide_at_the_limit_as_the_backend_would() {
    // Reports an image only for the request that fills the quota.
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        let saved = if request.header("x-fill").is_some() {
            "1"
        } else {
            "0"
        };
        Reply::ok().header("x-images-saved", saved).body("ok")
    })
    .await;
    let config = format!("max_body_bytes = 1000000\n{CONFIG}");
    let now = DateTime::parse_from_rfc3339(NOW)
        .expect("instant")
        .with_timezone(&Utc);
    let proxy = Proxy::memory(&config, &upstream, now).await;
    let client = TestClient::new(proxy.addr);
    let send = |path: &'static str, ct: &'static str, body: Vec<u8>| {
        let client = &client;
        async move {
            client
                .send(
                    Method::POST,
                    path,
                    &[("x-user-id", "full"), ("content-type", ct)],
                    body,
                )
                .await
        }
    };
    let fill = client
        .send(
            Method::POST,
            "/api/1/",
            &[
                ("x-user-id", "full"),
                ("x-fill", "1"),
                ("content-type", "application/json"),
            ],
            r#"{"generate_image": true}"#,
        )
        .await;
    assert_eq!(fill.status, StatusCode::OK);
    proxy.wait_settled("full", 1).await;

    let json = |s: &str| s.as_bytes().to_vec();
    // (route, content type, body, denied?)
    let cases: Vec<(&str, &str, Vec<u8>, bool, &str)> = vec![
        // django-send-message: every non-multipart body is json.loads'd.
        (
            "/send/1/",
            "text/plain",
            json(r#"{"generate_image": "false"}"#),
            true,
            "a non-empty string is truthy",
        ),
        (
            "/send/1/",
            "application/x-www-form-urlencoded",
            json(r#"{"generate_image": 1}"#),
            true,
            "a form type is read as JSON",
        ),
        (
            "/send/1/",
            "application/json",
            json(r#"{"generate_image": 0}"#),
            false,
            "0 is falsy",
        ),
        (
            "/send/1/",
            "application/x-www-form-urlencoded",
            json("generate_image=true"),
            false,
            "json.loads raises: rejected",
        ),
        (
            "/send/1/",
            "application/json",
            json(r#"[{"generate_image": true}]"#),
            false,
            "a list has no .get: rejected",
        ),
        (
            "/send/1/",
            MULTIPART,
            multipart("True", false),
            false,
            "multipart is == 'true' exactly",
        ),
        (
            "/send/1/",
            MULTIPART,
            multipart("true", true),
            true,
            "a late multipart flag after a file",
        ),
        // drf (the default): BooleanField, 415 for other types.
        (
            "/api/1/",
            "application/json",
            json(r#"{"generate_image": "tRuE"}"#),
            true,
            "BooleanField lowercases",
        ),
        (
            "/api/1/",
            "text/plain",
            json(r#"{"generate_image": true}"#),
            false,
            "DRF 415",
        ),
        (
            "/api/1/",
            "application/json",
            json(r#"{"generate_image": "2"}"#),
            false,
            "BooleanField 400",
        ),
        (
            "/api/1/?generate_image=true",
            "application/json",
            json("{}"),
            false,
            "the query string is not read",
        ),
        (
            "/api/1/",
            "application/json; charset=utf-16",
            json(r#"{"generate_image": true}"#),
            true,
            "unsure: counted",
        ),
        // django-form: request.POST with .lower() in ('true', '1', 'on').
        (
            "/form/1/",
            "application/x-www-form-urlencoded",
            json("generate_image=ON"),
            true,
            "On is true",
        ),
        (
            "/form/1/",
            "text/plain",
            json(r#"{"generate_image": true}"#),
            false,
            "request.POST is empty for text/plain",
        ),
    ];
    for (path, ct, body, denied, why) in cases {
        let before = upstream.count();
        let answer = send(path, ct, body).await;
        if denied {
            assert!(
                answer.status.is_client_error(),
                "{why}: {path} {ct}: {}",
                answer.status
            );
            assert_eq!(
                upstream.count(),
                before,
                "{why}: a denied request is not forwarded"
            );
        } else {
            assert_eq!(answer.status, StatusCode::OK, "{why}: {path} {ct}");
            assert_eq!(upstream.count(), before + 1, "{why}: forwarded");
            let usage = proxy.usage("full").await;
            assert_eq!(
                (usage[0].used, usage[0].reserved),
                (1, 0),
                "{why}: unreserved"
            );
        }
    }
}
