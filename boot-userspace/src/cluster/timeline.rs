//! The shared boot timeline: every event this fabric's ledger records for a host is also
//! written to etcd, so any fabric (and the admin API on any fabric) shows the host's whole
//! boot, e.g. DHCP from fabric A, then the kernel over HTTP from fabric B after A died.
//!
//! Keys: `<prefix>/timeline/<mac>/<unix_ms, 13 digits>-<fabric>-<seq, 10 digits>`, JSON
//! [`SharedEntry`]. Keys of one host sort by time, so a read is one ranged get, newest first.
//!
//! The boot path never waits on etcd: [`Share::offer`] (the ledger's [`Tap`]) only checks a
//! budget and queues into a bounded channel; a full queue drops the entry and counts it.
//! [`Share::run`] writes what is queued in batched transactions (at most [`BATCH`] puts).
//!
//! Retention: every entry is put under the lease of its write window (one hour of event
//! time), granted with a TTL of `cluster.timeline_retention_h` plus one window; etcd deletes
//! a whole window's entries when that lease runs out, so entries live between the retention
//! and the retention plus an hour, and about `retention / 1 h + 1` leases are alive at
//! once. Nothing has to sweep, and a fabric that dies leaves nothing behind for long.
//!
//! Hostile network: anyone on the provisioning network can make up MACs and make events.
//! [`Budget`] bounds what reaches etcd per window of each fabric: [`PER_HOST`] entries per
//! inventory host, [`UNKNOWN`] entries shared by every MAC outside the inventory, and
//! [`WINDOW_TOTAL`] in all; what goes over is dropped and counted. So one fabric writes at
//! most `WINDOW_TOTAL` entries per hour (about 250 bytes each, 1 KiB at the very worst:
//! at most ~10 MB/h, ~250 MB alive at the default retention), whatever the network sends.
//! Expired keys leave etcd's history only when etcd compacts: run the members with
//! `--auto-compaction-retention`. What stays exhaustible: the unknown
//! budget itself (a flood of invented MACs spends it, hiding real unknown machines' entries
//! for the rest of the hour), and an inventory host's own [`PER_HOST`] (a machine spoofing
//! an inventory MAC spends that host's budget); both only in the shared view, the local
//! ledger keeps everything as before.
//!
//! Pure here: the key layout ([`entry_key`]), the budget and the merge of a host's local and
//! shared entries ([`merge`]). The I/O shell is [`Share::run`] and [`Reader::host`].

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use etcd_client::{GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Cluster, ClusterError};
use crate::model::{
    inventory::Mac,
    ledger::{Event, Phase, Tap},
};

/// The key kind: `<prefix>/timeline/`.
pub const KIND: &str = "timeline";
/// Event time covered by one lease, in milliseconds.
pub const WINDOW_MS: u64 = 3_600_000;
/// Entries one inventory host may share per window from one fabric: a whole boot is about
/// ten events, so three boots (and retries) an hour fit.
pub const PER_HOST: u32 = 32;
/// Entries all MACs outside the inventory may share per window from one fabric, together.
pub const UNKNOWN: u32 = 256;
/// Entries one fabric shares per window in all: a rack of 100 hosts rebooted ten times an
/// hour, at most about 10 MB an hour (an entry is about 250 bytes, 1 KiB at the very worst).
pub const WINDOW_TOTAL: u32 = 10_000;
/// Entries waiting for etcd; beyond this the newest are dropped (and counted).
pub const QUEUE: usize = 4096;
/// Puts per transaction (etcd refuses more than `--max-txn-ops`, 128 by default).
pub const BATCH: usize = 64;
/// Shared entries of one host read for a view (the newest).
pub const READ_MAX: i64 = 256;

/// One entry of a host's shared timeline, as stored in etcd (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedEntry {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The fabric that recorded it.
    pub fabric: String,
    /// That fabric's sequence number (unique with `at_ms` within one fabric).
    pub seq: u64,
    /// The phase, as [`Phase::as_str`] labels it.
    #[serde(with = "phase_label")]
    pub phase: Phase,
    /// The address involved, if any.
    pub ip: Option<IpAddr>,
    /// What it concerned (the ledger's `detail`, at most `DETAIL_MAX` bytes).
    pub detail: Option<String>,
}

/// [`Phase`] as its label in JSON; an unknown label (a newer fabric's) does not parse.
mod phase_label {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::model::ledger::Phase;

    pub fn serialize<S: Serializer>(p: &Phase, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Phase, D::Error> {
        let s = String::deserialize(d)?;
        Phase::from_label(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown phase {s:?}")))
    }
}

/// `dir` (`<prefix>/timeline/`) + the folder of `mac`'s entries.
pub fn host_dir(dir: &str, mac: Mac) -> String {
    format!("{dir}{mac}/")
}

/// The key of `entry` for `mac` under `dir`: fixed-width numbers, so keys sort by time.
pub fn entry_key(dir: &str, mac: Mac, entry: &SharedEntry) -> String {
    format!(
        "{}{:013}-{}-{:010}",
        host_dir(dir, mac),
        entry.at_ms,
        entry.fabric,
        entry.seq
    )
}

/// Why an entry was not shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its host (or the unknown MACs together) spent its budget of the window.
    Budget,
}

/// What one fabric may still share in the current window ([`WINDOW_MS`] of event time).
/// Its memory is bounded by the inventory: only inventory MACs get a counter of their own.
#[derive(Debug, Default)]
pub struct Budget {
    window: u64,
    per_host: HashMap<Mac, u32>,
    unknown: u32,
    total: u32,
}

impl Budget {
    /// Spends one entry of `mac`'s budget (`known`: an inventory host) for an event at
    /// `at_ms`, or says why not. A new window starts every budget afresh.
    pub fn admit(&mut self, mac: Mac, known: bool, at_ms: u64) -> Result<(), Refused> {
        let window = at_ms / WINDOW_MS;
        if window != self.window {
            self.window = window;
            self.per_host.clear();
            self.unknown = 0;
            self.total = 0;
        }
        if self.total >= WINDOW_TOTAL {
            return Err(Refused::Budget);
        }
        if known {
            let used = self.per_host.entry(mac).or_default();
            if *used >= PER_HOST {
                return Err(Refused::Budget);
            }
            *used += 1;
        } else {
            if self.unknown >= UNKNOWN {
                return Err(Refused::Budget);
            }
            self.unknown += 1;
        }
        self.total += 1;
        Ok(())
    }
}

/// One entry of a host's merged timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedEntry {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The fabric that recorded it.
    pub fabric: String,
    /// The phase.
    pub phase: Phase,
    /// The address involved, if any.
    pub ip: Option<IpAddr>,
    /// What it concerned.
    pub detail: Option<String>,
}

/// `local` (this fabric's ledger, oldest first) and `shared` (etcd's, any order) as one
/// timeline, oldest first, each entry naming its fabric. The local ledger is this fabric's
/// authority: etcd's copies of this fabric's entries are only kept from before the oldest
/// local one (an earlier run's, or ones the ledger's bounded timeline has let go), so no
/// entry shows twice.
pub fn merge(me: &str, local: &[Event], shared: Vec<SharedEntry>) -> Vec<MergedEntry> {
    let oldest_local = local.first().map_or(u64::MAX, |e| e.at_ms);
    let mut out: Vec<(u64, MergedEntry)> = shared
        .into_iter()
        .filter(|s| s.fabric != me || s.at_ms < oldest_local)
        .map(|s| {
            (
                s.seq,
                MergedEntry {
                    at_ms: s.at_ms,
                    fabric: s.fabric,
                    phase: s.phase,
                    ip: s.ip,
                    detail: s.detail,
                },
            )
        })
        .collect();
    out.extend(local.iter().enumerate().map(|(i, e)| {
        (
            i as u64,
            MergedEntry {
                at_ms: e.at_ms,
                fabric: me.to_owned(),
                phase: e.phase(),
                ip: e.ip,
                detail: e.kind.detail(),
            },
        )
    }));
    // Same millisecond: by fabric, then in each fabric's own order.
    out.sort_by(|(sa, a), (sb, b)| (a.at_ms, &a.fabric, sa).cmp(&(b.at_ms, &b.fabric, sb)));
    out.into_iter().map(|(_, e)| e).collect()
}

/// `bootfabric_cluster_timeline_writes_total{outcome}`.
#[derive(Clone)]
struct Metrics {
    ok: IntCounter,
    error: IntCounter,
    dropped_queue: IntCounter,
    dropped_budget: IntCounter,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let writes = IntCounterVec::new(
            Opts::new(
                "bootfabric_cluster_timeline_writes_total",
                "Boot-timeline entries shared through etcd, by outcome: ok (written), error \
                 (etcd refused or did not answer), dropped_queue (the queue to etcd was \
                 full), dropped_budget (the host's or the unknown MACs' hourly budget was spent).",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(writes.clone()))?;
        Ok(Self {
            ok: writes.with_label_values(&["ok"]),
            error: writes.with_label_values(&["error"]),
            dropped_queue: writes.with_label_values(&["dropped_queue"]),
            dropped_budget: writes.with_label_values(&["dropped_budget"]),
        })
    }
}

/// One entry waiting for etcd.
struct Pending {
    mac: Mac,
    entry: SharedEntry,
}

/// The sending side: the ledger's [`Tap`] in cluster mode.
pub struct Share {
    fabric: String,
    seq: AtomicU64,
    budget: Mutex<Budget>,
    tx: mpsc::Sender<Pending>,
    metrics: Metrics,
}

/// The writing side, to run until the daemon stops ([`Writer::run`]).
pub struct Writer {
    cluster: Cluster,
    rx: mpsc::Receiver<Pending>,
    metrics: Metrics,
    /// Lease TTL: the retention plus one window.
    lease_ttl: Duration,
}

impl Share {
    /// A share of `cluster`'s fabric keeping entries `retention`, its metrics in `registry`,
    /// and the writer that empties its queue into etcd.
    pub fn new(
        cluster: Cluster,
        retention: Duration,
        registry: &Registry,
    ) -> Result<(Arc<Self>, Writer), prometheus::Error> {
        let metrics = Metrics::new(registry)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let share = Arc::new(Self {
            fabric: cluster.name().to_owned(),
            seq: AtomicU64::new(0),
            budget: Mutex::new(Budget::default()),
            tx,
            metrics: metrics.clone(),
        });
        let writer = Writer {
            cluster,
            rx,
            metrics,
            lease_ttl: retention + Duration::from_millis(WINDOW_MS),
        };
        Ok((share, writer))
    }
}

impl Tap for Share {
    fn offer(&self, mac: Mac, known: bool, event: &Event) {
        let admitted = self.budget.lock().map_or(Err(Refused::Budget), |mut b| {
            b.admit(mac, known, event.at_ms)
        });
        if admitted.is_err() {
            self.metrics.dropped_budget.inc();
            return;
        }
        let entry = SharedEntry {
            at_ms: event.at_ms,
            fabric: self.fabric.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            phase: event.phase(),
            ip: event.ip,
            detail: event.kind.detail(),
        };
        if self.tx.try_send(Pending { mac, entry }).is_err() {
            self.metrics.dropped_queue.inc();
        }
    }
}

impl Writer {
    /// Writes queued entries to etcd until `cancel`, in transactions of at most [`BATCH`]
    /// puts. A failed batch is counted and not retried (the queue keeps filling meanwhile,
    /// and drops when full); the next attempt waits a backoff, up to 30 s.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut leases: Leases = Leases::default();
        let mut backoff = Duration::ZERO;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if !backoff.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
            let first = tokio::select! {
                _ = cancel.cancelled() => return,
                p = self.rx.recv() => p,
            };
            let Some(first) = first else { return };
            batch.push(first);
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            match self.write(&mut leases, &batch).await {
                Ok(()) => {
                    self.metrics.ok.inc_by(n);
                    backoff = Duration::ZERO;
                }
                Err(e) => {
                    self.metrics.error.inc_by(n);
                    // A lease may be what failed (revoked, or expired while etcd was away):
                    // the next batch asks for fresh ones.
                    leases = Leases::default();
                    backoff = (backoff * 2).clamp(Duration::from_millis(500), MAX_BACKOFF);
                    warn!(error = %e, entries = n, "cannot share boot-timeline entries through etcd");
                }
            }
            batch.clear();
        }
    }

    /// One transaction putting `batch`, each entry under its window's lease.
    async fn write(&self, leases: &mut Leases, batch: &[Pending]) -> Result<(), ClusterError> {
        let c = &self.cluster;
        let dir = c.dir(KIND);
        let mut ops = Vec::with_capacity(batch.len());
        for p in batch {
            let lease = leases
                .get(c, p.entry.at_ms / WINDOW_MS, self.lease_ttl)
                .await?;
            let key = entry_key(&dir, p.mac, &p.entry);
            let value = serde_json::to_vec(&p.entry).map_err(|e| ClusterError::Record {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            ops.push(TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        let mut client = c.client();
        c.bounded(client.txn(Txn::new().and_then(ops))).await?;
        Ok(())
    }
}

/// Longest pause after a failed write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The leases of the windows written to lately (two at most: the current window, and the
/// one before for late events).
#[derive(Default)]
struct Leases {
    by_window: Vec<(u64, i64)>,
}

impl Leases {
    async fn get(&mut self, c: &Cluster, window: u64, ttl: Duration) -> Result<i64, ClusterError> {
        if let Some((_, id)) = self.by_window.iter().find(|(w, _)| *w == window) {
            return Ok(*id);
        }
        let mut client = c.client();
        let ttl_s = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let id = c.bounded(client.lease_grant(ttl_s, None)).await?.id();
        debug!(window, lease = id, "boot-timeline lease granted");
        self.by_window.retain(|(w, _)| *w + 1 >= window);
        self.by_window.push((window, id));
        Ok(id)
    }
}

/// Reads hosts' shared timelines (the admin API's views). Cheap to clone.
#[derive(Clone)]
pub struct Reader {
    cluster: Cluster,
}

impl Reader {
    /// A reader of `cluster`'s shared timelines.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }

    /// This fabric's name (what its own entries say).
    pub fn fabric(&self) -> &str {
        self.cluster.name()
    }

    /// The newest [`READ_MAX`] shared entries of `mac`, every fabric's, in key (time) order.
    /// Entries that do not parse (a newer fabric's phase, a hand-written key) are skipped.
    pub async fn host(&self, mac: Mac) -> Result<Vec<SharedEntry>, ClusterError> {
        let c = &self.cluster;
        let dir = host_dir(&c.dir(KIND), mac);
        let mut client = c.client();
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(READ_MAX);
        let resp = c.bounded(client.get(dir.as_str(), Some(options))).await?;
        let mut out: Vec<SharedEntry> = resp
            .kvs()
            .iter()
            .filter_map(|kv| match serde_json::from_slice(kv.value()) {
                Ok(e) => Some(e),
                Err(e) => {
                    debug!(key = %String::from_utf8_lossy(kv.key()), error = %e, "skipping a shared timeline entry");
                    None
                }
            })
            .collect();
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ledger::EventKind;

    const M: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);

    fn shared(at_ms: u64, fabric: &str, seq: u64, phase: Phase) -> SharedEntry {
        SharedEntry {
            at_ms,
            fabric: fabric.into(),
            seq,
            phase,
            ip: None,
            detail: None,
        }
    }

    #[test]
    fn keys_sort_by_time_and_name_the_host_and_the_fabric() {
        let dir = "/bootfabric/timeline/";
        let early = entry_key(dir, M, &shared(999, "fab-b", 7, Phase::DhcpAck));
        let late = entry_key(dir, M, &shared(1_000, "fab-a", 0, Phase::HttpSent));
        assert_eq!(
            early,
            "/bootfabric/timeline/52:54:00:00:00:01/0000000000999-fab-b-0000000007"
        );
        assert!(early < late, "fixed-width times sort as numbers");
        assert!(early.starts_with(&host_dir(dir, M)));
        // One host's folder is never a prefix of another's.
        let other = Mac([0x52, 0x54, 0, 0, 0, 0x10]);
        assert!(!entry_key(dir, other, &shared(1, "f", 0, Phase::Booted))
            .starts_with(&host_dir(dir, M)));
    }

    #[test]
    fn an_entry_round_trips_through_json_and_an_unknown_phase_does_not_parse() {
        let mut e = shared(5, "fab-a", 1, Phase::ConfigServed);
        e.ip = Some(std::net::Ipv4Addr::new(10, 0, 0, 5).into());
        e.detail = Some("web.cfg".into());
        let json = serde_json::to_string(&e).expect("json");
        assert!(json.contains("\"phase\":\"config_served\""), "{json}");
        assert_eq!(
            serde_json::from_str::<SharedEntry>(&json).expect("parse"),
            e
        );
        let bad = json.replace("config_served", "warp_drive");
        assert!(serde_json::from_str::<SharedEntry>(&bad).is_err());
    }

    #[test]
    fn the_merge_orders_by_time_names_fabrics_and_shows_nothing_twice() {
        let local = vec![
            Event {
                at_ms: 3_000,
                ip: None,
                kind: EventKind::IpxeScript {
                    path: "/boot.ipxe".into(),
                },
            },
            Event {
                at_ms: 4_000,
                ip: None,
                kind: EventKind::HttpSent {
                    path: "linux/vmlinuz".into(),
                    bytes: 10,
                },
            },
        ];
        let etcd = vec![
            // An earlier run of this fabric: kept (the ledger lost it).
            shared(500, "fab-b", 0, Phase::Booted),
            shared(1_000, "fab-a", 0, Phase::DhcpOffer),
            shared(1_000, "fab-a", 1, Phase::DhcpAck),
            // This fabric's copies of what the ledger still has: dropped.
            shared(3_000, "fab-b", 0, Phase::IpxeScript),
            shared(4_000, "fab-b", 1, Phase::HttpSent),
            shared(3_500, "fab-a", 2, Phase::HttpStarted),
        ];
        let merged = merge("fab-b", &local, etcd);
        let got: Vec<(u64, &str, Phase)> = merged
            .iter()
            .map(|e| (e.at_ms, e.fabric.as_str(), e.phase))
            .collect();
        assert_eq!(
            got,
            [
                (500, "fab-b", Phase::Booted),
                (1_000, "fab-a", Phase::DhcpOffer),
                (1_000, "fab-a", Phase::DhcpAck),
                (3_000, "fab-b", Phase::IpxeScript),
                (3_500, "fab-a", Phase::HttpStarted),
                (4_000, "fab-b", Phase::HttpSent),
            ]
        );
        assert_eq!(merged[5].detail.as_deref(), Some("linux/vmlinuz: 10 bytes"));
        // etcd unreachable: the local entries alone, still named.
        let alone = merge("fab-b", &local, Vec::new());
        assert_eq!(alone.len(), 2);
        assert!(alone.iter().all(|e| e.fabric == "fab-b"));
    }

    #[test]
    fn the_budget_caps_each_host_and_the_unknown_macs_per_window() {
        let mut b = Budget::default();
        let t = 10 * WINDOW_MS;
        for _ in 0..PER_HOST {
            assert_eq!(b.admit(M, true, t), Ok(()));
        }
        assert_eq!(b.admit(M, true, t + 1), Err(Refused::Budget));
        // Another inventory host is not held up by the first.
        assert_eq!(b.admit(Mac([2, 0, 0, 0, 0, 2]), true, t), Ok(()));
        // Invented MACs share one budget, each a new MAC.
        for i in 0..UNKNOWN {
            let mac = Mac([2, 1, 0, 0, (i >> 8) as u8, i as u8]);
            assert_eq!(b.admit(mac, false, t), Ok(()));
        }
        assert_eq!(
            b.admit(Mac([2, 9, 9, 9, 9, 9]), false, t),
            Err(Refused::Budget)
        );
        // The flood of unknown MACs never touches inventory hosts' budgets.
        assert_eq!(b.admit(Mac([2, 0, 0, 0, 0, 3]), true, t), Ok(()));
        assert!(b.per_host.len() <= 3, "only inventory MACs get a counter");
        // The next window starts afresh.
        assert_eq!(b.admit(M, true, t + WINDOW_MS), Ok(()));
        assert_eq!(
            b.admit(Mac([2, 9, 9, 9, 9, 9]), false, t + WINDOW_MS),
            Ok(())
        );
    }

    /// A share on a cluster that is never reached (`connect` is lazy) and its metrics.
    async fn share() -> (Arc<Share>, Writer, Registry) {
        let cfg = crate::config::cluster::from_wire(
            &toml::from_str("name = \"fab-t\"\netcd = [\"http://127.0.0.1:9\"]").expect("toml"),
        )
        .expect("config");
        let cluster = Cluster::connect(&cfg).await.expect("lazy connect");
        let registry = Registry::new();
        let (share, writer) =
            Share::new(cluster, cfg.timeline_retention, &registry).expect("share");
        (share, writer, registry)
    }

    fn writes(registry: &Registry, outcome: &str) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "bootfabric_cluster_timeline_writes_total")
            .flat_map(|f| f.get_metric())
            .filter(|m| m.get_label().iter().any(|l| l.value() == outcome))
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_never_waits() {
        let (share, mut writer, registry) = share().await;
        let event = Event {
            at_ms: 7 * WINDOW_MS,
            ip: None,
            kind: EventKind::DhcpOffer,
        };
        // More than the queue holds, from enough inventory hosts that no budget is spent.
        let hosts = (QUEUE as u32 + 100).div_ceil(PER_HOST);
        for i in 0..hosts {
            for _ in 0..PER_HOST {
                share.offer(Mac([0, 0, 0, 0, (i >> 8) as u8, i as u8]), true, &event);
            }
        }
        let offered = u64::from(hosts * PER_HOST);
        assert_eq!(writes(&registry, "dropped_queue"), offered - QUEUE as u64);
        assert_eq!(writes(&registry, "dropped_budget"), 0);
        // What was queued is what the writer would put, each with its own sequence number.
        let first = writer.rx.try_recv().expect("queued");
        let second = writer.rx.try_recv().expect("queued");
        assert_eq!((first.entry.fabric.as_str(), first.entry.seq), ("fab-t", 0));
        assert_eq!(second.entry.seq, 1);
        assert_eq!(first.entry.phase, Phase::DhcpOffer);
        // Invented MACs spend the shared budget, and are counted as such.
        for i in 0..(UNKNOWN + 10) {
            share.offer(Mac([2, 0, 0, 1, (i >> 8) as u8, i as u8]), false, &event);
        }
        assert_eq!(writes(&registry, "dropped_budget"), 10);
    }

    #[test]
    fn the_window_total_caps_a_fabric_whatever_the_hosts() {
        let mut b = Budget::default();
        let mut admitted = 0u32;
        for i in 0..(WINDOW_TOTAL / PER_HOST + 2) {
            let mac = Mac([0, 0, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
            for _ in 0..PER_HOST {
                if b.admit(mac, true, 0).is_ok() {
                    admitted += 1;
                }
            }
        }
        assert_eq!(admitted, WINDOW_TOTAL);
    }
}
