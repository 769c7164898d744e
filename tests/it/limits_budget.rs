//! The body budget under clients that stall (docs/limits.md, *Stalled
//! bodies*): the real binary, raw HTTP/1.1 clients over TCP that send part
//! of a body and then nothing, a real upstream on loopback. The budget's
//! other tests (200 uploads against a small budget) are in `limits.rs`,
//! one HTTP/2 connection's share in `http2_limits.rs`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::{SLACK, config, gauge, metrics, post_head};
use crate::support::binary::Binary;
use crate::support::upstream::{Reply, TestUpstream};

/// A counter's value on `/metrics` (each of the budget's is there from
/// the start, at 0, for the alert that adds them).
fn counter(metrics: &str, name: &str) -> u64 {
    gauge(metrics, name) as u64
}

/// What a stalled client read before `within` passed: its text, and
/// whether the proxy closed the connection.
async fn answer_of(mut stream: TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&received).to_lowercase(), closed)
}

/// The binary in front of an upstream that answers 200, with `extra`
/// top-level TOML and a client-body deadline (60 s) that cuts nothing here.
async fn start(extra: &str) -> (TestUpstream, Binary) {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let config =
        config(upstream.addr(), extra).replace("client_body = \"1s\"", "client_body = \"60s\"");
    let binary = Binary::start(&config, &[]).await;
    (upstream, binary)
}

/// One connection per path, each declaring `declared` body bytes and
/// sending `sent` of them, then nothing; once they are past the stall (a
/// second without 16 KiB).
async fn stalled_uploads(
    binary: &Binary,
    paths: &[String],
    declared: usize,
    sent: usize,
) -> Vec<TcpStream> {
    let mut stalled = Vec::new();
    for path in paths {
        let mut stream = TcpStream::connect(binary.proxy).await.expect("connect");
        let head = post_head(path, "application/octet-stream", declared as u64);
        stream.write_all(head.as_bytes()).await.expect("head");
        stream
            .write_all(&vec![b'a'; sent])
            .await
            .expect("part of the body");
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stalled
}

/// A newcomer's whole upload of `len` bytes to `path`: its answer.
async fn upload(binary: &Binary, path: &str, len: usize) -> String {
    let mut newcomer = TcpStream::connect(binary.proxy).await.expect("connect");
    let head = post_head(path, "application/octet-stream", len as u64);
    newcomer.write_all(head.as_bytes()).await.expect("head");
    newcomer.write_all(&vec![b'b'; len]).await.expect("body");
    answer_of(newcomer, Duration::from_secs(1) + SLACK).await.0
}

/// Flaw (found by an attack session): the budget was first come, first
/// served, and a body that went silent kept its bytes for as long as
/// `timeouts.client_body` (here 60 s) allowed. Four connections whose
/// uploads sent 450 KiB and then nothing held a 2 MiB budget, and every
/// other client's upload waited 1 s and got 503. Now a body that finds no
/// room cuts the stalled ones (no 16 KiB in the last second), longest
/// stalled first and no more than it lacks: the newcomer's upload is
/// forwarded, one stalled client gets 408 and its connection is closed,
/// and the others keep their place. Two of the stalled uploads are on an
/// inspected route (read into memory), two are forwarded ones received
/// whole (`request_buffering = "all"`, the spool).
#[tokio::test]
async fn stalled_uploads_are_cut_for_a_newcomer_when_the_budget_is_full() {
    const STALLERS: usize = 4;
    // What each stalled upload holds: its declared length on the inspected
    // route, body_buffer_bytes for one received whole. Four hold 1.8 MiB of
    // the 2 MiB, too little left for the newcomer's 300 KiB.
    const HELD: usize = 460 * 1024;
    let extra = "request_buffering = \"all\"\nbody_budget_bytes = 2097152\n\
                 max_body_bytes = 1048576\nbody_buffer_bytes = 471040";
    let (upstream, binary) = start(extra).await;
    let paths: Vec<String> = (0..STALLERS)
        .map(|n| {
            if n % 2 == 0 {
                format!("/chat/{n}/send/")
            } else {
                format!("/upload/{n}")
            }
        })
        .collect();
    let stalled = stalled_uploads(&binary, &paths, HELD, 450 * 1024).await;
    let answer = upload(&binary, "/chat/9/send/", 300 * 1024).await;
    assert!(
        answer.starts_with("http/1.1 200"),
        "the newcomer's upload, with {STALLERS} stalled ones holding the budget: {answer:?}"
    );
    let seen = metrics(&binary).await;
    assert_eq!(
        counter(&seen, "quota_proxy_body_budget_cut_total"),
        1,
        "cut"
    );
    assert_eq!(counter(&seen, "quota_proxy_body_budget_refused_total"), 0);

    let mut cut = 0;
    for stream in stalled {
        let (answer, closed) = answer_of(stream, Duration::from_millis(300)).await;
        if answer.is_empty() {
            assert!(
                !closed,
                "a stalled client kept its place but lost its connection"
            );
            continue;
        }
        assert!(
            answer.starts_with("http/1.1 408") && answer.contains("connection: close") && closed,
            "a cut upload's answer: {answer:?} (closed: {closed})"
        );
        cut += 1;
    }
    assert_eq!(
        cut, 1,
        "one stalled upload cut, the others kept their place"
    );
    assert_eq!(
        upstream.count(),
        1,
        "only the newcomer's upload was forwarded"
    );
}

/// The same with bodies too small to look worth cutting: twenty uploads
/// stalled at 40 KiB hold 800 KiB of a 1 MiB budget (a client with enough
/// connections needs no large body to hold a budget). A newcomer's 300 KiB
/// upload cuts as many as it lacks room for (two, three with the bytes
/// the readers' buffers round up to), longest stalled first, and is
/// forwarded.
#[tokio::test]
async fn small_stalled_uploads_are_cut_too() {
    const STALLERS: usize = 20;
    const HELD: usize = 40 * 1024;
    let (_upstream, binary) = start("body_budget_bytes = 1048576\nmax_body_bytes = 524288").await;
    let paths: Vec<String> = (0..STALLERS).map(|n| format!("/chat/{n}/send/")).collect();
    // All but a byte of each body.
    let stalled = stalled_uploads(&binary, &paths, HELD + 1, HELD).await;
    let answer = upload(&binary, "/chat/99/send/", 300 * 1024).await;
    assert!(
        answer.starts_with("http/1.1 200"),
        "the newcomer's upload, with {STALLERS} small stalled ones holding the budget: {answer:?}"
    );
    let seen = metrics(&binary).await;
    let counted = counter(&seen, "quota_proxy_body_budget_cut_total");
    assert!((2..=3).contains(&counted), "{counted} cut");
    assert_eq!(counter(&seen, "quota_proxy_body_budget_refused_total"), 0);
    let mut cut = 0;
    for stream in stalled {
        let (answer, _) = answer_of(stream, Duration::from_millis(100)).await;
        if answer.starts_with("http/1.1 408") {
            cut += 1;
        } else {
            assert!(answer.is_empty(), "a stalled upload's answer: {answer:?}");
        }
    }
    assert_eq!(cut, counted, "each cut upload was answered 408");
}
