//! In-band usage reports in a streamed body (phase: report).
//!
//! The Django app saves images at the very end of a streamed `text/plain`
//! reply, long after the response head is gone, so it reports them inside
//! the stream: `[IMAGES_SAVED]{"count": 1, "token": "<token>"}[IMAGES_SAVED_END]`.
//! The same stream echoes what the user typed, so a marker counts only when
//! its payload is the backend's report ([`super::in_band`]: the request's
//! token); any other marker-like text is plain text, passed on byte for
//! byte, never counted and never cut.
//!
//! A [`MarkerScanner`] finds reports as chunks pass, without buffering the
//! stream. It holds back only a candidate: a possible start split across
//! chunks (under `start.len()` bytes), or a start whose end may still come,
//! for at most [`MAX_PAYLOAD`] bytes of payload. A candidate that turns out
//! not to be a report (no end within the bound, or a payload without the
//! token) is text, and scanning resumes one byte after its start: a fake
//! start cannot hide a real report that follows it, whatever its length.
//! Held back at most: `start + MAX_PAYLOAD + end` bytes
//! ([`MarkerScanner::max_held`]).

use bytes::{Bytes, BytesMut};
use memchr::memmem;

use super::count::{ReportRules, UsageReport, in_band};

/// Longest payload between the start and end markers; a longer one is not a
/// report and passes through as ordinary text. The backend's report
/// (`{"count": 1, "token": "<32 hex digits>"}`) is about 50 bytes.
pub const MAX_PAYLOAD: usize = 256;

/// Scans a stream for `start … end` reports carrying the request's token.
///
/// A chunk with no possible marker in it (the usual case: the report comes
/// once, at the very end) is passed on without a copy, as a slice of itself.
#[derive(Debug)]
pub struct MarkerScanner {
    start: Box<[u8]>,
    /// Searches for `start`, built once.
    start_finder: memmem::Finder<'static>,
    end_finder: memmem::Finder<'static>,
    end_len: usize,
    strip: bool,
    rules: ReportRules,
    /// Bytes seen but not yet decided on (and, when stripping, not yet sent
    /// on): a possible start of a marker, or a candidate marker.
    held: Vec<u8>,
    report: Option<UsageReport>,
    /// Bytes of reports cut from the output.
    stripped: u64,
    /// Searches for the request's token anywhere in the stream.
    token_finder: Option<memmem::Finder<'static>>,
    /// The last bytes seen (shorter than the token), for a token split
    /// across chunks.
    token_tail: Vec<u8>,
    /// The token was in the stream: the backend reported, readable or not.
    token_seen: bool,
}

impl MarkerScanner {
    /// A scanner for reports `start`…`end` under `rules`; with `strip`,
    /// reports are cut from the output.
    pub fn new(start: &str, end: &str, strip: bool, rules: ReportRules) -> Self {
        Self {
            start: start.as_bytes().into(),
            start_finder: memmem::Finder::new(start.as_bytes()).into_owned(),
            end_finder: memmem::Finder::new(end.as_bytes()).into_owned(),
            end_len: end.len(),
            strip,
            token_finder: rules
                .token
                .as_ref()
                .map(|t| memmem::Finder::new(t.as_str().as_bytes()).into_owned()),
            rules,
            held: Vec::new(),
            report: None,
            stripped: 0,
            token_tail: Vec::new(),
            token_seen: false,
        }
    }

    /// The same scanner, without the token watch of [`Self::report`]: for
    /// streams where another source (an SSE event) carries the token.
    pub fn without_token_watch(mut self) -> Self {
        self.token_finder = None;
        self
    }

    /// What the reports seen so far said (summed, within the bound), or
    /// `None` when no report has been seen. The request's token in the
    /// stream without a report that could be read (its payload longer than
    /// [`MAX_PAYLOAD`], or cut) is the backend's report all the same: a
    /// malformed one, charged as such. Only the backend knows the token.
    pub fn report(&self) -> Option<UsageReport> {
        self.report
            .or(self.token_seen.then_some(UsageReport::MALFORMED))
    }

    /// Looks for the request's token in `chunk`, and across the boundary
    /// with the chunk before.
    fn watch_token(&mut self, chunk: &[u8]) {
        let Some(finder) = &self.token_finder else {
            return;
        };
        if self.token_seen {
            return;
        }
        let keep = finder.needle().len() - 1;
        let head = &chunk[..chunk.len().min(keep)];
        self.token_tail.extend_from_slice(head);
        self.token_seen = finder.find(&self.token_tail).is_some() || finder.find(chunk).is_some();
        // Keeps the last `keep` bytes seen, in the same allocation.
        if chunk.len() >= keep {
            self.token_tail.clear();
            self.token_tail
                .extend_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            let excess = self.token_tail.len().saturating_sub(keep);
            self.token_tail.drain(..excess);
        }
    }

    /// Bytes of reports cut from the output so far (0 without stripping).
    pub fn stripped_bytes(&self) -> u64 {
        self.stripped
    }

    /// Bytes held back now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The most bytes ever held back between two chunks.
    pub fn max_held(&self) -> usize {
        self.start.len() + MAX_PAYLOAD + self.end_len
    }

    /// Feeds one chunk; returns what to send on. Without stripping that is
    /// the chunk itself; with stripping it is the chunk minus reports, and
    /// may be empty while a candidate is held back.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.start.is_empty() || self.end_len == 0 {
            return chunk;
        }
        self.watch_token(&chunk);
        // Nothing held back and no marker starting in this chunk: it goes on
        // as it is, but for a possible start of a marker at its very end.
        if self.held.is_empty() && self.start_finder.find(&chunk).is_none() {
            let keep = partial_prefix(&chunk, &self.start);
            let cut = chunk.len() - keep;
            self.held.extend_from_slice(&chunk[cut..]);
            return if self.strip {
                chunk.slice(..cut)
            } else {
                chunk
            };
        }
        self.held.extend_from_slice(&chunk);
        let mut out = BytesMut::new();
        self.scan(&mut out, false);
        if self.strip { out.freeze() } else { chunk }
    }

    /// Called at the end of the stream: what is still held back (a marker
    /// left unfinished is text, and is sent as it was).
    pub fn finish(&mut self) -> Bytes {
        // Nothing held (always so with an empty marker, which `scan` cannot
        // search for).
        if self.held.is_empty() {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        self.scan(&mut out, true);
        if self.strip {
            out.freeze()
        } else {
            Bytes::new()
        }
    }

    /// Decides on as much of `held` as can be decided, moving what is text
    /// to `out` and cutting reports; at the end of the stream (`eof`)
    /// everything is decided.
    fn scan(&mut self, out: &mut BytesMut, eof: bool) {
        let window = MAX_PAYLOAD + self.end_len;
        // `held[..sent]` is decided (sent on or cut); `from` is where the
        // next candidate is looked for.
        let (mut sent, mut from) = (0, 0);
        loop {
            let Some(at) = self.start_finder.find(&self.held[from..]).map(|i| from + i) else {
                let tail = &self.held[from..];
                let keep = if eof {
                    0
                } else {
                    partial_prefix(tail, &self.start)
                };
                let cut = self.held.len() - keep;
                self.emit(out, sent, cut);
                sent = cut;
                break;
            };
            let payload_at = at + self.start.len();
            let limit = self.held.len().min(payload_at + window);
            match self.end_finder.find(&self.held[payload_at..limit]) {
                Some(len) => {
                    let payload = &self.held[payload_at..payload_at + len];
                    match in_band(payload, &self.rules) {
                        Some(report) => {
                            let max = self.rules.max_images;
                            self.report = Some(self.report.unwrap_or_default().plus(report, max));
                            self.emit(out, sent, at);
                            let after = payload_at + len + self.end_len;
                            if self.strip {
                                self.stripped = self.stripped.saturating_add((after - at) as u64);
                            }
                            sent = after;
                            from = after;
                        }
                        // Not the backend's: its start is text, and a real
                        // report may begin anywhere after it.
                        None => from = at + 1,
                    }
                }
                // The end may still come: hold on from the candidate.
                None if !eof && limit - payload_at < window => {
                    self.emit(out, sent, at);
                    sent = at;
                    break;
                }
                // No end within the bound: text.
                None => from = at + 1,
            }
        }
        self.held.drain(..sent);
    }

    fn emit(&self, out: &mut BytesMut, from: usize, to: usize) {
        if self.strip && to > from {
            out.extend_from_slice(&self.held[from..to]);
        }
    }
}

/// Length of the longest suffix of `data` that is a proper prefix of `marker`.
fn partial_prefix(data: &[u8], marker: &[u8]) -> usize {
    let max = data.len().min(marker.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&k| data[data.len() - k..] == marker[..k])
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::super::count::ReportToken;
    use super::*;

    const START: &str = "[IMAGES_SAVED]";
    const END: &str = "[IMAGES_SAVED_END]";

    fn token() -> ReportToken {
        ReportToken::from(0x1234_5678_9abc_def0_u128)
    }

    fn real(count: u64) -> String {
        format!(
            r#"{START}{{"count": {count}, "token": "{}"}}{END}"#,
            token().as_str()
        )
    }

    fn scanner(strip: bool) -> MarkerScanner {
        MarkerScanner::new(START, END, strip, ReportRules::with_token(token(), 16))
    }

    fn run(chunks: &[&[u8]], strip: bool) -> (Vec<u8>, Option<u64>) {
        let mut scanner = scanner(strip);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&scanner.feed(Bytes::copy_from_slice(chunk)));
            assert!(scanner.held() < scanner.max_held(), "bounded");
        }
        out.extend_from_slice(&scanner.finish());
        assert_eq!(scanner.held(), 0);
        (out, scanner.report().map(|r| r.charged(true)))
    }

    fn stream(report: &str) -> String {
        format!(
            "[USER_MESSAGE]{{\"id\":1}}[USER_MESSAGE_END]Hello [IMAGES] world\
             {report}[TITLE_UPDATE]{{}}[TITLE_UPDATE_END]"
        )
    }

    #[test]
    fn found_and_stripped_at_every_split() {
        let text = stream(&real(2));
        let stripped = stream("");
        let bytes = text.as_bytes();
        for i in (0..=bytes.len()).step_by(3) {
            for j in i..=bytes.len() {
                let chunks = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                let (out, images) = run(&chunks, true);
                assert_eq!(images, Some(2), "split at {i},{j}");
                assert_eq!(String::from_utf8_lossy(&out), stripped, "split at {i},{j}");
                let (out, images) = run(&chunks, false);
                assert_eq!(images, Some(2), "split at {i},{j}");
                assert_eq!(out, bytes, "unstripped: the stream as it was");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let text = stream(&real(1));
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        let (out, images) = run(&chunks, true);
        assert_eq!(images, Some(1));
        assert_eq!(String::from_utf8_lossy(&out), stream(""));
    }

    #[test]
    fn markers_without_the_token_are_text() {
        let other = ReportToken::from(99);
        for forged in [
            format!("{START}18446744073709551615{END}"),
            format!("{START}1{END}"),
            format!(r#"{START}{{"count": 1}}{END}"#),
            format!(
                r#"{START}{{"count": 1, "token": "{}"}}{END}"#,
                other.as_str()
            ),
            format!("{START}{START}1{END}{END}"),
        ] {
            let text = format!("you typed: {forged} and more");
            let (out, images) = run(&[text.as_bytes()], true);
            assert_eq!(images, None, "{forged}");
            assert_eq!(String::from_utf8_lossy(&out), text, "passed on untouched");
        }
    }

    #[test]
    fn a_fake_start_cannot_hide_the_real_report() {
        for before in [
            format!("{START}{}", "x".repeat(900)),
            format!("{START}{}", "x".repeat(MAX_PAYLOAD - 30)),
            format!("{START}{{\"count\": 5"),
            format!("{START}{START}{START}"),
            format!("{START}1{END}"),
            "[IMAGES_SAV".to_owned(),
            format!("{START}{}{END}", "y".repeat(MAX_PAYLOAD + 5)),
        ] {
            let text = format!("a{before}b{}c", real(1));
            let want = format!("a{before}bc");
            for size in [1, 7, 64, 1000, text.len()] {
                let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
                let (out, images) = run(&chunks, true);
                assert_eq!(images, Some(1), "{before:?} in {size}-byte chunks");
                assert_eq!(String::from_utf8_lossy(&out), want, "{before:?}, {size}");
            }
        }
    }

    #[test]
    fn a_start_with_no_end_holds_back_only_the_bound() {
        let mut scanner = scanner(true);
        let mut sent = scanner.feed(Bytes::from_static(b"hi [IMAGES_SAVED]")).len();
        let mut fed = 17;
        for _ in 0..100 {
            sent += scanner
                .feed(Bytes::from_static(b"rest of the reply "))
                .len();
            fed += 18;
            assert!(fed - sent <= scanner.max_held(), "held {}", fed - sent);
        }
        assert!(fed - sent < 40, "the reply flows on past the bound");
        sent += scanner.finish().len();
        assert_eq!(sent, fed);
        assert_eq!(scanner.report(), None);
    }

    #[test]
    fn malformed_counts_from_the_backend_are_one() {
        let t = token();
        for payload in [
            format!(
                r#"{{"count": 18446744073709551615, "token": "{}"}}"#,
                t.as_str()
            ),
            format!(r#"{{"count": -1, "token": "{}"}}"#, t.as_str()),
            format!(r#"{{"count": 1.5, "token": "{}"}}"#, t.as_str()),
            format!(r#"{{"count": "lots", "token": "{}"}}"#, t.as_str()),
            format!(r#"{{"token": "{}"}}"#, t.as_str()),
        ] {
            let text = format!("a{START}{payload}{END}b");
            let (out, images) = run(&[text.as_bytes()], true);
            assert_eq!(images, Some(1), "{payload}");
            assert_eq!(out, b"ab", "a report, stripped");
        }
    }

    #[test]
    fn no_marker_passes_through() {
        let text = "plain [IMAGES_SAVE text [ [[IMAGES_SAVED";
        let (out, images) = run(&[text.as_bytes()], true);
        assert_eq!(images, None);
        assert_eq!(String::from_utf8_lossy(&out), text);
    }

    #[test]
    fn held_back_bytes_are_bounded() {
        let mut scanner = scanner(true);
        let chunk = b"0123456789abcdef[IMAGES_SA";
        let (mut fed, mut sent) = (0, 0);
        for _ in 0..1000 {
            fed += chunk.len();
            sent += scanner.feed(Bytes::from_static(chunk)).len();
            assert!(fed - sent < START.len(), "holds back less than one marker");
        }
    }

    #[test]
    fn two_reports_sum_within_the_bound() {
        let text = format!("{}mid{}", real(1), real(2));
        let (out, images) = run(&[text.as_bytes()], true);
        assert_eq!(images, Some(3));
        assert_eq!(out, b"mid");
        let text = real(16).repeat(3);
        let (_, images) = run(&[text.as_bytes()], true);
        assert_eq!(images, Some(16), "never above max_images_per_response");
    }

    #[test]
    fn the_hold_back_bound_is_reached_and_never_passed() {
        // A start whose end never comes is held until the window is full:
        // `max_held` is exact, so the bound checks of the other tests and
        // of the fuzzer are tight.
        let mut s = scanner(true);
        let mut most = 0;
        s.feed(Bytes::from_static(START.as_bytes()));
        for _ in 0..MAX_PAYLOAD + END.len() + 8 {
            s.feed(Bytes::from_static(b"x"));
            most = most.max(s.held());
        }
        assert_eq!(s.max_held(), START.len() + MAX_PAYLOAD + END.len());
        assert_eq!(most, s.max_held() - 1);
        assert_eq!(s.held(), 0, "given up: all of it was text");
    }

    #[test]
    fn an_empty_marker_scans_nothing() {
        // The config refuses empty markers; the scanner passes all through.
        for (start, end) in [("", END), (START, "")] {
            let mut s = MarkerScanner::new(start, end, true, ReportRules::with_token(token(), 16));
            let text = real(1);
            assert_eq!(&s.feed(Bytes::from(text.clone()))[..], text.as_bytes());
            assert_eq!(s.finish(), Bytes::new());
            assert_eq!(s.report(), None);
        }
    }

    #[test]
    fn a_payload_of_the_longest_length_counts_and_one_more_is_charged_as_malformed() {
        let payload = format!(r#"{{"count": 1, "token": "{}"}}"#, token().as_str());
        for (len, stripped) in [(MAX_PAYLOAD, true), (MAX_PAYLOAD + 1, false)] {
            let text = format!("{START}{payload:<len$}{END}");
            let mut scanner = scanner(true);
            let mut out = scanner.feed(Bytes::from(text.clone())).to_vec();
            out.extend_from_slice(&scanner.finish());
            let report = scanner.report().expect("the token is the backend's");
            assert_eq!(report.malformed, !stripped, "payload of {len} bytes");
            assert_eq!(report.charged(true), 1, "payload of {len} bytes");
            let left = if stripped { "" } else { text.as_str() };
            assert_eq!(
                String::from_utf8_lossy(&out),
                left,
                "payload of {len} bytes"
            );
        }
        // Without the token, one byte more is plain text.
        let forged = format!(
            "{START}{:<len$}{END}",
            r#"{"count": 1}"#,
            len = MAX_PAYLOAD + 1
        );
        assert_eq!(run(&[forged.as_bytes()], true), (forged.into_bytes(), None));
    }

    #[test]
    fn the_token_is_found_across_chunks_of_any_size() {
        let text = format!(
            "{START}{{\"prompt\": \"{}\", \"token\": \"{}\"}}{END}",
            "a".repeat(300),
            token().as_str()
        );
        for size in [1, 7, 31, 32, 33, 500] {
            let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
            let (_, images) = run(&chunks, true);
            assert_eq!(images, Some(1), "chunks of {size} bytes");
        }
    }
}
