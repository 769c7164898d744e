//! What each fuzz target checks of one input, one function per target
//! (named as the target), and what they share: cutting an input into
//! chunks the way the network might, and the flag rules to judge by.
//!
//! The targets (one file each beside this one) only hand libFuzzer's input
//! to their function here. The main crate's test run includes this file
//! too (`tests/it/fuzz_seeds.rs`) and runs every function on its target's
//! committed seeds and on random inputs, so the checks build and hold in
//! every `cargo test --all-targets`, not only under `cargo fuzz`.
#![allow(dead_code)]

use bytes::Bytes;
use futures_util::FutureExt as _;
use quota_proxy::config::FlagRules;
use quota_proxy::flag::{self, FlagVerdict};
use quota_proxy::report::{
    MAX_LINE, MarkerScanner, ReportRules, ReportToken, SseScanner, UsageReport,
};

/// The in-band report scanner (src/report/marker.rs) on any text, cut into
/// any chunks: it never panics, never holds back more than its bound,
/// passes on every byte that is not the backend's report, counts nothing
/// without the token, and always finds a real report inserted anywhere.
pub(crate) fn marker_scanner(data: &[u8]) {
    const START: &str = "[IMAGES_SAVED]";
    const END: &str = "[IMAGES_SAVED_END]";
    let Some((options, sizes, text)) = split(data) else {
        return;
    };
    let token = ReportToken::from(0x5eed_u128 << 100 | 0x0123_4567_89ab);
    let strip = options & 1 == 1;
    // Bit 1: insert the real report, at a place the next two bytes pick.
    let (input, want) = if options & 2 == 2 && text.len() >= 2 {
        let at = usize::from(u16::from_le_bytes([text[0], text[1]])) % (text.len() - 1);
        let text = &text[2..];
        let at = at.min(text.len());
        let real = format!(
            r#"{START}{{"count": 1, "token": "{}"}}{END}"#,
            token.as_str()
        );
        let input = [&text[..at], real.as_bytes(), &text[at..]].concat();
        let rest = [&text[..at], &text[at..]].concat();
        (input, Some(rest))
    } else {
        (text.to_vec(), None)
    };
    let mut scanner = MarkerScanner::new(
        START,
        END,
        strip,
        ReportRules::with_token(token.clone(), 16),
    );
    let mut out = Vec::new();
    for chunk in cut(&input, sizes) {
        let sent = scanner.feed(chunk.clone());
        out.extend_from_slice(&sent);
        assert!(
            scanner.held() < scanner.max_held(),
            "held {}",
            scanner.held()
        );
        if !strip {
            assert_eq!(sent, chunk, "without stripping a chunk goes on as it came");
        }
    }
    out.extend_from_slice(&scanner.finish());
    assert_eq!(scanner.held(), 0);
    if strip {
        assert_eq!(
            out.len() as u64 + scanner.stripped_bytes(),
            input.len() as u64
        );
    } else {
        assert_eq!(out, input);
    }
    // The fuzzer could only count with the token if it typed it in.
    let typed_token = text.windows(32).any(|w| w == token.as_str().as_bytes());
    match want {
        Some(rest) if !typed_token => {
            assert_eq!(scanner.report(), Some(UsageReport::images(1)));
            if strip {
                assert_eq!(out, rest);
            }
        }
        None if !typed_token => {
            assert_eq!(scanner.report(), None);
            assert_eq!(out, input, "no report: every byte passes");
        }
        _ => {}
    }
}

/// The SSE report reader (src/report/sse.rs) on any stream, cut into any
/// chunks: no panic, bounded memory, nothing counted without the token,
/// and the real event after it is found.
pub(crate) fn sse_reader(data: &[u8]) {
    let Some((_, sizes, text)) = split(data) else {
        return;
    };
    let token = ReportToken::from(0xfeed_u128 << 90 | 0x42);
    let typed_token = text.windows(32).any(|w| w == token.as_str().as_bytes());
    let rules = || ReportRules::with_token(token.clone(), 16);
    let mut forged = SseScanner::new("images_saved", rules());
    for chunk in cut(text, sizes) {
        forged.feed(&chunk);
        assert!(forged.held() <= 3 * MAX_LINE, "held {}", forged.held());
    }
    if !typed_token {
        assert_eq!(forged.report(), None);
    }
    let real = format!(
        "\n\nevent: images_saved\ndata: {{\"count\": 2, \"token\": \"{}\"}}\n\n",
        token.as_str()
    );
    let input = [text, real.as_bytes()].concat();
    let mut scanner = SseScanner::new("images_saved", rules());
    for chunk in cut(&input, sizes) {
        scanner.feed(&chunk);
    }
    if !typed_token {
        assert_eq!(scanner.report(), Some(UsageReport::images(2)));
    }
}

/// The JSON flag parser (src/flag/json/) through `flag::detect`, with the
/// chat app's rules and DRF's, any body and any query: no panic, and the
/// same verdict from the buffered and the streamed entry points.
pub(crate) fn flag_json(data: &[u8]) {
    let Some((options, sizes, body)) = split(data) else {
        return;
    };
    let content_type = match options & 6 {
        0 => Some("application/json"),
        2 => Some("text/plain"),
        4 => Some("application/vnd.api+json; charset=utf-8"),
        _ => None,
    };
    let query = (options & 8 == 8).then_some("generate_image=1");
    whole_equals_streamed(options, content_type, body, sizes, query);
}

/// The urlencoded flag parser (src/flag/form.rs) through `flag::detect`,
/// body and query both: no panic, and the buffered and streamed entry
/// points agree.
pub(crate) fn flag_form(data: &[u8]) {
    let Some((options, sizes, input)) = split(data) else {
        return;
    };
    // Bit 1: the input is the query string too (as far as it is text).
    let query = (options & 2 == 2).then(|| String::from_utf8_lossy(input).into_owned());
    let content_type = Some("application/x-www-form-urlencoded");
    whole_equals_streamed(options, content_type, input, sizes, query.as_deref());
}

/// The streaming multipart flag parser (src/flag/multipart/) through
/// `flag::detect_stream`, the body cut into any chunks: no panic, and the
/// verdict does not depend on the cut (it equals the one-chunk verdict and
/// the buffered `flag::detect`).
pub(crate) fn flag_multipart(data: &[u8]) {
    let Some((options, sizes, body)) = split(data) else {
        return;
    };
    let rules = rules(options);
    let content_type = Some(if options & 2 == 0 {
        "multipart/form-data; boundary=b0undary"
    } else {
        "multipart/form-data; boundary=\"x\""
    });
    let body = Bytes::copy_from_slice(body);
    let whole = streamed(content_type, vec![body.clone()], None, &rules);
    let cut = streamed(content_type, cut(&body, sizes), None, &rules);
    assert_eq!(cut, whole, "the verdict depends on how the body was cut");
    let buffered = flag::detect(content_type, body, None, "generate_image", &rules);
    assert_eq!(buffered, whole);
}

/// Charset handling of the flag parsers: a content type with any `charset`
/// (and any other parameters) before any body, for JSON, form and
/// multipart. The input's first line is the content type's parameters.
/// No panic; a body read under a charset other than UTF-8 or ASCII is never
/// `NotFlagged` (it is unreadable, so checked: src/flag/mod.rs).
pub(crate) fn flag_charset(data: &[u8]) {
    let Some((options, _, input)) = split(data) else {
        return;
    };
    let (params, body) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &b""[..]),
    };
    let Ok(params) = std::str::from_utf8(params) else {
        return;
    };
    let kind = match options & 6 {
        0 => "application/json",
        2 => "application/x-www-form-urlencoded",
        _ => "multipart/form-data; boundary=b0undary",
    };
    let content_type = format!("{kind}; {params}");
    let rules = rules(options);
    let verdict = flag::detect(
        Some(&content_type),
        Bytes::copy_from_slice(body),
        None,
        "generate_image",
        &rules,
    );
    let _ = flag::is_multipart(Some(&content_type), &rules);
    // A charset the parsers cannot vouch for never lets a body through
    // unread. Only a plain `charset=` with a simple value is judged here.
    let lowered = params.to_ascii_lowercase();
    if let Some(value) = lowered.strip_prefix("charset=")
        && !body.is_empty()
        && !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !["utf-8", "utf8", "us-ascii", "ascii"].contains(&value)
        && verdict == FlagVerdict::NotFlagged
    {
        panic!("a {value} body read as NotFlagged: {content_type}");
    }
}

/// `flag::detect` on the whole `body` gives the verdict of
/// `flag::detect_stream` on it cut by `sizes`.
fn whole_equals_streamed(
    options: u8,
    content_type: Option<&str>,
    body: &[u8],
    sizes: &[u8],
    query: Option<&str>,
) {
    let rules = rules(options);
    let body = Bytes::copy_from_slice(body);
    let whole = flag::detect(content_type, body.clone(), query, "generate_image", &rules);
    let streamed = streamed(content_type, cut(&body, sizes), query, &rules);
    assert_eq!(whole, streamed);
}

/// The streamed verdict on `chunks`. Every chunk is there already, so the
/// parser finishes in one poll; one that waited would be a bug, and panics
/// here instead of hanging the fuzzer.
fn streamed(
    content_type: Option<&str>,
    chunks: Vec<Bytes>,
    query: Option<&str>,
    rules: &FlagRules,
) -> FlagVerdict {
    flag::detect_stream(
        content_type,
        futures_util::stream::iter(chunks),
        query,
        "generate_image",
        rules,
    )
    .now_or_never()
    .expect("a parser given every chunk waited for more")
}

/// Cuts `data` into chunks whose sizes cycle through `sizes` (each 1..=64
/// bytes; no sizes: one chunk).
fn cut(data: &[u8], sizes: &[u8]) -> Vec<Bytes> {
    if sizes.is_empty() {
        return vec![Bytes::copy_from_slice(data)];
    }
    let mut chunks = Vec::new();
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= data.len() {
            break;
        }
        let end = (at + 1 + usize::from(size % 64)).min(data.len());
        chunks.push(Bytes::copy_from_slice(&data[at..end]));
        at = end;
    }
    chunks
}

/// The chat app's rules or DRF's, by one bit.
fn rules(pick: u8) -> FlagRules {
    if pick & 1 == 0 {
        FlagRules::DjangoSendMessage
    } else {
        FlagRules::Drf
    }
}

/// Splits an input into (options byte, chunk sizes, payload): the first
/// byte, then as many size bytes as its high nibble says.
fn split(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&options, rest) = data.split_first()?;
    let n = usize::from(options >> 4).min(rest.len());
    Some((options, &rest[..n], &rest[n..]))
}
