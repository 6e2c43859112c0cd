//! Time to verify attestation documents.
//!
//! - `attestation/real/cold`: one real AWS document with an empty cache: payload decoding,
//!   four certificate signatures, the COSE signature. What a verifier pays the first time it
//!   sees a chain.
//! - `attestation/real/warm`: the same document again: the chain's signatures are cached, the
//!   certificates are parsed and their validity, names and constraints checked again, and the
//!   COSE signature is verified. What each refresh costs: AWS leaves belong to one enclave and
//!   live for three hours, so a refresh (a new document, new nonce) brings the same chain.
//! - `attestation/new-leaf/warm-ca`: a new leaf under cached intermediates (a restarted enclave
//!   on a known parent instance): the leaf's signature and the COSE signature. Simulated
//!   documents, because only AWS can issue a new leaf under its chain; their crypto and sizes
//!   are AWS's.
//! - `attestation/refresh/{shared,unshared}/N`: one refresh round over N resources whose
//!   documents share a cabundle (each with its own leaf), per document: with one cache shared
//!   by all resources (what the operator does) and with a fresh verifier per verification
//!   (what it did before). The per-document time must not grow with N.
//!
//! `benches/side_by_side.sh` runs this together with an OpenSSL-based verifier
//! (`benches/openssl_peer.py`) on the same document.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nautilus_protocol::attestation::now_unix_millis;
use nautilus_protocol::{ChainCache, Nsm as _, SimulatedNsm, TrustAnchor, Verifier, VerifyAt};
use nautilus_test_support::nitro_dir;

const DOCUMENT: &str = "turnkey-prod-2024-07-16.cbor";

/// Resources per refresh round.
const RESOURCES: [usize; 3] = [1, 16, 128];

fn real(c: &mut Criterion) {
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
    let mut group = c.benchmark_group("attestation/real");
    group.bench_function("cold", |b| {
        b.iter_batched(
            || verifier.cache().clear(),
            |()| verifier.verify(black_box(&bytes), VerifyAt::DocumentTimestamp),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("warm", |b| {
        b.iter(|| verifier.verify(black_box(&bytes), VerifyAt::DocumentTimestamp))
    });
    group.finish();
}

/// `count` documents from one simulated NSM: one shared cabundle, a leaf each.
fn simulated(count: usize) -> Option<(TrustAnchor, Vec<Vec<u8>>)> {
    let nsm = SimulatedNsm::new().ok()?;
    let anchor = TrustAnchor::from_pem(nsm.root_pem()).ok()?;
    let documents = (0..count)
        .map(|i| {
            let nonce = (i as u64).to_be_bytes();
            nsm.attest(Some(&[1; 33]), Some(&nonce), Some(&[2; 120]))
                .ok()
        })
        .collect::<Option<Vec<_>>>()?;
    Some((anchor, documents))
}

fn new_leaf(c: &mut Criterion) {
    let Some((anchor, documents)) = simulated(2) else {
        println!("skipped: simulated nsm unavailable");
        return;
    };
    let at = VerifyAt::UnixMillis(now_unix_millis().unwrap_or_default());
    let verifier = Verifier::new(anchor);
    let (warming, fresh) = (&documents[0], &documents[1]);
    c.bench_function("attestation/new-leaf/warm-ca", |b| {
        b.iter_batched(
            || {
                // Intermediates cached through another document; this leaf never seen.
                verifier.cache().clear();
                verifier.verify(warming, at).is_ok()
            },
            |warmed| (warmed, verifier.verify(black_box(fresh), at)),
            BatchSize::PerIteration,
        )
    });
}

fn refresh(c: &mut Criterion) {
    let Some((anchor, documents)) = simulated(RESOURCES[RESOURCES.len() - 1]) else {
        println!("skipped: simulated nsm unavailable");
        return;
    };
    let at = VerifyAt::UnixMillis(now_unix_millis().unwrap_or_default());
    let mut group = c.benchmark_group("attestation/refresh");
    group.sample_size(20);
    for n in RESOURCES {
        let round = &documents[..n];
        group.throughput(Throughput::Elements(n as u64));
        // One cache for every resource, warm from the previous round.
        let shared = Verifier::with_cache(anchor.clone(), Arc::new(ChainCache::default()));
        let warmed = round.iter().all(|doc| shared.verify(doc, at).is_ok());
        assert!(warmed, "simulated documents verify");
        group.bench_with_input(BenchmarkId::new("shared", n), round, |b, round| {
            b.iter(|| {
                round
                    .iter()
                    .filter(|doc| shared.verify(black_box(doc), at).is_ok())
                    .count()
            })
        });
        // A new verifier for every verification: nothing is remembered.
        group.bench_with_input(BenchmarkId::new("unshared", n), round, |b, round| {
            b.iter(|| {
                round
                    .iter()
                    .filter(|doc| {
                        Verifier::new(anchor.clone())
                            .verify(black_box(doc), at)
                            .is_ok()
                    })
                    .count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, real, new_leaf, refresh);
criterion_main!(benches);
