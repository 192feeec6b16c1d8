//! A packet capture on one interface of a lab namespace: an `AF_PACKET` socket opened in the
//! namespace before the traffic starts (no capture tool's start-up to race) and drained by a
//! thread until [`Capture::finish`] returns the frames received, in order.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use crate::{LabError, Netns};

/// A running capture.
pub struct Capture {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Starts capturing the frames `iface` (in `ns`) receives.
    pub fn start(ns: &Netns, iface: &str) -> Result<Self, LabError> {
        let name = iface.to_owned();
        let fd: OwnedFd = ns.run(move || open(&name))??;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let reader = std::thread::spawn(move || {
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                // SAFETY: `buf` is writable for its length; the descriptor is owned here.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                } else if flag.load(Ordering::Relaxed) {
                    // The receive timeout passed with nothing queued after the stop.
                    return frames;
                }
            }
        });
        Ok(Self {
            stop,
            reader: Some(reader),
        })
    }

    /// Stops once the queue is drained and returns every frame received.
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An `AF_PACKET` socket bound to `iface`, incoming frames only, with a large buffer and a
/// short receive timeout (so the reader sees the stop flag).
fn open(iface: &str) -> Result<OwnedFd, LabError> {
    let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
    if raw < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let c = std::ffi::CString::new(iface).map_err(|e| e.to_string())?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return Err(format!("{iface}: no such interface"));
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r != 0 {
        return Err(format!(
            "bind to {iface}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let set = |level, name, value: &[u8]| {
        // SAFETY: `value` is readable for its length.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                value.as_ptr().cast(),
                value.len() as u32,
            )
        }
    };
    let rcvbuf: i32 = 256 << 20;
    set(
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        &rcvbuf.to_ne_bytes(),
    );
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: timeval is plain data; viewed as its bytes for setsockopt.
    let tv = unsafe {
        std::slice::from_raw_parts(
            std::ptr::addr_of!(timeout).cast::<u8>(),
            std::mem::size_of::<libc::timeval>(),
        )
    };
    set(libc::SOL_SOCKET, libc::SO_RCVTIMEO, tv);
    // Frames this interface sends are not what a capture of the server's answers wants.
    let ignore: i32 = 1;
    set(
        libc::SOL_PACKET,
        libc::PACKET_IGNORE_OUTGOING,
        &ignore.to_ne_bytes(),
    );
    Ok(fd)
}
