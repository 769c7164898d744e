//! A blocking HTTP/1.1 client that sends exactly the bytes it is given (odd
//! request targets, duplicate headers, broken framing) and reads one
//! response, bounded by a deadline. The differential Django harness needs
//! it: hyper's client would normalise or refuse most of its corpus.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One response, as far as it could be read.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code; 0 when no response head arrived.
    pub status: u16,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
    /// Why reading stopped early, if it did (timeout, reset, bad head).
    pub error: Option<String>,
}

impl RawResponse {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` to `addr` and reads one response within `deadline`.
/// With `half_close`, the write side is shut after the request (the peer
/// sees end of input, e.g. for a body shorter than its Content-Length).
pub fn send(addr: SocketAddr, request: &[u8], half_close: bool, deadline: Duration) -> RawResponse {
    let failed = |error: String| RawResponse {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        error: Some(error),
    };
    let mut stream = match TcpStream::connect_timeout(&addr, deadline) {
        Ok(stream) => stream,
        Err(e) => return failed(format!("connect {addr}: {e}")),
    };
    let until = Instant::now() + deadline;
    // A peer that answers before reading the whole request may reset the
    // connection under our write; what it answered is still worth reading.
    let _ = stream.set_write_timeout(Some(deadline));
    let write_error = stream.write_all(request).err();
    if half_close || write_error.is_some() {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut error = None;
    loop {
        if let Some(done) = complete(&buf) {
            buf.truncate(done);
            break;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            error = Some(format!("no complete response within {deadline:?}"));
            break;
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                error = Some(format!("read: {e}"));
                break;
            }
        }
    }
    let mut response = parse(&buf);
    if response.status == 0 && response.error.is_none() {
        response.error = Some(match (&error, &write_error) {
            (Some(e), _) => e.clone(),
            (None, Some(e)) => format!("write: {e}; connection closed without a response"),
            (None, None) => "connection closed without a response".to_owned(),
        });
    } else if response.error.is_none() {
        response.error = error;
    }
    response
}

/// The length of the first complete response in `buf`, if there is one.
fn complete(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = head.parse(buf) else {
        return None;
    };
    // 1xx heads (100 Continue) come before the real one.
    if head.code.is_some_and(|c| (100..200).contains(&c)) {
        return complete(&buf[head_len..]).map(|n| head_len + n);
    }
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    if matches!(head.code, Some(204 | 304)) {
        return Some(head_len);
    }
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return dechunk(&buf[head_len..]).map(|(_, used)| head_len + used);
    }
    if let Some(length) = header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        return (buf.len() >= head_len + length).then_some(head_len + length);
    }
    None
}

/// De-chunks `body`; the payload and the bytes used, once complete.
fn dechunk(mut body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let start = body.len();
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
        let size = usize::from_str_radix(&size_text, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let end = body.windows(2).position(|w| w == b"\r\n")?;
                body = &body[end + 2..];
                if end == 0 {
                    return Some((out, start - body.len()));
                }
            }
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Parses whatever arrived into a response (status 0 if no head).
fn parse(buf: &[u8]) -> RawResponse {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut headers);
    let head_len = match head.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return RawResponse {
                status: 0,
                headers: Vec::new(),
                body: Vec::new(),
                error: None,
            };
        }
        Err(e) => {
            return RawResponse {
                status: 0,
                headers: Vec::new(),
                body: Vec::new(),
                error: Some(format!("unparseable response head: {e}")),
            };
        }
    };
    let status = head.code.unwrap_or(0);
    if (100..200).contains(&status) {
        return parse(&buf[head_len..]);
    }
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let raw_body = &buf[head_len..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(raw_body).map_or_else(|| raw_body.to_vec(), |(b, _)| b)
    } else {
        raw_body.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
        error: None,
    }
}

/// Sends one HTTP/2 request (h2c with prior knowledge) to `addr` and reads
/// its response within `deadline`. Header names are lower-cased (HTTP/2
/// requires it); the request target must be a valid URI path.
pub async fn send_h2(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    deadline: Duration,
) -> RawResponse {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(name.to_ascii_lowercase(), value);
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("not a valid HTTP/2 request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("h2 request: {e}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("h2 body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok::<_, String>(RawResponse {
            status,
            headers,
            body,
            error: None,
        })
    };
    let failed = |error: String| RawResponse {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        error: Some(error),
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => failed(e),
        Err(_) => failed(format!("no complete HTTP/2 response within {deadline:?}")),
    }
}

/// Sends `request` as it is on a new connection to `addr` and returns the
/// status of the answer's first line, or why none came within `within`
/// (the connection may stay open: only the status line is read).
pub async fn status_on_new_connection(
    addr: SocketAddr,
    request: &[u8],
    within: Duration,
) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream
                .read(&mut buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed before an answer".to_owned());
            }
            received.extend_from_slice(&buf[..n]);
            if let Some(end) = received.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&received[..end]).into_owned();
                return line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or(format!("not a status line: {line}"));
            }
        }
    };
    tokio::time::timeout(within, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}
