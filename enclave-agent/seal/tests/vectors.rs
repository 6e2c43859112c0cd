//! Real Sui personal-message signatures made by other implementations (the TS SDK, the Sui
//! CLI), checked through the same function the token verifier uses.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use base64::Engine as _;
use nautilus_seal::{
    Jwk, JwkId, SignatureError, SignatureVerifier, ZkloginVerifier,
    personal_message::{decode_signature_base64, verify_personal_message},
    token::parse_address,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Vectors {
    vectors: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
struct Vector {
    address: String,
    message_base64: String,
    signature_base64: String,
    scheme: String,
    expected_valid: bool,
    note: String,
    /// For zkLogin: the issuer key and the epoch bound, as the vector file states them.
    #[serde(default)]
    zklogin_requirements: Option<serde_json::Value>,
}

/// What a zkLogin vector says its verification needs: the JWK of its test issuer and its
/// `max_epoch`.
struct ZkLoginInputs {
    jwk_id: JwkId,
    jwk: Jwk,
    max_epoch: u64,
}

fn zklogin_inputs(v: &Vector) -> ZkLoginInputs {
    let value = v
        .zklogin_requirements
        .as_ref()
        .expect("zklogin vector states its requirements");
    ZkLoginInputs {
        jwk_id: serde_json::from_value(value["jwk_id"].clone()).expect("jwk_id"),
        jwk: serde_json::from_value(value["jwk"].clone()).expect("jwk"),
        max_epoch: value["max_epoch"].as_u64().expect("max_epoch"),
    }
}

/// A verifier with the development Groth16 key and the vector's test issuer key, at `epoch`.
fn zklogin_verifier(inputs: &ZkLoginInputs, epoch: u64) -> SignatureVerifier {
    let mut zklogin = ZkloginVerifier::new_dev();
    zklogin
        .jwks_mut()
        .insert(inputs.jwk_id.clone(), inputs.jwk.clone());
    SignatureVerifier::with_zklogin(zklogin, epoch)
}

fn testdata() -> Option<PathBuf> {
    // One lookup rule for every crate: `$NAUTILUS_TESTDATA`, else `shared/testdata` beside the clone.
    nautilus_test_support::testdata_dir()
}

/// The outcome of the production path: decode, bind the address, verify. zkLogin vectors are
/// checked with their issuer key configured and the chain at their last valid epoch.
fn check(v: &Vector) -> Result<(), SignatureError> {
    let address = parse_address(&v.address).expect("vector address is canonical");
    let message = base64::engine::general_purpose::STANDARD
        .decode(&v.message_base64)
        .expect("vector message is base64");
    let signature = decode_signature_base64(&v.signature_base64)?;
    if v.scheme == "zklogin" {
        let inputs = zklogin_inputs(v);
        return zklogin_verifier(&inputs, inputs.max_epoch)
            .verify(&address, &message, &signature)
            .map(|_| ());
    }
    verify_personal_message(&address, &message, &signature).map(|_| ())
}

#[test]
fn personal_message_vectors_verify_as_expected() {
    let Some(dir) = testdata() else { return };
    let text = std::fs::read_to_string(dir.join("sui/personal_message_vectors.json")).unwrap();
    let vectors: Vectors = serde_json::from_str(&text).unwrap();
    assert!(vectors.vectors.len() >= 7, "vector file shrank");

    let mut checked = 0;
    for (i, v) in vectors.vectors.iter().enumerate() {
        let outcome = check(v);
        println!(
            "vector {i} ({}, expected_valid={}): {:?}",
            v.scheme, v.expected_valid, outcome
        );
        match (v.expected_valid, &outcome) {
            (true, Ok(())) => {}
            // A negative vector must fail in the cryptographic check itself, not earlier on
            // something incidental such as the encoding.
            (false, Err(SignatureError::Invalid { .. })) => {}
            _ => panic!("vector {i} ({}): got {outcome:?}; {}", v.scheme, v.note),
        }
        checked += 1;
    }
    println!("{checked} vectors verified as expected");
    // ed25519, secp256k1 ×2, secp256r1, multisig, zkLogin valid + invalid.
    assert!(checked >= 7);
}

#[test]
fn zklogin_needs_its_inputs_and_an_unexpired_epoch() {
    let Some(dir) = testdata() else { return };
    let text = std::fs::read_to_string(dir.join("sui/personal_message_vectors.json")).unwrap();
    let vectors: Vectors = serde_json::from_str(&text).unwrap();
    let v = vectors
        .vectors
        .iter()
        .find(|v| v.scheme == "zklogin" && v.expected_valid)
        .expect("a valid zklogin vector");
    let inputs = zklogin_inputs(v);
    let address = parse_address(&v.address).unwrap();
    let message = base64::engine::general_purpose::STANDARD
        .decode(&v.message_base64)
        .unwrap();
    let signature = decode_signature_base64(&v.signature_base64).unwrap();

    // Without configured inputs: refused before any cryptography.
    assert_eq!(
        verify_personal_message(&address, &message, &signature),
        Err(SignatureError::ZkLoginNotConfigured)
    );
    // The epoch is not known yet: refused until it is.
    let waiting = zklogin_verifier(&inputs, nautilus_seal::personal_message::UNKNOWN_EPOCH);
    assert_eq!(
        waiting.verify(&address, &message, &signature),
        Err(SignatureError::ZkLoginEpochUnknown)
    );
    waiting
        .epoch_handle()
        .expect("zklogin verifier has an epoch")
        .store(inputs.max_epoch, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        waiting.verify(&address, &message, &signature).map(|_| ()),
        Ok(())
    );
    // The chain has moved past max_epoch: the ephemeral key expired.
    assert_eq!(
        zklogin_verifier(&inputs, inputs.max_epoch + 1).verify(&address, &message, &signature),
        Err(SignatureError::ZkLoginExpired {
            max_epoch: inputs.max_epoch,
            current_epoch: inputs.max_epoch + 1
        })
    );
    // The mainnet verifying key does not accept the test issuer's proof.
    let mut mainnet = ZkloginVerifier::new_mainnet();
    mainnet
        .jwks_mut()
        .insert(inputs.jwk_id.clone(), inputs.jwk.clone());
    assert!(matches!(
        SignatureVerifier::with_zklogin(mainnet, 0).verify(&address, &message, &signature),
        Err(SignatureError::Invalid { .. })
    ));
    // No JWK for the issuer: refused.
    assert!(matches!(
        SignatureVerifier::with_zklogin(ZkloginVerifier::new_dev(), 0)
            .verify(&address, &message, &signature),
        Err(SignatureError::Invalid { .. })
    ));
    // Another address is not one the issuer and seed derive.
    let other = nautilus_seal::Address::new([0x11; 32]);
    assert!(matches!(
        zklogin_verifier(&inputs, 0).verify(&other, &message, &signature),
        Err(SignatureError::AddressMismatch { .. })
    ));
    // Another message fails the proof's inner signature.
    assert!(matches!(
        zklogin_verifier(&inputs, 0).verify(&address, b"hello!", &signature),
        Err(SignatureError::Invalid { .. })
    ));
}

#[test]
fn valid_vectors_fail_for_another_address_or_message() {
    let Some(dir) = testdata() else { return };
    let text = std::fs::read_to_string(dir.join("sui/personal_message_vectors.json")).unwrap();
    let vectors: Vectors = serde_json::from_str(&text).unwrap();
    for v in vectors
        .vectors
        .iter()
        .filter(|v| v.expected_valid && v.scheme != "zklogin")
    {
        let signature = decode_signature_base64(&v.signature_base64).unwrap();
        let message = base64::engine::general_purpose::STANDARD
            .decode(&v.message_base64)
            .unwrap();
        let address = parse_address(&v.address).unwrap();

        let other = nautilus_seal::Address::new([0x11; 32]);
        assert!(matches!(
            verify_personal_message(&other, &message, &signature),
            Err(SignatureError::AddressMismatch { .. })
        ));

        let mut altered = message.clone();
        altered.push(0);
        assert!(matches!(
            verify_personal_message(&address, &altered, &signature),
            Err(SignatureError::Invalid { .. })
        ));
    }
}
