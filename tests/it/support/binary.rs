//! The real `quota-proxy` binary as a child process: a temporary config
//! with both listeners on `127.0.0.1:0` and JSON logs, the bound addresses
//! read from its "quota-proxy serving" log line, every log line kept for
//! the test to read, signals sent with `kill`, and the child killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long the binary may take to start serving.
const START_WITHIN: Duration = Duration::from_secs(15);

/// The path of the binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_quota-proxy");

/// A running `quota-proxy serve`.
pub struct Binary {
    child: Option<Child>,
    /// The proxy listener's address.
    pub proxy: SocketAddr,
    /// The admin listener's address.
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// While set, nothing reads the child's stderr: its pipe fills.
    logs_paused: Arc<AtomicBool>,
    config_path: PathBuf,
    _dir: TempDir,
}

/// `config_toml` with both listeners on port 0 and JSON logs.
pub fn prepare(config_toml: &str) -> String {
    let mut value: toml::Table = toml::from_str(config_toml).expect("test config is TOML");
    value.insert("listen".into(), "127.0.0.1:0".into());
    let admin = value
        .entry("admin")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    admin
        .as_table_mut()
        .expect("[admin] is a table")
        .insert("listen".into(), "127.0.0.1:0".into());
    let log = value
        .entry("log")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    log.as_table_mut()
        .expect("[log] is a table")
        .insert("format".into(), "json".into());
    toml::to_string(&value).expect("config renders")
}

impl Binary {
    /// Starts `quota-proxy serve` with `config_toml` (see [`prepare`]) and
    /// the extra environment `env`; returns once it logged its addresses.
    pub async fn start(config_toml: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(config_toml, env, None, false).await
    }

    /// [`Binary::start`] with stdout and stderr one pipe, as systemd gives
    /// a service by default (`StandardOutput=journal`,
    /// `StandardError=inherit`: one stream to journald), so that what
    /// stalls the one stalls the other.
    pub async fn start_with_stdout_on_stderr(config_toml: &str, env: &[(&str, &str)]) -> Self {
        Self::launch(config_toml, env, None, true).await
    }

    /// [`Binary::start`] with the soft limit of open files (`RLIMIT_NOFILE`)
    /// set to `soft` in the child before it runs, its hard limit left as
    /// this process's: what a container runtime hands a process (containerd
    /// 2 and Docker 29 give 1024 soft, 524288 hard).
    pub async fn start_with_open_files(config_toml: &str, env: &[(&str, &str)], soft: u64) -> Self {
        Self::launch(config_toml, env, Some((soft, None)), false).await
    }

    /// [`Binary::start`] with both limits of open files set to `limit` in
    /// the child: a process that cannot raise its own.
    pub async fn start_with_open_files_hard(
        config_toml: &str,
        env: &[(&str, &str)],
        limit: u64,
    ) -> Self {
        Self::launch(config_toml, env, Some((limit, Some(limit))), false).await
    }

    async fn launch(
        config_toml: &str,
        env: &[(&str, &str)],
        nofile: Option<(u64, Option<u64>)>,
        stdout_on_stderr: bool,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config_path = dir.path().join("quota-proxy.toml");
        std::fs::write(&config_path, prepare(config_toml)).expect("write config");
        let mut command = Command::new(BINARY);
        command
            .arg("--config")
            .arg(&config_path)
            .arg("serve")
            .env_remove("RUST_LOG")
            .env_remove("QUOTA_PROXY_CONFIG")
            .stdin(Stdio::null());
        let shared = if stdout_on_stderr {
            let (reader, writer) = std::io::pipe().expect("pipe");
            command
                .stdout(writer.try_clone().expect("pipe"))
                .stderr(writer);
            Some(reader)
        } else {
            command.stdout(Stdio::null()).stderr(Stdio::piped());
            None
        };
        for (name, value) in env {
            command.env(name, value);
        }
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: getrlimit and setrlimit are async-signal-safe, and
            // the closure touches nothing else of the parent.
            unsafe {
                command.pre_exec(move || {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if let Some(hard) = hard {
                        limit.rlim_max = hard.min(limit.rlim_max);
                    }
                    limit.rlim_cur = soft.min(limit.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("spawn quota-proxy");
        // The parent's ends of a shared pipe closed: only the child writes.
        drop(command);
        let stderr: Box<dyn std::io::Read + Send> = match shared {
            Some(reader) => Box::new(reader),
            None => Box::new(child.stderr.take().expect("stderr is piped")),
        };
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let logs_paused = Arc::new(AtomicBool::new(false));
        let paused = Arc::clone(&logs_paused);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                sink.lock().expect("log lock").push(line);
                while paused.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        });
        let mut binary = Self {
            child: Some(child),
            logs_paused,
            proxy: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            config_path,
            _dir: dir,
        };
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(line) = binary.find_log(|l| l["message"] == "quota-proxy serving") {
                let addr = |field: &str| {
                    line[field]
                        .as_str()
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| panic!("serving line has no {field}: {line}"))
                };
                binary.proxy = addr("listen");
                binary.admin = addr("admin");
                return binary;
            }
            if let Some(status) = binary.try_status() {
                panic!(
                    "quota-proxy exited with {status} before serving:\n{}",
                    binary.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "quota-proxy did not start within {START_WITHIN:?}:\n{}",
                binary.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops reading the process's stderr (after the line being read): once
    /// the pipe's buffer is full, each write the process makes to it blocks,
    /// as when a log collector stalls (Docker's default `blocking` log
    /// mode, a slow journald).
    pub fn stop_reading_logs(&self) {
        self.logs_paused.store(true, Ordering::Release);
    }

    /// Reads the process's stderr again.
    pub fn resume_reading_logs(&self) {
        self.logs_paused.store(false, Ordering::Release);
    }

    /// The config file it reads (rewrite it, then reload).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Replaces the config file with `config_toml` (see [`prepare`]).
    pub fn write_config(&self, config_toml: &str) {
        std::fs::write(&self.config_path, prepare(config_toml)).expect("write config");
    }

    /// Replaces the config file with exactly `text`.
    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("write config");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A `kB` field of `/proc/<pid>/status` (Linux), e.g. `VmSize` or
    /// `VmRSS`, in bytes.
    pub fn memory(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/<pid>/status");
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in /proc/<pid>/status"));
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("cannot read {line}"));
        kb * 1024
    }

    /// The names of the process's threads (Linux: `/proc/<pid>/task`).
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.child.as_ref().expect("running").id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task");
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }

    /// `http://<admin address>`.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// The log lines that contain one of `words`, at most `at_most` of
    /// them, one per line: what a failing assertion shows.
    pub fn log_lines(&self, words: &[&str], at_most: usize) -> String {
        self.logs()
            .into_iter()
            .filter(|l| words.iter().any(|w| l.contains(w)))
            .take(at_most)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Log lines parsed as JSON (every line is one in JSON format).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The first JSON log line for which `matches` is true.
    pub fn find_log(
        &self,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        self.json_logs().into_iter().find(|l| matches(l))
    }

    /// How many JSON log lines match.
    pub fn count_logs(&self, matches: impl Fn(&serde_json::Value) -> bool) -> usize {
        self.json_logs().iter().filter(|l| matches(l)).count()
    }

    /// Waits (bounded by `within`) until `n` JSON log lines match.
    pub async fn wait_for_logs(
        &self,
        n: usize,
        within: Duration,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + within;
        while self.count_logs(&matches) < n {
            assert!(
                Instant::now() < deadline,
                "waited {within:?} for {n} matching log lines:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The admin listener's `/healthz` answer, as JSON.
    pub async fn healthz(&self) -> serde_json::Value {
        super::proxy::TestClient::new(self.admin)
            .send(http::Method::GET, "/healthz", &[], "")
            .await
            .json()
    }

    /// Polls `/healthz` (bounded by `within`) until `check` holds for its
    /// `store` object; fails naming `what` and the last answer.
    pub async fn wait_store_health(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let health = self.healthz().await;
            if check(&health["store"]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {within:?} for {what}; /healthz says {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `user`'s settled daily usage from the admin usage API (bearer
    /// `admin_token`), once nothing of theirs is in flight (bounded by
    /// `within`).
    pub async fn settled_daily(&self, user: &str, admin_token: &str, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        let auth = format!("Bearer {admin_token}");
        loop {
            let answer = super::proxy::TestClient::new(self.admin)
                .send(
                    http::Method::GET,
                    &format!("/v1/users/{user}/usage"),
                    &[("authorization", &auth)],
                    "",
                )
                .await;
            assert_eq!(answer.status, http::StatusCode::OK, "{}", answer.text());
            let daily = &answer.json()["periods"]["daily"];
            if daily["reserved"] == 0 {
                return daily["used"].as_u64().expect("used is a number");
            }
            assert!(
                Instant::now() < deadline,
                "{user} still has a reservation in flight after {within:?}: {daily}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (e.g. "TERM", "HUP") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// The exit status, if it has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    /// Waits (bounded by `within`) for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "quota-proxy still running {within:?} after being told to stop:\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the binary to completion with `args` (and `--config config` when
/// given), bounded by a timeout.
pub fn run_cli(config: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("QUOTA_PROXY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn quota-proxy");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("quota-proxy {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// The `/metrics` text of a binary just started, with one inspected route
/// (`POST /gen/`) in front of an upstream answering 200: every series that
/// exists before any request.
pub async fn metrics_at_start() -> String {
    let upstream =
        crate::support::upstream::TestUpstream::always(crate::support::upstream::Reply::ok()).await;
    let binary = Binary::start(
        &format!(
            "upstream = \"http://{}\"\n[[routes]]\nmethod = \"POST\"\npath = \"/gen/\"\n",
            upstream.authority()
        ),
        &[],
    )
    .await;
    crate::support::proxy::TestClient::new(binary.admin)
        .send(http::Method::GET, "/metrics", &[], "")
        .await
        .text()
}
