//! The layer in front of a plain `tower::service_fn`, in tower-http's style:
//! the memory store, a manual clock, and an inner service that counts its
//! calls and reports a saved image only when the test asks it to. Each test
//! observes the decision itself: what the inner service saw, the status, and
//! the store's usage.

// A failed unwrap here is a failed test.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Service, ServiceExt};

use super::{QuotaLayer, RequestBody};
use crate::clock::ManualClock;
use crate::config::{Config, StoreErrorPolicy};
use crate::identity::{Identity, IdentityError, IdentitySource};
use crate::periods::Calendar;
use crate::store::{MemoryStore, PeriodUsage, QuotaStore};

/// A config with one inspected route, `/gen/`, and a free plan of 2 a day;
/// `top` goes before the sections.
fn config(top: &str, identity: &str) -> Config {
    Config::from_toml(&format!(
        r#"
upstream = "http://127.0.0.1:9"
{top}
[identity]
default_plan = "free"
{identity}
[plans]
free = {{ daily = 2, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/gen/"
deny_status = 429
"#
    ))
    .expect("test config")
}

/// What the inner service does: the requests it saw, and whether it says
/// it saved an image (`X-Images-Saved: 1`).
#[derive(Clone, Default)]
struct App {
    calls: Arc<AtomicUsize>,
    saves: bool,
}

impl App {
    fn saving() -> Self {
        Self {
            saves: true,
            ..Self::default()
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

struct Harness {
    layer: QuotaLayer,
    store: Arc<MemoryStore>,
    clock: ManualClock,
    calendar: Calendar,
}

impl Harness {
    fn new(config: &Config, store: MemoryStore) -> Self {
        Self::with_identity(config, store, None)
    }

    /// With `identity` in place of the config's identity source.
    fn with_identity(
        config: &Config,
        store: MemoryStore,
        identity: Option<Arc<dyn IdentitySource>>,
    ) -> Self {
        let store = Arc::new(store);
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).unwrap());
        let mut builder = QuotaLayer::builder(config)
            .expect("builder")
            .store(Arc::clone(&store) as Arc<dyn QuotaStore>)
            .clock(Arc::new(clock.clone()));
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        let layer = builder.build();
        let calendar = Calendar::new(config.periods.timezone.0, config.periods.week_start.0);
        Self {
            layer,
            store,
            clock,
            calendar,
        }
    }

    /// Sends one request through the layer to `app` and reads the whole
    /// answer (which is when a streamed response settles).
    async fn send(
        &self,
        app: &App,
        request: Request<Full<Bytes>>,
    ) -> (StatusCode, http::HeaderMap) {
        let app = app.clone();
        let inner = tower::service_fn(move |request: Request<RequestBody<Full<Bytes>>>| {
            let app = app.clone();
            async move {
                app.calls.fetch_add(1, Ordering::SeqCst);
                // The inner service reads the body it was handed.
                let _ = request.into_body().collect().await;
                let mut response = Response::builder();
                if app.saves {
                    response = response.header("x-images-saved", "1");
                }
                Ok::<_, Infallible>(response.body(Full::new(Bytes::from("done"))).unwrap())
            }
        });
        let mut service = tower::ServiceBuilder::new()
            .layer(self.layer.clone())
            .service(inner);
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        let (parts, body) = response.into_parts();
        body.collect().await.expect("the answer's body");
        (parts.status, parts.headers)
    }

    async fn usage(&self, user: &str) -> [PeriodUsage; 3] {
        let now = crate::clock::Clock::now(&self.clock);
        self.store
            .usage(user, &self.calendar.windows(now), now)
            .await
            .expect("usage")
    }

    async fn wait_used(&self, user: &str, used: u64) {
        // Settles run beside the answer; they finish within a few polls.
        for _ in 0..1000 {
            if self.usage(user).await[0].used == used {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!(
            "{user} never reached {used} used: {:?}",
            self.usage(user).await
        );
    }
}

fn generate(user: Option<&str>, flag: bool) -> Request<Full<Bytes>> {
    let mut request = Request::post("/gen/").header("content-type", "application/json");
    if let Some(user) = user {
        request = request.header("x-user-id", user);
    }
    let body = format!(r#"{{"generate_image": {flag}}}"#);
    request.body(Full::new(Bytes::from(body))).unwrap()
}

#[tokio::test]
async fn a_user_at_the_limit_is_denied_on_that_request_and_the_app_never_sees_it() {
    let harness = Harness::new(&config("", ""), MemoryStore::new(100));
    let app = App::saving();
    for _ in 0..2 {
        let (status, headers) = harness.send(&app, generate(Some("7"), true)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.contains_key("ratelimit"), "{headers:?}");
    }
    harness.wait_used("7", 2).await;
    let (status, headers) = harness.send(&app, generate(Some("7"), true)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.calls(), 2, "the denied request reached the app");
    // 10:00 UTC is 13:30 in Tehran: 10.5 hours to the next day there.
    assert_eq!(headers["retry-after"], "37800");
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .contains("\"daily\";r=0")
    );
    // The next day in the configured zone, the same user is admitted again.
    harness.clock.advance(chrono::Duration::hours(11));
    assert_eq!(
        harness.send(&app, generate(Some("7"), true)).await.0,
        StatusCode::OK
    );
    assert_eq!(app.calls(), 3);
}

#[tokio::test]
async fn an_unflagged_request_of_a_user_at_the_limit_goes_through_uncounted() {
    let harness = Harness::new(&config("", ""), MemoryStore::new(100));
    let app = App::saving();
    for _ in 0..2 {
        harness.send(&app, generate(Some("7"), true)).await;
    }
    harness.wait_used("7", 2).await;
    let quiet = App::default();
    assert_eq!(
        harness.send(&quiet, generate(Some("7"), false)).await.0,
        StatusCode::OK
    );
    assert_eq!(quiet.calls(), 1);
    assert_eq!(
        harness.usage("7").await[0],
        PeriodUsage {
            used: 2,
            reserved: 0
        }
    );
}

#[tokio::test]
async fn anonymous_flagged_requests_follow_the_anonymous_policy() {
    let app = App::default();
    let deny = Harness::new(&config("", "anonymous = \"deny\""), MemoryStore::new(100));
    assert_eq!(
        deny.send(&app, generate(None, true)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.calls(), 0, "an anonymous denial reached the app");
    let forward = Harness::new(
        &config("", "anonymous = \"forward\""),
        MemoryStore::new(100),
    );
    assert_eq!(
        forward.send(&app, generate(None, true)).await.0,
        StatusCode::OK
    );
    assert_eq!(app.calls(), 1);
}

/// forward-auth at a closed loopback port: every identity call fails.
fn broken_identity(policy: &str) -> String {
    format!(
        "kind = \"forward_auth\"\non_identity_error = \"{policy}\"\n\
         [identity.forward_auth]\nurl = \"http://127.0.0.1:1/who/\"\ntimeout = \"1s\"\n"
    )
}

#[tokio::test]
async fn an_identity_error_follows_on_identity_error() {
    let app = App::saving();
    let with_cookie = || {
        let mut request = generate(None, true);
        request
            .headers_mut()
            .insert("cookie", "sessionid=abc".parse().unwrap());
        request
    };
    let deny = Harness::new(&config("", &broken_identity("deny")), MemoryStore::new(100));
    assert_eq!(
        deny.send(&app, with_cookie()).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.calls(), 0, "deny forwarded the request");
    let allow = Harness::new(
        &config("", &broken_identity("allow")),
        MemoryStore::new(100),
    );
    assert_eq!(allow.send(&app, with_cookie()).await.0, StatusCode::OK);
    assert_eq!(app.calls(), 1, "allow did not forward the request");
}

/// An identity source that fails every request with its error.
struct Failing(IdentityError);

#[async_trait::async_trait]
impl IdentitySource for Failing {
    async fn identify(&self, _: &http::HeaderMap) -> Result<Option<Identity>, IdentityError> {
        Err(self.0.clone())
    }
}

/// The status path answers an identity error as a flagged request is
/// answered: only an outage of the source is worth a retry (503); a
/// client's ambiguous credentials get 401, a genuine credential the config
/// cannot read 500. Before, all three were 503 "try again shortly" there.
#[tokio::test]
async fn the_status_path_answers_an_identity_error_as_a_flagged_request_is() {
    let config = config("[status]\npath = \"/quota-status/\"\n", "");
    let app = App::saving();
    for (error, want) in [
        (
            IdentityError::Unavailable("down".into()),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            IdentityError::Ambiguous("two users".into()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            IdentityError::Unreadable("no claim".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ] {
        let failing = Arc::new(Failing(error.clone()));
        let harness = Harness::with_identity(&config, MemoryStore::new(100), Some(failing));
        let flagged = harness.send(&app, generate(None, true)).await.0;
        let status = Request::get("/quota-status/")
            .body(Full::default())
            .unwrap();
        let status = harness.send(&app, status).await.0;
        assert_eq!((flagged, status), (want, want), "{error}");
    }
    assert_eq!(app.calls(), 0, "a request reached the app");
}

/// A memory store that holds one user, already holding user "1": any other
/// user's reserve fails (`Full`), a real store error.
async fn full_store(harness: &Harness) {
    assert_eq!(
        harness
            .send(&App::saving(), generate(Some("1"), true))
            .await
            .0,
        StatusCode::OK
    );
    harness.wait_used("1", 1).await;
}

#[tokio::test]
async fn a_store_error_follows_on_store_error() {
    let with_policy = |policy| {
        let mut config = config("", "");
        config.store.on_store_error = policy;
        Harness::new(&config, MemoryStore::new(1))
    };
    let app = App::saving();
    let deny = with_policy(StoreErrorPolicy::Deny);
    full_store(&deny).await;
    assert_eq!(
        deny.send(&app, generate(Some("2"), true)).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.calls(), 0, "deny forwarded the request");

    let allow = with_policy(StoreErrorPolicy::Allow);
    full_store(&allow).await;
    assert_eq!(
        allow.send(&app, generate(Some("2"), true)).await.0,
        StatusCode::OK
    );
    assert_eq!(app.calls(), 1, "allow did not forward the request");
    // Forwarded uncounted: the full store holds nothing for user 2.
    assert_eq!(allow.usage("2").await[0], PeriodUsage::default());
}

/// The chat app's in-band report, with the request's token echoed.
const MARKERS: &str = "[usage]\nreport_header = \"\"\n\
    report_marker = { start = \"[IMAGES_SAVED]\", end = \"[IMAGES_SAVED_END]\" }\n";

/// A streamed answer to a flagged request of user 7, through the layer:
/// its body, the channel that feeds its parts, and the report token the
/// app was handed.
async fn streamed(
    harness: &Harness,
) -> (
    http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>,
    tokio::sync::mpsc::Sender<Bytes>,
    String,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(4);
    let receiver = Arc::new(tokio::sync::Mutex::new(Some(receiver)));
    let token = Arc::new(std::sync::Mutex::new(String::new()));
    let seen = Arc::clone(&token);
    let inner = tower::service_fn(move |request: Request<RequestBody<Full<Bytes>>>| {
        let receiver = Arc::clone(&receiver);
        *seen.lock().unwrap() = request.headers()["x-quota-report-token"]
            .to_str()
            .unwrap()
            .to_owned();
        async move {
            let receiver = receiver.lock().await.take().expect("one request");
            let stream = futures_util::stream::unfold(receiver, |mut r| async move {
                let bytes = r.recv().await?;
                Some((Ok::<_, Infallible>(http_body::Frame::data(bytes)), r))
            });
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(StreamBody::new(stream))
                    .unwrap(),
            )
        }
    });
    let mut service = tower::ServiceBuilder::new()
        .layer(harness.layer.clone())
        .service(inner);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(generate(Some("7"), true))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let token = token.lock().unwrap().clone();
    (response.into_body().boxed_unsync(), sender, token)
}

/// The app's in-band report of `count` images, with its token.
fn report(count: u64, token: &str) -> Bytes {
    Bytes::from(format!(
        r#"[IMAGES_SAVED]{{"count": {count}, "token": "{token}"}}[IMAGES_SAVED_END]"#
    ))
}

#[tokio::test]
async fn a_streamed_answer_settles_when_its_body_ends() {
    let harness = Harness::new(&config(MARKERS, ""), MemoryStore::new(100));
    let (body, sender, token) = streamed(&harness).await;
    let mut body = std::pin::pin!(body);
    sender.send(Bytes::from("a reply; ")).await.unwrap();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "a reply; "
    );
    // The head and a part are out: the unit is still only reserved.
    assert_eq!(
        harness.usage("7").await[0],
        PeriodUsage {
            used: 0,
            reserved: 1
        }
    );
    sender.send(report(1, &token)).await.unwrap();
    drop(sender);
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap_or_default();
        assert!(
            !data.windows(6).any(|w| w == b"IMAGES"),
            "marker not cut: {data:?}"
        );
    }
    harness.wait_used("7", 1).await;
    assert_eq!(
        harness.usage("7").await[0],
        PeriodUsage {
            used: 1,
            reserved: 0
        }
    );
}

/// A streamed answer slower than `store.reservation_ttl` keeps its unit
/// reserved (the config's extending task, `hold.rs`), so a parallel
/// request cannot slip past the limit; once settled nothing is held.
#[tokio::test(start_paused = true)]
async fn a_streamed_answer_holds_its_unit_past_the_reservation_ttl() {
    let harness = Harness::new(&config(HELD_3S, ""), MemoryStore::new(100));
    holds_its_unit_past_the_ttl(&harness).await;
}

/// A layer that outlives the runtime its extending task ran on (kept
/// across runtimes, as a library may): the next hold starts another task,
/// and a streamed answer still keeps its unit past the TTL.
#[test]
fn a_layer_outliving_the_runtime_of_its_extending_task_still_extends() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let harness = Harness::new(&config(HELD_3S, ""), MemoryStore::new(100));
    let first = runtime();
    let (status, _) = first.block_on(harness.send(&App::saving(), generate(Some("8"), true)));
    assert_eq!(status, StatusCode::OK);
    // Its extending task goes with it.
    drop(first);
    runtime().block_on(holds_its_unit_past_the_ttl(&harness));
}

/// `[usage]` markers and a reservation TTL of 3 s.
const HELD_3S: &str = "[usage]\nreport_header = \"\"\n\
    report_marker = { start = \"[IMAGES_SAVED]\", end = \"[IMAGES_SAVED_END]\" }\n\
    [store]\nreservation_ttl = \"3s\"\n";

/// A streamed answer to user 7, held open twice the TTL (the store's clock
/// and the timers moving together): its unit stays reserved; settled,
/// nothing is held.
async fn holds_its_unit_past_the_ttl(harness: &Harness) {
    let (body, sender, token) = streamed(harness).await;
    let mut body = std::pin::pin!(body);
    for _ in 0..12 {
        harness.clock.advance(chrono::Duration::milliseconds(500));
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert_eq!(harness.usage("7").await[0].reserved, 1, "unit let go");
    }
    assert_eq!(harness.layer.current.load().deps.holds.len(), 1);
    sender.send(report(1, &token)).await.unwrap();
    drop(sender);
    while body.frame().await.is_some() {}
    harness.wait_used("7", 1).await;
    assert_eq!(harness.usage("7").await[0].reserved, 0);
    assert_eq!(harness.layer.current.load().deps.holds.len(), 0);
}

/// Shutdown's grace ends while the report and the end of an answer whose
/// client left have arrived but wait to be read by its drain: they are
/// read, not replaced by the cut's one image. Before, the drain chose at random
/// between the cut and the waiting part (`tokio::select!`), so some of
/// these rounds counted 1 for the 2 images reported.
#[tokio::test]
async fn a_report_waiting_when_the_grace_ends_is_counted() {
    // Each image counts, so the report's 2 differs from the cut's 1.
    let config = config(&format!("{MARKERS}count = \"images\"\n"), "");
    for round in 0..16 {
        let harness = Harness::new(&config, MemoryStore::new(100));
        let (mut body, sender, token) = streamed(&harness).await;
        sender.send(Bytes::from("a reply; ")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        // The client leaves: the rest is read in the background.
        drop(body);
        // The app's last part and its end arrive; then the grace ends.
        sender.send(report(2, &token)).await.unwrap();
        drop(sender);
        harness.layer.settlements().cut();
        for _ in 0..1000 {
            if harness.usage("7").await[0].reserved == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            harness.usage("7").await[0],
            PeriodUsage {
                used: 2,
                reserved: 0
            },
            "round {round}"
        );
    }
}

/// A probe's `false` stands only for the credentials it was sent: a second
/// request of the same user with other credentials (which the app may read
/// as another caller, or as no one) is probed again, not waved through on
/// the first answer. A `true` stands for the user whatever they send.
/// Before, both were kept per user: any way for the proxy and the app to
/// disagree about who asks let the app's "no access" for someone else be
/// reused for the user, and their messages to an image session went on
/// unchecked (`tests/it/jwt_fit.rs` has three such ways).
#[tokio::test]
async fn a_probe_answer_of_no_stands_only_for_the_credentials_it_was_sent() {
    let config = Config::from_toml(
        r#"
upstream = "http://127.0.0.1:9"
[identity]
default_plan = "free"
[plans]
free = { daily = 2, weekly = 10, monthly = 30 }
[[routes]]
method = "POST"
path = "/chat/<int:id>/send/"
probe = { path = "/chat/<int:id>/access/", json_field = "has_access", forward_headers = ["Cookie"] }
"#,
    )
    .expect("test config");
    let harness = Harness::new(&config, MemoryStore::new(100));
    let probes = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&probes);
    // The app's access view answers "no" to every caller, and says who it
    // was asked as by nothing else than the cookie it got.
    let inner = tower::service_fn(move |request: Request<RequestBody<Full<Bytes>>>| {
        let seen = Arc::clone(&seen);
        async move {
            let body = if request.uri().path().ends_with("/access/") {
                seen.fetch_add(1, Ordering::SeqCst);
                r#"{"has_access": false}"#
            } else {
                "done"
            };
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        }
    });
    let mut service = tower::ServiceBuilder::new()
        .layer(harness.layer.clone())
        .service(inner);
    let message = |cookie: &str| {
        Request::post("/chat/17/send/")
            .header("content-type", "application/json")
            .header("x-user-id", "7")
            .header("cookie", cookie)
            .body(Full::new(Bytes::from(r#"{"generate_image": false}"#)))
            .unwrap()
    };
    for (cookie, probed) in [("sessionid=a", 1), ("sessionid=a", 1), ("sessionid=b", 2)] {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(message(cookie))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
        assert_eq!(
            probes.load(Ordering::SeqCst),
            probed,
            "after a message with {cookie}"
        );
    }
}
