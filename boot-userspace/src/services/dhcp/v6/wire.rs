//! DHCPv6 messages on the wire (RFC 8415 §8, §9, §21): decoding a client message, possibly
//! inside relay-forward messages, and encoding the answer inside the matching relay-replies.
//!
//! Our own codec rather than dhcproto's v6 module: dhcproto decodes every Relay Message
//! option as a relay message, so the client message inside a relay-forward (the case every
//! routed provisioning network has) does not decode. This one reads only what the server
//! uses, borrows option bodies from the packet, and bounds everything a hostile packet could
//! make it collect.

use std::net::Ipv6Addr;

/// Message types (RFC 8415 §7.3).
pub mod msg {
    /// Solicit.
    pub const SOLICIT: u8 = 1;
    /// Advertise.
    pub const ADVERTISE: u8 = 2;
    /// Request.
    pub const REQUEST: u8 = 3;
    /// Confirm.
    pub const CONFIRM: u8 = 4;
    /// Renew.
    pub const RENEW: u8 = 5;
    /// Rebind.
    pub const REBIND: u8 = 6;
    /// Reply.
    pub const REPLY: u8 = 7;
    /// Release.
    pub const RELEASE: u8 = 8;
    /// Decline.
    pub const DECLINE: u8 = 9;
    /// Information-request.
    pub const INFORMATION_REQUEST: u8 = 11;
    /// Relay-forward.
    pub const RELAY_FORW: u8 = 12;
    /// Relay-reply.
    pub const RELAY_REPL: u8 = 13;
}

/// Option codes (RFC 8415 §21, RFC 3646, RFC 5970, RFC 6939).
pub mod opt {
    /// Client Identifier.
    pub const CLIENTID: u16 = 1;
    /// Server Identifier.
    pub const SERVERID: u16 = 2;
    /// Identity Association for Non-temporary Addresses.
    pub const IA_NA: u16 = 3;
    /// IA Address.
    pub const IAADDR: u16 = 5;
    /// Option Request.
    pub const ORO: u16 = 6;
    /// Preference.
    pub const PREFERENCE: u16 = 7;
    /// Relay Message.
    pub const RELAY_MSG: u16 = 9;
    /// Status Code.
    pub const STATUS_CODE: u16 = 13;
    /// Rapid Commit.
    pub const RAPID_COMMIT: u16 = 14;
    /// User Class.
    pub const USER_CLASS: u16 = 15;
    /// Vendor Class.
    pub const VENDOR_CLASS: u16 = 16;
    /// Interface-Id.
    pub const INTERFACE_ID: u16 = 18;
    /// DNS Recursive Name Server (RFC 3646).
    pub const DNS_SERVERS: u16 = 23;
    /// Boot File URL (RFC 5970).
    pub const BOOTFILE_URL: u16 = 59;
    /// Boot File Parameters (RFC 5970).
    pub const BOOTFILE_PARAM: u16 = 60;
    /// Client System Architecture Type (RFC 5970).
    pub const CLIENT_ARCH_TYPE: u16 = 61;
    /// Client Link-Layer Address (RFC 6939), added by relays.
    pub const CLIENT_LINKLAYER_ADDR: u16 = 79;
}

/// Status codes (RFC 8415 §21.13).
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0;
    /// No addresses available.
    pub const NO_ADDRS_AVAIL: u16 = 2;
    /// No binding for the IA.
    pub const NO_BINDING: u16 = 3;
    /// The addresses are not on the client's link.
    pub const NOT_ON_LINK: u16 = 4;
}

/// Relay-forwards a message may be wrapped in before we refuse it (RFC 8415 HOP_COUNT_LIMIT
/// is 8).
pub const MAX_RELAY_DEPTH: usize = 8;
/// IA_NAs one message may carry that the server answers; more is refused (a firmware sends
/// one, an OS one per interface it configures).
pub const MAX_IAS: usize = 8;
/// Addresses per IA_NA that the server reads.
pub const MAX_ADDRS_PER_IA: usize = 8;
/// Longest DUID RFC 8415 §11.1 allows (128 octets) plus its two type octets.
pub const MAX_DUID: usize = 130;

/// Why a packet was dropped before it reached the server's rules: a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than its header or an option's length runs past the end.
    #[error("truncated")]
    Truncated,
    /// A message type a server never receives (Advertise, Reply, Relay-reply, unknown).
    #[error("not a client message")]
    NotClientMessage,
    /// A relay-forward without a Relay Message option.
    #[error("relay-forward without a relay message")]
    NoRelayMessage,
    /// Relay-forwards nested deeper than [`MAX_RELAY_DEPTH`].
    #[error("relayed too many times")]
    TooDeep,
    /// An option appears twice where RFC 8415 allows it once.
    #[error("duplicate option")]
    Duplicate,
    /// An option body has the wrong length for its type.
    #[error("malformed option")]
    Malformed,
    /// More IA_NAs, or addresses in one, than the server answers.
    #[error("too many identity associations")]
    TooMany,
}

impl DecodeError {
    /// The metric label.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::NotClientMessage => "not_client_message",
            Self::NoRelayMessage => "no_relay_message",
            Self::TooDeep => "too_deep",
            Self::Duplicate => "duplicate_option",
            Self::Malformed => "malformed_option",
            Self::TooMany => "too_many_ias",
        }
    }
}

/// The options of a message body, in order: `(code, body)`, or `Truncated` once the
/// remaining bytes do not hold a whole option.
pub fn options(mut b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    std::iter::from_fn(move || {
        if b.is_empty() {
            return None;
        }
        let item = (|| {
            let head = b.get(..4).ok_or(DecodeError::Truncated)?;
            let code = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let body = b.get(4..4 + len).ok_or(DecodeError::Truncated)?;
            b = &b[4 + len..];
            Ok((code, body))
        })();
        if item.is_err() {
            b = &[];
        }
        Some(item)
    })
}

/// One IA_NA as the client sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IaNa {
    /// The client's identifier for the IA.
    pub iaid: u32,
    /// Addresses the client lists in it.
    pub addrs: Vec<Ipv6Addr>,
}

/// A client message, its option bodies borrowed from the packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientMsg<'a> {
    /// Message type.
    pub kind: u8,
    /// Transaction id.
    pub xid: [u8; 3],
    /// Option 1.
    pub client_id: Option<&'a [u8]>,
    /// Option 2.
    pub server_id: Option<&'a [u8]>,
    /// Option 3, each.
    pub ia_na: Vec<IaNa>,
    /// Option 6.
    pub oro: Vec<u16>,
    /// Option 14.
    pub rapid_commit: bool,
    /// Option 61, first architecture.
    pub arch: Option<u16>,
    /// Option 16: the enterprise number and the first class item.
    pub vendor_class: Option<(u32, &'a [u8])>,
    /// Option 15: the class items.
    pub user_classes: Vec<&'a [u8]>,
}

impl ClientMsg<'_> {
    /// Whether the client asked for `code` in its Option Request option.
    pub fn wants(&self, code: u16) -> bool {
        self.oro.contains(&code)
    }
}

/// One relay agent the message passed, outermost first in [`Decoded::relays`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayHop<'a> {
    /// Hop count.
    pub hop_count: u8,
    /// Link address: identifies the client's link.
    pub link: Ipv6Addr,
    /// Peer address: the client (innermost) or the previous relay.
    pub peer: Ipv6Addr,
    /// Option 18, echoed in the relay-reply.
    pub interface_id: Option<&'a [u8]>,
    /// Option 79: link-layer type and address of the client.
    pub client_lladdr: Option<(u16, &'a [u8])>,
}

/// A decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// Relay-forwards, outermost first; empty for a client's own packet.
    pub relays: Vec<RelayHop<'a>>,
    /// The client's message.
    pub msg: ClientMsg<'a>,
}

impl Decoded<'_> {
    /// The client's link as the relay nearest to it names it (its link address), for relayed
    /// messages. A lightweight relay (RFC 6221, a switch) leaves it unspecified: the next
    /// relay outwards names the link then (RFC 8415 §13.1); `None` when none does (the
    /// message came through on-link relays only: the receiving interface's link).
    pub fn client_link(&self) -> Option<Ipv6Addr> {
        self.relays
            .iter()
            .rev()
            .map(|r| r.link)
            .find(|l| !l.is_unspecified())
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

fn addr_at(b: &[u8], i: usize) -> Option<Ipv6Addr> {
    let o: [u8; 16] = b.get(i..i + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(o))
}

/// Fills an option RFC 8415 allows once per message.
fn once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Duplicate);
    }
    *slot = Some(v);
    Ok(())
}

/// Decodes a packet a server received.
pub fn decode(mut b: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let mut relays = Vec::new();
    loop {
        let kind = *b.first().ok_or(DecodeError::Truncated)?;
        if kind != msg::RELAY_FORW {
            let msg = client(b)?;
            return Ok(Decoded { relays, msg });
        }
        if relays.len() == MAX_RELAY_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let (Some(link), Some(peer)) = (addr_at(b, 2), addr_at(b, 18)) else {
            return Err(DecodeError::Truncated);
        };
        let mut hop = RelayHop {
            hop_count: b[1],
            link,
            peer,
            interface_id: None,
            client_lladdr: None,
        };
        let mut inner = None;
        for o in options(&b[34..]) {
            match o? {
                (opt::RELAY_MSG, body) => once(&mut inner, body)?,
                (opt::INTERFACE_ID, body) => once(&mut hop.interface_id, body)?,
                (opt::CLIENT_LINKLAYER_ADDR, body) => {
                    let t = u16_at(body, 0).ok_or(DecodeError::Malformed)?;
                    once(&mut hop.client_lladdr, (t, &body[2..]))?;
                }
                _ => {}
            }
        }
        relays.push(hop);
        b = inner.ok_or(DecodeError::NoRelayMessage)?;
    }
}

fn client(b: &[u8]) -> Result<ClientMsg<'_>, DecodeError> {
    let kind = b[0];
    if !matches!(
        kind,
        msg::SOLICIT
            | msg::REQUEST
            | msg::CONFIRM
            | msg::RENEW
            | msg::REBIND
            | msg::RELEASE
            | msg::DECLINE
            | msg::INFORMATION_REQUEST
    ) {
        return Err(DecodeError::NotClientMessage);
    }
    let xid: [u8; 3] = b
        .get(1..4)
        .and_then(|x| x.try_into().ok())
        .ok_or(DecodeError::Truncated)?;
    let mut m = ClientMsg {
        kind,
        xid,
        ..ClientMsg::default()
    };
    let (mut oro, mut arch, mut vendor, mut user) = (None, None, None, None);
    for o in options(&b[4..]) {
        let (code, body) = o?;
        match code {
            opt::CLIENTID | opt::SERVERID => {
                if body.len() < 2 || body.len() > MAX_DUID {
                    return Err(DecodeError::Malformed);
                }
                let slot = if code == opt::CLIENTID {
                    &mut m.client_id
                } else {
                    &mut m.server_id
                };
                once(slot, body)?;
            }
            opt::IA_NA => {
                if m.ia_na.len() == MAX_IAS {
                    return Err(DecodeError::TooMany);
                }
                m.ia_na.push(ia_na(body)?);
            }
            opt::ORO => {
                if body.len() % 2 != 0 {
                    return Err(DecodeError::Malformed);
                }
                once(&mut oro, body)?;
            }
            opt::RAPID_COMMIT => m.rapid_commit = true,
            opt::CLIENT_ARCH_TYPE => {
                if body.is_empty() || body.len() % 2 != 0 {
                    return Err(DecodeError::Malformed);
                }
                once(&mut arch, u16_at(body, 0).ok_or(DecodeError::Malformed)?)?;
            }
            opt::VENDOR_CLASS => {
                let enterprise = u32_at(body, 0).ok_or(DecodeError::Malformed)?;
                let first = class_items(&body[4..]).next().unwrap_or(&[]);
                once(&mut vendor, (enterprise, first))?;
            }
            opt::USER_CLASS => once(&mut user, body)?,
            _ => {}
        }
    }
    m.oro = oro
        .map(|o| {
            o.chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect()
        })
        .unwrap_or_default();
    m.arch = arch;
    m.vendor_class = vendor;
    m.user_classes = user
        .map(|u| class_items(u).take(16).collect())
        .unwrap_or_default();
    // Sorted so duplicates (one IAID twice) are seen: answering both would bind two
    // addresses for one IA.
    let mut ids: Vec<u32> = m.ia_na.iter().map(|ia| ia.iaid).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(DecodeError::Duplicate);
    }
    Ok(m)
}

/// RFC 8415 §21.15/§21.16 class items: each a two-octet length and its data; stops at the
/// first that runs past the end.
fn class_items(mut b: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(b, 0)?);
        let item = b.get(2..2 + len)?;
        b = &b[2 + len..];
        Some(item)
    })
}

fn ia_na(body: &[u8]) -> Result<IaNa, DecodeError> {
    let iaid = u32_at(body, 0).ok_or(DecodeError::Malformed)?;
    if body.len() < 12 {
        return Err(DecodeError::Malformed);
    }
    let mut addrs = Vec::new();
    for o in options(&body[12..]) {
        if let (opt::IAADDR, a) = o? {
            if addrs.len() == MAX_ADDRS_PER_IA {
                return Err(DecodeError::TooMany);
            }
            addrs.push(
                addr_at(a, 0)
                    .filter(|_| a.len() >= 24)
                    .ok_or(DecodeError::Malformed)?,
            );
        }
    }
    Ok(IaNa { iaid, addrs })
}

/// Builds a message's options.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// A message of type `kind` with transaction id `xid`.
    pub fn message(kind: u8, xid: [u8; 3]) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.push(kind);
        buf.extend_from_slice(&xid);
        Self { buf }
    }

    /// Appends option `code` with `body`.
    pub fn opt(&mut self, code: u16, body: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(&code.to_be_bytes());
        // Every body we write is far below 64 KiB (URLs are checked at load).
        let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf
            .extend_from_slice(&body[..usize::from(len).min(body.len())]);
        self
    }

    /// Appends option `code` whose body `fill` writes (nested options).
    pub fn nested(&mut self, code: u16, fill: impl FnOnce(&mut Writer)) -> &mut Self {
        let mut inner = Writer::default();
        fill(&mut inner);
        self.opt(code, &inner.buf)
    }

    /// Appends a bare body (the fixed part of an IA_NA).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// A Status Code option.
    pub fn status(&mut self, code: u16, text: &str) -> &mut Self {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(text.as_bytes());
        self.opt(opt::STATUS_CODE, &body)
    }

    /// The bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Wraps `reply` in relay-replies matching `relays` (outermost first), so each relay can
/// hand it on: the same hop count, link and peer addresses, and the Interface-Id echoed.
pub fn relay_replies(relays: &[RelayHop<'_>], mut reply: Vec<u8>) -> Vec<u8> {
    for hop in relays.iter().rev() {
        let mut w = Writer {
            buf: Vec::with_capacity(reply.len() + 64),
        };
        w.raw(&[msg::RELAY_REPL, hop.hop_count])
            .raw(&hop.link.octets())
            .raw(&hop.peer.octets());
        if let Some(id) = hop.interface_id {
            w.opt(opt::INTERFACE_ID, id);
        }
        w.opt(opt::RELAY_MSG, &reply);
        reply = w.finish();
    }
    reply
}

/// The MAC a DUID-LLT (type 1) or DUID-LL (type 3) of hardware type 1 (Ethernet) carries.
pub fn duid_mac(duid: &[u8]) -> Option<[u8; 6]> {
    let (kind, htype) = (u16_at(duid, 0)?, u16_at(duid, 2)?);
    let at = match kind {
        1 => 8,
        3 => 4,
        _ => return None,
    };
    if htype != 1 || duid.len() != at + 6 {
        return None;
    }
    duid[at..].try_into().ok()
}

/// The MAC an EUI-64 link-local address was formed from (RFC 4291 appendix A), if it was.
pub fn eui64_mac(ip: Ipv6Addr) -> Option<[u8; 6]> {
    let o = ip.octets();
    if !ip.is_unicast_link_local() || o[11] != 0xff || o[12] != 0xfe {
        return None;
    }
    Some([o[8] ^ 0x02, o[9], o[10], o[13], o[14], o[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solicit() -> Vec<u8> {
        let mut w = Writer::message(msg::SOLICIT, [1, 2, 3]);
        w.opt(
            opt::CLIENTID,
            &[0, 3, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56],
        )
        .nested(opt::IA_NA, |w| {
            w.raw(&[0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
        })
        .opt(opt::ORO, &[0, 59, 0, 23])
        .opt(opt::CLIENT_ARCH_TYPE, &[0, 16])
        .opt(
            opt::VENDOR_CLASS,
            &[
                0, 0, 0x01, 0x57, 0, 10, b'H', b'T', b'T', b'P', b'C', b'l', b'i', b'e', b'n', b't',
            ],
        )
        .opt(opt::USER_CLASS, &[0, 4, b'i', b'P', b'X', b'E'])
        .opt(opt::RAPID_COMMIT, &[]);
        w.finish()
    }

    #[test]
    fn a_solicit_decodes_with_what_the_server_reads() {
        let pkt = solicit();
        let d = decode(&pkt).expect("decodes");
        assert!(d.relays.is_empty());
        let m = d.msg;
        assert_eq!((m.kind, m.xid), (msg::SOLICIT, [1, 2, 3]));
        assert_eq!(
            m.ia_na,
            vec![IaNa {
                iaid: 7,
                addrs: vec![]
            }]
        );
        assert!(m.wants(opt::BOOTFILE_URL) && m.rapid_commit);
        assert_eq!(m.arch, Some(16));
        assert_eq!(m.vendor_class, Some((343, &b"HTTPClient"[..])));
        assert_eq!(m.user_classes, vec![&b"iPXE"[..]]);
        assert_eq!(
            m.client_id.and_then(duid_mac),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
    }

    #[test]
    fn a_relayed_solicit_decodes_and_the_reply_is_wrapped_back() {
        let inner = solicit();
        let link: Ipv6Addr = "2001:db8:78::1".parse().expect("ip");
        let peer: Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().expect("ip");
        let mut w = Writer::default();
        w.raw(&[msg::RELAY_FORW, 0])
            .raw(&link.octets())
            .raw(&peer.octets())
            .opt(opt::INTERFACE_ID, b"port7")
            .opt(opt::CLIENT_LINKLAYER_ADDR, &[0, 1, 2, 0, 0, 0, 0, 9])
            .opt(opt::RELAY_MSG, &inner);
        let pkt = w.finish();
        let d = decode(&pkt).expect("decodes");
        assert_eq!(d.client_link(), Some(link));
        assert_eq!(
            d.relays[0].client_lladdr,
            Some((1, &[2, 0, 0, 0, 0, 9][..]))
        );
        assert_eq!(d.msg.kind, msg::SOLICIT);
        let wrapped = relay_replies(&d.relays, vec![msg::REPLY, 1, 2, 3]);
        assert_eq!(wrapped[0], msg::RELAY_REPL);
        assert_eq!(&wrapped[2..18], &link.octets());
        let opts: Vec<_> = options(&wrapped[34..])
            .collect::<Result<_, _>>()
            .expect("opts");
        assert_eq!(
            opts,
            vec![
                (opt::INTERFACE_ID, &b"port7"[..]),
                (opt::RELAY_MSG, &[7u8, 1, 2, 3][..])
            ]
        );
    }

    #[test]
    fn a_lightweight_relays_unspecified_link_is_named_by_the_next_relay() {
        let inner = solicit();
        let link: Ipv6Addr = "2001:db8:78::1".parse().expect("ip");
        let ldra = {
            let mut w = Writer::default();
            w.raw(&[msg::RELAY_FORW, 0])
                .raw(&Ipv6Addr::UNSPECIFIED.octets())
                .raw(&"fe80::1".parse::<Ipv6Addr>().expect("ip").octets())
                .opt(opt::RELAY_MSG, &inner);
            w.finish()
        };
        assert_eq!(
            decode(&ldra).expect("decodes").client_link(),
            None,
            "on-link only"
        );
        let mut w = Writer::default();
        w.raw(&[msg::RELAY_FORW, 1])
            .raw(&link.octets())
            .raw(&[0; 16])
            .opt(opt::RELAY_MSG, &ldra);
        assert_eq!(
            decode(&w.finish()).expect("decodes").client_link(),
            Some(link)
        );
    }

    #[test]
    fn hostile_packets_are_refused_not_trusted() {
        let pkt = solicit();
        // Every truncation either decodes a shorter valid message or fails; none panics.
        for n in 0..pkt.len() {
            let _ = decode(&pkt[..n]);
        }
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&[msg::REPLY, 0, 0, 0]),
            Err(DecodeError::NotClientMessage)
        );
        // A relay-forward nested deeper than the limit.
        let mut p = vec![msg::SOLICIT, 0, 0, 0];
        for _ in 0..=MAX_RELAY_DEPTH {
            let mut w = Writer::default();
            w.raw(&[msg::RELAY_FORW, 0])
                .raw(&[0; 32])
                .opt(opt::RELAY_MSG, &p);
            p = w.finish();
        }
        assert_eq!(decode(&p), Err(DecodeError::TooDeep));
        // Two client identifiers, two IA_NAs with one IAID, an odd ORO.
        let mut w = Writer::message(msg::SOLICIT, [0; 3]);
        w.opt(opt::CLIENTID, &[0, 3, 0, 1, 1, 2, 3, 4, 5, 6])
            .opt(opt::CLIENTID, &[0, 3, 0, 1, 1, 2, 3, 4, 5, 6]);
        assert_eq!(decode(&w.finish()), Err(DecodeError::Duplicate));
        let mut w = Writer::message(msg::SOLICIT, [0; 3]);
        for _ in 0..2 {
            w.nested(opt::IA_NA, |w| {
                w.raw(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
            });
        }
        assert_eq!(decode(&w.finish()), Err(DecodeError::Duplicate));
        let mut w = Writer::message(msg::SOLICIT, [0; 3]);
        w.opt(opt::ORO, &[0]);
        assert_eq!(decode(&w.finish()), Err(DecodeError::Malformed));
        let mut w = Writer::message(msg::SOLICIT, [0; 3]);
        for i in 0..=MAX_IAS as u8 {
            w.nested(opt::IA_NA, |w| {
                w.raw(&[0, 0, 0, i, 0, 0, 0, 0, 0, 0, 0, 0]);
            });
        }
        assert_eq!(decode(&w.finish()), Err(DecodeError::TooMany));
        // An option length past the end.
        assert_eq!(
            decode(&[msg::SOLICIT, 0, 0, 0, 0, 1, 0, 9, 0]),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn macs_come_from_ethernet_duids_and_eui64_link_locals_only() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        assert_eq!(
            duid_mac(&[0, 1, 0, 1, 0, 0, 0, 9, 0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            Some(mac)
        );
        assert_eq!(
            duid_mac(&[0, 3, 0, 6, 0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            None,
            "not Ethernet"
        );
        assert_eq!(
            duid_mac(&[0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]),
            None
        );
        assert_eq!(
            eui64_mac("fe80::5054:ff:fe12:3456".parse().expect("ip")),
            Some(mac)
        );
        assert_eq!(
            eui64_mac("fe80::1234:5678:9abc:def0".parse().expect("ip")),
            None
        );
        assert_eq!(
            eui64_mac("2001:db8::5054:ff:fe12:3456".parse().expect("ip")),
            None
        );
    }
}
