//! Redis faults (phases: admit and settle): a connection cut by Redis
//! (`CLIENT KILL`), a restart with AOF, a Sentinel failover and a cluster
//! node restart. The first call after each must be sent again on a fresh
//! connection and succeed, never fail (which under `on_store_error =
//! "allow"` would let a flagged request through uncounted), and every
//! request must count exactly once. Real `redis-server` processes started by
//! each test on free loopback ports; the store directly, then the real
//! binary with 100 flagged requests across the faults.

use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::gen_route;
use crate::support::instant::at;
use crate::support::proxy::TestClient;
use crate::support::redis::{RedisCluster, RedisSentinel, RedisServer, SENTINEL_MASTER};
use crate::support::reserve::{daily_request, utc_windows};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use chrono::{Utc, Weekday};
use http::{Method, StatusCode};
use quota_proxy::periods::Calendar;
use quota_proxy::store::{
    Admission, QuotaStore, RedisOptions, RedisStore, Reservation, ReservationId, ReserveRequest,
    Topology,
};

const TTL: Duration = Duration::from_secs(60);
/// Generous: a loaded machine must not turn a slow reconnect into a failure
/// the test then blames on the retry.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const PREFIX: &str = "quota:";
/// A Wednesday; its week started Monday 2031-05-12.
const NOW: &str = "2031-05-14T10:00:00Z";

fn request(user: &str, daily: u64) -> ReserveRequest {
    daily_request(user, daily, at(NOW), TTL)
}

async fn open(topology: Topology) -> RedisStore {
    RedisStore::open(&RedisOptions {
        topology,
        key_prefix: PREFIX.to_owned(),
        command_timeout: COMMAND_TIMEOUT,
        root_cert: None,
    })
    .await
    .expect("connect to the test redis")
}

fn single(server: &RedisServer) -> Topology {
    Topology::Single { url: server.url() }
}

/// Reserves one unit for `user` (limit `daily`) and settles it as 1 image:
/// every call must succeed, the first one too.
async fn one_image(store: &dyn QuotaStore, user: &str, daily: u64) {
    let admission = store
        .reserve(&request(user, daily))
        .await
        .expect("reserve succeeds, even on a connection Redis cut");
    let Admission::Reserved { reservation, .. } = admission else {
        panic!("expected a reservation, got {admission:?}");
    };
    store
        .settle(&reservation, 1, at(NOW))
        .await
        .expect("settle succeeds");
}

async fn used(store: &dyn QuotaStore, user: &str) -> (u64, u64) {
    let usage = store
        .usage(user, &utc_windows(at(NOW)), at(NOW))
        .await
        .expect("usage");
    (usage[0].used, usage[0].reserved)
}

/// `CLIENT KILL TYPE normal` on `server`: every client connection is cut.
fn kill_clients(port: u16) {
    let killed = crate::support::redis::cli(port, &["CLIENT", "KILL", "TYPE", "normal"]);
    assert!(
        killed.parse::<u64>().is_ok_and(|n| n >= 1),
        "CLIENT KILL: {killed}"
    );
}

/// `CLIENT KILL ID …` of every normal client on a Sentinel-watched master
/// but the Sentinel's own: the test set-up's Sentinel declares a master
/// down after 500 ms without an answer, so cutting its links too would
/// start a failover this test does not ask for.
fn kill_clients_but_sentinel(port: u16) {
    let list = crate::support::redis::cli(port, &["CLIENT", "LIST", "TYPE", "normal"]);
    let ids: Vec<&str> = list
        .lines()
        .filter(|l| !l.contains("name=sentinel-") && !l.contains("cmd=client|list"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert!(!ids.is_empty(), "no client to kill: {list}");
    for id in ids {
        crate::support::redis::cli(port, &["CLIENT", "KILL", "ID", id]);
    }
}

#[tokio::test]
async fn every_call_survives_client_kill() {
    let server = RedisServer::start();
    let store = open(single(&server)).await;
    one_image(&store, "u", 0).await;
    // Each kind of call is the first on a cut connection once.
    kill_clients(server.port());
    one_image(&store, "u", 0).await;
    kill_clients(server.port());
    assert_eq!(used(&store, "u").await, (2, 0));
    kill_clients(server.port());
    store.ping().await.expect("ping after CLIENT KILL");
    let Admission::Reserved { reservation, .. } =
        store.reserve(&request("u", 0)).await.expect("reserve")
    else {
        panic!("reserved");
    };
    kill_clients(server.port());
    store
        .extend(
            &reservation,
            at(NOW) + chrono::TimeDelta::minutes(5),
            at(NOW),
        )
        .await
        .expect("extend after CLIENT KILL");
    kill_clients(server.port());
    store
        .settle(&reservation, 1, at(NOW))
        .await
        .expect("settle after CLIENT KILL");
    assert_eq!(used(&store, "u").await, (3, 0));
}

#[tokio::test]
async fn per_thread_connections_survive_client_kill() {
    let server = RedisServer::start();
    let store = std::sync::Arc::new(open(single(&server)).await.per_thread_connections());
    let port = server.port();
    let on_thread = std::sync::Arc::clone(&store);
    // A serving thread like the binary's: a current-thread runtime with a
    // connection of its own once it has made a few calls.
    let serving = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async move {
                for _ in 0..10 {
                    one_image(&*on_thread, "t", 0).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                for _ in 0..5 {
                    kill_clients(port);
                    one_image(&*on_thread, "t", 0).await;
                }
            });
    });
    // Joined off this runtime: it drives the store's shared connection,
    // which the thread uses until its own is open.
    tokio::task::spawn_blocking(move || serving.join())
        .await
        .expect("join")
        .expect("serving thread");
    assert_eq!(used(&*store, "t").await, (15, 0));
}

#[tokio::test]
async fn counts_survive_a_restart_with_aof_and_the_first_call_after_succeeds() {
    let mut server = RedisServer::start_persistent();
    let store = open(single(&server)).await;
    for _ in 0..3 {
        one_image(&store, "r", 5).await;
    }
    server.restart();
    // The scripts are gone too: NOSCRIPT, then EVAL, all in this call.
    one_image(&store, "r", 5).await;
    one_image(&store, "r", 5).await;
    assert_eq!(used(&store, "r").await, (5, 0));
    let denied = store.reserve(&request("r", 5)).await.expect("reserve");
    assert!(
        matches!(denied, Admission::Exceeded { .. }),
        "5 of 5 used: {denied:?}"
    );
}

#[tokio::test]
async fn sentinel_failover_and_client_kill() {
    let set_up = RedisSentinel::start();
    let store = open(set_up.topology()).await;
    for _ in 0..3 {
        one_image(&store, "s", 0).await;
    }
    kill_clients_but_sentinel(set_up.master_port());
    one_image(&store, "s", 0).await;
    // What the master acknowledged is on the replica before the failover
    // (async replication could otherwise lose it: docs/operations.md).
    let synced = set_up.master().cli(&["WAIT", "1", "5000"]);
    assert_eq!(synced, "1", "replica in sync");
    let old = set_up.master_port();
    set_up.failover();
    // Once Sentinel has demoted the old master, a call that still goes
    // there is refused (READONLY) and sent again to the new master.
    crate::support::redis::wait_for("old master demoted", Duration::from_secs(30), || {
        crate::support::redis::cli(old, &["ROLE"]).starts_with("slave")
    });
    one_image(&store, "s", 0).await;
    one_image(&store, "s", 0).await;
    assert_eq!(used(&store, "s").await, (6, 0));
}

#[tokio::test]
async fn cluster_node_restart() {
    let mut cluster = RedisCluster::start(3);
    let store = open(Topology::Cluster {
        nodes: cluster.urls(),
    })
    .await;
    for _ in 0..3 {
        one_image(&store, "c", 0).await;
    }
    let owner = cluster.owner(&format!("{PREFIX}{{c}}:units"));
    let port = cluster.nodes[owner].port();
    kill_clients(port);
    one_image(&store, "c", 0).await;
    cluster.nodes[owner].restart();
    cluster.wait_ok();
    one_image(&store, "c", 0).await;
    assert_eq!(used(&store, "c").await, (5, 0));
}

/// The commands themselves: a reserve's or a settle's commands sent twice
/// with the same id (the first answer lost with the connection) count
/// once. The reserve's are written out here as `reserve.rs` sends them.
#[tokio::test]
async fn a_repeated_reserve_or_settle_counts_once() {
    let server = RedisServer::start();
    let store = open(single(&server)).await;
    let mut raw = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let now = at(NOW);
    let w = utc_windows(now);
    // A live unit scores its deadline - 2^52 (ms); it is live while its
    // score is above now - 2^52; a unit counted in a period scores minus
    // its day's start, at most minus the period's start.
    let live_base: i64 = 1 << 52;
    let deadline = now.timestamp_millis() + 60_000;
    let units = format!("{PREFIX}{{x}}:units");
    let reserve = || {
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(&units)
            .arg("NX")
            .arg(deadline - live_base)
            .arg(ReservationId(7));
        for window in w.iter() {
            pipe.cmd("ZCOUNT")
                .arg(&units)
                .arg(format!("({}", now.timestamp_millis() - live_base))
                .arg(-window.start.timestamp_millis());
        }
        pipe
    };
    // ZADD answers 1 (added), each ZCOUNT the units with this one.
    let first: Vec<i64> = reserve().query_async(&mut raw).await.expect("reserve");
    assert_eq!(first, [1, 1, 1, 1]);
    let again: Vec<i64> = reserve()
        .query_async(&mut raw)
        .await
        .expect("reserve again");
    assert_eq!(
        again,
        [0, 1, 1, 1],
        "the repeat adds nothing and counts one"
    );
    assert_eq!(used(&store, "x").await, (0, 1), "one unit held");
    let reservation = Reservation {
        id: ReservationId(7),
        user: "x".to_owned(),
        windows: w,
        expires_at: now + chrono::TimeDelta::minutes(1),
        keys_expire: false,
    };
    store.settle(&reservation, 1, now).await.expect("settle");
    store
        .settle(&reservation, 1, now)
        .await
        .expect("settle again");
    assert_eq!(used(&store, "x").await, (1, 0), "settled once");
    // A settle of several units, sent twice, counts them once too.
    let many = Reservation {
        id: ReservationId(8),
        ..reservation
    };
    store.settle(&many, 3, now).await.expect("settle 3");
    store.settle(&many, 3, now).await.expect("settle 3 again");
    assert_eq!(used(&store, "x").await, (4, 0), "three more, once");
}

// The real binary: 100 flagged requests across the faults.

/// An upstream that saves one image per request and says so.
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|_request: RecordedRequest| async move {
        Reply::ok().header("x-images-saved", "1").body("an image")
    })
    .await
}

fn binary_config(upstream: &TestUpstream, store: &str) -> String {
    gen_route::redis_config(
        upstream,
        "allow",
        &format!("command_timeout = \"1500ms\"\n{store}"),
    )
}

/// The value of the series `name{labels}` summed over every line that
/// starts with `prefix`.
fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(binary: &Binary) -> String {
    TestClient::new(binary.admin)
        .send(Method::GET, "/metrics", &[], "")
        .await
        .text()
}

/// Sends `n` flagged requests for `user`; each must be forwarded.
async fn send_flagged(binary: &Binary, user: &str, n: usize) {
    for i in 0..n {
        let status = gen_route::flagged(binary, user).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
    }
}

/// Settled usage of `user` today in the binary's calendar (Asia/Tehran).
async fn binary_usage(topology: Topology, user: &str) -> (u64, u64) {
    let store = open(topology).await;
    let calendar = Calendar::new(chrono_tz::Asia::Tehran, Weekday::Mon);
    let now = Utc::now();
    let usage = store
        .usage(user, &calendar.windows(now), now)
        .await
        .expect("usage");
    (usage[0].used, usage[0].reserved)
}

/// Waits until `user`'s settled usage is `n` (settles run after the
/// response), bounded.
async fn wait_usage(topology: Topology, user: &str, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = binary_usage(topology.clone(), user).await;
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

fn assert_nothing_failed_open(metrics: &str, allowed: f64) {
    assert_eq!(
        metric_sum(metrics, "quota_proxy_fail_open_total"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(
            metrics,
            "quota_proxy_requests_total{route=\"POST /gen/\",decision=\"store_error_allowed\"}"
        ),
        0.0
    );
    let counted = metrics
        .lines()
        .filter(|l| {
            l.starts_with("quota_proxy_requests_total") && l.contains("decision=\"allowed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(counted, allowed, "{metrics}");
}

/// The DoD of the reconnect rule: 100 flagged requests, 50 on one server
/// across a `CLIENT KILL` and a restart with AOF, 50 behind Sentinel across
/// a `CLIENT KILL` and a failover. Each is forwarded and counted exactly
/// once; none is let through uncounted.
#[tokio::test]
async fn hundred_flagged_requests_across_kill_restart_and_failover_count_once() {
    let upstream = saving_upstream().await;

    let mut server = RedisServer::start_persistent();
    let url = server.url();
    let binary = Binary::start(&binary_config(&upstream, &format!("url = \"{url}\"")), &[]).await;
    send_flagged(&binary, "alice", 20).await;
    kill_clients(server.port());
    send_flagged(&binary, "alice", 15).await;
    server.restart();
    send_flagged(&binary, "alice", 15).await;
    wait_usage(single(&server), "alice", 50).await;
    assert_nothing_failed_open(&metrics(&binary).await, 50.0);
    drop(binary);

    let set_up = RedisSentinel::start();
    let store = format!(
        "[store.sentinel]\nmaster = \"{SENTINEL_MASTER}\"\nnodes = [\"{}\"]",
        set_up.sentinel_url()
    );
    let binary = Binary::start(&binary_config(&upstream, &store), &[]).await;
    send_flagged(&binary, "bob", 20).await;
    kill_clients_but_sentinel(set_up.master_port());
    send_flagged(&binary, "bob", 15).await;
    // Asynchronous replication: only what reached the replica survives a
    // failover; the bound is in docs/operations.md.
    wait_usage(set_up.topology(), "bob", 35).await;
    assert_eq!(set_up.master().cli(&["WAIT", "1", "5000"]), "1");
    let old = set_up.master_port();
    set_up.failover();
    // A forced failover leaves the old master up, answering as a master
    // until Sentinel demotes it; what it takes meanwhile is lost when it
    // resyncs (the bound in docs/operations.md). Once demoted, a call that
    // still goes there is refused (READONLY) and sent to the new master.
    crate::support::redis::wait_for("old master demoted", Duration::from_secs(30), || {
        crate::support::redis::cli(old, &["ROLE"]).starts_with("slave")
    });
    send_flagged(&binary, "bob", 15).await;
    wait_usage(set_up.topology(), "bob", 50).await;
    assert_nothing_failed_open(&metrics(&binary).await, 50.0);
    assert_eq!(upstream.requests().len(), 100);
}

/// Reserves and settles batched on the real binary (two serving threads):
/// 200 flagged requests at once, 10 for each of 20 users with 5 images a
/// day, and every Redis connection killed while they run (a batch in
/// flight is sent again on a fresh connection). Exactly 5 per user are
/// forwarded and counted, the other 5 denied at the limit; none is let
/// through uncounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_flagged_requests_across_a_client_kill_are_admitted_exactly() {
    let upstream = saving_upstream().await;
    let server = RedisServer::start();
    let config = binary_config(&upstream, &format!("url = \"{}\"", server.url()))
        .replace("daily = 1000", "daily = 5");
    let binary = Binary::start(&config, &[]).await;

    // Redis holds every script call it gets (`CLIENT PAUSE … WRITE`) while
    // the 200 start; then every connection is killed, with reserves in
    // flight (sent, never run): each must be sent again, once.
    server.cli(&["CLIENT", "PAUSE", "1000", "WRITE"]);
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let requests = (0..200).map(|i| {
        let (binary, answered) = (&binary, &answered);
        async move {
            let status = gen_route::flagged(binary, &format!("u{}", i % 20)).await;
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            status
        }
    });
    let kill = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        kill_clients(server.port());
        answered.load(std::sync::atomic::Ordering::SeqCst)
    };
    let (statuses, answered_at_kill) = tokio::join!(futures_util::future::join_all(requests), kill);
    assert_eq!(answered_at_kill, 0, "every request waited for its reserve");

    let forwarded = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let denied = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((forwarded, denied), (100, 100));
    for u in 0..20 {
        wait_usage(single(&server), &format!("u{u}"), 5).await;
    }
    assert_eq!(upstream.requests().len(), 100);
    assert_nothing_failed_open(&metrics(&binary).await, 100.0);
}
