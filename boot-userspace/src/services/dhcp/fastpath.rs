//! The DHCP service as owner of the XDP fast path: it keeps the kernel's maps in step with
//! the server ([`FastPathOwner::sync`], at attach time and on every reload) and records the
//! exchanges the kernel answered as if it had answered them itself (lease table, journal,
//! ledger). The maps and events are `xdp`'s traits, so all of it runs against fakes in tests.

use std::{sync::Arc, time::Duration};

use dhcproto::v4::MessageType;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    journal::{JournalError, LeaseRecord, LeaseState},
    ledger_event,
    server::Server,
    table::LeaseTable,
    templates::derive,
    unix_now, DhcpService,
};
use crate::xdp::fastpath::{
    FabricIface, FastPath, FastPathError, FastPathEvent, FastPathEvents, FastPathMaps, SyncReport,
};

/// How often the XDP fast path's events are drained when the program has not asked for it.
const EVENT_POLL: Duration = Duration::from_millis(100);

/// The fast path's maps with the interfaces they serve, owned by the DHCP service.
pub struct FastPathOwner {
    maps: Box<dyn FastPathMaps>,
    fabric: Vec<FabricIface>,
}

/// What a sync did: what the maps hold now, and how many reserved hosts stay with userspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Synced {
    /// What was written.
    pub written: SyncReport,
    /// Reserved hosts left to userspace.
    pub skipped: usize,
}

impl FastPathOwner {
    /// The owner of `maps`, serving `fabric`.
    pub fn new(maps: Box<dyn FastPathMaps>, fabric: Vec<FabricIface>) -> Self {
        Self { maps, fabric }
    }

    /// Makes the maps hold what `server` implies (see [`FastPathMaps::sync`]).
    pub fn sync(&mut self, server: &Server) -> Result<Synced, FastPathError> {
        let d = derive(server, &self.fabric);
        if d.relays_overflow {
            warn!(
                max = bootfabric_abi::dhcp::RELAYS_MAX_ENTRIES,
                "dhcp.relays has more entries than the XDP fast path checks: relayed requests are served from userspace"
            );
        }
        let written = self.maps.sync(&d.maps)?;
        for (name, why) in &d.skipped {
            info!(host = %name, why, "reserved host served from userspace");
        }
        Ok(Synced {
            written,
            skipped: d.skipped.len(),
        })
    }
}

impl DhcpService {
    /// Hands the service the XDP fast path: its maps are filled from this server's
    /// configuration now and on every reload, and its events feed the lease table and the
    /// ledger while the service runs.
    pub fn attach_fast_path(&self, fp: FastPath) -> Result<Synced, FastPathError> {
        let FastPath {
            maps,
            events,
            fabric,
        } = fp;
        let mut owner = FastPathOwner::new(maps, fabric);
        let report = {
            let server = self.server.lock().map_err(|_| FastPathError::Poisoned)?;
            owner.sync(&server)?
        };
        info!(
            hosts = report.written.hosts,
            templates = report.written.templates,
            userspace_only = report.skipped,
            "XDP DHCP fast path: {} reserved hosts answered in the kernel",
            report.written.hosts
        );
        if let Ok(mut slot) = self.fast_path.lock() {
            *slot = Some(owner);
        }
        if let Ok(mut slot) = self.fast_path_events.lock() {
            *slot = events;
        }
        Ok(report)
    }

    /// Records exchanges the kernel answered, as if this service had answered them: one
    /// lock of the lease table and one hand-over to the journal per batch.
    pub(super) fn on_fast_path(&self, events: &[FastPathEvent]) {
        let now = unix_now();
        let records: Vec<LeaseRecord> = {
            let Ok(mut server) = self.server.lock() else {
                return;
            };
            events
                .iter()
                .filter_map(|ev| {
                    if repeats_live_lease(&server.table, ev, now) {
                        return None;
                    }
                    server.record_fast_path(ev.mac, ev.ip, ev.kind, now)
                })
                .collect()
        };
        for ev in events {
            self.ledger
                .record(ev.mac, ledger_event(ev.kind), Some(ev.ip));
        }
        // The ACKs have left already; their records follow within a second (one fdatasync
        // for a whole storm's worth). A reservation is its own durable truth meanwhile.
        if !records.is_empty() {
            match self.committer.record(records) {
                Ok(()) => {}
                Err(JournalError::QueueFull(_)) => self
                    .metrics
                    .commit_refused
                    .with_label_values(&["queue_full"])
                    .inc(),
                Err(_) => self.metrics.commit_errors.inc(),
            }
        }
    }

    /// Reads the fast path's events until `cancel` fires. The program wakes this task only
    /// when a quarter of the ring is full; otherwise it drains every [`EVENT_POLL`], so a
    /// storm costs a wake-up per batch, not per packet.
    pub(super) async fn fast_path_events(
        self: Arc<Self>,
        mut events: Box<dyn FastPathEvents>,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let mut tick = tokio::time::interval(EVENT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    events.drain(&mut batch);
                    self.on_fast_path(&batch);
                    return Ok(());
                }
                woken = events.wakeup() => {
                    woken?;
                    events.drain(&mut batch);
                }
                _ = tick.tick() => events.drain(&mut batch),
            }
            if !batch.is_empty() {
                self.on_fast_path(&batch);
                batch.clear();
            }
        }
    }
}

/// Whether `ev` is an ACK the journal already holds: the live record binds the same address
/// to the same MAC, and less than half of the lease `ev` grants has run since (the record
/// expires later than `now` plus half of it, and no later than a new one would). Such a
/// record would change nothing a restart needs, so neither the table nor the journal takes
/// it: both keep the durable expiry, and the client's renewal at half its lease is recorded.
fn repeats_live_lease(table: &LeaseTable, ev: &FastPathEvent, now: u64) -> bool {
    if ev.kind != MessageType::Ack || ev.lease_secs == 0 {
        return false;
    }
    let lease = u64::from(ev.lease_secs);
    table.lease_at(ev.ip).is_some_and(|l| {
        l.mac == ev.mac
            && l.state == LeaseState::Bound
            && l.expires > now + lease / 2
            && l.expires <= now + lease
    })
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use super::*;
    use crate::model::inventory::{Inventory, Mac};

    fn table(expires: u64) -> LeaseTable {
        let inventory =
            Inventory::from_wire(Path::new("hosts.toml"), toml::from_str("").expect("toml"))
                .expect("inventory");
        let record = LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 11),
            mac: Mac([2, 0, 0, 0, 0, 1]),
            state: LeaseState::Bound,
            expires,
            hostname: None,
        };
        LeaseTable::new(&[], &inventory, &[record], 0)
    }

    fn ack(mac: u8, ip: u8, lease_secs: u32) -> FastPathEvent {
        FastPathEvent {
            mac: Mac([2, 0, 0, 0, 0, mac]),
            kind: MessageType::Ack,
            ip: Ipv4Addr::new(10, 0, 0, ip),
            ifindex: 1,
            lease_secs,
        }
    }

    #[test]
    fn an_ack_repeating_the_live_lease_in_its_first_half_is_not_journalled_again() {
        // Bound at 1000 for 600 s: expires 1600.
        let t = table(1600);
        assert!(repeats_live_lease(&t, &ack(1, 11, 600), 1000));
        assert!(repeats_live_lease(&t, &ack(1, 11, 600), 1299));
        // Half the lease has run: the renewal is recorded.
        assert!(!repeats_live_lease(&t, &ack(1, 11, 600), 1300));
        // Another MAC or address, an OFFER, an unknown lease time: recorded.
        assert!(!repeats_live_lease(&t, &ack(2, 11, 600), 1000));
        assert!(!repeats_live_lease(&t, &ack(1, 12, 600), 1000));
        let offer = FastPathEvent {
            kind: MessageType::Offer,
            ..ack(1, 11, 600)
        };
        assert!(!repeats_live_lease(&t, &offer, 1000));
        assert!(!repeats_live_lease(&t, &ack(1, 11, 0), 1000));
        // A shorter lease than the live record's: recorded, so the journal shortens it.
        assert!(!repeats_live_lease(&t, &ack(1, 11, 300), 1000));
        // A longer one whose first half outlasts the live record: recorded.
        assert!(!repeats_live_lease(&t, &ack(1, 11, 3600), 1000));
    }
}
