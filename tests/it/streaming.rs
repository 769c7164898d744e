//! The Django chat app's shape, end to end: replies stream as `text/plain`
//! for as long as generation takes, images are saved at the very end and
//! reported in-band (`[IMAGES_SAVED]…[IMAGES_SAVED_END]`), image-editing
//! sessions generate images whatever the flag says, and the preset config
//! `config/django-mobixai.toml` is used unchanged. How the in-band report
//! is read (the marker, SSE, trailers, a reservation as long as its
//! stream) is in `streaming_reports.rs`, which shares the app and helpers
//! here.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::instant::at;
use crate::support::proxy::{Proxy, TestClient};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use bytes::Bytes;
use http::{Method, StatusCode};

/// A Wednesday, 13:30 in Tehran.
pub(crate) const NOW: &str = "2031-05-14T10:00:00Z";
const GENERIC: &str =
    "شما به حد مجاز تولید تصویر رسیده‌اید. برای تولید تصویرهای بیشتر، اشتراک خود را ارتقاء دهید.";
/// The chatbot of session 5 is of type `image_editing`.
const IMAGE_EDITING_SESSION: &str = "5";
/// The app's access view fails (500) for session 9.
const BROKEN_PROBE_SESSION: &str = "9";

pub(crate) fn preset() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/django-mobixai.toml");
    std::fs::read_to_string(path).expect("preset config")
}

/// The app's `send_message` flag rule, written out independently of the
/// proxy: multipart `== 'true'`, otherwise JSON with Python truthiness.
fn app_flag(request: &RecordedRequest) -> bool {
    let content_type = request.header("content-type").unwrap_or("");
    if content_type.starts_with("multipart/form-data") {
        let body = String::from_utf8_lossy(&request.body);
        let marker = "name=\"generate_image\"\r\n\r\n";
        return body
            .rmatch_indices(marker)
            .next()
            .is_some_and(|(i, _)| body[i + marker.len()..].starts_with("true\r\n"));
    }
    let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
    match json.get("generate_image") {
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => false,
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(serde_json::Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(serde_json::Value::Object(o)) => !o.is_empty(),
        Some(serde_json::Value::Bool(true)) => true,
    }
}

/// The README's identity view: the user is the `sessionid` cookie, on the
/// free plan (3 a day), except users named `one…`, who may make 1 a day.
pub(crate) fn identity_view(request: &RecordedRequest) -> Option<Reply> {
    if request.uri.path() != "/api/quota/identity/" {
        return None;
    }
    let user = request
        .header("cookie")
        .and_then(|c| c.strip_prefix("sessionid="));
    Some(match user {
        Some(user) => Reply::ok().json(serde_json::json!({
            "user_id": user,
            "plan": "free",
            "limits": {"daily": if user.starts_with("one") { 1 } else { 3 }, "weekly": 10, "monthly": 30},
        })),
        None => Reply::status(401).json(serde_json::json!({"detail": "not authenticated"})),
    })
}

/// An upstream that behaves like the app (including the identity view of
/// the README); counts probe calls and images.
pub(crate) struct App {
    pub(crate) upstream: TestUpstream,
    probes: Arc<AtomicUsize>,
    images: Arc<AtomicUsize>,
}

pub(crate) async fn app(chunk_delay: Duration) -> App {
    let probes = Arc::new(AtomicUsize::new(0));
    let images = Arc::new(AtomicUsize::new(0));
    let (p, n) = (Arc::clone(&probes), Arc::clone(&images));
    let upstream = TestUpstream::start(move |request: RecordedRequest| {
        let (probes, images) = (Arc::clone(&p), Arc::clone(&n));
        async move {
            let path = request.uri.path().to_owned();
            let session = path.split('/').nth(3).unwrap_or("").to_owned();
            if path.ends_with("/image-generation-access/") {
                probes.fetch_add(1, Ordering::SeqCst);
                if session == BROKEN_PROBE_SESSION {
                    return Reply::status(500).body("access view broken");
                }
                let access = session == IMAGE_EDITING_SESSION;
                return Reply::ok().json(serde_json::json!({ "has_access": access }));
            }
            // Django's session middleware: the user is the `sessionid`.
            let user = request
                .header("cookie")
                .and_then(|c| c.strip_prefix("sessionid="))
                .map(str::to_owned);
            if let Some(reply) = identity_view(&request) {
                return reply;
            }
            let Some(user) = user else {
                return Reply::status(302).header("location", "/accounts/login/");
            };
            if path.ends_with("/send/") && request.header("x-user-id") != Some(user.as_str()) {
                // The proxy sets the verified user on flagged requests and
                // never passes on the client's own claim.
                assert!(
                    request.header("x-user-id").is_none(),
                    "unverified x-user-id reached the app"
                );
            }
            let generate = app_flag(&request) || session == IMAGE_EDITING_SESSION;
            if generate {
                images.fetch_add(1, Ordering::SeqCst);
            }
            let mut chunks: Vec<(Bytes, Duration)> = vec![
                (
                    Bytes::from_static(b"[USER_MESSAGE]{\"id\": 1}[USER_MESSAGE_END]"),
                    Duration::ZERO,
                ),
                (Bytes::from_static(b"Here is "), chunk_delay),
                (Bytes::from_static(b"your reply."), chunk_delay),
            ];
            if generate {
                // The report carries the request's token, and arrives split
                // across two chunks.
                let token = request.header("x-quota-report-token").unwrap_or("");
                let report = Bytes::from(format!(
                    "[IMAGES_SAVED]{{\"count\": 1, \"token\": \"{token}\"}}[IMAGES_SAVED_END]"
                ));
                chunks.push((report.slice(..10), chunk_delay));
                chunks.push((report.slice(10..), chunk_delay));
            }
            chunks.push((
                Bytes::from_static(b"[TITLE_UPDATE]{\"title\": \"t\"}[TITLE_UPDATE_END]"),
                Duration::ZERO,
            ));
            Reply::ok()
                .header("content-type", "text/plain; charset=utf-8")
                .header("x-accel-buffering", "no")
                .stream(chunks)
        }
    })
    .await;
    App {
        upstream,
        probes,
        images,
    }
}

fn multipart(generate: &str) -> (String, Vec<u8>) {
    let body = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nhello\r\n\
         --b0undary\r\nContent-Disposition: form-data; name=\"use_web_search\"\r\n\r\nfalse\r\n\
         --b0undary\r\nContent-Disposition: form-data; name=\"generate_image\"\r\n\r\n{generate}\r\n\
         --b0undary\r\nContent-Disposition: form-data; name=\"files\"; filename=\"x.png\"\r\n\
         Content-Type: image/png\r\n\r\n\x7fPNG\r\n\x1a\n\r\n--b0undary--\r\n"
    );
    (
        "multipart/form-data; boundary=b0undary".to_owned(),
        body.into_bytes(),
    )
}

pub(crate) async fn send(
    client: &TestClient,
    session: &str,
    user: &str,
    generate: &str,
) -> crate::support::proxy::Answer {
    let (content_type, body) = multipart(generate);
    let cookie = format!("sessionid={user}");
    client
        .send(
            Method::POST,
            &format!("/chat/session/{session}/send/"),
            &[
                ("cookie", &cookie),
                // A claim the proxy must not believe.
                ("x-user-id", "someone-else"),
                ("content-type", &content_type),
            ],
            body,
        )
        .await
}

/// Sends a flagged message from `user` and returns the reply's body as it
/// streams, to read frame by frame (or drop half-way).
pub(crate) async fn open_stream(proxy: &Proxy, user: &str) -> hyper::body::Incoming {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let (content_type, body) = multipart("true");
    let request = http::Request::post(format!("http://{}/chat/session/1/send/", proxy.addr))
        .header("cookie", format!("sessionid={user}"))
        .header("content-type", content_type)
        .body(http_body_util::Full::new(Bytes::from(body)))
        .expect("request");
    client.request(request).await.expect("answer").into_body()
}

#[tokio::test]
async fn preset_enforces_three_a_day_against_the_app() {
    let app = app(Duration::from_millis(5)).await;
    let proxy = Proxy::memory(&preset(), &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    for i in 0..3 {
        let answer = send(&client, "1", "alice", "true").await;
        assert_eq!(answer.status, StatusCode::OK, "reply {i}");
        let text = answer.text();
        assert!(text.starts_with("[USER_MESSAGE]"), "{text}");
        assert!(text.ends_with("[TITLE_UPDATE_END]"), "{text}");
        assert!(!text.contains("IMAGES_SAVED"), "marker stripped: {text}");
        assert_eq!(answer.headers["x-accel-buffering"], "no");
        proxy.wait_settled("alice", i + 1).await;
    }
    let denied = send(&client, "1", "alice", "true").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(
        &denied.body[..],
        format!("{{\"error\":\"{GENERIC}\"}}").as_bytes()
    );
    assert_eq!(app.images.load(Ordering::SeqCst), 3);

    // "True" is not "true" for the multipart form: not flagged, not counted.
    let answer = send(&client, "1", "alice", "True").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(app.images.load(Ordering::SeqCst), 3);

    // An image-editing session generates images without the flag: counted,
    // and denied once the day's three are used.
    let answer = send(&client, IMAGE_EDITING_SESSION, "bob", "false").await;
    assert_eq!(answer.status, StatusCode::OK);
    proxy.wait_settled("bob", 1).await;
    for _ in 0..2 {
        send(&client, IMAGE_EDITING_SESSION, "bob", "false").await;
    }
    proxy.wait_settled("bob", 3).await;
    let denied = send(&client, IMAGE_EDITING_SESSION, "bob", "false").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    // The probe was asked once per session and user, then cached.
    assert_eq!(
        app.probes.load(Ordering::SeqCst),
        2,
        "sessions 1 and 5 for alice/bob"
    );

    // Unauthenticated: Django's redirect to login passes through untouched.
    let answer = client
        .send(
            Method::POST,
            "/chat/session/1/send/",
            &[("content-type", "application/json")],
            r#"{"generate_image": true}"#,
        )
        .await;
    assert_eq!(answer.status, StatusCode::FOUND);
    assert_eq!(answer.headers["location"], "/accounts/login/");
}

/// How many chat messages (not probes, not identity calls) reached the app.
fn messages(app: &App) -> usize {
    app.upstream
        .requests()
        .iter()
        .filter(|r| r.uri.path().ends_with("/send/"))
        .count()
}

/// Sends `body` as JSON from `user` to the ordinary session 1.
async fn send_json(client: &TestClient, user: &str, body: &str) -> crate::support::proxy::Answer {
    let cookie = format!("sessionid={user}");
    let headers = [
        ("cookie", cookie.as_str()),
        ("content-type", "application/json"),
    ];
    client
        .send(
            Method::POST,
            "/chat/session/1/send/",
            &headers,
            body.to_owned(),
        )
        .await
}

/// The preset's JSON rule is Python's truthiness (`if generate_image:`),
/// judged on users already at their limit: a value Python finds true is
/// denied on that very request and never reaches the app; a false one is
/// forwarded though the user has nothing left, with no reservation.
#[tokio::test]
async fn json_bodies_follow_python_truthiness_at_the_limit() {
    let app = app(Duration::ZERO).await;
    let proxy = Proxy::memory(&preset(), &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let cases = [
        // `"false"` is a non-empty string: true in Python (not in DRF).
        (r#"{"generate_image": "false"}"#, true),
        (r#"{"generate_image": "0"}"#, true),
        (r#"{"generate_image": "True"}"#, true),
        (r#"{"generate_image": true}"#, true),
        (r#"{"generate_image": 1}"#, true),
        (r#"{"generate_image": 2}"#, true),
        (r#"{"generate_image": -0.5}"#, true),
        (r#"{"generate_image": [0]}"#, true),
        (r#"{"generate_image": {"a": 0}}"#, true),
        (r#"{"generate_image": false, "generate_image": true}"#, true),
        (r#"{"generate_image": false}"#, false),
        (r#"{"generate_image": ""}"#, false),
        (r#"{"generate_image": 0}"#, false),
        (r#"{"generate_image": 0.0}"#, false),
        (r#"{"generate_image": null}"#, false),
        (r#"{"generate_image": []}"#, false),
        (r#"{"generate_image": {}}"#, false),
        (
            r#"{"generate_image": true, "generate_image": false}"#,
            false,
        ),
        (r#"{"message": "no flag"}"#, false),
    ];
    for (i, (body, truthy)) in cases.into_iter().enumerate() {
        let user = format!("json{i}");
        proxy.fill(&user, 3).await;
        let (sent, calls) = (messages(&app), proxy.store.calls());
        let answer = send_json(&client, &user, body).await;
        if truthy {
            assert_eq!(answer.status, StatusCode::FORBIDDEN, "{body}: denied");
            assert_eq!(messages(&app), sent, "{body}: not forwarded");
        } else {
            assert_eq!(answer.status, StatusCode::OK, "{body}: forwarded");
            assert_eq!(messages(&app), sent + 1, "{body}: forwarded");
            assert_eq!(proxy.store.calls(), calls, "{body}: no reservation");
        }
        assert_eq!(proxy.wait_settled(&user, 3).await[0].used, 3, "{body}");
    }
}

/// A user already at the limit opens an image-editing session: the very
/// first message, unflagged, is denied because the probe says the session
/// always generates; the same user's unflagged message to an ordinary
/// session goes through. (Without the probe's answer, the first message
/// would be forwarded and only counted afterwards, from its report.)
#[tokio::test]
async fn first_image_editing_message_of_a_user_at_the_limit_is_denied() {
    let app = app(Duration::ZERO).await;
    let proxy = Proxy::memory(&preset(), &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    proxy.fill("ivy", 3).await;

    let denied = send(&client, IMAGE_EDITING_SESSION, "ivy", "false").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text());
    assert_eq!(app.probes.load(Ordering::SeqCst), 1, "the probe was asked");
    assert_eq!(messages(&app), 0, "the message never reached the app");
    assert_eq!(app.images.load(Ordering::SeqCst), 0);

    let ordinary = send(&client, "1", "ivy", "false").await;
    assert_eq!(ordinary.status, StatusCode::OK, "{}", ordinary.text());
    assert_eq!(app.images.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.wait_settled("ivy", 3).await[0].used, 3);
}

/// A probe that cannot answer (500) counts as "this session generates":
/// a user at the limit is denied, unflagged message and all, and a user
/// with room is reserved, forwarded, and released when nothing is saved.
#[tokio::test]
async fn a_failing_probe_counts_as_forced_at_the_limit() {
    let app = app(Duration::ZERO).await;
    let proxy = Proxy::memory(&preset(), &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    proxy.fill("pat", 3).await;
    let denied = send(&client, BROKEN_PROBE_SESSION, "pat", "false").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text());
    assert_eq!(messages(&app), 0, "denied before the app");

    let calls = proxy.store.calls();
    let answer = send(&client, BROKEN_PROBE_SESSION, "sam", "false").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(messages(&app), 1);
    let usage = proxy.wait_settled("sam", 0).await;
    assert_eq!((usage[0].used, usage[0].reserved), (0, 0));
    assert_eq!(proxy.store.calls(), calls + 2, "one reserve, one release");
}

#[tokio::test]
async fn a_session_that_saved_images_unflagged_is_flagged_from_then_on() {
    // No probe: only the report teaches the proxy about the session.
    let app = app(Duration::ZERO).await;
    let config = preset().replace(
        "probe = { path = \"/chat/session/<int:session_id>/image-generation-access/\", json_field = \"has_access\", cache_ttl = \"10m\" }\n",
        "",
    );
    assert!(!config.contains("probe ="));
    let proxy = Proxy::memory(&config, &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    // The first unflagged message saves an image: counted from its report.
    send(&client, IMAGE_EDITING_SESSION, "ed", "false").await;
    proxy.wait_settled("ed", 1).await;
    send(&client, IMAGE_EDITING_SESSION, "ed", "false").await;
    proxy.wait_settled("ed", 2).await;
    // Now the session is known: the third is reserved up front, and the
    // fourth is denied before reaching the app.
    send(&client, IMAGE_EDITING_SESSION, "ed", "false").await;
    proxy.wait_settled("ed", 3).await;
    let denied = send(&client, IMAGE_EDITING_SESSION, "ed", "false").await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(app.images.load(Ordering::SeqCst), 3);
    assert_eq!(app.probes.load(Ordering::SeqCst), 0);
}

/// The preset with its `shadow = true` line uncommented: a user the app
/// allows 1 a day streams three replies that save images; all three reach
/// the app, the two over the limit marked `X-Quota-Shadow-Denied: daily`,
/// and their in-band reports still count. The status path the preset turns
/// on then says so.
#[tokio::test]
async fn preset_in_shadow_forwards_and_counts_in_band_reports() {
    let app = app(Duration::from_millis(5)).await;
    let config = preset().replace("# shadow = true", "shadow = true");
    assert!(
        config.contains("\nshadow = true"),
        "the preset offers the line"
    );
    let proxy = Proxy::memory(&config, &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    for i in 1..=3 {
        let answer = send(&client, "1", "one-a", "true").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "reply {i}: {}",
            answer.text()
        );
        assert!(!answer.text().contains("IMAGES_SAVED"));
        proxy.wait_settled("one-a", i).await;
    }
    assert_eq!(app.images.load(Ordering::SeqCst), 3);
    let marks: Vec<Option<String>> = app
        .upstream
        .requests()
        .iter()
        .filter(|r| r.uri.path().ends_with("/send/"))
        .map(|r| r.header("x-quota-shadow-denied").map(str::to_owned))
        .collect();
    assert_eq!(
        marks,
        [None, Some("daily".to_owned()), Some("daily".to_owned())]
    );
    let status = client
        .send(
            Method::GET,
            "/quota-status/",
            &[("cookie", "sessionid=one-a")],
            "",
        )
        .await;
    assert_eq!(status.status, StatusCode::OK, "{}", status.text());
    let status = status.json();
    assert_eq!(status["shadow"], true);
    assert_eq!(status["periods"][0]["used"], 3);
    assert_eq!(status["periods"][0]["remaining"], 0);
}
