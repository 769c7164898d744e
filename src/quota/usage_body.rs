//! [`UsageBody`]: a response body that reads in-band usage reports as it
//! streams and settles the request's reservation when the stream ends.
//!
//! Nothing is buffered: each frame goes on as soon as it arrives (minus a
//! stripped marker). If the client goes away mid-stream, the body is dropped
//! before its end; the rest of the upstream's answer is then read in the
//! background (bounded by the idle timeout between chunks) so the report at
//! its very end is still seen and counted. A body cut before its end (an
//! error, or silent past the idle timeout) with no report seen settles a
//! flagged request as one image (fail closed, [`Settlement::unreadable`]).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::settle::Settlement;
use crate::report::StreamReport;

/// A streamed response body under watch for usage reports.
pub struct UsageBody<B> {
    body: Option<Pin<Box<B>>>,
    watch: Option<Watch>,
    /// Trailers that arrived while held-back bytes still had to go first.
    pending_trailers: Option<http::HeaderMap>,
    idle: Duration,
    /// Made where `B`'s bounds are known, so `Drop` needs none.
    drain: fn(Pin<Box<B>>, Watch, Duration),
}

/// What is settled when the body ends.
pub(crate) struct Watch {
    report: StreamReport,
    settlement: Settlement,
}

/// How the upstream's body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// At its end: what it reported is all it reports.
    Whole,
    /// Before its end (an error, or silent past the idle timeout): a report
    /// may have been on its way, and the app may have saved images anyway
    /// (the chat app saves, then reports, at the very end).
    Cut,
}

impl Watch {
    /// Settles what the body reported, failing closed when it was cut; the
    /// rest to wait for, if the store does not answer at once.
    #[must_use = "what is returned is the rest of the settle: await or spawn it"]
    fn settle(self, end: End) -> Option<impl Future<Output = ()> + Send + 'static> {
        let report = match end {
            End::Whole => self.report.report(),
            End::Cut => self
                .settlement
                .unreadable(self.report.report_if_cut(), "its body ended before its end"),
        };
        self.settlement.settle(report)
    }
}

impl<B> UsageBody<B>
where
    B: Body<Data = Bytes> + Send + 'static,
{
    pub(crate) fn new(body: B, report: StreamReport, settlement: Settlement) -> Self {
        let idle = settlement.state.limits.idle_timeout;
        Self {
            body: Some(Box::pin(body)),
            watch: Some(Watch { report, settlement }),
            pending_trailers: None,
            idle,
            drain: drain_in_background::<B>,
        }
    }

    fn settle(&mut self, end: End) {
        // With the memory store the settle is done here, with no task.
        if let Some(watch) = self.watch.take()
            && let Some(rest) = watch.settle(end)
        {
            tokio::spawn(rest);
        }
    }
}

impl<B> Body for UsageBody<B>
where
    B: Body<Data = Bytes> + Send + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(trailers) = this.pending_trailers.take() {
            this.settle(End::Whole);
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        loop {
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            let frame = match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    this.body = None;
                    this.settle(End::Cut);
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.body = None;
                    let rest = this
                        .watch
                        .as_mut()
                        .map(|w| w.report.finish())
                        .unwrap_or_default();
                    this.settle(End::Whole);
                    if rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            };
            let Some(watch) = this.watch.as_mut() else {
                return Poll::Ready(Some(Ok(frame)));
            };
            match frame.into_data() {
                Ok(chunk) => {
                    let out = watch.report.data(chunk);
                    if out.is_empty() {
                        // All of it is held back (a possible marker).
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Err(frame) => {
                    let Ok(mut trailers) = frame.into_trailers() else {
                        continue;
                    };
                    watch.report.trailers(&mut trailers);
                    let rest = watch.report.finish();
                    if rest.is_empty() {
                        this.settle(End::Whole);
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    this.pending_trailers = Some(trailers);
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_none() && self.pending_trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // A stripped marker changes the length: no exact hint is given (the
        // upstream's Content-Length is kept only when nothing is stripped).
        SizeHint::default()
    }
}

impl<B> Drop for UsageBody<B> {
    fn drop(&mut self) {
        let (Some(body), Some(watch)) = (self.body.take(), self.watch.take()) else {
            return;
        };
        // The client left before the end: read the rest of the upstream's
        // answer anyway, to see its report, then settle.
        (self.drain)(body, watch, self.idle);
    }
}

/// Reads the rest of a body whose client left, then settles.
fn drain_in_background<B>(body: Pin<Box<B>>, watch: Watch, idle: Duration)
where
    B: Body<Data = Bytes> + Send + 'static,
{
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(drain(body, watch, idle));
    }
}

async fn drain<B>(mut body: Pin<Box<B>>, mut watch: Watch, idle: Duration)
where
    B: Body<Data = Bytes>,
{
    let pending = watch.settlement.state.deps.settlements.clone();
    let end = loop {
        let frame = tokio::select! {
            biased;
            // Shutdown's grace is over: no report can come any more, but
            // what has already arrived is read.
            () = pending.cut_signal() => break read_arrived(&mut body, &mut watch.report),
            frame = tokio::time::timeout(idle, body.frame()) => frame,
        };
        match frame {
            Ok(Some(Ok(frame))) => read(&mut watch.report, frame),
            Ok(None) => break End::Whole,
            Ok(Some(Err(_))) | Err(_) => break End::Cut,
        }
    };
    if let Some(rest) = watch.settle(end) {
        rest.await;
    }
}

/// Reads a frame of a body no client reads any more for its report.
fn read(report: &mut StreamReport, frame: Frame<Bytes>) {
    match frame.into_data() {
        Ok(chunk) => {
            report.data(chunk);
        }
        Err(frame) => {
            if let Ok(mut trailers) = frame.into_trailers() {
                report.trailers(&mut trailers);
            }
        }
    }
}

/// Most frames read at the cut: a body that never stops arriving is cut
/// all the same.
const READ_AT_THE_CUT: usize = 1024;

/// Reads the frames of `body` that have already arrived (none is waited
/// for), so a report waiting at the cut counts rather than the cut's
/// guess; how the body ended.
fn read_arrived<B>(body: &mut Pin<Box<B>>, report: &mut StreamReport) -> End
where
    B: Body<Data = Bytes>,
{
    use futures_util::FutureExt as _;
    for _ in 0..READ_AT_THE_CUT {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => read(report, frame),
            Some(None) => return End::Whole,
            Some(Some(Err(_))) | None => return End::Cut,
        }
    }
    End::Cut
}
