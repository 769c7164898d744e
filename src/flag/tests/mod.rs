//! Value tables of every preset (input → verdict), written from the
//! backends' own code (DRF 3.18 `BooleanField`, Django 5.2, CPython 3.11
//! `json`), never from this crate's constructors. Every case goes through
//! [`detect`] (content-type dispatch, body reader, value rule together) and
//! through [`detect_stream`] with its body cut in chunks of several sizes,
//! which must give the same verdict. Property tests at the end.

mod django;
mod drf;
mod properties;

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use super::{FlagVerdict, detect, detect_stream};
use crate::config::{FlagRule, FlagRules, FlagTable};

const FLAG: &str = "generate_image";
const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";
const BOUNDARY: &str = "XyZ-b0undary";
const MULTIPART: &str = "multipart/form-data; boundary=XyZ-b0undary";

/// The expected outcome, short for tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V {
    /// Flagged.
    Y,
    /// Not flagged.
    N,
    /// Rejected by the backend.
    R,
    /// Unsure: counted.
    U,
}
use V::{N, R, U, Y};

fn outcome(verdict: &FlagVerdict) -> V {
    match verdict {
        FlagVerdict::Flagged(_) => Y,
        FlagVerdict::NotFlagged => N,
        FlagVerdict::Rejected(_) => R,
        FlagVerdict::Unreadable(_) => U,
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
    let verdict = detect(content_type, body.clone(), query, FLAG, rules);
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

async fn check(rules: &FlagRules, content_type: Option<&str>, cases: &[(&[u8], V)]) {
    for (body, want) in cases {
        let got = run(content_type, body, None, rules).await;
        assert_eq!(
            outcome(&got),
            *want,
            "{rules:?} {content_type:?} {:?}: {got:?}",
            String::from_utf8_lossy(body)
        );
    }
}

/// A JSON body `{"prompt": "a cat", "generate_image": <value>}`.
fn json_with(value: &str) -> Vec<u8> {
    format!(r#"{{"prompt": "a cat", "{FLAG}": {value}}}"#).into_bytes()
}

async fn check_json_values(rules: &FlagRules, content_type: &str, cases: &[(&str, V)]) {
    for (value, want) in cases {
        let got = run(Some(content_type), json_with(value), None, rules).await;
        assert_eq!(
            outcome(&got),
            *want,
            "{rules:?} JSON value {value}: {got:?}"
        );
    }
}

/// Checks string values as a urlencoded pair and as a multipart field.
async fn check_form_values(rules: &FlagRules, cases: &[(&str, V)]) {
    for (value, want) in cases {
        let encoded: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let pair = format!("prompt=a+cat&{FLAG}={encoded}");
        let got = run(Some(FORM), pair, None, rules).await;
        assert_eq!(
            outcome(&got),
            *want,
            "{rules:?} form value {value:?}: {got:?}"
        );
        let body = multipart(&[
            Part::Field("prompt", b"a cat"),
            Part::Field(FLAG, value.as_bytes()),
        ]);
        let got = run(Some(MULTIPART), body, None, rules).await;
        assert_eq!(
            outcome(&got),
            *want,
            "{rules:?} multipart value {value:?}: {got:?}"
        );
    }
}

/// A body as a socket gives it: `size`-byte chunks (and an empty one first),
/// each after a `Pending`, so a parser sees every cut.
struct Trickle {
    chunks: VecDeque<Bytes>,
    waited: bool,
}

impl Trickle {
    fn new(body: &Bytes, size: usize) -> Self {
        Self::cut(body, std::iter::repeat(size))
    }

    fn cut(body: &Bytes, sizes: impl IntoIterator<Item = usize>) -> Self {
        let mut chunks = VecDeque::from([Bytes::new()]);
        let mut start = 0;
        let mut sizes = sizes.into_iter();
        while start < body.len() {
            let size = sizes.next().unwrap_or(usize::MAX).max(1);
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

fn table(form: FlagRule, json: FlagRule, ignore_case: bool, query: bool) -> FlagRules {
    FlagRules::Table(FlagTable {
        form,
        json,
        ignore_case,
        query,
    })
}

// ---- the table form ----

#[tokio::test]
async fn table_reads_the_query_only_when_asked() {
    let off = table(FlagRule::DRF, FlagRule::DRF, false, false);
    let on = table(FlagRule::DRF, FlagRule::DRF, false, true);
    let q = Some("generate_image=true");
    assert_eq!(run(Some(JSON), b"", q, &off).await, FlagVerdict::NotFlagged);
    assert_eq!(outcome(&run(Some(JSON), b"", q, &on).await), Y);
    assert_eq!(
        outcome(&run(Some(JSON), br#"{"generate_image": false}"#, q, &on).await),
        Y
    );
    // An unreadable body is final.
    assert_eq!(outcome(&run(Some(JSON), b"{", q, &on).await), U);
    // The presets never read it.
    for rules in [
        FlagRules::Drf,
        FlagRules::DjangoSendMessage,
        FlagRules::DjangoForm,
    ] {
        assert_eq!(
            outcome(&run(Some(JSON), "{}", q, &rules).await),
            N,
            "{rules:?}"
        );
    }
}

#[tokio::test]
async fn table_strings_and_case() {
    let list = FlagRule::Exact(vec!["Oui".to_owned(), "ÉTÉ".to_owned()]);
    let exact = table(list.clone(), FlagRule::PYTHON, false, false);
    let folded = table(list, FlagRule::PYTHON, true, false);
    for (value, exact_want, folded_want) in
        [("Oui", Y, Y), ("oui", N, Y), ("été", N, Y), ("non", N, N)]
    {
        let pair = format!("generate_image={value}");
        assert_eq!(
            outcome(&run(Some(FORM), &pair, None, &exact).await),
            exact_want,
            "{value}"
        );
        assert_eq!(
            outcome(&run(Some(FORM), &pair, None, &folded).await),
            folded_want,
            "{value}"
        );
    }
    // Parse errors are unsure under a table (its backend is not known).
    assert_eq!(outcome(&run(Some(JSON), b"[", None, &exact).await), U);
    assert_eq!(outcome(&run(Some(JSON), b"[1]", None, &exact).await), U);
}

#[tokio::test]
async fn a_table_reads_a_value_its_rule_refuses_as_not_true() {
    // A table's backend is not known: a value `BooleanField` would refuse
    // is no rejection, only not true, and the query may still say true.
    let off = table(FlagRule::DRF, FlagRule::DRF, false, false);
    let on = table(FlagRule::DRF, FlagRule::DRF, false, true);
    let maybe = json_with("\"maybe\"");
    assert_eq!(outcome(&run(Some(JSON), &maybe, None, &off).await), N);
    assert_eq!(
        outcome(&run(Some(FORM), "generate_image=maybe", None, &off).await),
        N
    );
    let q = Some("generate_image=1");
    assert_eq!(outcome(&run(Some(JSON), &maybe, q, &on).await), Y);
}

#[test]
fn only_flagged_and_unsure_requests_count() {
    use super::FlagSource;
    assert!(FlagVerdict::Flagged(FlagSource::Multipart).counts());
    assert!(FlagVerdict::Unreadable("unsure".to_owned()).counts());
    assert!(!FlagVerdict::NotFlagged.counts());
    assert!(!FlagVerdict::Rejected("415".to_owned()).counts());
}

#[tokio::test]
async fn a_table_is_unsure_of_a_multipart_type_without_a_boundary() {
    // A preset's backend refuses it (Django's 400); a table's is not known.
    let body = multipart(&[Part::Field(FLAG, b"true")]);
    let rules = table(FlagRule::PYTHON, FlagRule::PYTHON, false, false);
    let got = run(Some("multipart/form-data"), &body, None, &rules).await;
    assert_eq!(outcome(&got), U, "{got:?}");
    let got = run(
        Some("multipart/form-data"),
        &body,
        None,
        &FlagRules::DjangoForm,
    )
    .await;
    assert_eq!(outcome(&got), R, "{got:?}");
}

#[tokio::test]
async fn table_case_folding_is_unicode_when_one_side_is_not_ascii() {
    // Python's `str.lower` maps the Kelvin sign (U+212A) to "k".
    let list = FlagRule::Exact(vec!["ok".to_owned()]);
    let folded = table(list.clone(), FlagRule::PYTHON, true, false);
    let exact = table(list, FlagRule::PYTHON, false, false);
    let kelvin = "generate_image=O%E2%84%AA";
    assert_eq!(outcome(&run(Some(FORM), kelvin, None, &folded).await), Y);
    assert_eq!(outcome(&run(Some(FORM), kelvin, None, &exact).await), N);
}

// ---- streaming and sizes ----

#[tokio::test]
async fn large_multipart_is_cut_as_django_reads_it() {
    // Parts straddle Django's 64 KiB reads; a flag after big files.
    for pad in [0, 1, 7, 30, 64, 65, 200] {
        let file = vec![b'x'; 3 * 64 * 1024 - 100 + pad];
        for (value, want) in [(&b"true"[..], Y), (b"false", N)] {
            let body = multipart(&[
                Part::File("image", "cat.png", &file),
                Part::Field(FLAG, value),
            ]);
            let got = run(Some(MULTIPART), &body, None, &FlagRules::DjangoSendMessage).await;
            assert_eq!(outcome(&got), want, "pad {pad}");
        }
    }
    // A file Django skips unread (its name sanitizes to nothing): what it
    // had not pulled of it yet is parsed as a part, here one whose first
    // 1,024 bytes hold no header end, so Django refuses the body (checked
    // against Django 5.2).
    let mut file = vec![b'x'; 70 * 1024];
    file.extend_from_slice(
        b"\r\n\r\nContent-Disposition: form-data; name=generate_image\r\n\r\ntrue",
    );
    let body = multipart(&[Part::File("image", "..", &file)]);
    assert_eq!(
        outcome(&run(Some(MULTIPART), &body, None, &FlagRules::DjangoSendMessage).await),
        R
    );
    let body = multipart(&[Part::File("image", "a.png", &file)]);
    assert_eq!(
        outcome(&run(Some(MULTIPART), &body, None, &FlagRules::DjangoSendMessage).await),
        N
    );
}

#[tokio::test]
async fn a_part_skipped_unread_is_dropped_whole_within_one_django_read() {
    // Django pulls a part 64 KiB at a time: a skipped part (no name, or a
    // file name that sanitizes to nothing) shorter than that is dropped
    // whole, header-like bytes in it included (checked against Django 5.2:
    // no flag in all three).
    let mut data = vec![b'x'; 3000];
    data.extend_from_slice(
        b"\r\n\r\nContent-Disposition: form-data; name=generate_image\r\n\r\ntrue",
    );
    for part in [
        Part::Raw("Content-Disposition: form-data\r\n", &data),
        Part::File("f", "..", &data),
        Part::File("f", "a.png", &data),
    ] {
        let body = multipart(&[part]);
        let got = run(Some(MULTIPART), &body, None, &FlagRules::DjangoSendMessage).await;
        assert_eq!(got, FlagVerdict::NotFlagged);
    }
}

#[tokio::test]
async fn a_base64_file_is_decoded_without_its_whitespace() {
    // A file in base64 ahead of the flag: decoded in quads, whitespace
    // dropped; an error refuses the body (checked against Django 5.2),
    // unless Django 5.1 reads it.
    for (data, want) in [
        (&b"dHJ1ZQ=="[..], Y),
        (b"dHJ1\r\nZQ==", Y),
        (b"dH Jz\tdW\r\nVl", Y),
        (b"dHJ1ZQ", R),
        // Django 5.2 refuses the byte past the padding, 5.1 decodes `A`.
        (b"QQ==A", U),
    ] {
        let body = multipart(&[
            Part::Raw(
                "Content-Disposition: form-data; name=f; filename=a.png\r\n\
                 Content-Transfer-Encoding: base64\r\n",
                data,
            ),
            Part::Field(FLAG, b"true"),
        ]);
        let got = run(Some(MULTIPART), &body, None, &FlagRules::DjangoSendMessage).await;
        assert_eq!(
            outcome(&got),
            want,
            "{:?}: {got:?}",
            String::from_utf8_lossy(data)
        );
    }
}

#[tokio::test]
async fn long_values_are_judged_without_being_kept() {
    let long = "x".repeat(100 * 1024);
    check_form_values(&FlagRules::Drf, &[(&long, R)]).await;
    check_form_values(
        &table(FlagRule::PYTHON, FlagRule::PYTHON, false, false),
        &[(&long, Y)],
    )
    .await;
    check_form_values(&FlagRules::DjangoForm, &[(&long, N)]).await;
    let json = format!("\"{long}\"");
    check_json_values(&FlagRules::DjangoSendMessage, JSON, &[(&json, Y)]).await;
    check_json_values(&FlagRules::Drf, JSON, &[(&json, R)]).await;
}

#[test]
fn detect_stream_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let rules = FlagRules::Drf;
    let future = detect_stream(
        Some(MULTIPART),
        Trickle::new(&Bytes::new(), 1),
        None,
        FLAG,
        &rules,
    );
    assert_send(&future);
}

#[test]
fn is_multipart_follows_each_stack() {
    use super::is_multipart;
    assert!(is_multipart(Some(MULTIPART), &FlagRules::Drf));
    assert!(is_multipart(
        Some("multipart/*; boundary=x"),
        &FlagRules::Drf
    ));
    assert!(!is_multipart(
        Some("multipart/*; boundary=x"),
        &FlagRules::DjangoSendMessage
    ));
    assert!(is_multipart(
        Some("multipart/form-data; boundary=x"),
        &FlagRules::DjangoSendMessage
    ));
    // Django's parser refuses a type that does not start "multipart/".
    assert!(!is_multipart(
        Some("MULTIPART/FORM-DATA; boundary=x"),
        &FlagRules::DjangoSendMessage
    ));
    assert!(!is_multipart(Some(JSON), &FlagRules::DjangoSendMessage));
    assert!(!is_multipart(None, &FlagRules::DjangoForm));
}
