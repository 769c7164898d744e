//! An attack session on the fixes of 2026-12-06 (each test failed on
//! 70f7750, its doc says how): a JWT cookie beside a Unicode space, a bad
//! bearer token beside a good cookie, refused settles stalling the queue, a
//! header's 0 on a cut stream, an SSE report beside a marker, a `path()`
//! route with `:` after a converter, silent connections at the cap. Each
//! runs the real binary in front of real Django (gunicorn, `tests/django/`)
//! or a real upstream, and asserts on what Django saved or what the client
//! got, never on what the proxy says.

use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::django::Django;
use crate::support::proxy::{Answer, TestClient};
use crate::support::raw_http;
use crate::support::redis::{RedisServer, used_today};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(20);

/// The harness's `SECRET_KEY` (`tests/django/harness/settings.py`), which
/// simplejwt signs its HS256 tokens with.
const DJANGO_SECRET: &str = "harness-only-not-secret";

/// The shipped preset, with `upstream` (Django), periods in a zone where it
/// is about noon (no day boundary mid-test), and `edit` applied.
fn preset_with(upstream: &str, edit: impl FnOnce(&mut toml::Table)) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/django-mobixai.toml");
    let text = std::fs::read_to_string(path).expect("read the preset");
    let mut table: toml::Table = toml::from_str(&text).expect("the preset is TOML");
    table.insert("upstream".into(), upstream.into());
    let periods = table
        .get_mut("periods")
        .and_then(toml::Value::as_table_mut)
        .expect("[periods]");
    periods.insert("timezone".into(), noon_zone().into());
    edit(&mut table);
    toml::to_string(&table).expect("config renders")
}

fn noon_zone() -> String {
    use chrono::Timelike;
    let hour = i32::try_from(chrono::Utc::now().hour()).expect("an hour fits");
    let offset = (12 - hour).clamp(-11, 12);
    if offset >= 0 {
        format!("Etc/GMT-{offset}")
    } else {
        format!("Etc/GMT+{}", -offset)
    }
}

/// A flagged message (`"generate_image": true`) to the send view of
/// session `session`, with `Cookie: <cookie>` (raw bytes: a test may put
/// any byte in it).
fn flagged(proxy: &Binary, session: u64, cookie: &[u8]) -> raw_http::RawResponse {
    flagged_with(proxy, session, &[b"Cookie: ".as_slice(), cookie].concat())
}

/// A flagged message to the send view of session `session`, with the
/// header line `header` (raw bytes, no CRLF).
fn flagged_with(proxy: &Binary, session: u64, header: &[u8]) -> raw_http::RawResponse {
    let body = br#"{"message": "a cat", "generate_image": true}"#;
    let mut request = format!(
        "POST /chat/session/{session}/send/ HTTP/1.1\r\nHost: chat.example\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(header);
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    raw_http::send(proxy.proxy, &request, false, WITHIN)
}

/// A simplejwt access token of `user`, signed with Django's `SECRET_KEY`.
fn access_token(user: u64) -> String {
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).expect("timestamp");
    let claims = json!({
        "token_type": "access",
        "exp": now + 300,
        "iat": now,
        "jti": format!("jti{user}"),
        "user_id": user,
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(DJANGO_SECRET.as_bytes()),
    )
    .expect("sign")
}

/// The harness's `SECRET_KEY` in a file, for `identity.jwt.secret_file`.
fn secret_file() -> tempfile::NamedTempFile {
    let secret = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret.path(), DJANGO_SECRET).expect("write the secret");
    secret
}

/// The preset in front of `django` with `identity.kind = "jwt"` (HS256 with
/// Django's `SECRET_KEY`, as simplejwt signs), the token read from
/// `Authorization: Bearer` and, when given, from cookie `cookie`; the rest
/// of the preset as shipped (`anonymous = "forward"`).
fn jwt_preset(django: &Django, secret: &tempfile::NamedTempFile, cookie: Option<&str>) -> String {
    preset_with(&django.url(), |table| {
        let identity = table
            .get_mut("identity")
            .and_then(toml::Value::as_table_mut)
            .expect("[identity]");
        identity.insert("kind".into(), "jwt".into());
        identity.remove("forward_auth");
        let mut jwt = toml::Table::new();
        jwt.insert(
            "secret_file".into(),
            secret.path().display().to_string().into(),
        );
        if let Some(cookie) = cookie {
            jwt.insert("cookie".into(), cookie.into());
        }
        identity.insert("jwt".into(), toml::Value::Table(jwt));
    })
}

/// Django reads `request.COOKIES` from the `Cookie` header decoded as
/// UTF-8 (`get_str_from_wsgi`: the WSGI server's Latin-1 string re-encoded
/// to bytes, then `.decode(errors="replace")`), and `parse_cookie` strips
/// keys and values with `str.strip()`, which strips every Unicode space.
/// The proxy (`src/identity/cookie.rs` `django_cookie`) decodes the line as
/// Latin-1 and strips only what is whitespace in Latin-1: a UTF-8 encoded
/// space beyond ASCII (U+3000 `\xe3\x80\x80`, U+00A0 `\xc2\xa0`, U+2003
/// `\xe2\x80\x83`) next to the name or the token is stripped by Django and
/// kept by the proxy. The proxy then sees no valid token (anonymous, and
/// under the preset's `anonymous = "forward"` forwarded unchecked), while
/// Django logs the user in from the token and generates. Fails on 70f7750:
/// a free user at the limit gets one uncounted image per spelling.
#[tokio::test]
async fn a_jwt_cookie_next_to_a_unicode_space_is_read_by_django_not_by_the_proxy() {
    const USER: u64 = 920_001;
    let django = Django::start_with(&[("HARNESS_JWT_COOKIE", "access_token")]);
    let mut saved = django.saved();
    let secret = secret_file();
    let config = jwt_preset(&django, &secret, Some("access_token"));
    let proxy = Binary::start(&config, &[]).await;
    let token = access_token(USER);
    let plain = format!("access_token={token}");

    for session in 1..=3 {
        let answer = flagged(&proxy, session, plain.as_bytes());
        assert_eq!(answer.status, 200, "image {session}: {}", answer.text());
    }
    assert_eq!(saved.by_user(&USER.to_string()), 3, "three images saved");
    let denied = flagged(&proxy, 4, plain.as_bytes());
    assert_eq!(
        denied.status,
        403,
        "the fourth is denied: {}",
        denied.text()
    );

    let spellings: [(&str, Vec<u8>); 3] = [
        (
            "U+3000 after the token",
            [plain.as_bytes(), b"\xe3\x80\x80".as_slice()].concat(),
        ),
        (
            "U+00A0 before the name",
            [b"\xc2\xa0".as_slice(), plain.as_bytes()].concat(),
        ),
        (
            "U+2003 after the name",
            format!("access_token\u{2003}={token}").into_bytes(),
        ),
    ];
    let mut got = Vec::new();
    for (n, (what, cookie)) in spellings.iter().enumerate() {
        let answer = flagged(&proxy, 10 + n as u64, cookie);
        got.push(format!(
            "{what}: {} ({} images saved so far)",
            answer.status,
            saved.by_user(&USER.to_string())
        ));
    }
    let total = saved.by_user(&USER.to_string());
    assert_eq!(
        total,
        3,
        "a free user at the limit (3 a day) got {} more images saved by Django: Django strips \
         Unicode spaces of the UTF-8 decoded cookie, the proxy decodes it as Latin-1, saw no \
         valid token, and forwarded the request as anonymous and unchecked:\n{}",
        total - 3,
        got.join("\n")
    );
}

/// `foreign_syntax` (`src/quota/routes/pattern.rs`) refuses any route with
/// a segment that starts with `:` outside `<…>`, taking it for an Express
/// parameter. But `:` is ordinary literal text in Django's `path()`, and a
/// segment that starts with it after a converter is how custom methods
/// are routed (Google's AIP-136 style, `v1/models/<str:model>:generate/`):
/// Django routes `/v1/models/sdxl:generate/` to it. A config that guards
/// such a route is refused, by `check-config` and at startup: the proxy does
/// not start, and the whole app behind it is down. Fails on 70f7750:
/// `check-config` exits non-zero ("names a parameter as :name").
#[tokio::test]
async fn a_django_route_with_a_colon_after_a_converter_is_refused() {
    let django = Django::start();
    let config = preset_with(&django.url(), |table| {
        let routes = table
            .get_mut("routes")
            .and_then(toml::Value::as_array_mut)
            .expect("[[routes]]");
        let mut custom = toml::Table::new();
        custom.insert("method".into(), "POST".into());
        custom.insert("path".into(), "v1/models/<str:model>:generate/".into());
        routes.push(toml::Value::Table(custom));
    });
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &config).expect("write config");
    let checked = crate::support::binary::run_cli(Some(&path), &["check-config"]);
    assert!(
        checked.status.success(),
        "a valid Django path() route, `v1/models/<str:model>:generate/` (Django routes \
         /v1/models/sdxl:generate/ to it), is refused: the proxy will not start, and the app \
         behind it is down: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let proxy = Binary::start(&config, &[]).await;
    let answer = raw_http::send(
        proxy.proxy,
        b"GET /healthz/ HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        false,
        WITHIN,
    );
    assert_eq!(answer.status, 200, "the app answers through the proxy");
}

const GEN: &str = "/gen/";

/// An upstream that saves one image per flagged request to `/gen/` and
/// says so, and counts what it saved per user (`x-user-id`).
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let asked = request.uri.path() == GEN
            && String::from_utf8_lossy(&request.body).contains("\"generate_image\": true");
        Reply::ok()
            .header("x-images-saved", if asked { "1" } else { "0" })
            .body("generated")
    })
    .await
}

/// Images the upstream saved for `user`.
fn saved_for(upstream: &TestUpstream, user: &str) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| {
            r.uri.path() == GEN
                && r.header("x-user-id") == Some(user)
                && String::from_utf8_lossy(&r.body).contains("\"generate_image\": true")
        })
        .count()
}

async fn generate(binary: &Binary, user: &str) -> Answer {
    TestClient::new(binary.proxy)
        .send(
            Method::POST,
            GEN,
            &[("x-user-id", user), ("content-type", "application/json")],
            r#"{"generate_image": true}"#,
        )
        .await
}

fn redis_config(
    upstream: &TestUpstream,
    redis: &RedisServer,
    policy: &str,
    failures: u32,
) -> String {
    format!(
        r#"
upstream = "http://{upstream}"
[store]
kind = "redis"
url = "{url}"
command_timeout = "500ms"
on_store_error = "{policy}"
breaker = {{ failures = {failures}, open_for = "60s" }}
[identity]
default_plan = "free"
[plans]
free = {{ daily = 2, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/gen/"
deny_status = 429
"#,
        upstream = upstream.authority(),
        url = redis.url(),
    )
}

/// `/healthz`'s `store.pending_settles`.
async fn pending_settles(binary: &Binary) -> u64 {
    let health: serde_json::Value = serde_json::from_str(
        &TestClient::new(binary.admin)
            .send(Method::GET, "/healthz", &[], "")
            .await
            .text(),
    )
    .expect("healthz JSON");
    health["store"]["pending_settles"]
        .as_u64()
        .expect("pending_settles")
}

/// Refused settles now wait in the queue (`src/store/resilient/queue.rs`
/// `retry`): each round takes the FIRST `RETRY_BATCH` (64) queued settles,
/// and puts every refused one back at the FRONT (`put_back` is
/// `push_front`). So once 64 settles of one user whose key Redis refuses
/// (here `res` of the wrong type) wait in the queue, every round sends
/// those same 64 and nothing behind them is ever sent again: the settles
/// other users queued during a Redis outage wait behind them for as long as
/// that key stays broken, their images uncounted, and the users keep
/// generating past their limit. Fails on 70f7750: alice's two images,
/// saved during a short Redis outage and reported, are still not counted
/// seconds after Redis answers again; she then gets two more.
#[tokio::test]
async fn refused_settles_at_the_front_of_the_queue_starve_everyone_behind_them() {
    let mut redis = RedisServer::start_persistent();
    let upstream = saving_upstream().await;
    let binary = Binary::start(&redis_config(&upstream, &redis, "allow", 100_000), &[]).await;

    redis.cli(&["SET", "quota:{mallory}:res", "not a zset"]);
    for _ in 0..70 {
        assert_eq!(generate(&binary, "mallory").await.status, StatusCode::OK);
    }
    let deadline = std::time::Instant::now() + WITHIN;
    while pending_settles(&binary).await < 70 {
        assert!(
            std::time::Instant::now() < deadline,
            "mallory's settles queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Redis goes down for a moment (and comes back with its data, the
    // broken key too): alice's two images are forwarded (allow) and their
    // settles queued, behind mallory's.
    redis.kill();
    for _ in 0..2 {
        assert_eq!(generate(&binary, "alice").await.status, StatusCode::OK);
    }
    let deadline = std::time::Instant::now() + WITHIN;
    while pending_settles(&binary).await < 72 {
        assert!(
            std::time::Instant::now() < deadline,
            "alice's settles queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.restart();

    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let mut used = 0;
    while std::time::Instant::now() < deadline {
        used = used_today(&redis.url(), "alice").await.0;
        if used == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Alice (daily 2) asks for two more.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(generate(&binary, "alice").await.status);
    }
    let saved = saved_for(&upstream, "alice");
    assert!(
        saved <= 2 && used == 2,
        "alice (daily 2): {saved} images saved, {used} counted in Redis 8 s after it came \
         back (pending settles {}); her two settles queued during the outage wait behind \
         mallory's refused ones, sent again and again; her next two requests: {statuses:?}",
        pending_settles(&binary).await
    );
}

const ADMIN_TOKEN: &str = "today-admin-token";

/// `user`'s settled daily usage (the admin usage API), once nothing of
/// theirs is in flight.
async fn settled(binary: &Binary, user: &str) -> u64 {
    let deadline = std::time::Instant::now() + WITHIN;
    let auth = format!("Bearer {ADMIN_TOKEN}");
    loop {
        let answer = TestClient::new(binary.admin)
            .send(
                Method::GET,
                &format!("/v1/users/{user}/usage"),
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let daily = &answer.json()["periods"]["daily"];
        if daily["reserved"] == 0 {
            return daily["used"].as_u64().expect("used is a number");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user} still has a reservation in flight: {daily}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
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
                    Duration::from_secs(4),
                ),
            ])
    })
    .await;
    let config = format!(
        r#"
upstream = "http://{upstream}"
[timeouts]
idle = "1s"
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
    );
    let binary = Binary::start(&config, &[("QUOTA_PROXY_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
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

/// `identity.kind = "jwt"` with `cookie = "access_token"` reads the cookie
/// only when there is no bearer token (`src/identity/jwt.rs` `identify`:
/// `match bearer_token(headers)`), and an invalid bearer token is
/// anonymous. An app that authenticates from the cookie (the cookie-JWT
/// classes written for simplejwt, the harness's `HARNESS_JWT_COOKIE`)
/// never reads `Authorization`: a user at the limit adds
/// `Authorization: Bearer x` (any garbage) to a request carrying their
/// valid cookie, the proxy verifies the garbage, finds it invalid, treats
/// the request as anonymous and, under the preset's `anonymous =
/// "forward"`, forwards it unchecked; Django logs the user in from the
/// cookie and generates. Fails on 70f7750: a free user at the limit (3
/// images, a 4th denied) gets a 4th image saved, not counted.
#[tokio::test]
async fn a_garbage_bearer_token_hides_a_valid_jwt_cookie() {
    const USER: u64 = 920_002;
    let django = Django::start_with(&[("HARNESS_JWT_COOKIE", "access_token")]);
    let mut saved = django.saved();
    let secret = secret_file();
    let config = jwt_preset(&django, &secret, Some("access_token"));
    let proxy = Binary::start(&config, &[]).await;
    let token = access_token(USER);
    let plain = format!("access_token={token}");

    for session in 1..=3 {
        let answer = flagged(&proxy, session, plain.as_bytes());
        assert_eq!(answer.status, 200, "image {session}: {}", answer.text());
    }
    assert_eq!(saved.by_user(&USER.to_string()), 3, "three images saved");
    let denied = flagged(&proxy, 4, plain.as_bytes());
    assert_eq!(
        denied.status,
        403,
        "the fourth is denied: {}",
        denied.text()
    );

    let both = format!("Authorization: Bearer x\r\nCookie: {plain}");
    let answer = flagged_with(&proxy, 5, both.as_bytes());
    let total = saved.by_user(&USER.to_string());
    assert_eq!(
        total, 3,
        "a free user at the limit (3 a day) got an image saved by Django (status {}) by adding \
         `Authorization: Bearer x` to their valid JWT cookie: the proxy read only the invalid \
         bearer token, took the request for anonymous and forwarded it unchecked",
        answer.status
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
    let config = format!(
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
report_sse_event = "images_saved"
strip_marker = true
count = "images"
report_token_header = "X-Quota-Report-Token"
require_report_token = true
[admin]
token_env = "QUOTA_PROXY_ADMIN_TOKEN"
"#,
        upstream = upstream.authority(),
    );
    let binary = Binary::start(&config, &[("QUOTA_PROXY_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
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

/// `max_connections` (3d361f7, `src/server/limits.rs`) refuses the
/// newcomer when the cap is reached, and a connection that never sends a
/// byte keeps its place for `HEADER_READ_TIMEOUT` (30 s). With
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
