//! A closed-loop HTTP/1.1 keep-alive load generator: N connections, each
//! sending its next request as soon as the previous answer is read, until a
//! request count or a deadline is reached, whichever comes first.
//!
//! Requests are written from pre-serialized bytes and answers parsed with
//! `httparse` plus a small chunked-encoding reader, so the generator spends
//! little CPU of the two cores it shares with the servers it measures (the
//! same reason `wrk` is written the way it is). Latency is measured from the
//! first byte written to the last byte read; time to first byte (TTFB) to
//! the first byte of the answer's body. Closed loop: a slow answer delays
//! the next request of its connection, so tail latencies under load are a
//! lower bound (coordinated omission), as with `wrk`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Highest latency a histogram holds: 60 s, in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Most header lines parsed in one answer.
const MAX_HEADERS: usize = 64;

/// What the connections send, and what they expect back.
#[derive(Clone)]
pub struct Workload {
    /// Whole serialized requests, used in turn (request `k` is
    /// `requests[k % len]`), so many users can be spread over the run.
    pub requests: Arc<Vec<Bytes>>,
    /// The status every answer must have; others count as unexpected.
    pub expect_status: u16,
    /// Bytes the answer's body must not contain (e.g. a stripped marker).
    pub forbidden: Option<&'static [u8]>,
}

/// When a run stops: after `max_requests` answers or at `max_time`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most requests sent over all connections.
    pub max_requests: u64,
    /// Longest run.
    pub max_time: Duration,
}

/// The outcome of one run.
pub struct RunStats {
    /// Answers read in full.
    pub requests: u64,
    /// I/O or protocol failures (each closes its connection; it reconnects).
    pub errors: u64,
    /// Answers with another status than expected, or a forbidden body.
    pub unexpected: u64,
    /// The first failure or unexpected answer, for the report.
    pub first_problem: Option<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Request latency, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Time to the first body byte, in nanoseconds.
    pub ttfb: Histogram<u64>,
}

impl RunStats {
    fn new() -> Self {
        Self {
            requests: 0,
            errors: 0,
            unexpected: 0,
            first_problem: None,
            elapsed: Duration::ZERO,
            latency: histogram(),
            ttfb: histogram(),
        }
    }

    /// Answers per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0.5, 0.99, 0.999).
    pub fn latency_at(&self, q: f64) -> Duration {
        Duration::from_nanos(self.latency.value_at_quantile(q))
    }

    /// The time to first byte at quantile `q`.
    pub fn ttfb_at(&self, q: f64) -> Duration {
        Duration::from_nanos(self.ttfb.value_at_quantile(q))
    }

    /// True when every answer was read and expected.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.unexpected == 0 && self.requests > 0
    }

    fn merge(&mut self, other: RunStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.unexpected += other.unexpected;
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
        // Both have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.ttfb.add(&other.ttfb);
    }

    fn problem(&mut self, what: String) {
        if self.first_problem.is_none() {
            self.first_problem = Some(what);
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// One keep-alive client connection.
pub struct Conn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: BytesMut,
}

/// One answer as far as the generator cares.
struct Answer {
    status: u16,
    ttfb: Duration,
    forbidden_seen: bool,
    close: bool,
}

impl Conn {
    /// Opens a connection with `TCP_NODELAY`, as every HTTP client does.
    pub async fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            addr,
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// Sends one request and reads its answer; returns the status.
    pub async fn once(&mut self, request: &[u8]) -> io::Result<u16> {
        let answer = self.exchange(request, Instant::now(), None).await?;
        if answer.close {
            self.reopen().await?;
        }
        Ok(answer.status)
    }

    async fn reopen(&mut self) -> io::Result<()> {
        *self = Conn::open(self.addr).await?;
        Ok(())
    }

    /// Sends one request and reads its whole answer.
    async fn exchange(
        &mut self,
        request: &[u8],
        started: Instant,
        forbidden: Option<&[u8]>,
    ) -> io::Result<Answer> {
        self.stream.write_all(request).await?;
        // The head.
        let (status, head_len, framing, close) = loop {
            if let Some(head) = parse_head(&self.buf)? {
                break head;
            }
            self.fill().await?;
        };
        let mut ttfb = None;
        let mut forbidden_seen = false;
        let body_end = match framing {
            Framing::Length(len) => {
                let end = head_len + len;
                while self.buf.len() < end {
                    if ttfb.is_none() && self.buf.len() > head_len {
                        ttfb = Some(started.elapsed());
                    }
                    self.fill().await?;
                }
                end
            }
            Framing::Chunked => {
                let mut reader = ChunkedReader::new(head_len);
                loop {
                    match reader.advance(&self.buf)? {
                        Some(end) => break end,
                        None => {
                            if ttfb.is_none() && reader.saw_data {
                                ttfb = Some(started.elapsed());
                            }
                            self.fill().await?;
                        }
                    }
                }
            }
        };
        let ttfb = ttfb.unwrap_or_else(|| started.elapsed());
        if let Some(needle) = forbidden {
            forbidden_seen = memchr::memmem::find(&self.buf[head_len..body_end], needle).is_some();
        }
        self.buf.advance(body_end);
        Ok(Answer {
            status,
            ttfb,
            forbidden_seen,
            close,
        })
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection mid-answer",
            )),
            _ => Ok(()),
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
}

/// `(status, head length, framing, connection: close)` once the head is in
/// `buf`; `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> io::Result<Option<(u16, usize, Framing, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let status = response.code.unwrap_or(0);
    let mut framing = Framing::Length(0);
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
            framing = Framing::Length(len);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding")
            && header.value.eq_ignore_ascii_case(b"chunked")
        {
            framing = Framing::Chunked;
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some((status, head_len, framing, close)))
}

/// Walks a chunked body as it arrives, without copying it.
struct ChunkedReader {
    /// Where the next chunk-size line starts.
    pos: usize,
    /// Whether a data byte has been seen.
    saw_data: bool,
}

impl ChunkedReader {
    fn new(body_start: usize) -> Self {
        Self {
            pos: body_start,
            saw_data: false,
        }
    }

    /// The end of the body once it is all in `buf`, else `None`.
    fn advance(&mut self, buf: &[u8]) -> io::Result<Option<usize>> {
        let bad = |what| io::Error::new(io::ErrorKind::InvalidData, what);
        loop {
            let Some(line_len) = find_crlf(&buf[self.pos..]) else {
                return Ok(None);
            };
            let line = &buf[self.pos..self.pos + line_len];
            let digits = line.split(|&b| b == b';').next().unwrap_or_default();
            let text = std::str::from_utf8(digits).map_err(|_| bad("chunk size"))?;
            let size = usize::from_str_radix(text.trim(), 16).map_err(|_| bad("chunk size"))?;
            let data_start = self.pos + line_len + 2;
            if size == 0 {
                // Trailers, then an empty line.
                let mut at = data_start;
                loop {
                    let Some(len) = find_crlf(&buf[at.min(buf.len())..]) else {
                        return Ok(None);
                    };
                    at += len + 2;
                    if len == 0 {
                        return Ok(Some(at));
                    }
                }
            }
            if buf.len() > data_start {
                self.saw_data = true;
            }
            let next = data_start + size + 2;
            if buf.len() < next {
                return Ok(None);
            }
            self.pos = next;
        }
    }
}

/// Where a chunked body that starts at `body_start` in `buf` ends, once it
/// is all there (`None` before). For tests of the reader.
pub fn chunked_body_end(buf: &[u8], body_start: usize) -> io::Result<Option<usize>> {
    ChunkedReader::new(body_start).advance(buf)
}

/// The status and head length of the answer at the start of `buf`, once
/// the head is complete. For tests of the parser.
pub fn head_of(buf: &[u8]) -> io::Result<Option<(u16, usize)>> {
    Ok(parse_head(buf)?.map(|(status, len, _, _)| (status, len)))
}

fn find_crlf(data: &[u8]) -> Option<usize> {
    memchr::memmem::find(data, b"\r\n")
}

/// Opens `n` connections to `addr`.
pub async fn connect(addr: SocketAddr, n: usize) -> io::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(Conn::open(addr).await?);
    }
    Ok(conns)
}

/// Drives `workload` over `conns` until `limits`; gives the connections
/// back (reopened where one failed) with the run's stats. Connections that
/// cannot be reopened are dropped.
pub async fn drive(conns: Vec<Conn>, workload: &Workload, limits: Limits) -> (Vec<Conn>, RunStats) {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + limits.max_time;
    let mut tasks = tokio::task::JoinSet::new();
    for conn in conns {
        let workload = workload.clone();
        let next = Arc::clone(&next);
        tasks.spawn(run_connection(
            conn,
            workload,
            next,
            limits.max_requests,
            deadline,
        ));
    }
    let mut total = RunStats::new();
    let mut back = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((conn, stats)) => {
                back.extend(conn);
                total.merge(stats);
            }
            Err(e) => {
                total.errors += 1;
                total.problem(format!("a connection task failed: {e}"));
            }
        }
    }
    total.elapsed = started.elapsed();
    (back, total)
}

async fn run_connection(
    mut conn: Conn,
    workload: Workload,
    next: Arc<AtomicU64>,
    max_requests: u64,
    deadline: Instant,
) -> (Option<Conn>, RunStats) {
    let mut stats = RunStats::new();
    loop {
        if Instant::now() >= deadline {
            break;
        }
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= max_requests {
            break;
        }
        let request = &workload.requests[(k % workload.requests.len() as u64) as usize];
        let started = Instant::now();
        match conn.exchange(request, started, workload.forbidden).await {
            Ok(answer) => {
                let elapsed = started.elapsed();
                stats.requests += 1;
                stats.latency.saturating_record(elapsed.as_nanos() as u64);
                stats.ttfb.saturating_record(answer.ttfb.as_nanos() as u64);
                if answer.status != workload.expect_status {
                    stats.unexpected += 1;
                    stats.problem(format!(
                        "status {} where {} was expected",
                        answer.status, workload.expect_status
                    ));
                } else if answer.forbidden_seen {
                    stats.unexpected += 1;
                    stats.problem("the body holds bytes it must not".to_owned());
                }
                if answer.close && conn.reopen().await.is_err() {
                    return (None, stats);
                }
            }
            Err(e) => {
                stats.errors += 1;
                stats.problem(format!("request failed: {e}"));
                if conn.reopen().await.is_err() {
                    return (None, stats);
                }
            }
        }
    }
    (Some(conn), stats)
}
