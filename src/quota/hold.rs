//! Holding reservations past their TTL: a request whose answer has not
//! ended keeps its reservation alive, so a generation slower than
//! `store.reservation_ttl` still holds its unit and a parallel request
//! cannot slip past the limit.
//!
//! One task per config (started by the first hold, ended once its
//! [`QuotaState`] is gone, started again by the next hold if its runtime
//! dropped it) looks at every held reservation each third of the TTL and
//! extends, together, the ones with five sixths of the TTL or less left:
//! a reservation is extended with at least a third of the TTL left when
//! the looks are up to a sixth of the TTL late, and with looks on time
//! with at least half of it, so that a failed extension is tried once more
//! before it expires. A generation shorter than a sixth of the TTL is
//! never extended. Each extension is given a look's time; one that
//! takes longer counts as failed, so a hung store delays no look. Holding
//! one costs a lock and a slot: no timer and no task per request.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::state::QuotaState;
use crate::store::{Reservation, ReservationId, StoreError};

/// The reservations held now, in one config (`deps.holds`).
#[derive(Default)]
pub(crate) struct Holds {
    slots: Mutex<Slots>,
    /// Whether the extending task was started.
    ticking: AtomicBool,
}

/// Held reservations, each with when it expires as far as this process
/// knows (never later than the store's expiry), and the free places.
#[derive(Default)]
struct Slots {
    held: Vec<Option<(Reservation, DateTime<Utc>)>>,
    free: Vec<usize>,
}

/// One held reservation; no longer held once dropped.
pub(crate) struct Hold {
    state: Arc<QuotaState>,
    slot: usize,
}

impl Holds {
    /// Holds `reservation` until the returned [`Hold`] is dropped.
    pub(crate) fn hold(state: &Arc<QuotaState>, reservation: &Reservation) -> Hold {
        let holds = &state.deps.holds;
        if !holds.ticking.load(Ordering::Relaxed) && !holds.ticking.swap(true, Ordering::Relaxed) {
            tokio::spawn(extend_held(Restart(Arc::downgrade(state))));
        }
        let entry = Some((reservation.clone(), reservation.expires_at));
        let mut slots = holds.lock();
        let slot = match slots.free.pop() {
            Some(slot) => {
                slots.held[slot] = entry;
                slot
            }
            None => {
                slots.held.push(entry);
                slots.held.len() - 1
            }
        };
        Hold {
            state: Arc::clone(state),
            slot,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic while holding the lock leaves the slots whole.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The held reservations that expire by `by`, marked as expiring at
    /// `until` (the extension about to be asked for).
    fn due(&self, by: DateTime<Utc>, until: DateTime<Utc>) -> Vec<Reservation> {
        let mut slots = self.lock();
        slots
            .held
            .iter_mut()
            .flatten()
            .filter(|(_, expires)| *expires <= by)
            .map(|(reservation, expires)| {
                *expires = until;
                reservation.clone()
            })
            .collect()
    }

    /// Marks the reservations `failed`, those still held, as expiring at
    /// `expires` (their extension failed: they are due again at the next
    /// look). One pass, whatever the number that failed (in an outage,
    /// all of them).
    fn expire(&self, failed: &HashSet<ReservationId>, expires: DateTime<Utc>) {
        let mut slots = self.lock();
        for (held, at) in slots.held.iter_mut().flatten() {
            if failed.contains(&held.id) {
                *at = expires;
            }
        }
    }

    /// How many reservations are held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().held.iter().flatten().count()
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let holds = &self.state.deps.holds;
        let mut slots = holds.lock();
        // Dropped after the lock is let go.
        let held = slots.held[self.slot].take();
        slots.free.push(self.slot);
        drop(slots);
        drop(held);
    }
}

/// How often the held reservations are looked at: three times per TTL.
fn look_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

/// The extending task of one config: every [`look_every`], extends to a
/// full TTL from now each held reservation with five sixths of the TTL or
/// less left (see the module). Ends once the config's state is gone
/// (replaced by a reload, and its requests done); if it ends otherwise
/// (its runtime dropped it), the next hold starts another.
async fn extend_held(restart: Restart) {
    // Held by the task's future from its spawn, polled or not.
    let state = &restart.0;
    loop {
        let Some(every) = state
            .upgrade()
            .map(|s| look_every(s.limits.reservation_ttl))
        else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let now = state.deps.clock.now();
        let ttl = state.limits.reservation_ttl;
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let by = now + chrono::Duration::from_std(every * 5 / 2).unwrap_or(chrono::Duration::MAX);
        let due = state.deps.holds.due(by, until);
        let extends = due.iter().map(|reservation| {
            let store = &state.deps.store;
            async move {
                match tokio::time::timeout(every, store.extend(reservation, until, now)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some((reservation.id, e)),
                    Err(_) => Some((reservation.id, StoreError::Timeout(every))),
                }
            }
        });
        let failed: Vec<_> = futures_util::future::join_all(extends)
            .await
            .into_iter()
            .flatten()
            .collect();
        // One line a look, not one per reservation: in a store outage
        // every held reservation fails alike.
        if let Some((_, e)) = failed.first() {
            let ids = failed.iter().map(|(id, _)| *id).collect();
            state.deps.holds.expire(&ids, now);
            tracing::warn!(failed = failed.len(), due = due.len(), error = %e,
                "could not extend held reservations; trying again at the next look");
        }
    }
}

/// Lets the next hold start another extending task once this one ends,
/// however it ends (a task its runtime drops only drops its future).
struct Restart(Weak<QuotaState>);

impl Drop for Restart {
    fn drop(&mut self) {
        if let Some(state) = self.0.upgrade() {
            state.deps.holds.ticking.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::periods::Calendar;

    fn reservation(user: &str, expires_at: DateTime<Utc>) -> Reservation {
        Reservation {
            id: Reservation::new_id(),
            user: user.to_owned(),
            windows: Calendar::new(chrono_tz::UTC, chrono::Weekday::Mon).windows(expires_at),
            expires_at,
            keys_expire: false,
        }
    }

    #[test]
    fn only_reservations_expiring_soon_are_due_and_a_failed_extension_is_due_again() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let secs = chrono::Duration::seconds;
        let holds = Holds::default();
        let soon = reservation("soon", now + secs(100));
        let later = reservation("later", now + secs(170));
        holds.lock().held = vec![
            Some((soon.clone(), soon.expires_at)),
            None,
            Some((later.clone(), later.expires_at)),
        ];
        // Looked at every 60 s: due with 150 s or less left.
        let due = holds.due(now + secs(150), now + secs(180));
        assert_eq!(due, std::slice::from_ref(&soon));
        // At the next look, both have 150 s or less left.
        let due = holds.due(now + secs(60 + 150), now + secs(60 + 180));
        assert_eq!(due, [soon.clone(), later]);
        assert_eq!(holds.due(now + secs(150), now + secs(180)), []);
        holds.expire(&HashSet::from([soon.id]), now);
        assert_eq!(holds.due(now + secs(1), now + secs(181)), [soon]);
    }
}
