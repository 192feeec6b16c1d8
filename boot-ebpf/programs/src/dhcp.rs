//! The DHCP fast path: checks every BOOTREQUEST to the server port, answers DISCOVER and
//! REQUEST from reserved hosts in place (XDP_TX), and shields userspace from the rest.
//!
//! The request's UDP payload is copied into a per-CPU scratch buffer first, so the option
//! walk indexes map memory under masks the verifier can follow, not the packet. The reply
//! is assembled in the packet itself with `bpf_xdp_store_bytes`, one segment at a time:
//! headers, the template's BOOTP header, the template's options with the host's option 12
//! and the client's options 97 and 82 spliced in, the end option and padding. The UDP
//! checksum is then computed over a copy of what was written.
//!
//! Answers are rate-limited per reserved MAC (`DHCP_HOST_LIMITS`, the per-client rate of
//! the shield and of userspace), and an ACK repeating the lease the host was last reported
//! with, within half of it, is answered without an event.

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_loop, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    macros::map,
    maps::{lpm_trie::Key as LpmKey, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use bootfabric_abi::{
    dhcp::*, ClassifyConfig, ACTION_DROP, ACTION_PASS, ACTION_TX, DHCP_PATH_ANSWER,
};

use crate::{
    csum::{fold, word},
    parse::Udp4,
};

/// Reserved hosts by MAC.
#[map(name = "DHCP_HOSTS")]
static DHCP_HOSTS: HashMap<MacKey, HostEntry> = HashMap::with_max_entries(HOSTS_MAX_ENTRIES, 0);

/// Reply templates.
#[map(name = "DHCP_TEMPLATES")]
static DHCP_TEMPLATES: HashMap<TemplateKey, Template> =
    HashMap::with_max_entries(TEMPLATES_MAX_ENTRIES, 0);

/// Answered exchanges, for the lease table and the ledger.
#[map(name = "DHCP_EVENTS")]
static DHCP_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Counters by `STAT_*`.
#[map(name = "DHCP_STATS")]
static DHCP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Rate limiter state per client and per relay.
#[map(name = "DHCP_BUCKETS")]
static DHCP_BUCKETS: LruHashMap<BucketKey, u64> =
    LruHashMap::with_max_entries(BUCKETS_MAX_ENTRIES, 0);

/// Reserved hosts' answer buckets and report times, by MAC (sized for the fleet: only MACs
/// in `DHCP_HOSTS` get an entry).
#[map(name = "DHCP_HOST_LIMITS")]
static DHCP_HOST_LIMITS: LruHashMap<MacKey, HostLimit> =
    LruHashMap::with_max_entries(HOSTS_MAX_ENTRIES, 0);

/// Source addresses relayed requests are answered from (`dhcp.relays`; `0.0.0.0/0` when it is
/// unset). The LPM trie takes the CIDRs as configured.
#[map(name = "DHCP_RELAYS")]
static DHCP_RELAYS: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(RELAYS_MAX_ENTRIES, 0);

/// Index mask for the request buffer: every read is `REQUEST_MAX`-bounded.
const REQ_MASK: usize = REQUEST_MAX - 1;
/// Longest reply frame the program writes (Ethernet, one tag, IPv4, UDP, payload).
const REPLY_FRAME_MAX: usize = 18 + 20 + 8 + 1024;
/// Where the BOOTP header starts in `Scratch::frame` (after at most 46 header bytes).
const FRAME_BOOTP: usize = 48;
/// Size of `Scratch::frame`: any masked offset plus a masked copy stays inside.
const FRAME_BUF: usize = 4096;
/// Bytes past each quarter mark of the event ring within which an answer wakes the reader
/// (about a hundred events).
const WAKE_WINDOW: u64 = 4096;
/// Ring bytes one event takes: the record's 8-byte header and the event, rounded up to 8.
const RECORD_BYTES: u64 = 8 + ((core::mem::size_of::<Event>() as u64 + 7) & !7);
/// Option walk bound: enough for any request of `REQUEST_MAX` bytes without runs of pads.
const MAX_OPTIONS: u32 = 64;

/// Per-CPU working memory.
#[repr(C)]
pub struct Scratch {
    /// The request's UDP payload; twice `REQUEST_MAX` so masked offset plus masked length
    /// stays inside.
    req: [u8; 2 * REQUEST_MAX],
    /// The reply frame, assembled here and stored in one call: headers ending at
    /// `FRAME_BOOTP`, then the BOOTP header, options, end option and padding.
    frame: [u8; FRAME_BUF],
    /// Where the options the fast path reads start, by `slot::*`.
    slots: [u32; 16],
    /// Key and first value of a `DHCP_HOST_LIMITS` entry: here, not on the stack, which the
    /// verifier's 512 bytes leave no room for.
    limit_key: MacKey,
    limit_fresh: HostLimit,
    /// Key of the `DHCP_RELAYS` lookup, here for the same reason.
    relay_key: LpmKey<[u8; 4]>,
}

#[map(name = "DHCP_SCRATCH")]
static DHCP_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// What became of a DHCP packet: the XDP action and the counter to bump.
pub struct Verdict {
    /// XDP action.
    pub action: u32,
    /// `ACTION_*` for the classifier's counters.
    pub counted_as: u8,
}

#[inline(always)]
fn stat(i: u32) {
    if let Some(c) = DHCP_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot; this CPU is its only writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn drop_with(i: u32) -> Verdict {
    stat(i);
    Verdict {
        action: xdp_action::XDP_DROP,
        counted_as: ACTION_DROP,
    }
}

#[inline(always)]
fn pass_with(i: u32) -> Verdict {
    stat(i);
    Verdict {
        action: xdp_action::XDP_PASS,
        counted_as: ACTION_PASS,
    }
}

/// Offsets of the options the fast path reads, at their code byte; 0 when absent (no
/// option starts at offset 0 of the payload).
#[derive(Default, Clone, Copy)]
struct Opts {
    msg_type: u8,
    requested: u16,
    server_id: u16,
    arch: u16,
    vendor: u16,
    user_class: u16,
    ipxe: u16,
    uuid: u16,
    relay: u16,
    overload: bool,
    /// Option 175 announces HTTP, or there is no option 175 (the policy's reading).
    ipxe_http: bool,
}

/// Option tables in read-only data (the rules are the ABI's, shared with userspace).
static RULES: [u8; 256] = LENGTH_RULES;
static SLOTS: [u8; 256] = OPTION_SLOTS;

#[inline(always)]
fn at(req: &[u8; 2 * REQUEST_MAX], i: usize) -> u8 {
    // SAFETY: the mask keeps the index inside the buffer.
    unsafe { *req.get_unchecked(i & REQ_MASK) }
}

#[inline(always)]
fn ip_at(req: &[u8; 2 * REQUEST_MAX], i: usize) -> [u8; 4] {
    [at(req, i), at(req, i + 1), at(req, i + 2), at(req, i + 3)]
}

/// The option walk's state, on the caller's stack, shared with [`walk_step`].
#[repr(C)]
struct Walk {
    req: *const [u8; 2 * REQUEST_MAX],
    slots: *mut [u32; 16],
    /// Length of the UDP payload.
    len: u32,
    /// Offset of the next option.
    i: u32,
    /// End of the option 175 being walked (its sub-options use the same loop), else 0.
    enc_end: u32,
    /// Option 175 announced HTTP.
    http: u32,
    /// 0 while walking; [`WALK_DONE`] at the end option or the end of the area; otherwise
    /// the `STAT_*` drop reason.
    result: u32,
}

const WALK_DONE: u32 = u32::MAX;

/// One step of the option walk, run by `bpf_loop`: the verifier checks this body once,
/// whatever the number of options, where an open-coded loop made it explore every path
/// through every iteration. Returns 1 to stop.
extern "C" fn walk_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` that `walk` passed to bpf_loop, alive for the call.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    // SAFETY: both point into this CPU's scratch slot.
    let (req, slots) = unsafe { (&*w.req, &mut *w.slots) };
    let len = w.len as usize & 0x7ff;
    let i = w.i as usize & 0x7ff;
    let enc_end = w.enc_end as usize & 0x7ff;
    if i >= len {
        w.result = WALK_DONE;
        return 1;
    }
    let code = at(req, i);
    let l = at(req, i + 1) as usize;
    if i < enc_end {
        // As the policy reads 175: stop at its end option or a truncated item.
        if code == 255 || (code != 0 && i + 2 + l > enc_end) {
            w.i = enc_end as u32;
            w.enc_end = 0;
        } else if code == 0 {
            w.i += 1;
        } else {
            if code == 19 && l >= 1 && at(req, i + 2) == 1 {
                w.http = 1;
            }
            w.i = (i + 2 + l) as u32;
        }
        return 0;
    }
    if code == 0 {
        w.i += 1;
        return 0;
    }
    if code == 255 {
        w.result = WALK_DONE;
        return 1;
    }
    // SAFETY: u8 indexes into 256-entry tables.
    let rule = unsafe { *RULES.get_unchecked(code as usize) };
    if i + 2 + l > len || !rule_ok(rule, l) {
        w.result = STAT_DROP_BAD_OPTION;
        return 1;
    }
    let slot = unsafe { *SLOTS.get_unchecked(code as usize) } as usize;
    slots[slot & 15] = i as u32;
    if code == 175 {
        w.enc_end = (i + 2 + l) as u32;
        w.i = (i + 2) as u32;
    } else {
        w.i = (i + 2 + l) as u32;
    }
    0
}

/// Walks the option area, recording where each option the fast path reads starts in
/// `slots`. `Err(stat)` is a drop reason, or "unsupported" when the walk bound is hit
/// (only runs of pad bytes can cause that).
#[inline(always)]
fn walk(req: &[u8; 2 * REQUEST_MAX], slots: &mut [u32; 16], len: usize) -> Result<Opts, u32> {
    // Volatile, so the compiler cannot turn this into a call to a byte-wise memset (which
    // the kernel would run as a 64-round loop).
    let mut k = 0;
    while k < 16 {
        // SAFETY: k < 16, inside `slots`.
        unsafe { core::ptr::write_volatile(slots.as_mut_ptr().add(k), 0) };
        k += 1;
    }
    let mut w = Walk {
        req,
        slots,
        len: len as u32,
        i: BOOTP_HEADER_LEN as u32,
        enc_end: 0,
        http: 0,
        result: 0,
    };
    // SAFETY: the callback and its context follow bpf_loop's contract (kernel 5.17+).
    unsafe {
        bpf_loop(
            MAX_OPTIONS,
            walk_step as *mut core::ffi::c_void,
            &mut w as *mut Walk as *mut core::ffi::c_void,
            0,
        )
    };
    match w.result {
        WALK_DONE => {}
        0 => return Err(STAT_PASSED_UNSUPPORTED),
        r => return Err(r),
    }
    let slots = unsafe { &*w.slots };
    let get = |s: u8| slots[s as usize & 15] as u16;
    let mt = get(slot::MESSAGE_TYPE) as usize;
    Ok(Opts {
        msg_type: if mt == 0 { 0 } else { at(req, mt + 2) },
        requested: get(slot::REQUESTED),
        server_id: get(slot::SERVER_ID),
        arch: get(slot::ARCH),
        vendor: get(slot::VENDOR),
        user_class: get(slot::USER_CLASS),
        ipxe: get(slot::IPXE),
        uuid: get(slot::UUID),
        relay: get(slot::RELAY),
        overload: get(slot::OVERLOAD) != 0,
        ipxe_http: w.http != 0 || get(slot::IPXE) == 0,
    })
}

#[inline(always)]
fn starts_with(req: &[u8; 2 * REQUEST_MAX], opt: usize, prefix: &[u8]) -> bool {
    let len = at(req, opt + 1) as usize;
    if len < prefix.len() {
        return false;
    }
    let mut k = 0;
    while k < prefix.len() {
        if at(req, opt + 2 + k) != prefix[k] {
            return false;
        }
        k += 1;
    }
    true
}

/// Option 77 is `iPXE` raw or as one RFC 3004 item: `Some(true)`; anything else: `Some(false)`.
#[inline(always)]
fn user_class_is_ipxe(req: &[u8; 2 * REQUEST_MAX], opt: usize) -> Option<bool> {
    if opt == 0 {
        return None;
    }
    let len = at(req, opt + 1);
    let raw = len == 4 && starts_with(req, opt, b"iPXE");
    let item = len == 5 && starts_with(req, opt, b"\x04iPXE");
    Some(raw || item)
}

/// GCRA: whether one more packet for `key` fits `interval` with `burst` tolerance.
#[inline(always)]
fn allow(key: &BucketKey, interval: u64, burst: u64) -> bool {
    if interval == 0 {
        return true;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match DHCP_BUCKETS.get_ptr_mut(key) {
        Some(tat) => {
            // SAFETY: a map value; concurrent CPUs may race on it, which only blurs the
            // limit by a packet, never corrupts it.
            let t = unsafe { *tat };
            let t = if t > now { t } else { now };
            if t - now > burst {
                return false;
            }
            unsafe { *tat = t + interval };
            true
        }
        None => {
            let _ = DHCP_BUCKETS.insert(key, &(now + interval), 0);
            true
        }
    }
}

/// The answer state of the reserved host `mac`, created on its first request. `None` only if
/// the map refuses the entry, which an LRU map does not do.
#[inline(always)]
fn host_limit(mac: [u8; 6], now: u64) -> Option<*mut HostLimit> {
    let s = DHCP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot; `limit_key` and `limit_fresh` are used only here.
    let (key, fresh) = unsafe { (&mut (*s).limit_key, &mut (*s).limit_fresh) };
    key.mac = mac;
    key._pad = [0; 2];
    if let Some(p) = DHCP_HOST_LIMITS.get_ptr_mut(&*key) {
        return Some(p);
    }
    fresh.tat_ns = now;
    fresh.acked_ns = 0;
    fresh.acked_ip = [0; 4];
    fresh._pad = 0;
    // NOEXIST: a CPU that loses the race to create the entry uses the winner's.
    let _ = DHCP_HOST_LIMITS.insert(&*key, &*fresh, BPF_NOEXIST as u64);
    DHCP_HOST_LIMITS.get_ptr_mut(&*key)
}

/// GCRA on a bucket shared by every CPU: whether one more answer fits `interval` with
/// `burst` tolerance. Only the take is atomic: CPUs racing past the check may each answer
/// once more than the burst allows, but every answer adds its interval, so the rate holds.
#[inline(always)]
fn take_answer(l: *mut HostLimit, now: u64, interval: u64, burst: u64) -> bool {
    if interval == 0 {
        return true;
    }
    // SAFETY: `l` is a map value that stays alive for the program run; `tat_ns` is an
    // aligned u64, so each load or store below is one instruction other CPUs cannot tear
    // (volatile keeps the compiler from merging or splitting them). The BPF target's `core`
    // has no atomic read-modify-write and the generic CPU no atomic load, hence this form.
    let tat = unsafe { core::ptr::addr_of_mut!((*l).tat_ns) };
    let t = unsafe { core::ptr::read_volatile(tat) };
    if t < now {
        // Idle long enough to be full again: restart from now (racing CPUs may each do it,
        // which grants one extra answer each, once).
        unsafe { core::ptr::write_volatile(tat, now + interval) };
        return true;
    }
    if t - now > burst {
        return false;
    }
    // SAFETY: an aligned u64 in a map value; BPF_ATOMIC add (no fetch), which the BPF
    // target's `core` does not offer as `fetch_add`.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) tat,
            v = in(reg) interval,
        )
    };
    true
}

/// Whether an answered exchange is reported through the ring buffer. OFFERs always are, and
/// make the next ACK reported (a DISCOVER starts a boot or a new lease). An ACK is not when
/// the host's last reported ACK was for the same address less than half `lease_secs` ago:
/// the lease it records is the same, and a renewal or a spoofed repeat would otherwise cost
/// an event, a ledger entry and a journal record each.
#[inline(always)]
fn report(l: *mut HostLimit, kind: u8, ip: [u8; 4], lease_secs: u32, now: u64) -> bool {
    // SAFETY: as in `take_answer`; plain accesses, as a lost race only costs one more event.
    let l = unsafe { &mut *l };
    if kind == DHCPOFFER {
        l.acked_ns = 0;
        return true;
    }
    let half = lease_secs as u64 * 500_000_000;
    if l.acked_ns != 0 && l.acked_ip == ip && now.saturating_sub(l.acked_ns) < half {
        return false;
    }
    l.acked_ns = now;
    l.acked_ip = ip;
    true
}

/// Passes `reason` to userspace if the client's and relay's buckets allow it.
#[inline(always)]
fn shield(cfg: &ClassifyConfig, mac: [u8; 6], giaddr: [u8; 4], reason: u32) -> Verdict {
    if giaddr != [0; 4] {
        let key = BucketKey {
            kind: 1,
            id: [giaddr[0], giaddr[1], giaddr[2], giaddr[3], 0, 0, 0, 0],
            _pad: 0,
        };
        if !allow(&key, cfg.relay_interval_ns, cfg.relay_burst_ns) {
            return drop_with(STAT_DROP_RATE_LIMITED_RELAY);
        }
    }
    let key = BucketKey {
        kind: 0,
        id: [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0],
        _pad: 0,
    };
    if !allow(&key, cfg.client_interval_ns, cfg.client_burst_ns) {
        return drop_with(STAT_DROP_RATE_LIMITED_CLIENT);
    }
    pass_with(reason)
}

/// What to do with a request, decided by [`decide`].
enum Step {
    /// Drop, counting the reason.
    Drop(u32),
    /// Pass without the shield (nothing is known about the sender yet).
    Pass(u32),
    /// Pass if the sender's and relay's buckets allow it.
    Shield(u32),
    /// Answered in place.
    Tx,
}

/// Handles one UDP datagram to the DHCP server port.
#[inline(always)]
pub fn handle(ctx: &XdpContext, udp: &Udp4, cfg: &ClassifyConfig) -> Verdict {
    // One call site for each outcome keeps the stack small: the verifier allows 512 bytes
    // and every inlined copy of the shield would take its own.
    match decide(ctx, udp, cfg) {
        Step::Drop(r) => drop_with(r),
        Step::Pass(r) => pass_with(r),
        Step::Shield(r) => {
            let Some(s) = DHCP_SCRATCH.get_ptr(0) else {
                return pass_with(r);
            };
            // SAFETY: this CPU's scratch slot; `decide` loaded the request into it.
            let req = unsafe { &(*s).req };
            let mac = [
                at(req, 28),
                at(req, 29),
                at(req, 30),
                at(req, 31),
                at(req, 32),
                at(req, 33),
            ];
            shield(cfg, mac, ip_at(req, 24), r)
        }
        Step::Tx => Verdict {
            action: xdp_action::XDP_TX,
            counted_as: ACTION_TX,
        },
    }
}

#[inline(always)]
fn decide(ctx: &XdpContext, udp: &Udp4, cfg: &ClassifyConfig) -> Step {
    let frame_len = ctx.data_end() - ctx.data();
    let Some(udp_len) = crate::parse::be16_at(ctx, udp.l4 + 4) else {
        return Step::Drop(STAT_DROP_TRUNCATED);
    };
    let udp_len = udp_len as usize;
    if udp_len < 8 + BOOTP_HEADER_LEN || udp.l4 + udp_len > frame_len {
        return Step::Drop(STAT_DROP_TRUNCATED);
    }
    let len = udp_len - 8;
    if len > REQUEST_MAX || udp.fragmented {
        return Step::Pass(STAT_PASSED_UNSUPPORTED);
    }
    let Some(s) = DHCP_SCRATCH.get_ptr_mut(0) else {
        return Step::Pass(STAT_PASSED_UNSUPPORTED);
    };
    // SAFETY: this CPU's scratch slot, used by one program run at a time.
    let s = unsafe { &mut *s };
    // SAFETY: `len` is within 240..=REQUEST_MAX and the buffer holds twice that.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (udp.l4 + 8) as u32,
            s.req.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if rc != 0 {
        return Step::Drop(STAT_DROP_TRUNCATED);
    }
    let req = &s.req;
    if at(req, 0) != 1 {
        return Step::Drop(STAT_DROP_WRONG_OP);
    }
    let mac = [
        at(req, 28),
        at(req, 29),
        at(req, 30),
        at(req, 31),
        at(req, 32),
        at(req, 33),
    ];
    if at(req, 1) != 1 || at(req, 2) != 6 || mac == [0; 6] || mac[0] & 1 == 1 {
        return Step::Drop(STAT_DROP_BAD_HARDWARE);
    }
    if ip_at(req, 236) != [99, 130, 83, 99] {
        return Step::Drop(STAT_DROP_BAD_COOKIE);
    }
    let o = match walk(req, &mut s.slots, len) {
        Ok(o) => o,
        Err(STAT_PASSED_UNSUPPORTED) => return Step::Pass(STAT_PASSED_UNSUPPORTED),
        Err(reason) => return Step::Drop(reason),
    };
    let giaddr = ip_at(req, 24);
    match o.msg_type {
        0 => return Step::Drop(STAT_DROP_NO_MESSAGE_TYPE),
        DHCPOFFER | DHCPACK | DHCPNAK => return Step::Drop(STAT_DROP_UNEXPECTED_TYPE),
        DHCPDISCOVER | DHCPREQUEST => {}
        _ => return Step::Shield(STAT_PASSED_MESSAGE_TYPE),
    }
    if cfg.dhcp_fast_path != DHCP_PATH_ANSWER {
        return Step::Shield(STAT_PASSED_FAST_PATH_OFF);
    }
    let Some(host) = DHCP_HOSTS.get_ptr(&MacKey { mac, _pad: [0; 2] }) else {
        return Step::Shield(STAT_PASSED_UNKNOWN_HOST);
    };
    // SAFETY: a map value, read-only here.
    let host = unsafe { &*host };
    if o.overload || udp.l4 - udp.l3 != 20 {
        return Step::Shield(STAT_PASSED_UNSUPPORTED);
    }
    // The template variant, as the policy classifies the client.
    let arch = if o.arch != 0 {
        if at(req, o.arch as usize + 1) != 2 {
            return Step::Shield(STAT_PASSED_UNSUPPORTED);
        }
        Some(u16::from_be_bytes([
            at(req, o.arch as usize + 2),
            at(req, o.arch as usize + 3),
        ]))
    } else {
        None
    };
    let vendor = if o.vendor == 0 {
        VendorClass::Other
    } else if starts_with(req, o.vendor as usize, b"HTTPClient") {
        VendorClass::HttpClient
    } else if starts_with(req, o.vendor as usize, b"PXEClient") {
        VendorClass::PxeClient
    } else {
        VendorClass::Other
    };
    let Some((class, arch)) = variant(
        user_class_is_ipxe(req, o.user_class as usize),
        o.ipxe != 0,
        o.ipxe_http,
        vendor,
        arch,
    ) else {
        return Step::Shield(STAT_PASSED_UNSUPPORTED);
    };
    let kind = if o.msg_type == DHCPDISCOVER {
        DHCPOFFER
    } else {
        DHCPACK
    };
    let key = TemplateKey {
        ifindex: ctx.ingress_ifindex() as u32,
        group: host.group,
        arch,
        kind,
        class,
    };
    let Some(t) = DHCP_TEMPLATES.get_ptr(&key) else {
        return Step::Shield(STAT_PASSED_UNSUPPORTED);
    };
    // SAFETY: as above.
    let t = unsafe { &*t };
    // The interface's parameters travel in the template: one lookup fewer per packet.
    let iface = &t.iface;

    // The subnet, as the userspace server picks it: by giaddr when relayed, else the
    // interface's own.
    let on_subnet = if giaddr != [0; 4] {
        // `dhcp.relays`, as userspace applies it: a giaddr picks the subnet and where the
        // answer goes (giaddr:67), so only a listed relay's source address may set it. Any
        // other goes to userspace, which drops and counts it, through the shield's buckets.
        let Some(src) = crate::parse::ptr_at::<[u8; 4]>(ctx, udp.l3 + 12) else {
            return Step::Drop(STAT_DROP_TRUNCATED);
        };
        // SAFETY: ptr_at checked that the four bytes lie inside the frame.
        s.relay_key = LpmKey::new(32, unsafe { *src });
        if DHCP_RELAYS.get(&s.relay_key).is_none() {
            return Step::Shield(STAT_PASSED_RELAY_NOT_ALLOWED);
        }
        let mut k = 0;
        let mut ok = true;
        while k < 4 {
            ok &= giaddr[k] & host.mask[k] == host.net[k];
            k += 1;
        }
        ok
    } else {
        iface.subnet == host.subnet
    };
    if !on_subnet {
        return Step::Shield(STAT_PASSED_NOT_OURS);
    }
    let ciaddr = ip_at(req, 12);
    if kind == DHCPACK {
        if o.server_id != 0 && ip_at(req, o.server_id as usize + 2) != iface.server_ip {
            return Step::Shield(STAT_PASSED_NOT_OURS);
        }
        let asked = if o.requested != 0 {
            ip_at(req, o.requested as usize + 2)
        } else {
            ciaddr
        };
        if asked != host.ip {
            return Step::Shield(STAT_PASSED_NOT_OURS);
        }
    }

    // The per-MAC limit applies to kernel answers as to everything else: a reserved MAC's
    // requests beyond it (a spoofed flood with the broadcast flag, say) are dropped, not
    // answered, so they cost neither broadcasts nor events.
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(limit) = host_limit(mac, now) else {
        return Step::Shield(STAT_PASSED_UNSUPPORTED);
    };
    if !take_answer(limit, now, cfg.client_interval_ns, cfg.client_burst_ns) {
        return Step::Drop(STAT_DROP_RATE_LIMITED_ANSWER);
    }

    let xid = [at(req, 4), at(req, 5), at(req, 6), at(req, 7)];
    match reply(ctx, udp, s, t, host, &o, kind, mac, frame_len) {
        Ok(()) => {}
        Err(()) => return Step::Pass(STAT_PASSED_TX_FAILED),
    }
    stat(if kind == DHCPOFFER {
        STAT_ANSWERED_OFFER
    } else {
        STAT_ANSWERED_ACK
    });
    // Read again rather than kept across `reply`: the stack has no room for another spill.
    let lease_secs = t.lease_secs;
    // SAFETY: a helper without arguments.
    if !report(limit, kind, host.ip, lease_secs, unsafe {
        bpf_ktime_get_ns()
    }) {
        stat(STAT_ACK_UNREPORTED);
        return Step::Tx;
    }
    match DHCP_EVENTS.reserve::<Event>(0) {
        Some(mut e) => {
            e.write(Event {
                ifindex: ctx.ingress_ifindex() as u32,
                xid,
                mac,
                kind,
                _pad: 0,
                ip: host.ip,
                giaddr,
                lease_secs,
            });
            // Wake the reader when this answer is the only one in the ring (the reader had
            // emptied it), and as the ring's fill passes each quarter mark. The first keeps a
            // lone boot's answers in its timeline before the transfer its firmware makes next
            // (a timeline that saw the TFTP first would lose the boot's loader phase); under a
            // stream of answers the reader drains at most every few milliseconds, and answers
            // meanwhile find the ring not empty. The second wakes a reader that fell behind,
            // but not for every answer after the mark.
            let avail = DHCP_EVENTS.query(BPF_RB_AVAIL_DATA as u64);
            let quarter = (EVENTS_BYTES / 4) as u64;
            let alone = avail <= RECORD_BYTES;
            let flags = if alone || (avail >= quarter && avail % quarter < WAKE_WINDOW) {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            e.submit(flags as u64);
        }
        None => stat(STAT_EVENTS_LOST),
    }
    Step::Tx
}

/// Option `opt` of the request (code, length, value) as a segment: (offset, length).
#[inline(always)]
fn opt_segment(req: &[u8; 2 * REQUEST_MAX], opt: usize) -> (usize, usize) {
    if opt == 0 {
        (0, 0)
    } else {
        (opt, 2 + at(req, opt + 1) as usize)
    }
}

/// Stores `len` bytes from `src` at `off` in the frame; `src` must have `MAX` readable
/// bytes. Zero lengths are skipped and longer ones refused, which is what the verifier needs
/// to see; the helper checks the frame bounds itself.
#[inline(always)]
fn store<const MAX: usize>(
    ctx: &XdpContext,
    off: usize,
    src: *const u8,
    len: usize,
) -> Result<(), ()> {
    // black_box keeps both tests in the code even where the compiler can prove them
    // redundant: the verifier cannot.
    let len = core::hint::black_box(len);
    if len == 0 {
        return Ok(());
    }
    if len > MAX {
        return Err(());
    }
    // SAFETY: callers pass pointers into map values with MAX bytes after them.
    let rc = unsafe { bpf_xdp_store_bytes(ctx.ctx, off as u32, src as *mut _, len as u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// Turns the request frame into the reply. On error the frame may be half-written; the
/// caller passes it, and the stack drops it (its UDP checksum no longer matches) while the
/// client retries. It happens only when the frame cannot grow.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn reply(
    ctx: &XdpContext,
    udp: &Udp4,
    s: &mut Scratch,
    t: &Template,
    host: &HostEntry,
    o: &Opts,
    kind: u8,
    mac: [u8; 6],
    frame_len: usize,
) -> Result<(), ()> {
    let iface = &t.iface;
    let req = &s.req;
    let (uuid_off, uuid_len) = opt_segment(req, o.uuid as usize);
    let (relay_off, relay_len) = opt_segment(req, o.relay as usize);
    let opts_len = (t.opts_len as usize) & 0x1ff;
    let hostname_at = (t.hostname_at as usize) & 0x1ff;
    let uuid_at = (t.uuid_at as usize) & 0x1ff;
    if hostname_at > opts_len || uuid_at > opts_len || uuid_at < hostname_at {
        return Err(());
    }
    let name_len = (host.hostname_len as usize) & 0x7f;
    if name_len > HOSTNAME_OPT_MAX {
        return Err(());
    }
    let body = BOOTP_HEADER_LEN + opts_len + name_len + uuid_len + relay_len;
    let payload = if body + 1 < REPLY_MIN {
        REPLY_MIN
    } else {
        body + 1
    };
    let pad = payload - body; // the end option and zeros
    let l2 = udp.l3;
    let l4 = l2 + 20;
    let new_len = l4 + 8 + payload;
    if new_len > REPLY_FRAME_MAX || pad > 64 {
        return Err(());
    }

    // Where the reply goes (RFC 2131 §4.1).
    let giaddr = ip_at(req, 24);
    let ciaddr = ip_at(req, 12);
    let broadcast = at(req, 10) & 0x80 != 0;
    let data = ctx.data();
    if data + 12 > ctx.data_end() {
        return Err(());
    }
    // SAFETY: bounds checked just above.
    let req_src_mac: [u8; 6] = unsafe { *((data + 6) as *const [u8; 6]) };
    let (dst_mac, dst_ip, dst_port) = if giaddr != [0; 4] {
        (req_src_mac, giaddr, 67u16)
    } else if ciaddr != [0; 4] {
        (req_src_mac, ciaddr, 68)
    } else if broadcast {
        ([0xff; 6], [0xff; 4], 68)
    } else {
        (mac, host.ip, 68)
    };

    // Headers and BOOTP header, assembled in scratch so they leave in one store: the BOOTP
    // header sits at FRAME_BOOTP and the headers end right before it.
    let b = l2 + 28;
    let start = (FRAME_BOOTP - b) & 0x7;
    let h = &mut s.frame;
    let mut put = |off: usize, v: u8| h[(start + off) & 0x3f] = v;
    let mut k = 0;
    while k < 6 {
        put(k, dst_mac[k]);
        put(6 + k, iface.mac[k]);
        k += 1;
    }
    if l2 == 18 {
        // SAFETY: l2 == 18 means parse found a tag, so the frame has 18 bytes.
        if data + 18 > ctx.data_end() {
            return Err(());
        }
        let tag: [u8; 4] = unsafe { *((data + 12) as *const [u8; 4]) };
        let mut k = 0;
        while k < 4 {
            put(12 + k, tag[k]);
            k += 1;
        }
    }
    put(l2 - 2, 0x08);
    put(l2 - 1, 0x00);
    let total = (20 + 8 + payload) as u16;
    let tl = total.to_be_bytes();
    let src = iface.server_ip;
    let ip_head = [
        0x45, 0, tl[0], tl[1], 0, 0, 0, 0, 64, 17, 0, 0, src[0], src[1], src[2], src[3], dst_ip[0],
        dst_ip[1], dst_ip[2], dst_ip[3],
    ];
    let mut sum = 0u64;
    let mut k = 0;
    while k < 20 {
        put(l2 + k, ip_head[k]);
        if k % 2 == 0 {
            sum += word(ip_head[k], ip_head[k + 1]);
        }
        k += 1;
    }
    let c = (!fold(sum)).to_le_bytes();
    put(l2 + 10, c[0]);
    put(l2 + 11, c[1]);
    let ul = ((8 + payload) as u16).to_be_bytes();
    let ports = [
        0,
        67,
        (dst_port >> 8) as u8,
        dst_port as u8,
        ul[0],
        ul[1],
        0,
        0,
    ];
    let mut k = 0;
    while k < 8 {
        put(l2 + 20 + k, ports[k]);
        k += 1;
    }
    // The template's BOOTP header, then the per-request fields over it: xid, secs, flags,
    // ciaddr (ACK only), yiaddr, giaddr and chaddr. siaddr, sname and file stay the template's.
    // Eight bytes at a time: a plain copy of this size becomes a call to memcpy, which the
    // kernel runs byte by byte.
    let mut k = 0;
    while k < BOOTP_HEADER_LEN / 8 {
        // SAFETY: k < 30, so both eight-byte accesses stay inside the two buffers.
        unsafe {
            let v = core::ptr::read_unaligned(t.header.as_ptr().add(8 * k) as *const u64);
            core::ptr::write_unaligned(h.as_mut_ptr().add(FRAME_BOOTP + 8 * k) as *mut u64, v);
        }
        k += 1;
    }
    let bootp = &mut h[FRAME_BOOTP..FRAME_BOOTP + 34];
    let mut k = 0;
    while k < 4 {
        bootp[4 + k] = at(req, 4 + k);
        bootp[12 + k] = if kind == DHCPACK { ciaddr[k] } else { 0 };
        bootp[16 + k] = host.ip[k];
        bootp[24 + k] = giaddr[k];
        k += 1;
    }
    bootp[8] = 0;
    bootp[9] = 0;
    bootp[10] = at(req, 10);
    bootp[11] = at(req, 11);
    let mut k = 0;
    while k < 6 {
        bootp[28 + k] = mac[k];
        k += 1;
    }

    // The options, in the userspace encoder's order: the template's up to option 12, the
    // host's 12, the template's up to 97, the client's 97, the rest of the template's, the
    // relay's 82; then the end option and zero padding.
    let mut off = FRAME_BOOTP + BOOTP_HEADER_LEN;
    copy::<511>(&mut s.frame, off, t.opts.as_ptr(), hostname_at);
    off += hostname_at;
    copy::<HOSTNAME_OPT_MAX>(&mut s.frame, off, host.hostname_opt.as_ptr(), name_len);
    off += name_len;
    // SAFETY (source offsets below): masked offsets stay inside buffers sized for them.
    copy::<511>(
        &mut s.frame,
        off,
        unsafe { t.opts.as_ptr().add(hostname_at) },
        uuid_at - hostname_at,
    );
    off += uuid_at - hostname_at;
    copy::<511>(
        &mut s.frame,
        off,
        unsafe { s.req.as_ptr().add(uuid_off & REQ_MASK) },
        uuid_len,
    );
    off += uuid_len;
    copy::<511>(
        &mut s.frame,
        off,
        unsafe { t.opts.as_ptr().add(uuid_at) },
        opts_len - uuid_at,
    );
    off += opts_len - uuid_at;
    copy::<511>(
        &mut s.frame,
        off,
        unsafe { s.req.as_ptr().add(relay_off & REQ_MASK) },
        relay_len,
    );
    off += relay_len;
    // End option, then zeros to the padded size and a little beyond (the checksum reads
    // up to three bytes past the end, and the copies above may have left bytes there).
    let off = off & 0x7ff;
    s.frame[off & 0x7ff] = 255;
    let mut k = 0;
    while k < 9 {
        if 8 * k >= pad + 4 {
            break;
        }
        // SAFETY: off <= 2047 - 80 is checked below by the mask on a 4096-byte buffer.
        unsafe {
            core::ptr::write_unaligned(
                s.frame.as_mut_ptr().add((off & 0x7ff) + 1 + 8 * k) as *mut u64,
                0,
            )
        };
        k += 1;
    }

    // UDP checksum over the datagram in scratch (it starts at FRAME_BOOTP - 8 whatever
    // the header sizes), in up to three rounds of 512 bytes as bpf_csum_diff allows.
    let dgram = 8 + payload;
    let rounded = (dgram + 3) & !3;
    let src = iface.server_ip;
    let mut sum = word(src[0], src[1])
        + word(src[2], src[3])
        + word(dst_ip[0], dst_ip[1])
        + word(dst_ip[2], dst_ip[3])
        + word(0, 17)
        + word(ul[0], ul[1]);
    let mut done = 0;
    let mut round = 0;
    while round < 3 {
        if done >= rounded {
            break;
        }
        let left = rounded - done;
        let n = if left > 512 { 512 } else { left };
        // SAFETY: n <= 512 and a multiple of 4; done <= 1024; inside `frame`.
        let c = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                s.frame
                    .as_mut_ptr()
                    .add((FRAME_BOOTP - 8) + (done & 0x7ff))
                    .cast(),
                (n & 0x3fc) as u32,
                0,
            )
        };
        if c < 0 {
            return Err(());
        }
        sum += c as u64 & 0xffff_ffff;
        done += n;
        round += 1;
    }
    let mut c = !fold(sum);
    if c == 0 {
        c = 0xffff;
    }
    let cb = c.to_le_bytes();
    s.frame[FRAME_BOOTP - 2] = cb[0];
    s.frame[FRAME_BOOTP - 1] = cb[1];

    // Size the frame and write it in one store.
    let delta = new_len as i32 - frame_len as i32;
    if delta != 0 {
        // SAFETY: the context is the program's own.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(());
        }
    }
    // SAFETY: start <= 7 and new_len <= REPLY_FRAME_MAX, inside `frame`.
    store::<REPLY_FRAME_MAX>(ctx, 0, unsafe { s.frame.as_ptr().add(start) }, new_len)
}

/// Copies `len` (at most `MAX`, at most 511) bytes from `src` to `frame[off..]` in
/// eight-byte steps; it may write up to seven bytes past the end, which the next copy or
/// the padding overwrites. `src` must have `MAX` rounded up to eight readable bytes (the
/// caller checked `len <= MAX`; a longer `len` copies nothing). A plain variable-length copy would become a
/// call to a byte-wise memcpy.
#[inline(always)]
fn copy<const MAX: usize>(frame: &mut [u8; FRAME_BUF], off: usize, src: *const u8, len: usize) {
    let len = core::hint::black_box(len) & 0x1ff;
    if len > MAX {
        return;
    }
    let off = core::hint::black_box(off) & 0x7ff;
    let mut k = 0;
    while k < 64 {
        if 8 * k >= len {
            break;
        }
        // SAFETY: off + 8k + 8 <= 2047 + 512 < FRAME_BUF; the source bound is the caller's.
        unsafe {
            let v = core::ptr::read_unaligned(src.add(8 * k) as *const u64);
            core::ptr::write_unaligned(frame.as_mut_ptr().add(off + 8 * k) as *mut u64, v);
        }
        k += 1;
    }
}
