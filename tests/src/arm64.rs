//! What the lab's arm64 UEFI machines boot, downloaded (never installed) into the lab cache:
//! Debian's arm64 kernel and busybox-static (bookworm, through a private apt configuration
//! for the arm64 architecture, so the host's dpkg and apt are untouched), an initramfs
//! built from them with the same `/init` as the x86 machines, and iPXE for arm64
//! (`ipxe-arm64.efi`, which bookworm's `ipxe` lacks: trixie's, see [`crate::ipxe`]). The
//! machines themselves are QEMU's `virt` board with AAVMF (Debian's `qemu-system-arm` and
//! `qemu-efi-aarch64`, installed by `cargo xtask setup`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    bootimage::{build_initramfs, find_kernel, kernel_package, lock_cache, Apt},
    LabError,
};

/// QEMU's arm64 emulator.
pub const QEMU: &str = "qemu-system-aarch64";
/// AAVMF, Debian's UEFI for arm64 virtual machines.
pub const CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
/// Its variables template.
pub const VARS: &str = "/usr/share/AAVMF/AAVMF_VARS.fd";

/// virtio-net on the `virt` board's PCI bus: in Debian's arm64 kernel both are modules.
const NIC_MODULES: [&str; 2] = ["virtio_pci", "virtio_net"];

/// The arm64 payloads.
#[derive(Clone, Debug)]
pub struct Arm64 {
    /// Debian's arm64 kernel (an EFI-stub Image).
    pub kernel: PathBuf,
    /// The initramfs (arm64 busybox, the lab's `/init`, the NIC's modules).
    pub initramfs: PathBuf,
    /// iPXE for arm64 UEFI.
    pub ipxe: PathBuf,
}

/// Downloads (once) and builds what an arm64 machine boots, under `cache/arm64`.
pub fn ensure(cache: &Path) -> Result<Arm64, LabError> {
    let _lock = lock_cache(cache)?;
    let dir = cache.join("arm64");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let root = dir.join("root");
    let busybox = root.join("bin/busybox");
    let kernel = find_kernel(&root);
    if kernel.is_none() || !busybox.exists() {
        // Bookworm's, named here, so the host's own release does not decide.
        let sources = dir.join("bookworm.list");
        let line = |url: &str, suite: &str| {
            format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {url} {suite} main\n")
        };
        std::fs::write(
            &sources,
            line("http://deb.debian.org/debian", "bookworm")
                + &line("http://deb.debian.org/debian", "bookworm-updates")
                + &line("http://deb.debian.org/debian-security", "bookworm-security"),
        )
        .map_err(|e| format!("{}: {e}", sources.display()))?;
        let apt = Apt::new(&dir.join("bookworm"), "arm64", &sources)?;
        let depends = apt.run(Command::new("apt-cache").args(["depends", "linux-image-arm64"]))?;
        let package = kernel_package(&depends, "linux-image-arm64")?;
        apt.unpack(&[&package, "busybox-static"], &root)?;
    }
    let kernel = find_kernel(&root).ok_or("the arm64 kernel package has no /boot/vmlinuz-*")?;
    let version = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .ok_or("unexpected kernel file name")?
        .to_owned();
    let initramfs = dir.join(format!("initramfs-{version}.cpio"));
    let stamp = dir.join(format!("initramfs-{version}.inputs"));
    let inputs = format!(
        "{}{}{NIC_MODULES:?}",
        crate::bootimage::INIT,
        crate::bootimage::UDHCPC_SCRIPT
    );
    if !initramfs.exists() || std::fs::read_to_string(&stamp).ok().as_deref() != Some(&inputs) {
        let modules = root.join("lib/modules").join(&version);
        build_initramfs(&modules, &NIC_MODULES, &busybox, &initramfs)?;
        std::fs::write(&stamp, inputs).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(Arm64 {
        kernel,
        initramfs,
        ipxe: crate::ipxe::trixie_locked(cache)?.arm64,
    })
}
