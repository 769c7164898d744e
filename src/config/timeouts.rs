//! `[timeouts]` (phase: forward): how long the proxy waits on the upstream
//! and on a client's body. None bounds a whole response.

use serde::{Deserialize, Serialize};

use super::NonZeroDuration;

/// Upstream timeouts. None of them bounds a whole response: image generation
/// streams for minutes, and only silence is cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time to open a TCP connection to the upstream (→ 502 when exceeded).
    pub connect: NonZeroDuration,
    /// Time from sending the request to receiving the response head (→ 504).
    pub response_head: NonZeroDuration,
    /// Longest silence between two chunks of a response body; the response
    /// is cut when exceeded.
    pub idle: NonZeroDuration,
    /// Longest silence of a client while the proxy reads, spools or
    /// forwards its request body; exceeded → 408 and the connection closed.
    pub client_body: NonZeroDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: NonZeroDuration::from_secs(2),
            response_head: NonZeroDuration::from_secs(300),
            idle: NonZeroDuration::from_secs(120),
            client_body: NonZeroDuration::from_secs(30),
        }
    }
}
