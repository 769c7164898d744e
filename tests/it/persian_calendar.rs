//! `periods.calendar = "persian"` end to end: the real proxy (accept loop,
//! quota layer, forwarding service) with a manual clock, on the memory store
//! and on a real `redis-server`. A user at their monthly limit is denied
//! until Tehran midnight of the 1st of the next Persian month, and
//! `Retry-After` and the RateLimit `t=` count down to it.

use crate::support::proxy::{Proxy, StoreChoice, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use chrono::{DateTime, Utc};
use http::StatusCode;
use quota_proxy::config::Config;
use quota_proxy::periods::{CalendarSystem, Period};

const SEND: &str = "/chat/session/17/send/";

const CONFIG: &str = r#"
[periods]
timezone = "Asia/Tehran"
week_start = "saturday"
calendar = "persian"
[identity]
default_plan = "free"
[plans]
free = { daily = 3, weekly = 10, monthly = 30 }
monthly2 = { daily = 0, weekly = 0, monthly = 2 }
[[routes]]
method = "POST"
path = "/chat/session/{session_id}/send/"
deny_status = 429
"#;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}

/// An upstream that saves one image for every request asking for one.
async fn saving_upstream() -> TestUpstream {
    TestUpstream::start(|request: RecordedRequest| async move {
        let asked = String::from_utf8_lossy(&request.body).contains("\"generate_image\": true");
        Reply::ok()
            .header("x-images-saved", if asked { "1" } else { "0" })
            .body("generated")
    })
    .await
}

/// Uses up `user`'s two images of the month at the proxy's current instant.
async fn use_the_month(proxy: &Proxy, client: &TestClient, user: &str) {
    for i in 1..=2 {
        let answer = client.generate(SEND, user, "monthly2").await;
        assert_eq!(answer.status, StatusCode::OK, "{user}: request {i}");
    }
    let usage = proxy.wait_settled(user, 2).await;
    assert_eq!(usage[Period::Monthly as usize].used, 2, "{user}");
}

/// The `Retry-After` of a denied request, which must be a denial.
async fn denied_for(client: &TestClient, user: &str) -> String {
    let answer = client.generate(SEND, user, "monthly2").await;
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{user}: {}",
        answer.text()
    );
    assert_eq!(answer.json()["period"], "monthly");
    let retry_after = answer.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(answer.json()["retry_after"].to_string(), retry_after);
    retry_after
}

async fn run(store: StoreChoice) {
    let upstream = saving_upstream().await;
    // Thursday 2026-12-03, 13:30 in Tehran: 12 Azar 1405. Azar ends at
    // Tehran midnight of 1 Dey (2026-12-22), 18 days and 10.5 hours away;
    // the Gregorian month would end 10 days later.
    let proxy = Proxy::start(
        CONFIG,
        &upstream.authority(),
        &store,
        at("2026-12-03T10:00:00Z"),
    )
    .await;
    let client = TestClient::new(proxy.addr);
    let to_dey = 18 * 86_400 + 37_800;

    let first = client.generate(SEND, "azar", "monthly2").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.headers["ratelimit"],
        format!("\"monthly\";r=1;t={to_dey}").as_str()
    );
    // Azar has 30 days.
    assert_eq!(
        first.headers["ratelimit-policy"],
        "\"monthly\";q=2;w=2592000"
    );
    assert_eq!(
        client.generate(SEND, "azar", "monthly2").await.status,
        StatusCode::OK
    );
    proxy.wait_settled("azar", 2).await;
    assert_eq!(upstream.count(), 2);

    // At the limit: denied on this very request, until 1 Dey.
    assert_eq!(denied_for(&client, "azar").await, to_dey.to_string());
    assert_eq!(
        upstream.count(),
        2,
        "a denied request never reaches the upstream"
    );
    proxy.clock.set(at("2026-12-21T20:29:59Z"));
    assert_eq!(denied_for(&client, "azar").await, "1");
    // Tehran midnight of 1 Dey 1405: a new month, a new counter.
    proxy.clock.set(at("2026-12-21T20:30:00Z"));
    let dey = client.generate(SEND, "azar", "monthly2").await;
    assert_eq!(dey.status, StatusCode::OK);
    // Dey has 30 days, and it has just begun.
    assert_eq!(dey.headers["ratelimit"], "\"monthly\";r=1;t=2592000");

    // Dey spans the Gregorian new year: 1 January is mid-month.
    proxy.clock.set(at("2026-12-31T20:00:00Z"));
    use_the_month(&proxy, &client, "dey").await;
    proxy.clock.set(at("2026-12-31T20:30:00Z"));
    // Still Dey 1405 until 2027-01-21 00:00 in Tehran: 20 days away.
    assert_eq!(denied_for(&client, "dey").await, (20 * 86_400).to_string());

    // Nowruz after a leap year: Esfand 1403 had 30 days; 1404 began on
    // 2025-03-21 in Tehran (20:30 UTC the evening before).
    proxy.clock.set(at("2025-03-19T20:30:00Z"));
    use_the_month(&proxy, &client, "leap").await;
    assert_eq!(denied_for(&client, "leap").await, "86400");
    proxy.clock.set(at("2025-03-20T20:29:59Z"));
    assert_eq!(denied_for(&client, "leap").await, "1");
    proxy.clock.set(at("2025-03-20T20:30:00Z"));
    assert_eq!(
        client.generate(SEND, "leap", "monthly2").await.status,
        StatusCode::OK
    );

    // Nowruz after a common year: Esfand 1402 had 29 days; 1403 began on
    // 2024-03-20. On 2024-03-19 (Gregorian 19 March) the month is over.
    proxy.clock.set(at("2024-03-18T20:30:00Z"));
    use_the_month(&proxy, &client, "common").await;
    assert_eq!(denied_for(&client, "common").await, "86400");
    proxy.clock.set(at("2024-03-19T20:30:00Z"));
    assert_eq!(
        client.generate(SEND, "common", "monthly2").await.status,
        StatusCode::OK
    );
    proxy.stop().await;
}

#[tokio::test]
async fn monthly_limit_waits_for_the_next_persian_month_memory() {
    run(StoreChoice::Memory).await;
}

#[tokio::test]
async fn monthly_limit_waits_for_the_next_persian_month_redis() {
    let server = RedisServer::start();
    run(StoreChoice::Redis(server.url())).await;
    // A unit counted in Dey scores minus the start of its day in Tehran,
    // the first of Dey: inside the Persian month, after Azar.
    let units = server.cli(&["ZRANGE", "quota:{azar}:units", "0", "-1", "WITHSCORES"]);
    let dey_1 = (-at("2026-12-21T20:30:00Z").timestamp_millis()).to_string();
    assert!(units.lines().any(|l| l.trim() == dey_1), "{units}");
}

#[test]
fn config_parses_the_calendar_and_names_the_field_when_wrong() {
    let config = Config::from_toml(CONFIG).expect("config");
    assert_eq!(config.periods.calendar, CalendarSystem::Persian);
    let default = Config::from_toml("").expect("empty config");
    assert_eq!(default.periods.calendar, CalendarSystem::Gregorian);
    let error = Config::from_toml("[periods]\ncalendar = \"julian\"")
        .expect_err("unknown calendar")
        .to_string();
    assert!(
        error.contains("calendar") && error.contains("persian"),
        "{error}"
    );
}
