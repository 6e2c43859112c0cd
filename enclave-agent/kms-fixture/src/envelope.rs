//! `CiphertextForRecipient` as KMS makes it: a DER CMS ContentInfo/EnvelopedData (RFC 5652)
//! with one KeyTransRecipientInfo (version 2, subjectKeyIdentifier), RSAES-OAEP with SHA-256
//! and MGF1-SHA-256 to the attested RSA key, and the data key as AES-256-CBC content under a
//! fresh content key and a random IV. Built with the `cms` crate's types; the OIDs and the
//! OAEP parameters are spelled out here rather than shared with `nautilus-kms`, so the two
//! sides are written independently (OpenSSL checks the result in the tests).

use aws_lc_rs::cipher::{AES_256, PaddedBlockEncryptingKey, UnboundCipherKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::enveloped_data::{
    EncryptedContentInfo, EnvelopedData, KeyTransRecipientInfo, RecipientIdentifier, RecipientInfo,
    RecipientInfos,
};
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Encode, Sequence};
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::spki::AlgorithmIdentifierOwned;

const ID_ENVELOPED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_RSAES_OAEP: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.7");
const ID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_AES256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");

/// `RSAES-OAEP-params` with explicit hash and mask generation (pSourceAlgorithm left at its
/// default, the empty label).
#[derive(Sequence)]
struct OaepParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    hash: AlgorithmIdentifierOwned,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT")]
    mask_gen: AlgorithmIdentifierOwned,
}

/// Why a `CiphertextForRecipient` could not be made (the attested key is not RSA-2048, or
/// encoding failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ciphertext for recipient: {0}")]
pub struct SealError(pub String);

fn seal_err(e: impl std::fmt::Display) -> SealError {
    SealError(e.to_string())
}

/// The attested public key as KMS accepts it: SubjectPublicKeyInfo DER of an RSA-2048 key.
pub fn recipient_key(public_key_der: &[u8]) -> Result<OaepPublicEncryptingKey, SealError> {
    let key = PublicEncryptingKey::from_der(public_key_der).map_err(|e| {
        SealError(format!(
            "public_key is not an rsa subjectPublicKeyInfo: {e}"
        ))
    })?;
    if key.key_size_bits() != 2048 {
        return Err(SealError(format!(
            "public_key is rsa-{}, not rsa-2048",
            key.key_size_bits()
        )));
    }
    OaepPublicEncryptingKey::new(key).map_err(seal_err)
}

/// Encrypt `plaintext` (the data key) to `public_key_der`; returns the DER ContentInfo.
pub fn seal(public_key_der: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
    let recipient = recipient_key(public_key_der)?;
    let rng = SystemRandom::new();
    let mut cek = [0u8; 32];
    rng.fill(&mut cek).map_err(seal_err)?;

    let content_key = PaddedBlockEncryptingKey::cbc_pkcs7(
        UnboundCipherKey::new(&AES_256, &cek).map_err(seal_err)?,
    )
    .map_err(seal_err)?;
    let mut content = plaintext.to_vec();
    let context = content_key.encrypt(&mut content).map_err(seal_err)?;
    let iv: &[u8] = (&context).try_into().map_err(seal_err)?;

    let mut encrypted_key = vec![0u8; recipient.ciphertext_size()];
    let encrypted_key = recipient
        .encrypt(&OAEP_SHA256_MGF1SHA256, &cek, &mut encrypted_key, None)
        .map_err(seal_err)?
        .to_vec();
    cek.fill(0);

    let sha256 = AlgorithmIdentifierOwned {
        oid: ID_SHA256,
        parameters: None,
    };
    let oaep = OaepParams {
        hash: sha256.clone(),
        mask_gen: AlgorithmIdentifierOwned {
            oid: ID_MGF1,
            parameters: Some(Any::encode_from(&sha256).map_err(seal_err)?),
        },
    };
    // The subject key identifier: SHA-1 of the key, as RFC 5280's method 1 for certificates
    // (there is no certificate; the enclave has one key per call and does not look at it).
    let ski = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, public_key_der);
    let ktri = KeyTransRecipientInfo {
        version: CmsVersion::V2,
        rid: RecipientIdentifier::SubjectKeyIdentifier(SubjectKeyIdentifier(
            OctetString::new(ski.as_ref()).map_err(seal_err)?,
        )),
        key_enc_alg: AlgorithmIdentifierOwned {
            oid: ID_RSAES_OAEP,
            parameters: Some(Any::encode_from(&oaep).map_err(seal_err)?),
        },
        enc_key: OctetString::new(encrypted_key).map_err(seal_err)?,
    };
    let enveloped = EnvelopedData {
        version: CmsVersion::V2,
        originator_info: None,
        recip_infos: RecipientInfos(
            SetOfVec::try_from(vec![RecipientInfo::Ktri(ktri)]).map_err(seal_err)?,
        ),
        encrypted_content: EncryptedContentInfo {
            content_type: ID_DATA,
            content_enc_alg: AlgorithmIdentifierOwned {
                oid: ID_AES256_CBC,
                parameters: Some(
                    Any::encode_from(&OctetString::new(iv).map_err(seal_err)?).map_err(seal_err)?,
                ),
            },
            encrypted_content: Some(OctetString::new(content).map_err(seal_err)?),
        },
        unprotected_attrs: None,
    };
    ContentInfo {
        content_type: ID_ENVELOPED_DATA,
        content: Any::encode_from(&enveloped).map_err(seal_err)?,
    }
    .to_der()
    .map_err(seal_err)
}
