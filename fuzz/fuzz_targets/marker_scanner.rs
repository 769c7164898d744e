//! The in-band report scanner (src/report/marker.rs) on any text, cut into
//! any chunks: it never panics, never holds back more than its bound,
//! passes on every byte that is not the backend's report, counts nothing
//! without the token, and always finds a real report inserted anywhere.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quota_proxy::report::{MarkerScanner, ReportRules, ReportToken, UsageReport};

const START: &str = "[IMAGES_SAVED]";
const END: &str = "[IMAGES_SAVED_END]";

fuzz_target!(|data: &[u8]| {
    let Some((options, sizes, text)) = common::split(data) else {
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
    let mut scanner = MarkerScanner::new(START, END, strip, ReportRules::with_token(token.clone(), 16));
    let mut out = Vec::new();
    for chunk in common::cut(&input, sizes) {
        let sent = scanner.feed(chunk.clone());
        out.extend_from_slice(&sent);
        assert!(scanner.held() < scanner.max_held(), "held {}", scanner.held());
        if !strip {
            assert_eq!(sent, chunk, "without stripping a chunk goes on as it came");
        }
    }
    out.extend_from_slice(&scanner.finish());
    assert_eq!(scanner.held(), 0);
    if strip {
        assert_eq!(out.len() as u64 + scanner.stripped_bytes(), input.len() as u64);
    } else {
        assert_eq!(out, input);
    }
    // The fuzzer could only count with the token if it typed it in.
    let typed_token = text
        .windows(32)
        .any(|w| w == token.as_str().as_bytes());
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
    let _ = Bytes::new();
});
