//! What a host boots and the DHCP options it gets: the settings both the config file
//! (`[boot]`, `[dhcp.options]`) and the inventory (a profile's `boot`, a host's `options`)
//! carry, layered host over profile over subnet over global.

pub mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A key and why its value is refused; the caller adds the file.
use crate::util::key_error::KeyError;

/// DHCP options from one level of the config (global, subnet or host). Unset fields fall
/// through to the level below when merged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptionSet {
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Option<Vec<Ipv4Addr>>,
    /// Option 15.
    pub domain: Option<String>,
    /// Option 42.
    pub ntp: Option<Vec<Ipv4Addr>>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 51, seconds.
    pub lease_time: Option<u32>,
}

impl OptionSet {
    /// Validates one level; `key` is its dotted prefix (`dhcp.options`).
    pub fn from_wire(w: &wire::DhcpOptions, key: &str) -> Result<Self, KeyError> {
        let ip = |field: &str, s: &str| -> Result<Ipv4Addr, KeyError> {
            s.parse().map_err(|_| {
                KeyError::new(
                    format!("{key}.{field}"),
                    format!("{s:?} is not an IPv4 address"),
                )
            })
        };
        let ips =
            |field: &str, v: &Option<Vec<String>>| -> Result<Option<Vec<Ipv4Addr>>, KeyError> {
                v.as_ref()
                    .map(|v| v.iter().map(|s| ip(field, s)).collect())
                    .transpose()
            };
        if let Some(d) = &w.domain {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !ok {
                return Err(KeyError::new(
                    format!("{key}.domain"),
                    format!("{d:?} is not a domain name"),
                ));
            }
        }
        if let Some(m) = w.mtu {
            if m < 68 {
                return Err(KeyError::new(
                    format!("{key}.mtu"),
                    format!("{m} is below the IPv4 minimum of 68"),
                ));
            }
        }
        if let Some(t) = w.lease_time {
            if t < 60 {
                return Err(KeyError::new(
                    format!("{key}.lease_time"),
                    format!("{t} s is shorter than 60 s"),
                ));
            }
        }
        Ok(Self {
            router: w.router.as_deref().map(|s| ip("router", s)).transpose()?,
            dns: ips("dns", &w.dns)?,
            domain: w.domain.clone(),
            ntp: ips("ntp", &w.ntp)?,
            mtu: w.mtu,
            lease_time: w.lease_time,
        })
    }

    /// `self` with unset fields taken from `below`.
    pub fn over(&self, below: &OptionSet) -> OptionSet {
        OptionSet {
            router: self.router.or(below.router),
            dns: self.dns.clone().or_else(|| below.dns.clone()),
            domain: self.domain.clone().or_else(|| below.domain.clone()),
            ntp: self.ntp.clone().or_else(|| below.ntp.clone()),
            mtu: self.mtu.or(below.mtu),
            lease_time: self.lease_time.or(below.lease_time),
        }
    }
}

/// The server's address a boot answer names: DHCPv4's next server and `{server}` in URLs,
/// or for DHCPv6 the address in the boot file URL (`[2001:db8::1]` in a URL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    /// Answering DHCPv4.
    V4(Ipv4Addr),
    /// Answering DHCPv6: every boot file is a URL (RFC 5970 option 59).
    V6(Ipv6Addr),
}

impl From<Ipv4Addr> for ServerAddr {
    fn from(a: Ipv4Addr) -> Self {
        Self::V4(a)
    }
}

impl From<Ipv6Addr> for ServerAddr {
    fn from(a: Ipv6Addr) -> Self {
        Self::V6(a)
    }
}

impl From<IpAddr> for ServerAddr {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => Self::V4(a),
            IpAddr::V6(a) => Self::V6(a),
        }
    }
}

impl ServerAddr {
    /// The bare address.
    pub fn ip(self) -> IpAddr {
        match self {
            Self::V4(a) => IpAddr::V4(a),
            Self::V6(a) => IpAddr::V6(a),
        }
    }
}

impl std::fmt::Display for ServerAddr {
    /// The address as a URL's host: IPv6 in brackets (RFC 3986 §3.2.2).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::V4(a) => write!(f, "{a}"),
            Self::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Whether a boot setting (`uefi_http_*`) is a full `http://` or `https://` URL rather than
/// a path under `http_base`.
pub fn is_url(setting: &str) -> bool {
    setting.starts_with("http://") || setting.starts_with("https://")
}

/// Validated boot settings (global `[boot]`, or a profile's override of it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootSettings {
    /// TFTP server address.
    pub next_server: Option<Ipv4Addr>,
    /// HTTP base URL (may contain `{server}`).
    pub http_base: Option<String>,
    /// BIOS bootloader.
    pub bios: Option<String>,
    /// x64 UEFI bootloader.
    pub uefi_x64: Option<String>,
    /// IA32 UEFI bootloader.
    pub uefi_x86: Option<String>,
    /// arm64 UEFI bootloader.
    pub uefi_arm64: Option<String>,
    /// iPXE script path under `http_base`.
    pub ipxe_script: Option<String>,
    /// HTTP-boot program path (x64) under `http_base`.
    pub uefi_http_x64: Option<String>,
    /// HTTP-boot program path (arm64) under `http_base`.
    pub uefi_http_arm64: Option<String>,
    /// UEFI Secure Boot is enforced on these machines (unset: no).
    pub secure_boot: Option<bool>,
    /// Signed shim for x64 UEFI PXE under Secure Boot.
    pub shim_x64: Option<String>,
}

impl BootSettings {
    /// The built-in defaults: Debian's iPXE builds and `boot.ipxe`.
    pub fn defaults() -> Self {
        Self {
            next_server: None,
            http_base: Some("http://{server}".to_owned()),
            bios: Some("undionly.kpxe".to_owned()),
            uefi_x64: Some("ipxe.efi".to_owned()),
            uefi_x86: None,
            uefi_arm64: None,
            ipxe_script: Some("boot.ipxe".to_owned()),
            uefi_http_x64: Some("ipxe.efi".to_owned()),
            uefi_http_arm64: None,
            secure_boot: None,
            shim_x64: Some("shimx64.efi".to_owned()),
        }
    }

    /// Whether Secure Boot is marked on.
    pub fn secure(&self) -> bool {
        self.secure_boot == Some(true)
    }

    /// Validates one `boot` table; `key` is its dotted prefix.
    pub fn from_wire(w: &wire::Boot, key: &str) -> Result<Self, KeyError> {
        let file = |field: &str, v: &Option<String>| -> Result<Option<String>, KeyError> {
            match v {
                Some(f) if f.is_empty() || f.len() > 127 || f.contains(['\0', '\n', '\\']) => Err(KeyError::new(
                    format!("{key}.{field}"),
                    format!("{f:?} is not a usable boot file name (1 to 127 bytes, no NUL, newline or backslash)"),
                )),
                v => Ok(v.clone()),
            }
        };
        // The DHCP file field holds 127 bytes: `{server}` may grow by 7 (to 255.255.255.255).
        let url_fits = |field: &str, v: &Option<String>| -> Result<Option<String>, KeyError> {
            let v = file(field, v)?;
            match &v {
                Some(f) if is_url(f) && f.len() + 7 * f.matches("{server}").count() > 127 => Err(KeyError::new(
                    format!("{key}.{field}"),
                    format!("{f:?} may not fit the DHCP file field (127 bytes, with {{server}} as 15)"),
                )),
                _ => Ok(v),
            }
        };
        if let Some(b) = &w.http_base {
            if !(b.starts_with("http://") || b.starts_with("https://")) || b.len() > 100 {
                return Err(KeyError::new(
                    format!("{key}.http_base"),
                    format!("{b:?} is not an http:// or https:// URL of at most 100 bytes"),
                ));
            }
        }
        Ok(Self {
            next_server: w
                .next_server
                .as_deref()
                .map(|s| {
                    s.parse().map_err(|_| {
                        KeyError::new(
                            format!("{key}.next_server"),
                            format!("{s:?} is not an IPv4 address"),
                        )
                    })
                })
                .transpose()?,
            http_base: w
                .http_base
                .as_ref()
                .map(|b| b.trim_end_matches('/').to_owned()),
            bios: file("bios", &w.bios)?,
            uefi_x64: file("uefi_x64", &w.uefi_x64)?,
            uefi_x86: file("uefi_x86", &w.uefi_x86)?,
            uefi_arm64: file("uefi_arm64", &w.uefi_arm64)?,
            ipxe_script: match file("ipxe_script", &w.ipxe_script)? {
                // The script is rendered per host by this server, under `http_base`.
                Some(s) if is_url(&s) => {
                    return Err(KeyError::new(
                        format!("{key}.ipxe_script"),
                        format!("{s:?} is a URL: give the script's path under http_base (this server renders it per host)"),
                    ))
                }
                s => s,
            },
            uefi_http_x64: url_fits("uefi_http_x64", &w.uefi_http_x64)?,
            uefi_http_arm64: url_fits("uefi_http_arm64", &w.uefi_http_arm64)?,
            secure_boot: w.secure_boot,
            shim_x64: file("shim_x64", &w.shim_x64)?,
        })
    }

    /// `self` with unset fields taken from `below`.
    pub fn over(&self, below: &BootSettings) -> BootSettings {
        BootSettings {
            next_server: self.next_server.or(below.next_server),
            http_base: self.http_base.clone().or_else(|| below.http_base.clone()),
            bios: self.bios.clone().or_else(|| below.bios.clone()),
            uefi_x64: self.uefi_x64.clone().or_else(|| below.uefi_x64.clone()),
            uefi_x86: self.uefi_x86.clone().or_else(|| below.uefi_x86.clone()),
            uefi_arm64: self.uefi_arm64.clone().or_else(|| below.uefi_arm64.clone()),
            ipxe_script: self
                .ipxe_script
                .clone()
                .or_else(|| below.ipxe_script.clone()),
            uefi_http_x64: self
                .uefi_http_x64
                .clone()
                .or_else(|| below.uefi_http_x64.clone()),
            uefi_http_arm64: self
                .uefi_http_arm64
                .clone()
                .or_else(|| below.uefi_http_arm64.clone()),
            secure_boot: self.secure_boot.or(below.secure_boot),
            shim_x64: self.shim_x64.clone().or_else(|| below.shim_x64.clone()),
        }
    }
}
