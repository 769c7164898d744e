//! Even shares of client connections across the serving threads (phase:
//! accept).
//!
//! Every serving thread accepts from the same socket. Left alone, the
//! first thread awake takes a whole burst: the kernel wakes them all, and
//! the winner's loop accepts again before the others have run. In a test
//! of four bursts of 64 keep-alive connections on two threads, two bursts
//! landed wholly on one thread. Keep-alive connections stay where they
//! land, so one thread served everything while the other idled, and a
//! load balancer holding a few long-lived connections gets the same.
//!
//! So a thread that holds more open connections than another lets that
//! one accept first: it waits until the counts change, or [`BALANCE_WAIT`]
//! at most, so that a thread that stalls cannot stop the others from
//! accepting (it slows them to one connection per wait instead).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The longest a thread holding more connections than another waits for
/// that one to accept before accepting itself.
pub const BALANCE_WAIT: Duration = Duration::from_millis(5);

/// What a share holds while its thread is not serving (not started yet, or
/// stopped): never fewer than anyone, so no thread waits for it.
const ABSENT: usize = usize::MAX;

/// One serving thread's share of the connections: its own count, and the
/// others' to compare with.
#[derive(Debug)]
pub struct AcceptBalance {
    open: Arc<[AtomicUsize]>,
    index: usize,
    changed: Arc<Notify>,
}

impl AcceptBalance {
    /// One share for each of `threads` threads.
    pub fn shares(threads: usize) -> Vec<Self> {
        let open: Arc<[AtomicUsize]> = (0..threads.max(1))
            .map(|_| AtomicUsize::new(ABSENT))
            .collect();
        let changed = Arc::new(Notify::new());
        (0..open.len())
            .map(|index| Self {
                open: Arc::clone(&open),
                index,
                changed: Arc::clone(&changed),
            })
            .collect()
    }

    /// The share of a listener that one thread serves alone: it never
    /// waits.
    pub fn alone() -> Self {
        Self::shares(1).remove(0)
    }

    /// Records that this share's thread serves, holding `open`
    /// connections, and wakes the threads waiting for their turn. An accept
    /// loop calls it when it starts and whenever its count changes.
    pub fn set_open(&self, open: usize) {
        self.set(open);
    }

    fn set(&self, value: usize) {
        if self.open[self.index].swap(value, Ordering::Relaxed) != value {
            self.changed.notify_waiters();
        }
    }

    /// Whether another serving thread holds fewer connections than this
    /// one.
    fn ahead(&self) -> bool {
        let mine = self.open[self.index].load(Ordering::Relaxed);
        self.open
            .iter()
            .any(|other| other.load(Ordering::Relaxed) < mine)
    }

    /// Returns when it is this thread's turn to accept: no serving thread
    /// holds fewer connections, or [`BALANCE_WAIT`] has passed. An accept
    /// loop awaits it before each accept.
    pub async fn turn(&self) {
        let mut deadline = None;
        loop {
            // Made before the check, so a change in between still wakes it.
            let changed = self.changed.notified();
            if !self.ahead() {
                return;
            }
            let deadline =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + BALANCE_WAIT);
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

/// A share dropped (its serving loop ended, even by a panic, or its thread
/// never started one) is no longer waited for.
impl Drop for AcceptBalance {
    fn drop(&mut self) {
        self.set(ABSENT);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::Poll;

    use super::*;

    /// Two threads' shares, holding `a` and `b` connections.
    fn pair(a: usize, b: usize) -> [AcceptBalance; 2] {
        let shares: [AcceptBalance; 2] = AcceptBalance::shares(2).try_into().expect("two");
        shares[0].set_open(a);
        shares[1].set_open(b);
        shares
    }

    /// Whether `turn` is still waiting after everything ready has run.
    async fn waits(turn: &mut std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(turn.as_mut().poll(cx).is_pending())).await
    }

    #[tokio::test(start_paused = true)]
    async fn the_thread_holding_more_waits_until_the_other_catches_up() {
        let [a, b] = pair(1, 0);
        let mut turn = pin!(a.turn());
        assert!(waits(&mut turn).await, "a holds more than b: it waits");
        b.set_open(1);
        assert!(!waits(&mut turn).await, "b caught up: a's turn");
        // b was not ahead at any point.
        b.turn().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_thread_holds_the_others_back_only_so_long() {
        // b holds on to its share without accepting: stalled.
        let [a, _b] = pair(3, 0);
        let mut turn = pin!(a.turn());
        assert!(waits(&mut turn).await);
        tokio::time::advance(BALANCE_WAIT - Duration::from_millis(1)).await;
        assert!(waits(&mut turn).await, "still within the wait");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!waits(&mut turn).await, "the wait is over: a accepts");
    }

    #[tokio::test(start_paused = true)]
    async fn threads_not_serving_are_not_waited_for() {
        let [a, b, c]: [AcceptBalance; 3] = AcceptBalance::shares(3).try_into().expect("three");
        a.set_open(5);
        // b never started; c served, then its loop ended.
        c.set_open(0);
        drop(c);
        assert_eq!(b.open[b.index].load(Ordering::Relaxed), ABSENT);
        let mut turn = pin!(a.turn());
        assert!(!waits(&mut turn).await);
        assert!(!AcceptBalance::alone().ahead());
    }
}
