//! A controller's HTTP client for the admin API (`/api/v1/...`), speaking HTTP/1.1 over a raw
//! `TcpStream` opened inside a namespace of the lab, so the test sees exactly what went over
//! the wire: status, every header (`ETag`, `Location`, `Bootfabric-Generation`) and the body.
//! One connection per request (`Connection: close`); chunked bodies are decoded.
//!
//! The reading side ([`read_head`], [`ChunkedReader`]) is shared with the SSE client and the
//! webhook receiver.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::{LabError, Netns};

/// How long one API call may take before the test fails (a bound, not a timing check).
const CALL_BOUND: Duration = Duration::from_secs(30);

/// The head of an HTTP message: its first line and its headers, names as sent.
#[derive(Clone, Debug, Default)]
pub struct Head {
    /// The request or status line.
    pub line: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Content-Length`, if given and a number.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// Whether the body is sent in chunks.
    pub fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// Reads one message head (up to the empty line) from `r`. `Ok(None)` when the peer closed
/// before sending a byte of it.
pub fn read_head(r: &mut impl BufRead) -> Result<Option<Head>, LabError> {
    let mut head = Head::default();
    let mut first = true;
    loop {
        let mut line = String::new();
        let n = r
            .read_line(&mut line)
            .map_err(|e| format!("reading a message head: {e}"))?;
        if n == 0 {
            if first {
                return Ok(None);
            }
            return Err(format!("connection closed inside a head: {head:?}"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if first {
            head.line = line.to_owned();
            first = false;
            continue;
        }
        if line.is_empty() {
            return Ok(Some(head));
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("not a header line: {line:?}"))?;
        head.headers
            .push((k.trim().to_owned(), v.trim().to_owned()));
    }
}

/// A `Read` over a chunked body (RFC 9112 §7.1): yields the chunks' bytes, ends at the last
/// chunk. Chunk extensions and trailers are skipped.
pub struct ChunkedReader<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> ChunkedReader<R> {
    /// Wraps the reader positioned at the first chunk's size line.
    pub fn new(inner: R) -> Self {
        ChunkedReader {
            inner,
            left: 0,
            done: false,
        }
    }

    fn size_line(&mut self) -> std::io::Result<usize> {
        let mut line = String::new();
        if self.inner.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let size = line.trim().split(';').next().unwrap_or("");
        usize::from_str_radix(size.trim(), 16).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad chunk size {line:?}"),
            )
        })
    }
}

impl<R: BufRead> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let size = self.size_line()?;
            if size == 0 {
                // Trailers, then the final empty line.
                loop {
                    let mut line = String::new();
                    if self.inner.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                self.done = true;
                return Ok(0);
            }
            self.left = size;
        }
        let want = buf.len().min(self.left);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n;
        if self.left == 0 {
            // The CRLF after a chunk's data.
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

/// Reads the body that follows `head` on `r`: by `Content-Length`, chunks, or to the end of
/// the connection.
pub fn read_body(head: &Head, r: &mut impl BufRead) -> Result<Vec<u8>, LabError> {
    let mut body = Vec::new();
    if head.chunked() {
        ChunkedReader::new(r)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading a chunked body: {e}"))?;
    } else if let Some(len) = head.content_length() {
        body.resize(len, 0);
        r.read_exact(&mut body)
            .map_err(|e| format!("reading a {len}-byte body: {e}"))?;
    } else {
        r.read_to_end(&mut body)
            .map_err(|e| format!("reading a body to the end: {e}"))?;
    }
    Ok(body)
}

/// Opens a TCP connection to `addr` from inside `ns` (the socket stays in `ns`).
pub fn connect(ns: &Netns, addr: SocketAddr) -> Result<TcpStream, LabError> {
    let s = ns
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)))?
        .map_err(|e| format!("connect {addr} from {}: {e}", ns.name()))?;
    s.set_read_timeout(Some(CALL_BOUND))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// One API answer.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Its head.
    pub head: Head,
    /// Its body, as text.
    pub body: String,
}

impl Response {
    /// A header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, LabError> {
        serde_json::from_str(&self.body)
            .map_err(|e| format!("{} answered non-JSON ({e}): {}", self.status, self.body))
    }

    /// The `ETag` header; an error naming the answer when there is none.
    pub fn etag(&self) -> Result<String, LabError> {
        self.header("etag")
            .map(str::to_owned)
            .ok_or_else(|| format!("no ETag in {self:?}"))
    }

    /// `Bootfabric-Generation` as a number.
    pub fn generation(&self) -> Option<u64> {
        self.header("bootfabric-generation")?.trim().parse().ok()
    }

    /// The JSON body when the status is `want`, else an error with the whole answer.
    pub fn expect(&self, want: u16) -> Result<serde_json::Value, LabError> {
        if self.status != want {
            return Err(format!("expected {want}, got {self:?}"));
        }
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        self.json()
    }
}

/// A client of one daemon's admin API, from one namespace, with the admin token.
pub struct Api<'a> {
    ns: &'a Netns,
    /// The admin server.
    pub addr: SocketAddr,
    token: Option<String>,
}

impl<'a> Api<'a> {
    /// A client in `ns` of the admin server at `addr`, sending `token` on every call.
    pub fn new(ns: &'a Netns, addr: SocketAddr, token: Option<&str>) -> Self {
        Api {
            ns,
            addr,
            token: token.map(str::to_owned),
        }
    }

    /// The same client without the token (to prove calls need it).
    pub fn anonymous(&self) -> Api<'a> {
        Api {
            ns: self.ns,
            addr: self.addr,
            token: None,
        }
    }

    /// Sends one request: `headers` besides Host, Connection, the token and the body's
    /// `Content-Type`/`Content-Length`.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> Result<Response, LabError> {
        let mut s = connect(self.ns, self.addr)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.addr
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some((ctype, text)) = body {
            req.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
                text.len()
            ));
        }
        req.push_str("\r\n");
        if let Some((_, text)) = body {
            req.push_str(text);
        }
        s.write_all(req.as_bytes())
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let mut r = BufReader::new(s);
        let head = read_head(&mut r)?
            .ok_or_else(|| format!("{method} {path}: the server closed without answering"))?;
        let status = head
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("{method} {path}: bad status line {:?}", head.line))?;
        let body = if method == "HEAD" || status == 204 || status == 304 {
            Vec::new()
        } else {
            read_body(&head, &mut r)?
        };
        Ok(Response {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Response, LabError> {
        self.request("GET", path, &[], None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<Response, LabError> {
        self.request(
            "POST",
            path,
            &[],
            Some(("application/json", &body.to_string())),
        )
    }

    /// `PUT path` with a JSON body, conditional on `etag`.
    pub fn put(
        &self,
        path: &str,
        etag: &str,
        body: &serde_json::Value,
    ) -> Result<Response, LabError> {
        self.request(
            "PUT",
            path,
            &[("If-Match", etag)],
            Some(("application/json", &body.to_string())),
        )
    }

    /// `PATCH path` with a JSON merge patch (RFC 7396), conditional on `etag`.
    pub fn patch(
        &self,
        path: &str,
        etag: &str,
        patch: &serde_json::Value,
    ) -> Result<Response, LabError> {
        self.request(
            "PATCH",
            path,
            &[("If-Match", etag)],
            Some(("application/merge-patch+json", &patch.to_string())),
        )
    }

    /// `DELETE path`, conditional on `etag`.
    pub fn delete(&self, path: &str, etag: &str) -> Result<Response, LabError> {
        self.request("DELETE", path, &[("If-Match", etag)], None)
    }

    /// GETs `path` and PATCHes it with its current ETag: (the GET's ETag, the PATCH's answer).
    pub fn patch_current(
        &self,
        path: &str,
        patch: &serde_json::Value,
    ) -> Result<(String, Response), LabError> {
        let cur = self.get(path)?;
        cur.expect(200)?;
        let etag = cur.etag()?;
        let r = self.patch(path, &etag, patch)?;
        Ok((etag, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_heads_and_chunked_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"ab\"\r\n\r\n4\r\nwiki\r\n5;x=1\r\npedia\r\n0\r\nT: 1\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let head = read_head(&mut r).expect("head").expect("some");
        assert_eq!(head.line, "HTTP/1.1 200 OK");
        assert_eq!(head.header("etag"), Some("\"ab\""));
        assert!(head.chunked());
        assert_eq!(read_body(&head, &mut r).expect("body"), b"wikipedia");
    }

    #[test]
    fn reads_sized_bodies_and_notices_a_close_before_the_head() {
        let raw = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}extra";
        let mut r = BufReader::new(&raw[..]);
        let head = read_head(&mut r).expect("head").expect("some");
        assert_eq!(read_body(&head, &mut r).expect("body"), b"{}");
        assert!(read_head(&mut BufReader::new(&b""[..]))
            .expect("eof")
            .is_none());
        assert!(read_head(&mut BufReader::new(&b"HTTP/1.1 200 OK\r\nA: b\r\n"[..])).is_err());
    }
}
