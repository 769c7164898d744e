//! JSON bodies: flag values under several content types, odd keys,
//! nesting, encodings, charsets and malformed JSON.

use super::{Case, View, json_flag, with_type};

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

pub(super) fn json_bodies(cases: &mut Vec<Case>) {
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
                    view.path("{S}"),
                );
                cases.push(with_type(case, ct).body(body.as_bytes()));
            }
        }
        for (class, name, body) in odd_json() {
            for ct in types.iter().take(2) {
                let case = Case::new(class, format!("{ct:?} {name}"), *view, view.path("{S}"));
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
                "charset/not-utf8",
                format!("{ct:?} UTF-16LE body"),
                *view,
                view.path("{S}"),
            );
            cases.push(case.content_type(ct).body(&utf16));
            let case = Case::new(
                "charset/not-utf8",
                format!("{ct:?} UTF-8 body"),
                *view,
                view.path("{S}"),
            );
            cases.push(case.content_type(ct).body(true_body.as_bytes()));
        }
    }
}
