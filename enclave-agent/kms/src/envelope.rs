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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipient::RecipientKey;
    use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey};
    use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey};
    use cms::enveloped_data::{
        EncryptedContentInfo, KekIdentifier, KekRecipientInfo, KeyTransRecipientInfo,
        RecipientInfos,
    };
    use der::asn1::SetOfVec;
    use der::{Any, Encode};
    use x509_cert::ext::pkix::SubjectKeyIdentifier;

    const DATA_KEY: [u8; 32] = [0x42; 32];

    fn alg(oid: ObjectIdentifier, parameters: Option<Any>) -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned { oid, parameters }
    }

    fn sha256() -> AlgorithmIdentifierOwned {
        alg(ID_SHA256, None)
    }

    fn oaep(params: OaepParams) -> AlgorithmIdentifierOwned {
        alg(
            ID_RSAES_OAEP,
            Some(Any::encode_from(&params).expect("params")),
        )
    }

    fn good_oaep_params() -> OaepParams {
        OaepParams {
            hash: Some(sha256()),
            mask_gen: Some(alg(
                ID_MGF1,
                Some(Any::encode_from(&sha256()).expect("mgf")),
            )),
            p_source: None,
        }
    }

    /// A valid EnvelopedData to `key` carrying `content_plain`, as KMS would make it.
    fn enveloped(key: &RecipientKey, content_plain: &[u8]) -> EnvelopedData {
        let cek = [7u8; 32];
        let iv = [9u8; 16];
        let aes = PaddedBlockEncryptingKey::cbc_pkcs7(
            UnboundCipherKey::new(&AES_256, &cek).expect("aes"),
        )
        .expect("cbc");
        let mut content = content_plain.to_vec();
        aes.less_safe_encrypt(
            &mut content,
            EncryptionContext::Iv128(FixedLength::from(iv)),
        )
        .expect("encrypt");
        let public = OaepPublicEncryptingKey::new(
            PublicEncryptingKey::from_der(key.public_key_der()).expect("spki"),
        )
        .expect("oaep");
        let mut enc_key = vec![0u8; public.ciphertext_size()];
        let enc_key = public
            .encrypt(&OAEP_SHA256_MGF1SHA256, &cek, &mut enc_key, None)
            .expect("rsa")
            .to_vec();
        EnvelopedData {
            version: CmsVersion::V2,
            originator_info: None,
            recip_infos: RecipientInfos(
                SetOfVec::try_from(vec![RecipientInfo::Ktri(KeyTransRecipientInfo {
                    version: CmsVersion::V2,
                    rid: RecipientIdentifier::SubjectKeyIdentifier(SubjectKeyIdentifier(
                        OctetString::new(vec![1u8; 20]).expect("ski"),
                    )),
                    key_enc_alg: oaep(good_oaep_params()),
                    enc_key: OctetString::new(enc_key).expect("key"),
                })])
                .expect("set"),
            ),
            encrypted_content: EncryptedContentInfo {
                content_type: ID_DATA,
                content_enc_alg: alg(
                    ID_AES256_CBC,
                    Some(
                        Any::encode_from(&OctetString::new(iv.to_vec()).expect("iv")).expect("any"),
                    ),
                ),
                encrypted_content: Some(OctetString::new(content).expect("content")),
            },
            unprotected_attrs: None,
        }
    }

    fn encode(data: &EnvelopedData) -> Vec<u8> {
        ContentInfo {
            content_type: ID_ENVELOPED_DATA,
            content: Any::encode_from(data).expect("any"),
        }
        .to_der()
        .expect("der")
    }

    #[test]
    fn a_kms_shaped_envelope_opens_to_the_data_key() {
        let key = RecipientKey::generate().expect("key");
        let bytes = encode(&enveloped(&key, &DATA_KEY));
        assert_eq!(*key.open(&bytes).expect("opens"), DATA_KEY);
        // sha256 with NULL parameters is the same algorithm.
        let mut data = enveloped(&key, &DATA_KEY);
        with_ktri(&mut data, |k| {
            let null = Some(Any::encode_from(&Null).expect("null"));
            k.key_enc_alg = oaep(OaepParams {
                hash: Some(alg(ID_SHA256, null.clone())),
                mask_gen: Some(alg(
                    ID_MGF1,
                    Some(Any::encode_from(&alg(ID_SHA256, null)).expect("mgf")),
                )),
                p_source: Some(alg(
                    ID_P_SPECIFIED,
                    Some(Any::encode_from(&OctetString::new(vec![]).expect("l")).expect("any")),
                )),
            });
        });
        assert_eq!(*key.open(&encode(&data)).expect("opens"), DATA_KEY);
        // Another recipient key cannot open it.
        let other = RecipientKey::generate().expect("key");
        assert_eq!(other.open(&bytes).map(|_| ()), Err(EnvelopeError::Unwrap));
    }

    fn with_ktri(data: &mut EnvelopedData, change: impl FnOnce(&mut KeyTransRecipientInfo)) {
        let mut infos = data.recip_infos.0.clone().into_vec();
        if let Some(RecipientInfo::Ktri(k)) = infos.first_mut() {
            change(k);
        }
        data.recip_infos.0 = SetOfVec::try_from(infos).expect("set");
    }

    #[test]
    fn every_deviation_is_refused() {
        let key = RecipientKey::generate().expect("key");
        type Change = Box<dyn Fn(&mut EnvelopedData)>;
        let sha1 = || alg(ObjectIdentifier::new_unwrap("1.3.14.3.2.26"), None);
        let cases: Vec<(&str, Change)> = vec![
            ("version 0", Box::new(|d| d.version = CmsVersion::V0)),
            (
                "ktri version 0",
                Box::new(|d| with_ktri(d, |k| k.version = CmsVersion::V0)),
            ),
            (
                "two recipients",
                Box::new(|d| {
                    let mut infos = d.recip_infos.0.clone().into_vec();
                    infos.push(RecipientInfo::Kekri(KekRecipientInfo {
                        version: CmsVersion::V4,
                        kek_id: KekIdentifier {
                            kek_identifier: OctetString::new(vec![1]).expect("id"),
                            date: None,
                            other: None,
                        },
                        key_enc_alg: sha256(),
                        encrypted_key: OctetString::new(vec![1]).expect("k"),
                    }));
                    d.recip_infos.0 = SetOfVec::try_from(infos).expect("set");
                }),
            ),
            (
                "no recipients",
                Box::new(|d| d.recip_infos.0 = SetOfVec::new()),
            ),
            (
                "rsa pkcs#1 v1.5",
                Box::new(|d| {
                    with_ktri(d, |k| {
                        k.key_enc_alg =
                            alg(ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1"), None)
                    })
                }),
            ),
            (
                "oaep without parameters (sha1)",
                Box::new(|d| with_ktri(d, |k| k.key_enc_alg = alg(ID_RSAES_OAEP, None))),
            ),
            (
                "oaep sha1",
                Box::new(move |d| {
                    with_ktri(d, |k| {
                        k.key_enc_alg = oaep(OaepParams {
                            hash: Some(sha1()),
                            ..good_oaep_params()
                        })
                    })
                }),
            ),
            (
                "oaep hash absent",
                Box::new(|d| {
                    with_ktri(d, |k| {
                        k.key_enc_alg = oaep(OaepParams {
                            hash: None,
                            ..good_oaep_params()
                        })
                    })
                }),
            ),
            (
                "mgf1 sha1",
                Box::new(move |d| {
                    with_ktri(d, |k| {
                        k.key_enc_alg = oaep(OaepParams {
                            mask_gen: Some(alg(
                                ID_MGF1,
                                Some(Any::encode_from(&sha1()).expect("a")),
                            )),
                            ..good_oaep_params()
                        })
                    })
                }),
            ),
            (
                "mgf absent",
                Box::new(|d| {
                    with_ktri(d, |k| {
                        k.key_enc_alg = oaep(OaepParams {
                            mask_gen: None,
                            ..good_oaep_params()
                        })
                    })
                }),
            ),
            (
                "a label",
                Box::new(|d| {
                    with_ktri(d, |k| {
                        k.key_enc_alg = oaep(OaepParams {
                            p_source: Some(alg(
                                ID_P_SPECIFIED,
                                Some(
                                    Any::encode_from(&OctetString::new(vec![1]).expect("l"))
                                        .expect("a"),
                                ),
                            )),
                            ..good_oaep_params()
                        })
                    })
                }),
            ),
            (
                "sha256 with non-null parameters",
                Box::new(|d| {
                    with_ktri(d, |k| {
                        let odd = alg(
                            ID_SHA256,
                            Some(
                                Any::encode_from(&OctetString::new(vec![0]).expect("o"))
                                    .expect("a"),
                            ),
                        );
                        k.key_enc_alg = oaep(OaepParams {
                            hash: Some(odd),
                            ..good_oaep_params()
                        })
                    })
                }),
            ),
            (
                "short encrypted key",
                Box::new(|d| {
                    with_ktri(d, |k| {
                        k.enc_key = OctetString::new(vec![1u8; 255]).expect("k")
                    })
                }),
            ),
            (
                "content type signed-data",
                Box::new(|d| {
                    d.encrypted_content.content_type =
                        ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2")
                }),
            ),
            (
                "aes-128-cbc",
                Box::new(|d| {
                    d.encrypted_content.content_enc_alg.oid =
                        ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.2")
                }),
            ),
            (
                "8-byte iv",
                Box::new(|d| {
                    d.encrypted_content.content_enc_alg.parameters = Some(
                        Any::encode_from(&OctetString::new(vec![0u8; 8]).expect("iv")).expect("a"),
                    )
                }),
            ),
            (
                "no iv",
                Box::new(|d| d.encrypted_content.content_enc_alg.parameters = None),
            ),
            (
                "content absent",
                Box::new(|d| d.encrypted_content.encrypted_content = None),
            ),
            (
                "content not whole blocks",
                Box::new(|d| {
                    d.encrypted_content.encrypted_content =
                        Some(OctetString::new(vec![0u8; 47]).expect("c"))
                }),
            ),
            (
                "content too long",
                Box::new(|d| {
                    d.encrypted_content.encrypted_content =
                        Some(OctetString::new(vec![0u8; 80]).expect("c"))
                }),
            ),
        ];
        for (name, change) in cases {
            let mut data = enveloped(&key, &DATA_KEY);
            change(&mut data);
            let result = key.open(&encode(&data));
            assert!(result.is_err(), "{name} was accepted");
        }
        // Wrong content type on the ContentInfo.
        let bytes = ContentInfo {
            content_type: ID_DATA,
            content: Any::encode_from(&enveloped(&key, &DATA_KEY)).expect("any"),
        }
        .to_der()
        .expect("der");
        assert!(matches!(
            parse(&bytes),
            Err(EnvelopeError::Unexpected { .. })
        ));
        // A 16-byte or 48-byte plaintext is not a data key.
        for len in [16, 33] {
            let bytes = encode(&enveloped(&key, &vec![1u8; len]));
            assert!(key.open(&bytes).is_err(), "{len}-byte content accepted");
        }
    }

    #[test]
    fn truncations_and_flips_never_panic_and_never_open() {
        let key = RecipientKey::generate().expect("key");
        let bytes = encode(&enveloped(&key, &DATA_KEY));
        for len in 0..bytes.len() {
            assert!(key.open(&bytes[..len]).is_err(), "truncated to {len}");
        }
        // CMS has no integrity of its own (that is TLS's job, see the crate documentation):
        // a flip in the IV or the AES-CBC content can change the key that comes out. A flip
        // anywhere else must fail, or land in the subjectKeyIdentifier, which nothing reads.
        let find = |needle: &[u8]| {
            bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("present")
        };
        let iv = find(&[9u8; 16]);
        let ski = find(&[1u8; 20]);
        let content = bytes.len() - 48;
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut flipped = bytes.clone();
                flipped[i] ^= bit;
                if let Ok(k) = key.open(&flipped) {
                    let malleable = (iv..iv + 16).contains(&i) || i >= content;
                    let unread = (ski..ski + 20).contains(&i);
                    assert!(
                        malleable || (unread && *k == DATA_KEY),
                        "byte {i} bit {bit:#x} was accepted"
                    );
                }
            }
        }
    }

    /// DER to BER as a streaming encoder writes it: every constructed element with an
    /// indefinite length, every primitive `[0]` longer than 16 bytes as a constructed `[0]` of
    /// 16-byte `OCTET STRING` chunks. (Test input only: it trusts its DER.)
    fn stream_like(der: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < der.len() {
            let tag = der[pos];
            let (len, header) = match der[pos + 1] {
                n if n < 0x80 => (usize::from(n), 2),
                0x81 => (usize::from(der[pos + 2]), 3),
                0x82 => (
                    usize::from(der[pos + 2]) << 8 | usize::from(der[pos + 3]),
                    4,
                ),
                other => panic!("length form {other:#x}"),
            };
            let content = &der[pos + header..pos + header + len];
            if tag & 0x20 != 0 {
                out.extend([tag, 0x80]);
                out.extend(stream_like(content));
                out.extend([0, 0]);
            } else if tag == 0x80 && len > 16 {
                out.extend([0xa0, 0x80]);
                for chunk in content.chunks(16) {
                    out.extend([0x04, chunk.len() as u8]);
                    out.extend(chunk);
                }
                out.extend([0, 0]);
            } else {
                out.extend(&der[pos..pos + header + len]);
            }
            pos += header + len;
        }
        out
    }

    #[test]
    fn ber_from_a_streaming_encoder_opens() {
        // The DER encoding rewritten with indefinite lengths on the outer structures and the
        // encrypted content in chunks, as OpenSSL and KMS stream it.
        let key = RecipientKey::generate().expect("key");
        let data = enveloped(&key, &DATA_KEY);
        let der = encode(&data);
        let ber = stream_like(&der);
        assert_ne!(ber, der);
        assert_eq!(ber[1], 0x80, "indefinite outer length");
        assert_eq!(*key.open(&ber).expect("opens"), DATA_KEY);
    }
}
