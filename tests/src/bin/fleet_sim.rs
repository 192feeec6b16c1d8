//! Fleet simulator: the real scheduler (`bootfabric::services::reboot`) against a model of the
//! fabric, next to "reboot all at once" and a sweep of fixed-batch strategies an operator
//! could run without the fabric's help, for 1,000 and 10,000 hosts. Prints makespan, its
//! ratio to the lower bound (total bytes / capacity + the shortest boot), the peak demand over
//! capacity, and how many of the hosts that can boot did; with `--table PATH`, also writes
//! the same rows as a markdown table (what docs/benchmarks.md quotes).
//!
//! The model, stepped every 0.25 s:
//! - one egress link of `C` bytes/s, shared fairly by the hosts downloading; each takes at
//!   most its NIC's rate, after a TCP slow start from 14 KiB per 1 ms round trip;
//! - a reset takes 2 s at the BMC; 2% of BMCs never answer, 3% fail the first attempt;
//! - POST lasts 90, 150 or 240 s by hardware model, ±15%;
//! - each host fetches its profile's bytes (80 MB, 400 MB or 1.2 GB) and then boots for 20 s;
//! - firmware gives up a download that has not finished after 300 s and reboots (POST again),
//!   as PXE/iPXE retries do; the demand of a host is what its NIC could take;
//! - with the scheduler, a host that reached DHCP waits at the fabric's admission gate until
//!   the scheduler admits it to a download slot (the live fabric answers its script request
//!   with "ask again shortly"); the other strategies have no gate.
//!
//! Fixed-batch strategies, each swept over batch sizes N on a geometric grid (N = slots × 2^k
//! below the fleet size, then N × 2^±½ around the best, so the best is known within a factor
//! √2), the best of each sweep picked with hindsight (shortest makespan among the runs that
//! booted every bootable host):
//! - rolling batch of N: at most N hosts between reset and booted, the next reset as soon as
//!   one boots (Ironic's concurrency limit);
//! - waves of N: N hosts reset together, the next wave once every host of this one has
//!   finished its download (the link is free again; the wave's boots overlap the next POST);
//! - N every P s: N more hosts reset every `SIM_TIMER_PERIOD` seconds, whatever happened.
//!
//! Every baseline retries a failed reset like the scheduler does (3 attempts, 10 s apart),
//! then gives the host up. Every run stops at 6× the lower bound ("stopped").
//!
//! The racks model (`--racks R [--per-rack H]`, H = 100 by default): R racks of H hosts, each
//! rack served by its own fabric over its own link (1, 2, 5 or 10 Gbit/s, drawn per rack) with
//! its own mix of models and profiles (weights drawn per rack); the inrush limit is half a
//! rack. The lower bound is the slowest rack's (its bytes over its link plus the shortest
//! boot), the peak is the highest demand over capacity of any rack's link. The scheduler runs
//! pacing each rack by its own link (known), by its fabric's measured egress (the live
//! runner's `Capacity` estimate, from a 10 Gbit/s cap), and as one pool of the links' total
//! (what it did before racks had links); next to all at once.
//!
//! Usage: fleet-sim [--table PATH] [HOSTS...]   (default: 1000 10000)
//!        fleet-sim [--table PATH] --racks R [--per-rack H]
//! Knobs: SIM_LOOKAHEAD (seconds the scheduler resets hosts ahead of need; default 120),
//! SIM_TIMER_PERIOD (seconds between the timer strategy's batches; default 60).

use std::fmt::Write as _;
use std::time::Instant;

use std::collections::{HashMap, VecDeque};

use bootfabric::model::ledger::EGRESS_WINDOW_S;
use bootfabric::services::reboot::{Action, Capacity, Event, HostSpec, Params, Phase, Scheduler};
use bootfabric_lab::Rng;

const DT: f64 = 0.25;
const CAPACITY: f64 = 1.25e9; // 10 Gbit/s
const NIC: f64 = 1.25e8; // 1 Gbit/s per host
const RTT: f64 = 0.001;
const INIT_WINDOW: f64 = 14_600.0;
const RESET_LATENCY: f64 = 2.0;
const BOOT_AFTER_DOWNLOAD: f64 = 20.0;
const DOWNLOAD_GIVE_UP: f64 = 300.0;
/// Reset attempts and the wait between them: the scheduler's (`params`) and the baselines'.
const RESET_ATTEMPTS: u32 = 3;
const RETRY_BACKOFF: f64 = 10.0;
/// Every run stops at this multiple of the lower bound.
const STOP_AT: f64 = 6.0;
const MODELS: [(&str, f64); 3] = [("r650", 90.0), ("dl380", 150.0), ("sr650", 240.0)];
const PROFILES: [u64; 3] = [80_000_000, 400_000_000, 1_200_000_000];
/// The racks model: each rack's fabric egress, Gbit/s, one drawn per rack.
const RACK_LINKS_GBPS: [f64; 4] = [1.0, 2.0, 5.0, 10.0];
/// The racks model: what every rack's fabric is configured with (`scheduler.capacity_mbps`,
/// the default) when it paces by its measured egress.
const RACK_CAP: f64 = 1.25e9;

#[derive(Clone)]
struct Machine {
    spec: HostSpec,
    /// The link it downloads over (an index into [`Links`]).
    link: usize,
    post_mean: f64,
    /// The BMC never answers.
    dead_bmc: bool,
    /// The BMC fails the first reset.
    flaky_bmc: bool,
}

impl Machine {
    /// Whether the reset numbered `attempt` (from 1) reaches the host.
    fn reset_works(&self, attempt: u32) -> bool {
        !(self.dead_bmc || (self.flaky_bmc && attempt == 1))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Idle,
    Resetting {
        until: f64,
        ok: bool,
    },
    Post {
        until: f64,
    },
    /// At the fabric's admission gate (scheduler only): asked DHCP, waiting for a slot.
    Gate,
    Downloading {
        left: f64,
        since: f64,
    },
    Booting {
        until: f64,
    },
    Booted {
        at: f64,
    },
    /// A baseline gave up on the host after `RESET_ATTEMPTS` failed resets.
    GivenUp,
}

fn fleet(n: usize, seed: u64) -> Vec<Machine> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let (model, post) = MODELS[(rng.next_u64() % 3) as usize];
            let demand = PROFILES[(rng.next_u64() % 3) as usize];
            let r = rng.unit();
            Machine {
                spec: HostSpec {
                    name: format!("node{i:05}"),
                    model: model.to_owned(),
                    rack: format!("rack{:03}", i / 40),
                    demand_bytes: demand,
                },
                link: 0,
                post_mean: post,
                dead_bmc: r < 0.02,
                flaky_bmc: (0.02..0.05).contains(&r),
            }
        })
        .collect()
}

/// The links hosts download over: one per rack (its fabric's egress) in the racks model, one
/// for the whole fleet in the one-fabric model.
struct Links {
    /// Capacity of each link, bytes per second.
    bps: Vec<f64>,
    /// The rack each link serves (its hosts' `spec.rack`); empty in the one-fabric model.
    rack: Vec<String>,
}

impl Links {
    /// The one-fabric model's single link.
    fn one() -> Self {
        Self {
            bps: vec![CAPACITY],
            rack: Vec::new(),
        }
    }
}

/// `racks` racks of `per_rack` hosts, each rack with its own link (drawn from
/// `RACK_LINKS_GBPS`) and its own mix of hardware models and profiles (weights drawn per
/// rack), so that racks differ in both what they must carry and what they can.
fn rack_fleet(racks: usize, per_rack: usize, seed: u64) -> (Vec<Machine>, Links) {
    let mut rng = Rng(seed);
    let mut machines = Vec::with_capacity(racks * per_rack);
    let mut links = Links {
        bps: Vec::with_capacity(racks),
        rack: Vec::with_capacity(racks),
    };
    let pick = |rng: &mut Rng, weights: &[f64; 3]| {
        let mut x = rng.unit() * weights.iter().sum::<f64>();
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    };
    for r in 0..racks {
        let gbps = RACK_LINKS_GBPS[(rng.next_u64() % RACK_LINKS_GBPS.len() as u64) as usize];
        let models = [rng.unit(), rng.unit(), rng.unit()];
        let profiles = [rng.unit(), rng.unit(), rng.unit()];
        let rack = format!("rack{r:03}");
        for i in 0..per_rack {
            let (model, post) = MODELS[pick(&mut rng, &models)];
            let demand = PROFILES[pick(&mut rng, &profiles)];
            let u = rng.unit();
            machines.push(Machine {
                spec: HostSpec {
                    name: format!("r{r:03}n{i:03}"),
                    model: model.to_owned(),
                    rack: rack.clone(),
                    demand_bytes: demand,
                },
                link: r,
                post_mean: post,
                dead_bmc: u < 0.02,
                flaky_bmc: (0.02..0.05).contains(&u),
            });
        }
        links.bps.push(gbps * 1e9 / 8.0);
        links.rack.push(rack);
    }
    (machines, links)
}

/// How the scheduler divides download slots.
#[derive(Clone, Copy, PartialEq)]
enum Pacing {
    /// One pool for the whole fleet, of the links' total capacity: what the scheduler did
    /// before racks had links of their own.
    Shared,
    /// Each rack by its own link's capacity.
    PerRack,
    /// Each rack by its own fabric's measured egress (`Capacity`, the live runner's estimate),
    /// starting from a configured cap of this many bytes per second.
    Measured(f64),
}

#[derive(Clone, Copy, PartialEq)]
enum Strategy {
    Scheduler(Pacing),
    AllAtOnce,
    /// At most N hosts between reset and booted (or given up).
    Rolling(usize),
    /// N hosts at once; the next N when each of them has downloaded (or was given up).
    Waves(usize),
    /// N more hosts every `period` seconds.
    Timer {
        hosts: usize,
        period: f64,
    },
}

/// The fixed-batch families that are swept.
#[derive(Clone, Copy)]
enum Family {
    Rolling,
    Waves,
    Timer(f64),
}

impl Family {
    fn strategy(self, n: usize) -> Strategy {
        match self {
            Family::Rolling => Strategy::Rolling(n),
            Family::Waves => Strategy::Waves(n),
            Family::Timer(period) => Strategy::Timer { hosts: n, period },
        }
    }

    fn label(self) -> String {
        match self {
            Family::Rolling => "rolling batch".to_owned(),
            Family::Waves => "waves".to_owned(),
            Family::Timer(p) => format!("batch every {p:.0} s"),
        }
    }
}

impl Strategy {
    fn label(&self) -> String {
        match self {
            Strategy::Scheduler(_) => "scheduler".to_owned(),
            Strategy::AllAtOnce => "all at once".to_owned(),
            Strategy::Rolling(n) => format!("rolling batch of {n}"),
            Strategy::Waves(n) => format!("waves of {n}"),
            Strategy::Timer { hosts, period } => format!("{hosts} every {period:.0} s"),
        }
    }
}

#[derive(Clone)]
struct Outcome {
    makespan: f64,
    peak: f64,
    booted: usize,
    bootable: usize,
    isolated: usize,
    gave_up: bool,
    /// When the run ended: every host booted or given up (or the stop).
    ended: f64,
}

impl Outcome {
    /// Whether every host that can boot did, before the stop.
    fn complete(&self) -> bool {
        !self.gave_up && self.booted == self.bootable
    }

    /// Whether `self` is better than `other`: complete before incomplete, then the shorter
    /// makespan; between incomplete runs, more hosts booted.
    fn better_than(&self, other: &Outcome) -> bool {
        match (self.complete(), other.complete()) {
            (true, false) => true,
            (false, true) => false,
            (true, true) => self.makespan < other.makespan,
            (false, false) => self.booted > other.booted,
        }
    }
}

/// The scheduler's knobs; `max_per_rack_posting` is the inrush limit.
fn params(max_per_rack_posting: usize) -> Params {
    Params {
        capacity_bps: CAPACITY,
        per_host_bps: NIC,
        post_guess_s: 300.0,
        max_bmc_ops: 64,
        max_per_rack_posting,
        reset_attempts: RESET_ATTEMPTS,
        retry_backoff_s: RETRY_BACKOFF,
        post_timeout_s: 900.0,
        boot_timeout_s: 1800.0,
        lookahead_s: env_f64("SIM_LOOKAHEAD", 120.0),
    }
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .unwrap_or(default)
}

/// Bytes a fabric sent per second over the last `EGRESS_WINDOW_S` complete seconds, as the
/// ledger measures it for the live runner.
#[derive(Clone, Default)]
struct Meter {
    /// The second in progress and its bytes so far.
    second: u64,
    now: f64,
    /// The complete seconds before it, newest last.
    done: VecDeque<f64>,
}

impl Meter {
    fn roll(&mut self, t: f64) {
        let s = t.floor() as u64;
        while self.second < s {
            self.done.push_back(std::mem::take(&mut self.now));
            if self.done.len() > EGRESS_WINDOW_S as usize {
                self.done.pop_front();
            }
            self.second += 1;
        }
    }

    fn add(&mut self, t: f64, bytes: f64) {
        self.roll(t);
        self.now += bytes;
    }

    fn rate(&mut self, t: f64) -> f64 {
        self.roll(t);
        self.done.iter().sum::<f64>() / EGRESS_WINDOW_S as f64
    }
}

fn simulate(
    machines: &[Machine],
    links: &Links,
    base: &Params,
    strategy: Strategy,
    seed: u64,
    horizon: f64,
) -> Outcome {
    let n = machines.len();
    let is_sched = matches!(strategy, Strategy::Scheduler(_));
    let mut rng = Rng(seed);
    let mut state = vec![State::Idle; n];
    let mut attempts = vec![0u32; n];
    let shared = Params {
        capacity_bps: links.bps.iter().sum(),
        ..base.clone()
    };
    let mut sched = Scheduler::new(shared, machines.iter().map(|m| m.spec.clone()).collect());
    // Per-rack pacing: each rack's link, known or measured by its own fabric.
    let mut estimates: Vec<Capacity> = Vec::new();
    let mut meters = vec![Meter::default(); links.bps.len()];
    match strategy {
        Strategy::Scheduler(Pacing::PerRack) => {
            for (rack, bps) in links.rack.iter().zip(&links.bps) {
                sched.set_rack_capacity(rack, *bps);
            }
        }
        Strategy::Scheduler(Pacing::Measured(cap)) => {
            for rack in &links.rack {
                sched.set_rack_capacity(rack, cap);
                estimates.push(Capacity::new(cap, NIC));
            }
        }
        _ => {}
    }
    // Baselines: the next host to reset (they go in inventory order), hosts between reset and
    // booted or given up (rolling), hosts of the current wave not yet downloaded (waves), the
    // next timer tick, and how many hosts are finished (booted or given up).
    let mut next_host = 0usize;
    let mut in_flight = 0usize;
    let mut wave_left = 0usize;
    let mut next_tick = 0.0;
    let mut finished = 0usize;
    let mut isolated = 0usize;
    let mut peak: f64 = 0.0;
    let mut t = 0.0;
    let mut active: Vec<usize> = Vec::new();
    let post_time = |rng: &mut Rng, m: &Machine| m.post_mean * (0.85 + 0.3 * rng.unit());
    let mut events: Vec<(usize, Event)> = Vec::new();
    while t < horizon {
        // Decide.
        let mut resets: Vec<usize> = Vec::new();
        match strategy {
            Strategy::Scheduler(pacing) => {
                for (h, e) in events.drain(..) {
                    sched.on_event(t, h, e);
                }
                if let Pacing::Measured(_) = pacing {
                    // Each rack's fabric judges its link as the live runner does: only while
                    // every slot of it is pulling.
                    let mut pulling = vec![0usize; links.bps.len()];
                    for &h in &active {
                        if let State::Downloading { .. } = state[h] {
                            pulling[machines[h].link] += 1;
                        }
                    }
                    for (k, est) in estimates.iter_mut().enumerate() {
                        let rack = &links.rack[k];
                        let busy = pulling[k] >= sched.rack_slots(rack);
                        let bps = est.observe(t, meters[k].rate(t), busy);
                        sched.set_rack_capacity(rack, bps);
                    }
                }
                for Action::Reset(h) in sched.next_actions(t) {
                    resets.push(h);
                }
                for h in sched.admit(t) {
                    if state[h] == State::Gate {
                        state[h] = State::Downloading {
                            left: machines[h].spec.demand_bytes as f64,
                            since: t,
                        };
                    }
                }
                if sched.done() {
                    break;
                }
            }
            Strategy::AllAtOnce => {
                if t == 0.0 {
                    resets.extend(0..n);
                    next_host = n;
                }
            }
            Strategy::Rolling(b) => {
                while in_flight < b && next_host < n {
                    resets.push(next_host);
                    next_host += 1;
                    in_flight += 1;
                }
            }
            Strategy::Waves(b) => {
                if wave_left == 0 && next_host < n {
                    let k = b.min(n - next_host);
                    resets.extend(next_host..next_host + k);
                    next_host += k;
                    wave_left = k;
                }
            }
            Strategy::Timer { hosts, period } => {
                if t >= next_tick && next_host < n {
                    let k = hosts.min(n - next_host);
                    resets.extend(next_host..next_host + k);
                    next_host += k;
                    next_tick += period;
                }
            }
        }
        for h in resets {
            attempts[h] += 1;
            state[h] = State::Resetting {
                until: t + RESET_LATENCY,
                ok: machines[h].reset_works(attempts[h]),
            };
            active.push(h);
        }
        // Bandwidth: on each link, fair share among its downloaders, each capped by its slow
        // start and NIC.
        let mut caps: Vec<Vec<(usize, f64)>> = vec![Vec::new(); links.bps.len()];
        for &h in &active {
            if let State::Downloading { since, .. } = state[h] {
                let ramp = INIT_WINDOW / RTT * 2f64.powf(((t - since) / RTT).min(60.0));
                caps[machines[h].link].push((h, ramp.min(NIC)));
            }
        }
        let mut share = HashMap::new();
        for (caps, bps) in caps.iter().zip(&links.bps) {
            if caps.is_empty() {
                continue;
            }
            let demand: f64 = caps.iter().map(|(_, c)| c).sum();
            peak = peak.max(demand / bps);
            share.extend(water_fill(caps, *bps));
        }
        // Advance every active host.
        let mut still = Vec::with_capacity(active.len());
        for &h in &active {
            let m = &machines[h];
            match state[h] {
                State::Resetting { until, ok } if t + DT >= until => {
                    if ok {
                        state[h] = State::Post {
                            until: until + post_time(&mut rng, m),
                        };
                        events.push((h, Event::ResetDone));
                    } else if is_sched {
                        // The scheduler decides the retry (and the isolation) itself.
                        state[h] = State::Idle;
                        events.push((h, Event::ResetFailed("no answer".into())));
                    } else if attempts[h] < RESET_ATTEMPTS {
                        // An operator's tooling retries the BMC after a pause, as the
                        // scheduler does; the host keeps its place in its batch meanwhile.
                        attempts[h] += 1;
                        state[h] = State::Resetting {
                            until: t + DT + RETRY_BACKOFF + RESET_LATENCY,
                            ok: m.reset_works(attempts[h]),
                        };
                    } else {
                        state[h] = State::GivenUp;
                        isolated += 1;
                        finished += 1;
                        in_flight = in_flight.saturating_sub(1);
                        wave_left = wave_left.saturating_sub(1);
                    }
                }
                State::Post { until } if t + DT >= until => {
                    // A host the scheduler admitted holds no place at the gate any more (the
                    // live runner lets it through for good): after a download give-up it
                    // fetches again at once. Any other host under the scheduler waits.
                    let admitted = matches!(sched.phases()[h], Phase::Downloading { .. });
                    state[h] = if is_sched && !admitted {
                        State::Gate
                    } else {
                        State::Downloading {
                            left: m.spec.demand_bytes as f64,
                            since: until,
                        }
                    };
                    events.push((h, Event::DhcpSeen));
                }
                State::Downloading { left, since } => {
                    let rate = share.get(&h).copied().unwrap_or(0.0);
                    meters[m.link].add(t, (rate * DT).min(left));
                    let left = left - rate * DT;
                    if left <= 0.0 {
                        state[h] = State::Booting {
                            until: t + DT + BOOT_AFTER_DOWNLOAD,
                        };
                        events.push((h, Event::Fetched));
                        if let Strategy::Waves(_) = strategy {
                            wave_left = wave_left.saturating_sub(1);
                        }
                    } else if t + DT - since > DOWNLOAD_GIVE_UP {
                        // The firmware gives up and reboots: POST again, download again.
                        state[h] = State::Post {
                            until: t + DT + post_time(&mut rng, m),
                        };
                    } else {
                        state[h] = State::Downloading { left, since };
                    }
                }
                State::Booting { until } if t + DT >= until => {
                    state[h] = State::Booted { at: until };
                    events.push((h, Event::Booted));
                    finished += 1;
                    if let Strategy::Rolling(_) = strategy {
                        in_flight -= 1;
                    }
                }
                _ => {}
            }
            if !matches!(
                state[h],
                State::Idle | State::Booted { .. } | State::GivenUp
            ) {
                still.push(h);
            }
        }
        // Hosts re-queued by the scheduler after a failed reset come back through `resets`.
        active = still;
        if !is_sched {
            events.clear();
            if finished == n {
                break;
            }
        }
        t += DT;
    }
    let bootable = machines.iter().filter(|m| !m.dead_bmc).count();
    let booted: Vec<f64> = state
        .iter()
        .filter_map(|s| match s {
            State::Booted { at } => Some(*at),
            _ => None,
        })
        .collect();
    if is_sched {
        isolated = sched
            .phases()
            .iter()
            .filter(|p| matches!(p, Phase::Failed { .. }))
            .count();
    }
    Outcome {
        makespan: booted.iter().copied().fold(0.0, f64::max),
        peak,
        booted: booted.len(),
        bootable,
        isolated,
        gave_up: t >= horizon,
        ended: t,
    }
}

/// Max-min fair shares of `capacity` among flows capped at `caps`.
fn water_fill(caps: &[(usize, f64)], capacity: f64) -> HashMap<usize, f64> {
    let mut sorted: Vec<(usize, f64)> = caps.to_vec();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut left = capacity;
    let mut out = HashMap::with_capacity(sorted.len());
    let n = sorted.len();
    for (i, (h, cap)) in sorted.into_iter().enumerate() {
        let fair = left / (n - i) as f64;
        let got = cap.min(fair);
        left -= got;
        out.insert(h, got);
    }
    out
}

/// One row of the results, printed as it is computed and kept for the markdown table.
struct Row {
    hosts: usize,
    /// Racks with links of their own (0: the one-fabric model).
    racks: usize,
    name: String,
    outcome: Outcome,
    bound: f64,
}

impl Row {
    /// The markdown cells: hosts, strategy, makespan, makespan / bound, peak, booted,
    /// given up. A stopped run shows what it had reached, as a lower limit.
    fn cells(&self) -> [String; 7] {
        let o = &self.outcome;
        let (makespan, ratio) = if o.gave_up {
            (
                format!("> {:.0} s (stopped)", self.bound * STOP_AT),
                format!("> {STOP_AT:.0} (stopped)"),
            )
        } else if !o.complete() {
            // Hosts that could boot did not (the scheduler gave up on them): the makespan is
            // the last boot's, the run ended later, and they are still to reboot.
            (
                format!(
                    "{:.0} s; {} bootable hosts not booted when the run ended at {:.0} s",
                    o.makespan,
                    o.bootable - o.booted,
                    o.ended
                ),
                format!("{:.3} (incomplete)", o.makespan / self.bound),
            )
        } else {
            (
                format!("{:.0} s", o.makespan),
                format!("{:.3}", o.makespan / self.bound),
            )
        };
        let hosts = if self.racks > 0 {
            format!("{} ({} racks)", group_thousands(self.hosts), self.racks)
        } else {
            group_thousands(self.hosts)
        };
        [
            hosts,
            self.name.clone(),
            makespan,
            ratio,
            format!("{:.2}", o.peak),
            format!("{} / {}", o.booted, o.bootable),
            o.isolated.to_string(),
        ]
    }
}

fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A fleet to run strategies on, with its links, the scheduler's knobs and the lower bound.
struct Fleet {
    machines: Vec<Machine>,
    links: Links,
    params: Params,
    bound: f64,
    /// Racks with links of their own (0: the one-fabric model).
    racks: usize,
}

impl Fleet {
    /// The one-fabric model: `n` hosts behind one link, racks of 40 (inrush only).
    fn one_fabric(n: usize) -> Self {
        let machines = fleet(n, 42);
        let links = Links::one();
        let bound = lower_bound(&machines, &links);
        Self {
            machines,
            links,
            params: params(20),
            bound,
            racks: 0,
        }
    }

    /// The racks model: `racks` racks of `per_rack` hosts, each rack with its own link; the
    /// inrush limit is half a rack.
    fn racks(racks: usize, per_rack: usize) -> Self {
        let (machines, links) = rack_fleet(racks, per_rack, 42);
        let bound = lower_bound(&machines, &links);
        Self {
            machines,
            links,
            params: params(per_rack.div_ceil(2)),
            bound,
            racks,
        }
    }
}

/// The shortest boot possible: the shortest POST, a reset, the smallest profile at NIC
/// speed, the boot.
fn shortest_boot() -> f64 {
    MODELS
        .iter()
        .map(|(_, p)| p * 0.85)
        .fold(f64::MAX, f64::min)
        + RESET_LATENCY
        + PROFILES[0] as f64 / NIC
        + BOOT_AFTER_DOWNLOAD
}

/// No schedule ends sooner: on each link, the bytes of its bootable hosts at its capacity,
/// after the shortest boot; the fleet's bound is its slowest link's. (One link: total bytes
/// over capacity plus the shortest boot.)
fn lower_bound(machines: &[Machine], links: &Links) -> f64 {
    let mut bytes = vec![0.0; links.bps.len()];
    for m in machines.iter().filter(|m| !m.dead_bmc) {
        bytes[m.link] += m.spec.demand_bytes as f64;
    }
    bytes
        .iter()
        .zip(&links.bps)
        .map(|(b, c)| b / c + shortest_boot())
        .fold(0.0, f64::max)
}

/// Runs one strategy, prints its line and returns its row.
fn run(f: &Fleet, strategy: Strategy, name: String) -> Row {
    let (machines, bound) = (&f.machines, f.bound);
    let t0 = Instant::now();
    let o = simulate(machines, &f.links, &f.params, strategy, 7, bound * STOP_AT);
    let note = if o.gave_up {
        format!(" (stopped at {STOP_AT:.0}x bound)")
    } else {
        String::new()
    };
    println!(
        "{:>6} {:<40} {:>9.0}s {:>8.0}s {:>9.3} {:>7}/{:<7} {:>9} {:>8.2}x  {:.1}s{}",
        machines.len(),
        name,
        o.makespan,
        bound,
        o.makespan / bound,
        o.booted,
        o.bootable,
        o.isolated,
        o.peak,
        t0.elapsed().as_secs_f64(),
        note
    );
    Row {
        hosts: machines.len(),
        racks: f.racks,
        name,
        outcome: o,
        bound,
    }
}

/// Sweeps one family over the grid (then around its best) and returns the rows by batch
/// size, then the best's row. `all_at_once` is every family's N = fleet size and competes
/// for "best".
fn sweep(f: &Fleet, family: Family, first: usize, all_at_once: &Outcome) -> Vec<Row> {
    let n = f.machines.len();
    let bound = f.bound;
    let run_size = |b: usize| (b, run(f, family.strategy(b), family.strategy(b).label()));
    let mut rows: Vec<(usize, Row)> = std::iter::successors(Some(first.max(1)), |b| Some(b * 2))
        .take_while(|&b| b < n)
        .map(run_size)
        .collect();
    let best_of = |rows: &[(usize, Row)]| {
        rows.iter()
            .reduce(|a, b| {
                if b.1.outcome.better_than(&a.1.outcome) {
                    b
                } else {
                    a
                }
            })
            .map(|(b, _)| *b)
    };
    // Refine around the grid's best: a factor √2 either side.
    if let Some(b) = best_of(&rows) {
        for f in [std::f64::consts::FRAC_1_SQRT_2, std::f64::consts::SQRT_2] {
            let c = (b as f64 * f).round() as usize;
            if c >= 1 && c < n && rows.iter().all(|(s, _)| *s != c) {
                rows.push(run_size(c));
            }
        }
    }
    rows.sort_by_key(|(b, _)| *b);
    let best = best_of(&rows).and_then(|b| rows.iter().find(|(s, _)| *s == b));
    let (size, outcome) = match best {
        Some((b, r)) if !all_at_once.better_than(&r.outcome) => (b.to_string(), r.outcome.clone()),
        _ => ("all".to_owned(), all_at_once.clone()),
    };
    let name = format!("best {} (hindsight): N = {size}", family.label());
    println!("{n:>6} {name:<40} (the best of the sweep above)");
    let mut out: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    out.push(Row {
        hosts: n,
        racks: f.racks,
        name,
        outcome,
        bound,
    });
    out
}

fn markdown(rows: &[Row]) -> String {
    let peak = if rows.iter().any(|r| r.racks > 0) {
        "peak per-rack demand / capacity"
    } else {
        "peak demand / capacity"
    };
    let mut out = format!(
        "| hosts | strategy | makespan | makespan / lower bound | {peak} | booted | given up |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.cells().join(" | "));
    }
    out
}

fn usage(why: &str) -> std::process::ExitCode {
    eprintln!(
        "usage: fleet_sim [--table PATH] [HOSTS...] | fleet_sim [--table PATH] --racks R [--per-rack H]\n{why}"
    );
    std::process::ExitCode::from(2)
}

/// The one-fabric model at each fleet size: the scheduler, all at once, the swept batches.
fn one_fabric(sizes: &[usize], period: f64) -> Vec<Row> {
    let p = params(20);
    let slots = p.slots();
    println!(
        "fabric {:.0} Gbit/s, hosts {:.0} Gbit/s each ({} download slots); POST 90/150/240 s ±15%; \
         profiles 80 MB / 400 MB / 1.2 GB; 2% dead BMCs, 3% failing once; lookahead {:.0} s; \
         timer period {:.0} s; stop at {STOP_AT:.0}x the bound",
        CAPACITY * 8.0 / 1e9,
        NIC * 8.0 / 1e9,
        slots,
        p.lookahead_s,
        period,
    );
    header();
    let mut rows: Vec<Row> = Vec::new();
    for &n in sizes {
        let f = Fleet::one_fabric(n);
        rows.push(run(
            &f,
            Strategy::Scheduler(Pacing::Shared),
            "scheduler".into(),
        ));
        let all = run(&f, Strategy::AllAtOnce, "all at once".into());
        let all_outcome = all.outcome.clone();
        rows.push(all);
        for family in [Family::Rolling, Family::Waves, Family::Timer(period)] {
            rows.extend(sweep(&f, family, slots, &all_outcome));
        }
    }
    rows
}

/// The racks model: the scheduler pacing each rack by its own link (known, then measured by
/// the rack's fabric), pacing the fleet as one pool of the links' total, and all at once.
fn racks(racks: usize, per_rack: usize) -> Vec<Row> {
    let f = Fleet::racks(racks, per_rack);
    let mut per_speed = String::new();
    for g in RACK_LINKS_GBPS {
        let k = f.links.bps.iter().filter(|b| **b == g * 1e9 / 8.0).count();
        let _ = write!(per_speed, " {k} x {g:.0}");
    }
    let total: f64 = f.links.bps.iter().sum();
    println!(
        "{racks} racks of {per_rack} hosts, each rack's fabric its own link (racks x Gbit/s:{per_speed}; \
         {:.0} Gbit/s in all) and its own mix of models and profiles; hosts {:.0} Gbit/s each; \
         POST 90/150/240 s ±15%; profiles 80 MB / 400 MB / 1.2 GB; 2% dead BMCs, 3% failing once; \
         lookahead {:.0} s; inrush {} per rack; bound = the slowest rack's; stop at {STOP_AT:.0}x the bound",
        total * 8.0 / 1e9,
        NIC * 8.0 / 1e9,
        f.params.lookahead_s,
        f.params.max_per_rack_posting,
    );
    header();
    let measured = format!(
        "scheduler, per rack, measured from {:.0} Gbit/s",
        RACK_CAP * 8.0 / 1e9
    );
    vec![
        run(
            &f,
            Strategy::Scheduler(Pacing::PerRack),
            "scheduler, per-rack pacing".into(),
        ),
        run(
            &f,
            Strategy::Scheduler(Pacing::Measured(RACK_CAP)),
            measured,
        ),
        run(
            &f,
            Strategy::Scheduler(Pacing::Shared),
            "scheduler, one pool for all racks".into(),
        ),
        run(&f, Strategy::AllAtOnce, "all at once".into()),
    ]
}

fn header() {
    println!(
        "{:>6} {:<40} {:>10} {:>9} {:>9} {:>15} {:>9} {:>9}  wall",
        "hosts", "strategy", "makespan", "bound", "ratio", "booted", "given up", "peak"
    );
}

fn main() -> std::process::ExitCode {
    let mut table: Option<String> = None;
    let mut sizes: Vec<usize> = Vec::new();
    let mut rack_count: Option<usize> = None;
    let mut per_rack: usize = 100;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--table" => match args.next() {
                Some(p) => table = Some(p),
                None => return usage("--table needs a path"),
            },
            "--racks" | "--per-rack" => match args.next().and_then(|v| v.parse::<usize>().ok()) {
                Some(v) if v > 0 && v <= 10_000 => {
                    if a == "--racks" {
                        rack_count = Some(v);
                    } else {
                        per_rack = v;
                    }
                }
                _ => return usage(&format!("{a} needs a count from 1 to 10000")),
            },
            _ => match a.parse::<usize>() {
                Ok(0) => return usage("a fleet needs at least one host"),
                Ok(n) => sizes.push(n),
                Err(_) => return usage(&format!("{a:?} is not a host count")),
            },
        }
    }
    let rows = match rack_count {
        Some(_) if !sizes.is_empty() => {
            return usage("--racks takes its fleet from --per-rack, not from HOSTS")
        }
        Some(r) => racks(r, per_rack),
        None => {
            if sizes.is_empty() {
                sizes = vec![1000, 10_000];
            }
            one_fabric(&sizes, env_f64("SIM_TIMER_PERIOD", 60.0).max(DT))
        }
    };
    if let Some(path) = table {
        if let Err(e) = std::fs::write(&path, markdown(&rows)) {
            eprintln!("writing {path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
