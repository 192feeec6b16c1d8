//! `bootfabric serve`: wires the services together under one supervisor.
//!
//! Storage never blocks the network. The services run on two tokio runtimes:
//!
//! - the network runtime ([`NET_WORKERS`] workers named `bootfabric-net`, and the main thread
//!   that runs the supervisor): DHCP, router advertisements, the admin API (metrics, timelines,
//!   the reboot scheduler), the XDP fast path's events and signals. None of them opens or reads
//!   a served file;
//! - the file runtime (a worker per core, `bootfabric-fs`, and at most
//!   [`FILE_BLOCKING_THREADS`] blocking threads): TFTP and HTTP, the services that read images
//!   (HTTP's io_uring rings and its HTTPS runtime are threads of the HTTP service's own).
//!
//! A tokio worker that blocks in a system call does not cost its runtime a share: it can stall
//! it whole (the I/O driver is polled by a parked worker, and one stuck in a read parks no more).
//! One hung read of an image store (NFS gone, a dying disk) on a shared runtime stopped DHCP
//! and `/metrics` with it; on its own runtime it can only stop file serving, which waits on the
//! store anyway. The config reload of SIGHUP, which reads files and canonicalises the roots,
//! runs on a blocking thread of the network runtime for the same reason.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use prometheus::Registry;
use tokio::{
    runtime::Handle,
    signal::unix::{signal, SignalKind},
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::util::notify;
use crate::{
    config::Config,
    fabric::Fabric,
    model::gate::Gate,
    model::ledger::Ledger,
    model::snapshot::{Follower, Live, Next, PublishError, Snapshot},
    services::admission::Admission,
    services::dhcp::{DhcpFollower, DhcpService, ReloadError},
    services::http::HttpService,
    services::ra::RaService,
    services::reboot::RebootService,
    services::tftp::service::TftpService,
    util::metrics::CoreMetrics,
    util::supervisor::{Outcome, ServiceError, Supervisor},
    xdp::{self, Dataplane},
};

/// Workers of the network runtime. DHCP decisions take microseconds under one lock and lease
/// commits have their own thread, so two keep up with the fast path's misses and the admin
/// API on any machine; more would only contend for the lease table.
pub const NET_WORKERS: usize = 2;
/// Blocking threads of the network runtime at most: SIGHUP's config reload and name lookups
/// of BMC hosts.
pub const NET_BLOCKING_THREADS: usize = 8;
/// Blocking threads of the file runtime at most: file operations in flight at once. When a
/// hung store holds them all, more file requests wait in the queue (the network runtime
/// answers on).
pub const FILE_BLOCKING_THREADS: usize = 128;
/// How long the file services get to stop once the daemon stops. A thread stuck in a read
/// of a hung store cannot be stopped at all: past this the daemon exits without them.
pub const FILE_SERVICES_GRACE: Duration = Duration::from_secs(10);

/// Runs the daemon until SIGINT or SIGTERM, or until a service fails. Returns the exit code.
pub fn run(config: Config) -> anyhow::Result<i32> {
    // Flushes the lines still queued when the daemon returns.
    let _log_writer = init_tracing(&config.log, config.log_format);
    let net = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(NET_WORKERS)
        .max_blocking_threads(NET_BLOCKING_THREADS)
        .enable_all()
        .thread_name("bootfabric-net")
        .build()
        .context("starting the network runtime")?;
    let files = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max_blocking_threads(FILE_BLOCKING_THREADS)
        .enable_all()
        .thread_name("bootfabric-fs")
        .build()
        .context("starting the file runtime")?;
    let code = net.block_on(serve(config, files.handle().clone()));
    // Threads stuck on a hung store would keep a plain drop waiting forever.
    files.shutdown_timeout(Duration::from_secs(1));
    net.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Runs `service` on the file runtime, as a service of the supervisor (on the network
/// runtime). Once `cancel` fires it gets [`FILE_SERVICES_GRACE`] to return; a service whose
/// threads are stuck on storage is then given up on and reported failed, so that SIGTERM still
/// stops the daemon.
fn on_file_runtime(
    files: &Handle,
    name: &'static str,
    cancel: CancellationToken,
    service: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> {
    let mut task = files.spawn(service);
    Box::pin(async move {
        let grace = async {
            cancel.cancelled().await;
            tokio::time::sleep(FILE_SERVICES_GRACE).await;
        };
        tokio::select! {
            joined = &mut task => joined.with_context(|| format!("{name} task"))?,
            _ = grace => {
                task.abort();
                Err(anyhow::anyhow!(
                    "{name} did not stop within {FILE_SERVICES_GRACE:?}: its threads are stuck (a hung image store?)"
                ))
            }
        }
    })
}

/// Lines queued for the log writer thread at most; beyond, lines are dropped (and counted
/// in the last line the daemon writes).
const LOG_QUEUE: usize = 65_536;

/// `filter` with rustls held to errors unless it names rustls itself: rustls warns of what a
/// client sent (an IP address as the server name, as iPXE and wrk send for an `https://`
/// address; an unknown extension), a line per handshake any machine on the network can
/// ask for, where the daemon counts the failures that matter in its own metrics.
fn quiet_peers(filter: &str) -> String {
    if filter.split(',').any(|d| d.trim().starts_with("rustls")) {
        filter.to_owned()
    } else if filter.trim().is_empty() {
        "rustls=error".to_owned()
    } else {
        format!("{filter},rustls=error")
    }
}

fn init_tracing(
    filter: &str,
    format: crate::config::LogFormat,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal as _;
    // RUST_LOG, when set, wins over daemon.log: an operator debugging one run should not
    // have to edit the config.
    // Either way rustls is held to errors unless the filter names it (`quiet_peers`).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(quiet_peers(&f)).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(quiet_peers(filter)));
    let ansi = std::io::stderr().is_terminal();
    // Lines go to stderr from a thread of their own, through a bounded queue that drops
    // when full: a journald that stalls (or a flood of exchanges) never stalls the tasks
    // answering DHCP and TFTP, which write a line per exchange.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE)
        .thread_name("bootfabric-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        // Colour codes only for a person at a terminal: journald and files store them as
        // text, and every grep then has to step around them.
        crate::config::LogFormat::Text => builder.with_ansi(ansi).try_init(),
        // Fields at the top level (`{"timestamp","level","target","mac",…,"message"}`): what
        // a collector indexes without a nested `fields` object.
        crate::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    guard
}

/// Puts the boot history on disk back into the ledger's timelines (the last events of each
/// inventory host) and journals every event from now on. The history is the operator's
/// record, not what the network needs: a history that cannot be read or written is logged
/// and the daemon serves without it (or without the part it could not read).
fn keep_history(
    ledger: &Ledger,
    inventory: &crate::model::inventory::Inventory,
    state_dir: &std::path::Path,
    max_bytes: u64,
    registry: &Registry,
) -> Option<Arc<crate::services::history::Writer>> {
    use crate::services::history;
    let dir = history::dir(state_dir);
    // Only the newest of each host matter (the ledger keeps a bounded timeline per host):
    // memory stays bounded by the inventory, whatever the history's size.
    let mut last: std::collections::HashMap<
        crate::model::inventory::Mac,
        std::collections::VecDeque<crate::model::ledger::Event>,
    > = inventory
        .hosts()
        .iter()
        .map(|h| (h.mac, Default::default()))
        .collect();
    // A clock that ran ahead once must not leave events "in the future" that the scheduler
    // would take for this boot's.
    let horizon = crate::model::ledger::unix_ms().saturating_add(60_000);
    let read = history::read(&dir, |line| {
        if let Some((mac, event)) = line.event() {
            if let Some(q) = last.get_mut(&mac).filter(|_| event.at_ms <= horizon) {
                if q.len() == crate::model::ledger::EVENTS_PER_HOST {
                    q.pop_front();
                }
                q.push_back(event);
            }
        }
    });
    match read {
        Ok(stats) => {
            let mut events: Vec<_> = last
                .into_iter()
                .flat_map(|(mac, q)| q.into_iter().map(move |e| (mac, e)))
                .collect();
            events.sort_by_key(|(_, e)| e.at_ms);
            let restored = ledger.restore(events);
            if stats.malformed > 0 {
                warn!(
                    dir = %dir.display(),
                    malformed = stats.malformed,
                    "boot history: {} damaged lines skipped",
                    stats.malformed
                );
            }
            for why in &stats.unreadable {
                warn!(dir = %dir.display(), "boot history: file skipped: {why}");
            }
            info!(
                dir = %dir.display(),
                lines = stats.lines,
                restored,
                "boot history: {restored} events put back into the hosts' timelines"
            );
        }
        Err(e) => warn!(
            dir = %dir.display(),
            error = %e,
            "boot history unreadable: the timelines start empty"
        ),
    }
    match history::start(&dir, max_bytes, registry) {
        Ok(writer) => {
            ledger.set_journal(Arc::clone(&writer) as Arc<dyn crate::model::ledger::Journal>);
            Some(writer)
        }
        Err(e) => {
            warn!(
                dir = %dir.display(),
                error = %e,
                "boot history cannot be written: no history is kept this run"
            );
            None
        }
    }
}

/// The reboot service's finished runs, kept in the boot history (`history/runs/`).
struct KeptReports(Arc<crate::services::history::Writer>);

impl crate::services::reboot::runner::ReportStore for KeptReports {
    fn finished(&self, report: &crate::services::reboot::report::RunStatus) {
        if let Ok(json) = serde_json::to_vec(report) {
            self.0.report(report.id, json);
        }
    }
}

/// The last run's report kept before this start, if the history has one.
fn last_report(state_dir: &std::path::Path) -> Option<crate::services::reboot::report::RunStatus> {
    let dir = crate::services::history::dir(state_dir);
    match crate::services::history::last_report(&dir) {
        // Only a finished run's report: one still "running" (a damaged or edited file) would
        // hold the scheduler busy with a run nobody drives.
        Ok(Some(bytes)) => {
            serde_json::from_slice::<crate::services::reboot::report::RunStatus>(&bytes)
                .map_err(|e| warn!(error = %e, "the last reboot run's report is unreadable"))
                .ok()
                .filter(|r| r.finished() && r.id < u64::MAX / 2)
        }
        Ok(None) => None,
        Err(e) => {
            warn!(error = %e, dir = %dir.display(), "reboot run reports unreadable");
            None
        }
    }
}

/// The ledger keeps the timelines of inventory hosts apart from strangers' (and never evicts
/// them): it follows the snapshot's inventory.
struct LedgerFollower(Ledger);

impl Follower for LedgerFollower {
    fn name(&self) -> &'static str {
        "ledger"
    }

    fn check(&self, _next: &Snapshot) -> Result<(), String> {
        Ok(())
    }

    fn apply(&self, next: &Arc<Snapshot>) {
        self.0.set_inventory(&next.inventory);
    }
}

/// Announces every published generation (`config.generation`) once readers load it:
/// controllers learn that what they changed is in effect (see [`Live::on_published`]).
fn announce_generations(live: &Live, ledger: &Ledger) {
    let ledger = ledger.clone();
    live.on_published(move |next| {
        ledger.emit(
            crate::model::ledger::events::EventType::ConfigGeneration,
            None,
            None,
            serde_json::json!({ "generation": next.generation }),
        );
    });
}

/// The next snapshot's parts from a freshly loaded `config`: the TOML's hosts, profiles and
/// `[boot]`, and the script names they make.
///
/// `config.inventory` already holds the admin API's changes (`Config::load` applies
/// `state_dir/api-inventory.json` over the TOML, consumed `once` hosts included).
/// A host's one network boot (`netboot = "once"`) that was used stays used across a reload
/// while the host exists: the TOML says what a host may do, not what it did.
pub fn next_from_config(config: &Config, current: &Snapshot) -> Next {
    let mut inventory = config.inventory.clone();
    for name in current.inventory.consumed() {
        if inventory.hosts().iter().any(|h| &h.name == name) {
            inventory.set_consumed(name, true);
        }
    }
    // The templates compiled (and checked for every host) by `Config::load`.
    Next::new(inventory, config.boot.clone()).with_templates(config.templates.clone())
}

/// The key (`daemon.state_dir` or `daemon.inventory`) of a file the admin API writes or reads
/// that `config` moves from where the running API has it. The API keeps its paths from start:
/// a reload that moved them would read one overlay while writes go to the other.
fn moved_api_files(
    inventory_file: Option<&std::path::Path>,
    overlay_path: &std::path::Path,
    config: &Config,
) -> Option<&'static str> {
    if crate::config::overlay::Overlay::path_for(&config.state_dir, config.cluster.is_some())
        != overlay_path
    {
        Some("daemon.state_dir")
    } else if config.inventory_file.as_deref() != inventory_file {
        Some("daemon.inventory")
    } else {
        None
    }
}

/// What a reload hands new settings to besides the snapshot.
struct Reloaded<'a> {
    /// `[images]`, for the images service's next update and watch.
    images: &'a crate::services::images::ImagesConfig,
    /// HTTPS's certificate, when HTTPS runs.
    https: Option<&'a crate::services::http::tls::Certs>,
}

/// SIGHUP: re-reads the config and publishes it as the next snapshot (hosts, profiles, boot
/// settings; DHCP options, with the XDP fast path's maps; HTTPS's certificate). A config that
/// does not load, or that a follower refuses (DHCP: a changed subnet or mode), is refused
/// whole, with the key or the follower and the reason, and the running generation stays.
fn reload(
    trigger: &str,
    path: &std::path::Path,
    live: &Live,
    dhcp: Option<&DhcpFollower>,
    api: &crate::admin::api::ApiState,
    handles: Reloaded<'_>,
) {
    // Held to the end: an API write between the overlay file's read (in `Config::load`) and
    // this publish would otherwise be published over.
    let mut api_writes = api.overlay();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            warn!(
                generation = live.generation(),
                "{trigger}: config not reloaded: {e}"
            );
            return;
        }
    };
    if let Some(key) = moved_api_files(api.inventory_file.as_deref(), api.overlay_path(), &config) {
        warn!(
            generation = live.generation(),
            key, "{trigger}: config not reloaded: {key} changed: restart to use it"
        );
        return;
    }
    if dhcp.is_none() && config.dhcp.is_some() {
        // The rest is published; the server itself only starts with the daemon.
        warn!("{trigger}: [dhcp] was added: restart to start the DHCP server");
    }
    let published = live.publish(|current| {
        if let Some(d) = dhcp {
            d.stage(config.dhcp.as_ref())?;
        }
        Ok::<_, ReloadError>(next_from_config(&config, current))
    });
    match published {
        Ok(next) => {
            // A host the reload removed forgets its used `once` on disk too: re-added
            // later, it starts unused (as it does in the snapshot).
            if api_writes.prune_consumed(&next.inventory) {
                if let Err(e) = api_writes.save(api.overlay_path()) {
                    warn!(error = %e, "{trigger}: cannot forget removed hosts' used netboot once");
                }
            }
            // The images service's next update and watch use the reloaded [images] (keys
            // removed are no longer trusted, images added are scheduled).
            handles.images.store(Arc::new(config.images.clone()));
            let tls = config.http.as_ref().and_then(|h| h.tls.as_ref());
            match (handles.https, tls) {
                // A renewed certificate is served from the next handshake.
                (Some(certs), Some(t)) => match certs.reload(&t.files) {
                    Ok(()) if t.port != certs.port() => info!(
                        "{trigger}: HTTPS certificate read from {}; http.tls_port {} needs a restart (serving on {})",
                        t.files.cert.display(),
                        t.port,
                        certs.port()
                    ),
                    Ok(()) => info!(
                        "{trigger}: HTTPS certificate read from {}",
                        t.files.cert.display()
                    ),
                    Err(e) => warn!(
                        "{trigger}: HTTPS keeps its certificate: {}: {}",
                        e.key, e.reason
                    ),
                },
                (None, Some(_)) => {
                    warn!("{trigger}: http.tls_cert was added: restart to start HTTPS")
                }
                (Some(_), None) => warn!(
                    "{trigger}: http.tls_cert was removed: HTTPS serves its certificate until a restart"
                ),
                (None, None) => {}
            }
            info!(
                generation = next.generation,
                hosts = next.inventory.hosts().len(),
                "{trigger}: config reloaded, generation {}",
                next.generation
            )
        }
        Err(PublishError::Build(e)) => warn!(
            generation = live.generation(),
            "{trigger}: config not reloaded: dhcp: {e}"
        ),
        Err(PublishError::Templates(errors)) => warn!(
            generation = live.generation(),
            "{trigger}: config not reloaded: templates refused it: {errors}"
        ),
        Err(PublishError::Refused { follower, why }) => warn!(
            generation = live.generation(),
            follower, "{trigger}: config not reloaded: {follower} refused it: {why}"
        ),
    }
}

/// What the data path is set up with, from `[xdp]` and the other sections' values it needs:
/// the DHCP mode and rate limit and the TFTP transfer ports.
pub fn dataplane_settings(config: &Config) -> xdp::Settings {
    xdp::Settings {
        mode: config.xdp_mode,
        relay_rate_limit: config.xdp_relay_rate_limit,
        dhcp: xdp::DhcpPath::new(
            config.dhcp.as_ref().map(|d| d.mode),
            config.xdp_dhcp_fast_path,
        ),
        client_rate_limit: config.dhcp.as_ref().map(|d| d.rate_limit),
        tftp_transfer_ports: config.tftp_transfer_ports,
        tftp_kernel_slots: match &config.tftp {
            Some(t) if !t.kernel_files.is_empty() => {
                (t.kernel_bytes / bootfabric_abi::tftp::CHUNK_BYTES as u64) as u32
            }
            _ => 0,
        },
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

async fn serve(config: Config, files: Handle) -> anyhow::Result<i32> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.path.display(),
        "bootfabric starting"
    );
    raise_open_files_limit();
    // Before any service says it listens: a signal sent once a "listening" line is out (a
    // supervisor, a test) is then queued for the loop below, never the default action
    // (SIGHUP's is to terminate).
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let registry = Registry::new();
    let ebpf = if xdp::embedded_object().is_some() {
        "embedded"
    } else {
        "absent"
    };
    let core = CoreMetrics::register(&registry, ebpf).context("registering metrics")?;
    let cancel = CancellationToken::new();
    let mut supervisor = Supervisor::new(cancel.clone(), core.service_up.clone());

    let fabric = Fabric::resolve(&config.interfaces);
    let mut dataplane = Dataplane::start(fabric.ifaces(), &dataplane_settings(&config), &registry)?;
    let fast_path = dataplane.take_fast_path(fabric.ifaces());
    let kernel_tftp = dataplane.take_kernel_tftp();
    if dataplane.is_active() {
        let token = supervisor.token();
        supervisor.spawn(
            "xdp",
            Box::pin(async move {
                // The service owns the attached programs; they detach when it returns.
                token.cancelled().await;
                drop(dataplane);
                Ok::<(), ServiceError>(())
            }),
        );
    } else {
        core.service_up.with_label_values(&["xdp"]).set(0);
    }

    // Generation 1: what every service answers from until a reload publishes the next.
    let first = Next::new(config.inventory.clone(), config.boot.clone())
        .with_templates(config.templates.clone());
    let live = Live::new(first, &registry).context("registering snapshot metrics")?;
    let ledger = Ledger::new(&registry).context("registering ledger metrics")?;
    ledger.set_inventory(&live.load().inventory);
    let history = if config.history_bytes > 0 {
        keep_history(
            &ledger,
            &live.load().inventory,
            &config.state_dir,
            config.history_bytes,
            &registry,
        )
    } else {
        None
    };
    live.follow(Arc::new(LedgerFollower(ledger.clone())));
    announce_generations(&live, &ledger);
    let gate = Gate::with_metrics(config.scheduler.gate_settings(), &registry)
        .context("registering gate metrics")?;
    {
        // Slots from the measured egress, and slots freed when nobody asks.
        let admission = Admission::new(
            gate.clone(),
            ledger.clone(),
            Arc::clone(&live),
            &config.scheduler,
        );
        let token = supervisor.token();
        supervisor.spawn(
            "admission",
            Box::pin(async move {
                admission.run(token).await;
                Ok::<(), ServiceError>(())
            }),
        );
    }
    // Before the reboot service: in cluster mode it resets hosts only while this fabric leads.
    let (cluster, leadership, runs, etcd, timeline, evidence) = match &config.cluster {
        Some(c) => {
            let j = join_cluster(c, &live, &ledger, &registry, &mut supervisor).await?;
            (
                Some(j.view),
                Some(j.leadership),
                Some(j.runs),
                Some(j.etcd),
                Some(j.timeline),
                Some(j.evidence),
            )
        }
        None => (None, None, None, None, None, None),
    };
    let setup = crate::services::reboot::runner::Setup {
        live: Arc::clone(&live),
        image_roots: config
            .image_roots()
            .into_iter()
            .map(std::path::Path::to_path_buf)
            .collect(),
        scheduler: config.scheduler.clone(),
        leadership,
        runs,
        fabrics: cluster.clone(),
        evidence,
        reports: history.as_ref().map(|w| {
            (
                Arc::new(KeptReports(Arc::clone(w)))
                    as Arc<dyn crate::services::reboot::runner::ReportStore>,
                last_report(&config.state_dir),
            )
        }),
    };
    let reboots = RebootService::new(setup, ledger.clone(), gate.clone(), &registry)
        .context("registering scheduler metrics")?;
    if config.cluster.is_some() {
        // The leader takes over the runs a dead (or replaced) leader left running.
        let (reboots, token) = (Arc::clone(&reboots), supervisor.token());
        supervisor.spawn(
            "reboot-takeover",
            Box::pin(async move {
                reboots.follow_cluster(token).await;
                anyhow::Ok(())
            }),
        );
    }
    let mut dhcp_follower = None;
    if let Some(dhcp) = config.dhcp.clone() {
        // The DHCP server keeps its own copy (it decides under its own lock) and follows.
        let start = live.load();
        let sources = crate::services::dhcp::Sources {
            inventory: start.inventory.clone(),
            boot: start.boot.clone(),
            ledger: ledger.clone(),
            journal: crate::services::dhcp::journal_path(&config.state_dir),
            config_path: config.path.clone(),
        };
        let mut service = DhcpService::start(dhcp, fabric.ifaces(), sources, &registry)?;
        if let Some(cluster) = &etcd {
            // The fabric's one connection (lazy: DHCP starts while etcd is down).
            let leases = crate::cluster::leases::Leases::new(cluster.clone(), &registry)
                .context("registering the cluster leases' metrics")?;
            service.attach_cluster(leases);
        }
        if let Some(fp) = fast_path {
            if let Err(e) = service.attach_fast_path(fp) {
                warn!("XDP DHCP fast path off: {e}");
            }
        }
        let follower = service.reloader().follower();
        live.follow(Arc::clone(&follower) as Arc<dyn Follower>);
        dhcp_follower = Some(follower);
        let token = supervisor.token();
        supervisor.spawn(
            "dhcp",
            Box::pin(async move { service.run(token).await.context("DHCP server") }),
        );
    }

    if let Some(dhcp6) = config.dhcp6.clone() {
        let sources = crate::services::dhcp::v6::Sources6 {
            live: Arc::clone(&live),
            ledger: ledger.clone(),
            journal: crate::services::dhcp::v6::journal_path(&config.state_dir),
        };
        let service = crate::services::dhcp::v6::Dhcp6Service::start(
            dhcp6,
            fabric.ifaces(),
            sources,
            &registry,
        )?;
        let token = supervisor.token();
        supervisor.spawn(
            "dhcp6",
            Box::pin(async move { service.run(token).await.context("DHCPv6 server") }),
        );
    }

    if let Some(tftp) = config.tftp.clone() {
        // Bound inside the file runtime, so its sockets are polled by that runtime's driver.
        let service = {
            let _files = files.enter();
            let sources = crate::services::tftp::service::Sources {
                live: Arc::clone(&live),
                ledger: ledger.clone(),
                transfer_ports: config.tftp_transfer_ports,
                kernel: kernel_tftp,
            };
            TftpService::start(tftp, fabric.ifaces(), sources, &registry)?
        };
        let token = supervisor.token();
        let run = on_file_runtime(&files, "tftp", token.clone(), async move {
            service.run(token).await.context("TFTP server")
        });
        supervisor.spawn("tftp", run);
    }

    // HTTPS's certificate, re-read by every reload.
    let mut https_certs = None;
    if let Some(http) = config.http.clone() {
        let service = {
            let _files = files.enter();
            let sources = crate::services::http::Sources {
                live: Arc::clone(&live),
                ledger: ledger.clone(),
                gate: gate.clone(),
            };
            HttpService::start(http, fabric.ifaces(), sources, &registry)?
        };
        https_certs = service.certs();
        let token = supervisor.token();
        let run = on_file_runtime(&files, "http", token.clone(), async move {
            service.run(token).await.context("HTTP server")
        });
        supervisor.spawn("http", run);
    }

    if config.router_advertisements {
        // Links whose addresses DHCPv6 hands out are advertised as managed.
        let managed = config
            .dhcp6
            .iter()
            .flat_map(|d| {
                d.subnets.iter().filter_map(|s| {
                    let m = crate::services::ra::Managed { prefix: s.net };
                    s.interface.clone().map(|i| (i, m))
                })
            })
            .collect();
        if let Some(ra) = RaService::start(fabric.ifaces(), &managed, &registry)? {
            let token = supervisor.token();
            supervisor.spawn(
                "ra",
                Box::pin(async move { ra.run(token).await.context("router advertisements") }),
            );
        }
    }

    // A changed image record (a scheduled update, or an operator's `bootfabric image`)
    // reloads the configuration as SIGHUP does, so profiles get the image's new version.
    let images_changed = Arc::new(tokio::sync::Notify::new());
    let images_config: crate::services::images::ImagesConfig =
        Arc::new(arc_swap::ArcSwap::from_pointee(config.images.clone()));
    // Wherever images can live (an HTTP root): a reload may add them.
    if let Some(store) = config.image_store() {
        let images = crate::services::images::ImagesService::start(
            Arc::clone(&images_config),
            store,
            Arc::clone(&live),
            Arc::clone(&images_changed),
            &registry,
        )
        .context("registering the images' metrics")?;
        let token = supervisor.token();
        supervisor.spawn(
            "images",
            Box::pin(async move { images.run(token).await.context("images") }),
        );
    }

    if !config.webhooks.is_empty() {
        let hooks = crate::services::webhooks::WebhookService::start(
            &config.webhooks,
            ledger.clone(),
            &registry,
        )?;
        let token = supervisor.token();
        supervisor.spawn(
            "webhooks",
            Box::pin(async move { hooks.run(token).await.context("webhooks") }),
        );
    }

    let listener = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("admin.listen: cannot bind {}", config.admin.listen))?;
    let token = supervisor.token();
    let (access, tls) = crate::admin::settings(&config.admin)?;
    // Cluster mode: the API's inventory is etcd's, followed by a watch (`cluster::inventory`).
    let (api, shared_inventory) = match etcd {
        None => (
            crate::admin::api::ApiState::open(
                Arc::clone(&live),
                ledger.clone(),
                config.inventory_file.clone(),
                &config.state_dir,
            ),
            None,
        ),
        Some(etcd) => {
            let store = crate::cluster::inventory::InventoryStore::new(etcd, &registry)
                .context("registering the cluster inventory's metrics")?;
            (
                crate::admin::api::ApiState::clustered(
                    Arc::clone(&live),
                    ledger.clone(),
                    config.inventory_file.clone(),
                    &config.state_dir,
                    store.clone(),
                ),
                Some(store),
            )
        }
    };
    let api = Arc::new(api.context("the admin API's inventory changes")?);
    if let Some(store) = shared_inventory {
        let sink: Arc<dyn crate::cluster::inventory::Sink> = api.clone();
        let token = supervisor.token();
        supervisor.spawn(
            "cluster-inventory",
            Box::pin(async move {
                store.run(sink, token).await;
                anyhow::Ok(())
            }),
        );
    }
    {
        let (api, token) = (Arc::clone(&api), supervisor.token());
        supervisor.spawn(
            "netboot-once",
            Box::pin(async move {
                crate::admin::consume::run(api, token).await;
                anyhow::Ok(())
            }),
        );
    }
    let admin = crate::admin::Admin {
        registry: registry.clone(),
        ledger: ledger.clone(),
        reboots,
        live: Arc::clone(&live),
        max_event_streams: config.admin.max_event_streams,
        api: Arc::clone(&api),
        cluster,
        timeline,
        view_state: Default::default(),
    };
    supervisor.spawn(
        "admin",
        Box::pin(async move {
            crate::admin::serve(listener, admin, access, tls, token)
                .await
                .context("admin server")
        }),
    );
    for url in config.inventory.plaintext_bmc_urls() {
        warn!(bmc = url, "BMC over plain http (allow_plaintext = true): its password crosses the network in clear");
    }

    let live_now = Arc::clone(&live);
    let token = cancel.clone();
    let path = config.path.clone();
    let reloading = Arc::new(AtomicBool::new(false));
    // An image change that arrived while a reload ran: that reload may have read the record
    // before it changed, so another follows it.
    let images_pending = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        // Off the workers (a reload reads files and canonicalises the roots, which may sit
        // on a hung store), one at a time; false when one is running.
        let start_reload = |trigger: &'static str| {
            if reloading.swap(true, Ordering::AcqRel) {
                return false;
            }
            let (path, dhcp, live, api) = (
                path.clone(),
                dhcp_follower.clone(),
                Arc::clone(&live),
                Arc::clone(&api),
            );
            let done = Arc::clone(&reloading);
            let (images, pending, again) = (
                Arc::clone(&images_config),
                Arc::clone(&images_pending),
                Arc::clone(&images_changed),
            );
            let https = https_certs.clone();
            tokio::task::spawn_blocking(move || {
                let handles = Reloaded {
                    images: &images,
                    https: https.as_deref(),
                };
                notify::reloading();
                reload(trigger, &path, &live, dhcp.as_deref(), &api, handles);
                // Refused or taken, the daemon serves (the generation it had, or the new one).
                notify::ready(&format!("serving generation {}", live.load().generation));
                done.store(false, Ordering::Release);
                if pending.swap(false, Ordering::AcqRel) {
                    again.notify_one();
                }
            });
            true
        };
        loop {
            tokio::select! {
                _ = sigterm.recv() => info!("SIGTERM: shutting down"),
                _ = sigint.recv() => info!("SIGINT: shutting down"),
                _ = sighup.recv() => {
                    if !start_reload("SIGHUP") {
                        warn!("SIGHUP: the previous reload is still running; ignored");
                    }
                    continue;
                }
                _ = images_changed.notified() => {
                    if !start_reload("image record changed") {
                        images_pending.store(true, Ordering::Release);
                    }
                    continue;
                }
                _ = token.cancelled() => return,
            }
            notify::stopping();
            token.cancel();
            return;
        }
    });

    info!("bootfabric ready");
    notify::ready(&format!(
        "serving generation {}",
        live_now.load().generation
    ));
    tokio::spawn(notify::watchdog(cancel.clone()));
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

/// What joining the cluster hands the rest of the daemon.
struct Joined {
    /// What this fabric sees of the cluster, for the admin API.
    view: Arc<arc_swap::ArcSwap<crate::cluster::membership::ClusterView>>,
    /// The connection, for the shared inventory.
    etcd: crate::cluster::Cluster,
    /// The reader of the shared timelines, for the admin API.
    timeline: crate::cluster::timeline::Reader,
    /// This fabric's leadership, for the reboot service.
    leadership: crate::cluster::election::Leadership,
    /// The run records, for the reboot service.
    runs: crate::cluster::runs::RunStore,
    /// Boots of a run's hosts reported at other fabrics, for the reboot service.
    evidence: crate::cluster::evidence::Evidence,
}

/// Joins the cluster of `[cluster]`: registers this fabric (its measured egress and the
/// generation it serves) under an etcd lease for as long as the daemon runs. etcd being
/// down does not stop the start: the registration keeps trying, and everything that does
/// not need etcd serves meanwhile. Shares the ledger's boot timelines through etcd
/// (`cluster::timeline`) and campaigns for the leadership (the leader runs the reboot runs).
async fn join_cluster(
    config: &crate::config::cluster::ClusterConfig,
    live: &Arc<Live>,
    ledger: &Ledger,
    registry: &Registry,
    supervisor: &mut Supervisor,
) -> anyhow::Result<Joined> {
    use crate::cluster::{membership::Membership, timeline, Cluster, FabricRecord};
    let cluster = Cluster::connect(config)
        .await
        .context("cluster: connecting to etcd")?;
    let (share, writer) =
        timeline::Share::new(cluster.clone(), config.timeline_retention, registry)
            .context("registering the shared timeline's metrics")?;
    ledger.set_tap(share);
    let token = supervisor.token();
    supervisor.spawn(
        "cluster-timeline",
        Box::pin(async move {
            writer.run(token).await;
            anyhow::Ok(())
        }),
    );
    let reader = timeline::Reader::new(cluster.clone());
    let membership =
        Membership::new(cluster.clone(), registry).context("registering the cluster's metrics")?;
    let view = membership.view();
    // The leader runs the reboot runs; the election shows who leads in the same view.
    let election =
        crate::cluster::election::Election::new(cluster.clone(), Arc::clone(&view), registry)
            .context("registering the cluster's metrics")?;
    let leadership = election.leadership();
    let token = supervisor.token();
    supervisor.spawn(
        "election",
        Box::pin(async move { election.run(token).await.context("cluster election") }),
    );
    let (name, rack) = (config.name.clone(), config.rack.clone());
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (live, ledger) = (Arc::clone(live), ledger.clone());
    let record = move || FabricRecord {
        name: name.clone(),
        rack: rack.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started,
        egress_bps: ledger.egress_rates().iter().map(|(_, r)| r).sum(),
        generation: live.generation(),
    };
    let token = supervisor.token();
    supervisor.spawn(
        "cluster",
        Box::pin(async move {
            membership
                .run(record, token)
                .await
                .context("cluster membership")
        }),
    );
    let runs = crate::cluster::runs::RunStore::new(cluster.clone());
    // The leader's runner sees a host of another fabric's rack boot there.
    let evidence = crate::cluster::evidence::Evidence::new(cluster.clone());
    let (watch, token) = (evidence.clone(), supervisor.token());
    supervisor.spawn(
        "boot-evidence",
        Box::pin(async move {
            watch.run(token).await;
            anyhow::Ok(())
        }),
    );
    Ok(Joined {
        view,
        etcd: cluster,
        timeline: reader,
        leadership,
        runs,
        evidence,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::{boot::BootSettings, inventory::Inventory};

    #[test]
    fn rustls_is_held_to_errors_unless_the_filter_names_it() {
        assert_eq!(quiet_peers("info"), "info,rustls=error");
        assert_eq!(
            quiet_peers("info,bootfabric::xdp=debug"),
            "info,bootfabric::xdp=debug,rustls=error"
        );
        assert_eq!(quiet_peers("info, rustls=debug"), "info, rustls=debug");
        assert_eq!(quiet_peers(""), "rustls=error");
        // What comes out is a filter tracing takes.
        for f in ["info", "warn,bootfabric::services::http=debug", ""] {
            tracing_subscriber::EnvFilter::try_new(quiet_peers(f)).expect("a filter");
        }
    }

    fn inventory(names: &[&str]) -> Inventory {
        let mut text = String::from("[profiles.p]\n");
        for (i, n) in names.iter().enumerate() {
            text += &format!(
                "[[hosts]]\nname = \"{n}\"\nmac = \"52:54:00:00:00:{i:02x}\"\nprofile = \"p\"\nnetboot = \"once\"\n"
            );
        }
        Inventory::from_wire(
            Path::new("hosts.toml"),
            toml::from_str(&text).expect("toml"),
        )
        .expect("inventory")
    }

    /// A reload that moves the API's overlay or inventory file is refused with the key: the
    /// API would keep writing the files it started with.
    #[test]
    fn a_reload_that_moves_the_apis_files_names_the_key() {
        let mut config = Config::from_wire(
            Path::new("bootfabric.toml"),
            toml::from_str("").expect("config"),
            inventory(&[]),
        )
        .expect("config");
        config.state_dir = Path::new("/var/lib/bootfabric").into();
        config.inventory_file = Some(Path::new("/etc/bootfabric/hosts.toml").into());
        let overlay = crate::config::overlay::Overlay::path_in(Path::new("/var/lib/bootfabric"));
        let inventory_file = Path::new("/etc/bootfabric/hosts.toml");
        assert_eq!(
            moved_api_files(Some(inventory_file), &overlay, &config),
            None
        );
        let moved = crate::config::overlay::Overlay::path_in(Path::new("/srv/state"));
        assert_eq!(
            moved_api_files(Some(inventory_file), &moved, &config),
            Some("daemon.state_dir")
        );
        assert_eq!(
            moved_api_files(Some(Path::new("/etc/other.toml")), &overlay, &config),
            Some("daemon.inventory")
        );
        assert_eq!(
            moved_api_files(None, &overlay, &config),
            Some("daemon.inventory")
        );
    }

    /// A reload takes the TOML's hosts, but a used `once` stays used while its host exists
    /// (the TOML says what a host may do, not what it did); a host that left forgets it.
    #[test]
    fn a_reload_keeps_the_used_once_of_hosts_that_stay() {
        let mut running = inventory(&["a", "b"]);
        running.set_consumed("a", true);
        running.set_consumed("b", true);
        let live = Live::unregistered(Next::new(running, BootSettings::defaults()));
        let config = Config::from_wire(
            Path::new("bootfabric.toml"),
            toml::from_str("").expect("config"),
            inventory(&["a", "c"]),
        )
        .expect("config");
        let next = next_from_config(&config, &live.load());
        let names: Vec<&str> = next
            .inventory
            .hosts()
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert!(next.inventory.is_consumed("a"));
        assert!(!next.inventory.is_consumed("b"), "b left the inventory");
        assert!(!next.inventory.is_consumed("c"));
        assert_eq!(next.scripts, ["boot.ipxe"]);
    }
}
