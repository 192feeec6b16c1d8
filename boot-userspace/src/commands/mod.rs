//! The `bootfabric` command line: `serve`, `check`, `hosts` (ls, show, add, set, rm), `leases`,
//! `history`, `explain`, `reboot`, `admin`, `completions` (and the hidden `man`).

pub mod admin;
pub mod check;
pub mod client;
pub mod explain;
pub mod history;
pub mod hosts;
pub mod image;
pub mod manpages;
pub mod output;
pub mod reboot;
pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Bootfabric: the network boot fabric (DHCP, TFTP, HTTP, XDP, Redfish) in one daemon.
#[derive(Debug, Parser)]
#[command(name = "bootfabric", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        /// Config file (TOML).
        #[arg(short, long, default_value = "/etc/bootfabric/bootfabric.toml")]
        config: PathBuf,
    },
    /// Run the operator's checklist: config, interfaces, ports, files and checksums, disk,
    /// XDP, BMCs, other DHCP servers. Exits 1 when an item fails, 2 on a bad config.
    Check {
        /// Config file (TOML).
        #[arg(short, long, default_value = "/etc/bootfabric/bootfabric.toml")]
        config: PathBuf,
        /// Only validate the config and the files it names (fast; for service start-up).
        #[arg(long)]
        config_only: bool,
        /// Checks to leave out: xdp, bmc, dhcp, checksums, cluster (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = ["xdp", "bmc", "dhcp", "checksums", "cluster"])]
        skip: Vec<String>,
        /// Seconds to listen for DHCP offers from other servers.
        #[arg(long, default_value_t = 3)]
        dhcp_wait_s: u64,
        /// table or json (`{"items":[{"name","status","detail","fix"}],"passed",…}`).
        #[arg(
            long,
            short,
            value_enum,
            default_value_t,
            conflicts_with = "config_only"
        )]
        output: crate::commands::output::Output,
    },
    /// The hosts of the inventory, through the running daemon's admin API:
    /// `ls` (the default; the local inventory when no daemon answers), `show`, `add`, `set`,
    /// `rm`.
    Hosts(Box<crate::commands::hosts::HostsArgs>),
    /// List the DHCP leases in the lease journal (safe while the daemon runs).
    Leases {
        /// What to do instead of listing.
        #[command(subcommand)]
        action: Option<LeasesAction>,
        /// Config file (TOML).
        #[arg(short, long, default_value = "/etc/bootfabric/bootfabric.toml")]
        config: PathBuf,
        /// Also list released, declined and expired records.
        #[arg(long)]
        all: bool,
        /// table or json (`{"items":[{"ip","mac","state","expires_in_s","hostname"}]}`).
        #[arg(long, short, value_enum, default_value_t)]
        output: crate::commands::output::Output,
    },
    /// Past boots from the boot history on disk: each boot's phases, how long each took and
    /// how it ended; it survives restarts and answers with the daemon stopped.
    History(crate::commands::history::HistoryArgs),
    /// Print the DHCP reply a client would get, and which rule decided each part.
    Explain(crate::commands::explain::ExplainArgs),
    /// Reboot hosts through their BMCs, staggered so the fabric stays busy but never
    /// oversubscribed (asks the running daemon's scheduler).
    Reboot(crate::commands::reboot::RebootArgs),
    /// OS images of `[images]`: `add`, `update`, `ls`, `rm`, `rollback`.
    Image(crate::commands::image::ImageArgs),
    /// Admin API credentials (`admin token create`).
    #[command(subcommand)]
    Admin(crate::commands::admin::AdminCommand),
    /// Print the shell completion script: `bootfabric completions bash >
    /// /etc/bash_completion.d/bootfabric` (the Debian package installs all three).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (bootfabric.1 and one per subcommand) into a folder: for packaging.
    #[command(hide = true)]
    Man {
        /// Folder to write the pages into (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `bootfabric leases` subcommands.
#[derive(Debug, Subcommand)]
pub enum LeasesAction {
    /// Repair a lease journal the daemon refuses to start on: keeps a copy of it
    /// (`<journal>.corrupt-<unix time>`), drops the damaged lines and prints them. The daemon
    /// must be stopped.
    Repair {
        /// Config file (TOML).
        #[arg(short, long, default_value = "/etc/bootfabric/bootfabric.toml")]
        config: PathBuf,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Serve { config } => match Config::load(&config) {
            Ok(cfg) => match crate::commands::serve::run(cfg) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("bootfabric: {e:#}");
                    1
                }
            },
            Err(e) => config_error(&e),
        },
        Command::Check {
            config,
            config_only: false,
            skip,
            dhcp_wait_s,
            output,
        } => match Config::load(&config) {
            Ok(cfg) => {
                let has = |k: &str| skip.iter().any(|s| s == k);
                let skip = crate::commands::check::Skip {
                    xdp: has("xdp"),
                    bmc: has("bmc"),
                    dhcp: has("dhcp"),
                    checksums: has("checksums"),
                    cluster: has("cluster"),
                };
                let items = crate::commands::check::run(
                    &cfg,
                    skip,
                    std::time::Duration::from_secs(dhcp_wait_s.clamp(1, 60)),
                );
                let (text, code) = crate::commands::check::render(&items);
                match output {
                    crate::commands::output::Output::Table => print!("{text}"),
                    crate::commands::output::Output::Json => {
                        match crate::commands::output::json(&crate::commands::output::check_report(
                            &items,
                        )) {
                            Ok(json) => print!("{json}"),
                            Err(e) => {
                                eprintln!("bootfabric: {e}");
                                return 1;
                            }
                        }
                    }
                }
                code
            }
            Err(e) => config_error(&e),
        },
        Command::Check { config, .. } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: OK ({} interface(s), {} host(s), {} profile(s), admin on {}, xdp.mode = {})",
                    cfg.path.display(),
                    cfg.interfaces.len(),
                    cfg.inventory.hosts().len(),
                    cfg.inventory.profiles().len(),
                    cfg.admin.listen,
                    cfg.xdp_mode,
                );
                0
            }
            Err(e) => config_error(&e),
        },
        Command::Leases {
            action: Some(LeasesAction::Repair { config }),
            ..
        } => match Config::load(&config) {
            Ok(cfg) => {
                use crate::services::dhcp;
                dhcp::repair_leases(&cfg.state_dir)
            }
            Err(e) => config_error(&e),
        },
        Command::Leases {
            config,
            all,
            output,
            action: None,
        } => match Config::load(&config) {
            Ok(cfg) => crate::commands::explain::leases(&cfg, all, output),
            Err(e) => config_error(&e),
        },
        Command::History(args) => crate::commands::history::run(&args),
        Command::Explain(args) => match Config::load(&args.config) {
            Ok(cfg) => crate::commands::explain::explain(&cfg, &args),
            Err(e) => config_error(&e),
        },
        Command::Reboot(args) => crate::commands::reboot::reboot(&args),
        Command::Admin(command) => crate::commands::admin::run(&command),
        Command::Hosts(args) => crate::commands::hosts::run(*args),
        Command::Image(args) => crate::commands::image::run(args),
        Command::Completions { shell } => {
            crate::commands::manpages::completions(shell, &mut std::io::stdout());
            0
        }
        Command::Man { out } => match crate::commands::manpages::man(&out) {
            Ok(n) => {
                println!("{n} man page(s) in {}", out.display());
                0
            }
            Err(e) => {
                eprintln!("bootfabric: writing man pages to {}: {e}", out.display());
                1
            }
        },
    }
}

/// Config errors exit with 2, like other usage errors.
fn config_error(e: &crate::config::ConfigError) -> i32 {
    eprintln!("bootfabric: invalid configuration: {e}");
    2
}
