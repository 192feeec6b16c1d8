//! Fleet simulator: the real scheduler (`bootfabric::scheduler`) against a model of the
//! fabric, next to "reboot all at once" and fixed batch sizes (Ironic-style concurrency
//! limits), for 1,000 and 10,000 hosts. Prints makespan, its ratio to the lower bound (total
//! bytes / capacity + the shortest boot), the peak demand over capacity, and how many of the
//! hosts that can boot did.
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
//! Usage: fleet-sim [HOSTS...]   (default: 1000 10000)
//! Knob: SIM_LOOKAHEAD (seconds the scheduler resets hosts ahead of need; default 120).

use std::time::Instant;

use bootfabric::scheduler::{Action, Event, HostSpec, Params, Phase, Scheduler};
use bootfabric_lab::Rng;

const DT: f64 = 0.25;
const CAPACITY: f64 = 1.25e9; // 10 Gbit/s
const NIC: f64 = 1.25e8; // 1 Gbit/s per host
const RTT: f64 = 0.001;
const INIT_WINDOW: f64 = 14_600.0;
const RESET_LATENCY: f64 = 2.0;
const BOOT_AFTER_DOWNLOAD: f64 = 20.0;
const DOWNLOAD_GIVE_UP: f64 = 300.0;
const MODELS: [(&str, f64); 3] = [("r650", 90.0), ("dl380", 150.0), ("sr650", 240.0)];
const PROFILES: [u64; 3] = [80_000_000, 400_000_000, 1_200_000_000];

#[derive(Clone)]
struct Machine {
    spec: HostSpec,
    post_mean: f64,
    /// The BMC never answers.
    dead_bmc: bool,
    /// The BMC fails the first reset.
    flaky_bmc: bool,
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
                post_mean: post,
                dead_bmc: r < 0.02,
                flaky_bmc: (0.02..0.05).contains(&r),
            }
        })
        .collect()
}

enum Strategy {
    Scheduler,
    AllAtOnce,
    Batch(usize),
}

struct Outcome {
    makespan: f64,
    peak: f64,
    booted: usize,
    bootable: usize,
    isolated: usize,
    gave_up: bool,
}

fn params() -> Params {
    Params {
        capacity_bps: CAPACITY,
        per_host_bps: NIC,
        post_guess_s: 300.0,
        max_bmc_ops: 64,
        max_per_rack_posting: 20,
        reset_attempts: 3,
        retry_backoff_s: 10.0,
        post_timeout_s: 900.0,
        boot_timeout_s: 1800.0,
        lookahead_s: std::env::var("SIM_LOOKAHEAD")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120.0),
    }
}

fn simulate(machines: &[Machine], strategy: &Strategy, seed: u64, horizon: f64) -> Outcome {
    let n = machines.len();
    let mut rng = Rng(seed);
    let mut state = vec![State::Idle; n];
    let mut attempts = vec![0u32; n];
    let mut sched = Scheduler::new(params(), machines.iter().map(|m| m.spec.clone()).collect());
    let mut next_batch = 0usize;
    let mut in_flight = 0usize; // for Batch: between reset and booted (or given up)
    let mut peak: f64 = 0.0;
    let mut t = 0.0;
    let mut active: Vec<usize> = Vec::new();
    let post_time = |rng: &mut Rng, m: &Machine| m.post_mean * (0.85 + 0.3 * rng.unit());
    let mut events: Vec<(usize, Event)> = Vec::new();
    while t < horizon {
        // Decide.
        let mut resets: Vec<usize> = Vec::new();
        match strategy {
            Strategy::Scheduler => {
                for (h, e) in events.drain(..) {
                    sched.on_event(t, h, e);
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
                }
            }
            Strategy::Batch(b) => {
                while in_flight < *b && next_batch < n {
                    resets.push(next_batch);
                    next_batch += 1;
                    in_flight += 1;
                }
            }
        }
        for h in resets {
            attempts[h] += 1;
            let fails = machines[h].dead_bmc || (machines[h].flaky_bmc && attempts[h] == 1);
            let ok = !fails;
            state[h] = State::Resetting {
                until: t + RESET_LATENCY,
                ok,
            };
            active.push(h);
        }
        // Bandwidth: fair share among downloaders, each capped by its slow start and NIC.
        let caps: Vec<(usize, f64)> = active
            .iter()
            .filter_map(|&h| match state[h] {
                State::Downloading { since, .. } => {
                    let ramp = INIT_WINDOW / RTT * 2f64.powf(((t - since) / RTT).min(60.0));
                    Some((h, ramp.min(NIC)))
                }
                _ => None,
            })
            .collect();
        let demand: f64 = caps.iter().map(|(_, c)| c).sum();
        peak = peak.max(demand / CAPACITY);
        let share = water_fill(&caps, CAPACITY);
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
                    } else {
                        state[h] = State::Idle;
                        events.push((h, Event::ResetFailed("no answer".into())));
                        match strategy {
                            // Ironic-style: a failed deploy frees its slot.
                            Strategy::Batch(_) => in_flight -= 1,
                            // A one-shot script retries the BMC once, then gives up.
                            Strategy::AllAtOnce if attempts[h] < 3 => {
                                attempts[h] += 1;
                                let ok = !m.dead_bmc;
                                state[h] = State::Resetting {
                                    until: t + RESET_LATENCY,
                                    ok,
                                };
                            }
                            _ => {}
                        }
                    }
                }
                State::Post { until } if t + DT >= until => {
                    state[h] = if matches!(strategy, Strategy::Scheduler) {
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
                    let left = left - rate * DT;
                    if left <= 0.0 {
                        state[h] = State::Booting {
                            until: t + DT + BOOT_AFTER_DOWNLOAD,
                        };
                        events.push((h, Event::Fetched));
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
                    if let Strategy::Batch(_) = strategy {
                        in_flight -= 1;
                    }
                }
                _ => {}
            }
            if !matches!(state[h], State::Idle | State::Booted { .. }) {
                still.push(h);
            }
        }
        // Hosts re-queued after a failed reset come back through `resets`.
        active = still;
        if !matches!(strategy, Strategy::Scheduler) {
            events.clear();
            let finished = state.iter().zip(machines).all(|(s, m)| {
                matches!(s, State::Booted { .. }) || (m.dead_bmc && *s == State::Idle)
            });
            if finished && t > 0.0 {
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
    let isolated = match strategy {
        Strategy::Scheduler => sched
            .phases()
            .iter()
            .filter(|p| matches!(p, Phase::Failed { .. }))
            .count(),
        _ => n - bootable,
    };
    Outcome {
        makespan: booted.iter().copied().fold(0.0, f64::max),
        peak,
        booted: booted.len(),
        bootable,
        isolated,
        gave_up: t >= horizon,
    }
}

/// Max-min fair shares of `capacity` among flows capped at `caps`.
fn water_fill(caps: &[(usize, f64)], capacity: f64) -> std::collections::HashMap<usize, f64> {
    let mut sorted: Vec<(usize, f64)> = caps.to_vec();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut left = capacity;
    let mut out = std::collections::HashMap::with_capacity(sorted.len());
    let n = sorted.len();
    for (i, (h, cap)) in sorted.into_iter().enumerate() {
        let fair = left / (n - i) as f64;
        let got = cap.min(fair);
        left -= got;
        out.insert(h, got);
    }
    out
}

fn main() {
    let sizes: Vec<usize> = {
        let v: Vec<usize> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        if v.is_empty() {
            vec![1000, 10_000]
        } else {
            v
        }
    };
    let slots = params().slots();
    println!(
        "fabric {:.0} Gbit/s, hosts {:.0} Gbit/s each ({} download slots); POST 90/150/240 s ±15%; \
         profiles 80 MB / 400 MB / 1.2 GB; 2% dead BMCs, 3% failing once",
        CAPACITY * 8.0 / 1e9,
        NIC * 8.0 / 1e9,
        slots
    );
    println!(
        "{:>6} {:<22} {:>10} {:>9} {:>9} {:>15} {:>9} {:>8}",
        "hosts", "strategy", "makespan", "bound", "ratio", "booted", "isolated", "peak"
    );
    for &n in &sizes {
        let machines = fleet(n, 42);
        let bytes: f64 = machines
            .iter()
            .filter(|m| !m.dead_bmc)
            .map(|m| m.spec.demand_bytes as f64)
            .sum();
        let shortest = MODELS
            .iter()
            .map(|(_, p)| p * 0.85)
            .fold(f64::MAX, f64::min)
            + RESET_LATENCY
            + PROFILES[0] as f64 / NIC
            + BOOT_AFTER_DOWNLOAD;
        let bound = bytes / CAPACITY + shortest;
        for (name, strategy) in [
            ("scheduler".to_owned(), Strategy::Scheduler),
            ("all at once".to_owned(), Strategy::AllAtOnce),
            (format!("batch of {slots}"), Strategy::Batch(slots)),
            (
                format!("batch of {}", 4 * slots),
                Strategy::Batch(4 * slots),
            ),
        ] {
            let t0 = Instant::now();
            let o = simulate(&machines, &strategy, 7, bound * 6.0);
            let note = if o.gave_up {
                " (stopped at 6x bound)"
            } else {
                ""
            };
            println!(
                "{:>6} {:<22} {:>9.0}s {:>8.0}s {:>9.3} {:>7}/{:<7} {:>9} {:>7.2}x  {:.1}s{}",
                n,
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
        }
    }
}
