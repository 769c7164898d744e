//! `multipart/form-data` bodies (phase: classify), parsed by `multer` and
//! read as Django's `request.POST.get` reads them.
//!
//! - Only plain fields count. A part with a non-empty `filename` is a file
//!   (Django puts it in `request.FILES`) and is skipped unread; a part with
//!   `filename=""` is a plain field, as Django's parser makes it.
//! - The last plain field with the flag's name decides; other fields are
//!   skipped unread.
//! - The flag's value is buffered up to [`truth::value_cap`] bytes; a longer
//!   one is judged as [`FlagValue::LongText`] and skipped.
//! - Anything multer rejects is unreadable, and so are two things Django
//!   would read differently from us: a plain part without a readable `name`
//!   (its name might be the flag), and a flag field sent with
//!   `Content-Transfer-Encoding: base64` (Django decodes it).
//!
//! multer copies the stream it is given into its own buffer (fields are
//! then zero-copy slices of that buffer), and it reads the stream until the
//! stream says "not yet". So the body goes in as [`FEED_CHUNK`]-byte slices
//! (no copy: `Bytes` are shared), each followed by one "not yet": multer
//! then parses, and drops, what it has before it takes the next slice, and
//! its buffer stays at a chunk or two instead of a second copy of the body
//! (measured by the load bench: a 10 MB multipart upload grew the proxy's
//! peak memory by 2.0 bodies before, 1.0 after). A body of one slice goes
//! in at once, with no pause.

use std::convert::Infallible;
use std::task::Poll;

use bytes::Bytes;

use super::truth::{self, FlagValue};
use crate::config::FlagRule;

/// Whether the last plain field named `flag` in the multipart `body` is
/// true under `rule`. `Err` holds why the body cannot be read.
pub(super) async fn judge(
    body: Bytes,
    boundary: &str,
    flag: &str,
    rule: &FlagRule,
) -> Result<bool, String> {
    let cap = truth::value_cap(rule);
    let stream = sliced(body);
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut verdict = false;
    while let Some(mut part) = parts.next_field().await.map_err(unreadable)? {
        if part.file_name().is_some_and(|name| !name.is_empty()) {
            continue;
        }
        match part.name() {
            None => return Err("multipart field without a readable name".to_owned()),
            Some(name) if name != flag => continue,
            Some(_) => {}
        }
        if is_base64(&part) {
            return Err(format!("multipart field {flag:?} is base64-encoded"));
        }
        verdict = match read_capped(&mut part, cap).await.map_err(unreadable)? {
            Some(value) => truth::is_true(rule, FlagValue::Str(&String::from_utf8_lossy(&value))),
            None => truth::is_true(rule, FlagValue::LongText),
        };
    }
    Ok(verdict)
}

/// Bytes handed to multer at a time.
const FEED_CHUNK: usize = 64 * 1024;

/// `body` as a stream of [`FEED_CHUNK`]-byte slices with a pause ("not
/// yet", and an immediate wake-up) after every slice but the last.
fn sliced(
    mut body: Bytes,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let mut pause = false;
    futures_util::stream::poll_fn(move |cx| {
        if body.is_empty() {
            return Poll::Ready(None);
        }
        if pause {
            pause = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let slice = body.split_to(body.len().min(FEED_CHUNK));
        pause = !body.is_empty();
        Poll::Ready(Some(Ok(slice)))
    })
}

fn unreadable(e: multer::Error) -> String {
    format!("invalid multipart body: {e}")
}

/// Django's parser decodes a field whose `Content-Transfer-Encoding` is
/// `base64`; every other value leaves the bytes as they are.
fn is_base64(part: &multer::Field<'_>) -> bool {
    part.headers()
        .get("content-transfer-encoding")
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"base64"))
}

/// The part's value, or `None` once it is longer than `cap` (the rest is
/// left for multer to skip).
async fn read_capped(part: &mut multer::Field<'_>, cap: usize) -> multer::Result<Option<Vec<u8>>> {
    let mut value = Vec::new();
    while let Some(chunk) = part.chunk().await? {
        if value.len() + chunk.len() > cap {
            return Ok(None);
        }
        value.extend_from_slice(&chunk);
    }
    Ok(Some(value))
}
