//! TLS towards BMCs: verification on by default, against the system's roots, a per-BMC CA
//! file, or a pinned certificate fingerprint (BMCs ship self-signed certificates, so a pin is
//! often the only practical check); an explicit opt-out that is logged.

use std::{path::Path, sync::Arc};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};

use super::RedfishError;

/// How a BMC's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Against the CA certificates in this PEM file (and the BMC's name).
    CaFile(std::path::PathBuf),
    /// The end-entity certificate's SHA-256 must be this (name and chain not checked).
    Fingerprint([u8; 32]),
    /// Nothing is checked. Logged at every connection setup.
    Insecure,
}

/// Why a SHA-256 digest is refused. Each carries the text as given, which every message quotes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not 64 hex digits once the `:` separators are dropped.
    #[error("{input:?} is not a SHA-256 digest (64 hex digits, `:` separators allowed)")]
    NotADigest {
        /// The digest as given.
        input: String,
    },
    /// A pair of digits that is not a byte (cannot happen after the check above; kept so a
    /// change to that check fails here rather than panics).
    #[error("{input:?}: {error}")]
    Digit {
        /// The digest as given.
        input: String,
        /// Why the pair does not parse.
        error: std::num::ParseIntError,
    },
}

/// Parses a SHA-256 digest (a certificate fingerprint, a file checksum) written as 64 hex
/// digits, with or without `:` separators.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], DigestError> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(DigestError::NotADigest {
            input: s.to_owned(),
        });
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b =
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|error| DigestError::Digit {
                input: s.to_owned(),
                error,
            })?;
    }
    Ok(out)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration for `policy`.
pub fn client_config(policy: &TlsPolicy) -> Result<Arc<ClientConfig>, RedfishError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RedfishError::Tls(e.to_string()))?;
    let config = match policy {
        TlsPolicy::CaFile(path) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
        TlsPolicy::Fingerprint(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                pin: Some(*pin),
                provider: provider(),
            }))
            .with_no_client_auth(),
        TlsPolicy::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                pin: None,
                provider: provider(),
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A client certificate chain and its key, presented to a server that asks for one.
pub type Identity = (
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
);

/// A client configuration that pins the server's certificate to `pin` and presents
/// `identity` when given: how `bootfabric reboot` reaches a TLS admin server (the pin is
/// taken from `admin.tls_cert` on the same machine).
pub fn pinned_with_identity(
    pin: [u8; 32],
    identity: Option<Identity>,
) -> Result<Arc<ClientConfig>, RedfishError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RedfishError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            pin: Some(pin),
            provider: provider(),
        }));
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| RedfishError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn roots(path: &Path) -> Result<RootCertStore, RedfishError> {
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| RedfishError::Tls(format!("CA file {}: {e}", path.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| RedfishError::Tls(format!("CA file {}: {e}", path.display())))?;
        store
            .add(cert)
            .map_err(|e| RedfishError::Tls(format!("CA file {}: {e}", path.display())))?;
    }
    if store.is_empty() {
        return Err(RedfishError::Tls(format!(
            "CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(store)
}

/// Checks the end-entity certificate against a pinned SHA-256, or (`pin: None`, the
/// operator's explicit `insecure = true`) not at all. Handshake signatures are verified in
/// both cases, so a pinned peer must hold the pinned certificate's key.
#[derive(Debug)]
struct Verifier {
    pin: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some(pin) = self.pin else {
            return Ok(ServerCertVerified::assertion());
        };
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::General(format!(
                "certificate fingerprint {} is not the pinned one",
                hex(&got)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Lowercase hex with `:` between bytes, as `openssl x509 -fingerprint` prints it.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&plain), Ok([0xab; 32]));
        assert_eq!(parse_fingerprint(&colons), Ok([0xab; 32]));
        assert_eq!(
            parse_fingerprint("abcd").map_err(|e| e.to_string()),
            Err(
                r#""abcd" is not a SHA-256 digest (64 hex digits, `:` separators allowed)"#
                    .to_owned()
            )
        );
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
        assert_eq!(hex(&[0xab, 0x01]), "ab:01");
    }
}
