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
