//! The reserve call (phase: admit): a batch of reserves as one call of
//! `reserve.lua`, each answered on its own.

use chrono::{DateTime, Utc};
use redis::Value;

use super::{Again, RESERVATIONS_MARGIN, RedisStore, count, ms};
use crate::config::Limits;
use crate::periods::{Period, PeriodWindows};
use crate::store::script::Call;
use crate::store::{Admission, PeriodCounts, Reservation, ReservationId, StoreError};

/// One reserve to send.
#[derive(Debug)]
pub(super) struct PendingReserve {
    /// The user whose counters are checked.
    pub(super) user: String,
    /// The user's limits (0 = unlimited).
    pub(super) limits: Limits,
    /// The day, week and month `now` falls in.
    pub(super) windows: PeriodWindows,
    /// The new reservation's id.
    pub(super) id: ReservationId,
    /// When the reserve was made, from the caller's clock.
    pub(super) now: DateTime<Utc>,
    /// When the reservation expires unless settled or extended.
    pub(super) expires_at: DateTime<Utc>,
}

impl RedisStore {
    /// Sends `batch` as one call of `reserve.lua`; answers each reserve in
    /// order. A failed call fails every reserve of the batch.
    pub(super) async fn send_reserves(
        &self,
        batch: Vec<PendingReserve>,
    ) -> Vec<Result<Admission, StoreError>> {
        let mut call = Call::new(&self.scripts.reserve, 4 * batch.len());
        for reserve in &batch {
            self.counter_keys(&mut call, &reserve.user, &reserve.windows);
            call.key(&self.prefix, &reserve.user, "res");
        }
        for reserve in &batch {
            let (now, expires_at) = (ms(reserve.now), ms(reserve.expires_at));
            call.arg(now)
                .arg(reserve.id)
                .arg(expires_at)
                .arg(expires_at - now + RESERVATIONS_MARGIN.num_milliseconds());
            for period in Period::ALL {
                call.arg(reserve.limits.of(period));
            }
        }
        let answers: Vec<Value> = match self.run(&call, Again::IfConnectionGone).await {
            Ok(answers) => answers,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        if answers.len() != batch.len() {
            let e = StoreError::Protocol(format!(
                "the reserve script answered {} reserves of {}",
                answers.len(),
                batch.len()
            ));
            return batch.iter().map(|_| Err(e.clone())).collect();
        }
        batch
            .into_iter()
            .zip(answers)
            .map(|(reserve, answer)| admission(reserve, answer))
            .collect()
    }
}

/// One reserve's answer from `reserve.lua`: `{1, 0, day, week, month}`
/// (reserved), `{0, p, day, week, month}` (period p full), or the text of
/// the error Redis gave that reserve.
fn admission(reserve: PendingReserve, answer: Value) -> Result<Admission, StoreError> {
    let fields = match answer {
        Value::Array(fields) => fields,
        Value::BulkString(text) => {
            return Err(StoreError::Unavailable(format!(
                "redis refused a reserve: {}",
                String::from_utf8_lossy(&text)
            )));
        }
        other => {
            return Err(StoreError::Protocol(format!(
                "the reserve script answered {other:?}"
            )));
        }
    };
    let numbers: Option<Vec<i64>> = fields
        .iter()
        .map(|field| match field {
            Value::Int(n) => Some(*n),
            _ => None,
        })
        .collect();
    let Some(&[status, period, day, week, month]) = numbers.as_deref() else {
        return Err(StoreError::Protocol(format!(
            "the reserve script answered {fields:?}"
        )));
    };
    let counts = PeriodCounts([count(day)?, count(week)?, count(month)?]);
    match (status, period) {
        (1, _) => Ok(Admission::Reserved {
            reservation: Reservation {
                id: reserve.id,
                user: reserve.user,
                windows: reserve.windows,
                expires_at: reserve.expires_at,
            },
            counts,
        }),
        (0, 1..=3) => Ok(Admission::Exceeded {
            period: Period::ALL[(period - 1) as usize],
            counts,
        }),
        _ => Err(StoreError::Protocol(format!(
            "the reserve script answered {fields:?}"
        ))),
    }
}
