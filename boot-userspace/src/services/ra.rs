//! Router advertisements that end IPv6 autoconfiguration at once on IPv4-only provisioning
//! networks.
//!
//! iPXE configures an interface with every configurator it has, DHCPv4 and IPv6 router
//! discovery alike, and only goes on (to fetch its script) when all of them are done. On a
//! segment without an IPv6 router its router solicitations go unanswered and it waits for
//! them to time out: about 13 s per iPXE start, twice per UEFI-PXE boot. An RFC 4861 router
//! advertisement with router lifetime 0 (not a default router), no prefix and the M and O
//! flags clear says exactly "there is no IPv6 configuration here": iPXE's IPv6 configurator
//! completes when it arrives, and any host keeps no route and no address from it.
//!
//! RFC 4861 §6.2.6 is followed: answers are delayed 0-500 ms at random, unicast to a
//! soliciting link-local address, otherwise multicast at most once per 3 s. In `auto` mode an
//! interface where another router advertises is left alone from then on: that router answers.

use std::{
    collections::HashSet,
    mem::MaybeUninit,
    net::{Ipv6Addr, SocketAddrV6},
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus::{IntCounterVec, Opts, Registry};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{io::unix::AsyncFd, sync::Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::fabric::Iface;

mod link;

/// ICMPv6 type of a router solicitation.
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a router advertisement.
pub const ROUTER_ADVERTISEMENT: u8 = 134;
/// RFC 4861 MAX_RA_DELAY_TIME.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// Answers waiting out their random delay at once, per interface.
const MAX_PENDING: usize = 256;
/// RFC 4861 MIN_DELAY_BETWEEN_RAS, for multicast answers.
const MIN_MULTICAST_GAP: Duration = Duration::from_secs(3);

/// A link whose addresses the fabric's DHCPv6 server hands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Managed {
    /// The on-link prefix (`dhcp6.subnets[].cidr`).
    pub prefix: ipnet::Ipv6Net,
}

/// The advertisement: hop limit unspecified, router lifetime 0 (never a default router),
/// reachable time and retransmission timer unspecified, and the source link-layer address
/// option. Without `managed`, M=0 and O=0: "no IPv6 configuration here". With it, M=1 and
/// O=1 (addresses and options from DHCPv6) and a prefix information option with L=1, A=0:
/// the prefix is on-link (a DHCPv6 address is a /128, so without it a client could reach
/// the server only through a router) and no address is formed from it by SLAAC. The kernel
/// (or `link::packet`) fills in the checksum.
pub fn advertisement(mac: [u8; 6], managed: Option<Managed>) -> Vec<u8> {
    let mut ra = vec![0u8; 24];
    ra[0] = ROUTER_ADVERTISEMENT;
    // Bytes 1-15 stay 0 (code, checksum, hop limit, lifetime, reachable, retrans) but the flags.
    ra[16] = 1; // source link-layer address
    ra[17] = 1; // length in units of 8 bytes
    ra[18..24].copy_from_slice(&mac);
    if let Some(m) = managed {
        ra[5] = 0x80 | 0x40; // M, O
        let mut pio = [0u8; 32];
        pio[0] = 3; // prefix information
        pio[1] = 4; // 32 bytes
        pio[2] = m.prefix.prefix_len();
        pio[3] = 0x80; // L=1, A=0
                       // Infinite: the fabric answers solicitations and sends no periodic advertisement,
                       // and a client solicits only when its link comes up, so a finite on-link lifetime
                       // would lapse under a running OS and cut it off from the server's address.
        pio[4..12].copy_from_slice(&[0xff; 8]);
        pio[16..32].copy_from_slice(&m.prefix.network().octets());
        ra.extend_from_slice(&pio);
    }
    ra
}

/// The ICMPv6 type of a well-formed router discovery message in `msg` (code 0, long enough).
pub fn router_message(msg: &[u8]) -> Option<u8> {
    match (msg.first(), msg.get(1)) {
        (Some(&t @ ROUTER_SOLICITATION), Some(0)) if msg.len() >= 8 => Some(t),
        (Some(&t @ ROUTER_ADVERTISEMENT), Some(0)) if msg.len() >= 16 => Some(t),
        _ => None,
    }
}

#[derive(Clone)]
struct Metrics {
    solicitations: IntCounterVec,
    sent: IntCounterVec,
    foreign: IntCounterVec,
}

impl Metrics {
    fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            solicitations: IntCounterVec::new(
                Opts::new(
                    "bootfabric_ra_solicitations_total",
                    "IPv6 router solicitations received.",
                ),
                &["iface"],
            )?,
            sent: IntCounterVec::new(
                Opts::new(
                    "bootfabric_ra_sent_total",
                    "Router advertisements sent (lifetime 0, no prefix, M=0, O=0).",
                ),
                &["iface"],
            )?,
            foreign: IntCounterVec::new(
                Opts::new(
                    "bootfabric_ra_foreign_total",
                    "Router advertisements seen from another router (this interface is then left to it).",
                ),
                &["iface"],
            )?,
        };
        r.register(Box::new(m.solicitations.clone()))?;
        r.register(Box::new(m.sent.clone()))?;
        r.register(Box::new(m.foreign.clone()))?;
        Ok(m)
    }
}

/// Why the responder did not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RaError {
    /// A metric could not be registered (its name is taken in the registry).
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
    /// Waiting on an interface's socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An interface's task ended without returning (it panicked).
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
}

/// One interface's responder: its socket and what the advertisement says.
struct Responder {
    name: String,
    index: u32,
    mac: [u8; 6],
    sock: AsyncFd<Socket>,
    /// The kernel has no IPv6 here: `sock` is a packet socket and answers are whole IPv6
    /// packets from this (EUI-64 link-local) address.
    link: Option<Ipv6Addr>,
    /// The DHCPv6 server hands out this link's addresses.
    managed: Option<Managed>,
}

/// A solicitation's answer: where to, and (on the packet path) to which Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Answer {
    to: Ipv6Addr,
    mac: [u8; 6],
}

/// The responder on the fabric interfaces.
pub struct RaService {
    ifaces: Vec<Arc<Responder>>,
    metrics: Metrics,
}

fn open(name: &str, index: u32) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(name.as_bytes()))?;
    s.join_multicast_v6(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), index)?;
    s.set_multicast_if_v6(index)?;
    // RFC 4861: router discovery messages carry hop limit 255, proof they were not routed.
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_multicast_loop_v6(false)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The index and MAC to advertise `iface` with, and whether the kernel's IPv6 is there to
/// answer through (a link-local address); `None` for an interface that does not exist or
/// has no MAC.
fn advertisable(iface: &Iface) -> Option<(u32, [u8; 6], bool)> {
    match (iface.index, iface.mac) {
        (Some(index), Some(mac)) => Some((index, mac, iface.ipv6_link_local)),
        _ => None,
    }
}

impl RaService {
    /// Opens the responder on each of `interfaces` (the fabric): through the kernel's IPv6
    /// where the interface has a link-local address, else on a packet socket (IPv6 disabled
    /// there: iPXE still solicits); `None` when no interface could be opened.
    /// Links in `managed` (by interface name) advertise the DHCPv6 server.
    pub fn start(
        interfaces: &[Iface],
        managed: &std::collections::HashMap<String, Managed>,
        registry: &Registry,
    ) -> Result<Option<Self>, RaError> {
        let metrics = Metrics::register(registry)?;
        let mut ifaces = Vec::new();
        for fabric in interfaces {
            let name = &fabric.name;
            let Some((index, mac, kernel)) = advertisable(fabric) else {
                info!(iface = %name, "{name} has no MAC address: no router advertisements there");
                continue;
            };
            let link = (!kernel).then(|| link::link_local(mac));
            let opened = match link {
                None => open(name, index),
                Some(from) => {
                    info!(iface = %name, "no IPv6 on {name} in the kernel: answering router solicitations from a packet socket as {from}");
                    link::open(index)
                }
            };
            let registered = opened.and_then(|s| {
                // SAFETY: the socket owns its fd, which stays open and the same until the
                // AsyncFd (and the socket inside it) is dropped.
                // A refusal hands the socket back with the cause; the socket is dropped.
                unsafe { AsyncFd::register(s) }.map_err(|e| e.into_parts().1)
            });
            match registered {
                Ok(sock) => ifaces.push(Arc::new(Responder {
                    name: name.clone(),
                    index,
                    mac,
                    sock,
                    link,
                    managed: managed.get(name).copied(),
                })),
                Err(e) => warn!(iface = %name, "router advertisements off on {name}: {e}"),
            }
        }
        Ok((!ifaces.is_empty()).then_some(Self { ifaces, metrics }))
    }

    /// Answers solicitations until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), RaError> {
        let mut tasks = tokio::task::JoinSet::new();
        for iface in self.ifaces {
            let metrics = self.metrics.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move { serve(iface, metrics, cancel).await });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok(())
    }
}

async fn serve(
    iface: Arc<Responder>,
    metrics: Metrics,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let labels = [iface.name.as_str()];
    metrics.sent.with_label_values(&labels).inc_by(0);
    metrics.foreign.with_label_values(&labels).inc_by(0);
    match iface.managed {
        None => {
            info!(iface = %iface.name, "answering IPv6 router solicitations on {} (no IPv6 configuration here)", iface.name)
        }
        Some(m) => {
            info!(iface = %iface.name, prefix = %m.prefix, "answering IPv6 router solicitations on {}: addresses from DHCPv6, {} on-link", iface.name, m.prefix)
        }
    }
    let last_multicast: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut yielded = false;
    let mut rng = crate::util::xorshift::XorShift::from_time();
    let pending: Arc<Mutex<HashSet<Answer>>> = Arc::default();
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    let mut frame = [0u8; 1500];
    loop {
        let mut guard = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            g = iface.sock.readable() => g?,
        };
        // The sender, the message's type, and the sender's MAC where the frame shows it.
        let got = match iface.link {
            None => guard.try_io(|s| s.get_ref().recv_from(&mut buf)).map(|r| {
                r.map(|(n, from)| {
                    // SAFETY: recv_from initialised the first `n` bytes.
                    let msg: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    from.as_socket_ipv6()
                        .zip(router_message(&msg))
                        .map(|(src, kind)| (*src.ip(), kind, None))
                })
            }),
            Some(me) => guard
                .try_io(|s| link::recv(s.get_ref(), iface.index, &mut frame))
                .map(|r| {
                    r.map(|got| {
                        got.and_then(|(n, mac)| {
                            link::parse(&frame[..n], me).map(|m| (m.src, m.kind, Some(mac)))
                        })
                    })
                }),
        };
        let (src, kind, src_mac) = match got {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                debug!(iface = %iface.name, error = %e, "ICMPv6 receive failed");
                continue;
            }
            Err(_would_block) => continue,
        };
        match kind {
            // RFC 4861 section 6.1.2: a router advertises from its link-local address.
            ROUTER_ADVERTISEMENT if src.is_unicast_link_local() => {
                metrics.foreign.with_label_values(&labels).inc();
                if !yielded {
                    yielded = true;
                    warn!(iface = %iface.name, router = %src, "another IPv6 router advertises on {}: leaving router discovery to it", iface.name);
                }
            }
            ROUTER_SOLICITATION if !yielded => {
                metrics.solicitations.with_label_values(&labels).inc();
                let delay = MAX_DELAY.mul_f64(rng.unit());
                let unicast = src.is_unicast_link_local();
                let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
                let answer = match (unicast, src_mac) {
                    (true, Some(mac)) => Answer { to: src, mac },
                    (true, None) => Answer {
                        to: src,
                        mac: [0; 6],
                    },
                    (false, _) => Answer {
                        to: all_nodes,
                        mac: link::multicast_mac(all_nodes),
                    },
                };
                let (to, unicast) = (answer.to, unicast);
                {
                    let mut pending = pending.lock().await;
                    // Sources are the sender's to choose: a flood of made-up ones waits in
                    // at most MAX_PENDING answers, the rest are dropped.
                    if pending.len() >= MAX_PENDING || !pending.insert(answer) {
                        continue; // full, or an answer to it is already on its way
                    }
                }
                let iface = Arc::clone(&iface);
                let metrics = metrics.clone();
                let pending = Arc::clone(&pending);
                let last_multicast = Arc::clone(&last_multicast);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if !unicast {
                        let mut last = last_multicast.lock().await;
                        if let Some(t) = *last {
                            let since = t.elapsed();
                            if since < MIN_MULTICAST_GAP {
                                tokio::time::sleep(MIN_MULTICAST_GAP - since).await;
                            }
                        }
                        *last = Some(Instant::now());
                    }
                    let ra = advertisement(iface.mac, iface.managed);
                    let sent = match iface.link {
                        None => {
                            let dest = SockAddr::from(SocketAddrV6::new(to, 0, 0, iface.index));
                            iface.sock.get_ref().send_to(&ra, &dest).map(drop)
                        }
                        Some(from) => link::send(
                            iface.sock.get_ref(),
                            iface.index,
                            answer.mac,
                            &link::packet(from, to, &ra),
                        ),
                    };
                    match sent {
                        Ok(()) => metrics.sent.with_label_values(&[iface.name.as_str()]).inc(),
                        Err(e) => {
                            debug!(iface = %iface.name, error = %e, "router advertisement not sent")
                        }
                    }
                    pending.lock().await.remove(&answer);
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertisement_offers_nothing() {
        let ra = advertisement([0x52, 0x54, 0, 1, 2, 3], None);
        assert_eq!(ra[0], ROUTER_ADVERTISEMENT);
        assert_eq!(
            &ra[1..16],
            &[0u8; 15],
            "code, checksum, hop limit, M/O, lifetime 0, timers"
        );
        assert_eq!(&ra[16..18], &[1, 1], "source link-layer address option");
        assert_eq!(&ra[18..], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(router_message(&ra), Some(ROUTER_ADVERTISEMENT));
    }

    #[test]
    fn a_managed_link_is_advertised_with_m_o_and_its_on_link_prefix() {
        let m = Managed {
            prefix: "2001:db8:77::/64".parse().expect("prefix"),
        };
        let ra = advertisement([0x52, 0x54, 0, 1, 2, 3], Some(m));
        assert_eq!(ra.len(), 56);
        assert_eq!(ra[5], 0xc0, "M and O");
        assert_eq!(&ra[6..8], &[0, 0], "still not a default router");
        let pio = &ra[24..];
        assert_eq!(
            &pio[..4],
            &[3, 4, 64, 0x80],
            "prefix information, on-link, no SLAAC"
        );
        assert_eq!(&pio[4..12], &[0xff; 8], "on-link for good");
        assert_eq!(&pio[16..], &m.prefix.network().octets());
    }

    #[test]
    fn interfaces_without_a_mac_get_no_responder_and_no_ipv6_means_the_packet_path() {
        let iface = |index: Option<u32>, ipv6_link_local: bool, mac: Option<[u8; 6]>| Iface {
            name: "fab0".to_owned(),
            index,
            ipv4: None,
            mac,
            ipv6_link_local,
            ipv6: None,
        };
        let mac = Some([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            advertisable(&iface(Some(3), true, mac)),
            Some((3, [2, 0, 0, 0, 0, 1], true))
        );
        assert_eq!(
            advertisable(&iface(Some(3), false, mac)),
            Some((3, [2, 0, 0, 0, 0, 1], false)),
            "no link-local: the packet path"
        );
        assert_eq!(advertisable(&iface(Some(3), true, None)), None, "no MAC");
        assert_eq!(
            advertisable(&iface(None, true, mac)),
            None,
            "no such interface"
        );
        // And start opens nothing for them.
        let registry = Registry::new();
        let none = [iface(None, false, mac), iface(Some(3), true, None)];
        let started =
            RaService::start(&none, &Default::default(), &registry).expect("metrics register");
        assert!(started.is_none());
    }

    #[test]
    fn only_well_formed_router_messages_count() {
        assert_eq!(
            router_message(&[133, 0, 0, 0, 0, 0, 0, 0]),
            Some(ROUTER_SOLICITATION)
        );
        assert_eq!(
            router_message(&[133, 1, 0, 0, 0, 0, 0, 0]),
            None,
            "code must be 0"
        );
        assert_eq!(router_message(&[133, 0, 0]), None, "too short");
        assert_eq!(
            router_message(&[134, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "too short for an RA"
        );
        assert_eq!(
            router_message(&[128, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "echo request"
        );
    }
}
