//! The attestation document payload: decoding from CBOR with the limits of the AWS spec.
//!
//! Field rules follow AWS's "Nitro Enclaves attestation process" document: `module_id`
//! non-empty text; `digest` one of SHA256/SHA384/SHA512 (Nitro uses SHA384); `timestamp` ms
//! since the epoch; `pcrs` 1–32 entries, index < 32, each as long as the digest; certificate
//! and each `cabundle` entry 1–1024 bytes; `public_key` ≤ 1024 bytes; `user_data` and `nonce`
//! ≤ 512 bytes. The optional three may be absent or CBOR null, which is kept distinct from an
//! empty byte string. Unknown or repeated keys are refused: fail closed.

use std::collections::BTreeMap;

use ciborium::Value;

use super::{MAX_CABUNDLE_LEN, VerifyError};

/// The payload of a Nitro attestation document, as decoded (and, when returned by
/// [`super::Verifier::verify`], verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationDocument {
    /// Enclave identifier, e.g. `i-0f73a4b4cb74cc9f2-enc0192e4188fef781d`.
    pub module_id: String,
    /// PCR digest algorithm, `SHA384` on Nitro.
    pub digest: String,
    /// Issue time, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Platform configuration registers by index.
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// The leaf certificate (DER) whose key signed the document.
    pub certificate: Vec<u8>,
    /// Issuer chain, root first (DER).
    pub cabundle: Vec<Vec<u8>>,
    /// Public key the enclave asked to include. `None` = absent or null.
    pub public_key: Option<Vec<u8>>,
    /// Application data the enclave asked to include. `None` = absent or null;
    /// `Some(vec![])` = an empty byte string.
    pub user_data: Option<Vec<u8>>,
    /// Nonce the enclave asked to include. `None` = absent or null.
    pub nonce: Option<Vec<u8>>,
}

const MAX_PCRS: usize = 32;
const MAX_CERT_BYTES: usize = 1024;
const MAX_PUBLIC_KEY_BYTES: usize = 1024;
const MAX_USER_DATA_BYTES: usize = 512;
const MAX_NONCE_BYTES: usize = 512;

fn field_err(field: &str, problem: impl Into<String>) -> VerifyError {
    VerifyError::Field {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

impl AttestationDocument {
    /// Decode a payload (the COSE_Sign1 payload bytes). Does not verify anything
    /// cryptographic; use [`super::Verifier::verify`] for untrusted input.
    pub fn from_payload(payload: &[u8]) -> Result<Self, VerifyError> {
        let value: Value =
            ciborium::from_reader(payload).map_err(|e| VerifyError::PayloadCbor {
                reason: e.to_string(),
            })?;
        let Value::Map(entries) = value else {
            return Err(VerifyError::PayloadCbor {
                reason: "payload is not a map".to_owned(),
            });
        };

        let mut fields: BTreeMap<&'static str, Value> = BTreeMap::new();
        for (key, value) in entries {
            let Value::Text(key) = key else {
                return Err(VerifyError::PayloadCbor {
                    reason: "payload map has a non-text key".to_owned(),
                });
            };
            let Some(name) = KNOWN_FIELDS.iter().copied().find(|f| *f == key) else {
                return Err(field_err(&key, "is not part of the nitro document format"));
            };
            if fields.insert(name, value).is_some() {
                return Err(field_err(name, "appears twice"));
            }
        }

        let module_id = match fields.remove("module_id") {
            Some(Value::Text(s)) if !s.is_empty() => s,
            Some(_) => return Err(field_err("module_id", "must be non-empty text")),
            None => return Err(field_err("module_id", "is missing")),
        };
        let (digest, pcr_len) = match fields.remove("digest") {
            Some(Value::Text(s)) => {
                let len = match s.as_str() {
                    "SHA256" => 32,
                    "SHA384" => 48,
                    "SHA512" => 64,
                    _ => return Err(field_err("digest", format!("`{s}` is not sha256/384/512"))),
                };
                (s, len)
            }
            Some(_) => return Err(field_err("digest", "must be text")),
            None => return Err(field_err("digest", "is missing")),
        };
        let timestamp_ms = match fields.remove("timestamp") {
            Some(Value::Integer(i)) => match u64::try_from(i) {
                Ok(t) if t > 0 => t,
                _ => return Err(field_err("timestamp", "must be a positive integer")),
            },
            Some(_) => return Err(field_err("timestamp", "must be an integer")),
            None => return Err(field_err("timestamp", "is missing")),
        };
        let pcrs = decode_pcrs(fields.remove("pcrs"), pcr_len)?;
        let certificate = required_bytes(&mut fields, "certificate", 1, MAX_CERT_BYTES)?;
        let cabundle = match fields.remove("cabundle") {
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    return Err(field_err("cabundle", "is empty"));
                }
                if items.len() > MAX_CABUNDLE_LEN {
                    return Err(VerifyError::CaBundleTooLong {
                        len: items.len(),
                        max: MAX_CABUNDLE_LEN,
                    });
                }
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::Bytes(b) if !b.is_empty() && b.len() <= MAX_CERT_BYTES => Ok(b),
                        _ => Err(field_err(
                            "cabundle",
                            format!("entries must be byte strings of 1 to {MAX_CERT_BYTES} bytes"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Some(_) => return Err(field_err("cabundle", "must be an array")),
            None => return Err(field_err("cabundle", "is missing")),
        };
        let public_key = optional_bytes(&mut fields, "public_key", MAX_PUBLIC_KEY_BYTES)?;
        let user_data = optional_bytes(&mut fields, "user_data", MAX_USER_DATA_BYTES)?;
        let nonce = optional_bytes(&mut fields, "nonce", MAX_NONCE_BYTES)?;

        Ok(Self {
            module_id,
            digest,
            timestamp_ms,
            pcrs,
            certificate,
            cabundle,
            public_key,
            user_data,
            nonce,
        })
    }

    /// The value of PCR `index`, if reported.
    pub fn pcr(&self, index: u8) -> Option<&[u8]> {
        self.pcrs.get(&index).map(Vec::as_slice)
    }

    /// True when the enclave runs in debug mode: AWS then reports PCR0 as all zeros.
    pub fn debug_mode(&self) -> bool {
        self.pcr(0).is_some_and(|p| p.iter().all(|b| *b == 0))
    }
}

/// Payload keys in the order the NSM writes them.
pub(crate) const KNOWN_FIELDS: [&str; 9] = [
    "module_id",
    "digest",
    "timestamp",
    "pcrs",
    "certificate",
    "cabundle",
    "public_key",
    "user_data",
    "nonce",
];

fn decode_pcrs(value: Option<Value>, pcr_len: usize) -> Result<BTreeMap<u8, Vec<u8>>, VerifyError> {
    let entries = match value {
        Some(Value::Map(entries)) => entries,
        Some(_) => return Err(field_err("pcrs", "must be a map")),
        None => return Err(field_err("pcrs", "is missing")),
    };
    if entries.is_empty() || entries.len() > MAX_PCRS {
        return Err(field_err(
            "pcrs",
            format!("must have 1 to {MAX_PCRS} entries"),
        ));
    }
    let mut pcrs = BTreeMap::new();
    for (key, value) in entries {
        let index = match key {
            Value::Integer(i) => u8::try_from(i)
                .ok()
                .filter(|i| usize::from(*i) < MAX_PCRS)
                .ok_or_else(|| field_err("pcrs", format!("index must be below {MAX_PCRS}")))?,
            _ => return Err(field_err("pcrs", "index must be an integer")),
        };
        let Value::Bytes(bytes) = value else {
            return Err(field_err(
                "pcrs",
                format!("pcr{index} must be a byte string"),
            ));
        };
        if bytes.len() != pcr_len {
            return Err(field_err(
                "pcrs",
                format!(
                    "pcr{index} is {} bytes, the digest needs {pcr_len}",
                    bytes.len()
                ),
            ));
        }
        if pcrs.insert(index, bytes).is_some() {
            return Err(field_err("pcrs", format!("pcr{index} appears twice")));
        }
    }
    Ok(pcrs)
}

fn required_bytes(
    fields: &mut BTreeMap<&'static str, Value>,
    name: &str,
    min: usize,
    max: usize,
) -> Result<Vec<u8>, VerifyError> {
    match fields.remove(name) {
        Some(Value::Bytes(b)) if (min..=max).contains(&b.len()) => Ok(b),
        Some(_) => Err(field_err(
            name,
            format!("must be a byte string of {min} to {max} bytes"),
        )),
        None => Err(field_err(name, "is missing")),
    }
}

fn optional_bytes(
    fields: &mut BTreeMap<&'static str, Value>,
    name: &str,
    max: usize,
) -> Result<Option<Vec<u8>>, VerifyError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bytes(b)) if b.len() <= max => Ok(Some(b)),
        Some(_) => Err(field_err(
            name,
            format!("must be null or a byte string of at most {max} bytes"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(entries: Vec<(&str, Value)>) -> Vec<u8> {
        let map = Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Text(k.to_owned()), v))
                .collect(),
        );
        let mut out = Vec::new();
        ciborium::into_writer(&map, &mut out).expect("encode");
        out
    }

    fn base() -> Vec<(&'static str, Value)> {
        vec![
            ("module_id", Value::Text("i-1-enc1".into())),
            ("digest", Value::Text("SHA384".into())),
            ("timestamp", Value::Integer(1.into())),
            (
                "pcrs",
                Value::Map(vec![(Value::Integer(0.into()), Value::Bytes(vec![0; 48]))]),
            ),
            ("certificate", Value::Bytes(vec![1])),
            ("cabundle", Value::Array(vec![Value::Bytes(vec![2])])),
            ("public_key", Value::Null),
            ("user_data", Value::Bytes(vec![])),
        ]
    }

    #[test]
    fn null_absent_and_empty_are_distinguished() {
        let doc = AttestationDocument::from_payload(&payload(base())).expect("valid");
        assert_eq!(doc.public_key, None);
        assert_eq!(doc.user_data, Some(vec![]));
        assert_eq!(doc.nonce, None);
        assert!(doc.debug_mode());
    }

    #[rstest::rstest]
    #[case::unknown_key("extra", Value::Null, "not part of")]
    #[case::duplicate("digest", Value::Text("SHA384".into()), "appears twice")]
    #[case::short_pcr_table(
        "pcrs",
        Value::Map(vec![(Value::Integer(0.into()), Value::Bytes(vec![0; 47]))]),
        "47 bytes"
    )]
    #[case::pcr_index("pcrs", Value::Map(vec![(Value::Integer(40.into()), Value::Bytes(vec![0; 48]))]), "below 32")]
    #[case::nonce_too_long("nonce", Value::Bytes(vec![0; 513]), "at most 512")]
    #[case::cabundle_too_long("cabundle", Value::Array(vec![Value::Bytes(vec![1]); 9]), "more than the limit")]
    fn bad_fields_are_refused(#[case] key: &str, #[case] value: Value, #[case] needle: &str) {
        let mut entries = base();
        // Replace the field if present (except for the duplicate case), else append.
        if key != "digest" {
            entries.retain(|(k, _)| *k != key);
        }
        let key: &'static str = Box::leak(key.to_owned().into_boxed_str());
        entries.push((key, value));
        let err = AttestationDocument::from_payload(&payload(entries)).expect_err("refused");
        assert!(err.to_string().contains(needle), "{err}");
    }

    #[test]
    fn missing_field_is_named() {
        let mut entries = base();
        entries.retain(|(k, _)| *k != "certificate");
        let err = AttestationDocument::from_payload(&payload(entries)).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "attestation field `certificate` is missing"
        );
    }
}
