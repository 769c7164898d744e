//! The Django presets' value tables: `"django-send-message"` (the
//! production view), `"django-form"` (a plain view), and Django's multipart
//! parser under them.

use super::*;

#[tokio::test]
async fn send_message_json_is_python_truthiness() {
    // `data.get('generate_image', False)`, then `if generate_image:`.
    let cases = [
        ("true", Y),
        ("false", N),
        (r#""false""#, Y),
        (r#""0""#, Y),
        (r#""False""#, Y),
        (r#"" ""#, Y),
        (r#""""#, N),
        ("0", N),
        ("0.0", N),
        ("-0.0", N),
        ("0e10", N),
        ("1e-400", N),
        ("1e400", Y),
        ("2", Y),
        ("-1", Y),
        ("0.5", Y),
        ("NaN", Y),
        ("Infinity", Y),
        ("-Infinity", Y),
        ("[]", N),
        ("[0]", Y),
        ("{}", N),
        (r#"{"a": 0}"#, Y),
        ("null", N),
        (r#""\ud800""#, Y),
    ];
    let rules = FlagRules::DjangoSendMessage;
    // Every content type but multipart, none included, is `json.loads`.
    for ct in [
        JSON,
        FORM,
        "text/plain",
        "application/json; charset=latin-1",
        "image/png",
    ] {
        check_json_values(&rules, ct, &cases).await;
    }
    for (value, want) in cases {
        let got = run(None, json_with(value), None, &rules).await;
        assert_eq!(outcome(&got), want, "no Content-Type, {value}");
    }
}

#[tokio::test]
async fn send_message_json_bodies() {
    let u16le = |s: &str| {
        s.encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect::<Vec<u8>>()
    };
    let u16be = |s: &str| {
        s.encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect::<Vec<u8>>()
    };
    let u32le = |s: &str| {
        s.chars()
            .flat_map(|c| u32::from(c).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let doc = r#"{"generate_image": 1}"#;
    let mut bom16 = vec![0xff, 0xfe];
    bom16.extend(u16le(doc));
    let mut bom32 = vec![0x00, 0x00, 0xfe, 0xff];
    bom32.extend(doc.chars().flat_map(|c| u32::from(c).to_be_bytes()));
    let deep = format!(
        "{{\"generate_image\": {}0{}}}",
        "[".repeat(500),
        "]".repeat(500)
    );
    let rules = FlagRules::DjangoSendMessage;
    check(
        &rules,
        Some(FORM),
        &[
            // `detect_encoding`: BOMs, then the NUL pattern.
            (&u16le(doc), Y),
            (&u16be(doc), Y),
            (&u32le(doc), Y),
            (&bom16, Y),
            (&bom32, Y),
            (b"\xef\xbb\xbf{\"generate_image\": 1}", Y),
            (b"\xef\xbb\xbf\xef\xbb\xbf{\"generate_image\": 1}", R),
            // surrogatepass: a UTF-8-encoded surrogate is a character.
            (b"{\"generate_image\": \"\xed\xa0\x80\"}", Y),
            (b"{\"generate_image\": \"\xff\"}", R),
            // json.loads raises: a 500 before anything is generated.
            (b"", R),
            (b"generate_image=true", R),
            (b"{\"generate_image\": true", R),
            (b"{\"generate_image\": true}}", R),
            (b"{'generate_image': true}", R),
            (b"{\"generate_image\": True}", R),
            (b"{\"generate_image\": \"a\tb\"}", R),
            (b"{\"generate_image\": 01}", R),
            (b"{\"generate_image\": .5}", R),
            // Numbers: the longest `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`,
            // then a delimiter (a `.` or anything else after the digits
            // is not eaten).
            (b"{\"generate_image\": 10}", Y),
            (b"{\"generate_image\": -10.25e1}", Y),
            (b"{\"generate_image\": 0x1}", R),
            (b"{\"generate_image\": 0. }", R),
            (b"{\"generate_image\": 1.e5}", R),
            (b"{\"generate_image\": -NaN}", R),
            (b"{\"generate_image\": \"\\x\"}", R),
            // `.get` on a list, a string, None: AttributeError, a 500.
            (b"[{\"generate_image\": true}]", R),
            (b"\"generate_image\"", R),
            (b"null", R),
            (b"1", R),
            // Duplicate keys: the last wins.
            (b"{\"generate_image\": true, \"generate_image\": \"\"}", N),
            (b"{\"generate_image\": 0, \"generate_image\": \"0\"}", Y),
            (b"{\"generate\\u005Fimage\": 1}", Y),
            (b"{\"generate_image \": 1, \"Generate_image\": 1}", N),
            (b"{\"x\": {\"generate_image\": 1}}", N),
            (deep.as_bytes(), U),
        ],
    )
    .await;
}

#[tokio::test]
async fn nesting_is_judged_to_max_depth_in_arrays_and_objects() {
    // CPython 3.11 reads both depths (a `RecursionError` comes near 1,000);
    // past `MAX_DEPTH` (400) the reader stops and counts (see
    // `flag::json`), for arrays and objects alike.
    let rules = FlagRules::DjangoSendMessage;
    for (levels, want) in [(399, Y), (400, U)] {
        let arrays = format!(
            "{{\"generate_image\": {}0{}}}",
            "[".repeat(levels),
            "]".repeat(levels)
        );
        let objects = format!(
            "{{\"generate_image\": {}0{}}}",
            "{\"a\": ".repeat(levels),
            "}".repeat(levels)
        );
        check(
            &rules,
            Some(JSON),
            &[(arrays.as_bytes(), want), (objects.as_bytes(), want)],
        )
        .await;
    }
}

#[tokio::test]
async fn send_message_multipart_is_exactly_true() {
    // `request.POST.get('generate_image') == 'true'`.
    let rules = FlagRules::DjangoSendMessage;
    for (value, want) in [
        ("true", Y),
        ("True", N),
        ("TRUE", N),
        ("1", N),
        ("on", N),
        (" true", N),
        ("true ", N),
        ("", N),
        ("false", N),
    ] {
        let body = multipart(&[
            Part::Field("prompt", b"a cat"),
            Part::Field(FLAG, value.as_bytes()),
        ]);
        assert_eq!(
            outcome(&run(Some(MULTIPART), &body, None, &rules).await),
            want,
            "{value:?}"
        );
    }
}

#[tokio::test]
async fn multipart_reads_as_djangos_parser() {
    let rules = FlagRules::DjangoSendMessage;
    let flagged = |parts: &[Part<'_>]| multipart(parts);
    let sep = format!("--{BOUNDARY}");
    let cases: Vec<(Vec<u8>, V)> = vec![
        (flagged(&[Part::Field(FLAG, b"true"), Part::Field(FLAG, b"false")]), N),
        (flagged(&[Part::Field(FLAG, b"false"), Part::Field(FLAG, b"true")]), Y),
        // A file part of the flag's name is in FILES, not POST.
        (flagged(&[Part::File(FLAG, "a.png", b"true")]), N),
        // `filename=""` is a plain field.
        (flagged(&[Part::File(FLAG, "", b"true")]), Y),
        // The name's ASCII whitespace is stripped; parameters are
        // case-insensitive, the header name too.
        (flagged(&[Part::Raw("content-DISPOSITION: form-data; NAME=\" generate_image\t\"\r\n", b"true")]), Y),
        // The last Content-Disposition line wins.
        (
            flagged(&[Part::Raw(
                "Content-Disposition: form-data; name=x\r\nContent-Disposition: form-data; name=generate_image\r\n",
                b"true",
            )]),
            Y,
        ),
        // No Content-Disposition, or no name: skipped.
        (flagged(&[Part::Raw("X-Name: generate_image\r\n", b"true")]), N),
        (flagged(&[Part::Raw("Content-Disposition: form-data\r\n", b"true")]), N),
        // base64 is decoded for fields, leniently.
        (
            flagged(&[Part::Raw(
                "Content-Disposition: form-data; name=generate_image\r\nContent-Transfer-Encoding: BASE64\r\n",
                b"dH!J1ZQ==",
            )]),
            Y,
        ),
        // "true" is valid base64 (of b"\xb6\xbb\x9e"): decoded, not "true".
        (
            flagged(&[Part::Raw(
                "Content-Disposition: form-data; name=generate_image\r\nContent-Transfer-Encoding: base64\r\n",
                b"true",
            )]),
            N,
        ),
        // A file whose base64 cannot be decoded: the parser raises (400).
        (
            flagged(&[Part::Raw(
                "Content-Disposition: form-data; name=f; filename=a.png\r\nContent-Transfer-Encoding: base64\r\n",
                b"abcde",
            )]),
            R,
        ),
        // Headers past 1,024 bytes: the parser raises.
        (flagged(&[Part::Raw(&format!("X-Pad: {}\r\n", "a".repeat(1100)), b"true")]), R),
        // A boundary anywhere ends a part, not only at a line start.
        (format!("{sep}\r\nContent-Disposition: form-data; name=generate_image\r\n\r\nfalse{sep}\r\nContent-Disposition: form-data; name=generate_image\r\n\r\ntrue{sep}--").into_bytes(), Y),
        // Parts after the closing boundary are read.
        (format!("{sep}--\r\nContent-Disposition: form-data; name=generate_image\r\n\r\ntrue").into_bytes(), Y),
        // So is a preamble with headers.
        (format!("Content-Disposition: form-data; name=generate_image\r\n\r\ntrue\r\n{sep}--").into_bytes(), Y),
        // One `\n` then one `\r` before a boundary are dropped, no more.
        (format!("{sep}\r\nContent-Disposition: form-data; name=generate_image\r\n\r\ntrue\n\n{sep}--").into_bytes(), N),
        (format!("{sep}\r\nContent-Disposition: form-data; name=generate_image\r\n\r\ntrue\r{sep}--").into_bytes(), Y),
        // No closing boundary: the part runs to the end.
        (format!("{sep}\r\nContent-Disposition: form-data; name=generate_image\r\n\r\ntrue").into_bytes(), Y),
        (b"no boundary here".to_vec(), N),
        // An RFC 2231 parameter in a part header: not judged.
        (flagged(&[Part::Raw("Content-Disposition: form-data; name*=utf-8''generate_image\r\n", b"true")]), U),
        // A header line that is not UTF-8 is dropped.
        (flagged(&[Part::Raw("Content-Disposition: form-data; name=generate_image; x=\u{e9}\r\n", b"true")]), Y),
    ];
    for (body, want) in cases {
        let got = run(Some(MULTIPART), &body, None, &rules).await;
        assert_eq!(
            outcome(&got),
            want,
            "{:?}: {got:?}",
            String::from_utf8_lossy(&body)
        );
    }
    let mut latin = multipart(&[Part::Raw(
        "Content-Disposition: form-data; name=generate_image; x=\u{e9}\r\n",
        b"true",
    )]);
    let at = latin.iter().position(|&b| b == 0xc3).expect("é");
    latin.splice(at..at + 2, [0xe9]);
    assert_eq!(
        outcome(&run(Some(MULTIPART), &latin, None, &rules).await),
        N,
        "a non-UTF-8 line is dropped"
    );
}

#[tokio::test]
async fn multipart_content_types() {
    let rules = FlagRules::DjangoSendMessage;
    let body = multipart(&[Part::Field(FLAG, b"true")]);
    for (ct, want) in [
        (MULTIPART, Y),
        (
            "multipart/form-data; boundary=wrong; boundary=XyZ-b0undary",
            Y,
        ),
        ("multipart/form-data; boundary=\"XyZ-b0undary\"", Y),
        (
            "multipart/form-data; boundary=XyZ-b0undary; charset=utf-8",
            Y,
        ),
        // Django's parser wants the raw type to start with "multipart/".
        ("Multipart/form-data; boundary=XyZ-b0undary", R),
        (" multipart/form-data; boundary=XyZ-b0undary", R),
        ("multipart/form-data", R),
        ("multipart/form-data; boundary=", R),
        ("multipart/form-data; boundary=\"XyZ-b0undary \"", R),
        ("multipart/form-data; boundary*=utf-8''XyZ-b0undary", U),
        (
            "multipart/form-data; boundary=XyZ-b0undary; charset=utf-16",
            U,
        ),
    ] {
        let got = run(Some(ct), &body, None, &rules).await;
        assert_eq!(outcome(&got), want, "{ct:?}: {got:?}");
    }
    // An empty multipart body: empty POST, no flag.
    assert_eq!(
        run(Some(MULTIPART), b"", None, &rules).await,
        FlagVerdict::NotFlagged
    );
}

// ---- "django-form": a plain Django view ----

#[tokio::test]
async fn django_form_values() {
    // `request.POST.get('generate_image', '').lower() in ('true', '1', 'on')`.
    check_form_values(
        &FlagRules::DjangoForm,
        &[
            ("true", Y),
            ("TRUE", Y),
            ("On", Y),
            ("1", Y),
            ("yes", N),
            ("t", N),
            ("false", N),
            ("", N),
            (" true", N),
            ("\u{130}", N),
        ],
    )
    .await;
    // `application/json`: json.loads and truthiness.
    check_json_values(
        &FlagRules::DjangoForm,
        JSON,
        &[(r#""false""#, Y), ("0", N), ("[1]", Y)],
    )
    .await;
    let rules = FlagRules::DjangoForm;
    let body = json_with("true");
    // Other types give an empty `request.POST`: never read.
    for ct in [Some("text/plain"), None, Some("application/vnd.api+json")] {
        assert_eq!(
            run(ct, &body, None, &rules).await,
            FlagVerdict::NotFlagged,
            "{ct:?}"
        );
    }
    check(&rules, Some(JSON), &[(b"generate_image=on", R), (b"", R)]).await;
    // A base64 field that does not decode keeps its raw bytes.
    let body = multipart(&[Part::Raw(
        "Content-Disposition: form-data; name=generate_image\r\nContent-Transfer-Encoding: base64\r\n",
        b"on",
    )]);
    assert_eq!(outcome(&run(Some(MULTIPART), &body, None, &rules).await), Y);
    // A urlencoded body with a charset Python knows that is not "utf-8".
    let pair = "generate_image=on";
    assert_eq!(
        outcome(
            &run(
                Some("application/x-www-form-urlencoded; charset=utf8"),
                pair,
                None,
                &rules
            )
            .await
        ),
        R
    );
    assert_eq!(
        outcome(
            &run(
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                pair,
                None,
                &rules
            )
            .await
        ),
        Y
    );
}

#[tokio::test]
async fn django_form_refuses_a_urlencoded_charset_python_knows() {
    // `_load_post_and_files`: a charset other than "utf-8" that
    // `codecs.lookup` finds is a 400; an unknown one is ignored (read as
    // UTF-8). Python's lookup normalizes case, `-` and spaces.
    let pair = "generate_image=on";
    for (charset, want) in [
        ("latin-1", R),
        ("ISO-8859-1", R),
        ("Windows 1252", R),
        ("x-no-such-codec", Y),
    ] {
        let ct = format!("application/x-www-form-urlencoded; charset={charset}");
        let got = run(Some(&ct), pair, None, &FlagRules::DjangoForm).await;
        assert_eq!(outcome(&got), want, "{charset}: {got:?}");
    }
}
