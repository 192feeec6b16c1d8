//! The DHCP service's shell: the bound sockets, the shared state behind them and the tasks
//! that serve them (one receive loop per socket, `recv.rs`; the fast path's events,
//! `fastpath.rs`), plus the lease commits every loop hands to the journal.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use prometheus::Registry;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    fastpath::{FastPathOwner, KernelAnswers},
    journal::{CommitBounds, Committer, Journal, JournalError, LeaseRecord},
    metrics::Metrics,
    ratelimit::RateLimiter,
    reload::Reloader,
    server::{Server, PXE_PORT, SERVER_PORT},
    unix_now, DhcpError,
};
use crate::{
    config::{DhcpConfig, DhcpMode},
    fabric::Iface,
    model::{boot::BootSettings, inventory::Inventory, ledger::Ledger},
};

/// A running DHCP service: bound sockets and shared state, ready for [`DhcpService::run`].
pub struct DhcpService {
    /// The bound sockets.
    pub(super) sockets: Vec<Listener>,
    pub(super) server: Arc<Mutex<Server>>,
    pub(super) committer: Committer,
    pub(super) limiter: Arc<Mutex<RateLimiter>>,
    pub(super) metrics: Metrics,
    pub(super) ledger: Ledger,
    pub(super) subnets: Vec<String>,
    /// The XDP fast path's maps, kept in step with `server`.
    pub(super) fast_path: Arc<Mutex<Option<FastPathOwner>>>,
    /// Where the fast path's events go, until `run` hands them to their reader.
    pub(super) fast_path_events: Mutex<Option<KernelAnswers>>,
    /// When a refused commit was last logged.
    last_refusal_log: Mutex<Option<Instant>>,
    /// Cluster mode: the leases shared in etcd (`None` standalone).
    pub(super) cluster: Option<crate::cluster::leases::Leases>,
}

/// A UDP socket on `port` of `iface` only (SO_BINDTODEVICE), with broadcast allowed and
/// address reuse (several sockets share the port, one per interface), blocking.
pub fn bind_on_device(iface: &str, port: u16) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.bind(&SocketAddr::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    Ok(s.into())
}

/// [`bind_on_device`] for the async service.
fn bind_socket(iface: &str, port: u16) -> std::io::Result<UdpSocket> {
    let s = bind_on_device(iface, port)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// What DHCP serves from besides its own section. `serve` takes each from where it is kept,
/// so the service reads no other section of the configuration.
pub struct Sources {
    /// Hosts and profiles.
    pub inventory: Inventory,
    /// Global `[boot]` settings.
    pub boot: BootSettings,
    /// The ledger (boot events).
    pub ledger: Ledger,
    /// The lease journal ([`super::journal_path`] of `daemon.state_dir`).
    pub journal: PathBuf,
    /// The config file, named in the repair command a damaged journal calls for.
    pub config_path: PathBuf,
}

/// The local ports the service binds, per role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// Where requests arrive ([`SERVER_PORT`]).
    pub server: u16,
    /// Where proxyDHCP boot-server requests arrive ([`PXE_PORT`]; proxy mode only).
    pub pxe: u16,
}

impl Ports {
    /// The ports of RFC 2131 and the PXE specification.
    pub const STANDARD: Self = Self {
        server: SERVER_PORT,
        pxe: PXE_PORT,
    };
}

/// A bound socket: (interface, its address, role (67, or 4011 for proxyDHCP), socket).
type Listener = (String, Ipv4Addr, u16, Arc<UdpSocket>);

/// One socket per interface of `ifaces` and role of `mode` (67, and 4011 in proxy mode),
/// each on the local port `ports` gives its role.
fn bind_all(ifaces: &[Iface], mode: DhcpMode, ports: Ports) -> Result<Vec<Listener>, DhcpError> {
    let mut sockets = Vec::new();
    for Iface {
        name: iface, ipv4, ..
    } in ifaces
    {
        let ip = ipv4.ok_or_else(|| DhcpError::NoAddress {
            iface: iface.clone(),
        })?;
        // (role, local port): the role is what the server decides by.
        let roles: &[(u16, u16)] = match mode {
            DhcpMode::Server => &[(SERVER_PORT, ports.server)],
            DhcpMode::Proxy => &[(SERVER_PORT, ports.server), (PXE_PORT, ports.pxe)],
        };
        for &(role, port) in roles {
            let sock = bind_socket(iface, port).map_err(|source| DhcpError::Socket {
                iface: iface.clone(),
                source,
            })?;
            let port = sock.local_addr().map_or(port, |a| a.port());
            info!(%iface, server_id = %ip, mode = ?mode, "DHCP server listening on {iface}:{port}");
            sockets.push((iface.clone(), ip, role, Arc::new(sock)));
        }
    }
    Ok(sockets)
}

impl DhcpService {
    /// Opens the journal, rebuilds the lease table and binds one socket per interface of
    /// `ifaces` (the fabric), on port 67 (and 4011 in proxy mode).
    pub fn start(
        dhcp: DhcpConfig,
        ifaces: &[Iface],
        sources: Sources,
        registry: &Registry,
    ) -> Result<Self, DhcpError> {
        Self::start_on(Ports::STANDARD, dhcp, ifaces, sources, registry)
    }

    /// [`DhcpService::start`] on other local ports: 0 (unit tests) binds a port the kernel
    /// picks. Requests are still handled by the role of the socket they arrive on.
    pub fn start_on(
        ports: Ports,
        dhcp: DhcpConfig,
        ifaces: &[Iface],
        sources: Sources,
        registry: &Registry,
    ) -> Result<Self, DhcpError> {
        let Sources {
            inventory,
            boot,
            ledger,
            journal: path,
            config_path,
        } = sources;
        let metrics = Metrics::register(registry)?;
        let (journal, live) = Journal::open(&path).map_err(|e| match e {
            JournalError::Corrupt { .. } => DhcpError::CorruptJournal {
                journal: e,
                config: config_path,
            },
            e => DhcpError::Journal(e),
        })?;
        let now = unix_now();
        let server = Server::new(dhcp, boot, inventory, &live, now);
        let active = server.table.active(now).len();
        info!(journal = %path.display(), records = live.len(), active, "lease journal replayed");
        let committer = Committer::start(
            journal,
            &live,
            Duration::from_millis(u64::from(server.dhcp.commit_delay_ms)),
            CommitBounds::from(&server.dhcp.guards),
        );
        let sockets = bind_all(ifaces, server.dhcp.mode, ports)?;
        let subnets = server
            .dhcp
            .subnets
            .iter()
            .map(|s| s.net.to_string())
            .collect();
        let limiter = Arc::new(Mutex::new(RateLimiter::new(server.dhcp.rate_limit)));
        let svc = Self {
            sockets,
            server: Arc::new(Mutex::new(server)),
            committer,
            limiter,
            metrics,
            ledger,
            subnets,
            fast_path: Arc::new(Mutex::new(None)),
            fast_path_events: Mutex::new(None),
            last_refusal_log: Mutex::new(None),
            cluster: None,
        };
        svc.refresh_gauges(now);
        Ok(svc)
    }

    /// Cluster mode: dynamic leases are claimed in etcd before they are ACKed, and what the
    /// other fabrics hold is mirrored into the table (see `shared.rs`).
    pub fn attach_cluster(&mut self, leases: crate::cluster::leases::Leases) {
        if let Ok(mut s) = self.server.lock() {
            s.table
                .prefer_from(super::shared::preference(leases.fabric()));
            s.share_leases();
        }
        self.cluster = Some(leases);
    }

    /// A handle that applies reloaded configurations while the service runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            server: Arc::clone(&self.server),
            fast_path: Arc::clone(&self.fast_path),
        }
    }

    fn refresh_gauges(&self, now: u64) {
        self.metrics
            .commits_in_flight
            .set(self.committer.in_flight() as i64);
        let Ok(mut s) = self.server.lock() else {
            return;
        };
        s.table.reclaim_expired(now);
        // A moved reservation whose previous holder's lease ran out (or was given back) goes
        // to the kernel's maps now; userspace already answers its owner with it.
        if let Ok(mut fp) = self.fast_path.lock() {
            match fp.as_mut().and_then(|fp| fp.resync_if_freed(&s, now)) {
                Some(Ok(r)) => info!(
                    hosts = r.written.hosts,
                    waiting = r.skipped,
                    "XDP DHCP fast path resynced: a waiting reservation was freed"
                ),
                Some(Err(e)) => warn!(error = %e, "XDP DHCP fast path resync failed"),
                None => {}
            }
        }
        for (i, name) in self.subnets.iter().enumerate() {
            let (used, size) = s.table.utilization(i);
            self.metrics
                .leases
                .with_label_values(&[name.as_str()])
                .set(used as i64);
            self.metrics
                .pool
                .with_label_values(&[name.as_str()])
                .set(size as i64);
        }
    }

    /// Serves until `cancel` fires, then flushes the journal.
    pub async fn run(self, cancel: CancellationToken) -> std::io::Result<()> {
        let events = self.fast_path_events.lock().ok().and_then(|mut e| e.take());
        let this = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(events) = events {
            let this = Arc::clone(&this);
            let cancel = cancel.clone();
            tasks.spawn(async move { this.fast_path_events(events, cancel).await });
        }
        let mirror = this.cluster.clone().map(|leases| {
            let this = Arc::clone(&this);
            tokio::spawn(this.follow_leases(leases, cancel.clone()))
        });
        for (iface, ip, port, sock) in this.sockets.clone() {
            let this = Arc::clone(&this);
            let cancel = cancel.clone();
            tasks.spawn(async move { this.receive_loop(iface, ip, port, sock, cancel).await });
        }
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => this.refresh_gauges(unix_now()),
                Some(res) = tasks.join_next() => {
                    // A receive loop ends only on a socket error or a bug (a panic): either
                    // way the service stops whole, so the supervisor can say so, rather than
                    // one interface going deaf.
                    let err = match res {
                        Ok(Ok(())) => continue,
                        Ok(Err(e)) => e,
                        Err(join) => std::io::Error::other(format!("DHCP receive loop failed: {join}")),
                    };
                    cancel.cancel();
                    return Err(err);
                }
            }
        }
        while tasks.join_next().await.is_some() {}
        if let Some(m) = mirror {
            let _ = m.await;
        }
        Ok(())
    }

    /// Makes `record` durable: whether it is, or another fabric holds its address, or it
    /// could not be made durable (counted).
    pub(super) async fn commit(&self, record: LeaseRecord) -> Committed {
        if let Some(leases) = &self.cluster {
            // The address must be ours cluster-wide before the journal (this fabric's crash
            // record) and the ACK.
            let shared = self.share(leases, &record).await;
            if shared != Committed::Durable {
                return shared;
            }
        }
        let t0 = Instant::now();
        let result = self.committer.commit(record).await;
        self.metrics
            .commits_in_flight
            .set(self.committer.in_flight() as i64);
        let refused = match result {
            Ok(()) => {
                self.metrics.commit.observe(t0.elapsed().as_secs_f64());
                return Committed::Durable;
            }
            Err(JournalError::QueueFull(_)) => "queue_full",
            Err(JournalError::Timeout(_)) => "timeout",
            Err(e) => {
                self.metrics.commit_errors.inc();
                warn!(error = %e, "lease record not durable: reply withheld");
                return Committed::Failed;
            }
        };
        self.metrics
            .commit_refused
            .with_label_values(&[refused])
            .inc();
        // Storage lags: this can happen for every request, so it is said once in a while.
        let due = self.last_refusal_log.lock().is_ok_and(|mut last| {
            let due = last.is_none_or(|t| t.elapsed() > Duration::from_secs(10));
            if due {
                *last = Some(Instant::now());
            }
            due
        });
        if due {
            warn!(
                reason = refused,
                in_flight = self.committer.in_flight(),
                "lease journal is not keeping up (a hung disk?): ACKs withheld, clients will retry"
            );
        }
        Committed::Failed
    }

    pub(super) async fn send(&self, sock: &UdpSocket, out: &[u8], dest: SocketAddrV4) {
        if let Err(e) = sock.send_to(out, SocketAddr::V4(dest)).await {
            warn!(%dest, error = %e, "sending a DHCP reply failed");
        }
    }
}

/// What became of a lease record to commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Committed {
    /// Ours (cluster-wide in cluster mode) and in the journal: the reply may go.
    Durable,
    /// Another fabric holds the address (cluster mode): the client is NAKed.
    Lost,
    /// Not made durable (storage or etcd failing): no reply, the client retries.
    Failed,
}

#[cfg(test)]
mod tests {
    use dhcproto::{
        v4::{DhcpOption, Message, MessageType},
        Encodable, Encoder,
    };

    use super::*;
    use crate::{
        model::{inventory::Mac, ledger::EventKind},
        services::dhcp::testkit,
    };

    /// The value of counter `name` with `labels`, 0 when it has no such series.
    fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    #[tokio::test]
    async fn a_discover_over_udp_on_loopback_is_answered_without_root() {
        let testkit::Started {
            service,
            ledger,
            registry,
            dir: _dir,
        } = testkit::start(
            testkit::dhcp("127.0.0.0/8", "lo", "127.0.0.100-127.0.0.110"),
            testkit::inventory(""),
            &[crate::fabric::loopback()],
        );
        let port = service.sockets[0].3.local_addr().expect("bound").port();
        assert_ne!(port, 0);
        let cancel = CancellationToken::new();
        let run = tokio::spawn(service.run(cancel.clone()));

        let mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let mut discover = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        discover
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        let mut bytes = Vec::new();
        discover
            .encode(&mut Encoder::new(&mut bytes))
            .expect("encode");
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client socket");
        let server = ("127.0.0.1", port);
        // A malformed datagram first: the loop drops it and goes on.
        client.send_to(&[1, 1, 6], server).await.expect("send");
        client.send_to(&bytes, server).await.expect("send");

        // The OFFER goes to 255.255.255.255:68, where only root may listen: what a test
        // without root sees is the ledger entry the loop writes once it has been sent.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let events = loop {
            let events = ledger.timeline(mac);
            if !events.is_empty() || tokio::time::Instant::now() > deadline {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, EventKind::DhcpOffer);
        assert_eq!(events[0].ip, Some(Ipv4Addr::new(127, 0, 0, 100).into()));
        let packets = "bootfabric_dhcp_packets_total";
        let labels = [("type", "discover"), ("outcome", "offer")];
        assert_eq!(counter(&registry, packets, &labels), 1);
        let dropped = [("reason", "truncated")];
        assert_eq!(
            counter(&registry, "bootfabric_dhcp_dropped_total", &dropped),
            1
        );

        cancel.cancel();
        run.await.expect("join").expect("a clean stop");
    }
}
