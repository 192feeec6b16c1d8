//! Checking and decoding DHCPv4 requests before any policy sees them.
//!
//! dhcproto decodes the fixed header and options; this module first walks the raw bytes so
//! that truncated or overrunning options, a missing magic cookie, wrong op codes and bad
//! hardware fields are refused with a reason (and counted) instead of half-parsed. Option
//! overload (option 52, RFC 2131 §4.1) is supported: options carried in `file` and `sname`
//! are merged in.

use dhcproto::{
    v4::{DhcpOption, DhcpOptions, Message, MessageType, Opcode, OptionCode},
    Decodable, Decoder,
};

/// Why a packet was dropped without an answer. The label is the metric's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than a BOOTP header plus magic cookie.
    Truncated,
    /// Larger than any DHCP message can be.
    Oversized,
    /// The magic cookie is wrong.
    BadCookie,
    /// An option runs past the end of its area.
    BadOption,
    /// Not a BOOTREQUEST.
    WrongOp,
    /// Not Ethernet with a 6-byte address, or a zero/multicast MAC.
    BadHardware,
    /// No option 53.
    NoMessageType,
    /// A message type a server never receives (OFFER, ACK, ...).
    UnexpectedType,
    /// dhcproto could not decode it.
    Undecodable,
    /// The client exceeded `dhcp.rate_limit`.
    RateLimited,
    /// No configured subnet matches the client's network.
    NoSubnet,
    /// The pool of the client's subnet is exhausted.
    PoolExhausted,
    /// A relayed request (giaddr set) from a source not in `dhcp.relays`.
    RelayNotAllowed,
    /// A RELEASE whose source address is not its ciaddr (someone else's lease).
    ReleaseNotFromClient,
    /// A DECLINE over its subnet's `dhcp.decline_burst` / `dhcp.decline_per_hour`.
    DeclineRateLimited,
}

impl DropReason {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::Oversized => "oversized",
            Self::BadCookie => "bad_cookie",
            Self::BadOption => "bad_option",
            Self::WrongOp => "wrong_op",
            Self::BadHardware => "bad_hardware",
            Self::NoMessageType => "no_message_type",
            Self::UnexpectedType => "unexpected_type",
            Self::Undecodable => "undecodable",
            Self::RateLimited => "rate_limited",
            Self::NoSubnet => "no_subnet",
            Self::PoolExhausted => "pool_exhausted",
            Self::RelayNotAllowed => "relay_not_allowed",
            Self::ReleaseNotFromClient => "release_not_from_client",
            Self::DeclineRateLimited => "decline_rate_limited",
        }
    }
}

const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header plus cookie.
const MIN_LEN: usize = 240;
/// No DHCP message is larger than a jumbo-less IPv4 datagram's payload.
pub const MAX_LEN: usize = 1500 - 20 - 8;

/// Walks a TLV option area; `Ok(Some(v))` is the option-overload value if option 52 was seen.
fn walk(area: &[u8]) -> Result<Option<u8>, DropReason> {
    let mut i = 0;
    let mut overload = None;
    while i < area.len() {
        match area[i] {
            0 => i += 1,
            255 => return Ok(overload),
            code => {
                let len = usize::from(*area.get(i + 1).ok_or(DropReason::BadOption)?);
                let data = area.get(i + 2..i + 2 + len).ok_or(DropReason::BadOption)?;
                if !bootfabric_abi::dhcp::option_length_ok(code, len) {
                    return Err(DropReason::BadOption);
                }
                if code == 52 {
                    overload = Some(*data.first().ok_or(DropReason::BadOption)?);
                }
                i += 2 + len;
            }
        }
    }
    // Some clients omit the end option; the area simply runs out.
    Ok(overload)
}

/// Checks and decodes a request. The returned message has options from overloaded `file`
/// and `sname` fields merged in.
pub fn decode_request(buf: &[u8]) -> Result<Message, DropReason> {
    if buf.len() < MIN_LEN {
        return Err(DropReason::Truncated);
    }
    if buf.len() > MAX_LEN {
        return Err(DropReason::Oversized);
    }
    if buf[0] != 1 {
        return Err(DropReason::WrongOp);
    }
    if buf[1] != 1 || buf[2] != 6 {
        return Err(DropReason::BadHardware);
    }
    let mac = &buf[28..34];
    if mac.iter().all(|b| *b == 0) || mac[0] & 1 == 1 {
        return Err(DropReason::BadHardware);
    }
    if buf[236..240] != COOKIE {
        return Err(DropReason::BadCookie);
    }
    let overload = walk(&buf[MIN_LEN..])?;
    let mut msg = Message::decode(&mut Decoder::new(buf)).map_err(|_| DropReason::Undecodable)?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(DropReason::WrongOp);
    }
    if let Some(v) = overload {
        let mut extra = DhcpOptions::new();
        let areas: &[(u8, std::ops::Range<usize>)] = &[(1, 108..236), (2, 44..108)];
        for (bit, range) in areas {
            if v & bit != 0 {
                let area = &buf[range.clone()];
                walk(area)?;
                let opts = DhcpOptions::decode(&mut Decoder::new(area))
                    .map_err(|_| DropReason::BadOption)?;
                for (_, o) in opts.iter() {
                    extra.insert(o.clone());
                }
            }
        }
        for (_, o) in extra.iter() {
            // Options in the main area win over the overloaded copies.
            if msg.opts().get(OptionCode::from(o)).is_none() {
                msg.opts_mut().insert(o.clone());
            }
        }
        msg.opts_mut().remove(OptionCode::OptionOverload);
        if v & 1 != 0 {
            msg.clear_fname();
        }
        if v & 2 != 0 {
            msg.clear_sname();
        }
    }
    match msg.opts().get(OptionCode::MessageType) {
        Some(DhcpOption::MessageType(
            MessageType::Discover
            | MessageType::Request
            | MessageType::Decline
            | MessageType::Release
            | MessageType::Inform,
        )) => Ok(msg),
        Some(_) => Err(DropReason::UnexpectedType),
        None => Err(DropReason::NoMessageType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn discover() -> Vec<u8> {
        let mut p = vec![0u8; 300];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&[1, 2, 3, 4]);
        p[28..34].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        p[236..240].copy_from_slice(&COOKIE);
        p[240..243].copy_from_slice(&[53, 1, 1]);
        p[243] = 255;
        p
    }

    #[test]
    fn accepts_a_discover() {
        let m = decode_request(&discover()).expect("valid");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
    }

    #[test]
    fn refuses_each_defect_with_its_reason() {
        type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Mutation, DropReason)> = vec![
            (Box::new(|p| p.truncate(200)), DropReason::Truncated),
            (Box::new(|p| p.resize(2000, 0)), DropReason::Oversized),
            (Box::new(|p| p[0] = 2), DropReason::WrongOp),
            (Box::new(|p| p[2] = 16), DropReason::BadHardware),
            (Box::new(|p| p[28] = 1), DropReason::BadHardware),
            (Box::new(|p| p[28..34].fill(0)), DropReason::BadHardware),
            (Box::new(|p| p[236] = 0), DropReason::BadCookie),
            (
                Box::new(|p| {
                    p.truncate(243);
                    p.extend_from_slice(&[12, 200, b'x']);
                }),
                DropReason::BadOption,
            ),
            (
                Box::new(|p| {
                    p.truncate(241);
                    p.push(5);
                }),
                DropReason::BadOption,
            ),
            (
                Box::new(|p| p[240..243].copy_from_slice(&[12, 1, b'x'])),
                DropReason::NoMessageType,
            ),
            (Box::new(|p| p[242] = 2), DropReason::UnexpectedType),
            (Box::new(|p| p[242] = 5), DropReason::UnexpectedType),
        ];
        for (i, (mutate, reason)) in cases.into_iter().enumerate() {
            let mut p = discover();
            mutate(&mut p);
            assert_eq!(decode_request(&p).err(), Some(reason), "case {i}");
        }
    }

    #[test]
    fn option_overload_is_merged() {
        let mut p = discover();
        // option 52 = 1: more options in `file`; put the message type there.
        p[240..246].copy_from_slice(&[52, 1, 1, 12, 1, b'h']);
        p[246] = 255;
        p[108..112].copy_from_slice(&[53, 1, 3, 255]);
        let m = decode_request(&p).expect("valid");
        assert_eq!(m.opts().msg_type(), Some(MessageType::Request));
        assert!(m.opts().get(OptionCode::OptionOverload).is_none());
        // A broken overloaded area is refused, not half-read.
        p[108..112].fill(0);
        p[234..236].copy_from_slice(&[12, 9]);
        assert_eq!(decode_request(&p).err(), Some(DropReason::BadOption));
    }

    #[test]
    fn fixed_size_options_with_wrong_lengths_are_refused() {
        // Found by the fuzz target: option 153 with length 0 tripped an assertion inside
        // dhcproto; a lease time of 2 bytes would misalign every option after it.
        for opt in [
            &[153u8, 0][..],
            &[51, 2, 0, 1],
            &[53, 2, 1, 1],
            &[81, 1, 0],
            &[6, 3, 1, 2, 3],
        ] {
            let mut p = discover();
            p.truncate(243);
            p.extend_from_slice(opt);
            p.push(255);
            assert_eq!(
                decode_request(&p).err(),
                Some(DropReason::BadOption),
                "{opt:?}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678u32;
        for len in [0usize, 1, 239, 240, 241, 300, 576, 1472] {
            for _ in 0..200 {
                let mut p = discover();
                p.resize(len.max(1), 0);
                for b in p.iter_mut().skip(236) {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    *b = (seed >> 16) as u8;
                }
                let _ = decode_request(&p);
            }
        }
    }
}
