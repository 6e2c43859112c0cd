//! The local KMS's `CiphertextBlob`: its own opaque format, like AWS's.
//!
//! `NKB1 | u16 key-ARN length | key ARN | 12-byte nonce | AES-256-GCM(data key) + tag`, under
//! the key's master key, with everything before the ciphertext (magic, ARN, nonce) and the
//! request's encryption context (canonical JSON of the sorted map) as associated data. A blob
//! of another key, a changed encryption context or any flipped byte fails to open.

use std::collections::BTreeMap;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

const MAGIC: &[u8; 4] = b"NKB1";
/// Largest blob accepted (AWS's limit).
pub const MAX_BLOB_BYTES: usize = 6144;

/// Why a blob does not open; each maps to a KMS error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// Not this fixture's format.
    #[error("not a ciphertext blob of this kms")]
    Format,
    /// A blob of another key.
    #[error("the ciphertext refers to key {0}")]
    OtherKey(String),
    /// Authentication failed (a changed byte or encryption context).
    #[error("the ciphertext does not authenticate")]
    Invalid,
}

/// A key's master key (32 bytes, AES-256-GCM).
pub struct MasterKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

fn aad(header: &[u8], context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut aad = header.to_vec();
    // A BTreeMap serializes sorted: one encoding per context.
    aad.extend(serde_json::to_vec(context).unwrap_or_default());
    aad
}

impl MasterKey {
    /// From 32 bytes.
    pub fn new(bytes: &[u8; 32]) -> Result<Self, BlobError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| BlobError::Format)?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// Seal `plaintext` for `key_arn`.
    pub fn seal(
        &self,
        key_arn: &str,
        context: &BTreeMap<String, String>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, BlobError> {
        let arn_len = u16::try_from(key_arn.len()).map_err(|_| BlobError::Format)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| BlobError::Format)?;
        let mut blob = MAGIC.to_vec();
        blob.extend(arn_len.to_be_bytes());
        blob.extend(key_arn.as_bytes());
        blob.extend(nonce);
        let mut sealed = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&blob, context)),
                &mut sealed,
            )
            .map_err(|_| BlobError::Format)?;
        blob.extend(sealed);
        Ok(blob)
    }

    /// The key ARN a blob names, without opening it.
    pub fn key_arn_of(blob: &[u8]) -> Result<String, BlobError> {
        if blob.len() > MAX_BLOB_BYTES || blob.get(..4) != Some(&MAGIC[..]) {
            return Err(BlobError::Format);
        }
        let len = blob
            .get(4..6)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or(BlobError::Format)?;
        let arn = blob.get(6..6 + len).ok_or(BlobError::Format)?;
        String::from_utf8(arn.to_vec()).map_err(|_| BlobError::Format)
    }

    /// Open a blob sealed for `key_arn`.
    pub fn open(
        &self,
        key_arn: &str,
        context: &BTreeMap<String, String>,
        blob: &[u8],
    ) -> Result<Vec<u8>, BlobError> {
        let arn = Self::key_arn_of(blob)?;
        if arn != key_arn {
            return Err(BlobError::OtherKey(arn));
        }
        let header_len = 6 + arn.len() + NONCE_LEN;
        let header = blob.get(..header_len).ok_or(BlobError::Format)?;
        let nonce: [u8; NONCE_LEN] = blob
            .get(6 + arn.len()..header_len)
            .and_then(|n| n.try_into().ok())
            .ok_or(BlobError::Format)?;
        let mut sealed = blob.get(header_len..).ok_or(BlobError::Format)?.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(header, context)),
                &mut sealed,
            )
            .map_err(|_| BlobError::Invalid)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_open_only_unchanged_and_for_their_key() {
        let master = MasterKey::new(&[7; 32]).expect("key");
        let none = BTreeMap::new();
        let blob = master.seal("arn:a", &none, &[1; 32]).expect("seal");
        assert_eq!(master.open("arn:a", &none, &blob), Ok(vec![1; 32]));
        assert_eq!(
            master.open("arn:b", &none, &blob),
            Err(BlobError::OtherKey("arn:a".into()))
        );
        for i in 0..blob.len() {
            let mut flipped = blob.clone();
            flipped[i] ^= 0x01;
            assert!(master.open("arn:a", &none, &flipped).is_err(), "byte {i}");
        }
        let context = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        assert_eq!(
            master.open("arn:a", &context, &blob),
            Err(BlobError::Invalid)
        );
        let other = MasterKey::new(&[8; 32]).expect("key");
        assert_eq!(other.open("arn:a", &none, &blob), Err(BlobError::Invalid));
        assert_eq!(
            master.open("arn:a", &none, &blob[..10]),
            Err(BlobError::Format)
        );
        assert_eq!(master.open("arn:a", &none, b""), Err(BlobError::Format));
    }
}
