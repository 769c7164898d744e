//! [`QuotaState`]: everything a request's inspection reads (routes, header
//! rules, identity, store, calendar, report rules, body limits, policies),
//! built once per config by [`super::QuotaLayer`] and swapped whole on
//! reload.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::budget::BodyBudget;
use super::probe::ProbeCache;
use super::shadow::ShadowPolicy;
use super::spool::SpoolSettings;
use crate::clock::Clock;
use crate::config::{
    AnonymousPolicy, IdentityErrorPolicy, Messages, RequestBuffering, StoreErrorPolicy,
};
use crate::identity::{IdentityHeaders, IdentitySource};
use crate::periods::Calendar;
use crate::quota::routes::{RouteTable, RoutingHeaders};
use crate::report::ReportReader;
use crate::store::QuotaStore;

/// Everything a request's inspection reads; one per config.
pub(crate) struct QuotaState {
    pub(crate) routes: RouteTable,
    /// Headers removed from every request (`strip_routing_headers`, and
    /// `shadow_header`).
    pub(crate) routing_headers: RoutingHeaders,
    /// Who is in shadow mode, and the header that tells the upstream.
    pub(crate) shadow: ShadowPolicy,
    /// `status.path`: answered here, never forwarded.
    pub(crate) status_path: Option<String>,
    pub(crate) identity: Arc<dyn IdentitySource>,
    /// The client's identity headers, removed from every request and set
    /// from the verified identity, when the identity source does not trust
    /// them (forward-auth, JWT).
    pub(crate) identity_headers: Option<IdentityHeaders>,
    pub(crate) on_identity_error: IdentityErrorPolicy,
    pub(crate) store: Arc<dyn QuotaStore>,
    pub(crate) calendar: Calendar,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) reports: ReportReader,
    pub(crate) messages: Messages,
    pub(crate) max_body_bytes: u64,
    pub(crate) spool: SpoolSettings,
    /// Bytes of request bodies held, process-wide (`body_budget_bytes`);
    /// kept across reloads that do not change its size.
    pub(crate) budget: BodyBudget,
    /// Longest silence of a client sending its body (`timeouts.client_body`).
    pub(crate) client_body: Duration,
    /// Which bodies are received whole before the upstream is called.
    pub(crate) request_buffering: RequestBuffering,
    pub(crate) max_json_bytes: u64,
    pub(crate) reservation_ttl: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) probe_cache: ProbeCache,
    pub(crate) on_store_error: StoreErrorPolicy,
    pub(crate) anonymous: AnonymousPolicy,
    /// Keep the client's `X-Request-Id` (`log.trust_request_id`).
    pub(crate) trust_request_id: bool,
    /// Admitted requests whose usage is not recorded yet; shutdown waits for
    /// it. Kept across reloads.
    pub(crate) settlements: TaskTracker,
    /// Counts requests on no inspected route; looked up once, in the
    /// metrics recorder installed when the layer is built.
    pub(crate) passthrough: metrics::Counter,
}
