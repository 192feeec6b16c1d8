//! The DHCPv6 service's shell: one UDP socket on port 547 per fabric interface (joined to
//! All_DHCP_Relay_Agents_and_Servers, ff02::1:2), the binding journal, and the receive loop
//! that decodes, limits, decides under the server's lock, makes bindings durable and only
//! then replies.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use ipnet::Ipv6Net;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Dhcp6Config;
use crate::fabric::Iface;
use crate::model::{
    inventory::Mac,
    ledger::{EventKind, Ledger},
    snapshot::Live,
};
use crate::services::dhcp::{
    journal::{CommitBounds, Committer, Journal, JournalError},
    ratelimit::RateLimiter,
    unix_now,
};
use crate::util::logs::EXCHANGE_LOG;

use super::{
    server::{client_mac, kind_label, Link, Server6},
    table::Lease6Record,
    wire,
};

/// The DHCPv6 server port.
pub const SERVER_PORT: u16 = 547;
/// The DHCPv6 client port.
pub const CLIENT_PORT: u16 = 546;
/// All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// Messages being answered at once (waiting for their bindings' fsync, mostly); beyond it a
/// flood's packets are dropped at once instead of queueing tasks without bound.
const MAX_IN_FLIGHT: usize = 1024;
/// File name of the DHCPv6 binding journal inside the state folder.
pub const JOURNAL_FILE: &str = "leases6.journal";

/// The DHCPv6 journal's place under `state_dir`.
pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join(JOURNAL_FILE)
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum Dhcp6Error {
    /// The journal could not be opened.
    #[error("DHCPv6 lease journal: {0}")]
    Journal(#[from] JournalError),
    /// A socket could not be opened.
    #[error("dhcp6: binding [::]:{port} on {iface}: {error}")]
    Bind {
        /// The interface.
        iface: String,
        /// The port.
        port: u16,
        /// The OS error.
        error: std::io::Error,
    },
    /// A subnet's interface has no address to name in boot URLs.
    #[error("dhcp6.subnets[{subnet}].interface: {iface} has no IPv6 address beyond its link-local one (the server's address in boot file URLs); add one in {net}")]
    NoAddress {
        /// The subnet's index.
        subnet: usize,
        /// The interface.
        iface: String,
        /// The subnet.
        net: Ipv6Net,
    },
    /// No fabric interface has a MAC to form the server's DUID from.
    #[error("dhcp6: no fabric interface has a MAC address to form the server's DUID")]
    NoDuid,
    /// Metrics could not be registered.
    #[error("dhcp6 metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

#[derive(Clone)]
struct Metrics {
    received: IntCounterVec,
    sent: IntCounterVec,
    dropped: IntCounterVec,
    leases: IntGauge,
}

impl Metrics {
    fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            received: IntCounterVec::new(
                Opts::new(
                    "bootfabric_dhcp6_received_total",
                    "DHCPv6 client messages received, by type.",
                ),
                &["type"],
            )?,
            sent: IntCounterVec::new(
                Opts::new(
                    "bootfabric_dhcp6_sent_total",
                    "DHCPv6 answers sent, by type (advertise, reply).",
                ),
                &["type"],
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "bootfabric_dhcp6_dropped_total",
                    "DHCPv6 packets dropped, by reason.",
                ),
                &["reason"],
            )?,
            leases: IntGauge::new(
                "bootfabric_dhcp6_leases",
                "DHCPv6 addresses held (advertised, bound or declined).",
            )?,
        };
        r.register(Box::new(m.received.clone()))?;
        r.register(Box::new(m.sent.clone()))?;
        r.register(Box::new(m.dropped.clone()))?;
        r.register(Box::new(m.leases.clone()))?;
        Ok(m)
    }
}

/// What the DHCPv6 service serves from besides its section.
pub struct Sources6 {
    /// The configuration in effect (inventory, boot settings).
    pub live: Arc<Live>,
    /// The boot timelines.
    pub ledger: Ledger,
    /// The binding journal's path.
    pub journal: PathBuf,
}

/// One interface's socket.
struct Port {
    name: String,
    index: u32,
    /// The server's address on this link: boot URLs name it.
    server: Option<Ipv6Addr>,
    /// The subnet on-link here.
    subnet: Option<usize>,
    sock: Arc<UdpSocket>,
}

struct Shared {
    server: Mutex<Server6>,
    limiter: Mutex<RateLimiter<Vec<u8>>>,
    /// The same rate per MAC the message claims: DUIDs are free to invent, so a flood for
    /// one inventory host (its MAC in a DUID-LL, its EUI-64 link-local) would otherwise push
    /// its real events out of its timeline.
    mac_limiter: Mutex<RateLimiter<Mac>>,
    relays: Option<Vec<Ipv6Net>>,
    /// `dhcp6.subnets[].cidr`, in order: a relayed message's link is looked up here, not
    /// under the server's lock.
    prefixes: Vec<Ipv6Net>,
    committer: Committer<Lease6Record>,
    live: Arc<Live>,
    ledger: Ledger,
    metrics: Metrics,
    /// For relayed links: the first interface address, reachable through the relays.
    routed_server: Option<Ipv6Addr>,
    started: Instant,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// The DHCPv6 service.
pub struct Dhcp6Service {
    ports: Vec<Port>,
    shared: Arc<Shared>,
}

fn bind(iface: &str, index: u32) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.bind(&SocketAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, SERVER_PORT, 0, 0)).into())?;
    s.join_multicast_v6(&ALL_SERVERS, index)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

impl Dhcp6Service {
    /// Opens the journal and a socket on each fabric interface.
    pub fn start(
        config: Dhcp6Config,
        interfaces: &[Iface],
        sources: Sources6,
        registry: &Registry,
    ) -> Result<Self, Dhcp6Error> {
        for (i, s) in config.subnets.iter().enumerate() {
            if let Some(name) = &s.interface {
                let has = interfaces
                    .iter()
                    .any(|f| &f.name == name && f.ipv6.is_some());
                if !has {
                    return Err(Dhcp6Error::NoAddress {
                        subnet: i,
                        iface: name.clone(),
                        net: s.net,
                    });
                }
            }
        }
        let mac = interfaces
            .iter()
            .find_map(|f| f.mac)
            .ok_or(Dhcp6Error::NoDuid)?;
        let metrics = Metrics::register(registry)?;
        let (journal, live) = Journal::<Lease6Record>::open(&sources.journal)?;
        info!(journal = %sources.journal.display(), records = live.len(), "DHCPv6 lease journal opened");
        let bounds = CommitBounds::default();
        let committer = Committer::start(
            journal,
            &live,
            std::time::Duration::from_millis(u64::from(config.commit_delay_ms)),
            bounds,
        );
        let mut ports = Vec::new();
        for f in interfaces {
            let Some(index) = f.index else { continue };
            if !f.ipv6_link_local && config.subnet_on(&f.name).is_none() {
                // IPv6 off on this interface (`disable_ipv6`): nothing on it can speak
                // DHCPv6 to us, and no prefix of ours is on it.
                info!(iface = %f.name, "no IPv6 on {}: no DHCPv6 there", f.name);
                continue;
            }
            let sock = bind(&f.name, index).map_err(|error| Dhcp6Error::Bind {
                iface: f.name.clone(),
                port: SERVER_PORT,
                error,
            })?;
            ports.push(Port {
                name: f.name.clone(),
                index,
                server: f.ipv6,
                subnet: config.subnet_on(&f.name),
                sock: Arc::new(sock),
            });
        }
        let routed_server = interfaces.iter().find_map(|f| f.ipv6);
        let server = Server6::new(
            config.clone(),
            Server6::duid_ll(mac),
            &live,
            sources.live.load(),
        );
        metrics.leases.set(server.table().len() as i64);
        Ok(Self {
            ports,
            shared: Arc::new(Shared {
                server: Mutex::new(server),
                limiter: Mutex::new(RateLimiter::new(config.rate_limit)),
                mac_limiter: Mutex::new(RateLimiter::new(config.rate_limit)),
                relays: config.relays.clone(),
                prefixes: config.subnets.iter().map(|s| s.net).collect(),
                committer,
                live: sources.live,
                ledger: sources.ledger,
                metrics,
                routed_server,
                started: Instant::now(),
                in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            }),
        })
    }

    /// Serves until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> std::io::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for port in self.ports {
            info!(iface = %port.name, "DHCPv6 server on {} (port {SERVER_PORT})", port.name);
            let shared = Arc::clone(&self.shared);
            let cancel = cancel.clone();
            tasks.spawn(async move { serve(port, shared, cancel).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(std::io::Error::other)??;
        }
        self.shared.committer.clone().shutdown();
        Ok(())
    }
}

async fn serve(port: Port, shared: Arc<Shared>, cancel: CancellationToken) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = port.sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    debug!(iface = %port.name, error = %e, "DHCPv6 receive failed");
                    continue;
                }
            },
        };
        let SocketAddr::V6(from) = from else { continue };
        // Each message is answered in its own task: a Reply waits for its binding's fsync,
        // and the next client must not wait behind it.
        let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
            shared
                .metrics
                .dropped
                .with_label_values(&["overloaded"])
                .inc();
            continue;
        };
        let packet = buf[..n].to_vec();
        let (shared, sock) = (Arc::clone(&shared), Arc::clone(&port.sock));
        let (index, server, subnet) = (port.index, port.server, port.subnet);
        let iface = port.name.clone();
        tokio::spawn(async move {
            let here = Here {
                index,
                iface: &iface,
                server,
                subnet,
            };
            if let Err(reason) = answer(&shared, &sock, here, &packet, from).await {
                shared.metrics.dropped.with_label_values(&[reason]).inc();
            }
            drop(permit);
        });
    }
}

/// The interface a packet arrived on, as [`answer`] needs it.
struct Here<'a> {
    index: u32,
    iface: &'a str,
    /// The server's address there.
    server: Option<Ipv6Addr>,
    /// The subnet there.
    subnet: Option<usize>,
}

/// Handles one packet; `Err` is the reason it was dropped.
async fn answer(
    shared: &Shared,
    sock: &UdpSocket,
    here: Here<'_>,
    packet: &[u8],
    from: SocketAddrV6,
) -> Result<(), &'static str> {
    let Here {
        index,
        iface,
        server: iface_server,
        subnet: iface_subnet,
    } = here;
    let d = wire::decode(packet).map_err(|e| e.as_label())?;
    shared
        .metrics
        .received
        .with_label_values(&[kind_label(d.msg.kind)])
        .inc();
    let relayed = !d.relays.is_empty();
    if relayed {
        if let Some(trusted) = &shared.relays {
            if !trusted.iter().any(|n| n.contains(from.ip())) {
                return Err("untrusted_relay");
            }
        }
    } else if !from.ip().is_unicast_link_local() {
        // RFC 8415 §14: a client on the link sends from its link-local address.
        return Err("not_link_local");
    }
    // By DUID; a message without one (an Information-request may omit it) by its sender.
    let key = match d.msg.client_id {
        Some(id) => id.to_vec(),
        None => from.ip().octets().to_vec(),
    };
    let now_ms = shared.started.elapsed().as_millis() as u64;
    if !shared
        .limiter
        .lock()
        .map_err(|_| "poisoned")?
        .allow(key, now_ms)
    {
        return Err("rate_limited");
    }
    let snap = shared.live.load();
    let (subnet, server) = if let Some(link) = d.client_link() {
        (
            shared
                .prefixes
                .iter()
                .position(|p| p.contains(&link))
                .ok_or("unknown_link")?,
            shared.routed_server.ok_or("no_server_address")?,
        )
    } else {
        (
            iface_subnet.ok_or("no_subnet_here")?,
            iface_server.ok_or("no_server_address")?,
        )
    };
    let mac = client_mac(&d, *from.ip());
    if let Some(m) = mac {
        if !shared
            .mac_limiter
            .lock()
            .map_err(|_| "poisoned")?
            .allow(m, now_ms)
        {
            return Err("rate_limited");
        }
    }
    let now = unix_now();
    let handled = {
        let mut s = shared.server.lock().map_err(|_| "poisoned")?;
        let h = s.handle(snap, &d, mac, Link { subnet, server }, now);
        shared.metrics.leases.set(s.table().len() as i64);
        h
    };
    let out = handled?;
    // The Reply promises the bindings: they are on disk first (one group commit for all).
    if let Err(e) = shared.committer.commit_all(out.commits.clone()).await {
        warn!(error = %e, "DHCPv6 binding not durable: no Reply");
        return Err("journal");
    }
    let kind = if out.kind == "advertise" {
        EventKind::DhcpOffer
    } else {
        EventKind::DhcpAck
    };
    for g in &out.granted {
        shared
            .ledger
            .record(g.mac, kind.clone(), Some(IpAddr::V6(g.ip)));
    }
    for r in out
        .commits
        .iter()
        .filter(|r| r.state != crate::services::dhcp::journal::LeaseState::Bound)
    {
        if let Some(mac) = r.mac {
            let k = if r.state == crate::services::dhcp::journal::LeaseState::Declined {
                EventKind::DhcpDecline
            } else {
                EventKind::DhcpRelease
            };
            shared.ledger.record(mac, k, Some(IpAddr::V6(r.ip)));
        }
    }
    let (bytes, to) = if relayed {
        (
            wire::relay_replies(&d.relays, out.reply),
            SocketAddrV6::new(*from.ip(), SERVER_PORT, 0, 0),
        )
    } else {
        (
            out.reply,
            SocketAddrV6::new(*from.ip(), CLIENT_PORT, 0, index),
        )
    };
    sock.send_to(&bytes, to).await.map_err(|e| {
        debug!(error = %e, %to, "DHCPv6 send failed");
        "send_failed"
    })?;
    shared.metrics.sent.with_label_values(&[out.kind]).inc();
    let file = out.boot.as_ref().and_then(|b| b.file.as_deref());
    for g in &out.granted {
        info!(
            target: EXCHANGE_LOG,
            proto = "dhcp6",
            reply = out.kind,
            mac = %g.mac,
            ip = %g.ip,
            xid = %format_args!("{:#08x}", u32::from_be_bytes([0, d.msg.xid[0], d.msg.xid[1], d.msg.xid[2]])),
            iface,
            path = if relayed { "relayed" } else { "direct" },
            file,
            "DHCPv6 {} to {}",
            out.kind,
            g.mac
        );
    }
    Ok(())
}
