//! From the boot configuration's `auth` section to a running TokenReview authenticator: seal
//! token verifier, stake tiers, and the stake reader reaching Sui through the egress proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nautilus_protocol::transport::Endpoint;
use nautilus_protocol::wire::{AuthConfig, TierConfig, TierIdentity, ZkLoginConfig};
use nautilus_seal::personal_message::UNKNOWN_EPOCH;
use nautilus_seal::{
    Identity, Jwk, JwkId, SealVerifier, SignatureVerifier, Tier, TierError, Tiers, ZkLoginKey,
};

use crate::budget::Counters;
use crate::budget::LookupLimits;
use crate::egress::{self, EgressConnector, EgressError, Target};
use crate::stake::{StakeCache, StakeConfig, StakeError, SuiStakeReader};
use crate::webhook::Authenticator;

/// Most addresses whose stake is cached.
pub const STAKE_CACHE_CAPACITY: usize = 10_000;

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The tier table is invalid.
    #[error("invalid tiers")]
    Tiers(#[from] TierError),
    /// The stake type is invalid.
    #[error("invalid stake configuration")]
    Stake(#[from] StakeError),
    /// The Sui RPC URL or trust roots are unusable.
    #[error("sui rpc client")]
    Egress(#[from] EgressError),
    /// The zkLogin configuration names no known verifying key.
    #[error("zkLogin verifying key {0:?} is neither mainnet nor dev")]
    ZkLoginKey(String),
}

/// How often the chain's current epoch is re-read for zkLogin's `max_epoch` check. Sui epochs
/// last about a day; a few minutes of lag cannot accept a key expired long ago.
pub const EPOCH_REFRESH: Duration = Duration::from_secs(60);

/// The signature verifier of a zkLogin configuration: its Groth16 key and issuer keys, with
/// the epoch unknown (zkLogin refused) until [`follow_epoch`] has read it.
pub fn zklogin_signatures(config: &ZkLoginConfig) -> Result<SignatureVerifier, AuthError> {
    let key: ZkLoginKey = config
        .verifying_key
        .parse()
        .map_err(|_| AuthError::ZkLoginKey(config.verifying_key.clone()))?;
    let jwks = config.jwks.iter().map(|jwk| {
        (
            JwkId {
                iss: jwk.iss.clone(),
                kid: jwk.kid.clone(),
            },
            Jwk {
                kty: jwk.kty.clone(),
                e: jwk.e.clone(),
                n: jwk.n.clone(),
                alg: jwk.alg.clone(),
            },
        )
    });
    Ok(SignatureVerifier::with_zklogin_keys(
        key,
        jwks,
        UNKNOWN_EPOCH,
    ))
}

/// Keep `epoch` at the chain's current epoch, read through `reader` (which checks the chain
/// id) every [`EPOCH_REFRESH`], until nothing else holds `epoch`. A failed read keeps the last
/// value; before the first success zkLogin stays refused.
pub fn follow_epoch(reader: SuiStakeReader, epoch: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(&epoch);
    drop(epoch);
    tokio::spawn(async move {
        loop {
            let result = reader.current_epoch().await;
            let Some(epoch) = weak.upgrade() else { return };
            match result {
                Ok(current) => epoch.store(current, Ordering::SeqCst),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the current epoch for zkLogin")
                }
            }
            drop(epoch);
            tokio::time::sleep(EPOCH_REFRESH).await;
        }
    })
}

/// The seal crate's tier for a wire tier (same fields, same JSON names).
pub fn tier(config: &TierConfig) -> Tier {
    Tier {
        name: config.name.clone(),
        min_stake_mist: config.min_stake_mist,
        groups: config.groups.clone(),
        identity: match config.identity {
            TierIdentity::User => Identity::User,
            TierIdentity::Node => Identity::Node,
        },
    }
}

/// The validated tier table of `config`.
pub fn tiers(config: &AuthConfig) -> Result<Tiers, TierError> {
    Tiers::new(config.tiers.iter().map(tier).collect())
}

/// What the stake reader counts.
pub fn stake_config(config: &AuthConfig) -> StakeConfig {
    StakeConfig {
        stake_type: config.stake_type.clone(),
        amount_field: config.stake_amount_field.clone(),
        expected_chain_id: config.chain_id.clone(),
        ..StakeConfig::default()
    }
}

/// The authenticator of `config`, reading stake through `proxy` (`None`: direct), trusting the
/// webpki roots plus `extra_ca_pem`, with lookups of new addresses bounded by `limits` and
/// counted in `counters`.
pub fn authenticator(
    config: &AuthConfig,
    proxy: Option<Endpoint>,
    extra_ca_pem: Option<&str>,
    limits: LookupLimits,
    counters: Arc<Counters>,
) -> Result<Authenticator<SuiStakeReader>, AuthError> {
    let target = Target::parse(&config.sui_rpc_url)?;
    if !target.tls {
        tracing::warn!(url = %config.sui_rpc_url, "sui rpc without tls: for local fixtures only");
    }
    let tls = std::sync::Arc::new(egress::node_tls_config(extra_ca_pem)?);
    let stake = stake_config(config);
    let connector = EgressConnector::new(proxy, target.clone(), tls);
    let client = egress::sui_client(&target, connector, stake.rpc_timeout)?;
    let reader = SuiStakeReader::new(client, stake)?;
    let mut verifier = SealVerifier::new(config.audience.clone())
        .with_max_lifetime(u64::from(config.max_token_lifetime_seconds));
    if let Some(zk_login) = &config.zk_login {
        let signatures = zklogin_signatures(zk_login)?;
        if let Some(epoch) = signatures.epoch_handle() {
            follow_epoch(reader.clone(), epoch);
        }
        tracing::info!(issuers = zk_login.jwks.len(), key = %zk_login.verifying_key, "zkLogin enabled");
        verifier = verifier.with_signature_verifier(signatures);
    }
    let tiers = tiers(config)?;
    // Below the lowest tier's minimum, an address is granted nothing: a negative answer.
    let below = config
        .tiers
        .iter()
        .map(|tier| tier.min_stake_mist)
        .min()
        .unwrap_or(0);
    let cache = StakeCache::new(
        reader,
        Duration::from_secs(u64::from(config.stake_cache_ttl_seconds)),
        STAKE_CACHE_CAPACITY,
    )
    .with_limits(limits, below, counters);
    Ok(Authenticator::new(verifier, tiers, cache))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_auth() -> AuthConfig {
        AuthConfig {
            sui_rpc_url: "https://fullnode.testnet.sui.io".into(),
            chain_id: Some("4c78adac".into()),
            stake_type: "0x3::staking_pool::StakedSui".into(),
            stake_amount_field: None,
            audience: "nautilus:default/demo".into(),
            max_token_lifetime_seconds: 900,
            stake_cache_ttl_seconds: 60,
            zk_login: None,
            tiers: vec![
                TierConfig {
                    name: "viewer".into(),
                    min_stake_mist: 1_000,
                    groups: vec!["view".into()],
                    identity: Default::default(),
                },
                TierConfig {
                    name: "admin".into(),
                    min_stake_mist: 1_000_000,
                    groups: vec!["system:masters".into()],
                    identity: Default::default(),
                },
            ],
        }
    }

    #[test]
    fn tiers_convert_and_order() {
        let tiers = tiers(&mk_auth()).expect("tiers");
        assert_eq!(
            tiers.resolve(2_000_000).map(|t| t.name.as_str()),
            Some("admin")
        );
        assert_eq!(
            tiers.resolve(5_000).map(|t| t.name.as_str()),
            Some("viewer")
        );
        assert!(tiers.resolve(10).is_none());
        let mut bad = mk_auth();
        bad.tiers[1].min_stake_mist = 1_000;
        assert!(super::tiers(&bad).is_err());
    }

    #[tokio::test]
    async fn builds_without_connecting() {
        let auth = authenticator(
            &mk_auth(),
            Some("vsock://3:8001".parse().expect("ep")),
            None,
            LookupLimits::default(),
            Arc::default(),
        )
        .expect("built lazily");
        drop(auth);
        let mut bad = mk_auth();
        bad.stake_type = "0xabc::vault::Locked".into();
        assert!(matches!(
            authenticator(&bad, None, None, LookupLimits::default(), Arc::default()),
            Err(AuthError::Stake(StakeError::MissingAmountField(_)))
        ));
        bad = mk_auth();
        bad.sui_rpc_url = "ftp://x".into();
        assert!(matches!(
            authenticator(&bad, None, None, LookupLimits::default(), Arc::default()),
            Err(AuthError::Egress(_))
        ));
    }
}
