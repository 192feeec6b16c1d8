//! `cargo xtask test`: what CI runs (`.ci/run`).

use anyhow::Context as _;

use crate::{build, cargo, root, run_cmd, setup};

/// setup → build → fmt check → clippy → tests. Lab tests are required (not skippable) when
/// running as root, so a CI run cannot pass by skipping them.
pub fn run(with_setup: bool) -> anyhow::Result<()> {
    if with_setup {
        setup::run()?;
    }
    let built = build::run(false)?;

    step("cargo fmt --check");
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"])).context("cargo fmt --check")?;
    run_cmd(
        cargo()
            .current_dir(root().join("boot-ebpf/programs"))
            .args(["fmt", "--", "--check"]),
    )
    .context("cargo fmt --check (boot-ebpf/programs)")?;

    step("cargo clippy -D warnings");
    run_cmd(
        cargo()
            .args([
                "clippy",
                "--locked",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .env("BOOTFABRIC_EBPF_OBJECT", &built.object),
    )
    .context("cargo clippy")?;

    step("cargo test");
    let mut test = cargo();
    test.args(["test", "--locked", "--workspace", "--no-fail-fast"])
        .env("BOOTFABRIC_EBPF_OBJECT", &built.object)
        .env("BOOTFABRIC_BIN", &built.daemon);
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        test.env("BOOTFABRIC_REQUIRE_LAB", "1");
    } else {
        println!("xtask: not root: namespace-lab tests will be skipped with a reason");
    }
    run_cmd(&mut test).context("cargo test")?;
    Ok(())
}

fn step(name: &str) {
    println!("\n==> {name}");
}
