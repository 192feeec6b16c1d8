//! The io_uring transport: one thread and one ring per core, each with its own SO_REUSEPORT
//! listeners, so the kernel spreads connections over the cores. A connection has at most one
//! operation in flight: receive, send (head and small bodies), a wait for room in the socket,
//! or a splice of file pages into its pipe and from the pipe into the socket. Image bytes never
//! pass through userspace: file pages the page cache holds go out by `sendfile(2)` on the ring
//! thread itself, as much as the socket takes, and the ring waits for room (a poll); pages not
//! in the cache are spliced by io_uring's io-wq workers, so no disk read ever blocks a ring.
//! (A splice is always handed to a worker thread: doing that for cached pages cost a thread
//! wake-up per chunk and most of a single connection's throughput.)
//!
//! Accepted sockets are non-blocking (for that `sendfile`) and have TCP_NODELAY: a response's
//! last partial segment never waits for the client's delayed ACK (Nagle's algorithm held it up
//! to 40 ms per response). MSG_MORE on a head with a body to follow, and SPLICE_F_MORE on
//! every splice but a body's last, keep a head with its body. A body is corked as nginx's
//! `tcp_nopush` corks it but for its last `CORK_TAIL` bytes. Uncorked, every `sendfile` that
//! stops for a full socket pushes a part-filled segment: a 1 MiB range left in 26–27 packets
//! where nginx's leave in 20–21, and at 32 connections on one core the server spent 0.441 s
//! per GiB against 0.394 with only a 256 KiB tail uncorked (nginx 0.383). Corked to the end,
//! whole images went out at 1.61–1.74 GB/s on one connection against 1.13–1.31 uncorked, but
//! where a path delivers a connection's segments out of order (the lab's bare veth pair, whose
//! two cores' backlogs reorder them) bbr retransmits spuriously and 1 MiB ranges on one
//! connection fell to about two fifths: the end of each corked body waited 5–12 ms (p75 4.8
//! ms, p90 7.7 ms, as nginx's corked ranges do; not a delayed ACK). With the last 256 KiB
//! uncorked they keep the one-connection rate (p90 1.8 ms) and leave in 21–22 packets. Where
//! segments arrive in order (under cubic, or with the veth's receive steered to one core as a
//! NIC's queue does) corked ends kept one connection's rate, and the tail measured neither a
//! gain nor a loss against corking to the end, so it is kept for every connection
//! (`bench/results/http-experiments/2026-12-02-cork-bulk`, `2026-12-03-cork-tail`,
//! `2026-12-03-congestion-control` and `2026-12-03-receive-steering`). The cork comes off
//! exactly `CORK_TAIL` bytes before a body's end (a `sendfile` stops there), and a body no
//! longer than that is never corked.
//!
//! A one-second timer on every ring sweeps connections past their timeouts.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Instant, SystemTime},
};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use slab::Slab;
use tracing::{debug, info, warn};

use super::{
    cache,
    conn::{self, Exchange, Next, Shared},
    origin::Waiter,
    response::Body,
};

/// Bytes asked of one splice (the pipe is grown to this where the kernel allows).
const PIPE_SIZE: u32 = 1 << 20;
/// The span of a body checked at once for residence in the page cache.
const CACHE_WINDOW: u64 = 4 << 20;
/// At most this many body bytes per connection before the ring serves the others: the socket
/// is then polled (at once ready if it has room) and the body goes on.
const TURN_BYTES: u64 = 4 << 20;
/// A body's last bytes, sent uncorked (module comment): corked to their end, the 1 MiB ranges
/// installers read went out at two fifths of the rate on one connection under bbr on a path
/// that reordered segments.
const CORK_TAIL: u64 = 256 << 10;
/// Receive buffer per connection.
const RECV_SIZE: usize = 16 * 1024;
const TIMER: u64 = u64::MAX;
/// The ring's eventfd: an origin fetch has landed.
const WAKE: u64 = u64::MAX - 1;
/// Marks the completion of the socket half of a linked splice pair.
const OUT_BIT: u64 = 1 << 40;
const ACCEPT_BASE: u64 = u64::MAX - 1024;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Idle,
    Recv,
    Send,
    /// A linked pair: file→pipe, then pipe→socket, in one submission.
    Pair,
    SpliceOut,
    /// Waiting for an origin fetch (`Conn::waiting`); the request stays in `inbuf`.
    Wait,
    /// Waiting for room in the socket to `sendfile` more of the body.
    Room,
}

struct Conn {
    fd: OwnedFd,
    peer: IpAddr,
    local: IpAddr,
    inbuf: Vec<u8>,
    rbuf: Box<[u8]>,
    out: Vec<u8>,
    out_pos: usize,
    file: Option<(Arc<std::fs::File>, u64, u64)>,
    /// The body's file lives in memory (tmpfs, ramfs): never asked of the page cache.
    in_memory: bool,
    pipe: Option<(OwnedFd, OwnedFd)>,
    in_pipe: i64,
    pair_wait: u8,
    pair_failed: bool,
    /// The socket half of the pair found the socket full (it is non-blocking): what the file
    /// half put in the pipe waits for room.
    pair_full: bool,
    /// The body's bytes before this offset were found in the page cache.
    cached_until: u64,
    exchange: Option<Box<Exchange>>,
    waiting: Option<Waiter>,
    op: Op,
    closing: bool,
    last_progress: Instant,
    head_since: Option<Instant>,
    /// TCP_CORK is on: the bulk of a large body is being sent.
    corked: bool,
    /// Bytes of responses sent on the connection (heads and bodies; wraps): where the next
    /// head starts in the stream (`Response::head_at`).
    stream_pos: u64,
}

/// Why this kernel's io_uring cannot carry the transport. The kernel's error is part of the
/// text (not a source): the reason is logged as one line where the daemon falls back to epoll.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No ring could be set up (no io_uring, or disabled by `kernel.io_uring_disabled`).
    #[error("io_uring_setup: {0}")]
    Setup(std::io::Error),
    /// The ring would not say which operations it supports.
    #[error("io_uring probe: {0}")]
    Probe(std::io::Error),
    /// An operation the transport needs is missing; its name.
    #[error("io_uring has no {0}")]
    Missing(&'static str),
}

/// Whether this kernel's io_uring has what the transport needs; why not otherwise.
pub fn probe() -> Result<(), ProbeError> {
    let ring = IoUring::new(8).map_err(ProbeError::Setup)?;
    let mut probe = io_uring::register::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(ProbeError::Probe)?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "accept"),
        (opcode::Recv::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::Splice::CODE, "splice"),
        (opcode::Read::CODE, "read"),
        (opcode::Timeout::CODE, "timeout"),
        (opcode::PollAdd::CODE, "poll"),
    ] {
        if !probe.is_supported(code) {
            return Err(ProbeError::Missing(name));
        }
    }
    Ok(())
}

/// The CPUs the calling thread may run on, in ascending order.
fn thread_cpus() -> std::io::Result<(libc::cpu_set_t, Vec<usize>)> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the size is that of the set we pass.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let cpus = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads a bit of a set we own, below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    Ok((set, cpus))
}

/// `0-2,5` for the CPUs 0, 1, 2 and 5, as /proc's `Cpus_allowed_list` writes them.
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Confines the ring's io-wq workers (`iou-wrk-*`, which run the splices that cannot complete
/// inline) to the CPUs the calling thread may use, when those are fewer than the machine's
/// online CPUs: an operator who pins the daemon (`taskset`, systemd `CPUAffinity=`) means its
/// workers too. Kernel 6.18 already gives new workers the mask of the thread that makes them,
/// older ones gave the io-wq's own mask (all CPUs, or the cgroup's cpuset): registering makes
/// the pinning hold on both. Returns the CPUs registered, or None when the thread is not restricted.
fn pin_iowq(ring: &IoUring) -> std::io::Result<Option<Vec<usize>>> {
    let (set, cpus) = thread_cpus()?;
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if online <= 0 || cpus.len() >= online as usize {
        return Ok(None);
    }
    register_iowq_cpus(ring, &set)?;
    Ok(Some(cpus))
}

/// Tells the kernel which CPUs the ring's io-wq workers may run on, those it makes from now on.
fn register_iowq_cpus(ring: &IoUring, set: &libc::cpu_set_t) -> std::io::Result<()> {
    ring.submitter().register_iowq_aff(set)
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A bigger pipe moves more per splice; the default 64 KiB still works.
    // SAFETY: plain fcntl on a descriptor we own.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE as libc::c_int) };
    Ok((r, w))
}

fn addr_of(fd: RawFd, peer: bool) -> Option<IpAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid for the kernel to fill.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = std::ptr::addr_of_mut!(sa).cast();
    // SAFETY: sa and len are valid for the call.
    let rc = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if rc != 0 {
        return None;
    }
    match i32::from(sa.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (its family says so), which fits.
            let v4: libc::sockaddr_in = unsafe { std::ptr::read(std::ptr::addr_of!(sa).cast()) };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, a sockaddr_in6.
            let v6: libc::sockaddr_in6 = unsafe { std::ptr::read(std::ptr::addr_of!(sa).cast()) };
            Some(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)).to_canonical())
        }
        _ => None,
    }
}

/// A listening socket on `addr` in this core's SO_REUSEPORT group.
pub fn listener(addr: SocketAddr) -> std::io::Result<OwnedFd> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// One core's worker: serves `listeners` until `stop` is set.
pub fn worker(
    listeners: Vec<OwnedFd>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    // Declared before the ring, so dropped after it: no buffer is freed while the kernel
    // may still write into it.
    let mut conns: Slab<Conn> = Slab::new();
    // With an origin: an eventfd each landing writes to, and the buffer its reads fill.
    let wake = match &shared.site.origin {
        Some(origin) => {
            let fd = Arc::new(eventfd()?);
            origin.add_waker(Arc::clone(&fd));
            Some(fd)
        }
        None => None,
    };
    let mut wake_buf = [0u8; 8];
    let mut ring: IoUring = IoUring::builder().build(1024)?;
    match pin_iowq(&ring) {
        Ok(Some(cpus)) => info!(
            thread = std::thread::current().name().unwrap_or("?"),
            "HTTP: io_uring io-wq workers pinned to CPUs {} (IORING_REGISTER_IOWQ_AFF)",
            cpu_list(&cpus)
        ),
        Ok(None) => {}
        // The ring still serves; its workers keep the kernel's default mask.
        Err(e) => warn!("HTTP: could not pin io_uring io-wq workers: {e}"),
    }
    let mut draining = 0u32;
    let tick = types::Timespec::new().sec(1);
    let mut date = httpdate::fmt_http_date(SystemTime::now());
    let mut pending: Vec<squeue::Entry> = Vec::new();
    // Listeners whose accept failed, asked again on the next tick.
    let mut stalled_accepts: Vec<usize> = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        pending.push(accept_multi(l, ACCEPT_BASE + i as u64));
    }
    pending.push(opcode::Timeout::new(&tick).build().user_data(TIMER));
    if let Some(fd) = &wake {
        pending.push(wake_read(fd, &mut wake_buf));
    }
    loop {
        for e in pending.drain(..) {
            // SAFETY: every buffer an entry points to lives in `conns` (boxed, not moved)
            // or in this frame (`tick`) until its completion is reaped.
            while unsafe { ring.submission().push(&e) }.is_err() {
                ring.submit()?;
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
        let completions: Vec<(u64, i32, u32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result(), c.flags()))
            .collect();
        for (data, res, flags) in completions {
            if data == WAKE {
                // Read again unless the eventfd failed (then the timer resumes the waiting
                // requests, once a second, rather than a failing read spinning).
                match &wake {
                    Some(fd) if res == 8 => pending.push(wake_read(fd, &mut wake_buf)),
                    _ => warn!(
                        res,
                        "HTTP: origin wake-ups stopped; waiting requests resume on the timer"
                    ),
                }
                resume(&mut conns, &shared, &date, &mut pending);
                continue;
            }
            if data == TIMER {
                if stop.load(Ordering::Relaxed) {
                    // Shut every connection down, then give their operations a few ticks to
                    // complete before the buffers go.
                    for (_, c) in conns.iter_mut() {
                        c.closing = true;
                        // SAFETY: shutdown on a descriptor we own.
                        unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
                    }
                    let idle: Vec<usize> = conns
                        .iter()
                        .filter(|(_, c)| matches!(c.op, Op::Idle | Op::Wait))
                        .map(|(k, _)| k)
                        .collect();
                    for k in idle {
                        end(k, &mut conns, &shared, false);
                    }
                    draining += 1;
                    if conns.is_empty() || draining > 3 {
                        for (_, c) in conns.iter_mut() {
                            shared.release(c.peer);
                            if let Some(x) = c.exchange.take() {
                                x.finish(&shared, false);
                            }
                        }
                        // Dropping the ring (before `conns`) cancels what is left.
                        drop(ring);
                        return Ok(());
                    }
                    pending.push(opcode::Timeout::new(&tick).build().user_data(TIMER));
                    continue;
                }
                date = httpdate::fmt_http_date(SystemTime::now());
                sweep(&mut conns, &shared);
                for i in stalled_accepts.drain(..) {
                    if let Some(l) = listeners.get(i) {
                        pending.push(accept_multi(l, ACCEPT_BASE + i as u64));
                    }
                }
                // Also here, not only on the eventfd: a missed wake costs a second at most.
                resume(&mut conns, &shared, &date, &mut pending);
                pending.push(opcode::Timeout::new(&tick).build().user_data(TIMER));
                continue;
            }
            if data >= ACCEPT_BASE {
                let i = (data - ACCEPT_BASE) as usize;
                if res < 0 {
                    // Out of descriptors or memory (a crowd of clients): counted, and the
                    // accept is asked again on the next tick, not at once (that would spin).
                    shared.metrics.refused("accept_error");
                    debug!(error = %std::io::Error::from_raw_os_error(-res), "HTTP accept failed");
                    if !cqueue::more(flags) {
                        stalled_accepts.push(i);
                    }
                    continue;
                }
                if !cqueue::more(flags) {
                    // The kernel ended the multishot accept (under pressure): ask again.
                    if let Some(l) = listeners.get(i) {
                        pending.push(accept_multi(l, data));
                    }
                }
                // SAFETY: a successful accept returns a new descriptor we now own.
                let fd = unsafe { OwnedFd::from_raw_fd(res) };
                accept(fd, &mut conns, &shared, &mut pending);
                continue;
            }
            let key = (data & !OUT_BIT) as usize;
            if !conns.contains(key) {
                continue;
            }
            complete(
                key,
                data & OUT_BIT != 0,
                res,
                &mut conns,
                &shared,
                &date,
                &mut pending,
            );
        }
    }
}

/// A multishot accept on `l`; accepted sockets are non-blocking (for `sendfile` on the ring).
fn accept_multi(l: &OwnedFd, data: u64) -> squeue::Entry {
    opcode::AcceptMulti::new(types::Fd(l.as_raw_fd()))
        .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
        .build()
        .user_data(data)
}

fn accept(fd: OwnedFd, conns: &mut Slab<Conn>, shared: &Shared, pending: &mut Vec<squeue::Entry>) {
    let (Some(peer), Some(local)) = (
        addr_of(fd.as_raw_fd(), true),
        addr_of(fd.as_raw_fd(), false),
    ) else {
        return;
    };
    if let Err(why) = shared.admit(peer) {
        debug!(%peer, why = why.as_label(), "HTTP connection refused");
        return;
    }
    if let Err(e) = socket2::SockRef::from(&fd).set_tcp_nodelay(true) {
        // Still served; its responses may wait for delayed ACKs.
        debug!(%peer, error = %e, "HTTP: TCP_NODELAY refused");
    }
    let key = conns.insert(Conn {
        fd,
        peer,
        local,
        inbuf: Vec::new(),
        rbuf: vec![0u8; RECV_SIZE].into_boxed_slice(),
        out: Vec::new(),
        out_pos: 0,
        file: None,
        pipe: None,
        in_pipe: 0,
        pair_wait: 0,
        pair_failed: false,
        pair_full: false,
        in_memory: false,
        cached_until: 0,
        exchange: None,
        waiting: None,
        op: Op::Idle,
        closing: false,
        last_progress: Instant::now(),
        head_since: None,
        corked: false,
        stream_pos: 0,
    });
    recv(key, &mut conns[key], pending);
}

fn recv(key: usize, c: &mut Conn, pending: &mut Vec<squeue::Entry>) {
    c.op = Op::Recv;
    pending.push(
        opcode::Recv::new(
            types::Fd(c.fd.as_raw_fd()),
            c.rbuf.as_mut_ptr(),
            c.rbuf.len() as u32,
        )
        .build()
        .user_data(key as u64),
    );
}

fn send(key: usize, c: &mut Conn, pending: &mut Vec<squeue::Entry>) {
    c.op = Op::Send;
    let rest = &c.out[c.out_pos..];
    // MSG_MORE when a file body follows: the head rides in its first segment.
    let more = if c.file.is_some() { libc::MSG_MORE } else { 0 };
    pending.push(
        opcode::Send::new(
            types::Fd(c.fd.as_raw_fd()),
            rest.as_ptr(),
            rest.len() as u32,
        )
        .flags(libc::MSG_NOSIGNAL | more)
        .build()
        .user_data(key as u64),
    );
}

/// Queues the next chunk as a linked pair: file pages into the pipe, then the pipe into the
/// socket, so a chunk costs one trip through the ring. A short first half (the end of the
/// file, a full pipe) cancels the second, and what sits in the pipe goes out on its own.
fn splice_pair(key: usize, c: &mut Conn, pending: &mut Vec<squeue::Entry>) -> bool {
    if c.pipe.is_none() {
        match pipe() {
            Ok(p) => c.pipe = Some(p),
            Err(e) => {
                warn!(error = %e, "HTTP: no pipe for a body");
                return false;
            }
        }
    }
    let (Some((file, offset, left)), Some((r, w))) = (&c.file, &c.pipe) else {
        return false;
    };
    c.op = Op::Pair;
    c.pair_wait = 2;
    c.pair_failed = false;
    c.pair_full = false;
    let len = (*left).min(u64::from(PIPE_SIZE)) as u32;
    let more = *left > u64::from(len);
    pending.push(
        opcode::Splice::new(
            types::Fd(file.as_raw_fd()),
            *offset as i64,
            types::Fd(w.as_raw_fd()),
            -1,
            len,
        )
        .build()
        .flags(squeue::Flags::IO_LINK)
        .user_data(key as u64),
    );
    pending.push(
        opcode::Splice::new(
            types::Fd(r.as_raw_fd()),
            -1,
            types::Fd(c.fd.as_raw_fd()),
            -1,
            len,
        )
        .flags(if more { libc::SPLICE_F_MORE } else { 0 })
        .build()
        .user_data(key as u64 | OUT_BIT),
    );
    true
}

fn splice_out(key: usize, c: &mut Conn, pending: &mut Vec<squeue::Entry>) {
    let Some((r, _)) = &c.pipe else { return };
    c.op = Op::SpliceOut;
    let more = c.file.as_ref().is_some_and(|(_, _, left)| *left > 0);
    let flags = if more { libc::SPLICE_F_MORE } else { 0 };
    pending.push(
        opcode::Splice::new(
            types::Fd(r.as_raw_fd()),
            -1,
            types::Fd(c.fd.as_raw_fd()),
            -1,
            c.in_pipe as u32,
        )
        .flags(flags)
        .build()
        .user_data(key as u64),
    );
}

/// Starts the next answer if the buffer holds a request, else reads.
fn serve_next(
    key: usize,
    c: &mut Conn,
    shared: &Shared,
    date: &str,
    pending: &mut Vec<squeue::Entry>,
) {
    match conn::next(shared, &mut c.inbuf, c.peer, c.local) {
        Next::Read => {
            c.head_since = if c.inbuf.is_empty() {
                None
            } else {
                c.head_since.or(Some(Instant::now()))
            };
            recv(key, c, pending);
        }
        Next::Wait(w) => {
            c.head_since = None;
            c.op = Op::Wait;
            c.waiting = Some(w);
        }
        Next::Answer(mut x) => {
            c.head_since = None;
            c.out = x.response.head_at(date, Some(c.stream_pos));
            x.head_len(c.out.len());
            // The response leaves whole or the connection ends.
            c.stream_pos = c
                .stream_pos
                .wrapping_add(c.out.len() as u64 + x.response.body.len());
            let r = &x.response;
            c.out_pos = 0;
            c.file = None;
            c.cached_until = 0;
            match &r.body {
                Body::Empty => {}
                Body::Bytes(b) => c.out.extend_from_slice(b),
                Body::File {
                    file,
                    offset,
                    len,
                    in_memory,
                } => {
                    c.file = (*len > 0).then(|| (Arc::clone(file), *offset, *len));
                    c.in_memory = *in_memory;
                }
            }
            c.exchange = Some(x);
            send(key, c, pending);
        }
    }
}

/// A nonblocking eventfd for origin wake-ups.
fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory arguments.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A read of the wake eventfd into `buf` (8 bytes: its counter, reset by the read).
fn wake_read(fd: &OwnedFd, buf: &mut [u8; 8]) -> squeue::Entry {
    opcode::Read::new(types::Fd(fd.as_raw_fd()), buf.as_mut_ptr(), 8)
        .build()
        .user_data(WAKE)
}

/// Routes again every request whose origin fetch has landed: it now finds the file, or
/// the failure.
fn resume(conns: &mut Slab<Conn>, shared: &Shared, date: &str, pending: &mut Vec<squeue::Entry>) {
    let landed: Vec<usize> = conns
        .iter()
        .filter(|(_, c)| c.op == Op::Wait && c.waiting.as_ref().is_none_or(Waiter::has_landed))
        .map(|(k, _)| k)
        .collect();
    for key in landed {
        let c = &mut conns[key];
        c.op = Op::Idle;
        c.waiting = None;
        c.last_progress = Instant::now();
        serve_next(key, c, shared, date, pending);
    }
}

fn end(key: usize, conns: &mut Slab<Conn>, shared: &Shared, done: bool) {
    let c = conns.remove(key);
    if let Some(x) = c.exchange {
        x.finish(shared, done);
    }
    shared.release(c.peer);
}

fn complete(
    key: usize,
    linked_out: bool,
    res: i32,
    conns: &mut Slab<Conn>,
    shared: &Shared,
    date: &str,
    pending: &mut Vec<squeue::Entry>,
) {
    let c = &mut conns[key];
    if c.op == Op::Pair {
        return pair_half(key, linked_out, res, conns, shared, date, pending);
    }
    let op = std::mem::replace(&mut c.op, Op::Idle);
    if op == Op::SpliceOut && res == -libc::EAGAIN && !c.closing {
        // The socket is full (it is non-blocking): the pipe's bytes wait for room.
        return wait_room(key, c, pending);
    }
    if c.closing || res < 0 || (res == 0 && op != Op::SpliceOut) {
        // Errors, a closed peer, a sweep, or a file that ended early.
        if res < 0 && op != Op::Recv {
            shared.metrics.refused("send_error");
        }
        return end(key, conns, shared, false);
    }
    let n = res as u64;
    // Room in the socket is not progress: only bytes taken are (else a socket that says it
    // has room and then takes nothing would never time out).
    if op != Op::Room {
        c.last_progress = Instant::now();
    }
    match op {
        Op::Recv => {
            c.inbuf.extend_from_slice(&c.rbuf[..res as usize]);
            serve_next(key, c, shared, date, pending);
        }
        Op::Send => {
            c.out_pos += res as usize;
            if let Some(x) = c.exchange.as_mut() {
                x.sent(shared, n);
            }
            if c.out_pos < c.out.len() {
                send(key, c, pending);
            } else {
                body_next(key, conns, shared, date, pending);
            }
        }
        Op::Room => body_next(key, conns, shared, date, pending),
        Op::Pair => {}
        Op::SpliceOut => {
            if res == 0 {
                return end(key, conns, shared, false);
            }
            c.in_pipe -= i64::from(res);
            if let Some(x) = c.exchange.as_mut() {
                x.sent(shared, n);
            }
            body_next(key, conns, shared, date, pending);
        }
        Op::Idle | Op::Wait => {}
    }
}

/// One half of a linked splice pair completed; once both have, the body goes on.
fn pair_half(
    key: usize,
    out_half: bool,
    res: i32,
    conns: &mut Slab<Conn>,
    shared: &Shared,
    date: &str,
    pending: &mut Vec<squeue::Entry>,
) {
    let c = &mut conns[key];
    c.pair_wait = c.pair_wait.saturating_sub(1);
    match (out_half, res) {
        // The file half came up short, so the kernel cancelled this one.
        (true, r) if r == -libc::ECANCELED => {}
        // The socket is full: an io-wq splice into a non-blocking socket does not wait.
        (true, r) if r == -libc::EAGAIN => c.pair_full = true,
        (true, r) if r > 0 => {
            c.in_pipe -= i64::from(r);
            if let Some(x) = c.exchange.as_mut() {
                x.sent(shared, r as u64);
            }
        }
        (false, r) if r > 0 => {
            if let Some((_, offset, left)) = c.file.as_mut() {
                *offset += r as u64;
                *left -= r as u64;
            }
            c.in_pipe += i64::from(r);
        }
        // An error, a closed peer, or a file that ended before its length.
        _ => c.pair_failed = true,
    }
    if c.pair_wait > 0 {
        return;
    }
    c.op = Op::Idle;
    if c.closing || c.pair_failed {
        if !c.closing {
            shared.metrics.refused("send_error");
        }
        return end(key, conns, shared, false);
    }
    c.last_progress = Instant::now();
    if c.pair_full {
        return wait_room(key, c, pending);
    }
    body_next(key, conns, shared, date, pending);
}

/// After a splice: the rest of the pipe, the next chunk, or the end of the response.
fn body_next(
    key: usize,
    conns: &mut Slab<Conn>,
    shared: &Shared,
    date: &str,
    pending: &mut Vec<squeue::Entry>,
) {
    let c = &mut conns[key];
    if c.in_pipe > 0 {
        splice_out(key, c, pending);
    } else if c.file.as_ref().is_some_and(|(_, _, left)| *left > 0) {
        send_file(key, conns, shared, date, pending);
    } else {
        c.file = None;
        response_done(key, conns, shared, date, pending);
    }
}

/// Sends the body from the page cache with `sendfile(2)` until the socket is full (then waits
/// for room), the turn's bytes are spent, or the next pages are not in the cache (then they
/// are spliced by an io-wq worker, which may block on the disk where the ring must not).
fn send_file(
    key: usize,
    conns: &mut Slab<Conn>,
    shared: &Shared,
    date: &str,
    pending: &mut Vec<squeue::Entry>,
) {
    let c = &mut conns[key];
    let mut turn = TURN_BYTES;
    loop {
        let Some((file, offset, left)) = c.file.as_mut() else {
            return response_done(key, conns, shared, date, pending);
        };
        if *left == 0 {
            c.file = None;
            return response_done(key, conns, shared, date, pending);
        }
        // Full segments for the bulk; the tail leaves at once (module comment).
        let bulk = corked(*left);
        if bulk != c.corked {
            // A failure only costs segment sizes, on a socket that is failing anyway.
            conn::set_cork(&c.fd, bulk);
            c.corked = bulk;
        }
        if *offset >= c.cached_until {
            let window = (*left).min(CACHE_WINDOW);
            // A file in memory never waits for a store: nothing to ask (cachestat walks the
            // span's pages, 2% of the ring's time on 1 MiB ranges).
            if !c.in_memory && !cache::holds(file, *offset, window) {
                if !splice_pair(key, c, pending) {
                    end(key, conns, shared, false);
                }
                return;
            }
            c.cached_until = *offset + window;
        }
        if turn == 0 {
            return wait_room(key, c, pending);
        }
        let want = piece(*left, (c.cached_until - *offset).min(turn));
        let mut off = *offset as libc::off_t;
        // SAFETY: both descriptors are open and owned by this connection; `off` is ours.
        let n =
            unsafe { libc::sendfile(c.fd.as_raw_fd(), file.as_raw_fd(), &mut off, want as usize) };
        if n > 0 {
            let n = n as u64;
            *offset += n;
            *left -= n;
            turn -= n;
            c.last_progress = Instant::now();
            if let Some(x) = c.exchange.as_mut() {
                x.sent(shared, n);
            }
            continue;
        }
        if n == 0 {
            // The file is shorter than when it was opened: the response cannot be completed.
            shared.metrics.refused("send_error");
            return end(key, conns, shared, false);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EAGAIN) => return wait_room(key, c, pending),
            Some(libc::EINTR) => continue,
            _ => {
                shared.metrics.refused("send_error");
                return end(key, conns, shared, false);
            }
        }
    }
}

/// Whether a body with `left` bytes to go is sent corked: all but its last `CORK_TAIL`.
fn corked(left: u64) -> bool {
    left > CORK_TAIL
}

/// The bytes of a body with `left` to go that the next `sendfile` may take, given `room` (the
/// cached span and the turn): never across the point where the uncorked tail begins, so the
/// cork is on for exactly the bytes before it.
fn piece(left: u64, room: u64) -> u64 {
    let to_switch = if corked(left) { left - CORK_TAIL } else { left };
    room.min(to_switch)
}

/// Waits (a one-shot poll on the ring) until the socket takes more bytes. The page cache is
/// asked again afterwards: pages found there before may be evicted while a slow client waits,
/// and `sendfile` on the ring must not read the disk.
fn wait_room(key: usize, c: &mut Conn, pending: &mut Vec<squeue::Entry>) {
    c.op = Op::Room;
    c.cached_until = 0;
    pending.push(
        opcode::PollAdd::new(types::Fd(c.fd.as_raw_fd()), libc::POLLOUT as u32)
            .build()
            .user_data(key as u64),
    );
}

fn response_done(
    key: usize,
    conns: &mut Slab<Conn>,
    shared: &Shared,
    date: &str,
    pending: &mut Vec<squeue::Entry>,
) {
    let c = &mut conns[key];
    if c.corked {
        // A body that ended early (spliced to its end): what it left in the socket goes now.
        conn::set_cork(&c.fd, false);
        c.corked = false;
    }
    let close = c.exchange.as_ref().is_some_and(|x| x.response.close);
    if let Some(x) = c.exchange.take() {
        x.finish(shared, true);
    }
    if close {
        return end(key, conns, shared, true);
    }
    serve_next(key, c, shared, date, pending);
}

/// Shuts down connections past a timeout: their operation in flight then completes and the
/// connection ends there.
fn sweep(conns: &mut Slab<Conn>, shared: &Shared) {
    let l = shared.limits;
    for (_, c) in conns.iter_mut() {
        let idle = c.last_progress.elapsed();
        let late = match c.op {
            Op::Recv => match c.head_since {
                Some(t) => t.elapsed() > l.header_timeout,
                None => idle > l.idle_timeout,
            },
            // The origin fetch it waits for is bounded by its own timeout.
            Op::Idle | Op::Wait => false,
            _ => idle > l.send_timeout,
        };
        if late && !c.closing {
            c.closing = true;
            shared.metrics.refused("timeout");
            // SAFETY: shutdown on a descriptor we own; the pending operation completes.
            unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_corked_for_exactly_all_but_its_tail() {
        let mib = 1u64 << 20;
        for size in [
            1,
            CORK_TAIL - 1,
            CORK_TAIL,
            CORK_TAIL + 1,
            mib,
            700_001,
            9 * mib + 5,
            256 * mib,
        ] {
            for room in [1448, 64 << 10, 1 << 20, 4 << 20] {
                // Walk the body as `send_file` does, each `sendfile` taking all it may.
                let (mut left, mut corked_bytes) = (size, 0);
                while left > 0 {
                    let n = piece(left, room);
                    assert!(n > 0, "size {size}, room {room}: stuck with {left} to go");
                    if corked(left) {
                        assert!(
                            left - n >= CORK_TAIL,
                            "size {size}, room {room}: a corked piece runs into the tail"
                        );
                        corked_bytes += n;
                    }
                    left -= n;
                }
                assert_eq!(
                    corked_bytes,
                    size.saturating_sub(CORK_TAIL),
                    "size {size}, room {room}"
                );
            }
        }
    }

    #[test]
    fn cpu_lists_read_as_proc_writes_them() {
        assert_eq!(cpu_list(&[]), "");
        assert_eq!(cpu_list(&[0]), "0");
        assert_eq!(cpu_list(&[0, 1, 2, 5]), "0-2,5");
        assert_eq!(cpu_list(&[1, 3, 4]), "1,3-4");
    }

    /// The io-wq workers of the thread `tid`: their task ids and Cpus_allowed_list.
    fn iowq_workers(tid: libc::pid_t) -> Vec<(String, String)> {
        let name = format!("iou-wrk-{tid}");
        let mut out = Vec::new();
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != name {
                continue;
            }
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            if let Some(l) = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            {
                out.push((
                    task.file_name().to_string_lossy().into_owned(),
                    l.trim().to_string(),
                ));
            }
        }
        out
    }

    /// Runs `before_read` on a fresh ring in a new thread, then forces one read of an empty
    /// pipe to io-wq (IOSQE_ASYNC; a pipe is unbounded work, so the kernel makes a new worker
    /// for it) and returns the Cpus_allowed_list of that new worker.
    fn new_worker_cpus(before_read: impl FnOnce(&IoUring) + Send + 'static) -> String {
        std::thread::spawn(move || {
            let mut ring: IoUring = IoUring::new(8).expect("io_uring_setup");
            before_read(&ring);
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            let before: Vec<String> = iowq_workers(tid).into_iter().map(|(t, _)| t).collect();
            let (r, w) = pipe().expect("pipe");
            let mut buf = [0u8; 1];
            let read = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 1)
                .build()
                .flags(squeue::Flags::ASYNC)
                .user_data(7);
            // SAFETY: `buf` outlives the read: we wait for its completion below.
            unsafe { ring.submission().push(&read) }.expect("queue has room");
            ring.submit().expect("submit");
            let deadline = Instant::now() + std::time::Duration::from_secs(30);
            let cpus = loop {
                let new = iowq_workers(tid)
                    .into_iter()
                    .find(|(t, _)| !before.contains(t));
                if let Some((_, cpus)) = new {
                    break cpus;
                }
                assert!(
                    Instant::now() < deadline,
                    "no new iou-wrk-{tid} within 30 s"
                );
                std::thread::yield_now();
            };
            // SAFETY: a one-byte write from a live buffer to a pipe we own.
            assert_eq!(
                unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) },
                1
            );
            ring.submit_and_wait(1).expect("the read completes");
            cpus
        })
        .join()
        .expect("ring thread")
    }

    /// The CPUs this process may use, when they are two or more (else nothing to restrict).
    fn two_cpus() -> Option<Vec<usize>> {
        let (_, all) = thread_cpus().expect("sched_getaffinity");
        if all.len() < 2 {
            eprintln!("skipped: this process may use a single CPU, nothing to restrict");
            return None;
        }
        Some(all)
    }

    fn one_cpu(cpu: usize) -> libc::cpu_set_t {
        // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET writes one bit of it.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        unsafe { libc::CPU_SET(cpu, &mut one) };
        one
    }

    /// The registration itself confines new workers, here from a thread that may use every
    /// CPU, so the kernel's own inheritance cannot be what holds them (without the
    /// registration this worker is allowed on all CPUs, and the test fails).
    #[test]
    fn registered_cpus_confine_new_iowq_workers() {
        let Some(all) = two_cpus() else { return };
        let cpu = *all.last().expect("two CPUs");
        let got = new_worker_cpus(move |ring| {
            register_iowq_cpus(ring, &one_cpu(cpu)).expect("IORING_REGISTER_IOWQ_AFF");
        });
        assert_eq!(got, cpu.to_string(), "iou-wrk allowed CPUs");
    }

    /// A ring whose thread is pinned to one CPU registers that CPU for its workers, and they
    /// run there only. (On 6.18 the kernel's inheritance would hold them there too; the
    /// test above is the one that tells the registration works.)
    #[test]
    fn a_pinned_ring_thread_pins_its_iowq_workers() {
        let Some(all) = two_cpus() else { return };
        let cpu = *all.last().expect("two CPUs");
        let got = new_worker_cpus(move |ring| {
            // SAFETY: pid 0 is this thread; the size is that of the set.
            let rc = unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one_cpu(cpu))
            };
            assert_eq!(rc, 0, "sched_setaffinity");
            assert_eq!(
                pin_iowq(ring).expect("IORING_REGISTER_IOWQ_AFF"),
                Some(vec![cpu])
            );
        });
        assert_eq!(got, cpu.to_string(), "iou-wrk allowed CPUs");
    }

    /// A ring thread that may use every CPU registers nothing: the kernel's default stands.
    #[test]
    fn an_unpinned_ring_thread_registers_nothing() {
        let Some(_) = two_cpus() else { return };
        let ring = IoUring::new(8).expect("io_uring_setup");
        assert_eq!(pin_iowq(&ring).expect("sched_getaffinity"), None);
    }
}
