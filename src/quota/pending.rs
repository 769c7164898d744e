//! [`PendingSettlements`]: the admitted requests whose usage is not
//! recorded yet (phase: settle), as shutdown sees them.
//!
//! Shutdown closes the set and waits for it; at the end of its grace it
//! [cuts](PendingSettlements::cut) what is still reading an upstream's
//! answer (a body whose client left, read on for its report): what has
//! already arrived is read, no more can come, and the answer settles as one
//! cut by its upstream does, a flagged request charged one image (fail
//! closed) unless its report had arrived. Otherwise a generation
//! still running at a restart of the proxy alone would save its image and
//! never be counted (`tests/it/store_lifecycle.rs`).

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Admitted requests whose usage is not recorded yet; kept across reloads.
/// Clones share the set.
#[derive(Debug, Clone, Default)]
pub struct PendingSettlements {
    tracker: TaskTracker,
    cut: CancellationToken,
}

impl PendingSettlements {
    /// How many are pending.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// True when none is pending.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Marks the set closed: [`Self::wait`] then ends once it is empty.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Waits until the set is closed and empty.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// Settles at once, as cut before their end, the answers still being
    /// read for a report.
    pub fn cut(&self) {
        self.cut.cancel();
    }

    /// Counts one more as pending until the token is dropped.
    pub(crate) fn token(&self) -> TaskTrackerToken {
        self.tracker.token()
    }

    /// Completes when [`Self::cut`] is called.
    pub(crate) fn cut_signal(&self) -> WaitForCancellationFuture<'_> {
        self.cut.cancelled()
    }
}
