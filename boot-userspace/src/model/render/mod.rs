//! Per-host boot files rendered from the host's profile: pxelinux configs, GRUB configs and
//! iPXE scripts. Pure functions of the host, its profile and the global `[boot]` settings, so
//! that TFTP and HTTP hand out the same answer the DHCP policy points to.
//!
//! A profile without a kernel means "boot from the local disk": each format gets its way of
//! handing the machine back to the firmware.

use std::{fmt::Write as _, net::IpAddr};

use crate::{
    model::boot::BootSettings,
    model::inventory::{Host, Inventory, Profile},
};

pub mod templates;

pub use crate::model::boot::ServerAddr;
pub use templates::{Lookup, TemplateError, TemplateErrors, Templates};

/// Everything a rendered file depends on.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The machine.
    pub host: &'a Host,
    /// Its profile.
    pub profile: &'a Profile,
    /// The address it has now (its reservation, or its lease).
    pub ip: Option<IpAddr>,
    /// The server's address on the host's network (`{{ server }}`: in brackets when IPv6, as
    /// a URL's host).
    pub server: ServerAddr,
    /// Global `[boot]` settings, which the profile's `boot` overrides.
    pub global: &'a BootSettings,
    /// The host's per-boot nonce (`{{ nonce }}`), when the file is rendered for a boot in
    /// progress; empty otherwise.
    pub nonce: Option<&'a str>,
}

impl Target<'_> {
    /// Base URL for images: the profile's or global `http_base` with `{server}` filled in,
    /// else TFTP from this server.
    pub fn image_base(&self) -> String {
        let base = self
            .profile
            .boot
            .http_base
            .as_ref()
            .or(self.global.http_base.as_ref());
        match base {
            Some(b) => b
                .replace("{server}", &self.server.to_string())
                .trim_end_matches('/')
                .to_owned(),
            None => format!("tftp://{}", self.server),
        }
    }

    /// The kernel command line, rendered for this host ([`templates::render_cmdline`]).
    pub fn cmdline(&self) -> Result<String, TemplateError> {
        templates::render_cmdline(self)
    }

    fn header(&self, comment: &str) -> String {
        format!(
            "{comment} rendered by bootfabric for {} ({}), profile {}\n",
            self.host.name, self.host.mac, self.profile.name
        )
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A pxelinux config (`pxelinux.cfg/01-<mac>`): images over TFTP, relative to its root.
/// Fails when the profile's cmdline does not render.
pub fn pxelinux(t: &Target<'_>) -> Result<String, TemplateError> {
    let mut out = t.header("#");
    match &t.profile.kernel {
        None => out.push_str("DEFAULT local\nPROMPT 0\nTIMEOUT 0\nLABEL local\n  LOCALBOOT 0\n"),
        Some(kernel) => {
            out.push_str("DEFAULT bootfabric\nPROMPT 0\nTIMEOUT 0\nLABEL bootfabric\n");
            let _ = writeln!(out, "  KERNEL {kernel}");
            if !t.profile.initrd.is_empty() {
                let _ = writeln!(out, "  INITRD {}", t.profile.initrd.join(","));
            }
            let cmdline = t.cmdline()?;
            if !cmdline.is_empty() {
                let _ = writeln!(out, "  APPEND {cmdline}");
            }
        }
    }
    Ok(out)
}

/// A GRUB config (`grub.cfg-01-<mac>`): images from GRUB's network root, which is the TFTP
/// server it was loaded from. Fails when the profile's cmdline does not render.
pub fn grub(t: &Target<'_>) -> Result<String, TemplateError> {
    let mut out = t.header("#");
    out.push_str("set timeout=0\nset default=0\n");
    match &t.profile.kernel {
        // Leaving GRUB hands the machine back to the firmware's next boot entry.
        None => out.push_str("exit\n"),
        Some(kernel) => {
            let _ = writeln!(out, "menuentry \"bootfabric {}\" {{", t.profile.name);
            let _ = writeln!(
                out,
                "  linux /{} {}",
                kernel.trim_start_matches('/'),
                t.cmdline()?
            );
            if !t.profile.initrd.is_empty() {
                let list: Vec<String> = t
                    .profile
                    .initrd
                    .iter()
                    .map(|i| format!("/{}", i.trim_start_matches('/')))
                    .collect();
                let _ = writeln!(out, "  initrd {}", list.join(" "));
            }
            out.push_str("}\n");
        }
    }
    Ok(out)
}

/// The iPXE lines that boot `t.profile` (or leave for the disk).
fn ipxe_boot(t: &Target<'_>, out: &mut String) -> Result<(), TemplateError> {
    match &t.profile.kernel {
        // `exit` returns to the firmware, which tries its next boot device (the disk).
        None => out.push_str("exit\n"),
        Some(kernel) => {
            let base = t.image_base();
            let mut args = String::new();
            for i in &t.profile.initrd {
                let _ = write!(args, " initrd={}", basename(i));
            }
            let cmdline = t.cmdline()?;
            if !cmdline.is_empty() {
                let _ = write!(args, " {cmdline}");
            }
            let _ = writeln!(
                out,
                "kernel {base}/{}{args}",
                kernel.trim_start_matches('/')
            );
            for i in &t.profile.initrd {
                let _ = writeln!(
                    out,
                    "initrd --name {} {base}/{}",
                    basename(i),
                    i.trim_start_matches('/')
                );
            }
            out.push_str("boot\n");
        }
    }
    Ok(())
}

/// An iPXE script: images from the HTTP base. Each initrd is named and passed as `initrd=`
/// so that EFI-stub kernels find them too. Fails when the profile's cmdline does not render.
pub fn ipxe(t: &Target<'_>) -> Result<String, TemplateError> {
    let mut out = String::from("#!ipxe\n");
    out.push_str(&t.header("#"));
    ipxe_boot(t, &mut out)?;
    Ok(out)
}

/// The iPXE script of a host: its profile, or a menu when it has more (`hosts[].menu`).
/// `None` when its profile is unknown; an error when a cmdline does not render.
pub fn host_script(
    inventory: &Inventory,
    host: &Host,
    ip: Option<IpAddr>,
    server: ServerAddr,
    global: &BootSettings,
) -> Option<Result<String, TemplateError>> {
    host_script_for_boot(inventory, host, ip, server, global, None)
}

/// [`host_script`] for a boot in progress, whose `nonce` fills `{{ nonce }}`.
pub fn host_script_for_boot(
    inventory: &Inventory,
    host: &Host,
    ip: Option<IpAddr>,
    server: ServerAddr,
    global: &BootSettings,
    nonce: Option<&str>,
) -> Option<Result<String, TemplateError>> {
    let profile = inventory.profile(&host.profile)?;
    let t = Target {
        host,
        profile,
        ip,
        server,
        global,
        nonce,
    };
    let others: Vec<&Profile> = host
        .menu
        .iter()
        .filter_map(|p| inventory.profile(p))
        .collect();
    Some(if others.is_empty() {
        ipxe(&t)
    } else {
        ipxe_menu(&t, &others, MENU_TIMEOUT_MS)
    })
}

/// How long a menu waits for a key before it boots the host's own profile.
pub const MENU_TIMEOUT_MS: u32 = 5000;

/// An iPXE script with a menu: the host's profile first and the default (chosen after
/// `timeout_ms` without a key), then `others`. Fails when a cmdline does not render.
pub fn ipxe_menu(
    t: &Target<'_>,
    others: &[&Profile],
    timeout_ms: u32,
) -> Result<String, TemplateError> {
    let mut out = String::from("#!ipxe\n");
    out.push_str(&t.header("#"));
    let _ = writeln!(out, "menu Bootfabric: {}", t.host.name);
    let all: Vec<&Profile> = std::iter::once(t.profile)
        .chain(others.iter().copied())
        .collect();
    for (i, p) in all.iter().enumerate() {
        let _ = writeln!(out, "item p{i} {}", p.name);
    }
    let _ = writeln!(
        out,
        "choose --default p0 --timeout {timeout_ms} target || set target p0\ngoto ${{target}}"
    );
    for (i, p) in all.iter().enumerate() {
        let _ = writeln!(out, ":p{i}");
        ipxe_boot(&Target { profile: p, ..*t }, &mut out)?;
    }
    Ok(out)
}

/// pxelinux's "boot from the local disk" (a profile without a kernel ends with it too).
pub const PXELINUX_LOCAL: &str = "DEFAULT local\nPROMPT 0\nTIMEOUT 0\nLABEL local\n  LOCALBOOT 0\n";
/// GRUB's: leaving GRUB hands the machine back to the firmware's next boot entry.
pub const GRUB_EXIT: &str = "set timeout=0\nset default=0\nexit\n";
/// iPXE's: `exit` returns to the firmware, which tries its next boot device (the disk).
pub const IPXE_EXIT: &str = "exit\n";

/// Why a host is told to boot from its disk, as a comment line.
fn disk_reason(comment: &str, host: &Host) -> String {
    format!(
        "{comment} bootfabric: {} ({}) boots from its disk: netboot = once, already used\n",
        host.name, host.mac
    )
}

/// The pxelinux config of a host whose answer is "boot from your disk"
/// ([`crate::model::inventory::BootAnswer::Disk`]).
pub fn pxelinux_disk(host: &Host) -> String {
    disk_reason("#", host) + PXELINUX_LOCAL
}

/// The GRUB config of a host whose answer is "boot from your disk".
pub fn grub_disk(host: &Host) -> String {
    disk_reason("#", host) + GRUB_EXIT
}

/// The iPXE script of a host whose answer is "boot from your disk".
pub fn ipxe_disk(host: &Host) -> String {
    format!("#!ipxe\n{}{IPXE_EXIT}", disk_reason("#", host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::boot::OptionSet, model::inventory::Mac};
    use std::net::Ipv4Addr;

    fn host() -> Host {
        Host {
            name: "node01".into(),
            mac: Mac([0x52, 0x54, 0, 0xb0, 0x0f, 0x01]),
            ip: Some(Ipv4Addr::new(10, 77, 0, 11)),
            ipv6: None,
            profile: "installer".into(),
            menu: Vec::new(),
            options: OptionSet::default(),
            model: None,
            rack: None,
            bmc: None,
            netboot: Default::default(),
            meta: Default::default(),
        }
    }

    fn profile(kernel: Option<&str>) -> Profile {
        Profile {
            name: "installer".into(),
            image: None,
            kernel: kernel.map(str::to_owned),
            initrd: vec!["debian/initrd.gz".into(), "extra/firmware.cpio".into()],
            cmdline: "console=ttyS0 url={http_base}/preseed/{host}.cfg".into(),
            boot: BootSettings::default(),
            sha256: Default::default(),
        }
    }

    fn target<'a>(h: &'a Host, p: &'a Profile, g: &'a BootSettings) -> Target<'a> {
        Target {
            host: h,
            profile: p,
            ip: h.ip.map(Into::into),
            server: Ipv4Addr::new(10, 77, 0, 1).into(),
            global: g,
            nonce: None,
        }
    }

    #[test]
    fn pxelinux_boots_the_profile_over_tftp() {
        let (h, p, g) = (
            host(),
            profile(Some("debian/linux")),
            BootSettings::defaults(),
        );
        let text = pxelinux(&target(&h, &p, &g)).expect("render");
        assert!(text.starts_with("# rendered by bootfabric for node01 (52:54:00:b0:0f:01)"));
        assert!(text.contains("DEFAULT bootfabric\n"));
        assert!(text.contains("  KERNEL debian/linux\n"));
        assert!(text.contains("  INITRD debian/initrd.gz,extra/firmware.cpio\n"));
        assert!(text.contains("  APPEND console=ttyS0 url=http://10.77.0.1/preseed/node01.cfg\n"));
    }

    #[test]
    fn grub_loads_from_its_network_root() {
        let (h, p, g) = (
            host(),
            profile(Some("debian/linux")),
            BootSettings::defaults(),
        );
        let text = grub(&target(&h, &p, &g)).expect("render");
        assert!(text.contains("  linux /debian/linux console=ttyS0"));
        assert!(text.contains("  initrd /debian/initrd.gz /extra/firmware.cpio\n"));
    }

    #[test]
    fn ipxe_names_each_initrd_for_efi_stub_kernels() {
        let (h, p, g) = (
            host(),
            profile(Some("debian/linux")),
            BootSettings::defaults(),
        );
        let text = ipxe(&target(&h, &p, &g)).expect("render");
        assert!(text.starts_with("#!ipxe\n"));
        assert!(text.contains(
            "kernel http://10.77.0.1/debian/linux initrd=initrd.gz initrd=firmware.cpio console=ttyS0"
        ));
        assert!(text.contains("initrd --name initrd.gz http://10.77.0.1/debian/initrd.gz\n"));
        assert!(text.ends_with("boot\n"));
    }

    #[test]
    fn profile_http_base_wins_and_no_base_means_tftp() {
        let h = host();
        let mut p = profile(Some("k"));
        p.boot.http_base = Some("http://images.example:8080/".into());
        let g = BootSettings::defaults();
        assert_eq!(
            target(&h, &p, &g).image_base(),
            "http://images.example:8080"
        );
        p.boot.http_base = None;
        let g = BootSettings::default();
        assert_eq!(target(&h, &p, &g).image_base(), "tftp://10.77.0.1");
    }

    #[test]
    fn a_menu_offers_every_profile_and_defaults_to_the_first() {
        let (h, p, g) = (
            host(),
            profile(Some("debian/linux")),
            BootSettings::defaults(),
        );
        let mut rescue = profile(Some("rescue/vmlinuz"));
        rescue.name = "rescue".into();
        rescue.initrd.clear();
        let text = ipxe_menu(&target(&h, &p, &g), &[&rescue], 5000).expect("render");
        assert!(text.contains("menu Bootfabric: node01\nitem p0 installer\nitem p1 rescue\n"));
        assert!(text.contains(
            "choose --default p0 --timeout 5000 target || set target p0\ngoto ${target}\n"
        ));
        let p1 = &text[text.find(":p1\n").expect("p1")..];
        assert!(p1.starts_with(":p1\nkernel http://10.77.0.1/rescue/vmlinuz console=ttyS0"));
        assert!(text
            .find(":p0\nkernel http://10.77.0.1/debian/linux")
            .is_some());
    }

    #[test]
    fn the_nonce_is_filled_in_and_never_left_as_braces() {
        let (h, mut p, g) = (
            host(),
            profile(Some("debian/linux")),
            BootSettings::defaults(),
        );
        p.cmdline = "url={http_base}/configs/{host}.ign?nonce={nonce}".into();
        let mut t = target(&h, &p, &g);
        let script = |t: &Target<'_>| ipxe(t).expect("render");
        assert!(script(&t).contains("url=http://10.77.0.1/configs/node01.ign?nonce=\n"));
        t.nonce = Some("0123abcd");
        assert!(script(&t).contains("url=http://10.77.0.1/configs/node01.ign?nonce=0123abcd\n"));
        // A cmdline written for the engine is not a legacy one: its `{nonce}` stays text.
        let mut both = p.clone();
        both.cmdline = "{nonce}{{ nonce }}".into();
        t.profile = &both;
        assert_eq!(t.cmdline().expect("render"), "{nonce}0123abcd");
    }

    #[test]
    fn no_kernel_hands_back_to_the_firmware() {
        let (h, p, g) = (host(), profile(None), BootSettings::defaults());
        let t = target(&h, &p, &g);
        assert!(pxelinux(&t).expect("render").contains("LOCALBOOT 0"));
        assert!(grub(&t).expect("render").ends_with("exit\n"));
        assert!(ipxe(&t).expect("render").ends_with("exit\n"));
    }

    /// The disk answer of `netboot = once` (used) is each format's kernel-less branch: the
    /// loaders leave for the disk the same way whichever path led there.
    #[test]
    fn the_disk_answer_is_the_kernelless_branch_of_each_format() {
        let (h, p, g) = (host(), profile(None), BootSettings::defaults());
        let t = target(&h, &p, &g);
        let (pxe, grub, ipxe) = (
            pxelinux(&t).expect("render"),
            grub(&t).expect("render"),
            ipxe(&t).expect("render"),
        );
        assert!(pxe.ends_with(PXELINUX_LOCAL), "{pxe}");
        assert!(grub.ends_with(GRUB_EXIT), "{grub}");
        assert!(ipxe.ends_with(IPXE_EXIT), "{ipxe}");

        let why = "# bootfabric: node01 (52:54:00:b0:0f:01) boots from its disk: netboot = once, already used\n";
        assert_eq!(
            pxelinux_disk(&h),
            format!("{why}DEFAULT local\nPROMPT 0\nTIMEOUT 0\nLABEL local\n  LOCALBOOT 0\n")
        );
        assert_eq!(
            grub_disk(&h),
            format!("{why}set timeout=0\nset default=0\nexit\n")
        );
        assert_eq!(ipxe_disk(&h), format!("#!ipxe\n{why}exit\n"));
    }
}
