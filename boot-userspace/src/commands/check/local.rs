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
                    let mut file = src.into_file();
                    match sha256_of(&mut file) {
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
    items
}

fn list(roots: &[&Path]) -> String {
    roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

fn sha256_of(file: &mut std::fs::File) -> std::io::Result<[u8; 32]> {
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
            "see the README's templates section"
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
    use super::*;

    #[test]
    fn sha256_and_hex_agree_with_a_known_digest() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").expect("write");
        let mut f = std::fs::File::open(&p).expect("open");
        assert_eq!(
            hex(&sha256_of(&mut f).expect("sha")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
