//! The iPXE the lab chainloads where the host's own cannot serve: Debian trixie's `ipxe`
//! package (arch `all`), downloaded through a private apt configuration into the lab cache,
//! never installed. Bookworm's build (2019) has neither HTTPS nor an arm64 binary. Trixie's
//! has both, and its EFI builds trust the CA certificates the firmware holds in its
//! `TlsCaCertificate` variable (iPXE's `efi_cacert`), the variable OVMF fills from fw_cfg
//! `etc/edk2/https/cacerts` for its own HTTPS boot. So iPXE over HTTPS needs no build of
//! our own: the CA an operator enrolls for UEFI HTTPS boot is the one iPXE trusts.

use std::path::{Path, PathBuf};

use crate::{
    bootimage::{lock_cache, Apt},
    LabError,
};

/// Trixie's EFI builds of iPXE.
#[derive(Clone, Debug)]
pub struct Trixie {
    /// iPXE for x86-64 UEFI, with HTTPS.
    pub amd64: PathBuf,
    /// iPXE for arm64 UEFI, with HTTPS.
    pub arm64: PathBuf,
}

/// Downloads (once) trixie's iPXE under `cache/ipxe-trixie`.
pub fn trixie(cache: &Path) -> Result<Trixie, LabError> {
    let _lock = lock_cache(cache)?;
    trixie_locked(cache)
}

/// [`trixie`] for a caller that already holds `cache`'s lock.
pub(crate) fn trixie_locked(cache: &Path) -> Result<Trixie, LabError> {
    let dir = cache.join("ipxe-trixie");
    let lib = dir.join("root/usr/lib/ipxe");
    let builds = Trixie {
        amd64: lib.join("ipxe-amd64.efi"),
        arm64: lib.join("ipxe-arm64.efi"),
    };
    if builds.amd64.exists() && builds.arm64.exists() {
        return Ok(builds);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let sources = dir.join("trixie.list");
    std::fs::write(
        &sources,
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main\n",
    )
    .map_err(|e| format!("{}: {e}", sources.display()))?;
    Apt::new(&dir.join("apt"), "amd64", &sources)?.unpack(&["ipxe"], &dir.join("root"))?;
    for build in [&builds.amd64, &builds.arm64] {
        if !build.exists() {
            return Err(format!("trixie's ipxe has no {}", build.display()));
        }
    }
    Ok(builds)
}
