//! Dynamic DHCP leases shared by every fabric of the cluster: one etcd key per address,
//! `<prefix>/leases/<ip>` → [`ClaimRecord`] (JSON). A fabric binds a dynamic address only by
//! winning one etcd transaction on its key, so two fabrics never hand out one address; every
//! fabric keeps a [`Mirror`] of the whole directory (loaded, then watched), so its offers
//! skip addresses held elsewhere and a client whose lease a dead fabric granted renews here.
//!
//! Service-independent: the DHCP service decides what to claim and applies what the mirror
//! reports to its own lease table. The decisions ([`decide`]) are pure; [`Leases`] is the
//! etcd I/O around them.
//!
//! Races: the transaction compares the key's `version` (0: absent) or its `mod_revision`
//! (the one we read), so of two fabrics claiming from the same read exactly one commits; the
//! other reads the winner's record back and decides again. Expired records are reclaimed by
//! the next claimer (no sweeper that could race a renewal), after [`CLAIM_GRACE_SECS`] so a
//! fabric whose clock is a little behind cannot take an address its holder still renews.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Cluster, ClusterError};
use crate::model::inventory::Mac;

/// How long after its `expires` a record stays its holder's: the allowance for clocks that
/// differ between fabrics. Past it, any fabric may claim the address.
pub const CLAIM_GRACE_SECS: u64 = 30;

/// The key kind: `<prefix>/leases/<ip>`.
const KIND: &str = "leases";

/// One address's holder, as stored in etcd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The client (its MAC, `52:54:00:…`).
    pub mac: String,
    /// The client identifier (option 61), hex, when the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// When the lease ends, Unix seconds.
    pub expires: u64,
    /// The fabric that granted or last renewed it.
    pub fabric: String,
    /// A DECLINE quarantine (the address answered ARP): nobody's to hold until `expires`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub declined: bool,
}

impl ClaimRecord {
    /// The holder, `None` when the stored MAC does not parse (someone wrote it by hand).
    pub fn holder(&self) -> Option<Mac> {
        self.mac.parse().ok()
    }
}

/// What the mirror knows of one address: its record and the revision it was written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The record.
    pub record: ClaimRecord,
    /// Its `mod_revision` (what a renewal compares against).
    pub revision: i64,
}

/// What a claim of an address for a client may do, given what is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing stored: create the key (compare version 0).
    Create,
    /// Replace the stored record written at this revision (our client's own, or expired).
    Replace(i64),
    /// Another client holds it (or a quarantine) until `until`: the claim is lost.
    Refuse {
        /// The holder's MAC as stored.
        holder: String,
        /// Its `expires`.
        until: u64,
    },
}

/// May `mac` claim an address whose stored state is `held`, at `now`? Its own record
/// (renewal, or a lease another fabric granted it) and records expired for longer than the
/// grace can be replaced; a live record of another client, or a live quarantine, cannot.
pub fn decide(held: Option<&Held>, mac: Mac, now: u64) -> Decision {
    let Some(h) = held else {
        return Decision::Create;
    };
    let expired = h.record.expires.saturating_add(CLAIM_GRACE_SECS) <= now;
    let own = !h.record.declined && h.record.holder() == Some(mac);
    if own || expired {
        Decision::Replace(h.revision)
    } else {
        Decision::Refuse {
            holder: h.record.mac.clone(),
            until: h.record.expires,
        }
    }
}

/// The outcome of a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// Ours, written at this revision.
    Won(i64),
    /// Another client holds it: what is stored (the mirror has it too now).
    Lost(ClaimRecord),
}

/// A change of the shared leases seen by the mirror, for the service's own table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `ip` is now held as `record` (another fabric's claim, or any at a (re)load).
    Held(Ipv4Addr, ClaimRecord),
    /// `ip`'s record, last `record`, was deleted (released, or a reload no longer has it).
    Gone(Ipv4Addr, ClaimRecord),
}

/// Every shared lease this fabric knows of, by address.
#[derive(Clone, Debug, Default)]
pub struct Mirror {
    held: HashMap<Ipv4Addr, Held>,
    /// The etcd revision the mirror is current to (watch from the next one).
    revision: i64,
}

impl Mirror {
    /// What is stored for `ip`.
    pub fn get(&self, ip: Ipv4Addr) -> Option<&Held> {
        self.held.get(&ip)
    }

    /// How many addresses are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Records `ip` as `held` unless the mirror already has a newer revision of it (a watch
    /// event racing our own claim's answer). Whether it changed.
    fn put(&mut self, ip: Ipv4Addr, held: Held) -> bool {
        match self.held.get(&ip) {
            Some(old) if old.revision >= held.revision => false,
            _ => {
                self.held.insert(ip, held);
                true
            }
        }
    }

    /// Replaces the whole mirror by a fresh read at `revision`; the changes to report.
    fn replace(&mut self, fresh: HashMap<Ipv4Addr, Held>, revision: i64) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .held
            .iter()
            .filter(|(ip, _)| !fresh.contains_key(ip))
            .map(|(ip, h)| Change::Gone(*ip, h.record.clone()))
            .collect();
        changes.extend(
            fresh
                .iter()
                .filter(|(ip, h)| self.held.get(ip) != Some(h))
                .map(|(ip, h)| Change::Held(*ip, h.record.clone())),
        );
        self.held = fresh;
        self.revision = revision;
        changes
    }
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The claims' metrics.
struct Metrics {
    claims: IntCounterVec,
    mirror: IntGauge,
    refused: IntCounterVec,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let claims = IntCounterVec::new(
            Opts::new(
                "bootfabric_cluster_lease_claims_total",
                "Claims of a dynamic address in etcd, by result (won, lost, error)",
            ),
            &["result"],
        )?;
        let mirror = IntGauge::new(
            "bootfabric_cluster_lease_mirror",
            "Shared leases (etcd records) this fabric's mirror holds",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "bootfabric_cluster_lease_refused_total",
                "Dynamic leases not granted because etcd could not be written (no quorum), by kind (new, renewal_queued)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(claims.clone()))?;
        registry.register(Box::new(mirror.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(Self {
            claims,
            mirror,
            refused,
        })
    }
}

/// The shared leases of `cluster`: claims, releases, the mirror and its watch.
#[derive(Clone)]
pub struct Leases {
    cluster: Cluster,
    mirror: Arc<Mutex<Mirror>>,
    /// Renewals granted while etcd could not be written, to write back when it returns.
    pending: Arc<Mutex<HashMap<Ipv4Addr, ClaimRecord>>>,
    metrics: Arc<Metrics>,
}

fn parse_kv(prefix: &str, kv: &KeyValue) -> Result<(Ipv4Addr, Held), ClusterError> {
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    let bad = |reason: String| ClusterError::Record {
        key: key.clone(),
        reason,
    };
    let ip: Ipv4Addr = key
        .strip_prefix(prefix)
        .ok_or_else(|| bad("outside the leases directory".to_owned()))?
        .parse()
        .map_err(|e| bad(format!("not an IPv4 address: {e}")))?;
    let record: ClaimRecord = serde_json::from_slice(kv.value()).map_err(|e| bad(e.to_string()))?;
    Ok((
        ip,
        Held {
            record,
            revision: kv.mod_revision(),
        },
    ))
}

impl Leases {
    /// The shared leases of `cluster`, metrics in `registry`. Nothing is read until
    /// [`Leases::run`] loads the mirror.
    pub fn new(cluster: Cluster, registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            cluster,
            mirror: Arc::new(Mutex::new(Mirror::default())),
            pending: Arc::new(Mutex::new(HashMap::new())),
            metrics: Arc::new(Metrics::new(registry)?),
        })
    }

    /// This fabric's name (the `fabric` of the records it writes).
    pub fn fabric(&self) -> &str {
        self.cluster.name()
    }

    /// What the mirror holds for `ip` now.
    pub fn held(&self, ip: Ipv4Addr) -> Option<Held> {
        self.mirror.lock().ok().and_then(|m| m.get(ip).cloned())
    }

    fn remember(&self, ip: Ipv4Addr, held: Held) {
        if let Ok(mut m) = self.mirror.lock() {
            m.put(ip, held);
            self.metrics.mirror.set(m.len() as i64);
        }
    }

    /// Claims `ip` for `record`'s client: one transaction that commits only if the key is
    /// as the mirror last saw it (absent, or at that revision) and [`decide`] allows it. A
    /// stale mirror costs one more round: the failed transaction returns what is stored.
    pub async fn claim(
        &self,
        ip: Ipv4Addr,
        mac: Mac,
        record: &ClaimRecord,
        now: u64,
    ) -> Result<Claimed, ClusterError> {
        let result = self.claim_inner(ip, mac, record, now).await;
        let label = match &result {
            Ok(Claimed::Won(_)) => "won",
            Ok(Claimed::Lost(_)) => "lost",
            Err(_) => "error",
        };
        self.metrics.claims.with_label_values(&[label]).inc();
        result
    }

    async fn claim_inner(
        &self,
        ip: Ipv4Addr,
        mac: Mac,
        record: &ClaimRecord,
        now: u64,
    ) -> Result<Claimed, ClusterError> {
        let key = self.cluster.key(KIND, &ip.to_string());
        let dir = self.cluster.dir(KIND);
        let value = serde_json::to_vec(record).map_err(|e| ClusterError::Record {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let mut held = self.held(ip);
        // Two rounds: the mirror's view, then what a failed compare read back.
        for _ in 0..2 {
            let compare = match decide(held.as_ref(), mac, now) {
                Decision::Create => Compare::version(key.as_str(), CompareOp::Equal, 0),
                Decision::Replace(rev) => {
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)
                }
                Decision::Refuse { .. } => {
                    let h = held.map(|h| h.record).ok_or_else(|| ClusterError::Record {
                        key: key.clone(),
                        reason: "refused without a record".to_owned(),
                    })?;
                    return Ok(Claimed::Lost(h));
                }
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key.as_str(), value.clone(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let mut client = self.cluster.client();
            let resp = self.cluster.bounded(client.txn(txn)).await?;
            if resp.succeeded() {
                let revision = resp.header().map_or(0, |h| h.revision());
                self.remember(
                    ip,
                    Held {
                        record: record.clone(),
                        revision,
                    },
                );
                return Ok(Claimed::Won(revision));
            }
            held = None;
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    if let Some(kv) = get.kvs().first() {
                        let (_, h) = parse_kv(&dir, kv)?;
                        self.remember(ip, h.clone());
                        held = Some(h);
                    }
                }
            }
        }
        // Changed under us twice in a row: somebody else is busy with it.
        match held {
            Some(h) => Ok(Claimed::Lost(h.record)),
            None => Err(ClusterError::Record {
                key,
                reason: "changed during the claim".to_owned(),
            }),
        }
    }

    /// Deletes `ip`'s record if it is still `mac`'s as the mirror saw it (a RELEASE). A
    /// record another client holds by now is left alone.
    pub async fn release(&self, ip: Ipv4Addr, mac: Mac) -> Result<(), ClusterError> {
        let Some(h) = self.held(ip).filter(|h| h.record.holder() == Some(mac)) else {
            return Ok(());
        };
        let key = self.cluster.key(KIND, &ip.to_string());
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                h.revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let mut client = self.cluster.client();
        self.cluster.bounded(client.txn(txn)).await?;
        Ok(())
    }

    /// Records a renewal granted while etcd could not be written: the client's own lease,
    /// which the mirror knows. Written back by [`Leases::run`] when etcd answers again.
    pub fn queue_renewal(&self, ip: Ipv4Addr, record: ClaimRecord) {
        self.metrics
            .refused
            .with_label_values(&["renewal_queued"])
            .inc();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(ip, record);
        }
    }

    /// Counts a new dynamic lease not granted for want of etcd.
    pub fn refused_new(&self) {
        self.metrics.refused.with_label_values(&["new"]).inc();
    }

    /// Loads the mirror, then keeps it current from a watch until `cancel`; reports every
    /// change on `changes`. On a lost watch or a compaction it reloads; while etcd is down
    /// it retries with backoff. Queued renewals are written back after each (re)load.
    pub async fn run(self, changes: mpsc::UnboundedSender<Vec<Change>>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        loop {
            let round = async {
                self.reload(&changes).await?;
                self.flush_pending().await;
                self.watch(&changes).await
            };
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = round => r,
            };
            match result {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(e) => {
                    warn!(error = %e, "cluster leases: mirror out of date, reloading");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }

    async fn reload(
        &self,
        changes: &mpsc::UnboundedSender<Vec<Change>>,
    ) -> Result<(), ClusterError> {
        let dir = self.cluster.dir(KIND);
        let mut client = self.cluster.client();
        let resp = self
            .cluster
            .bounded(client.get(dir.as_str(), Some(GetOptions::new().with_prefix())))
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let mut fresh = HashMap::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            match parse_kv(&dir, kv) {
                Ok((ip, h)) => {
                    fresh.insert(ip, h);
                }
                Err(e) => warn!(error = %e, "cluster leases: record skipped"),
            }
        }
        let diff = match self.mirror.lock() {
            Ok(mut m) => {
                let diff = m.replace(fresh, revision);
                self.metrics.mirror.set(m.len() as i64);
                diff
            }
            Err(_) => Vec::new(),
        };
        info!(
            revision,
            changes = diff.len(),
            "cluster leases: mirror loaded"
        );
        let _ = changes.send(diff);
        Ok(())
    }

    async fn flush_pending(&self) {
        let queued: Vec<_> = match self.pending.lock() {
            Ok(mut p) => p.drain().collect(),
            Err(_) => return,
        };
        for (ip, record) in queued {
            let Some(mac) = record.holder() else { continue };
            match self.claim(ip, mac, &record, unix_now()).await {
                Ok(Claimed::Won(_)) => {}
                Ok(Claimed::Lost(by)) => warn!(
                    %ip, %mac, holder = by.mac,
                    "cluster leases: a renewal granted without etcd lost its address to another client"
                ),
                Err(e) => {
                    warn!(%ip, error = %e, "cluster leases: writing back a renewal failed");
                    self.queue_back(ip, record);
                }
            }
        }
    }

    fn queue_back(&self, ip: Ipv4Addr, record: ClaimRecord) {
        if let Ok(mut p) = self.pending.lock() {
            p.entry(ip).or_insert(record);
        }
    }

    /// Follows the directory from the mirror's revision until the watch ends (an error, a
    /// cancel or a compaction: the caller reloads).
    async fn watch(
        &self,
        changes: &mpsc::UnboundedSender<Vec<Change>>,
    ) -> Result<(), ClusterError> {
        let dir = self.cluster.dir(KIND);
        let from = self.mirror.lock().map_or(0, |m| m.revision) + 1;
        let mut client = self.cluster.client();
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from);
        let mut stream = self
            .cluster
            .bounded(client.watch(dir.as_str(), Some(options)))
            .await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() || resp.compact_revision() > 0 {
                return Err(ClusterError::Record {
                    key: dir,
                    reason: format!(
                        "watch cancelled (compacted to {}): {}",
                        resp.compact_revision(),
                        resp.cancel_reason()
                    ),
                });
            }
            let mut batch = Vec::new();
            let mut m = match self.mirror.lock() {
                Ok(m) => m,
                Err(_) => break,
            };
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => match parse_kv(&dir, kv) {
                        Ok((ip, h)) => {
                            let record = h.record.clone();
                            if m.put(ip, h) {
                                batch.push(Change::Held(ip, record));
                            }
                        }
                        Err(e) => warn!(error = %e, "cluster leases: record skipped"),
                    },
                    EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key()).into_owned();
                        let Some(ip) = key
                            .strip_prefix(dir.as_str())
                            .and_then(|s| s.parse::<Ipv4Addr>().ok())
                        else {
                            continue;
                        };
                        if let Some(old) = m.held.remove(&ip) {
                            batch.push(Change::Gone(ip, old.record));
                        }
                    }
                }
                m.revision = m.revision.max(kv.mod_revision());
            }
            if let Some(h) = resp.header() {
                m.revision = m.revision.max(h.revision());
            }
            self.metrics.mirror.set(m.len() as i64);
            drop(m);
            if !batch.is_empty() {
                let _ = changes.send(batch);
            }
        }
        Err(ClusterError::Record {
            key: dir,
            reason: "watch ended".to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn held(n: u8, expires: u64, declined: bool) -> Held {
        Held {
            record: ClaimRecord {
                mac: mac(n).to_string(),
                client_id: None,
                expires,
                fabric: "fab-a".to_owned(),
                declined,
            },
            revision: 7,
        }
    }

    #[test]
    fn an_absent_key_is_created() {
        assert_eq!(decide(None, mac(1), 100), Decision::Create);
    }

    #[test]
    fn a_clients_own_record_is_renewed_whoever_granted_it() {
        assert_eq!(
            decide(Some(&held(1, 1000, false)), mac(1), 100),
            Decision::Replace(7)
        );
    }

    #[test]
    fn another_clients_live_record_is_refused_even_in_the_grace() {
        let h = held(2, 1000, false);
        for now in [100, 1000, 1000 + CLAIM_GRACE_SECS - 1] {
            assert!(matches!(
                decide(Some(&h), mac(1), now),
                Decision::Refuse { until: 1000, .. }
            ));
        }
    }

    #[test]
    fn an_expired_record_is_reclaimed_after_the_grace() {
        let h = held(2, 1000, false);
        assert_eq!(
            decide(Some(&h), mac(1), 1000 + CLAIM_GRACE_SECS),
            Decision::Replace(7)
        );
    }

    #[test]
    fn a_quarantine_holds_even_for_the_client_that_declined() {
        assert!(matches!(
            decide(Some(&held(1, 1000, true)), mac(1), 100),
            Decision::Refuse { .. }
        ));
    }

    #[test]
    fn a_record_with_an_unreadable_mac_is_nobodys_until_it_expires() {
        let mut h = held(1, 1000, false);
        h.record.mac = "not-a-mac".to_owned();
        assert!(matches!(
            decide(Some(&h), mac(1), 100),
            Decision::Refuse { .. }
        ));
    }

    #[test]
    fn the_mirror_keeps_the_newest_revision() {
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let mut m = Mirror::default();
        let mut newer = held(1, 1000, false);
        newer.revision = 9;
        assert!(m.put(ip, newer.clone()));
        assert!(!m.put(ip, held(2, 1000, false)), "revision 7 is older");
        assert_eq!(m.get(ip), Some(&newer));
    }

    #[test]
    fn a_reload_reports_what_appeared_changed_and_went() {
        let (a, b, c) = (
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 3),
        );
        let mut m = Mirror::default();
        m.put(a, held(1, 1000, false));
        m.put(b, held(2, 1000, false));
        let mut fresh = HashMap::new();
        fresh.insert(a, held(1, 1000, false));
        fresh.insert(c, held(3, 1000, false));
        let mut changes = m.replace(fresh, 42);
        changes.sort_by_key(|c| match c {
            Change::Held(ip, _) | Change::Gone(ip, _) => *ip,
        });
        assert_eq!(
            changes,
            vec![
                Change::Gone(b, held(2, 1000, false).record),
                Change::Held(c, held(3, 1000, false).record),
            ]
        );
        assert_eq!(m.revision, 42);
        assert_eq!(m.len(), 2);
    }
}
