//! HTTP/1.1 request heads: parsed from a connection's buffer one at a time, so pipelined
//! requests are answered in order and a request's bytes are never mistaken for the next
//! one's. Only bodies with a `Content-Length` are accepted (chunked uploads are refused and
//! the connection closed), so the end of every request is known.

/// Most header fields in one request.
const MAX_HEADERS: usize = 64;

/// Request methods the server knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD.
    Head,
    /// POST (callbacks only).
    Post,
    /// Anything else (`405`).
    Other,
}

/// One parsed request head, with its body if it had one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Path, percent-decoded, without the query.
    pub path: String,
    /// Query pairs, percent-decoded.
    pub query: Vec<(String, String)>,
    /// Header fields, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
    /// The body (POST callbacks; empty otherwise).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a buffer does not hold a request (yet).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// More bytes are needed.
    #[error("incomplete")]
    Incomplete,
    /// The head is larger than allowed (`431`).
    #[error("request header fields too large")]
    TooLarge,
    /// Not a request this server can read (`400`); the connection closes after the answer.
    #[error("bad request: {0}")]
    Bad(&'static str),
}

fn decode(s: &str) -> Result<String, ParseError> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(s).collect();
    String::from_utf8(bytes).map_err(|_| ParseError::Bad("path is not UTF-8"))
}

/// Parses the request at the start of `buf`. Returns it and how many bytes it used.
/// `max_head` bounds the head; `max_body` bounds a body.
pub fn parse(buf: &[u8], max_head: usize, max_body: usize) -> Result<(Request, usize), ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_head => return Err(ParseError::TooLarge),
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(ParseError::TooLarge),
        Ok(httparse::Status::Partial) => return Err(ParseError::Incomplete),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooLarge),
        Err(_) => return Err(ParseError::Bad("malformed request head")),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let target = req.path.ok_or(ParseError::Bad("no target"))?;
    if !target.starts_with('/') {
        return Err(ParseError::Bad("target is not an absolute path"));
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let path = decode(raw_path)?;
    let mut query = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query.push((decode(&k.replace('+', " "))?, decode(&v.replace('+', " "))?));
    }
    let version = req.version.unwrap_or(0);
    let mut fields = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| ParseError::Bad("header value is not text"))?
            .trim()
            .to_owned();
        fields.push((h.name.to_ascii_lowercase(), value));
    }
    let header = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let connection = header("connection").unwrap_or("").to_ascii_lowercase();
    let keep_alive = if version >= 1 {
        !connection.split(',').any(|t| t.trim() == "close")
    } else {
        connection.split(',').any(|t| t.trim() == "keep-alive")
    };
    if header("transfer-encoding").is_some() {
        return Err(ParseError::Bad("chunked bodies are not accepted"));
    }
    let body_len = match header("content-length") {
        None => 0,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ParseError::Bad("bad content-length"))?,
    };
    if body_len > max_body {
        return Err(ParseError::Bad("body too large"));
    }
    if buf.len() < head_len + body_len {
        return Err(ParseError::Incomplete);
    }
    let body = buf[head_len..head_len + body_len].to_vec();
    Ok((
        Request {
            method,
            path,
            query,
            headers: fields,
            keep_alive,
            body,
        },
        head_len + body_len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let buf = b"GET /a%20b?mac=52%3A54%3A00%3Ab0%3A0f%3A01&x HTTP/1.1\r\nHost: h\r\nRange: bytes=0-1\r\n\r\nHEAD /c HTTP/1.1\r\nConnection: close\r\n\r\nGET /d";
        let (a, n) = parse(buf, 8192, 0).expect("first");
        assert_eq!(a.method, Method::Get);
        assert_eq!(a.path, "/a b");
        assert_eq!(a.query("mac"), Some("52:54:00:b0:0f:01"));
        assert_eq!(a.query("x"), Some(""));
        assert_eq!(a.header("range"), Some("bytes=0-1"));
        assert!(a.keep_alive);
        let (b, m) = parse(&buf[n..], 8192, 0).expect("second");
        assert_eq!(b.method, Method::Head);
        assert!(!b.keep_alive);
        assert_eq!(parse(&buf[n + m..], 8192, 0), Err(ParseError::Incomplete));
    }

    #[test]
    fn http_1_0_closes_unless_asked() {
        let (r, _) = parse(b"GET / HTTP/1.0\r\n\r\n", 8192, 0).expect("parse");
        assert!(!r.keep_alive);
        let (r, _) =
            parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 8192, 0).expect("parse");
        assert!(r.keep_alive);
    }

    #[test]
    fn bodies_need_a_length_and_a_limit() {
        let (r, n) = parse(
            b"POST /booted HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET",
            8192,
            64,
        )
        .expect("parse");
        assert_eq!(
            (r.method, r.body.as_slice(), n),
            (Method::Post, &b"hello"[..], 49)
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe", 8192, 64),
            Err(ParseError::Incomplete)
        );
        assert!(matches!(
            parse(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                8192,
                64
            ),
            Err(ParseError::Bad(_))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n", 8192, 64),
            Err(ParseError::Bad(_))
        ));
    }

    #[test]
    fn oversized_and_malformed_heads() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(big.as_bytes(), 8192, 0), Err(ParseError::TooLarge));
        assert_eq!(
            parse(&[b'a'; 9000], 8192, 0).err(),
            Some(ParseError::TooLarge)
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 8192, 0).err(),
            Some(ParseError::Bad("malformed request head"))
        );
        assert!(matches!(
            parse(b"GET http://x/ HTTP/1.1\r\n\r\n", 8192, 0),
            Err(ParseError::Bad(_))
        ));
        assert!(matches!(
            parse(b"GET /%ff HTTP/1.1\r\n\r\n", 8192, 0),
            Err(ParseError::Bad(_))
        ));
        let (r, _) = parse(b"DELETE / HTTP/1.1\r\n\r\n", 8192, 0).expect("parse");
        assert_eq!(r.method, Method::Other);
    }
}
