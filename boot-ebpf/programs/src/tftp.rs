//! TFTP in the kernel: a TC ingress program that answers the in-order ACK of a registered
//! transfer with the next window of DATA frames (one for lock-step), built in the ACK's own
//! buffer and sent back out of the interface it came in on (see the ABI's `tftp` module for
//! the maps).
//!
//! Why TC and not XDP: a DATA frame is up to 1514 bytes and the ACK it answers 46 (60 on the
//! wire). XDP can grow a frame only into the tailroom of the buffer the driver gave it, and
//! veth gives a small ACK a buffer sized to it (`bpf_xdp_adjust_tail` refuses), as do
//! drivers with 2 KiB receive buffers for a full block. `bpf_skb_change_tail` grows an skb
//! whatever its buffer, on every driver.
//!
//! The program never decides anything the userspace state machine would decide otherwise:
//! it answers only the ACK of the highest block sent, and only when the next window does not
//! hold the last block. Every other frame to a transfer port goes on to the transfer's socket.

use aya_ebpf::{
    bindings::{BPF_F_RECOMPUTE_CSUM, TC_ACT_OK},
    helpers::generated::{
        bpf_clone_redirect, bpf_csum_diff, bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail,
        bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use bootfabric_abi::{
    tftp::{
        Slot, Xfer, XferKey, BLOCK_MAX, CHUNK_BYTES, DATA_HEADERS, TSTAT_ANSWERED, TSTAT_BYTES,
        TSTAT_COUNT, TSTAT_FAILED, TSTAT_PASSED_LAST, TSTAT_PASSED_OUT_OF_ORDER, WINDOW_MAX,
        XFERS_MAX_ENTRIES,
    },
    CLASS_TFTP_DATA,
};

use crate::{
    classify::CLASSIFY_CONFIG,
    csum::{fold, word},
};

/// Hot files, one fixed-size slot after another (userspace sizes the map at load).
#[map(name = "TFTP_CHUNKS")]
static TFTP_CHUNKS: Array<Slot> = Array::with_max_entries(1, 0);

/// Registered transfers by four-tuple.
#[map(name = "TFTP_XFERS")]
static TFTP_XFERS: HashMap<XferKey, Xfer> = HashMap::with_max_entries(XFERS_MAX_ENTRIES, 0);

/// Counters by `TSTAT_*`.
#[map(name = "TFTP_STATS")]
static TFTP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TSTAT_COUNT, 0);

const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const OP_ACK: u16 = 4;
const OP_DATA: u8 = 3;
/// Mask of the offset in a slot: `CHUNK_BYTES` is a power of two.
const CHUNK_MASK: u64 = CHUNK_BYTES as u64 - 1;
const CHUNK_SHIFT: u32 = CHUNK_BYTES.trailing_zeros();

#[inline(always)]
fn stat(i: u32, by: u64) {
    if let Some(c) = TFTP_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot; this CPU is its only writer.
        unsafe { *c += by };
    }
}

/// Classifies one frame at ingress: answers it, or lets it go on.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    match answer(ctx) {
        Ok(action) => action,
        Err(Some(why)) => {
            stat(why, 1);
            TC_ACT_OK as i32
        }
        Err(None) => TC_ACT_OK as i32,
    }
}

/// `Err(None)`: not ours. `Err(Some(stat))`: ours, passed for the reason counted.
#[inline(always)]
fn answer(ctx: &TcContext) -> Result<i32, Option<u32>> {
    let skb = ctx.skb.skb;
    // An ACK is 46 bytes from the Ethernet header on; anything shorter is not one, and
    // anything longer (IPv4 options, a VLAN tag, padding aside) is left to the stack.
    let mut ack = [0u8; DATA_HEADERS];
    // SAFETY: `ack` is DATA_HEADERS bytes on this program's stack.
    if unsafe {
        bpf_skb_load_bytes(
            skb as *const _,
            0,
            ack.as_mut_ptr().cast(),
            DATA_HEADERS as u32,
        )
    } != 0
    {
        return Err(None);
    }
    // Ethernet → IPv4 without options, not a fragment → UDP.
    if ack[12..14] != ETH_P_IP || ack[14] != 0x45 || ack[23] != 17 {
        return Err(None);
    }
    if (u16::from_be_bytes([ack[20], ack[21]]) & 0x3fff) != 0 {
        return Err(None);
    }
    let dst_port = u16::from_be_bytes([ack[36], ack[37]]);
    let Some(cfg) = CLASSIFY_CONFIG.get(0) else {
        return Err(None);
    };
    if cfg.class_of_udp_port(dst_port) != CLASS_TFTP_DATA {
        return Err(None);
    }
    // UDP length 12: opcode and block number, nothing after.
    if u16::from_be_bytes([ack[38], ack[39]]) != 12
        || u16::from_be_bytes([ack[42], ack[43]]) != OP_ACK
    {
        return Err(None);
    }
    let key = XferKey {
        client_ip: [ack[26], ack[27], ack[28], ack[29]],
        server_ip: [ack[30], ack[31], ack[32], ack[33]],
        client_port: [ack[34], ack[35]],
        server_port: [ack[36], ack[37]],
    };
    let Some(x) = TFTP_XFERS.get_ptr_mut(&key) else {
        return Err(None);
    };
    // SAFETY: a map value alive for the program run. `sent` is an aligned u64 that only
    // this program writes once registered; volatile keeps each access one instruction.
    let sent = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*x).sent)) };
    // SAFETY: as above; userspace wrote these before it published the entry.
    let (blocks, blksize, first_slot, slots, ttl, window) = unsafe {
        (
            (*x).blocks,
            (*x).blksize as u64,
            (*x).first_slot,
            (*x).slots,
            (*x).ttl,
            (*x).window as u64,
        )
    };
    let wire = u16::from_be_bytes([ack[44], ack[45]]);
    if wire != sent as u16 || sent == 0 {
        return Err(Some(TSTAT_PASSED_OUT_OF_ORDER));
    }
    if window == 0 || window > WINDOW_MAX as u64 {
        return Err(Some(TSTAT_FAILED));
    }
    // The window after `sent` must end before the last block: a short window would leave
    // the client waiting for blocks that never come, and the last block is userspace's.
    let next = sent + 1;
    if sent + window >= blocks {
        return Err(Some(TSTAT_PASSED_LAST));
    }
    if blksize < 4 || blksize > BLOCK_MAX as u64 || !blksize.is_multiple_of(4) {
        return Err(Some(TSTAT_FAILED));
    }
    let len = (blksize as usize) & 0x7fc;
    if len == 0 || len > BLOCK_MAX {
        return Err(Some(TSTAT_FAILED));
    }

    // The DATA frames' headers: the ACK's addresses swapped, IPv4 as the stack sends a UDP
    // datagram from an unconnected socket (DF, ID 0, the default TTL). Every block of a
    // window has the same length, so only the UDP checksum and block number differ.
    let udp_len = (8 + 4 + len) as u16;
    let ip_len = (20 + udp_len as usize) as u16;
    let ul = udp_len.to_be_bytes();
    let tl = ip_len.to_be_bytes();
    let mut h = [0u8; DATA_HEADERS];
    let mut i = 0;
    while i < 6 {
        h[i] = ack[6 + i];
        h[6 + i] = ack[i];
        i += 1;
    }
    h[12] = 0x08;
    h[13] = 0x00;
    let ip = [
        0x45, 0, tl[0], tl[1], 0, 0, 0x40, 0, ttl, 17, 0, 0, ack[30], ack[31], ack[32], ack[33],
        ack[26], ack[27], ack[28], ack[29],
    ];
    let mut sum = 0u64;
    let mut k = 0;
    while k < 20 {
        h[14 + k] = ip[k];
        if k % 2 == 0 {
            sum += word(ip[k], ip[k + 1]);
        }
        k += 1;
    }
    let c = (!fold(sum)).to_le_bytes();
    h[24] = c[0];
    h[25] = c[1];
    // UDP: ports swapped, length; checksum, opcode and block per block below.
    h[34] = ack[36];
    h[35] = ack[37];
    h[36] = ack[34];
    h[37] = ack[35];
    h[38] = ul[0];
    h[39] = ul[1];
    h[42] = 0;
    h[43] = OP_DATA;

    // The checksum field as the ACK came: a full checksum (the sender computed it), or, from
    // a local socket over veth, the pseudo-header sum the stack leaves for offload
    // (CHECKSUM_PARTIAL), which this skb keeps and whoever completes it next relies on.
    let pseudo = |src: &[u8], dst: &[u8], ulen: [u8; 2]| {
        word(src[0], src[1])
            + word(src[2], src[3])
            + word(dst[0], dst[1])
            + word(dst[2], dst[3])
            + word(0, 17)
            + word(ulen[0], ulen[1])
    };
    let ack_pseudo = pseudo(&ack[26..30], &ack[30..34], [ack[38], ack[39]]);
    let partial = u16::from_le_bytes([ack[40], ack[41]]) == fold(ack_pseudo)
        && !ack_checksum_ok(&ack, ack_pseudo);
    // Pseudo-header and UDP header (checksum 0) with the opcode: the part of every block's
    // sum that does not depend on the block.
    let data_pseudo = pseudo(&h[26..30], &h[30..34], ul);
    let fixed = data_pseudo
        + word(h[34], h[35])
        + word(h[36], h[37])
        + word(h[38], h[39])
        + word(h[42], h[43]);

    // Grow the ACK into a DATA frame once and write the shared headers; then, block by
    // block, the checksum, the block number and the payload. BPF_F_RECOMPUTE_CSUM keeps a
    // CHECKSUM_COMPLETE skb's sum true to its new bytes (the receiver would otherwise
    // report a hardware checksum failure); other skbs carry none.
    let flags = BPF_F_RECOMPUTE_CSUM as u64;
    // SAFETY: the helpers get this program's skb and buffers of the lengths given.
    unsafe {
        if bpf_skb_change_tail(skb, (DATA_HEADERS + len) as u32, 0) != 0 {
            return Err(Some(TSTAT_FAILED));
        }
        if bpf_skb_store_bytes(skb, 0, h.as_ptr().cast(), 40, flags) != 0 {
            return Err(Some(TSTAT_FAILED));
        }
    }
    // SAFETY: reads the skb's ingress interface; the frames go back out of it.
    let ifindex = unsafe { (*skb).ifindex };
    let mut done = 0u64;
    let mut n = 0u64;
    while n < WINDOW_MAX as u64 {
        if n >= window {
            break;
        }
        let block = next + n;
        let offset = (block - 1) * blksize;
        let chunk = offset >> CHUNK_SHIFT;
        if chunk >= slots as u64 {
            break;
        }
        let Some(slot) = TFTP_CHUNKS.get_ptr(first_slot + chunk as u32) else {
            break;
        };
        let within = (offset & CHUNK_MASK) as usize;
        // SAFETY: within < CHUNK_BYTES and len <= BLOCK_MAX: inside the slot's SLOT_BYTES.
        let payload = unsafe { (*slot).bytes.as_ptr().add(within) };
        let bn = (block as u16).to_be_bytes();
        let check = if partial {
            fold(data_pseudo)
        } else {
            let Some(s) = payload_sum(payload, len) else {
                break;
            };
            let mut c = !fold(fixed + word(bn[0], bn[1]) + s);
            if c == 0 {
                c = 0xffff;
            }
            c
        };
        let cb = check.to_le_bytes();
        let tail = [cb[0], cb[1], 0, OP_DATA, bn[0], bn[1]];
        // SAFETY: as above.
        let written = unsafe {
            bpf_skb_store_bytes(skb, 40, tail.as_ptr().cast(), 6, flags) == 0
                && bpf_skb_store_bytes(skb, DATA_HEADERS as u32, payload.cast(), len as u32, flags)
                    == 0
        };
        if !written {
            break;
        }
        if n + 1 == window {
            done = n + 1;
            break;
        }
        // Every block but the window's last leaves as a clone, sent now; the next write
        // unshares the buffer first, so the clone keeps this block's bytes.
        // SAFETY: this program's skb and the interface it came in on.
        if unsafe { bpf_clone_redirect(skb, ifindex, 0) } != 0 {
            break;
        }
        n += 1;
        done = n;
    }
    // Progress, for userspace: the highest block sent, then when and how many.
    // SAFETY: aligned u64s in the map value; single stores other CPUs cannot tear.
    if done > 0 {
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*x).sent), sent + done);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*x).last_ns), bpf_ktime_get_ns());
            let answered = core::ptr::read_volatile(core::ptr::addr_of!((*x).answered));
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*x).answered), answered + done);
        }
        stat(TSTAT_ANSWERED, done);
        stat(TSTAT_BYTES, done * len as u64);
    }
    if done < window {
        // A clone went out and then a block could not be built or sent: the blocks that
        // left are recorded, and the ACK goes on to userspace, whose state machine resends
        // the window after it (the client drops what it already has).
        return Err(Some(TSTAT_FAILED));
    }
    // SAFETY: the redirect sends the last block of the window back out of the interface.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// The sum of `len` payload bytes (a multiple of 4, at most `BLOCK_MAX`) in rounds of at
/// most 512 bytes, `bpf_csum_diff`'s limit before Linux 6.12.
#[inline(always)]
fn payload_sum(payload: *const u8, len: usize) -> Option<u64> {
    let mut s = 0u64;
    let mut round = 0usize;
    while round < 3 {
        let done = round * 512;
        if done >= len {
            break;
        }
        let left = len - done;
        // At most one round, then a multiple of 4 (blksize is one) the verifier sees.
        let n = if left > 512 { 512 } else { left } & 0x3fc;
        // SAFETY: the payload lies inside a slot's CHUNK_BYTES + 3 * 512 bytes: done <= 1024
        // and n <= 512 past an offset below CHUNK_BYTES.
        let c = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                payload.add(done) as *mut u32,
                n as u32,
                0,
            )
        };
        if c < 0 {
            return None;
        }
        s += c as u64 & 0xffff_ffff;
        round += 1;
    }
    Some(s)
}

/// Whether the ACK's UDP checksum verifies (a zero checksum, none sent, counts as full).
#[inline(always)]
fn ack_checksum_ok(ack: &[u8; DATA_HEADERS], pseudo: u64) -> bool {
    if ack[40] == 0 && ack[41] == 0 {
        return true;
    }
    let mut s = pseudo;
    let mut k = 34;
    while k < DATA_HEADERS {
        s += word(ack[k], ack[k + 1]);
        k += 2;
    }
    fold(s) == 0xffff
}
