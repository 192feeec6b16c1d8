//! Any datagram on a TFTP port: `tftp::packet::parse` must give a packet or a reason, never
//! a panic; and a packet it accepts, encoded again, must parse back to itself (requests byte
//! for byte up to the case of the mode and option names), as must the ERROR packets the
//! server encodes from what clients sent.
#![no_main]

use bootfabric::services::tftp::packet::{self, opcode, ErrorCode, Mode, Packet, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fn encode_request(r: &packet::Request) -> Vec<u8> {
    let op = if r.write { opcode::WRQ } else { opcode::RRQ };
    let mode = match r.mode {
        Mode::Octet => "octet",
        Mode::Netascii => "netascii",
    };
    let mut out = op.to_be_bytes().to_vec();
    let fields = [r.filename.as_str(), mode]
        .into_iter()
        .chain(r.options.iter().flat_map(|(n, v)| [n.as_str(), v.as_str()]));
    for f in fields {
        out.extend_from_slice(f.as_bytes());
        out.push(0);
    }
    out
}

fn error_code(code: u16) -> Option<ErrorCode> {
    Some(match code {
        0 => ErrorCode::NotDefined,
        1 => ErrorCode::FileNotFound,
        2 => ErrorCode::AccessViolation,
        3 => ErrorCode::DiskFull,
        4 => ErrorCode::IllegalOperation,
        5 => ErrorCode::UnknownTransferId,
        6 => ErrorCode::FileExists,
        7 => ErrorCode::NoSuchUser,
        8 => ErrorCode::OptionRefused,
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(p) = packet::parse(data) else {
        return;
    };
    match &p {
        Packet::Request(r) => {
            assert!(data.len() <= MAX_REQUEST);
            assert!(!r.filename.is_empty() && !r.filename.contains('\0'));
            let mut names: Vec<&str> = r.options.iter().map(|(n, _)| n.as_str()).collect();
            for n in &names {
                assert!(
                    !n.is_empty() && *n == n.to_ascii_lowercase(),
                    "option {n:?}"
                );
            }
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), r.options.len(), "repeated option accepted");
            let again = encode_request(r);
            assert_eq!(again.len(), data.len(), "request is not its own bytes");
            assert!(again.eq_ignore_ascii_case(data));
            assert_eq!(packet::parse(&again), Ok(p.clone()));
        }
        Packet::Ack(block) => {
            assert_eq!(data.get(2..4), Some(&block.to_be_bytes()[..]));
        }
        Packet::Error(code, msg) => {
            // The server echoes a client's message in logs and may answer with its own
            // ERROR: what it encodes must parse back (NULs cannot travel inside a message).
            if let Some(c) = error_code(*code) {
                let out = packet::error(c, msg);
                let clean: String = msg.chars().filter(|c| *c != '\0').collect();
                assert_eq!(packet::parse(&out), Ok(Packet::Error(*code, clean)));
            }
        }
        Packet::Data(block, payload) => {
            let mut out = Vec::new();
            packet::data_header(*block, &mut out);
            out.extend_from_slice(payload);
            assert_eq!(out, data);
        }
    }
});
