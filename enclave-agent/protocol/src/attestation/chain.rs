//! The certificate chain of a Nitro document: `cabundle[0]` (the pinned root) → … →
//! `certificate` (the leaf whose key signs the document).
//!
//! RFC 5280 path validation restricted to what AWS issues: ecdsa-with-SHA384 signatures by
//! P-384 keys (the AWS root itself uses them, so no SHA-256 variant is accepted), CA
//! certificates with basicConstraints CA=true, a respected pathLenConstraint and the
//! keyCertSign usage, a leaf with digitalSignature. Unknown critical extensions are refused.
//! Certificates must be canonical DER, so the re-encoded TBS that is verified is exactly the
//! signed one.
//!
//! Signatures are checked with `aws-lc-rs` (AWS-LC: FIPS 140-3 validated, rustls's default
//! provider). `ring`, already in the tree, verifies P-384 with constant-time scalar
//! multiplications and no precomputed base table, about four times slower, and a refresh pays
//! that in full for the one fresh COSE signature it must check. An issuer's signature over a
//! certificate is checked once per exact `(issuer key, certificate)` pair and remembered in a
//! [`ChainCache`]; everything else is checked on every call.

use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use der::{Decode, Encode, oid::AssociatedOid};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::oid::db::rfc5912::{ECDSA_WITH_SHA_384, ID_EC_PUBLIC_KEY, SECP_384_R_1};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};

use super::{ChainCache, VerifyError};

/// Length of an uncompressed SEC1 P-384 point: `0x04 || x || y`.
const P384_UNCOMPRESSED_POINT_BYTES: usize = 97;

/// A certificate's P-384 public key: its SubjectPublicKeyInfo DER (what the cache is keyed
/// on) and the uncompressed point (what `aws-lc-rs` takes). The point's presence on the curve
/// is checked by `aws-lc-rs` when a signature is verified with it.
#[derive(Debug, Clone)]
pub(super) struct P384Key {
    spki_der: Vec<u8>,
    point: Vec<u8>,
}

impl P384Key {
    /// Verify a raw `r || s` signature (COSE ES384) over `message`.
    pub(super) fn verify_fixed(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &self.point)
            .verify(message, signature)
            .is_ok()
    }

    /// Verify a DER `Ecdsa-Sig-Value` (X.509 ecdsa-with-SHA384) over `message`.
    fn verify_asn1(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, &self.point)
            .verify(message, signature)
            .is_ok()
    }
}

/// Parse one DER certificate, refusing non-canonical encodings.
pub(super) fn parse(der: &[u8], which: &str) -> Result<Certificate, VerifyError> {
    let encoding = |reason: String| VerifyError::CertificateEncoding {
        which: which.to_owned(),
        reason,
    };
    let cert = Certificate::from_der(der).map_err(|e| encoding(e.to_string()))?;
    let again = cert.to_der().map_err(|e| encoding(e.to_string()))?;
    if again != der {
        return Err(encoding("not canonical der".to_owned()));
    }
    Ok(cert)
}

/// What a certificate's extensions allow.
#[derive(Debug, Default)]
struct Constraints {
    ca: bool,
    path_len: Option<u8>,
    key_usage: Option<KeyUsage>,
}

fn constraints(cert: &Certificate, which: &str) -> Result<Constraints, VerifyError> {
    let mut out = Constraints::default();
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        let malformed = || VerifyError::Extension {
            which: which.to_owned(),
            oid: ext.extn_id.to_string(),
            problem: "a malformed".to_owned(),
        };
        if ext.extn_id == BasicConstraints::OID {
            let bc =
                BasicConstraints::from_der(ext.extn_value.as_bytes()).map_err(|_| malformed())?;
            out.ca = bc.ca;
            out.path_len = bc.path_len_constraint;
        } else if ext.extn_id == KeyUsage::OID {
            out.key_usage =
                Some(KeyUsage::from_der(ext.extn_value.as_bytes()).map_err(|_| malformed())?);
        } else if ext.critical {
            return Err(VerifyError::Extension {
                which: which.to_owned(),
                oid: ext.extn_id.to_string(),
                problem: "an unknown critical".to_owned(),
            });
        }
    }
    Ok(out)
}

fn check_validity(cert: &Certificate, which: &str, at_s: u64) -> Result<(), VerifyError> {
    let validity = &cert.tbs_certificate.validity;
    let not_before_s = validity.not_before.to_unix_duration().as_secs();
    let not_after_s = validity.not_after.to_unix_duration().as_secs();
    if at_s < not_before_s {
        return Err(VerifyError::CertificateNotYetValid {
            which: which.to_owned(),
            not_before_s,
            at_s,
        });
    }
    if at_s > not_after_s {
        return Err(VerifyError::CertificateExpired {
            which: which.to_owned(),
            not_after_s,
            at_s,
        });
    }
    Ok(())
}

fn public_key(cert: &Certificate, which: &str) -> Result<P384Key, VerifyError> {
    let not_p384 = || VerifyError::CertificateKey {
        which: which.to_owned(),
    };
    let spki = &cert.tbs_certificate.subject_public_key_info;
    // id-ecPublicKey with the named curve secp384r1, and an uncompressed point.
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|params| params.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != ID_EC_PUBLIC_KEY || curve != Some(SECP_384_R_1) {
        return Err(not_p384());
    }
    let point = spki.subject_public_key.as_bytes().ok_or_else(not_p384)?;
    if point.len() != P384_UNCOMPRESSED_POINT_BYTES || point.first() != Some(&0x04) {
        return Err(not_p384());
    }
    let spki_der = spki.to_der().map_err(|_| not_p384())?;
    Ok(P384Key {
        spki_der,
        point: point.to_vec(),
    })
}

/// Check `child`'s algorithm, then its signature by `issuer_key` unless that exact pair is in
/// `cache`; a signature that verifies is remembered.
fn check_signed_by(
    child: &Certificate,
    child_der: &[u8],
    which: &str,
    issuer_key: &P384Key,
    cache: &ChainCache,
) -> Result<(), VerifyError> {
    let alg = &child.signature_algorithm;
    let is_es384 = |oid: &ObjectIdentifier, params: bool| *oid == ECDSA_WITH_SHA_384 && !params;
    if !is_es384(&alg.oid, alg.parameters.is_some()) || child.tbs_certificate.signature != *alg {
        return Err(VerifyError::CertificateAlgorithm {
            which: which.to_owned(),
            oid: alg.oid.to_string(),
        });
    }
    if cache.contains(&issuer_key.spki_der, child_der) {
        return Ok(());
    }
    let bad = || VerifyError::CertificateSignature {
        which: which.to_owned(),
    };
    let signature = child.signature.as_bytes().ok_or_else(bad)?;
    // `parse` checked that the certificate is canonical DER, so this is the signed TBS.
    let tbs = child.tbs_certificate.to_der().map_err(|_| bad())?;
    if !issuer_key.verify_asn1(&tbs, signature) {
        return Err(bad());
    }
    cache.insert(&issuer_key.spki_der, child_der);
    Ok(())
}

/// Validate the chain at `at_s` (seconds since the epoch) and return the leaf's key.
pub(super) fn verify_chain(
    anchor_der: &[u8],
    cabundle: &[Vec<u8>],
    leaf_der: &[u8],
    at_s: u64,
    cache: &ChainCache,
) -> Result<P384Key, VerifyError> {
    let root_der = cabundle.first().ok_or_else(|| VerifyError::Field {
        field: "cabundle".to_owned(),
        problem: "is empty".to_owned(),
    })?;
    // Pin by the whole DER: names can be copied, keys and signatures cannot.
    if root_der.as_slice() != anchor_der {
        return Err(VerifyError::UntrustedRoot {
            found: hex::encode_upper(Sha256::digest(root_der)),
            expected: hex::encode_upper(Sha256::digest(anchor_der)),
        });
    }

    let mut names: Vec<String> = (0..cabundle.len())
        .map(|i| format!("cabundle[{i}]"))
        .collect();
    names.push("certificate".to_owned());
    let ders: Vec<&[u8]> = cabundle
        .iter()
        .map(Vec::as_slice)
        .chain(std::iter::once(leaf_der))
        .collect();
    let certs = ders
        .iter()
        .zip(&names)
        .map(|(der, which)| parse(der, which))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf_index = certs.len() - 1;

    let mut issuer_key: Option<P384Key> = None;
    for (index, (cert, which)) in certs.iter().zip(&names).enumerate() {
        check_validity(cert, which, at_s)?;
        let key = public_key(cert, which)?;
        let limits = constraints(cert, which)?;
        if index > 0 {
            let parent = &certs[index - 1];
            if cert.tbs_certificate.issuer != parent.tbs_certificate.subject {
                return Err(VerifyError::IssuerMismatch {
                    which: which.clone(),
                });
            }
            if let Some(parent_key) = &issuer_key {
                check_signed_by(cert, ders[index], which, parent_key, cache)?;
            }
        }
        // The root is pinned by its DER, so its self-signature adds nothing.
        if index < leaf_index {
            check_ca(&limits, which, leaf_index - index - 1)?;
        } else {
            check_leaf(&limits)?;
        }
        issuer_key = Some(key);
    }
    issuer_key.ok_or_else(|| VerifyError::Field {
        field: "certificate".to_owned(),
        problem: "is missing".to_owned(),
    })
}

/// `cas_below` is the number of CA certificates between this one and the leaf.
fn check_ca(limits: &Constraints, which: &str, cas_below: usize) -> Result<(), VerifyError> {
    let not_ca = |problem: String| VerifyError::NotCa {
        which: which.to_owned(),
        problem,
    };
    if !limits.ca {
        return Err(not_ca("basicConstraints ca is not true".to_owned()));
    }
    if !limits
        .key_usage
        .as_ref()
        .is_some_and(KeyUsage::key_cert_sign)
    {
        return Err(not_ca("key usage lacks keyCertSign".to_owned()));
    }
    if let Some(path_len) = limits.path_len
        && cas_below > usize::from(path_len)
    {
        return Err(not_ca(format!(
            "pathLenConstraint {path_len} allows fewer than the {cas_below} intermediate certificates below it"
        )));
    }
    Ok(())
}

fn check_leaf(limits: &Constraints) -> Result<(), VerifyError> {
    if limits.ca {
        return Err(VerifyError::LeafUsage {
            problem: "it is a ca certificate".to_owned(),
        });
    }
    // RFC 5280 would allow any usage without the extension; AWS leaves always carry it, so
    // its absence is refused (fail closed).
    if !limits
        .key_usage
        .as_ref()
        .is_some_and(KeyUsage::digital_signature)
    {
        return Err(VerifyError::LeafUsage {
            problem: "key usage lacks digitalSignature".to_owned(),
        });
    }
    Ok(())
}
