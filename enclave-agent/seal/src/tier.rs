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
/// Key in [`UserInfo::extra`] carrying the whole Sui address of a node identity, whose username
/// holds only the node name.
pub const EXTRA_ADDRESS: &str = "nautilus.k3s-daas.io/address";
/// Prefix of the Kubernetes username: `sui:<address>`.
pub const USERNAME_PREFIX: &str = "sui:";
/// Prefix of a node's username, as the Node authorizer and NodeRestriction read it.
pub const NODE_USERNAME_PREFIX: &str = "system:node:";
/// The group every node is in; the Node authorizer treats a request as a node's only with it.
pub const NODES_GROUP: &str = "system:nodes";
/// Prefix of a node name derived from an address.
pub const NODE_NAME_PREFIX: &str = "sui-";
/// Hex digits of the address in a node name: 56 (224 bits), so that the name fits the 63
/// characters of the `kubernetes.io/hostname` label the kubelet puts on its Node. Another key
/// whose address shares those 224 bits would take about 2^224 tries to find.
pub const NODE_NAME_HEX_DIGITS: usize = 56;

/// The node name an address's node identity is bound to: `sui-` and the first
/// [`NODE_NAME_HEX_DIGITS`] lowercase hex digits of the address. The signer cannot choose it,
/// so one staker can never act as another staker's node; one address is one node.
pub fn node_name(address: &Address) -> String {
    let hex = hex::encode(address.as_bytes());
    format!("{NODE_NAME_PREFIX}{}", &hex[..NODE_NAME_HEX_DIGITS])
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

/// Which kind of Kubernetes identity a tier grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Identity {
    /// A user: `sui:<address>` with the tier's groups.
    #[default]
    User,
    /// A node: `system:node:<node_name(address)>` in `system:nodes` (plus the tier's groups),
    /// which the Node authorizer and NodeRestriction confine to that node's own objects.
    Node,
}

impl Identity {
    /// Whether this is the default, [`Identity::User`] (left out of serialized tiers, so a
    /// table without node tiers keeps the bytes, and the digests, it had before).
    pub fn is_user(&self) -> bool {
        *self == Self::User
    }
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
    /// The kind of identity the tier grants.
    #[serde(default, skip_serializing_if = "Identity::is_user")]
    pub identity: Identity,
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
    /// `sui:<address>`, or `system:node:<node name>` for a node identity.
    pub username: String,
    /// The address.
    pub uid: String,
    /// The tier's groups; a node identity's start with `system:nodes`.
    pub groups: Vec<String>,
    /// Stake and tier name, under [`EXTRA_STAKE_MIST`] and [`EXTRA_TIER`], and for a node
    /// identity the address under [`EXTRA_ADDRESS`].
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The identity of `address` in `tier`, with `stake_mist` recorded.
    pub fn new(address: &Address, stake_mist: u64, tier: &Tier) -> Self {
        let mut extra = BTreeMap::from([
            (EXTRA_STAKE_MIST.to_owned(), vec![stake_mist.to_string()]),
            (EXTRA_TIER.to_owned(), vec![tier.name.clone()]),
        ]);
        let (username, groups) = match tier.identity {
            Identity::User => (format!("{USERNAME_PREFIX}{address}"), tier.groups.clone()),
            Identity::Node => {
                extra.insert(EXTRA_ADDRESS.to_owned(), vec![address.to_string()]);
                let groups = std::iter::once(NODES_GROUP.to_owned())
                    .chain(tier.groups.iter().filter(|g| *g != NODES_GROUP).cloned())
                    .collect();
                (
                    format!("{NODE_USERNAME_PREFIX}{}", node_name(address)),
                    groups,
                )
            }
        };
        Self {
            username,
            uid: address.to_string(),
            groups,
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
            identity: Identity::User,
        }
    }

    #[test]
    fn node_names_are_the_address_in_lowercase_hex_within_63_characters() {
        let address: Address = format!("0x{}123456789A", "0".repeat(54))
            .parse()
            .expect("address");
        let name = node_name(&address);
        assert_eq!(name, format!("sui-{}12", "0".repeat(54)));
        assert_eq!(name.len(), 60);
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
    fn a_node_tier_binds_the_node_name_to_the_address() {
        let mut worker = tier("worker", 1_000, "nautilus:workers");
        worker.identity = Identity::Node;
        let tiers = Tiers::new(vec![worker]).expect("valid tier table");
        let address = Address::new([0xab; 32]);
        let info = tiers.user_info(&address, 1_500).expect("worker tier");
        let addr = format!("0x{}", "ab".repeat(32));
        let name = format!("sui-{}", "ab".repeat(28));
        assert_eq!(
            serde_json::to_value(&info).expect("serializable"),
            serde_json::json!({
                "username": format!("system:node:{name}"),
                "uid": addr,
                "groups": ["system:nodes", "nautilus:workers"],
                "extra": {
                    "nautilus.k3s-daas.io/address": [addr],
                    "nautilus.k3s-daas.io/stake-mist": ["1500"],
                    "nautilus.k3s-daas.io/tier": ["worker"],
                },
            })
        );
        // The Node object's name, and the `kubernetes.io/hostname` label value, fit 63 bytes.
        assert_eq!(node_name(&address), name);
        assert!(name.len() <= 63);
    }

    #[test]
    fn node_names_of_two_addresses_differ_and_carry_no_choice_of_the_signer() {
        let mut other = [0xab; 32];
        other[27] = 0xac;
        assert_ne!(
            node_name(&Address::new([0xab; 32])),
            node_name(&Address::new(other))
        );
        // Lowercase hex: a DNS-1123 label, as Node names must be.
        let name = node_name(&Address::new([0xEF; 32]));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }

    #[test]
    fn system_nodes_is_listed_once_for_a_node() {
        let mut worker = tier("worker", 1, NODES_GROUP);
        worker.identity = Identity::Node;
        let info = UserInfo::new(&Address::new([1; 32]), 1, &worker);
        assert_eq!(info.groups, vec![NODES_GROUP.to_owned()]);
    }

    #[test]
    fn identity_is_serialized_only_for_nodes() {
        let user = tier("admin", 10_000, "system:masters");
        assert_eq!(
            serde_json::to_string(&user).expect("json"),
            r#"{"name":"admin","minStakeMist":10000,"groups":["system:masters"]}"#
        );
        let node: Tier =
            serde_json::from_str(r#"{"name":"w","minStakeMist":1,"groups":[],"identity":"Node"}"#)
                .expect("node tier");
        assert_eq!(node.identity, Identity::Node);
        assert!(
            serde_json::from_str::<Tier>(r#"{"name":"w","minStakeMist":1,"identity":"node"}"#)
                .is_err()
        );
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
