//! One Redis connection per serving thread (phases: reserve and settle).
//!
//! The proxy serves on one current-thread runtime per core
//! (`app::Workers`). A Redis connection is driven by a task on the runtime
//! that opened it, so with one shared connection every store call from a
//! serving thread wakes the thread that drives it, and the answer wakes the
//! serving thread back: two cross-thread wake-ups per call. With
//! [`ThreadConnections`] each serving thread opens a connection of its own,
//! in the background on first use, and uses it once it is ready; until then,
//! or if it cannot be opened, calls go through the shared connection. The
//! connections are closed when the store is dropped (a reload that changed
//! the Redis settings).
//!
//! Only threads that run a current-thread runtime get one: there, the task
//! that opens the connection runs on the same thread that asked.

use std::cell::RefCell;
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::Duration;

use thread_local::ThreadLocal;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::time::Instant;

use super::topology::{Connection, Topology};

/// Wait before a thread tries again to open its connection after a failure.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How one thread stands with its own connection.
enum Slot {
    /// Not asked for yet.
    None,
    /// Being opened by a task on this thread.
    Opening,
    /// Open.
    Ready(Connection),
    /// Failed; may be tried again from this instant.
    Failed(Instant),
}

/// What a connection is opened with, and each thread's connection.
pub(super) struct ThreadConnections {
    topology: Topology,
    root_cert: Option<Vec<u8>>,
    timeout: Duration,
    /// Per thread, with the thread it belongs to: `ThreadLocal` hands a
    /// slot of a thread that ended to a new one, whose runtime (and so
    /// whose connection's driver) is not the old one's.
    slots: ThreadLocal<RefCell<(ThreadId, Slot)>>,
}

impl ThreadConnections {
    /// Connections like the shared one: same topology, roots and timeout.
    pub(super) fn new(topology: Topology, root_cert: Option<Vec<u8>>, timeout: Duration) -> Self {
        Self {
            topology,
            root_cert,
            timeout,
            slots: ThreadLocal::new(),
        }
    }

    /// The calling thread's own connection, if it has one ready. Otherwise
    /// starts opening it (once at a time, not again for [`RETRY_AFTER`]
    /// after a failure) and returns `None`: use the shared connection.
    pub(super) fn get(self: &Arc<Self>) -> Option<Connection> {
        let mut slot = self.slot();
        match &*slot {
            Slot::Ready(connection) => return Some(connection.clone()),
            Slot::Opening => return None,
            Slot::Failed(since) if since.elapsed() < RETRY_AFTER => return None,
            Slot::None | Slot::Failed(_) => {}
        }
        let on_this_thread = Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::CurrentThread);
        if !on_this_thread {
            return None;
        }
        *slot = Slot::Opening;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let opened = tokio::time::timeout(
                this.timeout.saturating_mul(3),
                Connection::open(&this.topology, this.root_cert.as_deref(), this.timeout),
            )
            .await;
            let next = match opened {
                Ok(Ok(connection)) => Slot::Ready(connection),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "no redis connection of this thread's own yet");
                    Slot::Failed(Instant::now())
                }
                Err(_) => Slot::Failed(Instant::now()),
            };
            // A current-thread runtime: this task runs on the thread that
            // asked, so this is that thread's slot.
            *this.slot() = next;
        });
        None
    }

    /// The calling thread's slot, emptied if an ended thread left it.
    fn slot(&self) -> std::cell::RefMut<'_, Slot> {
        let me = std::thread::current().id();
        let cell = self.slots.get_or(|| RefCell::new((me, Slot::None)));
        let mut owned = cell.borrow_mut();
        if owned.0 != me {
            *owned = (me, Slot::None);
        }
        std::cell::RefMut::map(owned, |(_, slot)| slot)
    }
}
