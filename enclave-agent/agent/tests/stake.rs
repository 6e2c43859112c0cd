//! Stake lookups against a local gRPC server that implements the real `sui-rpc`
//! `StateService` and `LedgerService` traits over fixture chain state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nautilus_agent::stake::{ReadStake, StakeCache, StakeConfig, StakeError, SuiStakeReader};
use nautilus_sui_fixture::{CHAIN_ID, Chain, EPOCH, serve, staked_sui};
use sui_sdk_types::Address;

const CUSTOM_TYPE: &str = "0xabc::vault::Locked";

fn custom(n: u8, amount: &str) -> sui_rpc::proto::sui::rpc::v2::Object {
    nautilus_sui_fixture::custom(n, CUSTOM_TYPE, amount)
}

fn reader(addr: SocketAddr, config: StakeConfig) -> SuiStakeReader {
    let client = sui_rpc::Client::new(format!("http://{addr}")).expect("client");
    SuiStakeReader::new(client, config).expect("valid config")
}

fn alice() -> Address {
    Address::new([0x11; 32])
}

fn fixture() -> Chain {
    let mut owned = HashMap::new();
    owned.insert(
        alice(),
        vec![
            staked_sui(1, 10, 4_000),
            staked_sui(2, EPOCH, 3_000),
            custom(3, "999999"),
            staked_sui(4, 500, 2_500),
            staked_sui(5, EPOCH + 1, 1_000_000), // activates next epoch: not counted yet
            staked_sui(6, 1, 500),
        ],
    );
    Chain {
        owned,
        page_limit: 2,
        ..Chain::default()
    }
}

#[tokio::test]
async fn sums_active_principal_across_pages() {
    let chain = Arc::new(fixture());
    let addr = serve(Arc::clone(&chain)).await;
    let config = StakeConfig {
        expected_chain_id: Some(CHAIN_ID.into()),
        ..StakeConfig::default()
    };
    let stake = reader(addr, config)
        .stake_of(alice())
        .await
        .expect("lookup succeeds");
    assert_eq!(stake, 4_000 + 3_000 + 2_500 + 500);
    // Five StakedSui objects, two per page.
    assert_eq!(chain.list_calls.load(Ordering::SeqCst), 3);
    let nobody = reader(addr, StakeConfig::default())
        .stake_of(Address::new([9; 32]))
        .await;
    assert_eq!(nobody, Ok(0));
}

#[tokio::test]
async fn a_withdrawn_stake_reads_as_zero() {
    let chain = Arc::new(fixture());
    let addr = serve(Arc::clone(&chain)).await;
    let before = reader(addr, StakeConfig::default()).stake_of(alice()).await;
    assert_eq!(before, Ok(4_000 + 3_000 + 2_500 + 500));
    chain.withdraw(alice());
    let after = reader(addr, StakeConfig::default()).stake_of(alice()).await;
    assert_eq!(after, Ok(0));
}

#[tokio::test]
async fn custom_type_counts_the_named_field() {
    let chain = Arc::new(fixture());
    let addr = serve(chain).await;
    let config = StakeConfig {
        stake_type: CUSTOM_TYPE.into(),
        amount_field: Some("amount".into()),
        ..StakeConfig::default()
    };
    assert_eq!(
        reader(addr, config.clone()).stake_of(alice()).await,
        Ok(999_999)
    );
    let wrong_field = StakeConfig {
        amount_field: Some("missing".into()),
        ..config
    };
    let err = reader(addr, wrong_field)
        .stake_of(alice())
        .await
        .expect_err("no such field");
    assert!(
        matches!(err, StakeError::Decode { ref reason, .. } if reason.contains("no field missing")),
        "{err}"
    );
}

#[tokio::test]
async fn custom_type_without_amount_field_is_refused() {
    let client = sui_rpc::Client::new("http://127.0.0.1:1").expect("client");
    let config = StakeConfig {
        stake_type: CUSTOM_TYPE.into(),
        ..StakeConfig::default()
    };
    let err = SuiStakeReader::new(client, config).expect_err("needs a field");
    assert_eq!(err, StakeError::MissingAmountField(CUSTOM_TYPE.into()));
}

#[tokio::test]
async fn wrong_chain_is_refused() {
    let addr = serve(Arc::new(fixture())).await;
    let config = StakeConfig {
        expected_chain_id: Some("11111111111111111111111111111111".into()),
        ..StakeConfig::default()
    };
    let err = reader(addr, config)
        .stake_of(alice())
        .await
        .expect_err("other chain");
    assert!(matches!(err, StakeError::WrongChain { .. }), "{err}");
}

#[tokio::test]
async fn objects_of_another_type_never_count() {
    let chain = Arc::new(Chain {
        ignore_type_filter: true,
        ..fixture()
    });
    let addr = serve(chain).await;
    let err = reader(addr, StakeConfig::default())
        .stake_of(alice())
        .await
        .expect_err("stray object");
    assert!(
        matches!(err, StakeError::Decode { ref reason, .. } if reason.contains("not of the configured stake type")),
        "{err}"
    );
}

#[tokio::test]
async fn too_many_objects_is_an_error_not_a_partial_sum() {
    let addr = serve(Arc::new(fixture())).await;
    let config = StakeConfig {
        max_objects: 3,
        ..StakeConfig::default()
    };
    let err = reader(addr, config)
        .stake_of(alice())
        .await
        .expect_err("over the bound");
    assert_eq!(err, StakeError::TooManyObjects { max_objects: 3 });
}

#[tokio::test]
async fn rpc_down_denies_unless_a_fresh_answer_is_cached() {
    let chain = Arc::new(fixture());
    let addr = serve(Arc::clone(&chain)).await;
    let ttl = Duration::from_millis(300);
    let cache = StakeCache::new(reader(addr, StakeConfig::default()), ttl, 16);
    assert_eq!(cache.stake_of(alice()).await, Ok(10_000));
    chain.down.store(true, Ordering::SeqCst);
    assert_eq!(
        cache.stake_of(alice()).await,
        Ok(10_000),
        "fresh answer is reused"
    );
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let err = cache
        .stake_of(alice())
        .await
        .expect_err("stale answer is not trusted");
    assert!(
        matches!(err, StakeError::Rpc { ref code, .. } if code == "Unavailable"),
        "{err}"
    );
    chain.down.store(false, Ordering::SeqCst);
    assert_eq!(
        cache.stake_of(alice()).await,
        Ok(10_000),
        "errors are not cached"
    );
}

#[tokio::test]
async fn unreachable_node_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let config = StakeConfig {
        rpc_timeout: Duration::from_secs(2),
        ..StakeConfig::default()
    };
    let err = reader(addr, config)
        .stake_of(alice())
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err, StakeError::Rpc { .. } | StakeError::Timeout { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn slow_node_times_out() {
    let chain = Arc::new(Chain {
        delay: Duration::from_secs(5),
        ..fixture()
    });
    let addr = serve(chain).await;
    let config = StakeConfig {
        rpc_timeout: Duration::from_millis(200),
        ..StakeConfig::default()
    };
    let err = reader(addr, config)
        .stake_of(alice())
        .await
        .expect_err("too slow");
    assert!(
        matches!(
            err,
            StakeError::Timeout {
                method: "ListOwnedObjects",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn concurrent_lookups_share_one_rpc_sequence() {
    let chain = Arc::new(Chain {
        delay: Duration::from_millis(100),
        ..fixture()
    });
    let addr = serve(Arc::clone(&chain)).await;
    let cache = Arc::new(StakeCache::new(
        reader(addr, StakeConfig::default()),
        Duration::from_secs(60),
        16,
    ));
    let lookups: Vec<_> = (0..32)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.stake_of(alice()).await })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.expect("task"), Ok(10_000));
    }
    assert_eq!(chain.info_calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        chain.list_calls.load(Ordering::SeqCst),
        3,
        "one paginated listing for 32 callers"
    );
}

#[tokio::test]
async fn cache_is_bounded() {
    let mut chain = fixture();
    for n in 0..3u8 {
        chain.owned.insert(
            Address::new([0x20 + n; 32]),
            vec![staked_sui(n, 1, 100 * (u64::from(n) + 1))],
        );
    }
    let chain = Arc::new(chain);
    let addr = serve(Arc::clone(&chain)).await;
    let cache = StakeCache::new(
        reader(addr, StakeConfig::default()),
        Duration::from_secs(60),
        2,
    );
    let who = |n: u8| Address::new([0x20 + n; 32]);
    for n in 0..3 {
        cache.stake_of(who(n)).await.expect("lookup");
    }
    let before = chain.info_calls.load(Ordering::SeqCst);
    assert_eq!(cache.stake_of(who(2)).await, Ok(300), "newest is cached");
    assert_eq!(chain.info_calls.load(Ordering::SeqCst), before);
    assert_eq!(cache.stake_of(who(0)).await, Ok(100), "oldest was evicted");
    assert_eq!(chain.info_calls.load(Ordering::SeqCst), before + 1);
}

/// A flood of addresses never seen before, through the real gRPC client to the fixture node:
/// the node sees at most the burst plus the lookup rate, the rest is told to try again, and an
/// address with stake answers from the cache throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_addresses_reach_the_full_node_at_the_lookup_rate_only() {
    use nautilus_agent::budget::Counters;
    use nautilus_agent::budget::LookupLimits;
    use nautilus_protocol::budget::Rate;

    let chain = Arc::new(fixture());
    let addr = serve(Arc::clone(&chain)).await;
    let counters = Arc::new(Counters::default());
    let limits = LookupLimits {
        rate: Rate::new(10.0, 5),
        queue: 4,
        max_wait: Duration::from_millis(500),
        ..LookupLimits::default()
    };
    let cache = Arc::new(
        StakeCache::new(
            reader(addr, StakeConfig::default()),
            Duration::from_secs(60),
            16,
        )
        .with_limits(limits, 1_000, Arc::clone(&counters)),
    );
    assert_eq!(cache.stake_of(alice()).await, Ok(10_000));
    let before = chain.list_calls.load(Ordering::SeqCst);

    let started = std::time::Instant::now();
    let mut answered = 0usize;
    let mut refused = 0usize;
    let mut slowest_known = Duration::ZERO;
    let mut n = 0u32;
    while started.elapsed() < Duration::from_secs(2) {
        let wave: Vec<_> = (0..20)
            .map(|_| {
                n += 1;
                let mut bytes = [0x77; 32];
                bytes[..4].copy_from_slice(&n.to_be_bytes());
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.stake_of(Address::new(bytes)).await })
            })
            .collect();
        let asked = std::time::Instant::now();
        assert_eq!(cache.stake_of(alice()).await, Ok(10_000));
        slowest_known = slowest_known.max(asked.elapsed());
        for lookup in wave {
            match lookup.await.expect("task") {
                Ok(0) => answered += 1,
                Err(StakeError::Throttled { .. }) => refused += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    let elapsed = started.elapsed();
    let reached = chain.list_calls.load(Ordering::SeqCst) - before;
    let ceiling = 5 + (10.0 * elapsed.as_secs_f64()).ceil() as usize;
    assert_eq!(
        reached, answered,
        "one ListOwnedObjects per new empty address"
    );
    assert!(
        reached <= ceiling,
        "{reached} lookups reached the node in {elapsed:?}"
    );
    assert!(reached >= 10, "only {reached} lookups in {elapsed:?}");
    assert!(
        refused > 2 * reached,
        "{refused} refused, {reached} answered"
    );
    assert!(
        slowest_known < Duration::from_millis(50),
        "a known address waited {slowest_known:?}"
    );
    let counted = counters.snapshot().expect("counters");
    assert_eq!(counted.stake_lookups_refused, refused as u64);
    assert_eq!(counted.stake_lookups, 1 + reached as u64);
}
