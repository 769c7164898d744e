//! Path spellings, session id spellings, routing headers and methods.

use super::{Case, View, json_flag};

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

/// Spellings of session `token` (`S`: an ordinary session, `E`: an
/// image_editing one; see [`super::expand`]).
fn session_ids(token: char) -> Vec<(&'static str, String)> {
    vec![
        ("id/plain", format!("{{{token}}}")),
        ("id/zero-padded", format!("00{{{token}}}")),
        ("id/zero-padded", format!("{{{token}0:24}}")),
        // The send line fits gunicorn's 4094-byte request line, the probe's
        // longer path does not (414).
        ("id/zero-padded-4050", format!("{{{token}0:4050}}")),
        ("id/percent-encoded", format!("{{{token}%}}")),
        ("id/sign", format!("+{{{token}}}")),
        // Arabic-Indic digits; Django's `<int>` takes [0-9] only.
        ("id/unicode-digits", "%D9%A1%D9%A7".to_owned()),
    ]
}

pub(super) fn paths(cases: &mut Vec<Case>) {
    let bodies = [("flag true", Some("true")), ("no flag", None)];
    for (class, pattern) in SEND_PATHS {
        for (what, flag) in bodies {
            let target = pattern.replace("{id}", "{S}");
            cases.push(
                Case::new(class, format!("{target} {what}"), View::Send, target)
                    .json(&json_flag(flag)),
            );
        }
        // image_editing: generates whatever the flag (the probe says so).
        let target = pattern.replace("{id}", "{E}");
        cases.push(
            Case::new(class, format!("{target} image_editing"), View::Send, target)
                .json(&json_flag(None)),
        );
    }
    for (session, flag) in [('S', Some("true")), ('S', None), ('E', None)] {
        for (class, id) in session_ids(session) {
            let target = View::Send.path(&id);
            let name = format!("session as {id:.40} flag {flag:?}");
            cases.push(Case::new(class, name, View::Send, target).json(&json_flag(flag)));
        }
    }
    for view in [View::Drf, View::Form] {
        let prefix = view.path("").trim_end_matches("//send/").to_owned();
        let first = prefix.as_bytes()[1];
        let encoded = format!("/%{first:02x}{}", &prefix[2..]);
        let patterns = [
            ("path/plain", format!("{prefix}/{{S}}/send/")),
            ("path/percent-encoded", format!("{prefix}/{{S}}/s%65nd/")),
            ("path/percent-encoded", format!("{encoded}/{{S}}/send/")),
            (
                "path/percent-encoded-slash",
                format!("{prefix}/{{S}}%2Fsend/"),
            ),
            ("path/double-slash", format!("/{prefix}/{{S}}/send/")),
            ("path/dot-segment", format!("/x/..{prefix}/{{S}}/send/")),
            ("path/semicolon", format!("{prefix}/{{S}}/send/;x")),
            (
                "path/absolute-form",
                format!("{{ORIGIN}}{prefix}/{{S}}/send/"),
            ),
            ("path/no-trailing-slash", format!("{prefix}/{{S}}/send")),
        ];
        for (class, target) in patterns {
            let body = json_flag(Some("true"));
            cases.push(Case::new(class, format!("{target} flag true"), view, target).json(&body));
        }
        for (class, id) in session_ids('S') {
            let name = format!("session as {id:.40} flag true");
            cases.push(Case::new(class, name, view, view.path(&id)).json(&json_flag(Some("true"))));
        }
    }
}

pub(super) fn headers(cases: &mut Vec<Case>) {
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
            "/chat/session/{S}/send/",
        ),
        (
            "header/x-rewrite-url",
            "X-Rewrite-URL",
            "/chat/session/{S}/send/",
        ),
        ("header/path-info", "PATH_INFO", "/chat/session/{S}/send/"),
    ];
    for (class, name, value) in variants {
        for (session, flag, prefixed) in [
            ("{S}", Some("true"), true),
            ("{S}", Some("true"), false),
            ("{E}", None, true),
            ("{S}", None, true),
        ] {
            let path = View::Send.path(session);
            let target = if prefixed { format!("/x{path}") } else { path };
            let label = format!("{name}: {value} {target} flag {flag:?}");
            let case = Case::new(class, label, View::Send, target).header(name, value);
            cases.push(case.json(&json_flag(flag)));
        }
    }
    // A header named in `Connection` is hop-by-hop: the proxy removes it
    // before forwarding, after judging the body by it. `Content-Type`
    // named so reaches Django missing, and the send view then reads any
    // body with `json.loads`; the report token named so is never echoed.
    for (ct, connection) in [
        ("multipart/form-data; boundary=x", "Content-Type"),
        (
            "multipart/form-data; boundary=x",
            "Content-Type, X-Quota-Report-Token",
        ),
        ("application/x-www-form-urlencoded", "content-type"),
    ] {
        let label = format!("Connection: {connection} with Content-Type: {ct}, JSON flag true");
        let case = Case::new(
            "header/connection",
            label,
            View::Send,
            View::Send.path("{S}"),
        )
        .header("Connection", connection)
        .content_type(ct)
        .body(json_flag(Some("true")).as_bytes());
        cases.push(case);
    }
    // A prefix the path does not start with: gunicorn refuses it.
    let case = Case::new(
        "header/script-name",
        "SCRIPT_NAME: /y on /chat/...",
        View::Send,
        View::Send.path("{S}"),
    );
    cases.push(
        case.header("SCRIPT_NAME", "/y")
            .json(&json_flag(Some("true"))),
    );
}

pub(super) fn methods(cases: &mut Vec<Case>) {
    for method in ["PUT", "PATCH", "post", "Post", "POSt"] {
        // A route's method in another case: Django upper-cases the method,
        // and whether the WSGI server lets it through depends on the
        // server (gunicorn 21 lets `POSt` through as `POST`, 22+ refuses it).
        let class = if method.eq_ignore_ascii_case("post") {
            "method/case"
        } else {
            "method"
        };
        for view in [View::Send, View::Drf] {
            let mut case = Case::new(class, format!("{method} flag true"), view, view.path("{S}"));
            case.method = method.to_owned();
            cases.push(case.json(&json_flag(Some("true"))));
        }
    }
}
