//! Findings of attack sessions that need no Django, each a test on the real
//! binary that failed on the code it was found on: an SSE report under a
//! media type in another case, a report without a reservation counted in
//! its admission day, a user who logs out while an unflagged image is made,
//! a `user_id_format` that does not fit the app's ids. Each test's doc tells
//! what the proxy did before its fix.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::instant::at;
use crate::support::proxy::{Answer, Proxy, TestClient};
use crate::support::upstream::{RecordedRequest, Reply, TestUpstream};
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use quota_proxy::store::{PeriodUsage, QuotaStore};

const WITHIN: Duration = Duration::from_secs(10);

/// `user`'s usage in the periods of instant `when`.
async fn usage_at(proxy: &Proxy, user: &str, when: DateTime<Utc>) -> [PeriodUsage; 3] {
    proxy
        .store
        .usage(user, &proxy.calendar().windows(when), when)
        .await
        .expect("usage")
}

/// An upstream that answers each request only once `gate` gives it a
/// permit: 200 with `body`, reporting one image saved.
async fn gated_saving_upstream(
    gate: &Arc<tokio::sync::Semaphore>,
    body: &'static str,
) -> TestUpstream {
    let gate = Arc::clone(gate);
    TestUpstream::start(move |_: RecordedRequest| {
        let gate = Arc::clone(&gate);
        async move {
            gate.acquire().await.expect("gate").forget();
            Reply::ok().header("x-images-saved", "1").body(body)
        }
    })
    .await
}

/// Sends `body` to `path` with `headers` on a task of its own, and waits
/// (bounded by `WITHIN`) until `upstream` has one more request; `never`
/// is the failure's message. The answer is the task's.
async fn send_until_forwarded(
    client: &TestClient,
    upstream: &TestUpstream,
    path: &'static str,
    headers: [(&'static str, String); 2],
    body: &'static str,
    never: &str,
) -> tokio::task::JoinHandle<Answer> {
    let seen = upstream.count();
    let sent = {
        let client = client.clone();
        tokio::spawn(async move {
            let headers = headers
                .each_ref()
                .map(|(name, value)| (*name, value.as_str()));
            client.send(Method::POST, path, &headers, body).await
        })
    };
    let deadline = Instant::now() + WITHIN;
    while upstream.count() == seen {
        assert!(Instant::now() < deadline, "{never}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sent
}

// ---------------------------------------------------------------------------
// Period boundaries: a report for a request without a reservation.

const MIDNIGHT_CONFIG: &str = r#"
[timeouts]
response_head = "10s"
[identity]
default_plan = "free"
[plans]
free = { daily = 3, weekly = 10, monthly = 30 }
[[routes]]
method = "POST"
path = "/chat/session/{session_id}/send/"
"#;

/// docs/shadow-and-status.md: images reported for a request without a
/// reservation are "settled as images reported without a reservation always
/// are: added once to the day, week and month the request was admitted in";
/// a flagged request's reservation carries its admission periods too. But
/// `settle.rs` (`Settlement::record`, the `(None, Some(user)) if amount > 0`
/// arm) builds the reservation of an unflagged (or store-error-allowed)
/// report from `state.deps.calendar.windows(now)`: the periods of the
/// *settle*, not of the admission. A generation admitted at 23:59 in Tehran
/// that reports after midnight is counted in the next day (and, on the last
/// day of a month, in the next month): the day it ran in keeps room it
/// used, and the next day loses room.
#[tokio::test]
async fn an_unflagged_report_after_midnight_counts_in_its_admission_day() {
    // The upstream answers only when the test lets it.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = gated_saving_upstream(&gate, "saved").await;
    // 23:59 in Tehran on Wednesday 2031-05-14; 00:01 on Thursday.
    let before = at("2031-05-14T20:29:00Z");
    let after = at("2031-05-14T20:31:00Z");
    let proxy = Proxy::memory(MIDNIGHT_CONFIG, &upstream, before).await;
    let client = TestClient::new(proxy.addr);
    for (user, body, asked) in [
        ("flagged", r#"{"generate_image": true}"#, true),
        // An image_editing session: the app saves an image whatever the
        // flag says, and reports it.
        ("unflagged", r#"{"message": "edit it"}"#, false),
    ] {
        proxy.clock.set(before);
        let sent = send_until_forwarded(
            &client,
            &upstream,
            "/chat/session/7/send/",
            [
                ("x-user-id", user.to_owned()),
                ("content-type", "application/json".to_owned()),
            ],
            body,
            "the request never reached the upstream",
        )
        .await;
        // Admitted (and forwarded) before midnight; answered after it.
        proxy.clock.set(after);
        gate.add_permits(1);
        let answer = sent.await.expect("client task");
        assert_eq!(answer.status, StatusCode::OK, "{user}: {}", answer.text());
        let deadline = Instant::now() + WITHIN;
        let (day, next) = loop {
            let day = usage_at(&proxy, user, before).await;
            let next = usage_at(&proxy, user, after).await;
            if day[0].used + next[0].used == 1 && day[0].reserved == 0 {
                break (day, next);
            }
            assert!(Instant::now() < deadline, "{user}: never settled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            (day[0].used, next[0].used),
            (1, 0),
            "{user} (flagged: {asked}): an image generated by a request admitted at 23:59 \
             Tehran must count in that day (as a reservation and a shadow-denied request do), \
             not in the day its answer came in"
        );
    }
}

// ---------------------------------------------------------------------------
// SSE reports: the media type.

/// `ReportReader::stream_report` (src/report/mod.rs) scans for SSE report
/// events only when `Content-Type` starts with exactly
/// `text/event-stream`; media types are case-insensitive (RFC 9110
/// §8.3.1), and browsers' EventSource accept `Text/Event-Stream`. An app
/// (or a middleware) that writes the type in another case streams its
/// report unread: the flagged request ends normally with no report and its
/// reservation is released, the image uncounted.
#[tokio::test]
async fn an_sse_report_under_a_mixed_case_media_type_counts() {
    let upstream = TestUpstream::start(|request: RecordedRequest| async move {
        let token = request.header("x-quota-report-token").unwrap_or("");
        let report =
            format!("event: images_saved\ndata: {{\"count\": 1, \"token\": \"{token}\"}}\n\n");
        Reply::ok()
            .header("content-type", "Text/Event-Stream; charset=utf-8")
            .stream([
                ("event: token\ndata: hi\n\n".to_owned(), Duration::ZERO),
                (report, Duration::from_millis(10)),
            ])
    })
    .await;
    let config = r#"
[usage]
report_sse_event = "images_saved"
[[routes]]
method = "POST"
path = "/sse/{id}/"
"#;
    let now = at("2031-05-14T10:00:00Z");
    let proxy = Proxy::memory(config, &upstream, now).await;
    let client = TestClient::new(proxy.addr);
    let answer = client
        .send(
            Method::POST,
            "/sse/1/",
            &[("x-user-id", "sse"), ("content-type", "application/json")],
            r#"{"generate_image": true}"#,
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.text().contains("event: images_saved"));
    let deadline = Instant::now() + WITHIN;
    let usage = loop {
        let usage = proxy.usage("sse").await;
        if usage[0].reserved == 0 {
            break usage;
        }
        assert!(Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        usage[0].used, 1,
        "the app reported 1 image in an images_saved event of a \
         `Text/Event-Stream` answer (the same media type as text/event-stream): \
         it must count"
    );
}

// ---------------------------------------------------------------------------
// Unflagged reports: the user is looked up only when the answer ends.

/// The safety net for a request the proxy did not flag ("saved images
/// reported for a request the proxy did not flag are counted too, so hiding
/// the flag does not dodge the count", docs/how-it-decides.md; and the
/// session is then learned, `a_session_that_saved_images_unflagged_is_
/// flagged_from_then_on`) asks who the user is only when the answer has
/// ended: `Ticket::Unflagged` keeps the request's headers, and
/// `Settlement::record` (src/quota/settle.rs, the `Ticket::Unflagged`
/// arm) calls `identity.identify(&headers)` then. With `forward_auth` that
/// is a call to Django with the session cookie, minutes after the request
/// (generation takes minutes). A user who logs out in another tab while
/// the image is generated (Django's view already holds `request.user`)
/// makes that call answer "not authenticated": the image is "reported for
/// an anonymous request; not counted", and the session is not learned
/// either. Log in again, repeat: every image free. The identity was known
/// when the request came in (the session was valid then) and is what must
/// Forward-auth identity at `identity`, a free plan of 3 a day and the
/// chat's send route with no probe; `top` goes before the tables,
/// `identity_extra` into `[identity]`.
fn forward_auth_config(
    identity: &crate::support::identity_server::IdentityServer,
    top: &str,
    identity_extra: &str,
) -> String {
    use crate::support::identity_server::PATH;
    format!(
        r#"
{top}
[identity]
kind = "forward_auth"
default_plan = "free"
{identity_extra}
[identity.forward_auth]
url = "{base}{PATH}"
[plans]
free = {{ daily = 3, weekly = 10, monthly = 30 }}
[[routes]]
method = "POST"
path = "/chat/session/{{session_id}}/send/"
flag = "generate_image"
"#,
        base = identity.base()
    )
}

/// be charged.
#[tokio::test]
async fn logging_out_during_an_unflagged_generation_does_not_dodge_the_count() {
    use crate::support::identity_server::{IdentityServer, Mode, Plan};

    let identity = IdentityServer::start().await;
    let free = Plan::free();
    identity.login("s1", 7, Some(free.clone()));
    identity.login("s2", 8, Some(free));
    // An image_editing session: the app generates whatever the flag says,
    // and reports the image it saved.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = gated_saving_upstream(&gate, "edited").await;
    // A route without a probe (optional; the report is the safety net).
    // DRF's flag rules: a flag DRF refuses (`"maybe"`) is a body the
    // backend answers 400 before any view code runs.
    let config = forward_auth_config(&identity, "[timeouts]\nresponse_head = \"10s\"", "").replace(
        "flag = \"generate_image\"",
        "flag = \"generate_image\"\nflag_rules = \"drf\"",
    );
    let now = at("2031-05-14T10:00:00Z");
    let proxy = Proxy::memory(&config, &upstream, now).await;
    let client = TestClient::new(proxy.addr);
    identity.login("s0", 6, None);
    // First without logging out (the control: counted), then with; last
    // a body the proxy judges the backend refuses, should that judgement
    // ever be wrong (it was twice: tests/it/attack_content_type.rs): asked on
    // arrival too, or the same logout dodged the count (found by the
    // third attack session of December 6th). Each in its own chat session
    // (one not yet learned by the proxy).
    let unflagged = r#"{"message": "make the sky red", "generate_image": false}"#;
    let refused = r#"{"message": "make the sky red", "generate_image": "maybe"}"#;
    for (session, user, log_out, chat, body) in [
        (
            "s0",
            "6",
            false,
            "/chat/session/1000000001/send/",
            unflagged,
        ),
        ("s1", "7", true, "/chat/session/1000000002/send/", unflagged),
        ("s2", "8", true, "/chat/session/1000000003/send/", refused),
    ] {
        identity.set_mode(Mode::Django);
        let sent = send_until_forwarded(
            &client,
            &upstream,
            chat,
            [
                ("cookie", format!("sessionid={session}")),
                ("content-type", "application/json".to_owned()),
            ],
            body,
            "never forwarded",
        )
        .await;
        if log_out {
            // The user logs out in another tab while the image is generated.
            identity.set_mode(Mode::Status(StatusCode::UNAUTHORIZED));
        }
        gate.add_permits(1);
        let answer = sent.await.expect("client task");
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        // Counted within a second or two, or never.
        let deadline = Instant::now() + Duration::from_secs(2);
        let used = loop {
            let used = proxy.usage(user).await[0].used;
            if used == 1 || Instant::now() >= deadline {
                break used;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            used, 1,
            "user {user} (logged out during the generation: {log_out}) was signed in when the \
             request came in and the app saved an image for it: it must count"
        );
    }
}

// ---------------------------------------------------------------------------
// Configs the docs allow that silently turn enforcement off.

/// `identity.user_id_format` says what a user id looks like; "an id that is
/// not in the format is anonymous" (src/identity/format.rs,
/// `CanonicalIds::identify`, logged at debug level only). For `header`
/// identity that is a client's odd header; but with `forward_auth` the id
/// is Django's answer for a session it authenticated: an app whose primary
/// keys are integers under `user_id_format = "uuid"` (or UUID keys under
/// `"integer"`, the other one-word slip) makes *every* signed-in user
/// anonymous, and under the default `anonymous = "forward"` every flagged
/// request goes to the app unchecked and uncounted. `check-config` cannot
/// see it and nothing above debug level says so: enforcement is off while
/// the proxy looks healthy. A verified user whose id is not in the format
/// is a misconfiguration (an identity error under `on_identity_error`),
/// not an anonymous caller.
#[tokio::test]
async fn a_user_id_format_that_does_not_fit_the_app_does_not_turn_enforcement_off() {
    use crate::support::identity_server::{IdentityServer, Plan};

    let identity = IdentityServer::start().await;
    let free = Plan::free();
    identity.login("s1", 42, Some(free));
    let upstream =
        TestUpstream::always(Reply::ok().header("x-images-saved", "1").body("generated")).await;
    let config = forward_auth_config(
        &identity,
        "",
        "user_id_format = \"uuid\"\non_identity_error = \"deny\"",
    );
    let now = at("2031-05-14T10:00:00Z");
    let proxy = Proxy::memory(&config, &upstream, now).await;
    let client = TestClient::new(proxy.addr);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let answer = client
            .send(
                Method::POST,
                "/chat/session/1/send/",
                &[
                    ("cookie", "sessionid=s1"),
                    ("content-type", "application/json"),
                ],
                r#"{"message": "a cat", "generate_image": true}"#,
            )
            .await;
        statuses.push(answer.status.as_u16());
    }
    let generated = upstream.count();
    assert!(
        generated <= 3,
        "a signed-in free user (3 a day, Django user 42) had {generated} flagged requests \
         forwarded (statuses {statuses:?}): under user_id_format = \"uuid\" Django's integer \
         id makes them anonymous, and anonymous requests go through unchecked"
    );
}
