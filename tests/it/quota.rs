//! The quota, end to end: the real proxy (accept loop, quota layer,
//! forwarding service) between a client and a recording upstream on
//! loopback, on the memory store and on a real `redis-server` started for
//! the test. Time comes from a manual clock. The config and helpers here
//! are shared by `quota_identity.rs` (anonymous requests, identity errors)
//! and `quota_bodies.rs` (bodies and settles on their way through).

use std::time::Duration;

use crate::support::instant::at;
use crate::support::on_both_stores;
use crate::support::proxy::{Proxy, StoreChoice, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};

/// A Wednesday, 13:30 in Tehran.
pub(crate) const NOW: &str = "2031-05-14T10:00:00Z";
pub(crate) const SEND: &str = "/chat/session/17/send/";
pub(crate) const API: &str = "/api/chatbot/sessions/17/validate_message/";

pub(crate) const CONFIG: &str = r#"
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

/// An upstream like the Django views once they report usage: a request
/// asking for an image "saves" one and says so in `X-Images-Saved`.
pub(crate) async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let asked = String::from_utf8_lossy(&request.body).contains("\"generate_image\": true");
        Reply::ok()
            .header("x-images-saved", if asked { "1" } else { "0" })
            .body("generated")
    })
    .await
}

/// `n` flagged requests of `user` on `plan` at once, spread over
/// `clients` in turn: how many were let through (200); anything but 200 or
/// 403 fails the test.
async fn allowed_in_parallel(
    clients: &[TestClient],
    n: usize,
    user: &'static str,
    plan: &'static str,
) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = clients[i % clients.len()].clone();
        tasks.spawn(async move { client.generate(SEND, user, plan).await.status });
    }
    let mut allowed = 0;
    while let Some(status) = tasks.join_next().await {
        match status.expect("task") {
            StatusCode::OK => allowed += 1,
            StatusCode::FORBIDDEN => {}
            other => panic!("unexpected {other}"),
        }
    }
    allowed
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
        let allowed = allowed_in_parallel(&[client], 50, "racer", "free").await;
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
/// they hit. `CONFIG`'s 500 ms timeouts are for the tests that wait for
/// them; 200 requests at once on a loaded machine can take that long to
/// reach the upstream or Redis (a 504 seen with 6 test threads on 2 cores),
/// so here they are 10 s.
#[tokio::test]
async fn two_replicas_on_one_redis_let_exactly_the_limit_through() {
    let upstream = saving_upstream().await;
    let server = RedisServer::start();
    let store = StoreChoice::Redis(server.url());
    let config = format!(
        "{}\n[plans.five]\ndaily = 5\n",
        CONFIG.replace("\"500ms\"", "\"10s\"")
    );
    let a = Proxy::start(&config, &upstream.authority(), &store, at(NOW)).await;
    let b = Proxy::start(&config, &upstream.authority(), &store, at(NOW)).await;
    let clients = [TestClient::new(a.addr), TestClient::new(b.addr)];
    let allowed = allowed_in_parallel(&clients, 200, "shared", "five").await;
    assert_eq!(allowed, 5);
    assert_eq!(upstream.count(), 5);
    let usage = a.wait_settled("shared", 5).await;
    assert_eq!((usage[0].used, usage[0].reserved), (5, 0));
    assert_eq!(b.usage("shared").await[0].used, 5);
}
