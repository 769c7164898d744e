//! The request shapes of the load bench and the proxy config they run
//! against, shared by `benches/load.rs` and `tests/it/load_smoke.rs`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::loadgen::Workload;
use super::upstream::MARKER;

/// The inspected route of the config (the Django chat view).
pub const SEND_PATH: &str = "/chat/session/17/send/";

/// Distinct users of the flagged-and-allowed and streamed scenarios.
pub const ALLOWED_USERS: usize = 10_000;

/// The body size of the pass-through POST (issue 21's headline scenario).
pub const PASS_POST_BYTES: usize = 500;

/// Users of the denied scenario (one image a day, used in the warm-up).
pub const DENIED_USERS: usize = 200;

/// What a run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The upstream itself.
    Direct,
    /// nginx in front of the upstream.
    Nginx,
    /// The least a hyper proxy does (`floor.rs`) in front of the upstream.
    Floor,
    /// quota-proxy with the memory store.
    Memory,
    /// quota-proxy with the Redis store.
    Redis,
    /// quota-proxy on a one-master Redis Cluster (the cluster section).
    ClusterOne,
    /// quota-proxy on a three-master Redis Cluster (the cluster section).
    ClusterThree,
}

impl Target {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Nginx => "nginx",
            Target::Floor => "hyper-floor",
            Target::Memory => "qp-memory",
            Target::Redis => "qp-redis",
            Target::ClusterOne => "qp-cluster-1",
            Target::ClusterThree => "qp-cluster-3",
        }
    }

    /// True for quota-proxy, which enforces quotas (the others forward).
    pub fn enforces(self) -> bool {
        matches!(
            self,
            Target::Memory | Target::Redis | Target::ClusterOne | Target::ClusterThree
        )
    }
}

/// The request shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `GET` of a path no route inspects.
    PassThrough,
    /// `POST` of a [`PASS_POST_BYTES`]-byte JSON body to a path no route
    /// inspects (otherwise the flagged request's headers and flag): what
    /// the flagged shapes cost beyond forwarding a body is measured against
    /// it.
    PassThroughPost,
    /// `POST` on the inspected route, `"generate_image": false`.
    Unflagged,
    /// Flagged, from one of [`ALLOWED_USERS`] users with huge limits: the
    /// proxy reserves, forwards, reads `X-Images-Saved: 1`, settles.
    Allowed,
    /// Flagged, from one of [`DENIED_USERS`] users over their daily limit:
    /// the proxy answers 403 itself.
    Denied,
    /// Flagged on `/stream/{id}/`: a chunked answer whose last chunk holds
    /// the in-band report, read (and stripped) as it streams.
    Streamed,
}

impl Shape {
    /// Every shape, in table order.
    pub const ALL: [Shape; 6] = [
        Shape::PassThrough,
        Shape::PassThroughPost,
        Shape::Unflagged,
        Shape::Allowed,
        Shape::Denied,
        Shape::Streamed,
    ];

    /// The short name `LOAD_SHAPES` takes.
    pub fn key(self) -> &'static str {
        match self {
            Shape::PassThrough => "pass",
            Shape::PassThroughPost => "pass-post",
            Shape::Unflagged => "unflagged",
            Shape::Allowed => "allowed",
            Shape::Denied => "denied",
            Shape::Streamed => "streamed",
        }
    }

    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Shape::PassThrough => "pass-through",
            Shape::PassThroughPost => "pass-through POST",
            Shape::Unflagged => "inspected, no flag",
            Shape::Allowed => "flagged, allowed",
            Shape::Denied => "flagged, denied",
            Shape::Streamed => "streamed + in-band report",
        }
    }
}

/// Headers a browser sends with every request: the proxies must carry
/// them, so they belong in the measurement.
const BROWSER_HEADERS: &str = "Host: app.example\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: */*\r\n\
Accept-Language: fa-IR,fa;q=0.9,en;q=0.8\r\n\
Cookie: csrftoken=Zq3kXo0mA5Yb7Wd2; sessionid=k9x2m4p7q1w8e5r3t6y0u2i4o6p8a1s3\r\n";

fn get(path: &str) -> Bytes {
    Bytes::from(format!("GET {path} HTTP/1.1\r\n{BROWSER_HEADERS}\r\n"))
}

fn post(path: &str, user: &str, plan: &str, saved: Option<u32>, body: &str) -> Bytes {
    let saved = saved
        .map(|n| format!("X-Bench-Saved: {n}\r\n"))
        .unwrap_or_default();
    Bytes::from(format!(
        "POST {path} HTTP/1.1\r\n{BROWSER_HEADERS}Content-Type: application/json\r\n\
         Content-Length: {}\r\nX-User-Id: {user}\r\nX-Subscription-Type: {plan}\r\n{saved}\r\n{body}",
        body.len()
    ))
}

const FLAGGED: &str =
    r#"{"message": "draw a cat sitting on a persian rug", "generate_image": true}"#;
/// The flagged request's JSON with its message lengthened to make `len`
/// bytes in all.
fn flagged_json(len: usize) -> String {
    let pad = ".".repeat(len.saturating_sub(FLAGGED.len()));
    FLAGGED.replacen("rug", &format!("rug{pad}"), 1)
}

const UNFLAGGED: &str = r#"{"message": "tell me about persian rugs", "generate_image": false}"#;

/// The requests of `shape`, in the order connections take them.
pub fn requests(shape: Shape) -> Vec<Bytes> {
    match shape {
        Shape::PassThrough => vec![get("/static/js/chat.bundle.js")],
        Shape::PassThroughPost => vec![post(
            "/chat/session/17/draft/",
            "u1",
            "bench",
            Some(1),
            &flagged_json(PASS_POST_BYTES),
        )],
        Shape::Unflagged => vec![post(SEND_PATH, "u1", "bench", Some(0), UNFLAGGED)],
        Shape::Allowed => (0..ALLOWED_USERS)
            .map(|i| post(SEND_PATH, &format!("u{i}"), "bench", Some(1), FLAGGED))
            .collect(),
        Shape::Denied => (0..DENIED_USERS)
            .map(|i| post(SEND_PATH, &format!("d{i}"), "one", Some(1), FLAGGED))
            .collect(),
        Shape::Streamed => (0..ALLOWED_USERS)
            .map(|i| post("/stream/17/", &format!("s{i}"), "bench", None, FLAGGED))
            .collect(),
    }
}

/// The workload of `shape` against `target`: what status comes back, and
/// whether the in-band marker must be gone from the body.
pub fn workload(shape: Shape, target: Target) -> Workload {
    let expect_status = match (shape, target.enforces()) {
        (Shape::Denied, true) => 403,
        _ => 200,
    };
    let forbidden = (shape == Shape::Streamed && target.enforces()).then_some(MARKER.as_bytes());
    Workload {
        requests: Arc::new(requests(shape)),
        expect_status,
        forbidden,
    }
}

/// The warm-up that uses up the one daily image of every denied user: the
/// denied requests, each sent once, all allowed.
pub fn denied_warm_up() -> Workload {
    Workload {
        requests: Arc::new(requests(Shape::Denied)),
        expect_status: 200,
        forbidden: None,
    }
}

/// A streamed request at one connection with a pause after the first
/// chunk, to measure time to first byte apart from the rest.
pub fn ttfb_workload(target: Target, gap_ms: u64) -> Workload {
    let path = format!("/stream/17/?gap_ms={gap_ms}");
    Workload {
        requests: Arc::new(
            (0..ALLOWED_USERS)
                .map(|i| post(&path, &format!("t{i}"), "bench", None, FLAGGED))
                .collect(),
        ),
        expect_status: 200,
        forbidden: target.enforces().then_some(MARKER.as_bytes()),
    }
}

/// The body of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadKind {
    /// Flagged JSON on the inspected route: `{"prompt": "...", "generate_image": true}`.
    Json,
    /// Flagged multipart on the inspected route: a file part, then the flag.
    Multipart,
    /// The same JSON to a path no route inspects (streamed through).
    PassThrough,
}

impl UploadKind {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            UploadKind::Json => "JSON, inspected",
            UploadKind::Multipart => "multipart, inspected",
            UploadKind::PassThrough => "JSON, not inspected",
        }
    }
}

/// One whole upload request with a body of about `size` bytes.
pub fn upload(size: usize, kind: UploadKind) -> Bytes {
    let filler: String = "abcdefghij".repeat(size / 10);
    let (content_type, body) = if kind == UploadKind::Multipart {
        let boundary = "----bench7MA4YWxkTrZu0gW";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\
             Content-Type: image/png\r\n\r\n{filler}\r\n--{boundary}\r\n\
             Content-Disposition: form-data; name=\"generate_image\"\r\n\r\ntrue\r\n--{boundary}--\r\n"
        );
        (format!("multipart/form-data; boundary={boundary}"), body)
    } else {
        (
            "application/json".to_owned(),
            format!(r#"{{"prompt": "{filler}", "generate_image": true}}"#),
        )
    };
    let path = match kind {
        UploadKind::PassThrough => "/uploads/avatar/",
        _ => SEND_PATH,
    };
    Bytes::from(format!(
        "POST {path} HTTP/1.1\r\n{BROWSER_HEADERS}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nX-User-Id: up1\r\nX-Subscription-Type: bench\r\nX-Bench-Saved: 1\r\n\r\n{body}",
        body.len()
    ))
}

/// The store a proxy process counts in.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    /// The memory store.
    Memory,
    /// Redis at this URL.
    Redis(String),
    /// A Redis Cluster: these nodes.
    Cluster(Vec<String>),
}

/// The config of a quota-proxy listening on `port` in front of `upstream`.
pub fn proxy_config(port: u16, upstream: SocketAddr, store: &StoreSpec) -> String {
    let store = match store {
        StoreSpec::Memory => "kind = \"memory\"".to_owned(),
        StoreSpec::Redis(url) => format!("kind = \"redis\"\nurl = \"{url}\""),
        StoreSpec::Cluster(nodes) => format!("kind = \"redis\"\ncluster = {nodes:?}"),
    };
    format!(
        r#"
listen = "127.0.0.1:{port}"
upstream = "http://{upstream}"
max_body_bytes = 33554432
# The memory section holds LOAD_IDLE_CONNS (up to 10,000) idle at once.
max_connections = 100000

[store]
{store}
# A store failure must show as an error in the bench, not pass unnoticed.
on_store_error = "deny"
command_timeout = "2s"

[identity]
default_plan = "bench"

[plans]
bench = {{ daily = 1000000000, weekly = 1000000000, monthly = 1000000000 }}
one = {{ daily = 1, weekly = 0, monthly = 0 }}

[[routes]]
method = "POST"
path = "/chat/session/{{session_id}}/send/"
deny_status = 403

[[routes]]
method = "POST"
path = "/stream/{{id}}/"
deny_status = 429

[usage]
report_marker = {{ start = "[IMAGES_SAVED]", end = "[IMAGES_SAVED_END]" }}

[admin]
# Several proxies run at once: each takes a free admin port.
listen = "127.0.0.1:0"
"#
    )
}
