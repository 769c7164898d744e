//! The body budget (phase: read): one count, for the whole process, of the
//! request-body bytes the proxy holds in memory and in spool files
//! (`body_budget_bytes`).
//!
//! Problem: each stalled or slow upload held its memory part and its spool
//! file, with no cap on how many; 200 concurrent uploads could take
//! gigabytes of memory and disk. Mechanism: every buffer of a request body
//! takes its bytes from the budget as it grows (never what a
//! `Content-Length` promises: only what arrived), and gives them back when
//! the body is dropped (forwarded, denied, or failed). Bound: the bodies
//! held never take more than `body_budget_bytes` together, plus one chunk
//! and one write buffer per request in flight.
//!
//! When the budget is spent, a request waits up to [`BUDGET_WAIT`] for
//! room, then gets 503 with `Retry-After` ([`BudgetFull`]): never an
//! abort, and a full budget cannot deadlock, since every waiter gives up
//! in time and releases what it held.
//!
//! While it waits, it cuts bodies that stalled (`stalled.rs`); and the
//! bodies of one HTTP/2 connection hold at most its share (`share.rs`).

mod share;
mod stalled;

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

pub use self::share::BodyShare;
use self::share::ShareBytes;
pub(crate) use self::stalled::BodyCut;
use self::stalled::{FRESH_BYTES, Reader, Readers, Wanted};
use crate::counters::{BODY_BUDGET_REFUSED, BODY_SHARE_REFUSED};

/// Longest wait for room in the budget before the request is answered 503.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// How often a body waiting for room looks again for stalled bodies to cut.
const CUT_LOOK_EVERY: Duration = Duration::from_millis(250);

/// The `Retry-After` (seconds) of a request refused for lack of budget.
pub(crate) const BUDGET_RETRY_AFTER: u32 = 2;

/// The budget, or the connection's share of it, had no room within
/// [`BUDGET_WAIT`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum BudgetFull {
    /// The process's budget: `body_budget_bytes`.
    #[error(
        "the proxy holds its whole body budget ({0} bytes, body_budget_bytes) in other requests' bodies"
    )]
    Process(u64),
    /// One HTTP/2 connection's share: twice `max_body_bytes`.
    #[error(
        "this connection's other requests hold its whole share of the body budget ({0} bytes, twice max_body_bytes)"
    )]
    Connection(u64),
}

/// Why a body could not grow: no room came within [`BUDGET_WAIT`], or it
/// was cut (it had stalled) while it waited for room.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub(crate) enum NoRoom {
    /// No room came in time: 503.
    #[error(transparent)]
    Full(#[from] BudgetFull),
    /// The body was cut meanwhile: 408.
    #[error(transparent)]
    Cut(#[from] BodyCut),
}

/// The process's budget for held request bodies; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct BodyBudget {
    bytes: Arc<Semaphore>,
    capacity: u64,
    /// The bodies being read that a body finding no room may cut.
    readers: Arc<Readers>,
}

impl BodyBudget {
    /// A budget of `capacity` bytes (at most [`Semaphore::MAX_PERMITS`]).
    pub(crate) fn new(capacity: u64) -> Self {
        let capacity = capacity.min(Semaphore::MAX_PERMITS as u64);
        Self {
            bytes: Arc::new(Semaphore::new(
                usize::try_from(capacity).unwrap_or(Semaphore::MAX_PERMITS),
            )),
            capacity,
            readers: Arc::new(Readers::new()),
        }
    }

    /// Its size in bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes free now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> u64 {
        self.bytes.available_permits() as u64
    }

    /// A holding of nothing yet, to grow as a body arrives: from this
    /// budget and, when the request carries one, its connection's `share`
    /// (sized for a `max_body_bytes` of `max_body`).
    pub(crate) fn hold(&self, share: Option<&BodyShare>, max_body: u64) -> Held {
        Held {
            budget: self.clone(),
            share: share.map(|share| share.sized(max_body)),
            bytes: 0,
            reader: None,
            since_fresh: 0,
            read: false,
        }
    }
}

/// Bytes taken from a [`BodyBudget`] (and from a connection's
/// [`BodyShare`], if any); given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    budget: BodyBudget,
    /// The connection's share, which holds the same bytes.
    share: Option<Arc<ShareBytes>>,
    bytes: u64,
    /// Its place among the budget's watched readers: from the first time
    /// its reader waits for the client while it holds bytes, until the body
    /// is read whole.
    reader: Option<Arc<Reader>>,
    /// Bytes arrived since it was last fresh.
    since_fresh: u64,
    /// Whether the body was read whole ([`Held::read_whole`]).
    read: bool,
}

impl Held {
    /// Takes `more` bytes, from the connection's share, then from the
    /// budget, waiting up to [`BUDGET_WAIT`] in all for room; stops at once
    /// if the body is cut meanwhile.
    pub(crate) async fn grow(&mut self, more: usize) -> Result<(), NoRoom> {
        let full = BudgetFull::Process(self.budget.capacity);
        let Ok(more32) = u32::try_from(more) else {
            return Err(full.into());
        };
        if more32 == 0 {
            return Ok(());
        }
        if u64::from(more32) > self.budget.capacity {
            return Err(full.into());
        }
        let mut deadline = None;
        let from_share = match &self.share {
            // More than the whole share (its size fixed before a reload
            // raised max_body_bytes): no wait and no cut can make room.
            Some(share) if u64::from(more32) > share.size => {
                metrics::counter!(BODY_SHARE_REFUSED).increment(1);
                return Err(BudgetFull::Connection(share.size).into());
            }
            Some(share) => {
                let within = Some(share.id());
                match self
                    .take_cutting(&share.free, more32, within, &mut deadline)
                    .await
                {
                    Ok(permit) => Some(permit),
                    Err(Some(cut)) => return Err(cut.into()),
                    Err(None) => {
                        metrics::counter!(BODY_SHARE_REFUSED).increment(1);
                        return Err(BudgetFull::Connection(share.size).into());
                    }
                }
            }
            None => None,
        };
        let budget = &self.budget.bytes;
        let permit = match self.take_cutting(budget, more32, None, &mut deadline).await {
            Ok(permit) => permit,
            Err(Some(cut)) => return Err(cut.into()),
            Err(None) => {
                metrics::counter!(BODY_BUDGET_REFUSED).increment(1);
                return Err(full.into());
            }
        };
        forget(permit, from_share);
        self.kept(more32);
        Ok(())
    }

    /// Takes `more` bytes if the share and the budget have them now, with
    /// no wait and no cut: for the slack a buffer doubles into, which is
    /// worth no one's wait.
    pub(crate) fn try_grow(&mut self, more: usize) -> bool {
        let Ok(more32) = u32::try_from(more) else {
            return false;
        };
        let from_share = match &self.share {
            Some(share) => match share.free.try_acquire_many(more32) {
                Ok(permit) => Some(permit),
                Err(_) => return false,
            },
            None => None,
        };
        let Ok(permit) = self.budget.bytes.try_acquire_many(more32) else {
            return false;
        };
        forget(permit, from_share);
        self.kept(more32);
        true
    }

    /// Counts `bytes` just taken (their permits forgotten) as held.
    fn kept(&mut self, bytes: u32) {
        self.bytes += u64::from(bytes);
        if let Some(reader) = &self.reader {
            reader.holds(self.bytes);
        }
    }

    /// `bytes` of `semaphore` (the budget's, or with `within` its
    /// connection's share's), waiting until `deadline` (set to
    /// [`BUDGET_WAIT`] from now by the first wait of a grow) and cutting
    /// stalled bodies while it waits: any, for the budget; only the
    /// connection's own, for its share (so that one client's stalled
    /// uploads cannot lock the others out of a connection that carries
    /// many clients, an ingress's). `Err(None)` when no room came;
    /// `Err(Some(_))` when this body is cut while it waits (at once: a cut
    /// body gives its bytes back now, not at the end of its own wait, and
    /// its client gets the cut's 408).
    async fn take_cutting<'a>(
        &self,
        semaphore: &'a Semaphore,
        bytes: u32,
        within: Option<usize>,
        deadline: &mut Option<Instant>,
    ) -> Result<SemaphorePermit<'a>, Option<BodyCut>> {
        loop {
            if let Ok(permit) = semaphore.try_acquire_many(bytes) {
                // After a wait for room: the wait was the proxy's, not its
                // client's silence.
                if let (Some(reader), Some(_)) = (&self.reader, &deadline) {
                    reader.fresh(self.budget.readers.now_ms());
                }
                return Ok(permit);
            }
            // A body cut already stops before it cuts others for room it
            // will not take.
            if self.reader.as_ref().is_some_and(|reader| reader.was_cut()) {
                return Err(Some(BodyCut));
            }
            let asking = self.reader.as_ref().map(|reader| reader.id());
            let wanted = Wanted {
                bytes: u64::from(bytes),
                from: semaphore,
                within,
            };
            self.budget.readers.cut_stalled(&wanted, asking);
            let until = *deadline.get_or_insert_with(|| Instant::now() + BUDGET_WAIT);
            let look_again = (Instant::now() + CUT_LOOK_EVERY).min(until);
            let cut = async {
                match &self.reader {
                    Some(reader) => reader.cut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = cut => return Err(Some(BodyCut)),
                waited = tokio::time::timeout_at(look_again, semaphore.acquire_many(bytes)) => {
                    match waited {
                        Ok(Ok(permit)) => {
                            // Its wait for room was the proxy's, not its
                            // client's silence.
                            if let Some(reader) = &self.reader {
                                reader.fresh(self.budget.readers.now_ms());
                            }
                            return Ok(permit);
                        }
                        // Closed, which it never is.
                        Ok(Err(_)) => return Err(None),
                        Err(_) if Instant::now() >= until => return Err(None),
                        Err(_) => {}
                    }
                }
            }
        }
    }

    /// Records `bytes` of the body arrived: a watched body is fresh again
    /// once [`FRESH_BYTES`] have.
    pub(crate) fn arrived(&mut self, bytes: usize) {
        let Some(reader) = &self.reader else {
            return;
        };
        self.since_fresh = self.since_fresh.saturating_add(bytes as u64);
        if self.since_fresh >= FRESH_BYTES {
            self.since_fresh = 0;
            reader.fresh(self.budget.readers.now_ms());
        }
    }

    /// `next` (the body's next frame), or [`BodyCut`] if the body is cut
    /// to make room first. A body is watched from the first time its
    /// reader waits here while it holds bytes: one whose bytes come with no
    /// wait (most small bodies, all at once with their head) never takes
    /// the watch's lock.
    pub(crate) async fn until_cut<F: Future>(&mut self, next: F) -> Result<F::Output, BodyCut> {
        let mut next = std::pin::pin!(next);
        if self.reader.is_none() {
            let ready = std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await;
            if let Poll::Ready(output) = ready {
                return Ok(output);
            }
            if self.bytes == 0 || self.read {
                return Ok(next.await);
            }
            let share = self.share.as_ref().map(|share| share.id());
            self.reader = Some(self.budget.readers.watch(self.bytes, share));
        }
        let Some(reader) = &self.reader else {
            return Ok(next.await);
        };
        tokio::select! {
            biased;
            () = reader.cut() => Err(BodyCut),
            output = next => Ok(output),
        }
    }

    /// The body was read whole: what it holds now waits for the upstream,
    /// and is no longer cut for stalling.
    pub(crate) fn read_whole(&mut self) {
        self.read = true;
        if let Some(reader) = self.reader.take() {
            self.budget.readers.unwatch(&reader);
        }
    }

    /// Gives back `fewer` of the bytes held (at most all of them).
    pub(crate) fn release(&mut self, fewer: usize) {
        let fewer = (fewer as u64).min(self.bytes);
        self.bytes -= fewer;
        if let Some(reader) = &self.reader {
            reader.holds(self.bytes);
        }
        self.give_back(fewer);
    }

    /// Returns `bytes` to the budget and the share.
    fn give_back(&self, bytes: u64) {
        let permits = usize::try_from(bytes).unwrap_or(usize::MAX);
        self.budget.bytes.add_permits(permits);
        if let Some(share) = &self.share {
            share.free.add_permits(permits);
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let bytes = self.bytes;
        match self.reader.take() {
            Some(reader) => {
                let readers = &self.budget.readers;
                readers.unwatch_giving_back(&reader, || self.give_back(bytes));
            }
            None if bytes > 0 => self.give_back(bytes),
            None => {}
        }
    }
}

/// Forgets the permits of bytes taken from the budget and the share: they
/// stay taken until [`Held::give_back`] returns them.
fn forget(budget: SemaphorePermit<'_>, share: Option<SemaphorePermit<'_>>) {
    budget.forget();
    if let Some(share) = share {
        share.forget();
    }
}

/// Bytes that give their budget back when the last handle to them is
/// dropped: the owner of a [`bytes::Bytes`] made with `Bytes::from_owner`.
pub(crate) struct HeldBytes<T> {
    pub(crate) bytes: T,
    /// Given back when the bytes are dropped.
    pub(crate) _held: Held,
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for HeldBytes<T> {
    fn as_ref(&self) -> &[u8] {
        self.bytes.as_ref()
    }
}

#[cfg(test)]
mod tests;
