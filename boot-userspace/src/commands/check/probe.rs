//! Checks that try things for real: attach XDP, log in to the BMCs, ask the segment for
//! DHCP offers.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use dhcproto::{
    v4::{DhcpOption, Flags, Message, MessageType, OptionCode},
    Decodable as _, Decoder, Encodable as _,
};
use prometheus::Registry;

use super::Item;
use crate::{
    config::{Config, DhcpMode, XdpModeSetting},
    redfish::{BmcConfig, Client, RedfishError},
    xdp::{AttachedMode, Dataplane},
};

/// The XDP program loads and attaches to every fabric interface, and in which mode. It is
/// detached again before the check ends.
pub fn xdp(config: &Config) -> Vec<Item> {
    if config.xdp_mode == XdpModeSetting::Off {
        return vec![Item::pass(
            "xdp",
            "off (xdp.mode = \"off\"): userspace only",
        )];
    }
    if config.interfaces.is_empty() {
        return vec![Item::warn(
            "xdp",
            "no fabric.interfaces to attach to: userspace only",
            "list the provisioning interfaces in fabric.interfaces",
        )];
    }
    if crate::xdp::embedded_object().is_none() {
        return vec![Item::warn(
            "xdp",
            "this binary has no eBPF object: the daemon will run userspace only",
            "build with `cargo xtask build`",
        )];
    }
    let fabric = crate::fabric::Fabric::resolve(&config.interfaces);
    let settings = crate::commands::serve::dataplane_settings(config);
    match Dataplane::start(fabric.ifaces(), &settings, &Registry::new()) {
        Err(e) => vec![Item::fail(
            "xdp",
            format!("cannot load or attach: {e}"),
            "run as root (CAP_BPF, CAP_NET_ADMIN) on kernel 5.18 or later; for a driver without native XDP set xdp.mode = \"generic\" or \"auto\"",
        )],
        Ok(dp) => dp
            .modes()
            .iter()
            .map(|(iface, mode)| {
                let subject = format!("xdp on {iface}");
                match mode {
                    AttachedMode::None => Item::warn(
                        subject,
                        "does not attach: DHCP and TFTP steering stay in userspace",
                        "is an XDP program already attached (bootfabric serving)? `ip link show` names it; otherwise check the kernel log",
                    ),
                    m => Item::pass(subject, format!("attaches in {} mode", m.as_str())),
                }
            })
            .collect(),
    }
}

/// The cluster's etcd answers (every member this fabric is given, a leader among them), and
/// what the cluster looks like from here: the fabrics registered now, and whether another
/// one already goes by this fabric's name.
pub fn cluster(config: &Config) -> Vec<Item> {
    let Some(c) = &config.cluster else {
        return Vec::new();
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return vec![Item::fail("cluster", e.to_string(), "see the error")],
    };
    let endpoints = c.endpoints.join(", ");
    runtime.block_on(async {
        let cluster = match crate::cluster::Cluster::connect(c).await {
            Ok(cl) => cl,
            Err(e) => {
                return vec![Item::fail(
                    "cluster.etcd",
                    e.to_string(),
                    "check cluster.ca_file, cert_file and key_file",
                )]
            }
        };
        let mut items = Vec::new();
        let status = match cluster.status().await {
            Ok(s) if s.leader == 0 => {
                items.push(Item::fail(
                    "cluster.etcd",
                    format!(
                        "{endpoints}: etcd {} answers but has no leader (quorum lost)",
                        s.version
                    ),
                    "bring a majority of the etcd members back",
                ));
                return items;
            }
            Ok(s) => s,
            Err(e) => {
                // A TLS refusal reaches the gRPC client as "transport error": ask a member
                // directly which file is at fault.
                if let Some(tls) = &c.tls {
                    for endpoint in &c.endpoints {
                        let fault = super::etcd_tls::diagnose(endpoint, tls, c.timeout).await;
                        if let Some(f) = fault {
                            let (detail, fix) = super::etcd_tls::describe(&f, tls);
                            items.push(Item::fail(
                                "cluster.etcd",
                                format!("{endpoint}: {detail}"),
                                fix,
                            ));
                            return items;
                        }
                    }
                }
                items.push(Item::fail(
                    "cluster.etcd",
                    format!("{endpoints}: {e}"),
                    "check that etcd runs and that this machine reaches its client port (2379)",
                ));
                return items;
            }
        };
        // A member's status names the leader it last heard from, which it keeps for an
        // election timeout after quorum is gone. Only a linearizable read proves a
        // majority answers now: the registered fabrics are that read. One dead member
        // can take a single request (the client has not yet marked it down), so a
        // transport failure is tried again before it counts.
        let mut fabrics = cluster.fabrics().await;
        for _ in 0..2 {
            match &fabrics {
                Err(crate::cluster::ClusterError::Etcd(_)) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    fabrics = cluster.fabrics().await;
                }
                _ => break,
            }
        }
        let fabrics = match fabrics {
            Ok(f) => {
                items.push(Item::pass(
                    "cluster.etcd",
                    format!(
                        "{endpoints}: etcd {}, {} member(s), leader {:x}",
                        status.version, status.members, status.leader
                    ),
                ));
                Ok(f)
            }
            Err(e @ crate::cluster::ClusterError::Record { .. }) => Err(e),
            Err(e) => {
                items.push(Item::fail(
                    "cluster.etcd",
                    format!(
                        "{endpoints}: etcd {} answers but a quorum read fails (quorum lost?): {e}",
                        status.version
                    ),
                    "bring a majority of the etcd members back",
                ));
                return items;
            }
        };
        match fabrics {
            Ok(fabrics) => {
                // A record under this name from another rack is another fabric (one
                // from this rack may be this machine's daemon, running).
                if let Some(other) = fabrics.iter().find(|f| f.name == c.name && f.rack != c.rack) {
                    items.push(Item::fail(
                        "cluster.name",
                        format!(
                            "{:?} is held by another live fabric (rack {}, version {}, started {}); this one is rack {}",
                            c.name, other.rack, other.version, other.started, c.rack
                        ),
                        "give each fabric its own cluster.name",
                    ));
                }
                let list: Vec<String> = fabrics
                    .iter()
                    .map(|f| format!("{} (rack {})", f.name, f.rack))
                    .collect();
                items.push(Item::pass(
                    "cluster",
                    format!(
                        "this fabric: {} (rack {}); registered: {}",
                        c.name,
                        c.rack,
                        if list.is_empty() {
                            "none".to_owned()
                        } else {
                            list.join(", ")
                        }
                    ),
                ));
            }
            Err(e) => items.push(Item::fail(
                "cluster",
                e.to_string(),
                "a record under cluster.prefix does not parse: another version, or written by hand",
            )),
        }
        items
    })
}

/// Every BMC answers Redfish with its configured credentials and offers the boot override
/// the scheduler will set.
pub fn bmcs(config: &Config) -> Vec<Item> {
    // One login per BMC and system, however many hosts name it.
    let mut bmcs: BTreeMap<(String, Option<String>), (Vec<String>, BmcConfig)> = BTreeMap::new();
    for h in config.inventory.hosts() {
        if let Some(b) = &h.bmc {
            bmcs.entry((b.url.clone(), b.system.clone()))
                .or_insert_with(|| (Vec::new(), b.clone()))
                .0
                .push(h.name.clone());
        }
    }
    if bmcs.is_empty() {
        return Vec::new();
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return vec![Item::fail("bmc", e.to_string(), "see the error")],
    };
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, ((url, _), (hosts, mut cfg))) in bmcs.into_iter().enumerate() {
            // A check should answer in seconds: two attempts per request.
            cfg.attempts = cfg.attempts.min(2);
            tasks.spawn(async move {
                let subject = format!("bmc {url} ({})", hosts.join(", "));
                (i, login(&cfg, subject).await)
            });
        }
        let mut items: Vec<(usize, Item)> = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(one) = r {
                items.push(one);
            }
        }
        items.sort_by_key(|(i, _)| *i);
        items.into_iter().map(|(_, item)| item).collect()
    })
}

async fn login(cfg: &BmcConfig, subject: String) -> Item {
    let result = async {
        let mut client = Client::connect(cfg).await?;
        let r = async {
            let path = client.the_system().await?;
            client.system(&path).await
        }
        .await;
        client.logout().await;
        r
    }
    .await;
    match result {
        Ok(sys) => {
            let target = cfg.boot.as_str();
            if !sys.boot_targets_allowed.is_empty()
                && !sys.boot_targets_allowed.iter().any(|t| t == target)
            {
                return Item::fail(
                    subject,
                    format!(
                        "{} offers boot override targets {:?}, not {target}",
                        sys.path, sys.boot_targets_allowed
                    ),
                    "set hosts[].bmc.boot to one it offers (pxe or uefi-http)",
                );
            }
            Item::pass(
                subject,
                format!(
                    "Redfish answers: {}{}, power {:?}",
                    sys.path,
                    sys.model
                        .as_deref()
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default(),
                    sys.power
                ),
            )
        }
        Err(e) => {
            let fix = match &e {
                RedfishError::Unauthorized(_) | RedfishError::Credentials(_) => {
                    "check hosts[].bmc.username and the password file or variable"
                }
                RedfishError::Tls(_) => {
                    "check hosts[].bmc.ca_file or fingerprint against the BMC's certificate"
                }
                RedfishError::Connect(_) | RedfishError::Timeout(_) => {
                    "check hosts[].bmc.url and that this machine can reach the BMC network"
                }
                _ => "name the system with hosts[].bmc.system, or check the BMC's Redfish service",
            };
            Item::fail(subject, e.to_string(), fix)
        }
    }
}

/// Sends a DHCPDISCOVER on each fabric interface and lists the servers that offer an
/// address, other than this machine. In server mode another one is a failure (two servers
/// on one segment hand out conflicting answers); in proxy mode one is required.
pub fn other_dhcp_servers(config: &Config, wait: Duration) -> Vec<Item> {
    let Some(dhcp) = &config.dhcp else {
        return Vec::new();
    };
    let ours: Vec<Ipv4Addr> = crate::fabric::Fabric::resolve(&config.interfaces)
        .ifaces()
        .iter()
        .filter_map(|i| i.ipv4)
        .collect();
    let mut items = Vec::new();
    for iface in &config.interfaces {
        let subject = format!("dhcp servers on {iface}");
        let offers = match discover(iface, wait) {
            Ok(o) => o,
            Err(e) => {
                items.push(Item::warn(
                    subject,
                    format!("could not probe: {e}"),
                    "run as root; the probe binds 68/udp on the interface",
                ));
                continue;
            }
        };
        let others: Vec<&(Ipv4Addr, Ipv4Addr)> =
            offers.iter().filter(|(s, _)| !ours.contains(s)).collect();
        let listed = others
            .iter()
            .map(|(server, offered)| format!("{server} (offered {offered})"))
            .collect::<Vec<_>>()
            .join(", ");
        let secs = wait.as_secs_f64();
        items.push(match (dhcp.mode, others.is_empty()) {
            (DhcpMode::Server, true) => Item::pass(
                subject,
                format!("no other DHCP server answered a DISCOVER within {secs:.0} s"),
            ),
            (DhcpMode::Server, false) => Item::fail(
                subject,
                format!("another DHCP server answers: {listed}"),
                "stop it or keep it off the provisioning segment; or let it hand out addresses and set dhcp.mode = \"proxy\"",
            ),
            (DhcpMode::Proxy, false) => Item::pass(
                subject,
                format!("addresses come from {listed}; bootfabric adds the boot answers (proxy mode)"),
            ),
            (DhcpMode::Proxy, true) => Item::fail(
                subject,
                format!("no DHCP server answered within {secs:.0} s: in proxy mode another server must hand out addresses"),
                "start the segment's DHCP server, or set dhcp.mode = \"server\" with subnets and pools",
            ),
        });
    }
    items
}

/// Broadcasts one DISCOVER from a made-up client on `iface`; returns (server id, offered
/// address) of every OFFER for it within `wait`.
fn discover(iface: &str, wait: Duration) -> std::io::Result<Vec<(Ipv4Addr, Ipv4Addr)>> {
    let sock = crate::services::dhcp::bind_on_device(iface, 68)?;
    // Unpredictable enough to tell our offers from a rerun's, no more is needed.
    let seed = crate::util::xorshift::XorShift::from_time().next_u64();
    let xid = (seed >> 16) as u32;
    // Locally administered, unicast: no reservation anywhere can name it.
    let mut mac = [0x02, 0x62, 0x66, 0, 0, 0];
    mac[3..].copy_from_slice(&seed.to_be_bytes()[5..]);
    let mut msg = Message::new_with_id(
        xid,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    msg.set_flags(Flags::default().set_broadcast());
    msg.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    let bytes = msg
        .to_vec()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    sock.send_to(&bytes, (Ipv4Addr::BROADCAST, 67))?;
    let deadline = Instant::now() + wait;
    let mut offers = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left))?;
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e),
        };
        let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        if reply.xid() != xid
            || reply.opts().msg_type() != Some(MessageType::Offer)
            || reply.chaddr().get(..6) != Some(&mac[..])
        {
            continue;
        }
        let server = match reply.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip,
            _ => match from.ip() {
                std::net::IpAddr::V4(ip) => ip,
                std::net::IpAddr::V6(_) => continue,
            },
        };
        offers.push((server, reply.yiaddr()));
    }
    Ok(offers)
}
