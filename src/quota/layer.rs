//! [`QuotaLayer`]: what the middleware needs, built once from the config and
//! shared (behind an `Arc`) by every clone of the service. A reload swaps it
//! atomically ([`QuotaLayer::reload`]): each request reads it once, when it
//! arrives, and keeps that version to its end.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tower::Layer;

use super::budget::BodyBudget;
use super::hold::Holds;
use super::pending::PendingSettlements;
use super::probe::ProbeCache;
use super::service::Quota;
use super::shadow::ShadowPolicy;
use super::spool::SpoolSettings;
pub(crate) use super::state::QuotaState;
use super::state::{Dependencies, Policy, RequestLimits, Routing};
use super::uninspected::UninspectedReports;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError, IdentityKind, RequiredHeader};
use crate::identity::{IdentityHeaders, IdentitySource};
use crate::periods::Calendar;
use crate::quota::routes::{RouteTable, RoutingHeaders};
use crate::report::ReportReader;
use crate::store::QuotaStore;

/// A [`tower::Layer`] that enforces image-generation quotas on the configured
/// routes of the service it wraps.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use quota_proxy::{config::Config, quota::QuotaLayer, store::MemoryStore};
///
/// let config = Config::load("config/quota-proxy.toml".as_ref())?;
/// let store = Arc::new(MemoryStore::new(config.store.memory_max_users));
/// let layer = QuotaLayer::builder(&config)?.store(store).build();
/// // tower::ServiceBuilder::new().layer(layer).service(your_service)
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct QuotaLayer {
    pub(super) current: Arc<ArcSwap<QuotaState>>,
}

impl QuotaLayer {
    /// Starts building a layer from a validated config. The store must be
    /// given; identity defaults to the config's source (`identity.kind`) and the clock
    /// to the system clock.
    pub fn builder(config: &Config) -> Result<QuotaLayerBuilder, ConfigError> {
        // A probe asks as the user the proxy reads: with the header the
        // JWT is read from, or those the identity call is sent, whatever
        // its own `forward_headers` (a token in `X-Access-Token` never
        // reached the probe, whose answer for an anonymous caller was
        // cached under the token's user, `tests/it/jwt_fit.rs`).
        let credentials = match config.identity.kind {
            IdentityKind::Jwt => vec![config.identity.jwt.header_name.name().clone()],
            IdentityKind::ForwardAuth => (config.identity.forward_auth.forward_headers.iter())
                .map(|name| name.name().clone())
                .collect(),
            IdentityKind::Header => Vec::new(),
        };
        let routes = RouteTable::with_credentials(&config.routes, &credentials)?;
        if let Some(path) = &config.status.path
            && let Some(route) = routes.any_method(path)
        {
            return Err(ConfigError::invalid(
                "status.path",
                format!(
                    "{path:?} is also the path of route \"{}\"; the proxy answers the status \
                     path itself, so choose a path no route (and no view of the app) has",
                    route.name
                ),
            ));
        }
        // The shadow header is the proxy's to send: a client's copy goes
        // with the routing headers, in every spelling, in the same pass.
        let stripped: Vec<RequiredHeader> = config
            .strip_routing_headers
            .iter()
            .cloned()
            .chain(config.shadow_header.required())
            .collect();
        let routing_headers = RoutingHeaders::new(&stripped);
        let identity = crate::identity::from_config(config)?;
        Ok(QuotaLayerBuilder {
            config: config.clone(),
            routes,
            routing_headers,
            identity,
            store: None,
            clock: Arc::new(SystemClock),
            settlements: PendingSettlements::default(),
            budget: None,
        })
    }
}

impl QuotaLayer {
    /// Swaps in the state `next` builds (routes, plans, identity, messages,
    /// store, …) for every service this layer made. Requests already under
    /// way finish with the state they started with. The clock and the
    /// settlement tracker belong to the process and carry over.
    pub fn reload(&self, next: QuotaLayerBuilder) {
        let current = self.current.load();
        let budget = (current.limits.budget.capacity() == next.config.body_budget_bytes.get())
            .then(|| current.limits.budget.clone());
        let next = next
            .clock(Arc::clone(&current.deps.clock))
            .settlements(current.deps.settlements.clone())
            .budget(budget)
            .build();
        self.current.store(next.current.load_full());
    }

    /// Tracks admitted requests until their usage is recorded (or released):
    /// its `len()` is what is pending; close it and `wait()` at shutdown,
    /// then `cut()` what is left.
    pub fn settlements(&self) -> PendingSettlements {
        self.current.load().deps.settlements.clone()
    }
}

impl<S> Layer<S> for QuotaLayer {
    type Service = Quota<S>;

    fn layer(&self, inner: S) -> Quota<S> {
        Quota::new(inner, Arc::clone(&self.current))
    }
}

impl std::fmt::Debug for QuotaLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaLayer")
            .field("calendar", &self.current.load().deps.calendar)
            .finish_non_exhaustive()
    }
}

/// Builds a [`QuotaLayer`]; see [`QuotaLayer::builder`].
pub struct QuotaLayerBuilder {
    config: Config,
    routes: RouteTable,
    routing_headers: RoutingHeaders,
    identity: Arc<dyn IdentitySource>,
    store: Option<Arc<dyn QuotaStore>>,
    clock: Arc<dyn Clock>,
    settlements: PendingSettlements,
    budget: Option<BodyBudget>,
}

impl QuotaLayerBuilder {
    /// The store usage is counted in (required).
    pub fn store(mut self, store: Arc<dyn QuotaStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Where identities come from, instead of the config's headers.
    pub fn identity(mut self, identity: Arc<dyn IdentitySource>) -> Self {
        self.identity = identity;
        self
    }

    /// Where "now" comes from; tests pass a [`crate::clock::ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn settlements(mut self, settlements: PendingSettlements) -> Self {
        self.settlements = settlements;
        self
    }

    fn budget(mut self, budget: Option<BodyBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The layer. Without a store, a memory store sized by the config is
    /// used.
    pub fn build(self) -> QuotaLayer {
        let config = self.config;
        let store = self.store.unwrap_or_else(|| {
            Arc::new(crate::store::MemoryStore::new(
                config.store.memory_max_users,
            ))
        });
        QuotaLayer {
            current: Arc::new(ArcSwap::from_pointee(QuotaState {
                routing: Routing {
                    routes: self.routes,
                    routing_headers: self.routing_headers,
                    identity_headers: (!self.identity.trusts_client_headers())
                        .then(|| IdentityHeaders::from_config(&config.identity)),
                    status_path: config.status.path.clone(),
                    trust_request_id: config.log.trust_request_id,
                },
                policy: Policy {
                    anonymous: config.identity.anonymous,
                    on_identity_error: config.identity.on_identity_error,
                    on_store_error: config.store.on_store_error,
                    shadow: ShadowPolicy::new(&config),
                    reports: ReportReader::new(&config.usage),
                    messages: config.messages,
                },
                limits: RequestLimits {
                    max_body_bytes: config.max_body_bytes.get(),
                    max_json_bytes: config.usage.max_json_bytes.get(),
                    client_body: config.timeouts.client_body.get(),
                    request_buffering: config.request_buffering,
                    spool: SpoolSettings {
                        memory_limit: usize::try_from(config.body_buffer_bytes.get())
                            .unwrap_or(usize::MAX),
                        dir: config.spool_dir.unwrap_or_else(std::env::temp_dir),
                    },
                    budget: self
                        .budget
                        .unwrap_or_else(|| BodyBudget::new(config.body_budget_bytes.get())),
                    reservation_ttl: config.store.reservation_ttl.get(),
                    idle_timeout: config.timeouts.idle.get(),
                },
                deps: Dependencies {
                    identity: crate::identity::canonical_ids(
                        self.identity,
                        config.identity.user_id_format,
                    ),
                    store,
                    clock: self.clock,
                    calendar: Calendar::new(config.periods.timezone.0, config.periods.week_start.0)
                        .with_months(config.periods.calendar),
                    probe_cache: ProbeCache::default(),
                    settlements: self.settlements,
                    passthrough: crate::counters::passthrough_counter(),
                    uninspected_reports: UninspectedReports::new(),
                    holds: Holds::default(),
                },
            })),
        }
    }
}
