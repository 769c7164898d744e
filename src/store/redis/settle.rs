//! The settle call (phase: settle): a batch of settles as one pipeline,
//! each answered on its own.
//!
//! A settle of one unit marks the reservation's unit counted in each of
//! its periods: `ZADD key +inf id`, which adds it if it expired or was
//! never made (it counts once all the same) and changes nothing the second
//! time, so a settle sent again counts once with no list of settled ids. A
//! release (0 units) removes the unit: `ZREM`, as idempotent. The reserve
//! gave the sets their expiry, so a settle sets it (`PEXPIRE`) only where
//! the set may have none: a reservation Redis did not make (the `local`
//! fallback's, or usage reported without one), or a period that is over (a
//! late settle may make the set anew). So the usual settle is three
//! commands. A settle of more than one unit is
//! `settle_many.lua`, one call, which adds the units beyond the first to
//! the period counters once per id.

use chrono::{DateTime, Utc};
use redis::Value;

use super::commands::{Commands, SETTLED, UNITS, refusal, take};
use super::{RedisStore, counter_ttl_ms};
use crate::periods::PeriodWindows;
use crate::store::{ReservationId, StoreError};

/// The script for a settle of more than one unit.
pub(super) const SETTLE_MANY: &str = include_str!("settle_many.lua");

/// Most commands of a settle of at most one unit: `ZADD` (or `ZREM`) and
/// `PEXPIRE` per period.
const COMMANDS: usize = 6;

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
    /// Per period, whether to set the expiry of its set (one that may have
    /// none yet).
    pub(super) expire: [bool; 3],
}

impl PendingSettle {
    /// How many answers its commands get.
    fn answers(&self) -> usize {
        if self.amount > 1 {
            1
        } else {
            3 + self.expire.iter().filter(|e| **e).count()
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
            for window in settle.windows.iter() {
                let label = window.label.text();
                let units = [label.as_str(), UNITS];
                if settle.amount == 0 {
                    commands.add("ZREM", user, &units, |zrem| {
                        zrem.arg(settle.id);
                    });
                } else {
                    commands.add("ZADD", user, &units, |zadd| {
                        zadd.arg(SETTLED).arg(settle.id);
                    });
                }
            }
            for (window, _) in settle.windows.iter().zip(settle.expire).filter(|(_, e)| *e) {
                let label = window.label.text();
                commands.add("PEXPIRE", user, &[label.as_str(), UNITS], |pexpire| {
                    pexpire.arg(counter_ttl_ms(window, settle.now));
                });
            }
        }
        let answers = match self.pipeline(&commands).await {
            Ok(answers) => answers,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut answers = answers.into_iter();
        let settled: Option<Vec<_>> = batch
            .iter()
            .map(|settle| take(&mut answers, settle.answers()).map(|a| settle_answer(&a)))
            .collect();
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
        let keys: [&[&str]; 6] = [
            &[day, UNITS],
            &[week, UNITS],
            &[month, UNITS],
            &[day],
            &[week],
            &[month],
        ];
        commands.eval(SETTLE_MANY, &settle.user, &keys, |eval| {
            // Redis integers are signed 64-bit.
            eval.arg(settle.id)
                .arg(settle.amount.min(i64::MAX as u64) - 1);
            for window in settle.windows.iter() {
                eval.arg(counter_ttl_ms(window, settle.now));
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
