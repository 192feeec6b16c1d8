//! A many-transfers TFTP client for scale tests: one thread, one socket per transfer, all
//! transfers open at once. Real clients cover the protocol; this one exists because running
//! thousands of client processes would measure the machine, not the server.
//!
//! Every transfer asks for `blksize`, so the server answers with an OACK; the client holds
//! its ACK 0 until every transfer has its OACK, which puts all of them in flight at the
//! server together, then calls back (to sample the server) and runs them to the end.

use std::{
    net::{SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

/// How one transfer went.
#[derive(Debug)]
pub struct Fetched {
    /// The file's bytes, or why the transfer failed.
    pub result: Result<Vec<u8>, String>,
    /// From the first DATA block to the last.
    pub elapsed: Duration,
}

struct Slot {
    sock: UdpSocket,
    tid: Option<SocketAddr>,
    oack: bool,
    expect: u16,
    data: Vec<u8>,
    last_sent: Vec<u8>,
    last_heard: Instant,
    started: Option<Instant>,
    done: Option<Result<Duration, String>>,
}

fn rrq(name: &str, blksize: u16) -> Vec<u8> {
    let mut p = vec![0, 1];
    for part in [name, "octet", "blksize", &blksize.to_string()] {
        p.extend_from_slice(part.as_bytes());
        p.push(0);
    }
    p
}

fn ack(block: u16) -> Vec<u8> {
    let b = block.to_be_bytes();
    vec![0, 4, b[0], b[1]]
}

/// Fetches `name` from `server` over `n` concurrent transfers within `bound`. Sockets are
/// made on the calling thread (so in its network namespace).
pub fn fetch_many(
    server: SocketAddrV4,
    name: &str,
    n: usize,
    blksize: u16,
    bound: Duration,
    on_all_started: impl FnOnce(),
) -> Result<Vec<Fetched>, String> {
    let deadline = Instant::now() + bound;
    let mut slots = Vec::with_capacity(n);
    for _ in 0..n {
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let req = rrq(name, blksize);
        sock.send_to(&req, server)
            .map_err(|e| format!("send RRQ: {e}"))?;
        slots.push(Slot {
            sock,
            tid: None,
            oack: false,
            expect: 1,
            data: Vec::new(),
            last_sent: req,
            last_heard: Instant::now(),
            started: None,
            done: None,
        });
    }
    let mut callback = Some(on_all_started);
    let mut buf = vec![0u8; usize::from(blksize) + 4];
    let mut polls: Vec<libc::pollfd> = slots
        .iter()
        .map(|s| libc::pollfd {
            fd: s.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while slots.iter().any(|s| s.done.is_none()) {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {n} transfers unfinished after {bound:?}",
                slots.iter().filter(|s| s.done.is_none()).count()
            ));
        }
        let holding = callback.is_some();
        if holding && slots.iter().all(|s| s.oack) {
            if let Some(cb) = callback.take() {
                cb();
            }
            for s in &mut slots {
                s.last_sent = ack(0);
                if let Some(tid) = s.tid {
                    let _ = s.sock.send_to(&s.last_sent, tid);
                }
                s.last_heard = Instant::now();
            }
            continue;
        }
        // SAFETY: polls is a valid array of pollfd of the length given.
        let ready = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 50) };
        if ready < 0 {
            return Err(format!("poll: {}", std::io::Error::last_os_error()));
        }
        for (i, s) in slots.iter_mut().enumerate() {
            if s.done.is_some() {
                continue;
            }
            if polls[i].revents & libc::POLLIN == 0 {
                // Our ACK (or RRQ) may have been lost: say it again after quiet seconds. While
                // ACK 0 is held back, only unanswered RRQs are repeated.
                if (!holding || !s.oack) && s.last_heard.elapsed() > Duration::from_secs(2) {
                    let to = s.tid.unwrap_or(SocketAddr::V4(server));
                    let _ = s.sock.send_to(&s.last_sent, to);
                    s.last_heard = Instant::now();
                }
                continue;
            }
            while let Ok((len, from)) = s.sock.recv_from(&mut buf) {
                s.last_heard = Instant::now();
                if *s.tid.get_or_insert(from) != from {
                    // A second transfer from a repeated RRQ: end it, as RFC 1350 says.
                    let _ = s.sock.send_to(&[0, 5, 0, 5, 0], from);
                    continue;
                }
                let pkt = &buf[..len];
                match pkt {
                    [0, 6, ..] => s.oack = true,
                    [0, 3, hi, lo, body @ ..] if u16::from_be_bytes([*hi, *lo]) == s.expect => {
                        s.started.get_or_insert_with(Instant::now);
                        s.data.extend_from_slice(body);
                        s.last_sent = ack(s.expect);
                        let _ = s.sock.send_to(&s.last_sent, from);
                        s.expect = s.expect.wrapping_add(1);
                        if body.len() < usize::from(blksize) {
                            let took = s.started.map(|t| t.elapsed()).unwrap_or_default();
                            s.done = Some(Ok(took));
                            break;
                        }
                    }
                    // A repeat of an earlier block: our ACK was lost or late.
                    [0, 3, ..] if !holding => {
                        let _ = s.sock.send_to(&s.last_sent, from);
                    }
                    [0, 5, ..] => {
                        s.done = Some(Err(format!("ERROR {}", String::from_utf8_lossy(&pkt[4..]))));
                        break;
                    }
                    _ => {}
                }
            }
        }
        for p in &mut polls {
            p.revents = 0;
        }
    }
    Ok(slots
        .into_iter()
        .map(|s| match s.done {
            Some(Ok(elapsed)) => Fetched {
                result: Ok(s.data),
                elapsed,
            },
            Some(Err(e)) => Fetched {
                result: Err(e),
                elapsed: Duration::ZERO,
            },
            None => Fetched {
                result: Err("unfinished".into()),
                elapsed: Duration::ZERO,
            },
        })
        .collect())
}
