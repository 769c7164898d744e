//! The requests of one connection as hyper sees them (phase: accept, before
//! classify): each is tagged with its peer ([`ClientAddr`]) and counted in
//! the connection's [`Activity`] from its start to the end of its answer's
//! body, so the connection's watch knows when no request is open and an
//! HTTP/1 connection may be parked (`park.rs`). An HTTP/2 request first
//! takes a place among its connection's (`streams.rs`), held as long, and
//! carries its connection's [`BodyShare`] of the body budget. One its
//! client resets once it was forwarded, before the answer's head, runs on
//! in a task of its own, holding its place, until that head comes
//! ([`ToTheAnswer`]); the upstream's answer body holds the place too
//! ([`SharedPlace`]). One reset before it was forwarded is dropped.
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
use super::streams::{ConnectionStreams, SharedPlace, StreamPlace};
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
        let service = S::clone(&self.service);
        let Some(streams) = streams else {
            // HTTP/1: the answer alone, no place to take.
            let answer = service.oneshot(request);
            return Box::pin(async move {
                Ok(answer.await?.map(|body| TrackedBody {
                    body,
                    _open: open,
                    _place: None,
                }))
            });
        };
        // The service is called after the place is taken.
        Box::pin(async move {
            let place = Arc::new(streams.place().await);
            // The upstream's answer body keeps it too: read on for a report
            // once the client reset the request.
            request.extensions_mut().insert(SharedPlace::new(&place));
            let answer = service.oneshot(request);
            let (response, place) = ToTheAnswer::new(answer, place).await;
            Ok(response?.map(|body| TrackedBody {
                body,
                _open: open,
                _place: Some(place),
            }))
        })
    }
}

/// An HTTP/2 request's answer, awaited with its place. Dropped once the
/// request was forwarded and before the answer's head (the client reset
/// the request), the rest runs in a task of its own, still holding the
/// place, until the head comes or the connection is cut: the app does not
/// stop work on a request its client gave up, so the request keeps
/// counting against its connection (`streams.rs`). The answer then is
/// dropped, which closes its upstream connection; a flagged request's
/// accounting goes on as when a client goes away. Dropped before it was
/// forwarded, the request is dropped with it: it never reaches the app.
struct ToTheAnswer<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    /// None once answered.
    waiting: Option<(Pin<Box<F>>, Arc<StreamPlace>)>,
}

impl<F> ToTheAnswer<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    fn new(answer: F, place: Arc<StreamPlace>) -> Self {
        Self {
            waiting: Some((Box::pin(answer), place)),
        }
    }
}

impl<F> Future for ToTheAnswer<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    type Output = (F::Output, Arc<StreamPlace>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((answer, _)) = &mut self.waiting else {
            panic!("ToTheAnswer polled after its answer");
        };
        let answer = std::task::ready!(answer.as_mut().poll(cx));
        let (_, place) = self.waiting.take().expect("waiting until answered");
        Poll::Ready((answer, place))
    }
}

impl<F> Drop for ToTheAnswer<F>
where
    F: Future + Send + 'static,
    F::Output: Send,
{
    fn drop(&mut self) {
        // Reset before it was forwarded: dropped, as the client wants.
        let Some((answer, place)) = self.waiting.take().filter(|(_, place)| place.forwarded())
        else {
            return;
        };
        // No runtime: it is going away, with every task.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        metrics::counter!("quota_proxy_http2_requests_reset_at_app_total").increment(1);
        runtime.spawn(async move {
            let cut = place.cut().clone();
            tokio::select! {
                _answer = answer => {}
                () = cut.cancelled() => {}
            }
            drop(place);
        });
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
        _place: Option<Arc<StreamPlace>>,
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
