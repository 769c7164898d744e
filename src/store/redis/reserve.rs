//! The reserve call (phase: admit): a batch of reserves as one pipeline of
//! plain commands, each reserve answered on its own.
//!
//! A reserve adds its id to the user's set of units first, gives the set
//! its expiry, then counts the set in each period: one `ZADD NX`, one
//! `PEXPIRE`, one `ZCOUNT` per period (the units counted in the period and
//! the live ones) and one `MGET` of the period counters, six commands, no
//! script. The count includes the new
//! unit, so the reserve is allowed when every limited count is at most its
//! limit; otherwise it is denied and its unit removed again before the
//! denial is answered (a release, one pipeline for the batch's denials; if
//! it fails, the unit lives only until its deadline). Adding before
//! counting is what makes it race-free without a script: of the reserves
//! that see a count within the limit, none can be the limit's `+1`th, since
//! each one's own unit was in the set before it counted (see `mod.rs`, *Why
//! plain commands*).

use chrono::{DateTime, Utc};
use redis::Value;

use super::commands::{
    Commands, Exclusive, UNITS, count_field, counted_from, live_score, refusal, take,
};
use super::settle::PendingSettle;
use super::{RedisStore, counter_ttl_ms, ms};
use crate::config::Limits;
use crate::periods::{Period, PeriodWindows};
use crate::store::{Admission, PeriodCounts, Reservation, ReservationId, StoreError};

/// Commands per reserve: `ZADD`, `PEXPIRE`, a `ZCOUNT` per period and
/// `MGET`.
const COMMANDS: usize = 6;

/// How long a set outlives the deadline of a unit reserved in it, at least
/// (a period about to end still keeps its set past the unit's deadline).
pub(super) const UNITS_MARGIN_MS: i64 = 60_000;

/// The TTL a user's set of units gets at `now`: the rest of the last of
/// `windows` plus the grace, and at least `live_ms` (how long a unit in it
/// stays live) plus [`UNITS_MARGIN_MS`].
pub(super) fn units_ttl_ms(windows: &PeriodWindows, now: DateTime<Utc>, live_ms: i64) -> i64 {
    windows
        .iter()
        .map(|window| counter_ttl_ms(window, now))
        .fold(live_ms.saturating_add(UNITS_MARGIN_MS), i64::max)
}

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
    /// Sends `batch` as one pipeline, then the releases of the units of the
    /// reserves denied (or refused) as another, so the thread's next batch
    /// counts none of them; answers each reserve in order. A failed call
    /// fails every reserve of the batch.
    pub(super) async fn send_reserves(
        &self,
        batch: Vec<PendingReserve>,
    ) -> Vec<Result<Admission, StoreError>> {
        let mut commands = Commands::new(&self.prefix, COMMANDS * batch.len());
        for reserve in &batch {
            let (user, id) = (reserve.user.as_str(), reserve.id);
            // A deadline in `now`'s millisecond (a TTL under 1 ms) would
            // score the unit on the check's exclusive bound, uncounted: it
            // lives to the next millisecond at least.
            let now = ms(reserve.now);
            let deadline = ms(reserve.expires_at).max(now + 1);
            commands.add("ZADD", user, &[UNITS], |zadd| {
                zadd.arg("NX").arg(live_score(deadline)).arg(id);
            });
            // The set expires after the last of its periods (and the
            // unit's deadline), whether or not the unit is ever settled.
            commands.add("PEXPIRE", user, &[UNITS], |pexpire| {
                pexpire.arg(units_ttl_ms(&reserve.windows, reserve.now, deadline - now));
            });
            // Per period: the live units and the ones counted in it.
            let live = Exclusive(live_score(now));
            for window in reserve.windows.iter() {
                commands.add("ZCOUNT", user, &[UNITS], |zcount| {
                    zcount.arg(live).arg(counted_from(ms(window.start)));
                });
            }
            commands.counters(user, reserve.windows.iter());
        }
        let answers = match self.pipeline(&commands).await {
            Ok(answers) => answers,
            Err(e) => return batch.iter().map(|_| Err(e.clone())).collect(),
        };
        let mut answers = admissions(batch, answers);
        let releases: Vec<PendingSettle> = answers
            .iter_mut()
            .filter_map(|(_, release)| release.take())
            .collect();
        if !releases.is_empty() {
            // A unit whose release fails ends at its deadline by itself.
            for e in self
                .send_settles(releases)
                .await
                .into_iter()
                .flat_map(Result::err)
            {
                tracing::debug!(error = %e, "a denied reserve's unit stays until its deadline");
            }
        }
        answers.into_iter().map(|(answer, _)| answer).collect()
    }
}

/// A reserve's answer, and the release of its unit if it was denied or
/// refused.
type Answer = (Result<Admission, StoreError>, Option<PendingSettle>);

/// Each reserve's answer, in order, with the release a denied or refused
/// one needs. An answer out of shape (too short or long, a field of the wrong
/// kind) may have put one reserve's fields in another's place: then none is
/// believed and every reserve fails with the protocol error.
fn admissions(batch: Vec<PendingReserve>, answers: Vec<Value>) -> Vec<Answer> {
    let reserves = batch.len();
    let mut fields = answers.into_iter();
    // The units of reserves denied earlier in this batch, still in the
    // sets when the later ones counted (their releases go after the
    // batch): left out of the later ones' counts, which are then what
    // each would have seen alone.
    let mut denied: Vec<(String, PeriodWindows)> = Vec::new();
    let admissions: Option<Vec<_>> = batch
        .into_iter()
        .map(|reserve| {
            let earlier = denied
                .iter()
                .filter(|(user, windows)| *user == reserve.user && *windows == reserve.windows)
                .count() as u64;
            let answer = admission(reserve, take(&mut fields, COMMANDS)?, earlier)?;
            if let (Ok(Admission::Exceeded { .. }), Some(release)) = &answer {
                denied.push((release.user.clone(), release.windows));
            }
            Some(answer)
        })
        .collect();
    let malformed = match admissions {
        Some(admissions) if fields.next().is_none() => {
            match admissions
                .iter()
                .find_map(|(answer, _)| protocol_error(answer))
            {
                Some(e) => e.clone(),
                None => return admissions,
            }
        }
        _ => StoreError::Protocol(format!(
            "the reserve pipeline's answer does not hold {reserves} answers"
        )),
    };
    (0..reserves)
        .map(|_| (Err(malformed.clone()), None))
        .collect()
}

/// The protocol error of an answer, if that is what it is.
fn protocol_error(answer: &Result<Admission, StoreError>) -> Option<&StoreError> {
    answer
        .as_ref()
        .err()
        .filter(|e| matches!(e, StoreError::Protocol(_)))
}

/// One reserve's answer from its six answers: the `ZADD` and the `PEXPIRE`
/// (their answers unused: a repeat of this reserve adds nothing and is
/// counted once all the same), three `ZCOUNT`s (the live and counted units, this
/// one included) and the `MGET` of the counters (usage counted before
/// units were, and adjustments; absent is 0), less the units of
/// `earlier_denied` reserves of the batch. `None` when out of shape.
fn admission(reserve: PendingReserve, answers: Vec<Value>, earlier_denied: u64) -> Option<Answer> {
    if let Some(refused) = refusal("reserve", &answers) {
        return Some((Err(refused), Some(release(reserve))));
    }
    let mut answers = answers.into_iter().skip(2);
    let mut units = [0i64; 3];
    for slot in &mut units {
        *slot = match answers.next()? {
            Value::Int(n) if n >= 0 => n,
            other => {
                let e = format!("redis answered {other:?} for a count of units");
                return Some((Err(StoreError::Protocol(e)), None));
            }
        };
    }
    let Value::Array(counters) = answers.next()? else {
        let e = "redis answered MGET with no array".to_owned();
        return Some((Err(StoreError::Protocol(e)), None));
    };
    if counters.len() != 3 {
        return None;
    }
    let mut counts = [0u64; 3];
    for ((slot, units), counter) in counts.iter_mut().zip(units).zip(counters) {
        let counter = match count_field(counter) {
            Ok(counter) => counter,
            Err(e) => return Some((Err(e), Some(release(reserve)))),
        };
        let count = u64::try_from(units.saturating_add(counter)).unwrap_or(0);
        *slot = count.saturating_sub(earlier_denied);
    }
    let (admission, release) = decide(reserve, counts);
    Some((Ok(admission), release))
}

/// The release of `reserve`'s unit.
fn release(reserve: PendingReserve) -> PendingSettle {
    PendingSettle {
        user: reserve.user,
        windows: reserve.windows,
        id: reserve.id,
        amount: 0,
        now: reserve.now,
        // The reserve gave the set its expiry.
        expire: false,
    }
}

/// The decision on counts that include the reserve's own unit: allowed
/// when each limited period's count is within its limit; else denied on
/// the first period over it, with the counts as they were before this
/// unit, and the release that removes the unit.
fn decide(reserve: PendingReserve, counts: [u64; 3]) -> (Admission, Option<PendingSettle>) {
    let full = Period::ALL.into_iter().find(|&period| {
        let limit = reserve.limits.of(period);
        limit > 0 && counts[period as usize] > limit
    });
    match full {
        None => {
            let reservation = Reservation {
                id: reserve.id,
                user: reserve.user,
                windows: reserve.windows,
                expires_at: reserve.expires_at,
                keys_expire: true,
            };
            let counts = PeriodCounts(counts);
            (
                Admission::Reserved {
                    reservation,
                    counts,
                },
                None,
            )
        }
        Some(period) => {
            let counts = PeriodCounts(counts.map(|n| n.saturating_sub(1)));
            (
                Admission::Exceeded { period, counts },
                Some(release(reserve)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::periods::Calendar;

    fn pending(limits: Limits) -> PendingReserve {
        let now = Utc::now();
        PendingReserve {
            user: "u".to_owned(),
            limits,
            windows: Calendar::new(chrono_tz::UTC, chrono::Weekday::Mon).windows(now),
            id: ReservationId(1),
            now,
            expires_at: now,
        }
    }

    /// A reserve's six answers: the `ZADD`, the `PEXPIRE`, the `ZCOUNT`s
    /// `units` and the `MGET` of `counters`.
    fn answers(units: [i64; 3], counters: [Option<&str>; 3]) -> Vec<Value> {
        let mut answers = vec![Value::Int(1); 2];
        answers.extend(units.map(Value::Int));
        answers.push(Value::Array(
            counters
                .map(|c| c.map_or(Value::Nil, |c| Value::BulkString(c.into())))
                .to_vec(),
        ));
        answers
    }

    fn wrong_type() -> Value {
        redis::parse_redis_value(b"-WRONGTYPE Operation against a key\r\n").expect("an error")
    }

    #[test]
    fn each_reserve_reads_its_own_answers() {
        let limits = Limits {
            daily: 10,
            weekly: 4,
            monthly: 0,
        };
        let mut all = answers([1, 2, 3], [None, None, None]);
        let mut refused = answers([1, 1, 1], [None; 3]);
        refused[1] = wrong_type();
        all.extend(refused);
        // Units and counters add up: the week holds 5 with this unit.
        all.extend(answers([1, 1, 1], [Some("2"), Some("4"), Some("-9")]));
        let read = admissions((0..3).map(|_| pending(limits)).collect(), all);
        assert!(matches!(
            &read[0],
            (
                Ok(Admission::Reserved {
                    counts: PeriodCounts([1, 2, 3]),
                    ..
                }),
                None
            )
        ));
        // Refused, and its unit released where the keys allow.
        assert!(
            matches!(&read[1], (Err(StoreError::Refused(e)), Some(_)) if e.contains("WRONGTYPE")),
            "{:?}",
            read[1]
        );
        // Denied on the week; its counts leave its own unit out, a negative
        // sum is 0; its unit is released.
        assert!(
            matches!(
                &read[2],
                (
                    Ok(Admission::Exceeded {
                        period: Period::Weekly,
                        counts: PeriodCounts([2, 4, 0]),
                    }),
                    Some(PendingSettle { amount: 0, .. })
                )
            ),
            "{:?}",
            read[2]
        );
    }

    #[test]
    fn a_count_at_the_limit_is_allowed_and_one_over_is_denied() {
        let limits = Limits {
            daily: 3,
            weekly: 0,
            monthly: 0,
        };
        let at = admissions(vec![pending(limits)], answers([3, 9, 9], [None; 3]));
        assert!(matches!(&at[0], (Ok(Admission::Reserved { .. }), None)));
        let over = admissions(
            vec![pending(limits)],
            answers([3, 9, 9], [Some("1"), None, None]),
        );
        assert!(matches!(
            &over[0],
            (
                Ok(Admission::Exceeded {
                    period: Period::Daily,
                    ..
                }),
                Some(_)
            )
        ));
    }

    #[test]
    fn a_unit_denied_earlier_in_the_batch_is_left_out_of_later_counts() {
        let limits = Limits {
            daily: 3,
            weekly: 0,
            monthly: 0,
        };
        // The day held 3; two more reserves of the user count 4, then 5
        // (the first one's unit still there).
        let mut both = answers([4, 4, 4], [None; 3]);
        both.extend(answers([5, 5, 5], [None; 3]));
        let read = admissions(vec![pending(limits), pending(limits)], both);
        for answer in &read {
            assert!(
                matches!(
                    answer,
                    (
                        Ok(Admission::Exceeded {
                            counts: PeriodCounts([3, 3, 3]),
                            ..
                        }),
                        Some(_)
                    )
                ),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn an_answer_out_of_shape_fails_every_reserve_of_the_batch() {
        let batch = || vec![pending(Limits::default()), pending(Limits::default())];
        let mut good = answers([1, 1, 1], [None; 3]);
        good.extend(answers([2, 2, 2], [None; 3]));
        assert!(
            admissions(batch(), good.clone())
                .iter()
                .all(|(a, _)| a.is_ok())
        );
        // A count of the wrong kind, one answer too many, one too few, a
        // counter that is no array: the second reserve's answers cannot be
        // trusted either.
        let mut odd = good.clone();
        odd[8] = Value::Nil;
        let mut long = good.clone();
        long.push(Value::Int(0));
        let short = good[..11].to_vec();
        let mut flat = good.clone();
        flat[11] = Value::Int(0);
        for answer in [odd, long, short, flat] {
            let read = admissions(batch(), answer.clone());
            assert!(
                read.iter()
                    .all(|a| matches!(a, (Err(StoreError::Protocol(_)), None))),
                "{answer:?}: {read:?}"
            );
        }
    }

    #[test]
    fn a_counter_that_is_no_integer_refuses_that_reserve() {
        let read = admissions(
            vec![pending(Limits::default())],
            answers([1, 1, 1], [Some("x"), None, None]),
        );
        assert!(matches!(&read[0], (Err(StoreError::Refused(e)), Some(_)) if e.contains("\"x\"")));
    }
}
