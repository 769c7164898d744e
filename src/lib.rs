//! quota-proxy enforces per-user image-generation quotas (per calendar day,
//! week and month) in front of an HTTP service: a Django app, in the case it
//! was built for. It is a [`tower::Layer`] ([`quota::QuotaLayer`]) that can
//! sit in front of any HTTP service, and a binary that puts it in front of a
//! streaming reverse proxy ([`proxy::ProxyService`]).
//!
//! # The life of a request
//!
//! | phase | what happens | where |
//! |---|---|---|
//! | route | method + the path Django resolves (percent-decoded, canonical converter values) against the configured routes; no match → forwarded untouched, no store call | [`routes`] |
//! | flag | the body (JSON, form, multipart — streamed and spooled) and query: does it ask for an image? An unreadable body counts as asking | [`flag`], [`quota`] |
//! | probe | does this session generate images whatever the flag says? (cached) | [`quota::ProbeSpec`] |
//! | identity | who is asking, on which plan, with which limits (trusted headers, Django forward-auth, JWT) | [`identity`] |
//! | reserve | day, week and month of *now* in the configured zone; check all three limits and hold one unit, atomically | [`periods`], [`store`] |
//! | upstream | the exact bytes are forwarded; responses stream back | [`proxy`] |
//! | report | the answer says how many images were saved: header, JSON field, in-band marker at the end of a stream, SSE event, trailer | [`report`] |
//! | settle | the held unit becomes usage, or is released — just after the answer is handed on, or when the stream ends (kept alive meanwhile) | [`quota`], [`store`] |
//!
//! The phases are called in this order by `inspect` in `src/quota/service.rs`.
//!
//! A denied request never reaches the upstream: it gets the route's status
//! (403 or 429), `{"error": "<message>"}` and `Retry-After`.
//!
//! The binary's wiring is in [`app`]; its accept loop in [`server`]. For
//! operations, the admin listener (probes, usage API, reload) is [`admin`],
//! the Prometheus metrics [`metrics`], the logs and OTLP traces
//! [`telemetry`] (each phase a span, `quota/spans.rs`); the drain and
//! reload are described in [`app`] and in the README's Operations section.

pub mod admin;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod flag;
pub mod identity;
pub mod metrics;
pub mod periods;
pub mod proxy;
pub mod quota;
pub mod report;
pub mod routes;
pub mod server;
pub mod store;
pub mod telemetry;

pub use quota::QuotaLayer;
