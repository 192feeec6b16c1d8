//! Which fabric runs the reboot runs: one leader at a time, elected through etcd.
//!
//! Each fabric campaigns with a lease of its own (`cluster.ttl_s`, renewed every third of it):
//! a transaction creates `<prefix>/leader/reboot` = its name under that lease if the key does
//! not exist, else reads who holds it. The holder leads for as long as its lease lives; a
//! fabric that dies or is cut off from etcd stops renewing, etcd deletes the key with the
//! lease, and the next campaign of another fabric (every third of the TTL) takes it: a new
//! leader within about `ttl_s` + `ttl_s / 3`.
//!
//! Leading is local knowledge that can go stale, so it is held two ways:
//! - [`Leadership::leading`] is true only until the lease's last renewal runs out, counted
//!   from when that renewal was *sent* (never later than etcd's own count), and false at once
//!   when a renewal or a campaign fails;
//! - every write the leader must be the only one to make goes through [`Leadership::fence`]:
//!   a transaction that compares the leader key's lease with ours, so that etcd itself
//!   refuses the write of a leader that has been replaced (see `cluster::runs`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use prometheus::{IntGauge, Registry};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{membership::ClusterView, Cluster, ClusterError};

/// The role elected (the key's name under `<prefix>/leader/`).
const ROLE: &str = "reboot";

/// A term of leadership as this fabric holds it.
#[derive(Clone, Copy, Debug)]
struct Term {
    lease: i64,
    /// When the lease runs out at the latest, by this fabric's clock.
    until: Instant,
}

/// This fabric's leadership, as the election task last established it. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    /// The leader key.
    key: Arc<str>,
    term: Arc<Mutex<Option<Term>>>,
    /// Who holds the key, as last read (this fabric's name while it leads).
    holder: Arc<Mutex<Option<String>>>,
}

/// Proof of a term to put in a transaction: the leader key and the lease it must still be
/// held under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub(crate) key: String,
    pub(crate) lease: i64,
}

impl Fence {
    /// The transaction's condition: the leader key is still held under this term's lease.
    pub(crate) fn compare(&self) -> Compare {
        Compare::lease(self.key.as_str(), CompareOp::Equal, self.lease)
    }
}

impl Leadership {
    /// No term yet, for the leader key `key`.
    fn new(key: String) -> Self {
        Self {
            key: key.into(),
            term: Arc::default(),
            holder: Arc::default(),
        }
    }

    /// A leadership that leads for `term` from now (`None`: does not lead), held by
    /// `holder`: for the tests of the services that act only as the leader.
    #[cfg(test)]
    pub(crate) fn fixed(holder: Option<&str>, term: Option<Duration>) -> Self {
        let l = Self::new("/test/leader/reboot".into());
        l.set(term.map(|t| Term {
            lease: 1,
            until: Instant::now() + t,
        }));
        *l.holder.lock().unwrap_or_else(|e| e.into_inner()) = holder.map(str::to_owned);
        l
    }

    /// The fabric that leads, as this one last read it (`None`: unknown, or nobody).
    pub fn leader(&self) -> Option<String> {
        self.holder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Term>> {
        // A panicked holder leaves a plain value behind, still usable.
        self.term.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this fabric leads now (its term's lease cannot have run out yet).
    pub fn leading(&self) -> bool {
        self.lock().is_some_and(|t| Instant::now() < t.until)
    }

    /// The fence of the term in force, if this fabric leads now.
    pub fn fence(&self) -> Option<Fence> {
        let t = (*self.lock())?;
        (Instant::now() < t.until).then(|| Fence {
            key: self.key.to_string(),
            lease: t.lease,
        })
    }

    fn set(&self, term: Option<Term>) {
        *self.lock() = term;
    }
}

/// Campaigns for the leadership while the daemon runs.
pub struct Election {
    cluster: Cluster,
    leadership: Leadership,
    view: Arc<ArcSwap<ClusterView>>,
    leader_metric: IntGauge,
}

impl Election {
    /// The election of `cluster`'s fabric; it shows who leads in `view` and in
    /// `bootfabric_cluster_leader` (registered in `registry`).
    pub fn new(
        cluster: Cluster,
        view: Arc<ArcSwap<ClusterView>>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let leader_metric = IntGauge::new(
            "bootfabric_cluster_leader",
            "1 while this fabric is the cluster's leader (it runs the reboot runs)",
        )?;
        registry.register(Box::new(leader_metric.clone()))?;
        Ok(Self {
            leadership: Leadership::new(cluster.key("leader", ROLE)),
            cluster,
            view,
            leader_metric,
        })
    }

    /// This fabric's leadership, for the services that act only as the leader.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    fn show(&self, leader: Option<String>, leading: bool) {
        self.leader_metric.set(i64::from(leading));
        *self
            .leadership
            .holder
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = leader.clone();
        self.view.rcu(|v| {
            let mut v = (**v).clone();
            v.leader = leader.clone();
            v.leading = leading;
            v
        });
    }

    /// Campaigns until `cancel`; after any failure (this fabric no longer leads) campaigns
    /// again with a new lease, backing off up to a third of the TTL. On the way out it resigns
    /// (revokes its lease: the leader key goes with it, and another fabric takes over at its
    /// next campaign instead of after the TTL).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), std::io::Error> {
        let tick = self.cluster.ttl / 3;
        let mut backoff = Duration::from_millis(250);
        loop {
            let mut client = self.cluster.client();
            let ttl = i64::try_from(self.cluster.ttl.as_secs()).unwrap_or(i64::MAX);
            let grant = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = self.cluster.bounded(client.lease_grant(ttl, None)) => r,
            };
            match grant {
                Ok(g) => {
                    let lease = g.id();
                    let end = self.campaign(lease, tick, &cancel).await;
                    let was = self.leadership.leading();
                    self.leadership.set(None);
                    match end {
                        Ok(()) => {
                            self.show(None, false);
                            self.resign(lease).await;
                            return Ok(());
                        }
                        Err(e) => {
                            if was {
                                warn!(error = %e, "lost the cluster leadership");
                            } else {
                                warn!(error = %e, "cannot campaign for the cluster leadership");
                            }
                            self.show(None, false);
                            backoff = Duration::from_millis(250);
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot campaign for the cluster leadership; trying again");
                    self.show(None, false);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(tick.max(Duration::from_secs(1)));
        }
    }

    /// Renews `lease` and campaigns with it every `tick` until `cancel` (`Ok`) or a failure.
    async fn campaign(
        &self,
        lease: i64,
        tick: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), ClusterError> {
        let c = &self.cluster;
        let key = c.key("leader", ROLE);
        let mut client = c.client();
        let (mut keeper, mut stream) = c.bounded(client.lease_keep_alive(lease)).await?;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = interval.tick() => {}
            }
            // The term is counted from before the renewal left: etcd's count starts later.
            let sent = Instant::now();
            let renewed = async {
                c.bounded(keeper.keep_alive()).await?;
                c.bounded(stream.message()).await
            }
            .await;
            let left = match renewed {
                Ok(Some(r)) if r.ttl() > 0 => Duration::from_secs(r.ttl().unsigned_abs()),
                Ok(_) => {
                    return Err(ClusterError::Record {
                        key,
                        reason: "the campaign's lease expired".to_owned(),
                    })
                }
                Err(e) => {
                    // Stop leading before anything else: the lease may run out meanwhile.
                    self.leadership.set(None);
                    return Err(e);
                }
            };
            let claim = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    c.name.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let answer = match c.bounded(client.txn(claim)).await {
                Ok(a) => a,
                Err(e) => {
                    self.leadership.set(None);
                    return Err(e);
                }
            };
            let holder = if answer.succeeded() {
                Some((c.name.clone(), lease))
            } else {
                answer.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease())),
                    _ => None,
                })
            };
            let mine = holder.as_ref().is_some_and(|(_, l)| *l == lease);
            let was = self.leadership.leading();
            self.leadership.set(mine.then_some(Term {
                lease,
                until: sent + left,
            }));
            if mine && !was {
                info!(fabric = %c.name, "this fabric leads the cluster (it runs the reboot runs)");
            } else if !mine && was {
                warn!(fabric = %c.name, "this fabric no longer leads the cluster");
            }
            self.show(holder.map(|(name, _)| name), mine);
        }
    }

    async fn resign(&self, lease: i64) {
        let c = &self.cluster;
        let mut client = c.client();
        match c.bounded(client.lease_revoke(lease)).await {
            Ok(_) => info!(fabric = %c.name, "resigned from the cluster leadership"),
            Err(e) => {
                warn!(error = %e, "cannot resign the cluster leadership; it ends with its lease")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_term_ends_when_its_lease_would_run_out_even_without_news() {
        let l = Leadership::new("k".into());
        assert!(!l.leading());
        assert_eq!(l.fence(), None);
        l.set(Some(Term {
            lease: 7,
            until: Instant::now() + Duration::from_secs(3),
        }));
        assert!(l.leading());
        assert_eq!(
            l.fence(),
            Some(Fence {
                key: "k".into(),
                lease: 7
            })
        );
        tokio::time::advance(Duration::from_millis(2999)).await;
        assert!(l.leading(), "the lease is still alive");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!l.leading(), "a renewal that never came ends the term");
        assert_eq!(l.fence(), None, "no fence without a term");
    }
}
