//! `netboot = "once"`: the task that spends a host's one network boot. The ledger keeps the
//! `once` hosts that reported `booted` ([`crate::model::ledger::Ledger::take_booted`]: one
//! entry per host, never dropped, unlike the rate-capped event log); this task takes them
//! and, for a `once` host not yet consumed whose boot fetched its kernel, publishes the
//! consumed state (every service then answers "boot from disk") and records it in the API's
//! overlay file, so a restart keeps it. `POST /api/v1/hosts/{name}/netboot-reset`, or a write
//! that sets `netboot`, gives the network boot back.
//!
//! A `booted` from a boot that fetched none of the host's kernels (posted by a machine that
//! did not netboot: a spoofed `booted`) is logged and spends nothing.
//!
//! [`to_consume`] is pure (reports and the inventory in, names out); [`run`] is the loop.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api::ApiState;
use crate::model::inventory::{Inventory, Mac, Netboot};

/// What the `booted` reports of `once` hosts decide.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decided {
    /// Hosts to mark consumed.
    pub consume: Vec<String>,
    /// `once` hosts not yet consumed whose `booted` came from a boot that fetched no kernel
    /// of theirs: not consumed.
    pub unfetched: Vec<String>,
}

/// Sorts `booted` (MAC, whether that boot fetched a kernel) for the `once` hosts of
/// `inventory` not yet consumed; a MAC no longer a `once` host, or already consumed, is
/// neither.
pub fn to_consume(booted: &[(Mac, bool)], inventory: &Inventory) -> Decided {
    let mut out = Decided::default();
    for (mac, fetched) in booted {
        let Some(h) = inventory.host_by_mac(mac) else {
            continue;
        };
        if h.netboot != Netboot::Once || inventory.is_consumed(&h.name) {
            continue;
        }
        let list = if *fetched {
            &mut out.consume
        } else {
            &mut out.unfetched
        };
        if !list.contains(&h.name) {
            list.push(h.name.clone());
        }
    }
    out
}

/// How long a consumption that could not be recorded (the overlay file's disk) waits before
/// it is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes the ledger's `booted` reports from now until `cancel` fires.
pub async fn run(api: Arc<ApiState>, cancel: CancellationToken) {
    // Hosts whose consumption was not recorded: tried again, never forgotten (a forgotten
    // one would reinstall at its next power cycle).
    let mut retry: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = api.ledger.wait_booted() => {}
            _ = tokio::time::sleep(RETRY), if !retry.is_empty() => {}
        }
        let booted = api.ledger.take_booted();
        let inventory = &api.live.load().inventory;
        let mut decided = to_consume(&booted, inventory);
        for name in &decided.unfetched {
            warn!(
                host = %name,
                "netboot once: `booted` from a boot that fetched none of the host's kernels; \
                 not spent"
            );
        }
        for name in retry.drain(..) {
            let still = inventory
                .host_named(&name)
                .is_some_and(|h| h.netboot == Netboot::Once && !inventory.is_consumed(&name));
            if still && !decided.consume.contains(&name) {
                decided.consume.push(name);
            }
        }
        if decided.consume.is_empty() {
            continue;
        }
        // Publishing fsyncs the overlay and waits for the followers: a blocking thread.
        let api = Arc::clone(&api);
        let done = tokio::task::spawn_blocking(move || {
            let mut failed = Vec::new();
            for name in decided.consume {
                match super::hosts::consume(&api, &name) {
                    Ok(true) => {
                        info!(host = %name, "netboot once: used; the host now boots from its disk")
                    }
                    Ok(false) => {}
                    Err(p) => {
                        warn!(host = %name, detail = %p.detail, "netboot once: not recorded; tried again");
                        failed.push(name);
                    }
                }
            }
            failed
        })
        .await;
        match done {
            Ok(failed) => retry = failed,
            Err(_) => warn!("netboot once: the consumption task panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ledger::{EventKind, Ledger};

    const HOSTS: &str = "[profiles.p]\nkernel='/images/vmlinuz'\n\
         [[hosts]]\nname='a'\nmac='52:54:00:00:00:01'\nprofile='p'\nnetboot='once'\n\
         [[hosts]]\nname='b'\nmac='52:54:00:00:00:02'\nprofile='p'\n\
         [[hosts]]\nname='c'\nmac='52:54:00:00:00:03'\nprofile='p'\nnetboot='once'\n\
         [[hosts]]\nname='d'\nmac='52:54:00:00:00:04'\nprofile='p'\nnetboot='once'\n";

    fn inventory() -> Inventory {
        let wire = toml::from_str(HOSTS).expect("toml");
        Inventory::from_wire(std::path::Path::new("h"), wire).expect("valid")
    }

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    #[test]
    fn only_a_once_host_not_yet_consumed_whose_boot_fetched_its_kernel_is_consumed() {
        let mut inv = inventory();
        inv.set_consumed("c", true);
        let booted = [
            (mac(1), true),
            (mac(2), true),
            (mac(3), true),
            (mac(4), false),
            (mac(9), true),
        ];
        assert_eq!(
            to_consume(&booted, &inv),
            Decided {
                consume: vec!["a".into()],
                unfetched: vec!["d".into()],
            }
        );
    }

    fn sent(path: &str) -> EventKind {
        EventKind::HttpSent {
            path: path.into(),
            bytes: 1,
        }
    }

    #[test]
    fn the_ledger_keeps_every_booted_of_a_once_host_past_the_event_rate_cap() {
        let ledger = Ledger::new(&prometheus::Registry::new()).expect("ledger");
        let inv = inventory();
        ledger.set_inventory(&inv);
        // The host spends its event budget, then boots: the event log drops its
        // `host.booted`, the consumption does not.
        for _ in 0..100 {
            ledger.record(
                mac(1),
                EventKind::BmcReset {
                    reset_type: "ForceRestart".into(),
                },
                None,
            );
            ledger.record(mac(1), EventKind::Booted, None);
        }
        ledger.take_booted();
        let logged = ledger
            .events_after(0, 10_000)
            .events
            .iter()
            .filter(|e| e.kind == crate::model::ledger::EventType::HostBooted)
            .count();
        assert!(logged < 100, "the event log kept every booted: {logged}");
        ledger.record(mac(1), sent("/images/vmlinuz"), None);
        ledger.record(mac(1), EventKind::Booted, None);
        // A `booted` posted for a host that fetched nothing (a spoofed one).
        ledger.record(mac(4), EventKind::Booted, None);
        // Not `once`: not kept.
        ledger.record(mac(2), sent("/images/vmlinuz"), None);
        ledger.record(mac(2), EventKind::Booted, None);
        let mut booted = ledger.take_booted();
        booted.sort();
        assert_eq!(booted, [(mac(1), true), (mac(4), false)]);
        assert_eq!(
            to_consume(&booted, &inv),
            Decided {
                consume: vec!["a".into()],
                unfetched: vec!["d".into()],
            }
        );
        assert!(ledger.take_booted().is_empty(), "taken once");
        // The next boot must fetch the kernel again.
        ledger.record(mac(1), EventKind::Booted, None);
        assert_eq!(ledger.take_booted(), [(mac(1), false)]);
    }

    #[tokio::test]
    async fn a_booted_reported_before_the_wait_still_wakes_it() {
        let ledger = Ledger::new(&prometheus::Registry::new()).expect("ledger");
        ledger.set_inventory(&inventory());
        ledger.record(mac(1), sent("images/vmlinuz"), None);
        ledger.record(mac(1), EventKind::Booted, None);
        // Biased: the stored wake-up is polled first; without one the test fails, not hangs.
        tokio::select! {
            biased;
            _ = ledger.wait_booted() => {}
            _ = std::future::ready(()) => panic!("a `booted` before the wait was lost"),
        }
        assert_eq!(ledger.take_booted(), [(mac(1), true)]);
    }
}
