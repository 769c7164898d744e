//! Routes as Django resolves them, end to end: the real proxy (accept loop,
//! quota layer, forwarding service) in front of a stand-in for gunicorn +
//! Django that decides for itself, the way they do, whether the send view
//! runs. The oracle of every bypass test is a free user *already at the
//! limit*: the proxy must answer 403 on that very request, and the stand-in
//! must not have run the view.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::instant::at;
use crate::support::proxy::{Answer, Proxy, TestClient};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A Wednesday, 13:30 in Tehran.
const NOW: &str = "2031-05-14T10:00:00Z";
const USER: &str = "42";
const SEND: &str = "/chat/session/17/send/";
const FLAGGED: &str = r#"{"message": "a cat", "generate_image": true}"#;
const UNFLAGGED: &str = r#"{"message": "a cat", "generate_image": false}"#;

const CONFIG: &str = r#"
[timeouts]
response_head = "2s"
[identity]
default_plan = "free"
[plans]
free = { daily = 3, weekly = 10, monthly = 30 }
[[routes]]
method = "POST"
path = "chat/session/<int:session_id>/send/"
deny_status = 403
"#;

/// `CONFIG` with the app's probe on the send route.
const PROBED: &str = r#"
[timeouts]
response_head = "2s"
[identity]
default_plan = "free"
[plans]
free = { daily = 3, weekly = 10, monthly = 30 }
[[routes]]
method = "POST"
path = "chat/session/<int:session_id>/send/"
deny_status = 403
probe = { path = "/chat/session/<int:session_id>/image-generation-access/", json_field = "has_access", timeout = "2s" }
"#;

/// What the probe endpoint of the stand-in answers.
#[derive(Clone, Copy)]
enum ProbeReply {
    Access(bool),
    Status(u16),
    NotJson,
}

/// A stand-in for gunicorn + Django: it cuts a `SCRIPT_NAME` header's
/// prefix from the raw path (gunicorn trusts it from loopback), then
/// percent-decodes the path (with the `percent-encoding` crate, not the
/// proxy's decoder) and runs the send view for `/chat/session/<int>/send/`.
/// The view saves an image when asked to, or always in an image-editing
/// session, and says so in `X-Images-Saved`.
struct Django {
    upstream: TestUpstream,
    views: Arc<AtomicUsize>,
}

impl Django {
    async fn start(probe: ProbeReply, image_editing: bool) -> Self {
        let views = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&views);
        let upstream = TestUpstream::start(move |request: RecordedRequest| {
            let views = Arc::clone(&counted);
            async move {
                let raw = request.uri.path().to_owned();
                let path = match request.header("script_name") {
                    Some(prefix) if raw.starts_with(prefix) => raw[prefix.len()..].to_owned(),
                    _ => raw,
                };
                let path = percent_encoding::percent_decode_str(&path)
                    .decode_utf8_lossy()
                    .into_owned();
                let Some(session) = path
                    .strip_prefix("/chat/session/")
                    .and_then(|rest| rest.split_once('/'))
                    .filter(|(id, _)| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
                    .map(|(_, rest)| rest.to_owned())
                else {
                    return Reply::status(404);
                };
                match session.as_str() {
                    "send/" => {
                        views.fetch_add(1, Ordering::SeqCst);
                        let asked = String::from_utf8_lossy(&request.body)
                            .contains("\"generate_image\": true");
                        let saved = if asked || image_editing { "1" } else { "0" };
                        Reply::ok().header("x-images-saved", saved).body("reply")
                    }
                    "image-generation-access/" => match probe {
                        ProbeReply::Access(access) => {
                            Reply::ok().json(serde_json::json!({ "has_access": access }))
                        }
                        ProbeReply::Status(status) => Reply::status(status),
                        ProbeReply::NotJson => Reply::ok().body("<html>login</html>"),
                    },
                    _ => Reply::status(404),
                }
            }
        })
        .await;
        Self { upstream, views }
    }

    fn views(&self) -> usize {
        self.views.load(Ordering::SeqCst)
    }

    fn probes(&self) -> Vec<String> {
        self.upstream
            .requests()
            .into_iter()
            .filter(|r| r.method == Method::GET)
            .map(|r| r.uri.to_string())
            .collect()
    }
}

/// A stand-in Django (`probe`, `image_editing`) and a proxy for `config`
/// in front of it, with `USER` already at the daily limit (three images,
/// through the plain path); the last is the send view's runs so far.
async fn at_the_limit(
    config: &str,
    probe: ProbeReply,
    image_editing: bool,
) -> (Django, Proxy, TestClient, usize) {
    let django = Django::start(probe, image_editing).await;
    let proxy = Proxy::memory(config, &django.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    for _ in 0..3 {
        let answer = client.send(Method::POST, SEND, &headers(), FLAGGED).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    }
    let usage = proxy.wait_settled(USER, 3).await;
    assert_eq!(usage[0].used, 3, "the user is at the limit");
    let views = django.views();
    (django, proxy, client, views)
}

fn headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("x-user-id", USER),
        ("x-subscription-type", "free"),
        ("content-type", "application/json"),
    ]
}

/// The proxy's denial, and the view not run.
fn assert_denied(answer: &Answer, django: &Django, views_before: usize, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::FORBIDDEN,
        "{what}: {}",
        answer.text()
    );
    assert_eq!(django.views(), views_before, "{what}: the send view ran");
}

#[tokio::test]
async fn encoded_paths_are_the_route_django_runs() {
    let (django, _proxy, client, views) =
        at_the_limit(CONFIG, ProbeReply::Access(false), false).await;
    let padded = format!("/chat/session/{}17/send/", "0".repeat(4000));
    for target in [
        "/chat/session/17/s%65nd/",
        "/%63hat/session/17/send/",
        "/chat/session/17%2Fsend/",
        "/chat/session/0017/send/",
        &padded,
    ] {
        let answer = client.send(Method::POST, target, &headers(), FLAGGED).await;
        assert_denied(&answer, &django, views, &target[..target.len().min(40)]);
    }
}

#[tokio::test]
async fn script_name_headers_never_reach_the_upstream() {
    let (django, _proxy, client, views) =
        at_the_limit(CONFIG, ProbeReply::Access(false), false).await;
    for name in [
        "SCRIPT_NAME",
        "script-name",
        "X-Script-Name",
        "X_Forwarded_Prefix",
    ] {
        let mut with_prefix = headers();
        with_prefix.push((name, "/x"));
        let answer = client
            .send(
                Method::POST,
                "/x/chat/session/17/send/",
                &with_prefix,
                FLAGGED,
            )
            .await;
        // Not the route, so forwarded; without its prefix header Django
        // does not route it to the view (404 from the stand-in).
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{name}");
        assert_eq!(django.views(), views, "{name}: the send view ran");
        let seen = django.upstream.last_request();
        assert_eq!(seen.uri, "/x/chat/session/17/send/");
        for header in seen.headers.keys() {
            let folded = header.as_str().replace('_', "-");
            assert!(
                !["script-name", "x-script-name", "x-forwarded-prefix"].contains(&folded.as_str()),
                "{name}: {header} reached the upstream"
            );
        }
    }
}

/// `POST http://host/chat/…` (absolute form), written by hand on the wire.
#[tokio::test]
async fn absolute_form_targets_are_matched_on_their_path() {
    let (django, proxy, _client, views) =
        at_the_limit(CONFIG, ProbeReply::Access(false), false).await;
    let status = raw_request(
        proxy.addr,
        &format!(
            "POST http://app.example/chat/session/17/s%65nd/ HTTP/1.1\r\n\
             Host: app.example\r\nX-User-Id: {USER}\r\nX-Subscription-Type: free\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{FLAGGED}",
            FLAGGED.len()
        ),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(django.views(), views, "the send view ran");
}

/// HTTP/2 with prior knowledge (h2c): the `:path` is matched the same way.
#[tokio::test]
async fn http2_paths_are_matched_as_django_resolves_them() {
    let (django, proxy, _client, views) =
        at_the_limit(CONFIG, ProbeReply::Access(false), false).await;
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    for target in ["/chat/session/17/s%65nd/", "/chat/session/0017%2Fsend/"] {
        let request = Request::post(format!("http://app.example{target}"))
            .version(Version::HTTP_2)
            .header("x-user-id", USER)
            .header("x-subscription-type", "free")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(FLAGGED.as_bytes())))
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("answer within 10 s")
            .expect("response");
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{target}");
        let _ = response.into_body().collect().await;
        assert_eq!(django.views(), views, "{target}: the send view ran");
    }
}

#[tokio::test]
async fn a_probe_that_cannot_answer_counts_the_request() {
    for (probe, what) in [
        (ProbeReply::Status(414), "414"),
        (ProbeReply::Status(500), "500"),
        (ProbeReply::Status(404), "404"),
        (ProbeReply::NotJson, "not JSON"),
    ] {
        // An image-editing session: the view saves an image whatever the
        // flag says.
        let (django, _proxy, client, views) = at_the_limit(PROBED, probe, true).await;
        let answer = client.send(Method::POST, SEND, &headers(), UNFLAGGED).await;
        assert_denied(&answer, &django, views, what);
    }
}

#[tokio::test]
async fn the_probe_asks_about_the_canonical_session() {
    let (django, _proxy, client, views) =
        at_the_limit(PROBED, ProbeReply::Access(true), true).await;
    let padded = format!("/chat/session/{}17/send/", "0".repeat(4000));
    let answer = client
        .send(Method::POST, &padded, &headers(), UNFLAGGED)
        .await;
    assert_denied(&answer, &django, views, "padded id");
    assert_eq!(
        django.probes(),
        ["/chat/session/17/image-generation-access/"],
        "one probe, for session 17"
    );
}

#[tokio::test]
async fn a_probe_saying_no_lets_an_unflagged_request_through() {
    // The control: a believed "no" is not a denial.
    let (django, _proxy, client, views) =
        at_the_limit(PROBED, ProbeReply::Access(false), false).await;
    let answer = client.send(Method::POST, SEND, &headers(), UNFLAGGED).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(django.views(), views + 1);
}

/// A session that saved images for an unflagged request is remembered under
/// its canonical path: another spelling of it is the same session.
#[tokio::test]
async fn a_learned_session_is_learned_in_every_spelling() {
    // No probe; an image-editing session saves an image on every message.
    let django = Django::start(ProbeReply::Access(false), true).await;
    let proxy = Proxy::memory(CONFIG, &django.upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    for used in 1..=3 {
        let answer = client.send(Method::POST, SEND, &headers(), UNFLAGGED).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(proxy.wait_settled(USER, used).await[0].used, used);
    }
    let views = django.views();
    let answer = client
        .send(
            Method::POST,
            "/chat/session/0017/s%65nd/",
            &headers(),
            UNFLAGGED,
        )
        .await;
    assert_denied(
        &answer,
        &django,
        views,
        "another spelling of a learned session",
    );
}

#[tokio::test]
async fn integer_user_ids_are_one_user_in_any_spelling() {
    let config = CONFIG.replace(
        "default_plan = \"free\"",
        "default_plan = \"free\"\nuser_id_format = \"integer\"",
    );
    let (django, _proxy, client, views) =
        at_the_limit(&config, ProbeReply::Access(false), false).await;
    for id in ["0042", "+42", "4_2", " 42"] {
        let mut spelled = headers();
        spelled[0] = ("x-user-id", id);
        let answer = client.send(Method::POST, SEND, &spelled, FLAGGED).await;
        assert_denied(&answer, &django, views, id);
    }
}

/// Writes `request` on a fresh connection and returns the answer's status.
async fn raw_request(addr: SocketAddr, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 10 s")
        .expect("read answer");
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}
