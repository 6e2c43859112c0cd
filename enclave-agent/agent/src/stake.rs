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
//!
//! Keys are free, so anyone can make every review name an address never seen before. With
//! [`StakeCache::with_limits`] ([`LookupLimits`]) such lookups are bounded: an address the
//! cache knows (answered before, even if that answer expired) keeps the fast path; any other
//! waits for a token of the lookup rate, at most [`LookupLimits::queue`] of them at once and
//! for at most [`LookupLimits::max_wait`], and beyond that is refused with
//! [`StakeError::Throttled`] ("try again", counted) rather than sent to the full node. An
//! answer below every tier goes to a negative cache of its own (its own TTL and capacity), so a
//! flood of empty addresses never evicts the addresses that hold stake.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use nautilus_protocol::budget::TokenBucket;
use serde::Deserialize;
use sui_rpc::proto::sui::rpc::v2::{GetServiceInfoRequest, ListOwnedObjectsRequest, Object};
use sui_sdk_types::{Address, StructTag};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::budget::{Counters, LookupLimits};

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
    /// Lookups of addresses not seen before are over their rate: nothing was asked of the
    /// full node, and the same token may succeed later.
    #[error(
        "stake lookups of new addresses are over their rate; try again in {retry_after_seconds} s"
    )]
    Throttled {
        /// When a lookup is likely to be admitted.
        retry_after_seconds: u64,
    },
    /// The lookup task ended without an answer (the runtime is shutting down).
    #[error("stake lookup abandoned")]
    Abandoned,
}

/// The clock of the throttle: tokio's, so that tests on a paused clock step it.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// The token bucket and the waiting room of new-address lookups.
struct Throttle {
    limits: LookupLimits,
    bucket: Mutex<TokenBucket>,
    waiting: Semaphore,
}

impl Throttle {
    fn new(limits: LookupLimits) -> Self {
        Self {
            limits,
            bucket: Mutex::new(TokenBucket::new(limits.rate, now())),
            waiting: Semaphore::new(limits.queue.max(1)),
        }
    }

    fn refused(&self, wait: Duration) -> StakeError {
        // Behind everyone waiting, at the lookup rate.
        let queued = self.limits.queue as f64 / self.limits.rate.per_second.max(1e-3);
        StakeError::Throttled {
            retry_after_seconds: crate::budget::whole_seconds(
                wait.max(Duration::from_secs_f64(queued.min(3600.0))),
            ),
        }
    }

    /// Wait for a token: within the queue and `max_wait`, else refused.
    async fn admit(&self) -> Result<(), StakeError> {
        let Ok(_place) = self.waiting.try_acquire() else {
            return Err(self.refused(Duration::ZERO));
        };
        let deadline = now() + self.limits.max_wait;
        loop {
            let now = now();
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .try_take(now);
            match taken {
                Ok(()) => return Ok(()),
                Err(wait) if now + wait > deadline => return Err(self.refused(wait)),
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// What [`StakeCache::with_limits`] adds: the throttle, the negative cache's threshold, and
/// the counters.
struct Bounds {
    throttle: Throttle,
    /// Answers below this (the lowest tier's minimum) are negative.
    below: u64,
    counters: Arc<Counters>,
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
    /// Answers at or above the lowest tier (all answers without limits); an expired one still
    /// marks the address as known.
    fresh: HashMap<Address, (u64, Instant)>,
    /// Answers below every tier (with limits only).
    negative: HashMap<Address, (u64, Instant)>,
    in_flight: HashMap<Address, Lookup>,
}

/// A stake reader with a TTL cache of bounded size and single-flight lookups.
pub struct StakeCache<R> {
    reader: Arc<R>,
    ttl: Duration,
    capacity: usize,
    state: Arc<Mutex<CacheState>>,
    bounds: Option<Arc<Bounds>>,
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
    /// Caches answers of `reader` for `ttl`, at most `capacity` addresses; every lookup the
    /// cache cannot answer goes to `reader`.
    pub fn new(reader: R, ttl: Duration, capacity: usize) -> Self {
        Self {
            reader: Arc::new(reader),
            ttl,
            capacity: capacity.max(1),
            state: Arc::default(),
            bounds: None,
        }
    }

    /// The same, with lookups of addresses it does not know bounded by `limits`, answers
    /// below `below` (the lowest tier's minimum) kept in the negative cache, and both counted
    /// in `counters`.
    pub fn with_limits(
        mut self,
        limits: LookupLimits,
        below: u64,
        counters: Arc<Counters>,
    ) -> Self {
        self.bounds = Some(Arc::new(Bounds {
            throttle: Throttle::new(limits),
            below,
            counters,
        }));
        self
    }

    fn lock(state: &Mutex<CacheState>) -> std::sync::MutexGuard<'_, CacheState> {
        // The map stays consistent even if a holder panicked: every write is a single insert/remove.
        state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The owner's stake: from the cache while fresh, else from the chain (one lookup shared by
    /// every concurrent caller, run in a task of its own so that it ends, and frees its place,
    /// whoever still waits for it). Errors are not cached.
    pub async fn stake_of(&self, owner: Address) -> Result<u64, StakeError> {
        let lookup = {
            let mut state = Self::lock(&self.state);
            if let Some((stake, at)) = state.fresh.get(&owner)
                && at.elapsed() < self.ttl
            {
                return Ok(*stake);
            }
            if let Some(bounds) = &self.bounds
                && let Some((stake, at)) = state.negative.get(&owner)
                && at.elapsed() < bounds.throttle.limits.negative_ttl
            {
                Counters::count(&bounds.counters.stake_negative_hits);
                return Ok(*stake);
            }
            match state.in_flight.get(&owner) {
                Some(lookup) => lookup.clone(),
                None => {
                    // Known: answered before at or above the lowest tier. Its refresh is not
                    // a new address's lookup.
                    let known = state.fresh.contains_key(&owner);
                    let reader = Arc::clone(&self.reader);
                    let shared_state = Arc::clone(&self.state);
                    let bounds = self.bounds.clone();
                    let (ttl, capacity) = (self.ttl, self.capacity);
                    let task = tokio::spawn(async move {
                        if let Some(bounds) = &bounds
                            && !known
                            && let Err(refused) = bounds.throttle.admit().await
                        {
                            Counters::count(&bounds.counters.stake_lookups_refused);
                            Self::lock(&shared_state).in_flight.remove(&owner);
                            return Err(refused);
                        }
                        if let Some(bounds) = &bounds {
                            Counters::count(&bounds.counters.stake_lookups);
                        }
                        let result = reader.stake_of(owner).await;
                        let mut state = Self::lock(&shared_state);
                        state.in_flight.remove(&owner);
                        match (&result, &bounds) {
                            (Ok(stake), Some(bounds)) if *stake < bounds.below => {
                                let limits = bounds.throttle.limits;
                                insert_bounded(
                                    &mut state.negative,
                                    owner,
                                    *stake,
                                    limits.negative_ttl,
                                    limits.negative_capacity.max(1),
                                );
                            }
                            (Ok(stake), _) => {
                                state.negative.remove(&owner);
                                insert_bounded(&mut state.fresh, owner, *stake, ttl, capacity);
                            }
                            (Err(_), _) => {}
                        }
                        result
                    });
                    let lookup = async move { task.await.unwrap_or(Err(StakeError::Abandoned)) }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use nautilus_protocol::budget::Rate;

    /// A ledger that counts what it is asked; `0x01…` holds 5,000 MIST, every other address
    /// nothing.
    #[derive(Default)]
    struct Ledger {
        calls: AtomicUsize,
    }

    impl ReadStake for Arc<Ledger> {
        async fn stake_of(&self, owner: Address) -> Result<u64, StakeError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(if owner == rich() { 5_000 } else { 0 })
        }
    }

    fn rich() -> Address {
        Address::new([1; 32])
    }

    fn fresh(n: u32) -> Address {
        let mut bytes = [0xee; 32];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        Address::new(bytes)
    }

    fn cache(
        ledger: &Arc<Ledger>,
        limits: LookupLimits,
    ) -> (StakeCache<Arc<Ledger>>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let cache = StakeCache::new(Arc::clone(ledger), Duration::from_secs(30), 4).with_limits(
            limits,
            1_000,
            Arc::clone(&counters),
        );
        (cache, counters)
    }

    fn limits(per_second: f64, burst: u32, queue: usize) -> LookupLimits {
        LookupLimits {
            rate: Rate::new(per_second, burst),
            queue,
            max_wait: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(60),
            negative_capacity: 100,
        }
    }

    fn read(counters: &Counters) -> (u64, u64, u64) {
        let c = counters.snapshot().unwrap_or_default();
        (
            c.stake_lookups,
            c.stake_lookups_refused,
            c.stake_negative_hits,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn new_addresses_wait_in_a_bounded_queue_and_the_rest_are_told_to_try_again() {
        let ledger = Arc::default();
        let (cache, counters) = cache(&ledger, limits(1.0, 1, 2));
        let cache = Arc::new(cache);
        let started = Instant::now();
        let asks: Vec<_> = (0..6)
            .map(|n| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { (cache.stake_of(fresh(n)).await, started.elapsed()) })
            })
            .collect();
        let mut answered = Vec::new();
        let mut refused = Vec::new();
        for ask in asks {
            match ask.await.expect("task") {
                (Ok(stake), at) => answered.push((stake, at)),
                (
                    Err(StakeError::Throttled {
                        retry_after_seconds,
                    }),
                    at,
                ) => {
                    refused.push((retry_after_seconds, at));
                }
                (Err(e), _) => panic!("{e}"),
            }
        }
        // One token at once, two waiting (one second apart), three refused at once.
        assert_eq!(answered.len(), 3, "{answered:?}");
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(
            refused
                .iter()
                .all(|(retry, at)| *retry == 2 && at.is_zero()),
            "{refused:?}"
        );
        let mut times: Vec<_> = answered.iter().map(|(_, at)| at.as_secs()).collect();
        times.sort_unstable();
        assert_eq!(times, [0, 1, 2]);
        assert_eq!(ledger.calls.load(Ordering::SeqCst), 3);
        assert_eq!(read(&counters), (3, 3, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_beyond_max_wait_is_refused_not_queued() {
        let ledger = Arc::default();
        let (cache, counters) = cache(&ledger, limits(0.01, 1, 8));
        assert_eq!(cache.stake_of(fresh(1)).await, Ok(0));
        let refused = cache
            .stake_of(fresh(2))
            .await
            .expect_err("no token within 5 s");
        assert_eq!(
            refused,
            StakeError::Throttled {
                retry_after_seconds: 800
            }
        );
        assert_eq!(ledger.calls.load(Ordering::SeqCst), 1);
        assert_eq!(read(&counters), (1, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn known_addresses_keep_their_fast_path_and_the_negative_cache_answers_the_empty() {
        let ledger = Arc::default();
        // No token ever comes back after the first.
        let (cache, counters) = cache(&ledger, limits(0.0001, 1, 8));
        assert_eq!(cache.stake_of(rich()).await, Ok(5_000));
        // Fresh answers: no lookup at all.
        assert_eq!(cache.stake_of(rich()).await, Ok(5_000));
        // New addresses are refused now ...
        assert!(matches!(
            cache.stake_of(fresh(1)).await,
            Err(StakeError::Throttled { .. })
        ));
        // ... but a known address whose answer expired is read again at once.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(cache.stake_of(rich()).await, Ok(5_000));
        assert_eq!(ledger.calls.load(Ordering::SeqCst), 2);
        assert_eq!(read(&counters), (2, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn empty_addresses_are_remembered_apart_and_never_evict_the_staked() {
        let ledger = Arc::default();
        let (cache, counters) = cache(&ledger, limits(1e6, 1_000_000, 8));
        assert_eq!(cache.stake_of(rich()).await, Ok(5_000));
        // Far more empty addresses than the positive cache holds (4).
        for n in 0..50 {
            assert_eq!(cache.stake_of(fresh(n)).await, Ok(0));
        }
        assert_eq!(ledger.calls.load(Ordering::SeqCst), 51);
        assert_eq!(cache.stake_of(rich()).await, Ok(5_000), "still cached");
        // A second review of an empty address is a negative hit, within its TTL only.
        assert_eq!(cache.stake_of(fresh(7)).await, Ok(0));
        assert_eq!(ledger.calls.load(Ordering::SeqCst), 51);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(cache.stake_of(fresh(7)).await, Ok(0));
        assert_eq!(ledger.calls.load(Ordering::SeqCst), 52);
        assert_eq!(read(&counters), (52, 0, 1));
    }
}
