//! The response body of the forward phase: the upstream's body streamed
//! frame by frame under an idle timeout, or a small body the proxy wrote
//! itself (502, 504). Nothing is buffered: each frame goes to the client as
//! soon as the upstream sends it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::pool::Lease;
use crate::BoxError;
use crate::server::SharedPlace;

/// Why a response body stopped before its end. The client connection is
/// then aborted, so the client sees a truncated response, never a short one
/// that looks complete.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The upstream sent nothing for longer than `timeouts.idle`.
    #[error("upstream sent no data for {0:?}; response cut")]
    Idle(Duration),
    /// The upstream connection failed mid-body (reset, malformed chunk).
    #[error("reading the upstream response body failed")]
    Upstream(#[source] BoxError),
}

pin_project! {
    /// The body of every response [`ProxyService`](crate::proxy::ProxyService)
    /// returns: `Data = Bytes`, `Error = BodyError`. Trailers pass through.
    ///
    /// An upstream body holds its connection's lease: read to its end, the
    /// connection goes back to the pool (also when it is dropped after its
    /// last frame, as hyper does); dropped early or failed, the connection
    /// is closed. It also keeps its HTTP/2 request's place (`server`), so
    /// an answer read on after its client left counts as at the app.
    #[derive(Debug)]
    pub struct ProxyBody {
        #[pin]
        kind: Kind,
        lease: Option<Lease>,
        _place: Option<SharedPlace>,
    }

    impl PinnedDrop for ProxyBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(lease) = this.lease.take()
                && let KindProj::Upstream { body } = this.kind.project()
                && body.finished()
            {
                lease.release();
            }
        }
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind {
        Upstream { #[pin] body: IdleTimeout<Incoming> },
        Local { #[pin] body: Full<Bytes> },
    }
}

impl ProxyBody {
    /// The upstream's body, cut when it goes silent for longer than `idle`;
    /// `lease` is its connection's, `place` its request's.
    pub(crate) fn upstream(
        body: Incoming,
        idle: Duration,
        lease: Lease,
        place: Option<SharedPlace>,
    ) -> Self {
        Self {
            kind: Kind::Upstream {
                body: IdleTimeout::new(body, idle),
            },
            lease: Some(lease),
            _place: place,
        }
    }
}

/// A body the proxy wrote itself, such as a JSON error from
/// [`crate::response::json_error`].
impl From<Full<Bytes>> for ProxyBody {
    fn from(body: Full<Bytes>) -> Self {
        Self {
            kind: Kind::Local { body },
            lease: None,
            _place: None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Upstream { body } => {
                let frame = ready!(body.poll_frame(cx));
                match &frame {
                    None => {
                        if let Some(lease) = this.lease.take() {
                            lease.release();
                        }
                    }
                    // A failed body's connection is not reused.
                    Some(Err(_)) => drop(this.lease.take()),
                    Some(Ok(_)) => {}
                }
                Poll::Ready(frame)
            }
            KindProj::Local { body } => body
                .poll_frame(cx)
                .map_err(|never: std::convert::Infallible| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream { body } => body.is_end_stream(),
            Kind::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream { body } => body.size_hint(),
            Kind::Local { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// Wraps a body so that a wait for its next frame longer than `idle`
    /// ends it with [`BodyError::Idle`]. The timer runs only while the
    /// consumer is waiting for a frame: a client that reads slowly
    /// (backpressure) is not mistaken for a silent upstream, and a slow but
    /// steady stream is never cut, however long it lasts.
    ///
    /// The timer is armed only when the body has no frame ready: a small
    /// answer that arrives whole with its head (most of them) never reads
    /// the clock, allocates a timer or touches the timer wheel.
    #[derive(Debug)]
    pub(crate) struct IdleTimeout<B> {
        #[pin]
        body: B,
        idle: Duration,
        // Made on the first wait; boxed so that the body stays `Unpin` when
        // `B` is.
        timer: Option<Pin<Box<Sleep>>>,
        // Whether `timer` measures the current wait; reset by each frame.
        waiting: bool,
        // After an idle error the body is over, whatever `B` would say.
        timed_out: bool,
    }
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(body: B, idle: Duration) -> Self {
        Self {
            body,
            idle,
            timer: None,
            waiting: false,
            timed_out: false,
        }
    }
}

impl<B: Body> IdleTimeout<B> {
    /// Whether the wrapped body reached its own end (not cut by the timer).
    fn finished(&self) -> bool {
        !self.timed_out && self.body.is_end_stream()
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if *this.timed_out {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|r| r.map_err(|e| BodyError::Upstream(e.into()))));
        }
        // Nothing yet: this wait starts now, unless it started earlier.
        let timer = match this.timer {
            Some(timer) if *this.waiting => timer,
            Some(timer) => {
                timer.as_mut().reset(Instant::now() + *this.idle);
                timer
            }
            None => this.timer.insert(Box::pin(tokio::time::sleep(*this.idle))),
        };
        *this.waiting = true;
        ready!(timer.as_mut().poll(cx));
        *this.timed_out = true;
        tracing::warn!(idle = ?this.idle, "upstream response body went silent; cutting it");
        Poll::Ready(Some(Err(BodyError::Idle(*this.idle))))
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.timed_out {
            SizeHint::with_exact(0)
        } else {
            self.body.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http::HeaderMap;
    use http_body_util::BodyExt;

    use super::*;
    use crate::quota::QuotaBody;

    /// hyper moves a response, body included, several times on its way
    /// out; a rare variant of the quota layer's body must not make every
    /// response body large.
    #[test]
    fn quota_bodies_are_no_larger_than_what_they_wrap_needs() {
        let proxy_body = std::mem::size_of::<ProxyBody>();
        assert!(
            std::mem::size_of::<QuotaBody<ProxyBody>>() <= proxy_body + 8,
            "QuotaBody<ProxyBody> is {} bytes, ProxyBody {proxy_body}",
            std::mem::size_of::<QuotaBody<ProxyBody>>()
        );
    }

    /// A body that yields each frame after its delay, measured from the
    /// previous poll that returned a frame, on tokio's (paused) clock.
    struct Scripted {
        frames: VecDeque<(Duration, Frame<Bytes>)>,
        sleep: Option<Pin<Box<Sleep>>>,
    }

    impl Scripted {
        fn new(frames: impl IntoIterator<Item = (u64, Frame<Bytes>)>) -> Self {
            let frames = frames
                .into_iter()
                .map(|(ms, frame)| (Duration::from_millis(ms), frame))
                .collect();
            Self {
                frames,
                sleep: None,
            }
        }
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            let Some((delay, _)) = self.frames.front() else {
                return Poll::Ready(None);
            };
            let delay = *delay;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
            Poll::Ready(self.frames.pop_front().map(|(_, frame)| Ok(frame)))
        }
    }

    fn data(text: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(text.as_bytes()))
    }

    #[tokio::test(start_paused = true)]
    async fn steady_stream_longer_than_idle_completes() {
        let frames = (0..10).map(|_| (90, data("x")));
        let body = IdleTimeout::new(Scripted::new(frames), Duration::from_millis(100));
        let collected = body.collect().await.expect("no idle cut").to_bytes();
        assert_eq!(collected, "xxxxxxxxxx");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_longer_than_idle_is_cut_then_body_ends() {
        let mut body = IdleTimeout::new(
            Scripted::new([(0, data("a")), (500, data("late"))]),
            Duration::from_millis(100),
        );
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "a");
        let cut = body.frame().await.expect("an error");
        assert!(matches!(cut, Err(BodyError::Idle(d)) if d == Duration::from_millis(100)));
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_reader_is_not_an_idle_upstream() {
        let mut body = IdleTimeout::new(
            Scripted::new([(0, data("a")), (50, data("b"))]),
            Duration::from_millis(100),
        );
        body.frame().await.expect("a frame").expect("data");
        // The consumer stalls far longer than `idle` before asking again.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let second = body.frame().await.expect("a frame").expect("data");
        assert_eq!(second.into_data().expect("data"), "b");
    }

    #[tokio::test(start_paused = true)]
    async fn trailers_pass_through() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
        let body = IdleTimeout::new(
            Scripted::new([(0, data("a")), (10, Frame::trailers(trailers))]),
            Duration::from_millis(100),
        );
        let collected = body.collect().await.expect("complete");
        assert_eq!(collected.trailers().expect("trailers")["x-checksum"], "abc");
    }

    #[test]
    fn local_body_is_a_full_body() {
        let body = ProxyBody::from(Full::new(Bytes::from_static(b"{}")));
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!body.is_end_stream());
    }
}
