//! In-band usage reports in a streamed body (phase: report).
//!
//! The Django app saves images at the very end of a streamed `text/plain`
//! reply, long after the response head is gone, so it reports them inside
//! the stream: `[IMAGES_SAVED]{"count": 1}[IMAGES_SAVED_END]`. A
//! [`MarkerScanner`] finds such markers as chunks pass, without buffering the
//! stream: it holds back at most `start.len() - 1` bytes (a possible start of
//! a marker split across chunks) plus the marker's payload, which is bounded
//! by [`MAX_PAYLOAD`]. It can strip the markers from what the client sees.

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// Longest payload between the start and end markers; a longer one is not a
/// report and passes through as ordinary text.
pub const MAX_PAYLOAD: usize = 1024;

/// Scans a stream for `start … end` markers carrying a count.
///
/// A chunk with no possible marker in it (the usual case: the marker comes
/// once, at the very end) is passed on without a copy, as a slice of itself.
#[derive(Debug)]
pub struct MarkerScanner {
    start: Box<[u8]>,
    /// Searches for `start`, built once.
    start_finder: memmem::Finder<'static>,
    end: Box<[u8]>,
    strip: bool,
    state: State,
    /// Bytes at the end of what was seen that may begin a start marker; held
    /// back from the output when stripping.
    tail: Vec<u8>,
    images: Option<u64>,
}

#[derive(Debug)]
enum State {
    Scanning,
    /// Inside a marker: the payload read so far (and maybe part of `end`).
    InMarker(Vec<u8>),
}

impl MarkerScanner {
    /// A scanner for markers `start`…`end`; with `strip`, markers are cut
    /// from the output.
    pub fn new(start: &str, end: &str, strip: bool) -> Self {
        Self {
            start: start.as_bytes().into(),
            start_finder: memmem::Finder::new(start.as_bytes()).into_owned(),
            end: end.as_bytes().into(),
            strip,
            state: State::Scanning,
            tail: Vec::new(),
            images: None,
        }
    }

    /// Images reported by the markers seen so far (summed), or `None` when
    /// no marker has been seen.
    pub fn images(&self) -> Option<u64> {
        self.images
    }

    /// Feeds one chunk; returns what to send on. Without stripping that is
    /// the chunk itself; with stripping it is the chunk minus markers, and
    /// may be empty while a possible marker is held back.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        if self.start.is_empty() {
            return chunk;
        }
        // Nothing held back and no marker starting in this chunk: it goes on
        // as it is, but for a possible start of a marker at its very end.
        if matches!(self.state, State::Scanning)
            && self.tail.is_empty()
            && self.start_finder.find(&chunk).is_none()
        {
            let keep = partial_prefix(&chunk, &self.start);
            let cut = chunk.len() - keep;
            self.tail.extend_from_slice(&chunk[cut..]);
            return if self.strip {
                chunk.slice(..cut)
            } else {
                chunk
            };
        }
        let mut out = BytesMut::new();
        self.scan(&chunk, &mut out);
        if self.strip { out.freeze() } else { chunk }
    }

    /// Called at the end of the stream: what is still held back (an
    /// unfinished marker is not a report and is sent as it was).
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if let State::InMarker(payload) = std::mem::replace(&mut self.state, State::Scanning) {
            out.extend_from_slice(&self.start);
            out.extend_from_slice(&payload);
        }
        out.extend_from_slice(&self.tail);
        self.tail.clear();
        if self.strip {
            out.freeze()
        } else {
            Bytes::new()
        }
    }

    fn scan(&mut self, mut data: &[u8], out: &mut BytesMut) {
        loop {
            match &mut self.state {
                State::Scanning => {
                    if !self.tail.is_empty() {
                        // Does a marker start inside the held-back tail?
                        let mut window = std::mem::take(&mut self.tail);
                        let joined = window.len();
                        let take = data.len().min(self.start.len());
                        window.extend_from_slice(&data[..take]);
                        match memmem::find(&window, &self.start).filter(|&p| p < joined) {
                            Some(p) => {
                                out.extend_from_slice(&window[..p]);
                                data = &data[p + self.start.len() - joined..];
                                self.state = State::InMarker(Vec::new());
                                continue;
                            }
                            None if take == data.len() && window.len() < self.start.len() => {
                                // Still too short to decide: keep holding it.
                                self.tail = window;
                                self.shrink_tail(out);
                                return;
                            }
                            None => out.extend_from_slice(&window[..joined]),
                        }
                    }
                    match memmem::find(data, &self.start) {
                        Some(i) => {
                            out.extend_from_slice(&data[..i]);
                            data = &data[i + self.start.len()..];
                            self.state = State::InMarker(Vec::new());
                        }
                        None => {
                            let keep = partial_prefix(data, &self.start);
                            out.extend_from_slice(&data[..data.len() - keep]);
                            self.tail.extend_from_slice(&data[data.len() - keep..]);
                            return;
                        }
                    }
                }
                State::InMarker(payload) => {
                    let before = payload.len();
                    payload.extend_from_slice(data);
                    // The end marker may straddle the previous chunk.
                    let from = before.saturating_sub(self.end.len() - 1);
                    match memmem::find(&payload[from..], &self.end) {
                        Some(j) => {
                            let j = from + j;
                            if j <= MAX_PAYLOAD {
                                let count = parse_count(&payload[..j]);
                                self.images = Some(self.images.unwrap_or(0) + count);
                            } else {
                                out.extend_from_slice(&self.start);
                                out.extend_from_slice(&payload[..j + self.end.len()]);
                            }
                            let consumed = j + self.end.len() - before;
                            data = &data[consumed..];
                            self.state = State::Scanning;
                        }
                        None if payload.len() > MAX_PAYLOAD + self.end.len() => {
                            // Too long to be a report: give the bytes back.
                            let payload = std::mem::take(payload);
                            self.state = State::Scanning;
                            out.extend_from_slice(&self.start);
                            out.extend_from_slice(&payload);
                            return;
                        }
                        None => return,
                    }
                }
            }
        }
    }

    /// Keeps only the part of the tail that can still begin a marker.
    fn shrink_tail(&mut self, out: &mut BytesMut) {
        let keep = partial_prefix(&self.tail, &self.start);
        let cut = self.tail.len() - keep;
        out.extend_from_slice(&self.tail[..cut]);
        self.tail.drain(..cut);
    }
}

/// Length of the longest suffix of `data` that is a proper prefix of `marker`.
fn partial_prefix(data: &[u8], marker: &[u8]) -> usize {
    let max = data.len().min(marker.len() - 1);
    (1..=max)
        .rev()
        .find(|&k| data[data.len() - k..] == marker[..k])
        .unwrap_or(0)
}

/// The count in a marker's payload: a number, or JSON (`{"count": 2}`,
/// `true`, an array). A marker that says nothing readable still reports
/// that images were saved: 1.
fn parse_count(payload: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(payload);
    let text = text.trim();
    if let Ok(n) = text.parse::<u64>() {
        return n;
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) => super::json_count(&value).unwrap_or(1),
        Err(_) => {
            tracing::warn!("unreadable in-band saved-images report; counting 1");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = "[IMAGES_SAVED]";
    const END: &str = "[IMAGES_SAVED_END]";

    fn run(chunks: &[&[u8]], strip: bool) -> (Vec<u8>, Option<u64>) {
        let mut scanner = MarkerScanner::new(START, END, strip);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&scanner.feed(Bytes::copy_from_slice(chunk)));
        }
        out.extend_from_slice(&scanner.finish());
        (out, scanner.images())
    }

    const STREAM: &str = "[USER_MESSAGE]{\"id\":1}[USER_MESSAGE_END]Hello [IMAGES] world\
                          [IMAGES_SAVED]{\"count\": 2}[IMAGES_SAVED_END][TITLE_UPDATE]{}[TITLE_UPDATE_END]";
    const STRIPPED: &str = "[USER_MESSAGE]{\"id\":1}[USER_MESSAGE_END]Hello [IMAGES] world\
                            [TITLE_UPDATE]{}[TITLE_UPDATE_END]";

    #[test]
    fn found_and_stripped_at_every_split() {
        let bytes = STREAM.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let chunks = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                let (out, images) = run(&chunks, true);
                assert_eq!(images, Some(2), "split at {i},{j}");
                assert_eq!(String::from_utf8_lossy(&out), STRIPPED, "split at {i},{j}");
                let (out, images) = run(&chunks, false);
                assert_eq!(images, Some(2), "split at {i},{j}");
                assert_eq!(out, bytes, "unstripped: the stream as it was");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let chunks: Vec<&[u8]> = STREAM.as_bytes().chunks(1).collect();
        let (out, images) = run(&chunks, true);
        assert_eq!(images, Some(2));
        assert_eq!(String::from_utf8_lossy(&out), STRIPPED);
    }

    #[test]
    fn payload_forms() {
        for (payload, want) in [
            ("1", 1),
            (" 3 ", 3),
            ("{\"count\":4}", 4),
            ("true", 1),
            ("x", 1),
        ] {
            let text = format!("a{START}{payload}{END}b");
            let (out, images) = run(&[text.as_bytes()], true);
            assert_eq!(images, Some(want), "{payload}");
            assert_eq!(out, b"ab");
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
    fn unfinished_or_oversized_marker_is_text() {
        let unfinished = format!("a{START}{{\"count\": 1}}");
        let (out, images) = run(&[unfinished.as_bytes()], true);
        assert_eq!(images, None);
        assert_eq!(String::from_utf8_lossy(&out), unfinished);

        let long = format!("a{START}{}{END}b", "x".repeat(MAX_PAYLOAD + 10));
        let (out, images) = run(&[long.as_bytes()], true);
        assert_eq!(images, None);
        assert_eq!(String::from_utf8_lossy(&out), long);
    }

    #[test]
    fn held_back_bytes_are_bounded() {
        let mut scanner = MarkerScanner::new(START, END, true);
        let chunk = b"0123456789abcdef[IMAGES_SA";
        let (mut fed, mut sent) = (0, 0);
        for _ in 0..1000 {
            fed += chunk.len();
            sent += scanner.feed(Bytes::from_static(chunk)).len();
            assert!(fed - sent < START.len(), "holds back less than one marker");
        }
    }

    #[test]
    fn two_markers_sum() {
        let text = format!("{START}1{END}mid{START}2{END}");
        let (out, images) = run(&[text.as_bytes()], true);
        assert_eq!(images, Some(3));
        assert_eq!(out, b"mid");
    }
}
