//! Private Redis servers for one test: each on its own free loopback port,
//! in its own empty directory, killed when dropped. Tests never touch a
//! Redis already running on the machine (6379 or any other).
//!
//! - [`RedisServer`]: one `redis-server`, no persistence unless asked
//!   (`start_persistent`: AOF, so a SIGKILL loses nothing it answered);
//!   it can be killed, restarted, paused (SIGSTOP) and resumed.
//! - [`RedisCluster`]: masters with `--cluster-enabled yes` joined by
//!   `redis-cli --cluster create`.
//! - [`RedisSentinel`]: a master, a replica and one Sentinel watching them.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use quota_proxy::store::Topology;
use tempfile::TempDir;

/// How long a started server may take to answer PING.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// Tries with another free port if the one picked was taken meanwhile.
const START_ATTEMPTS: usize = 5;

/// How long a cluster or a Sentinel set-up may take to settle.
const SETTLED_WITHIN: Duration = Duration::from_secs(20);

/// A `redis-server` child process owned by a test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// Arguments after the common ones (later ones win in redis-server).
    extra: Vec<String>,
    /// Runs as a Sentinel from `sentinel.conf` in `dir`.
    sentinel: bool,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers (this
    /// very process, asked for its pid).
    ///
    /// Panics if `redis-server` is not installed or does not come up.
    pub fn start() -> Self {
        Self::start_with(|_| Vec::new())
    }

    /// A server whose answered writes survive a SIGKILL: AOF on with
    /// `appendfsync always`. (Under `everysec` Redis may postpone the AOF
    /// write, but not the answer, while a background fsync runs, so a write
    /// it answered can be lost: rare, but tests count exactly.)
    pub fn start_persistent() -> Self {
        Self::start_with(|_| {
            ["--appendonly", "yes", "--appendfsync", "always"]
                .map(String::from)
                .to_vec()
        })
    }

    /// Starts a server with extra arguments, made for each attempt (they may
    /// pick ports of their own).
    pub fn start_with(extra: impl Fn(u16) -> Vec<String>) -> Self {
        Self::start_as(false, |port, _| extra(port))
    }

    fn start_as(sentinel: bool, setup: impl Fn(u16, &Path) -> Vec<String>) -> Self {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temporary directory for redis-server");
            let extra = setup(port, dir.path());
            let mut server = Self {
                child: None,
                port,
                dir,
                extra,
                sentinel,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start after {START_ATTEMPTS} attempts: {last_error}");
    }

    /// `redis://127.0.0.1:<port>` (no database: cluster and Sentinel URLs).
    pub fn node_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` against this server and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// Stops the process with SIGSTOP: connections stay open, nothing is
    /// answered, like a Redis that hangs.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT); it then answers what it got.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().map(Child::id).expect("server running");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL (no goodbye to clients) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine: the goal is that it is gone.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory: empty, or
    /// with its AOF replayed when started persistent.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_WITHIN;
        // The port may be held a moment by the dead process's socket.
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {e}", self.port)
                }
                Err(_) => sleep(Duration::from_millis(50)),
            }
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        if self.sentinel {
            command
                .arg(self.dir.path().join("sentinel.conf"))
                .arg("--sentinel");
        }
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `redis-server` ({e}); the Redis tests start their own server \
                     and need the binary on PATH: install it with `apt-get install redis-server`"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("redis-server exited with {status}: {}", tail(&log)));
            }
            let pid = self.child.as_ref().map_or(0, Child::id);
            if serves(self.port, pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "redis-server did not answer PING within {READY_WITHIN:?}: {}",
                    tail(&log)
                ));
            }
            sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `redis-cli -p port args…` (a 5 s bound on every step) and returns
/// its output, trimmed.
///
/// Panics when `redis-cli` is missing: an empty answer must not pass for
/// Redis's.
pub fn cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("timeout")
        .args(["5", "redis-cli", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("`timeout` (coreutils) runs");
    // `timeout` exits 127 when it cannot run the command.
    assert_ne!(
        output.status.code(),
        Some(127),
        "cannot run `redis-cli`; the Redis tests need it on PATH: install it with \
         `apt-get install redis-tools` (or redis-server)"
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Polls `check` every 50 ms until it holds; panics with `what` after
/// `within`.
pub fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        sleep(Duration::from_millis(50));
    }
}

/// A Redis Cluster of masters without replicas (AOF on), every slot covered, and
/// `cluster-require-full-coverage no` so the others go on serving while one
/// master is down.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes and joins them; waits until every node reports
    /// `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| {
                RedisServer::start_with(|_| {
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        "--cluster-require-full-coverage",
                        "no",
                        "--cluster-port",
                        &free_port().to_string(),
                        // A restarted node keeps what it answered, so tests
                        // can count exactly across a stop.
                        "--appendonly",
                        "yes",
                        "--appendfsync",
                        "always",
                    ]
                    .map(String::from)
                    .to_vec()
                })
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let output = Command::new("timeout")
            .args(["30", "redis-cli", "--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Self { nodes };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every running node says `cluster_state:ok` and knows
    /// every slot.
    pub fn wait_ok(&self) {
        for node in &self.nodes {
            wait_for("cluster_state:ok", SETTLED_WITHIN, || {
                let info = node.cli(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384")
            });
        }
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::node_url).collect()
    }

    /// The index of the node that owns `key`'s slot: the others answer
    /// `MOVED` instead of a number.
    pub fn owner(&self, key: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.cli(&["EXISTS", key]).parse::<u64>().is_ok())
            .expect("some node owns the slot")
    }

    /// Runs `redis-cli` with `args` on every node.
    pub fn on_each(&self, args: &[&str]) -> Vec<String> {
        self.nodes.iter().map(|n| n.cli(args)).collect()
    }
}

/// A master, one replica and one Sentinel (quorum 1) watching them as
/// `quota`, with a short down-after so a failover takes about a second.
#[derive(Debug)]
pub struct RedisSentinel {
    pub servers: Vec<RedisServer>,
    pub sentinel: RedisServer,
}

/// The master name the Sentinel set-up uses.
pub const SENTINEL_MASTER: &str = "quota";

impl RedisSentinel {
    /// Starts the master, the replica (waits until it is in sync) and the
    /// Sentinel (waits until it knows the replica).
    pub fn start() -> Self {
        let master = RedisServer::start();
        let master_port = master.port().to_string();
        let replica = RedisServer::start_with(|_| {
            vec![
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                master_port.clone(),
            ]
        });
        wait_for("replica in sync", SETTLED_WITHIN, || {
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        });
        // Sentinel takes a master that has not answered for
        // `down-after-milliseconds` as failed and promotes the replica on
        // its own. With 500 ms, on a machine loaded with 6 test threads on
        // 2 cores beside a build, a test once found the writes it had waited
        // for (`WAIT`) gone after its forced failover; the likely cause is a
        // second failover nobody asked for (a server stalled past 500 ms),
        // promoting a replica still loading its resync. Not reproduced in
        // 10 runs of that test alone. 2 s is still well inside the tests'
        // 20 s wait for a failover after a kill.
        let sentinel = RedisServer::start_as(true, |port, dir| {
            let conf = format!(
                "port {port}\nbind 127.0.0.1\n\
                 sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 2000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 3000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
            );
            std::fs::write(dir.join("sentinel.conf"), conf).expect("sentinel.conf");
            Vec::new()
        });
        let set_up = Self {
            servers: vec![master, replica],
            sentinel,
        };
        wait_for("sentinel knows the replica", SETTLED_WITHIN, || {
            set_up
                .sentinel
                .cli(&["SENTINEL", "REPLICAS", SENTINEL_MASTER])
                .contains("slave")
        });
        set_up
    }

    /// `redis://127.0.0.1:<port>` of the Sentinel.
    pub fn sentinel_url(&self) -> String {
        self.sentinel.node_url()
    }

    /// The store topology that finds the master through this Sentinel.
    pub fn topology(&self) -> Topology {
        Topology::Sentinel {
            master: SENTINEL_MASTER.to_owned(),
            nodes: vec![self.sentinel_url()],
            db: 0,
            username: None,
            password: None,
            tls: false,
        }
    }

    /// The port of the master Sentinel names now.
    pub fn master_port(&self) -> u16 {
        let answer = self
            .sentinel
            .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER]);
        answer
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("sentinel names no master: {answer:?}"))
    }

    /// The server that is the master now.
    pub fn master(&self) -> &RedisServer {
        let port = self.master_port();
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .expect("the master is one of ours")
    }

    /// Forces a failover and waits until the old replica is the master and
    /// takes writes.
    pub fn failover(&self) {
        let before = self.master_port();
        // Sentinel answers NOGOODSLAVE until its last INFO from the replica
        // is fresh (it refreshes every few seconds, later on a loaded
        // machine): ask again until it takes the order.
        wait_for("SENTINEL FAILOVER answered OK", SETTLED_WITHIN, || {
            self.sentinel
                .cli(&["SENTINEL", "FAILOVER", SENTINEL_MASTER])
                == "OK"
        });
        wait_for("failover", SETTLED_WITHIN, || {
            let port = self.master_port();
            port != before && cli(port, &["ROLE"]).starts_with("master")
        });
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// True when the Redis answering on `port` is the process `pid`: another
/// test's server may have grabbed the port between picking and binding it.
fn serves(port: u16, pid: u32) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    // Redis answers INFO while it still loads its AOF, and refuses every
    // other command then (LOADING): it serves once `loading:0`.
    if stream.write_all(b"INFO server persistence\r\n").is_err() {
        return false;
    }
    let needle = format!("process_id:{pid}\r\n");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while answer.len() < 64 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if text.contains(&needle) {
            // A Sentinel has no persistence section.
            if text.contains("redis_mode:sentinel") {
                return true;
            }
            // The field at the start of its line: `async_loading:0` (Redis
            // 7) says nothing about `loading`, which may still be 1.
            if text.contains("\r\nloading:") {
                return text.contains("\r\nloading:0\r\n");
            }
        }
    }
    false
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<_> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// `user`'s settled and reserved usage today as the Redis at `url` holds
/// it, read by a store of the test's own in the binary's default calendar
/// (Asia/Tehran, Monday weeks).
pub async fn used_today(url: &str, user: &str) -> (u64, u64) {
    use quota_proxy::store::QuotaStore as _;
    let store = quota_proxy::store::RedisStore::connect(url, "quota:", Duration::from_secs(2))
        .await
        .expect("connect to the test redis");
    let calendar =
        quota_proxy::periods::Calendar::new(chrono_tz::Asia::Tehran, chrono::Weekday::Mon);
    let now = chrono::Utc::now();
    let usage = store
        .usage(user, &calendar.windows(now), now)
        .await
        .expect("usage");
    (usage[0].used, usage[0].reserved)
}

/// The key of `user`'s set of units, under the prefix `quota:`: a key a
/// test can break (`SET` it to a string) to make Redis refuse that user's
/// calls.
pub fn units_key(user: &str) -> String {
    format!("quota:{{{user}}}:units")
}

/// Waits, at most `within`, until `user` has `used` images settled today on
/// the Redis at `url` and nothing reserved; fails with what it holds.
pub async fn wait_used_today(url: &str, user: &str, used: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let seen = used_today(url, user).await;
        if seen == (used, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user}: waited {within:?} for {used} used in Redis, it holds {seen:?} (used, reserved)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
