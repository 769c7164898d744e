//! Urlencoded bodies, and the framing of a body on the wire (chunked,
//! lengths, truncation, Expect, Content-Encoding).

use super::{Case, Framing, View, json_flag, with_type};

const FORM_VALUES: &[&str] = &[
    "true", "True", "tRuE", "TRUE", "1", "on", "ON", "yes", "t", "y", "false", "0", "", "%74rue",
    "true%00", "+true", "true+", "%20true",
];

pub(super) fn form_bodies(cases: &mut Vec<Case>) {
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
                view.path("{S}"),
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
                let case = Case::new(class, format!("{ct:?} {body}"), view, view.path("{S}"));
                cases.push(case.content_type(ct).body(body.as_bytes()));
            }
        }
        for ct in &types[2..] {
            let case = Case::new(
                "form/content-type",
                format!("{ct:?} generate_image=true"),
                view,
                view.path("{S}"),
            );
            cases.push(with_type(case, ct).body(b"generate_image=true"));
        }
        let case = Case::new(
            // A fail-closed class as soon as a mutation makes the body
            // other than ASCII (docs/flag-rules.md).
            "form/charset+charset/not-utf8",
            "charset=utf-16 on an ASCII body",
            view,
            view.path("{S}"),
        );
        cases.push(
            case.content_type("application/x-www-form-urlencoded; charset=utf-16")
                .body(b"generate_image=true"),
        );
    }
}

pub(super) fn framing(cases: &mut Vec<Case>) {
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
                let mut case = Case::new(class, format!("{name} {what}"), view, view.path("{S}"))
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
                view.path("{S}"),
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
fn gzip(data: &[u8]) -> Vec<u8> {
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
