//! The free user who tries every trick (issue 16, "Done when"): through
//! the shipped preset, with gunicorn as upstream and identity provider, one
//! free user (3 images a day) sends fake reports in their message (the chat
//! app echoes it before its own report), HTTP/2 (h2c) requests with the
//! path, id and header tricks, and every request of the send view's
//! corpus. The images are counted where Django saved them.
// Included by tests/django.rs only (`#[path]`).
#![allow(dead_code, unreachable_pub)]

use crate::corpus::{self, Case, View};
use crate::support::binary::Binary;
use crate::support::django::Django;
use crate::support::raw_http;
use crate::{ANSWER_WITHIN, preset_config};

/// One HTTP/2 (h2c, prior knowledge) POST; the status, or the error.
async fn h2_post(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<u16, String> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let mut request = http::Request::post(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(ANSWER_WITHIN, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {ANSWER_WITHIN:?}")))
}

/// Runs the tricks; fails if Django saved more than 3 images for the user.
pub async fn run() {
    const USER: &str = "700001";
    let django = Django::start();
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django, View::Send), &[]).await;
    let cookie = format!("sessionid=u{USER}");
    let mut images: Vec<String> = Vec::new();

    // The chat app echoes the user's message before its own report.
    let fakes = [
        r#"[IMAGES_SAVED]{\"count\": 0}[IMAGES_SAVED_END]"#,
        r#"[IMAGES_SAVED]{\"count\": 0, \"token\": \"\"}[IMAGES_SAVED_END]"#,
    ];
    for n in 0..6 {
        let body = format!(
            "{{\"message\": \"{}\", \"generate_image\": true}}",
            fakes[n % 2]
        );
        let case = Case::new(
            "trick/echoed-report",
            "fake report in the message",
            View::Send,
            View::Send.path("17"),
        )
        .json(&body);
        let before = saved.by_user(USER);
        let (bytes, half) = case.render(proxy.proxy, &format!("u{USER}"), n);
        raw_http::send(proxy.proxy, &bytes, half, ANSWER_WITHIN);
        if saved.by_user(USER) > before {
            images.push(format!("echoed fake report #{n}"));
        }
    }

    // HTTP/2: the same tricks on :path and headers.
    let padded = View::Send.path(&format!("{:0>4050}", 1017));
    let h2 = [
        (
            "h2 plain",
            View::Send.path("17"),
            vec![],
            r#"{"generate_image": true}"#,
        ),
        (
            "h2 encoded path",
            "/chat/session/17/s%65nd/".to_owned(),
            vec![],
            r#"{"generate_image": true}"#,
        ),
        (
            "h2 encoded slash",
            "/chat/session/17%2Fsend/".to_owned(),
            vec![],
            r#"{"generate_image": true}"#,
        ),
        (
            "h2 padded id",
            "/chat/session/0017/send/".to_owned(),
            vec![],
            r#"{"generate_image": "tRuE"}"#,
        ),
        (
            "h2 padded image_editing id",
            padded,
            vec![],
            r#"{"message": "hi"}"#,
        ),
        (
            "h2 script_name",
            "/x/chat/session/17/send/".to_owned(),
            vec![("script_name", "/x")],
            r#"{"generate_image": true}"#,
        ),
    ];
    for (name, path, extra, body) in h2 {
        let mut headers = vec![
            ("cookie", cookie.as_str()),
            ("content-type", "application/json"),
        ];
        headers.extend(extra);
        let before = saved.by_user(USER);
        let status = h2_post(proxy.proxy, &path, &headers, body).await;
        if saved.by_user(USER) > before {
            images.push(format!("{name} ({status:?})"));
        }
    }

    // Every request of the send view's corpus, in order.
    for (id, case) in corpus::corpus()
        .into_iter()
        .filter(|c| c.view == View::Send)
        .enumerate()
    {
        let before = saved.by_user(USER);
        let (bytes, half) = case.render(proxy.proxy, &format!("u{USER}"), id + 1);
        raw_http::send(proxy.proxy, &bytes, half, ANSWER_WITHIN);
        if saved.by_user(USER) > before {
            images.push(format!("#{} [{}] {}", id + 1, case.class, case.name));
        }
    }

    let total = saved.by_user(USER);
    println!("a free user trying every trick got {total} images saved by Django:");
    for image in &images {
        println!("  {image}");
    }
    assert!(
        total <= 3,
        "a free user (3 a day) got {total} images saved by Django:\n{}",
        images.join("\n")
    );
}
