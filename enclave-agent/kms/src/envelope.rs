//! `CiphertextForRecipient`: the CMS EnvelopedData (RFC 5652) KMS answers a Recipient with.
//!
//! Exactly one shape is accepted, the one KMS sends, and every field of it is checked:
//!
//! ```text
//! ContentInfo { contentType id-envelopedData, content [0] EXPLICIT EnvelopedData {
//!   version 2, no originatorInfo,
//!   recipientInfos SET OF exactly one KeyTransRecipientInfo {
//!     version 2, rid [0] subjectKeyIdentifier,
//!     keyEncryptionAlgorithm id-RSAES-OAEP { hashAlgorithm [0] sha256,
//!       maskGenAlgorithm [1] mgf1(sha256), pSourceAlgorithm [2] absent or pSpecified("") },
//!     encryptedKey OCTET STRING (256 bytes: RSA-2048) },
//!   encryptedContentInfo { contentType id-data,
//!     contentEncryptionAlgorithm aes256-CBC (parameters: a 16-byte IV),
//!     encryptedContent [0] IMPLICIT OCTET STRING (a whole number of blocks) },
//!   no unprotectedAttrs } }
//! ```
//!
//! (sha256's parameters may be absent or NULL, as RFC 4055 allows both.) The input is BER, as
//! KMS streams it; [`crate::ber`] rewrites it as DER under size and depth limits and the `cms`
//! crate's types decode that. The content key is unwrapped with RSAES-OAEP-SHA256 and the
//! content decrypted with AES-256-CBC (PKCS #7 padding); the plaintext must be a 32-byte key.
//! Intermediate secrets are zeroized. Any deviation is an [`EnvelopeError`].

use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{EnvelopedData, RecipientIdentifier, RecipientInfo};
use der::asn1::{Null, ObjectIdentifier, OctetString};
use der::{Decode, Sequence};
use x509_cert::spki::AlgorithmIdentifierOwned;
use zeroize::Zeroizing;

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey};

use crate::ber;

/// id-envelopedData (RFC 5652).
pub const ID_ENVELOPED_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
/// id-data (RFC 5652).
pub const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
/// id-RSAES-OAEP (RFC 8017).
pub const ID_RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
/// id-mgf1 (RFC 8017).
pub const ID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
/// id-pSpecified (RFC 8017).
pub const ID_P_SPECIFIED: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.9");
/// id-sha256 (RFC 5754).
pub const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// id-aes256-CBC (RFC 3565).
pub const ID_AES256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");

/// Length of the RSA-2048 encrypted key.
pub const RSA_2048_BYTES: usize = 256;
/// Length of the data key (AES-256).
pub const DATA_KEY_BYTES: usize = 32;
const AES_BLOCK: usize = 16;
/// Largest encrypted content accepted: a 32-byte key padded is 48 bytes.
const MAX_CONTENT_BYTES: usize = 64;

/// `RSAES-OAEP-params` (RFC 8017 appendix A.2.1). The DEFAULTs (SHA-1) are refused, so each
/// field is read as optional and required afterwards.
#[derive(Clone, Debug, Eq, PartialEq, Sequence)]
pub struct OaepParams {
    /// `hashAlgorithm [0]`.
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    pub hash: Option<AlgorithmIdentifierOwned>,
    /// `maskGenAlgorithm [1]`.
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    pub mask_gen: Option<AlgorithmIdentifierOwned>,
    /// `pSourceAlgorithm [2]`.
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    pub p_source: Option<AlgorithmIdentifierOwned>,
}

/// Why a `CiphertextForRecipient` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not well-formed BER within the limits.
    #[error("cms is not well-formed: {0}")]
    Ber(#[from] ber::BerError),
    /// Well-formed, but not the CMS structure.
    #[error("cms does not decode: {0}")]
    Decode(String),
    /// A field has a value other than the one KMS sends.
    #[error("cms {field}: {problem}")]
    Unexpected {
        /// Which field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// RSA-OAEP unwrapping failed (another key, or a corrupted encrypted key).
    #[error("rsa-oaep could not unwrap the content key")]
    Unwrap,
    /// AES-256-CBC decryption or its padding failed.
    #[error("aes-256-cbc content did not decrypt")]
    Content,
}

fn unexpected(field: &'static str, problem: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Unexpected {
        field,
        problem: problem.into(),
    }
}

fn decode_err(e: der::Error) -> EnvelopeError {
    EnvelopeError::Decode(e.to_string())
}

/// The checked pieces of a `CiphertextForRecipient`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The RSA-OAEP encrypted content key.
    pub encrypted_key: Vec<u8>,
    /// The AES-256-CBC IV.
    pub iv: [u8; AES_BLOCK],
    /// The AES-256-CBC ciphertext.
    pub content: Vec<u8>,
}

/// Parse and check `bytes` (BER or DER); see the module documentation. No key is needed, so
/// a fuzzer can reach every check.
pub fn parse(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
    let der = ber::to_der(bytes)?;
    let info = ContentInfo::from_der(&der).map_err(decode_err)?;
    if info.content_type != ID_ENVELOPED_DATA {
        return Err(unexpected(
            "contentType",
            format!("{} is not id-envelopedData", info.content_type),
        ));
    }
    let data: EnvelopedData = info.content.decode_as().map_err(decode_err)?;
    if data.version != CmsVersion::V2 {
        return Err(unexpected("version", format!("{:?}, not 2", data.version)));
    }
    if data.originator_info.is_some() {
        return Err(unexpected("originatorInfo", "present"));
    }
    if data.unprotected_attrs.is_some() {
        return Err(unexpected("unprotectedAttrs", "present"));
    }
    let recipients = data.recip_infos.0.as_slice();
    let [RecipientInfo::Ktri(ktri)] = recipients else {
        return Err(unexpected(
            "recipientInfos",
            format!(
                "{} entries; exactly one KeyTransRecipientInfo expected",
                recipients.len()
            ),
        ));
    };
    if ktri.version != CmsVersion::V2 {
        return Err(unexpected(
            "recipientInfo.version",
            format!("{:?}, not 2", ktri.version),
        ));
    }
    if !matches!(ktri.rid, RecipientIdentifier::SubjectKeyIdentifier(_)) {
        return Err(unexpected(
            "recipientInfo.rid",
            "not a subjectKeyIdentifier",
        ));
    }
    check_oaep(&ktri.key_enc_alg)?;
    let encrypted_key = ktri.enc_key.as_bytes();
    if encrypted_key.len() != RSA_2048_BYTES {
        return Err(unexpected(
            "encryptedKey",
            format!("{} bytes, not {RSA_2048_BYTES}", encrypted_key.len()),
        ));
    }

    let content_info = &data.encrypted_content;
    if content_info.content_type != ID_DATA {
        return Err(unexpected(
            "encryptedContentInfo.contentType",
            format!("{} is not id-data", content_info.content_type),
        ));
    }
    let alg = &content_info.content_enc_alg;
    if alg.oid != ID_AES256_CBC {
        return Err(unexpected(
            "contentEncryptionAlgorithm",
            format!("{} is not aes256-CBC", alg.oid),
        ));
    }
    let iv_any = alg
        .parameters
        .as_ref()
        .ok_or_else(|| unexpected("contentEncryptionAlgorithm", "no IV"))?;
    let iv_octets: OctetString = iv_any.decode_as().map_err(decode_err)?;
    let iv: [u8; AES_BLOCK] = iv_octets.as_bytes().try_into().map_err(|_| {
        unexpected(
            "contentEncryptionAlgorithm",
            format!("IV of {} bytes, not 16", iv_octets.as_bytes().len()),
        )
    })?;
    let content = content_info
        .encrypted_content
        .as_ref()
        .ok_or_else(|| unexpected("encryptedContent", "absent"))?
        .as_bytes();
    if content.is_empty() || content.len() % AES_BLOCK != 0 || content.len() > MAX_CONTENT_BYTES {
        return Err(unexpected(
            "encryptedContent",
            format!(
                "{} bytes; a whole number of 16-byte blocks up to {MAX_CONTENT_BYTES} expected",
                content.len()
            ),
        ));
    }
    Ok(Envelope {
        encrypted_key: encrypted_key.to_vec(),
        iv,
        content: content.to_vec(),
    })
}

/// sha256 with absent or NULL parameters.
fn is_sha256(alg: &AlgorithmIdentifierOwned) -> bool {
    alg.oid == ID_SHA256
        && match &alg.parameters {
            None => true,
            Some(any) => any.decode_as::<Null>().is_ok(),
        }
}

fn check_oaep(alg: &AlgorithmIdentifierOwned) -> Result<(), EnvelopeError> {
    const FIELD: &str = "keyEncryptionAlgorithm";
    if alg.oid != ID_RSAES_OAEP {
        return Err(unexpected(
            FIELD,
            format!("{} is not id-RSAES-OAEP", alg.oid),
        ));
    }
    let params: OaepParams = alg
        .parameters
        .as_ref()
        .ok_or_else(|| unexpected(FIELD, "no parameters (the default is sha1)"))?
        .decode_as()
        .map_err(decode_err)?;
    match &params.hash {
        Some(hash) if is_sha256(hash) => {}
        Some(hash) => {
            return Err(unexpected(
                FIELD,
                format!("hash {} is not sha256", hash.oid),
            ));
        }
        None => return Err(unexpected(FIELD, "hash absent (the default is sha1)")),
    }
    let mgf = params
        .mask_gen
        .as_ref()
        .ok_or_else(|| unexpected(FIELD, "maskGenAlgorithm absent (the default is mgf1-sha1)"))?;
    if mgf.oid != ID_MGF1 {
        return Err(unexpected(
            FIELD,
            format!("mask generation {} is not mgf1", mgf.oid),
        ));
    }
    let mgf_hash: AlgorithmIdentifierOwned = mgf
        .parameters
        .as_ref()
        .ok_or_else(|| unexpected(FIELD, "mgf1 without a hash"))?
        .decode_as()
        .map_err(decode_err)?;
    if !is_sha256(&mgf_hash) {
        return Err(unexpected(
            FIELD,
            format!("mgf1 hash {} is not sha256", mgf_hash.oid),
        ));
    }
    if let Some(source) = &params.p_source {
        let empty_label = source.oid == ID_P_SPECIFIED
            && source
                .parameters
                .as_ref()
                .and_then(|any| any.decode_as::<OctetString>().ok())
                .is_some_and(|label| label.as_bytes().is_empty());
        if !empty_label {
            return Err(unexpected(
                FIELD,
                "pSourceAlgorithm is not pSpecified(empty)",
            ));
        }
    }
    Ok(())
}

/// Unwrap the content key with `key` and decrypt the content: the 32-byte data key.
pub fn open(
    envelope: &Envelope,
    key: &OaepPrivateDecryptingKey,
) -> Result<Zeroizing<[u8; DATA_KEY_BYTES]>, EnvelopeError> {
    let mut cek = Zeroizing::new([0u8; RSA_2048_BYTES]);
    let cek_len = key
        .decrypt(
            &OAEP_SHA256_MGF1SHA256,
            &envelope.encrypted_key,
            cek.as_mut_slice(),
            None,
        )
        .map_err(|_| EnvelopeError::Unwrap)?
        .len();
    let cek = cek.get(..cek_len).ok_or(EnvelopeError::Unwrap)?;
    if cek.len() != 32 {
        return Err(unexpected(
            "content key",
            format!("{} bytes, not 32 (aes-256)", cek.len()),
        ));
    }
    let unbound = UnboundCipherKey::new(&AES_256, cek).map_err(|_| EnvelopeError::Content)?;
    let decrypting =
        PaddedBlockDecryptingKey::cbc_pkcs7(unbound).map_err(|_| EnvelopeError::Content)?;
    let mut buf = Zeroizing::new(envelope.content.clone());
    let plain = decrypting
        .decrypt(
            buf.as_mut_slice(),
            DecryptionContext::Iv128(FixedLength::from(envelope.iv)),
        )
        .map_err(|_| EnvelopeError::Content)?;
    if plain.len() != DATA_KEY_BYTES {
        return Err(unexpected(
            "content",
            format!("{} bytes, not a 32-byte data key", plain.len()),
        ));
    }
    let mut key = Zeroizing::new([0u8; DATA_KEY_BYTES]);
    key.copy_from_slice(plain);
    Ok(key)
}
