//! This fabric's registration in the cluster: its [`FabricRecord`] under an etcd lease of
//! `cluster.ttl_s`, renewed every third of it. A fabric that dies (or is cut off from etcd)
//! stops renewing, and etcd deletes its record when the lease runs out: the others see it
//! gone within the TTL. A clean stop revokes the lease, so it goes at once.
//!
//! The task also keeps [`ClusterView`], what this fabric last saw of the cluster (etcd up or
//! not, every fabric's record), for the admin API and the metrics; reads of it never wait on
//! etcd.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use prometheus::{IntCounter, IntGauge, Registry};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Cluster, ClusterError, FabricRecord};

/// What this fabric last saw of the cluster.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// This fabric's name.
    pub fabric: String,
    /// Its rack.
    pub rack: String,
    /// Whether the last exchange with etcd succeeded.
    pub etcd_up: bool,
    /// Every registered fabric, by name, as of `seen`.
    pub fabrics: Vec<FabricRecord>,
    /// When the fabrics were last read, Unix seconds (0: never).
    pub seen: u64,
    /// The last error, while etcd is not up.
    pub error: Option<String>,
    /// The fabric that leads the cluster (runs the reboot runs), as last read (`None`:
    /// unknown, or nobody).
    pub leader: Option<String>,
    /// Whether this fabric leads.
    pub leading: bool,
}

impl ClusterView {
    /// The view's JSON for `/api/v1/status`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "fabric": self.fabric,
            "rack": self.rack,
            "etcd": if self.etcd_up { "up" } else { "down" },
            "error": self.error,
            "seen": self.seen,
            "fabrics": self.fabrics,
            "leader": self.leader,
            "leading": self.leading,
        })
    }
}

/// The membership's metrics.
struct Metrics {
    up: IntGauge,
    fabrics: IntGauge,
    registrations: IntCounter,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let up = IntGauge::new(
            "bootfabric_cluster_etcd_up",
            "1 while this fabric's last exchange with etcd succeeded",
        )?;
        let fabrics = IntGauge::new(
            "bootfabric_cluster_fabrics",
            "Fabrics registered in the cluster, as last read from etcd",
        )?;
        let registrations = IntCounter::new(
            "bootfabric_cluster_registrations_total",
            "Times this fabric registered itself under a new etcd lease (1 + recoveries)",
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(fabrics.clone()))?;
        registry.register(Box::new(registrations.clone()))?;
        Ok(Self {
            up,
            fabrics,
            registrations,
        })
    }
}

/// Keeps this fabric registered while the daemon runs.
pub struct Membership {
    cluster: Cluster,
    view: Arc<ArcSwap<ClusterView>>,
    metrics: Metrics,
}

/// Unix seconds now.
fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `next` differs from the registered `last` enough to write it again: anything but
/// the egress, or the egress by more than a tenth (it moves all the time; etcd keeps every
/// revision until compaction, so a record is not rewritten for noise).
pub fn worth_writing(last: &FabricRecord, next: &FabricRecord) -> bool {
    let same_but_egress = FabricRecord {
        egress_bps: last.egress_bps,
        ..next.clone()
    } == *last;
    if !same_but_egress {
        return true;
    }
    let (a, b) = (last.egress_bps, next.egress_bps);
    (a - b).abs() > 0.1 * a.max(b)
}

impl Membership {
    /// The membership of `cluster`'s fabric, its metrics in `registry`.
    pub fn new(cluster: Cluster, registry: &Registry) -> Result<Self, prometheus::Error> {
        let view = Arc::new(ArcSwap::from_pointee(ClusterView {
            fabric: cluster.name.clone(),
            rack: cluster.rack.clone(),
            ..ClusterView::default()
        }));
        Ok(Self {
            cluster,
            view,
            metrics: Metrics::new(registry)?,
        })
    }

    /// What this fabric last saw of the cluster, updated while [`Self::run`] runs.
    pub fn view(&self) -> Arc<ArcSwap<ClusterView>> {
        Arc::clone(&self.view)
    }

    fn saw(&self, update: impl Fn(&mut ClusterView)) {
        // Read-copy-update: the election writes its fields of the same view concurrently.
        self.view.rcu(|cur| {
            let mut v = (**cur).clone();
            update(&mut v);
            v
        });
        let v = self.view.load();
        self.metrics.up.set(i64::from(v.etcd_up));
        self.metrics.fabrics.set(v.fabrics.len() as i64);
    }

    fn down(&self, e: &ClusterError) {
        // Another fabric holding the name is no etcd outage: etcd answered.
        let up = matches!(e, ClusterError::NameTaken { .. });
        let error = e.to_string();
        self.saw(|v| {
            v.etcd_up = up;
            v.error = Some(error.clone());
        });
    }

    /// Registers `record()` and keeps it registered until `cancel`; re-registers after any
    /// failure (backing off up to a third of the TTL), and revokes the lease on the way out.
    pub async fn run(
        self,
        record: impl Fn() -> FabricRecord + Send,
        cancel: CancellationToken,
    ) -> Result<(), std::io::Error> {
        let tick = self.cluster.ttl / 3;
        let mut backoff = Duration::from_millis(250);
        // The lease of the last registration: after a failed renewal the record may still
        // be there under it, and is ours to take over.
        let mut previous = None;
        loop {
            let first = record();
            let lease = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = self.register(&first, previous) => r,
            };
            match lease {
                Ok((lease, written)) => {
                    if let Some(old) = previous.replace(lease) {
                        self.revoke(old).await;
                    }
                    backoff = Duration::from_millis(250);
                    self.metrics.registrations.inc();
                    info!(
                        fabric = %self.cluster.name,
                        rack = %self.cluster.rack,
                        "registered in the cluster"
                    );
                    let end = self.renew(lease, written, &record, tick, &cancel).await;
                    match end {
                        Ok(()) => {
                            self.revoke(lease).await;
                            return Ok(());
                        }
                        Err(e) => {
                            warn!(error = %e, "cluster registration lost; registering again");
                            self.down(&e);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot register in the cluster; trying again");
                    self.down(&e);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(tick.max(Duration::from_secs(1)));
        }
    }

    /// A new lease with `record` under it, unless another live fabric holds the name: the
    /// key is taken only when free (no lease) or still under this fabric's `previous` lease.
    async fn register(
        &self,
        record: &FabricRecord,
        previous: Option<i64>,
    ) -> Result<(i64, FabricRecord), ClusterError> {
        let c = &self.cluster;
        let mut client = c.client();
        let ttl = i64::try_from(c.ttl.as_secs()).unwrap_or(i64::MAX);
        let lease = c.bounded(client.lease_grant(ttl, None)).await?.id();
        let key = c.key("fabrics", &c.name);
        let value = serde_json::to_vec(record).map_err(|e| ClusterError::Record {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let mut holder = None;
        for owner in std::iter::once(0).chain(previous) {
            let txn = Txn::new()
                .when([Compare::lease(key.as_str(), CompareOp::Equal, owner)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let resp = c.bounded(client.txn(txn)).await?;
            if resp.succeeded() {
                self.refresh().await?;
                return Ok((lease, record.clone()));
            }
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(g) = op {
                    holder = g
                        .kvs()
                        .first()
                        .and_then(|kv| serde_json::from_slice::<FabricRecord>(kv.value()).ok());
                }
            }
        }
        // The new lease holds nothing: give it back rather than let it run out.
        let _ = c.bounded(client.lease_revoke(lease)).await;
        Err(ClusterError::NameTaken {
            name: c.name.clone(),
            holder: holder.map_or_else(
                || "a record that does not parse".to_owned(),
                |h| {
                    format!(
                        "rack {}, version {}, started {}",
                        h.rack, h.version, h.started
                    )
                },
            ),
        })
    }

    async fn put(&self, lease: i64, record: &FabricRecord) -> Result<(), ClusterError> {
        let c = &self.cluster;
        let key = c.key("fabrics", &c.name);
        let value = serde_json::to_vec(record).map_err(|e| ClusterError::Record {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let mut client = c.client();
        c.bounded(client.put(key, value, Some(PutOptions::new().with_lease(lease))))
            .await?;
        Ok(())
    }

    /// Reads every fabric into the view.
    async fn refresh(&self) -> Result<(), ClusterError> {
        let fabrics = self.cluster.fabrics().await?;
        self.saw(|v| {
            v.etcd_up = true;
            v.error = None;
            v.fabrics = fabrics.clone();
            v.seen = now();
        });
        Ok(())
    }

    /// Renews `lease` every `tick` until `cancel` (`Ok`) or a failure (`Err`: the lease may
    /// be gone), rewriting the record when it changed.
    async fn renew(
        &self,
        lease: i64,
        mut written: FabricRecord,
        record: &(impl Fn() -> FabricRecord + Send),
        tick: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), ClusterError> {
        let c = &self.cluster;
        let mut client = c.client();
        let (mut keeper, mut stream) = c.bounded(client.lease_keep_alive(lease)).await?;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = interval.tick() => {}
            }
            c.bounded(keeper.keep_alive()).await?;
            let answer = c.bounded(stream.message()).await?;
            match answer {
                Some(r) if r.ttl() > 0 => {}
                // The lease ran out before this renewal reached etcd (a long cut): the record
                // is gone with it.
                _ => {
                    return Err(ClusterError::Record {
                        key: c.key("fabrics", &c.name),
                        reason: "the registration's lease expired".to_owned(),
                    })
                }
            }
            let next = record();
            if worth_writing(&written, &next) {
                self.put(lease, &next).await?;
                written = next;
            }
            self.refresh().await?;
        }
    }

    async fn revoke(&self, lease: i64) {
        let c = &self.cluster;
        let mut client = c.client();
        match c.bounded(client.lease_revoke(lease)).await {
            Ok(_) => info!(fabric = %c.name, "left the cluster"),
            Err(e) => {
                warn!(error = %e, "cannot revoke the cluster registration; it expires with its lease")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(egress: f64, generation: u64) -> FabricRecord {
        FabricRecord {
            name: "f1".into(),
            rack: "r1".into(),
            version: "0.1.0".into(),
            started: 1,
            egress_bps: egress,
            generation,
        }
    }

    #[test]
    fn a_record_is_rewritten_for_a_change_not_for_egress_noise() {
        let last = record(1000.0, 3);
        assert!(!worth_writing(&last, &record(1050.0, 3)));
        assert!(!worth_writing(&last, &record(950.0, 3)));
        assert!(worth_writing(&last, &record(1200.0, 3)));
        assert!(worth_writing(&last, &record(0.0, 3)));
        assert!(worth_writing(&record(0.0, 3), &record(10.0, 3)));
        assert!(!worth_writing(&record(0.0, 3), &record(0.0, 3)));
        assert!(worth_writing(&last, &record(1000.0, 4)), "a new generation");
    }
}
