//! Seal tokens end to end: mint with each key scheme, verify, and every way to be refused.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use base64::Engine as _;
use nautilus_seal::{
    Claims, KeystoreKey, SealError, SealVerifier, SignatureError, SignatureScheme,
    signer::generate_key, token,
};
use proptest::prelude::*;
use rstest::rstest;
use sui_crypto::multisig::MultisigAggregator;
use sui_sdk_types::{MultisigCommittee, MultisigMember, PersonalMessage};

const AUD: &str = "cluster-a.example";
const NOW: u64 = 1_750_000_000;

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn new_key(scheme: SignatureScheme) -> KeystoreKey {
    generate_key(scheme).expect("simple scheme")
}

fn claims(key: &KeystoreKey) -> Claims {
    Claims::new(&key.address(), AUD, NOW, 900)
}

/// A token whose payload is exactly `payload`, signed by `key` (for payloads `mint` would not
/// produce: unknown fields, bad versions, other addresses).
fn sign_raw(key: &KeystoreKey, payload: &[u8]) -> String {
    token::encode(payload, &key.sign_personal_message(payload).unwrap())
}

fn verifier() -> SealVerifier {
    SealVerifier::new(AUD)
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

#[rstest]
#[case::ed25519(SignatureScheme::Ed25519)]
#[case::secp256k1(SignatureScheme::Secp256k1)]
#[case::secp256r1(SignatureScheme::Secp256r1)]
fn mint_then_verify(#[case] scheme: SignatureScheme) {
    let key = new_key(scheme);
    let claims = claims(&key);
    let token = key.mint(&claims).unwrap();
    assert!(token.starts_with("sui-seal.v1."));
    let verified = verifier().verify(&token, NOW + 60).unwrap();
    assert_eq!(verified.address, key.address());
    assert_eq!(verified.audience, AUD);
    assert_eq!(verified.issued_at, NOW);
    assert_eq!(verified.expires_at, NOW + 900);
    assert_eq!(verified.not_before, None);
    assert_eq!(verified.id, claims.jti);
    assert_eq!(verified.scheme, scheme);
}

#[test]
fn payload_is_the_documented_json() {
    let key = new_key(SignatureScheme::Ed25519);
    let token = key.mint(&claims(&key)).unwrap();
    let payload = b64url().decode(&segments(&token)[2]).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    let object = json.as_object().unwrap();
    let mut fields: Vec<&str> = object.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["addr", "aud", "exp", "iat", "jti", "v"]);
    assert_eq!(json["v"], 1);
    assert_eq!(json["addr"], key.address().to_string());
    assert_eq!(json["jti"].as_str().unwrap().len(), 32);
}

#[test]
fn jti_is_fresh_per_token() {
    let key = new_key(SignatureScheme::Ed25519);
    assert_ne!(claims(&key).jti, claims(&key).jti);
}

#[test]
fn not_before_in_the_past_is_accepted_and_reported() {
    let key = new_key(SignatureScheme::Ed25519);
    let token = key
        .mint(&Claims {
            nbf: Some(NOW + 10),
            ..claims(&key)
        })
        .unwrap();
    assert_eq!(
        verifier().verify(&token, NOW + 20).unwrap().not_before,
        Some(NOW + 10)
    );
}

#[test]
fn clock_skew_is_allowed_on_both_ends() {
    let key = new_key(SignatureScheme::Ed25519);
    let token = key.mint(&claims(&key)).unwrap();
    // 20 s before issue and 20 s after expiry: inside the default 30 s allowance.
    verifier().verify(&token, NOW - 20).unwrap();
    verifier().verify(&token, NOW + 900 + 20).unwrap();
    // With no allowance the same instants fail.
    let strict = verifier().with_clock_skew(0);
    assert!(matches!(
        strict.verify(&token, NOW - 20),
        Err(SealError::IssuedInFuture { .. })
    ));
    assert!(matches!(
        strict.verify(&token, NOW + 920),
        Err(SealError::Expired { .. })
    ));
}

#[test]
fn multisig_token_binds_to_the_committee_address() {
    let members = [
        new_key(SignatureScheme::Ed25519),
        new_key(SignatureScheme::Secp256k1),
        new_key(SignatureScheme::Secp256r1),
    ];
    let committee = MultisigCommittee::new(
        members
            .iter()
            .map(|k| MultisigMember::new(k.public_key(), 1))
            .collect(),
        2,
    );
    let address = committee.derive_address();
    let payload = serde_json::to_vec(&Claims::new(&address, AUD, NOW, 900)).unwrap();
    let mut aggregator = MultisigAggregator::new_with_message(
        committee,
        &PersonalMessage(payload.as_slice().into()),
    );
    for member in &members[..2] {
        aggregator
            .add_signature(member.sign_personal_message(&payload).unwrap())
            .unwrap();
    }
    let signature = aggregator.finish().unwrap();
    let token = token::encode(&payload, &sui_sdk_types::UserSignature::Multisig(signature));
    let verified = verifier().verify(&token, NOW).unwrap();
    assert_eq!(verified.address, address);
    assert_eq!(verified.scheme, SignatureScheme::Multisig);

    // One member's own signature does not speak for the committee address.
    let single = token::encode(
        &payload,
        &members[0].sign_personal_message(&payload).unwrap(),
    );
    assert!(matches!(
        verifier().verify(&single, NOW),
        Err(SealError::Signature {
            source: SignatureError::AddressMismatch { .. },
            ..
        })
    ));
}

/// Each refusal, by name, with the distinct error it must produce.
#[rstest]
#[case::expired("expired")]
#[case::not_yet_valid("not_yet_valid")]
#[case::issued_in_future("issued_in_future")]
#[case::lifetime_too_long("lifetime_too_long")]
#[case::expires_before_issued("expires_before_issued")]
#[case::wrong_audience("wrong_audience")]
#[case::address_not_signer("address_not_signer")]
#[case::tampered_payload("tampered_payload")]
#[case::tampered_signature("tampered_signature")]
#[case::wrong_prefix("wrong_prefix")]
#[case::wrong_version("wrong_version")]
#[case::too_few_segments("too_few_segments")]
#[case::too_many_segments("too_many_segments")]
#[case::oversize("oversize")]
#[case::garbage_payload_base64("garbage_payload_base64")]
#[case::padded_payload_base64("padded_payload_base64")]
#[case::garbage_signature_base64("garbage_signature_base64")]
#[case::signature_not_sui("signature_not_sui")]
#[case::unknown_field("unknown_field")]
#[case::missing_field("missing_field")]
#[case::duplicate_field("duplicate_field")]
#[case::payload_version("payload_version")]
#[case::address_not_canonical("address_not_canonical")]
#[case::bad_jti("bad_jti")]
#[case::empty("empty")]
fn refusals(#[case] name: &str) {
    let key = new_key(SignatureScheme::Ed25519);
    let other = new_key(SignatureScheme::Secp256k1);
    let base = claims(&key);
    let good = key.mint(&base).unwrap();
    let parts = segments(&good);
    let mint = |c: Claims| key.mint(&c).unwrap();
    let json_with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = serde_json::to_value(&base).unwrap();
        f(&mut v);
        sign_raw(&key, &serde_json::to_vec(&v).unwrap())
    };

    let token = match name {
        "expired" => mint(Claims {
            iat: NOW - 3000,
            exp: NOW - 600,
            ..base.clone()
        }),
        "not_yet_valid" => mint(Claims {
            nbf: Some(NOW + 600),
            ..base.clone()
        }),
        "issued_in_future" => mint(Claims {
            iat: NOW + 600,
            exp: NOW + 900,
            ..base.clone()
        }),
        "lifetime_too_long" => mint(Claims {
            exp: NOW + 7200,
            ..base.clone()
        }),
        "expires_before_issued" => mint(Claims {
            exp: NOW,
            ..base.clone()
        }),
        "wrong_audience" => mint(Claims {
            aud: "cluster-b.example".into(),
            ..base.clone()
        }),
        // Signed by `key`, claiming `other`'s address.
        "address_not_signer" => json_with(&|v| v["addr"] = other.address().to_string().into()),
        "tampered_payload" => {
            let mut payload = b64url().decode(&parts[2]).unwrap();
            // Flip one hex digit of the jti: still valid JSON and a valid jti.
            let at = payload.len() - 3;
            payload[at] = if payload[at] == b'0' { b'1' } else { b'0' };
            format!("sui-seal.v1.{}.{}", b64url().encode(payload), parts[3])
        }
        "tampered_signature" => {
            let mut sig = base64::engine::general_purpose::STANDARD
                .decode(&parts[3])
                .unwrap();
            sig[5] ^= 0x01; // inside the 64 signature bytes (after the flag)
            format!(
                "sui-seal.v1.{}.{}",
                parts[2],
                base64::engine::general_purpose::STANDARD.encode(sig)
            )
        }
        "wrong_prefix" => good.replacen("sui-seal.", "sui-seel.", 1),
        "wrong_version" => good.replacen(".v1.", ".v2.", 1),
        "too_few_segments" => format!("sui-seal.v1.{}", parts[2]),
        "too_many_segments" => format!("{good}.x"),
        "oversize" => format!("{good}{}", "A".repeat(token::MAX_TOKEN_BYTES)),
        "garbage_payload_base64" => format!("sui-seal.v1.@@not*base64.{}", parts[3]),
        "padded_payload_base64" => format!("sui-seal.v1.{}=.{}", parts[2], parts[3]),
        "garbage_signature_base64" => format!("sui-seal.v1.{}.%%%%", parts[2]),
        "signature_not_sui" => format!("sui-seal.v1.{}.CQAAAA==", parts[2]),
        "unknown_field" => json_with(&|v| v["role"] = "admin".into()),
        "missing_field" => json_with(&|v| {
            v.as_object_mut().unwrap().remove("jti");
        }),
        "duplicate_field" => {
            let json = serde_json::to_string(&base).unwrap();
            let doubled = json.replacen("{\"v\":1,", "{\"v\":1,\"v\":1,", 1);
            assert_ne!(json, doubled);
            sign_raw(&key, doubled.as_bytes())
        }
        "payload_version" => json_with(&|v| v["v"] = 2.into()),
        "address_not_canonical" => {
            json_with(&|v| v["addr"] = key.address().to_string().to_uppercase().into())
        }
        "bad_jti" => json_with(&|v| v["jti"] = "not-random".into()),
        "empty" => String::new(),
        other => panic!("unknown case {other}"),
    };

    let err = verifier().verify(&token, NOW + 60).unwrap_err();
    let message = err.to_string();
    assert!(
        !message.contains(&token) || token.is_empty(),
        "error leaks the token"
    );
    assert_eq!(
        message.chars().next().map(char::is_lowercase),
        Some(true),
        "{message}"
    );
    let matched = match name {
        "expired" => matches!(err, SealError::Expired { .. }),
        "not_yet_valid" => matches!(err, SealError::NotYetValid { .. }),
        "issued_in_future" => matches!(err, SealError::IssuedInFuture { .. }),
        "lifetime_too_long" => matches!(
            err,
            SealError::LifetimeTooLong {
                lifetime: 7200,
                max: 3600
            }
        ),
        "expires_before_issued" => matches!(err, SealError::ExpiresBeforeIssued { .. }),
        "wrong_audience" => matches!(err, SealError::WrongAudience { .. }),
        "address_not_signer" => matches!(
            err,
            SealError::Signature {
                source: SignatureError::AddressMismatch { .. },
                ..
            }
        ),
        "tampered_payload" | "tampered_signature" => matches!(
            err,
            SealError::Signature {
                source: SignatureError::Invalid { .. },
                ..
            }
        ),
        "wrong_prefix" => err == SealError::WrongPrefix,
        "wrong_version" => err == SealError::UnsupportedVersion,
        "too_few_segments" | "too_many_segments" => err == SealError::Malformed,
        "oversize" => matches!(err, SealError::TooLarge { max: 8192, .. }),
        "garbage_payload_base64" | "padded_payload_base64" => err == SealError::PayloadBase64,
        "garbage_signature_base64" => matches!(
            err,
            SealError::Signature {
                source: SignatureError::Base64,
                ..
            }
        ),
        "signature_not_sui" => matches!(
            err,
            SealError::Signature {
                source: SignatureError::Encoding { .. },
                ..
            }
        ),
        "unknown_field" => {
            matches!(&err, SealError::PayloadJson { reason } if reason.contains("unknown field"))
        }
        "missing_field" => {
            matches!(&err, SealError::PayloadJson { reason } if reason.contains("missing field"))
        }
        "duplicate_field" => {
            matches!(&err, SealError::PayloadJson { reason } if reason.contains("duplicate field"))
        }
        "payload_version" => err == SealError::PayloadVersion { version: 2 },
        "address_not_canonical" => err == SealError::InvalidAddress,
        "bad_jti" => err == SealError::InvalidId,
        "empty" => err == SealError::Empty,
        _ => false,
    };
    assert!(matched, "{name}: unexpected error {err:?}");
}

#[test]
fn oversize_is_refused_before_decoding() {
    // Not even a seal prefix: size is the first check.
    let token = "x".repeat(token::MAX_TOKEN_BYTES + 1);
    assert_eq!(
        verifier().verify(&token, NOW),
        Err(SealError::TooLarge {
            len: token::MAX_TOKEN_BYTES + 1,
            max: token::MAX_TOKEN_BYTES
        })
    );
}

#[test]
fn max_lifetime_is_configurable() {
    let key = new_key(SignatureScheme::Ed25519);
    let token = key.mint(&claims(&key)).unwrap(); // 900 s
    assert!(matches!(
        verifier().with_max_lifetime(600).verify(&token, NOW),
        Err(SealError::LifetimeTooLong { .. })
    ));
    verifier()
        .with_max_lifetime(900)
        .verify(&token, NOW)
        .unwrap();
}

fn fixture_tokens() -> &'static [String] {
    static TOKENS: OnceLock<Vec<String>> = OnceLock::new();
    TOKENS.get_or_init(|| {
        [SignatureScheme::Ed25519, SignatureScheme::Secp256r1]
            .into_iter()
            .map(|scheme| {
                let key = new_key(scheme);
                key.mint(&claims(&key)).unwrap()
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
    FlipBit(usize, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let printable = 0x20u8..0x7f;
    prop_oneof![
        (any::<usize>(), printable.clone()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        (any::<usize>(), printable).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0u8..8).prop_map(|(i, bit)| Mutation::FlipBit(i, bit)),
    ]
}

fn apply(token: &str, mutations: &[Mutation]) -> String {
    let mut bytes = token.as_bytes().to_vec();
    for m in mutations {
        let len = bytes.len().max(1);
        match *m {
            Mutation::Replace(i, b) if !bytes.is_empty() => bytes[i % len] = b,
            Mutation::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Mutation::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % len),
            Mutation::FlipBit(i, bit) if !bytes.is_empty() => bytes[i % len] ^= 1 << bit,
            _ => {}
        }
    }
    // Bit flips may leave invalid UTF-8; the verifier takes &str, so use the lossy form.
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 384,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No mutation of a valid token panics, and none verifies unless it is the original.
    #[test]
    fn mutated_tokens_never_verify(
        which in 0usize..2,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let original = &fixture_tokens()[which];
        let mutated = apply(original, &mutations);
        match verifier().verify(&mutated, NOW + 1) {
            Ok(_) => prop_assert_eq!(&mutated, original),
            // Short fragments ("s", "sui") may appear in any message; a whole token must not.
            Err(e) => prop_assert!(mutated.len() < 64 || !e.to_string().contains(&mutated)),
        }
    }

    /// Arbitrary strings, with or without the prefix, never panic and never verify.
    #[test]
    fn arbitrary_strings_never_verify(body in ".{0,300}") {
        prop_assert!(verifier().verify(&body, NOW).is_err());
        let prefixed = format!("sui-seal.v1.{body}");
        prop_assert!(verifier().verify(&prefixed, NOW).is_err());
    }
}
