//! Reserves and settles coalesced into one Redis call
//! (`src/store/redis/batch.rs`): those that wait while a call is under way
//! go out together, each reserve still checked against the limits as if
//! alone and each settle counted exactly once, and one that Redis refuses
//! fails alone (a settle of several images too, writing nothing: flaws an
//! attack session found in the first version of the units layout). Each
//! test starts its own `redis-server`; the store's calls are counted by
//! the reads Redis made (`INFO stats`).

use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::reserve::{daily_request, utc_windows};
use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use quota_proxy::store::{
    Admission, QuotaStore, RedisStore, Reservation, ReserveRequest, StoreError,
};

const PREFIX: &str = "quota:";
const USERS: usize = 50;
const SETTLES: usize = 200;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2031-05-14T10:00:00Z")
        .expect("test instant")
        .with_timezone(&Utc)
}

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), PREFIX, Duration::from_millis(500))
        .await
        .expect("connect")
}

fn request(user: &str, daily: u64) -> ReserveRequest {
    daily_request(user, daily, now(), Duration::from_secs(60))
}

async fn reserve(store: &RedisStore, user: &str) -> Reservation {
    match store.reserve(&request(user, 0)).await.expect("reserve") {
        Admission::Reserved { reservation, .. } => reservation,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

/// The reads Redis made since the last `CONFIG RESETSTAT`
/// (`total_reads_processed`), less the two of `redis-cli` (the end of the
/// one that reset, this `INFO`): a call written at once is one read while
/// it is under 16 KB (Redis reads at most that much at a time), a few
/// beyond.
fn reads(server: &RedisServer) -> u64 {
    let stats = server.cli(&["INFO", "stats"]);
    loadbench::redis_info::read_calls(&stats).round_trips - 2
}

async fn used_today(store: &RedisStore, user: &str) -> (u64, u64) {
    let [day, _, _] = store
        .usage(user, &utc_windows(now()), now())
        .await
        .expect("usage");
    (day.used, day.reserved)
}

// One thread, so the batches are exact: the first settle finds no call
// under way and goes out alone, at once; the 199 that queue meanwhile go
// out as 64, 64, 64 and 7.
#[tokio::test]
async fn settles_that_wait_go_out_in_one_call_each_counted_once() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let mut reservations = Vec::new();
    for i in 0..SETTLES {
        reservations.push(reserve(&store, &format!("u{}", i % USERS)).await);
    }
    server.cli(&["CONFIG", "RESETSTAT"]);

    let settled = join_all(reservations.iter().map(|r| store.settle(r, 1, now()))).await;
    assert!(settled.iter().all(Result::is_ok), "{settled:?}");
    // One settle alone, then 199 waiting settles in 4 calls of at most 64
    // (about 33 KB each: 3 reads); one by one they would be 200 reads.
    let reads = reads(&server);
    assert!(reads <= 13, "{reads} reads for 200 settles");
    for i in 0..USERS {
        assert_eq!(
            used_today(&store, &format!("u{i}")).await,
            (4, 0),
            "each of the user's 4 settles counted once, none left in flight"
        );
    }

    // The same settles again, as a retry after a lost answer would send
    // them: nothing counts twice.
    let again = join_all(reservations.iter().map(|r| store.settle(r, 1, now()))).await;
    assert!(again.iter().all(Result::is_ok), "{again:?}");
    assert_eq!(used_today(&store, "u0").await, (4, 0));
}

#[tokio::test]
async fn a_settle_redis_refuses_fails_alone_in_its_batch() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let good = reserve(&store, "good").await;
    let bad = reserve(&store, "bad").await;
    let other = reserve(&store, "other").await;
    // A key of the wrong type (in place of the user's set of units): the
    // settle's command on it fails.
    let broken = "quota:{bad}:units";
    server.cli(&["SET", broken, "not a sorted set"]);
    server.cli(&["CONFIG", "RESETSTAT"]);

    let answers = join_all([&good, &bad, &other].map(|r| store.settle(r, 1, now()))).await;
    assert_eq!(reads(&server), 2, "the first alone, then a batch of two");
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    let refused = answers[1].as_ref().expect_err("the bad settle fails");
    assert!(refused.to_string().contains("WRONGTYPE"), "{refused}");
    assert!(answers[2].is_ok(), "{:?}", answers[2]);
    assert_eq!(used_today(&store, "good").await, (1, 0));
    assert_eq!(used_today(&store, "other").await, (1, 0));
    // Once the key is fixed, the retry counts the unit in each period.
    server.cli(&["DEL", broken]);
    store.settle(&bad, 1, now()).await.expect("the retry");
    let usage = store
        .usage("bad", &utc_windows(now()), now())
        .await
        .expect("usage");
    assert_eq!(usage.map(|u| (u.used, u.reserved)), [(1, 0); 3]);
}

// A sender stopped mid-call (its runtime shut down while Redis hung) hands
// its turn back: a later settle is sent, not queued behind it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_stopped_mid_call_does_not_strand_later_settles() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let stranded = reserve(&store, "stopped").await;
    let later = reserve(&store, "later").await;

    server.pause();
    let on_other_runtime = store.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            tokio::spawn(async move { on_other_runtime.settle(&stranded, 1, now()).await });
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        // Dropped here, with the settle's call still waiting on Redis.
    })
    .join()
    .expect("the other runtime ends");
    server.resume();

    let settled = tokio::time::timeout(Duration::from_secs(5), store.settle(&later, 1, now()))
        .await
        .expect("a later settle is sent, not stranded");
    assert!(settled.is_ok(), "{settled:?}");
    assert_eq!(used_today(&store, "later").await, (1, 0));
}

// One thread: the first reserve goes out alone, the 199 that queue meanwhile
// in 4 calls; one user with a daily limit of 50 gets exactly 50 units, each
// answered with its own count, as if the reserves had come one by one.
#[tokio::test]
async fn reserves_that_wait_go_out_in_one_call_and_hold_no_unit_past_the_limit() {
    let server = RedisServer::start();
    let store = store(&server).await;
    server.cli(&["CONFIG", "RESETSTAT"]);

    let requests: Vec<ReserveRequest> = (0..SETTLES).map(|_| request("busy", 50)).collect();
    let answers = join_all(requests.iter().map(|r| store.reserve(r))).await;
    // One reserve alone, then 199 waiting reserves in 4 calls of at most
    // 64 (about 44 KB each: 3 reads), the denied ones' releases likewise.
    let reads = reads(&server);
    assert!(
        reads <= 26,
        "{reads} reads for 200 reserves and 150 releases"
    );
    let mut counts: Vec<u64> = Vec::new();
    let mut exceeded = 0;
    for answer in &answers {
        match answer.as_ref().expect("reserve") {
            Admission::Reserved { counts: c, .. } => counts.push(c.0[0]),
            Admission::Exceeded { counts: c, .. } => {
                // As if alone: the units of the batch's earlier denials,
                // not yet released, are left out.
                assert_eq!(c.0[0], 50, "denied at the limit");
                exceeded += 1;
            }
        }
    }
    assert_eq!(
        counts,
        (1..=50).collect::<Vec<u64>>(),
        "the first 50 reserved, in order"
    );
    assert_eq!(exceeded, SETTLES - 50);
    assert_eq!(used_today(&store, "busy").await, (0, 50), "50 units held");
}

#[tokio::test]
async fn a_reserve_redis_refuses_fails_alone_in_its_batch() {
    let server = RedisServer::start();
    let store = store(&server).await;
    // A key of the wrong type: the reserve's command on it fails.
    server.cli(&["SET", "quota:{bad}:units", "not a sorted set"]);
    server.cli(&["CONFIG", "RESETSTAT"]);

    let requests = [request("good", 0), request("bad", 0), request("other", 0)];
    let answers = join_all(requests.iter().map(|r| store.reserve(r))).await;
    assert_eq!(
        reads(&server),
        3,
        "the first alone, then a batch of two, then the release of the refused one's unit"
    );
    let refused = answers[1].as_ref().expect_err("the bad reserve fails");
    assert!(refused.to_string().contains("WRONGTYPE"), "{refused}");
    for (user, answer) in [("good", &answers[0]), ("other", &answers[2])] {
        assert!(
            matches!(answer, Ok(Admission::Reserved { .. })),
            "{user}: {answer:?}"
        );
        assert_eq!(used_today(&store, user).await, (0, 1), "{user}");
    }
}

// A Redis that hangs: reserves queued behind the hung call give up within
// `command_timeout` as a lone call does, not one timeout per batch ahead of
// them (200 reserves are 4 batches behind the first call: 1.5 s in all).
#[tokio::test]
async fn reserves_queued_behind_a_hung_call_wait_one_command_timeout() {
    let server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let store = RedisStore::connect(&server.url(), PREFIX, timeout)
        .await
        .expect("connect");
    reserve(&store, "warm").await;

    server.pause();
    let started = std::time::Instant::now();
    let requests: Vec<ReserveRequest> =
        (0..SETTLES).map(|i| request(&format!("u{i}"), 0)).collect();
    let answers = join_all(requests.iter().map(|r| store.reserve(r))).await;
    let waited = started.elapsed();
    server.resume();

    for answer in &answers {
        assert!(
            matches!(answer, Err(StoreError::Timeout(t)) if *t == timeout),
            "{answer:?}"
        );
    }
    assert!(
        waited < Duration::from_secs(1),
        "every reserve answered within about one command_timeout (300 ms), not {waited:?}"
    );
}

// A reserve whose caller stopped waiting (the client went away) before its
// batch went out is not sent: nobody would settle its reservation, which
// would hold one of the user's units until it expired.
#[tokio::test]
async fn a_reserve_given_up_before_its_batch_went_out_is_not_sent() {
    let server = RedisServer::start();
    let store = store(&server).await;
    reserve(&store, "warm").await;

    server.pause();
    let (first_request, gone_request) = (request("first", 0), request("gone", 0));
    let mut first = std::pin::pin!(store.reserve(&first_request));
    // Polled once: sent alone, it waits on the paused server.
    assert!(futures_util::poll!(first.as_mut()).is_pending());
    {
        let mut gone = std::pin::pin!(store.reserve(&gone_request));
        assert!(futures_util::poll!(gone.as_mut()).is_pending(), "queued");
    }
    server.resume();
    assert!(matches!(first.await, Ok(Admission::Reserved { .. })));
    // One more call on the same connection: anything sent before it has
    // been run by then.
    reserve(&store, "after").await;
    assert_eq!(used_today(&store, "gone").await, (0, 0), "nothing held");
    assert_eq!(used_today(&store, "first").await, (0, 1));
}

// The caller whose reserve went out alone stops waiting mid-call (its client
// went away): the reserves queued behind it are still sent and answered.
#[tokio::test]
async fn a_caller_gone_mid_call_takes_no_other_answer_with_it() {
    let server = RedisServer::start();
    let store = store(&server).await;
    reserve(&store, "warm").await;

    server.pause();
    let gone_request = request("gone", 0);
    let mut gone = Box::pin(store.reserve(&gone_request));
    assert!(
        futures_util::poll!(gone.as_mut()).is_pending(),
        "sent alone"
    );
    let queued = tokio::spawn({
        let store = store.clone();
        async move { store.reserve(&request("queued", 0)).await }
    });
    tokio::task::yield_now().await;
    drop(gone);
    server.resume();

    let answer = queued.await.expect("the queued reserve's task");
    assert!(
        matches!(answer, Ok(Admission::Reserved { .. })),
        "{answer:?}"
    );
    assert_eq!(used_today(&store, "queued").await, (0, 1));
}

/// A settle of more than one image (`settle_many.lua`) whose counter key
/// is of another type (left by something else sharing the database) is
/// refused, writing nothing, and counted once when the key is fixed, as
/// docs/redis.md (*A command Redis refuses*) says. The first version took
/// any error of `INCRBY` for an overflow and set the counter to
/// 9223372036854775807: the user blocked for the rest of the period, the
/// settle answering success.
#[tokio::test]
async fn a_settle_of_several_images_on_a_counter_of_another_type_is_refused_then_counted() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let r = reserve(&store, "bad").await;
    // Someone else's list where the day's counter goes.
    let counter = "quota:{bad}:d2031-05-14";
    server.cli(&["RPUSH", counter, "someone else's"]);

    let settled = store.settle(&r, 3, now()).await;
    let left = server.cli(&["TYPE", counter]);
    let value = server.cli(&["GET", counter]);
    let usage = store.usage("bad", &utc_windows(now()), now()).await;
    assert!(
        matches!(settled, Err(StoreError::Refused(_))),
        "a settle on a key of the wrong type must be refused (and retried once \
         it is fixed); it answered {settled:?}, the key is now a {} holding {}, \
         and the user's usage reads {:?}",
        left.trim(),
        value.trim(),
        usage.map(|u| u.map(|p| p.used)),
    );
    // Nothing was written: once the key is fixed, the retry counts the
    // three images once, in every period.
    server.cli(&["DEL", counter]);
    store.settle(&r, 3, now()).await.expect("the retry");
    store.settle(&r, 3, now()).await.expect("a repeat");
    let usage = store
        .usage("bad", &utc_windows(now()), now())
        .await
        .expect("usage");
    assert_eq!(usage.map(|u| (u.used, u.reserved)), [(3, 0); 3]);
}

/// The same with a counter that holds no integer, which the reserve
/// refuses too (`count_field`): the first version's settle of several
/// images replaced it with 9223372036854775807 and answered success.
#[tokio::test]
async fn a_settle_of_several_images_on_a_counter_that_is_no_integer_is_refused() {
    let server = RedisServer::start();
    let store = store(&server).await;
    let r = reserve(&store, "odd").await;
    let counter = "quota:{odd}:w2031-05-12";
    server.cli(&["SET", counter, "x"]);
    // The reserve refuses this user while the counter is broken…
    let request = daily_request("odd", 0, now(), Duration::from_secs(60));
    assert!(
        matches!(store.reserve(&request).await, Err(StoreError::Refused(_))),
        "the reserve refuses a counter that is no integer"
    );
    // …and so does the settle of several images, leaving it as it was.
    let settled = store.settle(&r, 2, now()).await;
    let value = server.cli(&["GET", counter]);
    assert!(
        matches!(settled, Err(StoreError::Refused(_))) && value.trim() == "x",
        "the settle answered {settled:?} and left the week's counter at {}",
        value.trim()
    );
}
