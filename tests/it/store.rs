//! The quota stores' contract (phases: admit and settle), one suite run
//! against the memory store and against a real Redis in every topology: one
//! server (each test starts its own `redis-server` on a free loopback port),
//! a 3-master Redis Cluster and a master with a replica behind Sentinel (one
//! set-up each, shared by the suite's tests, each test under its own key
//! prefix). Time is always passed in, years from today, so no test sleeps
//! across a period boundary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis::{RedisCluster, RedisSentinel, RedisServer, SENTINEL_MASTER};
use chrono::{DateTime, TimeDelta, Utc, Weekday};
use quota_proxy::config::Limits;
use quota_proxy::periods::{Calendar, Period, PeriodWindows};
use quota_proxy::store::{
    Admission, MemoryStore, PeriodCounts, PeriodUsage, QuotaStore, RedisOptions, RedisStore,
    Reservation, ReservationId, ReserveRequest, StoreError, Topology,
};

/// How long reservations live unless a test says otherwise.
const TTL: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
const PREFIX: &str = "quota:";

/// A Wednesday; its week started Monday 2031-05-12.
const NOW: &str = "2031-05-14T10:00:00Z";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

fn windows(now: DateTime<Utc>) -> PeriodWindows {
    Calendar::new(chrono_tz::UTC, Weekday::Mon).windows(now)
}

fn limits(daily: u64, weekly: u64, monthly: u64) -> Limits {
    Limits {
        daily,
        weekly,
        monthly,
    }
}

fn request(user: &str, limits: Limits, now: DateTime<Utc>, ttl: Duration) -> ReserveRequest {
    ReserveRequest {
        user: user.to_owned(),
        limits,
        windows: windows(now),
        now,
        ttl,
    }
}

fn exceeded(period: Period, counts: [u64; 3]) -> Admission {
    Admission::Exceeded {
        period,
        counts: PeriodCounts(counts),
    }
}

/// A store under test, and the servers behind it kept alive as long as it.
struct Subject {
    store: Arc<dyn QuotaStore>,
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

fn sentinel_topology(set_up: &RedisSentinel) -> Topology {
    Topology::Sentinel {
        master: SENTINEL_MASTER.to_owned(),
        nodes: vec![set_up.sentinel_url()],
        db: 0,
        username: None,
        password: None,
        tls: false,
    }
}

impl Subject {
    async fn reserve(&self, user: &str, limits: Limits, now: DateTime<Utc>) -> Admission {
        self.store
            .reserve(&request(user, limits, now, TTL))
            .await
            .expect("reserve")
    }

    /// Reserves one unit, which must be admitted.
    async fn hold(&self, user: &str, limits: Limits, now: DateTime<Utc>) -> Reservation {
        match self.reserve(user, limits, now).await {
            Admission::Reserved { reservation, .. } => reservation,
            other => panic!("expected a reservation at {now}, got {other:?}"),
        }
    }

    async fn settle(&self, reservation: &Reservation, amount: u64, now: DateTime<Utc>) {
        self.store
            .settle(reservation, amount, now)
            .await
            .expect("settle");
    }

    /// Uses `n` units, one admitted request at a time.
    async fn spend(&self, user: &str, limits: Limits, now: DateTime<Utc>, n: usize) {
        for _ in 0..n {
            let r = self.hold(user, limits, now).await;
            self.settle(&r, 1, now).await;
        }
    }

    async fn usage(&self, user: &str, now: DateTime<Utc>) -> [PeriodUsage; 3] {
        self.usage_in(user, &windows(now), now).await
    }

    async fn usage_in(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> [PeriodUsage; 3] {
        self.store.usage(user, windows, now).await.expect("usage")
    }

    async fn used(&self, user: &str, now: DateTime<Utc>) -> [u64; 3] {
        self.usage(user, now).await.map(|u| u.used)
    }

    async fn reserved(&self, user: &str, now: DateTime<Utc>) -> [u64; 3] {
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
            let topology = sentinel_topology(&set_up);
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

async fn settle_adds_to_all_three_windows(s: Subject) {
    let now = at(NOW);
    let r = s.hold("alice", limits(5, 5, 5), now).await;
    s.settle(&r, 3, now).await;
    assert_eq!(
        s.usage("alice", now).await,
        [PeriodUsage {
            used: 3,
            reserved: 0
        }; 3]
    );
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

async fn release_frees_the_unit(s: Subject) {
    let now = at(NOW);
    let l = limits(1, 1, 1);
    let r = s.hold("alice", l, now).await;
    s.settle(&r, 0, now).await;
    assert_eq!(s.usage("alice", now).await, [PeriodUsage::default(); 3]);
    s.hold("alice", l, now).await;
}

async fn settle_twice_counts_once(s: Subject) {
    let now = at(NOW);
    let r = s.hold("alice", limits(0, 0, 0), now).await;
    s.settle(&r, 2, now).await;
    s.settle(&r, 2, now + TimeDelta::seconds(5)).await;
    assert_eq!(s.used("alice", now).await, [2, 2, 2]);

    // A release sent twice releases once, and holds nothing.
    let released = s.hold("alice", limits(0, 0, 0), now).await;
    s.settle(&released, 0, now).await;
    s.settle(&released, 0, now).await;
    assert_eq!(s.used("alice", now).await, [2, 2, 2]);
    assert_eq!(s.reserved("alice", now).await, [0, 0, 0]);
    // So does a settle of one unit.
    let one = s.hold("alice", limits(0, 0, 0), now).await;
    s.settle(&one, 1, now).await;
    s.settle(&one, 1, now).await;
    assert_eq!(s.used("alice", now).await, [3, 3, 3]);
}

async fn settle_of_unreserved_id_counts_once(s: Subject) {
    // How usage reported for an unflagged request is recorded.
    let now = at(NOW);
    let unflagged = Reservation {
        id: Reservation::new_id(),
        user: "alice".to_owned(),
        windows: windows(now),
        expires_at: now,
        keys_expire: false,
    };
    s.settle(&unflagged, 1, now).await;
    s.settle(&unflagged, 1, now).await;
    assert_eq!(
        s.usage("alice", now).await,
        [PeriodUsage {
            used: 1,
            reserved: 0
        }; 3]
    );
}

async fn expired_reservation_stops_counting(s: Subject) {
    let now = at(NOW);
    let l = limits(1, 0, 0);
    s.hold("alice", l, now).await;
    let just_before = now + TimeDelta::milliseconds(59_999);
    assert_eq!(s.reserved("alice", just_before).await, [1, 1, 1]);
    assert_eq!(
        s.reserve("alice", l, just_before).await,
        exceeded(Period::Daily, [1, 1, 1])
    );
    // The deadline itself is past.
    let deadline = now + TimeDelta::seconds(60);
    assert_eq!(s.reserved("alice", deadline).await, [0, 0, 0]);
    s.hold("alice", l, deadline).await;
}

async fn settle_after_expiry_counts_once(s: Subject) {
    let now = at(NOW);
    let r = s.hold("alice", limits(0, 0, 0), now).await;
    let late = now + TimeDelta::minutes(5);
    s.settle(&r, 1, late).await;
    s.settle(&r, 1, late).await;
    assert_eq!(
        s.usage("alice", late).await,
        [PeriodUsage {
            used: 1,
            reserved: 0
        }; 3]
    );
}

async fn settle_counts_in_the_windows_reserved_in(s: Subject) {
    let before_midnight = at("2031-05-31T23:59:30Z");
    let after_midnight = at("2031-06-01T00:00:30Z");
    let r = s.hold("alice", limits(0, 0, 0), before_midnight).await;
    s.settle(&r, 2, after_midnight).await;
    assert_eq!(
        s.usage_in("alice", &windows(before_midnight), after_midnight)
            .await
            .map(|u| u.used),
        [2, 2, 2]
    );
    // June has nothing; the week (Monday 05-26 to 06-02) is the same one.
    assert_eq!(s.used("alice", after_midnight).await, [0, 2, 0]);
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

async fn extend_keeps_reservation_past_its_deadline(s: Subject) {
    let now = at(NOW);
    let l = limits(1, 0, 0);
    let r = s.hold("alice", l, now).await;
    s.store
        .extend(
            &r,
            now + TimeDelta::minutes(5),
            now + TimeDelta::seconds(30),
        )
        .await
        .expect("extend");
    let past_ttl = now + TimeDelta::minutes(2);
    assert_eq!(s.reserved("alice", past_ttl).await, [1, 1, 1]);
    assert_eq!(
        s.reserve("alice", l, past_ttl).await,
        exceeded(Period::Daily, [1, 1, 1])
    );
    let past_extension = now + TimeDelta::minutes(5);
    assert_eq!(s.reserved("alice", past_extension).await, [0, 0, 0]);
}

async fn extend_of_gone_reservation_does_nothing(s: Subject) {
    let now = at(NOW);
    let r = s.hold("alice", limits(0, 0, 0), now).await;
    let expired = now + TimeDelta::minutes(2);
    s.store
        .extend(&r, expired + TimeDelta::hours(1), expired)
        .await
        .expect("extend");
    assert_eq!(s.reserved("alice", expired).await, [0, 0, 0]);

    let settled = s.hold("bob", limits(0, 0, 0), now).await;
    s.settle(&settled, 1, now).await;
    s.store
        .extend(&settled, now + TimeDelta::hours(1), now)
        .await
        .expect("extend");
    assert_eq!(s.reserved("bob", now).await, [0, 0, 0]);
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

// Redis only: keys, TTLs, round trips and failures.

/// The Redis store and a plain connection to the same server.
async fn redis_pair(server: &RedisServer) -> (RedisStore, redis::aio::MultiplexedConnection) {
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

/// What Redis has read so far: `total_reads_processed` of `INFO stats`,
/// one per batch of commands a client wrote at once.
async fn reads(raw: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query_async(raw)
        .await
        .expect("INFO stats");
    loadbench::procs::read_calls(&info).round_trips
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
