//! Reading an inspected request's body (phase: classify), beside the
//! spool it uses for uploads: within `max_body_bytes`, the body budget and
//! the client-body deadline, and the answers to a body that cannot be read.

mod buffer;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header, request};
use http_body::Body;
use http_body_util::{BodyExt, Full};

use self::buffer::BodyBuffer;
use super::body::RequestBody;
use super::budget::{BUDGET_RETRY_AFTER, Held, HeldBytes};
use super::deadline::ClientBody;
use super::spool::{self, ReadError};
use super::state::QuotaState;
use crate::BoxError;
use crate::flag::{self, FlagVerdict};
use crate::quota::routes::Route;
use crate::response::json_error;

/// Reads a whole body of at most `max` bytes into one buffer, its bytes
/// taken into `held` (from the budget) as they come: a body that comes in one piece is kept
/// as it is; a longer one is copied piece by piece into one buffer, each
/// piece dropped once copied, so the body is held about once, never as
/// pieces plus a copy of them.
///
/// The buffer grows as bytes arrive, doubling, never past `declared` (the
/// `Content-Length`) or `max`: an honest length gets a buffer of exactly
/// its size, a false one gets no more than twice what was really sent. A
/// large one grows in place (`buffer.rs`): never copied, resident once.
pub(super) async fn read_whole<B>(
    body: B,
    max: u64,
    declared: Option<u64>,
    mut held: Held,
) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BodyBuffer> = None;
    let mut total: u64 = 0;
    let ceiling = usize::try_from(declared.unwrap_or(max).min(max)).unwrap_or(usize::MAX);
    while let Some(frame) = held.until_cut(body.frame()).await? {
        let Ok(data) = frame.map_err(|e| ReadError::client(e.into()))?.into_data() else {
            continue; // trailers: not part of the bytes forwarded
        };
        total = total.saturating_add(data.len() as u64);
        if total > max {
            return Err(ReadError::TooLarge(max));
        }
        held.arrived(data.len());
        match (&mut joined, first.take()) {
            (Some(buffer), _) => {
                grow(buffer, data.len(), ceiling, &mut held).await?;
                buffer.extend_from_slice(&data);
            }
            (None, None) => {
                held.grow(data.len()).await?;
                first = Some(data);
            }
            (None, Some(earlier)) => {
                let mut buffer = BodyBuffer::new();
                grow(&mut buffer, earlier.len() + data.len(), ceiling, &mut held).await?;
                buffer.extend_from_slice(&earlier);
                buffer.extend_from_slice(&data);
                held.release(earlier.len());
                joined = Some(buffer);
            }
        }
    }
    held.read_whole();
    Ok(match (joined, first) {
        (Some(buffer), _) => Bytes::from_owner(HeldBytes {
            bytes: buffer,
            _held: held,
        }),
        (None, Some(first)) => Bytes::from_owner(HeldBytes {
            bytes: first,
            _held: held,
        }),
        (None, None) => Bytes::new(),
    })
}

/// Makes room in `buffer` for `more` bytes: doubling its capacity, never
/// past `ceiling` unless the bytes need it, the growth taken from `held`.
async fn grow(
    buffer: &mut BodyBuffer,
    more: usize,
    ceiling: usize,
    held: &mut Held,
) -> Result<(), ReadError> {
    let needed = buffer.len().saturating_add(more);
    if needed <= buffer.capacity() {
        return Ok(());
    }
    let doubled = needed
        .max(buffer.capacity().saturating_mul(2))
        .min(ceiling.max(needed));
    // The slack past what is needed only if it is free now: waiting (and
    // cutting stalled bodies) is for the bytes themselves.
    let target = if held.try_grow(doubled - buffer.capacity()) {
        doubled
    } else {
        held.grow(needed - buffer.capacity()).await?;
        needed
    };
    buffer.reserve_exact(target - buffer.len());
    Ok(())
}

/// The request's `Content-Length`, when it has a valid one.
pub(super) fn declared_length(parts: &request::Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads an inspected request's body, refusing more than `max_body_bytes`,
/// and judges its flag. An upload (`multipart/form-data`) is judged as it
/// streams and waits in a spool ([`spool::read`]); any other body is read
/// into memory, as it is parsed whole. Either way, under the client-body
/// deadline and within the body budget.
pub(super) async fn read_body<B>(
    state: &QuotaState,
    route: &Route,
    parts: &request::Parts,
    body: B,
) -> Result<(RequestBody<B>, FlagVerdict), Response<Full<Bytes>>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let max = state.limits.max_body_bytes;
    // As the WSGI server gives it: header bytes read as Latin-1. With
    // several `Content-Type` lines servers differ (gunicorn keeps the last),
    // so such a request counts (`several`).
    let mut types = parts.headers.get_all(header::CONTENT_TYPE).iter();
    let content_type = types.next().map(|v| match v.to_str() {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => v.as_bytes().iter().map(|&b| char::from(b)).collect(),
    });
    let several = types.next().is_some();
    let content_type = content_type.as_deref();
    let query = parts.uri.query();
    let declared = declared_length(parts);
    let body = ClientBody::new(body, state.limits.client_body);
    let read = if declared.is_some_and(|len| len > max) {
        Err(ReadError::TooLarge(max))
    } else if flag::is_multipart(content_type, &route.flag_rules) {
        // Boxed, as is the probe below: uploads are the rare case, and their
        // state would otherwise size (and be moved with) every inspected
        // request's future.
        Box::pin(spool::read(
            body,
            max,
            &state.limits.spool,
            state.limits.hold_body(parts),
            |feed| flag::detect_stream(content_type, feed, query, &route.flag, &route.flag_rules),
        ))
        .await
        .map(|(body, verdict)| (RequestBody::spooled(body), verdict))
    } else {
        read_whole(body, max, declared, state.limits.hold_body(parts))
            .await
            .map(|bytes| {
                let verdict = flag::detect(
                    content_type,
                    bytes.clone(),
                    query,
                    &route.flag,
                    &route.flag_rules,
                );
                (RequestBody::buffered(bytes), verdict)
            })
    };
    let read = read.map(|(body, verdict)| match verdict {
        verdict if several && !matches!(verdict, FlagVerdict::Flagged(_)) => (
            body,
            FlagVerdict::Unreadable("several Content-Type headers".to_owned()),
        ),
        verdict => (body, verdict),
    });
    read.map_err(|e| read_error_answer(e, &route.name))
}

/// The answer to a body that could not be read. A body left unread (too
/// slow, no room for it) closes its connection: the rest of it is never
/// read, so the connection cannot carry another request.
pub(super) fn read_error_answer(error: ReadError, route: &str) -> Response<Full<Bytes>> {
    let closing = |mut answer: Response<Full<Bytes>>| {
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        answer
    };
    match error {
        ReadError::TooLarge(_) => json_error(StatusCode::PAYLOAD_TOO_LARGE, &error.to_string()),
        ReadError::Client(source) => {
            tracing::debug!(error = %source, "request body could not be read");
            json_error(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
        ReadError::Timeout(timeout) => {
            tracing::info!(%route, error = %timeout, "request body too slow; closing the connection");
            metrics::counter!("quota_proxy_client_body_timeouts_total").increment(1);
            closing(json_error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time",
            ))
        }
        ReadError::Cut(cut) => {
            tracing::info!(%route, error = %cut, "request body cut; closing the connection");
            closing(json_error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body arrived too slowly while the proxy was short of room",
            ))
        }
        ReadError::Busy(full) => {
            tracing::warn!(%route, error = %full, "no room for a request body; answering 503");
            let mut answer = closing(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the proxy is busy receiving other requests; try again shortly",
            ));
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(BUDGET_RETRY_AFTER));
            answer
        }
        ReadError::Spool(source) => {
            tracing::error!(%route, error = %source, "request body could not be spooled");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request body could not be stored",
            )
        }
    }
}

#[cfg(test)]
mod tests;
