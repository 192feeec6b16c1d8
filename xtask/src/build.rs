//! `cargo xtask build`: the XDP object with Debian's rustc, then the daemon that embeds it.
//!
//! The rustup toolchains here have no `rust-src`, so aya's usual `-Z build-std` route does not
//! work; Debian's `rustc-web` ships a prebuilt `core` for `bpfel-unknown-none` instead (see
//! `../shared/TOOLCHAIN.md`). The eBPF crate is its own workspace with its own target dir.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::{cargo, root, run_cmd};

/// Debian's rustc with the BPF core.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

/// What a build produced.
pub struct Built {
    /// The XDP object.
    pub object: PathBuf,
    /// The `bootfabric` binary.
    pub daemon: PathBuf,
}

/// Path of the XDP object once built.
pub fn object_path() -> PathBuf {
    root().join("target/bpf/bpfel-unknown-none/release/bootfabric-xdp")
}

/// Builds the XDP object.
pub fn build_ebpf() -> anyhow::Result<PathBuf> {
    if !Path::new(DEBIAN_RUSTC).exists() {
        bail!("{DEBIAN_RUSTC} is missing: run `cargo xtask setup` (installs Debian's rustc-web)");
    }
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(root().join("boot-ebpf/programs"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
        ])
        // aya-ebpf uses one #![feature]; Debian's stable rustc allows it with this.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTC", DEBIAN_RUSTC)
        .env("CARGO_TARGET_DIR", root().join("target/bpf"))
        // The rustup toolchain this xtask runs under must not leak into the eBPF build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    run_cmd(&mut cmd)
        .context("building the XDP object (is bpf-linker installed? `cargo xtask setup`)")?;
    let object = object_path();
    if !object.is_file() {
        bail!("the eBPF build produced no {}", object.display());
    }
    Ok(object)
}

/// Builds the XDP object and the daemon embedding it.
pub fn run(release: bool) -> anyhow::Result<Built> {
    let object = build_ebpf()?;
    println!("xtask: XDP object {}", object.display());
    let mut cmd = cargo();
    cmd.args(["build", "--locked", "-p", "bootfabric"])
        .env("BOOTFABRIC_EBPF_OBJECT", &object);
    if release {
        cmd.arg("--release");
    }
    run_cmd(&mut cmd).context("building the daemon")?;
    let daemon = root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("bootfabric");
    println!("xtask: daemon {}", daemon.display());
    Ok(Built { object, daemon })
}
