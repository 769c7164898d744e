//! Runs the matrix (connections × request shapes × targets), the idle
//! connection test and the upload test, and renders the results as
//! Markdown tables.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::runtime::Runtime;

use super::loadgen::{self, Conn, Limits, RunStats};
use super::procs;
use super::redis_info::RedisCalls;
use super::scenarios::{self, DENIED_USERS, Shape, Target};

/// One server under load: where it listens, and how to read its CPU time
/// and (for quota-proxy on Redis) the Redis commands run so far.
pub struct Subject {
    /// What it is.
    pub target: Target,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its CPU seconds so far (all its processes).
    pub cpu: Box<dyn Fn() -> f64>,
    /// What its Redis has run so far, and Redis's CPU seconds, when it
    /// uses Redis.
    pub redis_calls: Option<Box<dyn Fn() -> (RedisCalls, f64)>>,
}

/// What the matrix runs.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Connection counts, one pass each.
    pub conns: Vec<usize>,
    /// Request shapes.
    pub shapes: Vec<Shape>,
    /// Warm-up before each measured run (not recorded).
    pub warm_up: Limits,
    /// Each measured run.
    pub measure: Limits,
    /// How often the whole matrix runs; each cell reports its median run.
    pub rounds: usize,
}

/// One measured run.
pub struct Row {
    /// The request shape.
    pub shape: Shape,
    /// The server.
    pub target: Target,
    /// Connections.
    pub conns: usize,
    /// What the load generator saw.
    pub stats: RunStats,
    /// This cell's run in each round, in round order (the median row's own
    /// run among them): paired with another subject's runs of the same
    /// round by [`paired`] and [`paired_p99`].
    pub rounds: Vec<RoundFigures>,
    /// Server CPU seconds per 10 000 requests.
    pub cpu_per_10k: f64,
    /// What Redis did for the run's requests (quota-proxy on Redis only).
    pub redis: Option<RedisPerRequest>,
}

/// What Redis did per request of a run, from `INFO stats`, `INFO
/// commandstats` and `/proc` before and after it.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisPerRequest {
    /// Commands, all of them (those inside Lua scripts too).
    pub commands: f64,
    /// Round trips: the calls the proxy wrote at once (a pipeline is one),
    /// as the reads Redis made (see [`RedisCalls::round_trips`]).
    pub round_trips: f64,
    /// Microseconds Redis spent executing them (see [`RedisCalls::usec`]):
    /// the time of the one single-threaded part of the system.
    pub usec: f64,
    /// redis-server's CPU seconds per 10 000 requests.
    pub cpu_per_10k: f64,
    /// Each command's share, in name order.
    pub by_command: Vec<CommandShare>,
}

/// One command's share of [`RedisPerRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct CommandShare {
    /// Its lowercase name, as `INFO commandstats` gives it.
    pub name: String,
    /// How often it ran per request.
    pub calls: f64,
    /// Microseconds per call.
    pub usec_per_call: f64,
}

impl CommandShare {
    /// Each command of `calls`, per one of `requests`, in name order.
    pub fn of(calls: &RedisCalls, requests: u64) -> Vec<CommandShare> {
        calls
            .by_command
            .iter()
            .map(|(name, time)| CommandShare {
                name: name.clone(),
                calls: time.calls as f64 / requests.max(1) as f64,
                usec_per_call: time.usec as f64 / time.calls.max(1) as f64,
            })
            .collect()
    }
}

/// What one round's run of a cell gives the ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundFigures {
    /// Answers per second.
    pub rps: f64,
    /// The 99th percentile latency.
    pub p99: Duration,
}

/// Runs `matrix` over `subjects`, interleaving them (each cell runs every
/// subject back to back, and the whole matrix runs `rounds` times) so that
/// noise from the rest of the machine hits each alike; each cell then
/// reports its median run by requests/s, whose latency and CPU figures come
/// from that same run, with every round's requests/s and p99 beside it.
/// Denied users' quota is used up by a warm-up before the first denied run
/// of each enforcing subject. `progress` sees each run.
pub fn run_matrix(
    runtime: &Runtime,
    subjects: &[Subject],
    matrix: &Matrix,
    mut progress: impl FnMut(&Row),
) -> io::Result<Vec<Row>> {
    let mut runs: Vec<Vec<Row>> = Vec::new();
    let mut used_up = vec![false; subjects.len()];
    for _ in 0..matrix.rounds.max(1) {
        let mut cell = 0;
        for &conns in &matrix.conns {
            for &shape in &matrix.shapes {
                for (i, subject) in subjects.iter().enumerate() {
                    if shape == Shape::Denied && subject.target.enforces() && !used_up[i] {
                        use_up_denied_users(runtime, subject.addr)?;
                        used_up[i] = true;
                    }
                    let row = run_one(runtime, subject, shape, conns, matrix)?;
                    progress(&row);
                    if runs.len() <= cell {
                        runs.push(Vec::new());
                    }
                    runs[cell].push(row);
                    cell += 1;
                }
            }
        }
    }
    Ok(runs
        .into_iter()
        .filter_map(|mut cell| {
            let rounds: Vec<RoundFigures> = cell
                .iter()
                .map(|r| RoundFigures {
                    rps: r.stats.rps(),
                    p99: r.stats.latency_at(0.99),
                })
                .collect();
            cell.sort_by(|a, b| a.stats.rps().total_cmp(&b.stats.rps()));
            let mid = cell.len() / 2;
            let problems: u64 = cell
                .iter()
                .map(|r| r.stats.errors + r.stats.unexpected)
                .sum();
            let first_problem = cell.iter().find_map(|r| r.stats.first_problem.clone());
            let mut median = cell.into_iter().nth(mid)?;
            median.rounds = rounds;
            // A problem in any round shows in the cell.
            if problems > 0 && median.stats.clean() {
                median.stats.unexpected = problems;
                median.stats.first_problem = first_problem;
            }
            Some(median)
        })
        .collect())
}

fn use_up_denied_users(runtime: &Runtime, addr: SocketAddr) -> io::Result<()> {
    let workload = scenarios::denied_warm_up();
    let limits = Limits {
        max_requests: DENIED_USERS as u64,
        max_time: Duration::from_secs(60),
    };
    let stats = runtime.block_on(async {
        let conns = loadgen::connect(addr, 1).await?;
        Ok::<_, io::Error>(loadgen::drive(conns, &workload, limits).await.1)
    })?;
    if !stats.clean() || stats.requests != DENIED_USERS as u64 {
        return Err(io::Error::other(format!(
            "using up the denied users' quota failed: {} answers, {:?}",
            stats.requests, stats.first_problem
        )));
    }
    Ok(())
}

fn run_one(
    runtime: &Runtime,
    subject: &Subject,
    shape: Shape,
    conns: usize,
    matrix: &Matrix,
) -> io::Result<Row> {
    let workload = scenarios::workload(shape, subject.target);
    let (stats, cpu, redis) = runtime.block_on(async {
        let open = loadgen::connect(subject.addr, conns).await?;
        let (open, _) = loadgen::drive(open, &workload, matrix.warm_up).await;
        let cpu_before = (subject.cpu)();
        let redis_before = subject.redis_calls.as_ref().map(|f| f());
        let (open, stats) = loadgen::drive(open, &workload, matrix.measure).await;
        let cpu = (subject.cpu)() - cpu_before;
        let redis = subject
            .redis_calls
            .as_ref()
            .zip(redis_before)
            .map(|(f, (calls, cpu))| {
                let (now, cpu_now) = f();
                (now.since(&calls), cpu_now - cpu)
            });
        drop(open);
        Ok::<_, io::Error>((stats, cpu, redis))
    })?;
    let per_request = |x: f64| x / (stats.requests.max(1) as f64);
    Ok(Row {
        shape,
        target: subject.target,
        conns,
        cpu_per_10k: per_request(cpu) * 10_000.0,
        rounds: Vec::new(),
        redis: redis.map(|(calls, cpu)| RedisPerRequest {
            commands: per_request(calls.commands as f64),
            round_trips: per_request(calls.round_trips as f64),
            usec: per_request(calls.usec as f64),
            cpu_per_10k: per_request(cpu) * 10_000.0,
            by_command: CommandShare::of(&calls, stats.requests),
        }),
        stats,
    })
}

/// A ratio taken round by round: each round's run of one cell against the
/// same round's run of another, measured seconds apart rather than
/// minutes, so that the machine's drift between rounds does not pass for a
/// difference between servers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// The median of the rounds' ratios: the figure a target is judged by.
    pub median: f64,
    /// The lowest round's ratio.
    pub low: f64,
    /// The highest round's ratio.
    pub high: f64,
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2}× (rounds {:.2}–{:.2}×)",
            self.median, self.low, self.high
        )
    }
}

/// `a`'s requests/s over `b`'s, round by round; `None` unless both ran the
/// same rounds.
pub fn paired(a: &Row, b: &Row) -> Option<Ratio> {
    by_round(&[a, b], |rps| rps[0] / rps[1])
}

/// `a`'s p99 latency over `b`'s, round by round, like [`paired`]: a tail
/// figure of one 2-second run moves most with the machine.
pub fn paired_p99(a: &Row, b: &Row) -> Option<Ratio> {
    summarise(&[a, b], |round| {
        round[0].p99.as_secs_f64() / round[1].p99.as_secs_f64()
    })
}

/// `f` of the rows' requests/s in each round (`rps[i]` is `rows[i]`'s),
/// summarised over the rounds; `None` unless every row ran the same rounds.
pub fn by_round(rows: &[&Row], f: impl Fn(&[f64]) -> f64) -> Option<Ratio> {
    summarise(rows, |round| {
        f(&round.iter().map(|figures| figures.rps).collect::<Vec<_>>())
    })
}

/// `f` of the rows' figures in each round, summarised over the rounds.
fn summarise(rows: &[&Row], f: impl Fn(&[RoundFigures]) -> f64) -> Option<Ratio> {
    let rounds = rows.first()?.rounds.len();
    if rounds == 0 || rows.iter().any(|r| r.rounds.len() != rounds) {
        return None;
    }
    let mut values: Vec<f64> = (0..rounds)
        .map(|i| f(&rows.iter().map(|r| r.rounds[i]).collect::<Vec<_>>()))
        .collect();
    values.sort_by(f64::total_cmp);
    // Even counts take the mean of the middle two.
    let median = match values.len() % 2 {
        1 => values[values.len() / 2],
        _ => (values[values.len() / 2 - 1] + values[values.len() / 2]) / 2.0,
    };
    Some(Ratio {
        median,
        low: values[0],
        high: values[values.len() - 1],
    })
}

/// The row of `shape` on `target` at `conns` connections.
pub fn find(rows: &[Row], shape: Shape, target: Target, conns: usize) -> Option<&Row> {
    rows.iter()
        .find(|r| r.shape == shape && r.target == target && r.conns == conns)
}

/// Which figure of its two cells a [`Comparison`] divides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Requests per second, paired by [`paired`].
    Rps,
    /// The 99th percentile latency, paired by [`paired_p99`].
    P99,
}

/// The bound a target puts on a figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// At least this.
    AtLeast(f64),
    /// At most this.
    AtMost(f64),
}

impl Bound {
    /// Whether `value` meets the bound.
    pub fn holds(self, value: f64) -> bool {
        match self {
            Bound::AtLeast(min) => value >= min,
            Bound::AtMost(max) => value <= max,
        }
    }
}

impl std::fmt::Display for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::AtLeast(min) => write!(f, "≥ {min:.1}"),
            Bound::AtMost(max) => write!(f, "≤ {max:.1}"),
        }
    }
}

/// A target on a paired ratio: one cell's figure over another's at the
/// same connection count, round by round.
#[derive(Debug, Clone, Copy)]
pub struct Comparison {
    /// What it compares, as a table names it.
    pub what: &'static str,
    /// The numerator's cell.
    pub over: (Shape, Target),
    /// The denominator's cell.
    pub under: (Shape, Target),
    /// The figure divided.
    pub figure: Figure,
    /// What the ratio must meet.
    pub bound: Bound,
}

/// A [`Comparison`] as one run's rows have it.
pub struct Judged<'a> {
    /// The paired ratio.
    pub ratio: Ratio,
    /// Whether its median meets the bound.
    pub holds: bool,
    /// The numerator's row (its median run).
    pub over: &'a Row,
    /// The denominator's row.
    pub under: &'a Row,
}

impl Comparison {
    /// The comparison at `conns` connections in `rows`; `None` when a cell
    /// did not run (a server skipped) or the two ran different rounds.
    pub fn judge<'a>(&self, rows: &'a [Row], conns: usize) -> Option<Judged<'a>> {
        let over = find(rows, self.over.0, self.over.1, conns)?;
        let under = find(rows, self.under.0, self.under.1, conns)?;
        let ratio = match self.figure {
            Figure::Rps => paired(over, under),
            Figure::P99 => paired_p99(over, under),
        }?;
        Some(Judged {
            ratio,
            holds: self.bound.holds(ratio.median),
            over,
            under,
        })
    }
}

/// Opens `n` connections to `addr` and sends one request on each, leaving
/// them open and idle (keep-alive).
pub async fn idle_connections(addr: SocketAddr, n: usize, request: &[u8]) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = Conn::open(addr).await?;
        let status = conn.once(request).await?;
        if status != 200 {
            return Err(io::Error::other(format!(
                "idle connection set-up got {status}"
            )));
        }
        conns.push(conn);
    }
    Ok(conns)
}

/// What one upload did to a proxy's peak memory.
#[derive(Debug, Clone, Copy)]
pub struct UploadMemory {
    /// Bytes of the request body.
    pub body: u64,
    /// `VmHWM` before, in bytes.
    pub before: u64,
    /// `VmHWM` after, in bytes.
    pub after: u64,
}

impl UploadMemory {
    /// How many bodies' worth the peak grew by.
    pub fn copies(&self) -> f64 {
        self.after.saturating_sub(self.before) as f64 / self.body as f64
    }
}

/// Sends `upload` (a whole request) once to the proxy `pid` at `addr` and
/// reports its peak memory before and after.
pub fn upload_memory(
    runtime: &Runtime,
    pid: u32,
    addr: SocketAddr,
    upload: &[u8],
) -> io::Result<UploadMemory> {
    let body = upload
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(upload.len(), |head| upload.len() - head - 4) as u64;
    let before = procs::memory_bytes(pid, "VmHWM")?;
    let status = runtime.block_on(async {
        let mut conn = Conn::open(addr).await?;
        conn.once(upload).await
    })?;
    if status != 200 {
        return Err(io::Error::other(format!("upload answered {status}")));
    }
    let after = procs::memory_bytes(pid, "VmHWM")?;
    Ok(UploadMemory {
        body,
        before,
        after,
    })
}

/// A duration for tables: µs below 10 ms, else ms.
pub fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10_000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

/// The matrix as a Markdown table, quota-proxy rows with their ratio to
/// nginx's run of the same shape and connections (each the median of the
/// rounds' ratios, see [`paired`] and [`paired_p99`]).
pub fn render_rows(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| conns | scenario | server | req/s | p50 | p99 | p99.9 | CPU s/10k req | Redis: round trips/req, cmds/req, CPU s/10k req | req/s ÷ nginx | p99 ÷ nginx | errors |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let nginx = find(rows, row.shape, Target::Nginx, row.conns);
        let (rps_ratio, p99_ratio) = match nginx {
            Some(n) if row.target.enforces() => (
                paired(row, n)
                    .map(|r| format!("{:.2}×", r.median))
                    .unwrap_or_default(),
                paired_p99(row, n)
                    .map(|r| format!("{:.2}×", r.median))
                    .unwrap_or_default(),
            ),
            _ => ("".to_owned(), "".to_owned()),
        };
        let problems = row.stats.errors + row.stats.unexpected;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.2} | {} | {} | {} | {} |",
            row.conns,
            row.shape.name(),
            row.target.name(),
            row.stats.rps(),
            show(row.stats.latency_at(0.5)),
            show(row.stats.latency_at(0.99)),
            show(row.stats.latency_at(0.999)),
            row.cpu_per_10k,
            row.redis
                .as_ref()
                .map(|r| format!(
                    "{:.2}, {:.1}, {:.2}",
                    r.round_trips, r.commands, r.cpu_per_10k
                ))
                .unwrap_or_default(),
            rps_ratio,
            p99_ratio,
            if problems == 0 {
                "0".to_owned()
            } else {
                format!(
                    "{problems} ({})",
                    row.stats.first_problem.as_deref().unwrap_or("?")
                )
            },
        );
    }
    out
}
