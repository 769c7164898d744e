//! Findings of an attack session on the one-set-of-units layout (change
//! 41, `src/store/redis/{reserve,settle,commands}.rs`): each test failed on
//! the commit it was found on (36cc68b). Each starts its own
//! `redis-server`; the memory store is the reference where the contract is
//! shared.

use std::time::Duration;

use crate::support::redis::{RedisServer, units_key};
use crate::support::reserve::{daily_request, utc_windows};
use chrono::{DateTime, TimeDelta, Utc};
use quota_proxy::periods::Period;
use quota_proxy::store::{
    Admission, MemoryStore, PeriodCounts, QuotaStore, RedisStore, Reservation, ReservationId,
};

const PREFIX: &str = "quota:";
const TTL: Duration = Duration::from_secs(60);

/// A Wednesday, on a whole second (its milliseconds are 0).
fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2031-05-14T10:00:00Z")
        .expect("test instant")
        .with_timezone(&Utc)
}

async fn redis_store(server: &RedisServer) -> RedisStore {
    RedisStore::connect(&server.url(), PREFIX, Duration::from_millis(500))
        .await
        .expect("connect")
}

async fn hold(store: &dyn QuotaStore, user: &str, daily: u64, ttl: Duration) -> Reservation {
    match store
        .reserve(&daily_request(user, daily, now(), ttl))
        .await
        .expect("reserve")
    {
        Admission::Reserved { reservation, .. } => reservation,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

fn pttl(server: &RedisServer, key: &str) -> i64 {
    server
        .cli(&["PTTL", key])
        .trim()
        .parse()
        .expect("PTTL answers a number")
}

// ---------------------------------------------------------------------------
// A deadline in the same millisecond as `now`.

/// A user at a daily limit of 1 asks again, with a reservation TTL under a
/// millisecond (`reservation_ttl = "500us"` is accepted by the config: it
/// is a `NonZeroDuration`). The memory store counts the reserve's own unit
/// and denies. Redis scores the unit `deadline_ms - 2^52`, and with the
/// deadline in `now`'s millisecond that is exactly the exclusive bound of
/// the check's `ZCOUNT` (`(now_ms - 2^52`): the check does not count its
/// own unit, sees 1 for a limit of 1 and admits a second image.
async fn a_reserve_whose_deadline_is_in_its_own_millisecond_counts_itself(store: &dyn QuotaStore) {
    let first = hold(store, "alice", 1, TTL).await;
    store.settle(&first, 1, now()).await.expect("settle");
    let answer = store
        .reserve(&daily_request(
            "alice",
            1,
            now(),
            Duration::from_micros(500),
        ))
        .await
        .expect("reserve");
    assert_eq!(
        answer,
        Admission::Exceeded {
            period: Period::Daily,
            counts: PeriodCounts([1, 1, 1]),
        },
        "a second image for a daily limit of 1"
    );
}

#[tokio::test]
async fn memory_reserve_whose_deadline_is_in_its_own_millisecond_counts_itself() {
    a_reserve_whose_deadline_is_in_its_own_millisecond_counts_itself(&MemoryStore::new(10)).await;
}

#[tokio::test]
async fn redis_reserve_whose_deadline_is_in_its_own_millisecond_counts_itself() {
    let server = RedisServer::start();
    let store = redis_store(&server).await;
    a_reserve_whose_deadline_is_in_its_own_millisecond_counts_itself(&store).await;
}

// ---------------------------------------------------------------------------
// A settle that finds no set before its reservation's deadline.

/// A settle of a reservation Redis made, before its deadline, sends only
/// `ZADD` (`expire` is false: "the reserve gave the set its expiry"). If
/// the set is gone meanwhile, that `ZADD` makes it anew with no TTL: a key
/// that never expires (until the user's next check). Here Redis restarts
/// without persistence between the reserve and the settle (as a crash
/// under `appendfsync everysec` loses its last second, or a failover its
/// last writes).
#[tokio::test]
async fn redis_settle_after_redis_lost_the_reserve_leaves_a_set_that_expires() {
    let mut server = RedisServer::start();
    let store = redis_store(&server).await;
    let r = hold(&store, "42", 0, TTL).await;
    server.restart();
    let soon = now() + TimeDelta::seconds(1);
    assert!(soon < r.expires_at);
    store.settle(&r, 1, soon).await.expect("settle");
    let usage = store
        .usage("42", &utc_windows(soon), soon)
        .await
        .expect("usage");
    assert_eq!(usage.map(|u| u.used), [1, 1, 1], "the image counts");
    let ttl = pttl(&server, &units_key("42"));
    assert!(
        ttl > 0,
        "quota:{{42}}:units has PTTL {ttl}: it never expires"
    );
}

/// The same through the documented repair of a refused settle
/// (docs/redis.md: a key of the wrong type refuses the settle, which waits
/// in the queue "until the key is fixed (`DEL` it), then counts its images
/// once"): the retry, before the reservation's deadline, makes the set
/// anew with no TTL.
#[tokio::test]
async fn redis_settle_retried_after_a_refused_key_is_deleted_leaves_a_set_that_expires() {
    let server = RedisServer::start();
    let store = redis_store(&server).await;
    let r = hold(&store, "bad", 0, TTL).await;
    let broken = units_key("bad");
    server.cli(&["SET", &broken, "not a sorted set"]);
    let refused = store.settle(&r, 1, now()).await;
    assert!(refused.is_err(), "{refused:?}");
    server.cli(&["DEL", &broken]);
    let retry = now() + TimeDelta::seconds(2);
    store.settle(&r, 1, retry).await.expect("the retry");
    let ttl = pttl(&server, &broken);
    assert!(ttl > 0, "{broken} has PTTL {ttl}: it never expires");
}

// ---------------------------------------------------------------------------
// Units that no longer count, for users who make several images a request.

/// docs/redis.md: "Units that no longer count (counted before the current
/// week and month, or expired) are removed by one settle in 8". Only a
/// settle of exactly one image cleans (`PendingSettle::cleans_up`); a user
/// whose requests each save 2 or more images (`settle_many.lua`) never
/// triggers it, and since every check pushes the set's TTL on, the set of
/// an active user grows by one unit per request for ever (about 140 B a
/// unit past 128).
#[tokio::test]
async fn redis_units_of_several_image_settles_are_cleaned_away() {
    let server = RedisServer::start();
    let store = redis_store(&server).await;
    let settle = |id: u128, when: DateTime<Utc>| {
        let store = store.clone();
        async move {
            let r = Reservation {
                id: ReservationId(id),
                user: "42".to_owned(),
                windows: utc_windows(when),
                expires_at: when + TimeDelta::minutes(1),
                keys_expire: false,
            };
            store.settle(&r, 2, when).await.expect("settle");
        }
    };
    // In May, 4 requests of 2 images each.
    let may = now();
    for id in 1..=4 {
        settle(8 * id, may).await;
    }
    // In July, 16 more: ids that are multiples of 8, each one a cleaning
    // settle had it saved a single image.
    let july = may + TimeDelta::days(61);
    for id in 5..=20 {
        settle(8 * id, july).await;
    }
    let usage = store
        .usage("42", &utc_windows(july), july)
        .await
        .expect("usage");
    assert_eq!(usage.map(|u| u.used), [32, 32, 32]);
    let card: u64 = server
        .cli(&["ZCARD", &units_key("42")])
        .trim()
        .parse()
        .expect("ZCARD");
    assert_eq!(
        card, 16,
        "May's 4 units, which count in no period, are left"
    );
}
