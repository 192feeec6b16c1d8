//! The fallback transport where io_uring is unavailable (old kernels, seccomp profiles that
//! forbid it): tokio's epoll reactor, a task per connection, and file bodies moved with
//! `sendfile(2)` when the socket can take more.
//!
//! No file is touched on a runtime worker: routing a request (canonicalising, opening and
//! stating files, reading config templates) and every `sendfile` run on the blocking pool.
//! A hung image store (NFS gone, a dying disk) then holds blocking threads, one per request
//! stuck on it, while the workers keep accepting, parsing and sending everything else; a
//! worker stuck in a read would instead stall every task of its runtime (tokio's I/O driver
//! is polled by a parked worker, and a stuck one parks no more).

use std::{
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd, OwnedFd},
    sync::Arc,
    time::SystemTime,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    conn::{self, Exchange, Next, Shared, MAX_BODY, MAX_HEAD},
    request::{self, ParseError},
    response::Body,
};

/// Accepts on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    accept(
        listener,
        shared,
        cancel,
        "HTTP",
        |mut s, peer, local, shared| async move {
            connection(&mut s, peer, local, Vec::new(), shared).await
        },
    )
    .await;
}

/// Accepts connections on `listener` until `cancel` fires, and runs `serve` for each one
/// admitted (HTTP and HTTPS alike): its addresses, the per-client and total limits (a refused
/// connection is closed at once), TCP_NODELAY, and its slot given back when it ends or
/// `cancel` fires. `scheme` names the listener in logs.
pub(super) async fn accept<F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    scheme: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, IpAddr, IpAddr, Arc<Shared>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, addr) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors or memory (a crowd of clients): counted, and a pause
                    // before the next accept, which would fail at once again (a spin).
                    shared.metrics.refused("accept_error");
                    debug!(error = %e, "{scheme} accept failed");
                    let exhausted = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if exhausted {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let (peer, local) = (addr.ip().to_canonical(), local.ip().to_canonical());
        // Counted from accept: a client that opens connections and never finishes a request
        // (or a TLS handshake) holds its own slots only, each for the head timeout.
        if let Err(why) = shared.admit(peer) {
            debug!(%peer, why = why.as_label(), "{scheme} connection refused");
            continue;
        }
        // The last partial segment of a response never waits for the client's delayed ACK;
        // a head and its file body are corked together instead where that helps (`Wire`).
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "{scheme}: TCP_NODELAY refused");
        }
        let conn = serve(stream, peer, local, Arc::clone(&shared));
        let (shared, cancel) = (Arc::clone(&shared), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = conn => {}
            }
            shared.release(peer);
        });
    }
}

/// Routes the request at the front of `inbuf`, or says that more bytes are needed (parsed
/// here: no file I/O in that). Routing opens and stats files: on the blocking pool, unless
/// `inline` (a runtime that serves HTTP alone, as a ring does). `None` if the pool is gone
/// (shutdown).
pub(super) async fn next(
    shared: &Arc<Shared>,
    inbuf: &mut Vec<u8>,
    peer: IpAddr,
    local: IpAddr,
    inline: bool,
) -> Option<Next> {
    if let Err(ParseError::Incomplete) = request::parse(inbuf, MAX_HEAD, MAX_BODY) {
        return Some(Next::Read);
    }
    if inline {
        return Some(conn::next(shared, inbuf, peer, local));
    }
    let mut buf = std::mem::take(inbuf);
    let shared = Arc::clone(shared);
    let (next, buf) = tokio::task::spawn_blocking(move || {
        let next = conn::next(&shared, &mut buf, peer, local);
        (next, buf)
    })
    .await
    .ok()?;
    *inbuf = buf;
    Some(next)
}

/// One `sendfile(2)` of up to `want` bytes of `file` from `*off` into the socket `sock` (a
/// duplicate of the connection's descriptor, so that a call still stuck on the file when
/// the connection is dropped never writes into a reused descriptor), on the blocking pool.
async fn sendfile(
    sock: &Arc<OwnedFd>,
    file: &Arc<std::fs::File>,
    off: libc::off_t,
    want: usize,
) -> std::io::Result<(u64, libc::off_t)> {
    let (sock, file) = (Arc::clone(sock), Arc::clone(file));
    tokio::task::spawn_blocking(move || {
        let mut off = off;
        // SAFETY: both descriptors are open for the call (the Arcs hold them); off is ours.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok((n as u64, off))
        }
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Why a body stopped before its end.
pub(super) enum BodyError {
    /// The client took nothing (or the file gave nothing) for `http.send_timeout_s`.
    Timeout,
    /// The connection or the file failed.
    Failed,
}

/// What a connection's bytes go through: the TCP socket itself (file bodies by
/// `sendfile(2)`), or a TLS session over it (file bodies read and encrypted here).
pub(super) trait Wire: AsyncRead + AsyncWrite + Unpin + Send {
    /// Whether a head and its file body are sent under TCP_CORK (full segments, the last one
    /// pushed when uncorked).
    const CORKS: bool;

    /// Whether requests are routed on the connection's own worker (its runtime serves HTTP
    /// alone) rather than on the blocking pool (its runtime serves TFTP too).
    const ROUTES_INLINE: bool;

    /// Whether a file body is aligned in the stream as it lies in its file
    /// (`Response::head_at`): on plain TCP, where `sendfile` hands the socket the file's
    /// pages and a client on the same host copies out of them.
    const ALIGNS: bool;

    /// The TCP socket underneath.
    fn tcp(&self) -> &TcpStream;

    /// Sends `len` bytes of `file` from `offset`, counting them on `x` as they go; each step
    /// bounded by `send_timeout`.
    fn send_file(
        &mut self,
        file: &Arc<std::fs::File>,
        offset: u64,
        len: u64,
        in_memory: bool,
        shared: &Shared,
        x: &mut Exchange,
    ) -> impl std::future::Future<Output = Result<(), BodyError>> + Send;
}

impl Wire for TcpStream {
    // The head is one write and the body another (sendfile): corked, they share segments.
    const CORKS: bool = true;
    // Plain HTTP on epoll shares the file runtime with TFTP: a stat stuck on a hung store
    // must hold a pool thread, not a worker.
    const ROUTES_INLINE: bool = false;
    const ALIGNS: bool = true;

    fn tcp(&self) -> &TcpStream {
        self
    }

    async fn send_file(
        &mut self,
        file: &Arc<std::fs::File>,
        offset: u64,
        len: u64,
        // Every send below runs on the blocking pool, in memory or not.
        _in_memory: bool,
        shared: &Shared,
        x: &mut Exchange,
    ) -> Result<(), BodyError> {
        let s = &*self;
        let dup = Arc::new(
            s.as_fd()
                .try_clone_to_owned()
                .map_err(|_| BodyError::Failed)?,
        );
        let mut off = offset as libc::off_t;
        let end = offset + len;
        while (off as u64) < end {
            let want = (end - off as u64).min(1 << 20) as usize;
            // Wait until the socket takes more, then send from the file off the workers. A
            // send that finds the socket full (it is non-blocking) waits for room through
            // `async_io` with a zero-time poll as its operation: tokio then clears the
            // readiness only for the event it saw before the poll, so room made while the
            // send was on the blocking pool is never lost (clearing it afterwards with
            // `try_io` could swallow that edge and stall the body until the send timeout).
            // The send timeout covers both: a client that takes nothing, and a file that
            // gives nothing.
            let step = async {
                loop {
                    match sendfile(&dup, file, off, want).await {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            s.async_io(Interest::WRITABLE, || has_room(s)).await?;
                        }
                        other => return other,
                    }
                }
            };
            match tokio::time::timeout(shared.limits.send_timeout, step).await {
                Ok(Ok((n, to))) if n > 0 => {
                    off = to;
                    x.sent(shared, n);
                }
                Err(_) => return Err(BodyError::Timeout),
                _ => return Err(BodyError::Failed),
            }
        }
        Ok(())
    }
}

/// Serves the requests of one connection, one after another, until it closes, fails or times
/// out. `inbuf`: bytes of requests already read (a TLS session handed to the kernel brings
/// those rustls decrypted).
pub(super) async fn connection<W: Wire>(
    s: &mut W,
    peer: IpAddr,
    local: IpAddr,
    mut inbuf: Vec<u8>,
    shared: Arc<Shared>,
) {
    let shared = &shared;
    let l = shared.limits;
    // Bytes of responses sent on the connection (wraps): where the next head starts.
    let mut stream_pos = 0u64;
    let mut rbuf = vec![0u8; 16 * 1024];
    loop {
        let mut x = match next(shared, &mut inbuf, peer, local, W::ROUTES_INLINE).await {
            None => return,
            Some(Next::Answer(x)) => x,
            Some(Next::Wait(w)) => {
                // The file is on its way from the origin: the same request is routed again
                // once the fetch has landed (the fetch is bounded in time, so is this).
                w.wait().await;
                continue;
            }
            Some(Next::Read) => {
                // A request begun must be finished within the head timeout; between
                // requests the idle timeout applies.
                let wait = if inbuf.is_empty() {
                    l.idle_timeout
                } else {
                    l.header_timeout
                };
                match tokio::time::timeout(wait, s.read(&mut rbuf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        inbuf.extend_from_slice(&rbuf[..n]);
                        continue;
                    }
                    Err(_) => {
                        shared.metrics.refused("timeout");
                        return;
                    }
                    _ => return,
                }
            }
        };
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut head = x.response.head_at(&date, W::ALIGNS.then_some(stream_pos));
        x.head_len(head.len());
        // The response leaves whole or the connection ends.
        stream_pos = stream_pos.wrapping_add(head.len() as u64 + x.response.body.len());
        if let Body::Bytes(b) = &x.response.body {
            head.extend_from_slice(b);
        }
        // A file body follows: hold the head until the body fills its segments; uncorked
        // below, which pushes the last partial segment at once.
        let file_body = matches!(x.response.body, Body::File { .. });
        let corked = W::CORKS && file_body && conn::set_cork(s.tcp(), true);
        // A file body's writes carry the head out (and end with a flush); anything else is
        // flushed now.
        let sent = tokio::time::timeout(l.send_timeout, async {
            s.write_all(&head).await?;
            if !file_body {
                s.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            x.finish(shared, false);
            return;
        }
        x.sent(shared, head.len() as u64);
        if let Body::File {
            file,
            offset,
            len,
            in_memory,
        } = x.response.body.clone()
        {
            match s
                .send_file(&file, offset, len, in_memory, shared, &mut x)
                .await
            {
                Ok(()) => {}
                Err(why) => {
                    if matches!(why, BodyError::Timeout) {
                        shared.metrics.refused("timeout");
                    }
                    x.finish(shared, false);
                    return;
                }
            }
        }
        if corked {
            conn::set_cork(s.tcp(), false);
        }
        let close = x.response.close;
        x.finish(shared, true);
        if close {
            return;
        }
    }
}

/// Whether the socket can take more bytes now (or has an error to report): a zero-time
/// `poll(2)`, `WouldBlock` when it cannot.
fn has_room(s: &TcpStream) -> std::io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout; the descriptor is open while `s` lives.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pfd.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
        Ok(())
    } else {
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}
