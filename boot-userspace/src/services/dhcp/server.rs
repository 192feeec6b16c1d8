//! The DHCP server's decisions (RFC 2131): one request and the lease table in, one reply
//! (or silence) out. No sockets and no clock here: the socket loop supplies the arrival
//! interface, its address and the time.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, UnknownOption};

use super::{
    journal::{LeaseRecord, LeaseState},
    policy::{self, BootDecision, ClientFacts},
    ratelimit::DeclineLimiter,
    table::{LeaseTable, ReservationState, OFFER_HOLD_SECS},
    wire::DropReason,
};
use crate::config::{dhcp::DEFAULT_LEASE_TIME, DhcpConfig, DhcpGuards, DhcpMode};
use crate::model::boot::{BootSettings, OptionSet};
use crate::model::inventory::{BootAnswer, Host, Inventory, Mac};

/// DHCP client and server ports.
pub const CLIENT_PORT: u16 = 68;
/// DHCP server port.
pub const SERVER_PORT: u16 = 67;

/// Where and how a request arrived.
#[derive(Clone, Debug)]
pub struct Ingress<'a> {
    /// Interface it arrived on.
    pub iface: &'a str,
    /// The server's address on that interface (server identifier).
    pub server_ip: Ipv4Addr,
    /// Local port it arrived on (67, or 4011 for proxyDHCP boot-server requests).
    pub port: u16,
    /// Its source address.
    pub peer: SocketAddrV4,
}

/// The PXE boot-server port proxyDHCP also answers on.
pub const PXE_PORT: u16 = 4011;

/// What to do with a request.
#[derive(Debug)]
pub enum Handled {
    /// Send `reply`, after `commit` (if any) is durable.
    Reply(Box<Reply>),
    /// Make this record durable; nothing is sent (RELEASE, DECLINE).
    Commit(LeaseRecord),
    /// Stay silent, as RFC 2131 says for this case (e.g. the client chose another server).
    Silent(&'static str),
    /// Drop and count.
    Drop(DropReason),
}

/// A reply and where it goes.
#[derive(Debug)]
pub struct Reply {
    /// The message.
    pub msg: Message,
    /// Its type (for metrics and the ledger).
    pub kind: MessageType,
    /// Destination address and port.
    pub dest: SocketAddrV4,
    /// The lease record that must be durable before the reply is sent.
    pub commit: Option<LeaseRecord>,
    /// What goes instead of the reply when another fabric won the address meanwhile (cluster
    /// mode): a NAK, so the client restarts with DISCOVER at once rather than retrying a
    /// REQUEST that cannot succeed. The message and its destination.
    pub if_lost: Option<(Message, SocketAddrV4)>,
    /// The boot decision, for `explain`.
    pub boot: BootDecision,
    /// Rules that decided the address and options, for `explain`.
    pub rules: Vec<(String, String)>,
}

/// A client's reservation in a subnet, and whether it is in force.
#[derive(Clone, Copy, Debug)]
pub enum Reserved<'a> {
    /// The client has no reservation in the subnet.
    No,
    /// The reservation is the client's to have.
    Effective(&'a Host, Ipv4Addr),
    /// The reservation waits for another client's hold on the address to end (it was moved
    /// to this MAC while the address was leased); meanwhile the owner is a dynamic client.
    Waits(&'a Host, Ipv4Addr, ReservationState),
}

impl Reserved<'_> {
    /// The `explain` rule of a waiting reservation: "reservation 10.77.0.11 waits: leased to
    /// 52:54:00:00:00:01 until <date>".
    pub fn waits_rule(&self) -> Option<(String, String)> {
        let Reserved::Waits(host, ip, ReservationState::HeldBy { mac, how, until }) = self else {
            return None;
        };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(*until);
        Some((
            "reservation".to_owned(),
            format!(
                "reservation {ip} of host {} waits: {} {mac} until {}",
                host.name,
                how.as_str(),
                httpdate::fmt_http_date(at)
            ),
        ))
    }
}

/// The pure server: configuration plus the lease table it decides over.
pub struct Server {
    /// `[dhcp]`.
    pub dhcp: DhcpConfig,
    /// `[boot]` merged with defaults.
    pub boot: BootSettings,
    /// Hosts and profiles.
    pub inventory: Inventory,
    /// Leases.
    pub table: LeaseTable,
    /// DECLINE buckets per subnet (`dhcp.decline_burst`, `dhcp.decline_per_hour`).
    declines: DeclineLimiter,
    /// Whether ACKed leases are claimed in etcd (cluster mode), see `share_leases`.
    shared: bool,
}

fn mac_of(msg: &Message) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&msg.chaddr()[..6]);
    Mac(m)
}

fn opt_ip(msg: &Message, code: OptionCode) -> Option<Ipv4Addr> {
    match msg.opts().get(code) {
        Some(DhcpOption::RequestedIpAddress(ip)) | Some(DhcpOption::ServerIdentifier(ip)) => {
            Some(*ip)
        }
        _ => None,
    }
}

fn client_hostname(msg: &Message) -> Option<String> {
    match msg.opts().get(OptionCode::Hostname) {
        Some(DhcpOption::Hostname(h)) => Some(h.clone()),
        _ => None,
    }
}

impl Server {
    /// A server for `dhcp` with `inventory`, its lease table rebuilt from the journal's
    /// `live` records as of `now`.
    pub fn new(
        dhcp: DhcpConfig,
        boot: BootSettings,
        inventory: Inventory,
        live: &[LeaseRecord],
        now: u64,
    ) -> Self {
        let table = LeaseTable::new(&dhcp.subnets, &inventory, live, now);
        let declines = DeclineLimiter::new(dhcp.guards.decline_burst, dhcp.guards.decline_per_hour);
        Self {
            dhcp,
            boot,
            inventory,
            table,
            declines,
            shared: false,
        }
    }

    /// Cluster mode: dynamic leases are claimed in etcd before they are ACKed, so an ACK
    /// may be overtaken by another fabric's claim and carries the NAK that then goes out.
    pub fn share_leases(&mut self) {
        self.shared = true;
    }

    /// Applies reloaded guards: relays and DECLINE limits take effect at once (the commit
    /// bounds belong to the journal writer, which keeps those it started with).
    pub fn set_guards(&mut self, guards: DhcpGuards) {
        self.declines
            .reconfigure(guards.decline_burst, guards.decline_per_hour);
        self.dhcp.guards = guards;
    }

    /// The subnet a request belongs to: by giaddr for relayed requests, else by the arrival
    /// interface (or the subnet holding the interface's address).
    pub fn subnet_for(&self, msg: &Message, ingress: &Ingress<'_>) -> Option<usize> {
        if !msg.giaddr().is_unspecified() {
            return self.dhcp.subnet_of(msg.giaddr());
        }
        self.dhcp
            .subnets
            .iter()
            .position(|s| s.interface.as_deref() == Some(ingress.iface))
            .or_else(|| self.dhcp.subnet_of(ingress.server_ip))
    }

    /// The host of `mac` if its reservation lies in `subnet`.
    fn reservation(&self, mac: Mac, subnet: usize) -> Option<(&Host, Ipv4Addr)> {
        let host = self.inventory.host_by_mac(&mac)?;
        let ip = host.ip?;
        self.dhcp
            .subnets
            .get(subnet)?
            .net
            .contains(&ip)
            .then_some((host, ip))
    }

    /// `mac`'s reservation in `subnet` at `now`: in force only when no other client holds,
    /// is offered or has quarantined the address (see [`LeaseTable::reservation_state`]).
    pub fn reserved(&self, mac: Mac, subnet: usize, now: u64) -> Reserved<'_> {
        let Some((host, ip)) = self.reservation(mac, subnet) else {
            return Reserved::No;
        };
        match self.table.reservation_state(ip, mac, now) {
            ReservationState::Free => Reserved::Effective(host, ip),
            held => Reserved::Waits(host, ip, held),
        }
    }

    /// `mac`'s netboot answer: its host's (`netboot`, with the used-once state the inventory
    /// keeps), `Boot` for clients outside the inventory.
    pub fn boot_answer(&self, mac: Mac) -> BootAnswer {
        self.inventory
            .host_by_mac(&mac)
            .map_or(BootAnswer::Boot, |h| self.inventory.boot_answer(h))
    }

    /// Handles one decoded request at Unix time `now`.
    pub fn handle(&mut self, msg: &Message, ingress: &Ingress<'_>, now: u64) -> Handled {
        let Some(kind) = msg.opts().msg_type() else {
            return Handled::Drop(DropReason::NoMessageType);
        };
        // A giaddr picks the subnet and where the answer goes: only the relays the operator
        // named may set it, or any machine could draw addresses from every relayed subnet.
        if !msg.giaddr().is_unspecified() && !self.dhcp.guards.relay_allowed(*ingress.peer.ip()) {
            return Handled::Drop(DropReason::RelayNotAllowed);
        }
        if self.dhcp.mode == DhcpMode::Proxy {
            return self.proxy(msg, kind, ingress);
        }
        let Some(subnet) = self.subnet_for(msg, ingress) else {
            return Handled::Drop(DropReason::NoSubnet);
        };
        match kind {
            MessageType::Discover => self.discover(msg, ingress, subnet, now),
            MessageType::Request => self.request(msg, ingress, subnet, now),
            MessageType::Decline => self.decline(msg, ingress, subnet, now),
            MessageType::Release => self.release(msg, ingress),
            MessageType::Inform => self.inform(msg, ingress, subnet),
            _ => Handled::Drop(DropReason::UnexpectedType),
        }
    }

    /// proxyDHCP: boot information without an address, to booting firmware only. DISCOVERs
    /// on port 67 get an OFFER; REQUESTs to port 4011 get an ACK back to their source.
    fn proxy(&mut self, msg: &Message, kind: MessageType, ingress: &Ingress<'_>) -> Handled {
        let facts = ClientFacts::from_message(msg);
        if !facts.is_booting_firmware() {
            return Handled::Silent("proxyDHCP answers PXE, iPXE and HTTP-boot clients only");
        }
        // A proxy answer is nothing but a boot answer: where there is none, say nothing.
        match self.boot_answer(mac_of(msg)) {
            BootAnswer::Deny => return Handled::Silent("proxyDHCP: netboot = deny"),
            BootAnswer::Disk if facts.is_http_boot() => {
                return Handled::Silent("proxyDHCP: netboot = once (used), no URL for HTTP boot")
            }
            _ => {}
        }
        let rules = vec![(
            "yiaddr".to_owned(),
            "proxyDHCP: no address (another server hands them out)".to_owned(),
        )];
        let (reply_kind, dest) = match (kind, ingress.port) {
            (MessageType::Discover, SERVER_PORT) => (MessageType::Offer, None),
            (MessageType::Request | MessageType::Inform, PXE_PORT) => {
                // RFC 2131 §4.1: a client that sets the broadcast bit cannot take unicast.
                let to = if msg.flags().broadcast() {
                    SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
                } else {
                    ingress.peer
                };
                (MessageType::Ack, Some(to))
            }
            _ => return Handled::Silent("proxyDHCP ignores this message on this port"),
        };
        let mut reply = self.build_boot_only(msg, ingress, reply_kind, rules);
        if let Some(d) = dest {
            reply.dest = d;
        }
        Handled::Reply(Box::new(reply))
    }

    fn discover(
        &mut self,
        msg: &Message,
        ingress: &Ingress<'_>,
        subnet: usize,
        now: u64,
    ) -> Handled {
        let mac = mac_of(msg);
        let mut rules = Vec::new();
        let reserved = self.reserved(mac, subnet, now);
        rules.extend(reserved.waits_rule());
        let ip = if let Reserved::Effective(host, ip) = reserved {
            rules.push((
                "yiaddr".to_owned(),
                format!("reservation of host {} in the inventory", host.name),
            ));
            ip
        } else {
            match self.table.allocate(
                subnet,
                mac,
                opt_ip(msg, OptionCode::RequestedIpAddress),
                now,
            ) {
                Some(ip) => {
                    rules.push((
                        "yiaddr".to_owned(),
                        format!(
                            "dynamic pool of dhcp.subnets[{subnet}] ({})",
                            self.dhcp.subnets[subnet].net
                        ),
                    ));
                    ip
                }
                None => return Handled::Drop(DropReason::PoolExhausted),
            }
        };
        self.table.offer(ip, mac, now + OFFER_HOLD_SECS);
        Handled::Reply(Box::new(self.build(
            msg,
            ingress,
            subnet,
            MessageType::Offer,
            ip,
            None,
            rules,
        )))
    }

    /// The reply a reserved host gets for `req` (a DISCOVER gets the OFFER, a REQUEST the
    /// ACK) on `subnet` at `now`, built exactly as [`Server::handle`] builds it but without
    /// touching the lease table; `None` while the reservation waits (see
    /// [`Server::reserved`]). The XDP fast path's templates are cut from these replies.
    pub fn reservation_reply(
        &self,
        req: &Message,
        ingress: &Ingress<'_>,
        subnet: usize,
        now: u64,
    ) -> Option<Reply> {
        let Reserved::Effective(_, ip) = self.reserved(mac_of(req), subnet, now) else {
            return None;
        };
        let kind = match req.opts().msg_type()? {
            MessageType::Discover => MessageType::Offer,
            MessageType::Request => MessageType::Ack,
            _ => return None,
        };
        Some(self.build(req, ingress, subnet, kind, ip, None, Vec::new()))
    }

    /// Records an exchange the XDP fast path answered for the reserved host `mac`: an OFFER
    /// holds the address, an ACK binds it. For an ACK, returns the record to make durable.
    pub fn record_fast_path(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        kind: MessageType,
        now: u64,
    ) -> Option<LeaseRecord> {
        let subnet = self.dhcp.subnet_of(ip)?;
        let host = self.inventory.host_by_mac(&mac)?;
        if host.ip != Some(ip)
            || !matches!(self.reserved(mac, subnet, now), Reserved::Effective(..))
        {
            // The kernel answered from maps older than the inventory (a reload raced it), or
            // from maps not yet told that this reservation waits: the table keeps the holder.
            return None;
        }
        if kind == MessageType::Offer {
            self.table.offer(ip, mac, now + OFFER_HOLD_SECS);
            return None;
        }
        let lease_time = self
            .options_for(mac, subnet)
            .lease_time
            .unwrap_or(DEFAULT_LEASE_TIME);
        let record = LeaseRecord {
            ip,
            mac,
            state: LeaseState::Bound,
            expires: now + u64::from(lease_time),
            hostname: Some(host.name.clone()),
        };
        self.table.apply(&record);
        Some(record)
    }

    /// Whether `mac` may hold `ip` in `subnet`: its reservation, or a dynamic address that
    /// is free or already its own. Reserved hosts may hold only their reservation, once it
    /// is in force; while it waits they are dynamic clients. A client whose address became
    /// another host's reservation may not keep it: its renewals fail here.
    fn may_hold(&self, mac: Mac, ip: Ipv4Addr, subnet: usize, now: u64) -> bool {
        match self.reserved(mac, subnet, now) {
            Reserved::Effective(_, reserved) => reserved == ip,
            Reserved::No | Reserved::Waits(..) => {
                self.table.is_dynamic(subnet, ip) && self.table.available_to(ip, mac, now)
            }
        }
    }

    fn request(
        &mut self,
        msg: &Message,
        ingress: &Ingress<'_>,
        subnet: usize,
        now: u64,
    ) -> Handled {
        let mac = mac_of(msg);
        let server_id = opt_ip(msg, OptionCode::ServerIdentifier);
        let requested = opt_ip(msg, OptionCode::RequestedIpAddress);
        let ciaddr = msg.ciaddr();
        let (ip, state) = match (server_id, requested) {
            (Some(sid), _) if sid != ingress.server_ip => {
                // SELECTING another server's offer: release ours.
                self.table.withdraw_offer(mac);
                return Handled::Silent("the client selected another server");
            }
            (Some(_), Some(ip)) => (ip, "SELECTING"),
            (Some(_), None) if !ciaddr.is_unspecified() => (ciaddr, "SELECTING"),
            (Some(_), None) => return Handled::Drop(DropReason::BadOption),
            (None, Some(ip)) => (ip, "INIT-REBOOT"),
            (None, None) if !ciaddr.is_unspecified() => (ciaddr, "RENEWING/REBINDING"),
            (None, None) => return Handled::Drop(DropReason::BadOption),
        };
        let on_net = self.dhcp.subnets[subnet].net.contains(&ip);
        if on_net && self.may_hold(mac, ip, subnet, now) {
            let lease_time = self
                .options_for(mac, subnet)
                .lease_time
                .unwrap_or(DEFAULT_LEASE_TIME);
            let hostname = self
                .inventory
                .host_by_mac(&mac)
                .map(|h| h.name.clone())
                .or_else(|| client_hostname(msg));
            let record = LeaseRecord {
                ip,
                mac,
                state: LeaseState::Bound,
                expires: now + u64::from(lease_time),
                hostname,
            };
            self.table.apply(&record);
            let rules = vec![(
                "yiaddr".to_owned(),
                format!("{state}: {ip} is the client's to hold"),
            )];
            let mut reply = self.build(msg, ingress, subnet, MessageType::Ack, ip, None, rules);
            reply.commit = Some(record);
            // Only a claim in etcd can be lost, and only an address that is not the
            // client's reservation is claimed (`shared.rs`). The NAK is built now, while the
            // request is at hand: the claim may be lost to another fabric long after it.
            if self.shared && self.table.reserved_for(ip) != Some(mac) {
                let why = format!("{state}: {ip}: taken by another fabric");
                let nak = self.nak(msg, ingress, subnet, why);
                reply.if_lost = Some((nak.msg, nak.dest));
            }
            return Handled::Reply(Box::new(reply));
        }
        // Off-network requests, addresses held by others, or a reserved host asking for
        // anything but its reservation: NAK so the client restarts with DISCOVER.
        let known = !on_net
            || self.table.lease_at(ip).is_some()
            || self.table.reserved_for(ip).is_some()
            || self.table.is_dynamic(subnet, ip)
            || self.reservation(mac, subnet).is_some();
        if self.dhcp.authoritative || (server_id.is_some() && known) {
            let why = if on_net {
                "address not available to this client"
            } else {
                "address on the wrong network"
            };
            let why = format!("{state}: {ip}: {why}");
            return Handled::Reply(Box::new(self.nak(msg, ingress, subnet, why)));
        }
        Handled::Silent("not authoritative for this address")
    }

    fn decline(
        &mut self,
        msg: &Message,
        ingress: &Ingress<'_>,
        subnet: usize,
        now: u64,
    ) -> Handled {
        let mac = mac_of(msg);
        if opt_ip(msg, OptionCode::ServerIdentifier).is_some_and(|s| s != ingress.server_ip) {
            return Handled::Silent("DECLINE for another server");
        }
        let Some(ip) = opt_ip(msg, OptionCode::RequestedIpAddress) else {
            return Handled::Drop(DropReason::BadOption);
        };
        let ours = self.table.lease_of(mac).is_some_and(|(l, _)| l == ip)
            || self.table.offer_of(mac, now) == Some(ip);
        if !ours {
            return Handled::Silent("DECLINE of an address the client does not hold");
        }
        if self
            .table
            .reserved_for(ip)
            .is_some_and(|owner| owner != mac)
        {
            // The address became another host's reservation while this client held it: it
            // gives it up either way, and a quarantine would only keep the new owner waiting
            // a lease time more. A RELEASE takes nothing from the pool, so no bucket is
            // charged.
            let record = LeaseRecord {
                ip,
                mac,
                state: LeaseState::Released,
                expires: 0,
                hostname: None,
            };
            self.table.apply(&record);
            return Handled::Commit(record);
        }
        // Nothing proves a DECLINE (it comes from an address-less client), and each one
        // takes an address out of the pool for a lease time: a bucket per subnet keeps one
        // client from declining its way through the pool. The bucket charged is that of the
        // pool the address belongs to, not of the way the DECLINE came in (relayed or not),
        // so declines sent along two paths cannot spend two subnets' allowance on one pool.
        let pool = self.dhcp.subnet_of(ip).unwrap_or(subnet);
        if !self.declines.allow(pool, now) {
            return Handled::Drop(DropReason::DeclineRateLimited);
        }
        // Someone else answers ARP for it: keep it out of the pool for a lease time.
        let record = LeaseRecord {
            ip,
            mac,
            state: LeaseState::Declined,
            expires: now + u64::from(DEFAULT_LEASE_TIME),
            hostname: None,
        };
        self.table.apply(&record);
        Handled::Commit(record)
    }

    fn release(&mut self, msg: &Message, ingress: &Ingress<'_>) -> Handled {
        let mac = mac_of(msg);
        if opt_ip(msg, OptionCode::ServerIdentifier).is_some_and(|s| s != ingress.server_ip) {
            return Handled::Silent("RELEASE for another server");
        }
        let ip = msg.ciaddr();
        // RFC 2131 §4.4.6: the client sends RELEASE unicast from the address it releases.
        // From any other source it is someone else's forgery on chaddr and ciaddr alone.
        if *ingress.peer.ip() != ip {
            return Handled::Drop(DropReason::ReleaseNotFromClient);
        }
        match self.table.lease_at(ip) {
            Some(l) if l.mac == mac && l.state == LeaseState::Bound => {
                let record = LeaseRecord {
                    ip,
                    mac,
                    state: LeaseState::Released,
                    expires: 0,
                    hostname: None,
                };
                self.table.apply(&record);
                Handled::Commit(record)
            }
            _ => Handled::Silent("RELEASE of an address the client does not hold"),
        }
    }

    fn inform(&mut self, msg: &Message, ingress: &Ingress<'_>, subnet: usize) -> Handled {
        let rules = vec![(
            "yiaddr".to_owned(),
            "INFORM: configuration only, no address".to_owned(),
        )];
        let ciaddr = msg.ciaddr();
        Handled::Reply(Box::new(self.build(
            msg,
            ingress,
            subnet,
            MessageType::Ack,
            Ipv4Addr::UNSPECIFIED,
            Some(ciaddr),
            rules,
        )))
    }

    /// Decides the boot part for `req` and writes it into `m` (siaddr, file, options 43,
    /// 60, 66, 67, 97).
    fn boot_fields(
        &self,
        req: &Message,
        mac: Mac,
        server_ip: Ipv4Addr,
        m: &mut Message,
    ) -> BootDecision {
        let host = self.inventory.host_by_mac(&mac);
        let profile = host.and_then(|h| self.inventory.profile(&h.profile));
        let boot = policy::decide_for(
            self.boot_answer(mac),
            &ClientFacts::from_message(req),
            profile,
            &self.boot,
            server_ip,
        );
        if let Some(siaddr) = boot.siaddr {
            m.set_siaddr(siaddr);
        }
        let opts = m.opts_mut();
        if let Some(file) = &boot.file {
            opts.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
        }
        if let Some(tftp) = &boot.tftp_server {
            opts.insert(DhcpOption::TFTPServerName(tftp.as_bytes().to_vec()));
        }
        if let Some(vc) = &boot.vendor_class {
            opts.insert(DhcpOption::ClassIdentifier(vc.clone()));
        }
        if let Some(vo) = &boot.vendor_options {
            opts.insert(DhcpOption::VendorExtensions(vo.clone()));
        }
        if let Some(uuid) = &boot.uuid {
            opts.insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
        }
        if let Some(file) = boot.file.as_ref().filter(|f| f.len() < 128) {
            m.set_fname_str(file);
        }
        boot
    }

    /// A proxyDHCP reply: boot fields only, no address, no lease, no network options.
    fn build_boot_only(
        &self,
        req: &Message,
        ingress: &Ingress<'_>,
        kind: MessageType,
        mut rules: Vec<(String, String)>,
    ) -> Reply {
        let mac = mac_of(req);
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_xid(req.xid())
            .set_flags(req.flags())
            .set_giaddr(req.giaddr())
            .set_ciaddr(req.ciaddr())
            .set_chaddr(&req.chaddr()[..6]);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(ingress.server_ip));
        let boot = self.boot_fields(req, mac, ingress.server_ip, &mut m);
        // iPXE counts a proxy answer as carrying boot options only when both siaddr and a
        // file name are set, even when the file is a URL; without siaddr it ignores the ACK.
        if m.siaddr().is_unspecified() && boot.file.is_some() {
            m.set_siaddr(self.boot.next_server.unwrap_or(ingress.server_ip));
            rules.push((
                "siaddr".to_owned(),
                "proxyDHCP answers always name a boot server (iPXE needs it)".to_owned(),
            ));
        }
        // PXE spec: firmware recognises a proxy offer by option 60 = PXEClient.
        if boot.vendor_class.is_none() {
            m.opts_mut()
                .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
            rules.push((
                "option 60".to_owned(),
                "PXEClient marks a proxyDHCP offer (PXE spec)".to_owned(),
            ));
        }
        let dest = if !req.giaddr().is_unspecified() {
            SocketAddrV4::new(req.giaddr(), SERVER_PORT)
        } else {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        };
        Reply {
            msg: m,
            kind,
            dest,
            commit: None,
            if_lost: None,
            boot,
            rules,
        }
    }

    /// Host over subnet over global options.
    fn options_for(&self, mac: Mac, subnet: usize) -> OptionSet {
        let host = self
            .inventory
            .host_by_mac(&mac)
            .map(|h| h.options.clone())
            .unwrap_or_default();
        host.over(&self.dhcp.subnets[subnet].options.over(&self.dhcp.options))
    }

    /// A NAK for `req`, its reason recorded as the decision's one rule.
    fn nak(&self, req: &Message, ingress: &Ingress<'_>, subnet: usize, why: String) -> Reply {
        let rules = vec![("nak".to_owned(), why)];
        self.build(
            req,
            ingress,
            subnet,
            MessageType::Nak,
            Ipv4Addr::UNSPECIFIED,
            None,
            rules,
        )
    }

    /// Builds a reply of `kind` with address `yiaddr`. `inform_to` is set for INFORM.
    #[expect(
        clippy::too_many_arguments,
        reason = "one reply builder for every message type"
    )]
    fn build(
        &self,
        req: &Message,
        ingress: &Ingress<'_>,
        subnet: usize,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        inform_to: Option<Ipv4Addr>,
        mut rules: Vec<(String, String)>,
    ) -> Reply {
        let mac = mac_of(req);
        let net = self.dhcp.subnets[subnet].net;
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_xid(req.xid())
            .set_flags(req.flags())
            .set_giaddr(req.giaddr())
            .set_chaddr(&req.chaddr()[..6])
            .set_yiaddr(yiaddr);
        if kind == MessageType::Ack {
            m.set_ciaddr(req.ciaddr());
        }
        let opts = m.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(ingress.server_ip));
        if let Some(DhcpOption::RelayAgentInformation(ra)) =
            req.opts().get(OptionCode::RelayAgentInformation)
        {
            // RFC 3046: the relay strips it again; it must come back unchanged.
            opts.insert(DhcpOption::RelayAgentInformation(ra.clone()));
            rules.push((
                "option 82".to_owned(),
                "relay agent information echoed (RFC 3046)".to_owned(),
            ));
        }
        let mut boot = BootDecision::default();
        if kind != MessageType::Nak {
            let o = self.options_for(mac, subnet);
            opts.insert(DhcpOption::SubnetMask(net.netmask()));
            if let Some(r) = o.router {
                opts.insert(DhcpOption::Router(vec![r]));
            }
            if let Some(d) = &o.dns {
                opts.insert(DhcpOption::DomainNameServer(d.clone()));
            }
            if let Some(d) = &o.domain {
                opts.insert(DhcpOption::DomainName(d.clone()));
            }
            if let Some(n) = &o.ntp {
                opts.insert(DhcpOption::NtpServers(n.clone()));
            }
            if let Some(mtu) = o.mtu {
                opts.insert(DhcpOption::InterfaceMtu(mtu));
            }
            if inform_to.is_none() {
                let lease = o.lease_time.unwrap_or(DEFAULT_LEASE_TIME);
                opts.insert(DhcpOption::AddressLeaseTime(lease));
                opts.insert(DhcpOption::Renewal(lease / 2));
                opts.insert(DhcpOption::Rebinding(lease / 8 * 7));
            }
            let host = self.inventory.host_by_mac(&mac);
            if let Some(h) = host {
                opts.insert(DhcpOption::Hostname(h.name.clone()));
                rules.push(("option 12".to_owned(), format!("inventory host {}", h.name)));
            }
            boot = self.boot_fields(req, mac, ingress.server_ip, &mut m);
            if self.dhcp.ipxe_no_pxedhcp && ClientFacts::from_message(req).is_ipxe() {
                // iPXE waits about 2 s after an offer for proxyDHCP offers unless the offer
                // says there are none (its encapsulated no-pxedhcp setting, 175.176).
                m.opts_mut().insert(DhcpOption::Unknown(UnknownOption::new(
                    OptionCode::Unknown(175),
                    policy::IPXE_NO_PXEDHCP.to_vec(),
                )));
                rules.push((
                    "option 175".to_owned(),
                    "iPXE no-pxedhcp: the boot answer is in this offer, no proxyDHCP wait"
                        .to_owned(),
                ));
            }
        } else {
            opts.insert(DhcpOption::Message(
                "requested address not available".to_owned(),
            ));
        }

        // RFC 2131 §4.1: relay → giaddr:67; NAK → broadcast; INFORM/RENEW → ciaddr;
        // otherwise broadcast (a client without an address cannot receive unicast before
        // it has ARP).
        let giaddr = req.giaddr();
        let dest = if !giaddr.is_unspecified() {
            if kind == MessageType::Nak {
                m.set_flags(Flags::default().set_broadcast());
            }
            SocketAddrV4::new(giaddr, SERVER_PORT)
        } else if kind == MessageType::Nak {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        } else if let Some(ci) = inform_to.filter(|c| !c.is_unspecified()) {
            SocketAddrV4::new(ci, CLIENT_PORT)
        } else if !req.ciaddr().is_unspecified() {
            SocketAddrV4::new(req.ciaddr(), CLIENT_PORT)
        } else {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        };
        Reply {
            msg: m,
            kind,
            dest,
            commit: None,
            if_lost: None,
            boot,
            rules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{dhcp::AddrRange, SubnetConfig};
    use crate::services::dhcp::table::Blocker;
    use dhcproto::v4::relay::{RelayAgentInformation, RelayInfo};

    const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

    fn server(authoritative: bool) -> Server {
        let subnets = vec![
            SubnetConfig {
                net: "10.0.0.0/24".parse().expect("net"),
                interface: Some("fabric0".into()),
                pools: vec![AddrRange::parse("10.0.0.100-10.0.0.103").expect("r")],
                exclude: vec![],
                options: OptionSet {
                    router: Some(SERVER_IP),
                    ..Default::default()
                },
            },
            SubnetConfig {
                net: "10.9.0.0/24".parse().expect("net"),
                interface: None,
                pools: vec![AddrRange::parse("10.9.0.10-10.9.0.20").expect("r")],
                exclude: vec![],
                options: OptionSet::default(),
            },
        ];
        let dhcp = DhcpConfig {
            commit_delay_ms: 0,
            mode: DhcpMode::Server,
            authoritative,
            rate_limit: 10,
            options: OptionSet {
                lease_time: Some(600),
                ..Default::default()
            },
            subnets,
            guards: DhcpGuards::default(),
            ipxe_no_pxedhcp: true,
        };
        let text = "[profiles.p]\n[[hosts]]\nname='res'\nmac='52:54:00:00:00:ee'\nip='10.0.0.50'\nprofile='p'\n";
        let inventory = Inventory::from_wire(
            std::path::Path::new("h"),
            toml::from_str(text).expect("toml"),
        )
        .expect("inv");
        Server::new(dhcp, BootSettings::defaults(), inventory, &[], 0)
    }

    fn ingress() -> Ingress<'static> {
        Ingress {
            iface: "fabric0",
            server_ip: SERVER_IP,
            port: SERVER_PORT,
            peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT),
        }
    }

    /// Arrival from `ip`'s client port.
    fn from(ip: Ipv4Addr) -> Ingress<'static> {
        Ingress {
            peer: SocketAddrV4::new(ip, CLIENT_PORT),
            ..ingress()
        }
    }

    fn msg(mac: u8, kind: MessageType) -> Message {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 0, 0, mac],
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m
    }

    fn reply(h: Handled) -> Reply {
        match h {
            Handled::Reply(r) => *r,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn lease(s: &mut Server, mac: u8, now: u64) -> Reply {
        let offer = reply(s.handle(&msg(mac, MessageType::Discover), &ingress(), now));
        assert_eq!(offer.kind, MessageType::Offer);
        let mut req = msg(mac, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER_IP));
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.msg.yiaddr()));
        reply(s.handle(&req, &ingress(), now))
    }

    /// A RELEASE of `ip` by client `mac`.
    fn release(mac: u8, ip: Ipv4Addr) -> Message {
        let mut rel = msg(mac, MessageType::Release);
        rel.set_ciaddr(ip);
        rel
    }

    /// A DECLINE of `ip` by client `mac`.
    fn decline(mac: u8, ip: Ipv4Addr) -> Message {
        let mut dec = msg(mac, MessageType::Decline);
        dec.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        dec
    }

    /// The hardware address `msg(n, ..)` carries.
    fn client_mac(n: u8) -> crate::model::inventory::Mac {
        crate::model::inventory::Mac([0x52, 0x54, 0, 0, 0, n])
    }

    /// Moves host `res`'s reservation 10.0.0.50 to client `to` (a reload).
    fn move_reservation(s: &mut Server, to: u8) {
        let text = format!("[profiles.p]\n[[hosts]]\nname='res'\nmac='52:54:00:00:00:{to:02x}'\nip='10.0.0.50'\nprofile='p'\n");
        let inventory = Inventory::from_wire(
            std::path::Path::new("h"),
            toml::from_str(&text).expect("toml"),
        )
        .expect("inv");
        s.table.set_reservations(&inventory);
        s.inventory = inventory;
    }

    fn renew(mac: u8, ip: Ipv4Addr) -> Message {
        let mut m = msg(mac, MessageType::Request);
        m.set_ciaddr(ip);
        m
    }

    const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);

    #[test]
    fn only_a_claimed_ack_carries_the_nak_for_a_lost_claim() {
        // Standalone: nothing is claimed, so nothing can be lost.
        let mut s = server(true);
        let alone = lease(&mut s, 0x01, 0);
        assert_eq!(alone.kind, MessageType::Ack);
        assert!(alone.if_lost.is_none());
        // Cluster mode: a pool address is claimed in etcd; the client's reservation is not.
        let mut s = server(true);
        s.share_leases();
        let pool = lease(&mut s, 0x01, 0);
        assert_eq!(pool.kind, MessageType::Ack);
        let (nak, _) = pool.if_lost.expect("a pool address's ACK carries its NAK");
        assert_eq!(
            nak.opts().get(OptionCode::MessageType),
            Some(&DhcpOption::MessageType(MessageType::Nak))
        );
        let reserved = lease(&mut s, 0xee, 0);
        assert_eq!(reserved.msg.yiaddr(), RESERVED);
        assert!(reserved.if_lost.is_none());
    }

    #[test]
    fn a_moved_reservation_waits_for_the_old_lease_and_its_holder_is_naked() {
        let mut s = server(true);
        // A (0xee) holds the reservation, then it moves to B (0x0b).
        assert_eq!(lease(&mut s, 0xee, 0).msg.yiaddr(), RESERVED);
        move_reservation(&mut s, 0x0b);
        let offer = reply(s.handle(&msg(0x0b, MessageType::Discover), &ingress(), 10));
        assert_ne!(offer.msg.yiaddr(), RESERVED, "no address on two machines");
        assert!(s.table.is_dynamic(0, offer.msg.yiaddr()));
        let waits = offer
            .rules
            .iter()
            .find(|(part, _)| part == "reservation")
            .map(|(_, why)| why.as_str())
            .unwrap_or_default();
        assert!(
            waits.starts_with(
                "reservation 10.0.0.50 of host res waits: leased to 52:54:00:00:00:ee until "
            ),
            "{waits}"
        );
        assert!(waits.ends_with("00:10:00 GMT"), "expiry at 600 s: {waits}");
        let b_pool = lease(&mut s, 0x0b, 10);
        assert_eq!(b_pool.kind, MessageType::Ack);
        let b_pool = b_pool.msg.yiaddr();
        assert_ne!(b_pool, RESERVED);
        // B asking for its reservation by name is refused while A holds it.
        let mut ask = msg(0x0b, MessageType::Request);
        ask.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(RESERVED));
        assert_eq!(reply(s.handle(&ask, &ingress(), 20)).kind, MessageType::Nak);
        // B renews its pool address while it waits.
        assert_eq!(
            reply(s.handle(&renew(0x0b, b_pool), &from(b_pool), 100)).kind,
            MessageType::Ack
        );
        // A's renewal is refused: the address is someone else's now.
        let nak = reply(s.handle(&renew(0xee, RESERVED), &from(RESERVED), 300));
        assert_eq!(nak.kind, MessageType::Nak);
        assert_eq!(s.table.lease_at(RESERVED).map(|l| l.expires), Some(600));
        // A gives it back: B's next exchange (its renewal, NAKed) leads to the reservation.
        let rel = release(0xee, RESERVED);
        assert!(matches!(
            s.handle(&rel, &from(RESERVED), 310),
            Handled::Commit(r) if r.state == LeaseState::Released
        ));
        assert_eq!(
            reply(s.handle(&renew(0x0b, b_pool), &from(b_pool), 320)).kind,
            MessageType::Nak
        );
        let ack = lease(&mut s, 0x0b, 320);
        assert_eq!((ack.kind, ack.msg.yiaddr()), (MessageType::Ack, RESERVED));
        assert!(ack.rules.iter().all(|(part, _)| part != "reservation"));
        assert!(
            s.table.lease_at(b_pool).is_none(),
            "B's pool address returns to the pool"
        );
    }

    #[test]
    fn a_moved_reservation_is_free_when_the_old_lease_ends() {
        let mut s = server(false);
        lease(&mut s, 0xee, 0);
        move_reservation(&mut s, 0x0b);
        // Not authoritative: A's renewal goes unanswered, its lease runs out at 600.
        assert!(matches!(
            s.handle(&renew(0xee, RESERVED), &from(RESERVED), 300),
            Handled::Silent(_)
        ));
        assert!(matches!(
            s.reserved(client_mac(0x0b), 0, 599),
            Reserved::Waits(..)
        ));
        assert!(matches!(
            s.reserved(client_mac(0x0b), 0, 600),
            Reserved::Effective(..)
        ));
        let ack = lease(&mut s, 0x0b, 600);
        assert_eq!((ack.kind, ack.msg.yiaddr()), (MessageType::Ack, RESERVED));
    }

    #[test]
    fn the_old_holders_decline_of_a_moved_reservation_is_a_release() {
        let mut s = server(true);
        s.set_guards(DhcpGuards {
            decline_burst: 0,
            decline_per_hour: 0,
            ..DhcpGuards::default()
        });
        lease(&mut s, 0xee, 0);
        move_reservation(&mut s, 0x0b);
        let mut dec = decline(0xee, RESERVED);
        dec.opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER_IP));
        assert!(
            matches!(s.handle(&dec, &ingress(), 20), Handled::Commit(r) if r.state == LeaseState::Released),
            "no quarantine, no bucket spent"
        );
        assert_eq!(lease(&mut s, 0x0b, 30).msg.yiaddr(), RESERVED);
    }

    #[test]
    fn a_live_offer_or_a_quarantine_also_holds_a_moved_reservation() {
        let mut s = server(true);
        let offer = reply(s.handle(&msg(0xee, MessageType::Discover), &ingress(), 0));
        assert_eq!(offer.msg.yiaddr(), RESERVED);
        move_reservation(&mut s, 0x0b);
        assert!(matches!(
            s.reserved(client_mac(0x0b), 0, 59),
            Reserved::Waits(
                _,
                _,
                ReservationState::HeldBy {
                    how: Blocker::Offered,
                    until: 60,
                    ..
                }
            )
        ));
        // A's REQUEST for the offer it was made is refused.
        let mut req = msg(0xee, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER_IP));
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(RESERVED));
        assert_eq!(reply(s.handle(&req, &ingress(), 5)).kind, MessageType::Nak);
        assert_eq!(lease(&mut s, 0x0b, 60).msg.yiaddr(), RESERVED);
        // B declines its own reservation (someone answers ARP for it): as before, that does
        // not make it wait (the kernel keeps answering it, and so does userspace).
        let mut dec = decline(0x0b, RESERVED);
        dec.opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER_IP));
        assert!(matches!(
            s.handle(&dec, &ingress(), 70),
            Handled::Commit(r) if r.state == LeaseState::Declined
        ));
        assert!(matches!(
            s.reserved(client_mac(0x0b), 0, 80),
            Reserved::Effective(..)
        ));
        // Its quarantine makes the next owner wait, though.
        move_reservation(&mut s, 0x0c);
        assert!(matches!(
            s.reserved(client_mac(0x0c), 0, 80),
            Reserved::Waits(
                _,
                _,
                ReservationState::HeldBy {
                    how: Blocker::Declined,
                    ..
                }
            )
        ));
        assert_ne!(lease(&mut s, 0x0c, 80).msg.yiaddr(), RESERVED);
    }

    #[test]
    fn netboot_deny_and_used_once_shape_the_boot_fields() {
        let mut s = server(true);
        let text = "[profiles.p]\n[[hosts]]\nname='res'\nmac='52:54:00:00:00:ee'\nip='10.0.0.50'\nprofile='p'\nnetboot='deny'\n\
                    [[hosts]]\nname='once'\nmac='52:54:00:00:00:0c'\nip='10.0.0.51'\nprofile='p'\nnetboot='once'\n";
        let mut inventory = Inventory::from_wire(
            std::path::Path::new("h"),
            toml::from_str(text).expect("toml"),
        )
        .expect("inv");
        inventory.set_consumed("once", true);
        s.table.set_reservations(&inventory);
        s.inventory = inventory;
        let firmware = |mac: u8, vendor: &[u8], arch: u16| {
            let mut m = msg(mac, MessageType::Discover);
            m.opts_mut()
                .insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
            m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(
                dhcproto::v4::Architecture::from(arch),
            ));
            m
        };
        let boot_fields = |r: &Reply| {
            (
                r.msg.siaddr(),
                r.msg.fname_str().and_then(Result::ok).map(str::to_owned),
                r.msg.opts().get(OptionCode::BootfileName).is_some(),
                r.msg.opts().get(OptionCode::ClassIdentifier).is_some(),
            )
        };
        // Deny: the address and network options, nothing to boot.
        let offer = reply(s.handle(&firmware(0xee, b"PXEClient", 7), &ingress(), 0));
        assert_eq!(offer.msg.yiaddr(), RESERVED);
        assert!(offer.msg.opts().get(OptionCode::SubnetMask).is_some());
        assert_eq!(
            boot_fields(&offer),
            (Ipv4Addr::UNSPECIFIED, None, false, false)
        );
        assert!(offer
            .boot
            .rules
            .iter()
            .any(|(_, r)| r.contains("netboot = deny")));
        // Used once: PXE still gets its loader, UEFI HTTP boot no URL.
        let offer = reply(s.handle(&firmware(0x0c, b"PXEClient", 7), &ingress(), 0));
        assert_eq!(offer.msg.fname_str().and_then(Result::ok), Some("ipxe.efi"));
        assert!(offer
            .boot
            .rules
            .iter()
            .any(|(_, r)| r.contains("netboot = once (used)")));
        let offer = reply(s.handle(&firmware(0x0c, b"HTTPClient", 16), &ingress(), 0));
        assert_eq!(offer.msg.yiaddr(), Ipv4Addr::new(10, 0, 0, 51));
        assert_eq!(
            boot_fields(&offer),
            (Ipv4Addr::UNSPECIFIED, None, false, false)
        );
        // proxyDHCP has nothing but a boot answer to give: silence.
        s.dhcp.mode = DhcpMode::Proxy;
        assert!(matches!(
            s.handle(&firmware(0xee, b"PXEClient", 7), &ingress(), 0),
            Handled::Silent(_)
        ));
        assert!(matches!(
            s.handle(&firmware(0x0c, b"HTTPClient", 16), &ingress(), 0),
            Handled::Silent(_)
        ));
        let pxe = reply(s.handle(&firmware(0x0c, b"PXEClient", 7), &ingress(), 0));
        assert_eq!(pxe.msg.fname_str().and_then(Result::ok), Some("ipxe.efi"));
    }

    #[test]
    fn discover_offer_request_ack_commits_the_lease() {
        let mut s = server(true);
        let ack = lease(&mut s, 1, 100);
        assert_eq!(ack.kind, MessageType::Ack);
        assert_eq!(ack.msg.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
        let rec = ack.commit.expect("an ACK carries its lease record");
        assert_eq!(
            (rec.ip, rec.state, rec.expires),
            (Ipv4Addr::new(10, 0, 0, 100), LeaseState::Bound, 700)
        );
        assert_eq!(
            ack.dest,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        );
        assert!(
            matches!(ack.msg.opts().get(OptionCode::Router), Some(DhcpOption::Router(r)) if r == &vec![SERVER_IP])
        );
        assert!(matches!(
            ack.msg.opts().get(OptionCode::AddressLeaseTime),
            Some(DhcpOption::AddressLeaseTime(600))
        ));
        // A second client gets the next address.
        assert_eq!(
            lease(&mut s, 2, 100).msg.yiaddr(),
            Ipv4Addr::new(10, 0, 0, 101)
        );
    }

    #[test]
    fn selecting_another_server_withdraws_our_offer() {
        let mut s = server(true);
        let offer = reply(s.handle(&msg(1, MessageType::Discover), &ingress(), 0));
        let mut req = msg(1, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 2)));
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.msg.yiaddr()));
        assert!(matches!(s.handle(&req, &ingress(), 0), Handled::Silent(_)));
        assert!(s.table.available_to(offer.msg.yiaddr(), client_mac(9), 0));
    }

    #[test]
    fn init_reboot_on_the_wrong_network_is_naked_and_right_one_acked() {
        let mut s = server(true);
        let mut req = msg(1, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 1, 5,
            )));
        let nak = reply(s.handle(&req, &ingress(), 0));
        assert_eq!(nak.kind, MessageType::Nak);
        assert_eq!(
            nak.dest,
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        );
        assert!(nak.commit.is_none());
        // A free pool address on the right network is accepted (lease database lost).
        let mut req = msg(1, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 102)));
        assert_eq!(reply(s.handle(&req, &ingress(), 0)).kind, MessageType::Ack);
        // ... but not one that another client holds.
        let mut req = msg(2, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 102)));
        assert_eq!(reply(s.handle(&req, &ingress(), 0)).kind, MessageType::Nak);
    }

    #[test]
    fn non_authoritative_server_stays_silent_for_unknown_addresses() {
        let mut s = server(false);
        let mut req = msg(1, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 7)));
        assert!(matches!(s.handle(&req, &ingress(), 0), Handled::Silent(_)));
    }

    #[test]
    fn renewing_extends_the_lease_and_answers_unicast() {
        let mut s = server(true);
        let ip = lease(&mut s, 1, 0).msg.yiaddr();
        let mut renew = msg(1, MessageType::Request);
        renew.set_ciaddr(ip);
        let ack = reply(s.handle(&renew, &ingress(), 300));
        assert_eq!(ack.kind, MessageType::Ack);
        assert_eq!(ack.commit.map(|r| r.expires), Some(900));
        assert_eq!(ack.dest, SocketAddrV4::new(ip, CLIENT_PORT));
    }

    #[test]
    fn reserved_host_gets_only_its_reservation() {
        let mut s = server(true);
        let offer = reply(s.handle(&msg(0xee, MessageType::Discover), &ingress(), 0));
        assert_eq!(offer.msg.yiaddr(), Ipv4Addr::new(10, 0, 0, 50));
        assert!(
            matches!(offer.msg.opts().get(OptionCode::Hostname), Some(DhcpOption::Hostname(h)) if h == "res")
        );
        let mut req = msg(0xee, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 101)));
        assert_eq!(reply(s.handle(&req, &ingress(), 0)).kind, MessageType::Nak);
        // Nobody else can take it.
        let mut req = msg(1, MessageType::Request);
        req.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 50)));
        assert_eq!(reply(s.handle(&req, &ingress(), 0)).kind, MessageType::Nak);
    }

    #[test]
    fn starvation_cannot_take_reserved_addresses() {
        let mut s = server(true);
        let mut exhausted = 0;
        for i in 0..5000u32 {
            let b = i.to_be_bytes();
            let mut m = Message::new_with_id(
                i,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
                &[0x02, 0x77, b[0], b[1], b[2], b[3]],
            );
            m.opts_mut()
                .insert(DhcpOption::MessageType(MessageType::Discover));
            match s.handle(&m, &ingress(), 0) {
                Handled::Drop(DropReason::PoolExhausted) => exhausted += 1,
                Handled::Reply(r) => assert_ne!(r.msg.yiaddr(), Ipv4Addr::new(10, 0, 0, 50)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(exhausted, 5000 - 4);
        let ack = lease(&mut s, 0xee, 0);
        assert_eq!(
            (ack.kind, ack.msg.yiaddr()),
            (MessageType::Ack, Ipv4Addr::new(10, 0, 0, 50))
        );
    }

    #[test]
    fn relayed_requests_use_giaddr_and_echo_option_82() {
        let mut s = server(true);
        let mut m = msg(1, MessageType::Discover);
        m.set_giaddr(Ipv4Addr::new(10, 9, 0, 1));
        let mut info = RelayAgentInformation::default();
        info.insert(RelayInfo::AgentCircuitId(b"port7".to_vec()));
        m.opts_mut()
            .insert(DhcpOption::RelayAgentInformation(info.clone()));
        let offer = reply(s.handle(&m, &ingress(), 0));
        assert_eq!(offer.msg.yiaddr(), Ipv4Addr::new(10, 9, 0, 10));
        assert_eq!(
            offer.dest,
            SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 1), SERVER_PORT)
        );
        assert_eq!(offer.msg.giaddr(), Ipv4Addr::new(10, 9, 0, 1));
        assert_eq!(
            offer.msg.opts().get(OptionCode::RelayAgentInformation),
            Some(&DhcpOption::RelayAgentInformation(info))
        );
        let mut m = msg(1, MessageType::Discover);
        m.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
        assert!(matches!(
            s.handle(&m, &ingress(), 0),
            Handled::Drop(DropReason::NoSubnet)
        ));
    }

    #[test]
    fn release_frees_and_decline_quarantines() {
        let mut s = server(true);
        let ip = lease(&mut s, 1, 0).msg.yiaddr();
        let mut rel = release(1, ip);
        rel.opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER_IP));
        assert!(
            matches!(s.handle(&rel, &from(ip), 10), Handled::Commit(r) if r.state == LeaseState::Released)
        );
        assert!(s.table.lease_of(client_mac(1)).is_none());
        // Another client's RELEASE of an address it does not hold changes nothing.
        let ip2 = lease(&mut s, 2, 10).msg.yiaddr();
        let rel = release(3, ip2);
        assert!(matches!(s.handle(&rel, &from(ip2), 10), Handled::Silent(_)));
        let mut dec = decline(2, ip2);
        dec.opts_mut()
            .insert(DhcpOption::ServerIdentifier(SERVER_IP));
        assert!(
            matches!(s.handle(&dec, &ingress(), 20), Handled::Commit(r) if r.state == LeaseState::Declined)
        );
        let next = reply(s.handle(&msg(2, MessageType::Discover), &ingress(), 30));
        assert_ne!(next.msg.yiaddr(), ip2);
    }

    #[test]
    fn relayed_requests_only_from_listed_relays() {
        let mut s = server(true);
        s.set_guards(DhcpGuards {
            relays: Some(vec!["10.0.0.254/32".parse().expect("net")]),
            ..DhcpGuards::default()
        });
        let mut m = msg(1, MessageType::Discover);
        m.set_giaddr(Ipv4Addr::new(10, 9, 0, 1));
        let stranger = from(Ipv4Addr::new(10, 0, 0, 2));
        assert!(matches!(
            s.handle(&m, &stranger, 0),
            Handled::Drop(DropReason::RelayNotAllowed)
        ));
        assert_eq!(s.table.utilization(1).0, 0, "nothing offered");
        let relay = from(Ipv4Addr::new(10, 0, 0, 254));
        assert_eq!(
            reply(s.handle(&m, &relay, 0)).msg.yiaddr(),
            Ipv4Addr::new(10, 9, 0, 10)
        );
        // Requests without giaddr are not relays' business.
        let direct = reply(s.handle(&msg(2, MessageType::Discover), &stranger, 0));
        assert_eq!(direct.kind, MessageType::Offer);
        // An empty list trusts no relay at all.
        s.set_guards(DhcpGuards {
            relays: Some(vec![]),
            ..DhcpGuards::default()
        });
        assert!(matches!(
            s.handle(&m, &relay, 0),
            Handled::Drop(DropReason::RelayNotAllowed)
        ));
    }

    #[test]
    fn release_counts_only_from_the_released_address() {
        let mut s = server(true);
        let ip = lease(&mut s, 1, 0).msg.yiaddr();
        let rel = release(1, ip);
        // The victim's chaddr and ciaddr, from another machine (or from no address).
        for other in [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::UNSPECIFIED] {
            assert!(matches!(
                s.handle(&rel, &from(other), 10),
                Handled::Drop(DropReason::ReleaseNotFromClient)
            ));
        }
        let mac = client_mac(1);
        assert_eq!(s.table.lease_of(mac).map(|(l, _)| l), Some(ip));
        assert!(matches!(s.handle(&rel, &from(ip), 10), Handled::Commit(_)));
        assert!(s.table.lease_of(mac).is_none());
    }

    #[test]
    fn a_decline_flood_quarantines_only_the_burst() {
        let mut s = server(true);
        s.set_guards(DhcpGuards {
            decline_burst: 2,
            decline_per_hour: 60,
            ..DhcpGuards::default()
        });
        let mut outcomes = Vec::new();
        for i in 0..4u32 {
            let offer = reply(s.handle(&msg(1, MessageType::Discover), &ingress(), 100));
            let mut dec = decline(1, offer.msg.yiaddr());
            dec.set_xid(i);
            outcomes.push(s.handle(&dec, &ingress(), 100));
        }
        assert!(matches!(outcomes[0], Handled::Commit(_)));
        assert!(matches!(outcomes[1], Handled::Commit(_)));
        assert!(matches!(
            outcomes[2],
            Handled::Drop(DropReason::DeclineRateLimited)
        ));
        // Of the pool's 4 addresses, 2 are quarantined, 1 is offered to the flooder and the
        // last one is still there for another client.
        assert_eq!(lease(&mut s, 2, 100).kind, MessageType::Ack);
        // The relayed subnet has its own bucket; a minute later this one has a token again.
        let mut relayed = msg(4, MessageType::Discover);
        relayed.set_giaddr(Ipv4Addr::new(10, 9, 0, 1));
        let offer = reply(s.handle(&relayed, &ingress(), 100));
        let mut dec = decline(4, offer.msg.yiaddr());
        dec.set_giaddr(Ipv4Addr::new(10, 9, 0, 1));
        assert!(matches!(
            s.handle(&dec, &ingress(), 100),
            Handled::Commit(_)
        ));
    }

    #[test]
    fn declines_are_charged_to_the_pool_of_the_address_whatever_path_they_take() {
        let mut s = server(true);
        s.set_guards(DhcpGuards {
            decline_burst: 2,
            decline_per_hour: 60,
            ..DhcpGuards::default()
        });
        // Addresses of the local pool, declined once directly and once as if relayed
        // through the other subnet's giaddr: both come out of the local pool's one bucket.
        let mut outcomes = Vec::new();
        for (i, via_relay) in [false, true, false, true].into_iter().enumerate() {
            let offer = reply(s.handle(&msg(1, MessageType::Discover), &ingress(), 100));
            let mut dec = decline(1, offer.msg.yiaddr());
            dec.set_xid(u32::try_from(i).unwrap_or_default());
            if via_relay {
                dec.set_giaddr(Ipv4Addr::new(10, 9, 0, 1));
            }
            outcomes.push(s.handle(&dec, &ingress(), 100));
        }
        let committed = outcomes
            .iter()
            .filter(|o| matches!(o, Handled::Commit(_)))
            .count();
        assert_eq!(committed, 2, "{outcomes:?}");
    }

    #[test]
    fn inform_gets_options_without_an_address() {
        let mut s = server(true);
        let mut m = msg(1, MessageType::Inform);
        m.set_ciaddr(Ipv4Addr::new(10, 0, 0, 9));
        let ack = reply(s.handle(&m, &ingress(), 0));
        assert_eq!(ack.kind, MessageType::Ack);
        assert_eq!(ack.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(ack.msg.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(ack.commit.is_none());
        assert_eq!(
            ack.dest,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), CLIENT_PORT)
        );
    }

    #[test]
    fn pxe_clients_get_boot_fields_in_the_reply() {
        let mut s = server(true);
        let mut m = msg(1, MessageType::Discover);
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00007".to_vec(),
        ));
        m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(
            dhcproto::v4::Architecture::from(7),
        ));
        let offer = reply(s.handle(&m, &ingress(), 0));
        assert_eq!(offer.msg.siaddr(), SERVER_IP);
        assert_eq!(offer.msg.fname_str().and_then(Result::ok), Some("ipxe.efi"));
        assert_eq!(
            offer.msg.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"ipxe.efi".to_vec()))
        );
        assert_eq!(
            offer.msg.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
    }

    #[test]
    fn proxy_mode_answers_firmware_only_without_an_address() {
        let mut s = server(true);
        s.dhcp.mode = DhcpMode::Proxy;
        let pxe = |kind| {
            let mut m = msg(1, kind);
            m.opts_mut().insert(DhcpOption::ClassIdentifier(
                b"PXEClient:Arch:00000".to_vec(),
            ));
            m
        };
        let offer = reply(s.handle(&pxe(MessageType::Discover), &ingress(), 0));
        assert_eq!(offer.kind, MessageType::Offer);
        assert_eq!(offer.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            offer.msg.fname_str().and_then(Result::ok),
            Some("undionly.kpxe")
        );
        assert!(offer.msg.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(offer.msg.opts().get(OptionCode::SubnetMask).is_none());
        assert_eq!(
            offer.msg.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert!(offer.commit.is_none());
        // Plain clients are left to the network's address server.
        assert!(matches!(
            s.handle(&msg(2, MessageType::Discover), &ingress(), 0),
            Handled::Silent(_)
        ));
        // REQUEST to the boot-server port gets an ACK back to its source.
        let peer = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 77), 68);
        let at_4011 = Ingress {
            port: PXE_PORT,
            peer,
            ..ingress()
        };
        let ack = reply(s.handle(&pxe(MessageType::Request), &at_4011, 0));
        assert_eq!((ack.kind, ack.dest), (MessageType::Ack, peer));
        // ... but a REQUEST on port 67 belongs to the address server.
        assert!(matches!(
            s.handle(&pxe(MessageType::Request), &ingress(), 0),
            Handled::Silent(_)
        ));
        // iPXE in proxy mode still gets the script URL, marked as a proxy offer.
        let mut ipxe = msg(3, MessageType::Discover);
        ipxe.opts_mut()
            .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        let offer = reply(s.handle(&ipxe, &ingress(), 0));
        assert_eq!(
            offer.msg.fname_str().and_then(Result::ok),
            Some("http://10.0.0.1/boot.ipxe")
        );
        assert_eq!(
            offer.msg.siaddr(),
            SERVER_IP,
            "iPXE ignores proxy answers without siaddr"
        );
        assert_eq!(
            offer.msg.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        assert!(
            offer.msg.opts().get(OptionCode::Unknown(175)).is_none(),
            "a proxy answer does not speak for the address server"
        );
    }

    #[test]
    fn ipxe_is_told_not_to_wait_for_proxy_offers() {
        let mut s = server(true);
        let mut ipxe = msg(3, MessageType::Discover);
        ipxe.opts_mut()
            .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        let offer = reply(s.handle(&ipxe, &ingress(), 0));
        assert!(matches!(
            offer.msg.opts().get(OptionCode::Unknown(175)),
            Some(DhcpOption::Unknown(u)) if u.data() == policy::IPXE_NO_PXEDHCP
        ));
        let plain = reply(s.handle(&msg(4, MessageType::Discover), &ingress(), 0));
        assert!(plain.msg.opts().get(OptionCode::Unknown(175)).is_none());
    }

    #[test]
    fn ipxe_no_pxedhcp_off_leaves_option_175_out() {
        let mut s = server(true);
        s.dhcp.ipxe_no_pxedhcp = false;
        let mut ipxe = msg(3, MessageType::Discover);
        ipxe.opts_mut()
            .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        let offer = reply(s.handle(&ipxe, &ingress(), 0));
        assert_eq!(
            offer.msg.fname_str().and_then(Result::ok),
            Some("http://10.0.0.1/boot.ipxe"),
            "iPXE still gets its script"
        );
        assert!(offer.msg.opts().get(OptionCode::Unknown(175)).is_none());
        assert!(offer.rules.iter().all(|(rule, _)| rule != "option 175"));
    }
}
