//! The quota, end to end: the real proxy (accept loop, quota layer,
//! forwarding service) between a client and a recording upstream on
//! loopback, on the memory store and on a real `redis-server` started for
//! the test. Time comes from a manual clock.

use std::time::Duration;

use crate::support::on_both_stores;
use crate::support::proxy::{Proxy, StoreChoice, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};

/// A Wednesday, 13:30 in Tehran.
const NOW: &str = "2031-05-14T10:00:00Z";
const SEND: &str = "/chat/session/17/send/";
const API: &str = "/api/chatbot/sessions/17/validate_message/";

const CONFIG: &str = r#"
max_body_bytes = 4096
[timeouts]
response_head = "500ms"
[store]
command_timeout = "500ms"
[identity]
default_plan = "free"
[plans]
free = { daily = 3, weekly = 10, monthly = 30 }
weekly2 = { daily = 0, weekly = 2, monthly = 0 }
monthly2 = { daily = 0, weekly = 0, monthly = 2 }
unlimited = { daily = 0, weekly = 0, monthly = 0 }
[[routes]]
method = "POST"
path = "/chat/session/{session_id}/send/"
deny_status = 403
[[routes]]
method = "POST"
path = "/api/chatbot/sessions/{id}/validate_message/"
deny_status = 429
"#;

const DAILY_3: &str = "شما به حد مجاز تولید تصویر روزانه (3 عدد) رسیده‌اید";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

/// An upstream like the Django views once they report usage: a request
/// asking for an image "saves" one and says so in `X-Images-Saved`.
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let asked = String::from_utf8_lossy(&request.body).contains("\"generate_image\": true");
        Reply::ok()
            .header("x-images-saved", if asked { "1" } else { "0" })
            .body("generated")
    })
    .await
}

on_both_stores! {
    daily_limit_allows_three_then_denies(store) {
        let upstream = saving_upstream().await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        for i in 1..=3 {
            let answer = client.generate(SEND, "alice", "free").await;
            assert_eq!(answer.status, StatusCode::OK, "request {i}");
            assert_eq!(answer.text(), "generated");
            assert!(answer.headers.get("x-images-saved").is_none(), "report header stripped");
            assert_eq!(
                answer.headers["ratelimit"],
                format!(
                    "\"daily\";r={};t=37800, \"weekly\";r={};t={}, \"monthly\";r={};t={}",
                    3 - i,
                    10 - i,
                    4 * 86_400 + 37_800,
                    30 - i,
                    17 * 86_400 + 37_800
                )
                .as_str()
            );
        }
        assert_eq!(upstream.count(), 3);
        assert_eq!(proxy.wait_settled("alice", 3).await[0].used, 3);

        let denied = client.generate(SEND, "alice", "free").await;
        assert_eq!(denied.status, StatusCode::FORBIDDEN);
        assert_eq!(upstream.count(), 3, "a denied request never reaches the upstream");
        assert_eq!(denied.headers["content-type"], "application/json; charset=utf-8");
        // Tehran is at 13:30; the day ends in 10.5 hours.
        assert_eq!(denied.headers["retry-after"], "37800");
        assert_eq!(
            denied.headers["ratelimit-policy"],
            "\"daily\";q=3;w=86400, \"weekly\";q=10;w=604800, \"monthly\";q=30;w=2678400"
        );
        let body = denied.json();
        assert_eq!(body["error"], DAILY_3);
        assert_eq!(body["period"], "daily");
        assert_eq!(body["limit"], 3);
        assert_eq!(body["retry_after"], 37800);

        // The API route shares the counters and answers 429.
        let api = client.generate(API, "alice", "free").await;
        assert_eq!(api.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(api.json()["error"], DAILY_3);
        // Another user is not affected.
        assert_eq!(client.generate(SEND, "bob", "free").await.status, StatusCode::OK);
    }

    weekly_and_monthly_limits(store) {
        let upstream = saving_upstream().await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        for (user, plan, message) in [
            ("wu", "weekly2", "شما به حد مجاز تولید تصویر هفتگی (2 عدد) رسیده‌اید"),
            ("mu", "monthly2", "شما به حد مجاز تولید تصویر ماهانه (2 عدد) رسیده‌اید"),
        ] {
            for _ in 0..2 {
                assert_eq!(client.generate(SEND, user, plan).await.status, StatusCode::OK);
            }
            proxy.wait_settled(user, 2).await;
            let denied = client.generate(SEND, user, plan).await;
            assert_eq!(denied.status, StatusCode::FORBIDDEN, "{plan}");
            assert_eq!(denied.json()["error"], message);
        }
    }

    zero_means_unlimited_and_unknown_plans_get_the_default(store) {
        let upstream = saving_upstream().await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        for _ in 0..12 {
            assert_eq!(client.generate(SEND, "u", "unlimited").await.status, StatusCode::OK);
        }
        assert_eq!(proxy.wait_settled("u", 12).await[0].used, 12);
        // "gold" is not a plan: the default plan (free, 3 a day) applies.
        for _ in 0..3 {
            assert_eq!(client.generate(SEND, "g", "gold").await.status, StatusCode::OK);
        }
        proxy.wait_settled("g", 3).await;
        assert_eq!(client.generate(SEND, "g", "gold").await.status, StatusCode::FORBIDDEN);
    }

    fifty_parallel_requests_with_three_left_let_three_through(store) {
        let upstream = saving_upstream().await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let client = client.clone();
            tasks.spawn(async move { client.generate(SEND, "racer", "free").await.status });
        }
        let mut allowed = 0;
        while let Some(status) = tasks.join_next().await {
            match status.expect("task") {
                StatusCode::OK => allowed += 1,
                StatusCode::FORBIDDEN => {}
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(allowed, 3);
        assert_eq!(upstream.count(), 3);
        let usage = proxy.wait_settled("racer", 3).await;
        assert_eq!((usage[0].used, usage[0].reserved), (3, 0));
    }

    unflagged_and_uninspected_requests_make_no_store_call(store) {
        let upstream = saving_upstream().await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        let headers = [("x-user-id", "alice"), ("content-type", "application/json")];
        for _ in 0..5 {
            let answer = client
                .send(Method::POST, SEND, &headers, r#"{"message": "hi", "generate_image": false}"#)
                .await;
            assert_eq!(answer.status, StatusCode::OK);
            let answer = client.send(Method::GET, "/chat/", &headers, "").await;
            assert_eq!(answer.status, StatusCode::OK);
            let answer = client
                .send(Method::POST, "/other/", &headers, r#"{"generate_image": true}"#)
                .await;
            assert_eq!(answer.status, StatusCode::OK);
        }
        assert_eq!(upstream.count(), 15);
        assert_eq!(proxy.store.calls(), 0);
        assert!(upstream.requests().iter().all(|r| r.header("x-images-saved").is_none()));
    }

    report_by_header_and_by_json(store) {
        let upstream = TestUpstream::start(|request: RecordedRequest| async move {
            if request.uri.path().starts_with("/api/") {
                Reply::ok().json(serde_json::json!({"valid": true, "images_saved": [1, 2]}))
            } else {
                Reply::ok().header("x-images-saved", "2").body("ok")
            }
        })
        .await;
        let config = format!("{CONFIG}\n[usage]\ncount = \"images\"\n");
        let proxy = Proxy::start(&config, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        let header = client.generate(SEND, "h", "unlimited").await;
        assert!(header.headers.get("x-images-saved").is_none());
        assert_eq!(proxy.wait_settled("h", 2).await[0].used, 2);
        let json = client.generate(API, "j", "unlimited").await;
        assert_eq!(json.json()["images_saved"], serde_json::json!([1, 2]), "body intact");
        let usage = proxy.wait_settled("j", 2).await;
        assert_eq!([usage[0].used, usage[1].used, usage[2].used], [2, 2, 2]);
    }

    saved_images_of_an_unflagged_request_are_counted(store) {
        let upstream = TestUpstream::always(Reply::ok().header("x-images-saved", "1")).await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        let answer = client
            .send(
                Method::POST,
                SEND,
                &[("x-user-id", "sly"), ("content-type", "application/json")],
                r#"{"message": "draw a cat"}"#,
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(proxy.wait_settled("sly", 1).await[0].used, 1);
    }

    reservation_is_released_on_upstream_error_and_timeout(store) {
        let upstream = TestUpstream::start(|request: RecordedRequest| async move {
            match request.uri.path() {
                "/chat/session/1/send/" => Reply::status(500).body("boom"),
                _ => Reply::ok().header("x-images-saved", "1").delay_head(Duration::from_secs(3)),
            }
        })
        .await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        let failed = client.generate("/chat/session/1/send/", "e", "free").await;
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        let usage = proxy.wait_settled("e", 0).await;
        assert_eq!((usage[0].used, usage[0].reserved), (0, 0));
        let slow = client.generate("/chat/session/2/send/", "t", "free").await;
        assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(slow.json()["error"].is_string());
        let usage = proxy.wait_settled("t", 0).await;
        assert_eq!((usage[0].used, usage[0].reserved), (0, 0));
    }

    settles_after_the_client_disconnects(store) {
        let upstream = TestUpstream::always(
            Reply::ok().header("x-images-saved", "1").delay_head(Duration::from_millis(300)),
        )
        .await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        let gone = tokio::time::timeout(
            Duration::from_millis(50),
            client.generate(SEND, "quitter", "free"),
        )
        .await;
        assert!(gone.is_err(), "the client gave up before the answer");
        upstream.wait_for_requests(1).await;
        let usage = proxy.wait_settled("quitter", 1).await;
        assert_eq!((usage[0].used, usage[0].reserved), (1, 0));
    }

    periods_roll_over_at_local_midnight_and_year_end(store) {
        let upstream = saving_upstream().await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        // 23:59 in Tehran: the day's three, then a denial.
        proxy.clock.set(at("2031-05-14T20:29:00Z"));
        for _ in 0..3 {
            assert_eq!(client.generate(SEND, "night", "free").await.status, StatusCode::OK);
        }
        proxy.wait_settled("night", 3).await;
        proxy.clock.set(at("2031-05-14T20:29:59Z"));
        assert_eq!(client.generate(SEND, "night", "free").await.status, StatusCode::FORBIDDEN);
        // Local midnight: a new day, nothing reset by hand.
        proxy.clock.set(at("2031-05-14T20:30:00Z"));
        assert_eq!(client.generate(SEND, "night", "free").await.status, StatusCode::OK);

        // December's limit does not carry into January of the next year.
        proxy.clock.set(at("2031-12-31T20:00:00Z"));
        for _ in 0..2 {
            assert_eq!(client.generate(SEND, "dec", "monthly2").await.status, StatusCode::OK);
        }
        let usage = proxy.wait_settled("dec", 2).await;
        assert_eq!(usage[2].used, 2);
        assert_eq!(client.generate(SEND, "dec", "monthly2").await.status, StatusCode::FORBIDDEN);
        proxy.clock.set(at("2031-12-31T20:30:00Z"));
        assert_eq!(client.generate(SEND, "dec", "monthly2").await.status, StatusCode::OK);
    }

    weeks_start_on_the_configured_day(store) {
        let upstream = saving_upstream().await;
        let authority = upstream.authority();
        // Friday 2031-05-16, 23:00 in Tehran.
        let friday = at("2031-05-16T19:30:00Z");
        let saturday = at("2031-05-16T20:30:00Z");
        let monday = at("2031-05-18T20:30:00Z");
        for (week_start, free_again_at) in [("monday", monday), ("saturday", saturday)] {
            let config = format!("{CONFIG}\n[periods]\nweek_start = \"{week_start}\"\n");
            let proxy = Proxy::start(&config, &authority, &store, friday).await;
            let client = TestClient::new(proxy.addr);
            let user = format!("week-{week_start}");
            for _ in 0..2 {
                assert_eq!(client.generate(SEND, &user, "weekly2").await.status, StatusCode::OK);
            }
            proxy.wait_settled(&user, 2).await;
            assert_eq!(client.generate(SEND, &user, "weekly2").await.status, StatusCode::FORBIDDEN);
            if week_start == "monday" {
                proxy.clock.set(saturday);
                let answer = client.generate(SEND, &user, "weekly2").await;
                assert_eq!(answer.status, StatusCode::FORBIDDEN, "Saturday is mid-week");
            }
            proxy.clock.set(free_again_at);
            let answer = client.generate(SEND, &user, "weekly2").await;
            assert_eq!(answer.status, StatusCode::OK, "new {week_start} week");
        }
    }

    oversized_and_malformed_bodies(store) {
        let upstream = saving_upstream().await;
        let proxy = Proxy::start(CONFIG, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        let big = format!(r#"{{"generate_image": true, "pad": "{}"}}"#, "x".repeat(5000));
        let answer = client
            .send(Method::POST, SEND, &[("x-user-id", "big"), ("content-type", "application/json")], big)
            .await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(answer.json()["error"].as_str().is_some_and(|e| e.contains("4096")));
        assert_eq!(upstream.count(), 0);

        // JSON that DRF's parser refuses (its 400) cannot generate: it is
        // forwarded (byte for byte) unreserved, even for a user at the limit,
        // so the user sees the backend's own error…
        let broken = r#"{"generate_image":true,,"#;
        let headers = [("x-user-id", "m"), ("x-subscription-type", "free"), ("content-type", "application/json")];
        for _ in 0..3 {
            client.generate(SEND, "m", "free").await;
        }
        proxy.wait_settled("m", 3).await;
        let answer = client.send(Method::POST, SEND, &headers, broken).await;
        assert_eq!(answer.status, StatusCode::OK, "rejected by the backend, not by the quota");
        assert_eq!(&upstream.last_request().body[..], broken.as_bytes());
        // …while a body the proxy cannot be sure about (DRF decodes it as
        // UTF-16; the proxy reads only UTF-8) counts: denied at the limit.
        let unsure = [("x-user-id", "m"), ("x-subscription-type", "free"), ("content-type", "application/json; charset=utf-16")];
        let answer = client.send(Method::POST, SEND, &unsure, r#"{"generate_image": true}"#).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
    }
}

#[tokio::test]
async fn oversized_chunked_body_is_refused_without_content_length() {
    use http_body_util::{BodyExt, StreamBody};
    let upstream = saving_upstream().await;
    let proxy = Proxy::memory(CONFIG, &upstream, at(NOW)).await;
    let chunks = (0..10).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(vec![
            b'x';
            1000
        ])))
    });
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = http::Request::post(format!("http://{}{SEND}", proxy.addr))
        .header("x-user-id", "c")
        .body(body)
        .expect("request");
    let response = client.request(request).await.expect("answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("error"));
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn inspected_bodies_are_forwarded_byte_for_byte() {
    let upstream = saving_upstream().await;
    let proxy = Proxy::memory(CONFIG, &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let mut multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nhi\r\n--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    multipart.extend((0..=255u8).cycle().take(1500));
    multipart.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"generate_image\"\r\n\r\ntrue\r\n--XyZ--\r\n");
    let bodies: [(&str, Vec<u8>); 3] = [
        (
            "application/json",
            b"{ \"generate_image\" :true ,\n\"message\":\"\\u00e9\" }".to_vec(),
        ),
        (
            "application/x-www-form-urlencoded",
            b"message=a%20b&generate_image=on&x=1".to_vec(),
        ),
        ("multipart/form-data; boundary=XyZ", multipart),
    ];
    for (i, (content_type, body)) in bodies.into_iter().enumerate() {
        let answer = client
            .send(
                Method::POST,
                &format!("/chat/session/{i}/send/?a=1&b=%20"),
                &[
                    ("x-user-id", "bytes"),
                    ("x-subscription-type", "unlimited"),
                    ("content-type", content_type),
                ],
                body.clone(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        let seen = upstream.last_request();
        assert_eq!(&seen.body[..], &body[..], "{content_type}");
        assert_eq!(
            seen.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(seen.uri.query(), Some("a=1&b=%20"));
    }
    // All three asked for an image: each reserved and settled one.
    assert_eq!(proxy.wait_settled("bytes", 0).await[0].used, 0);
}

#[tokio::test]
async fn anonymous_requests_follow_the_policy() {
    let upstream = saving_upstream().await;
    let authority = upstream.authority();
    let body = r#"{"generate_image": true}"#;
    let json = [("content-type", "application/json")];

    let forward = Proxy::start(CONFIG, &authority, &StoreChoice::Memory, at(NOW)).await;
    let answer = TestClient::new(forward.addr)
        .send(Method::POST, SEND, &json, body)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.count(), 1);

    let config = CONFIG.replace("[identity]\n", "[identity]\nanonymous = \"deny\"\n");
    let deny = Proxy::start(&config, &authority, &StoreChoice::Memory, at(NOW)).await;
    let answer = TestClient::new(deny.addr)
        .send(Method::POST, SEND, &json, body)
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.json()["error"].is_string());
    assert_eq!(upstream.count(), 1);
}

#[tokio::test]
async fn redis_down_follows_on_store_error() {
    let upstream = saving_upstream().await;
    let authority = upstream.authority();
    let mut server = RedisServer::start();
    let store = StoreChoice::Redis(server.url());
    let allow = Proxy::start(CONFIG, &authority, &store, at(NOW)).await;
    let config = CONFIG.replace("[store]\n", "[store]\non_store_error = \"deny\"\n");
    let deny = Proxy::start(&config, &authority, &store, at(NOW)).await;
    server.kill();

    let answer = TestClient::new(allow.addr)
        .generate(SEND, "a", "free")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "allow: forwarded unchecked");
    assert_eq!(upstream.count(), 1);

    let answer = TestClient::new(deny.addr).generate(SEND, "a", "free").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers.contains_key("retry-after"));
    assert!(answer.json()["error"].is_string());
    assert_eq!(upstream.count(), 1, "deny: not forwarded");
}

/// Two proxies (two replicas) sharing one Redis: 200 parallel flagged
/// requests for a user with 5 left let exactly 5 through, whichever replica
/// they hit.
#[tokio::test]
async fn two_replicas_on_one_redis_let_exactly_the_limit_through() {
    let upstream = saving_upstream().await;
    let server = RedisServer::start();
    let store = StoreChoice::Redis(server.url());
    let config = format!("{CONFIG}\n[plans.five]\ndaily = 5\n");
    let a = Proxy::start(&config, &upstream.authority(), &store, at(NOW)).await;
    let b = Proxy::start(&config, &upstream.authority(), &store, at(NOW)).await;
    let clients = [TestClient::new(a.addr), TestClient::new(b.addr)];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = clients[i % 2].clone();
        tasks.spawn(async move { client.generate(SEND, "shared", "five").await.status });
    }
    let mut allowed = 0;
    while let Some(status) = tasks.join_next().await {
        match status.expect("task") {
            StatusCode::OK => allowed += 1,
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(allowed, 5);
    assert_eq!(upstream.count(), 5);
    let usage = a.wait_settled("shared", 5).await;
    assert_eq!((usage[0].used, usage[0].reserved), (5, 0));
    assert_eq!(b.usage("shared").await[0].used, 5);
}

/// `CONFIG` with identities from Django's identity view
/// (`/api/quota/identity/` on the upstream) and `on_identity_error = policy`.
fn forward_auth_config(policy: &str) -> String {
    CONFIG.replace(
        "[identity]\n",
        &format!("[identity]\nkind = \"forward_auth\"\non_identity_error = \"{policy}\"\n"),
    )
}

/// An upstream whose identity view fails (500) and whose other views save
/// an image for every request and say so.
async fn identity_failing_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        if request.uri.path() == "/api/quota/identity/" {
            Reply::status(500).body("identity view broken")
        } else {
            Reply::ok().header("x-images-saved", "1").body("generated")
        }
    })
    .await
}

/// A flagged message from a logged-in user (a session cookie).
async fn cookie_generate(proxy: &Proxy) -> crate::support::proxy::Answer {
    TestClient::new(proxy.addr)
        .send(
            Method::POST,
            SEND,
            &[
                ("cookie", "sessionid=abc"),
                ("content-type", "application/json"),
            ],
            r#"{"generate_image": true}"#,
        )
        .await
}

fn sends(upstream: &TestUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.uri.path() == SEND)
        .count()
}

#[tokio::test]
async fn identity_error_denied_is_503_and_never_forwarded() {
    let upstream = identity_failing_upstream().await;
    let config = forward_auth_config("deny");
    let proxy = Proxy::start(
        &config,
        &upstream.authority(),
        &StoreChoice::Memory,
        at(NOW),
    )
    .await;
    let answer = cookie_generate(&proxy).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );
    assert!(answer.headers.contains_key("retry-after"));
    assert!(answer.json()["error"].is_string());
    assert_eq!(upstream.count(), 1, "only the identity view was asked");
    assert_eq!(sends(&upstream), 0);
    assert_eq!(proxy.store.calls(), 0);
}

#[tokio::test]
async fn identity_error_allowed_is_forwarded_uncounted() {
    let upstream = identity_failing_upstream().await;
    let config = forward_auth_config("allow");
    let proxy = Proxy::start(
        &config,
        &upstream.authority(),
        &StoreChoice::Memory,
        at(NOW),
    )
    .await;
    for _ in 0..4 {
        let answer = cookie_generate(&proxy).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.text(), "generated");
    }
    assert_eq!(sends(&upstream), 4, "forwarded past the daily 3");
    let seen = upstream.last_request();
    assert_eq!(seen.header("x-user-id"), None, "no identity is made up");
    // No reserve, and the saved image is not counted against anyone.
    assert_eq!(proxy.store.calls(), 0);
}

/// A request on a route that is not inspected streams its body: the
/// upstream sees the first bytes while the client still holds the last.
/// A proxy that read the body first would never forward the first part.
#[tokio::test]
async fn a_passthrough_body_is_streamed_not_read() {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::convert::Infallible;
    use tokio::sync::{mpsc, oneshot};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let authority = listener
        .local_addr()
        .expect("addr")
        .to_string()
        .parse()
        .expect("authority");
    let (first_tx, first_rx) = oneshot::channel::<Bytes>();
    let first_tx = std::sync::Mutex::new(Some(first_tx));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("the proxy connects");
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let first_tx = first_tx.lock().expect("lock").take();
                async move {
                    let mut body = request.into_body();
                    let mut total = 0;
                    let mut first_tx = first_tx;
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame?.into_data() {
                            total += data.len();
                            if let Some(tx) = first_tx.take() {
                                let _ = tx.send(data);
                            }
                        }
                    }
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                        Bytes::from(total.to_string()),
                    )))
                }
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let proxy = Proxy::start(CONFIG, &authority, &StoreChoice::Memory, at(NOW)).await;

    let (chunks, mut rx) = mpsc::channel::<Bytes>(1);
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok::<_, Infallible>(Frame::data(c))))
    });
    let request = http::Request::post(format!("http://{}/uploads/", proxy.addr))
        .header("x-user-id", "streamer")
        .header("content-type", "application/json")
        .body(StreamBody::new(body))
        .expect("request");
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let answer = tokio::spawn(async move {
        let response = client.request(request).await.expect("proxy answers");
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    });
    chunks
        .send(Bytes::from_static(
            b"{\"generate_image\": true, \"message\": \"",
        ))
        .await
        .expect("send the first part");
    let first = tokio::time::timeout(Duration::from_secs(10), first_rx)
        .await
        .expect("the upstream saw the first bytes before the client sent the last")
        .expect("first bytes");
    assert!(first.starts_with(b"{\"generate_image\""));
    chunks
        .send(Bytes::from_static(b"the rest\"}"))
        .await
        .expect("send the rest");
    drop(chunks);
    let total = answer.await.expect("client task");
    assert_eq!(&total[..], b"47", "the whole body arrived");
    assert_eq!(proxy.store.calls(), 0, "no store call on a passthrough");
}

/// The client gets its whole answer while the settle still waits on a
/// Redis that does not answer (SIGSTOP); the settle lands once Redis goes
/// on. A proxy that settled before answering would hold the client until
/// the store answered (`command_timeout` is 30 s here).
#[tokio::test]
async fn the_client_is_not_delayed_by_a_slow_settle() {
    let server = RedisServer::start();
    let arrived = std::sync::Arc::new(tokio::sync::Notify::new());
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let upstream = {
        let (arrived, go) = (arrived.clone(), go.clone());
        TestUpstream::start(move |_| {
            let (arrived, go) = (arrived.clone(), go.clone());
            async move {
                arrived.notify_one();
                go.notified().await;
                Reply::ok().header("x-images-saved", "1").body("generated")
            }
        })
        .await
    };
    let config = CONFIG.replace("command_timeout = \"500ms\"", "command_timeout = \"30s\"");
    let store = StoreChoice::Redis(server.url());
    let proxy = Proxy::start(&config, &upstream.authority(), &store, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let answer = tokio::spawn(async move { client.generate(SEND, "patient", "free").await });
    // Reserved (Redis answered), and the request is at the upstream.
    tokio::time::timeout(Duration::from_secs(10), arrived.notified())
        .await
        .expect("the request reached the upstream");
    server.pause();
    go.notify_one();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer).await;
    // Redis may go on whatever happened.
    server.resume();
    let answer = answer
        .expect("the client got its answer while Redis was paused")
        .expect("client task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "generated");
    let usage = proxy.wait_settled("patient", 1).await;
    assert_eq!((usage[0].used, usage[0].reserved), (1, 0));
}

/// A JSON report in a body typed with a `+json` suffix
/// (`application/vnd.api+json`, as some renderers answer) is read like
/// `application/json`.
#[tokio::test]
async fn a_json_report_in_a_plus_json_body_is_counted() {
    let upstream = TestUpstream::always(
        Reply::ok()
            .header("content-type", "application/vnd.api+json; charset=utf-8")
            .body(r#"{"images_saved": 1}"#),
    )
    .await;
    let proxy = Proxy::start(CONFIG, &upstream.authority(), &StoreChoice::Memory, at(NOW)).await;
    let answer = TestClient::new(proxy.addr)
        .generate(API, "suffix", "free")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), r#"{"images_saved": 1}"#, "body intact");
    let usage = proxy.wait_settled("suffix", 1).await;
    assert_eq!((usage[0].used, usage[0].reserved), (1, 0));
}
