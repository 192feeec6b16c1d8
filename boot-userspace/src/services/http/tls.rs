//! HTTPS beside HTTP: rustls for the handshake and the records, the same routes, limits and
//! timeouts as plain HTTP (the connection loop is [`epoll::connection`]'s).
//!
//! The certificate and key are read at start and again on every reload (SIGHUP), so a
//! renewed certificate is served without a restart; one that does not load is refused and
//! the one in use stays.
//!
//! HTTPS has a runtime of its own (`bootfabric-tls`, `http.workers` workers, one per core by
//! default), and routes requests (files canonicalised, opened and stat'ed) on its workers, as
//! the io_uring rings route plain HTTP on theirs. Routed on the blocking pool instead, each
//! request waited for a thread on the other core and back: a fifth of the 1 MiB ranges one
//! connection got (bench/results/http-experiments/2026-12-02-https-routing-inline). On the
//! file runtime that hop was needed, since a worker stuck on a hung image store would stall
//! TFTP there; on its own runtime such a worker stalls HTTPS only, which waits on the store
//! anyway. Image bytes pass through the daemon here: a file body is read (from the page cache
//! on the worker when it is there, else on the runtime's blocking pool) and encrypted by
//! rustls.
//! Kernel TLS, which would let `sendfile` carry them as over plain HTTP, is not used: the
//! daemon says so at start and in `bootfabric_http_tls_data_path`, with whether this kernel
//! has it at all.

use std::{
    os::{fd::OwnedFd, unix::fs::FileExt as _},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use prometheus::{IntGaugeVec, Opts, Registry};
use tokio::{io::AsyncWriteExt as _, net::TcpListener};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    cache,
    conn::{Exchange, Shared},
    epoll::{self, BodyError, Wire},
};
use crate::{config::secrets::tls::ServerTls, util::key_error::KeyError};

/// Bytes of a file read, encrypted and written at once: two full TLS records, and little
/// memory per connection (every connection sending a body holds one). The size sets how soon
/// a client has bytes to decrypt while the next ones are encrypted: at 64 KiB, 1 MiB ranges on
/// one connection, server and client sharing two cores, came at 450-520 MiB/s (0.56x nginx),
/// each side idle while the other worked; at 32 KiB 830-1010 (1.35x), at 16 KiB 770-900 with
/// more system time per GiB (bench/results/http-experiments/2026-12-02-https-chunk).
const CHUNK: usize = 32 * 1024;

/// Blocking threads of the HTTPS runtime at most: chunks read from disk (not the page cache)
/// at once. When a hung store holds them all, later reads queue.
const BLOCKING_THREADS: usize = 64;

/// The certificate HTTPS serves, replaced on reload.
pub struct Certs {
    current: ArcSwap<rustls::ServerConfig>,
    /// The port HTTPS listens on (a reload cannot move it).
    port: u16,
}

impl Certs {
    /// Reads the certificate and key; an error names the key whose file is at fault.
    pub fn load(files: &ServerTls, port: u16) -> Result<Arc<Self>, KeyError> {
        let config = crate::config::secrets::tls::server_config(files)?;
        Ok(Arc::new(Self {
            current: ArcSwap::new(config),
            port,
        }))
    }

    /// The port HTTPS listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Reads the files again (a reload): new handshakes get the new certificate; on an error
    /// the one in use stays.
    pub fn reload(&self, files: &ServerTls) -> Result<(), KeyError> {
        let config = crate::config::secrets::tls::server_config(files)?;
        self.current.store(config);
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

/// Where TLS records are made: always in the daemon today. `kernel` says whether this kernel
/// registers the `tls` upper layer protocol (kTLS) at all.
pub struct DataPath {
    /// The kernel's kTLS, if it has it.
    pub kernel: bool,
}

impl DataPath {
    /// Reads `/proc/sys/net/ipv4/tcp_available_ulp` (the upper layer protocols the kernel
    /// has registered; `tls` is kTLS).
    pub fn probe() -> Self {
        let ulps =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
        Self {
            kernel: ulps.split_whitespace().any(|u| u == "tls"),
        }
    }

    /// The metric's `reason` label.
    fn reason(&self) -> &'static str {
        if self.kernel {
            "ktls_not_used"
        } else {
            "no_ktls_in_kernel"
        }
    }

    /// Logs the data path and sets `bootfabric_http_tls_data_path`.
    pub fn report(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "bootfabric_http_tls_data_path",
                "Where HTTPS records are encrypted (path: userspace or kernel), and why.",
            ),
            &["path", "reason"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        gauge
            .with_label_values(&["userspace", self.reason()])
            .set(1);
        if self.kernel {
            info!("HTTPS: records are encrypted by rustls in the daemon; this kernel's kTLS is not used");
        } else {
            warn!(
                "HTTPS: this kernel has no kTLS (no `tls` in net.ipv4.tcp_available_ulp): records \
                 are encrypted by rustls in the daemon, and image bytes pass through it"
            );
        }
        Ok(())
    }
}

/// HTTPS on its runtime, running until `cancel` fires.
pub struct Runtime {
    thread: std::thread::JoinHandle<()>,
}

impl Runtime {
    /// Starts a runtime of `workers` threads named `bootfabric-tls` and serves HTTPS there on
    /// `listeners` (bound, listening). Fails if the runtime or the listeners cannot be set up.
    pub fn start(
        listeners: Vec<OwnedFd>,
        workers: usize,
        shared: Arc<Shared>,
        certs: Arc<Certs>,
        cancel: CancellationToken,
    ) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .max_blocking_threads(BLOCKING_THREADS)
            .enable_all()
            .thread_name("bootfabric-tls")
            .build()?;
        // Registered with this runtime's reactor, not the caller's.
        let listeners = {
            let _in = rt.enter();
            listeners
                .into_iter()
                .map(|fd| {
                    let std: std::net::TcpListener = fd.into();
                    std.set_nonblocking(true)?;
                    TcpListener::from_std(std)
                })
                .collect::<std::io::Result<Vec<_>>>()?
        };
        let thread = std::thread::Builder::new()
            .name("bootfabric-tls".into())
            .spawn(move || {
                rt.block_on(async {
                    for l in listeners {
                        tokio::spawn(serve(
                            l,
                            Arc::clone(&shared),
                            Arc::clone(&certs),
                            cancel.clone(),
                        ));
                    }
                    // Waited for here, not through the tasks: with every worker stuck on a
                    // hung store, none of them would see it.
                    cancel.cancelled().await;
                });
                // The tasks see `cancel` and end; a worker stuck on a hung store cannot be
                // joined, and is left behind after this.
                rt.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(Self { thread })
    }

    /// Waits (on the calling thread) until the runtime has stopped.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

/// Accepts HTTPS connections on `listener` until `cancel` fires: each handshake is bounded by
/// the head timeout and counted when it fails; then the connection is served as HTTP's.
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    certs: Arc<Certs>,
    cancel: CancellationToken,
) {
    epoll::accept(
        listener,
        shared,
        cancel,
        "HTTPS",
        |stream, peer, local, shared| {
            // The certificate in use at accept: a reload changes the next connections' only.
            let acceptor = certs.acceptor();
            async move {
                let shake =
                    tokio::time::timeout(shared.limits.header_timeout, acceptor.accept(stream))
                        .await;
                match shake {
                    Ok(Ok(mut tls)) => {
                        epoll::connection(&mut tls, peer, local, Arc::clone(&shared)).await;
                        // close_notify, so that a client reading to the end sees a clean end (a
                        // client gone already costs the bound, once).
                        let _ =
                            tokio::time::timeout(std::time::Duration::from_secs(1), tls.shutdown())
                                .await;
                    }
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "HTTPS handshake failed");
                        shared.metrics.refused("tls_handshake");
                    }
                    Err(_) => shared.metrics.refused("timeout"),
                }
            }
        },
    )
    .await;
}

/// `CHUNK` bytes (fewer at the end) of `file` from `offset` into `buf`: on this thread when
/// the page cache holds them, else on the blocking pool (a disk read must not stall the
/// runtime's workers; a file in memory is always read here). Returns the buffer and the bytes
/// read.
async fn read_chunk(
    file: &Arc<std::fs::File>,
    in_memory: bool,
    mut buf: Vec<u8>,
    offset: u64,
    want: usize,
) -> std::io::Result<(Vec<u8>, usize)> {
    buf.resize(want, 0);
    if in_memory || cache::holds(file, offset, want as u64) {
        let n = file.read_at(&mut buf, offset)?;
        return Ok((buf, n));
    }
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || {
        let n = file.read_at(&mut buf, offset)?;
        Ok((buf, n))
    })
    .await
    .map_err(std::io::Error::other)?
}

impl Wire for TlsStream<tokio::net::TcpStream> {
    // rustls writes whole records, the head with the body's first; corked, a quarter of the
    // 1 MiB ranges on one connection waited 2-3 ms longer (bench/http https-range:1,
    // 458 MiB/s corked, 765 not).
    const CORKS: bool = false;
    // The HTTPS runtime serves nothing else (module comment).
    const ROUTES_INLINE: bool = true;
    // The client copies records it decrypted into its own buffers, not the file's pages.
    const ALIGNS: bool = false;

    fn tcp(&self) -> &tokio::net::TcpStream {
        self.get_ref().0
    }

    async fn send_file(
        &mut self,
        file: &Arc<std::fs::File>,
        offset: u64,
        len: u64,
        in_memory: bool,
        shared: &Shared,
        x: &mut Exchange,
    ) -> Result<(), BodyError> {
        let mut buf = Vec::with_capacity(CHUNK);
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let want = (end - at).min(CHUNK as u64) as usize;
            let step = async {
                let (b, n) =
                    read_chunk(file, in_memory, std::mem::take(&mut buf), at, want).await?;
                buf = b;
                if n == 0 {
                    // The file is shorter than when it was opened.
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                self.write_all(&buf[..n]).await?;
                Ok::<_, std::io::Error>(n)
            };
            match tokio::time::timeout(shared.limits.send_timeout, step).await {
                Ok(Ok(n)) => {
                    at += n as u64;
                    x.sent(shared, n as u64);
                }
                Ok(Err(_)) => return Err(BodyError::Failed),
                Err(_) => return Err(BodyError::Timeout),
            }
        }
        let flushed = tokio::time::timeout(shared.limits.send_timeout, self.flush()).await;
        match flushed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BodyError::Failed),
            Err(_) => Err(BodyError::Timeout),
        }
    }
}

/// Logs where HTTPS listens.
pub fn announce(addr: std::net::SocketAddr, iface: &str, workers: usize) {
    info!(%iface, workers, "HTTPS server listening on {addr} (rustls, on a runtime of its own)");
}
