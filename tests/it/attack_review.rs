//! Attacks of the review session of 7 December (branch `attack`, on
//! eaa8558) that held, kept as exact checks on the real binary in front of
//! real Django (gunicorn, `tests/django/`), counting the images Django
//! saved. Nothing here failed on the commit it was written against; each
//! test's doc says what was tried and why it mattered.

use crate::django::corpus::{self, Case, View};
use crate::django::mutations::{CONTENT_TYPE_PARAMS, Mutation, apply};
use crate::django::{ANSWER_WITHIN, preset_config};
use crate::support::binary::Binary;
use crate::support::django::{APP_REQUIREMENTS, Django, SavedImages};
use crate::support::raw_http;

/// Free user `user` uses up their 3 images of the day with ordinary
/// flagged requests; panics unless Django saved exactly 3.
fn use_up(proxy: &Binary, saved: &mut SavedImages, user: &str) {
    for n in 0..3 {
        let case = Case::ordinary(View::Send).concrete(90_000 + n);
        let (bytes, half) = case.render(proxy.proxy, &format!("u{user}"), n);
        raw_http::send(proxy.proxy, &bytes, half, ANSWER_WITHIN);
    }
    assert_eq!(saved.by_user(user), 3, "the free plan used up");
}

/// Sends `cases` (each rendered for `user` with its id) and names each one
/// after which Django saved an image for `user`.
fn images_past_the_limit(
    proxy: &Binary,
    saved: &mut SavedImages,
    user: &str,
    cases: impl IntoIterator<Item = (usize, Case)>,
) -> (usize, Vec<String>) {
    let mut sent = 0;
    let mut images = Vec::new();
    for (id, case) in cases {
        sent += 1;
        let before = saved.by_user(user);
        let (bytes, half) = case.render(proxy.proxy, &format!("u{user}"), id);
        let answer = raw_http::send(proxy.proxy, &bytes, half, ANSWER_WITHIN);
        if saved.by_user(user) > before {
            images.push(format!(
                "#{id} [{}] {} -> {}",
                case.class, case.name, answer.status
            ));
        }
    }
    (sent, images)
}

/// The send view's corpus with every ordinary session made an
/// `image_editing` one (`{S}` → `{E}`), concrete.
fn on_editing_sessions(first_id: usize) -> Vec<(usize, Case)> {
    corpus::corpus()
        .into_iter()
        .filter(|c| c.view == View::Send)
        .enumerate()
        .map(|(i, mut case)| {
            case.target = case.target.replace("{S", "{E");
            (first_id + i, case.concrete(first_id + i))
        })
        .collect()
}

/// **A body judged refused skips the probe: on an `image_editing`
/// session, any body Django reads after all would generate unchecked.**
///
/// A body the proxy judges the backend refuses while parsing it (invalid
/// JSON, a malformed multipart body, a boundary Django rejects) is
/// forwarded unreserved, *unprobed* and past the learned sessions
/// (`pipeline.rs`, `Asks::Refused`). On an ordinary session a wrong
/// "refused" shows only when the body also carries a true flag, which the
/// differential corpus has; on an `image_editing` session, which generates
/// whatever the flag says, a flag-less body Django reads is enough, and the
/// corpus's body classes ran on ordinary sessions only. Here every request
/// of the send corpus goes to an `image_editing` session of a free user at
/// the limit, on the harness's stack and on the chat app's own (Django
/// 5.1.2, gunicorn 21.2.0): Django saves nothing more.
#[tokio::test]
async fn the_send_corpus_on_image_editing_sessions_saves_nothing_past_the_limit() {
    for (stack, user) in [(None, "730001"), (Some(APP_REQUIREMENTS), "730002")] {
        let django = match stack {
            None => Django::start(),
            Some(requirements) => Django::start_on(requirements, &[]),
        };
        let mut saved = django.saved();
        let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
        use_up(&proxy, &mut saved, user);
        let (sent, images) =
            images_past_the_limit(&proxy, &mut saved, user, on_editing_sessions(1));
        assert!(
            images.is_empty(),
            "on {} a free user at the limit got {} more images from {sent} corpus requests \
             to image_editing sessions:\n{}",
            stack.unwrap_or("the harness's stack"),
            images.len(),
            images.join("\n")
        );
    }
}

/// **The same on the app's stack, with each body, Content-Type and framing
/// mutation of the random differential applied one at a time.**
///
/// The mutations that make a body or its type one the proxy may judge
/// refused (a letter's case flipped in the type or the body, a parameter
/// appended to the type, a byte-order mark, bytes cut from the end) on
/// every JSON, form, multipart, charset and RFC 2231 case of the send
/// corpus, each sent to an `image_editing` session of a free user at the
/// limit (about 6,000 requests): Django 5.1.2 saves nothing more.
#[tokio::test]
async fn body_mutations_on_image_editing_sessions_save_nothing_past_the_limit() {
    const USER: &str = "730003";
    let django = Django::start_on(APP_REQUIREMENTS, &[]);
    let mut saved = django.saved();
    let proxy = Binary::start(&preset_config(&django.url(), View::Send), &[]).await;
    use_up(&proxy, &mut saved, USER);
    let mut mutations: Vec<Mutation> = (0..10).map(Mutation::FlipContentTypeCase).collect();
    mutations.extend((0..4).map(|n| Mutation::FlipBodyCase(n * 7)));
    mutations.extend(CONTENT_TYPE_PARAMS.map(Mutation::ContentTypeParam));
    mutations.push(Mutation::PrependBom);
    mutations.extend([1, 2, 5, 9].map(Mutation::CutBody));
    let bodies: Vec<Case> = corpus::corpus()
        .into_iter()
        .filter(|c| {
            c.view == View::Send
                && ["json", "multipart", "form", "charset", "rfc2231"]
                    .iter()
                    .any(|class| c.class.starts_with(class))
        })
        .collect();
    let mut cases = Vec::new();
    for body in &bodies {
        for mutation in &mutations {
            let id = 10_000 + cases.len();
            let mut case = body.clone();
            case.target = case.target.replace("{S", "{E");
            cases.push((
                id,
                apply(&case.concrete(id), std::slice::from_ref(mutation)),
            ));
        }
    }
    let (sent, images) = images_past_the_limit(&proxy, &mut saved, USER, cases);
    assert!(
        images.is_empty(),
        "a free user at the limit got {} more images from {sent} mutated requests to \
         image_editing sessions:\n{}",
        images.len(),
        images.join("\n")
    );
}
