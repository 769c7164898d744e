//! Table-driven tests of [`detect`]: every case goes through content-type
//! dispatch, the body reader, the query and the value rule together. Every
//! case is also run through [`detect_stream`], its body cut in chunks of
//! several sizes, which must give the very same verdict.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::{FlagSource, FlagVerdict, detect, detect_stream};
use crate::config::{FlagRule, FlagRules};

const FLAG: &str = "generate_image";
const JSON: Option<&str> = Some("application/json");
const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
const MULTIPART: Option<&str> = Some("multipart/form-data; boundary=XyZ-b0undary");
const BOUNDARY: &str = "XyZ-b0undary";

const DRF_TRUE: [&str; 14] = [
    "t", "T", "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "1",
];
const DRF_NOT_TRUE: [&str; 12] = [
    "false", "False", "0", "", "tRuE", " true", "true ", "no", "2", "1.0", "yes!", "n",
];

use super::FlagSource::{Form as F, Json as J, Multipart as M, Query as Q};
use super::FlagVerdict::NotFlagged as NO;

/// Content type, body, query and the expected verdict.
type Case<'a> = (Option<&'a str>, &'a [u8], Option<&'a str>, FlagVerdict);

fn yes(source: FlagSource) -> FlagVerdict {
    FlagVerdict::Flagged(source)
}

fn drf() -> FlagRules {
    FlagRules::default()
}

fn python() -> FlagRules {
    FlagRules {
        form: FlagRule::PYTHON,
        json: FlagRule::PYTHON,
    }
}

fn exact_true() -> FlagRules {
    FlagRules {
        form: FlagRule::Exact(vec!["true".to_owned()]),
        json: FlagRule::Exact(vec!["true".to_owned()]),
    }
}

/// The verdict of [`detect`], after checking that [`detect_stream`] gives
/// the same one for the body in chunks of 1, 7 and 4096 bytes and whole.
async fn run(
    content_type: Option<&str>,
    body: impl AsRef<[u8]>,
    query: Option<&str>,
    rules: &FlagRules,
) -> FlagVerdict {
    let body = Bytes::copy_from_slice(body.as_ref());
    let verdict = detect(content_type, body.clone(), query, FLAG, rules).await;
    for size in [1, 7, 4096, usize::MAX] {
        let streamed = Trickle::new(&body, size);
        assert_eq!(
            detect_stream(content_type, streamed, query, FLAG, rules).await,
            verdict,
            "detect_stream in {size}-byte chunks of {:?}",
            String::from_utf8_lossy(&body)
        );
    }
    verdict
}

/// A body as a socket gives it: `size`-byte chunks (and an empty one first),
/// each after a `Pending`, so a parser sees every cut.
struct Trickle {
    chunks: VecDeque<Bytes>,
    waited: bool,
}

impl Trickle {
    fn new(body: &Bytes, size: usize) -> Self {
        let mut chunks = VecDeque::from([Bytes::new()]);
        let mut start = 0;
        while start < body.len() {
            let end = body.len().min(start.saturating_add(size));
            chunks.push_back(body.slice(start..end));
            start = end;
        }
        Self {
            chunks,
            waited: false,
        }
    }
}

impl Stream for Trickle {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.waited = false;
        Poll::Ready(self.chunks.pop_front())
    }
}

/// One part of a test multipart body.
enum Part<'a> {
    Field(&'a str, &'a [u8]),
    File(&'a str, &'a str, &'a [u8]),
    Raw(&'a str, &'a [u8]),
}

fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        let (headers, value) = match part {
            Part::Field(name, value) => (
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n"),
                value,
            ),
            Part::File(name, file, value) => (
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n\
                     Content-Type: application/octet-stream\r\n"
                ),
                value,
            ),
            Part::Raw(headers, value) => ((*headers).to_owned(), value),
        };
        body.extend_from_slice(headers.as_bytes());
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn flag_field(value: &str) -> Vec<u8> {
    multipart(&[
        Part::Field("prompt", b"a cat"),
        Part::Field(FLAG, value.as_bytes()),
    ])
}

fn form_pair(value: &str) -> String {
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("prompt=a+cat&{FLAG}={value}")
}

/// Checks a string value in all four places a form rule or JSON rule reads it.
async fn check_string_everywhere(rules: &FlagRules, value: &str, flagged: bool) {
    let json = serde_json::json!({ "prompt": "a cat", FLAG: value }).to_string();
    let pair = form_pair(value);
    let cases = [
        (JSON, json.into_bytes(), None, J),
        (FORM, pair.clone().into_bytes(), None, F),
        (MULTIPART, flag_field(value), None, M),
        (JSON, Vec::new(), Some(pair.as_str()), Q),
    ];
    for (ct, body, query, source) in cases {
        let want = if flagged { yes(source) } else { NO };
        assert_eq!(
            run(ct, &body, query, rules).await,
            want,
            "{value:?} in {source:?}"
        );
    }
}

#[tokio::test]
async fn drf_true_strings_flag_json_form_multipart_and_query() {
    for value in DRF_TRUE {
        check_string_everywhere(&drf(), value, true).await;
    }
}

#[tokio::test]
async fn drf_other_strings_do_not_flag() {
    for value in DRF_NOT_TRUE {
        check_string_everywhere(&drf(), value, false).await;
    }
}

#[tokio::test]
async fn drf_json_non_strings() {
    let cases = [
        ("true", yes(J)),
        ("1", yes(J)),
        ("1.0", yes(J)),
        ("1e0", yes(J)),
        ("false", NO),
        ("0", NO),
        ("0.0", NO),
        ("2", NO),
        ("-1", NO),
        ("0.5", NO),
        ("null", NO),
        ("[]", NO),
        ("[true]", NO),
        ("{}", NO),
        ("{\"a\": 1}", NO),
    ];
    for (value, want) in cases {
        let body = format!("{{\"{FLAG}\": {value}}}");
        assert_eq!(run(JSON, &body, None, &drf()).await, want, "{body}");
    }
}

#[tokio::test]
async fn python_truthiness_of_json_values() {
    let cases = [
        ("\"false\"", yes(J)),
        ("\"0\"", yes(J)),
        ("\"\"", NO),
        ("0", NO),
        ("0.0", NO),
        ("-0.0", NO),
        ("[]", NO),
        ("{}", NO),
        ("null", NO),
        ("false", NO),
        ("true", yes(J)),
        ("2", yes(J)),
        ("-0.5", yes(J)),
        ("[0]", yes(J)),
        ("{\"a\": null}", yes(J)),
    ];
    for (value, want) in cases {
        let body = format!("{{\"{FLAG}\": {value}}}");
        assert_eq!(run(JSON, &body, None, &python()).await, want, "{body}");
    }
}

#[tokio::test]
async fn python_truthiness_of_form_values() {
    for (value, flagged) in [
        ("false", true),
        ("0", true),
        ("no", true),
        (" ", true),
        ("", false),
    ] {
        check_string_everywhere(&python(), value, flagged).await;
    }
    // A pair without `=` has the empty value.
    assert_eq!(run(FORM, FLAG, None, &python()).await, NO);
    assert_eq!(run(None, "", Some(FLAG), &python()).await, NO);
}

#[tokio::test]
async fn exact_list_matches_strings_case_sensitively() {
    check_string_everywhere(&exact_true(), "true", true).await;
    for value in ["True", "TRUE", "1", "yes", " true"] {
        check_string_everywhere(&exact_true(), value, false).await;
    }
    for value in ["true", "1", "1.0"] {
        let body = format!("{{\"{FLAG}\": {value}}}");
        assert_eq!(
            run(JSON, &body, None, &exact_true()).await,
            NO,
            "JSON non-string {value}"
        );
    }
}

#[tokio::test]
async fn last_occurrence_wins() {
    let mp_true_false = multipart(&[Part::Field(FLAG, b"true"), Part::Field(FLAG, b"false")]);
    let mp_false_true = multipart(&[
        Part::Field(FLAG, b"false"),
        Part::Field("prompt", b"a cat"),
        Part::Field(FLAG, b"true"),
    ]);
    let cases: [Case<'_>; 8] = [
        (FORM, b"generate_image=true&generate_image=false", None, NO),
        (
            FORM,
            b"generate_image=false&prompt=x&generate_image=true",
            None,
            yes(F),
        ),
        (None, b"", Some("generate_image=true&generate_image=0"), NO),
        (
            None,
            b"",
            Some("generate_image=0&generate_image=true"),
            yes(Q),
        ),
        (
            JSON,
            br#"{"generate_image": true, "prompt": "x", "generate_image": false}"#,
            None,
            NO,
        ),
        (
            JSON,
            br#"{"generate_image": false, "generate_image": true}"#,
            None,
            yes(J),
        ),
        (MULTIPART, &mp_true_false, None, NO),
        (MULTIPART, &mp_false_true, None, yes(M)),
    ];
    for (ct, body, query, want) in cases {
        assert_eq!(
            run(ct, body, query, &drf()).await,
            want,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[tokio::test]
async fn multipart_file_parts_are_skipped() {
    // Binary content with CRLFs, a near-boundary, and text that looks like
    // the flag's own part.
    let tricky: &[u8] = b"\x89PNG\r\n\x1a\n\0\r\n--XyZ-b0undar\r\n\
        Content-Disposition: form-data; name=\"generate_image\"\r\n\r\ntrue\r\n\xff\xfe";
    let file = Part::File("image", "cat.png", tricky);
    let cases = [
        (
            vec![
                Part::File("image", "cat.png", tricky),
                Part::Field(FLAG, b"true"),
            ],
            yes(M),
        ),
        (
            vec![
                Part::Field(FLAG, b"true"),
                Part::File("image", "cat.png", tricky),
            ],
            yes(M),
        ),
        (vec![Part::File("image", "cat.png", tricky)], NO),
        (
            vec![
                Part::File("image", "cat.png", tricky),
                Part::Field(FLAG, b"no"),
            ],
            NO,
        ),
        // A file named like the flag is not a field (Django: request.FILES).
        (vec![Part::File(FLAG, "flag.txt", b"true")], NO),
        (
            vec![
                Part::Field(FLAG, b"true"),
                Part::File(FLAG, "flag.txt", b"false"),
            ],
            yes(M),
        ),
        // An empty filename makes a plain field in Django.
        (vec![Part::File(FLAG, "", b"true")], yes(M)),
        // A later plain field overrides an earlier one across a file.
        (
            vec![
                Part::Field(FLAG, b"true"),
                file,
                Part::Field(FLAG, b"false"),
            ],
            NO,
        ),
    ];
    for (i, (parts, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            run(MULTIPART, multipart(&parts), None, &drf()).await,
            want,
            "case {i}"
        );
    }
}

#[tokio::test]
async fn long_values_are_judged_without_reading() {
    let long = "t".repeat(100 * 1024);
    let mp = flag_field(&long);
    let form = form_pair(&long);
    for (ct, body, source) in [(MULTIPART, mp.as_slice(), M), (FORM, form.as_bytes(), F)] {
        assert_eq!(run(ct, body, None, &drf()).await, NO, "{source:?} drf");
        assert_eq!(
            run(ct, body, None, &python()).await,
            yes(source),
            "{source:?} python"
        );
    }
    // An exact string longer than the default cap still matches.
    let rules = FlagRules {
        form: FlagRule::Exact(vec![long.clone()]),
        json: FlagRule::DRF,
    };
    assert_eq!(run(MULTIPART, &mp, None, &rules).await, yes(M));
    assert_eq!(run(FORM, &form, None, &rules).await, yes(F));
}

fn unreadable(verdict: &FlagVerdict, starts_with: &str) -> bool {
    matches!(verdict, FlagVerdict::Unreadable(reason) if reason.starts_with(starts_with))
}

#[tokio::test]
async fn unreadable_bodies() {
    let whole = flag_field("true");
    let no_name = multipart(&[Part::Raw("Content-Disposition: form-data\r\n", b"true")]);
    let upper_name = multipart(&[Part::Raw(
        "Content-Disposition: form-data; NAME=\"generate_image\"\r\n",
        b"true",
    )]);
    let base64 = multipart(&[Part::Raw(
        "Content-Disposition: form-data; name=\"generate_image\"\r\nContent-Transfer-Encoding: base64\r\n",
        b"dHJ1ZQ==",
    )]);
    let cases: [(Option<&str>, &[u8], &str); 17] = [
        (
            Some("multipart/form-data"),
            &whole,
            "multipart body without boundary",
        ),
        (
            Some("multipart/form-data; boundary="),
            &whole,
            "multipart body without boundary",
        ),
        (
            MULTIPART,
            &whole[..whole.len() - 20],
            "invalid multipart body",
        ),
        (MULTIPART, &whole[..30], "invalid multipart body"),
        (MULTIPART, b"generate_image=true", "invalid multipart body"),
        (
            Some("multipart/form-data; boundary=other"),
            &whole,
            "invalid multipart body",
        ),
        (
            MULTIPART,
            &no_name,
            "multipart field without a readable name",
        ),
        (
            MULTIPART,
            &upper_name,
            "multipart field without a readable name",
        ),
        (
            MULTIPART,
            &base64,
            "multipart field \"generate_image\" is base64-encoded",
        ),
        (
            JSON,
            b"{\"generate_image\": }",
            "invalid JSON: expected value at line 1 column 20",
        ),
        (
            JSON,
            b"{\"generate_image\": true",
            "invalid JSON: EOF while parsing an object",
        ),
        (
            JSON,
            b"{\"generate_image\": true} x",
            "invalid JSON: trailing characters",
        ),
        (JSON, b"{\"generate_image\": NaN}", "invalid JSON"),
        (
            JSON,
            b"[{\"generate_image\": true}]",
            "JSON body is not an object",
        ),
        (JSON, b"\"generate_image\"", "JSON body is not an object"),
        (Some("text/plain"), b"generate_image=true", "invalid JSON"),
        (
            Some("application/json; charset=utf-16"),
            b"{\"generate_image\": true}",
            "unsupported charset",
        ),
    ];
    for (ct, body, reason) in cases {
        let verdict = run(ct, body, None, &drf()).await;
        assert!(
            unreadable(&verdict, reason),
            "{ct:?} {:?}: {verdict:?}",
            String::from_utf8_lossy(body)
        );
        // The query does not rescue an unreadable body.
        let with_query = run(ct, body, Some("generate_image=true"), &drf()).await;
        assert_eq!(with_query, verdict);
    }
}

#[tokio::test]
async fn other_or_missing_content_type_reads_json() {
    let body = br#"{"generate_image": "true"}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("application/octet-stream"),
        Some("not a content type"),
    ] {
        assert_eq!(run(ct, body, None, &drf()).await, yes(J), "{ct:?}");
        assert_eq!(
            run(ct, br#"{"prompt": "x"}"#, None, &drf()).await,
            NO,
            "{ct:?}"
        );
    }
}

#[tokio::test]
async fn empty_body_reads_only_the_query() {
    for ct in [
        None,
        JSON,
        FORM,
        MULTIPART,
        Some("multipart/form-data"),
        Some("text/plain; charset=utf-16"),
    ] {
        assert_eq!(
            run(ct, b"", Some("generate_image=1"), &drf()).await,
            yes(Q),
            "{ct:?}"
        );
        assert_eq!(
            run(ct, b"", Some("generate_image=0"), &drf()).await,
            NO,
            "{ct:?}"
        );
        assert_eq!(run(ct, b"", None, &drf()).await, NO, "{ct:?}");
    }
}

#[tokio::test]
async fn body_first_then_query() {
    let json_true = br#"{"generate_image": true}"#;
    let json_false = br#"{"generate_image": false}"#;
    assert_eq!(
        run(JSON, json_true, Some("generate_image=false"), &drf()).await,
        yes(J)
    );
    assert_eq!(
        run(JSON, json_true, Some("generate_image=true"), &drf()).await,
        yes(J)
    );
    assert_eq!(
        run(JSON, json_false, Some("generate_image=true"), &drf()).await,
        yes(Q)
    );
    assert_eq!(
        run(
            FORM,
            "generate_image=no",
            Some("generate_image=yes"),
            &drf()
        )
        .await,
        yes(Q)
    );
    assert_eq!(
        run(JSON, json_false, Some("generate_image=no"), &drf()).await,
        NO
    );
}

#[tokio::test]
async fn absent_flag_is_not_flagged() {
    let mp = multipart(&[
        Part::Field("prompt", b"generate_image"),
        Part::Field("generate_images", b"true"),
    ]);
    let cases: [(Option<&str>, &[u8], Option<&str>); 7] = [
        (
            JSON,
            br#"{"prompt": "generate_image", "generate_images": true}"#,
            None,
        ),
        (
            JSON,
            br#"{"options": {"generate_image": true}, "list": [{"generate_image": true}]}"#,
            None,
        ),
        (JSON, b"{}", None),
        (
            FORM,
            b"prompt=generate_image%3Dtrue&generate_image_x=true",
            None,
        ),
        (MULTIPART, &mp, None),
        (
            None,
            b"",
            Some("prompt=generate_image&xgenerate_image=true"),
        ),
        (None, b"", None),
    ];
    for (ct, body, query) in cases {
        assert_eq!(
            run(ct, body, query, &drf()).await,
            NO,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[tokio::test]
async fn content_type_case_and_parameters() {
    let json = br#"{"generate_image": "on"}"#.as_slice();
    let mp = flag_field("on");
    let cases: [(&str, &[u8], FlagSource); 8] = [
        ("Application/JSON; Charset=UTF-8", json, J),
        ("application/json;charset=\"utf-8\"", json, J),
        ("application/vnd.api+json", json, J),
        (
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=utf-8",
            b"generate_image=on",
            F,
        ),
        (
            "application/x-www-form-urlencoded; charset=US-ASCII",
            b"generate_image=on",
            F,
        ),
        ("Multipart/Form-Data; Boundary=XyZ-b0undary", &mp, M),
        ("multipart/form-data; boundary=\"XyZ-b0undary\"", &mp, M),
        (
            "multipart/form-data; charset=utf-8; boundary=XyZ-b0undary",
            &mp,
            M,
        ),
    ];
    for (ct, body, source) in cases {
        assert_eq!(run(Some(ct), body, None, &drf()).await, yes(source), "{ct}");
    }
    // The boundary is case-sensitive: a lowercased one does not parse.
    let verdict = run(
        Some("multipart/form-data; boundary=xyz-b0undary"),
        &mp,
        None,
        &drf(),
    )
    .await;
    assert!(
        unreadable(&verdict, "invalid multipart body"),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn escapes_are_decoded_before_comparing() {
    let cases: [Case<'_>; 5] = [
        (JSON, br#"{"generate\u005fimage": true}"#, None, yes(J)),
        (JSON, br#"{"generate_image": "tr\u0075e"}"#, None, yes(J)),
        (FORM, b"generate%5Fimage=tr%75e", None, yes(F)),
        (FORM, b"generate%5fimage=%74", None, yes(F)),
        (None, b"", Some("generate%5Fimage=%31"), yes(Q)),
    ];
    for (ct, body, query, want) in cases {
        assert_eq!(
            run(ct, body, query, &drf()).await,
            want,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}

#[test]
fn detect_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let rules = drf();
    let future = detect(MULTIPART, Bytes::new(), None, FLAG, &rules);
    assert_send(&future);
    let future = detect_stream(
        MULTIPART,
        Trickle::new(&Bytes::new(), 1),
        None,
        FLAG,
        &rules,
    );
    assert_send(&future);
}

#[tokio::test]
async fn multipart_fed_in_slices_finds_a_flag_on_any_slice_boundary() {
    // multer gets the body 64 KiB at a time: a file part bigger than that,
    // and the flag field shifted across a slice boundary byte by byte.
    for pad in [0, 1, 7, 30, 64, 65, 200] {
        let file = vec![b'x'; 3 * 64 * 1024 - 100 + pad];
        let body = multipart(&[
            Part::File("image", "cat.png", &file),
            Part::Field(FLAG, b"true"),
        ]);
        assert_eq!(
            run(MULTIPART, &body, None, &drf()).await,
            yes(M),
            "pad {pad}"
        );
        let body = multipart(&[
            Part::File("image", "cat.png", &file),
            Part::Field(FLAG, b"false"),
        ]);
        assert_eq!(run(MULTIPART, &body, None, &drf()).await, NO, "pad {pad}");
    }
}

#[test]
fn content_types_known_without_a_parse_agree_with_the_parse() {
    for (content_type, multipart) in [
        (None, false),
        (Some("application/json"), false),
        (Some("Application/JSON"), false),
        (Some("multipart/form-data; boundary=x"), true),
        (Some("Multipart/Form-Data; boundary=x"), true),
        (Some("multipart/mixed; boundary=x"), false),
        (Some("multipart"), false),
        (Some("text/plain"), false),
    ] {
        assert_eq!(
            super::is_multipart(content_type),
            multipart,
            "{content_type:?}"
        );
    }
    for json in ["application/json", "APPLICATION/json"] {
        assert!(matches!(
            super::BodyKind::of(Some(json)),
            Ok(super::BodyKind::Json)
        ));
    }
    // With a charset it is parsed: a foreign one is refused.
    assert!(super::BodyKind::of(Some("application/json; charset=latin-1")).is_err());
}
