//! The Redis store alone (phases: admit and settle): its keys and their
//! TTLs, its scripts, and how it fails while Redis is down. The contract
//! both stores keep is in `store.rs`, whose helpers these tests share; its
//! round trips and per-thread connections are in
//! `store_redis_connections.rs`. Each test starts its own `redis-server`
//! on a free loopback port.

use std::time::{Duration, Instant};

use chrono::TimeDelta;
use quota_proxy::periods::Period;
use quota_proxy::store::{
    Admission, QuotaStore, RedisStore, Reservation, ReservationId, StoreError,
};

use crate::store::{COMMAND_TIMEOUT, NOW, PREFIX, TTL, at, exceeded, limits, request, windows};
use crate::support::redis::RedisServer;

/// The Redis store and a plain connection to the same server.
pub(crate) async fn redis_pair(
    server: &RedisServer,
) -> (RedisStore, redis::aio::MultiplexedConnection) {
    let store = RedisStore::connect(&server.url(), PREFIX, COMMAND_TIMEOUT)
        .await
        .expect("connect");
    let raw = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    (store, raw)
}

async fn pttl(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(raw)
        .await
        .expect("PTTL")
}

/// Asserts a TTL set a moment ago (in real time) to `expected`.
fn assert_ttl(key: &str, actual: i64, expected: TimeDelta) {
    let expected = expected.num_milliseconds();
    assert!(
        actual <= expected && actual > expected - 5_000,
        "PTTL {key} = {actual} ms, expected about {expected} ms"
    );
}

#[tokio::test]
async fn redis_units_expire_at_period_end_plus_grace() {
    let server = RedisServer::start();
    let (store, mut raw) = redis_pair(&server).await;
    let now = at(NOW);
    let r = match store
        .reserve(&request("42", limits(0, 0, 0), now, TTL))
        .await
        .expect("reserve")
    {
        Admission::Reserved { reservation, .. } => reservation,
        other => panic!("expected a reservation, got {other:?}"),
    };
    // Live: the user's set holds the unit, scored 2^52 - its deadline (ms).
    let units = "quota:{42}:units";
    let score = |key: &'static str, raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        let id = r.id.to_string();
        async move {
            redis::cmd("ZSCORE")
                .arg(key)
                .arg(id)
                .query_async::<Option<String>>(&mut raw)
                .await
                .expect("ZSCORE")
        }
    };
    let live = ((now + TimeDelta::seconds(60)).timestamp_millis() - (1i64 << 52)).to_string();
    let grace = TimeDelta::hours(1);
    // The set lives as long as the last of its periods, the month, and
    // the grace; the reserve gave it its TTL, so a unit never settled goes
    // with it.
    let month_left = at("2031-06-01T00:00:00Z") - now + grace;
    assert_eq!(score(units, &mut raw).await.as_deref(), Some(live.as_str()));
    assert_ttl(units, pttl(&mut raw, units).await, month_left);
    // Counted: scored with minus the start of its day, inside all three
    // periods.
    store.settle(&r, 1, now).await.expect("settle");
    let day_start = (-at("2031-05-14T00:00:00Z").timestamp_millis()).to_string();
    assert_eq!(
        score(units, &mut raw).await.as_deref(),
        Some(day_start.as_str())
    );

    // A settle never shortens the TTL: neither one of a reservation Redis
    // made nor one of a reservation it did not (which makes sure the set
    // has a TTL at least as long as its periods need, from its own `now`).
    let later = now + TimeDelta::hours(2);
    for keys_expire in [true, false] {
        let again = Reservation {
            id: Reservation::new_id(),
            keys_expire,
            ..r.clone()
        };
        store.settle(&again, 1, later).await.expect("settle");
        assert_ttl(units, pttl(&mut raw, units).await, month_left);
    }

    // A settle after its period ended (a late settle, made where no set
    // is) gives the set made anew the TTL its periods still need.
    let late = at("2031-05-15T00:10:00Z");
    let late_units = "quota:{43}:units";
    let unflagged = Reservation {
        id: Reservation::new_id(),
        user: "43".to_owned(),
        keys_expire: true,
        ..r.clone()
    };
    store.settle(&unflagged, 1, late).await.expect("settle");
    assert_ttl(
        late_units,
        pttl(&mut raw, late_units).await,
        at("2031-06-01T00:00:00Z") - late + grace,
    );

    // adjust writes the period's counter, with the TTL from the `now` it
    // is given.
    let tomorrow = now + TimeDelta::days(1);
    let month_counter = "quota:{42}:m2031-05";
    store
        .adjust("42", windows(now).get(Period::Monthly), 1, tomorrow)
        .await
        .expect("adjust");
    assert_ttl(
        month_counter,
        pttl(&mut raw, month_counter).await,
        at("2031-06-01T00:00:00Z") - tomorrow + grace,
    );
}

#[tokio::test]
async fn redis_released_units_leave_no_key() {
    let server = RedisServer::start();
    let (store, mut raw) = redis_pair(&server).await;
    let now = at(NOW);
    let l = limits(0, 0, 0);
    let mut held = Vec::new();
    for ttl in [TTL, Duration::from_secs(600)] {
        match store.reserve(&request("42", l, now, ttl)).await {
            Ok(Admission::Reserved { reservation, .. }) => held.push(reservation),
            other => panic!("expected a reservation, got {other:?}"),
        }
    }
    // A denial's unit is removed before the denial is answered.
    let denied = store
        .reserve(&request("42", limits(2, 0, 0), now, TTL))
        .await
        .expect("reserve");
    assert_eq!(denied, exceeded(Period::Daily, [2, 2, 2]));
    let units: u64 = redis::cmd("ZCARD")
        .arg("quota:{42}:units")
        .query_async(&mut raw)
        .await
        .expect("ZCARD");
    assert_eq!(units, 2, "the two held, not the denied one");
    for reservation in &held {
        store.settle(reservation, 0, now).await.expect("release");
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("quota:{42}:*")
        .query_async(&mut raw)
        .await
        .expect("KEYS");
    assert!(keys.is_empty(), "{keys:?}");
}

/// Units that no longer count (counted before the periods of a settle's
/// reservation, or live no more) leave the user's set with one settle of
/// one unit in 8, chosen by id; until then they count in no period.
#[tokio::test]
async fn redis_units_that_no_longer_count_are_cleaned_away() {
    let server = RedisServer::start();
    let (store, mut raw) = redis_pair(&server).await;
    let may = at(NOW);
    let l = limits(0, 0, 0);
    // In May: one image counted, one reservation never settled.
    for settle in [true, false] {
        let Ok(Admission::Reserved { reservation, .. }) =
            store.reserve(&request("42", l, may, TTL)).await
        else {
            panic!("expected a reservation");
        };
        if settle {
            // A cleaning settle (by its id) finds nothing to clean yet.
            store.settle(&reservation, 1, may).await.expect("settle");
        }
    }
    let card = |raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        async move {
            redis::cmd("ZCARD")
                .arg("quota:{42}:units")
                .query_async::<u64>(&mut raw)
                .await
                .expect("ZCARD")
        }
    };
    assert_eq!(card(&mut raw).await, 2);
    // In June, neither counts; a settle whose id is not a multiple of 8
    // leaves them, one whose id is removes them.
    let june = at("2031-06-10T10:00:00Z");
    let usage = store
        .usage("42", &windows(june), june)
        .await
        .expect("usage");
    assert_eq!(usage.map(|u| (u.used, u.reserved)), [(0, 0); 3]);
    let settle_in_june = |id| Reservation {
        id: ReservationId(id),
        user: "42".to_owned(),
        windows: windows(june),
        expires_at: june + TimeDelta::minutes(1),
        keys_expire: true,
    };
    store
        .settle(&settle_in_june(9), 1, june)
        .await
        .expect("settle");
    assert_eq!(card(&mut raw).await, 3);
    store
        .settle(&settle_in_june(16), 1, june)
        .await
        .expect("settle");
    let left: Vec<String> = redis::cmd("ZRANGE")
        .arg("quota:{42}:units")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut raw)
        .await
        .expect("ZRANGE");
    assert_eq!(
        card(&mut raw).await,
        2,
        "June's two units are left: {left:?}"
    );
    let usage = store
        .usage("42", &windows(june), june)
        .await
        .expect("usage");
    assert_eq!(usage.map(|u| (u.used, u.reserved)), [(2, 0); 3]);
}

async fn script_flush(raw: &mut redis::aio::MultiplexedConnection) {
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .exec_async(raw)
        .await
        .expect("SCRIPT FLUSH");
}

#[tokio::test]
async fn redis_reloads_scripts_after_script_flush() {
    let server = RedisServer::start();
    let (store, mut raw) = redis_pair(&server).await;
    let now = at(NOW);

    script_flush(&mut raw).await;
    let admission = store
        .reserve(&request("42", limits(0, 0, 0), now, TTL))
        .await
        .expect("reserve after SCRIPT FLUSH");
    let Admission::Reserved { reservation, .. } = admission else {
        panic!("expected a reservation, got {admission:?}");
    };
    script_flush(&mut raw).await;
    store
        .settle(&reservation, 2, now)
        .await
        .expect("settle after SCRIPT FLUSH");
    script_flush(&mut raw).await;
    let usage = store
        .usage("42", &windows(now), now)
        .await
        .expect("usage after SCRIPT FLUSH");
    assert_eq!(usage.map(|u| u.used), [2, 2, 2]);
}

#[tokio::test]
async fn redis_connect_fails_fast_when_redis_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("redis://:secret@127.0.0.1:{port}/0");
    let started = Instant::now();
    let err = RedisStore::connect(&url, PREFIX, COMMAND_TIMEOUT)
        .await
        .expect_err("nothing listens there");
    assert!(started.elapsed() < COMMAND_TIMEOUT * 3 + Duration::from_millis(500));
    let StoreError::Unavailable(message) = err else {
        panic!("expected Unavailable, got {err:?}");
    };
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains("secret"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fails_fast_while_down_and_recovers_after_restart() {
    let mut server = RedisServer::start();
    let timeout = Duration::from_millis(300);
    let store = RedisStore::connect(&server.url(), PREFIX, timeout)
        .await
        .expect("connect");
    let now = at(NOW);
    let l = limits(0, 0, 0);
    store
        .reserve(&request("42", l, now, TTL))
        .await
        .expect("reserve");

    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let err = store
            .reserve(&request("42", l, now, TTL))
            .await
            .expect_err("redis is down");
        assert!(
            started.elapsed() < timeout + Duration::from_millis(500),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            matches!(err, StoreError::Unavailable(_) | StoreError::Timeout(_)),
            "{err:?}"
        );
    }

    server.restart();
    let mut recovered = None;
    for attempt in 0..30 {
        match store.reserve(&request("42", l, now, TTL)).await {
            Ok(admission) => {
                recovered = Some((attempt, admission));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let Some((attempt, Admission::Reserved { reservation, .. })) = recovered else {
        panic!("no reservation within 3 s of the restart: {recovered:?}");
    };
    assert!(attempt <= 2, "recovered only after {attempt} failed calls");
    store.settle(&reservation, 1, now).await.expect("settle");
}
