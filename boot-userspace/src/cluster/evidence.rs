//! Boot evidence from the other fabrics: the `booted` entries of the shared timelines
//! ([`super::timeline`]) of the hosts a reboot run follows, so the run's leader sees a host of
//! another fabric's rack boot (it asked DHCP, fetched its images and called back there, not
//! at the leader) instead of failing it at its POST timeout.
//!
//! Bounded: one watch on `<prefix>/timeline/` while a run is followed (no read per host per
//! tick; no watch at all between runs), whose puts are kept only for the MACs
//! [`Evidence::follow`] named (the run's hosts), at most [`KEEP`] boot times each;
//! everything else the watch brings is dropped on arrival. When a
//! run starts (or is taken over) and whenever the watch is (re)established, each followed
//! host's timeline is read once ([`super::timeline::Reader::host`], at most `READ_MAX`
//! entries): a boot reported while no watch ran (this fabric was not leading yet, or etcd was
//! out of reach) is not missed. Entries this fabric recorded itself are skipped: its own
//! ledger has them already.
//!
//! Hostile network: only a fabric's ledger writes these entries, and a fabric records
//! `booted` only from the host's own address (the HTTP `/booted` route), so a machine cannot
//! report another's boot through another fabric any more than through this one.
//!
//! Pure here: [`Seen`] (what is kept and what a tick is told) and [`mac_of_key`]. The I/O
//! shell is [`Evidence::run`].

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{EventType, WatchOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    timeline::{Reader, SharedEntry, KIND},
    Cluster, ClusterError,
};
use crate::model::{inventory::Mac, ledger::Phase};

/// Boot times kept per followed host (the newest): a run asks only for the first boot since
/// its reset, and a host boots a few times a run at the very most.
pub const KEEP: usize = 4;

/// The MAC whose timeline `key` (under `dir`, `<prefix>/timeline/`) is an entry of.
pub fn mac_of_key(dir: &str, key: &str) -> Option<Mac> {
    let (mac, _entry) = key.strip_prefix(dir)?.split_once('/')?;
    mac.parse().ok()
}

/// What the other fabrics said of the followed hosts: their boot times (unix ms), by MAC.
#[derive(Debug, Default)]
pub struct Seen {
    /// This fabric's name: its own entries are not evidence from another fabric.
    me: String,
    booted: HashMap<Mac, Vec<u64>>,
}

impl Seen {
    /// Nothing followed yet, for fabric `me`.
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            booted: HashMap::new(),
        }
    }

    /// Follows exactly `macs` from now on: what is known of the ones still followed is kept,
    /// the others are forgotten.
    pub fn follow(&mut self, macs: &[Mac]) {
        let wanted: HashSet<Mac> = macs.iter().copied().collect();
        self.booted.retain(|m, _| wanted.contains(m));
        for m in wanted {
            self.booted.entry(m).or_default();
        }
    }

    /// The MACs followed.
    pub fn followed(&self) -> Vec<Mac> {
        self.booted.keys().copied().collect()
    }

    /// Takes `entry` of `mac`'s shared timeline; true when it is news (a `booted` of a
    /// followed host, from another fabric, not known yet).
    pub fn offer(&mut self, mac: Mac, entry: &SharedEntry) -> bool {
        if entry.phase != Phase::Booted || entry.fabric == self.me {
            return false;
        }
        let Some(times) = self.booted.get_mut(&mac) else {
            return false;
        };
        if times.contains(&entry.at_ms) {
            return false;
        }
        times.push(entry.at_ms);
        times.sort_unstable();
        if times.len() > KEEP {
            times.remove(0);
        }
        true
    }

    /// When `mac` first reported booted at another fabric at or after `since_ms` (its reset:
    /// an earlier boot is not this run's).
    pub fn booted_since(&self, mac: Mac, since_ms: u64) -> Option<u64> {
        self.booted
            .get(&mac)?
            .iter()
            .copied()
            .find(|&at| at >= since_ms)
    }
}

/// The boot evidence of the run's hosts from the other fabrics: followed by [`Self::run`],
/// asked by the reboot runner each tick. Cheap to clone.
#[derive(Clone)]
pub struct Evidence {
    cluster: Cluster,
    seen: Arc<Mutex<Seen>>,
    /// Rung when the followed hosts change: their timelines are read once.
    changed: Arc<Notify>,
}

/// Waits between attempts to (re)establish the watch.
const RETRY: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(15);

impl Evidence {
    /// Evidence from `cluster`'s shared timelines; follows nothing until [`Self::follow`].
    pub fn new(cluster: Cluster) -> Self {
        let seen = Seen::new(cluster.name());
        Self {
            cluster,
            seen: Arc::new(Mutex::new(seen)),
            changed: Arc::new(Notify::new()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A panicked holder leaves plain data behind, still usable.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows exactly `macs` (a run's hosts; none once it ends). Their timelines are read
    /// once in the background, for boots reported before the watch saw them.
    pub fn follow(&self, macs: &[Mac]) {
        self.seen().follow(macs);
        self.changed.notify_one();
    }

    /// When `mac` reported booted at another fabric at or after `since_ms`.
    pub fn booted_since(&self, mac: Mac, since_ms: u64) -> Option<u64> {
        self.seen().booted_since(mac, since_ms)
    }

    /// When `mac` reported booted at or after `since_ms` at any fabric, read from its shared
    /// timeline now (not from what is followed): a new leader deciding on a host whose
    /// reset outcome is unknown must not miss a boot the watch has not caught up with yet.
    pub async fn booted_in_timeline(
        &self,
        mac: Mac,
        since_ms: u64,
    ) -> Result<Option<u64>, ClusterError> {
        let entries = Reader::new(self.cluster.clone()).host(mac).await?;
        Ok(entries
            .iter()
            .filter(|e| e.phase == Phase::Booted && e.at_ms >= since_ms)
            .map(|e| e.at_ms)
            .min())
    }

    /// Watches the shared timelines until `cancel`, keeping the followed hosts' boots, while
    /// any host is followed (no run, no watch: nothing streamed); the watch is re-established
    /// with backoff when it fails (etcd out of reach, a compaction).
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = RETRY;
        loop {
            while self.seen().followed().is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.changed.notified() => {}
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.watch() => match r {
                    // Nothing followed any more: idle until the next run.
                    Ok(()) => {
                        backoff = RETRY;
                        continue;
                    }
                    Err(e) => warn!(error = %e, "boot evidence: the shared timeline watch ended"),
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }

    /// One watch: established first, then the followed hosts read once (nothing between the
    /// two is missed), then their timelines' puts kept as they come, and the hosts read again
    /// whenever the followed set changes; `Ok` once nothing is followed.
    async fn watch(&self) -> Result<(), ClusterError> {
        let dir = self.cluster.dir(KIND);
        let mut client = self.cluster.client();
        let options = WatchOptions::new().with_prefix();
        let mut stream = self
            .cluster
            .bounded(client.watch(dir.as_str(), Some(options)))
            .await?;
        self.catch_up().await;
        loop {
            let resp = tokio::select! {
                m = stream.message() => m?,
                _ = self.changed.notified() => {
                    if self.seen().followed().is_empty() {
                        return Ok(());
                    }
                    self.catch_up().await;
                    continue;
                }
            };
            let Some(resp) = resp else {
                break;
            };
            if resp.canceled() {
                break;
            }
            let mut seen = self.seen();
            for ev in resp.events() {
                let Some(kv) = ev.kv().filter(|_| ev.event_type() == EventType::Put) else {
                    continue;
                };
                let Some(mac) = kv.key_str().ok().and_then(|k| mac_of_key(&dir, k)) else {
                    continue;
                };
                match serde_json::from_slice::<SharedEntry>(kv.value()) {
                    Ok(entry) => {
                        if seen.offer(mac, &entry) {
                            debug!(%mac, fabric = %entry.fabric, "boot evidence from another fabric");
                        }
                    }
                    Err(e) => debug!(%mac, error = %e, "boot evidence: entry skipped"),
                }
            }
        }
        Err(ClusterError::Record {
            key: dir,
            reason: "watch ended".to_owned(),
        })
    }

    /// Reads each followed host's shared timeline once (bounded per host).
    async fn catch_up(&self) {
        let reader = Reader::new(self.cluster.clone());
        let macs = self.seen().followed();
        for mac in macs {
            match reader.host(mac).await {
                Ok(entries) => {
                    let mut seen = self.seen();
                    for e in &entries {
                        seen.offer(mac, e);
                    }
                }
                Err(e) => warn!(%mac, error = %e, "boot evidence: cannot read the host's timeline"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
    const B: Mac = Mac([0x52, 0x54, 0, 0, 0, 2]);

    fn entry(at_ms: u64, fabric: &str, phase: Phase) -> SharedEntry {
        SharedEntry {
            at_ms,
            fabric: fabric.into(),
            seq: at_ms,
            phase,
            ip: None,
            detail: None,
        }
    }

    #[test]
    fn a_key_names_its_host() {
        let dir = "/bootfabric/timeline/";
        let key = format!("{dir}{A}/0000000001000-fab-b-0000000001");
        assert_eq!(mac_of_key(dir, &key), Some(A));
        assert_eq!(mac_of_key(dir, "/bootfabric/timeline/not-a-mac/x"), None);
        assert_eq!(mac_of_key(dir, &format!("{dir}{A}")), None, "no entry");
        assert_eq!(mac_of_key("/other/timeline/", &key), None);
    }

    #[test]
    fn only_other_fabrics_boots_of_followed_hosts_are_kept() {
        let mut s = Seen::new("fab-a");
        assert!(
            !s.offer(A, &entry(10, "fab-b", Phase::Booted)),
            "not followed"
        );
        s.follow(&[A]);
        assert!(!s.offer(A, &entry(20, "fab-a", Phase::Booted)), "its own");
        assert!(
            !s.offer(A, &entry(20, "fab-b", Phase::DhcpOffer)),
            "not a boot"
        );
        assert!(
            !s.offer(B, &entry(20, "fab-b", Phase::Booted)),
            "not followed"
        );
        assert!(s.offer(A, &entry(30, "fab-b", Phase::Booted)));
        assert!(!s.offer(A, &entry(30, "fab-b", Phase::Booted)), "known");
        assert_eq!(s.booted_since(A, 0), Some(30));
        assert_eq!(s.booted_since(A, 30), Some(30));
        assert_eq!(
            s.booted_since(A, 31),
            None,
            "an earlier boot is not this run's"
        );
        assert_eq!(s.booted_since(B, 0), None);
    }

    #[test]
    fn following_another_run_forgets_the_last_and_each_host_keeps_a_few() {
        let mut s = Seen::new("fab-a");
        s.follow(&[A, B]);
        for at in 1..=10 {
            s.offer(A, &entry(at * 100, "fab-b", Phase::Booted));
        }
        s.offer(B, &entry(50, "fab-c", Phase::Booted));
        // Only the newest KEEP boot times: the oldest ones are gone.
        assert_eq!(s.booted_since(A, 0), Some(700));
        s.follow(&[A]);
        assert_eq!(s.booted_since(A, 0), Some(700), "still followed: kept");
        assert_eq!(s.booted_since(B, 0), None, "no longer followed");
        s.follow(&[]);
        assert!(s.followed().is_empty());
        assert!(!s.offer(A, &entry(2000, "fab-b", Phase::Booted)));
    }
}
