//! One received datagram in, the actions it calls for out: the receive loop's logic with no
//! socket, no clock and no lock of its own. [`decode`] checks the bytes; [`Step::handle`]
//! runs the rate limit and the server's decision and says what to count, log, record, commit
//! and send. The loop (`recv.rs`) takes the locks, supplies the time and carries the actions
//! out, so each of these is unit-tested as plain data.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
};

use dhcproto::v4::{Message, MessageType};

use super::{
    encode_reply,
    journal::LeaseRecord,
    ratelimit::RateLimiter,
    server::{self, Handled, Ingress, Server},
    wire::{self, DropReason},
};
use crate::model::{inventory::Mac, ledger::EventKind};

/// How long a receive loop stays quiet about an exhausted pool after saying so, per subnet.
const EXHAUSTED_LOG_MS: u64 = 10_000;

/// The ledger event for a DHCP exchange: the reply sent (OFFER, ACK or NAK, by this
/// service or by the kernel's fast path on its behalf) or the lease the client gave back
/// (DECLINE, RELEASE). The one place a DHCP message type becomes a boot step.
pub fn ledger_event(kind: MessageType) -> EventKind {
    match kind {
        MessageType::Offer => EventKind::DhcpOffer,
        MessageType::Nak => EventKind::DhcpNak,
        MessageType::Decline => EventKind::DhcpDecline,
        MessageType::Release => EventKind::DhcpRelease,
        _ => EventKind::DhcpAck,
    }
}

/// The `type` label of `bootfabric_dhcp_packets_total` for a request.
pub fn type_label(t: Option<MessageType>) -> &'static str {
    match t {
        Some(MessageType::Discover) => "discover",
        Some(MessageType::Request) => "request",
        Some(MessageType::Decline) => "decline",
        Some(MessageType::Release) => "release",
        Some(MessageType::Inform) => "inform",
        _ => "other",
    }
}

/// The `outcome` label of `bootfabric_dhcp_packets_total` for a reply.
pub fn reply_label(t: MessageType) -> &'static str {
    match t {
        MessageType::Offer => "offer",
        MessageType::Ack => "ack",
        MessageType::Nak => "nak",
        _ => "other",
    }
}

/// A request that passed the wire checks.
#[derive(Debug)]
pub struct Request {
    /// The message.
    pub msg: Message,
    /// The client's hardware address (chaddr).
    pub mac: Mac,
    /// Where it came from.
    pub peer: SocketAddrV4,
}

/// A ledger entry about a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The client.
    pub mac: Mac,
    /// What happened.
    pub event: EventKind,
    /// The address concerned, if any.
    pub ip: Option<Ipv4Addr>,
}

/// A reply ready for the wire, with what sending it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The encoded reply.
    pub out: Vec<u8>,
    /// Where it goes.
    pub dest: SocketAddrV4,
    /// `type` label of `bootfabric_dhcp_packets_total`.
    pub kind: &'static str,
    /// `outcome` label of `bootfabric_dhcp_packets_total`.
    pub outcome: &'static str,
    /// The ledger entry once it has left.
    pub record: LedgerEntry,
    /// What its log line says besides the ledger entry.
    pub line: ReplyLine,
}

/// The parts of a reply its exchange log line names that the ledger entry does not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplyLine {
    /// The transaction id.
    pub xid: u32,
    /// The boot file it names (option 67, else `file`), if any.
    pub file: Option<String>,
    /// The relay it goes through (giaddr), if relayed.
    pub relay: Option<Ipv4Addr>,
}

impl ReplyLine {
    /// The parts of `msg` its log line names; nothing (no allocation on the reply path)
    /// when the exchange lines are off.
    fn of(msg: &Message) -> Self {
        if !tracing::enabled!(target: crate::util::logs::EXCHANGE_LOG, tracing::Level::INFO) {
            return Self::default();
        }
        let file = match msg.opts().get(dhcproto::v4::OptionCode::BootfileName) {
            Some(dhcproto::v4::DhcpOption::BootfileName(b)) => {
                Some(String::from_utf8_lossy(b).into_owned())
            }
            _ => msg
                .fname_str()
                .and_then(Result::ok)
                .filter(|f| !f.is_empty())
                .map(str::to_owned),
        };
        Self {
            xid: msg.xid(),
            file,
            relay: Some(msg.giaddr()).filter(|ip| !ip.is_unspecified()),
        }
    }
}

/// A log line the loop writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Log {
    /// A datagram failed the wire checks (debug).
    Dropped {
        /// Its source.
        peer: SocketAddr,
        /// Why.
        reason: DropReason,
    },
    /// The server decided not to answer (debug).
    NoReply {
        /// The client.
        mac: Mac,
        /// Why.
        why: &'static str,
    },
    /// A DISCOVER found no free address (warning, at most one per subnet every 10 s).
    PoolExhausted {
        /// The subnet.
        subnet: String,
        /// The client.
        mac: Mac,
    },
    /// A reserved host was given a pool address because its reservation waits for another
    /// client's hold (info, at most once every 10 s per host).
    ReservationWaits {
        /// The reservation's owner.
        mac: Mac,
        /// The rule: "reservation 10.77.0.11 of host node01 waits: leased to … until …".
        why: String,
    },
    /// An iPXE without HTTPS was told an https script URL it cannot fetch (warning, at most
    /// once every 10 s per socket whatever the MAC: any machine can send the option, under
    /// any MAC).
    CannotFetch {
        /// The client.
        mac: Mac,
        /// The URL it was told.
        file: String,
    },
    /// A reply could not be encoded (warning).
    EncodeFailed {
        /// The client.
        mac: Mac,
        /// Why.
        error: String,
    },
}

/// What the loop does for one datagram, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `bootfabric_dhcp_dropped_total{reason}` + 1.
    Dropped(DropReason),
    /// `bootfabric_dhcp_packets_total{type, outcome}` + 1.
    Packet {
        /// Request type label.
        kind: &'static str,
        /// Outcome label.
        outcome: &'static str,
    },
    /// `bootfabric_dhcp_pool_exhausted_total{subnet}` + 1.
    Exhausted {
        /// Subnet label.
        subnet: String,
    },
    /// A log line.
    Log(Log),
    /// A ledger entry.
    Record(LedgerEntry),
    /// Send a reply now.
    Send(Reply),
    /// Make `record` durable in the background; `then`, if it is, sends that reply. An ACK
    /// never leaves before its lease is on disk.
    Commit {
        /// The lease record.
        record: LeaseRecord,
        /// The reply waiting for it.
        then: Option<Box<Reply>>,
        /// Sent instead of `then` when the address went to another fabric (cluster mode).
        if_lost: Option<Box<Reply>>,
    },
}

/// The wire checks: a request, or what to do with a datagram that failed them.
pub fn decode(bytes: &[u8], peer: SocketAddr) -> Result<Request, Vec<Action>> {
    let msg = wire::decode_request(bytes).map_err(|reason| {
        vec![
            Action::Dropped(reason),
            Action::Log(Log::Dropped { peer, reason }),
        ]
    })?;
    // The sockets are IPv4: a V6 peer cannot happen, and is ignored if it does.
    let SocketAddr::V4(peer) = peer else {
        return Err(Vec::new());
    };
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&msg.chaddr()[..6]);
    Ok(Request {
        msg,
        mac: Mac(mac),
        peer,
    })
}

/// The per-client rate limit: `Err` with what to do when `req` is over it. `limiter` is
/// `None` when its lock is poisoned: then every request is refused, as a limiter that cannot
/// say yes would.
pub fn admit(
    limiter: Option<&mut RateLimiter>,
    req: &Request,
    now_ms: u64,
) -> Result<(), Vec<Action>> {
    if limiter.is_some_and(|l| l.allow(req.mac, now_ms)) {
        Ok(())
    } else {
        Err(vec![Action::Dropped(DropReason::RateLimited)])
    }
}

/// The times a step needs.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic milliseconds (rate limits, log throttling).
    pub ms: u64,
    /// Unix seconds (leases).
    pub unix: u64,
}

/// The server's decision on one request, taken under the state lock.
#[derive(Debug)]
pub struct Decision {
    msg_type: Option<MessageType>,
    subnet: Option<usize>,
    handled: Handled,
    mac: Mac,
    leases: Option<(String, usize)>,
}

impl Decision {
    /// The subnet's label and its addresses in use, read under the lock that decided:
    /// `bootfabric_dhcp_leases_active{subnet}`, set while the lock is held so that two loops
    /// cannot write it out of order.
    pub fn leases_active(&self) -> Option<(&str, usize)> {
        self.leases.as_ref().map(|(s, n)| (s.as_str(), *n))
    }
}

/// The receive step of one socket: what it remembers between datagrams.
#[derive(Debug)]
pub struct Step {
    /// Subnet labels by index.
    subnets: Vec<String>,
    /// When each subnet's exhaustion was last logged (monotonic ms).
    last_exhausted_log: HashMap<usize, u64>,
    /// When each waiting reservation's owner was last logged (monotonic ms). Only inventory
    /// hosts whose reservation waits get here, so it is bounded by the inventory.
    last_waits_log: HashMap<Mac, u64>,
    /// When an unfetchable boot file was last logged (monotonic ms), for every client at once:
    /// a map by MAC would grow with every MAC an attacker makes up.
    last_unfetchable_log: Option<u64>,
}

impl Step {
    /// A step for a loop serving `subnets` (their labels, by index).
    pub fn new(subnets: Vec<String>) -> Self {
        Self {
            subnets,
            last_exhausted_log: HashMap::new(),
            last_waits_log: HashMap::new(),
            last_unfetchable_log: None,
        }
    }

    /// The server's decision on `req`: the part that needs the lease table, so the caller
    /// holds the state lock for this and nothing more (no encoding).
    pub fn decide(
        &self,
        server: &mut Server,
        req: &Request,
        ingress: &Ingress<'_>,
        now: Now,
    ) -> Decision {
        let msg_type = req.msg.opts().msg_type();
        let subnet = server.subnet_for(&req.msg, ingress);
        let handled = server.handle(&req.msg, ingress, now.unix);
        // O(1): keep the gauge exact without waiting for the periodic sweep.
        let leases = subnet.and_then(|i| {
            let name = self.subnets.get(i)?;
            Some((name.clone(), server.table.utilization(i).0))
        });
        Decision {
            msg_type,
            subnet,
            handled,
            mac: req.mac,
            leases,
        }
    }

    /// What a decision calls for: counts, logs, ledger entries, the encoded reply and its
    /// commit. Runs after the state lock is released.
    pub fn finish(&mut self, decision: Decision, now: Now) -> Vec<Action> {
        let Decision {
            msg_type,
            subnet,
            handled,
            mac,
            ..
        } = decision;
        let kind = type_label(msg_type);
        let mut actions = Vec::with_capacity(3);
        match handled {
            Handled::Drop(reason) => {
                actions.push(Action::Dropped(reason));
                if reason == DropReason::PoolExhausted {
                    self.exhausted(subnet.unwrap_or(0), mac, now.ms, &mut actions);
                }
            }
            Handled::Silent(why) => actions.extend([
                Action::Packet {
                    kind,
                    outcome: "silent",
                },
                Action::Log(Log::NoReply { mac, why }),
            ]),
            Handled::Commit(record) => actions.extend(returned(kind, msg_type, mac, record)),
            Handled::Reply(reply) => {
                let waits = reply.rules.iter().find(|(part, _)| part == "reservation");
                if let Some((_, why)) = waits {
                    let due = self
                        .last_waits_log
                        .get(&mac)
                        .is_none_or(|t| now.ms.saturating_sub(*t) > EXHAUSTED_LOG_MS);
                    if due {
                        self.last_waits_log.insert(mac, now.ms);
                        actions.push(Action::Log(Log::ReservationWaits {
                            mac,
                            why: why.clone(),
                        }));
                    }
                }
                if reply.boot.unfetchable
                    && self
                        .last_unfetchable_log
                        .is_none_or(|t| now.ms.saturating_sub(t) > EXHAUSTED_LOG_MS)
                {
                    self.last_unfetchable_log = Some(now.ms);
                    actions.push(Action::Log(Log::CannotFetch {
                        mac,
                        file: reply.boot.file.clone().unwrap_or_default(),
                    }));
                }
                actions.push(sent(*reply, kind, mac));
            }
        }
        actions
    }

    /// A DISCOVER found subnet `i` without a free address: counted every time, logged at
    /// most once every [`EXHAUSTED_LOG_MS`] per subnet (a storm would flood the log).
    fn exhausted(&mut self, i: usize, mac: Mac, now_ms: u64, actions: &mut Vec<Action>) {
        let name = self.subnets.get(i).map(String::as_str).unwrap_or("?");
        actions.push(Action::Exhausted {
            subnet: name.to_owned(),
        });
        let due = self
            .last_exhausted_log
            .get(&i)
            .is_none_or(|t| now_ms.saturating_sub(*t) > EXHAUSTED_LOG_MS);
        if due {
            actions.push(Action::Log(Log::PoolExhausted {
                subnet: name.to_owned(),
                mac,
            }));
            self.last_exhausted_log.insert(i, now_ms);
        }
    }
}

/// A lease the client gave back (RELEASE or DECLINE, the request's `msg_type`): counted and
/// recorded at once, made durable in the background; no reply.
fn returned(
    kind: &'static str,
    msg_type: Option<MessageType>,
    mac: Mac,
    record: LeaseRecord,
) -> [Action; 3] {
    let event = ledger_event(msg_type.unwrap_or(MessageType::Release));
    [
        Action::Packet {
            kind,
            outcome: "committed",
        },
        Action::Record(LedgerEntry {
            mac,
            event,
            ip: Some(record.ip),
        }),
        Action::Commit {
            record,
            then: None,
            if_lost: None,
        },
    ]
}

/// A reply to send: at once, or once its lease record is durable. One that cannot be
/// encoded is logged and not sent.
fn sent(reply: server::Reply, kind: &'static str, mac: Mac) -> Action {
    // A NAK that cannot be encoded is not sent: the client's retried REQUEST is NAKed then.
    let if_lost = reply.if_lost.and_then(|(msg, dest)| {
        let out = encode_reply(&msg).ok()?;
        Some(Reply {
            out,
            dest,
            kind,
            outcome: reply_label(MessageType::Nak),
            record: LedgerEntry {
                mac,
                event: ledger_event(MessageType::Nak),
                ip: None,
            },
            line: ReplyLine::of(&msg),
        })
    });
    let out = match encode_reply(&reply.msg) {
        Ok(out) => out,
        Err(e) => {
            return Action::Log(Log::EncodeFailed {
                mac,
                error: e.to_string(),
            })
        }
    };
    let send = Reply {
        out,
        dest: reply.dest,
        kind,
        outcome: reply_label(reply.kind),
        record: LedgerEntry {
            mac,
            event: ledger_event(reply.kind),
            ip: Some(reply.msg.yiaddr()).filter(|ip| !ip.is_unspecified()),
        },
        line: ReplyLine::of(&reply.msg),
    };
    match reply.commit {
        None => Action::Send(send),
        Some(record) => Action::Commit {
            record,
            then: Some(Box::new(send)),
            if_lost: if_lost.map(Box::new),
        },
    }
}

#[cfg(test)]
mod tests {
    use dhcproto::{
        v4::{DhcpOption, Message, MessageType, OptionCode, UnknownOption},
        Decodable, Decoder, Encodable, Encoder,
    };

    use super::*;
    use crate::{
        model::boot::BootSettings,
        services::dhcp::{
            journal::LeaseState,
            server::{CLIENT_PORT, SERVER_PORT},
            testkit,
        },
    };

    const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const SUBNET: &str = "10.0.0.0/24";

    /// A server for one local subnet whose pool holds `pool`.
    fn server(pool: &str) -> Server {
        let dhcp = testkit::dhcp(SUBNET, "fabric0", pool);
        Server::new(
            dhcp,
            BootSettings::defaults(),
            testkit::inventory(""),
            &[],
            0,
        )
    }

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    /// The bytes of a request of `kind` from client `n`, with `opts` added.
    fn bytes(n: u8, kind: MessageType, ciaddr: Ipv4Addr, opts: &[DhcpOption]) -> Vec<u8> {
        let mut m = Message::new_with_id(
            7,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac(n).0,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o.clone());
        }
        let mut out = Vec::new();
        m.encode(&mut Encoder::new(&mut out)).expect("encode");
        out
    }

    /// One loop's state around a server, fed datagrams as the receive loop feeds them.
    struct Loop {
        server: Server,
        limiter: RateLimiter,
        step: Step,
        /// Whether the last datagram reached the server, and the gauge it set if so.
        decided: Option<Option<(String, usize)>>,
    }

    impl Loop {
        fn new(pool: &str, rate: u32) -> Self {
            Self {
                server: server(pool),
                limiter: RateLimiter::new(rate),
                step: Step::new(vec![SUBNET.to_owned()]),
                decided: None,
            }
        }

        /// Decodes and handles `datagram` from `peer` at `ms` (monotonic) and 1000 + ms/1000
        /// (Unix seconds).
        fn feed(&mut self, datagram: &[u8], peer: SocketAddrV4, ms: u64) -> Vec<Action> {
            self.decided = None;
            let req = match decode(datagram, SocketAddr::V4(peer)) {
                Ok(req) => req,
                Err(actions) => return actions,
            };
            let ingress = Ingress {
                iface: "fabric0",
                server_ip: SERVER_IP,
                port: SERVER_PORT,
                peer: req.peer,
            };
            let now = Now {
                ms,
                unix: 1000 + ms / 1000,
            };
            if let Err(refused) = admit(Some(&mut self.limiter), &req, now.ms) {
                return refused;
            }
            let decision = self.step.decide(&mut self.server, &req, &ingress, now);
            self.decided = Some(decision.leases_active().map(|(s, n)| (s.to_owned(), n)));
            self.step.finish(decision, now)
        }
    }

    fn broadcast_peer() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT)
    }

    fn decoded(out: &[u8]) -> Message {
        Message::decode(&mut Decoder::new(out)).expect("a DHCP message")
    }

    #[test]
    fn a_discover_is_answered_with_an_offer_recorded_in_the_ledger() {
        let mut l = Loop::new("10.0.0.100-10.0.0.110", 10);
        let actions = l.feed(
            &bytes(1, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]),
            broadcast_peer(),
            0,
        );
        let [Action::Send(reply)] = &actions[..] else {
            panic!("a reply sent at once: {actions:?}");
        };
        assert_eq!(
            l.decided,
            Some(Some((SUBNET.to_owned(), 1))),
            "the offer holds one address"
        );
        assert_eq!((reply.kind, reply.outcome), ("discover", "offer"));
        let ip = Ipv4Addr::new(10, 0, 0, 100);
        assert_eq!(
            reply.record,
            LedgerEntry {
                mac: mac(1),
                event: EventKind::DhcpOffer,
                ip: Some(ip)
            }
        );
        let msg = decoded(&reply.out);
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(msg.yiaddr(), ip);
        assert_eq!(
            reply.out,
            encode_reply(&msg).expect("encode"),
            "padded as sent"
        );
    }

    #[test]
    fn a_request_for_an_address_off_the_network_is_naked_at_once() {
        let mut l = Loop::new("10.0.0.100-10.0.0.110", 10);
        // INIT-REBOOT from a client that moved here from another network.
        let request = bytes(
            3,
            MessageType::Request,
            Ipv4Addr::UNSPECIFIED,
            &[DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 9, 9,
            ))],
        );
        let actions = l.feed(&request, broadcast_peer(), 0);
        let [Action::Send(reply)] = &actions[..] else {
            panic!("a NAK goes out at once, with nothing to commit: {actions:?}");
        };
        assert_eq!((reply.kind, reply.outcome), ("request", "nak"));
        assert_eq!(reply.record.event, EventKind::DhcpNak);
        assert_eq!(reply.record.ip, None, "a NAK gives no address");
        assert_eq!(
            decoded(&reply.out).opts().msg_type(),
            Some(MessageType::Nak)
        );
    }

    #[test]
    fn a_client_that_selected_another_server_gets_silence_and_frees_our_offer() {
        let mut l = Loop::new("10.0.0.100-10.0.0.100", 10);
        l.feed(
            &bytes(4, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]),
            broadcast_peer(),
            0,
        );
        let elsewhere = bytes(
            4,
            MessageType::Request,
            Ipv4Addr::UNSPECIFIED,
            &[
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)),
                DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 100)),
            ],
        );
        let actions = l.feed(&elsewhere, broadcast_peer(), 10);
        assert_eq!(
            actions,
            vec![
                Action::Packet {
                    kind: "request",
                    outcome: "silent"
                },
                Action::Log(Log::NoReply {
                    mac: mac(4),
                    why: "the client selected another server"
                }),
            ]
        );
        // The one address of the pool is free again: the next client is offered it.
        let actions = l.feed(
            &bytes(5, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]),
            broadcast_peer(),
            20,
        );
        let [Action::Send(offer)] = &actions[..] else {
            panic!("an offer: {actions:?}");
        };
        assert_eq!(offer.record.ip, Some(Ipv4Addr::new(10, 0, 0, 100)));
    }

    #[test]
    fn a_datagram_from_an_ipv6_peer_is_ignored() {
        let discover = bytes(1, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]);
        let v6: SocketAddr = "[fe80::1]:68".parse().expect("addr");
        assert_eq!(decode(&discover, v6).err(), Some(Vec::new()));
    }

    #[test]
    fn a_request_is_acked_only_after_its_lease_is_committed() {
        let mut l = Loop::new("10.0.0.100-10.0.0.110", 10);
        // Cluster mode, where the commit is a claim another fabric may win.
        l.server.share_leases();
        let (ip, request) = offered(&mut l);
        let actions = l.feed(&request, broadcast_peer(), 10);
        let Some(Action::Commit {
            record,
            then: Some(reply),
            if_lost: Some(nak),
        }) = actions.last()
        else {
            panic!("the ACK waits for its commit: {actions:?}");
        };
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Send(_))),
            "nothing leaves before the commit: {actions:?}"
        );
        assert_eq!(
            (record.ip, record.mac, record.state),
            (ip, mac(1), LeaseState::Bound)
        );
        assert_eq!((reply.kind, reply.outcome), ("request", "ack"));
        assert_eq!(reply.record.event, EventKind::DhcpAck);
        assert_eq!(
            decoded(&reply.out).opts().msg_type(),
            Some(MessageType::Ack)
        );
        // Should another fabric win the address first, a NAK to the same transaction goes
        // instead, so the client discovers again at once.
        let (ack, naked) = (decoded(&reply.out), decoded(&nak.out));
        assert_eq!(naked.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(naked.xid(), ack.xid());
        assert_eq!(naked.chaddr(), ack.chaddr());
        assert!(naked.yiaddr().is_unspecified(), "{naked:?}");
        assert_eq!((nak.kind, nak.outcome), ("request", "nak"));
        assert_eq!(nak.record.event, EventKind::DhcpNak);
    }

    #[test]
    fn a_malformed_datagram_is_counted_and_dropped() {
        let peer = SocketAddr::V4(broadcast_peer());
        let err = decode(&[1, 1, 6, 0], peer).expect_err("too short");
        assert_eq!(
            err,
            vec![
                Action::Dropped(DropReason::Truncated),
                Action::Log(Log::Dropped {
                    peer,
                    reason: DropReason::Truncated
                })
            ]
        );
        // A BOOTREPLY is no request.
        let mut reply = bytes(1, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]);
        reply[0] = 2;
        let err = decode(&reply, peer).expect_err("a reply");
        assert!(
            matches!(err[0], Action::Dropped(r) if r != DropReason::RateLimited),
            "{err:?}"
        );
    }

    #[test]
    fn a_client_over_its_rate_is_dropped_before_the_server_decides() {
        // 1 per second: bursts of 2.
        let mut l = Loop::new("10.0.0.100-10.0.0.110", 1);
        let discover = bytes(1, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]);
        for _ in 0..2 {
            let a = l.feed(&discover, broadcast_peer(), 0);
            assert!(l.decided.is_some(), "{a:?}");
        }
        assert_eq!(
            l.feed(&discover, broadcast_peer(), 0),
            vec![Action::Dropped(DropReason::RateLimited)]
        );
        assert_eq!(l.decided, None, "the server never saw it");
        // Another client has its own bucket; the first one's refills.
        let other = bytes(2, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]);
        l.feed(&other, broadcast_peer(), 0);
        assert!(l.decided.is_some());
        l.feed(&discover, broadcast_peer(), 1000);
        assert!(l.decided.is_some());
        // A poisoned limiter says no to everyone.
        let req = decode(&discover, SocketAddr::V4(broadcast_peer())).expect("request");
        assert_eq!(
            admit(None, &req, 5000),
            Err(vec![Action::Dropped(DropReason::RateLimited)])
        );
    }

    /// Client 1 offered 10.0.0.100 in `l`: the address, and the REQUEST selecting it.
    fn offered(l: &mut Loop) -> (Ipv4Addr, Vec<u8>) {
        l.feed(
            &bytes(1, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]),
            broadcast_peer(),
            0,
        );
        let ip = Ipv4Addr::new(10, 0, 0, 100);
        let request = bytes(
            1,
            MessageType::Request,
            Ipv4Addr::UNSPECIFIED,
            &[
                DhcpOption::ServerIdentifier(SERVER_IP),
                DhcpOption::RequestedIpAddress(ip),
            ],
        );
        (ip, request)
    }

    /// Client 1 bound to 10.0.0.100 in `l`.
    fn bound(l: &mut Loop) -> Ipv4Addr {
        let (ip, request) = offered(l);
        l.feed(&request, broadcast_peer(), 10);
        ip
    }

    #[test]
    fn a_release_is_counted_recorded_and_committed_without_a_reply() {
        let mut l = Loop::new("10.0.0.100-10.0.0.110", 10);
        let ip = bound(&mut l);
        let release = bytes(
            1,
            MessageType::Release,
            ip,
            &[DhcpOption::ServerIdentifier(SERVER_IP)],
        );
        let actions = l.feed(&release, SocketAddrV4::new(ip, CLIENT_PORT), 20);
        let tail = &actions[actions.len() - 3..];
        assert_eq!(
            tail[..2],
            [
                Action::Packet {
                    kind: "release",
                    outcome: "committed"
                },
                Action::Record(LedgerEntry {
                    mac: mac(1),
                    event: EventKind::DhcpRelease,
                    ip: Some(ip)
                }),
            ]
        );
        assert!(
            matches!(&tail[2], Action::Commit { record, then: None, .. }
                if record.ip == ip && record.state == LeaseState::Released),
            "{actions:?}"
        );
    }

    #[test]
    fn a_decline_is_recorded_as_one_and_committed_as_declined() {
        let mut l = Loop::new("10.0.0.100-10.0.0.110", 10);
        let ip = bound(&mut l);
        let decline = bytes(
            1,
            MessageType::Decline,
            Ipv4Addr::UNSPECIFIED,
            &[
                DhcpOption::ServerIdentifier(SERVER_IP),
                DhcpOption::RequestedIpAddress(ip),
            ],
        );
        let actions = l.feed(&decline, broadcast_peer(), 20);
        assert!(actions.contains(&Action::Record(LedgerEntry {
            mac: mac(1),
            event: EventKind::DhcpDecline,
            ip: Some(ip)
        })));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Commit { record, then: None, .. }
                if record.state == LeaseState::Declined)),
            "{actions:?}"
        );
    }

    #[test]
    fn an_exhausted_pool_is_counted_each_time_and_logged_once_in_ten_seconds() {
        let mut l = Loop::new("10.0.0.100-10.0.0.100", 100);
        let first = bytes(1, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]);
        assert!(l
            .feed(&first, broadcast_peer(), 0)
            .iter()
            .any(|a| matches!(a, Action::Send(_))));
        let second = bytes(2, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]);
        let logged = |a: &[Action]| {
            a.iter()
                .any(|a| matches!(a, Action::Log(Log::PoolExhausted { .. })))
        };
        let exhausted = Action::Exhausted {
            subnet: SUBNET.to_owned(),
        };
        for (ms, log) in [(0, true), (5_000, false), (10_000, false), (10_001, true)] {
            let a = l.feed(&second, broadcast_peer(), ms);
            assert!(
                a.contains(&Action::Dropped(DropReason::PoolExhausted)),
                "{a:?}"
            );
            assert!(a.contains(&exhausted), "counted every time: {a:?}");
            assert_eq!(logged(&a), log, "at {ms} ms: {a:?}");
        }
    }

    #[test]
    fn a_waiting_reservation_is_logged_once_in_ten_seconds_per_host() {
        let mut l = Loop::new("10.0.0.100-10.0.0.110", 100);
        // Client 1 holds 10.0.0.50 until 5000, then the inventory reserves it for client 2.
        l.server.table.apply(&LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 50),
            mac: mac(1),
            state: LeaseState::Bound,
            expires: 5000,
            hostname: None,
        });
        let inventory = testkit::inventory(
            "[profiles.p]\n[[hosts]]\nname = 'node02'\nmac = '52:54:00:00:00:02'\nip = '10.0.0.50'\nprofile = 'p'\n",
        );
        l.server.table.set_reservations(&inventory);
        l.server.inventory = inventory;
        let discover = bytes(2, MessageType::Discover, Ipv4Addr::UNSPECIFIED, &[]);
        let logged = |a: &[Action]| {
            a.iter().find_map(|a| match a {
                Action::Log(Log::ReservationWaits { mac: m, why }) => {
                    assert_eq!(*m, mac(2));
                    Some(why.clone())
                }
                _ => None,
            })
        };
        for (ms, log) in [(0, true), (5_000, false), (10_001, true)] {
            let a = l.feed(&discover, broadcast_peer(), ms);
            let Some(Action::Send(reply)) = a.last() else {
                panic!("an offer: {a:?}");
            };
            assert_eq!(decoded(&reply.out).yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
            let why = logged(&a);
            assert_eq!(why.is_some(), log, "at {ms} ms: {a:?}");
            if let Some(why) = why {
                assert!(
                    why.starts_with(
                        "reservation 10.0.0.50 of host node02 waits: leased to 52:54:00:00:00:01 until "
                    ),
                    "{why}"
                );
            }
        }
    }

    #[test]
    fn an_ipxe_without_https_told_an_https_url_is_logged_once_in_ten_seconds_whatever_the_mac() {
        let mut l = Loop::new("10.0.0.100-10.0.0.110", 100);
        l.server.boot.http_base = Some("https://{server}".into());
        // Debian 12's iPXE: user class iPXE, option 175 with HTTP and DNS, no HTTPS.
        let ipxe = |https: bool| {
            let mut features = vec![19, 1, 1, 23, 1, 1];
            if https {
                features.extend([20, 1, 1]);
            }
            [
                DhcpOption::UserClass(b"iPXE".to_vec()),
                DhcpOption::Unknown(UnknownOption::new(OptionCode::Unknown(175), features)),
            ]
        };
        let logged = |a: &[Action]| {
            a.iter().find_map(|a| match a {
                Action::Log(Log::CannotFetch { mac, file }) => Some((*mac, file.clone())),
                _ => None,
            })
        };
        // Different MACs share the limit: any machine can send the option, as any MAC.
        for (ms, n, https, log) in [
            (0, 1, false, true),
            (5_000, 2, false, false),
            (10_001, 2, true, false),
            (10_002, 3, false, true),
        ] {
            let request = bytes(
                n,
                MessageType::Discover,
                Ipv4Addr::UNSPECIFIED,
                &ipxe(https),
            );
            let a = l.feed(&request, broadcast_peer(), ms);
            assert!(matches!(a.last(), Some(Action::Send(_))), "an offer: {a:?}");
            let expected = log.then(|| (mac(n), format!("https://{SERVER_IP}/boot.ipxe")));
            assert_eq!(logged(&a), expected, "at {ms} ms: {a:?}");
        }
    }

    #[test]
    fn every_dhcp_exchange_has_one_ledger_event() {
        for (kind, event) in [
            (MessageType::Offer, EventKind::DhcpOffer),
            (MessageType::Ack, EventKind::DhcpAck),
            (MessageType::Nak, EventKind::DhcpNak),
            (MessageType::Decline, EventKind::DhcpDecline),
            (MessageType::Release, EventKind::DhcpRelease),
        ] {
            assert_eq!(ledger_event(kind), event, "{kind:?}");
        }
    }
}
