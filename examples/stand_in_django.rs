//! A stand-in for the Django app, so the proxy can be tried with nothing
//! else installed:
//!
//! ```text
//! cargo run --example stand_in_django          # listens on 127.0.0.1:8000
//! cargo run --release                          # quota-proxy on 127.0.0.1:8080
//! ```
//!
//! It answers the two routes of `config/quota-proxy.toml` the way the Django
//! endpoints do once they report usage: a request that asks for an image
//! "saves" one and says so, the web view in the `X-Images-Saved` header, the
//! API in the `images_saved` JSON field. Every other path answers 200. It
//! logs each request, so you can see which ones the proxy let through.
//! `STAND_IN_ADDR` changes the address.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use quota_proxy::config::FlagRules;
use quota_proxy::flag::{self, FlagVerdict};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::var("STAND_IN_ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000)));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("stand-in Django listening on http://{addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(answer);
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("stand-in Django: connection error: {e}");
            }
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path();
    let user = parts
        .headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous");
    let web_view = path.starts_with("/chat/session/") && path.ends_with("/send/");
    let api = path.starts_with("/api/chatbot/sessions/") && path.ends_with("/validate_message/");
    if !(parts.method == http::Method::POST && (web_view || api)) {
        println!("stand-in Django: {} {path} (user {user})", parts.method);
        return Ok(text(StatusCode::OK, format!("stand-in Django: {path}\n")));
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let verdict = flag::detect(
        content_type,
        body,
        parts.uri.query(),
        "generate_image",
        &FlagRules::default(),
    );
    let generate = matches!(verdict, FlagVerdict::Flagged(_));
    println!(
        "stand-in Django: {} {path} (user {user}) generate_image={generate}{}",
        parts.method,
        if generate { " → saved 1 image" } else { "" }
    );
    let saved = u32::from(generate);
    if web_view {
        let mut response = text(
            StatusCode::OK,
            format!("reply from the model; images saved: {saved}\n"),
        );
        response
            .headers_mut()
            .insert("x-images-saved", http::HeaderValue::from(saved));
        Ok(response)
    } else {
        let body = serde_json::json!({ "valid": true, "images_saved": saved }).to_string();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
