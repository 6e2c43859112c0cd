//! Stake lookups against a local gRPC server that implements the real `sui-rpc`
//! `StateService` and `LedgerService` traits over fixture chain state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use nautilus_agent::stake::{ReadStake, StakeCache, StakeConfig, StakeError, SuiStakeReader};
use serde::Serialize;
use sui_rpc::proto::sui::rpc::v2::ledger_service_server::{LedgerService, LedgerServiceServer};
use sui_rpc::proto::sui::rpc::v2::state_service_server::{StateService, StateServiceServer};
use sui_rpc::proto::sui::rpc::v2::{
    Bcs, GetServiceInfoRequest, GetServiceInfoResponse, ListOwnedObjectsRequest,
    ListOwnedObjectsResponse, Object,
};
use sui_sdk_types::{Address, StructTag};
use tonic::{Request, Response, Status};

const CHAIN_ID: &str = "4btiuiMPvEENsttpZC7CZ53DruC3MAgfznDbASZ7DR6S";
const EPOCH: u64 = 700;
const CUSTOM_TYPE: &str = "0xabc::vault::Locked";

#[derive(Serialize)]
struct StakedSuiBcs {
    id: [u8; 32],
    pool_id: [u8; 32],
    stake_activation_epoch: u64,
    principal: u64,
}

fn staked_sui(n: u8, activation_epoch: u64, principal: u64) -> Object {
    let bytes = bcs::to_bytes(&StakedSuiBcs {
        id: [n; 32],
        pool_id: [0xaa; 32],
        stake_activation_epoch: activation_epoch,
        principal,
    })
    .expect("bcs encodes");
    assert_eq!(bytes.len(), 80, "StakedSui is 80 bytes");
    let mut object = Object::default();
    object.object_id = Some(Address::new([n; 32]).to_string());
    object.object_type = Some(
        "0x0000000000000000000000000000000000000000000000000000000000000003::staking_pool::StakedSui"
            .into(),
    );
    let mut contents = Bcs::default();
    contents.name = Some("StakedSui".into());
    contents.value = Some(bytes.into());
    object.contents = Some(contents);
    object
}

fn custom(n: u8, amount: &str) -> Object {
    use prost_types::value::Kind;
    let mut object = Object::default();
    object.object_id = Some(Address::new([n; 32]).to_string());
    object.object_type = Some(CUSTOM_TYPE.into());
    let fields = [
        (
            "id".to_string(),
            prost_types::Value {
                kind: Some(Kind::StringValue("0x1".into())),
            },
        ),
        (
            "amount".to_string(),
            prost_types::Value {
                kind: Some(Kind::StringValue(amount.into())),
            },
        ),
    ];
    object.json = Some(Box::new(prost_types::Value {
        kind: Some(Kind::StructValue(prost_types::Struct {
            fields: fields.into_iter().collect(),
        })),
    }));
    object
}

/// Fixture chain state and call counters.
#[derive(Default)]
struct Chain {
    owned: HashMap<Address, Vec<Object>>,
    page_limit: usize,
    list_calls: AtomicUsize,
    info_calls: AtomicUsize,
    down: AtomicBool,
    ignore_type_filter: bool,
    delay: Duration,
}

#[tonic::async_trait]
impl StateService for Chain {
    async fn list_owned_objects(
        &self,
        request: Request<ListOwnedObjectsRequest>,
    ) -> Result<Response<ListOwnedObjectsResponse>, Status> {
        self.list_calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("fullnode is down"));
        }
        tokio::time::sleep(self.delay).await;
        let request = request.into_inner();
        let owner = Address::from_str(request.owner.as_deref().unwrap_or_default())
            .map_err(|_| Status::invalid_argument("bad owner"))?;
        let wanted = request
            .object_type
            .as_deref()
            .map(|t| StructTag::from_str(t).expect("type"));
        let mask = request.read_mask.map(|m| m.paths).unwrap_or_default();
        assert!(
            mask.iter().any(|p| p == "contents" || p == "json"),
            "read mask asks for contents"
        );
        let objects: Vec<_> = self
            .owned
            .get(&owner)
            .into_iter()
            .flatten()
            .filter(|o| {
                self.ignore_type_filter
                    || wanted.as_ref().is_none_or(|w| {
                        StructTag::from_str(o.object_type.as_deref().unwrap_or_default())
                            .ok()
                            .as_ref()
                            == Some(w)
                    })
            })
            .cloned()
            .collect();
        let start = match request.page_token {
            Some(token) => {
                u32::from_be_bytes(token.as_ref().try_into().expect("our token")) as usize
            }
            None => 0,
        };
        let size = (request.page_size.unwrap_or(50) as usize).min(self.page_limit.max(1));
        let end = (start + size).min(objects.len());
        let mut response = ListOwnedObjectsResponse::default();
        response.objects = objects[start..end].to_vec();
        if end < objects.len() {
            response.next_page_token = Some((end as u32).to_be_bytes().to_vec().into());
        }
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl LedgerService for Chain {
    async fn get_service_info(
        &self,
        _: Request<GetServiceInfoRequest>,
    ) -> Result<Response<GetServiceInfoResponse>, Status> {
        self.info_calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(Status::unavailable("fullnode is down"));
        }
        let mut info = GetServiceInfoResponse::default();
        info.chain_id = Some(CHAIN_ID.into());
        info.chain = Some("mainnet".into());
        info.epoch = Some(EPOCH);
        Ok(Response::new(info))
    }
}

async fn serve(chain: Arc<Chain>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(StateServiceServer::from_arc(Arc::clone(&chain)))
            .add_service(LedgerServiceServer::from_arc(chain))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
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
