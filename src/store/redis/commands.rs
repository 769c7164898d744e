//! Plain commands for a batch, sent as one pipeline (phases: admit and
//! settle): each user's commands written key by key into one
//! [`Pipeline`], and each item's answers read back in turn.

use redis::{Cmd, Pipeline, RedisWrite as _, Value};

use crate::periods::PeriodWindow;
use crate::store::StoreError;
use crate::store::script::write_user_key;
use crate::store::topology::WRONG_TYPE;

/// The name of a period's set of units (`…:d2026-11-28:units`), after the
/// period's label.
pub(super) const UNITS: &str = ":units";

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

/// The score of a counted unit, positive infinity (a live one's is its
/// deadline).
pub(super) const SETTLED: &str = "+inf";

/// `(` and a time in ms: the bound "after this instant" of `ZCOUNT`.
#[derive(Clone, Copy)]
pub(super) struct LiveFrom(pub(super) i64);

impl redis::ToRedisArgs for LiveFrom {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        out.write_arg_fmt(format_args!("({}", self.0));
    }
}
