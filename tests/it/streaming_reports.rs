//! The in-band report of the Django chat app's streamed replies, end to
//! end with `streaming.rs`'s stand-in app and preset: the first byte
//! arrives before the stream ends, the marker is cut (or kept when not
//! stripped, re-framed in a reply with a length, read alone when the
//! report header is off), reports in SSE and trailers count, and the
//! reservation lives as long as its stream, settled when the client
//! leaves mid-stream.

use std::time::{Duration, Instant};

use crate::support::proxy::{Proxy, TestClient};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};
use http_body_util::BodyExt;

use crate::streaming::{NOW, app, identity_view, open_stream, preset, send};
use crate::support::instant::at;

#[tokio::test]
async fn first_byte_arrives_before_the_stream_ends() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        identity_view(&request).unwrap_or_else(|| {
            Reply::ok().stream([
                ("first", Duration::ZERO),
                ("second", Duration::from_millis(800)),
            ])
        })
    })
    .await;
    let proxy = Proxy::memory(&preset(), &upstream, at(NOW)).await;
    let started = Instant::now();
    let mut body = open_stream(&proxy, "s").await;
    let first = body.frame().await.expect("a frame").expect("data");
    let first_at = started.elapsed();
    assert_eq!(first.into_data().expect("data"), "first");
    while body.frame().await.is_some() {}
    let end_at = started.elapsed();
    assert!(end_at >= Duration::from_millis(800));
    assert!(
        first_at + Duration::from_millis(400) < end_at,
        "first byte at {first_at:?}, end at {end_at:?}"
    );
}

#[tokio::test]
async fn marker_kept_when_not_stripped() {
    let app = app(Duration::ZERO).await;
    let config = preset().replace("strip_marker = true", "strip_marker = false");
    let proxy = Proxy::memory(&config, &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let answer = send(&client, "1", "k", "true").await;
    assert!(
        answer
            .text()
            .contains("[IMAGES_SAVED]{\"count\": 1, \"token\": \"")
    );
    assert_eq!(proxy.wait_settled("k", 1).await[0].used, 1);
}

/// A reply sent whole, with its `Content-Length`, whose end is the marker:
/// the marker is cut and the reply re-framed, so the client gets exactly
/// the rest (a stale length would cut the connection short), and counted.
#[tokio::test]
async fn a_marker_in_a_reply_with_a_length_is_cut_and_reframed() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        identity_view(&request).unwrap_or_else(|| {
            let token = request.header("x-quota-report-token").unwrap_or("");
            Reply::ok()
                .header("content-type", "text/plain; charset=utf-8")
                .body(format!(
                    "Here is your reply.[IMAGES_SAVED]{}[IMAGES_SAVED_END]",
                    serde_json::json!({"count": 1, "token": token})
                ))
        })
    })
    .await;
    let proxy = Proxy::memory(&preset(), &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let answer = send(&client, "1", "whole", "true").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "Here is your reply.");
    assert_eq!(proxy.wait_settled("whole", 1).await[0].used, 1);
}

/// With the report header turned off (`report_header = ""`), the in-band
/// marker alone reports: still read and counted.
#[tokio::test]
async fn the_marker_alone_reports_when_the_header_is_off() {
    let app = app(Duration::ZERO).await;
    let config = preset().replace("[usage]\n", "[usage]\nreport_header = \"\"\n");
    assert!(config.contains("report_header = \"\""));
    let proxy = Proxy::memory(&config, &app.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let answer = send(&client, "1", "marker", "true").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!answer.text().contains("IMAGES_SAVED"), "{}", answer.text());
    assert_eq!(proxy.wait_settled("marker", 1).await[0].used, 1);
}

#[tokio::test]
async fn settles_when_the_client_leaves_mid_stream() {
    let app = app(Duration::from_millis(150)).await;
    let proxy = Proxy::memory(&preset(), &app.upstream, at(NOW)).await;
    let mut body = open_stream(&proxy, "leaver").await;
    let _ = body.frame().await;
    // The reservation is held while the reply streams.
    assert_eq!(proxy.usage("leaver").await[0].reserved, 1);
    drop(body);
    // The proxy reads the rest of the reply, sees the marker, and counts it.
    let usage = proxy.wait_settled("leaver", 1).await;
    assert_eq!((usage[0].used, usage[0].reserved), (1, 0));
}

#[tokio::test]
async fn reservation_lives_as_long_as_its_stream() {
    // Replies take 3 s; reservations live 1 s unless kept alive.
    let app = app(Duration::from_millis(750)).await;
    let config = preset().replace("reservation_ttl = \"180s\"", "reservation_ttl = \"1s\"");
    let proxy = Proxy::memory(&config, &app.upstream, at(NOW)).await;
    // The proxy's clock follows real time from NOW.
    let clock = proxy.clock.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            clock.advance(chrono::Duration::milliseconds(20));
        }
    });
    let client = TestClient::new(proxy.addr);
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { send(&client, "1", "one", "true").await })
    };
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // Past the TTL, the first reply still streams: its unit is still held.
    let second = send(&client, "2", "one", "true").await;
    assert_eq!(second.status, StatusCode::FORBIDDEN);
    assert_eq!(slow.await.expect("task").status, StatusCode::OK);
    assert_eq!(proxy.wait_settled("one", 1).await[0].used, 1);
    ticker.abort();
}

#[tokio::test]
async fn sse_and_trailer_reports_are_counted() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        if request.uri.path().contains("/sse/") {
            let token = request.header("x-quota-report-token").unwrap_or("");
            let report =
                format!("event: images_saved\ndata: {{\"count\": 1, \"token\": \"{token}\"}}\n\n");
            Reply::ok()
                .header("content-type", "text/event-stream")
                .stream([
                    ("event: token\ndata: hi\n\n".to_owned(), Duration::ZERO),
                    (report, Duration::from_millis(10)),
                ])
        } else {
            Reply::ok()
                .stream([("streamed", Duration::ZERO)])
                .trailer("x-images-saved", "1")
        }
    })
    .await;
    let config = r#"
[usage]
report_sse_event = "images_saved"
[[routes]]
method = "POST"
path = "/{kind}/{id}/"
"#;
    let proxy = Proxy::memory(config, &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let json = |user: &'static str| {
        [
            ("x-user-id", user),
            ("content-type", "application/json"),
            ("te", "trailers"),
        ]
    };
    let answer = client
        .send(
            Method::POST,
            "/sse/1/",
            &json("sse"),
            r#"{"generate_image": true}"#,
        )
        .await;
    assert!(answer.text().contains("event: images_saved"));
    assert_eq!(proxy.wait_settled("sse", 1).await[0].used, 1);
    let answer = client
        .send(
            Method::POST,
            "/trailer/1/",
            &json("tr"),
            r#"{"generate_image": true}"#,
        )
        .await;
    assert_eq!(answer.text(), "streamed");
    assert_eq!(proxy.wait_settled("tr", 1).await[0].used, 1);
}
