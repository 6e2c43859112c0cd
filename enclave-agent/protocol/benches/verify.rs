//! Time to verify one real Nitro attestation document (COSE signature, four certificate
//! signatures, payload decoding) at its own timestamp.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use nautilus_protocol::testdata::nitro_dir;
use nautilus_protocol::{Verifier, VerifyAt};

const DOCUMENT: &str = "turnkey-prod-2024-07-16.cbor";

fn verify(c: &mut Criterion) {
    let Some(dir) = nitro_dir() else { return };
    let Ok(bytes) = std::fs::read(dir.join(DOCUMENT)) else {
        println!("skipped: {DOCUMENT} not found in {}", dir.display());
        return;
    };
    let verifier = Verifier::default();
    if let Err(e) = verifier.verify(&bytes, VerifyAt::DocumentTimestamp) {
        println!("skipped: {DOCUMENT} does not verify: {e}");
        return;
    }
    c.bench_function("verify real nitro document", |b| {
        b.iter(|| verifier.verify(black_box(&bytes), VerifyAt::DocumentTimestamp))
    });
}

criterion_group!(benches, verify);
criterion_main!(benches);
