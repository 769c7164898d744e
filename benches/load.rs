//! The load bench: `cargo bench --bench load`.
//!
//! Starts, on loopback, a fast upstream (in this process, a runtime of its
//! own), quota-proxy as a separate process (the binary cargo built for this
//! bench, with a generated config) on the memory store and on the Redis
//! store (a `redis-server` it starts with `--save "" --appendonly no`),
//! nginx in front of the same upstream when it is installed, and the hyper
//! floor (`crates/loadbench/src/floor.rs`: this binary re-run as
//! `load floor …`); drives
//! each with a bounded number of keep-alive HTTP/1.1 requests over 1, 64
//! and 256 connections; prints requests/s, latency percentiles, server CPU
//! per 10k requests, Redis commands per request, ratios to nginx (taken
//! round by round, see `runner::paired`), then the
//! streaming, idle-connection and upload tests, and checks the targets of
//! BENCHMARKS.md. Everything it starts is stopped when it ends.
//!
//! Under `cargo test` (no `--bench` argument, no `floor`) it does nothing:
//! `tests/it/load_smoke.rs` runs the same machinery briefly instead.
//!
//! Knobs (environment): `LOAD_SECS` (measured seconds per run, default 2),
//! `LOAD_ROUNDS` (3: the matrix runs that often, each cell reports its
//! median run and each ratio the median of the rounds' ratios), `LOAD_WARMUP_SECS` (0.5), `LOAD_MAX_REQUESTS` (per run, 1 000 000),
//! `LOAD_CONNS` (`1,64,256`), `LOAD_IDLE_CONNS` (1000), `LOAD_PROXY_THREADS`
//! (quota-proxy's serving `threads` and nginx's `worker_processes`;
//! default: the number of cores), `LOAD_UPSTREAM_THREADS` (1),
//! `LOAD_SKIP_NGINX=1`, `LOAD_SKIP_FLOOR=1`, `LOAD_SKIP_REDIS=1`,
//! `LOAD_REDIS_CPUS` (`1`: redis-server on those CPUs only; run the bench
//! itself under `taskset -c 0` to keep everything else off them); for quicker iterations
//! `LOAD_SHAPES` (`pass,unflagged,allowed,denied,streamed`) and
//! `LOAD_SECTIONS` (`matrix,ttfb,memory`); `LOAD_PROXY_BIN` measures another
//! quota-proxy binary (a copy built from another commit) with this bench.

use std::io;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use loadbench::loadgen::{self, Limits};
use loadbench::procs::{self, FloorProcess, NginxProcess, ProxyProcess, RedisProcess};
use loadbench::runner::{self, Matrix, Row, Subject, UploadMemory, show};
use loadbench::scenarios::{self, Shape, StoreSpec, Target, UploadKind};
use loadbench::upstream::Upstream;

/// The size of the upload in the memory test.
const UPLOAD_BYTES: usize = 10 * 1024 * 1024;

/// The pause after the first streamed chunk in the time-to-first-byte test.
const TTFB_GAP_MS: u64 = 5;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let [_, command, listen, upstream, threads] = args.as_slice()
        && command == "floor"
    {
        // The bench re-run as its hyper floor (`support/floor.rs`).
        return match run_floor(listen, upstream, threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hyper floor failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !args.iter().any(|arg| arg == "--bench") {
        println!(
            "load bench: not run under `cargo test` (run it with `cargo bench --bench load`); \
             tests/it/load_smoke.rs covers its machinery"
        );
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("load bench: some runs had errors (see the table)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("load bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_floor(listen: &str, upstream: &str, threads: &str) -> io::Result<()> {
    let listener = std::net::TcpListener::bind(listen)?;
    let upstream = upstream.parse().map_err(io::Error::other)?;
    let threads = threads.parse().map_err(io::Error::other)?;
    loadbench::floor::run(listener, upstream, threads)
}

struct Options {
    measure: Duration,
    warm_up: Duration,
    rounds: usize,
    max_requests: u64,
    conns: Vec<usize>,
    idle_conns: usize,
    proxy_threads: usize,
    upstream_threads: usize,
    skip_nginx: bool,
    skip_floor: bool,
    skip_redis: bool,
    redis_cpus: Option<Vec<usize>>,
    shapes: Vec<Shape>,
    sections: Vec<String>,
}

impl Options {
    fn from_env() -> Options {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let secs = |name: &str, default: f64| {
            Duration::from_secs_f64(var(name).and_then(|v| v.parse().ok()).unwrap_or(default))
        };
        let number =
            |name: &str, default: usize| var(name).and_then(|v| v.parse().ok()).unwrap_or(default);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Options {
            measure: secs("LOAD_SECS", 2.0),
            warm_up: secs("LOAD_WARMUP_SECS", 0.5),
            rounds: number("LOAD_ROUNDS", 3),
            max_requests: number("LOAD_MAX_REQUESTS", 1_000_000) as u64,
            conns: var("LOAD_CONNS")
                .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect())
                .unwrap_or_else(|| vec![1, 64, 256]),
            idle_conns: number("LOAD_IDLE_CONNS", 1000),
            proxy_threads: number("LOAD_PROXY_THREADS", cores),
            upstream_threads: number("LOAD_UPSTREAM_THREADS", 1),
            skip_nginx: var("LOAD_SKIP_NGINX").is_some(),
            skip_floor: var("LOAD_SKIP_FLOOR").is_some(),
            skip_redis: var("LOAD_SKIP_REDIS").is_some(),
            redis_cpus: var("LOAD_REDIS_CPUS")
                .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect()),
            shapes: match var("LOAD_SHAPES") {
                Some(keys) => Shape::ALL
                    .into_iter()
                    .filter(|s| keys.split(',').any(|k| k.trim() == s.key()))
                    .collect(),
                None => Shape::ALL.to_vec(),
            },
            sections: var("LOAD_SECTIONS")
                .unwrap_or_else(|| "matrix,ttfb,memory".to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect(),
        }
    }
}

impl Options {
    fn section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s == name)
    }
}

fn run() -> io::Result<bool> {
    let options = Options::from_env();
    raise_open_files_limit();
    let built = std::env::var_os("LOAD_PROXY_BIN").filter(|v| !v.is_empty());
    let binary = built
        .as_deref()
        .map_or(Path::new(env!("CARGO_BIN_EXE_quota-proxy")), Path::new);
    println!("quota-proxy binary: {}", binary.display());
    let dir = tempfile::tempdir()?;
    // The load generator's runtime: one thread, so it takes at most one of
    // the cores the servers need.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    println!("# quota-proxy load bench\n");
    println!("{}", machine());
    println!(
        "proxy: {} (tokio worker threads: {}); upstream: hyper, {} thread(s), in the bench process; \
         load generator: 1 thread, in the bench process; no CPU pinning: all share the cores.\n",
        binary.display(),
        options.proxy_threads,
        options.upstream_threads
    );

    let upstream = Upstream::start(options.upstream_threads)?;
    let redis = if options.skip_redis {
        println!("Redis: skipped (LOAD_SKIP_REDIS)\n");
        None
    } else {
        match RedisProcess::start(dir.path()) {
            Ok(redis) => {
                if let Some(cpus) = &options.redis_cpus {
                    redis.pin_to(cpus)?;
                    println!("redis-server pinned to CPUs {cpus:?} (LOAD_REDIS_CPUS)\n");
                }
                Some(redis)
            }
            Err(e) => {
                println!("Redis: skipped ({e}); install redis-server to measure the Redis store\n");
                None
            }
        }
    };
    let nginx_binary = procs::find_program("nginx").filter(|_| !options.skip_nginx);
    let nginx = match &nginx_binary {
        Some(binary) => Some(NginxProcess::start(
            binary,
            dir.path(),
            upstream.addr(),
            options.proxy_threads,
        )?),
        None => {
            println!(
                "nginx: not installed (or LOAD_SKIP_NGINX); the peer comparison is skipped. \
                 Install it with `apt-get install -y nginx-light` to compare.\n"
            );
            None
        }
    };
    let floor = if options.skip_floor {
        None
    } else {
        let bench = std::env::current_exe()?;
        Some(FloorProcess::start(
            &bench,
            dir.path(),
            upstream.addr(),
            options.proxy_threads,
        )?)
    };
    let start_proxy = |name: &str, store: &StoreSpec| {
        ProxyProcess::start(
            binary,
            dir.path(),
            name,
            Some(options.proxy_threads),
            |port| scenarios::proxy_config(port, upstream.addr(), store),
        )
    };
    let memory = start_proxy("qp-memory", &StoreSpec::Memory)?;
    let on_redis = match &redis {
        Some(redis) => Some(start_proxy("qp-redis", &StoreSpec::Redis(redis.url()))?),
        None => None,
    };

    let mut subjects = vec![Subject {
        target: Target::Direct,
        addr: upstream.addr(),
        cpu: Box::new(|| f64::NAN),
        redis_calls: None,
    }];
    if let Some(nginx) = &nginx {
        let pids = nginx.pids();
        subjects.push(Subject {
            target: Target::Nginx,
            addr: nginx.addr(),
            cpu: Box::new(move || {
                pids.iter()
                    .map(|&pid| procs::cpu_seconds(pid).unwrap_or(f64::NAN))
                    .sum()
            }),
            redis_calls: None,
        });
    }
    if let Some(floor) = &floor {
        subjects.push(one_process(Target::Floor, floor.addr(), floor.pid()));
    }
    subjects.push(one_process(Target::Memory, memory.addr(), memory.pid()));
    if let (Some(proxy), Some(redis)) = (&on_redis, &redis) {
        let (port, redis_pid) = (redis.port(), redis.pid());
        subjects.push(Subject {
            redis_calls: Some(Box::new(move || {
                (
                    procs::redis_calls(port).unwrap_or_default(),
                    procs::cpu_seconds(redis_pid).unwrap_or(f64::NAN),
                )
            })),
            ..one_process(Target::Redis, proxy.addr(), proxy.pid())
        });
    }

    let matrix = Matrix {
        conns: options.conns.clone(),
        shapes: if options.section("matrix") {
            options.shapes.clone()
        } else {
            Vec::new()
        },
        warm_up: Limits {
            max_requests: options.max_requests,
            max_time: options.warm_up,
        },
        measure: Limits {
            max_requests: options.max_requests,
            max_time: options.measure,
        },
        rounds: options.rounds,
    };
    println!(
        "load before: {}; each run: {:?} warm-up, then up to {} requests or {:?}; \
         {} rounds, each cell shows its median run by req/s\n",
        loadavg(),
        options.warm_up,
        options.max_requests,
        options.measure,
        options.rounds
    );
    let rows = runner::run_matrix(&runtime, &subjects, &matrix, |row| {
        eprintln!(
            "  {:>3} conns  {:<26} {:<10} {:>8.0} req/s  p50 {:>8}  p99 {:>8}{}",
            row.conns,
            row.shape.name(),
            row.target.name(),
            row.stats.rps(),
            show(row.stats.latency_at(0.5)),
            show(row.stats.latency_at(0.99)),
            if row.stats.clean() { "" } else { "  PROBLEMS" }
        );
    })?;
    println!("## Throughput and latency\n");
    println!("{}", runner::render_rows(&rows));
    let peak_memory = procs::memory_bytes(memory.pid(), "VmHWM").unwrap_or(0);
    let peak_redis = on_redis
        .as_ref()
        .and_then(|p| procs::memory_bytes(p.pid(), "VmHWM").ok());
    println!(
        "Peak RSS (VmHWM) after the matrix: qp-memory {}, qp-redis {}\n",
        mb(peak_memory),
        peak_redis.map(mb).unwrap_or_else(|| "-".to_owned())
    );

    // Time to first byte of a streamed answer, at one connection.
    let mut ttfb = Vec::new();
    if options.section("ttfb") {
        println!("## Streaming: time to first body byte, 1 connection\n");
        println!(
            "The upstream sends its first chunk at once and the rest {TTFB_GAP_MS} ms later; \
         the proxies run the request as a flagged, inspected stream.\n"
        );
        println!("| server | TTFB p50 | TTFB p99 | whole answer p50 | requests |");
        println!("|---|---:|---:|---:|---:|");
        for subject in &subjects {
            let workload = scenarios::ttfb_workload(subject.target, TTFB_GAP_MS);
            let limits = Limits {
                max_requests: 400,
                max_time: Duration::from_secs(4),
            };
            let stats = runtime.block_on(async {
                let conns = loadgen::connect(subject.addr, 1).await?;
                let (conns, _) = loadgen::drive(
                    conns,
                    &workload,
                    Limits {
                        max_requests: 20,
                        max_time: Duration::from_secs(1),
                    },
                )
                .await;
                Ok::<_, io::Error>(loadgen::drive(conns, &workload, limits).await.1)
            })?;
            println!(
                "| {} | {} | {} | {} | {}{} |",
                subject.target.name(),
                show(stats.ttfb_at(0.5)),
                show(stats.ttfb_at(0.99)),
                show(stats.latency_at(0.5)),
                stats.requests,
                if stats.clean() { "" } else { " (problems)" }
            );
            ttfb.push((subject.target, stats));
        }
        println!();
    }

    // Idle keep-alive connections, on a fresh proxy.
    let mut uploads: Vec<(UploadKind, UploadMemory)> = Vec::new();
    let mut idle_peak = None;
    if options.section("memory") {
        println!("## Memory\n");
        let idle = {
            let fresh = start_proxy("qp-idle", &StoreSpec::Memory)?;
            let warm = |shape: Shape| {
                let workload = scenarios::workload(shape, Target::Memory);
                runtime.block_on(async {
                    let conns = loadgen::connect(fresh.addr(), 64).await?;
                    Ok::<_, io::Error>(
                        loadgen::drive(
                            conns,
                            &workload,
                            Limits {
                                max_requests: 20_000,
                                max_time: Duration::from_secs(2),
                            },
                        )
                        .await
                        .1,
                    )
                })
            };
            warm(Shape::PassThrough)?;
            let before = procs::memory_bytes(fresh.pid(), "VmRSS")?;
            let request = scenarios::requests(Shape::PassThrough).remove(0);
            let held = runtime.block_on(runner::idle_connections(
                fresh.addr(),
                options.idle_conns,
                &request,
            ))?;
            std::thread::sleep(Duration::from_millis(500));
            let rss = procs::memory_bytes(fresh.pid(), "VmRSS")?;
            let hwm = procs::memory_bytes(fresh.pid(), "VmHWM")?;
            let nginx_rss = nginx.as_ref().map(|n| {
                // Its workers hold the same idle connections too.
                let held = runtime.block_on(runner::idle_connections(
                    n.addr(),
                    options.idle_conns,
                    &request,
                ));
                std::thread::sleep(Duration::from_millis(500));
                let sum: u64 = n
                    .pids()
                    .iter()
                    .map(|&pid| procs::memory_bytes(pid, "VmRSS").unwrap_or(0))
                    .sum();
                drop(held);
                sum
            });
            drop(held);
            (before, rss, hwm, nginx_rss)
        };
        println!(
            "{} idle keep-alive connections on a fresh qp-memory (after a 64-connection pass-through warm-up): \
         RSS {} before, {} while holding them; peak (VmHWM) {}. nginx, all processes summed, \
         holding the same: {}.\n",
            options.idle_conns,
            mb(idle.0),
            mb(idle.1),
            mb(idle.2),
            idle.3.map(mb).unwrap_or_else(|| "-".to_owned())
        );

        // One 10 MB upload, each on a fresh proxy.
        println!("| 10 MB upload | peak RSS before | after | growth ÷ body |");
        println!("|---|---:|---:|---:|");
        idle_peak = Some(idle.2);
        for kind in [
            UploadKind::PassThrough,
            UploadKind::Json,
            UploadKind::Multipart,
        ] {
            let fresh = start_proxy("qp-upload", &StoreSpec::Memory)?;
            // A few requests first, so the runtime and pools exist.
            let workload = scenarios::workload(Shape::Allowed, Target::Memory);
            runtime.block_on(async {
                let conns = loadgen::connect(fresh.addr(), 4).await?;
                loadgen::drive(
                    conns,
                    &workload,
                    Limits {
                        max_requests: 2000,
                        max_time: Duration::from_secs(2),
                    },
                )
                .await;
                Ok::<_, io::Error>(())
            })?;
            let upload = scenarios::upload(UPLOAD_BYTES, kind);
            let memory = runner::upload_memory(&runtime, fresh.pid(), fresh.addr(), &upload)?;
            println!(
                "| {} | {} | {} | {:.2} |",
                kind.name(),
                mb(memory.before),
                mb(memory.after),
                memory.copies()
            );
            uploads.push((kind, memory));
        }
        println!();
    }
    println!("load after: {}\n", loadavg());

    println!("## Targets\n");
    let verdicts = targets(&rows, &ttfb, idle_peak, &uploads);
    for (ok, text) in &verdicts {
        println!("- {} {text}", if *ok { "HOLDS:" } else { "MISSED:" });
    }
    for text in [floor_context(&rows), flagged_ceiling(&rows)]
        .into_iter()
        .flatten()
    {
        println!("\n{text}");
    }
    drop(subjects);
    drop(on_redis);
    drop(memory);
    drop(nginx);
    drop(floor);
    drop(redis);
    drop(upstream);
    Ok(rows.iter().all(|row| row.stats.clean()))
}

/// A server that is one process, its CPU read from `/proc/<pid>`.
fn one_process(target: Target, addr: std::net::SocketAddr, pid: u32) -> Subject {
    Subject {
        target,
        addr,
        cpu: Box::new(move || procs::cpu_seconds(pid).unwrap_or(f64::NAN)),
        redis_calls: None,
    }
}

/// Pass-through at 64 connections against the hyper floor: how far nginx
/// is from the least any hyper proxy does, and quota-proxy from that.
fn floor_context(rows: &[Row]) -> Option<String> {
    let row = |target| find(rows, Shape::PassThrough, target, 64);
    let (nginx, floor, qp) = (
        row(Target::Nginx)?,
        row(Target::Floor)?,
        row(Target::Memory)?,
    );
    Some(format!(
        "Pass-through against the hyper floor (64 conns): floor ÷ nginx {} req/s, \
         qp-memory ÷ floor {} req/s; CPU s/10k req: nginx {:.2}, floor {:.2}, qp-memory {:.2}.",
        runner::paired(floor, nginx)?,
        runner::paired(qp, floor)?,
        nginx.cpu_per_10k,
        floor.cpu_per_10k,
        qp.cpu_per_10k
    ))
}

/// Flagged-and-allowed at 64 connections against the hyper floor: what
/// the flagged request's shape alone costs (a POST with a body, an answer
/// with a report), and the most each store's flagged ÷ pass-through could
/// be if quota-proxy's own quota work cost nothing.
///
/// Every process shares the machine's cores, so a request's cost in machine
/// time is cores ÷ req/s. The floor's two rows give what the shape adds;
/// added to quota-proxy's pass-through cost, that is the cheapest a flagged
/// request through it could be (the cores cancel out of the ratio). On
/// Redis, redis-server's own CPU per allowed request is added too; that
/// bound needs the cores, so it is left out when the bench's redis-server
/// is pinned apart (`LOAD_REDIS_CPUS`). Each bound is computed round by
/// round from that round's runs, and summarised like a paired ratio.
fn flagged_ceiling(rows: &[Row]) -> Option<String> {
    let row = |shape, target| find(rows, shape, target, 64);
    let floor_pass = row(Shape::PassThrough, Target::Floor)?;
    let floor_flagged = row(Shape::Allowed, Target::Floor)?;
    let qp_pass = row(Shape::PassThrough, Target::Memory)?;
    // Round by round: [floor pass, floor flagged, qp pass(, qp-redis pass)].
    let ceiling = runner::by_round(&[floor_pass, floor_flagged, qp_pass], |rps| {
        1.0 / (1.0 + rps[2] * (1.0 / rps[1] - 1.0 / rps[0]))
    })?;
    let mut text = format!(
        "Flagged, allowed against the hyper floor (64 conns): the floor forwards it at {} \
         its own pass-through req/s; with quota work that cost nothing, qp-memory's flagged ÷ \
         pass-through could reach {} at most",
        runner::paired(floor_flagged, floor_pass)?,
        ceiling,
    );
    let redis_cpu = row(Shape::Allowed, Target::Redis)
        .and_then(|row| row.redis_per_request)
        .map(|(_, _, cpu_per_10k)| cpu_per_10k / 10_000.0);
    if let (Some(redis_pass), Some(redis_cpu), None) = (
        row(Shape::PassThrough, Target::Redis),
        redis_cpu,
        std::env::var_os("LOAD_REDIS_CPUS"),
    ) {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
        let redis_ceiling = runner::by_round(&[floor_pass, floor_flagged, redis_pass], |rps| {
            let pass = cores / rps[2];
            let shape = cores * (1.0 / rps[1] - 1.0 / rps[0]);
            pass / (pass + shape + redis_cpu)
        });
        if let Some(redis_ceiling) = redis_ceiling {
            text.push_str(&format!(
                ", and qp-redis's, with redis-server's own {:.0} µs of CPU per allowed request \
                 on the same cores, {redis_ceiling} at most",
                redis_cpu * 1e6
            ));
        }
    }
    text.push('.');
    Some(text)
}

fn find(rows: &[Row], shape: Shape, target: Target, conns: usize) -> Option<&Row> {
    rows.iter()
        .find(|r| r.shape == shape && r.target == target && r.conns == conns)
}

/// Each target of the issue with whether it held in this run.
fn targets(
    rows: &[Row],
    ttfb: &[(Target, loadgen::RunStats)],
    idle_peak: Option<u64>,
    uploads: &[(UploadKind, UploadMemory)],
) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let p =
        |shape, target, conns, q| find(rows, shape, target, conns).map(|r| r.stats.latency_at(q));
    let pass = |target| find(rows, Shape::PassThrough, target, 64);
    if let Some(ratio) = pass(Target::Memory)
        .zip(pass(Target::Nginx))
        .and_then(|(qp, nginx)| runner::paired(qp, nginx))
    {
        out.push((
            ratio.median >= 1.0,
            format!("pass-through throughput ≥ 1.0× nginx (64 conns): {ratio}"),
        ));
    }
    if let Some(ratio) = pass(Target::Memory)
        .zip(pass(Target::Nginx))
        .and_then(|(qp, nginx)| runner::paired_p99(qp, nginx))
    {
        out.push((
            ratio.median <= 1.0,
            format!("pass-through p99 ≤ nginx p99 (64 conns): p99 ÷ nginx's {ratio}"),
        ));
    }
    for (target, floor) in [(Target::Redis, 0.6), (Target::Memory, 0.9)] {
        let row = |shape| find(rows, shape, target, 64);
        if let Some(ratio) = row(Shape::Allowed)
            .zip(row(Shape::PassThrough))
            .and_then(|(flagged, pass)| runner::paired(flagged, pass))
        {
            out.push((
                ratio.median >= floor,
                format!(
                    "flagged-and-allowed ≥ {floor}× pass-through, {} (64 conns): {ratio}",
                    target.name(),
                ),
            ));
        }
    }
    for (shape, target, budget_us) in [
        (Shape::PassThrough, Target::Memory, 100.0),
        (Shape::Allowed, Target::Redis, 300.0),
    ] {
        if let (Some(qp), Some(direct)) =
            (p(shape, target, 1, 0.5), p(shape, Target::Direct, 1, 0.5))
        {
            let added = (qp.as_secs_f64() - direct.as_secs_f64()) * 1e6;
            out.push((
                added <= budget_us,
                format!(
                    "added p50 latency at 1 conn, {} on {}: {} − {} direct = {added:.0} µs (≤ {budget_us:.0} µs)",
                    shape.name(),
                    target.name(),
                    show(qp),
                    show(direct)
                ),
            ));
        }
    }
    let redis_rows = |shape, all: bool| {
        rows.iter()
            .filter(move |r| r.shape == shape && r.target == Target::Redis)
            .filter_map(|r| r.redis_per_request)
            .map(|(commands, trips, _)| if all { commands } else { trips })
            .fold(0.0f64, f64::max)
    };
    if rows.iter().any(|r| r.target == Target::Redis) {
        let pass = redis_rows(Shape::PassThrough, true);
        out.push((
            pass == 0.0,
            format!("Redis commands per pass-through request: {pass:.3} (must be 0)"),
        ));
        let flagged = redis_rows(Shape::Allowed, false);
        out.push((
            flagged <= 2.0 + 1e-9,
            format!(
                "Redis round trips per flagged request (highest over connection counts): {flagged:.3} (≤ 2)"
            ),
        ));
    }
    if let Some(idle_peak) = idle_peak {
        out.push((
            idle_peak <= 40 * 1024 * 1024,
            format!(
                "peak RSS with 1,000 idle keep-alive connections: {} (≤ 40 MB)",
                mb(idle_peak)
            ),
        ));
    }
    for (kind, memory) in uploads {
        if *kind != UploadKind::PassThrough {
            out.push((
                memory.copies() <= 1.1,
                format!(
                    "a 10 MB upload ({}) grows peak RSS by {:.2} bodies (≤ 1 copy)",
                    kind.name(),
                    memory.copies()
                ),
            ));
        }
    }
    let direct = ttfb.iter().find(|(t, _)| *t == Target::Direct);
    for (target, stats) in ttfb.iter().filter(|(t, _)| t.enforces()) {
        if let Some((_, direct)) = direct {
            let added = stats.ttfb_at(0.5).as_secs_f64() - direct.ttfb_at(0.5).as_secs_f64();
            out.push((
                added <= 0.001,
                format!(
                    "streaming TTFB p50 at 1 conn, {}: {} vs {} direct (+{:.0} µs, ≤ 1 ms)",
                    target.name(),
                    show(stats.ttfb_at(0.5)),
                    show(direct.ttfb_at(0.5)),
                    added * 1e6
                ),
            ));
        }
    }
    out
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The machine in one line: cores, memory, CPU model, kernel.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| format!("{:.1} GB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "machine: {cores} cores ({model}), {memory} RAM, Linux {}",
        kernel.trim()
    )
}

/// Lifts the soft open-files limit to the hard one (inherited by the
/// servers this bench starts): 1,000 idle connections need the fds.
fn raise_open_files_limit() {
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
