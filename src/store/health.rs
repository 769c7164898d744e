//! What the proxy knows of its store's health (phase: operations): whether
//! Redis answered the last call that went to it, and why the last failure
//! failed. Read by `/healthz`, the `quota_proxy_store_up` and
//! `quota_proxy_store_breaker_open` gauges and, when
//! `admin.ready_requires_store` is set, `/readyz`. Reading it costs no
//! call to Redis: the store's own calls (and the admin side's periodic
//! ping) keep it current.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use super::StoreError;

/// A snapshot of the store's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreHealth {
    /// `memory` or `redis`.
    pub kind: &'static str,
    /// Redis answered the last call that went to it (the memory store is
    /// always up).
    pub up: bool,
    /// The circuit breaker is open: calls fail at once without trying
    /// Redis, but for a probe now and then.
    pub breaker_open: bool,
    /// Reserves are answered from this replica's memory
    /// (`on_store_error = "local"` during an outage).
    pub local: bool,
    /// Settles queued for Redis.
    pub pending_settles: usize,
    /// Settles given up on since start (logged one by one).
    pub dropped_settles: u64,
    /// Why the last failed call failed, if Redis is down; never a password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl StoreHealth {
    /// The memory store: always up.
    pub fn memory() -> Self {
        Self {
            kind: "memory",
            up: true,
            breaker_open: false,
            local: false,
            pending_settles: 0,
            dropped_settles: 0,
            last_error: None,
        }
    }
}

/// Whether the last call reached Redis.
#[derive(Debug)]
pub(super) struct Reachability {
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Reachability {
    /// Up until a call says otherwise.
    pub(super) fn new() -> Self {
        Self {
            up: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }

    /// Redis answered (maybe with a refusal, which is still an answer).
    pub(super) fn answered(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
            tracing::info!("redis answers again");
        }
    }

    /// Redis did not answer.
    pub(super) fn failed(&self, error: &StoreError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
        self.up.store(false, Ordering::Release);
    }

    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(super) fn last_error(&self) -> Option<String> {
        if self.is_up() {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
