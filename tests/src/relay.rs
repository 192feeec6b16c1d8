//! An impairing relay: a namespace between client and server that passes Ethernet frames
//! from one interface to the other and drops, duplicates and reorders UDP datagrams on the
//! way, decided by a seeded generator (this kernel has no netem).
//!
//! A sender's UDP GSO batch crosses a veth as one frame; the relay cuts it into the datagrams
//! it stands for, so that each one is impaired on its own as on a wire.
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
    /// GSO batches cut into datagrams.
    pub gso_batches: AtomicU64,
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

use crate::Rng;

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
    // Frames come with a virtio-net header saying whether they are GSO batches.
    let on: i32 = 1;
    // SAFETY: on is a valid int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            std::ptr::addr_of!(on).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc < 0 {
        return Err(format!(
            "PACKET_VNET_HDR on {ifname}: {}",
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

/// Size of `struct virtio_net_hdr`, which precedes every frame on a PACKET_VNET_HDR socket.
const VNET_HDR: usize = 10;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`.
const GSO_UDP_L4: u8 = 5;

fn send(fd: &OwnedFd, frame: &[u8]) {
    // A zero header: a plain frame, no offloads.
    let zero = [0u8; VNET_HDR];
    let iov = [
        libc::iovec {
            iov_base: zero.as_ptr() as *mut libc::c_void,
            iov_len: VNET_HDR,
        },
        libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        },
    ];
    // SAFETY: both iovecs point to live buffers of the lengths given. A failed send is loss,
    // which is what a relay may cause anyway.
    unsafe {
        libc::writev(fd.as_raw_fd(), iov.as_ptr(), 2);
    }
}

/// The datagrams a UDP GSO batch stands for (`gso_size` payload bytes each, the last may be
/// shorter), each with its own IPv4 and UDP header; `None` if it is not one.
fn segments(frame: &[u8], gso_size: usize) -> Option<Vec<Vec<u8>>> {
    let udp = udp_offset(frame)?;
    let payload = &frame[udp + 8..];
    if gso_size == 0 {
        return None;
    }
    let id = u16::from_be_bytes([frame[18], frame[19]]);
    let mut out = Vec::new();
    for (i, chunk) in payload.chunks(gso_size).enumerate() {
        let mut seg = Vec::with_capacity(udp + 8 + chunk.len());
        seg.extend_from_slice(&frame[..udp + 8]);
        seg.extend_from_slice(chunk);
        let ip_len = (seg.len() - 14) as u16;
        seg[16..18].copy_from_slice(&ip_len.to_be_bytes());
        seg[18..20].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        seg[24] = 0;
        seg[25] = 0;
        let sum = ipv4_checksum(&seg[14..udp]);
        seg[24..26].copy_from_slice(&sum.to_be_bytes());
        seg[udp + 4..udp + 6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
        out.push(seg);
    }
    Some(out)
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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
        if addr.sll_pkttype == libc::PACKET_OUTGOING || (n as usize) < VNET_HDR {
            continue;
        }
        let (hdr, frame) = buf[..n as usize].split_at(VNET_HDR);
        let gso_size = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
        let frames = match hdr[1] {
            GSO_UDP_L4 => {
                stats.gso_batches.fetch_add(1, Ordering::Relaxed);
                segments(frame, gso_size).unwrap_or_default()
            }
            _ => vec![frame.to_vec()],
        };
        for mut frame in frames {
            relay_one(&mut frame, &to, impair, &mut rng, &mut held, &stats);
        }
    }
}

fn relay_one(
    frame: &mut [u8],
    to: &OwnedFd,
    impair: Impairment,
    rng: &mut Rng,
    held: &mut Option<Vec<u8>>,
    stats: &RelayStats,
) {
    let Some(udp) = udp_offset(frame) else {
        send(to, frame);
        stats.forwarded.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // The sender's checksum may be left for offload (veth never computes it); zero means
    // "no checksum" in IPv4 UDP, which every receiver accepts.
    frame[udp + 6] = 0;
    frame[udp + 7] = 0;
    if impair.spare_tftp_handshake && is_tftp_handshake(&frame[udp + 8..]) {
        send(to, frame);
        stats.forwarded.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let roll = (rng.next_u64() % 1000) as u32;
    if roll < impair.drop {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if roll < impair.drop + impair.duplicate {
        send(to, frame);
        stats.duplicated.fetch_add(1, Ordering::Relaxed);
    } else if roll < impair.drop + impair.duplicate + impair.reorder && held.is_none() {
        *held = Some(frame.to_vec());
        stats.reordered.fetch_add(1, Ordering::Relaxed);
        return;
    }
    send(to, frame);
    stats.forwarded.fetch_add(1, Ordering::Relaxed);
    if let Some(f) = held.take() {
        send(to, &f);
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
    fn cuts_a_gso_batch_into_datagrams() {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12] = 0x08;
        f[14] = 0x45;
        f[18] = 0x12;
        f[19] = 0x34;
        f[23] = 17;
        f.extend((0..25u8).collect::<Vec<_>>());
        let segs = segments(&f, 10).expect("udp");
        assert_eq!(segs.len(), 3);
        assert_eq!(&segs[2][42..], &[20, 21, 22, 23, 24]);
        assert_eq!(u16::from_be_bytes([segs[2][16], segs[2][17]]), 20 + 8 + 5);
        assert_eq!(u16::from_be_bytes([segs[1][18], segs[1][19]]), 0x1235);
        assert_eq!(u16::from_be_bytes([segs[0][38], segs[0][39]]), 18);
        assert_eq!(
            ipv4_checksum(&segs[1][14..34]),
            0,
            "header checksum verifies"
        );
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
            (0..8).map(|_| r.next_u64() % 1000).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
