//! Settles coalesced into one script call (phase: settle), for
//! [`super::RedisStore`]. While a call of `settle.lua` is under way, the
//! settles that arrive wait; the next call carries all of them, at most
//! [`MAX_BATCH`]. An idle store sends a settle at once, so a batch adds no
//! delay; a settle storm costs Redis one call (one read, one write, one
//! script run) per batch instead of one per settle.
//!
//! Exactly once still holds: each settle keeps its reservation id and the
//! script counts an id once, so a batch sent again after a lost connection,
//! or a settle retried later from the outage queue, counts nothing twice.
//! Each settle gets its own answer; one that Redis refuses fails alone.
//!
//! The settle that finds no call under way sends the first batch itself
//! (its own settle and whatever queued meanwhile), so an idle store pays no
//! task; what queues during that call is sent by a task of its own, so no
//! caller waits for other settles than its batch's. A sender stopped
//! mid-call (its runtime shut down) fails the settles it held and the ones
//! queued, with [`StoreError::Unavailable`]; their callers retry them.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use crate::periods::PeriodWindows;
use crate::store::StoreError;

/// Most settles in one call: 5 keys and 7 arguments each.
pub(super) const MAX_BATCH: usize = 64;

/// One settle to send.
#[derive(Debug)]
pub(super) struct PendingSettle {
    /// The user whose counters it adds to.
    pub(super) user: String,
    /// The periods the reservation was made in.
    pub(super) windows: PeriodWindows,
    /// The reservation id, counted once.
    pub(super) id: String,
    /// Units to add (0 releases the reservation).
    pub(super) amount: u64,
    /// When the settle was made, from the caller's clock.
    pub(super) now: DateTime<Utc>,
}

struct Waiting {
    settle: PendingSettle,
    answer: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A task is sending: what is queued goes out with its next call.
    sending: bool,
}

/// The queue of settles waiting for the call under way.
#[derive(Default)]
pub(super) struct SettleBatcher {
    queue: Mutex<Queue>,
}

impl SettleBatcher {
    /// Queues `settle` and waits for its answer, `send` being one call for
    /// a batch (answering each settle in order). When no call is under way,
    /// this settle sends the first batch, then hands what queued meanwhile
    /// to a task that sends until the queue is empty.
    pub(super) async fn settle<F, Fut>(
        self: &Arc<Self>,
        settle: PendingSettle,
        send: F,
    ) -> Result<(), StoreError>
    where
        F: Fn(Vec<PendingSettle>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<(), StoreError>>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push(Waiting { settle, answer });
            !std::mem::replace(&mut queue.sending, true)
        };
        if start {
            let mut sender = Sender::new(Arc::clone(self));
            if let Some(batch) = sender.next_batch() {
                sender.send(batch, &send).await;
            }
            if let Some(batch) = sender.next_batch() {
                tokio::spawn(async move {
                    sender.send(batch, &send).await;
                    while let Some(batch) = sender.next_batch() {
                        sender.send(batch, &send).await;
                    }
                });
            }
        }
        answered.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the settle's call to redis was stopped (shutdown)".to_owned(),
            ))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The queue is consistent after every statement: a panic elsewhere
        // leaves nothing half done.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whoever sends the queue (the settle that found no call under way, then a
/// task); while it is responsible, `sending` is true.
struct Sender {
    batcher: Arc<SettleBatcher>,
    /// Still responsible for the queue: cleared when it finds the queue
    /// empty and hands `sending` back.
    responsible: bool,
}

impl Sender {
    fn new(batcher: Arc<SettleBatcher>) -> Self {
        Self {
            batcher,
            responsible: true,
        }
    }

    /// The next batch to send, or `None` when the queue is empty, which
    /// ends this sender's turn: the next settle starts a new one.
    fn next_batch(&mut self) -> Option<Vec<Waiting>> {
        let mut queue = self.batcher.lock();
        if queue.waiting.is_empty() {
            queue.sending = false;
            self.responsible = false;
            return None;
        }
        let n = queue.waiting.len().min(MAX_BATCH);
        Some(queue.waiting.drain(..n).collect())
    }

    /// Sends one batch and answers each of its settles.
    async fn send<F, Fut>(&self, batch: Vec<Waiting>, send: &F)
    where
        F: Fn(Vec<PendingSettle>) -> Fut,
        Fut: Future<Output = Vec<Result<(), StoreError>>>,
    {
        let (settles, answers): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|w| (w.settle, w.answer)).unzip();
        let sent = settles.len();
        let mut results = send(settles).await.into_iter();
        for answer in answers {
            let result = results.next().unwrap_or_else(|| {
                Err(StoreError::Protocol(format!(
                    "the settle script answered fewer than {sent} settles"
                )))
            });
            // The caller may have stopped waiting; its settle is done.
            let _ = answer.send(result);
        }
    }
}

impl Drop for Sender {
    /// Stopped while responsible (its runtime shut down mid-call): the
    /// settles still queued are failed (their callers retry them) and the
    /// next settle starts a new turn.
    fn drop(&mut self) {
        if self.responsible {
            let mut queue = self.batcher.lock();
            queue.sending = false;
            queue.waiting.clear();
        }
    }
}
