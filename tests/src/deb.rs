//! The Debian package, built with `dpkg-deb` from a `bootfabric` binary and the files under
//! `deploy/` (docs/packaging.md). `cargo xtask package` builds the binary and calls
//! [`build`]; the deploy tests call it on the binary under test, so a fresh clone needs
//! nothing built beforehand.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{run, LabError};

/// The package's name and its system user.
pub const NAME: &str = "bootfabric";

/// Files installed as conffiles (dpkg keeps the operator's edits on upgrade).
pub const CONFFILES: &[&str] = &[
    "/etc/bootfabric/bootfabric.toml",
    "/etc/bootfabric/hosts.toml",
    "/etc/bootfabric/configs/flatcar.ign",
    "/etc/bootfabric/configs/kairos.yaml",
];

/// Files that may hold secrets once edited (host `meta`, join tokens, SSH keys): shipped
/// 0640, root:root in the archive; postinst gives them the daemon's group (`chgrp -h`).
/// The config stays 0644: it names secrets by file only, and the CLI reads it as any user.
pub const GROUP_READABLE: &[&str] = &[
    "/etc/bootfabric/hosts.toml",
    "/etc/bootfabric/configs/flatcar.ign",
    "/etc/bootfabric/configs/kairos.yaml",
];

/// The guides of docs/ the package ships in /usr/share/doc/bootfabric/docs.
pub const OPERATOR_DOCS: &[&str] = &[
    "configuration.md",
    "operations.md",
    "troubleshooting.md",
    "cli.md",
    "metrics.md",
    "packaging.md",
    "migration.md",
];

/// Where the packaged binary finds the ipxe package's boot images.
pub const IPXE_DIR: &str = "/usr/lib/ipxe";

/// The version the package carries: the workspace's (`Cargo.toml`), Debian revision 1.
pub fn version(repo: &Path) -> Result<String, LabError> {
    let manifest = repo.join("Cargo.toml");
    let text =
        std::fs::read_to_string(&manifest).map_err(|e| format!("{}: {e}", manifest.display()))?;
    // The first `version = "…"` is [workspace.package]'s: the file starts with it.
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| format!("{}: no version", manifest.display()))?;
    Ok(format!("{v}-1"))
}

/// `dpkg --print-architecture`.
pub fn architecture() -> Result<String, LabError> {
    Ok(run(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned())
}

/// Builds `<out>/bootfabric_<version>_<arch>.deb` from `binary` (stripped into the package)
/// and `repo`'s deploy files. The staging tree is `<out>/staging`, rebuilt each time.
pub fn build(repo: &Path, binary: &Path, out: &Path) -> Result<PathBuf, LabError> {
    let version = version(repo)?;
    let arch = architecture()?;
    let stage = out.join("staging");
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    }
    let deploy = repo.join("deploy");
    let doc = format!("usr/share/doc/{NAME}");

    // The binary, stripped as dh_strip does (the debug build's symbols are most of its size).
    let bin = stage.join("usr/bin/bootfabric");
    copy(binary, &bin, 0o755)?;
    run(Command::new("strip")
        .args([
            "--remove-section=.comment",
            "--remove-section=.note",
            "--strip-unneeded",
        ])
        .arg(&bin))?;

    copy(
        &deploy.join("systemd/bootfabric.service"),
        &stage.join("lib/systemd/system/bootfabric.service"),
        0o644,
    )?;
    copy(
        &deploy.join("debian/bootfabric.toml"),
        &stage.join("etc/bootfabric/bootfabric.toml"),
        0o644,
    )?;
    // The inventory and the per-host configs: 0640, postinst gives them the daemon's group.
    copy(
        &deploy.join("examples/hosts.toml"),
        &stage.join("etc/bootfabric/hosts.toml"),
        0o640,
    )?;
    for f in ["flatcar.ign", "kairos.yaml"] {
        copy(
            &deploy.join("examples/configs").join(f),
            &stage.join("etc/bootfabric/configs").join(f),
            0o640,
        )?;
    }
    // The state folder and the served trees: postinst gives them to the system user.
    for d in ["var/lib/bootfabric/tftp", "var/lib/bootfabric/images"] {
        mkdir(&stage.join(d))?;
    }

    // Man pages and completions, from the binary's own clap definitions.
    let man = stage.join("usr/share/man/man1");
    run(Command::new(&bin).args(["man", "--out"]).arg(&man))?;
    for page in read_dir(&man)? {
        // gzip -n: no name or time stamp inside, so two builds give the same file.
        run(Command::new("gzip").args(["-9n"]).arg(&page))?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/bootfabric"),
        ("zsh", "usr/share/zsh/vendor-completions/_bootfabric"),
        (
            "fish",
            "usr/share/fish/vendor_completions.d/bootfabric.fish",
        ),
    ] {
        let script = run(Command::new(&bin).args(["completions", shell]))?;
        write(&stage.join(path), &script, 0o644)?;
    }

    // Documentation: the copyright file Debian requires, the changelog, the guides and the
    // example configs of the other topologies.
    let license =
        std::fs::read_to_string(repo.join("LICENSE")).map_err(|e| format!("LICENSE: {e}"))?;
    let license_text: String = license
        .lines()
        .map(|l| {
            if l.trim().is_empty() {
                " .\n".to_owned()
            } else {
                format!(" {l}\n")
            }
        })
        .collect();
    write(
        &stage.join(&doc).join("copyright"),
        &format!(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
             Upstream-Name: bootfabric\n\n\
             Files: *\n\
             Copyright: 2026 The Bootfabric authors\n\
             License: MIT\n{license_text}"
        ),
        0o644,
    )?;
    let changelog = stage.join(&doc).join("changelog.Debian");
    write(
        &changelog,
        &format!(
            "bootfabric ({version}) unstable; urgency=medium\n\n  \
             * Package built from the repository (cargo xtask package).\n\n \
             -- Bootfabric authors <bootfabric@example.invalid>  Thu, 01 Jan 2026 00:00:00 +0000\n"
        ),
        0o644,
    )?;
    run(Command::new("gzip").args(["-9n"]).arg(&changelog))?;
    copy(
        &repo.join("README.md"),
        &stage.join(&doc).join("README.md"),
        0o644,
    )?;
    // The operator's guides (the reference the shipped config's comments point at).
    for guide in OPERATOR_DOCS {
        copy(
            &repo.join("docs").join(guide),
            &stage.join(&doc).join("docs").join(guide),
            0o644,
        )?;
    }
    for topology in ["segregated", "relayed"] {
        copy(
            &deploy
                .join("examples")
                .join(topology)
                .join("bootfabric.toml"),
            &stage
                .join(&doc)
                .join("examples")
                .join(topology)
                .join("bootfabric.toml"),
            0o644,
        )?;
    }

    // Control files.
    let control = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &deploy.join("debian").join(script),
            &control.join(script),
            0o755,
        )?;
    }
    copy(
        &deploy.join("debian/triggers"),
        &control.join("triggers"),
        0o644,
    )?;
    let conffiles: String = CONFFILES.iter().map(|c| format!("{c}\n")).collect();
    write(&control.join("conffiles"), &conffiles, 0o644)?;
    // DEBIAN/md5sums, as dh_md5sums writes it (`dpkg --verify` and debsums read it).
    let mut files = Vec::new();
    list_files(&stage, &stage, &control, &mut files)?;
    let sums = run(Command::new("md5sum").current_dir(&stage).args(&files))?;
    write(&control.join("md5sums"), &sums, 0o644)?;
    let depends = format!("{}, adduser, ipxe", shlibs(&bin, &out.join("shlibdeps"))?);
    let size_kib = installed_size(&stage, &control)?;
    write(
        &control.join("control"),
        &format!(
            "Package: {NAME}\n\
             Version: {version}\n\
             Architecture: {arch}\n\
             Maintainer: Bootfabric authors <bootfabric@example.invalid>\n\
             Installed-Size: {size_kib}\n\
             Depends: {depends}\n\
             Section: net\n\
             Priority: optional\n\
             Homepage: https://example.invalid/bootfabric\n\
             Description: network boot fabric (DHCP, TFTP, HTTP, XDP) in one daemon\n \
             Bootfabric boots racks of machines over the network: a DHCPv4/v6 server or\n \
             proxy, TFTP and HTTP servers for bootloaders, kernels and images, an XDP fast\n \
             path that answers reserved hosts from the kernel, and staggered reboots\n \
             through the machines' Redfish BMCs.\n"
        ),
        0o644,
    )?;

    normalize_dirs(&stage)?;
    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    Ok(deb)
}

/// The shared libraries' packages, as dpkg-shlibdeps finds them (it wants a debian/control
/// in its working folder, so it runs in a scratch one).
fn shlibs(bin: &Path, scratch: &Path) -> Result<String, LabError> {
    mkdir(&scratch.join("debian"))?;
    write(
        &scratch.join("debian/control"),
        "Source: bootfabric\n\nPackage: bootfabric\nArchitecture: any\n",
        0o644,
    )?;
    let out = run(Command::new("dpkg-shlibdeps")
        .current_dir(scratch)
        .arg("-O")
        .arg(bin))?;
    let _ = std::fs::remove_dir_all(scratch);
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
        .ok_or_else(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out}"))
}

/// Installed-Size in KiB: the files outside DEBIAN/, as dpkg-gencontrol counts them.
fn installed_size(stage: &Path, control: &Path) -> Result<u64, LabError> {
    fn walk(dir: &Path, skip: &Path, total: &mut u64) -> Result<(), LabError> {
        for entry in read_dir(dir)? {
            if entry == skip {
                continue;
            }
            let meta = std::fs::symlink_metadata(&entry)
                .map_err(|e| format!("{}: {e}", entry.display()))?;
            *total += meta.len().div_ceil(1024).max(1);
            if meta.is_dir() {
                walk(&entry, skip, total)?;
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(stage, control, &mut total)?;
    Ok(total)
}

/// The regular files under `dir` but outside `skip`, relative to `base`, in a stable order.
fn list_files(
    base: &Path,
    dir: &Path,
    skip: &Path,
    out: &mut Vec<PathBuf>,
) -> Result<(), LabError> {
    for entry in read_dir(dir)? {
        if entry == skip {
            continue;
        }
        if entry.is_dir() {
            list_files(base, &entry, skip, out)?;
        } else if entry.is_file() {
            let rel = entry
                .strip_prefix(base)
                .map_err(|e| format!("{}: {e}", entry.display()))?;
            out.push(rel.to_owned());
        }
    }
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, LabError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

fn mkdir(dir: &Path) -> Result<(), LabError> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Every folder of the tree 0755, whatever the umask of the run that made it.
fn normalize_dirs(dir: &Path) -> Result<(), LabError> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in read_dir(dir)? {
        if entry.is_dir() && !entry.is_symlink() {
            normalize_dirs(&entry)?;
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), LabError> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    std::fs::copy(from, to).map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", to.display()))
}

fn write(to: &Path, text: &str, mode: u32) -> Result<(), LabError> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    std::fs::write(to, text).map_err(|e| format!("{}: {e}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", to.display()))
}
