//! Settlement (phase: settle): what an inspected request carries from admit
//! to the end of its response, and how it becomes usage.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use http::StatusCode;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::Instrument;

use super::hold::{Hold, Holds};
use super::probe::ProbeCache;
use super::request_id;
use super::spans;
use super::standing::Standing;
use super::state::QuotaState;
use crate::decision::Decision;
use crate::identity::Identity;
use crate::periods::{Period, PeriodWindows};
use crate::quota::routes::Route;
use crate::report::UsageReport;
use crate::store::{PeriodCounts, Reservation};

/// What an inspected request carries to its settlement.
// One per inspected request, moved a handful of times: boxing the large
// variant would cost an allocation for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Ticket {
    /// Flagged, and one unit is held for it.
    Reserved {
        reservation: Reservation,
        identity: Identity,
        counts: PeriodCounts,
    },
    /// Flagged, over a limit, and forwarded in shadow mode (`shadow.rs`):
    /// nothing is held; reported images are counted in `windows`, the
    /// periods of its admission.
    ShadowDenied {
        identity: Identity,
        counts: PeriodCounts,
        windows: PeriodWindows,
        period: Period,
    },
    /// Flagged but forwarded without a reservation: anonymous under
    /// `anonymous = "forward"`, or the store failed under `allow`.
    Unreserved {
        identity: Option<Identity>,
        decision: Decision,
    },
    /// Not flagged. If the answer reports saved images anyway, they are
    /// counted against `identity` (who asked, when identify knew) or else
    /// the user these headers identify then, and `session` (the probe path,
    /// or the request path) is remembered as image-generating.
    Unflagged {
        headers: http::HeaderMap,
        session: String,
        identity: Option<Identity>,
    },
}

impl Ticket {
    pub(super) fn decision(&self) -> Decision {
        match self {
            Ticket::Reserved { .. } => Decision::Allowed,
            Ticket::ShadowDenied { .. } => Decision::ShadowDenied,
            Ticket::Unreserved { decision, .. } => *decision,
            Ticket::Unflagged { .. } => Decision::Unflagged,
        }
    }
}

/// How long a session that saved images without a flag is treated as
/// image-generating, on a route without a probe.
const LEARNED_SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// A ticket on its way to the store, with what the log line needs.
pub(crate) struct Settlement {
    pub(crate) state: Arc<QuotaState>,
    pub(crate) route: Arc<Route>,
    pub(crate) ticket: Ticket,
    pub(crate) status: Option<StatusCode>,
    pub(crate) started: Instant,
    /// When a ticket without periods of its own (no reservation, not
    /// shadow-denied) was admitted: usage reported for it counts in the
    /// periods of this instant, as a reservation's does. `None` for the
    /// others, which carry their periods (and so skip a clock read).
    admitted: Option<DateTime<Utc>>,
    /// The request's `X-Request-Id`, for the log line.
    request_id: Option<http::HeaderValue>,
    /// The request's span (`spans.rs`), kept open until usage is recorded.
    span: tracing::Span,
    /// Counts this settlement as pending until it is dropped.
    pending: TaskTrackerToken,
    /// Keeps the reservation (if any) alive until the store has its usage.
    hold: Option<Hold>,
}

impl Settlement {
    /// A settlement for `ticket` of the request whose span is `span`,
    /// counted as pending from now until it is settled or dropped.
    pub(crate) fn new(
        state: Arc<QuotaState>,
        route: Arc<Route>,
        ticket: Ticket,
        request_id: Option<http::HeaderValue>,
        span: tracing::Span,
    ) -> Self {
        let pending = state.deps.settlements.token();
        let admitted = match &ticket {
            Ticket::Reserved { .. } | Ticket::ShadowDenied { .. } => None,
            Ticket::Unreserved { .. } | Ticket::Unflagged { .. } => Some(state.deps.clock.now()),
        };
        let hold = match &ticket {
            Ticket::Reserved { reservation, .. } => Some(Holds::hold(&state, reservation)),
            _ => None,
        };
        Settlement {
            state,
            route,
            ticket,
            status: None,
            started: Instant::now(),
            admitted,
            request_id,
            span,
            pending,
            hold,
        }
    }

    /// What to settle when the answer's report cannot be known (its body
    /// compressed unasked, cut before its end, or a JSON body not read)
    /// and `seen` is what was
    /// read of it: a flagged request is charged a malformed report (one
    /// image when the answer succeeded: fail closed) unless a report was
    /// seen; an unflagged one only what was seen, or every such text reply
    /// would count. `why` goes in the warning.
    pub(crate) fn unreadable(&self, seen: Option<UsageReport>, why: &str) -> Option<UsageReport> {
        let flagged = !matches!(self.ticket, Ticket::Unflagged { .. });
        tracing::warn!(route = %self.route.name, flagged, reported = seen.is_some(),
            "the upstream's report cannot be known: {why}");
        match seen {
            None if flagged => Some(UsageReport::MALFORMED),
            seen => seen,
        }
    }

    /// Turns the ticket into usage for what the upstream reported (`None`
    /// or 0 images releases it) and writes the request's log line. A
    /// malformed report is charged as one image when the response otherwise
    /// succeeded (fail closed), logged and counted. Runs in a `settle` span
    /// below the request's. Done in place when the store answers at once
    /// (the memory store); otherwise returns the rest, to be awaited or
    /// spawned: the store's settle (Redis), or first identifying who asked.
    #[must_use = "what is returned is the rest of the settle: await or spawn it, or the usage is lost"]
    pub(crate) fn settle(
        self,
        report: Option<UsageReport>,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let span = spans::settle(&self.span, self.ticket.decision().as_str());
        let rest = span.in_scope(|| self.record(report))?;
        Some(rest.instrument(span))
    }

    fn record(
        self,
        report: Option<UsageReport>,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let Settlement {
            state,
            route,
            ticket,
            status,
            started,
            admitted,
            request_id,
            span: _,
            pending,
            hold,
        } = self;
        let succeeded = status.is_some_and(|s| s.is_success());
        if report.is_some_and(|r| r.malformed) {
            tracing::warn!(route = %route.name, succeeded,
                "malformed saved-images report from the upstream; charging 1 image if nothing else was reported and the response succeeded");
            crate::counters::malformed_report(&route.name);
        }
        let amount = state
            .policy
            .reports
            .amount(report.map_or(0, |r| r.charged(succeeded)));
        tracing::Span::current().record("quota.images", amount);
        let now = state.deps.clock.now();
        let (plan, standing) = match &ticket {
            Ticket::Reserved {
                identity, counts, ..
            } => (
                identity.plan.clone(),
                Standing::new(&identity.limits, counts, None),
            ),
            Ticket::ShadowDenied {
                identity,
                counts,
                period,
                ..
            } => (
                identity.plan.clone(),
                Standing::new(&identity.limits, counts, Some(*period)),
            ),
            Ticket::Unreserved {
                identity: Some(identity),
                ..
            } => (identity.plan.clone(), Standing::UNKNOWN),
            _ => (None, Standing::UNKNOWN),
        };
        let mut outcome = Outcome {
            state,
            route,
            decision: ticket.decision(),
            plan,
            standing,
            status,
            started,
            request_id,
            pending,
            _hold: hold,
            amount,
            now,
            admitted,
            user: None,
        };
        let reservation = match ticket {
            Ticket::Reserved {
                reservation,
                identity,
                ..
            } => {
                outcome.user = Some(identity.user_id);
                Some(reservation)
            }
            // Never reserved: what the upstream saved is counted once, in
            // the periods it was admitted in, like an unflagged report.
            Ticket::ShadowDenied {
                identity, windows, ..
            } => {
                let reservation = (amount > 0).then(|| Reservation {
                    id: Reservation::new_id(),
                    user: identity.user_id.clone(),
                    windows,
                    expires_at: now,
                    keys_expire: false,
                });
                outcome.user = Some(identity.user_id);
                reservation
            }
            Ticket::Unreserved { identity, .. } => {
                outcome.user = identity.map(|i| i.user_id);
                outcome.unreserved_usage()
            }
            Ticket::Unflagged {
                headers,
                session,
                identity,
            } if amount > 0 => {
                let ttl = outcome
                    .route
                    .probe
                    .as_ref()
                    .map_or(LEARNED_SESSION_TTL, |p| p.cache_ttl());
                tracing::info!(route = %outcome.route.name, session = %session,
                    "saved images reported for an unflagged request; counting it, and its session from now on");
                // Who asked, as identify knew them on arrival: asked only
                // now, a session logged out meanwhile would read as
                // anonymous and the images go uncounted.
                let Some(who) = identity else {
                    return Some(outcome.later(Wait::Identity {
                        headers,
                        session,
                        ttl,
                    }));
                };
                learn(&outcome.state, &session, &who.user_id, ttl);
                outcome.user = Some(who.user_id);
                outcome.unreserved_usage()
            }
            Ticket::Unflagged { .. } => None,
        };
        let Some(reservation) = reservation else {
            outcome.finish(None);
            return None;
        };
        let store = &outcome.state.deps.store;
        let span = spans::store_settle();
        match span.in_scope(|| store.settle_now(&reservation, amount, now)) {
            Some(answer) => {
                outcome.finish(Some((&reservation, answer)));
                None
            }
            None => Some(outcome.later(Wait::Store { reservation, span })),
        }
    }
}

/// What a settlement still needs from a store, or an identity source, that
/// must be waited on.
enum Wait {
    /// Who asked an unflagged request that reported saved images, to be
    /// identified from its `headers` before it is counted; its `session` is
    /// then learned as image-generating for `ttl`.
    Identity {
        headers: http::HeaderMap,
        session: String,
        ttl: std::time::Duration,
    },
    /// The store's settle of this reservation, in its `store.settle` span.
    Store {
        reservation: Reservation,
        span: tracing::Span,
    },
}

/// A settlement turned into usage: what is counted, against whom, and what
/// the request's log line says. Counted as pending until it is finished.
struct Outcome {
    state: Arc<QuotaState>,
    route: Arc<Route>,
    decision: Decision,
    plan: Option<Arc<str>>,
    standing: Standing,
    status: Option<StatusCode>,
    started: Instant,
    request_id: Option<http::HeaderValue>,
    pending: TaskTrackerToken,
    /// The reservation's hold, let go once the store has the usage.
    _hold: Option<Hold>,
    /// Images to count.
    amount: u64,
    /// When the settlement was made.
    now: DateTime<Utc>,
    /// When a ticket without periods of its own was admitted.
    admitted: Option<DateTime<Utc>>,
    /// Who the images count against, when known.
    user: Option<String>,
}

impl Outcome {
    /// Usage without a reservation (unflagged, or forwarded on a store
    /// error) is a settle of a reservation never made, in the periods of
    /// the admission: the store counts it once.
    fn unreserved_usage(&self) -> Option<Reservation> {
        if self.amount == 0 {
            return None;
        }
        let Some(user) = &self.user else {
            tracing::warn!(route = %self.route.name, amount = self.amount,
                "saved images reported for an anonymous request; not counted");
            return None;
        };
        Some(Reservation {
            id: Reservation::new_id(),
            user: user.clone(),
            windows: self
                .state
                .deps
                .calendar
                .windows(self.admitted.unwrap_or(self.now)),
            expires_at: self.now,
            keys_expire: false,
        })
    }

    /// The rest of a settlement that waits: who asked, then the store.
    async fn later(mut self, wait: Wait) {
        let (reservation, answer) = match wait {
            Wait::Store { reservation, span } => {
                let answer = (self.state.deps.store)
                    .settle(&reservation, self.amount, self.now)
                    .instrument(span)
                    .await;
                (reservation, answer)
            }
            Wait::Identity {
                headers,
                session,
                ttl,
            } => {
                let reservation = match self.state.deps.identity.identify(&headers).await {
                    Ok(identity) => {
                        if let Some(who) = &identity {
                            learn(&self.state, &session, &who.user_id, ttl);
                        }
                        self.user = identity.map(|i| i.user_id);
                        self.unreserved_usage()
                    }
                    Err(e) => {
                        tracing::error!(route = %self.route.name, amount = self.amount, error = %e,
                            "saved images reported but the user cannot be identified; not counted");
                        None
                    }
                };
                let Some(reservation) = reservation else {
                    self.finish(None);
                    return;
                };
                let store = &self.state.deps.store;
                let span = spans::store_settle();
                let answer =
                    match span.in_scope(|| store.settle_now(&reservation, self.amount, self.now)) {
                        Some(answer) => answer,
                        None => {
                            store
                                .settle(&reservation, self.amount, self.now)
                                .instrument(span)
                                .await
                        }
                    };
                (reservation, answer)
            }
        };
        self.finish(Some((&reservation, answer)));
    }

    /// Records a failed store settle and writes the request's log line;
    /// the settlement is no longer pending.
    fn finish(self, stored: Option<(&Reservation, Result<(), crate::store::StoreError>)>) {
        let user = self.user.as_deref().unwrap_or("-");
        if let Some((reservation, Err(e))) = stored {
            tracing::error!(
                route = %self.route.name, user, amount = self.amount,
                reservation = %reservation.id, error = %e,
                "usage could not be recorded"
            );
            // A settle the store dropped itself is counted there
            // (`retry_queue`), not twice.
            if !matches!(e, crate::store::StoreError::SettleDropped(_)) {
                crate::counters::settlements_dropped(crate::counters::DROPPED_STORE_ERROR, 1);
            }
        }
        // Recorded (or given up on): no longer pending.
        drop(self.pending);
        tracing::info!(
            route = %self.route.name,
            user,
            plan = self.plan.as_deref().unwrap_or("-"),
            decision = self.decision.as_str(),
            period = self.standing.period,
            remaining_daily = self.standing.daily,
            remaining_weekly = self.standing.weekly,
            remaining_monthly = self.standing.monthly,
            request_id = self.request_id.as_ref().map_or("-", request_id::as_str),
            status = self.status.map(|s| s.as_u16()),
            images = self.amount,
            latency_ms = self.started.elapsed().as_millis() as u64,
            "inspected request"
        );
    }
}

/// Remembers that `session` saved images for `user` unflagged: the user's
/// own key, and a hint that someone here is learned (read before
/// identifying).
fn learn(state: &QuotaState, session: &str, user: &str, ttl: std::time::Duration) {
    let cache = &state.deps.probe_cache;
    cache.put(ProbeCache::key(session, user), true, ttl);
    cache.put(ProbeCache::key(session, ""), true, ttl);
}
