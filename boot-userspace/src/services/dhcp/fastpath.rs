//! The DHCP service as owner of the XDP fast path: it keeps the kernel's maps in step with
//! the server ([`FastPathOwner::sync`], at attach time and on every reload) and records the
//! exchanges the kernel answered as if it had answered them itself (lease table, journal,
//! ledger: [`KernelAnswers`]). The maps and events are `xdp`'s traits, so all of it runs
//! against fakes in tests.
//!
//! The kernel's answers reach the lease table a moment after they left (the reader is woken
//! by the first answer in an empty ring and drains every [`EVENT_POLL`] or when it fills). A reload that moves or ends a
//! reservation must not judge "is the address held?" inside that moment, or it hands the
//! address to its new owner while the old one uses it. So a reload first takes the ending
//! reservations out of the kernel ([`FastPathOwner::withhold`]), then drains the ring into
//! the table under the server lock, against the generation that answered; only then does it
//! swap the inventory and judge.

use std::{collections::HashSet, net::Ipv4Addr, sync::Arc, time::Duration};

use dhcproto::v4::MessageType;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    journal::{Committer, JournalError, LeaseRecord, LeaseState},
    ledger_event,
    metrics::Metrics,
    server::Server,
    step::reply_label,
    table::LeaseTable,
    templates::derive,
    unix_now, DhcpService,
};
use crate::{
    model::{
        inventory::{Inventory, Mac},
        ledger::Ledger,
    },
    util::logs::EXCHANGE_LOG,
    xdp::fastpath::{
        FabricIface, FastPath, FastPathError, FastPathEvent, FastPathEvents, FastPathMaps,
        SyncReport,
    },
};

/// How often the XDP fast path's events are drained when the program has not asked for it.
const EVENT_POLL: Duration = Duration::from_millis(100);
/// Shortest time between two drains of the ring: at most 200 a second, however fast the
/// kernel answers, and a lone boot's answers are recorded within it.
const WAKE_GAP: Duration = Duration::from_millis(5);

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
    /// Where the kernel's answers go, once the service has attached the fast path whole.
    answers: Option<KernelAnswers>,
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
            answers: None,
        }
    }

    /// Where the kernel's answers go (none before the service attached its events).
    pub(super) fn answers(&self) -> Option<&KernelAnswers> {
        self.answers.as_ref()
    }

    /// Makes the maps hold what `server` implies now (see [`FastPathMaps::sync`]).
    pub fn sync(&mut self, server: &Server) -> Result<Synced, FastPathError> {
        self.sync_at(server, unix_now())
    }

    /// [`FastPathOwner::sync`] as of `now` (Unix seconds).
    pub fn sync_at(&mut self, server: &Server, now: u64) -> Result<Synced, FastPathError> {
        self.sync_withholding(server, &HashSet::new(), now)
    }

    /// Makes the maps hold what `server` implies, less the hosts of `macs`: the first step of
    /// a reload that ends their reservations. Once it returns, the kernel answers none of
    /// them (a program already past its lookup finishes its one reply: microseconds), so
    /// every answer it gave them is in the ring for the reload to drain.
    pub fn withhold(
        &mut self,
        server: &Server,
        macs: &HashSet<Mac>,
        now: u64,
    ) -> Result<Synced, FastPathError> {
        self.sync_withholding(server, macs, now)
    }

    fn sync_withholding(
        &mut self,
        server: &Server,
        withheld: &HashSet<Mac>,
        now: u64,
    ) -> Result<Synced, FastPathError> {
        let mut d = derive(server, &self.fabric, now);
        if !withheld.is_empty() {
            d.maps.hosts.retain(|mac, _| !withheld.contains(&Mac(*mac)));
        }
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

/// The reservations a move from `old` to `next` ends: hosts of `old` whose MAC does not hold
/// the same address in `next` (deleted, readdressed, or their address given to another MAC).
/// The kernel must stop answering them before anyone judges who holds those addresses.
pub(super) fn ending_reservations(old: &Inventory, next: &Inventory) -> HashSet<Mac> {
    old.hosts()
        .iter()
        .filter(|h| h.ip.is_some() && next.host_by_mac(&h.mac).and_then(|n| n.ip) != h.ip)
        .map(|h| h.mac)
        .collect()
}

/// Exchanges the kernel answered, taken from its ring but not yet in the journal and the
/// ledger ([`KernelAnswers::settle`] puts them there, outside the server lock).
#[derive(Default)]
#[must_use = "the answers reach the journal and ledger only when settled"]
pub(super) struct Taken {
    events: Vec<FastPathEvent>,
    records: Vec<LeaseRecord>,
}

/// Where the kernel's answers go: the lease table (under the server lock, by
/// [`KernelAnswers::take`]), then the journal and the ledger.
#[derive(Clone)]
pub(super) struct KernelAnswers {
    events: Arc<dyn FastPathEvents>,
    /// The fabric's interface names by index, for the exchange log lines.
    ifaces: Arc<std::collections::HashMap<u32, String>>,
    ledger: Ledger,
    committer: Committer,
    metrics: Metrics,
}

impl KernelAnswers {
    /// Drains the ring into `server`'s lease table. The caller holds the server lock, so no
    /// one judges a reservation between the drain and the record: a drained answer is in
    /// the table before anyone can see that it is not.
    pub(super) fn take(&self, server: &mut Server, now: u64) -> Taken {
        let mut events = Vec::new();
        self.events.drain(&mut events);
        let records = events
            .iter()
            .filter_map(|ev| {
                if repeats_live_lease(&server.table, ev, now) {
                    return None;
                }
                server.record_fast_path(ev.mac, ev.ip, ev.kind, now)
            })
            .collect();
        Taken { events, records }
    }

    /// Records taken answers in the ledger and hands their leases to the journal.
    pub(super) fn settle(&self, taken: Taken) {
        let logged = tracing::enabled!(target: EXCHANGE_LOG, tracing::Level::INFO);
        for ev in &taken.events {
            if logged {
                // The kernel's record carries no xid or file: what it answered with is the
                // host's template, the same as userspace would send. The program runs only on
                // the fabric's interfaces, whose names were known at attach.
                let iface = self.ifaces.get(&ev.ifindex).map_or("?", String::as_str);
                info!(
                    target: EXCHANGE_LOG,
                    proto = "dhcp",
                    reply = reply_label(ev.kind),
                    mac = %ev.mac,
                    ip = %ev.ip,
                    iface,
                    path = "xdp",
                    lease_s = ev.lease_secs,
                    "DHCP {} to {}",
                    reply_label(ev.kind),
                    ev.mac
                );
            }
            self.ledger
                .record(ev.mac, ledger_event(ev.kind), Some(ev.ip.into()));
        }
        // The ACKs have left already; their records follow within a second (one fdatasync
        // for a whole storm's worth). A reservation is its own durable truth meanwhile.
        if !taken.records.is_empty() {
            match self.committer.record(taken.records) {
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
        let ifaces: std::collections::HashMap<u32, String> =
            fabric.iter().map(|f| (f.ifindex, f.name.clone())).collect();
        let ifaces = Arc::new(ifaces);
        let mut owner = FastPathOwner::new(maps, fabric);
        owner.answers = events.map(|events| KernelAnswers {
            events,
            ifaces,
            ledger: self.ledger.clone(),
            committer: self.committer.clone(),
            metrics: self.metrics.clone(),
        });
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
        if let Ok(mut slot) = self.fast_path_events.lock() {
            *slot = owner.answers.clone();
        }
        if let Ok(mut slot) = self.fast_path.lock() {
            *slot = Some(owner);
        }
        Ok(report)
    }

    /// Records the exchanges the kernel answered since the last drain, as if this service
    /// had answered them: one lock of the lease table and one hand-over to the journal per
    /// batch.
    pub(super) fn on_fast_path(&self, answers: &KernelAnswers) {
        let taken = {
            let Ok(mut server) = self.server.lock() else {
                return;
            };
            answers.take(&mut server, unix_now())
        };
        answers.settle(taken);
    }

    /// Reads the fast path's events until `cancel` fires. The program wakes this task when
    /// an answer finds the ring empty (a lone boot's answers are recorded at once, before
    /// its next request) and when a quarter of the ring fills; it also drains every
    /// [`EVENT_POLL`]. Drains are at least [`WAKE_GAP`] apart: a storm costs at most one
    /// wake-up per gap, not one per packet.
    pub(super) async fn fast_path_events(
        self: Arc<Self>,
        answers: KernelAnswers,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let mut tick = tokio::time::interval(EVENT_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let events = Arc::clone(&answers.events);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.on_fast_path(&answers);
                    return Ok(());
                }
                woken = events.wakeup() => woken?,
                _ = tick.tick() => {}
            }
            self.on_fast_path(&answers);
            // The program wakes this task for the first answer in an empty ring. Under a
            // stream of kernel answers that would be a wake-up per answer, each costing more
            // than the answer: after a drain the next waits at least WAKE_GAP, and answers
            // meanwhile stay in the ring, which is then not empty, so they wake nobody.
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.on_fast_path(&answers);
                    return Ok(());
                }
                _ = tokio::time::sleep(WAKE_GAP) => {}
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
            // One sync withheld h2's ending reservation, one followed the new generation.
            assert_eq!(kernel.syncs, 3);
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
        assert_eq!(maps.0.lock().expect("fake").syncs, 3);
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
            // Both the sync that withholds h2's ending reservation and the one that follows
            // met the full map, and each emptied it.
            assert_eq!(kernel.clears, 2);
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
            events: Some(Arc::new(events.clone())),
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
            .map(|e| {
                (
                    e.kind,
                    e.ip.and_then(|ip| match ip {
                        std::net::IpAddr::V4(v4) => Some(v4),
                        _ => None,
                    }),
                )
            })
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

    /// The fake ring, which notes at every drain whether the fake kernel still answers
    /// `watch` (its host entry is in the maps).
    struct Witness {
        ring: FakeEvents,
        maps: FakeMaps,
        watch: [u8; 6],
        answered_at_drain: std::sync::Mutex<Vec<bool>>,
    }

    impl FastPathEvents for Witness {
        fn drain(&self, out: &mut Vec<FastPathEvent>) {
            let answered = self
                .maps
                .0
                .lock()
                .expect("fake")
                .hosts
                .contains_key(&self.watch);
            self.answered_at_drain
                .lock()
                .expect("witness")
                .push(answered);
            self.ring.drain(out);
        }

        fn wakeup(&self) -> crate::xdp::fastpath::Wakeup<'_> {
            self.ring.wakeup()
        }
    }

    #[test]
    fn a_kernel_lease_still_in_the_ring_holds_a_moved_reservation() {
        use crate::model::snapshot::{Live, Next};
        let t = testkit::start(dhcp(), testkit::inventory(TWO_HOSTS), &[]);
        let maps = FakeMaps::default();
        let ring = FakeEvents::default();
        let h1 = Mac([0x52, 0x54, 0, 0, 0, 1]);
        let h3 = Mac([0x52, 0x54, 0, 0, 0, 3]);
        let witness = Arc::new(Witness {
            ring: ring.clone(),
            maps: maps.clone(),
            watch: h1.0,
            answered_at_drain: std::sync::Mutex::new(Vec::new()),
        });
        let events: Arc<dyn FastPathEvents> = witness.clone();
        t.service
            .attach_fast_path(FastPath {
                maps: Box::new(maps.clone()),
                events: Some(events),
                fabric: fabric(),
            })
            .expect("attach");
        let live = Live::unregistered(Next::new(
            testkit::inventory(TWO_HOSTS),
            BootSettings::defaults(),
        ));
        live.follow(t.service.reloader().follower());

        // The kernel ACKed h1 with its reservation; no reader has drained the ring yet.
        let ip = Ipv4Addr::new(10, 0, 0, 11);
        ring.push(FastPathEvent {
            mac: h1,
            kind: MessageType::Ack,
            ip,
            ifindex: 7,
            lease_secs: 600,
        });
        // Then 10.0.0.11 moves to a new machine, h3, and h1 leaves the inventory.
        let moved = TWO_HOSTS
            .replace("52:54:00:00:00:01", "52:54:00:00:00:03")
            .replace("\"h1\"", "\"h3\"");
        live.publish(|_| {
            Ok::<_, String>(Next::new(
                testkit::inventory(&moved),
                BootSettings::defaults(),
            ))
        })
        .expect("published");

        assert_eq!(
            *witness.answered_at_drain.lock().expect("witness"),
            [false],
            "the reload drained once, after the kernel stopped answering h1"
        );
        let server = t.service.server.lock().expect("lock");
        let lease = server.table.lease_at(ip).expect("h1's lease from the ring");
        assert_eq!((lease.mac, lease.state), (h1, LeaseState::Bound));
        assert!(
            matches!(
                server.reserved(h3, 0, unix_now()),
                super::super::server::Reserved::Waits(..)
            ),
            "h3 waits for h1's lease"
        );
        let kernel = maps.0.lock().expect("fake");
        assert!(
            !kernel.hosts.contains_key(&h3.0) && !kernel.hosts.contains_key(&h1.0),
            "the kernel answers neither h1 nor h3 with 10.0.0.11"
        );
        drop((kernel, server));
        assert!(
            t.ledger
                .timeline(h1)
                .iter()
                .any(|e| e.kind == EventKind::DhcpAck && e.ip == Some(ip.into())),
            "the drained ACK reached the ledger"
        );
    }

    #[test]
    fn the_reservations_a_move_ends_are_those_whose_mac_loses_its_address() {
        let old = testkit::inventory(TWO_HOSTS);
        // h1 readdressed, h2 unchanged, h4 new.
        let next = testkit::inventory(&format!(
            "{}\n[[hosts]]\nname = \"h4\"\nmac = \"52:54:00:00:00:04\"\nip = \"10.0.0.11\"\nprofile = \"a\"\n",
            TWO_HOSTS.replace("10.0.0.11", "10.0.0.13")
        ));
        assert_eq!(
            ending_reservations(&old, &next),
            HashSet::from([Mac([0x52, 0x54, 0, 0, 0, 1])])
        );
        assert!(ending_reservations(&old, &old).is_empty());
        let none = testkit::inventory("[profiles.a]\n");
        assert_eq!(
            ending_reservations(&old, &none).len(),
            2,
            "deleted hosts end theirs"
        );
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
