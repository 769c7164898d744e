//! The settle call (phase: settle): a batch of settles as one call of
//! `settle.lua`, each answered on its own.

use chrono::{DateTime, Utc};
use redis::Value;

use super::{Again, RedisStore, SETTLED_MAX, SETTLED_MEMORY, counter_ttl_ms, ms};
use crate::periods::PeriodWindows;
use crate::store::script::Call;
use crate::store::{ReservationId, StoreError};

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
}

impl RedisStore {
    /// Sends `batch` as one call of `settle.lua`; answers each settle in
    /// order. A failed call fails every settle of the batch.
    pub(super) async fn send_settles(
        &self,
        batch: Vec<PendingSettle>,
    ) -> Vec<Result<(), StoreError>> {
        let mut call = Call::new(&self.scripts.settle, 5 * batch.len());
        for settle in &batch {
            self.counter_keys(&mut call, &settle.user, &settle.windows);
            call.key(&self.prefix, &settle.user, "res")
                .key(&self.prefix, &settle.user, "done");
        }
        let remember = SETTLED_MEMORY.num_milliseconds();
        // The rank of the newest id to forget: -(most remembered) - 1.
        call.arg(remember).arg(-(SETTLED_MAX as i64) - 1);
        for settle in &batch {
            call.arg(ms(settle.now))
                .arg(settle.id)
                // Redis integers are signed 64-bit.
                .arg(settle.amount.min(i64::MAX as u64));
            for window in settle.windows.iter() {
                call.arg(counter_ttl_ms(window, settle.now));
            }
            call.arg(ms(settle.now) - remember);
        }
        let answers: Vec<Value> = match self.run(&call, Again::IfConnectionGone).await {
            Ok(answers) => answers,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        if answers.len() != batch.len() {
            let e = StoreError::Protocol(format!(
                "the settle script answered {} settles of {}",
                answers.len(),
                batch.len()
            ));
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        answers.into_iter().map(settle_answer).collect()
    }
}

/// One settle's answer from `settle.lua`: 1 (counted) and 0 (settled
/// already) are both success; a text is the error Redis gave that settle.
fn settle_answer(answer: Value) -> Result<(), StoreError> {
    match answer {
        Value::Int(0 | 1) => Ok(()),
        Value::BulkString(text) => Err(StoreError::Refused(format!(
            "a settle: {}",
            String::from_utf8_lossy(&text)
        ))),
        other => Err(StoreError::Protocol(format!(
            "the settle script answered {other:?}"
        ))),
    }
}
