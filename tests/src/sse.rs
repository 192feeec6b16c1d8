//! A Server-Sent Events client (the HTML Living Standard's `text/event-stream` framing) for
//! `GET /api/v1/events`: a raw `TcpStream` opened inside a namespace, read by a thread
//! that parses `id:`, `event:`, `data:` and `retry:` fields into [`SseEvent`]s. The test reads
//! what arrived so far, waits (bounded) for an event, closes the stream mid-way and resumes
//! it with `Last-Event-ID`.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use crate::{
    api::{connect, read_head, ChunkedReader},
    wait_for, LabError, Netns,
};

/// One dispatched event.
#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    /// `id:` (the last one seen, as the standard says), when a number.
    pub id: Option<u64>,
    /// `event:`, or `message` when absent.
    pub event: String,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// `data` as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.data).ok()
    }

    /// The event's type: the `type` of its JSON data, else the `event:` field.
    pub fn kind(&self) -> String {
        self.json()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_else(|| self.event.clone())
    }

    /// The `host` of its JSON data.
    pub fn host(&self) -> Option<String> {
        self.json()?.get("host")?.as_str().map(str::to_owned)
    }
}

/// The field-by-field parser, fed one line at a time (without its line end).
#[derive(Debug, Default)]
pub struct Parser {
    last_id: Option<u64>,
    event: Option<String>,
    data: Vec<String>,
    /// The last `retry:` value, in milliseconds.
    pub retry_ms: Option<u64>,
}

impl Parser {
    /// Feeds one line; returns the event an empty line dispatches.
    pub fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let seen = self.event.is_some() || !self.data.is_empty();
            let event = SseEvent {
                id: self.last_id,
                event: self.event.take().unwrap_or_else(|| "message".to_owned()),
                data: std::mem::take(&mut self.data).join("\n"),
            };
            return seen.then_some(event);
        }
        if line.starts_with(':') {
            return None; // a comment: the server's keep-alive
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.last_id = value.parse().ok(),
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            "retry" => self.retry_ms = value.parse().ok(),
            _ => {}
        }
        None
    }
}

/// An open event stream.
pub struct Sse {
    events: Arc<Mutex<Vec<SseEvent>>>,
    error: Arc<Mutex<Option<String>>>,
    stream: TcpStream,
    reader: Option<JoinHandle<()>>,
    /// The answer's head (status 200, `text/event-stream`).
    pub status: u16,
}

impl Sse {
    /// Opens `path` (e.g. `/api/v1/events`) on `addr` from `ns`, resuming after
    /// `last_event_id` when given. Fails unless the answer is 200 `text/event-stream`.
    pub fn open(
        ns: &Netns,
        addr: SocketAddr,
        path: &str,
        last_event_id: Option<u64>,
        token: Option<&str>,
    ) -> Result<Sse, LabError> {
        let mut s = connect(ns, addr)?;
        // A stream is quiet between events: no read timeout, the test closes it.
        s.set_read_timeout(None).map_err(|e| e.to_string())?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n"
        );
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .map_err(|e| format!("GET {path}: {e}"))?;
        let control = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let head = read_head(&mut r)?.ok_or("the event stream closed before its head")?;
        let status: u16 = head
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {:?}", head.line))?;
        let ctype = head.header("content-type").unwrap_or("").to_owned();
        if status != 200 || !ctype.starts_with("text/event-stream") {
            return Err(format!("GET {path}: {status} {ctype}: {head:?}"));
        }
        let events = Arc::new(Mutex::new(Vec::new()));
        let error = Arc::new(Mutex::new(None));
        let (sink, err) = (Arc::clone(&events), Arc::clone(&error));
        let chunked = head.chunked();
        let reader = std::thread::spawn(move || {
            let body: Box<dyn BufRead + Send> = if chunked {
                Box::new(BufReader::new(ChunkedReader::new(r)))
            } else {
                Box::new(r)
            };
            if let Err(e) = pump(body, &sink) {
                if let Ok(mut slot) = err.lock() {
                    *slot = Some(e);
                }
            }
        });
        Ok(Sse {
            events,
            error,
            stream: control,
            reader: Some(reader),
            status,
        })
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<SseEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Why the stream ended, if it ended by an error.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Waits (for at most `bound`) until `done` holds for the events received so far.
    pub fn wait(
        &self,
        bound: Duration,
        done: impl Fn(&[SseEvent]) -> bool,
    ) -> Result<Vec<SseEvent>, LabError> {
        wait_for(bound, || {
            let e = self.events();
            done(&e).then_some(e)
        })
        .ok_or_else(|| {
            format!(
                "the event stream did not get there within {bound:?} (error: {:?}); it has:\n{}",
                self.error(),
                self.events()
                    .iter()
                    .map(|e| format!("{:?} {} {}", e.id, e.event, e.data))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }

    /// Closes the connection and returns everything received.
    pub fn close(mut self) -> Vec<SseEvent> {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.events()
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Reads lines until the stream ends, dispatching events into `sink`.
fn pump(mut body: Box<dyn BufRead + Send>, sink: &Mutex<Vec<SseEvent>>) -> Result<(), String> {
    let mut parser = Parser::default();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        // Bytes, not a String: a torn UTF-8 sequence is the server's bug, shown, not a panic.
        let n = body
            .read_until(b'\n', &mut raw)
            .map_err(|e| format!("event stream: {e}"))?;
        if n == 0 {
            return Ok(());
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches('\n').trim_end_matches('\r');
        if let Some(ev) = parser.line(line) {
            if let Ok(mut s) = sink.lock() {
                s.push(ev);
            }
        }
    }
}

/// Reads a whole finite SSE body (for tests of the parser).
pub fn parse_all(text: &str) -> Vec<SseEvent> {
    let mut p = Parser::default();
    let mut out = Vec::new();
    let mut r = BufReader::new(text.as_bytes());
    let mut s = String::new();
    let _ = r.read_to_string(&mut s);
    for line in s.split('\n') {
        if let Some(e) = p.line(line.trim_end_matches('\r')) {
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_types_multiline_data_and_comments() {
        let text = "retry: 2000\n:keep-alive\n\nid: 7\nevent: host.booted\ndata: {\"type\":\"host.booted\",\ndata: \"host\":\"node07\"}\n\nid: 8\ndata:x\n\nevent: gap\ndata: {}\n\n";
        let ev = parse_all(text);
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert_eq!(ev[0].id, Some(7));
        assert_eq!(ev[0].kind(), "host.booted");
        assert_eq!(ev[0].host().as_deref(), Some("node07"));
        assert_eq!(ev[1].event, "message");
        assert_eq!(ev[1].data, "x");
        // The last id seen carries over, as the standard says.
        assert_eq!(ev[2].id, Some(8));
        assert_eq!(ev[2].event, "gap");
    }
}
