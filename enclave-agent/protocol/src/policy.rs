//! What a verified attestation document must also say for this deployment.
//!
//! [`crate::attestation::Verifier`] proves a document came from genuine Nitro hardware (or
//! from a simulated NSM whose root the caller chose to trust). [`Policy::check`] then decides
//! whether it is *the* enclave expected: PCRs equal to the spec, no debug mode unless
//! allowed, the operator's challenge as nonce, the agent's [`Binding`] as `user_data`, and a
//! fresh timestamp.
//!
//! # Binding format
//!
//! `user_data` ties the document to the boot configuration the agent received and to the
//! serving CA of its control plane, so a host that swaps either is caught:
//!
//! ```text
//! binding_v1 = 0x01 || SHA-256( "nautilus-binding/v1" || boot_config_sha256 || serving_ca_sha256 )
//! ```
//!
//! 33 bytes. The leading byte is the version, so later formats are distinguishable without
//! guessing; the ASCII domain string keeps the hash from colliding with other uses of the
//! same digests. Both inputs are fixed-length 32-byte SHA-256 digests, so the concatenation
//! is unambiguous.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::attestation::AttestationDocument;

/// Clock skew tolerated for documents that appear to come from the future.
pub const DEFAULT_MAX_CLOCK_SKEW_MS: u64 = 60_000;

/// A policy failure. Messages are lower-case and show expected against attested values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The document lacks a PCR the policy pins.
    #[error("pcr{index} is not in the document, expected {expected}")]
    PcrMissing {
        /// PCR index.
        index: u8,
        /// Expected value, hex.
        expected: String,
    },
    /// A pinned PCR differs.
    #[error("pcr{index} mismatch: expected {expected}, attested {attested}")]
    PcrMismatch {
        /// PCR index.
        index: u8,
        /// Expected value, hex.
        expected: String,
        /// Attested value, hex.
        attested: String,
    },
    /// The enclave runs in debug mode (PCR0 all zeros) and the policy does not allow it.
    #[error(
        "enclave runs in debug mode (pcr0 is all zeros); its memory is readable by the host, allow debug explicitly to accept it"
    )]
    DebugMode,
    /// A challenge was set but the document carries no nonce.
    #[error("document has no nonce, expected the challenge {expected}")]
    NonceMissing {
        /// The challenge, hex.
        expected: String,
    },
    /// The nonce differs from the challenge (a replayed or foreign document).
    #[error("nonce mismatch: expected {expected}, attested {attested}")]
    NonceMismatch {
        /// The challenge, hex.
        expected: String,
        /// The nonce, hex.
        attested: String,
    },
    /// A binding was expected but `user_data` is null.
    #[error("document has no user_data, expected the binding {expected}")]
    BindingMissing {
        /// Expected binding, hex.
        expected: String,
    },
    /// `user_data` differs from the expected binding (config or serving CA changed).
    #[error(
        "user_data binding mismatch: expected {expected}, attested {attested} (boot config or serving ca differ)"
    )]
    BindingMismatch {
        /// Expected binding, hex.
        expected: String,
        /// `user_data`, hex.
        attested: String,
    },
    /// The document is older than the maximum age.
    #[error(
        "document is too old: issued {age_ms} ms before the verification time, the limit is {max_age_ms} ms"
    )]
    TooOld {
        /// Age at verification time.
        age_ms: u64,
        /// The limit.
        max_age_ms: u64,
    },
    /// The document's timestamp is ahead of the verification time beyond the skew.
    #[error(
        "document timestamp is {ahead_ms} ms after the verification time, more than the {max_skew_ms} ms clock skew allowed"
    )]
    FromFuture {
        /// How far ahead.
        ahead_ms: u64,
        /// The skew allowed.
        max_skew_ms: u64,
    },
}

/// Requirements on a verified document. Unset fields are not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Expected PCR values by index (normally 0, 1, 2 and optionally 8).
    pub pcrs: BTreeMap<u8, Vec<u8>>,
    /// Accept debug-mode enclaves (PCR0 all zeros).
    pub allow_debug: bool,
    /// The challenge the document's nonce must equal.
    pub challenge: Option<Vec<u8>>,
    /// The value `user_data` must equal, e.g. [`Binding::v1`].
    pub binding: Option<Vec<u8>>,
    /// Maximum age of the document relative to the verification time.
    pub max_age_ms: Option<u64>,
    /// Tolerated clock skew for timestamps after the verification time.
    pub max_clock_skew_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            pcrs: BTreeMap::new(),
            allow_debug: false,
            challenge: None,
            binding: None,
            max_age_ms: None,
            max_clock_skew_ms: DEFAULT_MAX_CLOCK_SKEW_MS,
        }
    }
}

impl Policy {
    /// Pin PCR `index` to `value`.
    pub fn with_pcr(mut self, index: u8, value: impl Into<Vec<u8>>) -> Self {
        self.pcrs.insert(index, value.into());
        self
    }

    /// Check `doc` (already verified) with `at_ms` the verification time in ms since the epoch.
    pub fn check(&self, doc: &AttestationDocument, at_ms: u64) -> Result<(), PolicyError> {
        if doc.debug_mode() && !self.allow_debug {
            return Err(PolicyError::DebugMode);
        }
        for (index, expected) in &self.pcrs {
            match doc.pcr(*index) {
                None => {
                    return Err(PolicyError::PcrMissing {
                        index: *index,
                        expected: hex::encode(expected),
                    });
                }
                Some(attested) if attested != expected.as_slice() => {
                    return Err(PolicyError::PcrMismatch {
                        index: *index,
                        expected: hex::encode(expected),
                        attested: hex::encode(attested),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(challenge) = &self.challenge {
            match &doc.nonce {
                None => {
                    return Err(PolicyError::NonceMissing {
                        expected: hex::encode(challenge),
                    });
                }
                Some(nonce) if nonce != challenge => {
                    return Err(PolicyError::NonceMismatch {
                        expected: hex::encode(challenge),
                        attested: hex::encode(nonce),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(binding) = &self.binding {
            match &doc.user_data {
                None => {
                    return Err(PolicyError::BindingMissing {
                        expected: hex::encode(binding),
                    });
                }
                Some(user_data) if user_data != binding => {
                    return Err(PolicyError::BindingMismatch {
                        expected: hex::encode(binding),
                        attested: hex::encode(user_data),
                    });
                }
                Some(_) => {}
            }
        }
        if doc.timestamp_ms > at_ms {
            let ahead_ms = doc.timestamp_ms - at_ms;
            if ahead_ms > self.max_clock_skew_ms {
                return Err(PolicyError::FromFuture {
                    ahead_ms,
                    max_skew_ms: self.max_clock_skew_ms,
                });
            }
        } else if let Some(max_age_ms) = self.max_age_ms {
            let age_ms = at_ms - doc.timestamp_ms;
            if age_ms > max_age_ms {
                return Err(PolicyError::TooOld { age_ms, max_age_ms });
            }
        }
        Ok(())
    }
}

/// The `user_data` value an agent promises; see the module docs for the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding;

impl Binding {
    /// Version byte of [`Binding::v1`].
    pub const V1: u8 = 1;
    /// Domain-separation prefix of [`Binding::v1`].
    pub const V1_DOMAIN: &'static [u8] = b"nautilus-binding/v1";
    /// Length of a v1 binding: version byte plus SHA-256.
    pub const V1_LEN: usize = 33;

    /// `0x01 || SHA-256("nautilus-binding/v1" || boot_config_digest || serving_ca_digest)`.
    ///
    /// `boot_config_digest` is [`crate::wire::EnclaveConfig::digest`] (SHA-256 of the
    /// configuration's canonical JSON);
    /// `serving_ca_digest` the SHA-256 of the DER of the control plane's serving CA.
    pub fn v1(boot_config_digest: [u8; 32], serving_ca_digest: [u8; 32]) -> Vec<u8> {
        let mut hasher = Sha256::new();
        hasher.update(Self::V1_DOMAIN);
        hasher.update(boot_config_digest);
        hasher.update(serving_ca_digest);
        let mut out = Vec::with_capacity(Self::V1_LEN);
        out.push(Self::V1);
        out.extend_from_slice(&hasher.finalize());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000_000;

    fn mk_doc() -> AttestationDocument {
        AttestationDocument {
            module_id: "i-1-enc1".to_owned(),
            digest: "SHA384".to_owned(),
            timestamp_ms: T,
            pcrs: (0..16u8).map(|i| (i, vec![i + 0x10; 48])).collect(),
            certificate: vec![1],
            cabundle: vec![vec![2]],
            public_key: None,
            user_data: Some(Binding::v1([1; 32], [2; 32])),
            nonce: Some(b"challenge".to_vec()),
        }
    }

    fn full_policy() -> Policy {
        Policy {
            challenge: Some(b"challenge".to_vec()),
            binding: Some(Binding::v1([1; 32], [2; 32])),
            max_age_ms: Some(300_000),
            ..Policy::default()
        }
        .with_pcr(0, vec![0x10; 48])
        .with_pcr(1, vec![0x11; 48])
        .with_pcr(2, vec![0x12; 48])
        .with_pcr(8, vec![0x18; 48])
    }

    #[test]
    fn matching_document_passes() {
        full_policy().check(&mk_doc(), T + 1000).expect("passes");
        // Within the clock skew is fine too.
        full_policy().check(&mk_doc(), T - 1000).expect("skew");
    }

    #[rstest::rstest]
    #[case::pcr_mismatch(|d: &mut AttestationDocument, _: &mut Policy| { d.pcrs.insert(1, vec![0xff; 48]); }, "pcr1 mismatch: expected 1111")]
    #[case::pcr8_mismatch(|d: &mut AttestationDocument, _: &mut Policy| { d.pcrs.insert(8, vec![0; 48]); }, "pcr8 mismatch")]
    #[case::pcr_missing(|d: &mut AttestationDocument, _: &mut Policy| { d.pcrs.remove(&8); }, "pcr8 is not in the document")]
    #[case::debug(|d: &mut AttestationDocument, _: &mut Policy| { d.pcrs.insert(0, vec![0; 48]); }, "debug mode")]
    #[case::nonce_mismatch(|d: &mut AttestationDocument, _: &mut Policy| { d.nonce = Some(b"old".to_vec()); }, "nonce mismatch: expected 6368")]
    #[case::nonce_missing(|d: &mut AttestationDocument, _: &mut Policy| { d.nonce = None; }, "no nonce")]
    #[case::binding_mismatch(|d: &mut AttestationDocument, _: &mut Policy| { d.user_data = Some(Binding::v1([9; 32], [2; 32])); }, "binding mismatch")]
    #[case::binding_missing(|d: &mut AttestationDocument, _: &mut Policy| { d.user_data = None; }, "no user_data")]
    #[case::binding_empty(|d: &mut AttestationDocument, _: &mut Policy| { d.user_data = Some(vec![]); }, "binding mismatch")]
    #[case::too_old(|d: &mut AttestationDocument, _: &mut Policy| { d.timestamp_ms = T - 300_001; }, "too old")]
    #[case::future(|d: &mut AttestationDocument, _: &mut Policy| { d.timestamp_ms = T + 60_001; }, "after the verification time")]
    fn each_failure_is_reported(
        #[case] mutate: fn(&mut AttestationDocument, &mut Policy),
        #[case] needle: &str,
    ) {
        let mut doc = mk_doc();
        let mut policy = full_policy();
        mutate(&mut doc, &mut policy);
        let err = policy.check(&doc, T).expect_err("refused");
        assert!(err.to_string().contains(needle), "{err}");
    }

    #[test]
    fn debug_mode_allowed_explicitly() {
        let mut doc = mk_doc();
        doc.pcrs.insert(0, vec![0; 48]);
        let policy = Policy {
            allow_debug: true,
            ..Policy::default()
        };
        policy.check(&doc, T).expect("allowed");
        assert_eq!(
            Policy::default().check(&doc, T),
            Err(PolicyError::DebugMode)
        );
    }

    #[test]
    fn binding_v1_format() {
        let b = Binding::v1([1; 32], [2; 32]);
        assert_eq!(b.len(), Binding::V1_LEN);
        assert_eq!(b[0], Binding::V1);
        let mut input = b"nautilus-binding/v1".to_vec();
        input.extend([1; 32]);
        input.extend([2; 32]);
        assert_eq!(b[1..], Sha256::digest(&input)[..]);
        // Order matters: swapping config and CA gives another binding.
        assert_ne!(b, Binding::v1([2; 32], [1; 32]));
    }
}
