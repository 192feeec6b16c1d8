//! The DHCP fast path: checks every BOOTREQUEST to the server port, answers DISCOVER and
//! REQUEST from reserved hosts in place (XDP_TX), and shields userspace from the rest.
//!
//! The request's UDP payload is copied into a per-CPU scratch buffer first, so the option
//! walk indexes map memory under masks the verifier can follow, not the packet. The reply
//! is assembled in the packet itself with `bpf_xdp_store_bytes`, one segment at a time:
//! headers, the template's BOOTP header, the template's options with the host's option 12
//! and the client's options 97 and 82 spliced in, the end option and padding. The UDP
//! checksum is then computed over a copy of what was written.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_loop, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use bootfabric_abi::{
    dhcp::*, ClassifyConfig, ACTION_DROP, ACTION_PASS, ACTION_TX, DHCP_PATH_ANSWER,
};

use crate::parse::Udp4;

/// Reserved hosts by MAC.
#[map(name = "DHCP_HOSTS")]
static DHCP_HOSTS: HashMap<MacKey, HostEntry> = HashMap::with_max_entries(HOSTS_MAX_ENTRIES, 0);

/// Per-interface parameters.
#[map(name = "DHCP_IFACES")]
static DHCP_IFACES: HashMap<u32, IfaceEntry> = HashMap::with_max_entries(IFACES_MAX_ENTRIES, 0);

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

/// Index mask for the request buffer: every read is `REQUEST_MAX`-bounded.
const REQ_MASK: usize = REQUEST_MAX - 1;
/// Longest reply frame the program writes (Ethernet, one tag, IPv4, UDP, payload).
const REPLY_FRAME_MAX: usize = 18 + 20 + 8 + 1024;
/// Option walk bound: enough for any request of `REQUEST_MAX` bytes without runs of pads.
const MAX_OPTIONS: u32 = 64;

/// Per-CPU working memory.
#[repr(C)]
pub struct Scratch {
    /// The request's UDP payload; twice `REQUEST_MAX` so masked offset plus masked length
    /// stays inside.
    req: [u8; 2 * REQUEST_MAX],
    /// Ethernet, IPv4 and UDP headers of the reply, assembled before they are stored.
    head: [u8; 64],
    /// BOOTP header bytes 4..34 of the reply.
    patch: [u8; 32],
    /// The end option followed by zeros: the reply's tail and padding.
    tail: [u8; 128],
    /// The written UDP datagram read back for the checksum (plus slack for rounding).
    sum: [u8; 2048],
    /// Where the options the fast path reads start, by `slot::*`.
    slots: [u32; 16],
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
    let mut k = 0;
    while k < 16 {
        slots[k] = 0;
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
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(iface) = DHCP_IFACES.get_ptr(&ifindex) else {
        return Step::Shield(STAT_PASSED_UNSUPPORTED);
    };
    // SAFETY: as above.
    let iface = unsafe { &*iface };
    if o.overload || udp.l4 - udp.l3 != 20 {
        return Step::Shield(STAT_PASSED_UNSUPPORTED);
    }

    // The subnet, as the userspace server picks it: by giaddr when relayed, else the
    // interface's own.
    let on_subnet = if giaddr != [0; 4] {
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
    let kind = if o.msg_type == DHCPDISCOVER {
        DHCPOFFER
    } else {
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
        DHCPACK
    };

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
    let key = TemplateKey {
        ifindex,
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

    let xid = [at(req, 4), at(req, 5), at(req, 6), at(req, 7)];
    match reply(ctx, udp, s, t, host, iface, &o, kind, mac, frame_len) {
        Ok(()) => {}
        Err(()) => return Step::Pass(STAT_PASSED_TX_FAILED),
    }
    stat(if kind == DHCPOFFER {
        STAT_ANSWERED_OFFER
    } else {
        STAT_ANSWERED_ACK
    });
    match DHCP_EVENTS.reserve::<Event>(0) {
        Some(mut e) => {
            e.write(Event {
                ifindex,
                xid,
                mac,
                kind,
                _pad: 0,
                ip: host.ip,
                giaddr,
            });
            e.submit(0);
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

/// Adds 16-bit words in memory order (as `bpf_csum_diff` does) and folds.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

#[inline(always)]
fn word(a: u8, b: u8) -> u64 {
    u16::from_le_bytes([a, b]) as u64
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
    iface: &IfaceEntry,
    o: &Opts,
    kind: u8,
    mac: [u8; 6],
    frame_len: usize,
) -> Result<(), ()> {
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
    if new_len > REPLY_FRAME_MAX || pad > s.tail.len() {
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

    // Headers and BOOTP header, assembled in scratch.
    let h = &mut s.head;
    if l2 == 18 {
        // SAFETY: l2 == 18 means parse found a tag, so the frame has 18 bytes.
        if data + 18 > ctx.data_end() {
            return Err(());
        }
        let tag: [u8; 4] = unsafe { *((data + 12) as *const [u8; 4]) };
        h[12..16].copy_from_slice(&tag);
        h[16] = 0x08;
        h[17] = 0x00;
    } else {
        h[12] = 0x08;
        h[13] = 0x00;
    }
    h[0..6].copy_from_slice(&dst_mac);
    h[6..12].copy_from_slice(&iface.mac);
    let ip = l2 & 0x1f;
    let total = (20 + 8 + payload) as u16;
    {
        let tl = total.to_be_bytes();
        let src = iface.server_ip;
        let v = [
            0x45, 0, tl[0], tl[1], 0, 0, 0, 0, 64, 17, 0, 0, src[0], src[1], src[2], src[3],
            dst_ip[0], dst_ip[1], dst_ip[2], dst_ip[3],
        ];
        let mut sum = 0u64;
        let mut k = 0;
        while k < 20 {
            h[(ip + k) & 0x3f] = v[k];
            if k % 2 == 0 {
                sum += word(v[k], v[k + 1]);
            }
            k += 1;
        }
        let c = (!fold(sum)).to_le_bytes();
        h[(ip + 10) & 0x3f] = c[0];
        h[(ip + 11) & 0x3f] = c[1];
    }
    let u = (ip + 20) & 0x3f;
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
        h[(u + k) & 0x3f] = ports[k];
        k += 1;
    }
    let b = u + 8;
    // BOOTP bytes 4..34 (xid through chaddr), patched over the template's header; they go
    // right after the UDP header in `head`.
    let p = &mut s.patch;
    let mut k = 0;
    while k < 4 {
        p[k] = at(req, 4 + k); // xid
        p[8 + k] = if kind == DHCPACK { ciaddr[k] } else { 0 };
        p[12 + k] = host.ip[k]; // yiaddr
        p[16 + k] = t.header[20 + k]; // siaddr, the template's
        p[20 + k] = giaddr[k];
        k += 1;
    }
    p[4] = 0; // secs
    p[5] = 0;
    p[6] = at(req, 10); // flags
    p[7] = at(req, 11);
    let mut k = 0;
    while k < 6 {
        p[24 + k] = mac[k];
        k += 1;
    }

    // Size the frame, then write it.
    let delta = new_len as i32 - frame_len as i32;
    if delta != 0 {
        // SAFETY: the context is the program's own.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(());
        }
    }
    store::<64>(ctx, 0, s.head.as_ptr(), b)?;
    store::<BOOTP_HEADER_LEN>(ctx, b, t.header.as_ptr(), BOOTP_HEADER_LEN)?;
    store::<32>(ctx, b + 4, s.patch.as_ptr(), 30)?;
    let mut off = b + BOOTP_HEADER_LEN;
    store::<511>(ctx, off, t.opts.as_ptr(), hostname_at)?;
    off += hostname_at;
    store::<HOSTNAME_OPT_MAX>(ctx, off, host.hostname_opt.as_ptr(), name_len)?;
    off += name_len;
    // SAFETY (pointer offsets below): masked offsets stay inside buffers sized for them.
    store::<511>(
        ctx,
        off,
        unsafe { t.opts.as_ptr().add(hostname_at) },
        uuid_at - hostname_at,
    )?;
    off += uuid_at - hostname_at;
    store::<511>(
        ctx,
        off,
        unsafe { s.req.as_ptr().add(uuid_off & REQ_MASK) },
        uuid_len,
    )?;
    off += uuid_len;
    store::<511>(
        ctx,
        off,
        unsafe { t.opts.as_ptr().add(uuid_at) },
        opts_len - uuid_at,
    )?;
    off += opts_len - uuid_at;
    store::<511>(
        ctx,
        off,
        unsafe { s.req.as_ptr().add(relay_off & REQ_MASK) },
        relay_len,
    )?;
    off += relay_len;
    s.tail[0] = 255;
    let pad = core::hint::black_box(pad) & 0x7f;
    if pad == 0 {
        return Err(());
    }
    // SAFETY: `tail` has 128 bytes and pad is at most 127.
    let rc =
        unsafe { bpf_xdp_store_bytes(ctx.ctx, off as u32, s.tail.as_mut_ptr().cast(), pad as u32) };
    if rc != 0 {
        return Err(());
    }

    // UDP checksum over what was written, read back into scratch.
    let dgram = (8 + payload) & 0x7ff;
    if dgram < 8 + REPLY_MIN || dgram > 8 + 1024 {
        return Err(());
    }
    // SAFETY: dgram is bounded above and `sum` has room for it plus rounding.
    let rc =
        unsafe { bpf_xdp_load_bytes(ctx.ctx, l4 as u32, s.sum.as_mut_ptr().cast(), dgram as u32) };
    if rc != 0 {
        return Err(());
    }
    let mut k = 0;
    while k < 4 {
        // SAFETY: dgram + 3 < 2048.
        unsafe { *s.sum.get_unchecked_mut((dgram + k) & 0x7ff) = 0 };
        k += 1;
    }
    let rounded = (dgram + 3) & !3;
    let first = if rounded > 512 { 512 } else { rounded };
    let rest = (rounded - first) & 0x3ff;
    let src = iface.server_ip;
    let mut sum = word(src[0], src[1])
        + word(src[2], src[3])
        + word(dst_ip[0], dst_ip[1])
        + word(dst_ip[2], dst_ip[3])
        + word(0, 17)
        + word(ul[0], ul[1]);
    // SAFETY: sizes are multiples of 4, at most 512 each, inside `sum`.
    let c1 = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            s.sum.as_mut_ptr().cast(),
            (first & 0x3fc) as u32,
            0,
        )
    };
    if c1 < 0 {
        return Err(());
    }
    sum += c1 as u64 & 0xffff_ffff;
    if rest > 0 {
        if rest > 512 {
            return Err(());
        }
        let c2 = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                s.sum.as_mut_ptr().add(512).cast(),
                (rest & 0x3fc) as u32,
                0,
            )
        };
        if c2 < 0 {
            return Err(());
        }
        sum += c2 as u64 & 0xffff_ffff;
    }
    let mut c = !fold(sum);
    if c == 0 {
        c = 0xffff;
    }
    let cb = c.to_le_bytes();
    s.head[0] = cb[0];
    s.head[1] = cb[1];
    store::<64>(ctx, l4 + 6, s.head.as_ptr(), 2)?;
    Ok(())
}
