//! A genuine JWT that the proxy's `[identity.jwt]` cannot read as the app
//! may (phase: identify): a header scheme, a user claim or an audience the
//! config does not name (`src/identity/jwt.rs`). The real binary in front
//! of real Django (gunicorn, `tests/django/`), reading the token as
//! simplejwt's settings say; Django's saved images are counted. Before,
//! each such token was anonymous, and under the preset's `anonymous =
//! "forward"` every request went on unchecked while Django logged the user
//! in and generated: a free user (3 a day) got every image asked for.

use std::time::Duration;

use serde_json::json;

use crate::jwt_parity::{flagged_with, jwt_preset, secret_file, signed_token};
use crate::support::binary::Binary;
use crate::support::django::{Django, SavedImages};
use crate::support::preset::{preset_with, use_up_the_free_plan};
use crate::support::raw_http::{self, RawResponse};

const WITHIN: Duration = Duration::from_secs(20);
/// The first session id of type image_editing in the harness (its
/// `IMAGE_EDITING_FROM`): it generates whatever the flag says.
const IMAGE_EDITING: u64 = 1_000_000_000;

/// Flagged requests sent with each token that the config cannot read.
const TRIES: u64 = 4;

/// `jwt_preset` with `fields` set in `[identity.jwt]`.
fn preset_with_jwt(
    django: &Django,
    secret: &tempfile::NamedTempFile,
    fields: &[(&str, toml::Value)],
) -> String {
    let mut table: toml::Table = jwt_preset(django, secret, None)
        .parse()
        .expect("the preset is TOML");
    let jwt = table
        .get_mut("identity")
        .and_then(|identity| identity.get_mut("jwt"))
        .and_then(toml::Value::as_table_mut)
        .expect("[identity.jwt]");
    for (name, value) in fields {
        jwt.insert((*name).to_owned(), value.clone());
    }
    toml::to_string(&table).expect("TOML")
}

/// Sends `TRIES` flagged requests with the header line `header` and
/// asserts each was refused (500) and that Django saved no image of `user`.
fn assert_refused(proxy: &Binary, django: &Django, user: u64, header: &str, what: &str) {
    let mut saved = django.saved();
    let mut statuses = Vec::new();
    for session in 1..=TRIES {
        let answer = flagged_with(proxy, 100 + session, header.as_bytes());
        statuses.push(answer.status);
    }
    let images = saved.by_user(&user.to_string());
    assert_eq!(
        (images, statuses.clone()),
        (0, vec![500; TRIES as usize]),
        "{what}: Django saved {images} images of a free user (3 a day) for {TRIES} requests \
         (statuses {statuses:?}): the proxy read the genuine token as anonymous and forwarded \
         the requests unchecked"
    );
}

/// The app reads `Authorization: JWT <token>` (simplejwt's
/// `AUTH_HEADER_TYPES = ("JWT",)`); the proxy, configured with the default
/// `Bearer`, is refused such a token instead of taking it for anonymous.
/// With `header_types = ["JWT"]` it counts them: three images, then 403.
#[tokio::test]
async fn a_valid_token_under_a_scheme_the_config_does_not_list_is_refused() {
    const USER: u64 = 920_001;
    let django = Django::start_with(&[
        ("HARNESS_JWT_BEARER", "1"),
        ("HARNESS_JWT_HEADER_TYPE", "JWT"),
    ]);
    let secret = secret_file();
    let header = format!(
        "Authorization: JWT {}",
        signed_token(json!({ "user_id": USER }))
    );
    let proxy = Binary::start(&preset_with_jwt(&django, &secret, &[]), &[]).await;
    assert_refused(&proxy, &django, USER, &header, "scheme JWT, not listed");
    drop(proxy);

    let listed = toml::Value::Array(vec!["JWT".into()]);
    let config = preset_with_jwt(&django, &secret, &[("header_types", listed)]);
    let proxy = Binary::start(&config, &[]).await;
    let mut saved = django.saved();
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_with(&proxy, session, header.as_bytes())
    });
}

/// The app's user is in `uid` (simplejwt's `USER_ID_CLAIM = "uid"`), or
/// its tokens carry an `aud` that the app does not check (simplejwt
/// checks `aud` only when its `AUDIENCE` is set) while the proxy, with no
/// `audience`, refuses tokens that carry one: both genuine, both refused.
/// With `user_id_claim = "uid"` the first counts: three images, then 403.
#[tokio::test]
async fn a_genuine_token_whose_claims_the_config_does_not_fit_is_refused() {
    const USER: u64 = 920_002;
    let django = Django::start_with(&[
        ("HARNESS_JWT_BEARER", "1"),
        ("HARNESS_JWT_USER_CLAIM", "uid"),
    ]);
    let secret = secret_file();
    let proxy = Binary::start(&preset_with_jwt(&django, &secret, &[]), &[]).await;
    let uid = format!(
        "Authorization: Bearer {}",
        signed_token(json!({ "uid": USER }))
    );
    assert_refused(&proxy, &django, USER, &uid, "user in `uid`");
    let audience = format!(
        "Authorization: Bearer {}",
        signed_token(json!({ "uid": USER, "user_id": USER, "aud": "mobile-app" }))
    );
    assert_refused(&proxy, &django, USER, &audience, "an `aud` the app ignores");
    drop(proxy);

    let config = preset_with_jwt(&django, &secret, &[("user_id_claim", "uid".into())]);
    let proxy = Binary::start(&config, &[]).await;
    let mut saved = django.saved();
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_with(&proxy, session, uid.as_bytes())
    });
}

/// The app reads its tokens from `X-Access-Token` (simplejwt's
/// `AUTH_HEADER_NAME = "HTTP_X_ACCESS_TOKEN"`): with `header_name` set to
/// it, the proxy reads them there and counts: three images, then 403.
/// Before, the proxy read `Authorization` only and such a user was
/// anonymous, forwarded unchecked under the preset's `anonymous =
/// "forward"`.
#[tokio::test]
async fn a_token_in_the_header_the_app_names_is_read_there() {
    const USER: u64 = 920_003;
    at_the_limit_with_an_access_token(USER, &[]).await;
}

/// A message to the send view of session `session` with `generate_image`
/// set to `generate`, and the header line `header`.
fn message_with(proxy: &Binary, session: u64, header: &str, generate: bool) -> RawResponse {
    let body = format!(r#"{{"message": "a cat", "generate_image": {generate}}}"#);
    let request = format!(
        "POST /chat/session/{session}/send/ HTTP/1.1\r\nHost: chat.example\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
         {header}\r\n\r\n{body}",
        body.len()
    );
    raw_http::send(proxy.proxy, request.as_bytes(), false, WITHIN)
}

/// A free user at their limit (three images, then 403) through a proxy
/// reading tokens from `X-Access-Token`, as the app does (simplejwt's
/// `AUTH_HEADER_NAME`); `env` is more of the harness's settings.
struct AtTheLimit {
    proxy: Binary,
    saved: SavedImages,
    /// The user's token line.
    header: String,
    _django: Django,
    _secret: tempfile::NamedTempFile,
}

async fn at_the_limit_with_an_access_token(user: u64, env: &[(&str, &str)]) -> AtTheLimit {
    let mut settings = vec![
        ("HARNESS_JWT_BEARER", "1"),
        ("HARNESS_JWT_HEADER_NAME", "HTTP_X_ACCESS_TOKEN"),
    ];
    settings.extend_from_slice(env);
    let django = Django::start_with(&settings);
    let secret = secret_file();
    let header = access_token_header(user);
    let config = preset_with_jwt(
        &django,
        &secret,
        &[("header_name", "X-Access-Token".into())],
    );
    let proxy = Binary::start(&config, &[]).await;
    let mut saved = django.saved();
    use_up_the_free_plan(&mut saved, user, |session| {
        flagged_with(&proxy, session, header.as_bytes())
    });
    AtTheLimit {
        proxy,
        saved,
        header,
        _django: django,
        _secret: secret,
    }
}

/// The header line `X-Access-Token: Bearer <a token of user>`.
fn access_token_header(user: u64) -> String {
    format!(
        "X-Access-Token: Bearer {}",
        signed_token(json!({ "user_id": user }))
    )
}

/// Asserts that `user`, at their limit, gets no image from unflagged
/// messages with `header` to two new image_editing sessions: each is
/// counted as asking for one and refused (403).
fn assert_image_sessions_held(proxy: &Binary, saved: &mut SavedImages, user: u64, header: &str) {
    let statuses: Vec<u16> = (IMAGE_EDITING..IMAGE_EDITING + 2)
        .map(|session| message_with(proxy, session, header, false).status)
        .collect();
    let images = saved.by_user(&user.to_string());
    assert_eq!(
        (images, statuses.clone()),
        (3, vec![403, 403]),
        "Django saved {images} images of a free user (3 a day); unflagged messages to \
         image_editing sessions answered {statuses:?}: the probe went without the token"
    );
}

/// The preset's probe (`image-generation-access`, its default
/// `forward_headers = ["cookie", "authorization"]`) must ask as the user
/// the proxy read from `header_name`. On 77d7260 it went without the
/// token: Django answered the probe as for an anonymous caller, and the
/// answer was cached under the user the proxy had read. Where the app says
/// `{"has_access": false}` to who is not signed in, an image_editing
/// session (which generates whatever the flag says) was unflagged and
/// forwarded unchecked: a free user past 3 a day got a 4th image, and one
/// more in every new session.
#[tokio::test]
async fn the_probe_asks_with_the_token_of_the_header_the_app_names() {
    const USER: u64 = 920_004;
    let mut at =
        at_the_limit_with_an_access_token(USER, &[("HARNESS_ACCESS_ANONYMOUS", "false")]).await;
    assert_image_sessions_held(&at.proxy, &mut at.saved, USER, &at.header);
}

/// The same probe, where the app sends an anonymous caller to the login
/// page (the harness's default): on 77d7260 every probe failed (a 302),
/// so every message on the route was counted as asking for an image, and a
/// user past their limit could not even send text.
#[tokio::test]
async fn a_text_message_past_the_limit_goes_on_with_a_token_of_the_header_the_app_names() {
    const USER: u64 = 920_005;
    let mut at = at_the_limit_with_an_access_token(USER, &[]).await;
    let text = message_with(&at.proxy, 50, &at.header, false);
    assert_eq!(
        (text.status, at.saved.by_user(&USER.to_string())),
        (200, 3),
        "a text message past the limit: {}",
        text.text()
    );
}

/// The same probe under `identity.kind = "forward_auth"` whose
/// `forward_headers` name the header the app reads its tokens from
/// (`X-Access-Token`): the probe must pass it on too. Before, the preset's
/// probe (cookie, authorization) went without it, was answered as for an
/// anonymous caller (`{"has_access": false}`) and cached under the user the
/// identity call had named: image_editing sessions went on unchecked.
#[tokio::test]
async fn the_probe_asks_with_the_credentials_the_identity_call_is_sent() {
    const USER: u64 = 920_006;
    let django = Django::start_with(&[
        ("HARNESS_JWT_BEARER", "1"),
        ("HARNESS_JWT_HEADER_NAME", "HTTP_X_ACCESS_TOKEN"),
        ("HARNESS_ACCESS_ANONYMOUS", "false"),
    ]);
    let header = access_token_header(USER);
    let config = preset_with(&django.url(), |table| {
        let forward_auth = table
            .get_mut("identity")
            .and_then(|identity| identity.get_mut("forward_auth"))
            .and_then(toml::Value::as_table_mut)
            .expect("[identity.forward_auth]");
        let headers = toml::Value::Array(vec!["Cookie".into(), "X-Access-Token".into()]);
        forward_auth.insert("forward_headers".into(), headers);
    });
    let proxy = Binary::start(&config, &[]).await;
    let mut saved = django.saved();
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_with(&proxy, session, header.as_bytes())
    });
    assert_image_sessions_held(&proxy, &mut saved, USER, &header);
}

/// The status path refuses a genuine token the config cannot read (a
/// scheme `header_types` does not list) with 500 and an error log, as
/// docs/shadow-and-status.md says and a flagged request does; on f7d020b
/// it logged a warning only.
#[tokio::test]
async fn the_status_path_logs_an_error_for_a_token_the_config_cannot_read() {
    let django = Django::start_with(&[
        ("HARNESS_JWT_BEARER", "1"),
        ("HARNESS_JWT_HEADER_TYPE", "JWT"),
    ]);
    let secret = secret_file();
    let proxy = Binary::start(&preset_with_jwt(&django, &secret, &[]), &[]).await;
    let request = format!(
        "GET /quota-status/ HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n\
         Authorization: JWT {}\r\n\r\n",
        signed_token(json!({ "user_id": 920_007 }))
    );
    let answer = raw_http::send(proxy.proxy, request.as_bytes(), false, WITHIN);
    assert_eq!(answer.status, 500, "{}", answer.text());
    let status_line = |l: &serde_json::Value| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("quota status"))
    };
    proxy.wait_for_logs(1, WITHIN, status_line).await;
    let levels: Vec<_> = (proxy.json_logs().iter())
        .filter(|l| status_line(l))
        .map(|l| l["level"].clone())
        .collect();
    assert_eq!(
        levels,
        [json!("ERROR")],
        "{}",
        proxy.log_lines(&["quota status"], 5)
    );
}

/// simplejwt matches the scheme exactly (`parts[0] not in
/// AUTH_HEADER_TYPE_BYTES`): `bearer <token>` is no credential to the app.
/// On f7d020b the proxy matched it without case and read the user, while
/// the probe, sent the same header, was answered as for an anonymous caller
/// (`{"has_access": false}` where the app says so) and cached under that
/// user: the next message to the session, with `Bearer`, went on unchecked
/// and Django generated past the limit, once per new image_editing session.
#[tokio::test]
async fn a_scheme_in_another_case_does_not_poison_the_probe() {
    const USER: u64 = 920_008;
    let django = Django::start_with(&[
        ("HARNESS_JWT_BEARER", "1"),
        ("HARNESS_ACCESS_ANONYMOUS", "false"),
    ]);
    let secret = secret_file();
    let token = signed_token(json!({ "user_id": USER }));
    let header = format!("Authorization: Bearer {token}");
    let lower = format!("Authorization: bearer {token}");
    let proxy = Binary::start(&preset_with_jwt(&django, &secret, &[]), &[]).await;
    let mut saved = django.saved();
    use_up_the_free_plan(&mut saved, USER, |session| {
        flagged_with(&proxy, session, header.as_bytes())
    });
    let mut statuses = Vec::new();
    for session in IMAGE_EDITING + 10..IMAGE_EDITING + 12 {
        let first = message_with(&proxy, session, &lower, false).status;
        let then = message_with(&proxy, session, &header, false).status;
        statuses.push((first, then));
    }
    let images = saved.by_user(&USER.to_string());
    assert_eq!(
        (images, statuses.iter().map(|s| s.1).collect::<Vec<_>>()),
        (3, vec![403, 403]),
        "Django saved {images} images of a free user (3 a day); (bearer, Bearer) answered \
         {statuses:?}: the probe's answer for `bearer` was kept for the user"
    );
}
