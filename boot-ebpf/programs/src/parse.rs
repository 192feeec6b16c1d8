//! Bounds-checked access to frame headers. Offsets are computed from the headers themselves
//! (the IPv4 IHL, an optional 802.1Q tag), never assumed.

use aya_ebpf::programs::XdpContext;

/// Ethernet header length without tags.
const ETH_HLEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;

/// A pointer to `T` at `offset` in the frame, or `None` if `T` would run past its end.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A big-endian `u16` at `offset`.
#[inline(always)]
pub fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: ptr_at checked that both bytes lie inside the frame.
    Some(u16::from_be_bytes(unsafe { *p }))
}

/// A byte at `offset`.
#[inline(always)]
pub fn u8_at(ctx: &XdpContext, offset: usize) -> Option<u8> {
    let p = ptr_at::<u8>(ctx, offset)?;
    // SAFETY: ptr_at checked that the byte lies inside the frame.
    Some(unsafe { *p })
}

/// Where the headers of a UDP/IPv4 datagram start, and what the fast path needs of them.
#[derive(Clone, Copy)]
pub struct Udp4 {
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// Offset of the IPv4 header (14, or 18 behind one VLAN tag).
    pub l3: usize,
    /// Offset of the UDP header.
    pub l4: usize,
    /// Whether the datagram is the first fragment of several (more-fragments bit set).
    pub fragmented: bool,
}

/// Parses Ethernet (with at most one VLAN tag), IPv4 and UDP. `None` for anything else,
/// including truncated headers and non-first IPv4 fragments (which carry no UDP header).
#[inline(always)]
pub fn udp4(ctx: &XdpContext) -> Option<Udp4> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16_at(ctx, ETH_HLEN - 2)?;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, ETH_HLEN + VLAN_HLEN - 2)?;
        l3 += VLAN_HLEN;
    }
    if ethertype != ETH_P_IP {
        return None;
    }
    let ver_ihl = u8_at(ctx, l3)?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    if u8_at(ctx, l3 + 9)? != IPPROTO_UDP {
        return None;
    }
    // Fragment offset (low 13 bits): only the first fragment has the UDP header.
    let frag = be16_at(ctx, l3 + 6)?;
    if frag & 0x1fff != 0 {
        return None;
    }
    let l4 = l3 + ihl;
    let dst_port = be16_at(ctx, l4 + 2)?;
    Some(Udp4 {
        dst_port,
        l3,
        l4,
        fragmented: frag & 0x2000 != 0,
    })
}
