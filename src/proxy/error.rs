//! Why forwarding failed before a response head arrived, classified by
//! source (client, upstream), and the answer the client gets instead
//! (phase: forward). The proxy never returns an error to hyper: each cause
//! here becomes a JSON response.

use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::response::json_error;

/// A forwarding failure that ends in a response made by the proxy.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// The request target is not a path: `CONNECT host:port` or
    /// `OPTIONS *`. A reverse proxy only forwards paths to its upstream.
    #[error("request target {0:?} is not a path")]
    UnsupportedTarget(String),
    /// The client's request body failed while it was being sent upstream
    /// (the client disconnected or sent a malformed chunk).
    #[error("the client's request body failed while forwarding it")]
    ClientBody(#[source] hyper::Error),
    /// The client went silent mid-body for longer than
    /// `timeouts.client_body` while it was being sent upstream.
    #[error("the client's request body went silent while forwarding it")]
    ClientBodyTimeout(#[source] hyper::Error),
    /// No TCP connection to the upstream (refused, unreachable, or
    /// `timeouts.connect` exceeded).
    #[error("cannot connect to upstream {upstream}")]
    Connect {
        /// The upstream.
        upstream: Authority,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream accepted the request but sent no response head within
    /// `timeouts.response_head`.
    #[error("upstream {upstream} sent no response head within {timeout:?}")]
    HeadTimeout {
        /// The upstream.
        upstream: Authority,
        /// `timeouts.response_head`.
        timeout: Duration,
    },
    /// The connection failed after it was opened and before a response head
    /// arrived (closed without answering, reset, malformed response).
    #[error("upstream {upstream} failed before responding")]
    Transport {
        /// The upstream.
        upstream: Authority,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
}

impl ForwardError {
    /// A connection to `upstream` that could not be opened.
    pub(crate) fn connect(upstream: &Authority, source: std::io::Error) -> Self {
        Self::Connect {
            upstream: upstream.clone(),
            source,
        }
    }

    /// Classifies an error of an upstream connection.
    pub(crate) fn from_hyper(upstream: &Authority, source: hyper::Error) -> Self {
        // hyper reports a failing request body as a "user" error: the
        // client's side broke, not the upstream's.
        if source.is_user() && crate::quota::ClientBodyTimeout::is_cause_of(&source) {
            Self::ClientBodyTimeout(source)
        } else if source.is_user() {
            Self::ClientBody(source)
        } else {
            Self::Transport {
                upstream: upstream.clone(),
                source,
            }
        }
    }

    /// The status the client gets.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedTarget(_) => StatusCode::NOT_IMPLEMENTED,
            Self::ClientBody(_) => StatusCode::BAD_REQUEST,
            Self::ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Connect { .. } | Self::Transport { .. } => StatusCode::BAD_GATEWAY,
            Self::HeadTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// What the client reads in `{"error": …}`: the kind of failure, never
    /// the upstream's address.
    fn client_message(&self) -> &'static str {
        match self {
            Self::UnsupportedTarget(_) => "request target not supported: only paths are proxied",
            Self::ClientBody(_) => "request body could not be read",
            Self::ClientBodyTimeout(_) => "the request body did not arrive in time",
            Self::Connect { .. } => "upstream unreachable",
            Self::HeadTimeout { .. } => "upstream timed out",
            Self::Transport { .. } => "upstream failed before responding",
        }
    }

    /// The JSON response for this failure. A body cut for its silence
    /// closes the connection: the rest of it is never read.
    pub(crate) fn to_response(&self) -> Response<Full<Bytes>> {
        let mut response = json_error(self.status(), self.client_message());
        if matches!(self, Self::ClientBodyTimeout(_)) {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        response
    }

    /// Whether the upstream (not the client) is at fault: logged at warn.
    pub(crate) fn is_upstream(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. } | Self::HeadTimeout { .. } | Self::Transport { .. }
        )
    }
}

/// The error and all its sources on one line, for logs:
/// `a: b: c`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn chain_joins_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(chain(&err), "outer: inner");
    }

    #[tokio::test]
    async fn timeout_is_504_with_json_body() {
        let err = ForwardError::HeadTimeout {
            upstream: Authority::from_static("127.0.0.1:8000"),
            timeout: Duration::from_millis(200),
        };
        assert!(err.is_upstream());
        let response = err.to_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("full body")
            .to_bytes();
        assert_eq!(body, r#"{"error":"upstream timed out"}"#);
    }

    #[test]
    fn unsupported_target_is_501_and_the_clients_fault() {
        let err = ForwardError::UnsupportedTarget("*".to_owned());
        assert_eq!(err.status(), StatusCode::NOT_IMPLEMENTED);
        assert!(!err.is_upstream());
    }
}
