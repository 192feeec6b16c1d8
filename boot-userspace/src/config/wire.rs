//! The TOML shape of the configuration files, exactly as an operator writes them.
//!
//! Every struct denies unknown fields, so a typo in a key is an error that names the key,
//! never a silently ignored setting. Values stay as written here (strings for addresses and
//! ranges) and are checked in [`super`], where each error can name its key.

use serde::Deserialize;

use crate::model::boot::wire::{Boot, DhcpOptions};

/// The daemon's main config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[daemon]`: process-wide settings.
    #[serde(default)]
    pub daemon: Daemon,
    /// `[fabric]`: the provisioning network the daemon serves.
    #[serde(default)]
    pub fabric: Fabric,
    /// `[admin]`: the metrics and admin API server.
    #[serde(default)]
    pub admin: Admin,
    /// `[xdp]`: the in-kernel data path.
    #[serde(default)]
    pub xdp: Xdp,
    /// `[tftp]`: the TFTP service.
    #[serde(default)]
    pub tftp: Tftp,
    /// `[http]`: the HTTP image streamer.
    pub http: Option<Http>,
    /// `[dhcp]`: the DHCPv4 server.
    pub dhcp: Option<Dhcp>,
    /// `[dhcp6]`: the DHCPv6 server.
    pub dhcp6: Option<super::dhcp6::WireDhcp6>,
    /// `[boot]`: what PXE, iPXE and HTTP-boot clients are told to load.
    #[serde(default)]
    pub boot: Boot,
    /// `[scheduler]`: the staggered mass reboot.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// `[[webhooks]]`: receivers of the event log.
    #[serde(default)]
    pub webhooks: Vec<super::webhooks::WireWebhook>,
    /// `[cluster]`: cluster mode on etcd (absent: standalone).
    pub cluster: Option<super::cluster::WireCluster>,
    /// `[images.<name>]`: OS images the fabric fetches and keeps.
    #[serde(default)]
    pub images: std::collections::BTreeMap<String, super::images::WireImage>,
}

/// `[scheduler]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduler {
    /// Cap on the egress the scheduler plans with, Mbit/s.
    pub capacity_mbps: Option<f64>,
    /// What one booting host can take on its own, Mbit/s.
    pub per_host_mbps: Option<f64>,
    /// POST time assumed for a hardware model not seen yet, seconds.
    pub post_guess_s: Option<f64>,
    /// BMC operations in flight at once.
    pub max_bmc_operations: Option<usize>,
    /// Hosts per rack between reset and DHCP at once (inrush).
    pub max_posting_per_rack: Option<usize>,
    /// Attempts of a host's reset before it is given up on.
    pub reset_attempts: Option<u32>,
    /// Seconds before a failed reset is tried again (doubling per attempt).
    pub retry_backoff_s: Option<f64>,
    /// Seconds from reset to DHCP before a host counts as failed.
    pub post_timeout_s: Option<f64>,
    /// Seconds from DHCP to `booted` before a host counts as failed.
    pub boot_timeout_s: Option<f64>,
    /// How far ahead of need hosts are reset, seconds.
    pub lookahead_s: Option<f64>,
    /// Seconds a host waiting for a download slot sleeps before asking again.
    pub gate_retry_s: Option<u32>,
    /// Who waits for a download slot: `always`, `reboot_runs` (default) or `off`.
    pub gate: Option<String>,
    /// Fewest download slots, whatever the measured capacity says (default 1).
    pub min_slots: Option<usize>,
    /// Seconds an admitted host may take to start a download before its slot is revoked.
    pub admit_idle_s: Option<f64>,
}

/// `[dhcp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhcp {
    /// Serve DHCP (default true when the section exists).
    pub enabled: Option<bool>,
    /// NAK requests for addresses this server does not know (default true).
    pub authoritative: Option<bool>,
    /// Packets per second one client (MAC) may send before its packets are dropped.
    pub rate_limit: Option<u32>,
    /// `server` (addresses and boot) or `proxy` (boot information only, ports 67 and 4011).
    pub mode: Option<String>,
    /// Milliseconds the lease journal gathers ACKs before one fdatasync covers them all.
    pub commit_delay_ms: Option<u32>,
    /// Relay agents (addresses or CIDRs) whose relayed requests (giaddr set) are accepted.
    pub relays: Option<Vec<String>>,
    /// DECLINEs a subnet accepts at once before the per-subnet bucket refuses them.
    pub decline_burst: Option<u32>,
    /// DECLINEs per hour a subnet's bucket refills.
    pub decline_per_hour: Option<u32>,
    /// Lease commits in flight (queued or being written) before new ones are refused.
    pub commit_queue: Option<u32>,
    /// Milliseconds a lease commit may take before its ACK is given up.
    pub commit_timeout_ms: Option<u32>,
    /// Tell iPXE not to wait for proxyDHCP offers (option 175.176; default true).
    pub ipxe_no_pxedhcp: Option<bool>,
    /// `[dhcp.options]`: options for every subnet.
    #[serde(default)]
    pub options: DhcpOptions,
    /// `[[dhcp.subnets]]`.
    #[serde(default)]
    pub subnets: Vec<Subnet>,
}

/// `[[dhcp.subnets]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    /// The subnet, `10.77.0.0/24`.
    pub cidr: Option<String>,
    /// Interface the subnet is directly attached to; absent for relayed subnets.
    pub interface: Option<String>,
    /// Dynamic ranges, `FIRST-LAST`.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Addresses or ranges never handed out dynamically.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Options for this subnet.
    #[serde(default)]
    pub options: DhcpOptions,
}

/// `[daemon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Daemon {
    /// Log filter in `tracing` syntax, e.g. `info` or `info,bootfabric::xdp=debug`.
    pub log: Option<String>,
    /// Path of the host inventory file, relative to the config file's folder.
    pub inventory: Option<String>,
    /// Folder for durable state (the lease journal), relative to the config file's folder.
    pub state_dir: Option<String>,
    /// `text` (the default) or `json` (one object per line).
    pub log_format: Option<String>,
    /// Megabytes of boot history (the ledger's journal) kept on disk; 0 keeps none.
    pub history_mb: Option<u64>,
}

/// `[fabric]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fabric {
    /// Names of the interfaces on the provisioning network.
    pub interfaces: Option<Vec<String>>,
    /// `auto` (answer IPv6 router solicitations unless another router does) or `off`.
    pub router_advertisements: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Listen address, `IP:PORT`.
    pub listen: Option<String>,
    /// Source networks (CIDR) that may use the admin server.
    pub allow: Option<Vec<String>>,
    /// File holding the bearer token that control calls must present.
    pub token_file: Option<String>,
    /// PEM certificate chain: the admin server speaks TLS when set.
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<String>,
    /// PEM CA certificates: control calls then also need a client certificate signed by one.
    pub client_ca: Option<String>,
    /// Concurrent event streams (`GET /api/v1/events`) served at most.
    pub max_event_streams: Option<usize>,
}

/// `[xdp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xdp {
    /// `auto`, `native`, `generic` or `off`.
    pub mode: Option<String>,
    /// Whether reserved hosts get their DHCP answers from the kernel.
    pub dhcp_fast_path: Option<bool>,
    /// DHCP packets per second one relay (giaddr) may pass to userspace.
    pub relay_rate_limit: Option<u32>,
}

/// `[tftp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tftp {
    /// UDP port range for transfers, `FIRST-LAST`.
    pub transfer_ports: Option<String>,
    /// Folder served; the TFTP server runs when it is set.
    pub root: Option<String>,
    /// Largest window (RFC 7440) granted to a client.
    pub max_windowsize: Option<u16>,
    /// Retransmissions of one block or window before a transfer is abandoned.
    pub max_retries: Option<u32>,
    /// Link MTU that bounds blksize (blocks never fragment).
    pub mtu: Option<u16>,
    /// Transfers in flight, all clients together.
    pub max_transfers: Option<u32>,
    /// Transfers in flight from one client address.
    pub max_transfers_per_client: Option<u32>,
    /// New read requests a second, all clients together.
    pub requests_per_second: Option<u32>,
    /// New read requests a second from one client address.
    pub requests_per_second_per_client: Option<u32>,
    /// Largest RFC 2349 `timeout` acknowledged, seconds.
    pub max_timeout_s: Option<u32>,
    /// Longest a transfer may run, seconds.
    pub max_transfer_s: Option<u32>,
    /// Bytes all netascii conversions may hold together.
    pub netascii_budget_bytes: Option<u64>,
    /// Files under `root` the kernel serves lock-step transfers of (default: the `[boot]`
    /// bootloaders); `[]` leaves every transfer to userspace.
    pub kernel_files: Option<Vec<String>>,
    /// Kernel memory for those files' copies, bytes.
    pub kernel_bytes: Option<u64>,
}

/// `[http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Serve HTTP (default true when the section exists).
    pub enabled: Option<bool>,
    /// Folder of images (kernels, initrds, ISOs) served as files.
    pub root: Option<String>,
    /// Folder of per-host config templates served under `/configs/`.
    pub configs: Option<String>,
    /// TCP port on each fabric interface's address.
    pub port: Option<u16>,
    /// `auto`, `io_uring` or `epoll`.
    pub backend: Option<String>,
    /// io_uring workers (rings); 0 means one per core.
    pub workers: Option<usize>,
    /// Open connections at most.
    pub max_connections: Option<usize>,
    /// Open connections at most from one client address.
    pub max_connections_per_client: Option<u32>,
    /// Seconds to send a complete request head.
    pub header_timeout_s: Option<u64>,
    /// Seconds a kept-alive connection may idle.
    pub idle_timeout_s: Option<u64>,
    /// Seconds a response may go without the client taking a byte.
    pub send_timeout_s: Option<u64>,
    /// Seconds after a boot opens (BMC reset, first DHCP offer or iPXE script) that its
    /// configs may still be delivered, if it does not report `booted` first.
    pub config_ttl_s: Option<u64>,
    /// Base URL (`http://` or `https://`) that profile files missing under `root` are
    /// fetched from, once, on their first request.
    pub origin: Option<String>,
    /// Largest file fetched from the origin, bytes.
    pub origin_max_bytes: Option<u64>,
    /// Longest one origin fetch may take, seconds.
    pub origin_timeout_s: Option<u64>,
    /// PEM file of the CA certificates an `https` origin is checked against.
    pub origin_ca: Option<String>,
    /// PEM certificate chain (leaf first) that HTTPS serves; with `tls_key` it turns HTTPS on.
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<String>,
    /// TCP port HTTPS listens on, on each fabric interface's address (default 443).
    pub tls_port: Option<u16>,
    /// Hand HTTPS sessions to the kernel's TLS (kTLS) where it has it (default true).
    pub tls_kernel: Option<bool>,
}
