//! Server-Sent Events over a raw HTTP/1.1 connection with chunked transfer encoding, written
//! and flushed event by event (a buffering encoder would hold tokens back), and the text deltas
//! of streamed choices.

use std::io::{self, Write};

/// The response head and the event chunks of one streamed response.
pub struct SseWriter {
    out: Box<dyn Write + Send>,
}

impl SseWriter {
    /// Writes the response head; `keep_alive`: the connection stays open after the stream.
    pub fn start(mut out: Box<dyn Write + Send>, keep_alive: bool) -> io::Result<Self> {
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             Transfer-Encoding: chunked\r\nConnection: {}\r\n\r\n",
            if keep_alive { "keep-alive" } else { "close" }
        )?;
        out.flush()?;
        Ok(SseWriter { out })
    }

    /// Sends `data: {payload}` as one event.
    pub fn event(&mut self, payload: &str) -> io::Result<()> {
        let data = format!("data: {payload}\n\n");
        write!(self.out, "{:x}\r\n", data.len())?;
        self.out.write_all(data.as_bytes())?;
        self.out.write_all(b"\r\n")?;
        self.out.flush()
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.event("[DONE]")?;
        self.out.write_all(b"0\r\n\r\n")?;
        self.out.flush()
    }
}

/// Tracks what of one choice's text was already sent, so that the concatenated deltas equal the
/// final text: text that may still change is held back — a tail that could be the start of a
/// stop string (the final text is cut before it) and an incomplete UTF-8 sequence (decoded as
/// U+FFFD until its last byte arrives).
#[derive(Debug, Default)]
pub struct DeltaTracker {
    sent: String,
}

impl DeltaTracker {
    /// The new text to send given the text so far (possibly empty).
    pub fn step(&mut self, text: &str, stop: &[String]) -> String {
        let safe = &text[..text.len() - holdback(text, stop)];
        self.advance(safe)
    }

    /// The rest of the final text.
    pub fn finish(&mut self, text: &str) -> String {
        self.advance(text)
    }

    fn advance(&mut self, safe: &str) -> String {
        match safe.strip_prefix(self.sent.as_str()) {
            Some(rest) if !rest.is_empty() => {
                let rest = rest.to_owned();
                self.sent.push_str(&rest);
                rest
            }
            Some(_) => String::new(),
            None => {
                // The decoded prefix changed under us (a tokenizer merging across tokens); what
                // was sent cannot be taken back, so send nothing until the text agrees again.
                tracing::debug!("streamed text diverged from the decoded text; holding back");
                String::new()
            }
        }
    }
}

/// Bytes at the end of `text` that must not be sent yet.
fn holdback(text: &str, stop: &[String]) -> usize {
    let mut hold = 0;
    for s in stop {
        for k in (1..s.len()).rev() {
            if s.is_char_boundary(k) && k > hold && text.ends_with(&s[..k]) {
                hold = k;
                break;
            }
        }
    }
    let replacement = text
        .chars()
        .rev()
        .take_while(|&c| c == char::REPLACEMENT_CHARACTER)
        .count()
        * char::REPLACEMENT_CHARACTER.len_utf8();
    hold.max(replacement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_concatenate_to_the_final_text() {
        let stop = vec!["END".to_string()];
        let mut t = DeltaTracker::default();
        let mut got = String::new();
        for text in ["He", "Hello E", "Hello EN", "Hello ENx", "Hello ENx wor"] {
            got.push_str(&t.step(text, &stop));
        }
        assert_eq!(got, "Hello ENx wor");
        got.push_str(&t.finish("Hello ENx world"));
        assert_eq!(got, "Hello ENx world");
    }

    #[test]
    fn a_possible_stop_prefix_is_held_back() {
        let stop = vec!["END".to_string()];
        let mut t = DeltaTracker::default();
        assert_eq!(t.step("abc EN", &stop), "abc ");
        // The stop string completed: the final text is cut before it.
        assert_eq!(t.finish("abc "), "");
    }

    #[test]
    fn incomplete_utf8_is_held_back() {
        let mut t = DeltaTracker::default();
        assert_eq!(t.step("é\u{FFFD}", &[]), "é");
        assert_eq!(t.step("é€", &[]), "€");
    }
}
