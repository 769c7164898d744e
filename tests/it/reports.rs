//! Forged usage reports against the real binary and the chat app's preset
//! (`config/django-mobixai.toml`), issue 17: the stand-in app echoes what
//! the user typed in its stream (`[USER_MESSAGE]{"content": …}`) as the
//! real one does, and writes the real report, with the token the proxy gave
//! it and split across chunks, only when it really generated an image.
//! Whatever the user types, a free user gets at most 3 images a day, and a
//! text session's typed marker counts nothing. Also: the stores' counters
//! saturate instead of wrapping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::proxy::{Answer, TestClient};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;

const ADMIN_TOKEN: &str = "reports-admin-token";
const WITHIN: Duration = Duration::from_secs(15);
const TOKEN_HEADER: &str = "x-quota-report-token";
/// The chatbot of session 5 edits images: every message generates one.
const IMAGE_EDITING_SESSION: &str = "5";
/// A session of a text chatbot.
const TEXT_SESSION: &str = "1";

fn preset() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/django-mobixai.toml");
    std::fs::read_to_string(path).expect("preset config")
}

/// The stand-in app: identity view, image-generation-access probe, and
/// `send/`, which streams the user's message back, a reply, and (only when
/// it generated) the report with the proxy's token, split in three.
struct App {
    upstream: TestUpstream,
    images: Arc<AtomicUsize>,
    /// Milliseconds the app waits before its report (and the end).
    slow_tail_ms: Arc<AtomicU64>,
}

/// The `message` field of the app's multipart form.
fn message(request: &RecordedRequest) -> String {
    let body = String::from_utf8_lossy(&request.body);
    let start = "name=\"message\"\r\n\r\n";
    body.find(start)
        .map(|i| &body[i + start.len()..])
        .and_then(|rest| rest.find("\r\n--").map(|end| rest[..end].to_owned()))
        .unwrap_or_default()
}

fn field_is_true(request: &RecordedRequest, name: &str) -> bool {
    let body = String::from_utf8_lossy(&request.body);
    let start = format!("name=\"{name}\"\r\n\r\n");
    body.find(&start)
        .is_some_and(|i| body[i + start.len()..].starts_with("true\r\n"))
}

async fn app() -> App {
    let images = Arc::new(AtomicUsize::new(0));
    let slow_tail_ms = Arc::new(AtomicU64::new(0));
    let (counter, tail) = (Arc::clone(&images), Arc::clone(&slow_tail_ms));
    let upstream = TestUpstream::start(move |request: RecordedRequest| {
        let (images, tail) = (Arc::clone(&counter), Arc::clone(&tail));
        async move {
            let path = request.uri.path().to_owned();
            let user = request
                .header("cookie")
                .and_then(|c| c.strip_prefix("sessionid="))
                .map(str::to_owned);
            if path == "/api/quota/identity/" {
                return match user {
                    Some(user) => Reply::ok().json(serde_json::json!({
                        "user_id": user,
                        "plan": "free",
                        "limits": {"daily": if user.starts_with("one") { 1 } else { 3 }, "weekly": 10, "monthly": 30},
                    })),
                    None => Reply::status(401).json(serde_json::json!({"detail": "no"})),
                };
            }
            let session = path.split('/').nth(3).unwrap_or("").to_owned();
            if path.ends_with("/image-generation-access/") {
                let access = session == IMAGE_EDITING_SESSION;
                return Reply::ok().json(serde_json::json!({ "has_access": access }));
            }
            if !path.ends_with("/send/") {
                return Reply::ok().body("a page");
            }
            let typed = message(&request);
            let generated =
                field_is_true(&request, "generate_image") || session == IMAGE_EDITING_SESSION;
            let echo = serde_json::json!({"id": 1, "role": "user", "content": typed});
            // A short reply puts the real report within the scanner's reach
            // of what the user typed; a slow one is long (past its bound).
            let tail = Duration::from_millis(tail.load(Ordering::SeqCst));
            let reply = if tail.is_zero() {
                "Here is your reply. ".to_owned()
            } else {
                "Here is your reply. ".repeat(100)
            };
            let mut chunks: Vec<(Bytes, Duration)> = vec![
                (
                    Bytes::from(format!("[USER_MESSAGE]{echo}[USER_MESSAGE_END]")),
                    Duration::ZERO,
                ),
                (Bytes::from(reply), Duration::ZERO),
                (Bytes::from_static(b"END_OF_REPLY"), Duration::ZERO),
            ];
            if generated {
                images.fetch_add(1, Ordering::SeqCst);
                let token = request.header(TOKEN_HEADER).unwrap_or("");
                let count = if typed.contains("BACKEND_HUGE") {
                    "18446744073709551615"
                } else {
                    "1"
                };
                let report = Bytes::from(format!(
                    r#"[IMAGES_SAVED]{{"count": {count}, "token": "{token}"}}[IMAGES_SAVED_END]"#
                ));
                // Split inside the start marker and inside the token.
                chunks.push((report.slice(..7), tail));
                chunks.push((report.slice(7..40), Duration::ZERO));
                chunks.push((report.slice(40..), Duration::ZERO));
            }
            chunks.push((
                Bytes::from_static(b"[TITLE_UPDATE]{\"title\": \"t\"}[TITLE_UPDATE_END]"),
                if generated { Duration::ZERO } else { tail },
            ));
            if typed.contains("BACKEND_GZIP") {
                // Compressed although the request did not ask for it.
                use std::io::Write as _;
                let mut gzip =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                for (chunk, _) in &chunks {
                    gzip.write_all(chunk).expect("gzip in memory");
                }
                let body = gzip.finish().expect("gzip in memory");
                let reply = Reply::ok()
                    .header("content-type", "text/plain; charset=utf-8")
                    .header("content-encoding", "gzip");
                // A header written before the stream, when no image is
                // saved yet: its count is 0 whatever the end reports.
                let reply = if typed.contains("BACKEND_HEADER_ZERO") {
                    reply.header("x-images-saved", "0")
                } else {
                    reply
                };
                return reply.stream(vec![(Bytes::from(body), Duration::ZERO)]);
            }
            Reply::ok()
                .header("content-type", "text/plain; charset=utf-8")
                .stream(chunks)
        }
    })
    .await;
    App {
        upstream,
        images,
        slow_tail_ms,
    }
}

async fn start(app: &App, config: &str) -> Binary {
    let config = config.replace(
        "upstream = \"http://127.0.0.1:8000\"",
        &format!("upstream = \"http://{}\"", app.upstream.authority()),
    ) + "\n[admin]\ntoken_env = \"QUOTA_PROXY_ADMIN_TOKEN\"\n";
    Binary::start(&config, &[("QUOTA_PROXY_ADMIN_TOKEN", ADMIN_TOKEN)]).await
}

fn form(typed: &str, generate: bool) -> (String, Vec<u8>) {
    let body = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\n{typed}\r\n\
         --b0undary\r\nContent-Disposition: form-data; name=\"use_web_search\"\r\n\r\nfalse\r\n\
         --b0undary\r\nContent-Disposition: form-data; name=\"generate_image\"\r\n\r\n{generate}\r\n\
         --b0undary--\r\n"
    );
    (
        "multipart/form-data; boundary=b0undary".to_owned(),
        body.into_bytes(),
    )
}

/// The user `user` types `typed` in session `session`, asking for an image
/// or not; also sends a report token of its own, which must not get through.
async fn send(binary: &Binary, session: &str, user: &str, typed: &str, generate: bool) -> Answer {
    let (content_type, body) = form(typed, generate);
    let cookie = format!("sessionid={user}");
    TestClient::new(binary.proxy)
        .send(
            Method::POST,
            &format!("/chat/session/{session}/send/"),
            &[
                ("cookie", &cookie),
                ("content-type", &content_type),
                (TOKEN_HEADER, FORGED_TOKEN),
                ("x_quota_report_token", FORGED_TOKEN),
            ],
            body,
        )
        .await
}

/// A token the user picked; the forged markers below carry it.
const FORGED_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// `user`'s settled daily usage once nothing of theirs is in flight.
async fn settled(binary: &Binary, user: &str) -> u64 {
    binary.settled_daily(user, ADMIN_TOKEN, WITHIN).await
}

/// What users type to forge a report.
fn forgeries() -> Vec<String> {
    vec![
        "[IMAGES_SAVED]18446744073709551615[IMAGES_SAVED_END]".to_owned(),
        r#"[IMAGES_SAVED]{"count": 2000}[IMAGES_SAVED_END]"#.to_owned(),
        format!(r#"[IMAGES_SAVED]{{"count": -1, "token": "{FORGED_TOKEN}"}}[IMAGES_SAVED_END]"#),
        format!("[IMAGES_SAVED]{}", "x".repeat(900)),
        "[IMAGES_SAVED]".to_owned(),
        "[IMAGES_SAV".to_owned(),
        "[IMAGES_SAVED]0[IMAGES_SAVED_END][IMAGES_SAVED]".to_owned(),
    ]
}

#[tokio::test]
async fn a_free_user_typing_forged_markers_gets_at_most_three_images_a_day() {
    let app = app().await;
    let binary = start(&app, &preset()).await;
    for (i, typed) in forgeries().iter().enumerate() {
        let answer = send(&binary, TEXT_SESSION, "free", typed, true).await;
        if i < 3 {
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "message {i}: {}",
                answer.text()
            );
            let text = answer.text();
            assert!(text.contains("END_OF_REPLY"), "{text}");
            assert!(
                !text.contains("\"token\": \""),
                "the real report is cut: {text}"
            );
            // Exactly one image per message, whatever was typed.
            assert_eq!(settled(&binary, "free").await, i as u64 + 1, "{typed}");
        } else {
            assert_eq!(
                answer.status,
                StatusCode::FORBIDDEN,
                "message {i} ({typed:?}) must be denied: the user had 3"
            );
        }
    }
    assert_eq!(app.images.load(Ordering::SeqCst), 3, "3 images generated");
    assert_eq!(settled(&binary, "free").await, 3);
}

#[tokio::test]
async fn the_real_report_is_found_whatever_the_user_typed_before_it() {
    let app = app().await;
    let binary = start(&app, &preset()).await;
    // Image editing: every message generates; each user has 3 a day.
    for (i, typed) in forgeries().iter().enumerate() {
        let user = format!("u{i}");
        let answer = send(&binary, IMAGE_EDITING_SESSION, &user, typed, false).await;
        assert_eq!(answer.status, StatusCode::OK);
        // The forged text reaches the browser untouched (as the app echoed
        // it), and the real report is cut.
        let echoed = serde_json::to_string(typed).expect("json");
        let echoed = &echoed[1..echoed.len() - 1];
        let text = answer.text();
        assert!(text.contains(echoed), "forged text passed on: {typed:?}");
        assert!(
            text.ends_with("END_OF_REPLY[TITLE_UPDATE]{\"title\": \"t\"}[TITLE_UPDATE_END]"),
            "report cut, nothing else: {}",
            &text[text.len().saturating_sub(120)..]
        );
        assert_eq!(settled(&binary, &user).await, 1, "{typed:?}");
    }
}

#[tokio::test]
async fn a_start_with_no_end_does_not_hold_back_the_rest_of_the_reply() {
    let app = app().await;
    // The report comes 15 s after the reply text; the reply must reach the
    // client well before (10 s, however loaded the machine): a proxy that
    // held it back until the report could not make it.
    app.slow_tail_ms.store(15_000, Ordering::SeqCst);
    let binary = start(&app, &preset()).await;
    let (content_type, body) = form("[IMAGES_SAVED]", true);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let request = http::Request::post(format!(
        "http://{}/chat/session/{TEXT_SESSION}/send/",
        binary.proxy
    ))
    .header("cookie", "sessionid=waiter")
    .header("content-type", content_type)
    .body(http_body_util::Full::new(Bytes::from(body)))
    .expect("request");
    let response = client.request(request).await.expect("proxy answers");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("END_OF_REPLY") {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("the reply is not held back until the report")
            .expect("more frames")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        !text.contains("TITLE_UPDATE"),
        "the reply came before the end of the stream, not with it"
    );
    assert!(text.contains("[IMAGES_SAVED]"), "the typed start passed on");
    let rest = body.collect().await.expect("rest").to_bytes();
    assert!(!String::from_utf8_lossy(&rest).contains("\"token\""));
    assert_eq!(
        settled(&binary, "waiter").await,
        1,
        "the real report counted"
    );
}

#[tokio::test]
async fn a_typed_marker_in_a_text_session_counts_nothing() {
    let app = app().await;
    // Counted per image, as the issue's +2,000 was.
    let config = preset().replace("count = \"requests\"", "count = \"images\"");
    assert!(config.contains("count = \"images\""));
    let binary = start(&app, &config).await;
    // `one…` users may make 1 image a day.
    for typed in forgeries() {
        let answer = send(&binary, TEXT_SESSION, "one-t", &typed, false).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(settled(&binary, "one-t").await, 0, "{typed:?}");
    }
    // A real image elsewhere: the user is at the limit.
    let answer = send(&binary, "2", "one-t", "a cat", true).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(settled(&binary, "one-t").await, 1);
    assert_eq!(
        send(&binary, "2", "one-t", "a dog", true).await.status,
        StatusCode::FORBIDDEN
    );
    // The text session was never learned as image-generating: its messages
    // are still let through, typed markers and all.
    for typed in ["[IMAGES_SAVED]1[IMAGES_SAVED_END]", "hello"] {
        let answer = send(&binary, TEXT_SESSION, "one-t", typed, false).await;
        assert_eq!(answer.status, StatusCode::OK, "{typed}: {}", answer.text());
    }
    assert_eq!(settled(&binary, "one-t").await, 1);
    assert_eq!(app.images.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_client_never_chooses_the_report_token() {
    let app = app().await;
    let binary = start(&app, &preset()).await;
    // Pass-through: the header is removed.
    let answer = TestClient::new(binary.proxy)
        .send(
            Method::GET,
            "/chat/",
            &[
                (TOKEN_HEADER, FORGED_TOKEN),
                ("x_quota_report_token", FORGED_TOKEN),
                ("cookie", "sessionid=p"),
            ],
            "",
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    let page = app.upstream.last_request();
    assert_eq!(page.uri.path(), "/chat/");
    assert!(
        page.header(TOKEN_HEADER).is_none(),
        "client token passed through"
    );
    assert!(
        page.header("x_quota_report_token").is_none(),
        "Django reads X_Quota_Report_Token as the token too"
    );
    // Inspected: a fresh token of the proxy's own each time; a marker with
    // the client's token is text.
    let forged =
        format!(r#"[IMAGES_SAVED]{{"count": 1, "token": "{FORGED_TOKEN}"}}[IMAGES_SAVED_END]"#);
    send(&binary, TEXT_SESSION, "p", &forged, false).await;
    send(&binary, TEXT_SESSION, "p", &forged, false).await;
    let tokens: Vec<String> = app
        .upstream
        .requests()
        .iter()
        .filter(|r| r.uri.path().ends_with("/send/"))
        .map(|r| {
            assert_eq!(r.header_all(TOKEN_HEADER).len(), 1, "one token header");
            r.header(TOKEN_HEADER).expect("a token").to_owned()
        })
        .collect();
    assert_eq!(tokens.len(), 2);
    assert_ne!(tokens[0], tokens[1], "fresh per request");
    for token in &tokens {
        assert_ne!(token, FORGED_TOKEN);
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    assert_eq!(settled(&binary, "p").await, 0);
}

#[tokio::test]
async fn a_malformed_count_from_the_backend_counts_one_image() {
    let app = app().await;
    let binary = start(&app, &preset()).await;
    let answer = send(&binary, TEXT_SESSION, "huge", "BACKEND_HUGE", true).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        !answer.text().contains("18446744073709551615"),
        "a report, cut"
    );
    assert_eq!(settled(&binary, "huge").await, 1, "fail closed: one image");
    let metrics = TestClient::new(binary.admin)
        .send(Method::GET, "/metrics", &[], "")
        .await
        .text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("quota_proxy_malformed_reports_total") && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// An app that compresses its answer unasked hides its in-band report: a
/// flagged request is then charged one image (a malformed report), an
/// unflagged one nothing, and the client gets the compressed bytes as sent.
#[tokio::test]
async fn an_answer_compressed_unasked_counts_one_image_when_flagged() {
    let app = app().await;
    let binary = start(&app, &preset()).await;
    for n in 1..=3 {
        let answer = send(&binary, IMAGE_EDITING_SESSION, "gz", "BACKEND_GZIP", false).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(
            answer.headers.get("content-encoding").map(|v| v.as_bytes()),
            Some(&b"gzip"[..])
        );
        assert_eq!(settled(&binary, "gz").await, n, "image {n} counted");
    }
    let denied = send(&binary, IMAGE_EDITING_SESSION, "gz", "BACKEND_GZIP", false).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "at the limit");
    assert_eq!(
        app.images.load(Ordering::SeqCst),
        3,
        "3 generated, 3 counted"
    );
    let text = send(&binary, TEXT_SESSION, "gz-text", "BACKEND_GZIP", false).await;
    assert_eq!(text.status, StatusCode::OK);
    assert_eq!(
        settled(&binary, "gz-text").await,
        0,
        "a text reply: nothing"
    );
    // A header of 0 sent with the head does not vouch for a body whose
    // end, which may report, cannot be read: before, it was charged 0
    // (the third attack session of December 6th).
    let typed = "BACKEND_GZIP BACKEND_HEADER_ZERO";
    let answer = send(&binary, IMAGE_EDITING_SESSION, "gz-zero", typed, false).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(app.images.load(Ordering::SeqCst), 4, "generated");
    assert_eq!(
        settled(&binary, "gz-zero").await,
        1,
        "fail closed: one image"
    );
}

mod stores {
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::{DateTime, Utc, Weekday};
    use quota_proxy::config::Limits;
    use quota_proxy::periods::Calendar;
    use quota_proxy::store::{Admission, MemoryStore, QuotaStore, RedisStore, ReserveRequest};

    use crate::support::redis::RedisServer;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2031-05-14T10:00:00Z")
            .expect("instant")
            .with_timezone(&Utc)
    }

    fn request() -> ReserveRequest {
        ReserveRequest {
            user: "big".to_owned(),
            limits: Limits {
                daily: 3,
                weekly: 0,
                monthly: 0,
            },
            windows: Calendar::new(chrono_tz::UTC, Weekday::Mon).windows(now()),
            now: now(),
            ttl: Duration::from_secs(60),
        }
    }

    /// Two settles of `u64::MAX` saturate: no error, no wrap to 0, and the
    /// user is over the limit.
    async fn saturates(store: Arc<dyn QuotaStore>) {
        let mut held = Vec::new();
        for _ in 0..2 {
            let Admission::Reserved { reservation, .. } =
                store.reserve(&request()).await.expect("reserve")
            else {
                panic!("room for two");
            };
            held.push(reservation);
        }
        for reservation in &held {
            store
                .settle(reservation, u64::MAX, now())
                .await
                .expect("a huge settle saturates, it does not fail");
        }
        let usage = store
            .usage("big", &request().windows, now())
            .await
            .expect("usage");
        assert!(
            usage[0].used >= (1 << 53) - 1,
            "saturated, not wrapped: {usage:?}"
        );
        assert!(matches!(
            store.reserve(&request()).await.expect("reserve"),
            Admission::Exceeded { .. }
        ));
    }

    #[tokio::test]
    async fn memory_counters_saturate() {
        saturates(Arc::new(MemoryStore::new(10))).await;
    }

    #[tokio::test]
    async fn redis_counters_saturate() {
        let server = RedisServer::start();
        let store = RedisStore::connect(&server.url(), "q:", Duration::from_secs(2))
            .await
            .expect("connect");
        saturates(Arc::new(store)).await;
    }
}
