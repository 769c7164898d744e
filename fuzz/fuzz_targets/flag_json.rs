//! The JSON flag parser (src/flag/json.rs) through `flag::detect`, with the
//! chat app's rules and DRF's, any body and any query: no panic, and the
//! same verdict from the buffered and the streamed entry points.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use futures_executor::block_on;
use libfuzzer_sys::fuzz_target;
use quota_proxy::flag;

fuzz_target!(|data: &[u8]| {
    let Some((options, sizes, body)) = common::split(data) else {
        return;
    };
    let rules = common::rules(options);
    let content_type = match options & 6 {
        0 => Some("application/json"),
        2 => Some("text/plain"),
        4 => Some("application/vnd.api+json; charset=utf-8"),
        _ => None,
    };
    let query = (options & 8 == 8).then_some("generate_image=1");
    let body = Bytes::copy_from_slice(body);
    let whole = flag::detect(content_type, body.clone(), query, "generate_image", &rules);
    let chunks = common::cut(&body, sizes);
    let streamed = block_on(flag::detect_stream(
        content_type,
        futures_util::stream::iter(chunks),
        query,
        "generate_image",
        &rules,
    ));
    assert_eq!(whole, streamed);
});
