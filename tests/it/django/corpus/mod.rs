//! The differential corpus: requests that Django and the proxy may read
//! differently, generated per view (the chat app's `send_message`, a DRF
//! view, a plain Django form view). Each [`Case`] is raw HTTP/1.1, sent as
//! is by `raw_http`; its `class` names the trick, so a report can say which
//! kinds of request get through.
#![allow(dead_code, unreachable_pub)]

mod bodies;
mod json;
mod multipart;
mod paths;

use std::net::SocketAddr;

/// Which view (and so which proxy preset) a case is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `chat/session/<int>/send/`: `flag_rules = "django-send-message"`.
    Send,
    /// `api/drf/session/<int>/send/`: `flag_rules = "drf"`.
    Drf,
    /// `form/session/<int>/send/`: `flag_rules = "django-form"`.
    Form,
}

impl View {
    /// The path of session `id` on this view.
    pub fn path(self, id: &str) -> String {
        match self {
            View::Send => format!("/chat/session/{id}/send/"),
            View::Drf => format!("/api/drf/session/{id}/send/"),
            View::Form => format!("/form/session/{id}/send/"),
        }
    }
}

/// Ordinary sessions of case `n` are `ORDINARY_FROM + n`.
pub const ORDINARY_FROM: u64 = 100;
/// Sessions from this id on are `image_editing` (as in
/// `tests/django/harness/views.py`): case `n`'s is `IMAGE_EDITING_FROM + n`.
pub const IMAGE_EDITING_FROM: u64 = 1_000_000_000;

/// Expands session tokens in `text`: `{S}` is the ordinary session, `{E}`
/// the image_editing one; `{S%}` its digits percent-encoded; `{S0:N}` it
/// zero-padded to N digits. Other braces (`{ORIGIN}`) stay.
pub fn expand(text: &str, ordinary: u64, editing: u64) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let token = &after[..close];
        let number = match token.chars().next() {
            Some('S') => Some(ordinary),
            Some('E') => Some(editing),
            _ => None,
        };
        let spec = token.get(1..).unwrap_or("");
        let expanded = number.and_then(|n| match spec {
            "" => Some(n.to_string()),
            "%" => Some(n.to_string().bytes().map(|b| format!("%{b:02X}")).collect()),
            _ => {
                let width: usize = spec.strip_prefix("0:")?.parse().ok()?;
                Some(format!("{n:0>width$}"))
            }
        });
        match expanded {
            Some(text) => out.push_str(&text),
            None => out.push_str(&rest[open..=open + 1 + close]),
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// How the body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` of the body.
    Length,
    /// `Transfer-Encoding: chunked`, in chunks of this many bytes.
    Chunked(usize),
    /// Both `Content-Length` and `Transfer-Encoding: chunked`.
    LengthAndChunked,
    /// No length, no chunking (the body bytes are still sent).
    Neither,
    /// `Content-Length` this much larger than the body; the client then
    /// half-closes (a truncated body).
    Truncated(usize),
}

/// One request of the corpus.
#[derive(Debug, Clone)]
pub struct Case {
    /// The kind of trick, e.g. `path/percent-encoded` (the report groups by it).
    pub class: String,
    /// What exactly this case is.
    pub name: String,
    /// The view it targets.
    pub view: View,
    /// The request method.
    pub method: String,
    /// The request target; `{ORIGIN}` becomes `http://<addr>`.
    pub target: String,
    /// Extra headers (Host, Cookie, Connection and framing are added).
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// How the body is framed.
    pub framing: Framing,
}

impl Case {
    /// A POST of `target` with no headers and an empty body.
    pub fn new(class: &str, name: impl Into<String>, view: View, target: String) -> Self {
        Case {
            class: class.to_owned(),
            name: name.into(),
            view,
            method: "POST".to_owned(),
            target,
            headers: Vec::new(),
            body: Vec::new(),
            framing: Framing::Length,
        }
    }

    /// An ordinary flagged request on `view`: the plain path, JSON
    /// `"generate_image": true`.
    pub fn ordinary(view: View) -> Self {
        Case::new("ordinary", "flag true", view, view.path("{S}")).json(&json_flag(Some("true")))
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A JSON body (`Content-Type: application/json`).
    pub fn json(self, body: &str) -> Self {
        self.content_type("application/json").body(body.as_bytes())
    }

    /// Adds a Content-Type.
    pub fn content_type(self, value: &str) -> Self {
        self.header("Content-Type", value)
    }

    /// Sets the body bytes.
    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    /// Sets the framing.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// The case with its session tokens expanded (see [`expand`]) for case
    /// number `n`: every case gets sessions of its own, so what the proxy
    /// remembers about a session (probe answers, sessions that saved images
    /// unflagged) cannot carry over from one case to the next.
    pub fn concrete(&self, n: usize) -> Case {
        let n = n as u64;
        let (ordinary, editing) = (ORDINARY_FROM + n, IMAGE_EDITING_FROM + n);
        let mut out = self.clone();
        out.target = expand(&self.target, ordinary, editing);
        for (_, value) in &mut out.headers {
            *value = expand(value, ordinary, editing);
        }
        out
    }

    /// Whether the case is worth sending over HTTP/2 too: its trick is in
    /// the path, the session id or a header (bodies and framing are the same
    /// once the proxy has them), and its target is an origin-form path.
    pub fn h2_worthy(&self) -> bool {
        let trick = ["path/", "id/", "header/"]
            .iter()
            .any(|p| self.class.starts_with(p));
        trick
            && self.method == "POST"
            && self.framing == Framing::Length
            && self.target.starts_with('/')
    }

    /// The request's bytes for a client at `addr` with session cookie
    /// `cookie`, tagged `X-Harness-Case: case_id`; and whether to
    /// half-close after sending.
    pub fn render(&self, addr: SocketAddr, cookie: &str, case_id: usize) -> (Vec<u8>, bool) {
        let target = self.target.replace("{ORIGIN}", &format!("http://{addr}"));
        let mut out = format!("{} {target} HTTP/1.1\r\nHost: {addr}\r\n", self.method).into_bytes();
        let mut head = |line: String| out.extend_from_slice(line.as_bytes());
        head(format!("Cookie: sessionid={cookie}\r\n"));
        head(format!("X-Harness-Case: {case_id}\r\n"));
        head("Connection: close\r\n".to_owned());
        for (name, value) in &self.headers {
            head(format!("{name}: {value}\r\n"));
        }
        let body = &self.body;
        let mut half_close = false;
        let payload = match self.framing {
            Framing::Length => {
                head(format!("Content-Length: {}\r\n", body.len()));
                body.clone()
            }
            Framing::Chunked(size) => {
                head("Transfer-Encoding: chunked\r\n".to_owned());
                chunked(body, size)
            }
            Framing::LengthAndChunked => {
                head(format!("Content-Length: {}\r\n", body.len()));
                head("Transfer-Encoding: chunked\r\n".to_owned());
                chunked(body, 8)
            }
            Framing::Neither => body.clone(),
            Framing::Truncated(missing) => {
                head(format!("Content-Length: {}\r\n", body.len() + missing));
                half_close = true;
                body.clone()
            }
        };
        head("\r\n".to_owned());
        out.extend_from_slice(&payload);
        (out, half_close)
    }
}

fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `{"message": "hi", "generate_image": <value>}` (no flag when `None`).
pub fn json_flag(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{{\"message\": \"hi\", \"generate_image\": {v}}}"),
        None => "{\"message\": \"hi\"}".to_owned(),
    }
}

/// A multipart body with `boundary` and the given raw parts (each part's
/// headers and value), joined with CRLF, with a closing boundary.
pub fn multipart(boundary: &str, parts: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (headers, value) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n{headers}\r\n\r\n").as_bytes());
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// A multipart field header for `name`.
pub(super) fn field(name: &str) -> String {
    format!("Content-Disposition: form-data; name=\"{name}\"")
}

/// The whole corpus.
pub fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    paths::paths(&mut cases);
    paths::headers(&mut cases);
    json::json_bodies(&mut cases);
    bodies::form_bodies(&mut cases);
    multipart::multipart_bodies(&mut cases);
    bodies::framing(&mut cases);
    paths::methods(&mut cases);
    cases
}

pub(super) fn with_type(case: Case, content_type: &str) -> Case {
    if content_type.is_empty() {
        case
    } else {
        case.content_type(content_type)
    }
}
