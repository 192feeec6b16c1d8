//! Cluster mode's shared inventory: the admin API's overlay (`config::overlay`, the hosts and
//! profiles the API created, replaced or removed, and the used `netboot = "once"`) kept in
//! etcd, so every fabric serves the same inventory.
//!
//! One key per record under `<prefix>/inventory/`: `hosts/<name>` and `profiles/<name>` hold
//! the record as the overlay file does (JSON, `null` for a tombstone that hides a record of
//! the operator's TOML), `consumed/<name>` marks a used `once`. A write is one etcd
//! transaction guarded by the `mod_revision` of every key it changes, as this fabric last
//! published it: a writer that did not see the latest change of a record (a stale ETag, on
//! any fabric) fails the guard and is answered 412.
//!
//! Every fabric loads the prefix, then watches it from the next revision; a watch lost
//! (etcd down, quorum lost) resumes from the last revision seen, and one whose revision was
//! compacted away loads the prefix whole again. What the watch sees goes to a [`Sink`] (the
//! admin API), which publishes it through the live snapshot like any API change.
//!
//! Pure: the key layout, [`ops`] (the changes from one overlay to the next), [`Mirror::apply`]
//! (an etcd event into the mirror), [`merge`] (what this fabric publishes from the mirror
//! and its own writes not yet seen back). The rest is etcd I/O.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{Cluster, ClusterError};
use crate::{config::overlay::Overlay, model::inventory::wire};

/// The key kind under the cluster's prefix.
pub const KIND: &str = "inventory";

/// Which part of the overlay a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// `hosts/<name>`.
    Hosts,
    /// `profiles/<name>`.
    Profiles,
    /// `consumed/<name>`.
    Consumed,
}

impl Section {
    const ALL: [Self; 3] = [Self::Hosts, Self::Profiles, Self::Consumed];

    fn dir(self) -> &'static str {
        match self {
            Self::Hosts => "hosts/",
            Self::Profiles => "profiles/",
            Self::Consumed => "consumed/",
        }
    }
}

/// The key (relative to `<prefix>/inventory/`) of `name` in `section`.
pub fn key(section: Section, name: &str) -> String {
    format!("{}{name}", section.dir())
}

/// The section and name of a relative key; `None` for a key that is not ours.
pub fn parse_key(key: &str) -> Option<(Section, &str)> {
    Section::ALL.into_iter().find_map(|s| {
        key.strip_prefix(s.dir())
            .filter(|name| !name.is_empty())
            .map(|name| (s, name))
    })
}

/// One record's value.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A host, or a tombstone (boxed: records are large).
    Host(Option<Box<wire::Host>>),
    /// A profile, or a tombstone.
    Profile(Option<Box<wire::Profile>>),
    /// A used `once`.
    Consumed,
}

/// A record in etcd does not parse.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The key is under the prefix but names no section.
    #[error("{key}: not an inventory key (hosts/, profiles/, consumed/)")]
    Key {
        /// The relative key.
        key: String,
    },
    /// The value is not the record the section holds.
    #[error("{key}: {reason}")]
    Value {
        /// The relative key.
        key: String,
        /// The parser's message.
        reason: String,
    },
}

impl Entry {
    /// The value stored in etcd.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Host(h) => serde_json::to_vec(h).unwrap_or_default(),
            Self::Profile(p) => serde_json::to_vec(p).unwrap_or_default(),
            Self::Consumed => b"true".to_vec(),
        }
    }

    /// The record of `section` in `value`.
    pub fn decode(section: Section, key: &str, value: &[u8]) -> Result<Self, RecordError> {
        let bad = |reason: String| RecordError::Value {
            key: key.to_owned(),
            reason,
        };
        match section {
            Section::Hosts => serde_json::from_slice::<Option<wire::Host>>(value)
                .map(|h| Self::Host(h.map(Box::new)))
                .map_err(|e| bad(e.to_string())),
            Section::Profiles => serde_json::from_slice::<Option<wire::Profile>>(value)
                .map(|p| Self::Profile(p.map(Box::new)))
                .map_err(|e| bad(e.to_string())),
            Section::Consumed => match serde_json::from_slice(value) {
                Ok(true) => Ok(Self::Consumed),
                Ok(false) => Err(bad("a used `once` is `true`".to_owned())),
                Err(e) => Err(bad(e.to_string())),
            },
        }
    }
}

/// The entry of the relative `key` in `overlay`.
pub fn get(overlay: &Overlay, key: &str) -> Option<Entry> {
    match parse_key(key)? {
        (Section::Hosts, n) => overlay
            .hosts
            .get(n)
            .map(|h| Entry::Host(h.clone().map(Box::new))),
        (Section::Profiles, n) => overlay
            .profiles
            .get(n)
            .map(|p| Entry::Profile(p.clone().map(Box::new))),
        (Section::Consumed, n) => overlay.consumed.contains(n).then_some(Entry::Consumed),
    }
}

/// Sets (or, `None`, removes) the entry of the relative `key` in `overlay`.
pub fn set(overlay: &mut Overlay, key: &str, entry: Option<Entry>) -> Result<(), RecordError> {
    let (section, name) = parse_key(key).ok_or_else(|| RecordError::Key {
        key: key.to_owned(),
    })?;
    let name = name.to_owned();
    match (section, entry) {
        (Section::Hosts, Some(Entry::Host(h))) => {
            overlay.hosts.insert(name, h.map(|h| *h));
        }
        (Section::Hosts, None) => {
            overlay.hosts.remove(&name);
        }
        (Section::Profiles, Some(Entry::Profile(p))) => {
            overlay.profiles.insert(name, p.map(|p| *p));
        }
        (Section::Profiles, None) => {
            overlay.profiles.remove(&name);
        }
        (Section::Consumed, Some(Entry::Consumed)) => {
            overlay.consumed.insert(name);
        }
        (Section::Consumed, None) => {
            overlay.consumed.remove(&name);
        }
        (_, Some(_)) => {
            return Err(RecordError::Value {
                key: key.to_owned(),
                reason: "not the record this section holds".to_owned(),
            })
        }
    }
    Ok(())
}

/// Every relative key `overlay` has.
fn keys(overlay: &Overlay) -> impl Iterator<Item = String> + '_ {
    let hosts = overlay.hosts.keys().map(|n| key(Section::Hosts, n));
    let profiles = overlay.profiles.keys().map(|n| key(Section::Profiles, n));
    let consumed = overlay.consumed.iter().map(|n| key(Section::Consumed, n));
    hosts.chain(profiles).chain(consumed)
}

/// One change of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The relative key gets this value.
    Put {
        /// The relative key.
        key: String,
        /// The encoded [`Entry`].
        value: Vec<u8>,
    },
    /// The relative key goes.
    Delete {
        /// The relative key.
        key: String,
    },
}

impl Op {
    /// The relative key it changes.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }
}

/// The changes that make `from` into `to`, one per key that differs. Pure.
pub fn ops(from: &Overlay, to: &Overlay) -> Vec<Op> {
    let mut all: Vec<String> = keys(from).chain(keys(to)).collect();
    all.sort();
    all.dedup();
    all.into_iter()
        .filter_map(|k| {
            let before = get(from, &k).map(|e| e.encode());
            match get(to, &k).map(|e| e.encode()) {
                after if after == before => None,
                Some(value) => Some(Op::Put { key: k, value }),
                None => Some(Op::Delete { key: k }),
            }
        })
        .collect()
}

/// etcd's inventory as this fabric's watch has seen it.
#[derive(Clone, Debug, Default)]
pub struct Mirror {
    /// The records.
    pub overlay: Overlay,
    /// The `mod_revision` of each record present.
    pub revs: BTreeMap<String, i64>,
    /// Every change up to this revision is in.
    pub revision: i64,
}

impl Mirror {
    /// Applies one event: the relative `key` set to `value` (`None`: deleted) at revision
    /// `rev`. An event at or below what the mirror has seen is skipped (a watch resumed
    /// over events it had). A value that does not parse leaves the key as it was. Pure.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>, rev: i64) -> Result<(), RecordError> {
        if rev <= self.revision {
            return Ok(());
        }
        self.revision = rev;
        let section = parse_key(key)
            .ok_or_else(|| RecordError::Key {
                key: key.to_owned(),
            })?
            .0;
        let entry = value.map(|v| Entry::decode(section, key, v)).transpose()?;
        let present = entry.is_some();
        set(&mut self.overlay, key, entry)?;
        if present {
            self.revs.insert(key.to_owned(), rev);
        } else {
            self.revs.remove(key);
        }
        Ok(())
    }
}

/// What this fabric published of etcd's inventory, beside the overlay itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The `mod_revision` of each record present: what a write of it is guarded by.
    pub revs: BTreeMap<String, i64>,
    /// This fabric's own writes (relative key, revision) its watch has not delivered yet.
    pub local: BTreeMap<String, i64>,
    /// Whether etcd's inventory was loaded since start: until then the revisions are
    /// unknown (the overlay is the local copy), and writes wait.
    pub loaded: bool,
}

impl Published {
    /// The revision a change of `key` must find in etcd: the one this fabric published (0:
    /// absent, which etcd compares as "no such key").
    pub fn guard(&self, key: &str) -> i64 {
        self.revs.get(key).copied().unwrap_or(0)
    }

    /// Records this fabric's write of `ops`, committed at revision `rev`.
    pub fn record(&mut self, ops: &[Op], rev: i64) {
        for op in ops {
            self.local.insert(op.key().to_owned(), rev);
            match op {
                Op::Put { key, .. } => self.revs.insert(key.clone(), rev),
                Op::Delete { key } => self.revs.remove(key),
            };
        }
    }
}

/// What this fabric publishes next: the mirror, except the keys of its own writes newer
/// than the mirror (the watch has not delivered them yet: publishing the mirror's older
/// value would undo a write this fabric already answered). Pure.
pub fn merge(current: &Overlay, published: &Published, mirror: &Mirror) -> (Overlay, Published) {
    let mut overlay = mirror.overlay.clone();
    let mut next = Published {
        revs: mirror.revs.clone(),
        local: BTreeMap::new(),
        loaded: true,
    };
    for (key, &rev) in &published.local {
        if rev <= mirror.revision {
            continue;
        }
        // Both entries come from this fabric's own overlay: they fit their keys.
        if set(&mut overlay, key, get(current, key)).is_err() {
            continue;
        }
        match published.revs.get(key) {
            Some(r) => next.revs.insert(key.clone(), *r),
            None => next.revs.remove(key),
        };
        next.local.insert(key.clone(), rev);
    }
    (overlay, next)
}

/// Where the watch's inventory goes: the admin API, which publishes it.
pub trait Sink: Send + Sync + 'static {
    /// Publishes what `mirror` holds; the records this fabric refuses (each with the key
    /// and the reason: one that does not validate here), left out. Blocking: called from a
    /// blocking thread.
    fn adopt(&self, mirror: &Mirror) -> Vec<String>;
}

/// A write could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A record changed since this fabric published it.
    #[error("a record changed in etcd since this fabric saw it")]
    Conflict,
    /// etcd cannot take writes now (down, quorum lost, timed out).
    #[error(transparent)]
    Unavailable(#[from] ClusterError),
}

/// The shared inventory's metrics.
struct Metrics {
    events: IntCounterVec,
    write_errors: IntCounter,
    reloads: IntCounter,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "bootfabric_cluster_inventory_events_total",
                "etcd inventory changes this fabric's watch saw, by outcome (applied, refused)",
            ),
            &["outcome"],
        )?;
        let write_errors = IntCounter::new(
            "bootfabric_cluster_inventory_write_errors_total",
            "API writes etcd could not take (down, no quorum, timed out); answered 503",
        )?;
        let reloads = IntCounter::new(
            "bootfabric_cluster_inventory_reloads_total",
            "Full loads of the etcd inventory (start, compaction)",
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(write_errors.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        Ok(Self {
            events,
            write_errors,
            reloads,
        })
    }
}

/// The inventory's etcd I/O. Cheap to clone.
#[derive(Clone)]
pub struct InventoryStore {
    cluster: Cluster,
    metrics: Arc<Metrics>,
}

/// How a watch ended.
enum WatchEnd {
    Cancelled,
    Compacted,
    Lost(String),
}

/// The longest wait between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

impl InventoryStore {
    /// The store of `cluster`, its metrics in `registry`.
    pub fn new(cluster: Cluster, registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            cluster,
            metrics: Arc::new(Metrics::new(registry)?),
        })
    }

    fn full(&self, key: &str) -> String {
        self.cluster.key(KIND, key)
    }

    /// Makes `ops` in one transaction, if every key of `guards` has the `mod_revision` given
    /// (0: absent). The revision of the write.
    pub async fn commit(&self, ops: &[Op], guards: &[(String, i64)]) -> Result<i64, CommitError> {
        let when: Vec<Compare> = guards
            .iter()
            .map(|(k, rev)| Compare::mod_revision(self.full(k), CompareOp::Equal, *rev))
            .collect();
        let then: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(self.full(key), value.clone(), None),
                Op::Delete { key } => TxnOp::delete(self.full(key), None),
            })
            .collect();
        let mut client = self.cluster.client();
        let resp = self
            .cluster
            .bounded(client.txn(Txn::new().when(when).and_then(then)))
            .await
            .inspect_err(|_| self.metrics.write_errors.inc())?;
        if !resp.succeeded() {
            return Err(CommitError::Conflict);
        }
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// The whole inventory as etcd has it now. A record that does not parse is left out,
    /// loudly (logged, counted refused).
    pub async fn load(&self) -> Result<Mirror, ClusterError> {
        let dir = self.cluster.dir(KIND);
        let mut client = self.cluster.client();
        let resp = self
            .cluster
            .bounded(client.get(dir.as_str(), Some(GetOptions::new().with_prefix())))
            .await?;
        let mut mirror = Mirror::default();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let rel = key.strip_prefix(dir.as_str()).unwrap_or(&key);
            // Each key once, in any order: apply them as of "before the load".
            mirror.revision = 0;
            if let Err(e) = mirror.apply(rel, Some(kv.value()), kv.mod_revision()) {
                self.refused(&e.to_string());
            }
        }
        mirror.revision = resp.header().map_or(0, |h| h.revision());
        self.metrics.reloads.inc();
        Ok(mirror)
    }

    fn refused(&self, why: &str) {
        self.metrics.events.with_label_values(&["refused"]).inc();
        error!(
            why,
            "cluster inventory: a record from etcd is refused on this fabric"
        );
    }

    /// Hands `mirror` to `sink` (a blocking thread); counts `events` as the outcome.
    async fn adopt(&self, sink: &Arc<dyn Sink>, mirror: &Mirror, events: u64) {
        let (s, m) = (Arc::clone(sink), mirror.clone());
        match tokio::task::spawn_blocking(move || s.adopt(&m)).await {
            Ok(refused) => {
                let n = u64::try_from(refused.len()).unwrap_or(u64::MAX);
                self.metrics
                    .events
                    .with_label_values(&["applied"])
                    .inc_by(events.saturating_sub(n));
                self.metrics
                    .events
                    .with_label_values(&["refused"])
                    .inc_by(n);
                for why in refused {
                    error!(
                        why,
                        revision = mirror.revision,
                        "cluster inventory: a record from etcd is refused on this fabric; it keeps what it had of it"
                    );
                }
            }
            Err(e) => error!(error = %e, "cluster inventory: publishing failed"),
        }
    }

    /// Loads the inventory, then follows it until `token` is cancelled: every change goes to
    /// `sink`. etcd unreachable: the fabric keeps what it serves and tries again, backing off
    /// up to [`MAX_BACKOFF`].
    pub async fn run(self, sink: Arc<dyn Sink>, token: CancellationToken) {
        let mut backoff = Duration::from_millis(500);
        let mut mirror: Option<Mirror> = None;
        loop {
            if token.is_cancelled() {
                return;
            }
            let m = match mirror.as_mut() {
                Some(m) => m,
                None => match self.load().await {
                    Ok(m) => {
                        self.adopt(&sink, &m, 0).await;
                        info!(
                            revision = m.revision,
                            records = m.revs.len(),
                            "cluster inventory: loaded from etcd"
                        );
                        mirror.insert(m)
                    }
                    Err(e) => {
                        warn!(error = %e, "cluster inventory: cannot load from etcd; serving the last one");
                        if !pause(&token, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            match self.watch(m, &sink, &token, &mut backoff).await {
                WatchEnd::Cancelled => return,
                WatchEnd::Compacted => {
                    warn!("cluster inventory: the watch's revision was compacted; loading whole");
                    mirror = None;
                }
                WatchEnd::Lost(why) => {
                    warn!(
                        why,
                        "cluster inventory: watch lost; resuming from the last revision"
                    );
                    if !pause(&token, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Follows the prefix from `mirror.revision + 1`, applying every change.
    async fn watch(
        &self,
        mirror: &mut Mirror,
        sink: &Arc<dyn Sink>,
        token: &CancellationToken,
        backoff: &mut Duration,
    ) -> WatchEnd {
        let dir = self.cluster.dir(KIND);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(mirror.revision + 1)
            .with_progress_notify();
        let mut client = self.cluster.client();
        let mut stream = match self
            .cluster
            .bounded(client.watch(dir.as_str(), Some(options)))
            .await
        {
            Ok(s) => s,
            Err(e) => return WatchEnd::Lost(e.to_string()),
        };
        loop {
            let message = tokio::select! {
                () = token.cancelled() => return WatchEnd::Cancelled,
                m = stream.message() => m,
            };
            let resp = match message {
                Ok(Some(r)) => r,
                Ok(None) => return WatchEnd::Lost("the watch stream ended".to_owned()),
                Err(e) => return WatchEnd::Lost(e.to_string()),
            };
            if resp.compact_revision() > 0 {
                return WatchEnd::Compacted;
            }
            if resp.canceled() {
                return WatchEnd::Lost(format!("cancelled: {}", resp.cancel_reason()));
            }
            *backoff = Duration::from_millis(500);
            let mut applied = 0;
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key());
                let rel = key.strip_prefix(dir.as_str()).unwrap_or(&key);
                let value = match event.event_type() {
                    EventType::Put => Some(kv.value()),
                    EventType::Delete => None,
                };
                match mirror.apply(rel, value, kv.mod_revision()) {
                    Ok(()) => applied += 1,
                    Err(e) => self.refused(&e.to_string()),
                }
            }
            if applied > 0 {
                self.adopt(sink, mirror, applied).await;
            }
        }
    }
}

/// Waits `backoff` (doubled for next time, up to [`MAX_BACKOFF`]); false when cancelled.
async fn pause(token: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        () = token.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, mac: &str) -> wire::Host {
        serde_json::from_value(serde_json::json!({"name": name, "mac": mac, "profile": "p"}))
            .expect("wire host")
    }

    fn overlay() -> Overlay {
        let mut o = Overlay::default();
        o.hosts
            .insert("n1".into(), Some(host("n1", "52:54:00:00:00:01")));
        o.hosts.insert("file1".into(), None);
        o.profiles
            .insert("p".into(), Some(wire::Profile::default()));
        o.consumed.insert("n1".into());
        o
    }

    #[test]
    fn keys_name_their_section_and_nothing_else() {
        assert_eq!(key(Section::Hosts, "n1"), "hosts/n1");
        assert_eq!(
            parse_key("profiles/deb/12"),
            Some((Section::Profiles, "deb/12"))
        );
        assert_eq!(parse_key("consumed/n1"), Some((Section::Consumed, "n1")));
        assert_eq!(parse_key("hosts/"), None);
        assert_eq!(parse_key("leases/n1"), None);
    }

    /// Every record of an overlay survives the trip through etcd's keys and values,
    /// tombstones and used `once` included.
    #[test]
    fn an_overlay_round_trips_through_records() {
        let o = overlay();
        let puts = ops(&Overlay::default(), &o);
        assert_eq!(puts.len(), 4);
        let mut m = Mirror::default();
        for (rev, op) in (1..).zip(&puts) {
            let Op::Put { key, value } = op else {
                panic!("{op:?}")
            };
            m.apply(key, Some(value), rev).expect("applies");
        }
        assert!(ops(&m.overlay, &o).is_empty(), "{:?}", m.overlay);
        assert!(m.overlay.hosts["file1"].is_none(), "the tombstone stays");
        assert_eq!(
            m.revs["hosts/n1"], 3,
            "keys in order: consumed, hosts, profiles"
        );
        // The tombstone's value is JSON null.
        let tomb = puts.iter().find(|op| op.key() == "hosts/file1");
        assert_eq!(
            tomb,
            Some(&Op::Put {
                key: "hosts/file1".into(),
                value: b"null".to_vec()
            })
        );
    }

    #[test]
    fn ops_change_only_what_differs() {
        let a = overlay();
        let mut b = a.clone();
        b.consumed.remove("n1");
        b.hosts
            .insert("n2".into(), Some(host("n2", "52:54:00:00:00:02")));
        assert_eq!(
            ops(&a, &b).iter().map(Op::key).collect::<Vec<_>>(),
            ["consumed/n1", "hosts/n2"]
        );
        assert!(matches!(&ops(&a, &b)[0], Op::Delete { .. }));
        assert!(ops(&a, &a).is_empty());
    }

    #[test]
    fn a_bad_record_is_refused_and_old_events_are_skipped() {
        let mut m = Mirror::default();
        assert!(m.apply("hosts/n1", Some(b"{\"macc\":1}"), 5).is_err());
        assert!(m.apply("consumed/n1", Some(b"false"), 6).is_err());
        assert!(m.apply("bogus/n1", Some(b"null"), 7).is_err());
        assert!(m.overlay.hosts.is_empty() && m.overlay.consumed.is_empty());
        let value = Entry::Host(Some(Box::new(host("n1", "52:54:00:00:00:01")))).encode();
        m.apply("hosts/n1", Some(&value), 8).expect("applies");
        // A resumed watch repeating revision 8's deletion-free past changes nothing.
        m.apply("hosts/n1", None, 8).expect("skipped");
        assert!(m.overlay.hosts.contains_key("n1"));
        m.apply("hosts/n1", None, 9).expect("deleted");
        assert!(!m.overlay.hosts.contains_key("n1"));
        assert!(!m.revs.contains_key("hosts/n1"));
        assert_eq!(m.revision, 9);
    }

    /// The guard of a write is the revision this fabric published: a record changed
    /// elsewhere since (seen by the watch or not) fails it.
    #[test]
    fn guards_are_what_this_fabric_published() {
        let mut p = Published::default();
        assert_eq!(p.guard("hosts/n1"), 0, "absent: etcd compares 0");
        let put = Op::Put {
            key: "hosts/n1".into(),
            value: b"null".to_vec(),
        };
        p.record(std::slice::from_ref(&put), 12);
        assert_eq!(p.guard("hosts/n1"), 12);
        p.record(
            &[Op::Delete {
                key: "hosts/n1".into(),
            }],
            13,
        );
        assert_eq!(p.guard("hosts/n1"), 0);
        assert_eq!(p.local["hosts/n1"], 13);
    }

    /// This fabric's write not yet back from the watch stays published; once the mirror
    /// has its revision, the mirror decides (including a later change from another fabric).
    #[test]
    fn merge_keeps_own_writes_until_the_watch_has_them() {
        let mut current = Overlay::default();
        current
            .hosts
            .insert("mine".into(), Some(host("mine", "52:54:00:00:00:09")));
        let mut published = Published::default();
        published.record(
            &[Op::Put {
                key: "hosts/mine".into(),
                value: Vec::new(),
            }],
            20,
        );
        // The watch delivers another fabric's change at 19, before this fabric's 20.
        let mut mirror = Mirror::default();
        let theirs = Entry::Host(Some(Box::new(host("theirs", "52:54:00:00:00:08")))).encode();
        mirror
            .apply("hosts/theirs", Some(&theirs), 19)
            .expect("applies");
        assert!(!published.loaded, "not before the first load");
        let (next, p) = merge(&current, &published, &mirror);
        assert!(p.loaded);
        assert!(next.hosts.contains_key("mine") && next.hosts.contains_key("theirs"));
        assert_eq!(p.guard("hosts/mine"), 20);
        assert_eq!(p.guard("hosts/theirs"), 19);
        assert_eq!(p.local.len(), 1);

        // Then 20 (its own write) and 21 (another fabric deletes it).
        let mine = Entry::Host(Some(Box::new(host("mine", "52:54:00:00:00:09")))).encode();
        mirror
            .apply("hosts/mine", Some(&mine), 20)
            .expect("applies");
        mirror.apply("hosts/mine", None, 21).expect("applies");
        let (next, p) = merge(&next, &p, &mirror);
        assert!(!next.hosts.contains_key("mine"));
        assert!(p.local.is_empty());
        assert_eq!(p.guard("hosts/mine"), 0);
    }
}
