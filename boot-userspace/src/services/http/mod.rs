//! The HTTP image streamer: iPXE scripts and provisioning configs per host, kernels, initrds
//! and ISOs with ranges and conditional requests, and the `/booted` callback.
//!
//! [`range`], [`conditional`], [`request`] and [`response`] are pure HTTP semantics;
//! [`routes`] decides each answer; [`conn`] holds what the transports share. The transports
//! move bytes: [`uring`] (io_uring, a ring per core, splice) and [`epoll`] (tokio and
//! sendfile) where io_uring is unavailable.

pub mod conditional;
pub mod configs;
pub mod conn;
pub mod epoll;
pub mod range;
pub mod request;
pub mod response;
pub mod routes;
pub mod uring;

use std::{
    fmt,
    net::SocketAddrV4,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use prometheus::{GaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{Config, HttpBackend, HttpConfig},
    model::ledger::Ledger,
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
        addr: SocketAddrV4,
        /// What the kernel said.
        error: std::io::Error,
    },
    /// A listener or a ring thread could not be set up.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A ring stopped serving with an error.
    #[error("HTTP ring: {0}")]
    Ring(std::io::Error),
    /// A ring thread panicked.
    #[error("HTTP ring panicked")]
    RingPanicked,
    /// The task that waits for the rings to stop did not finish.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
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

enum Transport {
    Uring {
        workers: Vec<Vec<std::os::fd::OwnedFd>>,
    },
    Epoll {
        listeners: Vec<tokio::net::TcpListener>,
    },
}

/// The HTTP service, bound and ready.
pub struct HttpService {
    shared: Arc<Shared>,
    transport: Transport,
    egress: GaugeVec,
}

impl HttpService {
    /// Binds the port on every fabric interface's address and picks the transport.
    pub fn start(
        config: &Config,
        cfg: HttpConfig,
        registry: &Registry,
        ledger: Ledger,
        gate: crate::model::gate::Gate,
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
        let mut addrs = Vec::new();
        for iface in &config.interfaces {
            let ip =
                crate::services::dhcp::iface_ipv4(iface).ok_or_else(|| HttpError::NoAddress {
                    iface: iface.clone(),
                })?;
            addrs.push((ip, iface.clone()));
        }
        let scripts = config.ipxe_script_names();
        let site = Site {
            root: cfg.root.clone(),
            configs: cfg.configs.clone(),
            inventory: config.inventory.clone(),
            boot: config.boot.clone(),
            scripts,
            ledger,
            gate,
            gate_retry_s: config.scheduler.gate_retry_s,
            boots: configs::Boots::new(Duration::from_secs(cfg.config_ttl_s)),
            config_metrics: configs::Metrics::register(registry)?,
        };
        let limits = Limits {
            max_connections: cfg.max_connections,
            max_per_client: cfg.max_per_client,
            header_timeout: Duration::from_secs(cfg.header_timeout_s),
            idle_timeout: Duration::from_secs(cfg.idle_timeout_s),
            send_timeout: Duration::from_secs(cfg.send_timeout_s),
        };
        let shared = Arc::new(Shared::new(site, limits, metrics, addrs.clone()));
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
        let sockets = |n: usize| -> Result<Vec<Vec<std::os::fd::OwnedFd>>, HttpError> {
            (0..n)
                .map(|_| {
                    addrs
                        .iter()
                        .map(|(ip, _)| {
                            let addr = SocketAddrV4::new(*ip, cfg.port);
                            uring::listener(addr).map_err(|error| HttpError::Bind { addr, error })
                        })
                        .collect()
                })
                .collect()
        };
        let transport = match uring {
            Ok(()) => {
                let n = match cfg.workers {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => n,
                };
                for (ip, iface) in &addrs {
                    info!(%iface, "HTTP server listening on {ip}:{} (io_uring, {n} rings, splice)", cfg.port);
                }
                Transport::Uring {
                    workers: sockets(n)?,
                }
            }
            Err(why) => {
                warn!("HTTP: not using io_uring ({why}); serving with epoll and sendfile");
                let mut listeners = Vec::new();
                for fd in sockets(1)?.into_iter().flatten() {
                    let std: std::net::TcpListener = fd.into();
                    std.set_nonblocking(true)?;
                    listeners.push(tokio::net::TcpListener::from_std(std)?);
                }
                for (ip, iface) in &addrs {
                    info!(%iface, "HTTP server listening on {ip}:{} (epoll, sendfile)", cfg.port);
                }
                Transport::Epoll { listeners }
            }
        };
        Ok(Self {
            shared,
            transport,
            egress,
        })
    }

    /// Serves until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), HttpError> {
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
                let rates = shared.site.ledger.egress_rates();
                let mut total = 0.0;
                for (iface, rate) in &rates {
                    total += rate;
                    egress.with_label_values(&[iface]).set(*rate);
                }
                egress.with_label_values(&["total"]).set(total);
            }
        });
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
