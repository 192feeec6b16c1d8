//! One tick of a live reboot run, pure: what the BMCs answered, what the ledger says about each
//! host in flight and the fabric's measured egress in; the actions to take out (reset a host,
//! let one through the admission gate, record what happened). No clock, no ledger, no BMC and
//! no gate here: the runner ([`super::runner`]) gathers the inputs, applies the actions and
//! publishes the status this step keeps.
//!
//! The step owns the run's state: the [`Scheduler`], the [`Capacity`] estimate, what it
//! tracks per host beyond the scheduler's phase, and the status view (times are seconds since
//! the run started).

use super::{
    plan,
    report::{HostLine, PhaseLabel, RunState, RunStatus},
    resume::{RackPacing, Resume},
    Action, Capacity, Event, HostSpec, Params, Phase, PostSeen, Scheduler,
};
use crate::{
    cluster::{
        runs::{HostRecord, HostState},
        FabricRecord,
    },
    model::inventory::Mac,
    model::ledger::{self, fetched_at, names, sent_at, EventKind},
    redfish::{BmcConfig, RedfishError},
};

/// One host of a run.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its boot NIC: its key in the ledger and at the gate.
    pub mac: Mac,
    /// Its BMC.
    pub bmc: BmcConfig,
    /// What the scheduler knows of it.
    pub spec: HostSpec,
    /// Its profile's files, relative to the image root (fetched = every one sent).
    pub files: Vec<String>,
    /// Its kernel, relative to the image root.
    pub kernel: Option<String>,
}

/// What happened since the last tick.
#[derive(Debug, Default)]
pub struct Tick {
    /// Unix milliseconds now (the ledger's time base).
    pub now_ms: u64,
    /// BMC operations that ended: the host, and the reset type or the error.
    pub resets: Vec<(usize, Result<String, RedfishError>)>,
    /// The ledger's events of the hosts [`RunStep::to_read`] named, each since its reset.
    pub events: Vec<(usize, Vec<ledger::Event>)>,
    /// The fabric's egress over the ledger's window, bytes per second.
    pub egress_bps: f64,
    /// Cluster mode: every fabric as the membership view last saw them (each rack's
    /// measured egress, for [`RunStep::with_rack_pacing`]).
    pub fabrics: Vec<FabricRecord>,
}

/// What the runner does for a tick, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum RunAction {
    /// The host's BMC accepted the reset: count it and record it (with the reset type).
    ResetAccepted {
        /// The host.
        host: usize,
        /// The reset type the BMC used.
        reset_type: String,
    },
    /// The host's BMC operation failed: count it, log it and record it.
    ResetFailed {
        /// The host.
        host: usize,
        /// The error.
        why: String,
    },
    /// Let the host through the gate: it holds no place there (until a retry holds it again).
    Release(usize),
    /// A download slot is the host's: let it through the gate and record it.
    Admit(usize),
    /// Hold the host at the gate and reset it through its BMC.
    Reset(usize),
    /// The scheduler gave up on the host: log why and let it through the gate.
    GiveUp {
        /// The host.
        host: usize,
        /// Why.
        reason: String,
    },
}

/// What the step remembers per host beyond the scheduler's phase.
#[derive(Clone, Debug, Default)]
struct Track {
    /// Unix ms of the last reset sent: ledger events before it belong to an earlier boot.
    reset_ms: Option<u64>,
    /// Unix ms of its first DHCP offer after that reset.
    dhcp_ms: Option<u64>,
    /// Whether an HTTP download of it is in progress.
    pulling: bool,
}

/// A live run's state, advanced one tick at a time.
pub struct RunStep {
    members: Vec<Member>,
    sched: Scheduler,
    capacity: Capacity,
    track: Vec<Track>,
    view: RunStatus,
    /// Unix ms the run started: status times count from it.
    start_ms: u64,
    /// Cluster mode: each rack paced by its own fabric's measured egress.
    pacing: Option<RackPacing>,
}

impl RunStep {
    /// A run of `members` with `params`, POST times learned by earlier runs, and its first
    /// status (a [`blank_status`] with `started_unix_ms` set).
    pub fn new(params: Params, members: Vec<Member>, seen: PostSeen, mut first: RunStatus) -> Self {
        // One line per host, whatever the caller passed: the step indexes them by host.
        first.hosts.resize_with(members.len(), HostLine::default);
        let specs = members.iter().map(|m| m.spec.clone()).collect();
        let capacity = Capacity::new(params.capacity_bps, params.per_host_bps);
        Self {
            sched: Scheduler::new(params, specs).with_post_seen(seen),
            capacity,
            track: vec![Track::default(); members.len()],
            members,
            start_ms: first.started_unix_ms,
            pacing: None,
            view: first,
        }
    }

    /// The run's hosts.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// POST times seen so far, per model (earlier runs' included).
    pub fn post_seen(&self) -> &PostSeen {
        self.sched.post_seen()
    }

    /// The hosts whose ledger events the next tick needs: each host reset and still on its
    /// way, its MAC, and the unix ms of its last reset (events before it are an earlier
    /// boot's).
    pub fn to_read(&self) -> Vec<(usize, Mac, u64)> {
        self.members
            .iter()
            .zip(&self.track)
            .zip(self.sched.phases())
            .enumerate()
            .filter_map(|(i, ((m, t), p))| Some((i, m.mac, t.reset_ms?)).filter(|_| on_way(p)))
            .collect()
    }

    /// Takes one tick's news; returns what to do, in order.
    pub fn advance(&mut self, tick: Tick) -> Vec<RunAction> {
        let now = secs_since(self.start_ms, tick.now_ms);
        let mut out = Vec::new();
        self.bmc_answers(now, tick.resets, &mut out);
        let mut events: Vec<Option<Vec<ledger::Event>>> = vec![None; self.members.len()];
        for (i, e) in tick.events {
            if let Some(slot) = events.get_mut(i) {
                *slot = Some(e);
            }
        }
        for (i, e) in events.into_iter().enumerate() {
            self.follow(i, &e.unwrap_or_default());
        }
        // Capacity: the fabric's own egress while every slot is busy, that is while as many
        // hosts as there are slots are pulling files (an admitted host may still be in its
        // bootloader, taking nothing).
        let pulling = self.track.iter().filter(|t| t.pulling).count();
        let busy = pulling >= self.sched.params().slots();
        let est = self.capacity.observe(now, tick.egress_bps, busy);
        self.sched.set_capacity(est);
        if let Some(pacing) = &mut self.pacing {
            // A rack is busy while as many of its hosts pull files as it has slots.
            let (members, track, sched) = (&self.members, &self.track, &self.sched);
            let busy = |rack: &str| {
                let pulling = members
                    .iter()
                    .zip(track)
                    .filter(|(m, t)| t.pulling && m.spec.rack == rack)
                    .count();
                pulling >= sched.rack_slots(rack)
            };
            for (rack, bps) in pacing.observe(now, &tick.fabrics, busy) {
                self.sched.set_rack_capacity(&rack, bps);
            }
        }
        for h in self.sched.admit(now) {
            self.view.hosts[h].admitted_s = Some(now);
            out.push(RunAction::Admit(h));
        }
        for Action::Reset(h) in self.sched.next_actions(now) {
            self.track[h].reset_ms = Some(tick.now_ms);
            self.track[h].dhcp_ms = None;
            self.view.hosts[h].reset_s = Some(now);
            self.view.hosts[h].attempts += 1;
            out.push(RunAction::Reset(h));
        }
        for (i, p) in self.sched.phases().iter().enumerate() {
            if let Phase::Failed { reason } = p {
                if self.view.hosts[i].failed_s.is_none() {
                    self.view.hosts[i].failed_s = Some(now);
                    self.view.hosts[i].reason = Some(reason.clone());
                    out.push(RunAction::GiveUp {
                        host: i,
                        reason: reason.clone(),
                    });
                }
            }
        }
        self.view.elapsed_s = now;
        out
    }

    /// BMC operations that ended.
    fn bmc_answers(
        &mut self,
        now: f64,
        resets: Vec<(usize, Result<String, RedfishError>)>,
        out: &mut Vec<RunAction>,
    ) {
        for (i, result) in resets {
            if i >= self.members.len() {
                continue;
            }
            match result {
                Ok(reset_type) => {
                    out.push(RunAction::ResetAccepted {
                        host: i,
                        reset_type,
                    });
                    self.view.hosts[i].reset_done_s = Some(now);
                    self.sched.on_event(now, i, Event::ResetDone);
                }
                Err(e) => {
                    let why = e.to_string();
                    out.push(RunAction::ResetFailed {
                        host: i,
                        why: why.clone(),
                    });
                    self.sched.on_event(now, i, Event::ResetFailed(why));
                    // Until the retry, it holds no place at the gate. (A host already seen
                    // on DHCP did reset, whatever the BMC answered: it stays.)
                    if matches!(
                        self.sched.phases()[i],
                        Phase::Waiting { .. } | Phase::Failed { .. }
                    ) {
                        out.push(RunAction::Release(i));
                    }
                }
            }
        }
    }

    /// What the ledger says about host `i` since its reset: DHCP, files sent, booted.
    fn follow(&mut self, i: usize, events: &[ledger::Event]) {
        if self.track[i].reset_ms.is_none() {
            return;
        }
        let phase = self.sched.phases()[i].clone();
        if !on_way(&phase) {
            return;
        }
        let start = self.start_ms;
        let secs = |ms: u64| secs_since(start, ms);
        let (m, t, line) = (
            &self.members[i],
            &mut self.track[i],
            &mut self.view.hosts[i],
        );
        t.pulling = matches!(phase, Phase::Downloading { .. })
            && events
                .iter()
                .rev()
                .find(|e| {
                    matches!(
                        e.kind,
                        EventKind::HttpStarted { .. }
                            | EventKind::HttpSent { .. }
                            | EventKind::HttpFailed { .. }
                    )
                })
                .is_some_and(|e| matches!(e.kind, EventKind::HttpStarted { .. }));
        if t.dhcp_ms.is_none() {
            // An offer answers a DISCOVER, which a booting firmware sends and a running OS
            // renewing its lease does not.
            if let Some(e) = events.iter().find(|e| e.kind == EventKind::DhcpOffer) {
                t.dhcp_ms = Some(e.at_ms);
                line.dhcp_s = Some(secs(e.at_ms));
                self.sched.on_event(secs(e.at_ms), i, Event::DhcpSeen);
            }
        }
        if let Some(from) = t.dhcp_ms {
            if line.loader_s.is_none() {
                line.loader_s = loader_at(&m.files, events, from).map(secs);
            }
            if line.kernel_s.is_none() {
                line.kernel_s = m
                    .kernel
                    .as_deref()
                    .and_then(|k| sent_at(k, events, from))
                    .map(secs);
            }
        }
        if let (Phase::Downloading { .. }, Some(from)) = (&phase, t.dhcp_ms) {
            if let Some(at) = fetched_at(&m.files, events, from) {
                line.fetched_s = Some(secs(at));
                self.sched.on_event(secs(at), i, Event::Fetched);
            }
        }
        if let Some(e) = events.iter().find(|e| e.kind == EventKind::Booted) {
            line.booted_s = Some(secs(e.at_ms));
            self.sched.on_event(secs(e.at_ms), i, Event::Booted);
        }
    }

    /// Fails host `i` for `reason` (unless it has ended); the next [`Self::advance`] gives
    /// it up (its gate place freed).
    pub fn fail(&mut self, i: usize, reason: &str) {
        self.sched.fail(i, reason);
    }

    /// Paces each rack of the run by the measured egress of the fabric that serves it (the
    /// [`Tick::fabrics`]), starting from the configured cap: cluster mode, where each rack
    /// has a link and a fabric of its own.
    pub fn with_rack_pacing(mut self) -> Self {
        let racks: Vec<String> = self.members.iter().map(|m| m.spec.rack.clone()).collect();
        let p = self.sched.params();
        self.pacing = Some(RackPacing::new(&racks, p.capacity_bps, p.per_host_bps));
        self
    }

    /// Host `i` of a run taken over from another leader, as its etcd `record` says and as
    /// `decision` ([`super::resume::resume`]) rules: a host reset (or maybe reset) waits for
    /// its DHCP from the takeover on, its POST timeout counted from then; an ended host stays
    /// ended; anything else is reset as planned.
    pub fn take_over(&mut self, i: usize, record: Option<&HostRecord>, decision: &Resume) {
        let (Some(r), Some(line)) = (record, self.view.hosts.get_mut(i)) else {
            return;
        };
        let at = secs_since(self.start_ms, r.at_ms);
        line.attempts = r.attempts;
        match decision {
            Resume::Reset | Resume::AskPower => {}
            Resume::Booted { at_ms } => {
                let at = secs_since(self.start_ms, *at_ms);
                self.sched.take_over(i, Phase::Booted { at });
                line.booted_s = Some(at);
            }
            // A new failure: given up on at the next tick (gate, ledger, etcd), like any.
            Resume::Fail { reason } => self.sched.fail(i, reason),
            Resume::AwaitBoot { since_ms } => {
                self.sched.take_over(i, Phase::Posting { since: at });
                self.track[i].reset_ms = Some(*since_ms);
                line.reset_s = Some(at);
            }
            Resume::Ended if r.state == HostState::Booted => {
                self.sched.take_over(i, Phase::Booted { at });
                line.booted_s = Some(at);
            }
            Resume::Ended => {
                let reason = r
                    .reason
                    .clone()
                    .unwrap_or_else(|| "failed under the previous leader".to_owned());
                // Its failure was reported when it happened: not given up on again.
                line.failed_s = Some(at);
                line.reason = Some(reason.clone());
                self.sched.take_over(i, Phase::Failed { reason });
            }
        }
    }

    /// Host `i`'s line of the status (its attempts, times) as of the last tick.
    pub fn line(&self, i: usize) -> Option<&HostLine> {
        self.view.hosts.get(i)
    }

    /// The status: each host's phase and the counts per phase brought up to date.
    pub fn status(&mut self) -> &RunStatus {
        let view = &mut self.view;
        view.phases.clear();
        for (line, p) in view.hosts.iter_mut().zip(self.sched.phases()) {
            line.phase = p.label();
            *view.phases.entry(line.phase).or_default() += 1;
        }
        view.capacity_bps = self.sched.params().capacity_bps;
        view.slots = self.sched.params().slots();
        &self.view
    }

    /// Ends the run as cancelled.
    pub fn cancel(&mut self) {
        self.view.state = RunState::Cancelled;
    }

    /// Whether every host has booted or failed; if so, ends the run as done with its
    /// makespan and the bound of what was achievable.
    pub fn finish(&mut self) -> bool {
        if !self.sched.done() {
            return false;
        }
        let view = &mut self.view;
        view.state = RunState::Done;
        // The bound of what was achievable: the bytes of the hosts that booted at the
        // capacity planned with last, plus the quickest reset-to-booted seen (no schedule
        // ends before its last host has booted once).
        let bytes: u64 = self
            .members
            .iter()
            .zip(self.sched.phases())
            .filter(|(_, p)| p.label() == PhaseLabel::Booted)
            .map(|(m, _)| m.spec.demand_bytes)
            .sum();
        let quickest = view
            .hosts
            .iter()
            .filter_map(|h| Some(h.booted_s? - h.reset_s?))
            .reduce(f64::min);
        view.lower_bound_s =
            quickest.map_or(0.0, |q| bytes as f64 / self.sched.params().capacity_bps + q);
        view.makespan_s = view
            .hosts
            .iter()
            .filter_map(|h| h.booted_s.or(h.failed_s))
            .reduce(f64::max);
        true
    }
}

/// Seconds from `start_ms` to `ms` (unix milliseconds both).
fn secs_since(start_ms: u64, ms: u64) -> f64 {
    ms.saturating_sub(start_ms) as f64 / 1000.0
}

/// The status of a run of `members` before its first tick: every host waiting, the bound of
/// what is achievable with `params` and the POST times `seen`.
pub fn blank_status(params: &Params, members: &[Member], seen: &PostSeen) -> RunStatus {
    let specs: Vec<HostSpec> = members.iter().map(|m| m.spec.clone()).collect();
    let post_of = |model: &str| super::longest_post(seen, model, params.post_guess_s);
    RunStatus {
        capacity_bps: params.capacity_bps,
        capacity_cap_bps: params.capacity_bps,
        per_host_bps: params.per_host_bps,
        slots: params.slots(),
        lower_bound_s: plan::lower_bound(params, &specs, post_of),
        hosts: members
            .iter()
            .map(|m| HostLine {
                name: m.spec.name.clone(),
                mac: m.mac.to_string(),
                rack: m.spec.rack.clone(),
                model: m.spec.model.clone(),
                demand_bytes: m.spec.demand_bytes,
                phase: PhaseLabel::Waiting,
                ..HostLine::default()
            })
            .collect(),
        ..RunStatus::default()
    }
}

/// Whether a host in `phase` is on its way (reset, not yet booted or given up on): what the
/// ledger says about it matters.
fn on_way(phase: &Phase) -> bool {
    !matches!(
        phase,
        Phase::Waiting { .. } | Phase::Booted { .. } | Phase::Failed { .. }
    )
}

/// When the first file that is not one of the profile's (the bootloader: iPXE by TFTP or
/// by UEFI HTTP boot) was sent at or after `from_ms`.
fn loader_at(files: &[String], events: &[ledger::Event], from_ms: u64) -> Option<u64> {
    events.iter().find_map(|e| {
        let path = e.kind.sent_path()?;
        (e.at_ms >= from_ms && !files.iter().any(|f| names(path, f))).then_some(e.at_ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redfish::{PasswordSource, TlsPolicy};

    fn ev(at_ms: u64, kind: EventKind) -> ledger::Event {
        ledger::Event {
            at_ms,
            ip: None,
            kind,
        }
    }

    // The events the other services record, as the ledger hands them back.
    fn offer(at_ms: u64) -> ledger::Event {
        ev(at_ms, EventKind::DhcpOffer)
    }

    fn renewal(at_ms: u64) -> ledger::Event {
        ev(at_ms, EventKind::DhcpAck)
    }

    fn booted(at_ms: u64) -> ledger::Event {
        ev(at_ms, EventKind::Booted)
    }

    fn http_started(at_ms: u64, path: &str) -> ledger::Event {
        let path = path.into();
        ev(at_ms, EventKind::HttpStarted { path })
    }

    fn http_sent(at_ms: u64, path: &str, bytes: u64) -> ledger::Event {
        let path = path.into();
        ev(at_ms, EventKind::HttpSent { path, bytes })
    }

    fn http_failed(at_ms: u64, path: &str, bytes: u64) -> ledger::Event {
        let path = path.into();
        ev(at_ms, EventKind::HttpFailed { path, bytes })
    }

    fn tftp_sent(at_ms: u64, file: &str) -> ledger::Event {
        let file = file.into();
        ev(at_ms, EventKind::TftpSent { file })
    }

    /// The unix ms the test runs start at.
    const T0: u64 = 1_700_000_000_000;

    /// Two slots of 250 B/s, POST 10 s, no lookahead, two attempts 5 s apart.
    fn params() -> Params {
        Params {
            capacity_bps: 500.0,
            per_host_bps: 250.0,
            post_guess_s: 10.0,
            max_bmc_ops: 100,
            max_per_rack_posting: 100,
            reset_attempts: 2,
            retry_backoff_s: 5.0,
            post_timeout_s: 600.0,
            boot_timeout_s: 600.0,
            lookahead_s: 0.0,
        }
    }

    /// Host `i`: 25 000 bytes (100 s at one host's rate) of kernel and initrd, its own BMC.
    fn member(i: u8) -> Member {
        Member {
            mac: Mac([2, 0, 0, 0, 0, i]),
            bmc: BmcConfig::new(
                &format!("http://bmc{i}.test"),
                "admin",
                PasswordSource::Env("BMC_PASSWORD".into()),
                TlsPolicy::Insecure,
            ),
            spec: HostSpec {
                name: format!("h{i}"),
                model: "m".into(),
                rack: format!("r{i}"),
                demand_bytes: 25_000,
            },
            files: vec!["vmlinuz".into(), "initrd.img".into()],
            kernel: Some("vmlinuz".into()),
        }
    }

    fn run(params: Params, hosts: u8) -> RunStep {
        let members: Vec<Member> = (0..hosts).map(member).collect();
        let mut first = blank_status(&params, &members, &PostSeen::new());
        first.started_unix_ms = T0;
        RunStep::new(params, members, PostSeen::new(), first)
    }

    fn at(s: f64) -> u64 {
        T0 + (s * 1000.0) as u64
    }

    fn tick(s: f64) -> Tick {
        Tick {
            now_ms: at(s),
            ..Tick::default()
        }
    }

    /// A tick at `s` with the ledger's events of every host the step asks about.
    fn tick_with(step: &RunStep, s: f64, events: &[(usize, Vec<ledger::Event>)]) -> Tick {
        let read = step.to_read();
        for (h, _) in events {
            assert!(
                read.iter().any(|(i, _, _)| i == h),
                "host {h} is not read at {s}: {read:?}"
            );
        }
        Tick {
            now_ms: at(s),
            events: events.to_vec(),
            ..Tick::default()
        }
    }

    fn accepted(hosts: &[usize]) -> Vec<(usize, Result<String, RedfishError>)> {
        hosts
            .iter()
            .map(|h| (*h, Ok("ForceRestart".into())))
            .collect()
    }

    fn phases(step: &mut RunStep) -> Vec<PhaseLabel> {
        step.status().hosts.iter().map(|h| h.phase).collect()
    }

    fn both_files(s: f64) -> Vec<ledger::Event> {
        vec![
            offer(at(s - 2.0)),
            tftp_sent(at(s - 1.5), "ipxe.efi"),
            http_sent(at(s - 1.0), "/vmlinuz", 1250),
            http_sent(at(s), "/initrd.img", 1250),
        ]
    }

    #[test]
    fn a_batch_is_reset_admitted_and_the_next_host_reset_when_a_slot_frees() {
        use PhaseLabel::*;
        let mut step = run(params(), 3);
        assert_eq!(
            step.advance(tick(0.0)),
            vec![RunAction::Reset(0), RunAction::Reset(1)],
            "two slots: two hosts"
        );
        let read: Vec<(usize, u64)> = step.to_read().iter().map(|(i, _, t)| (*i, *t)).collect();
        assert_eq!(read, vec![(0, T0), (1, T0)], "each since its reset");
        let acts = step.advance(Tick {
            resets: accepted(&[0, 1]),
            ..tick(1.0)
        });
        assert_eq!(
            acts,
            vec![
                RunAction::ResetAccepted {
                    host: 0,
                    reset_type: "ForceRestart".into()
                },
                RunAction::ResetAccepted {
                    host: 1,
                    reset_type: "ForceRestart".into()
                },
            ]
        );
        assert_eq!(phases(&mut step), vec![Posting, Posting, Waiting]);
        // Both come up on DHCP: both are let through, nobody else is reset yet (the third
        // would arrive long before a slot frees, at 112).
        let dhcp = [(0, vec![offer(at(11.0))]), (1, vec![offer(at(11.5))])];
        let acts = step.advance(tick_with(&step, 12.0, &dhcp));
        assert_eq!(acts, vec![RunAction::Admit(0), RunAction::Admit(1)]);
        assert_eq!(phases(&mut step), vec![Downloading, Downloading, Waiting]);
        assert_eq!(step.status().hosts[1].dhcp_s, Some(11.5));
        assert_eq!(step.status().hosts[0].admitted_s, Some(12.0));
        assert!(step.advance(tick_with(&step, 13.0, &dhcp)).is_empty());
        // Host 0 has everything: its slot frees and host 2 is reset to take it.
        let acts = step.advance(tick_with(&step, 15.0, &[(0, both_files(15.0))]));
        assert_eq!(acts, vec![RunAction::Reset(2)]);
        assert_eq!(phases(&mut step), vec![Starting, Downloading, Resetting]);
        let h0 = &step.status().hosts[0];
        assert_eq!(
            (h0.loader_s, h0.kernel_s, h0.fetched_s),
            (Some(13.5), Some(14.0), Some(15.0))
        );
        assert_eq!(h0.reset_s, Some(0.0));
        assert_eq!(h0.reset_done_s, Some(1.0));
        // Booted; then the others follow; the run ends with its makespan and bound.
        let mut done0 = both_files(15.0);
        done0.push(booted(at(20.0)));
        step.advance(tick_with(&step, 20.0, &[(0, done0)]));
        assert!(!step.finish());
        assert_eq!(step.status().count(Booted), 1);
        let mut done1 = both_files(25.0);
        done1.push(booted(at(30.0)));
        step.advance(Tick {
            resets: accepted(&[2]),
            ..tick_with(&step, 30.0, &[(1, done1)])
        });
        let mut done2 = both_files(45.0);
        done2.push(booted(at(50.0)));
        step.advance(tick_with(&step, 50.0, &[(2, done2)]));
        assert!(step.finish());
        let s = step.status();
        assert_eq!(s.state, RunState::Done);
        assert_eq!(s.count(Booted), 3);
        assert_eq!(s.makespan_s, Some(50.0));
        // 75 000 bytes at 500 B/s, plus the quickest reset-to-booted (host 0: 20 s).
        assert_eq!(s.lower_bound_s, 150.0 + 20.0);
        assert!(step.to_read().is_empty(), "nobody is on the way");
    }

    #[test]
    fn a_failed_reset_releases_the_host_is_retried_after_the_backoff_then_given_up() {
        let mut p = params();
        p.capacity_bps = 250.0;
        let mut step = run(p, 1);
        assert_eq!(step.advance(tick(0.0)), vec![RunAction::Reset(0)]);
        let refused = || RedfishError::Status {
            method: "POST".into(),
            path: "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset".into(),
            status: 503,
            message: None,
        };
        let why = "POST /redfish/v1/Systems/1/Actions/ComputerSystem.Reset: HTTP 503";
        let acts = step.advance(Tick {
            resets: vec![(0, Err(refused()))],
            ..tick(0.5)
        });
        assert_eq!(
            acts,
            vec![
                RunAction::ResetFailed {
                    host: 0,
                    why: why.into()
                },
                RunAction::Release(0),
            ]
        );
        assert!(step.to_read().is_empty(), "waiting: nothing to read");
        assert!(step.advance(tick(5.0)).is_empty(), "backoff until 5.5");
        assert_eq!(step.advance(tick(6.0)), vec![RunAction::Reset(0)]);
        assert_eq!(step.status().hosts[0].attempts, 2);
        let acts = step.advance(Tick {
            resets: vec![(0, Err(refused()))],
            ..tick(7.0)
        });
        let reason = format!("reset failed 2 times: {why}");
        assert_eq!(
            acts,
            vec![
                RunAction::ResetFailed {
                    host: 0,
                    why: why.into()
                },
                RunAction::Release(0),
                RunAction::GiveUp {
                    host: 0,
                    reason: reason.clone()
                },
            ]
        );
        assert!(step.advance(tick(8.0)).is_empty(), "given up once");
        assert!(step.finish());
        let s = step.status();
        assert_eq!(s.hosts[0].phase, PhaseLabel::Failed);
        assert_eq!(s.hosts[0].reason.as_deref(), Some(reason.as_str()));
        assert_eq!(s.hosts[0].failed_s, Some(7.0));
        assert_eq!(s.makespan_s, Some(7.0));
        assert_eq!(s.lower_bound_s, 0.0, "nothing booted");
    }

    #[test]
    fn a_host_already_on_dhcp_keeps_its_place_when_its_bmc_answers_late_with_an_error() {
        let mut step = run(params(), 1);
        step.advance(tick(0.0));
        // The BMC times out, but the host did reset: it is on DHCP already.
        step.advance(tick_with(&step, 9.0, &[(0, vec![offer(at(9.0))])]));
        assert_eq!(phases(&mut step), vec![PhaseLabel::Downloading]);
        let acts = step.advance(Tick {
            resets: vec![(
                0,
                Err(RedfishError::Timeout(std::time::Duration::from_secs(10))),
            )],
            ..tick_with(&step, 10.0, &[(0, vec![offer(at(9.0))])])
        });
        assert_eq!(
            acts,
            vec![RunAction::ResetFailed {
                host: 0,
                why: "no answer within 10s".into()
            }],
            "no release: it holds its slot"
        );
        assert_eq!(phases(&mut step), vec![PhaseLabel::Downloading]);
    }

    #[test]
    fn only_an_offer_after_the_reset_counts_as_the_boot_reaching_dhcp() {
        let mut step = run(params(), 1);
        step.advance(tick(0.0));
        step.advance(Tick {
            resets: accepted(&[0]),
            ..tick(1.0)
        });
        // A running OS renewing its lease (an ACK without an offer) is not a boot.
        step.advance(tick_with(&step, 2.0, &[(0, vec![renewal(at(2.0))])]));
        assert_eq!(phases(&mut step), vec![PhaseLabel::Posting]);
        step.advance(tick_with(
            &step,
            3.0,
            &[(0, vec![renewal(at(2.0)), offer(at(3.0))])],
        ));
        assert_eq!(phases(&mut step), vec![PhaseLabel::Downloading]);
        assert_eq!(step.status().hosts[0].dhcp_s, Some(3.0));
    }

    #[test]
    fn a_busy_fabric_that_sends_less_lowers_the_capacity_and_the_slots() {
        let mut step = run(params(), 2);
        step.advance(tick(0.0));
        step.advance(Tick {
            resets: accepted(&[0, 1]),
            ..tick(0.5)
        });
        let pulling = |s: f64| {
            (0..2)
                .map(|h| (h, vec![offer(at(1.0)), http_started(at(s), "/vmlinuz")]))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            step.advance(tick_with(&step, 1.0, &pulling(1.0))),
            vec![RunAction::Admit(0), RunAction::Admit(1)]
        );
        // Both pulling, the link gives 100 B/s of the 500 planned: after a whole window of
        // busy seconds the estimate drops to one host's share, one slot.
        for s in 2..=8 {
            let s = f64::from(s);
            step.advance(Tick {
                egress_bps: 100.0,
                ..tick_with(&step, s, &pulling(s))
            });
        }
        let status = step.status();
        assert_eq!((status.capacity_bps, status.slots), (250.0, 1));
        assert_eq!(status.capacity_cap_bps, 500.0);
    }

    #[test]
    fn an_idle_fabric_keeps_the_capacity() {
        let mut step = run(params(), 2);
        step.advance(tick(0.0));
        // Admitted but in the bootloader: nothing pulled, low egress says nothing.
        let dhcp = [(0, vec![offer(at(1.0))]), (1, vec![offer(at(1.0))])];
        for s in 1..=20 {
            step.advance(Tick {
                egress_bps: 1.0,
                ..tick_with(&step, f64::from(s), &dhcp)
            });
        }
        assert_eq!(step.status().slots, 2);
    }

    #[test]
    fn cancel_ends_the_run_as_cancelled_and_answers_for_strangers_are_ignored() {
        let mut step = run(params(), 1);
        step.advance(tick(0.0));
        assert_eq!(
            step.advance(Tick {
                resets: accepted(&[7]),
                ..tick(1.0)
            }),
            vec![],
        );
        assert_eq!(phases(&mut step), vec![PhaseLabel::Resetting]);
        step.cancel();
        assert_eq!(step.status().state, RunState::Cancelled);
        assert!(step.status().finished());
        assert!(!step.finish(), "not every host is done");
    }

    #[test]
    fn fetched_needs_every_file_after_dhcp_by_http_or_tftp() {
        let files = vec!["images/vmlinuz".to_owned(), "initrd.img".to_owned()];
        let events = vec![
            http_sent(5, "/images/vmlinuz", 100),
            http_sent(20, "/images/vmlinuz", 100),
            http_failed(30, "/initrd.img", 3),
        ];
        assert_eq!(fetched_at(&files, &events, 10), None, "initrd not sent yet");
        let mut more = events.clone();
        more.push(tftp_sent(40, "initrd.img"));
        assert_eq!(fetched_at(&files, &more, 10), Some(40));
        // A sent file from before the DHCP of this boot does not count.
        assert_eq!(fetched_at(&files, &more[..1], 10), None);
        // Prefixes under an http_base path still match; other names do not.
        let other = vec![
            http_sent(50, "/boot/images/vmlinuz", 1),
            http_sent(51, "/xinitrd.img", 1),
        ];
        assert_eq!(fetched_at(&files, &other, 0), None);
        assert_eq!(fetched_at(&[], &other, 0), None);
        // The bootloader is the first other file sent after DHCP.
        let boot = vec![
            tftp_sent(1, "ipxe.efi"),
            tftp_sent(12, "undionly.kpxe"),
            http_sent(14, "/images/vmlinuz", 100),
        ];
        assert_eq!(loader_at(&files, &boot, 10), Some(12));
        assert_eq!(loader_at(&files, &boot[2..], 10), None);
        assert_eq!(sent_at("images/vmlinuz", &boot, 10), Some(14));
    }

    /// A run taken over from a dead leader: hosts recorded reset (or maybe reset) wait for
    /// their boot and are never reset again; ended ones stay ended without being given up on
    /// a second time; untouched ones are reset as planned.
    #[test]
    fn a_run_taken_over_resets_only_the_untouched_hosts() {
        use crate::services::reboot::resume::{resume, Found, Power};
        let mut p = params();
        p.capacity_bps = 1e6;
        p.post_timeout_s = 30.0;
        let mut step = run(p, 5);
        let rec = |state, at_s: f64| HostRecord {
            state,
            fabric: "fab-a".into(),
            at_ms: at(at_s),
            attempts: 1,
            reason: (state == HostState::Failed).then(|| "no DHCP request after the reset".into()),
        };
        let records = [
            Some(rec(HostState::Reset, 0.0)),
            Some(rec(HostState::Resetting, 0.0)),
            Some(rec(HostState::Booted, 0.0)),
            Some(rec(HostState::Failed, 0.0)),
            None,
        ];
        for (i, r) in records.iter().enumerate() {
            let found = Found {
                power: Power::Unknown,
                booted_ms: None,
            };
            let d = resume(r.as_ref(), Some(found));
            step.take_over(i, r.as_ref(), &d);
        }
        use PhaseLabel::*;
        assert_eq!(
            step.advance(tick(0.0)),
            vec![RunAction::Reset(4)],
            "only the untouched host; the failed one is not given up on again"
        );
        assert_eq!(
            phases(&mut step),
            [Posting, Posting, Booted, Failed, Resetting]
        );
        let read: Vec<usize> = step.to_read().iter().map(|(i, _, _)| *i).collect();
        assert_eq!(
            read,
            [0, 1, 4],
            "the ledger is read for the hosts on their way"
        );
        // The two maybe-reset hosts never boot: they fail at the POST timeout, not reset.
        step.advance(Tick {
            resets: accepted(&[4]),
            ..tick(1.0)
        });
        let late = step.advance(tick(31.0));
        assert!(
            !late.iter().any(|a| matches!(a, RunAction::Reset(_))),
            "{late:?}"
        );
        assert_eq!(phases(&mut step)[..2], [Failed, Failed]);
    }

    /// Cluster mode: a rack is paced by its own fabric's measured egress, not by the
    /// leader's: busy and sending a tenth of the plan, the rack drops to one slot while the
    /// leader's own link (which sends what was planned) keeps its four.
    #[test]
    fn each_rack_is_paced_by_its_own_fabric() {
        let mut p = params();
        p.capacity_bps = 1000.0;
        let members: Vec<Member> = (0..4)
            .map(|i| {
                let mut m = member(i);
                m.spec.rack = "r0".into();
                m
            })
            .collect();
        let mut first = blank_status(&p, &members, &PostSeen::new());
        first.started_unix_ms = T0;
        let mut step = RunStep::new(p, members, PostSeen::new(), first).with_rack_pacing();
        let fabrics = vec![FabricRecord {
            name: "fab-r0".into(),
            rack: "r0".into(),
            version: "0".into(),
            started: 0,
            egress_bps: 100.0,
            generation: 1,
        }];
        assert_eq!(step.advance(tick(0.0)).len(), 4, "four resets, four slots");
        step.advance(Tick {
            resets: accepted(&[0, 1, 2, 3]),
            ..tick(0.5)
        });
        let pulling = |s: f64| {
            (0..4)
                .map(|h| (h, vec![offer(at(1.0)), http_started(at(s), "/vmlinuz")]))
                .collect::<Vec<_>>()
        };
        assert_eq!(step.advance(tick_with(&step, 1.0, &pulling(1.0))).len(), 4);
        for s in 2..=8 {
            let s = f64::from(s);
            step.advance(Tick {
                egress_bps: 1000.0,
                fabrics: fabrics.clone(),
                ..tick_with(&step, s, &pulling(s))
            });
        }
        assert_eq!(step.sched.rack_slots("r0"), 1, "r0's fabric sends 100 B/s");
        assert_eq!(step.status().slots, 4, "the leader's link is as planned");
    }
}
