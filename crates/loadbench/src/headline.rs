//! The headline of the load bench (issue 21): quota-proxy with one serving
//! thread against nginx with one worker, both in front of the same
//! upstream, 64 connections, closed loop; pass-through GET and a 500-byte
//! JSON POST, and flagged-and-allowed (10,000 users) on the memory store
//! and on Redis. Four ratios, each paired round by round
//! ([`runner::paired`]), two p99 ratios, and Redis's own time per flagged
//! request, rendered as the Markdown table BENCHMARKS.md opens with, a
//! verdict on each target, then that Redis time command by command.
//!
//! This module only reads the rows [`runner::run_matrix`] measured over
//! [`SHAPES`]; `benches/load.rs` starts the servers and runs them.

use std::fmt::Write as _;

use super::runner::{self, Bound, CommandShare, Comparison, Figure, Row, show};
use super::scenarios::{Shape, Target};

/// The shapes the headline runs on each server.
pub const SHAPES: [Shape; 3] = [Shape::PassThrough, Shape::PassThroughPost, Shape::Allowed];

/// The most Redis time per flagged request, in µs (issue 21, point 4).
pub const REDIS_USEC_MAX: f64 = 6.0;

/// The headline's ratios, in table order.
pub const COMPARISONS: [Comparison; 6] = [
    Comparison {
        what: "pass-through GET, qp-memory ÷ nginx, req/s",
        over: (Shape::PassThrough, Target::Memory),
        under: (Shape::PassThrough, Target::Nginx),
        figure: Figure::Rps,
        bound: Bound::AtLeast(1.0),
    },
    Comparison {
        what: "pass-through GET, qp-memory ÷ nginx, p99",
        over: (Shape::PassThrough, Target::Memory),
        under: (Shape::PassThrough, Target::Nginx),
        figure: Figure::P99,
        bound: Bound::AtMost(1.0),
    },
    Comparison {
        what: "pass-through POST (500-byte JSON), qp-memory ÷ nginx, req/s",
        over: (Shape::PassThroughPost, Target::Memory),
        under: (Shape::PassThroughPost, Target::Nginx),
        figure: Figure::Rps,
        bound: Bound::AtLeast(1.0),
    },
    Comparison {
        what: "pass-through POST (500-byte JSON), qp-memory ÷ nginx, p99",
        over: (Shape::PassThroughPost, Target::Memory),
        under: (Shape::PassThroughPost, Target::Nginx),
        figure: Figure::P99,
        bound: Bound::AtMost(1.0),
    },
    Comparison {
        what: "flagged, memory store ÷ qp-memory's pass-through POST, req/s",
        over: (Shape::Allowed, Target::Memory),
        under: (Shape::PassThroughPost, Target::Memory),
        figure: Figure::Rps,
        bound: Bound::AtLeast(0.9),
    },
    Comparison {
        what: "flagged, Redis ÷ qp-redis's pass-through POST, req/s",
        over: (Shape::Allowed, Target::Redis),
        under: (Shape::PassThroughPost, Target::Redis),
        figure: Figure::Rps,
        bound: Bound::AtLeast(0.6),
    },
];

/// How the headline ran, for the table's first header cell.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Connections of every run.
    pub conns: usize,
    /// quota-proxy's serving threads, and nginx's workers.
    pub threads: usize,
    /// Rounds each ratio is paired over.
    pub rounds: usize,
}

/// The headline table of `rows` (measured at `setup.conns` connections):
/// one line per target with its figure, the verdict, and the two cells'
/// req/s, p99 and server CPU per 10k requests (their median runs); a
/// target whose cells did not run (nginx or Redis skipped) says so.
pub fn render(rows: &[Row], setup: Setup) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {} conns, {} quota-proxy thread(s) vs {} nginx worker(s) | median of {} paired rounds (lowest–highest) | target | verdict | req/s | p99 | CPU s/10k req |",
        setup.conns, setup.threads, setup.threads, setup.rounds
    );
    let _ = writeln!(out, "|---|---|---:|---|---:|---:|---:|");
    for comparison in &COMPARISONS {
        let Some(judged) = comparison.judge(rows, setup.conns) else {
            let _ = writeln!(
                out,
                "| {} | not measured (a server was skipped) | {}× | – | | | |",
                comparison.what, comparison.bound
            );
            continue;
        };
        let (over, under) = (judged.over, judged.under);
        let both = |f: &dyn Fn(&Row) -> String| format!("{} vs {}", f(over), f(under));
        let (rps, cpu) = match comparison.figure {
            Figure::Rps => (
                both(&|r| format!("{:.0}", r.stats.rps())),
                both(&|r| format!("{:.2}", r.cpu_per_10k)),
            ),
            Figure::P99 => (String::new(), String::new()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {}× | {} | {rps} | {} | {cpu} |",
            comparison.what,
            judged.ratio,
            comparison.bound,
            verdict(judged.holds),
            both(&|r| show(r.stats.latency_at(0.99))),
        );
    }
    let flagged = runner::find(rows, Shape::Allowed, Target::Redis, setup.conns);
    match flagged.and_then(|row| Some((row, row.redis.as_ref()?))) {
        Some((row, redis)) => {
            let _ = writeln!(
                out,
                "| Redis time per flagged request (INFO commandstats: `usec` of the commands the proxy sent) | {:.1} µs ({:.2} round trips, {:.1} commands; median run) | {} µs | {} | {:.0} | {} | qp-redis {:.2}, redis-server {:.2} |",
                redis.usec,
                redis.round_trips,
                redis.commands,
                Bound::AtMost(REDIS_USEC_MAX),
                verdict(Bound::AtMost(REDIS_USEC_MAX).holds(redis.usec)),
                row.stats.rps(),
                show(row.stats.latency_at(0.99)),
                row.cpu_per_10k,
                redis.cpu_per_10k,
            );
        }
        None => {
            let _ = writeln!(
                out,
                "| Redis time per flagged request | not measured (Redis was skipped) | {} µs | – | | | |",
                Bound::AtMost(REDIS_USEC_MAX)
            );
        }
    }
    if let Some(redis) = flagged.and_then(|row| row.redis.as_ref()) {
        let _ = writeln!(
            out,
            "\nWhere Redis's time per flagged request went (the same run): {}.",
            by_command(&redis.by_command)
        );
    }
    out
}

/// Each command's share of a request's Redis time, largest first: `` `zadd`
/// 2.00 × 2.04 µs = 4.08 µs`` (calls per request × µs per call).
pub fn by_command(shares: &[CommandShare]) -> String {
    let per_request = |share: &CommandShare| share.calls * share.usec_per_call;
    let mut shares: Vec<&CommandShare> = shares.iter().collect();
    shares.sort_by(|a, b| per_request(b).total_cmp(&per_request(a)));
    let parts: Vec<String> = shares
        .into_iter()
        .map(|share| {
            format!(
                "`{}` {:.2} × {:.2} µs = {:.2} µs",
                share.name,
                share.calls,
                share.usec_per_call,
                per_request(share)
            )
        })
        .collect();
    parts.join(", ")
}

fn verdict(holds: bool) -> &'static str {
    if holds { "HOLDS" } else { "MISSED" }
}
