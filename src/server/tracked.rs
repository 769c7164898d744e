//! The requests of one connection as hyper sees them (phase: accept, before
//! classify): each is tagged with its peer ([`ClientAddr`]) and counted in
//! the connection's [`Activity`] from its start to the end of its answer's
//! body, so the connection's watch knows when no request is open and an
//! HTTP/1 connection may be parked (`park.rs`). An HTTP/2 request first
//! takes a place among its connection's (`streams.rs`), held as long, and
//! carries its connection's [`BodyShare`] of the body budget.
//!
//! The service's future is boxed, one allocation per request: hyper gives
//! an HTTP/1 connection back (`poll_without_shutdown`, needed to park it)
//! only for services whose futures are `Unpin`, which a tower service's
//! future need not be.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tower::ServiceExt;

use super::ClientAddr;
use super::connection::Activity;
use super::streams::{ConnectionStreams, StreamPlace};
use crate::quota::BodyShare;

/// `service` as hyper calls it: cloned for each request, which is tagged
/// with `peer` and counted in `activity` until its answer's body ends;
/// an HTTP/2 one waits for a place among `streams` first.
pub(super) struct TrackedService<S> {
    /// Boxed, so that this type is `Unpin` whatever `S` is.
    service: Box<S>,
    activity: Arc<Activity>,
    peer: SocketAddr,
    /// None on a connection that speaks HTTP/1 (one request at a time).
    streams: Option<Arc<ConnectionStreams>>,
    /// What the bodies of an HTTP/2 connection's requests may hold of the
    /// body budget together; None with HTTP/1 (one body at a time), and
    /// without `max_connections_per_ip` (`connection::Protocols`).
    bodies: Option<BodyShare>,
}

impl<S> TrackedService<S> {
    pub(super) fn new(
        service: S,
        activity: Arc<Activity>,
        peer: SocketAddr,
        streams: Option<ConnectionStreams>,
        bodies: Option<BodyShare>,
    ) -> Self {
        Self {
            service: Box::new(service),
            activity,
            peer,
            bodies,
            streams: streams.map(Arc::new),
        }
    }
}

/// The answer of a [`TrackedService`], boxed (see the module).
type TrackedFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<TrackedBody<B>>, Infallible>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for TrackedService<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = TrackedFuture<B>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let open = OpenRequest::new(&self.activity, request.version());
        let streams = match &self.streams {
            Some(streams) if request.version() == http::Version::HTTP_2 => {
                Some(Arc::clone(streams))
            }
            _ => None,
        };
        request.extensions_mut().insert(ClientAddr(self.peer));
        if let Some(bodies) = &self.bodies {
            request.extensions_mut().insert(bodies.clone());
        }
        // Lazy: the service is called when first polled, after the place.
        let answer = S::clone(&self.service).oneshot(request);
        Box::pin(async move {
            let place = match streams {
                Some(streams) => Some(streams.place().await),
                None => None,
            };
            let response = answer.await?;
            Ok(response.map(|body| TrackedBody {
                body,
                _open: open,
                _place: place,
            }))
        })
    }
}

/// One request counted open in its connection's [`Activity`] until dropped
/// (with its answer's body, or with the answer if there is none).
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn new(activity: &Arc<Activity>, version: http::Version) -> Self {
        activity.request(version);
        Self(Arc::clone(activity))
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.answered();
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, its request counted open (and holding its place,
    /// HTTP/2) until it is dropped.
    pub(super) struct TrackedBody<B> {
        #[pin]
        body: B,
        _open: OpenRequest,
        _place: Option<StreamPlace>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
