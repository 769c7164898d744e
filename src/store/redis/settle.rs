//! The settle call (phase: settle): a batch of settles as one pipeline,
//! each answered on its own.
//!
//! A settle of one unit marks the reservation's unit counted: `ZADD key
//! score id`, the score minus an instant of its periods (the day's start), which
//! adds it if it expired or was never made (it counts once all the same)
//! and changes nothing the second time, so a settle sent again counts once
//! with no list of settled ids. A release (0 units) removes the unit:
//! `ZREM`, as idempotent. The reserve gave the set its expiry, so a
//! settle sets it only where the set may have none: a reservation Redis
//! did not make (the `local` fallback's, or usage reported without one),
//! or one past its deadline (its unit may have been cleaned away and the
//! set with it, to be made anew here); then `PEXPIRE … GT` and `PEXPIRE …
//! NX` make its TTL at least what the periods need. So the usual settle is
//! one command. A settle that sent neither and finds its unit gone (its
//! `ZADD` added it: Redis lost the set in a restart or failover, or an
//! operator deleted a refused key) may have made the set anew without a
//! TTL, and sends the two `PEXPIRE`s after: the one settle that costs a
//! second round trip. One settle in [`CLEANUP_EVERY`] also removes the
//! user's units that no longer count (counted before the periods of its
//! reservation, or live no more): two `ZREMRANGEBYSCORE`; a release never
//! does. A settle of more than one unit is `settle_many.lua`, one call,
//! which adds the units beyond the first to the period counters once per
//! id, and cleans as the others do.

use chrono::{DateTime, Utc};
use redis::Value;

use super::commands::{
    Commands, Exclusive, UNITS, counted_from, counted_score, live_score, refusal, take,
};
use super::reserve::units_ttl_ms;
use super::{RedisStore, counter_ttl_ms, ms};
use crate::periods::PeriodWindows;
use crate::store::{ReservationId, StoreError};

/// The script for a settle of more than one unit.
pub(super) const SETTLE_MANY: &str = include_str!("settle_many.lua");

/// Most commands of a settle of at most one unit: `ZADD` (or `ZREM`), two
/// `PEXPIRE`s and two `ZREMRANGEBYSCORE`s.
const COMMANDS: usize = 5;

/// One settle in this many (by reservation id, which is random) removes
/// the units that no longer count: a user's set holds them at most until
/// then, or until the set expires.
pub(super) const CLEANUP_EVERY: u128 = 8;

/// One settle to send.
#[derive(Debug)]
pub(super) struct PendingSettle {
    /// The user whose counters it adds to.
    pub(super) user: String,
    /// The periods the reservation was made in.
    pub(super) windows: PeriodWindows,
    /// The reservation id, counted once.
    pub(super) id: ReservationId,
    /// Units to add (0 releases the reservation).
    pub(super) amount: u64,
    /// When the settle was made, from the caller's clock.
    pub(super) now: DateTime<Utc>,
    /// Whether to make sure the set expires (it may have no TTL yet).
    pub(super) expire: bool,
}

impl PendingSettle {
    /// Whether this settle also removes the units that no longer count:
    /// one settle in [`CLEANUP_EVERY`] (a release, which a denial waits
    /// for, never does).
    fn cleans_up(&self) -> bool {
        self.amount >= 1 && self.id.0.is_multiple_of(CLEANUP_EVERY)
    }

    /// The bounds of the units that no longer count: those scoring above
    /// the first (counted before the first of its periods), and those
    /// scoring up to the second (expired).
    fn stale(&self) -> (Exclusive, i64) {
        let first = self.windows.iter().map(|w| ms(w.start)).min();
        (
            Exclusive(counted_from(first.unwrap_or(0))),
            live_score(ms(self.now)),
        )
    }

    /// Appends the `PEXPIRE`s that give the user's set at least the TTL
    /// its periods need: `GT` lengthens a shorter one, `NX` gives one to a
    /// set that has none.
    fn expire_set(&self, commands: &mut Commands<'_>) {
        let ttl = units_ttl_ms(&self.windows, self.now, 0);
        for only in ["GT", "NX"] {
            commands.add("PEXPIRE", &self.user, &[UNITS], |pexpire| {
                pexpire.arg(ttl).arg(only);
            });
        }
    }

    /// How many answers its commands get.
    fn answers(&self) -> usize {
        if self.amount > 1 {
            1
        } else {
            1 + 2 * usize::from(self.expire) + 2 * usize::from(self.cleans_up())
        }
    }
}

impl RedisStore {
    /// Sends `batch` as one pipeline; answers each settle in order. A
    /// failed call fails every settle of the batch.
    pub(super) async fn send_settles(
        &self,
        batch: Vec<PendingSettle>,
    ) -> Vec<Result<(), StoreError>> {
        let mut commands = Commands::new(&self.prefix, COMMANDS * batch.len());
        for settle in &batch {
            if settle.amount > 1 {
                self.settle_many(&mut commands, settle);
                continue;
            }
            let user = settle.user.as_str();
            if settle.amount == 0 {
                commands.add("ZREM", user, &[UNITS], |zrem| {
                    zrem.arg(settle.id);
                });
            } else {
                commands.add("ZADD", user, &[UNITS], |zadd| {
                    zadd.arg(counted_score(&settle.windows)).arg(settle.id);
                });
            }
            if settle.expire {
                settle.expire_set(&mut commands);
            }
            if settle.cleans_up() {
                let (counted_before, expired) = settle.stale();
                commands.add("ZREMRANGEBYSCORE", user, &[UNITS], |zrem| {
                    zrem.arg(counted_before).arg("+inf");
                });
                commands.add("ZREMRANGEBYSCORE", user, &[UNITS], |zrem| {
                    zrem.arg("-inf").arg(expired);
                });
            }
        }
        let answers = match self.pipeline(&commands).await {
            Ok(answers) => answers,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut answers = answers.into_iter();
        // A settle that sent no `PEXPIRE` (its reservation Redis made, its
        // deadline not passed) whose `ZADD` added the unit anew found it
        // gone, and maybe the set with it (lost by a restart or failover,
        // or deleted to fix a refused key): the set it made has no TTL yet.
        let mut unexpiring = Vec::new();
        let settled: Option<Vec<_>> = batch
            .iter()
            .map(|settle| {
                take(&mut answers, settle.answers()).map(|a| {
                    if settle.amount == 1 && !settle.expire && a.first() == Some(&Value::Int(1)) {
                        unexpiring.push(settle);
                    }
                    settle_answer(&a)
                })
            })
            .collect();
        if !unexpiring.is_empty() {
            let mut commands = Commands::new(&self.prefix, 2 * unexpiring.len());
            for settle in &unexpiring {
                settle.expire_set(&mut commands);
            }
            if let Err(e) = self.pipeline(&commands).await {
                tracing::warn!(error = %e, "a user's set of units made anew may have no TTL");
            }
        }
        match settled {
            Some(settled) if answers.next().is_none() => settled,
            _ => {
                let e = StoreError::Protocol(format!(
                    "the settle pipeline's answer does not hold {} answers",
                    batch.len()
                ));
                batch.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }

    /// Appends a call of `settle_many.lua` for `settle`.
    fn settle_many(&self, commands: &mut Commands<'_>, settle: &PendingSettle) {
        let labels = settle.windows.0.map(|window| window.label.text());
        let [day, week, month] = labels.each_ref().map(|label| label.as_str());
        let keys: [&[&str]; 4] = [&[UNITS], &[day], &[week], &[month]];
        commands.eval(SETTLE_MANY, &settle.user, &keys, |eval| {
            // Redis integers are signed 64-bit.
            eval.arg(settle.id)
                .arg(settle.amount.min(i64::MAX as u64) - 1)
                .arg(counted_score(&settle.windows))
                .arg(units_ttl_ms(&settle.windows, settle.now, 0));
            for window in settle.windows.iter() {
                eval.arg(counter_ttl_ms(window, settle.now));
            }
            // One in `CLEANUP_EVERY` also removes the units that no longer
            // count, as a settle of one image does ('' when not).
            if settle.cleans_up() {
                let (counted_before, expired) = settle.stale();
                eval.arg(counted_before).arg(expired);
            } else {
                eval.arg("").arg("");
            }
        });
    }
}

/// One settle's answer from its commands' answers: any number is success
/// (a unit counted or removed, or already so); `WRONGTYPE` fails that
/// settle alone.
fn settle_answer(answers: &[Value]) -> Result<(), StoreError> {
    if let Some(refused) = refusal("settle", answers) {
        return Err(refused);
    }
    match answers
        .iter()
        .find(|answer| !matches!(answer, Value::Int(_)))
    {
        None => Ok(()),
        Some(other) => Err(StoreError::Protocol(format!(
            "redis answered a settle with {other:?}"
        ))),
    }
}
