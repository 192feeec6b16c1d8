//! `cargo xtask setup`: checks every tool the build and the tests need and installs only what
//! is missing. One line per item: `found`, `installed`, or `FAILED` with the reason. A second
//! run finds everything and installs nothing.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::bail;

/// Debian packages, grouped by what needs them.
const DEBIAN: &[(&str, &[&str])] = &[
    // The eBPF build: Debian's rustc 1.96 with a prebuilt core for bpfel-unknown-none, and
    // LLVM 22 (the same major) for building bpf-linker.
    (
        "eBPF toolchain",
        &[
            "rustc-web",
            "libstd-rust-web-dev-bpf",
            "llvm-22-dev",
            "libpolly-22-dev",
            "zlib1g-dev",
            "libzstd-dev",
        ],
    ),
    (
        "lab networking",
        &[
            "iproute2",
            "iptables",
            "bpftool",
            "ethtool",
            "tcpdump",
            "tshark",
            "python3-scapy",
            "python3-yaml",
            "ndisc6",
        ],
    ),
    // The etcd client is gRPC: its build compiles etcd's .proto files with protoc, which
    // imports Google's well-known types (descriptor.proto, struct.proto) from
    // libprotobuf-dev: protobuf-compiler only recommends it, and setup installs no
    // recommends.
    ("daemon build", &["protobuf-compiler", "libprotobuf-dev"]),
    ("metrics checks", &["prometheus"]),
    // The Debian package (cargo xtask package, tests/deploy.rs): dpkg-shlibdeps for its
    // Depends, strip, lintian's review, and groff to render its man pages.
    (
        "packaging",
        &["dpkg-dev", "binutils", "lintian", "groff-base", "man-db"],
    ),
    // Cluster mode's lab: real etcd members in namespaces (the binary only; no system service
    // is started, see apt_install's policy-rc.d).
    // etcdctl (the lab's health checks and its view of the keys) is packaged apart.
    ("cluster lab", &["etcd-server", "etcd-client"]),
    (
        "DHCP peers and clients",
        &[
            "dnsmasq-base",
            "kea-dhcp4-server",
            "kea-dhcp6-server",
            "kea-admin",
            "isc-dhcp-relay",
            "isc-dhcp-client",
            "udhcpc",
            "dhcpcd5",
        ],
    ),
    (
        "TFTP peers and clients",
        &["tftpd-hpa", "tftp-hpa", "atftp", "curl"],
    ),
    // bench/tftp's AF_XDP prototype (XSK=1), the third way to carry windows it measures.
    ("TFTP bench", &["libxdp-dev", "libbpf-dev"]),
    ("HTTP peers and clients", &["nginx-light", "wrk", "wget"]),
    // The admin API's mutual-TLS test makes its CA and certificates with openssl; the lease
    // journal's hung-disk test freezes an ext4 image (e2fsprogs, util-linux).
    ("security tests", &["openssl", "e2fsprogs", "util-linux"]),
    (
        "firmware lab",
        &[
            "qemu-system-x86",
            "ipxe-qemu",
            "ovmf",
            "ipxe",
            "busybox-static",
            // pxelinux chainloaded from iPXE, over TFTP answered in the kernel.
            "pxelinux",
            "syslinux-common",
            // arm64 UEFI machines (AAVMF); their kernel, busybox and iPXE are downloaded.
            "qemu-system-arm",
            "qemu-efi-aarch64",
            // The kTLS guest carries the daemon stripped (strip), with its libraries (ldd).
            "binutils",
            "libc-bin",
        ],
    ),
    // OS images: ISOs built by xorriso, sums by coreutils, signatures by GnuPG with a
    // throwaway key (the ISO reader's and the OpenPGP verifier's tests use them too).
    ("image tests", &["xorriso", "gpg", "gpg-agent", "coreutils"]),
    // The README's quick start boots Debian's netboot installer: tests/quickstart.rs follows it.
    ("quick start", &["debian-installer-12-netboot-amd64"]),
    // The admin server's rack view is tested in a headless browser during a lab boot.
    ("rack view", &["chromium"]),
    // The rack in a box: machines as libvirt domains, their BMCs sushy's libvirt driver.
    (
        "rack lab",
        &[
            "libvirt-daemon",
            "libvirt-daemon-driver-qemu",
            "libvirt-clients",
            "python3-libvirt",
        ],
    ),
];

/// What Debian installs that this checks for, per package, when the package name alone is
/// not proof enough (e.g. the BPF core inside libstd-rust-web-dev-bpf).
fn extra_check(pkg: &str) -> Option<&'static str> {
    match pkg {
        "rustc-web" => Some("/usr/bin/rustc"),
        "libstd-rust-web-dev-bpf" => Some("/usr/lib/rustlib/bpfel-unknown-none/lib"),
        "llvm-22-dev" => Some("/usr/lib/llvm-22/lib/libLLVM.so"),
        "prometheus" => Some("/usr/bin/promtool"),
        "protobuf-compiler" => Some("/usr/bin/protoc"),
        "libprotobuf-dev" => Some("/usr/include/google/protobuf/descriptor.proto"),
        "etcd-server" => Some("/usr/bin/etcd"),
        "etcd-client" => Some("/usr/bin/etcdctl"),
        "pxelinux" => Some("/usr/lib/PXELINUX/pxelinux.0"),
        "libxdp-dev" => Some("/usr/include/xdp/xsk.h"),
        "syslinux-common" => Some("/usr/lib/syslinux/modules/bios/ldlinux.c32"),
        "gpg" => Some("/usr/bin/gpg"),
        "xorriso" => Some("/usr/bin/xorriso"),
        "chromium" => Some("/usr/bin/chromium"),
        "dpkg-dev" => Some("/usr/bin/dpkg-shlibdeps"),
        "lintian" => Some("/usr/bin/lintian"),
        _ => None,
    }
}

const BPF_LINKER_VERSION: &str = "0.13.0";
const SUSHY_TOOLS_VERSION: &str = "2.2.0";
/// The OpenAPI 3.1 validator the admin API's document is checked with.
const OPENAPI_SPEC_VALIDATOR_VERSION: &str = "0.9.0";
/// The Kubernetes manifests' validator; it bundles the API schemas, so it runs offline.
const KUBERNETES_VALIDATE_VERSION: &str = "1.34.1";

/// Runs setup; fails if any item could not be installed.
pub fn run() -> anyhow::Result<()> {
    let mut failed = Vec::new();

    let missing: Vec<&str> = DEBIAN
        .iter()
        .flat_map(|(_, pkgs)| pkgs.iter().copied())
        .filter(|p| !deb_installed(p))
        .collect();
    let mut apt_error = None;
    if !missing.is_empty() {
        apt_error = apt_install(&missing).err();
    }
    for (group, pkgs) in DEBIAN {
        for pkg in *pkgs {
            let was_missing = missing.contains(pkg);
            if deb_installed(pkg) {
                report(pkg, group, if was_missing { "installed" } else { "found" });
            } else {
                let why = apt_error
                    .clone()
                    .unwrap_or_else(|| "not installed after apt-get".into());
                report(pkg, group, &format!("FAILED: {why}"));
                failed.push(pkg.to_string());
            }
        }
    }

    match bpf_linker() {
        Ok(state) => report("bpf-linker", "eBPF toolchain", state),
        Err(e) => {
            report("bpf-linker", "eBPF toolchain", &format!("FAILED: {e}"));
            failed.push("bpf-linker".into());
        }
    }
    match libvirt_qemu_user() {
        Ok(state) => report("libvirt-qemu user", "rack lab", state),
        Err(e) => {
            report("libvirt-qemu user", "rack lab", &format!("FAILED: {e}"));
            failed.push("libvirt-qemu user".into());
        }
    }
    match sushy() {
        Ok(state) => report("sushy-emulator", "Redfish peer", state),
        Err(e) => {
            report("sushy-emulator", "Redfish peer", &format!("FAILED: {e}"));
            failed.push("sushy-emulator".into());
        }
    }
    // The admin API's OpenAPI document is validated by the reference validator (tests/api.rs).
    match pip_package("openapi-spec-validator", OPENAPI_SPEC_VALIDATOR_VERSION) {
        Ok(state) => report("openapi-spec-validator", "API document check", state),
        Err(e) => {
            report(
                "openapi-spec-validator",
                "API document check",
                &format!("FAILED: {e}"),
            );
            failed.push("openapi-spec-validator".into());
        }
    }
    // The Kubernetes manifests and every kustomize overlay (tests/deploy.rs).
    match pip_package("kubernetes-validate", KUBERNETES_VALIDATE_VERSION) {
        Ok(state) => report("kubernetes-validate", "deployment checks", state),
        Err(e) => {
            report(
                "kubernetes-validate",
                "deployment checks",
                &format!("FAILED: {e}"),
            );
            failed.push("kubernetes-validate".into());
        }
    }
    for comp in ["rustfmt", "clippy"] {
        if has_component(comp) {
            report(comp, "rust toolchain", "found");
        } else {
            let ok = Command::new("rustup")
                .args(["component", "add", comp])
                .status()
                .is_ok_and(|s| s.success());
            report(
                comp,
                "rust toolchain",
                if ok {
                    "installed"
                } else {
                    "FAILED: rustup component add failed"
                },
            );
            if !ok {
                failed.push(comp.into());
            }
        }
    }

    if !failed.is_empty() {
        bail!("setup could not install: {}", failed.join(", "));
    }
    Ok(())
}

fn report(item: &str, group: &str, state: &str) {
    println!("setup: {item:<26} {group:<24} {state}");
}

fn deb_installed(pkg: &str) -> bool {
    let ok = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "install ok installed");
    ok && extra_check(pkg).is_none_or(|p| Path::new(p).exists())
}

/// Installs `pkgs` without starting any service they ship (nginx, kea, dnsmasq, tftpd-hpa and
/// prometheus would otherwise start on the host's interfaces): a policy-rc.d that forbids
/// starts is in place for the duration of the install.
/// libvirtd's QEMU driver resolves its default user before reading any config; Debian
/// creates it in libvirt-daemon-system, which would also start a system libvirtd. The lab
/// runs its own libvirtd (as root), so only the user is needed.
fn libvirt_qemu_user() -> Result<&'static str, String> {
    let exists = |db: &str, name: &str| {
        Command::new("getent")
            .args([db, name])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if exists("passwd", "libvirt-qemu") {
        return Ok("found");
    }
    if unsafe_euid() != 0 {
        return Err("needs root to add the system user".into());
    }
    if !exists("group", "libvirt-qemu") {
        let ok = Command::new("groupadd")
            .args(["--system", "libvirt-qemu"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("groupadd --system libvirt-qemu failed".into());
        }
    }
    let ok = Command::new("useradd")
        .args([
            "--system",
            "--gid",
            "libvirt-qemu",
            "--home-dir",
            "/var/lib/libvirt",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "libvirt-qemu",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok("installed")
    } else {
        Err("useradd --system libvirt-qemu failed".into())
    }
}

fn apt_install(pkgs: &[&str]) -> Result<(), String> {
    if unsafe_euid() != 0 {
        return Err("needs root to install Debian packages".into());
    }
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        std::fs::write(
            policy,
            "#!/bin/sh\n# written by bootfabric's cargo xtask setup\nexit 101\n",
        )
        .map_err(|e| format!("{}: {e}", policy.display()))?;
        set_executable(policy)?;
    }
    let result = (|| {
        apt(&["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend_from_slice(pkgs);
        apt(&args)
    })();
    if own_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}

fn apt(args: &[&str]) -> Result<(), String> {
    let out = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("apt-get: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_owned();
        Err(format!("apt-get {}: {}: {last}", args[0], out.status))
    }
}

fn set_executable(p: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", p.display()))
}

fn unsafe_euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// bpf-linker built against LLVM 22, the LLVM of Debian's rustc-web.
fn bpf_linker() -> Result<&'static str, String> {
    let answers = |v: &str| {
        Command::new("bpf-linker")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(v))
    };
    if answers(BPF_LINKER_VERSION) {
        return Ok("found");
    }
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        // bpf-linker's build script links the LLVM named here (LLVM_SYS_* for older releases).
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22")
        .env_remove("RUSTC")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(|e| format!("cargo install: {e}"))?;
    if !status.success() {
        return Err(format!("cargo install bpf-linker: {status}"));
    }
    if answers(BPF_LINKER_VERSION) {
        Ok("installed")
    } else {
        Err(
            "installed, but `bpf-linker --version` does not answer (is ~/.cargo/bin on PATH?)"
                .into(),
        )
    }
}

/// sushy-tools from PyPI, the Redfish BMC emulator the scheduler is tested against.
fn sushy() -> Result<&'static str, String> {
    pip_package("sushy-tools", SUSHY_TOOLS_VERSION)
}

/// `package==version` from PyPI through pip, unless pip already has the package.
fn pip_package(package: &str, version: &str) -> Result<&'static str, String> {
    let found = || {
        Command::new("python3")
            .args(["-m", "pip", "show", "-q", package])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found() {
        return Ok("found");
    }
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            &format!("{package}=={version}"),
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if out.status.success() && found() {
        Ok("installed")
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "pip install {package}: {}",
            err.lines().last().unwrap_or("")
        ))
    }
}

fn has_component(comp: &str) -> bool {
    let bin = if comp == "clippy" {
        "cargo-clippy"
    } else {
        "rustfmt"
    };
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
