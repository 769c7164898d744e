//! quota-proxy enforces per-user image-generation quotas (per calendar day,
//! week and month) in front of an HTTP service: a Django app, in the case it
//! was built for. It is a [`tower::Layer`] ([`quota::QuotaLayer`]) that can
//! sit in front of any HTTP service, and a binary that puts it in front of a
//! streaming reverse proxy ([`proxy::ProxyService`]).
//!
//! # The life of a request
//!
//! 1. **classify**: method and the path Django resolves against the routes
//!    ([`quota::routes`]); no match → forwarded untouched, no store call.
//!    On a route, the body is read (streamed, spooled) and [`flag`] says
//!    whether it asks for an image (unsure → it asks); a probe may force it.
//! 2. **identify**: who asks, on which plan, with which limits ([`identity`]).
//! 3. **admit**: day, week and month of *now* ([`periods`]); one unit held
//!    against all three limits, atomically ([`store`]), or the denial
//!    (403/429, `{"error": …}`, `Retry-After`). The [`decision::Decision`]
//!    goes to the request counter and the log line.
//! 4. **forward**: the exact bytes to the upstream ([`proxy`]), streamed back.
//! 5. **report**: how many images the answer saved ([`report`]).
//! 6. **settle**: the held unit becomes usage or is released, when the answer
//!    is handed on or its stream ends ([`quota`], [`store`]).
//!
//! Each phase is one function of `src/quota/pipeline.rs`, called in this
//! order by its `inspect`.
//!
//! A denied request never reaches the upstream: it gets the route's status
//! (403 or 429), `{"error": "<message>"}` and `Retry-After`. In shadow mode
//! (`shadow` on the config, a route or a plan) it is forwarded instead, and
//! flagged to the upstream. The quota-status path (`[status] path`) is
//! answered by the layer itself: the caller's own quota, one store read.
//!
//! # Levels
//!
//! Every module sits on one level and imports only from its own level or
//! lower ones, never round a circle (`tests/it/levels.rs` fails otherwise):
//!
//! | level | modules |
//! |---|---|
//! | 0 domain | [`config`] (the bottom: serde types and parsing, no runtime objects; imports only [`periods`]), [`periods`], [`clock`], [`flag`], [`report`], [`response`] (the answers the proxy makes itself), [`decision`], [`counters`] (what is counted), [`hop_by_hop`] (headers that end at this hop) |
//! | 1 ports | [`store`] (the trait, memory, Redis, outage handling, opening the configured one), [`identity`] |
//! | 2 middleware | [`quota`] (the layer, its service and bodies, routes, probe, spool) |
//! | 3 runtime | [`metrics`] (exporter, timers), [`telemetry`] (logs), [`server`] (accept loop), [`proxy`] (forwarding), [`admin`] (admin listener and the running state it reloads), [`app`] (wiring, workers, drain), [`cli`] |
//!
//! For operations, the admin listener (probes, usage API, reload) is
//! [`admin`], the Prometheus metrics [`metrics`], the logs and OTLP traces
//! [`telemetry`] (each phase a span, `quota/spans.rs`); the drain and reload are described in [`app`] and in the README's
//! Operations section.

pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod counters;
pub mod decision;
pub mod flag;
pub mod hop_by_hop;
pub mod identity;
pub mod metrics;
pub mod periods;
pub mod proxy;
pub mod pybase64;
pub mod quota;
pub mod report;
pub mod response;
pub mod server;
pub mod store;
pub mod telemetry;

pub use quota::QuotaLayer;

/// A boxed error that crosses task boundaries: what hyper and tower accept
/// from bodies and services, and what this crate's bodies and services
/// return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
