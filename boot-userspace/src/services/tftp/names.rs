//! Which requested names are per-host boot files, and which host they name.
//!
//! The conventions are the bootloaders': pxelinux asks for `pxelinux.cfg/01-<mac>` and then
//! its address in hex (`C0A80A0B`, then ever shorter prefixes, then `default`); GRUB asks for
//! `grub.cfg-01-<mac>`, then `grub.cfg-<hex ip>` and its prefixes, then `grub.cfg`. Only the
//! full MAC and full address forms name one host; shorter prefixes and `default` are files the
//! operator puts in the root, which is how pxelinux falls back. Debian's signed network GRUB
//! (Secure Boot) asks only for `grub/grub.cfg`: rendered for a known peer under Secure Boot,
//! like the iPXE script name; the operator's file for anyone else.

use std::net::Ipv4Addr;

use crate::model::inventory::Mac;

/// The kind of file to render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A pxelinux config.
    Pxelinux,
    /// A GRUB config.
    Grub,
    /// An iPXE script.
    Ipxe,
}

/// Whose file is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The host with this MAC.
    Mac(Mac),
    /// The host with this address.
    Ip(Ipv4Addr),
    /// Whoever is asking (a shared name such as `boot.ipxe`).
    Peer,
}

/// A request for a per-host file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFile {
    /// What to render.
    pub format: Format,
    /// For whom.
    pub owner: Owner,
}

/// `01-aa-bb-cc-dd-ee-ff` (ARP type 1 and the MAC), any case.
fn mac_form(s: &str) -> Option<Mac> {
    let rest = s.strip_prefix("01-")?;
    if rest.len() != 17 || rest.contains(':') {
        return None;
    }
    rest.parse().ok()
}

/// Exactly eight hex digits: an address as pxelinux and GRUB spell it.
fn hex_ip(s: &str) -> Option<Ipv4Addr> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok().map(Ipv4Addr::from)
}

fn owner(s: &str) -> Option<Owner> {
    mac_form(s)
        .map(Owner::Mac)
        .or_else(|| hex_ip(s).map(Owner::Ip))
}

/// Classifies a requested name; `scripts` are the names iPXE scripts are served under
/// (`boot.ipxe_script` and its profile overrides). `None`: an ordinary file.
pub fn classify<'a>(name: &str, scripts: impl IntoIterator<Item = &'a str>) -> Option<HostFile> {
    let name = name.trim_start_matches("./");
    let (dir, file) = match name.rsplit_once('/') {
        Some((d, f)) => (d, f),
        None => ("", name),
    };
    if dir == "pxelinux.cfg" || dir.ends_with("/pxelinux.cfg") {
        return owner(file).map(|owner| HostFile {
            format: Format::Pxelinux,
            owner,
        });
    }
    // Debian's signed network GRUB (the one shim loads under Secure Boot) asks only for the
    // config under its prefix: one shared name, rendered for the asking host (the service
    // does so only for hosts under Secure Boot).
    if name == "grub/grub.cfg" {
        return Some(HostFile {
            format: Format::Grub,
            owner: Owner::Peer,
        });
    }
    if let Some(rest) = file.strip_prefix("grub.cfg-") {
        return owner(rest).map(|owner| HostFile {
            format: Format::Grub,
            owner,
        });
    }
    if scripts
        .into_iter()
        .any(|s| s.trim_start_matches('/') == name)
    {
        return Some(HostFile {
            format: Format::Ipxe,
            owner: Owner::Peer,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0, 0xb0, 0x0f, 0x01]);

    fn c(name: &str) -> Option<HostFile> {
        classify(name, ["boot.ipxe"])
    }

    #[test]
    fn pxelinux_names() {
        let by_mac = Some(HostFile {
            format: Format::Pxelinux,
            owner: Owner::Mac(MAC),
        });
        assert_eq!(c("pxelinux.cfg/01-52-54-00-b0-0f-01"), by_mac);
        assert_eq!(c("pxelinux.cfg/01-52-54-00-B0-0F-01"), by_mac);
        assert_eq!(c("bios/pxelinux.cfg/01-52-54-00-b0-0f-01"), by_mac);
        assert_eq!(
            c("pxelinux.cfg/0A4D000B"),
            Some(HostFile {
                format: Format::Pxelinux,
                owner: Owner::Ip(Ipv4Addr::new(10, 77, 0, 11)),
            })
        );
        // Prefixes, default and UUIDs are the operator's files.
        for name in [
            "pxelinux.cfg/0A4D000",
            "pxelinux.cfg/0A",
            "pxelinux.cfg/default",
            "pxelinux.cfg/b8945908-d6a6-41a9-611d-74a6ab80b83d",
            "pxelinux.cfg/01-52:54:00:b0:0f:01",
            "pxelinux.cfg/02-52-54-00-b0-0f-01",
        ] {
            assert_eq!(c(name), None, "{name}");
        }
    }

    #[test]
    fn grub_names() {
        assert_eq!(
            c("grub/grub.cfg-01-52-54-00-b0-0f-01"),
            Some(HostFile {
                format: Format::Grub,
                owner: Owner::Mac(MAC),
            })
        );
        assert_eq!(
            c("grub.cfg-0A4D000B").map(|f| f.owner),
            Some(Owner::Ip(Ipv4Addr::new(10, 77, 0, 11)))
        );
        assert_eq!(
            c("grub/grub.cfg"),
            Some(HostFile {
                format: Format::Grub,
                owner: Owner::Peer
            }),
            "signed GRUB's one config name, rendered for the peer"
        );
        assert_eq!(c("grub.cfg"), None);
        assert_eq!(c("other/grub/grub.cfg"), None);
        assert_eq!(c("grub/grub.cfg-0A4D"), None);
    }

    #[test]
    fn script_names_belong_to_the_peer() {
        let peer = Some(HostFile {
            format: Format::Ipxe,
            owner: Owner::Peer,
        });
        assert_eq!(c("boot.ipxe"), peer);
        assert_eq!(c("./boot.ipxe"), peer);
        assert_eq!(c("other.ipxe"), None);
        assert_eq!(c("ipxe.efi"), None);
    }
}
