//! A user's one-shot challenge: a fresh attestation document for a nonce of the user's own,
//! answered beside the operator's evidence, never in place of it.
//!
//! ```text
//! user ──POST /challenge {nonce}──► sidecar ──Challenge{nonce}──► agent
//! user ◄──ChallengeResponse──────── sidecar ◄──ChallengeAnswer─── agent (NSM: same key and binding)
//! ```
//!
//! The operator's nonce ([`NonceRefresh`](super::NonceRefresh)) replaces the evidence the
//! sidecar serves at `/report`; a [`Challenge`] does not, so users can check an enclave as
//! often as they like without making the operator's check flap. Every part of the answer is
//! checked by the user: the document against the Nitro root, its nonce against the challenge,
//! its `user_data` against the binding of the returned configuration and serving CA.

use serde::{Deserialize, Serialize};

use super::config::{EnclaveConfig, nonce_b64};
use super::evidence::AttestationEvidence;

/// Sidecar → agent: attest once more for this nonce and answer with a [`ChallengeAnswer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Challenge {
    /// The user's challenge (1 to 512 bytes).
    #[serde(with = "nonce_b64")]
    pub nonce: Vec<u8>,
}

/// Agent → sidecar: the document for one [`Challenge`]. The nonce is repeated so the sidecar
/// can hand each answer to the request that asked for it; the user checks it in the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChallengeAnswer {
    /// The nonce of the challenge answered.
    #[serde(with = "nonce_b64")]
    pub nonce: Vec<u8>,
    /// The fresh attestation: same report key, same binding, the challenge as nonce.
    pub attestation: AttestationEvidence,
}

/// The sidecar's answer to `POST /challenge`: the configuration it booted the enclave with and
/// the fresh attestation. Relayed by the host, so worth only what the user verifies of it: the
/// configuration counts once its digest matches the document's binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChallengeResponse {
    /// The measured configuration, as the sidecar sent it to the agent.
    pub config: EnclaveConfig,
    /// The attestation answering the user's nonce.
    pub attestation: AttestationEvidence,
    /// The enclave's latest signed report as relayed, so that the user reads what it
    /// restored and the last snapshot it sealed: signed by the key the fresh document
    /// attests, so a relay can withhold it but not forge it. Absent before the first report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<super::SignedReport>,
}

/// `POST /challenge` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The user's challenge, standard base64 (1 to 512 bytes).
    #[serde(with = "nonce_b64")]
    pub nonce: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_refuses_unknown_fields_and_bad_nonces() {
        let ok: ChallengeRequest = serde_json::from_str(r#"{"nonce":"AQID"}"#).expect("parse");
        assert_eq!(ok.nonce, vec![1, 2, 3]);
        for bad in [
            r#"{"nonce":""}"#,
            r#"{"nonce":"AQID","extra":1}"#,
            r#"{"nonce":"not base64!"}"#,
        ] {
            assert!(
                serde_json::from_str::<ChallengeRequest>(bad).is_err(),
                "{bad}"
            );
        }
        let long = serde_json::json!({ "nonce": base64_of(&[0u8; 513]) });
        assert!(serde_json::from_value::<ChallengeRequest>(long).is_err());
    }

    fn base64_of(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}
