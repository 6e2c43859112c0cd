//! Seal tokens: short-lived tokens signed by a Sui key, verified inside the enclave, and mapped
//! to Kubernetes groups by on-chain stake. They replace a shared join token.
//!
//! Layout:
//! - [`token`]: the `sui-seal.v1` format, [`SealVerifier`] and [`VerifiedToken`].
//! - [`personal_message`]: Sui personal-message signature verification with address binding,
//!   shared by the token verifier and `nautilusctl sui verify-personal-message`.
//! - [`tier`]: stake tiers and the Kubernetes [`UserInfo`] they produce.
//! - [`signer`]: Sui CLI keystores and minting.
//!
//! How the pieces meet in the agent's TokenReview webhook (stake lookup comes from the chain):
//!
//! ```text
//! token --SealVerifier::verify(token, now)--> VerifiedToken { address, .. }
//! address --stake lookup (sui-rpc)--> stake_mist
//! stake_mist --Tiers::user_info(address, stake_mist)--> Some(UserInfo) | None (deny)
//! ```
//!
//! The crate is free of Kubernetes and network dependencies; it never panics on input and
//! never puts a whole token into an error.

#![forbid(unsafe_code)]

pub mod personal_message;
pub mod signer;
pub mod tier;
pub mod token;

pub use personal_message::{SignatureError, SignatureVerifier, ZkLoginKey};
pub use signer::{Keystore, KeystoreKey, SignerError};
/// zkLogin verification inputs: the Groth16 verifying key and the issuers' JWKs.
pub use sui_crypto::zklogin::{ZkLoginCircuitMode, ZkloginVerifier};
pub use sui_sdk_types::{Address, SignatureScheme};
pub use sui_sdk_types::{Jwk, JwkId};
pub use tier::{Identity, Tier, TierError, Tiers, UserInfo, node_name};
pub use token::{Claims, SealError, SealVerifier, VerifiedToken};

/// Seconds since the Unix epoch, from the system clock (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
