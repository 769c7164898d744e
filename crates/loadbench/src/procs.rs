//! The processes a load run measures, each started on a free loopback port
//! in a temporary directory and killed when its handle is dropped:
//! quota-proxy (the real binary with a generated config), `redis-server`
//! (no persistence; what it executed is read by `redis_info.rs`) and
//! nginx. Also what `/proc` says about a process: CPU seconds and resident
//! memory.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_info::{RedisCalls, redis_calls};

/// How long a started process may take to accept connections.
const READY_WITHIN: Duration = Duration::from_secs(15);

/// A free loopback port (bound, read, released).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// An executable on `PATH`, or in the sbin directories (nginx lives in
/// `/usr/sbin`, which a non-root `PATH` often lacks).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// CPU time (user + system) of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("unreadable /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks = |i: usize| -> io::Result<f64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other("unreadable /proc stat field"))
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14)? + ticks(15)?) / hz)
}

/// The parent pid of a process, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The children of `pid`, found by scanning `/proc`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| parent_of(child) == Some(pid))
        .collect()
}

/// A memory figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in bytes.
pub fn memory_bytes(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            let kb = value
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()?;
            Some(kb * 1024)
        })
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// `pid`'s `VmRSS` once it has stopped falling: read every second, for up
/// to `within`, until three readings in a row are less than 1% below the
/// last fall. quota-proxy's allocator hands freed pages back from a
/// background thread, gradually, over about 10 s (Cargo.toml,
/// `tikv-jemallocator`).
pub fn settled_rss(pid: u32, within: Duration) -> io::Result<u64> {
    let deadline = Instant::now() + within;
    let mut fallen_to = memory_bytes(pid, "VmRSS")?;
    let mut latest = fallen_to;
    let mut still = 0;
    while still < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        latest = memory_bytes(pid, "VmRSS")?;
        if latest + fallen_to / 100 < fallen_to {
            fallen_to = latest;
            still = 0;
        } else {
            still += 1;
        }
    }
    Ok(latest)
}

fn wait_until_listening(addr: SocketAddr, child: &mut Child, log: &Path) -> io::Result<()> {
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "exited with {status} before listening: {}",
                tail(log)
            )));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::other(format!(
                "not listening on {addr} after {READY_WITHIN:?}: {}",
                tail(log)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log file, for error messages.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<_> = text.lines().rev().take(8).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts the server `spawn(port)` runs on a port picked free and waits
/// until it listens there. A port picked free may be taken before the
/// server binds it, so a failed start is retried (three tries); the last
/// error is returned, with the tail of `log`.
fn start_on_free_port(
    log: &Path,
    mut spawn: impl FnMut(u16) -> io::Result<Child>,
) -> io::Result<(Child, SocketAddr)> {
    let mut last = io::Error::other("not started");
    for _ in 0..3 {
        let port = free_port()?;
        let mut child = spawn(port)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        match wait_until_listening(addr, &mut child, log) {
            Ok(()) => return Ok((child, addr)),
            Err(e) => {
                kill(&mut child);
                last = e;
            }
        }
    }
    Err(last)
}

/// The hyper floor (`floor.rs`) in a process of its own: `binary` (the
/// bench itself) re-run as `binary floor LISTEN UPSTREAM THREADS`.
pub struct FloorProcess {
    child: Child,
    addr: SocketAddr,
}

impl FloorProcess {
    /// Starts the floor on a free port in front of `upstream`, logging to
    /// `dir/hyper-floor.log`.
    pub fn start(
        binary: &Path,
        dir: &Path,
        upstream: SocketAddr,
        threads: usize,
    ) -> io::Result<FloorProcess> {
        let log = dir.join("hyper-floor.log");
        let (child, addr) = start_on_free_port(&log, |port| {
            Command::new(binary)
                .arg("floor")
                .arg(SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string())
                .arg(upstream.to_string())
                .arg(threads.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
        })?;
        Ok(FloorProcess { child, addr })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for FloorProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// quota-proxy, the release (or, under `cargo test`, debug) binary, run
/// with a config written for it.
pub struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ProxyProcess {
    /// Starts `binary` with the config `make_config(port)` returns for a
    /// free port, in `dir`, logging at `warn` to `dir/<name>.log`. `threads`
    /// sets its serving threads (the config's `threads`), `None` leaves the
    /// default (one per core).
    pub fn start(
        binary: &Path,
        dir: &Path,
        name: &str,
        threads: Option<usize>,
        make_config: impl Fn(u16) -> String,
    ) -> io::Result<ProxyProcess> {
        let config = dir.join(format!("{name}.toml"));
        let log = dir.join(format!("{name}.log"));
        let (child, addr) = start_on_free_port(&log, |port| {
            let text = match threads {
                // Top-level keys go before the first table.
                Some(n) => format!("threads = {n}\n{}", make_config(port)),
                None => make_config(port),
            };
            std::fs::write(&config, text)?;
            Command::new(binary)
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?)
                .spawn()
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot run {}: {e}", binary.display()))
                })
        })?;
        Ok(ProxyProcess { child, addr, log })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds used so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid()).unwrap_or(f64::NAN)
    }

    /// The last lines it logged.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A private `redis-server`: free loopback port, empty directory, no
/// persistence (`--save "" --appendonly no`).
pub struct RedisProcess {
    child: Child,
    port: u16,
}

impl RedisProcess {
    /// Starts `redis-server` from `PATH` with its files in `dir`.
    pub fn start(dir: &Path) -> io::Result<RedisProcess> {
        Self::start_with(dir, &[])
    }

    /// [`RedisProcess::start`] with `extra` arguments (a cluster node's).
    pub fn start_with(dir: &Path, extra: &[&str]) -> io::Result<RedisProcess> {
        let binary = find_program("redis-server")
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "redis-server not found"))?;
        let log = dir.join("redis.log");
        let (child, addr) = start_on_free_port(&log, |port| {
            Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(extra)
                .arg("--dir")
                .arg(dir)
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
        })?;
        Ok(RedisProcess {
            child,
            port: addr.port(),
        })
    }

    /// Moves redis-server (all its threads) onto the CPUs `cpus` lists,
    /// so it stops competing with the proxies for theirs.
    pub fn pin_to(&self, cpus: &[usize]) -> io::Result<()> {
        let threads = std::fs::read_dir(format!("/proc/{}/task", self.pid()))?;
        for thread in threads {
            let tid: libc::pid_t = thread?
                .file_name()
                .to_string_lossy()
                .parse()
                .map_err(io::Error::other)?;
            // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes
            // inside it for CPU numbers below CPU_SETSIZE, which is checked.
            let result = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                for &cpu in cpus {
                    if cpu >= libc::CPU_SETSIZE as usize {
                        return Err(io::Error::other(format!("no CPU {cpu}")));
                    }
                    libc::CPU_SET(cpu, &mut set);
                }
                libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            if result != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has executed so far; see [`redis_calls`].
    pub fn calls(&self) -> io::Result<RedisCalls> {
        redis_calls(self.port)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// nginx as a reverse proxy to the same upstream: a keep-alive pool,
/// HTTP/1.1 to the upstream with `Connection: ""`, no access log,
/// `worker_processes` as given.
pub struct NginxProcess {
    master: Child,
    workers: Vec<u32>,
    addr: SocketAddr,
}

impl NginxProcess {
    /// Starts `binary` with its config, logs and temp files in `dir`, able
    /// to hold `clients` client connections at once (each worker can take
    /// them all, beside its upstream pool).
    pub fn start(
        binary: &Path,
        dir: &Path,
        upstream: SocketAddr,
        workers: usize,
        clients: usize,
    ) -> io::Result<NginxProcess> {
        let mut last = io::Error::other("not started");
        for _ in 0..3 {
            let port = free_port()?;
            let conf = dir.join("nginx.conf");
            std::fs::write(&conf, nginx_config(dir, port, upstream, workers, clients))?;
            let log = dir.join("nginx-error.log");
            let mut master = Command::new(binary)
                .arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            match wait_until_listening(addr, &mut master, &log) {
                Ok(()) => {
                    let deadline = Instant::now() + READY_WITHIN;
                    let mut found = children_of(master.id());
                    while found.len() < workers && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                        found = children_of(master.id());
                    }
                    return Ok(NginxProcess {
                        master,
                        workers: found,
                        addr,
                    });
                }
                Err(e) => {
                    let workers = children_of(master.id());
                    kill(&mut master);
                    kill_pids(&workers);
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Master and worker pids.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.master.id())
            .chain(self.workers.iter().copied())
            .collect()
    }

    /// CPU seconds of the master and its workers.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids()
            .into_iter()
            .map(|pid| cpu_seconds(pid).unwrap_or(f64::NAN))
            .sum()
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        // SIGKILL of the master would orphan the workers: kill both.
        kill(&mut self.master);
        kill_pids(&self.workers);
    }
}

fn kill_pids(pids: &[u32]) {
    for &pid in pids {
        // SAFETY: kill(2) on a pid this bench started; no memory involved.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Idle upstream connections each nginx worker keeps (`keepalive`).
const NGINX_KEEPALIVE: usize = 512;

fn nginx_config(
    dir: &Path,
    port: u16,
    upstream: SocketAddr,
    workers: usize,
    clients: usize,
) -> String {
    let dir = dir.display();
    // A worker's connections are its clients' and its upstream ones. Not
    // more than needed: nginx allocates (and touches) them all at start,
    // which would show in its memory figures.
    let connections = (clients + NGINX_KEEPALIVE).max(4096);
    // As root, nginx's workers would switch to `nobody`, who cannot write
    // to the private temporary directory.
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 {
        "user root;"
    } else {
        ""
    };
    format!(
        r#"{user}
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    error_log {dir}/nginx-error.log warn;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    client_max_body_size 32m;
    upstream app {{
        server {upstream};
        keepalive {NGINX_KEEPALIVE};
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location /stream/ {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"#
    )
}
