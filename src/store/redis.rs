//! The Redis quota store (phases: admit and settle): usage shared by every
//! replica of the proxy.
//!
//! Each operation is one Lua script (`*.lua` next to this file), sent with
//! `EVALSHA` in one round trip and so atomic. The scripts are loaded when
//! connecting; after `SCRIPT FLUSH` or a Redis restart the `redis` crate sees
//! `NOSCRIPT`, loads the script again and retries, so only that call pays
//! extra round trips.
//!
//! # Keys
//!
//! Every key of one user carries the user id as a hash tag, so all of them
//! sit in one cluster slot and a script may touch them together; every key a
//! script touches is passed in `KEYS`. User ids are used verbatim: a `}` in
//! one only moves which slot that user's keys share, and cannot make two
//! users' keys equal, since labels never contain `}`. With the prefix
//! `quota:` and user `42`:
//!
//! | key                      | type   | holds                                   | TTL, set on every write          |
//! |--------------------------|--------|-----------------------------------------|----------------------------------|
//! | `quota:{42}:d2026-11-28` | STRING | settled usage of that day               | `max(period end - now, 0)` + 1 h |
//! | `quota:{42}:w2026-11-23` | STRING | settled usage of the week starting then | `max(period end - now, 0)` + 1 h |
//! | `quota:{42}:m2026-11`    | STRING | settled usage of that month             | `max(period end - now, 0)` + 1 h |
//! | `quota:{42}:res`         | ZSET   | live reservation id → deadline (ms)     | newest deadline - now + 1 min    |
//! | `quota:{42}:done`        | ZSET   | settled id → settle time (ms)           | newest settle time - now + 24 h  |
//!
//! The hour of grace lets usage reported just after a period ended still
//! count in that period. Expired reservations and forgotten settled ids are
//! pruned inside the scripts; `done` keeps at most 4096 ids per user.
//!
//! # Time
//!
//! `now` comes from the caller's clock and is passed to every script; TTLs are
//! relative (`PEXPIRE`), never absolute, so a caller clock far from Redis's
//! (a test's manual clock, years ahead) still gets keys that live as long as
//! the period has left.
//!
//! # Failures
//!
//! Every call is bounded by `command_timeout` ([`StoreError::Timeout`]); a
//! refused or dropped connection is [`StoreError::Unavailable`] at once, and
//! the [`ConnectionManager`] reconnects by itself on a later call.
//! [`RedisStore::connect`] fails fast when Redis cannot be reached at startup,
//! naming the address, so the binary can exit or retry rather than start
//! with a store that will fail every request.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, RedisError, Script, ScriptInvocation};

use super::memory::{COUNTER_GRACE, SETTLED_MAX, SETTLED_MEMORY, deadline};
use super::{
    Admission, PeriodCounts, PeriodUsage, QuotaStore, Reservation, ReserveRequest, StoreError,
};
use crate::periods::{Period, PeriodWindow, PeriodWindows};

const RESERVE: &str = include_str!("reserve.lua");
const SETTLE: &str = include_str!("settle.lua");
const EXTEND: &str = include_str!("extend.lua");
const USAGE: &str = include_str!("usage.lua");
const ADJUST: &str = include_str!("adjust.lua");

/// How long the reservation set outlives its newest deadline. Scripts prune
/// expired members themselves; the TTL only reclaims the key of a user who
/// stopped calling.
const RESERVATIONS_MARGIN: TimeDelta = TimeDelta::minutes(1);

/// How often a failed connection attempt is retried before the call waiting
/// for it fails: once, so an outage answers quickly, and each later call
/// starts a fresh attempt anyway.
const CONNECT_RETRIES: usize = 1;

/// Pause before the retry of a failed connection attempt.
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(20);

/// The shared quota store in Redis.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    command_timeout: Duration,
    reserve: Script,
    settle: Script,
    extend: Script,
    usage: Script,
    adjust: Script,
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
    /// Connects to `url`, checks that Redis answers and loads the scripts.
    /// (`rediss://` needs one of the `redis` crate's TLS features, which this
    /// build does not enable; such a URL fails here with the crate's message.)
    ///
    /// Fails with [`StoreError::Unavailable`] naming the address (never the
    /// password) when Redis cannot be reached: after a refused connection at
    /// once, otherwise within three times `command_timeout`. Every later call
    /// is bounded by `command_timeout`. Keys start with `key_prefix`.
    pub async fn connect(
        url: &str,
        key_prefix: &str,
        command_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let shown = redacted(url);
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("store.url {shown}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(command_timeout))
            .set_response_timeout(Some(command_timeout))
            .set_number_of_retries(CONNECT_RETRIES)
            .set_min_delay(CONNECT_RETRY_DELAY)
            .set_max_delay(CONNECT_RETRY_DELAY);
        let budget = command_timeout.saturating_mul(3);
        let connecting = async {
            let mut connection = ConnectionManager::new_with_config(client, config).await?;
            // Loading every script now means the first reserve is one
            // EVALSHA, and a script Redis rejects fails at startup.
            let mut load = redis::pipe();
            for code in [RESERVE, SETTLE, EXTEND, USAGE, ADJUST] {
                load.cmd("SCRIPT").arg("LOAD").arg(code);
            }
            load.query_async::<Vec<String>>(&mut connection).await?;
            Ok::<_, RedisError>(connection)
        };
        let connection = match tokio::time::timeout(budget, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot use redis at {shown}: {e}"
                )));
            }
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "redis at {shown} did not answer within {budget:?}"
                )));
            }
        };
        Ok(Self {
            connection,
            prefix: key_prefix.to_owned(),
            command_timeout,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            extend: Script::new(EXTEND),
            usage: Script::new(USAGE),
            adjust: Script::new(ADJUST),
        })
    }

    fn key(&self, user: &str, name: &str) -> String {
        format!("{}{{{user}}}:{name}", self.prefix)
    }

    fn counter_keys(&self, user: &str, windows: &PeriodWindows) -> [String; 3] {
        windows.0.each_ref().map(|w| self.key(user, &w.label))
    }

    async fn run<T: FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        self.bounded(invocation.invoke_async(&mut connection)).await
    }

    /// Waits at most `command_timeout` for `call`, whatever the connection
    /// manager is doing (a reconnect may be in progress).
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

/// `url` without its user and password, for messages and logs. Everything
/// up to the last `@` goes, so a password with an unescaped `/` or `@` does
/// not leak either.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// What a counter written at `now` gets as TTL: the rest of its period plus
/// the grace, and at least the grace for a period that already ended.
fn counter_ttl_ms(window: &PeriodWindow, now: DateTime<Utc>) -> i64 {
    (window.end - now).num_milliseconds().max(0) + COUNTER_GRACE.num_milliseconds()
}

fn count(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Protocol(format!("negative count {value} from a script")))
}

#[async_trait]
impl QuotaStore for RedisStore {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
        let user = &request.user;
        let id = Reservation::new_id();
        let expires_at = deadline(request.now, request.ttl);
        let mut call = self.reserve.prepare_invoke();
        call.key(&self.counter_keys(user, &request.windows))
            .key(self.key(user, "res"))
            .arg(ms(request.now))
            .arg(&id)
            .arg(ms(expires_at))
            .arg(RESERVATIONS_MARGIN.num_milliseconds());
        for period in Period::ALL {
            call.arg(request.limits.of(period));
        }
        let answer: Vec<i64> = self.run(&call).await?;
        let &[status, period, day, week, month] = answer.as_slice() else {
            return Err(StoreError::Protocol(format!(
                "reserve script answered {answer:?}"
            )));
        };
        let counts = PeriodCounts([count(day)?, count(week)?, count(month)?]);
        match (status, period) {
            (1, _) => Ok(Admission::Reserved {
                reservation: Reservation {
                    id,
                    user: user.clone(),
                    windows: request.windows.clone(),
                    expires_at,
                },
                counts,
            }),
            (0, 1..=3) => Ok(Admission::Exceeded {
                period: Period::ALL[(period - 1) as usize],
                counts,
            }),
            _ => Err(StoreError::Protocol(format!(
                "reserve script answered {answer:?}"
            ))),
        }
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let user = &reservation.user;
        let mut call = self.settle.prepare_invoke();
        call.key(&self.counter_keys(user, &reservation.windows))
            .key(self.key(user, "res"))
            .key(self.key(user, "done"))
            .arg(ms(now))
            .arg(&reservation.id)
            // Redis integers are signed 64-bit.
            .arg(amount.min(i64::MAX as u64));
        for window in reservation.windows.iter() {
            call.arg(counter_ttl_ms(window, now));
        }
        call.arg(SETTLED_MEMORY.num_milliseconds()).arg(SETTLED_MAX);
        // 1 when counted, 0 for a repeated settle: both are success.
        let _: i64 = self.run(&call).await?;
        Ok(())
    }

    async fn extend(
        &self,
        reservation: &Reservation,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut call = self.extend.prepare_invoke();
        call.key(self.key(&reservation.user, "res"))
            .arg(ms(now))
            .arg(&reservation.id)
            .arg(ms(until))
            .arg(RESERVATIONS_MARGIN.num_milliseconds());
        // 0 means the reservation was gone, which is not an error.
        let _: i64 = self.run(&call).await?;
        Ok(())
    }

    async fn usage(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> Result<[PeriodUsage; 3], StoreError> {
        let mut call = self.usage.prepare_invoke();
        call.key(&self.counter_keys(user, windows))
            .key(self.key(user, "res"))
            .arg(ms(now));
        let answer: Vec<i64> = self.run(&call).await?;
        let &[day, week, month, live] = answer.as_slice() else {
            return Err(StoreError::Protocol(format!(
                "usage script answered {answer:?}"
            )));
        };
        let reserved = count(live)?;
        Ok([
            PeriodUsage {
                used: count(day)?,
                reserved,
            },
            PeriodUsage {
                used: count(week)?,
                reserved,
            },
            PeriodUsage {
                used: count(month)?,
                reserved,
            },
        ])
    }

    async fn adjust(
        &self,
        user: &str,
        window: &PeriodWindow,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut call = self.adjust.prepare_invoke();
        call.key(self.key(user, &window.label))
            .arg(delta)
            .arg(counter_ttl_ms(window, now));
        count(self.run(&call).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        let ping = redis::cmd("PING");
        self.bounded(ping.query_async::<String>(&mut connection))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redacted("redis://:hunter2@cache:6379/0"),
            "redis://***@cache:6379/0"
        );
        assert_eq!(
            redacted("rediss://user:p@ss@cache/1"),
            "rediss://***@cache/1"
        );
        assert_eq!(redacted("redis://:pa/ss@cache/0"), "redis://***@cache/0");
        assert_eq!(redacted("redis://cache:6379/0"), "redis://cache:6379/0");
        assert_eq!(redacted("cache:6379"), "cache:6379");
    }

    #[test]
    fn counter_ttl_is_rest_of_period_plus_grace() {
        let calendar = crate::periods::Calendar::new(chrono_tz::UTC, chrono::Weekday::Mon);
        let now = DateTime::parse_from_rfc3339("2031-05-14T22:00:00Z")
            .expect("test instant")
            .with_timezone(&Utc);
        let day = calendar.window(Period::Daily, now);
        assert_eq!(counter_ttl_ms(&day, now), 3 * 3_600_000);
        // Written after its period ended: only the grace.
        let later = now + TimeDelta::hours(5);
        assert_eq!(counter_ttl_ms(&day, later), 3_600_000);
    }
}
