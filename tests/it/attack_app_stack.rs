//! Bypasses specific to the chat app's own pins (Django 5.1.2, gunicorn
//! 21.2.0), each a test on the real binary in front of real Django on that
//! stack, counting the images Django saved: a `Content-Type` padded with
//! Latin-1 spaces gunicorn 21 trims, headers Django 5.1 splits otherwise
//! than 5.2, a method in mixed case, and a base64 file part 5.1 reads and
//! 5.2 refuses. Found by the second attack session of 6 December (branch
//! `attack2/dec06`, on 0b7f19c) and the review of its fixes (branch
//! `review2/dec06`, on d189ae2); each test's doc says what the proxy did on
//! the commit it was found on.

use crate::support::binary::Binary;
use crate::support::django::{APP_REQUIREMENTS, Django};
use crate::support::preset::{
    ANSWER_WITHIN as WITHIN, answer_line, assert_held_at_the_limit, flagged_json, multipart_body,
    preset_with, use_up_the_free_plan,
};
use crate::support::raw_http;

/// **A `Content-Type` padded with Latin-1 spaces was judged refused, and
/// the app's gunicorn hands it to Django trimmed.**
///
/// The chat app pins gunicorn 21.2.0 and Django 5.1.2 (its
/// `requirements.txt`). gunicorn 21 reads a header value as Latin-1 and
/// trims it with Python's `str.lstrip()` / `rstrip()`
/// (`gunicorn/http/message.py`, `parse_headers`), which also take NBSP
/// (0xA0) and NEL (0x85); gunicorn 22+ trims only spaces and tabs, the
/// harness's 23.0.0 included. hyper takes both bytes in a value (obs-text)
/// and trims only spaces and tabs. So `Content-Type: <0xA0>multipart/
/// form-data; boundary=…` failed the port of `MultiPartParser.__init__`'s
/// raw `startswith("multipart/")`: judged *rejected* (a body Django
/// refuses), forwarded unreserved, unprobed and past the learned sessions,
/// while gunicorn 21 gave Django `multipart/form-data; boundary=…`, which
/// read `generate_image == "true"` and generated. On 0b7f19c a free user at
/// the limit got an image per request this way, each counted only after it
/// was made (the HTTP/2 spaces of `attack_content_type.rs`, over HTTP/1.1, with
/// the bytes the app's own server trims).
///
/// Now every field value of an inspected request loses what any of these
/// servers would trim from it (Python's whitespace, read as Latin-1) before
/// it is judged, and goes on so trimmed: Django sees what was judged
/// whichever gunicorn serves it.
#[tokio::test]
async fn a_content_type_padded_with_latin1_spaces_is_no_bypass_on_the_apps_gunicorn() {
    const USER: u64 = 720_201;
    let django = Django::start_on(APP_REQUIREMENTS, &[]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_with(&django.url(), |_| {}), &[]).await;
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_json(&proxy, USER, session)
    });
    let body = multipart_body("qpAttack");
    let mut seen = Vec::new();
    for (n, padding) in [&b"\xa0"[..], b"\x85", b"\xa0 \x85"]
        .into_iter()
        .enumerate()
    {
        let mut request = format!(
            "POST /chat/session/{}/send/ HTTP/1.1\r\nHost: chat.example\r\n\
             Content-Length: {}\r\nConnection: close\r\nCookie: sessionid=u{USER}\r\n\
             Content-Type: ",
            20 + n,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(padding);
        request.extend_from_slice(b"multipart/form-data; boundary=qpAttack\r\n\r\n");
        request.extend_from_slice(&body);
        let answer = raw_http::send(proxy.proxy, &request, false, WITHIN);
        seen.push(answer_line(format!("{padding:x?}"), &answer));
    }
    assert_held_at_the_limit(
        &mut saved,
        USER,
        &seen,
        "three flagged uploads whose Content-Type  starts with a Latin-1 space gunicorn 21 trims",
    );
}

/// **Django 5.1 reads `Content-Type` parameters another way than the
/// proxy's port of Django 5.2.**
///
/// Django 5.2 hands a header value with parameters to Python's
/// `email.message.Message.get_params`, whose `unquote` also strips angle
/// brackets (`boundary=<b>` is `b`) and which appends RFC 2231 parameters
/// after the plain ones; Django 5.1 (5.1.2 is the chat app's pin) splits
/// the value itself (`django/utils/http.py` `_parseparam`): `<b>` stays
/// `<b>`, and the parameters keep their order. The proxy reads the request's
/// `Content-Type` and each part's `Content-Disposition` as 5.2 does, so:
/// - `boundary=<qpX>`, the parts split on `--<qpX>`: no part to the proxy
///   (not flagged), the upload with `generate_image=true` to Django 5.1;
/// - a part named `<generate_image>` saying `false` after the real one
///   saying `true`: the last `generate_image` is `false` to the proxy, a
///   field of another name to Django 5.1, which reads `true`.
///
/// On 0b7f19c each was forwarded unreserved (the probe said the session
/// does not force images) and generated: a free user at the limit got an
/// image per fresh session, each counted only after it was made.
///
/// Now a header whose parameters the two readings tell apart (main value,
/// `boundary`, `charset`, a part's `name` or `filename`) is a body that
/// cannot be read: it counts as asking for an image.
#[tokio::test]
async fn a_header_django_5_1_splits_otherwise_is_no_bypass() {
    const USER: u64 = 720_202;
    let django = Django::start_on(APP_REQUIREMENTS, &[]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_with(&django.url(), |_| {}), &[]).await;
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_json(&proxy, USER, session)
    });
    let angled = (
        "multipart/form-data; boundary=<qpX>".to_owned(),
        multipart_body("<qpX>"),
    );
    let renamed = (
        "multipart/form-data; boundary=qpY".to_owned(),
        "--qpY\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\na cat\r\n\
         --qpY\r\nContent-Disposition: form-data; name=\"generate_image\"\r\n\r\ntrue\r\n\
         --qpY\r\nContent-Disposition: form-data; name=<generate_image>\r\n\r\nfalse\r\n\
         --qpY--\r\n"
            .as_bytes()
            .to_vec(),
    );
    let mut seen = Vec::new();
    for (n, (content_type, body)) in [angled, renamed].into_iter().enumerate() {
        let mut request = format!(
            "POST /chat/session/{}/send/ HTTP/1.1\r\nHost: chat.example\r\n\
             Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Cookie: sessionid=u{USER}\r\n\r\n",
            30 + n,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        let answer = raw_http::send(proxy.proxy, &request, false, WITHIN);
        seen.push(answer_line(format!("{content_type:?}"), &answer));
    }
    assert_held_at_the_limit(
        &mut saved,
        USER,
        &seen,
        "two flagged uploads whose headers Django 5.1  reads otherwise than 5.2",
    );
}

/// **A method spelled `POSt` is no route's to the proxy and `POST` to the
/// app's gunicorn.**
///
/// gunicorn 21 (the chat app pins 21.2.0) checks the method with
/// `METH_RE.match` (`[A-Z0-9$-_.]{3,20}`), which needs only its first three
/// characters to match, then upper-cases it (`gunicorn/http/message.py`,
/// `parse_request_line`); Django's `WSGIRequest` upper-cases it again. hyper
/// takes any token as a method, case kept, and the routes matched `POST`
/// exactly: `POSt /chat/session/…/send/` was passed through uninspected
/// (no reservation, no report token, nothing counted), and Django ran the
/// send view as a `POST` and generated. gunicorn 22+ refuses a method with
/// a lower-case letter (`METHOD_BADCHAR_RE`) unless told otherwise. On
/// 0b7f19c a free user at the limit got an image per request this way,
/// none of them ever counted.
///
/// Now a request whose method is a route's in another case is judged as
/// that route's method (and forwarded as sent: gunicorn 21 takes it as
/// `POST`, 22+ refuses it).
#[tokio::test]
async fn a_method_in_mixed_case_is_no_bypass_on_the_apps_gunicorn() {
    const USER: u64 = 720_203;
    let django = Django::start_on(APP_REQUIREMENTS, &[]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_with(&django.url(), |_| {}), &[]).await;
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_json(&proxy, USER, session)
    });
    let body = br#"{"message": "a cat", "generate_image": true}"#;
    let mut seen = Vec::new();
    for (n, method) in ["POSt", "POSt"].into_iter().enumerate() {
        let mut request = format!(
            "{method} /chat/session/{}/send/ HTTP/1.1\r\nHost: chat.example\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
             Cookie: sessionid=u{USER}\r\n\r\n",
            40 + n,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let answer = raw_http::send(proxy.proxy, &request, false, WITHIN);
        seen.push(answer_line(method, &answer));
    }
    let images = saved.by_user(&USER.to_string());
    assert!(
        images == 3 && seen[0].contains(": 403 (django: false)"),
        "a free user at the limit (3 images) sent flagged messages with the method spelled \
         otherwise: now {images} images; answers:\n{}",
        seen.join("\n")
    );
}

/// **A base64 file part with bytes after its padding was judged a body
/// Django refuses, and Django 5.1 reads it.**
///
/// The multipart port is Django 5.2's, whose file loop carries the 1-3
/// bytes past a multiple of 4 to the next chunk and raises
/// `MultiPartParserError("Could not decode base64 data.")` when some are
/// left at the end of the part. Django 5.1 (5.1.2 is the chat app's pin)
/// reads ahead to a multiple of 4 and, at the end of the part, hands what
/// it has to `base64.b64decode`, which is lenient: `QQ==A` decodes to `A`
/// (it stops at the padding). So an upload with `generate_image=true` and
/// a file part (any name the view ignores) holding `QQ==A` under
/// `Content-Transfer-Encoding: base64` was judged *rejected*, forwarded
/// unreserved and unprobed, while Django 5.1 read the fields and generated.
/// On d189ae2 a free user at the limit got an image per request this way.
#[tokio::test]
async fn a_base64_file_django_5_1_reads_and_5_2_refuses_is_no_bypass() {
    const USER: u64 = 730_101;
    let django = Django::start_on(APP_REQUIREMENTS, &[]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_with(&django.url(), |_| {}), &[]).await;
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_json(&proxy, USER, session)
    });
    let body = b"--qpB\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\na cat\r\n\
        --qpB\r\nContent-Disposition: form-data; name=\"generate_image\"\r\n\r\ntrue\r\n\
        --qpB\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"a.txt\"\r\n\
        Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nQQ==A\r\n\
        --qpB--\r\n";
    let mut seen = Vec::new();
    for session in [50, 51] {
        let mut request = format!(
            "POST /chat/session/{session}/send/ HTTP/1.1\r\nHost: chat.example\r\n\
             Content-Type: multipart/form-data; boundary=qpB\r\nContent-Length: {}\r\n\
             Connection: close\r\nCookie: sessionid=u{USER}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let answer = raw_http::send(proxy.proxy, &request, false, WITHIN);
        seen.push(answer_line(format!("session {session}"), &answer));
    }
    assert_held_at_the_limit(
        &mut saved,
        USER,
        &seen,
        "two flagged uploads with a base64 file  Django 5.1 decodes and 5.2 refuses",
    );
}
