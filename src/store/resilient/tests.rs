//! The resilient store against a memory store that can be switched off,
//! standing in for Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc, Weekday};
use tokio::time::Instant;

use super::{OutagePolicy, ResilientSettings, ResilientStore};
use crate::config::Limits;
use crate::periods::{Calendar, PeriodWindow, PeriodWindows};
use crate::store::{
    Admission, BreakerSettings, MemoryStore, PeriodUsage, QuotaStore, Reservation, ReserveRequest,
    StoreError,
};

/// A memory store that can be switched off, standing in for Redis.
struct Switchable {
    store: MemoryStore,
    down: AtomicBool,
    settles: AtomicUsize,
}

impl Switchable {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            store: MemoryStore::new(100),
            down: AtomicBool::new(false),
            settles: AtomicUsize::new(0),
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("switched off".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl QuotaStore for Switchable {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
        self.check()?;
        self.store.reserve(request).await
    }
    async fn settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.settles.fetch_add(1, Ordering::SeqCst);
        self.store.settle(reservation, amount, now).await
    }
    async fn extend(
        &self,
        reservation: &Reservation,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.store.extend(reservation, until, now).await
    }
    async fn usage(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> Result<[PeriodUsage; 3], StoreError> {
        self.check()?;
        self.store.usage(user, windows, now).await
    }
    async fn adjust(
        &self,
        user: &str,
        window: &PeriodWindow,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.check()?;
        self.store.adjust(user, window, delta, now).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2031-05-14T10:00:00Z")
        .expect("test instant")
        .with_timezone(&Utc)
}

/// A reserve request for `user` with daily limit `daily` (weekly and
/// monthly 0), at [`now`].
pub(super) fn request(user: &str, daily: u64) -> ReserveRequest {
    ReserveRequest {
        user: user.to_owned(),
        limits: Limits {
            daily,
            weekly: 0,
            monthly: 0,
        },
        windows: Calendar::new(chrono_tz::UTC, Weekday::Mon).windows(now()),
        now: now(),
        ttl: Duration::from_secs(60),
    }
}

fn settings(outage: OutagePolicy, settle_queue: usize) -> ResilientSettings {
    ResilientSettings {
        breaker: BreakerSettings {
            failures: 2,
            open_for: Duration::from_secs(1),
        },
        settle_queue,
        outage,
        local_max_users: 100,
    }
}

async fn reserved(store: &ResilientStore, user: &str, daily: u64) -> Option<Reservation> {
    match store.reserve(&request(user, daily)).await.expect("reserve") {
        Admission::Reserved { reservation, .. } => Some(reservation),
        Admission::Exceeded { .. } => None,
    }
}

async fn used(redis: &Switchable, user: &str) -> u64 {
    redis
        .store
        .usage(user, &request(user, 0).windows, now())
        .await
        .expect("usage")[0]
        .used
}

#[tokio::test(start_paused = true)]
async fn settles_wait_in_the_queue_and_land_once() {
    let redis = Switchable::new();
    let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 100));
    let r = reserved(&store, "alice", 0).await.expect("reserved");
    redis.set_down(true);
    store.settle(&r, 2, now()).await.expect("queued");
    store.settle(&r, 2, now()).await.expect("queued");
    assert_eq!(store.pending_settles(), 2);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.pending_settles(), 2, "nothing lands while down");
    redis.set_down(false);
    let left = store.flush(Instant::now() + Duration::from_secs(10)).await;
    assert_eq!(left, 0);
    assert_eq!(used(&redis, "alice").await, 2, "the same id counts once");
    assert_eq!(store.dropped_settles(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_and_counts() {
    let redis = Switchable::new();
    let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 1));
    let r = reserved(&store, "alice", 0).await.expect("reserved");
    let other = reserved(&store, "alice", 0).await.expect("reserved");
    redis.set_down(true);
    store.settle(&r, 1, now()).await.expect("queued");
    store
        .settle(&other, 1, now())
        .await
        .expect_err("no room left");
    assert_eq!((store.pending_settles(), store.dropped_settles()), (1, 1));
    // A flush that runs out of time gives up on what is queued.
    let left = store.flush(Instant::now() + Duration::from_secs(1)).await;
    assert_eq!(left, 1);
    assert_eq!((store.pending_settles(), store.dropped_settles()), (0, 2));
}

#[tokio::test(start_paused = true)]
async fn the_breaker_stops_calls_and_closes_when_redis_is_back() {
    let redis = Switchable::new();
    let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 100));
    redis.set_down(true);
    for _ in 0..2 {
        store.reserve(&request("alice", 5)).await.expect_err("down");
    }
    redis.set_down(false);
    let err = store
        .reserve(&request("alice", 5))
        .await
        .expect_err("breaker open");
    assert!(err.to_string().contains("circuit breaker"), "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(reserved(&store, "alice", 5).await.is_some(), "the probe");
    assert!(reserved(&store, "alice", 5).await.is_some(), "closed again");
}

#[tokio::test(start_paused = true)]
async fn local_policy_starts_from_what_redis_said_and_hands_over() {
    let redis = Switchable::new();
    let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Local, 100));
    // Redis says alice has used 3 of 5.
    for _ in 0..3 {
        let r = reserved(&store, "alice", 5).await.expect("reserved");
        store.settle(&r, 1, now()).await.expect("settle");
    }
    let last = reserved(&store, "alice", 5).await.expect("the fourth");
    store.settle(&last, 0, now()).await.expect("release");
    redis.set_down(true);
    // The last answer counted 4 (3 used + the fourth in flight), so one
    // more unit is left locally.
    let local = reserved(&store, "alice", 5).await.expect("local room");
    assert!(store.is_local());
    assert!(reserved(&store, "alice", 5).await.is_none(), "bounded");
    // Bob was never seen: a full limit from zero.
    for _ in 0..2 {
        reserved(&store, "bob", 2).await.expect("bob's room");
    }
    assert!(reserved(&store, "bob", 2).await.is_none());
    store.settle(&local, 1, now()).await.expect("queued");
    redis.set_down(false);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        store.flush(Instant::now() + Duration::from_secs(5)).await,
        0
    );
    assert_eq!(
        used(&redis, "alice").await,
        4,
        "the local unit reached redis"
    );
    let r = reserved(&store, "alice", 5)
        .await
        .expect("redis has room for one");
    assert!(!store.is_local(), "redis answered: the outage is over");
    store.settle(&r, 1, now()).await.expect("settle");
    assert!(reserved(&store, "alice", 5).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn health_follows_the_last_call_without_calling() {
    let redis = Switchable::new();
    let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 100));
    assert!(store.health().up);
    redis.set_down(true);
    store.ping().await.expect_err("down");
    let health = store.health();
    assert!(!health.up && !health.breaker_open, "{health:?}");
    assert!(
        health
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("switched off")),
        "{health:?}"
    );
    store.ping().await.expect_err("down");
    assert!(store.health().breaker_open, "two failures open it");
    redis.set_down(false);
    store.ping().await.expect("up again");
    let health = store.health();
    assert!(health.up && !health.breaker_open && health.last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn fail_policy_returns_the_error() {
    let redis = Switchable::new();
    let store = ResilientStore::new(redis.clone(), settings(OutagePolicy::Fail, 100));
    redis.set_down(true);
    let err = store.reserve(&request("alice", 5)).await.expect_err("down");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(!store.is_local());
}
