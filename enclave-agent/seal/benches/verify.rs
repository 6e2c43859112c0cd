//! Cost of verifying one seal token, per signature scheme.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use nautilus_seal::{SealVerifier, SignatureScheme, signer::generate_key, unix_now};

fn verify(c: &mut Criterion) {
    let now = unix_now();
    let verifier = SealVerifier::new("bench-cluster");
    for (name, scheme) in [
        ("ed25519", SignatureScheme::Ed25519),
        ("secp256r1", SignatureScheme::Secp256r1),
        ("secp256k1", SignatureScheme::Secp256k1),
    ] {
        let key = generate_key(scheme).unwrap();
        let token = key.mint_for("bench-cluster", now, 900).unwrap();
        verifier.verify(&token, now).unwrap();
        c.bench_function(&format!("verify_{name}"), |b| {
            b.iter(|| verifier.verify(std::hint::black_box(&token), now).unwrap())
        });
    }
}

criterion_group!(benches, verify);
criterion_main!(benches);
