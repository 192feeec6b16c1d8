//! Any read request, any link MTU, window limit, timeout ceiling and file size: option
//! negotiation (`tftp::options::negotiate`) must stay within the server's limits and the
//! RFCs' bounds, acknowledge each option at most once and only with what the transfer really
//! uses, and the OACK it leads to must carry exactly those options. A `timeout` over the
//! ceiling (`tftp.max_timeout_s`) is left out, never acknowledged or used.
//!
//! Input: MTU (2 bytes), window limit (2), size (5, its low bit says whether it is known),
//! timeout ceiling (1, 0 for none: the RFC's 255), then the request datagram.
#![no_main]

use bootfabric::services::tftp::{
    options::{negotiate, Limits, MAX_BLKSIZE, MAX_TIMEOUT, MIN_BLKSIZE},
    packet::{self, opcode, Packet},
};
use libfuzzer_sys::fuzz_target;

/// Splits an OACK back into its option pairs.
fn oack_pairs(b: &[u8]) -> Vec<(String, String)> {
    assert_eq!(b.get(..2), Some(&opcode::OACK.to_be_bytes()[..]));
    let body = &b[2..];
    if body.is_empty() {
        return Vec::new();
    }
    let body = body.strip_suffix(&[0]).expect("OACK ends with a NUL");
    let fields: Vec<String> = body
        .split(|c| *c == 0)
        .map(|f| String::from_utf8(f.to_vec()).expect("OACK fields are text"))
        .collect();
    assert_eq!(fields.len() % 2, 0, "OACK fields pair up");
    fields
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<10>() else {
        return;
    };
    let mtu = u16::from_le_bytes([head[0], head[1]]);
    let window = u16::from_le_bytes([head[2], head[3]]);
    let size = (head[4] & 1 == 1)
        .then(|| u64::from_le_bytes([head[5], head[6], head[7], head[8], head[4], 0, 0, 0]) >> 1);
    let limits = match head[9] {
        0 => Limits::for_mtu(mtu, window),
        ceiling => Limits::for_mtu(mtu, window).with_max_timeout(ceiling),
    };
    assert!((MIN_BLKSIZE..=MAX_BLKSIZE).contains(&limits.max_blksize));
    assert!(limits.max_windowsize >= 1);
    assert!((1..=MAX_TIMEOUT).contains(&limits.max_timeout));
    let Ok(Packet::Request(req)) = packet::parse(rest) else {
        return;
    };
    let n = negotiate(&req.options, size, limits);
    assert!(
        (MIN_BLKSIZE..=limits.max_blksize).contains(&n.blksize),
        "{n:?}"
    );
    assert!((1..=limits.max_windowsize).contains(&n.windowsize), "{n:?}");
    assert!((1..=MAX_TIMEOUT).contains(&n.timeout), "{n:?}");
    // The ceiling: a larger timeout is refused (the default stays), and said so.
    let asked_timeout = req
        .options
        .iter()
        .find(|(name, _)| name == "timeout")
        .and_then(|(_, v)| v.parse::<u16>().ok());
    let over = asked_timeout
        .is_some_and(|t| t > u16::from(limits.max_timeout) && t <= u16::from(MAX_TIMEOUT));
    assert_eq!(n.timeout_capped, over, "{asked_timeout:?} {limits:?} {n:?}");
    if over {
        assert_eq!(n.timeout, limits.default_timeout, "{n:?}");
    }
    assert!(
        n.timeout <= limits.max_timeout.max(limits.default_timeout),
        "{n:?}"
    );
    let mut seen = Vec::new();
    for (name, value) in &n.ack {
        assert!(!seen.contains(name), "{name} acknowledged twice");
        seen.push(*name);
        assert!(
            req.options.iter().any(|(asked, _)| asked == name),
            "{name} acknowledged but not asked for"
        );
        let used = match *name {
            "blksize" => u64::from(n.blksize),
            "windowsize" => u64::from(n.windowsize),
            "timeout" => u64::from(n.timeout),
            "tsize" => size.expect("tsize only acknowledged with a known size"),
            other => panic!("unknown option {other} acknowledged"),
        };
        assert_eq!(value.parse::<u64>().ok(), Some(used), "{name}={value}");
    }
    let oack = packet::oack(&n.ack);
    let expected: Vec<(String, String)> = n
        .ack
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    assert_eq!(oack_pairs(&oack), expected);
});
