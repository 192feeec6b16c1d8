//! Cluster mode: the fabric's I/O with etcd (the `[cluster]` section's endpoints).
//!
//! etcd is the cluster's one shared store and its only coordinator: it gives leases
//! (a fabric's registration lives as long as the fabric renews it), transactions and watches.
//! This module is the client side only: the [`Cluster`] handle (a connection to every
//! member, balanced, each request bounded by `cluster.timeout_s`) and the key layout under
//! `cluster.prefix`. What lives in the cluster is decided by its users: [`membership`] keeps
//! this fabric's record (name, rack, measured egress, generation) under a lease, so a fabric
//! that dies disappears within `cluster.ttl_s`.
//!
//! Every call can fail (a member down, quorum lost, the network cut): callers keep serving
//! from what they have and try again; nothing here retries in a hot loop.

pub mod election;
pub mod evidence;
pub mod inventory;
pub mod leases;
pub mod membership;
pub mod runs;
pub mod timeline;

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use serde::{Deserialize, Serialize};

use crate::config::cluster::ClusterConfig;

/// etcd cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A TLS file named by `[cluster]` cannot be read.
    #[error("{path}: cannot read: {source}")]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// etcd refused or did not answer.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd did not answer in time.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// Another live fabric is registered under this fabric's name.
    #[error("cluster.name {name:?} is held by another live fabric ({holder}): give each fabric its own name")]
    NameTaken {
        /// The name.
        name: String,
        /// The other fabric's record, in words.
        holder: String,
    },
    /// A record in etcd does not parse (another version wrote it, or someone by hand).
    #[error("etcd key {key}: {reason}")]
    Record {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

impl ClusterError {
    /// Whether a write that failed with this error may still have been applied: etcd can
    /// commit a proposal after the client gave up on it (a timeout, a connection lost
    /// mid-request, a leader change), so the caller must not say "nothing stored". False only
    /// where the request provably never became a proposal: no connection was made, or etcd
    /// refused it before proposing (no leader under `require_leader`, too many requests, a
    /// request it rejects as such).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Timeout(_) => true,
            Self::Etcd(etcd_client::Error::GRpcStatus(status)) => !refused_before_proposal(status),
            Self::Etcd(etcd_client::Error::TransportError(e)) => !never_connected(e),
            // The client refused to build the request (bad arguments, closed channel before
            // sending it...): nothing reached etcd.
            Self::Etcd(_) | Self::Tls { .. } | Self::NameTaken { .. } | Self::Record { .. } => {
                false
            }
        }
    }
}

/// etcd's message for a request refused because its member knows no leader (the
/// `require_leader` check, before the request is handled).
const NO_LEADER: &str = "etcdserver: no leader";

/// Whether etcd (or the channel to it) refused `status`'s request before it could become a
/// proposal.
fn refused_before_proposal(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        // What etcd answers for a request it will not handle: it never reached raft.
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Unimplemented => true,
        // Unavailable is also etcd's "request timed out" and "leader changed", after the
        // proposal: only "no leader", and a channel that never connected, are before it.
        Code::Unavailable => {
            status.message() == NO_LEADER
                || std::error::Error::source(status).is_some_and(never_connected)
        }
        // Cancelled (the client's own deadline), DeadlineExceeded, Unknown, Internal,
        // Aborted, DataLoss, Ok: sent, outcome unknown.
        _ => false,
    }
}

/// Whether `e`'s chain holds a failure to connect (so the request was never sent).
fn never_connected(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// A connection to the cluster's etcd, with this fabric's identity in it. Cheap to clone
/// (the connection is shared).
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    name: String,
    rack: String,
    prefix: String,
    ttl: Duration,
    timeout: Duration,
}

/// One fabric as it registers itself (`<prefix>/fabrics/<name>`, JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FabricRecord {
    /// The fabric's name (`cluster.name`).
    pub name: String,
    /// The rack it serves (`cluster.rack`).
    pub rack: String,
    /// The daemon's version.
    pub version: String,
    /// When the daemon started, Unix seconds.
    pub started: u64,
    /// Its measured egress (HTTP and TFTP), bytes per second.
    pub egress_bps: f64,
    /// The configuration generation it serves.
    pub generation: u64,
}

/// What the members say of themselves (`bootfabric check`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdStatus {
    /// The server's version.
    pub version: String,
    /// Members of the etcd cluster.
    pub members: usize,
    /// The member id of the leader (0: no leader, quorum lost).
    pub leader: u64,
}

impl Cluster {
    /// A connection to `cfg`'s endpoints. Lazy: nothing is sent until the first request, so
    /// a fabric starts (and serves what it can) while etcd is down.
    pub async fn connect(cfg: &ClusterConfig) -> Result<Self, ClusterError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(cfg.timeout)
            .with_timeout(cfg.timeout)
            .with_keep_alive(cfg.timeout, cfg.timeout)
            // Without a leader a member cannot commit: fail the request rather than wait on
            // it, so callers fall back at once when quorum is lost.
            .with_require_leader(true);
        if let Some(tls) = &cfg.tls {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| ClusterError::Tls {
                    path: path.to_owned(),
                    source,
                })
            };
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                let key = crate::config::secrets::token::read_private(key).map_err(|e| {
                    ClusterError::Tls {
                        path: key.clone(),
                        source: std::io::Error::other(e.to_string()),
                    }
                })?;
                t = t.identity(Identity::from_pem(read(cert)?, key));
            }
            options = options.with_tls(t);
        }
        let client = Client::connect(&cfg.endpoints, Some(options)).await?;
        Ok(Self {
            client,
            name: cfg.name.clone(),
            rack: cfg.rack.clone(),
            prefix: cfg.prefix.clone(),
            ttl: cfg.ttl,
            timeout: cfg.timeout,
        })
    }

    /// This fabric's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rack this fabric serves.
    pub fn rack(&self) -> &str {
        &self.rack
    }

    /// How long a registration outlives its last renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The etcd client (a clone shares the connection). For the cluster's own modules: each
    /// request still goes through [`Cluster::bounded`].
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// `<prefix>/<kind>/` (every record of a kind).
    pub(crate) fn dir(&self, kind: &str) -> String {
        format!("{}/{kind}/", self.prefix)
    }

    /// `<prefix>/<kind>/<name>`.
    pub(crate) fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{name}", self.dir(kind))
    }

    /// `f` bounded by the request timeout (a watch or keep-alive stream has none of its own).
    pub(crate) async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Timeout(self.timeout)),
        }
    }

    /// Every fabric registered now, by name.
    pub async fn fabrics(&self) -> Result<Vec<FabricRecord>, ClusterError> {
        let dir = self.dir("fabrics");
        let mut client = self.client();
        let resp = self
            .bounded(client.get(dir.as_str(), Some(GetOptions::new().with_prefix())))
            .await?;
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            let record: FabricRecord =
                serde_json::from_slice(kv.value()).map_err(|e| ClusterError::Record {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    reason: e.to_string(),
                })?;
            out.push(record);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// What the etcd members say: version, member count, leader.
    pub async fn status(&self) -> Result<EtcdStatus, ClusterError> {
        let mut client = self.client();
        let status = self.bounded(client.status()).await?;
        let members = self.bounded(client.member_list()).await?;
        Ok(EtcdStatus {
            version: status.version().to_owned(),
            members: members.members().len(),
            leader: status.leader(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(status: tonic::Status) -> ClusterError {
        ClusterError::Etcd(etcd_client::Error::GRpcStatus(status))
    }

    /// A write that timed out (the client's deadline or etcd's), or lost its leader, may
    /// still commit; one refused for want of a leader, or never sent, did not.
    #[test]
    fn only_writes_never_proposed_are_known_not_applied() {
        assert!(ClusterError::Timeout(Duration::from_secs(2)).outcome_unknown());
        // tonic's own request deadline (what the CI run of 8eefea5 met mid-outage).
        assert!(grpc(tonic::Status::cancelled("Timeout expired")).outcome_unknown());
        assert!(
            grpc(tonic::Status::unavailable("etcdserver: request timed out")).outcome_unknown()
        );
        assert!(grpc(tonic::Status::unavailable("etcdserver: leader changed")).outcome_unknown());
        assert!(grpc(tonic::Status::unknown("connection reset")).outcome_unknown());

        assert!(!grpc(tonic::Status::unavailable(NO_LEADER)).outcome_unknown());
        assert!(!grpc(tonic::Status::resource_exhausted(
            "etcdserver: too many requests"
        ))
        .outcome_unknown());
        // A channel that could not connect: tonic's status carries the connect error.
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let connect = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        assert!(!grpc(connect).outcome_unknown());
        assert!(!ClusterError::Record {
            key: "k".to_owned(),
            reason: "r".to_owned()
        }
        .outcome_unknown());
    }
}
