//! A smoke run of the load bench (`benches/load.rs`): the same upstream,
//! proxy process, load generator and matrix, with a few hundred requests
//! on the memory store, so `cargo test` catches a bench that no longer
//! runs. It measures nothing; it checks that every answer is the expected
//! one (statuses, a denial after the quota is used up, the in-band marker
//! stripped, the hyper floor forwarding every shape) and that `/proc`
//! figures can be read.

use loadbench as load;

use std::path::Path;
use std::time::Duration;

use load::loadgen::{self, Limits};
use load::procs::{self, ProxyProcess};
use load::redis_info;
use load::runner::{self, Matrix, Subject};
use load::scenarios::{self, Shape, StoreSpec, Target, UploadKind};
use load::upstream::Upstream;

#[test]
fn load_bench_machinery_runs_a_few_hundred_requests() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let upstream = Upstream::start(1).expect("upstream");
    let proxy = ProxyProcess::start(
        Path::new(env!("CARGO_BIN_EXE_quota-proxy")),
        dir.path(),
        "smoke",
        Some(2),
        |port| scenarios::proxy_config(port, upstream.addr(), &StoreSpec::Memory),
    )
    .expect("the quota-proxy binary starts");
    let pid = proxy.pid();
    // The hyper floor, in this process (the bench runs it in its own).
    let floor = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the floor");
    let floor_addr = floor.local_addr().expect("floor address");
    let upstream_addr = upstream.addr();
    std::thread::spawn(move || load::floor::run(floor, upstream_addr, 1));
    let subjects = [
        Subject {
            target: Target::Direct,
            addr: upstream.addr(),
            cpu: Box::new(|| 0.0),
            redis_calls: None,
        },
        Subject {
            target: Target::Floor,
            addr: floor_addr,
            cpu: Box::new(|| 0.0),
            redis_calls: None,
        },
        Subject {
            target: Target::Memory,
            addr: proxy.addr(),
            cpu: Box::new(move || procs::cpu_seconds(pid).expect("/proc/<pid>/stat")),
            redis_calls: None,
        },
    ];
    let matrix = Matrix {
        conns: vec![1, 4],
        shapes: Shape::ALL.to_vec(),
        warm_up: Limits {
            max_requests: 5,
            max_time: Duration::from_secs(10),
        },
        measure: Limits {
            max_requests: 20,
            max_time: Duration::from_secs(10),
        },
        rounds: 2,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut runs = Vec::new();
    let rows = runner::run_matrix(&runtime, &subjects, &matrix, |run| {
        runs.push((
            run.shape,
            run.target,
            run.conns,
            run.stats.rps(),
            run.stats.latency_at(0.99),
        ))
    })
    .expect("the matrix runs");
    assert_eq!(rows.len(), subjects.len() * Shape::ALL.len() * 2);
    for row in &rows {
        assert!(
            row.stats.clean() && row.stats.requests == 20,
            "{} {} x{}: {} answers, {} errors, {} unexpected: {:?}\nproxy log: {}",
            row.target.name(),
            row.shape.name(),
            row.conns,
            row.stats.requests,
            row.stats.errors,
            row.stats.unexpected,
            row.stats.first_problem,
            proxy.log_tail()
        );
        assert!(row.cpu_per_10k.is_finite());
        // Every round's figure is kept in round order, the median row's
        // own among them.
        let in_order: Vec<(f64, Duration)> = runs
            .iter()
            .filter(|run| (run.0, run.1, run.2) == (row.shape, row.target, row.conns))
            .map(|run| (run.3, run.4))
            .collect();
        let kept: Vec<(f64, Duration)> = row.rounds.iter().map(|r| (r.rps, r.p99)).collect();
        assert_eq!(kept, in_order);
        assert!(in_order.contains(&(row.stats.rps(), row.stats.latency_at(0.99))));
    }
    // Ratios pair each round with the same round: with two rounds, the
    // mean of the two rounds' ratios (not the ratio of the medians).
    let (a, b) = (&rows[0], &rows[1]);
    let ratio = runner::paired(a, b).expect("both ran the same rounds");
    let by_hand = [0, 1].map(|i| a.rounds[i].rps / b.rounds[i].rps);
    assert!((ratio.median - (by_hand[0] + by_hand[1]) / 2.0).abs() < 1e-9);
    assert_eq!(ratio.low, by_hand[0].min(by_hand[1]));
    assert_eq!(ratio.high, by_hand[0].max(by_hand[1]));
    let table = runner::render_rows(&rows);
    assert!(
        table.contains("| 4 | flagged, denied | qp-memory |"),
        "{table}"
    );
    // The headline table from the same rows: its flagged ÷ pass-through
    // POST ratio is there (a paired ratio, judged), the comparisons with
    // nginx and Redis, which this test does not start, say so.
    let setup = load::headline::Setup {
        conns: 4,
        threads: 2,
        rounds: 2,
    };
    let headline = load::headline::render(&rows, setup);
    let flagged = load::headline::COMPARISONS[4]
        .judge(&rows, 4)
        .expect("flagged and pass-through POST both ran on qp-memory");
    assert!(
        headline.contains(&format!(
            "| {} | {} | ≥ 0.9× | {} |",
            load::headline::COMPARISONS[4].what,
            flagged.ratio,
            if flagged.holds { "HOLDS" } else { "MISSED" }
        )),
        "{headline}"
    );
    assert_eq!(headline.matches("not measured").count(), 6, "{headline}");
    // The pass-through POST is the size the headline names.
    let post = &scenarios::requests(Shape::PassThroughPost)[0];
    let body = post.len() - (memchr::memmem::find(post, b"\r\n\r\n").expect("a head") + 4);
    assert_eq!(body, scenarios::PASS_POST_BYTES);

    // Idle connections and an upload, small.
    let request = scenarios::requests(Shape::PassThrough).remove(0);
    let held = runtime
        .block_on(runner::idle_connections(proxy.addr(), 20, &request))
        .expect("idle connections");
    assert_eq!(held.len(), 20);
    assert!(procs::memory_bytes(pid, "VmRSS").expect("VmRSS") > 0);
    for kind in [
        UploadKind::Json,
        UploadKind::Multipart,
        UploadKind::PassThrough,
    ] {
        let upload = scenarios::upload(100_000, kind);
        let memory = runner::upload_memory(&runtime, pid, proxy.addr(), &upload)
            .unwrap_or_else(|e| panic!("{}: {e}\nproxy log: {}", kind.name(), proxy.log_tail()));
        // VmHWM is approximate (per-CPU RSS counters): no order is
        // asserted at this size, only that it was read.
        assert!(
            memory.body >= 100_000 && memory.before > 0 && memory.after > 0,
            "{}: {memory:?}",
            kind.name()
        );
    }

    // The time-to-first-byte run: the pause after the first chunk shows.
    let stats = runtime.block_on(async {
        let conns = loadgen::connect(proxy.addr(), 1).await.expect("connect");
        let workload = scenarios::ttfb_workload(Target::Memory, 20);
        let limits = Limits {
            max_requests: 5,
            max_time: Duration::from_secs(10),
        };
        loadgen::drive(conns, &workload, limits).await.1
    });
    assert!(stats.clean(), "{:?}", stats.first_problem);
    assert!(stats.latency_at(0.5) >= Duration::from_millis(20));
    assert!(stats.ttfb_at(0.5) < stats.latency_at(0.5));
}

#[test]
fn chunked_answers_are_read_to_their_exact_end() {
    let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
    let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
    let mut all = head.to_vec();
    all.extend_from_slice(body);
    all.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    assert_eq!(
        loadgen::head_of(&all).expect("valid head"),
        Some((200, head.len()))
    );
    let end = head.len() + body.len();
    for cut in head.len()..end {
        assert_eq!(
            loadgen::chunked_body_end(&all[..cut], head.len()).expect("valid so far"),
            None,
            "cut at {cut}"
        );
    }
    assert_eq!(
        loadgen::chunked_body_end(&all, head.len()).expect("valid"),
        Some(end)
    );
}

#[test]
fn redis_command_count_reads_commandstats() {
    // Fails, never skips: a machine without Redis must not pass silently.
    assert!(
        procs::find_program("redis-server").is_some(),
        "`redis-server` is not on PATH (nor in /usr/sbin, /usr/local/sbin, /sbin): this test \
         starts its own; install it with `apt-get install redis-server`"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let redis = procs::RedisProcess::start(dir.path()).expect("redis-server starts");
    let before = redis.calls().expect("INFO commandstats");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", redis.port())).expect("connect");
    // Not `PING`: the bench leaves the proxy's health-check pings out.
    std::io::Write::write_all(&mut stream, b"EXISTS k\r\nEXISTS k\r\n").expect("write");
    let mut answer = [0u8; 8];
    std::io::Read::read_exact(&mut stream, &mut answer).expect("two :0");
    let script = b"*3\r\n$4\r\nEVAL\r\n$54\r\nredis.call('set','k','1') return redis.call('get','k')\r\n$1\r\n0\r\n";
    std::io::Write::write_all(&mut stream, script).expect("write");
    let mut answer = [0u8; 7];
    std::io::Read::read_exact(&mut stream, &mut answer).expect("$1 1");
    let calls = redis.calls().expect("INFO commandstats").since(&before);
    // Two EXISTS written at once are one round trip (one read), the EVAL
    // another; SET and GET ran inside it.
    assert_eq!((calls.commands, calls.round_trips), (5, 2));
    // Their time is the round trips' alone: the EVAL's holds the SET's and
    // GET's (a 1 µs clock may read 0 for an EXISTS, never for all three).
    assert!(calls.usec > 0, "{calls:?}");
    // Each command's own share, the `INFO`s left out.
    let by_command: Vec<(&str, u64)> = calls
        .by_command
        .iter()
        .map(|(name, time)| (name.as_str(), time.calls))
        .collect();
    assert_eq!(
        by_command,
        [("eval", 1), ("exists", 2), ("get", 1), ("set", 1)],
        "{calls:?}"
    );
}

/// The bench's Redis figures: plain commands (the store's reserve and
/// settle) count whole; with a script, its commands count once, inside it;
/// the health check's `PING`s not at all.
#[test]
fn redis_time_counts_plain_commands_whole_and_scripts_once() {
    let plain = "# Stats\r\ntotal_reads_processed:12\r\n# Commandstats\r\n\
        cmdstat_zadd:calls=6,usec=30,usec_per_call=5.00\r\n\
        cmdstat_info:calls=2,usec=100,usec_per_call=50.00\r\n\
        cmdstat_mget:calls=2,usec=4,usec_per_call=2.00\r\n\
        cmdstat_ping:calls=3,usec=3,usec_per_call=1.00\r\n";
    let calls = redis_info::read_calls(plain);
    // The health check's `PING`s: neither commands nor round trips.
    assert_eq!((calls.commands, calls.round_trips, calls.usec), (8, 9, 34));
    // Command by command, as the headline shows them (per request, here
    // 2 requests), the largest share first.
    assert_eq!(
        load::headline::by_command(&runner::CommandShare::of(&calls, 2)),
        "`zadd` 3.00 × 5.00 µs = 15.00 µs, `mget` 1.00 × 2.00 µs = 2.00 µs"
    );
    let scripted = "total_reads_processed:3\r\n\
        cmdstat_evalsha:calls=2,usec=50,usec_per_call=25.00\r\n\
        cmdstat_zadd:calls=6,usec=30,usec_per_call=5.00\r\n";
    let calls = redis_info::read_calls(scripted);
    assert_eq!((calls.commands, calls.round_trips, calls.usec), (8, 3, 50));
}
