//! Property tests of the in-band report readers (phase: report), in the
//! normal test run: whatever the text and however it is cut into chunks,
//! the scanners never panic, hold back a bounded number of bytes, pass on
//! every byte that is not the backend's report, and find the backend's
//! report (the one with the request's token) whatever precedes it.
//! `fuzz/` runs the same readers under libFuzzer for longer.

use bytes::Bytes;
use proptest::prelude::*;

use super::{MarkerScanner, ReportRules, ReportToken, SseScanner, UsageReport};

const START: &str = "[IMAGES_SAVED]";
const END: &str = "[IMAGES_SAVED_END]";

fn token() -> ReportToken {
    ReportToken::from(0x00c0_ffee_u128 << 64 | 0xdead_beef)
}

fn real_marker() -> String {
    format!(
        r#"{START}{{"count": 1, "token": "{}"}}{END}"#,
        token().as_str()
    )
}

/// Text made of what confuses a scanner: starts, ends, parts of them,
/// forged payloads (wrong or no token, huge counts), long runs and noise.
fn hostile_text() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(START.as_bytes().to_vec()),
        Just(END.as_bytes().to_vec()),
        (1..START.len()).prop_map(|n| START.as_bytes()[..n].to_vec()),
        (1..END.len()).prop_map(|n| END.as_bytes()[..n].to_vec()),
        Just(br#"{"count": 18446744073709551615}"#.to_vec()),
        Just(br#"{"count": 1, "token": "00000000000000000000000000000000"}"#.to_vec()),
        Just(b"1".to_vec()),
        Just(b"{\"count\": 1, \"token\": \"".to_vec()),
        (0usize..1200).prop_map(|n| vec![b'x'; n]),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// Cuts `data` at the given fractions (each in 0..1000, per mille).
fn cut(data: &[u8], at: &[u16]) -> Vec<Bytes> {
    let mut points: Vec<usize> = at
        .iter()
        .map(|&p| data.len() * usize::from(p) / 1000)
        .collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&data[w[0]..w[1]]))
        .collect()
}

/// Runs a scanner over the chunks, checking the bound after each; returns
/// the output and what it reported.
fn scan(chunks: &[Bytes], strip: bool) -> (Vec<u8>, Option<UsageReport>, u64) {
    let mut scanner = MarkerScanner::new(START, END, strip, ReportRules::with_token(token(), 16));
    let mut out = Vec::new();
    for chunk in chunks {
        out.extend_from_slice(&scanner.feed(chunk.clone()));
        assert!(
            scanner.held() < scanner.max_held(),
            "held {} of at most {}",
            scanner.held(),
            scanner.max_held()
        );
    }
    out.extend_from_slice(&scanner.finish());
    assert_eq!(scanner.held(), 0, "nothing left after the end");
    (out, scanner.report(), scanner.stripped_bytes())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Forged text (no token) is never counted and passes byte for byte,
    /// stripping or not; output plus what was cut is the input.
    #[test]
    fn forged_markers_pass_through(text in hostile_text(), at in proptest::collection::vec(0u16..1000, 0..12)) {
        let chunks = cut(&text, &at);
        for strip in [true, false] {
            let (out, report, stripped) = scan(&chunks, strip);
            prop_assert_eq!(report, None);
            prop_assert_eq!(stripped, 0);
            prop_assert_eq!(&out, &text);
        }
    }

    /// The real report is found whatever precedes and follows it, however
    /// it is chunked; exactly it is cut, and output plus cut is the input.
    #[test]
    fn the_real_report_is_always_found(
        before in hostile_text(),
        after in hostile_text(),
        at in proptest::collection::vec(0u16..1000, 0..12),
    ) {
        let marker = real_marker();
        let text = [&before[..], marker.as_bytes(), &after[..]].concat();
        let chunks = cut(&text, &at);
        let (out, report, stripped) = scan(&chunks, true);
        prop_assert_eq!(report, Some(UsageReport::images(1)));
        prop_assert_eq!(out.len() as u64 + stripped, text.len() as u64);
        prop_assert_eq!(out, [&before[..], &after[..]].concat());
        let (out, report, _) = scan(&chunks, false);
        prop_assert_eq!(report, Some(UsageReport::images(1)));
        prop_assert_eq!(out, text);
    }

    /// Any bytes at all: no panic, bounded, and nothing counted (the token
    /// cannot be guessed).
    #[test]
    fn arbitrary_bytes(text in proptest::collection::vec(any::<u8>(), 0..4096), at in proptest::collection::vec(0u16..1000, 0..8)) {
        let (out, report, _) = scan(&cut(&text, &at), true);
        prop_assert_eq!(report, None);
        prop_assert_eq!(out, text);
    }

    /// SSE: any bytes never panic, hold a bounded amount and count nothing
    /// without the token; the real event after them (past a blank line) is
    /// found however it is chunked.
    #[test]
    fn sse_reader(before in hostile_text(), at in proptest::collection::vec(0u16..1000, 0..12)) {
        let event = format!(
            "\n\nevent: images_saved\ndata: {{\"count\": 2, \"token\": \"{}\"}}\n\n",
            token().as_str()
        );
        let mut forged = SseScanner::new("images_saved", ReportRules::with_token(token(), 16));
        let mut real = SseScanner::new("images_saved", ReportRules::with_token(token(), 16));
        let text = [&before[..], event.as_bytes()].concat();
        for chunk in cut(&before, &at) {
            forged.feed(&chunk);
            prop_assert!(forged.held() <= 3 * super::MAX_LINE);
        }
        prop_assert_eq!(forged.report(), None);
        for chunk in cut(&text, &at) {
            real.feed(&chunk);
            prop_assert!(real.held() <= 3 * super::MAX_LINE);
        }
        prop_assert_eq!(real.report(), Some(UsageReport::images(2)));
    }
}
