//! Random mutations of the corpus (proptest, fixed seed): a corpus request
//! with one to three small changes (a path byte percent-encoded, zeros
//! before the session id, a letter's case flipped in the body or the
//! Content-Type, another flag value, a routing header, a Content-Type
//! parameter, chunked framing, a BOM, a shorter body), judged like the
//! corpus. `QP_DJANGO_CASES` or `PROPTEST_CASES` sets how many (default
//! 96), `QP_DJANGO_SEED` the seed.
//!
//! Mutated are the requests of every view whose preset this build accepts:
//! the chat app's send view and DRF, and the plain form view once the
//! `"django-form"` preset exists (its corpus test fails until then).
#![allow(dead_code, unreachable_pub)]

use std::cell::{Cell, RefCell};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

use super::corpus::{self, Case, Framing, View};
use super::{Differential, Verdict};
use crate::support::django::Django;

/// Parameters appended to a request's `Content-Type` (a charset Django
/// refuses or reads, a second boundary, RFC 2231, empty and quoted ones).
pub(crate) const CONTENT_TYPE_PARAMS: [&str; 6] = [
    "; charset=utf-8",
    "; charset=UTF-16",
    "; boundary=OTHER",
    "; boundary*=utf-8''XyZ-b0undary",
    ";",
    " ; x=\"y;z\"",
];

/// One change to a request.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Percent-encode the n-th (mod count) letter or digit of the path.
    EncodePathByte(usize),
    /// Put this many zeros before the session id.
    PadSessionId(usize),
    /// Flip the case of the n-th (mod count) letter of the body.
    FlipBodyCase(usize),
    /// Flip the case of the n-th (mod count) letter of the Content-Type.
    FlipContentTypeCase(usize),
    /// Another value of the flag (a JSON literal; quotes dropped in forms).
    FlagValue(&'static str),
    /// A header that may change routing downstream.
    AddHeader(&'static str, &'static str),
    /// A parameter appended to the Content-Type.
    ContentTypeParam(&'static str),
    /// Chunked framing with chunks of this size.
    Chunked(usize),
    /// A UTF-8 byte-order mark before the body.
    PrependBom,
    /// This many bytes cut from the end of the body (the length still
    /// matches).
    CutBody(usize),
}

impl Mutation {
    fn class(&self) -> &'static str {
        match self {
            Mutation::EncodePathByte(_) => "path/percent-encoded",
            Mutation::PadSessionId(_) => "id/zero-padded",
            Mutation::FlipBodyCase(_) => "mutation/body-case",
            Mutation::FlipContentTypeCase(_) => "mutation/content-type-case",
            Mutation::FlagValue(_) => "mutation/flag-value",
            Mutation::AddHeader(..) => "mutation/routing-header",
            // A charset other than UTF-8 and RFC 2231 parameters are
            // documented fail-closed classes (docs/flag-rules.md).
            Mutation::ContentTypeParam(param) if param.contains("boundary*=") => {
                "rfc2231/parameter"
            }
            Mutation::ContentTypeParam(param)
                if param.contains("charset=") && !param.to_ascii_lowercase().contains("utf-8") =>
            {
                "charset/not-utf8"
            }
            Mutation::ContentTypeParam(_) => "mutation/content-type-param",
            Mutation::Chunked(_) => "framing/chunked",
            Mutation::PrependBom => "mutation/bom",
            Mutation::CutBody(_) => "mutation/cut-body",
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::EncodePathByte),
        (1usize..40).prop_map(Mutation::PadSessionId),
        any::<usize>().prop_map(Mutation::FlipBodyCase),
        any::<usize>().prop_map(Mutation::FlipContentTypeCase),
        prop::sample::select(vec![
            "true",
            "false",
            "\"true\"",
            "\"false\"",
            "\"tRuE\"",
            "\"on\"",
            "\"1\"",
            "1",
            "0",
            "null",
            "\"\"",
            "NaN",
            "[]",
            "\"yes\"",
        ])
        .prop_map(Mutation::FlagValue),
        prop::sample::select(vec![
            ("SCRIPT_NAME", "/chat"),
            ("script_name", "/x"),
            ("X-Script-Name", "/x"),
            ("X-Forwarded-Prefix", "/x"),
            ("X-Original-URL", "/chat/session/{S}/send/"),
        ])
        .prop_map(|(n, v)| Mutation::AddHeader(n, v)),
        prop::sample::select(CONTENT_TYPE_PARAMS.to_vec()).prop_map(Mutation::ContentTypeParam),
        (1usize..16).prop_map(Mutation::Chunked),
        Just(Mutation::PrependBom),
        (1usize..12).prop_map(Mutation::CutBody),
    ]
}

fn flip_nth_letter(text: &mut [u8], n: usize) {
    let letters: Vec<usize> = (0..text.len())
        .filter(|&i| text[i].is_ascii_alphabetic())
        .collect();
    if !letters.is_empty() {
        let i = letters[n % letters.len()];
        text[i] ^= 0x20;
    }
}

/// The longest target a padded session id may make: gunicorn's 4094-byte
/// request line less the longest method here (`PATCH `) and ` HTTP/1.1`.
const MAX_PADDED_TARGET: usize = 4094 - "PATCH ".len() - " HTTP/1.1".len();

/// `case` with `mutations` applied; its class names them all.
pub fn apply(case: &Case, mutations: &[Mutation]) -> Case {
    let mut out = case.clone();
    for m in mutations {
        match m {
            Mutation::EncodePathByte(n) => {
                if out.target.starts_with('/') {
                    let end = out.target.find(['?', '#']).unwrap_or(out.target.len());
                    let bytes = out.target.as_bytes();
                    let spots: Vec<usize> = (0..end)
                        .filter(|&i| bytes[i].is_ascii_alphanumeric())
                        .collect();
                    if !spots.is_empty() {
                        let i = spots[n % spots.len()];
                        let encoded = format!("%{:02X}", bytes[i]);
                        out.target.replace_range(i..=i, &encoded);
                    }
                }
            }
            Mutation::PadSessionId(k) => {
                // Not past gunicorn's request line (`limit_request_line`,
                // 4094 bytes): a longer one is its 400 whatever the proxy
                // judges, which tells nothing (the corpus's 4,050-digit id
                // is already at that edge).
                if let Some(at) = out.target.find("/session/")
                    && out.target.len() + k <= MAX_PADDED_TARGET
                {
                    out.target
                        .insert_str(at + "/session/".len(), &"0".repeat(*k));
                }
            }
            Mutation::FlipBodyCase(n) => flip_nth_letter(&mut out.body, *n),
            Mutation::FlipContentTypeCase(n) => {
                if let Some((_, v)) = out
                    .headers
                    .iter_mut()
                    .find(|(h, _)| h.eq_ignore_ascii_case("content-type"))
                {
                    let mut bytes = v.clone().into_bytes();
                    flip_nth_letter(&mut bytes, *n);
                    *v = String::from_utf8(bytes).unwrap_or_else(|_| v.clone());
                }
            }
            Mutation::FlagValue(value) => out.body = with_flag(&out.body, value),
            Mutation::AddHeader(name, value) => {
                out.headers.push(((*name).to_owned(), (*value).to_owned()));
                if *name == "SCRIPT_NAME" && out.target.starts_with('/') {
                    out.target = format!("/chat{}", out.target);
                }
            }
            Mutation::ContentTypeParam(param) => {
                if let Some((_, v)) = out
                    .headers
                    .iter_mut()
                    .find(|(h, _)| h.eq_ignore_ascii_case("content-type"))
                {
                    v.push_str(param);
                }
            }
            Mutation::Chunked(size) => out.framing = Framing::Chunked(*size),
            Mutation::PrependBom => {
                out.body.splice(0..0, [0xEF, 0xBB, 0xBF]);
            }
            Mutation::CutBody(k) => {
                let keep = out.body.len().saturating_sub(*k);
                out.body.truncate(keep);
            }
        }
    }
    let tags: Vec<&str> = mutations.iter().map(Mutation::class).collect();
    out.class = format!("{}+{}", case.class, tags.join("+"));
    out.name = format!("{} / {mutations:?}", case.name);
    out
}

/// `body` with the flag's value replaced by `value`, in whichever form the
/// body carries it (JSON, urlencoded, multipart); unchanged otherwise.
fn with_flag(body: &[u8], value: &str) -> Vec<u8> {
    let plain = value.trim_matches('"');
    let find = |needle: &[u8]| body.windows(needle.len()).position(|w| w == needle);
    let splice = |start: usize, stop: &[u8], new: &str| -> Vec<u8> {
        let end = body[start..]
            .iter()
            .position(|b| stop.contains(b))
            .map_or(body.len(), |i| start + i);
        [&body[..start], new.as_bytes(), &body[end..]].concat()
    };
    if let Some(at) = find(b"\"generate_image\": ") {
        return splice(at + 18, b",}", value);
    }
    if let Some(at) = find(b"generate_image=") {
        return splice(at + 15, b"&", plain);
    }
    if let Some(at) = find(b"name=\"generate_image\"\r\n\r\n") {
        return splice(at + 25, b"\r", plain);
    }
    body.to_vec()
}

fn env_number(names: &[&str]) -> Option<u64> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok()?.trim().parse().ok())
}

/// Whether this build accepts the preset config of `view` (the
/// `"django-form"` rules may not exist yet).
fn preset_exists(view: View) -> bool {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("quota-proxy.toml");
    std::fs::write(&path, super::preset_config("http://127.0.0.1:9", view)).expect("write config");
    crate::support::binary::run_cli(Some(&path), &["check-config"])
        .status
        .success()
}

/// Runs the random mutations against `django` and the proxies.
pub async fn run(django: Django) {
    let mut views = vec![View::Send, View::Drf];
    if preset_exists(View::Form) {
        views.push(View::Form);
    } else {
        println!(
            "random mutations: no \"django-form\" preset in this build; the form view is left out"
        );
    }
    let harness = RefCell::new(Differential::on(django, &views).await);
    let cases: Vec<Case> = corpus::corpus()
        .into_iter()
        .filter(|c| views.contains(&c.view))
        .collect();
    let count = env_number(&["QP_DJANGO_CASES", "PROPTEST_CASES"]).unwrap_or(96);
    let seed = env_number(&["QP_DJANGO_SEED"]).unwrap_or(0x5eed_0016);
    let config = Config {
        cases: u32::try_from(count).unwrap_or(u32::MAX),
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 48,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let next_id = Cell::new(100_000usize);
    let strategy = (0..cases.len(), prop::collection::vec(mutation(), 1..4));
    let result = runner.run(&strategy, |(index, mutations)| {
        next_id.set(next_id.get() + 1);
        let case = apply(&cases[index].concrete(next_id.get()), &mutations);
        let outcome = harness.borrow_mut().judge(next_id.get(), &case);
        match outcome.verdict {
            Verdict::Bypass | Verdict::FalseDenial => Err(TestCaseError::fail(format!(
                "{:?}\n{outcome}",
                outcome.verdict
            ))),
            Verdict::Agrees | Verdict::FailClosed => Ok(()),
        }
    });
    if let Err(e) = result {
        panic!("random mutations (seed {seed}, {count} cases) found a difference: {e}");
    }
    println!("random mutations: {count} cases (seed {seed}), no bypass, no false denial");
}
