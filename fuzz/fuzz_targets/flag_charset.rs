//! Charset handling of the flag parsers: a content type with any `charset`
//! (and any other parameters) before any body, for JSON, form and
//! multipart. The input's first line is the content type's parameters.
//! No panic; a body read under a charset other than UTF-8 or ASCII is never
//! `NotFlagged` (it is unreadable, so checked: src/flag/mod.rs).
#![no_main]

#[path = "common.rs"]
mod common;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quota_proxy::flag::{self, FlagVerdict};

fuzz_target!(|data: &[u8]| {
    let Some((options, _, input)) = common::split(data) else {
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
    let rules = common::rules(options);
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
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !["utf-8", "utf8", "us-ascii", "ascii"].contains(&value)
        && verdict == FlagVerdict::NotFlagged
    {
        panic!("a {value} body read as NotFlagged: {content_type}");
    }
});
