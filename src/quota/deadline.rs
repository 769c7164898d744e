//! The client-body deadline (phases: read, and forward for a body that
//! streams through): [`ClientBody`] wraps a client's request body so that a
//! wait for its next frame longer than `timeouts.client_body` ends it with
//! [`ClientBodyTimeout`].
//!
//! Problem: a client that sends its headers and then stalls its body held
//! its connection, its buffers and (for an upload) its spool file forever;
//! 1,100 of them exhausted the file descriptors. Mechanism: the same idle
//! timer as the upstream's response body (`proxy/body.rs`), on the other
//! side. Bound: a connection whose client sends nothing for
//! `timeouts.client_body` while its body is read gets 408 and is closed;
//! what it held is released.
//!
//! The timer runs only while the reader waits for a frame: time the proxy
//! spends elsewhere (a slow upstream not taking the bytes, a wait for the
//! body budget) is not the client's silence. It is armed only on the first
//! wait, so a body that arrives with its head never touches the timer
//! wheel, and the wrapper adds 16 bytes to the body it wraps.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// The client sent no body data for longer than `timeouts.client_body`.
/// The error a [`ClientBody`] ends with; the answer is 408 and the
/// connection is closed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client sent no request body data for {0:?} (timeouts.client_body)")]
pub struct ClientBodyTimeout(pub Duration);

impl ClientBodyTimeout {
    /// Whether `error`, or one of its sources, is a [`ClientBodyTimeout`].
    pub fn is_cause_of(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(error);
        while let Some(error) = cause {
            if error.is::<ClientBodyTimeout>() {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

pin_project! {
    /// A client's request body under the client-body deadline.
    #[derive(Debug)]
    pub struct ClientBody<B> {
        #[pin]
        body: B,
        // The deadline in milliseconds (saturated): 4 bytes, not a
        // `Duration`'s 16.
        limit_ms: u32,
        // Made on the first wait.
        timer: Option<Pin<Box<Timer>>>,
    }
}

pin_project! {
    #[derive(Debug)]
    struct Timer {
        #[pin]
        sleep: Sleep,
        // Whether `sleep` measures the current wait; reset by each frame.
        waiting: bool,
        // After the deadline the body is over, whatever `B` would say.
        expired: bool,
    }
}

impl<B> ClientBody<B> {
    /// `body`, ended with [`ClientBodyTimeout`] when a wait for its next
    /// frame lasts longer than `limit`.
    pub fn new(body: B, limit: Duration) -> Self {
        Self {
            body,
            limit_ms: u32::try_from(limit.as_millis()).unwrap_or(u32::MAX),
            timer: None,
        }
    }

    fn limit(&self) -> Duration {
        Duration::from_millis(u64::from(self.limit_ms))
    }

    fn expired(&self) -> bool {
        self.timer.as_ref().is_some_and(|t| t.expired)
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let limit = self.limit();
        let this = self.project();
        if this.timer.as_ref().is_some_and(|t| t.expired) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.body.poll_frame(cx) {
            if let Some(timer) = this.timer {
                *timer.as_mut().project().waiting = false;
            }
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        // Nothing yet: this wait starts now, unless it started earlier.
        let timer = this.timer.get_or_insert_with(|| {
            Box::pin(Timer {
                sleep: tokio::time::sleep(limit),
                waiting: true,
                expired: false,
            })
        });
        let mut timer = timer.as_mut().project();
        if !*timer.waiting {
            timer.sleep.as_mut().reset(Instant::now() + limit);
            *timer.waiting = true;
        }
        ready!(timer.sleep.poll(cx));
        *timer.expired = true;
        tracing::debug!(?limit, "client request body went silent; cutting it");
        Poll::Ready(Some(Err(Box::new(ClientBodyTimeout(limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.expired() || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.expired() {
            SizeHint::with_exact(0)
        } else {
            self.body.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use http_body_util::BodyExt;

    use super::*;

    /// A body that yields each frame after its delay on tokio's (paused)
    /// clock, measured from the poll that returned the previous frame.
    struct Scripted {
        frames: VecDeque<(Duration, &'static str)>,
        sleep: Option<Pin<Box<Sleep>>>,
    }

    impl Scripted {
        fn new(frames: &[(u64, &'static str)]) -> Self {
            Self {
                frames: frames
                    .iter()
                    .map(|&(ms, text)| (Duration::from_millis(ms), text))
                    .collect(),
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
            let Some(&(delay, _)) = self.frames.front() else {
                return Poll::Ready(None);
            };
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
            let frame = self.frames.pop_front().map(|(_, text)| text);
            Poll::Ready(frame.map(|text| Ok(Frame::data(Bytes::from_static(text.as_bytes())))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn steady_body_longer_than_the_deadline_is_read_whole() {
        let frames: Vec<_> = (0..10).map(|_| (900, "x")).collect();
        let body = ClientBody::new(Scripted::new(&frames), Duration::from_secs(1));
        let bytes = body
            .collect()
            .await
            .expect("never silent for 1 s")
            .to_bytes();
        assert_eq!(bytes, "xxxxxxxxxx");
    }

    #[tokio::test(start_paused = true)]
    async fn silence_longer_than_the_deadline_ends_the_body() {
        let started = Instant::now();
        let mut body = ClientBody::new(
            Scripted::new(&[(0, "a"), (60_000, "late")]),
            Duration::from_secs(1),
        );
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().expect("data"), "a");
        let cut = body
            .frame()
            .await
            .expect("an error")
            .expect_err("timed out");
        assert!(ClientBodyTimeout::is_cause_of(&*cut), "{cut}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_pauses_is_not_a_silent_client() {
        let mut body = ClientBody::new(
            Scripted::new(&[(0, "a"), (10, "b")]),
            Duration::from_secs(1),
        );
        body.frame().await.expect("a frame").expect("data");
        tokio::time::sleep(Duration::from_secs(30)).await;
        let second = body.frame().await.expect("a frame").expect("data");
        assert_eq!(second.into_data().expect("data"), "b");
    }

    #[test]
    fn the_wrapper_adds_16_bytes_at_most() {
        let incoming = std::mem::size_of::<hyper::body::Incoming>();
        let wrapped = std::mem::size_of::<ClientBody<hyper::body::Incoming>>();
        assert!(wrapped <= incoming + 16, "{wrapped} vs {incoming}");
    }
}
