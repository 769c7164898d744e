//! The one inspected route that the Redis fault, outage, store-lifecycle
//! and exact-count tests drive through the real binary: `POST /gen/` with a
//! JSON flag, a `free` plan of 1,000 a day, two serving threads and a Redis
//! store ([`redis_config`]), or a small daily limit denied 429
//! ([`daily_config`]); an upstream that saves one image per flagged request.

use http::{Method, StatusCode};

use super::binary::Binary;
use super::proxy::{Answer, TestClient};
use super::redis::RedisServer;
use super::upstream::{RecordedRequest, Reply, TestUpstream};

/// The path of the inspected route.
pub const GEN: &str = "/gen/";

/// A config in front of `upstream` whose store follows `policy`
/// (`on_store_error`), with the `[store]` lines `store` (its `url`, …).
pub fn redis_config(upstream: &TestUpstream, policy: &str, store: &str) -> String {
    format!(
        r#"
upstream = "http://{upstream}"
threads = 2
[identity]
default_plan = "free"
[plans]
free = {{ daily = 1000, weekly = 0, monthly = 0 }}
[[routes]]
method = "POST"
path = "/gen/"
[store]
kind = "redis"
on_store_error = "{policy}"
{store}
"#,
        upstream = upstream.authority()
    )
}

/// A config in front of `upstream` with `POST /gen/` denied 429 past a
/// `free` plan of `daily` a day (10 a week, 30 a month), and the `[store]`
/// lines `store` (the last table: more may follow).
pub fn daily_config(upstream: &TestUpstream, daily: u64, store: &str) -> String {
    format!(
        r#"
upstream = "http://{upstream}"
[identity]
default_plan = "free"
[plans]
free = {{ daily = {daily}, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/gen/"
deny_status = 429
[store]
{store}
"#,
        upstream = upstream.authority()
    )
}

/// The `[store]` lines of `redis` under `policy` (`on_store_error`), with
/// a command timeout of 300 ms and the lines `extra`.
pub fn redis_store(redis: &RedisServer, policy: &str, extra: &str) -> String {
    format!(
        "kind = \"redis\"\nurl = \"{url}\"\ncommand_timeout = \"300ms\"\n\
         on_store_error = \"{policy}\"\n{extra}",
        url = redis.url()
    )
}

/// A breaker that never opens (`[store]` line): every reserve asks Redis
/// first, so the first answer after an outage ends it at once.
pub const BREAKER_NEVER_OPENS: &str = r#"breaker = { failures = 1000000, open_for = "100ms" }"#;

/// An upstream that saves one image per flagged request to `/gen/`, and
/// says so (`x-images-saved`); nothing for anything else.
pub async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let asked = request.uri.path() == GEN
            && String::from_utf8_lossy(&request.body).contains("\"generate_image\": true");
        Reply::ok()
            .header("x-images-saved", if asked { "1" } else { "0" })
            .body("generated")
    })
    .await
}

/// One flagged request from `user` on a new connection (so the serving
/// threads take turns, each with its own Redis connection): the answer.
pub async fn flagged_answer(binary: &Binary, user: &str) -> Answer {
    TestClient::new(binary.proxy)
        .send(
            Method::POST,
            GEN,
            &[("x-user-id", user), ("content-type", "application/json")],
            r#"{"generate_image": true}"#,
        )
        .await
}

/// [`flagged_answer`]'s status.
pub async fn flagged(binary: &Binary, user: &str) -> StatusCode {
    flagged_answer(binary, user).await.status
}
