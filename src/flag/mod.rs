//! Flag detection (phase: classify): does an inspected request ask for an
//! image? [`detect`] reads the flag field from the buffered body and the
//! query string the way the Django backend reads it, so the proxy counts the
//! requests the backend will act on.
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

use bytes::Bytes;

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
    if !body.is_empty() {
        match body_says(content_type, body, flag, rules).await {
            Ok(Some(source)) => return FlagVerdict::Flagged(source),
            Ok(None) => {}
            Err(reason) => return FlagVerdict::Unreadable(reason),
        }
    }
    if query.is_some_and(|q| form::judge(q.as_bytes(), flag, &rules.form)) {
        FlagVerdict::Flagged(FlagSource::Query)
    } else {
        FlagVerdict::NotFlagged
    }
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
            multipart::judge(body, &boundary, flag, &rules.form).await?,
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
