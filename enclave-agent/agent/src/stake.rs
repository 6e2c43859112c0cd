//! How much an address has staked, read from the Sui chain through the official `sui-rpc` gRPC
//! client, with a bounded TTL cache and single-flight lookups.
//!
//! A lookup asks `LedgerService.GetServiceInfo` for the chain and the current epoch (refusing a
//! node that serves another chain than configured), then pages through
//! `StateService.ListOwnedObjects` for the owner, filtered by the configured Move type. For the
//! native `0x3::staking_pool::StakedSui` the object's BCS `contents` are decoded (id, pool id,
//! activation epoch, principal) and the principal of every stake already active in the current
//! epoch is summed. A custom stake type names the `u64` field that counts, read from the object's
//! JSON rendering.
//!
//! Failure is never turned into access: an RPC error is an error, and only an answer younger than
//! the TTL is reused. Concurrent lookups of one address share one RPC sequence.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde::Deserialize;
use sui_rpc::proto::sui::rpc::v2::{GetServiceInfoRequest, ListOwnedObjectsRequest, Object};
use sui_sdk_types::{Address, StructTag};
use tokio::time::Instant;

/// The native stake type of Sui.
pub const STAKED_SUI: &str = "0x3::staking_pool::StakedSui";

/// Why a stake lookup failed. Every variant means "deny".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StakeError {
    /// The stake type in the configuration is not a Move struct tag.
    #[error("invalid stake type {stake_type:?}: {reason}")]
    InvalidStakeType {
        /// The configured type.
        stake_type: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A custom stake type was configured without naming its amount field.
    #[error("stake type {0} is not StakedSui: configure the u64 field that holds the amount")]
    MissingAmountField(String),
    /// The full node answered with an error, or could not be reached.
    #[error("sui rpc {method} failed: {code}: {message}")]
    Rpc {
        /// The gRPC method.
        method: &'static str,
        /// The gRPC status code.
        code: String,
        /// The status message (from the node, not from a token).
        message: String,
    },
    /// The full node did not answer in time.
    #[error("sui rpc {method} timed out after {timeout:?}")]
    Timeout {
        /// The gRPC method.
        method: &'static str,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The full node serves another chain than configured.
    #[error("sui rpc endpoint serves chain {actual:?}, expected {expected}")]
    WrongChain {
        /// The configured chain identifier.
        expected: String,
        /// What the node reported.
        actual: Option<String>,
    },
    /// The node's answer lacks a field the lookup needs.
    #[error("sui rpc {method} answer lacks {field}")]
    MissingField {
        /// The gRPC method.
        method: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// An owned object's contents could not be decoded.
    #[error("object {object_id} of type {object_type}: {reason}")]
    Decode {
        /// The object's ID.
        object_id: String,
        /// The object's type.
        object_type: String,
        /// What was wrong.
        reason: String,
    },
    /// The owner has more stake objects than the lookup reads.
    #[error("owner has more than {max_objects} stake objects; refusing a partial sum")]
    TooManyObjects {
        /// The bound.
        max_objects: usize,
    },
}

/// What to count, and how to reach the chain.
#[derive(Debug, Clone)]
pub struct StakeConfig {
    /// Move type whose objects count as stake.
    pub stake_type: String,
    /// For a custom type: the `u64` field holding the amount in MIST.
    pub amount_field: Option<String>,
    /// When set, the node must report this chain identifier.
    pub expected_chain_id: Option<String>,
    /// Deadline of each RPC.
    pub rpc_timeout: Duration,
    /// Objects requested per page.
    pub page_size: u32,
    /// Most objects read for one owner; more is an error, never a partial sum.
    pub max_objects: usize,
}

impl Default for StakeConfig {
    fn default() -> Self {
        Self {
            stake_type: STAKED_SUI.into(),
            amount_field: None,
            expected_chain_id: None,
            rpc_timeout: Duration::from_secs(5),
            page_size: 100,
            max_objects: 10_000,
        }
    }
}

/// Something that can tell how much an address has staked.
pub trait ReadStake: Send + Sync + 'static {
    /// The owner's stake in MIST.
    fn stake_of(&self, owner: Address) -> impl Future<Output = Result<u64, StakeError>> + Send;
}

/// How an object's amount is found.
#[derive(Debug, Clone)]
enum Amount {
    /// `0x3::staking_pool::StakedSui`: BCS contents, principal of active stakes.
    StakedSui,
    /// A custom type: a named `u64` field in the JSON rendering.
    Field(String),
}

/// Reads stake through `sui-rpc`.
#[derive(Clone)]
pub struct SuiStakeReader {
    client: sui_rpc::Client,
    config: StakeConfig,
    stake_type: StructTag,
    amount: Amount,
}

impl std::fmt::Debug for SuiStakeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuiStakeReader")
            .field("stake_type", &self.stake_type)
            .finish()
    }
}

/// BCS layout of `0x3::staking_pool::StakedSui`.
#[derive(Deserialize)]
struct StakedSui {
    _id: Address,
    _pool_id: Address,
    stake_activation_epoch: u64,
    principal: u64,
}

impl SuiStakeReader {
    /// A reader over `client` (whose TLS the caller configured) counting what `config` names.
    pub fn new(client: sui_rpc::Client, config: StakeConfig) -> Result<Self, StakeError> {
        let invalid = |reason: String| StakeError::InvalidStakeType {
            stake_type: config.stake_type.clone(),
            reason,
        };
        let stake_type =
            StructTag::from_str(&config.stake_type).map_err(|e| invalid(e.to_string()))?;
        let native = StructTag::from_str(STAKED_SUI).map_err(|e| invalid(e.to_string()))?;
        let amount = if stake_type == native {
            Amount::StakedSui
        } else {
            match &config.amount_field {
                Some(field) => Amount::Field(field.clone()),
                None => return Err(StakeError::MissingAmountField(config.stake_type.clone())),
            }
        };
        Ok(Self {
            client,
            config,
            stake_type,
            amount,
        })
    }

    async fn call<T, F>(&self, method: &'static str, fut: F) -> Result<T, StakeError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match tokio::time::timeout(self.config.rpc_timeout, fut).await {
            Err(_) => Err(StakeError::Timeout {
                method,
                timeout: self.config.rpc_timeout,
            }),
            Ok(Err(status)) => Err(StakeError::Rpc {
                method,
                code: format!("{:?}", status.code()),
                message: status.message().chars().take(200).collect(),
            }),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// The current epoch, after checking the node serves the configured chain.
    pub async fn current_epoch(&self) -> Result<u64, StakeError> {
        const METHOD: &str = "GetServiceInfo";
        let mut ledger = self.client.clone().ledger_client();
        let info = self
            .call(
                METHOD,
                ledger.get_service_info(GetServiceInfoRequest::default()),
            )
            .await?;
        if let Some(expected) = &self.config.expected_chain_id
            && info.chain_id.as_deref() != Some(expected.as_str())
        {
            return Err(StakeError::WrongChain {
                expected: expected.clone(),
                actual: info.chain_id,
            });
        }
        info.epoch.ok_or(StakeError::MissingField {
            method: METHOD,
            field: "epoch",
        })
    }

    fn amount_of(&self, object: &Object, epoch: u64) -> Result<u64, StakeError> {
        let object_type = object.object_type.clone().unwrap_or_default();
        let decode = |reason: String| StakeError::Decode {
            object_id: object.object_id.clone().unwrap_or_default(),
            object_type: object_type.clone(),
            reason,
        };
        // The node filtered by type already; a stray object must not count.
        match StructTag::from_str(&object_type) {
            Ok(tag) if tag == self.stake_type => {}
            _ => return Err(decode("not of the configured stake type".into())),
        }
        match &self.amount {
            Amount::StakedSui => {
                let bytes = object
                    .contents
                    .as_ref()
                    .and_then(|c| c.value.as_ref())
                    .ok_or_else(|| decode("no contents in the answer".into()))?;
                let staked: StakedSui =
                    bcs::from_bytes(bytes).map_err(|e| decode(format!("bcs: {e}")))?;
                // A stake counts from the epoch it activates in.
                Ok(if staked.stake_activation_epoch <= epoch {
                    staked.principal
                } else {
                    0
                })
            }
            Amount::Field(field) => {
                use prost_types::value::Kind;
                let json = object
                    .json
                    .as_deref()
                    .ok_or_else(|| decode("no json in the answer".into()))?;
                let Some(Kind::StructValue(fields)) = &json.kind else {
                    return Err(decode("json rendering is not a struct".into()));
                };
                let value = fields
                    .fields
                    .get(field)
                    .and_then(|v| v.kind.as_ref())
                    .ok_or_else(|| decode(format!("no field {field}")))?;
                match value {
                    // Move u64 values render as decimal strings.
                    Kind::StringValue(s) => s
                        .parse()
                        .map_err(|_| decode(format!("field {field} is not a u64"))),
                    Kind::NumberValue(n)
                        if n.fract() == 0.0 && *n >= 0.0 && *n <= 2f64.powi(53) =>
                    {
                        Ok(*n as u64)
                    }
                    _ => Err(decode(format!("field {field} is not a u64"))),
                }
            }
        }
    }
}

impl ReadStake for SuiStakeReader {
    async fn stake_of(&self, owner: Address) -> Result<u64, StakeError> {
        const METHOD: &str = "ListOwnedObjects";
        let epoch = self.current_epoch().await?;
        let mut state = self.client.clone().state_client();
        let mask = match self.amount {
            Amount::StakedSui => "object_id,object_type,contents",
            Amount::Field(_) => "object_id,object_type,json",
        };
        let mut total: u64 = 0;
        let mut seen = 0usize;
        let mut page_token = None;
        loop {
            let mut request = ListOwnedObjectsRequest::default();
            request.owner = Some(owner.to_string());
            request.object_type = Some(self.config.stake_type.clone());
            request.page_size = Some(self.config.page_size);
            request.page_token = page_token.take();
            request.read_mask = Some(prost_types::FieldMask {
                paths: mask.split(',').map(str::to_string).collect(),
            });
            let page = self.call(METHOD, state.list_owned_objects(request)).await?;
            seen += page.objects.len();
            if seen > self.config.max_objects {
                return Err(StakeError::TooManyObjects {
                    max_objects: self.config.max_objects,
                });
            }
            for object in &page.objects {
                total = total.saturating_add(self.amount_of(object, epoch)?);
            }
            match page.next_page_token {
                Some(token) if !token.is_empty() => page_token = Some(token),
                _ => break,
            }
        }
        Ok(total)
    }
}

type Lookup = Shared<BoxFuture<'static, Result<u64, StakeError>>>;

#[derive(Default)]
struct CacheState {
    fresh: HashMap<Address, (u64, Instant)>,
    in_flight: HashMap<Address, Lookup>,
}

/// A stake reader with a TTL cache of bounded size and single-flight lookups.
pub struct StakeCache<R> {
    reader: Arc<R>,
    ttl: Duration,
    capacity: usize,
    state: Arc<Mutex<CacheState>>,
}

impl<R> std::fmt::Debug for StakeCache<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StakeCache")
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<R: ReadStake> StakeCache<R> {
    /// Caches answers of `reader` for `ttl`, at most `capacity` addresses.
    pub fn new(reader: R, ttl: Duration, capacity: usize) -> Self {
        Self {
            reader: Arc::new(reader),
            ttl,
            capacity: capacity.max(1),
            state: Arc::default(),
        }
    }

    fn lock(state: &Mutex<CacheState>) -> std::sync::MutexGuard<'_, CacheState> {
        // The map stays consistent even if a holder panicked: every write is a single insert/remove.
        state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The owner's stake: from the cache while fresh, else from the chain (one lookup shared by
    /// every concurrent caller). Errors are not cached.
    pub async fn stake_of(&self, owner: Address) -> Result<u64, StakeError> {
        let lookup = {
            let mut state = Self::lock(&self.state);
            if let Some((stake, at)) = state.fresh.get(&owner)
                && at.elapsed() < self.ttl
            {
                return Ok(*stake);
            }
            match state.in_flight.get(&owner) {
                Some(lookup) => lookup.clone(),
                None => {
                    let reader = Arc::clone(&self.reader);
                    let shared_state = Arc::clone(&self.state);
                    let (ttl, capacity) = (self.ttl, self.capacity);
                    let lookup = async move {
                        let result = reader.stake_of(owner).await;
                        let mut state = Self::lock(&shared_state);
                        state.in_flight.remove(&owner);
                        if let Ok(stake) = result {
                            insert_bounded(&mut state.fresh, owner, stake, ttl, capacity);
                        }
                        result
                    }
                    .boxed()
                    .shared();
                    state.in_flight.insert(owner, lookup.clone());
                    lookup
                }
            }
        };
        lookup.await
    }
}

/// Inserts, first dropping expired entries and then, if still full, the oldest one.
fn insert_bounded(
    fresh: &mut HashMap<Address, (u64, Instant)>,
    owner: Address,
    stake: u64,
    ttl: Duration,
    capacity: usize,
) {
    if fresh.len() >= capacity && !fresh.contains_key(&owner) {
        fresh.retain(|_, (_, at)| at.elapsed() < ttl);
        if fresh.len() >= capacity
            && let Some(oldest) = fresh.iter().min_by_key(|(_, (_, at))| *at).map(|(a, _)| *a)
        {
            fresh.remove(&oldest);
        }
    }
    fresh.insert(owner, (stake, Instant::now()));
}
