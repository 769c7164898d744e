//! The admin listener (phase: operations), on its own address
//! (`admin.listen`), never the proxy's port:
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves, with the store's health (`store`: `up`, `breaker_open`, `local`, `pending_settles`, `dropped_settles`, `last_error`; [`crate::store::StoreHealth`]) |
//! | `GET /readyz` | 200 while the pod can serve its app; 503 from the first moment of a drain, and while the store does not answer only when `admin.ready_requires_store = true` |
//! | `GET /metrics` | Prometheus text ([`crate::metrics`]) |
//! | `GET /v1/users/{id}/usage?plan=` | a user's usage, reservations and limits per period ([`UserUsage`]) |
//! | `DELETE /v1/users/{id}/usage?period=daily\|weekly\|monthly\|all` | reset |
//! | `POST /v1/users/{id}/usage` `{"period": "daily", "delta": -1}` | adjust (e.g. refund a failed image) |
//! | `POST /v1/reload` | re-read the config file (like SIGHUP); 400 with the reason when it does not load |
//!
//! `/v1/` needs `Authorization: Bearer <token>`, the token read from
//! `admin.token_env` or `admin.token_file` ([`AdminToken`]). With neither
//! set, `/v1/` is off and answers 403 saying how to turn it on.
//!
//! The running process's state that these endpoints read and reload
//! ([`AppState`], `state.rs`) lives here, below the wiring in
//! [`crate::app`] that creates it and drains it.

mod api;
mod state;
mod token;
mod usage;

use std::convert::Infallible;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::Instrument;

pub use self::state::{AppState, Current, NotReady, ReloadError, Reloaded};
pub use self::token::{AdminToken, TokenError};
pub use self::usage::{PeriodChoice, PeriodReport, Periods, UsageError, UsageOps, UserUsage};

/// How long admin requests may run on once the admin listener stops (after
/// the proxy has drained).
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// Most connections the admin listener keeps open at once: probes,
/// scrapes and an operator's calls need a handful. Past it the oldest is
/// evicted to let the newcomer in, as on the proxy port (`server::limits`),
/// so at most this and an eighth more are open. Its connections share the
/// process's open files with the proxy port, within the descriptors kept
/// to spare (`server::open_files`): unbounded, a client holding admin
/// connections took every descriptor, and the proxy port could accept no
/// one (`tests/it/attack_availability.rs`).
pub const ADMIN_MAX_CONNECTIONS: NonZeroU32 = NonZeroU32::new(32).expect("not zero");

/// Serves the admin API on `listener` until `shutdown` completes.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let service = tower::service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(api::handle(state, request).await) }
    });
    crate::server::serve_limited(
        listener,
        service,
        shutdown,
        ADMIN_GRACE,
        crate::server::AcceptBalance::alone(),
        crate::server::ConnectionLimits::new(ADMIN_MAX_CONNECTIONS, None),
    )
    .instrument(tracing::info_span!("admin"))
    .await
}
