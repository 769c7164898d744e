//! Every image counted once, whatever the answer looks like (phases:
//! report and settle): findings of an attack session, each a test on the
//! real binary that failed before its fix (its doc tells what the proxy
//! did). A header report beside an in-band one, a report payload longer
//! than the scanner reads, a JSON body slower than the reservation's TTL, a
//! generation admitted locally during a Redis outage and still running
//! when it ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tokio::sync::Notify;

use crate::support::binary::Binary;
use crate::support::gen_route::{BREAKER_NEVER_OPENS, daily_config, redis_store};
use crate::support::proxy::{Answer, TestClient};
use crate::support::raw_http;
use crate::support::redis::{RedisServer, used_today};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};

const WITHIN: Duration = Duration::from_secs(15);

/// A flagged request of `user` to `/gen/` through the proxy at `proxy`;
/// `hold` asks the upstream to hold its answer (`x-hold: 1`).
async fn generate(proxy: SocketAddr, user: &str, hold: bool) -> Answer {
    let hold = if hold { "1" } else { "0" };
    TestClient::new(proxy)
        .send(
            Method::POST,
            "/gen/",
            &[
                ("x-user-id", user),
                ("x-hold", hold),
                ("content-type", "application/json"),
            ],
            r#"{"generate_image": true}"#,
        )
        .await
}

const ADMIN_TOKEN: &str = "count-admin-token";

/// An upstream whose answer says `X-Images-Saved: 0` in its head, streams
/// text, and after `delay` the app's marker with the request's token.
async fn header_zero_then_marker(delay: Duration) -> TestUpstream {
    TestUpstream::start(move |request: RecordedRequest| async move {
        let token = request
            .header("x-quota-report-token")
            .unwrap_or("none")
            .to_owned();
        Reply::ok()
            .header("content-type", "text/plain; charset=utf-8")
            .header("x-images-saved", "0")
            .stream([
                ("here is your picture ".to_owned(), Duration::ZERO),
                (
                    format!(
                        "[IMAGES_SAVED]{{\"count\": 1, \"token\": \"{token}\"}}[IMAGES_SAVED_END]"
                    ),
                    delay,
                ),
            ])
    })
    .await
}

/// The binary in front of `upstream` with the chat app's report settings
/// (marker with the request's token, stripped, one image per reply) on
/// `/gen/`, a free plan of 3 a day, the usage API on, and `edit` applied.
async fn marker_binary(upstream: &TestUpstream, edit: impl FnOnce(&mut toml::Table)) -> Binary {
    let mut config: toml::Table = toml::from_str(&format!(
        r#"
upstream = "http://{upstream}"
[identity]
default_plan = "free"
[plans]
free = {{ daily = 3, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/gen/"
deny_status = 429
[usage]
report_marker = {{ start = "[IMAGES_SAVED]", end = "[IMAGES_SAVED_END]" }}
strip_marker = true
count = "requests"
report_token_header = "X-Quota-Report-Token"
require_report_token = true
[admin]
token_env = "QUOTA_PROXY_ADMIN_TOKEN"
"#,
        upstream = upstream.authority(),
    ))
    .expect("TOML");
    edit(&mut config);
    let config = toml::to_string(&config).expect("config renders");
    Binary::start(&config, &[("QUOTA_PROXY_ADMIN_TOKEN", ADMIN_TOKEN)]).await
}

/// `user`'s settled daily usage in the binary's store (the admin usage
/// API), once nothing of theirs is in flight.
async fn settled(binary: &Binary, user: &str) -> u64 {
    binary.settled_daily(user, ADMIN_TOKEN, WITHIN).await
}

/// docs/security.md: "The reports of one response are summed with
/// saturation and capped at the bound." But when the answer carries the
/// report header (`usage.report_header`, on by default as `X-Images-Saved`
/// even in the Django preset), `account` in src/quota/forward.rs settles
/// at once with the header's count and never watches the body: an in-band
/// marker with the request's own token is neither counted nor stripped. An
/// app that streams cannot know at head time how many images it will save,
/// so a header saying 0 (or `false`) followed by the real marker at the
/// end saves an image that is counted 0 times (and hands the marker, token
/// included, to the browser).
#[tokio::test]
async fn a_report_header_hides_the_marker_of_the_same_answer() {
    let upstream = header_zero_then_marker(Duration::from_millis(20)).await;
    let binary = marker_binary(&upstream, |_| {}).await;
    let answer = generate(binary.proxy, "h", false).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let used = settled(&binary, "h").await;
    assert_eq!(
        used,
        1,
        "the app saved 1 image and reported it with the request's token in its marker \
         (after an X-Images-Saved: 0 header); the store counts {used}. The client got: {:?}",
        answer.text()
    );
}

/// A reservation was kept alive while the answer's head was awaited and
/// while a streamed body was watched, but not while a JSON answer's body
/// was read for its `images_saved` field (bounded only by
/// `timeouts.idle`). A JSON answer whose body takes longer than
/// what is left of `store.reservation_ttl` let the reservation expire
/// while the generation it holds for was still being answered, and a
/// parallel request of the same user at the limit was admitted. Now the
/// settlement holds it from admit to settle (`src/quota/hold.rs`). Scaled
/// down: `reservation_ttl = "1s"`, the body arrives 2.5 s after the head.
#[tokio::test]
async fn a_slow_json_body_lets_its_reservation_expire() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        let body = r#"{"images_saved": 1}"#;
        if request.header("x-hold") == Some("1") {
            Reply::ok()
                .header("content-type", "application/json")
                .header("content-length", &body.len().to_string())
                .stream([(body, Duration::from_millis(2500))])
        } else {
            Reply::ok()
                .header("content-type", "application/json")
                .body(body)
        }
    })
    .await;
    let config = daily_config(&upstream, 1, r#"reservation_ttl = "1s""#)
        + "[admin]\ntoken_env = \"QUOTA_PROXY_ADMIN_TOKEN\"\n";
    let binary = Binary::start(&config, &[("QUOTA_PROXY_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    let first = tokio::spawn(generate(binary.proxy, "j", true));
    tokio::time::timeout(WITHIN, upstream.wait_for_requests(1))
        .await
        .expect("the first generation reaches the upstream");
    // The head is out; its body (and report) is on its way.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = generate(binary.proxy, "j", false).await;
    let first = first.await.expect("first");
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let used = settled(&binary, "j").await;
    assert!(
        second.status == StatusCode::TOO_MANY_REQUESTS && used <= 1,
        "daily limit 1: while the first answer's JSON body was still arriving, the second \
         request answered {} ({}); the upstream was asked {} times and the store counts {used}",
        second.status,
        second.text(),
        upstream.count()
    );
}

/// The in-band report's payload is read only up to 256 bytes
/// (`MAX_PAYLOAD`, src/report/marker.rs:29); a longer one is not a report
/// that can be read. An app whose report names what it saved (here the
/// prompt, as the image's caption) lets the user choose the payload's
/// length, so a prompt of 300 characters once left the saved image
/// uncounted. The request's token seen in the stream without a readable
/// report is the backend's report all the same: it is charged as a
/// malformed report, 1 image.
#[tokio::test]
async fn a_report_payload_over_256_bytes_counts_as_malformed() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        let token = request
            .header("x-quota-report-token")
            .unwrap_or("none")
            .to_owned();
        let prompt = request.json()["message"].as_str().unwrap_or("").to_owned();
        let report = serde_json::json!({"count": 1, "token": token, "prompt": prompt});
        Reply::ok()
            .header("content-type", "text/plain; charset=utf-8")
            .stream([
                ("here is your picture ".to_owned(), Duration::ZERO),
                (
                    format!("[IMAGES_SAVED]{report}[IMAGES_SAVED_END]"),
                    Duration::from_millis(20),
                ),
            ])
    })
    .await;
    let binary = marker_binary(&upstream, |_| {}).await;
    let prompt = "a cat ".repeat(50);
    let body = serde_json::json!({"message": prompt, "generate_image": true}).to_string();
    let answer = TestClient::new(binary.proxy)
        .send(
            Method::POST,
            "/gen/",
            &[("x-user-id", "p"), ("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let used = settled(&binary, "p").await;
    assert_eq!(
        used,
        1,
        "the app saved 1 image and reported it with the request's token (a payload of about {} \
         bytes, its prompt included); the store counts {used}. The client got {} bytes, \
         marker included: {}",
        prompt.len() + 60,
        answer.body.len(),
        answer.text().contains("[IMAGES_SAVED]")
    );
}

/// Under `on_store_error = "local"` a reservation made in this replica's
/// memory during an outage is not known to Redis. When Redis answers again,
/// the first reserve Redis answers ends the outage and drops the local
/// counts (`Local::end_outage`, src/store/resilient/local.rs), live local
/// reservations included, and Redis admits from its own counters, which do
/// not hold the generation still running. A free user with a daily limit of
/// 1 whose first image started during a short Redis restart gets a second
/// one as soon as Redis is back: 2 images saved and counted for a limit of
/// 1, with one replica (the docs bound the overrun at `R × (limit −
/// baseline)` = 1 beyond what Redis knew, here 0).
#[tokio::test]
async fn a_generation_admitted_locally_is_forgotten_when_redis_returns() {
    let mut redis = RedisServer::start();
    let release = Arc::new(Notify::new());
    let upstream = {
        let release = Arc::clone(&release);
        TestUpstream::start(move |request: RecordedRequest| {
            let release = Arc::clone(&release);
            async move {
                if request.header("x-hold") == Some("1") {
                    // A generation that takes a while.
                    release.notified().await;
                }
                Reply::ok().header("x-images-saved", "1").body("generated")
            }
        })
        .await
    };
    let config = daily_config(
        &upstream,
        1,
        &redis_store(&redis, "local", BREAKER_NEVER_OPENS),
    );
    let binary = Binary::start(&config, &[]).await;

    // Redis goes away (a restart); the user's first image starts, admitted
    // from this replica's memory.
    redis.kill();
    let first = tokio::spawn(generate(binary.proxy, "u", true));
    tokio::time::timeout(WITHIN, upstream.wait_for_requests(1))
        .await
        .expect("the first generation reaches the upstream");
    binary
        .wait_store_health("the local count to be in force", WITHIN, |s| {
            s["local"] == true
        })
        .await;

    // Redis is back (empty: the user never settled anything there) while
    // the first generation still runs. The user asks again.
    redis.restart();
    binary
        .wait_store_health("redis to answer", WITHIN, |s| s["up"] == true)
        .await;
    let second = generate(binary.proxy, "u", false).await;
    release.notify_one();
    let first = first.await.expect("first request");
    assert_eq!(first.status, StatusCode::OK);
    binary
        .wait_store_health("the settle queue to drain", WITHIN, |s| {
            s["pending_settles"] == 0 && s["local"] == false
        })
        .await;
    let saved = upstream
        .requests()
        .iter()
        .filter(|r| r.header("x-user-id") == Some("u"))
        .count();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut used = used_today(&redis.url(), "u").await;
    while used.0 < saved as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        used = used_today(&redis.url(), "u").await;
    }
    assert!(
        saved <= 1 && second.status == StatusCode::TOO_MANY_REQUESTS,
        "daily limit 1, one replica: the upstream saved {saved} images for \"u\" (second \
         request answered {}); Redis now counts {:?} (used, reserved). The generation \
         admitted from local memory during the outage was still running when Redis \
         answered again, and Local::end_outage dropped its reservation, so Redis admitted \
         a second one",
        second.status,
        used
    );
}

/// Since b2e2c48 a header report no longer ends the watch of a streamed
/// body, for the app that sends `X-Images-Saved: 0` with the head (it
/// cannot know yet: a Django middleware sets it before a streaming view's
/// generator runs) and the real count in its marker at the end. But when
/// such a body is cut before its end (the upstream silent past
/// `timeouts.idle`, or its connection reset), the fail-closed rule ("a body
/// cut before its end with no report seen settles a flagged request as one
/// image", `src/quota/usage_body.rs`) does not apply: `Settlement::unreadable`
/// (`src/quota/settle.rs`) takes the header's 0 as a report seen, and the
/// request is charged 0, while the app, which saves and then reports at
/// the very end, may have saved its image. Fails on 70f7750: the store
/// counts 0 for a flagged stream cut before its marker (1 without the
/// header).
#[tokio::test]
async fn a_header_zero_cancels_the_fail_closed_charge_of_a_cut_stream() {
    let upstream = header_zero_then_marker(Duration::from_secs(4)).await;
    let binary = marker_binary(&upstream, |config| {
        config.insert("timeouts".into(), toml::toml! { idle = "1s" }.into());
    })
    .await;
    // A byte-exact client (the stream ends in an error), off the runtime
    // that runs the upstream.
    let proxy = binary.proxy;
    let answer = tokio::task::spawn_blocking(move || {
        let body = r#"{"generate_image": true}"#;
        let request = format!(
            "POST /gen/ HTTP/1.1\r\nHost: app\r\nX-User-Id: cut\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        raw_http::send(proxy, request.as_bytes(), false, WITHIN)
    })
    .await
    .expect("the client ran");
    assert_eq!(answer.status, 200, "the stream starts: {answer:?}");
    let used = settled(&binary, "cut").await;
    assert_eq!(
        used, 1,
        "a flagged stream cut by the idle timeout before its marker is charged {used}, not \
         the fail-closed 1: the head's `X-Images-Saved: 0` counts as a report seen"
    );
}

/// With both in-band sources configured (`report_marker` for the chat's
/// text stream, `report_sse_event` for an SSE endpoint), an SSE answer that
/// reports its images as an event carries the request's token in its
/// data, and the marker scanner, which also reads every event stream,
/// sees that token with no marker around it: since b2e2c48 that is "the
/// backend's report, unreadable", charged as malformed (`MarkerScanner::report`
/// in `src/report/marker.rs`). `StreamReport::report` (`src/report/mod.rs`)
/// adds it to the SSE event's report, so an event that says 0 images
/// (a reply of text, nothing saved) is charged 1. Fails on 70f7750: a user
/// whose three replies saved nothing is charged three images (their
/// whole daily limit).
#[tokio::test]
async fn an_sse_report_of_zero_is_charged_one_when_a_marker_is_also_configured() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        let token = request
            .header("x-quota-report-token")
            .unwrap_or("none")
            .to_owned();
        Reply::ok()
            .header("content-type", "text/event-stream")
            .stream([
                ("data: just text, no image\n\n".to_owned(), Duration::ZERO),
                (
                    format!(
                        "event: images_saved\ndata: {{\"count\": 0, \"token\": \"{token}\"}}\n\n"
                    ),
                    Duration::from_millis(10),
                ),
            ])
    })
    .await;
    let binary = marker_binary(&upstream, |config| {
        let usage = config["usage"].as_table_mut().expect("[usage]");
        usage.insert("report_sse_event".into(), "images_saved".into());
        usage.insert("count".into(), "images".into());
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let answer = TestClient::new(binary.proxy)
            .send(
                Method::POST,
                "/gen/",
                &[("x-user-id", "sse"), ("content-type", "application/json")],
                r#"{"generate_image": true}"#,
            )
            .await;
        statuses.push(answer.status);
    }
    let used = settled(&binary, "sse").await;
    assert_eq!(
        used, 0,
        "three SSE answers each reported `{{\"count\": 0}}` with the request's token (nothing \
         saved); the store charges {used} (statuses {statuses:?})"
    );
}
