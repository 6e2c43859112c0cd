//! The verifier's cache of certificate signatures must only save work, never change an answer:
//! with a warm cache, real AWS documents are still refused when their chain has expired or is
//! not yet valid, when a certificate was altered (even one whose genuine version is cached),
//! when the COSE signature is bad, and when the chain does not start at the verifier's own
//! anchor.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, LazyLock};

use ciborium::Value;
use der::{Decode as _, Encode as _};
use nautilus_protocol::attestation::decode_unverified;
use nautilus_protocol::{ChainCache, TrustAnchor, Verifier, VerifyAt, VerifyError};
use nautilus_test_support::nitro_dir;
use proptest::prelude::*;
use serde_json::Value as Json;
use x509_cert::Certificate;
use x509_cert::der::asn1::UtcTime;
use x509_cert::time::Time;

/// Links in an AWS chain: root → regional → zonal → instance → leaf.
const AWS_LINKS: usize = 4;

/// `(file, bytes, timestamp_ms)` of every document the manifest marks as valid.
fn valid_documents(dir: &Path) -> Vec<(String, Vec<u8>, u64)> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let json: Json = serde_json::from_str(&text).unwrap();
    json["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|doc| doc["verified_at_timestamp"].as_bool() == Some(true))
        .map(|doc| {
            let file = doc["file"].as_str().unwrap().to_owned();
            let bytes = std::fs::read(dir.join(&file)).unwrap();
            (file, bytes, doc["timestamp_ms"].as_u64().unwrap())
        })
        .collect()
}

fn bad_signature_document(dir: &Path) -> (Vec<u8>, u64) {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let json: Json = serde_json::from_str(&text).unwrap();
    let doc = json["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|doc| doc["verified_at_timestamp"].as_bool() == Some(false))
        .unwrap();
    let bytes = std::fs::read(dir.join(doc["file"].as_str().unwrap())).unwrap();
    (bytes, doc["timestamp_ms"].as_u64().unwrap())
}

/// A verifier whose cache holds every link of `bytes`' chain.
fn warm(bytes: &[u8], ts: u64) -> Verifier {
    let verifier = Verifier::default();
    verifier.verify(bytes, VerifyAt::UnixMillis(ts)).unwrap();
    assert_eq!(verifier.cache().len(), AWS_LINKS);
    verifier
}

fn cose_items(bytes: &[u8]) -> Vec<Value> {
    match ciborium::from_reader(bytes).unwrap() {
        Value::Array(items) => items,
        _ => panic!("not an array"),
    }
}

fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

/// The document with its payload field `key` passed through `edit` (the COSE signature is
/// left as it was, so it no longer matches).
fn with_payload_field(bytes: &[u8], key: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut items = cose_items(bytes);
    let Value::Bytes(payload) = &items[2] else {
        panic!("payload is not a byte string")
    };
    let Value::Map(mut entries) = ciborium::from_reader(payload.as_slice()).unwrap() else {
        panic!("payload is not a map")
    };
    let (_, value) = entries
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .unwrap();
    edit(value);
    items[2] = Value::Bytes(encode(&Value::Map(entries)));
    encode(&Value::Array(items))
}

/// `cabundle[index]`, or the leaf for `index == cabundle.len()`, replaced by `edit(der)`.
fn with_certificate(bytes: &[u8], index: usize, edit: impl FnOnce(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let bundle_len = decode_unverified(bytes).unwrap().cabundle.len();
    if index == bundle_len {
        with_payload_field(bytes, "certificate", |value| {
            let Value::Bytes(der) = value else { panic!() };
            *der = edit(der);
        })
    } else {
        with_payload_field(bytes, "cabundle", |value| {
            let Value::Array(items) = value else { panic!() };
            let Value::Bytes(der) = &mut items[index] else {
                panic!()
            };
            *der = edit(der);
        })
    }
}

fn not_after_s(der: &[u8]) -> u64 {
    let cert = Certificate::from_der(der).unwrap();
    cert.tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs()
}

/// The certificate valid for a year longer, with its issuer's original signature kept: what a
/// forger would do to revive an expired chain.
fn extend_validity(der: &[u8]) -> Vec<u8> {
    let mut cert = Certificate::from_der(der).unwrap();
    let later = cert.tbs_certificate.validity.not_after.to_unix_duration()
        + std::time::Duration::from_secs(365 * 24 * 3600);
    cert.tbs_certificate.validity.not_after =
        Time::UtcTime(UtcTime::from_unix_duration(later).unwrap());
    cert.to_der().unwrap()
}

/// The certificate with one bit of its signature's last byte flipped (still valid DER).
fn flip_signature_bit(der: &[u8]) -> Vec<u8> {
    let mut out = der.to_vec();
    let last = out.len() - 1;
    out[last] ^= 0x01;
    out
}

#[test]
fn a_cached_chain_is_still_refused_outside_its_validity() {
    let Some(dir) = nitro_dir() else { return };
    for (file, bytes, ts) in valid_documents(&dir) {
        let verifier = warm(&bytes, ts);
        let leaf_not_after_ms = not_after_s(&decode_unverified(&bytes).unwrap().certificate) * 1000;

        for (at, expired) in [
            (VerifyAt::Now, true),
            (VerifyAt::UnixMillis(leaf_not_after_ms + 1000), true),
            (VerifyAt::UnixMillis(ts - 4 * 24 * 3600 * 1000), false),
        ] {
            let err = verifier.verify(&bytes, at).expect_err("outside validity");
            let right = if expired {
                matches!(err, VerifyError::CertificateExpired { .. })
            } else {
                matches!(err, VerifyError::CertificateNotYetValid { .. })
            };
            assert!(right, "{file} at {at:?}: {err}");
        }
        // The cache still answers for the valid instant.
        verifier.verify(&bytes, VerifyAt::UnixMillis(ts)).unwrap();
        verifier
            .verify(&bytes, VerifyAt::UnixMillis(leaf_not_after_ms))
            .unwrap();
        assert_eq!(verifier.cache().len(), AWS_LINKS, "{file}");
    }
}

#[test]
fn an_altered_certificate_is_refused_after_the_genuine_one_was_cached() {
    let Some(dir) = nitro_dir() else { return };
    for (file, bytes, ts) in valid_documents(&dir) {
        let verifier = warm(&bytes, ts);
        let bundle_len = decode_unverified(&bytes).unwrap().cabundle.len();
        // Every certificate below the pinned root, the leaf included.
        for index in 1..=bundle_len {
            let which = if index == bundle_len {
                "certificate".to_owned()
            } else {
                format!("cabundle[{index}]")
            };
            for (how, edit) in [
                ("validity extended", extend_validity as fn(&[u8]) -> Vec<u8>),
                ("signature bit flipped", flip_signature_bit),
            ] {
                let forged = with_certificate(&bytes, index, edit);
                let err = verifier
                    .verify(&forged, VerifyAt::UnixMillis(ts))
                    .expect_err("forged certificate");
                // Refused by the certificate's own signature, before the COSE signature.
                assert!(
                    matches!(&err, VerifyError::CertificateSignature { which: w } if *w == which),
                    "{file}, {which} {how}: {err}"
                );
            }
        }
        // Nothing forged was remembered.
        assert_eq!(verifier.cache().len(), AWS_LINKS, "{file}");
        verifier.verify(&bytes, VerifyAt::UnixMillis(ts)).unwrap();
    }
}

#[test]
fn an_extended_chain_is_refused_after_the_genuine_chain_expired() {
    let Some(dir) = nitro_dir() else { return };
    for (file, bytes, ts) in valid_documents(&dir) {
        let verifier = warm(&bytes, ts);
        let bundle_len = decode_unverified(&bytes).unwrap().cabundle.len();
        let mut forged = bytes.clone();
        for index in 1..=bundle_len {
            forged = with_certificate(&forged, index, extend_validity);
        }
        let leaf_not_after_ms = not_after_s(&decode_unverified(&bytes).unwrap().certificate) * 1000;
        let err = verifier
            .verify(&forged, VerifyAt::UnixMillis(leaf_not_after_ms + 3_600_000))
            .expect_err("revived chain");
        assert!(
            matches!(err, VerifyError::CertificateSignature { .. }),
            "{file}: {err}"
        );
    }
}

#[test]
fn a_bad_cose_signature_is_refused_with_a_cached_chain() {
    let Some(dir) = nitro_dir() else { return };
    for (file, bytes, ts) in valid_documents(&dir) {
        let verifier = warm(&bytes, ts);
        for bit in [0usize, 7, 400, 767] {
            let mut items = cose_items(&bytes);
            let Value::Bytes(signature) = &mut items[3] else {
                panic!()
            };
            signature[bit / 8] ^= 1 << (bit % 8);
            let err = verifier
                .verify(&encode(&Value::Array(items)), VerifyAt::UnixMillis(ts))
                .expect_err("bad cose signature");
            assert!(matches!(err, VerifyError::Signature), "{file}: {err}");
        }
    }

    // AWS's bad-signature document has a genuine chain: the chain is cached on the first try
    // and the document is refused every time.
    let (bad, ts) = bad_signature_document(&dir);
    let verifier = Verifier::default();
    for _ in 0..2 {
        let err = verifier
            .verify(&bad, VerifyAt::UnixMillis(ts))
            .expect_err("bad signature");
        assert!(matches!(err, VerifyError::Signature), "{err}");
        assert_eq!(verifier.cache().len(), AWS_LINKS);
    }
}

#[test]
fn a_shared_cache_confers_no_trust() {
    let Some(dir) = nitro_dir() else { return };
    let documents = valid_documents(&dir);
    let cache = Arc::new(ChainCache::default());
    let aws = Verifier::with_cache(TrustAnchor::aws_nitro_root_g1(), Arc::clone(&cache));
    for (_, bytes, ts) in &documents {
        aws.verify(bytes, VerifyAt::UnixMillis(*ts)).unwrap();
    }
    assert_eq!(cache.len(), documents.len() * AWS_LINKS);

    let pem = std::fs::read_to_string(dir.join("lookalike-root-not-aws.pem")).unwrap();
    let lookalike = Verifier::with_cache(TrustAnchor::from_pem(&pem).unwrap(), cache);
    for (file, bytes, ts) in &documents {
        let err = lookalike
            .verify(bytes, VerifyAt::UnixMillis(*ts))
            .expect_err("not this verifier's anchor");
        assert!(
            matches!(err, VerifyError::UntrustedRoot { .. }),
            "{file}: {err}"
        );
    }
}

#[test]
fn clones_share_one_cache_and_small_caches_still_verify() {
    let Some(dir) = nitro_dir() else { return };
    let documents = valid_documents(&dir);
    let verifier = Verifier::default();
    let clone = verifier.clone();
    let (_, bytes, ts) = &documents[0];
    clone.verify(bytes, VerifyAt::UnixMillis(*ts)).unwrap();
    assert_eq!(verifier.cache().len(), AWS_LINKS);
    assert!(Arc::ptr_eq(verifier.cache(), clone.cache()));

    for capacity in [0, 1, 3] {
        let small = Verifier::with_cache(
            TrustAnchor::aws_nitro_root_g1(),
            Arc::new(ChainCache::with_capacity(capacity)),
        );
        for _ in 0..2 {
            for (file, bytes, ts) in &documents {
                small
                    .verify(bytes, VerifyAt::UnixMillis(*ts))
                    .unwrap_or_else(|e| panic!("{file} with capacity {capacity}: {e}"));
                assert!(small.cache().len() <= capacity);
            }
        }
    }
}

/// `(bytes, timestamp_ms)` of each real document.
type Documents = Vec<(Vec<u8>, u64)>;

/// One verifier warmed with every real document, shared by all proptest cases.
static WARM: LazyLock<(Verifier, Documents)> = LazyLock::new(|| {
    let verifier = Verifier::default();
    let documents: Documents = nitro_dir()
        .map(|dir| {
            valid_documents(&dir)
                .into_iter()
                .map(|(_, bytes, ts)| (bytes, ts))
                .collect()
        })
        .unwrap_or_default();
    for (bytes, ts) in &documents {
        verifier.verify(bytes, VerifyAt::UnixMillis(*ts)).unwrap();
    }
    (verifier, documents)
});

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// With every genuine chain cached, any byte changed, inserted or removed in a real
    /// document is still refused.
    #[test]
    fn mutated_documents_are_refused_by_a_warm_verifier(
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        insert in any::<bool>(),
    ) {
        let (verifier, documents) = &*WARM;
        if documents.is_empty() {
            return Ok(());
        }
        let (bytes, ts) = pick.get(documents);
        let mut mutated = bytes.clone();
        let at = at.index(mutated.len());
        if insert {
            mutated.insert(at, value);
        } else if mutated[at] == value {
            mutated.remove(at);
        } else {
            mutated[at] = value;
        }
        let result = verifier.verify(&mutated, VerifyAt::UnixMillis(*ts));
        prop_assert!(result.is_err(), "change at {at} accepted");
    }
}
