//! Verification of Sui personal-message signatures, as Sui wallets and the Sui CLI make them.
//!
//! A serialized Sui signature is `flag || signature || public key` (simple schemes) or a
//! BCS-encoded multisig / zkLogin / passkey authenticator, the whole in standard base64. The
//! signed digest is `blake2b(intent [3, 0, 0] || bcs(message bytes))`; `sui-crypto` builds it
//! from a [`PersonalMessage`].
//!
//! `sui-crypto` checks that the signature is valid for the public key it carries, but not that
//! this key belongs to the address the caller claims. [`verify_personal_message`] does both:
//! the claimed address must be the one derived from the signature's key (simple schemes) or
//! committee (multisig). Seal tokens and `nautilusctl sui verify-personal-message` go through
//! this one function.
//!
//! zkLogin and passkey signatures are rejected (fail closed): zkLogin needs the issuer's JWKs
//! and the current epoch from the chain, which this crate does not have.

use std::borrow::Cow;

use base64::Engine as _;
use sui_crypto::{SuiVerifier as _, UserSignatureVerifier};
use sui_sdk_types::{Address, PersonalMessage, SignatureScheme, SimpleSignature, UserSignature};

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

    /// A zkLogin signature: not supported by this build, so rejected.
    #[error(
        "zklogin not supported: zklogin signatures are rejected; sign with an ed25519, secp256k1, secp256r1 or multisig key"
    )]
    ZkLoginNotSupported,

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

/// The address a signature speaks for: the key's address for simple schemes, the committee's
/// address for multisig. zkLogin and passkey are refused here, so that no caller can bind an
/// address to a signature this crate cannot verify.
pub fn signer_address(signature: &UserSignature) -> Result<Address, SignatureError> {
    match signature {
        UserSignature::Simple(SimpleSignature::Ed25519 { public_key, .. }) => {
            Ok(public_key.derive_address())
        }
        UserSignature::Simple(SimpleSignature::Secp256k1 { public_key, .. }) => {
            Ok(public_key.derive_address())
        }
        UserSignature::Simple(SimpleSignature::Secp256r1 { public_key, .. }) => {
            Ok(public_key.derive_address())
        }
        UserSignature::Multisig(multisig) => Ok(multisig.committee().derive_address()),
        UserSignature::ZkLogin(_) => Err(SignatureError::ZkLoginNotSupported),
        other => Err(SignatureError::UnsupportedScheme {
            scheme: scheme_name(other.scheme()).to_owned(),
        }),
    }
}

/// Verify `signature` as a Sui personal-message signature over exactly `message`, made by
/// `claimed`. Returns the signature's scheme.
///
/// The address binding is checked before the (costlier) cryptographic check.
pub fn verify_personal_message(
    claimed: &Address,
    message: &[u8],
    signature: &UserSignature,
) -> Result<SignatureScheme, SignatureError> {
    let derived = signer_address(signature)?;
    if &derived != claimed {
        return Err(SignatureError::AddressMismatch {
            claimed: *claimed,
            derived,
        });
    }
    let message = PersonalMessage(Cow::Borrowed(message));
    UserSignatureVerifier::new()
        .verify_personal_message(&message, signature)
        .map_err(|e| SignatureError::Invalid {
            reason: e.to_string(),
        })?;
    Ok(signature.scheme())
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
