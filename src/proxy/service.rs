//! The forwarding service (phase: forward): rewrites a request for the
//! upstream, sends it once on a pooled connection (`pool.rs`) and streams
//! the answer back. Failures before a response head become JSON answers
//! (502, 504).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Request, Response, Version};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;
use crate::config::Timeouts;
use crate::hop_by_hop;
use crate::proxy::body::ProxyBody;
use crate::proxy::error::{ForwardError, chain};
use crate::proxy::headers;
use crate::proxy::pool::Pool;
use crate::quota::routes::host_of;
use crate::server::{ClientAddr, SharedPlace};

/// The request body as the upstream connection takes it: any body, boxed
/// once.
pub(crate) type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// The future of [`ProxyService::call`](tower::Service::call). It never
/// fails: every error is a response.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// Forwards every request to one upstream over pooled HTTP/1.1 connections
/// and streams the response back as a [`ProxyBody`].
///
/// It accepts any request body (`Service<Request<B>>` for every suitable
/// `B`), so layers in front of it may wrap or replace the body. Clones share
/// one connection pool; the binary makes one service, so one pool, per
/// serving thread. An idle connection is reused for at most
/// [`POOL_IDLE_TIMEOUT`](crate::proxy::POOL_IDLE_TIMEOUT).
///
/// What it does to a request:
/// - the target becomes the `path?query` alone (origin form) and the
///   version HTTP/1.1, whatever the client spoke;
/// - `Host` is kept as the client sent it (Django's `ALLOWED_HOSTS` and its
///   absolute URLs expect the public host); an HTTP/2 request, which has no
///   `Host`, gets one from its `:authority`, and a request with neither
///   (HTTP/1.0) the upstream's;
/// - hop-by-hop headers are removed in both directions (`TE: trailers`
///   survives), the peer in [`ClientAddr`] is appended to
///   `X-Forwarded-For`, and `X-Forwarded-Proto`/`X-Forwarded-Host` are set
///   unless a front proxy already set them;
/// - it is sent exactly once: no retry of any kind, since a retried
///   image-generation POST could generate and bill twice.
///
/// Timeouts ([`Timeouts`]): `connect` → 502, no response head within
/// `response_head` → 504, a response body silent for `idle` is cut
/// ([`BodyError::Idle`](crate::proxy::BodyError::Idle)). Nothing bounds a
/// whole response, so a slow but steady stream runs to its end.
///
/// Upgrades (WebSocket) are not proxied yet: `Upgrade` is stripped like any
/// hop-by-hop header, so the upstream answers a plain request.
#[derive(Debug, Clone)]
pub struct ProxyService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Arc<Pool>,
    upstream: Authority,
    response_head: Duration,
    idle: Duration,
}

impl ProxyService {
    /// A service forwarding to `upstream` (`host:port`, plain HTTP) with
    /// the given timeouts. No connection is opened until the first request.
    pub fn new(upstream: Authority, timeouts: &Timeouts) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool: Arc::new(Pool::new(upstream.clone(), timeouts.connect.get())),
                upstream,
                response_head: timeouts.response_head.get(),
                idle: timeouts.idle.get(),
            }),
        }
    }
}

impl<B> tower::Service<Request<B>> for ProxyService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pool opens connections on demand; there is nothing to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(inner.forward(request).await) })
    }
}

impl Inner {
    async fn forward<B>(&self, request: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let method = request.method().clone();
        // Shares the request's bytes: nothing is copied unless it is logged.
        let uri = request.uri().clone();
        match self.try_forward(request).await {
            Ok(response) => response,
            Err(err) => {
                // The path only: a query string may carry tokens.
                let path = uri.path();
                if err.is_upstream() {
                    tracing::warn!(%method, %path, status = err.status().as_u16(), error = %chain(&err), "forwarding failed");
                } else {
                    tracing::debug!(%method, %path, status = err.status().as_u16(), error = %chain(&err), "request not forwarded");
                }
                err.to_response().map(ProxyBody::from)
            }
        }
    }

    async fn try_forward<B>(
        &self,
        mut request: Request<B>,
    ) -> Result<Response<ProxyBody>, ForwardError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // Only an HTTP/2 request has a place (`server`): no lookup for the others.
        let place = match request.version() {
            Version::HTTP_2 => request.extensions_mut().remove::<SharedPlace>(),
            _ => None,
        };
        let request = self.upstream_request(request)?;
        if let Some(place) = &place {
            place.forwarding();
        }
        let (response, lease) =
            match tokio::time::timeout(self.response_head, self.pool.send(request)).await {
                Ok(sent) => sent?,
                // Dropping the exchange closes its connection: it never goes
                // back to the pool with a response still pending.
                Err(_elapsed) => {
                    return Err(ForwardError::HeadTimeout {
                        upstream: self.upstream.clone(),
                        timeout: self.response_head,
                    });
                }
            };
        let (mut parts, body) = response.into_parts();
        hop_by_hop::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, self.idle, lease, place),
        ))
    }

    /// The client's request rewritten for the upstream (see [`ProxyService`]).
    fn upstream_request<B>(
        &self,
        request: Request<B>,
    ) -> Result<Request<UpstreamBody>, ForwardError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = request.into_parts();
        let path_and_query = origin_form(&parts.uri)?;
        let original_host = parts
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| parts.uri.authority().and_then(host_of));

        hop_by_hop::strip_request_hop_by_hop(&mut parts.headers);
        if let Some(ClientAddr(peer)) = parts.extensions.get::<ClientAddr>() {
            headers::append_forwarded_for(&mut parts.headers, peer.ip());
        }
        headers::set_forwarded_defaults(&mut parts.headers, original_host.as_ref());
        // Only fills in a missing Host: an HTTP/1.1 client's is kept, an
        // HTTP/2 request gets its :authority, and with neither (HTTP/1.0)
        // the upstream's authority, as HTTP/1.1 requires a Host.
        if let header::Entry::Vacant(entry) = parts.headers.entry(header::HOST) {
            let host = original_host.or_else(|| HeaderValue::from_str(self.upstream.as_str()).ok());
            if let Some(host) = host {
                entry.insert(host);
            }
        }

        parts.uri = Uri::from(path_and_query);
        parts.version = Version::HTTP_11;

        let body = body.map_err(Into::into).boxed_unsync();
        Ok(Request::from_parts(parts, body))
    }
}

/// The `path?query` of a request, or an error for a target that is not a
/// path (`CONNECT host:port`, `OPTIONS *`).
fn origin_form(uri: &Uri) -> Result<PathAndQuery, ForwardError> {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => Ok(pq.clone()),
        _ => Err(ForwardError::UnsupportedTarget(uri.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::Full;

    use super::*;

    fn service() -> ProxyService {
        ProxyService::new(
            Authority::from_static("127.0.0.1:8000"),
            &Timeouts::default(),
        )
    }

    fn rewrite(request: Request<Full<Bytes>>) -> Request<UpstreamBody> {
        service()
            .inner
            .upstream_request(request)
            .expect("forwardable")
    }

    #[test]
    fn service_is_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<ProxyService>();
    }

    #[test]
    fn http1_request_keeps_host_and_gets_forwarded_headers() {
        let mut request = Request::builder()
            .method("POST")
            .uri("/chat/send/?a=1&b=2")
            .header("host", "app.example")
            .header("x-forwarded-for", "203.0.113.1")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .body(Full::new(Bytes::from_static(b"hi")))
            .expect("request");
        request
            .extensions_mut()
            .insert(ClientAddr(SocketAddr::from(([192, 0, 2, 4], 5555))));
        let forwarded = rewrite(request);
        assert_eq!(forwarded.uri(), "/chat/send/?a=1&b=2");
        assert_eq!(forwarded.version(), Version::HTTP_11);
        let h = forwarded.headers();
        assert_eq!(h["host"], "app.example");
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 192.0.2.4");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert!(h.get("x-hop").is_none() && h.get("connection").is_none());
    }

    #[test]
    fn http2_request_gets_host_from_authority() {
        let request = Request::builder()
            .uri("http://user@app.example:8443/x")
            .version(Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let forwarded = rewrite(request);
        assert_eq!(forwarded.uri(), "/x");
        assert_eq!(forwarded.version(), Version::HTTP_11);
        assert_eq!(forwarded.headers()["host"], "app.example:8443");
        assert_eq!(forwarded.headers()["x-forwarded-host"], "app.example:8443");
        // No ClientAddr extension: nothing to append.
        assert!(forwarded.headers().get("x-forwarded-for").is_none());
    }

    #[test]
    fn non_path_targets_are_refused() {
        for target in ["example.com:443", "*"] {
            let request = Request::builder()
                .method("OPTIONS")
                .uri(target)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let err = service()
                .inner
                .upstream_request(request)
                .expect_err("refused");
            assert!(
                matches!(err, ForwardError::UnsupportedTarget(_)),
                "{target}: {err}"
            );
        }
    }
}
