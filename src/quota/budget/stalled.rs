//! Stalled bodies cut when room is short (phase: read).
//!
//! Problem: the budget was first come, first served, and a body that
//! stayed silent held its bytes for up to `timeouts.client_body` (30 s,
//! restarted by each byte). A client with enough connections whose uploads
//! sent a byte now and then held the whole budget, and every other body
//! (under `request_buffering = "all"`, every POST of the app) waited and
//! got 503 (an attack session). Mechanism: a body being read is watched
//! ([`Readers`]) from the first time its reader waits for the client while
//! it holds bytes; it is stalled once [`STALLED_AFTER`] passed since its
//! last [`FRESH_BYTES`] arrived. A body that finds no room (in the budget,
//! or in its HTTP/2 connection's share: then among that connection's
//! bodies only) cuts stalled ones, longest stalled first, until what they
//! hold covers what it lacks, and none if all of them would not; each cut
//! one's reader stops at once ([`BodyCut`]: 408, connection closed), even
//! while it waits for room itself. A body read whole (waiting for the
//! upstream) is not watched: it is no longer the client's to stall.
//! Bound: while room is short, a body keeps its place only while it
//! arrives at about 16 KiB a second or faster, so holding the budget costs
//! a client that bandwidth for every body it holds, each for as long as
//! its `max_body_bytes` lasts at that rate. Price: while room is short, an
//! upload slower than that is cut; while there is room, nothing is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::counters::BODY_BUDGET_CUT;

/// How long a watched body may go without [`FRESH_BYTES`] arriving before
/// a body that finds no room may cut it.
pub(super) const STALLED_AFTER: Duration = Duration::from_secs(1);

/// The bytes that make a watched body fresh again.
pub(super) const FRESH_BYTES: u64 = 16 * 1024;

/// The body was cut while it stalled, to make room in a full budget.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "the request body stalled (no 16 KiB in the last second) while the body budget \
     (body_budget_bytes), or its connection's share of it, was short of room; it was cut \
     to make room"
)]
pub(crate) struct BodyCut;

/// What a body waiting for room wants: `bytes` of the semaphore `from`
/// (the budget's, or its connection's share's, whose id is `within`).
pub(super) struct Wanted<'a> {
    pub(super) bytes: u64,
    pub(super) from: &'a Semaphore,
    pub(super) within: Option<usize>,
}

/// The bodies being read that waited for their client while holding
/// bytes, shared by every serving thread.
#[derive(Debug)]
pub(super) struct Readers {
    /// Where the readers' times count from.
    epoch: Instant,
    next_id: AtomicU64,
    watched: Mutex<HashMap<u64, Arc<Reader>>>,
}

/// One watched body, as its [`super::Held`] and a cutting body share it.
#[derive(Debug)]
pub(super) struct Reader {
    id: u64,
    /// Its connection's share ([`super::share::ShareBytes::id`]), if any.
    share: Option<usize>,
    /// Bytes it holds (its `Held`'s, copied on each change).
    held: AtomicU64,
    /// When it was last fresh, in ms since the [`Readers`]' epoch.
    fresh_at_ms: AtomicU64,
    /// Set once, by the body that cuts it.
    was_cut: AtomicBool,
    /// Wakes its reader when it is cut.
    cut: Notify,
}

impl Readers {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            watched: Mutex::new(HashMap::new()),
        }
    }

    /// Milliseconds since the epoch.
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Watches a body that holds `held` bytes (of the connection's
    /// `share`, if any), fresh now.
    pub(super) fn watch(&self, held: u64, share: Option<usize>) -> Arc<Reader> {
        let reader = Arc::new(Reader {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            share,
            held: AtomicU64::new(held),
            fresh_at_ms: AtomicU64::new(self.now_ms()),
            was_cut: AtomicBool::new(false),
            cut: Notify::new(),
        });
        self.lock().insert(reader.id, Arc::clone(&reader));
        reader
    }

    /// Stops watching `reader` (read whole, or dropped).
    pub(super) fn unwatch(&self, reader: &Reader) {
        self.lock().remove(&reader.id);
    }

    /// Stops watching `reader` and runs `give_back` (its bytes returned)
    /// under the same lock: a body cutting for room, which reads the free
    /// bytes and the watched ones under that lock, counts them once, as
    /// leaving or as free.
    pub(super) fn unwatch_giving_back(&self, reader: &Reader, give_back: impl FnOnce()) {
        let mut watched = self.lock();
        give_back();
        watched.remove(&reader.id);
    }

    /// Cuts stalled bodies, longest stalled first, until they hold what
    /// `wanted` lacks beyond the bytes of bodies cut before and not yet
    /// gone; none if all of them would not cover it (a cut that frees too
    /// little only costs its client); never `except` (the body asking),
    /// and with `wanted.within` only the bodies of that connection's share.
    /// Returns how many it cut.
    pub(super) fn cut_stalled(&self, wanted: &Wanted<'_>, except: Option<u64>) -> usize {
        let now = self.now_ms();
        let stalled_ms = u64::try_from(STALLED_AFTER.as_millis()).unwrap_or(u64::MAX);
        let within = wanted.within;
        let watched = self.lock();
        // Read under the lock: a dropped body gives its bytes back and
        // leaves the map under it too (`unwatch_giving_back`), so its bytes
        // are counted once, as leaving or as free.
        let lacking = wanted
            .bytes
            .saturating_sub(wanted.from.available_permits() as u64);
        let among = |r: &&Arc<Reader>| within.is_none() || r.share == within;
        let going: u64 = watched
            .values()
            .filter(among)
            .filter(|r| r.was_cut.load(Ordering::Relaxed))
            .map(|r| r.held.load(Ordering::Relaxed))
            .sum();
        let mut lacking = lacking.saturating_sub(going);
        if lacking == 0 {
            return 0;
        }
        let mut stalled: Vec<&Arc<Reader>> = watched
            .values()
            .filter(among)
            .filter(|r| Some(r.id) != except && !r.was_cut.load(Ordering::Relaxed))
            .filter(|r| now.saturating_sub(r.fresh_at_ms.load(Ordering::Relaxed)) >= stalled_ms)
            .collect();
        let could_free: u64 = stalled.iter().map(|r| r.held.load(Ordering::Relaxed)).sum();
        if could_free < lacking {
            return 0;
        }
        stalled.sort_unstable_by_key(|r| r.fresh_at_ms.load(Ordering::Relaxed));
        let mut cut = 0;
        for reader in stalled {
            if lacking == 0 {
                break;
            }
            reader.was_cut.store(true, Ordering::Relaxed);
            reader.cut.notify_one();
            lacking = lacking.saturating_sub(reader.held.load(Ordering::Relaxed));
            cut += 1;
        }
        if cut > 0 {
            metrics::counter!(BODY_BUDGET_CUT).increment(cut as u64);
        }
        cut
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Reader>>> {
        // The map is whole between statements: a panic elsewhere leaves it usable.
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Reader {
    /// Its id among the [`Readers`].
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// Records that it holds `bytes`.
    pub(super) fn holds(&self, bytes: u64) {
        self.held.store(bytes, Ordering::Relaxed);
    }

    /// Marks it fresh at `now_ms`.
    pub(super) fn fresh(&self, now_ms: u64) {
        self.fresh_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Whether it was cut.
    pub(super) fn was_cut(&self) -> bool {
        self.was_cut.load(Ordering::Relaxed)
    }

    /// Completes when it is cut.
    pub(super) async fn cut(&self) {
        self.cut.notified().await;
    }
}
