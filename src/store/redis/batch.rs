//! Calls coalesced (phases: admit and settle), for [`super::RedisStore`]:
//! while one call (a pipeline) is under way, the reserves (or settles) that
//! arrive wait; the next call carries all of them, at most [`MAX_BATCH`].
//! An idle store sends each at once, so a batch adds no delay; a storm
//! costs Redis one call (one read, one write) per batch instead of one per
//! request.
//!
//! Exactly once still holds: each item keeps its id (a reserve's new
//! reservation, a settle's reservation) and the commands act on an id once,
//! so a batch sent again after a lost connection, or a settle retried later
//! from the outage queue, reserves and counts nothing twice. Each item gets
//! its own answer; one that Redis refuses fails alone.
//!
//! The item that finds no call under way goes out at once, alone, from its
//! caller's task, so an idle store pays no task and a caller that stops
//! waiting (a client gone, a timeout) takes no one else's answer with it;
//! what queues during that call is sent by a task of its own, so no caller
//! waits for other items than its batch's. A sending task stopped mid-call
//! (its runtime shut down) fails the items it held and the ones queued,
//! with [`StoreError::Unavailable`]; their callers decide as for any store
//! error.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::store::StoreError;

/// Most items in one call (a reserve is 7 commands, a settle 6: a call of
/// 64 is about 40 KB).
pub(super) const MAX_BATCH: usize = 64;

struct Waiting<T, A> {
    item: T,
    answer: oneshot::Sender<Result<A, StoreError>>,
}

struct Queue<T, A> {
    waiting: Vec<Waiting<T, A>>,
    /// A task is sending: what is queued goes out with its next call.
    sending: bool,
}

/// The queue of items `T` (answered with `A`) waiting for the call under
/// way.
pub(super) struct Batcher<T, A> {
    queue: Mutex<Queue<T, A>>,
    /// What an item is, for messages ("reserve", "settle").
    what: &'static str,
    /// An item whose caller stopped waiting is not sent (a reserve: nobody
    /// would settle its reservation); otherwise it is sent all the same (a
    /// settle: the count is owed).
    drop_abandoned: bool,
    /// Longest wait of a queued item for its answer, if bounded: then it
    /// answers [`StoreError::Timeout`] and, being abandoned, is not sent if
    /// its batch has not left. An item sent at once is bounded by its call.
    queued_bound: Option<Duration>,
}

impl<T: Send + 'static, A: Send + 'static> Batcher<T, A> {
    /// An empty queue of `what`s whose callers' waits are not bounded
    /// here (each call is), and which are sent even once their caller
    /// stopped waiting: settles.
    pub(super) fn new(what: &'static str) -> Self {
        Self {
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                sending: false,
            }),
            what,
            drop_abandoned: false,
            queued_bound: None,
        }
    }

    /// An empty queue of `what`s that wait at most `bound` in all (queued,
    /// then sent), as a lone call would, and are not sent once their caller
    /// stopped waiting: reserves.
    pub(super) fn bounded(what: &'static str, bound: Duration) -> Self {
        Self {
            drop_abandoned: true,
            queued_bound: Some(bound),
            ..Self::new(what)
        }
    }

    /// Sends `item` and waits for its answer, `send` being one call for a
    /// batch (answering each item in order). When no call is under way the
    /// item goes out at once, alone, from the caller's own task; otherwise
    /// it queues for the next batch, which a task sends once the call under
    /// way is over.
    pub(super) async fn submit<F, Fut>(self: &Arc<Self>, item: T, send: F) -> Result<A, StoreError>
    where
        F: Fn(Vec<T>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<A, StoreError>>> + Send + 'static,
    {
        // The item back when it is this caller's turn, or the receiver of
        // its answer when it queued.
        let turn_or_queued = {
            let mut queue = self.lock();
            if queue.sending {
                let (answer, answered) = oneshot::channel();
                queue.waiting.push(Waiting { item, answer });
                Err(answered)
            } else {
                queue.sending = true;
                Ok(item)
            }
        };
        let item = match turn_or_queued {
            Ok(item) => item,
            Err(answered) => return self.wait_queued(answered).await,
        };
        // This caller's turn: only its own item rides on its task, so a
        // caller that stops waiting (a client gone, a timeout) takes no one
        // else's answer with it; the turn passes on when it ends either way.
        let turn = Turn {
            batcher: Arc::clone(self),
            send: send.clone(),
            _sends: PhantomData,
        };
        let answer = send(vec![item]).await.pop().unwrap_or_else(|| {
            Err(StoreError::Protocol(format!(
                "redis answered no {}",
                self.what
            )))
        });
        drop(turn);
        answer
    }

    /// The answer of a queued item, within [`Batcher::queued_bound`].
    async fn wait_queued(
        &self,
        answered: oneshot::Receiver<Result<A, StoreError>>,
    ) -> Result<A, StoreError> {
        let answer = match self.queued_bound {
            Some(bound) => match tokio::time::timeout(bound, answered).await {
                Ok(answer) => answer,
                Err(_) => return Err(StoreError::Timeout(bound)),
            },
            None => answered.await,
        };
        answer.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "the {}'s call to redis was stopped (shutdown)",
                self.what
            )))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T, A>> {
        // The queue is consistent after every statement: a panic elsewhere
        // leaves nothing half done.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The turn of a caller that found no call under way. When it ends
/// (answered, or dropped mid-call), what queued meanwhile goes to a task
/// that sends it, or the turn is free again.
struct Turn<T, A, F, Fut>
where
    T: Send + 'static,
    A: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<A, StoreError>>> + Send + 'static,
{
    batcher: Arc<Batcher<T, A>>,
    send: F,
    _sends: PhantomData<fn() -> Fut>,
}

impl<T, A, F, Fut> Drop for Turn<T, A, F, Fut>
where
    T: Send + 'static,
    A: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Result<A, StoreError>>> + Send + 'static,
{
    fn drop(&mut self) {
        {
            let mut queue = self.batcher.lock();
            if queue.waiting.is_empty() {
                queue.sending = false;
                return;
            }
        }
        let mut sender = Sender::new(Arc::clone(&self.batcher));
        let send = self.send.clone();
        let drain = async move {
            while let Some(batch) = sender.next_batch() {
                sender.send(batch, &send).await;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(drain)),
            // No runtime to send from (dropped outside one): the queue is
            // failed when `drain`, never run, drops its sender.
            Err(_) => drop(drain),
        }
    }
}

/// The task that sends the queue, batch after batch; while it is
/// responsible, `sending` is true.
struct Sender<T: Send + 'static, A: Send + 'static> {
    batcher: Arc<Batcher<T, A>>,
    /// Still responsible for the queue: cleared when it finds the queue
    /// empty and hands `sending` back.
    responsible: bool,
}

impl<T: Send + 'static, A: Send + 'static> Sender<T, A> {
    fn new(batcher: Arc<Batcher<T, A>>) -> Self {
        Self {
            batcher,
            responsible: true,
        }
    }

    /// The next batch to send, or `None` when the queue is empty, which
    /// ends this sender's turn: the next item starts a new one.
    fn next_batch(&mut self) -> Option<Vec<Waiting<T, A>>> {
        let mut queue = self.batcher.lock();
        if queue.waiting.is_empty() {
            queue.sending = false;
            self.responsible = false;
            return None;
        }
        let n = queue.waiting.len().min(MAX_BATCH);
        Some(queue.waiting.drain(..n).collect())
    }

    /// Sends one batch and answers each of its items.
    async fn send<F, Fut>(&self, batch: Vec<Waiting<T, A>>, send: &F)
    where
        F: Fn(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<Result<A, StoreError>>>,
    {
        let (items, answers): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .filter(|w| !(self.batcher.drop_abandoned && w.answer.is_closed()))
            .map(|w| (w.item, w.answer))
            .unzip();
        if items.is_empty() {
            return;
        }
        let sent = items.len();
        let what = self.batcher.what;
        let mut results = send(items).await.into_iter();
        for answer in answers {
            let result = results.next().unwrap_or_else(|| {
                Err(StoreError::Protocol(format!(
                    "redis answered fewer than {sent} {what}s"
                )))
            });
            // The caller may have stopped waiting; its item is done.
            let _ = answer.send(result);
        }
    }
}

impl<T: Send + 'static, A: Send + 'static> Drop for Sender<T, A> {
    /// Stopped while responsible (its runtime shut down mid-call, or it
    /// never ran): the items still queued are failed (their callers decide
    /// as for any store error) and the next item starts a new turn.
    fn drop(&mut self) {
        if self.responsible {
            let mut queue = self.batcher.lock();
            queue.sending = false;
            queue.waiting.clear();
        }
    }
}
