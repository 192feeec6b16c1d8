//! An impairing relay: a namespace between client and server that passes Ethernet frames
//! from one interface to the other and drops, duplicates and reorders UDP datagrams on the
//! way, decided by a seeded generator (this kernel has no netem).
//!
//! Each direction draws from its own generator, so the decisions for the n-th UDP frame of a
//! direction are the same on every run with the same seed. Non-UDP frames (ARP, IPv6
//! neighbour discovery) pass untouched, so the lab's addressing never depends on luck.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use crate::{veth, LabError, Netns};

/// What the relay does to UDP frames, in parts per thousand.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    /// Frames dropped.
    pub drop: u32,
    /// Frames sent twice.
    pub duplicate: u32,
    /// Frames held back and sent after the next one (or after 20 ms if none comes).
    pub reorder: u32,
    /// Never impair a TFTP OACK or the ACK of block 0: for clients that abort when an OACK
    /// comes twice (atftp), which a lost ACK 0 causes against any server.
    pub spare_tftp_handshake: bool,
}

/// A TFTP OACK, or the ACK of block 0, in a UDP payload.
fn is_tftp_handshake(payload: &[u8]) -> bool {
    matches!(payload, [0, 6, ..] | [0, 4, 0, 0])
}

/// What the relay did, both directions together.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Frames passed on (duplicates count once).
    pub forwarded: AtomicU64,
    /// UDP frames dropped.
    pub dropped: AtomicU64,
    /// UDP frames sent twice.
    pub duplicated: AtomicU64,
    /// UDP frames sent after a later one.
    pub reordered: AtomicU64,
}

impl RelayStats {
    /// `(dropped, duplicated, reordered)` so far.
    pub fn impaired(&self) -> (u64, u64, u64) {
        (
            self.dropped.load(Ordering::Relaxed),
            self.duplicated.load(Ordering::Relaxed),
            self.reordered.load(Ordering::Relaxed),
        )
    }
}

/// A running relay; its threads stop on drop.
pub struct Relay {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Counters of what it did.
    pub stats: Arc<RelayStats>,
}

/// splitmix64: small, seedable, good enough to scatter impairments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn packet_socket(ifname: &str) -> Result<OwnedFd, String> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(format!(
            "packet socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a fresh, owned descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).map_err(|e| e.to_string())?;
    // SAFETY: name is a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(format!("{ifname}: no such interface"));
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields set are the ones bind reads.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = index as i32;
    // SAFETY: addr is a valid sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(format!(
            "bind {ifname}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // A receive timeout lets the thread see the stop flag and release a held frame.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: tv is a valid timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    Ok(fd)
}

/// Offset of the UDP header in an untagged IPv4 frame that is a first (or only) fragment.
fn udp_offset(frame: &[u8]) -> Option<usize> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let frag_offset = u16::from_be_bytes([frame[20], frame[21]]) & 0x1fff;
    (frame[23] == 17 && frag_offset == 0 && frame.len() >= 14 + ihl + 8).then_some(14 + ihl)
}

fn send(fd: &OwnedFd, frame: &[u8]) {
    // SAFETY: frame is a valid buffer of the length given. A failed send is loss, which is
    // what a relay may cause anyway.
    unsafe {
        libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0);
    }
}

fn pump(
    from: OwnedFd,
    to: Arc<OwnedFd>,
    impair: Impairment,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    stats: Arc<RelayStats>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut held: Option<Vec<u8>> = None;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: an all-zero sockaddr_ll is valid for recvfrom to fill.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf and addr are valid for the sizes given.
        let n = unsafe {
            libc::recvfrom(
                from.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::addr_of_mut!(addr).cast(),
                &mut len,
            )
        };
        if n < 0 {
            // Timeout: nothing came after the held frame, so it goes now (late, not lost).
            if let Some(f) = held.take() {
                send(&to, &f);
            }
            continue;
        }
        if addr.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let frame = &mut buf[..n as usize];
        let Some(udp) = udp_offset(frame) else {
            send(&to, frame);
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // The sender's checksum may be left for offload (veth never computes it); zero means
        // "no checksum" in IPv4 UDP, which every receiver accepts.
        frame[udp + 6] = 0;
        frame[udp + 7] = 0;
        if impair.spare_tftp_handshake && is_tftp_handshake(&frame[udp + 8..]) {
            send(&to, frame);
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let roll = (rng.next() % 1000) as u32;
        if roll < impair.drop {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if roll < impair.drop + impair.duplicate {
            send(&to, frame);
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
        } else if roll < impair.drop + impair.duplicate + impair.reorder && held.is_none() {
            held = Some(frame.to_vec());
            stats.reordered.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        send(&to, frame);
        stats.forwarded.fetch_add(1, Ordering::Relaxed);
        if let Some(f) = held.take() {
            send(&to, &f);
        }
    }
}

impl Relay {
    /// Relays between interfaces `a` and `b` of `ns` until dropped.
    pub fn start(
        ns: &Netns,
        a: &str,
        b: &str,
        impair: Impairment,
        seed: u64,
    ) -> Result<Self, LabError> {
        let (a, b) = (a.to_owned(), b.to_owned());
        // Sockets made inside the namespace stay there, whichever thread uses them.
        let (fa, fb) =
            ns.run(move || Ok::<_, String>((packet_socket(&a)?, packet_socket(&b)?)))??;
        let fa2 = fa.try_clone().map_err(|e| e.to_string())?;
        let fb2 = fb.try_clone().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RelayStats::default());
        let mut threads = Vec::new();
        for (i, (from, to)) in [(fa, Arc::new(fb2)), (fb, Arc::new(fa2))]
            .into_iter()
            .enumerate()
        {
            let rng = Rng(seed ^ (i as u64 + 1).wrapping_mul(0x5851_f42d_4c95_7f2d));
            let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
            threads.push(std::thread::spawn(move || {
                pump(from, to, impair, rng, stop, stats)
            }));
        }
        Ok(Relay {
            stop,
            threads,
            stats,
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A server and a client namespace with an impairing relay between them: `fabric0`
/// (10.77.0.1/24) in the server, `client0` (10.77.0.2/24) in the client, as in
/// [`crate::PairLab`].
pub struct RelayLab {
    /// The relay itself (stops before its namespace goes).
    pub relay: Relay,
    /// The daemon's namespace.
    pub server: Netns,
    /// The client's namespace.
    pub client: Netns,
    /// The relay's namespace.
    pub relay_ns: Netns,
}

impl RelayLab {
    /// Builds the three namespaces and starts the relay with `impair` and `seed`.
    pub fn new(impair: Impairment, seed: u64) -> Result<Self, LabError> {
        let server = Netns::new("srv")?;
        let client = Netns::new("cli")?;
        let relay_ns = Netns::new("relay")?;
        // The relay's own IPv6 chatter would be relayed (and impaired) too.
        crate::run(
            relay_ns
                .command("sysctl")
                .args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"]),
        )?;
        crate::run(
            relay_ns
                .command("sysctl")
                .args(["-qw", "net.ipv6.conf.default.disable_ipv6=1"]),
        )?;
        veth(&server, "fabric0", "10.77.0.1/24", &relay_ns, "rs0", "")?;
        veth(&client, "client0", "10.77.0.2/24", &relay_ns, "rc0", "")?;
        client.ip(&["route", "add", "default", "dev", "client0"])?;
        let relay = Relay::start(&relay_ns, "rs0", "rc0", impair, seed)?;
        Ok(RelayLab {
            server,
            client,
            relay_ns,
            relay,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_udp_in_ipv4_frames_only() {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[23] = 17;
        assert_eq!(udp_offset(&f), Some(34));
        f[20] = 0x00;
        f[21] = 0x10; // a later fragment
        assert_eq!(udp_offset(&f), None);
        f[21] = 0;
        f[23] = 6;
        assert_eq!(udp_offset(&f), None);
        f[12] = 0x86;
        assert_eq!(udp_offset(&f), None);
    }

    #[test]
    fn knows_the_tftp_handshake() {
        assert!(is_tftp_handshake(&[0, 6, b't', b's', 0]));
        assert!(is_tftp_handshake(&[0, 4, 0, 0]));
        assert!(!is_tftp_handshake(&[0, 4, 0, 1]));
        assert!(!is_tftp_handshake(&[0, 3, 0, 1, 9]));
    }

    #[test]
    fn the_same_seed_gives_the_same_decisions() {
        let draw = |seed| {
            let mut r = Rng(seed);
            (0..8).map(|_| r.next() % 1000).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
