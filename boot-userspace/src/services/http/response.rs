//! Responses as the routes decide them: a status, header fields and a body that is either
//! bytes in memory or a byte range of an open file, which the transports move without
//! copying through userspace.

use std::{fmt::Write as _, fs::File, sync::Arc};

/// A response body.
#[derive(Clone, Debug)]
pub enum Body {
    /// No body (HEAD, 304, or a HEAD's view of any other).
    Empty,
    /// Bytes in memory (scripts, configs, error pages).
    Bytes(Vec<u8>),
    /// `len` bytes of `file` from `offset`.
    File {
        /// The open file.
        file: Arc<File>,
        /// First byte.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// The file lives in memory (tmpfs, ramfs): its pages are at hand, so the page cache
        /// is not asked whether a read of it could wait for a store.
        in_memory: bool,
    },
}

impl Body {
    /// Bytes the body holds.
    pub fn len(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A response, before it is written.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields other than `Content-Length`, `Connection` and `Server`.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
    /// `Content-Length` to announce (differs from the body's length for HEAD).
    pub content_length: u64,
    /// Close the connection after this response.
    pub close: bool,
}

/// Reason phrase (RFC 9110 §15) for the statuses the server sends, and the neighbours a
/// route may come to send (409 for a config already delivered or a used `once`, 412/428
/// for preconditions, 429 for limits), so that no answer says "Unknown".
pub fn reason(status: u16) -> &'static str {
    let phrase = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    };
    if !phrase.is_empty() {
        return phrase;
    }
    // A code not listed still gets its class's phrase rather than a made-up one.
    match status / 100 {
        1 => "Informational",
        2 => "Success",
        3 => "Redirection",
        4 => "Client Error",
        _ => "Server Error",
    }
}

impl Response {
    /// A response with a small text body.
    pub fn text(status: u16, body: &str) -> Self {
        let body = format!("{body}\n").into_bytes();
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            content_length: body.len() as u64,
            body: Body::Bytes(body),
            close: false,
        }
    }

    /// A response without a body or headers of its own (204, 304).
    pub fn empty(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Empty,
            content_length: 0,
            close: false,
        }
    }

    /// A response with bytes of a given type.
    pub fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            content_length: body.len() as u64,
            body: Body::Bytes(body),
            close: false,
        }
    }

    /// Drops the body but keeps the headers, as a HEAD answer does.
    pub fn for_head(mut self) -> Self {
        self.body = Body::Empty;
        self
    }

    /// The status line and header block, ending with the blank line.
    pub fn head(&self, date: &str) -> Vec<u8> {
        self.head_at(date, None)
    }

    /// The head of a response whose first byte leaves as byte `stream_pos` of the
    /// connection's plain TCP stream (all earlier responses, heads and bodies, counted):
    /// with a file body of at least `ALIGN_MIN_BODY` bytes, the head is padded (an
    /// `Alignment-Padding` field) so the body's bytes lie in the stream where they lie in
    /// their file modulo `BODY_ALIGN`. `sendfile` hands the file's page-cache pages to the
    /// socket as they are. Where the client's kernel copies out of those very pages (a
    /// client on the same host: veth, loopback, a container) and the client reads full
    /// buffers into an aligned one, source and destination then share their offset within a
    /// cache line; otherwise every copy is misaligned. wrk on one connection over the lab's
    /// veth spent 4–9% more of its core per GiB on Bootfabric's 250-byte heads than on
    /// nginx's 264 (8 modulo 64), and nginx padded to Bootfabric's length modulo 64 cost it
    /// as much (`bench/results/http-experiments/2026-12-03-client-bound`, `pads.sh`). Over a
    /// NIC the client copies out of its driver's receive buffers, whose layout the padding
    /// does not choose: there it costs the padding's bytes and gains nothing measured.
    /// `None`: no padding (a TLS stream, whose records are copied out of their own buffers).
    pub fn head_at(&self, date: &str, stream_pos: Option<u64>) -> Vec<u8> {
        let mut s = String::with_capacity(256);
        let _ = write!(s, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        let _ = write!(s, "Server: bootfabric\r\nDate: {date}\r\n");
        for (name, value) in &self.headers {
            let _ = write!(s, "{name}: {value}\r\n");
        }
        // 304 carries no Content-Length of its own (RFC 9110 §15.4.5 allows leaving it out).
        if self.status != 304 {
            let _ = write!(s, "Content-Length: {}\r\n", self.content_length);
        }
        if self.close {
            s.push_str("Connection: close\r\n");
        }
        if let (Some(pos), Body::File { offset, len, .. }) = (stream_pos, &self.body) {
            if *len >= ALIGN_MIN_BODY {
                // The body starts after this head's blank line (2 bytes).
                let at = pos.wrapping_add(s.len() as u64 + 2);
                pad(&mut s, offset.wrapping_sub(at) % BODY_ALIGN);
            }
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// The alignment `Response::head_at` gives a file body's bytes in the stream: a cache line.
pub const BODY_ALIGN: u64 = 64;
/// File bodies shorter than this are not aligned. The gain was measured on whole images and
/// 1 MiB ranges; below this a head's up to 85 more bytes are a larger share of the response
/// for no measured gain. (Rendered scripts and configs are bytes in memory, never padded.)
pub const ALIGN_MIN_BODY: u64 = 64 << 10;
/// The padding field's name and separator; its value is at least one byte.
const PAD_FIELD: &str = "Alignment-Padding: ";

/// Appends a header field `need` bytes long, or `need + BODY_ALIGN` where `need` is too short
/// for a field (the same alignment); nothing for 0.
fn pad(s: &mut String, need: u64) {
    if need == 0 {
        return;
    }
    let fixed = (PAD_FIELD.len() + 2) as u64;
    let total = if need > fixed {
        need
    } else {
        need + BODY_ALIGN
    };
    s.push_str(PAD_FIELD);
    s.extend(std::iter::repeat_n('.', (total - fixed) as usize));
    s.push_str("\r\n");
}

/// `Content-Type` by file extension; anything unknown is `application/octet-stream`.
pub fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit('/')
        .next()
        .and_then(|f| f.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "ipxe" | "cfg" | "conf" | "txt" | "ks" | "sh" => "text/plain; charset=utf-8",
        "json" | "ign" => "application/json",
        "yaml" | "yml" => "application/yaml",
        "html" | "htm" => "text/html; charset=utf-8",
        "xml" => "application/xml",
        "iso" => "application/x-iso9660-image",
        "gz" | "tgz" => "application/gzip",
        "xz" => "application/x-xz",
        "zst" => "application/zstd",
        "tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_block() {
        let mut r = Response::text(404, "not found");
        r.close = true;
        let h = String::from_utf8(r.head("Sat, 28 Nov 2026 20:00:00 GMT")).expect("utf8");
        assert!(h.starts_with("HTTP/1.1 404 Not Found\r\nServer: bootfabric\r\n"));
        assert!(h.contains("Content-Length: 10\r\n"));
        assert!(h.ends_with("Connection: close\r\n\r\n"));
        let head = Response::text(200, "abc").for_head();
        assert!(head.body.is_empty());
        assert_eq!(head.content_length, 4);
    }

    fn file_response(offset: u64, len: u64) -> Response {
        Response {
            status: 206,
            headers: vec![(
                "Content-Range",
                format!("bytes {offset}-{}/*", offset + len - 1),
            )],
            content_length: len,
            body: Body::File {
                file: Arc::new(File::open("/dev/null").expect("/dev/null")),
                offset,
                len,
                in_memory: true,
            },
            close: false,
        }
    }

    /// A large file body starts where its first byte lies in its file modulo 64, whatever
    /// the stream carried before; the padding is one well-formed header field, and no
    /// longer than it must be.
    #[test]
    fn file_bodies_are_aligned_in_the_stream() {
        let date = "Sat, 28 Nov 2026 20:00:00 GMT";
        for offset in [0, 1, 63, 64, 4095, 1 << 20, 123_457] {
            let r = file_response(offset, 1 << 20);
            let plain = r.head(date).len() as u64;
            for pos in (0..300).chain([u64::MAX - 5, u64::MAX]) {
                let h = r.head_at(date, Some(pos));
                let body_at = pos.wrapping_add(h.len() as u64);
                assert_eq!(
                    body_at % BODY_ALIGN,
                    offset % BODY_ALIGN,
                    "offset {offset} pos {pos}"
                );
                let extra = h.len() as u64 - plain;
                assert!(extra <= BODY_ALIGN + PAD_FIELD.len() as u64 + 2, "{extra}");
                let text = String::from_utf8(h).expect("utf8");
                assert!(text.ends_with("\r\n\r\n"));
                let fields: Vec<&str> = text.trim_end().split("\r\n").skip(1).collect();
                assert!(fields.iter().all(|f| f
                    .split_once(": ")
                    .is_some_and(|(n, v)| !n.is_empty() && !v.is_empty())));
                let pads = fields
                    .iter()
                    .filter(|f| f.starts_with("Alignment-Padding: "))
                    .count();
                assert_eq!(pads, usize::from(extra > 0));
            }
        }
    }

    /// Small file bodies, bytes in memory and streams that are not plain TCP (`None`) get
    /// the head as it is.
    #[test]
    fn other_heads_are_not_padded() {
        let date = "d";
        let small = file_response(3, ALIGN_MIN_BODY - 1);
        assert_eq!(small.head_at(date, Some(5)), small.head(date));
        let large = file_response(3, ALIGN_MIN_BODY);
        assert_eq!(large.head_at(date, None), large.head(date));
        let text = Response::text(200, &"x".repeat(1 << 20));
        assert_eq!(text.head_at(date, Some(7)), text.head(date));
    }

    /// Every status a route or the connection sends has its RFC 9110 phrase (409 once said
    /// "Unknown"), and an unlisted code its class's.
    #[test]
    fn every_status_sent_has_its_reason_phrase() {
        for (status, phrase) in [
            (204, "No Content"),
            (304, "Not Modified"),
            (403, "Forbidden"),
            (405, "Method Not Allowed"),
            (409, "Conflict"),
            (412, "Precondition Failed"),
            (416, "Range Not Satisfiable"),
            (428, "Precondition Required"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (503, "Service Unavailable"),
        ] {
            assert_eq!(reason(status), phrase, "{status}");
        }
        let h = String::from_utf8(Response::text(409, "again").head("d")).expect("utf8");
        assert!(h.starts_with("HTTP/1.1 409 Conflict\r\n"), "{h}");
        assert_eq!(reason(299), "Success");
        assert_eq!(reason(499), "Client Error");
        assert_eq!(reason(599), "Server Error");
        assert_eq!(reason(999), "Server Error");
    }

    #[test]
    fn types_by_extension() {
        assert_eq!(content_type("/boot.ipxe"), "text/plain; charset=utf-8");
        assert_eq!(content_type("/configs/node.ign"), "application/json");
        assert_eq!(content_type("/debian/linux"), "application/octet-stream");
        assert_eq!(content_type("/debian/initrd.gz"), "application/gzip");
        assert_eq!(content_type("/x/rescue.ISO"), "application/x-iso9660-image");
        assert_eq!(content_type("/undionly.kpxe"), "application/octet-stream");
    }
}
