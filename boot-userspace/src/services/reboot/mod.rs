//! Staggered mass reboot: which host to reset next, and when, so that the fabric stays busy
//! but never oversubscribed.
//!
//! Pure and clock-free: the caller (the live runner, or the fleet simulator in `bench/`)
//! reports events and asks for the next actions at a time it supplies.
//!
//! The model: the fabric's egress capacity `C` (measured, capped by config) divided by what
//! one booting host can take on its own, `r`, gives the number of download slots
//! `K = C / r`. A host reset now reaches DHCP after its power-on self test, whose duration
//! is learned per hardware model (starting from a configured guess); the scheduler resets a
//! host when a slot will be free by the time it arrives, using the shortest POST seen for its
//! model so that it does not arrive early. Each host's demand (the bytes its profile fetches)
//! and the shared rate give the time its slot frees. Limits on BMC operations in flight and on
//! hosts powering on per rack (inrush) apply on top. Hosts whose BMC fails are retried with
//! backoff and, after the bounded attempts, isolated: they never hold a slot.
//!
//! Racks with their own link: a run across racks, each served by its own fabric, paces each
//! rack by that fabric's capacity ([`Scheduler::set_rack_capacity`]): the rack's hosts have
//! their own slots and their own timeline of when a slot frees. Hosts of racks given no
//! capacity of their own share `capacity_bps`, as the whole run does when no rack has one.

pub mod bmc;
pub mod clock;
pub mod plan;
pub mod remote;
pub mod report;
pub mod resume;
pub mod runner;
pub mod step;

use std::collections::{HashMap, VecDeque};

pub use crate::model::gate::capacity::Capacity;
pub use report::{PhaseLabel, RunState};

use crate::config::SchedulerConfig;
pub use runner::RebootService;

/// A host to reboot.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSpec {
    /// Name (for the report).
    pub name: String,
    /// Hardware model (POST times are learned per model).
    pub model: String,
    /// Rack or power domain (inrush limit).
    pub rack: String,
    /// Bytes its profile fetches (kernel, initrd, images).
    pub demand_bytes: u64,
}

/// The scheduler's knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Egress capacity, bytes per second (measured, capped by config).
    pub capacity_bps: f64,
    /// What one host takes on its own, bytes per second.
    pub per_host_bps: f64,
    /// POST time assumed for a model never seen, seconds.
    pub post_guess_s: f64,
    /// BMC operations (resets) in flight at once.
    pub max_bmc_ops: usize,
    /// Hosts per rack powering on (between reset and DHCP) at once.
    pub max_per_rack_posting: usize,
    /// Attempts of a reset before the host is isolated.
    pub reset_attempts: u32,
    /// Seconds before retrying a failed reset (doubling per attempt).
    pub retry_backoff_s: f64,
    /// Seconds a host may spend between reset and DHCP before it counts as failed.
    pub post_timeout_s: f64,
    /// Seconds a host may spend between DHCP and booted before it counts as failed.
    pub boot_timeout_s: f64,
    /// How far ahead of need hosts are reset, seconds: they wait at the admission gate
    /// (cheap), which absorbs POST jitter so that no slot idles.
    pub lookahead_s: f64,
}

impl Params {
    /// Download slots: hosts that may fetch at once without oversubscribing.
    pub fn slots(&self) -> usize {
        self.slots_at(self.capacity_bps)
    }

    /// Download slots of a link of `capacity_bps` (a rack's own).
    pub fn slots_at(&self, capacity_bps: f64) -> usize {
        ((capacity_bps / self.per_host_bps).floor() as usize).clamp(1, 1 << 20)
    }
}

impl From<&SchedulerConfig> for Params {
    /// The knobs of `[scheduler]`; `capacity_bps` is the configured cap.
    fn from(c: &SchedulerConfig) -> Self {
        Self {
            capacity_bps: c.capacity_bps,
            per_host_bps: c.per_host_bps,
            post_guess_s: c.post_guess_s,
            max_bmc_ops: c.max_bmc_operations,
            max_per_rack_posting: c.max_posting_per_rack,
            reset_attempts: c.reset_attempts,
            retry_backoff_s: c.retry_backoff_s,
            post_timeout_s: c.post_timeout_s,
            boot_timeout_s: c.boot_timeout_s,
            lookahead_s: c.lookahead_s,
        }
    }
}

/// Where a host is.
#[derive(Clone, Debug, PartialEq)]
pub enum Phase {
    /// Not reset yet (or waiting for a retry after `not_before`).
    Waiting {
        /// Earliest time for the next reset attempt.
        not_before: f64,
    },
    /// Reset sent to its BMC, not acknowledged yet.
    Resetting {
        /// When it was sent.
        since: f64,
    },
    /// Reset done, in POST.
    Posting {
        /// When the reset completed.
        since: f64,
    },
    /// Seen on DHCP, waiting at the fabric's admission gate for a download slot.
    Queued {
        /// When DHCP was seen.
        since: f64,
    },
    /// Admitted: fetching its boot files.
    Downloading {
        /// When DHCP was seen.
        since: f64,
        /// When its slot is predicted to free.
        predicted_end: f64,
    },
    /// Fetched its files (its slot is free), starting its OS.
    Starting {
        /// When the last file was sent.
        since: f64,
    },
    /// Booted.
    Booted {
        /// When.
        at: f64,
    },
    /// Given up on.
    Failed {
        /// Why.
        reason: String,
    },
}

impl Phase {
    /// Metric and report label.
    pub fn label(&self) -> PhaseLabel {
        match self {
            Self::Waiting { .. } => PhaseLabel::Waiting,
            Self::Resetting { .. } => PhaseLabel::Resetting,
            Self::Posting { .. } => PhaseLabel::Posting,
            Self::Queued { .. } => PhaseLabel::Queued,
            Self::Downloading { .. } => PhaseLabel::Downloading,
            Self::Starting { .. } => PhaseLabel::Starting,
            Self::Booted { .. } => PhaseLabel::Booted,
            Self::Failed { .. } => PhaseLabel::Failed,
        }
    }
}

/// POST durations seen per hardware model: (shortest, longest, how many), seconds.
pub type PostSeen = HashMap<String, (f64, f64, u32)>;

/// The longest POST seen for `model`, else `guess`: what plans are made with.
pub fn longest_post(seen: &PostSeen, model: &str, guess: f64) -> f64 {
    seen.get(model).map_or(guess, |(_, max, _)| *max)
}

/// Something that happened to a host, reported by the runner.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The BMC accepted the reset.
    ResetDone,
    /// The BMC refused or did not answer.
    ResetFailed(String),
    /// The host asked DHCP.
    DhcpSeen,
    /// The host has fetched everything its profile needs (the ledger's last `http_sent`).
    Fetched,
    /// The host reported `booted`.
    Booted,
}

/// What the runner should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set the boot override and reset this host (index into the host list).
    Reset(usize),
}

/// The scheduler's state.
#[derive(Debug)]
pub struct Scheduler {
    params: Params,
    hosts: Vec<HostSpec>,
    phases: Vec<Phase>,
    attempts: Vec<u32>,
    queue: VecDeque<usize>,
    /// Shortest and longest POST seen per model, and how many were seen.
    post: PostSeen,
    /// Hosts at the admission gate, in arrival order.
    gate: VecDeque<usize>,
    /// Each host's link: 0 is the shared one (`params.capacity_bps`), `k` the rack link
    /// `rack_links[k - 1]`.
    link_of: Vec<usize>,
    /// Racks paced by their own link: the rack and its capacity, bytes per second.
    rack_links: Vec<(String, f64)>,
}

impl Scheduler {
    /// Plans the reboot of `hosts`, in the given order.
    pub fn new(params: Params, hosts: Vec<HostSpec>) -> Self {
        let n = hosts.len();
        Self {
            params,
            phases: vec![Phase::Waiting { not_before: 0.0 }; n],
            attempts: vec![0; n],
            queue: (0..n).collect(),
            hosts,
            post: HashMap::new(),
            gate: VecDeque::new(),
            link_of: vec![0; n],
            rack_links: Vec::new(),
        }
    }

    /// Starts from POST times learned before (by earlier runs).
    pub fn with_post_seen(mut self, seen: PostSeen) -> Self {
        self.post = seen;
        self
    }

    /// POST times seen so far, per model (earlier runs' included).
    pub fn post_seen(&self) -> &PostSeen {
        &self.post
    }

    /// The parameters in force (capacity as last set).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The hosts.
    pub fn hosts(&self) -> &[HostSpec] {
        &self.hosts
    }

    /// Each host's phase.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// Whether every host has booted or failed.
    pub fn done(&self) -> bool {
        self.phases
            .iter()
            .all(|p| matches!(p, Phase::Booted { .. } | Phase::Failed { .. }))
    }

    /// The longest POST to plan with for `model`: the longest seen, else the guess. Planning
    /// with the longest makes hosts arrive early rather than late: early ones wait at the
    /// gate (cheap), late ones would leave a slot idle.
    pub fn post_estimate(&self, model: &str) -> f64 {
        longest_post(&self.post, model, self.params.post_guess_s)
    }

    /// Admits hosts waiting at the gate while download slots are free, oldest first, each
    /// into a slot of its own link (a host whose rack's link is full waits, and does not
    /// hold up hosts of other racks behind it). The runner lets exactly these start fetching
    /// (the live fabric answers a waiting host's script request with "ask again shortly").
    pub fn admit(&mut self, now: f64) -> Vec<usize> {
        let mut downloading = vec![0usize; self.rack_links.len() + 1];
        for (i, p) in self.phases.iter().enumerate() {
            if matches!(p, Phase::Downloading { .. }) {
                downloading[self.link_of[i]] += 1;
            }
        }
        let slots = self.link_slots();
        let mut open = downloading
            .iter()
            .zip(&slots)
            .filter(|(d, s)| d < s)
            .count();
        let mut out = Vec::new();
        let mut held = VecDeque::new();
        while open > 0 {
            let Some(h) = self.gate.pop_front() else {
                break;
            };
            if !matches!(self.phases[h], Phase::Queued { .. }) {
                continue;
            }
            let link = self.link_of[h];
            if downloading[link] >= slots[link] {
                held.push_back(h);
                continue;
            }
            self.phases[h] = Phase::Downloading {
                since: now,
                predicted_end: now + self.download_time(h),
            };
            downloading[link] += 1;
            if downloading[link] == slots[link] {
                open -= 1;
            }
            out.push(h);
        }
        // The held hosts keep their places, ahead of those not looked at.
        while let Some(h) = held.pop_back() {
            self.gate.push_front(h);
        }
        out
    }

    /// Updates the capacity (the runner feeds the measured egress, capped by config).
    pub fn set_capacity(&mut self, bps: f64) {
        if bps > 0.0 {
            self.params.capacity_bps = bps;
        }
    }

    /// Paces the hosts of `rack` by a link of their own, of `bps` bytes per second (its
    /// fabric's measured egress, capped by that fabric's configuration); called again, it
    /// updates that capacity. A rack with no host in the run is ignored.
    pub fn set_rack_capacity(&mut self, rack: &str, bps: f64) {
        if !(bps > 0.0 && bps.is_finite()) {
            return;
        }
        if let Some(k) = self.rack_links.iter().position(|(r, _)| r == rack) {
            self.rack_links[k].1 = bps;
            return;
        }
        let members: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].rack == rack)
            .collect();
        if members.is_empty() {
            return;
        }
        self.rack_links.push((rack.to_owned(), bps));
        let link = self.rack_links.len();
        for i in members {
            self.link_of[i] = link;
        }
    }

    /// The download slots `rack` is paced by: its own link's if it has one, else the
    /// shared link's.
    pub fn rack_slots(&self, rack: &str) -> usize {
        self.rack_links
            .iter()
            .find(|(r, _)| r == rack)
            .map_or(self.params.slots(), |(_, bps)| self.params.slots_at(*bps))
    }

    /// Orders the reset queue by how long each link still has to carry the hosts waiting for
    /// it, longest first (inventory order within a link): across racks, the rack that bounds
    /// the run starts first, and the BMC operations, shared by every rack, go where they
    /// shorten the run rather than to a fast rack that finishes early whatever happens.
    fn critical_first(&mut self) {
        let capacity: Vec<f64> = std::iter::once(self.params.capacity_bps)
            .chain(self.rack_links.iter().map(|(_, bps)| *bps))
            .collect();
        let mut left = vec![0.0; capacity.len()];
        for &h in &self.queue {
            left[self.link_of[h]] += self.hosts[h].demand_bytes as f64 / capacity[self.link_of[h]];
        }
        let mut queue: Vec<usize> = self.queue.drain(..).collect();
        // Stable: ties keep the inventory order.
        queue.sort_by(|a, b| left[self.link_of[*b]].total_cmp(&left[self.link_of[*a]]));
        self.queue = queue.into();
    }

    /// Slots per link: the shared one first, then each rack link.
    fn link_slots(&self) -> Vec<usize> {
        std::iter::once(self.params.slots())
            .chain(
                self.rack_links
                    .iter()
                    .map(|(_, bps)| self.params.slots_at(*bps)),
            )
            .collect()
    }

    fn download_time(&self, host: usize) -> f64 {
        self.hosts[host].demand_bytes as f64 / self.params.per_host_bps
    }

    /// Records `event` for `host` at `now`.
    pub fn on_event(&mut self, now: f64, host: usize, event: Event) {
        let Some(phase) = self.phases.get(host).cloned() else {
            return;
        };
        match (phase, event) {
            (Phase::Resetting { .. }, Event::ResetDone) => {
                self.phases[host] = Phase::Posting { since: now };
            }
            (Phase::Resetting { .. }, Event::ResetFailed(why)) => {
                self.attempts[host] += 1;
                if self.attempts[host] >= self.params.reset_attempts {
                    self.phases[host] = Phase::Failed {
                        reason: format!("reset failed {} times: {why}", self.attempts[host]),
                    };
                } else {
                    let wait = self.params.retry_backoff_s
                        * f64::from(1u32 << (self.attempts[host] - 1).min(6));
                    self.phases[host] = Phase::Waiting {
                        not_before: now + wait,
                    };
                    self.queue.push_back(host);
                }
            }
            (Phase::Posting { since } | Phase::Resetting { since }, Event::DhcpSeen) => {
                let took = now - since;
                let e = self
                    .post
                    .entry(self.hosts[host].model.clone())
                    .or_insert((took, took, 0));
                e.0 = e.0.min(took);
                e.1 = e.1.max(took);
                e.2 += 1;
                self.phases[host] = Phase::Queued { since: now };
                self.gate.push_back(host);
            }
            (Phase::Downloading { .. }, Event::Fetched) => {
                self.phases[host] = Phase::Starting { since: now };
            }
            (
                Phase::Downloading { .. }
                | Phase::Starting { .. }
                | Phase::Queued { .. }
                | Phase::Posting { .. },
                Event::Booted,
            ) => {
                self.phases[host] = Phase::Booted { at: now };
            }
            _ => {}
        }
    }

    /// Puts `host` where a run taken over from another leader left it (its records in etcd
    /// say it was reset, or ended): it is not reset again from here, and no longer waits in
    /// the reset queue.
    pub fn take_over(&mut self, host: usize, phase: Phase) {
        if let Some(p) = self.phases.get_mut(host) {
            *p = phase;
        }
    }

    /// Fails `host` for `reason` unless it has ended (booted or failed): the run waits for
    /// it no more (a host removed from the inventory mid-run). Its place in the reset queue
    /// and at the gate is skipped, as any failed host's.
    pub fn fail(&mut self, host: usize, reason: &str) {
        if let Some(p) = self.phases.get_mut(host) {
            if !matches!(p, Phase::Booted { .. } | Phase::Failed { .. }) {
                *p = Phase::Failed {
                    reason: reason.to_owned(),
                };
            }
        }
    }

    /// Times out hosts stuck in POST or boot: they fail (isolated; their slot frees).
    fn expire(&mut self, now: f64) {
        for p in self.phases.iter_mut() {
            let reason = match p {
                Phase::Posting { since } if now - *since > self.params.post_timeout_s => {
                    "no DHCP request after the reset"
                }
                Phase::Downloading { since, .. } | Phase::Starting { since }
                    if now - *since > self.params.boot_timeout_s =>
                {
                    "did not report booted"
                }
                _ => continue,
            };
            *p = Phase::Failed {
                reason: reason.to_owned(),
            };
        }
    }

    /// The resets to issue at `now`: a host is reset when, arriving after its model's
    /// longest POST, it would be needed to keep every download slot busy (the slots' planned
    /// timeline says when one frees for it); hosts that arrive earlier wait at the gate.
    pub fn next_actions(&mut self, now: f64) -> Vec<Action> {
        self.expire(now);
        if !self.rack_links.is_empty() {
            self.critical_first();
        }
        let slots = self.link_slots();
        let mut resetting = 0;
        let mut posting_per_rack: HashMap<&str, usize> = HashMap::new();
        // Per link, when each slot frees: the downloaders' predicted ends, then every host on
        // its way takes the earliest free slot of its link once it has arrived, in arrival
        // order.
        let mut free: Vec<Vec<f64>> = slots.iter().map(|s| Vec::with_capacity(*s)).collect();
        // (arrival, download time) per link.
        let mut coming: Vec<Vec<(f64, f64)>> = vec![Vec::new(); slots.len()];
        for (i, p) in self.phases.iter().enumerate() {
            let dl = self.download_time(i);
            let link = self.link_of[i];
            match p {
                Phase::Resetting { since } | Phase::Posting { since } => {
                    if matches!(p, Phase::Resetting { .. }) {
                        resetting += 1;
                    }
                    *posting_per_rack.entry(&self.hosts[i].rack).or_default() += 1;
                    let arrive = (since + self.post_estimate(&self.hosts[i].model)).max(now);
                    coming[link].push((arrive, dl));
                }
                Phase::Queued { .. } => coming[link].push((now, dl)),
                Phase::Downloading { predicted_end, .. } => {
                    free[link].push(predicted_end.max(now));
                }
                _ => {}
            }
        }
        for (link, free) in free.iter_mut().enumerate() {
            free.resize(slots[link].max(free.len()), now);
        }
        let take = |free: &mut Vec<f64>, arrive: f64, dl: f64| {
            // The earliest-free slot serves the next arrival.
            let (idx, _) = free
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(b.1))
                .unwrap_or((0, &now));
            if let Some(slot) = free.get_mut(idx) {
                let start = slot.max(arrive);
                *slot = start + dl;
            }
        };
        for (link, coming) in coming.iter_mut().enumerate() {
            coming.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (arrive, dl) in coming.iter() {
                take(&mut free[link], *arrive, *dl);
            }
        }
        let mut actions = Vec::new();
        let mut skipped = VecDeque::new();
        while let Some(host) = self.queue.pop_front() {
            if resetting >= self.params.max_bmc_ops {
                skipped.push_back(host);
                break;
            }
            let Phase::Waiting { not_before } = self.phases[host] else {
                continue;
            };
            let rack = self.hosts[host].rack.as_str();
            if not_before > now
                || posting_per_rack.get(rack).copied().unwrap_or(0)
                    >= self.params.max_per_rack_posting
            {
                skipped.push_back(host);
                continue;
            }
            let link = self.link_of[host];
            let next_free = free[link].iter().copied().fold(f64::INFINITY, f64::min);
            let arrive = now + self.post_estimate(&self.hosts[host].model);
            if arrive + self.params.lookahead_s < next_free {
                // It would arrive before a slot frees for it: not yet. A host of a model with
                // a longer POST further down the queue may be due, so keep looking.
                skipped.push_back(host);
                continue;
            }
            self.phases[host] = Phase::Resetting { since: now };
            resetting += 1;
            *posting_per_rack.entry(rack).or_default() += 1;
            take(&mut free[link], arrive, self.download_time(host));
            actions.push(Action::Reset(host));
        }
        // Keep the original order for the hosts not started.
        while let Some(h) = skipped.pop_back() {
            self.queue.push_front(h);
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four slots of 250 B/s, POST 10 s, no lookahead: small numbers to reason with.
    pub(crate) fn params() -> Params {
        Params {
            capacity_bps: 1000.0,
            per_host_bps: 250.0,
            post_guess_s: 10.0,
            max_bmc_ops: 100,
            max_per_rack_posting: 100,
            reset_attempts: 3,
            retry_backoff_s: 5.0,
            post_timeout_s: 600.0,
            boot_timeout_s: 600.0,
            lookahead_s: 0.0,
        }
    }

    fn hosts(n: usize) -> Vec<HostSpec> {
        (0..n)
            .map(|i| HostSpec {
                name: format!("h{i}"),
                model: "m".into(),
                rack: format!("r{}", i % 2),
                demand_bytes: 2500,
            })
            .collect()
    }

    fn scheduler_section(text: &str) -> SchedulerConfig {
        let wire = toml::from_str(text).expect("toml");
        crate::config::Config::from_wire(
            std::path::Path::new("test.toml"),
            wire,
            crate::model::inventory::Inventory::default(),
        )
        .expect("config")
        .scheduler
    }

    #[test]
    fn scheduler_config_makes_the_params() {
        let p = Params::from(&scheduler_section(""));
        assert_eq!(p.capacity_bps, 10_000.0 * 1e6 / 8.0);
        assert_eq!(p.slots(), 10);
        assert_eq!(p.lookahead_s, 120.0);
        let p = Params::from(&scheduler_section(
            "[scheduler]\ncapacity_mbps = 25000\nper_host_mbps = 2500\nlookahead_s = 0\n\
             max_bmc_operations = 2\nmax_posting_per_rack = 3\nreset_attempts = 4\n\
             retry_backoff_s = 5\npost_guess_s = 6\npost_timeout_s = 7\nboot_timeout_s = 8\n",
        ));
        assert_eq!(p.slots(), 10);
        assert_eq!(
            p,
            Params {
                capacity_bps: 25_000.0 * 1e6 / 8.0,
                per_host_bps: 2_500.0 * 1e6 / 8.0,
                post_guess_s: 6.0,
                max_bmc_ops: 2,
                max_per_rack_posting: 3,
                reset_attempts: 4,
                retry_backoff_s: 5.0,
                post_timeout_s: 7.0,
                boot_timeout_s: 8.0,
                lookahead_s: 0.0,
            }
        );
    }

    #[test]
    fn it_starts_as_many_hosts_as_there_are_slots_then_waits_for_one_to_free() {
        let mut s = Scheduler::new(params(), hosts(10));
        let first = s.next_actions(0.0);
        assert_eq!(first.len(), 4, "1000 / 250 = 4 slots");
        assert!(s.next_actions(1.0).is_empty(), "all slots are spoken for");
        for Action::Reset(h) in &first {
            s.on_event(1.0, *h, Event::ResetDone);
        }
        // They arrive at 11 (POST 10 s) and hold their slots until 21: a host reset at 10.5
        // would arrive at 20.5, while every slot is still busy.
        assert!(s.next_actions(10.5).is_empty());
        for Action::Reset(h) in &first {
            s.on_event(11.0, *h, Event::DhcpSeen);
        }
        assert_eq!(s.admit(11.0).len(), 4, "the gate admits one per slot");
        // Now reset at 11 arrives at 21, just as the slots free.
        assert_eq!(s.next_actions(11.0).len(), 4);
        assert!(s.admit(11.5).is_empty(), "no slot is free before 21");
    }

    #[test]
    fn failing_bmcs_are_retried_with_backoff_then_isolated() {
        let mut p = params();
        p.capacity_bps = 250.0;
        let mut s = Scheduler::new(p, hosts(2));
        assert_eq!(s.next_actions(0.0), vec![Action::Reset(0)]);
        s.on_event(0.5, 0, Event::ResetFailed("HTTP 503".into()));
        // Retried no sooner than the backoff; meanwhile the other host takes the slot.
        assert_eq!(s.next_actions(1.0), vec![Action::Reset(1)]);
        s.on_event(1.5, 1, Event::ResetDone);
        s.on_event(11.5, 1, Event::DhcpSeen);
        assert_eq!(s.admit(11.5), vec![1]);
        s.on_event(21.5, 1, Event::Booted);
        assert_eq!(s.next_actions(21.5), vec![Action::Reset(0)]);
        s.on_event(22.0, 0, Event::ResetFailed("timeout".into()));
        assert!(s.next_actions(22.0).is_empty(), "backoff");
        assert_eq!(s.next_actions(40.0), vec![Action::Reset(0)]);
        s.on_event(40.5, 0, Event::ResetFailed("timeout".into()));
        assert!(matches!(s.phases()[0], Phase::Failed { .. }));
        assert!(s.done());
    }

    #[test]
    fn inrush_and_bmc_limits_hold() {
        let mut p = params();
        p.capacity_bps = 1e9;
        p.max_per_rack_posting = 2;
        p.max_bmc_ops = 3;
        let mut s = Scheduler::new(p, hosts(10));
        let a = s.next_actions(0.0);
        assert_eq!(a.len(), 3, "three BMC operations at once");
        for Action::Reset(h) in &a {
            s.on_event(0.1, *h, Event::ResetDone);
        }
        // Racks r0 and r1 now have 2 and 1 hosts in POST: one more fits, in r1.
        let b = s.next_actions(0.2);
        assert_eq!(b.len(), 1);
        let Action::Reset(h) = b[0];
        assert_eq!(s.hosts()[h].rack, "r1");
    }

    /// Hosts `0..n` alternate between racks r0 and r1 (see `hosts`).
    fn rack_of(s: &Scheduler, actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|Action::Reset(h)| s.hosts()[*h].rack.clone())
            .collect()
    }

    #[test]
    fn racks_with_their_own_links_are_paced_by_their_own_slots() {
        let mut s = Scheduler::new(params(), hosts(20));
        // r0's fabric carries 3 hosts at once, r1's only 1; the shared 4 slots pace nobody.
        s.set_rack_capacity("r0", 750.0);
        s.set_rack_capacity("r1", 250.0);
        assert_eq!((s.rack_slots("r0"), s.rack_slots("r1")), (3, 1));
        assert_eq!(s.rack_slots("elsewhere"), 4, "a rack without a link shares");
        let first = s.next_actions(0.0);
        let mut racks = rack_of(&s, &first);
        racks.sort();
        assert_eq!(racks, ["r0", "r0", "r0", "r1"], "one per slot of each rack");
        assert!(
            s.next_actions(1.0).is_empty(),
            "every slot of both is spoken for"
        );
        for Action::Reset(h) in &first {
            s.on_event(1.0, *h, Event::ResetDone);
            s.on_event(11.0, *h, Event::DhcpSeen);
        }
        assert_eq!(s.admit(11.0).len(), 4);
        // r1's host holds its slot until 21; r0's theirs until 21 too: a reset at 11 arrives
        // at 21, so three more of r0 and one of r1.
        let next = s.next_actions(11.0);
        let mut racks = rack_of(&s, &next);
        racks.sort();
        assert_eq!(racks, ["r0", "r0", "r0", "r1"]);
    }

    #[test]
    fn across_racks_the_rack_with_the_most_time_left_on_its_link_is_reset_first() {
        let mut p = params();
        p.max_bmc_ops = 1;
        let mut s = Scheduler::new(p, hosts(6));
        // Equal bytes, but r1's link is four times slower: r1 bounds the run.
        s.set_rack_capacity("r0", 1000.0);
        s.set_rack_capacity("r1", 250.0);
        let first = s.next_actions(0.0);
        assert_eq!(rack_of(&s, &first), ["r1"]);
        // The one BMC operation is busy until the reset is acknowledged.
        assert!(s.next_actions(0.5).is_empty());
        s.on_event(1.0, 1, Event::ResetDone);
        // r1 still has the most time left (2 hosts at 10 s each, r0 3 at 2.5 s), but its
        // next host would arrive at 11 while its one slot is busy until 21: r0's first goes.
        assert_eq!(s.next_actions(1.0), vec![Action::Reset(0)]);
        // Without links of their own, the inventory order holds.
        let mut shared = Scheduler::new(params(), hosts(6));
        assert_eq!(
            shared.next_actions(0.0),
            vec![
                Action::Reset(0),
                Action::Reset(1),
                Action::Reset(2),
                Action::Reset(3)
            ]
        );
    }

    #[test]
    fn a_host_of_a_full_rack_does_not_hold_up_another_racks_host_at_the_gate() {
        let mut p = params();
        p.post_guess_s = 0.0;
        let mut s = Scheduler::new(p, hosts(4));
        s.set_rack_capacity("r0", 250.0);
        s.set_rack_capacity("r1", 250.0);
        // Hosts 0 and 2 (r0) and 1 (r1) reach DHCP in that order; r0 has one slot.
        for h in [0, 2, 1] {
            s.phases[h] = Phase::Posting { since: 0.0 };
            s.on_event(1.0, h, Event::DhcpSeen);
        }
        assert_eq!(s.admit(1.0), vec![0, 1], "2 waits for r0; 1 goes to r1");
        assert!(matches!(s.phases()[2], Phase::Queued { .. }));
        s.on_event(5.0, 0, Event::Fetched);
        assert_eq!(s.admit(5.0), vec![2], "r0's slot is free again");
    }

    #[test]
    fn a_rack_capacity_updates_and_strangers_or_nonsense_are_ignored() {
        let mut s = Scheduler::new(params(), hosts(4));
        s.set_rack_capacity("r9", 250.0);
        s.set_rack_capacity("r0", f64::NAN);
        s.set_rack_capacity("r1", 0.0);
        assert_eq!(s.link_slots(), vec![4], "no rack has a link of its own");
        s.set_rack_capacity("r0", 250.0);
        s.set_rack_capacity("r0", 500.0);
        assert_eq!(s.link_slots(), vec![4, 2], "updated, not added twice");
        assert_eq!(s.rack_slots("r0"), 2);
        // r1 still shares: the shared link's capacity changes only its slots.
        s.set_capacity(250.0);
        assert_eq!((s.rack_slots("r0"), s.rack_slots("r1")), (2, 1));
    }

    #[test]
    fn a_mixed_run_paces_the_rack_with_its_link_and_the_rest_on_the_shared_link() {
        let mut p = params();
        p.capacity_bps = 250.0;
        let mut s = Scheduler::new(p, hosts(6));
        // r1 has a fabric of its own with two slots; r0 shares the single shared slot.
        s.set_rack_capacity("r1", 500.0);
        let first = s.next_actions(0.0);
        let mut racks = rack_of(&s, &first);
        racks.sort();
        assert_eq!(racks, ["r0", "r1", "r1"]);
    }

    #[test]
    fn hosts_stuck_in_post_fail_and_free_their_slot() {
        let mut p = params();
        p.capacity_bps = 250.0;
        p.post_timeout_s = 30.0;
        let mut s = Scheduler::new(p, hosts(2));
        assert_eq!(s.next_actions(0.0), vec![Action::Reset(0)]);
        s.on_event(0.5, 0, Event::ResetDone);
        // Expected at DHCP at 10.5 and done at 20.5: a host reset at 5 would arrive at 15.
        assert!(s.next_actions(5.0).is_empty());
        assert!(matches!(s.phases()[0], Phase::Posting { .. }));
        assert_eq!(s.next_actions(31.0), vec![Action::Reset(1)]);
        assert!(matches!(s.phases()[0], Phase::Failed { .. }));
    }
}
