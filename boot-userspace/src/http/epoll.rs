//! The fallback transport where io_uring is unavailable (old kernels, seccomp profiles that
//! forbid it): tokio's epoll reactor, a task per connection, and file bodies moved with
//! `sendfile(2)` when the socket can take more.

use std::{net::Ipv4Addr, os::fd::AsRawFd, sync::Arc, time::SystemTime};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    conn::{self, Next, Shared},
    response::Body,
};

/// Accepts on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let (std::net::SocketAddr::V4(peer), Ok(std::net::SocketAddr::V4(local))) =
            (addr, stream.local_addr())
        else {
            continue;
        };
        if let Err(why) = shared.admit(*peer.ip()) {
            debug!(%peer, why, "HTTP connection refused");
            continue;
        }
        let shared = Arc::clone(&shared);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let peer = *peer.ip();
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = connection(stream, peer, *local.ip(), &shared) => {}
            }
            shared.release(peer);
        });
    }
}

async fn connection(mut s: TcpStream, peer: Ipv4Addr, local: Ipv4Addr, shared: &Shared) {
    let l = shared.limits;
    let mut inbuf = Vec::new();
    let mut rbuf = vec![0u8; 16 * 1024];
    loop {
        let mut x = match conn::next(shared, &mut inbuf, peer, local) {
            Next::Answer(x) => x,
            Next::Read => {
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
        let mut head = x.response.head(&date);
        x.head_len(head.len());
        if let Body::Bytes(b) = &x.response.body {
            head.extend_from_slice(b);
        }
        let sent = tokio::time::timeout(l.send_timeout, s.write_all(&head)).await;
        if !matches!(sent, Ok(Ok(()))) {
            x.finish(shared, false);
            return;
        }
        x.sent(shared, head.len() as u64);
        if let Body::File { file, offset, len } = x.response.body.clone() {
            let mut off = offset as libc::off_t;
            let end = offset + len;
            while (off as u64) < end {
                let want = (end - off as u64).min(1 << 20) as usize;
                let step = s.async_io(Interest::WRITABLE, || {
                    // SAFETY: both descriptors are open for the call; off is ours.
                    let n =
                        unsafe { libc::sendfile(s.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
                    if n < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(n as u64)
                    }
                });
                match tokio::time::timeout(l.send_timeout, step).await {
                    Ok(Ok(n)) if n > 0 => x.sent(shared, n),
                    Err(_) => {
                        shared.metrics.refused("timeout");
                        x.finish(shared, false);
                        return;
                    }
                    _ => {
                        x.finish(shared, false);
                        return;
                    }
                }
            }
        }
        let close = x.response.close;
        x.finish(shared, true);
        if close {
            return;
        }
    }
}
