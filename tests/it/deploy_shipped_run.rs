//! The shipped Kubernetes config, rendered by `deploy.rs`'s helpers, run by
//! the real binary against a stand-in for the app: a 50 MB upload goes
//! through forward-auth identity, Redis behind a password and the spool.

use std::path::Path;
use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::proxy::TestClient;
use crate::support::redis::RedisServer;
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use http::{Method, StatusCode};

use crate::deploy::{bundle, shipped_text};

/// The shipped config, run by the real binary against a stand-in for the
/// app: Redis with a password read from a file, forward-auth identity, the
/// spool on a directory of its own (the emptyDir). A 50 MB upload goes
/// through whole and counts; the limit then holds.
#[tokio::test]
async fn shipped_config_serves_a_50_mb_upload_through_forward_auth() {
    let redis = RedisServer::start();
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "requirepass", "pod-secret"]),
        "OK"
    );
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&received);
    let app = TestUpstream::start(move |request: RecordedRequest| {
        let seen = std::sync::Arc::clone(&seen);
        async move {
            let path = request.uri.path().to_owned();
            if path == "/api/quota/identity/" {
                return match request.header("cookie") {
                    Some(c) if c.contains("sessionid=s1") => {
                        Reply::ok().json(serde_json::json!({"user_id": "42", "plan": "free"}))
                    }
                    _ => Reply::status(401).json(serde_json::json!({"detail": "no"})),
                };
            }
            if path.ends_with("/image-generation-access/") {
                return Reply::ok().json(serde_json::json!({"has_access": false}));
            }
            seen.lock().expect("lock").push(request.body.len());
            // The app echoes the request's report token (docs/security.md).
            let token = request.header("x-quota-report-token").unwrap_or("");
            let marker = format!(
                "[IMAGES_SAVED]{}[IMAGES_SAVED_END]",
                serde_json::json!({"count": 1, "token": token})
            );
            Reply::ok().header("content-type", "text/plain").stream([
                (String::from("here is your image "), Duration::ZERO),
                (marker, Duration::ZERO),
            ])
        }
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("spool");
    let password = dir.path().join("password");
    std::fs::write(&password, "pod-secret\n").expect("password");
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "t0ken\n").expect("token");

    let mut config: toml::Table = toml::from_str(&shipped_text(&bundle())).expect("toml");
    let path = |p: &Path| toml::Value::from(p.display().to_string());
    config.insert(
        "upstream".into(),
        format!("http://{}", app.authority()).into(),
    );
    config.insert("spool_dir".into(), path(&spool));
    let store = config["store"].as_table().cloned().expect("[store]");
    let mut store = store;
    store.insert("url".into(), redis.url().into());
    store.insert("password_file".into(), path(&password));
    config.insert("store".into(), store.into());
    let mut admin = config["admin"].as_table().cloned().expect("[admin]");
    admin.insert("token_file".into(), path(&token));
    config.insert("admin".into(), admin.into());
    let binary = Binary::start(&toml::to_string(&config).expect("render"), &[]).await;
    let proxy = TestClient::new(binary.proxy);

    const BOUNDARY: &str = "XyZ";
    let form = |file: usize| {
        let mut body = Vec::with_capacity(file + 512);
        for (name, value) in [("message", "a cat"), ("generate_image", "true")] {
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; \
                 filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
            )
            .as_bytes(),
        );
        body.resize(body.len() + file, b'x');
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        body
    };
    let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
    let headers = [
        ("cookie", "sessionid=s1"),
        ("content-type", content_type.as_str()),
    ];
    let send = "/chat/session/7/send/";

    let upload = form(50_000_000);
    let length = upload.len();
    let answer = proxy.send(Method::POST, send, &headers, upload).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.text(), "here is your image ", "the marker is cut");
    assert_eq!(received.lock().expect("lock").as_slice(), [length]);
    // free: 3 a day. The upload counted, in Redis behind its password.
    for _ in 0..2 {
        let small = proxy.send(Method::POST, send, &headers, form(10)).await;
        assert_eq!(small.status, StatusCode::OK);
    }
    let denied = proxy.send(Method::POST, send, &headers, form(10)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text());
    assert_eq!(received.lock().expect("lock").len(), 3);
    // A client naming its own user changes nothing: forward-auth decides.
    let spoofed = [
        ("cookie", "sessionid=s1"),
        ("x-user-id", "someone-else"),
        ("content-type", content_type.as_str()),
    ];
    let again = proxy.send(Method::POST, send, &spoofed, form(10)).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);
    assert!(!binary.logs().join("\n").contains("pod-secret"));
}
