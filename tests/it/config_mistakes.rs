//! An operator's mistakes that used to count nothing (phase: startup and
//! reload): a route in `re_path` syntax, a reload to another store kind or
//! from a file cut before its routes, an identity URL without its slash, a
//! header name with `_`. Found by an attack session; each test failed on
//! f07fb78 (its doc says how) and now sees the mistake refused or caught.
//! Images are counted where the real Django harness saved them; usage,
//! where the test reads the store.

use std::time::Duration;

use http::{Method, StatusCode};

use crate::support::binary::{Binary, run_cli};
use crate::support::django::Django;
use crate::support::preset::preset_with;
use crate::support::proxy::TestClient;
use crate::support::raw_http;
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};

/// The longest wait for one answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// `quota-proxy check-config` run on `config`.
fn check_config(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).expect("write config");
    run_cli(Some(&path), &["check-config"])
}

/// The preset's first route, to edit.
fn route(table: &mut toml::Table) -> &mut toml::Table {
    table
        .get_mut("routes")
        .and_then(toml::Value::as_array_mut)
        .and_then(|routes| routes.first_mut())
        .and_then(toml::Value::as_table_mut)
        .expect("the preset has a [[routes]] table")
}

/// One flagged chat message (JSON, `"generate_image": true`) of free user
/// `user` (the harness's `sessionid=u<user>`) on session `session`; the
/// status.
fn send_flagged(proxy: std::net::SocketAddr, user: &str, session: u64) -> u16 {
    let body = r#"{"message": "a cat", "generate_image": true}"#;
    let request = format!(
        "POST /chat/session/{session}/send/ HTTP/1.1\r\nHost: app\r\n\
         Cookie: sessionid=u{user}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw_http::send(proxy, request.as_bytes(), false, ANSWER_WITHIN).status
}

/// A route written in the `re_path` syntax of `urls.py`
/// (`^chat/session/(?P<session_id>\d+)/send/$`, what an app that has not
/// moved to `path()` shows, or what an operator copies from one) passes
/// `check-config` and `serve`: `(?P<session_id>` is read as a `str`
/// parameter, and `^`, `(?P`, `\d+)` and `$` as literal text, so the route
/// matches no path the app serves. Every flagged request then streams
/// through as a pass-through: nothing is checked, nothing counted, and a
/// free user (3 a day) gets as many images as they ask for. Django itself
/// warns about exactly this pattern in `path()` (system check `2_0.W001`:
/// "has a route that contains '(?P<', begins with a '^', or ends with a
/// '$'"); the proxy says nothing. The same holds for other syntaxes that
/// are not Django's and are accepted as literals: a glob
/// (`chat/session/*/send/`), an Express parameter (`chat/session/:id/send/`),
/// a full URL (`https://host/chat/…`).
///
/// Fails on f07fb78: check-config exits 0 and Django saves 5 images for a
/// free user whose limit is 3. Passes once such a pattern is refused (exit
/// 2) or, if it is accepted, matches what Django routes.
#[tokio::test]
async fn a_route_in_re_path_syntax_is_accepted_and_counts_nothing() {
    const USER: &str = "730001";
    let django = Django::start();
    let mut saved = django.saved();
    let config = preset_with(&django.url(), |table| {
        let route = route(table);
        route.insert(
            "path".into(),
            r"^chat/session/(?P<session_id>\d+)/send/$".into(),
        );
        // The probe names the route's parameter: the same name here.
        let probe = route
            .get_mut("probe")
            .and_then(toml::Value::as_table_mut)
            .expect("the preset's route has a probe");
        probe.insert(
            "path".into(),
            "/chat/session/<int:session_id>/image-generation-access/".into(),
        );
    });
    if !check_config(&config).status.success() {
        // Refused, as Django warns: fixed.
        return;
    }
    let proxy = Binary::start(&config, &[]).await;
    let statuses: Vec<u16> = (0..5)
        .map(|n| send_flagged(proxy.proxy, USER, 73_000 + n))
        .collect();
    let images = saved.by_user(USER);
    assert!(
        images <= 3,
        "`check-config` accepted the route path {:?} (exit 0) and the proxy served it, but the \
         route matches nothing Django routes: a free user (3 images a day) sent 5 flagged \
         messages through the proxy and Django saved {images} images (statuses {statuses:?})",
        r"^chat/session/(?P<session_id>\d+)/send/$"
    );
}

/// A config on the generic `/gen/` route with one image a day, counted in
/// `store` (a `[store]` body).
fn gen_config(upstream: &TestUpstream, store: &str) -> String {
    format!(
        "upstream = \"http://{}\"\n[identity]\ndefault_plan = \"free\"\n\
         [plans]\nfree = {{ daily = 1, weekly = 0, monthly = 0 }}\n\
         [[routes]]\nmethod = \"POST\"\npath = \"/gen/\"\n[store]\n{store}\n",
        upstream.authority()
    )
}

/// One flagged request of `user` on `/gen/`; the status.
async fn generate(client: &TestClient, user: &str) -> StatusCode {
    client
        .send(
            Method::POST,
            "/gen/",
            &[
                ("x-user-id", user),
                ("content-type", "application/json"),
                ("te", "trailers"),
            ],
            r#"{"generate_image": true}"#,
        )
        .await
        .status
}

/// A reload from the memory store to Redis (`store.kind = "redis"`) is
/// applied live (`store_reconnected`), unlike the reverse, which keeps the
/// running store because "a new memory store would start from zero"
/// (`src/admin/state.rs`). But the move starts every user from zero the
/// same way: the usage counted in memory is left behind, and a generation
/// streaming while the reload happens settles into the abandoned memory
/// store, counted in no store in force. A free user with one image a day
/// whose first image was still streaming at the reload is admitted again
/// at once.
///
/// Fails on f07fb78: the second flagged request is answered 200 and reaches
/// the upstream (2 generations for a limit of 1). Passes once the reload
/// keeps the counts (or keeps the running memory store and says a restart
/// is needed, as it does for Redis to memory).
#[tokio::test]
async fn a_reload_from_memory_to_redis_forgets_a_streaming_image() {
    let upstream = TestUpstream::start(|_request: RecordedRequest| async move {
        Reply::ok()
            .stream([
                ("generating...", Duration::ZERO),
                (" done", Duration::from_millis(1500)),
            ])
            .trailer("x-images-saved", "1")
    })
    .await;
    let redis = RedisServer::start();
    let binary = Binary::start(&gen_config(&upstream, "kind = \"memory\""), &[]).await;
    let client = TestClient::new(binary.proxy);

    // The first image streams while the config moves to Redis.
    let first = {
        let client = TestClient::new(binary.proxy);
        tokio::spawn(async move { generate(&client, "dana").await })
    };
    upstream.wait_for_requests(1).await;
    binary.write_config(&gen_config(
        &upstream,
        &format!("kind = \"redis\"\nurl = \"{}\"", redis.url()),
    ));
    binary.signal("HUP");
    let reloaded = |l: &serde_json::Value| l["message"] == "config reloaded";
    binary.wait_for_logs(1, ANSWER_WITHIN, reloaded).await;
    assert_eq!(first.await.expect("first request"), StatusCode::OK);

    // Over the limit now: one image a day, and one was made.
    let second = generate(&client, "dana").await;
    let generations = upstream.count();
    assert!(
        second != StatusCode::OK && generations == 1,
        "a free user with 1 image a day got a second one: the first streamed while a reload \
         moved the store from memory to Redis, and the second flagged request was answered \
         {second} ({generations} flagged requests reached the upstream); the first image was \
         settled into the abandoned memory store (reload log: {})",
        binary.log_lines(&["reloaded"], 2)
    );
}

/// A config file cut short before its `[[routes]]` (an editor or a
/// config-management tool that writes the file in place while a `SIGHUP`
/// or `POST /v1/reload` arrives, a bad merge, an empty file) is valid TOML,
/// and a config with no route passes every check: `check-config`, `serve`
/// and a reload accept it (`config reloaded`, no warning). From then on no
/// request is inspected: every flagged request streams through uncounted,
/// and a user at the limit gets images again. A quota proxy with nothing
/// to inspect is never what was meant; the last good config should stay in
/// force.
///
/// Fails on f07fb78: after the reload the user at the limit (1 a day, 1
/// used) is answered 200 and the upstream generates (2 flagged requests
/// reached it). Passes once a config without routes is refused (or a
/// reload that drops every route is).
#[tokio::test]
async fn a_config_cut_before_its_routes_reloads_and_counts_nothing() {
    let upstream = TestUpstream::always(Reply::ok().header("x-images-saved", "1")).await;
    let binary = Binary::start(&gen_config(&upstream, "kind = \"memory\""), &[]).await;
    let client = TestClient::new(binary.proxy);
    assert_eq!(generate(&client, "erin").await, StatusCode::OK);
    assert_ne!(
        generate(&client, "erin").await,
        StatusCode::OK,
        "one image a day"
    );
    assert_eq!(upstream.count(), 1);

    // The file as it is, cut where its routes begin.
    let full = std::fs::read_to_string(binary.config_path()).expect("read config");
    let cut = &full[..full.find("[[routes]]").expect("the config has routes")];
    binary.write_raw_config(cut);
    binary.signal("HUP");
    let outcome = |l: &serde_json::Value| {
        l["message"] == "config reloaded"
            || l["message"] == "config reload failed; keeping the running config"
    };
    binary.wait_for_logs(1, ANSWER_WITHIN, outcome).await;

    let after = generate(&client, "erin").await;
    let generations = upstream.count();
    assert!(
        after != StatusCode::OK && generations == 1,
        "a config file cut before its [[routes]] was reloaded ({}), and the user at the limit \
         (1 image a day, 1 used) was answered {after}: {generations} flagged requests reached \
         the upstream",
        binary.log_lines(&["reload"], 2)
    );
}

/// `identity.forward_auth.url` written without its trailing slash
/// (`/api/quota/identity`, where `urls.py` says `api/quota/identity/`)
/// passes `check-config` and `serve`. Django's `CommonMiddleware`
/// (`APPEND_SLASH`, on in every default project) answers the identity call
/// `301` to `/api/quota/identity/` for every caller, logged in or not, and
/// the proxy reads any 3xx as "not logged in" (meant for `login_required`'s
/// redirect to `/accounts/login/`). With the preset's `anonymous =
/// "forward"`, every user is anonymous: every flagged request is forwarded
/// unchecked and uncounted. A 404 for a wrong path fails closed (503, as
/// `on_identity_error = "deny"`); the missing slash, the likeliest typo,
/// fails open, silently.
///
/// Fails on f07fb78: Django saves 5 images for a free user (3 a day), all
/// answered 200. Passes once a redirect that only appends the slash (or
/// any redirect that is not to a login page) is an identity error, or is
/// followed, or the config is refused.
#[tokio::test]
async fn an_identity_url_without_its_slash_makes_everyone_anonymous() {
    const USER: &str = "730201";
    let django = Django::start();
    let mut saved = django.saved();
    let config = preset_with(&django.url(), |table| {
        table
            .get_mut("identity")
            .and_then(toml::Value::as_table_mut)
            .and_then(|identity| identity.get_mut("forward_auth"))
            .and_then(toml::Value::as_table_mut)
            .expect("[identity.forward_auth]")
            .insert("url".into(), "/api/quota/identity".into());
    });
    if !check_config(&config).status.success() {
        // Refused: the mistake is caught before it serves.
        return;
    }
    let proxy = Binary::start(&config, &[]).await;
    let statuses: Vec<u16> = (0..5)
        .map(|n| send_flagged(proxy.proxy, USER, 73_100 + n))
        .collect();
    let images = saved.by_user(USER);
    assert!(
        images <= 3,
        "with identity.forward_auth.url = \"/api/quota/identity\" (no trailing slash) a free user \
         (3 images a day) sent 5 flagged messages and Django saved {images} images (statuses \
         {statuses:?}): Django answers the identity call 301 (APPEND_SLASH) and the proxy takes \
         every redirect for \"not logged in\""
    );
}

/// `usage.report_token_header` spelled with underscores
/// (`X_Quota_Report_Token`, the way the header looks in WSGI's environ,
/// `HTTP_X_QUOTA_REPORT_TOKEN`, and in `request.META`) passes
/// `check-config` and `serve`. But no header whose name holds `_` reaches
/// Django through gunicorn (it drops them, as nginx does; the proxy itself
/// removes such names on inspected routes for that reason), so the app
/// never gets the token and echoes `""` in its marker: with
/// `require_report_token = true` that marker is plain text, and no image is
/// ever counted. Nothing says so at startup or at run time.
///
/// Fails on f07fb78: Django saves 5 images for a free user (3 a day), all
/// answered 200. Passes once a token header name with `_` is refused (or
/// the token otherwise reaches the app).
#[tokio::test]
async fn a_report_token_header_with_underscores_never_reaches_django() {
    const USER: &str = "730401";
    let django = Django::start();
    let mut saved = django.saved();
    let config = preset_with(&django.url(), |table| {
        table
            .get_mut("usage")
            .and_then(toml::Value::as_table_mut)
            .expect("[usage]")
            .insert("report_token_header".into(), "X_Quota_Report_Token".into());
    });
    if !check_config(&config).status.success() {
        // Refused: the mistake is caught before it serves.
        return;
    }
    let proxy = Binary::start(&config, &[]).await;
    let statuses: Vec<u16> = (0..5)
        .map(|n| send_flagged(proxy.proxy, USER, 73_300 + n))
        .collect();
    let images = saved.by_user(USER);
    assert!(
        images <= 3,
        "with usage.report_token_header = \"X_Quota_Report_Token\" a free user (3 images a day) \
         sent 5 flagged messages and Django saved {images} images (statuses {statuses:?}): \
         the token never reaches Django, so no marker carries it and none counts"
    );
}

/// `identity.user_header` spelled with underscores (`X_User_Id`, as a front
/// that sets it that way, or an operator thinking of `request.META`'s
/// `HTTP_X_USER_ID`, would write it) passes `check-config` and `serve`, and
/// the proxy then removes that very header itself: on an inspected route
/// every header whose name holds `_` is removed before the user is
/// identified (`strip_underscore_names`, `src/quota/service/mod.rs`). Every
/// flagged request is anonymous, and under the default `anonymous =
/// "forward"` forwarded unchecked and uncounted (the log says "saved images
/// reported for an anonymous request; not counted" for each).
///
/// Fails on f07fb78: a user with one image a day sends three flagged
/// requests with `X_User_Id: 5`; all three are answered 200 and reach the
/// upstream. Passes once such a header name is refused (or read before it
/// is removed).
#[tokio::test]
async fn a_user_header_with_underscores_is_removed_before_it_is_read() {
    let upstream = TestUpstream::always(Reply::ok().header("x-images-saved", "1")).await;
    let config = format!(
        "upstream = \"http://{}\"\n[identity]\nuser_header = \"X_User_Id\"\n\
         default_plan = \"free\"\n[plans]\nfree = {{ daily = 1, weekly = 0, monthly = 0 }}\n\
         [[routes]]\nmethod = \"POST\"\npath = \"/gen/\"\n",
        upstream.authority()
    );
    if !check_config(&config).status.success() {
        // Refused: the mistake is caught before it serves.
        return;
    }
    let binary = Binary::start(&config, &[]).await;
    let client = TestClient::new(binary.proxy);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let answer = client
            .send(
                Method::POST,
                "/gen/",
                &[("X_User_Id", "5"), ("content-type", "application/json")],
                r#"{"generate_image": true}"#,
            )
            .await;
        statuses.push(answer.status);
    }
    let generations = upstream.count();
    assert!(
        generations <= 1,
        "with identity.user_header = \"X_User_Id\" user 5 (1 image a day) sent 3 flagged \
         requests: statuses {statuses:?}, {generations} reached the upstream; the proxy removed \
         the header before reading it, so every request was anonymous and forwarded uncounted"
    );
}

/// `foreign_syntax` (`src/quota/routes/pattern.rs`) refuses any route with
/// a segment that starts with `:` outside `<…>`, taking it for an Express
/// parameter. But `:` is ordinary literal text in Django's `path()`, and a
/// segment that starts with it after a converter is how custom methods
/// are routed (Google's AIP-136 style, `v1/models/<str:model>:generate/`):
/// Django routes `/v1/models/sdxl:generate/` to it. A config that guards
/// such a route is refused, by `check-config` and at startup: the proxy does
/// not start, and the whole app behind it is down. Fails on 70f7750:
/// `check-config` exits non-zero ("names a parameter as :name").
#[tokio::test]
async fn a_django_route_with_a_colon_after_a_converter_is_refused() {
    let django = Django::start();
    let config = preset_with(&django.url(), |table| {
        let routes = table
            .get_mut("routes")
            .and_then(toml::Value::as_array_mut)
            .expect("[[routes]]");
        let mut custom = toml::Table::new();
        custom.insert("method".into(), "POST".into());
        custom.insert("path".into(), "v1/models/<str:model>:generate/".into());
        routes.push(toml::Value::Table(custom));
    });
    let checked = check_config(&config);
    assert!(
        checked.status.success(),
        "a valid Django path() route, `v1/models/<str:model>:generate/` (Django routes \
         /v1/models/sdxl:generate/ to it), is refused: the proxy will not start, and the app \
         behind it is down: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let proxy = Binary::start(&config, &[]).await;
    let answer = raw_http::send(
        proxy.proxy,
        b"GET /healthz/ HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n",
        false,
        ANSWER_WITHIN,
    );
    assert_eq!(answer.status, 200, "the app answers through the proxy");
}
