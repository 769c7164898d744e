//! The cluster section's servers (issue 21, point 5): a Redis Cluster of n
//! masters on loopback, each redis-server held to the same share of a CPU by
//! a cgroup of its own, so that Redis, not the proxy, limits flagged
//! throughput, and what more masters give shows on a machine with fewer
//! cores than masters.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::procs::{self, RedisProcess, find_program};
use super::redis_info::RedisCalls;

/// Cluster slots, split evenly over the masters.
const SLOTS: usize = 16_384;

/// A Redis Cluster of `masters` redis-servers, each capped at `cores` of a
/// CPU; stopped (and its cgroups removed) when dropped.
pub struct ClusterProcess {
    nodes: Vec<RedisProcess>,
    caps: Vec<CpuCap>,
}

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        // The servers first: a cgroup can be removed only once empty.
        self.nodes.clear();
        self.caps.clear();
    }
}

impl ClusterProcess {
    /// Starts the masters (files under `dir`), caps each, gives each an even
    /// share of the slots and joins them; waits until every node says
    /// `cluster_state:ok`. Fails when no cgroup CPU controller is writable
    /// (the bench must run as root).
    pub fn start(dir: &Path, masters: usize, cores: f64) -> io::Result<ClusterProcess> {
        let cli = find_program("redis-cli")
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "redis-cli not found"))?;
        let mut nodes = Vec::new();
        let mut caps = Vec::new();
        for i in 0..masters {
            let node_dir = dir.join(format!("master-{i}"));
            std::fs::create_dir_all(&node_dir)?;
            let bus = procs::free_port()?.to_string();
            let node = RedisProcess::start_with(
                &node_dir,
                &["--cluster-enabled", "yes", "--cluster-port", &bus],
            )?;
            let cap = CpuCap::new(&format!("qp-bench-{}-{i}", std::process::id()), cores)?;
            cap.hold(node.pid())?;
            nodes.push(node);
            caps.push(cap);
        }
        let cluster = ClusterProcess { nodes, caps };
        let run = |port: u16, args: &[&str]| -> io::Result<String> {
            let output = Command::new(&cli)
                .args(["-p", &port.to_string()])
                .args(args)
                .stdin(Stdio::null())
                .output()?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            if !output.status.success() || text.starts_with("ERR") {
                return Err(io::Error::other(format!("redis-cli {args:?}: {text}")));
            }
            Ok(text)
        };
        for (i, node) in cluster.nodes.iter().enumerate() {
            let (first, last) = (SLOTS * i / masters, SLOTS * (i + 1) / masters - 1);
            run(
                node.port(),
                &[
                    "CLUSTER",
                    "ADDSLOTSRANGE",
                    &first.to_string(),
                    &last.to_string(),
                ],
            )?;
        }
        let first = cluster.nodes[0].port();
        for node in &cluster.nodes[1..] {
            let bus = run(node.port(), &["CONFIG", "GET", "cluster-port"])?;
            let bus = bus.lines().nth(1).unwrap_or_default().trim().to_owned();
            run(
                first,
                &[
                    "CLUSTER",
                    "MEET",
                    "127.0.0.1",
                    &node.port().to_string(),
                    &bus,
                ],
            )?;
        }
        let started = Instant::now();
        for node in &cluster.nodes {
            loop {
                let info = run(node.port(), &["CLUSTER", "INFO"])?;
                if info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{masters}"))
                {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    return Err(io::Error::other(format!(
                        "the {masters}-master cluster did not form in 30 s: {info}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(cluster)
    }

    /// `redis://127.0.0.1:<port>` of every master, for `store.cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect()
    }

    /// What every master has executed so far, summed, and their CPU seconds.
    pub fn calls(&self) -> (RedisCalls, f64) {
        self.nodes
            .iter()
            .fold((RedisCalls::default(), 0.0), |(calls, cpu), node| {
                (
                    calls.plus(node.calls().unwrap_or_default()),
                    cpu + procs::cpu_seconds(node.pid()).unwrap_or(f64::NAN),
                )
            })
    }

    /// How many masters it has.
    pub fn masters(&self) -> usize {
        self.nodes.len()
    }
}

/// A cgroup with a CPU quota (cgroup v2 `cpu.max`, or v1
/// `cpu.cfs_quota_us`): what runs in it gets at most `cores` CPUs' time.
struct CpuCap {
    path: PathBuf,
}

impl CpuCap {
    fn new(name: &str, cores: f64) -> io::Result<CpuCap> {
        let period = 100_000_u64;
        let quota = ((cores * period as f64) as u64).max(1_000);
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let (path, file, value) = if std::fs::read_to_string(v2).is_ok_and(|c| c.contains("cpu")) {
            let path = Path::new("/sys/fs/cgroup").join(name);
            (path, "cpu.max", format!("{quota} {period}"))
        } else {
            let path = Path::new("/sys/fs/cgroup/cpu").join(name);
            (path, "cpu.cfs_quota_us", quota.to_string())
        };
        std::fs::create_dir_all(&path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot make the cgroup {} to cap Redis's CPU ({e}); the cluster \
                     section needs a writable cgroup CPU controller (run as root)",
                    path.display()
                ),
            )
        })?;
        let cap = CpuCap { path };
        std::fs::write(cap.path.join(file), value)?;
        Ok(cap)
    }

    /// Moves `pid` (all its threads) into the cgroup.
    fn hold(&self, pid: u32) -> io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        // Empty by now: its server was stopped first.
        let _ = std::fs::remove_dir(&self.path);
    }
}
