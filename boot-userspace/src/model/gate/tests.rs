//! The gate's rules on the pure state, with explicit times (unix ms): FIFO within a rack,
//! turns between racks, idempotent admission, slots freed by progress, idle and timeout
//! revocation, waiters that stop asking, and the reboot-run modes.

use std::collections::HashMap;

use super::*;

fn mac(i: u16) -> Mac {
    let [a, b] = i.to_be_bytes();
    Mac([0x52, 0x54, 0, 0, a, b])
}

fn settings(mode: GateMode, slots: usize) -> GateSettings {
    GateSettings {
        mode,
        retry_s: 2,
        slots,
        min_slots: 1,
        admit_idle_ms: 30_000,
        slot_timeout_ms: 600_000,
    }
}

fn always(slots: usize) -> GateState {
    GateState::new(settings(GateMode::Always, slots))
}

fn nothing(_: Mac, _: u64) -> Progress {
    Progress::default()
}

fn every(_: &Mac) -> bool {
    true
}

fn admitted_macs(g: &mut GateState) -> Vec<Mac> {
    g.take_admissions().into_iter().map(|a| a.mac).collect()
}

#[test]
fn first_come_first_served_within_a_rack_and_admission_is_idempotent() {
    let mut g = always(2);
    for i in 0..5 {
        let want = if i < 2 {
            Ask::Go
        } else {
            Ask::Wait {
                retry_s: 2,
                position: usize::from(i) - 1,
            }
        };
        assert_eq!(g.ask(mac(i), Some("r1"), 1000 + u64::from(i)), want);
    }
    // Asking again keeps the place and the slot.
    assert_eq!(g.ask(mac(0), Some("r1"), 2000), Ask::Go);
    assert_eq!(
        g.ask(mac(3), Some("r1"), 2000),
        Ask::Wait {
            retry_s: 2,
            position: 2
        }
    );
    assert_eq!((g.admitted(), g.waiting()), (2, 3));
    // Host 0 is done: the oldest waiter, host 2, is next, with its wait measured.
    g.take_admissions();
    g.sweep(3000, |m, _| Progress {
        started: true,
        done: m == mac(0),
    });
    let a = g.take_admissions();
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].mac, a[0].at_ms, a[0].waited_ms), (mac(2), 3000, 1998));
    assert_eq!(g.ask(mac(2), Some("r1"), 3001), Ask::Go);
    assert_eq!(g.admitted_max(), 2);
}

#[test]
fn racks_take_turns_so_a_small_rack_is_not_starved_by_a_big_one() {
    let mut g = always(1);
    // Host 0 takes the one slot; then 10 hosts of rack "big" queue before one of "small",
    // and two without a rack (one bucket).
    assert_eq!(g.ask(mac(0), Some("big"), 0), Ask::Go);
    for i in 1..=10 {
        g.ask(mac(i), Some("big"), u64::from(i));
    }
    g.ask(mac(100), Some("small"), 20);
    g.ask(mac(200), None, 21);
    g.ask(mac(201), None, 22);
    g.take_admissions();
    let mut order = Vec::new();
    let mut now = 100;
    // Free the slot 6 times: each time the holder is done.
    for _ in 0..6 {
        let holder: HashMap<Mac, u64> = g.admitted_since().into_iter().collect();
        g.sweep(now, |m, _| Progress {
            started: true,
            done: holder.contains_key(&m),
        });
        order.extend(admitted_macs(&mut g));
        now += 100;
    }
    assert_eq!(
        order,
        vec![mac(1), mac(100), mac(200), mac(2), mac(201), mac(3)],
        "big, small, rackless, big, rackless (small is empty), big"
    );
}

#[test]
fn an_admitted_host_that_never_downloads_loses_its_slot_and_so_does_one_held_too_long() {
    let mut g = always(2);
    g.ask(mac(1), Some("r"), 0);
    g.ask(mac(2), Some("r"), 0);
    g.ask(mac(3), Some("r"), 0);
    // Host 1 starts downloading, host 2 never does.
    let started = |m: Mac, _| Progress {
        started: m == mac(1),
        done: false,
    };
    g.sweep(30_000, started);
    assert!(g.take_revocations().is_empty(), "not idle for longer yet");
    g.sweep(30_001, started);
    assert_eq!(g.take_revocations(), vec![(mac(2), Revoked::Idle)]);
    g.take_admissions();
    // Host 3 stopped asking meanwhile and left the queue; it comes back to a free slot.
    assert_eq!(g.ask(mac(3), Some("r"), 30_002), Ask::Go);
    // Host 1 downloads for ever: revoked at the slot timeout, never before.
    let busy = |_, _| Progress {
        started: true,
        done: false,
    };
    g.sweep(600_000, busy);
    assert!(g.take_revocations().is_empty());
    g.sweep(600_001, busy);
    assert_eq!(g.take_revocations(), vec![(mac(1), Revoked::Timeout)]);
    assert_eq!(g.admitted(), 1);
}

#[test]
fn waiters_that_stop_asking_leave_the_queue() {
    let mut g = always(1);
    g.ask(mac(0), None, 0);
    g.ask(mac(1), None, 0);
    g.ask(mac(2), None, 0);
    // Host 2 keeps asking every retry (2 s); host 1 went away. 4 periods = 8 s.
    g.ask(mac(2), None, 6_000);
    g.sweep(8_000, |_, _| Progress {
        started: true,
        done: false,
    });
    assert_eq!(g.waiting(), 2);
    g.sweep(8_001, |_, _| Progress {
        started: true,
        done: false,
    });
    assert_eq!(g.waiting(), 1);
    assert_eq!(
        g.ask(mac(2), None, 8_002),
        Ask::Wait {
            retry_s: 2,
            position: 1
        }
    );
}

#[test]
fn more_slots_admit_at_once_and_fewer_never_preempt() {
    let mut g = always(1);
    for i in 0..4 {
        g.ask(mac(i), Some("r"), 0);
    }
    g.take_admissions();
    g.set_slots(3, 10);
    assert_eq!(admitted_macs(&mut g), vec![mac(1), mac(2)]);
    g.set_slots(0, 20);
    assert_eq!(g.slots(), 1, "min_slots is the floor");
    assert_eq!(g.admitted(), 3, "admitted hosts keep their slots");
    g.sweep(30, |m, _| Progress {
        started: true,
        done: m == mac(0),
    });
    assert!(admitted_macs(&mut g).is_empty(), "2 still above 1 slot");
    assert_eq!(g.admitted_max(), 3);
}

#[test]
fn off_and_reboot_runs_let_hosts_nobody_reset_through() {
    let mut off = GateState::new(settings(GateMode::Off, 1));
    let mut runs = GateState::new(settings(GateMode::RebootRuns, 1));
    for i in 0..5 {
        assert_eq!(off.ask(mac(i), Some("r"), 0), Ask::Go);
        assert_eq!(runs.ask(mac(i), Some("r"), 0), Ask::Go);
    }
    assert_eq!((off.admitted(), runs.admitted()), (0, 0));
}

#[test]
fn a_run_s_host_waits_until_the_run_admits_it_and_is_let_go_when_done() {
    let mut g = GateState::new(settings(GateMode::RebootRuns, 1));
    g.enroll(mac(1));
    assert!(g.holds(&mac(1)));
    let wait = Ask::Wait {
        retry_s: 2,
        position: 0,
    };
    assert_eq!(g.ask(mac(1), None, 0), wait);
    assert_eq!(g.ask_unproven(mac(1)), wait);
    assert_eq!(
        g.waiting(),
        0,
        "the run's scheduler orders its hosts, not a queue"
    );
    assert!(g.admit_enrolled(mac(1), 5));
    assert!(!g.holds(&mac(1)));
    assert_eq!(g.ask(mac(1), None, 6), Ask::Go);
    // Reset again (a retry): held again.
    g.enroll(mac(1));
    assert!(g.holds(&mac(1)));
    g.withdraw(mac(1));
    assert!(!g.holds(&mac(1)));
    assert_eq!(g.ask(mac(1), None, 7), Ask::Go);
    // Admitted and done: the slot frees and the host is no longer the run's.
    g.enroll(mac(2));
    g.admit_enrolled(mac(2), 10);
    g.sweep(20, |_, _| Progress {
        started: true,
        done: true,
    });
    assert_eq!(g.admitted(), 0);
    assert!(!g.holds(&mac(2)));
}

#[test]
fn with_gate_always_the_queue_decides_for_a_run_s_hosts_too() {
    let mut g = always(1);
    assert_eq!(g.ask(mac(0), None, 0), Ask::Go);
    g.enroll(mac(1));
    assert!(
        !g.admit_enrolled(mac(1), 1),
        "the run does not bypass the queue"
    );
    assert_eq!(
        g.ask(mac(1), None, 2),
        Ask::Wait {
            retry_s: 2,
            position: 1
        }
    );
    assert_eq!(g.admitted(), 1);
}

/// A host the fabric cannot place by its address (another server's lease) never queues nor
/// takes a slot (its MAC could be anyone's claim), and never waits for ever either: with
/// `always` it goes through unpaced, counted. A run's host still waits for its run.
#[test]
fn a_host_known_only_by_the_mac_it_claims_goes_through_without_a_slot_and_is_counted() {
    let mut g = always(1);
    assert_eq!(g.ask(mac(0), None, 0), Ask::Go);
    g.ask(mac(1), None, 0);
    for _ in 0..3 {
        assert_eq!(g.ask_unproven(mac(9)), Ask::Go);
    }
    assert_eq!(
        (g.waiting(), g.admitted()),
        (1, 1),
        "no place, no slot taken"
    );
    assert_eq!(g.take_unplaced(), 3);
    // Already holding a slot (it asked from its address before): not counted again.
    assert_eq!(g.ask_unproven(mac(0)), Ask::Go);
    assert_eq!(g.take_unplaced(), 0);
    let mut runs = GateState::new(settings(GateMode::RebootRuns, 1));
    runs.enroll(mac(9));
    assert_eq!(
        runs.ask_unproven(mac(9)),
        Ask::Wait {
            retry_s: 2,
            position: 0
        }
    );
    assert_eq!(runs.ask_unproven(mac(8)), Ask::Go, "nobody reset it");
    assert_eq!(runs.take_unplaced(), 0);
}

/// A host deleted, or turned to `deny` or a used `once`, downloads nothing more: its slot
/// and its place are taken back at the next sweep, and the next waiter gets the slot.
#[test]
fn hosts_that_no_longer_netboot_lose_their_slot_and_their_place() {
    let mut g = always(1);
    assert_eq!(g.ask(mac(1), Some("r"), 0), Ask::Go);
    g.ask(mac(2), Some("r"), 1);
    g.ask(mac(3), Some("s"), 2);
    g.ask(mac(4), Some("r"), 3);
    g.take_admissions();
    let gone = [mac(1), mac(2)];
    g.forget(|m| !gone.contains(m));
    assert_eq!(g.take_revocations(), vec![(mac(1), Revoked::NoNetboot)]);
    assert_eq!((g.admitted(), g.waiting()), (0, 2));
    g.sweep(10, nothing);
    assert_eq!(
        admitted_macs(&mut g),
        vec![mac(4)],
        "rack r's turn, its deleted head gone"
    );
    assert_eq!(
        g.ask(mac(3), Some("s"), 11),
        Ask::Wait {
            retry_s: 2,
            position: 1
        }
    );
    // A run's host is let go with its slot.
    let mut runs = GateState::new(settings(GateMode::RebootRuns, 1));
    runs.enroll(mac(5));
    runs.admit_enrolled(mac(5), 0);
    runs.forget(|_| false);
    assert_eq!((runs.admitted(), runs.holds(&mac(5))), (0, false));
}

#[test]
fn the_handle_keeps_the_metrics_in_step() {
    let registry = Registry::new();
    let gate = Gate::with_metrics(settings(GateMode::Always, 1), &registry).expect("metrics");
    let (a, adm) = gate.ask(mac(1), None, 0, nothing, every);
    assert_eq!(a, Ask::Go);
    assert_eq!(adm.len(), 1);
    gate.ask(mac(2), None, 0, nothing, every);
    let (_, adm) = gate.ask(
        mac(2),
        None,
        1500,
        |m, _| Progress {
            started: true,
            done: m == mac(1),
        },
        every,
    );
    assert_eq!(adm.len(), 1);
    assert_eq!(gate.ask_unproven(mac(9)), Ask::Go);
    // Host 2 is deleted while holding its slot.
    gate.sweep(2000, nothing, |m| *m != mac(2));
    let families = registry.gather();
    let get = |name: &str| {
        families
            .iter()
            .find(|f| f.name() == name)
            .map(|f| f.get_metric()[0].clone())
            .unwrap_or_else(|| panic!("{name} registered"))
    };
    assert_eq!(get("bootfabric_gate_admitted").get_gauge().get_value(), 0.0);
    assert_eq!(
        get("bootfabric_gate_admitted_max").get_gauge().get_value(),
        1.0
    );
    assert_eq!(get("bootfabric_gate_slots").get_gauge().get_value(), 1.0);
    let h = get("bootfabric_gate_wait_seconds");
    assert_eq!(h.get_histogram().get_sample_count(), 2);
    assert!((h.get_histogram().get_sample_sum() - 1.5).abs() < 1e-9);
    assert_eq!(
        get("bootfabric_gate_unplaced_total")
            .get_counter()
            .get_value(),
        1.0
    );
    let revoked = families
        .iter()
        .find(|f| f.name() == "bootfabric_gate_revoked_total")
        .expect("revoked");
    let no_netboot = revoked
        .get_metric()
        .iter()
        .find(|m| m.get_label()[0].value() == "no_netboot")
        .expect("labelled from the start");
    assert_eq!(no_netboot.get_counter().get_value(), 1.0);
    assert_eq!(gate.load().0, 0);
}
