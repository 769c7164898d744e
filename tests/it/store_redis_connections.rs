//! How the Redis store talks to Redis (phases: admit and settle): each
//! call is one round trip, and its per-thread connections are opened per
//! serving thread, closed with the store and recovered after a restart.
//! Shares the helpers of `store.rs` and `store_redis.rs`; each test starts
//! its own `redis-server` on a free loopback port.

use std::time::Duration;

use crate::support::redis::RedisServer;
use chrono::TimeDelta;
use quota_proxy::periods::Period;
use quota_proxy::store::{Admission, QuotaStore, RedisStore, Reservation, ReservationId};

use crate::store::{COMMAND_TIMEOUT, NOW, PREFIX, TTL, at, exceeded, limits, request, windows};
use crate::store_redis::redis_pair;

/// What Redis has read so far: `total_reads_processed` of `INFO stats`,
/// one per batch of commands a client wrote at once.
async fn reads(raw: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(raw)
        .await
        .expect("INFO stats");
    loadbench::redis_info::read_calls(&info).round_trips
}

/// The commands clients sent while `call` ran, oldest first, from the slow
/// log with a threshold of 0 (commands run inside a script are logged with
/// the client `?:0` and left out), and the round trips they took: the
/// reads Redis made, less the `INFO` that reads the count after.
async fn calls_sent<F: Future>(
    raw: &mut redis::aio::MultiplexedConnection,
    call: F,
) -> (Vec<String>, u64) {
    redis::cmd("SLOWLOG")
        .arg("RESET")
        .exec_async(raw)
        .await
        .expect("SLOWLOG RESET");
    let before = reads(raw).await;
    call.await;
    let round_trips = reads(raw).await - before - 1;
    type Entry = (i64, i64, i64, Vec<String>, String, String);
    let entries: Vec<Entry> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1024)
        .query_async(raw)
        .await
        .expect("SLOWLOG GET");
    let commands = entries
        .into_iter()
        .rev()
        .filter(|(_, _, _, _, client, _)| client != "?:0")
        .filter_map(|(_, _, _, args, _, _)| args.into_iter().next())
        .map(|command| command.to_ascii_lowercase())
        .filter(|command| !["slowlog", "info"].contains(&command.as_str()))
        .collect();
    (commands, round_trips)
}

/// The commands of a reserve, a settle of one unit, a release, a usage
/// read.
const RESERVE: [&str; 6] = ["zadd", "pexpire", "zcount", "zcount", "zcount", "mget"];
const RELEASE: [&str; 1] = ["zrem"];
const USAGE: [&str; 5] = ["zcount", "zcount", "zcount", "zcount", "mget"];

/// The commands of a settle of one unit of reservation `id`: `ZADD`, two
/// `PEXPIRE`s if it sets the expiry, and, one settle in 8 (by id), the two
/// `ZREMRANGEBYSCORE`s that clean the set.
fn settle_commands(id: ReservationId, expire: bool) -> Vec<String> {
    let mut commands = vec!["zadd"];
    if expire {
        commands.extend(["pexpire", "pexpire"]);
    }
    if id.0.is_multiple_of(8) {
        commands.extend(["zremrangebyscore", "zremrangebyscore"]);
    }
    commands.into_iter().map(String::from).collect()
}

#[tokio::test]
async fn redis_each_call_is_one_round_trip() {
    let server = RedisServer::start();
    let (store, mut raw) = redis_pair(&server).await;
    for (name, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "1024"),
    ] {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .exec_async(&mut raw)
            .await
            .expect("CONFIG SET");
    }
    let now = at(NOW);
    let w = windows(now);
    let l = limits(5, 5, 5);

    let mut admission = None;
    let sent = calls_sent(&mut raw, async {
        admission = Some(store.reserve(&request("42", l, now, TTL)).await);
    })
    .await;
    assert_eq!(sent, (RESERVE.map(String::from).to_vec(), 1), "reserve");
    let Some(Ok(Admission::Reserved { reservation, .. })) = admission else {
        panic!("expected a reservation, got {admission:?}");
    };

    let sent = calls_sent(&mut raw, async {
        store
            .extend(&reservation, now + TimeDelta::minutes(5), now)
            .await
            .expect("extend");
    })
    .await;
    assert_eq!(sent, (vec!["evalsha".to_owned()], 1), "extend");

    // The reserve gave the set its expiry: a settle is one command.
    let sent = calls_sent(&mut raw, async {
        store.settle(&reservation, 1, now).await.expect("settle");
    })
    .await;
    assert_eq!(sent, (settle_commands(reservation.id, false), 1), "settle");
    // One Redis did not reserve makes sure the set expires.
    let elsewhere = Reservation {
        id: Reservation::new_id(),
        keys_expire: false,
        ..reservation.clone()
    };
    let sent = calls_sent(&mut raw, async {
        store.settle(&elsewhere, 1, now).await.expect("settle");
    })
    .await;
    assert_eq!(
        sent,
        (settle_commands(elsewhere.id, true), 1),
        "settle, not reserved here"
    );

    let sent = calls_sent(&mut raw, async {
        store.usage("42", &w, now).await.expect("usage");
    })
    .await;
    assert_eq!(sent, (USAGE.map(String::from).to_vec(), 1), "usage");

    let sent = calls_sent(&mut raw, async {
        store
            .adjust("42", w.get(Period::Daily), 1, now)
            .await
            .expect("adjust");
    })
    .await;
    assert_eq!(sent, (vec!["evalsha".to_owned()], 1), "adjust");

    // A denial: the reserve, then the release of its unit.
    let sent = calls_sent(&mut raw, async {
        let denied = store
            .reserve(&request("42", limits(1, 0, 0), now, TTL))
            .await
            .expect("reserve");
        assert_eq!(denied, exceeded(Period::Daily, [3, 2, 2]));
    })
    .await;
    let both: Vec<String> = RESERVE
        .iter()
        .chain(&RELEASE)
        .map(|c| c.to_string())
        .collect();
    assert_eq!(sent, (both, 2), "denied reserve");
}

/// Connected clients of `raw`'s server (`CLIENT LIST`), `raw` included.
async fn clients(raw: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(raw)
        .await
        .expect("CLIENT LIST");
    list.lines().count()
}

/// Runs `work` on a thread of its own with a current-thread runtime, as
/// the binary's serving threads do.
fn on_serving_thread(
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work);
    })
}

/// Waits for `thread` off the calling runtime, which may be driving a
/// connection the thread uses.
async fn join(thread: std::thread::JoinHandle<()>) {
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("serving thread");
}

#[tokio::test]
async fn redis_per_thread_connections_are_opened_per_serving_thread_and_closed_with_the_store() {
    let server = RedisServer::start();
    let (store, mut raw) = redis_pair(&server).await;
    let store = std::sync::Arc::new(store.per_thread_connections());
    // The store's shared connection and `raw`.
    assert_eq!(clients(&mut raw).await, 2);

    // Two serving threads, each a current-thread runtime like the binary's,
    // reserving until their own connection carries the calls, then waiting
    // (their runtime, and so their connection, ends with them).
    let done = std::sync::Arc::new(std::sync::Barrier::new(3));
    let release = std::sync::Arc::new(std::sync::Barrier::new(3));
    let serving: Vec<_> = (0..2)
        .map(|thread| {
            let store = std::sync::Arc::clone(&store);
            let (done, release) = (done.clone(), release.clone());
            on_serving_thread(async move {
                for _ in 0..50 {
                    let user = format!("t{thread}");
                    let admission = store
                        .reserve(&request(&user, limits(0, 0, 0), at(NOW), TTL))
                        .await
                        .expect("reserve");
                    assert!(matches!(admission, Admission::Reserved { .. }));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                done.wait();
                release.wait();
            })
        })
        .collect();
    // Waited for off this runtime: it drives the shared connection.
    let wait = |barrier: std::sync::Arc<std::sync::Barrier>| {
        tokio::task::spawn_blocking(move || {
            barrier.wait();
        })
    };
    wait(done).await.expect("done");
    // One more connection per serving thread; all 100 reserves counted.
    assert_eq!(clients(&mut raw).await, 4);
    wait(release).await.expect("release");
    for thread in serving {
        join(thread).await;
    }
    for user in ["t0", "t1"] {
        let usage = store
            .usage(user, &windows(at(NOW)), at(NOW))
            .await
            .expect("usage");
        assert_eq!(usage[0].reserved, 50, "{user}");
    }

    // The threads ended, and their connections with their runtimes;
    // dropping the store closes its shared connection.
    drop(store);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while clients(&mut raw).await > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "connections left open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_per_thread_connections_recover_after_a_restart() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), PREFIX, COMMAND_TIMEOUT)
        .await
        .expect("connect");
    let store = std::sync::Arc::new(store.per_thread_connections());
    let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
    let (restarted, restarted_rx) = std::sync::mpsc::channel::<()>();
    let serving = {
        let store = std::sync::Arc::clone(&store);
        on_serving_thread(async move {
            let asked = request("r", limits(0, 0, 0), at(NOW), TTL);
            let reserve = || store.reserve(&asked);
            // Until this thread's own connection is open and carries calls.
            for _ in 0..20 {
                reserve().await.expect("reserve before the restart");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ready_tx.send(()).expect("ready");
            restarted_rx.recv().expect("restarted");
            // Its connection was cut; it must reconnect by itself.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                match reserve().await {
                    Ok(admission) => {
                        assert!(matches!(admission, Admission::Reserved { .. }));
                        return;
                    }
                    Err(e) => assert!(
                        tokio::time::Instant::now() < deadline,
                        "no reservation within 5 s of the restart: {e}"
                    ),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::task::spawn_blocking(move || ready.recv())
        .await
        .expect("wait")
        .expect("ready");
    server.restart();
    restarted.send(()).expect("restarted");
    join(serving).await;
}
