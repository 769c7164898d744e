//! Runs the real proxy (`app::serve`: accept loop, quota layer, forwarding
//! service) on 127.0.0.1:0 with a config, a store and a manual clock, and a
//! small client to talk to it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use quota_proxy::clock::ManualClock;
use quota_proxy::config::Config;
use quota_proxy::periods::{Calendar, PeriodWindow, PeriodWindows};
use quota_proxy::quota::QuotaLayer;
use quota_proxy::store::{
    Admission, MemoryStore, PeriodUsage, QuotaStore, RedisStore, Reservation, ReserveRequest,
    StoreError,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// How long [`Proxy::wait_settled`] waits before failing the test.
pub const SETTLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub clock: ManualClock,
    pub store: Arc<CountingStore>,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Which store a test runs on.
#[derive(Clone)]
pub enum StoreChoice {
    Memory,
    Redis(String),
}

impl Proxy {
    /// Starts a proxy for `config_toml` (its `upstream` replaced by
    /// `upstream`) at the instant `now`.
    pub async fn start(
        config_toml: &str,
        upstream: &http::uri::Authority,
        store: &StoreChoice,
        now: DateTime<Utc>,
    ) -> Proxy {
        let mut config = Config::from_toml(config_toml).expect("test config");
        config.upstream = format!("http://{upstream}")
            .try_into()
            .expect("upstream address");
        let inner: Arc<dyn QuotaStore> = match store {
            StoreChoice::Memory => Arc::new(MemoryStore::new(1000)),
            StoreChoice::Redis(url) => Arc::new(
                RedisStore::connect(
                    url,
                    &config.store.key_prefix,
                    config.store.command_timeout.get(),
                )
                .await
                .expect("redis store"),
            ),
        };
        let store = Arc::new(CountingStore::new(inner));
        let clock = ManualClock::new(now);
        let layer = QuotaLayer::builder(&config)
            .expect("layer")
            .store(store.clone())
            .clock(Arc::new(clock.clone()))
            .build();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let served = config.clone();
        let task = tokio::spawn(async move {
            quota_proxy::app::serve(
                &served,
                layer,
                listener,
                async {
                    let _ = rx.await;
                },
                quota_proxy::server::AcceptBalance::alone(),
            )
            .await
            .expect("proxy serves");
        });
        Proxy {
            addr,
            clock,
            store,
            config,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a proxy on the memory store in front of `upstream`.
    pub async fn memory(
        config_toml: &str,
        upstream: &super::upstream::TestUpstream,
        now: DateTime<Utc>,
    ) -> Proxy {
        Self::start(
            config_toml,
            &upstream.authority(),
            &StoreChoice::Memory,
            now,
        )
        .await
    }

    /// The calendar of the proxy's config.
    pub fn calendar(&self) -> Calendar {
        Calendar::new(
            self.config.periods.timezone.0,
            self.config.periods.week_start.0,
        )
        .with_months(self.config.periods.calendar)
    }

    /// The user's usage in the periods of the clock's current instant.
    pub async fn usage(&self, user: &str) -> [PeriodUsage; 3] {
        let now = quota_proxy::clock::Clock::now(&self.clock);
        self.store
            .usage(user, &self.calendar().windows(now), now)
            .await
            .expect("usage")
    }

    /// Waits until `user`'s daily usage is `used` with nothing reserved
    /// (settlement can finish just after the client got its answer); fails
    /// the test after [`SETTLE_WITHIN`] with what the store still holds.
    pub async fn wait_settled(&self, user: &str, used: u64) -> [PeriodUsage; 3] {
        let deadline = std::time::Instant::now() + SETTLE_WITHIN;
        loop {
            let usage = self.usage(user).await;
            if usage[0].used == used && usage[0].reserved == 0 {
                return usage;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{user}: waited {SETTLE_WITHIN:?} for {used} used and 0 reserved today, \
                 the store still holds {} used and {} reserved",
                usage[0].used,
                usage[0].reserved
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Puts `user` at `used` images today (and this week and month), as if
    /// earlier requests had used them: the next flagged request of a user
    /// at the limit must be denied on that very request.
    pub async fn fill(&self, user: &str, used: u64) {
        let now = quota_proxy::clock::Clock::now(&self.clock);
        let windows = self.calendar().windows(now);
        for window in windows.iter() {
            self.store
                .adjust(user, window, i64::try_from(used).expect("small count"), now)
                .await
                .expect("adjust usage");
        }
        assert_eq!(self.usage(user).await[0].used, used, "{user} filled");
    }

    /// Stops the proxy and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A real store with call counters in front, to show which requests made
/// no store call at all: `calls` counts the request path's calls (reserve,
/// settle, extend), `reads` the usage reads.
pub struct CountingStore {
    inner: Arc<dyn QuotaStore>,
    calls: AtomicUsize,
    reads: AtomicUsize,
}

impl CountingStore {
    pub fn new(inner: Arc<dyn QuotaStore>) -> Self {
        Self {
            inner,
            calls: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// `usage` calls so far (the test's own reads included).
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl QuotaStore for CountingStore {
    async fn reserve(&self, request: &ReserveRequest) -> Result<Admission, StoreError> {
        self.count();
        self.inner.reserve(request).await
    }
    async fn settle(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.count();
        self.inner.settle(reservation, amount, now).await
    }
    async fn extend(
        &self,
        reservation: &Reservation,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.count();
        self.inner.extend(reservation, until, now).await
    }
    async fn usage(
        &self,
        user: &str,
        windows: &PeriodWindows,
        now: DateTime<Utc>,
    ) -> Result<[PeriodUsage; 3], StoreError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.usage(user, windows, now).await
    }
    async fn adjust(
        &self,
        user: &str,
        window: &PeriodWindow,
        delta: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.inner.adjust(user, window, delta, now).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    // The store's in-place answers are passed on (and counted when given),
    // so these tests take the memory store's production path.
    fn reserve_now(&self, request: &ReserveRequest) -> Option<Result<Admission, StoreError>> {
        let answer = self.inner.reserve_now(request)?;
        self.count();
        Some(answer)
    }
    fn settle_now(
        &self,
        reservation: &Reservation,
        amount: u64,
        now: DateTime<Utc>,
    ) -> Option<Result<(), StoreError>> {
        let answer = self.inner.settle_now(reservation, amount, now)?;
        self.count();
        Some(answer)
    }
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 client for the proxy.
#[derive(Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl TestClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    /// Sends a request with `headers` and `body`; returns the whole answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(body.into())).expect("request");
        let response = self.client.request(request).await.expect("proxy answers");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A flagged JSON request from `user` on `plan` to `path`.
    pub async fn generate(&self, path: &str, user: &str, plan: &str) -> Answer {
        self.send(
            Method::POST,
            path,
            &[
                ("x-user-id", user),
                ("x-subscription-type", plan),
                ("content-type", "application/json"),
            ],
            r#"{"message": "a cat", "generate_image": true}"#,
        )
        .await
    }
}

/// An HTTP/2 client connection (h2c, prior knowledge) to `addr`, driven by
/// a task of its own.
pub async fn h2_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    sender
}
