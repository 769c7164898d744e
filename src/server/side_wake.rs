//! A connection's own signals (shutdown, cut, a periodic timer) polled
//! only when one of them woke, not on each of the connection's wakes: two
//! or three a request, each of which polled a `CancellationToken`'s future
//! and a `Sleep` again beside the connection in a `tokio::select!`
//! (callgrind: about 600 instructions a request). They are polled with a
//! waker of their own, which notes that one of them woke and wakes the
//! task. Used by HTTP/1's `park.rs` and the other protocols' watch
//! (`connection.rs`).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// What one of a connection's own signals said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// Shut down gracefully: the proxy stops, or the connection was evicted.
    Shutdown,
    /// End now (looked at once closing).
    Cut,
    /// A period passed (looked at until closing); the next one starts.
    Tick,
}

/// A connection's shutdown and cut signals and its periodic timer,
/// polled only on their own wakes.
pub(super) struct ConnectionSignals<'a> {
    wake: SideWake,
    shutdown: Pin<Box<WaitForCancellationFuture<'a>>>,
    cut: Pin<Box<WaitForCancellationFuture<'a>>>,
    tick: Pin<Box<Sleep>>,
    period: Duration,
}

impl<'a> ConnectionSignals<'a> {
    /// Watches `shutdown` and `cut`, and ticks every `period`.
    pub(super) fn new(
        shutdown: &'a CancellationToken,
        cut: &'a CancellationToken,
        period: Duration,
    ) -> Self {
        Self {
            wake: SideWake::new(),
            shutdown: Box::pin(shutdown.cancelled()),
            cut: Box::pin(cut.cancelled()),
            tick: Box::pin(tokio::time::sleep(period)),
            period,
        }
    }

    /// The next signal of the task polled with `cx`: while `closing` only
    /// the cut, otherwise the shutdown and the tick. Polls them only when
    /// one of them woke (or the task's waker changed).
    pub(super) fn poll(&mut self, cx: &Context<'_>, closing: bool) -> Poll<Signal> {
        let Some(mut side) = self.wake.due(cx) else {
            return Poll::Pending;
        };
        let signal = if closing {
            self.cut.as_mut().poll(&mut side).map(|()| Signal::Cut)
        } else if self.shutdown.as_mut().poll(&mut side).is_ready() {
            Poll::Ready(Signal::Shutdown)
        } else {
            self.tick.as_mut().poll(&mut side).map(|()| Signal::Tick)
        };
        if signal == Poll::Ready(Signal::Tick) {
            let next = tokio::time::Instant::now() + self.period;
            self.tick.as_mut().reset(next);
        }
        if signal.is_ready() {
            // What is looked at next (the reset tick, the cut once
            // closing) must be polled once to wake.
            self.wake.refresh();
        }
        signal
    }
}

/// The side futures' waker, with what it notes.
#[derive(Default)]
struct Noted {
    /// One of the side futures woke since they were last polled.
    woke: AtomicBool,
    /// The task to wake then.
    task: Mutex<Option<Waker>>,
}

impl Wake for Noted {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woke.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

/// Tells when a task's side futures must be polled, and gives the
/// context to poll them with.
struct SideWake {
    noted: Arc<Noted>,
    waker: Waker,
    /// The task's waker the side futures wake, once known.
    task: Option<Waker>,
}

impl SideWake {
    /// New: the side futures are polled at the first poll.
    fn new() -> Self {
        let noted = Arc::new(Noted::default());
        noted.woke.store(true, Ordering::Relaxed);
        Self {
            waker: Waker::from(Arc::clone(&noted)),
            noted,
            task: None,
        }
    }

    /// The context to poll the side futures with, when they must be
    /// polled in the task polled with `cx`: one of them woke, or the
    /// task's waker changed.
    fn due(&mut self, cx: &Context<'_>) -> Option<Context<'_>> {
        if !self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let task = cx.waker().clone();
            *self
                .noted
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(task.clone());
            self.task = Some(task);
            self.noted.woke.store(true, Ordering::Relaxed);
        }
        self.noted
            .woke
            .swap(false, Ordering::Acquire)
            .then(|| Context::from_waker(&self.waker))
    }

    /// Has the side futures polled at the next poll: one was reset, or
    /// another is now among those polled, and must be polled to wake.
    fn refresh(&self) {
        self.noted.woke.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;
    use std::time::Duration;

    use super::*;

    /// A side timer is polled at the first poll and when it fires, not on
    /// the task's other wakes; its firing wakes the task.
    #[tokio::test(start_paused = true)]
    async fn side_futures_are_polled_only_when_they_woke() {
        let mut side = SideWake::new();
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::from_secs(1)));
        let mut side_polls = 0;
        let mut main_polls = 0;
        std::future::poll_fn(|cx| {
            main_polls += 1;
            // The main future: wakes its task at once, four times.
            if main_polls < 5 {
                cx.waker().wake_by_ref();
            }
            if let Some(mut side_cx) = side.due(cx) {
                side_polls += 1;
                if timer.as_mut().poll(&mut side_cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await;
        assert!(main_polls >= 5, "{main_polls}");
        // The first poll, and the one after the timer fired.
        assert_eq!(side_polls, 2);
    }
}
