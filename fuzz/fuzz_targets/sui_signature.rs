//! Sui serialized signatures (`nautilus_seal::personal_message`): ed25519, secp256k1,
//! secp256r1, multisig and zkLogin (Groth16 proof, JWT header and issuer inside), decoded and
//! verified over a personal message exactly as the seal-token verifier does.
//!
//! Input: one byte `n`, `n` bytes of message, then the signature bytes. The claimed address is
//! the one the signature derives, so every input that decodes reaches the cryptography.
//! zkLogin is configured with the dev verifying key and, when `../shared/testdata` is there,
//! the test issuer's JWK its vector names (read at run time, never copied), at epoch 0.
//! Invariants beyond "no panic":
//! - decoding is canonical: the parsed signature re-encodes to the input bytes, and its
//!   base64 text decodes to the same signature;
//! - verification gives the same answer twice, and a signature that verifies for a message
//!   does not verify for that message with a byte appended.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use nautilus_seal::personal_message::{self, SignatureVerifier};
use nautilus_seal::{Jwk, JwkId, ZkloginVerifier};

fn verifier() -> &'static SignatureVerifier {
    static VERIFIER: OnceLock<SignatureVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        let mut zklogin = ZkloginVerifier::new_dev();
        if let Some((id, jwk)) = test_issuer_jwk() {
            zklogin.jwks_mut().insert(id, jwk);
        }
        SignatureVerifier::with_zklogin(zklogin, 0)
    })
}

/// The JWK the zkLogin vector of the shared test data names, if the data is there.
fn test_issuer_jwk() -> Option<(JwkId, Jwk)> {
    let dir = nautilus_test_support::locate().ok()?;
    let text = std::fs::read_to_string(dir.join("sui/personal_message_vectors.json")).ok()?;
    let file: serde_json::Value = serde_json::from_str(&text).ok()?;
    let vectors = file["vectors"].as_array()?;
    let needs = vectors.iter().find_map(|v| v.get("zklogin_requirements"))?;
    Some((
        serde_json::from_value(needs["jwk_id"].clone()).ok()?,
        serde_json::from_value(needs["jwk"].clone()).ok()?,
    ))
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (message, bytes) = rest.split_at(usize::from(n).min(rest.len()));
    let Ok(signature) = personal_message::decode_signature(bytes) else {
        return;
    };
    assert_eq!(
        signature.to_bytes(),
        bytes,
        "non-canonical encoding accepted"
    );
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    let again = personal_message::decode_signature_base64(&text).expect("its own base64");
    assert_eq!(again, signature);

    let Ok(addresses) = personal_message::signer_addresses(&signature) else {
        return;
    };
    for address in addresses.iter().take(2) {
        let verdict = verifier().verify(address, message, &signature);
        let twice = verifier().verify(address, message, &signature);
        assert_eq!(
            verdict.is_ok(),
            twice.is_ok(),
            "verification is not deterministic"
        );
        if verdict.is_ok() {
            let mut longer = message.to_vec();
            longer.push(0);
            assert!(
                verifier().verify(address, &longer, &signature).is_err(),
                "a signature verified for two messages"
            );
        }
    }
});
