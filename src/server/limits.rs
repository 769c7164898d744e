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
//! lock the others out. A busy one may never finish (a body dripped a
//! byte at a time, an HTTP/2 client that stopped reading and so never
//! takes its GOAWAY), so at most [`ConnectionLimits::finishing`] evicted
//! connections are left to finish: past that, the oldest of them is cut
//! (closed at once, `quota_proxy_connections_cut_total`; its request's
//! accounting goes on, as when a client goes away). A connection past
//! `max_connections_per_ip` is closed as soon as it is accepted, before
//! anything is read from it (`quota_proxy_connections_refused_per_ip_total`).
//! Bound: `max_connections` open plus at most `max_connections / 8` (at
//! least 1) finishing their last response, and `max_connections_per_ip`
//! from one address; the tables hold one entry per connection and per
//! address with a connection open. The limits also carry the process's
//! budget of HTTP/2 requests beyond each connection's first
//! (`streams.rs`).
//!
//! The per-address limit is off by default: many users behind one NAT, or
//! a load balancer that is the only peer, share one address. Set it only
//! when clients connect directly.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::streams::StreamBudget;

/// The connections open, against the limits; clones share the counts.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    max: u32,
    open: Arc<AtomicU32>,
    /// Each open connection not yet evicted, oldest first: the ones to
    /// shut down when `max` are open.
    by_age: Arc<Mutex<Ages>>,
    next_id: Arc<AtomicU64>,
    per_ip: Option<PerIp>,
    streams: StreamBudget,
    /// How long a connection may take to start a request (see
    /// [`super::HEADER_READ_TIMEOUT`]).
    head_timeout: Duration,
}

/// The connections open by age: those serving, and those evicted and
/// finishing their last response.
#[derive(Debug, Default)]
struct Ages {
    serving: BTreeMap<u64, Signals>,
    /// Each one's `cut`.
    finishing: BTreeMap<u64, CancellationToken>,
}

/// How a connection is told to end.
#[derive(Debug)]
struct Signals {
    shutdown: CancellationToken,
    cut: CancellationToken,
}

#[derive(Debug, Clone)]
struct PerIp {
    max: u32,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// The limit a connection met: its address holds `max_connections_per_ip`
/// already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PerIpFull;

/// One connection's place in the counts; freed when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: ConnectionLimits,
    ip: Option<IpAddr>,
    id: u64,
    /// In the process's count and in `by_age`.
    counted: bool,
    /// Cancelled when the connection is to shut down: the proxy stops, or
    /// it is the oldest when a new one needs its place.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the connection is to close at once: it was evicted
    /// and more than [`ConnectionLimits::finishing`] newer evicted ones
    /// are finishing.
    pub(crate) cut: CancellationToken,
}

impl ConnectionLimits {
    /// At most `max` connections open at once, and `per_ip` from one
    /// address when set; HTTP/2 requests beyond each connection's first
    /// unlimited ([`Self::with_stream_budget`]).
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
            streams: StreamBudget::unlimited(),
            head_timeout: super::HEADER_READ_TIMEOUT,
        }
    }

    /// These limits, with at most `streams` HTTP/2 requests open beyond
    /// each connection's first.
    pub fn with_stream_budget(self, streams: StreamBudget) -> Self {
        Self { streams, ..self }
    }

    /// Whether a connection is one client's: `max_connections_per_ip` is
    /// set, so clients reach the proxy directly.
    pub(super) fn per_client(&self) -> bool {
        self.per_ip.is_some()
    }

    /// The budget of HTTP/2 requests beyond each connection's first.
    pub fn streams(&self) -> &StreamBudget {
        &self.streams
    }

    /// These limits, with `timeout` as the head deadline in place of
    /// [`super::HEADER_READ_TIMEOUT`] (`timeouts.client_head`).
    pub fn with_head_timeout(self, timeout: Duration) -> Self {
        Self {
            head_timeout: timeout,
            ..self
        }
    }

    /// How long a connection may take to start a request, and sit idle
    /// between requests.
    pub fn head_timeout(&self) -> Duration {
        self.head_timeout
    }

    /// No limit (as many as the process's file descriptors allow).
    pub fn unlimited() -> Self {
        Self::new(NonZeroU32::MAX, None)
    }

    /// Evicted connections left to finish their last response at once,
    /// at most: `max_connections / 8`, at least 1.
    pub(crate) fn finishing(&self) -> usize {
        (self.max as usize / 8).max(1)
    }

    /// A place for one more connection from `ip`, shut down with `stop`,
    /// or the limit it met. Past `max`, the oldest connection serving is
    /// told to shut down and this one is let in; past
    /// [`Self::finishing`] of those, the oldest of them is cut.
    pub(crate) fn open(&self, ip: IpAddr, stop: &CancellationToken) -> Result<Slot, PerIpFull> {
        let mut slot = Slot {
            limits: self.clone(),
            ip: None,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            counted: false,
            shutdown: stop.child_token(),
            cut: CancellationToken::new(),
        };
        if let Some(per_ip) = &self.per_ip {
            let mut open = per_ip.open.lock().unwrap_or_else(PoisonError::into_inner);
            let count = open.entry(ip).or_insert(0);
            if *count >= per_ip.max {
                return Err(PerIpFull);
            }
            *count += 1;
            // From here, dropping the slot gives the address's place back.
            slot.ip = Some(ip);
        }
        let mut by_age = self.by_age.lock().unwrap_or_else(PoisonError::into_inner);
        if self.open.load(Ordering::Acquire) >= self.max {
            if let Some((id, oldest)) = by_age.serving.pop_first() {
                oldest.shutdown.cancel();
                by_age.finishing.insert(id, oldest.cut);
                metrics::counter!("quota_proxy_connections_evicted_total").increment(1);
            }
            while by_age.finishing.len() > self.finishing() {
                if let Some((_, oldest)) = by_age.finishing.pop_first() {
                    oldest.cancel();
                    metrics::counter!("quota_proxy_connections_cut_total").increment(1);
                }
            }
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        by_age.serving.insert(
            slot.id,
            Signals {
                shutdown: slot.shutdown.clone(),
                cut: slot.cut.clone(),
            },
        );
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
            let mut by_age = self
                .limits
                .by_age
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            by_age.serving.remove(&self.id);
            by_age.finishing.remove(&self.id);
            drop(by_age);
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
        assert_eq!(limits.open(ip(1), &stop).err(), Some(PerIpFull));
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

    /// Evicted connections that never finish (a dripped body, a client
    /// that stopped reading) cannot pile up: past `finishing` of them the
    /// oldest is cut, so a newcomer always gets in and the count stays
    /// within `max + finishing`. Before, each newcomer evicted one more and
    /// none closed; once every open one was evicted, newcomers were refused.
    #[test]
    fn evicted_connections_that_never_finish_are_cut_past_the_finishing_bound() {
        let limits = limits(16, None);
        assert_eq!(limits.finishing(), 2);
        let stop = CancellationToken::new();
        // None of these ever ends by itself.
        let held: Vec<Slot> = (0..100)
            .map(|n| limits.open(ip(n), &stop).expect("every newcomer gets in"))
            .collect();
        let cut = held.iter().filter(|s| s.cut.is_cancelled()).count();
        let evicted = held.iter().filter(|s| s.shutdown.is_cancelled()).count();
        assert_eq!(evicted, 100 - 16, "all but the newest max were evicted");
        assert_eq!(
            cut,
            100 - 16 - 2,
            "all but the newest `finishing` evicted ones were cut"
        );
        // The cut ones are the oldest; the newest are serving.
        assert!(held[..82].iter().all(|s| s.cut.is_cancelled()));
        assert!(held[82..].iter().all(|s| !s.cut.is_cancelled()));
        assert!(held[84..].iter().all(|s| !s.shutdown.is_cancelled()));
        // Cut connections close: what is left is within the bound.
        let left: Vec<Slot> = held.into_iter().filter(|s| !s.cut.is_cancelled()).collect();
        assert_eq!(limits.open.load(Ordering::Acquire), 18);
        drop(left);
        assert_eq!(limits.open.load(Ordering::Acquire), 0);
        let limits = self::limits(1, None);
        assert_eq!(limits.finishing(), 1, "at least one");
    }
}
