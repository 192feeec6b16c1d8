//! The host inventory file as written: unknown keys refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::boot::wire::{Boot, DhcpOptions};

/// The host inventory file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
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
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// An image of `[images]` instead of `kernel` and `initrd`: `"flatcar"` (its current
    /// version) or `"flatcar@<version>"` (pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Kernel image path, relative to the image root.
    pub kernel: Option<String>,
    /// Initrd image paths, relative to the image root.
    #[serde(default)]
    pub initrd: Vec<String>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Overrides of `[boot]` for hosts of this profile.
    pub boot: Option<Boot>,
    /// SHA-256 (hex) of the profile's files, by file name as given in `kernel`/`initrd`;
    /// `bootfabric check` verifies them.
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

/// `[[hosts]]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Host name.
    pub name: Option<String>,
    /// MAC address of the boot NIC.
    pub mac: Option<String>,
    /// Reserved IPv4 address.
    pub ip: Option<String>,
    /// Reserved IPv6 address (DHCPv6).
    pub ipv6: Option<String>,
    /// Boot profile name.
    pub profile: Option<String>,
    /// More profiles offered in the iPXE menu (the main profile is its default).
    #[serde(default)]
    pub menu: Vec<String>,
    /// DHCP options for this host only.
    pub options: Option<DhcpOptions>,
    /// Hardware model (the scheduler learns POST times per model).
    pub model: Option<String>,
    /// Rack or power domain (the scheduler limits hosts powering on per rack).
    pub rack: Option<String>,
    /// The host's BMC.
    pub bmc: Option<Bmc>,
    /// `allow` (default), `once` or `deny`.
    pub netboot: Option<String>,
    /// Free metadata (`meta = { role = "worker" }`), for templates and controllers.
    pub meta: Option<BTreeMap<String, serde_json::Value>>,
}

/// `hosts[].bmc`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Bmc {
    /// `https://host[:port]` (or `http://` for lab emulators).
    pub url: Option<String>,
    /// User name.
    pub username: Option<String>,
    /// File holding the password.
    pub password_file: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// PEM file of the CA that signed the BMC's certificate.
    pub ca_file: Option<String>,
    /// SHA-256 fingerprint of the BMC's (self-signed) certificate.
    pub fingerprint: Option<String>,
    /// Skip certificate verification (logged).
    pub insecure: Option<bool>,
    /// Accept an `http://` URL: the password then crosses the network in clear (logged).
    pub allow_plaintext: Option<bool>,
    /// The system to manage, when the BMC manages several.
    pub system: Option<String>,
    /// Boot override the reboot scheduler sets: `pxe` or `uefi-http`.
    pub boot: Option<String>,
    /// Firmware mode for the override: `uefi` or `legacy`.
    pub boot_mode: Option<String>,
    /// Seconds one request may take.
    pub timeout_s: Option<u64>,
    /// Attempts of one request on transient errors.
    pub attempts: Option<u32>,
}
