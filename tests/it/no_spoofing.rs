//! With identity from Django (forward-auth) or from a token (JWT), a client
//! cannot choose its own identity: its `X-User-Id` / `X-Subscription-Type`
//! never reach the upstream unchanged, on any route, and flagged requests
//! carry the verified identity instead.

use crate::support::identity_server::{IdentityServer, Plan};
use crate::support::instant::at;
use crate::support::proxy::{Answer, Proxy, TestClient};
use crate::support::upstream::{Reply, TestUpstream};
use chrono::Utc;
use http::{Method, StatusCode};

const NOW: &str = "2031-05-14T10:00:00Z";

const ROUTES: &str = r#"
[plans]
free = { daily = 3, weekly = 0, monthly = 0 }
[[routes]]
method = "POST"
path = "/chat/session/{id}/send/"
deny_status = 403
"#;

const SPOOF: [(&str, &str); 3] = [
    ("x-user-id", "admin"),
    ("x-subscription-type", "unlimited"),
    ("content-type", "application/json"),
];

/// A flagged message to the send view of session 1 with `headers`.
async fn send_flagged(client: &TestClient, headers: &[(&str, &str)]) -> Answer {
    client
        .send(
            Method::POST,
            "/chat/session/1/send/",
            headers,
            r#"{"generate_image": true}"#,
        )
        .await
}

#[tokio::test]
async fn forward_auth_replaces_spoofed_identity_headers() {
    let identity = IdentityServer::start().await;
    identity.login(
        "s3cret",
        42,
        Some(Plan {
            name: "free",
            daily: Some(1),
            weekly: None,
            monthly: None,
        }),
    );
    let upstream = TestUpstream::always(Reply::ok().header("x-images-saved", "1")).await;
    let config = format!(
        "[identity]\nkind = \"forward_auth\"\n[identity.forward_auth]\nurl = \"{}/api/quota/identity/\"\n{ROUTES}",
        identity.base()
    );
    let proxy = Proxy::memory(&config, &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let mut headers = SPOOF.to_vec();
    headers.push(("cookie", "sessionid=s3cret"));

    let answer = send_flagged(&client, &headers).await;
    assert_eq!(answer.status, StatusCode::OK);
    let seen = upstream.last_request();
    assert_eq!(seen.header("x-user-id"), Some("42"));
    assert_eq!(seen.header("x-subscription-type"), Some("free"));
    assert_eq!(seen.header_all("x-user-id").len(), 1);

    // Django's limit (1 a day) applies to the verified user, not "admin".
    proxy.wait_settled("42", 1).await;
    let denied = send_flagged(&client, &headers).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(proxy.usage("admin").await[0].used, 0);

    // A route that is not inspected: the spoofed headers are removed.
    client.send(Method::GET, "/chat/", &headers, "").await;
    let seen = upstream.last_request();
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(seen.header("x-subscription-type"), None);
    assert_eq!(seen.header("cookie"), Some("sessionid=s3cret"));
}

#[tokio::test]
async fn jwt_replaces_spoofed_identity_headers() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let dir = tempfile::tempdir().expect("tempdir");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "django-insecure-test-key").expect("secret");
    let upstream = TestUpstream::always(Reply::ok()).await;
    let config = format!(
        "[identity]\nkind = \"jwt\"\n[identity.jwt]\nsecret_file = \"{}\"\n{ROUTES}",
        secret_file.display()
    );
    let proxy = Proxy::memory(&config, &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let exp = Utc::now().timestamp() + 300;
    let token = encode(
        &Header::default(),
        &serde_json::json!({"token_type": "access", "exp": exp, "jti": "j", "user_id": 7}),
        &EncodingKey::from_secret(b"django-insecure-test-key"),
    )
    .expect("token");
    let bearer = format!("Bearer {token}");
    let mut headers = SPOOF.to_vec();
    headers.push(("authorization", &bearer));
    send_flagged(&client, &headers).await;
    assert_eq!(upstream.last_request().header("x-user-id"), Some("7"));

    // A forged token is anonymous: nothing identifies the request, and the
    // spoofed headers are gone. Forged in the signature's first character:
    // its last carries two unsigned bits, which PyJWT ignores and so does
    // the proxy (an `x` there was no forgery for one token in sixteen).
    let dot = token.rfind('.').expect("a JWT has dots");
    let other = if token.as_bytes()[dot + 1] == b'A' {
        'B'
    } else {
        'A'
    };
    let forged = format!("Bearer {}{other}{}", &token[..=dot], &token[dot + 2..]);
    let mut headers = SPOOF.to_vec();
    headers.push(("authorization", &forged));
    send_flagged(&client, &headers).await;
    let seen = upstream.last_request();
    assert_eq!(seen.header("x-user-id"), None);
    assert_eq!(seen.header("x-subscription-type"), None);
}
