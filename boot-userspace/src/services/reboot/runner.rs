//! The live reboot run: the scheduler driven by the ledger and acting through the BMCs.
//!
//! Every quarter second the runner reads what happened to each host in flight from the
//! ledger (first DHCP offer after its reset, every file of its profile sent, `booted`),
//! feeds the fabric's measured egress to the capacity estimate, lets hosts through the
//! admission gate as slots free, and issues the resets the scheduler asks for: one task per
//! reset, at most one operation in flight per BMC. A host whose BMC fails or hangs is
//! retried by the scheduler's policy and then isolated; the others go on.
//!
//! This is the shell: it gathers a tick's inputs, runs the pure [`RunStep`] and applies its
//! actions (gate, ledger, metrics, logs, BMC tasks through the [`Bmc`] seam). It reads the
//! time from a [`Clock`] (the wall clock in production), so that its unit tests drive the
//! scheduler's deadlines with tokio's paused time.

use std::{
    collections::{HashMap, HashSet},
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
    bmc::{Bmc, RedfishBmc},
    clock::{Clock, WallClock},
    plan, remote,
    report::{PhaseLabel, RunState, RunStatus, Selection, SkippedHost, StatusSource},
    resume::{resume, Found, Power, Resume},
    step::{blank_status, Member, RunAction, RunStep, Tick},
    HostSpec, Params, PostSeen,
};
use crate::{
    cluster::{
        election::Leadership,
        evidence::Evidence,
        membership::ClusterView,
        runs::{next_to_run, HostRecord, HostState, RunHost, RunPhase, RunStore, RunsError},
        ClusterError,
    },
    config::SchedulerConfig,
    model::files,
    model::gate::Gate,
    model::inventory::{BootAnswer, Host, Inventory, Mac},
    model::ledger::{self, EventKind, Ledger},
    model::snapshot::Live,
    redfish::{BmcConfig, RedfishError},
};

/// How often the runner looks at the ledger and the scheduler.
const TICK: Duration = Duration::from_millis(250);

/// The longest a new leader waits for a BMC's power state (the Redfish client bounds each
/// exchange; this bounds the session).
const POWER_QUERY: Duration = Duration::from_secs(30);

/// Why a run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The selection is empty, names unknown hosts, or hosts without a BMC.
    #[error("{0}")]
    Selection(String),
    /// Another run is in progress.
    #[error("reboot run {0} is still in progress (cancel it first)")]
    Busy(u64),
    /// Cluster mode: only the leader runs reboot runs, and this fabric does not lead.
    #[error("this fabric does not lead the cluster (the leader runs reboot runs): {}", .0.as_deref().map_or("no leader now; try again within the cluster's ttl".to_owned(), |l| format!("ask {l}")))]
    NotLeader(Option<String>),
    /// Cluster mode: this fabric does not lead, but can store the run, resolved and
    /// validated here, for the leader: hand it to [`RebootService::request`].
    #[error("this fabric does not lead the cluster: the run is stored for the leader")]
    ForLeader(Box<Forward>),
}

/// A run resolved by a fabric that does not lead, to be stored for the leader.
#[derive(Debug)]
pub struct Forward {
    /// Its hosts, as the leader reads them back.
    hosts: Vec<RunHost>,
    /// Its first status (every host waiting; the hosts left alone and why).
    first: RunStatus,
}

/// Why a run asked through a fabric that does not lead was not stored for the leader.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No fabric leads now (an election is under way): nothing was stored.
    #[error("no fabric leads the cluster now: nothing stored, try again in {retry_after_s} s")]
    NoLeader {
        /// When a leader should be elected, seconds.
        retry_after_s: u64,
    },
    /// Runs already wait for the leader, as many as may.
    #[error(
        "{waiting} reboot runs already wait for the leader (at most {}): nothing stored",
        crate::cluster::runs::MAX_REQUESTED
    )]
    Full {
        /// How many wait.
        waiting: usize,
    },
    /// The run was sent to etcd, which did not confirm it: it may be stored, and then the
    /// leader runs it. Asking again blindly could reset the hosts twice.
    #[error("{error}, and the leader would then run it; GET /api/reboot before asking again")]
    Unconfirmed {
        /// When to look again, seconds.
        retry_after_s: u64,
        /// What etcd said.
        error: RunsError,
    },
    /// etcd cannot be written (no quorum, out of reach): nothing stored.
    #[error("cannot store the run for the leader in etcd: {error}")]
    Cluster {
        /// When to try again, seconds.
        retry_after_s: u64,
        /// What etcd said.
        error: RunsError,
    },
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
        for p in PhaseLabel::SCHEDULER {
            m.hosts.with_label_values(&[p.as_str()]).set(0);
        }
        for o in ["accepted", "failed"] {
            m.resets.with_label_values(&[o]).inc_by(0);
        }
        Ok(m)
    }
}

struct RunHandle {
    id: u64,
    status: Arc<Mutex<RunStatus>>,
    cancel: CancellationToken,
}

/// The reboot service: starts, follows and cancels runs; the admin API's back end.
pub struct RebootService {
    /// The configuration snapshot: a run resolves its members in it at start.
    live: Arc<Live>,
    roots: Vec<PathBuf>,
    /// The scheduler's knobs from `[scheduler]`; `capacity_bps` is the configured cap.
    params: Params,
    ledger: Ledger,
    bmc: Arc<dyn Bmc>,
    /// The time base of run times and of the events the runner records (the ledger's).
    clock: Arc<dyn Clock>,
    gate: Gate,
    metrics: RebootMetrics,
    /// POST times learned by earlier runs.
    learned: Mutex<PostSeen>,
    /// Cluster mode: this fabric's leadership (only the leader resets); `None` standalone.
    leadership: Option<Leadership>,
    /// Cluster mode: where runs and each host's intent are recorded before any reset.
    runs: Option<RunStore>,
    /// Cluster mode: every fabric as the membership last saw them (each rack's pace).
    fabrics: Option<Arc<arc_swap::ArcSwap<ClusterView>>>,
    /// Cluster mode: boots of the run's hosts reported at other fabrics.
    evidence: Option<Evidence>,
    /// Where finished runs' reports go.
    reports: Option<Arc<dyn ReportStore>>,
    current: Mutex<Option<RunHandle>>,
    /// Cluster mode: the etcd runs this fabric drives (`None`) or drove to an end (the
    /// end). A run whose end is still being written (or whose write was lost) reads
    /// `running` in etcd for a while: the fabric that drives or ended it never takes it over
    /// again, and writes a lost end again while it still leads (losing the lead forgets
    /// the ends: the next leader's records rule).
    ended: Mutex<HashMap<u64, Option<RunPhase>>>,
    next_id: AtomicU64,
    bmc_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked holder leaves plain data behind, still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RebootService {
    /// The admission gate this service admits through: the admin server's rack view reads
    /// its mode and load (slots in use, waiters) from it.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The service for `setup` (the inventory, the image roots, `[scheduler]`), resetting
    /// hosts through Redfish, reporting to `registry`.
    pub fn new(
        setup: Setup,
        ledger: Ledger,
        gate: Gate,
        registry: &Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let (bmc, clock) = (Arc::new(RedfishBmc), Arc::new(WallClock));
        Self::with_bmc(setup, bmc, clock, ledger, gate, registry)
    }

    /// The service for `setup`, resetting hosts through `bmc`, reading the time from `clock`,
    /// reporting to `registry`.
    pub fn with_bmc(
        setup: Setup,
        bmc: Arc<dyn Bmc>,
        clock: Arc<dyn Clock>,
        ledger: Ledger,
        gate: Gate,
        registry: &Registry,
    ) -> Result<Arc<Self>, prometheus::Error> {
        let params = Params::from(&setup.scheduler);
        let metrics = RebootMetrics::register(registry)?;
        metrics.capacity.set(params.capacity_bps);
        metrics.slots.set(params.slots() as i64);
        let (reports, last) = match setup.reports {
            Some((store, last)) => (Some(store), last),
            None => (None, None),
        };
        // The last run before a restart is the status until a new run starts, and run
        // numbers go on from it.
        let next_id = last.as_ref().map_or(1, |r| r.id + 1);
        let current = last.map(|r| RunHandle {
            id: r.id,
            status: Arc::new(Mutex::new(r)),
            cancel: CancellationToken::new(),
        });
        Ok(Arc::new(Self {
            live: setup.live,
            roots: setup.image_roots,
            params,
            ledger,
            bmc,
            clock,
            gate,
            metrics,
            learned: Mutex::new(PostSeen::new()),
            leadership: setup.leadership,
            runs: setup.runs,
            fabrics: setup.fabrics,
            evidence: setup.evidence,
            reports,
            current: Mutex::new(current),
            ended: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(next_id),
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
        let (members, skipped) = self.select(sel)?;
        if sel.dry_run {
            let mut plan = self.plan(&members);
            plan.skipped = skipped;
            return Ok(plan);
        }
        if let Some(l) = &self.leadership {
            if !l.leading() {
                if self.runs.is_none() {
                    return Err(StartError::NotLeader(l.leader()));
                }
                let mut first = blank_status(&self.params, &members, &lock(&self.learned));
                first.skipped = skipped;
                let hosts = members
                    .iter()
                    .map(|m| RunHost {
                        name: m.spec.name.clone(),
                        rack: m.spec.rack.clone(),
                    })
                    .collect();
                return Err(StartError::ForLeader(Box::new(Forward { hosts, first })));
            }
        }
        self.launch(members, skipped, None)
    }

    /// Cluster mode, on a fabric that does not lead: stores `fwd` (a run [`Self::start`]
    /// resolved and validated here) in etcd as `requested`, for the leader to take; returns
    /// its status (its number in etcd, the leader's name). Refused, with nothing stored, when
    /// no fabric leads, when etcd cannot be written, or when enough runs wait already; when
    /// etcd took the write but did not confirm it, [`RequestError::Unconfirmed`].
    pub async fn request(&self, fwd: Box<Forward>) -> Result<RunStatus, RequestError> {
        let Some(store) = &self.runs else {
            return Err(RequestError::NoLeader { retry_after_s: 1 });
        };
        let retry_after_s = store.retry_after().as_secs().max(1);
        let leader = self.leadership.as_ref().and_then(Leadership::leader);
        // No leader known: a request would wait unseen for an election; the caller retries.
        let Some(leader) = leader.filter(|l| l != store.fabric()) else {
            return Err(RequestError::NoLeader { retry_after_s });
        };
        let record = match store.request(fwd.hosts, self.clock.now_ms()).await {
            Ok(r) => r,
            Err(RunsError::TooManyRequested { waiting }) => {
                return Err(RequestError::Full { waiting })
            }
            Err(error @ RunsError::Unconfirmed(_)) => {
                warn!(%error, "a reboot run sent to etcd was not confirmed: it may still be stored for the leader");
                return Err(RequestError::Unconfirmed {
                    retry_after_s,
                    error,
                });
            }
            Err(error) => {
                return Err(RequestError::Cluster {
                    retry_after_s,
                    error,
                })
            }
        };
        info!(etcd_run = record.id, leader = %leader, hosts = record.hosts.len(), "reboot run stored in etcd for the leader");
        let mut first = fwd.first;
        first.id = record.id;
        first.state = RunState::Requested;
        first.started_unix_ms = record.started_ms;
        first.source = Some(StatusSource::Cluster);
        first.leader = Some(leader);
        first.phases.insert(PhaseLabel::Waiting, first.hosts.len());
        // Capacity and slots are the leader's to plan with, not this fabric's.
        (
            first.capacity_bps,
            first.capacity_cap_bps,
            first.per_host_bps,
        ) = (0.0, 0.0, 0.0);
        (first.slots, first.lower_bound_s) = (0, 0.0);
        Ok(first)
    }

    /// Cluster mode: the status to answer from the cluster's records, when this fabric does
    /// not run the run (it does not lead, or leads without a run of its own yet): the newest
    /// run in etcd. `None`: answer with this fabric's own status (standalone, or the leader
    /// running or having run one).
    pub async fn shared_status(&self) -> Option<Result<Option<RunStatus>, ClusterError>> {
        let store = self.runs.as_ref()?;
        if self.leads() && self.status().is_some() {
            return None;
        }
        let read = async {
            let Some(run) = store.newest().await? else {
                return Ok(None);
            };
            let records = store.hosts(run.id).await?;
            let snap = self.live.load();
            let mac_of = |name: &str| {
                let hosts = snap.inventory.hosts();
                hosts
                    .iter()
                    .find(|h| h.name == name)
                    .map(|h| h.mac.to_string())
            };
            let leader = self.leadership.as_ref().and_then(Leadership::leader);
            Ok(Some(remote::status_of(
                &run,
                &records,
                self.clock.now_ms(),
                leader,
                mac_of,
            )))
        };
        Some(read.await)
    }

    /// Cluster mode, on a fabric that does not lead: the leader as last read (`None` inside:
    /// nobody now). `None`: this fabric runs runs itself (standalone, or it leads).
    pub fn led_elsewhere(&self) -> Option<Option<String>> {
        let l = self.leadership.as_ref()?;
        (!l.leading()).then(|| l.leader())
    }

    /// How long to wait before asking again when the cluster cannot answer, seconds.
    pub fn retry_after_s(&self) -> u64 {
        self.runs
            .as_ref()
            .map_or(1, |s| s.retry_after().as_secs().max(1))
    }

    /// Starts driving a run of `members` (a new one, or one taken over from another leader).
    fn launch(
        self: &Arc<Self>,
        members: Vec<Member>,
        skipped: Vec<SkippedHost>,
        take: Option<TakeOver>,
    ) -> Result<RunStatus, StartError> {
        let mut cur = lock(&self.current);
        if let Some(h) = cur.as_ref() {
            if !lock(&h.status).finished() {
                return Err(StartError::Busy(h.id));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut first = blank_status(&self.params, &members, &lock(&self.learned));
        first.id = id;
        first.state = RunState::Running;
        first.started_unix_ms = self.clock.now_ms();
        first.skipped = skipped;
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
        tokio::spawn(Arc::clone(self).drive(id, members, status, cancel, take));
        Ok(first)
    }

    /// Cluster mode: while this fabric leads and runs nothing, takes over a run another
    /// leader left running in etcd (it died, or lost its term), else the oldest run another
    /// fabric stored for the leader (`requested`), once a second until `cancel`.
    /// Each host resumes as its record rules ([`resume`]): nothing recorded reset or ended is
    /// reset again.
    pub async fn follow_cluster(self: Arc<Self>, cancel: CancellationToken) {
        let Some(store) = self.runs.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let busy = lock(&self.current)
                .as_ref()
                .is_some_and(|h| !lock(&h.status).finished());
            if !self.leads() {
                // Another leader may take up what this fabric ended meanwhile: its ends are
                // no longer the last word.
                lock(&self.ended).retain(|_, end| end.is_none());
            }
            if busy || !self.leads() {
                continue;
            }
            let runs = match store.runs().await {
                Ok(runs) => runs,
                Err(e) => {
                    warn!(error = %e, "cannot read the runs in etcd");
                    continue;
                }
            };
            // Runs this fabric ended are not left running: their end is written again if
            // etcd still lacks it (a write lost at the run's end), never driven again.
            let ended = lock(&self.ended).clone();
            for r in runs.iter().filter(|r| r.phase == RunPhase::Running) {
                let Some(&Some(phase)) = ended.get(&r.id) else {
                    continue;
                };
                if let Some(fence) = self.leadership.as_ref().and_then(Leadership::fence) {
                    if let Err(e) = store.set_phase(&fence, r.id, phase).await {
                        warn!(etcd_run = r.id, error = %e, "cannot record the run's end in etcd (again)");
                    }
                }
            }
            let runs: Vec<_> = runs
                .into_iter()
                .filter(|r| !ended.contains_key(&r.id))
                .collect();
            let left = next_to_run(&runs).cloned();
            let Some(run) = left else {
                continue;
            };
            let requested = run.phase == RunPhase::Requested;
            if requested {
                // Taken through the fence, before any reset: a fabric that no longer leads
                // cannot take it, and a leader that dies now leaves it `running`, for the
                // next one to resume like any other.
                let taken = match self.leadership.as_ref().and_then(Leadership::fence) {
                    Some(fence) => store.set_phase(&fence, run.id, RunPhase::Running).await,
                    None => Err(RunsError::NotLeader),
                };
                if let Err(e) = taken {
                    warn!(error = %e, etcd_run = run.id, "cannot take the requested run");
                    continue;
                }
                info!(etcd_run = run.id, requested_by = %run.started_by, "taking a reboot run requested through another fabric");
            }
            let records = match store.hosts(run.id).await {
                Ok(r) => r.into_iter().collect(),
                Err(e) => {
                    warn!(error = %e, etcd_run = run.id, "cannot read the run's hosts in etcd");
                    continue;
                }
            };
            // The run's hosts as this fabric's inventory has them, by name.
            let snap = self.live.load();
            let inventory = &snap.inventory;
            let members: Vec<Member> = run
                .hosts
                .iter()
                .filter_map(|h| inventory.hosts().iter().find(|x| x.name == h.name))
                .filter_map(|h| self.member(inventory, h))
                .collect();
            if members.len() < run.hosts.len() {
                warn!(
                    etcd_run = run.id,
                    "{} host(s) of the run are not in this fabric's inventory: left out",
                    run.hosts.len() - members.len()
                );
            }
            if !requested {
                info!(etcd_run = run.id, started_by = %run.started_by, "taking over a reboot run left running");
            }
            let take = TakeOver {
                id: run.id,
                records,
            };
            if let Err(e) = self.launch(members, Vec::new(), Some(take)) {
                warn!(error = %e, "cannot take over the run");
            }
        }
    }

    /// Resolves a selection against the inventory: the members, and the selected hosts left
    /// alone because they would not boot from the network (see [`not_rebooted`]).
    fn select(&self, sel: &Selection) -> Result<(Vec<Member>, Vec<SkippedHost>), StartError> {
        let bad = |m: String| Err(StartError::Selection(m));
        if !sel.all
            && sel.hosts.is_empty()
            && sel.racks.is_empty()
            && sel.models.is_empty()
            && sel.profiles.is_empty()
        {
            return bad("select hosts: all, hosts, racks, models or profiles".into());
        }
        // The run's members are resolved once, here, and kept by MAC: a later reload does
        // not move them under the run.
        let snap = self.live.load();
        let inventory = &snap.inventory;
        let hosts = inventory.hosts();
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
        // A host told to boot from its disk would not fetch anything: resetting it, giving
        // it a gate slot and waiting for its downloads would only end in a false failure.
        let mut skipped: Vec<SkippedHost> = Vec::new();
        base.retain(|h| match not_rebooted(inventory.boot_answer(h)) {
            None => true,
            Some(reason) => {
                skipped.push(SkippedHost {
                    name: h.name.clone(),
                    reason: reason.to_owned(),
                });
                false
            }
        });
        if base.is_empty() {
            let why: Vec<String> = skipped
                .iter()
                .map(|s| format!("{} ({})", s.name, s.reason))
                .collect();
            return bad(format!(
                "the selection matches no host that boots from the network: {}",
                why.join(", ")
            ));
        }
        let members = base
            .into_iter()
            .filter_map(|h| self.member(inventory, h))
            .collect();
        Ok((members, skipped))
    }

    fn member(&self, inventory: &Inventory, h: &Host) -> Option<Member> {
        let bmc = h.bmc.clone()?;
        let profile = inventory.profile(&h.profile);
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

    fn plan(&self, members: &[Member]) -> RunStatus {
        let seen = lock(&self.learned).clone();
        let mut status = blank_status(&self.params, members, &seen);
        let specs = members.iter().map(|m| m.spec.clone()).collect();
        let (predicted, end) = plan::plan(self.params.clone(), specs, seen);
        for (line, p) in status.hosts.iter_mut().zip(predicted) {
            line.reset_s = p.reset_s;
            line.dhcp_s = p.dhcp_s;
            line.admitted_s = p.admitted_s;
            line.fetched_s = p.fetched_s;
            line.phase = if p.fetched_s.is_some() {
                PhaseLabel::Planned
            } else {
                PhaseLabel::Unplanned
            };
        }
        status.state = RunState::Planned;
        status.started_unix_ms = self.clock.now_ms();
        status.makespan_s = Some(end);
        status.elapsed_s = end;
        status.phases.insert(PhaseLabel::Planned, members.len());
        status
    }

    /// Puts each host of a run taken over where its record says (see [`resume`]); the hosts
    /// whose reset outcome is unknown are found out about first ([`Self::find_out`]), at
    /// once up to the run's limit of BMC operations in flight (one BMC that does not answer
    /// holds up only its own hosts, for the query's bound).
    async fn resume_hosts(
        self: &Arc<Self>,
        step: &mut RunStep,
        take: TakeOver,
    ) -> Result<Option<Stored>, RunsError> {
        let limit = Arc::new(tokio::sync::Semaphore::new(self.params.max_bmc_ops.max(1)));
        let mut asks = tokio::task::JoinSet::new();
        for (i, m) in step.members().iter().enumerate() {
            let record = take.records.get(&m.spec.name);
            if resume(record, None) != Resume::AskPower {
                continue;
            }
            let since_ms = record.map_or(0, |r| r.at_ms);
            let (me, limit, mac, bmc) =
                (Arc::clone(self), Arc::clone(&limit), m.mac, m.bmc.clone());
            asks.spawn(async move {
                // The semaphore is never closed: a permit always comes.
                let _permit = limit.acquire_owned().await;
                (i, me.find_out(mac, &bmc, since_ms).await)
            });
        }
        let mut found: HashMap<usize, Found> = HashMap::new();
        while let Some(done) = asks.join_next().await {
            match done {
                Ok((i, f)) => {
                    found.insert(i, f);
                }
                // A query that panicked finds nothing out: the host is decided as if its
                // BMC did not answer (never reset).
                Err(e) => warn!(error = %e, "a power-state query failed"),
            }
        }
        for i in 0..step.members().len() {
            let name = step.members()[i].spec.name.clone();
            let record = take.records.get(&name);
            let mut decision = resume(record, None);
            if decision == Resume::AskPower {
                let f = found.get(&i).copied().unwrap_or(Found {
                    power: Power::Unknown,
                    booted_ms: None,
                });
                info!(host = %name, power = ?f.power, booted_ms = ?f.booted_ms, "the previous leader's reset outcome is unknown: found out");
                decision = resume(record, Some(f));
            }
            info!(host = %name, decision = ?decision, "resuming a host of a run taken over");
            step.take_over(i, record, &decision);
        }
        Ok(self.runs.clone().map(|store| Stored { store, id: take.id }))
    }

    /// What is known of a host whose reset intent (at `since_ms`) has no outcome: a boot
    /// since then (this fabric's ledger, else the shared timeline, read now), and, if none,
    /// its BMC's power state (one query, under that BMC's lock like any operation, bounded;
    /// no answer is `Unknown`, which never resets).
    async fn find_out(&self, mac: Mac, bmc: &BmcConfig, since_ms: u64) -> Found {
        let local = self
            .ledger
            .events_since(mac, since_ms)
            .iter()
            .find(|e| e.kind == EventKind::Booted)
            .map(|e| e.at_ms);
        let shared = match (local, &self.evidence) {
            (None, Some(e)) => match e.booted_in_timeline(mac, since_ms).await {
                Ok(at) => at,
                Err(err) => {
                    warn!(%mac, error = %err, "cannot read the host's shared timeline");
                    None
                }
            },
            _ => None,
        };
        if let Some(at) = local.or(shared) {
            return Found {
                power: Power::Unknown,
                booted_ms: Some(at),
            };
        }
        let one = self.bmc_lock(&bmc.url);
        let _one = one.lock().await;
        let power = match tokio::time::timeout(POWER_QUERY, self.bmc.power_state(bmc)).await {
            Ok(Ok(p)) => Power::from(p),
            Ok(Err(e)) => {
                warn!(%mac, error = %e, "cannot read the host's power state");
                Power::Unknown
            }
            Err(_) => {
                warn!(%mac, "no power state within {POWER_QUERY:?}");
                Power::Unknown
            }
        };
        Found {
            power,
            booted_ms: None,
        }
    }

    /// Cluster mode: stores the run in etcd (its number there, for the host records);
    /// `Ok(None)` standalone.
    async fn store_run(&self, step: &RunStep) -> Result<Option<Stored>, RunsError> {
        let Some(store) = &self.runs else {
            return Ok(None);
        };
        let hosts = step
            .members()
            .iter()
            .map(|m| RunHost {
                name: m.spec.name.clone(),
                rack: m.spec.rack.clone(),
            })
            .collect();
        let record = store.create(hosts, self.clock.now_ms()).await?;
        info!(etcd_run = record.id, "reboot run stored in etcd");
        Ok(Some(Stored {
            store: store.clone(),
            id: record.id,
        }))
    }

    /// Cluster mode: each host's end (booted, failed) and the run's, recorded as far as etcd
    /// and the term allow (a new leader that reads less redoes nothing a record forbids).
    /// Hosts whose end [`Self::share_ends`] wrote already are written again (the same
    /// record): one lost write is made good here.
    async fn store_end(&self, stored: &Stored, step: &RunStep, view: &RunStatus) {
        let now_ms = self.clock.now_ms();
        for (name, record) in ended_records(step, view, stored.store.fabric(), now_ms, None) {
            if let Err(e) = stored.store.record_outcome(stored.id, &name, &record).await {
                warn!(host = %name, error = %e, "cannot record the host's outcome in etcd");
            }
        }
        let phase = if view.state == RunState::Done {
            RunPhase::Done
        } else {
            RunPhase::Cancelled
        };
        lock(&self.ended).insert(stored.id, Some(phase));
        let fenced = match self.leadership.as_ref().and_then(Leadership::fence) {
            Some(fence) => stored.store.set_phase(&fence, stored.id, phase).await,
            None => Err(RunsError::NotLeader),
        };
        if let Err(e) = fenced {
            warn!(etcd_run = stored.id, error = %e, "cannot record the run's end in etcd");
        }
    }

    /// Cluster mode: the hosts that ended since the last tick are written to etcd at once,
    /// in the background (a tick never waits on etcd), so a follower's report and a new
    /// leader see each boot as it happens, not only when the run ends.
    fn share_ends(
        &self,
        stored: &Stored,
        step: &RunStep,
        view: &RunStatus,
        shared: &mut HashSet<String>,
    ) {
        let now_ms = self.clock.now_ms();
        let records = ended_records(step, view, stored.store.fabric(), now_ms, Some(shared));
        if records.is_empty() {
            return;
        }
        let stored = stored.clone();
        tokio::spawn(async move {
            for (name, record) in records {
                if let Err(e) = stored.store.record_outcome(stored.id, &name, &record).await {
                    warn!(host = %name, error = %e, "cannot record the host's outcome in etcd (again at the run's end)");
                }
            }
        });
    }

    /// Whether this fabric may reset hosts now: always standalone, only while it leads in
    /// cluster mode.
    fn leads(&self) -> bool {
        self.leadership.as_ref().is_none_or(Leadership::leading)
    }

    fn bmc_lock(&self, url: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.bmc_locks).entry(url.to_owned()).or_default())
    }

    /// Runs one reboot run to its end: each tick, the step's inputs in and its actions out.
    async fn drive(
        self: Arc<Self>,
        id: u64,
        members: Vec<Member>,
        status: Arc<Mutex<RunStatus>>,
        cancel: CancellationToken,
        take: Option<TakeOver>,
    ) {
        let seen = lock(&self.learned).clone();
        let first = lock(&status).clone();
        let mut step = RunStep::new(self.params.clone(), members, seen, first);
        if self.fabrics.is_some() {
            step = step.with_rack_pacing();
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Cluster mode: the run is stored before anything is done, or nothing is done; a run
        // taken over is stored already, and its hosts resume as their records say.
        let stored = match take {
            Some(take) => self.resume_hosts(&mut step, take).await,
            None => self.store_run(&step).await,
        };
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                warn!(run = id, error = %e, "cannot store reboot run {id} in etcd: stopped, nothing reset");
                step.cancel();
                None
            }
        };
        if let Some(stored) = &stored {
            // From now on the take-over loop leaves this run to this drive.
            lock(&self.ended).insert(stored.id, None);
        }
        // Cluster mode: the hosts' boots at other fabrics are followed from before any reset.
        if let Some(e) = &self.evidence {
            let macs: Vec<_> = step.members().iter().map(|m| m.mac).collect();
            e.follow(&macs);
        }
        // A run that could not be stored ends here, cancelled, without a tick.
        let stopped = step.status().finished();
        // Hosts whose end went to etcd during the run (`share_ends`).
        let mut shared = HashSet::new();
        loop {
            if stopped {
                break;
            }
            let cancelled = tokio::select! {
                _ = cancel.cancelled() => true,
                _ = tick.tick() => false,
            };
            if cancelled {
                step.cancel();
                break;
            }
            if !self.leads() {
                // Another fabric may lead now: no reset more from here, whatever happens.
                warn!(
                    run = id,
                    "this fabric no longer leads the cluster: reboot run {id} stopped"
                );
                step.cancel();
                break;
            }
            self.drop_removed(&mut step);
            let news = self.gather(&step, &mut rx);
            for action in step.advance(news) {
                self.apply(action, &step, &tx, stored.as_ref());
            }
            let view = self.publish(&mut step, &status);
            if let Some(stored) = &stored {
                self.share_ends(stored, &step, &view, &mut shared);
            }
            if step.finish() {
                break;
            }
        }
        for m in step.members() {
            self.gate.withdraw(m.mac);
        }
        if let Some(e) = &self.evidence {
            e.follow(&[]);
        }
        *lock(&self.learned) = step.post_seen().clone();
        let view = self.publish(&mut step, &status);
        if let Some(stored) = &stored {
            self.store_end(stored, &step, &view).await;
        }
        if let Some(reports) = &self.reports {
            reports.finished(&view);
        }
        info!(
            run = id,
            state = %view.state,
            booted = view.count(PhaseLabel::Booted),
            failed = view.count(PhaseLabel::Failed),
            "reboot run {id} {}",
            view.state
        );
    }

    /// Fails the members no longer in the inventory in effect (by MAC: the run's member list
    /// never changes, a reload does not shift it).
    fn drop_removed(&self, step: &mut RunStep) {
        let snap = self.live.load();
        let gone: Vec<usize> = step
            .members()
            .iter()
            .enumerate()
            .filter(|(_, m)| snap.inventory.host_by_mac(&m.mac).is_none())
            .map(|(i, _)| i)
            .collect();
        for i in gone {
            step.fail(i, REMOVED);
        }
    }

    /// A tick's inputs: the time, the BMC operations that ended, the ledger's events of the
    /// hosts in flight (with, in cluster mode, their boots reported at other fabrics) and
    /// the fabric's egress.
    fn gather(&self, step: &RunStep, resets: &mut mpsc::UnboundedReceiver<ResetDone>) -> Tick {
        let now_ms = self.clock.now_ms();
        let mut done = Vec::new();
        while let Ok(r) = resets.try_recv() {
            done.push(r);
        }
        let events = step
            .to_read()
            .into_iter()
            .map(|(i, mac, since)| {
                let mut events = self.ledger.events_since(mac, since);
                // A boot another fabric saw counts as this ledger's `booted` would.
                let elsewhere = self
                    .evidence
                    .as_ref()
                    .and_then(|e| e.booted_since(mac, since));
                if let Some(at_ms) = elsewhere {
                    events.push(ledger::Event {
                        at_ms,
                        ip: None,
                        kind: EventKind::Booted,
                    });
                }
                (i, events)
            })
            .collect();
        Tick {
            now_ms,
            resets: done,
            events,
            egress_bps: self.ledger.egress_rates().iter().map(|(_, r)| r).sum(),
            fabrics: self
                .fabrics
                .as_ref()
                .map(|v| v.load().fabrics.clone())
                .unwrap_or_default(),
        }
    }

    /// Carries out one of the step's actions.
    fn apply(
        &self,
        action: RunAction,
        step: &RunStep,
        resets: &mpsc::UnboundedSender<ResetDone>,
        stored: Option<&Stored>,
    ) {
        let members = step.members();
        match action {
            RunAction::ResetAccepted { host, reset_type } => {
                self.metrics.resets.with_label_values(&["accepted"]).inc();
                let mac = members[host].mac;
                let kind = EventKind::BmcReset { reset_type };
                self.ledger.record_at(mac, kind, None, self.clock.now_ms());
            }
            RunAction::ResetFailed { host, why } => {
                let m = &members[host];
                self.metrics.resets.with_label_values(&["failed"]).inc();
                warn!(host = %m.spec.name, "reset failed: {why}");
                let kind = EventKind::BmcFailed { why };
                self.ledger
                    .record_at(m.mac, kind, None, self.clock.now_ms());
            }
            RunAction::Release(host) => self.gate.withdraw(members[host].mac),
            RunAction::Admit(host) => {
                // With `scheduler.gate = "always"` the gate's queue admits the run's hosts
                // like any other, and HTTP records the admission when it happens.
                let (mac, at) = (members[host].mac, self.clock.now_ms());
                if self.gate.admit_enrolled(mac, at) {
                    self.ledger.record_at(mac, EventKind::Admitted, None, at);
                }
            }
            RunAction::Reset(host) => {
                let m = &members[host];
                self.gate.enroll(m.mac);
                let one = self.bmc_lock(&m.bmc.url);
                let op = self.bmc.boot_once_and_reset(&m.bmc);
                let ops = self.metrics.bmc_ops.clone();
                let tx = resets.clone();
                let leadership = self.leadership.clone();
                let intent = stored.map(|s| {
                    let record = HostRecord {
                        state: HostState::Resetting,
                        fabric: s.store.fabric().to_owned(),
                        at_ms: self.clock.now_ms(),
                        attempts: step.line(host).map_or(1, |l| l.attempts),
                        reason: None,
                    };
                    (s.clone(), m.spec.name.clone(), record)
                });
                tokio::spawn(async move {
                    // One operation per BMC: a chassis BMC serves several hosts.
                    let _one = one.lock().await;
                    // The wait for the BMC may have outlasted the leadership: checked again
                    // right before the reset leaves.
                    if leadership.as_ref().is_some_and(|l| !l.leading()) {
                        let why = "not sent: this fabric no longer leads the cluster";
                        let _ = tx.send((host, Err(RedfishError::NotApplied(why.to_owned()))));
                        return;
                    }
                    // Cluster mode: the intent first, fenced by the term; a leader that cannot
                    // write it (etcd unreachable, replaced) does not reset.
                    if let Some((s, name, record)) = &intent {
                        let written = match leadership.as_ref().and_then(Leadership::fence) {
                            Some(fence) => s.store.record_fenced(&fence, s.id, name, record).await,
                            None => Err(RunsError::NotLeader),
                        };
                        if let Err(e) = written {
                            let why = format!("not sent: cannot record the intent in etcd: {e}");
                            let _ = tx.send((host, Err(RedfishError::NotApplied(why))));
                            return;
                        }
                    }
                    ops.inc();
                    let r = op.await;
                    ops.dec();
                    if let (Ok(_), Some((s, name, record))) = (&r, &intent) {
                        // Best effort: a new leader that finds `resetting` asks the BMC.
                        let done = HostRecord {
                            state: HostState::Reset,
                            ..record.clone()
                        };
                        let written = match leadership.as_ref().and_then(Leadership::fence) {
                            Some(fence) => s.store.record_fenced(&fence, s.id, name, &done).await,
                            None => Err(RunsError::NotLeader),
                        };
                        if let Err(e) = written {
                            warn!(host = %name, error = %e, "reset done, not recorded in etcd");
                        }
                    }
                    let _ = tx.send((host, r));
                });
            }
            RunAction::GiveUp { host, reason } => {
                warn!(host = %members[host].spec.name, "given up: {reason}");
                self.gate.withdraw(members[host].mac);
                // In the ledger too, so the event log reports the failed boot (`host.failed`).
                let (mac, at) = (members[host].mac, self.clock.now_ms());
                let kind = EventKind::BootFailed { reason };
                self.ledger.record_at(mac, kind, None, at);
            }
        }
    }

    /// Copies the run's state to its status and the metrics; returns the status.
    fn publish(&self, step: &mut RunStep, status: &Mutex<RunStatus>) -> RunStatus {
        let mut view = step.status().clone();
        view.bmc_operations_in_flight = self.metrics.bmc_ops.get().max(0) as usize;
        for p in PhaseLabel::SCHEDULER {
            self.metrics
                .hosts
                .with_label_values(&[p.as_str()])
                .set(view.count(p) as i64);
        }
        self.metrics.capacity.set(view.capacity_bps);
        self.metrics.slots.set(view.slots as i64);
        *lock(status) = view.clone();
        view
    }
}

/// A run left running in etcd by another leader: its number and its hosts' records, by name.
struct TakeOver {
    id: u64,
    records: HashMap<String, HostRecord>,
}

/// The records of the hosts `view` shows ended (booted, failed), by name, as `fabric` at
/// `now_ms`; with `skip`, only those not in it, which are then added to it.
fn ended_records(
    step: &RunStep,
    view: &RunStatus,
    fabric: &str,
    now_ms: u64,
    mut skip: Option<&mut HashSet<String>>,
) -> Vec<(String, HostRecord)> {
    let mut out = Vec::new();
    for (m, line) in step.members().iter().zip(&view.hosts) {
        let state = match line.phase {
            PhaseLabel::Booted => HostState::Booted,
            PhaseLabel::Failed => HostState::Failed,
            _ => continue,
        };
        if let Some(seen) = skip.as_deref_mut() {
            if !seen.insert(m.spec.name.clone()) {
                continue;
            }
        }
        let record = HostRecord {
            state,
            fabric: fabric.to_owned(),
            at_ms: now_ms,
            attempts: line.attempts,
            reason: line.reason.clone(),
        };
        out.push((m.spec.name.clone(), record));
    }
    out
}

/// A run as stored in etcd: the store and the run's number there.
#[derive(Clone)]
struct Stored {
    store: RunStore,
    id: u64,
}

/// A BMC operation that ended: the host, and the reset type or the error.
type ResetDone = (usize, Result<String, RedfishError>);

/// Why a selected host whose boot answer is `answer` is not rebooted; `None`: it is.
pub fn not_rebooted(answer: BootAnswer) -> Option<&'static str> {
    match answer {
        BootAnswer::Boot => None,
        BootAnswer::Deny => Some("netboot = deny: not rebooted"),
        BootAnswer::Disk => Some("netboot = once, already used: boots from its disk, not rebooted"),
    }
}

/// Why a member removed from the inventory during its run failed.
pub const REMOVED: &str = "removed from the inventory";

/// What the service is built from.
#[derive(Clone)]
pub struct Setup {
    /// The configuration snapshot: hosts (with their BMCs) and profiles.
    pub live: Arc<Live>,
    /// Where the servers find images (what a host's profile weighs).
    pub image_roots: Vec<PathBuf>,
    /// `[scheduler]`.
    pub scheduler: SchedulerConfig,
    /// Cluster mode: this fabric's leadership (runs start and reset only while it leads);
    /// `None` standalone.
    pub leadership: Option<Leadership>,
    /// Cluster mode: the run records in etcd (with `leadership`: each reset's intent is
    /// written, fenced by the term, before the BMC call); `None` standalone.
    pub runs: Option<RunStore>,
    /// Cluster mode: what this fabric sees of the cluster (each rack's fabric and its
    /// measured egress paces that rack); `None` standalone.
    pub fabrics: Option<Arc<arc_swap::ArcSwap<ClusterView>>>,
    /// Cluster mode: the run's hosts' boots reported at other fabrics (a host of another
    /// fabric's rack boots there); `None` standalone.
    pub evidence: Option<Evidence>,
    /// Where finished runs' reports are kept past a restart, and the last one kept.
    pub reports: Option<(Arc<dyn ReportStore>, Option<RunStatus>)>,
}

/// Where the reports of finished runs are kept, so the last run's report survives a restart.
/// Called once per run as it ends, on the run's task: an implementation queues and returns.
pub trait ReportStore: Send + Sync {
    /// The run ended (done or cancelled) with this status.
    fn finished(&self, report: &RunStatus);
}

#[cfg(test)]
mod tests {
    //! The runner with its real ledger, gate and metrics, and scripted BMCs: the events are
    //! recorded as DHCP, TFTP, HTTP and the booted host's callback record them. Time is
    //! paused and the runner reads tokio's clock: the ticks run without waiting, and the
    //! scheduler sees virtual time pass, so its deadlines (predicted slot ends, backoff,
    //! timeouts) are tested on both sides: not before, and then at the tick they fall due.
    //!
    //! The runner ticks every 250 ms from the run's start. A test looks and records events
    //! between two ticks (`World::at` with `.125`/`.375`/...), so that which of the runner and
    //! the test goes first at a tick never matters; the times the status reports are exact.

    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        model::inventory::Mac,
        model::ledger::{Event, Phase as LedgerPhase},
        model::snapshot::Next,
        services::reboot::{
            bmc::{FakeBmc, RESET_TYPE},
            clock::TokioClock,
            report::HostLine,
        },
    };

    /// The test clock's unix ms when a world is made: fixed, and years away from the wall
    /// clock, so an event stamped with the wall clock by mistake shows in the status times.
    const BASE_MS: u64 = 1_600_000_000_000;

    /// A run's world: the service, what it acts on, and the BMCs it talks to.
    struct World {
        service: Arc<RebootService>,
        /// The snapshot the service resolves runs in, and its inventory's text.
        live: Arc<Live>,
        hosts_toml: String,
        ledger: Ledger,
        gate: Gate,
        bmc: FakeBmc,
        clock: TokioClock,
        registry: Registry,
        macs: Vec<Mac>,
        _images: tempfile::TempDir,
    }

    /// `hosts` hosts of profile `p` (a 625 000-byte kernel and initrd: 10 s at one host's
    /// 1 Mbit/s), each with its own BMC unless `shared_bmc`, under `[scheduler]` `scheduler`.
    fn world(hosts: usize, shared_bmc: bool, scheduler: &str, bmc: FakeBmc) -> World {
        world_led(hosts, shared_bmc, scheduler, bmc, None)
    }

    /// A world in cluster mode, this fabric's leadership `leadership`.
    fn world_led(
        hosts: usize,
        shared_bmc: bool,
        scheduler: &str,
        bmc: FakeBmc,
        leadership: Option<Leadership>,
    ) -> World {
        world_in(hosts, shared_bmc, scheduler, bmc, leadership, None)
    }

    /// A world in cluster mode with the run records `runs`.
    fn world_in(
        hosts: usize,
        shared_bmc: bool,
        scheduler: &str,
        bmc: FakeBmc,
        leadership: Option<Leadership>,
        runs: Option<RunStore>,
    ) -> World {
        let images = tempfile::tempdir().expect("tempdir");
        let root = images.path().canonicalize().expect("root");
        for f in ["vmlinuz", "initrd.img"] {
            let file = std::fs::File::create(root.join(f)).expect("image");
            file.set_len(625_000).expect("size");
        }
        let mut text = String::from(
            "[profiles.p]\nkernel = \"vmlinuz\"\ninitrd = [\"initrd.img\"]\ncmdline = \"\"\n",
        );
        for i in 0..hosts {
            let url = if shared_bmc { 0 } else { i };
            text += &format!(
                "[[hosts]]\nname = \"h{i}\"\nmac = \"02:00:00:00:00:{i:02x}\"\nprofile = \"p\"\n\
                 model = \"m\"\nrack = \"r{i}\"\n[hosts.bmc]\nurl = \"http://bmc{url}.test\"\n\
                 username = \"admin\"\npassword_env = \"BMC_PASSWORD\"\nallow_plaintext = true\n"
            );
        }
        let inventory = parse_inventory(&text);
        let config = crate::config::Config::from_wire(
            Path::new("bootfabric.toml"),
            toml::from_str(&format!("[scheduler]\n{scheduler}")).expect("config toml"),
            Inventory::default(),
        )
        .expect("config");
        let registry = Registry::new();
        let ledger = Ledger::new(&registry).expect("ledger");
        ledger.set_inventory(&inventory);
        let gate = Gate::default();
        let macs = inventory.hosts().iter().map(|h| h.mac).collect();
        let first = Next::new(inventory, crate::model::boot::BootSettings::defaults());
        let live = Live::unregistered(first);
        let setup = Setup {
            live: Arc::clone(&live),
            image_roots: vec![root],
            scheduler: config.scheduler,
            leadership,
            runs,
            fabrics: None,
            evidence: None,
            reports: None,
        };
        let clock = TokioClock::new(BASE_MS);
        let service = RebootService::with_bmc(
            setup,
            Arc::new(bmc.clone()),
            Arc::new(clock),
            ledger.clone(),
            gate.clone(),
            &registry,
        )
        .expect("service");
        World {
            service,
            live,
            hosts_toml: text,
            ledger,
            gate,
            bmc,
            clock,
            registry,
            macs,
            _images: images,
        }
    }

    fn parse_inventory(text: &str) -> Inventory {
        Inventory::from_wire(
            Path::new("hosts.toml"),
            toml::from_str(text).expect("inventory toml"),
        )
        .expect("inventory")
    }

    /// Two download slots, one host's POST guessed at 1 s, reset only when needed.
    const TWO_SLOTS: &str = "capacity_mbps = 2\nper_host_mbps = 1\npost_guess_s = 1\n\
                             lookahead_s = 0\nreset_attempts = 1\n";

    fn all() -> Selection {
        Selection {
            all: true,
            ..Selection::default()
        }
    }

    /// What a BMC refusing the reset answers.
    fn http_503() -> RedfishError {
        RedfishError::Status {
            method: "POST".into(),
            path: "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset".into(),
            status: 503,
            message: None,
        }
    }

    impl World {
        fn status(&self) -> RunStatus {
            self.service.status().expect("a run")
        }

        fn phases(&self) -> Vec<PhaseLabel> {
            self.status().hosts.iter().map(|h| h.phase).collect()
        }

        fn host(&self, host: usize) -> HostLine {
            self.status().hosts[host].clone()
        }

        fn bmc_calls(&self) -> Vec<String> {
            self.bmc.calls()
        }

        fn timeline(&self, host: usize) -> Vec<Event> {
            self.ledger.timeline(self.macs[host])
        }

        /// The events of `host` in `phase`, as recorded.
        fn recorded(&self, host: usize, phase: LedgerPhase) -> Vec<EventKind> {
            self.timeline(host)
                .into_iter()
                .filter(|e| e.phase() == phase)
                .map(|e| e.kind)
                .collect()
        }

        /// Lets virtual time pass until the run is `secs` old.
        async fn at(&self, secs: f64) {
            let target = self.status().started_unix_ms + (secs * 1000.0) as u64;
            let now = self.clock.now_ms();
            assert!(target >= now, "the run is already past {secs} s");
            tokio::time::sleep(Duration::from_millis(target - now)).await;
        }

        /// Records an event of `host` now (the runner's clock), as a service would.
        fn record(&self, host: usize, kind: EventKind) {
            let ip = Ipv4Addr::new(10, 0, 0, 10 + host as u8);
            let now = self.clock.now_ms();
            self.ledger
                .record_at(self.macs[host], kind, Some(ip.into()), now);
        }

        // What the services record of a host's boot, as they record it: DHCP its offer, TFTP
        // the bootloader, HTTP the kernel and initrd, and the installed system's callback.
        fn dhcp_offer(&self, host: usize) {
            self.record(host, EventKind::DhcpOffer);
        }

        fn files_sent(&self, host: usize) {
            let file = "ipxe.efi".to_owned();
            self.record(host, EventKind::TftpSent { file });
            for path in ["/vmlinuz", "/initrd.img"] {
                let path = path.to_owned();
                self.record(host, EventKind::HttpStarted { path: path.clone() });
                let bytes = 625_000;
                self.record(host, EventKind::HttpSent { path, bytes });
            }
        }

        fn booted(&self, host: usize) {
            self.record(host, EventKind::Booted);
        }

        fn metric(&self, line: &str) -> bool {
            String::from_utf8_lossy(&crate::util::metrics::render(&self.registry))
                .lines()
                .any(|l| l == line)
        }
    }

    /// Lets the runner tick until `done` holds; paused time, so no test waits for real.
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..400 {
            if done() {
                return;
            }
            tokio::time::sleep(TICK).await;
        }
        panic!("{what}: not after 400 ticks");
    }

    /// Lets `ticks` of the runner pass.
    async fn ticks(ticks: u32) {
        tokio::time::sleep(TICK * ticks).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_reset_boots_and_the_next_host_takes_the_free_slot() {
        use PhaseLabel::*;
        let w = world(3, false, TWO_SLOTS, FakeBmc::new());
        let first = w.service.start(&all()).expect("start");
        assert_eq!(
            (first.state, first.slots, first.hosts.len()),
            (RunState::Running, 2, 3)
        );
        assert_eq!(first.started_unix_ms, BASE_MS, "the runner's clock");
        until("two resets", || w.bmc_calls().len() == 2).await;
        assert_eq!(w.bmc_calls(), ["http://bmc0.test", "http://bmc1.test"]);
        assert!(w.gate.holds(&w.macs[0]) && w.gate.holds(&w.macs[1]));
        until("accepted", || w.phases() == [Posting, Posting, Waiting]).await;
        assert_eq!(
            w.recorded(0, LedgerPhase::BmcReset),
            [EventKind::BmcReset {
                reset_type: RESET_TYPE.to_owned()
            }]
        );
        // Reset at 0, accepted at the next tick, on DHCP at 1.125 (a POST of 0.875 s).
        w.at(1.125).await;
        w.dhcp_offer(0);
        w.dhcp_offer(1);
        w.at(1.375).await;
        assert_eq!(w.phases(), [Downloading, Downloading, Waiting]);
        assert!(!w.gate.holds(&w.macs[0]) && !w.gate.holds(&w.macs[1]));
        assert_eq!(w.recorded(1, LedgerPhase::Admitted), [EventKind::Admitted]);
        let h0 = w.host(0);
        assert_eq!(
            (h0.reset_s, h0.reset_done_s, h0.dhcp_s, h0.admitted_s),
            (Some(0.0), Some(0.25), Some(1.125), Some(1.25))
        );
        // Both slots are taken until 11.25 (10 s each): the third host, 0.875 s of POST
        // away, is not reset while it would arrive before that.
        w.at(5.125).await;
        assert_eq!(w.bmc_calls().len(), 2);
        assert_eq!(w.phases()[2], Waiting);
        // Host 0 has its files early: its slot is free, the third host is reset at the next
        // tick to take it.
        w.files_sent(0);
        w.at(5.375).await;
        assert_eq!(w.bmc_calls().len(), 3);
        assert_eq!(w.bmc_calls()[2], "http://bmc2.test");
        assert_eq!(w.phases()[0], Starting);
        let (h0, h2) = (w.host(0), w.host(2));
        assert_eq!(
            (h0.loader_s, h0.kernel_s, h0.fetched_s),
            (Some(5.125), Some(5.125), Some(5.125))
        );
        assert_eq!(h2.reset_s, Some(5.25));
        w.booted(0);
        w.files_sent(1);
        w.booted(1);
        // Accepted at 5.5, host 2 is on DHCP at 6.125 and admitted at once: both slots are free.
        w.at(6.125).await;
        w.dhcp_offer(2);
        w.at(6.375).await;
        assert_eq!(w.phases(), [Booted, Booted, Downloading]);
        assert_eq!(w.host(2).admitted_s, Some(6.25));
        w.at(7.125).await;
        w.files_sent(2);
        w.booted(2);
        until("done", || w.status().finished()).await;
        let s = w.status();
        assert_eq!(s.state, RunState::Done);
        assert_eq!(s.count(Booted), 3);
        assert_eq!(s.makespan_s, Some(7.125), "host 2's boot");
        // 3.75 MB at 2 Mbit/s (15 s), plus the quickest reset to booted (host 2's 1.875 s).
        assert_eq!(s.lower_bound_s, 15.0 + 1.875);
        assert!(w.macs.iter().all(|m| !w.gate.holds(m)));
        assert!(w.metric("bootfabric_reboot_resets_total{outcome=\"accepted\"} 3"));
        assert!(w.metric("bootfabric_reboot_hosts{phase=\"booted\"} 3"));
        assert!(w.metric("bootfabric_reboot_bmc_operations_in_flight 0"));
        assert_eq!(w.service.cancel(), None, "nothing to cancel");
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_host_is_reset_to_arrive_as_a_slot_is_predicted_to_free() {
        use PhaseLabel::*;
        let w = world(3, false, TWO_SLOTS, FakeBmc::new());
        w.service.start(&all()).expect("start");
        // Reset at 0, accepted at 0.25, on DHCP at 2.125: the model's POST is now known to
        // take 1.875 s, and the two are admitted at 2.25 for 10 s each, until 12.25.
        w.at(2.125).await;
        w.dhcp_offer(0);
        w.dhcp_offer(1);
        w.at(2.375).await;
        assert_eq!(w.phases(), [Downloading, Downloading, Waiting]);
        assert_eq!(w.host(0).admitted_s, Some(2.25));
        // Nobody reports the files: the slots free when predicted. The third host is reset
        // at the first tick from which its POST ends no sooner than that: 12.25 - 1.875 =
        // 10.375, so the tick of 10.5 (the guessed 1 s would say 11.25).
        w.at(10.375).await;
        assert_eq!(
            w.bmc_calls().len(),
            2,
            "it would arrive before a slot frees"
        );
        assert_eq!(w.phases()[2], Waiting);
        w.at(10.625).await;
        assert_eq!(w.bmc_calls().len(), 3);
        assert_eq!(w.host(2).reset_s, Some(10.5));
        assert_eq!(w.phases(), [Downloading, Downloading, Resetting]);
    }

    /// A run keeps the members it resolved at its start, by MAC: a host that leaves the
    /// inventory (a reload, the API) fails with its reason and frees its place; the others
    /// go on as before.
    #[tokio::test(start_paused = true)]
    async fn a_host_removed_from_the_inventory_mid_run_fails_and_the_run_goes_on() {
        use PhaseLabel::*;
        let w = world(2, false, TWO_SLOTS, FakeBmc::new());
        w.service.start(&all()).expect("start");
        until("accepted", || w.phases() == [Posting, Posting]).await;
        assert!(w.gate.holds(&w.macs[0]));
        let without_h0: String = w
            .hosts_toml
            .split("[[hosts]]")
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join("[[hosts]]");
        let next = parse_inventory(&without_h0);
        assert_eq!(next.hosts().len(), 1);
        w.live
            .publish(|cur| Ok::<_, String>(Next::new(next, cur.boot.clone())))
            .expect("published");
        until("host 0 failed", || w.phases()[0] == Failed).await;
        assert_eq!(w.host(0).reason.as_deref(), Some(REMOVED));
        assert!(!w.gate.holds(&w.macs[0]), "a removed host holds no place");
        w.dhcp_offer(1);
        w.files_sent(1);
        w.booted(1);
        until("done", || w.status().finished()).await;
        let s = w.status();
        assert_eq!((s.count(Booted), s.count(Failed)), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_bmc_failure_fails_its_host_and_the_run_goes_on() {
        let bmc = FakeBmc::new();
        bmc.script("http://bmc0.test", [Err(http_503())]);
        let w = world(2, false, TWO_SLOTS, bmc);
        w.service.start(&all()).expect("start");
        let why = "POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset: HTTP 503";
        until("host 0 failed", || w.phases()[0] == PhaseLabel::Failed).await;
        let h0 = w.host(0);
        assert_eq!(
            h0.reason.as_deref(),
            Some(format!("reset failed 1 times: {why}").as_str())
        );
        assert_eq!(h0.failed_s, Some(0.25), "at the tick after the reset");
        assert!(!w.gate.holds(&w.macs[0]), "a failed host holds no place");
        assert_eq!(
            w.recorded(0, LedgerPhase::BmcFailed),
            [EventKind::BmcFailed {
                why: why.to_owned()
            }]
        );
        assert!(w.metric("bootfabric_reboot_resets_total{outcome=\"failed\"} 1"));
        w.dhcp_offer(1);
        w.files_sent(1);
        w.booted(1);
        until("done", || w.status().finished()).await;
        let s = w.status();
        assert_eq!(s.state, RunState::Done);
        assert_eq!(
            (s.count(PhaseLabel::Booted), s.count(PhaseLabel::Failed)),
            (1, 1)
        );
        assert_eq!(w.bmc_calls().len(), 2, "one attempt each");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_reset_is_retried_after_its_backoff_then_isolated() {
        use PhaseLabel::*;
        let bmc = FakeBmc::new();
        bmc.script(
            "http://bmc0.test",
            [Err(http_503()), Err(http_503()), Err(http_503())],
        );
        let three_tries = "capacity_mbps = 1\nper_host_mbps = 1\npost_guess_s = 1\n\
                           lookahead_s = 0\nreset_attempts = 3\nretry_backoff_s = 5\n";
        let w = world(1, false, three_tries, bmc);
        w.service.start(&all()).expect("start");
        // Reset at 0, refused at 0.25: retried 5 s later, at 5.25, not before.
        w.at(5.125).await;
        assert_eq!(w.bmc_calls().len(), 1);
        assert_eq!(w.phases(), [Waiting]);
        assert!(!w.gate.holds(&w.macs[0]), "no place held while it waits");
        w.at(5.375).await;
        assert_eq!(w.bmc_calls().len(), 2);
        assert_eq!(w.phases(), [Resetting]);
        assert!(
            w.gate.holds(&w.macs[0]),
            "held while its reset is in flight"
        );
        assert_eq!(w.host(0).reset_s, Some(5.25));
        // Refused again at 5.5: the backoff doubles, the third try comes at 15.5.
        w.at(15.375).await;
        assert_eq!(w.bmc_calls().len(), 2);
        assert_eq!(w.phases(), [Waiting]);
        w.at(15.625).await;
        assert_eq!(w.bmc_calls().len(), 3);
        // The third refusal, at 15.75, is the last allowed: the host is isolated.
        until("done", || w.status().finished()).await;
        let h0 = w.host(0);
        assert_eq!(h0.phase, Failed);
        assert_eq!(
            (h0.attempts, h0.reset_s, h0.failed_s),
            (3, Some(15.5), Some(15.75))
        );
        let why = "POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset: HTTP 503";
        assert_eq!(
            h0.reason.as_deref(),
            Some(format!("reset failed 3 times: {why}").as_str())
        );
        assert_eq!(w.recorded(0, LedgerPhase::BmcFailed).len(), 3);
        assert!(!w.gate.holds(&w.macs[0]));
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_that_go_quiet_time_out() {
        use PhaseLabel::*;
        let timeouts = "capacity_mbps = 2\nper_host_mbps = 1\npost_guess_s = 1\n\
                        lookahead_s = 0\npost_timeout_s = 30\nboot_timeout_s = 60\n";
        let w = world(2, false, timeouts, FakeBmc::new());
        w.service.start(&all()).expect("start");
        // Both reset at 0 and accepted at 0.25; host 1 gets its files, host 0 is never seen.
        w.at(1.125).await;
        w.dhcp_offer(1);
        w.at(2.125).await;
        w.files_sent(1);
        w.at(2.375).await;
        assert_eq!(w.phases(), [Posting, Starting]);
        // Host 0 may POST for 30 s after its reset was accepted: it fails at the first tick
        // past 30.25.
        w.at(30.375).await;
        assert_eq!(w.phases(), [Posting, Starting]);
        w.at(30.625).await;
        assert_eq!(w.phases(), [Failed, Starting]);
        let h0 = w.host(0);
        assert_eq!(h0.failed_s, Some(30.5));
        assert_eq!(
            h0.reason.as_deref(),
            Some("no DHCP request after the reset")
        );
        assert!(!w.gate.holds(&w.macs[0]));
        assert_eq!(
            w.recorded(0, LedgerPhase::BootFailed),
            [EventKind::BootFailed {
                reason: "no DHCP request after the reset".into()
            }],
            "the ledger (and so the event log) knows"
        );
        // Host 1 may start its OS for 60 s after its last file (2.125): it fails at the
        // first tick past 62.125.
        w.at(62.125).await;
        assert_eq!(w.phases(), [Failed, Starting]);
        w.at(62.375).await;
        assert_eq!(w.phases(), [Failed, Failed]);
        let h1 = w.host(1);
        assert_eq!(h1.failed_s, Some(62.25));
        assert_eq!(h1.reason.as_deref(), Some("did not report booted"));
        until("done", || w.status().finished()).await;
        assert_eq!(w.status().count(Failed), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_holds_a_host_until_a_slot_is_its() {
        use PhaseLabel::*;
        // One slot; reset well ahead, so the second host comes up while the first downloads.
        let one_slot =
            "capacity_mbps = 1\nper_host_mbps = 1\npost_guess_s = 1\nlookahead_s = 600\n";
        let w = world(2, false, one_slot, FakeBmc::new());
        w.service.start(&all()).expect("start");
        until("both reset", || w.bmc_calls().len() == 2).await;
        until("accepted", || w.phases() == [Posting, Posting]).await;
        w.at(1.125).await;
        w.dhcp_offer(0);
        w.dhcp_offer(1);
        w.at(1.375).await;
        assert_eq!(w.phases(), [Downloading, Queued]);
        assert!(!w.gate.holds(&w.macs[0]));
        // Host 0's slot was predicted to free at 11.25; the slot is its until it has its
        // files, however long that takes.
        w.at(21.125).await;
        assert_eq!(w.phases(), [Downloading, Queued]);
        assert!(w.gate.holds(&w.macs[1]), "held while the slot is taken");
        assert!(w.recorded(1, LedgerPhase::Admitted).is_empty());
        w.files_sent(0);
        w.at(21.375).await;
        assert!(!w.gate.holds(&w.macs[1]));
        assert_eq!(w.phases(), [Starting, Downloading]);
        assert_eq!(w.host(1).admitted_s, Some(21.25));
        assert_eq!(w.recorded(1, LedgerPhase::Admitted), [EventKind::Admitted]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_stops_the_run_and_opens_the_gate() {
        use PhaseLabel::*;
        let bmc = FakeBmc::new().with_delay(Duration::from_secs(30));
        let w = world(3, false, TWO_SLOTS, bmc);
        let id = w.service.start(&all()).expect("start").id;
        until("two resets", || w.bmc_calls().len() == 2).await;
        assert_eq!(w.phases(), [Resetting, Resetting, Waiting]);
        // (The status counts them at the next tick.)
        until("two in flight", || w.status().bmc_operations_in_flight == 2).await;
        assert_eq!(w.service.cancel(), Some(id));
        until("cancelled", || w.status().finished()).await;
        assert_eq!(w.status().state, RunState::Cancelled);
        assert!(w.macs.iter().all(|m| !w.gate.holds(m)));
        assert_eq!(w.service.cancel(), None, "already over");
        // The operations in flight end; nothing new starts.
        ticks(400).await;
        assert_eq!(w.bmc_calls().len(), 2);
        assert_eq!(w.status().state, RunState::Cancelled);
        assert!(w.metric("bootfabric_reboot_bmc_operations_in_flight 0"));
        // A new run may start.
        assert_eq!(w.service.start(&all()).expect("restart").id, id + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn one_operation_at_a_time_per_bmc_and_one_run_at_a_time() {
        use PhaseLabel::*;
        // A chassis BMC serving both hosts: both are due at once, it sees one after the other.
        let bmc = FakeBmc::new().with_delay(Duration::from_secs(5));
        let w = world(2, true, TWO_SLOTS, bmc);
        let id = w.service.start(&all()).expect("start").id;
        until("first reset", || w.bmc_calls().len() == 1).await;
        assert_eq!(w.phases(), [Resetting, Resetting]);
        until("in flight", || w.status().bmc_operations_in_flight == 1).await;
        assert!(matches!(
            w.service.start(&all()),
            Err(StartError::Busy(busy)) if busy == id
        ));
        // Each operation takes 5 s: the second starts when the first ends, at 5.
        w.at(4.875).await;
        assert_eq!(w.bmc_calls().len(), 1, "the second waits for the first");
        w.at(5.375).await;
        assert_eq!(w.bmc_calls().len(), 2);
        assert_eq!(w.phases(), [Posting, Resetting]);
        w.at(9.875).await;
        assert_eq!(w.phases(), [Posting, Resetting]);
        w.at(10.375).await;
        assert_eq!(w.phases(), [Posting, Posting]);
        assert_eq!(w.bmc_calls(), ["http://bmc0.test", "http://bmc0.test"]);
        assert_eq!(w.bmc.most_in_flight("http://bmc0.test"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dry_run_plans_and_touches_no_bmc() {
        let w = world(3, false, TWO_SLOTS, FakeBmc::new());
        let plan = w
            .service
            .start(&Selection {
                dry_run: true,
                ..all()
            })
            .expect("plan");
        assert_eq!(plan.state, RunState::Planned);
        assert_eq!(plan.started_unix_ms, BASE_MS, "the runner's clock");
        assert_eq!(plan.count(PhaseLabel::Planned), 3);
        assert!(plan.makespan_s.is_some());
        ticks(8).await;
        assert!(w.bmc_calls().is_empty());
        assert!(w.service.status().is_none(), "a plan is not a run");
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_that_would_boot_from_their_disk_are_not_rebooted_and_say_why() {
        let w = world(3, false, TWO_SLOTS, FakeBmc::new());
        let text = w
            .hosts_toml
            .replace("name = \"h1\"\n", "name = \"h1\"\nnetboot = \"deny\"\n")
            .replace("name = \"h2\"\n", "name = \"h2\"\nnetboot = \"once\"\n");
        let mut inventory = parse_inventory(&text);
        inventory.set_consumed("h2", true);
        w.live
            .publish(|_| {
                Ok::<_, String>(Next::new(
                    inventory,
                    crate::model::boot::BootSettings::defaults(),
                ))
            })
            .expect("published");
        let why = [
            SkippedHost {
                name: "h1".into(),
                reason: "netboot = deny: not rebooted".into(),
            },
            SkippedHost {
                name: "h2".into(),
                reason: "netboot = once, already used: boots from its disk, not rebooted".into(),
            },
        ];
        let plan = w
            .service
            .start(&Selection {
                dry_run: true,
                ..all()
            })
            .expect("plan");
        assert_eq!(plan.hosts.len(), 1);
        assert_eq!(plan.skipped, why);
        assert!(plan
            .report()
            .contains("h1                   netboot = deny: not rebooted"));
        let only = w.service.start(&Selection {
            hosts: vec!["h1".into(), "h2".into()],
            ..Selection::default()
        });
        let Err(StartError::Selection(e)) = only else {
            panic!("a run of hosts that boot from disk started: {only:?}");
        };
        assert!(
            e.contains("no host that boots from the network: h1 (netboot = deny"),
            "{e}"
        );
        let first = w.service.start(&all()).expect("start");
        assert_eq!(first.hosts.len(), 1);
        assert_eq!(first.hosts[0].name, "h0");
        ticks(8).await;
        assert_eq!(w.status().skipped, why, "kept while the run goes on");
        assert!(
            w.bmc_calls()
                .iter()
                .all(|c| !c.contains("bmc1") && !c.contains("bmc2")),
            "{:?}",
            w.bmc_calls()
        );
        assert!(w.bmc_calls().iter().any(|c| c.contains("bmc0")));
    }

    /// Cluster mode: only the leader starts runs, and a leader whose term lapses (a renewal
    /// that never came: etcd unreachable, or another fabric took over) stops resetting at once.
    #[tokio::test(start_paused = true)]
    async fn only_the_leader_runs_and_a_lapsed_term_stops_the_resets() {
        use PhaseLabel::*;
        let follower = Leadership::fixed(Some("fab-b"), None);
        let w = world_led(3, false, TWO_SLOTS, FakeBmc::new(), Some(follower));
        let refused = w.service.start(&all());
        let Err(e @ StartError::NotLeader(Some(_))) = refused else {
            panic!("a fabric that does not lead started a run: {refused:?}");
        };
        assert!(e.to_string().contains("ask fab-b"), "{e}");
        let plan = w.service.start(&Selection {
            dry_run: true,
            ..all()
        });
        assert!(plan.is_ok(), "planning is anyone's: {plan:?}");
        ticks(8).await;
        assert!(w.bmc_calls().is_empty());

        // This fabric leads for 2 s (its lease's last renewal), then hears nothing more.
        let leader = Leadership::fixed(Some("fab-a"), Some(Duration::from_secs(2)));
        let w = world_led(3, false, TWO_SLOTS, FakeBmc::new(), Some(leader));
        w.service.start(&all()).expect("the leader starts");
        until("two resets", || w.bmc_calls().len() == 2).await;
        assert_eq!(w.phases()[2], Waiting, "two slots");
        until("stopped", || w.status().finished()).await;
        assert_eq!(w.status().state, RunState::Cancelled);
        assert!(w.macs.iter().all(|m| !w.gate.holds(m)));
        // Whatever falls due later, nothing is reset from here any more.
        ticks(400).await;
        assert_eq!(w.bmc_calls().len(), 2);
    }

    /// Run records on a cluster that is never reached (`connect` is lazy; nothing listens on
    /// port 9): every etcd request fails.
    async fn unreachable_runs() -> RunStore {
        let cfg = crate::config::cluster::from_wire(
            &toml::from_str("name = \"fab-b\"\netcd = [\"http://127.0.0.1:9\"]\ntimeout_s = 1")
                .expect("toml"),
        )
        .expect("config");
        let cluster = crate::cluster::Cluster::connect(&cfg)
            .await
            .expect("lazy connect");
        RunStore::new(cluster)
    }

    /// Cluster mode, on a follower: a run is validated as the leader would (unknown hosts
    /// refused by name), then stored for the leader, or refused with nothing stored and a
    /// time to come back when no fabric leads or etcd cannot be written; never queued here.
    #[tokio::test]
    async fn a_follower_validates_a_run_and_stores_it_for_the_leader_or_says_when_to_retry() {
        let runs = unreachable_runs().await;
        let follower = Leadership::fixed(None, None);
        let w = world_in(
            2,
            false,
            TWO_SLOTS,
            FakeBmc::new(),
            Some(follower),
            Some(runs),
        );
        let unknown = w.service.start(&Selection {
            hosts: vec!["h0".into(), "nope".into()],
            ..Selection::default()
        });
        let Err(StartError::Selection(e)) = unknown else {
            panic!("an unknown host went to the leader: {unknown:?}");
        };
        assert!(e.contains("no host named \"nope\""), "{e}");
        let Err(StartError::ForLeader(fwd)) = w.service.start(&all()) else {
            panic!("a follower with run records must hand the run on");
        };
        assert_eq!(fwd.hosts.len(), 2);
        assert_eq!(fwd.first.hosts[1].name, "h1");
        let no_leader = w.service.request(fwd).await;
        let Err(e @ RequestError::NoLeader { retry_after_s }) = no_leader else {
            panic!("stored without a leader: {no_leader:?}");
        };
        assert!(retry_after_s >= 1);
        assert!(e.to_string().contains("nothing stored"), "{e}");
        assert!(w.bmc_calls().is_empty());

        // A leader is known, but etcd cannot be written (no quorum, out of reach).
        let runs = unreachable_runs().await;
        let led = Leadership::fixed(Some("fab-a"), None);
        let w = world_in(2, false, TWO_SLOTS, FakeBmc::new(), Some(led), Some(runs));
        let Err(StartError::ForLeader(fwd)) = w.service.start(&all()) else {
            panic!("a follower with run records must hand the run on");
        };
        let refused = w.service.request(fwd).await;
        assert!(
            matches!(refused, Err(RequestError::Cluster { retry_after_s, .. }) if retry_after_s >= 1),
            "{refused:?}"
        );
        // The status is the cluster's, which cannot be read either: an error, not this
        // fabric's (empty) own.
        assert!(matches!(w.service.shared_status().await, Some(Err(_))));
        assert!(w.service.status().is_none(), "nothing runs here");
        assert!(w.bmc_calls().is_empty());
    }

    /// A new leader takes over a run whose previous leader died between writing a reset's
    /// intent and learning the BMC's answer (`resetting`). It finds out before deciding, and
    /// never resets such a host: booted since the intent is booted (no BMC query); powered on
    /// (or a BMC that cannot say) waits for the boot within the run's timeouts; powered off
    /// fails, saying why. A host recorded `reset` waits without a query.
    #[tokio::test(start_paused = true)]
    async fn a_new_leader_finds_out_about_an_unknown_reset_and_never_resets_it() {
        use super::super::resume::POWERED_OFF;
        use crate::redfish::PowerState;
        use PhaseLabel::*;
        let bmc = FakeBmc::new();
        bmc.power("http://bmc0.test", [Ok(PowerState::On)]);
        bmc.power("http://bmc1.test", [Ok(PowerState::Off)]);
        let timeout = RedfishError::Timeout(Duration::from_secs(10));
        bmc.power("http://bmc2.test", [Err(timeout)]);
        let timeouts = "capacity_mbps = 5\nper_host_mbps = 1\npost_guess_s = 1\n\
                        lookahead_s = 0\npost_timeout_s = 30\nboot_timeout_s = 60\n";
        let leader = Leadership::fixed(Some("fab-a"), Some(Duration::from_secs(3600)));
        let w = world_led(5, false, timeouts, bmc, Some(leader));
        // The old leader wrote its intents 5 s before this one took over.
        let intent = BASE_MS - 5000;
        let rec = |state| HostRecord {
            state,
            fabric: "fab-old".into(),
            at_ms: intent,
            attempts: 1,
            reason: None,
        };
        let records: HashMap<String, HostRecord> = [
            ("h0", HostState::Resetting),
            ("h1", HostState::Resetting),
            ("h2", HostState::Resetting),
            ("h3", HostState::Reset),
            ("h4", HostState::Resetting),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_owned(), rec(s)))
        .collect();
        // h4 came up meanwhile: its boot is in this fabric's ledger, after the intent.
        w.booted(4);
        let (members, _) = w.service.select(&all()).expect("members");
        let take = TakeOver { id: 7, records };
        w.service
            .launch(members, Vec::new(), Some(take))
            .expect("taken over");
        w.at(0.375).await;
        assert_eq!(
            w.bmc.power_calls(),
            ["http://bmc0.test", "http://bmc1.test", "http://bmc2.test"],
            "asked only where the outcome is unknown and no boot was seen"
        );
        assert_eq!(w.phases(), [Posting, Failed, Posting, Posting, Booted]);
        assert_eq!(w.host(1).reason.as_deref(), Some(POWERED_OFF));
        assert_eq!(
            w.recorded(1, LedgerPhase::BootFailed),
            [EventKind::BootFailed {
                reason: POWERED_OFF.into()
            }],
            "a new failure is reported like any"
        );
        // h0 was on: it boots without a second reset.
        w.dhcp_offer(0);
        w.files_sent(0);
        w.booted(0);
        w.at(0.625).await;
        assert_eq!(w.phases()[0], Booted);
        // h2 (its BMC did not say) and h3 never show up: they fail at the POST timeout
        // counted from the takeover, never reset.
        w.at(29.875).await;
        assert_eq!(w.phases(), [Booted, Failed, Posting, Posting, Booted]);
        until("done", || w.status().finished()).await;
        assert_eq!(w.phases(), [Booted, Failed, Failed, Failed, Booted]);
        assert_eq!(
            w.host(2).reason.as_deref(),
            Some("no DHCP request after the reset")
        );
        assert!(
            w.bmc_calls().is_empty(),
            "no host was reset: {:?}",
            w.bmc_calls()
        );
    }

    /// BMCs that do not answer hold a take-over up for the query's bound, once: the hosts'
    /// power states are asked at once, not one after the other, and a host whose BMC says
    /// nothing in time is waited on, never reset.
    #[tokio::test(start_paused = true)]
    async fn power_queries_go_out_at_once_and_a_silent_bmc_is_waited_on_not_reset() {
        use PhaseLabel::*;
        let bmc = FakeBmc::new().with_delay(Duration::from_secs(3600));
        let slow = "capacity_mbps = 5\nper_host_mbps = 1\npost_guess_s = 1\n\
                    lookahead_s = 0\npost_timeout_s = 120\n";
        let leader = Leadership::fixed(Some("fab-a"), Some(Duration::from_secs(3600)));
        let w = world_led(3, false, slow, bmc, Some(leader));
        let records: HashMap<String, HostRecord> = (0..3)
            .map(|i| {
                let r = HostRecord {
                    state: HostState::Resetting,
                    fabric: "fab-old".into(),
                    at_ms: BASE_MS,
                    attempts: 1,
                    reason: None,
                };
                (format!("h{i}"), r)
            })
            .collect();
        let (members, _) = w.service.select(&all()).expect("members");
        w.service
            .launch(members, Vec::new(), Some(TakeOver { id: 3, records }))
            .expect("taken over");
        // One bound (30 s) for all three, not three in a row.
        w.at(POWER_QUERY.as_secs_f64() + 0.375).await;
        assert_eq!(w.phases(), [Posting, Posting, Posting]);
        assert!(w.bmc.power_calls().is_empty(), "none answered");
        ticks(40).await;
        assert!(w.bmc_calls().is_empty(), "no reset: {:?}", w.bmc_calls());
    }
}
