//! The TOML shape of the configuration files, exactly as an operator writes them.
//!
//! Every struct denies unknown fields, so a typo in a key is an error that names the key,
//! never a silently ignored setting. Values stay as written here (strings for addresses and
//! ranges) and are checked in [`super`], where each error can name its key.

use std::collections::BTreeMap;

use serde::Deserialize;

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
}

/// `[daemon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Daemon {
    /// Log filter in `tracing` syntax, e.g. `info` or `info,bootfabric::xdp=debug`.
    pub log: Option<String>,
    /// Path of the host inventory file, relative to the config file's folder.
    pub inventory: Option<String>,
}

/// `[fabric]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fabric {
    /// Names of the interfaces on the provisioning network.
    pub interfaces: Option<Vec<String>>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Listen address, `IP:PORT`.
    pub listen: Option<String>,
    /// Source networks (CIDR) that may use the admin server.
    pub allow: Option<Vec<String>>,
}

/// `[xdp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Xdp {
    /// `auto`, `native`, `generic` or `off`.
    pub mode: Option<String>,
}

/// `[tftp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tftp {
    /// UDP port range for transfers, `FIRST-LAST`.
    pub transfer_ports: Option<String>,
}

/// The host inventory file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryFile {
    /// `[profiles.NAME]`: boot profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// `[[hosts]]`: the machines.
    #[serde(default)]
    pub hosts: Vec<Host>,
}

/// `[profiles.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Kernel image path, relative to the image root.
    pub kernel: Option<String>,
    /// Initrd image paths, relative to the image root.
    #[serde(default)]
    pub initrd: Vec<String>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
}

/// `[[hosts]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Host name.
    pub name: Option<String>,
    /// MAC address of the boot NIC.
    pub mac: Option<String>,
    /// Reserved IPv4 address.
    pub ip: Option<String>,
    /// Boot profile name.
    pub profile: Option<String>,
}
