//! The Django chat app's shape, end to end: replies stream as `text/plain`
//! for as long as generation takes, images are saved at the very end and
//! reported in-band (`[IMAGES_SAVED]…[IMAGES_SAVED_END]`), image-editing
//! sessions generate images whatever the flag says, and the preset config
//! `config/django-mobixai.toml` is used unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::proxy::{Proxy, TestClient};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use http_body_util::BodyExt;

/// A Wednesday, 13:30 in Tehran.
const NOW: &str = "2031-05-14T10:00:00Z";
const GENERIC: &str =
    "شما به حد مجاز تولید تصویر رسیده‌اید. برای تولید تصویرهای بیشتر، اشتراک خود را ارتقاء دهید.";
/// The chatbot of session 5 is of type `image_editing`.
const IMAGE_EDITING_SESSION: &str = "5";
/// The app's access view fails (500) for session 9.
const BROKEN_PROBE_SESSION: &str = "9";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

fn preset() -> String {
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
fn identity_view(request: &RecordedRequest) -> Option<Reply> {
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
struct App {
    upstream: TestUpstream,
    probes: Arc<AtomicUsize>,
    images: Arc<AtomicUsize>,
}

async fn app(chunk_delay: Duration) -> App {
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

async fn send(
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
async fn open_stream(proxy: &Proxy, user: &str) -> hyper::body::Incoming {
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
async fn first_byte_arrives_before_the_stream_ends() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        identity_view(&request).unwrap_or_else(|| {
            Reply::ok().stream([
                ("first", Duration::ZERO),
                ("second", Duration::from_millis(800)),
            ])
        })
    })
    .await;
    let proxy = Proxy::memory(&preset(), &upstream, at(NOW)).await;
    let started = Instant::now();
    let mut body = open_stream(&proxy, "s").await;
    let first = body.frame().await.expect("a frame").expect("data");
    let first_at = started.elapsed();
    assert_eq!(first.into_data().expect("data"), "first");
    while body.frame().await.is_some() {}
    let end_at = started.elapsed();
    assert!(end_at >= Duration::from_millis(800));
    assert!(
        first_at + Duration::from_millis(400) < end_at,
        "first byte at {first_at:?}, end at {end_at:?}"
    );
}

#[tokio::test]
async fn marker_kept_when_not_stripped() {
    let app = app(Duration::ZERO).await;
    let config = preset().replace("strip_marker = true", "strip_marker = false");
    let proxy = Proxy::memory(&config, &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let answer = send(&client, "1", "k", "true").await;
    assert!(
        answer
            .text()
            .contains("[IMAGES_SAVED]{\"count\": 1, \"token\": \"")
    );
    assert_eq!(proxy.wait_settled("k", 1).await[0].used, 1);
}

/// A reply sent whole, with its `Content-Length`, whose end is the marker:
/// the marker is cut and the reply re-framed, so the client gets exactly
/// the rest (a stale length would cut the connection short), and counted.
#[tokio::test]
async fn a_marker_in_a_reply_with_a_length_is_cut_and_reframed() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        identity_view(&request).unwrap_or_else(|| {
            let token = request.header("x-quota-report-token").unwrap_or("");
            Reply::ok()
                .header("content-type", "text/plain; charset=utf-8")
                .body(format!(
                    "Here is your reply.[IMAGES_SAVED]{}[IMAGES_SAVED_END]",
                    serde_json::json!({"count": 1, "token": token})
                ))
        })
    })
    .await;
    let proxy = Proxy::memory(&preset(), &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let answer = send(&client, "1", "whole", "true").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "Here is your reply.");
    assert_eq!(proxy.wait_settled("whole", 1).await[0].used, 1);
}

/// With the report header turned off (`report_header = ""`), the in-band
/// marker alone reports: still read and counted.
#[tokio::test]
async fn the_marker_alone_reports_when_the_header_is_off() {
    let app = app(Duration::ZERO).await;
    let config = preset().replace("[usage]\n", "[usage]\nreport_header = \"\"\n");
    assert!(config.contains("report_header = \"\""));
    let proxy = Proxy::memory(&config, &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let answer = send(&client, "1", "marker", "true").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!answer.text().contains("IMAGES_SAVED"), "{}", answer.text());
    assert_eq!(proxy.wait_settled("marker", 1).await[0].used, 1);
}

#[tokio::test]
async fn settles_when_the_client_leaves_mid_stream() {
    let app = app(Duration::from_millis(150)).await;
    let proxy = Proxy::memory(&preset(), &app.upstream, at(NOW)).await;
    let mut body = open_stream(&proxy, "leaver").await;
    let _ = body.frame().await;
    // The reservation is held while the reply streams.
    assert_eq!(proxy.usage("leaver").await[0].reserved, 1);
    drop(body);
    // The proxy reads the rest of the reply, sees the marker, and counts it.
    let usage = proxy.wait_settled("leaver", 1).await;
    assert_eq!((usage[0].used, usage[0].reserved), (1, 0));
}

#[tokio::test]
async fn reservation_lives_as_long_as_its_stream() {
    // Replies take 3 s; reservations live 1 s unless kept alive.
    let app = app(Duration::from_millis(750)).await;
    let config = preset().replace("reservation_ttl = \"180s\"", "reservation_ttl = \"1s\"");
    let proxy = Proxy::memory(&config, &app.upstream, at(NOW)).await;
    // The proxy's clock follows real time from NOW.
    let clock = proxy.clock.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            clock.advance(chrono::Duration::milliseconds(20));
        }
    });
    let client = TestClient::new(proxy.addr);
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { send(&client, "1", "one", "true").await })
    };
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Past the TTL, the first reply still streams: its unit is still held.
    let second = send(&client, "2", "one", "true").await;
    assert_eq!(second.status, StatusCode::FORBIDDEN);
    assert_eq!(slow.await.expect("task").status, StatusCode::OK);
    assert_eq!(proxy.wait_settled("one", 1).await[0].used, 1);
    ticker.abort();
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

#[tokio::test]
async fn sse_and_trailer_reports_are_counted() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        if request.uri.path().contains("/sse/") {
            let token = request.header("x-quota-report-token").unwrap_or("");
            let report =
                format!("event: images_saved\ndata: {{\"count\": 1, \"token\": \"{token}\"}}\n\n");
            Reply::ok()
                .header("content-type", "text/event-stream")
                .stream([
                    ("event: token\ndata: hi\n\n".to_owned(), Duration::ZERO),
                    (report, Duration::from_millis(10)),
                ])
        } else {
            Reply::ok()
                .stream([("streamed", Duration::ZERO)])
                .trailer("x-images-saved", "1")
        }
    })
    .await;
    let config = r#"
[usage]
report_sse_event = "images_saved"
[[routes]]
method = "POST"
path = "/{kind}/{id}/"
"#;
    let proxy = Proxy::memory(config, &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let json = |user: &'static str| {
        [
            ("x-user-id", user),
            ("content-type", "application/json"),
            ("te", "trailers"),
        ]
    };
    let answer = client
        .send(
            Method::POST,
            "/sse/1/",
            &json("sse"),
            r#"{"generate_image": true}"#,
        )
        .await;
    assert!(answer.text().contains("event: images_saved"));
    assert_eq!(proxy.wait_settled("sse", 1).await[0].used, 1);
    let answer = client
        .send(
            Method::POST,
            "/trailer/1/",
            &json("tr"),
            r#"{"generate_image": true}"#,
        )
        .await;
    assert_eq!(answer.text(), "streamed");
    assert_eq!(proxy.wait_settled("tr", 1).await[0].used, 1);
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
