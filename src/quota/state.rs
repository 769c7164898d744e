//! [`QuotaState`]: everything a request's inspection reads, built once per
//! config by [`super::QuotaLayer`] and swapped whole on reload. Grouped by
//! what each part is for: how requests are routed and rewritten on the way
//! in ([`Routing`]), what is decided when something is missing or over
//! ([`Policy`]), what a request may cost ([`RequestLimits`]) and the parts
//! the phases call ([`Dependencies`]).

use std::sync::Arc;
use std::time::Duration;

use super::budget::{BodyBudget, BodyShare, Held};
use super::hold::Holds;
use super::pending::PendingSettlements;
use super::probe::ProbeCache;
use super::shadow::ShadowPolicy;
use super::spool::SpoolSettings;
use super::uninspected::UninspectedReports;
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
    pub(crate) routing: Routing,
    pub(crate) policy: Policy,
    pub(crate) limits: RequestLimits,
    pub(crate) deps: Dependencies,
}

/// Which requests are inspected, and how every request's headers are
/// rewritten before anything is decided.
pub(crate) struct Routing {
    /// The inspected routes; a request on none of them passes through.
    pub(crate) routes: RouteTable,
    /// Headers removed from every request (`strip_routing_headers`, and
    /// `shadow_header`).
    pub(crate) routing_headers: RoutingHeaders,
    /// The client's identity headers, removed from every request and set
    /// from the verified identity, when the identity source does not trust
    /// them (forward-auth, JWT).
    pub(crate) identity_headers: Option<IdentityHeaders>,
    /// `status.path`: answered here, never forwarded.
    pub(crate) status_path: Option<String>,
    /// Keep the client's `X-Request-Id` (`log.trust_request_id`).
    pub(crate) trust_request_id: bool,
}

/// What is decided when a user is unknown, a store fails or a limit is
/// reached, and how usage reports are read.
pub(crate) struct Policy {
    /// `identity.anonymous`.
    pub(crate) anonymous: AnonymousPolicy,
    /// `identity.on_identity_error`.
    pub(crate) on_identity_error: IdentityErrorPolicy,
    /// `store.on_store_error`.
    pub(crate) on_store_error: StoreErrorPolicy,
    /// Who is in shadow mode, and the header that tells the upstream.
    pub(crate) shadow: ShadowPolicy,
    /// The denial's texts.
    pub(crate) messages: Messages,
    /// How the upstream's usage reports are read (`[usage]`).
    pub(crate) reports: ReportReader,
}

/// What one request may cost: bytes held, time waited, units reserved.
pub(crate) struct RequestLimits {
    /// `max_body_bytes`: a larger inspected body is refused (413).
    pub(crate) max_body_bytes: u64,
    /// `usage.max_json_bytes`: a larger JSON answer is not read for a report.
    pub(crate) max_json_bytes: u64,
    /// Longest silence of a client sending its body (`timeouts.client_body`).
    pub(crate) client_body: Duration,
    /// Which bodies are received whole before the upstream is called.
    pub(crate) request_buffering: RequestBuffering,
    /// Where a body past `body_buffer_bytes` is spooled.
    pub(crate) spool: SpoolSettings,
    /// Bytes of request bodies held, process-wide (`body_budget_bytes`);
    /// kept across reloads that do not change its size.
    pub(crate) budget: BodyBudget,
    /// How long a reservation lives without a settle.
    pub(crate) reservation_ttl: Duration,
    /// `timeouts.idle`: longest wait for the upstream's next body frame.
    pub(crate) idle_timeout: Duration,
}

impl RequestLimits {
    /// A holding of the body budget for the request with these `parts`:
    /// within its connection's [`BodyShare`] too, when it carries one.
    pub(crate) fn hold_body(&self, parts: &http::request::Parts) -> Held {
        self.budget
            .hold(parts.extensions.get::<BodyShare>(), self.max_body_bytes)
    }
}

/// The parts the phases call: identity, store, time, and what is kept
/// across requests.
pub(crate) struct Dependencies {
    /// Who the caller is (identify).
    pub(crate) identity: Arc<dyn IdentitySource>,
    /// Where usage is reserved and settled (admit, settle).
    pub(crate) store: Arc<dyn QuotaStore>,
    /// Where "now" comes from.
    pub(crate) clock: Arc<dyn Clock>,
    /// The day, week and month a moment falls in.
    pub(crate) calendar: Calendar,
    /// The probe's answers, per session and route.
    pub(crate) probe_cache: ProbeCache,
    /// Admitted requests whose usage is not recorded yet; shutdown waits for
    /// them, then cuts them. Kept across reloads.
    pub(crate) settlements: PendingSettlements,
    /// Counts requests on no inspected route; looked up once, in the
    /// metrics recorder installed when the layer is built.
    pub(crate) passthrough: metrics::Counter,
    /// Counts reports on routes that are not inspected, and throttles the
    /// warning about them.
    pub(crate) uninspected_reports: UninspectedReports,
    /// The reservations held by requests not yet settled, kept alive
    /// together.
    pub(crate) holds: Holds,
}
