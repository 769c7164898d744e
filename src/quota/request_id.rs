//! The request id (phase: classify): every request carries one
//! `X-Request-Id` to the upstream, and its answer carries the same one back
//! to the client, so a decision's log line, the Django app's logs and what
//! the client saw can be matched.
//!
//! The client's own id is kept only under `log.trust_request_id = true`
//! (behind a front that sets it) and only when it is 1 to
//! [`MAX_LEN`] visible ASCII characters; otherwise a new one (a UUID v4)
//! replaces whatever the client sent, so a client cannot put text of its
//! choosing into the logs.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-Request-Id`.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id kept.
const MAX_LEN: usize = 128;

/// Makes sure `headers` carries exactly one usable request id and returns
/// it: the client's when `trust` and it is sane, else a new one.
pub(crate) fn ensure(headers: &mut HeaderMap, trust: bool) -> HeaderValue {
    if trust
        && let Some(id) = headers.get(&X_REQUEST_ID)
        && sane(id.as_bytes())
    {
        let id = id.clone();
        // Exactly one value goes on, even if the client sent several.
        headers.insert(X_REQUEST_ID.clone(), id.clone());
        return id;
    }
    let id = generate();
    headers.insert(X_REQUEST_ID.clone(), id.clone());
    id
}

/// The id as text for a log field (`-` if it is not text, which
/// [`ensure`] never lets through).
pub(crate) fn as_str(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

fn sane(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.iter().all(u8::is_ascii_graphic)
}

fn generate() -> HeaderValue {
    let mut buffer = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buffer);
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_str(value).expect("value"));
        headers
    }

    #[test]
    fn trusted_ids_are_kept_and_others_replaced() {
        let mut headers = with("abc-123");
        assert_eq!(ensure(&mut headers, true), "abc-123");
        assert_eq!(headers.get_all(&X_REQUEST_ID).iter().count(), 1);

        let mut headers = with("abc-123");
        let id = ensure(&mut headers, false);
        assert_ne!(id, "abc-123");
        assert_eq!(as_str(&id).len(), 36);
        assert_eq!(headers.get(&X_REQUEST_ID), Some(&id));

        for insane in ["has space", &"x".repeat(MAX_LEN + 1), ""] {
            let mut headers = with(insane);
            assert_ne!(ensure(&mut headers, true), insane);
        }
        let mut headers = HeaderMap::new();
        let a = ensure(&mut headers, true);
        let b = ensure(&mut HeaderMap::new(), true);
        assert_ne!(a, b, "ids are unique");
    }
}
