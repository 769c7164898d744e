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

pub(super) fn paths(cases: &mut Vec<Case>) {
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

pub(super) fn methods(cases: &mut Vec<Case>) {
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
