//! [`ResponseFuture`]: the response future of [`super::Quota`]. A request on
//! no inspected route is the inner service's own future, polled in place,
//! its answer handed on with a usage report header removed; an inspected
//! request is the boxed future of `inspect`. Every answer carries the
//! request's `X-Request-Id`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::body::QuotaBody;
use super::request_id::{self, X_REQUEST_ID};
use super::state::QuotaState;

/// A boxed, sendable future.
pub(super) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// The response future of [`Quota`]. Every answer carries the
    /// request's `X-Request-Id`.
    pub struct ResponseFuture<F, E, B> {
        #[pin]
        pub(super) kind: Kind<F, E, B>,
        pub(super) request_id: http::HeaderValue,
    }
}

pin_project! {
    #[project = KindProj]
    pub(super) enum Kind<F, E, B> {
        Passthrough { #[pin] future: F, state: Arc<QuotaState>, uri: http::Uri },
        Inspected { future: BoxFuture<Result<Response<QuotaBody<B>>, E>> },
    }
}

impl<F, E, B> Future for ResponseFuture<F, E, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<QuotaBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.kind.project() {
            KindProj::Passthrough { future, state, uri } => {
                let response = std::task::ready!(future.poll(cx))?;
                passthrough_response(state, response, uri.path(), this.request_id)
            }
            KindProj::Inspected { future } => std::task::ready!(future.as_mut().poll(cx))?,
        };
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), this.request_id.clone());
        Poll::Ready(Ok(response))
    }
}

/// The upstream's answer to a request on no inspected route: handed on,
/// with a usage report header removed (it is not counted there).
pub(super) fn passthrough_response<B>(
    state: &QuotaState,
    response: Response<B>,
    path: &str,
    id: &http::HeaderValue,
) -> Response<QuotaBody<B>> {
    let (mut parts, body) = response.into_parts();
    // A report of 0 saved nothing: not worth a warning.
    let report = state.policy.reports.take_header(&mut parts.headers);
    if let Some(report) = report.filter(|r| r.images > 0 || r.malformed) {
        state
            .deps
            .uninspected_reports
            .seen(&report, path, request_id::as_str(id));
    }
    Response::from_parts(parts, QuotaBody::inner(body))
}
