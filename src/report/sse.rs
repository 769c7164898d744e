//! Usage reports as Server-Sent Events (phase: report): an event of the
//! configured type (`event: images_saved`) whose data is the backend's
//! report, `{"count": 1, "token": "<token>"}` ([`super::in_band`]: without
//! the request's token it is not a report). The stream passes through
//! unchanged; the scanner only reads it, one line at a time, holding at most
//! [`MAX_LINE`] bytes of line and of event data.

use super::count::{ReportRules, UsageReport, in_band};

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
    rules: ReportRules,
    report: Option<UsageReport>,
}

impl SseScanner {
    /// A scanner for events of type `event` read under `rules`.
    pub fn new(event: &str, rules: ReportRules) -> Self {
        Self {
            event: event.as_bytes().into(),
            line: Vec::new(),
            line_too_long: false,
            after_cr: false,
            event_type: Vec::new(),
            data: Vec::new(),
            rules,
            report: None,
        }
    }

    /// What the report events seen so far said (summed, within the bound),
    /// or `None`.
    pub fn report(&self) -> Option<UsageReport> {
        self.report
    }

    /// Bytes held now (a line and an event's data, each under
    /// [`MAX_LINE`]).
    pub fn held(&self) -> usize {
        self.line.len() + self.data.len() + self.event_type.len()
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
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
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
        if let Some(report) = in_band(&data, &self.rules) {
            let max = self.rules.max_images;
            self.report = Some(self.report.unwrap_or_default().plus(report, max));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::count::ReportToken;
    use super::*;

    fn token() -> ReportToken {
        ReportToken::from(42)
    }

    fn data(count: &str) -> String {
        format!(r#"{{"count": {count}, "token": "{}"}}"#, token().as_str())
    }

    fn scanner() -> SseScanner {
        SseScanner::new("images_saved", ReportRules::with_token(token(), 16))
    }

    fn scan(chunks: &[&[u8]]) -> Option<u64> {
        let mut s = scanner();
        for c in chunks {
            s.feed(c);
        }
        s.report().map(|r| r.charged(true))
    }

    #[test]
    fn finds_the_event_at_any_split() {
        let stream = format!(
            "event: token\ndata: hel\n\ndata: lo\n\nevent: images_saved\ndata: {}\n\n",
            data("2")
        );
        let stream = stream.as_bytes();
        for i in 0..=stream.len() {
            assert_eq!(scan(&[&stream[..i], &stream[i..]]), Some(2), "split at {i}");
        }
    }

    #[test]
    fn crlf() {
        let stream = format!("event:images_saved\r\ndata:{}\r\n\r\n", data("1"));
        assert_eq!(scan(&[stream.as_bytes()]), Some(1));
    }

    #[test]
    fn events_without_the_token_do_not_count() {
        assert_eq!(scan(&[b"event: images_saved\ndata: 1\n\n"]), None);
        assert_eq!(
            scan(&[b"event: images_saved\ndata: {\"count\": 1}\n\n"]),
            None
        );
        let other = format!(
            "event: images_saved\ndata: {{\"count\": 1, \"token\": \"{}\"}}\n\n",
            ReportToken::from(43).as_str()
        );
        assert_eq!(scan(&[other.as_bytes()]), None);
    }

    #[test]
    fn counts_are_bounded() {
        let huge = format!(
            "event: images_saved\ndata: {}\n\n",
            data("18446744073709551615")
        );
        assert_eq!(scan(&[huge.as_bytes()]), Some(1), "malformed: one image");
        let many = format!("event: images_saved\ndata: {}\n\n", data("16")).repeat(3);
        assert_eq!(scan(&[many.as_bytes()]), Some(16));
    }

    #[test]
    fn other_events_and_undispatched_ones_do_not_count() {
        let five = data("5");
        assert_eq!(
            scan(&[format!("event: other\ndata: {five}\n\n").as_bytes()]),
            None
        );
        assert_eq!(
            scan(&[format!("event: images_saved\ndata: {five}\n").as_bytes()]),
            None
        );
        assert_eq!(scan(&[b"data: images_saved\n\n"]), None);
    }

    #[test]
    fn long_lines_are_skipped() {
        let mut s = scanner();
        s.feed(b"data: ");
        s.feed(&vec![b'x'; 100_000]);
        assert!(s.held() <= 2 * MAX_LINE);
        s.feed(format!("\n\nevent: images_saved\ndata: {}\n\n", data("3")).as_bytes());
        assert_eq!(s.report(), Some(UsageReport::images(3)));
    }

    #[test]
    fn held_is_the_open_line_the_event_type_and_its_data() {
        let mut s = scanner();
        s.feed(b"event: images_saved\ndata: ab\ndata: c");
        // "images_saved" (12), "ab" (2) and the open line "data: c" (7).
        assert_eq!(s.held(), 12 + 2 + 7);
        s.feed(b"\n\n");
        assert_eq!(s.held(), 0, "dispatched: nothing held");
    }

    #[test]
    fn a_line_of_max_line_bytes_is_read_and_a_longer_one_skipped() {
        for (len, want) in [(MAX_LINE, Some(1)), (MAX_LINE + 1, None)] {
            let line = format!("data: {:<w$}", data("1"), w = len - 6);
            assert_eq!(line.len(), len);
            let stream = format!("event: images_saved\n{line}\n\n");
            assert_eq!(scan(&[stream.as_bytes()]), want, "a {len}-byte line");
        }
    }

    #[test]
    fn data_lines_are_bounded_together() {
        let mut s = scanner();
        s.feed(b"event: images_saved\n");
        let line = [&b"data: "[..], &[b'x'; 1000][..], b"\n"].concat();
        for _ in 0..100 {
            s.feed(&line);
        }
        assert!(s.held() < MAX_LINE + 12, "held {}", s.held());
    }

    #[test]
    fn data_lines_join_with_a_newline_within_the_bound() {
        let t = token();
        let tail = format!(r#""token": "{}"}}"#, t.as_str());
        // The two lines' values together: under MAX_LINE is read, at it the
        // second line is dropped (the report is then cut short: not one).
        for (total, want) in [(MAX_LINE - 1, Some(1)), (MAX_LINE, None)] {
            let head = format!("{:<w$}", r#"{"count": 1,"#, w = total - tail.len());
            let stream = format!("event: images_saved\ndata: {head}\ndata: {tail}\n\n");
            assert_eq!(scan(&[stream.as_bytes()]), want, "{total} bytes of data");
        }
        // Joined with "\n": a count cut in two is not a number.
        let stream = format!("event: images_saved\ndata: {{\"count\": 1\ndata: 6, {tail}\n\n");
        assert_eq!(scan(&[stream.as_bytes()]), None);
    }
}
