//! TLS 1.2 finite-field Diffie-Hellman (RFC 7919 `ffdhe2048`) for boot firmware.
//!
//! EDK2's TLS (OVMF, and the UEFI of many servers built on it) offers only TLS 1.2 with
//! `TLS_DHE_RSA_*` and static-RSA suites and no elliptic curves, while rustls's providers
//! ship ECDHE alone: a firmware's HTTPS boot would fail with "no key exchange groups in
//! common". This adds the two DHE-RSA AES-GCM suites (the same AEAD and PRF as their ECDHE
//! twins) and the ffdhe2048 group to the HTTPS server's provider. Static-RSA key exchange is
//! left out on purpose (no forward secrecy; rustls does not implement it).
//!
//! The exponentiation is crypto-bigint's constant-time fixed-window Montgomery
//! exponentiation, with a 256-bit private exponent (RFC 7919 section 5.2 asks at least 225
//! bits for ffdhe2048), wiped when the exchange ends.
//!
//! The server's config sets `ignore_client_order`, so its own order decides: TLS 1.3, then
//! ECDHE, then DHE only for a client that offers nothing else.

use std::sync::LazyLock;

use crypto_bigint::{
    modular::runtime_mod::{DynResidue, DynResidueParams},
    zeroize::{Zeroize as _, Zeroizing},
    Encoding as _, U2048, U256,
};
use rustls::{
    crypto::{ActiveKeyExchange, CipherSuiteCommon, SharedSecret, SupportedKxGroup},
    ffdhe_groups::{FfdheGroup, FFDHE2048},
    CipherSuite, Error, NamedGroup, PeerMisbehaved, ProtocolVersion, SupportedCipherSuite,
    Tls12CipherSuite,
};

/// Bytes of an ffdhe2048 element (public values are sent left-padded to this length).
const LEN: usize = 256;
/// Bits of the private exponent.
const EXPONENT_BITS: usize = 256;

/// `provider` with the DHE-RSA suites after its own and ffdhe2048 after its groups (with
/// `ignore_client_order`, clients that offer ECDHE or TLS 1.3 get those).
pub fn with_firmware_dhe(
    mut provider: rustls::crypto::CryptoProvider,
) -> rustls::crypto::CryptoProvider {
    provider
        .cipher_suites
        .extend([&*DHE_RSA_AES128_GCM, &*DHE_RSA_AES256_GCM].map(SupportedCipherSuite::Tls12));
    provider.kx_groups.push(&Ffdhe2048);
    provider
}

/// The DHE twin of an ECDHE-RSA suite: same hash, AEAD, PRF and signature schemes.
fn dhe_twin(ecdhe: SupportedCipherSuite, suite: CipherSuite) -> Tls12CipherSuite {
    let SupportedCipherSuite::Tls12(base) = ecdhe else {
        // The ring provider's `TLS_ECDHE_RSA_*` constants are TLS 1.2 suites by definition.
        unreachable!("an ECDHE-RSA suite is a TLS 1.2 suite")
    };
    Tls12CipherSuite {
        common: CipherSuiteCommon {
            suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        prf_provider: base.prf_provider,
        kx: rustls::crypto::KeyExchangeAlgorithm::DHE,
        sign: base.sign,
        aead_alg: base.aead_alg,
    }
}

static DHE_RSA_AES128_GCM: LazyLock<Tls12CipherSuite> = LazyLock::new(|| {
    dhe_twin(
        rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_DHE_RSA_WITH_AES_128_GCM_SHA256,
    )
});

static DHE_RSA_AES256_GCM: LazyLock<Tls12CipherSuite> = LazyLock::new(|| {
    dhe_twin(
        rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::TLS_DHE_RSA_WITH_AES_256_GCM_SHA384,
    )
});

/// The group's modulus and its Montgomery parameters.
static PARAMS: LazyLock<(U2048, DynResidueParams<{ U2048::LIMBS }>)> = LazyLock::new(|| {
    let p = U2048::from_be_slice(FFDHE2048.p);
    (p, DynResidueParams::new(&p))
});

/// RFC 7919 ffdhe2048, TLS 1.2 only (TLS 1.3 clients all speak ECDHE).
#[derive(Debug)]
struct Ffdhe2048;

impl SupportedKxGroup for Ffdhe2048 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let mut bytes = Zeroizing::new([0u8; EXPONENT_BITS / 8]);
        getrandom::getrandom(&mut bytes[..]).map_err(|_| rustls::crypto::GetRandomFailed)?;
        let secret = U256::from_be_slice(&bytes[..]);
        let public = power(&U2048::from_u8(2), &secret);
        Ok(Box::new(Exchange {
            secret,
            public: public.to_be_bytes(),
        }))
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        Some(FFDHE2048)
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::FFDHE2048
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_2
    }
}

/// One handshake's ephemeral key.
struct Exchange {
    secret: U256,
    public: [u8; LEN],
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl ActiveKeyExchange for Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        let y = peer_value(peer)?;
        let mut shared = Zeroizing::new(power(&y, &self.secret));
        if *shared == U2048::ONE {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let bytes = Zeroizing::new(shared.to_be_bytes());
        shared.zeroize();
        Ok(SharedSecret::from(&bytes[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        Some(FFDHE2048)
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::FFDHE2048
    }
}

/// `base ^ exponent mod p`, in constant time for the exponent.
fn power(base: &U2048, exponent: &U256) -> U2048 {
    DynResidue::new(base, PARAMS.1)
        .pow_bounded_exp(exponent, EXPONENT_BITS)
        .retrieve()
}

/// The client's public value, checked as RFC 7919 section 5.1 asks: `1 < y < p - 1` (which
/// also keeps it out of the subgroups of order 1 and 2). Leading zeros are allowed, up to
/// the modulus's length.
fn peer_value(peer: &[u8]) -> Result<U2048, Error> {
    let trimmed = &peer[peer.iter().take_while(|b| **b == 0).count()..];
    if trimmed.len() > LEN {
        return Err(PeerMisbehaved::InvalidKeyShare.into());
    }
    let mut padded = [0u8; LEN];
    padded[LEN - trimmed.len()..].copy_from_slice(trimmed);
    let y = U2048::from_be_slice(&padded);
    let p_minus_1 = PARAMS.0.wrapping_sub(&U2048::ONE);
    if y <= U2048::ONE || y >= p_minus_1 {
        return Err(PeerMisbehaved::InvalidKeyShare.into());
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(x: &U2048) -> Vec<u8> {
        x.to_be_bytes().to_vec()
    }

    #[test]
    fn both_sides_agree_and_public_values_are_full_length() {
        let a = Ffdhe2048.start().expect("start");
        let b = Ffdhe2048.start().expect("start");
        assert_eq!(a.pub_key().len(), LEN);
        assert_ne!(a.pub_key(), b.pub_key());
        let (pa, pb) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        let sa = a.complete(&pb).expect("a");
        let sb = b.complete(&pa).expect("b");
        assert_eq!(sa.secret_bytes(), sb.secret_bytes());
    }

    #[test]
    fn small_known_powers_are_exact() {
        // 2^10 = 1024 and 2^0 = 1 (exponents far below p, so no reduction happens).
        assert_eq!(
            power(&U2048::from_u8(2), &U256::from_u16(10)),
            U2048::from_u16(1024)
        );
        assert_eq!(power(&U2048::from_u8(2), &U256::ZERO), U2048::ONE);
        // (p - 1)^2 = 1 mod p.
        let p_minus_1 = PARAMS.0.wrapping_sub(&U2048::ONE);
        assert_eq!(power(&p_minus_1, &U256::from_u8(2)), U2048::ONE);
    }

    #[test]
    fn degenerate_and_oversized_peer_values_are_refused() {
        let p = PARAMS.0;
        let p_minus_1 = p.wrapping_sub(&U2048::ONE);
        for bad in [
            vec![],
            vec![0],
            vec![1],
            vec![0, 0, 1],
            be(&p_minus_1),
            be(&p),
            be(&U2048::MAX),
            vec![1; LEN + 1],
        ] {
            let kx = Ffdhe2048.start().expect("start");
            assert!(kx.complete(&bad).is_err(), "{bad:?} accepted");
        }
        // 2 and p - 2 are in range; a value sent without its leading zeros is read the same.
        assert!(peer_value(&[2]).is_ok());
        assert!(peer_value(&be(&p.wrapping_sub(&U2048::from_u8(2)))).is_ok());
        assert_eq!(peer_value(&[0, 0, 7]).ok(), Some(U2048::from_u8(7)));
    }

    #[test]
    fn the_provider_keeps_its_own_suites_and_groups_first() {
        let base = rustls::crypto::ring::default_provider();
        let (suites, groups) = (base.cipher_suites.len(), base.kx_groups.len());
        let p = with_firmware_dhe(base);
        assert_eq!(p.cipher_suites.len(), suites + 2);
        assert_eq!(
            p.cipher_suites[suites].suite(),
            CipherSuite::TLS_DHE_RSA_WITH_AES_128_GCM_SHA256
        );
        assert_eq!(p.kx_groups.len(), groups + 1);
        assert_eq!(p.kx_groups[groups].name(), NamedGroup::FFDHE2048);
    }
}
