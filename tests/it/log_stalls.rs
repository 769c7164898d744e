//! A log collector that stops reading, on the real binary: the proxy goes
//! on serving while its stderr pipe is full, and the lines it drops then
//! are counted in `/metrics`. Found by a reliability session (December
//! 6th); each test's comment says what the fault was and why it matters,
//! each wait is bounded and fails the test when it runs out. Shares
//! `open_files.rs`'s config and helpers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::binary::Binary;
use crate::support::proxy::TestClient;
use crate::support::raw_http::status_on_new_connection;
use crate::support::upstream::{Reply, TestUpstream};
use http::Method;

use crate::open_files::{ANSWER_WITHIN, config, get_page};

/// An image request to the inspected route, closing its connection.
fn image_request(user: &str) -> Vec<u8> {
    let body = r#"{"generate_image": true}"#;
    format!(
        "POST /chat/1/send/ HTTP/1.1\r\nhost: app\r\nx-user-id: {user}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Fault: the logs were written to stderr from the thread serving the
/// request, and blocked it while stderr did not take them. stderr is a
/// pipe to a log collector (the container runtime, journald), and a
/// collector that stalls or falls behind (Docker's default `blocking` log
/// mode, a journald busy rotating, a slow node disk) leaves the pipe full:
/// then the next log line (one per inspected request) blocked a serving
/// thread in `write`, and every other thread on stderr's lock. Every
/// request stopped, pass-through too (the app was down), while `/healthz`
/// and `/readyz` on the admin listener still answered 200, so nothing
/// restarted the pod. Here nothing reads the proxy's stderr (its pipe
/// holds 64 KiB, about 200 lines) while 600 image requests are sent: each,
/// and a page after them, must be answered.
#[tokio::test]
async fn a_log_collector_that_stops_reading_does_not_stop_the_proxy() {
    const IMAGES: usize = 600;
    const CLIENTS: usize = 6;
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr(), "threads = 2"), &[]).await;
    binary.stop_reading_logs();

    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let proxy = binary.proxy;
        clients.spawn(async move {
            let user = format!("user-{client}");
            for n in 0..IMAGES / CLIENTS {
                let answer = status_of(proxy, image_request(&user), ANSWER_WITHIN).await;
                if answer != Ok(200) {
                    return Err(format!("image request {n} of {user}: {answer:?}"));
                }
            }
            Ok(())
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = clients.join_next().await {
        if let Err(e) = done.expect("client task") {
            failed.push(e);
        }
    }
    let page = get_page(binary.proxy, ANSWER_WITHIN).await;
    binary.resume_reading_logs();
    assert!(
        failed.is_empty(),
        "with stderr unread, image requests went unanswered: {failed:?}"
    );
    assert_eq!(page, Ok(200), "with stderr unread, a page went unanswered");
    // Held, not lost: once stderr is read again, every request's line
    // arrives (600 lines fit the writer's queue).
    binary
        .wait_for_logs(IMAGES, ANSWER_WITHIN, |line| {
            line["message"] == "inspected request"
        })
        .await;
}

/// What the fix above gives up, made visible: while stderr does not take
/// the lines and the writer's queue is full, lines are dropped, never
/// waited for, and `/metrics` counts them
/// (`quota_proxy_log_lines_dropped_total`), or an operator could not tell
/// a quiet log from a lost one. Each image request logs one line: 6,000 of
/// them overflow the pipe (about 200 lines) and the 4,096-line queue.
#[tokio::test]
async fn log_lines_dropped_while_stderr_stalls_are_counted_in_metrics() {
    const IMAGES: usize = 6_000;
    const CLIENTS: usize = 6;
    let upstream = TestUpstream::always(Reply::ok()).await;
    let binary = Binary::start(&config(upstream.addr(), "threads = 2"), &[]).await;
    let admin = TestClient::new(binary.admin);
    let dropped = || async {
        let metrics = admin.send(Method::GET, "/metrics", &[], "").await.text();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("quota_proxy_log_lines_dropped_total "))
            .map(|n| n.trim().parse::<u64>().expect("a count"))
    };
    assert_eq!(dropped().await, Some(0), "exported, nothing dropped yet");
    binary.stop_reading_logs();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let proxy = binary.proxy;
        clients.spawn(async move {
            let user = format!("user-{client}");
            for _ in 0..IMAGES / CLIENTS {
                let answer = status_of(proxy, image_request(&user), ANSWER_WITHIN).await;
                assert_eq!(
                    answer,
                    Ok(200),
                    "an image request of {user} with stderr unread"
                );
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client task");
    }
    let stalled = dropped().await.unwrap_or(0);
    binary.resume_reading_logs();
    // What was not dropped arrives; with the lines counted dropped, each
    // request's line is accounted for. A request logs at its settle, which
    // may end after its answer: a line may still be dropped after the
    // count above, so the count is read again with the lines.
    let inspected = |line: &serde_json::Value| line["message"] == "inspected request";
    // Thousands of lines: more than one answer's slack on a busy machine.
    let deadline = Instant::now() + 4 * ANSWER_WITHIN;
    let (written, counted) = loop {
        let written = binary.count_logs(inspected);
        let counted = dropped().await.unwrap_or(0);
        if written + counted as usize >= IMAGES || Instant::now() >= deadline {
            break (written, counted);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stalled > 0 && written + counted as usize >= IMAGES,
        "{IMAGES} requests logged with stderr unread: {stalled} lines counted dropped while \
         it was unread, {counted} in all, {written} written"
    );
}

/// `request` on a new connection: the answer's status, or why there is
/// none within `within`.
async fn status_of(proxy: SocketAddr, request: Vec<u8>, within: Duration) -> Result<u16, String> {
    status_on_new_connection(proxy, &request, within).await
}
