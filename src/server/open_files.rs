//! The process's limit of open files (phase: startup): raised to what the
//! system allows, and compared with what `max_connections` needs.
//!
//! Problem: container runtimes start a process with a soft limit of 1024
//! open files and a far higher hard one (containerd 2 and Docker 29: 1024
//! and 524288), leaving the process to raise the soft one if it needs
//! more. Past the soft limit `accept` fails (EMFILE): no newcomer gets in,
//! none is evicted to make room (`limits.rs` only sees what was accepted),
//! and no upstream or Redis connection can be opened, until connections
//! close by themselves (a flood's silent ones 30 s later). The shipped
//! sidecar allows 4,096 connections. Mechanism: the binary raises the soft
//! limit to the hard one at startup, as Go's runtime does for every Go
//! program; where even that cannot hold `max_connections`, the proxy keeps
//! fewer open ([`connections_that_fit`]), so the oldest are evicted to let
//! newcomers in before `accept` fails (logged at startup).
//! Bound: each connection may hold a second descriptor (its request's
//! upstream connection), and an HTTP/2 one more (its further requests',
//! within the process's budget: `streams.rs`). So a connection counts
//! three: `max_connections` × 1.125 (the evicted ones finishing) × 3, plus
//! [`SPARE`] for listeners, Redis, spool files and logs. What is left
//! beside the connections' own two is the HTTP/2 budget
//! ([`extra_streams_that_fit`]), at least one request per connection.

use std::io;

use rlimit::Resource;

use super::H2_MAX_STREAMS;

/// Descriptors kept for what is not a client or upstream connection:
/// listeners, Redis connections, spool files, the runtime's own.
pub(super) const SPARE: u64 = 256;

/// The open-files limit before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    /// The soft limit the process was started with.
    pub before: u64,
    /// The soft limit now (the hard limit, or on macOS the most a process
    /// may open when the hard one is `RLIM_INFINITY`).
    pub now: u64,
}

/// Raises the soft limit of open files (`RLIMIT_NOFILE`) to the hard one,
/// or where the hard one is `RLIM_INFINITY` (macOS), which `setrlimit`
/// refuses as a soft limit, to the most a process may open
/// (`kern.maxfilesperproc`): the rlimit crate's `increase_nofile_limit`.
pub fn raise_open_files_limit() -> io::Result<OpenFiles> {
    let before = Resource::NOFILE.get_soft()?;
    let now = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok(OpenFiles { before, now })
}

/// The soft limit of open files of the process now, if known.
pub fn open_files_limit() -> Option<u64> {
    Resource::NOFILE.get_soft().ok()
}

/// The most connections to keep open within `limit` open files, at most
/// `max_connections`: past it, the oldest are evicted to let newcomers in
/// (`limits.rs`) before `accept` fails for want of a descriptor, which
/// would let no newcomer in at all. Under a limit of `2 ×` [`SPARE`] half
/// of it is kept to spare instead: the process itself holds about 12
/// descriptors and 5 per serving thread, and a full [`SPARE`] left one
/// connection under 260 (a third request at once cut the first;
/// `tests/it/open_files.rs`).
pub fn connections_that_fit(max_connections: u32, limit: u64) -> u32 {
    let spare = SPARE.min(limit / 2);
    let fits = |n: u32| connection_files(n) + spare <= limit;
    if fits(max_connections) {
        return max_connections;
    }
    // The largest n that fits (what n needs grows with n).
    let (mut fits_n, mut too_many) = (0, max_connections);
    while too_many - fits_n > 1 {
        let n = fits_n + (too_many - fits_n) / 2;
        if fits(n) {
            fits_n = n;
        } else {
            too_many = n;
        }
    }
    fits_n.max(1)
}

/// The open files `max_connections` may need at once: three for each
/// connection and for each evicted one finishing (see the module), and
/// [`SPARE`].
pub fn open_files_needed(max_connections: u32) -> u64 {
    connection_files(max_connections) + SPARE
}

/// HTTP/2 requests that may be open beyond each connection's first, with
/// `connections` connections kept open within `limit` open files: the
/// descriptors left beside each connection's own two and the spare, at
/// most what the connections can open (`H2_MAX_STREAMS` − 1 each).
pub fn extra_streams_that_fit(connections: u32, limit: u64) -> usize {
    let spare = SPARE.min(limit / 2);
    let own = 2 * with_finishing(connections);
    let left = limit.saturating_sub(own + spare);
    let most = with_finishing(connections) * u64::from(H2_MAX_STREAMS - 1);
    usize::try_from(left.min(most)).unwrap_or(usize::MAX)
}

/// The descriptors `connections` connections may hold at once: three for
/// each one and for each evicted one finishing.
fn connection_files(connections: u32) -> u64 {
    3 * with_finishing(connections)
}

/// `connections` and the evicted ones finishing beside them.
fn with_finishing(connections: u32) -> u64 {
    let connections = u64::from(connections);
    connections + (connections / 8).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_connections_need_more_than_a_containers_soft_limit() {
        // deploy/kubernetes/quota-proxy.toml: 4,096 connections.
        assert_eq!(open_files_needed(4096), 3 * (4096 + 512) + SPARE);
        assert!(open_files_needed(4096) > 1024);
        assert_eq!(open_files_needed(1), 3 * 2 + SPARE);
    }

    #[test]
    fn connections_are_capped_at_what_the_limit_holds() {
        assert_eq!(connections_that_fit(4096, 524_288), 4096);
        let fit = connections_that_fit(4096, 1024);
        assert_eq!(fit, 228);
        assert!(open_files_needed(fit) <= 1024);
        assert!(open_files_needed(fit + 1) > 1024);
        assert_eq!(connections_that_fit(4096, 10), 1, "never none");
        assert_eq!(connections_that_fit(100, 1024), 100);
        // Under 512, half the limit is kept to spare, not 256.
        assert_eq!(connections_that_fit(4096, 512), 76);
        let fit = connections_that_fit(4096, 256);
        assert_eq!(fit, 38, "one connection with a spare of 256");
        assert!(connection_files(fit) + 128 <= 256);
        assert!(connection_files(fit + 1) + 128 > 256);
    }

    /// The HTTP/2 budget is what the connections' own descriptors and the
    /// spare leave: at least one more request per connection where the
    /// connections were capped, and never more than they can open.
    #[test]
    fn the_http2_budget_is_what_the_connections_leave() {
        for limit in [256, 400, 512, 1024, 4096, 65_536] {
            let fit = connections_that_fit(4096, limit);
            let extra = extra_streams_that_fit(fit, limit) as u64;
            let spare = SPARE.min(limit / 2);
            assert!(
                2 * with_finishing(fit) + extra + spare <= limit,
                "within {limit}"
            );
            assert!(extra >= with_finishing(fit), "{extra} under {limit}");
        }
        // The shipped systemd unit: LimitNOFILE=65536, 4,096 connections.
        assert_eq!(extra_streams_that_fit(4096, 65_536), 65_536 - 9216 - 256);
        assert_eq!(extra_streams_that_fit(228, 1024), 256);
        // A container's hard limit: more than the connections can open.
        assert_eq!(extra_streams_that_fit(4096, 524_288), 4608 * 99);
    }
}
