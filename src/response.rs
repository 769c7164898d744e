//! Responses the proxy makes itself (413, 401, 502, 503, 504, denials): a JSON
//! body `{"error": "<message>", …}` that the Django frontend already reads.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// The content type of every JSON answer the proxy makes.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// A response with `status` and the JSON `body`.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

/// A response with `status` and the body `{"error": message}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, &serde_json::json!({ "error": message }))
}
