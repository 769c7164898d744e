//! The upgrade from a set of units per period (change 40) that
//! docs/redis.md prescribes: its fold command, taken from the page as
//! written and run twice against a Redis holding both layouts, adds each
//! counted image of the old sets to its period counter once, keeps a
//! counter's longer TTL, leaves this version's sets alone (even of a user
//! id with `:`), and the store then reads the folded usage.

use std::path::Path;
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::reserve::utc_windows;
use chrono::{DateTime, Utc};
use quota_proxy::store::{QuotaStore, RedisStore};

/// The fold command of docs/redis.md, *Upgrading from an earlier layout*.
fn documented_fold() -> String {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/redis.md"))
        .expect("docs/redis.md");
    let from = page
        .find("*From a set per period*")
        .expect("the upgrade section");
    let block = &page[from..];
    let start = block.find("  ```sh\n").expect("its command") + "  ```sh\n".len();
    let end = start
        + block[start..]
            .find("  ```")
            .expect("the end of its command");
    block[start..end]
        .lines()
        .map(|line| line.strip_prefix("  ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `script` with `redis-cli` talking to `server`.
fn run_against(server: &RedisServer, script: &str) {
    let bin = tempfile::tempdir().expect("temp dir");
    let wrapper = bin.path().join("redis-cli");
    let real = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v redis-cli"])
            .output()
            .expect("sh")
            .stdout,
    )
    .expect("a path");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} -p {} \"$@\"\n",
            real.trim(),
            server.port()
        ),
    )
    .expect("wrapper");
    std::process::Command::new("chmod")
        .args(["+x", wrapper.to_str().expect("utf-8 path")])
        .status()
        .expect("chmod");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", script])
        .env("PATH", path)
        .output()
        .expect("bash");
    assert!(out.status.success(), "the fold failed: {out:?}");
}

#[tokio::test]
async fn the_documented_fold_counts_each_image_of_the_old_sets_once() {
    let server = RedisServer::start();
    // Change 40's layout: a day's set with two counted units and one in
    // flight, on a counter of 3 with a long TTL; a week's set with two
    // counted units and no counter yet.
    server.cli(&[
        "ZADD",
        "quota:{42}:d2031-05-14:units",
        "+inf",
        "a",
        "+inf",
        "b",
        "1944900060000",
        "c",
    ]);
    server.cli(&["PEXPIRE", "quota:{42}:d2031-05-14:units", "500000"]);
    server.cli(&["SET", "quota:{42}:d2031-05-14", "3", "PX", "900000"]);
    server.cli(&[
        "ZADD",
        "quota:{42}:w2031-05-12:units",
        "+inf",
        "a",
        "+inf",
        "b",
    ]);
    server.cli(&["PEXPIRE", "quota:{42}:w2031-05-12:units", "400000"]);
    // This version's set of a user whose id holds `:`s, matching the
    // command's key pattern.
    server.cli(&[
        "ZADD",
        "quota:{a:b}:units",
        "-1978300800000",
        "x",
        "-1978300800000",
        "y",
    ]);

    let fold = documented_fold();
    run_against(&server, &fold);
    run_against(&server, &fold);

    assert_eq!(server.cli(&["GET", "quota:{42}:d2031-05-14"]), "5");
    assert_eq!(server.cli(&["GET", "quota:{42}:w2031-05-12"]), "2");
    let pttl = |key: &str| -> i64 { server.cli(&["PTTL", key]).parse().expect("PTTL") };
    assert!(
        pttl("quota:{42}:d2031-05-14") > 500_000,
        "the counter's longer TTL is kept"
    );
    let week = pttl("quota:{42}:w2031-05-12");
    assert!(
        week > 0 && week <= 400_000,
        "a new counter takes the set's TTL: {week}"
    );
    assert_eq!(server.cli(&["EXISTS", "quota:{42}:d2031-05-14:units"]), "0");
    assert_eq!(
        server.cli(&["ZCARD", "quota:{a:b}:units"]),
        "2",
        "left alone"
    );

    // The store reads the folded images as usage.
    let store = RedisStore::connect(&server.url(), "quota:", Duration::from_secs(2))
        .await
        .expect("connect");
    let now: DateTime<Utc> = "2031-05-14T10:00:00Z".parse().expect("instant");
    let usage = store
        .usage("42", &utc_windows(now), now)
        .await
        .expect("usage");
    assert_eq!(usage.map(|u| u.used), [5, 2, 0]);
}
