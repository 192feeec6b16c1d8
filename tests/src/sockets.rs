//! Another process's TCP sockets, read from outside it: each of its socket descriptors is
//! copied into this process (`pidfd_getfd`, which needs the rights of a debugger; the lab
//! runs as root) and asked for its peer and options. The copy is closed at once; the
//! connection stays the other process's.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The options of one TCP socket of another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpOptions {
    /// TCP_NODELAY: segments leave without waiting for ACKs of earlier ones.
    pub nodelay: bool,
    /// TCP_CORK: partial segments are held until it is cleared (or for 200 ms).
    pub cork: bool,
}

/// The options of the socket of process `pid` whose peer port is `peer_port` (the local port
/// of a client connection made to it). `Ok(None)` when it has no such socket.
pub fn tcp_options_of(pid: u32, peer_port: u16) -> Result<Option<TcpOptions>, String> {
    // SAFETY: pidfd_open takes a pid and flags, no memory.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if pidfd < 0 {
        return Err(format!(
            "pidfd_open {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor we now own.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    for entry in entries.flatten() {
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(target) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // SAFETY: pidfd_getfd takes descriptors and flags, no memory.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0u32) };
        if fd < 0 {
            // Closed since the listing: not the one asked for.
            continue;
        }
        // SAFETY: a fresh descriptor (a copy) we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let sock = socket2::SockRef::from(&fd);
        let port = sock
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port());
        if port != Some(peer_port) {
            continue;
        }
        let nodelay = sock
            .tcp_nodelay()
            .map_err(|e| format!("TCP_NODELAY of fd {target}: {e}"))?;
        let cork = sock
            .tcp_cork()
            .map_err(|e| format!("TCP_CORK of fd {target}: {e}"))?;
        return Ok(Some(TcpOptions { nodelay, cork }));
    }
    Ok(None)
}
