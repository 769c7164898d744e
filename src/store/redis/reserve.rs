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
        let answer: Vec<Value> = match self.run(&call, Again::IfConnectionGone).await {
            Ok(answer) => answer,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        admissions(batch, answer)
    }
}

/// Each reserve's answer from `reserve.lua`'s flat `answer`, in order. An
/// answer out of shape (too short or long, a field of the wrong kind) may
/// have put one reserve's fields in another's place: then none is believed
/// and every reserve fails with the protocol error.
fn admissions(
    batch: Vec<PendingReserve>,
    answer: Vec<Value>,
) -> Vec<Result<Admission, StoreError>> {
    let reserves = batch.len();
    let mut fields = answer.into_iter();
    let admissions: Option<Vec<_>> = batch
        .into_iter()
        .map(|reserve| admission(reserve, &mut fields))
        .collect();
    let malformed = match admissions {
        Some(admissions) if fields.next().is_none() => {
            match admissions.iter().find_map(protocol_error) {
                Some(e) => e.clone(),
                None => return admissions,
            }
        }
        _ => StoreError::Protocol(format!(
            "the reserve script's answer does not hold {reserves} answers"
        )),
    };
    (0..reserves).map(|_| Err(malformed.clone())).collect()
}

/// The protocol error of an answer, if that is what it is.
fn protocol_error(answer: &Result<Admission, StoreError>) -> Option<&StoreError> {
    answer
        .as_ref()
        .err()
        .filter(|e| matches!(e, StoreError::Protocol(_)))
}

/// One reserve's answer, the next fields of `reserve.lua`'s flat answer:
/// `0, day, week, month` (reserved), `p, day, week, month` (period p full),
/// or the text of the error Redis gave that reserve. `None` when the
/// answer ends before them.
fn admission(
    reserve: PendingReserve,
    fields: &mut impl Iterator<Item = Value>,
) -> Option<Result<Admission, StoreError>> {
    let full = match fields.next()? {
        Value::Int(full) => full,
        Value::BulkString(text) => {
            return Some(Err(StoreError::Refused(format!(
                "a reserve: {}",
                String::from_utf8_lossy(&text)
            ))));
        }
        other => {
            return Some(Err(StoreError::Protocol(format!(
                "the reserve script answered {other:?}"
            ))));
        }
    };
    let mut counts = [0; 3];
    for slot in &mut counts {
        *slot = match fields.next()? {
            Value::Int(n) => n,
            other => {
                return Some(Err(StoreError::Protocol(format!(
                    "the reserve script answered {other:?} for a count"
                ))));
            }
        };
    }
    Some(counts_admission(reserve, full, counts))
}

/// The admission `reserve.lua` answered: `full` 0 (reserved) or the period
/// that is full (1–3), with the counts.
fn counts_admission(
    reserve: PendingReserve,
    full: i64,
    [day, week, month]: [i64; 3],
) -> Result<Admission, StoreError> {
    let counts = PeriodCounts([count(day)?, count(week)?, count(month)?]);
    match full {
        0 => Ok(Admission::Reserved {
            reservation: Reservation {
                id: reserve.id,
                user: reserve.user,
                windows: reserve.windows,
                expires_at: reserve.expires_at,
            },
            counts,
        }),
        1..=3 => Ok(Admission::Exceeded {
            period: Period::ALL[(full - 1) as usize],
            counts,
        }),
        _ => Err(StoreError::Protocol(format!(
            "the reserve script answered {full} for the period"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::periods::Calendar;

    fn pending() -> PendingReserve {
        let now = Utc::now();
        PendingReserve {
            user: "u".to_owned(),
            limits: Limits::default(),
            windows: Calendar::new(chrono_tz::UTC, chrono::Weekday::Mon).windows(now),
            id: ReservationId(1),
            now,
            expires_at: now,
        }
    }

    fn answers(fields: Vec<Value>) -> Vec<Option<Result<Admission, StoreError>>> {
        let mut fields = fields.into_iter();
        (0..3).map(|_| admission(pending(), &mut fields)).collect()
    }

    #[test]
    fn each_reserve_reads_its_own_fields() {
        let text = Value::BulkString(b"WRONGTYPE no".to_vec());
        let read = answers(vec![
            Value::Int(0),
            Value::Int(1),
            Value::Int(2),
            Value::Int(3),
            text,
            Value::Int(2),
            Value::Int(5),
            Value::Int(9_007_199_254_740_990),
            Value::Int(7),
        ]);
        assert!(matches!(
            &read[0],
            Some(Ok(Admission::Reserved {
                counts: PeriodCounts([1, 2, 3]),
                ..
            }))
        ));
        assert!(
            matches!(&read[1], Some(Err(StoreError::Refused(e))) if e.contains("WRONGTYPE no"))
        );
        assert!(matches!(
            &read[2],
            Some(Ok(Admission::Exceeded {
                period: Period::Weekly,
                counts: PeriodCounts([5, 9_007_199_254_740_990, 7]),
            }))
        ));
    }

    #[test]
    fn an_answer_out_of_shape_fails_every_reserve_of_the_batch() {
        let int = Value::Int;
        let batch = || vec![pending(), pending()];
        let good = vec![
            int(0),
            int(1),
            int(1),
            int(1),
            int(1),
            int(2),
            int(2),
            int(2),
        ];
        assert!(admissions(batch(), good.clone()).iter().all(Result::is_ok));
        // A field of the wrong kind in the first answer, one too many, one
        // too few: the second reserve's fields cannot be trusted either.
        let mut odd = good.clone();
        odd[2] = Value::Nil;
        let mut long = good.clone();
        long.push(int(0));
        let short = good[..7].to_vec();
        // The first answer's first field wrong: what follows reads as one
        // answer of the right length, but it is not to be believed.
        let shifted = vec![Value::Nil, int(0), int(2), int(2), int(2)];
        for answer in [odd, long, short, shifted] {
            let read = admissions(batch(), answer.clone());
            assert!(
                read.iter()
                    .all(|a| matches!(a, Err(StoreError::Protocol(_)))),
                "{answer:?}: {read:?}"
            );
        }
    }

    #[test]
    fn fields_out_of_shape_are_protocol_errors_or_the_end() {
        let int = Value::Int;
        let short = answers(vec![int(0), int(1), int(2)]);
        assert!(short[0].is_none(), "{short:?}");
        let odd = answers(vec![int(4), int(1), int(2), int(3), int(0), Value::Nil]);
        assert!(
            matches!(odd[0], Some(Err(StoreError::Protocol(_)))),
            "{odd:?}"
        );
        assert!(
            matches!(odd[1], Some(Err(StoreError::Protocol(_)))),
            "{odd:?}"
        );
        let negative = answers(vec![int(0), int(-1), int(2), int(3)]);
        assert!(
            matches!(negative[0], Some(Err(StoreError::Protocol(_)))),
            "{negative:?}"
        );
    }
}
