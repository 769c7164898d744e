//! Findings of the attack sessions (second and third) that need real
//! gunicorn + Django, each a test on the real binary with the shipped preset,
//! changed only where a test says so. Images are counted where Django saved
//! them; usage, where the test reads the store.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use super::corpus::{Case, View};
use super::{ANSWER_WITHIN, preset_config};
use crate::support::binary::Binary;
use crate::support::django::Django;
use crate::support::raw_http;
use crate::support::redis::RedisServer;

/// The shipped preset in front of `django`, with `edit` applied to its
/// TOML table.
fn config_with(django: &Django, edit: impl FnOnce(&mut toml::Table)) -> String {
    let mut table: toml::Table =
        toml::from_str(&preset_config(&django.url(), View::Send)).expect("the preset is TOML");
    edit(&mut table);
    toml::to_string(&table).expect("config renders")
}

/// Sets `key = value` in the `[section]` of a config table.
fn set(table: &mut toml::Table, section: &str, key: &str, value: &str) {
    table
        .entry(section)
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .unwrap_or_else(|| panic!("[{section}] is a table"))
        .insert(key.into(), value.into());
}

/// Sends an ordinary flagged request (JSON `"generate_image": true`) of
/// free user `user` on a session of its own (`case`) from a thread of its
/// own; the handle gives the status.
fn flagged_in_background(proxy: &Binary, user: &str, case: usize) -> std::thread::JoinHandle<u16> {
    let request = Case::ordinary(View::Send).concrete(case);
    let (bytes, half) = request.render(proxy.proxy, &format!("u{user}"), case);
    let addr = proxy.proxy;
    std::thread::spawn(move || raw_http::send(addr, &bytes, half, ANSWER_WITHIN).status)
}

/// A reservation lives `store.reservation_ttl` (the preset: 180 s); the
/// wait for the head may last `timeouts.response_head` (the preset: 300 s,
/// "generation can take minutes before the first byte"). It was kept alive
/// only once the head had arrived, so a user with one image left could
/// send a request whose head took longer than the TTL, wait for its
/// reservation to expire, and send another: admitted, both generated. Now
/// it is held from admit to settle, the head's wait included
/// (`src/quota/hold.rs`).
/// Scaled down here: TTL 2 s, Django answers after 5 s.
pub async fn reservation_expires_while_the_head_is_awaited() {
    const USER: &str = "710001";
    let django = Django::start_with(&[("HARNESS_SEND_DELAY", "5")]);
    let mut saved = django.saved();
    let config = config_with(&django, |table| {
        set(table, "store", "reservation_ttl", "2s")
    });
    let proxy = Binary::start(&config, &[]).await;

    // Two images of three, at once (gunicorn has two workers).
    let fill: Vec<_> = (0..2)
        .map(|n| flagged_in_background(&proxy, USER, 71_000 + n))
        .collect();
    let fill: Vec<u16> = fill
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(
        saved.by_user(USER),
        2,
        "two flagged requests of a free user should have saved two images (statuses {fill:?})"
    );

    // The last image: its reservation expires while Django works on it.
    let last = flagged_in_background(&proxy, USER, 71_010);
    std::thread::sleep(Duration::from_secs(3));
    // Over the limit, unless the first still holds its unit.
    let over = flagged_in_background(&proxy, USER, 71_011);
    let statuses = [last.join().expect("thread"), over.join().expect("thread")];
    let total = saved.by_user(USER);
    assert!(
        total <= 3,
        "a free user (3 a day) got {total} images saved by Django: a flagged request whose \
         response head took longer than store.reservation_ttl lost its reservation while \
         Django was still generating, and a request sent meanwhile was admitted (statuses of \
         the last two: {statuses:?}); the reservation is kept alive only once the head arrives"
    );
}

/// Sends `request` (session tokens expanded for `case`) with cookie
/// `sessionid=<cookie>` from a thread of its own; the handle gives the
/// status.
fn in_background(
    proxy: &Binary,
    request: &Case,
    cookie: &str,
    case: usize,
) -> std::thread::JoinHandle<u16> {
    let (bytes, half) = request.concrete(case).render(proxy.proxy, cookie, case);
    let addr = proxy.proxy;
    std::thread::spawn(move || raw_http::send(addr, &bytes, half, ANSWER_WITHIN).status)
}

/// On the send route (which has a probe) the proxy asks who the caller is
/// for every request, and probed the session only when the identity call
/// succeeded: when it failed, an unflagged request went on with no probe
/// and no reservation, and an `image_editing` session generated all the
/// same. A client makes the identity call fail by timing: it keeps
/// gunicorn's workers busy with slow unflagged chats of its own (free), and
/// adds a cookie the proxy has not seen (`; n=1`, ignored by Django) so the
/// identity cache misses; the call waits behind the busy workers past its
/// 2 s timeout. Now a failed identity on a probed route counts as flagged
/// and `on_identity_error` applies: the user at the limit gets no fourth
/// image.
pub async fn identity_timeout_skips_the_probe() {
    const USER: &str = "710101";
    const HELPER: &str = "710102";
    let django = Django::start_with(&[("HARNESS_SEND_DELAY", "6")]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;

    // Three images of three.
    let fill: Vec<_> = (0..3)
        .map(|n| flagged_in_background(&proxy, USER, 72_000 + n))
        .collect();
    let fill: Vec<u16> = fill
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(
        saved.by_user(USER),
        3,
        "three flagged requests of a free user should have saved three images (statuses {fill:?})"
    );

    // Both gunicorn workers busy with slow unflagged chats.
    let unflagged = Case::new(
        "found/identity-timeout",
        "unflagged",
        View::Send,
        View::Send.path("{S}"),
    )
    .json(&super::corpus::json_flag(Some("false")));
    let busy: Vec<_> = (0..2)
        .map(|n| in_background(&proxy, &unflagged, &format!("u{HELPER}"), 72_010 + n))
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // An unflagged message to the user's image_editing session, with a
    // cookie the identity cache has not seen.
    let editing = Case::new(
        "found/identity-timeout",
        "unflagged, image_editing session",
        View::Send,
        View::Send.path("{E}"),
    )
    .json(&super::corpus::json_flag(Some("false")));
    let attack = in_background(&proxy, &editing, &format!("u{USER}; n=1"), 72_020);
    let status = attack.join().expect("thread");
    let busy: Vec<u16> = busy
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let total = saved.by_user(USER);
    assert!(
        total <= 3,
        "a free user at the limit (3 a day) got {total} images saved by Django: an unflagged \
         request to an image_editing session whose identity call timed out (gunicorn's workers \
         busy with the client's own slow chats, statuses {busy:?}) was forwarded without a \
         probe or a reservation (status {status}) and generated\nproxy logs:\n{}",
        proxy.log_lines(&["identity", "inspected request"], usize::MAX)
    );
}

/// HTTP/2 clients (browsers) send their cookies as several `cookie`
/// fields ("crumbs", RFC 9113 8.2.3). The proxy forwards them as several
/// `Cookie` lines, to the identity call as to the request; gunicorn joins
/// repeated lines with `,` (`gunicorn/http/wsgi.py`), which Django's
/// `parse_cookie` does not split: with more than one crumb Django saw no
/// `sessionid` (302 to the login page), and so did the identity call. No
/// bypass (the proxy counted the user Django saw), but an HTTP/2 client
/// that splits its cookies was logged out behind the proxy. RFC 9113 8.2.3
/// wants the crumbs joined with `; ` before they go on over HTTP/1.1; the
/// proxy now does, for the identity call and the request alike, so every
/// request here is the user's: three images, then the quota's 403.
pub async fn h2_cookie_crumbs() {
    const USER: &str = "710201";
    let django = Django::start();
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let cookie = format!("sessionid=u{USER}");
    let crumbs: [&[&str]; 4] = [
        &[&cookie],
        &[&cookie, "csrftoken=abc"],
        &["csrftoken=abc", &cookie],
        &["csrftoken=abc", &cookie, "theme=dark"],
    ];
    let mut seen = Vec::new();
    for round in 0..2 {
        for (n, crumbs) in crumbs.iter().enumerate() {
            let case = Case::ordinary(View::Send).concrete(73_000 + round * 10 + n);
            let mut headers = case.headers.clone();
            for crumb in *crumbs {
                headers.push(("cookie".into(), (*crumb).to_owned()));
            }
            let before = saved.by_user(USER);
            let response = raw_http::send_h2(
                proxy.proxy,
                &case.method,
                &case.target,
                &headers,
                case.body.clone(),
                ANSWER_WITHIN,
            )
            .await;
            seen.push(format!(
                "{crumbs:?}: {} (django: {}), image: {}",
                response.status,
                response.header("x-harness-django").is_some(),
                saved.by_user(USER) > before
            ));
        }
    }
    let total = saved.by_user(USER);
    assert!(
        total == 3 && seen.iter().all(|line| !line.contains(": 302")),
        "a free user (3 a day) sending cookie crumbs over HTTP/2 got {total} images:\n{}",
        seen.join("\n")
    );
}

/// The reply streams; the chat app then generates and saves the image and
/// reports it at the very end. When the upstream falls silent for longer
/// than `timeouts.idle` before the report (a slow generation; the preset
/// allows 300 s), the proxy cuts the body; Django goes on, saves the image
/// and fails only to write the report to the closed connection. The cut
/// answer was settled as "no image saved"; now a cut 2xx answer to a
/// flagged request counts one image (fail closed). Scaled down: idle 2 s,
/// Django silent 4 s.
pub async fn idle_cut_releases_the_reservation() {
    const USER: &str = "710301";
    let django = Django::start_with(&[("HARNESS_SEND_STALL", "4")]);
    let mut saved = django.saved();
    let config = config_with(&django, |table| set(table, "timeouts", "idle", "2s"));
    let proxy = Binary::start(&config, &[]).await;
    let mut statuses = Vec::new();
    for n in 0..5 {
        let thread = flagged_in_background(&proxy, USER, 74_000 + n);
        statuses.push(thread.join().expect("thread"));
    }
    // The last generations end after their answers were cut.
    std::thread::sleep(Duration::from_secs(5));
    let total = saved.by_user(USER);
    assert!(
        total <= 3,
        "a free user (3 a day) got {total} images saved by Django (statuses {statuses:?}): \
         each reply went silent longer than timeouts.idle before its report, the proxy cut it \
         and released the reservation, and Django saved the image anyway"
    );
}

/// The identity call went to the absolute endpoint URL and hyper's client
/// wrote `Host` from it: Django saw the upstream's address
/// (`127.0.0.1:<port>`), not the client's. A project whose `ALLOWED_HOSTS`
/// holds its public host only (Django's usual setting) answered every call
/// 400 (`DisallowedHost`): flagged requests got 503, and unflagged
/// messages to image_editing sessions generated unchecked. Now the call
/// carries the client's `Host`: the user is served as anywhere else.
pub async fn identity_call_host_is_the_upstreams() {
    const USER: &str = "710401";
    const HOST: &str = "chat.example";
    // `t`: the harness's own health check.
    let django = Django::start_with(&[("HARNESS_ALLOWED_HOSTS", &format!("{HOST},t"))]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let body = super::corpus::json_flag(Some("false"));
    let mut statuses = Vec::new();
    for n in 0..5u64 {
        let session = super::corpus::IMAGE_EDITING_FROM + 75_000 + n;
        let request = format!(
            "POST /chat/session/{session}/send/ HTTP/1.1\r\nHost: {HOST}\r\n\
             Cookie: sessionid=u{USER}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let response = raw_http::send(proxy.proxy, request.as_bytes(), false, ANSWER_WITHIN);
        statuses.push(response.status);
    }
    std::thread::sleep(Duration::from_millis(500));
    let total = saved.by_user(USER);
    // Served as everywhere else: three images, then the quota's 403.
    assert!(
        total == 3 && statuses == [200, 200, 200, 403, 403],
        "a free user (3 a day) got {total} images saved by Django from unflagged messages to \
         image_editing sessions (statuses {statuses:?}, want 3 images and [200, 200, 200, \
         403, 403]): behind ALLOWED_HOSTS = [{HOST:?}] the identity call must carry the \
         client's Host\nproxy logs:\n{}",
        proxy.log_lines(&["identity"], 3)
    );
}

/// The same question for the response head: when Django has not answered
/// within `timeouts.response_head` (the preset: 300 s), the proxy answers
/// 504, drops the upstream connection and releases the reservation. Held
/// (this test passes): the view saves at the end of its stream, after its
/// first writes, and gunicorn stops iterating a streamed answer at the
/// first write that fails (the proxy has closed the connection), so the
/// generator never reaches the save. A view that saved before its first
/// byte would leak the image uncounted. Scaled down: head timeout 2 s,
/// Django answers after 4 s.
pub async fn head_timeout_releases_the_reservation() {
    const USER: &str = "710501";
    let django = Django::start_with(&[("HARNESS_SEND_DELAY", "4")]);
    let mut saved = django.saved();
    let config = config_with(&django, |table| {
        set(table, "timeouts", "response_head", "2s")
    });
    let proxy = Binary::start(&config, &[]).await;
    let mut statuses = Vec::new();
    for n in 0..5 {
        let thread = flagged_in_background(&proxy, USER, 76_000 + n);
        statuses.push(thread.join().expect("thread"));
    }
    std::thread::sleep(Duration::from_secs(5));
    let total = saved.by_user(USER);
    println!("head timeouts: statuses {statuses:?}, {total} images saved");
    assert!(
        total <= 3,
        "a free user (3 a day) got {total} images saved by Django (statuses {statuses:?}): \
         each answer took longer than timeouts.response_head, the proxy answered 504 and \
         released the reservation, and Django saved the image anyway"
    );
}

/// `user`'s settled images in `redis` (the units counted, all of them of
/// this test's day, and the daily counters, in whatever zone the harness
/// chose: `preset_config` picks one where it is noon), and its units not
/// counted (reservations in flight, or expired).
fn redis_usage(redis: &RedisServer, user: &str) -> (u64, usize) {
    let number = |answer: String| answer.trim().parse::<u64>().unwrap_or(0);
    // Counted units score minus their day's start (ms), above -2^51; the
    // others below.
    let units = format!("quota:{{{user}}}:units");
    let mut used = number(redis.cli(&["ZCOUNT", &units, "(-2251799813685248", "+inf"]));
    let reserved = number(redis.cli(&["ZCOUNT", &units, "-inf", "(-2251799813685248"])) as usize;
    let counters = redis.cli(&["--scan", "--pattern", &format!("quota:{{{user}}}:d*")]);
    for key in counters.lines().map(str::trim).filter(|k| !k.is_empty()) {
        used += number(redis.cli(&["GET", key]));
    }
    (used, reserved)
}

/// A graceful shutdown of the proxy alone (a new version rolled out, a
/// `systemctl restart quota-proxy` with Django running on) while a flagged
/// chat is still generating: the proxy waits for pending settlements until
/// `shutdown_grace` (at least 5 s) has passed (`src/app/mod.rs`, `flush`)
/// and exits, closing its connection to gunicorn. gunicorn's sync worker does not notice until the
/// view writes again, after the image is saved: Django saves the image,
/// the reservation expired, and the image was never counted. Now the
/// answers still read when the grace ends are cut and charged (fail
/// closed). The preset lets a generation run 300 s
/// (`timeouts.response_head`, `idle`) against the default 30 s grace;
/// scaled here to a 1 s grace and a 12 s stall.
pub async fn shutdown_cuts_a_generation() {
    const USER: &str = "730001";
    let redis = RedisServer::start();
    let django = Django::start_with(&[("HARNESS_SEND_STALL", "12")]);
    let mut saved = django.saved();
    let config = config_with(&django, |table| {
        table.insert("shutdown_grace".into(), "1s".into());
        set(table, "store", "kind", "redis");
        set(table, "store", "url", &redis.url());
    });
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
    let logs = proxy.log_lines(&["settlement"], usize::MAX);
    assert_eq!(
        used, images as u64,
        "Django saved {images} image(s) for a flagged chat the proxy admitted, but Redis holds \
         {used} used ({reserved} reservation(s) left to expire): the chat was still generating \
         when the proxy's shutdown grace ended, and its settlement was dropped instead of \
         charged as the cut answer it is (client status {client_status})\nproxy logs:\n{logs}"
    );
}
