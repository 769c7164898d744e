//! `[timeouts]` (phase: forward): how long the proxy waits on the upstream
//! and on a client's body. None bounds a whole response.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upstream timeouts. None of them bounds a whole response: image generation
/// streams for minutes, and only silence is cut.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time to open a TCP connection to the upstream (→ 502 when exceeded).
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Time from sending the request to receiving the response head (→ 504).
    #[serde(with = "humantime_serde")]
    pub response_head: Duration,
    /// Longest silence between two chunks of a response body; the response
    /// is cut when exceeded.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// Longest silence of a client while the proxy reads, spools or
    /// forwards its request body; exceeded → 408 and the connection closed.
    #[serde(with = "humantime_serde")]
    pub client_body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            response_head: Duration::from_secs(300),
            idle: Duration::from_secs(120),
            client_body: Duration::from_secs(30),
        }
    }
}
