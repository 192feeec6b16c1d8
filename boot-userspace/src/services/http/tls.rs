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
//! anyway.
//!
//! Where the kernel has kTLS (and `http.tls_kernel` is not false), each session is handed to
//! it after the handshake ([`ktls`]): file bodies then go file → socket by `sendfile`, the
//! kernel making the records. Elsewhere image bytes pass through the daemon: a file body is
//! read (from the page cache on the worker when it is there, else on the runtime's blocking
//! pool) and encrypted by rustls. The daemon says which at start and in
//! `bootfabric_http_tls_data_path`, and counts each session's in
//! `bootfabric_http_tls_sessions_total`.

use std::{
    os::{fd::OwnedFd, unix::fs::FileExt as _},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwap;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::{io::AsyncWriteExt as _, net::TcpListener};
use tokio_rustls::{server::TlsStream, TlsAcceptor};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{
    cache,
    conn::{Exchange, Shared},
    epoll::{self, BodyError, Wire},
    ktls::{self, Handover, Records},
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
    /// Sessions are handed to the kernel (kTLS) after their handshake.
    kernel: bool,
}

impl Certs {
    /// Reads the certificate and key; an error names the key whose file is at fault.
    /// `kernel`: sessions will be handed to kTLS ([`DataPath::kernel`]).
    pub fn load(files: &ServerTls, port: u16, kernel: bool) -> Result<Arc<Self>, KeyError> {
        let config = Self::server_config(files, kernel)?;
        Ok(Arc::new(Self {
            current: ArcSwap::new(config),
            port,
            kernel,
        }))
    }

    /// The rustls config of `files`; where sessions go to the kernel, rustls lets their keys
    /// be taken (everything rustls queued is flushed first: `ktls::hand_over`).
    fn server_config(
        files: &ServerTls,
        kernel: bool,
    ) -> Result<Arc<rustls::ServerConfig>, KeyError> {
        let config = crate::config::secrets::tls::server_config(files)?;
        if !kernel {
            return Ok(config);
        }
        let mut config = Arc::unwrap_or_clone(config);
        config.enable_secret_extraction = true;
        Ok(Arc::new(config))
    }

    /// The port HTTPS listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Reads the files again (a reload): new handshakes get the new certificate; on an error
    /// the one in use stays.
    pub fn reload(&self, files: &ServerTls) -> Result<(), KeyError> {
        let config = Self::server_config(files, self.kernel)?;
        self.current.store(config);
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

/// Where TLS records are made: by the kernel (kTLS) where it has it and the config lets it,
/// else by rustls in the daemon.
pub struct DataPath {
    /// The kernel has kTLS with at least one cipher (not asked when not `wanted`).
    pub has_ktls: bool,
    /// `http.tls_kernel`: kTLS is to be used where the kernel has it.
    pub wanted: bool,
    /// The ciphers the kernel takes (none when not asked).
    ciphers: Arc<ktls::Ciphers>,
}

impl DataPath {
    /// Asks the kernel whether it has kTLS ([`ktls::kernel_has_tls`]), unless `wanted` is
    /// false (the question may load the `tls` module, which the operator turned down).
    pub fn probe(wanted: bool) -> Self {
        let ciphers = if wanted && ktls::kernel_has_tls() {
            ktls::Ciphers::probe()
        } else {
            ktls::Ciphers::none()
        };
        Self {
            has_ktls: !ciphers.usable().is_empty(),
            wanted,
            ciphers: Arc::new(ciphers),
        }
    }

    /// Sessions are handed to the kernel.
    pub fn kernel(&self) -> bool {
        self.has_ktls && self.wanted
    }

    /// The metric's labels: `path` and `reason`.
    fn labels(&self) -> [&'static str; 2] {
        match (self.wanted, self.has_ktls) {
            (false, _) => ["userspace", "tls_kernel_off"],
            (true, true) => ["kernel", "ktls"],
            (true, false) => ["userspace", "no_ktls_in_kernel"],
        }
    }

    /// Logs the data path, sets `bootfabric_http_tls_data_path`, and registers the count of
    /// sessions by the path they took.
    pub fn report(&self, registry: &Registry) -> Result<Sessions, prometheus::Error> {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "bootfabric_http_tls_data_path",
                "Where HTTPS records are encrypted (path: kernel or userspace), and why.",
            ),
            &["path", "reason"],
        )?;
        registry.register(Box::new(gauge.clone()))?;
        gauge.with_label_values(&self.labels()).set(1);
        let sessions = IntCounterVec::new(
            Opts::new(
                "bootfabric_http_tls_sessions_total",
                "HTTPS sessions by where their records were made after the handshake \
                 (path: kernel or userspace).",
            ),
            &["path"],
        )?;
        registry.register(Box::new(sessions.clone()))?;
        match (self.wanted, self.has_ktls) {
            (true, true) => info!(
                ciphers = ?self.ciphers.usable(),
                "HTTPS: sessions are handed to the kernel's TLS (kTLS) after the handshake; \
                 image bytes go file -> socket by sendfile"
            ),
            (false, _) => info!(
                "HTTPS: http.tls_kernel is off: records are encrypted by rustls in the daemon, \
                 and image bytes pass through it"
            ),
            (true, false) => warn!(
                "HTTPS: this kernel has no kTLS (TCP_ULP tls refused: no tls module; or no \
                 cipher it takes): records are encrypted by rustls in the daemon, and image \
                 bytes pass through it"
            ),
        }
        Ok(Sessions {
            count: sessions,
            ciphers: Arc::clone(&self.ciphers),
        })
    }
}

/// What the HTTPS tasks share about the data path: `bootfabric_http_tls_sessions_total`, and
/// the ciphers sessions may be handed to the kernel with.
#[derive(Clone)]
pub struct Sessions {
    count: IntCounterVec,
    ciphers: Arc<ktls::Ciphers>,
}

impl Sessions {
    fn count(&self, path: &str) {
        self.count.with_label_values(&[path]).inc();
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
        sessions: Sessions,
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
                            sessions.clone(),
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
/// the head timeout and counted when it fails; then the session is handed to the kernel
/// where it can be, and the connection is served as HTTP's.
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    certs: Arc<Certs>,
    sessions: Sessions,
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
            let kernel = certs.kernel;
            let sessions = sessions.clone();
            async move {
                // One bound for the handshake and the hand-over after it.
                let deadline = tokio::time::Instant::now() + shared.limits.header_timeout;
                let shake = tokio::time::timeout_at(
                    deadline,
                    acceptor.accept(Records::new(stream, kernel)),
                )
                .await;
                let tls = match shake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "HTTPS handshake failed");
                        shared.metrics.refused("tls_handshake");
                        return;
                    }
                    Err(_) => {
                        shared.metrics.refused("timeout");
                        return;
                    }
                };
                let mut tls = if kernel {
                    match ktls::hand_over(tls, deadline, &sessions.ciphers).await {
                        Handover::Kernel { mut conn, early } => {
                            sessions.count("kernel");
                            epoll::connection(&mut conn, peer, local, early, shared).await;
                            conn.close_notify();
                            return;
                        }
                        Handover::Userspace(tls) => *tls,
                        Handover::Lost { why } => {
                            debug!(%peer, why, "HTTPS: session lost handing it to the kernel");
                            shared.metrics.refused(why);
                            return;
                        }
                    }
                } else {
                    tls
                };
                sessions.count("userspace");
                epoll::connection(&mut tls, peer, local, Vec::new(), Arc::clone(&shared)).await;
                // close_notify, so that a client reading to the end sees a clean end (a client
                // gone already costs the bound, once).
                let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
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

impl Wire for TlsStream<Records> {
    // rustls writes whole records, the head with the body's first; corked, a quarter of the
    // 1 MiB ranges on one connection waited 2-3 ms longer (bench/http https-range:1,
    // 458 MiB/s corked, 765 not).
    const CORKS: bool = false;
    // The HTTPS runtime serves nothing else (module comment).
    const ROUTES_INLINE: bool = true;
    // The client copies records it decrypted into its own buffers, not the file's pages.
    const ALIGNS: bool = false;

    fn tcp(&self) -> &tokio::net::TcpStream {
        self.get_ref().0.get_ref()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_path_says_why() {
        let path = |wanted, has_ktls| DataPath {
            has_ktls,
            wanted,
            ciphers: Arc::new(ktls::Ciphers::none()),
        };
        assert_eq!(path(true, true).labels(), ["kernel", "ktls"]);
        assert!(path(true, true).kernel());
        assert_eq!(
            path(true, false).labels(),
            ["userspace", "no_ktls_in_kernel"]
        );
        assert_eq!(path(false, true).labels(), ["userspace", "tls_kernel_off"]);
        assert!(!path(false, true).kernel() && !path(true, false).kernel());
        // Turned off, the kernel is not even asked (asking may load the module).
        assert!(!DataPath::probe(false).has_ktls);
    }
}
