//! `[timeouts]` (phases: accept and forward): how long the proxy waits on
//! the upstream and on a client's head and body. None bounds a whole
//! response.

use serde::{Deserialize, Serialize};

use super::NonZeroDuration;

/// Upstream and client timeouts. None of them bounds a whole response: image generation
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
    /// Longest wait for a client's request head: from accept, and between
    /// requests on a kept-alive HTTP/1 connection; an HTTP/2 connection
    /// that starts no request for a whole one is sent a GOAWAY. Exceeded →
    /// the connection is closed (nginx's `client_header_timeout` and
    /// `keepalive_timeout` in one).
    pub client_head: NonZeroDuration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: NonZeroDuration::from_secs(2),
            response_head: NonZeroDuration::from_secs(300),
            idle: NonZeroDuration::from_secs(120),
            client_body: NonZeroDuration::from_secs(30),
            client_head: NonZeroDuration::from_secs(30),
        }
    }
}
