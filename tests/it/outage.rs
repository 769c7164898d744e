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
//!   denied at the limit, and handed over to Redis when it is back; a
//!   second outage starts from what the first one counted, and releases of
//!   local reservations take no room in the retry queue (found by an
//!   attack session).

use std::time::{Duration, Instant};

use crate::support::binary::Binary;
use crate::support::gen_route::{
    BREAKER_NEVER_OPENS, daily_config, flagged_answer, redis_store, saving_upstream,
};
use crate::support::proxy::TestClient;
use crate::support::redis::{RedisServer, used_today, wait_used_today};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};

/// Every bounded wait of this file: the binary exports the retry queue's
/// counters every 5 s.
const WITHIN: Duration = Duration::from_secs(15);

/// The series of the one inspected route.
const ROUTE: &str = r#"route="POST /gen/""#;

/// One inspected route, daily limit 2, Redis at `redis` with a short
/// command timeout, a breaker that opens after 2 failures and stays open
/// a minute (no half-open probe during a test), and `extra` in `[store]`.
fn config(upstream: &TestUpstream, redis: &RedisServer, policy: &str, extra: &str) -> String {
    let breaker = r#"breaker = { failures = 2, open_for = "60s" }"#;
    daily_config(
        upstream,
        2,
        &redis_store(redis, policy, &format!("{breaker}\n{extra}")),
    )
}

/// The saving upstream and the binary under `policy` (and `extra`, see
/// [`config`]) in front of `redis`, once `user`'s first image is counted in
/// Redis.
async fn serving(
    redis: &RedisServer,
    policy: &str,
    extra: &str,
    user: &str,
) -> (TestUpstream, Binary) {
    let upstream = saving_upstream().await;
    let binary = Binary::start(&config(&upstream, redis, policy, extra), &[]).await;
    assert_eq!(flagged_answer(&binary, user).await.status, StatusCode::OK);
    wait_used_today(&redis.url(), user, 1, WITHIN).await;
    (upstream, binary)
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
    let (upstream, binary) = serving(&redis, "deny", "", "d").await;

    redis.pause();
    for i in 0..5 {
        let answer = flagged_answer(&binary, "d").await;
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
    let (upstream, binary) = serving(&redis, "allow", "settle_queue = 1", "a").await;

    redis.kill();
    // Unchecked: the user gets past the daily 2.
    for i in 0..3 {
        let answer = flagged_answer(&binary, "a").await;
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
    wait_used_today(&redis.url(), "a", 1, WITHIN).await;
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
    // Redis tells the proxy "l" has used 1 of 2 today.
    let (upstream, binary) = serving(&redis, "local", "", "l").await;

    redis.kill();
    let answer = flagged_answer(&binary, "l").await;
    assert_eq!(answer.status, StatusCode::OK, "1 left, counted locally");
    let denied = flagged_answer(&binary, "l").await;
    assert_eq!(
        denied.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the local count is at the limit: {}",
        denied.text()
    );
    assert_eq!(upstream.count(), 2, "the denied request was not forwarded");
    // A user Redis never spoke of starts from zero: 2 more.
    for _ in 0..2 {
        assert_eq!(flagged_answer(&binary, "new").await.status, StatusCode::OK);
    }
    assert_eq!(
        flagged_answer(&binary, "new").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        metric(&binary, &format!("quota_proxy_fail_open_total{{{ROUTE}}}")).await,
        0.0,
        "local is not fail-open"
    );

    redis.restart();
    // The units counted locally land in Redis once each.
    wait_used_today(&redis.url(), "l", 2, WITHIN).await;
    wait_used_today(&redis.url(), "new", 2, WITHIN).await;
    assert_eq!(
        metric(
            &binary,
            r#"quota_proxy_settlements_dropped_total{reason="retry_queue"}"#
        )
        .await,
        0.0
    );
}

/// Under `on_store_error = "local"` the docs promise (docs/redis.md, the
/// `ResilientStore` module docs): "One replica admits a user at most
/// (limit − last known count) more per period and outage", each user
/// starting "from what Redis last told it about the user". But the first
/// local reserve of a user in an outage *removes* that user's baseline
/// (`src/store/resilient/local.rs`, `Local::reserve`:
/// `self.baselines...remove(&*key)`), and the local counts are dropped
/// when Redis answers any reserve again (`Local::end_outage`). So when
/// Redis goes away a second time (a restart, a failover, a Redis that
/// hangs for a moment twice) a user who tried during the first outage and
/// has not been answered by Redis since starts from zero: a free user at
/// the limit gets the whole daily limit again, per flap.
#[tokio::test]
async fn a_second_outage_under_local_forgets_what_redis_said() {
    let redis = RedisServer::start();
    let upstream = saving_upstream().await;
    // Daily 2. A breaker that never opens: every reserve asks Redis first,
    // so the first answer after a pause ends the outage at once.
    let config = daily_config(
        &upstream,
        2,
        &redis_store(&redis, "local", BREAKER_NEVER_OPENS),
    );
    let binary = Binary::start(&config, &[]).await;

    // "x" uses the day's two images; Redis says so.
    for i in 0..2 {
        let answer = flagged_answer(&binary, "x").await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "image {i}: {}",
            answer.text()
        );
    }
    wait_used_today(&redis.url(), "x", 2, WITHIN).await;
    assert_eq!(
        flagged_answer(&binary, "x").await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "Redis denies the third"
    );

    // First outage: "x" tries again and is denied from Redis's last answer.
    redis.pause();
    let first = flagged_answer(&binary, "x").await;
    binary
        .wait_store_health("the local count to be in force", WITHIN, |s| {
            s["local"] == true
        })
        .await;
    assert_eq!(
        first.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the local count starts from Redis's 2: {}",
        first.text()
    );

    // Redis answers again (another user's request), which ends the outage.
    redis.resume();
    assert_eq!(flagged_answer(&binary, "y").await.status, StatusCode::OK);
    binary
        .wait_store_health("the outage to end", WITHIN, |s| {
            s["local"] == false && s["pending_settles"] == 0
        })
        .await;
    wait_used_today(&redis.url(), "y", 1, WITHIN).await;

    // Second outage: Redis last told this replica that "x" is at 2 of 2.
    redis.pause();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(flagged_answer(&binary, "x").await.status);
    }
    redis.resume();
    let forwarded = upstream
        .requests()
        .iter()
        .filter(|r| r.header("x-user-id") == Some("x"))
        .count();
    // What reached Redis once the local settles were handed over.
    binary
        .wait_store_health("the settle queue to drain", WITHIN, |s| {
            s["pending_settles"] == 0
        })
        .await;
    let (used, _) = used_today(&redis.url(), "x").await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "a free user at the limit (2 a day) was admitted during a second Redis outage \
         (statuses {statuses:?}): the first outage consumed the baseline Redis had given \
         (Local::reserve removes it) and the local counts were dropped when Redis answered \
         in between, so the second outage started the user from zero. The upstream was asked \
         {forwarded} times for \"x\"; Redis now holds {used} images for a daily limit of 2"
    );
}

/// Under `on_store_error = "local"` every settle made during an outage
/// also goes to the Redis retry queue (`ResilientStore::settle`), releases
/// included: a flagged request that generated nothing queues a settle of
/// 0 for a reservation Redis never held (it was made in this replica's
/// memory), which can only add the id to Redis's `done` set. The queue is
/// bounded (`store.settle_queue`), and what does not fit is dropped
/// (`SettleQueue::push`). So during an outage one client decides whose
/// usage reaches Redis: its own cheap requests that generate nothing (a
/// session that is not its own, a refused message: the app answers at
/// once, the local unit is released and can be taken again, so the local
/// limit never stops them) fill the queue with releases, and the real
/// images other users generate meanwhile are dropped. The local counts are
/// thrown away when Redis answers again (`Local::end_outage`), so those
/// images are never counted. Scaled: a queue of 20.
#[tokio::test]
async fn releases_fill_the_outage_queue_and_push_out_other_users_images() {
    let mut redis = RedisServer::start();
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        if request.header("x-user-id") == Some("attacker") {
            // Not the caller's session: refused at once, nothing generated.
            return Reply::status(404).body("no such session");
        }
        Reply::ok().header("x-images-saved", "1").body("generated")
    })
    .await;
    let config = daily_config(
        &upstream,
        2,
        &redis_store(&redis, "local", "settle_queue = 20"),
    );
    let binary = Binary::start(&config, &[]).await;
    assert_eq!(
        flagged_answer(&binary, "warmup").await.status,
        StatusCode::OK
    );
    wait_used_today(&redis.url(), "warmup", 1, WITHIN).await;

    redis.kill();
    // The attacker: 25 flagged requests, each refused by the app, each
    // released; the local limit (2) never stops them.
    let mut attacker = Vec::new();
    for _ in 0..25 {
        attacker.push(flagged_answer(&binary, "attacker").await.status);
    }
    assert!(
        attacker.iter().all(|s| *s == StatusCode::NOT_FOUND),
        "the attacker's requests reach the app: {attacker:?}"
    );
    // A victim's real image during the same outage.
    let victim = flagged_answer(&binary, "victim").await;
    assert_eq!(victim.status, StatusCode::OK, "{}", victim.text());
    let health = binary.healthz().await;

    redis.restart();
    binary
        .wait_store_health("the retry queue to drain", WITHIN, |s| {
            s["up"] == true && s["pending_settles"] == 0
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut used = used_today(&redis.url(), "victim").await;
    while used.0 == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        used = used_today(&redis.url(), "victim").await;
    }
    assert_eq!(
        used.0, 1,
        "the victim's image, generated during the outage, never reached Redis ({used:?} used, \
         reserved): the retry queue (settle_queue = 20) was full of the attacker's 25 releases \
         of local reservations Redis never held, so the victim's settle was dropped; /healthz \
         during the outage: {health}"
    );
}

/// Redis killed while two generations are awaited, their reservations
/// held (`store.reservation_ttl` 1 s: looked at every 333 ms): the
/// extensions that fail are one warning a look, with how many failed, not
/// one line per reservation, and are tried again at the next look.
#[tokio::test]
async fn failed_extensions_are_one_warning_a_look() {
    let mut redis = RedisServer::start();
    let upstream = TestUpstream::start(|_: RecordedRequest| async move {
        Reply::ok()
            .header("x-images-saved", "1")
            .body("generated")
            .delay_head(Duration::from_secs(3))
    })
    .await;
    let binary = Binary::start(
        &config(&upstream, &redis, "deny", "reservation_ttl = \"1s\""),
        &[],
    )
    .await;
    let first = tokio::spawn(flagged(binary.proxy, "e1"));
    let second = tokio::spawn(flagged(binary.proxy, "e2"));
    tokio::time::timeout(WITHIN, upstream.wait_for_requests(2))
        .await
        .expect("both generations reach the upstream");
    redis.kill();
    let warned = |l: &serde_json::Value| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.contains("could not extend held reservations"))
    };
    let deadline = Instant::now() + WITHIN;
    while binary.count_logs(|l| warned(l) && l["failed"] == 2) < 2 {
        assert!(
            Instant::now() < deadline,
            "no two looks warned of both reservations: {}",
            binary.log_lines(&["extend"], 10)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        binary.count_logs(|l| warned(l) && l["failed"] != 1 && l["failed"] != 2),
        0,
        "{}",
        binary.log_lines(&["extend"], 10)
    );
    let _ = (first.await, second.await);
}

/// One flagged request from `user` to the proxy at `proxy`.
async fn flagged(proxy: std::net::SocketAddr, user: &'static str) -> StatusCode {
    TestClient::new(proxy)
        .send(
            Method::POST,
            "/gen/",
            &[("x-user-id", user), ("content-type", "application/json")],
            r#"{"generate_image": true}"#,
        )
        .await
        .status
}
