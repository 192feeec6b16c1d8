//! The DHCPv6 server's decisions (RFC 8415 §18.3), pure: a decoded message, the client's
//! link and the time in; the reply, the bindings to make durable first and what to record
//! out. The shell (`service`) owns sockets, the journal and the clocks.

use std::{
    hash::{Hash, Hasher},
    net::Ipv6Addr,
    sync::Arc,
};

use crate::config::{dhcp6::Subnet6, Dhcp6Config};
use crate::model::{
    inventory::{BootAnswer, Host, Mac},
    snapshot::Snapshot,
};
use crate::services::dhcp::{
    journal::LeaseState,
    policy::{self, BootDecision, ClientFacts, ServerAddr},
    ratelimit::DeclineLimiter,
};

use super::{
    table::{IaKey, Lease6Record, State6, Table6},
    wire::{self, msg, opt, status, ClientMsg, Decoded, Writer},
};

/// Declines a subnet quarantines at once, and per hour after that (DHCPv4's defaults).
const DECLINE_BURST: u32 = 10;
const DECLINE_PER_HOUR: u32 = 60;
/// Seconds an advertised address is held for the client's Request.
pub const OFFER_HOLD_S: u64 = 60;
/// Addresses one IA's hash probes in a pool before the pool counts as full for it.
const PROBES: u128 = 256;
/// Pools up to this size are walked whole when the hash's address is taken.
const FULL_WALK: u128 = 1024;
/// Declined addresses quarantined at once; beyond that a Decline only releases (a client
/// declining every address it is given must not empty a pool).
pub const MAX_DECLINED: usize = 256;
/// IANA enterprise number sent with `HTTPClient` in the Vendor Class option (Intel's, as
/// EDK2 itself sends; the firmware compares only the class data).
const HTTP_CLIENT_ENTERPRISE: u32 = 343;

/// The client's link, as the shell resolved it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Index of the link's subnet in `dhcp6.subnets`.
    pub subnet: usize,
    /// The server's address clients on that link reach it at (boot URLs).
    pub server: Ipv6Addr,
}

/// A binding made or changed, for the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// The client's MAC.
    pub mac: Mac,
    /// Its address.
    pub ip: Ipv6Addr,
    /// Committed (Reply) rather than advertised.
    pub bound: bool,
}

/// The answer to one message.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The client message to send (the shell wraps it for relays).
    pub reply: Vec<u8>,
    /// `advertise` or `reply`: a metric label.
    pub kind: &'static str,
    /// Records to make durable before the reply leaves.
    pub commits: Vec<Lease6Record>,
    /// Addresses advertised or bound to a known MAC.
    pub granted: Vec<Granted>,
    /// The boot decision, when the reply carries boot options.
    pub boot: Option<BootDecision>,
}

impl Outcome {
    /// Records that `ip` was advertised (`bound` false) or bound to the client, for the
    /// ledger, when its MAC is known.
    fn grant(&mut self, mac: Option<Mac>, ip: Ipv6Addr, bound: bool) {
        if let Some(mac) = mac {
            self.granted.push(Granted { mac, ip, bound });
        }
    }
}

/// What became of a message: the answer, or the reason it was dropped (a metric label).
pub type Handled = Result<Outcome, &'static str>;

/// The server: its settings, identity and bindings.
pub struct Server6 {
    config: Dhcp6Config,
    duid: Vec<u8>,
    table: Table6,
    /// The configuration generation the message being handled is answered from.
    snap: Arc<Snapshot>,
    /// Per-subnet bucket of Declines that quarantine (as DHCPv4's `dhcp.decline_*`).
    declines: DeclineLimiter,
    /// When the table was last swept at `max_leases`.
    last_reclaim: u64,
}

impl Server6 {
    /// A server identified by `duid`, with the bindings the journal held.
    pub fn new(
        config: Dhcp6Config,
        duid: Vec<u8>,
        live: &[Lease6Record],
        snap: Arc<Snapshot>,
    ) -> Self {
        Self {
            config,
            duid,
            table: Table6::from_records(live),
            snap,
            declines: DeclineLimiter::new(DECLINE_BURST, DECLINE_PER_HOUR),
            last_reclaim: 0,
        }
    }

    /// The bindings.
    pub fn table(&self) -> &Table6 {
        &self.table
    }

    /// The server's DUID.
    pub fn duid(&self) -> &[u8] {
        &self.duid
    }

    /// The server's DUID-LL (RFC 8415 §11.4) for a MAC.
    pub fn duid_ll(mac: [u8; 6]) -> Vec<u8> {
        let mut d = vec![0, 3, 0, 1];
        d.extend_from_slice(&mac);
        d
    }

    /// Answers one decoded message from a client on `link`, whose MAC the shell found (or
    /// not); `now` is Unix seconds.
    pub fn handle(
        &mut self,
        snap: Arc<Snapshot>,
        d: &Decoded<'_>,
        mac: Option<Mac>,
        link: Link,
        now: u64,
    ) -> Handled {
        self.snap = snap;
        let m = &d.msg;
        let Some(subnet) = self.config.subnets.get(link.subnet).cloned() else {
            return Err("no_subnet");
        };
        let ours = m.server_id.map(|s| s == self.duid.as_slice());
        // RFC 8415 §16: which messages must, may or must not name a server.
        let addressed = match m.kind {
            msg::SOLICIT | msg::CONFIRM | msg::REBIND => ours.is_none(),
            msg::REQUEST | msg::RENEW | msg::RELEASE | msg::DECLINE => ours == Some(true),
            _ => ours != Some(false),
        };
        if !addressed {
            return Err("other_server");
        }
        let Some(client_id) = m.client_id else {
            if m.kind != msg::INFORMATION_REQUEST {
                return Err("no_client_id");
            }
            return self.information(m, mac, link, None);
        };
        match m.kind {
            msg::INFORMATION_REQUEST if !m.ia_na.is_empty() => Err("ia_in_information_request"),
            msg::INFORMATION_REQUEST => self.information(m, mac, link, Some(client_id)),
            msg::SOLICIT => self.assign(m, client_id, mac, link, &subnet, now, false),
            msg::REQUEST => self.assign(m, client_id, mac, link, &subnet, now, true),
            msg::RENEW | msg::REBIND => self.extend(m, client_id, mac, link, &subnet, now),
            msg::RELEASE | msg::DECLINE => self.give_back(m, client_id, now),
            msg::CONFIRM => self.confirm(m, client_id, &subnet),
            _ => Err("not_client_message"),
        }
    }

    fn host(&self, mac: Option<Mac>) -> Option<&Host> {
        mac.and_then(|m| self.snap.inventory.host_by_mac(&m))
    }

    fn reply(&self, kind: u8, m: &ClientMsg<'_>, client_id: Option<&[u8]>) -> Writer {
        let mut w = Writer::message(kind, m.xid);
        w.opt(opt::SERVERID, &self.duid);
        if let Some(c) = client_id {
            w.opt(opt::CLIENTID, c);
        }
        w
    }

    /// The options every answer may carry: DNS servers and the boot file.
    fn options(
        &self,
        w: &mut Writer,
        m: &ClientMsg<'_>,
        mac: Option<Mac>,
        link: Link,
    ) -> Option<BootDecision> {
        if m.wants(opt::DNS_SERVERS) && !self.config.dns_servers.is_empty() {
            let body: Vec<u8> = self
                .config
                .dns_servers
                .iter()
                .flat_map(|a| a.octets())
                .collect();
            w.opt(opt::DNS_SERVERS, &body);
        }
        let facts = facts(m);
        if !facts.is_booting_firmware() && !m.wants(opt::BOOTFILE_URL) {
            return None;
        }
        let host = self.host(mac);
        let answer = host.map_or(BootAnswer::Boot, |h| self.snap.inventory.boot_answer(h));
        let profile = host.and_then(|h| self.snap.inventory.profile(&h.profile));
        let boot = policy::decide_for(
            answer,
            &facts,
            profile,
            &self.snap.boot,
            ServerAddr::V6(link.server),
        );
        if let Some(file) = &boot.file {
            w.opt(opt::BOOTFILE_URL, file.as_bytes());
        }
        if boot.vendor_class.as_deref() == Some(b"HTTPClient") {
            // EDK2's HTTP boot takes an offer as HTTP only with this class in it.
            let mut body = HTTP_CLIENT_ENTERPRISE.to_be_bytes().to_vec();
            body.extend_from_slice(&10u16.to_be_bytes());
            body.extend_from_slice(b"HTTPClient");
            w.opt(opt::VENDOR_CLASS, &body);
        }
        Some(boot)
    }

    fn information(
        &self,
        m: &ClientMsg<'_>,
        mac: Option<Mac>,
        link: Link,
        client_id: Option<&[u8]>,
    ) -> Handled {
        let mut w = self.reply(msg::REPLY, m, client_id);
        let boot = self.options(&mut w, m, mac, link);
        Ok(Outcome {
            reply: w.finish(),
            kind: "reply",
            boot,
            ..Outcome::default()
        })
    }

    fn ia_body(
        &self,
        iaid: u32,
        addrs: &[(Ipv6Addr, u32, u32)],
        st: Option<(u16, &str)>,
    ) -> Vec<u8> {
        let pref = addrs.iter().map(|a| a.1).max().unwrap_or(0);
        let mut w = Writer::default();
        // RFC 8415 §14.2: an infinite preferred lifetime means infinite T1 and T2.
        let (t1, t2) = match pref {
            u32::MAX => (u32::MAX, u32::MAX),
            p => (p / 2, p / 5 * 4),
        };
        w.raw(&iaid.to_be_bytes())
            .raw(&t1.to_be_bytes())
            .raw(&t2.to_be_bytes());
        for &(ip, p, v) in addrs {
            let mut a = ip.octets().to_vec();
            a.extend_from_slice(&p.to_be_bytes());
            a.extend_from_slice(&v.to_be_bytes());
            w.opt(opt::IAADDR, &a);
        }
        if let Some((code, text)) = st {
            w.status(code, text);
        }
        w.finish()
    }

    /// An IA_NA holding no address, only a status `code` and its text.
    fn ia_failed(&self, iaid: u32, code: u16) -> Vec<u8> {
        self.ia_body(iaid, &[], Some((code, status_text(code))))
    }

    /// Solicit (`commit` false: advertise, unless Rapid Commit) and Request (bind).
    #[allow(clippy::too_many_arguments)]
    fn assign(
        &mut self,
        m: &ClientMsg<'_>,
        client_id: &[u8],
        mac: Option<Mac>,
        link: Link,
        subnet: &Subnet6,
        now: u64,
        request: bool,
    ) -> Handled {
        let rapid = !request && m.rapid_commit && self.config.rapid_commit;
        let commit = request || rapid;
        let kind = if commit { msg::REPLY } else { msg::ADVERTISE };
        let mut w = self.reply(kind, m, Some(client_id));
        let mut out = Outcome {
            kind: if commit { "reply" } else { "advertise" },
            ..Outcome::default()
        };
        let (pref, valid) = (
            self.config.preferred_lifetime_s,
            self.config.valid_lifetime_s,
        );
        let mut any = false;
        // Addresses this message's IAs got: one IA_NA each, never one address in two.
        let mut given: Vec<Ipv6Addr> = Vec::new();
        for ia in &m.ia_na {
            let key: IaKey = (client_id.to_vec(), ia.iaid);
            match self.choose(&key, mac, subnet, now, &given) {
                Some(ip) => {
                    any = true;
                    given.push(ip);
                    if commit {
                        out.commits.extend(self.bind(ip, key, mac, now));
                    } else if self.table.at(ip).is_none_or(|b| {
                        b.expires <= now || (b.ia == key && b.state == State6::Offered)
                    }) {
                        // An Advertise holds a free address for the Request; it never
                        // touches a binding (this IA's, or another IA's of the same machine):
                        // only a Request moves one, journaled.
                        self.table
                            .put(ip, key, mac, State6::Offered, now + OFFER_HOLD_S);
                    }
                    out.grant(mac, ip, commit);
                    // Addresses the client asked for but does not get: lifetimes 0
                    // (RFC 8415 §18.3.2).
                    let mut addrs = vec![(ip, pref, valid)];
                    if commit {
                        addrs.extend(ia.addrs.iter().filter(|a| **a != ip).map(|a| (*a, 0, 0)));
                    }
                    w.opt(opt::IA_NA, &self.ia_body(ia.iaid, &addrs, None));
                }
                None => {
                    w.opt(opt::IA_NA, &self.ia_failed(ia.iaid, status::NO_ADDRS_AVAIL));
                }
            }
        }
        if !m.ia_na.is_empty() && !any && !request {
            // RFC 8415 §18.3.9: no address for any IA is said at the top level too.
            w.status(status::NO_ADDRS_AVAIL, status_text(status::NO_ADDRS_AVAIL));
        }
        if kind == msg::ADVERTISE {
            // Preference 255: the client takes this Advertise at once instead of collecting
            // others for a second (RFC 8415 §18.2.1).
            w.opt(opt::PREFERENCE, &[255]);
        }
        if rapid {
            w.opt(opt::RAPID_COMMIT, &[]);
        }
        out.boot = self.options(&mut w, m, mac, link);
        out.reply = w.finish();
        Ok(out)
    }

    /// Binds `ip` to `key`: the records to journal, the IA's previous address released
    /// first (the journal keeps one record per address; without it a restart would find
    /// the IA bound at two addresses and free the wrong one).
    fn bind(&mut self, ip: Ipv6Addr, key: IaKey, mac: Option<Mac>, now: u64) -> Vec<Lease6Record> {
        let expires = now + u64::from(self.config.valid_lifetime_s);
        let mut records = Vec::with_capacity(2);
        if let Some((old, b)) = self.table.of(&key) {
            if old != ip && b.state == State6::Bound {
                records.push(Lease6Record {
                    ip: old,
                    duid: key.0.clone(),
                    iaid: key.1,
                    mac: b.mac,
                    state: LeaseState::Released,
                    expires: 0,
                });
            }
        }
        self.table.put(ip, key.clone(), mac, State6::Bound, expires);
        records.push(Lease6Record {
            ip,
            duid: key.0,
            iaid: key.1,
            mac,
            state: LeaseState::Bound,
            expires,
        });
        records
    }

    /// Renew and Rebind: the IA's binding extended where it is still on the client's link;
    /// addresses that are not (any more) the client's returned with lifetimes 0.
    fn extend(
        &mut self,
        m: &ClientMsg<'_>,
        client_id: &[u8],
        mac: Option<Mac>,
        link: Link,
        subnet: &Subnet6,
        now: u64,
    ) -> Handled {
        let mut w = self.reply(msg::REPLY, m, Some(client_id));
        let mut out = Outcome {
            kind: "reply",
            ..Outcome::default()
        };
        let (pref, valid) = (
            self.config.preferred_lifetime_s,
            self.config.valid_lifetime_s,
        );
        for ia in &m.ia_na {
            let key: IaKey = (client_id.to_vec(), ia.iaid);
            let held = self
                .table
                .of(&key)
                .filter(|(ip, b)| b.state == State6::Bound && subnet.net.contains(ip))
                .map(|(ip, _)| ip)
                // A reservation moved elsewhere takes the address back at renewal.
                .filter(|ip| !self.reserved_for_other(*ip, mac));
            let ip = match held {
                Some(ip) => Some(ip),
                // Rebind after the server lost the binding (a new server, a restored
                // journal): bind what the client may have, as a Request would.
                None if m.kind == msg::REBIND => self.choose(&key, mac, subnet, now, &[]),
                None => None,
            };
            // Addresses the client has that are not its binding: lifetimes 0 where the
            // server knows better (its binding is elsewhere, or the address is off this
            // link); an on-link address the server simply has no binding for is left to
            // the client (RFC 8415 §18.3.5), not taken from it.
            let stale: Vec<(Ipv6Addr, u32, u32)> = ia
                .addrs
                .iter()
                .filter(|a| Some(**a) != ip && (ip.is_some() || !subnet.net.contains(*a)))
                .map(|a| (*a, 0, 0))
                .collect();
            match ip {
                Some(ip) => {
                    out.commits.extend(self.bind(ip, key, mac, now));
                    out.grant(mac, ip, true);
                    let mut addrs = vec![(ip, pref, valid)];
                    addrs.extend(stale);
                    w.opt(opt::IA_NA, &self.ia_body(ia.iaid, &addrs, None));
                }
                None if m.kind == msg::REBIND => {
                    w.opt(opt::IA_NA, &self.ia_body(ia.iaid, &stale, None));
                }
                // Renew: NoBinding, and no addresses (RFC 8415 §18.3.4).
                None => {
                    w.opt(opt::IA_NA, &self.ia_failed(ia.iaid, status::NO_BINDING));
                }
            }
        }
        out.boot = self.options(&mut w, m, mac, link);
        out.reply = w.finish();
        Ok(out)
    }

    /// Release and Decline: only the IA's own binding is given back.
    fn give_back(&mut self, m: &ClientMsg<'_>, client_id: &[u8], now: u64) -> Handled {
        let mut w = self.reply(msg::REPLY, m, Some(client_id));
        let mut out = Outcome {
            kind: "reply",
            ..Outcome::default()
        };
        let mut room = MAX_DECLINED.saturating_sub(self.table.declined());
        for ia in &m.ia_na {
            let key: IaKey = (client_id.to_vec(), ia.iaid);
            let bound = self
                .table
                .of(&key)
                .filter(|(ip, b)| b.state == State6::Bound && ia.addrs.contains(ip))
                .map(|(ip, b)| (ip, b.mac));
            let Some((ip, bmac)) = bound else {
                w.opt(opt::IA_NA, &self.ia_failed(ia.iaid, status::NO_BINDING));
                continue;
            };
            // A reservation is never quarantined: whoever claimed the host's MAC could then
            // keep the host itself from its address. Each subnet's bucket bounds the rest.
            let quarantine = m.kind == msg::DECLINE
                && room > 0
                && self.snap.inventory.host_by_ipv6(ip).is_none()
                && self
                    .declines
                    .allow(self.config.subnet_of(ip).unwrap_or(usize::MAX), now);
            let (state, expires) = if quarantine {
                room -= 1;
                (
                    LeaseState::Declined,
                    now + u64::from(self.config.valid_lifetime_s),
                )
            } else {
                (LeaseState::Released, 0)
            };
            let r = Lease6Record {
                ip,
                duid: key.0,
                iaid: key.1,
                mac: bmac,
                state,
                expires,
            };
            self.table.apply(&r);
            out.commits.push(r);
        }
        w.status(status::SUCCESS, "");
        out.reply = w.finish();
        Ok(out)
    }

    /// Confirm: whether the client's addresses are still on its link.
    fn confirm(&self, m: &ClientMsg<'_>, client_id: &[u8], subnet: &Subnet6) -> Handled {
        let addrs: Vec<Ipv6Addr> = m
            .ia_na
            .iter()
            .flat_map(|ia| ia.addrs.iter().copied())
            .collect();
        if addrs.is_empty() {
            // RFC 8415 §18.3.3: nothing to confirm, no reply.
            return Err("confirm_without_addresses");
        }
        let mut w = self.reply(msg::REPLY, m, Some(client_id));
        if addrs.iter().all(|a| subnet.net.contains(a)) {
            w.status(status::SUCCESS, "");
        } else {
            w.status(status::NOT_ON_LINK, "not on this link");
        }
        Ok(Outcome {
            reply: w.finish(),
            kind: "reply",
            ..Outcome::default()
        })
    }

    /// Whether `ip` is another inventory host's reservation.
    fn reserved_for_other(&self, ip: Ipv6Addr, mac: Option<Mac>) -> bool {
        self.snap
            .inventory
            .host_by_ipv6(ip)
            .is_some_and(|h| Some(h.mac) != mac)
    }

    /// The address for `ia` on `subnet`: the host's reservation, else what the IA already
    /// holds there, else a free pool address from the IA's hash onwards.
    fn choose(
        &mut self,
        ia: &IaKey,
        mac: Option<Mac>,
        subnet: &Subnet6,
        now: u64,
        avoid: &[Ipv6Addr],
    ) -> Option<Ipv6Addr> {
        // A second IA of the same message gets a pool address, not the reservation again.
        if let Some(ip) = self
            .host(mac)
            .and_then(|h| h.ipv6)
            .filter(|ip| subnet.net.contains(ip) && !avoid.contains(ip))
        {
            // The reservation is the machine's, whichever of its IAs asks: firmware starts
            // a new DUID or IAID at each stage (OVMF's own IPv6 setup and its boot client,
            // then iPXE), and each must get the host's address, not the first one only.
            let same_machine = self
                .table
                .at(ip)
                .is_some_and(|b| mac.is_some() && b.mac == mac && b.state != State6::Declined);
            return (same_machine || self.table.free_for(ip, ia, now)).then_some(ip);
        }
        let in_pool = |ip: &Ipv6Addr| subnet.pools.iter().any(|p| p.contains(*ip));
        if let Some((ip, b)) = self.table.of(ia) {
            if b.state != State6::Declined
                && in_pool(&ip)
                && !avoid.contains(&ip)
                && !self.reserved_for_other(ip, mac)
            {
                return Some(ip);
            }
        }
        if self.table.len() >= self.config.max_leases {
            // A sweep is O(bindings): at most one a second, however many new clients ask.
            if self.last_reclaim != now {
                self.last_reclaim = now;
                self.table.reclaim(now);
            }
            if self.table.len() >= self.config.max_leases {
                return None;
            }
        }
        let mut h = std::hash::DefaultHasher::new();
        ia.hash(&mut h);
        let seed = u128::from(h.finish());
        for pool in &subnet.pools {
            let size = pool.span().saturating_add(1);
            // Small pools are walked whole; large ones probed from the hash (they are far
            // from full, or max_leases stops them first). Either way at most
            // `FULL_WALK` lookups per IA under the server's lock.
            let tries = if size <= FULL_WALK { size } else { PROBES };
            for k in 0..tries {
                let ip = pool.nth((seed.wrapping_add(k)) % size);
                if self.table.free_for(ip, ia, now)
                    && !avoid.contains(&ip)
                    && self.snap.inventory.host_by_ipv6(ip).is_none()
                {
                    return Some(ip);
                }
            }
        }
        None
    }
}

/// The boot facts of a DHCPv6 message, in the terms the DHCPv4 policy reads: option 61's
/// architecture, option 16's first class (`HTTPClient:Arch:00016…`, `PXEClient:…`), and
/// `iPXE` when it is one of option 15's classes.
pub fn facts(m: &ClientMsg<'_>) -> ClientFacts {
    ClientFacts {
        arch: m.arch,
        vendor_class: m.vendor_class.map(|(_, c)| c.to_vec()),
        user_class: m
            .user_classes
            .iter()
            .find(|c| **c == b"iPXE")
            .map(|c| c.to_vec()),
        ipxe: None,
        uuid: None,
    }
}

/// The text sent with a failure status.
fn status_text(code: u16) -> &'static str {
    match code {
        status::NO_ADDRS_AVAIL => "no address for this client on its link",
        status::NO_BINDING => "no binding for this IA",
        status::NOT_ON_LINK => "not on this link",
        _ => "",
    }
}

/// The message type's name: a metric label.
pub fn kind_label(kind: u8) -> &'static str {
    match kind {
        msg::SOLICIT => "solicit",
        msg::REQUEST => "request",
        msg::CONFIRM => "confirm",
        msg::RENEW => "renew",
        msg::REBIND => "rebind",
        msg::RELEASE => "release",
        msg::DECLINE => "decline",
        msg::INFORMATION_REQUEST => "information_request",
        _ => "other",
    }
}

/// The MAC of the client: the relay's RFC 6939 option (Ethernet), else an Ethernet DUID-LL
/// or DUID-LLT, else the EUI-64 link-local address it sent from (`peer`: the packet's source
/// for a direct client, the innermost relay's peer address for a relayed one).
pub fn client_mac(d: &Decoded<'_>, peer: Ipv6Addr) -> Option<Mac> {
    let from_relay = d
        .relays
        .last()
        .and_then(|r| r.client_lladdr)
        .and_then(|(t, a)| (t == 1).then(|| <[u8; 6]>::try_from(a).ok()).flatten());
    let peer = d.relays.last().map_or(peer, |r| r.peer);
    from_relay
        .or_else(|| d.msg.client_id.and_then(wire::duid_mac))
        .or_else(|| wire::eui64_mac(peer))
        .map(Mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dhcp6::WireDhcp6;
    use crate::model::{boot::BootSettings, inventory::Inventory};
    use std::path::Path;

    const SERVER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1);
    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const LINK: Link = Link {
        subnet: 0,
        server: SERVER,
    };

    fn snapshot() -> Arc<Snapshot> {
        let text = "[profiles.p]\nkernel = \"vmlinuz\"\n[[hosts]]\nname = \"n1\"\nmac = \"52:54:00:12:34:56\"\nipv6 = \"2001:db8:77::11\"\nprofile = \"p\"\n[[hosts]]\nname = \"n2\"\nmac = \"52:54:00:00:00:02\"\nipv6 = \"2001:db8:77::1000\"\nprofile = \"p\"\n";
        let inventory =
            Inventory::from_wire(Path::new("hosts.toml"), toml::from_str(text).expect("toml"))
                .expect("inventory");
        let mut boot = BootSettings::defaults();
        boot.http_base = Some("http://{server}:8080".to_owned());
        Arc::new(Snapshot {
            generation: 1,
            inventory,
            boot,
            scripts: Vec::new(),
            templates: Arc::default(),
        })
    }

    fn server(extra: &str) -> Server6 {
        let text = format!("{extra}\n[[subnets]]\ncidr = \"2001:db8:77::/64\"\ninterface = \"fabric0\"\npools = [\"2001:db8:77::1000-2001:db8:77::1003\"]\n");
        let w: WireDhcp6 = toml::from_str(&text).expect("toml");
        let c = Dhcp6Config::from_wire(&w, &["fabric0".to_owned()]).expect("config");
        Server6::new(c, Server6::duid_ll([2, 0, 0, 0, 0, 0xaa]), &[], snapshot())
    }

    fn duid(mac: [u8; 6]) -> Vec<u8> {
        let mut d = vec![0, 3, 0, 1];
        d.extend_from_slice(&mac);
        d
    }

    /// A client message with one IA_NA (IAID 1) listing `addrs`.
    fn message(
        kind: u8,
        client: &[u8],
        server: Option<&[u8]>,
        addrs: &[Ipv6Addr],
        extra: impl FnOnce(&mut Writer),
    ) -> Vec<u8> {
        let mut w = Writer::message(kind, [9, 9, 9]);
        w.opt(opt::CLIENTID, client);
        if let Some(s) = server {
            w.opt(opt::SERVERID, s);
        }
        w.nested(opt::IA_NA, |w| {
            w.raw(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
            for a in addrs {
                let mut b = a.octets().to_vec();
                b.extend_from_slice(&[0; 8]);
                w.opt(opt::IAADDR, &b);
            }
        });
        extra(&mut w);
        w.finish()
    }

    fn run(s: &mut Server6, pkt: &[u8], now: u64) -> Handled {
        let d = wire::decode(pkt).expect("decodes");
        let mac = client_mac(&d, "fe80::1".parse().expect("ip"));
        s.handle(snapshot(), &d, mac, LINK, now)
    }

    fn answer(h: Handled) -> Outcome {
        h.unwrap_or_else(|why| panic!("dropped: {why}"))
    }

    /// The option codes of a reply, the first address of its first IA_NA with its valid
    /// lifetime, that IA's status code and the reply's own.
    type Read = (Vec<u16>, Option<(Ipv6Addr, u32)>, Option<u16>, Option<u16>);

    fn read(reply: &[u8]) -> Read {
        let mut codes = Vec::new();
        let (mut addr, mut ia_status, mut top) = (None, None, None);
        for o in wire::options(&reply[4..]) {
            let (code, body) = o.expect("option");
            codes.push(code);
            if code == opt::STATUS_CODE {
                top = Some(u16::from_be_bytes([body[0], body[1]]));
            }
            if code == opt::IA_NA && addr.is_none() {
                for o in wire::options(&body[12..]) {
                    let (c, b) = o.expect("ia option");
                    if c == opt::IAADDR && addr.is_none() {
                        let ip: [u8; 16] = b[..16].try_into().expect("16");
                        addr = Some((
                            Ipv6Addr::from(ip),
                            u32::from_be_bytes(b[20..24].try_into().expect("4")),
                        ));
                    }
                    if c == opt::STATUS_CODE {
                        ia_status = Some(u16::from_be_bytes([b[0], b[1]]));
                    }
                }
            }
        }
        (codes, addr, ia_status, top)
    }

    #[test]
    fn four_messages_bind_the_reserved_address_and_only_the_request_is_journaled() {
        let mut s = server("");
        let me = duid(MAC);
        let adv = answer(run(
            &mut s,
            &message(msg::SOLICIT, &me, None, &[], |_| {}),
            100,
        ));
        assert_eq!(adv.reply[0], msg::ADVERTISE);
        assert!(adv.commits.is_empty(), "an Advertise promises nothing");
        let (codes, addr, _, _) = read(&adv.reply);
        assert!(codes.contains(&opt::PREFERENCE) && codes.contains(&opt::SERVERID));
        let (ip, _) = addr.expect("an address");
        assert_eq!(
            ip,
            "2001:db8:77::11".parse::<Ipv6Addr>().expect("ip"),
            "the MAC's reservation"
        );
        let sid = s.duid().to_vec();
        let reply = answer(run(
            &mut s,
            &message(msg::REQUEST, &me, Some(&sid), &[ip], |_| {}),
            101,
        ));
        assert_eq!(reply.reply[0], msg::REPLY);
        assert_eq!(reply.commits.len(), 1);
        assert_eq!(reply.commits[0].mac, Some(Mac(MAC)));
        assert_eq!(
            reply.granted,
            vec![Granted {
                mac: Mac(MAC),
                ip,
                bound: true
            }]
        );
        assert_eq!(read(&reply.reply).1, Some((ip, 7200)));
        // A Request naming another server is not ours to answer.
        assert!(matches!(
            run(
                &mut s,
                &message(
                    msg::REQUEST,
                    &me,
                    Some(&[0, 3, 0, 1, 1, 1, 1, 1, 1, 1]),
                    &[ip],
                    |_| {}
                ),
                102
            ),
            Err("other_server")
        ));
        // A Solicit naming a server is refused too (RFC 8415 §16).
        assert_eq!(
            run(
                &mut s,
                &message(msg::SOLICIT, &me, Some(&sid), &[], |_| {}),
                102
            )
            .err(),
            Some("other_server")
        );
    }

    #[test]
    fn rapid_commit_binds_at_once_only_when_allowed() {
        let me = duid([2, 0, 0, 0, 0, 7]);
        let rapid = message(msg::SOLICIT, &me, None, &[], |w| {
            w.opt(opt::RAPID_COMMIT, &[]);
        });
        let mut s = server("");
        let out = answer(run(&mut s, &rapid, 100));
        assert_eq!(out.reply[0], msg::REPLY);
        assert!(read(&out.reply).0.contains(&opt::RAPID_COMMIT));
        assert_eq!(out.commits.len(), 1);
        let mut s = server("rapid_commit = false");
        let out = answer(run(&mut s, &rapid, 100));
        assert_eq!(out.reply[0], msg::ADVERTISE);
        assert!(out.commits.is_empty());
    }

    #[test]
    fn the_pool_never_hands_out_another_hosts_reservation_and_runs_dry_cleanly() {
        // The pool ::1000-::1003 holds n2's reservation (::1000): three dynamic addresses.
        let mut s = server("");
        let mut got = Vec::new();
        for i in 0..4u8 {
            let me = duid([2, 0, 0, 0, 1, i]);
            let sid = s.duid().to_vec();
            let out = answer(run(
                &mut s,
                &message(msg::REQUEST, &me, Some(&sid), &[], |_| {}),
                100,
            ));
            let (_, addr, ia_status, _) = read(&out.reply);
            match addr {
                Some((ip, _)) => got.push(ip),
                None => assert_eq!(ia_status, Some(status::NO_ADDRS_AVAIL), "client {i}"),
            }
        }
        got.sort();
        let want: Vec<Ipv6Addr> = (0x1001..=0x1003)
            .map(|l| Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, l))
            .collect();
        assert_eq!(got, want);
        // Once the bindings expire, the addresses are free again.
        let me = duid([2, 0, 0, 0, 1, 9]);
        let out = answer(run(
            &mut s,
            &message(msg::SOLICIT, &me, None, &[], |_| {}),
            100 + 7200,
        ));
        assert!(read(&out.reply).1.is_some());
    }

    #[test]
    fn renew_release_decline_and_confirm_touch_only_the_clients_own_binding() {
        let mut s = server("");
        let sid = s.duid().to_vec();
        let (me, thief) = (duid([2, 0, 0, 0, 2, 1]), duid([2, 0, 0, 0, 2, 2]));
        let out = answer(run(
            &mut s,
            &message(msg::REQUEST, &me, Some(&sid), &[], |_| {}),
            100,
        ));
        let (ip, _) = read(&out.reply).1.expect("bound");
        // Another client cannot renew, release or decline it.
        for kind in [msg::RENEW, msg::RELEASE, msg::DECLINE] {
            let out = answer(run(
                &mut s,
                &message(kind, &thief, Some(&sid), &[ip], |_| {}),
                200,
            ));
            assert!(out.commits.is_empty(), "{kind}");
            assert_eq!(read(&out.reply).2, Some(status::NO_BINDING), "{kind}");
        }
        assert_eq!(s.table().at(ip).map(|b| b.ia.0.clone()), Some(me.clone()));
        // Its own Renew extends it; a Confirm of an address off the link says NotOnLink.
        let out = answer(run(
            &mut s,
            &message(msg::RENEW, &me, Some(&sid), &[ip], |_| {}),
            300,
        ));
        assert_eq!(out.commits[0].expires, 300 + 7200);
        let off: Ipv6Addr = "2001:db8:99::5".parse().expect("ip");
        let out = answer(run(
            &mut s,
            &message(msg::CONFIRM, &me, None, &[off], |_| {}),
            300,
        ));
        assert_eq!(read(&out.reply).3, Some(status::NOT_ON_LINK));
        let out = answer(run(
            &mut s,
            &message(msg::CONFIRM, &me, None, &[ip], |_| {}),
            300,
        ));
        assert_eq!(read(&out.reply).3, Some(status::SUCCESS));
        // Decline quarantines it from everyone.
        let out = answer(run(
            &mut s,
            &message(msg::DECLINE, &me, Some(&sid), &[ip], |_| {}),
            400,
        ));
        assert_eq!(out.commits[0].state, LeaseState::Declined);
        assert!(!s.table().free_for(ip, &(thief.clone(), 1), 401));
    }

    #[test]
    fn a_solicit_does_not_turn_a_binding_back_into_an_offer() {
        let mut s = server("");
        let sid = s.duid().to_vec();
        let me = duid([2, 0, 0, 0, 4, 1]);
        let out = answer(run(
            &mut s,
            &message(msg::REQUEST, &me, Some(&sid), &[], |_| {}),
            100,
        ));
        let (ip, _) = read(&out.reply).1.expect("bound");
        let out = answer(run(
            &mut s,
            &message(msg::SOLICIT, &me, None, &[], |_| {}),
            200,
        ));
        assert_eq!(read(&out.reply).1.map(|a| a.0), Some(ip));
        let b = s.table().at(ip).expect("held");
        assert_eq!((b.state, b.expires), (State6::Bound, 100 + 7200));
    }

    #[test]
    fn a_moved_ia_releases_its_old_address_in_the_journal() {
        // node01's MAC first gets a pool address (its reservation is taken by a stranger
        // claiming it), then, once that is released, moves to the reservation.
        let mut s = server("");
        let sid = s.duid().to_vec();
        let stranger = duid([2, 0, 0, 0, 5, 1]);
        let reserved: Ipv6Addr = "2001:db8:77::11".parse().expect("ip");
        // The stranger claims node01's MAC through option 79-less EUI-64? No: through its
        // DUID-LL; it is that machine as far as DHCPv6 can tell.
        let claim = duid(MAC);
        answer(run(
            &mut s,
            &message(msg::REQUEST, &claim, Some(&sid), &[], |_| {}),
            100,
        ));
        assert!(s.table().at(reserved).is_some());
        // The second IA of the same machine (another IAID) now asks while the first holds R:
        // the same machine's reservation moves to it, and one Reply never lists R twice.
        let mut w = Writer::message(msg::REQUEST, [1, 1, 1]);
        w.opt(opt::CLIENTID, &duid(MAC)).opt(opt::SERVERID, &sid);
        for iaid in [2u8, 3] {
            w.nested(opt::IA_NA, |w| {
                w.raw(&[0, 0, 0, iaid, 0, 0, 0, 0, 0, 0, 0, 0]);
            });
        }
        let out = answer(run(&mut s, &w.finish(), 110));
        let bound: Vec<Ipv6Addr> = out
            .commits
            .iter()
            .filter(|r| r.state == LeaseState::Bound)
            .map(|r| r.ip)
            .collect();
        assert_eq!(bound.len(), 2);
        assert_ne!(bound[0], bound[1], "one address per IA");
        let _ = stranger;
        // A pool client that moves (its address became another host's reservation) gets
        // a Released record for the old address before the new binding.
        let mover = duid([2, 0, 0, 0, 5, 2]);
        let out = answer(run(
            &mut s,
            &message(msg::REQUEST, &mover, Some(&sid), &[], |_| {}),
            120,
        ));
        let (first, _) = read(&out.reply).1.expect("bound");
        let mut s2 = s;
        let text = format!("[profiles.p]\nkernel = \"vmlinuz\"\n[[hosts]]\nname = \"n9\"\nmac = \"52:54:00:00:00:09\"\nipv6 = \"{first}\"\nprofile = \"p\"\n");
        let inventory = crate::model::inventory::Inventory::from_wire(
            Path::new("h.toml"),
            toml::from_str(&text).expect("toml"),
        )
        .expect("inventory");
        let snap = Arc::new(Snapshot {
            generation: 2,
            inventory,
            boot: BootSettings::defaults(),
            scripts: Vec::new(),
            templates: Arc::default(),
        });
        let d = message(msg::REQUEST, &mover, Some(&sid), &[first], |_| {});
        let decoded = wire::decode(&d).expect("decodes");
        let out = s2
            .handle(snap, &decoded, None, LINK, 130)
            .expect("answered");
        let states: Vec<(Ipv6Addr, LeaseState)> =
            out.commits.iter().map(|r| (r.ip, r.state)).collect();
        assert_eq!(
            states.first(),
            Some(&(first, LeaseState::Released)),
            "{states:?}"
        );
        assert!(
            states
                .iter()
                .any(|(ip, st)| *ip != first && *st == LeaseState::Bound),
            "{states:?}"
        );
        // And the Reply gives the old address back with lifetimes 0.
        assert!(read(&out.reply).1.is_some_and(|(ip, _)| ip != first));
    }

    #[test]
    fn a_decline_never_quarantines_a_reservation() {
        let mut s = server("");
        let sid = s.duid().to_vec();
        let reserved: Ipv6Addr = "2001:db8:77::11".parse().expect("ip");
        // Whoever claims node01's MAC binds its reservation, then declines it.
        let claim = duid(MAC);
        answer(run(
            &mut s,
            &message(msg::REQUEST, &claim, Some(&sid), &[], |_| {}),
            100,
        ));
        let out = answer(run(
            &mut s,
            &message(msg::DECLINE, &claim, Some(&sid), &[reserved], |_| {}),
            101,
        ));
        assert_eq!(
            out.commits[0].state,
            LeaseState::Released,
            "released, not quarantined"
        );
        assert!(s.table().at(reserved).is_none());
    }

    #[test]
    fn renew_without_a_binding_lists_no_address_and_rebind_zeroes_only_off_link_ones() {
        let mut s = server("");
        let sid = s.duid().to_vec();
        let me = duid([2, 0, 0, 0, 6, 1]);
        let on: Ipv6Addr = "2001:db8:77::1500".parse().expect("ip");
        let off: Ipv6Addr = "2001:db8:99::1".parse().expect("ip");
        let out = answer(run(
            &mut s,
            &message(msg::RENEW, &me, Some(&sid), &[on], |_| {}),
            100,
        ));
        let (_, addr, ia_status, _) = read(&out.reply);
        assert_eq!((addr, ia_status), (None, Some(status::NO_BINDING)));
        let mut full = server("max_leases = 1");
        answer(run(
            &mut full,
            &message(msg::SOLICIT, &duid([2, 0, 0, 0, 6, 9]), None, &[], |_| {}),
            100,
        ));
        let out = answer(run(
            &mut full,
            &message(msg::REBIND, &me, None, &[on, off], |_| {}),
            100,
        ));
        assert_eq!(
            read(&out.reply).1,
            Some((off, 0)),
            "only the off-link address is zeroed"
        );
    }

    #[test]
    fn information_requests_get_options_only_and_relays_name_the_mac() {
        let mut s = server("dns_servers = [\"2001:db8:77::53\"]");
        // iPXE on a link whose advertisement says O=1, M=0: boot options, no address.
        let mut w = Writer::message(msg::INFORMATION_REQUEST, [4, 4, 4]);
        w.opt(opt::CLIENTID, &duid(MAC))
            .opt(opt::ORO, &[0, 23, 0, 59])
            .opt(opt::USER_CLASS, &[0, 4, b'i', b'P', b'X', b'E']);
        let out = answer(run(&mut s, &w.finish(), 100));
        let (codes, addr, _, _) = read(&out.reply);
        assert_eq!(out.reply[0], msg::REPLY);
        assert!(addr.is_none() && !codes.contains(&opt::IA_NA));
        assert!(codes.contains(&opt::DNS_SERVERS) && codes.contains(&opt::BOOTFILE_URL));
        assert!(out.commits.is_empty());
        // With an IA_NA it is not an Information-request RFC 8415 allows: dropped.
        let bad = message(msg::INFORMATION_REQUEST, &duid(MAC), None, &[], |_| {});
        assert_eq!(
            run(&mut s, &bad, 100).err(),
            Some("ia_in_information_request")
        );
        // A relay's RFC 6939 option names the MAC when the DUID does not (a DUID-UUID).
        let uuid = [vec![0, 4], vec![7; 16]].concat();
        let inner = message(msg::SOLICIT, &uuid, None, &[], |_| {});
        let mut w = Writer::default();
        w.raw(&[msg::RELAY_FORW, 0])
            .raw(&"2001:db8:77::2".parse::<Ipv6Addr>().expect("ip").octets())
            .raw(&"fe80::99".parse::<Ipv6Addr>().expect("ip").octets())
            .opt(
                opt::CLIENT_LINKLAYER_ADDR,
                &[[0u8, 1].as_slice(), &MAC].concat(),
            )
            .opt(opt::RELAY_MSG, &inner);
        let pkt = w.finish();
        let d = wire::decode(&pkt).expect("decodes");
        assert_eq!(
            client_mac(&d, "fe80::1".parse().expect("ip")),
            Some(Mac(MAC))
        );
        let out = s
            .handle(snapshot(), &d, Some(Mac(MAC)), LINK, 100)
            .expect("answered");
        assert_eq!(
            read(&out.reply).1.map(|a| a.0),
            Some("2001:db8:77::11".parse().expect("ip")),
            "the host's reservation"
        );
    }

    #[test]
    fn made_up_duids_stop_at_max_leases() {
        let mut s = server("max_leases = 2");
        for i in 0..3u8 {
            let out = answer(run(
                &mut s,
                &message(msg::SOLICIT, &duid([2, 0, 0, 0, 3, i]), None, &[], |_| {}),
                100,
            ));
            assert_eq!(read(&out.reply).1.is_some(), i < 2, "client {i}");
        }
        assert_eq!(s.table().len(), 2);
    }

    #[test]
    fn boot_clients_get_a_bracketed_url_and_http_boot_its_class() {
        let mut s = server("");
        let ipxe = message(msg::SOLICIT, &duid(MAC), None, &[], |w| {
            w.opt(opt::ORO, &[0, 59])
                .opt(opt::USER_CLASS, &[0, 4, b'i', b'P', b'X', b'E']);
        });
        let out = answer(run(&mut s, &ipxe, 100));
        let boot = out.boot.expect("boot decision");
        assert_eq!(
            boot.file.as_deref(),
            Some("http://[2001:db8:77::1]:8080/boot.ipxe")
        );
        let http = message(msg::SOLICIT, &duid(MAC), None, &[], |w| {
            w.opt(opt::ORO, &[0, 59])
                .opt(opt::CLIENT_ARCH_TYPE, &[0, 16])
                .opt(
                    opt::VENDOR_CLASS,
                    &[
                        0, 0, 1, 0x57, 0, 10, b'H', b'T', b'T', b'P', b'C', b'l', b'i', b'e', b'n',
                        b't',
                    ],
                );
        });
        let out = answer(run(&mut s, &http, 100));
        assert!(
            read(&out.reply).0.contains(&opt::VENDOR_CLASS),
            "HTTPClient echoed for EDK2"
        );
        assert_eq!(
            out.boot.and_then(|b| b.file),
            Some("http://[2001:db8:77::1]:8080/ipxe.efi".to_owned())
        );
        let pxe = message(msg::SOLICIT, &duid(MAC), None, &[], |w| {
            w.opt(opt::ORO, &[0, 59])
                .opt(opt::CLIENT_ARCH_TYPE, &[0, 7])
                .opt(
                    opt::VENDOR_CLASS,
                    &[
                        0, 0, 1, 0x57, 0, 9, b'P', b'X', b'E', b'C', b'l', b'i', b'e', b'n', b't',
                    ],
                );
        });
        let out = answer(run(&mut s, &pxe, 100));
        assert_eq!(
            out.boot.and_then(|b| b.file),
            Some("tftp://[2001:db8:77::1]/ipxe.efi".to_owned())
        );
    }
}
