//! Tests of the memory store's bounds beyond the shared contract suite:
//! sweeping, eviction, settled ids and long user ids.

use chrono::Weekday;

use super::*;
use crate::config::Limits;
use crate::periods::Calendar;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

fn windows(now: DateTime<Utc>) -> PeriodWindows {
    Calendar::new(chrono_tz::UTC, Weekday::Mon).windows(now)
}

fn request(user: &str, now: DateTime<Utc>) -> ReserveRequest {
    ReserveRequest {
        user: user.to_owned(),
        limits: Limits::default(),
        windows: windows(now),
        now,
        ttl: Duration::from_secs(60),
    }
}

async fn reserve(store: &MemoryStore, user: &str, now: DateTime<Utc>) -> Reservation {
    match store.reserve(&request(user, now)).await.expect("reserve") {
        Admission::Reserved { reservation, .. } => reservation,
        other => panic!("expected a reservation, got {other:?}"),
    }
}

#[tokio::test]
async fn a_user_with_nothing_left_is_removed() {
    let store = MemoryStore::new(10);
    let now = at("2031-05-14T10:00:00Z");
    let r = reserve(&store, "a", now).await;
    assert_eq!(store.user_count(), 1);
    // Expired reservation, nothing settled: touching the user drops it.
    let later = now + TimeDelta::seconds(61);
    store
        .usage("a", &windows(later), later)
        .await
        .expect("usage");
    assert_eq!(store.user_count(), 0);

    store.settle(&r, 1, later).await.expect("settle");
    assert_eq!(store.user_count(), 1);
    // Past the month's end + grace and the settle memory, nothing is left.
    let next_year = at("2032-05-14T10:00:00Z");
    store
        .usage("a", &windows(next_year), next_year)
        .await
        .expect("usage");
    assert_eq!(store.user_count(), 0);
}

#[tokio::test]
async fn counters_of_ended_periods_are_dropped_on_access() {
    let store = MemoryStore::new(10);
    let now = at("2031-05-14T10:00:00Z");
    let w = windows(now);
    store
        .adjust("a", w.get(Period::Daily), 5, now)
        .await
        .expect("adjust");
    store
        .adjust("a", w.get(Period::Monthly), 5, now)
        .await
        .expect("adjust");
    let next_day = at("2031-05-15T01:00:00Z");
    store
        .usage("a", &windows(next_day), next_day)
        .await
        .expect("usage");
    let shard = store.shard("a");
    let labels: Vec<_> = shard.users["a"]
        .counters
        .iter()
        .map(|c| c.label.to_string())
        .collect();
    assert_eq!(labels, ["m2031-05"]);
}

#[tokio::test]
async fn idle_users_are_swept_by_calls_of_others() {
    let store = MemoryStore::new(100);
    let now = at("2031-05-14T10:00:00Z");
    for i in 0..40 {
        reserve(&store, &format!("user{i}"), now).await;
    }
    assert_eq!(store.user_count(), 40);
    // Every shard is touched by some later call once its sweep is due.
    let later = now + TimeDelta::minutes(5);
    for i in 0..2000 {
        let user = format!("other{i}");
        store
            .usage(&user, &windows(later), later)
            .await
            .expect("usage");
    }
    assert_eq!(store.user_count(), 0);
}

#[tokio::test]
async fn full_store_sweeps_at_most_once_per_interval() {
    let store = MemoryStore::new(2);
    let now = at("2031-05-14T10:00:00Z");
    let short = |user: &str, now| ReserveRequest {
        ttl: Duration::from_secs(10),
        ..request(user, now)
    };
    for user in ["a", "b"] {
        store.reserve(&short(user, now)).await.expect("reserve");
    }
    let full = store.reserve(&request("c", now)).await;
    assert!(matches!(full, Err(StoreError::Full(2))), "{full:?}");
    // a's and b's reservations have expired, but the store was swept a
    // moment ago: a flood of new users must not sweep on every call.
    let soon = now + TimeDelta::seconds(20);
    let full = store.reserve(&request("c", soon)).await;
    assert!(matches!(full, Err(StoreError::Full(2))), "{full:?}");
    // Past the interval c gets in (`reserve` fails the test otherwise):
    // through a full sweep, or through its own shard's sweep when a or b
    // shares that shard (the hasher is keyed at random), which frees a
    // slot without a full sweep.
    let later = now + SWEEP_INTERVAL;
    reserve(&store, "c", later).await;
    assert!(store.user_count() <= 2);
}

#[tokio::test]
async fn settled_ids_are_bounded_per_user() {
    let store = MemoryStore::new(10);
    let now = at("2031-05-14T10:00:00Z");
    let first = reserve(&store, "a", now).await;
    store.settle(&first, 0, now).await.expect("settle");
    for _ in 0..SETTLED_MAX {
        let r = reserve(&store, "a", now).await;
        store.settle(&r, 0, now).await.expect("settle");
    }
    let shard = store.shard("a");
    let state = &shard.users["a"];
    assert_eq!(state.settled.len(), SETTLED_MAX);
    assert!(!state.settled.contains(&first.id));
}

#[tokio::test]
async fn a_full_store_evicts_users_whose_periods_ended_before_refusing() {
    let store = MemoryStore::new(2);
    let day = at("2031-05-14T10:00:00Z");
    // a was released (no image): only its settled id is left, for 24 h.
    let a = reserve(&store, "a", day).await;
    store.settle(&a, 0, day).await.expect("settle");
    // b saved an image: its counters run to the end of the month.
    let b = reserve(&store, "b", day).await;
    store.settle(&b, 1, day).await.expect("settle");
    assert_eq!(store.user_count(), 2);
    let soon = day + TimeDelta::minutes(2);
    reserve(&store, "c", soon).await;
    assert_eq!(store.user_count(), 2);
    let usage = store.usage("b", &windows(soon), soon).await.expect("usage");
    assert_eq!(usage[0].used, 1, "b still counts");
    // b and c (its reservation live) both count: a new user is refused.
    let later = soon + TimeDelta::seconds(30);
    let full = store.reserve(&request("d", later)).await;
    assert!(matches!(full, Err(StoreError::Full(2))), "{full:?}");
}

#[tokio::test]
async fn long_user_ids_are_kept_as_digests() {
    let store = MemoryStore::new(10);
    let now = at("2031-05-14T10:00:00Z");
    let long = "x".repeat(10_000);
    let r = reserve(&store, &long, now).await;
    store.settle(&r, 1, now).await.expect("settle");
    let usage = store.usage(&long, &windows(now), now).await.expect("usage");
    assert_eq!(usage[0].used, 1);
    let key = user_key(&long);
    assert!(
        key.len() <= MAX_KEY_BYTES && key.starts_with("sha256:"),
        "{key}"
    );
    assert!(store.shard(&key).users.contains_key(&*key));
    assert_eq!(user_key("42"), "42");
}

#[tokio::test]
async fn a_counter_written_with_a_later_end_lives_past_that_end() {
    // The same period written again with a later end (a reload that moved
    // the time zone) must keep its counter until that end and its grace,
    // not only the first end's: a write skips the expiry's arithmetic only
    // when it could not push it further.
    let store = MemoryStore::new(10);
    let now = at("2031-05-14T10:00:00Z");
    let first = windows(now);
    let r = reserve(&store, "a", now).await;
    store.settle(&r, 1, now).await.expect("settle");
    let mut moved = first;
    for window in moved.0.iter_mut() {
        window.end += TimeDelta::hours(5);
    }
    let unreserved = Reservation {
        id: Reservation::new_id(),
        user: "a".to_owned(),
        windows: moved,
        expires_at: now,
        keys_expire: false,
    };
    store.settle(&unreserved, 1, now).await.expect("settle");
    // Past the first day's end and grace, within the moved one's.
    let check = first.0[0].end + COUNTER_GRACE + TimeDelta::hours(2);
    let usage = store.usage("a", &moved, check).await.expect("usage");
    assert_eq!(usage[0].used, 2);
}
