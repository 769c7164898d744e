//! Findings of the review of 6 December's second attack fixes (branch
//! `review2/dec06`), each a test on the real binary in front of real
//! Django on the chat app's own pins (Django 5.1.2, gunicorn 21.2.0),
//! counting the images Django saved. Each test's doc says what the proxy
//! did on the commit it was found on (d189ae2).

use crate::support::binary::Binary;
use crate::support::django::{APP_REQUIREMENTS, Django};
use crate::support::preset::{
    ANSWER_WITHIN as WITHIN, answer_line, assert_held_at_the_limit, flagged_json, preset_with,
    use_up_the_free_plan,
};
use crate::support::raw_http;

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
