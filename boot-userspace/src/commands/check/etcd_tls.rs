//! Why etcd over TLS fails, in one line: when a request to etcd fails and `[cluster]` has
//! TLS, `check` shakes hands with a member itself, with the fabric's CA and client
//! certificate, and says which file is at fault. The gRPC client only reports "transport
//! error" or "connection closed" (in TLS 1.3 the server judges the client's certificate
//! after the handshake, so the refusal arrives as an alert on the first read).

use std::{sync::Arc, time::Duration};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt as _;

use crate::config::cluster::ClusterTls;

/// What went wrong between the fabric and a member, by whose file it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsFault {
    /// The member's certificate does not verify against `cluster.ca_file`.
    Server(String),
    /// etcd refused the client certificate (another CA's, expired, or not for clients).
    Refused(String),
    /// etcd wants a client certificate and `[cluster]` gives none.
    NoIdentity(String),
    /// The fabric's own files do not make a TLS client (a key that is not the cert's).
    Files(String),
}

/// Sorts a failed handshake (or first read) into a [`TlsFault`]: `message` is rustls'
/// error, `identity` whether a client certificate was offered. `None`: not a TLS failure
/// (refused connection, timeout), which the gRPC error already says.
pub fn classify(message: &str, identity: bool) -> Option<TlsFault> {
    let m = message.to_owned();
    if message.contains("invalid peer certificate") {
        Some(TlsFault::Server(m))
    } else if message.contains("received fatal alert") {
        Some(match identity {
            true => TlsFault::Refused(m),
            false => TlsFault::NoIdentity(m),
        })
    } else {
        None
    }
}

/// The fault as `check`'s one line (detail and fix), naming the file at fault.
pub fn describe(fault: &TlsFault, tls: &ClusterTls) -> (String, String) {
    let cert = tls
        .identity
        .as_ref()
        .map_or_else(String::new, |(c, _)| c.display().to_string());
    match fault {
        TlsFault::Server(e) => (
            format!(
                "TLS: the member's certificate does not verify against cluster.ca_file {}: {e}",
                tls.ca.display()
            ),
            "give cluster.ca_file the CA that signs the etcd members' certificates (their SANs must name the address in cluster.etcd)".to_owned(),
        ),
        TlsFault::Refused(e) => (
            format!("TLS: etcd refused the client certificate {cert}: {e}"),
            "give cluster.cert_file a client certificate signed by the CA etcd trusts (its --trusted-ca-file), with clientAuth use, not expired".to_owned(),
        ),
        TlsFault::NoIdentity(e) => (
            format!("TLS: no client certificate given, and etcd requires one (--client-cert-auth): {e}"),
            "set cluster.cert_file and cluster.key_file".to_owned(),
        ),
        TlsFault::Files(e) => (
            format!("TLS: cluster.cert_file {cert} and cluster.key_file do not make a client: {e}"),
            "give cluster.key_file the private key of cluster.cert_file".to_owned(),
        ),
    }
}

/// The client side of the fabric's TLS, from `tls`'s files (already checked to read when
/// the config loaded).
fn client_config(tls: &ClusterTls) -> Result<ClientConfig, TlsFault> {
    let files = |e: String| TlsFault::Files(e);
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca).map_err(|e| files(e.to_string()))? {
        roots
            .add(cert.map_err(|e| files(e.to_string()))?)
            .map_err(|e| files(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| files(e.to_string()))?
        .with_root_certificates(roots);
    match &tls.identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| files(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| files(e.to_string()))?;
            // Through the same owner and mode rules as the daemon's own read.
            let pem = crate::config::secrets::token::read_private(key)
                .map_err(|e| files(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| files(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| files(e.to_string()))
        }
    }
}

/// Shakes hands with the member at `endpoint` (`https://host:port`) and reads once: the
/// TLS fault, if that is what fails. Bounded by `timeout` per step.
pub async fn diagnose(endpoint: &str, tls: &ClusterTls, timeout: Duration) -> Option<TlsFault> {
    let config = match client_config(tls) {
        Ok(c) => c,
        Err(f) => return Some(f),
    };
    let authority = endpoint
        .strip_prefix("https://")?
        .trim_end_matches('/')
        .to_owned();
    let (host, _) = authority.rsplit_once(':')?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = ServerName::try_from(host).ok()?;
    let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&authority))
        .await
        .ok()?
        .ok()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut stream = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Err(_) => return None,
        Ok(Err(e)) => return classify(&e.to_string(), tls.identity.is_some()),
        Ok(Ok(s)) => s,
    };
    // etcd speaks first only to refuse: a certificate it does not take ends in an alert.
    // Silence until the timeout, or data, means the TLS layer is fine.
    let mut byte = [0u8; 1];
    match tokio::time::timeout(timeout, stream.read(&mut byte)).await {
        Ok(Err(e)) => classify(&e.to_string(), tls.identity.is_some()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(identity: bool) -> ClusterTls {
        ClusterTls {
            ca: "/etc/bootfabric/etcd/ca.crt".into(),
            identity: identity.then(|| {
                (
                    "/etc/bootfabric/etcd/client.crt".into(),
                    "/etc/bootfabric/etcd/client.key".into(),
                )
            }),
        }
    }

    #[test]
    fn each_failure_names_the_file_at_fault_in_one_line() {
        let bad_cert = classify("received fatal alert: BadCertificate", true).expect("tls");
        let (detail, _) = describe(&bad_cert, &tls(true));
        assert!(
            detail.contains("/etc/bootfabric/etcd/client.crt"),
            "{detail}"
        );
        assert!(detail.contains("BadCertificate"), "{detail}");

        let none = classify("received fatal alert: CertificateRequired", false).expect("tls");
        assert!(matches!(none, TlsFault::NoIdentity(_)));
        let (detail, fix) = describe(&none, &tls(false));
        assert!(detail.contains("no client certificate"), "{detail}");
        assert!(fix.contains("cluster.cert_file"));

        let server = classify("invalid peer certificate: UnknownIssuer", true).expect("tls");
        let (detail, _) = describe(&server, &tls(true));
        assert!(
            detail.contains("cluster.ca_file /etc/bootfabric/etcd/ca.crt"),
            "{detail}"
        );

        for f in [bad_cert, none, server] {
            let (detail, fix) = describe(&f, &tls(true));
            assert!(!detail.contains('\n') && !fix.contains('\n'));
        }
        assert_eq!(classify("Connection refused (os error 111)", true), None);
    }
}
