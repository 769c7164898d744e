//! The reverse proxy (phase: forward): [`ProxyService`] sends each request
//! once to the upstream over a pooled HTTP/1.1 connection and streams the
//! response back in a [`ProxyBody`], cut only when the upstream goes
//! silent. It is the innermost service; the quota layer wraps it, and
//! [`crate::server::serve`] runs the stack.
//!
//! - `service.rs`: the tower service, its timeouts and error answers;
//! - `pool.rs`: the idle upstream connections, lent one request at a time;
//! - `headers.rs`: hop-by-hop removal and `X-Forwarded-*` (pure functions);
//! - `body.rs`: the response body and its idle timeout;
//! - `error.rs`: failures classified by source and mapped to 400/501/502/504.
//!
//! Upgrades (WebSocket) are not proxied yet: `Upgrade` is stripped like the
//! other hop-by-hop headers.

mod body;
mod error;
mod headers;
mod pool;
mod service;

pub use body::{BodyError, ProxyBody};
pub use pool::POOL_IDLE_TIMEOUT;
pub use service::{ProxyService, ResponseFuture};
