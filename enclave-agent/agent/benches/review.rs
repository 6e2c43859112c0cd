//! TokenReview throughput with a warm stake cache: what kube-apiserver sees per request once an
//! address's stake is known (parse, seal-token signature verification, tier mapping, answer).
//!
//! `cargo bench -p nautilus-agent --bench review`

use std::collections::HashMap;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nautilus_agent::stake::{ReadStake, StakeCache, StakeError};
use nautilus_agent::webhook::Authenticator;
use nautilus_seal::signer::generate_key;
use nautilus_seal::{Address, SealVerifier, SignatureScheme, Tier, Tiers, unix_now};

struct Ledger(HashMap<Address, u64>);

impl ReadStake for Ledger {
    async fn stake_of(&self, owner: Address) -> Result<u64, StakeError> {
        Ok(self.0.get(&owner).copied().unwrap_or(0))
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let tiers = Tiers::new(vec![
        Tier {
            name: "admin".into(),
            min_stake_mist: 10_000,
            groups: vec!["system:masters".into()],
        },
        Tier {
            name: "reader".into(),
            min_stake_mist: 100,
            groups: vec![],
        },
    ])
    .expect("tiers");
    let mut group = c.benchmark_group("token_review_warm");
    group.throughput(Throughput::Elements(1));
    for scheme in [
        SignatureScheme::Ed25519,
        SignatureScheme::Secp256k1,
        SignatureScheme::Secp256r1,
    ] {
        let key = generate_key(scheme).expect("key");
        let ledger = Ledger(HashMap::from([(key.address(), 50_000)]));
        let auth = Authenticator::new(
            SealVerifier::new("team-a/demo"),
            tiers.clone(),
            StakeCache::new(ledger, Duration::from_secs(3600), 1024),
        );
        let token = key.mint_for("team-a/demo", unix_now(), 900).expect("mint");
        let body = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token}
        }))
        .expect("json");
        let warm = runtime.block_on(auth.review(&body, unix_now()));
        assert_eq!(warm.status.map(|s| s.authenticated), Some(true));
        group.bench_function(format!("{scheme:?}"), |b| {
            b.iter(|| runtime.block_on(auth.review(&body, unix_now())))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
