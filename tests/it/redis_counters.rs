//! A Redis period counter (`quota:{user}:<period>`) that something else
//! made of another type, or set to a text that is no integer, against a
//! settle of several images (`src/store/redis/settle_many.lua`): refused,
//! writing nothing, and counted once the key is fixed. Flaws an attack
//! session found in the first version of the units layout, kept as
//! regression tests. Each starts its own `redis-server`.

use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::reserve::{daily_request, utc_windows};
use chrono::{DateTime, Utc};
use quota_proxy::store::{Admission, QuotaStore, RedisStore, Reservation, StoreError};

const PREFIX: &str = "quota:";

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

async fn reserve(store: &RedisStore, user: &str) -> Reservation {
    let request = daily_request(user, 0, now(), Duration::from_secs(60));
    match store.reserve(&request).await.expect("reserve") {
        Admission::Reserved { reservation, .. } => reservation,
        other => panic!("expected a reservation, got {other:?}"),
    }
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
