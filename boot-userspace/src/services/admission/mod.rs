//! The admission service: once a second it feeds the fabric's measured egress to the
//! capacity estimate and sets the gate's download slots from it (capacity over one host's
//! rate, at least `scheduler.min_slots`), frees the slots of hosts the ledger says are done,
//! takes back the slots and places of hosts the snapshot no longer boots (deleted, `deny`, a
//! used `once`), revokes idle or overdue ones, drops waiters that stopped asking, and records the
//! admissions this makes. HTTP does the same sweep on every script request, so a slot frees
//! at once while hosts are asking; this tick covers the quiet periods and the capacity.
//!
//! [`Admission::tick`] is the whole of a tick at a given time; [`Admission::run`] only calls
//! it every second until cancelled.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    config::SchedulerConfig,
    model::gate::{self, capacity::Capacity, Gate},
    model::ledger::{unix_ms, EventKind, Ledger},
    model::snapshot::Live,
};

/// How often the slots and the admitted hosts are looked at.
const TICK: Duration = Duration::from_secs(1);

/// The admission service.
pub struct Admission {
    gate: Gate,
    ledger: Ledger,
    live: Arc<Live>,
    capacity: Capacity,
    per_host_bps: f64,
}

impl Admission {
    /// The service for `gate`, reading `ledger` about the hosts of the snapshot in effect,
    /// with the capacity and per-host rate of `scheduler`.
    pub fn new(gate: Gate, ledger: Ledger, live: Arc<Live>, scheduler: &SchedulerConfig) -> Self {
        Self {
            gate,
            ledger,
            live,
            capacity: Capacity::new(scheduler.capacity_bps, scheduler.per_host_bps),
            per_host_bps: scheduler.per_host_bps,
        }
    }

    /// One tick at unix ms `now`, with the fabric's egress `egress_bps` over the ledger's
    /// window. Returns the slots set.
    pub fn tick(&mut self, now: u64, egress_bps: f64) -> usize {
        let snapshot = self.live.load();
        let progress = |mac, since| gate::progress(&self.ledger, &snapshot.inventory, mac, since);
        let netboots = |mac: &_| gate::netboots(&snapshot.inventory, mac);
        let mut admitted = self.gate.sweep(now, progress, netboots);
        // Judged after the sweep: slots whose hosts are done say nothing about the fabric.
        let (holding, slots) = self.gate.load();
        let busy = holding >= slots;
        let estimate = self.capacity.observe(now as f64 / 1000.0, egress_bps, busy);
        let n = ((estimate / self.per_host_bps).floor() as usize).clamp(1, 1 << 20);
        admitted.extend(self.gate.set_slots(n, now));
        for a in admitted {
            self.ledger
                .record_at(a.mac, EventKind::Admitted, None, a.at_ms);
        }
        self.gate.load().1
    }

    /// Ticks every second until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let egress = self.ledger.egress_rates().iter().map(|(_, r)| r).sum();
            self.tick(unix_ms(), egress);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The tick against a real ledger and gate: hosts are admitted by the gate as HTTP would
    //! admit them, and the ledger's events (recorded as HTTP, TFTP and `/booted` record them)
    //! free their slots.

    use std::path::Path;

    use prometheus::Registry;

    use super::*;
    use crate::model::{
        gate::{Ask, GateMode, Progress},
        inventory::{Inventory, Mac},
    };

    fn inventory() -> Inventory {
        let text = r#"
            [profiles.debian]
            kernel = "debian/vmlinuz"
            initrd = ["debian/initrd.img"]

            [[hosts]]
            name = "node01"
            mac = "52:54:00:aa:00:01"
            profile = "debian"

            [[hosts]]
            name = "node02"
            mac = "52:54:00:aa:00:02"
            profile = "debian"

            [[hosts]]
            name = "node03"
            mac = "52:54:00:aa:00:03"
            profile = "debian"
        "#;
        let wire = toml::from_str(text).expect("inventory");
        Inventory::from_wire(Path::new("hosts.toml"), wire).expect("valid")
    }

    fn mac(i: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0xaa, 0, i])
    }

    /// 2 slots from the config (200 over 100 Mbit/s), gate always.
    fn world() -> (Admission, Gate, Ledger, Registry) {
        let registry = Registry::new();
        let toml = "[scheduler]\ngate = \"always\"\ncapacity_mbps = 200\nper_host_mbps = 100\nadmit_idle_s = 10\n";
        let wire = toml::from_str(toml).expect("toml");
        let config =
            crate::config::Config::from_wire(Path::new("test.toml"), wire, Inventory::default())
                .expect("config");
        let ledger = Ledger::new(&registry).expect("ledger");
        let inventory = inventory();
        ledger.set_inventory(&inventory);
        let gate = Gate::with_metrics(config.scheduler.gate_settings(), &registry).expect("gate");
        assert_eq!(gate.settings().mode, GateMode::Always);
        let live = Live::unregistered(crate::model::snapshot::Next::new(
            inventory,
            Default::default(),
        ));
        let admission = Admission::new(gate.clone(), ledger.clone(), live, &config.scheduler);
        (admission, gate, ledger, registry)
    }

    fn quiet(_: Mac, _: u64) -> Progress {
        Progress::default()
    }

    fn all(_: &Mac) -> bool {
        true
    }

    fn http(path: &str) -> EventKind {
        EventKind::HttpSent {
            path: path.into(),
            bytes: 1,
        }
    }

    #[test]
    fn a_host_sent_every_file_frees_its_slot_for_the_next_waiter_at_the_tick() {
        let (mut adm, gate, ledger, _r) = world();
        const T: u64 = 1_700_000_000_000;
        assert_eq!(adm.tick(T, 0.0), 2);
        for i in 1..=3 {
            gate.ask(mac(i), None, T + 10, quiet, all);
        }
        assert_eq!(gate.load(), (2, 2));
        let started = EventKind::HttpStarted {
            path: "/debian/vmlinuz".into(),
        };
        ledger.record_at(mac(1), started, None, T + 20);
        ledger.record_at(mac(1), http("/debian/vmlinuz"), None, T + 30);
        adm.tick(T + 1000, 0.0);
        assert!(ledger
            .events_since(mac(3), 0)
            .iter()
            .all(|e| e.kind != EventKind::Admitted));
        // Half the profile is not "fetched"; the other half is.
        ledger.record_at(mac(1), http("/debian/initrd.img"), None, T + 1500);
        adm.tick(T + 2000, 0.0);
        let admitted: Vec<u64> = ledger
            .events_since(mac(3), 0)
            .iter()
            .filter(|e| e.kind == EventKind::Admitted)
            .map(|e| e.at_ms)
            .collect();
        assert_eq!(admitted, vec![T + 2000], "recorded once, at the tick");
        let (ask, _) = gate.ask(mac(3), None, T + 2100, quiet, all);
        assert_eq!(ask, Ask::Go);
    }

    #[test]
    fn a_booted_host_frees_its_slot_and_an_idle_one_is_revoked() {
        let (mut adm, gate, ledger, registry) = world();
        const T: u64 = 1_700_000_000_000;
        for i in 1..=3 {
            gate.ask(mac(i), None, T, quiet, all);
        }
        ledger.record_at(mac(1), EventKind::Booted, None, T + 100);
        let started = EventKind::HttpStarted {
            path: "/debian/vmlinuz".into(),
        };
        ledger.record_at(mac(3), started, None, T + 1500);
        adm.tick(T + 1000, 0.0);
        assert_eq!(gate.load(), (2, 2), "host 3 took host 1's slot");
        // Host 2 never starts: revoked after 10 s; host 3 started in time.
        adm.tick(T + 10_000, 0.0);
        assert_eq!(gate.load().0, 2);
        adm.tick(T + 10_001, 0.0);
        assert_eq!(gate.load().0, 1);
        let text = String::from_utf8(
            prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .expect("encode")
                .into_bytes(),
        )
        .expect("utf-8");
        assert!(
            text.contains("bootfabric_gate_revoked_total{reason=\"idle\"} 1"),
            "{text}"
        );
    }

    /// node01 holds a slot and node02 the other, node03 waits; then node01 is turned to
    /// `deny` and node02 deleted: at the next tick both slots are taken back (and counted),
    /// and node03 has one at once, without waiting for the idle revocation.
    #[test]
    fn hosts_the_snapshot_no_longer_boots_lose_their_slots_at_the_tick() {
        let (mut adm, gate, ledger, registry) = world();
        const T: u64 = 1_700_000_000_000;
        adm.tick(T, 0.0);
        for i in 1..=3 {
            gate.ask(mac(i), None, T, quiet, all);
        }
        assert_eq!((gate.load(), gate.waiting()), ((2, 2), 1));
        let text = r#"
            [profiles.debian]
            kernel = "debian/vmlinuz"

            [[hosts]]
            name = "node01"
            mac = "52:54:00:aa:00:01"
            profile = "debian"
            netboot = "deny"

            [[hosts]]
            name = "node03"
            mac = "52:54:00:aa:00:03"
            profile = "debian"
        "#;
        let wire = toml::from_str(text).expect("inventory");
        let next = Inventory::from_wire(Path::new("hosts.toml"), wire).expect("valid");
        adm.live
            .publish(|_| {
                Ok::<_, String>(crate::model::snapshot::Next::new(next, Default::default()))
            })
            .expect("published");
        adm.tick(T + 1000, 0.0);
        assert_eq!((gate.load(), gate.waiting()), ((1, 2), 0));
        assert!(ledger
            .events_since(mac(3), 0)
            .iter()
            .any(|e| e.kind == EventKind::Admitted));
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        assert!(
            text.contains("bootfabric_gate_revoked_total{reason=\"no_netboot\"} 2"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn run_ticks_until_cancelled() {
        let (adm, gate, _ledger, _r) = world();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(adm.run(cancel.clone()));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(gate.load().1, 2);
        cancel.cancel();
        task.await.expect("joined");
    }
}
