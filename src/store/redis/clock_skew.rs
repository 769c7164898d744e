//! This replica's clock against Redis's, checked when the store prepares
//! (phase: startup and reload). Scripts take `now` from the caller's clock
//! and prune the reservations whose deadline has passed by it, so a
//! replica whose clock runs ahead of another's by more than
//! `store.reservation_ttl` removes the other's live reservations, and a user
//! gets more than the limit (an attack session: 2 images for a limit of 1,
//! clocks 190 s apart). Replicas must keep their clocks in sync (NTP); a
//! clock more than [`SKEW_WARNING`] from Redis's is logged.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Value;

use crate::store::topology::Connection;

/// Clock differences past this are logged (a fraction of any sensible
/// `reservation_ttl`; NTP keeps clocks within milliseconds).
const SKEW_WARNING: Duration = Duration::from_secs(2);

/// Logs a warning when this machine's clock and that of the Redis behind
/// `connection` (shown as `shown`) differ by more than [`SKEW_WARNING`].
pub(super) async fn warn_if_skewed(connection: &Connection, shown: &str) {
    let before = Utc::now();
    let answer = connection.query::<Value>(&redis::cmd("TIME")).await;
    let after = Utc::now();
    let Some(redis_now) = answer.ok().as_ref().and_then(redis_time) else {
        tracing::debug!(redis = %shown, "cannot read redis's TIME; clock skew not checked");
        return;
    };
    // This machine's now, as near to Redis's reading as one round trip allows.
    let here = before + (after - before) / 2;
    let skew = (here - redis_now).abs();
    if skew.to_std().is_ok_and(|skew| skew > SKEW_WARNING) {
        tracing::warn!(redis = %shown, skew_ms = skew.num_milliseconds(),
            "this machine's clock and redis's differ: replicas whose clocks differ by more \
             than store.reservation_ttl remove each other's live reservations; keep clocks \
             in sync (NTP, docs/redis.md)");
    }
}

/// The instant of a `TIME` answer: seconds and microseconds, as strings.
fn redis_time(answer: &Value) -> Option<DateTime<Utc>> {
    let Value::Array(parts) = answer else {
        return None;
    };
    let number = |value: &Value| match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse::<i64>().ok(),
        Value::Int(n) => Some(*n),
        _ => None,
    };
    let (seconds, micros) = (number(parts.first()?)?, number(parts.get(1)?)?);
    DateTime::from_timestamp(seconds, u32::try_from(micros).ok()?.checked_mul(1000)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_answer_is_read_to_the_microsecond() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let answer = Value::Array(vec![bulk("1764800000"), bulk("250000")]);
        let instant = redis_time(&answer).expect("an instant");
        assert_eq!(instant.timestamp_millis(), 1_764_800_000_250);
        assert_eq!(redis_time(&Value::Array(vec![bulk("x"), bulk("1")])), None);
        assert_eq!(redis_time(&Value::Nil), None);
    }
}
