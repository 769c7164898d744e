//! The load bench: `cargo bench --bench load`.
//!
//! Starts, on loopback, a fast upstream (in this process, a runtime of its
//! own), quota-proxy as a separate process (the binary cargo built for this
//! bench, with a generated config) on the memory store and on the Redis
//! store (a `redis-server` it starts with `--save "" --appendonly no`),
//! nginx in front of the same upstream when it is installed, and the hyper
//! floor (`crates/loadbench/src/floor.rs`: this binary re-run as
//! `load floor …`).
//!
//! First the **headline** (issue 21, `crates/loadbench/src/headline.rs`):
//! quota-proxy with one serving thread against nginx with one worker, each
//! started for it, 64 connections, closed loop, rounds interleaved;
//! pass-through GET, pass-through POST of a 500-byte JSON body, and
//! flagged-and-allowed (10,000 users) on the memory store and on Redis. It
//! prints the four ratios (qp-memory ÷ nginx for both pass-throughs,
//! flagged ÷ the same proxy's pass-through POST on each store), each paired
//! round by round with its range, the p99s, server CPU per 10k requests and
//! Redis's own µs per flagged request (`INFO commandstats`), as the Markdown
//! table BENCHMARKS.md opens with, a verdict on each target.
//!
//! Then the **matrix**: drives each server with a bounded number of
//! keep-alive HTTP/1.1 requests over 1, 64 and 256 connections; prints
//! requests/s, latency percentiles, server CPU per 10k requests, Redis
//! commands per request, ratios to nginx (taken round by round, see
//! `runner::paired`); then the streaming (**ttfb**), idle-connection and
//! upload tests (**memory**), and checks the targets of BENCHMARKS.md.
//! Everything it starts is stopped when it ends.
//!
//! Under `cargo test` (no `--bench` argument, no `floor`) it does nothing:
//! `tests/it/load_smoke.rs` runs the same machinery briefly instead.
//!
//! Knobs (environment): `LOAD_SECS` (measured seconds per run, default 2),
//! `LOAD_ROUNDS` (3: the headline and the matrix run that often, each cell
//! reports its median run and each ratio the median of the rounds'
//! ratios), `LOAD_WARMUP_SECS` (0.5), `LOAD_MAX_REQUESTS` (per run,
//! 1 000 000), `LOAD_CONNS` (the matrix's, `1,64,256`),
//! `LOAD_HEADLINE_CONNS` (the headline's, 64), `LOAD_HEADLINE_THREADS`
//! (the headline's quota-proxy serving `threads` and nginx
//! `worker_processes`, both; 1; 2 gives issue 21's "2 threads vs 2
//! workers"), `LOAD_PROXY_THREADS` (the same for the matrix and the memory
//! section; default: the number of cores), `LOAD_IDLE_CONNS` (1000; from
//! 10000 the memory section holds 1,000 first, then that many, with a
//! verdict for each; the open-files limit is raised to the hard limit and
//! checked), `LOAD_UPSTREAM_THREADS` (1),
//! `LOAD_SKIP_NGINX=1`, `LOAD_SKIP_FLOOR=1`, `LOAD_SKIP_REDIS=1`,
//! `LOAD_REDIS_CPUS` (`1`: redis-server on those CPUs only; run the bench
//! itself under `taskset -c 0` to keep everything else off them); for
//! quicker iterations `LOAD_SHAPES` (the matrix's,
//! `pass,pass-post,unflagged,allowed,denied,streamed`) and `LOAD_SECTIONS`
//! (`headline,matrix,ttfb,memory`, and `cluster` when named: issue 21's
//! point 5, a 1- and a 3-master Redis Cluster each held by a cgroup to
//! `LOAD_CLUSTER_CORES` of a CPU, default 0.1, which needs root; they run
//! in the order headline, cluster, matrix, ttfb, memory whatever the order
//! given); `LOAD_PROXY_BIN` measures another quota-proxy binary (a
//! copy built from another commit) with this bench.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use loadbench::cluster::ClusterProcess;
use loadbench::headline;
use loadbench::loadgen::{self, Limits};
use loadbench::options::Options;
use loadbench::procs::{self, FloorProcess, RedisProcess};
use loadbench::runner::{self, Row, Subject, UploadMemory, show};
use loadbench::scenarios::{self, Shape, StoreSpec, Target, UploadKind};
use loadbench::servers::{Servers, one_process};
use loadbench::upstream::Upstream;
use loadbench::verdicts::{IDLE_STEP, flagged_ceiling, floor_context, mb, targets};
use quota_proxy::server::PARK_AFTER;

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

fn run() -> io::Result<bool> {
    let options = Options::from_env();
    let open_files = raise_open_files_limit();
    // The bench holds the idle connections' client ends, each server their
    // other ends; the rest (matrix, pools, logs) fits in the margin.
    let needed = options.idle_conns as u64 + 1024;
    if options.section("memory") && open_files < needed {
        return Err(io::Error::other(format!(
            "LOAD_IDLE_CONNS={} needs about {needed} open files per process, and the hard \
             limit is {open_files}: raise it (`ulimit -Hn`, or LimitNOFILE) or lower LOAD_IDLE_CONNS",
            options.idle_conns
        )));
    }
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
    if nginx_binary.is_none() {
        println!(
            "nginx: not installed (or LOAD_SKIP_NGINX); the peer comparison is skipped. \
             Install it with `apt-get install -y nginx-light` to compare.\n"
        );
    }
    let servers = Servers {
        binary,
        upstream: upstream.addr(),
        redis: redis.as_ref(),
        nginx: nginx_binary.as_deref(),
    };
    let mut clean = true;
    if options.section("headline") {
        clean &= headline_section(&options, &runtime, &servers, dir.path())?;
    }
    if options.section("cluster") {
        clean &= cluster_section(&options, &runtime, &servers, dir.path())?;
    }
    if !["matrix", "ttfb", "memory"]
        .iter()
        .any(|name| options.section(name))
    {
        return Ok(clean);
    }

    let clients = options
        .idle_conns
        .max(options.conns.iter().copied().max().unwrap_or(0));
    let proxies = servers.proxies(dir.path(), options.proxy_threads, clients)?;
    let floor = start_floor(&options, dir.path(), upstream.addr(), options.proxy_threads)?;
    let mut subjects = proxies.subjects();
    subjects.insert(
        0,
        Subject {
            target: Target::Direct,
            addr: upstream.addr(),
            cpu: Box::new(|| f64::NAN),
            redis_calls: None,
        },
    );
    if let Some(floor) = &floor {
        // After nginx, before quota-proxy.
        let at = 1 + usize::from(proxies.nginx.is_some());
        subjects.insert(at, one_process(Target::Floor, floor.addr(), floor.pid()));
    }

    let matrix = options.matrix(
        options.conns.clone(),
        if options.section("matrix") {
            options.shapes.clone()
        } else {
            Vec::new()
        },
    );
    println!(
        "load before: {}; each run: {:?} warm-up, then up to {} requests or {:?}; \
         {} rounds, each cell shows its median run by req/s\n",
        loadavg(),
        options.warm_up,
        options.max_requests,
        options.measure,
        options.rounds
    );
    let rows = runner::run_matrix(&runtime, &subjects, &matrix, progress)?;
    println!("## Throughput and latency\n");
    println!("{}", runner::render_rows(&rows));
    let peak_memory = procs::memory_bytes(proxies.memory.pid(), "VmHWM").unwrap_or(0);
    let peak_redis = proxies
        .on_redis
        .as_ref()
        .and_then(|(p, _, _)| procs::memory_bytes(p.pid(), "VmHWM").ok());
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
    let mut idle_rss = Vec::new();
    if options.section("memory") {
        println!("## Memory\n");
        let fresh = servers.proxy(
            dir.path(),
            "qp-idle",
            &StoreSpec::Memory,
            options.proxy_threads,
        )?;
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
        // Held in steps: 1,000 first (the 40 MB target), then the rest.
        let mut held = Vec::new();
        for count in [IDLE_STEP.min(options.idle_conns), options.idle_conns] {
            if count <= held.len() {
                continue;
            }
            held.extend(runtime.block_on(runner::idle_connections(
                fresh.addr(),
                count - held.len(),
                &request,
            ))?);
            // Idle means past the proxy's park delay (src/server/park.rs): an
            // HTTP/1 connection's buffers are handed back one to two
            // `PARK_AFTER`s after its last answer, and the pages within
            // about 10 s.
            std::thread::sleep(2 * PARK_AFTER + Duration::from_millis(500));
            let rss = procs::settled_rss(fresh.pid(), Duration::from_secs(20))?;
            let hwm = procs::memory_bytes(fresh.pid(), "VmHWM")?;
            println!(
                "{count} idle keep-alive connections on a fresh qp-memory (after a 64-connection \
                 pass-through warm-up): RSS {} before, {} while holding them (once it stopped \
                 falling); peak (VmHWM) {}, reached while opening them.\n",
                mb(before),
                mb(rss),
                mb(hwm),
            );
            idle_rss.push((count, rss));
        }
        // Released before nginx gets as many: this process holds both ends' fds otherwise.
        drop(held);
        drop(fresh);
        if let Some(nginx) = &proxies.nginx {
            // Its workers hold the same idle connections too.
            let held = runtime.block_on(runner::idle_connections(
                nginx.addr(),
                options.idle_conns,
                &request,
            ))?;
            std::thread::sleep(2 * PARK_AFTER + Duration::from_millis(500));
            let sum: u64 = nginx
                .pids()
                .iter()
                .map(|&pid| procs::memory_bytes(pid, "VmRSS").unwrap_or(0))
                .sum();
            drop(held);
            println!(
                "nginx, all processes summed, holding {} idle keep-alive connections: {}.\n",
                options.idle_conns,
                mb(sum)
            );
        }

        // One 10 MB upload, each on a fresh proxy.
        println!("| 10 MB upload | peak RSS before | after | growth ÷ body |");
        println!("|---|---:|---:|---:|");
        for kind in [
            UploadKind::PassThrough,
            UploadKind::Json,
            UploadKind::Multipart,
        ] {
            let fresh = servers.proxy(
                dir.path(),
                "qp-upload",
                &StoreSpec::Memory,
                options.proxy_threads,
            )?;
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
    let verdicts = targets(&rows, &ttfb, &idle_rss, &uploads);
    for (ok, text) in &verdicts {
        println!("- {} {text}", if *ok { "HOLDS:" } else { "MISSED:" });
    }
    for text in [
        floor_context(&rows, Shape::PassThrough, 64),
        flagged_ceiling(&rows, Shape::PassThrough, 64),
    ]
    .into_iter()
    .flatten()
    {
        println!("\n{text}");
    }
    drop(subjects);
    drop(proxies);
    drop(floor);
    drop(redis);
    drop(upstream);
    Ok(clean && rows.iter().all(|row| row.stats.clean()))
}

/// The hyper floor (this binary re-run as `load floor`) with `threads`
/// threads in front of `upstream`, its log in `dir`; `None` under
/// `LOAD_SKIP_FLOOR`.
fn start_floor(
    options: &Options,
    dir: &Path,
    upstream: SocketAddr,
    threads: usize,
) -> io::Result<Option<FloorProcess>> {
    if options.skip_floor {
        return Ok(None);
    }
    let bench = std::env::current_exe()?;
    FloorProcess::start(&bench, dir, upstream, threads).map(Some)
}

/// The headline (issue 21): nginx with `LOAD_HEADLINE_THREADS` workers and
/// quota-proxy with as many serving threads, started for it (their files
/// in `dir/headline`), driven over [`headline::SHAPES`] at
/// `LOAD_HEADLINE_CONNS` connections, rounds interleaved as in the matrix,
/// then stopped, the hyper floor with as many threads beside them. Prints
/// the headline table, the floor lines and the runs behind it; true
/// when every answer was the expected one.
fn headline_section(
    options: &Options,
    runtime: &tokio::runtime::Runtime,
    servers: &Servers<'_>,
    dir: &Path,
) -> io::Result<bool> {
    let dir = dir.join("headline");
    std::fs::create_dir_all(&dir)?;
    let setup = headline::Setup {
        conns: options.headline_conns,
        threads: options.headline_threads,
        rounds: options.rounds,
    };
    let proxies = servers.proxies(&dir, setup.threads, setup.conns)?;
    let floor = start_floor(options, &dir, servers.upstream, setup.threads)?;
    let mut subjects = proxies.subjects();
    if let Some(floor) = &floor {
        subjects.push(one_process(Target::Floor, floor.addr(), floor.pid()));
    }
    println!(
        "## Headline: {} quota-proxy serving thread(s) vs {} nginx worker(s), {} connections\n",
        setup.threads, setup.threads, setup.conns
    );
    println!(
        "load before: {}; closed loop; each run {:?} warm-up, then up to {} requests or {:?}; \
         {} rounds, interleaved; every ratio the median of the rounds' ratios.\n",
        loadavg(),
        options.warm_up,
        options.max_requests,
        options.measure,
        options.rounds
    );
    let matrix = options.matrix(vec![setup.conns], headline::SHAPES.to_vec());
    let rows = runner::run_matrix(runtime, &subjects, &matrix, progress)?;
    println!("{}", headline::render(&rows, setup));
    // What the misses are measured against: the least a hyper proxy does.
    for text in [
        floor_context(&rows, Shape::PassThrough, setup.conns),
        floor_context(&rows, Shape::PassThroughPost, setup.conns),
        flagged_ceiling(&rows, Shape::PassThroughPost, setup.conns),
    ]
    .into_iter()
    .flatten()
    {
        println!("{text}\n");
    }
    println!(
        "req/s, p99 and CPU (the server's processes) are each side's median run, numerator \
         first. The runs behind it:\n"
    );
    println!("{}", runner::render_rows(&rows));
    Ok(rows.iter().all(|row| row.stats.clean()))
}

/// Issue 21, point 5: flagged-and-allowed requests (10,000 users,
/// `LOAD_HEADLINE_CONNS` connections) through quota-proxy (one serving
/// thread per core) on a one-master and on a three-master Redis Cluster,
/// every redis-server held by a cgroup to `LOAD_CLUSTER_CORES` of a CPU
/// (0.1), so that Redis is what limits them; rounds interleaved. Prints the
/// runs, how busy the masters were against their cap, and three masters'
/// requests/s over one's. Needs root (the cgroups); true when every answer
/// was the expected one.
fn cluster_section(
    options: &Options,
    runtime: &tokio::runtime::Runtime,
    servers: &Servers<'_>,
    dir: &Path,
) -> io::Result<bool> {
    let dir = dir.join("cluster");
    let cores = options.cluster_cores;
    let mut subjects = Vec::new();
    // Kept until the runs end: each cluster with the proxy in front of it.
    let mut held = Vec::new();
    for (masters, target) in [(1, Target::ClusterOne), (3, Target::ClusterThree)] {
        let cluster = std::sync::Arc::new(ClusterProcess::start(
            &dir.join(target.name()),
            masters,
            cores,
        )?);
        let store = StoreSpec::Cluster(cluster.urls());
        let proxy = servers.proxy(&dir, target.name(), &store, options.proxy_threads)?;
        let calls = std::sync::Arc::clone(&cluster);
        subjects.push(Subject {
            redis_calls: Some(Box::new(move || calls.calls())),
            ..one_process(target, proxy.addr(), proxy.pid())
        });
        held.push((cluster, proxy));
    }
    println!(
        "## Cluster: flagged on a 1-master vs a 3-master Redis Cluster, each master capped at \
         {cores} CPU, {} connections, {} quota-proxy serving threads\n",
        options.headline_conns, options.proxy_threads
    );
    let matrix = options.matrix(vec![options.headline_conns], vec![Shape::Allowed]);
    let rows = runner::run_matrix(runtime, &subjects, &matrix, progress)?;
    println!("{}", runner::render_rows(&rows));
    for (row, (cluster, _)) in rows.iter().zip(&held) {
        if let Some(redis) = &row.redis {
            let busy = redis.cpu_per_10k * row.stats.rps() / 10_000.0;
            let cap = cores * cluster.masters() as f64;
            println!(
                "{}: Redis busy {busy:.3} CPU of its {cap:.2} cap ({:.0}%), {:.1} µs per flagged \
                 request",
                row.target.name(),
                100.0 * busy / cap,
                redis.usec
            );
        }
    }
    if let [one, three] = rows.as_slice()
        && let Some(ratio) = runner::paired(three, one)
    {
        println!("\nflagged req/s, 3 masters ÷ 1 master: {ratio}\n");
    }
    Ok(rows.iter().all(|row| row.stats.clean()))
}

/// A run's line on stderr, as it ends.
fn progress(row: &Row) {
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
/// servers this bench starts): each idle connection (`LOAD_IDLE_CONNS`,
/// up to 10,000 and more) takes one fd here and one in the server.
/// Returns the soft limit it leaves (0 when unreadable).
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
