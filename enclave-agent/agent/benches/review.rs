//! TokenReview cost as kube-apiserver sees it.
//!
//! - `token_review_warm/*`: the address's stake is cached (parse, seal-token signature
//!   verification, tier mapping, answer), per signature scheme, plus reviews/s and p99 with one
//!   worker per core.
//! - `token_review_cold`: an empty cache, so each review also reads the stake from a local Sui
//!   full node (`nautilus-sui-fixture`: the real `sui-rpc` services over loopback HTTP/2,
//!   `GetServiceInfo` + `ListOwnedObjects`) through the real `SuiStakeReader`.
//!
//! `cargo bench -p nautilus-agent --bench review`

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
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

/// An authenticator whose cache already holds the stake of one key, and a review body for it.
fn warm(
    scheme: SignatureScheme,
    runtime: &tokio::runtime::Runtime,
) -> (Authenticator<Ledger>, Vec<u8>) {
    let tiers = Tiers::new(vec![
        Tier {
            name: "admin".into(),
            min_stake_mist: 10_000,
            groups: vec!["system:masters".into()],
            identity: Default::default(),
        },
        Tier {
            name: "reader".into(),
            min_stake_mist: 100,
            groups: vec![],
            identity: Default::default(),
        },
    ])
    .expect("tiers");
    let key = generate_key(scheme).expect("key");
    let ledger = Ledger(HashMap::from([(key.address(), 50_000)]));
    let auth = Authenticator::new(
        SealVerifier::new("team-a/demo"),
        tiers,
        StakeCache::new(ledger, Duration::from_secs(3600), 1024),
    );
    let token = key.mint_for("team-a/demo", unix_now(), 900).expect("mint");
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token}
    }))
    .expect("json");
    let first = runtime.block_on(auth.review(&body, unix_now()));
    assert_eq!(first.status.map(|s| s.authenticated), Some(true));
    (auth, body)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn bench(c: &mut Criterion) {
    let runtime = runtime();
    let mut group = c.benchmark_group("token_review_warm");
    group.throughput(Throughput::Elements(1));
    for scheme in [
        SignatureScheme::Ed25519,
        SignatureScheme::Secp256k1,
        SignatureScheme::Secp256r1,
    ] {
        let (auth, body) = warm(scheme, &runtime);
        group.bench_function(format!("{scheme:?}"), |b| {
            b.iter(|| runtime.block_on(auth.review(&body, unix_now())))
        });
    }
    group.finish();
}

/// Reviews per second and latency percentiles with one worker per core, as the webhook serves
/// concurrent API-server requests (ed25519 tokens, warm cache).
fn throughput_on_all_cores() {
    const PER_WORKER: usize = 20_000;
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (auth, body) = warm(SignatureScheme::Ed25519, &runtime());
    let auth = Arc::new(auth);
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (auth, body) = (Arc::clone(&auth), body.clone());
            std::thread::spawn(move || {
                let runtime = runtime();
                (0..PER_WORKER)
                    .map(|_| {
                        let t = Instant::now();
                        let answer = runtime.block_on(auth.review(&body, unix_now()));
                        assert_eq!(answer.status.map(|s| s.authenticated), Some(true));
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("worker"))
        .collect();
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let at = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "token_review_warm/Ed25519 on {workers} workers: {:.0} reviews/s, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.50),
        at(0.99),
        latencies[latencies.len() - 1]
    );
}

/// A review whose stake lookup goes to the fixture full node every time.
fn cold(c: &mut Criterion) {
    use nautilus_agent::stake::{StakeConfig, SuiStakeReader};
    use nautilus_sui_fixture::{Chain, serve};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let key = generate_key(SignatureScheme::Ed25519).expect("key");
    let chain = Arc::new(Chain::default().with_stake(key.address(), 50_000));
    let addr = runtime.block_on(serve(chain));
    let client =
        runtime.block_on(async { sui_rpc::Client::new(format!("http://{addr}")).expect("client") });
    let tiers = || {
        Tiers::new(vec![Tier {
            name: "reader".into(),
            min_stake_mist: 100,
            groups: vec![],
            identity: Default::default(),
        }])
        .expect("tiers")
    };
    let token = key.mint_for("team-a/demo", unix_now(), 900).expect("mint");
    let body = serde_json::to_vec(&serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": token}
    }))
    .expect("json");

    let mut group = c.benchmark_group("token_review_cold");
    group.throughput(Throughput::Elements(1));
    group.bench_function("Ed25519/loopback_grpc", |b| {
        b.iter(|| {
            // A fresh cache per review: every review is a miss.
            let reader =
                SuiStakeReader::new(client.clone(), StakeConfig::default()).expect("reader");
            let auth = Authenticator::new(
                SealVerifier::new("team-a/demo"),
                tiers(),
                StakeCache::new(reader, Duration::from_secs(3600), 16),
            );
            let answer = runtime.block_on(auth.review(&body, unix_now()));
            assert_eq!(answer.status.map(|s| s.authenticated), Some(true));
        })
    });
    group.finish();
}

criterion_group!(benches, bench, cold);

fn main() {
    benches();
    throughput_on_all_cores();
    Criterion::default().configure_from_args().final_summary();
}
