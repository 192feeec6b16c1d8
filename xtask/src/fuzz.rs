//! `cargo xtask fuzz`: runs each cargo-fuzz target of `fuzz/` for a set time, one after the
//! other in one process each (the machine is shared: no `-jobs`, no `-fork`), and prints per
//! target the runs, the seconds, the new corpus entries and the crashes.
//!
//! The committed seeds (`fuzz/corpus/<target>/`) are only read; what a run learns goes to
//! `target/fuzz/corpus/<target>/`, so repeated runs build on each other without growing the
//! repository. Crash inputs stay in `fuzz/artifacts/<target>/` (cargo-fuzz's place).
//! `--smoke` runs each target over its committed seeds only, adding no new inputs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::Context as _;

use crate::{root, run_cmd};

/// What to run.
pub struct Options {
    /// Seconds per target (ignored with `smoke`).
    pub seconds: u64,
    /// Targets to run; all of them when empty.
    pub targets: Vec<String>,
    /// Sanitizer for `cargo fuzz -s` (`address` or `none`).
    pub sanitizer: String,
    /// Only replay the committed seeds.
    pub smoke: bool,
}

/// What one target's run did.
struct Outcome {
    target: String,
    runs: Option<u64>,
    seconds: f64,
    new_entries: usize,
    crashes: Vec<PathBuf>,
}

/// `cargo +nightly` in `fuzz/`.
fn nightly() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly").current_dir(root().join("fuzz"));
    // `cargo xtask` runs us with its own package's variables (CARGO_MANIFEST_DIR, ...) and
    // toolchain: ring's build script watches CARGO_MANIFEST_DIR, so inheriting them would
    // rebuild everything whenever `cargo fuzz` is also run by hand, and RUSTUP_TOOLCHAIN
    // would override `+nightly`.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("CARGO") && k != "CARGO_HOME") || k.starts_with("RUSTUP_TOOLCHAIN") {
            c.env_remove(&key);
        }
    }
    c
}

/// Installs cargo-fuzz from crates.io when `cargo fuzz` is missing; checks that a nightly
/// toolchain is there (libFuzzer's instrumentation needs `-Z` flags).
fn ensure_tools() -> anyhow::Result<()> {
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup toolchain list")?;
    if !String::from_utf8_lossy(&toolchains.stdout).contains("nightly") {
        anyhow::bail!("no nightly toolchain: run `rustup toolchain install nightly` first");
    }
    let has_fuzz = nightly()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        println!("xtask: installing cargo-fuzz");
        run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("cargo install cargo-fuzz")?;
    }
    Ok(())
}

/// The fuzz targets, as cargo-fuzz lists them.
fn all_targets() -> anyhow::Result<Vec<String>> {
    let out = nightly()
        .args(["fuzz", "list"])
        .output()
        .context("cargo fuzz list")?;
    if !out.status.success() {
        anyhow::bail!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// A libFuzzer `stat::<name>: <n>` line's number.
fn stat(log: &str, name: &str) -> Option<u64> {
    let key = format!("stat::{name}:");
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&key))
        .and_then(|n| n.trim().parse().ok())
}

/// The common flags of `cargo fuzz build` and `run`: release with debug assertions (so
/// overflows are found), the chosen sanitizer.
fn build_flags(o: &Options) -> Vec<String> {
    vec![
        "--release".into(),
        "--debug-assertions".into(),
        "--sanitizer".into(),
        o.sanitizer.clone(),
    ]
}

fn run_one(o: &Options, target: &str) -> anyhow::Result<Outcome> {
    let fuzz = root().join("fuzz");
    let seeds = fuzz.join("corpus").join(target);
    let work = root().join("target/fuzz/corpus").join(target);
    let artifacts = fuzz.join("artifacts").join(target);
    let logs = root().join("target/fuzz/logs");
    for d in [&seeds, &work, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let before: Vec<PathBuf> = files_in(&artifacts);
    let work_before = files_in(&work).len();

    let mut cmd = nightly();
    cmd.args(["fuzz", "run", target])
        .args(build_flags(o))
        .arg("--");
    cmd.arg("-print_final_stats=1");
    cmd.arg(format!("-artifact_prefix={}/", artifacts.display()));
    if o.smoke {
        // Replays the seeds and stops: no new inputs.
        cmd.arg("-runs=0").arg(&seeds);
    } else {
        cmd.arg(format!("-max_total_time={}", o.seconds))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=10")
            .arg(&work)
            .arg(&seeds);
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("create {}", log_path.display()))?;
    cmd.stderr(log.try_clone()?).stdout(log);
    println!(
        "\n==> {target}: {} (log: {})",
        if o.smoke {
            "committed seeds only".to_owned()
        } else {
            format!("{} s", o.seconds)
        },
        log_path.display()
    );
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cargo fuzz run {target}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let crashes: Vec<PathBuf> = files_in(&artifacts)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !status.success() && crashes.is_empty() {
        // Not a finding (a build error, a bad flag): show why and stop.
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        anyhow::bail!(
            "cargo fuzz run {target} failed: {status}\n{}",
            tail.join("\n")
        );
    }
    Ok(Outcome {
        target: target.to_owned(),
        runs: stat(&text, "number_of_executed_units"),
        seconds,
        new_entries: files_in(&work).len().saturating_sub(work_before),
        crashes,
    })
}

/// Runs the targets and prints the table; fails when any target crashed.
pub fn run(o: Options) -> anyhow::Result<()> {
    ensure_tools()?;
    let targets = if o.targets.is_empty() {
        all_targets()?
    } else {
        o.targets.clone()
    };
    println!("==> cargo fuzz build ({} targets)", targets.len());
    run_cmd(nightly().args(["fuzz", "build"]).args(build_flags(&o))).context("cargo fuzz build")?;
    let mut outcomes = Vec::new();
    for t in &targets {
        outcomes.push(run_one(&o, t)?);
    }
    println!(
        "\n{:<22} {:>12} {:>8} {:>12} {:>8}",
        "target", "runs", "seconds", "new entries", "crashes"
    );
    for r in &outcomes {
        println!(
            "{:<22} {:>12} {:>8.0} {:>12} {:>8}",
            r.target,
            r.runs.map_or("?".to_owned(), |n| n.to_string()),
            r.seconds,
            r.new_entries,
            r.crashes.len()
        );
        for c in &r.crashes {
            println!("    crash input kept: {}", c.display());
        }
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|r| !r.crashes.is_empty())
        .map(|r| r.target.as_str())
        .collect();
    if !crashed.is_empty() {
        anyhow::bail!(
            "crashes in {}: reproduce with `cd fuzz && cargo +nightly fuzz run <target> <input>`",
            crashed.join(", ")
        );
    }
    Ok(())
}
