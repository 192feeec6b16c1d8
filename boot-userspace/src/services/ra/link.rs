//! Router discovery where the kernel has no IPv6 on the interface (`disable_ipv6`, a common
//! hardening sysctl on provisioning interfaces): a packet socket reads IPv6 frames and the
//! responder writes whole IPv6 packets, from the interface's EUI-64 link-local address
//! (RFC 4291 appendix A), so iPXE's router discovery still ends at once.
//!
//! The kernel does none of the checks it does for an ICMPv6 socket here, so [`parse`] does
//! them: version, next header, hop limit 255 (RFC 4861 section 6.1.1: not routed), lengths
//! and the ICMPv6 checksum. A classic BPF filter keeps every other frame out of the socket.

use std::{
    io,
    mem::{size_of, size_of_val},
    net::Ipv6Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use socket2::Socket;

/// EtherType of IPv6.
const ETH_P_IPV6: u16 = 0x86dd;
/// IPv6 next header of ICMPv6.
const ICMPV6: u8 = 58;
/// Fixed IPv6 header length.
const HEADER: usize = 40;

/// The EUI-64 link-local address of `mac`: fe80::/64 with the MAC split by ff:fe and its
/// universal/local bit flipped.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        mac[0] ^ 0x02,
        mac[1],
        mac[2],
        0xff,
        0xfe,
        mac[3],
        mac[4],
        mac[5],
    ])
}

/// The Ethernet multicast address of an IPv6 multicast address (RFC 2464 section 7).
pub fn multicast_mac(ip: Ipv6Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// A router discovery message read off the link: its sender and ICMPv6 type.
#[derive(Debug, PartialEq, Eq)]
pub struct Received {
    /// IPv6 source address (`::` for a host without an address yet).
    pub src: Ipv6Addr,
    /// [`super::ROUTER_SOLICITATION`] or [`super::ROUTER_ADVERTISEMENT`].
    pub kind: u8,
}

/// Reads an IPv6 packet as the kernel would before handing ICMPv6 to a socket; `None` for
/// anything that is not a valid router solicitation or advertisement addressed to all
/// routers, all nodes or `me` (the interface's link-local address).
pub fn parse(packet: &[u8], me: Ipv6Addr) -> Option<Received> {
    let header = packet.get(..HEADER)?;
    if header[0] >> 4 != 6 || header[6] != ICMPV6 || header[7] != 255 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let icmp = packet.get(HEADER..HEADER + len)?;
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&header[8..24]).ok()?);
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&header[24..40]).ok()?);
    let all = |last| Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, last);
    if ![all(1), all(2), me].contains(&dst) || checksum(src, dst, icmp) != 0 {
        return None;
    }
    let kind = super::router_message(icmp)?;
    Some(Received { src, kind })
}

/// An IPv6 packet carrying `icmp` (its checksum field zero) from `src` to `dst`, hop limit
/// 255, with the checksum filled in.
pub fn packet(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(HEADER + icmp.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    p.extend_from_slice(&[ICMPV6, 255]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let at = p.len();
    p.extend_from_slice(icmp);
    let sum = checksum(src, dst, &p[at..]);
    p[at + 2..at + 4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The ICMPv6 checksum over the pseudo-header and `icmp` (RFC 4443 section 2.3): 0 for a
/// message whose checksum field is right, the value to put there for one whose field is 0.
fn checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |b| u64::from(*b));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(icmp);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A packet socket on interface `index` for IPv6 frames that are ICMPv6 router solicitations
/// or advertisements, member of the all-routers and all-nodes groups' Ethernet addresses
/// (the kernel, which has no IPv6 here, would not have joined them), non-blocking.
pub fn open(index: u32) -> io::Result<Socket> {
    let proto = ETH_P_IPV6.to_be();
    // Protocol 0: the socket receives nothing until bind names the protocol and the
    // interface, after the filter is on (a socket opened with a protocol would queue every
    // interface's frames until then).
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let ifindex = i32::try_from(index).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // Offsets are from the IPv6 header (a datagram packet socket): next header at 6, the
    // ICMPv6 type right after the fixed header at 40 (router discovery carries no extension
    // headers).
    let filter = [
        bpf(0x30, 0, 0, 6),                                      // ldb [6]
        bpf(0x15, 0, 4, u32::from(ICMPV6)),                      // jeq #58, next, drop
        bpf(0x30, 0, 0, HEADER as u32),                          // ldb [40]
        bpf(0x15, 1, 0, u32::from(super::ROUTER_SOLICITATION)),  // jeq #133, accept
        bpf(0x15, 0, 1, u32::from(super::ROUTER_ADVERTISEMENT)), // jeq #134, accept, drop
        bpf(0x06, 0, 0, 0xffff),                                 // accept
        bpf(0x06, 0, 0, 0),                                      // drop
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex;
    // SAFETY: `addr` is a sockaddr_ll of the size passed.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    // All routers (solicitations) and all nodes (other routers' advertisements).
    for group in [2, 1] {
        let mut mreq = libc::packet_mreq {
            mr_ifindex: ifindex,
            mr_type: libc::PACKET_MR_MULTICAST as u16,
            mr_alen: 6,
            mr_address: [0; 8],
        };
        let ip = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, group);
        mreq.mr_address[..6].copy_from_slice(&multicast_mac(ip));
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)?;
    }
    Ok(Socket::from(fd))
}

fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T of the size passed, as the option expects.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            size_of_val(value) as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one frame's IPv6 packet into `buf`: its length and the sender's MAC, or `None`
/// for frames the kernel would not deliver to this host's IPv6: sent by the interface
/// itself, addressed to another host (promiscuous mode), or from another interface.
pub fn recv(sock: &Socket, index: u32, buf: &mut [u8]) -> io::Result<Option<(usize, [u8; 6])>> {
    // SAFETY: an all-zero sockaddr_ll is valid; recvfrom fills it.
    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: `buf` is writable for its length; `from` is a sockaddr_ll of `len` bytes.
    let n = unsafe {
        libc::recvfrom(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            std::ptr::addr_of_mut!(from).cast(),
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let other_interface = u32::try_from(from.sll_ifindex) != Ok(index);
    if other_interface
        || matches!(
            from.sll_pkttype,
            libc::PACKET_OUTGOING | libc::PACKET_OTHERHOST
        )
    {
        return Ok(None);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&from.sll_addr[..6]);
    Ok(Some((n as usize, mac)))
}

/// Sends the IPv6 `packet` on interface `index` to the Ethernet address `to`.
pub fn send(sock: &Socket, index: u32, to: [u8; 6], packet: &[u8]) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_IPV6.to_be();
    addr.sll_ifindex =
        i32::try_from(index).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&to);
    // SAFETY: `packet` is readable for its length; `addr` is a sockaddr_ll of the size passed.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            std::ptr::addr_of!(addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);

    #[test]
    fn the_link_local_address_is_eui64_with_the_ul_bit_flipped() {
        assert_eq!(
            link_local([0x52, 0x54, 0x00, 0xb0, 0x0f, 0x01]),
            "fe80::5054:ff:feb0:f01"
                .parse::<Ipv6Addr>()
                .expect("address")
        );
        assert_eq!(
            multicast_mac("ff02::1".parse().expect("address")),
            [0x33, 0x33, 0, 0, 0, 1]
        );
    }

    #[test]
    fn a_built_advertisement_parses_back_and_a_damaged_one_does_not() {
        let src = link_local([2, 0, 0, 0, 0, 1]);
        let dst: Ipv6Addr = "ff02::1".parse().expect("address");
        let p = packet(
            src,
            dst,
            &super::super::advertisement([2, 0, 0, 0, 0, 1], None),
        );
        assert_eq!(p.len(), 40 + 24);
        assert_eq!(
            parse(&p, ME),
            Some(Received {
                src,
                kind: super::super::ROUTER_ADVERTISEMENT
            })
        );
        let mut bad = p.clone();
        bad[50] ^= 1;
        assert_eq!(parse(&bad, ME), None, "checksum");
        let mut routed = p.clone();
        routed[7] = 254;
        assert_eq!(parse(&routed, ME), None, "hop limit below 255");
        assert_eq!(parse(&p[..50], ME), None, "cut short");
        let mut tcp = p.clone();
        tcp[6] = 6;
        assert_eq!(parse(&tcp, ME), None, "not ICMPv6");
        let elsewhere = packet(
            src,
            "fe80::7".parse().expect("address"),
            &super::super::advertisement([2, 0, 0, 0, 0, 1], None),
        );
        assert_eq!(parse(&elsewhere, ME), None, "to another host");
        let to_me = packet(
            src,
            ME,
            &super::super::advertisement([2, 0, 0, 0, 0, 1], None),
        );
        assert!(parse(&to_me, ME).is_some(), "to this interface");
    }

    #[test]
    fn a_solicitation_is_read_with_its_sender() {
        // An RS from fe80::1 to ff02::2: type 133, code 0, checksum, reserved, and a source
        // link-layer option. (rdisc6 and iPXE check the other direction in the lab tests.)
        let src: Ipv6Addr = "fe80::1".parse().expect("address");
        let dst: Ipv6Addr = "ff02::2".parse().expect("address");
        let rs = [133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 0, 0, 0, 0, 1];
        let p = packet(src, dst, &rs);
        assert_eq!(
            checksum(src, dst, &p[40..]),
            0,
            "a right checksum sums to 0"
        );
        assert_eq!(
            parse(&p, ME),
            Some(Received {
                src,
                kind: super::super::ROUTER_SOLICITATION
            })
        );
    }
}
