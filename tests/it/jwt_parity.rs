//! A JWT read as Django reads it (phase: identify): the token in a cookie
//! as `parse_cookie` finds it, a bearer token split as simplejwt splits
//! it (`src/identity/cookie.rs`, `jwt.rs`). Findings of an attack session,
//! each a test on the real binary in front of real Django (gunicorn,
//! `tests/django/`), counting the images Django saved; each test's doc says
//! what the proxy did on the commit it was found on (f07fb78 or 70f7750).

use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::django::{Django, SavedImages};
use crate::support::preset::{preset_with, use_up_the_free_plan};
use crate::support::raw_http;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const WITHIN: Duration = Duration::from_secs(20);

/// The harness's `SECRET_KEY` (`tests/django/harness/settings.py`), which
/// simplejwt signs its HS256 tokens with.
const DJANGO_SECRET: &str = "harness-only-not-secret";

/// A flagged message (`"generate_image": true`) to the send view of
/// session `session`, with `Cookie: <cookie>` (raw bytes: a test may put
/// any byte in it).
fn flagged(proxy: &Binary, session: u64, cookie: &[u8]) -> raw_http::RawResponse {
    flagged_with(proxy, session, &[b"Cookie: ".as_slice(), cookie].concat())
}

/// A flagged message to the send view of session `session`, with the
/// header line `header` (raw bytes, no CRLF).
pub(crate) fn flagged_with(proxy: &Binary, session: u64, header: &[u8]) -> raw_http::RawResponse {
    let body = br#"{"message": "a cat", "generate_image": true}"#;
    let mut request = format!(
        "POST /chat/session/{session}/send/ HTTP/1.1\r\nHost: chat.example\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(header);
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body);
    raw_http::send(proxy.proxy, &request, false, WITHIN)
}

/// A simplejwt access token of `user`, signed with Django's `SECRET_KEY`.
pub(crate) fn access_token(user: u64) -> String {
    signed_token(json!({ "user_id": user }))
}

/// A token with simplejwt's standard claims (`token_type`, `exp` in five
/// minutes, `iat`, `jti`) and `claims`, signed with Django's `SECRET_KEY`.
pub(crate) fn signed_token(claims: serde_json::Value) -> String {
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).expect("timestamp");
    let mut all = json!({
        "token_type": "access",
        "exp": now + 300,
        "iat": now,
        "jti": format!("jti{now}"),
    });
    if let (Some(all), serde_json::Value::Object(claims)) = (all.as_object_mut(), claims) {
        all.extend(claims);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &all,
        &EncodingKey::from_secret(DJANGO_SECRET.as_bytes()),
    )
    .expect("sign")
}

/// The harness's `SECRET_KEY` in a file, for `identity.jwt.secret_file`.
pub(crate) fn secret_file() -> tempfile::NamedTempFile {
    let secret = tempfile::NamedTempFile::new().expect("secret file");
    std::fs::write(secret.path(), DJANGO_SECRET).expect("write the secret");
    secret
}

/// The preset in front of `django` with `identity.kind = "jwt"` (HS256 with
/// Django's `SECRET_KEY`, as simplejwt signs), the token read from
/// `Authorization: Bearer` and, when given, from cookie `cookie`; the rest
/// of the preset as shipped (`anonymous = "forward"`).
pub(crate) fn jwt_preset(
    django: &Django,
    secret: &tempfile::NamedTempFile,
    cookie: Option<&str>,
) -> String {
    preset_with(&django.url(), |table| {
        let identity = table
            .get_mut("identity")
            .and_then(toml::Value::as_table_mut)
            .expect("[identity]");
        identity.insert("kind".into(), "jwt".into());
        identity.remove("forward_auth");
        let mut jwt = toml::Table::new();
        jwt.insert(
            "secret_file".into(),
            secret.path().display().to_string().into(),
        );
        if let Some(cookie) = cookie {
            jwt.insert("cookie".into(), cookie.into());
        }
        identity.insert("jwt".into(), toml::Value::Table(jwt));
    })
}

/// A free user at the limit (three images saved, a fourth denied) behind
/// [`jwt_preset`], as [`jwt_user_at_the_limit`] makes one.
pub(crate) struct JwtUserAtTheLimit {
    pub(crate) proxy: Binary,
    pub(crate) saved: SavedImages,
    /// The user's valid access token.
    pub(crate) token: String,
    _secret: tempfile::NamedTempFile,
    _django: Django,
}

/// Django and the proxy reading the JWT from cookie `access_token`
/// (`cookie`) or else from `Authorization: Bearer`, and `user`'s free plan
/// used up with a valid token sent that way.
pub(crate) async fn jwt_user_at_the_limit(user: u64, cookie: bool) -> JwtUserAtTheLimit {
    let django = if cookie {
        Django::start_with(&[("HARNESS_JWT_COOKIE", "access_token")])
    } else {
        Django::start_with(&[("HARNESS_JWT_BEARER", "1")])
    };
    let mut saved = django.saved();
    let secret = secret_file();
    let config = jwt_preset(&django, &secret, cookie.then_some("access_token"));
    let proxy = Binary::start(&config, &[]).await;
    let token = access_token(user);
    let plain = if cookie {
        format!("Cookie: access_token={token}")
    } else {
        format!("Authorization: Bearer {token}")
    };
    use_up_the_free_plan(&mut saved, user, |session| {
        flagged_with(&proxy, session, plain.as_bytes())
    });
    JwtUserAtTheLimit {
        proxy,
        saved,
        token,
        _secret: secret,
        _django: django,
    }
}

/// Each of `spellings` (what, cookie) as the cookie of a flagged message
/// (sessions 10, 11, …), one line per answer with the images `user` has
/// saved so far.
fn send_cookies(
    proxy: &Binary,
    saved: &mut SavedImages,
    user: u64,
    spellings: &[(&str, Vec<u8>)],
) -> Vec<String> {
    let mut got = Vec::new();
    for (n, (what, cookie)) in spellings.iter().enumerate() {
        let answer = flagged(proxy, 10 + n as u64, cookie);
        got.push(format!(
            "{what}: {} ({} images saved so far)",
            answer.status,
            saved.by_user(&user.to_string())
        ));
    }
    got
}

/// `identity.kind = "jwt"` with `cookie = "access_token"` reads the token
/// from the `Cookie` header with its own parser (`jwt.rs` `cookie_value`),
/// which is not Django's `parse_cookie`, the one an app's cookie-JWT
/// authentication reads (`request.COOKIES[...]`):
///
/// - a repeated cookie: the proxy takes the FIRST value, Django the LAST;
/// - a Cookie header with any byte above 0x7E (another cookie's value,
///   e.g. a UTF-8 `lang=فا` set by a front end): `HeaderValue::to_str`
///   fails and the proxy skips the whole header, while Django decodes it
///   and reads the token;
/// - a quoted value with an escape (`"\145yJ…"`): Django unquotes it
///   (`http.cookies._unquote`), the proxy only trims the quotes.
///
/// In each case the proxy sees no valid token, so the request is anonymous
/// and, under the preset's `anonymous = "forward"`, forwarded unchecked,
/// while Django authenticates the user from the token and generates. On
/// f07fb78 a free user at the limit (3 images saved, a 4th denied) got
/// three more images saved (one per spelling), none counted.
#[tokio::test]
async fn a_jwt_cookie_is_read_as_django_reads_it() {
    const USER: u64 = 910_001;
    // The free plan's three images, then a denial: the user is at the limit.
    let mut at = jwt_user_at_the_limit(USER, true).await;
    let (proxy, saved, token) = (&at.proxy, &mut at.saved, &at.token);
    let plain = format!("access_token={token}");
    assert_eq!(saved.by_user(&USER.to_string()), 3);

    // The same token, in cookies the proxy reads otherwise than Django.
    let escaped = format!("access_token=\"\\145{}\"", &token[1..]);
    let spellings: [(&str, Vec<u8>); 3] = [
        (
            "repeated cookie (Django keeps the last)",
            format!("access_token=x; access_token={token}").into_bytes(),
        ),
        (
            "a non-ASCII byte in another cookie",
            [b"lang=\xd9\x81\xd8\xa7; ".as_slice(), plain.as_bytes()].concat(),
        ),
        ("an escaped quoted value", escaped.into_bytes()),
    ];
    let got = send_cookies(proxy, saved, USER, &spellings);
    let total = saved.by_user(&USER.to_string());
    assert_eq!(
        total,
        3,
        "a free user at the limit (3 a day) got {} more images saved by Django: the proxy \
         read the JWT cookie otherwise than Django's parse_cookie, saw no valid token, and \
         forwarded the request as anonymous and unchecked:\n{}",
        total - 3,
        got.join("\n")
    );
}

/// `identity.kind = "jwt"` reads `Authorization: Bearer <token>` by
/// splitting the value at its first SPACE (`jwt.rs` `bearer_token`:
/// `split_once(' ')`), while djangorestframework-simplejwt's
/// `JWTAuthentication.get_raw_token` splits the header on any whitespace
/// (`header.split()`): `Authorization: Bearer<TAB><token>` is no bearer
/// token to the proxy (anonymous, and under the preset's
/// `anonymous = "forward"` forwarded unchecked) and a valid one to Django.
/// On f07fb78 a free user at the limit (3 images saved, a 4th denied) got a
/// 4th image saved, not counted.
#[tokio::test]
async fn a_bearer_token_is_split_as_simplejwt_splits_it() {
    const USER: u64 = 910_002;
    let mut at = jwt_user_at_the_limit(USER, false).await;
    let (proxy, saved, token) = (&at.proxy, &mut at.saved, &at.token);

    let tab = format!("Authorization: Bearer\t{token}");
    let answer = flagged_with(proxy, 5, tab.as_bytes());
    let total = saved.by_user(&USER.to_string());
    assert_eq!(
        total, 3,
        "a free user at the limit (3 a day) got an image saved by Django (status {}) with \
         `Authorization: Bearer<TAB><token>`: simplejwt splits the header on any whitespace, \
         the proxy only at a space, saw no bearer token and forwarded the request as \
         anonymous and unchecked",
        answer.status
    );
}

/// Django reads `request.COOKIES` from the `Cookie` header decoded as
/// UTF-8 (`get_str_from_wsgi`: the WSGI server's Latin-1 string re-encoded
/// to bytes, then `.decode(errors="replace")`), and `parse_cookie` strips
/// keys and values with `str.strip()`, which strips every Unicode space.
/// The proxy (`src/identity/cookie.rs` `django_cookie`) decodes the line as
/// Latin-1 and strips only what is whitespace in Latin-1: a UTF-8 encoded
/// space beyond ASCII (U+3000 `\xe3\x80\x80`, U+00A0 `\xc2\xa0`, U+2003
/// `\xe2\x80\x83`) next to the name or the token is stripped by Django and
/// kept by the proxy. The proxy then sees no valid token (anonymous, and
/// under the preset's `anonymous = "forward"` forwarded unchecked), while
/// Django logs the user in from the token and generates. Fails on 70f7750:
/// a free user at the limit gets one uncounted image per spelling.
#[tokio::test]
async fn a_jwt_cookie_next_to_a_unicode_space_is_read_by_django_not_by_the_proxy() {
    const USER: u64 = 920_001;
    let mut at = jwt_user_at_the_limit(USER, true).await;
    let (proxy, saved, token) = (&at.proxy, &mut at.saved, &at.token);
    let plain = format!("access_token={token}");

    let spellings: [(&str, Vec<u8>); 3] = [
        (
            "U+3000 after the token",
            [plain.as_bytes(), b"\xe3\x80\x80".as_slice()].concat(),
        ),
        (
            "U+00A0 before the name",
            [b"\xc2\xa0".as_slice(), plain.as_bytes()].concat(),
        ),
        (
            "U+2003 after the name",
            format!("access_token\u{2003}={token}").into_bytes(),
        ),
    ];
    let got = send_cookies(proxy, saved, USER, &spellings);
    let total = saved.by_user(&USER.to_string());
    assert_eq!(
        total,
        3,
        "a free user at the limit (3 a day) got {} more images saved by Django: Django strips \
         Unicode spaces of the UTF-8 decoded cookie, the proxy decodes it as Latin-1, saw no \
         valid token, and forwarded the request as anonymous and unchecked:\n{}",
        total - 3,
        got.join("\n")
    );
}

/// `identity.kind = "jwt"` with `cookie = "access_token"` reads the cookie
/// only when there is no bearer token (`src/identity/jwt.rs` `identify`:
/// `match bearer_token(headers)`), and an invalid bearer token is
/// anonymous. An app that authenticates from the cookie (the cookie-JWT
/// classes written for simplejwt, the harness's `HARNESS_JWT_COOKIE`)
/// never reads `Authorization`: a user at the limit adds
/// `Authorization: Bearer x` (any garbage) to a request carrying their
/// valid cookie, the proxy verifies the garbage, finds it invalid, treats
/// the request as anonymous and, under the preset's `anonymous =
/// "forward"`, forwards it unchecked; Django logs the user in from the
/// cookie and generates. Fails on 70f7750: a free user at the limit (3
/// images, a 4th denied) gets a 4th image saved, not counted.
#[tokio::test]
async fn a_garbage_bearer_token_hides_a_valid_jwt_cookie() {
    const USER: u64 = 920_002;
    let mut at = jwt_user_at_the_limit(USER, true).await;
    let (proxy, saved, token) = (&at.proxy, &mut at.saved, &at.token);
    let plain = format!("access_token={token}");

    let both = format!("Authorization: Bearer x\r\nCookie: {plain}");
    let answer = flagged_with(proxy, 5, both.as_bytes());
    let total = saved.by_user(&USER.to_string());
    assert_eq!(
        total, 3,
        "a free user at the limit (3 a day) got an image saved by Django (status {}) by adding \
         `Authorization: Bearer x` to their valid JWT cookie: the proxy read only the invalid \
         bearer token, took the request for anonymous and forwarded it unchecked",
        answer.status
    );
}
