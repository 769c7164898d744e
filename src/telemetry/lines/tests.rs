//! Every line [`json()`] and [`text()`] write is the one
//! tracing-subscriber's `json().flatten_event(true)` and default formatters
//! write, timestamps aside.

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

/// The two ways a line is written.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Json,
    Text,
}

/// What `emit` logs as `kind`, by this module's formatter (`fast`) or by
/// tracing-subscriber's, with each timestamp replaced by `T`.
fn lines(kind: Kind, fast: bool, emit: &dyn Fn()) -> String {
    let out = Captured::default();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(out.clone())
        .with_ansi(false);
    let dispatch = match (kind, fast) {
        (Kind::Json, true) => Dispatch::new(
            Registry::default().with(layer.json().flatten_event(true).event_format(json())),
        ),
        (Kind::Json, false) => {
            Dispatch::new(Registry::default().with(layer.json().flatten_event(true)))
        }
        (Kind::Text, true) => Dispatch::new(Registry::default().with(layer.event_format(text()))),
        (Kind::Text, false) => Dispatch::new(Registry::default().with(layer)),
    };
    tracing::dispatcher::with_default(&dispatch, emit);
    let text = String::from_utf8(out.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    without_timestamps(&text)
}

/// `text` with each timestamp (`2026-12-07T14:45:18.227330Z`) replaced by
/// `T`.
fn without_timestamps(text: &str) -> String {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    let is_timestamp = |at: &[u8]| {
        at.len() >= SHAPE.len()
            && SHAPE.iter().zip(at).all(|(&shape, &byte)| match shape {
                b'd' => byte.is_ascii_digit(),
                _ => byte == shape,
            })
    };
    let bytes = text.as_bytes();
    let mut without = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if is_timestamp(&bytes[at..]) {
            without.push(b'T');
            at += SHAPE.len();
        } else {
            without.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(without).expect("UTF-8")
}

fn assert_alike(emit: &dyn Fn()) {
    for kind in [Kind::Json, Kind::Text] {
        let (fast, full) = (lines(kind, true, emit), lines(kind, false, emit));
        assert!(!full.is_empty(), "nothing logged");
        assert_eq!(fast, full, "{kind:?}");
    }
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
    /// A timestamp is the instant's RFC 3339 text to the microsecond, as
    /// tracing-subscriber's `SystemTime` writes it, however the seconds
    /// follow each other (the text of a second is kept).
    #[test]
    fn a_timestamp_is_the_instants_to_the_microsecond(instants in proptest::collection::vec((0i64..4_102_444_800, 0u32..1_000_000), 1..6)) {
        for (seconds, micros) in instants {
            let mut line = String::new();
            push_timestamp_at(&mut line, seconds, micros);
            let at = chrono::DateTime::from_timestamp(seconds, micros * 1000).expect("in range");
            prop_assert_eq!(line, at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        }
    }

    /// Any text in a value, a message or a target is escaped alike.
    #[test]
    fn any_text_is_written_alike(text in any::<String>(), bytes in proptest::collection::vec(0u8..0x80, 0..40)) {
        let ascii = String::from_utf8(bytes).expect("ASCII");
        let emit = || {
            tracing::info!(text = text.as_str(), ascii = ascii.as_str(), shown = %ascii, "{}", text);
            tracing::warn!(ascii = ascii.as_str(), "{}", ascii);
        };
        for kind in [Kind::Json, Kind::Text] {
            prop_assert_eq!(lines(kind, true, &emit), lines(kind, false, &emit), "{:?}", kind);
        }
    }
}
