//! Real AWS Nitro attestation documents from `shared/testdata/nitro`, driven by its
//! `manifest.json`: they verify at their own timestamp, fail now, decode to the manifest's
//! values, and no mutation of them makes the verifier panic or accept.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use nautilus_protocol::attestation::{AWS_NITRO_ROOT_G1_SHA256, MAX_DOCUMENT_BYTES};
use nautilus_protocol::{AttestationDocument, TrustAnchor, Verifier, VerifyAt, VerifyError};
use nautilus_test_support::nitro_dir;
use proptest::prelude::*;
use serde_json::Value;

struct Entry {
    file: String,
    json: Value,
}

fn manifest(dir: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest readable");
    let json: Value = serde_json::from_str(&text).expect("manifest is json");
    json["documents"]
        .as_array()
        .expect("documents array")
        .iter()
        .map(|doc| Entry {
            file: doc["file"].as_str().expect("file").to_owned(),
            json: doc.clone(),
        })
        .collect()
}

fn read(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).expect("document readable")
}

/// The manifest's hex convention: "null" = null, "" = empty bytes.
fn expected_optional(entry: &Entry, key: &str) -> Option<Vec<u8>> {
    match entry.json[key].as_str().expect("hex field") {
        "null" => None,
        hex => Some(hex::decode(hex).expect("manifest hex")),
    }
}

fn timestamp(entry: &Entry) -> u64 {
    entry.json["timestamp_ms"].as_u64().expect("timestamp_ms")
}

fn valid_entries(dir: &Path) -> Vec<Entry> {
    manifest(dir)
        .into_iter()
        .filter(|e| e.json["verified_at_timestamp"].as_bool() == Some(true))
        .collect()
}

fn assert_matches_manifest(doc: &AttestationDocument, entry: &Entry) {
    let file = &entry.file;
    assert_eq!(
        doc.module_id,
        entry.json["module_id"].as_str().unwrap(),
        "{file}"
    );
    assert_eq!(doc.timestamp_ms, timestamp(entry), "{file}");
    assert_eq!(doc.digest, "SHA384", "{file}");
    for index in [0u8, 1, 2, 8] {
        let expected = entry.json[format!("pcr{index}")].as_str().unwrap();
        assert_eq!(
            hex::encode(doc.pcr(index).unwrap()),
            expected,
            "{file} pcr{index}"
        );
    }
    assert_eq!(
        doc.debug_mode(),
        entry.json["debug_mode"].as_bool().unwrap(),
        "{file}"
    );
    assert_eq!(
        doc.public_key,
        expected_optional(entry, "public_key_hex"),
        "{file}"
    );
    assert_eq!(
        doc.user_data,
        expected_optional(entry, "user_data_hex"),
        "{file}"
    );
    assert_eq!(doc.nonce, expected_optional(entry, "nonce_hex"), "{file}");
}

#[test]
fn manifest_root_is_the_embedded_root() {
    let Some(dir) = nitro_dir() else { return };
    let pem = std::fs::read_to_string(dir.join("aws-nitro-root-g1.pem")).unwrap();
    let anchor = TrustAnchor::from_pem(&pem).unwrap();
    assert_eq!(anchor, TrustAnchor::aws_nitro_root_g1());
    assert_eq!(anchor.sha256_fingerprint(), AWS_NITRO_ROOT_G1_SHA256);
}

#[test]
fn valid_documents_verify_at_their_timestamp_with_manifest_fields() {
    let Some(dir) = nitro_dir() else { return };
    let entries = valid_entries(&dir);
    assert!(entries.len() >= 6, "manifest lists the real documents");
    let verifier = Verifier::default();
    for entry in &entries {
        let bytes = read(&dir, &entry.file);
        let doc = verifier
            .verify(&bytes, VerifyAt::DocumentTimestamp)
            .unwrap_or_else(|e| panic!("{}: {e}", entry.file));
        assert_matches_manifest(&doc, entry);
        // The same instant given explicitly.
        verifier
            .verify(&bytes, VerifyAt::UnixMillis(timestamp(entry)))
            .unwrap_or_else(|e| panic!("{}: {e}", entry.file));
    }
}

#[test]
fn valid_documents_fail_now_because_certificates_expired() {
    let Some(dir) = nitro_dir() else { return };
    for entry in valid_entries(&dir) {
        let err = Verifier::default()
            .verify(&read(&dir, &entry.file), VerifyAt::Now)
            .expect_err("expired");
        assert!(
            matches!(err, VerifyError::CertificateExpired { .. }),
            "{}: {err}",
            entry.file
        );
        assert!(err.to_string().contains("expired"), "{err}");
    }
}

#[test]
fn documents_fail_before_their_leaf_was_issued() {
    let Some(dir) = nitro_dir() else { return };
    for entry in valid_entries(&dir) {
        // Four days earlier: the leaf (hours) and the last intermediate (about a day) did not exist.
        let at = VerifyAt::UnixMillis(timestamp(&entry) - 4 * 24 * 3600 * 1000);
        let err = Verifier::default()
            .verify(&read(&dir, &entry.file), at)
            .expect_err("not yet valid");
        assert!(
            matches!(err, VerifyError::CertificateNotYetValid { .. }),
            "{}: {err}",
            entry.file
        );
    }
}

#[test]
fn indefinite_length_payload_verifies_from_received_bytes() {
    let Some(dir) = nitro_dir() else { return };
    let entry = valid_entries(&dir)
        .into_iter()
        .find(|e| e.json["payload_map_indefinite_length"].as_bool() == Some(true))
        .expect("manifest has an indefinite-length document");
    let bytes = read(&dir, &entry.file);
    Verifier::default()
        .verify(&bytes, VerifyAt::DocumentTimestamp)
        .unwrap();
}

#[test]
fn bad_signature_document_is_rejected_with_the_signature_error() {
    let Some(dir) = nitro_dir() else { return };
    let entry = manifest(&dir)
        .into_iter()
        .find(|e| e.json["verified_at_timestamp"].as_bool() == Some(false))
        .expect("manifest has an invalid document");
    let err = Verifier::default()
        .verify(&read(&dir, &entry.file), VerifyAt::DocumentTimestamp)
        .expect_err("bad signature");
    assert!(matches!(err, VerifyError::Signature), "{err}");
}

#[test]
fn lookalike_root_is_not_trusted() {
    let Some(dir) = nitro_dir() else { return };
    let pem = std::fs::read_to_string(dir.join("lookalike-root-not-aws.pem")).unwrap();
    let lookalike = TrustAnchor::from_pem(&pem).unwrap();
    assert_ne!(lookalike, TrustAnchor::aws_nitro_root_g1());
    let verifier = Verifier::new(lookalike);
    for entry in valid_entries(&dir) {
        let err = verifier
            .verify(&read(&dir, &entry.file), VerifyAt::DocumentTimestamp)
            .expect_err("untrusted");
        assert!(
            matches!(err, VerifyError::UntrustedRoot { .. }),
            "{}: {err}",
            entry.file
        );
    }
}

/// Decode a real document into its four COSE items, for structural mutations.
fn cose_items(bytes: &[u8]) -> Vec<ciborium::Value> {
    match ciborium::from_reader(bytes).unwrap() {
        ciborium::Value::Array(items) => items,
        _ => panic!("not an array"),
    }
}

fn encode(value: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

fn first_valid(dir: &Path) -> (Vec<u8>, u64) {
    let entry = valid_entries(dir).into_iter().next().unwrap();
    (read(dir, &entry.file), timestamp(&entry))
}

#[test]
fn tag_18_form_is_accepted() {
    let Some(dir) = nitro_dir() else { return };
    let (bytes, _) = first_valid(&dir);
    let mut tagged = vec![0xd2];
    tagged.extend_from_slice(&bytes);
    Verifier::default()
        .verify(&tagged, VerifyAt::DocumentTimestamp)
        .unwrap();
    // Any other tag is refused.
    let mut other = vec![0xd1];
    other.extend_from_slice(&bytes);
    assert!(
        Verifier::default()
            .verify(&other, VerifyAt::DocumentTimestamp)
            .is_err()
    );
}

#[test]
fn structural_mutations_are_refused() {
    use ciborium::Value;
    let Some(dir) = nitro_dir() else { return };
    let (bytes, _) = first_valid(&dir);
    let verify = |b: &[u8]| Verifier::default().verify(b, VerifyAt::DocumentTimestamp);

    // Wrong algorithm (ES256 = -7) in the protected header.
    let mut items = cose_items(&bytes);
    items[0] = Value::Bytes(encode(&Value::Map(vec![(
        Value::Integer(1.into()),
        Value::Integer((-7).into()),
    )])));
    let err = verify(&encode(&Value::Array(items))).expect_err("es256");
    assert!(matches!(err, VerifyError::Algorithm { .. }), "{err}");

    // No algorithm at all.
    let mut items = cose_items(&bytes);
    items[0] = Value::Bytes(Vec::new());
    let err = verify(&encode(&Value::Array(items))).expect_err("no alg");
    assert!(matches!(err, VerifyError::Algorithm { .. }), "{err}");

    // Extra array item.
    let mut items = cose_items(&bytes);
    items.push(Value::Null);
    let err = verify(&encode(&Value::Array(items))).expect_err("five items");
    assert!(matches!(err, VerifyError::Cose { .. }), "{err}");

    // Trailing bytes after the structure.
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(verify(&trailing), Err(VerifyError::Cose { .. })));

    // Signature of the wrong length.
    let mut items = cose_items(&bytes);
    items[3] = Value::Bytes(vec![1; 95]);
    let err = verify(&encode(&Value::Array(items))).expect_err("short signature");
    assert!(
        matches!(err, VerifyError::SignatureLength { len: 95 }),
        "{err}"
    );

    // Re-encoding the payload (even to equivalent CBOR) breaks the signature when it changes bytes;
    // an empty unprotected header replaced by a non-empty one is unsigned and harmless, so it
    // must not matter either way: verification relies only on signed bytes.
    let mut items = cose_items(&bytes);
    items[2] = Value::Null;
    assert!(
        verify(&encode(&Value::Array(items))).is_err(),
        "nil payload"
    );

    // Oversized input.
    let mut huge = bytes.clone();
    huge.resize(MAX_DOCUMENT_BYTES + 1, 0);
    assert!(matches!(verify(&huge), Err(VerifyError::TooLarge { .. })));
}

fn real_documents() -> Vec<(Vec<u8>, u64)> {
    let Some(dir) = nitro_dir() else {
        return Vec::new();
    };
    valid_entries(&dir)
        .iter()
        .map(|e| (read(&dir, &e.file), timestamp(e)))
        .collect()
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    FlipBit(usize, u8),
    Insert(usize, u8),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Delete(at, n)),
    ]
}

fn apply(bytes: &[u8], mutation: &Mutation) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let len = out.len();
    match *mutation {
        Mutation::Truncate(at) => out.truncate(at % len),
        Mutation::FlipBit(at, bit) => out[at % len] ^= 1 << bit,
        Mutation::Insert(at, b) => out.insert(at % (len + 1), b),
        Mutation::Delete(at, n) => {
            let start = at % len;
            out.drain(start..(start + n).min(len));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every byte of a document is framing, signed content or signature, so any change is
    /// refused, and never by a panic.
    #[test]
    fn mutated_real_documents_are_refused(pick in any::<prop::sample::Index>(), m in mutation()) {
        let docs = real_documents();
        if docs.is_empty() {
            return Ok(());
        }
        let (bytes, ts) = pick.get(&docs);
        let mutated = apply(bytes, &m);
        let result = Verifier::default().verify(&mutated, VerifyAt::UnixMillis(*ts));
        prop_assert!(result.is_err(), "{m:?} was accepted");
    }

    /// Arbitrary bytes never panic.
    #[test]
    fn arbitrary_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(Verifier::default().verify(&bytes, VerifyAt::Now).is_err());
    }
}
