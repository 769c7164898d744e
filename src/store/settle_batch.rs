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
//! The calls are sent by a task of their own, so a caller that stops
//! waiting (its request was dropped) never strands the settles queued
//! behind it; if that task itself is stopped (its runtime shut down), every
//! settle it held or that was queued fails with [`StoreError::Unavailable`]
//! and its caller retries it.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::StoreError;
use crate::periods::PeriodWindows;

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
    /// Queues `settle` and waits for its answer. When no call is under way,
    /// starts the task that sends the queue, `send` being one call for a
    /// batch (answering each settle in order), until the queue is empty.
    pub(super) async fn settle<F, Fut>(
        self: &Arc<Self>,
        settle: PendingSettle,
        send: F,
    ) -> Result<(), StoreError>
    where
        F: Fn(Vec<PendingSettle>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<(), StoreError>>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.waiting.push(Waiting { settle, answer });
            !std::mem::replace(&mut queue.sending, true)
        };
        if start {
            tokio::spawn(Sender::new(Arc::clone(self)).run(send));
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

/// The task that sends the queue; while it lives, `sending` is true.
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

    async fn run<F, Fut>(mut self, send: F)
    where
        F: Fn(Vec<PendingSettle>) -> Fut,
        Fut: Future<Output = Vec<Result<(), StoreError>>>,
    {
        loop {
            let batch: Vec<Waiting> = {
                let mut queue = self.batcher.lock();
                if queue.waiting.is_empty() {
                    queue.sending = false;
                    self.responsible = false;
                    return;
                }
                let n = queue.waiting.len().min(MAX_BATCH);
                queue.waiting.drain(..n).collect()
            };
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
}

impl Drop for Sender {
    /// Stopped while responsible (its runtime shut down mid-call): the
    /// settles still queued are failed (their callers retry them) and the
    /// next settle starts a new task.
    fn drop(&mut self) {
        if self.responsible {
            let mut queue = self.batcher.lock();
            queue.sending = false;
            queue.waiting.clear();
        }
    }
}
