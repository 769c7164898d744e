//! Identity sources against real loopback servers and real keys: forward-auth
//! to a stand-in of the Django view and the no-spoofing helpers (JWT
//! verification is in `identity_jwt.rs`, the config fields in
//! `identity_config.rs`).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use quota_proxy::config::{Config, Limits};
use quota_proxy::identity::{
    self, Identity, IdentityHeaders, IdentitySource, set_identity_headers, strip_client_headers,
};
use serde_json::json;

use crate::identity_jwt::{SECRET, bearer, hs256, secret_file, simplejwt_claims};
use crate::support::identity_server::{IdentityServer, Mode, PATH, Plan, dead_addr};

pub(crate) const PLANS: &str = r#"
[plans]
free = { daily = 3, weekly = 10, monthly = 30 }
pro = { daily = 50, weekly = 0, monthly = 1000 }
"#;

pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    h
}

fn session(id: &str) -> HeaderMap {
    headers(&[("cookie", &format!("csrftoken=x; sessionid={id}"))])
}

pub(crate) fn source(toml: &str) -> Arc<dyn IdentitySource> {
    let config = Config::from_toml(toml).expect("config");
    identity::from_config(&config).expect("identity source")
}

/// A forward-auth source for `server`, its endpoint given as a full URL.
fn forward_auth(server: &IdentityServer, extra: &str) -> Arc<dyn IdentitySource> {
    source(&format!(
        "{PLANS}\n[identity]\nkind = \"forward_auth\"\ndefault_plan = \"free\"\n\
         [identity.forward_auth]\nurl = \"{}{PATH}\"\n{extra}",
        server.base()
    ))
}

// ---------------------------------------------------------------------------
// forward_auth

#[tokio::test]
async fn answer_limits_override_the_plan_table() {
    let server = IdentityServer::start().await;
    server.login("s-pro", 42, Some(Plan::pro()));
    let id = forward_auth(&server, "")
        .identify(&session("s-pro"))
        .await
        .expect("answer")
        .expect("a user");
    assert_eq!(
        id,
        Identity {
            user_id: "42".to_owned(),
            plan: Some("pro".into()),
            limits: Limits {
                daily: 5,
                weekly: 0,
                monthly: 100
            },
        }
    );
    // The call carried the credentials and asked for JSON, and nothing else
    // of the client's.
    let sent = server.last_headers();
    assert_eq!(sent["cookie"], "csrftoken=x; sessionid=s-pro");
    assert_eq!(sent["accept"], "application/json");
}

#[tokio::test]
async fn partial_limits_fall_back_to_the_plan_and_no_plan_to_the_default() {
    let server = IdentityServer::start().await;
    server.login(
        "s-partial",
        7,
        Some(Plan {
            name: "pro",
            daily: Some(9),
            weekly: None,
            monthly: None,
        }),
    );
    server.login("s-nosub", 8, None);
    let source = forward_auth(&server, "");
    let partial = source
        .identify(&session("s-partial"))
        .await
        .expect("answer")
        .expect("a user");
    assert_eq!(
        partial.limits,
        Limits {
            daily: 9,
            weekly: 0,
            monthly: 1000
        }
    );
    let nosub = source
        .identify(&session("s-nosub"))
        .await
        .expect("answer")
        .expect("a user");
    assert_eq!(nosub.user_id, "8");
    assert_eq!(nosub.plan.as_deref(), Some("free"));
    assert_eq!(nosub.limits.daily, 3);
}

#[tokio::test]
async fn url_defaults_to_a_path_on_the_upstream() {
    let server = IdentityServer::start().await;
    server.login("s1", 1, None);
    let source = source(&format!(
        "upstream = \"{}\"\n[identity]\nkind = \"forward_auth\"",
        server.base()
    ));
    let id = source.identify(&session("s1")).await.expect("answer");
    assert_eq!(id.map(|i| i.user_id).as_deref(), Some("1"));
}

#[tokio::test]
async fn authorization_header_is_forwarded_too() {
    let server = IdentityServer::start().await;
    let source = forward_auth(&server, "");
    let answer = source
        .identify(&headers(&[
            ("authorization", "Token abc"),
            ("x-user-id", "999"),
        ]))
        .await
        .expect("answer");
    // The stand-in only knows sessions: 401 → anonymous.
    assert_eq!(answer, None);
    let sent = server.last_headers();
    assert_eq!(sent["authorization"], "Token abc");
    assert!(sent.get("x-user-id").is_none());
    assert!(sent.get("cookie").is_none());
}

#[tokio::test]
async fn no_credentials_is_anonymous_without_a_call() {
    let server = IdentityServer::start().await;
    let source = forward_auth(&server, "");
    assert_eq!(source.identify(&HeaderMap::new()).await.expect("ok"), None);
    let spoof = headers(&[("x-user-id", "1"), ("x-subscription-type", "pro")]);
    assert_eq!(source.identify(&spoof).await.expect("ok"), None);
    assert_eq!(server.calls(), 0);
}

#[tokio::test]
async fn cache_hit_makes_no_call_and_expiry_asks_again() {
    let server = IdentityServer::start().await;
    server.login("s1", 1, Some(Plan::pro()));
    let source = forward_auth(&server, "cache_ttl = \"30s\"");
    let first = source.identify(&session("s1")).await.expect("answer");
    assert_eq!(server.calls(), 1);
    let second = source.identify(&session("s1")).await.expect("answer");
    assert_eq!(server.calls(), 1, "a cache hit makes no call");
    assert_eq!(first, second);

    // Move tokio's clock past the TTL without sleeping; the calls themselves
    // run on the real clock, so no timer can fire early during their I/O.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(29)).await;
    tokio::time::resume();
    source.identify(&session("s1")).await.expect("answer");
    assert_eq!(server.calls(), 1, "still fresh at 29 s");
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::time::resume();
    source.identify(&session("s1")).await.expect("answer");
    assert_eq!(server.calls(), 2, "expired at 31 s: asked again");
}

#[tokio::test]
async fn unauthorized_is_anonymous_and_negative_cached() {
    let server = IdentityServer::start().await;
    let source = forward_auth(&server, "negative_cache_ttl = \"5s\"");
    assert_eq!(
        source.identify(&session("stranger")).await.expect("ok"),
        None
    );
    assert_eq!(
        source.identify(&session("stranger")).await.expect("ok"),
        None
    );
    assert_eq!(server.calls(), 1, "the 401 was cached");
    // The user logs in; after the negative TTL the new answer is seen.
    server.login("stranger", 5, None);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(6)).await;
    tokio::time::resume();
    let id = source.identify(&session("stranger")).await.expect("ok");
    assert_eq!(id.map(|i| i.user_id).as_deref(), Some("5"));
    assert_eq!(server.calls(), 2);
}

#[tokio::test]
async fn forbidden_and_login_redirect_are_anonymous() {
    let server = IdentityServer::start().await;
    server.login("s1", 1, None);
    let source = forward_auth(&server, "negative_cache_ttl = \"0s\"");
    server.set_mode(Mode::LoginRedirect);
    assert_eq!(source.identify(&session("s1")).await.expect("ok"), None);
    server.set_mode(Mode::Status(StatusCode::FORBIDDEN));
    assert_eq!(source.identify(&session("s1")).await.expect("ok"), None);
    assert_eq!(server.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_for_a_hundred_concurrent_requests() {
    let server = IdentityServer::start().await;
    server.login("s1", 1, Some(Plan::pro()));
    server.set_mode(Mode::Slow(Duration::from_millis(200)));
    let source = forward_auth(&server, "");
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let source = Arc::clone(&source);
            tokio::spawn(async move { source.identify(&session("s1")).await })
        })
        .collect();
    for task in tasks {
        let id = task.await.expect("task").expect("answer").expect("a user");
        assert_eq!(id.user_id, "1");
        assert_eq!(id.limits.daily, 5);
    }
    assert_eq!(server.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_credentials_make_separate_calls() {
    let server = IdentityServer::start().await;
    for n in 1..=3 {
        server.login(&format!("s{n}"), n, None);
    }
    let source = forward_auth(&server, "");
    let tasks: Vec<_> = (1..=3)
        .map(|n| {
            let source = Arc::clone(&source);
            tokio::spawn(async move { source.identify(&session(&format!("s{n}"))).await })
        })
        .collect();
    let mut users = Vec::new();
    for task in tasks {
        let id = task.await.expect("task").expect("answer").expect("a user");
        users.push(id.user_id);
    }
    assert_eq!(users, ["1", "2", "3"]);
    assert_eq!(server.calls(), 3);
}

#[tokio::test]
async fn server_errors_are_unavailable_and_not_cached() {
    let server = IdentityServer::start().await;
    server.login("s1", 1, None);
    let source = forward_auth(&server, "");
    for mode in [
        Mode::Status(StatusCode::INTERNAL_SERVER_ERROR),
        Mode::Status(StatusCode::BAD_GATEWAY),
        Mode::Garbage,
    ] {
        server.set_mode(mode.clone());
        let error = source
            .identify(&session("s1"))
            .await
            .expect_err("must be unavailable");
        let message = error.to_string();
        assert!(message.contains(PATH), "{message}");
        assert!(
            !message.contains("s1"),
            "no credentials in errors: {message}"
        );
    }
    assert_eq!(server.calls(), 3, "errors are not cached");
    server.set_mode(Mode::Django);
    assert!(source.identify(&session("s1")).await.expect("ok").is_some());
}

#[tokio::test]
async fn a_wrong_path_is_unavailable() {
    let server = IdentityServer::start().await;
    server.login("s1", 1, None);
    let source = source(&format!(
        "[identity]\nkind = \"forward_auth\"\n[identity.forward_auth]\nurl = \"{}/api/who/\"",
        server.base()
    ));
    let error = source.identify(&session("s1")).await.expect_err("404");
    assert!(error.to_string().contains("404"), "{error}");
}

#[tokio::test]
async fn server_down_is_unavailable() {
    let addr = dead_addr().await;
    let source = source(&format!(
        "[identity]\nkind = \"forward_auth\"\n[identity.forward_auth]\nurl = \"http://{addr}{PATH}\""
    ));
    source
        .identify(&session("s1"))
        .await
        .expect_err("nothing listening");
}

#[tokio::test]
async fn slower_than_the_timeout_is_unavailable() {
    let server = IdentityServer::start().await;
    server.login("s1", 1, None);
    server.set_mode(Mode::Slow(Duration::from_secs(30)));
    let source = forward_auth(&server, "timeout = \"200ms\"");
    let started = std::time::Instant::now();
    let error = source.identify(&session("s1")).await.expect_err("timeout");
    assert!(error.to_string().contains("no answer within"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// no spoofing

#[tokio::test]
async fn spoofed_user_header_is_replaced_by_the_verified_one() {
    let secret = secret_file();
    let config = Config::from_toml(&format!(
        "[identity]\nkind = \"jwt\"\n[identity.jwt]\nsecret_file = {:?}",
        secret.path()
    ))
    .expect("config");
    let source = identity::from_config(&config).expect("source");
    assert!(!source.trusts_client_headers());
    let names = IdentityHeaders::from_config(&config.identity);
    let token = hs256(&simplejwt_claims(json!(42)), SECRET.as_bytes());
    let mut request = bearer(&token);
    request.insert("x-user-id", "1".parse().expect("value"));
    request.insert("x-subscription-type", "enterprise".parse().expect("value"));

    // What the request path does, in this order.
    strip_client_headers(&mut request, &names);
    let id = source
        .identify(&request)
        .await
        .expect("ok")
        .expect("a user");
    set_identity_headers(&mut request, &id, &names).expect("set");
    assert_eq!(request.get_all("x-user-id").iter().count(), 1);
    assert_eq!(request["x-user-id"], "42");
    assert!(request.get("x-subscription-type").is_none());
    assert!(request.get("authorization").is_some());

    let header_source = identity::from_config(&Config::default()).expect("header");
    assert!(header_source.trusts_client_headers());
}
