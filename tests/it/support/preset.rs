//! The chat app's shipped preset (`config/django-mobixai.toml`) in front of
//! the real Django harness, and the requests the tests send through it.

use std::time::Duration;

use super::binary::Binary;
use super::django::SavedImages;
use super::raw_http::{self, RawResponse};

/// The longest wait for one answer of Django through the proxy.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// The shipped preset's text.
pub fn preset_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/django-mobixai.toml");
    std::fs::read_to_string(path).expect("read config/django-mobixai.toml")
}

/// The shipped preset, with `upstream` (Django), its periods cut in a zone
/// where it is about noon (no day boundary mid-test), and `edit` applied to
/// its TOML table.
pub fn preset_with(upstream: &str, edit: impl FnOnce(&mut toml::Table)) -> String {
    let mut table: toml::Table = toml::from_str(&preset_text()).expect("the preset is TOML");
    table.insert("upstream".into(), upstream.into());
    table
        .entry("periods")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[periods] is a table")
        .insert("timezone".into(), noon_zone().into());
    edit(&mut table);
    toml::to_string(&table).expect("config renders")
}

/// A fixed-offset time zone (`Etc/GMT±N`) where it is now about noon.
pub fn noon_zone() -> String {
    use chrono::Timelike;
    let hour = i32::try_from(chrono::Utc::now().hour()).expect("an hour fits");
    // UTC+offset is noon; Etc/GMT names count the other way round.
    let offset = (12 - hour).clamp(-11, 12);
    if offset >= 0 {
        format!("Etc/GMT-{offset}")
    } else {
        format!("Etc/GMT+{}", -offset)
    }
}

/// A flagged JSON message to the send view of `session` over HTTP/1.1, as
/// user `user` (the harness's `sessionid=u<user>`, the free plan).
pub fn flagged_json(proxy: &Binary, user: u64, session: u64) -> RawResponse {
    let body = br#"{"message": "a cat", "generate_image": true}"#;
    let mut request = format!(
        "POST /chat/session/{session}/send/ HTTP/1.1\r\nHost: chat.example\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cookie: sessionid=u{user}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw_http::send(proxy.proxy, &request, false, ANSWER_WITHIN)
}

/// The free plan's three images for `user`, sent with `send(session)`, then
/// a fourth denied: the user is at the limit.
pub fn use_up_the_free_plan(saved: &mut SavedImages, user: u64, send: impl Fn(u64) -> RawResponse) {
    for session in 1..=3 {
        let answer = send(session);
        assert_eq!(answer.status, 200, "image {session}: {}", answer.text());
    }
    assert_eq!(saved.by_user(&user.to_string()), 3, "three images saved");
    let denied = send(4);
    assert_eq!(
        denied.status,
        403,
        "the fourth image is denied: {}",
        denied.text()
    );
}

/// The chat page's upload: `multipart/form-data` with `message` and
/// `generate_image=true`, split on `boundary`.
pub fn multipart_body(boundary: &str) -> Vec<u8> {
    format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\na cat\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"generate_image\"\r\n\r\ntrue\r\n\
         --{boundary}--\r\n"
    )
    .into_bytes()
}

/// One answer as the attack tests list it: `label: status (django:
/// whether Django saw the request) body`.
pub fn answer_line(label: impl std::fmt::Display, answer: &RawResponse) -> String {
    format!(
        "{label}: {} (django: {}) {}",
        answer.status,
        answer.header("x-harness-django").is_some(),
        answer.text()
    )
}

/// Asserts that the free user `user` has still only the three images of
/// [`use_up_the_free_plan`], and that every answer of `seen` (from
/// [`answer_line`]) was the proxy's 403, Django never reached; `sent` says
/// what the user sent, for the failure's message.
pub fn assert_held_at_the_limit(saved: &mut SavedImages, user: u64, seen: &[String], sent: &str) {
    let images = saved.by_user(&user.to_string());
    assert!(
        images == 3
            && seen
                .iter()
                .all(|line| line.contains(": 403 (django: false)")),
        "a free user at the limit (3 images) sent {sent}: now {images} images; answers:\n{}",
        seen.join("\n")
    );
}
