//! The differential corpus: requests that Django and the proxy may read
//! differently, generated per view (the chat app's `send_message`, a DRF
//! view, a plain Django form view). Each [`Case`] is raw HTTP/1.1, sent as
//! is by `raw_http`; its `class` names the trick, so a report can say which
//! kinds of request get through.
// Included by tests/django.rs only (`#[path]`); `pub` for its other modules.
#![allow(dead_code, unreachable_pub)]

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
        Case::new("ordinary", "flag true", view, view.path("17")).json(&json_flag(Some("true")))
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
fn field(name: &str) -> String {
    format!("Content-Disposition: form-data; name=\"{name}\"")
}

/// The whole corpus.
pub fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    paths(&mut cases);
    headers(&mut cases);
    json_bodies(&mut cases);
    form_bodies(&mut cases);
    multipart_bodies(&mut cases);
    framing(&mut cases);
    methods(&mut cases);
    cases
}

/// Path spellings of `chat/session/<id>/send/`, `id` substituted.
const SEND_PATHS: &[(&str, &str)] = &[
    ("path/plain", "/chat/session/{id}/send/"),
    ("path/percent-encoded", "/chat/session/{id}/s%65nd/"),
    ("path/percent-encoded", "/%63hat/session/{id}/send/"),
    ("path/percent-encoded", "/chat/%73ession/{id}/send/"),
    ("path/percent-encoded", "/chat/session/{id}/%73%65%6E%64/"),
    ("path/percent-encoded", "/chat/session/{id}/%73%65%6e%64%2F"),
    ("path/percent-encoded-slash", "/chat/session/{id}%2Fsend/"),
    ("path/percent-encoded-slash", "/chat/session/{id}%2fsend%2f"),
    (
        "path/percent-encoded-slash",
        "/chat%2Fsession%2F{id}%2Fsend%2F",
    ),
    ("path/percent-encoded-slash", "/chat/session/{id}/send%2F"),
    ("path/semicolon", "/chat/session/{id}/send/;x=1"),
    ("path/semicolon", "/chat/session/{id};x/send/"),
    ("path/double-slash", "//chat/session/{id}/send/"),
    ("path/double-slash", "/chat//session/{id}/send/"),
    ("path/double-slash", "/chat/session/{id}//send/"),
    ("path/dot-segment", "/chat/session/{id}/../{id}/send/"),
    ("path/dot-segment", "/chat/./session/{id}/send/"),
    ("path/dot-segment", "/x/../chat/session/{id}/send/"),
    ("path/dot-segment", "/x/%2e%2e/chat/session/{id}/send/"),
    ("path/dot-segment", "/chat/session/{id}/send/."),
    ("path/case", "/CHAT/session/{id}/send/"),
    ("path/case", "/chat/session/{id}/Send/"),
    ("path/no-trailing-slash", "/chat/session/{id}/send"),
    ("path/query", "/chat/session/{id}/send/?generate_image=true"),
    ("path/query", "/chat/session/{id}/send/?"),
    ("path/fragment", "/chat/session/{id}/send/#x"),
    ("path/absolute-form", "{ORIGIN}/chat/session/{id}/send/"),
    ("path/absolute-form", "{ORIGIN}/chat/session/{id}/s%65nd/"),
    (
        "path/absolute-form",
        "http://elsewhere.invalid/chat/session/{id}/send/",
    ),
    ("path/invalid-utf8", "/chat/session/{id}/send/%ff"),
    ("path/invalid-utf8", "/chat/session/{id}/s%ffend/"),
    ("path/nul", "/chat/session/{id}/send/%00"),
    ("path/space", "/chat/session/{id}/send/%20"),
    ("path/backslash", "/chat/session/{id}\\send/"),
];

/// Spellings of the session id (the number itself is added).
fn session_ids(n: u32) -> Vec<(&'static str, String)> {
    let digits = n.to_string();
    vec![
        ("id/plain", digits.clone()),
        ("id/zero-padded", format!("00{digits}")),
        ("id/zero-padded", format!("{digits:0>24}")),
        // The send line fits gunicorn's 4094-byte request line, the probe's
        // longer path does not (414).
        ("id/zero-padded-4050", format!("{digits:0>4050}")),
        (
            "id/percent-encoded",
            digits.bytes().map(|b| format!("%{b:02X}")).collect(),
        ),
        ("id/sign", format!("+{digits}")),
        // Arabic-Indic digits; Django's `<int>` takes [0-9] only.
        ("id/unicode-digits", "%D9%A1%D9%A7".to_owned()),
    ]
}

fn paths(cases: &mut Vec<Case>) {
    let bodies = [("flag true", Some("true")), ("no flag", None)];
    for (class, pattern) in SEND_PATHS {
        for (what, flag) in bodies {
            let target = pattern.replace("{id}", "17");
            cases.push(
                Case::new(class, format!("{target} {what}"), View::Send, target)
                    .json(&json_flag(flag)),
            );
        }
        // image_editing: generates whatever the flag (the probe says so).
        let target = pattern.replace("{id}", "1017");
        cases.push(
            Case::new(class, format!("{target} image_editing"), View::Send, target)
                .json(&json_flag(None)),
        );
    }
    for (session, flag) in [(17, Some("true")), (17, None), (1017, None)] {
        for (class, id) in session_ids(session) {
            let target = View::Send.path(&id);
            let name = format!("session {session} as {:.40} flag {flag:?}", id);
            cases.push(Case::new(class, name, View::Send, target).json(&json_flag(flag)));
        }
    }
    for view in [View::Drf, View::Form] {
        let prefix = view.path("").trim_end_matches("//send/").to_owned();
        let first = prefix.as_bytes()[1];
        let encoded = format!("/%{first:02x}{}", &prefix[2..]);
        let patterns = [
            ("path/plain", format!("{prefix}/17/send/")),
            ("path/percent-encoded", format!("{prefix}/17/s%65nd/")),
            ("path/percent-encoded", format!("{encoded}/17/send/")),
            ("path/percent-encoded-slash", format!("{prefix}/17%2Fsend/")),
            ("path/double-slash", format!("/{prefix}/17/send/")),
            ("path/dot-segment", format!("/x/..{prefix}/17/send/")),
            ("path/semicolon", format!("{prefix}/17/send/;x")),
            ("path/absolute-form", format!("{{ORIGIN}}{prefix}/17/send/")),
            ("path/no-trailing-slash", format!("{prefix}/17/send")),
        ];
        for (class, target) in patterns {
            let body = json_flag(Some("true"));
            cases.push(Case::new(class, format!("{target} flag true"), view, target).json(&body));
        }
        for (class, id) in session_ids(17) {
            let name = format!("session 17 as {id:.40} flag true");
            cases.push(Case::new(class, name, view, view.path(&id)).json(&json_flag(Some("true"))));
        }
    }
}

fn headers(cases: &mut Vec<Case>) {
    let variants: &[(&str, &str, &str)] = &[
        ("header/script-name", "SCRIPT_NAME", "/x"),
        ("header/script-name", "Script_Name", "/x"),
        ("header/script-name", "script_name", "/x"),
        ("header/script-name", "SCRIPT-NAME", "/x"),
        ("header/x-script-name", "X-Script-Name", "/x"),
        ("header/x-forwarded-prefix", "X-Forwarded-Prefix", "/x"),
        ("header/x-forwarded-prefix", "X_Forwarded_Prefix", "/x"),
        (
            "header/x-original-url",
            "X-Original-URL",
            "/chat/session/17/send/",
        ),
        (
            "header/x-rewrite-url",
            "X-Rewrite-URL",
            "/chat/session/17/send/",
        ),
        ("header/path-info", "PATH_INFO", "/chat/session/17/send/"),
    ];
    for (class, name, value) in variants {
        for (session, flag, prefixed) in [
            (17, Some("true"), true),
            (17, Some("true"), false),
            (1017, None, true),
            (17, None, true),
        ] {
            let path = View::Send.path(&session.to_string());
            let target = if prefixed { format!("/x{path}") } else { path };
            let label = format!("{name}: {value} {target} flag {flag:?}");
            let case = Case::new(class, label, View::Send, target).header(name, value);
            cases.push(case.json(&json_flag(flag)));
        }
    }
    // A prefix the path does not start with: gunicorn refuses it.
    let case = Case::new(
        "header/script-name",
        "SCRIPT_NAME: /y on /chat/...",
        View::Send,
        View::Send.path("17"),
    );
    cases.push(
        case.header("SCRIPT_NAME", "/y")
            .json(&json_flag(Some("true"))),
    );
}

/// JSON values of the flag, as JSON text.
const JSON_VALUES: &[&str] = &[
    "true",
    "false",
    "\"true\"",
    "\"false\"",
    "\"\"",
    "\"0\"",
    "0",
    "1",
    "0.0",
    "-0.0",
    "1e-400",
    "1e400",
    "NaN",
    "Infinity",
    "-Infinity",
    "null",
    "[]",
    "[false]",
    "{}",
    "{\"a\": 0}",
    "\"tRuE\"",
    "\"TRUE\"",
    "\"True\"",
    "\"yes\"",
    "\"on\"",
    "\"1\"",
    "\"t\"",
    "\" \"",
    "\"\\u0074rue\"",
    "2",
    "1.0",
    "\"off\"",
    "\"no\"",
];

/// Whole JSON bodies with keys, nesting, encodings and junk.
fn odd_json() -> Vec<(&'static str, String, Vec<u8>)> {
    let utf16 = |text: &str, bom: bool, big: bool| -> Vec<u8> {
        let mut out: Vec<u8> = if !bom {
            vec![]
        } else if big {
            vec![0xFE, 0xFF]
        } else {
            vec![0xFF, 0xFE]
        };
        for unit in text.encode_utf16() {
            out.extend_from_slice(&if big {
                unit.to_be_bytes()
            } else {
                unit.to_le_bytes()
            });
        }
        out
    };
    let true_body = json_flag(Some("true"));
    let mut utf32 = Vec::new();
    for c in true_body.chars() {
        utf32.extend_from_slice(&(c as u32).to_le_bytes());
    }
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend_from_slice(true_body.as_bytes());
    let t = |s: &str| s.as_bytes().to_vec();
    vec![
        (
            "json/escaped-key",
            "key generate\\u005fimage".into(),
            t(r#"{"generate\u005fimage": true}"#),
        ),
        (
            "json/duplicate-key",
            "true then false".into(),
            t(r#"{"generate_image": true, "generate_image": false}"#),
        ),
        (
            "json/duplicate-key",
            "false then true".into(),
            t(r#"{"generate_image": false, "generate_image": true}"#),
        ),
        (
            "json/nested",
            "nested under data".into(),
            t(r#"{"data": {"generate_image": true}}"#),
        ),
        (
            "json/top-level",
            "array of one object".into(),
            t(r#"[{"generate_image": true}]"#),
        ),
        (
            "json/top-level",
            "a string".into(),
            t(r#""generate_image""#),
        ),
        (
            "json/key-variant",
            "key with a space".into(),
            t(r#"{"generate_image ": true}"#),
        ),
        (
            "json/key-variant",
            "capitalised key".into(),
            t(r#"{"Generate_Image": true}"#),
        ),
        ("json/encoding", "UTF-8 BOM".into(), bom),
        (
            "json/encoding",
            "UTF-16LE with BOM".into(),
            utf16(&true_body, true, false),
        ),
        (
            "json/encoding",
            "UTF-16BE with BOM".into(),
            utf16(&true_body, true, true),
        ),
        (
            "json/encoding",
            "UTF-16LE without BOM".into(),
            utf16(&true_body, false, false),
        ),
        ("json/encoding", "UTF-32LE".into(), utf32),
        (
            "json/encoding",
            "invalid UTF-8 in message".into(),
            b"{\"message\": \"\xff\", \"generate_image\": true}".to_vec(),
        ),
        (
            "json/whitespace",
            "leading newlines".into(),
            t("\r\n\t {\"generate_image\": true}"),
        ),
        (
            "json/malformed",
            "trailing garbage".into(),
            t(r#"{"generate_image": true} x"#),
        ),
        (
            "json/malformed",
            "two objects".into(),
            t(r#"{"generate_image": false}{"generate_image": true}"#),
        ),
        (
            "json/malformed",
            "trailing comma".into(),
            t(r#"{"generate_image": true,}"#),
        ),
        (
            "json/malformed",
            "single quotes".into(),
            t("{'generate_image': true}"),
        ),
        (
            "json/malformed",
            "truncated".into(),
            t(r#"{"generate_image": true"#),
        ),
        ("json/malformed", "empty body".into(), Vec::new()),
        (
            "json/deep",
            "flag after deep nesting".into(),
            t(&format!(
                "{{\"m\": {}1{}, \"generate_image\": true}}",
                "[".repeat(200),
                "]".repeat(200)
            )),
        ),
    ]
}

fn json_bodies(cases: &mut Vec<Case>) {
    let content_types: &[(View, &[&str])] = &[
        (
            View::Send,
            &[
                "application/json",
                "application/x-www-form-urlencoded",
                "",
                "text/plain",
            ],
        ),
        (
            View::Drf,
            &[
                "application/json",
                "text/plain",
                "application/*",
                "application/vnd.api+json",
                "APPLICATION/JSON; charset=UTF-8",
            ],
        ),
        (
            View::Form,
            &[
                "application/json",
                "Application/JSON",
                "application/json; charset=latin-1",
                "text/plain",
            ],
        ),
    ];
    for (view, types) in content_types {
        for ct in *types {
            for value in JSON_VALUES {
                let body = json_flag(Some(value));
                let case = Case::new(
                    "json/value",
                    format!("{ct:?} generate_image={value}"),
                    *view,
                    view.path("17"),
                );
                cases.push(with_type(case, ct).body(body.as_bytes()));
            }
        }
        for (class, name, body) in odd_json() {
            for ct in types.iter().take(2) {
                let case = Case::new(class, format!("{ct:?} {name}"), *view, view.path("17"));
                cases.push(with_type(case, ct).body(&body));
            }
        }
        // The charset parameter names the body's encoding for DRF.
        let true_body = json_flag(Some("true"));
        let utf16: Vec<u8> = true_body
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        for ct in [
            "application/json; charset=utf-16le",
            "application/json; charset=utf-16",
            "application/json; charset=bogus",
        ] {
            let case = Case::new(
                "json/charset",
                format!("{ct:?} UTF-16LE body"),
                *view,
                view.path("17"),
            );
            cases.push(case.content_type(ct).body(&utf16));
            let case = Case::new(
                "json/charset",
                format!("{ct:?} UTF-8 body"),
                *view,
                view.path("17"),
            );
            cases.push(case.content_type(ct).body(true_body.as_bytes()));
        }
    }
}

fn with_type(case: Case, content_type: &str) -> Case {
    if content_type.is_empty() {
        case
    } else {
        case.content_type(content_type)
    }
}

const FORM_VALUES: &[&str] = &[
    "true", "True", "tRuE", "TRUE", "1", "on", "ON", "yes", "t", "y", "false", "0", "", "%74rue",
    "true%00", "+true", "true+", "%20true",
];

fn form_bodies(cases: &mut Vec<Case>) {
    let types = [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "APPLICATION/X-WWW-FORM-URLENCODED",
        "",
    ];
    for view in [View::Send, View::Drf, View::Form] {
        for value in FORM_VALUES {
            let body = format!("message=hi&generate_image={value}");
            let case = Case::new(
                "form/value",
                format!("generate_image={value}"),
                view,
                view.path("17"),
            );
            cases.push(case.content_type(types[0]).body(body.as_bytes()));
        }
        let bodies = [
            (
                "form/duplicate-key",
                "generate_image=true&generate_image=false",
            ),
            (
                "form/duplicate-key",
                "generate_image=false&generate_image=true",
            ),
            ("form/escaped-key", "generate%5Fimage=true"),
            ("form/escaped-key", "generate%5fimage=on"),
            ("form/key-variant", "generate_image[]=true"),
            ("form/key-variant", "Generate_Image=true"),
            ("form/separator", "a=1;generate_image=true"),
            ("form/no-value", "generate_image"),
        ];
        for (class, body) in bodies {
            for ct in &types[..2] {
                let case = Case::new(class, format!("{ct:?} {body}"), view, view.path("17"));
                cases.push(case.content_type(ct).body(body.as_bytes()));
            }
        }
        for ct in &types[2..] {
            let case = Case::new(
                "form/content-type",
                format!("{ct:?} generate_image=true"),
                view,
                view.path("17"),
            );
            cases.push(with_type(case, ct).body(b"generate_image=true"));
        }
        let case = Case::new(
            "form/charset",
            "charset=utf-16 on an ASCII body",
            view,
            view.path("17"),
        );
        cases.push(
            case.content_type("application/x-www-form-urlencoded; charset=utf-16")
                .body(b"generate_image=true"),
        );
    }
}

fn multipart_bodies(cases: &mut Vec<Case>) {
    const B: &str = "XyZ-b0undary";
    let ct = format!("multipart/form-data; boundary={B}");
    let msg = (field("message"), b"hi".to_vec());
    for view in [View::Send, View::Drf, View::Form] {
        for value in [
            "true", "True", "tRuE", "1", "on", "true ", " true", "false", "",
        ] {
            let body = multipart(
                B,
                &[
                    (&msg.0, &msg.1),
                    (&field("generate_image"), value.as_bytes()),
                ],
            );
            let case = Case::new(
                "multipart/value",
                format!("generate_image={value:?}"),
                view,
                view.path("17"),
            );
            cases.push(case.content_type(&ct).body(&body));
        }
        let flag = |headers: &str, value: &[u8]| multipart(B, &[(headers, value)]);
        let plain = flag(&field("generate_image"), b"true");
        let other = multipart("OTHER", &[(&field("generate_image"), b"true")]);
        let variants: Vec<(&str, &str, String, Vec<u8>)> = vec![
            (
                "multipart/boundary",
                "quoted boundary",
                format!("multipart/form-data; boundary=\"{B}\""),
                plain.clone(),
            ),
            (
                "multipart/boundary",
                "two boundaries, body uses the last",
                format!("multipart/form-data; boundary=OTHER; boundary={B}"),
                plain.clone(),
            ),
            (
                "multipart/boundary",
                "two boundaries, body uses the first",
                format!("multipart/form-data; boundary=OTHER; boundary={B}"),
                other.clone(),
            ),
            (
                "multipart/boundary",
                "boundary*= (RFC 2231)",
                format!("multipart/form-data; boundary*=utf-8''{B}"),
                plain.clone(),
            ),
            (
                "multipart/boundary",
                "boundary and boundary*=",
                format!("multipart/form-data; boundary=OTHER; boundary*=utf-8''{B}"),
                plain.clone(),
            ),
            (
                "multipart/boundary",
                "no boundary",
                "multipart/form-data".into(),
                plain.clone(),
            ),
            (
                "multipart/content-type",
                "upper case type and parameter",
                format!("Multipart/Form-Data; BOUNDARY={B}"),
                plain.clone(),
            ),
            (
                "multipart/content-type",
                "multipart/mixed",
                format!("multipart/mixed; boundary={B}"),
                plain.clone(),
            ),
            (
                "multipart/content-type",
                "charset parameter",
                format!("multipart/form-data; charset=utf-16; boundary={B}"),
                plain.clone(),
            ),
            (
                "multipart/name",
                "spaces around the name",
                ct.clone(),
                flag(
                    "Content-Disposition: form-data; name=\" generate_image \"",
                    b"true",
                ),
            ),
            (
                "multipart/name",
                "unquoted name",
                ct.clone(),
                flag(
                    "Content-Disposition: form-data; name=generate_image",
                    b"true",
                ),
            ),
            (
                "multipart/name",
                "name*= (RFC 2231)",
                ct.clone(),
                flag(
                    "Content-Disposition: form-data; name*=utf-8''generate_image",
                    b"true",
                ),
            ),
            (
                "multipart/name",
                "percent-encoded name",
                ct.clone(),
                flag(
                    "Content-Disposition: form-data; name=\"generate%5Fimage\"",
                    b"true",
                ),
            ),
            (
                "multipart/name",
                "two name parameters",
                ct.clone(),
                flag(
                    "Content-Disposition: form-data; name=\"x\"; name=\"generate_image\"",
                    b"true",
                ),
            ),
            (
                "multipart/name",
                "upper-case header and type",
                ct.clone(),
                flag(
                    "CONTENT-DISPOSITION: FORM-DATA; NAME=\"generate_image\"",
                    b"true",
                ),
            ),
            (
                "multipart/duplicate",
                "true then false",
                ct.clone(),
                multipart(
                    B,
                    &[
                        (&field("generate_image"), b"true"),
                        (&field("generate_image"), b"false"),
                    ],
                ),
            ),
            (
                "multipart/duplicate",
                "false then true",
                ct.clone(),
                multipart(
                    B,
                    &[
                        (&field("generate_image"), b"false"),
                        (&field("generate_image"), b"true"),
                    ],
                ),
            ),
            (
                "multipart/file",
                "flag as a file part",
                ct.clone(),
                flag(
                    "Content-Disposition: form-data; name=\"generate_image\"; filename=\"f\"",
                    b"true",
                ),
            ),
            (
                "multipart/transfer-encoding",
                "base64 field",
                ct.clone(),
                flag(
                    &format!(
                        "{}\r\nContent-Transfer-Encoding: base64",
                        field("generate_image")
                    ),
                    b"dHJ1ZQ==",
                ),
            ),
            (
                "multipart/transfer-encoding",
                "quoted-printable field",
                ct.clone(),
                flag(
                    &format!(
                        "{}\r\nContent-Transfer-Encoding: quoted-printable",
                        field("generate_image")
                    ),
                    b"=74rue",
                ),
            ),
            (
                "multipart/part-charset",
                "UTF-16 part",
                ct.clone(),
                flag(
                    &format!(
                        "{}\r\nContent-Type: text/plain; charset=utf-16le",
                        field("generate_image")
                    ),
                    &"true"
                        .encode_utf16()
                        .flat_map(u16::to_le_bytes)
                        .collect::<Vec<u8>>(),
                ),
            ),
            (
                "multipart/line-endings",
                "LF only",
                ct.clone(),
                plain.iter().copied().filter(|&b| b != b'\r').collect(),
            ),
            (
                "multipart/framing",
                "preamble and epilogue",
                ct.clone(),
                [b"preamble\r\n".as_slice(), &plain, b"epilogue"].concat(),
            ),
            (
                "multipart/framing",
                "no closing boundary",
                ct.clone(),
                plain[..plain.len() - B.len() - 6].to_vec(),
            ),
            (
                "multipart/framing",
                "flag after the closing boundary",
                ct.clone(),
                [plain.clone(), flag(&field("generate_image"), b"true")].concat(),
            ),
            (
                "multipart/framing",
                "whitespace after the boundary line",
                ct.clone(),
                plain.replacen(&format!("--{B}\r\n"), &format!("--{B}  \r\n")),
            ),
        ];
        for (class, name, content_type, body) in variants {
            cases.push(
                Case::new(class, name, view, view.path("17"))
                    .content_type(&content_type)
                    .body(&body),
            );
        }
    }
}

/// `replacen` for byte strings (first occurrence).
trait ReplaceBytes {
    fn replacen(&self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceBytes for Vec<u8> {
    fn replacen(&self, from: &str, to: &str) -> Vec<u8> {
        let from = from.as_bytes();
        match self.windows(from.len()).position(|w| w == from) {
            Some(i) => [&self[..i], to.as_bytes(), &self[i + from.len()..]].concat(),
            None => self.clone(),
        }
    }
}

fn framing(cases: &mut Vec<Case>) {
    for view in [View::Send, View::Drf, View::Form] {
        for (what, flag) in [("flag true", Some("true")), ("flag false", Some("false"))] {
            let body = json_flag(flag);
            let variants = [
                ("framing/chunked", "chunked", Framing::Chunked(7), vec![]),
                (
                    "framing/chunked",
                    "chunked, one chunk",
                    Framing::Chunked(4096),
                    vec![],
                ),
                (
                    "framing/length-and-chunked",
                    "Content-Length and chunked",
                    Framing::LengthAndChunked,
                    vec![],
                ),
                (
                    "framing/no-length",
                    "neither length nor chunked",
                    Framing::Neither,
                    vec![],
                ),
                (
                    "framing/truncated",
                    "Content-Length 5 bytes too long",
                    Framing::Truncated(5),
                    vec![],
                ),
                (
                    "framing/expect",
                    "Expect: 100-continue",
                    Framing::Length,
                    vec![("Expect", "100-continue")],
                ),
                (
                    "framing/content-encoding",
                    "Content-Encoding: gzip (not compressed)",
                    Framing::Length,
                    vec![("Content-Encoding", "gzip")],
                ),
                (
                    "framing/content-encoding",
                    "Content-Encoding: identity",
                    Framing::Length,
                    vec![("Content-Encoding", "identity")],
                ),
            ];
            for (class, name, framing, extra) in variants {
                let mut case = Case::new(class, format!("{name} {what}"), view, view.path("17"))
                    .json(&body)
                    .framing(framing);
                for (h, v) in extra {
                    case = case.header(h, v);
                }
                cases.push(case);
            }
            // A real gzip body of the JSON.
            let case = Case::new(
                "framing/content-encoding",
                format!("gzip body {what}"),
                view,
                view.path("17"),
            );
            cases.push(
                case.json(&body)
                    .header("Content-Encoding", "gzip")
                    .body(&gzip(body.as_bytes())),
            );
        }
    }
}

/// A gzip member holding `data` in one stored (uncompressed) deflate block.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let len = u16::try_from(data.len()).expect("small body");
    out.push(1);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&u32::try_from(data.len()).expect("small body").to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn methods(cases: &mut Vec<Case>) {
    for method in ["PUT", "PATCH", "post", "Post"] {
        for view in [View::Send, View::Drf] {
            let mut case = Case::new(
                "method",
                format!("{method} flag true"),
                view,
                view.path("17"),
            );
            case.method = method.to_owned();
            cases.push(case.json(&json_flag(Some("true"))));
        }
    }
}
