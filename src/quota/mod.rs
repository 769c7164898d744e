//! The quota middleware: [`QuotaLayer`] wraps any HTTP service and enforces
//! image-generation quotas on the configured routes.
//!
//! Shaped like a tower-http middleware: the layer ([`QuotaLayer`]), the
//! service ([`Quota`]), its future ([`ResponseFuture`]), and the bodies it
//! hands on ([`RequestBody`] to the inner service, [`QuotaBody`] to the
//! caller), with its state (`QuotaState` in `state.rs`, one per config). The
//! phases of an inspected request are one function each in `pipeline.rs`:
//! classify (route, read the body, flag) → identify → admit → forward →
//! report → settle. The route table is [`routes`]. An upload
//! (`multipart/form-data`) is read and flagged as it streams and waits for the decision in a spool (`spool.rs`): memory up to
//! `body_buffer_bytes`, then a temporary file. Shadow mode (`shadow.rs`)
//! forwards a request over a limit instead of denying it; the quota-status
//! path is answered here, never forwarded (`status.rs`).

mod admit;
mod body;
mod budget;
mod deadline;
mod denial;
mod forward;
mod future;
mod hold;
mod layer;
mod pending;
mod pipeline;
mod probe;
mod ratelimit;
mod read;
mod request_id;
pub mod routes;
mod service;
mod settle;
mod shadow;
mod spans;
mod spool;
mod standing;
mod state;
mod status;
mod uninspected;
mod usage_body;

pub use self::body::{QuotaBody, RequestBody};
pub use self::budget::BodyShare;
pub use self::deadline::{ClientBody, ClientBodyTimeout};
pub use self::future::ResponseFuture;
pub use self::layer::{QuotaLayer, QuotaLayerBuilder};
pub use self::pending::PendingSettlements;
pub use self::probe::ProbeSpec;
pub use self::service::Quota;
pub use self::spans::SPANS;
pub use self::usage_body::UsageBody;

#[cfg(test)]
mod tests;
