//! `bootfabric reboot`: the admin API's client. It sends the selection to the running daemon
//! (whose scheduler owns the run, since it sees the ledger and holds the admission gate),
//! follows the run with a progress bar and a line per host that boots or fails, and prints
//! the report. Ctrl-C cancels the run: no further resets, hosts already reset go on.
//!
//! It sends the bearer token of `admin.token_file` (or `--token-file`) and, when the admin
//! server speaks TLS, pins its certificate (`admin.tls_cert`, on this machine) and presents
//! `--client-cert` if given.

use std::{
    io::{IsTerminal as _, Write as _},
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use hyper::{
    body::Bytes,
    header::{HeaderValue, CONTENT_TYPE},
    Method,
};

use crate::{
    commands::client::{load_config, AdminClient, ClientArgs, SetupError},
    commands::output::{json, Output},
    services::reboot::report::{PhaseLabel, RunState, RunStatus, Selection},
};

/// Arguments of `bootfabric reboot`.
#[derive(Debug, clap::Args)]
pub struct RebootArgs {
    /// How to reach the daemon.
    #[command(flatten)]
    pub api: ClientArgs,
    /// Hosts by name (repeat, or separate with commas).
    #[arg(long = "host", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Every host with a BMC.
    #[arg(long)]
    pub all: bool,
    /// Only hosts in these racks.
    #[arg(long = "rack", value_delimiter = ',')]
    pub racks: Vec<String>,
    /// Only hosts of these hardware models.
    #[arg(long = "model", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Only hosts booting these profiles.
    #[arg(long = "profile", value_delimiter = ',')]
    pub profiles: Vec<String>,
    /// Print the plan and touch no BMC.
    #[arg(long)]
    pub dry_run: bool,
    /// Start the run and return; follow it later with `--status`.
    #[arg(long)]
    pub detach: bool,
    /// Print the status of the current (or last) run and return.
    #[arg(long, conflicts_with_all = ["dry_run", "detach", "all"])]
    pub status: bool,
    /// With --status: table (the report) or json (the run's document, as the admin API
    /// sends it; `null` when there was no run).
    #[arg(long, short, value_enum, default_value_t, requires = "status")]
    pub output: Output,
}

/// Runs `bootfabric reboot`; returns the exit code: 0 when every host booted (or the plan
/// or status was printed), 1 when a host failed, 130 when cancelled, 2 on usage errors.
pub fn reboot(args: &RebootArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bootfabric: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bootfabric reboot: {e:#}");
            1
        }
    }
}

/// The reboot run's resource on the admin API.
struct Api {
    client: AdminClient,
}

impl Api {
    async fn call(&self, method: Method, body: Option<String>) -> anyhow::Result<(u16, Bytes)> {
        let headers = [(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        let r = self
            .client
            .send(method, "/api/reboot", &headers, body.map(Bytes::from))
            .await
            .map_err(|e| anyhow!("{e}"))?;
        Ok((r.status, r.body))
    }

    async fn status(&self) -> anyhow::Result<Option<RunStatus>> {
        let (code, body) = self.call(Method::GET, None).await?;
        match code {
            200 => Ok(Some(
                serde_json::from_slice(&body).context("the admin API's status")?,
            )),
            404 => Ok(None),
            c => Err(anyhow!(
                "admin API: HTTP {c}: {}",
                String::from_utf8_lossy(&body)
            )),
        }
    }
}

async fn run(args: &RebootArgs) -> anyhow::Result<i32> {
    // The config gives the address, the token file and TLS; with --admin it is optional
    // (read when it exists, for the token).
    let client =
        match load_config(&args.api).and_then(|cfg| AdminClient::new(cfg.as_ref(), &args.api)) {
            Ok(c) => c,
            Err(SetupError::Usage(why)) => {
                eprintln!("bootfabric: {why}");
                return Ok(2);
            }
            Err(SetupError::Other(e)) => return Err(e),
        };
    let api = Api { client };
    if args.status && args.output == Output::Json {
        let status = api.status().await?;
        print!("{}", json(&status).context("encoding the status")?);
        return Ok(status.as_ref().map_or(0, exit_code));
    }
    if args.status {
        return match api.status().await? {
            Some(s) => {
                print!("{}", s.report());
                Ok(exit_code(&s))
            }
            None => {
                println!("no reboot run yet");
                Ok(0)
            }
        };
    }
    let sel = Selection {
        hosts: args.hosts.clone(),
        all: args.all,
        racks: args.racks.clone(),
        models: args.models.clone(),
        profiles: args.profiles.clone(),
        dry_run: args.dry_run,
    };
    let body = serde_json::to_string(&sel).context("encoding the selection")?;
    let (code, reply) = api.call(Method::POST, Some(body)).await?;
    if !(200..300).contains(&code) {
        eprintln!(
            "bootfabric reboot: {}",
            String::from_utf8_lossy(&reply).trim_end()
        );
        return Ok(if code == 400 { 2 } else { 1 });
    }
    let first: RunStatus = serde_json::from_slice(&reply).context("the admin API's answer")?;
    if args.dry_run {
        print!("{}", first.report());
        return Ok(0);
    }
    if first.state == RunState::Requested {
        eprintln!(
            "reboot run {} stored for the cluster's leader ({}): {} host(s)",
            first.id,
            first.leader.as_deref().unwrap_or("none now"),
            first.hosts.len()
        );
    } else {
        eprintln!(
            "reboot run {} started: {} host(s), {} download slot(s)",
            first.id,
            first.hosts.len(),
            first.slots
        );
    }
    if args.detach {
        return Ok(0);
    }
    follow(&api, first).await
}

/// Polls the run until it ends, drawing progress; Ctrl-C cancels it.
async fn follow(api: &Api, first: RunStatus) -> anyhow::Result<i32> {
    let tty = std::io::stderr().is_terminal();
    let mut last = first;
    let mut cancelled = false;
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c(), if !cancelled => {
                cancelled = true;
                eprintln!("\ncancelling: no further resets; hosts already reset go on booting");
                api.call(Method::DELETE, None).await?;
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Some(now) = api.status().await? else {
            return Err(anyhow!("the daemon no longer knows the run (restarted?)"));
        };
        if now.id != last.id {
            return Err(anyhow!("another run ({}) replaced run {}", now.id, last.id));
        }
        // One line per host that booted or failed since the last poll: the live timeline.
        for (old, new) in last.hosts.iter().zip(&now.hosts) {
            if old.phase != new.phase
                && matches!(new.phase, PhaseLabel::Booted | PhaseLabel::Failed)
            {
                if tty {
                    eprint!("\r\x1b[2K");
                }
                let at = new.booted_s.or(new.failed_s).unwrap_or(now.elapsed_s);
                let why = new
                    .reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                eprintln!("{at:>8.1} s  {:<20} {}{why}", new.name, new.phase);
            }
        }
        ticks += 1;
        if tty {
            eprint!("\r\x1b[2K{}", now.progress_line(30));
            let _ = std::io::stderr().flush();
        } else if ticks.is_multiple_of(10) {
            eprintln!("{}", now.progress_line(30));
        }
        if now.finished() {
            if tty {
                eprintln!();
            }
            print!("{}", now.report());
            return Ok(if now.state == RunState::Cancelled {
                130
            } else {
                exit_code(&now)
            });
        }
        last = now;
    }
}

fn exit_code(s: &RunStatus) -> i32 {
    i32::from(s.count(PhaseLabel::Failed) > 0)
}
