//! The `"drf"` preset's value tables: DRF 3.15+ parsers and
//! `BooleanField`.

use super::*;

#[tokio::test]
async fn drf_boolean_field_json_values() {
    // `BooleanField.to_internal_value`: strings lowercased, then
    // TRUE_VALUES / FALSE_VALUES; anything else (null included, allow_null
    // is off) is a 400.
    check_json_values(
        &FlagRules::Drf,
        JSON,
        &[
            ("true", Y),
            ("false", N),
            (r#""true""#, Y),
            (r#""tRuE""#, Y),
            (r#""TRUE""#, Y),
            (r#""t""#, Y),
            (r#""T""#, Y),
            (r#""y""#, Y),
            (r#""yes""#, Y),
            (r#""YeS""#, Y),
            (r#""on""#, Y),
            (r#""ON""#, Y),
            (r#""1""#, Y),
            ("1", Y),
            ("1.0", Y),
            ("1e0", Y),
            ("1.00000000000000001", Y),
            (r#""false""#, N),
            (r#""FaLsE""#, N),
            (r#""f""#, N),
            (r#""n""#, N),
            (r#""no""#, N),
            (r#""off""#, N),
            (r#""0""#, N),
            ("0", N),
            ("0.0", N),
            ("-0", N),
            ("-0.0", N),
            ("1e-400", N),
            (r#""2""#, R),
            ("2", R),
            ("-1", R),
            (r#""1.0""#, R),
            (r#"" true""#, R),
            (r#""true ""#, R),
            (r#""""#, R),
            ("null", R),
            (r#""null""#, R),
            ("[]", R),
            ("{}", R),
            ("[true]", R),
            ("1e400", R),
            (r#""\u0130""#, R),
            (r#""tru\u0065""#, Y),
        ],
    )
    .await;
    check(
        &FlagRules::Drf,
        Some(JSON),
        &[(br#"{"prompt": "a cat"}"#, N), (b"{}", N)],
    )
    .await;
}

#[tokio::test]
async fn drf_boolean_field_form_and_multipart_values() {
    // HTML input: `dictionary[name]` (the last value); a blank value with
    // required=False is absent.
    check_form_values(
        &FlagRules::Drf,
        &[
            ("true", Y),
            ("tRuE", Y),
            ("1", Y),
            ("on", Y),
            ("yes", Y),
            ("Y", Y),
            ("false", N),
            ("0", N),
            ("off", N),
            ("", N),
            ("2", R),
            ("null", R),
            (" true", R),
            ("1.0", R),
        ],
    )
    .await;
}

#[tokio::test]
async fn drf_parsers_by_content_type() {
    let body = json_with("true");
    let rules = FlagRules::Drf;
    // `media_type_matches(parser.media_type, content_type)`, JSON first.
    for (ct, want) in [
        (Some("application/json"), Y),
        (Some("Application/JSON; charset=UTF-8"), Y),
        (Some("application/json; charset=utf8"), Y),
        (Some("*/*"), Y),
        (Some("application/*"), Y),
        (Some("application/vnd.api+json"), R),
        (Some("text/plain"), R),
        (Some("text/json"), R),
        (None, R),
        (Some(""), R),
        (Some("application/json; charset=utf-16"), U),
        (Some("application/json; charset*=utf-8''x"), U),
    ] {
        let got = run(ct, &body, None, &rules).await;
        assert_eq!(outcome(&got), want, "{ct:?}: {got:?}");
    }
    let long = format!("application/json; x={}", "a".repeat(250));
    assert_eq!(
        outcome(&run(Some(&long), &body, None, &rules).await),
        Y,
        "over 256 characters: read all the same"
    );
    // No body: no parser runs, whatever the type.
    for ct in [None, Some("text/plain"), Some(JSON), Some(MULTIPART)] {
        assert_eq!(
            run(ct, b"", None, &rules).await,
            FlagVerdict::NotFlagged,
            "{ct:?}"
        );
    }
    // `*/form-data` picks the multipart parser, whose own check refuses it.
    let form = multipart(&[Part::Field(FLAG, b"true")]);
    assert_eq!(
        outcome(
            &run(
                Some("multipart/*; boundary=XyZ-b0undary"),
                &form,
                None,
                &rules
            )
            .await
        ),
        Y
    );
    assert_eq!(
        outcome(
            &run(
                Some("*/form-data; boundary=XyZ-b0undary"),
                &form,
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
                Some("*/x-www-form-urlencoded"),
                "generate_image=1",
                None,
                &rules
            )
            .await
        ),
        Y
    );
}

#[tokio::test]
async fn drf_json_parser_is_strict_utf8() {
    check(
        &FlagRules::Drf,
        Some(JSON),
        &[
            (br#"{"generate_image": NaN}"#, R),
            (br#"{"generate_image": true, "x": Infinity}"#, R),
            (b"\xef\xbb\xbf{\"generate_image\": true}", R),
            (b"{\"generate_image\": true,}", R),
            (b"{\"generate_image\": true} x", R),
            (b"[{\"generate_image\": true}]", R),
            (b"\"generate_image\"", R),
            (b"null", R),
            // `codecs.getreader("utf-8")` holds back an incomplete sequence
            // at the very end, so the document before it is read.
            (b"{\"generate_image\": true}\xe2\x82", Y),
            (b"{\"generate_image\": true}\xff", R),
            (b"{\"generate_image\": \"\xed\xa0\x80\"}", R),
            (
                b"{\"generate_image\": false, \"generate_image\": \"on\"}",
                Y,
            ),
            (b"{\"generate_image\": true, \"generate_image\": 0}", N),
            (
                b"{\"generate_image\": true, \"x\": [1, {\"generate_image\": false}]}",
                Y,
            ),
            (b" \t\r\n{\"generate\\u005fimage\" : \"y\"}\n", Y),
            (b"{\"generate_image\": \"\\ud800\"}", R),
            (b"{\"generate_image\": tru}", R),
        ],
    )
    .await;
}

#[tokio::test]
async fn drf_refuses_a_file_under_the_flag_name() {
    // `request.data` is POST updated with FILES: a stored file is the
    // flag's last value, which `BooleanField` refuses (400). Django stores
    // a file when the next part begins.
    let stored = multipart(&[
        Part::Field(FLAG, b"true"),
        Part::File(FLAG, "a.png", b"png"),
        Part::Field("prompt", b"a cat"),
    ]);
    assert_eq!(
        outcome(&run(Some(MULTIPART), &stored, None, &FlagRules::Drf).await),
        R
    );
    // The other stacks read `request.POST` only: the field decides.
    assert_eq!(
        outcome(
            &run(
                Some(MULTIPART),
                &stored,
                None,
                &FlagRules::DjangoSendMessage
            )
            .await
        ),
        Y
    );
}

#[tokio::test]
async fn drf_content_types_of_any_length_are_read() {
    // DRF 3.16.1 on Django 5.2.19 (the harness's pins) parsed and generated
    // for each of these lengths: no 415 past 256 characters.
    let body = json_with("true");
    for (len, want) in [(256, Y), (257, Y), (5000, Y)] {
        let ct = format!("application/json; x={}", "a".repeat(len - 20));
        assert_eq!(ct.chars().count(), len);
        let got = run(Some(&ct), &body, None, &FlagRules::Drf).await;
        assert_eq!(outcome(&got), want, "{len} characters: {got:?}");
    }
}
