//! Attestation documents (`nautilus_protocol::attestation`): COSE_Sign1 parsing, the payload's
//! CBOR fields and limits, the certificate chain to the real AWS Nitro root G1, the ES384
//! signature, and the policy checked on top.
//!
//! Input: the document bytes. Verification runs at the document's own timestamp, so the real
//! documents of the seed corpus verify all the way and mutations explore every later check.
//! Invariants beyond "no panic":
//! - a verifier with a cold chain cache and one whose cache is warm from earlier inputs give
//!   the same answer (the cache saves signature checks and nothing else), checked on a
//!   sample of the inputs that reach the chain;
//! - whatever verifies also decodes unverified to the same document, and its chain starts
//!   with the AWS root byte for byte;
//! - the policy's time arithmetic holds at the ends of the clock.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nautilus_protocol::attestation::{self, TrustAnchor, Verifier, VerifyAt};
use nautilus_protocol::policy::Policy;

fn warm() -> &'static Verifier {
    static WARM: OnceLock<Verifier> = OnceLock::new();
    WARM.get_or_init(|| Verifier::new(TrustAnchor::aws_nitro_root_g1()))
}

fuzz_target!(|data: &[u8]| {
    let decoded = attestation::decode_unverified(data);
    let first = warm().verify(data, VerifyAt::DocumentTimestamp);
    // A cold chain is four P-384 signature checks: compare with one for an eighth of the
    // inputs that get as far as the chain (chosen by their bytes, so a run reproduces).
    let sample = data
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .is_multiple_of(8);
    if decoded.is_ok() && sample {
        let cold = Verifier::new(TrustAnchor::aws_nitro_root_g1());
        let uncached = cold.verify(data, VerifyAt::DocumentTimestamp);
        match (&uncached, &first) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "the cache changed the error")
            }
            _ => panic!("cold {uncached:?} but warm {first:?}"),
        }
    }
    if decoded.is_err() {
        assert!(first.is_err(), "verified what does not decode");
    }
    if let Ok(verified) = &first {
        assert_eq!(decoded.as_ref().ok(), Some(verified));
        assert_eq!(
            verified.cabundle.first().map(Vec::as_slice),
            Some(TrustAnchor::aws_nitro_root_g1().der())
        );
    }
    let Ok(document) = decoded else {
        return;
    };
    let _ = document.debug_mode();
    let policy = Policy {
        max_age_ms: Some(1),
        max_clock_skew_ms: 1,
        challenge: Some(vec![0; 32]),
        binding: Some(vec![1; 33]),
        ..Policy::default()
    }
    .with_pcr(0, vec![0; 48]);
    for at_ms in [0, 1, document.timestamp_ms, u64::MAX] {
        let _ = policy.check(&document, at_ms);
        let _ = Policy::default().check(&document, at_ms);
    }
});
