//! The classifier: which of the fabric's services a frame is for, counted per interface.

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    macros::map,
    maps::{Array, PerCpuHashMap},
    programs::XdpContext,
};
use bootfabric_abi::{
    ClassifyConfig, CounterKey, Counters, ACTION_PASS, CLASS_DHCP, CLASS_OTHER,
    COUNTERS_MAX_ENTRIES, DHCP_PATH_COUNT_ONLY,
};

use crate::{dhcp, parse};

/// Packet and byte counters per interface, class and action.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuHashMap<CounterKey, Counters> =
    PerCpuHashMap::with_max_entries(COUNTERS_MAX_ENTRIES, 0);

/// The ports the daemon owns; written by userspace before attach.
#[map(name = "CLASSIFY_CONFIG")]
pub(crate) static CLASSIFY_CONFIG: Array<ClassifyConfig> = Array::with_max_entries(1, 0);

/// Classifies and counts one frame; DHCP requests go through the fast path, which may
/// answer or drop them. Everything else passes.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let ifindex = ctx.ingress_ifindex() as u32;
    let (Some(udp), Some(cfg)) = (parse::udp4(ctx), CLASSIFY_CONFIG.get(0)) else {
        count(ifindex, len, CLASS_OTHER, ACTION_PASS);
        return xdp_action::XDP_PASS;
    };
    let class = cfg.class_of_udp_port(udp.dst_port);
    if class == CLASS_DHCP && cfg.dhcp_fast_path != DHCP_PATH_COUNT_ONLY {
        let v = dhcp::handle(ctx, &udp, cfg);
        count(ifindex, len, class, v.counted_as);
        return v.action;
    }
    count(ifindex, len, class, ACTION_PASS);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count(ifindex: u32, len: u64, class: u8, action: u8) {
    let key = CounterKey {
        ifindex,
        class,
        action,
        _pad: [0; 2],
    };
    match COUNTERS.get_ptr_mut(&key) {
        Some(c) => {
            // SAFETY: per-CPU value, so this CPU is its only writer.
            unsafe {
                (*c).packets += 1;
                (*c).bytes += len;
            }
        }
        None => {
            // A concurrent first insert on another CPU can win this race; that CPU's
            // slot then holds its own packet and only this one is lost, once per key.
            let _ = COUNTERS.insert(
                &key,
                &Counters {
                    packets: 1,
                    bytes: len,
                },
                BPF_NOEXIST as u64,
            );
        }
    }
}
