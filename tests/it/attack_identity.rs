//! Ways a request's identity was misread, so that a user at the limit went
//! on anonymous or unchecked: a JWT spelled as PyJWT reads it (signature or
//! cookie), an absolute-form target without `Host`, and an identity error
//! the client makes itself, each a test on the real binary in front of
//! real Django (gunicorn, `tests/django/`), counting the images Django
//! saved; and a redirect of the identity view under a prefix, on the
//! forward-auth source against a stand-in identity server. Found by the
//! attack session of 6 December (branch `attack/dec06`, on 6f0a5b8) and a
//! review session of that day's fixes; each test's doc says what the flaw
//! was.

use crate::jwt_parity::{flagged_with, jwt_user_at_the_limit};
use crate::support::binary::Binary;
use crate::support::django::Django;
use crate::support::preset::{
    ANSWER_WITHIN as WITHIN, answer_line, assert_held_at_the_limit, preset_with,
};
use crate::support::raw_http;

/// Each of `headers` (what, header lines) on a flagged message (sessions
/// 10, 11, …), one [`answer_line`] per answer.
fn send_headers(proxy: &Binary, headers: &[(&str, String)]) -> Vec<String> {
    let mut seen = Vec::new();
    for (n, (what, header)) in headers.iter().enumerate() {
        let answer = flagged_with(proxy, 10 + n as u64, header.as_bytes());
        seen.push(answer_line(what, &answer));
    }
    seen
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
    const USER: u64 = 720_301;
    let mut at = jwt_user_at_the_limit(USER, false).await;
    let token = &at.token;

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
    let headers =
        spellings.map(|(what, spelled)| (what, format!("Authorization: Bearer {spelled}")));
    let seen = send_headers(&at.proxy, &headers);
    assert_held_at_the_limit(
        &mut at.saved,
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
    const USER: u64 = 720_401;
    let mut at = jwt_user_at_the_limit(USER, true).await;
    let token = &at.token;
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
    let seen = send_headers(&at.proxy, &spellings);
    assert_held_at_the_limit(
        &mut at.saved,
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

/// `user`'s three images of the free plan sent with the header lines
/// `host` (sessions 1 to 3, each answered 200), then a fourth denied 403.
fn fill_the_free_plan(proxy: &Binary, user: u64, host: &str) {
    for session in 1..=3 {
        let answer = flagged_to(proxy, user, &format!("/chat/session/{session}/send/"), host);
        assert_eq!(answer.status, 200, "image {session}: {}", answer.text());
    }
    let denied = flagged_to(proxy, user, "/chat/session/4/send/", host);
    assert_eq!(
        denied.status,
        403,
        "the fourth is denied: {}",
        denied.text()
    );
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
    fill_the_free_plan(&proxy, USER, &format!("Host: {HOST}\r\n"));
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
    fill_the_free_plan(&proxy, USER, "Host: chat.example\r\n");
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

/// Flaw (of the 3xx-is-anonymous rule the Ambiguous change builds on): a
/// redirect to the identity endpoint's own path under a prefix is read as
/// "not logged in". Django's `LocaleMiddleware` answers every caller of an
/// `i18n_patterns` URL written without its language prefix
/// (`/api/quota/identity/` where the app routes `/en/api/quota/identity/`)
/// `302` to the prefixed path, logged in or not, as `APPEND_SLASH` answers
/// a URL without its slash; the proxy catches only the slash, so every user
/// was anonymous and, with `anonymous = "forward"`, every flagged request
/// went on unchecked. Such an answer must be an identity error.
#[tokio::test]
async fn a_redirect_to_the_identity_path_under_a_prefix_is_no_anonymous_answer() {
    use crate::support::identity_server::{IdentityServer, Mode, PATH};
    let server = IdentityServer::start().await;
    server.login("s1", 1, None);
    let config = quota_proxy::config::Config::from_toml(&format!(
        "[plans]\nfree = {{ daily = 3 }}\n[identity]\nkind = \"forward_auth\"\n\
         default_plan = \"free\"\n[identity.forward_auth]\nurl = \"{}{PATH}\"\n\
         negative_cache_ttl = \"0s\"\n",
        server.base()
    ))
    .expect("config");
    let source = quota_proxy::identity::from_config(&config).expect("identity source");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        "sessionid=s1".parse().expect("cookie"),
    );
    // The login redirect stays "not logged in".
    server.set_mode(Mode::LoginRedirect);
    assert_eq!(source.identify(&headers).await.expect("anonymous"), None);
    server.set_mode(Mode::Redirect("/en/api/quota/identity/"));
    let answer = source.identify(&headers).await;
    assert!(
        matches!(
            answer,
            Err(quota_proxy::identity::IdentityError::Unavailable(_))
        ),
        "a 302 to /en{PATH} (LocaleMiddleware, for every caller) was read as {answer:?}"
    );
}
