//! A circuit breaker in front of Redis (phases: admit and settle).
//!
//! A Redis that hangs costs every call the whole command timeout. After
//! `failures` outage errors in a row the breaker *opens*: calls fail at once
//! for `open_for`, without touching Redis. Then one call is let through as a
//! probe (and one more every `open_for` while probes fail); the first success
//! closes the breaker. Errors that are answers (a script error, a full
//! memory store) are not outages and never count.
//!
//! Time is tokio's clock, so tests can pause it.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// When the breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Outage errors in a row that open the breaker (at least 1).
    pub failures: u32,
    /// How long it stays open before a probe call is let through.
    pub open_for: Duration,
}

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    /// No call before `probe_at`; the first call at or after it is the probe
    /// and moves `probe_at` on by `open_for`, so a probe that never reports
    /// back (a cancelled call) cannot keep the breaker shut for good.
    Open {
        probe_at: Instant,
    },
}

/// The breaker; shared by every call of one store.
#[derive(Debug)]
pub(super) struct Breaker {
    settings: BreakerSettings,
    state: Mutex<State>,
}

impl Breaker {
    pub(super) fn new(settings: BreakerSettings) -> Self {
        Self {
            settings: BreakerSettings {
                failures: settings.failures.max(1),
                ..settings
            },
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    /// Whether a call may go to Redis now.
    pub(super) fn allow(&self) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { probe_at } => {
                let now = Instant::now();
                if now < probe_at {
                    return false;
                }
                *state = State::Open {
                    probe_at: now + self.settings.open_for,
                };
                true
            }
        }
    }

    /// True while calls are being refused (or only probes let through).
    pub(super) fn is_open(&self) -> bool {
        matches!(*self.lock(), State::Open { .. })
    }

    /// Redis answered.
    pub(super) fn succeeded(&self) {
        let mut state = self.lock();
        if matches!(*state, State::Open { .. }) {
            tracing::info!("redis answers again; closing the circuit breaker");
        }
        *state = State::Closed { failures: 0 };
    }

    /// Redis could not be reached or did not answer in time.
    pub(super) fn failed(&self) {
        let mut state = self.lock();
        match *state {
            State::Closed { failures } if failures + 1 < self.settings.failures => {
                *state = State::Closed {
                    failures: failures + 1,
                };
            }
            State::Closed { .. } => {
                tracing::warn!(
                    failures = self.settings.failures,
                    open_for_ms = self.settings.open_for.as_millis() as u64,
                    "redis failed too often in a row; not calling it for a while"
                );
                *state = State::Open {
                    probe_at: Instant::now() + self.settings.open_for,
                };
            }
            // A failed probe: `allow` already moved the next probe on.
            State::Open { .. } => {}
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned state is still valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            open_for: Duration::from_secs(2),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row() {
        let b = breaker();
        b.failed();
        b.failed();
        b.succeeded();
        b.failed();
        b.failed();
        assert!(b.allow(), "a success in between resets the count");
        b.failed();
        assert!(b.is_open());
        assert!(!b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn lets_one_probe_through_per_interval() {
        let b = breaker();
        for _ in 0..3 {
            b.failed();
        }
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert!(!b.allow());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.allow(), "the probe");
        assert!(!b.allow(), "only one probe");
        b.failed();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.allow(), "the next probe");
        b.succeeded();
        assert!(!b.is_open());
        assert!(b.allow() && b.allow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_does_not_keep_it_shut() {
        let b = breaker();
        for _ in 0..3 {
            b.failed();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.allow(), "probe, never reported");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.allow(), "another probe");
    }
}
