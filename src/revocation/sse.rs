//! The Server-Sent Events parser the revocation feed reads its stream with: bytes in, events
//! out, the last event id kept for resuming.

/// Longest SSE line the edge buffers; a longer one is skipped (and its event counted malformed).
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// One dispatched event, or an event that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event {
        kind: String,
        data: String,
    },
    /// An event with a line longer than [`MAX_LINE_BYTES`] (skipped, not parsed).
    Oversized,
}

/// Turns a byte stream into events; keeps the last event id for resuming.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    skip_lf: bool,
    discarding: bool,
    poisoned: bool,
    kind: String,
    data: String,
    id_buffer: Option<String>,
    last_event_id: Option<String>,
    started: bool,
}

impl SseParser {
    /// A parser for a new connection: nothing half-read carries over, only the id to resume from.
    pub fn resuming(last_event_id: Option<String>) -> SseParser {
        SseParser {
            last_event_id,
            ..SseParser::default()
        }
    }

    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseItem> {
        let mut out = Vec::new();
        for &b in bytes {
            if self.skip_lf {
                self.skip_lf = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' | b'\n' => {
                    self.skip_lf = b == b'\r';
                    if self.discarding {
                        self.discarding = false;
                    } else {
                        let line = std::mem::take(&mut self.line);
                        self.line_done(&line, &mut out);
                    }
                }
                _ if self.discarding => {}
                _ => {
                    if self.line.len() >= MAX_LINE_BYTES {
                        self.line.clear();
                        self.discarding = true;
                        self.poisoned = true;
                    } else {
                        self.line.push(b);
                    }
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseItem>) {
        // A UTF-8 byte-order mark may open the stream; it is not part of the first line.
        let line = if !self.started {
            self.started = true;
            line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
        } else {
            line
        };
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "event" => self.kind = value.to_string(),
            "data" => {
                if self.data.len() + value.len() > MAX_LINE_BYTES {
                    self.poisoned = true;
                } else {
                    self.data.push_str(value);
                    self.data.push('\n');
                }
            }
            // An empty id clears the last event id (nothing to resume from).
            "id" if !value.contains('\0') => self.id_buffer = Some(value.to_string()),
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseItem>) {
        if let Some(id) = &self.id_buffer {
            self.last_event_id = (!id.is_empty()).then(|| id.clone());
        }
        let kind = std::mem::take(&mut self.kind);
        let mut data = std::mem::take(&mut self.data);
        if std::mem::take(&mut self.poisoned) {
            out.push(SseItem::Oversized);
            return;
        }
        if data.is_empty() {
            return;
        }
        data.pop();
        out.push(SseItem::Event {
            kind: if kind.is_empty() {
                "message".into()
            } else {
                kind
            },
            data,
        });
    }
}

// ---------------------------------------------------------------------------
// The subscription
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: &str) -> SseItem {
        SseItem::Event {
            kind: kind.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_are_split_on_blank_lines_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: revocation\nid: 7\nda").is_empty());
        assert_eq!(
            p.push(b"ta: {\"a\":1}\n\n"),
            vec![event("revocation", "{\"a\":1}")]
        );
        assert_eq!(p.last_event_id(), Some("7"));
    }

    #[test]
    fn comments_are_ignored_and_crlf_is_a_line_end() {
        let mut p = SseParser::default();
        assert_eq!(
            p.push(b": ping\r\n\r\ndata: x\r\ndata: y\r\n\r\n"),
            vec![event("message", "x\ny")]
        );
    }

    #[test]
    fn a_new_connection_keeps_only_the_id_to_resume_from() {
        let mut p = SseParser::default();
        p.push(b"id: 9\ndata: x\n\nevent: revocation\ndata: half");
        let mut next = SseParser::resuming(p.last_event_id().map(str::to_string));
        assert_eq!(next.last_event_id(), Some("9"));
        assert_eq!(next.push(b"data: y\n\n"), vec![event("message", "y")]);
    }

    #[test]
    fn a_leading_byte_order_mark_is_ignored() {
        let mut p = SseParser::default();
        assert_eq!(
            p.push(b"\xEF\xBB\xBFevent: reset\ndata: {}\n\n"),
            vec![event("reset", "{}")]
        );
    }

    #[test]
    fn an_empty_id_clears_the_last_event_id() {
        let mut p = SseParser::default();
        p.push(b"id: 5\ndata: x\n\n");
        assert_eq!(p.last_event_id(), Some("5"));
        p.push(b"id:\ndata: y\n\n");
        assert_eq!(p.last_event_id(), None);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: reset\n\n").is_empty());
        assert_eq!(
            p.push(b"event: reset\ndata: {}\n\n"),
            vec![event("reset", "{}")]
        );
    }

    #[test]
    fn an_oversized_line_is_skipped_and_the_stream_goes_on() {
        let mut p = SseParser::default();
        let mut input = b"event: revocation\ndata: ".to_vec();
        input.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES + 10));
        input.extend_from_slice(b"\n\nevent: revocation\ndata: ok\n\n");
        assert_eq!(
            p.push(&input),
            vec![SseItem::Oversized, event("revocation", "ok")]
        );
    }
}
