//! Stake tiers: from an address's stake to the Kubernetes identity it is granted.
//!
//! Tiers are kept ordered by `min_stake_mist`, highest first. A stake reaches the highest tier
//! whose threshold it meets; a stake below every tier reaches none, and the caller denies.
//! The fields match the `StakeTier` type of the CRD (`nautilus-crds`), which this crate does
//! not depend on so it stays free of Kubernetes crates.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sui_sdk_types::Address;

/// Key in [`UserInfo::extra`] carrying the stake, in MIST, as a decimal string.
pub const EXTRA_STAKE_MIST: &str = "nautilus.k3s-daas.io/stake-mist";
/// Key in [`UserInfo::extra`] carrying the tier's name.
pub const EXTRA_TIER: &str = "nautilus.k3s-daas.io/tier";
/// Prefix of the Kubernetes username: `sui:<address>`.
pub const USERNAME_PREFIX: &str = "sui:";
/// Prefix of the Node name a signer's kubelet registers (see [`node_name`]).
pub const NODE_NAME_PREFIX: &str = "sui-";
/// How many hex digits of the address [`node_name`] keeps: as many as fit in 63 characters, the
/// longest label value, because the kubelet copies its node name into the Node's
/// `kubernetes.io/hostname` label and the API server refuses a longer value.
pub const NODE_NAME_HEX_DIGITS: usize = 63 - NODE_NAME_PREFIX.len();

/// The name of the Node that `address` may run: `sui-` and the first 59 lowercase hex digits
/// of the address, without `0x` (63 characters, so a valid DNS label, DNS subdomain and label
/// value: the kubelet also writes it as the `kubernetes.io/hostname` label).
///
/// The worker does not choose it: the token webhook derives the node identity of a signer with
/// this function, and `nautilusctl join` tells the kubelet to register under the same name
/// (`--hostname-override`), so each name belongs to one key. 59 hex digits are 236 bits of the
/// address (a BLAKE2b-256 hash of the public key): finding another key whose address shares
/// them, to act as someone else's node, is a 2^236 search.
pub fn node_name(address: &Address) -> String {
    let mut name = format!("{NODE_NAME_PREFIX}{}", hex::encode(address.inner()));
    name.truncate(NODE_NAME_PREFIX.len() + NODE_NAME_HEX_DIGITS);
    name
}

/// Why a tier table was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TierError {
    /// A tier has an empty name.
    #[error("tier names must not be empty")]
    EmptyName,

    /// Two tiers share a name.
    #[error("tier name {name:?} is used twice; names must be unique")]
    DuplicateName {
        /// The repeated name.
        name: String,
    },

    /// Two tiers share a threshold, so which one applies would be ambiguous.
    #[error("tiers {first:?} and {second:?} have the same min_stake_mist {min_stake_mist}")]
    DuplicateThreshold {
        /// One tier.
        first: String,
        /// The other.
        second: String,
        /// Their shared threshold.
        min_stake_mist: u64,
    },
}

/// One access tier: a stake threshold and the groups it grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tier {
    /// Name of the tier, reported in [`EXTRA_TIER`].
    pub name: String,
    /// Least stake, in MIST (1 SUI = 10^9 MIST), that reaches this tier.
    pub min_stake_mist: u64,
    /// Kubernetes groups a member of this tier gets.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A validated tier table, ordered by threshold, highest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tiers {
    tiers: Vec<Tier>,
}

impl Tiers {
    /// Validate and order `tiers`: names non-empty and unique, thresholds unique.
    pub fn new(mut tiers: Vec<Tier>) -> Result<Self, TierError> {
        let mut names = BTreeSet::new();
        for tier in &tiers {
            if tier.name.is_empty() {
                return Err(TierError::EmptyName);
            }
            if !names.insert(tier.name.as_str()) {
                return Err(TierError::DuplicateName {
                    name: tier.name.clone(),
                });
            }
        }
        tiers.sort_by_key(|tier| std::cmp::Reverse(tier.min_stake_mist));
        if let Some(pair) = tiers
            .windows(2)
            .find(|pair| pair[0].min_stake_mist == pair[1].min_stake_mist)
        {
            return Err(TierError::DuplicateThreshold {
                first: pair[0].name.clone(),
                second: pair[1].name.clone(),
                min_stake_mist: pair[0].min_stake_mist,
            });
        }
        Ok(Self { tiers })
    }

    /// The tiers, highest threshold first.
    pub fn as_slice(&self) -> &[Tier] {
        &self.tiers
    }

    /// The highest tier whose threshold `stake_mist` meets, or `None` (deny).
    pub fn resolve(&self, stake_mist: u64) -> Option<&Tier> {
        self.tiers
            .iter()
            .find(|tier| tier.min_stake_mist <= stake_mist)
    }

    /// The Kubernetes identity of `address` with `stake_mist` staked, or `None` (deny).
    pub fn user_info(&self, address: &Address, stake_mist: u64) -> Option<UserInfo> {
        self.resolve(stake_mist)
            .map(|tier| UserInfo::new(address, stake_mist, tier))
    }
}

/// The Kubernetes user an authenticated address becomes, shaped like `authentication.k8s.io/v1`
/// `UserInfo` so a TokenReview response can embed it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// `sui:<address>`.
    pub username: String,
    /// The address.
    pub uid: String,
    /// The tier's groups.
    pub groups: Vec<String>,
    /// Stake and tier name, under [`EXTRA_STAKE_MIST`] and [`EXTRA_TIER`].
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The identity of `address` in `tier`, with `stake_mist` recorded.
    pub fn new(address: &Address, stake_mist: u64, tier: &Tier) -> Self {
        let address = address.to_string();
        let extra = BTreeMap::from([
            (EXTRA_STAKE_MIST.to_owned(), vec![stake_mist.to_string()]),
            (EXTRA_TIER.to_owned(), vec![tier.name.clone()]),
        ]);
        Self {
            username: format!("{USERNAME_PREFIX}{address}"),
            uid: address,
            groups: tier.groups.clone(),
            extra,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn tier(name: &str, min: u64, group: &str) -> Tier {
        Tier {
            name: name.to_owned(),
            min_stake_mist: min,
            groups: vec![group.to_owned()],
        }
    }

    #[test]
    fn node_names_are_the_address_in_lowercase_hex_within_63_characters() {
        let address: Address = format!("0x{}123456789A", "0".repeat(54))
            .parse()
            .expect("address");
        let name = node_name(&address);
        assert_eq!(name, format!("sui-{}12345", "0".repeat(54)));
        assert_eq!(name.len(), 63);
        // A DNS label and a label value: lowercase alphanumerics and '-', alphanumeric at
        // both ends.
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        assert!(name.ends_with(|c: char| c.is_ascii_alphanumeric()));
        // The address's own digits, in order.
        let hex = address.to_string();
        assert!(hex.starts_with(&format!("0x{}", &name[NODE_NAME_PREFIX.len()..])));
        // Another address gives another name.
        let other: Address = "0x1".parse().expect("address");
        assert_ne!(node_name(&other), name);
    }

    /// Given out of order on purpose: `Tiers::new` must sort them.
    fn table() -> Tiers {
        Tiers::new(vec![
            tier("reader", 100, "view"),
            tier("admin", 10_000, "system:masters"),
            tier("worker", 1_000, "system:nodes"),
        ])
        .expect("valid tier table")
    }

    #[rstest]
    #[case::zero(0, None)]
    #[case::below_all(99, None)]
    #[case::at_lowest(100, Some("reader"))]
    #[case::between_lowest_and_middle(999, Some("reader"))]
    #[case::at_middle(1_000, Some("worker"))]
    #[case::just_above_middle(1_001, Some("worker"))]
    #[case::just_below_highest(9_999, Some("worker"))]
    #[case::at_highest(10_000, Some("admin"))]
    #[case::max(u64::MAX, Some("admin"))]
    fn resolves_highest_tier_met(#[case] stake: u64, #[case] expected: Option<&str>) {
        assert_eq!(table().resolve(stake).map(|t| t.name.as_str()), expected);
    }

    #[rstest]
    #[case::zero_threshold_admits_zero(0, Some("open"))]
    #[case::max_threshold_only_at_max(u64::MAX, Some("whale"))]
    #[case::just_below_max(u64::MAX - 1, Some("open"))]
    fn extreme_thresholds(#[case] stake: u64, #[case] expected: Option<&str>) {
        let tiers = Tiers::new(vec![
            tier("open", 0, "view"),
            tier("whale", u64::MAX, "all"),
        ])
        .expect("valid tier table");
        assert_eq!(tiers.resolve(stake).map(|t| t.name.as_str()), expected);
    }

    #[test]
    fn empty_table_denies_everyone() {
        let tiers = Tiers::new(Vec::new()).expect("empty is valid");
        assert_eq!(tiers.resolve(u64::MAX), None);
    }

    #[test]
    fn orders_descending() {
        let mins: Vec<u64> = table()
            .as_slice()
            .iter()
            .map(|t| t.min_stake_mist)
            .collect();
        assert_eq!(mins, vec![10_000, 1_000, 100]);
    }

    #[rstest]
    #[case::empty_name(vec![tier("", 1, "g")], TierError::EmptyName)]
    #[case::duplicate_name(
        vec![tier("a", 1, "g"), tier("a", 2, "g")],
        TierError::DuplicateName { name: "a".into() }
    )]
    #[case::duplicate_threshold(
        vec![tier("a", 5, "g"), tier("b", 5, "g")],
        TierError::DuplicateThreshold { first: "a".into(), second: "b".into(), min_stake_mist: 5 }
    )]
    fn rejects_invalid_tables(#[case] tiers: Vec<Tier>, #[case] expected: TierError) {
        assert_eq!(Tiers::new(tiers), Err(expected));
    }

    #[test]
    fn user_info_has_kubernetes_shape() {
        let address = Address::new([0xab; 32]);
        let info = table().user_info(&address, 1_500).expect("worker tier");
        let json = serde_json::to_value(&info).expect("serializable");
        let addr = format!("0x{}", "ab".repeat(32));
        assert_eq!(
            json,
            serde_json::json!({
                "username": format!("sui:{addr}"),
                "uid": addr,
                "groups": ["system:nodes"],
                "extra": {
                    "nautilus.k3s-daas.io/stake-mist": ["1500"],
                    "nautilus.k3s-daas.io/tier": ["worker"],
                },
            })
        );
        assert_eq!(table().user_info(&address, 10), None);
    }

    #[test]
    fn tier_json_matches_crd_field_names() {
        let tier: Tier = serde_json::from_str(
            r#"{"name":"admin","minStakeMist":10000,"groups":["system:masters"]}"#,
        )
        .expect("crd-shaped tier");
        assert_eq!(tier, self::tier("admin", 10_000, "system:masters"));
        assert!(serde_json::from_str::<Tier>(r#"{"name":"a","minStakeMist":1,"x":1}"#).is_err());
    }
}
