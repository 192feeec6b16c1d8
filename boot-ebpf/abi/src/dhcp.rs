//! The DHCP fast path's maps and the rules both sides must apply identically.
//!
//! The daemon derives every entry from its own DHCP policy: a reply *template* per
//! (interface, host group, message kind, client class, architecture) holds the exact bytes the
//! userspace server would send, minus the parts that depend on the request or the host. The
//! XDP program only splices those parts in (xid, flags, ciaddr, giaddr, chaddr, the host's
//! address and option 12, the client's option 97 and the relay's option 82).

/// Hash map [`MacKey`] → [`HostEntry`]: the reserved hosts the kernel answers.
pub const MAP_HOSTS: &str = "DHCP_HOSTS";
/// Hash map [`TemplateKey`] → [`Template`].
pub const MAP_TEMPLATES: &str = "DHCP_TEMPLATES";
/// Ring buffer of [`Event`]s, one per answered request.
pub const MAP_EVENTS: &str = "DHCP_EVENTS";
/// Per-CPU array of `u64` counters, indexed by the `STAT_*` constants.
pub const MAP_STATS: &str = "DHCP_STATS";
/// LRU hash [`BucketKey`] → `u64`: the rate limiter's state (GCRA theoretical arrival time).
pub const MAP_BUCKETS: &str = "DHCP_BUCKETS";
/// LRU hash [`MacKey`] → [`HostLimit`]: the per-MAC bucket of kernel answers and when each
/// reserved host's lease was last reported. Only MACs found in [`MAP_HOSTS`] get an entry, so
/// a flood of random MACs cannot evict a reserved host's bucket (that would refill it).
pub const MAP_HOST_LIMITS: &str = "DHCP_HOST_LIMITS";
/// LPM trie (prefix length, IPv4 address in network order) → `u8`: the source addresses a
/// relayed request (giaddr set) may come from to be answered in the kernel, derived from
/// `dhcp.relays`. Unset, it holds `0.0.0.0/0` (a giaddr is trusted from anyone, as in
/// userspace); `[]` leaves it empty. A request from any other source goes to userspace, which
/// drops it as `relay_not_allowed`.
pub const MAP_RELAYS: &str = "DHCP_RELAYS";

/// Most reserved hosts the kernel answers; the rest are served from userspace.
pub const HOSTS_MAX_ENTRIES: u32 = 65_536;
/// Most templates (interfaces × host groups × variants).
pub const TEMPLATES_MAX_ENTRIES: u32 = 16_384;
/// Clients and relays the rate limiter tracks at once; the least recently seen go first.
pub const BUCKETS_MAX_ENTRIES: u32 = 65_536;
/// Most `dhcp.relays` entries the kernel checks; with more, every relayed request is left to
/// userspace (which checks them all).
pub const RELAYS_MAX_ENTRIES: u32 = 1024;
/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

/// Fixed BOOTP header plus the magic cookie.
pub const BOOTP_HEADER_LEN: usize = 240;
/// Longest option area (without option 82 and the end option) a template may carry.
pub const TEMPLATE_OPTS_MAX: usize = 511;
/// Size of the template's option buffer: twice the longest area, so that any offset and
/// length under the masks the program applies stays inside the map value.
pub const TEMPLATE_OPTS_BUF: usize = 1024;
/// Longest option 12 (code, length and name) a host entry may carry.
pub const HOSTNAME_OPT_MAX: usize = 66;
/// Requests longer than this (UDP payload) are left to userspace.
pub const REQUEST_MAX: usize = 1024;
/// Replies shorter than this are padded with zeros (RFC 2131's minimum BOOTP size; some
/// PXE ROMs drop shorter messages). The userspace server pads the same way.
pub const REPLY_MIN: usize = 300;
/// `IfaceEntry::subnet` when no subnet is served directly on the interface.
pub const NO_SUBNET: u32 = u32::MAX;

/// A client without boot firmware markers (an operating system's DHCP client).
pub const CLASS_PLAIN: u8 = 0;
/// iPXE with HTTP (option 175 with feature 19, or no option 175 at all).
pub const CLASS_IPXE_HTTP: u8 = 1;
/// iPXE without HTTP.
pub const CLASS_IPXE_TFTP: u8 = 2;
/// A PXE ROM (option 60 starting with `PXEClient`); keyed with its architecture.
pub const CLASS_PXE: u8 = 3;
/// UEFI HTTP boot (option 60 starting with `HTTPClient`); keyed with its architecture.
pub const CLASS_HTTP: u8 = 4;

/// DHCPDISCOVER (option 53).
pub const DHCPDISCOVER: u8 = 1;
/// DHCPOFFER.
pub const DHCPOFFER: u8 = 2;
/// DHCPREQUEST.
pub const DHCPREQUEST: u8 = 3;
/// DHCPDECLINE.
pub const DHCPDECLINE: u8 = 4;
/// DHCPACK.
pub const DHCPACK: u8 = 5;
/// DHCPNAK.
pub const DHCPNAK: u8 = 6;
/// DHCPRELEASE.
pub const DHCPRELEASE: u8 = 7;
/// DHCPINFORM.
pub const DHCPINFORM: u8 = 8;

/// Answered in the kernel: OFFER.
pub const STAT_ANSWERED_OFFER: u32 = 0;
/// Answered in the kernel: ACK.
pub const STAT_ANSWERED_ACK: u32 = 1;
/// Passed: the client's MAC has no reservation in the fast path.
pub const STAT_PASSED_UNKNOWN_HOST: u32 = 2;
/// Passed: RELEASE, DECLINE, INFORM or a type the kernel does not answer.
pub const STAT_PASSED_MESSAGE_TYPE: u32 = 3;
/// Passed: the request is not the kernel's to answer (another subnet, another server's
/// offer, an address other than the reservation): userspace decides (NAK or silence).
pub const STAT_PASSED_NOT_OURS: u32 = 4;
/// Passed: a request the program does not handle (option overload, an unknown client
/// class or architecture, IP options or fragments, a size over the limits).
pub const STAT_PASSED_UNSUPPORTED: u32 = 5;
/// Passed: the fast path is off; only the shield applies.
pub const STAT_PASSED_FAST_PATH_OFF: u32 = 6;
/// Dropped: shorter than a BOOTP header plus cookie, or UDP/IP lengths that lie.
pub const STAT_DROP_TRUNCATED: u32 = 7;
/// Dropped: wrong magic cookie.
pub const STAT_DROP_BAD_COOKIE: u32 = 8;
/// Dropped: an option runs past the end or has a length its type forbids.
pub const STAT_DROP_BAD_OPTION: u32 = 9;
/// Dropped: not a BOOTREQUEST.
pub const STAT_DROP_WRONG_OP: u32 = 10;
/// Dropped: not Ethernet with a 6-byte address, or a zero or multicast client MAC.
pub const STAT_DROP_BAD_HARDWARE: u32 = 11;
/// Dropped: no option 53.
pub const STAT_DROP_NO_MESSAGE_TYPE: u32 = 12;
/// Dropped: a type only servers send (OFFER, ACK, NAK).
pub const STAT_DROP_UNEXPECTED_TYPE: u32 = 13;
/// Dropped: the client exceeded its rate to userspace.
pub const STAT_DROP_RATE_LIMITED_CLIENT: u32 = 14;
/// Dropped: the relay (giaddr) exceeded its rate to userspace.
pub const STAT_DROP_RATE_LIMITED_RELAY: u32 = 15;
/// An answered exchange whose event did not fit in the ring buffer.
pub const STAT_EVENTS_LOST: u32 = 16;
/// Passed: building the reply failed (the frame could not grow); userspace answers.
pub const STAT_PASSED_TX_FAILED: u32 = 17;
/// Dropped: a reserved host's request over its per-MAC bucket (the same rate and burst as the
/// shield's and userspace's per-client limit), instead of being answered in the kernel.
pub const STAT_DROP_RATE_LIMITED_ANSWER: u32 = 18;
/// An ACK answered in the kernel without an event: the same lease of the same host was
/// reported less than half its lease time ago, with no OFFER since (a renewal, or a repeat).
pub const STAT_ACK_UNREPORTED: u32 = 19;
/// Passed: a relayed request (giaddr set) whose IPv4 source is not in `dhcp.relays`; the
/// userspace server drops it as `relay_not_allowed`, through the shield's buckets.
pub const STAT_PASSED_RELAY_NOT_ALLOWED: u32 = 20;
/// Number of counters.
pub const STAT_COUNT: u32 = 21;

/// The metric labels of a counter: (action, reason). `None` for [`STAT_EVENTS_LOST`] and
/// [`STAT_ACK_UNREPORTED`], which count events, not packets.
pub fn stat_labels(stat: u32) -> Option<(&'static str, &'static str)> {
    Some(match stat {
        STAT_ANSWERED_OFFER => ("answered", "offer"),
        STAT_ANSWERED_ACK => ("answered", "ack"),
        STAT_PASSED_UNKNOWN_HOST => ("passed", "unknown_host"),
        STAT_PASSED_MESSAGE_TYPE => ("passed", "message_type"),
        STAT_PASSED_NOT_OURS => ("passed", "not_ours"),
        STAT_PASSED_UNSUPPORTED => ("passed", "unsupported"),
        STAT_PASSED_FAST_PATH_OFF => ("passed", "fast_path_off"),
        STAT_PASSED_TX_FAILED => ("passed", "tx_failed"),
        STAT_PASSED_RELAY_NOT_ALLOWED => ("passed", "relay_not_allowed"),
        STAT_DROP_TRUNCATED => ("dropped", "truncated"),
        STAT_DROP_BAD_COOKIE => ("dropped", "bad_cookie"),
        STAT_DROP_BAD_OPTION => ("dropped", "bad_option"),
        STAT_DROP_WRONG_OP => ("dropped", "wrong_op"),
        STAT_DROP_BAD_HARDWARE => ("dropped", "bad_hardware"),
        STAT_DROP_NO_MESSAGE_TYPE => ("dropped", "no_message_type"),
        STAT_DROP_UNEXPECTED_TYPE => ("dropped", "unexpected_type"),
        STAT_DROP_RATE_LIMITED_CLIENT => ("dropped", "rate_limited_client"),
        STAT_DROP_RATE_LIMITED_RELAY => ("dropped", "rate_limited_relay"),
        STAT_DROP_RATE_LIMITED_ANSWER => ("dropped", "rate_limited_answer"),
        _ => return None,
    })
}

/// Length rules of options, by code (see [`length_rule`]).
pub mod rule {
    /// Any length.
    pub const ANY: u8 = 0;
    /// Exactly 0, 1, 2, 3 or 4 bytes: `EXACT + n`.
    pub const EXACT: u8 = 1;
    /// At least 1 byte.
    pub const AT_LEAST_1: u8 = 6;
    /// At least 3 bytes.
    pub const AT_LEAST_3: u8 = 7;
    /// A multiple of 2.
    pub const MULTIPLE_OF_2: u8 = 8;
    /// A multiple of 4 (lists of addresses).
    pub const MULTIPLE_OF_4: u8 = 9;
    /// A multiple of 8 (lists of address pairs).
    pub const MULTIPLE_OF_8: u8 = 10;
    /// At least 2 and even (option 93's list of architectures).
    pub const ARCH_LIST: u8 = 11;
}

/// The length rule of option `code` (RFC 2132 and each option's own RFC).
pub const fn length_rule(code: u8) -> u8 {
    match code {
        19 | 20 | 23 | 27 | 29 | 30 | 31 | 34 | 36 | 37 | 39 | 46 | 52 | 53 | 116 | 156 | 157 => {
            rule::EXACT + 1
        }
        13 | 22 | 26 | 57 => rule::EXACT + 2,
        94 => rule::EXACT + 3,
        1 | 2 | 16 | 24 | 28 | 32 | 35 | 38 | 50 | 51 | 54 | 58 | 59 | 91 | 118 | 150 | 152
        | 153 | 154 | 155 => rule::EXACT + 4,
        80 => rule::EXACT,
        81 => rule::AT_LEAST_3,
        151 => rule::AT_LEAST_1,
        3..=11 | 41 | 42 | 44 | 45 | 48 | 49 | 65 | 68..=76 | 89 | 92 => rule::MULTIPLE_OF_4,
        21 | 33 => rule::MULTIPLE_OF_8,
        25 => rule::MULTIPLE_OF_2,
        93 => rule::ARCH_LIST,
        _ => rule::ANY,
    }
}

/// Every option's length rule, indexed by code: the kernel program looks rules up here
/// rather than branching on the code, which keeps its option walk small for the verifier.
pub const LENGTH_RULES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = length_rule(c as u8);
        c += 1;
    }
    t
};

/// Whether `len` satisfies `rule`.
#[inline(always)]
pub fn rule_ok(rule: u8, len: usize) -> bool {
    match rule {
        rule::ANY => true,
        r if (rule::EXACT..=rule::EXACT + 4).contains(&r) => len == (r - rule::EXACT) as usize,
        rule::AT_LEAST_1 => len >= 1,
        rule::AT_LEAST_3 => len >= 3,
        rule::MULTIPLE_OF_2 => len.is_multiple_of(2),
        rule::MULTIPLE_OF_4 => len.is_multiple_of(4),
        rule::MULTIPLE_OF_8 => len.is_multiple_of(8),
        rule::ARCH_LIST => len >= 2 && len.is_multiple_of(2),
        _ => false,
    }
}

/// Whether an option's length is one its type allows.
///
/// The kernel program and the userspace decoder both refuse a request on a violation, so a
/// request one side drops is never answered by the other.
#[inline(always)]
pub fn option_length_ok(code: u8, len: usize) -> bool {
    rule_ok(length_rule(code), len)
}

/// Slots of the options the fast path reads, by code (0: not read).
pub mod slot {
    /// Not read.
    pub const NONE: u8 = 0;
    /// 53, message type.
    pub const MESSAGE_TYPE: u8 = 1;
    /// 50, requested address.
    pub const REQUESTED: u8 = 2;
    /// 54, server identifier.
    pub const SERVER_ID: u8 = 3;
    /// 93, client architecture.
    pub const ARCH: u8 = 4;
    /// 60, vendor class.
    pub const VENDOR: u8 = 5;
    /// 77, user class.
    pub const USER_CLASS: u8 = 6;
    /// 175, iPXE's encapsulated options.
    pub const IPXE: u8 = 7;
    /// 97, client UUID.
    pub const UUID: u8 = 8;
    /// 82, relay agent information.
    pub const RELAY: u8 = 9;
    /// 52, option overload.
    pub const OVERLOAD: u8 = 10;
    /// Number of slots.
    pub const COUNT: usize = 11;
}

/// The slot of each option code.
pub const OPTION_SLOTS: [u8; 256] = {
    let mut t = [slot::NONE; 256];
    t[53] = slot::MESSAGE_TYPE;
    t[50] = slot::REQUESTED;
    t[54] = slot::SERVER_ID;
    t[93] = slot::ARCH;
    t[60] = slot::VENDOR;
    t[77] = slot::USER_CLASS;
    t[175] = slot::IPXE;
    t[97] = slot::UUID;
    t[82] = slot::RELAY;
    t[52] = slot::OVERLOAD;
    t
};

/// Key of [`MAP_HOSTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacKey {
    /// The client's hardware address.
    pub mac: [u8; 6],
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// Value of [`MAP_HOSTS`]: one reserved host.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostEntry {
    /// The reserved address (network order bytes).
    pub ip: [u8; 4],
    /// Network of the reservation's subnet.
    pub net: [u8; 4],
    /// Its netmask.
    pub mask: [u8; 4],
    /// Index of the subnet in the daemon's config.
    pub subnet: u32,
    /// The template group: hosts whose replies differ only in address and name.
    pub group: u32,
    /// Bytes of `hostname_opt` in use (0 when the reply carries no option 12).
    pub hostname_len: u32,
    /// Option 12 as it goes on the wire: code, length, name (room for the program's
    /// eight-byte copies past the longest).
    pub hostname_opt: [u8; 72],
}

/// What the program needs to know about the interface a template answers on.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceEntry {
    /// The server's address on it (source address and server identifier).
    pub server_ip: [u8; 4],
    /// Subnet served directly on it (unrelayed requests), or [`NO_SUBNET`].
    pub subnet: u32,
    /// The interface's hardware address (source of replies).
    pub mac: [u8; 6],
    /// Explicit padding.
    pub _pad: [u8; 2],
}

/// Key of [`MAP_TEMPLATES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TemplateKey {
    /// Ingress interface.
    pub ifindex: u32,
    /// [`HostEntry::group`].
    pub group: u32,
    /// Client architecture (option 93) for [`CLASS_PXE`] and [`CLASS_HTTP`], else 0. A PXE
    /// client without option 93 is keyed as 0 (BIOS), as the policy treats it.
    pub arch: u16,
    /// [`DHCPOFFER`] or [`DHCPACK`].
    pub kind: u8,
    /// One of the `CLASS_*` constants.
    pub class: u8,
}

/// Value of [`MAP_TEMPLATES`]: a reply with holes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    /// BOOTP header and cookie as the userspace server encodes them, with yiaddr, xid,
    /// flags, ciaddr, giaddr and chaddr to be filled in.
    pub header: [u8; BOOTP_HEADER_LEN],
    /// Bytes of `opts` in use: every option but 12, 97, 82 and the end option.
    pub opts_len: u16,
    /// Offset in `opts` where the host's option 12 goes.
    pub hostname_at: u16,
    /// Offset in `opts` where the client's option 97 goes, echoed (`>= hostname_at`).
    pub uuid_at: u16,
    /// Explicit padding.
    pub _pad: u16,
    /// The interface the template answers on (its [`TemplateKey::ifindex`]).
    pub iface: IfaceEntry,
    /// The lease time the reply grants (its option 51), seconds; 0 when it has none.
    pub lease_secs: u32,
    /// The options, sorted by code as the userspace encoder writes them.
    pub opts: [u8; TEMPLATE_OPTS_BUF],
}

/// One answered request, for the lease table and the boot ledger.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Ingress interface.
    pub ifindex: u32,
    /// The transaction id (as on the wire).
    pub xid: [u8; 4],
    /// The client's MAC.
    pub mac: [u8; 6],
    /// [`DHCPOFFER`] or [`DHCPACK`].
    pub kind: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// The address offered or acknowledged.
    pub ip: [u8; 4],
    /// The relay's address, or zeros.
    pub giaddr: [u8; 4],
    /// The lease time granted ([`Template::lease_secs`]), seconds.
    pub lease_secs: u32,
}

/// Value of [`MAP_HOST_LIMITS`]: one reserved host's answer state, shared by every CPU.
///
/// Shared, not per CPU: a spoofed flood arrives on whatever queues its (forged) addresses hash
/// to, and per-CPU buckets would multiply the limit by the number of CPUs. The bucket is
/// updated with one atomic add per answer and plain loads and stores elsewhere, so CPUs racing
/// on one MAC can each take a token they saw as free: the burst is approximate by at most one
/// answer per racing CPU, and the long-run rate is exact (every answer adds its interval).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostLimit {
    /// GCRA theoretical arrival time of the next answer (`bpf_ktime_get_ns` clock).
    pub tat_ns: u64,
    /// When this host's last ACK was reported through the ring buffer, or 0 when none was
    /// since its last OFFER.
    pub acked_ns: u64,
    /// The address of that ACK.
    pub acked_ip: [u8; 4],
    /// Explicit padding.
    pub _pad: u32,
}

/// Key of [`MAP_BUCKETS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// 0: `id` is a client MAC; 1: `id` is a relay's IPv4 address.
    pub kind: u32,
    /// The MAC or the address, zero-padded.
    pub id: [u8; 8],
    /// Explicit padding.
    pub _pad: u32,
}

/// Which template variant a request selects, from what it says about its firmware.
///
/// Mirrors the userspace policy's `ClientFacts`: iPXE first (user class `iPXE` or option
/// 175), then `HTTPClient`, then `PXEClient`, else a plain client. `None` when the request
/// is one the kernel leaves to userspace (a user class that is neither absent nor plainly
/// `iPXE`, an option 93 that is not one 16-bit entry).
#[inline(always)]
pub fn variant(
    user_class_is_ipxe: Option<bool>,
    has_ipxe_opt: bool,
    ipxe_has_http: bool,
    vendor: VendorClass,
    arch: Option<u16>,
) -> Option<(u8, u16)> {
    let ipxe = match user_class_is_ipxe {
        Some(true) => true,
        Some(false) if !has_ipxe_opt => return None,
        _ => has_ipxe_opt,
    };
    if ipxe {
        return Some(if ipxe_has_http {
            (CLASS_IPXE_HTTP, 0)
        } else {
            (CLASS_IPXE_TFTP, 0)
        });
    }
    match vendor {
        VendorClass::HttpClient => Some((CLASS_HTTP, arch.unwrap_or(0))),
        VendorClass::PxeClient => Some((CLASS_PXE, arch.unwrap_or(0))),
        VendorClass::Other => Some((CLASS_PLAIN, 0)),
    }
}

/// What option 60 says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VendorClass {
    /// Starts with `PXEClient`.
    PxeClient,
    /// Starts with `HTTPClient`.
    HttpClient,
    /// Absent or anything else.
    Other,
}
