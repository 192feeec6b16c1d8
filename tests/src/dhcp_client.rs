//! A minimal scripted DHCP client for lab tests that need many clients at once (bursts,
//! crash tests), where starting a real client program per MAC would be too slow. Real
//! clients (dhclient, udhcpc, dhcpcd) prove protocol acceptance in their own tests; this one
//! drives volume. Replies are matched by xid and checked for type.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use dhcproto::{
    v4::{DhcpOption, Flags, Message, MessageType, OptionCode},
    Decodable, Decoder, Encodable, Encoder,
};

/// A client socket on port 68 that may broadcast, created inside a client namespace.
pub struct Client {
    sock: UdpSocket,
}

/// The result of one DISCOVER/OFFER/REQUEST/ACK exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// ACKed this address by this server.
    Ack(Ipv4Addr, Ipv4Addr),
    /// NAKed.
    Nak,
    /// No answer within the bound.
    NoAnswer,
}

fn encode(m: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    // Encoding our own well-formed message cannot fail.
    let _ = m.encode(&mut Encoder::new(&mut out));
    out
}

impl Client {
    /// Binds 0.0.0.0:68 with broadcast on. Call inside the client namespace.
    pub fn bind() -> std::io::Result<Self> {
        Self::bind_port(68)
    }

    /// Binds 0.0.0.0:`port` with broadcast on: 68 to act as a client, 67 to act as a relay
    /// agent (a server answers relayed requests to giaddr:67). Call inside a namespace.
    pub fn bind_port(port: u16) -> std::io::Result<Self> {
        let sock = UdpSocket::bind(("0.0.0.0", port))?;
        sock.set_broadcast(true)?;
        Ok(Self { sock })
    }

    /// A request of `kind` from `mac` with the broadcast flag, for tests to craft further
    /// (giaddr, ciaddr, options) before [`Client::send_to`].
    pub fn message(mac: [u8; 6], xid: u32, kind: MessageType) -> Message {
        Self::request(mac, xid, kind)
    }

    /// Sends `m` to `dest` as it is.
    pub fn send_to(&self, m: &Message, dest: SocketAddr) -> std::io::Result<()> {
        self.sock.send_to(&encode(m), dest).map(|_| ())
    }

    /// Waits (bounded by `wait`) for any reply with `xid`.
    pub fn reply(&self, xid: u32, wait: Duration) -> Option<Message> {
        self.recv(xid, wait)
    }

    /// DISCOVER (broadcast, one try) and the address of the OFFER it gets within `wait`.
    pub fn offer(
        &self,
        mac: [u8; 6],
        xid: u32,
        wait: Duration,
    ) -> std::io::Result<Option<Message>> {
        self.send(&Self::request(mac, xid, MessageType::Discover))?;
        Ok(self
            .recv(xid, wait)
            .filter(|m| m.opts().msg_type() == Some(MessageType::Offer)))
    }

    fn request(mac: [u8; 6], xid: u32, kind: MessageType) -> Message {
        let mut m = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.set_flags(Flags::default().set_broadcast());
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    /// Waits (bounded by `wait`) for a reply with `xid`.
    fn recv(&self, xid: u32, wait: Duration) -> Option<Message> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.sock
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let (n, _) = self.sock.recv_from(&mut buf).ok()?;
            if let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) {
                if m.xid() == xid {
                    return Some(m);
                }
            }
        }
    }

    fn send(&self, m: &Message) -> std::io::Result<()> {
        self.sock
            .send_to(&encode(m), SocketAddr::from(([255, 255, 255, 255], 67)))
            .map(|_| ())
    }

    /// DISCOVER → OFFER → REQUEST → ACK for `mac`, each step retried up to 3 times with
    /// `wait` per try.
    pub fn lease(&self, mac: [u8; 6], xid: u32, wait: Duration) -> std::io::Result<Outcome> {
        let discover = Self::request(mac, xid, MessageType::Discover);
        let mut offer = None;
        for _ in 0..3 {
            self.send(&discover)?;
            if let Some(m) = self.recv(xid, wait) {
                if m.opts().msg_type() == Some(MessageType::Offer) {
                    offer = Some(m);
                    break;
                }
            }
        }
        let Some(offer) = offer else {
            return Ok(Outcome::NoAnswer);
        };
        let server = match offer.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => return Ok(Outcome::NoAnswer),
        };
        let mut req = Self::request(mac, xid, MessageType::Request);
        req.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
        self.exchange(&req, xid, wait)
    }

    /// INIT-REBOOT: REQUEST `ip` without a server identifier.
    pub fn reboot(
        &self,
        mac: [u8; 6],
        xid: u32,
        ip: Ipv4Addr,
        wait: Duration,
    ) -> std::io::Result<Outcome> {
        let mut req = Self::request(mac, xid, MessageType::Request);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        self.exchange(&req, xid, wait)
    }

    fn exchange(&self, req: &Message, xid: u32, wait: Duration) -> std::io::Result<Outcome> {
        for _ in 0..3 {
            self.send(req)?;
            if let Some(m) = self.recv(xid, wait) {
                let server = match m.opts().get(OptionCode::ServerIdentifier) {
                    Some(DhcpOption::ServerIdentifier(s)) => *s,
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                match m.opts().msg_type() {
                    Some(MessageType::Ack) => return Ok(Outcome::Ack(m.yiaddr(), server)),
                    Some(MessageType::Nak) => return Ok(Outcome::Nak),
                    _ => {}
                }
            }
        }
        Ok(Outcome::NoAnswer)
    }
}
