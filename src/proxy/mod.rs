//! PLACEHOLDER until the proxy branch lands.
#![allow(missing_docs)]
use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;

#[derive(Clone, Debug)]
pub struct ProxyService;

impl ProxyService {
    pub fn new(_a: http::uri::Authority, _t: &crate::config::Timeouts) -> Self {
        ProxyService
    }
}

impl<B> tower::Service<http::Request<B>> for ProxyService {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(crate::error::json_error(
            http::StatusCode::BAD_GATEWAY,
            "placeholder",
        )))
    }
}
