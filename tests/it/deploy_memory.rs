//! The shipped sidecar's memory limit holds what its config lets clients
//! make it hold (deploy/kubernetes): idle keep-alive connections up to
//! `max_connections` (past it the oldest are closed, nobody is locked out),
//! and request bodies up to `body_budget_bytes`. Found
//! by an attack session: the earlier bundle (no connection cap, a 256 MiB
//! budget, a 128Mi limit) went past its limit with 7,000 idle connections
//! or 160 held uploads, and the kernel would have OOM-killed the proxy. The
//! real binary with the shipped settings; VmRSS against the manifest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use quota_proxy::config::{Config, RequestBuffering};

use crate::support::binary::Binary;
use crate::support::raw_http;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};

const WITHIN: Duration = Duration::from_secs(20);
const MIB: u64 = 1 << 20;

/// The proxy's memory besides connections and bodies (threads, pools,
/// caches), with room: VmRSS of the debug binary at start is about 27 MiB.
const BASELINE: u64 = 40 * MIB;

/// Most VmRSS one idle keep-alive connection that has served a request may
/// cost the debug binary (the release one: 22 KB, BENCHMARKS.md).
const PER_CONNECTION: u64 = 32 * 1024;

/// Most VmRSS held uploads may cost per byte of the body budget they hold:
/// each upload's connection and read buffer, and the allocator's rounding,
/// come on top of the bytes counted (measured: 1.3).
fn bodies_cost(budget: u64) -> u64 {
    budget * 3 / 2
}

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The shipped config.
fn shipped() -> Config {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/quota-proxy.toml"))
        .expect("the shipped config");
    Config::from_toml(&text).expect("the shipped config is valid")
}

/// The quota-proxy container's memory limit in deployment.yaml, in bytes.
fn memory_limit() -> u64 {
    let text =
        std::fs::read_to_string(repo("deploy/kubernetes/deployment.yaml")).expect("deployment");
    let deployment: serde_norway::Value = serde_norway::from_str(&text).expect("YAML");
    let proxy = deployment["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("quota-proxy"))
        .expect("the quota-proxy container");
    let limit = proxy["resources"]["limits"]["memory"]
        .as_str()
        .expect("a memory limit");
    let (number, unit) = limit.split_at(limit.find(char::is_alphabetic).unwrap_or(limit.len()));
    let number: u64 = number.parse().expect("a number");
    number
        * match unit {
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "" => 1,
            other => panic!("unit {other} in {limit}"),
        }
}

/// Binary config with the shipped listener and body settings, in front of
/// `upstream`.
fn config_like_shipped(upstream: &TestUpstream, spool: &std::path::Path) -> String {
    let shipped = shipped();
    format!(
        r#"
upstream = "http://{upstream}"
max_connections = {max_connections}
max_body_bytes = {max_body}
request_buffering = "all"
body_buffer_bytes = {buffer}
body_budget_bytes = {budget}
spool_dir = "{spool}"
[identity]
default_plan = "free"
[plans]
free = {{ daily = 3 }}
"#,
        upstream = upstream.authority(),
        max_connections = shipped.max_connections,
        max_body = shipped.max_body_bytes.get(),
        buffer = shipped.body_buffer_bytes.get(),
        budget = shipped.body_budget_bytes.get(),
        spool = spool.display(),
    )
}

#[test]
fn the_limit_holds_every_connection_and_the_whole_budget_at_once() {
    let shipped = shipped();
    let limit = memory_limit();
    // Past `max_connections`, up to an eighth more evicted ones finish.
    let max = u64::from(shipped.max_connections.get());
    let connections = (max + (max / 8).max(1)) * PER_CONNECTION;
    let bodies = bodies_cost(shipped.body_budget_bytes.get());
    assert!(
        BASELINE + connections + bodies <= limit,
        "{} MiB of baseline + {} connections and an eighth more finishing ({} MiB) + held \
         bodies ({} MiB) exceed the container's {} MiB limit",
        BASELINE / MIB,
        shipped.max_connections,
        connections / MIB,
        bodies / MIB,
        limit / MIB
    );
}

/// One connection, one pass-through GET answered, then kept open: `None`
/// when the proxy closed it instead.
async fn idle_connection(addr: std::net::SocketAddr, i: usize) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET /page/{i} HTTP/1.1\r\nhost: app\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(WITHIN, stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Some(stream)
}

/// Connections of `streams` the proxy has not closed.
fn still_open(streams: &[std::net::TcpStream]) -> usize {
    use std::io::Read;
    streams
        .iter()
        .filter(|stream| {
            let mut stream: &std::net::TcpStream = stream;
            matches!(stream.read(&mut [0u8; 64]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

#[tokio::test]
async fn past_max_connections_the_oldest_close_and_the_rest_fit() {
    let cap = shipped().max_connections.get() as usize;
    let upstream =
        TestUpstream::start(|_request: RecordedRequest| async move { Reply::ok().body("ok") })
            .await;
    let spool = tempfile::tempdir().expect("spool");
    let binary = Binary::start(&config_like_shipped(&upstream, spool.path()), &[]).await;
    let before = binary.memory("VmRSS");

    // One client opens more than the proxy holds: every newcomer is still
    // served (nobody is locked out), the oldest idle ones are closed.
    let tries = cap + 64;
    let mut answered = Vec::with_capacity(tries);
    let mut tasks = JoinSet::new();
    for i in 0..tries {
        tasks.spawn(idle_connection(binary.proxy, i));
        while tasks.len() >= 200 {
            if let Some(Ok(Some(stream))) = tasks.join_next().await {
                answered.push(stream);
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(stream)) = done {
            answered.push(stream);
        }
    }
    assert_eq!(answered.len(), tries, "every connection got its answer");
    let streams: Vec<std::net::TcpStream> = answered
        .into_iter()
        .map(|s| {
            let s = s.into_std().expect("std stream");
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect();
    let deadline = Instant::now() + WITHIN;
    while still_open(&streams) > cap {
        assert!(
            Instant::now() < deadline,
            "{} of {tries} connections still open against max_connections = {cap}",
            still_open(&streams)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = binary.memory("VmRSS").saturating_sub(before);
    let each = grown / cap as u64;
    assert!(
        each <= PER_CONNECTION,
        "{cap} idle connections grew VmRSS by {} MiB, {each} bytes each: more than the \
         {PER_CONNECTION} bytes the deployment's limit is sized for",
        grown / MIB
    );
}

#[tokio::test]
async fn held_uploads_fill_the_budget_and_no_more() {
    let shipped = shipped();
    assert_eq!(shipped.request_buffering, RequestBuffering::All);
    let buffer = shipped.body_buffer_bytes.get();
    let budget = shipped.body_budget_bytes.get();
    let upstream =
        TestUpstream::start(|_request: RecordedRequest| async move { Reply::ok().body("ok") })
            .await;
    let spool = tempfile::tempdir().expect("spool");
    let binary = Binary::start(&config_like_shipped(&upstream, spool.path()), &[]).await;
    let before = binary.memory("VmRSS");

    // Uploads that fit in memory, each held one byte short of its length,
    // more of them than the budget holds.
    let length = buffer - 4096;
    let uploads = (budget / length + 32) as usize;
    let body = Arc::new(vec![b'a'; length as usize - 1]);
    let mut held = Vec::new();
    for i in 0..uploads {
        let body = Arc::clone(&body);
        let addr = binary.proxy;
        held.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.ok()?;
            let head = format!(
                "POST /upload/{i} HTTP/1.1\r\nhost: app\r\n\
                 content-type: application/octet-stream\r\ncontent-length: {length}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.ok()?;
            let _ = stream.write_all(&body).await;
            Some(stream)
        }));
    }
    let mut streams = Vec::new();
    for task in held {
        streams.push(task.await.expect("upload task"));
    }
    // The budget fills (most of it in memory)...
    let deadline = Instant::now() + WITHIN;
    while binary.memory("VmRSS").saturating_sub(before) < budget * 8 / 10 {
        assert!(
            Instant::now() < deadline,
            "{uploads} held uploads of {length} bytes grew VmRSS by only {} MiB of a {} MiB \
             budget",
            binary.memory("VmRSS").saturating_sub(before) / MIB,
            budget / MIB
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and stays within it: the uploads past it were refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = binary.memory("VmRSS").saturating_sub(before);
    assert!(
        grown <= bodies_cost(budget),
        "{uploads} held uploads grew VmRSS by {} MiB, past the {} MiB the deployment's limit \
         is sized for (a {} MiB body budget)",
        grown / MIB,
        bodies_cost(budget) / MIB,
        budget / MIB
    );
    drop(streams);
}

/// `max_connections` (3d361f7, `src/server/limits.rs`) refuses the
/// newcomer when the cap is reached, and a connection that never sends a
/// byte keeps its place for the head deadline (`timeouts.client_head`, 30 s). With
/// `max_connections_per_ip` off (the default, and the shipped
/// deployment's `deploy/kubernetes/quota-proxy.toml`, 4,096), one client
/// that opens `max_connections` silent TCP connections, and opens them
/// again every 30 s (about 140 connects a second for 4,096, no bytes sent),
/// locks every other client out: their connections are closed at accept,
/// and the app is down. Fails on 70f7750 (with `max_connections = 16`): a
/// plain GET from another client is closed unanswered while 16 silent
/// connections are open. Passes once a newcomer can take the place of a
/// connection that has sent nothing (or sat idle the longest).
#[tokio::test]
async fn silent_connections_from_one_client_lock_everyone_out() {
    let upstream = TestUpstream::always(Reply::ok().body("hello")).await;
    let config = format!(
        r#"
upstream = "http://{upstream}"
max_connections = 16
[identity]
default_plan = "free"
[plans]
free = {{ daily = 3, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/gen/"
"#,
        upstream = upstream.authority(),
    );
    let binary = Binary::start(&config, &[]).await;
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(
            tokio::net::TcpStream::connect(binary.proxy)
                .await
                .expect("connect"),
        );
    }
    // Accepted (and counted) before the next client comes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let proxy = binary.proxy;
    let answer = tokio::task::spawn_blocking(move || {
        raw_http::send(
            proxy,
            b"GET /page HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
            false,
            Duration::from_secs(5),
        )
    })
    .await
    .expect("the client ran");
    drop(silent);
    assert_eq!(
        answer.status, 200,
        "a pass-through GET from another client got no answer ({:?}) while one client held 16 \
         silent connections (max_connections = 16)",
        answer.error
    );
}
