//! Seal token format v1: encoding, parsing and verification.
//!
//! ```text
//! sui-seal.v1.<base64url-nopad(payload JSON)>.<base64-standard(Sui serialized signature)>
//! ```
//!
//! The signature is a Sui personal-message signature over the payload bytes exactly as they
//! appear (base64url-decoded) in the token; the payload is never re-serialized before
//! verification. See `docs/seal-tokens.md` for the full specification.
//!
//! [`SealVerifier::verify`] checks, in order: size, framing, payload JSON, audience, time
//! window, then the address binding and the signature. The cheap checks come first so junk is
//! refused without any elliptic-curve work.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sui_sdk_types::{Address, SignatureScheme, UserSignature};

use crate::personal_message::{self, SignatureError, SignatureVerifier};

/// First segment of every seal token.
pub const PREFIX: &str = "sui-seal";
/// Second segment: the format version this crate reads and writes.
pub const VERSION: &str = "v1";
/// Largest token accepted, in bytes, checked before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default allowance for clocks that disagree, in seconds.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 30;
/// Default upper bound on `exp - iat`, in seconds.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 60 * 60;
/// Length of `jti` in hex digits (128 bits).
pub const JTI_HEX_LEN: usize = 32;

/// Why a seal token was refused. Every variant is a distinct failure; none carries the token.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// The token is the empty string.
    #[error("token is empty")]
    Empty,

    /// The token is larger than [`MAX_TOKEN_BYTES`].
    #[error("token is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// Length of the token.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// The token does not start with `sui-seal.`.
    #[error("token does not start with `sui-seal.`; is this a seal token?")]
    WrongPrefix,

    /// The token has the seal prefix but a version this verifier does not read.
    #[error("token version is not `v1`; mint a new token with a current nautilusctl")]
    UnsupportedVersion,

    /// The token does not have exactly four dot-separated segments.
    #[error("token must have four dot-separated segments: sui-seal.v1.<payload>.<signature>")]
    Malformed,

    /// The payload segment is not unpadded, canonical base64url.
    #[error("token payload is not valid base64url without padding")]
    PayloadBase64,

    /// The payload is not the v1 claims JSON (unknown field, missing field, wrong type, ...).
    #[error("token payload is not valid claims json: {reason}")]
    PayloadJson {
        /// What the JSON parser said.
        reason: String,
    },

    /// The payload's `v` field is not 1.
    #[error("token payload version {version} is not supported (expected 1)")]
    PayloadVersion {
        /// The value found.
        version: u64,
    },

    /// The `addr` claim is not `0x` followed by 64 lower-case hex digits.
    #[error("claim `addr` must be 0x followed by 64 lower-case hex digits")]
    InvalidAddress,

    /// The `jti` claim is not 32 lower-case hex digits.
    #[error("claim `jti` must be 32 lower-case hex digits")]
    InvalidId,

    /// The `aud` claim is not the audience this verifier serves.
    #[error("token audience {got:?} is not {expected:?}; mint a token for this cluster")]
    WrongAudience {
        /// The configured audience.
        expected: String,
        /// The token's audience (truncated).
        got: String,
    },

    /// `exp` is not after `iat`.
    #[error("token expires (exp {expires_at}) before or when it is issued (iat {issued_at})")]
    ExpiresBeforeIssued {
        /// `iat`.
        issued_at: u64,
        /// `exp`.
        expires_at: u64,
    },

    /// `exp - iat` exceeds the configured maximum lifetime.
    #[error(
        "token lifetime of {lifetime}s exceeds the maximum of {max}s; mint a shorter-lived token"
    )]
    LifetimeTooLong {
        /// `exp - iat`.
        lifetime: u64,
        /// The configured maximum.
        max: u64,
    },

    /// `iat` lies in the future by more than the clock-skew allowance.
    #[error("token is issued at {issued_at}, in the future (now {now}); check the signer's clock")]
    IssuedInFuture {
        /// `iat`.
        issued_at: u64,
        /// The verifier's time.
        now: u64,
    },

    /// `nbf` lies in the future by more than the clock-skew allowance.
    #[error("token is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// `nbf`.
        not_before: u64,
        /// The verifier's time.
        now: u64,
    },

    /// The token has expired (beyond the clock-skew allowance).
    #[error("token expired at {expires_at} (now {now}); mint a new token")]
    Expired {
        /// `exp`.
        expires_at: u64,
        /// The verifier's time.
        now: u64,
    },

    /// The signature segment failed: encoding, scheme, address binding or the signature itself.
    #[error("token signature rejected for {address}")]
    Signature {
        /// The claimed address.
        address: Address,
        /// What failed.
        #[source]
        source: SignatureError,
    },
}

/// The v1 payload, exactly as serialized in the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Payload version; always 1.
    pub v: u64,
    /// The signer's Sui address, `0x` and 64 lower-case hex digits.
    pub addr: String,
    /// The audience: which cluster (API server) the token is for.
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Not valid before, Unix seconds (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Token id, 128 random bits as 32 lower-case hex digits.
    pub jti: String,
}

impl Claims {
    /// Claims for `address` and `audience`, issued at `now`, valid for `ttl_secs`, with a fresh
    /// random `jti` from the operating system.
    pub fn new(address: &Address, audience: impl Into<String>, now: u64, ttl_secs: u64) -> Self {
        let mut id = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
        Self {
            v: 1,
            addr: address.to_string(),
            aud: audience.into(),
            iat: now,
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            jti: hex::encode(id),
        }
    }
}

/// A token split into its parts, with the payload bytes as signed. No check beyond framing,
/// base64 and JSON syntax has been made.
#[derive(Debug, Clone)]
pub struct ParsedToken {
    /// The payload bytes exactly as decoded from the token.
    pub payload: Vec<u8>,
    /// The claims parsed from [`Self::payload`].
    pub claims: Claims,
    /// The signature segment, still base64 (decoded only after the cheap checks).
    signature_b64: String,
}

/// Encode a token from payload bytes and the signature over them.
pub fn encode(payload: &[u8], signature: &UserSignature) -> String {
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{PREFIX}.{VERSION}.{}.{}",
        b64url.encode(payload),
        signature.to_base64()
    )
}

/// Split and decode a token: size, prefix, version, segments, payload base64 and JSON.
pub fn parse(token: &str) -> Result<ParsedToken, SealError> {
    if token.is_empty() {
        return Err(SealError::Empty);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(SealError::TooLarge {
            len: token.len(),
            max: MAX_TOKEN_BYTES,
        });
    }
    let mut parts = token.split('.');
    if parts.next() != Some(PREFIX) {
        return Err(SealError::WrongPrefix);
    }
    if parts.next() != Some(VERSION) {
        return Err(SealError::UnsupportedVersion);
    }
    let (Some(payload_b64), Some(signature_b64), None) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SealError::Malformed);
    };
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload_b64)
        .map_err(|_| SealError::PayloadBase64)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|e| SealError::PayloadJson {
        reason: e.to_string(),
    })?;
    Ok(ParsedToken {
        payload,
        claims,
        signature_b64: signature_b64.to_owned(),
    })
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The signer's address (bound to the signature).
    pub address: Address,
    /// The audience (equal to the verifier's).
    pub audience: String,
    /// `iat`, Unix seconds.
    pub issued_at: u64,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// `nbf`, Unix seconds, if present.
    pub not_before: Option<u64>,
    /// `jti`: the token id, for logs and replay caches.
    pub id: String,
    /// The signature scheme used.
    pub scheme: SignatureScheme,
}

/// Verifies seal tokens for one audience.
#[derive(Debug, Clone)]
pub struct SealVerifier {
    audience: String,
    max_lifetime_secs: u64,
    clock_skew_secs: u64,
    signatures: SignatureVerifier,
}

impl SealVerifier {
    /// A verifier for `audience` with the default maximum lifetime (1 h) and clock skew (30 s).
    pub fn new(audience: impl Into<String>) -> Self {
        Self {
            audience: audience.into(),
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
            clock_skew_secs: DEFAULT_CLOCK_SKEW_SECS,
            signatures: SignatureVerifier::default(),
        }
    }

    /// Verify signatures with `signatures` (for example one that also accepts zkLogin) instead
    /// of the default, which accepts ed25519, secp256k1, secp256r1 and multisig.
    pub fn with_signature_verifier(mut self, signatures: SignatureVerifier) -> Self {
        self.signatures = signatures;
        self
    }

    /// The signature verifier (its [`SignatureVerifier::epoch_handle`] follows the chain).
    pub fn signature_verifier(&self) -> &SignatureVerifier {
        &self.signatures
    }

    /// Set the longest `exp - iat` accepted, in seconds.
    pub fn with_max_lifetime(mut self, secs: u64) -> Self {
        self.max_lifetime_secs = secs;
        self
    }

    /// Set the clock-skew allowance, in seconds.
    pub fn with_clock_skew(mut self, secs: u64) -> Self {
        self.clock_skew_secs = secs;
        self
    }

    /// The audience this verifier accepts.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verify `token` at `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<VerifiedToken, SealError> {
        let parsed = parse(token)?;
        let address = self.check_claims(&parsed.claims, now)?;
        let signature_error = |source| SealError::Signature { address, source };
        let signature = personal_message::decode_signature_base64(&parsed.signature_b64)
            .map_err(signature_error)?;
        let scheme = self
            .signatures
            .verify(&address, &parsed.payload, &signature)
            .map_err(signature_error)?;
        let Claims {
            aud,
            iat,
            exp,
            nbf,
            jti,
            ..
        } = parsed.claims;
        Ok(VerifiedToken {
            address,
            audience: aud,
            issued_at: iat,
            expires_at: exp,
            not_before: nbf,
            id: jti,
            scheme,
        })
    }

    /// Everything but the signature: version, field syntax, audience and time window.
    fn check_claims(&self, claims: &Claims, now: u64) -> Result<Address, SealError> {
        if claims.v != 1 {
            return Err(SealError::PayloadVersion { version: claims.v });
        }
        let address = parse_address(&claims.addr)?;
        if claims.jti.len() != JTI_HEX_LEN || !is_lower_hex(&claims.jti) {
            return Err(SealError::InvalidId);
        }
        if claims.aud != self.audience {
            return Err(SealError::WrongAudience {
                expected: self.audience.clone(),
                got: truncate(&claims.aud, 64),
            });
        }
        if claims.exp <= claims.iat {
            return Err(SealError::ExpiresBeforeIssued {
                issued_at: claims.iat,
                expires_at: claims.exp,
            });
        }
        let lifetime = claims.exp - claims.iat;
        if lifetime > self.max_lifetime_secs {
            return Err(SealError::LifetimeTooLong {
                lifetime,
                max: self.max_lifetime_secs,
            });
        }
        let latest = now.saturating_add(self.clock_skew_secs);
        if claims.iat > latest {
            return Err(SealError::IssuedInFuture {
                issued_at: claims.iat,
                now,
            });
        }
        if let Some(not_before) = claims.nbf
            && not_before > latest
        {
            return Err(SealError::NotYetValid { not_before, now });
        }
        if now > claims.exp.saturating_add(self.clock_skew_secs) {
            return Err(SealError::Expired {
                expires_at: claims.exp,
                now,
            });
        }
        Ok(address)
    }
}

/// Parse the strict `0x` + 64 lower-case hex form that tokens carry.
pub fn parse_address(text: &str) -> Result<Address, SealError> {
    let hex_digits = text.strip_prefix("0x").ok_or(SealError::InvalidAddress)?;
    if hex_digits.len() != 64 || !is_lower_hex(hex_digits) {
        return Err(SealError::InvalidAddress);
    }
    let mut bytes = [0u8; Address::LENGTH];
    hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| SealError::InvalidAddress)?;
    Ok(Address::new(bytes))
}

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn truncate(text: &str, max_chars: usize) -> String {
    let mut out: String = text.chars().take(max_chars).collect();
    if text.chars().count() > max_chars {
        out.push('…');
    }
    out
}
