//! The HTTP image streamer: iPXE scripts and provisioning configs per host, kernels, initrds
//! and ISOs with ranges and conditional requests, and the `/booted` callback.
//!
//! [`range`], [`conditional`], [`request`] and [`response`] are pure HTTP semantics;
//! [`routes`] decides each answer; [`conn`] holds what the transports share. The transports
//! move bytes: [`uring`] (io_uring, a ring per core, splice) and [`epoll`] (tokio and
//! sendfile) where io_uring is unavailable.

mod cache;
pub mod conditional;
pub mod configs;
pub mod conn;
pub mod epoll;
pub mod ktls;
pub mod origin;
pub mod range;
pub mod request;
pub mod response;
pub mod routes;
mod scripts;
pub mod tls;
pub mod uring;

use std::{
    fmt,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    os::fd::OwnedFd,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use prometheus::{GaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{HttpBackend, HttpConfig},
    fabric::Iface,
    model::gate::Gate,
    model::ledger::Ledger,
    model::snapshot::Live,
};
use conn::{Limits, Metrics, Shared};
use routes::Site;

/// Why the HTTP service did not start, or stopped. Where a cause is in the text it is not
/// also a source, so that the daemon's `{:#}` prints it once.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A metric could not be registered (its name is taken in the registry).
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
    /// A fabric interface has no IPv4 address to listen on.
    #[error("http: interface {iface:?} has no IPv4 address")]
    NoAddress {
        /// The interface, as configured.
        iface: String,
    },
    /// `http.backend = "io_uring"` was asked for, and this kernel cannot give it.
    #[error("http.backend = \"io_uring\", but io_uring is unavailable: {why}")]
    UringUnavailable {
        /// What the probe found missing.
        why: uring::ProbeError,
    },
    /// A listening socket could not be bound.
    #[error("http: binding {addr}: {error}")]
    Bind {
        /// The address and port.
        addr: SocketAddr,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// A listener or a ring thread could not be set up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A ring stopped serving with an error.
    #[error("HTTP ring: {0}")]
    Ring(std::io::Error),
    /// HTTPS's runtime could not be started.
    #[error("https: starting its runtime: {0}")]
    HttpsRuntime(std::io::Error),
    /// A ring thread panicked.
    #[error("HTTP ring panicked")]
    RingPanicked,
    /// The task that waits for the rings to stop did not finish.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    /// `http.origin` cannot be used.
    #[error(transparent)]
    Origin(#[from] origin::OriginError),
    /// HTTPS's certificate or key cannot be used.
    #[error("{key}: {reason}")]
    Tls {
        /// The config key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// Why the service serves with epoll rather than io_uring.
enum NoUring {
    /// `http.backend = "epoll"`.
    Configured,
    /// The probe found the kernel's io_uring lacking.
    Unavailable(uring::ProbeError),
}

impl fmt::Display for NoUring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Configured => f.write_str("http.backend = \"epoll\""),
            Self::Unavailable(why) => why.fmt(f),
        }
    }
}

/// `rings` sets of listeners, each with one socket per address in `ips`, all on `port`; and
/// the address each interface listens on. Port 0 lets the kernel pick one per address, which
/// the other rings' sockets then share (SO_REUSEPORT).
fn listeners(
    ips: &[(IpAddr, String)],
    port: u16,
    rings: usize,
) -> Result<(Vec<Vec<OwnedFd>>, Vec<SocketAddr>), HttpError> {
    let mut sets: Vec<Vec<OwnedFd>> = (0..rings).map(|_| Vec::new()).collect();
    let mut local = Vec::new();
    for (ip, _) in ips {
        let mut addr = SocketAddr::new(*ip, port);
        for set in &mut sets {
            let fd = uring::listener(addr).map_err(|error| HttpError::Bind { addr, error })?;
            if addr.port() == 0 {
                let bound = socket2::SockRef::from(&fd)
                    .local_addr()
                    .map_err(|error| HttpError::Bind { addr, error })?;
                addr.set_port(bound.as_socket().map_or(0, |a| a.port()));
            }
            set.push(fd);
        }
        local.push(addr);
    }
    Ok((sets, local))
}

fn v4_only(addrs: &[SocketAddr]) -> Vec<SocketAddrV4> {
    addrs
        .iter()
        .filter_map(|a| match a {
            SocketAddr::V4(a) => Some(*a),
            SocketAddr::V6(_) => None,
        })
        .collect()
}

/// `http.workers`: 0 is one per core this process may run on.
fn workers(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// Listening sockets handed to the runtime (non-blocking, registered with its reactor).
fn on_runtime(fds: Vec<Vec<OwnedFd>>) -> std::io::Result<Vec<tokio::net::TcpListener>> {
    fds.into_iter()
        .flatten()
        .map(|fd| {
            let std: std::net::TcpListener = fd.into();
            std.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(std)
        })
        .collect()
}

enum Transport {
    Uring {
        workers: Vec<Vec<OwnedFd>>,
    },
    Epoll {
        listeners: Vec<tokio::net::TcpListener>,
    },
}

/// HTTPS, bound: a listener per interface and the certificate in use.
struct Https {
    listeners: Vec<OwnedFd>,
    /// Workers of its runtime.
    workers: usize,
    certs: Arc<tls::Certs>,
    /// Counts sessions by where their records are made.
    sessions: tls::Sessions,
    local: Vec<SocketAddr>,
}

/// The HTTP service, bound and ready.
pub struct HttpService {
    shared: Arc<Shared>,
    transport: Transport,
    https: Option<Https>,
    egress: GaugeVec,
    /// Where it listens: per interface its IPv4 address, then its IPv6 one if it has one.
    local: Vec<SocketAddr>,
}

/// What HTTP serves from besides its own section. `serve` takes each from where it is kept,
/// so the service reads no other section of the configuration.
pub struct Sources {
    /// The configuration snapshot (hosts, profiles, `[boot]`, script paths), loaded once per
    /// request.
    pub live: Arc<Live>,
    /// The ledger (leases for host lookup; boot events).
    pub ledger: Ledger,
    /// Hosts a reboot run holds until a download slot is theirs, and how long they wait
    /// between asks.
    pub gate: Gate,
}

impl HttpService {
    /// Binds the port on the IPv4 address of every interface in `ifaces` (the fabric), and on
    /// its IPv6 address beyond the link where it has one (DHCPv6 clients), and
    /// picks the transport. Port 0 (tests) binds a port the kernel picks, the same on every
    /// ring; [`HttpService::local_addrs`] says which.
    pub fn start(
        cfg: HttpConfig,
        ifaces: &[Iface],
        sources: Sources,
        registry: &Registry,
    ) -> Result<Self, HttpError> {
        let metrics = Metrics::register(registry)?;
        let egress = GaugeVec::new(
            Opts::new(
                "bootfabric_egress_bytes_per_second",
                "Bytes sent to boot clients (HTTP and TFTP) per second over the last 5 complete seconds, per interface and in total.",
            ),
            &["iface"],
        )?;
        registry.register(Box::new(egress.clone()))?;
        let mut ips = Vec::new();
        for iface in ifaces {
            let ip = iface.ipv4.ok_or_else(|| HttpError::NoAddress {
                iface: iface.name.clone(),
            })?;
            ips.push((IpAddr::V4(ip), iface.name.clone()));
            if let Some(v6) = iface.ipv6 {
                ips.push((IpAddr::V6(v6), iface.name.clone()));
            }
        }
        let origin_metrics = origin::Metrics::register(registry)?;
        let origin = match (&cfg.origin, &cfg.root) {
            (Some(o), Some(root)) => {
                let o = origin::Origin::new(o.clone(), root.clone(), origin_metrics)?;
                info!(origin = %o.url(), "HTTP: profile files missing under http.root are fetched from the origin");
                // A daemon killed mid-fetch left its temporary file; nothing else removes it.
                let sweep_root = root.clone();
                tokio::task::spawn_blocking(move || origin::sweep_stale(&sweep_root));
                Some(o)
            }
            _ => None,
        };
        let site = Site {
            origin,
            root: cfg.root.clone(),
            configs: cfg.configs.clone(),
            live: sources.live,
            ledger: sources.ledger,
            gate: sources.gate,
            boots: configs::Boots::new(Duration::from_secs(cfg.config_ttl_s)),
            config_metrics: configs::Metrics::register(registry)?,
            rendered: Default::default(),
            files: Default::default(),
        };
        let limits = Limits {
            max_connections: cfg.max_connections,
            max_per_client: cfg.max_per_client,
            header_timeout: Duration::from_secs(cfg.header_timeout_s),
            idle_timeout: Duration::from_secs(cfg.idle_timeout_s),
            send_timeout: Duration::from_secs(cfg.send_timeout_s),
        };
        let shared = Arc::new(Shared::new(site, limits, metrics, ips.clone()));
        let https = match &cfg.tls {
            Some(t) => {
                let path = tls::DataPath::probe(t.kernel);
                let certs = tls::Certs::load(&t.files, t.port, path.kernel()).map_err(
                    |crate::util::key_error::KeyError { key, reason }| HttpError::Tls {
                        key,
                        reason,
                    },
                )?;
                let (fds, local) = listeners(&ips, t.port, 1)?;
                let workers = workers(cfg.workers);
                for (addr, iface) in local.iter().zip(ips.iter().map(|(_, name)| name)) {
                    tls::announce(*addr, iface, workers);
                }
                let sessions = path.report(registry)?;
                Some(Https {
                    listeners: fds.into_iter().flatten().collect(),
                    workers,
                    certs,
                    sessions,
                    local,
                })
            }
            None => None,
        };
        let uring = match cfg.backend {
            HttpBackend::Epoll => Err(NoUring::Configured),
            _ => uring::probe().map_err(NoUring::Unavailable),
        };
        let uring = match (cfg.backend, uring) {
            (HttpBackend::IoUring, Err(NoUring::Unavailable(why))) => {
                return Err(HttpError::UringUnavailable { why })
            }
            (_, uring) => uring,
        };
        let (transport, local) = match uring {
            Ok(()) => {
                let n = workers(cfg.workers);
                let (workers, local) = listeners(&ips, cfg.port, n)?;
                for (addr, iface) in local.iter().zip(ips.iter().map(|(_, name)| name)) {
                    info!(%iface, "HTTP server listening on {addr} (io_uring, {n} rings, sendfile and splice)");
                }
                (Transport::Uring { workers }, local)
            }
            Err(why) => {
                warn!("HTTP: not using io_uring ({why}); serving with epoll and sendfile");
                let (fds, local) = listeners(&ips, cfg.port, 1)?;
                let listeners = on_runtime(fds)?;
                for (addr, iface) in local.iter().zip(ips.iter().map(|(_, name)| name)) {
                    info!(%iface, "HTTP server listening on {addr} (epoll, sendfile)");
                }
                (Transport::Epoll { listeners }, local)
            }
        };
        Ok(Self {
            shared,
            transport,
            https,
            egress,
            local,
        })
    }

    /// The IPv4 addresses listened on, one per interface, in fabric order.
    pub fn local_addrs(&self) -> Vec<SocketAddrV4> {
        v4_only(&self.local)
    }

    /// The IPv4 addresses HTTPS listens on, one per interface (none without `http.tls_cert`).
    pub fn tls_addrs(&self) -> Vec<SocketAddrV4> {
        self.https
            .as_ref()
            .map_or_else(Vec::new, |h| v4_only(&h.local))
    }

    /// The certificate HTTPS serves, for reloads to replace.
    pub fn certs(&self) -> Option<Arc<tls::Certs>> {
        self.https.as_ref().map(|h| Arc::clone(&h.certs))
    }

    /// Serves until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), HttpError> {
        let shared = Arc::clone(&self.shared);
        let egress = self.egress.clone();
        let ticker = cancel.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = ticker.cancelled() => return,
                    _ = tick.tick() => {}
                }
                // Kept files nobody asked for lately are closed off the serving threads.
                let idle = shared.site.files.sweep(std::time::Instant::now());
                if !idle.is_empty() {
                    tokio::task::spawn_blocking(move || drop(idle));
                }
                let rates = shared.site.ledger.egress_rates();
                let mut total = 0.0;
                for (iface, rate) in &rates {
                    total += rate;
                    egress.with_label_values(&[iface]).set(*rate);
                }
                egress.with_label_values(&["total"]).set(total);
            }
        });
        // HTTPS runs on its own runtime whichever transport plain HTTP has.
        let https = match self.https.take() {
            Some(h) => Some(
                tls::Runtime::start(
                    h.listeners,
                    h.workers,
                    Arc::clone(&self.shared),
                    h.certs,
                    h.sessions,
                    cancel.clone(),
                )
                .map_err(HttpError::HttpsRuntime)?,
            ),
            None => None,
        };
        let plain = self.serve_plain(cancel).await;
        if let Some(h) = https {
            // It stops on the same `cancel`; a worker stuck on a hung store is left behind
            // after a second, so this wait is bounded.
            tokio::task::spawn_blocking(move || h.join()).await?;
        }
        plain
    }

    /// Serves plain HTTP on its transport until `cancel` fires.
    async fn serve_plain(self, cancel: CancellationToken) -> Result<(), HttpError> {
        match self.transport {
            Transport::Epoll { listeners } => {
                let mut tasks = tokio::task::JoinSet::new();
                for l in listeners {
                    tasks.spawn(epoll::serve(l, Arc::clone(&self.shared), cancel.clone()));
                }
                while tasks.join_next().await.is_some() {}
                Ok(())
            }
            Transport::Uring { workers } => {
                let stop = Arc::new(AtomicBool::new(false));
                let mut threads = Vec::new();
                for (i, listeners) in workers.into_iter().enumerate() {
                    let (shared, stop) = (Arc::clone(&self.shared), Arc::clone(&stop));
                    let failing = cancel.clone();
                    threads.push(
                        std::thread::Builder::new()
                            .name(format!("http-ring-{i}"))
                            .spawn(move || {
                                let res = uring::worker(listeners, shared, stop);
                                // A ring that fails stops the daemon, as any failed service.
                                if res.is_err() {
                                    failing.cancel();
                                }
                                res
                            })?,
                    );
                }
                cancel.cancelled().await;
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                // The rings see the flag on their next one-second tick.
                tokio::task::spawn_blocking(move || {
                    let mut failed = None;
                    for t in threads {
                        match t.join() {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => failed = Some(HttpError::Ring(e)),
                            Err(_) => failed = Some(HttpError::RingPanicked),
                        }
                    }
                    failed.map_or(Ok(()), Err)
                })
                .await?
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::model::{boot::BootSettings, inventory::Inventory, snapshot::Next};

    /// A live snapshot at generation 1 of `inventory` (its script: `boot.ipxe`, the default).
    fn live(inventory: Inventory) -> Arc<Live> {
        Live::unregistered(Next::new(inventory, BootSettings::defaults()))
    }

    fn config(root: &Path, backend: HttpBackend) -> HttpConfig {
        HttpConfig {
            root: Some(root.canonicalize().expect("root")),
            configs: None,
            port: 0,
            backend,
            workers: 2,
            max_connections: 16,
            max_per_client: 4,
            header_timeout_s: 10,
            idle_timeout_s: 10,
            send_timeout_s: 10,
            config_ttl_s: 60,
            origin: None,
            tls: None,
        }
    }

    fn sources(registry: &Registry) -> Sources {
        Sources {
            live: live(Inventory::default()),
            ledger: Ledger::new(registry).expect("ledger"),
            gate: Gate::default(),
        }
    }

    /// One `GET` with `Connection: close`: the status line and the body.
    async fn get(addr: SocketAddrV4, path: &str) -> (String, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("receive");
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&out[..end]).into_owned();
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, out[end + 4..].to_vec())
    }

    /// Starts the service on 127.0.0.1, port 0, with `backend`, fetches a file through a real
    /// socket, and stops it.
    async fn serves_a_file(backend: HttpBackend) {
        let root = tempfile::tempdir().expect("tempdir");
        // Several pages, so that sendfile or splice take more than one step.
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.path().join("vmlinuz"), &image).expect("write");
        let registry = Registry::new();
        let service = HttpService::start(
            config(root.path(), backend),
            &[crate::fabric::loopback()],
            sources(&registry),
            &registry,
        )
        .expect("start");
        let [addr] = service.local_addrs()[..] else {
            panic!("one address per interface: {:?}", service.local_addrs());
        };
        assert_eq!(*addr.ip(), Ipv4Addr::LOCALHOST);
        assert_ne!(addr.port(), 0, "the port the kernel picked");
        let cancel = CancellationToken::new();
        let running = tokio::spawn(service.run(cancel.clone()));
        let (status, body) = get(addr, "/vmlinuz").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body == image, "{} bytes, not the file's", body.len());
        let (status, _) = get(addr, "/nothing-here").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        cancel.cancel();
        running.await.expect("joined").expect("stopped cleanly");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn epoll_serves_a_file_on_port_0() {
        serves_a_file(HttpBackend::Epoll).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn io_uring_serves_a_file_on_port_0() {
        if let Err(why) = uring::probe() {
            // Not a pass: the epoll test covers this machine, the lab test io_uring.
            eprintln!("io_uring unavailable here ({why}); only epoll is tested");
            return;
        }
        serves_a_file(HttpBackend::IoUring).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_host_is_told_the_retry_interval_serve_hands_in() {
        let root = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        let text = r#"
            [profiles.debian]
            kernel = "debian/vmlinuz"

            [[hosts]]
            name = "node01"
            mac = "52:54:00:aa:00:01"
            profile = "debian"
        "#;
        let wire = toml::from_str(text).expect("inventory");
        let inventory = Inventory::from_wire(Path::new("hosts.toml"), wire).expect("valid");
        let mac = "52:54:00:aa:00:01".parse().expect("mac");
        let gate = Gate::new(crate::model::gate::GateSettings {
            retry_s: 7,
            ..Default::default()
        });
        gate.enroll(mac);
        let sources = Sources {
            live: live(inventory),
            gate,
            ledger: Ledger::new(&registry).expect("ledger"),
        };
        let service = HttpService::start(
            config(root.path(), HttpBackend::Epoll),
            &[crate::fabric::loopback()],
            sources,
            &registry,
        )
        .expect("start");
        let addr = service.local_addrs()[0];
        let cancel = CancellationToken::new();
        let running = tokio::spawn(service.run(cancel.clone()));
        let (status, body) = get(addr, "/boot.ipxe?mac=52:54:00:aa:00:01").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("asking again in 7 s\nsleep 7\n"), "{body}");
        cancel.cancel();
        running.await.expect("joined").expect("stopped cleanly");
    }

    /// [`get`] from the source address `src` (any of 127/8 is this machine's).
    async fn get_from(src: Ipv4Addr, addr: SocketAddrV4, path: &str) -> String {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddrV4::new(src, 0).into()).expect("bind");
        let mut s = sock.connect(addr.into()).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("receive");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// With `gate = "always"` and one slot: a host is the one at the address it asks from,
    /// and only such a host queues. A claimed `?mac=` from an address the server cannot
    /// place neither queues nor takes a slot, and goes through (it would wait for ever: a
    /// host leased by another DHCP server), counted; from another host's address it is
    /// ignored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_gate_queues_hosts_by_their_address_never_by_a_claimed_mac() {
        let root = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        let text = r#"
            [profiles.debian]
            kernel = "debian/vmlinuz"

            [[hosts]]
            name = "node01"
            mac = "52:54:00:aa:00:01"
            ip = "127.0.0.2"
            profile = "debian"

            [[hosts]]
            name = "node02"
            mac = "52:54:00:aa:00:02"
            ip = "127.0.0.3"
            profile = "debian"

            [[hosts]]
            name = "node03"
            mac = "52:54:00:aa:00:03"
            profile = "debian"
        "#;
        let wire = toml::from_str(text).expect("inventory");
        let inventory = Inventory::from_wire(Path::new("hosts.toml"), wire).expect("valid");
        let gate = Gate::with_metrics(
            crate::model::gate::GateSettings {
                mode: crate::model::gate::GateMode::Always,
                slots: 1,
                ..Default::default()
            },
            &registry,
        )
        .expect("gate metrics");
        let sources = Sources {
            live: live(inventory),
            gate: gate.clone(),
            ledger: Ledger::new(&registry).expect("ledger"),
        };
        let service = HttpService::start(
            config(root.path(), HttpBackend::Epoll),
            &[crate::fabric::loopback()],
            sources,
            &registry,
        )
        .expect("start");
        let addr = service.local_addrs()[0];
        let cancel = CancellationToken::new();
        let running = tokio::spawn(service.run(cancel.clone()));
        let ip = |d: u8| Ipv4Addr::new(127, 0, 0, d);
        let waits = |text: &str| text.contains("waits for a download slot");
        let go = get_from(ip(2), addr, "/boot.ipxe").await;
        assert!(go.contains("kernel ") && go.contains("for node01"), "{go}");
        let second = get_from(ip(3), addr, "/boot.ipxe").await;
        assert!(
            waits(&second) && second.contains("node02 waits"),
            "{second}"
        );
        assert_eq!((gate.load(), gate.settings().slots), ((1, 1), 1));
        // node02's address claiming node01's MAC is still node02: no slot through node01.
        let claimed = get_from(ip(3), addr, "/boot.ipxe?mac=52:54:00:aa:00:01").await;
        assert!(claimed.contains("node02 waits"), "{claimed}");
        // An address nobody holds, claiming MACs (node03 has no reservation: another
        // server's lease): never queued, never a slot, let through unpaced and counted.
        for m in ["01", "02", "03"] {
            let path = format!("/boot.ipxe?mac=52:54:00:aa:00:{m}");
            let text = get_from(ip(9), addr, &path).await;
            assert!(!waits(&text) && text.contains("kernel "), "{text}");
        }
        assert_eq!(gate.waiting(), 1, "node02 alone holds a place");
        assert_eq!(gate.load(), (1, 1), "node01 alone holds the slot");
        let unplaced = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "bootfabric_gate_unplaced_total")
            .map(|f| f.get_metric()[0].get_counter().get_value());
        assert_eq!(
            unplaced,
            Some(2.0),
            "node02 and node03, not node01 (admitted)"
        );
        let place = get_from(ip(3), addr, "/boot.ipxe").await;
        assert!(place.contains("node02 waits"), "{place}");
        cancel.cancel();
        running.await.expect("joined").expect("stopped cleanly");
    }

    #[test]
    fn every_ring_listens_on_the_port_the_kernel_picked() {
        let ips = [(Ipv4Addr::LOCALHOST.into(), "lo".to_owned())];
        let (rings, local) = listeners(&ips, 0, 3).expect("bound");
        let port = |fd: &OwnedFd| {
            let addr = socket2::SockRef::from(fd).local_addr().expect("bound");
            addr.as_socket().expect("inet").port()
        };
        assert_eq!(rings.len(), 3);
        assert_eq!(local.len(), 1);
        assert_ne!(local[0].port(), 0);
        for ring in &rings {
            assert_eq!(ring.len(), 1, "one socket per address");
            assert_eq!(port(&ring[0]), local[0].port());
        }
    }

    /// Each request answers from the snapshot in effect when it arrives: a host published
    /// after the start is served at the next request, and its netboot is followed (a used
    /// `once` gets iPXE's `exit`, `deny` a 403 on its script and its configs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_request_answers_from_the_snapshot_in_effect() {
        let root = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        let text = r#"
            [profiles.debian]
            kernel = "debian/vmlinuz"

            [[hosts]]
            name = "node01"
            mac = "52:54:00:aa:00:01"
            ip = "127.0.0.1"
            profile = "debian"
            netboot = "once"

            [[hosts]]
            name = "node02"
            mac = "52:54:00:aa:00:02"
            profile = "debian"
            netboot = "deny"
        "#;
        let wire = toml::from_str(text).expect("inventory");
        let inventory = Inventory::from_wire(Path::new("hosts.toml"), wire).expect("valid");
        let live = live(Inventory::default());
        let sources = Sources {
            live: Arc::clone(&live),
            gate: Gate::default(),
            ledger: Ledger::new(&registry).expect("ledger"),
        };
        let mut cfg = config(root.path(), HttpBackend::Epoll);
        let configs = tempfile::tempdir().expect("configs");
        std::fs::write(configs.path().join("node.ign"), "{host}").expect("template");
        cfg.configs = Some(configs.path().canonicalize().expect("configs"));
        let service = HttpService::start(cfg, &[crate::fabric::loopback()], sources, &registry)
            .expect("start");
        let addr = service.local_addrs()[0];
        let cancel = CancellationToken::new();
        let running = tokio::spawn(service.run(cancel.clone()));
        let publish = |inventory: Inventory| {
            live.publish(|_| Ok::<_, String>(Next::new(inventory, BootSettings::defaults())))
                .expect("published");
        };
        let script = |mac: &str| format!("/boot.ipxe?mac={mac}");

        let (_, body) = get(addr, &script("52:54:00:aa:00:01")).await;
        assert!(String::from_utf8_lossy(&body).contains("not in the inventory"));
        publish(inventory.clone());
        let (status, body) = get(addr, &script("52:54:00:aa:00:01")).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            body.contains("for node01") && body.contains("kernel "),
            "{body}"
        );

        let mut used = inventory;
        used.set_consumed("node01", true);
        publish(used);
        let (status, body) = get(addr, &script("52:54:00:aa:00:01")).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            body.starts_with("#!ipxe\n") && body.ends_with("\nexit\n"),
            "{body}"
        );
        assert!(!body.contains("kernel "), "{body}");
        // node01 asks from 127.0.0.1, its reservation: no config for a host booting its disk.
        let (status, _) = get(addr, "/configs/node.ign").await;
        assert_eq!(status, "HTTP/1.1 409 Conflict");

        // node02 asks from an address the server cannot place, naming itself by `?mac=`.
        let resp = get_from(
            Ipv4Addr::new(127, 0, 0, 9),
            addr,
            &script("52:54:00:aa:00:02"),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 403 Forbidden"), "{resp}");
        cancel.cancel();
        running.await.expect("joined").expect("stopped cleanly");
    }

    /// The sum of every sample of the counter `name` in `registry`.
    fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
        registry
            .gather()
            .into_iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    }

    /// One request with extra header lines: the whole head and the body.
    async fn get_with(addr: SocketAddrV4, path: &str, headers: &str) -> (String, Vec<u8>) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("receive");
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&out[..end]).into_owned();
        (head, out[end + 4..].to_vec())
    }

    fn sha256(bytes: &[u8]) -> String {
        use sha2::Digest as _;
        crate::redfish::tls::hex(&sha2::Sha256::digest(bytes))
    }

    /// A rack fabric (`backend`) whose `http.origin` is another fabric (epoll), both real
    /// services on loopback. Concurrent misses of one file cost the origin one request and
    /// all get its bytes; a Range of a file not fetched yet is served from the fetched file;
    /// a path no profile names is a 404 with no origin traffic; a file whose bytes do not
    /// match the profile's sha256 is removed, counted and answered 502 with Retry-After,
    /// and a request within the backoff does not reach the origin.
    async fn pulls_from_the_origin(backend: HttpBackend) {
        let origin_root = tempfile::tempdir().expect("origin root");
        let kernel: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let initrd: Vec<u8> = (0..400_000u32).map(|i| (i % 241) as u8).collect();
        std::fs::create_dir_all(origin_root.path().join("debian")).expect("dir");
        std::fs::write(origin_root.path().join("debian/linux"), &kernel).expect("kernel");
        std::fs::write(origin_root.path().join("debian/initrd.gz"), &initrd).expect("initrd");
        std::fs::write(
            origin_root.path().join("debian/other"),
            b"not a profile file",
        )
        .expect("other");
        std::fs::write(origin_root.path().join("evil"), b"tampered").expect("evil");
        let origin_registry = Registry::new();
        let origin = HttpService::start(
            config(origin_root.path(), HttpBackend::Epoll),
            &[crate::fabric::loopback()],
            sources(&origin_registry),
            &origin_registry,
        )
        .expect("origin");
        let origin_addr = origin.local_addrs()[0];
        let cancel = CancellationToken::new();
        let origin_run = tokio::spawn(origin.run(cancel.clone()));

        let text = format!(
            r#"
            [profiles.debian]
            kernel = "debian/linux"
            initrd = ["/debian/initrd.gz"]
            sha256 = {{ "debian/linux" = "{}" }}

            [profiles.evil]
            kernel = "evil"
            sha256 = {{ evil = "{}" }}
            "#,
            sha256(&kernel),
            sha256(b"genuine")
        );
        let inventory = Inventory::from_wire(
            Path::new("hosts.toml"),
            toml::from_str(&text).expect("toml"),
        )
        .expect("inventory");
        let rack_root = tempfile::tempdir().expect("rack root");
        let mut cfg = config(rack_root.path(), backend);
        cfg.origin = Some(crate::config::origin::OriginConfig {
            url: crate::config::origin::OriginUrl::parse(&format!("http://{origin_addr}/"))
                .expect("url"),
            max_bytes: 1 << 30,
            timeout: Duration::from_secs(60),
            ca: None,
        });
        cfg.max_per_client = 64;
        cfg.max_connections = 64;
        let registry = Registry::new();
        let sources = Sources {
            live: live(inventory),
            ledger: Ledger::new(&registry).expect("ledger"),
            gate: Gate::default(),
        };
        let rack = HttpService::start(cfg, &[crate::fabric::loopback()], sources, &registry)
            .expect("rack");
        let addr = rack.local_addrs()[0];
        let rack_run = tokio::spawn(rack.run(cancel.clone()));
        let origin_requests = || counter(&origin_registry, "bootfabric_http_requests_total", &[]);

        // Paths no profile names: 404 (or refused), and the origin hears nothing.
        for path in [
            "/debian/other",
            "/nothing",
            "/debian/../evil",
            "/debian/.linux.1-1.origin-part",
        ] {
            let (head, _) = get_with(addr, path, "").await;
            assert!(head.starts_with("HTTP/1.1 40"), "{path}: {head}");
        }
        assert_eq!(
            origin_requests(),
            0.0,
            "the origin was asked for a path no profile names"
        );

        // A Range of a file not fetched yet.
        let (head, body) = get_with(addr, "/debian/initrd.gz", "Range: bytes=1000-1999\r\n").await;
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert!(body == initrd[1000..2000], "range body differs");
        assert_eq!(origin_requests(), 1.0);

        // Concurrent misses of the kernel: one origin request, every client the same bytes.
        let clients: Vec<_> = (0..12)
            .map(|_| tokio::spawn(async move { get_with(addr, "/debian/linux", "").await }))
            .collect();
        for c in clients {
            let (head, body) = c.await.expect("client");
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(body == kernel, "{} bytes, not the kernel's", body.len());
        }
        assert_eq!(origin_requests(), 2.0, "one origin request per file");
        assert_eq!(
            counter(
                &registry,
                "bootfabric_http_origin_fetches_total",
                &[("result", "ok")]
            ),
            2.0
        );
        assert_eq!(
            counter(&registry, "bootfabric_http_origin_waiters", &[]),
            0.0
        );
        let stored = std::fs::read(rack_root.path().join("debian/linux")).expect("stored");
        assert!(stored == kernel, "the stored kernel differs");

        // A mismatch: 502 with Retry-After, nothing stored, counted; within the backoff the
        // origin is not asked again.
        let (head, body) = get_with(addr, "/evil", "").await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        assert!(head.contains("Retry-After: "), "{head}");
        assert!(String::from_utf8_lossy(&body).contains("SHA-256 mismatch"));
        assert!(
            !rack_root.path().join("evil").exists(),
            "a mismatching file was kept"
        );
        let leftovers: Vec<_> = std::fs::read_dir(rack_root.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        assert_eq!(
            counter(
                &registry,
                "bootfabric_http_origin_fetches_total",
                &[("result", "mismatch")]
            ),
            1.0
        );
        assert_eq!(origin_requests(), 3.0);
        let (head, _) = get_with(addr, "/evil", "").await;
        assert!(head.starts_with("HTTP/1.1 502"), "{head}");
        assert_eq!(origin_requests(), 3.0, "retried within the backoff");

        cancel.cancel();
        rack_run.await.expect("joined").expect("rack stopped");
        origin_run.await.expect("joined").expect("origin stopped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn epoll_pulls_each_file_from_the_origin_once() {
        // A bound, not a timing check: a request left waiting fails the test, not hangs it.
        tokio::time::timeout(
            Duration::from_secs(120),
            pulls_from_the_origin(HttpBackend::Epoll),
        )
        .await
        .expect("every request answered");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn io_uring_pulls_each_file_from_the_origin_once() {
        if let Err(why) = uring::probe() {
            eprintln!("io_uring unavailable here ({why}); only epoll is tested");
            return;
        }
        // A bound, not a timing check: a request left waiting fails the test, not hangs it.
        tokio::time::timeout(
            Duration::from_secs(120),
            pulls_from_the_origin(HttpBackend::IoUring),
        )
        .await
        .expect("every request answered");
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
        let Err(e) = HttpService::start(
            config(root.path(), HttpBackend::Epoll),
            &[bare],
            sources(&registry),
            &registry,
        ) else {
            panic!("started without an address");
        };
        assert_eq!(
            e.to_string(),
            r#"http: interface "fab0" has no IPv4 address"#
        );
    }
}
