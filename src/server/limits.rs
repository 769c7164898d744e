//! Connections open at once (phase: accept): `max_connections` for the
//! process, `max_connections_per_ip` per client address.
//!
//! Problem: each open connection costs memory (about 22 KB once it has
//! served a request, BENCHMARKS.md), so clients opening connections by the
//! thousand and keeping them alive could take the proxy past its
//! container's memory limit, and one address could take every file
//! descriptor. Mechanism: counts shared by every serving thread. A new
//! connection past `max_connections` is let in, and the oldest one open is
//! shut down gracefully instead (at once when idle, after its response
//! when busy: `quota_proxy_connections_evicted_total`), as nginx reuses
//! idle keep-alive connections: a client holding every connection cannot
//! lock the others out. A connection past `max_connections_per_ip` is
//! closed as soon as it is accepted, before anything is read from it
//! (`quota_proxy_connections_refused_per_ip_total`). Bound: about
//! `max_connections` open (plus those finishing their last response), and
//! `max_connections_per_ip` from one address; the tables hold one entry
//! per connection and per address with a connection open.
//!
//! The per-address limit is off by default: many users behind one NAT, or
//! a load balancer that is the only peer, share one address. Set it only
//! when clients connect directly.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::CancellationToken;

/// The connections open, against the limits; clones share the counts.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    max: u32,
    open: Arc<AtomicU32>,
    /// Each open connection's shutdown signal, oldest first: the ones to
    /// close when `max` are open.
    by_age: Arc<Mutex<BTreeMap<u64, CancellationToken>>>,
    next_id: Arc<AtomicU64>,
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
    /// `max_connections` are open, each already shutting down.
    Total,
    /// Its address holds `max_connections_per_ip` already.
    PerIp,
}

/// One connection's place in the counts; freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: ConnectionLimits,
    ip: Option<IpAddr>,
    id: u64,
    /// In the process's count (and `by_age` unless evicted).
    counted: bool,
    /// Cancelled when the connection is to shut down: the proxy stops, or
    /// it is the oldest when a new one needs its place.
    pub(crate) shutdown: CancellationToken,
}

impl ConnectionLimits {
    /// At most `max` connections open at once, and `per_ip` from one
    /// address when set.
    pub fn new(max: NonZeroU32, per_ip: Option<NonZeroU32>) -> Self {
        Self {
            max: max.get(),
            open: Arc::default(),
            by_age: Arc::default(),
            next_id: Arc::default(),
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

    /// A place for one more connection from `ip`, shut down with `stop`,
    /// or which limit it met. Past `max`, the oldest connection is told to
    /// shut down and this one is let in.
    pub(crate) fn open(&self, ip: IpAddr, stop: &CancellationToken) -> Result<Slot, Refused> {
        let mut slot = Slot {
            limits: self.clone(),
            ip: None,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            counted: false,
            shutdown: stop.child_token(),
        };
        if let Some(per_ip) = &self.per_ip {
            let mut open = per_ip.open.lock().unwrap_or_else(PoisonError::into_inner);
            let count = open.entry(ip).or_insert(0);
            if *count >= per_ip.max {
                return Err(Refused::PerIp);
            }
            *count += 1;
            // From here, dropping the slot gives the address's place back.
            slot.ip = Some(ip);
        }
        let mut by_age = self.by_age.lock().unwrap_or_else(PoisonError::into_inner);
        if self.open.load(Ordering::Acquire) >= self.max {
            let Some((_, oldest)) = by_age.pop_first() else {
                return Err(Refused::Total);
            };
            oldest.cancel();
            metrics::counter!("quota_proxy_connections_evicted_total").increment(1);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        by_age.insert(slot.id, slot.shutdown.clone());
        slot.counted = true;
        drop(by_age);
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
        if self.counted {
            // An evicted connection left `by_age` already.
            self.limits
                .by_age
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.id);
            self.limits.open.fetch_sub(1, Ordering::AcqRel);
        }
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

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn an_address_gets_at_most_max_and_its_entry_goes_with_its_last_connection() {
        let limits = limits(100, Some(2));
        let stop = CancellationToken::new();
        let first = limits.open(ip(1), &stop).expect("first");
        let second = limits.open(ip(1), &stop).expect("second");
        assert_eq!(limits.open(ip(1), &stop).err(), Some(Refused::PerIp));
        let other = limits.open(ip(2), &stop).expect("another address");
        drop(first);
        let third = limits.open(ip(1), &stop).expect("a freed slot");
        drop((second, third, other));
        assert_eq!(limits.addresses(), 0);
        assert_eq!(limits.open.load(Ordering::Acquire), 0);
    }

    #[test]
    fn past_max_the_oldest_connection_is_told_to_shut_down() {
        let limits = limits(2, None);
        let stop = CancellationToken::new();
        let first = limits.open(ip(1), &stop).expect("first");
        let second = limits.open(ip(2), &stop).expect("second");
        let third = limits.open(ip(3), &stop).expect("let in past max");
        assert!(first.shutdown.is_cancelled(), "the oldest shuts down");
        assert!(!second.shutdown.is_cancelled() && !third.shutdown.is_cancelled());
        // Until it has, the count is over max by one.
        assert_eq!(limits.open.load(Ordering::Acquire), 3);
        drop(first);
        let fourth = limits.open(ip(4), &stop).expect("let in");
        assert!(second.shutdown.is_cancelled());
        drop((second, third, fourth));
        assert_eq!(limits.open.load(Ordering::Acquire), 0);
        // The proxy's stop reaches every connection.
        let last = limits.open(ip(5), &stop).expect("open");
        stop.cancel();
        assert!(last.shutdown.is_cancelled());
    }

    #[test]
    fn when_every_connection_is_shutting_down_a_new_one_is_refused() {
        let limits = limits(1, Some(5));
        let stop = CancellationToken::new();
        let first = limits.open(ip(1), &stop).expect("first");
        let second = limits.open(ip(2), &stop).expect("evicts the first");
        drop(second);
        // The first, evicted, is still open and shutting down: no room.
        assert_eq!(limits.open(ip(3), &stop).err(), Some(Refused::Total));
        // A refusal gives back its address's place.
        assert_eq!(limits.addresses(), 1);
        drop(first);
        let third = limits.open(ip(3), &stop).expect("room again");
        drop(third);
        assert_eq!(limits.open.load(Ordering::Acquire), 0);
        assert_eq!(limits.addresses(), 0);
    }
}
