//! The per-cluster attestation state the controller keeps across reconciles: the boot nonce of
//! the configuration the enclave runs, the challenges issued since, the report verifier, and
//! whether a stale document was already challenged once more.

use nautilus_crds::NautilusMaster;
use rand_core::RngCore as _;

use crate::verify::{IssuedNonces, Outcome, ReportState};

/// One cluster's attestation state, for the configuration (digest) its enclave boots with.
///
/// There is no value without a boot nonce and its issued challenges: the controller keeps an
/// `Option<Attestation>` per cluster, `None` until this process first looked at the boot
/// ConfigMap, and replaces the whole value when the configuration changes (see [`Self::boot`]).
#[derive(Debug)]
pub(super) struct Attestation {
    /// The configuration this state is for.
    digest_hex: String,
    /// The nonce in the boot ConfigMap.
    boot_nonce: Vec<u8>,
    /// The challenges issued to this configuration's enclave.
    nonces: IssuedNonces,
    /// The enclave may have answered a challenge this process never saw (operator restart):
    /// ask for a fresh attestation at once.
    needs_refresh: bool,
    /// The stale document (SHA-256 hex) already answered with one more challenge.
    rechallenged: Option<String>,
    /// The report verifier of the attested key.
    reports: ReportState,
    /// How long a challenge may go unanswered.
    grace_ms: u64,
    /// When this process first challenged the enclave (`None` before).
    first_challenge_ms: Option<u64>,
    /// Whether a document has verified since this process booted the state.
    verified: bool,
}

impl Attestation {
    /// The state for configuration `digest_hex` booted with `boot_nonce` (the existing
    /// ConfigMap's when it holds this configuration, else a fresh one), as of `now_ms`.
    pub(super) fn boot(
        digest_hex: String,
        boot_nonce: Vec<u8>,
        now_ms: u64,
        grace_ms: u64,
    ) -> Self {
        Self {
            digest_hex,
            nonces: IssuedNonces::new(boot_nonce.clone(), now_ms, grace_ms),
            boot_nonce,
            // This process does not know which challenge a running enclave answered last
            // (operator restart, ConfigMap edited): ask for a fresh one as soon as it attests.
            needs_refresh: true,
            rechallenged: None,
            reports: ReportState::default(),
            grace_ms,
            first_challenge_ms: None,
            verified: false,
        }
    }

    /// A document verified.
    pub(super) fn verified(&mut self) {
        self.verified = true;
    }

    /// Whether this process has challenged the enclave but no document has verified since it
    /// booted this state, and that first challenge is still within the grace to answer it: the
    /// window after an operator restart in which a document answering the previous process's
    /// challenge says nothing new about the enclave.
    pub(super) fn awaiting_first_answer(&self, now_ms: u64) -> bool {
        !self.verified
            && self
                .first_challenge_ms
                .is_some_and(|at| now_ms <= at.saturating_add(self.grace_ms))
    }

    /// Whether this is the state of configuration `digest_hex`.
    pub(super) fn is_for(&self, digest_hex: &str) -> bool {
        self.digest_hex == digest_hex
    }

    /// The nonce the boot ConfigMap carries.
    pub(super) fn boot_nonce(&self) -> &[u8] {
        &self.boot_nonce
    }

    /// The challenges issued so far, and the report verifier, for [`crate::verify::verify`].
    pub(super) fn verification(&mut self) -> (&IssuedNonces, &mut ReportState) {
        (&self.nonces, &mut self.reports)
    }

    /// Whether the enclave must be challenged now, having presented a document with `outcome`:
    /// at once after this process booted the state, every `refresh_ms`, and once more for a
    /// document that answers an older challenge (an enclave that restarted answers its boot
    /// nonce).
    pub(super) fn challenge_due(&self, outcome: &Outcome, now_ms: u64, refresh_ms: u64) -> Due {
        if let Some(document) = rechallenge(outcome, self.rechallenged.as_deref()) {
            return Due::Rechallenge(document);
        }
        if self.needs_refresh || now_ms.saturating_sub(self.nonces.latest_issued_ms) >= refresh_ms {
            Due::Challenge
        } else {
            Due::NotYet
        }
    }

    /// The enclave received the challenge `nonce` at `now_ms`; `rechallenged` is the stale
    /// document it answers, if it was a re-challenge.
    pub(super) fn challenged(&mut self, nonce: Vec<u8>, now_ms: u64, rechallenged: Option<String>) {
        self.nonces.refresh(nonce, now_ms);
        self.needs_refresh = false;
        self.first_challenge_ms.get_or_insert(now_ms);
        if rechallenged.is_some() {
            self.rechallenged = rechallenged;
        }
    }
}

/// Whether the enclave is to be challenged now ([`Attestation::challenge_due`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Not yet: the latest challenge is younger than the refresh interval.
    NotYet,
    /// A challenge is due (after boot, or the refresh interval passed).
    Challenge,
    /// Its document (SHA-256, hex) answers an older challenge: challenge it once more.
    Rechallenge(String),
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
fn rechallenge(outcome: &Outcome, already: Option<&str>) -> Option<String> {
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
    use nautilus_crds::conditions::Reason;

    use super::*;

    #[test]
    fn a_stale_document_is_rechallenged_once() {
        let stale = |doc: &str| Outcome::Failed {
            reason: Reason::AttestationFailed,
            message: "nonce mismatch".into(),
            attestation: None,
            unanswered_challenge: Some(doc.into()),
        };
        assert_eq!(rechallenge(&stale("d1"), None).as_deref(), Some("d1"));
        assert_eq!(rechallenge(&stale("d1"), Some("d1")), None, "only once");
        assert_eq!(rechallenge(&stale("d2"), Some("d1")).as_deref(), Some("d2"));
        let other = Outcome::Failed {
            reason: Reason::AttestationFailed,
            message: "pcr0 mismatch".into(),
            attestation: None,
            unanswered_challenge: None,
        };
        assert_eq!(rechallenge(&other, None), None, "only nonce failures");
        assert_eq!(rechallenge(&Outcome::Pending("x".into()), None), None);
    }

    #[test]
    fn challenges_are_due_after_boot_every_refresh_and_once_per_stale_document() {
        let stale = Outcome::Failed {
            reason: Reason::AttestationFailed,
            message: "nonce mismatch".into(),
            attestation: None,
            unanswered_challenge: Some("d1".into()),
        };
        let fine = Outcome::Pending(String::new());
        let mut state = Attestation::boot("digest".into(), vec![9; 32], 1_000, 30_000);
        assert!(state.is_for("digest") && !state.is_for("other"));
        assert_eq!(state.boot_nonce(), [9; 32]);
        // A process that just booted the state does not know the last challenge.
        assert_eq!(state.challenge_due(&fine, 1_000, 60_000), Due::Challenge);
        state.challenged(vec![1; 32], 2_000, None);
        assert_eq!(state.verification().0.latest, [1; 32]);
        assert_eq!(
            state.verification().0.previous.as_deref(),
            Some(&[9; 32][..])
        );
        assert_eq!(state.challenge_due(&fine, 61_999, 60_000), Due::NotYet);
        assert_eq!(state.challenge_due(&fine, 62_000, 60_000), Due::Challenge);
        // A stale document gets one more challenge, then never again.
        assert_eq!(
            state.challenge_due(&stale, 3_000, 60_000),
            Due::Rechallenge("d1".into())
        );
        state.challenged(vec![2; 32], 3_000, Some("d1".into()));
        assert_eq!(state.challenge_due(&stale, 4_000, 60_000), Due::NotYet);
    }
}
