//! Multipart bodies: value spellings, boundaries, field names, duplicate
//! fields, file parts, transfer encodings, line endings and framing.

use super::{Case, View, field, multipart};

pub(super) fn multipart_bodies(cases: &mut Vec<Case>) {
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
                view.path("{S}"),
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
                "multipart/boundary+rfc2231/parameter",
                "boundary*= (RFC 2231)",
                format!("multipart/form-data; boundary*=utf-8''{B}"),
                plain.clone(),
            ),
            (
                "multipart/boundary+rfc2231/parameter",
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
                "charset/not-utf8",
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
                "multipart/name+rfc2231/parameter",
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
                Case::new(class, name, view, view.path("{S}"))
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
