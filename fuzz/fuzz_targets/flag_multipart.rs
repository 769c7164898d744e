//! The streaming multipart flag parser (src/flag/multipart.rs) through
//! `flag::detect_stream`, the body cut into any chunks: no panic, and the
//! verdict does not depend on the cut (it equals the one-chunk verdict and
//! the buffered `flag::detect`).
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
    let content_type = Some(if options & 2 == 0 {
        "multipart/form-data; boundary=b0undary"
    } else {
        "multipart/form-data; boundary=\"x\""
    });
    let body = Bytes::copy_from_slice(body);
    let stream = |chunks: Vec<Bytes>| {
        block_on(flag::detect_stream(
            content_type,
            futures_util::stream::iter(chunks),
            None,
            "generate_image",
            &rules,
        ))
    };
    let cut = stream(common::cut(&body, sizes));
    let whole = stream(vec![body.clone()]);
    assert_eq!(cut, whole, "the verdict depends on how the body was cut");
    let buffered = flag::detect(content_type, body, None, "generate_image", &rules);
    assert_eq!(buffered, whole);
});
