//! The Redis quota store (phases: admit and settle): usage shared by every
//! replica of the proxy.
//!
//! A reserve and a settle are plain commands, sent as one pipeline in one
//! round trip (`reserve.rs`, `settle.rs`); reserves (settles) that wait
//! while one is under way go out together in the next pipeline (`batch.rs`;
//! in a cluster each call holds one user's commands). The rare operations
//! are Lua scripts (`extend.lua`, `adjust.lua`, and `settle_many.lua` for
//! a settle of more than one unit), loaded when connecting; after `SCRIPT
//! FLUSH` or a Redis restart a script call sees `NOSCRIPT` and is sent once
//! more with the script's text.
//!
//! # Why plain commands
//!
//! Each user holds one sorted set of *units*: a reservation's id, scored
//! `deadline - 2^52` (ms) while live and with minus an instant of its
//! periods (its day's start) once counted (`commands.rs`). A check adds
//! its unit, then counts each period with one `ZCOUNT` from the live
//! units' bound to minus the period's start, so one range holds the units
//! counted in the period and those in flight, and neither the expired nor the earlier
//! periods' ones: race-free without a script, since of `limit + 1`
//! overlapping checks the last to count sees all of them (docs/redis.md,
//! *How a check is race-free without a script*). A settle marks the unit
//! counted or removes it, idempotent with no list of settled ids. Lua cost
//! Redis about 18 µs per flagged request on a quiet Redis here, a set per
//! period 5.3 µs, this 3.4 (docs/benchmark-history.md, changes 40 and 41).
//!
//! # Keys
//!
//! Every key of one user carries the user id as a hash tag, so all of them
//! sit in one cluster slot and one call may touch them together. User ids
//! are used verbatim: a `}` or `{` in one only moves which slot that
//! user's keys share, and cannot make two users' keys equal, since labels
//! never contain `}`. One exception: an id starting with `}` (or `\x01`)
//! is written after a `\x01` (`{\x01}x}`), since `{}x}` is an empty tag,
//! for which Redis hashes each whole key and one user's keys would land in
//! different slots (`tests/it/store.rs`,
//! `odd_user_ids_keep_their_keys_together`, on the 3-master cluster). With
//! the prefix `quota:` and user `42`:
//!
//! | key                      | type   | holds                                                        | TTL                              |
//! |--------------------------|--------|--------------------------------------------------------------|----------------------------------|
//! | `quota:{42}:units`       | ZSET   | the user's units: id → `deadline - 2^52` while live, minus its day's start (ms) once counted | the last of the periods' ends - now + 1 h (at least the deadline + 1 min) |
//! | `quota:{42}:d2026-11-28` | STRING | usage beyond the units: adjustments, the units past the first of a settle of several, usage counted by versions before the units | the period's end - now + 1 h |
//!
//! (and the same counter for the week, `w2026-11-23`, and the month,
//! `m2026-11`). Usage of a period is its counted units plus its counter;
//! live units are its reservations in flight (each counts in every
//! period). The set's TTL is set by every reserve (so a unit never settled
//! still goes with its set), and made at least what the periods need by a
//! settle of a reservation Redis did not make
//! ([`Reservation::keys_expire`]) or of one past its deadline (its set
//! may have gone, to be made anew); a counter's when it is written. The
//! hour of grace lets usage reported just after a period ended still count
//! in that period. A unit that is never settled stops counting at its
//! deadline; units that count no more leave the set with one settle in 8
//! (`settle.rs`), or with the set.
//!
//! Upgrading from the earlier layouts (`res` and `done` keys; a set per
//! period): docs/redis.md.
//!
//! # Memory
//!
//! Measured on Redis 7.0 (jemalloc, 64-bit; `tests/it/redis_scale.rs`,
//! `memory_per_active_user_is_measured`): a user who made 3 images today
//! costs **about 340 bytes** (`INFO used_memory` delta over 2 000 such
//! users, key and expiry overhead included; `MEMORY USAGE` of the set
//! about 230 B). A unit costs about 50 B while the set holds at most 128
//! (a listpack), about 140 B beyond (a skiplist); the set holds one unit
//! per image of the week and month, until they end.
//!
//! # Time
//!
//! `now` comes from the caller's clock and is passed with every call; TTLs
//! are relative (`PEXPIRE`), never absolute, so a caller clock far from
//! Redis's (a test's manual clock, years ahead) still gets keys that live
//! as long as the period has left.
//!
//! # Failures
//!
//! Every call is bounded by `command_timeout` ([`StoreError::Timeout`]).
//! A call whose connection turns out to be gone (closed or reset by Redis,
//! `CLIENT KILL`, a restart, a failover that demoted the node) is sent once
//! more on a fresh connection within that same bound, so the first call on
//! each stale connection does not fail; only a second failure, a refused
//! connection on both attempts, or a timeout is [`StoreError::Unavailable`]
//! or [`StoreError::Timeout`] and follows `on_store_error`. That repeat is
//! safe because every call sent twice is idempotent: a reserve's `ZADD NX`
//! adds its unit once, a settle's `ZADD`/`ZREM` and `settle_many.lua` act
//! on an id once (the cleaning `ZREMRANGEBYSCORE`s remove what no longer
//! counts), `extend.lua` sets a deadline, a usage read reads.
//! `adjust.lua` has no id and is never sent twice. (A timeout is not
//! repeated: the call may still be running.) A command Redis refuses
//! (`WRONGTYPE`: a key of the wrong type) fails that user's item alone
//! ([`StoreError::Refused`]).
//!
//! [`RedisStore::lazy`] makes the store without reaching Redis, so the
//! proxy starts while Redis is down; [`RedisStore::open`] also connects and
//! loads the scripts, and fails fast naming the address when it cannot.
//! What the proxy does while Redis is away (retrying settles, the circuit
//! breaker, the `local` policy) lives in [`super::ResilientStore`].
//!
//! # Scripts
//!
//! The scripts are loaded at startup (on every node of a cluster) and run
//! with `EVALSHA`, routed by their first key (`settle_many.lua`, in a
//! pipeline, goes as `EVAL`). A node that forgot them (a restart, a
//! failover to a replica that never loaded them, `SCRIPT FLUSH`) answers
//! `NOSCRIPT`; the call is then sent once more as `EVAL` with the script's
//! text, to the same node, which also caches it again. (The `redis`
//! crate's own reload sends `SCRIPT LOAD` to *every* node of a cluster,
//! which fails while any one node is down, even for keys on a healthy
//! node.)

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::{ErrorKind, FromRedisValue, RedisError, ServerErrorKind, Value};
use thread_local::ThreadLocal;

use super::memory::{COUNTER_GRACE, deadline};
use super::script::{Call, LuaScript};
use super::threads::ThreadConnections;
use super::topology::{Connection, Topology, connection_gone};
use super::{Admission, PeriodUsage, QuotaStore, Reservation, ReserveRequest, StoreError};
use crate::periods::{PeriodWindow, PeriodWindows};
use batch::Batcher;
use commands::{Commands, Exclusive, LIVE_CEILING, UNITS, count, counted_from, live_score};
use reserve::PendingReserve;
use settle::PendingSettle;

mod batch;
mod clock_skew;
mod commands;
mod eviction;
mod reserve;
mod settle;
mod usage;

const EXTEND: &str = include_str!("extend.lua");
const ADJUST: &str = include_str!("adjust.lua");

/// How to reach Redis and how long to wait for it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// One server, a cluster or Sentinel.
    pub topology: Topology,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Longest wait for one call, and for each connection attempt.
    pub command_timeout: Duration,
    /// PEM certificate(s) trusted for `rediss://` instead of the system's
    /// roots (a private CA).
    pub root_cert: Option<Vec<u8>>,
}

/// The shared quota store in Redis.
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    /// Each serving thread's own connection, when [`Self::per_thread_connections`].
    threads: std::sync::Arc<ThreadConnections>,
    per_thread: bool,
    prefix: std::sync::Arc<str>,
    command_timeout: Duration,
    scripts: std::sync::Arc<Scripts>,
    /// Each thread's reserves waiting for its call under way (`batch.rs`):
    /// per thread, as its connection is (`threads.rs`), so a batch is sent
    /// and answered on the thread its callers run on, with no cross-thread
    /// wake-up.
    reserves: std::sync::Arc<ThreadLocal<std::sync::Arc<Batcher<PendingReserve, Admission>>>>,
    /// Each thread's settles waiting for its call under way.
    settles: std::sync::Arc<ThreadLocal<std::sync::Arc<Batcher<PendingSettle, ()>>>>,
    /// Reserves and settles go out in batches: not in a cluster, where the
    /// keys of one call must share a slot and each is a call of its own.
    batch_calls: bool,
    /// Where Redis is, for messages (no password).
    shown: std::sync::Arc<str>,
    /// Longest wait of [`RedisStore::prepare`].
    budget: Duration,
}

struct Scripts {
    extend: LuaScript,
    adjust: LuaScript,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("command_timeout", &self.command_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the one server at `url` (`redis://` or `rediss://`, the
    /// latter checked against the system's trusted roots); see
    /// [`RedisStore::open`].
    pub async fn connect(
        url: &str,
        key_prefix: &str,
        command_timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::open(&RedisOptions {
            topology: Topology::Single {
                url: url.to_owned(),
            },
            key_prefix: key_prefix.to_owned(),
            command_timeout,
            root_cert: None,
        })
        .await
    }

    /// Connects in any topology, checks that Redis answers and loads the
    /// scripts (on every node of a cluster): [`RedisStore::lazy`] then
    /// [`RedisStore::prepare`].
    ///
    /// Fails with [`StoreError::Unavailable`] naming the address (never the
    /// password) when Redis cannot be reached: after a refused connection at
    /// once, otherwise within three times `command_timeout` (ten times for
    /// Sentinel, which takes a lookup first). Every later call is bounded by
    /// `command_timeout`.
    pub async fn open(options: &RedisOptions) -> Result<Self, StoreError> {
        let store = Self::lazy(options)?;
        store.prepare().await?;
        Ok(store)
    }

    /// The store without talking to Redis yet: the first call connects, and
    /// every call after a failed one tries again, so the proxy can start and
    /// serve while Redis is down. Fails only on settings that can never
    /// work (a URL that does not parse). Scripts are loaded by
    /// [`RedisStore::prepare`], or by the first call that needs each one.
    pub fn lazy(options: &RedisOptions) -> Result<Self, StoreError> {
        let shown = options.topology.describe();
        let timeout = options.command_timeout;
        let connection = Connection::lazy(&options.topology, options.root_cert.as_deref(), timeout)
            .map_err(|e| StoreError::Unavailable(format!("cannot use redis at {shown}: {e}")))?;
        Ok(Self {
            connection,
            threads: std::sync::Arc::new(ThreadConnections::new(
                options.topology.clone(),
                options.root_cert.clone(),
                timeout,
            )),
            per_thread: false,
            prefix: std::sync::Arc::from(options.key_prefix.as_str()),
            command_timeout: timeout,
            scripts: std::sync::Arc::new(Scripts {
                extend: LuaScript::new(EXTEND),
                adjust: LuaScript::new(ADJUST),
            }),
            reserves: std::sync::Arc::default(),
            settles: std::sync::Arc::default(),
            batch_calls: !matches!(options.topology, Topology::Cluster { .. }),
            shown: std::sync::Arc::from(shown),
            budget: match options.topology {
                Topology::Sentinel { .. } => timeout.saturating_mul(10),
                _ => timeout.saturating_mul(3),
            },
        })
    }

    /// Connects now and loads every script (on every node of a cluster), so
    /// the first reserve is one `EVALSHA` and a script Redis rejects shows
    /// at once. Fails as [`RedisStore::open`] does; the store stays usable
    /// either way.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        let shown = &self.shown;
        let budget = self.budget;
        let scripts = &self.scripts;
        let connecting = async {
            self.connection.connect().await?;
            for script in [&scripts.extend, &scripts.adjust] {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(script.code);
                self.connection.query::<Value>(&load).await?;
            }
            eviction::warn_if_evicting(&self.connection, &self.shown).await;
            clock_skew::warn_if_skewed(&self.connection, &self.shown).await;
            Ok::<_, RedisError>(())
        };
        match tokio::time::timeout(budget, connecting).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "cannot use redis at {shown}: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "redis at {shown} did not answer within {budget:?}"
            ))),
        }
    }

    /// Gives each thread that runs a current-thread tokio runtime a
    /// connection of its own, opened in the background on its first call
    /// (until then it shares the first). What the binary does: it serves on
    /// one such runtime per core, and a shared connection would cost two
    /// cross-thread wake-ups per call (`threads.rs`).
    pub fn per_thread_connections(mut self) -> Self {
        self.per_thread = true;
        self
    }

    /// The connection for a call from this thread.
    fn connection(&self) -> Connection {
        if self.per_thread
            && let Some(own) = self.threads.get()
        {
            return own;
        }
        self.connection.clone()
    }

    /// Sends `commands` as one pipeline (the repeat on a lost connection
    /// is safe: every pipeline the store sends is idempotent).
    async fn pipeline(&self, commands: &Commands<'_>) -> Result<Vec<Value>, StoreError> {
        let pipe = commands.pipeline();
        self.once_more(Again::IfConnectionGone, |connection| async move {
            connection.query_pipeline(pipe).await
        })
        .await
    }

    /// Sends `settle` through the calling thread's settle batcher.
    async fn send_settle(&self, settle: PendingSettle) -> Result<(), StoreError> {
        let new = || Batcher::new("settle");
        self.batched(&self.settles, new, settle, |store, batch| async move {
            store.send_settles(batch).await
        })
        .await
    }

    /// Runs one script: `EVALSHA`, and `EVAL` on the same node if it forgot
    /// the script. A call whose connection turns out to be gone is sent once
    /// more on a fresh one ([`Self::once_more`]); only `again = false`
    /// calls (an adjustment, which has no id to make a repeat harmless)
    /// fail at once.
    async fn run<T: FromRedisValue>(&self, call: &Call<'_>, again: Again) -> Result<T, StoreError> {
        self.once_more(again, |connection| async move {
            match connection.query(call.evalsha()).await {
                Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    tracing::info!(
                        "redis had lost the quota scripts (restart, failover or SCRIPT FLUSH); \
                         sending the script itself"
                    );
                    connection.query(&call.eval()).await
                }
                answer => answer,
            }
        })
        .await
    }

    /// Sends a call (`send`, given the connection to use) and, when it fails
    /// because its connection is gone ([`connection_gone`]: reset, closed,
    /// never re-established after a restart, demoted by a failover), sends
    /// it once more: the first failure made the connection reconnect (a
    /// single server's manager starts at once; Sentinel is asked again; the
    /// cluster client refreshes), so the second goes out on a fresh one.
    /// Both attempts together take at most `command_timeout`; only a second
    /// failure, or a timeout, is the caller's error and so follows
    /// `on_store_error`.
    ///
    /// Sending twice is safe only because every call it is used for is
    /// idempotent: a reserve carries its id and a repeat's `ZADD NX` adds
    /// nothing, a settle counts its id once, an extend sets a deadline,
    /// usage and ping only read.
    async fn once_more<T, F, Fut>(&self, again: Again, send: F) -> Result<T, StoreError>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let connection = self.connection();
        self.bounded(async {
            match send(connection.clone()).await {
                Err(e) if again == Again::IfConnectionGone && connection_gone(&e) => {
                    tracing::info!(error = %e,
                        "redis connection lost; sending the call once more on a fresh one");
                    send(connection).await
                }
                answer => answer,
            }
        })
        .await
    }

    /// Waits at most `command_timeout` for `call`, whatever the connection
    /// is doing (a reconnect or a Sentinel lookup may be in progress).
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.command_timeout, call).await {
            Ok(answer) => answer.map_err(|e| self.store_error(e)),
            Err(_) => Err(StoreError::Timeout(self.command_timeout)),
        }
    }

    fn store_error(&self, e: RedisError) -> StoreError {
        if e.is_timeout() {
            StoreError::Timeout(self.command_timeout)
        } else if matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType) {
            StoreError::Protocol(e.to_string())
        } else {
            StoreError::Unavailable(e.to_string())
        }
    }
}

/// Whether a call may be sent a second time after its connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Again {
    /// Once more on a fresh connection: the call is idempotent.
    IfConnectionGone,
    /// Never: a repeat could count twice.
    Never,
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// What a counter written at `now` gets as TTL: the rest of its period plus
/// the grace, and at least the grace for a period that already ended.
fn counter_ttl_ms(window: &PeriodWindow, now: DateTime<Utc>) -> i64 {
    (window.end - now).num_milliseconds().max(0) + COUNTER_GRACE.num_milliseconds()
}

impl RedisStore {
    /// Sends `item` with `send` (one script call for a batch), through the
    /// calling thread's batcher in `batchers` (made by `new` on its first
    /// use), or alone in a cluster.
    async fn batched<T, A, F, Fut>(
        &self,
        batchers: &ThreadLocal<std::sync::Arc<Batcher<T, A>>>,
        new: impl FnOnce() -> Batcher<T, A>,
        item: T,
        send: F,
    ) -> Result<A, StoreError>
    where
        T: Send + 'static,
        A: Send + 'static,
        F: Fn(RedisStore, Vec<T>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<A, StoreError>>> + Send + 'static,
    {
        if !self.batch_calls {
            let mut answers = send(self.clone(), vec![item]).await;
            return answers
                .pop()
                .unwrap_or_else(|| Err(StoreError::Protocol("redis answered nothing".to_owned())));
        }
        let batcher = batchers.get_or(|| std::sync::Arc::new(new()));
        let store = self.clone();
        batcher
            .submit(item, move |batch| send(store.clone(), batch))
            .await
    }
}

#[async_trait]
impl QuotaStore for RedisStore {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
        let pending = PendingReserve {
            user: request.user.clone(),
            limits: request.limits,
            windows: request.windows,
            id: Reservation::new_id(),
            now: request.now,
            expires_at: deadline(request.now, request.ttl),
        };
        // A reserve that queues behind a call still answers within
        // `command_timeout`, and is not sent once it gave up (`batch.rs`).
        let new = || Batcher::bounded("reserve", self.command_timeout);
        self.batched(&self.reserves, new, pending, |store, batch| async move {
            store.send_reserves(batch).await
        })
        .await
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // The reserve gave the set its expiry, and while the unit is live
        // the set holds it; a reservation made elsewhere (or never) did
        // not, and past the deadline the set may have gone (its units
        // cleaned away), to be made anew here.
        let expire = !reservation.keys_expire || now >= reservation.expires_at;
        self.send_settle(PendingSettle {
            user: reservation.user.clone(),
            windows: reservation.windows,
            id: reservation.id,
            amount,
            now,
            expire,
        })
        .await
    }

    async fn extend(
        &self,
        reservation: &Reservation,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut call = Call::new(&self.scripts.extend, 1);
        call.key(&self.prefix, &reservation.user, &[UNITS]);
        call.arg(live_score(ms(now)))
            .arg(reservation.id)
            .arg(live_score(ms(until)))
            .arg(LIVE_CEILING)
            .arg(ms(until) - ms(now) + reserve::UNITS_MARGIN_MS);
        // 0 means the reservation was gone, which is not an error.
        let _: i64 = self.run(&call, Again::IfConnectionGone).await?;
        Ok(())
    }

    async fn usage(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> Result<[PeriodUsage; 3], StoreError> {
        self.read_usage(user, windows, now).await
    }

    async fn adjust(
        &self,
        user: &str,
        window: &PeriodWindow,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut call = Call::new(&self.scripts.adjust, 2);
        let label = window.label.text();
        call.key(&self.prefix, user, &[UNITS])
            .key(&self.prefix, user, &[label.as_str()])
            .arg(delta)
            .arg(counter_ttl_ms(window, now))
            .arg(Exclusive(counted_from(ms(window.end))))
            .arg(counted_from(ms(window.start)));
        // Never sent twice: an adjustment has no id, so a repeat of one that
        // reached Redis would count twice. The caller (the admin API) gets
        // the error and can read the usage before trying again.
        count(self.run(&call, Again::Never).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A cluster sends it to every master and answers once all did.
        let ping = &redis::cmd("PING");
        let shared = &self.connection;
        self.once_more(Again::IfConnectionGone, |_| async move {
            shared.query::<Value>(ping).await
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::periods::Period;

    #[test]
    fn counter_ttl_is_rest_of_period_plus_grace() {
        let calendar = crate::periods::Calendar::new(chrono_tz::UTC, chrono::Weekday::Mon);
        let now = DateTime::parse_from_rfc3339("2031-05-14T22:00:00Z")
            .expect("test instant")
            .with_timezone(&Utc);
        let day = calendar.window(Period::Daily, now);
        assert_eq!(counter_ttl_ms(&day, now), 3 * 3_600_000);
        // Written after its period ended: only the grace.
        let later = now + chrono::TimeDelta::hours(5);
        assert_eq!(counter_ttl_ms(&day, later), 3_600_000);
    }
}
