//! A simulated NSM for development and tests: real cryptography, test trust anchor.
//!
//! It generates a 4-level P-384 chain (root → intermediate → intermediate → leaf, all
//! ecdsa-with-SHA384, CA certificates with critical basicConstraints, pathLen and
//! keyCertSign like AWS's) and issues documents byte-compatible with the NSM's: an untagged
//! COSE_Sign1 with protected header `{1: -35}`, an empty unprotected map, the payload map
//! with the nine keys in the NSM's order (nulls kept), 16 PCRs of 48 bytes, and a raw 96-byte
//! ES384 signature. Each document gets a fresh, short-lived leaf (3 hours, as AWS's), so a
//! long-running simulator never hands out expired evidence.
//!
//! The root is fresh per simulator ([`SimulatedNsm::new`]) or made from a given P-384 key
//! ([`SimulatedNsm::with_root_key`]): then the root certificate is a function of the key alone
//! (fixed name, validity and serial, and a deterministic RFC 6979 signature), so a development
//! agent and the local KMS given the same key file trust the same root without passing a
//! certificate around ([`root_pem_for_key`] computes it).

use std::collections::BTreeMap;
use std::time::Duration;

use ciborium::Value;
use coset::{CborSerializable, CoseSign1, HeaderBuilder, ProtectedHeader, iana};
use p384::ecdsa::{Signature, SigningKey, signature::Signer as _};
use p384::elliptic_curve::sec1::ToEncodedPoint as _;
use p384::pkcs8::DecodePrivateKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P384_SHA384, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

use super::{Nsm, NsmError, check_inputs};
use crate::attestation::{now_unix_millis, sig_structure};

/// PCRs a Nitro NSM reports.
const PCR_COUNT: u8 = 16;
/// PCR length for the SHA384 digest.
const PCR_BYTES: usize = 48;
/// Lifetime of a leaf certificate, as AWS's.
const LEAF_LIFETIME: Duration = Duration::from_secs(3 * 60 * 60);
/// Lifetime of the root and intermediates.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Back-dating of notBefore, so a verifier with a slightly late clock accepts.
const BACKDATE: Duration = Duration::from_secs(60);
/// Validity of a root made from a given key (fixed, so the certificate depends on the key
/// only): 2025-01-01 to 2055-01-01.
const GIVEN_ROOT_NOT_BEFORE: i64 = 1_735_689_600;
const GIVEN_ROOT_NOT_AFTER: i64 = 2_682_374_400;
const ROOT_COMMON_NAME: &str = "nautilus.simulated-nitro-root";

/// A simulated NSM; see the module documentation.
#[derive(Debug)]
pub struct SimulatedNsm {
    module_id: String,
    pcrs: BTreeMap<u8, Vec<u8>>,
    root_pem: String,
    /// Root first, as in `cabundle`.
    cabundle: Vec<Vec<u8>>,
    issuer: Issuer<'static, KeyPair>,
}

fn cert_err(e: impl std::fmt::Display) -> NsmError {
    NsmError::Certificate {
        reason: e.to_string(),
    }
}

fn encode_err(e: impl std::fmt::Display) -> NsmError {
    NsmError::Encode {
        reason: e.to_string(),
    }
}

fn ca_params(common_name: &str, path_len: Option<u8>, now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_LIFETIME;
    params
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CountryName, "US");
    dn.push(DnType::OrganizationName, "Nautilus simulated NSM (not AWS)");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn now_datetime() -> Result<(u64, OffsetDateTime), NsmError> {
    let ms = now_unix_millis().map_err(encode_err)?;
    let secs = i64::try_from(ms / 1000).map_err(encode_err)?;
    let at = OffsetDateTime::from_unix_timestamp(secs).map_err(encode_err)?;
    Ok((ms, at))
}

impl SimulatedNsm {
    /// Generate a fresh test CA chain. PCRs start as all zeros, like a debug-mode enclave;
    /// set them with [`SimulatedNsm::with_pcr`].
    pub fn new() -> Result<Self, NsmError> {
        let (_, now) = now_datetime()?;
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(cert_err)?;
        let root_params = ca_params(ROOT_COMMON_NAME, None, now);
        let root = root_params.self_signed(&root_key).map_err(cert_err)?;
        Self::with_root(
            root.pem(),
            root.der().to_vec(),
            Issuer::new(root_params, root_key),
        )
    }

    /// A simulator whose root is made from `key_pem` (a PKCS#8 PEM P-384 key, as
    /// [`generate_root_key`] writes): its root certificate is [`root_pem_for_key`] of the same
    /// key, byte for byte. Intermediates and leaves are fresh.
    pub fn with_root_key(key_pem: &str) -> Result<Self, NsmError> {
        let (root_params, root_pem, root_der) = given_root(key_pem)?;
        let root_key = KeyPair::from_pem(key_pem).map_err(cert_err)?;
        Self::with_root(root_pem, root_der, Issuer::new(root_params, root_key))
    }

    fn with_root(
        root_pem: String,
        root_der: Vec<u8>,
        root_issuer: Issuer<'static, KeyPair>,
    ) -> Result<Self, NsmError> {
        let (_, now) = now_datetime()?;
        let int1_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(cert_err)?;
        let int1_params = ca_params("nautilus.simulated-nitro-intermediate-1", Some(1), now);
        let int1 = int1_params
            .signed_by(&int1_key, &root_issuer)
            .map_err(cert_err)?;
        let int1_issuer = Issuer::new(int1_params, int1_key);

        let int2_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(cert_err)?;
        let int2_params = ca_params("nautilus.simulated-nitro-intermediate-2", Some(0), now);
        let int2 = int2_params
            .signed_by(&int2_key, &int1_issuer)
            .map_err(cert_err)?;

        let pcrs = (0..PCR_COUNT).map(|i| (i, vec![0u8; PCR_BYTES])).collect();
        Ok(Self {
            module_id: "i-00000000000000000-enc-simulated".to_owned(),
            pcrs,
            root_pem,
            cabundle: vec![root_der, int1.der().to_vec(), int2.der().to_vec()],
            issuer: Issuer::new(int2_params, int2_key),
        })
    }

    /// Set PCR `index` (below 32) to a 48-byte value.
    pub fn with_pcr(mut self, index: u8, value: &[u8]) -> Result<Self, NsmError> {
        if index >= 32 {
            return Err(NsmError::PcrIndex {
                index: u16::from(index),
            });
        }
        if value.len() != PCR_BYTES {
            return Err(NsmError::InputTooLarge {
                field: "pcr value (must be exactly 48 bytes)",
                len: value.len(),
                max: PCR_BYTES,
            });
        }
        self.pcrs.insert(index, value.to_vec());
        Ok(self)
    }

    /// The root certificate (PEM) that signs this simulator's chain: the trust anchor to
    /// verify its documents with.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The root certificate (DER).
    pub fn root_der(&self) -> &[u8] {
        self.cabundle.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// The enclave identifier written as `module_id`.
    pub fn module_id(&self) -> &str {
        &self.module_id
    }

    fn issue_leaf(&self, now: OffsetDateTime) -> Result<(Vec<u8>, SigningKey), NsmError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(cert_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&self.module_id);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_err)?;
        let signing_key = SigningKey::from_pkcs8_der(&key.serialize_der()).map_err(cert_err)?;
        Ok((cert.der().to_vec(), signing_key))
    }
}

/// A fresh P-384 root key for [`SimulatedNsm::with_root_key`], as PKCS#8 PEM.
pub fn generate_root_key() -> Result<String, NsmError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(cert_err)?;
    Ok(key.serialize_pem())
}

/// The root certificate (PEM) of a simulator made with [`SimulatedNsm::with_root_key`] from
/// `key_pem`: what a verifier of its documents (the local KMS) is given as trust anchor.
pub fn root_pem_for_key(key_pem: &str) -> Result<String, NsmError> {
    given_root(key_pem).map(|(_, pem, _)| pem)
}

/// Signs with RFC 6979 (deterministic) ECDSA, so the self-signed root made from a given key
/// is the same certificate on every call.
struct DeterministicP384 {
    key: SigningKey,
    public_point: Vec<u8>,
}

impl PublicKeyData for DeterministicP384 {
    fn der_bytes(&self) -> &[u8] {
        &self.public_point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P384_SHA384
    }
}

impl rcgen::SigningKey for DeterministicP384 {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let signature: Signature = self
            .key
            .try_sign(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        Ok(signature.to_der().as_bytes().to_vec())
    }
}

/// The fixed root parameters and the deterministic root certificate (PEM, DER) for a key.
fn given_root(key_pem: &str) -> Result<(CertificateParams, String, Vec<u8>), NsmError> {
    let key = SigningKey::from_pkcs8_pem(key_pem.trim()).map_err(cert_err)?;
    let public_point = key
        .verifying_key()
        .as_affine()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let mut params = CertificateParams::default();
    params.distinguished_name = name(ROOT_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params.not_before =
        OffsetDateTime::from_unix_timestamp(GIVEN_ROOT_NOT_BEFORE).map_err(cert_err)?;
    params.not_after =
        OffsetDateTime::from_unix_timestamp(GIVEN_ROOT_NOT_AFTER).map_err(cert_err)?;
    // A positive 16-byte serial from the key.
    let mut serial = Sha256::digest(&public_point)[..16].to_vec();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let signer = DeterministicP384 { key, public_point };
    let root = params.self_signed(&signer).map_err(cert_err)?;
    Ok((params, root.pem(), root.der().to_vec()))
}

fn bytes_or_null(value: Option<&[u8]>) -> Value {
    value.map_or(Value::Null, |b| Value::Bytes(b.to_vec()))
}

impl Nsm for SimulatedNsm {
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        check_inputs(user_data, nonce, public_key)?;
        let (now_ms, now) = now_datetime()?;
        let (certificate, signing_key) = self.issue_leaf(now)?;

        let text = |s: &str| Value::Text(s.to_owned());
        let payload = Value::Map(vec![
            (text("module_id"), text(&self.module_id)),
            (text("digest"), text("SHA384")),
            (text("timestamp"), Value::Integer(now_ms.into())),
            (
                text("pcrs"),
                Value::Map(
                    self.pcrs
                        .iter()
                        .map(|(i, v)| (Value::Integer((*i).into()), Value::Bytes(v.clone())))
                        .collect(),
                ),
            ),
            (text("certificate"), Value::Bytes(certificate)),
            (
                text("cabundle"),
                Value::Array(self.cabundle.iter().cloned().map(Value::Bytes).collect()),
            ),
            (text("public_key"), bytes_or_null(public_key)),
            (text("user_data"), bytes_or_null(user_data)),
            (text("nonce"), bytes_or_null(nonce)),
        ]);
        let mut payload_bytes = Vec::new();
        ciborium::into_writer(&payload, &mut payload_bytes).map_err(encode_err)?;

        let header = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES384)
            .build();
        let protected_bytes = header.clone().to_vec().map_err(encode_err)?;
        let to_be_signed = sig_structure(&protected_bytes, &payload_bytes).map_err(encode_err)?;
        let signature: Signature = signing_key.try_sign(&to_be_signed).map_err(encode_err)?;

        let sign1 = CoseSign1 {
            protected: ProtectedHeader {
                original_data: Some(protected_bytes),
                header,
            },
            unprotected: coset::Header::default(),
            payload: Some(payload_bytes),
            signature: signature.to_bytes().to_vec(),
        };
        // Untagged, as the real NSM emits it.
        sign1.to_vec().map_err(encode_err)
    }

    fn describe_pcr(&self, index: u16) -> Result<Vec<u8>, NsmError> {
        u8::try_from(index)
            .ok()
            .and_then(|i| self.pcrs.get(&i))
            .cloned()
            .ok_or(NsmError::PcrIndex { index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attestation::{TrustAnchor, Verifier, VerifyAt, VerifyError};
    use crate::policy::{Binding, Policy, PolicyError};

    fn sim() -> SimulatedNsm {
        SimulatedNsm::new()
            .and_then(|s| s.with_pcr(0, &[0xa0; 48]))
            .and_then(|s| s.with_pcr(1, &[0xa1; 48]))
            .and_then(|s| s.with_pcr(2, &[0xa2; 48]))
            .expect("simulator")
    }

    fn test_root(nsm: &SimulatedNsm) -> Verifier {
        Verifier::new(TrustAnchor::from_pem(nsm.root_pem()).expect("root pem"))
    }

    #[test]
    fn simulated_documents_round_trip_with_the_test_root() {
        let nsm = sim();
        let binding = Binding::v1([1; 32], [2; 32]);
        let bytes = nsm
            .attest(Some(&binding), Some(b"challenge"), Some(b"key"))
            .expect("attest");
        assert_eq!(
            bytes[..6],
            [0x84, 0x44, 0xa1, 0x01, 0x38, 0x22],
            "untagged, {{1: -35}}"
        );
        for at in [VerifyAt::Now, VerifyAt::DocumentTimestamp] {
            let doc = test_root(&nsm).verify(&bytes, at).expect("verifies");
            assert_eq!(doc.user_data.as_deref(), Some(binding.as_slice()));
            assert_eq!(doc.nonce.as_deref(), Some(&b"challenge"[..]));
            assert_eq!(doc.public_key.as_deref(), Some(&b"key"[..]));
            assert_eq!(doc.module_id, nsm.module_id());
            assert_eq!(doc.digest, "SHA384");
            assert_eq!(doc.pcrs.len(), 16);
            assert_eq!(doc.pcr(1), Some(&[0xa1; 48][..]));
            assert_eq!(doc.cabundle.len(), 3, "root and two intermediates");
            assert_eq!(doc.cabundle[0], nsm.root_der());
            assert!(!doc.debug_mode());
        }
    }

    #[test]
    fn null_and_empty_are_preserved() {
        let nsm = sim();
        let bytes = nsm.attest(Some(&[]), None, None).expect("attest");
        let doc = test_root(&nsm)
            .verify(&bytes, VerifyAt::Now)
            .expect("verifies");
        assert_eq!(doc.user_data, Some(vec![]));
        assert_eq!(doc.nonce, None);
        assert_eq!(doc.public_key, None);
    }

    #[test]
    fn simulated_documents_are_refused_with_the_aws_root() {
        let bytes = sim().attest(None, None, None).expect("attest");
        let err = Verifier::default()
            .verify(&bytes, VerifyAt::Now)
            .expect_err("aws root");
        assert!(matches!(err, VerifyError::UntrustedRoot { .. }), "{err}");
        // Nor with another simulator's root.
        let err = test_root(&sim())
            .verify(&bytes, VerifyAt::Now)
            .expect_err("other root");
        assert!(matches!(err, VerifyError::UntrustedRoot { .. }), "{err}");
    }

    #[test]
    fn simulated_leaf_is_short_lived() {
        let nsm = sim();
        let bytes = nsm.attest(None, None, None).expect("attest");
        let doc = test_root(&nsm).verify(&bytes, VerifyAt::Now).expect("now");
        let later = doc.timestamp_ms + 4 * 3600 * 1000;
        let err = test_root(&nsm)
            .verify(&bytes, VerifyAt::UnixMillis(later))
            .expect_err("leaf expired after 3 hours");
        assert!(
            matches!(err, VerifyError::CertificateExpired { ref which, .. } if which == "certificate"),
            "{err}"
        );
    }

    #[test]
    fn policy_accepts_the_promised_evidence_end_to_end() {
        let nsm = sim();
        let binding = Binding::v1([3; 32], [4; 32]);
        let bytes = nsm
            .attest(Some(&binding), Some(b"n-1"), None)
            .expect("attest");
        let doc = test_root(&nsm)
            .verify(&bytes, VerifyAt::Now)
            .expect("verify");
        let policy = Policy {
            challenge: Some(b"n-1".to_vec()),
            binding: Some(binding),
            max_age_ms: Some(60_000),
            ..Policy::default()
        }
        .with_pcr(0, [0xa0; 48])
        .with_pcr(1, [0xa1; 48])
        .with_pcr(2, [0xa2; 48]);
        policy.check(&doc, doc.timestamp_ms + 1).expect("policy");
        // The same document replayed against another challenge is refused.
        let replay = Policy {
            challenge: Some(b"n-2".to_vec()),
            ..policy
        };
        assert!(matches!(
            replay.check(&doc, doc.timestamp_ms),
            Err(PolicyError::NonceMismatch { .. })
        ));
    }

    #[test]
    fn a_given_root_key_makes_the_same_root_everywhere() {
        let key = generate_root_key().expect("key");
        let a = SimulatedNsm::with_root_key(&key).expect("a");
        let b = SimulatedNsm::with_root_key(&key).expect("b");
        let pem = root_pem_for_key(&key).expect("root pem");
        assert_eq!(a.root_pem(), pem);
        assert_eq!(b.root_pem(), pem);
        // One verifier given that root accepts both simulators' documents...
        let verifier = Verifier::new(TrustAnchor::from_pem(&pem).expect("anchor"));
        for nsm in [&a, &b] {
            let bytes = nsm.attest(None, None, Some(b"k")).expect("attest");
            verifier.verify(&bytes, VerifyAt::Now).expect("verifies");
        }
        // ...and not another key's.
        let other = SimulatedNsm::with_root_key(&generate_root_key().expect("key")).expect("c");
        let bytes = other.attest(None, None, None).expect("attest");
        assert!(matches!(
            verifier.verify(&bytes, VerifyAt::Now),
            Err(VerifyError::UntrustedRoot { .. })
        ));
        assert!(SimulatedNsm::with_root_key("not a key").is_err());
    }

    #[test]
    fn pcr_and_input_limits() {
        assert!(sim().with_pcr(32, &[0; 48]).is_err());
        assert!(sim().with_pcr(3, &[0; 32]).is_err());
        assert!(sim().attest(None, Some(&[0; 513]), None).is_err());
        assert_eq!(sim().describe_pcr(2).expect("pcr2"), vec![0xa2; 48]);
        assert!(sim().describe_pcr(16).is_err());
    }
}
