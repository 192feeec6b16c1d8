//! `[cluster]`: cluster mode on etcd. Without the section the daemon is standalone (the
//! local journal and files, as always); with it, the fabric joins the cluster its etcd
//! endpoints name, under its own name and rack.
//!
//! Validated without I/O here; [`super::Config::load`] resolves the TLS files against the
//! config's folder and checks that they read (the key as a secret: mode and owner).

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::util::key_error::KeyError;

/// Most etcd endpoints one fabric is given (a cluster has 3 to 7 members).
pub const MAX_ENDPOINTS: usize = 16;
/// Default registration TTL: a fabric that stops renewing disappears within this.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);
/// Default time a shared boot-timeline entry is kept in etcd.
pub const DEFAULT_TIMELINE_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default key prefix every key of the cluster lives under.
pub const DEFAULT_PREFIX: &str = "/bootfabric";

/// `[cluster]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireCluster {
    /// This fabric's name, unique in the cluster.
    pub name: Option<String>,
    /// The rack this fabric serves (default: its name).
    pub rack: Option<String>,
    /// etcd client URLs: `http://host:port` or `https://host:port`, all of one scheme.
    pub etcd: Option<Vec<String>>,
    /// Key prefix (default `/bootfabric`): several clusters may share one etcd.
    pub prefix: Option<String>,
    /// PEM CA certificate(s) the etcd members' certificates are checked against (https).
    pub ca_file: Option<String>,
    /// PEM client certificate (etcd's `--client-cert-auth`), with `key_file`.
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file` (mode 0600 or stricter).
    pub key_file: Option<String>,
    /// Seconds a fabric's registration outlives its last renewal (default 10, 2 to 300).
    pub ttl_s: Option<u64>,
    /// Seconds to connect to etcd, and to wait on any one request (default 5, 1 to 60).
    pub timeout_s: Option<u64>,
    /// Hours a boot-timeline entry shared through etcd is kept (default 24, 1 to 720).
    pub timeline_retention_h: Option<u64>,
}

/// How the fabric proves itself to etcd and checks etcd's certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterTls {
    /// CA certificates for the members' certificates.
    pub ca: PathBuf,
    /// Client certificate and key, when etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// `[cluster]`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This fabric's name.
    pub name: String,
    /// The rack it serves.
    pub rack: String,
    /// etcd client URLs, as given.
    pub endpoints: Vec<String>,
    /// Key prefix, starting with `/`, without a trailing `/`.
    pub prefix: String,
    /// TLS, for https endpoints.
    pub tls: Option<ClusterTls>,
    /// Registration TTL.
    pub ttl: Duration,
    /// Connect and request timeout.
    pub timeout: Duration,
    /// How long shared boot-timeline entries live in etcd (`timeline_retention_h`).
    pub timeline_retention: Duration,
}

/// A name or rack: 1 to 63 letters, digits, `-`, `_` or `.` (it is part of etcd keys and
/// metric labels, so no `/`).
fn label(key: &str, v: &str) -> Result<String, KeyError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v != "."
        && v != "..";
    if ok {
        Ok(v.to_owned())
    } else {
        Err(KeyError::new(
            key,
            format!("{v:?}: give 1 to 63 letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// `http://host:port` or `https://host:port` (no path, no credentials): whether https.
fn endpoint(key: &str, url: &str) -> Result<bool, KeyError> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(KeyError::new(
            key,
            format!("{url:?}: give http://host:port or https://host:port"),
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
        return Err(KeyError::new(
            key,
            format!("{url:?}: give scheme://host:port only (no path, user or query)"),
        ));
    }
    let port = authority
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(p))) if p != 0 && !host.is_empty() => Ok(https),
        _ => Err(KeyError::new(
            key,
            format!("{url:?}: give the port (etcd's client port is usually 2379)"),
        )),
    }
}

/// Validates `[cluster]` (`cluster.key` in errors).
pub fn from_wire(w: &WireCluster) -> Result<ClusterConfig, KeyError> {
    let name = label(
        "cluster.name",
        w.name.as_deref().ok_or_else(|| {
            KeyError::new("cluster.name", "missing: this fabric's name in the cluster")
        })?,
    )?;
    let rack = match &w.rack {
        Some(r) => label("cluster.rack", r)?,
        None => name.clone(),
    };
    let endpoints = w.etcd.clone().unwrap_or_default();
    if endpoints.is_empty() {
        return Err(KeyError::new(
            "cluster.etcd",
            "missing: the etcd client URLs (http://host:2379, ...)",
        ));
    }
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(KeyError::new(
            "cluster.etcd",
            format!("{} endpoints; at most {MAX_ENDPOINTS}", endpoints.len()),
        ));
    }
    let mut https = None;
    for (i, url) in endpoints.iter().enumerate() {
        let key = format!("cluster.etcd[{i}]");
        let this = endpoint(&key, url)?;
        if *https.get_or_insert(this) != this {
            return Err(KeyError::new(key, "mixes http and https endpoints"));
        }
        if endpoints[..i].contains(url) {
            return Err(KeyError::new(key, format!("{url:?} is listed twice")));
        }
    }
    let https = https.unwrap_or(false);
    let prefix = w.prefix.as_deref().unwrap_or(DEFAULT_PREFIX);
    let prefix_ok = prefix.starts_with('/')
        && prefix.len() <= 128
        && prefix[1..]
            .split('/')
            .all(|seg| label("cluster.prefix", seg).is_ok());
    if !prefix_ok {
        return Err(KeyError::new(
            "cluster.prefix",
            format!(
                "{prefix:?}: give /name[/name...] (letters, digits, '-', '_', '.'; no trailing /)"
            ),
        ));
    }
    let file = |f: &Option<String>| f.as_deref().map(PathBuf::from);
    let identity = match (file(&w.cert_file), file(&w.key_file)) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(KeyError::new(
                "cluster.key_file",
                "missing: cert_file needs its key",
            ))
        }
        (None, Some(_)) => {
            return Err(KeyError::new(
                "cluster.cert_file",
                "missing: key_file needs its certificate",
            ))
        }
    };
    let tls = match (https, file(&w.ca_file)) {
        (true, Some(ca)) => Some(ClusterTls { ca, identity }),
        (true, None) => {
            return Err(KeyError::new(
                "cluster.ca_file",
                "missing: https endpoints need the CA that signs the members' certificates",
            ))
        }
        (false, None) if identity.is_none() => None,
        (false, _) => {
            return Err(KeyError::new(
                "cluster.etcd",
                "ca_file, cert_file and key_file are for https endpoints",
            ))
        }
    };
    let ttl = match w.ttl_s {
        None => DEFAULT_TTL,
        Some(s @ 2..=300) => Duration::from_secs(s),
        Some(s) => {
            return Err(KeyError::new(
                "cluster.ttl_s",
                format!("{s}: give 2 to 300"),
            ))
        }
    };
    let timeout = match w.timeout_s {
        None => Duration::from_secs(5),
        Some(s @ 1..=60) => Duration::from_secs(s),
        Some(s) => {
            return Err(KeyError::new(
                "cluster.timeout_s",
                format!("{s}: give 1 to 60"),
            ))
        }
    };
    let timeline_retention = match w.timeline_retention_h {
        None => DEFAULT_TIMELINE_RETENTION,
        Some(h @ 1..=720) => Duration::from_secs(h * 3600),
        Some(h) => {
            return Err(KeyError::new(
                "cluster.timeline_retention_h",
                format!("{h}: give 1 to 720 (hours)"),
            ))
        }
    };
    Ok(ClusterConfig {
        name,
        rack,
        endpoints,
        prefix: prefix.to_owned(),
        tls,
        ttl,
        timeout,
        timeline_retention,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(text: &str) -> WireCluster {
        toml::from_str(text).expect("toml")
    }

    fn refused(text: &str) -> (String, String) {
        let e = from_wire(&wire(text)).expect_err("refused");
        (e.key, e.reason)
    }

    #[test]
    fn a_minimal_section_gets_its_defaults() {
        let c = from_wire(&wire(
            "name = \"fab-a1\"\netcd = [\"http://10.90.0.1:2379\", \"http://10.90.0.2:2379\"]",
        ))
        .expect("valid");
        assert_eq!(c.name, "fab-a1");
        assert_eq!(c.rack, "fab-a1", "the rack defaults to the name");
        assert_eq!(c.prefix, "/bootfabric");
        assert_eq!(c.ttl, DEFAULT_TTL);
        assert_eq!(c.tls, None);
        assert_eq!(c.timeline_retention, DEFAULT_TIMELINE_RETENTION);
    }

    #[test]
    fn tls_takes_a_ca_and_an_optional_identity() {
        let c = from_wire(&wire(
            "name = \"f\"\nrack = \"r1\"\netcd = [\"https://etcd-0:2379\"]\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"",
        ))
        .expect("valid");
        assert_eq!(
            c.tls,
            Some(ClusterTls {
                ca: "ca.pem".into(),
                identity: Some(("c.pem".into(), "k.pem".into()))
            })
        );
    }

    #[test]
    fn bad_sections_are_refused_with_the_key_and_the_reason() {
        let cases = [
            ("etcd = [\"http://a:2379\"]", "cluster.name"),
            ("name = \"a/b\"\netcd = [\"http://a:2379\"]", "cluster.name"),
            ("name = \"f\"", "cluster.etcd"),
            ("name = \"f\"\netcd = []", "cluster.etcd"),
            ("name = \"f\"\netcd = [\"a:2379\"]", "cluster.etcd[0]"),
            ("name = \"f\"\netcd = [\"http://a\"]", "cluster.etcd[0]"),
            (
                "name = \"f\"\netcd = [\"http://a:2379/v3\"]",
                "cluster.etcd[0]",
            ),
            (
                "name = \"f\"\netcd = [\"http://a:2379\", \"https://b:2379\"]\nca_file = \"c\"",
                "cluster.etcd[1]",
            ),
            (
                "name = \"f\"\netcd = [\"http://a:2379\", \"http://a:2379\"]",
                "cluster.etcd[1]",
            ),
            (
                "name = \"f\"\netcd = [\"https://a:2379\"]",
                "cluster.ca_file",
            ),
            (
                "name = \"f\"\netcd = [\"http://a:2379\"]\nca_file = \"c\"",
                "cluster.etcd",
            ),
            (
                "name = \"f\"\netcd = [\"https://a:2379\"]\nca_file = \"c\"\ncert_file = \"x\"",
                "cluster.key_file",
            ),
            (
                "name = \"f\"\netcd = [\"http://a:2379\"]\nprefix = \"bf\"",
                "cluster.prefix",
            ),
            (
                "name = \"f\"\netcd = [\"http://a:2379\"]\nprefix = \"/bf/\"",
                "cluster.prefix",
            ),
            (
                "name = \"f\"\netcd = [\"http://a:2379\"]\ntimeline_retention_h = 0",
                "cluster.timeline_retention_h",
            ),
            (
                "name = \"f\"\netcd = [\"http://a:2379\"]\nttl_s = 1",
                "cluster.ttl_s",
            ),
            (
                "name = \"f\"\netcd = [\"http://a:2379\"]\ntimeout_s = 0",
                "cluster.timeout_s",
            ),
        ];
        for (text, key) in cases {
            let (k, reason) = refused(text);
            assert_eq!(k, key, "{text}: {reason}");
            assert!(!reason.is_empty());
        }
    }
}
