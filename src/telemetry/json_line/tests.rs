//! Every line [`JsonLine`] writes is the one tracing-subscriber's
//! `json().flatten_event(true)` writes, timestamps aside.

use std::io;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use tracing::Dispatch;
use tracing_subscriber::Registry;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// The bytes written to it, shared with its clones.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// What `emit` logs, as this module's formatter writes it (`fast`) or as
/// tracing-subscriber's does, with each timestamp replaced by `T`.
fn lines(fast: bool, emit: &dyn Fn()) -> String {
    let out = Captured::default();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(out.clone())
        .json()
        .flatten_event(true);
    let dispatch = if fast {
        Dispatch::new(Registry::default().with(layer.event_format(JsonLine::new())))
    } else {
        Dispatch::new(Registry::default().with(layer))
    };
    tracing::dispatcher::with_default(&dispatch, emit);
    let text = String::from_utf8(out.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    let mut rest = text.as_str();
    let mut without = String::new();
    while let Some(at) = rest.find("\"timestamp\":\"") {
        let value = at + "\"timestamp\":\"".len();
        without.push_str(&rest[..value]);
        without.push('T');
        rest = &rest[value..];
        rest = &rest[rest.find('"').expect("the timestamp ends")..];
    }
    without.push_str(rest);
    without
}

fn assert_alike(emit: &dyn Fn()) {
    let (fast, full) = (lines(true, emit), lines(false, emit));
    assert!(!full.is_empty(), "nothing logged");
    assert_eq!(fast, full);
}

#[test]
fn the_decision_line_is_written_alike() {
    assert_alike(&|| {
        let route = "POST chat/session/<int:session_id>/send/";
        tracing::info!(
            route = %route,
            user = "42",
            plan = "free",
            decision = "allowed",
            period = Option::<&str>::None,
            remaining_daily = 2u64,
            remaining_weekly = Some(9u64),
            remaining_monthly = Option::<u64>::None,
            request_id = "1fd0ba91-1b4c-4a6f-b520-05db17bbbfb0",
            status = Some(200u16),
            images = 1u64,
            latency_ms = 4u64,
            "inspected request"
        );
    });
}

#[test]
fn every_kind_of_value_is_written_alike() {
    assert_alike(&|| {
        let error = io::Error::other("the \"store\" is gone");
        tracing::warn!(
            negative = -7i64,
            yes = true,
            no = false,
            half = 0.5f64,
            tenth = 0.1f64,
            huge = 1e300f64,
            nan = f64::NAN,
            infinite = f64::INFINITY,
            wide = u128::MAX,
            list = ?vec!["a", "b\"c"],
            error = &error as &(dyn std::error::Error + 'static),
            "a {} message with {:?}",
            "formatted",
            "args"
        );
        tracing::error!(target: "some::other::target", persian = "شما به حد مجاز", "x");
        tracing::debug!("only a message");
    });
}

#[test]
fn an_event_in_a_span_is_written_alike() {
    assert_alike(&|| {
        let span = tracing::info_span!("admin", path = "/v1/usage");
        let _entered = span.enter();
        tracing::info!(status = 200u64, "admin request");
    });
}

proptest! {
    /// Any text in a value, a message or a target is escaped alike.
    #[test]
    fn any_text_is_written_alike(text in any::<String>(), bytes in proptest::collection::vec(0u8..0x80, 0..40)) {
        let ascii = String::from_utf8(bytes).expect("ASCII");
        let emit = || {
            tracing::info!(text = text.as_str(), ascii = ascii.as_str(), shown = %ascii, "{}", text);
        };
        prop_assert_eq!(lines(true, &emit), lines(false, &emit));
    }
}
