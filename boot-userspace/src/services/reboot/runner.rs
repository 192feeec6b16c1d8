//! The live reboot run: the scheduler driven by the ledger and acting through Redfish.
//!
//! Every quarter second the runner reads what happened to each host in flight from the
//! ledger (first DHCP offer after its reset, every file of its profile sent, `booted`),
//! feeds the fabric's measured egress to the capacity estimate, lets hosts through the
//! admission gate as slots free, and issues the resets the scheduler asks for: one task per
//! reset, at most one operation in flight per BMC. A host whose BMC fails or hangs is
//! retried by the scheduler's policy and then isolated; the others go on.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    plan,
    report::{HostLine, RunStatus, Selection},
    Action, Capacity, Event, HostSpec, Phase, PostSeen, Scheduler,
};
use crate::{
    config::{Config, SchedulerConfig},
    model::files,
    model::gate::Gate,
    model::inventory::{Host, Inventory, Mac},
    model::ledger::{self, EventKind, Ledger, Phase as LedgerPhase},
    redfish::{BmcConfig, Client, RedfishError},
};

/// How often the runner looks at the ledger and the scheduler.
const TICK: Duration = Duration::from_millis(250);

/// Why a run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The selection is empty, names unknown hosts, or hosts without a BMC.
    #[error("{0}")]
    Selection(String),
    /// Another run is in progress.
    #[error("reboot run {0} is still in progress (cancel it first)")]
    Busy(u64),
}

/// The scheduler's metrics.
#[derive(Clone)]
struct RebootMetrics {
    hosts: IntGaugeVec,
    bmc_ops: IntGauge,
    resets: IntCounterVec,
    capacity: Gauge,
    slots: IntGauge,
}

impl RebootMetrics {
    fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            hosts: IntGaugeVec::new(
                Opts::new(
                    "bootfabric_reboot_hosts",
                    "Hosts of the current (or last) reboot run, by phase.",
                ),
                &["phase"],
            )?,
            bmc_ops: IntGauge::new(
                "bootfabric_reboot_bmc_operations_in_flight",
                "Redfish operations (boot override and reset) in flight.",
            )?,
            resets: IntCounterVec::new(
                Opts::new(
                    "bootfabric_reboot_resets_total",
                    "Reset operations by outcome (accepted by the BMC, or failed).",
                ),
                &["outcome"],
            )?,
            capacity: Gauge::new(
                "bootfabric_reboot_capacity_bytes_per_second",
                "Egress capacity the scheduler plans with (measured, capped by config).",
            )?,
            slots: IntGauge::new(
                "bootfabric_reboot_download_slots",
                "Hosts that may download at once.",
            )?,
        };
        r.register(Box::new(m.hosts.clone()))?;
        r.register(Box::new(m.bmc_ops.clone()))?;
        r.register(Box::new(m.resets.clone()))?;
        r.register(Box::new(m.capacity.clone()))?;
        r.register(Box::new(m.slots.clone()))?;
        for p in Phase::LABELS {
            m.hosts.with_label_values(&[p]).set(0);
        }
        for o in ["accepted", "failed"] {
            m.resets.with_label_values(&[o]).inc_by(0);
        }
        Ok(m)
    }
}

/// One host of a run.
struct Member {
    mac: Mac,
    bmc: BmcConfig,
    spec: HostSpec,
    /// Its profile's files, relative to the image root (fetched = every one sent).
    files: Vec<String>,
    /// Its kernel, relative to the image root.
    kernel: Option<String>,
}

struct RunHandle {
    id: u64,
    status: Arc<Mutex<RunStatus>>,
    cancel: CancellationToken,
}

/// The reboot service: starts, follows and cancels runs; the admin API's back end.
pub struct RebootService {
    inventory: Inventory,
    roots: Vec<PathBuf>,
    config: SchedulerConfig,
    ledger: Ledger,
    gate: Gate,
    metrics: RebootMetrics,
    /// POST times learned by earlier runs.
    learned: Mutex<PostSeen>,
    current: Mutex<Option<RunHandle>>,
    next_id: AtomicU64,
    bmc_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked holder leaves plain data behind, still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RebootService {
    /// The service for `config`'s inventory and `[scheduler]`, reporting to `registry`.
    pub fn new(
        config: &Config,
        ledger: Ledger,
        gate: Gate,
        registry: &Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let roots = config
            .image_roots()
            .into_iter()
            .map(Path::to_path_buf)
            .collect();
        let metrics = RebootMetrics::register(registry)?;
        metrics.capacity.set(config.scheduler.params.capacity_bps);
        metrics.slots.set(config.scheduler.params.slots() as i64);
        Ok(Arc::new(Self {
            inventory: config.inventory.clone(),
            roots,
            config: config.scheduler.clone(),
            ledger,
            gate,
            metrics,
            learned: Mutex::new(PostSeen::new()),
            current: Mutex::new(None),
            next_id: AtomicU64::new(1),
            bmc_locks: Mutex::new(HashMap::new()),
        }))
    }

    /// The current run's status, or the last one's.
    pub fn status(&self) -> Option<RunStatus> {
        lock(&self.current)
            .as_ref()
            .map(|h| lock(&h.status).clone())
    }

    /// Cancels the run in progress: no further resets; hosts already reset go on booting
    /// (the gate opens). Returns the run's number, if one was in progress.
    pub fn cancel(&self) -> Option<u64> {
        let cur = lock(&self.current);
        let h = cur.as_ref()?;
        if lock(&h.status).finished() {
            return None;
        }
        h.cancel.cancel();
        Some(h.id)
    }

    /// Plans (`dry_run`) or starts a run for `sel`; returns its first status.
    pub fn start(self: &Arc<Self>, sel: &Selection) -> Result<RunStatus, StartError> {
        let members = self.select(sel)?;
        if sel.dry_run {
            return Ok(self.plan(&members));
        }
        let mut cur = lock(&self.current);
        if let Some(h) = cur.as_ref() {
            if !lock(&h.status).finished() {
                return Err(StartError::Busy(h.id));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut first = self.blank_status(&members, &lock(&self.learned));
        first.id = id;
        first.state = "running".into();
        first.started_unix_ms = ledger::unix_ms();
        let status = Arc::new(Mutex::new(first.clone()));
        let cancel = CancellationToken::new();
        *cur = Some(RunHandle {
            id,
            status: Arc::clone(&status),
            cancel: cancel.clone(),
        });
        drop(cur);
        info!(
            run = id,
            hosts = members.len(),
            "reboot run {id} started for {} host(s)",
            members.len()
        );
        tokio::spawn(Arc::clone(self).drive(id, members, status, cancel));
        Ok(first)
    }

    /// Resolves a selection against the inventory.
    fn select(&self, sel: &Selection) -> Result<Vec<Member>, StartError> {
        let bad = |m: String| Err(StartError::Selection(m));
        if !sel.all
            && sel.hosts.is_empty()
            && sel.racks.is_empty()
            && sel.models.is_empty()
            && sel.profiles.is_empty()
        {
            return bad("select hosts: all, hosts, racks, models or profiles".into());
        }
        let hosts = self.inventory.hosts();
        let mut base: Vec<&Host> = Vec::new();
        if sel.hosts.is_empty() {
            base.extend(hosts.iter().filter(|h| h.bmc.is_some()));
        } else {
            for name in &sel.hosts {
                match hosts.iter().find(|h| &h.name == name) {
                    None => return bad(format!("no host named {name:?} in the inventory")),
                    Some(h) if h.bmc.is_none() => {
                        return bad(format!("host {name:?} has no bmc in the inventory"))
                    }
                    Some(h) if !base.iter().any(|b| b.name == h.name) => base.push(h),
                    Some(_) => {}
                }
            }
        }
        let within = |want: &[String], have: Option<&str>| {
            want.is_empty() || have.is_some_and(|v| want.iter().any(|w| w == v))
        };
        base.retain(|h| {
            within(&sel.racks, h.rack.as_deref())
                && within(&sel.models, h.model.as_deref())
                && within(&sel.profiles, Some(&h.profile))
        });
        if base.is_empty() {
            return bad("the selection matches no host with a bmc".into());
        }
        Ok(base.into_iter().filter_map(|h| self.member(h)).collect())
    }

    fn member(&self, h: &Host) -> Option<Member> {
        let bmc = h.bmc.clone()?;
        let profile = self.inventory.profile(&h.profile);
        let kernel = profile.and_then(|p| p.kernel.clone());
        let names: Vec<String> = profile
            .map(|p| p.files().cloned().collect())
            .unwrap_or_default();
        // What the servers would send: the same lookup and confinement as theirs.
        let roots: Vec<&Path> = self.roots.iter().map(PathBuf::as_path).collect();
        let demand_bytes = names
            .iter()
            .filter_map(|f| match files::find(&roots, f)? {
                (_, Ok(src)) => Some(src.size()),
                (_, Err(_)) => None,
            })
            .sum();
        Some(Member {
            mac: h.mac,
            bmc,
            spec: HostSpec {
                name: h.name.clone(),
                model: h.model.clone().unwrap_or_else(|| "unknown".into()),
                // A host without a rack is a power domain of its own.
                rack: h.rack.clone().unwrap_or_else(|| format!("host:{}", h.name)),
                demand_bytes,
            },
            kernel: kernel.map(|k| k.trim_start_matches('/').to_owned()),
            files: names
                .iter()
                .map(|f| f.trim_start_matches('/').to_owned())
                .collect(),
        })
    }

    fn blank_status(&self, members: &[Member], seen: &PostSeen) -> RunStatus {
        let p = &self.config.params;
        let specs: Vec<HostSpec> = members.iter().map(|m| m.spec.clone()).collect();
        let post_of = |model: &str| super::longest_post(seen, model, p.post_guess_s);
        RunStatus {
            capacity_bps: p.capacity_bps,
            capacity_cap_bps: p.capacity_bps,
            per_host_bps: p.per_host_bps,
            slots: p.slots(),
            lower_bound_s: plan::lower_bound(p, &specs, post_of),
            hosts: members
                .iter()
                .map(|m| HostLine {
                    name: m.spec.name.clone(),
                    mac: m.mac.to_string(),
                    rack: m.spec.rack.clone(),
                    model: m.spec.model.clone(),
                    demand_bytes: m.spec.demand_bytes,
                    phase: "waiting".into(),
                    ..HostLine::default()
                })
                .collect(),
            ..RunStatus::default()
        }
    }

    fn plan(&self, members: &[Member]) -> RunStatus {
        let seen = lock(&self.learned).clone();
        let mut status = self.blank_status(members, &seen);
        let specs = members.iter().map(|m| m.spec.clone()).collect();
        let (predicted, end) = plan::plan(self.config.params.clone(), specs, seen);
        for (line, p) in status.hosts.iter_mut().zip(predicted) {
            line.reset_s = p.reset_s;
            line.dhcp_s = p.dhcp_s;
            line.admitted_s = p.admitted_s;
            line.fetched_s = p.fetched_s;
            line.phase = if p.fetched_s.is_some() {
                "planned"
            } else {
                "unplanned"
            }
            .into();
        }
        status.state = "planned".into();
        status.started_unix_ms = ledger::unix_ms();
        status.makespan_s = Some(end);
        status.elapsed_s = end;
        status.phases.insert("planned".into(), members.len());
        status
    }

    fn bmc_lock(&self, url: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.bmc_locks).entry(url.to_owned()).or_default())
    }

    /// Runs one reboot run to its end.
    async fn drive(
        self: Arc<Self>,
        id: u64,
        members: Vec<Member>,
        status: Arc<Mutex<RunStatus>>,
        cancel: CancellationToken,
    ) {
        let seen = lock(&self.learned).clone();
        let mut view = lock(&status).clone();
        let start_ms = view.started_unix_ms;
        let params = self.config.params.clone();
        let specs = members.iter().map(|m| m.spec.clone()).collect();
        let mut sched = Scheduler::new(params.clone(), specs).with_post_seen(seen);
        let mut capacity = Capacity::new(params.capacity_bps, params.per_host_bps);
        let n = members.len();
        let mut track = vec![Track::default(); n];
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<String, String>)>();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let secs = |ms: u64| ms.saturating_sub(start_ms) as f64 / 1000.0;
        let mut cancelled = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => cancelled = true,
                _ = tick.tick() => {}
            }
            let now_ms = ledger::unix_ms();
            let now = secs(now_ms);
            if cancelled {
                view.state = "cancelled".into();
                break;
            }
            // BMC operations that ended.
            while let Ok((i, result)) = rx.try_recv() {
                let m = &members[i];
                match result {
                    Ok(kind) => {
                        self.metrics.resets.with_label_values(&["accepted"]).inc();
                        self.ledger
                            .record(m.mac, EventKind::BmcReset { reset_type: kind }, None);
                        view.hosts[i].reset_done_s = Some(now);
                        sched.on_event(now, i, Event::ResetDone);
                    }
                    Err(why) => {
                        self.metrics.resets.with_label_values(&["failed"]).inc();
                        warn!(host = %m.spec.name, "reset failed: {why}");
                        self.ledger
                            .record(m.mac, EventKind::BmcFailed { why: why.clone() }, None);
                        sched.on_event(now, i, Event::ResetFailed(why));
                        // Until the retry, it holds no place at the gate. (A host already
                        // seen on DHCP did reset, whatever the BMC answered: it stays.)
                        if matches!(
                            sched.phases()[i],
                            Phase::Waiting { .. } | Phase::Failed { .. }
                        ) {
                            self.gate.release(m.mac);
                        }
                    }
                }
            }
            // What the ledger says about hosts in flight.
            for (i, m) in members.iter().enumerate() {
                let Some(sent) = track[i].reset_ms else {
                    continue;
                };
                let phase = sched.phases()[i].clone();
                if matches!(
                    phase,
                    Phase::Waiting { .. } | Phase::Booted { .. } | Phase::Failed { .. }
                ) {
                    continue;
                }
                let events = self.ledger.events_since(m.mac, sent);
                track[i].pulling = matches!(phase, Phase::Downloading { .. })
                    && events
                        .iter()
                        .rev()
                        .find(|e| {
                            matches!(
                                e.phase(),
                                LedgerPhase::HttpStarted
                                    | LedgerPhase::HttpSent
                                    | LedgerPhase::HttpFailed
                            )
                        })
                        .is_some_and(|e| e.phase() == LedgerPhase::HttpStarted);
                if track[i].dhcp_ms.is_none() {
                    // An offer answers a DISCOVER, which a booting firmware sends and a
                    // running OS renewing its lease does not.
                    if let Some(e) = events.iter().find(|e| e.phase() == LedgerPhase::DhcpOffer) {
                        track[i].dhcp_ms = Some(e.at_ms);
                        view.hosts[i].dhcp_s = Some(secs(e.at_ms));
                        sched.on_event(secs(e.at_ms), i, Event::DhcpSeen);
                    }
                }
                if let Some(from) = track[i].dhcp_ms {
                    let line = &mut view.hosts[i];
                    if line.loader_s.is_none() {
                        line.loader_s = loader_at(&m.files, &events, from).map(secs);
                    }
                    if line.kernel_s.is_none() {
                        line.kernel_s = m
                            .kernel
                            .as_deref()
                            .and_then(|k| sent_at(k, &events, from))
                            .map(secs);
                    }
                }
                if let (Phase::Downloading { .. }, Some(from)) = (&phase, track[i].dhcp_ms) {
                    if let Some(at) = fetched_at(&m.files, &events, from) {
                        view.hosts[i].fetched_s = Some(secs(at));
                        sched.on_event(secs(at), i, Event::Fetched);
                    }
                }
                if let Some(e) = events.iter().find(|e| e.phase() == LedgerPhase::Booted) {
                    view.hosts[i].booted_s = Some(secs(e.at_ms));
                    sched.on_event(secs(e.at_ms), i, Event::Booted);
                }
            }
            // Capacity: the fabric's own egress while every slot is busy.
            // Capacity: the fabric's own egress while every slot is busy, that is while as
            // many hosts as there are slots are pulling files (an admitted host may still be
            // in its bootloader, taking nothing).
            let pulling = track.iter().filter(|t| t.pulling).count();
            let measured: f64 = self.ledger.egress_rates().iter().map(|(_, r)| r).sum();
            let est = capacity.observe(now, measured, pulling >= sched.params().slots());
            sched.set_capacity(est);
            for h in sched.admit(now) {
                self.gate.release(members[h].mac);
                self.ledger
                    .record(members[h].mac, EventKind::Admitted, None);
                view.hosts[h].admitted_s = Some(now);
            }
            for Action::Reset(h) in sched.next_actions(now) {
                let m = &members[h];
                track[h].reset_ms = Some(now_ms);
                track[h].dhcp_ms = None;
                view.hosts[h].reset_s = Some(now);
                view.hosts[h].attempts += 1;
                self.gate.hold(m.mac);
                let bmc = m.bmc.clone();
                let lock = self.bmc_lock(&bmc.url);
                let ops = self.metrics.bmc_ops.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // One operation per BMC: a chassis BMC serves several hosts.
                    let _one = lock.lock().await;
                    ops.inc();
                    let r = reset_host(&bmc).await.map_err(|e| e.to_string());
                    ops.dec();
                    let _ = tx.send((h, r));
                });
            }
            for (i, p) in sched.phases().iter().enumerate() {
                if let Phase::Failed { reason } = p {
                    if view.hosts[i].failed_s.is_none() {
                        warn!(host = %members[i].spec.name, "given up: {reason}");
                        view.hosts[i].failed_s = Some(now);
                        view.hosts[i].reason = Some(reason.clone());
                        self.gate.release(members[i].mac);
                    }
                }
            }
            view.elapsed_s = now;
            self.publish(&mut view, &sched, &status);
            if sched.done() {
                view.state = "done".into();
                // The bound of what was achievable: the bytes of the hosts that booted at the
                // capacity planned with last, plus the quickest reset-to-booted seen (no
                // schedule ends before its last host has booted once).
                let bytes: u64 = members
                    .iter()
                    .zip(sched.phases())
                    .filter(|(_, p)| matches!(p, Phase::Booted { .. }))
                    .map(|(m, _)| m.spec.demand_bytes)
                    .sum();
                let quickest = view
                    .hosts
                    .iter()
                    .filter_map(|h| Some(h.booted_s? - h.reset_s?))
                    .reduce(f64::min);
                view.lower_bound_s =
                    quickest.map_or(0.0, |q| bytes as f64 / sched.params().capacity_bps + q);
                view.makespan_s = view
                    .hosts
                    .iter()
                    .filter_map(|h| h.booted_s.or(h.failed_s))
                    .reduce(f64::max);
                break;
            }
        }
        for m in &members {
            self.gate.release(m.mac);
        }
        *lock(&self.learned) = sched.post_seen().clone();
        self.publish(&mut view, &sched, &status);
        info!(
            run = id,
            state = %view.state,
            booted = view.count("booted"),
            failed = view.count("failed"),
            "reboot run {id} {}",
            view.state
        );
    }

    /// Copies the run's state to its status and the metrics.
    fn publish(&self, view: &mut RunStatus, sched: &Scheduler, status: &Mutex<RunStatus>) {
        view.phases.clear();
        for (line, p) in view.hosts.iter_mut().zip(sched.phases()) {
            line.phase = p.label().to_owned();
            *view.phases.entry(line.phase.clone()).or_default() += 1;
        }
        view.capacity_bps = sched.params().capacity_bps;
        view.slots = sched.params().slots();
        view.bmc_operations_in_flight = self.metrics.bmc_ops.get().max(0) as usize;
        for p in Phase::LABELS {
            self.metrics
                .hosts
                .with_label_values(&[p])
                .set(view.count(p) as i64);
        }
        self.metrics.capacity.set(view.capacity_bps);
        self.metrics.slots.set(view.slots as i64);
        *lock(status) = view.clone();
    }
}

/// What the runner remembers per host beyond the scheduler's phase.
#[derive(Clone, Debug, Default)]
struct Track {
    /// Unix ms of the last reset sent: ledger events before it belong to an earlier boot.
    reset_ms: Option<u64>,
    /// Unix ms of its first DHCP offer after that reset.
    dhcp_ms: Option<u64>,
    /// Whether an HTTP download of it is in progress.
    pulling: bool,
}

/// Whether `path` (as requested) names `file` (relative to the image root, maybe under the
/// `http_base` path).
fn names(path: &str, file: &str) -> bool {
    path.trim_start_matches('/') == file
        || path
            .strip_suffix(file)
            .is_some_and(|head| head.ends_with('/'))
}

/// When `file` was first sent completely at or after `from_ms`.
fn sent_at(file: &str, events: &[ledger::Event], from_ms: u64) -> Option<u64> {
    events.iter().find_map(|e| {
        let path = e.kind.sent_path()?;
        (e.at_ms >= from_ms && names(path, file)).then_some(e.at_ms)
    })
}

/// When every file of `files` has been sent completely since `from_ms` (HTTP or TFTP), the
/// time of the last one. A profile with no files is never "fetched": its slot frees at
/// `booted`.
fn fetched_at(files: &[String], events: &[ledger::Event], from_ms: u64) -> Option<u64> {
    if files.is_empty() {
        return None;
    }
    files
        .iter()
        .map(|f| sent_at(f, events, from_ms))
        .try_fold(0, |last, at| at.map(|a| a.max(last)))
}

/// When the first file that is not one of the profile's (the bootloader: iPXE by TFTP or
/// by UEFI HTTP boot) was sent at or after `from_ms`.
fn loader_at(files: &[String], events: &[ledger::Event], from_ms: u64) -> Option<u64> {
    events.iter().find_map(|e| {
        let path = e.kind.sent_path()?;
        (e.at_ms >= from_ms && !files.iter().any(|f| names(path, f))).then_some(e.at_ms)
    })
}

/// Sets the one-time boot override and resets the host; returns the reset type used.
async fn reset_host(bmc: &BmcConfig) -> Result<String, RedfishError> {
    let mut client = Client::connect(bmc).await?;
    let result = async {
        let path = client.the_system().await?;
        let sys = client.set_boot_once(&path, bmc.boot, bmc.boot_mode).await?;
        client.reset_system(&sys).await
    }
    .await;
    client.logout().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(at_ms: u64, kind: EventKind) -> ledger::Event {
        ledger::Event {
            at_ms,
            ip: None,
            kind,
        }
    }

    fn http(at_ms: u64, path: &str, bytes: u64) -> ledger::Event {
        let path = path.into();
        ev(at_ms, EventKind::HttpSent { path, bytes })
    }

    fn tftp(at_ms: u64, file: &str) -> ledger::Event {
        let file = file.into();
        ev(at_ms, EventKind::TftpSent { file })
    }

    #[test]
    fn fetched_needs_every_file_after_dhcp_by_http_or_tftp() {
        let files = vec!["images/vmlinuz".to_owned(), "initrd.img".to_owned()];
        let events = vec![
            http(5, "/images/vmlinuz", 100),
            http(20, "/images/vmlinuz", 100),
            ev(
                30,
                EventKind::HttpFailed {
                    path: "/initrd.img".into(),
                    bytes: 3,
                },
            ),
        ];
        assert_eq!(fetched_at(&files, &events, 10), None, "initrd not sent yet");
        let mut more = events.clone();
        more.push(tftp(40, "initrd.img"));
        assert_eq!(fetched_at(&files, &more, 10), Some(40));
        // A sent file from before the DHCP of this boot does not count.
        assert_eq!(fetched_at(&files, &more[..1], 10), None);
        // Prefixes under an http_base path still match; other names do not.
        let other = vec![
            http(50, "/boot/images/vmlinuz", 1),
            http(51, "/xinitrd.img", 1),
        ];
        assert_eq!(fetched_at(&files, &other, 0), None);
        assert_eq!(fetched_at(&[], &other, 0), None);
        // The bootloader is the first other file sent after DHCP.
        let boot = vec![
            tftp(1, "ipxe.efi"),
            tftp(12, "undionly.kpxe"),
            http(14, "/images/vmlinuz", 100),
        ];
        assert_eq!(loader_at(&files, &boot, 10), Some(12));
        assert_eq!(loader_at(&files, &boot[2..], 10), None);
        assert_eq!(sent_at("images/vmlinuz", &boot, 10), Some(14));
    }
}
