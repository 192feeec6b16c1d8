//! Checks of this machine: interfaces, ports, files, disk.

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket},
    path::Path,
};

use nix::{ifaddrs::getifaddrs, net::if_::InterfaceFlags, sys::statvfs::statvfs};
use sha2::{Digest as _, Sha256};

use super::Item;
use crate::{config::Config, model::boot::BootSettings, model::files};

/// Each fabric interface exists, is up and has an IPv4 address; each DHCP subnet bound to
/// an interface has an address of that subnet on it.
pub fn interfaces(config: &Config) -> Vec<Item> {
    // Its own walk, not the fabric's: the check reports flags (up or down) and every address
    // with its netmask, which the services have no use for.
    let addrs: Vec<_> = getifaddrs().map(|a| a.collect()).unwrap_or_default();
    let fabric = crate::fabric::Fabric::resolve(&config.interfaces);
    let mut items = Vec::new();
    for name in &config.interfaces {
        let subject = format!("interface {name}");
        let mine: Vec<_> = addrs.iter().filter(|a| &a.interface_name == name).collect();
        if fabric.get(name).is_none_or(|i| i.index.is_none()) {
            items.push(Item::fail(
                subject,
                "does not exist",
                format!(
                    "create it, or correct fabric.interfaces (interfaces here: {})",
                    {
                        let names: BTreeSet<&str> =
                            addrs.iter().map(|a| a.interface_name.as_str()).collect();
                        names.into_iter().collect::<Vec<_>>().join(", ")
                    }
                ),
            ));
            continue;
        }
        if !mine
            .iter()
            .any(|a| a.flags.contains(InterfaceFlags::IFF_UP))
        {
            items.push(Item::fail(
                subject,
                "is down",
                format!("ip link set {name} up"),
            ));
            continue;
        }
        let v4: Vec<Ipv4Addr> = mine
            .iter()
            .filter_map(|a| a.address.as_ref()?.as_sockaddr_in().map(|s| s.ip()))
            .collect();
        if v4.is_empty() {
            items.push(Item::fail(
                subject,
                "is up but has no IPv4 address (DHCP, TFTP and HTTP answer from it)",
                format!("ip addr add <address>/<prefix> dev {name}"),
            ));
            continue;
        }
        let subnets: Vec<_> = config
            .dhcp
            .iter()
            .flat_map(|d| &d.subnets)
            .filter(|s| s.interface.as_deref() == Some(name.as_str()))
            .collect();
        let mut ok = true;
        for s in &subnets {
            if !v4.iter().any(|ip| s.net.contains(ip)) {
                ok = false;
                items.push(Item::fail(
                    subject.clone(),
                    format!(
                        "has {} but no address in its DHCP subnet {}",
                        join(&v4),
                        s.net
                    ),
                    format!(
                        "ip addr add <an address of {}>/{} dev {name}, or correct the subnet's interface",
                        s.net,
                        s.net.prefix_len()
                    ),
                ));
            }
        }
        if ok {
            items.push(Item::pass(subject, format!("up, {}", join(&v4))));
        }
    }
    items
}

/// DHCPv6: each directly attached prefix has the server's address on its interface (the
/// boot URLs name it; the service refuses to start without it), router advertisements are on
/// (iPXE starts DHCPv6 only when an advertisement's M flag says so), and relayed prefixes
/// have `dhcp6.relays`.
pub fn dhcp6(config: &Config) -> Vec<Item> {
    let Some(d) = &config.dhcp6 else {
        return Vec::new();
    };
    let fabric = crate::fabric::Fabric::resolve(&config.interfaces);
    let mut items = Vec::new();
    for (i, s) in d.subnets.iter().enumerate() {
        let subject = format!("dhcp6.subnets[{i}] {}", s.net);
        let Some(name) = &s.interface else {
            continue;
        };
        match fabric.get(name).and_then(|f| f.ipv6) {
            Some(ip) if s.net.contains(&ip) => {
                items.push(Item::pass(subject, format!("on {name}, served as {ip}")))
            }
            Some(ip) => items.push(Item::warn(
                subject,
                format!("{name}'s IPv6 address {ip} is outside {}: boot URLs name it, clients reach it only through a router", s.net),
                format!("ip -6 addr add <an address of {}>/{} dev {name}", s.net, s.net.prefix_len()),
            )),
            None => items.push(Item::fail(
                subject,
                format!("{name} has no IPv6 address beyond its link-local one: DHCPv6 does not start"),
                format!("ip -6 addr add <an address of {}>/{} dev {name}", s.net, s.net.prefix_len()),
            )),
        }
    }
    if !config.router_advertisements && d.subnets.iter().any(|s| s.interface.is_some()) {
        items.push(Item::warn(
            "dhcp6 and router advertisements",
            "fabric.router_advertisements is off: clients (iPXE among them) ask DHCPv6 only when a router advertisement sets the M flag",
            "set fabric.router_advertisements = \"auto\", or have the segment's router advertise M=1",
        ));
    }
    if let Some(why) = unguarded_relays6(d) {
        items.push(Item::warn(
            "dhcp6.relays",
            why,
            "list the relay agents' source addresses in dhcp6.relays ([] when nothing relays)",
        ));
    }
    items
}

/// Why `dhcp6.relays` should be set, if it should: unset, a Relay-forward from any source
/// is answered to that source (a reflection), relayed prefixes or not, since a relayed
/// message may name a directly attached prefix as its link.
fn unguarded_relays6(d: &crate::config::Dhcp6Config) -> Option<String> {
    if d.relays.is_some() {
        return None;
    }
    let relayed: Vec<String> = d
        .subnets
        .iter()
        .filter(|s| s.interface.is_none())
        .map(|s| s.net.to_string())
        .collect();
    Some(if relayed.is_empty() {
        "unset: a Relay-forward from any source address is answered (to that address), though no relayed prefix is configured".to_owned()
    } else {
        format!(
            "unset: Relay-forward messages for {} are accepted from any source address",
            relayed.join(", ")
        )
    })
}

fn join(ips: &[Ipv4Addr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ports the services need are free (bound without address reuse, the way a second
/// server would collide).
pub fn ports(config: &Config) -> Vec<Item> {
    let any = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    let mut wanted: Vec<(String, bool, SocketAddr, &str)> = Vec::new();
    if config.dhcp.is_some() {
        wanted.push(("67/udp".into(), true, any(67), "DHCP"));
    }
    if config.tftp.is_some() {
        wanted.push(("69/udp".into(), true, any(69), "TFTP"));
    }
    if let Some(h) = &config.http {
        wanted.push((format!("{}/tcp", h.port), false, any(h.port), "HTTP"));
        if let Some(t) = &h.tls {
            wanted.push((format!("{}/tcp", t.port), false, any(t.port), "HTTPS"));
        }
    }
    wanted.push((
        format!("{}/tcp", config.admin.listen.port()),
        false,
        config.admin.listen,
        "admin API",
    ));
    wanted
        .into_iter()
        .filter(|(_, _, addr, _)| addr.port() != 0)
        .map(|(label, udp, addr, what)| {
            let subject = format!("port {label}");
            let bound = if udp {
                UdpSocket::bind(addr).map(drop)
            } else {
                TcpListener::bind(addr).map(drop)
            };
            match bound {
                Ok(()) => Item::pass(subject, format!("free for {what}")),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Item::fail(
                    subject,
                    format!("in use: {what} cannot bind it"),
                    format!(
                        "see who holds it: ss -{}lpn 'sport = :{}' (another {what} server, or bootfabric already running?)",
                        if udp { "u" } else { "t" },
                        addr.port()
                    ),
                ),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Item::fail(
                    subject,
                    format!("not allowed to bind it: {e}"),
                    "run as root or with CAP_NET_BIND_SERVICE (the systemd unit grants it)",
                ),
                Err(e) => Item::fail(subject, format!("cannot bind {addr}: {e}"), "see the error"),
            }
        })
        .collect()
}

/// Every file a profile or the boot settings name is there, readable as the server would
/// serve it (confinement included) and, when the profile gives one, matches its SHA-256.
pub fn files(config: &Config, checksums: bool) -> Vec<Item> {
    let tftp_root = config.tftp.as_ref().map(|t| t.root.as_path());
    let roots = config.image_roots();
    let mut items = Vec::new();
    for p in config.inventory.profiles().values() {
        for f in p.files() {
            let subject = format!("profile {} file {f}", p.name);
            if roots.is_empty() {
                items.push(Item::fail(
                    subject,
                    "no image root to serve it from",
                    "set http.root (or tftp.root)",
                ));
                continue;
            }
            let origin = config.http.as_ref().and_then(|h| h.origin.as_ref());
            let (root, src) = match files::find(&roots, f) {
                // Fetched (and checked against its sha256) on its first request.
                None if origin.is_some() => {
                    let url = origin.map(|o| o.url.to_string()).unwrap_or_default();
                    items.push(Item::pass(
                        subject,
                        format!(
                            "not here yet: fetched from http.origin {url} on its first request"
                        ),
                    ));
                    continue;
                }
                None => {
                    items.push(Item::fail(
                        subject,
                        format!("not found under {}", list(&roots)),
                        format!(
                            "put it at {}, or correct profiles.{}",
                            roots[0].join(f.trim_start_matches('/')).display(),
                            p.name
                        ),
                    ));
                    continue;
                }
                Some((root, Err(e))) => {
                    items.push(Item::fail(
                        subject,
                        format!("under {}: cannot be served: {e}", root.display()),
                        "make it a regular, readable file inside the root (no symlink out of it)",
                    ));
                    continue;
                }
                Some((root, Ok(src))) => (root, src),
            };
            let size = src.size();
            match (checksums, p.sha256.get(f)) {
                (true, Some(want)) => {
                    let file = src.into_file();
                    match sha256_of(&file) {
                        Ok(got) if &got == want => items.push(Item::pass(
                            subject,
                            format!("{size} bytes under {}, SHA-256 matches", root.display()),
                        )),
                        Ok(got) => items.push(Item::fail(
                            subject,
                            format!(
                                "SHA-256 is {} but profiles.{}.sha256 says {}",
                                hex(&got),
                                p.name,
                                hex(want)
                            ),
                            "replace the file with the intended one, or update the checksum",
                        )),
                        Err(e) => items.push(Item::fail(
                            subject,
                            format!("cannot be read: {e}"),
                            "check the file's permissions and the disk",
                        )),
                    }
                }
                _ => items.push(Item::pass(
                    subject,
                    format!("{size} bytes under {}", root.display()),
                )),
            }
        }
    }
    // Bootloaders the fabric serves itself: by TFTP when this daemon is the next server.
    if let Some(root) = tftp_root {
        let mut seen = BTreeSet::new();
        let layers: Vec<BootSettings> = std::iter::once(config.boot.clone())
            .chain(
                config
                    .inventory
                    .profiles()
                    .values()
                    .map(|p| p.boot.over(&config.boot)),
            )
            .collect();
        for b in layers.iter().filter(|b| b.next_server.is_none()) {
            for f in [&b.bios, &b.uefi_x64, &b.uefi_x86, &b.uefi_arm64]
                .into_iter()
                .flatten()
            {
                if !seen.insert(f.clone()) {
                    continue;
                }
                let subject = format!("bootloader {f}");
                items.push(match files::open(root, f) {
                    Ok(src) => Item::pass(
                        subject,
                        format!("{} bytes under {}", src.size(), root.display()),
                    ),
                    Err(e) => Item::fail(
                        subject,
                        format!("under {}: {e}", root.display()),
                        format!(
                            "copy it there (Debian: /usr/lib/ipxe/{} from package ipxe), or change [boot]",
                            Path::new(f)
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        ),
                    ),
                });
            }
        }
    }
    if let Some(t) = &config.tftp {
        items.extend(kernel_files(t, config.xdp_mode));
    }
    items.extend(http_boot(config));
    items.extend(secure_boot(config, tftp_root));
    items
}

/// Under Secure Boot the firmware runs only signed programs: the shim, the GRUB it loads
/// (`grubx64.efi` beside it) and each Secure Boot profile's kernel must carry an Authenticode
/// signature. The signature is not verified against the firmware's keys here, only found.
fn secure_boot(config: &Config, tftp_root: Option<&Path>) -> Vec<Item> {
    let mut items = Vec::new();
    let mut seen = BTreeSet::new();
    let mut one = |items: &mut Vec<Item>, subject: String, root: &Path, name: &str, fix: &str| {
        if !seen.insert(subject.clone()) {
            return;
        }
        let signed = files::open(root, name)
            .map_err(|e| e.to_string())
            .and_then(|src| {
                let mut head = Vec::new();
                src.into_file()
                    .take(PE_HEADERS)
                    .read_to_end(&mut head)
                    .map_err(|e| e.to_string())?;
                authenticode(&head)
            });
        items.push(match signed {
            Ok(true) => Item::pass(
                subject,
                format!("signed (Authenticode), under {}", root.display()),
            ),
            Ok(false) => Item::warn(
                subject,
                "not signed: Secure Boot firmware refuses to run it",
                fix.to_owned(),
            ),
            Err(e) => Item::warn(
                subject,
                format!("under {}: {e}", root.display()),
                fix.to_owned(),
            ),
        });
    };
    let global = config.secure_boot_layers();
    for (whose, b, profile) in global {
        let Some(root) = tftp_root else {
            items.push(Item::warn(
                format!("secure boot ({whose})"),
                "no tftp.root: shim and GRUB are loaded over TFTP",
                "set tftp.root and put shimx64.efi and grubx64.efi there",
            ));
            continue;
        };
        if let Some(shim) = &b.shim_x64 {
            one(
                &mut items,
                format!("secure boot shim {shim}"),
                root,
                shim,
                "copy Debian's /usr/lib/shim/shimx64.efi.signed (package shim-signed) there",
            );
            let grub = match shim.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/grubx64.efi"),
                None => "grubx64.efi".to_owned(),
            };
            one(
                &mut items,
                format!("secure boot GRUB {grub}"),
                root,
                &grub,
                "copy Debian's /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed (package grub-efi-amd64-signed) there as grubx64.efi",
            );
        }
        if let Some(kernel) = profile.and_then(|p| p.kernel.as_ref()) {
            one(
                &mut items,
                format!("secure boot kernel {kernel}"),
                root,
                kernel,
                "boot a signed kernel (Debian's linux-image-*-amd64 is; its -unsigned twin is not)",
            );
        }
    }
    items
}

/// Bytes read to find a PE file's certificate table: the DOS stub, the PE and optional
/// headers, and the data directories sit in the first few hundred bytes in practice.
const PE_HEADERS: u64 = 64 * 1024;

/// Whether a PE image (its first bytes) has an Authenticode certificate table: the optional
/// header's data directory 4 (IMAGE_DIRECTORY_ENTRY_SECURITY) with a non-zero size.
fn authenticode(head: &[u8]) -> Result<bool, String> {
    let u16_at = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        head.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if head.get(..2) != Some(b"MZ") {
        return Err("not an EFI program (no MZ header)".to_owned());
    }
    let pe = u32_at(0x3c).ok_or("cut short")? as usize;
    if head.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err("not an EFI program (no PE header)".to_owned());
    }
    let optional = pe + 24;
    let (count_at, dirs_at) = match u16_at(optional).ok_or("cut short")? {
        0x10b => (optional + 92, optional + 96),
        0x20b => (optional + 108, optional + 112),
        m => return Err(format!("unknown PE optional header magic {m:#x}")),
    };
    if u32_at(count_at).ok_or("cut short")? <= 4 {
        return Ok(false);
    }
    Ok(u32_at(dirs_at + 4 * 8 + 4).ok_or("cut short")? > 0)
}

/// Programs UEFI HTTP-boot clients are sent to this daemon for are under `http.root` (HTTP
/// serves files from there alone; a warning only: the defaults name `ipxe.efi`, and fleets
/// without HTTP boot never ask), and where they come over HTTPS, the certificate is one EDK2
/// firmware can verify.
fn http_boot(config: &Config) -> Vec<Item> {
    let Some(http) = &config.http else {
        return Vec::new();
    };
    let roots: Vec<&Path> = http.root.as_deref().into_iter().collect();
    let layers = std::iter::once(config.boot.clone()).chain(
        config
            .inventory
            .profiles()
            .values()
            .map(|p| p.boot.over(&config.boot)),
    );
    let mut seen = BTreeSet::new();
    let mut items = Vec::new();
    let mut https = false;
    for b in layers {
        for f in [&b.uefi_http_x64, &b.uefi_http_arm64].into_iter().flatten() {
            let Some((path, tls)) = served_here(f, b.http_base.as_deref()) else {
                continue;
            };
            https |= tls;
            if !seen.insert(path.clone()) {
                continue;
            }
            let subject = format!("HTTP-boot program {path}");
            items.push(match files::find(&roots, &path) {
                Some((root, Ok(src))) => Item::pass(
                    subject,
                    format!("{} bytes under {}", src.size(), root.display()),
                ),
                Some((root, Err(e))) => Item::warn(
                    subject,
                    format!("under {}: cannot be served: {e}", root.display()),
                    "make it a regular, readable file inside the root",
                ),
                None => Item::warn(
                    subject,
                    match roots.first() {
                        Some(root) => format!(
                            "not found under http.root {}: UEFI HTTP-boot clients would get 404",
                            root.display()
                        ),
                        None => "http.root is unset: UEFI HTTP-boot clients would get 404".to_owned(),
                    },
                    "copy it into http.root (Debian: /usr/lib/ipxe/ipxe.efi from package ipxe), or change boot.uefi_http_x64",
                ),
            });
        }
    }
    if let (true, Some(tls)) = (https, &http.tls) {
        items.push(firmware_certificate(&tls.files.key));
    }
    items
}

/// The path a UEFI HTTP-boot setting asks this daemon for, and whether over HTTPS; `None`
/// when it names another server.
fn served_here(setting: &str, http_base: Option<&str>) -> Option<(String, bool)> {
    let (url, path) = if crate::model::boot::is_url(setting) {
        (setting, "")
    } else {
        (http_base?, setting)
    };
    let (tls, rest) = match url.split_once("://{server}") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => return None,
    };
    // Past an optional port, what is left is the path under the roots.
    let prefix = rest.trim_start_matches(|c: char| c == ':' || c.is_ascii_digit());
    let joined = format!(
        "{}/{}",
        prefix.trim_matches('/'),
        path.trim_start_matches('/')
    );
    Some((joined.trim_matches('/').to_owned(), tls))
}

/// EDK2's TLS (OVMF, most servers' UEFI) verifies RSA signatures only.
fn firmware_certificate(key: &Path) -> Item {
    use rustls::pki_types::{pem::PemObject as _, PrivateKeyDer};
    let subject = "HTTPS for UEFI HTTP boot";
    let algorithm = PrivateKeyDer::from_pem_file(key)
        .ok()
        .and_then(|k| rustls::crypto::ring::sign::any_supported_type(&k).ok())
        .map(|k| k.algorithm());
    match algorithm {
        Some(rustls::SignatureAlgorithm::RSA) => Item::pass(
            subject,
            "an RSA certificate, which EDK2 firmware can verify (TLS 1.2 DHE-RSA offered)",
        ),
        Some(other) => Item::warn(
            subject,
            format!("http.tls_key is {other:?}: EDK2-based firmware (OVMF, most servers' UEFI) verifies RSA certificates only"),
            "issue an RSA certificate (and CA) for http.tls_cert where firmware boots over HTTPS",
        ),
        None => Item::warn(
            subject,
            "http.tls_key cannot be read as a signing key",
            "see the daemon's start-up error for http.tls_key",
        ),
    }
}

/// `tftp.kernel_files`: each is there to be served, and together they fit
/// `tftp.kernel_bytes` (the slots the daemon fills at start, first fit in this order).
fn kernel_files(t: &crate::config::TftpConfig, xdp: crate::config::XdpModeSetting) -> Vec<Item> {
    use bootfabric_abi::tftp::{slots_for, CHUNK_BYTES, WINDOW_MAX};
    let subject = "tftp.kernel_files";
    if xdp == crate::config::XdpModeSetting::Off {
        return vec![Item::pass(
            subject,
            "xdp.mode = \"off\": every TFTP transfer is served in userspace",
        )];
    }
    if t.kernel_files.is_empty() {
        return vec![Item::pass(
            subject,
            "[]: every TFTP transfer is served in userspace",
        )];
    }
    let capacity = t.kernel_bytes / CHUNK_BYTES as u64;
    let mut used = 0u64;
    let mut loaded = Vec::new();
    let mut items = Vec::new();
    for name in &t.kernel_files {
        match files::open(&t.root, name) {
            Ok(src) => {
                let slots = slots_for(src.size());
                if used + slots > capacity {
                    items.push(Item::warn(
                        format!("{subject}: {name}"),
                        format!(
                            "{} bytes do not fit the {} bytes left of tftp.kernel_bytes: served in userspace",
                            src.size(),
                            (capacity - used) * CHUNK_BYTES as u64
                        ),
                        format!(
                            "raise tftp.kernel_bytes to at least {}",
                            (used + slots) * CHUNK_BYTES as u64
                        ),
                    ));
                } else {
                    used += slots;
                    loaded.push(name.as_str());
                }
            }
            Err(e) => items.push(Item::warn(
                format!("{subject}: {name}"),
                format!(
                    "under {}: {e}: served by neither path until it is there",
                    t.root.display()
                ),
                "put the file in tftp.root, or take it out of tftp.kernel_files",
            )),
        }
    }
    items.insert(
        0,
        Item::pass(
            subject,
            format!(
                "the kernel answers transfers (lock-step and windows of up to {}) of {} ({} of {} bytes of tftp.kernel_bytes)",
                WINDOW_MAX,
                if loaded.is_empty() {
                    "no file".to_owned()
                } else {
                    loaded.join(", ")
                },
                used * CHUNK_BYTES as u64,
                capacity * CHUNK_BYTES as u64
            ),
        ),
    );
    items
}

fn list(roots: &[&Path]) -> String {
    roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

pub(super) fn sha256_of(mut file: &std::fs::File) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The config templates and cmdlines: how many rendered for how many hosts (the load already
/// refused any that does not render), and a warning per file worth a look (legacy syntax,
/// a file that cannot be served).
pub fn templates(config: &Config) -> Vec<Item> {
    let t = &config.templates;
    let checked = t.check_all(&config.inventory, &config.boot, |_| Ipv4Addr::UNSPECIFIED);
    let mut items = vec![Item::pass(
        "templates",
        format!(
            "{} config file(s) and the profiles' cmdlines: {} render(s) for {} host(s)",
            t.len(),
            checked.renders,
            checked.hosts
        ),
    )];
    for e in checked
        .errors
        .iter()
        .take(crate::model::render::templates::ERRORS_SHOWN)
    {
        items.push(Item::fail(
            "templates",
            e.to_string(),
            "correct the template, or give the host the value (`meta`), or guard it with `is defined`",
        ));
    }
    let legacy_fix = "write the variables instead: {host} is {{ hostname }}, {mac} {{ host.mac }}, {profile} {{ profile.name }}, {ip} {server} {http_base} {nonce} are {{ ip }} and so on (README: templates)";
    for w in t.warnings() {
        let fix = if w.ends_with("legacy {token} syntax, translated") {
            legacy_fix
        } else {
            "see docs/configuration.md, \"Templates\""
        };
        items.push(Item::warn("templates", w.clone(), fix));
    }
    for p in config.inventory.profiles().values() {
        if crate::model::render::templates::uses_legacy_tokens(&p.cmdline) {
            items.push(Item::warn(
                "templates",
                format!(
                    "{}: legacy {{token}} syntax, translated",
                    crate::model::render::templates::cmdline_file(&p.name)
                ),
                legacy_fix,
            ));
        }
    }
    items
}

/// Free space where the daemon writes (the lease journal) and under the image roots.
pub fn disk(config: &Config) -> Vec<Item> {
    const MIB: u64 = 1 << 20;
    let mut places: Vec<(&str, &Path, u64, u64)> = Vec::new();
    // The journal must be able to grow: below 64 MiB it may fail to commit leases.
    let state = if config.state_dir.exists() {
        config.state_dir.as_path()
    } else {
        config.state_dir.parent().unwrap_or(Path::new("/"))
    };
    places.push(("state", state, 64 * MIB, 512 * MIB));
    if let Some(r) = config.http.as_ref().and_then(|h| h.root.as_deref()) {
        places.push(("http.root", r, 0, 1024 * MIB));
    }
    if let Some(t) = &config.tftp {
        places.push(("tftp.root", &t.root, 0, 256 * MIB));
    }
    places
        .into_iter()
        .map(|(what, path, fail_below, warn_below)| {
            let subject = format!("disk {what} ({})", path.display());
            match statvfs(path) {
                Ok(s) => {
                    let free = s.blocks_available() * s.fragment_size();
                    let detail = format!("{} MiB free", free / MIB);
                    if free < fail_below {
                        Item::fail(subject, detail, "free space on that file system")
                    } else if free < warn_below {
                        Item::warn(
                            subject,
                            detail,
                            "free space on that file system before it fills",
                        )
                    } else {
                        Item::pass(subject, detail)
                    }
                }
                Err(e) => Item::fail(subject, format!("statvfs: {e}"), "check the path"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    fn tftp(root: &Path, files: &[&str], kernel_bytes: u64) -> crate::config::TftpConfig {
        crate::config::TftpConfig {
            root: root.canonicalize().expect("root"),
            max_windowsize: 64,
            max_retries: 5,
            mtu: 1500,
            max_transfers: 8,
            max_transfers_per_client: 8,
            requests_per_second: 100,
            requests_per_second_per_client: 100,
            max_timeout_s: 5,
            max_transfer: std::time::Duration::from_secs(60),
            netascii_budget_bytes: 1 << 20,
            kernel_files: files.iter().map(|f| (*f).to_owned()).collect(),
            kernel_bytes,
        }
    }

    /// Each listed file is there, and together they fit `tftp.kernel_bytes` in the order the
    /// daemon fills the slots; what does not is a warning that names the size to set.
    #[test]
    fn dhcp6_relays_unset_is_warned_whether_or_not_a_prefix_is_relayed() {
        let d6 = |text: &str| {
            let w: crate::config::dhcp6::WireDhcp6 = toml::from_str(text).expect("toml");
            crate::config::Dhcp6Config::from_wire(&w, &["fabric0".to_owned()]).expect("valid")
        };
        let on_link = "[[subnets]]\ncidr = \"2001:db8:77::/64\"\ninterface = \"fabric0\"\n";
        let relayed = "[[subnets]]\ncidr = \"2001:db8:78::/64\"\n";
        let why = unguarded_relays6(&d6(on_link)).expect("warned");
        assert!(why.contains("no relayed prefix"), "{why}");
        let why = unguarded_relays6(&d6(&format!("{on_link}{relayed}"))).expect("warned");
        assert!(why.contains("2001:db8:78::/64"), "{why}");
        assert_eq!(
            unguarded_relays6(&d6(&format!("relays = []\n{on_link}"))),
            None
        );
    }

    #[test]
    fn kernel_files_are_checked_against_the_root_and_the_budget() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("small.efi"), vec![1u8; 1000]).expect("write");
        std::fs::write(dir.path().join("big.efi"), vec![2u8; 100_000]).expect("write");
        let on = crate::config::XdpModeSetting::Auto;
        // 2 slots: small.efi takes 1, big.efi would take 4.
        let items = kernel_files(
            &tftp(dir.path(), &["small.efi", "big.efi", "gone.efi"], 65_536),
            on,
        );
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[0].status, Status::Pass);
        assert!(
            items[0]
                .detail
                .contains("of small.efi (32768 of 65536 bytes"),
            "{items:?}"
        );
        assert_eq!(items[1].status, Status::Warn);
        assert!(items[1].subject.ends_with("big.efi"), "{items:?}");
        assert_eq!(
            items[1].fix.as_deref(),
            Some("raise tftp.kernel_bytes to at least 163840")
        );
        assert_eq!(items[2].status, Status::Warn);
        assert!(items[2].subject.ends_with("gone.efi"), "{items:?}");
        // Off, and an empty list, leave every transfer to userspace and say so.
        let off = kernel_files(
            &tftp(dir.path(), &["small.efi"], 65_536),
            crate::config::XdpModeSetting::Off,
        );
        assert_eq!(off.len(), 1);
        assert!(off[0].detail.contains("xdp.mode"));
        assert!(kernel_files(&tftp(dir.path(), &[], 65_536), on)[0]
            .detail
            .starts_with("[]"));
    }

    #[test]
    fn http_boot_paths_served_here_are_found_and_others_skipped() {
        let base = Some("http://{server}");
        assert_eq!(
            served_here("ipxe.efi", base),
            Some(("ipxe.efi".into(), false))
        );
        assert_eq!(
            served_here("efi/ipxe.efi", Some("https://{server}:8443/boot/")),
            Some(("boot/efi/ipxe.efi".into(), true))
        );
        assert_eq!(
            served_here("https://{server}/ipxe.efi", base),
            Some(("ipxe.efi".into(), true))
        );
        assert_eq!(served_here("http://images.example/ipxe.efi", base), None);
        assert_eq!(served_here("ipxe.efi", Some("http://images.example")), None);
        assert_eq!(served_here("ipxe.efi", None), None);
    }

    #[test]
    fn authenticode_tables_are_found_in_pe_headers() {
        // A minimal PE32+ header: MZ, e_lfanew 0x40, "PE\0\0", COFF, optional header with
        // 16 data directories; the security directory's size decides.
        let mut pe = vec![0u8; 0x40 + 24 + 112 + 16 * 8];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        pe[0x40..0x44].copy_from_slice(b"PE\0\0");
        let opt = 0x40 + 24;
        pe[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        pe[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        assert_eq!(authenticode(&pe), Ok(false));
        let security = opt + 112 + 4 * 8;
        pe[security + 4..security + 8].copy_from_slice(&1800u32.to_le_bytes());
        assert_eq!(authenticode(&pe), Ok(true));
        assert!(authenticode(b"\x7fELF").is_err());
        assert!(authenticode(&pe[..0x50]).is_err(), "cut short");
    }

    #[test]
    fn sha256_and_hex_agree_with_a_known_digest() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let f = std::fs::File::open(&p).expect("open");
        assert_eq!(
            hex(&sha256_of(&f).expect("sha")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
