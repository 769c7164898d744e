//! `store.on_store_error` on the real binary (phases: admit and settle): the
//! store `quota-proxy serve` builds for itself (Redis behind the circuit
//! breaker and the retry queue of `ResilientStore`), a private
//! `redis-server` killed or paused (SIGSTOP) under it, and what the client,
//! the upstream, Redis and `/metrics` see.
//!
//! - `deny`: 503 with `Retry-After`, nothing forwarded; after
//!   `breaker.failures` failed calls the breaker answers without waiting;
//! - `allow`: forwarded unchecked and counted in
//!   `quota_proxy_fail_open_total`; the usage reported goes to the retry
//!   queue and lands once Redis is back; a settle that does not fit the
//!   queue is counted in `quota_proxy_settlements_dropped_total`;
//! - `local`: counted in this process's memory from what Redis last said,
//!   denied at the limit, and handed over to Redis when it is back.

use std::time::{Duration, Instant};

use crate::support::binary::Binary;
use crate::support::proxy::{Answer, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};
use quota_proxy::periods::Calendar;
use quota_proxy::store::{QuotaStore, RedisStore};

const GEN: &str = "/gen/";

/// Every bounded wait of this file: the binary exports the retry queue's
/// counters every 5 s.
const WITHIN: Duration = Duration::from_secs(15);

/// The series of the one inspected route.
const ROUTE: &str = r#"route="POST /gen/""#;

/// One inspected route, daily limit 2, Redis at `redis` with a short
/// command timeout, a breaker that opens after 2 failures and stays open
/// a minute (no half-open probe during a test), and `extra` in `[store]`.
fn config(upstream: &TestUpstream, redis: &RedisServer, policy: &str, extra: &str) -> String {
    format!(
        r#"
upstream = "http://{upstream}"
[store]
kind = "redis"
url = "{url}"
command_timeout = "300ms"
on_store_error = "{policy}"
breaker = {{ failures = 2, open_for = "60s" }}
{extra}
[identity]
default_plan = "free"
[plans]
free = {{ daily = 2, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/gen/"
deny_status = 429
"#,
        upstream = upstream.authority(),
        url = redis.url(),
    )
}

/// An upstream that saves one image per flagged request to `/gen/`, and
/// says so; nothing for anything else.
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let asked = request.uri.path() == GEN
            && String::from_utf8_lossy(&request.body).contains("\"generate_image\": true");
        Reply::ok()
            .header("x-images-saved", if asked { "1" } else { "0" })
            .body("generated")
    })
    .await
}

async fn generate(binary: &Binary, user: &str) -> Answer {
    TestClient::new(binary.proxy)
        .send(
            Method::POST,
            GEN,
            &[("x-user-id", user), ("content-type", "application/json")],
            r#"{"generate_image": true}"#,
        )
        .await
}

/// The value of one series in `/metrics`, 0 when it was never set.
async fn metric(binary: &Binary, series: &str) -> f64 {
    let text = TestClient::new(binary.admin)
        .send(Method::GET, "/metrics", &[], "")
        .await
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("a metric value"))
}

/// Waits until `series` is `value` in `/metrics`; fails with the last
/// value seen.
async fn wait_metric(binary: &Binary, series: &str, value: f64) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let seen = metric(binary, series).await;
        if seen == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series}: waited {WITHIN:?} for {value}, it is {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `user`'s usage today as Redis has it, read by a store of the test's
/// own (the binary's clock is the real one, in its default zone).
async fn redis_used(redis: &RedisServer, user: &str) -> (u64, u64) {
    let store = RedisStore::connect(&redis.url(), "quota:", Duration::from_secs(2))
        .await
        .expect("redis store");
    let calendar = Calendar::new(chrono_tz::Asia::Tehran, chrono::Weekday::Mon);
    let now = chrono::Utc::now();
    let usage = store
        .usage(user, &calendar.windows(now), now)
        .await
        .expect("usage");
    (usage[0].used, usage[0].reserved)
}

/// Waits until Redis has `user` at `used` images today, nothing reserved.
async fn wait_redis_used(redis: &RedisServer, user: &str, used: u64) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let seen = redis_used(redis, user).await;
        if seen == (used, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user}: waited {WITHIN:?} for {used} used in Redis, it holds {seen:?} (used, reserved)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many JSON log lines have `decision` and an `error` containing `cause`.
fn decisions(binary: &Binary, decision: &str, cause: &str) -> usize {
    binary.count_logs(|l| {
        l["decision"] == decision
            && l["error"]
                .as_str()
                .is_some_and(|error| error.contains(cause))
    })
}

#[tokio::test]
async fn deny_answers_503_and_the_breaker_stops_waiting_on_a_hung_redis() {
    let redis = RedisServer::start();
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(&upstream, &redis, "deny", ""), &[]).await;
    assert_eq!(generate(&binary, "d").await.status, StatusCode::OK);
    wait_redis_used(&redis, "d", 1).await;

    redis.pause();
    for i in 0..5 {
        let answer = generate(&binary, "d").await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "request {i}: {}",
            answer.text()
        );
        assert_eq!(answer.headers["retry-after"], "5");
        assert!(answer.json()["error"].is_string());
    }
    redis.resume();
    assert_eq!(upstream.count(), 1, "nothing forwarded while Redis hung");
    // The first two calls waited for the command timeout; then the breaker
    // opened and the next three failed without a call to Redis.
    let logs = binary.logs().join("\n");
    assert_eq!(
        decisions(&binary, "store_error_denied", "circuit breaker open"),
        3,
        "{logs}"
    );
    assert_eq!(
        binary.count_logs(|l| l["decision"] == "store_error_denied"),
        5,
        "{logs}"
    );
    wait_metric(
        &binary,
        &format!(r#"quota_proxy_requests_total{{{ROUTE},decision="store_error_denied"}}"#),
        5.0,
    )
    .await;
    assert_eq!(
        metric(&binary, &format!("quota_proxy_fail_open_total{{{ROUTE}}}")).await,
        0.0
    );
}

#[tokio::test]
async fn allow_forwards_unchecked_queues_the_usage_and_counts_what_is_lost() {
    let mut redis = RedisServer::start();
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(&upstream, &redis, "allow", "settle_queue = 1"), &[]).await;
    assert_eq!(generate(&binary, "a").await.status, StatusCode::OK);
    wait_redis_used(&redis, "a", 1).await;

    redis.kill();
    // Unchecked: the user gets past the daily 2.
    for i in 0..3 {
        let answer = generate(&binary, "a").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "request {i}: {}",
            answer.text()
        );
    }
    assert_eq!(upstream.count(), 4);
    wait_metric(
        &binary,
        &format!("quota_proxy_fail_open_total{{{ROUTE}}}"),
        3.0,
    )
    .await;
    // Their three reports: one waits in the queue (it holds one), two are
    // lost, logged and counted.
    wait_metric(
        &binary,
        r#"quota_proxy_settlements_dropped_total{reason="retry_queue"}"#,
        2.0,
    )
    .await;
    wait_metric(
        &binary,
        r#"quota_proxy_settlements_pending{stage="retry_queue"}"#,
        1.0,
    )
    .await;

    // Counted once: not again as `store_error` when the store returns
    // their error to the quota layer.
    assert_eq!(
        metric(
            &binary,
            r#"quota_proxy_settlements_dropped_total{reason="store_error"}"#
        )
        .await,
        0.0
    );
    redis.restart();
    // Redis restarted empty: only the queued settle reaches it, once.
    wait_redis_used(&redis, "a", 1).await;
    wait_metric(
        &binary,
        r#"quota_proxy_settlements_pending{stage="retry_queue"}"#,
        0.0,
    )
    .await;
}

#[tokio::test]
async fn local_counts_in_memory_from_what_redis_said_and_hands_over() {
    let mut redis = RedisServer::start_persistent();
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(&upstream, &redis, "local", ""), &[]).await;
    // Redis tells the proxy "l" has used 1 of 2 today.
    assert_eq!(generate(&binary, "l").await.status, StatusCode::OK);
    wait_redis_used(&redis, "l", 1).await;

    redis.kill();
    let answer = generate(&binary, "l").await;
    assert_eq!(answer.status, StatusCode::OK, "1 left, counted locally");
    let denied = generate(&binary, "l").await;
    assert_eq!(
        denied.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the local count is at the limit: {}",
        denied.text()
    );
    assert_eq!(upstream.count(), 2, "the denied request was not forwarded");
    // A user Redis never spoke of starts from zero: 2 more.
    for _ in 0..2 {
        assert_eq!(generate(&binary, "new").await.status, StatusCode::OK);
    }
    assert_eq!(
        generate(&binary, "new").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        metric(&binary, &format!("quota_proxy_fail_open_total{{{ROUTE}}}")).await,
        0.0,
        "local is not fail-open"
    );

    redis.restart();
    // The units counted locally land in Redis once each.
    wait_redis_used(&redis, "l", 2).await;
    wait_redis_used(&redis, "new", 2).await;
    assert_eq!(
        metric(
            &binary,
            r#"quota_proxy_settlements_dropped_total{reason="retry_queue"}"#
        )
        .await,
        0.0
    );
}
