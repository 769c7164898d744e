//! The load bench's knobs (`LOAD_*` environment variables; `benches/load.rs`
//! lists them).

use std::time::Duration;

use super::loadgen::Limits;
use super::runner::Matrix;
use super::scenarios::Shape;

/// The bench's knobs, read from the environment (see `benches/load.rs`).
pub struct Options {
    /// Measured time per run (`LOAD_SECS`).
    pub measure: Duration,
    /// Warm-up per run, not recorded (`LOAD_WARMUP_SECS`).
    pub warm_up: Duration,
    /// How often the headline and the matrix run (`LOAD_ROUNDS`).
    pub rounds: usize,
    /// Most requests per run (`LOAD_MAX_REQUESTS`).
    pub max_requests: u64,
    /// The matrix's connection counts (`LOAD_CONNS`).
    pub conns: Vec<usize>,
    /// Idle connections the memory section holds (`LOAD_IDLE_CONNS`).
    pub idle_conns: usize,
    /// Serving threads of the matrix's and memory section's proxies (`LOAD_PROXY_THREADS`).
    pub proxy_threads: usize,
    /// The headline's connections (`LOAD_HEADLINE_CONNS`).
    pub headline_conns: usize,
    /// The headline's proxy threads and nginx workers (`LOAD_HEADLINE_THREADS`).
    pub headline_threads: usize,
    /// The upstream's threads (`LOAD_UPSTREAM_THREADS`).
    pub upstream_threads: usize,
    /// `LOAD_SKIP_NGINX`.
    pub skip_nginx: bool,
    /// `LOAD_SKIP_FLOOR`.
    pub skip_floor: bool,
    /// `LOAD_SKIP_REDIS`.
    pub skip_redis: bool,
    /// The CPUs redis-server is pinned to (`LOAD_REDIS_CPUS`).
    pub redis_cpus: Option<Vec<usize>>,
    /// The matrix's request shapes (`LOAD_SHAPES`).
    pub shapes: Vec<Shape>,
    /// The sections to run (`LOAD_SECTIONS`).
    pub sections: Vec<String>,
    /// Each Redis Cluster master's CPU cap in the cluster section.
    pub cluster_cores: f64,
}

impl Options {
    /// The knobs as the environment sets them, defaults for the rest.
    pub fn from_env() -> Options {
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
            headline_conns: number("LOAD_HEADLINE_CONNS", 64),
            headline_threads: number("LOAD_HEADLINE_THREADS", 1),
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
                .unwrap_or_else(|| "headline,matrix,ttfb,memory".to_owned())
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect(),
            cluster_cores: var("LOAD_CLUSTER_CORES")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.1),
        }
    }
}

impl Options {
    /// Whether section `name` runs.
    pub fn section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s == name)
    }

    /// `shapes` at each of `conns`, with the runs' limits and rounds.
    pub fn matrix(&self, conns: Vec<usize>, shapes: Vec<Shape>) -> Matrix {
        Matrix {
            conns,
            shapes,
            warm_up: Limits {
                max_requests: self.max_requests,
                max_time: self.warm_up,
            },
            measure: Limits {
                max_requests: self.max_requests,
                max_time: self.measure,
            },
            rounds: self.rounds,
        }
    }
}
