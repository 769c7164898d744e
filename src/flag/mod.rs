//! Flag detection (phase: classify): does an inspected request ask for an
//! image? [`detect`] reads the flag field from the buffered body and the
//! query string the way the Django backend reads it, so the proxy counts the
//! requests the backend will act on. [`detect_stream`] gives the same
//! verdict for a body that arrives as a stream of chunks: a
//! `multipart/form-data` body is then parsed as it comes, its file parts
//! skipped and never held ([`is_multipart`] says which bodies those are).
//!
//! # The body, by content type
//!
//! The content type is parsed with `mime` (case-insensitive, parameters
//! allowed):
//!
//! | content type | read as | rule |
//! |---|---|---|
//! | `application/json`, `*/*+json` | a top-level JSON object | `rules.json` |
//! | `application/x-www-form-urlencoded` | urlencoded pairs | `rules.form` |
//! | `multipart/form-data; boundary=…` | plain fields (files skipped) | `rules.form` |
//! | anything else, missing or malformed | a JSON object (the app's `json.loads(request.body)`) | `rules.json` |
//!
//! An empty body is not read at all: only the query string counts.
//!
//! # Decisions
//!
//! - **Last wins.** Of repeated fields (form pairs, multipart fields, query
//!   pairs, duplicate JSON keys) the last decides, as Django's
//!   `QueryDict.get` and Python's `json.loads` do. So no body is read only
//!   part-way; the one shortcut is that a body saying true skips the query.
//! - **Body first.** The verdict is `Flagged(source)` with the first source
//!   that says true (body, then query), `NotFlagged` when neither does.
//! - **Unreadable is final.** A body that cannot be read as its kind gives
//!   `Unreadable` without looking at the query: the proxy treats it as
//!   flagged, so it is checked, never let through unchecked. Whenever this
//!   module and the backend could read a request differently, it errs this
//!   way: anything `serde_json` rejects (including JSON that Python accepts,
//!   such as `NaN` or a UTF-16 body), a declared charset other than UTF-8 or
//!   ASCII (Django and DRF decode with it, so a UTF-16 or UTF-7 body could
//!   hide a flag from a UTF-8 reading), and the multipart cases listed in
//!   the `multipart` module.
//! - **Long values are not buffered.** A form or multipart value longer than
//!   64 KiB (or the longest exact string, if longer) is judged without being
//!   read: false under the DRF and exact rules (no true value is that long),
//!   **true** under the Python rule (a non-empty string is truthy; treating
//!   it as false would let a padded flag through uncounted).
//! - **No copies of the body.** `Bytes` is shared, JSON is walked in place
//!   without building a tree, form names are decoded only when escaped and
//!   values only for the flag; multer's one internal copy is described in
//!   the `multipart` module.
//!
//! The value rules themselves (DRF, Python truthiness, exact strings) are in
//! the `truth` module.

mod form;
mod json;
mod multipart;
mod truth;

#[cfg(test)]
mod tests;

use std::future::ready;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};

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
    /// The body could not be parsed as its kind; treated as flagged. The
    /// reason is a short message for logs, e.g. `"invalid JSON: expected
    /// value at line 1 column 3"`.
    Unreadable(String),
}

/// Looks for `flag` in the body (by content type) and the query string.
///
/// `body` is the whole buffered body; `query` is the raw query string
/// without `?`. See the module docs for how each part is read.
pub async fn detect(
    content_type: Option<&str>,
    body: Bytes,
    query: Option<&str>,
    flag: &str,
    rules: &FlagRules,
) -> FlagVerdict {
    let said = if body.is_empty() {
        None
    } else {
        Some(body_says(content_type, body, flag, rules).await)
    };
    conclude(said, query, flag, rules)
}

/// [`detect`] for a body given as a stream of chunks: the same verdict for
/// the same bytes, however they are cut.
///
/// A `multipart/form-data` body is parsed as the chunks arrive: file parts
/// are skipped without being kept, and the verdict comes once the closing
/// boundary is read (the last flag field wins, so no earlier part decides).
/// The stream is dropped as soon as the verdict is known (at the closing
/// boundary, or once the body proves unreadable); a caller that feeds it
/// from a channel sees the receiver go. Bodies of other kinds must be parsed
/// whole and are collected first: pass those only when already bounded.
pub async fn detect_stream<S>(
    content_type: Option<&str>,
    body: S,
    query: Option<&str>,
    flag: &str,
    rules: &FlagRules,
) -> FlagVerdict
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    // As in `detect`, a body with no byte is not read at all.
    let mut body = Box::pin(body.filter(|chunk| ready(!chunk.is_empty())));
    let said = match body.next().await {
        None => None,
        Some(first) => {
            let body = stream::once(ready(first)).chain(body);
            Some(stream_says(content_type, body, flag, rules).await)
        }
    };
    conclude(said, query, flag, rules)
}

/// Whether `content_type` is `multipart/form-data`, the one kind of body
/// [`detect_stream`] reads without holding it (whatever its parameters; a
/// missing boundary or a foreign charset is judged unreadable there).
pub fn is_multipart(content_type: Option<&str>) -> bool {
    // Only a type that starts so can be multipart: the others skip the parse.
    content_type
        .filter(|ct| {
            ct.get(..10)
                .is_some_and(|t| t.eq_ignore_ascii_case("multipart/"))
        })
        .and_then(|ct| ct.parse::<mime::Mime>().ok())
        .is_some_and(|m| m.type_() == mime::MULTIPART && m.subtype() == mime::FORM_DATA)
}

/// The verdict from what a non-empty body said (`None`: the body was empty)
/// and the query string.
fn conclude(
    body: Option<Result<Option<FlagSource>, String>>,
    query: Option<&str>,
    flag: &str,
    rules: &FlagRules,
) -> FlagVerdict {
    match body {
        Some(Ok(Some(source))) => return FlagVerdict::Flagged(source),
        Some(Err(reason)) => return FlagVerdict::Unreadable(reason),
        Some(Ok(None)) | None => {}
    }
    if query.is_some_and(|q| form::judge(q.as_bytes(), flag, &rules.form)) {
        FlagVerdict::Flagged(FlagSource::Query)
    } else {
        FlagVerdict::NotFlagged
    }
}

/// [`body_says`] for a non-empty body given as a stream.
async fn stream_says<S>(
    content_type: Option<&str>,
    body: S,
    flag: &str,
    rules: &FlagRules,
) -> Result<Option<FlagSource>, String>
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    if let BodyKind::Multipart { boundary } = BodyKind::of(content_type)? {
        let flagged = multipart::judge(body, &boundary, flag, &rules.form).await?;
        return Ok(flagged.then_some(FlagSource::Multipart));
    }
    let whole = body
        .fold(BytesMut::new(), |mut whole, chunk| {
            whole.extend_from_slice(&chunk);
            ready(whole)
        })
        .await;
    body_says(content_type, whole.freeze(), flag, rules).await
}

/// The body's source if it says true, `None` if it does not, `Err` with the
/// reason if it cannot be read.
async fn body_says(
    content_type: Option<&str>,
    body: Bytes,
    flag: &str,
    rules: &FlagRules,
) -> Result<Option<FlagSource>, String> {
    let (source, flagged) = match BodyKind::of(content_type)? {
        BodyKind::Json => (FlagSource::Json, json::judge(&body, flag, &rules.json)?),
        BodyKind::Form => (FlagSource::Form, form::judge(&body, flag, &rules.form)),
        BodyKind::Multipart { boundary } => (
            FlagSource::Multipart,
            multipart::judge(stream::once(ready(body)), &boundary, flag, &rules.form).await?,
        ),
    };
    Ok(flagged.then_some(source))
}

/// How a non-empty body is read.
#[derive(Debug, PartialEq, Eq)]
enum BodyKind {
    Json,
    Form,
    Multipart { boundary: String },
}

impl BodyKind {
    /// The kind named by a `Content-Type` value. `Err` for a declared charset
    /// that is not UTF-8 or ASCII, or multipart without a boundary.
    fn of(content_type: Option<&str>) -> Result<BodyKind, String> {
        // What most clients send, known without a parse: the two parses of
        // a flagged JSON request cost about 1,200 instructions (callgrind).
        if content_type.is_some_and(|ct| ct.eq_ignore_ascii_case("application/json")) {
            return Ok(BodyKind::Json);
        }
        let Some(mime) = content_type.and_then(|ct| ct.parse::<mime::Mime>().ok()) else {
            return Ok(BodyKind::Json);
        };
        if let Some(charset) = mime.get_param(mime::CHARSET) {
            let charset = charset.as_str();
            if !["utf-8", "utf8", "us-ascii", "ascii"]
                .iter()
                .any(|c| c.eq_ignore_ascii_case(charset))
            {
                return Err(format!("unsupported charset {charset:?}; expected utf-8"));
            }
        }
        if mime.type_() == mime::APPLICATION && mime.subtype() == mime::WWW_FORM_URLENCODED {
            return Ok(BodyKind::Form);
        }
        if mime.type_() == mime::MULTIPART && mime.subtype() == mime::FORM_DATA {
            return match mime.get_param(mime::BOUNDARY) {
                Some(boundary) if !boundary.as_str().is_empty() => Ok(BodyKind::Multipart {
                    boundary: boundary.as_str().to_owned(),
                }),
                _ => Err("multipart body without boundary".to_owned()),
            };
        }
        // `application/json`, `+json` and every other type: the app's
        // `json.loads(request.body)`.
        Ok(BodyKind::Json)
    }
}
