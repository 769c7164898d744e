//! The one inspected route that the Redis fault and store-lifecycle tests
//! drive through the real binary: `POST /gen/` with a JSON flag, a `free`
//! plan of 1,000 a day, two serving threads and a Redis store.

use http::{Method, StatusCode};

use super::binary::Binary;
use super::proxy::TestClient;
use super::upstream::TestUpstream;

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

/// One flagged request from `user` on a new connection (so the serving
/// threads take turns, each with its own Redis connection).
pub async fn flagged(binary: &Binary, user: &str) -> StatusCode {
    TestClient::new(binary.proxy)
        .send(
            Method::POST,
            "/gen/",
            &[("x-user-id", user), ("content-type", "application/json")],
            r#"{"generate_image": true}"#,
        )
        .await
        .status
}
