//! Plain commands for a batch, sent as one pipeline (phases: admit and
//! settle): each user's commands written key by key into one
//! [`Pipeline`], and each item's answers read back in turn.

use redis::{Cmd, Pipeline, RedisWrite as _, Value};

use crate::periods::{PeriodWindow, PeriodWindows};
use crate::store::StoreError;
use crate::store::script::write_user_key;
use crate::store::topology::WRONG_TYPE;

/// The name of a user's set of units (`quota:{42}:units`).
pub(super) const UNITS: &str = "units";

/// A pipeline being written, for one store's keys.
pub(super) struct Commands<'a> {
    pipe: Pipeline,
    prefix: &'a str,
}

impl<'a> Commands<'a> {
    /// An empty pipeline for `prefix`'s keys, answering a refused command
    /// in its place, so one user's item fails alone (in a cluster too:
    /// the cluster client still follows `MOVED` and `ASK` itself).
    pub(super) fn new(prefix: &'a str, commands: usize) -> Self {
        let mut pipe = Pipeline::with_capacity(commands);
        pipe.ignore_errors();
        Self { pipe, prefix }
    }

    /// The pipeline written so far.
    pub(super) fn pipeline(&self) -> &Pipeline {
        &self.pipe
    }

    /// Appends command `name` on the key `{prefix}{{user}}:{key…}`, with
    /// the arguments `args` writes after the key.
    pub(super) fn add(
        &mut self,
        name: &'static str,
        user: &str,
        key: &[&str],
        args: impl FnOnce(&mut Cmd),
    ) {
        // Sized for the name, the key and three arguments, so writing
        // them does not grow the buffers (growing them was 15% of a
        // flagged request's instructions).
        let mut command = Cmd::with_capacity(5, 128);
        command.arg(name);
        write_user_key(&mut command.writer_for_next_arg(), self.prefix, user, key);
        args(&mut command);
        self.pipe.add_command(command);
    }

    /// Appends `MGET` of the user's three period counters of `windows`.
    pub(super) fn counters<'w>(
        &mut self,
        user: &str,
        windows: impl Iterator<Item = &'w PeriodWindow>,
    ) {
        let mut command = Cmd::with_capacity(4, 128);
        command.arg("MGET");
        for window in windows {
            let label = window.label.text();
            write_user_key(
                &mut command.writer_for_next_arg(),
                self.prefix,
                user,
                &[label.as_str()],
            );
        }
        self.pipe.add_command(command);
    }

    /// Appends a call of the script `code` on the user's keys `keys`, with
    /// the arguments `args` writes after them.
    pub(super) fn eval(
        &mut self,
        code: &str,
        user: &str,
        keys: &[&[&str]],
        args: impl FnOnce(&mut Cmd),
    ) {
        let mut command = Cmd::with_capacity(3 + keys.len() + 6, code.len() + 512);
        command.arg("EVAL").arg(code).arg(keys.len());
        for key in keys {
            write_user_key(&mut command.writer_for_next_arg(), self.prefix, user, key);
        }
        args(&mut command);
        self.pipe.add_command(command);
    }
}

/// The next `n` answers of an item, or `None` if the pipeline's answer ends
/// before them.
pub(super) fn take(answers: &mut impl Iterator<Item = Value>, n: usize) -> Option<Vec<Value>> {
    let taken: Vec<Value> = answers.take(n).collect();
    (taken.len() == n).then_some(taken)
}

/// The refusal among one item's answers (`WRONGTYPE`: a key of the wrong
/// type), as that item's error.
pub(super) fn refusal(what: &str, answers: &[Value]) -> Option<StoreError> {
    answers.iter().find_map(|answer| match answer {
        Value::ServerError(e) if e.code() == WRONG_TYPE => Some(StoreError::Refused(format!(
            "a {what}: {WRONG_TYPE} {}",
            e.details().unwrap_or_default()
        ))),
        _ => None,
    })
}

/// A period counter's value from `MGET`: absent is 0; a text that is no
/// integer is a refusal of that user's keys, as Redis's own would be.
pub(super) fn count_field(counter: Value) -> Result<i64, StoreError> {
    match counter {
        Value::Nil => Ok(0),
        Value::BulkString(text) => std::str::from_utf8(&text)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| {
                StoreError::Refused(format!(
                    "a period counter holds {:?}, not an integer",
                    String::from_utf8_lossy(&text)
                ))
            }),
        other => Err(StoreError::Protocol(format!(
            "redis answered {other:?} for a period counter"
        ))),
    }
}

pub(super) fn count(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Protocol(format!("negative count {value} from a script")))
}

/// Scores (ms; exact in a double, as Redis's scores are, up to `2^53`)
/// put the units a check counts at the head of the set, in the order it
/// reads them, so Redis's scan of a small set (a listpack, walked from
/// its head) stops at the last one it counts instead of walking all:
/// first the expired units (few: lost settles), then the live ones, a
/// unit live until `deadline` scoring `deadline - 2^52` (from `-2^52` up
/// to `LIVE_CEILING`), then the counted ones, newest day first, a unit
/// counted on the day starting at `start` scoring `-start` (from
/// `LIVE_CEILING` up to 0; the year 71,000 is far).
const LIVE_BASE: i64 = 1 << 52;

/// Every live unit scores below it, every counted one above.
pub(super) const LIVE_CEILING: i64 = -(1 << 51);

/// The score of a unit live until `deadline_ms`; the units live at `now`
/// score above `live_score(now)` (a deadline equal to now has passed, as
/// in the memory store).
pub(super) fn live_score(deadline_ms: i64) -> i64 {
    deadline_ms.clamp(0, -LIVE_CEILING - 1) - LIVE_BASE
}

/// The score of a unit counted in a period starting at `start_ms`, or
/// later: a unit counted in a period scores from `counted_from(end)`
/// (exclusive) up to `counted_from(start)`.
pub(super) fn counted_from(start_ms: i64) -> i64 {
    -start_ms.clamp(0, -LIVE_CEILING - 1)
}

/// The score of a unit counted in `windows`: that of the latest of their
/// starts (the day's), an instant inside each of them, so a unit counts
/// in a period exactly when its score is within the period.
pub(super) fn counted_score(windows: &PeriodWindows) -> i64 {
    let day = windows.iter().map(|w| w.start.timestamp_millis()).max();
    counted_from(day.unwrap_or(0))
}

/// `(` and a score: an exclusive bound of `ZCOUNT` and
/// `ZREMRANGEBYSCORE`.
#[derive(Clone, Copy)]
pub(super) struct Exclusive(pub(super) i64);

impl redis::ToRedisArgs for Exclusive {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        out.write_arg_fmt(format_args!("({}", self.0));
    }
}
