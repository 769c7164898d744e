//! What a Redis has executed, from `INFO stats` and `INFO commandstats`:
//! the commands, round trips and microseconds of a run (issue 21's Redis
//! time per flagged request), and the same per command, so that a run
//! shows which of the store's commands its Redis time went to.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

/// What a Redis has executed so far, from `INFO stats` and `INFO
/// commandstats` (the `INFO` calls themselves left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisCalls {
    /// Every command, including those a Lua script runs inside Redis, but
    /// the proxy's health-check `PING`s (timed, not caused by requests).
    pub commands: u64,
    /// Calls clients wrote at once (a command, or a pipeline of them):
    /// the reads Redis made (`total_reads_processed`), less one per
    /// health-check `PING`. A pipeline over 16 KB (Redis's read size)
    /// counts a read per 16 KB.
    pub round_trips: u64,
    /// Microseconds Redis spent executing what clients sent (`usec`): every
    /// command when no script ran; when one did, only the commands a
    /// client sends itself (`EVALSHA` and the like), since the commands a
    /// script runs are inside its time and adding them would count them
    /// twice. (A store that sent both plain commands and scripts would be
    /// under-counted: the quota store's reserve and settle send no script.)
    pub usec: u64,
    /// Each command counted in `commands`, by its lowercase name
    /// (`commandstats`' own, `client|setinfo` for a subcommand). When a
    /// script ran, the commands it ran are here too, their time inside the
    /// script's: these add up to more than `usec`.
    pub by_command: BTreeMap<String, CommandTime>,
}

/// One command's share of [`RedisCalls`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandTime {
    /// How often it ran.
    pub calls: u64,
    /// Microseconds it took in all.
    pub usec: u64,
}

impl RedisCalls {
    /// The growth from `before` to `self`, less the reads of the two
    /// `INFO` calls that measured it (the end of the first one's
    /// connection, the second one's command).
    pub fn since(&self, before: &RedisCalls) -> RedisCalls {
        let by_command = self
            .by_command
            .iter()
            .map(|(name, now)| {
                let then = before.by_command.get(name).copied().unwrap_or_default();
                let grown = CommandTime {
                    calls: now.calls.saturating_sub(then.calls),
                    usec: now.usec.saturating_sub(then.usec),
                };
                (name.clone(), grown)
            })
            .filter(|(_, grown)| grown.calls > 0)
            .collect();
        RedisCalls {
            commands: self.commands.saturating_sub(before.commands),
            round_trips: self
                .round_trips
                .saturating_sub(before.round_trips)
                .saturating_sub(2),
            usec: self.usec.saturating_sub(before.usec),
            by_command,
        }
    }

    /// What `self` and `other` (two servers, say) executed together.
    pub fn plus(mut self, other: RedisCalls) -> RedisCalls {
        self.commands += other.commands;
        self.round_trips += other.round_trips;
        self.usec += other.usec;
        for (name, time) in other.by_command {
            let sum = self.by_command.entry(name).or_default();
            sum.calls += time.calls;
            sum.usec += time.usec;
        }
        self
    }
}

/// Commands that run a script.
const SCRIPT_COMMANDS: &[&str] = &[
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
];

/// The other commands only a client sends (never a script).
const CLIENT_COMMANDS: &[&str] = &[
    "script", "hello", "client", "select", "auth", "multi", "exec",
];

/// What the Redis on `port` has executed so far.
pub fn redis_calls(port: u16) -> io::Result<RedisCalls> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"INFO stats commandstats\r\n")?;
    // A bulk string: `$<len>\r\n<text>\r\n`.
    let mut answer = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((len, body)) = text.strip_prefix('$').and_then(|t| t.split_once("\r\n"))
            && len.parse::<usize>().is_ok_and(|len| body.len() >= len)
        {
            break;
        }
    }
    Ok(read_calls(&String::from_utf8_lossy(&answer)))
}

/// [`RedisCalls`] from the text of `INFO stats commandstats`.
pub fn read_calls(text: &str) -> RedisCalls {
    let mut calls = RedisCalls::default();
    let (mut all_usec, mut client_usec, mut scripts, mut pings) = (0, 0, 0, 0);
    for line in text.lines() {
        if let Some(reads) = line.strip_prefix("total_reads_processed:") {
            calls.round_trips = reads.trim().parse().unwrap_or(0);
            continue;
        }
        let Some((name, stats)) = line
            .strip_prefix("cmdstat_")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        // `calls=3,usec=40,usec_per_call=13.33,…`
        let field = |key: &str| {
            stats
                .split(',')
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .and_then(|n| n.parse::<u64>().ok())
        };
        let Some(n) = field("calls") else {
            continue;
        };
        // The bench's own `INFO`s, and the proxy's health check: a `PING`
        // every few seconds, sent alone (one read each), whatever the load.
        if name == "info" {
            continue;
        }
        if name == "ping" {
            pings += n;
            continue;
        }
        calls.commands += n;
        let usec = field("usec").unwrap_or(0);
        all_usec += usec;
        calls
            .by_command
            .insert(name.to_owned(), CommandTime { calls: n, usec });
        // `client|setinfo` and the like: the container command counts.
        let base = name.split('|').next().unwrap_or(name);
        let script = SCRIPT_COMMANDS.contains(&base);
        if script || CLIENT_COMMANDS.contains(&base) {
            client_usec += usec;
        }
        if script {
            scripts += n;
        }
    }
    calls.usec = if scripts > 0 { client_usec } else { all_usec };
    calls.round_trips = calls.round_trips.saturating_sub(pings);
    calls
}
