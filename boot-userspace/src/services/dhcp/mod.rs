//! The DHCPv4 server (RFC 2131, 2132; PXE per RFC 4578; relay agent information per
//! RFC 3046).
//!
//! - [`wire`]: checks and decodes requests, refusing malformed ones with a reason;
//! - [`policy`]: which boot file, script or URL a client gets (pure);
//! - [`table`]: leases, offers and free pools in memory;
//! - [`server`]: the RFC 2131 decisions over the table (pure);
//! - [`journal`]: the durable lease journal with group commit;
//! - [`ratelimit`]: per-client token buckets;
//! - this module: sockets, the receive loop and metrics.
//!
//! An ACK leaves only after its lease record is fsync'd: the socket loop hands the record
//! to the journal's group committer and sends the reply when it is durable.

pub mod journal;
pub mod policy;
pub mod ratelimit;
pub mod server;
pub mod table;
pub mod wire;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use dhcproto::{v4::MessageType, Encodable, Encoder};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::{Config, DhcpMode},
    model::inventory::Mac,
    model::ledger::{EventKind, Ledger},
    xdp::fastpath::{FastPath, FastPathError, FastPathEvent, SyncReport},
};
use aya::maps::{MapData, RingBuf};
use journal::{CommitBounds, Committer, Journal, JournalError, LeaseRecord, LeaseState};
use ratelimit::RateLimiter;
use server::{Handled, Ingress, Server, PXE_PORT, SERVER_PORT};

use tokio::io::{unix::AsyncFd, Interest};
use wire::DropReason;

/// How often the XDP fast path's events are drained when the program has not asked for it.
const EVENT_POLL: Duration = Duration::from_millis(100);

/// File name of the lease journal inside `daemon.state_dir`.
pub const JOURNAL_FILE: &str = "leases.journal";

/// Errors starting the DHCP service.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The lease journal could not be opened.
    #[error("lease journal: {0}")]
    Journal(#[from] journal::JournalError),
    /// The lease journal has a damaged line: the daemon does not start on it.
    #[error(
        "lease journal: {journal}\n  with this config: bootfabric leases repair --config {config}"
    )]
    CorruptJournal {
        /// Where and what (not a `source`: the message says it all already).
        journal: journal::JournalError,
        /// The config file, for the repair command.
        config: PathBuf,
    },
    /// An interface has no IPv4 address to serve from.
    #[error(
        "interface {iface:?} has no IPv4 address: the DHCP server needs one as its identifier"
    )]
    NoAddress {
        /// Interface name.
        iface: String,
    },
    /// A socket could not be set up.
    #[error("DHCP socket on {iface}: {source}")]
    Socket {
        /// Interface name.
        iface: String,
        /// Why.
        source: std::io::Error,
    },
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Path of the lease journal for `config`.
pub fn journal_path(config: &Config) -> PathBuf {
    config.state_dir.join(JOURNAL_FILE)
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The ledger event for a reply sent to a client, by userspace or by the kernel's fast path:
/// the one place a DHCP message type becomes a boot step.
fn sent_event(kind: MessageType) -> EventKind {
    match kind {
        MessageType::Offer => EventKind::DhcpOffer,
        MessageType::Nak => EventKind::DhcpNak,
        _ => EventKind::DhcpAck,
    }
}

/// The ledger event for a lease the client gave back.
fn returned_event(state: LeaseState) -> EventKind {
    if state == LeaseState::Declined {
        EventKind::DhcpDecline
    } else {
        EventKind::DhcpRelease
    }
}

/// The first IPv4 address of `iface`.
pub fn iface_ipv4(iface: &str) -> Option<Ipv4Addr> {
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != iface {
            return None;
        }
        a.address?.as_sockaddr_in().map(|s| s.ip())
    })
}

/// The server's metrics, defined in one place.
#[derive(Clone)]
struct Metrics {
    packets: IntCounterVec,
    dropped: IntCounterVec,
    decision: Histogram,
    commit: Histogram,
    leases: IntGaugeVec,
    pool: IntGaugeVec,
    exhausted: IntCounterVec,
    commit_errors: prometheus::IntCounter,
    commit_refused: IntCounterVec,
    commits_in_flight: prometheus::IntGauge,
}

impl Metrics {
    fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let packets = IntCounterVec::new(
            Opts::new(
                "bootfabric_dhcp_packets_total",
                "DHCP requests handled, by message type and outcome.",
            ),
            &["type", "outcome"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "bootfabric_dhcp_dropped_total",
                "DHCP packets dropped without an answer, by reason.",
            ),
            &["reason"],
        )?;
        let decision = Histogram::with_opts(
            HistogramOpts::new(
                "bootfabric_dhcp_decision_seconds",
                "Time to decide the answer to a request.",
            )
            .buckets(vec![1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2]),
        )?;
        let commit = Histogram::with_opts(
            HistogramOpts::new(
                "bootfabric_dhcp_lease_commit_seconds",
                "Time from decision to a durable lease record.",
            )
            .buckets(vec![1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5]),
        )?;
        let leases = IntGaugeVec::new(
            Opts::new(
                "bootfabric_dhcp_leases_active",
                "Addresses in use (bound, offered or quarantined) per subnet.",
            ),
            &["subnet"],
        )?;
        let pool = IntGaugeVec::new(
            Opts::new("bootfabric_dhcp_pool_size", "Dynamic addresses per subnet."),
            &["subnet"],
        )?;
        let exhausted = IntCounterVec::new(
            Opts::new(
                "bootfabric_dhcp_pool_exhausted_total",
                "DISCOVERs that found no free address, per subnet.",
            ),
            &["subnet"],
        )?;
        let commit_errors = prometheus::IntCounter::new(
            "bootfabric_dhcp_lease_commit_errors_total",
            "Lease records that could not be made durable (their ACKs were not sent).",
        )?;
        r.register(Box::new(packets.clone()))?;
        r.register(Box::new(dropped.clone()))?;
        r.register(Box::new(decision.clone()))?;
        r.register(Box::new(commit.clone()))?;
        r.register(Box::new(leases.clone()))?;
        r.register(Box::new(pool.clone()))?;
        r.register(Box::new(exhausted.clone()))?;
        let commit_refused = IntCounterVec::new(
            Opts::new(
                "bootfabric_dhcp_commit_refused_total",
                "Lease commits given up while storage lagged (their ACKs were not sent), by reason: queue_full (dhcp.commit_queue records in flight already) or timeout (not durable within dhcp.commit_timeout_ms).",
            ),
            &["reason"],
        )?;
        r.register(Box::new(commit_errors.clone()))?;
        let commits_in_flight = prometheus::IntGauge::new(
            "bootfabric_dhcp_commits_in_flight",
            "Lease records queued for or being written to the journal (at most dhcp.commit_queue).",
        )?;
        r.register(Box::new(commit_refused.clone()))?;
        r.register(Box::new(commits_in_flight.clone()))?;
        Ok(Self {
            packets,
            dropped,
            decision,
            commit,
            leases,
            pool,
            exhausted,
            commit_errors,
            commit_refused,
            commits_in_flight,
        })
    }
}

fn type_label(t: Option<MessageType>) -> &'static str {
    match t {
        Some(MessageType::Discover) => "discover",
        Some(MessageType::Request) => "request",
        Some(MessageType::Decline) => "decline",
        Some(MessageType::Release) => "release",
        Some(MessageType::Inform) => "inform",
        _ => "other",
    }
}

fn reply_label(t: MessageType) -> &'static str {
    match t {
        MessageType::Offer => "offer",
        MessageType::Ack => "ack",
        MessageType::Nak => "nak",
        _ => "other",
    }
}

/// A running DHCP service: bound sockets and shared state, ready for [`DhcpService::run`].
pub struct DhcpService {
    /// (interface, its address, local port, socket).
    sockets: Vec<(String, Ipv4Addr, u16, Arc<UdpSocket>)>,
    server: Arc<Mutex<Server>>,
    committer: Committer,
    limiter: Arc<Mutex<RateLimiter>>,
    metrics: Metrics,
    ledger: Ledger,
    subnets: Vec<String>,
    /// The XDP fast path's maps, kept in step with `server`.
    fast_path: Arc<Mutex<Option<FastPath>>>,
    /// When a refused commit was last logged.
    last_refusal_log: Mutex<Option<Instant>>,
}

/// Applies reloaded configurations to a running DHCP service.
#[derive(Clone)]
pub struct Reloader {
    server: Arc<Mutex<Server>>,
    fast_path: Arc<Mutex<Option<FastPath>>>,
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

impl DhcpService {
    /// Opens the journal, rebuilds the lease table and binds one socket per interface.
    pub fn start(
        config: &Config,
        dhcp: crate::config::DhcpConfig,
        registry: &Registry,
        ledger: Ledger,
    ) -> Result<Self, DhcpError> {
        let metrics = Metrics::register(registry)?;
        let path = journal_path(config);
        let (journal, live) = Journal::open(&path).map_err(|e| match e {
            JournalError::Corrupt { .. } => DhcpError::CorruptJournal {
                journal: e,
                config: config.path.clone(),
            },
            e => DhcpError::Journal(e),
        })?;
        let now = unix_now();
        let server = Server::new(
            dhcp,
            config.boot.clone(),
            config.inventory.clone(),
            &live,
            now,
        );
        let active = server.table.active(now).len();
        info!(journal = %path.display(), records = live.len(), active, "lease journal replayed");
        let committer = Committer::start(
            journal,
            &live,
            Duration::from_millis(u64::from(server.dhcp.commit_delay_ms)),
            CommitBounds::from(&server.dhcp.guards),
        );
        let mut sockets = Vec::new();
        for iface in &config.interfaces {
            let ip = iface_ipv4(iface).ok_or_else(|| DhcpError::NoAddress {
                iface: iface.clone(),
            })?;
            let ports: &[u16] = match server.dhcp.mode {
                DhcpMode::Server => &[SERVER_PORT],
                DhcpMode::Proxy => &[SERVER_PORT, PXE_PORT],
            };
            for &port in ports {
                let sock = bind_socket(iface, port).map_err(|source| DhcpError::Socket {
                    iface: iface.clone(),
                    source,
                })?;
                info!(%iface, server_id = %ip, mode = ?server.dhcp.mode, "DHCP server listening on {iface}:{port}");
                sockets.push((iface.clone(), ip, port, Arc::new(sock)));
            }
        }
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
            last_refusal_log: Mutex::new(None),
        };
        svc.refresh_gauges(now);
        Ok(svc)
    }

    /// Hands the service the XDP fast path: its maps are filled from this server's
    /// configuration now and on every reload, and its events feed the lease table and the
    /// ledger while the service runs.
    pub fn attach_fast_path(&self, mut fp: FastPath) -> Result<SyncReport, FastPathError> {
        let report = {
            let server = self.server.lock().map_err(|_| FastPathError::Poisoned)?;
            fp.sync(&server)?
        };
        info!(
            hosts = report.hosts,
            templates = report.templates,
            userspace_only = report.skipped,
            "XDP DHCP fast path: {} reserved hosts answered in the kernel",
            report.hosts
        );
        if let Ok(mut slot) = self.fast_path.lock() {
            *slot = Some(fp);
        }
        Ok(report)
    }

    /// A handle that applies reloaded configurations while the service runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            server: Arc::clone(&self.server),
            fast_path: Arc::clone(&self.fast_path),
        }
    }

    /// Records exchanges the kernel answered, as if this service had answered them: one
    /// lock of the lease table and one hand-over to the journal per batch.
    fn on_fast_path(&self, events: &[FastPathEvent]) {
        let now = unix_now();
        let records: Vec<LeaseRecord> = {
            let Ok(mut server) = self.server.lock() else {
                return;
            };
            events
                .iter()
                .filter_map(|ev| {
                    if repeats_live_lease(&server.table, ev, now) {
                        return None;
                    }
                    server.record_fast_path(ev.mac, ev.ip, ev.kind, now)
                })
                .collect()
        };
        for ev in events {
            self.ledger.record(ev.mac, sent_event(ev.kind), Some(ev.ip));
        }
        // The ACKs have left already; their records follow within a second (one fdatasync
        // for a whole storm's worth). A reservation is its own durable truth meanwhile.
        if !records.is_empty() {
            match self.committer.record(records) {
                Ok(()) => {}
                Err(JournalError::QueueFull(_)) => self
                    .metrics
                    .commit_refused
                    .with_label_values(&["queue_full"])
                    .inc(),
                Err(_) => self.metrics.commit_errors.inc(),
            }
        }
    }

    /// Reads the fast path's events until `cancel` fires. The program wakes this task only
    /// when a quarter of the ring is full; otherwise it drains every [`EVENT_POLL`], so a
    /// storm costs a wake-up per batch, not per packet.
    async fn fast_path_events(
        self: Arc<Self>,
        ring: RingBuf<MapData>,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        // SAFETY: the ring buffer owns its map fd, which stays open and the same until the
        // AsyncFd (and the ring inside it) is dropped.
        let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut tick = tokio::time::interval(EVENT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            let drain = |ring: &mut RingBuf<MapData>, batch: &mut Vec<FastPathEvent>| {
                while let Some(item) = ring.next() {
                    match FastPathEvent::decode(&item) {
                        Some(ev) => batch.push(ev),
                        None => debug!(len = item.len(), "unreadable fast path event"),
                    }
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => {
                    drain(fd.get_mut(), &mut batch);
                    self.on_fast_path(&batch);
                    return Ok(());
                }
                g = fd.readable_mut() => {
                    let mut guard = g?;
                    drain(guard.get_inner_mut(), &mut batch);
                    guard.clear_ready();
                }
                _ = tick.tick() => drain(fd.get_mut(), &mut batch),
            }
            if !batch.is_empty() {
                self.on_fast_path(&batch);
                batch.clear();
            }
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
        let events = self
            .fast_path
            .lock()
            .ok()
            .and_then(|mut f| f.as_mut().and_then(FastPath::take_events));
        let this = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(ring) = events {
            let this = Arc::clone(&this);
            let cancel = cancel.clone();
            tasks.spawn(async move { this.fast_path_events(ring, cancel).await });
        }
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
        Ok(())
    }

    async fn receive_loop(
        self: Arc<Self>,
        iface: String,
        server_ip: Ipv4Addr,
        port: u16,
        sock: Arc<UdpSocket>,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 2048];
        let started = Instant::now();
        let mut last_exhausted_log: HashMap<usize, Instant> = HashMap::new();
        loop {
            let (n, peer) = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = sock.recv_from(&mut buf) => r?,
            };
            let msg = match wire::decode_request(&buf[..n]) {
                Ok(m) => m,
                Err(reason) => {
                    self.metrics
                        .dropped
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    debug!(%peer, reason = reason.as_str(), "dropped DHCP packet");
                    continue;
                }
            };
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&msg.chaddr()[..6]);
            let mac = Mac(mac);
            let now_ms = started.elapsed().as_millis() as u64;
            let allowed = self
                .limiter
                .lock()
                .map(|mut l| l.allow(mac, now_ms))
                .unwrap_or(false);
            if !allowed {
                self.metrics
                    .dropped
                    .with_label_values(&[DropReason::RateLimited.as_str()])
                    .inc();
                continue;
            }
            let kind = type_label(msg.opts().msg_type());
            let t0 = Instant::now();
            let peer = match peer {
                SocketAddr::V4(v4) => v4,
                SocketAddr::V6(_) => continue,
            };
            let ingress = Ingress {
                iface: &iface,
                server_ip,
                port,
                peer,
            };
            let (handled, subnet) = {
                let Ok(mut server) = self.server.lock() else {
                    return Err(std::io::Error::other("DHCP state lock poisoned"));
                };
                let subnet = server.subnet_for(&msg, &ingress);
                let handled = server.handle(&msg, &ingress, unix_now());
                // O(1): keep the gauge exact without waiting for the periodic sweep.
                if let Some((i, name)) = subnet.and_then(|i| Some((i, self.subnets.get(i)?))) {
                    let (used, _) = server.table.utilization(i);
                    self.metrics
                        .leases
                        .with_label_values(&[name.as_str()])
                        .set(used as i64);
                }
                (handled, subnet)
            };
            self.metrics.decision.observe(t0.elapsed().as_secs_f64());
            match handled {
                Handled::Drop(reason) => {
                    self.metrics
                        .dropped
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    if reason == DropReason::PoolExhausted {
                        let i = subnet.unwrap_or(0);
                        let name = self.subnets.get(i).map(String::as_str).unwrap_or("?");
                        self.metrics.exhausted.with_label_values(&[name]).inc();
                        let due = last_exhausted_log
                            .get(&i)
                            .is_none_or(|t| t.elapsed() > Duration::from_secs(10));
                        if due {
                            warn!(
                                subnet = name,
                                "DHCP pool exhausted: DISCOVER from {mac} not answered"
                            );
                            last_exhausted_log.insert(i, Instant::now());
                        }
                    }
                }
                Handled::Silent(why) => {
                    self.metrics
                        .packets
                        .with_label_values(&[kind, "silent"])
                        .inc();
                    debug!(%mac, why, "no reply");
                }
                Handled::Commit(record) => {
                    self.metrics
                        .packets
                        .with_label_values(&[kind, "committed"])
                        .inc();
                    self.ledger
                        .record(mac, returned_event(record.state), Some(record.ip));
                    let this = Arc::clone(&self);
                    tokio::spawn(async move { this.commit(record).await });
                }
                Handled::Reply(reply) => {
                    let reply = *reply;
                    let out = match encode_reply(&reply.msg) {
                        Ok(out) => out,
                        Err(e) => {
                            warn!(%mac, error = %e, "encoding a DHCP reply failed");
                            continue;
                        }
                    };
                    let label = reply_label(reply.kind);
                    let event = sent_event(reply.kind);
                    let ip = Some(reply.msg.yiaddr()).filter(|ip| !ip.is_unspecified());
                    match reply.commit {
                        None => {
                            self.send(&sock, &out, reply.dest).await;
                            self.metrics.packets.with_label_values(&[kind, label]).inc();
                            self.ledger.record(mac, event, ip);
                        }
                        Some(record) => {
                            let this = Arc::clone(&self);
                            let sock = Arc::clone(&sock);
                            tokio::spawn(async move {
                                if this.commit(record).await {
                                    this.send(&sock, &out, reply.dest).await;
                                    this.metrics.packets.with_label_values(&[kind, label]).inc();
                                    this.ledger.record(mac, event, ip);
                                }
                            });
                        }
                    }
                }
            }
        }
    }

    /// Makes `record` durable; false (and counted) if it could not be.
    async fn commit(&self, record: LeaseRecord) -> bool {
        let t0 = Instant::now();
        let result = self.committer.commit(record).await;
        self.metrics
            .commits_in_flight
            .set(self.committer.in_flight() as i64);
        let refused = match result {
            Ok(()) => {
                self.metrics.commit.observe(t0.elapsed().as_secs_f64());
                return true;
            }
            Err(JournalError::QueueFull(_)) => "queue_full",
            Err(JournalError::Timeout(_)) => "timeout",
            Err(e) => {
                self.metrics.commit_errors.inc();
                warn!(error = %e, "lease record not durable: reply withheld");
                return false;
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
        false
    }

    async fn send(&self, sock: &UdpSocket, out: &[u8], dest: SocketAddrV4) {
        if let Err(e) = sock.send_to(out, SocketAddr::V4(dest)).await {
            warn!(%dest, error = %e, "sending a DHCP reply failed");
        }
    }
}

impl Reloader {
    /// Applies a reloaded configuration: hosts, profiles, boot settings and options. The
    /// subnets and pools stay as they are (they shape the lease table; a restart changes
    /// them). The fast path's maps follow.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let Some(dhcp) = &config.dhcp else {
            return Err("the reloaded config has no [dhcp]; restart to remove the server".into());
        };
        let mut server = self
            .server
            .lock()
            .map_err(|_| "DHCP state lock poisoned".to_owned())?;
        if server
            .dhcp
            .subnets
            .iter()
            .map(|s| s.net)
            .ne(dhcp.subnets.iter().map(|s| s.net))
            || server.dhcp.mode != dhcp.mode
        {
            return Err("dhcp.subnets or dhcp.mode changed: restart to apply".into());
        }
        server.inventory = config.inventory.clone();
        server.boot = config.boot.clone();
        server.dhcp.options = dhcp.options.clone();
        // Relays and DECLINE limits apply at once; the commit bounds at the next start.
        server.set_guards(dhcp.guards.clone());
        for (mine, new) in server.dhcp.subnets.iter_mut().zip(&dhcp.subnets) {
            mine.options = new.options.clone();
        }
        server.table.set_reservations(&config.inventory);
        if let Ok(mut slot) = self.fast_path.lock() {
            if let Some(fp) = slot.as_mut() {
                let r = fp.sync(&server).map_err(|e| e.to_string())?;
                info!(
                    hosts = r.hosts,
                    removed = r.removed,
                    "XDP DHCP fast path resynced"
                );
            }
        }
        Ok(())
    }
}

/// Whether `ev` is an ACK the journal already holds: the live record binds the same address
/// to the same MAC, and less than half of the lease `ev` grants has run since (the record
/// expires later than `now` plus half of it, and no later than a new one would). Such a
/// record would change nothing a restart needs, so neither the table nor the journal takes
/// it: both keep the durable expiry, and the client's renewal at half its lease is recorded.
fn repeats_live_lease(table: &table::LeaseTable, ev: &FastPathEvent, now: u64) -> bool {
    if ev.kind != MessageType::Ack || ev.lease_secs == 0 {
        return false;
    }
    let lease = u64::from(ev.lease_secs);
    table.lease_at(ev.ip).is_some_and(|l| {
        l.mac == ev.mac
            && l.state == LeaseState::Bound
            && l.expires > now + lease / 2
            && l.expires <= now + lease
    })
}

/// A reply as it goes on the wire: encoded, then padded with zeros to RFC 2131's minimum
/// BOOTP size (some PXE ROMs drop shorter messages; the XDP fast path pads the same way).
pub fn encode_reply(msg: &dhcproto::v4::Message) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    let mut out = Vec::with_capacity(576);
    msg.encode(&mut Encoder::new(&mut out))?;
    if out.len() < bootfabric_abi::dhcp::REPLY_MIN {
        out.resize(bootfabric_abi::dhcp::REPLY_MIN, 0);
    }
    Ok(out)
}

/// For `bootfabric check`: why `dhcp` trusts relays it should not, if it does (relayed
/// subnets configured but `dhcp.relays` unset, so any machine may set a giaddr).
pub fn unguarded_relays(dhcp: &crate::config::DhcpConfig) -> Option<String> {
    if dhcp.guards.relays.is_some() {
        return None;
    }
    let relayed: Vec<String> = dhcp
        .subnets
        .iter()
        .filter(|s| s.interface.is_none())
        .map(|s| s.net.to_string())
        .collect();
    (!relayed.is_empty()).then(|| {
        format!(
            "unset: relayed requests for {} are accepted from any source address",
            relayed.join(", ")
        )
    })
}

/// Reads the live leases for `bootfabric leases` (works while the daemon runs).
pub fn read_leases(path: &Path) -> Result<Vec<LeaseRecord>, journal::JournalError> {
    journal::read_live(path)
}

/// `bootfabric leases repair`: repairs the journal of `config` (see [`journal::repair`])
/// and prints what it did. Exit code 0 when the journal is sound now, 1 when it could not
/// be repaired.
pub fn repair_leases(config: &Config) -> i32 {
    let path = journal_path(config);
    if !path.exists() {
        println!("{}: no lease journal: nothing to repair", path.display());
        return 0;
    }
    match journal::repair(&path, unix_now()) {
        Ok(r) if r.dropped.is_empty() => {
            println!(
                "{}: {} records, no damaged line: nothing to repair",
                path.display(),
                r.kept
            );
            0
        }
        Ok(r) => {
            for d in &r.dropped {
                println!(
                    "dropped line {} (byte offset {}): {}: \"{}\"",
                    d.line, d.offset, d.reason, d.text
                );
            }
            if let Some(copy) = &r.copy {
                println!("original kept as {}", copy.display());
            }
            println!(
                "{}: {} records kept, {} line(s) dropped. A dropped record may have been a client's lease: check the addresses above before the daemon hands them out again.",
                path.display(),
                r.kept,
                r.dropped.len()
            );
            0
        }
        Err(e) => {
            eprintln!("bootfabric: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::Inventory;

    fn table(expires: u64) -> table::LeaseTable {
        let inventory =
            Inventory::from_wire(Path::new("hosts.toml"), toml::from_str("").expect("toml"))
                .expect("inventory");
        let record = LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 11),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            state: LeaseState::Bound,
            expires,
            hostname: None,
        };
        table::LeaseTable::new(&[], &inventory, &[record], 0)
    }

    fn ack(mac: u8, ip: u8, lease_secs: u32) -> FastPathEvent {
        FastPathEvent {
            mac: Mac([2, 0, 0, 0, 0, mac]),
            kind: MessageType::Ack,
            ip: Ipv4Addr::new(10, 0, 0, ip),
            ifindex: 1,
            lease_secs,
        }
    }

    #[test]
    fn an_ack_repeating_the_live_lease_in_its_first_half_is_not_journalled_again() {
        // Bound at 1000 for 600 s: expires 1600.
        let t = table(1600);
        assert!(repeats_live_lease(&t, &ack(1, 11, 600), 1000));
        assert!(repeats_live_lease(&t, &ack(1, 11, 600), 1299));
        // Half the lease has run: the renewal is recorded.
        assert!(!repeats_live_lease(&t, &ack(1, 11, 600), 1300));
        // Another MAC or address, an OFFER, an unknown lease time: recorded.
        assert!(!repeats_live_lease(&t, &ack(2, 11, 600), 1000));
        assert!(!repeats_live_lease(&t, &ack(1, 12, 600), 1000));
        let offer = FastPathEvent {
            kind: MessageType::Offer,
            ..ack(1, 11, 600)
        };
        assert!(!repeats_live_lease(&t, &offer, 1000));
        assert!(!repeats_live_lease(&t, &ack(1, 11, 0), 1000));
        // A shorter lease than the live record's: recorded, so the journal shortens it.
        assert!(!repeats_live_lease(&t, &ack(1, 11, 300), 1000));
        // A longer one whose first half outlasts the live record: recorded.
        assert!(!repeats_live_lease(&t, &ack(1, 11, 3600), 1000));
    }

    #[test]
    fn check_warns_about_relayed_subnets_without_relays() {
        let dhcp = |keys: &str| {
            let w: crate::config::wire::Dhcp = toml::from_str(keys).expect("toml");
            crate::config::DhcpConfig::from_wire(&w).expect("valid")
        };
        let local = "[[subnets]]\ncidr = \"10.77.0.0/24\"\ninterface = \"fabric0\"\n";
        let relayed = "[[subnets]]\ncidr = \"10.88.0.0/24\"\n";
        assert_eq!(unguarded_relays(&dhcp(local)), None);
        let why = unguarded_relays(&dhcp(&format!("{local}{relayed}"))).expect("a warning");
        assert!(
            why.contains("10.88.0.0/24") && !why.contains("10.77.0.0/24"),
            "{why}"
        );
        let guarded = format!("relays = [\"10.77.0.254\"]\n{local}{relayed}");
        assert_eq!(unguarded_relays(&dhcp(&guarded)), None);
    }
}
