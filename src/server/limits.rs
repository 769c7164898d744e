//! Connections open at once (phase: accept): `max_connections` for the
//! process, `max_connections_per_ip` per client address.
//!
//! Problem: each open connection costs memory (about 22 KB once it has
//! served a request, BENCHMARKS.md), so clients opening connections by the
//! thousand and keeping them alive could take the proxy past its
//! container's memory limit, and one address could take every file
//! descriptor. Mechanism: counts shared by every serving thread; a
//! connection past a limit is closed as soon as it is accepted, before
//! anything is read from it (`quota_proxy_connections_refused_total` and
//! `quota_proxy_connections_refused_per_ip_total`). Bound: at most
//! `max_connections` open, and `max_connections_per_ip` from one address;
//! the per-address table holds one entry per address with a connection
//! open (removed at its last close), so it is no larger than the
//! connections themselves.
//!
//! The per-address limit is off by default: many users behind one NAT, or
//! a load balancer that is the only peer, share one address. Set it only
//! when clients connect directly.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The connections open, against the limits; clones share the counts.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    max: u32,
    open: Arc<AtomicU32>,
    per_ip: Option<PerIp>,
}

#[derive(Debug, Clone)]
struct PerIp {
    max: u32,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// Which limit a connection met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_connections` are open.
    Total,
    /// Its address holds `max_connections_per_ip` already.
    PerIp,
}

/// One connection's place in the counts; freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: ConnectionLimits,
    ip: Option<IpAddr>,
}

impl ConnectionLimits {
    /// At most `max` connections open at once, and `per_ip` from one
    /// address when set.
    pub fn new(max: NonZeroU32, per_ip: Option<NonZeroU32>) -> Self {
        Self {
            max: max.get(),
            open: Arc::default(),
            per_ip: per_ip.map(|max| PerIp {
                max: max.get(),
                open: Arc::default(),
            }),
        }
    }

    /// No limit (as many as the process's file descriptors allow).
    pub fn unlimited() -> Self {
        Self::new(NonZeroU32::MAX, None)
    }

    /// A place for one more connection from `ip`, or which limit it met.
    pub(crate) fn open(&self, ip: IpAddr) -> Result<Slot, Refused> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        // From here, dropping the slot gives the place back.
        let mut slot = Slot {
            limits: self.clone(),
            ip: None,
        };
        if let Some(per_ip) = &self.per_ip {
            let mut open = per_ip.open.lock().unwrap_or_else(PoisonError::into_inner);
            let count = open.entry(ip).or_insert(0);
            if *count >= per_ip.max {
                return Err(Refused::PerIp);
            }
            *count += 1;
            slot.ip = Some(ip);
        }
        Ok(slot)
    }

    /// Addresses with a connection open.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.per_ip.as_ref().map_or(0, |per_ip| {
            per_ip
                .open
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
        let (Some(ip), Some(per_ip)) = (self.ip, &self.limits.per_ip) else {
            return;
        };
        let mut open = per_ip.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32, per_ip: Option<u32>) -> ConnectionLimits {
        let n = |n: u32| NonZeroU32::new(n).expect("not zero");
        ConnectionLimits::new(n(max), per_ip.map(n))
    }

    #[test]
    fn an_address_gets_at_most_max_and_its_entry_goes_with_its_last_connection() {
        let limits = limits(100, Some(2));
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let first = limits.open(a).expect("first");
        let second = limits.open(a).expect("second");
        assert_eq!(limits.open(a).err(), Some(Refused::PerIp));
        let other = limits.open(b).expect("another address");
        drop(first);
        let third = limits.open(a).expect("a freed slot");
        drop((second, third, other));
        assert_eq!(limits.addresses(), 0);
        assert_eq!(limits.open.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_process_gets_at_most_max_whatever_the_addresses() {
        let limits = limits(2, Some(5));
        let ip = |n: u8| IpAddr::from([192, 0, 2, n]);
        let first = limits.open(ip(1)).expect("first");
        let second = limits.open(ip(2)).expect("second");
        assert_eq!(limits.open(ip(3)).err(), Some(Refused::Total));
        // A refusal takes no place, in either count.
        assert_eq!(limits.addresses(), 2);
        drop(first);
        let third = limits.open(ip(3)).expect("a freed place");
        drop((second, third));
        assert_eq!(limits.open.load(Ordering::Acquire), 0);
        assert_eq!(limits.addresses(), 0);
    }
}
