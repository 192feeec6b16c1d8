//! What the lab's machines boot: Debian's kernel (`apt-get download` + `dpkg -x`, never
//! installed) and a small initramfs built here from busybox-static, whose `/init` loads the
//! NIC driver, asks DHCP for an address and reports `POST /booted` to the URL on its kernel
//! command line (`bootfabric.booted=`), then powers the machine off.
//!
//! Both are cached under a folder the caller names (the workspace's `target/lab-cache`), so
//! a second run starts at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{run, LabError};

/// NIC drivers the initramfs loads (QEMU's virtio-net and e1000), with their dependencies.
const NIC_MODULES: [&str; 3] = ["virtio_pci", "virtio_net", "e1000"];

/// The initramfs's `/init`.
pub(crate) const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "bootfabric-init: kernel up after $(cut -d' ' -f1 /proc/uptime) s"
for m in $(cat /etc/modules); do insmod /lib/modules/$m.ko; done
ip link set lo up
iface=""
for n in 1 2 3 4 5 6 7 8 9 10; do
    for d in /sys/class/net/*; do
        [ "${d##*/}" = lo ] || iface="${d##*/}"
    done
    [ -n "$iface" ] && break
    sleep 1
done
ip link set "$iface" up
booted=$(sed -n 's/.*bootfabric\.booted=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "bootfabric-init: $iface, reporting to $booted"
# An IPv6-only boot: the address DHCPv6 gave the firmware comes on the command line (busybox
# has no DHCPv6 client); the router advertisement puts its prefix on-link.
ip6=$(sed -n 's/.*bootfabric\.ip6=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$ip6" ]; then
    # No duplicate address detection: DHCPv6 gave the address to this machine.
    echo 0 > "/proc/sys/net/ipv6/conf/$iface/accept_dad"
    ip -6 addr add "$ip6/64" dev "$iface"
    configured=yes
elif udhcpc -i "$iface" -n -q -t 10 -T 2 -s /etc/udhcpc.script; then
    configured=yes
fi
if [ -n "$configured" ]; then
    if wget -q -O - --post-data "" "$booted"; then
        echo "bootfabric-init: booted reported after $(cut -d' ' -f1 /proc/uptime) s"
    else
        echo "bootfabric-init: reporting booted failed"
    fi
else
    echo "bootfabric-init: no DHCP lease"
fi
sync
poweroff -f
"#;

pub(crate) const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    ;;
esac
"#;

/// The kernel and the initramfs, ready to serve.
#[derive(Clone, Debug)]
pub struct BootImage {
    /// Debian's `vmlinuz`.
    pub kernel: PathBuf,
    /// The initramfs (uncompressed newc cpio).
    pub initramfs: PathBuf,
    /// The kernel's version.
    pub version: String,
}

/// Holds `cache`'s lock until dropped: tests run in parallel, and two of them must not
/// download or unpack into the same folder at once.
pub(crate) fn lock_cache(cache: &Path) -> Result<std::fs::File, LabError> {
    use std::os::fd::AsRawFd as _;
    std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let path = cache.join(".lock");
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns; the result is checked.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "{}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(file)
}

/// Builds (or finds in `cache`) the kernel and the initramfs.
pub fn ensure(cache: &Path) -> Result<BootImage, LabError> {
    let _lock = lock_cache(cache)?;
    let linux = cache.join("linux");
    std::fs::create_dir_all(&linux).map_err(|e| format!("{}: {e}", linux.display()))?;
    let root = linux.join("root");
    let kernel = find_kernel(&root);
    let kernel = match kernel {
        Some(k) => k,
        None => {
            download_kernel(&linux)?;
            find_kernel(&root).ok_or("the linux-image package has no /boot/vmlinuz-*")?
        }
    };
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or("unexpected kernel file name")?
        .to_owned();
    let initramfs = cache.join(format!("initramfs-{version}.cpio"));
    let stamp = cache.join(format!("initramfs-{version}.inputs"));
    let inputs = format!("{INIT}{UDHCPC_SCRIPT}{NIC_MODULES:?}");
    if !initramfs.exists() || std::fs::read_to_string(&stamp).ok().as_deref() != Some(&inputs) {
        let modules = root.join("lib/modules").join(&version);
        build_initramfs(
            &modules,
            &NIC_MODULES,
            Path::new("/bin/busybox"),
            &initramfs,
        )?;
        std::fs::write(&stamp, inputs).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(BootImage {
        kernel,
        initramfs,
        version,
    })
}

pub(crate) fn find_kernel(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root.join("boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
}

/// `apt-get download` the package linux-image-amd64 depends on, and unpack it.
fn download_kernel(dir: &Path) -> Result<(), LabError> {
    let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    let package = kernel_package(&depends, "linux-image-amd64")?;
    // The package is 70 MB; the unpacked kernel and modules are what is used.
    download_and_unpack(&[&package], &[], &dir.join("dl"), &dir.join("root"))
}

/// The kernel package a `linux-image-<arch>` metapackage depends on, from `apt-cache depends`.
pub(crate) fn kernel_package(depends: &str, meta: &str) -> Result<String, LabError> {
    depends
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .filter(|p| p.starts_with("linux-image-") && !p.contains('<'))
        })
        .map(str::to_owned)
        .ok_or(format!(
            "apt-cache names no kernel package for {meta} (apt-get update?)"
        ))
}

/// `apt-get download`s each of `packages` (with `options` as `-o` settings) into `dl`,
/// unpacks it into `root` and deletes the `.deb`.
pub(crate) fn download_and_unpack(
    packages: &[&str],
    options: &[String],
    dl: &Path,
    root: &Path,
) -> Result<(), LabError> {
    std::fs::create_dir_all(dl).map_err(|e| format!("{}: {e}", dl.display()))?;
    let of = |package: &str, p: &Path| {
        p.extension().is_some_and(|x| x == "deb")
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")))
    };
    for package in packages {
        // A .deb an interrupted run left behind is not this download's.
        for old in std::fs::read_dir(dl).into_iter().flatten().flatten() {
            if of(package, &old.path()) {
                let _ = std::fs::remove_file(old.path());
            }
        }
        let mut cmd = Command::new("apt-get");
        cmd.args(["download", "-q", package]).current_dir(dl);
        for o in options {
            cmd.args(["-o", o]);
        }
        run(&mut cmd)?;
        let deb = std::fs::read_dir(dl)
            .map_err(|e| format!("{}: {e}", dl.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| of(package, p))
            .ok_or(format!("apt-get download {package} left no .deb"))?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(root))?;
        let _ = std::fs::remove_file(&deb);
    }
    Ok(())
}

/// Module names (`-` and `_` are the same) → their file, under `modules`.
fn module_index(modules: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![modules.join("kernel")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                out.insert(name.replace('-', "_"), p);
            }
        }
    }
    out
}

/// The `depends=` of a module, read from its `.modinfo` strings.
fn depends(ko: &[u8]) -> Vec<String> {
    ko.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|d| {
            String::from_utf8_lossy(d)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.replace('-', "_"))
                .collect()
        })
        .unwrap_or_default()
}

/// The initramfs: `busybox` (static, of the kernel's architecture), the init, and the
/// kernel modules `nic` names with their dependencies, from `modules`.
pub(crate) fn build_initramfs(
    modules: &Path,
    nic: &[&str],
    busybox: &Path,
    out: &Path,
) -> Result<(), LabError> {
    let extra = [(
        "etc/udhcpc.script".to_owned(),
        0o755,
        UDHCPC_SCRIPT.as_bytes().to_vec(),
    )];
    build_initramfs_with(modules, nic, busybox, INIT, &extra, out)
}

/// The folders every initramfs has.
const BASE_DIRS: [&str; 9] = [
    "bin",
    "sbin",
    "etc",
    "lib",
    "lib/modules",
    "proc",
    "sys",
    "dev",
    "tmp",
];

/// A file of an initramfs: its path inside, its mode and its bytes.
pub(crate) type InitramfsFile = (String, u32, Vec<u8>);

/// An initramfs of `busybox`, the init `init`, the kernel modules `wanted` names with their
/// dependencies (from `modules`; `/etc/modules` lists them in the order to load), and `extra`
/// files (their folders made).
pub(crate) fn build_initramfs_with(
    modules: &Path,
    wanted: &[&str],
    busybox: &Path,
    init: &str,
    extra: &[InitramfsFile],
    out: &Path,
) -> Result<(), LabError> {
    let nic = wanted;
    let index = module_index(modules);
    // Dependencies first: a depth-first walk, each module after what it depends on.
    let mut order: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        index: &BTreeMap<String, PathBuf>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), LabError> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let path = index
            .get(name)
            .ok_or_else(|| format!("kernel module {name} not found"))?;
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for d in depends(&bytes) {
            visit(&d, index, seen, order)?;
        }
        order.push(name.to_owned());
        Ok(())
    }
    for m in nic {
        visit(m, &index, &mut seen, &mut order)?;
    }
    let busybox = std::fs::read(busybox)
        .map_err(|e| format!("{} (package busybox-static): {e}", busybox.display()))?;
    let mut cpio = Cpio::default();
    for d in BASE_DIRS {
        cpio.dir(d);
    }
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, init.as_bytes());
    cpio.file("etc/modules", 0o644, (order.join("\n") + "\n").as_bytes());
    let mut dirs = BTreeSet::new();
    for (path, mode, bytes) in extra {
        let mut parent = Path::new(path).parent();
        let mut missing = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            missing.push(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        for d in missing.into_iter().rev() {
            if !BASE_DIRS.contains(&d.as_str()) && dirs.insert(d.clone()) {
                cpio.dir(&d);
            }
        }
        cpio.file(path, *mode, bytes);
    }
    for m in &order {
        let p = &index[m];
        let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
        cpio.file(&format!("lib/modules/{m}.ko"), 0o644, &bytes);
    }
    let tmp = out.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(&cpio.finish())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(())
}

/// A cpio archive in the "newc" format, which the kernel unpacks as an initramfs.
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// Debian's signed Secure Boot loaders, downloaded (never installed) into `cache`: shim
/// (package shim-signed, signed by Microsoft's UEFI CA) and the network GRUB it loads
/// (package grub-efi-amd64-signed, signed by Debian). Returns (shim, grub).
pub fn secure_boot_loaders(cache: &Path) -> Result<(PathBuf, PathBuf), LabError> {
    let _lock = lock_cache(cache)?;
    let dir = cache.join("secureboot");
    let root = dir.join("root");
    let shim = root.join("usr/lib/shim/shimx64.efi.signed");
    let grub = root.join("usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed");
    for (file, package) in [(&shim, "shim-signed"), (&grub, "grub-efi-amd64-signed")] {
        if !file.exists() {
            download_and_unpack(&[package], &[], &dir.join("dl"), &root)?;
        }
        if !file.exists() {
            return Err(format!("{package} has no {}", file.display()));
        }
    }
    Ok((shim, grub))
}

/// apt with its own lists, cache and (empty) dpkg status under one folder: downloads for
/// another architecture or release without touching the host's configuration.
pub(crate) struct Apt {
    options: Vec<String>,
    dir: PathBuf,
}

impl Apt {
    pub(crate) fn new(dir: &Path, arch: &str, sources: &Path) -> Result<Self, LabError> {
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for d in [lists.join("partial"), cache.join("archives/partial")] {
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "").map_err(|e| format!("{}: {e}", status.display()))?;
        }
        let mut options = vec![
            format!("APT::Architectures::={arch}"),
            format!("APT::Architecture={arch}"),
            format!("Dir::State::Lists={}", lists.display()),
            format!("Dir::Cache={}", cache.display()),
            format!("Dir::State::status={}", status.display()),
        ];
        options.push(format!("Dir::Etc::SourceList={}", sources.display()));
        options.push("Dir::Etc::SourceParts=/nonexistent".to_owned());
        let apt = Self {
            options,
            dir: dir.to_owned(),
        };
        apt.run(Command::new("apt-get").args(["-q", "update"]))?;
        Ok(apt)
    }

    pub(crate) fn run(&self, cmd: &mut Command) -> Result<String, LabError> {
        for o in &self.options {
            cmd.args(["-o", o]);
        }
        run(cmd)
    }

    /// Downloads `packages` and unpacks each into `root`.
    pub(crate) fn unpack(&self, packages: &[&str], root: &Path) -> Result<(), LabError> {
        download_and_unpack(packages, &self.options, &self.dir.join("dl"), root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_headers_are_110_bytes_and_entries_aligned() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert!(out.starts_with(b"070701"));
        assert_eq!(&out[110..115], b"init\0");
        assert!(out.len().is_multiple_of(4));
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn depends_are_read_from_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio-ring\0vermagic=6.1\0";
        assert_eq!(depends(ko), vec!["virtio", "virtio_ring"]);
        assert!(depends(b"\0depends=\0").is_empty());
    }
}
