//! Holding reservations past their TTL: a request whose answer has not
//! ended keeps its reservation alive, so a generation slower than
//! `store.reservation_ttl` still holds its unit and a parallel request
//! cannot slip past the limit.
//!
//! One task per config (started by the first hold, ended once its
//! [`QuotaState`] is gone) looks at every held reservation each third of the
//! TTL and extends the ones with two thirds or less left, together. Holding
//! one costs a lock and a slot: no timer and no task per request. A
//! generation shorter than a third of the TTL is never extended, and a
//! reservation is extended with at least a third of the TTL left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::state::QuotaState;
use crate::store::Reservation;

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
            tokio::spawn(extend_held(Arc::downgrade(state)));
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

    /// Marks `reservation`, if still held, as expiring at `expires` (its
    /// extension failed: it is due again at the next look).
    fn expires(&self, reservation: &Reservation, expires: DateTime<Utc>) {
        let mut slots = self.lock();
        for (held, at) in slots.held.iter_mut().flatten() {
            if held.id == reservation.id {
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
/// full TTL from now each held reservation with two looks or less left.
/// Ends once the config's state is gone (replaced by a reload, and its
/// requests done).
async fn extend_held(state: Weak<QuotaState>) {
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
        let by = now + chrono::Duration::from_std(every * 2).unwrap_or(chrono::Duration::MAX);
        let due = state.deps.holds.due(by, until);
        let extends = due.iter().map(|reservation| {
            let state = &state;
            async move {
                let extended = state.deps.store.extend(reservation, until, now).await;
                if extended.is_err() {
                    // Due again at the next look.
                    state.deps.holds.expires(reservation, now);
                }
                extended
            }
        });
        let failed: Vec<_> = futures_util::future::join_all(extends)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        // One line a look, not one per reservation: in a store outage
        // every held reservation fails alike.
        if let Some(e) = failed.first() {
            tracing::warn!(failed = failed.len(), due = due.len(), error = %e,
                "could not extend held reservations; trying again at the next look");
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
        // Looked at every 60 s: due with 120 s or less left.
        let due = holds.due(now + secs(120), now + secs(180));
        assert_eq!(due, std::slice::from_ref(&soon));
        // At the next look, both have 120 s or less left.
        let due = holds.due(now + secs(60 + 120), now + secs(60 + 180));
        assert_eq!(due, [soon.clone(), later]);
        assert_eq!(holds.due(now + secs(120), now + secs(180)), []);
        holds.expires(&soon, now);
        assert_eq!(holds.due(now + secs(1), now + secs(181)), [soon]);
    }
}
