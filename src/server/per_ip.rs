//! Connections per client address (phase: accept): `max_connections_per_ip`.
//!
//! Problem: one address opening connections by the thousand (each stalled
//! in its headers or body until its deadline) could take every file
//! descriptor. Mechanism: a count of open connections per address, shared
//! by every serving thread; a connection past the limit is closed as soon
//! as it is accepted, before anything is read from it. Bound: an address
//! holds at most `max_connections_per_ip` connections; the table holds one
//! entry per address with a connection open (removed at its last close),
//! so it is no larger than the connections themselves.
//!
//! Off by default: many users behind one NAT, or a load balancer that is
//! the only peer, share one address. Set it only when clients connect
//! directly.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

/// The open connections of each client address, against a limit; clones
/// share the counts.
#[derive(Debug, Clone)]
pub struct PerIpLimit {
    max: u32,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// One connection's place in its address's count; freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    limit: PerIpLimit,
    ip: IpAddr,
}

impl PerIpLimit {
    /// At most `max` connections open at once from one address.
    pub fn new(max: NonZeroU32) -> Self {
        Self {
            max: max.get(),
            open: Arc::default(),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it holds
    /// `max` already.
    pub(crate) fn open(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            limit: self.clone(),
            ip,
        })
    }

    /// Addresses with a connection open.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_at_most_max_and_its_entry_goes_with_its_last_connection() {
        let limit = PerIpLimit::new(NonZeroU32::new(2).expect("2"));
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = limit.open(a).expect("first");
        let second = limit.open(a).expect("second");
        assert!(limit.open(a).is_none());
        let other = limit.open(b).expect("another address");
        drop(first);
        let third = limit.open(a).expect("a freed slot");
        drop((second, third, other));
        assert_eq!(limit.addresses(), 0);
    }
}
