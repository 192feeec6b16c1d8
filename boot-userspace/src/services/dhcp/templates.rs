//! The DHCP fast path's contents, derived from the userspace DHCP server so that both paths
//! give a reserved host the same bytes. Pure: the server's configuration and the fabric's
//! interfaces in, [`Derived`] out; writing it into the kernel's maps is `xdp`'s part.
//!
//! [`derive`] asks [`Server::reservation_reply`] for the reply each template variant would
//! get and cuts it into a [`Template`] (the per-host option 12 and the per-request options 97
//! and 82 become holes). [`relay_prefixes`] turns `dhcp.relays` into the relay trie's entries.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    net::{Ipv4Addr, SocketAddrV4},
};

use bootfabric_abi::dhcp::{
    HostEntry, IfaceEntry, Template, TemplateKey, BOOTP_HEADER_LEN, CLASS_HTTP, CLASS_IPXE_HTTP,
    CLASS_IPXE_TFTP, CLASS_PLAIN, CLASS_PXE, DHCPACK, DHCPOFFER, HOSTNAME_OPT_MAX,
    HOSTS_MAX_ENTRIES, NO_SUBNET, RELAYS_MAX_ENTRIES, TEMPLATES_MAX_ENTRIES, TEMPLATE_OPTS_BUF,
    TEMPLATE_OPTS_MAX,
};
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use ipnet::Ipv4Net;
use tracing::{debug, warn};

use super::{
    encode_reply,
    policy::arch,
    server::{Ingress, Reserved, Server, SERVER_PORT},
};
use crate::{
    model::inventory::Mac,
    xdp::fastpath::{FabricIface, MapContents},
};

/// The template variants the kernel answers: (class, architecture). Clients of any other
/// variant are served from userspace.
pub const VARIANTS: &[(u8, u16)] = &[
    (CLASS_PLAIN, 0),
    (CLASS_IPXE_HTTP, 0),
    (CLASS_IPXE_TFTP, 0),
    (CLASS_PXE, arch::BIOS),
    (CLASS_PXE, arch::EFI_IA32),
    (CLASS_PXE, arch::EFI_BC),
    (CLASS_PXE, arch::EFI_X64),
    (CLASS_PXE, arch::EFI_ARM64),
    (CLASS_HTTP, arch::HTTP_IA32),
    (CLASS_HTTP, arch::HTTP_X64),
    (CLASS_HTTP, arch::HTTP_ARM64),
];

/// A request of `kind` (DISCOVER or REQUEST) from `mac` that selects the template variant
/// `(class, arch)`, with nothing per-request in it (no option 97, no option 82).
pub fn variant_request(
    mac: Mac,
    kind: MessageType,
    class: u8,
    arch: u16,
    server_ip: Ipv4Addr,
    ip: Ipv4Addr,
) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest).set_chaddr(&mac.0);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    if kind == MessageType::Request {
        o.insert(DhcpOption::ServerIdentifier(server_ip));
        o.insert(DhcpOption::RequestedIpAddress(ip));
    }
    match class {
        CLASS_IPXE_HTTP => {
            o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        CLASS_IPXE_TFTP => {
            // Feature 19 (HTTP) = 0.
            o.insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                175.into(),
                vec![19, 1, 0],
            )));
            o.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        CLASS_PXE | CLASS_HTTP => {
            let vendor: &[u8] = if class == CLASS_PXE {
                b"PXEClient"
            } else {
                b"HTTPClient"
            };
            o.insert(DhcpOption::ClassIdentifier(vendor.to_vec()));
            o.insert(DhcpOption::ClientSystemArchitecture(arch.into()));
        }
        _ => {}
    }
    m
}

/// The fast path derived from the server's configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Derived {
    /// What the kernel's maps should hold: reserved hosts, templates and the source addresses
    /// the kernel answers relayed requests from (see [`relay_prefixes`]).
    pub maps: MapContents,
    /// Interfaces by index (each template carries its own).
    pub ifaces: BTreeMap<u32, IfaceEntry>,
    /// Reserved hosts left to userspace, with the reason.
    pub skipped: Vec<(String, &'static str)>,
    /// `dhcp.relays` has more entries than the kernel's trie holds: every relayed request
    /// goes to userspace.
    pub relays_overflow: bool,
}

/// Why an encoded reply cannot become a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CutError {
    /// Fewer bytes than the BOOTP header and cookie.
    #[error("reply shorter than a BOOTP header")]
    Short,
    /// The options ran out before option 255.
    #[error("reply without an end option")]
    NoEnd,
    /// An option's length runs past the reply.
    #[error("truncated option")]
    Truncated,
    /// Option 82 or 97: they are filled in per request, never part of a template.
    #[error("the template request carried a per-request option")]
    PerRequest,
    /// More option bytes than [`TEMPLATE_OPTS_MAX`].
    #[error("options longer than a template holds")]
    TooLong,
}

/// The relay trie's entries for `dhcp.relays`, as (prefix length, network address): the
/// listed addresses and CIDRs; `0.0.0.0/0` when the key is unset, since userspace then trusts
/// a giaddr from anyone and the kernel must answer what userspace would; nothing for `[]`.
/// `None` when the list does not fit the map: the kernel then answers no relayed request
/// (userspace checks the whole list), rather than a partial list deciding.
pub fn relay_prefixes(relays: Option<&[Ipv4Net]>) -> Option<BTreeSet<(u32, [u8; 4])>> {
    let Some(nets) = relays else {
        return Some(BTreeSet::from([(0, [0; 4])]));
    };
    let set: BTreeSet<(u32, [u8; 4])> = nets
        .iter()
        .map(|n| (u32::from(n.prefix_len()), n.network().octets()))
        .collect();
    (set.len() <= RELAYS_MAX_ENTRIES as usize).then_some(set)
}

/// Cuts an encoded reply into a template: the options without 12 (its place is recorded),
/// without the end option, and the place where option 97 goes.
pub fn cut(encoded: &[u8]) -> Result<Box<Template>, CutError> {
    let header: [u8; BOOTP_HEADER_LEN] = encoded
        .get(..BOOTP_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(CutError::Short)?;
    let mut opts = Vec::with_capacity(256);
    let mut hostname_at = None;
    let mut uuid_at = None;
    let mut lease_secs = 0;
    let mut i = BOOTP_HEADER_LEN;
    loop {
        let code = *encoded.get(i).ok_or(CutError::NoEnd)?;
        if code == 255 {
            break;
        }
        let len = usize::from(*encoded.get(i + 1).ok_or(CutError::Truncated)?);
        let opt = encoded.get(i..i + 2 + len).ok_or(CutError::Truncated)?;
        if code > 12 && hostname_at.is_none() {
            hostname_at = Some(opts.len());
        }
        if code > 97 && uuid_at.is_none() {
            uuid_at = Some(opts.len());
        }
        if let (51, Ok(secs)) = (code, <[u8; 4]>::try_from(&opt[2..])) {
            // The kernel reports an ACK of the same lease again only after half of it.
            lease_secs = u32::from_be_bytes(secs);
        }
        match code {
            12 => hostname_at = Some(opts.len()),
            82 | 97 => return Err(CutError::PerRequest),
            _ => opts.extend_from_slice(opt),
        }
        i += 2 + len;
    }
    if opts.len() > TEMPLATE_OPTS_MAX {
        return Err(CutError::TooLong);
    }
    let mut t = Box::new(Template {
        header,
        opts_len: opts.len() as u16,
        hostname_at: hostname_at.unwrap_or(opts.len()) as u16,
        uuid_at: uuid_at.unwrap_or(opts.len()) as u16,
        _pad: 0,
        iface: IfaceEntry {
            server_ip: [0; 4],
            subnet: NO_SUBNET,
            mac: [0; 6],
            _pad: [0; 2],
        },
        lease_secs,
        opts: [0; TEMPLATE_OPTS_BUF],
    });
    t.opts[..opts.len()].copy_from_slice(&opts);
    Ok(t)
}

/// Derives the maps from the server's configuration and lease table at `now` (Unix seconds)
/// for the given interfaces. A reservation that waits for another client's lease (see
/// [`Server::reserved`]) is left to userspace, which gives its owner a pool address until
/// the hold ends; the service derives again when it does.
pub fn derive(server: &Server, ifaces: &[FabricIface], now: u64) -> Derived {
    let mut d = Derived::default();
    match relay_prefixes(server.dhcp.guards.relays.as_deref()) {
        Some(r) => d.maps.relays = r,
        None => d.relays_overflow = true,
    }
    for iface in ifaces {
        // The subnet an unrelayed request on this interface belongs to.
        let subnet = server
            .subnet_for(&Message::default(), &ingress_of(iface))
            .map(|s| s as u32)
            .unwrap_or(NO_SUBNET);
        d.ifaces.insert(
            iface.ifindex,
            IfaceEntry {
                server_ip: iface.server_ip.octets(),
                subnet,
                mac: iface.mac,
                _pad: [0; 2],
            },
        );
    }

    // Hosts whose replies differ only in address and name share templates.
    let mut groups: StdHashMap<(usize, String, String), u32> = StdHashMap::new();
    let mut representatives: Vec<(Mac, Ipv4Addr, usize)> = Vec::new();
    for host in server.inventory.hosts() {
        let Some(ip) = host.ip else { continue };
        let Some(subnet) = server.dhcp.subnet_of(ip) else {
            d.skipped
                .push((host.name.clone(), "reservation outside every subnet"));
            continue;
        };
        if matches!(server.reserved(host.mac, subnet, now), Reserved::Waits(..)) {
            d.skipped.push((
                host.name.clone(),
                "reservation waits for the previous holder's lease",
            ));
            continue;
        }
        if d.maps.hosts.len() >= HOSTS_MAX_ENTRIES as usize {
            d.skipped
                .push((host.name.clone(), "fast path host map full"));
            continue;
        }
        let name = host.name.as_bytes();
        if name.len() + 2 > HOSTNAME_OPT_MAX || name.is_empty() {
            d.skipped
                .push((host.name.clone(), "host name longer than 64 bytes"));
            continue;
        }
        // The netboot answer shapes the boot fields: hosts share templates only if it agrees.
        let key = (
            subnet,
            host.profile.clone(),
            format!(
                "{:?} {:?}",
                host.options,
                server.inventory.boot_answer(host)
            ),
        );
        let next = groups.len() as u32;
        let group = *groups.entry(key).or_insert_with(|| {
            representatives.push((host.mac, ip, subnet));
            next
        });
        let net = server.dhcp.subnets[subnet].net;
        let mut hostname_opt = [0u8; 72];
        hostname_opt[0] = 12;
        hostname_opt[1] = name.len() as u8;
        hostname_opt[2..2 + name.len()].copy_from_slice(name);
        d.maps.hosts.insert(
            host.mac.0,
            HostEntry {
                ip: ip.octets(),
                net: net.network().octets(),
                mask: net.netmask().octets(),
                subnet: subnet as u32,
                group,
                hostname_len: (name.len() + 2) as u32,
                hostname_opt,
            },
        );
    }

    let mut bad_groups = Vec::new();
    'groups: for (group, (mac, ip, subnet)) in representatives.iter().enumerate() {
        for iface in ifaces {
            let ingress = ingress_of(iface);
            for (kind, kind_code) in [
                (MessageType::Discover, DHCPOFFER),
                (MessageType::Request, DHCPACK),
            ] {
                for &(class, arch) in VARIANTS {
                    if d.maps.templates.len() >= TEMPLATES_MAX_ENTRIES as usize {
                        warn!("XDP fast path: template map full; further hosts are served from userspace");
                        bad_groups.extend(group as u32..representatives.len() as u32);
                        break 'groups;
                    }
                    let req = variant_request(*mac, kind, class, arch, iface.server_ip, *ip);
                    let Some(reply) = server.reservation_reply(&req, &ingress, *subnet, now) else {
                        continue;
                    };
                    let Ok(out) = encode_reply(&reply.msg) else {
                        bad_groups.push(group as u32);
                        continue 'groups;
                    };
                    match cut(&out) {
                        Ok(mut t) => {
                            if let Some(e) = d.ifaces.get(&iface.ifindex) {
                                t.iface = *e;
                            }
                            d.maps.templates.push((
                                TemplateKey {
                                    ifindex: iface.ifindex,
                                    group: group as u32,
                                    arch,
                                    kind: kind_code,
                                    class,
                                },
                                t,
                            ))
                        }
                        Err(why) => {
                            let why = why.to_string();
                            debug!(group, why = why.as_str(), "no template");
                            bad_groups.push(group as u32);
                            continue 'groups;
                        }
                    }
                }
            }
        }
    }
    if !bad_groups.is_empty() {
        d.maps
            .templates
            .retain(|(k, _)| !bad_groups.contains(&k.group));
        let hosts = std::mem::take(&mut d.maps.hosts);
        for (mac, h) in hosts {
            if bad_groups.contains(&h.group) {
                let name = server
                    .inventory
                    .host_by_mac(&Mac(mac))
                    .map(|h| h.name.clone())
                    .unwrap_or_default();
                d.skipped.push((name, "reply does not fit a template"));
            } else {
                d.maps.hosts.insert(mac, h);
            }
        }
    }
    d
}

fn ingress_of(iface: &FabricIface) -> Ingress<'_> {
    Ingress {
        iface: &iface.name,
        server_ip: iface.server_ip,
        port: SERVER_PORT,
        peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::boot::BootSettings, services::dhcp::testkit};

    fn server(inventory: &str) -> Server {
        let dhcp = testkit::dhcp("10.0.0.0/24", "fabric0", "10.0.0.100-10.0.0.110");
        let inventory = testkit::inventory(inventory);
        Server::new(dhcp, BootSettings::defaults(), inventory, &[], 0)
    }

    fn fabric() -> Vec<FabricIface> {
        vec![FabricIface {
            name: "fabric0".into(),
            ifindex: 7,
            server_ip: Ipv4Addr::new(10, 0, 0, 1),
            mac: [2, 0, 0, 0, 0, 1],
        }]
    }

    #[test]
    fn cut_leaves_holes_for_the_host_name_and_the_uuid() {
        let mut reply = vec![0u8; BOOTP_HEADER_LEN];
        reply[0] = 2;
        reply.extend_from_slice(&[1, 4, 255, 255, 255, 0]); // subnet mask
        reply.extend_from_slice(&[12, 2, b'h', b'1']); // host name: cut out
        reply.extend_from_slice(&[51, 4, 0, 0, 0x0e, 0x10]); // lease time 3600 s
        reply.extend_from_slice(&[53, 1, 2]);
        reply.extend_from_slice(&[60, 3, b'P', b'X', b'E']);
        reply.extend_from_slice(&[255, 0, 0]);
        let t = cut(&reply).expect("template");
        assert_eq!(t.header[0], 2);
        assert_eq!(
            &t.opts[..t.opts_len as usize],
            &[1, 4, 255, 255, 255, 0, 51, 4, 0, 0, 0x0e, 0x10, 53, 1, 2, 60, 3, b'P', b'X', b'E']
        );
        assert_eq!(t.lease_secs, 3600, "the kernel learns the lease it grants");
        assert_eq!(t.hostname_at, 6);
        // No option above 97: option 97 goes last.
        assert_eq!(t.uuid_at, t.opts_len);

        let mut with_82 = reply[..BOOTP_HEADER_LEN].to_vec();
        with_82.extend_from_slice(&[53, 1, 2, 82, 2, 1, 0, 255]);
        assert_eq!(
            cut(&with_82).err(),
            Some(CutError::PerRequest),
            "per-request options never go in a template"
        );
        // Option 1 whole, then nothing: no end option.
        assert_eq!(
            cut(&reply[..BOOTP_HEADER_LEN + 6]).err(),
            Some(CutError::NoEnd)
        );
        // Option 1 cut inside its value.
        assert_eq!(
            cut(&reply[..BOOTP_HEADER_LEN + 3]).err(),
            Some(CutError::Truncated)
        );
    }

    #[test]
    fn relays_become_trie_prefixes_and_unset_trusts_every_source() {
        // Unset: userspace trusts a giaddr from anyone, so the kernel must answer it too.
        assert_eq!(relay_prefixes(None), Some(BTreeSet::from([(0, [0; 4])])));
        // `[]`: no relay at all, so no relayed request is the kernel's to answer.
        assert_eq!(relay_prefixes(Some(&[])), Some(BTreeSet::new()));
        let nets: Vec<Ipv4Net> = ["10.77.0.254/32", "10.90.0.5/29", "10.90.0.0/29"]
            .iter()
            .map(|n| n.parse().expect("net"))
            .collect();
        assert_eq!(
            relay_prefixes(Some(&nets)),
            Some(BTreeSet::from([
                (32, [10, 77, 0, 254]),
                (29, [10, 90, 0, 0])
            ])),
            "host bits cleared, duplicates merged"
        );
        let many: Vec<Ipv4Net> = (0..=RELAYS_MAX_ENTRIES)
            .map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i), 32).expect("net"))
            .collect();
        assert_eq!(
            relay_prefixes(Some(&many[..RELAYS_MAX_ENTRIES as usize])).map(|s| s.len()),
            Some(RELAYS_MAX_ENTRIES as usize)
        );
        assert_eq!(
            relay_prefixes(Some(&many)),
            None,
            "a list the trie cannot hold leaves relayed requests to userspace"
        );
        // derive() takes the server's current guards (a reload replaces them).
        let mut s = server("");
        assert_eq!(
            derive(&s, &fabric(), 0).maps.relays,
            BTreeSet::from([(0, [0; 4])])
        );
        let mut guards = s.dhcp.guards.clone();
        guards.relays = Some(nets);
        s.set_guards(guards.clone());
        assert_eq!(derive(&s, &fabric(), 0).maps.relays.len(), 2);
        guards.relays = Some(many);
        s.set_guards(guards);
        let d = derive(&s, &fabric(), 0);
        assert!(d.maps.relays.is_empty() && d.relays_overflow);
    }

    #[test]
    fn a_reservation_waiting_for_another_clients_lease_stays_out_of_the_kernel() {
        use crate::services::dhcp::journal::{LeaseRecord, LeaseState};
        let inv = "[profiles.a]\n[[hosts]]\nname = 'h1'\nmac = '52:54:00:00:00:01'\nip = '10.0.0.11'\nprofile = 'a'\n";
        let dhcp = testkit::dhcp("10.0.0.0/24", "fabric0", "10.0.0.100-10.0.0.110");
        let held = LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 11),
            mac: Mac([0x52, 0x54, 0, 0, 0, 9]),
            state: LeaseState::Bound,
            expires: 600,
            hostname: None,
        };
        let s = Server::new(
            dhcp,
            BootSettings::defaults(),
            testkit::inventory(inv),
            &[held],
            0,
        );
        let d = derive(&s, &fabric(), 100);
        assert!(d.maps.hosts.is_empty() && d.maps.templates.is_empty());
        assert_eq!(
            d.skipped,
            vec![(
                "h1".to_owned(),
                "reservation waits for the previous holder's lease"
            )]
        );
        let d = derive(&s, &fabric(), 600);
        assert!(d.skipped.is_empty());
        assert_eq!(d.maps.hosts[&[0x52, 0x54, 0, 0, 0, 1]].ip, [10, 0, 0, 11]);
        assert_eq!(d.maps.templates.len(), 2 * VARIANTS.len());
    }

    #[test]
    fn the_netboot_answer_has_its_own_templates() {
        let mut inv = testkit::inventory(
            "[profiles.a]\n[[hosts]]\nname = 'allow'\nmac = '52:54:00:00:00:01'\nip = '10.0.0.11'\nprofile = 'a'\n\
             [[hosts]]\nname = 'deny'\nmac = '52:54:00:00:00:02'\nip = '10.0.0.12'\nprofile = 'a'\nnetboot = 'deny'\n\
             [[hosts]]\nname = 'once'\nmac = '52:54:00:00:00:03'\nip = '10.0.0.13'\nprofile = 'a'\nnetboot = 'once'\n",
        );
        let dhcp = || testkit::dhcp("10.0.0.0/24", "fabric0", "10.0.0.100-10.0.0.110");
        let s = Server::new(dhcp(), BootSettings::defaults(), inv.clone(), &[], 0);
        let d = derive(&s, &fabric(), 0);
        let group = |d: &Derived, n: u8| d.maps.hosts[&[0x52, 0x54, 0, 0, 0, n]].group;
        assert_ne!(
            group(&d, 1),
            group(&d, 2),
            "deny answers without boot fields"
        );
        assert_eq!(group(&d, 1), group(&d, 3), "once, not yet used, boots");
        // Every template is the server's own reply: a denied host's PXE OFFER has no file.
        let pxe = d
            .maps
            .templates
            .iter()
            .find(|(k, _)| k.group == group(&d, 2) && k.class == CLASS_PXE && k.kind == DHCPOFFER)
            .map(|(_, t)| t)
            .expect("template");
        assert!(pxe.header[108..236].iter().all(|b| *b == 0), "no file name");
        assert_eq!(&pxe.header[20..24], &[0; 4], "no siaddr");
        inv.set_consumed("once", true);
        let s = Server::new(dhcp(), BootSettings::defaults(), inv, &[], 0);
        let d = derive(&s, &fabric(), 0);
        assert_ne!(
            group(&d, 1),
            group(&d, 3),
            "used once: no URL for HTTP boot"
        );
    }

    #[test]
    fn hosts_share_templates_unless_their_replies_differ() {
        let s = server(
            r#"
[profiles.a]
[profiles.b]
[[hosts]]
name = "h1"
mac = "52:54:00:00:00:01"
ip = "10.0.0.11"
profile = "a"
[[hosts]]
name = "h2"
mac = "52:54:00:00:00:02"
ip = "10.0.0.12"
profile = "a"
[[hosts]]
name = "h3"
mac = "52:54:00:00:00:03"
ip = "10.0.0.13"
profile = "b"
[[hosts]]
name = "h4"
mac = "52:54:00:00:00:04"
ip = "10.0.0.14"
profile = "a"
options = { lease_time = 60 }
[[hosts]]
name = "far"
mac = "52:54:00:00:00:05"
ip = "192.168.9.9"
profile = "a"
[[hosts]]
name = "dynamic"
mac = "52:54:00:00:00:06"
profile = "a"
"#,
        );
        let d = derive(&s, &fabric(), 0);
        let group = |n: u8| d.maps.hosts[&[0x52, 0x54, 0, 0, 0, n]].group;
        assert_eq!(group(1), group(2), "same profile and options");
        assert_ne!(group(1), group(3), "another profile");
        assert_ne!(group(1), group(4), "host-level options");
        assert_eq!(
            d.maps.hosts.len(),
            4,
            "no entry without a reservation in a subnet"
        );
        assert_eq!(
            d.skipped,
            vec![("far".to_owned(), "reservation outside every subnet")]
        );
        // Every group gets OFFER and ACK for each variant the policy answers.
        let groups = 3;
        assert_eq!(d.maps.templates.len(), groups * 2 * VARIANTS.len());
        assert!(d.maps.templates.iter().all(|(k, t)| k.ifindex == 7
            && t.iface.server_ip == [10, 0, 0, 1]
            && t.iface.subnet == 0
            && t.iface.mac == [2, 0, 0, 0, 0, 1]));
        let h1 = d.maps.hosts[&[0x52, 0x54, 0, 0, 0, 1]];
        assert_eq!(
            &h1.hostname_opt[..h1.hostname_len as usize],
            &[12, 2, b'h', b'1']
        );
        assert_eq!(h1.ip, [10, 0, 0, 11]);
        assert_eq!((h1.net, h1.mask), ([10, 0, 0, 0], [255, 255, 255, 0]));
        // Each template knows the lease its reply grants, host-level options included.
        let lease_of = |n: u8| {
            let g = group(n);
            let leases: Vec<u32> = d
                .maps
                .templates
                .iter()
                .filter(|(k, _)| k.group == g)
                .map(|(_, t)| t.lease_secs)
                .collect();
            assert!(leases.windows(2).all(|w| w[0] == w[1]), "{leases:?}");
            leases[0]
        };
        assert_eq!(lease_of(4), 60);
        assert_ne!(lease_of(1), 0);
    }
}
