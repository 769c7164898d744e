//! Flag detection (phase: classify): does an inspected request ask for an
//! image? PLACEHOLDER — the flag helper replaces this file.

use crate::config::FlagRules;

/// Where a flag was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagSource {
    /// A top-level field of a JSON object body.
    Json,
    /// An `application/x-www-form-urlencoded` body.
    Form,
    /// A plain field of a `multipart/form-data` body.
    Multipart,
    /// The query string.
    Query,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagVerdict {
    /// The request asks for an image.
    Flagged(FlagSource),
    /// It does not.
    NotFlagged,
    /// The body could not be parsed as its kind; treated as flagged.
    Unreadable(String),
}

/// Looks for `flag` in the body (by content type) and the query string.
pub async fn detect(
    content_type: Option<&str>,
    body: bytes::Bytes,
    query: Option<&str>,
    flag: &str,
    rules: &FlagRules,
) -> FlagVerdict {
    let _ = (content_type, body, query, flag, rules);
    FlagVerdict::NotFlagged
}
