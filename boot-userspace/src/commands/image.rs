//! `bootfabric image add|update|ls|rm|rollback`: the operator's hands on `[images]`. Works on
//! the store directly (under the image's lock, so it never interleaves with the daemon's
//! scheduled update); a running daemon sees the record change within a second and reloads,
//! so profiles naming the image get the new current version.

use std::{io::IsTerminal as _, path::PathBuf};

use anyhow::{anyhow, bail, Context as _};
use clap::Subcommand;
use serde::Serialize;

use crate::{
    commands::output::{json, Output},
    config::{images::ImageConfig, Config},
    model::images::{ImageState, Store},
    services::images::{pinned, update, Outcome},
};

/// `bootfabric image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: ImageAction,
    /// Config file (TOML).
    #[arg(
        short,
        long,
        global = true,
        default_value = "/etc/bootfabric/bootfabric.toml"
    )]
    pub config: PathBuf,
}

/// `bootfabric image` subcommands.
#[derive(Debug, Subcommand)]
pub enum ImageAction {
    /// Fetch, verify and store an image of `[images]` and make it current.
    Add {
        /// The image (`[images.<name>]`).
        name: String,
    },
    /// Fetch each image again (every image when none is named); a new version becomes
    /// current, older ones beyond `keep` that no profile pins are deleted.
    Update {
        /// Images to update.
        names: Vec<String>,
        /// Take a release signed before the current version's (an older release: refused
        /// by default, as a mirror could serve one to roll hosts back).
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// The images, their versions and their last update.
    Ls {
        /// Only this image.
        name: Option<String>,
        /// table or json (the records as stored).
        #[arg(long, short, value_enum, default_value_t)]
        output: Output,
    },
    /// Delete one version (not the current one, nor one a profile pins), or with no
    /// `--version` the whole image (not while a profile names it).
    Rm {
        /// The image.
        name: String,
        /// The version to delete.
        #[arg(long)]
        version: Option<String>,
    },
    /// Make the previous version current again (or `--to` one); the version left is marked
    /// rolled back from, so scheduled updates do not bring it back while the source serves it.
    Rollback {
        /// The image.
        name: String,
        /// The version to return to.
        #[arg(long)]
        to: Option<String>,
    },
}

/// Runs `bootfabric image …`; the exit code.
pub fn run(args: ImageArgs) -> i32 {
    let config = match Config::load_unresolved(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bootfabric: invalid configuration: {e}");
            return 2;
        }
    };
    match act(&config, args.action) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bootfabric: {e:#}");
            1
        }
    }
}

fn act(config: &Config, action: ImageAction) -> anyhow::Result<()> {
    let store = config
        .image_store()
        .ok_or_else(|| anyhow!("no [images] here: images live under http.root"))?;
    let find = |name: &str| {
        config
            .images
            .iter()
            .find(|i| i.name == name)
            .ok_or_else(|| anyhow!("no [images.{name}] in {}", config.path.display()))
    };
    match action {
        ImageAction::Add { name } => fetch(config, &store, &[find(&name)?], false),
        ImageAction::Update {
            names,
            allow_downgrade,
        } => {
            let images: Vec<&ImageConfig> = if names.is_empty() {
                config.images.iter().collect()
            } else {
                names.iter().map(|n| find(n)).collect::<Result<_, _>>()?
            };
            if images.is_empty() {
                bail!("no [images] in {}", config.path.display());
            }
            fetch(config, &store, &images, allow_downgrade)
        }
        ImageAction::Ls { name, output } => {
            let names: Vec<&str> = match &name {
                Some(n) => vec![find(n)?.name.as_str()],
                None => config.images.iter().map(|i| i.name.as_str()).collect(),
            };
            let mut records = Vec::new();
            for n in names {
                records.push(Listed {
                    name: n.to_owned(),
                    record: store.read(n)?,
                });
            }
            match output {
                Output::Json => print!("{}", json(&records)?),
                Output::Table => print!("{}", table(&records)),
            }
            Ok(())
        }
        ImageAction::Rm { name, version } => {
            let image = find(&name)?;
            let lock = store.lock(&image.name)?;
            let mut state = store.read(&image.name)?;
            match version {
                Some(v) => {
                    if state.version(&v).is_none() {
                        bail!("{name} has no version {v} (see `bootfabric image ls {name}`)");
                    }
                    if state.current.as_deref() == Some(v.as_str()) {
                        bail!("{v} is {name}'s current version: roll back or update first");
                    }
                    if pinned(&config.inventory, &name).contains(&v) {
                        bail!("a profile pins {name}@{v}: change it first");
                    }
                    state.versions.retain(|x| x.id != v);
                    store.write(&name, &state, &lock)?;
                    store.remove_version(&name, &v, &lock)?;
                    println!("{name}: version {v} deleted");
                }
                None => {
                    let users: Vec<&str> = config
                        .inventory
                        .profiles()
                        .values()
                        .filter(|p| {
                            p.image
                                .as_deref()
                                .is_some_and(|r| r.split('@').next() == Some(name.as_str()))
                        })
                        .map(|p| p.name.as_str())
                        .collect();
                    if !users.is_empty() {
                        bail!(
                            "profiles name {name}: {}: change them first",
                            users.join(", ")
                        );
                    }
                    store.remove_image(&name, &lock)?;
                    println!("{name}: deleted (every version)");
                }
            }
            Ok(())
        }
        ImageAction::Rollback { name, to } => {
            let image = find(&name)?;
            let lock = store.lock(&image.name)?;
            let mut state = store.read(&image.name)?;
            let left = state.current.clone();
            let now = state
                .rollback(to.as_deref())
                .map_err(|why| anyhow!("{name}: {why}"))?;
            store.write(&name, &state, &lock)?;
            println!(
                "{name}: version {now} is current (rolled back from {}); a running daemon serves it within a second",
                left.as_deref().unwrap_or("none")
            );
            Ok(())
        }
    }
}

/// Fetches each image in turn; fails (after trying all) if any failed.
fn fetch(
    config: &Config,
    store: &Store,
    images: &[&ImageConfig],
    allow_downgrade: bool,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut failed = Vec::new();
    for image in images {
        let pins = pinned(&config.inventory, &image.name);
        let bar = Bar::new();
        let result = runtime.block_on(update(
            image,
            store,
            &pins,
            allow_downgrade,
            &mut |file, done, total| bar.show(file, done, total),
        ));
        bar.finish();
        match result {
            Ok(o @ Outcome::New { .. }) => println!(
                "{}: {o}; a running daemon serves it within a second",
                image.name
            ),
            Ok(o) => println!("{}: {o}", image.name),
            Err(e) => {
                eprintln!("{}: {e}", image.name);
                failed.push(image.name.as_str());
            }
        }
    }
    if !failed.is_empty() {
        bail!("not updated: {}", failed.join(", "));
    }
    Ok(())
}

/// A progress bar on a terminal; nothing otherwise (logs and pipes get the result line).
struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Self(Some(bar))
    }

    fn show(&self, file: &str, done: u64, total: Option<u64>) {
        if let Some(b) = &self.0 {
            if b.message() != file {
                b.set_message(file.to_owned());
            }
            b.set_length(total.unwrap_or(done));
            b.set_position(done);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

#[derive(Serialize)]
struct Listed {
    name: String,
    #[serde(flatten)]
    record: ImageState,
}

fn table(records: &[Listed]) -> String {
    use std::fmt::Write as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:<8} {:>8} {:<40} SIGNED BY",
        "IMAGE", "VERSION", "STATE", "AGE", "FILES"
    );
    for l in records {
        if l.record.versions.is_empty() {
            let _ = writeln!(out, "{:<16} {:<16} {:<8}", l.name, "-", "none");
        }
        for v in l.record.versions.iter().rev() {
            let state = if l.record.current.as_deref() == Some(v.id.as_str()) {
                "current"
            } else if v.rejected {
                "rejected"
            } else {
                "kept"
            };
            let files: Vec<String> = v
                .files()
                .map(|f| format!("{} ({})", f.name, f.size))
                .collect();
            let _ = writeln!(
                out,
                "{:<16} {:<16} {:<8} {:>8} {:<40} {}",
                l.name,
                v.id,
                state,
                age(now.saturating_sub(v.added)),
                files.join(" "),
                v.signed_by.as_deref().unwrap_or("-"),
            );
        }
        if let Some(a) = &l.record.last_attempt {
            let _ = writeln!(
                out,
                "{:<16} last update {} ago: {}{}",
                l.name,
                age(now.saturating_sub(a.at)),
                if a.ok { "" } else { "FAILED: " },
                a.message
            );
        }
    }
    out
}

fn age(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
