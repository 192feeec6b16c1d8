//! TFTP in the kernel: the maps shared by the TC program that answers lock-step ACKs and the
//! daemon's TFTP service, which negotiates every transfer and hands the middle of it over.
//!
//! Hot files live in [`MAP_TFTP_CHUNKS`], an array of fixed slots. A file of `n` bytes takes
//! `ceil(n / CHUNK_BYTES)` consecutive slots; slot `i` of the file holds its bytes from
//! `i * CHUNK_BYTES` on, `SLOT_BYTES` of them (the next slot's head repeated as a tail), so any
//! block of at most [`BLOCK_MAX`] bytes lies inside one slot and goes out with one copy. A
//! changed file is written to free slots and new transfers name those; transfers already
//! running keep the slots they were registered with until they end, so the kernel never
//! reads a half-written file.
//!
//! A transfer is registered in [`MAP_TFTP_XFERS`] under its four-tuple once userspace has
//! sent its first block. For an ACK of the highest block sent, when the next block is not the
//! last, the program builds the next DATA frame in the ACK's buffer and sends it back out of
//! the interface it came in on. Everything else (duplicate, stale and unknown ACKs, errors,
//! the last block, timeouts) is passed to the transfer's socket, where the userspace state
//! machine decides, after reading the progress the kernel recorded here.

/// Name of the TC program in the object file.
pub const PROGRAM_TFTP: &str = "bootfabric_tftp";
/// Name of the array of hot-file slots ([`Slot`]).
pub const MAP_TFTP_CHUNKS: &str = "TFTP_CHUNKS";
/// Name of the hash map of registered transfers ([`XferKey`] → [`Xfer`]).
pub const MAP_TFTP_XFERS: &str = "TFTP_XFERS";
/// Name of the per-CPU array of counters (`TSTAT_*`).
pub const MAP_TFTP_STATS: &str = "TFTP_STATS";

/// Bytes of a file each slot starts further on: a power of two, so the slot and the offset in
/// it are a shift and a mask.
pub const CHUNK_BYTES: usize = 32 * 1024;
/// Largest block the kernel serves: 1468 bytes is what a 1500-byte MTU carries
/// (1500 − 20 IPv4 − 8 UDP − 4 TFTP).
pub const BLOCK_MAX: usize = 1468;
/// Bytes held by one slot: its chunk and a tail long enough for a block starting at its end
/// (`BLOCK_MAX` rounded up to three rounds of 512, the checksum helper's unit before Linux
/// 6.12, so that the verifier can bound every read by masks alone).
pub const SLOT_BYTES: usize = CHUNK_BYTES + 3 * 512;
/// Capacity of [`MAP_TFTP_XFERS`]: transfers the kernel can carry at once. Above it a
/// transfer stays in userspace.
pub const XFERS_MAX_ENTRIES: u32 = 8192;

/// Headers of a DATA frame: Ethernet, IPv4 without options, UDP, opcode and block number.
pub const DATA_HEADERS: usize = 14 + 20 + 8 + 4;

/// DATA frames the program sent (one per block: a window of `n` counts `n`).
pub const TSTAT_ANSWERED: u32 = 0;
/// Payload bytes sent in those frames.
pub const TSTAT_BYTES: u32 = 1;
/// ACKs for a registered transfer passed to userspace because they were not the ACK of the
/// highest block sent (duplicate, stale or bogus).
pub const TSTAT_PASSED_OUT_OF_ORDER: u32 = 2;
/// ACKs passed because the next window holds the last block, which userspace sends.
pub const TSTAT_PASSED_LAST: u32 = 3;
/// Frames to a registered transfer the program could not answer (slot missing, the frame
/// could not grow, a helper failed): passed, and userspace's timer recovers.
pub const TSTAT_FAILED: u32 = 4;
/// Number of counters.
pub const TSTAT_COUNT: u32 = 5;

/// Key of [`MAP_TFTP_XFERS`]: the transfer's four-tuple as it arrives (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct XferKey {
    /// The client's address (the ACK's source).
    pub client_ip: [u8; 4],
    /// The transfer's server address (the ACK's destination).
    pub server_ip: [u8; 4],
    /// The client's port.
    pub client_port: [u8; 2],
    /// The transfer's server port (its TID).
    pub server_port: [u8; 2],
}

/// Value of [`MAP_TFTP_XFERS`].
///
/// Userspace writes the whole entry once; afterwards the program alone writes `sent`,
/// `answered` and `last_ns`, each one aligned `u64` store, and userspace only reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Xfer {
    /// Highest block sent, counted from 1 in 64 bits (the wire number is its low 16 bits).
    pub sent: u64,
    /// Blocks the kernel has sent for this transfer.
    pub answered: u64,
    /// `bpf_ktime_get_ns` of the last block the kernel sent (0: none yet).
    pub last_ns: u64,
    /// Blocks in the file: `size / blksize + 1`, the last one short (possibly empty).
    pub blocks: u64,
    /// Size of the file in bytes.
    pub size: u64,
    /// First slot of the file in [`MAP_TFTP_CHUNKS`].
    pub first_slot: u32,
    /// Slots the file takes.
    pub slots: u32,
    /// Negotiated block size: at most [`BLOCK_MAX`], a multiple of 4.
    pub blksize: u16,
    /// IPv4 TTL of the frames, the kernel's `ip_default_ttl` as the socket would use.
    pub ttl: u8,
    /// Negotiated window (RFC 7440): blocks sent per ACK, 1 to [`WINDOW_MAX`].
    pub window: u8,
    /// Explicit padding.
    pub _pad: [u8; 4],
}

/// Value of [`MAP_TFTP_CHUNKS`]: `SLOT_BYTES` of a hot file (zeros past its end).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// The bytes.
    pub bytes: [u8; SLOT_BYTES],
}

/// Largest window the kernel sends in answer to one ACK. The verifier walks the program's
/// loop once per block, so the bound keeps that work fixed; 8 covers what firmware asks
/// (OVMF: 4), and larger windows go out as one GSO send from userspace.
pub const WINDOW_MAX: u16 = 8;

/// Whether the kernel can carry a transfer of `blksize` and `windowsize`: a window of at most
/// [`WINDOW_MAX`], a block that fits [`BLOCK_MAX`] and is a multiple of 4 (the checksum
/// helper's unit).
pub fn kernel_can_serve(blksize: u16, windowsize: u16) -> bool {
    (1..=WINDOW_MAX).contains(&windowsize)
        && blksize >= 8
        && blksize as usize <= BLOCK_MAX
        && blksize.is_multiple_of(4)
}

/// The slots a file of `size` bytes takes.
pub fn slots_for(size: u64) -> u64 {
    size.div_ceil(CHUNK_BYTES as u64).max(1)
}
