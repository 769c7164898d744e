//! Usage reports as Server-Sent Events (phase: report): an event of the
//! configured type (`event: images_saved`) whose data holds the count. The
//! stream passes through unchanged; the scanner only reads it, one line at a
//! time, holding at most [`MAX_LINE`] bytes.

/// Longest line kept while scanning; longer lines (big data payloads of
/// other events) are skipped, not buffered.
pub const MAX_LINE: usize = 4096;

/// Reads an `text/event-stream` body for report events.
#[derive(Debug)]
pub struct SseScanner {
    event: Box<[u8]>,
    line: Vec<u8>,
    line_too_long: bool,
    after_cr: bool,
    event_type: Vec<u8>,
    data: Vec<u8>,
    images: Option<u64>,
}

impl SseScanner {
    /// A scanner for events of type `event`.
    pub fn new(event: &str) -> Self {
        Self {
            event: event.as_bytes().into(),
            line: Vec::new(),
            line_too_long: false,
            after_cr: false,
            event_type: Vec::new(),
            data: Vec::new(),
            images: None,
        }
    }

    /// Images reported by the events seen so far (summed), or `None`.
    pub fn images(&self) -> Option<u64> {
        self.images
    }

    /// Reads one chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    self.end_line();
                }
                _ => {
                    self.after_cr = false;
                    if self.line.len() < MAX_LINE {
                        self.line.push(byte);
                    } else {
                        self.line_too_long = true;
                    }
                }
            }
        }
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let too_long = std::mem::replace(&mut self.line_too_long, false);
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if too_long {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &b""[..]),
        };
        match field {
            b"event" => self.event_type = value.to_vec(),
            b"data" if self.data.len() + value.len() < MAX_LINE => {
                if !self.data.is_empty() {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        let event_type = std::mem::take(&mut self.event_type);
        let data = std::mem::take(&mut self.data);
        if event_type[..] != self.event[..] {
            return;
        }
        let text = String::from_utf8_lossy(&data);
        let text = text.trim();
        let count = text.parse::<u64>().ok().or_else(|| {
            serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| super::json_count(&v))
        });
        self.images = Some(self.images.unwrap_or(0) + count.unwrap_or(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]]) -> Option<u64> {
        let mut s = SseScanner::new("images_saved");
        for c in chunks {
            s.feed(c);
        }
        s.images()
    }

    #[test]
    fn finds_the_event_at_any_split() {
        let stream: &[u8] =
            b"event: token\ndata: hel\n\ndata: lo\n\nevent: images_saved\ndata: {\"count\": 2}\n\n";
        for i in 0..=stream.len() {
            assert_eq!(scan(&[&stream[..i], &stream[i..]]), Some(2), "split at {i}");
        }
    }

    #[test]
    fn crlf_and_bare_count() {
        assert_eq!(scan(&[b"event:images_saved\r\ndata:1\r\n\r\n"]), Some(1));
    }

    #[test]
    fn other_events_and_undispatched_ones_do_not_count() {
        assert_eq!(scan(&[b"event: other\ndata: 5\n\n"]), None);
        assert_eq!(scan(&[b"event: images_saved\ndata: 5\n"]), None);
        assert_eq!(scan(&[b"data: images_saved\n\n"]), None);
    }

    #[test]
    fn long_lines_are_skipped() {
        let mut s = SseScanner::new("images_saved");
        s.feed(b"data: ");
        s.feed(&vec![b'x'; 100_000]);
        assert!(s.line.len() <= MAX_LINE);
        s.feed(b"\n\nevent: images_saved\ndata: 3\n\n");
        assert_eq!(s.images(), Some(3));
    }
}
