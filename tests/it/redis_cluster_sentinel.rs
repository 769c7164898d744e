//! The Redis store on a Redis Cluster and behind Sentinel (phases: admit
//! and settle): scripts flushed between requests, one round trip per call
//! and keys that expire, a master stopped (the local policy bounds the
//! gap, then hands over), a failover the store follows, and a master
//! killed mid-run whose settles land once on the new one. Shares
//! `redis_scale.rs`'s helpers; every test starts its own servers on free
//! loopback ports and waits a bounded time for anything.

use std::sync::Arc;
use std::time::Duration;

use crate::support::redis::{RedisCluster, RedisSentinel, RedisServer, wait_for};
use quota_proxy::store::{
    OutagePolicy, QuotaStore, RedisStore, ResilientStore, StoreError, Topology,
};

use crate::redis_scale::{
    flush_deadline, hold, now, options, request, reservation, resilient, used, windows,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_script_flush_between_requests_fails_nothing() {
    let cluster = RedisCluster::start(3);
    let store = RedisStore::open(&options(Topology::Cluster {
        nodes: cluster.urls(),
    }))
    .await
    .expect("connect");
    for i in 0..10 {
        let user = format!("user{i}");
        cluster.on_each(&["SCRIPT", "FLUSH"]);
        let r = hold(&store, &user, 5).await;
        cluster.on_each(&["SCRIPT", "FLUSH"]);
        store
            .settle(&r, 2, now())
            .await
            .expect("settle after flush");
        cluster.on_each(&["SCRIPT", "FLUSH"]);
        assert_eq!(used(&store, &user).await, 2);
    }
}

/// The commands clients sent to `node` since its slow log was reset, minus
/// the ones run by scripts and the cluster client's own bookkeeping.
async fn commands_on(node: &RedisServer) -> Vec<String> {
    let mut raw = raw(node).await;
    type Entry = (i64, i64, i64, Vec<String>, String, String);
    let entries: Vec<Entry> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1024)
        .query_async(&mut raw)
        .await
        .expect("SLOWLOG GET");
    entries
        .into_iter()
        .rev()
        .filter(|(_, _, _, _, client, _)| client != "?:0")
        .filter_map(|(_, _, _, args, _, _)| args.into_iter().next())
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| {
            !["slowlog", "cluster", "ping", "info", "client", "hello"].contains(&c.as_str())
        })
        .collect()
}

async fn raw(node: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(node.node_url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

async fn reset_slowlogs(cluster: &RedisCluster) {
    for node in &cluster.nodes {
        let mut raw = raw(node).await;
        redis::cmd("SLOWLOG")
            .arg("RESET")
            .exec_async(&mut raw)
            .await
            .expect("SLOWLOG RESET");
    }
}

async fn commands_sent(cluster: &RedisCluster) -> Vec<String> {
    let mut all = Vec::new();
    for node in &cluster.nodes {
        all.extend(commands_on(node).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_each_call_is_one_round_trip_and_keys_expire() {
    let cluster = RedisCluster::start(3);
    cluster.on_each(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    cluster.on_each(&["CONFIG", "SET", "slowlog-max-len", "1024"]);
    let store = RedisStore::open(&options(Topology::Cluster {
        nodes: cluster.urls(),
    }))
    .await
    .expect("connect");

    reset_slowlogs(&cluster).await;
    let r = hold(&store, "42", 5).await;
    let reserve = ["zadd", "pexpire", "zcount", "zcount", "zcount", "mget"];
    assert_eq!(commands_sent(&cluster).await, reserve, "reserve");
    reset_slowlogs(&cluster).await;
    store.settle(&r, 1, now()).await.expect("settle");
    // One settle in 8, by id, also cleans the user's set.
    let settle: &[&str] = if r.id.0.is_multiple_of(8) {
        &["zadd", "zremrangebyscore", "zremrangebyscore"]
    } else {
        &["zadd"]
    };
    assert_eq!(commands_sent(&cluster).await, settle, "settle");

    // A node that forgot a script: the same call, sent as EVAL.
    cluster.on_each(&["SCRIPT", "FLUSH"]);
    reset_slowlogs(&cluster).await;
    store
        .extend(&r, now() + chrono::TimeDelta::minutes(5), now())
        .await
        .expect("extend");
    assert_eq!(commands_sent(&cluster).await, ["evalsha", "eval"]);

    // Every key of the user sits on one node, with its TTL.
    let owner = &cluster.nodes[cluster.owner("{42}")];
    let pttl = |key: &str| -> i64 { owner.cli(&["PTTL", key]).parse().expect("PTTL") };
    let hour = 3_600_000;
    let day_left = 14 * hour; // 10:00 → midnight, plus the hour of grace
    // The set lives as long as its last period (the month) and the grace.
    let ms = day_left + 17 * 24 * hour + hour;
    let ttl = pttl("quota:{42}:units");
    // TTLs are relative to the caller's `now`; real time moved on a bit.
    assert!(
        ttl <= ms && ttl > ms - 10_000,
        "PTTL quota:{{42}}:units = {ttl}, expected ~{ms}"
    );

    // One user's key of the wrong type is that user's refusal, as on one
    // server (never an outage, which would open the breaker for all), and
    // the others are served.
    let bad = &cluster.nodes[cluster.owner("{bad}")];
    bad.cli(&["SET", "quota:{bad}:units", "not a zset"]);
    let refused = store
        .reserve(&request("bad", 5))
        .await
        .expect_err("the key is refused");
    assert!(
        matches!(&refused, StoreError::Refused(e) if e.contains("WRONGTYPE")),
        "{refused:?}"
    );
    hold(&store, "good", 5).await;
}

/// Two users whose keys live on different nodes: one on `node`, one not.
fn users_on_and_off(cluster: &RedisCluster, node: usize) -> (String, String) {
    let mut on = None;
    let mut off = None;
    for i in 0..100 {
        let user = format!("user{i}");
        if cluster.owner(&format!("{{{user}}}")) == node {
            on.get_or_insert(user);
        } else {
            off.get_or_insert(user);
        }
        if let (Some(on), Some(off)) = (&on, &off) {
            return (on.clone(), off.clone());
        }
    }
    panic!("no users found on and off node {node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_stop_local_policy_bounds_and_hands_over() {
    let mut cluster = RedisCluster::start(3);
    let store = resilient(
        Topology::Cluster {
            nodes: cluster.urls(),
        },
        OutagePolicy::Local,
    )
    .await;
    let (lost, healthy) = users_on_and_off(&cluster, 0);
    // Redis tells this replica `lost` has used 1 of 3.
    let first = hold(&store, &lost, 3).await;
    store.settle(&first, 1, now()).await.expect("settle");
    assert!(reservation(store.reserve(&request(&lost, 3)).await.expect("reserve")).is_some());

    cluster.nodes[0].kill();
    // The user on the stopped master is counted locally from what Redis
    // said last (1 used + 1 in flight): 1 more, then denied.
    let local = hold(&store, &lost, 3).await;
    assert!(store.is_local());
    assert!(
        reservation(store.reserve(&request(&lost, 3)).await.expect("reserve")).is_none(),
        "the local count is bounded"
    );
    store.settle(&local, 1, now()).await.expect("queued");
    assert!(store.pending_settles() > 0);

    // The others never fail either: served by their masters, or counted
    // locally while the breaker (one per store, not per node) is open.
    let r = hold(&store, &healthy, 0).await;
    store.settle(&r, 1, now()).await.expect("settle");

    cluster.nodes[0].restart();
    cluster.wait_ok();
    assert_eq!(store.flush(flush_deadline()).await, 0);
    // Redis is back: the local unit landed once.
    let mut counted = 0;
    for _ in 0..50 {
        match store.usage(&lost, &windows(), now()).await {
            Ok(usage) => {
                counted = usage[0].used;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(counted, 2, "1 before the stop + 1 counted locally");
    assert_eq!(store.dropped_settles(), 0);
}

/// Reserves and settles one unit per round for `rounds` rounds; returns
/// (settles issued, reserves refused by an outage).
async fn churn(store: &ResilientStore, user: &str, rounds: usize) -> (u64, u64) {
    let (mut issued, mut refused) = (0, 0);
    for _ in 0..rounds {
        match store.reserve(&request(user, 0)).await {
            Ok(admission) => {
                let r = reservation(admission).expect("unlimited");
                store.settle(&r, 1, now()).await.expect("settle or queue");
                issued += 1;
            }
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_)) => refused += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (issued, refused)
}

/// Waits until the replica has every write the master took (`WAIT`), so a
/// failover from here on loses none of them.
fn wait_replicated(set_up: &RedisSentinel) {
    let acked = set_up.master().cli(&["WAIT", "1", "5000"]);
    assert_eq!(acked, "1", "the replica acknowledged the master's writes");
}

/// A forced failover while settles go on. Two users keep the two
/// expectations apart:
///
/// - `alice` settles only while nothing moves: before the failover (and
///   the replica has them all, `WAIT`), and after it, once the old master
///   is demoted. The design promises exactly-once for these: **equality**.
/// - `bob` settles all through the switch. `SENTINEL FAILOVER` does not
///   pause writers, and Redis replicates asynchronously: a settle the old
///   master acknowledged after the replica's promotion, before Sentinel
///   demotes it, is lost when it resyncs from the new master. The store
///   cannot see that loss (Redis said OK), so the bound is one-sided:
///   **never counted twice** (`counted <= issued`), and at most the
///   settles issued during the switch are lost (printed, to watch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_the_store_follows_the_new_master() {
    let set_up = Arc::new(RedisSentinel::start());
    let store = Arc::new(resilient(set_up.topology(), OutagePolicy::Fail).await);
    let (before, _) = churn(&store, "alice", 20).await;
    assert_eq!(before, 20);
    wait_replicated(&set_up);
    let old = set_up.master_port();
    let during = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { churn(&store, "bob", 30).await })
    };
    let failing_over = {
        let set_up = Arc::clone(&set_up);
        tokio::task::spawn_blocking(move || {
            set_up.failover();
            // Sentinel demotes the old master a moment after the promotion.
            wait_for(
                "the old master is a replica",
                Duration::from_secs(20),
                || crate::support::redis::cli(old, &["ROLE"]).starts_with("slave"),
            );
        })
    };
    failing_over.await.expect("failover");
    assert_ne!(set_up.master_port(), old);
    let (during, _) = during.await.expect("bob's churn");
    // After the switch every request is served by the new master.
    let mut after = 0;
    for _ in 0..100 {
        if after == 20 {
            break;
        }
        after += churn(&store, "alice", 1).await.0;
    }
    assert_eq!(after, 20, "the store follows the new master");
    assert_eq!(store.flush(flush_deadline()).await, 0);
    assert_eq!(store.dropped_settles(), 0);
    assert_eq!(
        used(&*store, "alice").await,
        before + after,
        "settles made while no failover runs land exactly once"
    );
    let bob = used(&*store, "bob").await;
    println!("bob: {during} settles issued during the failover, {bob} counted");
    assert!(
        bob <= during,
        "never counted twice: counted {bob}, issued {during}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_mid_run_settles_land_once_on_the_new_master() {
    let set_up = Arc::new(std::sync::Mutex::new(RedisSentinel::start()));
    let topology = set_up.lock().expect("set-up").topology();
    let store = Arc::new(resilient(topology, OutagePolicy::Fail).await);
    let churning = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { churn(&store, "alice", 300).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = {
        let set_up = Arc::clone(&set_up);
        tokio::task::spawn_blocking(move || {
            let mut set_up = set_up.lock().expect("set-up");
            let port = set_up.master_port();
            let master = set_up
                .servers
                .iter_mut()
                .find(|s| s.port() == port)
                .expect("master");
            master.kill();
            wait_for("failover after the kill", Duration::from_secs(20), || {
                set_up.master_port() != port
            });
        })
    };
    killed.await.expect("kill and failover");
    let (issued, refused) = churning.await.expect("churn");
    assert!(refused > 0, "the outage was seen (policy: fail)");
    assert!(issued > 0);
    // Until the client has found the new master, settles wait in the queue.
    assert_eq!(store.flush(flush_deadline()).await, 0);
    let mut counted = None;
    for _ in 0..100 {
        if let Ok(usage) = store.usage("alice", &windows(), now()).await {
            counted = Some(usage[0].used);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settles that failed with the master are queued and land once on the
    // new master: never more than issued. One may be lost: Redis
    // replicates asynchronously, so the settle the master acknowledged in
    // the event-loop turn it was killed in may not have reached the
    // replica. Only one can be, as `churn` has one call in flight at a
    // time.
    let counted = counted.expect("the new master answers");
    assert!(
        counted <= issued && counted + 1 >= issued,
        "counted {counted}, issued {issued}: at most the last acknowledged settle is lost"
    );
    assert_eq!(store.dropped_settles(), 0);
}
