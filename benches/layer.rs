//! Benchmarks of the quota layer on one request, in process (phases:
//! classify → flag → identify → reserve → answer): the whole [`QuotaLayer`]
//! in front of a `tower::service_fn` that answers at once, on the memory
//! store, with no network.
//!
//! Denial rendering is crate-private (`quota::denial`), so it is measured
//! through this public path: `denied` is a flagged request from a user over
//! their daily limit, answered by the layer with the 403 and its Persian
//! message, `Retry-After` and `RateLimit` headers. `allowed` is the same
//! request from a user with quota left (reserve, forward, settle), and
//! `passthrough` a request on a route that is not inspected.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use quota_proxy::config::Config;
use quota_proxy::quota::{QuotaLayer, RequestBody};
use quota_proxy::store::MemoryStore;
use tower::{Layer, ServiceExt};

const CONFIG: &str = r#"
[identity]
default_plan = "huge"
[plans]
huge = { daily = 1000000000, weekly = 0, monthly = 0 }
one = { daily = 1, weekly = 0, monthly = 0 }
[[routes]]
method = "POST"
path = "/chat/session/{session_id}/send/"
deny_status = 403
"#;

const FLAGGED: &str = r#"{"message": "a cat on a mat", "generate_image": true}"#;

fn request(path: &str, user: &str, plan: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "app.example")
        .header("content-type", "application/json")
        .header("x-user-id", user)
        .header("x-subscription-type", plan)
        .body(Full::new(Bytes::from_static(FLAGGED.as_bytes())))
        .expect("a request")
}

fn bench_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let config = Config::from_toml(CONFIG).expect("bench config");
    let layer = QuotaLayer::builder(&config)
        .expect("layer")
        .store(Arc::new(MemoryStore::new(1000)))
        .build();
    // The "Django" behind: saves one image for every request.
    let inner = tower::service_fn(|_request: Request<RequestBody<Full<Bytes>>>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"generated")));
        response
            .headers_mut()
            .insert("x-images-saved", http::HeaderValue::from_static("1"));
        Ok::<_, Infallible>(response)
    });
    let service = layer.layer(inner);

    let send = |request: Request<Full<Bytes>>| {
        let service = service.clone();
        async move {
            let response = service.oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = response.into_body().collect().await;
            (status, body.map(|b| b.to_bytes()).unwrap_or_default())
        }
    };

    // Use up the one image of user "over", so every later request is denied.
    let send_path = "/chat/session/7/send/";
    let (status, _) = runtime.block_on(send(request(send_path, "over", "one")));
    assert_eq!(status, StatusCode::OK, "the first request is allowed");
    let (status, body) = runtime.block_on(send(request(send_path, "over", "one")));
    assert_eq!(status, StatusCode::FORBIDDEN, "the second is denied");
    assert!(
        String::from_utf8_lossy(&body).contains("روزانه"),
        "Persian daily message"
    );

    let mut group = c.benchmark_group("layer");
    group.bench_function("denied", |b| {
        b.iter(|| runtime.block_on(send(request(send_path, "over", "one"))));
    });
    let mut n = 0u64;
    group.bench_function("allowed", |b| {
        b.iter(|| {
            n += 1;
            let user = format!("u{}", n % 10_000);
            runtime.block_on(send(request(send_path, &user, "huge")))
        });
    });
    group.bench_function("passthrough", |b| {
        b.iter(|| runtime.block_on(send(request("/static/app.js", "u1", "huge"))));
    });
    group.finish();
}

criterion_group!(benches, bench_layer);
criterion_main!(benches);
