//! Where Redis is (phases: startup, then every store call): one server, a
//! Redis Cluster, or a master found through Sentinel, and the connection each
//! one gets.
//!
//! Every topology uses *multiplexed* connections: many requests in flight on
//! one socket per server, answers matched in order. Each store call is one
//! small `EVALSHA`, and Redis runs scripts one at a time anyway, so one
//! pipelined socket per server is enough: measured with 64 concurrent
//! callers (debug build, 2 shared cores), one connection did 8 600–11 400
//! reserves/s and a round-robin pool of four 4 300–9 100/s.
//!
//! - **Single server** (`redis://` or `rediss://`): the `redis` crate's
//!   `ConnectionManager`, which reconnects by itself.
//! - **Cluster**: the crate's cluster client: one multiplexed connection per
//!   node, commands routed by the slot of their first key, `MOVED`/`ASK`
//!   followed, and the slot map refreshed after a failover.
//! - **Sentinel**: Sentinel is asked for the master, which gets one
//!   multiplexed connection. When that connection fails, or the node answers
//!   `READONLY` (it was demoted by a failover), the connection is dropped and
//!   the next call asks Sentinel again, so the store follows a failover by
//!   itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, FromRedisValue, IntoConnectionInfo, Pipeline,
    RedisError, RedisResult, ServerErrorKind, TlsCertificates, TlsMode, Value,
};

/// How often a failed connection attempt is retried before the call waiting
/// for it fails: once, so an outage answers quickly, and each later call
/// starts a fresh attempt anyway.
const CONNECT_RETRIES: usize = 1;

/// Pause before the retry of a failed connection attempt.
const CONNECT_RETRY_DELAY: Duration = Duration::from_millis(20);

/// How often the cluster client retries a command that met a moved slot, a
/// `TRYAGAIN` or a lost node, within the command timeout.
const CLUSTER_RETRIES: u32 = 3;

/// Shortest and longest pause (ms) between two of those cluster retries.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (5, 50);

/// How the store reaches Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (maybe with replicas the proxy does not use).
    Single {
        /// `redis://` or `rediss://` URL, with password and database.
        url: String,
    },
    /// A Redis Cluster; any reachable node reveals the others.
    Cluster {
        /// `redis://host:port` (or `rediss://`) of some of the nodes.
        nodes: Vec<String>,
    },
    /// A master and its replicas watched by Sentinel.
    Sentinel {
        /// The master's name in the Sentinel config.
        master: String,
        /// `redis://host:port` (or `rediss://`) of the Sentinels, with their
        /// own password if they have one.
        nodes: Vec<String>,
        /// Database number on the master.
        db: i64,
        /// ACL user on the master, if any.
        username: Option<String>,
        /// Password on the master, if any.
        password: Option<String>,
        /// Connect to the master with TLS.
        tls: bool,
    },
}

impl Topology {
    /// Where it is, for messages: node addresses, never passwords.
    pub fn describe(&self) -> String {
        match self {
            Topology::Single { url } => redacted(url),
            Topology::Cluster { nodes } => format!("cluster {}", redacted_list(nodes)),
            Topology::Sentinel { master, nodes, .. } => {
                format!("master {master:?} of sentinels {}", redacted_list(nodes))
            }
        }
    }
}

/// A connection to Redis in any topology: cheap to clone, every clone
/// sharing the same sockets.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<SentinelMaster>),
}

impl Connection {
    /// Connects now; each connection attempt waits at most `timeout`.
    /// Answers are bounded by the caller ([`super::RedisStore`] bounds every
    /// call by the same `timeout`). `root_cert` (PEM) replaces the system's
    /// trusted roots for `rediss://`.
    pub(super) async fn open(
        topology: &Topology,
        root_cert: Option<&[u8]>,
        timeout: Duration,
    ) -> RedisResult<Self> {
        let connection = Self::lazy(topology, root_cert, timeout)?;
        connection.connect().await?;
        Ok(connection)
    }

    /// The connection without connecting yet: the first call connects (and
    /// each later call tries again while that fails), so a store can be
    /// made while Redis is down. Fails only on settings that can never
    /// work (a URL that does not parse).
    pub(super) fn lazy(
        topology: &Topology,
        root_cert: Option<&[u8]>,
        timeout: Duration,
    ) -> RedisResult<Self> {
        let certificates = || TlsCertificates {
            client_tls: None,
            root_cert: root_cert.map(<[u8]>::to_vec),
        };
        match topology {
            Topology::Single { url } => {
                let client = if url.starts_with("rediss://") && root_cert.is_some() {
                    redis::Client::build_with_tls(url.as_str(), certificates())?
                } else {
                    redis::Client::open(url.as_str())?
                };
                // No response timeout of the crate's: every call is already
                // bounded by `RedisStore::bounded`, and a second timer per
                // call cost about 2% of a flagged request's instructions.
                // The crate's timeout never triggered a reconnect either.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(None)
                    .set_number_of_retries(CONNECT_RETRIES)
                    .set_min_delay(CONNECT_RETRY_DELAY)
                    .set_max_delay(CONNECT_RETRY_DELAY);
                let manager = ConnectionManager::new_lazy_with_config(client, config)?;
                Ok(Connection::Single(manager))
            }
            Topology::Cluster { nodes } => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(CLUSTER_RETRIES)
                    .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
                    .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1);
                if root_cert.is_some() {
                    builder = builder.certs(certificates());
                }
                Ok(Connection::Cluster(Arc::new(LazyCluster {
                    client: builder.build()?,
                    connection: tokio::sync::OnceCell::new(),
                })))
            }
            Topology::Sentinel {
                master,
                nodes,
                db,
                username,
                password,
                tls,
            } => {
                let mut sentinels = Vec::with_capacity(nodes.len());
                let mut sentinel_auth = None;
                for node in nodes {
                    let info = node.as_str().into_connection_info()?;
                    let settings = info.redis_settings();
                    if sentinel_auth.is_none() && settings.password().is_some() {
                        sentinel_auth = Some((
                            settings.username().map(str::to_owned),
                            settings.password().map(str::to_owned),
                        ));
                    }
                    sentinels.push(info.addr().clone());
                }
                let sentinel_tls = nodes.iter().any(|n| n.starts_with("rediss://"));
                let mut builder =
                    SentinelClientBuilder::new(sentinels, master, SentinelServerType::Master)?
                        .set_client_to_redis_db(*db);
                if let Some(username) = username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if *tls {
                    builder = builder.set_client_to_redis_tls_mode(TlsMode::Secure);
                    if root_cert.is_some() {
                        builder = builder.set_client_to_redis_certificates(certificates());
                    }
                }
                if let Some((username, password)) = sentinel_auth {
                    if let Some(username) = username {
                        builder = builder.set_client_to_sentinel_username(username);
                    }
                    if let Some(password) = password {
                        builder = builder.set_client_to_sentinel_password(password);
                    }
                }
                if sentinel_tls {
                    builder = builder.set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if root_cert.is_some() {
                        builder = builder.set_client_to_sentinel_certificates(certificates());
                    }
                }
                Ok(Connection::Sentinel(Arc::new(SentinelMaster {
                    lookup: tokio::sync::Mutex::new(Lookup {
                        sentinel: builder.build()?,
                        last: None,
                    }),
                    current: Mutex::new(None),
                    generations: AtomicU64::new(0),
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout)),
                })))
            }
        }
    }

    /// Connects now if not connected yet, so a wrong address, a wrong
    /// password or unreachable Sentinels show at once.
    pub(super) async fn connect(&self) -> RedisResult<()> {
        match self {
            Connection::Single(manager) => {
                redis::cmd("PING")
                    .query_async::<redis::Value>(&mut manager.clone())
                    .await?;
            }
            Connection::Cluster(cluster) => {
                cluster.connection().await?;
            }
            Connection::Sentinel(sentinel) => {
                sentinel.connection().await?;
            }
        }
        Ok(())
    }

    /// Sends `cmd` to the node that owns its first key (any node for a
    /// command without keys) and reads the answer.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Connection::Single(manager) => cmd.query_async(&mut manager.clone()).await,
            Connection::Cluster(cluster) => {
                cmd.query_async(&mut cluster.connection().await?.clone())
                    .await
            }
            Connection::Sentinel(sentinel) => sentinel.query(cmd).await,
        }
    }

    /// Sends `pipe` (its commands' keys all on one node) in one write and
    /// reads every answer. An answer `WRONGTYPE` stays in its place, so
    /// one user's refused command fails that user's item alone; any other
    /// error answer (`READONLY` after a failover, `OOM`, `MOVED`) fails
    /// the whole call, as for a single command. `pipe` must be made with
    /// [`Pipeline::ignore_errors`].
    pub(super) async fn query_pipeline(&self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let answers = match self {
            Connection::Single(manager) => pipe.query_async(&mut manager.clone()).await,
            Connection::Cluster(cluster) => {
                pipe.query_async(&mut cluster.connection().await?.clone())
                    .await
            }
            Connection::Sentinel(sentinel) => return sentinel.query_pipeline(pipe).await,
        };
        answers.and_then(only_refusals)
    }
}

/// `answers` unless one is an error answer other than `WRONGTYPE`: then
/// that error.
fn only_refusals(answers: Vec<Value>) -> RedisResult<Vec<Value>> {
    let failed = answers.iter().find_map(|answer| match answer {
        Value::ServerError(e) if e.code() != WRONG_TYPE => Some(e.clone()),
        _ => None,
    });
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(answers),
    }
}

/// The error code of a command on a key of another type.
pub(super) const WRONG_TYPE: &str = "WRONGTYPE";

/// A cluster client whose connections are opened by the first call that
/// needs them; a failed attempt leaves it empty for the next call to try.
pub(super) struct LazyCluster {
    client: ClusterClient,
    connection: tokio::sync::OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn connection(&self) -> RedisResult<&ClusterConnection> {
        self.connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await
    }
}

/// True when `e` means the connection the call went out on is gone (the
/// server closed or reset it, it was never re-established after a restart,
/// or the node was demoted by a failover), so the same call sent again on
/// a fresh connection may succeed. A timeout is not: the call may still be
/// running on a server that is alive but slow.
pub(super) fn connection_gone(e: &RedisError) -> bool {
    !e.is_timeout()
        && (e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
            )
            // A write refused inside a script carries READONLY in its message.
            || e.to_string().contains("READONLY"))
}

/// The Sentinels, and the master they named last.
pub(super) struct Lookup {
    sentinel: SentinelClient,
    last: Option<redis::Client>,
}

/// The current master behind Sentinel and the connection to it.
pub(super) struct SentinelMaster {
    /// Asks the Sentinels; locked while asking, so one failover makes one
    /// lookup, not one per waiting call.
    lookup: tokio::sync::Mutex<Lookup>,
    /// The connection to the master last named.
    current: Mutex<Option<Current>>,
    /// Numbers connections, so a late failure of an older connection does
    /// not drop a newer one.
    generations: AtomicU64,
    config: AsyncConnectionConfig,
}

/// A connection to the master Sentinel named.
#[derive(Clone)]
struct Current {
    generation: u64,
    connection: MultiplexedConnection,
}

impl SentinelMaster {
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        match self.current() {
            Some(current) => Ok(current),
            // Boxed: asking Sentinel and connecting is a future of several
            // KB, which every call's future would otherwise carry (and copy)
            // for the rare call that needs it.
            None => Box::pin(self.reconnect()).await,
        }
    }

    /// Asks the Sentinels for the master and connects to it, unless a
    /// concurrent call did so while this one waited for the lock.
    async fn reconnect(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut lookup = self.lookup.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let master = match lookup.sentinel.async_get_client().await {
            Ok(master) => {
                lookup.last = Some(master.clone());
                master
            }
            // Sentinel names no master while its own link to the master is
            // being re-established (it flags it down meanwhile): the last
            // master it named is the best guess. If that node was demoted,
            // its writes answer READONLY and the next call asks again.
            Err(e) => match &lookup.last {
                Some(last) => {
                    tracing::warn!(error = %e,
                        "Sentinel names no usable master now; trying the last one it named");
                    last.clone()
                }
                None => return Err(e),
            },
        };
        let connection = master
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let generation = self.generations.fetch_add(1, Ordering::AcqRel);
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(Current {
            generation,
            connection: connection.clone(),
        });
        Ok((generation, connection))
    }

    /// The connection to use, if there is one.
    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        current
            .as_ref()
            .map(|c| (c.generation, c.connection.clone()))
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let (generation, mut connection) = self.connection().await?;
        let answer = cmd.query_async(&mut connection).await;
        self.forget_if_lost(generation, answer)
    }

    async fn query_pipeline(&self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let (generation, mut connection) = self.connection().await?;
        let answer = pipe
            .query_async(&mut connection)
            .await
            .and_then(only_refusals);
        self.forget_if_lost(generation, answer)
    }

    /// `answer`, after forgetting connection `generation` if `answer` says
    /// its node is gone or no longer the master.
    fn forget_if_lost<T>(&self, generation: u64, answer: RedisResult<T>) -> RedisResult<T> {
        if let Err(e) = &answer
            && master_lost(e)
        {
            let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            if current.as_ref().is_some_and(|c| c.generation == generation) {
                *current = None;
                drop(current);
                tracing::warn!(error = %e, "redis master lost; asking Sentinel again");
            }
        }
        answer
    }
}

/// True when `e` means the node is gone or no longer the master, so Sentinel
/// must be asked again.
fn master_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
        // A write refused inside a script carries READONLY in its message.
        || e.to_string().contains("READONLY")
}

/// `url` without its user and password, for messages and logs. Everything
/// up to the last `@` goes, so a password with an unescaped `/` or `@` does
/// not leak either.
pub(super) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

fn redacted_list(urls: &[String]) -> String {
    let shown: Vec<_> = urls.iter().map(|u| redacted(u)).collect();
    format!("[{}]", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lost_connection_is_worth_a_second_attempt() {
        let io = |kind| RedisError::from(std::io::Error::from(kind));
        for kind in [
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::ConnectionAborted,
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::NotConnected,
        ] {
            assert!(connection_gone(&io(kind)), "{kind:?}");
        }
        // The call may still be running: never sent twice.
        assert!(!connection_gone(&io(std::io::ErrorKind::TimedOut)));
        let readonly = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(connection_gone(&readonly));
        let noscript = RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "gone"));
        assert!(!connection_gone(&noscript));
        let refused_by_script = RedisError::from((ErrorKind::Client, "a script error"));
        assert!(!connection_gone(&refused_by_script));
    }

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
    fn descriptions_hide_passwords() {
        let cluster = Topology::Cluster {
            nodes: vec!["redis://:pw@a:1".into(), "redis://b:2".into()],
        };
        assert_eq!(cluster.describe(), "cluster [redis://***@a:1, redis://b:2]");
        let sentinel = Topology::Sentinel {
            master: "main".into(),
            nodes: vec!["redis://:pw@s1:26379".into()],
            db: 0,
            username: None,
            password: Some("secret".into()),
            tls: false,
        };
        let shown = sentinel.describe();
        assert!(
            !shown.contains("pw") && !shown.contains("secret"),
            "{shown}"
        );
    }
}
