//! The quota stores' contract (phases: admit and settle), one suite run
//! against the memory store and against a real Redis in every topology: one
//! server (each test starts its own `redis-server` on a free loopback port),
//! a 3-master Redis Cluster and a master with a replica behind Sentinel (one
//! set-up each, shared by the suite's tests, each test under its own key
//! prefix). Time is always passed in, years from today, so no test sleeps
//! across a period boundary. The suite's steps on a reservation's life
//! after admission (settle, release, expiry, extend) are in
//! `store_settle.rs`.

use std::sync::Arc;
use std::time::Duration;

// The steps of the suite that follow a reservation's life after admission.
use crate::store_settle::{
    expired_reservation_stops_counting, extend_keeps_reservation_past_its_deadline,
    extend_of_gone_reservation_does_nothing, release_frees_the_unit,
    settle_adds_to_all_three_windows, settle_after_expiry_counts_once,
    settle_counts_in_the_windows_reserved_in, settle_of_unreserved_id_counts_once,
    settle_twice_counts_once,
};
use crate::support::redis::{RedisCluster, RedisSentinel, RedisServer};
use chrono::{DateTime, TimeDelta, Utc, Weekday};
use quota_proxy::config::Limits;
use quota_proxy::periods::{Calendar, Period, PeriodWindows};
use quota_proxy::store::{
    Admission, MemoryStore, PeriodCounts, PeriodUsage, QuotaStore, RedisOptions, RedisStore,
    Reservation, ReserveRequest, StoreError, Topology,
};

/// How long reservations live unless a test says otherwise.
pub(crate) const TTL: Duration = Duration::from_secs(60);
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
pub(crate) const PREFIX: &str = "quota:";

/// A Wednesday; its week started Monday 2031-05-12.
pub(crate) const NOW: &str = "2031-05-14T10:00:00Z";

pub(crate) fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

pub(crate) fn windows(now: DateTime<Utc>) -> PeriodWindows {
    Calendar::new(chrono_tz::UTC, Weekday::Mon).windows(now)
}

pub(crate) fn limits(daily: u64, weekly: u64, monthly: u64) -> Limits {
    Limits {
        daily,
        weekly,
        monthly,
    }
}

pub(crate) fn request(
    user: &str,
    limits: Limits,
    now: DateTime<Utc>,
    ttl: Duration,
) -> ReserveRequest {
    ReserveRequest {
        user: user.to_owned(),
        limits,
        windows: windows(now),
        now,
        ttl,
    }
}

pub(crate) fn exceeded(period: Period, counts: [u64; 3]) -> Admission {
    Admission::Exceeded {
        period,
        counts: PeriodCounts(counts),
    }
}

/// A store under test, and the servers behind it kept alive as long as it.
pub(crate) struct Subject {
    pub(crate) store: Arc<dyn QuotaStore>,
    _servers: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

async fn memory() -> Subject {
    Subject {
        store: Arc::new(MemoryStore::new(1_000)),
        _servers: None,
    }
}

async fn redis() -> Subject {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), PREFIX, COMMAND_TIMEOUT)
        .await
        .expect("connect to the test redis-server");
    Subject {
        store: Arc::new(store),
        _servers: Some(Arc::new(server)),
    }
}

/// A store on a shared set-up, its keys under a prefix of its own.
async fn shared(
    servers: &Arc<dyn std::any::Any + Send + Sync>,
    topology: Topology,
    test: &str,
) -> Subject {
    let store = RedisStore::open(&RedisOptions {
        topology,
        key_prefix: format!("{test}:"),
        command_timeout: COMMAND_TIMEOUT,
        root_cert: None,
    })
    .await
    .expect("connect to the test set-up");
    Subject {
        store: Arc::new(store),
        _servers: Some(Arc::clone(servers)),
    }
}

fn cluster_topology(cluster: &RedisCluster) -> Topology {
    Topology::Cluster {
        nodes: cluster.urls(),
    }
}

impl Subject {
    pub(crate) async fn reserve(
        &self,
        user: &str,
        limits: Limits,
        now: DateTime<Utc>,
    ) -> Admission {
        self.store
            .reserve(&request(user, limits, now, TTL))
            .await
            .expect("reserve")
    }

    /// Reserves one unit, which must be admitted.
    pub(crate) async fn hold(&self, user: &str, limits: Limits, now: DateTime<Utc>) -> Reservation {
        match self.reserve(user, limits, now).await {
            Admission::Reserved { reservation, .. } => reservation,
            other => panic!("expected a reservation at {now}, got {other:?}"),
        }
    }

    pub(crate) async fn settle(&self, reservation: &Reservation, amount: u64, now: DateTime<Utc>) {
        self.store
            .settle(reservation, amount, now)
            .await
            .expect("settle");
    }

    /// Uses `n` units, one admitted request at a time.
    pub(crate) async fn spend(&self, user: &str, limits: Limits, now: DateTime<Utc>, n: usize) {
        for _ in 0..n {
            let r = self.hold(user, limits, now).await;
            self.settle(&r, 1, now).await;
        }
    }

    pub(crate) async fn usage(&self, user: &str, now: DateTime<Utc>) -> [PeriodUsage; 3] {
        self.usage_in(user, &windows(now), now).await
    }

    pub(crate) async fn usage_in(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> [PeriodUsage; 3] {
        self.store.usage(user, windows, now).await.expect("usage")
    }

    pub(crate) async fn used(&self, user: &str, now: DateTime<Utc>) -> [u64; 3] {
        self.usage(user, now).await.map(|u| u.used)
    }

    pub(crate) async fn reserved(&self, user: &str, now: DateTime<Utc>) -> [u64; 3] {
        self.usage(user, now).await.map(|u| u.reserved)
    }
}

/// Generates one `#[tokio::test]` per store for each contract test.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod memory_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::memory().await).await;
                }
            )*
        }

        mod redis_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::redis().await).await;
                }
            )*
        }

        /// The whole suite on one 3-master cluster, test after test: a
        /// cluster takes seconds to form, a test milliseconds.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn redis_cluster_passes_the_contract() {
            let cluster = RedisCluster::start(3);
            let topology = cluster_topology(&cluster);
            let servers: Arc<dyn std::any::Any + Send + Sync> = Arc::new(cluster);
            $(
                eprintln!("cluster: {}", stringify!($test));
                $test(shared(&servers, topology.clone(), stringify!($test)).await).await;
            )*
        }

        /// The whole suite on one Sentinel set-up, test after test.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn redis_sentinel_passes_the_contract() {
            let set_up = RedisSentinel::start();
            let topology = set_up.topology();
            let servers: Arc<dyn std::any::Any + Send + Sync> = Arc::new(set_up);
            $(
                eprintln!("sentinel: {}", stringify!($test));
                $test(shared(&servers, topology.clone(), stringify!($test)).await).await;
            )*
        }
    };
}

contract!(
    daily_limit_allows_then_denies,
    weekly_limit_allows_then_denies,
    monthly_limit_allows_then_denies,
    daily_is_reported_before_weekly_and_monthly,
    zero_means_unlimited,
    reservations_in_flight_count,
    parallel_reserves_admit_exactly_the_room_left,
    settle_adds_to_all_three_windows,
    release_frees_the_unit,
    settle_twice_counts_once,
    settle_of_unreserved_id_counts_once,
    expired_reservation_stops_counting,
    settle_after_expiry_counts_once,
    settle_counts_in_the_windows_reserved_in,
    next_day_starts_from_zero_while_week_and_month_count,
    new_year_is_a_new_month,
    extend_keeps_reservation_past_its_deadline,
    extend_of_gone_reservation_does_nothing,
    adjust_floors_at_zero,
    usage_reports_used_and_reserved_per_user,
    usage_is_a_read_that_changes_nothing,
    odd_user_ids_keep_their_keys_together,
    ping_answers,
);

async fn daily_limit_allows_then_denies(s: Subject) {
    let now = at(NOW);
    let l = limits(2, 10, 10);
    match s.reserve("alice", l, now).await {
        Admission::Reserved {
            reservation,
            counts,
        } => {
            assert_eq!(counts, PeriodCounts([1, 1, 1]));
            assert_eq!(reservation.user, "alice");
            assert_eq!(reservation.windows, windows(now));
            assert_eq!(reservation.expires_at, now + TimeDelta::seconds(60));
            s.settle(&reservation, 1, now).await;
        }
        other => panic!("expected a reservation, got {other:?}"),
    }
    s.spend("alice", l, now, 1).await;
    assert_eq!(
        s.reserve("alice", l, now).await,
        exceeded(Period::Daily, [2, 2, 2])
    );
    // A denial reserves nothing.
    assert_eq!(s.reserved("alice", now).await, [0, 0, 0]);
}

async fn weekly_limit_allows_then_denies(s: Subject) {
    let monday = at("2031-05-12T09:00:00Z");
    let tuesday = at("2031-05-13T09:00:00Z");
    let l = limits(2, 3, 10);
    s.spend("alice", l, monday, 2).await;
    s.spend("alice", l, tuesday, 1).await;
    assert_eq!(
        s.reserve("alice", l, tuesday).await,
        exceeded(Period::Weekly, [1, 3, 3])
    );
    // Still denied on another day of that week, fine again the next week.
    let sunday = at("2031-05-18T23:59:59Z");
    assert_eq!(
        s.reserve("alice", l, sunday).await,
        exceeded(Period::Weekly, [0, 3, 3])
    );
    let next_monday = at("2031-05-19T00:00:00Z");
    s.hold("alice", l, next_monday).await;
}

async fn monthly_limit_allows_then_denies(s: Subject) {
    let l = limits(0, 0, 2);
    s.spend("alice", l, at("2031-05-01T08:00:00Z"), 1).await;
    s.spend("alice", l, at("2031-05-14T08:00:00Z"), 1).await;
    assert_eq!(
        s.reserve("alice", l, at("2031-05-31T23:59:59Z")).await,
        exceeded(Period::Monthly, [0, 0, 2])
    );
    s.hold("alice", l, at("2031-06-01T00:00:00Z")).await;
}

async fn daily_is_reported_before_weekly_and_monthly(s: Subject) {
    let now = at(NOW);
    let l = limits(1, 1, 1);
    s.spend("alice", l, now, 1).await;
    assert_eq!(
        s.reserve("alice", l, now).await,
        exceeded(Period::Daily, [1, 1, 1])
    );
    // With the day unlimited, the week is the first exceeded.
    assert_eq!(
        s.reserve("alice", limits(0, 1, 1), now).await,
        exceeded(Period::Weekly, [1, 1, 1])
    );
}

async fn zero_means_unlimited(s: Subject) {
    let now = at(NOW);
    for _ in 0..30 {
        s.hold("alice", limits(0, 0, 0), now).await;
    }
    // Unlimited requests are still reserved, so they count against a limit.
    assert_eq!(s.reserved("alice", now).await, [30, 30, 30]);
    assert_eq!(
        s.reserve("alice", limits(0, 0, 30), now).await,
        exceeded(Period::Monthly, [30, 30, 30])
    );
}

async fn reservations_in_flight_count(s: Subject) {
    let now = at(NOW);
    let l = limits(2, 0, 0);
    s.hold("alice", l, now).await;
    s.hold("alice", l, now).await;
    assert_eq!(
        s.reserve("alice", l, now).await,
        exceeded(Period::Daily, [2, 2, 2])
    );
}

async fn parallel_reserves_admit_exactly_the_room_left(s: Subject) {
    let now = at(NOW);
    let l = limits(5, 0, 0);
    s.spend("alice", l, now, 2).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(&s.store);
            tokio::spawn(async move { store.reserve(&request("alice", l, now, TTL)).await })
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        match task.await.expect("task").expect("reserve") {
            Admission::Reserved { .. } => reserved += 1,
            // Denied on the day, which held at least its 5 (in Redis also
            // the units of other reserves denied at the same moment, not
            // yet removed: the counts the store saw).
            Admission::Exceeded { period, counts } => {
                assert_eq!(period, Period::Daily);
                assert!(counts.get(Period::Daily) >= 5, "{counts:?}");
            }
        }
    }
    assert_eq!(reserved, 3);
    assert_eq!(s.reserved("alice", now).await, [3, 3, 3]);
}

/// `usage` (the quota-status endpoint's one store call, and the usage API's)
/// only reads: reading again answers the same, frees no room, holds none,
/// and a user it reads is not created.
async fn usage_is_a_read_that_changes_nothing(s: Subject) {
    let now = at(NOW);
    let l = limits(2, 10, 10);
    let r = s.hold("alice", l, now).await;
    s.settle(&r, 1, now).await;
    s.hold("alice", l, now).await;
    let seen = PeriodUsage {
        used: 1,
        reserved: 1,
    };
    for _ in 0..3 {
        assert_eq!(s.usage("alice", now).await, [seen; 3]);
    }
    assert_eq!(
        s.reserve("alice", l, now).await,
        exceeded(Period::Daily, [2, 2, 2])
    );
    for _ in 0..3 {
        assert_eq!(s.usage("nobody", now).await, [PeriodUsage::default(); 3]);
    }
    s.hold("nobody", limits(1, 1, 1), now).await;
    assert_eq!(
        s.reserve("nobody", limits(1, 1, 1), now).await,
        exceeded(Period::Daily, [1, 1, 1])
    );
}

/// Any id keeps all of one user's keys in one Redis Cluster slot (a
/// script touching keys in two slots fails with CROSSSLOT), and apart from
/// every other user's: an id starting with `}` would give an empty hash
/// tag, which Redis answers by hashing each whole key.
async fn odd_user_ids_keep_their_keys_together(s: Subject) {
    let now = at(NOW);
    let long = format!("}}{}", "9{".repeat(5000));
    let ids = [
        "}", "}x", "}}", "}{", "a}b", "{", "{}", "a{b}c", "x", "\u{1}x", &long,
    ];
    for (i, user) in ids.iter().enumerate() {
        let r = s.hold(user, limits(0, 0, 0), now).await;
        s.settle(&r, i as u64 + 1, now).await;
        s.hold(user, limits(0, 0, 0), now).await;
    }
    for (i, user) in ids.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(
            s.usage(user, now).await,
            [PeriodUsage {
                used: n,
                reserved: 1
            }; 3],
            "{user:?}"
        );
    }
}

async fn next_day_starts_from_zero_while_week_and_month_count(s: Subject) {
    let l = limits(2, 10, 10);
    s.spend("alice", l, at("2031-05-14T23:00:00Z"), 2).await;
    let next_day = at("2031-05-15T00:00:00Z");
    match s.reserve("alice", l, next_day).await {
        Admission::Reserved { counts, .. } => assert_eq!(counts, PeriodCounts([1, 3, 3])),
        other => panic!("expected a reservation, got {other:?}"),
    }
    assert_eq!(s.used("alice", next_day).await, [0, 2, 2]);
}

async fn new_year_is_a_new_month(s: Subject) {
    let l = limits(0, 0, 2);
    s.spend("alice", l, at("2031-12-31T12:00:00Z"), 2).await;
    assert_eq!(
        s.reserve("alice", l, at("2031-12-31T23:59:59Z")).await,
        exceeded(Period::Monthly, [2, 2, 2])
    );
    // Week of Monday 2031-12-29 spans the new year and keeps counting.
    let new_year = at("2032-01-01T00:00:00Z");
    match s.reserve("alice", l, new_year).await {
        Admission::Reserved { counts, .. } => assert_eq!(counts, PeriodCounts([1, 3, 1])),
        other => panic!("expected a reservation, got {other:?}"),
    }
}

async fn adjust_floors_at_zero(s: Subject) {
    let now = at(NOW);
    let w = windows(now);
    let day = w.get(Period::Daily);
    let adjust = |delta| s.store.adjust("alice", day, delta, now);
    assert_eq!(adjust(5).await.expect("adjust"), 5);
    assert_eq!(adjust(-2).await.expect("adjust"), 3);
    assert_eq!(adjust(-10).await.expect("adjust"), 0);
    assert_eq!(adjust(0).await.expect("adjust"), 0);
    let week = w.get(Period::Weekly);
    assert_eq!(
        s.store.adjust("alice", week, 4, now).await.expect("adjust"),
        4
    );
    assert_eq!(s.used("alice", now).await, [0, 4, 0]);
    // Adjusted usage counts against the limit like settled usage.
    assert_eq!(
        s.reserve("alice", limits(0, 4, 0), now).await,
        exceeded(Period::Weekly, [0, 4, 0])
    );
}

async fn usage_reports_used_and_reserved_per_user(s: Subject) {
    let now = at(NOW);
    let l = limits(0, 0, 0);
    s.spend("alice", l, now, 2).await;
    s.hold("alice", l, now).await;
    assert_eq!(
        s.usage("alice", now).await,
        [PeriodUsage {
            used: 2,
            reserved: 1
        }; 3]
    );
    assert_eq!(s.usage("bob", now).await, [PeriodUsage::default(); 3]);
    // Another month's windows do not see this month's usage.
    let june = at("2031-06-20T10:00:00Z");
    let other = s.usage_in("alice", &windows(june), now).await;
    assert_eq!(other.map(|usage| usage.used), [0; 3]);
}

async fn ping_answers(s: Subject) {
    s.store.ping().await.expect("ping");
}

#[tokio::test]
async fn memory_store_refuses_new_users_when_full_until_state_expires() {
    let store = MemoryStore::new(2);
    let now = at(NOW);
    let l = limits(0, 0, 0);
    for user in ["alice", "bob"] {
        store
            .reserve(&request(user, l, now, TTL))
            .await
            .expect("reserve");
    }
    let err = store
        .reserve(&request("carol", l, now, TTL))
        .await
        .expect_err("a third user does not fit");
    assert!(matches!(err, StoreError::Full(2)), "{err:?}");
    // Users already held are still served.
    store
        .reserve(&request("alice", l, now, TTL))
        .await
        .expect("reserve");
    // Once alice's and bob's reservations expired, they make room.
    let later = now + TimeDelta::minutes(2);
    store
        .reserve(&request("carol", l, later, TTL))
        .await
        .expect("room after expiry");
}
