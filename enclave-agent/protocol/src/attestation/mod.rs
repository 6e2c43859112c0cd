//! Verification of AWS Nitro Enclaves attestation documents.
//!
//! A document is a COSE_Sign1 structure (RFC 9052; untagged as the NSM emits it, or with tag
//! 18) whose payload is a CBOR map (`module_id`, `digest`, `timestamp`, `pcrs`,
//! `certificate`, `cabundle`, `public_key`, `user_data`, `nonce`). [`Verifier::verify`]:
//!
//! 1. refuses inputs above [`MAX_DOCUMENT_BYTES`];
//! 2. parses the COSE_Sign1 and requires the protected header algorithm ES384 (-35);
//! 3. decodes the payload into an [`AttestationDocument`] with the AWS size limits;
//! 4. checks the chain `cabundle[0]` → … → `certificate`: `cabundle[0]` must be byte-for-byte
//!    the trust anchor (by default the AWS Nitro Enclaves root G1), every certificate valid
//!    at the chosen [`VerifyAt`] time, every signature ecdsa-with-SHA384 over P-384, CA
//!    constraints and key usages as RFC 5280 requires;
//! 5. verifies the ES384 signature with the leaf key over the Sig_structure built from the
//!    protected header and payload bytes exactly as received (re-encoding would break
//!    documents whose payload map uses indefinite length).
//!
//! Every failure is a [`VerifyError`]; nothing here panics on untrusted input.
//!
//! ECDSA runs on `aws-lc-rs`. Certificate signatures that verified are remembered in the verifier's
//! [`ChainCache`], keyed on the exact issuer key and certificate bytes, because the chain
//! repeats across documents and refreshes; clones of a [`Verifier`] share the cache. Validity
//! times and every other chain check are made on each call, and the COSE signature is always
//! verified, so a cached chain saves signature checks and nothing else.

mod cache;
mod chain;
mod document;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use coset::{CborSerializable, CoseSign1, TaggedCborSerializable, iana};
use sha2::{Digest, Sha256};

pub use cache::{ChainCache, DEFAULT_CHAIN_CACHE_CAPACITY};
pub use document::AttestationDocument;

/// The AWS Nitro Enclaves root certificate (G1), the default trust anchor.
///
/// Published by AWS at
/// <https://aws-nitro-enclaves.amazonaws.com/AWS_NitroEnclaves_Root-G1.zip>; SHA-256
/// fingerprint of its DER: [`AWS_NITRO_ROOT_G1_SHA256`].
pub const AWS_NITRO_ROOT_G1_PEM: &str = "-----BEGIN CERTIFICATE-----
MIICETCCAZagAwIBAgIRAPkxdWgbkK/hHUbMtOTn+FYwCgYIKoZIzj0EAwMwSTEL
MAkGA1UEBhMCVVMxDzANBgNVBAoMBkFtYXpvbjEMMAoGA1UECwwDQVdTMRswGQYD
VQQDDBJhd3Mubml0cm8tZW5jbGF2ZXMwHhcNMTkxMDI4MTMyODA1WhcNNDkxMDI4
MTQyODA1WjBJMQswCQYDVQQGEwJVUzEPMA0GA1UECgwGQW1hem9uMQwwCgYDVQQL
DANBV1MxGzAZBgNVBAMMEmF3cy5uaXRyby1lbmNsYXZlczB2MBAGByqGSM49AgEG
BSuBBAAiA2IABPwCVOumCMHzaHDimtqQvkY4MpJzbolL//Zy2YlES1BR5TSksfbb
48C8WBoyt7F2Bw7eEtaaP+ohG2bnUs990d0JX28TcPQXCEPZ3BABIeTPYwEoCWZE
h8l5YoQwTcU/9KNCMEAwDwYDVR0TAQH/BAUwAwEB/zAdBgNVHQ4EFgQUkCW1DdkF
R+eWw5b6cp3PmanfS5YwDgYDVR0PAQH/BAQDAgGGMAoGCCqGSM49BAMDA2kAMGYC
MQCjfy+Rocm9Xue4YnwWmNJVA44fA0P5W2OpYow9OYCVRaEevL8uO1XYru5xtMPW
rfMCMQCi85sWBbJwKKXdS6BptQFuZbT73o/gBh1qUxl/nNr12UO8Yfwr6wPLb+6N
IwLz3/Y=
-----END CERTIFICATE-----
";

/// Upper-case hex SHA-256 of the DER of [`AWS_NITRO_ROOT_G1_PEM`].
pub const AWS_NITRO_ROOT_G1_SHA256: &str =
    "641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B";

/// Largest accepted document. Real ones are about 4.5 KiB.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;

/// Largest accepted `cabundle` (AWS chains have 4 entries).
pub const MAX_CABUNDLE_LEN: usize = 8;

/// Length of a raw ES384 signature (`r || s`, 48 bytes each).
const ES384_SIGNATURE_BYTES: usize = 96;

/// Why a document was rejected. Messages are lower-case and say what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The input exceeds [`MAX_DOCUMENT_BYTES`].
    #[error("document is {len} bytes, larger than the {max}-byte limit")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The input is not a COSE_Sign1 structure.
    #[error("document is not a cose_sign1 structure: {reason}")]
    Cose {
        /// What the COSE decoder reported.
        reason: String,
    },
    /// The protected header names another algorithm than ES384.
    #[error("unsupported cose algorithm {found}: nitro documents are signed with es384 (-35)")]
    Algorithm {
        /// The algorithm found, or `none`.
        found: String,
    },
    /// The protected header carries critical parameters this verifier does not understand.
    #[error("cose protected header has critical parameters, which nitro documents never use")]
    CriticalHeaders,
    /// The COSE_Sign1 has a detached (nil) payload.
    #[error("cose_sign1 has no payload")]
    MissingPayload,
    /// The payload is not valid CBOR.
    #[error("attestation payload is not valid cbor: {reason}")]
    PayloadCbor {
        /// What the CBOR decoder reported.
        reason: String,
    },
    /// A payload field is missing, of the wrong type, or out of the AWS limits.
    #[error("attestation field `{field}` {problem}")]
    Field {
        /// The field name.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `cabundle` has more entries than [`MAX_CABUNDLE_LEN`].
    #[error("cabundle has {len} certificates, more than the limit of {max}")]
    CaBundleTooLong {
        /// Entries found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `cabundle[0]` is not the trust anchor.
    #[error(
        "untrusted root: cabundle[0] (sha-256 {found}) is not the trust anchor (sha-256 {expected}); \
         simulated documents need their own root passed explicitly"
    )]
    UntrustedRoot {
        /// Fingerprint of `cabundle[0]`.
        found: String,
        /// Fingerprint of the anchor.
        expected: String,
    },
    /// A certificate is not valid DER X.509.
    #[error("{which} is not a valid der x.509 certificate: {reason}")]
    CertificateEncoding {
        /// `cabundle[i]` or `certificate`.
        which: String,
        /// What the decoder reported.
        reason: String,
    },
    /// The verification time is after a certificate's notAfter.
    #[error(
        "{which} expired: valid until unix {not_after_s}s, verification time is unix {at_s}s \
         (verify at the document's timestamp to check an old document)"
    )]
    CertificateExpired {
        /// Which certificate.
        which: String,
        /// notAfter, seconds since the epoch.
        not_after_s: u64,
        /// Verification time, seconds since the epoch.
        at_s: u64,
    },
    /// The verification time is before a certificate's notBefore.
    #[error(
        "{which} is not yet valid: valid from unix {not_before_s}s, verification time is unix {at_s}s"
    )]
    CertificateNotYetValid {
        /// Which certificate.
        which: String,
        /// notBefore, seconds since the epoch.
        not_before_s: u64,
        /// Verification time, seconds since the epoch.
        at_s: u64,
    },
    /// A certificate uses another signature algorithm than ecdsa-with-SHA384.
    #[error("{which} is signed with {oid}, only ecdsa-with-sha384 is accepted")]
    CertificateAlgorithm {
        /// Which certificate.
        which: String,
        /// The algorithm OID found.
        oid: String,
    },
    /// A certificate's public key is not a P-384 EC key.
    #[error("{which} public key is not an ec p-384 key")]
    CertificateKey {
        /// Which certificate.
        which: String,
    },
    /// An issuer's signature over the child's TBS does not verify.
    #[error("signature on {which} does not verify with its issuer's key")]
    CertificateSignature {
        /// Which certificate.
        which: String,
    },
    /// The child's issuer name differs from the parent's subject.
    #[error("{which} issuer name does not match the subject of the certificate before it")]
    IssuerMismatch {
        /// Which certificate.
        which: String,
    },
    /// A CA certificate lacks CA=true, keyCertSign, or its path length is exceeded.
    #[error("{which} may not issue certificates: {problem}")]
    NotCa {
        /// Which certificate.
        which: String,
        /// Which constraint fails.
        problem: String,
    },
    /// The leaf certificate is not allowed to sign documents.
    #[error("certificate may not sign documents: {problem}")]
    LeafUsage {
        /// Which constraint fails.
        problem: String,
    },
    /// A certificate carries an extension that is malformed or critical and unknown.
    #[error("{which} has {problem} extension {oid}")]
    Extension {
        /// Which certificate.
        which: String,
        /// The extension OID.
        oid: String,
        /// `an unknown critical` or `a malformed`.
        problem: String,
    },
    /// The COSE signature has the wrong length.
    #[error("cose signature is {len} bytes, expected 96 (raw r||s for es384)")]
    SignatureLength {
        /// Length found.
        len: usize,
    },
    /// The COSE signature does not verify with the leaf certificate's key.
    #[error("cose signature does not verify with the leaf certificate key")]
    Signature,
    /// A trust anchor could not be parsed.
    #[error("trust anchor is not a pem or der x.509 certificate: {reason}")]
    Anchor {
        /// What the decoder reported.
        reason: String,
    },
    /// The system clock is before 1970.
    #[error("system clock is before the unix epoch")]
    Clock,
}

/// The instant at which certificate validity is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyAt {
    /// The system clock: what a live verifier uses.
    #[default]
    Now,
    /// The document's own `timestamp`: for checking archived documents, whose short-lived
    /// certificates have expired since. Never use it for live evidence.
    DocumentTimestamp,
    /// A fixed time, milliseconds since the Unix epoch.
    UnixMillis(u64),
}

impl VerifyAt {
    /// Resolve to milliseconds since the epoch, given the document's timestamp.
    pub fn unix_millis(self, document_timestamp_ms: u64) -> Result<u64, VerifyError> {
        match self {
            VerifyAt::Now => now_unix_millis(),
            VerifyAt::DocumentTimestamp => Ok(document_timestamp_ms),
            VerifyAt::UnixMillis(ms) => Ok(ms),
        }
    }
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn now_unix_millis() -> Result<u64, VerifyError> {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| VerifyError::Clock)?;
    Ok(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// The root certificate a chain must start with, pinned by its whole DER encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    der: Vec<u8>,
}

impl TrustAnchor {
    /// The AWS Nitro Enclaves root G1.
    pub fn aws_nitro_root_g1() -> Self {
        // The constant is checked by a unit test, so this cannot fail at run time; fall back
        // to an empty anchor (which matches nothing) rather than panic.
        Self::from_pem(AWS_NITRO_ROOT_G1_PEM).unwrap_or(Self { der: Vec::new() })
    }

    /// A root from a PEM `CERTIFICATE` block (for example a simulated NSM's test root).
    pub fn from_pem(pem: &str) -> Result<Self, VerifyError> {
        use der::DecodePem;
        let cert = x509_cert::Certificate::from_pem(pem.trim().as_bytes()).map_err(|e| {
            VerifyError::Anchor {
                reason: e.to_string(),
            }
        })?;
        let der = der::Encode::to_der(&cert).map_err(|e| VerifyError::Anchor {
            reason: e.to_string(),
        })?;
        Ok(Self { der })
    }

    /// A root from DER bytes.
    pub fn from_der(der: &[u8]) -> Result<Self, VerifyError> {
        chain::parse(der, "trust anchor").map_err(|e| VerifyError::Anchor {
            reason: e.to_string(),
        })?;
        Ok(Self { der: der.to_vec() })
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Upper-case hex SHA-256 of the DER (the usual certificate fingerprint).
    pub fn sha256_fingerprint(&self) -> String {
        hex::encode_upper(Sha256::digest(&self.der))
    }
}

impl Default for TrustAnchor {
    fn default() -> Self {
        Self::aws_nitro_root_g1()
    }
}

/// Verifies attestation documents against one trust anchor.
///
/// Cloning is cheap and the clones share one [`ChainCache`]: keep one verifier per anchor for
/// the whole process so that each distinct certificate signature is checked once.
#[derive(Debug, Clone, Default)]
pub struct Verifier {
    anchor: TrustAnchor,
    cache: Arc<ChainCache>,
}

impl Verifier {
    /// A verifier that accepts chains starting at `anchor`, with its own empty cache.
    pub fn new(anchor: TrustAnchor) -> Self {
        Self::with_cache(anchor, Arc::default())
    }

    /// A verifier that accepts chains starting at `anchor` and remembers verified certificate
    /// signatures in `cache`. A cache may be shared between anchors: its entries say only
    /// that a certificate's signature verifies under a key, never that a chain is trusted.
    pub fn with_cache(anchor: TrustAnchor, cache: Arc<ChainCache>) -> Self {
        Self { anchor, cache }
    }

    /// The trust anchor in use.
    pub fn anchor(&self) -> &TrustAnchor {
        &self.anchor
    }

    /// The cache of verified certificate signatures.
    pub fn cache(&self) -> &Arc<ChainCache> {
        &self.cache
    }

    /// Verify `bytes` (a COSE_Sign1 document) with certificate validity checked at `at`.
    ///
    /// Returns the decoded payload only when every check passes.
    pub fn verify(&self, bytes: &[u8], at: VerifyAt) -> Result<AttestationDocument, VerifyError> {
        let (sign1, document) = decode_structure(bytes)?;
        let payload = sign1.payload.as_deref().unwrap_or_default();

        let at_ms = at.unix_millis(document.timestamp_ms)?;
        let leaf_key = chain::verify_chain(
            &self.anchor.der,
            &document.cabundle,
            &document.certificate,
            at_ms / 1000,
            &self.cache,
        )?;

        if sign1.signature.len() != ES384_SIGNATURE_BYTES {
            return Err(VerifyError::SignatureLength {
                len: sign1.signature.len(),
            });
        }
        let protected = sign1.protected.original_data.as_deref().unwrap_or_default();
        let to_be_signed = sig_structure(protected, payload)?;
        // Refuses r or s zero or not below the group order, and a leaf key off the curve.
        if !leaf_key.verify_fixed(&to_be_signed, &sign1.signature) {
            return Err(VerifyError::Signature);
        }
        Ok(document)
    }
}

/// Decode a document's payload **without verifying anything cryptographic**: no certificate
/// chain, no COSE signature. Not a trust decision.
///
/// For a relay that needs a field (the sidecar reads `public_key` to check report signatures
/// and so keep its own `/readyz` honest) while the real verification, chain and policy, is
/// the operator's job with [`Verifier::verify`]. Applies the same size limits, COSE structure,
/// algorithm and payload-field checks as [`Verifier::verify`], so malformed input still fails
/// closed.
pub fn decode_unverified(bytes: &[u8]) -> Result<AttestationDocument, VerifyError> {
    decode_structure(bytes).map(|(_, document)| document)
}

/// The checks every reader of a document makes before anything cryptographic: size limit,
/// COSE_Sign1 structure, protected header (ES384), a payload, and the payload's fields. The
/// returned `CoseSign1` always has a payload.
fn decode_structure(bytes: &[u8]) -> Result<(CoseSign1, AttestationDocument), VerifyError> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(VerifyError::TooLarge {
            len: bytes.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    let sign1 = parse_cose_sign1(bytes)?;
    check_protected_header(&sign1)?;
    let payload = sign1
        .payload
        .as_deref()
        .ok_or(VerifyError::MissingPayload)?;
    let document = AttestationDocument::from_payload(payload)?;
    Ok((sign1, document))
}

/// Parse a COSE_Sign1, tagged (18) or untagged.
fn parse_cose_sign1(bytes: &[u8]) -> Result<CoseSign1, VerifyError> {
    // 0xd2 is the one-byte CBOR head of tag 18.
    let parsed = if bytes.first() == Some(&0xd2) {
        CoseSign1::from_tagged_slice(bytes)
    } else {
        CoseSign1::from_slice(bytes)
    };
    parsed.map_err(|e| VerifyError::Cose {
        reason: e.to_string(),
    })
}

fn check_protected_header(sign1: &CoseSign1) -> Result<(), VerifyError> {
    let header = &sign1.protected.header;
    match &header.alg {
        Some(coset::Algorithm::Assigned(iana::Algorithm::ES384)) => {}
        Some(other) => {
            return Err(VerifyError::Algorithm {
                found: format!("{other:?}").to_lowercase(),
            });
        }
        None => {
            return Err(VerifyError::Algorithm {
                found: "none".to_owned(),
            });
        }
    }
    if !header.crit.is_empty() {
        return Err(VerifyError::CriticalHeaders);
    }
    if sign1.protected.original_data.is_none() && !header.is_empty() {
        // coset always keeps the received bytes of a non-empty protected header; without
        // them the Sig_structure could not be rebuilt faithfully.
        return Err(VerifyError::Cose {
            reason: "protected header bytes unavailable".to_owned(),
        });
    }
    Ok(())
}

/// `Sig_structure = ["Signature1", protected, external_aad = h'', payload]` (RFC 9052 §4.4),
/// from the bytes as received.
pub(crate) fn sig_structure(protected: &[u8], payload: &[u8]) -> Result<Vec<u8>, VerifyError> {
    use ciborium::Value;
    let structure = Value::Array(vec![
        Value::Text("Signature1".to_owned()),
        Value::Bytes(protected.to_vec()),
        Value::Bytes(Vec::new()),
        Value::Bytes(payload.to_vec()),
    ]);
    let mut out = Vec::with_capacity(protected.len() + payload.len() + 32);
    ciborium::into_writer(&structure, &mut out).map_err(|e| VerifyError::Cose {
        reason: e.to_string(),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_aws_root_has_the_published_fingerprint() {
        let anchor = TrustAnchor::from_pem(AWS_NITRO_ROOT_G1_PEM).expect("embedded root parses");
        assert_eq!(anchor.sha256_fingerprint(), AWS_NITRO_ROOT_G1_SHA256);
        assert_eq!(TrustAnchor::aws_nitro_root_g1(), anchor);
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let err = Verifier::default()
            .verify(&vec![0u8; MAX_DOCUMENT_BYTES + 1], VerifyAt::Now)
            .expect_err("too large");
        assert!(matches!(err, VerifyError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn decode_unverified_reads_fields_but_checks_no_signature() {
        use crate::nsm::{Nsm as _, SimulatedNsm};
        let nsm = SimulatedNsm::new().expect("simulator");
        let document = nsm
            .attest(Some(b"user"), Some(b"nonce"), Some(b"public key"))
            .expect("attest");
        let decoded = decode_unverified(&document).expect("decodes");
        assert_eq!(decoded.public_key.as_deref(), Some(&b"public key"[..]));
        assert_eq!(decoded.nonce.as_deref(), Some(&b"nonce"[..]));
        // The default verifier refuses the simulated chain; decoding does not care.
        assert!(
            Verifier::default()
                .verify(&document, VerifyAt::Now)
                .is_err()
        );
        for input in [&b""[..], b"hello", &vec![0u8; MAX_DOCUMENT_BYTES + 1]] {
            assert!(decode_unverified(input).is_err());
        }
    }

    #[test]
    fn garbage_is_not_cose() {
        for input in [
            &b""[..],
            b"\xd2",
            b"\x84",
            b"hello",
            b"\xd2\x84\x40\xa0\x40\x40",
        ] {
            let err = Verifier::default()
                .verify(input, VerifyAt::Now)
                .expect_err("garbage");
            assert!(
                matches!(
                    err,
                    VerifyError::Cose { .. } | VerifyError::Algorithm { .. }
                ),
                "{err}"
            );
        }
    }
}
