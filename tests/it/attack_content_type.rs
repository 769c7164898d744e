//! A request's `Content-Type` read as Django reads it, each a test on the
//! real binary in front of real Django (gunicorn, `tests/django/`),
//! counting the images Django saved: an HTTP/2 value with spaces around it
//! (gunicorn trims them), and a type longer than 256 characters (REST
//! framework reads it). Found by the attack session of 6 December (branch
//! `attack/dec06`); each test's doc says what the proxy did on the commit
//! it was found on (6f0a5b8).

use crate::support::binary::Binary;
use crate::support::django::Django;
use crate::support::preset::{
    ANSWER_WITHIN as WITHIN, answer_line, assert_held_at_the_limit, flagged_json, multipart_body,
    preset_with, use_up_the_free_plan,
};
use crate::support::raw_http;

/// **HTTP/2 header values are judged untrimmed, but reach Django trimmed.**
///
/// HTTP/1 parsers (httparse in the proxy, gunicorn) drop the spaces and
/// tabs around a header value. An HTTP/2 field value may carry them (h2
/// takes any `HeaderValue`); the proxy judged such a value as it came, and
/// forwarded it over HTTP/1.1 to gunicorn, which strips it
/// (`gunicorn/http/message.py`: `value.strip(" \t")`) before Django reads
/// it. So `content-type: " multipart/form-data; boundary=…"` (one leading
/// space) failed the port of `MultiPartParser.__init__`'s raw check
/// (`startswith("multipart/")`): judged *rejected* (Django's 400 for a
/// malformed multipart body), forwarded unreserved and unprobed, while
/// Django saw `multipart/form-data; boundary=…`, read `generate_image ==
/// "true"` and generated. On 6f0a5b8 a free user at the limit got an image
/// per request this way (on the same session too: a refused body skips the
/// probe and the learned sessions), each only counted after it was made;
/// every preset was open to it (`drf` and `django-form` run the same check
/// on a multipart type, and `drf` its 256-character limit on the type).
///
/// Now an HTTP/2 request's header values are trimmed of spaces and tabs on
/// arrival, as an HTTP/1 parser would have: judged and forwarded as Django
/// sees them.
#[tokio::test]
async fn an_h2_content_type_with_spaces_around_it_is_no_bypass() {
    const USER: u64 = 720_101;
    let django = Django::start();
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_with(&django.url(), |_| {}), &[]).await;
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_json(&proxy, USER, session)
    });
    let mut seen = Vec::new();
    for (n, content_type) in [
        " multipart/form-data; boundary=qpAttack",
        "\tmultipart/form-data; boundary=qpAttack",
        "  multipart/form-data; boundary=qpAttack \t",
    ]
    .into_iter()
    .enumerate()
    {
        let headers = vec![
            ("content-type".to_owned(), content_type.to_owned()),
            ("cookie".to_owned(), format!("sessionid=u{USER}")),
        ];
        let answer = raw_http::send_h2(
            proxy.proxy,
            "POST",
            &format!("/chat/session/{}/send/", 10 + n),
            &headers,
            multipart_body("qpAttack"),
            WITHIN,
        )
        .await;
        seen.push(answer_line(format!("{content_type:?}"), &answer));
    }
    assert_held_at_the_limit(
        &mut saved,
        USER,
        &seen,
        "three flagged uploads over HTTP/2 with  whitespace around the Content-Type",
    );
}

/// The preset with its route moved to the harness's REST framework view
/// (`api/drf/session/<int:session_id>/send/`, `flag_rules = "drf"`, no
/// probe), as `tests/it/django`'s `drf_rules_have_no_bypass` runs it.
fn drf_preset(upstream: &str) -> String {
    preset_with(upstream, |table| {
        let routes = table
            .get_mut("routes")
            .and_then(toml::Value::as_array_mut)
            .expect("[[routes]]");
        let route = routes[0].as_table_mut().expect("a route is a table");
        route.insert(
            "path".into(),
            "api/drf/session/<int:session_id>/send/".into(),
        );
        route.insert("flag_rules".into(), "drf".into());
        route.remove("probe");
    })
}

/// A JSON message asking for an image (`"generate_image": true`) to the
/// REST framework view of `session` as `user`, under `content_type`.
fn drf_flagged(
    proxy: &Binary,
    user: u64,
    session: u64,
    content_type: &str,
) -> raw_http::RawResponse {
    let body = br#"{"message": "a cat", "generate_image": true}"#;
    let mut request = format!(
        "POST /api/drf/session/{session}/send/ HTTP/1.1\r\nHost: chat.example\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\
         Cookie: sessionid=u{user}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw_http::send(proxy.proxy, &request, false, WITHIN)
}

/// **A long `Content-Type` was judged refused by DRF, which reads it.**
///
/// The `drf` rules (the default `flag_rules`) held that REST framework
/// answers 415 to a `Content-Type` longer than 256 characters, so such a
/// body was judged *rejected*: forwarded unreserved, as if no view could
/// run. Neither DRF (3.16.1) nor Django (5.2.19) has such a limit: the view
/// parsed `application/json; x=aaa…` (257, 300, 1,000 characters), read
/// `"generate_image": true` and generated. On 6f0a5b8 a free user at the
/// limit got an image per request that way (the app's `X-Images-Saved`
/// counted each only after it was made, and a refused body skips the
/// learned sessions, so the same session served again and again).
///
/// Now a type of any length is read by the media type it names; one too
/// long for a Django that refuses long headers is at worst counted.
#[tokio::test]
async fn a_long_content_type_is_read_as_the_rest_framework_reads_it() {
    const USER: u64 = 720_201;
    let django = Django::start();
    let mut saved = django.saved();
    let proxy = Binary::start(&drf_preset(&django.url()), &[]).await;
    for session in 1..=3 {
        let answer = drf_flagged(&proxy, USER, session, "application/json");
        assert_eq!(answer.status, 200, "image {session}: {}", answer.text());
    }
    assert_eq!(saved.by_user(&USER.to_string()), 3, "three images saved");
    let mut seen = Vec::new();
    for (n, len) in [257_usize, 300, 1000].into_iter().enumerate() {
        let prefix = "application/json; x=";
        let content_type = format!("{prefix}{}", "a".repeat(len - prefix.len()));
        let answer = drf_flagged(&proxy, USER, 10 + n as u64, &content_type);
        seen.push(answer_line(format!("{len} characters"), &answer));
    }
    assert_held_at_the_limit(
        &mut saved,
        USER,
        &seen,
        "three flagged JSON messages with a  Content-Type over 256 characters",
    );
}
