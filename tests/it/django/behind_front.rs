//! The identity call and the probe behind a front (a TLS-terminating load
//! balancer or nginx, an HTTP/2 hop, API clients with tokens): Django must
//! judge them as it judges the request they stand for, or a logged-in user
//! reads as anonymous. Found by an attack session; each a test on the real
//! binary with the shipped preset in front of real gunicorn + Django,
//! changed only where a test says so. Images are counted where Django
//! saved them. Each test's doc tells what the proxy did before its fix
//! (forwarding `Host`, `Forwarded` and `X-Forwarded-*` with the identity
//! call and the probe, `Host` from `:authority`, several credentials
//! refused treated as an identity error).

use std::net::SocketAddr;
use std::time::Duration;

use super::corpus::{View, json_flag};
use super::{ANSWER_WITHIN, preset_config};
use crate::support::binary::Binary;
use crate::support::django::Django;
use crate::support::raw_http;

/// A JSON `body` to the send view of `session` over HTTP/1.1, with the
/// header lines `head` (raw, each ending in CRLF) before `Connection:
/// close` and the body's own: its status.
fn post_send(proxy: &Binary, session: u64, head: &str, body: &str) -> u16 {
    let request = format!(
        "POST /chat/session/{session}/send/ HTTP/1.1\r\n{head}Connection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw_http::send(proxy.proxy, request.as_bytes(), false, ANSWER_WITHIN).status
}

/// The preset in front of `django`'s send view with `edit` applied to its
/// TOML table.
fn edited_preset(django: &Django, edit: impl FnOnce(&mut toml::Table)) -> String {
    let mut table: toml::Table =
        toml::from_str(&preset_config(&django.url(), View::Send)).expect("the preset is TOML");
    edit(&mut table);
    toml::to_string(&table).expect("config renders")
}

/// One HTTP/2 request (h2c, prior knowledge) whose `:authority` is
/// `authority` and which has no `host` field, as browsers and HTTP/2
/// clients send them; its status, or 0 and why not.
async fn h2_post(
    proxy: SocketAddr,
    authority: &str,
    path: &str,
    cookie: &str,
    body: String,
) -> (u16, String) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(connection);
        let request = http::Request::post(format!("http://{authority}{path}"))
            .header("cookie", cookie)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("h2 request: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("h2 body: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(ANSWER_WITHIN, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => (0, e),
        Err(_) => (0, "no answer in time".to_owned()),
    }
}

/// The fix for `the_identity_call_passes_allowed_hosts` sends the
/// client's `Host` field with the identity call and the probe
/// (`src/identity/forward_auth.rs`, `credentials`: `headers.get(HOST)`;
/// `src/quota/probe.rs`, the same). An HTTP/2 request has no `Host`
/// field: its host is the `:authority` pseudo-header, which the proxy
/// turns into `Host` for the forwarded request only
/// (`src/proxy/service.rs`). So the identity call goes out with hyper's
/// default, the upstream's address, and behind a production
/// `ALLOWED_HOSTS` Django answers it 400 (`DisallowedHost`): every
/// identity is unavailable and, with the preset's `on_identity_error =
/// "deny"`, an honest HTTP/2 user can neither generate an image nor (the
/// route is probed, so an identity failure counts as flagged) send a
/// plain text message, while the same requests over HTTP/1.1 are served.
pub(super) async fn h2_identity_call_lacks_the_host() {
    const USER: &str = "740101";
    const HOST: &str = "chat.example";
    let django = Django::start_with(&[("HARNESS_ALLOWED_HOSTS", &format!("{HOST},t"))]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let cookie = format!("sessionid=u{USER}");
    let mut statuses = Vec::new();
    let mut first_refusal = None;
    // A text message first, then five image requests.
    let mut bodies = vec![(74_000u64, json_flag(Some("false")))];
    bodies.extend((1..=5).map(|n| (74_000 + n, json_flag(Some("true")))));
    for (session, body) in bodies {
        let path = format!("/chat/session/{session}/send/");
        let (status, text) = h2_post(proxy.proxy, HOST, &path, &cookie, body).await;
        if status != 200 && status != 403 && first_refusal.is_none() {
            first_refusal = Some(text);
        }
        statuses.push(status);
    }
    std::thread::sleep(Duration::from_millis(500));
    let images = saved.by_user(USER);
    assert!(
        images == 3 && statuses == [200, 200, 200, 200, 403, 403],
        "over HTTP/2 (:authority {HOST:?}, ALLOWED_HOSTS = [{HOST:?}]) a free user's text \
         message and five image requests got statuses {statuses:?} and {images} saved \
         image(s); want [200, 200, 200, 200, 403, 403] and 3, as over HTTP/1.1: the identity \
         call must carry the request's host, which HTTP/2 sends as :authority, not Host \
         (first refusal: {first_refusal:?})\nproxy logs:\n{}",
        proxy.log_lines(&["identity"], 3)
    );
}

/// Behind a TLS-terminating front (the usual deployment: a load balancer
/// or nginx holds the certificate and sends `X-Forwarded-Proto: https`),
/// Django's deployment checklist asks for `SECURE_SSL_REDIRECT = True`
/// with `SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")`.
/// The requests the proxy forwards keep the front's `X-Forwarded-Proto`
/// and are served; the identity call carries only `Accept`, the
/// credential headers and `Host` (`src/identity/forward_auth.rs`,
/// `credentials` and `request`), so to Django it is plain HTTP and
/// `SecurityMiddleware` answers it `301` to `https://…`. A 3xx from the
/// identity endpoint means anonymous (`call`: `status.is_redirection()`
/// → `Ok(None)`, cached), and the preset's `anonymous = "forward"` sends
/// every flagged request on unchecked and uncounted: a logged-in free user
/// generates as many images as they like.
pub(super) async fn ssl_redirect_makes_everyone_anonymous() {
    const USER: &str = "740301";
    let django = Django::start_with(&[("HARNESS_SSL_REDIRECT", "1")]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let body = json_flag(Some("true"));
    let mut statuses = Vec::new();
    for n in 0..6u64 {
        // As the TLS front sends it on.
        let head = format!(
            "Host: chat.example\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-For: 203.0.113.9\r\nCookie: sessionid=u{USER}\r\n"
        );
        statuses.push(post_send(&proxy, 74_300 + n, &head, &body));
    }
    std::thread::sleep(Duration::from_millis(500));
    let images = saved.by_user(USER);
    assert!(
        images <= 3,
        "a free user (3 a day) behind a TLS front got {images} images saved by Django \
         (statuses {statuses:?}): Django redirects the identity call, which lacks the \
         front's X-Forwarded-Proto, to https, the proxy takes the 301 for an anonymous \
         caller and forwards the flagged requests unchecked\nproxy logs:\n{}",
        proxy.log_lines(&["anonymous", "identity"], 3)
    );
}

/// The probe has the same blind spot as the identity call: it is sent
/// through the proxy's own forwarding service with only `Host` and the
/// credential headers of the client's request (`src/quota/probe.rs`,
/// `ask`), so it reaches Django with the proxy's default
/// `X-Forwarded-Proto: http` (`src/proxy/headers.rs`,
/// `set_forwarded_defaults`), not the front's `https`. Behind
/// `SECURE_SSL_REDIRECT` Django answers it `301`, a failed probe counts
/// the request as flagged (fail closed), and every plain text message is
/// judged as an image request: a user who has used the day's images can
/// no longer chat at all (403). Identity here comes from the trusted
/// front's `X-User-Id` (`identity.kind = "header"`), so that only the
/// probe is in play.
pub(super) async fn ssl_redirect_fails_every_probe() {
    const USER: &str = "740401";
    let django = Django::start_with(&[("HARNESS_SSL_REDIRECT", "1")]);
    let mut saved = django.saved();
    let config = edited_preset(&django, |table| {
        let identity = table
            .get_mut("identity")
            .and_then(toml::Value::as_table_mut)
            .expect("the preset has [identity]");
        identity.insert("kind".into(), "header".into());
        identity.remove("forward_auth");
    });
    let proxy = Binary::start(&config, &[]).await;
    let head = format!(
        "Host: chat.example\r\nX-Forwarded-Proto: https\r\nX-User-Id: {USER}\r\n\
         Cookie: sessionid=u{USER}\r\n"
    );
    let send = |session: u64, flag: &str| post_send(&proxy, session, &head, &json_flag(Some(flag)));
    // The day's three images, then a plain message in an ordinary session.
    let mut statuses: Vec<u16> = (0..3).map(|n| send(74_400 + n, "true")).collect();
    std::thread::sleep(Duration::from_millis(300));
    statuses.push(send(74_410, "false"));
    let images = saved.by_user(USER);
    assert!(
        images == 3 && statuses == [200, 200, 200, 200],
        "behind a TLS front, a free user's three images and then a plain text message in \
         an ordinary session got {statuses:?} ({images} image(s) saved); want [200, 200, \
         200, 200]: the probe reaches Django as plain HTTP, is redirected to https, and the \
         failed probe counts the text message as an image request\nproxy logs:\n{}",
        proxy.log_lines(&["probe"], 2)
    );
}

/// The same blind spot for the host: behind a front that names the public
/// host in `X-Forwarded-Host` (nginx's `proxy_pass` sends `Host:
/// <upstream address>` unless told otherwise), Django with
/// `USE_X_FORWARDED_HOST = True` checks `ALLOWED_HOSTS` against
/// `X-Forwarded-Host`. The forwarded requests keep it and are served; the
/// identity call carries `Host` alone (`src/identity/forward_auth.rs`,
/// `credentials`), Django answers it 400 (`DisallowedHost`), and every
/// flagged request of every user is refused 503.
pub(super) async fn identity_call_drops_x_forwarded_host() {
    const USER: &str = "740501";
    const HOST: &str = "chat.example";
    let django = Django::start_with(&[
        ("HARNESS_ALLOWED_HOSTS", &format!("{HOST},t")),
        ("HARNESS_X_FORWARDED_HOST", "1"),
    ]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let body = json_flag(Some("true"));
    let mut statuses = Vec::new();
    for n in 0..5u64 {
        // As nginx's plain `proxy_pass http://127.0.0.1:8080` sends it on.
        let head = format!(
            "Host: 127.0.0.1:8080\r\nX-Forwarded-Host: {HOST}\r\n\
             X-Forwarded-Proto: https\r\nCookie: sessionid=u{USER}\r\n"
        );
        statuses.push(post_send(&proxy, 74_500 + n, &head, &body));
    }
    std::thread::sleep(Duration::from_millis(500));
    let images = saved.by_user(USER);
    assert!(
        images == 3 && statuses == [200, 200, 200, 403, 403],
        "a free user (3 a day) behind a front that sends X-Forwarded-Host: {HOST} \
         (USE_X_FORWARDED_HOST, ALLOWED_HOSTS = [{HOST:?}]) got statuses {statuses:?} and \
         {images} image(s); want [200, 200, 200, 403, 403] and 3: the identity call drops \
         X-Forwarded-Host and Django refuses its Host\nproxy logs:\n{}",
        proxy.log_lines(&["identity"], 2)
    );
}

/// `docs/identity.md`: "for clients that send `Authorization` (DRF
/// tokens, simplejwt), decorate [the identity view] with DRF's
/// `@api_view`", and forward `["Cookie", "Authorization"]`. DRF tries its
/// authentication classes in order, and simplejwt's, listed first as its
/// docs show, answers an invalid `Bearer` token 401 without trying the
/// session. A 401 means anonymous (`src/identity/forward_auth.rs`, `call`),
/// and the preset forwards anonymous requests unchecked; the chat's send
/// view is a plain Django view that reads the session cookie and ignores
/// `Authorization`. So a logged-in user who adds `Authorization: Bearer x`
/// to the browser's request generates as many images as they like.
pub(super) async fn a_bad_token_beside_the_session_is_anonymous() {
    const USER: &str = "740601";
    let django = Django::start_with(&[("HARNESS_IDENTITY_DRF", "1")]);
    let mut saved = django.saved();
    let config = edited_preset(&django, |table| {
        let forward_auth = table
            .get_mut("identity")
            .and_then(toml::Value::as_table_mut)
            .and_then(|t| t.get_mut("forward_auth"))
            .and_then(toml::Value::as_table_mut)
            .expect("the preset has [identity.forward_auth]");
        forward_auth.insert(
            "forward_headers".into(),
            toml::Value::Array(vec!["Cookie".into(), "Authorization".into()]),
        );
    });
    let proxy = Binary::start(&config, &[]).await;
    let body = json_flag(Some("true"));
    let mut statuses = Vec::new();
    let head = format!("Host: t\r\nCookie: sessionid=u{USER}\r\nAuthorization: Bearer x\r\n");
    for n in 0..6u64 {
        statuses.push(post_send(&proxy, 74_600 + n, &head, &body));
    }
    std::thread::sleep(Duration::from_millis(500));
    let images = saved.by_user(USER);
    assert!(
        images <= 3,
        "a free user (3 a day) who sent `Authorization: Bearer x` beside the session cookie \
         got {images} images saved by Django (statuses {statuses:?}): the DRF identity view \
         answers the bad token 401, the proxy takes it for an anonymous caller and forwards \
         unchecked, and the send view authenticates by the cookie\nproxy logs:\n{}",
        proxy.log_lines(&["anonymous"], 2)
    );
}

/// The identity cache is keyed by the credential headers alone
/// (`CredentialKey::of(headers, &forward_headers)`,
/// src/identity/forward_auth.rs `identify`), but the call also carries the
/// request's site headers (`Host`, `Forwarded`, `X-Forwarded-*`:
/// `Inner::credentials`), and Django's answer depends on them: behind
/// `SECURE_SSL_REDIRECT` a call that says `X-Forwarded-Proto: http` is
/// answered `301`, which the proxy reads as "not logged in" and caches for
/// `negative_cache_ttl` (5 s) under the session cookie. The front forwards
/// plain-HTTP requests with `X-Forwarded-Proto: http` (that is what
/// `SECURE_SSL_REDIRECT` is for), so a client sends one flagged request
/// over `http://` (Django redirects it: nothing generated), then the real
/// one over `https://` with the same cookie: the proxy finds "anonymous"
/// in its cache, the preset forwards anonymous requests (`anonymous =
/// "forward"`) unchecked, and Django, seeing https and the session,
/// generates. Every image uncounted; repeat every 5 seconds.
pub(super) async fn plain_http_poisons_the_identity_cache() {
    const USER: &str = "750101";
    let django = Django::start_with(&[("HARNESS_SSL_REDIRECT", "1")]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    let body = json_flag(Some("true"));
    let send = |session: u64, proto: &str| {
        // As the front sends it on: the scheme the client connected with.
        let head = format!(
            "Host: chat.example\r\nX-Forwarded-Proto: {proto}\r\n\
             X-Forwarded-For: 203.0.113.9\r\nCookie: sessionid=u{USER}\r\n"
        );
        post_send(&proxy, session, &head, &body)
    };
    let mut statuses = Vec::new();
    for n in 0..6u64 {
        // Over http:// first: redirected by Django, nothing generated.
        statuses.push((send(75_100 + n, "http"), send(75_200 + n, "https")));
    }
    std::thread::sleep(Duration::from_millis(500));
    let images = saved.by_user(USER);
    assert!(
        images <= 3,
        "a free user (3 a day) got {images} images saved by Django (statuses, \
         http then https: {statuses:?}): the identity answer to the http:// request \
         (a 301, read as anonymous) is cached under the session cookie alone and \
         reused for the https:// one, which the preset forwards unchecked\nproxy logs:\n{}",
        proxy.log_lines(&["anonymous"], 3)
    );
}
