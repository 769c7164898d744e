//! Findings of a review session (December 6th) of that day's fixes, on the
//! real binary where the behaviour is end to end. Each test's comment says
//! what the flaw was; each wait is bounded and fails the test when it runs
//! out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::support::binary::Binary;
use crate::support::raw_http::status_on_new_connection;
use crate::support::upstream::{Reply, TestUpstream};

/// Slack for a busy 2-core machine on top of what is measured.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// Sends `GET {path}` on a new connection and returns the answer's status
/// once it comes (within a minute: the caller bounds its own wait), or why
/// none came.
async fn get_status(proxy: SocketAddr, path: &str) -> Result<u16, String> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n");
    status_on_new_connection(proxy, request.as_bytes(), Duration::from_secs(60)).await
}

/// Flaw: under a small open-files limit `connections_that_fit` keeps 256
/// descriptors to spare whatever the limit, so under 260 it keeps ONE
/// connection open (and lets one evicted connection finish): a third
/// request at once cuts the first mid-answer. A process that cannot raise
/// its soft limit of 256 (macOS's default, whose hard limit is
/// RLIM_INFINITY, which `setrlimit` refuses as a soft limit) served three
/// requests at once before the cap; the proxy itself holds about 22
/// descriptors. Here three slow requests are open at once under a limit of
/// 256: each must be answered.
#[tokio::test]
async fn three_requests_at_once_under_a_small_open_files_limit_are_all_answered() {
    const LIMIT: u64 = 256;
    const REQUESTS: usize = 3;
    let gate = Arc::new(Semaphore::new(0));
    let upstream = TestUpstream::gated_slow(&gate).await;
    let config = format!("upstream = \"http://{}\"\nthreads = 1\n", upstream.addr());
    let binary = Binary::start_with_open_files_hard(&config, &[], LIMIT).await;
    let mut requests = Vec::new();
    for n in 0..REQUESTS {
        let proxy = binary.proxy;
        requests.push(tokio::spawn(async move {
            get_status(proxy, &format!("/slow/{n}")).await
        }));
        // One at a time, so the first is the oldest.
        tokio::time::timeout(ANSWER_WITHIN, upstream.wait_for_requests(n + 1))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "request {n} did not reach the app; the proxy's log:\n{}",
                    binary.log_lines(&["open-files", "RLIMIT"], 5)
                )
            });
    }
    gate.add_permits(REQUESTS);
    let mut answers = Vec::new();
    for request in requests {
        answers.push(
            tokio::time::timeout(ANSWER_WITHIN, request)
                .await
                .map_err(|_| "no answer in time".to_owned())
                .and_then(|joined| joined.map_err(|e| e.to_string()))
                .and_then(|answer| answer),
        );
    }
    assert_eq!(
        answers,
        vec![Ok(200); REQUESTS],
        "{REQUESTS} requests at once under an open-files limit of {LIMIT}; the proxy's log:\n{}",
        binary.log_lines(&["open-files", "RLIMIT"], 5)
    );
}

/// Flaw: at exit the log writer's guard (tracing-appender's `WorkerGuard`)
/// is dropped to write the queued lines; when the queue is full it waits
/// 100 ms, then `println!`s "Failed to send shutdown signal to logging
/// worker" to stdout, and stdout blocks. A systemd service's stdout and
/// stderr are one stream to journald by default (the shipped unit sets
/// neither): with journald stalled (the fault the non-blocking writer was
/// made for), the drained proxy hung at its very last step until
/// `TimeoutStopSec` (55 s) sent SIGKILL, and a restart of the app waited
/// that long with nothing listening. Here stdout and stderr are one
/// unread pipe, the queue is full (lines counted dropped), and the proxy
/// is told to stop: it must exit.
#[tokio::test]
async fn a_stalled_log_stream_does_not_hang_the_exit() {
    let upstream = TestUpstream::always(Reply::ok()).await;
    let config = format!(
        r#"
upstream = "http://{}"
threads = 1
shutdown_grace = "1s"

[plans.free]
daily = 100000

[identity]
default_plan = "free"

[[routes]]
method = "POST"
path = "/chat/{{id}}/send/"
"#,
        upstream.addr()
    );
    // Every inspected request logs lines, more at trace: the queue fills.
    let mut binary = Binary::start_with_stdout_on_stderr(&config, &[("RUST_LOG", "trace")]).await;
    let admin = crate::support::proxy::TestClient::new(binary.admin);
    binary.stop_reading_logs();
    let mut dropped = 0;
    // One line per image request: the pipe (about 200 lines) and the
    // 4,096-line queue are full after some 4,300.
    for _ in 0..20 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let proxy = binary.proxy;
            batch.spawn(async move {
                for _ in 0..125 {
                    let answer = image_request(proxy).await;
                    assert_eq!(answer, Ok(200), "an image request with the log unread");
                }
            });
        }
        while let Some(done) = batch.join_next().await {
            done.expect("client task");
        }
        let metrics = admin
            .send(http::Method::GET, "/metrics", &[], "")
            .await
            .text();
        dropped = metrics
            .lines()
            .find_map(|l| l.strip_prefix("quota_proxy_log_lines_dropped_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if dropped > 0 {
            break;
        }
    }
    assert!(
        dropped > 0,
        "the log queue never filled; {} lines read",
        binary.logs().len()
    );
    binary.signal("TERM");
    let status = binary.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
}

/// An image request to the inspected route on a new connection, closed
/// after its answer: its status, or why there is none.
async fn image_request(proxy: SocketAddr) -> Result<u16, String> {
    let body = r#"{"generate_image": true}"#;
    let request = format!(
        "POST /chat/1/send/ HTTP/1.1\r\nhost: app\r\nx-user-id: u1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    status_on_new_connection(proxy, request.as_bytes(), ANSWER_WITHIN).await
}

/// Flaw (of the 3xx-is-anonymous rule the Ambiguous change builds on): a
/// redirect to the identity endpoint's own path under a prefix is read as
/// "not logged in". Django's `LocaleMiddleware` answers every caller of an
/// `i18n_patterns` URL written without its language prefix
/// (`/api/quota/identity/` where the app routes `/en/api/quota/identity/`)
/// `302` to the prefixed path, logged in or not, as `APPEND_SLASH` answers
/// a URL without its slash; the proxy catches only the slash, so every user
/// was anonymous and, with `anonymous = "forward"`, every flagged request
/// went on unchecked. Such an answer must be an identity error.
#[tokio::test]
async fn a_redirect_to_the_identity_path_under_a_prefix_is_no_anonymous_answer() {
    use crate::support::identity_server::{IdentityServer, Mode, PATH};
    let server = IdentityServer::start().await;
    server.login("s1", 1, None);
    let config = quota_proxy::config::Config::from_toml(&format!(
        "[plans]\nfree = {{ daily = 3 }}\n[identity]\nkind = \"forward_auth\"\n\
         default_plan = \"free\"\n[identity.forward_auth]\nurl = \"{}{PATH}\"\n\
         negative_cache_ttl = \"0s\"\n",
        server.base()
    ))
    .expect("config");
    let source = quota_proxy::identity::from_config(&config).expect("identity source");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        "sessionid=s1".parse().expect("cookie"),
    );
    // The login redirect stays "not logged in".
    server.set_mode(Mode::LoginRedirect);
    assert_eq!(source.identify(&headers).await.expect("anonymous"), None);
    server.set_mode(Mode::Redirect("/en/api/quota/identity/"));
    let answer = source.identify(&headers).await;
    assert!(
        matches!(
            answer,
            Err(quota_proxy::identity::IdentityError::Unavailable(_))
        ),
        "a 302 to /en{PATH} (LocaleMiddleware, for every caller) was read as {answer:?}"
    );
}
