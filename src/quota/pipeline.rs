//! The life of an inspected request, one function per phase: [`inspect`]
//! calls [`classify`] → [`identify`] → [`admit`] → `forward` (which
//! reports and settles: `forward.rs`, `usage_body.rs`, `settle.rs`). A phase
//! that answers the client itself returns `ControlFlow::Break` with the
//! answer; otherwise it hands what it learned to the next one.

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, request};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use super::admit;
use super::body::{QuotaBody, RequestBody};
use super::forward::forward;
use super::probe::{ProbeAnswer, ProbeCache};
use super::read::read_body;
use super::service::local;
use super::settle::Ticket;
use super::spans;
use super::state::QuotaState;
use crate::BoxError;
use crate::decision::Decision;
use crate::flag::FlagVerdict;
use crate::identity::{Identity, IdentityError, set_identity_headers};
use crate::quota::routes::{Route, RouteMatch};

/// An answer the proxy sends itself, ending the request's life early.
type Answer = Response<Full<Bytes>>;

/// What the request asks, as the backend will read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asks {
    /// For an image, or the proxy cannot be sure it does not (fails closed).
    Image,
    /// For no image, unless a probe or an earlier saved image says the
    /// session generates whatever the flag says.
    Nothing,
    /// Nothing the backend will run: it refuses the body while parsing it.
    Refused,
}

/// What classify hands on.
struct Classified<B> {
    body: RequestBody<B>,
    asks: Asks,
    /// The "session" a forced-image answer is remembered for: the probe's
    /// path, or the request's own path on a route without a probe, both
    /// written with canonical parameters.
    session: String,
}

/// The request's life after its route matched (see the module doc).
pub(super) async fn inspect<S, ReqB, ResB>(
    state: Arc<QuotaState>,
    mut inner: S,
    matched: RouteMatch,
    request: Request<ReqB>,
) -> Result<Response<QuotaBody<ResB>>, S::Error>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError> + Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let route = Arc::clone(&matched.route);
    let (mut parts, body) = request.into_parts();
    let Classified {
        body,
        asks,
        session,
    } = match classify(&state, &matched, &parts, body).await {
        ControlFlow::Continue(classified) => classified,
        ControlFlow::Break(answer) => return Ok(local(answer)),
    };
    let ticket = if asks == Asks::Refused {
        // The backend refuses this body before any view code runs that
        // could generate (the send view parses the body before it looks
        // at the session), so no probe can force it either: forwarded
        // unreserved, and the user sees the backend's own error. Who asks
        // is still known on arrival, as for any unflagged request: were
        // the judgement ever wrong and images reported, they count against
        // who asked even if the session logs out meanwhile.
        let identity = spans::identify(state.deps.identity.identify(&parts.headers)).await;
        unflagged(&route, &parts.headers, session, identity.ok().flatten())
    } else {
        let (identity, flagged) = identify(
            &state,
            &route,
            &mut inner,
            &session,
            asks,
            &mut parts.headers,
        )
        .await;
        match admit(&state, &route, identity, flagged, &mut parts, session).await {
            ControlFlow::Continue(ticket) => ticket,
            ControlFlow::Break(answer) => return Ok(local(answer)),
        }
    };
    forward(
        state,
        inner,
        route,
        Request::from_parts(parts, body),
        ticket,
    )
    .await
}

/// **classify**: the body read (413 beyond `max_body_bytes`; an upload
/// spooled) and judged as the backend will read it.
async fn classify<B>(
    state: &QuotaState,
    matched: &RouteMatch,
    parts: &request::Parts,
    body: B,
) -> ControlFlow<Answer, Classified<B>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let route = &matched.route;
    let (body, verdict) = match spans::classify(read_body(state, route, parts, body)).await {
        Ok(read) => read,
        Err(answer) => return ControlFlow::Break(answer),
    };
    let session = match &route.probe {
        Some(probe) => probe.path(&matched.params),
        None => matched.canonical_path(),
    };
    let asks = match &verdict {
        FlagVerdict::NotFlagged => Asks::Nothing,
        FlagVerdict::Flagged(_) => Asks::Image,
        FlagVerdict::Unreadable(reason) => {
            tracing::debug!(route = %route.name, %reason, "unreadable body counts as flagged");
            Asks::Image
        }
        FlagVerdict::Rejected(reason) => {
            tracing::debug!(route = %route.name, %reason, "the backend rejects this body");
            Asks::Refused
        }
    };
    ControlFlow::Continue(Classified {
        body,
        asks,
        session,
    })
}

/// **identify**: who asks (every request of an inspected route), and
/// whether the session forces an image for them (the probe, cached; or a
/// session where someone saved images unflagged). The verified
/// identity goes to the upstream in the identity headers. Returns the
/// identity and whether the request is flagged.
async fn identify<S, ReqB, ResB>(
    state: &QuotaState,
    route: &Route,
    // `&mut`: a `&mut S` is `Send` with `S`, where `&S` would need `Sync`.
    inner: &mut S,
    session: &str,
    asks: Asks,
    headers: &mut HeaderMap,
) -> (Result<Option<Identity>, IdentityError>, bool)
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let mut flagged = asks == Asks::Image;
    // Some user saved images here unflagged (`settle.rs`): look at who asks.
    let learned = !flagged
        && route.probe.is_none()
        && state.deps.probe_cache.get(&ProbeCache::key(session, "")) == Some(true);
    // Every request of an inspected route is identified on arrival, flagged
    // or not: an unflagged one whose answer reports saved images anyway is
    // counted against who asked then (a session logged out while the image
    // is made would read as anonymous at the end). Cached per credential.
    let identity = spans::identify(state.deps.identity.identify(headers)).await;
    if !flagged && (learned || route.probe.is_some()) && identity.is_err() {
        // No identity, so no probe and no learned session can say whether
        // the session forces an image: it may (fail closed). Admit then
        // applies `on_identity_error`.
        tracing::debug!(route = %route.name, "identity unavailable on a probed or learned session; counted as asking");
        flagged = true;
    }
    if !flagged
        && learned
        && let Ok(Some(who)) = &identity
    {
        flagged = state
            .deps
            .probe_cache
            .get(&ProbeCache::key(session, &who.user_id))
            == Some(true);
    }
    if !flagged && let (Some(probe), Ok(Some(who))) = (&route.probe, &identity) {
        // A session that forces images does so for the user whatever their
        // credentials (and learned sessions are kept so); one that does
        // not is believed only for the credentials the probe was sent: a
        // request the app reads as someone else (or no one) would make the
        // probe's `false` stand for the user.
        let cache = &state.deps.probe_cache;
        let key = ProbeCache::key(session, &who.user_id);
        let asked_as = ProbeCache::key(session, &probe.asked_as(&who.user_id, headers));
        flagged = match (cache.get(&key), cache.get(&asked_as)) {
            (Some(true), _) => true,
            (_, Some(forced)) => forced,
            _ => match spans::probe(probe.ask(inner.clone(), session, headers)).await {
                ProbeAnswer::Forced => {
                    cache.put(key, true, probe.cache_ttl());
                    true
                }
                ProbeAnswer::NotForced => {
                    cache.put(asked_as, false, probe.cache_ttl());
                    false
                }
                ProbeAnswer::Failed => true,
            },
        };
    }
    if let (Some(names), Ok(Some(who))) = (&state.routing.identity_headers, &identity)
        && set_identity_headers(headers, who, names).is_err()
    {
        tracing::warn!(route = %route.name, "verified identity cannot be sent as a header");
    }
    (identity, flagged)
}

/// **admit**: a flagged request reserves one unit or gets its answer
/// (`admit.rs`); any other goes on unreserved, its report still read.
async fn admit(
    state: &QuotaState,
    route: &Route,
    identity: Result<Option<Identity>, IdentityError>,
    flagged: bool,
    parts: &mut request::Parts,
    session: String,
) -> ControlFlow<Answer, Ticket> {
    if !flagged {
        let known = identity.ok().flatten();
        return ControlFlow::Continue(unflagged(route, &parts.headers, session, known));
    }
    match admit::admit(state, route, identity, &mut parts.headers).await {
        Ok(ticket) => ControlFlow::Continue(ticket),
        Err(answer) => ControlFlow::Break(answer),
    }
}

/// The ticket of a request that asks for no image, counted as such;
/// `identity` is who asks, when identify already knew.
fn unflagged(
    route: &Route,
    headers: &HeaderMap,
    session: String,
    identity: Option<Identity>,
) -> Ticket {
    route.counters.request(Decision::Unflagged);
    Ticket::Unflagged {
        headers: headers.clone(),
        session,
        identity,
    }
}
