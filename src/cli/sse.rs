//! Server-Sent Events out of a byte stream. reqwest hands the body over in
//! chunks cut wherever the network cut it, so lines (and events) arrive in
//! pieces; the decoder keeps the unfinished line and event until the rest
//! comes.

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:`, which a client sends back as `Last-Event-ID` to resume.
    pub id: Option<String>,
    /// `event:`; `message` when the event names none, as the spec says.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

impl Default for SseEvent {
    fn default() -> Self {
        SseEvent {
            id: None,
            event: "message".into(),
            data: String::new(),
        }
    }
}

/// Turns chunks of an event stream into whole events. Comments (`:
/// keep-alive`) and fields the CLI has no use for (`retry:`) are skipped; an
/// event the stream ends inside of is never returned.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The bytes after the last newline: a line still arriving.
    line: Vec<u8>,
    /// The event the lines so far describe.
    event: SseEvent,
    /// Whether `event` has a field yet: blank lines around nothing are no event.
    any: bool,
}

impl Decoder {
    /// Feeds the next chunk; the events it completes, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut done = Vec::new();
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.line_ended(&line) {
                done.push(event);
            }
        }
        self.line.extend_from_slice(rest);
        done
    }

    fn line_ended(&mut self, line: &[u8]) -> Option<SseEvent> {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            return std::mem::take(&mut self.any).then(|| std::mem::take(&mut self.event));
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.event.id = Some(value.to_string()),
            "event" => self.event.event = value.to_string(),
            "data" => {
                if !self.event.data.is_empty() {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(value);
            }
            _ => return None,
        }
        self.any = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, name: &str, data: &str) -> SseEvent {
        SseEvent {
            id: id.map(Into::into),
            event: name.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_cut_anywhere_come_out_whole_and_in_order() {
        let stream = "retry: 1000\n\n: keep-alive\n\nid: 3\nevent: upgrade_step\ndata: {\"step\":\"pulling\"}\n\nevent: result\ndata: {}\n\n";
        let want = vec![
            event(Some("3"), "upgrade_step", "{\"step\":\"pulling\"}"),
            event(None, "result", "{}"),
        ];
        // Every way of cutting the stream in two, and byte by byte.
        for cut in 0..=stream.len() {
            let mut decoder = Decoder::default();
            let mut got = decoder.push(&stream.as_bytes()[..cut]);
            got.extend(decoder.push(&stream.as_bytes()[cut..]));
            assert_eq!(got, want, "cut at {cut}");
        }
        let mut decoder = Decoder::default();
        let got: Vec<SseEvent> = stream.as_bytes().chunks(1).flat_map(|b| decoder.push(b)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn data_lines_join_with_newlines_and_crlf_ends_lines_too() {
        let mut decoder = Decoder::default();
        let got = decoder.push(b"data: one\r\ndata:two\r\n\r\ndata\n\n");
        assert_eq!(
            got,
            vec![event(None, "message", "one\ntwo"), event(None, "message", "")]
        );
    }

    #[test]
    fn an_event_the_stream_ends_inside_of_is_not_returned() {
        let mut decoder = Decoder::default();
        assert_eq!(decoder.push(b"event: result\ndata: {\"http_status\":200}\n"), vec![]);
        assert_eq!(
            decoder.push(b"\n"),
            vec![event(None, "result", "{\"http_status\":200}")]
        );
        assert_eq!(decoder.push(b"event: result\ndata: {}"), vec![]);
    }
}
