//! Answers of the identity endpoint, by credentials (phase: identify).
//!
//! Keys are SHA-256 digests of the forwarded credential headers
//! ([`CredentialKey`]): raw cookies are never kept as keys or logged, and a
//! collision, which would hand one user's identity to another, is out of
//! reach (a 64-bit hash would not be). Hashing a few hundred bytes of cookie
//! costs well under a microsecond.
//!
//! The cache also runs the single flight: the first request for a key that
//! is neither cached nor being asked becomes the [`Leader`]; the others wait
//! on its [`Waiter`] (a `tokio::sync::watch` channel). We hand-roll this
//! rather than use a cache crate because expiry must follow
//! `tokio::time::Instant` (paused-time tests), the negative TTL differs from
//! the positive one, and errors must not be cached: a few dozen lines of
//! `HashMap` under a `std::sync::Mutex` that is never held across an await.
//!
//! Bounding: by entries (`cache_max_entries`) and by bytes
//! (`cache_max_bytes`: keys, identities and the bookkeeping of each entry,
//! [`entry_cost`]). When full, the least recently used entry goes first: a
//! queue of `(key, generation)` in order of last use (insertion or hit),
//! stale items skipped lazily, so a flood of new credentials costs O(1)
//! per insertion and cannot push out the users who keep coming back. Keys
//! are digests, so a client's long cookie costs 32 bytes here; the
//! identities come from the backend. The bytes held are exported as
//! `quota_proxy_identity_cache_bytes`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Identity, IdentityError};

/// The result of one identity call, as every waiter receives it.
pub(crate) type Outcome = Result<Option<Identity>, IdentityError>;

/// SHA-256 of a request's credential headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct CredentialKey([u8; 32]);

impl CredentialKey {
    /// The key of `headers`' values for the credential `names` and the
    /// `site` headers the answer also depends on (every value of each, in
    /// order), or `None` when no credential is present: such a request is
    /// anonymous and needs no call.
    pub(crate) fn of(
        headers: &HeaderMap,
        names: &[HeaderName],
        site: &[HeaderName],
    ) -> Option<Self> {
        let mut hasher = Sha256::new();
        let mut any = false;
        for name in names {
            any |= hash_values(&mut hasher, headers, name);
        }
        if !any {
            return None;
        }
        // An empty line between the credentials and the site.
        hasher.update(b"\n");
        for name in site {
            hash_values(&mut hasher, headers, name);
        }
        Some(CredentialKey(hasher.finalize().into()))
    }
}

/// Feeds every value of `name` in `headers` to `hasher`, one line each;
/// true when there was one.
fn hash_values(hasher: &mut Sha256, headers: &HeaderMap, name: &HeaderName) -> bool {
    let mut any = false;
    for value in headers.get_all(name) {
        any = true;
        // Header names hold no ':' and values no '\n': unambiguous.
        hasher.update(name.as_str().as_bytes());
        hasher.update(b":");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    any
}

/// A bounded map of answers with expiry, plus the calls in flight.
#[derive(Debug)]
pub(crate) struct IdentityCache {
    state: Mutex<State>,
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<CredentialKey, Entry>,
    /// The sum of the entries' [`entry_cost`].
    bytes: usize,
    /// Order of last use, for evicting the least recently used; an item
    /// whose generation no longer matches its entry is stale and skipped.
    order: VecDeque<(CredentialKey, u64)>,
    in_flight: HashMap<CredentialKey, watch::Receiver<Option<Outcome>>>,
    next_generation: u64,
}

#[derive(Debug)]
struct Entry {
    identity: Option<Identity>,
    expires: Instant,
    generation: u64,
    cost: usize,
}

/// What one cached answer takes: its key (in the map and the queue), the
/// entry, a queue item, the identity's strings, and the map's own slot.
fn entry_cost(identity: Option<&Identity>) -> usize {
    let strings = identity.map_or(0, |i| {
        i.user_id.capacity() + i.plan.as_deref().map_or(0, str::len)
    });
    2 * std::mem::size_of::<CredentialKey>()
        + std::mem::size_of::<Entry>()
        + std::mem::size_of::<(CredentialKey, u64)>()
        + 16
        + strings
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A fresh answer.
    Hit(Option<Identity>),
    /// Another request is asking; wait for its outcome.
    Join(Waiter),
    /// Nobody is asking: make the call and [`Leader::finish`] it.
    Lead(Leader, Waiter),
}

/// Waits for the outcome of a call in flight.
pub(crate) struct Waiter(watch::Receiver<Option<Outcome>>);

impl Waiter {
    /// The call's outcome; unavailable when the call was dropped unfinished.
    pub(crate) async fn outcome(mut self) -> Outcome {
        match self.0.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or_else(abandoned),
            Err(_) => abandoned(),
        }
    }
}

fn abandoned() -> Outcome {
    Err(IdentityError::Unavailable(
        "the identity call ended without an answer".to_owned(),
    ))
}

/// The one request making the call for a key. Dropping it unfinished (a
/// panic, a runtime shutdown) clears the in-flight mark so later requests
/// ask again; its waiters then get an error.
pub(crate) struct Leader {
    cache: Arc<IdentityCache>,
    key: CredentialKey,
    sender: Option<watch::Sender<Option<Outcome>>>,
}

impl Leader {
    /// Caches `outcome` (answers only, never errors), ends the flight and
    /// wakes the waiters.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        {
            let mut state = self.cache.lock();
            if let Ok(identity) = &outcome {
                self.cache
                    .insert(&mut state, self.key, identity.clone(), Instant::now());
            }
            state.in_flight.remove(&self.key);
        }
        sender.send_replace(Some(outcome));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if self.sender.is_some() {
            self.cache.lock().in_flight.remove(&self.key);
        }
    }
}

impl IdentityCache {
    /// A cache keeping users' answers for `ttl`, anonymous answers for
    /// `negative_ttl`, at most `max_entries` of them (at least one).
    pub(crate) fn new(ttl: Duration, negative_ttl: Duration, max_entries: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ttl,
            negative_ttl,
            max_entries: max_entries.max(1),
            max_bytes: usize::MAX,
        }
    }

    /// The same cache, holding answers of at most `max_bytes` together
    /// ([`entry_cost`]; at least one answer is always kept).
    pub(crate) fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the maps consistent (every
        // mutation is a single insert or remove), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached answer for `key` at `now`, or the flight to join or lead.
    pub(crate) fn lookup(self: &Arc<Self>, key: CredentialKey, now: Instant) -> Lookup {
        let mut state = self.lock();
        let hit = matches!(state.entries.get(&key), Some(entry) if entry.expires > now);
        crate::counters::identity_cache(hit);
        if hit {
            // Used now: it moves to the back of the eviction queue.
            let generation = state.next_generation;
            state.next_generation += 1;
            let identity = state.entries.get_mut(&key).map(|entry| {
                entry.generation = generation;
                entry.identity.clone()
            });
            state.order.push_back((key, generation));
            self.compact(&mut state);
            return Lookup::Hit(identity.flatten());
        }
        if let Some(stale) = state.entries.remove(&key) {
            state.bytes -= stale.cost;
        }
        if let Some(receiver) = state.in_flight.get(&key) {
            return Lookup::Join(Waiter(receiver.clone()));
        }
        let (sender, receiver) = watch::channel(None);
        state.in_flight.insert(key, receiver.clone());
        Lookup::Lead(
            Leader {
                cache: Arc::clone(self),
                key,
                sender: Some(sender),
            },
            Waiter(receiver),
        )
    }

    fn insert(
        &self,
        state: &mut State,
        key: CredentialKey,
        identity: Option<Identity>,
        now: Instant,
    ) {
        let ttl = if identity.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        if ttl.is_zero() {
            return;
        }
        let cost = entry_cost(identity.as_ref());
        if let Some(old) = state.entries.remove(&key) {
            state.bytes -= old.cost;
        }
        // Drop expired entries at the front, then the least recently used
        // while full (in entries or in bytes).
        while let Some(&(old, generation)) = state.order.front() {
            let full = state.entries.len() >= self.max_entries
                || state.bytes.saturating_add(cost) > self.max_bytes;
            let live = state
                .entries
                .get(&old)
                .filter(|e| e.generation == generation);
            match live {
                None => {}
                Some(entry) if entry.expires <= now || full => {
                    let cost = entry.cost;
                    state.entries.remove(&old);
                    state.bytes -= cost;
                }
                Some(_) => break,
            }
            state.order.pop_front();
        }
        self.compact(state);
        let generation = state.next_generation;
        state.next_generation += 1;
        state.entries.insert(
            key,
            Entry {
                identity,
                expires: now + ttl,
                generation,
                cost,
            },
        );
        state.bytes += cost;
        state.order.push_back((key, generation));
        metrics::gauge!("quota_proxy_identity_cache_bytes").set(state.bytes as f64);
    }

    /// Stale queue items pile up when keys are used again before their old
    /// item reaches the front; drop them before the queue outgrows the map.
    fn compact(&self, state: &mut State) {
        if state.order.len() > 2 * state.entries.len().max(16) {
            let State { entries, order, .. } = state;
            order.retain(|(k, g)| entries.get(k).is_some_and(|e| e.generation == *g));
        }
    }

    /// Bytes the answers take ([`entry_cost`]).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// How many answers are held (expired ones included until dropped).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;

    fn key(n: u8) -> CredentialKey {
        CredentialKey([n; 32])
    }

    fn user(id: &str) -> Option<Identity> {
        Some(Identity {
            user_id: id.to_owned(),
            plan: None,
            limits: Limits::default(),
        })
    }

    fn lead(cache: &Arc<IdentityCache>, k: CredentialKey, answer: Option<Identity>) {
        match cache.lookup(k, Instant::now()) {
            Lookup::Lead(leader, _) => leader.finish(Ok(answer)),
            _ => panic!("expected to lead"),
        }
    }

    #[test]
    fn key_needs_a_credential_and_depends_on_every_value() {
        let names = [http::header::COOKIE, http::header::AUTHORIZATION];
        let mut h = HeaderMap::new();
        assert_eq!(CredentialKey::of(&h, &names, &[]), None);
        h.insert("x-other", "1".parse().expect("value"));
        assert_eq!(CredentialKey::of(&h, &names, &[]), None);
        h.insert(http::header::COOKIE, "sessionid=a".parse().expect("value"));
        let one = CredentialKey::of(&h, &names, &[]).expect("key");
        h.append(http::header::COOKIE, "csrftoken=b".parse().expect("value"));
        let two = CredentialKey::of(&h, &names, &[]).expect("key");
        assert_ne!(one, two);
        // The same value under another header is another credential.
        let mut a = HeaderMap::new();
        a.insert(
            http::header::AUTHORIZATION,
            "sessionid=a".parse().expect("value"),
        );
        assert_ne!(CredentialKey::of(&a, &names, &[]), Some(one));
        // The site the request came through is part of the key: Django may
        // answer `http://` with a redirect and `https://` with the user.
        let site = [
            http::header::HOST,
            HeaderName::from_static("x-forwarded-proto"),
        ];
        h.insert("x-forwarded-proto", "http".parse().expect("value"));
        let plain = CredentialKey::of(&h, &names, &site).expect("key");
        h.insert("x-forwarded-proto", "https".parse().expect("value"));
        assert_ne!(CredentialKey::of(&h, &names, &site), Some(plain));
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_their_ttl() {
        let cache = Arc::new(IdentityCache::new(
            Duration::from_secs(30),
            Duration::from_secs(5),
            10,
        ));
        lead(&cache, key(1), user("1"));
        lead(&cache, key(2), None);
        assert!(matches!(
            cache.lookup(key(1), Instant::now()),
            Lookup::Hit(Some(_))
        ));
        assert!(matches!(
            cache.lookup(key(2), Instant::now()),
            Lookup::Hit(None)
        ));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(matches!(
            cache.lookup(key(1), Instant::now()),
            Lookup::Hit(Some(_))
        ));
        assert!(matches!(
            cache.lookup(key(2), Instant::now()),
            Lookup::Lead(..)
        ));
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(matches!(
            cache.lookup(key(1), Instant::now()),
            Lookup::Lead(..)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn full_cache_drops_the_oldest() {
        let cache = Arc::new(IdentityCache::new(
            Duration::from_secs(30),
            Duration::from_secs(5),
            3,
        ));
        for n in 1..=5 {
            lead(&cache, key(n), user(&n.to_string()));
        }
        assert_eq!(cache.len(), 3);
        assert!(matches!(
            cache.lookup(key(1), Instant::now()),
            Lookup::Lead(..)
        ));
        assert!(matches!(
            cache.lookup(key(5), Instant::now()),
            Lookup::Hit(Some(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_are_not_cached_and_joiners_share_the_outcome() {
        let cache = Arc::new(IdentityCache::new(
            Duration::from_secs(30),
            Duration::from_secs(5),
            10,
        ));
        let Lookup::Lead(leader, first) = cache.lookup(key(1), Instant::now()) else {
            panic!("expected to lead");
        };
        let Lookup::Join(second) = cache.lookup(key(1), Instant::now()) else {
            panic!("expected to join");
        };
        leader.finish(Err(IdentityError::Unavailable("down".to_owned())));
        assert!(first.outcome().await.is_err());
        assert!(second.outcome().await.is_err());
        assert!(matches!(
            cache.lookup(key(1), Instant::now()),
            Lookup::Lead(..)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_leader_ends_the_flight() {
        let cache = Arc::new(IdentityCache::new(
            Duration::from_secs(30),
            Duration::from_secs(5),
            10,
        ));
        let Lookup::Lead(leader, waiter) = cache.lookup(key(1), Instant::now()) else {
            panic!("expected to lead");
        };
        drop(leader);
        assert!(waiter.outcome().await.is_err());
        assert!(matches!(
            cache.lookup(key(1), Instant::now()),
            Lookup::Lead(..)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ttl_turns_the_cache_off() {
        let cache = Arc::new(IdentityCache::new(Duration::ZERO, Duration::ZERO, 10));
        lead(&cache, key(1), user("1"));
        assert_eq!(cache.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_used_answer_outlives_newer_unused_ones() {
        let cache = Arc::new(IdentityCache::new(
            Duration::from_secs(30),
            Duration::from_secs(5),
            3,
        ));
        for n in 1..=3 {
            lead(&cache, key(n), user(&n.to_string()));
        }
        // 1 is used again: 2 is now the least recently used.
        assert!(matches!(
            cache.lookup(key(1), Instant::now()),
            Lookup::Hit(Some(_))
        ));
        lead(&cache, key(4), user("4"));
        assert!(matches!(
            cache.lookup(key(1), Instant::now()),
            Lookup::Hit(Some(_))
        ));
        assert!(matches!(
            cache.lookup(key(2), Instant::now()),
            Lookup::Lead(..)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_stay_under_the_bound_whatever_the_keys() {
        let one = entry_cost(user(&"u".repeat(100)).as_ref());
        let cache = Arc::new(
            IdentityCache::new(Duration::from_secs(30), Duration::from_secs(5), 1_000_000)
                .with_max_bytes(10 * one as u64),
        );
        for n in 0..10_000u32 {
            let mut digest = [0u8; 32];
            digest[..4].copy_from_slice(&n.to_le_bytes());
            lead(&cache, CredentialKey(digest), user(&"u".repeat(100)));
            assert!(cache.bytes() <= 10 * one, "{} after {n}", cache.bytes());
            // Hits in between leave no unbounded queue behind.
            let _ = cache.lookup(CredentialKey(digest), Instant::now());
        }
        assert_eq!(cache.len(), 10);
        assert!(cache.lock().order.len() <= 2 * 16 + 1);
    }
}
