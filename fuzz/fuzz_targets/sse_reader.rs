//! The SSE report reader (src/report/sse.rs) on any stream, cut into any
//! chunks: no panic, bounded memory, nothing counted without the token,
//! and the real event after it is found.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use quota_proxy::report::{MAX_LINE, ReportRules, ReportToken, SseScanner, UsageReport};

fuzz_target!(|data: &[u8]| {
    let Some((_, sizes, text)) = common::split(data) else {
        return;
    };
    let token = ReportToken::from(0xfeed_u128 << 90 | 0x42);
    let typed_token = text
        .windows(32)
        .any(|w| w == token.as_str().as_bytes());
    let rules = || ReportRules::with_token(token.clone(), 16);
    let mut forged = SseScanner::new("images_saved", rules());
    for chunk in common::cut(text, sizes) {
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
    for chunk in common::cut(&input, sizes) {
        scanner.feed(&chunk);
    }
    if !typed_token {
        assert_eq!(scanner.report(), Some(UsageReport::images(2)));
    }
});
