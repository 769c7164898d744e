//! The store's life around the proxy's (phases: startup, reload,
//! shutdown), on the real binary with real `redis-server` processes: the
//! proxy starts and serves while Redis is down (under `allow` and `deny`),
//! and a reload to another Redis hands the whole store over, so the
//! settles queued in the new one are the ones flushed and measured at
//! shutdown.

use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::gen_route;
use crate::support::proxy::{Answer, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use chrono::{Utc, Weekday};
use http::{Method, StatusCode};
use quota_proxy::periods::Calendar;
use quota_proxy::store::{QuotaStore, RedisStore};

/// Every bounded wait of this file.
const WITHIN: Duration = Duration::from_secs(20);

async fn metrics(binary: &Binary) -> String {
    admin_get(binary, "/metrics").await.text()
}

/// The sum of every series whose line starts with `prefix`.
fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Settled and reserved usage of `user` today in the binary's calendar
/// (Asia/Tehran) on the Redis at `url`.
async fn usage(url: &str, user: &str) -> (u64, u64) {
    let store = RedisStore::connect(url, "quota:", Duration::from_secs(2))
        .await
        .expect("connect to the test redis");
    let calendar = Calendar::new(chrono_tz::Asia::Tehran, Weekday::Mon);
    let now = Utc::now();
    let usage = store
        .usage(user, &calendar.windows(now), now)
        .await
        .expect("usage");
    (usage[0].used, usage[0].reserved)
}

/// Waits until `user`'s usage on `url` is `n` settled, none reserved.
async fn wait_usage(url: &str, user: &str, n: u64) {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let now = usage(url, user).await;
        if now == (n, 0) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage of {user} is {now:?}, expected ({n}, 0)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Starting without Redis.

/// An upstream that saves an image on `/gen/` and serves a page elsewhere.
async fn app_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        if request.uri.path() == "/gen/" {
            Reply::ok().header("x-images-saved", "1").body("an image")
        } else {
            Reply::ok().body("a page")
        }
    })
    .await
}

async fn admin_get(binary: &Binary, path: &str) -> Answer {
    TestClient::new(binary.admin)
        .send(Method::GET, path, &[], "")
        .await
}

async fn page(binary: &Binary) -> StatusCode {
    TestClient::new(binary.proxy)
        .send(Method::GET, "/chat/", &[("x-user-id", "alice")], "")
        .await
        .status
}

/// The one value of a series without labels.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
}

/// Polls `/healthz` until `store.up` is `up` (bounded).
async fn wait_store_up(binary: &Binary, up: bool) {
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let health = admin_get(binary, "/healthz").await;
        assert_eq!(health.status, StatusCode::OK, "liveness never fails");
        if health.json()["store"]["up"] == up {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/healthz store.up is not {up}: {}",
            health.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn starts_and_serves_without_redis_under_allow_then_counts_once_it_answers() {
    let upstream = app_upstream().await;
    let mut server = RedisServer::start_persistent();
    let url = server.url();
    server.kill();
    let binary = Binary::start(
        &gen_route::redis_config(
            &upstream,
            "allow",
            &format!("url = \"{url}\"\nbreaker = {{ failures = 5, open_for = \"200ms\" }}"),
        ),
        &[],
    )
    .await;
    // Ready to serve its app; the store's outage is visible elsewhere.
    let ready = admin_get(&binary, "/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    let health = admin_get(&binary, "/healthz").await.json();
    assert_eq!(health["store"]["up"], false, "{health}");
    let reason = health["store"]["last_error"].as_str().expect("last_error");
    assert!(reason.contains("redis"), "{reason}");
    assert_eq!(gauge(&metrics(&binary).await, "quota_proxy_store_up"), 0.0);

    assert_eq!(page(&binary).await, StatusCode::OK, "pass-through");
    assert_eq!(
        gen_route::flagged(&binary, "alice").await,
        StatusCode::OK,
        "allow"
    );
    let m = metrics(&binary).await;
    assert_eq!(metric_sum(&m, "quota_proxy_fail_open_total"), 1.0, "{m}");

    server.restart();
    wait_store_up(&binary, true).await;
    let m = metrics(&binary).await;
    assert_eq!(gauge(&m, "quota_proxy_store_up"), 1.0);
    assert_eq!(gauge(&m, "quota_proxy_store_breaker_open"), 0.0);
    for _ in 0..3 {
        assert_eq!(gen_route::flagged(&binary, "alice").await, StatusCode::OK);
    }
    // The three counted, and the image of the one let through, whose
    // settle waited in the queue for Redis.
    wait_usage(&url, "alice", 4).await;
    let m = metrics(&binary).await;
    assert_eq!(metric_sum(&m, "quota_proxy_fail_open_total"), 1.0, "{m}");
}

#[tokio::test]
async fn starts_without_redis_under_deny_refusing_flagged_requests_only() {
    let upstream = app_upstream().await;
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let config = gen_route::redis_config(&upstream, "deny", &format!("url = \"{url}\""));
    let binary = Binary::start(&config, &[]).await;
    assert_eq!(admin_get(&binary, "/readyz").await.status, StatusCode::OK);
    assert_eq!(page(&binary).await, StatusCode::OK, "pass-through");
    assert_eq!(
        gen_route::flagged(&binary, "alice").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(upstream.requests().len(), 1, "only the page reached it");
}

// A reload hands the whole store over.

/// Reloads from `store` to a second Redis, queues settles there while it
/// hangs (SIGSTOP), and shuts down: the queue the shutdown flushes and the
/// gauge that measures it are the new store's, and the settles land there.
#[tokio::test]
async fn a_reload_to_another_redis_hands_over_the_queue_flushed_at_shutdown() {
    let upstream = app_upstream().await;
    let first = RedisServer::start();
    let second = RedisServer::start();
    let store = |url: &str| {
        format!(
            "url = \"{url}\"\ncommand_timeout = \"200ms\"\nflush_timeout = \"20s\"\n\
             breaker = {{ failures = 2, open_for = \"30s\" }}"
        )
    };
    let mut binary = Binary::start(
        &gen_route::redis_config(&upstream, "allow", &store(&first.url())),
        &[],
    )
    .await;
    assert_eq!(gen_route::flagged(&binary, "carol").await, StatusCode::OK);
    wait_usage(&first.url(), "carol", 1).await;

    // Two reloads: to the second Redis, and once more with a change that
    // keeps it (the store in force must stay the second one's).
    binary.write_config(&gen_route::redis_config(
        &upstream,
        "allow",
        &store(&second.url()),
    ));
    binary.signal("HUP");
    let reloaded = |l: &serde_json::Value| l["message"] == "config reloaded";
    binary.wait_for_logs(1, WITHIN, reloaded).await;
    binary.write_config(
        &gen_route::redis_config(&upstream, "deny", &store(&second.url())).replace(
            "on_store_error = \"deny\"",
            "on_store_error = \"allow\"\nreservation_ttl = \"2m\"",
        ),
    );
    binary.signal("HUP");
    binary.wait_for_logs(2, WITHIN, reloaded).await;

    // The second Redis hangs: reserves time out (forwarded under allow,
    // counted as fail-open), and the images they report are queued.
    second.pause();
    for _ in 0..3 {
        assert_eq!(gen_route::flagged(&binary, "carol").await, StatusCode::OK);
    }
    let health = admin_get(&binary, "/healthz").await.json();
    assert_eq!(health["store"]["pending_settles"], 3, "{health}");
    assert_eq!(health["store"]["up"], false, "{health}");
    // Measured: the retry-queue gauge (updated every 5 s) shows them.
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let m = metrics(&binary).await;
        let queued = metric_sum(&m, "quota_proxy_settlements_pending{stage=\"retry_queue\"}");
        if queued == 3.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retry_queue gauge is {queued}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Shut down; the flush waits for the second Redis, which comes back.
    binary.signal("TERM");
    binary
        .wait_for_logs(1, WITHIN, |l| l["message"] == "all settlements recorded")
        .await;
    // The flush waits for the new store's Redis (up to flush_timeout).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        binary.try_status().is_none(),
        "exited without waiting for the queued settles:\n{}",
        binary.logs().join("\n")
    );
    second.resume();
    let status = binary.wait_exit(WITHIN).await;
    assert_eq!(status.code(), Some(0), "{}", binary.logs().join("\n"));
    assert_eq!(
        binary.count_logs(|l| {
            l["message"] == "stopped with settles Redis did not take (logged above)"
        }),
        0,
        "{}",
        binary.logs().join("\n")
    );
    // Settled: the three images. (The reserves that timed out ran once
    // Redis resumed; each holds a unit until reservation_ttl, as any reserve
    // whose answer came too late does.)
    let (used, phantom) = usage(&second.url(), "carol").await;
    assert_eq!(used, 3, "{}", binary.logs().join("\n"));
    assert!(phantom <= 3, "{phantom}");
    assert_eq!(
        usage(&first.url(), "carol").await,
        (1, 0),
        "nothing more there"
    );
}

/// A Redis that may evict keys under memory pressure would delete quota
/// counters (they all have TTLs) and users would start over: the proxy
/// says so at startup. The default policy (`noeviction`) is not warned of.
#[tokio::test]
async fn a_redis_that_evicts_is_warned_of_at_startup() {
    let upstream = app_upstream().await;
    let start = |redis: &RedisServer| {
        let config = format!(
            "upstream = \"http://{}\"\n[store]\nkind = \"redis\"\nurl = \"{}\"\n\
             [identity]\ndefault_plan = \"free\"\n[plans]\nfree = {{ daily = 2 }}\n\
             [[routes]]\nmethod = \"POST\"\npath = \"/gen/\"\n",
            upstream.authority(),
            redis.url()
        );
        async move { Binary::start(&config, &[]).await }
    };
    let warned = |l: &serde_json::Value| {
        l["fields"]["maxmemory_policy"].as_str().is_some()
            || l["maxmemory_policy"].as_str().is_some()
    };
    let evicting = RedisServer::start_with(|_| {
        vec!["--maxmemory-policy".to_owned(), "volatile-lru".to_owned()]
    });
    let binary = start(&evicting).await;
    binary
        .wait_for_logs(1, Duration::from_secs(10), warned)
        .await;
    let line = binary.find_log(warned).expect("the warning");
    assert!(line.to_string().contains("volatile-lru"), "{line}");

    let default = RedisServer::start();
    let binary = start(&default).await;
    wait_store_up(&binary, true).await;
    assert_eq!(binary.count_logs(warned), 0, "{}", binary.logs().join("\n"));
}
