//! The TFTP socket loop: a listener on port 69 per fabric interface, and one task (not one
//! thread) per transfer on a random port from `tftp.transfer_ports` (its TID), driven by the
//! pure [`Transfer`] state machine.
//!
//! Requests are admitted by the pure [`Admission`] caps before a port is bound; a transfer
//! ends at `tftp.max_transfer_s` whatever its client does, and only its own peer (address
//! and port) moves it on. File opens and reads run on a bounded blocking pool, never on the
//! runtime's threads: a hung store stalls the transfers that read it, not the runtime.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::{net::UdpSocket, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    admission::{Admission, AdmissionLimits, Budget, Grant},
    names::{self, Format, Owner},
    options::{self, Limits},
    packet::{self, ErrorCode, Mode, Packet},
    transfer::{AbortReason, Action, Transfer},
};
use crate::util::logs::{Untrusted, EXCHANGE_LOG};
use crate::xdp::tftp::{Decline, HotCopy, KernelTftp, Registration};
use crate::{
    config::{PortRange, TftpConfig},
    fabric::Iface,
    model::files::{self, FileError},
    model::inventory::{BootAnswer, Host, Mac},
    model::ledger::{EventKind, Ledger},
    model::render,
    model::snapshot::{Live, Snapshot},
};
use bootfabric_abi::tftp::XferKey;

/// The well-known TFTP port.
pub const TFTP_PORT: u16 = 69;

/// Why the TFTP service did not start, or stopped. Where a cause is in the text it is not also a source,
/// so that the daemon's `{:#}` prints it once.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    /// A metric could not be registered (its name is taken in the registry).
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
    /// A fabric interface has no IPv4 address to answer from.
    #[error("tftp: interface {iface:?} has no IPv4 address")]
    NoAddress {
        /// The interface, as configured.
        iface: String,
    },
    /// The listening socket of an interface could not be bound.
    #[error("tftp: binding {iface}:{port}: {error}")]
    Bind {
        /// The interface.
        iface: String,
        /// The port.
        port: u16,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// The file I/O threads could not be started, or a listener's socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A listener's task ended without returning (it panicked).
    #[error("TFTP listener failed: {0}")]
    Listener(tokio::task::JoinError),
}

#[derive(Clone)]
struct Metrics {
    active: IntGauge,
    transfers: IntCounterVec,
    bytes: IntCounter,
    retransmits: IntCounter,
    errors: IntCounterVec,
    rendered: IntCounterVec,
    refused: IntCounterVec,
    kernel: IntCounterVec,
    hot_blocks: IntCounterVec,
    hot_bytes: IntCounterVec,
}

impl Metrics {
    fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let active = IntGauge::new(
            "bootfabric_tftp_transfers_active",
            "TFTP transfers in progress.",
        )?;
        let transfers = IntCounterVec::new(
            Opts::new(
                "bootfabric_tftp_transfers_total",
                "TFTP transfers ended, by outcome.",
            ),
            &["outcome"],
        )?;
        let bytes = IntCounter::new(
            "bootfabric_tftp_bytes_total",
            "File bytes sent in DATA blocks (first sends).",
        )?;
        let retransmits = IntCounter::new(
            "bootfabric_tftp_retransmits_total",
            "Blocks and OACKs sent again after a timeout.",
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "bootfabric_tftp_errors_total",
                "Requests refused or packets rejected, by reason.",
            ),
            &["reason"],
        )?;
        r.register(Box::new(active.clone()))?;
        r.register(Box::new(transfers.clone()))?;
        r.register(Box::new(bytes.clone()))?;
        r.register(Box::new(retransmits.clone()))?;
        let rendered = IntCounterVec::new(
            Opts::new(
                "bootfabric_tftp_rendered_total",
                "Per-host files rendered from boot profiles, by format.",
            ),
            &["format"],
        )?;
        r.register(Box::new(errors.clone()))?;
        r.register(Box::new(rendered.clone()))?;
        let refused = IntCounterVec::new(
            Opts::new(
                "bootfabric_tftp_refused_total",
                "Requests, options and packets refused to protect the server, by reason.",
            ),
            &["reason"],
        )?;
        r.register(Box::new(refused.clone()))?;
        let kernel = IntCounterVec::new(
            Opts::new(
                "bootfabric_tftp_kernel_transfers_total",
                "Transfers of tftp.kernel_files files, by file and what became of them: handed (the kernel carried them), options (windowsize above 1, or a blksize it does not build), changed (the file on disk is not the kernel's copy yet), map_full.",
            ),
            &["file", "result"],
        )?;
        r.register(Box::new(kernel.clone()))?;
        let hot_blocks = IntCounterVec::new(
            Opts::new(
                "bootfabric_tftp_hot_file_blocks_total",
                "DATA blocks of tftp.kernel_files files sent (first sends), by file and by the path that sent them: kernel or userspace.",
            ),
            &["file", "path"],
        )?;
        let hot_bytes = IntCounterVec::new(
            Opts::new(
                "bootfabric_tftp_hot_file_bytes_total",
                "File bytes in those blocks, by file and path.",
            ),
            &["file", "path"],
        )?;
        r.register(Box::new(hot_blocks.clone()))?;
        r.register(Box::new(hot_bytes.clone()))?;
        Ok(Self {
            active,
            transfers,
            bytes,
            retransmits,
            errors,
            rendered,
            refused,
            kernel,
            hot_blocks,
            hot_bytes,
        })
    }
}

/// File contents to send: a file through the page cache, or bytes in memory (netascii,
/// rendered files). Shared, so that reads can move to the blocking pool.
#[derive(Clone)]
enum Data {
    File(Arc<files::Source>),
    Memory(Arc<[u8]>),
}

impl Data {
    fn size(&self) -> u64 {
        match self {
            Data::File(s) => s.size(),
            Data::Memory(m) => m.len() as u64,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        match self {
            Data::File(s) => s.read_at(buf, offset),
            Data::Memory(m) => {
                let start = (offset as usize).min(m.len());
                let n = buf.len().min(m.len() - start);
                buf[..n].copy_from_slice(&m[start..start + n]);
                Ok(n)
            }
        }
    }
}

/// Blocks `first..=last` as DATA packets into `out` (cleared first); false on a short or
/// failed read (the file changed under us, or the store failed). May block: for files it
/// runs on the I/O pool.
fn fill_blocks(
    data: &Data,
    t: &Transfer,
    size: u64,
    (first, last): (u64, u64),
    out: Vec<u8>,
) -> (Vec<u8>, bool) {
    let read =
        |buf: &mut [u8], offset| matches!(data.read_at(buf, offset), Ok(n) if n == buf.len());
    match fill_with(t, size, (first, last), out, read) {
        Ok(out) => (out, true),
        Err(out) => (out, false),
    }
}

/// Blocks `first..=last` as DATA packets into `out`, from the page cache only, never
/// blocking: `Err` with the buffer back when any byte would have to come from the store.
fn fill_cached(
    source: &files::Source,
    t: &Transfer,
    size: u64,
    (first, last): (u64, u64),
    out: Vec<u8>,
) -> Result<Vec<u8>, Vec<u8>> {
    // An empty last block needs no read (and the cache has nothing to say about it).
    let read = |buf: &mut [u8], offset| buf.is_empty() || source.read_cached_at(buf, offset);
    fill_with(t, size, (first, last), out, read)
}

/// Blocks `first..=last` as DATA packets into `out` (cleared first), each block's bytes
/// filled by `read(buf, offset)`: the one framing both the blocking and the cache-only
/// paths use, so that they cannot disagree on the wire. `Err` with the buffer back as soon
/// as `read` says false.
fn fill_with(
    t: &Transfer,
    size: u64,
    (first, last): (u64, u64),
    mut out: Vec<u8>,
    mut read: impl FnMut(&mut [u8], u64) -> bool,
) -> Result<Vec<u8>, Vec<u8>> {
    out.clear();
    for k in first..=last {
        let (offset, len) = t.block_range(k, size);
        packet::data_header(Transfer::wire_block(k), &mut out);
        let at = out.len();
        out.resize(at + len as usize, 0);
        if !read(&mut out[at..], offset) {
            return Err(out);
        }
    }
    Ok(out)
}

/// RFC 764 NVT line ends: LF → CR LF, CR → CR NUL; appended to `out`.
fn push_netascii(raw: &[u8], out: &mut Vec<u8>) {
    for &b in raw {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            b => out.push(b),
        }
    }
}

/// The netascii form of `data`, converted chunk by chunk into one buffer of the worst-case
/// size (never a second copy of the file), then trimmed. Blocking: runs on the I/O pool.
fn netascii_copy(data: &Data) -> std::io::Result<Vec<u8>> {
    let size = data.size();
    let mut out = Vec::with_capacity(netascii_worst_case(size) as usize);
    let mut chunk = vec![0u8; NETASCII_CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let want = (size - offset).min(NETASCII_CHUNK as u64) as usize;
        let n = data.read_at(&mut chunk[..want], offset)?;
        if n == 0 {
            break;
        }
        push_netascii(&chunk[..n], &mut out);
        offset += n as u64;
    }
    out.shrink_to_fit();
    Ok(out)
}

/// The most a netascii conversion of `size` bytes can take: every byte a line end.
fn netascii_worst_case(size: u64) -> u64 {
    size.saturating_mul(2)
}

/// Largest file served in netascii mode (text configs; bootloaders travel as octets).
const NETASCII_MAX: u64 = 16 << 20;

/// Bytes read per step of a netascii conversion.
const NETASCII_CHUNK: usize = 64 << 10;

/// Threads for blocking file operations (open, metadata, reads). A fixed number, so that a
/// boot storm's opens do not start hundreds of threads; a hung store holds at most this many,
/// and the transfers queued behind them time out (`STORAGE_TIMEOUT`).
const IO_THREADS: usize = 16;

/// A job for the I/O pool.
type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of threads for blocking file work, apart from the async runtime (whose own
/// blocking pool grows a thread for every job that finds none idle, and whose shutdown waits
/// for jobs stuck on a dead store). The queue is bounded by the transfers admitted.
struct IoPool {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl IoPool {
    fn start(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("tftp-io-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job, not while it runs.
                    let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = next else { return };
                    // A job that panics must not take its thread with it.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                })?;
        }
        Ok(Self { jobs: tx })
    }

    /// Runs `f` on the pool; `None` if the pool is gone or `f` panicked.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

/// How long one blocking file operation may take before its transfer gives up (the thread
/// stays stuck with the operation, and keeps its place in the pool).
const STORAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// ERROR 5 answers to strangers per transfer; more strangers are only counted (an answer
/// to each would make the transfer port a reflector).
const STRANGER_REPLIES: u32 = 4;

/// Random probes for a free transfer port before scanning the range in order.
const RANDOM_PORT_PROBES: u32 = 64;

/// Receive buffer of the port 69 sockets, in bytes.
const LISTEN_RCVBUF: usize = 4 << 20;

/// Largest UDP GSO send: the kernel's segment limit, and the IPv4 datagram size limit.
const GSO_MAX_SEGMENTS: u64 = 64;
const GSO_MAX_BYTES: u64 = 65_000;

/// Blocks per send: a batch under GSO, else one.
fn gso_batch(segment: usize, gso: bool) -> u64 {
    if gso {
        (GSO_MAX_BYTES / segment as u64).clamp(1, GSO_MAX_SEGMENTS)
    } else {
        1
    }
}

/// Sets the socket's UDP GSO segment size (0 turns GSO off); false if the kernel refuses.
fn set_gso(sock: &UdpSocket, segment: usize) -> bool {
    let Ok(size) = i32::try_from(segment) else {
        return false;
    };
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::UdpGsoSegment, &size).is_ok()
}

/// The TFTP service, bound and ready.
pub struct TftpService {
    listeners: Vec<(String, IpAddr, Arc<UdpSocket>)>,
    cfg: TftpConfig,
    ports: PortRange,
    /// Keyed SipHash of a counter: transfer ports an observer cannot predict from earlier
    /// ones (the crate's xorshift is seeded from the clock and is linear).
    port_keys: RandomState,
    port_counter: AtomicU64,
    admission: Arc<Mutex<Admission>>,
    netascii: Arc<Budget>,
    io: IoPool,
    metrics: Metrics,
    hosts: Hosts,
    /// The kernel's TFTP path, when its program is attached (`tftp.kernel_files`).
    kernel: Option<Arc<KernelTftp>>,
    /// Woken by every published configuration generation (SIGHUP, the hosts API): the
    /// kernel's copies are checked against the disk at once, not at the next tick.
    republished: Arc<tokio::sync::Notify>,
}

/// How often the kernel's copies of `tftp.kernel_files` are checked against the disk.
const KERNEL_REFRESH: Duration = Duration::from_secs(5);

/// A transfer's place under the admission caps, given back when the transfer ends.
struct Ticket {
    admission: Arc<Mutex<Admission>>,
    client: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // The state stays consistent whatever panicked while it was held: take it anyway.
        let mut a = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        a.release(self.client);
    }
}

/// What a transfer carries beside its socket: its admission and its netascii memory.
struct Held {
    _ticket: Ticket,
    _netascii: Option<Grant>,
}

/// Whom the per-client caps count `peer` as: its address (of either family; every DHCPv6
/// client of a link shares its /64, so a prefix is no client).
fn client_of(peer: SocketAddr) -> IpAddr {
    peer.ip().to_canonical()
}

/// What the service knows about hosts: the configuration snapshot (hosts, profiles, boot
/// settings, script names) and, through the ledger, who holds which leased address.
struct Hosts {
    live: Arc<Live>,
    ledger: Ledger,
}

impl Hosts {
    /// The MAC behind an address, known or not (for the ledger), in the current snapshot.
    fn mac_at(&self, ip: IpAddr) -> Option<Mac> {
        self.ledger.holder(ip).or_else(|| {
            let snap = self.live.load();
            match ip {
                IpAddr::V4(v4) => snap.inventory.host_by_ip(v4).map(|h| h.mac),
                IpAddr::V6(v6) => snap.inventory.host_by_ipv6(v6).map(|h| h.mac),
            }
        })
    }

    /// The known host a per-host name is for, in `snap`.
    fn owner<'s>(&self, snap: &'s Snapshot, owner: Owner, peer: IpAddr) -> Option<&'s Host> {
        let inventory = &snap.inventory;
        match owner {
            Owner::Mac(mac) => inventory.host_by_mac(&mac),
            Owner::Ip(ip) => self.ledger.host_at(inventory, ip.into()),
            Owner::Peer => self.ledger.host_at(inventory, peer),
        }
    }

    /// Renders `format` for `host` from `snap`, or `None` when its profile is unknown. A
    /// host whose one network boot was used gets the format's "boot from your disk".
    fn render(
        &self,
        snap: &Snapshot,
        format: Format,
        host: &Host,
        peer: IpAddr,
        server: IpAddr,
    ) -> Option<String> {
        let inventory = &snap.inventory;
        if inventory.boot_answer(host) == BootAnswer::Disk {
            return Some(match format {
                Format::Pxelinux => render::pxelinux_disk(host),
                Format::Grub => render::grub_disk(host),
                Format::Ipxe => render::ipxe_disk(host),
            });
        }
        let profile = inventory.profile(&host.profile)?;
        let ip = self.ledger.address_of(host, peer);
        let target = render::Target {
            host,
            profile,
            ip,
            server: server.into(),
            global: &snap.boot,
            nonce: None,
        };
        let text = match format {
            Format::Pxelinux => render::pxelinux(&target),
            Format::Grub => render::grub(&target),
            Format::Ipxe => render::host_script(inventory, host, ip, server.into(), &snap.boot)?,
        };
        // Every cmdline rendered for this host at load; one failing now differs by the
        // lease address: the client gets the not-found answer, the operator the reason.
        text.map_err(
            |e| tracing::error!(host = %host.name, error = %e, "cannot render the boot file"),
        )
        .ok()
    }
}

/// A UDP socket on `port` of `iface` only, for IPv4 or (`v6`) IPv6 peers.
fn bind(iface: &str, port: u16, v6: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (domain, any) = if v6 {
        (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    } else {
        (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if v6 {
        s.set_only_v6(true)?;
    }
    s.bind_device(Some(iface.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(any, port).into())?;
    UdpSocket::from_std(s.into())
}

/// What TFTP serves from besides its own section. `serve` takes each from where it is kept,
/// so the service reads no other section of the configuration.
pub struct Sources {
    /// The configuration snapshot (hosts, profiles, `[boot]`, script names), loaded once
    /// per read request: a transfer keeps the bytes it rendered.
    pub live: Arc<Live>,
    /// The ledger (leases for host lookup; boot events).
    pub ledger: Ledger,
    /// Ports transfers are served from (`tftp.transfer_ports`; kept beside the sections
    /// because the XDP programs read it too).
    pub transfer_ports: PortRange,
    /// The kernel's TFTP path, handed over by the data path when its program is attached.
    pub kernel: Option<KernelTftp>,
}

impl TftpService {
    /// Binds port 69 on every interface in `ifaces` (the fabric).
    pub fn start(
        cfg: TftpConfig,
        ifaces: &[Iface],
        sources: Sources,
        registry: &Registry,
    ) -> Result<Self, TftpError> {
        Self::start_on(TFTP_PORT, cfg, ifaces, sources, registry)
    }

    /// [`TftpService::start`] on `port`; port 0 (tests) binds a port the kernel picks per
    /// interface, which [`TftpService::local_addrs`] says.
    fn start_on(
        port: u16,
        cfg: TftpConfig,
        ifaces: &[Iface],
        sources: Sources,
        registry: &Registry,
    ) -> Result<Self, TftpError> {
        let metrics = Metrics::register(registry)?;
        let mut listeners = Vec::new();
        for fabric in ifaces {
            let iface = &fabric.name;
            let ip = fabric.ipv4.ok_or_else(|| TftpError::NoAddress {
                iface: iface.clone(),
            })?;
            // IPv4 always; IPv6 where the interface has an address beyond its link (DHCPv6
            // hands out tftp:// URLs naming it).
            let mut port = port;
            for addr in std::iter::once(IpAddr::V4(ip)).chain(fabric.ipv6.map(IpAddr::V6)) {
                let bind_error = |error| TftpError::Bind {
                    iface: iface.clone(),
                    port,
                    error,
                };
                let sock = bind(iface, port, addr.is_ipv6()).map_err(bind_error)?;
                port = sock.local_addr().map_err(bind_error)?.port();
                // A rack powering on sends its read requests in one burst; the default
                // buffer holds a few hundred. Forcing past rmem_max needs CAP_NET_ADMIN,
                // which the daemon has when it runs XDP; otherwise the kernel's cap applies.
                let want = LISTEN_RCVBUF;
                if nix::sys::socket::setsockopt(
                    &sock,
                    nix::sys::socket::sockopt::RcvBufForce,
                    &want,
                )
                .is_err()
                {
                    let _ = nix::sys::socket::setsockopt(
                        &sock,
                        nix::sys::socket::sockopt::RcvBuf,
                        &want,
                    );
                }
                info!(%iface, root = %cfg.root.display(), "TFTP server listening on {}", SocketAddr::new(addr, port));
                listeners.push((iface.clone(), addr, Arc::new(sock)));
            }
        }
        let admission = Admission::new(AdmissionLimits {
            max_transfers: cfg.max_transfers,
            max_transfers_per_client: cfg.max_transfers_per_client,
            requests_per_second: cfg.requests_per_second,
            requests_per_second_per_client: cfg.requests_per_second_per_client,
        });
        let netascii = Budget::new(cfg.netascii_budget_bytes);
        let republished = Arc::new(tokio::sync::Notify::new());
        let kernel = match sources.kernel {
            Some(k) => {
                let wake = Arc::clone(&republished);
                sources.live.on_published(move |_| wake.notify_one());
                registry.register(Box::new(k.collector()?))?;
                // Loaded before the first request: the first boot of a rack is the storm.
                for problem in k.refresh(&cfg.root, &cfg.kernel_files) {
                    warn!("TFTP in the kernel: {problem}");
                }
                info!(
                    files = k.files().len(),
                    capacity = k.capacity_bytes(),
                    "TFTP: the kernel answers transfers (lock-step, and windows of up to {}) of {:?}",
                    bootfabric_abi::tftp::WINDOW_MAX,
                    k.files()
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                );
                Some(Arc::new(k))
            }
            None => None,
        };
        Ok(Self {
            listeners,
            cfg,
            ports: sources.transfer_ports,
            port_keys: RandomState::new(),
            port_counter: AtomicU64::new(0),
            admission: Arc::new(Mutex::new(admission)),
            netascii,
            io: IoPool::start(IO_THREADS)?,
            metrics,
            hosts: Hosts {
                live: sources.live,
                ledger: sources.ledger,
            },
            kernel,
            republished,
        })
    }

    /// Where it listens over IPv4: each interface's address and the port bound there.
    pub fn local_addrs(&self) -> Vec<SocketAddrV4> {
        self.listeners
            .iter()
            .filter_map(|(_, ip, sock)| match ip {
                IpAddr::V4(ip) => Some(SocketAddrV4::new(
                    *ip,
                    sock.local_addr().map_or(0, |a| a.port()),
                )),
                IpAddr::V6(_) => None,
            })
            .collect()
    }

    /// Serves until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), TftpError> {
        let this = Arc::new(self);
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(kernel) = this.kernel.clone() {
            let this = Arc::clone(&this);
            let cancel = cancel.clone();
            tasks.spawn(async move {
                // A bootloader replaced on disk is read again into free slots; transfers
                // of the old copy finish on it.
                let mut tick = tokio::time::interval(KERNEL_REFRESH);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok::<(), std::io::Error>(()),
                        _ = tick.tick() => {}
                        _ = this.republished.notified() => {}
                    }
                    let k = Arc::clone(&kernel);
                    let root = this.cfg.root.clone();
                    let names = this.cfg.kernel_files.clone();
                    let _ = this.blocking(move || k.refresh(&root, &names)).await;
                }
            });
        }
        for (iface, ip, sock) in this.listeners.clone() {
            let this = Arc::clone(&this);
            let cancel = cancel.clone();
            tasks.spawn(async move { this.listen(iface, ip, sock, cancel).await });
        }
        while let Some(res) = tasks.join_next().await {
            let err = match res {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => TftpError::Io(e),
                Err(join) => TftpError::Listener(join),
            };
            cancel.cancel();
            return Err(err);
        }
        Ok(())
    }

    async fn listen(
        self: Arc<Self>,
        iface: String,
        server: IpAddr,
        sock: Arc<UdpSocket>,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 1024];
        loop {
            let (n, peer) = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = sock.recv_from(&mut buf) => r?,
            };
            let request = match packet::parse(&buf[..n]) {
                Ok(Packet::Request(r)) => r,
                Ok(_) => {
                    self.metrics
                        .errors
                        .with_label_values(&["not_a_request"])
                        .inc();
                    let _ = sock
                        .send_to(
                            &packet::error(ErrorCode::IllegalOperation, "expected RRQ"),
                            peer,
                        )
                        .await;
                    continue;
                }
                Err(e) => {
                    self.metrics.errors.with_label_values(&["malformed"]).inc();
                    let _ = sock
                        .send_to(
                            &packet::error(ErrorCode::IllegalOperation, &e.to_string()),
                            peer,
                        )
                        .await;
                    continue;
                }
            };
            if request.write {
                self.metrics
                    .errors
                    .with_label_values(&["write_request"])
                    .inc();
                let _ = sock
                    .send_to(
                        &packet::error(ErrorCode::AccessViolation, "write requests are refused"),
                        peer,
                    )
                    .await;
                continue;
            }
            let Some(ticket) = self.admit(&sock, peer).await else {
                continue;
            };
            let this = Arc::clone(&self);
            let iface = iface.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                this.transfer(iface, server, peer, request, cancel, ticket)
                    .await
            });
        }
    }

    /// Admits a read request under the caps, or refuses it (an ERROR from port 69 when the
    /// slots are full, nothing when over the rate) and counts why.
    async fn admit(&self, sock: &UdpSocket, peer: SocketAddr) -> Option<Ticket> {
        let client = client_of(peer);
        let verdict = {
            let mut a = self.admission.lock().unwrap_or_else(|e| e.into_inner());
            a.admit(client, std::time::Instant::now())
        };
        match verdict {
            Ok(()) => Some(Ticket {
                admission: Arc::clone(&self.admission),
                client,
            }),
            Err(r) => {
                self.metrics.refused.with_label_values(&[r.reason()]).inc();
                debug!(%peer, reason = r.reason(), "TFTP request refused");
                if r.answered() {
                    let _ = sock
                        .send_to(&packet::error(ErrorCode::NotDefined, &r.to_string()), peer)
                        .await;
                }
                None
            }
        }
    }

    /// A random number for port choice.
    fn random(&self) -> u64 {
        self.port_keys
            .hash_one(self.port_counter.fetch_add(1, Ordering::Relaxed))
    }

    /// Binds a transfer socket on a random free port of the range: random probes first (a
    /// spoofed client cannot guess the next TID and aim blind ACKs at it), then every port in
    /// order from a random one, so a nearly full range still finds its last free ports.
    fn bind_tid(&self, iface: &str, v6: bool) -> std::io::Result<UdpSocket> {
        let span = u32::from(self.ports.last - self.ports.first) + 1;
        let at = |n: u64| self.ports.first + (n % u64::from(span)) as u16;
        let mut last_err = None;
        for _ in 0..RANDOM_PORT_PROBES.min(span) {
            match bind(iface, at(self.random()), v6) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = Some(e),
            }
        }
        let start = self.random();
        for i in 0..u64::from(span) {
            match bind(iface, at(start.wrapping_add(i)), v6) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no transfer port free")))
    }

    /// Runs a blocking file operation on the I/O pool, bounded in time.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, FileError> {
        match tokio::time::timeout(STORAGE_TIMEOUT, self.io.run(f)).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(FileError::Io("file operation failed".to_owned())),
            Err(_) => Err(FileError::Io("storage did not answer".to_owned())),
        }
    }

    /// Blocks `first..=last` as DATA packets into `out` (cleared first); false on a short or
    /// failed read (the file changed under us, or the store failed).
    async fn fill(
        &self,
        data: &Data,
        t: &Transfer,
        size: u64,
        (first, last): (u64, u64),
        out: Vec<u8>,
    ) -> (Vec<u8>, bool) {
        let out = match data {
            Data::Memory(_) => return fill_blocks(data, t, size, (first, last), out),
            // Most blocks of a bootloader are in the page cache: read them here without
            // blocking, and hand only the rest to the pool (a thread hop per block costs
            // more CPU than the read itself).
            Data::File(source) => match fill_cached(source, t, size, (first, last), out) {
                Ok(out) => return (out, true),
                Err(out) => out,
            },
        };
        let (data, t) = (data.clone(), t.clone());
        self.blocking(move || fill_blocks(&data, &t, size, (first, last), out))
            .await
            .unwrap_or_else(|_| (Vec::new(), false))
    }

    /// The bytes for a requested name: files on disk, or a file rendered for a host. For
    /// names that spell out one host, a file on disk wins (an operator's override); a shared
    /// script name is rendered for a known peer and comes from disk for anyone else.
    fn resolve(&self, name: &str, peer: IpAddr, server: IpAddr) -> Result<Data, FileError> {
        let (rel, absolute) = files::relative(&self.cfg.root, name)?;
        // One snapshot for the whole request: the name's meaning and the rendered bytes
        // come from one generation.
        let snap = self.hosts.live.load();
        let scripts = snap.scripts.iter().map(String::as_str);
        let mut file = names::classify(rel, scripts);
        let mut owner = file.and_then(|f| self.hosts.owner(&snap, f.owner, peer));
        // `grub/grub.cfg` is signed GRUB's one config name: rendered only for a host whose
        // profile boots under Secure Boot; for everyone else it is the operator's file.
        let shared_grub = file.is_some_and(|f| f.format == Format::Grub && f.owner == Owner::Peer);
        let secure = |h: &Host| {
            snap.inventory
                .profile(&h.profile)
                .is_some_and(|p| p.boot.over(&snap.boot).secure())
        };
        if shared_grub && !owner.is_some_and(secure) {
            file = None;
            owner = None;
        }
        // The host's netboot decides before any file of its own, an operator's override
        // included: `deny` gets nothing of its own (shared bootloaders stay public: they
        // are no host's), a used `once` its format's "boot from your disk".
        let answer = owner.map(|h| snap.inventory.boot_answer(h));
        if answer == Some(BootAnswer::Deny) {
            return Err(FileError::Denied("netboot_deny"));
        }
        let rendered = |format: Format| {
            self.hosts
                .render(&snap, format, owner?, peer, server)
                .map(|text| {
                    let label = match format {
                        Format::Pxelinux => "pxelinux",
                        Format::Grub => "grub",
                        Format::Ipxe => "ipxe",
                    };
                    self.metrics.rendered.with_label_values(&[label]).inc();
                    Data::Memory(text.into_bytes().into())
                })
        };
        let disk = || files::open(&self.cfg.root, rel).map(|s| Data::File(Arc::new(s)));
        let found = match file {
            Some(f) if answer == Some(BootAnswer::Disk) => {
                rendered(f.format).ok_or(FileError::NotFound)
            }
            Some(f) if f.owner == Owner::Peer => match rendered(f.format) {
                Some(d) => Ok(d),
                None => disk(),
            },
            Some(f) => match disk() {
                Err(FileError::NotFound) => rendered(f.format).ok_or(FileError::NotFound),
                other => other,
            },
            None => disk(),
        };
        match found {
            // An absolute name that is nothing under the root names something outside it.
            Err(FileError::NotFound) if absolute => Err(FileError::Denied("absolute_path")),
            other => other,
        }
    }

    async fn transfer(
        self: Arc<Self>,
        iface: String,
        server: IpAddr,
        peer: SocketAddr,
        req: packet::Request,
        cancel: CancellationToken,
        ticket: Ticket,
    ) {
        // The lifetime counts from the request: a slow store or a slow client both spend it.
        let expires = Instant::now() + self.cfg.max_transfer;
        let sock = match self.bind_tid(&iface, server.is_ipv6()) {
            Ok(s) => s,
            Err(e) => {
                warn!(%peer, error = %e, "no TFTP transfer port free");
                self.metrics.errors.with_label_values(&["no_port"]).inc();
                return;
            }
        };
        let peer_ip = peer.ip().to_canonical();
        let resolved = {
            let this = Arc::clone(&self);
            let name = req.filename.clone();
            self.blocking(move || this.resolve(&name, peer_ip, server))
                .await
                .and_then(|r| r)
        };
        let mut held = Held {
            _ticket: ticket,
            _netascii: None,
        };
        let data = match resolved {
            // Netascii is converted in memory: bounded per file, and all conversions
            // together by `tftp.netascii_budget_bytes`.
            Ok(d) if req.mode == Mode::Netascii && d.size() > NETASCII_MAX => {
                return self
                    .refuse(
                        &sock,
                        peer,
                        &req.filename,
                        FileError::Denied("netascii_too_large"),
                    )
                    .await
            }
            Ok(d) if req.mode == Mode::Netascii => {
                let Some(mut grant) = self.netascii.reserve(netascii_worst_case(d.size())) else {
                    self.metrics
                        .refused
                        .with_label_values(&["netascii_budget"])
                        .inc();
                    debug!(%peer, file = %req.filename, "TFTP netascii budget exhausted");
                    let _ = sock
                        .send_to(
                            &packet::error(
                                ErrorCode::NotDefined,
                                "server busy (netascii), try again",
                            ),
                            peer,
                        )
                        .await;
                    return;
                };
                match self.blocking(move || netascii_copy(&d)).await {
                    Ok(Ok(text)) => {
                        grant.shrink_to(text.capacity() as u64);
                        held._netascii = Some(grant);
                        Data::Memory(text.into())
                    }
                    Ok(Err(e)) => {
                        return self
                            .refuse(&sock, peer, &req.filename, FileError::Io(e.to_string()))
                            .await
                    }
                    Err(e) => return self.refuse(&sock, peer, &req.filename, e).await,
                }
            }
            Ok(d) => d,
            Err(e) => return self.refuse(&sock, peer, &req.filename, e).await,
        };
        let size = data.size();
        let limits = Limits::for_mtu(self.cfg.mtu, self.cfg.max_windowsize)
            .with_max_timeout(self.cfg.max_timeout_s);
        let negotiated = options::negotiate(&req.options, Some(size), limits);
        if negotiated.timeout_capped {
            self.metrics
                .refused
                .with_label_values(&["timeout_capped"])
                .inc();
        }
        let (mut t, mut action) = Transfer::start(&negotiated, size, self.cfg.max_retries);
        let wait = Duration::from_secs(u64::from(negotiated.timeout.max(1)));
        // The kernel's copy of this file, when it can carry the transfer: handed over once
        // the first block is out (see `hand_over`).
        let listed = self.listed(&req).cloned();
        let mut hot = self.hot_copy(&req, listed.as_ref(), &data, &negotiated);
        let mut kernel: Option<Registration> = None;
        debug!(%peer, file = %req.filename, size, blksize = negotiated.blksize, windowsize = negotiated.windowsize, "TFTP transfer");
        let began = std::time::Instant::now();
        self.metrics.active.inc();
        let segment = usize::from(negotiated.blksize) + 4;
        // One send per window where the kernel can cut it into datagrams (UDP GSO): a window
        // then costs one trip through the stack instead of one per block.
        let mut gso = negotiated.windowsize > 1 && set_gso(&sock, segment);
        // Bounded per transfer: one send's worth, at most a window.
        let batch = gso_batch(segment, gso).min(u64::from(negotiated.windowsize.max(1)));
        let mut out = Vec::with_capacity(segment * batch as usize);
        let mut highest_sent = 0u64;
        let mut inbuf = [0u8; 1024];
        let mut stranger_replies = 0u32;
        let outcome = loop {
            match action {
                Action::SendOack => {
                    if sock
                        .send_to(&packet::oack(&negotiated.ack), peer)
                        .await
                        .is_err()
                    {
                        break "send_error";
                    }
                }
                Action::SendBlocks { first, last } => {
                    // Handed over before the first block leaves: its ACK must find the
                    // kernel ready, or userspace and the kernel would each believe the
                    // transfer theirs.
                    if kernel.is_none() {
                        if let (Some(copy), Some(name)) = (hot.take(), listed.as_deref()) {
                            kernel = self.hand_over(&sock, server, peer, (copy, name), &t, size);
                        }
                    }
                    // Blocks userspace sends past the kernel's (the last one) are the
                    // kernel's to know.
                    if let Some(k) = kernel.as_mut() {
                        k.advance(last);
                    }
                    let mut failed = false;
                    let mut b = first;
                    while b <= last && !failed {
                        let end = (b + gso_batch(segment, gso) - 1).min(last);
                        let (filled, ok) = self.fill(&data, &t, size, (b, end), out).await;
                        out = filled;
                        if !ok {
                            failed = true;
                            break;
                        }
                        let (fresh_blocks, fresh) = (b.max(highest_sent + 1)..=end)
                            .fold((0u64, 0u64), |(n, bytes), k| {
                                (n + 1, bytes + t.block_range(k, size).1)
                            });
                        let sent = sock.send_to(&out, peer).await;
                        if sent.is_err() && gso {
                            // The route cannot segment (blocks larger than the path MTU, no
                            // checksum offload): block by block from now on, with the
                            // socket's segment size cleared, since the kernel refuses every
                            // send while it exceeds the MTU.
                            debug!(%peer, "UDP GSO refused, sending block by block");
                            gso = false;
                            if !set_gso(&sock, 0) {
                                failed = true;
                                break;
                            }
                            continue;
                        }
                        if sent.is_err() {
                            failed = true;
                            break;
                        }
                        self.metrics.bytes.inc_by(fresh);
                        self.count_hot(listed.as_deref(), "userspace", fresh_blocks, fresh);
                        // The scheduler's capacity is what the fabric sends, TFTP included.
                        self.hosts.ledger.egress(&iface, out.len() as u64);
                        let resent = end.min(highest_sent).saturating_sub(b - 1);
                        self.metrics.retransmits.inc_by(resent);
                        highest_sent = highest_sent.max(end);
                        b = end + 1;
                    }
                    if failed {
                        break "io_error";
                    }
                }
                Action::Done => break "completed",
                Action::Abort(AbortReason::Timeout) => break "timeout",
                // UEFI firmware asks for the size, reads the OACK and aborts, then asks again:
                // a probe, not a failure.
                Action::Abort(AbortReason::ClientError) if highest_sent == 0 => {
                    break "aborted_after_oack"
                }
                Action::Abort(AbortReason::ClientError) => break "client_error",
                Action::Abort(AbortReason::Lifetime) => {
                    self.metrics.refused.with_label_values(&["lifetime"]).inc();
                    let _ = sock
                        .send_to(
                            &packet::error(ErrorCode::NotDefined, "transfer took too long"),
                            peer,
                        )
                        .await;
                    break "lifetime";
                }
                Action::Wait => {}
            }
            // Wait for the client's answer from its TID. The retransmission timer runs from
            // the send: only progress from the peer starts a new one, so neither strangers
            // nor the peer's own repeats keep a transfer alive.
            let mut retransmit_at = Instant::now() + wait;
            action = loop {
                if Instant::now() >= expires {
                    break Action::Abort(AbortReason::Lifetime);
                }
                let recv = tokio::select! {
                    _ = cancel.cancelled() => None,
                    r = tokio::time::timeout_at(retransmit_at.min(expires), sock.recv_from(&mut inbuf)) => Some(r),
                };
                // What the kernel sent since the last look counts as sent, and as progress.
                let kernel_progress = kernel.as_ref().is_some_and(|k| {
                    self.sync_kernel(k, &mut t, &mut highest_sent, &iface, listed.as_deref())
                });
                match recv {
                    None => break Action::Abort(AbortReason::Timeout),
                    Some(Err(_)) if Instant::now() >= expires => {
                        break Action::Abort(AbortReason::Lifetime)
                    }
                    // The kernel is moving the transfer on: wait another round.
                    Some(Err(_)) if kernel_progress => {
                        retransmit_at = Instant::now() + wait;
                    }
                    Some(Err(_)) => break t.on_timeout(),
                    Some(Ok(Err(_))) => break Action::Abort(AbortReason::Timeout),
                    Some(Ok(Ok((_, from)))) if from != peer => {
                        // RFC 1350: ERROR 5 to a stranger, a few times per transfer (one
                        // small answer per packet, never more, and then none).
                        self.metrics.refused.with_label_values(&["stranger"]).inc();
                        if stranger_replies < STRANGER_REPLIES {
                            stranger_replies += 1;
                            let _ = sock
                                .send_to(
                                    &packet::error(
                                        ErrorCode::UnknownTransferId,
                                        "unknown transfer ID",
                                    ),
                                    from,
                                )
                                .await;
                        }
                    }
                    Some(Ok(Ok((n, _)))) => match packet::parse(&inbuf[..n]) {
                        Ok(Packet::Ack(b)) => match t.on_ack(b) {
                            Action::Wait => {}
                            a => break a,
                        },
                        Ok(Packet::Error(..)) => break t.on_error(),
                        _ => {
                            self.metrics.errors.with_label_values(&["malformed"]).inc();
                        }
                    },
                }
            };
        };
        // The kernel lets go of the transfer before it is counted as ended.
        if let Some(k) = kernel.take() {
            self.sync_kernel(&k, &mut t, &mut highest_sent, &iface, listed.as_deref());
        }
        self.metrics.active.dec();
        self.metrics.transfers.with_label_values(&[outcome]).inc();
        // The slot and the netascii memory are free from here on.
        drop(held);
        let mac = self.hosts.mac_at(peer_ip);
        info!(
            target: EXCHANGE_LOG,
            proto = "tftp",
            %peer,
            mac = mac.map(tracing::field::display),
            file = %Untrusted(&req.filename),
            outcome,
            size,
            blksize = negotiated.blksize,
            windowsize = negotiated.windowsize,
            ms = began.elapsed().as_millis() as u64,
            "TFTP {} to {peer}: {outcome}",
            Untrusted(&req.filename)
        );
        if let Some(mac) = mac {
            match outcome {
                "completed" => self.hosts.ledger.record(
                    mac,
                    EventKind::TftpSent {
                        file: req.filename.clone(),
                    },
                    Some(peer_ip),
                ),
                "aborted_after_oack" => {}
                why => self.hosts.ledger.record(
                    mac,
                    EventKind::TftpFailed {
                        file: req.filename.clone(),
                        why,
                    },
                    Some(peer_ip),
                ),
            }
        }
    }

    /// The kernel's copy of the requested file, if the kernel can carry this transfer: an
    /// octet-mode lock-step transfer of a `tftp.kernel_files` file, opened as the copy was
    /// read, with a block the kernel builds. `None` otherwise; why is counted for listed
    /// files.
    fn hot_copy(
        &self,
        req: &packet::Request,
        listed: Option<&String>,
        data: &Data,
        negotiated: &options::Negotiated,
    ) -> Option<Arc<HotCopy>> {
        let kernel = self.kernel.as_ref()?;
        let Data::File(source) = data else {
            return None;
        };
        if req.mode != Mode::Octet {
            return None;
        }
        let rel = listed?;
        let decided =
            if !bootfabric_abi::tftp::kernel_can_serve(negotiated.blksize, negotiated.windowsize) {
                Err(Decline::Options)
            } else {
                kernel.copy_of(rel, source.metadata())
            };
        match decided {
            Ok(copy) => Some(copy),
            Err(why) => {
                self.metrics
                    .kernel
                    .with_label_values(&[rel, why.as_str()])
                    .inc();
                None
            }
        }
    }

    /// The `tftp.kernel_files` entry `req` names, when the kernel path is on: the listed
    /// name, not the request's spelling of it, so metric labels stay bounded.
    fn listed(&self, req: &packet::Request) -> Option<&String> {
        self.kernel.as_ref()?;
        let (rel, _) = files::relative(&self.cfg.root, &req.filename).ok()?;
        let rel = rel.trim_start_matches("./");
        self.cfg.kernel_files.iter().find(|f| *f == rel)
    }

    /// Counts `blocks` first sends of `bytes` of a listed file by `path`.
    fn count_hot(&self, file: Option<&str>, path: &str, blocks: u64, bytes: u64) {
        if let Some(file) = file {
            if blocks > 0 {
                self.metrics
                    .hot_blocks
                    .with_label_values(&[file, path])
                    .inc_by(blocks);
                self.metrics
                    .hot_bytes
                    .with_label_values(&[file, path])
                    .inc_by(bytes);
            }
        }
    }

    /// Registers the transfer with the kernel as its first window is about to go out; the
    /// kernel answers its ACK on. Not when the next window holds the last block (userspace
    /// sends that one).
    fn hand_over(
        &self,
        sock: &UdpSocket,
        server: IpAddr,
        peer: SocketAddr,
        (copy, name): (Arc<HotCopy>, &str),
        t: &Transfer,
        size: u64,
    ) -> Option<Registration> {
        let kernel = self.kernel.as_ref()?;
        let local = sock.local_addr().ok()?;
        if t.sent() + u64::from(t.windowsize()) >= t.blocks() || copy.size() != size {
            return None;
        }
        // The kernel's path is IPv4's (its program parses IPv4 only).
        let (IpAddr::V4(client), IpAddr::V4(server)) = (peer.ip(), server) else {
            return None;
        };
        let key = XferKey {
            client_ip: client.octets(),
            server_ip: server.octets(),
            client_port: peer.port().to_be_bytes(),
            server_port: local.port().to_be_bytes(),
        };
        let (result, reg) =
            match kernel.register(key, copy, t.blksize(), t.windowsize(), t.blocks(), t.sent()) {
                Ok(reg) => ("handed", Some(reg)),
                Err(why) => (why.as_str(), None),
            };
        self.metrics.kernel.with_label_values(&[name, result]).inc();
        reg
    }

    /// Takes in what the kernel sent for `t` since the last look: the transfer's state, the
    /// byte counter and the interface's egress. True when it made progress.
    fn sync_kernel(
        &self,
        k: &Registration,
        t: &mut Transfer,
        highest_sent: &mut u64,
        iface: &str,
        file: Option<&str>,
    ) -> bool {
        let Some(p) = k.progress() else {
            return false;
        };
        if p.sent <= *highest_sent {
            return false;
        }
        // Every block the kernel sends is a full one (it leaves the last to userspace).
        let blocks = p.sent - *highest_sent;
        let blksize = u64::from(t.blksize());
        t.kernel_sent(p.sent);
        *highest_sent = p.sent;
        self.metrics.bytes.inc_by(blocks * blksize);
        self.count_hot(file, "kernel", blocks, blocks * blksize);
        self.hosts.ledger.egress(
            iface,
            blocks * (blksize + bootfabric_abi::tftp::DATA_HEADERS as u64),
        );
        true
    }

    async fn refuse(&self, sock: &UdpSocket, peer: SocketAddr, name: &str, e: FileError) {
        let (code, reason) = refusal(&e);
        self.metrics.errors.with_label_values(&[reason]).inc();
        debug!(%peer, file = name, reason, "TFTP request refused");
        let _ = sock
            .send_to(&packet::error(code, &e.to_string()), peer)
            .await;
    }
}

/// The TFTP error code a refused file maps to, and the metric reason.
fn refusal(e: &FileError) -> (ErrorCode, &'static str) {
    match e {
        FileError::NotFound => (ErrorCode::FileNotFound, "not_found"),
        FileError::Denied(why) => (ErrorCode::AccessViolation, why),
        FileError::Io(_) => (ErrorCode::NotDefined, "io"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{boot::BootSettings, inventory::Inventory, snapshot::Next};

    /// A live snapshot at generation 1 of `inventory` (its script: `boot.ipxe`, the default).
    fn live(inventory: Inventory) -> Arc<Live> {
        Live::unregistered(Next::new(inventory, BootSettings::defaults()))
    }

    fn config(root: &std::path::Path) -> TftpConfig {
        TftpConfig {
            root: root.canonicalize().expect("root"),
            max_windowsize: 1,
            max_retries: 5,
            mtu: 1500,
            max_transfers: 8,
            max_transfers_per_client: 4,
            requests_per_second: 100,
            requests_per_second_per_client: 100,
            max_timeout_s: 5,
            max_transfer: Duration::from_secs(60),
            netascii_budget_bytes: 1 << 20,
            kernel_files: vec![],
            kernel_bytes: 0,
        }
    }

    fn sources(registry: &Registry) -> Sources {
        Sources {
            live: live(Inventory::default()),
            ledger: Ledger::new(registry).expect("ledger"),
            transfer_ports: PortRange {
                first: 50_000,
                last: 59_999,
            },
            kernel: None,
        }
    }

    /// Reads `file` from `server` as RFC 1350 says, with no options: RRQ, then an ACK for
    /// each DATA block until a short one. The blocks' lengths and the transfer's port.
    async fn fetch(server: SocketAddrV4, file: &str) -> (Vec<u8>, Vec<usize>, u16) {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("client socket");
        let mut rrq = vec![0, 1];
        for field in [file, "octet"] {
            rrq.extend_from_slice(field.as_bytes());
            rrq.push(0);
        }
        sock.send_to(&rrq, server).await.expect("RRQ");
        let (mut data, mut blocks, mut tid) = (Vec::new(), Vec::new(), None);
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await.expect("receive");
            assert_eq!(
                *tid.get_or_insert(from),
                from,
                "one transfer port throughout"
            );
            let block = match packet::parse(&buf[..n]) {
                Ok(Packet::Data(block, bytes)) => {
                    assert_eq!(usize::from(block), blocks.len() + 1, "blocks in order");
                    data.extend_from_slice(&bytes);
                    blocks.push(bytes.len());
                    block
                }
                other => panic!("expected DATA, got {other:?}"),
            };
            let [hi, lo] = block.to_be_bytes();
            sock.send_to(&[0, 4, hi, lo], from).await.expect("ACK");
            if blocks.last().is_some_and(|&len| len < 512) {
                let port = tid.map_or(0, |t| t.port());
                return (data, blocks, port);
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_is_fetched_on_port_0() {
        let root = tempfile::tempdir().expect("tempdir");
        // Two full blocks and a short one.
        let image: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.path().join("undionly.kpxe"), &image).expect("write");
        let registry = Registry::new();
        let service = TftpService::start_on(
            0,
            config(root.path()),
            &[crate::fabric::loopback()],
            sources(&registry),
            &registry,
        )
        .expect("start");
        let [server] = service.local_addrs()[..] else {
            panic!("one listener per interface: {:?}", service.local_addrs());
        };
        assert_eq!(*server.ip(), Ipv4Addr::LOCALHOST);
        assert_ne!(server.port(), 0, "the port the kernel picked");
        let cancel = CancellationToken::new();
        let running = tokio::spawn(service.run(cancel.clone()));
        let (data, blocks, tid) =
            tokio::time::timeout(Duration::from_secs(30), fetch(server, "undionly.kpxe"))
                .await
                .expect("the transfer ends");
        assert_eq!(blocks, [512, 512, 476]);
        assert!(data == image, "{} bytes, not the file's", data.len());
        assert!((50_000..=59_999).contains(&tid), "transfer port {tid}");
        cancel.cancel();
        running.await.expect("joined").expect("stopped cleanly");
    }

    #[test]
    fn an_interface_without_ipv4_is_refused_in_the_same_words() {
        let root = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        let bare = Iface {
            ipv4: None,
            name: "fab0".to_owned(),
            ..crate::fabric::loopback()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let _in = rt.enter();
        let Err(e) =
            TftpService::start(config(root.path()), &[bare], sources(&registry), &registry)
        else {
            panic!("started without an address");
        };
        assert_eq!(
            e.to_string(),
            r#"tftp: interface "fab0" has no IPv4 address"#
        );
    }

    /// Per-host files answer from the snapshot in effect at each request, and follow the
    /// host's netboot: a used `once` gets each format's "boot from your disk", `deny` an
    /// access violation, while shared files stay served.
    #[tokio::test]
    async fn per_host_files_follow_the_snapshot_and_netboot() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(root.path().join("undionly.kpxe"), b"loader").expect("write");
        let text = r#"
            [profiles.debian]
            kernel = "debian/vmlinuz"

            [[hosts]]
            name = "node01"
            mac = "52:54:00:aa:00:01"
            profile = "debian"
            netboot = "once"

            [[hosts]]
            name = "node02"
            mac = "52:54:00:aa:00:02"
            profile = "debian"
            netboot = "deny"
        "#;
        let wire = toml::from_str(text).expect("inventory");
        let inventory =
            Inventory::from_wire(std::path::Path::new("hosts.toml"), wire).expect("valid");
        let registry = Registry::new();
        let live = live(Inventory::default());
        let sources = Sources {
            live: Arc::clone(&live),
            ..sources(&registry)
        };
        let service = TftpService::start_on(
            0,
            config(root.path()),
            &[crate::fabric::loopback()],
            sources,
            &registry,
        )
        .expect("start");
        let (peer, server) = (Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::LOCALHOST);
        let get = |name: &str| match service.resolve(name, peer.into(), server.into()) {
            Ok(Data::Memory(m)) => Ok(String::from_utf8_lossy(&m).into_owned()),
            Ok(Data::File(f)) => Ok(format!("file of {} bytes", f.size())),
            Err(e) => Err(refusal(&e)),
        };
        let pxe1 = "pxelinux.cfg/01-52-54-00-aa-00-01";
        assert_eq!(get(pxe1), Err((ErrorCode::FileNotFound, "not_found")));

        let publish = |inventory: Inventory| {
            live.publish(|_| Ok::<_, String>(Next::new(inventory, BootSettings::defaults())))
                .expect("published");
        };
        publish(inventory.clone());
        let booting = get(pxe1).expect("rendered");
        assert!(booting.contains("KERNEL debian/vmlinuz"), "{booting}");

        let mut used = inventory;
        used.set_consumed("node01", true);
        publish(used);
        let disk = get(pxe1).expect("rendered");
        assert!(disk.ends_with(render::PXELINUX_LOCAL), "{disk}");
        assert!(disk.contains("netboot = once, already used"), "{disk}");
        let grub = get("grub.cfg-01-52-54-00-aa-00-01").expect("rendered");
        assert!(grub.ends_with(render::GRUB_EXIT), "{grub}");

        assert_eq!(
            get("pxelinux.cfg/01-52-54-00-aa-00-02"),
            Err((ErrorCode::AccessViolation, "netboot_deny"))
        );
        assert_eq!(
            get("grub.cfg-01-52-54-00-aa-00-02"),
            Err((ErrorCode::AccessViolation, "netboot_deny"))
        );
        assert_eq!(get("undionly.kpxe"), Ok("file of 6 bytes".to_owned()));
    }

    #[test]
    fn refusals_follow_rfc1350() {
        assert_eq!(refusal(&FileError::NotFound).0, ErrorCode::FileNotFound);
        assert_eq!(
            refusal(&FileError::Denied("x")).0,
            ErrorCode::AccessViolation
        );
    }

    #[test]
    fn netascii_line_ends() {
        let mut out = Vec::new();
        push_netascii(b"a\nb\rc", &mut out);
        assert_eq!(out, b"a\r\nb\r\0c");
        // Converted in chunks, the result is the same as at once.
        let raw: Vec<u8> = (0..3 * NETASCII_CHUNK + 5)
            .map(|i| if i % 7 == 0 { b'\n' } else { b'x' })
            .collect();
        let mut whole = Vec::new();
        push_netascii(&raw, &mut whole);
        let chunked = netascii_copy(&Data::Memory(raw.clone().into())).expect("copy");
        assert_eq!(chunked, whole);
        assert!(chunked.capacity() as u64 <= netascii_worst_case(raw.len() as u64));
    }
}
