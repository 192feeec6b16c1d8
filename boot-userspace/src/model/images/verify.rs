//! Verification of downloaded OS images: checksum ("sums") files, and the OpenPGP signatures
//! over them (detached, or cleartext-signed as some distributions publish SHA256SUMS), checked
//! against the public keys the operator configured.
//!
//! Pure: bytes in, a verdict out. No files and no sockets here; the only clock read is for a
//! signature's own expiration time (`now` in [`Keyring::verify_detached`]), and everything
//! else about time is judged at the moment the signature says it was made.
//!
//! Every input comes from the network and may be hostile: sizes are bounded before parsing,
//! and no path here panics.
//!
//! # What a data signature must satisfy
//!
//! rPGP 0.21 (`Signature::verify`) checks the cryptography only: the issuer subpacket
//! matches the key, the hash over data and trailer, the public key operation. It does not
//! look at hash strength (except for post-quantum keys), key flags, expiry, revocation or
//! binding signatures. So this module does the rest itself, from the key's self-signatures
//! (each verified with rPGP before it counts):
//!
//! - the signature is over data (binary or text type) and has a creation time;
//! - its hash is not MD5, SHA-1 or RIPEMD-160 (RFC 9580 section 9.5: collisions are practical
//!   for the first two and the third is as short as SHA-1);
//! - it verifies with the primary key or with a subkey bound by a valid binding signature
//!   that carries a valid back-signature (the subkey's consent, RFC 9580 section 5.2.1);
//! - the component that signed was allowed to sign: the key flags of the newest valid
//!   self-signature (primary) or binding (subkey) include signing; a self-signature without
//!   key flags (keys from before RFC 4880) allows any use;
//! - at the signature's creation time the primary key and the signing subkey existed, had
//!   not expired (expiry from the newest valid self-signature or binding) and were not
//!   revoked. A hard revocation (key compromised, no reason, or unknown reason) voids every
//!   signature; a soft one (superseded, retired) only those made after it;
//! - the signature itself has not expired (its Signature Expiration Time, against now).
//!
//! Not checked: designated revokers (a revocation issued by another key), third-party
//! certifications (the operator's configuration is the trust decision), the hash algorithms
//! of self-signatures (old keys were self-signed with SHA-1), and the validity period of a
//! user ID as opposed to the key.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use pgp::{
    armor::DearmorOptions,
    composed::{CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey},
    crypto::hash::HashAlgorithm,
    packet::{PublicKey, PublicSubkey, RevocationCode, Signature, SignatureType, SubpacketData},
    types::{Fingerprint, KeyDetails, KeyId, Tag},
};
use sha2::Digest as _;

/// The largest key file accepted: a keyring of a few dozen keys is far smaller.
pub const MAX_KEY_FILE: usize = 1 << 20;
/// The largest signature file accepted: a few signatures are a few KiB.
pub const MAX_SIGNATURE: usize = 1 << 20;
/// The largest sums file accepted: a distribution's SHA256SUMS is a few KiB.
pub const MAX_SUMS: usize = 1 << 20;
/// The largest cleartext-signed message accepted: a sums file and its signatures.
pub const MAX_CLEARTEXT: usize = MAX_SUMS + MAX_SIGNATURE;

/// Why an image, a sums file, a key or a signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// An input is larger than this module accepts.
    #[error("{what} is {size} bytes, more than the {limit} accepted")]
    TooLarge {
        /// What was too large (a key file's origin, "the signature", "the sums file").
        what: String,
        /// Its size in bytes.
        size: usize,
        /// The bound in bytes.
        limit: usize,
    },
    /// A key file holds no usable OpenPGP public key.
    #[error("{origin}: not an OpenPGP public key: {reason}")]
    NotAKey {
        /// The key file, as the caller named it.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A signature file is not an OpenPGP signature over data.
    #[error("not an OpenPGP signature: {reason}")]
    NotASignature {
        /// What is wrong with it.
        reason: String,
    },
    /// A message is not a well-formed cleartext-signed message.
    #[error("not a cleartext-signed message: {reason}")]
    NotCleartext {
        /// What is wrong with it.
        reason: String,
    },
    /// The signature names an issuer that is not among the configured keys.
    #[error("signature by key 0x{issuer} which is not in the configured keys (keys: {})", keys.join(", "))]
    UnknownSigner {
        /// The issuer's fingerprint, or its key ID when the signature names no fingerprint
        /// (upper-case hex).
        issuer: String,
        /// The configured primary key fingerprints.
        keys: Vec<String>,
    },
    /// The signature's hash algorithm is not trusted.
    #[error("signature uses {algorithm}, which is {why}")]
    WeakHash {
        /// The hash algorithm.
        algorithm: &'static str,
        /// Why it is refused.
        why: &'static str,
    },
    /// A configured key made no signature over this data: the data or the signature changed.
    #[error("bad signature: the data does not match (tampered or wrong file)")]
    BadSignature,
    /// The signature is genuine, but the key could not sign at the time it was made.
    #[error("signature by key {key} made on {signed} is not valid: {reason}")]
    KeyNotValid {
        /// The primary key (and the subkey, when a subkey signed).
        key: String,
        /// The signature's creation date.
        signed: String,
        /// Why the key could not sign then.
        reason: String,
    },
    /// The signature is genuine but past its own expiration time.
    #[error("signature by key {key} expired on {expired}")]
    SignatureExpired {
        /// The primary key fingerprint.
        key: String,
        /// The date the signature expired.
        expired: String,
    },
    /// A line of a sums file cannot be read.
    #[error("sums file line {line}: {reason}")]
    SumsLine {
        /// The line number, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A sums file lists one name twice with different digests of one algorithm.
    #[error("sums file line {line}: {name} is listed again with a different {algorithm} digest (first on line {first})")]
    SumsConflict {
        /// The line of the second listing.
        line: usize,
        /// The line of the first listing.
        first: usize,
        /// The file name, as written on `line`.
        name: String,
        /// The digest algorithm.
        algorithm: &'static str,
    },
    /// A sums file has no SHA-256 or SHA-512 line at all.
    #[error("the sums file lists no SHA-256 or SHA-512 digest")]
    SumsEmpty,
    /// The sums file does not list the file asked about.
    #[error("the sums file does not list {name}")]
    NotListed {
        /// The file name asked about.
        name: String,
    },
    /// Several paths in the sums file end in the name asked about, with different digests.
    #[error("the sums file lists several files named {name} with different digests ({}): ask for one by its path", paths.join(", "))]
    Ambiguous {
        /// The file name asked about.
        name: String,
        /// The paths that end in it.
        paths: Vec<String>,
    },
    /// A file's digest is not the one the sums file lists.
    #[error("{name}: {algorithm} mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// The file name.
        name: String,
        /// The digest algorithm.
        algorithm: &'static str,
        /// The listed digest (hex).
        expected: String,
        /// The computed digest (hex).
        actual: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// A verified signature: who made it and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The primary key's fingerprint (upper-case hex).
    pub fingerprint: String,
    /// When the signature says it was made, Unix seconds: a release signed earlier than the
    /// one in use is an older release, whatever a mirror says.
    pub created: u64,
}

/// Public keys an image's signatures must come from.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    certs: Vec<Cert>,
}

/// One certificate with what its self-signatures say, worked out once when it is loaded.
#[derive(Clone, Debug)]
struct Cert {
    key: SignedPublicKey,
    /// The primary key fingerprint, upper-case hex.
    fingerprint: String,
    /// Whether any self-signature verified: without one nothing says what the key may do.
    self_signed: bool,
    primary: Component,
    /// Only subkeys with a valid binding signature: an unbound subkey is not part of the key.
    subkeys: Vec<Component>,
}

/// A primary key or a bound subkey, and when and for what it may sign.
#[derive(Clone, Debug)]
struct Component {
    /// Index into `SignedPublicKey::public_subkeys`; `None` for the primary key.
    subkey: Option<usize>,
    fingerprint: Fingerprint,
    key_id: KeyId,
    created: u64,
    /// When it expires (seconds since the epoch); `None` for never.
    expires: Option<u64>,
    /// `Err` says why it may not sign data.
    may_sign: Result<(), &'static str>,
    revoked: Option<Revocation>,
}

#[derive(Clone, Debug)]
enum Revocation {
    /// Compromised, or no or an unknown reason: no signature by the key can be trusted.
    Hard(&'static str),
    /// Superseded or retired: signatures made before it stand.
    Soft { at: u64, reason: &'static str },
}

impl Keyring {
    /// Parses one key file (ASCII-armored or binary; one or more public keys/certificates in
    /// it). `origin` names the file in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Keyring, VerifyError> {
        bounded(origin, bytes, MAX_KEY_FILE)?;
        let not_a_key = |reason: String| VerifyError::NotAKey {
            origin: origin.to_owned(),
            reason,
        };
        let keys = read_public_keys(bytes).map_err(not_a_key)?;
        if keys.is_empty() {
            return Err(not_a_key("the file holds no public key".into()));
        }
        let mut ring = Keyring::default();
        for key in keys {
            let cert = Cert::new(key);
            // Refused at load time rather than at the first download: the operator is looking
            // at the configuration now.
            if !cert.self_signed {
                return Err(not_a_key(format!(
                    "key {} has no valid self-signature",
                    cert.fingerprint
                )));
            }
            ring.add(cert);
        }
        Ok(ring)
    }

    /// Merges another keyring into this one. A key present in both is merged signature by
    /// signature, so a revocation in either copy is kept.
    pub fn extend(&mut self, other: Keyring) {
        for cert in other.certs {
            self.add(cert);
        }
    }

    /// Primary key fingerprints (upper-case hex), for logs and `check`.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs.iter().map(|c| c.fingerprint.clone()).collect()
    }

    /// Verifies a detached signature (armored or binary) over `data`. Accepts a signature by
    /// a primary key or a signing-capable subkey of a keyring key. Returns the fingerprint
    /// (upper-case hex) of the primary key that signed.
    ///
    /// A file holding several signatures (a release signed by two keys) is accepted when one
    /// of them is good; otherwise the error is the most telling of theirs.
    pub fn verify_detached(&self, data: &[u8], signature: &[u8]) -> Result<String, VerifyError> {
        self.verify_detached_signed(data, signature)
            .map(|s| s.fingerprint)
    }

    /// [`Keyring::verify_detached`], with when the signature was made.
    pub fn verify_detached_signed(
        &self,
        data: &[u8],
        signature: &[u8],
    ) -> Result<Signed, VerifyError> {
        bounded("the signature", signature, MAX_SIGNATURE)?;
        let sigs =
            read_signatures(signature).map_err(|reason| VerifyError::NotASignature { reason })?;
        self.verify_any(&sigs, data, now())
    }

    /// Verifies a cleartext-signed message (-----BEGIN PGP SIGNED MESSAGE-----, as some
    /// distributions publish SHA256SUMS) and returns the signed text and the signer's
    /// fingerprint.
    ///
    /// The text is the signed text only (dash-escaping undone, trailing whitespace on each
    /// line dropped as the signature framework does), with `\n` line endings: anything
    /// around the signed block is discarded, never returned.
    pub fn verify_cleartext(&self, message: &[u8]) -> Result<(String, String), VerifyError> {
        self.verify_cleartext_signed(message)
            .map(|(text, s)| (text, s.fingerprint))
    }

    /// [`Keyring::verify_cleartext`], with when the signature was made.
    pub fn verify_cleartext_signed(&self, message: &[u8]) -> Result<(String, Signed), VerifyError> {
        bounded("the signed message", message, MAX_CLEARTEXT)?;
        let options = DearmorOptions::new().set_limit(MAX_CLEARTEXT);
        let (msg, _headers) = CleartextSignedMessage::from_armor_buf(message, options)
            .map_err(|e| VerifyError::NotCleartext { reason: reason(&e) })?;
        let signed = msg.signed_text();
        let signer = self.verify_any(msg.signatures(), signed.as_bytes(), now())?;
        Ok((signed.replace("\r\n", "\n"), signer))
    }

    fn add(&mut self, cert: Cert) {
        match self
            .certs
            .iter_mut()
            .find(|c| c.fingerprint == cert.fingerprint)
        {
            Some(existing) => {
                let mut key = existing.key.clone();
                merge_key(&mut key, cert.key);
                *existing = Cert::new(key);
            }
            None => self.certs.push(cert),
        }
    }

    fn verify_any(&self, sigs: &[Signature], data: &[u8], now: u64) -> Result<Signed, VerifyError> {
        let mut worst: Option<VerifyError> = None;
        for sig in sigs {
            match self.verify_one(sig, data, now) {
                Ok(fingerprint) => return Ok(fingerprint),
                Err(e) => {
                    if worst.as_ref().is_none_or(|w| telling(&e) > telling(w)) {
                        worst = Some(e);
                    }
                }
            }
        }
        Err(worst.unwrap_or_else(|| VerifyError::NotASignature {
            reason: "the file holds no signature".into(),
        }))
    }

    fn verify_one(&self, sig: &Signature, data: &[u8], now: u64) -> Result<Signed, VerifyError> {
        // A key or certification signature verified over image bytes would mean nothing.
        match sig.typ() {
            Some(SignatureType::Binary | SignatureType::Text) => {}
            typ => {
                let typ = typ.map_or_else(|| "unknown".into(), |t| format!("{t:?}"));
                return Err(VerifyError::NotASignature {
                    reason: format!("a signature of type {typ}, not one over data"),
                });
            }
        }
        // Before any public key operation: a weak hash is refused whoever signed.
        check_hash(sig.hash_alg())?;
        let Some(created) = sig.created() else {
            return Err(VerifyError::NotASignature {
                reason: "the signature has no creation time".into(),
            });
        };
        let created = u64::from(created.as_secs());

        let candidates = self.candidates(sig);
        if candidates.is_empty() {
            return Err(match issuer(sig) {
                Some(issuer) => VerifyError::UnknownSigner {
                    issuer,
                    keys: self.fingerprints(),
                },
                None => VerifyError::NotASignature {
                    reason: "it names no issuer, and no keys are configured".into(),
                },
            });
        }
        let Some((cert, component)) = candidates
            .into_iter()
            .find(|(cert, component)| cert.verifies(component, sig, data))
        else {
            return Err(VerifyError::BadSignature);
        };
        cert.check_valid_at(component, created)?;
        if let Some(lifetime) = sig.signature_expiration_time() {
            // Zero means the signature never expires (RFC 9580 section 5.2.3.18).
            let expires = created + u64::from(lifetime.as_secs());
            if lifetime.as_secs() != 0 && now >= expires {
                return Err(VerifyError::SignatureExpired {
                    key: cert.fingerprint.clone(),
                    expired: date(expires),
                });
            }
        }
        Ok(Signed {
            fingerprint: cert.fingerprint.clone(),
            created,
        })
    }

    /// The components a signature says made it. A signature that names no issuer at all
    /// (allowed, if rare) could be by any of them.
    fn candidates(&self, sig: &Signature) -> Vec<(&Cert, &Component)> {
        let fingerprints = sig.issuer_fingerprint();
        let key_ids = sig.issuer_key_id();
        let anonymous = fingerprints.is_empty() && key_ids.is_empty();
        self.certs
            .iter()
            .flat_map(|cert| {
                std::iter::once(&cert.primary)
                    .chain(&cert.subkeys)
                    .map(move |component| (cert, component))
            })
            .filter(|(_, c)| {
                anonymous
                    || fingerprints.iter().any(|f| **f == c.fingerprint)
                    || key_ids.iter().any(|k| **k == c.key_id)
            })
            .collect()
    }
}

impl Cert {
    fn new(key: SignedPublicKey) -> Cert {
        let primary_key = &key.primary_key;
        let fingerprint = primary_key.fingerprint();
        let key_id = primary_key.legacy_key_id();
        let by_primary = |sig: &Signature| issued_by(sig, &fingerprint, &key_id);

        // The newest valid self-signature says what the primary key may do and when it
        // expires: direct-key signatures, and the newest self-signature of each user ID that
        // is not revoked.
        let mut newest: Option<&Signature> = None;
        for sig in &key.details.direct_signatures {
            if by_primary(sig) && sig.verify_key(primary_key).is_ok() {
                newest = newer(newest, sig);
            }
        }
        for user in &key.details.users {
            let mut latest: Option<&Signature> = None;
            for sig in &user.signatures {
                if by_primary(sig)
                    && sig
                        .verify_certification(primary_key, Tag::UserId, &user.id)
                        .is_ok()
                {
                    latest = newer(latest, sig);
                }
            }
            if let Some(sig) = latest.filter(|s| s.typ() != Some(SignatureType::CertRevocation)) {
                newest = newer(newest, sig);
            }
        }
        let mut revoked = None;
        for sig in &key.details.revocation_signatures {
            if by_primary(sig) && sig.verify_key(primary_key).is_ok() {
                revoked = stronger(revoked, revocation(sig));
            }
        }
        let created = u64::from(primary_key.created_at().as_secs());
        let primary = Component {
            subkey: None,
            fingerprint: fingerprint.clone(),
            key_id,
            created,
            expires: newest.and_then(|s| expiry(created, s)),
            may_sign: match newest {
                None => Err("the key has no valid self-signature"),
                Some(sig) if !allows_signing(sig) => {
                    Err("the primary key is not allowed to sign (its key flags lack signing)")
                }
                Some(_) => Ok(()),
            },
            revoked,
        };

        let mut subkeys = Vec::new();
        for (index, subkey) in key.public_subkeys.iter().enumerate() {
            let mut binding: Option<&Signature> = None;
            let mut revoked = None;
            for sig in subkey.signatures.iter().filter(|s| by_primary(s)) {
                if sig.verify_subkey_binding(primary_key, &subkey.key).is_err() {
                    continue;
                }
                match sig.typ() {
                    Some(SignatureType::SubkeyBinding) => binding = newer(binding, sig),
                    Some(SignatureType::SubkeyRevocation) => {
                        revoked = stronger(revoked, revocation(sig))
                    }
                    _ => {}
                }
            }
            let Some(binding) = binding else { continue };
            let created = u64::from(subkey.key.created_at().as_secs());
            let may_sign = if !allows_signing(binding) {
                Err("the subkey is not allowed to sign (its key flags lack signing)")
            } else if !back_signed(binding, &subkey.key, primary_key) {
                // Without the subkey's own signature over the primary, anyone could bind a
                // key of theirs as a signing subkey of someone else's certificate.
                Err("the subkey's binding lacks a valid back-signature")
            } else {
                Ok(())
            };
            subkeys.push(Component {
                subkey: Some(index),
                fingerprint: subkey.key.fingerprint(),
                key_id: subkey.key.legacy_key_id(),
                created,
                expires: expiry(created, binding),
                may_sign,
                revoked,
            });
        }

        Cert {
            fingerprint: hex_upper(&fingerprint),
            self_signed: newest.is_some(),
            primary,
            subkeys,
            key,
        }
    }

    /// Whether `component` made `sig` over `data` (cryptography only).
    fn verifies(&self, component: &Component, sig: &Signature, data: &[u8]) -> bool {
        match component.subkey {
            None => sig.verify(&self.key.primary_key, data).is_ok(),
            Some(i) => self
                .key
                .public_subkeys
                .get(i)
                .is_some_and(|s| sig.verify(&s.key, data).is_ok()),
        }
    }

    /// Whether `component` could sign data at `created`: the primary key bounds every subkey.
    fn check_valid_at(&self, component: &Component, created: u64) -> Result<(), VerifyError> {
        let key = match component.subkey {
            None => self.fingerprint.clone(),
            Some(_) => format!(
                "{} (subkey {})",
                self.fingerprint,
                hex_upper(&component.fingerprint)
            ),
        };
        let fail = |reason: String| VerifyError::KeyNotValid {
            key: key.clone(),
            signed: date(created),
            reason,
        };
        component.may_sign.map_err(|r| fail(r.into()))?;
        if !self.self_signed {
            return Err(fail("the key has no valid self-signature".into()));
        }
        let mut parts = vec![("key", &self.primary)];
        if component.subkey.is_some() {
            parts.push(("subkey", component));
        }
        for (what, part) in parts {
            if created < part.created {
                return Err(fail(format!(
                    "the signature predates the {what} (created {})",
                    date(part.created)
                )));
            }
            if let Some(expires) = part.expires.filter(|e| created >= *e) {
                return Err(fail(format!("the {what} expired on {}", date(expires))));
            }
            match &part.revoked {
                Some(Revocation::Hard(reason)) => {
                    return Err(fail(format!("the {what} is revoked ({reason})")));
                }
                Some(Revocation::Soft { at, reason }) if created >= *at => {
                    return Err(fail(format!(
                        "the {what} was revoked on {} ({reason})",
                        date(*at)
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Public keys from a key file: binary packets, or one or more armored blocks (a file of
/// several `gpg --export --armor` outputs concatenated is common).
fn read_public_keys(bytes: &[u8]) -> Result<Vec<SignedPublicKey>, String> {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or("the file is empty")?;
    let bytes = &bytes[start..];
    // The first octet of a binary packet has its top bit set (RFC 9580 section 4.2); armor
    // is ASCII.
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        return SignedPublicKey::from_bytes_many(bytes)
            .and_then(|keys| keys.collect::<Result<Vec<_>, _>>())
            .map_err(|e| reason(&e));
    }
    let blocks = armor_blocks(bytes);
    if blocks.is_empty() {
        return Err(
            "neither binary OpenPGP nor a \"-----BEGIN PGP PUBLIC KEY BLOCK-----\" block".into(),
        );
    }
    let mut keys = Vec::new();
    for block in blocks {
        if block.starts_with(b"-----BEGIN PGP PRIVATE KEY BLOCK-----") {
            // Said plainly: a secret key in the daemon's configuration is a leak to fix.
            return Err("this is a private key; configure the public key only \
                 (gpg --export --armor FINGERPRINT)"
                .into());
        }
        let (parsed, _headers) =
            SignedPublicKey::from_armor_many_buf(block).map_err(|e| reason(&e))?;
        for key in parsed {
            keys.push(key.map_err(|e| reason(&e))?);
        }
    }
    Ok(keys)
}

/// Each armored block of a file, from its BEGIN line up to the next one.
fn armor_blocks(bytes: &[u8]) -> Vec<&[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN PGP ";
    let starts: Vec<usize> = (0..bytes.len())
        .filter(|&i| bytes[i..].starts_with(BEGIN))
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(bytes.len());
            &bytes[start..end]
        })
        .collect()
}

/// The signature packets of a detached signature file, armored or binary.
fn read_signatures(bytes: &[u8]) -> Result<Vec<Signature>, String> {
    let (sigs, _headers) = DetachedSignature::from_reader_many(bytes).map_err(|e| reason(&e))?;
    let sigs = sigs
        .map(|s| s.map(|s| s.signature))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| reason(&e))?;
    if sigs.is_empty() {
        return Err("the file holds no signature".into());
    }
    Ok(sigs)
}

/// Adds `other`'s signatures and subkeys to `into` (both copies of one primary key).
fn merge_key(into: &mut SignedPublicKey, other: SignedPublicKey) {
    let details = other.details;
    into.details
        .revocation_signatures
        .extend(details.revocation_signatures);
    into.details
        .direct_signatures
        .extend(details.direct_signatures);
    into.details.users.extend(details.users);
    into.details.user_attributes.extend(details.user_attributes);
    for subkey in other.public_subkeys {
        match into.public_subkeys.iter_mut().find(|s| s.key == subkey.key) {
            Some(same) => same.signatures.extend(subkey.signatures),
            None => into.public_subkeys.push(subkey),
        }
    }
}

/// Whether a signature's issuer subpackets name this key (or name no key at all). Only a
/// filter before the cryptographic check, which decides.
fn issued_by(sig: &Signature, fingerprint: &Fingerprint, key_id: &KeyId) -> bool {
    let fingerprints = sig.issuer_fingerprint();
    let key_ids = sig.issuer_key_id();
    (fingerprints.is_empty() && key_ids.is_empty())
        || fingerprints.contains(&fingerprint)
        || key_ids.contains(&key_id)
}

/// The issuer a signature names, for an error: its fingerprint, else its key ID.
fn issuer(sig: &Signature) -> Option<String> {
    if let Some(f) = sig.issuer_fingerprint().first() {
        return Some(hex_upper(f));
    }
    sig.issuer_key_id()
        .first()
        .map(|k| k.to_string().to_ascii_uppercase())
}

fn newer<'a>(current: Option<&'a Signature>, candidate: &'a Signature) -> Option<&'a Signature> {
    match current {
        Some(c) if c.created() >= candidate.created() => Some(c),
        _ => Some(candidate),
    }
}

/// Whether a self-signature or binding lets its key sign data.
fn allows_signing(sig: &Signature) -> bool {
    let has_flags = sig.config().is_some_and(|c| {
        c.hashed_subpackets()
            .any(|p| matches!(p.data, SubpacketData::KeyFlags(_)))
    });
    // Keys from before RFC 4880 carry no key flags and were usable for anything.
    !has_flags || sig.key_flags().sign()
}

fn back_signed(binding: &Signature, subkey: &PublicSubkey, primary: &PublicKey) -> bool {
    let subkey_fp = subkey.fingerprint();
    let subkey_id = subkey.legacy_key_id();
    binding.embedded_signature().is_some_and(|back| {
        issued_by(back, &subkey_fp, &subkey_id)
            && back.verify_primary_key_binding(subkey, primary).is_ok()
    })
}

/// When a component expires, from the self-signature or binding that governs it.
fn expiry(created: u64, sig: &Signature) -> Option<u64> {
    sig.key_expiration_time()
        .map(|d| u64::from(d.as_secs()))
        // Zero means "does not expire" (RFC 9580 section 5.2.3.13).
        .filter(|secs| *secs != 0)
        .map(|secs| created + secs)
}

fn revocation(sig: &Signature) -> Revocation {
    let at = sig.created().map_or(0, |t| u64::from(t.as_secs()));
    match sig.revocation_reason_code() {
        Some(RevocationCode::KeySuperseded) => Revocation::Soft {
            at,
            reason: "superseded",
        },
        Some(RevocationCode::KeyRetired) => Revocation::Soft {
            at,
            reason: "retired",
        },
        Some(RevocationCode::KeyCompromised) => Revocation::Hard("key material compromised"),
        // RFC 9580 section 5.2.3.31: anything else (or nothing) counts as a hard revocation.
        _ => Revocation::Hard("no reason given, so treated as compromised"),
    }
}

/// Of two revocations, the one that voids more signatures.
fn stronger(current: Option<Revocation>, new: Revocation) -> Option<Revocation> {
    Some(match (current, new) {
        (Some(hard @ Revocation::Hard(_)), _) | (_, hard @ Revocation::Hard(_)) => hard,
        (Some(Revocation::Soft { at: a, reason }), Revocation::Soft { at: b, .. }) if a <= b => {
            Revocation::Soft { at: a, reason }
        }
        (_, new) => new,
    })
}

fn check_hash(alg: Option<HashAlgorithm>) -> Result<(), VerifyError> {
    let weak = |algorithm, why| Err(VerifyError::WeakHash { algorithm, why });
    match alg {
        Some(
            HashAlgorithm::Sha224
            | HashAlgorithm::Sha256
            | HashAlgorithm::Sha384
            | HashAlgorithm::Sha512
            | HashAlgorithm::Sha3_256
            | HashAlgorithm::Sha3_512,
        ) => Ok(()),
        Some(HashAlgorithm::Md5) => weak("MD5", "broken"),
        Some(HashAlgorithm::Sha1) => weak("SHA-1", "broken"),
        Some(HashAlgorithm::Ripemd160) => {
            weak("RIPEMD-160", "too short to trust (RFC 9580 forbids it)")
        }
        other => Err(VerifyError::NotASignature {
            reason: format!(
                "unsupported hash algorithm {}",
                other.map_or_else(|| "(unknown)".into(), |a| a.to_string())
            ),
        }),
    }
}

/// How much an error tells the operator, to report the best one of several signatures.
fn telling(e: &VerifyError) -> u8 {
    match e {
        VerifyError::BadSignature
        | VerifyError::KeyNotValid { .. }
        | VerifyError::SignatureExpired { .. } => 3,
        VerifyError::WeakHash { .. } => 2,
        VerifyError::UnknownSigner { .. } => 1,
        _ => 0,
    }
}

/// A library error as one bounded line for an operator: rPGP puts `Debug` dumps of its
/// internals (input bytes, even backtraces) into some messages.
fn reason(e: &pgp::errors::Error) -> String {
    const MAX: usize = 160;
    let text = e.to_string();
    let text = text.split(", backtrace").next().unwrap_or_default();
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

fn hex_upper(fingerprint: &Fingerprint) -> String {
    format!("{fingerprint:X}")
}

fn bounded(what: &str, bytes: &[u8], limit: usize) -> Result<(), VerifyError> {
    if bytes.len() > limit {
        return Err(VerifyError::TooLarge {
            what: what.to_owned(),
            size: bytes.len(),
            limit,
        });
    }
    Ok(())
}

fn now() -> u64 {
    // A clock before 1970 is broken; 0 then makes no signature look expired, which is the
    // lenient side of a check that only matters for signatures carrying an expiration time.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A UTC date and time for messages, from seconds since the epoch.
pub fn date(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(
            || format!("{secs} s after the epoch"),
            |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        )
}

// ---------------------------------------------------------------------------------------------
// Digests and sums files
// ---------------------------------------------------------------------------------------------

/// A digest a sums file lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Digest {
    /// SHA-256.
    Sha256([u8; 32]),
    /// SHA-512.
    Sha512([u8; 64]),
}

impl Digest {
    /// The digest in lower-case hex, as sums files write it.
    pub fn hex(&self) -> String {
        let bytes: &[u8] = match self {
            Digest::Sha256(d) => d,
            Digest::Sha512(d) => d,
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The algorithm's name: "SHA-256" or "SHA-512".
    pub fn algorithm(&self) -> &'static str {
        match self {
            Digest::Sha256(_) => "SHA-256",
            Digest::Sha512(_) => "SHA-512",
        }
    }

    /// true when `data`'s digest matches (same algorithm, same value).
    pub fn matches(&self, data_digest: &Digest) -> bool {
        self == data_digest
    }

    /// Strongest first when sorted.
    fn rank(&self) -> u8 {
        match self {
            Digest::Sha512(_) => 0,
            Digest::Sha256(_) => 1,
        }
    }
}

/// Streaming hasher for both algorithms at once (files can be GiBs; the caller feeds chunks).
#[derive(Clone, Default)]
pub struct Hasher {
    sha256: sha2::Sha256,
    sha512: sha2::Sha512,
}

impl Hasher {
    /// A hasher that has seen no data.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the file.
    pub fn update(&mut self, b: &[u8]) {
        self.sha256.update(b);
        self.sha512.update(b);
    }

    /// The (SHA-256, SHA-512) digests of everything fed.
    pub fn finish(self) -> (Digest, Digest) {
        (
            Digest::Sha256(self.sha256.finalize().into()),
            Digest::Sha512(self.sha512.finalize().into()),
        )
    }
}

/// A parsed sums file.
#[derive(Clone, Debug)]
pub struct Sums {
    entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
struct Entry {
    /// The name as written (a leading "./" kept).
    name: String,
    digest: Digest,
}

/// What one line of a sums file says.
enum Line {
    Nothing,
    /// A Flatcar/catalyst DIGESTS header ("# SHA512 HASH") choosing the algorithm below it.
    Section(Section),
    Entry(String, Digest),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    /// No header yet: the digest's length tells the algorithm.
    Any,
    Sha256,
    Sha512,
    /// An algorithm not used here (MD5, SHA1, WHIRLPOOL, BLAKE2B…): its lines are skipped,
    /// since a 128-digit WHIRLPOOL or BLAKE2B line would otherwise pass for SHA-512.
    Ignored,
}

impl Sums {
    /// Parses: GNU coreutils format ("<hex>  name", "<hex> *name"), BSD tag format
    /// ("SHA256 (name) = <hex>", "SHA512 (name) = <hex>"), '#' comment lines and blank lines
    /// ignored, Flatcar DIGESTS files ("# SHA512 HASH" headers; MD5 (32 hex) and SHA1 (40
    /// hex) lines ignored). A name may be given with a leading "./" or a path; lookup matches
    /// on the name as written and on its last path component. Digest algorithm from the hex
    /// length (64 → SHA-256, 128 → SHA-512). Refuse: no usable line at all, a malformed line
    /// (name the line number and why), the same name listed with two different digests of
    /// one algorithm, a file over a bound ([`MAX_SUMS`]).
    pub fn parse(text: &str) -> Result<Sums, VerifyError> {
        bounded("the sums file", text.as_bytes(), MAX_SUMS)?;
        let mut entries: Vec<Entry> = Vec::new();
        // (name without "./", algorithm) → (index into entries, line)
        let mut seen: HashMap<(String, &'static str), (usize, usize)> = HashMap::new();
        let mut section = Section::Any;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let (name, digest) = match parse_line(raw.trim(), section) {
                Ok(Line::Nothing) => continue,
                Ok(Line::Section(s)) => {
                    section = s;
                    continue;
                }
                Ok(Line::Entry(name, digest)) => (name, digest),
                Err(reason) => return Err(VerifyError::SumsLine { line, reason }),
            };
            let key = (strip_dot(&name).to_owned(), digest.algorithm());
            if let Some(&(first_index, first)) = seen.get(&key) {
                if entries.get(first_index).is_some_and(|e| e.digest != digest) {
                    return Err(VerifyError::SumsConflict {
                        line,
                        first,
                        name,
                        algorithm: digest.algorithm(),
                    });
                }
                continue;
            }
            seen.insert(key, (entries.len(), line));
            entries.push(Entry { name, digest });
        }
        if entries.is_empty() {
            return Err(VerifyError::SumsEmpty);
        }
        Ok(Sums { entries })
    }

    /// The digests listed for a file name (strongest first: SHA-512 before SHA-256).
    ///
    /// A name listed as written (with or without "./") wins; otherwise every entry whose
    /// last path component is `name` counts, which can be several different files (see
    /// [`check_file`], which refuses that).
    pub fn lookup(&self, name: &str) -> Vec<&Digest> {
        digests(&self.matching(name))
    }

    fn matching(&self, name: &str) -> Vec<&Entry> {
        let want = strip_dot(name);
        let exact: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| strip_dot(&e.name) == want)
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        self.entries
            .iter()
            .filter(|e| last_component(&e.name) == want)
            .collect()
    }
}

/// Distinct digests of some entries, strongest first.
fn digests<'a>(entries: &[&'a Entry]) -> Vec<&'a Digest> {
    let mut out: Vec<&Digest> = Vec::new();
    for entry in entries {
        if !out.contains(&&entry.digest) {
            out.push(&entry.digest);
        }
    }
    out.sort_by_key(|d| d.rank());
    out
}

/// Checks a computed (sha256, sha512) pair against what the sums list for `name`: Ok(algorithm
/// used) or an error naming the file, the expected and the actual digest.
///
/// Every digest listed for the file must match (a file listed with both algorithms is
/// checked with both); the algorithm returned is the strongest.
pub fn check_file(
    sums: &Sums,
    name: &str,
    sha256: &Digest,
    sha512: &Digest,
) -> Result<&'static str, VerifyError> {
    let entries = sums.matching(name);
    let listed = digests(&entries);
    let Some(strongest) = listed.first() else {
        return Err(VerifyError::NotListed { name: name.into() });
    };
    // Two digests of one algorithm can only come from different paths with this last
    // component (one path with two is refused by `Sums::parse`): which file is meant is
    // unknown, so neither is trusted.
    if listed
        .windows(2)
        .any(|pair| pair[0].algorithm() == pair[1].algorithm())
    {
        let mut paths: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        paths.dedup();
        return Err(VerifyError::Ambiguous {
            name: name.into(),
            paths,
        });
    }
    for expected in &listed {
        let actual = [sha256, sha512]
            .into_iter()
            .find(|d| d.algorithm() == expected.algorithm());
        if !actual.is_some_and(|a| expected.matches(a)) {
            return Err(VerifyError::Mismatch {
                name: name.into(),
                algorithm: expected.algorithm(),
                expected: expected.hex(),
                actual: actual.map_or_else(|| "nothing (not computed)".into(), Digest::hex),
            });
        }
    }
    Ok(strongest.algorithm())
}

/// One trimmed line of a sums file.
fn parse_line(line: &str, section: Section) -> Result<Line, String> {
    if line.is_empty() {
        return Ok(Line::Nothing);
    }
    if let Some(comment) = line.strip_prefix('#') {
        return Ok(header(comment).map_or(Line::Nothing, Line::Section));
    }
    if let Some((tag, rest)) = bsd_tag(line) {
        return parse_bsd(tag, rest);
    }
    parse_gnu(line, section)
}

/// "# SHA512 HASH" → the section it opens; any other comment → `None`.
fn header(comment: &str) -> Option<Section> {
    let mut words = comment.split_whitespace();
    let (Some(algorithm), Some(hash), None) = (words.next(), words.next(), words.next()) else {
        return None;
    };
    if !hash.eq_ignore_ascii_case("HASH") {
        return None;
    }
    Some(match algorithm.to_ascii_uppercase().as_str() {
        "SHA256" | "SHA-256" => Section::Sha256,
        "SHA512" | "SHA-512" => Section::Sha512,
        _ => Section::Ignored,
    })
}

/// "SHA256 (name) = hex" → ("SHA256", "(name) = hex"), when the line has that shape.
fn bsd_tag(line: &str) -> Option<(&str, &str)> {
    let (tag, rest) = line.split_once(" (")?;
    let is_tag = !tag.is_empty()
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        // A GNU line is hex first: a name starting with '(' must not pass for a tag.
        && !tag.chars().all(|c| c.is_ascii_hexdigit());
    is_tag.then_some((tag, rest))
}

fn parse_bsd(tag: &str, rest: &str) -> Result<Line, String> {
    let Some((name, hex)) = rest.rsplit_once(") = ") else {
        return Err(format!(
            "a {tag} line must read \"{tag} (name) = <hex digest>\""
        ));
    };
    let digest = match tag.to_ascii_uppercase().as_str() {
        "MD5" | "SHA1" => return Ok(Line::Nothing),
        "SHA256" => decode_hex(hex).map(Digest::Sha256),
        "SHA512" => decode_hex(hex).map(Digest::Sha512),
        _ => return Err(format!("unsupported digest algorithm {tag}")),
    };
    let digest = digest.ok_or_else(|| {
        format!(
            "the {tag} digest must be {} hex digits, not {hex:?}",
            if tag.eq_ignore_ascii_case("SHA256") {
                64
            } else {
                128
            }
        )
    })?;
    Ok(Line::Entry(check_name(name)?, digest))
}

fn parse_gnu(line: &str, section: Section) -> Result<Line, String> {
    // coreutils starts a line with '\' when the name is escaped (it holds '\' or a newline).
    let (escaped, line) = match line.strip_prefix('\\') {
        Some(rest) => (true, rest),
        None => (false, line),
    };
    let Some((hex, rest)) = line.split_once(' ') else {
        return Err(
            "expected \"<hex digest>  <name>\" or \"<ALGORITHM> (name) = <hex digest>\"".into(),
        );
    };
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "expected a hex digest, found {:?}",
            hex.chars().take(20).collect::<String>()
        ));
    }
    // "  name" (text mode) or " *name" (binary mode); one space alone is a common sloppiness.
    let name = rest
        .strip_prefix('*')
        .or_else(|| rest.strip_prefix(' '))
        .unwrap_or(rest);
    let name = if escaped {
        unescape(name)?
    } else {
        name.to_owned()
    };
    let digest = match (section, hex.len()) {
        (Section::Ignored, _) => return Ok(Line::Nothing),
        // MD5 and SHA-1: listed by some generators next to stronger digests, never used.
        (Section::Any, 32 | 40) => return Ok(Line::Nothing),
        (Section::Any | Section::Sha256, 64) => decode_hex(hex).map(Digest::Sha256),
        (Section::Any | Section::Sha512, 128) => decode_hex(hex).map(Digest::Sha512),
        (Section::Sha256, n) => return Err(format!("a {n}-digit digest under a SHA256 header")),
        (Section::Sha512, n) => return Err(format!("a {n}-digit digest under a SHA512 header")),
        (Section::Any, n) => {
            return Err(format!(
                "a {n}-digit digest: expected 64 (SHA-256) or 128 (SHA-512)"
            ))
        }
    };
    let digest = digest.ok_or("the digest is not valid hex")?;
    Ok(Line::Entry(check_name(&name)?, digest))
}

fn check_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the file name is missing".into());
    }
    Ok(name.to_owned())
}

/// Undoes coreutils' escaping of a name: "\\\\" and "\\n".
fn unescape(name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            other => {
                return Err(format!(
                    "a bad escape \\{} in the name",
                    other.unwrap_or(' ')
                ))
            }
        }
    }
    Ok(out)
}

fn decode_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    let hex = hex.as_bytes();
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| char::from(c).to_digit(16);
        let (high, low) = (digit(pair[0])?, digit(pair[1])?);
        *byte = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

fn strip_dot(name: &str) -> &str {
    let mut name = name;
    while let Some(rest) = name.strip_prefix("./") {
        name = rest;
    }
    name
}

fn last_component(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    const DATA: &[u8] = b"the sums file a signature covers\n";
    const MISSING_GPG: &str = "install gpg (cargo xtask setup)";
    /// 2020-09-13: the expired key's creation time, under gpg's --faked-system-time.
    const T0: u64 = 1_600_000_000;
    const DAY: u64 = 86_400;

    /// A throwaway GnuPG home; the agent it starts is stopped before the directory goes.
    struct Gpg {
        home: tempfile::TempDir,
    }

    impl Gpg {
        fn new() -> Result<Gpg, String> {
            let found = Command::new("gpg")
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                return Err(format!("gpg is not on the PATH: {MISSING_GPG}"));
            }
            let home = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
            Ok(Gpg { home })
        }

        fn run(&self, args: &[&str], stdin: &[u8]) -> Result<Vec<u8>, String> {
            let mut child = Command::new("gpg")
                .env("GNUPGHOME", self.home.path())
                .args([
                    "--batch",
                    "--yes",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("gpg: {e}: {MISSING_GPG}"))?;
            if let Some(mut input) = child.stdin.take() {
                input
                    .write_all(stdin)
                    .map_err(|e| format!("gpg stdin: {e}"))?;
            }
            let out = child.wait_with_output().map_err(|e| format!("gpg: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "gpg {args:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(out.stdout)
        }

        /// Generates a key and returns its primary fingerprint.
        fn generate(
            &self,
            uid: &str,
            algo: &str,
            usage: &str,
            at: Option<u64>,
        ) -> Result<String, String> {
            let faked = at.map(|t| t.to_string());
            let mut args = Vec::new();
            if let Some(t) = &faked {
                args.extend(["--faked-system-time", t.as_str()]);
            }
            args.extend(["--quick-gen-key", uid, algo, usage, "never"]);
            self.run(&args, b"")?;
            Ok(self.fingerprints(uid)?.remove(0))
        }

        /// Fingerprints of a key, primary first, then subkeys.
        fn fingerprints(&self, key: &str) -> Result<Vec<String>, String> {
            let listing = self.run(&["--with-colons", "--list-keys", key], b"")?;
            let fprs: Vec<String> = String::from_utf8_lossy(&listing)
                .lines()
                .filter_map(|l| l.strip_prefix("fpr:"))
                .filter_map(|l| l.split(':').find(|f| !f.is_empty()).map(str::to_owned))
                .collect();
            if fprs.is_empty() {
                return Err(format!("no fingerprint for {key}"));
            }
            Ok(fprs)
        }

        fn export(&self, fpr: &str, armor: bool) -> Result<Vec<u8>, String> {
            let mut args = vec!["--export"];
            if armor {
                args.push("--armor");
            }
            args.push(fpr);
            self.run(&args, b"")
        }

        fn sign(&self, fpr: &str, data: &[u8], extra: &[&str]) -> Result<Vec<u8>, String> {
            let mut args = vec!["--local-user", fpr];
            args.extend(extra);
            args.extend(["--output", "-"]);
            self.run(&args, data)
        }

        fn path(&self) -> &Path {
            self.home.path()
        }
    }

    impl Drop for Gpg {
        fn drop(&mut self) {
            let _ = Command::new("gpgconf")
                .env("GNUPGHOME", self.home.path())
                .args(["--kill", "gpg-agent"])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Everything gpg makes for the tests, made once: key generation (RSA above all) is slow.
    struct Fixture {
        ed_fpr: String,
        ed_pub_armored: Vec<u8>,
        ed_pub_binary: Vec<u8>,
        ed_secret: Vec<u8>,
        ed_sig_armored: Vec<u8>,
        ed_sig_binary: Vec<u8>,
        ed_clearsigned: Vec<u8>,
        rsa_fpr: String,
        rsa_pub_armored: Vec<u8>,
        rsa_sig_binary: Vec<u8>,
        rsa_sig_sha1: Vec<u8>,
        sub_fpr: String,
        sub_subkey_fpr: String,
        sub_pub_armored: Vec<u8>,
        sub_sig_armored: Vec<u8>,
        other_fpr: String,
        other_sig: Vec<u8>,
        expired_pub: Vec<u8>,
        expired_sig_early: Vec<u8>,
        expired_sig_late: Vec<u8>,
        revoked_pub: Vec<u8>,
        revoked_sig: Vec<u8>,
    }

    const SUMS_TEXT: &str = "\
0b5e1f4ab3a6d3b5a1f2e0c9d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9  vmlinuz
1c6f2a5bc4b7e4c6b2a3f1d0e9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0 *initrd.img
";

    fn build() -> Result<Fixture, String> {
        let gpg = Gpg::new()?;
        let detach = ["--detach-sign"];
        let detach_armor = ["--detach-sign", "--armor"];

        let ed_fpr = gpg.generate("ed <ed@example>", "ed25519", "sign", None)?;
        let rsa_fpr = gpg.generate("rsa <rsa@example>", "rsa3072", "sign", None)?;
        let sub_fpr = gpg.generate("sub <sub@example>", "ed25519", "cert", None)?;
        gpg.run(
            &["--quick-add-key", &sub_fpr, "ed25519", "sign", "never"],
            b"",
        )?;
        let sub_subkey_fpr = gpg
            .fingerprints(&sub_fpr)?
            .get(1)
            .cloned()
            .ok_or("the signing subkey was not added")?;
        let other_fpr = gpg.generate("other <other@example>", "ed25519", "sign", None)?;

        // Made in 2020 under a faked clock: signed at T0+12h (valid), signed at T0+10d, and
        // then given an expiry of T0+2d by a self-signature dated T0+1d.
        let expired_fpr = gpg.generate("exp <exp@example>", "ed25519", "sign", Some(T0))?;
        let faked = |t: u64| t.to_string();
        let at_early = faked(T0 + DAY / 2);
        let at_late = faked(T0 + 10 * DAY);
        let at_expire = faked(T0 + DAY);
        let expired_sig_early = gpg.sign(
            &expired_fpr,
            DATA,
            &["--faked-system-time", &at_early, "--detach-sign"],
        )?;
        let expired_sig_late = gpg.sign(
            &expired_fpr,
            DATA,
            &["--faked-system-time", &at_late, "--detach-sign"],
        )?;
        gpg.run(
            &[
                "--faked-system-time",
                &at_expire,
                "--quick-set-expire",
                &expired_fpr,
                "1d",
            ],
            b"",
        )?;

        // gpg stores a revocation certificate (no reason given: a hard revocation) at key
        // generation, defused by a leading ':'.
        let revoked_fpr = gpg.generate("rev <rev@example>", "ed25519", "sign", None)?;
        let revoked_sig = gpg.sign(&revoked_fpr, DATA, &detach)?;
        let rev_path = gpg
            .path()
            .join(format!("openpgp-revocs.d/{revoked_fpr}.rev"));
        let rev = std::fs::read_to_string(&rev_path).map_err(|e| format!("{rev_path:?}: {e}"))?;
        gpg.run(
            &["--import"],
            rev.replace(":-----BEGIN", "-----BEGIN").as_bytes(),
        )?;

        Ok(Fixture {
            ed_pub_armored: gpg.export(&ed_fpr, true)?,
            ed_pub_binary: gpg.export(&ed_fpr, false)?,
            ed_secret: gpg.run(&["--export-secret-keys", "--armor", &ed_fpr], b"")?,
            ed_sig_armored: gpg.sign(&ed_fpr, DATA, &detach_armor)?,
            ed_sig_binary: gpg.sign(&ed_fpr, DATA, &detach)?,
            ed_clearsigned: gpg.sign(&ed_fpr, SUMS_TEXT.as_bytes(), &["--clearsign"])?,
            rsa_pub_armored: gpg.export(&rsa_fpr, true)?,
            rsa_sig_binary: gpg.sign(&rsa_fpr, DATA, &detach)?,
            rsa_sig_sha1: gpg.sign(&rsa_fpr, DATA, &["--digest-algo", "SHA1", "--detach-sign"])?,
            sub_pub_armored: gpg.export(&sub_fpr, true)?,
            sub_sig_armored: gpg.sign(&sub_fpr, DATA, &detach_armor)?,
            other_sig: gpg.sign(&other_fpr, DATA, &detach)?,
            expired_pub: gpg.export(&expired_fpr, true)?,
            expired_sig_early,
            expired_sig_late,
            revoked_pub: gpg.export(&revoked_fpr, true)?,
            revoked_sig,
            ed_fpr,
            rsa_fpr,
            sub_fpr,
            sub_subkey_fpr,
            other_fpr,
        })
    }

    /// The fixture, or a failure naming what to install: a missing gpg must never pass.
    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Result<Fixture, String>> = OnceLock::new();
        match FIXTURE.get_or_init(build) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    fn ring(key: &[u8]) -> Keyring {
        Keyring::parse(key, "keys/test.asc").expect("key parses")
    }

    #[test]
    fn ed25519_signatures_verify_armored_and_binary() {
        let f = fixture();
        for key in [&f.ed_pub_armored, &f.ed_pub_binary] {
            let keys = ring(key);
            assert_eq!(keys.fingerprints(), vec![f.ed_fpr.clone()]);
            for sig in [&f.ed_sig_armored, &f.ed_sig_binary] {
                assert_eq!(keys.verify_detached(DATA, sig).expect("good"), f.ed_fpr);
            }
        }
    }

    #[test]
    fn rsa_signature_verifies() {
        let f = fixture();
        let keys = ring(&f.rsa_pub_armored);
        assert_eq!(
            keys.verify_detached(DATA, &f.rsa_sig_binary).expect("good"),
            f.rsa_fpr
        );
    }

    #[test]
    fn a_signing_subkey_answers_with_its_primary() {
        let f = fixture();
        let keys = ring(&f.sub_pub_armored);
        assert_eq!(
            keys.verify_detached(DATA, &f.sub_sig_armored)
                .expect("good"),
            f.sub_fpr
        );
        assert_ne!(f.sub_fpr, f.sub_subkey_fpr);
    }

    #[test]
    fn tampered_data_is_refused() {
        let f = fixture();
        let keys = ring(&f.ed_pub_armored);
        let mut tampered = DATA.to_vec();
        tampered[0] ^= 1;
        for sig in [&f.ed_sig_armored, &f.ed_sig_binary] {
            let err = keys.verify_detached(&tampered, sig).expect_err("tampered");
            assert!(matches!(err, VerifyError::BadSignature), "{err}");
            assert_eq!(
                err.to_string(),
                "bad signature: the data does not match (tampered or wrong file)"
            );
        }
        let rsa = ring(&f.rsa_pub_armored);
        let err = rsa
            .verify_detached(b"other", &f.rsa_sig_binary)
            .expect_err("tampered");
        assert!(matches!(err, VerifyError::BadSignature), "{err}");
    }

    #[test]
    fn a_signature_by_an_unconfigured_key_names_its_issuer() {
        let f = fixture();
        let mut keys = ring(&f.ed_pub_armored);
        keys.extend(ring(&f.rsa_pub_armored));
        let err = keys
            .verify_detached(DATA, &f.other_sig)
            .expect_err("unknown");
        let message = err.to_string();
        assert!(
            matches!(err, VerifyError::UnknownSigner { .. }),
            "{message}"
        );
        assert!(
            message.starts_with(&format!("signature by key 0x{} which is not", f.other_fpr)),
            "{message}"
        );
        assert!(
            message.contains(&f.ed_fpr) && message.contains(&f.rsa_fpr),
            "{message}"
        );
    }

    #[test]
    fn sha1_signatures_are_refused() {
        let f = fixture();
        let keys = ring(&f.rsa_pub_armored);
        let err = keys
            .verify_detached(DATA, &f.rsa_sig_sha1)
            .expect_err("sha1");
        assert_eq!(err.to_string(), "signature uses SHA-1, which is broken");
    }

    #[test]
    fn validity_is_judged_when_the_key_signed() {
        let f = fixture();
        let keys = ring(&f.expired_pub);
        // Before the key expired: still good today.
        keys.verify_detached(DATA, &f.expired_sig_early)
            .expect("signed while valid");
        let err = keys
            .verify_detached(DATA, &f.expired_sig_late)
            .expect_err("expired");
        assert!(matches!(err, VerifyError::KeyNotValid { .. }), "{err}");
        assert!(err.to_string().contains("expired on 2020-09-15"), "{err}");
    }

    #[test]
    fn a_revoked_key_signs_nothing() {
        let f = fixture();
        let keys = ring(&f.revoked_pub);
        let err = keys
            .verify_detached(DATA, &f.revoked_sig)
            .expect_err("revoked");
        assert!(matches!(err, VerifyError::KeyNotValid { .. }), "{err}");
        assert!(err.to_string().contains("revoked"), "{err}");
    }

    #[test]
    fn cleartext_signed_sums_verify_and_parse() {
        let f = fixture();
        let keys = ring(&f.ed_pub_binary);
        let (text, signer) = keys.verify_cleartext(&f.ed_clearsigned).expect("good");
        assert_eq!(signer, f.ed_fpr);
        assert_eq!(text.trim_end(), SUMS_TEXT.trim_end());
        let sums = Sums::parse(&text).expect("signed sums parse");
        assert_eq!(sums.lookup("initrd.img").len(), 1);

        // The body changed after signing.
        let forged = String::from_utf8_lossy(&f.ed_clearsigned).replace("0b5e1f", "1b5e1f");
        let err = keys
            .verify_cleartext(forged.as_bytes())
            .expect_err("forged");
        assert!(matches!(err, VerifyError::BadSignature), "{err}");

        // Text before the signed block must not be smuggled in as signed.
        let mut prefixed = b"0000  evil\n".to_vec();
        prefixed.extend_from_slice(&f.ed_clearsigned);
        assert!(keys.verify_cleartext(&prefixed).is_err());

        let other = ring(&f.rsa_pub_armored);
        let err = other
            .verify_cleartext(&f.ed_clearsigned)
            .expect_err("unknown");
        assert!(matches!(err, VerifyError::UnknownSigner { .. }), "{err}");
    }

    #[test]
    fn keyrings_concatenate_and_merge() {
        let f = fixture();
        let mut both = f.ed_pub_armored.clone();
        both.extend_from_slice(&f.rsa_pub_armored);
        let mut keys = Keyring::parse(&both, "keys/both.asc").expect("two blocks");
        assert_eq!(
            keys.fingerprints(),
            vec![f.ed_fpr.clone(), f.rsa_fpr.clone()]
        );
        // The same key again (binary this time) merges rather than duplicates.
        keys.extend(ring(&f.ed_pub_binary));
        keys.extend(ring(&f.sub_pub_armored));
        assert_eq!(keys.fingerprints().len(), 3);
        assert_eq!(
            keys.verify_detached(DATA, &f.rsa_sig_binary).expect("rsa"),
            f.rsa_fpr
        );
        assert_eq!(
            keys.verify_detached(DATA, &f.sub_sig_armored).expect("sub"),
            f.sub_fpr
        );
    }

    #[test]
    fn garbage_keys_are_refused_without_panic() {
        let f = fixture();
        let half = &f.ed_pub_binary[..f.ed_pub_binary.len() / 2];
        let bad_armor =
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!!\n-----END PGP PUBLIC KEY BLOCK-----\n";
        let inputs: [&[u8]; 7] = [
            b"",
            b"   \n",
            b"hello world",
            &[0x99, 0xff, 0xff, 0x00, 0x01],
            half,
            bad_armor,
            &f.ed_sig_armored,
        ];
        for input in inputs {
            let err = Keyring::parse(input, "keys/flatcar.asc").expect_err("garbage");
            assert!(
                err.to_string()
                    .starts_with("keys/flatcar.asc: not an OpenPGP public key: "),
                "{err}"
            );
            let message = err.to_string();
            assert!(message.len() < 300 && !message.contains('\n'), "{message}");
        }
        let err = Keyring::parse(&f.ed_secret, "keys/secret.asc").expect_err("secret");
        assert!(err.to_string().contains("private key"), "{err}");
        let big = vec![b'a'; MAX_KEY_FILE + 1];
        assert!(matches!(
            Keyring::parse(&big, "keys/big.asc"),
            Err(VerifyError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_signatures_are_refused_without_panic() {
        let f = fixture();
        let keys = ring(&f.ed_pub_armored);
        let half = &f.ed_sig_binary[..f.ed_sig_binary.len() / 2];
        let mut flipped = f.ed_sig_binary.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 0x55;
        }
        let inputs: [&[u8]; 7] = [
            b"",
            b"not a signature",
            &[0x88, 0x00],
            half,
            &flipped,
            &f.ed_pub_binary,
            b"-----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\n",
        ];
        for input in inputs {
            assert!(keys.verify_detached(DATA, input).is_err());
            assert!(keys.verify_cleartext(input).is_err());
        }
        let big = vec![0u8; MAX_SIGNATURE + 1];
        assert!(matches!(
            keys.verify_detached(DATA, &big),
            Err(VerifyError::TooLarge { .. })
        ));
    }

    // ---- sums files (no gpg needed) ----

    fn digests_of(data: &[u8]) -> (Digest, Digest) {
        let mut h = Hasher::new();
        h.update(data);
        h.finish()
    }

    #[test]
    fn hasher_matches_known_vectors_in_chunks() {
        let (sha256, sha512) = digests_of(b"abc");
        assert_eq!(
            sha256.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(sha512.hex().starts_with("ddaf35a193617aba"));
        let mut chunked = Hasher::new();
        for chunk in b"abc".chunks(1) {
            chunked.update(chunk);
        }
        assert_eq!(chunked.finish(), (sha256, sha512));
    }

    #[test]
    fn gnu_lines_with_star_dot_and_paths() {
        let (kernel256, kernel512) = digests_of(b"kernel");
        let (initrd256, _) = digests_of(b"initrd");
        let (iso256, _) = digests_of(b"iso");
        let text = format!(
            "# made by sha256sum\n\n{}  ./vmlinuz\r\n{} *initrd.img\n{}  images/x86_64/boot.iso\n{} vmlinuz\n",
            kernel256.hex(),
            initrd256.hex(),
            iso256.hex(),
            kernel512.hex(),
        );
        let sums = Sums::parse(&text).expect("parses");
        assert_eq!(sums.lookup("vmlinuz"), vec![&kernel512, &kernel256]);
        assert_eq!(sums.lookup("./vmlinuz"), vec![&kernel512, &kernel256]);
        assert_eq!(sums.lookup("initrd.img"), vec![&initrd256]);
        assert_eq!(sums.lookup("boot.iso"), vec![&iso256]);
        assert_eq!(sums.lookup("images/x86_64/boot.iso"), vec![&iso256]);
        assert!(sums.lookup("x86_64").is_empty());

        assert_eq!(
            check_file(&sums, "vmlinuz", &kernel256, &kernel512).expect("ok"),
            "SHA-512"
        );
        let (_, initrd512) = digests_of(b"initrd");
        assert_eq!(
            check_file(&sums, "initrd.img", &initrd256, &initrd512).expect("ok"),
            "SHA-256"
        );
    }

    #[test]
    fn bsd_tags() {
        let (a256, _) = digests_of(b"a");
        let (_, b512) = digests_of(b"b");
        let text = format!(
            "# Fedora-Server-41: 2 bytes\nSHA256 (a.iso) = {}\nSHA512 (dir/b (1).img) = {}\nMD5 (a.iso) = 0cc175b9c0f1b6a831c399e269772661\n",
            a256.hex(),
            b512.hex()
        );
        let sums = Sums::parse(&text).expect("parses");
        assert_eq!(sums.lookup("a.iso"), vec![&a256]);
        assert_eq!(sums.lookup("b (1).img"), vec![&b512]);

        let bad = format!("SHA512 (a.iso) = {}\n", a256.hex());
        let err = Sums::parse(&bad).expect_err("length");
        assert!(err.to_string().starts_with("sums file line 1: "), "{err}");
    }

    #[test]
    fn flatcar_digests() {
        let (_, vmlinuz512) = digests_of(b"flatcar kernel");
        let (cpio256, cpio512) = digests_of(b"flatcar initrd");
        // A 128-digit digest under another header must not pass for SHA-512.
        let text = format!(
            "# MD5 HASH\n\
             7c9d6a3f1e0b2c4d5e6f708192a3b4c5  flatcar_production_pxe.vmlinuz\n\
             # SHA1 HASH\n\
             3f786850e387550fdab836ed7e6dc881de23001b  flatcar_production_pxe.vmlinuz\n\
             # BLAKE2B HASH\n\
             {blake}  flatcar_production_pxe.vmlinuz\n\
             # SHA512 HASH\n\
             {vmlinuz}  flatcar_production_pxe.vmlinuz\n\
             {cpio}  flatcar_production_pxe_image.cpio.gz\n",
            blake = "ab".repeat(64),
            vmlinuz = vmlinuz512.hex(),
            cpio = cpio512.hex(),
        );
        let sums = Sums::parse(&text).expect("parses");
        assert_eq!(
            sums.lookup("flatcar_production_pxe.vmlinuz"),
            vec![&vmlinuz512]
        );
        assert_eq!(
            check_file(
                &sums,
                "flatcar_production_pxe_image.cpio.gz",
                &cpio256,
                &cpio512
            )
            .expect("ok"),
            "SHA-512"
        );

        let wrong = format!("# SHA512 HASH\n{}  x\n", cpio256.hex());
        let err = Sums::parse(&wrong).expect_err("64 digits under SHA512");
        assert!(err.to_string().starts_with("sums file line 2: "), "{err}");
    }

    #[test]
    fn conflicting_duplicates_are_refused_and_equal_ones_kept() {
        let (a, _) = digests_of(b"a");
        let (b, _) = digests_of(b"b");
        let same = format!("{}  vmlinuz\n{}  ./vmlinuz\n", a.hex(), a.hex());
        assert_eq!(
            Sums::parse(&same).expect("same").lookup("vmlinuz"),
            vec![&a]
        );

        let conflict = format!("{}  vmlinuz\n# comment\n{}  ./vmlinuz\n", a.hex(), b.hex());
        let err = Sums::parse(&conflict).expect_err("conflict");
        assert!(
            matches!(
                err,
                VerifyError::SumsConflict {
                    line: 3,
                    first: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("different SHA-256 digest"),
            "{err}"
        );
    }

    #[test]
    fn malformed_lines_name_the_line_and_why() {
        let (a, _) = digests_of(b"a");
        let cases = [
            format!("{}  ok\n{}  odd\n", a.hex(), &a.hex()[1..]),
            format!("{}  ok\n{}x  nothex\n", a.hex(), &a.hex()[1..]),
            format!("{}  ok\nhello\n", a.hex()),
            format!("{}  ok\n{}  \n", a.hex(), a.hex()),
            format!("{}  ok\nSHA384 (x) = {}\n", a.hex(), "ab".repeat(48)),
            format!("{}  ok\n-----BEGIN PGP SIGNED MESSAGE-----\n", a.hex()),
        ];
        for text in cases {
            let err = Sums::parse(&text).expect_err("malformed");
            assert!(
                err.to_string().starts_with("sums file line 2: "),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn no_usable_line_and_oversized_files_are_refused() {
        for text in [
            "",
            "\n\n",
            "# only comments\n",
            "d41d8cd98f00b204e9800998ecf8427e  md5-only\n",
        ] {
            assert!(
                matches!(Sums::parse(text), Err(VerifyError::SumsEmpty)),
                "{text:?}"
            );
        }
        let line = format!("{}  f\n", "ab".repeat(32));
        let big = line.repeat(MAX_SUMS / line.len() + 1);
        assert!(matches!(
            Sums::parse(&big),
            Err(VerifyError::TooLarge { .. })
        ));
    }

    #[test]
    fn check_file_reports_mismatches_and_absences() {
        let (listed, _) = digests_of(b"kernel");
        let (got256, got512) = digests_of(b"evil kernel");
        let sums = Sums::parse(&format!("{}  kernel\n", listed.hex())).expect("parses");
        let err = check_file(&sums, "kernel", &got256, &got512).expect_err("mismatch");
        assert_eq!(
            err.to_string(),
            format!(
                "kernel: SHA-256 mismatch: expected {}, got {}",
                listed.hex(),
                got256.hex()
            )
        );
        let err = check_file(&sums, "initrd.img", &got256, &got512).expect_err("absent");
        assert_eq!(err.to_string(), "the sums file does not list initrd.img");
    }

    #[test]
    fn same_last_component_with_different_digests_is_ambiguous() {
        let (amd, amd512) = digests_of(b"amd64");
        let (arm, _) = digests_of(b"arm64");
        let text = format!(
            "{}  amd64/vmlinuz\n{}  arm64/vmlinuz\n",
            amd.hex(),
            arm.hex()
        );
        let sums = Sums::parse(&text).expect("parses");
        let err = check_file(&sums, "vmlinuz", &amd, &amd512).expect_err("ambiguous");
        assert!(matches!(err, VerifyError::Ambiguous { .. }), "{err}");
        assert_eq!(
            check_file(&sums, "amd64/vmlinuz", &amd, &amd512).expect("by path"),
            "SHA-256"
        );
    }

    #[test]
    fn dates_for_messages() {
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(T0 + 2 * DAY), "2020-09-15 12:26:40 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
