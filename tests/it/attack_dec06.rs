//! Findings of the attack session of 6 December (branch `attack/dec06`),
//! each a test on the real binary; where Django's reading matters, in front
//! of real Django (gunicorn, `tests/django/`), counting the images Django
//! saved. Each test's doc says what the proxy did on the commit it was
//! found on (6f0a5b8).

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

/// **A JWT whose signature PyJWT reads leniently was no identity to the
/// proxy.**
///
/// PyJWT (which djangorestframework-simplejwt verifies with) decodes a
/// segment as `base64.urlsafe_b64decode(segment + "=" * pad)`: the
/// signature bytes are the same with `=` padding after them (PyJWT 2.15.1
/// and earlier), and, up to at least PyJWT 2.8.0, with characters outside
/// the alphabet among them (`!`, a Latin-1 byte, or the `,` with which
/// gunicorn joins two `Authorization` lines, the proxy having read only
/// the first), with the standard
/// alphabet's `+` and `/`, or with other values in the two bits the last
/// character carries past the 256 signed ones; the signed header and
/// payload are untouched, so the token verifies. The proxy's `jsonwebtoken`
/// reads unpadded canonical base64url only: such a token was invalid, the
/// request anonymous, and under the preset's `anonymous = "forward"`
/// forwarded unchecked. Anyone holding a valid token (their own) could so
/// make every image of theirs uncounted. On 6f0a5b8 a free user at the
/// limit got one more image per spelling, none counted.
///
/// Now the signature is read as PyJWT reads it before it is verified.
#[tokio::test]
async fn a_jwt_signature_spelled_as_pyjwt_reads_it_still_identifies() {
    use crate::jwt_parity::{access_token, flagged_with, jwt_preset, secret_file};
    const USER: u64 = 720_301;
    let django = Django::start_with(&[("HARNESS_JWT_BEARER", "1")]);
    let mut saved = django.saved();
    let secret = secret_file();
    let proxy = Binary::start(&jwt_preset(&django, &secret, None), &[]).await;
    let token = access_token(USER);
    let plain = format!("Authorization: Bearer {token}");
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_with(&proxy, session, plain.as_bytes())
    });

    // The signature's last character with its two unsigned bits changed.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let last = token.as_bytes()[token.len() - 1];
    let index = ALPHABET.iter().position(|&c| c == last).expect("base64url");
    let other = char::from(ALPHABET[(index & !3) | ((index + 1) & 3)]);
    // Two `Authorization` lines: gunicorn joins them with `,`
    // (`HTTP_AUTHORIZATION = "Bearer <jwt head>,<jwt tail>=="`), simplejwt
    // takes the joined value's second word, and PyJWT skips the `,`.
    let cut = token.len() - 10;
    let two_lines = format!("{}\r\nAuthorization: {}==", &token[..cut], &token[cut..]);
    let spellings = [
        ("padded", format!("{token}=")),
        ("split over two lines", two_lines),
        ("junk after it", format!("{token}!!")),
        (
            "other unsigned bits",
            format!("{}{other}", &token[..token.len() - 1]),
        ),
    ];
    let mut seen = Vec::new();
    for (n, (what, spelled)) in spellings.iter().enumerate() {
        let header = format!("Authorization: Bearer {spelled}");
        let answer = flagged_with(&proxy, 10 + n as u64, header.as_bytes());
        seen.push(answer_line(what, &answer));
    }
    assert_held_at_the_limit(
        &mut saved,
        USER,
        &seen,
        "their own token with its signature  spelled otherwise",
    );
}

/// The same reading for a token in a cookie (`identity.jwt.cookie`, the
/// app's cookie-JWT authentication reading `request.COOKIES`): padded, or
/// cut over two `Cookie` lines that gunicorn joins with `,` (Django's
/// `parse_cookie` keeps the `,` and what follows in the value; PyJWT 2.8
/// skips it). On 6f0a5b8 each was anonymous to the proxy and forwarded
/// unchecked.
#[tokio::test]
async fn a_jwt_cookie_spelled_as_pyjwt_reads_it_still_identifies() {
    use crate::jwt_parity::{access_token, flagged_with, jwt_preset, secret_file};
    const USER: u64 = 720_401;
    let django = Django::start_with(&[("HARNESS_JWT_COOKIE", "access_token")]);
    let mut saved = django.saved();
    let secret = secret_file();
    let config = jwt_preset(&django, &secret, Some("access_token"));
    let proxy = Binary::start(&config, &[]).await;
    let token = access_token(USER);
    let plain = format!("Cookie: access_token={token}");
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_with(&proxy, session, plain.as_bytes())
    });
    let cut = token.len() - 10;
    let spellings = [
        ("padded", format!("Cookie: access_token={token}=")),
        (
            "split over two lines",
            format!(
                "Cookie: access_token={}\r\nCookie: {}==",
                &token[..cut],
                &token[cut..]
            ),
        ),
    ];
    let mut seen = Vec::new();
    for (n, (what, header)) in spellings.iter().enumerate() {
        let answer = flagged_with(&proxy, 10 + n as u64, header.as_bytes());
        seen.push(answer_line(what, &answer));
    }
    assert_held_at_the_limit(
        &mut saved,
        USER,
        &seen,
        "their own token cookie spelled otherwise",
    );
}

/// A flagged JSON message to the send view of `session` as `user`, sent as
/// `POST <target> HTTP/1.1` with the header lines `extra` (raw, each
/// ending in CRLF) and no others but the body's.
fn flagged_to(proxy: &Binary, user: u64, target: &str, extra: &str) -> raw_http::RawResponse {
    let body = br#"{"message": "a cat", "generate_image": true}"#;
    let mut request = format!(
        "POST {target} HTTP/1.1\r\n{extra}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nCookie: sessionid=u{user}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw_http::send(proxy.proxy, &request, false, WITHIN)
}

/// **An absolute-form target without `Host` made every identity call
/// fail, at the client's will.**
///
/// `POST http://chat.example/chat/session/1/send/ HTTP/1.1` with no `Host`
/// line: the proxy forwards it with `Host: chat.example`, taken from the
/// target (`proxy/service.rs`), and Django serves it; the identity call
/// carried no `Host` (only HTTP/2's `:authority` was written into one), so
/// behind the usual `ALLOWED_HOSTS` Django answered it 400
/// (`DisallowedHost`), an identity error. Under the preset's
/// `on_identity_error = "deny"` that was a 503 for such a client; under
/// `"allow"` ("Django cannot answer: forward uncounted", meant for an
/// outage) it was every image uncounted, for anyone who drops `Host`. On
/// 6f0a5b8 a free user at the limit got an image per request so.
///
/// Now a request without `Host` gets the one its target names before
/// anything reads it, whatever its version: the identity call, the probe
/// and the app see the same host.
#[tokio::test]
async fn an_absolute_form_target_without_host_is_identified() {
    const USER: u64 = 720_501;
    const HOST: &str = "chat.example";
    let django = Django::start_with(&[("HARNESS_ALLOWED_HOSTS", &format!("{HOST},t"))]);
    let mut saved = django.saved();
    let config = preset_with(&django.url(), |table| {
        table["identity"]
            .as_table_mut()
            .expect("[identity]")
            .insert("on_identity_error".into(), "allow".into());
    });
    let proxy = Binary::start(&config, &[]).await;
    let host = format!("Host: {HOST}\r\n");
    for session in 1..=3 {
        let answer = flagged_to(
            &proxy,
            USER,
            &format!("/chat/session/{session}/send/"),
            &host,
        );
        assert_eq!(answer.status, 200, "image {session}: {}", answer.text());
    }
    let denied = flagged_to(&proxy, USER, "/chat/session/4/send/", &host);
    assert_eq!(
        denied.status,
        403,
        "the fourth is denied: {}",
        denied.text()
    );
    let mut seen = Vec::new();
    for session in 10..13 {
        let target = format!("http://{HOST}/chat/session/{session}/send/");
        let answer = flagged_to(&proxy, USER, &target, "");
        seen.push(answer_line(&target, &answer));
    }
    assert_held_at_the_limit(
        &mut saved,
        USER,
        &seen,
        "absolute-form targets without Host",
    );
}

/// **A client could make its own identity an error, and `"allow"` sent it
/// on uncounted.**
///
/// `on_identity_error = "allow"` forwards uncounted "when Django cannot
/// answer" (docs/identity.md): meant for an outage. But some identity
/// errors are the request's own doing: with `forward_headers = ["Cookie",
/// "Authorization"]` (the docs' example) and the identity view decorated
/// for DRF, a garbage `Authorization: Bearer x` beside a valid session
/// cookie is answered 401, which the proxy rightly takes for an error
/// (which credential the app's view reads cannot be known), and the plain
/// Django send view generates from the cookie. Under `"deny"` that is a
/// 503; under `"allow"` on 6f0a5b8 it was every image of a user at the
/// limit uncounted, one header away. (JWT's two valid tokens naming two
/// users are the same kind of error.)
///
/// Now an identity the request itself makes unknowable is refused whatever
/// `on_identity_error` says: only an identity source that cannot answer is
/// subject to `"allow"`.
#[tokio::test]
async fn a_client_made_identity_error_is_never_allowed_through() {
    const USER: u64 = 720_601;
    let django = Django::start_with(&[("HARNESS_IDENTITY_DRF", "1")]);
    let mut saved = django.saved();
    let config = preset_with(&django.url(), |table| {
        let identity = table["identity"].as_table_mut().expect("[identity]");
        identity.insert("on_identity_error".into(), "allow".into());
        identity["forward_auth"]
            .as_table_mut()
            .expect("[identity.forward_auth]")
            .insert(
                "forward_headers".into(),
                toml::Value::Array(vec!["Cookie".into(), "Authorization".into()]),
            );
    });
    let proxy = Binary::start(&config, &[]).await;
    let host = "Host: chat.example\r\n";
    for session in 1..=3 {
        let answer = flagged_to(
            &proxy,
            USER,
            &format!("/chat/session/{session}/send/"),
            host,
        );
        assert_eq!(answer.status, 200, "image {session}: {}", answer.text());
    }
    let denied = flagged_to(&proxy, USER, "/chat/session/4/send/", host);
    assert_eq!(
        denied.status,
        403,
        "the fourth is denied: {}",
        denied.text()
    );
    let mut seen = Vec::new();
    for session in 10..13 {
        let answer = flagged_to(
            &proxy,
            USER,
            &format!("/chat/session/{session}/send/"),
            "Host: chat.example\r\nAuthorization: Bearer x\r\n",
        );
        seen.push(answer_line(session, &answer));
        // Refused on that very request, as the client's own doing: a 401
        // saying what to change, not a 503 to retry.
        assert_eq!(answer.status, 401, "{}", answer.text());
    }
    let images = saved.by_user(&USER.to_string());
    assert!(
        images == 3 && seen.iter().all(|line| line.contains("(django: false)")),
        "a free user at the limit (3 images) added `Authorization: Bearer x` beside the \
         session cookie: now {images} images; answers:\n{}",
        seen.join("\n")
    );
}
