//! The Redis store in production shapes (phases: admit and settle): several
//! replicas on one Redis, Redis killed, paused, flushed of its scripts or
//! failed over while requests are in flight, TLS with a private CA, and what
//! one active user costs in Redis memory. Every test starts its own servers
//! on free loopback ports and waits a bounded time for anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::reserve::{daily_request, utc_windows};
use chrono::{DateTime, Utc};
use quota_proxy::periods::PeriodWindows;
use quota_proxy::store::{
    Admission, BreakerSettings, OutagePolicy, QuotaStore, RedisOptions, RedisStore, Reservation,
    ReserveRequest, ResilientSettings, ResilientStore, StoreError, Topology,
};

const TTL: Duration = Duration::from_secs(60);
const PREFIX: &str = "quota:";
/// A Wednesday; its week started Monday 2031-05-12.
const NOW: &str = "2031-05-14T10:00:00Z";
/// Generous for a debug build on a busy 2-core machine, still far below
/// anything a test waits for.
const TIMEOUT: Duration = Duration::from_millis(500);

pub(crate) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .expect("test instant")
        .with_timezone(&Utc)
}

pub(crate) fn windows() -> PeriodWindows {
    utc_windows(now())
}

pub(crate) fn request(user: &str, daily: u64) -> ReserveRequest {
    daily_request(user, daily, now(), TTL)
}

pub(crate) fn options(topology: Topology) -> RedisOptions {
    RedisOptions {
        topology,
        key_prefix: PREFIX.to_owned(),
        command_timeout: TIMEOUT,
        root_cert: None,
    }
}

fn single(server: &RedisServer) -> Topology {
    Topology::Single { url: server.url() }
}

pub(crate) async fn resilient(topology: Topology, outage: OutagePolicy) -> ResilientStore {
    let redis = RedisStore::open(&options(topology))
        .await
        .expect("connect to the test set-up");
    ResilientStore::new(
        Arc::new(redis),
        ResilientSettings {
            breaker: BreakerSettings {
                failures: 3,
                open_for: Duration::from_millis(300),
            },
            settle_queue: 10_000,
            outage,
            local_max_users: 1_000,
        },
    )
}

pub(crate) fn reservation(admission: Admission) -> Option<Reservation> {
    match admission {
        Admission::Reserved { reservation, .. } => Some(reservation),
        Admission::Exceeded { .. } => None,
    }
}

pub(crate) async fn hold(store: &dyn QuotaStore, user: &str, daily: u64) -> Reservation {
    let admission = store.reserve(&request(user, daily)).await.expect("reserve");
    reservation(admission).expect("room for a reservation")
}

pub(crate) async fn used(store: &dyn QuotaStore, user: &str) -> u64 {
    store.usage(user, &windows(), now()).await.expect("usage")[0].used
}

pub(crate) fn flush_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(15)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_admit_exactly_the_room_left() {
    let server = RedisServer::start();
    let replicas: Vec<Arc<dyn QuotaStore>> = vec![
        Arc::new(resilient(single(&server), OutagePolicy::Fail).await),
        Arc::new(resilient(single(&server), OutagePolicy::Fail).await),
    ];
    // 5 of 10 used already.
    for _ in 0..5 {
        let r = hold(replicas[0].as_ref(), "alice", 10).await;
        replicas[1].settle(&r, 1, now()).await.expect("settle");
    }
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&replicas[i % 2]);
            tokio::spawn(async move { store.reserve(&request("alice", 10)).await })
        })
        .collect();
    let mut held = Vec::new();
    for task in tasks {
        if let Some(r) = reservation(task.await.expect("task").expect("reserve")) {
            held.push(r);
        }
    }
    assert_eq!(held.len(), 5, "exactly the room left is reserved");
    // Each settled by both replicas, as a retry would: counted once.
    for (i, r) in held.iter().enumerate() {
        replicas[i % 2].settle(r, 1, now()).await.expect("settle");
        replicas[(i + 1) % 2]
            .settle(r, 1, now())
            .await
            .expect("settle");
    }
    assert_eq!(used(replicas[0].as_ref(), "alice").await, 10);
    assert!(
        reservation(
            replicas[1]
                .reserve(&request("alice", 10))
                .await
                .expect("reserve")
        )
        .is_none()
    );
}

/// The settles of `held`, `per_tick` at a time, each task counting into
/// `issued` when its settle call returned Ok (landed or queued).
fn settle_slowly(
    store: &Arc<ResilientStore>,
    held: Vec<Reservation>,
    per_tick: usize,
    issued: &Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let store = Arc::clone(store);
    let issued = Arc::clone(issued);
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for chunk in held.chunks(per_tick) {
            for r in chunk {
                let r = r.clone();
                let store = Arc::clone(&store);
                let issued = Arc::clone(&issued);
                tasks.push(tokio::spawn(async move {
                    store.settle(&r, 1, now()).await.expect("settle queued");
                    issued.fetch_add(1, Ordering::SeqCst);
                }));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for task in tasks {
            task.await.expect("settle task");
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_every_settle_lands_once() {
    let mut server = RedisServer::start_persistent();
    let store = Arc::new(resilient(single(&server), OutagePolicy::Fail).await);
    let mut held = Vec::new();
    for _ in 0..400 {
        held.push(hold(store.as_ref(), "alice", 0).await);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let settling = settle_slowly(&store, held, 10, &issued);
    wait_for_async(|| issued.load(Ordering::SeqCst) >= 100).await;
    server.kill();

    // Checks follow the policy (fail → the quota layer's allow or deny),
    // each within the timeout, and at once once the breaker is open.
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        let err = store
            .reserve(&request("bob", 5))
            .await
            .expect_err("redis is down");
        slowest = slowest.max(started.elapsed());
        assert!(
            matches!(err, StoreError::Unavailable(_) | StoreError::Timeout(_)),
            "{err:?}"
        );
    }
    assert!(slowest < TIMEOUT * 2, "a check took {slowest:?}");
    settling.await.expect("settles");
    assert_eq!(issued.load(Ordering::SeqCst), 400, "every settle accepted");
    assert!(store.pending_settles() > 0, "some settles wait for redis");

    server.restart();
    assert_eq!(store.flush(flush_deadline()).await, 0, "queue drained");
    assert_eq!(store.dropped_settles(), 0);
    assert_eq!(used(store.as_ref(), "alice").await, 400, "each settle once");
    let counted: u64 = server
        // Counted units score minus their day's start (ms), above -2^51.
        .cli(&[
            "ZCOUNT",
            "quota:{alice}:units",
            "(-2251799813685248",
            "+inf",
        ])
        .parse()
        .expect("ZCOUNT");
    assert_eq!(counted, 400, "400 units counted, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_the_timeout_then_the_breaker_answers_and_nothing_counts_twice() {
    let server = RedisServer::start();
    let store = Arc::new(resilient(single(&server), OutagePolicy::Fail).await);
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(hold(store.as_ref(), "alice", 0).await);
    }
    server.pause();
    // These reach Redis's socket and run when it resumes, after their
    // callers timed out and queued them: the retries must count nothing.
    let issued = Arc::new(AtomicU64::new(0));
    settle_slowly(&store, held, 50, &issued)
        .await
        .expect("settles");
    assert_eq!(issued.load(Ordering::SeqCst), 50);
    let started = Instant::now();
    let err = store
        .reserve(&request("bob", 5))
        .await
        .expect_err("breaker open");
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "an open breaker answers at once, took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("circuit breaker"), "{err}");
    server.resume();
    assert_eq!(store.flush(flush_deadline()).await, 0);
    assert_eq!(used(store.as_ref(), "alice").await, 50);
    assert_eq!(store.dropped_settles(), 0);
}

/// Polls `check` every 20 ms for at most 10 s.
async fn wait_for_async(mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let certs = tempfile::tempdir().expect("temporary directory");
    let dir = certs.path();
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl runs");
        assert!(status.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=quota-proxy test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("san.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let path = |name: &str| dir.join(name).display().to_string();
    let server = RedisServer::start_with(|_| {
        vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path("server.crt"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.crt"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    });
    let url = format!("rediss://127.0.0.1:{tls_port}/0");
    let ca = std::fs::read(dir.join("ca.crt")).expect("ca.crt");
    let store = RedisStore::open(&RedisOptions {
        root_cert: Some(ca),
        ..options(Topology::Single { url: url.clone() })
    })
    .await
    .expect("TLS with the private CA");
    let r = hold(&store, "alice", 5).await;
    store.settle(&r, 1, now()).await.expect("settle");
    assert_eq!(used(&store, "alice").await, 1);
    // Counted: scored with minus the start of its day.
    assert_eq!(
        server.cli(&["ZSCORE", "quota:{alice}:units", &r.id.to_string()]),
        (-r.windows.0[0].start.timestamp_millis()).to_string()
    );
    // Without the CA the certificate is not trusted.
    let err = RedisStore::connect(&url, PREFIX, TIMEOUT)
        .await
        .expect_err("an unknown CA is refused");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_active_user_is_measured() {
    const USERS: usize = 2_000;
    let server = RedisServer::start();
    let store = Arc::new(
        RedisStore::connect(&server.url(), PREFIX, Duration::from_secs(2))
            .await
            .expect("connect"),
    );
    let used_memory = || -> i64 {
        let info = server.cli(&["INFO", "memory"]);
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    };
    let before = used_memory();
    // A realistic day of a free user: 3 images, each reserved and settled.
    let tasks: Vec<_> = (0..USERS)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let user = format!("{}", 100_000 + i);
                for _ in 0..3 {
                    let r = hold(store.as_ref(), &user, 3).await;
                    store.settle(&r, 1, now()).await.expect("settle");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("user");
    }
    let per_user = (used_memory() - before) / USERS as i64;
    let usage = |key: &str| -> i64 {
        server
            .cli(&["MEMORY", "USAGE", key, "SAMPLES", "0"])
            .parse()
            .expect("MEMORY USAGE")
    };
    let size = usage("quota:{100000}:units");
    eprintln!(
        "redis memory per active user (3 settles a day): {per_user} bytes by used_memory over \
         {USERS} users; MEMORY USAGE of the user's set = {size}"
    );
    assert!(per_user < 512, "{per_user} bytes per user");
}
