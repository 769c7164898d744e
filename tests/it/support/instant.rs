//! Test instants, written as RFC 3339 text.

use chrono::{DateTime, Utc};

/// The instant `s` (RFC 3339, e.g. `2031-05-14T10:00:00Z`) in UTC.
pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test instant")
        .with_timezone(&Utc)
}
