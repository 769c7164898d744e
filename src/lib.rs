//! quota-proxy: enforces per-user image-generation quotas in front of an HTTP
//! service (a Django app), as a [`tower::Layer`] and as a reverse proxy.
//! PLACEHOLDER crate docs — rewritten once the data path is wired.

pub mod clock;
pub mod config;
pub mod error;
pub mod flag;
pub mod periods;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod store;
