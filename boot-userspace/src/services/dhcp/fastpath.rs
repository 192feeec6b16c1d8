//! The DHCP service as owner of the XDP fast path: it keeps the kernel's maps in step with
//! the server ([`FastPathOwner::sync`], at attach time and on every reload) and records the
//! exchanges the kernel answered as if it had answered them itself (lease table, journal,
//! ledger). The maps and events are `xdp`'s traits, so all of it runs against fakes in tests.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

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
    /// The reserved addresses that waited for another client's hold at the last sync: their
    /// owners are missing from the maps until the hold ends ([`FastPathOwner::resync_if_freed`]).
    waiting: Vec<Ipv4Addr>,
    /// The last sync failed and the maps were emptied: the housekeeping tick syncs again
    /// ([`FastPathOwner::resync_if_freed`]).
    failed: bool,
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
        Self {
            maps,
            fabric,
            waiting: Vec::new(),
            failed: false,
        }
    }

    /// Makes the maps hold what `server` implies now (see [`FastPathMaps::sync`]).
    pub fn sync(&mut self, server: &Server) -> Result<Synced, FastPathError> {
        self.sync_at(server, unix_now())
    }

    /// [`FastPathOwner::sync`] as of `now` (Unix seconds).
    pub fn sync_at(&mut self, server: &Server, now: u64) -> Result<Synced, FastPathError> {
        let d = derive(server, &self.fabric, now);
        self.waiting = waiting_addresses(&server.table, now);
        if d.relays_overflow {
            warn!(
                max = bootfabric_abi::dhcp::RELAYS_MAX_ENTRIES,
                "dhcp.relays has more entries than the XDP fast path checks: relayed requests are served from userspace"
            );
        }
        let written = match self.maps.sync(&d.maps) {
            Ok(w) => w,
            Err(e) => {
                // Half written maps may hold entries userspace no longer answers (a moved or
                // deleted reservation): the kernel must not answer from them. Empty, it
                // passes every request to userspace, which is always right.
                self.failed = true;
                match self.maps.clear() {
                    Ok(()) => warn!(
                        "XDP DHCP fast path: sync failed ({e}); maps emptied, userspace answers every request until a sync succeeds"
                    ),
                    Err(c) => tracing::error!(
                        "XDP DHCP fast path: sync failed ({e}) and the maps could not be emptied ({c}): the kernel may answer from stale entries"
                    ),
                }
                return Err(e);
            }
        };
        self.failed = false;
        for (name, why) in &d.skipped {
            info!(host = %name, why, "reserved host served from userspace");
        }
        Ok(Synced {
            written,
            skipped: d.skipped.len(),
        })
    }

    /// Syncs again when a reservation that waited at the last sync no longer waits the same
    /// way (its holder released it, or the lease, offer or quarantine ran out), so the kernel
    /// answers its owner as userspace now does, or when the last sync failed (the maps are
    /// empty). `None` when nothing changed; nothing to do (the usual case) costs nothing.
    pub fn resync_if_freed(
        &mut self,
        server: &Server,
        now: u64,
    ) -> Option<Result<Synced, FastPathError>> {
        if self.failed {
            return Some(self.sync_at(server, now));
        }
        if self.waiting.is_empty() || waiting_addresses(&server.table, now) == self.waiting {
            return None;
        }
        Some(self.sync_at(server, now))
    }
}

fn waiting_addresses(table: &LeaseTable, now: u64) -> Vec<Ipv4Addr> {
    table
        .waiting(now)
        .into_iter()
        .map(|(ip, _, _)| ip)
        .collect()
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
    use crate::{
        model::{
            boot::BootSettings,
            inventory::{Inventory, Mac},
            ledger::EventKind,
        },
        services::dhcp::testkit,
        xdp::fastpath::fake::{FakeEvents, FakeMaps},
    };

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

    const TWO_HOSTS: &str = r#"
[profiles.a]
[[hosts]]
name = "h1"
mac = "52:54:00:00:00:01"
ip = "10.0.0.11"
profile = "a"
[[hosts]]
name = "h2"
mac = "52:54:00:00:00:02"
ip = "10.0.0.12"
profile = "a"
"#;

    fn fabric() -> Vec<FabricIface> {
        vec![FabricIface {
            name: "fabric0".into(),
            ifindex: 7,
            server_ip: Ipv4Addr::new(10, 0, 0, 1),
            mac: [2, 0, 0, 0, 0, 1],
        }]
    }

    fn dhcp() -> crate::config::DhcpConfig {
        testkit::dhcp("10.0.0.0/24", "fabric0", "10.0.0.100-10.0.0.110")
    }

    #[test]
    fn the_maps_follow_the_server_at_attach_and_on_every_reload() {
        let t = testkit::start(dhcp(), testkit::inventory(TWO_HOSTS), &[]);
        let maps = FakeMaps::default();
        let fp = FastPath {
            maps: Box::new(maps.clone()),
            events: None,
            fabric: fabric(),
        };
        let synced = t.service.attach_fast_path(fp).expect("attach");
        assert_eq!((synced.written.hosts, synced.skipped), (2, 0));
        {
            let want = derive(
                &t.service.server.lock().expect("lock"),
                &fabric(),
                unix_now(),
            )
            .maps;
            let kernel = maps.0.lock().expect("fake");
            assert_eq!(kernel.syncs, 1);
            assert_eq!(
                kernel.hosts, want.hosts,
                "the kernel holds what derive says"
            );
            assert_eq!(kernel.templates.len(), want.templates.len());
            assert_eq!(kernel.relays, want.relays);
        }

        // h2 leaves the inventory: its entry leaves the kernel. Reloads go through the
        // snapshot the service follows, as SIGHUP's do.
        use crate::model::snapshot::{Live, Next, PublishError};
        let first = Next::new(testkit::inventory(TWO_HOSTS), BootSettings::defaults());
        let live = Live::unregistered(first);
        let follower = t.service.reloader().follower();
        live.follow(follower.clone());
        let reload = |dhcp: Option<&crate::config::DhcpConfig>, inventory| {
            live.publish(|_| {
                follower.stage(dhcp)?;
                Ok::<_, super::super::ReloadError>(Next::new(inventory, BootSettings::defaults()))
            })
        };
        let one_host = TWO_HOSTS
            .split("[[hosts]]")
            .take(2)
            .collect::<Vec<_>>()
            .join("[[hosts]]");
        reload(Some(&dhcp()), testkit::inventory(&one_host)).expect("reload");
        {
            let kernel = maps.0.lock().expect("fake");
            assert_eq!(kernel.syncs, 2);
            assert_eq!(
                kernel.hosts.keys().collect::<Vec<_>>(),
                [&[0x52, 0x54, 0, 0, 0, 1]]
            );
        }

        // Refused reloads leave the server, the kernel and the generation as they were.
        let other = testkit::dhcp("10.9.0.0/24", "fabric0", "10.9.0.100-10.9.0.110");
        let Err(PublishError::Build(e)) = reload(Some(&other), testkit::inventory(TWO_HOSTS))
        else {
            panic!("subnets changed, yet published");
        };
        assert_eq!(
            e.to_string(),
            "dhcp.subnets or dhcp.mode changed: restart to apply"
        );
        let Err(PublishError::Build(e)) = reload(None, testkit::inventory(TWO_HOSTS)) else {
            panic!("no [dhcp], yet published");
        };
        assert_eq!(
            e.to_string(),
            "the reloaded config has no [dhcp]; restart to remove the server"
        );
        assert_eq!(live.generation(), 2);
        assert_eq!(maps.0.lock().expect("fake").syncs, 2);
        let server = t.service.server.lock().expect("lock");
        assert_eq!(
            server.inventory.hosts().len(),
            1,
            "the refused reloads' two hosts were not taken"
        );
        assert_eq!(server.dhcp.subnets[0].net, dhcp().subnets[0].net);
    }

    /// `TWO_HOSTS` with a `meta.role` on each host, which the `role.cfg` template needs.
    fn with_roles() -> String {
        TWO_HOSTS.replace(
            "profile = \"a\"",
            "profile = \"a\"\nmeta = { role = \"w\" }",
        )
    }

    #[test]
    fn a_refused_reload_leaves_no_dhcp_section_for_a_later_publish_to_apply() {
        use crate::model::{
            render::Templates,
            snapshot::{Live, Next, PublishError},
        };
        let t = testkit::start(dhcp(), testkit::inventory(&with_roles()), &[]);
        let templates = std::sync::Arc::new(
            Templates::from_texts([("role.cfg", "{{ meta.role }}\n")]).expect("compile"),
        );
        let first = Next::new(testkit::inventory(&with_roles()), BootSettings::defaults())
            .with_templates(templates);
        let live = Live::unregistered(first);
        let follower = t.service.reloader().follower();
        live.follow(follower.clone());
        // A SIGHUP whose file narrows dhcp.relays, but whose hosts lost the meta a template
        // needs: staged, then refused by the templates.
        let mut narrowed = dhcp();
        narrowed.guards.relays = Some(vec!["10.9.9.9/32".parse().expect("net")]);
        let refused = live.publish(|_| {
            follower.stage(Some(&narrowed))?;
            Ok::<_, super::super::ReloadError>(Next::new(
                testkit::inventory(TWO_HOSTS),
                BootSettings::defaults(),
            ))
        });
        assert!(
            matches!(refused, Err(PublishError::Templates(_))),
            "{refused:?}"
        );
        // An API write afterwards stages nothing: the running section stays.
        live.publish(|_| {
            Ok::<_, String>(Next::new(
                testkit::inventory(&with_roles()),
                BootSettings::defaults(),
            ))
        })
        .expect("published");
        assert_eq!(live.generation(), 2);
        let server = t.service.server.lock().expect("lock");
        assert_eq!(
            server.dhcp.guards.relays, None,
            "the refused reload's relays were not applied"
        );
    }

    #[test]
    fn a_failed_map_sync_empties_the_maps_and_claims_no_generation() {
        use crate::model::snapshot::{Live, Next};
        let t = testkit::start(dhcp(), testkit::inventory(TWO_HOSTS), &[]);
        let maps = FakeMaps::default();
        let fp = FastPath {
            maps: Box::new(maps.clone()),
            events: None,
            fabric: fabric(),
        };
        t.service.attach_fast_path(fp).expect("attach");
        let registry = prometheus::Registry::new();
        let live = Live::new(
            Next::new(testkit::inventory(TWO_HOSTS), BootSettings::defaults()),
            &registry,
        )
        .expect("live");
        live.follow(t.service.reloader().follower());
        let applied = || {
            registry
                .gather()
                .iter()
                .filter(|f| f.name() == "bootfabric_config_generation_applied")
                .flat_map(|f| f.get_metric().iter())
                .map(|m| m.get_gauge().get_value() as i64)
                .next()
        };
        // h2 is deleted and h3 added; the kernel's hosts map refuses the first insert.
        maps.0.lock().expect("fake").fail_after_hosts = Some(0);
        let h3 = TWO_HOSTS.replace("\"h2\"", "\"h3\"").replace(":02", ":03");
        live.publish(|_| {
            Ok::<_, String>(Next::new(testkit::inventory(&h3), BootSettings::defaults()))
        })
        .expect("published: userspace follows");
        {
            let kernel = maps.0.lock().expect("fake");
            assert_eq!(kernel.clears, 1);
            assert!(
                kernel.hosts.is_empty() && kernel.templates.is_empty(),
                "no entry left for the kernel to answer from: {:?}",
                kernel.hosts.keys().collect::<Vec<_>>()
            );
        }
        assert_eq!(live.generation(), 2);
        assert_eq!(applied(), Some(1), "the maps did not take generation 2");
        // The housekeeping tick syncs again once the map takes inserts.
        maps.0.lock().expect("fake").fail_after_hosts = None;
        let server = t.service.server.lock().expect("lock");
        let mut slot = t.service.fast_path.lock().expect("lock");
        let owner = slot.as_mut().expect("attached");
        let synced = owner
            .resync_if_freed(&server, unix_now())
            .expect("a failed sync is retried")
            .expect("sync");
        assert_eq!(synced.written.hosts, 2);
        let kernel = maps.0.lock().expect("fake");
        assert!(kernel.hosts.contains_key(&[0x52, 0x54, 0, 0, 0, 3]));
        assert!(!kernel.hosts.contains_key(&[0x52, 0x54, 0, 0, 0, 2]));
        drop(kernel);
        assert!(owner.resync_if_freed(&server, unix_now()).is_none());
    }

    #[test]
    fn a_waiting_reservation_reaches_the_kernel_when_its_holder_lets_go() {
        // h1 (52:54:00:00:00:01) owns 10.0.0.11, but 52:54:00:00:00:09 still holds it.
        let mut server = Server::new(
            dhcp(),
            BootSettings::defaults(),
            testkit::inventory(TWO_HOSTS),
            &[LeaseRecord {
                ip: Ipv4Addr::new(10, 0, 0, 11),
                mac: Mac([0x52, 0x54, 0, 0, 0, 9]),
                state: LeaseState::Bound,
                expires: 1000,
                hostname: None,
            }],
            0,
        );
        let maps = FakeMaps::default();
        let mut owner = FastPathOwner::new(Box::new(maps.clone()), fabric());
        let h1 = [0x52, 0x54, 0, 0, 0, 1];
        let synced = owner.sync_at(&server, 10).expect("sync");
        assert_eq!((synced.written.hosts, synced.skipped), (1, 1));
        assert!(!maps.0.lock().expect("fake").hosts.contains_key(&h1));
        assert!(owner.resync_if_freed(&server, 500).is_none(), "still held");
        // The lease runs out: the next tick puts h1 in the kernel.
        let synced = owner
            .resync_if_freed(&server, 1000)
            .expect("freed")
            .expect("sync");
        assert_eq!((synced.written.hosts, synced.skipped), (2, 0));
        assert!(maps.0.lock().expect("fake").hosts.contains_key(&h1));
        assert!(
            owner.resync_if_freed(&server, 2000).is_none(),
            "nothing waits"
        );
        // A release frees it as well.
        server.table.apply(&LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 12),
            mac: Mac([0x52, 0x54, 0, 0, 0, 8]),
            state: LeaseState::Bound,
            expires: 5000,
            hostname: None,
        });
        assert_eq!(owner.sync_at(&server, 2000).expect("sync").skipped, 1);
        server.table.apply(&LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, 12),
            mac: Mac([0x52, 0x54, 0, 0, 0, 8]),
            state: LeaseState::Released,
            expires: 0,
            hostname: None,
        });
        let synced = owner
            .resync_if_freed(&server, 2001)
            .expect("freed")
            .expect("sync");
        assert_eq!(synced.skipped, 0);
        assert_eq!(maps.0.lock().expect("fake").hosts.len(), 2);
    }

    #[tokio::test]
    async fn exchanges_the_kernel_answered_reach_the_lease_table_and_the_ledger() {
        let t = testkit::start(dhcp(), testkit::inventory(TWO_HOSTS), &[]);
        let events = FakeEvents::default();
        let fp = FastPath {
            maps: Box::new(FakeMaps::default()),
            events: Some(Box::new(events.clone())),
            fabric: fabric(),
        };
        t.service.attach_fast_path(fp).expect("attach");
        let reader = t
            .service
            .fast_path_events
            .lock()
            .expect("lock")
            .take()
            .expect("the events wait for their reader");
        let service = Arc::new(t.service);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&service).fast_path_events(reader, cancel.clone()));

        let h1 = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let ip = Ipv4Addr::new(10, 0, 0, 11);
        let offer = FastPathEvent {
            mac: h1,
            kind: MessageType::Offer,
            ip,
            ifindex: 7,
            lease_secs: 600,
        };
        events.push(offer);
        events.push(FastPathEvent {
            kind: MessageType::Ack,
            ..offer
        });
        // Whatever the reader has not drained yet, it drains when cancelled.
        cancel.cancel();
        task.await.expect("join").expect("reader");

        let kinds: Vec<(EventKind, Option<Ipv4Addr>)> = t
            .ledger
            .timeline(h1)
            .into_iter()
            .map(|e| (e.kind, e.ip))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventKind::DhcpOffer, Some(ip)),
                (EventKind::DhcpAck, Some(ip))
            ]
        );
        let server = service.server.lock().expect("lock");
        let lease = server.table.lease_at(ip).expect("a lease");
        assert_eq!((lease.mac, lease.state), (h1, LeaseState::Bound));
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
