//! The quota's identity, end to end on the real proxy with `quota.rs`'s
//! config: anonymous requests follow the configured policy, and an identity
//! view that fails is a 503 never forwarded under `on_identity_error =
//! "deny"` or forwarded uncounted under `"allow"`; images saved for an
//! unflagged request whose identity failed on arrival count against who
//! asked once the identity view answers again.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::on_both_stores;
use crate::support::proxy::{Proxy, StoreChoice, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};

use crate::quota::{CONFIG, NOW, SEND, saving_upstream};
use crate::support::instant::at;

#[tokio::test]
async fn anonymous_requests_follow_the_policy() {
    let upstream = saving_upstream().await;
    let authority = upstream.authority();
    let body = r#"{"generate_image": true}"#;
    let json = [("content-type", "application/json")];

    let forward = Proxy::start(CONFIG, &authority, &StoreChoice::Memory, at(NOW)).await;
    let answer = TestClient::new(forward.addr)
        .send(Method::POST, SEND, &json, body)
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(upstream.count(), 1);

    let config = CONFIG.replace("[identity]\n", "[identity]\nanonymous = \"deny\"\n");
    let deny = Proxy::start(&config, &authority, &StoreChoice::Memory, at(NOW)).await;
    let answer = TestClient::new(deny.addr)
        .send(Method::POST, SEND, &json, body)
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.json()["error"].is_string());
    assert_eq!(upstream.count(), 1);
}

/// A proxy on `CONFIG` with identities from Django's identity view
/// (`/api/quota/identity/` on the upstream) and `on_identity_error =
/// policy`, in front of an upstream whose identity view fails (500) and
/// whose other views save an image for every request and say so.
async fn failing_identity(policy: &str) -> (TestUpstream, Proxy) {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        if request.uri.path() == "/api/quota/identity/" {
            Reply::status(500).body("identity view broken")
        } else {
            Reply::ok().header("x-images-saved", "1").body("generated")
        }
    })
    .await;
    let config = CONFIG.replace(
        "[identity]\n",
        &format!("[identity]\nkind = \"forward_auth\"\non_identity_error = \"{policy}\"\n"),
    );
    let proxy = Proxy::start(
        &config,
        &upstream.authority(),
        &StoreChoice::Memory,
        at(NOW),
    )
    .await;
    (upstream, proxy)
}

/// A flagged message from a logged-in user (a session cookie).
async fn cookie_generate(proxy: &Proxy) -> crate::support::proxy::Answer {
    TestClient::new(proxy.addr)
        .send(
            Method::POST,
            SEND,
            &[
                ("cookie", "sessionid=abc"),
                ("content-type", "application/json"),
            ],
            r#"{"generate_image": true}"#,
        )
        .await
}

fn sends(upstream: &TestUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.uri.path() == SEND)
        .count()
}

#[tokio::test]
async fn identity_error_denied_is_503_and_never_forwarded() {
    let (upstream, proxy) = failing_identity("deny").await;
    let answer = cookie_generate(&proxy).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );
    assert!(answer.headers.contains_key("retry-after"));
    assert!(answer.json()["error"].is_string());
    assert_eq!(upstream.count(), 1, "only the identity view was asked");
    assert_eq!(sends(&upstream), 0);
    assert_eq!(proxy.store.calls(), 0);
}

#[tokio::test]
async fn identity_error_allowed_is_forwarded_uncounted() {
    let (upstream, proxy) = failing_identity("allow").await;
    for _ in 0..4 {
        let answer = cookie_generate(&proxy).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.text(), "generated");
    }
    assert_eq!(sends(&upstream), 4, "forwarded past the daily 3");
    let seen = upstream.last_request();
    assert_eq!(seen.header("x-user-id"), None, "no identity is made up");
    // No reserve, and the saved image is not counted against anyone.
    assert_eq!(proxy.store.calls(), 0);
}

on_both_stores! {
    saved_images_of_a_request_not_identified_on_arrival_count_once_it_is(store) {
        // The identity view fails while the request arrives (an unflagged
        // request goes on), then answers before its answer is settled: the
        // settle waits to identify who asked and counts the saved image
        // against them.
        let calls = Arc::new(AtomicUsize::new(0));
        let identity_calls = Arc::clone(&calls);
        let upstream = TestUpstream::start(move |request: RecordedRequest| {
            let calls = Arc::clone(&identity_calls);
            async move {
                if request.uri.path() != "/api/quota/identity/" {
                    return Reply::ok().header("x-images-saved", "1").body("generated");
                }
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 => Reply::status(500).body("identity view broken"),
                    _ => Reply::ok().json(serde_json::json!({"user_id": "42"})),
                }
            }
        })
        .await;
        let config = CONFIG.replace("[identity]\n", "[identity]\nkind = \"forward_auth\"\n");
        let proxy = Proxy::start(&config, &upstream.authority(), &store, at(NOW)).await;
        let client = TestClient::new(proxy.addr);
        let headers = [("cookie", "sessionid=abc"), ("content-type", "application/json")];
        let unflagged = r#"{"message": "a cat, please"}"#;
        let answer = client.send(Method::POST, SEND, &headers, unflagged).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(proxy.wait_settled("42", 1).await[0].used, 1);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "asked on arrival and at the settle");
        // The session is learned as image-generating for that user: with
        // the free plan's 3 a day used, the next unflagged message there
        // is denied before it reaches the app.
        let flagged = r#"{"message": "a cat", "generate_image": true}"#;
        for _ in 0..2 {
            let answer = client.send(Method::POST, SEND, &headers, flagged).await;
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        }
        proxy.wait_settled("42", 3).await;
        let sent = sends(&upstream);
        let answer = client.send(Method::POST, SEND, &headers, unflagged).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.text());
        assert_eq!(sends(&upstream), sent, "denied before the app");
    }
}
