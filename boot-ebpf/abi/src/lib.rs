//! Types shared by Bootfabric's XDP programs and the daemon that loads them.
//!
//! Everything here is `#[repr(C)]` with explicit padding and integer fields only (no `bool`,
//! `Option` or enums), because the kernel side and userspace read the same bytes out of BPF
//! maps. With the `user` feature the types implement `aya::Pod` for the userspace map API.
#![no_std]

/// Name of the classifier XDP program in the object file.
pub const PROGRAM_CLASSIFY: &str = "bootfabric_classify";
/// Name of the per-CPU hash map of packet and byte counters, keyed by [`CounterKey`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the one-entry array map holding the [`ClassifyConfig`].
pub const MAP_CLASSIFY_CONFIG: &str = "CLASSIFY_CONFIG";
/// Capacity of [`MAP_COUNTERS`]: room for 64 interfaces with every class and action.
pub const COUNTERS_MAX_ENTRIES: u32 = 64 * CLASS_COUNT as u32 * ACTION_COUNT as u32;

/// UDP to the DHCP server port (67).
pub const CLASS_DHCP: u8 = 0;
/// UDP to the TFTP server port (69): read and write requests.
pub const CLASS_TFTP: u8 = 1;
/// UDP to a port in the daemon's TFTP transfer range: ACKs and errors of running transfers.
pub const CLASS_TFTP_DATA: u8 = 2;
/// Everything else, which the programs always pass untouched.
pub const CLASS_OTHER: u8 = 3;
/// Number of packet classes.
pub const CLASS_COUNT: u8 = 4;

/// The packet went on to the kernel's stack (`XDP_PASS`).
pub const ACTION_PASS: u8 = 0;
/// The packet was dropped in XDP (`XDP_DROP`).
pub const ACTION_DROP: u8 = 1;
/// The packet was answered in place and sent back out (`XDP_TX`).
pub const ACTION_TX: u8 = 2;
/// The program hit an internal error (`XDP_ABORTED`).
pub const ACTION_ABORTED: u8 = 3;
/// Number of actions.
pub const ACTION_COUNT: u8 = 4;

/// DHCP requests are counted and passed untouched (no DHCP server in this daemon).
pub const DHCP_PATH_COUNT_ONLY: u32 = 0;
/// Malformed requests and floods are dropped; the rest goes to userspace.
pub const DHCP_PATH_SHIELD: u32 = 1;
/// As [`DHCP_PATH_SHIELD`], and reserved hosts are answered in the kernel.
pub const DHCP_PATH_ANSWER: u32 = 2;

/// Label value of a class, as exported in metrics.
pub fn class_name(class: u8) -> &'static str {
    match class {
        CLASS_DHCP => "dhcp",
        CLASS_TFTP => "tftp",
        CLASS_TFTP_DATA => "tftp_data",
        _ => "other",
    }
}

/// Label value of an action, as exported in metrics.
pub fn action_name(action: u8) -> &'static str {
    match action {
        ACTION_PASS => "pass",
        ACTION_DROP => "drop",
        ACTION_TX => "tx",
        _ => "aborted",
    }
}

/// Key of [`MAP_COUNTERS`]: one counter pair per ingress interface, class and action.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CounterKey {
    /// Ingress interface index, in the daemon's network namespace.
    pub ifindex: u32,
    /// One of the `CLASS_*` constants.
    pub class: u8,
    /// One of the `ACTION_*` constants.
    pub action: u8,
    /// Explicit padding so the key has no uninitialised bytes.
    pub _pad: [u8; 2],
}

/// Value of [`MAP_COUNTERS`], per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets seen.
    pub packets: u64,
    /// Bytes seen, counting the whole frame from the Ethernet header on.
    pub bytes: u64,
}

/// The classifier's parameters, written by the daemon before it attaches the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassifyConfig {
    /// UDP port of the DHCP server (67).
    pub dhcp_server_port: u16,
    /// UDP port of the TFTP server (69).
    pub tftp_port: u16,
    /// First UDP port of the TFTP transfer range (inclusive); 0 disables the class.
    pub tftp_data_first: u16,
    /// Last UDP port of the TFTP transfer range (inclusive).
    pub tftp_data_last: u16,
    /// What the program does with DHCP requests: one of the `DHCP_PATH_*` constants.
    pub dhcp_fast_path: u32,
    /// Nanoseconds between requests one client may pass to userspace (GCRA emission interval).
    pub client_interval_ns: u64,
    /// Burst tolerance of one client, nanoseconds.
    pub client_burst_ns: u64,
    /// Emission interval for one relay (giaddr), nanoseconds.
    pub relay_interval_ns: u64,
    /// Burst tolerance of one relay, nanoseconds.
    pub relay_burst_ns: u64,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        Self {
            dhcp_server_port: 67,
            tftp_port: 69,
            tftp_data_first: 0,
            tftp_data_last: 0,
            dhcp_fast_path: 0,
            client_interval_ns: 0,
            client_burst_ns: 0,
            relay_interval_ns: 0,
            relay_burst_ns: 0,
        }
    }
}

impl ClassifyConfig {
    /// The class of a UDP datagram by its destination port (host byte order).
    ///
    /// Shared by the kernel program and the daemon's tests so that both agree on every port.
    #[inline(always)]
    pub fn class_of_udp_port(&self, dst_port: u16) -> u8 {
        if dst_port == self.dhcp_server_port {
            CLASS_DHCP
        } else if dst_port == self.tftp_port {
            CLASS_TFTP
        } else if self.tftp_data_first != 0
            && dst_port >= self.tftp_data_first
            && dst_port <= self.tftp_data_last
        {
            CLASS_TFTP_DATA
        } else {
            CLASS_OTHER
        }
    }
}

pub mod dhcp;
pub mod tftp;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all three are repr(C), made of integers only, with explicit padding, so every
    // bit pattern is valid and none has uninitialised bytes.
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::ClassifyConfig {}
    unsafe impl aya::Pod for super::dhcp::MacKey {}
    unsafe impl aya::Pod for super::dhcp::HostEntry {}
    unsafe impl aya::Pod for super::dhcp::IfaceEntry {}
    unsafe impl aya::Pod for super::dhcp::TemplateKey {}
    unsafe impl aya::Pod for super::dhcp::Template {}
    unsafe impl aya::Pod for super::dhcp::Event {}
    unsafe impl aya::Pod for super::dhcp::BucketKey {}
    unsafe impl aya::Pod for super::dhcp::HostLimit {}
    unsafe impl aya::Pod for super::tftp::XferKey {}
    unsafe impl aya::Pod for super::tftp::Xfer {}
    unsafe impl aya::Pod for super::tftp::Slot {}
}
