//! The admission gate: the one authority on which hosts may download their images now. A
//! host that asks for its iPXE script while every download slot is taken is answered "ask
//! again shortly", so that waiting costs one small request every few seconds instead of
//! bandwidth taken from hosts already downloading.
//!
//! [`GateState`] is pure (time comes in as unix milliseconds, what the ledger says about a
//! host comes in as a [`Progress`]); [`Gate`] is the shared handle HTTP, the admission
//! service and the reboot runner hold, with the gate's metrics.
//!
//! Who is subject to the gate is `scheduler.gate` ([`GateMode`]): every host asking
//! (`always`), only hosts a reboot run reset (`reboot_runs`, whose scheduler admits them), or
//! nobody (`off`). Waiting hosts queue per rack, first come first served within a rack, and
//! racks take turns (round robin), so a rack with one waiter is not starved by a rack with
//! two hundred; hosts without a rack share one bucket (as racks of their own they would each
//! get a turn per round and overtake every racked host). Only inventory hosts, found by the
//! address they ask from, ever queue, so the queue is bounded by the inventory. A host the
//! fabric cannot place by its address (another DHCP server's lease, proxyDHCP without a
//! reservation) cannot queue, since anyone can claim its MAC: with `always` it goes through
//! without a slot and is counted (`bootfabric_gate_unplaced_total`), so pacing needs the
//! fabric to know each host's address. A host deleted from the inventory, or no longer
//! booting from the network (`deny`, a used `once`), loses its slot or its place at the next
//! sweep.

pub mod capacity;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::model::{
    inventory::{BootAnswer, Inventory, Mac},
    ledger::{self, EventKind, Ledger},
};

/// Seconds a held host waits before asking again, unless `scheduler.gate_retry_s` says.
pub const DEFAULT_RETRY_S: u32 = 3;

/// A waiter that has not asked for this many retry periods has given up (powered off,
/// booted elsewhere): it leaves the queue.
const WAITER_PERIODS: u64 = 4;

/// Who is subject to the gate (`scheduler.gate`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GateMode {
    /// Every inventory host asking for its script queues for a download slot.
    Always,
    /// Only hosts a reboot run reset wait, until the run's scheduler admits them.
    #[default]
    RebootRuns,
    /// Nobody waits.
    Off,
}

impl GateMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::RebootRuns => "reboot_runs",
            Self::Off => "off",
        }
    }
}

impl std::str::FromStr for GateMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "reboot_runs" => Ok(Self::RebootRuns),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "{other:?} is not one of \"always\", \"reboot_runs\", \"off\""
            )),
        }
    }
}

/// The gate's knobs (from `[scheduler]`).
#[derive(Clone, Debug, PartialEq)]
pub struct GateSettings {
    /// Who is subject to the gate.
    pub mode: GateMode,
    /// Seconds a waiting host sleeps before asking again.
    pub retry_s: u32,
    /// Download slots before the first measurement.
    pub slots: usize,
    /// Never fewer slots than this, whatever the measurement says.
    pub min_slots: usize,
    /// Milliseconds an admitted host may take to start a download before its slot is revoked.
    pub admit_idle_ms: u64,
    /// Milliseconds a slot is held at most (the boot timeout).
    pub slot_timeout_ms: u64,
}

impl Default for GateSettings {
    fn default() -> Self {
        Self {
            mode: GateMode::default(),
            retry_s: DEFAULT_RETRY_S,
            slots: 1,
            min_slots: 1,
            admit_idle_ms: 30_000,
            slot_timeout_ms: 1_800_000,
        }
    }
}

/// The gate's answer to a script request.
#[derive(Clone, Debug, PartialEq)]
pub enum Ask {
    /// Boot now: the host holds a slot, or is not subject to the gate.
    Go,
    /// Ask again in `retry_s` seconds; `position` is the host's place in its rack's queue
    /// (0 when it holds none: a reboot run admits it, or it could not queue).
    Wait {
        /// Seconds to sleep.
        retry_s: u32,
        /// Place in its rack's queue, from 1.
        position: usize,
    },
}

/// A host let through the gate: its slot is its from `at_ms`.
#[derive(Clone, Debug, PartialEq)]
pub struct Admission {
    /// The host.
    pub mac: Mac,
    /// Unix ms it was admitted.
    pub at_ms: u64,
    /// Milliseconds it waited in the queue.
    pub waited_ms: u64,
}

/// What the ledger says about an admitted host since its admission.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// A download of it began.
    pub started: bool,
    /// Every file of its profile was sent, it booted, or a download failed: the slot is free.
    pub done: bool,
}

/// Why a slot was taken back before its host was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// Admitted, but no download began within `admit_idle_s`.
    Idle,
    /// Held longer than the boot timeout.
    Timeout,
    /// Its host left the inventory or no longer boots from the network (`deny`, a used
    /// `once`): it downloads nothing more.
    NoNetboot,
}

impl Revoked {
    /// Every reason, for the metric's labels.
    pub const ALL: [Self; 3] = [Self::Idle, Self::Timeout, Self::NoNetboot];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Timeout => "timeout",
            Self::NoNetboot => "no_netboot",
        }
    }
}

#[derive(Clone, Debug)]
struct Waiter {
    mac: Mac,
    since_ms: u64,
    last_ask_ms: u64,
}

#[derive(Clone, Debug)]
struct Slot {
    since_ms: u64,
    started: bool,
}

/// The rack bucket a host queues in (`None`: hosts without a rack, together).
type Bucket = Option<String>;

/// The gate's state, pure.
#[derive(Debug)]
pub struct GateState {
    settings: GateSettings,
    slots: usize,
    queues: BTreeMap<Bucket, VecDeque<Waiter>>,
    /// Buckets with waiters, in turn order: the front one admits next.
    order: VecDeque<Bucket>,
    /// Which bucket each waiter is in.
    waiting: HashMap<Mac, Bucket>,
    admitted: HashMap<Mac, Slot>,
    /// Hosts a reboot run reset and has not let go.
    enrolled: HashSet<Mac>,
    admitted_max: usize,
    /// Admissions since the last [`GateState::take_admissions`].
    admissions: Vec<Admission>,
    /// Revocations since the last [`GateState::take_revocations`].
    revocations: Vec<(Mac, Revoked)>,
    /// Hosts let through without a slot since the last [`GateState::take_unplaced`].
    unplaced: u64,
}

impl GateState {
    /// An empty gate.
    pub fn new(settings: GateSettings) -> Self {
        let slots = settings.slots.max(settings.min_slots);
        Self {
            settings,
            slots,
            queues: BTreeMap::new(),
            order: VecDeque::new(),
            waiting: HashMap::new(),
            admitted: HashMap::new(),
            enrolled: HashSet::new(),
            admitted_max: 0,
            admissions: Vec::new(),
            revocations: Vec::new(),
            unplaced: 0,
        }
    }

    /// The gate's knobs.
    pub fn settings(&self) -> &GateSettings {
        &self.settings
    }

    /// A script request from inventory host `mac` (found by the address it asks from) in
    /// `rack`, at unix ms `now`.
    pub fn ask(&mut self, mac: Mac, rack: Option<&str>, now: u64) -> Ask {
        if self.admitted.contains_key(&mac) {
            // Idempotent: iPXE may fetch its script again.
            return Ask::Go;
        }
        match self.settings.mode {
            GateMode::Off => return Ask::Go,
            GateMode::RebootRuns if !self.enrolled.contains(&mac) => return Ask::Go,
            // The run's scheduler admits its hosts (`admit_enrolled`): wait without a place.
            GateMode::RebootRuns => return self.wait(0),
            GateMode::Always => {}
        }
        if let Some(bucket) = self.waiting.get(&mac) {
            let q = self.queues.get_mut(bucket);
            if let Some(w) = q.and_then(|q| q.iter_mut().find(|w| w.mac == mac)) {
                w.last_ask_ms = now;
            }
        } else {
            let bucket: Bucket = rack.map(str::to_owned);
            let q = self.queues.entry(bucket.clone()).or_default();
            if q.is_empty() {
                self.order.push_back(bucket.clone());
            }
            q.push_back(Waiter {
                mac,
                since_ms: now,
                last_ask_ms: now,
            });
            self.waiting.insert(mac, bucket);
        }
        self.admit_while_free(now);
        if self.admitted.contains_key(&mac) {
            return Ask::Go;
        }
        let position = self
            .waiting
            .get(&mac)
            .and_then(|b| self.queues.get(b))
            .and_then(|q| q.iter().position(|w| w.mac == mac))
            .map_or(0, |p| p + 1);
        self.wait(position)
    }

    /// What a host known only by the MAC it claims (not by its address) is told. It cannot
    /// queue: anyone could claim any MAC, and claimed MACs would take the fleet's places. A
    /// reboot run's host waits for the run to admit it (by MAC, as the run reset it). With
    /// `always` it goes through without a slot, counted: waiting for a place it can never
    /// take would hold it for ever (a host leased by another DHCP server, proxyDHCP without
    /// a reservation), and a slot taken by a claimed MAC could be anyone's.
    pub fn ask_unproven(&mut self, mac: Mac) -> Ask {
        if self.admitted.contains_key(&mac) {
            return Ask::Go;
        }
        match self.settings.mode {
            GateMode::Off => Ask::Go,
            GateMode::RebootRuns if !self.enrolled.contains(&mac) => Ask::Go,
            GateMode::RebootRuns => self.wait(0),
            GateMode::Always => {
                self.unplaced += 1;
                Ask::Go
            }
        }
    }

    fn wait(&self, position: usize) -> Ask {
        Ask::Wait {
            retry_s: self.settings.retry_s,
            position,
        }
    }

    /// Admits waiters while slots are free: the bucket at the front of the turn order gives
    /// its oldest waiter and goes to the back.
    fn admit_while_free(&mut self, now: u64) {
        while self.admitted.len() < self.slots {
            let Some(bucket) = self.order.pop_front() else {
                break;
            };
            let Some(q) = self.queues.get_mut(&bucket) else {
                continue;
            };
            let Some(w) = q.pop_front() else {
                self.queues.remove(&bucket);
                continue;
            };
            if q.is_empty() {
                self.queues.remove(&bucket);
            } else {
                self.order.push_back(bucket);
            }
            self.waiting.remove(&w.mac);
            self.take_slot(w.mac, now, now.saturating_sub(w.since_ms));
        }
    }

    fn take_slot(&mut self, mac: Mac, now: u64, waited_ms: u64) {
        let slot = Slot {
            since_ms: now,
            started: false,
        };
        self.admitted.insert(mac, slot);
        self.admitted_max = self.admitted_max.max(self.admitted.len());
        self.admissions.push(Admission {
            mac,
            at_ms: now,
            waited_ms,
        });
    }

    /// Sets the number of download slots (never under `min_slots`); more slots admit
    /// waiters at once. Fewer never pre-empt a download in progress: they fill as slots free.
    pub fn set_slots(&mut self, n: usize, now: u64) {
        self.slots = n.max(self.settings.min_slots);
        self.admit_while_free(now);
    }

    /// Takes back the slots and queue places of hosts for which `netboots` is false (deleted
    /// from the inventory, `deny`, a used `once`): they download nothing more, and would
    /// otherwise hold a slot until it went idle or timed out, or a place until they stopped
    /// asking. A run's host is let go with its slot, as when it is done.
    pub fn forget(&mut self, netboots: impl Fn(&Mac) -> bool) {
        let gone: Vec<Mac> = self
            .admitted
            .keys()
            .filter(|m| !netboots(m))
            .copied()
            .collect();
        for mac in gone {
            self.admitted.remove(&mac);
            self.enrolled.remove(&mac);
            self.revocations.push((mac, Revoked::NoNetboot));
        }
        let waiting = &mut self.waiting;
        for q in self.queues.values_mut() {
            q.retain(|w| {
                let keep = netboots(&w.mac);
                if !keep {
                    waiting.remove(&w.mac);
                }
                keep
            });
        }
        self.queues.retain(|_, q| !q.is_empty());
        let queues = &self.queues;
        self.order.retain(|b| queues.contains_key(b));
    }

    /// Frees the slots of admitted hosts that are done, revokes those idle or held too long,
    /// drops waiters that stopped asking, then admits waiters into the free slots.
    /// `progress(mac, since_ms)` is what the ledger says of `mac` since its admission.
    pub fn sweep(&mut self, now: u64, mut progress: impl FnMut(Mac, u64) -> Progress) {
        let mut freed = Vec::new();
        for (mac, slot) in &mut self.admitted {
            let p = progress(*mac, slot.since_ms);
            slot.started |= p.started;
            let held = now.saturating_sub(slot.since_ms);
            if p.done {
                freed.push((*mac, None));
            } else if !slot.started && held > self.settings.admit_idle_ms {
                freed.push((*mac, Some(Revoked::Idle)));
            } else if held > self.settings.slot_timeout_ms {
                freed.push((*mac, Some(Revoked::Timeout)));
            }
        }
        for (mac, why) in freed {
            self.admitted.remove(&mac);
            // A run's host is let go once its slot is: later asks are a new boot.
            self.enrolled.remove(&mac);
            if let Some(why) = why {
                self.revocations.push((mac, why));
            }
        }
        let patience = WAITER_PERIODS * u64::from(self.settings.retry_s) * 1000;
        let waiting = &mut self.waiting;
        for q in self.queues.values_mut() {
            q.retain(|w| {
                let keep = now.saturating_sub(w.last_ask_ms) <= patience;
                if !keep {
                    waiting.remove(&w.mac);
                }
                keep
            });
        }
        self.queues.retain(|_, q| !q.is_empty());
        let queues = &self.queues;
        self.order.retain(|b| queues.contains_key(b));
        self.admit_while_free(now);
    }

    /// A reboot run reset `mac`: it waits (mode `reboot_runs`) until the run admits it. A
    /// host reset again loses the slot of its earlier boot.
    pub fn enroll(&mut self, mac: Mac) {
        self.enrolled.insert(mac);
        self.admitted.remove(&mac);
    }

    /// The run lets go of `mac` (failed, given up, cancelled, run over): it no longer waits.
    pub fn withdraw(&mut self, mac: Mac) {
        if self.enrolled.remove(&mac) && self.settings.mode == GateMode::RebootRuns {
            self.admitted.remove(&mac);
        }
    }

    /// The run's scheduler admits `mac`. With mode `reboot_runs` the run owns admission and
    /// the host takes a slot now (counted with the others'); with `always` the gate's queue
    /// decides for every host, the run's included, and this does nothing. Returns whether
    /// the host was admitted here.
    pub fn admit_enrolled(&mut self, mac: Mac, now: u64) -> bool {
        if self.settings.mode != GateMode::RebootRuns || self.admitted.contains_key(&mac) {
            return false;
        }
        self.take_slot(mac, now, 0);
        true
    }

    /// Whether `mac` is a reboot run's host still waiting for its admission.
    pub fn holds(&self, mac: &Mac) -> bool {
        self.enrolled.contains(mac) && !self.admitted.contains_key(mac)
    }

    /// Hosts waiting in a queue.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Hosts holding a slot.
    pub fn admitted(&self) -> usize {
        self.admitted.len()
    }

    /// The admitted hosts and the unix ms each was admitted.
    pub fn admitted_since(&self) -> Vec<(Mac, u64)> {
        self.admitted
            .iter()
            .map(|(m, s)| (*m, s.since_ms))
            .collect()
    }

    /// Download slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The most hosts that ever held a slot at once.
    pub fn admitted_max(&self) -> usize {
        self.admitted_max
    }

    /// Admissions since the last call.
    pub fn take_admissions(&mut self) -> Vec<Admission> {
        std::mem::take(&mut self.admissions)
    }

    /// Revocations since the last call.
    pub fn take_revocations(&mut self) -> Vec<(Mac, Revoked)> {
        std::mem::take(&mut self.revocations)
    }

    /// Hosts let through without a slot ([`GateState::ask_unproven`]) since the last call.
    pub fn take_unplaced(&mut self) -> u64 {
        std::mem::take(&mut self.unplaced)
    }
}

/// Whether `mac` is an inventory host that boots from the network now: the hosts the gate
/// keeps slots and places for ([`GateState::forget`] drops the others).
pub fn netboots(inventory: &Inventory, mac: &Mac) -> bool {
    inventory
        .host_by_mac(mac)
        .is_some_and(|h| inventory.boot_answer(h) == BootAnswer::Boot)
}

/// What the ledger says of `mac` since `since_ms`, with the files of its profile in
/// `inventory`: the one reading the HTTP streamer and the admission service share.
pub fn progress(ledger: &Ledger, inventory: &Inventory, mac: Mac, since_ms: u64) -> Progress {
    let events = ledger.events_since(mac, since_ms);
    let files: Vec<String> = inventory
        .host_by_mac(&mac)
        .and_then(|h| inventory.profile(&h.profile))
        .map(|p| {
            p.files()
                .map(|f| f.trim_start_matches('/').to_owned())
                .collect()
        })
        .unwrap_or_default();
    let ended = events.iter().any(|e| {
        matches!(
            e.kind,
            EventKind::Booted | EventKind::HttpFailed { .. } | EventKind::TftpFailed { .. }
        )
    });
    Progress {
        started: events.iter().any(|e| {
            matches!(
                e.kind,
                EventKind::HttpStarted { .. } | EventKind::TftpSent { .. }
            )
        }),
        done: ended || ledger::fetched_at(&files, &events, since_ms).is_some(),
    }
}

/// The gate's metrics.
#[derive(Clone)]
struct GateMetrics {
    waiting: IntGauge,
    admitted: IntGauge,
    slots: IntGauge,
    admitted_max: IntGauge,
    wait: Histogram,
    revoked: IntCounterVec,
    unplaced: IntCounter,
}

impl GateMetrics {
    fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            waiting: IntGauge::new(
                "bootfabric_gate_waiting",
                "Hosts waiting at the admission gate for a download slot.",
            )?,
            admitted: IntGauge::new("bootfabric_gate_admitted", "Hosts holding a download slot.")?,
            slots: IntGauge::new("bootfabric_gate_slots", "Download slots.")?,
            admitted_max: IntGauge::new(
                "bootfabric_gate_admitted_max",
                "The most hosts that held a download slot at once since start.",
            )?,
            wait: Histogram::with_opts(
                HistogramOpts::new(
                    "bootfabric_gate_wait_seconds",
                    "Time hosts waited at the admission gate before their slot.",
                )
                .buckets(vec![
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                ]),
            )?,
            revoked: IntCounterVec::new(
                Opts::new(
                    "bootfabric_gate_revoked_total",
                    "Download slots taken back before their host was done, by reason.",
                ),
                &["reason"],
            )?,
            unplaced: IntCounter::new(
                "bootfabric_gate_unplaced_total",
                "Script requests let through the gate without a slot: gate = always, and the fabric cannot place the host by its address (another DHCP server's lease, proxyDHCP without a reservation).",
            )?,
        };
        r.register(Box::new(m.waiting.clone()))?;
        r.register(Box::new(m.admitted.clone()))?;
        r.register(Box::new(m.slots.clone()))?;
        r.register(Box::new(m.admitted_max.clone()))?;
        r.register(Box::new(m.wait.clone()))?;
        r.register(Box::new(m.revoked.clone()))?;
        r.register(Box::new(m.unplaced.clone()))?;
        for why in Revoked::ALL {
            m.revoked.with_label_values(&[why.as_str()]).inc_by(0);
        }
        Ok(m)
    }
}

/// Shared handle to the gate: every call takes the lock once, and leaves the metrics in step.
#[derive(Clone)]
pub struct Gate {
    state: Arc<Mutex<GateState>>,
    metrics: Option<GateMetrics>,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new(GateSettings::default())
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl Gate {
    /// A gate without metrics (tests, tools).
    pub fn new(settings: GateSettings) -> Self {
        Self {
            state: Arc::new(Mutex::new(GateState::new(settings))),
            metrics: None,
        }
    }

    /// A gate reporting to `registry`.
    pub fn with_metrics(
        settings: GateSettings,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let mut g = Self::new(settings);
        g.metrics = Some(GateMetrics::register(registry)?);
        g.with(|_| ());
        Ok(g)
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // A panicked holder leaves plain data behind, still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then brings the metrics up to date; returns `f`'s result and
    /// the admissions it made (the caller records them in the ledger).
    fn with<T>(&self, f: impl FnOnce(&mut GateState) -> T) -> (T, Vec<Admission>) {
        let mut s = self.lock();
        let out = f(&mut s);
        let admissions = s.take_admissions();
        let revocations = s.take_revocations();
        let unplaced = s.take_unplaced();
        if let Some(m) = &self.metrics {
            m.unplaced.inc_by(unplaced);
            m.waiting.set(s.waiting() as i64);
            m.admitted.set(s.admitted() as i64);
            m.slots.set(s.slots() as i64);
            m.admitted_max.set(s.admitted_max() as i64);
            for a in &admissions {
                // Only hosts that queued are samples: a run's admissions wait at its scheduler.
                if s.settings.mode == GateMode::Always {
                    m.wait.observe(a.waited_ms as f64 / 1000.0);
                }
            }
            for (_, why) in &revocations {
                m.revoked.with_label_values(&[why.as_str()]).inc();
            }
        }
        (out, admissions)
    }

    /// The gate's knobs.
    pub fn settings(&self) -> GateSettings {
        self.lock().settings.clone()
    }

    /// Seconds a waiting host waits before asking again.
    pub fn retry_s(&self) -> u32 {
        self.lock().settings.retry_s
    }

    /// See [`GateState::ask`]; frees the slots of hosts done (`progress`) or no longer
    /// booting (`netboots`, see [`GateState::forget`]) first, so that a freed slot goes to
    /// the next waiter as soon as anyone asks.
    pub fn ask(
        &self,
        mac: Mac,
        rack: Option<&str>,
        now: u64,
        progress: impl FnMut(Mac, u64) -> Progress,
        netboots: impl Fn(&Mac) -> bool,
    ) -> (Ask, Vec<Admission>) {
        self.with(|s| {
            if s.settings.mode == GateMode::Always {
                s.forget(netboots);
                s.sweep(now, progress);
            }
            s.ask(mac, rack, now)
        })
    }

    /// See [`GateState::ask_unproven`].
    pub fn ask_unproven(&self, mac: Mac) -> Ask {
        self.with(|s| s.ask_unproven(mac)).0
    }

    /// See [`GateState::forget`] (with `netboots`), then [`GateState::sweep`].
    pub fn sweep(
        &self,
        now: u64,
        progress: impl FnMut(Mac, u64) -> Progress,
        netboots: impl Fn(&Mac) -> bool,
    ) -> Vec<Admission> {
        self.with(|s| {
            s.forget(netboots);
            s.sweep(now, progress)
        })
        .1
    }

    /// See [`GateState::set_slots`].
    pub fn set_slots(&self, n: usize, now: u64) -> Vec<Admission> {
        self.with(|s| s.set_slots(n, now)).1
    }

    /// See [`GateState::enroll`].
    pub fn enroll(&self, mac: Mac) {
        self.with(|s| s.enroll(mac));
    }

    /// See [`GateState::withdraw`].
    pub fn withdraw(&self, mac: Mac) {
        self.with(|s| s.withdraw(mac));
    }

    /// See [`GateState::admit_enrolled`].
    pub fn admit_enrolled(&self, mac: Mac, now: u64) -> bool {
        self.with(|s| s.admit_enrolled(mac, now)).0
    }

    /// See [`GateState::holds`].
    pub fn holds(&self, mac: &Mac) -> bool {
        self.lock().holds(mac)
    }

    /// Hosts waiting in a queue.
    pub fn waiting(&self) -> usize {
        self.lock().waiting()
    }

    /// Hosts holding a slot, and slots.
    pub fn load(&self) -> (usize, usize) {
        let s = self.lock();
        (s.admitted(), s.slots())
    }
}

#[cfg(test)]
mod tests;
