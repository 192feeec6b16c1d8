//! `cargo xtask package [--release]`: the Debian package `target/debian/bootfabric_<version>_
//! <arch>.deb`, built with dpkg-deb (no packaging tool to install) from the daemon this task
//! builds, or from `--binary` (docs/packaging.md).

use std::path::PathBuf;

use anyhow::anyhow;

use crate::root;

/// Builds the daemon (with its XDP object) unless `binary` is given, then the package.
pub fn run(release: bool, binary: Option<PathBuf>) -> anyhow::Result<()> {
    let binary = match binary {
        Some(b) => b,
        None => crate::build::run(release)?.daemon,
    };
    let out = root().join("target/debian");
    std::fs::create_dir_all(&out)?;
    // The lab's function, which the package tests call too: one recipe for both.
    let deb = bootfabric_lab::deb::build(&root(), &binary, &out).map_err(|e| anyhow!(e))?;
    println!("xtask: package {}", deb.display());
    Ok(())
}
