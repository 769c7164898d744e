//! Findings of the third attack session that need real gunicorn + Django:
//! each a test on the real binary with the shipped preset, changed only
//! where a test says so. Images are counted where Django saved them;
//! usage where the proxy's store (a `redis-server` of the test's own)
//! holds it.

use std::time::{Duration, Instant};

use super::corpus::{Case, View};
use super::{ANSWER_WITHIN, preset_config};
use crate::support::binary::Binary;
use crate::support::django::Django;
use crate::support::raw_http;
use crate::support::redis::RedisServer;

/// The sum of `user`'s daily counters in `redis` (settled images), and
/// its live reservations.
fn redis_usage(redis: &RedisServer, user: &str) -> (u64, usize) {
    let keys = redis.cli(&["--scan", "--pattern", &format!("quota:{{{user}}}:d*")]);
    let used = keys
        .lines()
        .filter(|k| !k.trim().is_empty())
        .map(|k| {
            redis
                .cli(&["GET", k.trim()])
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum();
    let reserved = redis
        .cli(&["ZCARD", &format!("quota:{{{user}}}:res")])
        .trim()
        .parse()
        .unwrap_or(0);
    (used, reserved)
}

/// A graceful shutdown of the proxy alone (a new version rolled out, a
/// `systemctl restart quota-proxy` with Django running on) while a flagged
/// chat is still generating: the proxy waits for pending settlements until
/// `shutdown_grace` (at least 5 s) has passed, logs "settlements still
/// pending at the end of the grace are lost; their reservations expire by
/// themselves" (`src/app/mod.rs`, `flush`), and exits, closing its
/// connection to gunicorn. gunicorn's sync worker does not notice until the
/// view writes again, after the image is saved: Django saves the image,
/// the reservation expires, and the image is never counted. The preset
/// lets a generation run 300 s (`timeouts.response_head`, `idle`) against
/// the default 30 s grace; scaled here to a 1 s grace and a 12 s stall.
pub(super) async fn shutdown_cuts_a_generation() {
    const USER: &str = "730001";
    let redis = RedisServer::start();
    let django = Django::start_with(&[("HARNESS_SEND_STALL", "12")]);
    let mut saved = django.saved();
    let mut table: toml::Table =
        toml::from_str(&preset_config(&django.url(), View::Send)).expect("the preset is TOML");
    table.insert("shutdown_grace".into(), "1s".into());
    let store = table
        .get_mut("store")
        .and_then(toml::Value::as_table_mut)
        .expect("the preset has [store]");
    store.insert("kind".into(), "redis".into());
    store.insert("url".into(), redis.url().into());
    let config = toml::to_string(&table).expect("config renders");
    let mut proxy = Binary::start(&config, &[]).await;

    let request = Case::ordinary(View::Send).concrete(73_000);
    let (bytes, half) = request.render(proxy.proxy, &format!("u{USER}"), 73_000);
    let addr = proxy.proxy;
    let client =
        std::thread::spawn(move || raw_http::send(addr, &bytes, half, ANSWER_WITHIN).status);

    // Admitted: one unit reserved, Django streaming (then silent).
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis_usage(&redis, USER).1 == 0 {
        assert!(
            Instant::now() < deadline,
            "the flagged request was never admitted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    let client_status = client.join().expect("client thread");

    // Django finishes its generation after the proxy is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while saved.by_user(USER) == 0 {
        assert!(
            Instant::now() < deadline,
            "Django saved no image (client status {client_status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let images = saved.by_user(USER);
    let (used, reserved) = redis_usage(&redis, USER);
    let logs = proxy
        .logs()
        .into_iter()
        .filter(|l| l.contains("settlement"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        used, images as u64,
        "Django saved {images} image(s) for a flagged chat the proxy admitted, but Redis holds \
         {used} used ({reserved} reservation(s) left to expire): the chat was still generating \
         when the proxy's shutdown grace ended, and its settlement was dropped instead of \
         charged as the cut answer it is (client status {client_status})\nproxy logs:\n{logs}"
    );
}
