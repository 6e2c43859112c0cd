//! The Recipient key: an RSA-2048 key pair made for one KMS call, whose public half goes into
//! the attestation document and whose private half never leaves this process (AWS-LC frees
//! and clears it when the key is dropped).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use zeroize::Zeroizing;

use crate::envelope::{self, DATA_KEY_BYTES, EnvelopeError};

/// A fresh RSA-2048 key for one call.
pub struct RecipientKey {
    key: OaepPrivateDecryptingKey,
    public_key_der: Vec<u8>,
}

impl std::fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecipientKey").finish_non_exhaustive()
    }
}

impl RecipientKey {
    /// Generate a key (AWS-LC, about 0.1 s on one core: call it off the async runtime).
    pub fn generate() -> Result<Self, EnvelopeError> {
        let private =
            PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(|_| EnvelopeError::Unwrap)?;
        let public_key_der = private
            .public_key()
            .as_der()
            .map_err(|_| EnvelopeError::Unwrap)?
            .as_ref()
            .to_vec();
        let key = OaepPrivateDecryptingKey::new(private).map_err(|_| EnvelopeError::Unwrap)?;
        Ok(Self {
            key,
            public_key_der,
        })
    }

    /// SubjectPublicKeyInfo DER of the public key: what the attestation document carries as
    /// `public_key`.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    /// Parse, check and open a `CiphertextForRecipient` made to this key.
    pub fn open(
        &self,
        ciphertext_for_recipient: &[u8],
    ) -> Result<Zeroizing<[u8; DATA_KEY_BYTES]>, EnvelopeError> {
        let envelope = envelope::parse(ciphertext_for_recipient)?;
        envelope::open(&envelope, &self.key)
    }
}
