//! TFTP packets (RFC 1350, options per RFC 2347): parsing what clients send and encoding what
//! the server sends. Parsing is strict and total: any byte string gives a packet or a reason.

/// Opcodes.
pub mod opcode {
    /// Read request.
    pub const RRQ: u16 = 1;
    /// Write request.
    pub const WRQ: u16 = 2;
    /// Data block.
    pub const DATA: u16 = 3;
    /// Acknowledgement.
    pub const ACK: u16 = 4;
    /// Error.
    pub const ERROR: u16 = 5;
    /// Option acknowledgement (RFC 2347).
    pub const OACK: u16 = 6;
}

/// TFTP error codes (RFC 1350, RFC 2347).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not defined, see message.
    NotDefined = 0,
    /// File not found.
    FileNotFound = 1,
    /// Access violation.
    AccessViolation = 2,
    /// Disk full or allocation exceeded.
    DiskFull = 3,
    /// Illegal TFTP operation.
    IllegalOperation = 4,
    /// Unknown transfer ID.
    UnknownTransferId = 5,
    /// File already exists.
    FileExists = 6,
    /// No such user.
    NoSuchUser = 7,
    /// Option negotiation refused (RFC 2347).
    OptionRefused = 8,
}

/// Transfer mode of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Bytes as they are.
    Octet,
    /// Text with CR LF line ends (RFC 764 NVT).
    Netascii,
}

/// A read or write request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Whether this is a write request (the server refuses those).
    pub write: bool,
    /// The file name as the client sent it (not yet confined to any root).
    pub filename: String,
    /// Transfer mode.
    pub mode: Mode,
    /// Options, names lower-cased, in the client's order.
    pub options: Vec<(String, String)>,
}

/// A packet a TFTP server receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// RRQ or WRQ.
    Request(Request),
    /// ACK of a block.
    Ack(u16),
    /// An error from the client (e.g. OVMF aborting after the OACK).
    Error(u16, String),
    /// DATA (only legal in write transfers, which the server refuses).
    Data(u16, Vec<u8>),
}

/// Why bytes are not a packet the server can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than an opcode, or a field is cut off.
    #[error("truncated packet")]
    Truncated,
    /// An opcode the server never receives.
    #[error("unknown or unexpected opcode {0}")]
    Opcode(u16),
    /// Not `octet`, `netascii` (or the obsolete `mail`).
    #[error("unknown transfer mode")]
    Mode,
    /// A field is not UTF-8 / ASCII.
    #[error("a field is not text")]
    NotText,
    /// An option without a value, or a repeated option.
    #[error("malformed options")]
    Options,
    /// An empty file name.
    #[error("empty file name")]
    EmptyName,
}

/// Longest request accepted (a request fits the 512-byte minimum datagram).
pub const MAX_REQUEST: usize = 512;

fn fields(b: &[u8]) -> Result<Vec<&str>, ParseError> {
    // Every field is NUL-terminated: the last byte must be NUL.
    let body = b.strip_suffix(&[0]).ok_or(ParseError::Truncated)?;
    body.split(|c| *c == 0)
        .map(|f| std::str::from_utf8(f).map_err(|_| ParseError::NotText))
        .collect()
}

/// Parses a datagram received by the server.
pub fn parse(b: &[u8]) -> Result<Packet, ParseError> {
    let op = u16::from_be_bytes([
        *b.first().ok_or(ParseError::Truncated)?,
        *b.get(1).ok_or(ParseError::Truncated)?,
    ]);
    let rest = &b[2..];
    match op {
        opcode::RRQ | opcode::WRQ => {
            if b.len() > MAX_REQUEST {
                return Err(ParseError::Options);
            }
            let f = fields(rest)?;
            let (name, mode) = match f.as_slice() {
                [name, mode, ..] => (*name, *mode),
                _ => return Err(ParseError::Truncated),
            };
            if name.is_empty() {
                return Err(ParseError::EmptyName);
            }
            let mode = match mode.to_ascii_lowercase().as_str() {
                "octet" => Mode::Octet,
                "netascii" => Mode::Netascii,
                _ => return Err(ParseError::Mode),
            };
            let opts = &f[2..];
            if opts.len() % 2 != 0 {
                return Err(ParseError::Options);
            }
            let mut options: Vec<(String, String)> = Vec::new();
            for pair in opts.chunks(2) {
                let name = pair[0].to_ascii_lowercase();
                if name.is_empty() || options.iter().any(|(n, _)| *n == name) {
                    return Err(ParseError::Options);
                }
                options.push((name, pair[1].to_owned()));
            }
            Ok(Packet::Request(Request {
                write: op == opcode::WRQ,
                filename: name.to_owned(),
                mode,
                options,
            }))
        }
        opcode::ACK => {
            let block = rest.get(..2).ok_or(ParseError::Truncated)?;
            Ok(Packet::Ack(u16::from_be_bytes([block[0], block[1]])))
        }
        opcode::ERROR => {
            let code = rest.get(..2).ok_or(ParseError::Truncated)?;
            // Some clients omit the terminating NUL of the message; accept both.
            let msg = rest[2..].strip_suffix(&[0]).unwrap_or(&rest[2..]);
            Ok(Packet::Error(
                u16::from_be_bytes([code[0], code[1]]),
                String::from_utf8_lossy(msg).into_owned(),
            ))
        }
        opcode::DATA => {
            let block = rest.get(..2).ok_or(ParseError::Truncated)?;
            Ok(Packet::Data(
                u16::from_be_bytes([block[0], block[1]]),
                rest[2..].to_vec(),
            ))
        }
        other => Err(ParseError::Opcode(other)),
    }
}

/// Writes a DATA header for `block` into `out` (the payload follows it).
pub fn data_header(block: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&opcode::DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

/// Encodes an ERROR packet.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&opcode::ERROR.to_be_bytes());
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend(message.bytes().filter(|b| *b != 0));
    out.push(0);
    out
}

/// Encodes an OACK with the accepted options, in the order given.
pub fn oack(options: &[(&str, String)]) -> Vec<u8> {
    let mut out = opcode::OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(parts: &[&str]) -> Vec<u8> {
        let mut b = vec![0, 1];
        for p in parts {
            b.extend_from_slice(p.as_bytes());
            b.push(0);
        }
        b
    }

    #[test]
    fn parses_an_ovmf_style_request() {
        let p = parse(&rrq(&[
            "ipxe.efi",
            "octet",
            "tsize",
            "0",
            "blksize",
            "1468",
            "windowsize",
            "4",
        ]))
        .expect("valid");
        let Packet::Request(r) = p else {
            panic!("{p:?}")
        };
        assert!(!r.write);
        assert_eq!(r.filename, "ipxe.efi");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            r.options,
            [
                ("tsize".into(), "0".into()),
                ("blksize".into(), "1468".into()),
                ("windowsize".into(), "4".into())
            ]
        );
    }

    #[test]
    fn mode_and_option_names_are_case_insensitive() {
        let Packet::Request(r) = parse(&rrq(&["f", "NetASCII", "BLKSIZE", "512"])).expect("valid")
        else {
            panic!()
        };
        assert_eq!(r.mode, Mode::Netascii);
        assert_eq!(r.options[0].0, "blksize");
    }

    #[test]
    fn refuses_malformed_requests() {
        assert_eq!(parse(&[]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0]), Err(ParseError::Truncated));
        assert_eq!(parse(&[0, 1, b'f']), Err(ParseError::Truncated));
        assert_eq!(parse(&rrq(&["f"])), Err(ParseError::Truncated));
        assert_eq!(parse(&rrq(&["", "octet"])), Err(ParseError::EmptyName));
        assert_eq!(parse(&rrq(&["f", "mail"])), Err(ParseError::Mode));
        assert_eq!(
            parse(&rrq(&["f", "octet", "blksize"])),
            Err(ParseError::Options)
        );
        assert_eq!(
            parse(&rrq(&["f", "octet", "tsize", "0", "TSIZE", "0"])),
            Err(ParseError::Options)
        );
        assert_eq!(parse(&[0, 9, 0, 0]), Err(ParseError::Opcode(9)));
        assert_eq!(parse(&[0, 6, 0]), Err(ParseError::Opcode(6)));
        let mut long = rrq(&["f", "octet"]);
        long.resize(600, b'a');
        long.push(0);
        // Longer than a request may be (RFC 2348's 512 bytes): refused before its fields.
        assert_eq!(parse(&long), Err(ParseError::Options));
    }

    #[test]
    fn acks_errors_and_data() {
        assert_eq!(parse(&[0, 4, 0xff, 0xfe]), Ok(Packet::Ack(0xfffe)));
        assert_eq!(parse(&[0, 4, 1]), Err(ParseError::Truncated));
        assert_eq!(
            parse(&[0, 5, 0, 8, b'n', b'o', 0]),
            Ok(Packet::Error(8, "no".into()))
        );
        assert_eq!(parse(&[0, 5, 0, 0, b'x']), Ok(Packet::Error(0, "x".into())));
        assert_eq!(parse(&[0, 3, 0, 1, 9]), Ok(Packet::Data(1, vec![9])));
    }

    #[test]
    fn encodes_server_packets() {
        assert_eq!(
            error(ErrorCode::FileNotFound, "nope"),
            [0, 5, 0, 1, b'n', b'o', b'p', b'e', 0]
        );
        assert_eq!(
            oack(&[("tsize", "3".into())]),
            [0, 6, b't', b's', b'i', b'z', b'e', 0, b'3', 0]
        );
        let mut d = Vec::new();
        data_header(0x0102, &mut d);
        assert_eq!(d, [0, 3, 1, 2]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 7u32;
        for len in 0..64usize {
            for _ in 0..100 {
                let b: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        (seed >> 24) as u8 % 8
                    })
                    .collect();
                let _ = parse(&b);
            }
        }
    }
}
