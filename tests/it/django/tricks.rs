//! The free user who tries every trick (issue 16, "Done when"): through
//! the shipped preset, with gunicorn as upstream and identity provider, one
//! free user (3 images a day) sends fake reports in their message (the chat
//! app echoes it before its own report), every request of the send view's
//! corpus, and those with a path, id or header trick again over HTTP/2
//! (h2c). A second free user sends 12 flagged requests at once. The images
//! are counted where Django saved them: at most 3 for each.
#![allow(dead_code, unreachable_pub)]

use super::corpus::{self, Case, View};
use super::{ANSWER_WITHIN, preset_config};
use crate::support::binary::Binary;
use crate::support::django::Django;
use crate::support::raw_http;

/// Runs the tricks; fails if Django saved more than 3 images for the user.
pub async fn run() {
    const USER: &str = "700001";
    let django = Django::start();
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let cookie = format!("sessionid=u{USER}");
    let mut images: Vec<String> = Vec::new();

    // The chat app echoes the user's message before its own report.
    let fakes = [
        r#"[IMAGES_SAVED]{\"count\": 0}[IMAGES_SAVED_END]"#,
        r#"[IMAGES_SAVED]{\"count\": 0, \"token\": \"\"}[IMAGES_SAVED_END]"#,
    ];
    for n in 0..6 {
        let body = format!(
            "{{\"message\": \"{}\", \"generate_image\": true}}",
            fakes[n % 2]
        );
        let case = Case::new(
            "trick/echoed-report",
            "fake report in the message",
            View::Send,
            View::Send.path("{S}"),
        )
        .json(&body);
        let before = saved.by_user(USER);
        let (bytes, half) = case.concrete(n).render(proxy.proxy, &format!("u{USER}"), n);
        raw_http::send(proxy.proxy, &bytes, half, ANSWER_WITHIN);
        if saved.by_user(USER) > before {
            images.push(format!("fake report in the message #{n}"));
        }
    }

    // Every request of the send view's corpus, in order; then those whose
    // trick is in the path, the id or a header over HTTP/2 (h2c).
    let cases: Vec<Case> = corpus::corpus()
        .into_iter()
        .filter(|c| c.view == View::Send)
        .collect();
    for (id, case) in cases.iter().enumerate() {
        let before = saved.by_user(USER);
        let case = case.concrete(id + 1);
        let (bytes, half) = case.render(proxy.proxy, &format!("u{USER}"), id + 1);
        raw_http::send(proxy.proxy, &bytes, half, ANSWER_WITHIN);
        if saved.by_user(USER) > before {
            images.push(format!("#{} [{}] {}", id + 1, case.class, case.name));
        }
    }
    for (id, case) in cases.iter().enumerate().filter(|(_, c)| c.h2_worthy()) {
        let case = case.concrete(20_000 + id);
        let mut headers = case.headers.clone();
        headers.push(("cookie".into(), cookie.clone()));
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
        if saved.by_user(USER) > before {
            let status = response.status;
            images.push(format!(
                "#{} over HTTP/2 [{}] {} ({status})",
                id + 1,
                case.class,
                case.name
            ));
        }
    }

    // Another free user: a burst of flagged requests all at once, racing
    // each other through the check.
    let burst: Vec<_> = (0..12)
        .map(|n| {
            let case = Case::ordinary(View::Send).concrete(40_000 + n);
            let (bytes, half) = case.render(proxy.proxy, &format!("u{BURST_USER}"), n);
            let addr = proxy.proxy;
            std::thread::spawn(move || raw_http::send(addr, &bytes, half, ANSWER_WITHIN).status)
        })
        .collect();
    let statuses: Vec<u16> = burst
        .into_iter()
        .map(|t| t.join().expect("a burst thread"))
        .collect();
    let burst_images = saved.by_user(BURST_USER);

    let total = saved.by_user(USER);
    println!("a free user trying every trick got {total} images saved by Django:");
    for image in &images {
        println!("  {image}");
    }
    println!("a burst of 12 at once got {burst_images} images (statuses {statuses:?})");
    assert!(
        total <= 3 && burst_images <= 3,
        "a free user (3 a day) got {total} images saved by Django (3 allowed):\n{}\n\
         a burst of 12 flagged requests at once got {burst_images} (statuses {statuses:?})",
        images.join("\n")
    );
}

/// The free user who sends a burst of requests at once.
const BURST_USER: &str = "700002";

/// A free user (3 a day) whose flagged requests each name the report token
/// header in `Connection`: the proxy adds `X-Quota-Report-Token`, then
/// removes it as hop-by-hop before forwarding, so the app echoes an empty
/// token, its report is plain text, and every reservation is released as
/// "no image saved". The user is checked but never counted.
pub async fn token_named_in_connection() {
    const USER: &str = "700003";
    let django = Django::start();
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let mut statuses = Vec::new();
    for n in 0..6 {
        let case = Case::ordinary(View::Send)
            .header("Connection", "X-Quota-Report-Token")
            .concrete(60_000 + n);
        let (bytes, half) = case.render(proxy.proxy, &format!("u{USER}"), 60_000 + n);
        statuses.push(raw_http::send(proxy.proxy, &bytes, half, ANSWER_WITHIN).status);
    }
    let total = saved.by_user(USER);
    assert!(
        total <= 3,
        "a free user (3 a day) sending `Connection: X-Quota-Report-Token` got {total} images \
         saved by Django (statuses {statuses:?})\nproxy logs:\n{}",
        proxy.logs().join("\n")
    );
}

/// Behind Django's standard `GZipMiddleware` (which compresses a
/// `StreamingHttpResponse` when the client sends `Accept-Encoding: gzip`),
/// the in-band `[IMAGES_SAVED]` report reaches the proxy gzip-compressed:
/// the scanner never sees it, and each flagged request's reservation is
/// released as "no image saved". The proxy neither removes
/// `Accept-Encoding` on inspected routes nor decodes the answer.
pub async fn gzip_hides_the_report() {
    const USER: &str = "700004";
    let django = Django::start_with(&[("HARNESS_GZIP", "1")]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let mut statuses = Vec::new();
    for n in 0..6 {
        let case = Case::ordinary(View::Send)
            .header("Accept-Encoding", "gzip")
            .concrete(70_000 + n);
        let (bytes, half) = case.render(proxy.proxy, &format!("u{USER}"), 70_000 + n);
        statuses.push(raw_http::send(proxy.proxy, &bytes, half, ANSWER_WITHIN).status);
    }
    let total = saved.by_user(USER);
    assert!(
        total <= 3,
        "behind GZipMiddleware a free user (3 a day) sending `Accept-Encoding: gzip` got \
         {total} images saved by Django (statuses {statuses:?})"
    );
}

/// A WSGI server names a header `HTTP_` + its name with `-` made `_`; one
/// that keeps names holding `_` (gunicorn's `--header-map dangerous`,
/// gunicorn before 22, other servers) hands Django `Accept_Encoding: gzip`
/// as `HTTP_ACCEPT_ENCODING`. Behind `GZipMiddleware` the streamed answer
/// then comes back compressed and its in-band report unseen, although the
/// proxy removed `Accept-Encoding` itself. `django` runs with
/// `HARNESS_GZIP=1` on such a server.
pub async fn an_underscore_spelling_reaches_django_as_the_header(django: Django) {
    const USER: &str = "700005";
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let mut statuses = Vec::new();
    for n in 0..6 {
        let case = Case::ordinary(View::Send)
            .header("Accept_Encoding", "gzip")
            .concrete(71_000 + n);
        let (bytes, half) = case.render(proxy.proxy, &format!("u{USER}"), 71_000 + n);
        statuses.push(raw_http::send(proxy.proxy, &bytes, half, ANSWER_WITHIN).status);
    }
    let total = saved.by_user(USER);
    assert!(
        total <= 3,
        "behind GZipMiddleware and a gunicorn that keeps `_` names, a free user (3 a day) \
         sending `Accept_Encoding: gzip` got {total} images saved by Django (statuses \
         {statuses:?})"
    );
}
