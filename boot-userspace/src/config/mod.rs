//! Configuration: the TOML file ([`wire`]) checked into a runtime [`Config`].
//!
//! Loading is two steps. Files are read and parsed into the `wire` structs (unknown keys are
//! errors), then [`Config::from_wire`] validates every value without further I/O except for
//! the files the config names. Every error names the file and the key it is about.

pub mod cluster;
pub mod dhcp;
pub mod dhcp6;
pub mod images;
pub mod origin;
pub mod overlay;
pub mod secrets;
pub mod webhooks;
pub mod wire;

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use ipnet::IpNet;

use crate::model::{
    boot::BootSettings,
    gate::{GateMode, GateSettings},
    inventory::{Inventory, InventoryError, Profile},
    render::{TemplateError, TemplateErrors, Templates},
};
use crate::util::key_error::KeyError;

pub use dhcp::DhcpGuards;
pub use dhcp::{AddrRange, DhcpConfig, DhcpMode, SubnetConfig};
pub use dhcp6::Dhcp6Config;

/// Default folder for durable state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bootfabric";

/// Boot history kept by default, megabytes: years of boots for a rack (an event line is about
/// 150 bytes).
pub const DEFAULT_HISTORY_MB: u64 = 64;
/// Most boot history `daemon.history_mb` may ask for.
pub const MAX_HISTORY_MB: u64 = 4096;

/// How the daemon writes its log lines (`daemon.log_format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; colours only on a terminal.
    #[default]
    Text,
    /// One JSON object per line (for journald's or a collector's parsers).
    Json,
}

/// Default admin listen address: loopback only, so metrics are never exposed by accident.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9370";
/// Default TFTP transfer port range.
pub const DEFAULT_TFTP_TRANSFER_PORTS: PortRange = PortRange {
    first: 50000,
    last: 50999,
};
/// Default `http.config_ttl_s`: an hour from a boot's start to deliver its configs.
pub const DEFAULT_CONFIG_TTL_S: u64 = 3600;
/// Largest `http.config_ttl_s`: a boot that has not reported in a day is over.
pub const MAX_CONFIG_TTL_S: u64 = 86_400;

/// Whether one folder lies inside the other (or they are the same): both canonical.
fn folders_overlap(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// A configuration that cannot be used, with the file and key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not valid TOML for its schema (syntax, unknown key, wrong type).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key, line and column.
        message: String,
    },
    /// A key has a value that cannot be used.
    #[error("{path}: key `{key}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key, with an index for array entries (`admin.allow[1]`).
        key: String,
        /// Why the value is refused.
        reason: String,
    },
    /// The inventory named by `daemon.inventory` is unusable.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The API's inventory changes (`state_dir/api-inventory.json`) are unusable.
    #[error(transparent)]
    Overlay(#[from] overlay::OverlayError),
    /// A config template or a profile's cmdline does not parse, or does not render for a
    /// host (`configs/role.cfg:3: host node02: undefined value`).
    #[error("{path}: {errors}")]
    Templates {
        /// The config file.
        path: PathBuf,
        /// Each failure, naming file, line and host.
        errors: TemplateErrors,
    },
}

/// How the XDP program should be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpModeSetting {
    /// Native (driver) mode, falling back to generic, then to userspace only.
    Auto,
    /// Native mode or fail.
    Native,
    /// Generic (skb) mode or fail.
    Generic,
    /// No XDP: userspace only.
    Off,
}

impl fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Off => "off",
        })
    }
}

/// An inclusive UDP port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The validated `[tftp]` service settings.
#[derive(Clone, Debug)]
pub struct TftpConfig {
    /// Canonical root folder.
    pub root: PathBuf,
    /// Largest window granted.
    pub max_windowsize: u16,
    /// Retransmissions before giving up.
    pub max_retries: u32,
    /// Link MTU bounding blksize.
    pub mtu: u16,
    /// Transfers in flight, all clients together (at most one per transfer port).
    pub max_transfers: u32,
    /// Transfers in flight from one client address.
    pub max_transfers_per_client: u32,
    /// New read requests a second, all clients together (also the burst).
    pub requests_per_second: u32,
    /// New read requests a second from one client address (also the burst).
    pub requests_per_second_per_client: u32,
    /// Largest RFC 2349 `timeout` acknowledged, seconds.
    pub max_timeout_s: u8,
    /// Longest a transfer may run, start to end.
    pub max_transfer: std::time::Duration,
    /// Bytes all netascii conversions may hold together.
    pub netascii_budget_bytes: u64,
    /// Files (relative to `root`) whose lock-step transfers the kernel carries.
    pub kernel_files: Vec<String>,
    /// Kernel memory for their copies, bytes (a multiple of the slot size).
    pub kernel_bytes: u64,
}

/// How the HTTP server moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpBackend {
    /// io_uring where the kernel has it, else epoll.
    Auto,
    /// io_uring or refuse to start.
    IoUring,
    /// epoll and sendfile.
    Epoll,
}

/// Default of `tftp.kernel_bytes`: room for the usual bootloaders (iPXE, shim, GRUB) and more.
const DEFAULT_TFTP_KERNEL_BYTES: u64 = 16 << 20;
/// Most `tftp.kernel_bytes` may be.
const MAX_TFTP_KERNEL_BYTES: u64 = 1 << 30;

/// `tftp.kernel_files`, checked: names under the TFTP root (no absolute paths, no `..`), or
/// by default the `[boot]` bootloaders that are TFTP names (not URLs).
fn kernel_files(
    listed: Option<&[String]>,
    boot: &crate::model::boot::wire::Boot,
) -> Result<Vec<String>, (String, String)> {
    let Some(listed) = listed else {
        // Each key as `[boot]` sets it, else its built-in default (Debian's iPXE builds).
        let d = crate::model::boot::BootSettings::defaults();
        let mut names: Vec<String> = [
            boot.bios.as_ref().or(d.bios.as_ref()),
            boot.uefi_x64.as_ref().or(d.uefi_x64.as_ref()),
            boot.uefi_x86.as_ref().or(d.uefi_x86.as_ref()),
            boot.uefi_arm64.as_ref().or(d.uefi_arm64.as_ref()),
        ]
        .into_iter()
        .flatten()
        .filter(|n| !n.contains("://"))
        .map(|n| n.trim_start_matches('/').to_owned())
        .filter(|n| {
            !n.is_empty()
                && std::path::Path::new(n)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
        })
        .collect();
        names.sort();
        names.dedup();
        return Ok(names);
    };
    let mut names = Vec::with_capacity(listed.len());
    for (i, n) in listed.iter().enumerate() {
        let key = format!("tftp.kernel_files[{i}]");
        let clean = n.trim_start_matches('/');
        if clean.is_empty() {
            return Err((key, "is empty".to_owned()));
        }
        if std::path::Path::new(clean)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err((
                key,
                format!("{n:?} must be a plain name under tftp.root (no `..` or `.`)"),
            ));
        }
        names.push(clean.to_owned());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The validated `[http]` service settings.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Image folder (canonical once loaded).
    pub root: Option<PathBuf>,
    /// Config templates folder (canonical once loaded).
    pub configs: Option<PathBuf>,
    /// TCP port.
    pub port: u16,
    /// Transport.
    pub backend: HttpBackend,
    /// io_uring workers.
    pub workers: usize,
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections per client address at most.
    pub max_per_client: u32,
    /// Seconds to send a request head.
    pub header_timeout_s: u64,
    /// Seconds a kept-alive connection may idle.
    pub idle_timeout_s: u64,
    /// Seconds a response may stall.
    pub send_timeout_s: u64,
    /// Seconds a boot's config window stays open at most (`http.config_ttl_s`).
    pub config_ttl_s: u64,
    /// `http.origin`: where profile files missing under `root` are fetched from.
    pub origin: Option<origin::OriginConfig>,
    /// `http.tls_cert`, `http.tls_key`, `http.tls_port`: HTTPS beside HTTP.
    pub tls: Option<HttpsConfig>,
}

/// HTTPS for boot clients, on its own port beside HTTP's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsConfig {
    /// The certificate and key files (re-read on every reload).
    pub files: secrets::tls::ServerTls,
    /// TCP port.
    pub port: u16,
    /// `http.tls_kernel`: sessions go to the kernel's TLS (kTLS) where it has it.
    pub kernel: bool,
}

/// `[admin]`, validated: what the admin API serves on and whom it lets in.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Admin server address.
    pub listen: SocketAddr,
    /// Networks allowed to reach the admin server; empty means everyone.
    pub allow: Vec<IpNet>,
    /// `admin.token_file`: the bearer token control calls need (checked at load: mode 0600
    /// or stricter, owned by the daemon's user, not empty). Without it, control is for
    /// loopback peers only.
    pub token_file: Option<PathBuf>,
    /// `admin.tls_cert`, `admin.tls_key`, `admin.client_ca`: TLS for the admin server.
    pub tls: Option<secrets::tls::ServerTls>,
    /// `admin.max_event_streams`: concurrent SSE streams served at most (default 32).
    pub max_event_streams: usize,
}

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// File the config was read from.
    pub path: PathBuf,
    /// Log filter.
    pub log: String,
    /// How log lines are written (`daemon.log_format`).
    pub log_format: LogFormat,
    /// Bytes of boot history kept under `state_dir/history` (`daemon.history_mb`); 0: none.
    pub history_bytes: u64,
    /// Provisioning-network interfaces.
    pub interfaces: Vec<String>,
    /// Whether to answer IPv6 router solicitations on them (`fabric.router_advertisements`).
    pub router_advertisements: bool,
    /// `[admin]`: the admin API.
    pub admin: AdminConfig,
    /// XDP attach policy.
    pub xdp_mode: XdpModeSetting,
    /// Whether the XDP program answers reserved hosts' DHCP requests (`xdp.dhcp_fast_path`).
    pub xdp_dhcp_fast_path: bool,
    /// DHCP packets per second one relay may pass to userspace (`xdp.relay_rate_limit`).
    pub xdp_relay_rate_limit: u32,
    /// Ports the TFTP service uses for transfers.
    pub tftp_transfer_ports: PortRange,
    /// The TFTP service, when `tftp.root` is set.
    pub tftp: Option<TftpConfig>,
    /// The host inventory (empty when the config names none), with the admin API's changes
    /// (`state_dir/api-inventory.json`) applied.
    pub inventory: Inventory,
    /// The operator's inventory file (`daemon.inventory`, resolved), if any.
    pub inventory_file: Option<PathBuf>,
    /// Folder for durable state.
    pub state_dir: PathBuf,
    /// The DHCP server, when configured and enabled.
    pub dhcp: Option<DhcpConfig>,
    /// `[dhcp6]`, absent when DHCPv6 is off.
    pub dhcp6: Option<Dhcp6Config>,
    /// The HTTP server, when configured and enabled.
    pub http: Option<HttpConfig>,
    /// Global boot settings (built-in defaults under `[boot]`).
    pub boot: BootSettings,
    /// The reboot scheduler's settings (`[scheduler]`).
    pub scheduler: SchedulerConfig,
    /// `[[webhooks]]`: receivers of the event log.
    pub webhooks: Vec<webhooks::WebhookConfig>,
    /// `[cluster]`: the etcd cluster this fabric joins (`None`: standalone).
    pub cluster: Option<cluster::ClusterConfig>,
    /// `[images.<name>]`: the OS images the fabric keeps (stored under `http.root`).
    pub images: Vec<images::ImageConfig>,
    /// The config templates of `http.configs`, compiled ([`Templates::compile`]) and
    /// rendered for every host of the inventory at load; empty without `http.configs`.
    pub templates: Arc<Templates>,
}

/// `[scheduler]`, validated: plain values, defaults filled in. The reboot service turns them
/// into its scheduler's knobs (config sits below the services and does not know their types).
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// Cap on the egress a run plans with, bytes per second (`capacity_mbps`).
    pub capacity_bps: f64,
    /// What one booting host can take on its own, bytes per second (`per_host_mbps`).
    pub per_host_bps: f64,
    /// POST time assumed for a hardware model not seen yet, seconds.
    pub post_guess_s: f64,
    /// BMC operations in flight at once.
    pub max_bmc_operations: usize,
    /// Hosts per rack between reset and DHCP at once (inrush).
    pub max_posting_per_rack: usize,
    /// Attempts of a host's reset before it is given up on.
    pub reset_attempts: u32,
    /// Seconds before a failed reset is tried again (doubling per attempt).
    pub retry_backoff_s: f64,
    /// Seconds from reset to DHCP before a host counts as failed.
    pub post_timeout_s: f64,
    /// Seconds from DHCP to `booted` before a host counts as failed.
    pub boot_timeout_s: f64,
    /// How far ahead of need hosts are reset, seconds.
    pub lookahead_s: f64,
    /// Seconds a host at the admission gate sleeps before asking again.
    pub gate_retry_s: u32,
    /// Who waits at the admission gate (`scheduler.gate`).
    pub gate: GateMode,
    /// Fewest download slots, whatever the measured capacity says.
    pub min_slots: usize,
    /// Seconds an admitted host may take to start a download before its slot is revoked.
    pub admit_idle_s: f64,
}

impl SchedulerConfig {
    /// The admission gate's knobs: download slots start at the configured capacity over one
    /// host's rate, and a slot is held at most the boot timeout.
    pub fn gate_settings(&self) -> GateSettings {
        GateSettings {
            mode: self.gate,
            retry_s: self.gate_retry_s,
            slots: ((self.capacity_bps / self.per_host_bps).floor() as usize).clamp(1, 1 << 20),
            min_slots: self.min_slots,
            admit_idle_ms: (self.admit_idle_s * 1000.0) as u64,
            slot_timeout_ms: (self.boot_timeout_s * 1000.0) as u64,
        }
    }

    fn from_wire(w: &wire::Scheduler) -> Result<Self, KeyError> {
        let positive = |v: Option<f64>, default: f64, key: &str| -> Result<f64, KeyError> {
            match v {
                Some(x) if !x.is_finite() || x <= 0.0 => Err(KeyError::new(
                    format!("scheduler.{key}"),
                    format!("{x} is not a positive number"),
                )),
                Some(x) => Ok(x),
                None => Ok(default),
            }
        };
        let at_least_one = |v: Option<usize>, default: usize, key: &str| match v {
            Some(0) => Err(KeyError::new(
                format!("scheduler.{key}"),
                "must be at least 1".to_owned(),
            )),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let lookahead = match w.lookahead_s {
            Some(x) if !x.is_finite() || x < 0.0 => {
                return Err(KeyError::new(
                    "scheduler.lookahead_s",
                    format!("{x} is not zero or a positive number"),
                ))
            }
            Some(x) => x,
            None => 120.0,
        };
        let mbit = 1e6 / 8.0;
        let capacity_bps = positive(w.capacity_mbps, 10_000.0, "capacity_mbps")? * mbit;
        let per_host_bps = positive(w.per_host_mbps, 1_000.0, "per_host_mbps")? * mbit;
        let post_guess_s = positive(w.post_guess_s, 180.0, "post_guess_s")?;
        let max_bmc_operations = at_least_one(w.max_bmc_operations, 16, "max_bmc_operations")?;
        let max_posting_per_rack =
            at_least_one(w.max_posting_per_rack, 10, "max_posting_per_rack")?;
        let reset_attempts =
            at_least_one(w.reset_attempts.map(|n| n as usize), 3, "reset_attempts")? as u32;
        let retry_backoff_s = positive(w.retry_backoff_s, 30.0, "retry_backoff_s")?;
        let post_timeout_s = positive(w.post_timeout_s, 900.0, "post_timeout_s")?;
        let boot_timeout_s = positive(w.boot_timeout_s, 1800.0, "boot_timeout_s")?;
        let gate_retry_s = match w.gate_retry_s {
            Some(0) => {
                return Err(KeyError::new(
                    "scheduler.gate_retry_s",
                    "must be at least 1",
                ))
            }
            Some(n) => n.min(300),
            None => crate::model::gate::DEFAULT_RETRY_S,
        };
        let gate = match &w.gate {
            Some(g) => g
                .parse::<GateMode>()
                .map_err(|e| KeyError::new("scheduler.gate", e))?,
            None => GateMode::default(),
        };
        let min_slots = at_least_one(w.min_slots, 1, "min_slots")?;
        let admit_idle_s = positive(w.admit_idle_s, 30.0, "admit_idle_s")?;
        Ok(Self {
            gate,
            min_slots,
            admit_idle_s,
            capacity_bps,
            per_host_bps,
            post_guess_s,
            max_bmc_operations,
            max_posting_per_rack,
            reset_attempts,
            retry_backoff_s,
            post_timeout_s,
            boot_timeout_s,
            lookahead_s: lookahead,
            gate_retry_s,
        })
    }
}

impl Config {
    /// The names iPXE scripts are served under: `boot.ipxe_script` and every profile's
    /// override (TFTP and HTTP render them per host).
    pub fn ipxe_script_names(&self) -> Vec<String> {
        crate::model::snapshot::script_names(&self.boot, &self.inventory)
    }

    /// The boot settings that mark Secure Boot on: the global ones (with no profile) and
    /// each profile's over them, with who says so.
    pub fn secure_boot_layers(&self) -> Vec<(String, BootSettings, Option<&Profile>)> {
        let global = std::iter::once(("boot".to_owned(), self.boot.clone(), None));
        let profiles = self.inventory.profiles().values().map(|p| {
            (
                format!("profile {}", p.name),
                p.boot.over(&self.boot),
                Some(p),
            )
        });
        global
            .chain(profiles)
            .filter(|(_, b, _)| b.secure())
            .collect()
    }

    /// Where profile files (kernels, initrds) are served from, in lookup order: the HTTP
    /// image root, then the TFTP root.
    pub fn image_roots(&self) -> Vec<&Path> {
        self.http
            .as_ref()
            .and_then(|h| h.root.as_deref())
            .into_iter()
            .chain(self.tftp.as_ref().map(|t| t.root.as_path()))
            .collect()
    }

    /// Reads, parses and validates the config file at `path` and the files it names, and
    /// resolves the profiles' images to their versions' files.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::load_unresolved(path)?;
        config.resolve_images(path)?;
        Ok(config)
    }

    /// [`Config::load`] without resolving profiles' images: what `bootfabric image` works
    /// from (an image a profile names may have no version yet).
    pub fn load_unresolved(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let wire: wire::ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        // The effective inventory: the operator's file with the admin API's changes applied
        // (`config::overlay`), so start-up, `check` and every reload see the same one.
        let state_dir = base.join(
            wire.daemon
                .state_dir
                .as_deref()
                .unwrap_or(DEFAULT_STATE_DIR),
        );
        let inventory_file = wire.daemon.inventory.as_ref().map(|rel| base.join(rel));
        // In cluster mode, the local copy of etcd's overlay (`cluster::inventory`).
        let overlay_path = overlay::Overlay::path_for(&state_dir, wire.cluster.is_some());
        let inventory = overlay::load_effective(inventory_file.as_deref(), &overlay_path).map_err(
            |e| match e {
                overlay::EffectiveError::Inventory(e) => ConfigError::Inventory(e),
                overlay::EffectiveError::Overlay(e) => ConfigError::Overlay(e),
            },
        )?;
        let tftp_root = wire.tftp.root.clone();
        let http_dirs = wire
            .http
            .as_ref()
            .map(|h| (h.root.clone(), h.configs.clone()));
        let mut config = Self::from_wire(path, wire, inventory)?;
        config.inventory_file = inventory_file;
        // The one check that needs the file system: the TFTP root must exist.
        if let (Some(rel), Some(t)) = (tftp_root, config.tftp.as_mut()) {
            let full = base.join(&rel);
            t.root = full.canonicalize().map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                key: "tftp.root".to_owned(),
                reason: format!("{}: {e}", full.display()),
            })?;
            if !t.root.is_dir() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    key: "tftp.root".to_owned(),
                    reason: format!("{} is not a folder", t.root.display()),
                });
            }
        }
        if let (Some((root, configs)), Some(h)) = (http_dirs, config.http.as_mut()) {
            for (rel, slot, key) in [
                (root, &mut h.root, "http.root"),
                (configs, &mut h.configs, "http.configs"),
            ] {
                let Some(rel) = rel else { continue };
                let full = base.join(&rel);
                let canonical = full.canonicalize().map_err(|e| ConfigError::Invalid {
                    path: path.to_owned(),
                    key: key.to_owned(),
                    reason: format!("{}: {e}", full.display()),
                })?;
                if !canonical.is_dir() {
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        key: key.to_owned(),
                        reason: format!("{} is not a folder", canonical.display()),
                    });
                }
                *slot = Some(canonical);
            }
            // Read when the service starts (a missing file is named there).
            if let Some(ca) = h.origin.as_mut().and_then(|o| o.ca.as_mut()) {
                *ca = base.join(&*ca);
            }
        }
        if let Some(tls) = config.http.as_mut().and_then(|h| h.tls.as_mut()) {
            tls.files.cert = base.join(&tls.files.cert);
            tls.files.key = base.join(&tls.files.key);
            // Read now, so that a bad certificate or key is refused with its key.
            secrets::tls::server_config(&tls.files).map_err(|KeyError { key, reason }| {
                ConfigError::Invalid {
                    path: path.to_owned(),
                    key,
                    reason,
                }
            })?;
        }
        // Templates carry secrets and are served rendered, to their host only: inside an image
        // root they would also be served raw, to anyone (and an image root inside them would
        // make its files config templates).
        if let Some(configs) = config.http.as_ref().and_then(|h| h.configs.as_deref()) {
            let roots = [
                (
                    config.http.as_ref().and_then(|h| h.root.as_deref()),
                    "http.root",
                ),
                (config.tftp.as_ref().map(|t| t.root.as_path()), "tftp.root"),
            ];
            for (root, key) in roots {
                if let Some(root) = root.filter(|r| folders_overlap(r, configs)) {
                    return Err(ConfigError::Invalid {
                        path: path.to_owned(),
                        key: "http.configs".to_owned(),
                        reason: format!(
                            "{} overlaps {key} ({}): neither may lie inside the other, or raw templates would be served",
                            configs.display(),
                            root.display()
                        ),
                    });
                }
            }
        }
        if config.state_dir.is_relative() {
            config.state_dir = base.join(&config.state_dir);
        }
        config.load_admin_files(path, base)?;
        config.load_webhook_files(path, base)?;
        config.load_cluster_files(path, base)?;
        config.load_image_files(path, base)?;
        config.load_templates(path)?;
        Ok(config)
    }

    /// Where the images' records are (`state_dir/images`) and where they are stored
    /// (`http.root/images`), when images are configured.
    pub fn image_store(&self) -> Option<crate::model::images::Store> {
        let root = self.http.as_ref()?.root.as_deref()?;
        Some(crate::model::images::Store::new(root, &self.state_dir))
    }

    /// Resolves the profiles' images from their records, so that every profile naming one
    /// gets that version's files.
    fn resolve_images(&mut self, path: &Path) -> Result<(), ConfigError> {
        let names: Vec<String> = self.images.iter().map(|i| i.name.clone()).collect();
        let catalog =
            crate::model::images::Catalog::load(&self.state_dir, names.iter().map(String::as_str));
        self.inventory
            .resolve_images(&catalog, &names)
            .map_err(|errors| {
                // One key per error would need a list: the first key, every reason.
                let key = errors.first().map(|(k, _)| k.clone()).unwrap_or_default();
                let reason = errors
                    .iter()
                    .enumerate()
                    .map(|(i, (k, r))| match i {
                        0 => r.clone(),
                        _ => format!("{k}: {r}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                ConfigError::Invalid {
                    path: self
                        .inventory_file
                        .clone()
                        .unwrap_or_else(|| path.to_owned()),
                    key,
                    reason,
                }
            })
    }

    /// Resolves `[images]`' key and CA files against the config's folder and parses the
    /// keys, so that a file that is not an OpenPGP key refuses the load.
    fn load_image_files(&mut self, path: &Path, base: &Path) -> Result<(), ConfigError> {
        for image in &mut self.images {
            let invalid = |reason: String| ConfigError::Invalid {
                path: path.to_owned(),
                key: format!("images.{}.keys", image.name),
                reason,
            };
            image.ca_file = base.join(&image.ca_file);
            let mut ring: Option<crate::model::images::verify::Keyring> = None;
            for file in &mut image.key_files {
                *file = base.join(&*file);
                let bytes = std::fs::read(&*file)
                    .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
                let keys = crate::model::images::verify::Keyring::parse(
                    &bytes,
                    &file.display().to_string(),
                )
                .map_err(|e| invalid(e.to_string()))?;
                match ring.as_mut() {
                    Some(r) => r.extend(keys),
                    None => ring = Some(keys),
                }
            }
            image.keys = ring.map(|r| images::Keys(Arc::new(r)));
        }
        Ok(())
    }

    /// Compiles the config templates and renders every one for every host (and every
    /// host's cmdlines), so that a mistake refuses the load (start, reload, `check`) rather
    /// than a boot. The server address a host would reach is not known here: `0.0.0.0`.
    fn load_templates(&mut self, path: &Path) -> Result<(), ConfigError> {
        let failed = |errors: Vec<TemplateError>| ConfigError::Templates {
            path: path.to_owned(),
            errors: TemplateErrors(errors),
        };
        let dir = self.http.as_ref().and_then(|h| h.configs.as_deref());
        let templates = Templates::compile(dir).map_err(|e| failed(vec![e]))?;
        templates
            .verify(&self.inventory, &self.boot, |_| Ipv4Addr::UNSPECIFIED)
            .map_err(|e| failed(e.0))?;
        self.templates = Arc::new(templates);
        Ok(())
    }

    /// Resolves the admin server's files against the config's folder and checks them: the
    /// token file's mode, owner and contents, and that the TLS files make a server.
    fn load_admin_files(&mut self, path: &Path, base: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        if let Some(file) = self.admin.token_file.as_mut() {
            *file = base.join(&*file);
            secrets::token::load(file).map_err(|e| invalid("admin.token_file", e.to_string()))?;
        }
        if let Some(tls) = self.admin.tls.as_mut() {
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
            if let Some(ca) = tls.client_ca.as_mut() {
                *ca = base.join(&*ca);
            }
            secrets::tls::server_config(tls)
                .map_err(|KeyError { key, reason }| invalid(&key, reason))?;
        }
        Ok(())
    }

    /// Resolves each webhook's files against the config's folder and checks its secret file
    /// as the admin token file is checked (mode, owner, contents).
    fn load_webhook_files(&mut self, path: &Path, base: &Path) -> Result<(), ConfigError> {
        for (i, hook) in self.webhooks.iter_mut().enumerate() {
            hook.secret_file = base.join(&hook.secret_file);
            secrets::token::load_secret(&hook.secret_file).map_err(|e| ConfigError::Invalid {
                path: path.to_owned(),
                key: format!("webhooks[{i}].secret_file"),
                reason: e.to_string(),
            })?;
            if let Some(crate::redfish::TlsPolicy::CaFile(ca)) = hook.tls.as_mut() {
                *ca = base.join(&*ca);
            }
        }
        Ok(())
    }

    /// Resolves `[cluster]`'s TLS files against the config's folder and checks that they
    /// read: the CA holds PEM certificates, the client key is private (as the admin token).
    fn load_cluster_files(&mut self, path: &Path, base: &Path) -> Result<(), ConfigError> {
        let Some(tls) = self.cluster.as_mut().and_then(|c| c.tls.as_mut()) else {
            return Ok(());
        };
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        tls.ca = base.join(&tls.ca);
        let certs = |file: &Path| {
            use rustls_pki_types::{pem::PemObject, CertificateDer};
            CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("{}: {e}", file.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", file.display()))
                .and_then(|c| match c.is_empty() {
                    true => Err(format!("{} holds no PEM certificate", file.display())),
                    false => Ok(()),
                })
        };
        certs(&tls.ca).map_err(|r| invalid("cluster.ca_file", r))?;
        if let Some((cert, key)) = tls.identity.as_mut() {
            *cert = base.join(&*cert);
            *key = base.join(&*key);
            certs(cert).map_err(|r| invalid("cluster.cert_file", r))?;
            secrets::token::read_private(key)
                .map_err(|e| invalid("cluster.key_file", e.to_string()))?;
        }
        Ok(())
    }

    /// Validates a parsed config. `path` is used in error messages only.
    pub fn from_wire(
        path: &Path,
        wire: wire::ConfigFile,
        inventory: Inventory,
    ) -> Result<Self, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };

        let log = wire.daemon.log.unwrap_or_else(|| "info".to_owned());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            return Err(invalid("daemon.log", format!("not a log filter: {e}")));
        }
        let log_format = match wire.daemon.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "daemon.log_format",
                    format!("{other:?} is not a log format: text or json"),
                ))
            }
        };
        let history_mb = wire.daemon.history_mb.unwrap_or(DEFAULT_HISTORY_MB);
        if history_mb > MAX_HISTORY_MB {
            return Err(invalid(
                "daemon.history_mb",
                format!("{history_mb} is more than {MAX_HISTORY_MB} (MB of boot history)"),
            ));
        }

        let interfaces = wire.fabric.interfaces.unwrap_or_default();
        for (i, name) in interfaces.iter().enumerate() {
            check_interface_name(name)
                .map_err(|r| invalid(&format!("fabric.interfaces[{i}]"), r.to_string()))?;
            if interfaces[..i].contains(name) {
                return Err(invalid(
                    &format!("fabric.interfaces[{i}]"),
                    format!("interface {name:?} is listed twice"),
                ));
            }
        }

        let router_advertisements = match wire.fabric.router_advertisements.as_deref() {
            None | Some("auto") => true,
            Some("off") => false,
            Some(other) => {
                return Err(invalid(
                    "fabric.router_advertisements",
                    format!("{other:?} is not one of \"auto\", \"off\""),
                ))
            }
        };

        let listen = wire
            .admin
            .listen
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
        let admin_listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "admin.listen",
                format!("{listen:?} is not an IP:PORT address (e.g. \"127.0.0.1:9370\")"),
            )
        })?;
        let admin_allow = wire
            .admin
            .allow
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                parse_cidr(s).map_err(|r| invalid(&format!("admin.allow[{i}]"), r.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let admin_token_file = wire.admin.token_file.as_ref().map(PathBuf::from);
        if admin_token_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid("admin.token_file", "is empty".to_owned()));
        }
        let admin_tls = match (&wire.admin.tls_cert, &wire.admin.tls_key) {
            (Some(cert), Some(key)) => Some(secrets::tls::ServerTls {
                section: "admin",
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
                client_ca: wire.admin.client_ca.as_ref().map(PathBuf::from),
                firmware: false,
            }),
            (Some(_), None) => {
                return Err(invalid(
                    "admin.tls_key",
                    "missing: admin.tls_cert needs its private key".to_owned(),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "admin.tls_cert",
                    "missing: admin.tls_key needs its certificate".to_owned(),
                ))
            }
            (None, None) if wire.admin.client_ca.is_some() => {
                return Err(invalid(
                    "admin.client_ca",
                    "client certificates need TLS: set admin.tls_cert and admin.tls_key".to_owned(),
                ))
            }
            (None, None) => None,
        };

        let xdp_mode = match wire.xdp.mode.as_deref().unwrap_or("auto") {
            "auto" => XdpModeSetting::Auto,
            "native" => XdpModeSetting::Native,
            "generic" => XdpModeSetting::Generic,
            "off" => XdpModeSetting::Off,
            other => {
                return Err(invalid(
                    "xdp.mode",
                    format!("{other:?} is not one of \"auto\", \"native\", \"generic\", \"off\""),
                ))
            }
        };
        if interfaces.is_empty()
            && matches!(xdp_mode, XdpModeSetting::Native | XdpModeSetting::Generic)
        {
            return Err(invalid(
                "xdp.mode",
                format!("mode {xdp_mode} needs at least one interface in fabric.interfaces"),
            ));
        }

        let xdp_dhcp_fast_path = wire.xdp.dhcp_fast_path.unwrap_or(true);
        let xdp_relay_rate_limit = wire.xdp.relay_rate_limit.unwrap_or(20_000);
        if xdp_relay_rate_limit == 0 {
            return Err(invalid(
                "xdp.relay_rate_limit",
                "must be at least 1".to_owned(),
            ));
        }

        let tftp_transfer_ports = match &wire.tftp.transfer_ports {
            Some(s) => {
                parse_port_range(s).map_err(|r| invalid("tftp.transfer_ports", r.to_string()))?
            }
            None => DEFAULT_TFTP_TRANSFER_PORTS,
        };

        let tftp = match &wire.tftp.root {
            None => None,
            Some(root) => {
                let mtu = wire.tftp.mtu.unwrap_or(1500);
                if mtu < 576 {
                    return Err(invalid(
                        "tftp.mtu",
                        format!("{mtu} is below the IPv4 minimum of 576"),
                    ));
                }
                let max_windowsize = wire.tftp.max_windowsize.unwrap_or(64);
                if max_windowsize == 0 {
                    return Err(invalid(
                        "tftp.max_windowsize",
                        "must be at least 1".to_owned(),
                    ));
                }
                // Caps against one client holding the server (issue 14). The defaults let
                // a boot storm of thousands of hosts through while one host gets no more
                // than firmware and bootloaders ever use (one transfer at a time, a size
                // probe, GRUB's module loads in a row).
                let t = &wire.tftp;
                let ports = u32::from(tftp_transfer_ports.last - tftp_transfer_ports.first) + 1;
                let at_least_one = |key: &str, v: Option<u32>, default: u32| match v {
                    Some(0) => Err(invalid(key, "must be at least 1".to_owned())),
                    v => Ok(v.unwrap_or(default)),
                };
                let max_transfers = at_least_one("tftp.max_transfers", t.max_transfers, ports)?;
                if max_transfers > ports {
                    return Err(invalid(
                        "tftp.max_transfers",
                        format!("{max_transfers} is more than the {ports} ports of tftp.transfer_ports (one per transfer)"),
                    ));
                }
                let max_timeout_s = match t.max_timeout_s.unwrap_or(5) {
                    v @ 1..=255 => v as u8,
                    v => {
                        return Err(invalid(
                            "tftp.max_timeout_s",
                            format!("{v} is outside RFC 2349's 1-255 seconds"),
                        ))
                    }
                };
                Some(TftpConfig {
                    root: PathBuf::from(root),
                    max_windowsize,
                    max_retries: wire.tftp.max_retries.unwrap_or(5).clamp(1, 100),
                    mtu,
                    max_transfers,
                    max_transfers_per_client: at_least_one(
                        "tftp.max_transfers_per_client",
                        t.max_transfers_per_client,
                        8,
                    )?,
                    requests_per_second: at_least_one(
                        "tftp.requests_per_second",
                        t.requests_per_second,
                        5000,
                    )?,
                    requests_per_second_per_client: at_least_one(
                        "tftp.requests_per_second_per_client",
                        t.requests_per_second_per_client,
                        100,
                    )?,
                    max_timeout_s,
                    max_transfer: std::time::Duration::from_secs(u64::from(at_least_one(
                        "tftp.max_transfer_s",
                        t.max_transfer_s,
                        600,
                    )?)),
                    netascii_budget_bytes: t.netascii_budget_bytes.unwrap_or(64 << 20),
                    kernel_files: kernel_files(t.kernel_files.as_deref(), &wire.boot)
                        .map_err(|(key, reason)| invalid(&key, reason))?,
                    kernel_bytes: match t.kernel_bytes.unwrap_or(DEFAULT_TFTP_KERNEL_BYTES) {
                        v if v > MAX_TFTP_KERNEL_BYTES => {
                            return Err(invalid(
                                "tftp.kernel_bytes",
                                format!(
                                    "{v} is more than {MAX_TFTP_KERNEL_BYTES} (1 GiB): the kernel path is for bootloaders, not images"
                                ),
                            ))
                        }
                        v => v,
                    },
                })
            }
        };
        let http = match &wire.http {
            Some(h) if h.enabled.unwrap_or(true) => {
                let backend = match h.backend.as_deref().unwrap_or("auto") {
                    "auto" => HttpBackend::Auto,
                    "io_uring" => HttpBackend::IoUring,
                    "epoll" => HttpBackend::Epoll,
                    other => {
                        return Err(invalid(
                            "http.backend",
                            format!("{other:?} is not one of auto, io_uring, epoll"),
                        ))
                    }
                };
                let port = h.port.unwrap_or(80);
                if port == 0 {
                    return Err(invalid("http.port", "must not be 0".to_owned()));
                }
                let positive = |v: Option<u64>, default: u64, key: &str| match v {
                    Some(0) => Err(invalid(key, "must be at least 1".to_owned())),
                    Some(v) => Ok(v),
                    None => Ok(default),
                };
                let max_connections = match h.max_connections {
                    Some(0) => {
                        return Err(invalid(
                            "http.max_connections",
                            "must be at least 1".to_owned(),
                        ))
                    }
                    Some(v) => v,
                    None => 10_000,
                };
                let max_per_client = match h.max_connections_per_client {
                    Some(0) => {
                        return Err(invalid(
                            "http.max_connections_per_client",
                            "must be at least 1".to_owned(),
                        ))
                    }
                    Some(v) => v,
                    None => 64,
                };
                Some(HttpConfig {
                    root: h.root.as_ref().map(PathBuf::from),
                    configs: h.configs.as_ref().map(PathBuf::from),
                    port,
                    backend,
                    workers: h.workers.unwrap_or(0),
                    max_connections,
                    max_per_client,
                    header_timeout_s: positive(h.header_timeout_s, 10, "http.header_timeout_s")?,
                    idle_timeout_s: positive(h.idle_timeout_s, 60, "http.idle_timeout_s")?,
                    send_timeout_s: positive(h.send_timeout_s, 60, "http.send_timeout_s")?,
                    config_ttl_s: match h.config_ttl_s {
                        Some(v) if v > MAX_CONFIG_TTL_S => {
                            return Err(invalid(
                                "http.config_ttl_s",
                                format!("{v} is more than a day ({MAX_CONFIG_TTL_S})"),
                            ))
                        }
                        v => positive(v, DEFAULT_CONFIG_TTL_S, "http.config_ttl_s")?,
                    },
                    origin: origin::from_wire(
                        h.origin.as_deref(),
                        h.origin_max_bytes,
                        h.origin_timeout_s,
                        h.origin_ca.as_deref(),
                        h.root.is_some(),
                    )
                    .map_err(|KeyError { key, reason }| invalid(&key, reason))?,
                    tls: match (&h.tls_cert, &h.tls_key) {
                        (Some(cert), Some(key)) => {
                            let tls_port = h.tls_port.unwrap_or(443);
                            if tls_port == 0 || tls_port == port {
                                return Err(invalid(
                                    "http.tls_port",
                                    format!("{tls_port}: give a port other than 0 and http.port"),
                                ));
                            }
                            Some(HttpsConfig {
                                files: secrets::tls::ServerTls {
                                    section: "http",
                                    cert: PathBuf::from(cert),
                                    key: PathBuf::from(key),
                                    client_ca: None,
                                    firmware: true,
                                },
                                port: tls_port,
                                kernel: h.tls_kernel.unwrap_or(true),
                            })
                        }
                        (Some(_), None) => {
                            return Err(invalid(
                                "http.tls_key",
                                "missing: http.tls_cert needs its private key".to_owned(),
                            ))
                        }
                        (None, Some(_)) => {
                            return Err(invalid(
                                "http.tls_cert",
                                "missing: http.tls_key needs its certificate".to_owned(),
                            ))
                        }
                        (None, None) if h.tls_port.is_some() => {
                            return Err(invalid(
                                "http.tls_port",
                                "set without http.tls_cert and http.tls_key".to_owned(),
                            ))
                        }
                        (None, None) if h.tls_kernel.is_some() => {
                            return Err(invalid(
                                "http.tls_kernel",
                                "set without http.tls_cert and http.tls_key".to_owned(),
                            ))
                        }
                        (None, None) => None,
                    },
                })
            }
            _ => None,
        };
        let state_dir = PathBuf::from(
            wire.daemon
                .state_dir
                .clone()
                .unwrap_or_else(|| DEFAULT_STATE_DIR.to_owned()),
        );
        let keyed = |KeyError { key, reason }: KeyError| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        let dhcp = match &wire.dhcp {
            Some(d) if d.enabled.unwrap_or(true) => {
                let d = DhcpConfig::from_wire(d).map_err(keyed)?;
                for (i, s) in d.subnets.iter().enumerate() {
                    if let Some(ifname) = &s.interface {
                        if !interfaces.contains(ifname) {
                            return Err(invalid(
                                &format!("dhcp.subnets[{i}].interface"),
                                format!("{ifname:?} is not in fabric.interfaces"),
                            ));
                        }
                    }
                }
                if d.subnets.is_empty() && d.mode == DhcpMode::Server {
                    return Err(invalid(
                        "dhcp.subnets",
                        "[dhcp] has no [[dhcp.subnets]]".to_owned(),
                    ));
                }
                Some(d)
            }
            _ => None,
        };
        let dhcp6 = match &wire.dhcp6 {
            Some(d) if d.enabled.unwrap_or(true) => {
                Some(Dhcp6Config::from_wire(d, &interfaces).map_err(keyed)?)
            }
            _ => None,
        };
        let boot = BootSettings::from_wire(&wire.boot, "boot")
            .map_err(keyed)?
            .over(&BootSettings::defaults());
        let scheduler = SchedulerConfig::from_wire(&wire.scheduler).map_err(keyed)?;
        let webhooks = webhooks::from_wire(&wire.webhooks).map_err(keyed)?;
        let cluster = wire
            .cluster
            .as_ref()
            .map(cluster::from_wire)
            .transpose()
            .map_err(keyed)?;
        let images = images::from_wire(&wire.images).map_err(keyed)?;
        if !images.is_empty() && http.as_ref().and_then(|h| h.root.as_ref()).is_none() {
            return Err(invalid(
                "images",
                "images are stored and served under http.root: set it".to_owned(),
            ));
        }
        let max_event_streams = match wire.admin.max_event_streams {
            None => 32,
            Some(n @ 1..=1024) => n,
            Some(n) => {
                return Err(invalid(
                    "admin.max_event_streams",
                    format!("{n}: give 1 to 1024"),
                ))
            }
        };

        Ok(Self {
            path: path.to_owned(),
            log,
            log_format,
            history_bytes: history_mb * 1024 * 1024,
            interfaces,
            router_advertisements,
            admin: AdminConfig {
                listen: admin_listen,
                allow: admin_allow,
                token_file: admin_token_file,
                tls: admin_tls,
                max_event_streams,
            },
            xdp_mode,
            xdp_dhcp_fast_path,
            xdp_relay_rate_limit,
            tftp_transfer_ports,
            tftp,
            inventory,
            inventory_file: None,
            state_dir,
            dhcp,
            dhcp6,
            http,
            boot,
            scheduler,
            webhooks,
            cluster,
            images,
            templates: Arc::default(),
        })
    }
}

/// Why a name is not a Linux interface name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InterfaceNameError {
    /// Empty, or longer than IFNAMSIZ allows.
    #[error("{0:?} is not 1 to 15 characters long")]
    Length(String),
    /// `.`, `..`, or holding `/`, `:` or whitespace.
    #[error("{0:?} is not a valid interface name")]
    Invalid(String),
}

/// Linux interface names: 1 to 15 bytes, no `/`, whitespace or `:` (IFNAMSIZ and dev_valid_name).
fn check_interface_name(name: &str) -> Result<(), InterfaceNameError> {
    if name.is_empty() || name.len() > 15 {
        return Err(InterfaceNameError::Length(name.to_owned()));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(InterfaceNameError::Invalid(name.to_owned()));
    }
    Ok(())
}

/// Why a value is not a CIDR.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// No `/PREFIX`.
    #[error("{0:?} is not a CIDR: it has no /PREFIX (e.g. \"10.0.0.0/24\")")]
    NoPrefix(String),
    /// The part before the `/` is not an address.
    #[error("{cidr:?} is not a CIDR: {addr:?} is not an IP address")]
    Address {
        /// The value.
        cidr: String,
        /// Its address part.
        addr: String,
    },
    /// The prefix is not a number up to the address's width.
    #[error("{cidr:?} is not a CIDR: prefix length must be 0 to {max}")]
    Prefix {
        /// The value.
        cidr: String,
        /// The widest prefix of its address family.
        max: u8,
    },
}

/// Parses `ADDR/PREFIX` (IPv4 or IPv6). A bare address is refused, so that `10.0.0.0`
/// cannot be read as either a host or a network by mistake.
pub fn parse_cidr(s: &str) -> Result<IpNet, CidrError> {
    let Some((addr, prefix)) = s.split_once('/') else {
        return Err(CidrError::NoPrefix(s.to_owned()));
    };
    let ip: std::net::IpAddr = addr.parse().map_err(|_| CidrError::Address {
        cidr: s.to_owned(),
        addr: addr.to_owned(),
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bad_prefix = || CidrError::Prefix {
        cidr: s.to_owned(),
        max,
    };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max)
        .ok_or_else(bad_prefix)?;
    // The prefix is within the family's width, which is all IpNet::new checks.
    IpNet::new(ip, prefix).map_err(|_| bad_prefix())
}

/// Why a value is not a transfer port range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// No `-`.
    #[error("{0:?} is not a port range FIRST-LAST (e.g. \"50000-50999\")")]
    NotARange(String),
    /// One end is not a port.
    #[error("{range:?}: {port:?} is not a port from 1 to 65535")]
    Port {
        /// The value.
        range: String,
        /// The end that is not a port.
        port: String,
    },
    /// FIRST above LAST.
    #[error("{0:?}: first port is above the last")]
    Reversed(String),
    /// It would take the servers' own ports.
    #[error("{0:?} overlaps the DHCP and TFTP server ports (67-69)")]
    ServerPorts(String),
}

/// Parses `FIRST-LAST` with `1 <= FIRST <= LAST <= 65535`.
pub fn parse_port_range(s: &str) -> Result<PortRange, PortRangeError> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| PortRangeError::NotARange(s.to_owned()))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| PortRangeError::Port {
                range: s.to_owned(),
                port: p.to_owned(),
            })
    };
    let (first, last) = (port(a)?, port(b)?);
    if first > last {
        return Err(PortRangeError::Reversed(s.to_owned()));
    }
    if first <= 69 && last >= 67 {
        return Err(PortRangeError::ServerPorts(s.to_owned()));
    }
    Ok(PortRange { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_values_say_what_and_why() {
        let says = |e: &dyn std::error::Error| e.to_string();
        let cidr = |s| parse_cidr(s).expect_err(s);
        assert_eq!(
            says(&cidr("10.0.0.0")),
            r#""10.0.0.0" is not a CIDR: it has no /PREFIX (e.g. "10.0.0.0/24")"#
        );
        assert_eq!(
            says(&cidr("10.0.0/8")),
            r#""10.0.0/8" is not a CIDR: "10.0.0" is not an IP address"#
        );
        assert_eq!(
            says(&cidr("fd00::/129")),
            r#""fd00::/129" is not a CIDR: prefix length must be 0 to 128"#
        );
        let ports = |s| parse_port_range(s).expect_err(s);
        assert_eq!(
            says(&ports("5000")),
            r#""5000" is not a port range FIRST-LAST (e.g. "50000-50999")"#
        );
        assert_eq!(
            says(&ports("1-x ")),
            r#""1-x ": "x " is not a port from 1 to 65535"#
        );
        assert_eq!(
            says(&ports("9-8")),
            r#""9-8": first port is above the last"#
        );
        assert_eq!(
            says(&ports("60-70")),
            r#""60-70" overlaps the DHCP and TFTP server ports (67-69)"#
        );
        let name = |s| check_interface_name(s).expect_err(s);
        assert_eq!(says(&name("")), r#""" is not 1 to 15 characters long"#);
        assert_eq!(says(&name("a:b")), r#""a:b" is not a valid interface name"#);
        let range = |s| AddrRange::parse(s).expect_err(s);
        assert_eq!(
            says(&range("10.0.0.1-x")),
            r#""10.0.0.1-x": "x" is not an IPv4 address"#
        );
        assert_eq!(
            says(&range("10.0.0.2-10.0.0.1")),
            r#""10.0.0.2-10.0.0.1": first address is above the last"#
        );
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let path = Path::new("test.toml");
        let wire: wire::ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Config::from_wire(path, wire, Inventory::default())
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("config was accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn scheduler_settings_have_defaults_and_bad_ones_name_the_key() {
        let c = parse("").expect("empty config");
        // (The download slots these make are the reboot service's: see its
        // `scheduler_config_makes_the_params`.)
        assert_eq!(c.scheduler.capacity_bps, 10_000.0 * 1e6 / 8.0);
        assert_eq!(c.scheduler.per_host_bps, 1_000.0 * 1e6 / 8.0);
        assert_eq!(c.scheduler.gate_retry_s, 3);
        assert_eq!(c.scheduler.gate, GateMode::RebootRuns);
        assert_eq!((c.scheduler.min_slots, c.scheduler.admit_idle_s), (1, 30.0));
        let c = parse("[scheduler]\ngate = \"always\"\nmin_slots = 4\nadmit_idle_s = 5\n")
            .expect("gate keys");
        assert_eq!(c.scheduler.gate, GateMode::Always);
        assert_eq!((c.scheduler.min_slots, c.scheduler.admit_idle_s), (4, 5.0));
        let c =
            parse("[scheduler]\ncapacity_mbps = 25000\nper_host_mbps = 2500\nlookahead_s = 0\n")
                .expect("scheduler");
        assert_eq!(c.scheduler.capacity_bps, 25_000.0 * 1e6 / 8.0);
        assert_eq!(c.scheduler.per_host_bps, 2_500.0 * 1e6 / 8.0);
        assert_eq!(c.scheduler.lookahead_s, 0.0);
        for (text, key) in [
            ("capacity_mbps = 0", "scheduler.capacity_mbps"),
            ("per_host_mbps = -1", "scheduler.per_host_mbps"),
            ("max_bmc_operations = 0", "scheduler.max_bmc_operations"),
            ("lookahead_s = -5", "scheduler.lookahead_s"),
            ("gate_retry_s = 0", "scheduler.gate_retry_s"),
            ("gate = \"sometimes\"", "scheduler.gate"),
            ("min_slots = 0", "scheduler.min_slots"),
            ("admit_idle_s = 0", "scheduler.admit_idle_s"),
        ] {
            let e = err(&format!("[scheduler]\n{text}\n"));
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(err("[scheduler]\nslots = 3\n").contains("slots"));
    }

    #[test]
    fn empty_config_gets_safe_defaults() {
        let c = parse("").expect("empty config is valid");
        assert_eq!(c.admin.listen, "127.0.0.1:9370".parse().expect("addr"));
        assert_eq!(c.xdp_mode, XdpModeSetting::Auto);
        assert!(c.interfaces.is_empty());
        assert_eq!(c.tftp_transfer_ports, DEFAULT_TFTP_TRANSFER_PORTS);
    }

    #[test]
    fn full_config_is_read() {
        let c = parse(
            r#"
            [daemon]
            log = "debug"
            [fabric]
            interfaces = ["fabric0", "fabric1"]
            [admin]
            listen = "0.0.0.0:9999"
            allow = ["10.0.0.0/8", "::1/128"]
            [xdp]
            mode = "generic"
            [tftp]
            transfer_ports = "40000-40099"
            "#,
        )
        .expect("valid");
        assert_eq!(c.interfaces, ["fabric0", "fabric1"]);
        assert_eq!(c.admin.allow.len(), 2);
        assert_eq!(c.xdp_mode, XdpModeSetting::Generic);
        assert_eq!(
            c.tftp_transfer_ports,
            PortRange {
                first: 40000,
                last: 40099
            }
        );
    }

    #[test]
    fn tftp_caps_have_defaults_and_bad_ones_name_the_key() {
        let c = parse("[tftp]\nroot = \"srv\"\ntransfer_ports = \"50000-50099\"\n").expect("valid");
        let t = c.tftp.expect("tftp");
        assert_eq!(t.max_transfers, 100, "one per transfer port");
        assert_eq!(
            (
                t.max_transfers_per_client,
                t.requests_per_second,
                t.requests_per_second_per_client
            ),
            (8, 5000, 100)
        );
        assert_eq!(t.max_timeout_s, 5);
        assert_eq!(t.max_transfer, std::time::Duration::from_secs(600));
        assert_eq!(t.netascii_budget_bytes, 64 << 20);
        for (text, key) in [
            ("max_transfers = 101", "tftp.max_transfers"),
            ("max_transfers = 0", "tftp.max_transfers"),
            (
                "max_transfers_per_client = 0",
                "tftp.max_transfers_per_client",
            ),
            ("requests_per_second = 0", "tftp.requests_per_second"),
            (
                "requests_per_second_per_client = 0",
                "tftp.requests_per_second_per_client",
            ),
            ("max_timeout_s = 0", "tftp.max_timeout_s"),
            ("max_timeout_s = 256", "tftp.max_timeout_s"),
            ("max_transfer_s = 0", "tftp.max_transfer_s"),
        ] {
            let e = err(&format!(
                "[tftp]\nroot = \"srv\"\ntransfer_ports = \"50000-50099\"\n{text}\n"
            ));
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn typo_in_key_names_the_key() {
        let e = err("[admin]\nlisten_addr = \"127.0.0.1:1\"\n");
        assert!(e.contains("listen_addr"), "{e}");
        let e = err("[xpd]\nmode = \"off\"\n");
        assert!(e.contains("xpd"), "{e}");
    }

    #[test]
    fn bad_cidr_names_the_key_and_value() {
        let e = err("[admin]\nallow = [\"10.0.0.0/8\", \"10.1.0.0/33\"]\n");
        assert!(
            e.contains("admin.allow[1]") && e.contains("10.1.0.0/33"),
            "{e}"
        );
        let e = err("[admin]\nallow = [\"10.0.0.0\"]\n");
        assert!(
            e.contains("admin.allow[0]") && e.contains("no /PREFIX"),
            "{e}"
        );
        let e = err("[admin]\nallow = [\"10.0.0.300/8\"]\n");
        assert!(e.contains("not an IP address"), "{e}");
    }

    #[test]
    fn bad_values_name_their_keys() {
        for (text, key) in [
            ("[admin]\nlisten = \"localhost\"\n", "admin.listen"),
            ("[xdp]\nmode = \"fast\"\n", "xdp.mode"),
            ("[xdp]\nmode = \"native\"\n", "xdp.mode"),
            (
                "[tftp]\ntransfer_ports = \"60000-50000\"\n",
                "tftp.transfer_ports",
            ),
            (
                "[tftp]\ntransfer_ports = \"60-70\"\n",
                "tftp.transfer_ports",
            ),
            ("[tftp]\ntransfer_ports = \"0-10\"\n", "tftp.transfer_ports"),
            ("[fabric]\ninterfaces = [\"a/b\"]\n", "fabric.interfaces[0]"),
            (
                "[fabric]\ninterfaces = [\"x\", \"x\"]\n",
                "fabric.interfaces[1]",
            ),
            (
                "[fabric]\ninterfaces = [\"abcdefghijklmnop\"]\n",
                "fabric.interfaces[0]",
            ),
            ("[daemon]\nlog = \"info,[\"\n", "daemon.log"),
        ] {
            let e = err(text);
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        }
    }

    #[test]
    fn admin_tls_keys_come_in_pairs() {
        let e = err("[admin]\ntls_cert = \"a.pem\"\n");
        assert!(e.contains("`admin.tls_key`"), "{e}");
        let e = err("[admin]\ntls_key = \"k.pem\"\n");
        assert!(e.contains("`admin.tls_cert`"), "{e}");
        let e = err("[admin]\nclient_ca = \"ca.pem\"\n");
        assert!(e.contains("`admin.client_ca`"), "{e}");
        let c = parse("[admin]\ntls_cert = \"a.pem\"\ntls_key = \"k.pem\"\n").expect("tls");
        assert_eq!(
            c.admin.tls.map(|t| (t.cert, t.client_ca)),
            Some((PathBuf::from("a.pem"), None))
        );
    }

    #[test]
    fn boot_urls_are_http_boot_programs_only_and_fit_the_file_field() {
        let ok =
            parse("[boot]\nuefi_http_x64 = \"https://{server}/efi/ipxe.efi\"\n").expect("full URL");
        assert_eq!(
            ok.boot.uefi_http_x64.as_deref(),
            Some("https://{server}/efi/ipxe.efi")
        );
        let e = err("[boot]\nipxe_script = \"http://{server}/boot.ipxe\"\n");
        assert!(
            e.contains("boot.ipxe_script") && e.contains("is a URL"),
            "{e}"
        );
        // 121 bytes, but {server} may become 15 (7 more): refused.
        let long = format!("https://{{server}}/{}", "a".repeat(121 - 17));
        assert_eq!(long.len(), 121);
        let e = err(&format!("[boot]\nuefi_http_x64 = \"{long}\"\n"));
        assert!(
            e.contains("boot.uefi_http_x64") && e.contains("may not fit"),
            "{e}"
        );
    }

    #[test]
    fn https_keys_come_together_on_their_own_port_and_files_are_read_at_load() {
        for (text, key) in [
            ("[http]\ntls_cert = \"c.pem\"\n", "`http.tls_key`"),
            ("[http]\ntls_key = \"k.pem\"\n", "`http.tls_cert`"),
            ("[http]\ntls_port = 8443\n", "`http.tls_port`"),
            ("[http]\ntls_kernel = false\n", "`http.tls_kernel`"),
            (
                "[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_port = 80\n",
                "`http.tls_port`",
            ),
            (
                "[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_port = 0\n",
                "`http.tls_port`",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(key), "{text}: {e}");
        }
        let c = parse("[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").expect("https");
        let tls = c.http.and_then(|h| h.tls);
        assert_eq!(tls.as_ref().map(|t| (t.port, t.kernel)), Some((443, true)));
        let c = parse("[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntls_kernel = false\n")
            .expect("https");
        assert_eq!(c.http.and_then(|h| h.tls).map(|t| t.kernel), Some(false));
        // Files that are not a certificate and a key: refused at load, with the key.
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("bootfabric.toml");
        std::fs::write(&cfg, "[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").expect("write");
        std::fs::write(dir.path().join("c.pem"), "not a certificate\n").expect("cert");
        let e = Config::load(&cfg).expect_err("no certificate").to_string();
        assert!(e.contains("`http.tls_cert`"), "{e}");
    }

    #[test]
    fn admin_token_file_is_checked_at_load() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("bootfabric.toml");
        std::fs::write(&cfg, "[admin]\ntoken_file = \"admin.token\"\n").expect("write");
        let token = dir.path().join("admin.token");
        let e = Config::load(&cfg).expect_err("missing").to_string();
        assert!(e.contains("`admin.token_file`"), "{e}");
        secrets::token::create(&token, false).expect("create");
        let c = Config::load(&cfg).expect("valid token file");
        assert_eq!(c.admin.token_file.as_deref(), Some(token.as_path()));
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = Config::load(&cfg).expect_err("mode").to_string();
        assert!(
            e.contains("`admin.token_file`") && e.contains("0644") && e.contains("0600"),
            "{e}"
        );
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&token, "").expect("empty");
        let e = Config::load(&cfg).expect_err("empty").to_string();
        assert!(
            e.contains("`admin.token_file`") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_is_a_parse_error_naming_the_key() {
        let e = err("[fabric]\ninterfaces = \"fabric0\"\n");
        assert!(e.contains("interfaces"), "{e}");
    }

    #[test]
    fn missing_inventory_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("bootfabric.toml");
        std::fs::write(&cfg, "[daemon]\ninventory = \"nowhere.toml\"\n").expect("write");
        let e = Config::load(&cfg)
            .expect_err("missing inventory")
            .to_string();
        assert!(
            e.contains("nowhere.toml") && e.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn a_profile_naming_an_image_without_a_version_or_a_section_refuses_the_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("www")).expect("www");
        let cfg = dir.path().join("bootfabric.toml");
        let config = "[daemon]\ninventory = \"hosts.toml\"\n[http]\nroot = \"www\"\n[images.fc]\nkernel = \"http://10.0.0.9/vmlinuz\"\n";
        std::fs::write(&cfg, config).expect("write");
        for (image, want) in [
            ("fc", "run `bootfabric image add fc`"),
            ("other", "no [images.other]"),
            ("fc@0123456789abcdef", "no version 0123456789abcdef"),
        ] {
            std::fs::write(
                dir.path().join("hosts.toml"),
                format!("[profiles.p]\nimage = \"{image}\"\n"),
            )
            .expect("write");
            let e = Config::load(&cfg).expect_err(image).to_string();
            assert!(e.contains("profiles.p.image") && e.contains(want), "{e}");
            // `bootfabric image` loads it to add the version.
            assert!(Config::load_unresolved(&cfg).is_ok());
        }
        // Images need somewhere to live.
        std::fs::write(&cfg, config.replace("[http]\nroot = \"www\"\n", "")).expect("write");
        let e = Config::load_unresolved(&cfg)
            .expect_err("no root")
            .to_string();
        assert!(e.contains("http.root"), "{e}");
    }

    #[test]
    fn missing_config_file_is_named() {
        let e = Config::load(Path::new("/nonexistent/bootfabric.toml"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("/nonexistent/bootfabric.toml"), "{e}");
    }

    #[test]
    fn configs_may_not_overlap_an_image_root() {
        let dir = tempfile::tempdir().expect("dir");
        for d in ["images/configs", "tftp", "configs", "images2"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("dirs");
        }
        let load = |text: &str| {
            let path = dir.path().join("bootfabric.toml");
            std::fs::write(&path, text).expect("config");
            Config::load(&path)
        };
        for (text, other) in [
            (
                "[http]\nroot = \"images\"\nconfigs = \"images/configs\"\n",
                "http.root",
            ),
            (
                "[http]\nroot = \"images/configs\"\nconfigs = \"images\"\n",
                "http.root",
            ),
            (
                "[http]\nroot = \"images\"\nconfigs = \"images/\"\n",
                "http.root",
            ),
            (
                "[tftp]\nroot = \"images\"\n[http]\nconfigs = \"images/configs/\"\n",
                "tftp.root",
            ),
            (
                "[tftp]\nroot = \"tftp\"\n[http]\nconfigs = \".\"\n",
                "tftp.root",
            ),
        ] {
            match load(text) {
                Ok(_) => panic!("accepted: {text}"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("http.configs") && e.contains(other),
                        "{text}: {e}"
                    );
                }
            }
        }
        // Side by side, and a name that merely starts the same, are fine.
        load("[tftp]\nroot = \"tftp\"\n[http]\nroot = \"images\"\nconfigs = \"configs\"\n")
            .expect("separate folders");
        load("[http]\nroot = \"images2\"\nconfigs = \"images\"\n")
            .expect("images2 is not inside images");
    }

    #[test]
    fn config_ttl_is_validated() {
        let c = parse("[http]\n").expect("http");
        assert_eq!(c.http.map(|h| h.config_ttl_s), Some(DEFAULT_CONFIG_TTL_S));
        for bad in ["0", "86401"] {
            let e = err(&format!("[http]\nconfig_ttl_s = {bad}\n"));
            assert!(e.contains("http.config_ttl_s"), "{bad}: {e}");
        }
        let c = parse("[http]\nconfig_ttl_s = 600\n").expect("ttl");
        assert_eq!(c.http.map(|h| h.config_ttl_s), Some(600));
    }

    #[test]
    fn http_origin_is_validated_with_its_key() {
        let c = parse("[http]\nroot = \"images\"\norigin = \"http://10.80.0.1:8080/\"\n")
            .expect("origin");
        let o = c.http.and_then(|h| h.origin).expect("origin set");
        assert_eq!((o.url.host.as_str(), o.url.port), ("10.80.0.1", 8080));
        let e = err("[http]\nroot = \"images\"\norigin = \"10.80.0.1\"\n");
        assert!(e.contains("http.origin") && e.contains("absolute"), "{e}");
        let e = err("[http]\norigin = \"http://10.80.0.1/\"\n");
        assert!(e.contains("http.origin") && e.contains("http.root"), "{e}");
    }
}
