//! Any bytes on an HTTP connection: `http::request::parse` must answer with a request, a
//! need for more bytes, or a refusal, never a panic; and what it answers must be consistent:
//! a request never claims more bytes than the buffer holds, parses the same from exactly its
//! own bytes (so pipelined requests cannot bleed into each other), and respects the limits.
#![no_main]

use bootfabric::services::http::request::{parse, ParseError};
use libfuzzer_sys::fuzz_target;

/// Limits as the daemon's defaults put them (`http.max_head`-like bounds), small enough that
/// the fuzzer reaches them.
const MAX_HEAD: usize = 2048;
const MAX_BODY: usize = 256;

fuzz_target!(|data: &[u8]| {
    match parse(data, MAX_HEAD, MAX_BODY) {
        Ok((req, used)) => {
            assert!(used <= data.len(), "used {used} of {} bytes", data.len());
            assert!(req.body.len() <= MAX_BODY);
            assert!(used >= req.body.len());
            assert!(used - req.body.len() <= MAX_HEAD, "head over the limit");
            assert_eq!(&data[used - req.body.len()..used], req.body.as_slice());
            assert!(req.path.starts_with('/'), "path {:?}", req.path);
            for (name, _) in &req.headers {
                assert_eq!(*name, name.to_ascii_lowercase());
            }
            assert!(req.header("transfer-encoding").is_none());
            // The request is exactly its own bytes: alone, it parses the same, and whatever
            // follows it on the connection changes nothing.
            let (alone, n) = parse(&data[..used], MAX_HEAD, MAX_BODY).expect("own bytes parse");
            assert_eq!((&alone, n), (&req, used));
            let mut more = data[..used].to_vec();
            more.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
            let (again, m) = parse(&more, MAX_HEAD, MAX_BODY).expect("followed by more");
            assert_eq!((&again, m), (&req, used));
        }
        Err(ParseError::Incomplete) => {
            // More bytes are needed: a prefix cannot already be complete or refused.
            assert!(data.len() <= MAX_HEAD + MAX_BODY);
            for cut in [data.len() / 2, data.len().saturating_sub(1)] {
                assert_eq!(
                    parse(&data[..cut], MAX_HEAD, MAX_BODY).err(),
                    Some(ParseError::Incomplete),
                    "prefix of {cut} bytes"
                );
            }
        }
        Err(ParseError::TooLarge | ParseError::Bad(_)) => {}
    }
});
