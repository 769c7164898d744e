//! What the fuzz targets share: cutting an input into chunks the way the
//! network might, and the flag rules to judge by.
#![allow(dead_code)]

use bytes::Bytes;
use quota_proxy::config::FlagRules;

/// Cuts `data` into chunks whose sizes cycle through `sizes` (each 1..=64
/// bytes; no sizes: one chunk).
pub fn cut(data: &[u8], sizes: &[u8]) -> Vec<Bytes> {
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
pub fn rules(pick: u8) -> FlagRules {
    if pick & 1 == 0 {
        FlagRules::DjangoSendMessage
    } else {
        FlagRules::Drf
    }
}

/// Splits an input into (options byte, chunk sizes, payload): the first
/// byte, then as many size bytes as its high nibble says.
pub fn split(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&options, rest) = data.split_first()?;
    let n = usize::from(options >> 4).min(rest.len());
    Some((options, &rest[..n], &rest[n..]))
}
