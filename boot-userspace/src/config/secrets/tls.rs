//! TLS for the servers: the admin server (`admin.tls_cert`, `admin.tls_key`) and, with
//! `admin.client_ca`, client certificates; HTTPS for boot clients (`http.tls_cert`,
//! `http.tls_key`). A client certificate is optional at the handshake, so Prometheus and
//! probes read without one; control calls then check that one was presented (rustls has
//! verified it against the CA by then).

use std::{path::PathBuf, sync::Arc};

use rustls::{
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use sha2::{Digest as _, Sha256};

/// A server's `tls_cert`, `tls_key` and (admin only) `client_ca`, resolved against the
/// config's folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// The config section the keys are in (`admin`, `http`), for errors.
    pub section: &'static str,
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates that sign operators' client certificates.
    pub client_ca: Option<PathBuf>,
    /// Boot firmware connects: offer TLS 1.2 finite-field DHE too (EDK2 has nothing else).
    pub firmware: bool,
}

/// A TLS setting that cannot be used: the config key and the reason.
use crate::util::key_error::KeyError;

/// Builds the rustls server configuration; an error names the key whose file is at fault.
pub fn server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>, KeyError> {
    let section = tls.section;
    let keyed = |key: &str, reason: String| KeyError::new(format!("{section}.{key}"), reason);
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| keyed("tls_cert", format!("{}: {e}", tls.cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| keyed("tls_cert", format!("{}: {e}", tls.cert.display())))?;
    if chain.is_empty() {
        return Err(keyed(
            "tls_cert",
            format!("{} holds no PEM certificate", tls.cert.display()),
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| keyed("tls_key", format!("{}: {e}", tls.key.display())))?;
    let mut provider = rustls::crypto::ring::default_provider();
    if tls.firmware {
        provider = super::dhe::with_firmware_dhe(provider);
    }
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| keyed("tls_cert", e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let bad = |e: String| keyed("client_ca", format!("{}: {e}", ca.display()));
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(e.to_string()))? {
                roots
                    .add(cert.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("holds no PEM certificate".to_owned()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| keyed("tls_key", format!("{}: {e}", tls.key.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The server's order (TLS 1.3, ECDHE, then the firmware's DHE) over the client's: DHE
    // costs the server several times an ECDHE handshake and is only for clients without it.
    config.ignore_client_order = tls.firmware;
    Ok(Arc::new(config))
}

/// How a verified client certificate is named in the audit log: its subject's common name
/// and the start of its SHA-256 (names are the CA's to give, the digest is exact).
pub fn describe_client_cert(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    match subject_cn(der) {
        Some(cn) => format!("CN={cn} (sha256 {short}…)"),
        None => format!("sha256 {short}…"),
    }
}

/// One DER element: (tag, contents, rest of the input).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}

/// The subject's commonName (OID 2.5.4.3) of an X.509 certificate (RFC 5280 section 4.1):
/// Certificate → tbsCertificate → [version], serial, signature, issuer, validity, subject.
fn subject_cn(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = tlv(cert)? else {
        return None;
    };
    let (tag, _, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
    }
    // serial, signature, issuer, validity: skipped.
    for _ in 0..4 {
        tbs = tlv(tbs)?.2;
    }
    let (SEQUENCE, mut rdns, _) = tlv(tbs)? else {
        return None;
    };
    while !rdns.is_empty() {
        let (_, mut set, rest) = tlv(rdns)?;
        rdns = rest;
        while !set.is_empty() {
            let (_, attr, rest) = tlv(set)?;
            set = rest;
            let (0x06, oid, value) = tlv(attr)? else {
                continue;
            };
            if oid == CN {
                let (_, text, _) = tlv(value)?;
                // Escaped for the log: a CA's subject is still data from the network.
                return Some(String::from_utf8_lossy(text).escape_default().to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate with subject `CN=ops-admin, O=Bootfabric`
    /// (`openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256`).
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBpzCCAU2gAwIBAgIURrlazmXXdgqW9B6SuK6PsppXTGEwCgYIKoZIzj0EAwIw
KTESMBAGA1UEAwwJb3BzLWFkbWluMRMwEQYDVQQKDApCb290ZmFicmljMB4XDTI2
MTEzMDA5NTg1M1oXDTM2MTEyNzA5NTg1M1owKTESMBAGA1UEAwwJb3BzLWFkbWlu
MRMwEQYDVQQKDApCb290ZmFicmljMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
E/xqDsUtjZFNeic2utKpz3to9UfqAY4D5LIIJVU3bO+w+LLusxpgSmM7cF3OhxD2
bQycsKw8nbCEw/sAXySDK6NTMFEwHQYDVR0OBBYEFHTTQVJVNyhS/GtMplsWfEz0
ngFwMB8GA1UdIwQYMBaAFHTTQVJVNyhS/GtMplsWfEz0ngFwMA8GA1UdEwEB/wQF
MAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgHrYIMlisPnu3dUOt/QwnaRO1ca0jp8rS
9KVFIO48cHwCIQCiXH5ZJsob0/dOz1WKORznB4/l9zJ2rHKSA2OlvtgNxQ==
-----END CERTIFICATE-----
";

    #[test]
    fn client_certificates_are_named_by_their_common_name() {
        let der = CertificateDer::from_pem_slice(CERT.as_bytes()).expect("pem");
        assert_eq!(subject_cn(der.as_ref()).as_deref(), Some("ops-admin"));
        let d = describe_client_cert(der.as_ref());
        assert!(d.starts_with("CN=ops-admin (sha256 "), "{d}");
        assert_eq!(subject_cn(&der.as_ref()[..40]), None, "truncated");
        assert_eq!(subject_cn(b"\x30\x84\xff\xff\xff\xff"), None);
        assert!(describe_client_cert(b"junk").starts_with("sha256 "));
    }
}
