//! Reboot runs kept in etcd, so that they outlive the fabric that runs them.
//!
//! A run is `<prefix>/runs/<id>` (what was asked: its hosts and racks, who asked) and one
//! record per host under `<prefix>/run-hosts/<id>/<host>`: what was last done to it. The
//! leader writes a host's record *before* each action (`resetting` before the BMC call, then
//! `reset` once the BMC accepted it), through the election's [`Fence`]: etcd refuses the
//! write of a fabric that no longer leads, and a leader that cannot write does not act. A
//! new leader reads the records and resumes (the decisions are the reboot service's, pure).
//! The fabric that serves a host writes its outcome (`booted`, `failed`) unfenced: it is a
//! fact seen on that fabric's own network, whoever leads.
//!
//! A fabric that does not lead may still take a run for the leader: it stores it `requested`
//! ([`RunStore::request`]), at most [`MAX_REQUESTED`] waiting at once, and the leader takes
//! the oldest when it has nothing to run ([`next_to_run`]), turning it `running` through its
//! fence before any reset.
//!
//! Records are JSON; a record that does not parse is an error naming its key, never a
//! default.

use etcd_client::{Compare, CompareOp, GetOptions, SortOrder, SortTarget, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::{election::Fence, Cluster, ClusterError};

/// The key kinds owned here.
const RUNS: &str = "runs";
const HOSTS: &str = "run-hosts";

/// A write refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// etcd cannot be used.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// This fabric does not lead (any more): etcd refused the fenced write.
    #[error("this fabric does not lead the cluster")]
    NotLeader,
    /// The request's write was sent and etcd did not confirm it (timed out, connection or
    /// leader lost): the run may still be stored, and the leader would then run it.
    #[error("etcd did not confirm the write ({0}): the run may still be stored")]
    Unconfirmed(ClusterError),
    /// [`MAX_REQUESTED`] runs already wait for the leader.
    #[error("{waiting} reboot runs already wait for the leader (at most {MAX_REQUESTED}): try again once it has taken them")]
    TooManyRequested {
        /// How many wait.
        waiting: usize,
    },
}

/// The error of a write that failed: [`RunsError::Unconfirmed`] if it may still land.
fn unconfirmed(e: ClusterError) -> RunsError {
    if e.outcome_unknown() {
        RunsError::Unconfirmed(e)
    } else {
        RunsError::Cluster(e)
    }
}

/// Runs that may wait for the leader at once: a caller that repeats its request (a retry
/// loop, a hostile client with the token) fills this much of etcd, never more.
pub const MAX_REQUESTED: usize = 4;

/// One host of a run, as asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHost {
    /// Its inventory name.
    pub name: String,
    /// Its rack (the fabric serving that rack records its outcome).
    pub rack: String,
}

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunPhase {
    /// Asked through a fabric that does not lead: waits for the leader to take it.
    Requested,
    /// Hosts remain to be reset or to boot.
    Running,
    /// Cancelled: nothing more is reset.
    Cancelled,
    /// Every host booted or failed.
    Done,
}

/// A run (`<prefix>/runs/<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its number, unique in the cluster.
    pub id: u64,
    /// The fabric whose API started it.
    pub started_by: String,
    /// Unix ms it started.
    pub started_ms: u64,
    /// Its hosts, in the order asked.
    pub hosts: Vec<RunHost>,
    /// Where it is.
    pub phase: RunPhase,
}

/// The run the leader should drive next, of `runs` (oldest first): one left running by a
/// leader that died or lost its term comes first, then the oldest requested.
pub fn next_to_run(runs: &[RunRecord]) -> Option<&RunRecord> {
    runs.iter()
        .find(|r| r.phase == RunPhase::Running)
        .or_else(|| runs.iter().find(|r| r.phase == RunPhase::Requested))
}

/// What was last done to a host of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// The leader is about to call (or is calling) the host's BMC: the outcome is unknown
    /// until `reset` follows.
    Resetting,
    /// The BMC accepted the reset.
    Reset,
    /// The host booted (recorded by the fabric that serves it).
    Booted,
    /// Given up on.
    Failed,
}

impl HostState {
    /// Whether the host is done with (booted or failed).
    pub fn ended(self) -> bool {
        matches!(self, Self::Booted | Self::Failed)
    }
}

/// A host's record (`<prefix>/run-hosts/<id>/<host>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// What was last done.
    pub state: HostState,
    /// The fabric that wrote it.
    pub fabric: String,
    /// Unix ms it was written.
    pub at_ms: u64,
    /// Reset attempts so far.
    pub attempts: u32,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The run records of a cluster.
#[derive(Clone)]
pub struct RunStore {
    cluster: Cluster,
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, ClusterError> {
    serde_json::to_vec(value).map_err(|e| ClusterError::Record {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T, ClusterError> {
    serde_json::from_slice(value).map_err(|e| ClusterError::Record {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// A run's key suffix: zero-padded, so that etcd's key order is the runs' order.
pub fn run_name(id: u64) -> String {
    format!("{id:020}")
}

impl RunStore {
    /// The runs of `cluster`.
    pub fn new(cluster: Cluster) -> Self {
        Self { cluster }
    }

    /// This fabric's name.
    pub fn fabric(&self) -> &str {
        self.cluster.name()
    }

    /// Stores a new run of `hosts`, started by this fabric at `now_ms`: its number is one
    /// past the last run's (a transaction that creates the key only if nobody took the
    /// number meanwhile; retried a few times when two fabrics start runs at once).
    pub async fn create(&self, hosts: Vec<RunHost>, now_ms: u64) -> Result<RunRecord, RunsError> {
        let c = &self.cluster;
        let mut client = c.client();
        for _ in 0..5 {
            let dir = c.dir(RUNS);
            let last = c
                .bounded(
                    client.get(
                        dir.as_str(),
                        Some(
                            GetOptions::new()
                                .with_prefix()
                                .with_keys_only()
                                .with_sort(SortTarget::Key, SortOrder::Descend)
                                .with_limit(1),
                        ),
                    ),
                )
                .await?;
            let id = last
                .kvs()
                .first()
                .and_then(|kv| {
                    std::str::from_utf8(kv.key())
                        .ok()?
                        .strip_prefix(&dir)?
                        .parse()
                        .ok()
                })
                .unwrap_or(0u64)
                + 1;
            let record = RunRecord {
                id,
                started_by: c.name().to_owned(),
                started_ms: now_ms,
                hosts: hosts.clone(),
                phase: RunPhase::Running,
            };
            let key = c.key(RUNS, &run_name(id));
            let value = encode(&key, &record)?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value, None)]);
            let written = c.bounded(client.txn(txn)).await.map_err(unconfirmed)?;
            if written.succeeded() {
                return Ok(record);
            }
        }
        Err(ClusterError::Record {
            key: c.dir(RUNS),
            reason: "no free run number after 5 tries".to_owned(),
        }
        .into())
    }

    /// How long a caller refused for want of a leader should wait: a new leader is elected
    /// within about the membership TTL.
    pub fn retry_after(&self) -> std::time::Duration {
        self.cluster.ttl()
    }

    /// Stores a run of `hosts` asked through this fabric at `now_ms`, `requested`: the leader
    /// takes it. Refused with [`RunsError::TooManyRequested`] when [`MAX_REQUESTED`] wait
    /// already; the count and the write are one transaction (it fails, and is tried again, if
    /// any run changed since the count was read), so fabrics asking at once cannot overshoot.
    pub async fn request(&self, hosts: Vec<RunHost>, now_ms: u64) -> Result<RunRecord, RunsError> {
        let c = &self.cluster;
        let mut client = c.client();
        let dir = c.dir(RUNS);
        for _ in 0..5 {
            let (runs, read_at) = self.read_runs().await?;
            let waiting = runs
                .iter()
                .filter(|r| r.phase == RunPhase::Requested)
                .count();
            if waiting >= MAX_REQUESTED {
                return Err(RunsError::TooManyRequested { waiting });
            }
            let id = runs.iter().map(|r| r.id).max().unwrap_or(0) + 1;
            let record = RunRecord {
                id,
                started_by: c.name().to_owned(),
                started_ms: now_ms,
                hosts: hosts.clone(),
                phase: RunPhase::Requested,
            };
            let key = c.key(RUNS, &run_name(id));
            let value = encode(&key, &record)?;
            let txn = Txn::new()
                .when([
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    // No run written since the count: every key's last change is older.
                    Compare::mod_revision(dir.as_str(), CompareOp::Less, read_at + 1).with_prefix(),
                ])
                .and_then([TxnOp::put(key.as_str(), value, None)]);
            if c.bounded(client.txn(txn)).await?.succeeded() {
                return Ok(record);
            }
        }
        Err(ClusterError::Record {
            key: dir,
            reason: "runs kept changing: no request stored after 5 tries".to_owned(),
        }
        .into())
    }

    /// The newest run (the current or last one), if any.
    pub async fn newest(&self) -> Result<Option<RunRecord>, ClusterError> {
        let c = &self.cluster;
        let mut client = c.client();
        let dir = c.dir(RUNS);
        let resp = c
            .bounded(
                client.get(
                    dir.as_str(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_sort(SortTarget::Key, SortOrder::Descend)
                            .with_limit(1),
                    ),
                ),
            )
            .await?;
        resp.kvs()
            .first()
            .map(|kv| decode(kv.key(), kv.value()))
            .transpose()
    }

    /// Every run, oldest first.
    pub async fn runs(&self) -> Result<Vec<RunRecord>, ClusterError> {
        Ok(self.read_runs().await?.0)
    }

    /// Every run, oldest first, and the etcd revision they were read at.
    async fn read_runs(&self) -> Result<(Vec<RunRecord>, i64), ClusterError> {
        let c = &self.cluster;
        let mut client = c.client();
        let dir = c.dir(RUNS);
        let resp = c
            .bounded(client.get(dir.as_str(), Some(GetOptions::new().with_prefix())))
            .await?;
        let read_at = resp.header().map_or(0, |h| h.revision());
        let runs = resp
            .kvs()
            .iter()
            .map(|kv| decode(kv.key(), kv.value()))
            .collect::<Result<_, _>>()?;
        Ok((runs, read_at))
    }

    /// One run.
    pub async fn run(&self, id: u64) -> Result<Option<RunRecord>, ClusterError> {
        let c = &self.cluster;
        let mut client = c.client();
        let key = c.key(RUNS, &run_name(id));
        let resp = c.bounded(client.get(key.as_str(), None)).await?;
        resp.kvs()
            .first()
            .map(|kv| decode(kv.key(), kv.value()))
            .transpose()
    }

    /// The records of run `id`'s hosts, by name (hosts nothing was done to have none).
    pub async fn hosts(&self, id: u64) -> Result<Vec<(String, HostRecord)>, ClusterError> {
        let c = &self.cluster;
        let mut client = c.client();
        let dir = format!("{}{}/", c.dir(HOSTS), run_name(id));
        let resp = c
            .bounded(client.get(dir.as_str(), Some(GetOptions::new().with_prefix())))
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(kv.key())
                    .strip_prefix(&dir)
                    .unwrap_or_default()
                    .to_owned();
                Ok((name, decode(kv.key(), kv.value())?))
            })
            .collect()
    }

    fn host_key(&self, id: u64, host: &str) -> String {
        format!("{}{}/{host}", self.cluster.dir(HOSTS), run_name(id))
    }

    /// Writes what the leader is about to do (or did) to `host` of run `id`, only while
    /// `fence`'s term holds: [`RunsError::NotLeader`] if etcd says another fabric leads.
    pub async fn record_fenced(
        &self,
        fence: &Fence,
        id: u64,
        host: &str,
        record: &HostRecord,
    ) -> Result<(), RunsError> {
        let c = &self.cluster;
        let key = self.host_key(id, host);
        let value = encode(&key, record)?;
        let txn =
            Txn::new()
                .when([fence.compare()])
                .and_then([TxnOp::put(key.as_str(), value, None)]);
        let mut client = c.client();
        if c.bounded(client.txn(txn)).await?.succeeded() {
            Ok(())
        } else {
            Err(RunsError::NotLeader)
        }
    }

    /// Sets run `id`'s phase, only while `fence`'s term holds.
    pub async fn set_phase(
        &self,
        fence: &Fence,
        id: u64,
        phase: RunPhase,
    ) -> Result<(), RunsError> {
        let Some(mut run) = self.run(id).await? else {
            return Ok(());
        };
        run.phase = phase;
        let c = &self.cluster;
        let key = c.key(RUNS, &run_name(id));
        let value = encode(&key, &run)?;
        let txn =
            Txn::new()
                .when([fence.compare()])
                .and_then([TxnOp::put(key.as_str(), value, None)]);
        let mut client = c.client();
        if c.bounded(client.txn(txn)).await?.succeeded() {
            Ok(())
        } else {
            Err(RunsError::NotLeader)
        }
    }

    /// Records the outcome the fabric serving `host` saw (`booted`, `failed`), unless the
    /// record already says the host ended: `Ok(false)` then. Unfenced: it is what happened
    /// on this fabric's network; the revision compare keeps a concurrent leader write from
    /// being overwritten unseen (the caller reads again and retries at its next look).
    pub async fn record_outcome(
        &self,
        id: u64,
        host: &str,
        record: &HostRecord,
    ) -> Result<bool, ClusterError> {
        let c = &self.cluster;
        let key = self.host_key(id, host);
        let mut client = c.client();
        let cur = c.bounded(client.get(key.as_str(), None)).await?;
        let (revision, ended) = match cur.kvs().first() {
            Some(kv) => {
                let r: HostRecord = decode(kv.key(), kv.value())?;
                (kv.mod_revision(), r.state.ended())
            }
            None => (0, false),
        };
        if ended {
            return Ok(false);
        }
        let value = encode(&key, record)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        Ok(c.bounded(client.txn(txn)).await?.succeeded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request's write that timed out may have stored the run (the leader would run it):
    /// said so, never "nothing stored"; one that never reached etcd is a plain failure.
    #[test]
    fn a_request_etcd_did_not_confirm_is_not_called_unstored() {
        let late = unconfirmed(ClusterError::Timeout(std::time::Duration::from_secs(2)));
        assert!(matches!(late, RunsError::Unconfirmed(_)), "{late:?}");
        assert!(late.to_string().contains("may still be stored"), "{late}");
        let no_leader = unconfirmed(ClusterError::Etcd(etcd_client::Error::GRpcStatus(
            tonic::Status::unavailable("etcdserver: no leader"),
        )));
        assert!(matches!(no_leader, RunsError::Cluster(_)), "{no_leader:?}");
    }

    #[test]
    fn records_read_back_as_written_and_run_names_sort_as_numbers() {
        let r = HostRecord {
            state: HostState::Resetting,
            fabric: "fab-a".into(),
            at_ms: 5,
            attempts: 1,
            reason: None,
        };
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(
            text,
            r#"{"state":"resetting","fabric":"fab-a","at_ms":5,"attempts":1}"#
        );
        assert_eq!(
            decode::<HostRecord>(b"k", text.as_bytes()).expect("back"),
            r
        );
        assert!(run_name(9) < run_name(10));
        let bad = decode::<HostRecord>(b"/p/run-hosts/1/h", br#"{"state":"gone"}"#);
        assert!(
            matches!(bad, Err(ClusterError::Record { ref key, .. }) if key == "/p/run-hosts/1/h"),
            "{bad:?}"
        );
        assert!(HostState::Booted.ended() && HostState::Failed.ended());
        assert!(!HostState::Reset.ended() && !HostState::Resetting.ended());
    }

    fn run(id: u64, phase: RunPhase) -> RunRecord {
        RunRecord {
            id,
            started_by: "fab-b".into(),
            started_ms: id,
            hosts: Vec::new(),
            phase,
        }
    }

    #[test]
    fn a_run_left_running_goes_before_the_oldest_requested() {
        use RunPhase::*;
        assert_eq!(next_to_run(&[]), None);
        assert_eq!(next_to_run(&[run(1, Done), run(2, Cancelled)]), None);
        let runs = [run(1, Done), run(2, Requested), run(3, Requested)];
        assert_eq!(next_to_run(&runs).map(|r| r.id), Some(2), "oldest first");
        let runs = [run(1, Requested), run(2, Running), run(3, Requested)];
        assert_eq!(
            next_to_run(&runs).map(|r| r.id),
            Some(2),
            "a run a dead leader left comes first: its hosts may be half reset"
        );
        assert_eq!(
            serde_json::to_string(&run(4, Requested)).expect("json"),
            r#"{"id":4,"started_by":"fab-b","started_ms":4,"hosts":[],"phase":"requested"}"#
        );
    }
}
