//! `bootfabric serve`: wires the services together under one supervisor.

use anyhow::Context as _;
use prometheus::Registry;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::Config,
    dhcp::DhcpService,
    http::HttpService,
    ledger::Ledger,
    metrics::{self, CoreMetrics},
    ra::RaService,
    scheduler::{Gate, Reboots},
    supervisor::{Outcome, Supervisor},
    tftp::service::TftpService,
    xdp::Dataplane,
};

/// Runs the daemon until SIGINT or SIGTERM, or until a service fails. Returns the exit code.
pub fn run(config: Config) -> anyhow::Result<i32> {
    init_tracing(&config.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bootfabric")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

fn init_tracing(filter: &str) {
    // RUST_LOG, when set, wins over daemon.log: an operator debugging one run should not
    // have to edit the config.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// SIGHUP: re-reads the config and applies what a running daemon can (hosts, profiles,
/// boot settings and DHCP options, with the XDP fast path's maps). A config that does not
/// load is refused whole, with the key and the reason, and the running one stays.
fn reload(path: &std::path::Path, dhcp: Option<&crate::dhcp::Reloader>) {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            warn!("SIGHUP: config not reloaded: {e}");
            return;
        }
    };
    match dhcp.map(|d| d.reload(&config)) {
        Some(Err(e)) => warn!("SIGHUP: DHCP not reloaded: {e}"),
        Some(Ok(())) => info!(
            hosts = config.inventory.hosts().len(),
            "SIGHUP: config reloaded (DHCP and the XDP fast path)"
        ),
        None => info!("SIGHUP: nothing to reload without a DHCP server"),
    }
}

/// Lifts the soft limit on open files to the hard one: every TFTP transfer holds a socket
/// and a file, and a boot storm means thousands at once (1024, the usual soft limit, would
/// refuse the rest).
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        },
        Ok((soft, _)) => info!(limit = soft, "open files limit"),
        Err(e) => warn!(error = %e, "cannot read the open files limit"),
    }
}

async fn serve(config: Config) -> anyhow::Result<i32> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.path.display(),
        "bootfabric starting"
    );
    raise_open_files_limit();
    let registry = Registry::new();
    let core = CoreMetrics::register(&registry).context("registering metrics")?;
    let cancel = CancellationToken::new();
    let mut supervisor = Supervisor::new(cancel.clone(), core.service_up.clone());

    let mut dataplane = Dataplane::start(&config, &registry)?;
    let fast_path = dataplane.take_fast_path(&config);
    if dataplane.is_active() {
        let token = supervisor.token();
        supervisor.spawn(
            "xdp",
            Box::pin(async move {
                // The service owns the attached programs; they detach when it returns.
                token.cancelled().await;
                drop(dataplane);
                Ok(())
            }),
        );
    } else {
        core.service_up.with_label_values(&["xdp"]).set(0);
    }

    let ledger = Ledger::new(&registry).context("registering ledger metrics")?;
    let gate = Gate::default();
    let reboots = Reboots::new(&config, ledger.clone(), gate.clone(), &registry)
        .context("registering scheduler metrics")?;
    let mut dhcp_reloader = None;
    if let Some(dhcp) = config.dhcp.clone() {
        let service = DhcpService::start(&config, dhcp, &registry, ledger.clone())?;
        if let Some(fp) = fast_path {
            if let Err(e) = service.attach_fast_path(fp) {
                warn!("XDP DHCP fast path off: {e}");
            }
        }
        dhcp_reloader = Some(service.reloader());
        let token = supervisor.token();
        supervisor.spawn(
            "dhcp",
            Box::pin(async move { service.run(token).await.context("DHCP server") }),
        );
    }

    if let Some(tftp) = config.tftp.clone() {
        let service = TftpService::start(&config, tftp, &registry, ledger.clone())?;
        let token = supervisor.token();
        supervisor.spawn(
            "tftp",
            Box::pin(async move { service.run(token).await.context("TFTP server") }),
        );
    }

    if let Some(http) = config.http.clone() {
        let service = HttpService::start(&config, http, &registry, ledger.clone(), gate.clone())?;
        let token = supervisor.token();
        supervisor.spawn(
            "http",
            Box::pin(async move { service.run(token).await.context("HTTP server") }),
        );
    }

    if config.router_advertisements {
        if let Some(ra) = RaService::start(&config.interfaces, &registry)? {
            let token = supervisor.token();
            supervisor.spawn(
                "ra",
                Box::pin(async move { ra.run(token).await.context("router advertisements") }),
            );
        }
    }

    let listener = tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("admin.listen: cannot bind {}", config.admin_listen))?;
    let token = supervisor.token();
    let allow = config.admin_allow.clone();
    let admin = metrics::Admin {
        registry: registry.clone(),
        ledger: ledger.clone(),
        reboots,
    };
    supervisor.spawn(
        "admin",
        Box::pin(async move {
            metrics::serve_admin(listener, admin, allow, token)
                .await
                .context("admin server")
        }),
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let token = cancel.clone();
    let path = config.path.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = sigterm.recv() => info!("SIGTERM: shutting down"),
                _ = sigint.recv() => info!("SIGINT: shutting down"),
                _ = sighup.recv() => {
                    reload(&path, dhcp_reloader.as_ref());
                    continue;
                }
                _ = token.cancelled() => return,
            }
            token.cancel();
            return;
        }
    });

    info!("bootfabric ready");
    match supervisor.run().await {
        Outcome::Clean => {
            info!("bootfabric stopped");
            Ok(0)
        }
        Outcome::Failed(names) => {
            warn!(services = ?names, "bootfabric stopped after a service failure");
            Ok(1)
        }
    }
}
