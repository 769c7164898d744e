//! The load bench's verdicts: each target of BENCHMARKS.md with whether it
//! held in a run, and the context lines that explain the flagged ratios
//! (the hyper floor, the ceilings). Pure functions of the measured rows.

use super::headline;
use super::loadgen;
use super::runner::{self, Bound, Comparison, Figure, Row, UploadMemory, show};
use super::scenarios::{Shape, Target, UploadKind};

/// The first count of idle connections the memory section holds (the
/// 40 MB target's); it goes on to `LOAD_IDLE_CONNS` from there.
pub const IDLE_STEP: usize = 1000;

/// `shape` (a pass-through) at `conns` connections against the hyper
/// floor: how far nginx is from the least any hyper proxy does, and
/// quota-proxy from that.
pub fn floor_context(rows: &[Row], shape: Shape, conns: usize) -> Option<String> {
    let row = |target| runner::find(rows, shape, target, conns);
    let (nginx, floor, qp) = (
        row(Target::Nginx)?,
        row(Target::Floor)?,
        row(Target::Memory)?,
    );
    Some(format!(
        "{} against the hyper floor ({conns} conns): floor ÷ nginx {} req/s, p99 {}; \
         qp-memory ÷ floor {} req/s; CPU s/10k req: nginx {:.2}, floor {:.2}, qp-memory {:.2}.",
        capitalized(shape.name()),
        runner::paired(floor, nginx)?,
        runner::paired_p99(floor, nginx)?,
        runner::paired(qp, floor)?,
        nginx.cpu_per_10k,
        floor.cpu_per_10k,
        qp.cpu_per_10k
    ))
}

fn capitalized(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// Flagged-and-allowed at `conns` connections against the hyper floor:
/// what the flagged request's shape costs over `pass` (a pass-through GET
/// or POST: a body, an answer with a report), and the most each store's
/// flagged ÷ `pass` could be if quota-proxy's own quota work cost nothing.
///
/// Every process shares the machine's cores, so a request's cost in machine
/// time is cores ÷ req/s. The floor's two rows give what the shape adds;
/// added to quota-proxy's pass-through cost, that is the cheapest a flagged
/// request through it could be (the cores cancel out of the ratio). On
/// Redis, redis-server's own CPU per allowed request is added too; that
/// bound needs the cores, so it is left out when the bench's redis-server
/// is pinned apart (`LOAD_REDIS_CPUS`). Each bound is computed round by
/// round from that round's runs, and summarised like a paired ratio.
pub fn flagged_ceiling(rows: &[Row], pass: Shape, conns: usize) -> Option<String> {
    let row = |shape, target| runner::find(rows, shape, target, conns);
    let floor_pass = row(pass, Target::Floor)?;
    let floor_flagged = row(Shape::Allowed, Target::Floor)?;
    let qp_pass = row(pass, Target::Memory)?;
    // Round by round: [floor pass, floor flagged, qp pass(, qp-redis pass)].
    let ceiling = runner::by_round(&[floor_pass, floor_flagged, qp_pass], |rps| {
        1.0 / (1.0 + rps[2] * (1.0 / rps[1] - 1.0 / rps[0]))
    })?;
    let mut text = format!(
        "Flagged, allowed against the hyper floor ({conns} conns): the floor forwards it at {} \
         its own {} req/s; with quota work that cost nothing, qp-memory's flagged ÷ \
         {} could reach {} at most",
        runner::paired(floor_flagged, floor_pass)?,
        pass.name(),
        pass.name(),
        ceiling,
    );
    let redis_cpu = row(Shape::Allowed, Target::Redis)
        .and_then(|row| row.redis.as_ref())
        .map(|redis| redis.cpu_per_10k / 10_000.0);
    if let (Some(redis_pass), Some(redis_cpu), None) = (
        row(pass, Target::Redis),
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

/// The matrix's targets on paired ratios, at 64 connections: the
/// headline's pass-through GET pair, and flagged ÷ pass-through GET on each
/// store (the headline divides by the pass-through POST; the ceilings
/// below are computed against the GET).
const MATRIX_COMPARISONS: [Comparison; 4] = [
    headline::COMPARISONS[0],
    headline::COMPARISONS[1],
    Comparison {
        what: "flagged-and-allowed ÷ pass-through GET, qp-redis, req/s",
        over: (Shape::Allowed, Target::Redis),
        under: (Shape::PassThrough, Target::Redis),
        figure: Figure::Rps,
        bound: Bound::AtLeast(0.6),
    },
    Comparison {
        what: "flagged-and-allowed ÷ pass-through GET, qp-memory, req/s",
        over: (Shape::Allowed, Target::Memory),
        under: (Shape::PassThrough, Target::Memory),
        figure: Figure::Rps,
        bound: Bound::AtLeast(0.9),
    },
];

/// The most RSS holding this many idle connections may take, where
/// a target names it: 40 MB for up to 1,000, 64 MB for 10,000 or more.
fn idle_budget(conns: usize) -> Option<u64> {
    match conns {
        0..=IDLE_STEP => Some(40 * 1024 * 1024),
        10_000.. => Some(64 * 1024 * 1024),
        _ => None,
    }
}

/// Each target of the issue with whether it held in this run.
pub fn targets(
    rows: &[Row],
    ttfb: &[(Target, loadgen::RunStats)],
    idle_rss: &[(usize, u64)],
    uploads: &[(UploadKind, UploadMemory)],
) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let p = |shape, target, conns, q| {
        runner::find(rows, shape, target, conns).map(|r| r.stats.latency_at(q))
    };
    for comparison in &MATRIX_COMPARISONS {
        if let Some(judged) = comparison.judge(rows, 64) {
            out.push((
                judged.holds,
                format!(
                    "{} {}× (64 conns): {}",
                    comparison.what, comparison.bound, judged.ratio
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
            .filter_map(|r| r.redis.as_ref())
            .map(|redis| {
                if all {
                    redis.commands
                } else {
                    redis.round_trips
                }
            })
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
    for &(conns, rss) in idle_rss {
        if let Some(budget) = idle_budget(conns) {
            out.push((
                rss <= budget,
                format!(
                    "RSS holding {conns} idle keep-alive connections: {} (≤ {})",
                    mb(rss),
                    mb(budget)
                ),
            ));
        }
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

pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}
