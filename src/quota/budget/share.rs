//! One connection's share of the body budget (phase: read).
//!
//! Problem: an HTTP/1 connection holds one body at a time, so
//! `max_connections_per_ip` (or an ingress's per-client limit) bounds what
//! one client holds; an HTTP/2 connection carries up to 100 requests at
//! once, each with its body, and one such connection filled a 2 MB budget
//! under `max_connections_per_ip = 1` (an attack session), after which
//! every other body waited and got 503. Mechanism: the server puts one
//! [`BodyShare`] in the extensions of every request of an HTTP/2
//! connection; its bodies take their bytes from the share as well as from
//! the budget. Bound: one connection's bodies hold at most
//! [`BodyShare::bytes`] (twice `max_body_bytes`: one body at its largest
//! and its buffer's slack), about two HTTP/1 connections' worth. Price: a
//! connection whose bodies hold its share has its next body wait up to
//! `BUDGET_WAIT` (cutting that connection's stalled bodies), then answered
//! 503, while other clients' bodies are not touched.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

/// One client connection's share of the body budget: the bodies of its
/// requests together hold at most [`BodyShare::bytes`] of it. The server
/// puts one in the extensions of every request of an HTTP/2 connection
/// (an HTTP/1 connection holds one body at a time, and needs none); a
/// server of a library user's may do the same. Clones share it; its size
/// is fixed by its first body, so a reload that changes `max_body_bytes`
/// applies to connections opened after it.
#[derive(Debug, Clone, Default)]
pub struct BodyShare(Arc<OnceLock<Arc<ShareBytes>>>);

/// A [`BodyShare`]'s bytes: free, and in all.
#[derive(Debug)]
pub(super) struct ShareBytes {
    /// Bytes free now.
    pub(super) free: Semaphore,
    /// Bytes in all.
    pub(super) size: u64,
}

impl ShareBytes {
    /// What tells this share from the others, while it lives.
    pub(super) fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

impl BodyShare {
    /// A share with nothing held yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most one connection's bodies hold together, for a
    /// `max_body_bytes` of `max_body`: twice that, more than a single body
    /// holds at its largest (its bytes, plus a buffer grown past them or
    /// its first piece while it is copied), so one body alone never waits
    /// for its share.
    pub fn bytes(max_body: u64) -> u64 {
        max_body
            .saturating_mul(2)
            .min(Semaphore::MAX_PERMITS as u64)
    }

    /// The share's bytes, sized for `max_body` on first use.
    pub(super) fn sized(&self, max_body: u64) -> Arc<ShareBytes> {
        Arc::clone(self.0.get_or_init(|| {
            let size = Self::bytes(max_body);
            Arc::new(ShareBytes {
                free: Semaphore::new(usize::try_from(size).unwrap_or(Semaphore::MAX_PERMITS)),
                size,
            })
        }))
    }
}
