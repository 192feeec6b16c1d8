//! Bootfabric's XDP programs. This file holds the entry points only; parsing and
//! classification live in their own modules.
#![no_std]
#![no_main]
// Inline assembly for the per-MAC bucket's atomic add (see dhcp.rs); the crate is built with
// RUSTC_BOOTSTRAP=1 like aya-ebpf, which needs the same feature.
#![feature(asm_experimental_arch)]

mod classify;
mod csum;
mod dhcp;
mod parse;
mod tftp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// Classifies every frame on the fabric's interfaces (DHCP, TFTP, TFTP data, other) and
/// counts it; DHCP requests from reserved hosts are answered in place, malformed ones and
/// floods dropped; everything else passes.
#[xdp]
pub fn bootfabric_classify(ctx: XdpContext) -> u32 {
    classify::run(&ctx)
}

/// At TC ingress on the fabric's interfaces: answers the in-order ACKs of lock-step TFTP
/// transfers userspace handed over with the next DATA frame; everything else goes on.
#[classifier]
pub fn bootfabric_tftp(ctx: TcContext) -> i32 {
    tftp::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never entered at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
