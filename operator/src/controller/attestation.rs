//! The per-cluster attestation state the controller keeps across reconciles: the boot nonce of
//! the configuration the enclave runs, the challenges issued since, the report verifier, and
//! whether a stale document was already challenged once more.

use nautilus_crds::NautilusMaster;
use rand_core::RngCore as _;

use crate::verify::{IssuedNonces, Outcome, ReportState};

#[derive(Debug)]
pub(super) struct BootState {
    pub(super) digest_hex: String,
    pub(super) boot_nonce: Vec<u8>,
    pub(super) nonces: IssuedNonces,
    /// The enclave may have answered a challenge this process never saw (operator restart):
    /// ask for a fresh attestation at once.
    pub(super) needs_refresh: bool,
    /// The stale document (SHA-256 hex) already answered with one more challenge.
    pub(super) rechallenged: Option<String>,
}

#[derive(Debug, Default)]
pub(super) struct ClusterState {
    pub(super) boot: Option<BootState>,
    pub(super) reports: ReportState,
}

pub(super) fn fresh_nonce() -> Vec<u8> {
    let mut nonce = vec![0u8; 32];
    rand_core::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// How long a just-issued challenge may go unanswered before that is a failure.
pub(super) fn grace_ms(nm: &NautilusMaster) -> u64 {
    (u64::from(nm.spec.health.probe_interval_seconds) * 3_000).max(30_000)
}

/// The document to challenge once more: one that failed only for its nonce and was not
/// re-challenged already.
pub(super) fn rechallenge(outcome: &Outcome, already: Option<&str>) -> Option<String> {
    match outcome {
        Outcome::Failed {
            unanswered_challenge: Some(document),
            ..
        } if already != Some(document.as_str()) => Some(document.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_document_is_rechallenged_once() {
        let stale = |doc: &str| Outcome::Failed {
            reason: "AttestationFailed",
            message: "nonce mismatch".into(),
            attestation: None,
            unanswered_challenge: Some(doc.into()),
        };
        assert_eq!(rechallenge(&stale("d1"), None).as_deref(), Some("d1"));
        assert_eq!(rechallenge(&stale("d1"), Some("d1")), None, "only once");
        assert_eq!(rechallenge(&stale("d2"), Some("d1")).as_deref(), Some("d2"));
        let other = Outcome::Failed {
            reason: "AttestationFailed",
            message: "pcr0 mismatch".into(),
            attestation: None,
            unanswered_challenge: None,
        };
        assert_eq!(rechallenge(&other, None), None, "only nonce failures");
        assert_eq!(rechallenge(&Outcome::Pending("x".into()), None), None);
    }
}
