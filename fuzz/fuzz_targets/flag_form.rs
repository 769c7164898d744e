//! The urlencoded flag parser (src/flag/form.rs) through `flag::detect`,
//! body and query both: no panic, and the buffered and streamed entry
//! points agree.
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use futures_executor::block_on;
use libfuzzer_sys::fuzz_target;
use quota_proxy::flag;

fuzz_target!(|data: &[u8]| {
    let Some((options, sizes, input)) = common::split(data) else {
        return;
    };
    let rules = common::rules(options);
    // Bit 1: the input is the query string too (as far as it is text).
    let query = (options & 2 == 2).then(|| String::from_utf8_lossy(input).into_owned());
    let body = Bytes::copy_from_slice(input);
    let content_type = Some("application/x-www-form-urlencoded");
    let whole = flag::detect(
        content_type,
        body.clone(),
        query.as_deref(),
        "generate_image",
        &rules,
    );
    let streamed = block_on(flag::detect_stream(
        content_type,
        futures_util::stream::iter(common::cut(&body, sizes)),
        query.as_deref(),
        "generate_image",
        &rules,
    ));
    assert_eq!(whole, streamed);
});
