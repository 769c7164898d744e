//! Bodies and settles through the quota, end to end on the real proxy with
//! `quota.rs`'s config: an oversized chunked body is refused without a
//! `Content-Length`, inspected bodies are forwarded byte for byte, a
//! passthrough body is streamed unread, a slow settle does not delay the
//! client, and a report in a `+json` body is counted.

use std::time::Duration;

use crate::support::proxy::{Proxy, StoreChoice, TestClient};
use crate::support::redis::RedisServer;
use crate::support::upstream::{Reply, TestUpstream};
use http::{Method, StatusCode};

use crate::quota::{API, CONFIG, NOW, SEND, saving_upstream};
use crate::support::instant::at;

#[tokio::test]
async fn oversized_chunked_body_is_refused_without_content_length() {
    use http_body_util::{BodyExt, StreamBody};
    let upstream = saving_upstream().await;
    let proxy = Proxy::memory(CONFIG, &upstream, at(NOW)).await;
    let chunks = (0..10).map(|_| {
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(vec![
            b'x';
            1000
        ])))
    });
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = http::Request::post(format!("http://{}{SEND}", proxy.addr))
        .header("x-user-id", "c")
        .body(body)
        .expect("request");
    let response = client.request(request).await.expect("answer");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("error"));
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn inspected_bodies_are_forwarded_byte_for_byte() {
    let upstream = saving_upstream().await;
    let proxy = Proxy::memory(CONFIG, &upstream, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let mut multipart = b"--XyZ\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nhi\r\n--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    multipart.extend((0..=255u8).cycle().take(1500));
    multipart.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"generate_image\"\r\n\r\ntrue\r\n--XyZ--\r\n");
    let bodies: [(&str, Vec<u8>); 3] = [
        (
            "application/json",
            b"{ \"generate_image\" :true ,\n\"message\":\"\\u00e9\" }".to_vec(),
        ),
        (
            "application/x-www-form-urlencoded",
            b"message=a%20b&generate_image=on&x=1".to_vec(),
        ),
        ("multipart/form-data; boundary=XyZ", multipart),
    ];
    for (i, (content_type, body)) in bodies.into_iter().enumerate() {
        let answer = client
            .send(
                Method::POST,
                &format!("/chat/session/{i}/send/?a=1&b=%20"),
                &[
                    ("x-user-id", "bytes"),
                    ("x-subscription-type", "unlimited"),
                    ("content-type", content_type),
                ],
                body.clone(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        let seen = upstream.last_request();
        assert_eq!(&seen.body[..], &body[..], "{content_type}");
        assert_eq!(
            seen.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(seen.uri.query(), Some("a=1&b=%20"));
    }
    // All three asked for an image: each reserved and settled one.
    assert_eq!(proxy.wait_settled("bytes", 0).await[0].used, 0);
}

/// A request on a route that is not inspected streams its body: the
/// upstream sees the first bytes while the client still holds the last.
/// A proxy that read the body first would never forward the first part.
#[tokio::test]
async fn a_passthrough_body_is_streamed_not_read() {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use std::convert::Infallible;
    use tokio::sync::{mpsc, oneshot};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let authority = listener
        .local_addr()
        .expect("addr")
        .to_string()
        .parse()
        .expect("authority");
    let (first_tx, first_rx) = oneshot::channel::<Bytes>();
    let first_tx = std::sync::Mutex::new(Some(first_tx));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("the proxy connects");
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let first_tx = first_tx.lock().expect("lock").take();
                async move {
                    let mut body = request.into_body();
                    let mut total = 0;
                    let mut first_tx = first_tx;
                    while let Some(frame) = body.frame().await {
                        if let Ok(data) = frame?.into_data() {
                            total += data.len();
                            if let Some(tx) = first_tx.take() {
                                let _ = tx.send(data);
                            }
                        }
                    }
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                        Bytes::from(total.to_string()),
                    )))
                }
            });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let proxy = Proxy::start(CONFIG, &authority, &StoreChoice::Memory, at(NOW)).await;

    let (chunks, mut rx) = mpsc::channel::<Bytes>(1);
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok::<_, Infallible>(Frame::data(c))))
    });
    let request = http::Request::post(format!("http://{}/uploads/", proxy.addr))
        .header("x-user-id", "streamer")
        .header("content-type", "application/json")
        .body(StreamBody::new(body))
        .expect("request");
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let answer = tokio::spawn(async move {
        let response = client.request(request).await.expect("proxy answers");
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    });
    chunks
        .send(Bytes::from_static(
            b"{\"generate_image\": true, \"message\": \"",
        ))
        .await
        .expect("send the first part");
    let first = tokio::time::timeout(Duration::from_secs(10), first_rx)
        .await
        .expect("the upstream saw the first bytes before the client sent the last")
        .expect("first bytes");
    assert!(first.starts_with(b"{\"generate_image\""));
    chunks
        .send(Bytes::from_static(b"the rest\"}"))
        .await
        .expect("send the rest");
    drop(chunks);
    let total = answer.await.expect("client task");
    assert_eq!(&total[..], b"47", "the whole body arrived");
    assert_eq!(proxy.store.calls(), 0, "no store call on a passthrough");
}

/// The client gets its whole answer while the settle still waits on a
/// Redis that does not answer (SIGSTOP); the settle lands once Redis goes
/// on. A proxy that settled before answering would hold the client until
/// the store answered (`command_timeout` is 30 s here).
#[tokio::test]
async fn the_client_is_not_delayed_by_a_slow_settle() {
    let server = RedisServer::start();
    let arrived = std::sync::Arc::new(tokio::sync::Notify::new());
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let upstream = {
        let (arrived, go) = (arrived.clone(), go.clone());
        TestUpstream::start(move |_| {
            let (arrived, go) = (arrived.clone(), go.clone());
            async move {
                arrived.notify_one();
                go.notified().await;
                Reply::ok().header("x-images-saved", "1").body("generated")
            }
        })
        .await
    };
    let config = CONFIG.replace("command_timeout = \"500ms\"", "command_timeout = \"30s\"");
    let store = StoreChoice::Redis(server.url());
    let proxy = Proxy::start(&config, &upstream.authority(), &store, at(NOW)).await;
    let client = TestClient::new(proxy.addr);
    let answer = tokio::spawn(async move { client.generate(SEND, "patient", "free").await });
    // Reserved (Redis answered), and the request is at the upstream.
    tokio::time::timeout(Duration::from_secs(10), arrived.notified())
        .await
        .expect("the request reached the upstream");
    server.pause();
    go.notify_one();
    let answer = tokio::time::timeout(Duration::from_secs(10), answer).await;
    // Redis may go on whatever happened.
    server.resume();
    let answer = answer
        .expect("the client got its answer while Redis was paused")
        .expect("client task");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), "generated");
    let usage = proxy.wait_settled("patient", 1).await;
    assert_eq!((usage[0].used, usage[0].reserved), (1, 0));
}

/// A JSON report in a body typed with a `+json` suffix
/// (`application/vnd.api+json`, as some renderers answer) is read like
/// `application/json`.
#[tokio::test]
async fn a_json_report_in_a_plus_json_body_is_counted() {
    let upstream = TestUpstream::always(
        Reply::ok()
            .header("content-type", "application/vnd.api+json; charset=utf-8")
            .body(r#"{"images_saved": 1}"#),
    )
    .await;
    let proxy = Proxy::start(CONFIG, &upstream.authority(), &StoreChoice::Memory, at(NOW)).await;
    let answer = TestClient::new(proxy.addr)
        .generate(API, "suffix", "free")
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.text(), r#"{"images_saved": 1}"#, "body intact");
    let usage = proxy.wait_settled("suffix", 1).await;
    assert_eq!((usage[0].used, usage[0].reserved), (1, 0));
}
