//! Traces, on the real binary against a stand-in OTLP collector on loopback
//! (tests/support/collector.rs): an inspected request is one trace of its
//! phases (the store calls and the upstream calls as child spans), sent in
//! batches and flushed at shutdown; it continues a client's valid
//! `traceparent` and starts a new trace otherwise; the upstream gets the
//! `traceparent` of its call; the request id is an attribute. The client's
//! trace context is only a correlation id: it changes no decision. Without
//! `[tracing]`, the client's `traceparent` and `tracestate` pass untouched.
//! On Redis too, each store call is one span.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::collector::{Collector, ReceivedSpan};
use crate::support::proxy::{Answer, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};

/// Every bounded wait of this file.
const WITHIN: Duration = Duration::from_secs(15);

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const PROBE_PATH: &str = "/chat/session/5/image-generation-access/";

/// An upstream that saves an image on every request, and says yes to the
/// image-editing probe.
async fn upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        if request.uri.path() == PROBE_PATH {
            Reply::ok()
                .header("content-type", "application/json")
                .body(r#"{"has_access": true}"#)
        } else {
            Reply::ok().header("x-images-saved", "1").body("an image")
        }
    })
    .await
}

/// `/gen/` (a JSON flag) and an image-editing session route with a probe,
/// `daily` images a day, and `tracing` as the `[tracing]` section.
fn config(upstream: &TestUpstream, daily: u32, tracing: &str) -> String {
    format!(
        r#"
upstream = "http://{}"
[identity]
default_plan = "free"
[plans]
free = {{ daily = {daily} }}
[[routes]]
method = "POST"
path = "/gen/"
[[routes]]
method = "POST"
path = "/chat/session/<int:session_id>/send/"
probe = {{ path = "/chat/session/<int:session_id>/image-generation-access/", json_field = "has_access" }}
{tracing}
"#,
        upstream.authority()
    )
}

fn traced(collector: &Collector) -> String {
    format!(
        "[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"quota-proxy-test\"",
        collector.endpoint()
    )
}

/// A flagged request from user 7 with extra `headers`.
async fn generate(proxy: &TestClient, headers: &[(&str, &str)]) -> Answer {
    let mut all = vec![("x-user-id", "7"), ("content-type", "application/json")];
    all.extend_from_slice(headers);
    proxy
        .send(Method::POST, "/gen/", &all, r#"{"generate_image": true}"#)
        .await
}

/// Stops the binary as an operator would (SIGTERM): its last spans are sent
/// before it exits.
async fn stop(mut binary: Binary) {
    binary.signal("TERM");
    let status = binary.wait_exit(WITHIN).await;
    assert!(status.success(), "{status}:\n{}", binary.logs().join("\n"));
}

/// The spans of one trace, by name (each name once in these traces); the
/// request's own span is named after its route, e.g. `POST /gen/`.
fn by_name(spans: &[ReceivedSpan], trace: &str) -> BTreeMap<String, ReceivedSpan> {
    let mut named = BTreeMap::new();
    for span in spans.iter().filter(|s| s.trace_id() == trace) {
        let earlier = named.insert(span.name().to_owned(), span.clone());
        assert!(
            earlier.is_none(),
            "two {} spans in trace {trace}",
            span.name()
        );
    }
    named
}

/// `traceparent`'s trace id and parent id.
fn parts(traceparent: &str) -> (String, String, String) {
    let fields: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(fields.len(), 4, "{traceparent}");
    assert_eq!(fields[0], "00", "{traceparent}");
    (
        fields[1].to_owned(),
        fields[2].to_owned(),
        fields[3].to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flagged_request_is_one_trace_of_its_phases() {
    let collector = Collector::start().await;
    let upstream = upstream().await;
    let binary = Binary::start(&config(&upstream, 10, &traced(&collector)), &[]).await;
    let proxy = TestClient::new(binary.proxy);

    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let answer = generate(
        &proxy,
        &[("traceparent", &traceparent), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let request_id = answer.headers["x-request-id"]
        .to_str()
        .expect("text")
        .to_owned();
    let seen = upstream.last_request();
    assert_eq!(seen.header("x-request-id"), Some(request_id.as_str()));

    // An unflagged message to an image-editing session: the probe decides.
    let probed = proxy
        .send(
            Method::POST,
            "/chat/session/5/send/",
            &[("x-user-id", "7"), ("content-type", "application/json")],
            r#"{"message": "make it blue"}"#,
        )
        .await;
    assert_eq!(probed.status, StatusCode::OK);
    let probe_request = upstream
        .requests()
        .into_iter()
        .find(|r| r.uri.path() == PROBE_PATH)
        .expect("the probe reached the upstream");

    // A route that is not inspected: no span, the context as the client sent it.
    let passthrough = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = proxy
        .send(Method::GET, "/other/", &[("traceparent", passthrough)], "")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        upstream.last_request().header("traceparent"),
        Some(passthrough)
    );

    // The spans are for the traces: the decision's log line is as it was.
    let line = |l: &serde_json::Value| l["message"] == "inspected request";
    binary.wait_for_logs(2, WITHIN, line).await;
    let logged = binary.find_log(line).expect("a decision line");
    assert!(
        logged.get("span").is_none() && logged.get("spans").is_none(),
        "{logged}"
    );

    stop(binary).await;
    assert!(collector.refused().is_empty(), "{:?}", collector.refused());
    let spans = collector.spans();
    assert!(spans.iter().all(|s| s.service == "quota-proxy-test"));
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id() != "0af7651916cd43dd8448eb211c80319c"),
        "a pass-through request made a span"
    );

    // The client's trace, continued: its span is the parent of `request`.
    let trace = by_name(&spans, TRACE);
    let names: Vec<&str> = trace.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "POST /gen/",
            "admit",
            "classify",
            "forward",
            "identify",
            "settle",
            "store.reserve",
            "store.settle",
            "upstream"
        ],
        "{spans:#?}"
    );
    let request = &trace["POST /gen/"];
    assert_eq!(request.parent_id(), CLIENT_SPAN);
    assert_eq!(request.attribute("request_id"), Some(request_id));
    assert_eq!(
        request.attribute("quota.route").as_deref(),
        Some("POST /gen/")
    );
    assert_eq!(
        request.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    let parent_of = |name: &str| trace[name].parent_id();
    for phase in ["classify", "identify", "admit", "forward", "settle"] {
        assert_eq!(parent_of(phase), request.span_id(), "{phase}");
    }
    assert_eq!(parent_of("store.reserve"), trace["admit"].span_id());
    assert_eq!(parent_of("upstream"), trace["forward"].span_id());
    assert_eq!(parent_of("store.settle"), trace["settle"].span_id());
    assert_eq!(
        trace["classify"].attribute("quota.flag").as_deref(),
        Some("flagged")
    );
    assert_eq!(
        trace["identify"].attribute("quota.user").as_deref(),
        Some("7")
    );
    assert_eq!(
        trace["admit"].attribute("quota.decision").as_deref(),
        Some("allowed")
    );
    assert_eq!(
        trace["settle"].attribute("quota.images").as_deref(),
        Some("1")
    );

    // The upstream saw the `upstream` call as its parent, in that trace,
    // with the client's `tracestate` carried along.
    let (trace_id, parent, flags) = parts(seen.header("traceparent").expect("a traceparent"));
    assert_eq!((trace_id.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(parent, trace["upstream"].span_id());
    assert_eq!(seen.header_all("traceparent").len(), 1);
    assert_eq!(seen.header("tracestate"), Some("vendor=1"));

    // The probed request: a new trace, with the probe below `request` and
    // the upstream's probe call below the probe.
    let (probe_trace, probe_parent, _) = parts(
        probe_request
            .header("traceparent")
            .expect("the probe carries a traceparent"),
    );
    let trace = by_name(&spans, &probe_trace);
    let request = &trace["POST /chat/session/<int:session_id>/send/"];
    assert!(request.parent_id().is_empty(), "a new trace has a root");
    assert_eq!(trace["probe"].parent_id(), request.span_id());
    assert_eq!(probe_parent, trace["probe"].span_id());
    assert_eq!(
        trace["probe"].attribute("quota.probe").as_deref(),
        Some("forced")
    );
    assert_eq!(
        trace["classify"].attribute("quota.flag").as_deref(),
        Some("not_flagged")
    );
    assert_eq!(
        trace["admit"].attribute("quota.decision").as_deref(),
        Some("allowed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_each_store_call_is_one_span() {
    // Redis answers no call in place: asking it for an in-place answer
    // first (as the memory store gives) makes no `store.*` span of its own.
    let redis = RedisServer::start();
    let collector = Collector::start().await;
    let upstream = upstream().await;
    let config = format!(
        "{}\n[store]\nkind = \"redis\"\nurl = \"{}\"\n",
        config(&upstream, 10, &traced(&collector)),
        redis.url()
    );
    let binary = Binary::start(&config, &[]).await;
    let proxy = TestClient::new(binary.proxy);
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let answer = generate(&proxy, &[("traceparent", &traceparent)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    stop(binary).await;
    // `by_name` refuses a name seen twice in the trace.
    let trace = by_name(&collector.spans(), TRACE);
    assert_eq!(trace["store.reserve"].parent_id(), trace["admit"].span_id());
    assert_eq!(trace["store.settle"].parent_id(), trace["settle"].span_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trace_context_changes_no_decision() {
    let collector = Collector::start().await;
    let upstream = upstream().await;
    let binary = Binary::start(&config(&upstream, 2, &traced(&collector)), &[]).await;
    let proxy = TestClient::new(binary.proxy);

    // Not sampled by the client: counted all the same, and not exported
    // (the trace follows its parent's decision).
    let unsampled = format!("00-{TRACE}-{CLIENT_SPAN}-00");
    let answer = generate(&proxy, &[("traceparent", &unsampled)]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let (trace_id, _, flags) = parts(upstream.last_request().header("traceparent").expect("sent"));
    assert_eq!((trace_id.as_str(), flags.as_str()), (TRACE, "00"));

    let sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let answer = generate(&proxy, &[("traceparent", sampled)]).await;
    assert_eq!(answer.status, StatusCode::OK);

    // Malformed (upper-case hex): ignored, a new trace, and the limit of 2
    // already counted holds: denied, never forwarded.
    let malformed = "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01";
    let forwarded = upstream.count();
    let denied = generate(
        &proxy,
        &[("traceparent", malformed), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(
        denied.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        denied.text()
    );
    assert_eq!(upstream.count(), forwarded);
    let denied_id = denied.headers["x-request-id"]
        .to_str()
        .expect("text")
        .to_owned();

    stop(binary).await;
    let spans = collector.spans();
    assert!(
        spans.iter().all(|s| s.trace_id() != TRACE),
        "an unsampled trace was exported"
    );
    let trace = by_name(&spans, "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        trace["admit"].attribute("quota.decision").as_deref(),
        Some("allowed")
    );
    let denial = spans
        .iter()
        .find(|s| s.attribute("request_id") == Some(denied_id.clone()))
        .expect("the denied request's span");
    assert!(
        denial.parent_id().is_empty(),
        "a malformed traceparent continues nothing"
    );
    let trace = by_name(&spans, &denial.trace_id());
    assert_eq!(
        trace["admit"].attribute("quota.decision").as_deref(),
        Some("denied")
    );
    assert_eq!(
        trace["admit"].attribute("quota.period").as_deref(),
        Some("daily")
    );
    assert_eq!(
        denial.attribute("http.response.status_code").as_deref(),
        Some("429")
    );
    assert!(
        !trace.contains_key("forward"),
        "a denied request is not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_the_client_context_passes_untouched() {
    let upstream = upstream().await;
    let binary = Binary::start(&config(&upstream, 10, ""), &[]).await;
    let proxy = TestClient::new(binary.proxy);
    for traceparent in [
        format!("00-{TRACE}-{CLIENT_SPAN}-01"),
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01".to_owned(),
    ] {
        let answer = generate(
            &proxy,
            &[("traceparent", &traceparent), ("tracestate", "vendor=1")],
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        let seen = upstream.last_request();
        assert_eq!(seen.header_all("traceparent"), [traceparent.as_str()]);
        assert_eq!(seen.header_all("tracestate"), ["vendor=1"]);
    }
    let seen = generate(&proxy, &[]).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(upstream.last_request().header("traceparent"), None);
    stop(binary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_only_the_spans() {
    let upstream = upstream().await;
    let nowhere = format!(
        "[tracing]\notlp_endpoint = \"http://{}\"",
        TestUpstream::unreachable_authority()
    );
    let binary = Binary::start(&config(&upstream, 1, &nowhere), &[]).await;
    let proxy = TestClient::new(binary.proxy);
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(
        generate(&proxy, &[("traceparent", &traceparent)])
            .await
            .status,
        StatusCode::OK
    );
    let (trace_id, _, _) = parts(upstream.last_request().header("traceparent").expect("sent"));
    assert_eq!(trace_id, TRACE);
    // Still counted: the next one is denied.
    let denied = generate(&proxy, &[]).await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    // The shutdown tries once to send the last spans, and exits 0.
    stop(binary).await;
}
