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
//! Bound: each connection may hold a second descriptor (its upstream
//! connection), so `max_connections` × 1.125 (the evicted ones finishing)
//! × 2, plus [`SPARE`] for listeners, Redis, spool files and logs.

use std::io;

use rlimit::Resource;

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
/// `tests/it/review_dec06.rs`).
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

/// The open files `max_connections` may need at once: each connection and
/// its upstream connection, the evicted ones finishing, and [`SPARE`].
pub fn open_files_needed(max_connections: u32) -> u64 {
    connection_files(max_connections) + SPARE
}

/// The descriptors `connections` connections may hold at once: each one
/// and its upstream connection, and the evicted ones finishing.
fn connection_files(connections: u32) -> u64 {
    let connections = u64::from(connections);
    let finishing = (connections / 8).max(1);
    2 * (connections + finishing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_connections_need_more_than_a_containers_soft_limit() {
        // deploy/kubernetes/quota-proxy.toml: 4,096 connections.
        assert_eq!(open_files_needed(4096), 2 * (4096 + 512) + SPARE);
        assert!(open_files_needed(4096) > 1024);
        assert_eq!(open_files_needed(1), 2 * 2 + SPARE);
    }

    #[test]
    fn connections_are_capped_at_what_the_limit_holds() {
        assert_eq!(connections_that_fit(4096, 524_288), 4096);
        let fit = connections_that_fit(4096, 1024);
        assert_eq!(fit, 342);
        assert!(open_files_needed(fit) <= 1024);
        assert!(open_files_needed(fit + 1) > 1024);
        assert_eq!(connections_that_fit(4096, 10), 1, "never none");
        assert_eq!(connections_that_fit(100, 1024), 100);
        // Under 512, half the limit is kept to spare, not 256.
        assert_eq!(connections_that_fit(4096, 512), 114);
        let fit = connections_that_fit(4096, 256);
        assert_eq!(fit, 57, "one connection with a spare of 256");
        assert!(connection_files(fit) + 128 <= 256);
        assert!(connection_files(fit + 1) + 128 > 256);
    }
}
