//! Boot policy: which bootloader, script or URL a booting client is told to load.
//!
//! A pure function of the request's facts (RFC 4578 client architecture, option 60 vendor
//! class, option 77 user class, iPXE's option 175), the host's profile and the global
//! `[boot]` settings. Every part of the answer carries the rule that decided it, which is
//! what `bootfabric explain` prints.
//!
//! The paths through it:
//! - chainloaded iPXE (user class `iPXE`, or option 175) with HTTP gets the script URL
//!   `{http_base}/{ipxe_script}` (an https one with a note when its option 175 lacks HTTPS);
//!   an iPXE without HTTP gets the script over TFTP;
//! - a PXE ROM (`PXEClient`) gets the bootloader for its architecture over TFTP, with
//!   option 43 telling it to skip PXE boot-server discovery;
//! - a UEFI HTTP-boot client (`HTTPClient`, arch 15/16/19) gets a URL and `HTTPClient` back;
//! - any other client (an OS's DHCP client) gets no boot fields.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, OptionCode};

pub use crate::model::boot::ServerAddr;
use crate::model::boot::{is_url, BootSettings};
use crate::model::inventory::{BootAnswer, Profile};

/// RFC 4578 / IANA processor architecture types the policy knows.
pub mod arch {
    /// x86 BIOS.
    pub const BIOS: u16 = 0;
    /// EFI IA32.
    pub const EFI_IA32: u16 = 6;
    /// EFI BC (x64 in practice).
    pub const EFI_BC: u16 = 7;
    /// EFI x86-64.
    pub const EFI_X64: u16 = 9;
    /// ARM 64-bit UEFI.
    pub const EFI_ARM64: u16 = 11;
    /// x86 UEFI HTTP boot.
    pub const HTTP_IA32: u16 = 15;
    /// x64 UEFI HTTP boot.
    pub const HTTP_X64: u16 = 16;
    /// arm64 UEFI HTTP boot.
    pub const HTTP_ARM64: u16 = 19;
}

/// iPXE's encapsulated option 175 telling it not to wait for proxyDHCP offers: sub-option
/// 176 (no-pxedhcp), length 1, value 1.
pub const IPXE_NO_PXEDHCP: [u8; 3] = [176, 1, 1];

/// iPXE's encapsulated option 175 sub-option announcing HTTP support.
const IPXE_FEATURE_HTTP: u8 = 19;
/// iPXE's encapsulated option 175 sub-option announcing HTTPS support.
const IPXE_FEATURE_HTTPS: u8 = 20;
/// Option 43 for PXE ROMs: sub-option 6 (discovery control) = 8, "boot file name is
/// present, skip boot-server discovery", then end.
pub const PXE_DISCOVERY_CONTROL: [u8; 4] = [6, 1, 8, 255];

/// What the request says about the booting firmware.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientFacts {
    /// Option 93, first entry.
    pub arch: Option<u16>,
    /// Option 60.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77, raw.
    pub user_class: Option<Vec<u8>>,
    /// Option 175, raw (iPXE's encapsulated options).
    pub ipxe: Option<Vec<u8>>,
    /// Option 97.
    pub uuid: Option<Vec<u8>>,
}

impl ClientFacts {
    /// Reads the facts out of a decoded request.
    pub fn from_message(msg: &Message) -> Self {
        let opts = msg.opts();
        let raw = |code: OptionCode| match opts.get(code) {
            Some(DhcpOption::ClassIdentifier(v))
            | Some(DhcpOption::UserClass(v))
            | Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
            Some(DhcpOption::Unknown(u)) => Some(u.data().to_vec()),
            _ => None,
        };
        let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
            _ => None,
        };
        Self {
            arch,
            vendor_class: raw(OptionCode::ClassIdentifier),
            user_class: raw(OptionCode::UserClass),
            ipxe: raw(OptionCode::Unknown(175)),
            uuid: raw(OptionCode::ClientMachineIdentifier),
        }
    }

    /// Whether the client is iPXE (user class `iPXE`, raw or RFC 3004-encoded, or option 175).
    pub fn is_ipxe(&self) -> bool {
        self.ipxe.is_some()
            || self
                .user_class
                .as_deref()
                .is_some_and(|uc| uc == b"iPXE" || rfc3004_classes(uc).any(|c| c == b"iPXE"))
    }

    /// Whether an iPXE client can fetch over HTTP: option 175 with the HTTP feature, or no
    /// option 175 at all (every iPXE build that does not say otherwise has HTTP).
    pub fn ipxe_has_http(&self) -> bool {
        match &self.ipxe {
            None => true,
            Some(enc) => {
                tlvs(enc).any(|(code, v)| code == IPXE_FEATURE_HTTP && v.first() == Some(&1))
            }
        }
    }

    /// Whether an iPXE client says it cannot fetch over HTTPS: option 175 present without the
    /// HTTPS feature. Without option 175 nothing is known, and nothing is said.
    pub fn ipxe_lacks_https(&self) -> bool {
        self.ipxe.as_deref().is_some_and(|enc| {
            !tlvs(enc).any(|(code, v)| code == IPXE_FEATURE_HTTPS && v.first() == Some(&1))
        })
    }

    /// Whether the request comes from boot firmware (PXE, iPXE or UEFI HTTP boot) rather
    /// than an operating system's DHCP client.
    pub fn is_booting_firmware(&self) -> bool {
        self.is_ipxe()
            || self.vendor_starts_with(b"PXEClient")
            || self.vendor_starts_with(b"HTTPClient")
    }

    /// Whether the client is UEFI HTTP boot (option 60 `HTTPClient`, not iPXE): its boot
    /// URL is the program itself, with no loader in between that could "boot from disk".
    pub fn is_http_boot(&self) -> bool {
        !self.is_ipxe() && self.vendor_starts_with(b"HTTPClient")
    }

    fn vendor_starts_with(&self, prefix: &[u8]) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with(prefix))
    }
}

/// RFC 3004 user classes: length-prefixed items.
fn rfc3004_classes(mut b: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = b.split_first()?;
        let item = rest.get(..usize::from(len))?;
        b = &rest[usize::from(len)..];
        Some(item)
    })
}

/// Code/length/value items of an encapsulated option (stops at pad/end or truncation).
fn tlvs(mut b: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || loop {
        let (&code, rest) = b.split_first()?;
        if code == 0 {
            b = rest;
            continue;
        }
        if code == 255 {
            return None;
        }
        let (&len, rest) = rest.split_first()?;
        let v = rest.get(..usize::from(len))?;
        b = &rest[usize::from(len)..];
        return Some((code, v));
    })
}

/// The boot part of a reply, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootDecision {
    /// siaddr (next server).
    pub siaddr: Option<Ipv4Addr>,
    /// The BOOTP `file` field and option 67.
    pub file: Option<String>,
    /// Option 66 (TFTP server name).
    pub tftp_server: Option<String>,
    /// Option 60 to send back.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 43.
    pub vendor_options: Option<Vec<u8>>,
    /// Option 97 echoed.
    pub uuid: Option<Vec<u8>>,
    /// Which rule decided each part, in order: (part, rule).
    pub rules: Vec<(String, String)>,
    /// The client said it cannot fetch the boot file it is told: an iPXE whose option 175
    /// lacks HTTPS, given an https script URL. A rule says why; the service logs it.
    pub unfetchable: bool,
}

impl BootDecision {
    fn rule(&mut self, part: &str, why: impl Into<String>) {
        self.rules.push((part.to_owned(), why.into()));
    }
}

/// Picks a boot setting from the profile, else the global settings, naming the key used.
fn pick<'a>(
    field: &str,
    get: impl Fn(&BootSettings) -> &Option<String>,
    profile: Option<&'a Profile>,
    global: &'a BootSettings,
) -> Option<(String, String)> {
    if let Some(p) = profile {
        if let Some(v) = get(&p.boot) {
            return Some((v.clone(), format!("profiles.{}.boot.{field}", p.name)));
        }
    }
    get(global)
        .as_ref()
        .map(|v| (v.clone(), format!("boot.{field}")))
}

/// Whether the profile (else the global settings) marks Secure Boot on.
fn secure(profile: Option<&Profile>, global: &BootSettings) -> bool {
    profile
        .and_then(|p| p.boot.secure_boot)
        .or(global.secure_boot)
        == Some(true)
}

/// [`decide`] under the host's netboot answer (`Inventory::boot_answer`; clients outside the
/// inventory boot as before):
/// - `Boot`: as [`decide`];
/// - `Deny`: no boot fields at all (no siaddr, file, options 43, 60, 66, 67), only the
///   client's option 97 echoed as for any client, so the reply is the address and network
///   options a plain DHCP client gets;
/// - `Disk` (`netboot = once`, used): as [`decide`] for PXE and iPXE (the loader and script
///   then boot from the local disk), but nothing for UEFI HTTP boot, whose "loader" is the
///   URL itself: without one the firmware goes on to its next boot entry.
pub fn decide_for(
    answer: BootAnswer,
    facts: &ClientFacts,
    profile: Option<&Profile>,
    global: &BootSettings,
    server: impl Into<ServerAddr>,
) -> BootDecision {
    let server = server.into();
    let no_boot = |why: &str| {
        let mut d = BootDecision {
            uuid: facts.uuid.clone(),
            ..BootDecision::default()
        };
        if d.uuid.is_some() {
            d.rule("option 97", "client UUID echoed (PXE spec)");
        }
        d.rule("boot", why);
        d
    };
    match answer {
        BootAnswer::Boot => decide(facts, profile, global, server),
        BootAnswer::Deny => no_boot("none: netboot = deny (address and network options only)"),
        BootAnswer::Disk if facts.is_http_boot() => no_boot(
            "none: netboot = once (used): UEFI HTTP boot gets no URL, the firmware goes to its next boot entry",
        ),
        BootAnswer::Disk => {
            let mut d = decide(facts, profile, global, server);
            d.rule(
                "netboot",
                "netboot = once (used): the loader is told to boot from the local disk",
            );
            d
        }
    }
}

/// Decides the boot fields for a client. `server` is the DHCP server's address on the
/// client's network (the default next-server and `{server}` in `http_base`).
pub fn decide(
    facts: &ClientFacts,
    profile: Option<&Profile>,
    global: &BootSettings,
    server: impl Into<ServerAddr>,
) -> BootDecision {
    let server = server.into();
    // The boot file's field: DHCPv4's `file` and option 67, DHCPv6's option 59.
    let file_part = match server {
        ServerAddr::V4(_) => "file, option 67",
        ServerAddr::V6(_) => "option 59",
    };
    let vendor_part = match server {
        ServerAddr::V4(_) => "option 60",
        ServerAddr::V6(_) => "option 16",
    };
    let mut d = BootDecision::default();
    if facts.uuid.is_some() {
        d.uuid = facts.uuid.clone();
        d.rule("option 97", "client UUID echoed (PXE spec)");
    }
    let next_server = profile
        .and_then(|p| {
            p.boot
                .next_server
                .map(|n| (n, format!("profiles.{}.boot.next_server", p.name)))
        })
        .or_else(|| {
            global
                .next_server
                .map(|n| (n, "boot.next_server".to_owned()))
        })
        .unwrap_or_else(|| {
            (
                match server {
                    ServerAddr::V4(a) => a,
                    ServerAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                },
                "the server's own address (boot.next_server unset)".to_owned(),
            )
        });
    let http_base = pick("http_base", |b| &b.http_base, profile, global)
        .map(|(b, k)| (b.replace("{server}", &server.to_string()), k));
    let tftp = |d: &mut BootDecision, file: String, why: String| {
        if let ServerAddr::V6(a) = server {
            // RFC 5970: DHCPv6 names the boot file by URL only; boot.next_server is IPv4.
            d.file = Some(format!("tftp://[{a}]/{}", file.trim_start_matches('/')));
            d.rule(
                "option 59",
                format!("{why}, over TFTP from the server's own IPv6 address"),
            );
            return;
        }
        d.siaddr = Some(next_server.0);
        d.tftp_server = Some(next_server.0.to_string());
        d.rule("siaddr, option 66", next_server.1.clone());
        d.rule(file_part, why);
        d.file = Some(file);
    };
    let http = |d: &mut BootDecision, path: String, why: String| match &http_base {
        // A UEFI HTTP-boot program may be a full URL (another server, or https for the
        // firmware alone); config loading refuses one for `ipxe_script`.
        _ if is_url(&path) => {
            d.file = Some(path.replace("{server}", &server.to_string()));
            d.rule(file_part, format!("{why} (a full URL)"));
        }
        Some((base, base_key)) => {
            d.file = Some(format!("{base}/{}", path.trim_start_matches('/')));
            d.rule(file_part, format!("{why} under {base_key}"));
        }
        None => d.rule(file_part, "none: boot.http_base is unset"),
    };

    if facts.is_ipxe() {
        let Some((script, key)) = pick("ipxe_script", |b| &b.ipxe_script, profile, global) else {
            d.rule(file_part, "none: iPXE client and boot.ipxe_script is unset");
            return d;
        };
        if facts.ipxe_has_http() {
            http(
                &mut d,
                script,
                format!("iPXE with HTTP gets the script URL: {key}"),
            );
            // It is answered all the same: falling back to plain HTTP would hand the script
            // and images to anyone on the segment, which is what an https base is set against.
            // The operator learns why the machine stops there (the daemon's log).
            if facts.ipxe_lacks_https()
                && d.file.as_deref().is_some_and(|f| f.starts_with("https://"))
            {
                d.unfetchable = true;
                d.rule(
                    file_part,
                    "this iPXE has no HTTPS (its option 175 lacks the feature) and cannot fetch \
                     the URL: chainload an iPXE built with HTTPS",
                );
            }
        } else {
            tftp(
                &mut d,
                script,
                format!("iPXE without HTTP (option 175) gets the script over TFTP: {key}"),
            );
        }
        return d;
    }

    if facts.vendor_starts_with(b"HTTPClient") {
        d.vendor_class = Some(b"HTTPClient".to_vec());
        d.rule(
            vendor_part,
            "HTTPClient echoed (UEFI HTTP boot requires it)",
        );
        if secure(profile, global) && facts.arch == Some(arch::HTTP_X64) {
            // The signed chain's GRUB (Debian's) has no HTTP, and the firmware would refuse
            // unsigned iPXE: no URL, so the firmware goes on to its PXE entry.
            d.rule(
                file_part,
                "none: Secure Boot (boot.secure_boot) boots by PXE: the signed GRUB has no HTTP",
            );
            return d;
        }
        let (field, label): (&str, _) = match facts.arch {
            Some(arch::HTTP_X64) => ("uefi_http_x64", "x64 UEFI HTTP boot (arch 16)"),
            Some(arch::HTTP_ARM64) => ("uefi_http_arm64", "arm64 UEFI HTTP boot (arch 19)"),
            Some(arch::HTTP_IA32) => ("", "IA32 UEFI HTTP boot (arch 15) has no program setting"),
            _ => ("", "HTTPClient without an HTTP-boot architecture"),
        };
        let pick_http = match field {
            "uefi_http_x64" => pick(field, |b| &b.uefi_http_x64, profile, global),
            "uefi_http_arm64" => pick(field, |b| &b.uefi_http_arm64, profile, global),
            _ => None,
        };
        match pick_http {
            Some((path, key)) => http(&mut d, path, format!("{label}: {key}")),
            None => d.rule(file_part, format!("none: {label}, no boot.{field} set")),
        }
        return d;
    }

    // DHCPv6 has no PXE vendor options: the URL alone (RFC 5970).
    let v4 = matches!(server, ServerAddr::V4(_));
    if facts.vendor_starts_with(b"PXEClient") {
        if v4 {
            d.vendor_class = Some(b"PXEClient".to_vec());
            d.rule(vendor_part, "PXEClient echoed (PXE spec)");
        }
        let (field, label) = match facts.arch {
            Some(arch::BIOS) | None => ("bios", "BIOS PXE (arch 0)"),
            Some(arch::EFI_IA32) => ("uefi_x86", "IA32 UEFI PXE (arch 6)"),
            Some(arch::EFI_BC) | Some(arch::EFI_X64) => ("uefi_x64", "x64 UEFI PXE (arch 7/9)"),
            Some(arch::EFI_ARM64) => ("uefi_arm64", "arm64 UEFI PXE (arch 11)"),
            Some(_) => ("", "an architecture without a bootloader setting"),
        };
        let file = match field {
            "bios" => pick(field, |b| &b.bios, profile, global),
            "uefi_x86" => pick(field, |b| &b.uefi_x86, profile, global),
            // Secure Boot: the firmware runs only signed programs, and Debian's iPXE is not:
            // shim (signed by Microsoft's UEFI CA) loads the signed GRUB beside it.
            "uefi_x64" if secure(profile, global) => {
                pick("shim_x64", |b| &b.shim_x64, profile, global).map(|(f, key)| {
                    let mark = profile
                        .filter(|p| p.boot.secure_boot.is_some())
                        .map_or("boot.secure_boot".to_owned(), |p| {
                            format!("profiles.{}.boot.secure_boot", p.name)
                        });
                    (
                        f,
                        format!("{key} ({mark}: shim, then grubx64.efi beside it)"),
                    )
                })
            }
            "uefi_x64" => pick(field, |b| &b.uefi_x64, profile, global),
            "uefi_arm64" => pick(field, |b| &b.uefi_arm64, profile, global),
            _ => None,
        };
        match file {
            Some((file, key)) => {
                tftp(&mut d, file, format!("{label}: {key}"));
                if v4 {
                    d.vendor_options = Some(PXE_DISCOVERY_CONTROL.to_vec());
                    d.rule(
                        "option 43",
                        "PXE discovery control 8: use the file name, skip boot-server discovery",
                    );
                }
            }
            None => d.rule(
                file_part,
                format!(
                    "none: {label} (arch {:?}) has no boot.{field} set",
                    facts.arch
                ),
            ),
        }
        return d;
    }

    d.rule("boot", "none: not a PXE, iPXE or HTTP-boot client");
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(arch: Option<u16>, vendor: Option<&str>, user: Option<&[u8]>) -> ClientFacts {
        ClientFacts {
            arch,
            vendor_class: vendor.map(|v| v.as_bytes().to_vec()),
            user_class: user.map(<[u8]>::to_vec),
            ..Default::default()
        }
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    fn profile(name: &str) -> Profile {
        Profile {
            name: name.into(),
            image: None,
            kernel: None,
            initrd: vec![],
            cmdline: String::new(),
            boot: BootSettings::default(),
            sha256: Default::default(),
        }
    }

    fn global() -> BootSettings {
        let mut g = BootSettings::defaults();
        g.uefi_arm64 = Some("ipxe-arm64.efi".into());
        g.uefi_x86 = Some("ipxe-ia32.efi".into());
        g.uefi_http_arm64 = Some("ipxe-arm64.efi".into());
        g
    }

    #[test]
    fn pxe_roms_get_the_bootloader_for_their_architecture() {
        for (arch, file) in [
            (Some(arch::BIOS), "undionly.kpxe"),
            (None, "undionly.kpxe"),
            (Some(arch::EFI_IA32), "ipxe-ia32.efi"),
            (Some(arch::EFI_BC), "ipxe.efi"),
            (Some(arch::EFI_X64), "ipxe.efi"),
            (Some(arch::EFI_ARM64), "ipxe-arm64.efi"),
        ] {
            let d = decide(
                &facts(arch, Some("PXEClient:Arch:00007:UNDI:003016"), None),
                None,
                &global(),
                SERVER,
            );
            assert_eq!(d.file.as_deref(), Some(file), "arch {arch:?}");
            assert_eq!(d.siaddr, Some(SERVER));
            assert_eq!(d.tftp_server.as_deref(), Some("10.77.0.1"));
            assert_eq!(d.vendor_class.as_deref(), Some(&b"PXEClient"[..]));
            assert_eq!(
                d.vendor_options.as_deref(),
                Some(&PXE_DISCOVERY_CONTROL[..])
            );
        }
    }

    #[test]
    fn unknown_pxe_architecture_gets_no_file() {
        let d = decide(
            &facts(Some(99), Some("PXEClient"), None),
            None,
            &global(),
            SERVER,
        );
        assert_eq!(d.file, None);
        assert!(
            d.rules
                .iter()
                .any(|(_, r)| r.contains("without a bootloader")),
            "{:?}",
            d.rules
        );
    }

    #[test]
    fn ipxe_gets_the_script_url_instead_of_a_bootloader() {
        for user in [&b"iPXE"[..], &[4, b'i', b'P', b'X', b'E'][..]] {
            let d = decide(
                &facts(Some(arch::EFI_X64), Some("PXEClient"), Some(user)),
                None,
                &global(),
                SERVER,
            );
            assert_eq!(d.file.as_deref(), Some("http://10.77.0.1/boot.ipxe"));
            assert_eq!(d.siaddr, None);
            assert_eq!(d.vendor_options, None);
        }
    }

    #[test]
    fn ipxe_without_http_gets_the_script_over_tftp() {
        let mut f = facts(Some(arch::BIOS), Some("PXEClient"), Some(b"iPXE"));
        f.ipxe = Some(vec![21, 1, 1, 255]); // feature "PXE" only
        let d = decide(&f, None, &global(), SERVER);
        assert_eq!(d.file.as_deref(), Some("boot.ipxe"));
        assert_eq!(d.siaddr, Some(SERVER));
        f.ipxe = Some(vec![19, 1, 1, 16, 1, 1, 255]); // HTTP, DNS
        assert!(f.ipxe_has_http());
        assert_eq!(
            decide(&f, None, &global(), SERVER).file.as_deref(),
            Some("http://10.77.0.1/boot.ipxe")
        );
    }

    #[test]
    fn ipxe_without_https_is_told_it_cannot_fetch_an_https_script() {
        let mut g = global();
        g.http_base = Some("https://{server}".into());
        let lacks = "cannot fetch the URL";
        let mut f = facts(Some(arch::EFI_X64), None, Some(b"iPXE"));
        for (features, said) in [
            (Some(vec![19, 1, 1, 23, 1, 1, 255]), true), // HTTP, DNS: bookworm's build
            (Some(vec![19, 1, 1, 20, 1, 1, 255]), false), // HTTP, HTTPS
            (None, false),                               // nothing known
        ] {
            f.ipxe = features;
            let d = decide(&f, None, &g, SERVER);
            assert_eq!(d.file.as_deref(), Some("https://10.77.0.1/boot.ipxe"));
            let told = d.rules.iter().any(|(_, r)| r.contains(lacks));
            assert_eq!(told, said, "{:?}: {:?}", f.ipxe, d.rules);
            assert_eq!(d.unfetchable, said);
        }
        // Over plain HTTP the missing feature does not matter.
        f.ipxe = Some(vec![19, 1, 1, 255]);
        let d = decide(&f, None, &global(), SERVER);
        assert!(
            !d.rules.iter().any(|(_, r)| r.contains(lacks)) && !d.unfetchable,
            "{:?}",
            d.rules
        );
    }

    #[test]
    fn option_175_alone_marks_ipxe() {
        let mut f = facts(Some(arch::BIOS), Some("PXEClient"), None);
        f.ipxe = Some(vec![19, 1, 1]);
        assert!(f.is_ipxe());
    }

    #[test]
    fn http_boot_clients_get_a_url_and_httpclient_back() {
        let d = decide(
            &facts(Some(arch::HTTP_X64), Some("HTTPClient:Arch:00016"), None),
            None,
            &global(),
            SERVER,
        );
        assert_eq!(d.file.as_deref(), Some("http://10.77.0.1/ipxe.efi"));
        assert_eq!(d.vendor_class.as_deref(), Some(&b"HTTPClient"[..]));
        assert_eq!(d.siaddr, None);
        let d = decide(
            &facts(Some(arch::HTTP_ARM64), Some("HTTPClient"), None),
            None,
            &global(),
            SERVER,
        );
        assert_eq!(d.file.as_deref(), Some("http://10.77.0.1/ipxe-arm64.efi"));
        let d = decide(
            &facts(Some(arch::HTTP_IA32), Some("HTTPClient"), None),
            None,
            &global(),
            SERVER,
        );
        assert_eq!(d.file, None);
        assert_eq!(d.vendor_class.as_deref(), Some(&b"HTTPClient"[..]));
    }

    #[test]
    fn secure_boot_hands_x64_uefi_pxe_the_shim() {
        let mut g = global();
        let pxe = facts(Some(arch::EFI_X64), Some("PXEClient:Arch:00007"), None);
        assert_eq!(
            decide(&pxe, None, &g, SERVER).file.as_deref(),
            Some("ipxe.efi")
        );
        g.secure_boot = Some(true);
        let d = decide(&pxe, None, &g, SERVER);
        assert_eq!(d.file.as_deref(), Some("shimx64.efi"));
        assert!(
            d.rules.iter().any(|r| r.1.contains("boot.secure_boot")),
            "{d:?}"
        );
        // A profile turns it off again, or names its own shim.
        let mut p = profile("plain");
        p.boot.secure_boot = Some(false);
        assert_eq!(
            decide(&pxe, Some(&p), &g, SERVER).file.as_deref(),
            Some("ipxe.efi")
        );
        p.boot.secure_boot = Some(true);
        p.boot.shim_x64 = Some("sb/shimx64.efi".into());
        let d = decide(&pxe, Some(&p), &g, SERVER);
        assert_eq!(d.file.as_deref(), Some("sb/shimx64.efi"));
        assert!(
            d.rules
                .iter()
                .any(|r| r.1.contains("profiles.plain.boot.secure_boot")),
            "{d:?}"
        );
        // UEFI HTTP boot gets no URL under Secure Boot (the firmware goes on to PXE).
        let http = facts(Some(arch::HTTP_X64), Some("HTTPClient:Arch:00016"), None);
        let d = decide(&http, None, &g, SERVER);
        assert_eq!(d.file, None);
        assert_eq!(d.vendor_class.as_deref(), Some(&b"HTTPClient"[..]));
        // BIOS and iPXE are not affected.
        let bios = facts(Some(arch::BIOS), Some("PXEClient"), None);
        assert_eq!(
            decide(&bios, None, &g, SERVER).file.as_deref(),
            Some("undionly.kpxe")
        );
    }

    #[test]
    fn a_full_url_is_given_as_it_is_with_the_server_filled_in() {
        let mut g = global();
        g.uefi_http_x64 = Some("https://{server}/efi/ipxe.efi".into());
        let d = decide(
            &facts(Some(arch::HTTP_X64), Some("HTTPClient:Arch:00016"), None),
            None,
            &g,
            SERVER,
        );
        assert_eq!(d.file.as_deref(), Some("https://10.77.0.1/efi/ipxe.efi"));
        assert!(d.rules.iter().any(|r| r.1.contains("a full URL")), "{d:?}");
        // Without any http_base a full URL still stands on its own.
        g.http_base = None;
        let d = decide(
            &facts(Some(arch::HTTP_X64), Some("HTTPClient"), None),
            None,
            &g,
            SERVER,
        );
        assert_eq!(d.file.as_deref(), Some("https://10.77.0.1/efi/ipxe.efi"));
    }

    #[test]
    fn netboot_deny_gives_no_boot_fields_and_used_once_no_http_boot_url() {
        let pxe = facts(Some(arch::EFI_X64), Some("PXEClient:Arch:00009"), None);
        let ipxe = facts(Some(arch::EFI_X64), Some("PXEClient"), Some(b"iPXE"));
        let mut http = facts(Some(arch::HTTP_X64), Some("HTTPClient:Arch:00016"), None);
        http.uuid = Some(vec![0; 17]);
        let g = global();
        for f in [&pxe, &ipxe, &http] {
            assert_eq!(
                decide_for(BootAnswer::Boot, f, None, &g, SERVER),
                decide(f, None, &g, SERVER),
                "allow boots as before"
            );
            let d = decide_for(BootAnswer::Deny, f, None, &g, SERVER);
            assert_eq!(
                (
                    d.siaddr,
                    &d.file,
                    &d.tftp_server,
                    &d.vendor_class,
                    &d.vendor_options
                ),
                (None, &None, &None, &None, &None)
            );
            assert_eq!(d.uuid, f.uuid, "option 97 is echoed to every client");
            assert!(d.rules.iter().any(|(_, r)| r.contains("netboot = deny")));
        }
        // Used once: PXE and iPXE get their loader and script (which then exit to disk).
        for f in [&pxe, &ipxe] {
            let d = decide_for(BootAnswer::Disk, f, None, &g, SERVER);
            assert_eq!(d.file, decide(f, None, &g, SERVER).file);
            assert!(d.file.is_some());
            assert!(d
                .rules
                .iter()
                .any(|(_, r)| r.contains("netboot = once (used)")));
        }
        let d = decide_for(BootAnswer::Disk, &http, None, &g, SERVER);
        assert_eq!((&d.file, &d.vendor_class), (&None, &None));
        assert_eq!(d.uuid, http.uuid);
        assert!(d
            .rules
            .iter()
            .any(|(_, r)| r.contains("netboot = once (used)")));
    }

    #[test]
    fn plain_dhcp_clients_get_no_boot_fields() {
        let d = decide(
            &facts(None, Some("dhcpcd-9.4.1"), None),
            None,
            &global(),
            SERVER,
        );
        assert_eq!((d.file, d.siaddr, d.vendor_class), (None, None, None));
    }

    #[test]
    fn uuid_is_echoed() {
        let mut f = facts(Some(arch::BIOS), Some("PXEClient"), None);
        f.uuid = Some(vec![0; 17]);
        assert_eq!(decide(&f, None, &global(), SERVER).uuid, Some(vec![0; 17]));
    }

    #[test]
    fn profile_overrides_global_and_says_so() {
        let profile = Profile {
            name: "rescue".into(),
            image: None,
            kernel: None,
            initrd: vec![],
            cmdline: String::new(),
            boot: BootSettings {
                uefi_x64: Some("shimx64.efi".into()),
                next_server: Some(Ipv4Addr::new(10, 77, 0, 5)),
                http_base: Some("http://images.example:8080".into()),
                ..Default::default()
            },
            sha256: Default::default(),
        };
        let d = decide(
            &facts(Some(arch::EFI_X64), Some("PXEClient"), None),
            Some(&profile),
            &global(),
            SERVER,
        );
        assert_eq!(d.file.as_deref(), Some("shimx64.efi"));
        assert_eq!(d.siaddr, Some(Ipv4Addr::new(10, 77, 0, 5)));
        assert!(
            d.rules
                .iter()
                .any(|(_, r)| r.contains("profiles.rescue.boot.uefi_x64")),
            "{:?}",
            d.rules
        );
        let d = decide(
            &facts(Some(arch::EFI_X64), Some("PXEClient"), Some(b"iPXE")),
            Some(&profile),
            &global(),
            SERVER,
        );
        assert_eq!(
            d.file.as_deref(),
            Some("http://images.example:8080/boot.ipxe")
        );
    }

    #[test]
    fn malformed_encapsulations_do_not_panic() {
        for b in [
            &[][..],
            &[19][..],
            &[19, 5, 1][..],
            &[0, 0, 0][..],
            &[255, 19, 1, 1][..],
        ] {
            let f = ClientFacts {
                ipxe: Some(b.to_vec()),
                user_class: Some(b.to_vec()),
                ..Default::default()
            };
            let _ = f.ipxe_has_http();
            let _ = f.ipxe_lacks_https();
            let _ = f.is_ipxe();
        }
    }
}
