//! The differential harness: every request of a generated corpus (path
//! encodings, routing headers, content types, charsets, boundaries,
//! duplicate and escaped keys, NaN, BOMs, UTF-16, gzip, chunked and broken
//! framing) is sent
//!
//! 1. straight to real Django (gunicorn, sync workers; `tests/django/`) as a
//!    fresh user, to learn what Django does with it: generated an image,
//!    or not (and with which status); and
//! 2. through the real `quota-proxy` binary, with the preset under test and
//!    Django as its upstream, as a user ALREADY AT THE LIMIT.
//!
//! Any image Django saves for the user at the limit is a **bypass**. A quota
//! denial (the proxy's own 403) of a request Django would not have generated
//! an image from is a **false denial**, unless its class is in
//! [`FAIL_CLOSED`]. Images are counted where Django saved them, never from
//! what the proxy says. `docs/testing.md` describes the harness.
//!
//! Knobs: `QP_DJANGO_CASES` (or `PROPTEST_CASES`) = random mutations to try
//! (default 96), `QP_DJANGO_SEED` = their seed (fixed by default).

mod behind_front;
pub(crate) mod corpus;
mod found;
pub(crate) mod mutations;
mod tricks;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::support::binary::Binary;
use crate::support::django::{APP_REQUIREMENTS, Django, REQUIREMENTS, SavedImages};
use crate::support::preset::{noon_zone, preset_text};
use crate::support::raw_http::{self, RawResponse};
use corpus::{Case, View};

/// Allowed fail-closed classes, the harness's side of the table in
/// `docs/flag-rules.md` (and `docs/routes.md`): classes of request where the
/// proxy may count a request as asking for an image (and so deny a user at
/// the limit) although this Django would not generate one, because the proxy
/// cannot be sure what the backend will do. Every other false denial fails
/// the test; a bypass fails it whatever its class.
const FAIL_CLOSED: &[(&str, &str)] = &[
    (
        "charset/not-utf8",
        "a charset other than UTF-8 on a body the backend decodes with it: Python knows codecs \
         (UTF-16, UTF-7, Latin-1…) the proxy does not read (docs/flag-rules.md)",
    ),
    (
        "method/case",
        "a route's method in another case (`post`, `POSt`): Django upper-cases the method it is \
         handed, gunicorn 21 (the chat app's pin) lets `POSt` through as `POST`, 22+ refuses any \
         lower-case letter; the proxy judges it as the route's and forwards it as sent (docs/routes.md)",
    ),
    (
        "rfc2231/parameter",
        "an RFC 2231 `boundary*=` or `charset*=` parameter: Django decodes it through a charset \
         lookup, or raises (docs/flag-rules.md)",
    ),
    (
        "framing/chunked",
        "a chunked request body: gunicorn + Django hand the view an empty body (Django reads \
         CONTENT_LENGTH only), other servers (uvicorn, mod_wsgi with chunked support) the whole \
         body; the proxy cannot know which",
    ),
    (
        "framing/content-encoding",
        "a Content-Encoding on the request: Django ignores it, but a decompressing middleware or \
         server may sit in front of the view",
    ),
    (
        "framing/truncated",
        "a body shorter than its Content-Length: the proxy never sees the whole body, so it \
         cannot judge it",
    ),
    (
        "framing/length-and-chunked",
        "both Content-Length and Transfer-Encoding: chunked (request smuggling): hyper reads it \
         as chunked (RFC 9112 6.3), gunicorn refuses it with 400; only an attacker sends it",
    ),
    (
        "multipart/transfer-encoding",
        "a multipart part with Content-Transfer-Encoding: Django decodes base64 parts only; \
         rare enough to count rather than reimplement",
    ),
];

/// Headers the proxy must strip before forwarding (issue 16, point 2):
/// Django behind the proxy never sees them, so the direct run leaves them
/// out when it learns what Django would do. Compared case-insensitively,
/// `_` as `-`.
const STRIPPED_HEADERS: &[&str] = &[
    "script-name",
    "x-script-name",
    "x-forwarded-prefix",
    "x-original-url",
    "x-rewrite-url",
];

fn stripped(name: &str) -> bool {
    let name = name.to_ascii_lowercase().replace('_', "-");
    STRIPPED_HEADERS.contains(&name.as_str())
}

/// The longest wait for one answer.
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// The shipped preset with `upstream` (Django); for the DRF and form views,
/// its route moved to that view's path with that view's `flag_rules` (and
/// no probe: those views have none).
pub(crate) fn preset_config(upstream: &str, view: View) -> String {
    let mut table: toml::Table = toml::from_str(&preset_text()).expect("the preset is TOML");
    table.insert("upstream".into(), upstream.into());
    // The store counts on the real clock: keep the run far from midnight
    // (and so from the start of a day, week or month), where the usage of
    // the user at the limit would reset mid-run.
    let periods = table
        .entry("periods")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let periods = periods.as_table_mut().expect("[periods] is a table");
    periods.insert("timezone".into(), noon_zone().into());
    let (path, rules) = match view {
        View::Send => return toml::to_string(&table).expect("config renders"),
        View::Drf => ("api/drf/session", "drf"),
        View::Form => ("form/session", "django-form"),
    };
    let routes = table
        .get_mut("routes")
        .and_then(toml::Value::as_array_mut)
        .expect("the preset has [[routes]]");
    let route = routes[0].as_table_mut().expect("a route is a table");
    let pattern = route["path"]
        .as_str()
        .expect("route.path")
        .replace("chat/session", path);
    route.insert("path".into(), pattern.into());
    route.insert("flag_rules".into(), rules.into());
    route.remove("probe");
    routes.truncate(1);
    toml::to_string(&table).expect("config renders")
}

/// What one side did with one request.
#[derive(Debug, Clone)]
struct Seen {
    /// The response status (0: none).
    status: u16,
    /// Django wrote the response (its middleware marks every answer).
    from_django: bool,
    /// Django saved an image for the requesting user.
    generated: bool,
    /// The client's error, if reading the answer failed.
    error: Option<String>,
    /// The first bytes of the body.
    body: String,
}

impl Seen {
    fn new(response: &RawResponse, generated: bool) -> Self {
        let mut body = response.text();
        body.truncate(body.char_indices().nth(70).map_or(body.len(), |(i, _)| i));
        Seen {
            status: response.status,
            from_django: response.header("x-harness-django").is_some(),
            generated,
            error: response.error.clone(),
            body,
        }
    }

    /// The proxy's own quota denial (403 not written by Django).
    fn quota_denied(&self) -> bool {
        self.status == 403 && !self.from_django
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = if self.from_django {
            "django"
        } else {
            "not django"
        };
        let image = if self.generated {
            "IMAGE SAVED"
        } else {
            "no image"
        };
        write!(f, "{} ({who}, {image}) {:?}", self.status, self.body)?;
        if let Some(e) = &self.error {
            write!(f, " [{e}]")?;
        }
        Ok(())
    }
}

/// The verdict on one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Same decision as Django.
    Agrees,
    /// Django would generate, and the user at the limit got the image.
    Bypass,
    /// Denied although Django would not generate; not in [`FAIL_CLOSED`].
    FalseDenial,
    /// Denied although Django would not generate; in [`FAIL_CLOSED`].
    FailClosed,
}

/// Whether any `+`-joined part of `class` is an allowed fail-closed class.
fn fail_closed(class: &str) -> bool {
    class
        .split('+')
        .any(|part| FAIL_CLOSED.iter().any(|(c, _)| *c == part))
}

/// One gunicorn, one proxy per view under test, and a user at the limit.
struct Differential {
    django: Django,
    saved: SavedImages,
    proxies: Vec<(View, Binary)>,
    next_user: u64,
}

/// Case numbers of the HTTP/2 pass start here (fresh sessions, and saved
/// images told apart from the HTTP/1.1 pass's).
const H2_CASES: usize = 1_000_000;

/// The user at the limit on every proxy.
const AT_LIMIT: &str = "900001";

impl Differential {
    /// Starts gunicorn and one proxy per view, and brings [`AT_LIMIT`] to
    /// the free plan's daily limit (3) through each proxy: three ordinary
    /// flagged requests are forwarded and saved, and a fourth is denied.
    async fn start(views: &[View]) -> Self {
        Self::on(Django::start(), views).await
    }

    /// [`Self::start`] in front of `django`, started on a stack of its own.
    async fn on(django: Django, views: &[View]) -> Self {
        let saved = django.saved();
        let mut proxies = Vec::new();
        for view in views {
            let binary = Binary::start(&preset_config(&django.url(), *view), &[]).await;
            proxies.push((*view, binary));
        }
        let mut harness = Differential {
            django,
            saved,
            proxies,
            next_user: 1,
        };
        for view in views.iter().copied() {
            harness.fill_up(view);
        }
        harness
    }

    fn proxy(&self, view: View) -> &Binary {
        &self
            .proxies
            .iter()
            .find(|(v, _)| *v == view)
            .expect("a proxy for this view")
            .1
    }

    fn fill_up(&mut self, view: View) {
        let ordinary = Case::ordinary(view).concrete(0);
        for n in 0..4 {
            let proxy = self.proxy(view).proxy;
            let (bytes, half) = ordinary.render(proxy, &format!("u{AT_LIMIT}"), 0);
            let before = self.saved.by_user(AT_LIMIT);
            let response = raw_http::send(proxy, &bytes, half, ANSWER_WITHIN);
            let seen = Seen::new(&response, self.saved.by_user(AT_LIMIT) > before);
            if n < 3 {
                assert!(
                    seen.generated && seen.status == 200,
                    "{view:?}: ordinary flagged request {n} under the limit should be forwarded \
                     and saved, got {seen}\nproxy logs:\n{}",
                    self.proxy(view).logs().join("\n")
                );
            } else {
                assert!(
                    seen.quota_denied() && !seen.generated,
                    "{view:?}: the 4th ordinary flagged request of a free user should be denied, \
                     got {seen}\nproxy logs:\n{}",
                    self.proxy(view).logs().join("\n")
                );
            }
        }
    }

    /// Sends `case` straight to Django as a fresh user.
    /// Headers in [`STRIPPED_HEADERS`] are left out.
    fn direct(&mut self, id: usize, case: &Case) -> Seen {
        let user = self.next_user.to_string();
        self.next_user += 1;
        let mut case = case.clone();
        // Hop-by-hop: what `Connection` names never reaches Django through
        // the proxy either (RFC 9110 7.6.1).
        let named: Vec<String> = case
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, value)| value.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect();
        case.headers.retain(|(name, _)| {
            !stripped(name)
                && !name.eq_ignore_ascii_case("connection")
                && !named.contains(&name.to_ascii_lowercase())
        });
        let (bytes, half) = case.render(self.django.addr, &format!("u{user}"), id);
        let response = raw_http::send(self.django.addr, &bytes, half, ANSWER_WITHIN);
        Seen::new(&response, self.saved.for_case(&user, id) > 0)
    }

    /// Sends `case` through its view's proxy as the user at the limit.
    fn proxied(&mut self, id: usize, case: &Case) -> Seen {
        let proxy = self.proxy(case.view).proxy;
        let before = self.saved.by_user(AT_LIMIT);
        let (bytes, half) = case.render(proxy, &format!("u{AT_LIMIT}"), id);
        let response = raw_http::send(proxy, &bytes, half, ANSWER_WITHIN);
        let generated = self.saved.by_user(AT_LIMIT) > before;
        Seen::new(
            &response,
            generated || self.saved.for_case(AT_LIMIT, id) > 0,
        )
    }

    /// Sends `case` over HTTP/2 (h2c) through its view's proxy as the user
    /// at the limit.
    async fn proxied_h2(&mut self, id: usize, case: &Case) -> Seen {
        let proxy = self.proxy(case.view).proxy;
        let before = self.saved.by_user(AT_LIMIT);
        let mut headers = case.headers.clone();
        headers.push(("cookie".into(), format!("sessionid=u{AT_LIMIT}")));
        headers.push(("x-harness-case".into(), id.to_string()));
        let response = raw_http::send_h2(
            proxy,
            &case.method,
            &case.target,
            &headers,
            case.body.clone(),
            ANSWER_WITHIN,
        )
        .await;
        let generated = self.saved.by_user(AT_LIMIT) > before;
        Seen::new(
            &response,
            generated || self.saved.for_case(AT_LIMIT, id) > 0,
        )
    }

    /// Both sides of `case`, and the verdict.
    fn judge(&mut self, id: usize, case: &Case) -> Outcome {
        let case = &case.concrete(id);
        let direct = self.direct(id, case);
        let proxied = self.proxied(id, case);
        Outcome::new(id, case.clone(), direct, proxied)
    }

    /// `case` straight to Django over HTTP/1.1 and through the proxy over
    /// HTTP/2; its class gains `h2+`.
    async fn judge_h2(&mut self, id: usize, case: &Case) -> Outcome {
        let case = &case.concrete(id);
        let direct = self.direct(id, case);
        let proxied = self.proxied_h2(id, case).await;
        let mut case = case.clone();
        case.class = format!("h2+{}", case.class);
        Outcome::new(id, case, direct, proxied)
    }
}

/// One judged case.
#[derive(Debug, Clone)]
struct Outcome {
    id: usize,
    case: Case,
    direct: Seen,
    proxied: Seen,
    verdict: Verdict,
}

impl Outcome {
    fn new(id: usize, case: Case, direct: Seen, proxied: Seen) -> Self {
        let verdict = if proxied.generated {
            Verdict::Bypass
        } else if proxied.quota_denied() && !direct.generated {
            if fail_closed(&case.class) {
                Verdict::FailClosed
            } else {
                Verdict::FalseDenial
            }
        } else {
            Verdict::Agrees
        };
        Outcome {
            id,
            case,
            direct,
            proxied,
            verdict,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut target = self.case.target.clone();
        if target.len() > 90 {
            target = format!("{}…({} bytes)", &target[..80], target.len());
        }
        writeln!(
            f,
            "  #{} [{}] {:?} {}: {} {target}",
            self.id, self.case.class, self.case.view, self.case.name, self.case.method
        )?;
        writeln!(f, "      django direct:      {}", self.direct)?;
        write!(f, "      proxy (at limit):   {}", self.proxied)
    }
}

/// The summary: counts, bypasses and false denials by class, each failing
/// case described; and whether anything failed.
fn report(title: &str, outcomes: &[Outcome]) -> (String, bool) {
    let count = |v: Verdict| outcomes.iter().filter(|o| o.verdict == v).count();
    let generated = outcomes.iter().filter(|o| o.direct.generated).count();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{title}: {} cases ({generated} generate an image in Django), {} bypasses, {} false \
         denials, {} allowed fail-closed denials",
        outcomes.len(),
        count(Verdict::Bypass),
        count(Verdict::FalseDenial),
        count(Verdict::FailClosed)
    );
    for (verdict, label) in [
        (Verdict::Bypass, "BYPASSES"),
        (Verdict::FalseDenial, "FALSE DENIALS"),
    ] {
        let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
        for o in outcomes.iter().filter(|o| o.verdict == verdict) {
            *by_class.entry(o.case.class.as_str()).or_default() += 1;
        }
        if by_class.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{label} by class: {by_class:?}");
        for o in outcomes.iter().filter(|o| o.verdict == verdict) {
            let _ = writeln!(out, "{o}");
        }
    }
    let allowed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.verdict == Verdict::FailClosed)
        .map(|o| format!("#{} [{}] {}", o.id, o.case.class, o.case.name))
        .collect();
    if !allowed.is_empty() {
        let _ = writeln!(out, "allowed fail-closed denials: {}", allowed.join("; "));
    }
    let harness_errors: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.direct.status == 0 || o.direct.status == 504)
        .collect();
    if !harness_errors.is_empty() {
        let _ = writeln!(
            out,
            "Django gave no answer to {} cases:",
            harness_errors.len()
        );
        for o in harness_errors {
            let _ = writeln!(out, "{o}");
        }
    }
    let failed = count(Verdict::Bypass) + count(Verdict::FalseDenial) > 0;
    (out, failed)
}

/// Runs the corpus of `view` and fails on any bypass or false denial.
async fn corpus_of(view: View) {
    corpus_in_front_of(Django::start(), view).await;
}

/// [`corpus_of`] in front of `django`.
async fn corpus_in_front_of(django: Django, view: View) {
    let mut harness = Differential::on(django, &[view]).await;
    let cases: Vec<Case> = corpus::corpus()
        .into_iter()
        .filter(|c| c.view == view)
        .collect();
    let mut outcomes: Vec<Outcome> = cases
        .iter()
        .enumerate()
        .map(|(id, case)| harness.judge(id + 1, case))
        .collect();
    for (id, case) in cases.iter().enumerate() {
        if case.h2_worthy() {
            outcomes.push(harness.judge_h2(H2_CASES + id + 1, case).await);
        }
    }
    let (summary, failed) = report(&format!("{view:?} corpus"), &outcomes);
    assert!(!failed, "{summary}");
    println!("{summary}");
}

#[test]
fn the_corpus_has_at_least_500_requests() {
    let cases = corpus::corpus();
    assert!(cases.len() >= 500, "only {} cases", cases.len());
    println!("{} cases", cases.len());
}

#[tokio::test]
async fn send_message_preset_has_no_bypass() {
    corpus_of(View::Send).await;
}

#[tokio::test]
async fn drf_rules_have_no_bypass() {
    corpus_of(View::Drf).await;
}

/// The corpus again on the chat app's own pins (Django 5.1.2, gunicorn
/// 21.2.0: `tests/django/requirements-mobixai.txt`), for the views it
/// serves: the two Djangos and gunicorns read some requests differently
/// (`tests/it/attack_app_stack.rs`), and the proxy must hold on the stack the
/// app runs as well as on the current one.
#[tokio::test]
async fn the_apps_own_stack_has_no_bypass() {
    for view in [View::Send, View::Drf] {
        corpus_in_front_of(Django::start_on(APP_REQUIREMENTS, &[]), view).await;
    }
}

#[tokio::test]
async fn django_form_rules_have_no_bypass() {
    corpus_of(View::Form).await;
}

/// A header the client names in `Connection` is removed by the proxy before
/// forwarding, after the body was judged by it: `Connection: Content-Type`
/// sends a JSON body to the send view as "multipart" (judged not flagged)
/// and Django, with no Content-Type left, reads it with `json.loads` and
/// generates; naming `X-Quota-Report-Token` too leaves the image uncounted.
#[tokio::test]
async fn a_header_named_in_connection_is_no_bypass() {
    let mut harness = Differential::start(&[View::Send]).await;
    let outcomes: Vec<Outcome> = corpus::corpus()
        .into_iter()
        .filter(|c| c.view == View::Send && c.class == "header/connection")
        .enumerate()
        .map(|(id, case)| harness.judge(id + 1, &case))
        .collect();
    assert!(!outcomes.is_empty());
    let (summary, failed) = report("Connection-named headers", &outcomes);
    assert!(!failed, "{summary}");
    println!("{summary}");
}

/// `Connection: X-Quota-Report-Token` on ordinary flagged requests: the
/// token the proxy adds is stripped as hop-by-hop, the app's report no
/// longer counts, and a free user is never charged.
#[tokio::test]
async fn a_report_token_named_in_connection_still_counts() {
    tricks::token_named_in_connection().await;
}

/// `Accept-Encoding: gzip` behind Django's `GZipMiddleware`: the streamed
/// report is compressed, unseen, and the images are never counted.
#[tokio::test]
async fn a_gzipped_report_still_counts() {
    tricks::gzip_hides_the_report().await;
}

/// A request whose response head takes longer than `store.reservation_ttl`
/// loses its reservation while Django still generates: a second request
/// sent meanwhile is admitted over the limit.
#[tokio::test]
async fn a_slow_generation_keeps_its_reservation() {
    found::reservation_expires_while_the_head_is_awaited().await;
}

/// An identity call that times out (gunicorn's workers kept busy by the
/// client) skips the probe: an unflagged request to an image_editing
/// session is forwarded unchecked and generates.
#[tokio::test]
async fn an_identity_timeout_does_not_skip_the_probe() {
    found::identity_timeout_skips_the_probe().await;
}

/// Cookies split into several `cookie` fields over HTTP/2: the proxy
/// counts the user Django sees, whatever the order of the crumbs.
#[tokio::test]
async fn h2_cookie_crumbs_identify_the_user_django_sees() {
    found::h2_cookie_crumbs().await;
}

/// A reply silent longer than `timeouts.idle` before its report is cut
/// and its reservation released; Django saves the image anyway.
#[tokio::test]
async fn a_reply_cut_for_silence_still_counts() {
    found::idle_cut_releases_the_reservation().await;
}

/// The identity call carries the upstream's address as `Host`, not the
/// client's: behind a production `ALLOWED_HOSTS` it always fails, and
/// image_editing sessions generate unchecked and uncounted.
#[tokio::test]
async fn the_identity_call_passes_allowed_hosts() {
    found::identity_call_host_is_the_upstreams().await;
}

/// An answer later than `timeouts.response_head` is a 504 and its
/// reservation is released; Django, which saves at the end of its stream,
/// saves nothing (gunicorn stops at the first failed write).
#[tokio::test]
async fn a_head_timeout_still_counts() {
    found::head_timeout_releases_the_reservation().await;
}

/// A flagged chat still generating when the proxy's shutdown grace ends
/// is dropped unsettled; Django saves its image after the proxy is gone.
#[tokio::test]
async fn a_generation_cut_by_the_shutdown_grace_still_counts() {
    found::shutdown_cuts_a_generation().await;
}

/// Over HTTP/2 the request's host is `:authority`, not `Host`: the
/// identity call goes out without it and behind a production
/// `ALLOWED_HOSTS` every HTTP/2 chat request is refused.
#[tokio::test]
async fn h2_identity_call_carries_the_authority() {
    behind_front::h2_identity_call_lacks_the_host().await;
}

/// Behind a TLS front with Django's `SECURE_SSL_REDIRECT`, the identity
/// call (no `X-Forwarded-Proto`) is redirected, taken for an anonymous
/// caller, and every flagged request is forwarded unchecked.
#[tokio::test]
async fn an_ssl_redirect_of_the_identity_call_is_no_bypass() {
    behind_front::ssl_redirect_makes_everyone_anonymous().await;
}

/// Behind a TLS front with `SECURE_SSL_REDIRECT`, the probe (sent as
/// plain HTTP) is redirected, fails, and every text message counts as an
/// image request: a user out of images cannot chat.
#[tokio::test]
async fn an_ssl_redirect_does_not_fail_every_probe() {
    behind_front::ssl_redirect_fails_every_probe().await;
}

/// Behind a front that names the host in `X-Forwarded-Host` (Django's
/// `USE_X_FORWARDED_HOST`), the identity call carries `Host` alone and
/// every flagged request is refused.
#[tokio::test]
async fn the_identity_call_keeps_x_forwarded_host() {
    behind_front::identity_call_drops_x_forwarded_host().await;
}

/// An invalid `Authorization: Bearer` beside a valid session cookie: the
/// DRF identity view answers 401 (anonymous), the send view serves the
/// cookie's user, and every image goes unchecked.
#[tokio::test]
async fn a_bad_token_beside_the_session_is_no_bypass() {
    behind_front::a_bad_token_beside_the_session_is_anonymous().await;
}

/// Behind `SECURE_SSL_REDIRECT`, one flagged request over plain HTTP makes
/// the identity call answer 301 (anonymous), cached under the session
/// cookie alone; the same cookie over HTTPS then reads as anonymous and is
/// forwarded unchecked.
#[tokio::test]
async fn a_plain_http_request_does_not_poison_the_identity_cache() {
    behind_front::plain_http_poisons_the_identity_cache().await;
}

#[tokio::test]
async fn a_header_spelled_with_underscores_is_no_bypass() {
    let django = Django::start_on(
        REQUIREMENTS,
        &[
            ("HARNESS_GZIP", "1"),
            ("GUNICORN_CMD_ARGS", "--header-map dangerous"),
        ],
    );
    tricks::an_underscore_spelling_reaches_django_as_the_header(django).await;
}

/// The same on the chat app's gunicorn 21.2.0, which keeps names holding
/// `_` by default (it has no `--header-map`).
#[tokio::test]
async fn a_header_spelled_with_underscores_is_no_bypass_on_the_apps_own_stack() {
    let django = Django::start_on(APP_REQUIREMENTS, &[("HARNESS_GZIP", "1")]);
    tricks::an_underscore_spelling_reaches_django_as_the_header(django).await;
}

#[tokio::test]
async fn random_mutations_find_no_bypass() {
    mutations::run(Django::start()).await;
}

/// The same mutations in front of the chat app's own pins (Django 5.1.2,
/// gunicorn 21.2.0; see [`the_apps_own_stack_has_no_bypass`]).
#[tokio::test]
async fn random_mutations_find_no_bypass_on_the_apps_own_stack() {
    mutations::run(Django::start_on(APP_REQUIREMENTS, &[])).await;
}

/// Done-when of issue 16: through the shipped preset, a free user (3 a
/// day) who tries every trick gets at most 3 images, counted where Django
/// saved them. The tricks: a fake report echoed back in the message, the
/// same requests over HTTP/2, and every request of the send view's corpus.
#[tokio::test]
async fn a_free_user_who_tries_every_trick_gets_at_most_three_images() {
    tricks::run().await;
}

#[test]
fn session_tokens_expand() {
    let text = "/s/{S}/{E0:9}/{S%}/+{E}/{ORIGIN}/{X}";
    assert_eq!(
        corpus::expand(text, 117, 500_017),
        "/s/117/000500017/%31%31%37/+500017/{ORIGIN}/{X}"
    );
}

#[test]
fn the_send_and_drf_presets_check() {
    for view in [View::Send, View::Drf] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("quota-proxy.toml");
        std::fs::write(&path, preset_config("http://127.0.0.1:9", view)).expect("write config");
        let out = crate::support::binary::run_cli(Some(&path), &["check-config"]);
        assert!(
            out.status.success(),
            "{view:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
