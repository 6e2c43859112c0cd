//! The signing side: Sui CLI keystores and minting tokens.
//!
//! A `sui.keystore` file (as written by `sui client` / `sui keytool`) is a JSON array of
//! strings, each the base64 of `flag || 32-byte private key` with flag `0x00` ed25519, `0x01`
//! secp256k1, `0x02` secp256r1. Bech32 `suiprivkey1...` entries (the newer export format) are
//! accepted too. Keys are never printed; only their addresses are.

use std::{fmt, path::Path};

use sui_crypto::{SuiSigner as _, simple::SimpleKeypair};
use sui_sdk_types::{
    Address, MultisigMemberPublicKey, PersonalMessage, SignatureScheme, UserSignature,
};

use crate::token::{self, Claims};

/// Why a keystore could not be read, or a token not minted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerError {
    /// The keystore file could not be read.
    #[error("cannot read keystore {path}")]
    ReadKeystore {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The keystore is not a JSON array of strings.
    #[error("keystore is not a json array of base64 strings")]
    KeystoreJson {
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },

    /// An entry is not a Sui private key (bad base64, unknown flag, wrong length).
    #[error("keystore entry {index} is not a sui private key ({reason})")]
    KeystoreEntry {
        /// Position in the array, from 0.
        index: usize,
        /// What the decoder said (never the key).
        reason: String,
    },

    /// The keystore holds no key.
    #[error("keystore holds no key; create one with `sui keytool generate`")]
    EmptyKeystore,

    /// No key in the keystore has the requested address.
    #[error("no key for address {address} in the keystore; it holds {available}")]
    AddressNotFound {
        /// The requested address.
        address: Address,
        /// The addresses the keystore does hold, comma separated.
        available: String,
    },

    /// The payload could not be serialized.
    #[error("cannot serialize token claims")]
    SerializeClaims {
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// The signer failed.
    #[error("signing failed: {reason}")]
    Sign {
        /// What the signer said.
        reason: String,
    },
}

/// One key from a keystore, with its address.
#[derive(Clone)]
pub struct KeystoreKey {
    keypair: SimpleKeypair,
    address: Address,
}

impl fmt::Debug for KeystoreKey {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeystoreKey")
            .field("address", &self.address)
            .field("scheme", &self.scheme())
            .finish_non_exhaustive()
    }
}

impl KeystoreKey {
    /// Wrap a keypair, deriving its address.
    pub fn new(keypair: SimpleKeypair) -> Self {
        let address = keypair.verifying_key().derive_address();
        Self { keypair, address }
    }

    /// The key's Sui address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// The key's scheme.
    pub fn scheme(&self) -> SignatureScheme {
        self.keypair.scheme()
    }

    /// The keystore entry for this key: base64 of `flag || private key`.
    pub fn to_keystore_entry(&self) -> String {
        self.keypair.to_base64()
    }

    /// The key's public key, in the form multisig committees list their members.
    pub fn public_key(&self) -> MultisigMemberPublicKey {
        self.keypair.public_key()
    }

    /// Sign `message` as a Sui personal message. `to_base64()` on the result gives the
    /// serialized signature wallets print.
    pub fn sign_personal_message(&self, message: &[u8]) -> Result<UserSignature, SignerError> {
        let message = PersonalMessage(message.into());
        self.keypair
            .sign_personal_message(&message)
            .map_err(|e| SignerError::Sign {
                reason: e.to_string(),
            })
    }

    /// Mint a token carrying `claims`, signed by this key. `claims.addr` is set to this key's
    /// address.
    pub fn mint(&self, claims: &Claims) -> Result<String, SignerError> {
        let claims = Claims {
            addr: self.address.to_string(),
            ..claims.clone()
        };
        let payload = serde_json::to_vec(&claims)
            .map_err(|source| SignerError::SerializeClaims { source })?;
        let signature = self.sign_personal_message(&payload)?;
        Ok(token::encode(&payload, &signature))
    }

    /// Mint a token for `audience`, issued at `now` (Unix seconds), valid for `ttl_secs`, with a
    /// fresh random id.
    pub fn mint_for(&self, audience: &str, now: u64, ttl_secs: u64) -> Result<String, SignerError> {
        self.mint(&Claims::new(&self.address, audience, now, ttl_secs))
    }
}

/// The keys of a Sui CLI keystore, in file order.
#[derive(Debug, Clone, Default)]
pub struct Keystore {
    keys: Vec<KeystoreKey>,
}

impl Keystore {
    /// Read a `sui.keystore` file.
    pub fn load(path: &Path) -> Result<Self, SignerError> {
        let text = std::fs::read_to_string(path).map_err(|source| SignerError::ReadKeystore {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parse keystore JSON.
    pub fn from_json(text: &str) -> Result<Self, SignerError> {
        let entries: Vec<String> =
            serde_json::from_str(text).map_err(|source| SignerError::KeystoreJson { source })?;
        let keys = entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                let entry = entry.trim();
                let keypair = if entry.starts_with("suiprivkey") {
                    SimpleKeypair::from_suiprivkey(entry)
                } else {
                    SimpleKeypair::from_base64(entry)
                };
                keypair
                    .map(KeystoreKey::new)
                    .map_err(|e| SignerError::KeystoreEntry {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    /// A keystore of the given keys.
    pub fn from_keys(keys: Vec<KeystoreKey>) -> Self {
        Self { keys }
    }

    /// The keystore as JSON, in the Sui CLI format.
    pub fn to_json(&self) -> String {
        let entries: Vec<String> = self
            .keys
            .iter()
            .map(KeystoreKey::to_keystore_entry)
            .collect();
        serde_json::Value::from(entries).to_string()
    }

    /// The keys, in file order.
    pub fn keys(&self) -> &[KeystoreKey] {
        &self.keys
    }

    /// The key for `address`, or without an address the first key (the only one, usually).
    pub fn select(&self, address: Option<&Address>) -> Result<&KeystoreKey, SignerError> {
        match address {
            None => self.keys.first().ok_or(SignerError::EmptyKeystore),
            Some(address) => self
                .keys
                .iter()
                .find(|key| &key.address == address)
                .ok_or_else(|| SignerError::AddressNotFound {
                    address: *address,
                    available: self
                        .keys
                        .iter()
                        .map(|key| key.address.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                }),
        }
    }
}

/// Generate a fresh key of `scheme` (ed25519, secp256k1 or secp256r1) from the OS RNG.
/// Returns `None` for schemes that have no single private key.
pub fn generate_key(scheme: SignatureScheme) -> Option<KeystoreKey> {
    let rng = rand_core::OsRng;
    let keypair = match scheme {
        SignatureScheme::Ed25519 => sui_crypto::ed25519::Ed25519PrivateKey::generate(rng).into(),
        SignatureScheme::Secp256k1 => {
            sui_crypto::secp256k1::Secp256k1PrivateKey::generate(rng).into()
        }
        SignatureScheme::Secp256r1 => {
            sui_crypto::secp256r1::Secp256r1PrivateKey::generate(rng).into()
        }
        _ => return None,
    };
    Some(KeystoreKey::new(keypair))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystore_round_trips_and_selects_by_address() {
        let keys: Vec<KeystoreKey> = [
            SignatureScheme::Ed25519,
            SignatureScheme::Secp256k1,
            SignatureScheme::Secp256r1,
        ]
        .into_iter()
        .map(|s| generate_key(s).expect("simple scheme"))
        .collect();
        let json = Keystore::from_keys(keys.clone()).to_json();
        let store = Keystore::from_json(&json).expect("own output parses");
        assert_eq!(store.keys().len(), 3);
        for (key, parsed) in keys.iter().zip(store.keys()) {
            assert_eq!(key.address(), parsed.address());
            assert_eq!(key.scheme(), parsed.scheme());
        }
        let second = keys[1].address();
        let picked = store.select(Some(&second)).expect("present");
        assert_eq!(picked.address(), second);
        assert_eq!(
            store.select(None).expect("first").address(),
            keys[0].address()
        );
        assert!(matches!(
            store.select(Some(&Address::new([7; 32]))),
            Err(SignerError::AddressNotFound { .. })
        ));
    }

    #[test]
    fn keystore_entry_format_is_flag_and_32_bytes() {
        use base64::Engine as _;
        for (scheme, flag) in [
            (SignatureScheme::Ed25519, 0u8),
            (SignatureScheme::Secp256k1, 1),
            (SignatureScheme::Secp256r1, 2),
        ] {
            let key = generate_key(scheme).expect("simple scheme");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(key.to_keystore_entry())
                .expect("base64");
            assert_eq!(raw.len(), 33);
            assert_eq!(raw[0], flag);
        }
    }

    #[test]
    fn known_ed25519_keystore_entry_gives_known_address() {
        // Private key of all zero bytes, ed25519 (RFC 8032 seed 0 -> public key 3b6a27bc...).
        // Address computed outside this crate as blake2b-256(0x00 || public key).
        let store = Keystore::from_json(r#"["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]"#)
            .expect("valid entry");
        let key = store.select(None).expect("one key");
        assert_eq!(key.scheme(), SignatureScheme::Ed25519);
        assert_eq!(
            key.address().to_string(),
            "0x7a1378aafadef8ce743b72e8b248295c8f61c102c94040161146ea4d51a182b6"
        );
    }

    #[test]
    fn bad_keystores_are_reported() {
        assert!(matches!(
            Keystore::from_json("{}"),
            Err(SignerError::KeystoreJson { .. })
        ));
        assert!(matches!(
            Keystore::from_json(r#"["not base64!"]"#),
            Err(SignerError::KeystoreEntry { index: 0, .. })
        ));
        // Flag 0x09 is no private-key scheme.
        assert!(matches!(
            Keystore::from_json(r#"["CQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]"#),
            Err(SignerError::KeystoreEntry { index: 0, .. })
        ));
        assert!(matches!(
            Keystore::from_json("[]")
                .expect("empty array parses")
                .select(None),
            Err(SignerError::EmptyKeystore)
        ));
    }
}
