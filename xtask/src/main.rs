//! `cargo xtask`: Bootfabric's project tasks.
//!
//! - `setup`: checks, and installs only what is missing, the toolchain and the test peers.
//! - `build`: builds the XDP object with Debian's rustc, then the daemon embedding it.
//! - `test`:  setup, build, fmt check, clippy `-D warnings`, every unit and integration test.
//! - `demo`:  the main job: a rack of VMs rebooted through Redfish, booting through the fabric.
//! - `fuzz`:  runs each cargo-fuzz target of `fuzz/` for a set time (docs/fuzzing.md).
//! - `layers`: the layering check of docs/architecture.md, with the component graph.
//! - `package`: the Debian package (docs/packaging.md).

mod build;
mod demo;
mod fuzz;
mod layers;
mod package;
mod setup;
mod test;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Bootfabric project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Check and install the toolchain and test peers (idempotent).
    Setup,
    /// Build the XDP object, then the daemon that embeds it.
    Build {
        /// Build the daemon in release mode.
        #[arg(long)]
        release: bool,
    },
    /// Run setup, build, fmt check, clippy and all tests (what CI runs).
    Test {
        /// Skip `setup` (for quick local reruns).
        #[arg(long)]
        no_setup: bool,
    },
    /// Boot a rack of VMs (libvirt + Redfish BMCs) through the fabric in a lab it creates.
    Demo {
        /// Machines in the rack (BIOS, UEFI PXE and UEFI iPXE in turn).
        #[arg(long, default_value_t = 4)]
        hosts: usize,
        /// Remove the lab after the report instead of waiting for Ctrl-C.
        #[arg(long)]
        no_wait: bool,
        /// The daemon's `fabric.router_advertisements` (`off` shows iPXE's IPv6 wait).
        #[arg(long, default_value = "auto", value_parser = ["auto", "off"])]
        router_advertisements: String,
        /// The daemon's `dhcp.ipxe_no_pxedhcp` (`false` shows iPXE's proxyDHCP wait).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        ipxe_no_pxedhcp: bool,
    },
    /// Run each fuzz target (fuzz/) for a set time with cargo-fuzz on nightly.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// A target to run (repeatable); all targets when absent.
        #[arg(long = "target")]
        targets: Vec<String>,
        /// Sanitizer: `address`, or `none` where ASan cannot run.
        #[arg(long, default_value = "address")]
        sanitizer: String,
        /// Only replay the committed seed corpora (no new inputs).
        #[arg(long)]
        smoke: bool,
    },
    /// Check imports against the layer table of docs/architecture.md; print the graph.
    Layers,
    /// Build the Debian package target/debian/bootfabric_<version>_<arch>.deb.
    Package {
        /// Package a release build of the daemon.
        #[arg(long, conflicts_with = "binary")]
        release: bool,
        /// Package this binary instead of building one.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release } => build::run(release).map(|_| ()),
        Task::Test { no_setup } => test::run(!no_setup),
        Task::Demo {
            hosts,
            no_wait,
            router_advertisements,
            ipxe_no_pxedhcp,
        } => demo::run(
            hosts,
            no_wait,
            demo::Variant {
                router_advertisements: router_advertisements == "auto",
                ipxe_no_pxedhcp,
            },
        ),
        Task::Fuzz {
            seconds,
            targets,
            sanitizer,
            smoke,
        } => fuzz::run(fuzz::Options {
            seconds,
            targets,
            sanitizer,
            smoke,
        }),
        Task::Layers => layers::run(),
        Task::Package { release, binary } => package::run(release, binary),
    }
}

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `cargo`, as the one running this xtask.
pub fn cargo() -> std::process::Command {
    let mut c =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Runs a command, failing with its name when it does not succeed.
pub fn run_cmd(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let status = cmd.status().map_err(|e| anyhow::anyhow!("{cmd:?}: {e}"))?;
    if !status.success() {
        anyhow::bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
