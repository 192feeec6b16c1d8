//! The boot settings and DHCP options as written in the config file and in the inventory
//! (`[boot]`, `[dhcp.options]`, a profile's `boot`, a host's `options`): unknown keys refused.

use serde::{Deserialize, Serialize};

/// DHCP options settable at global, subnet and host level.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpOptions {
    /// Default gateway (option 3).
    pub router: Option<String>,
    /// DNS servers (option 6).
    pub dns: Option<Vec<String>>,
    /// Domain name (option 15).
    pub domain: Option<String>,
    /// NTP servers (option 42).
    pub ntp: Option<Vec<String>>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Lease time in seconds (option 51).
    pub lease_time: Option<u32>,
}

/// `[boot]`, and `boot` inside a profile to override it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// TFTP server for bootloaders (siaddr, option 66); default: the DHCP server's address.
    pub next_server: Option<String>,
    /// Base URL of the HTTP server, `{server}` standing for the DHCP server's address.
    pub http_base: Option<String>,
    /// Bootloader for BIOS PXE ROMs (arch 0).
    pub bios: Option<String>,
    /// Bootloader for x64 UEFI PXE (arch 7 and 9).
    pub uefi_x64: Option<String>,
    /// Bootloader for IA32 UEFI PXE (arch 6).
    pub uefi_x86: Option<String>,
    /// Bootloader for arm64 UEFI PXE (arch 11).
    pub uefi_arm64: Option<String>,
    /// Path, under `http_base`, of the iPXE script chainloaded iPXE gets.
    pub ipxe_script: Option<String>,
    /// Path, under `http_base`, of the EFI program UEFI HTTP-boot clients get (x64).
    pub uefi_http_x64: Option<String>,
    /// Same for arm64 UEFI HTTP-boot clients.
    pub uefi_http_arm64: Option<String>,
    /// The machines boot with UEFI Secure Boot enforced: x64 UEFI PXE gets `shim_x64`.
    pub secure_boot: Option<bool>,
    /// Signed shim for x64 UEFI PXE under Secure Boot; it loads `grubx64.efi` beside it.
    pub shim_x64: Option<String>,
}
