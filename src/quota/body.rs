//! The bodies the quota middleware hands on. Both are enums over the
//! original body and ones the middleware holds, so a request on a route that
//! is not inspected streams through with no copy and no allocation.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;

use super::deadline::ClientBody;
use super::spool::SpooledBody;
use super::usage_body::UsageBody;
use crate::BoxError;

pin_project! {
    /// The request body given to the inner service: the client's own stream
    /// (under the client-body deadline, `timeouts.client_body`), or the
    /// bytes the middleware read to inspect or buffer them
    /// (byte-identical), from memory or from the spool an upload waited in.
    /// Its error is the client's (a [`crate::quota::ClientBodyTimeout`]
    /// when it went silent), or the spool's failure to read its temporary
    /// file back.
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestBodyKind<B>,
    }
}

pin_project! {
    #[project = RequestBodyProj]
    enum RequestBodyKind<B> {
        // Not inspected: the client's body, streamed under its deadline.
        Streaming { #[pin] body: ClientBody<B> },
        // Inspected: the body as read, re-sent with its exact length.
        Buffered { #[pin] body: Full<Bytes> },
        // Inspected upload: replayed from memory and a temporary file, with
        // its exact length. Boxed, so that the rare upload does not size
        // (and get copied with) every request.
        Spooled { body: Pin<Box<SpooledBody>> },
    }
}

impl<B> RequestBody<B> {
    /// Wraps a body that streams through untouched, ended with a
    /// [`crate::quota::ClientBodyTimeout`] when the client goes silent for
    /// longer than `deadline`.
    pub fn streaming(body: B, deadline: std::time::Duration) -> Self {
        Self {
            kind: RequestBodyKind::Streaming {
                body: ClientBody::new(body, deadline),
            },
        }
    }

    /// A body made of bytes already read.
    pub fn buffered(bytes: Bytes) -> Self {
        Self {
            kind: RequestBodyKind::Buffered {
                body: Full::new(bytes),
            },
        }
    }

    /// A body replayed from the spool it waited in.
    pub(crate) fn spooled(body: SpooledBody) -> Self {
        Self {
            kind: RequestBodyKind::Spooled {
                body: Box::pin(body),
            },
        }
    }
}

impl<B> Body for RequestBody<B>
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
        match self.project().kind.project() {
            RequestBodyProj::Streaming { body } => body.poll_frame(cx),
            RequestBodyProj::Buffered { body } => body.poll_frame(cx).map_err(never),
            RequestBodyProj::Spooled { body } => body.as_mut().poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestBodyKind::Streaming { body } => body.is_end_stream(),
            RequestBodyKind::Buffered { body } => body.is_end_stream(),
            RequestBodyKind::Spooled { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestBodyKind::Streaming { body } => body.size_hint(),
            RequestBodyKind::Buffered { body } => body.size_hint(),
            RequestBodyKind::Spooled { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// The response body the middleware returns: the inner service's, or one
    /// the middleware made (a denial, an error, or a JSON body it read to
    /// find a usage report).
    pub struct QuotaBody<B> {
        #[pin]
        kind: QuotaBodyKind<B>,
    }
}

pin_project! {
    #[project = QuotaBodyProj]
    enum QuotaBodyKind<B> {
        // The inner service's body, streamed.
        Inner { #[pin] body: B },
        // A body the middleware holds in full.
        Local { #[pin] body: Full<Bytes> },
        // The inner service's body, read for usage reports as it streams.
        // Boxed: it holds the settlement and the scanner, about 1 KB, and
        // every response of every route would otherwise be that large and
        // copied whole each time hyper moves it (callgrind: boxing it took
        // 1,100 instructions, 3%, off every pass-through request).
        Watched { body: Pin<Box<UsageBody<B>>> },
    }
}

impl<B> QuotaBody<B> {
    /// Wraps the inner service's body.
    pub fn inner(body: B) -> Self {
        Self {
            kind: QuotaBodyKind::Inner { body },
        }
    }

    /// A body of `bytes`.
    pub fn local(bytes: Bytes) -> Self {
        Self::full(Full::new(bytes))
    }

    /// The inner service's body under watch for usage reports.
    pub(crate) fn watched(body: UsageBody<B>) -> Self {
        Self {
            kind: QuotaBodyKind::Watched {
                body: Box::pin(body),
            },
        }
    }

    /// A body the middleware made in full.
    pub fn full(body: Full<Bytes>) -> Self {
        Self {
            kind: QuotaBodyKind::Local { body },
        }
    }
}

impl<B> Body for QuotaBody<B>
where
    B: Body<Data = Bytes> + Send + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            QuotaBodyProj::Inner { body } => body.poll_frame(cx),
            QuotaBodyProj::Local { body } => body.poll_frame(cx).map_err(never),
            QuotaBodyProj::Watched { body } => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            QuotaBodyKind::Inner { body } => body.is_end_stream(),
            QuotaBodyKind::Local { body } => body.is_end_stream(),
            QuotaBodyKind::Watched { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            QuotaBodyKind::Inner { body } => body.size_hint(),
            QuotaBodyKind::Local { body } => body.size_hint(),
            QuotaBodyKind::Watched { body } => body.size_hint(),
        }
    }
}

fn never<E>(e: Infallible) -> E {
    match e {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hyper moves a request, body included, several times on its way
    /// in; a rare variant must not make every body large. (The response
    /// side, `QuotaBody<ProxyBody>`, is checked in `proxy/body.rs`.)
    #[test]
    fn bodies_are_no_larger_than_what_they_wrap_needs() {
        // The client-body deadline takes 16 bytes (`deadline.rs`).
        let incoming = std::mem::size_of::<hyper::body::Incoming>() + 16;
        assert!(
            std::mem::size_of::<RequestBody<hyper::body::Incoming>>() <= incoming + 8,
            "RequestBody<Incoming> is {} bytes, Incoming {incoming}",
            std::mem::size_of::<RequestBody<hyper::body::Incoming>>()
        );
    }
}
