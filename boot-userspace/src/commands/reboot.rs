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
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use hyper::{
    body::Bytes,
    header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE},
    Method,
};

use crate::{
    config::Config,
    redfish::transport::Endpoint,
    services::reboot::report::{PhaseLabel, RunState, RunStatus, Selection},
};

/// Arguments of `bootfabric reboot`.
#[derive(Debug, clap::Args)]
pub struct RebootArgs {
    /// Config file (TOML): where the daemon's admin API listens.
    #[arg(short, long, default_value = "/etc/bootfabric/bootfabric.toml")]
    pub config: PathBuf,
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
    /// Admin API address (default: admin.listen from the config).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// File holding the admin token (default: admin.token_file from the config).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) to present when the admin server asks for one
    /// (admin.client_ca).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
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

/// The admin API of the daemon: plain HTTP, or TLS with the server's certificate pinned.
struct Api {
    endpoint: Endpoint,
    addr: SocketAddr,
    /// `Authorization: Bearer …`, when a token file is known.
    authorization: Option<HeaderValue>,
}

impl Api {
    async fn call(&self, method: Method, body: Option<String>) -> anyhow::Result<(u16, Bytes)> {
        let mut headers = vec![(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        if let Some(auth) = &self.authorization {
            headers.push((AUTHORIZATION, auth.clone()));
        }
        let r = self
            .endpoint
            .send(method, "/api/reboot", &headers, body.map(Bytes::from))
            .await
            .map_err(|e| {
                anyhow!(
                    "admin API at {}: {e} (is `bootfabric serve` running?)",
                    self.addr
                )
            })?;
        Ok((r.status.as_u16(), r.body))
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
    let cfg = if args.admin.is_none() || args.config.exists() {
        match Config::load(&args.config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("bootfabric: invalid configuration: {e}");
                return Ok(2);
            }
        }
    } else {
        None
    };
    let addr = match (args.admin, &cfg) {
        (Some(a), _) => a,
        (None, Some(cfg)) => {
            let mut a = cfg.admin.listen;
            if a.ip().is_unspecified() {
                a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            a
        }
        (None, None) => return Err(anyhow!("give --admin or a config")),
    };
    let token_file = args
        .token_file
        .clone()
        .or_else(|| cfg.as_ref().and_then(|c| c.admin.token_file.clone()));
    let authorization = match token_file {
        Some(path) => {
            let token = crate::config::secrets::token::read_for_client(&path)
                .map_err(|e| anyhow!("admin token: {e}"))?;
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .context("the admin token is not a header value")?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let tls = cfg.as_ref().and_then(|c| c.admin.tls.as_ref());
    let endpoint = match tls {
        None => Endpoint::new(&format!("http://{addr}"), None, Duration::from_secs(30)),
        Some(tls) => Endpoint::new(
            &format!("https://{addr}"),
            Some(client_tls(&tls.cert, args)?),
            Duration::from_secs(30),
        ),
    }
    .map_err(|e| anyhow!(e))?;
    let api = Api {
        endpoint,
        addr,
        authorization,
    };
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
    eprintln!(
        "reboot run {} started: {} host(s), {} download slot(s)",
        first.id,
        first.hosts.len(),
        first.slots
    );
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
        } else if ticks % 10 == 0 {
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

/// TLS towards the admin server: its certificate (`admin.tls_cert`, readable on this
/// machine) pinned by SHA-256, and the operator's client certificate when given.
fn client_tls(
    server_cert: &std::path::Path,
    args: &RebootArgs,
) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
    use sha2::{Digest as _, Sha256};
    let leaf = CertificateDer::pem_file_iter(server_cert)
        .with_context(|| format!("admin.tls_cert {}", server_cert.display()))?
        .next()
        .ok_or_else(|| {
            anyhow!(
                "admin.tls_cert {} holds no certificate",
                server_cert.display()
            )
        })?
        .with_context(|| format!("admin.tls_cert {}", server_cert.display()))?;
    let pin: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
    let identity = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("--client-cert {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--client-cert {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("--client-key {}", key.display()))?;
            Some((chain, key))
        }
        _ => None,
    };
    crate::redfish::tls::pinned_with_identity(pin, identity).map_err(|e| anyhow!(e))
}

fn exit_code(s: &RunStatus) -> i32 {
    i32::from(s.count(PhaseLabel::Failed) > 0)
}
