//! Where usage is counted (phases: admit and settle).
//!
//! A flagged request first *reserves* one unit: the store checks the day,
//! week and month counters plus the reservations still in flight against the
//! user's limits, and records a reservation, in one atomic step. When the
//! upstream's answer is known the reservation is *settled*: the reported
//! amount is added to the three counters (0 releases it). A reservation that
//! is never settled expires by itself after its TTL.
//!
//! Counters are keyed by the period's label (see [`crate::periods`]), so
//! nothing is ever reset; a counter is dropped once its period is over.
//!
//! Every method takes `now` from the caller's [`crate::clock::Clock`], so the
//! stores never read the system time themselves.

mod breaker;
mod health;
mod memory;
mod open;
mod redis;
mod resilient;
mod script;
mod threads;
mod topology;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use self::breaker::BreakerSettings;
pub use self::health::StoreHealth;
pub use self::memory::MemoryStore;
pub use self::open::{OpenStore, Opening, open_store, topology};
pub use self::redis::{RedisOptions, RedisStore};
pub use self::resilient::{OutagePolicy, ResilientSettings, ResilientStore};
pub use self::topology::Topology;
use crate::config::Limits;
use crate::periods::{Period, PeriodWindow, PeriodWindows};

/// Why a store call failed. The proxy then follows `store.on_store_error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered with an error.
    #[error("quota store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer within `store.command_timeout`.
    #[error("quota store did not answer within {0:?}")]
    Timeout(Duration),
    /// The memory store holds `store.memory_max_users` users already.
    #[error("memory store is full ({0} users); raise store.memory_max_users or use redis")]
    Full(usize),
    /// The store answered something this version does not understand.
    #[error("quota store answered unexpectedly: {0}")]
    Protocol(String),
    /// Redis answered, but refused a command of one user's call (a key of
    /// the wrong type, left by something else sharing the database): that
    /// user's call failed, the store is up. Not an outage: it never opens
    /// the circuit breaker, and a refused settle waits in the retry queue
    /// until the key is fixed.
    #[error("redis refused one user's command: {0}; check that user's keys (docs/redis.md)")]
    Refused(String),
    /// A settle the store gave up on and has already logged and counted as
    /// dropped (`reason="retry_queue"`: the Redis settle queue was full).
    #[error("quota store dropped the settle: {0}")]
    SettleDropped(String),
}

/// A request to check the limits and reserve one unit.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    /// The user whose counters are checked.
    pub user: String,
    /// The user's limits (0 = unlimited).
    pub limits: Limits,
    /// The day, week and month `now` falls in.
    pub windows: PeriodWindows,
    /// The current instant.
    pub now: DateTime<Utc>,
    /// How long the reservation lives without a settle.
    pub ttl: Duration,
}

/// A reservation's id: 128 random bits, written (in logs and to Redis) as
/// 32 lowercase hex digits, the form the ids had as UUIDs. A number, so
/// holding, comparing and hashing one allocates nothing (issue 21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReservationId(pub u128);

impl std::fmt::Display for ReservationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// One unit of quota held for a request in flight, carried from admit to
/// settle. Settling the same reservation twice counts once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Unique id, also the idempotency key of its settle.
    pub id: ReservationId,
    /// The user it counts against.
    pub user: String,
    /// The periods it was reserved in; its usage counts in these.
    pub windows: PeriodWindows,
    /// When it expires if never settled or extended.
    pub expires_at: DateTime<Utc>,
    /// Whether the store that made it gave the keys it counts in their
    /// expiry (Redis's reserve does); if not, its settle does. `false`
    /// when unknown: a reservation made elsewhere (the memory store, the
    /// `local` fallback), or never made.
    pub keys_expire: bool,
}

impl Reservation {
    /// A new reservation id, from the thread's CSPRNG.
    pub fn new_id() -> ReservationId {
        use rand::RngExt as _;
        ReservationId(rand::rng().random::<u128>())
    }
}

/// Used plus reserved units per period, in [`Period::ALL`] order, as the store
/// saw them when it decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodCounts(pub [u64; 3]);

impl PeriodCounts {
    /// The count of one period.
    pub fn get(&self, period: Period) -> u64 {
        self.0[period as usize]
    }
}

/// The store's answer to a [`ReserveRequest`].
#[allow(clippy::large_enum_variant)] // made once per flagged request
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Every limit had room; one unit is now held.
    Reserved {
        /// The unit held; settle it when the upstream answers.
        reservation: Reservation,
        /// Used + reserved per period, including this reservation.
        counts: PeriodCounts,
    },
    /// A limit is reached; nothing was reserved.
    Exceeded {
        /// The first exceeded period, daily before weekly before monthly.
        period: Period,
        /// Used + reserved per period.
        counts: PeriodCounts,
    },
}

/// What one user has used in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeriodUsage {
    /// Settled usage.
    pub used: u64,
    /// Reservations in flight and not expired.
    pub reserved: u64,
}

/// A quota store: the memory store or Redis.
#[async_trait]
pub trait QuotaStore: Send + Sync + 'static {
    /// Atomically checks all three limits, counting reservations in flight,
    /// and reserves one unit when every limited period has room.
    async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError>;

    /// Turns a reservation into `amount` units of usage in each of its
    /// periods (0 = release), and removes it. Idempotent by reservation id:
    /// the same settle sent again (a retry, a repeat after a lost
    /// connection) changes nothing; the proxy settles each reservation
    /// once, with one amount. A reservation that
    /// expired or was never made still has its amount counted once, which is
    /// how usage reported for an unflagged request is recorded.
    async fn settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Moves a live reservation's expiry to `until` (for responses that
    /// stream longer than the reservation TTL). Does nothing if it is gone.
    async fn extend(
        &self,
        reservation: &Reservation,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Usage and live reservations of `user` in each of `windows`.
    async fn usage(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> Result<[PeriodUsage; 3], StoreError>;

    /// Adds `delta` (may be negative; the result never drops below 0) to the
    /// settled usage of `user` in `window`. Returns the new value.
    async fn adjust(
        &self,
        user: &str,
        window: &PeriodWindow,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// What [`reserve`](Self::reserve) would answer, when the store can
    /// answer without waiting (the memory store: a lock, no I/O), so the
    /// caller skips its boxed future; `None` when it must wait, and the
    /// caller calls `reserve`.
    fn reserve_now(&self, _request: &ReserveRequest) -> Option<Result<Admission, StoreError>> {
        None
    }

    /// What [`settle`](Self::settle) would answer, when the store can
    /// answer without waiting (see [`reserve_now`](Self::reserve_now)).
    fn settle_now(
        &self,
        _reservation: &Reservation,
        _amount: u64,
        _now: DateTime<Utc>,
    ) -> Option<Result<(), StoreError>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_id_is_written_as_its_32_hex_digits() {
        for n in [
            0,
            1,
            0xabc,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
            u128::MAX,
        ] {
            let id = ReservationId(n);
            let text = format!("{n:032x}");
            assert_eq!(id.to_string(), text);
            // Written to Redis the same way, digit by digit.
            let arg = ::redis::ToRedisArgs::to_redis_args(&id);
            assert_eq!(arg, [text.as_bytes()]);
        }
        assert_ne!(Reservation::new_id(), Reservation::new_id());
    }
}
