//! Internet checksum arithmetic shared by the programs that build frames. Sums are kept in
//! memory order (16-bit words read as the CPU's little-endian loads see them), as
//! `bpf_csum_diff` returns them, and stored back the same way.

/// Folds a sum of 16-bit words (and `bpf_csum_diff` results) to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The 16-bit word of bytes `a`, `b` in memory order.
#[inline(always)]
pub fn word(a: u8, b: u8) -> u64 {
    u16::from_le_bytes([a, b]) as u64
}
