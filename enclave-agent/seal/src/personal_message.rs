//! Verification of Sui personal-message signatures, as Sui wallets and the Sui CLI make them.
//!
//! A serialized Sui signature is `flag || signature || public key` (simple schemes) or a
//! BCS-encoded multisig / zkLogin / passkey authenticator, the whole in standard base64. The
//! signed digest is `blake2b(intent [3, 0, 0] || bcs(message bytes))`; `sui-crypto` builds it
//! from a [`PersonalMessage`].
//!
//! `sui-crypto` checks that the signature is valid for the public key it carries, but not that
//! this key belongs to the address the caller claims. [`SignatureVerifier::verify`] does both:
//! the claimed address must be one derived from the signature's key (simple schemes),
//! committee (multisig) or issuer and address seed (zkLogin). Seal tokens and
//! `nautilusctl sui verify-personal-message` go through this one function.
//!
//! zkLogin signatures verify only through a [`SignatureVerifier`] configured with what they
//! need from outside the signature: the issuers' JWKs, the Groth16 verifying key (mainnet, or
//! the development key for localnet test issuers) and the chain's current epoch, which must not
//! be past the signature's `max_epoch`. The claimed address must be one of the two addresses
//! Sui derives from the issuer and address seed (padded and unpadded). Without that
//! configuration, and for passkeys, signatures are refused (fail closed).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use sui_crypto::zklogin::ZkloginVerifier;
use sui_crypto::{SuiVerifier as _, UserSignatureVerifier};
use sui_sdk_types::{
    Address, Jwk, JwkId, PersonalMessage, SignatureScheme, SimpleSignature, UserSignature,
};

/// Largest serialized signature accepted, in bytes. A multisig of ten members with simple keys
/// stays well below this; it bounds the work done on hostile input.
pub const MAX_SIGNATURE_BYTES: usize = 4096;

/// Why a personal-message signature was not accepted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature is larger than [`MAX_SIGNATURE_BYTES`].
    #[error("signature is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Decoded (or, for base64 input, encoded) length.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// The signature text is not standard, padded base64.
    #[error("signature is not valid base64 (standard alphabet, padded)")]
    Base64,

    /// The bytes are not a Sui serialized signature.
    #[error("signature bytes are not a sui serialized signature: {reason}")]
    Encoding {
        /// What the decoder said.
        reason: String,
    },

    /// A zkLogin signature, but the verifier has no zkLogin inputs (JWKs, verifying key,
    /// current epoch) configured.
    #[error(
        "zklogin not configured: this verifier has no issuer keys or current epoch; sign with an ed25519, secp256k1, secp256r1 or multisig key"
    )]
    ZkLoginNotConfigured,

    /// A zkLogin signature, but the chain's current epoch is not known yet (fail closed until
    /// it is).
    #[error("zklogin refused: the current epoch of the chain is not known yet")]
    ZkLoginEpochUnknown,

    /// A zkLogin signature whose ephemeral key expired: the chain is past its `max_epoch`.
    #[error("zklogin signature expired: max epoch {max_epoch}, current epoch {current_epoch}")]
    ZkLoginExpired {
        /// The last epoch the signature's ephemeral key is valid in.
        max_epoch: u64,
        /// The chain's current epoch, as configured.
        current_epoch: u64,
    },

    /// A signature scheme this verifier does not accept (passkey, or a future one).
    #[error(
        "signature scheme {scheme} is not supported; use ed25519, secp256k1, secp256r1 or multisig"
    )]
    UnsupportedScheme {
        /// The scheme's name.
        scheme: String,
    },

    /// The signature is well formed and valid, but made by a key (or committee) whose address
    /// is not the claimed one.
    #[error("signature was made by {derived}, not by the claimed address {claimed}")]
    AddressMismatch {
        /// The address the caller claimed.
        claimed: Address,
        /// The address derived from the signature's public key or multisig committee.
        derived: Address,
    },

    /// The cryptographic check failed: wrong message, wrong key, or a tampered signature.
    #[error("signature does not verify over the personal message: {reason}")]
    Invalid {
        /// What the verifier said.
        reason: String,
    },
}

/// Decode a standard-base64 Sui serialized signature.
///
/// The input must be canonical: re-encoding the parsed signature must give back the same
/// bytes, so one signature has exactly one text form.
pub fn decode_signature_base64(signature_b64: &str) -> Result<UserSignature, SignatureError> {
    // Base64 grows by 4/3; reject before decoding.
    let max_b64 = MAX_SIGNATURE_BYTES.div_ceil(3) * 4;
    if signature_b64.len() > max_b64 {
        return Err(SignatureError::TooLarge {
            len: signature_b64.len(),
            max: max_b64,
        });
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(signature_b64)
        .map_err(|_| SignatureError::Base64)?;
    decode_signature(&bytes)
}

/// Parse Sui serialized signature bytes (`flag || ...`), rejecting non-canonical encodings.
pub fn decode_signature(bytes: &[u8]) -> Result<UserSignature, SignatureError> {
    if bytes.len() > MAX_SIGNATURE_BYTES {
        return Err(SignatureError::TooLarge {
            len: bytes.len(),
            max: MAX_SIGNATURE_BYTES,
        });
    }
    let signature = UserSignature::from_bytes(bytes).map_err(|e| SignatureError::Encoding {
        reason: e.to_string(),
    })?;
    if signature.to_bytes() != bytes {
        return Err(SignatureError::Encoding {
            reason: "encoding is not canonical".to_owned(),
        });
    }
    Ok(signature)
}

/// The addresses a signature may speak for: the key's address for simple schemes, the
/// committee's address for multisig, and for zkLogin the two addresses Sui derives from the
/// issuer and address seed (padded and unpadded seed). Passkey and unknown schemes are refused
/// here, so that no caller can bind an address to a signature this crate cannot verify.
pub fn signer_addresses(signature: &UserSignature) -> Result<Vec<Address>, SignatureError> {
    match signature {
        UserSignature::Simple(SimpleSignature::Ed25519 { public_key, .. }) => {
            Ok(vec![public_key.derive_address()])
        }
        UserSignature::Simple(SimpleSignature::Secp256k1 { public_key, .. }) => {
            Ok(vec![public_key.derive_address()])
        }
        UserSignature::Simple(SimpleSignature::Secp256r1 { public_key, .. }) => {
            Ok(vec![public_key.derive_address()])
        }
        UserSignature::Multisig(multisig) => Ok(vec![multisig.committee().derive_address()]),
        UserSignature::ZkLogin(authenticator) => Ok(authenticator
            .inputs
            .public_identifier()
            .derive_address()
            .collect()),
        other => Err(SignatureError::UnsupportedScheme {
            scheme: scheme_name(other.scheme()).to_owned(),
        }),
    }
}

/// Verifies personal-message signatures and binds them to the claimed address.
///
/// [`SignatureVerifier::default`] accepts ed25519, secp256k1, secp256r1 and multisig (of those
/// keys); [`SignatureVerifier::with_zklogin`] adds zkLogin.
#[derive(Debug, Default, Clone)]
pub struct SignatureVerifier {
    inner: UserSignatureVerifier,
    /// The chain's current epoch, shared with whoever keeps it fresh ([`UNKNOWN_EPOCH`] until
    /// known); `None` without zkLogin.
    current_epoch: Option<Arc<AtomicU64>>,
}

/// The Groth16 verifying key zkLogin proofs are checked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZkLoginKey {
    /// The production circuit's key.
    Mainnet,
    /// The development key, for localnet test issuers.
    Dev,
}

impl std::str::FromStr for ZkLoginKey {
    type Err = String;

    /// `mainnet` or `dev`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "mainnet" => Ok(Self::Mainnet),
            "dev" => Ok(Self::Dev),
            other => Err(format!(
                "zkLogin verifying key {other:?} is neither mainnet nor dev"
            )),
        }
    }
}

/// The epoch value that means "not known yet": zkLogin signatures are refused meanwhile.
pub const UNKNOWN_EPOCH: u64 = u64::MAX;

impl SignatureVerifier {
    /// A verifier that also accepts zkLogin signatures whose proofs verify with `zklogin`
    /// (its JWKs and Groth16 key) and whose `max_epoch` is not before `current_epoch`.
    /// `current_epoch` may be [`UNKNOWN_EPOCH`], to be set later through
    /// [`SignatureVerifier::epoch_handle`].
    pub fn with_zklogin(zklogin: ZkloginVerifier, current_epoch: u64) -> Self {
        let mut inner = UserSignatureVerifier::new();
        inner.with_zklogin_verifier(zklogin);
        Self {
            inner,
            current_epoch: Some(Arc::new(AtomicU64::new(current_epoch))),
        }
    }

    /// A verifier that also accepts zkLogin signatures proven with `key` against the issuer
    /// keys `jwks`; see [`SignatureVerifier::with_zklogin`] for `current_epoch`.
    pub fn with_zklogin_keys(
        key: ZkLoginKey,
        jwks: impl IntoIterator<Item = (JwkId, Jwk)>,
        current_epoch: u64,
    ) -> Self {
        let mut verifier = match key {
            ZkLoginKey::Mainnet => ZkloginVerifier::new_mainnet(),
            ZkLoginKey::Dev => ZkloginVerifier::new_dev(),
        };
        verifier.jwks_mut().extend(jwks);
        Self::with_zklogin(verifier, current_epoch)
    }

    /// The shared current epoch, for a task that follows the chain (`None` without zkLogin).
    /// Clones of this verifier share it.
    pub fn epoch_handle(&self) -> Option<Arc<AtomicU64>> {
        self.current_epoch.clone()
    }

    /// Set the chain's current epoch, as the chain reports it (no effect without zkLogin).
    pub fn set_current_epoch(&self, epoch: u64) {
        if let Some(current) = &self.current_epoch {
            current.store(epoch, Ordering::SeqCst);
        }
    }

    /// Verify `signature` as a Sui personal-message signature over exactly `message`, made by
    /// `claimed`. Returns the signature's scheme.
    ///
    /// The address binding and the epoch are checked before the (costlier) cryptography.
    pub fn verify(
        &self,
        claimed: &Address,
        message: &[u8],
        signature: &UserSignature,
    ) -> Result<SignatureScheme, SignatureError> {
        let derived = signer_addresses(signature)?;
        if !derived.contains(claimed) {
            return Err(SignatureError::AddressMismatch {
                claimed: *claimed,
                derived: derived.first().copied().unwrap_or(Address::ZERO),
            });
        }
        if let UserSignature::ZkLogin(authenticator) = signature {
            let Some(current_epoch) = self
                .current_epoch
                .as_ref()
                .map(|e| e.load(Ordering::SeqCst))
            else {
                return Err(SignatureError::ZkLoginNotConfigured);
            };
            if current_epoch == UNKNOWN_EPOCH {
                return Err(SignatureError::ZkLoginEpochUnknown);
            }
            if authenticator.max_epoch < current_epoch {
                return Err(SignatureError::ZkLoginExpired {
                    max_epoch: authenticator.max_epoch,
                    current_epoch,
                });
            }
        }
        let message = PersonalMessage(Cow::Borrowed(message));
        self.inner
            .verify_personal_message(&message, signature)
            .map_err(|e| SignatureError::Invalid {
                reason: e.to_string(),
            })?;
        Ok(signature.scheme())
    }
}

/// Verify with [`SignatureVerifier::default`]: every scheme but zkLogin and passkey.
pub fn verify_personal_message(
    claimed: &Address,
    message: &[u8],
    signature: &UserSignature,
) -> Result<SignatureScheme, SignatureError> {
    SignatureVerifier::default().verify(claimed, message, signature)
}

/// [`verify_personal_message`] for a base64 serialized signature, as wallets hand them out.
pub fn verify_personal_message_base64(
    claimed: &Address,
    message: &[u8],
    signature_b64: &str,
) -> Result<SignatureScheme, SignatureError> {
    let signature = decode_signature_base64(signature_b64)?;
    verify_personal_message(claimed, message, &signature)
}

/// Lower-case name of a signature scheme, as Sui tools print it.
pub fn scheme_name(scheme: SignatureScheme) -> &'static str {
    match scheme {
        SignatureScheme::Ed25519 => "ed25519",
        SignatureScheme::Secp256k1 => "secp256k1",
        SignatureScheme::Secp256r1 => "secp256r1",
        SignatureScheme::Multisig => "multisig",
        SignatureScheme::Bls12381 => "bls12381",
        SignatureScheme::ZkLogin => "zklogin",
        SignatureScheme::Passkey => "passkey",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_rejected_without_panic() {
        for input in ["", "!!!!", "AA==", "AAAA", "////", "A"] {
            assert!(
                decode_signature_base64(input).is_err(),
                "{input:?} must not decode"
            );
        }
    }

    #[test]
    fn oversize_signature_is_rejected_before_decoding() {
        let huge = "A".repeat(MAX_SIGNATURE_BYTES * 2);
        assert!(matches!(
            decode_signature_base64(&huge),
            Err(SignatureError::TooLarge { .. })
        ));
    }
}
