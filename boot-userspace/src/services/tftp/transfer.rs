//! The read-transfer state machine: which blocks to send next, given ACKs, timeouts and
//! errors. Pure: the socket loop owns the clock and the bytes; this owns the rules.
//!
//! - Block numbers on the wire are 16 bits and roll over to 0 after 65535 (as tftp-hpa does),
//!   so files of any size transfer; internally blocks are counted in 64 bits from 1.
//! - Windows (RFC 7440): up to `windowsize` blocks go out before an ACK is awaited; an ACK of
//!   a block inside the window resends from the block after it.
//! - Duplicate or stale ACKs change nothing (no Sorcerer's Apprentice burst); only a timeout
//!   resends, with a bounded number of retries.

use super::options::Negotiated;

/// What the socket loop should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the OACK (again).
    SendOack,
    /// Send blocks `first..=last` (absolute numbers; see [`Transfer::block_range`]).
    SendBlocks {
        /// First block.
        first: u64,
        /// Last block (inclusive).
        last: u64,
    },
    /// Nothing to send now; keep waiting.
    Wait,
    /// The last block was acknowledged.
    Done,
    /// Give up: the client stopped answering or ended the transfer.
    Abort(AbortReason),
}

/// Why a transfer was abandoned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    /// Retries exhausted.
    Timeout,
    /// The client sent an ERROR (OVMF does this right after the OACK to learn tsize).
    ClientError,
    /// The transfer ran past `tftp.max_transfer_s` (decided by the socket loop, which owns
    /// the clock).
    Lifetime,
}

/// One read transfer.
#[derive(Clone, Debug)]
pub struct Transfer {
    blksize: u64,
    windowsize: u64,
    /// Blocks in the file: size / blksize + 1 (the last one short, possibly empty).
    blocks: u64,
    /// Highest block acknowledged (0: none).
    acked: u64,
    /// Highest block sent (0: none).
    sent: u64,
    /// Waiting for ACK 0 of an OACK.
    oack_pending: bool,
    retries: u32,
    max_retries: u32,
}

impl Transfer {
    /// Starts a transfer of `size` bytes with the negotiated parameters; returns the first
    /// action (an OACK when options were acknowledged, else the first window).
    pub fn start(n: &Negotiated, size: u64, max_retries: u32) -> (Self, Action) {
        let blksize = u64::from(n.blksize.max(1));
        let mut t = Transfer {
            blksize,
            windowsize: u64::from(n.windowsize.max(1)),
            blocks: size / blksize + 1,
            acked: 0,
            sent: 0,
            oack_pending: !n.ack.is_empty(),
            retries: 0,
            max_retries,
        };
        let first = if t.oack_pending {
            Action::SendOack
        } else {
            t.window()
        };
        (t, first)
    }

    /// Byte range of absolute block `block` in the file: `(offset, len)`.
    pub fn block_range(&self, block: u64, size: u64) -> (u64, u64) {
        let offset = (block - 1) * self.blksize;
        (offset, self.blksize.min(size.saturating_sub(offset)))
    }

    /// The 16-bit number of absolute block `block` on the wire.
    pub fn wire_block(block: u64) -> u16 {
        (block % 65536) as u16
    }

    /// Sends the next window after the highest acknowledged block.
    fn window(&mut self) -> Action {
        let first = self.acked + 1;
        if first > self.blocks {
            return Action::Done;
        }
        let last = (self.acked + self.windowsize).min(self.blocks);
        self.sent = self.sent.max(last);
        Action::SendBlocks { first, last }
    }

    /// Handles an ACK with wire block number `wire`.
    pub fn on_ack(&mut self, wire: u16) -> Action {
        if self.oack_pending {
            if wire != 0 {
                return Action::Wait;
            }
            self.oack_pending = false;
            self.retries = 0;
            return self.window();
        }
        // The absolute block this ACK names: the nearest at or after what is acknowledged,
        // which must have been sent already; anything else is stale or bogus.
        let delta = u64::from(wire.wrapping_sub(Self::wire_block(self.acked)));
        let block = self.acked + delta;
        if delta == 0 || block > self.sent {
            return Action::Wait;
        }
        self.acked = block;
        self.retries = 0;
        if self.acked >= self.blocks {
            return Action::Done;
        }
        // Mid-window ACK (RFC 7440): the client lost a block; resend from the next one.
        // End-of-window ACK: the next window.
        self.window()
    }

    /// Blocks in the file, the last one short (possibly empty).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// The negotiated block size.
    pub fn blksize(&self) -> u16 {
        self.blksize as u16
    }

    /// The negotiated window (1: lock-step).
    pub fn windowsize(&self) -> u16 {
        self.windowsize as u16
    }

    /// Highest block sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Takes in what the kernel did for this transfer: it sent blocks up to `sent`, each
    /// window in answer to the ACK of the block before it, so every block before the
    /// kernel's last window is acknowledged. Progress resets the retries, as an ACK would.
    pub fn kernel_sent(&mut self, sent: u64) {
        if sent > self.sent && sent <= self.blocks {
            self.acked = self.acked.max(sent.saturating_sub(self.windowsize));
            self.sent = sent;
            self.retries = 0;
        }
    }

    /// Handles a retransmission timeout.
    pub fn on_timeout(&mut self) -> Action {
        self.retries += 1;
        if self.retries > self.max_retries {
            return Action::Abort(AbortReason::Timeout);
        }
        if self.oack_pending {
            return Action::SendOack;
        }
        let first = self.acked + 1;
        let last = self.sent.max(first).min(self.blocks);
        Action::SendBlocks { first, last }
    }

    /// Handles an ERROR from the client.
    pub fn on_error(&mut self) -> Action {
        Action::Abort(AbortReason::ClientError)
    }

    /// Retries used since the last progress.
    pub fn retries(&self) -> u32 {
        self.retries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neg(blksize: u16, windowsize: u16, oack: bool) -> Negotiated {
        Negotiated {
            blksize,
            windowsize,
            timeout: 1,
            ack: if oack {
                vec![("blksize", blksize.to_string())]
            } else {
                vec![]
            },
            timeout_capped: false,
        }
    }

    /// Runs a lossless transfer, ACKing the end of every window; returns blocks in order.
    fn run(size: u64, blksize: u16, windowsize: u16) -> Vec<u64> {
        let (mut t, mut a) = Transfer::start(&neg(blksize, windowsize, false), size, 5);
        let mut got = Vec::new();
        loop {
            match a {
                Action::SendBlocks { first, last } => {
                    got.extend(first..=last);
                    a = t.on_ack(Transfer::wire_block(last));
                }
                Action::Done => return got,
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn block_counts_at_size_boundaries() {
        for (size, blocks) in [
            (0u64, 1usize),
            (1, 1),
            (511, 1),
            (512, 2),
            (513, 2),
            (1024, 3),
        ] {
            let got = run(size, 512, 1);
            assert_eq!(got.len(), blocks, "size {size}");
            assert_eq!(got, (1..=blocks as u64).collect::<Vec<_>>());
        }
        let (t, _) = Transfer::start(&neg(512, 1, false), 1000, 5);
        assert_eq!(t.block_range(1, 1000), (0, 512));
        assert_eq!(t.block_range(2, 1000), (512, 488));
        let (t, _) = Transfer::start(&neg(512, 1, false), 1024, 5);
        assert_eq!(t.block_range(3, 1024), (1024, 0));
    }

    /// The kernel carries the middle of a lock-step transfer: userspace learns where it got
    /// to, then decides on the ACKs it is passed exactly as if it had sent those blocks.
    #[test]
    fn after_the_kernel_sent_the_middle_userspace_sends_the_last_block() {
        let size = 10 * 512 + 100; // blocks 1..=11, the last one short
        let (mut t, a) = Transfer::start(&neg(512, 1, false), size, 5);
        assert_eq!(a, Action::SendBlocks { first: 1, last: 1 });
        // The kernel answered ACK 1..=9 with blocks 2..=10 and passed ACK 10 up.
        t.kernel_sent(10);
        assert_eq!(t.sent(), 10);
        // A duplicate of an ACK the kernel answered changes nothing.
        assert_eq!(t.on_ack(Transfer::wire_block(7)), Action::Wait);
        assert_eq!(
            t.on_ack(Transfer::wire_block(10)),
            Action::SendBlocks {
                first: 11,
                last: 11
            }
        );
        assert_eq!(t.on_ack(Transfer::wire_block(11)), Action::Done);
        // Nothing past the file, nothing backwards.
        let (mut t, _) = Transfer::start(&neg(512, 1, false), size, 5);
        t.kernel_sent(12);
        assert_eq!(t.sent(), 1);
        t.kernel_sent(5);
        t.kernel_sent(3);
        assert_eq!(t.sent(), 5);
        // A timeout after the kernel's progress resends the block it sent last.
        assert_eq!(t.on_timeout(), Action::SendBlocks { first: 5, last: 5 });
    }

    /// The kernel carries windows: each answers the ACK of the window before it, so only
    /// its last window is unacknowledged; userspace resends from a gap the client reports
    /// inside it, and a timeout resends that window.
    #[test]
    fn after_the_kernel_sent_windows_userspace_resumes_at_the_clients_gap() {
        let size = 20 * 512 + 1; // blocks 1..=21
        let (mut t, a) = Transfer::start(&neg(512, 4, false), size, 5);
        assert_eq!(a, Action::SendBlocks { first: 1, last: 4 });
        // The kernel answered ACK 4 and ACK 8 with blocks 5..=12.
        t.kernel_sent(12);
        assert_eq!(t.sent(), 12);
        assert_eq!(t.on_timeout(), Action::SendBlocks { first: 9, last: 12 });
        // ACKs of windows the kernel answered are stale.
        assert_eq!(t.on_ack(Transfer::wire_block(8)), Action::Wait);
        // Block 11 was lost: the client ACKs 10.
        assert_eq!(
            t.on_ack(Transfer::wire_block(10)),
            Action::SendBlocks {
                first: 11,
                last: 14
            }
        );
        // The kernel goes on from there; userspace sends the window with the last block.
        t.kernel_sent(18);
        assert_eq!(
            t.on_ack(Transfer::wire_block(18)),
            Action::SendBlocks {
                first: 19,
                last: 21
            }
        );
        assert_eq!(t.on_ack(Transfer::wire_block(21)), Action::Done);
    }

    #[test]
    fn windows_cover_the_file_once() {
        let got = run(10 * 1468 + 7, 1468, 4);
        assert_eq!(got, (1..=11).collect::<Vec<_>>());
    }

    #[test]
    fn block_numbers_roll_over_past_65535() {
        // blksize 8: 70000 blocks, so wire numbers wrap once.
        let got = run(70_000 * 8 - 1, 8, 16);
        assert_eq!(got.len(), 70_000);
        assert_eq!(Transfer::wire_block(65_536), 0);
        assert_eq!(Transfer::wire_block(65_537), 1);
    }

    #[test]
    fn oack_waits_for_ack_zero() {
        let (mut t, a) = Transfer::start(&neg(1468, 4, true), 5000, 5);
        assert_eq!(a, Action::SendOack);
        assert_eq!(t.on_ack(3), Action::Wait);
        assert_eq!(t.on_timeout(), Action::SendOack);
        assert_eq!(t.on_ack(0), Action::SendBlocks { first: 1, last: 4 });
    }

    #[test]
    fn duplicate_acks_do_not_resend() {
        let (mut t, _) = Transfer::start(&neg(512, 2, false), 5000, 5);
        assert_eq!(t.on_ack(2), Action::SendBlocks { first: 3, last: 4 });
        assert_eq!(t.on_ack(2), Action::Wait, "duplicate");
        assert_eq!(t.on_ack(1), Action::Wait, "stale");
        assert_eq!(t.on_ack(9), Action::Wait, "never sent");
        assert_eq!(t.on_ack(4), Action::SendBlocks { first: 5, last: 6 });
    }

    #[test]
    fn mid_window_ack_resends_from_the_gap() {
        let (mut t, a) = Transfer::start(&neg(512, 4, false), 10 * 512, 5);
        assert_eq!(a, Action::SendBlocks { first: 1, last: 4 });
        // Block 3 was lost: the client ACKs 2.
        assert_eq!(t.on_ack(2), Action::SendBlocks { first: 3, last: 6 });
    }

    #[test]
    fn timeouts_resend_the_window_then_give_up() {
        let (mut t, _) = Transfer::start(&neg(512, 4, false), 10 * 512, 2);
        assert_eq!(t.on_ack(4), Action::SendBlocks { first: 5, last: 8 });
        assert_eq!(t.on_timeout(), Action::SendBlocks { first: 5, last: 8 });
        assert_eq!(t.on_timeout(), Action::SendBlocks { first: 5, last: 8 });
        assert_eq!(t.on_timeout(), Action::Abort(AbortReason::Timeout));
        // Progress resets the count.
        let (mut t, _) = Transfer::start(&neg(512, 1, false), 10 * 512, 1);
        assert_eq!(t.on_timeout(), Action::SendBlocks { first: 1, last: 1 });
        assert_eq!(t.on_ack(1), Action::SendBlocks { first: 2, last: 2 });
        assert_eq!(t.retries(), 0);
    }

    #[test]
    fn client_error_aborts() {
        let (mut t, _) = Transfer::start(&neg(1468, 4, true), 5000, 5);
        assert_eq!(t.on_error(), Action::Abort(AbortReason::ClientError));
    }

    #[test]
    fn lossy_acks_still_deliver_every_block_in_order() {
        // Deterministic loss: drop every 3rd ACK and every 5th block; the receiver ACKs the
        // last in-order block it has, as RFC 7440 receivers do.
        let size = 300 * 512 + 100;
        let (mut t, mut a) = Transfer::start(&neg(512, 8, false), size, 1000);
        let mut have = 0u64;
        let (mut n_blocks, mut n_acks) = (0u64, 0u64);
        for _ in 0..100_000 {
            match a {
                Action::SendBlocks { first, last } => {
                    for b in first..=last {
                        n_blocks += 1;
                        if n_blocks % 5 != 0 && b == have + 1 {
                            have = b;
                        }
                    }
                    n_acks += 1;
                    a = if n_acks % 3 == 0 {
                        t.on_timeout()
                    } else {
                        t.on_ack(Transfer::wire_block(have))
                    };
                    if a == Action::Wait {
                        a = t.on_timeout();
                    }
                }
                Action::Done => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(a, Action::Done);
        assert_eq!(have, size / 512 + 1);
    }
}
