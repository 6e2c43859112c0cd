//! Verification of what the sidecar relays, and the conditions that follow from it.
//!
//! The sidecar is not trusted: everything it serves at `/report` is checked here before it can
//! move a condition to `True`.
//!
//! 1. The attestation document is verified with [`Verifier`] against the pinned AWS Nitro root
//!    (or, only where `spec.attestation.allowSimulated` is true, against the simulated root the
//!    evidence carries, and then the result is marked simulated). One verifier serves every
//!    resource, so with its cache of verified certificate signatures a document whose chain was
//!    seen before costs one COSE signature check, whatever the number of resources.
//! 2. [`Policy`] checks it is *our* enclave: PCR0/1/2 (and PCR8 when set) equal to the spec,
//!    debug mode only if allowed, the nonce equal to the latest one the operator issued (or the
//!    one before it while a refresh is in flight), `user_data` equal to
//!    `Binding::v1(boot config digest, sha256(serving CA DER))`, and the document's age.
//! 3. The report is verified with a [`ReportVerifier`] for the attested key, kept per cluster
//!    across reconciles ([`ReportState`]) so a replayed older report is caught.
//! 4. [`crate::observe`] turns the outcome and the enclave's state into condition observations.
//!
//! Everything is a pure function of its inputs, time included (the shared verifier's cache
//! changes how fast an answer comes, never the answer).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use nautilus_crds::conditions::Reason;
use nautilus_crds::{AttestationSummary, NautilusMaster};
use nautilus_protocol::attestation::VerifyError;
use nautilus_protocol::wire::{EvidenceBundle, Report, ReportError, ReportVerifier, SignedReport};
use nautilus_protocol::{
    Binding, ChainCache, Policy, PolicyError, TrustAnchor, Verifier, VerifyAt,
};
use sha2::{Digest as _, Sha256};

/// The verifier for the pinned AWS root, shared by every resource the process reconciles. AWS
/// chains repeat across documents and refreshes (the leaf belongs to an enclave for hours), so
/// after the first document of an enclave each refresh checks only the COSE signature; the
/// cache is bounded, and it remembers signatures, never trust (see [`ChainCache`]).
static AWS_VERIFIER: LazyLock<Verifier> = LazyLock::new(Verifier::default);

/// Signatures under simulated roots (development only, root supplied by the host) are kept in
/// their own cache, so that host-made chains cannot evict AWS entries.
static SIMULATED_CACHE: LazyLock<Arc<ChainCache>> = LazyLock::new(Arc::default);

/// The challenges the operator issued to one enclave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedNonces {
    /// The latest challenge (the boot nonce, or the last `POST /attest`).
    pub latest: Vec<u8>,
    /// When `latest` was issued (ms since the epoch).
    pub latest_issued_ms: u64,
    /// The challenge before `latest`, still accepted until `previous_valid_until_ms` so that a
    /// refresh in flight does not flap `Attested`.
    pub previous: Option<Vec<u8>>,
    /// End of the grace period of `previous`.
    pub previous_valid_until_ms: u64,
    /// How long after issuing a challenge a document without it is "not answered yet" (pending)
    /// rather than a failure, and how long the previous challenge stays acceptable.
    pub grace_ms: u64,
}

impl IssuedNonces {
    /// Only `nonce`, issued at `now_ms`, is acceptable.
    pub fn new(nonce: Vec<u8>, now_ms: u64, grace_ms: u64) -> Self {
        Self {
            latest: nonce,
            latest_issued_ms: now_ms,
            previous: None,
            previous_valid_until_ms: 0,
            grace_ms,
        }
    }

    /// Issue `nonce`; the one before stays acceptable for the grace period.
    pub fn refresh(&mut self, nonce: Vec<u8>, now_ms: u64) {
        let previous = std::mem::replace(&mut self.latest, nonce);
        self.previous = Some(previous);
        self.previous_valid_until_ms = now_ms.saturating_add(self.grace_ms);
        self.latest_issued_ms = now_ms;
    }

    fn in_grace(&self, now_ms: u64) -> bool {
        now_ms <= self.latest_issued_ms.saturating_add(self.grace_ms)
    }

    fn acceptable_previous(&self, now_ms: u64) -> Option<&[u8]> {
        self.previous
            .as_deref()
            .filter(|_| now_ms <= self.previous_valid_until_ms)
    }
}

/// Per-cluster report verification state, kept by the controller across reconciles.
#[derive(Debug, Default)]
pub struct ReportState {
    /// The verifier of the last attested key, `None` before the first report; a report is
    /// only ever checked by a verifier for its key (see [`ReportState::verify`]).
    verifier: Option<KeyedVerifier>,
}

#[derive(Debug)]
struct KeyedVerifier {
    public_key: Vec<u8>,
    digest_hex: String,
    max_age_ms: u64,
    verifier: ReportVerifier,
    last_accepted: Option<SignedReport>,
}

impl KeyedVerifier {
    fn is_for(&self, public_key: &[u8], digest_hex: &str, max_age_ms: u64) -> bool {
        self.public_key == public_key
            && self.digest_hex == digest_hex
            && self.max_age_ms == max_age_ms
    }
}

impl ReportState {
    /// Verify `signed` with the verifier for `public_key` and `digest_hex`, making a new one when
    /// the attested key or the configuration changed. Re-reading the last accepted report is
    /// allowed (the sidecar serves the latest report until the next one), and still has to be
    /// fresh; an older report is a replay.
    fn verify(
        &mut self,
        public_key: &[u8],
        digest_hex: &str,
        max_age_ms: u64,
        signed: &SignedReport,
        now_ms: u64,
    ) -> Result<Report, ReportError> {
        let keyed = match &mut self.verifier {
            Some(keyed) if keyed.is_for(public_key, digest_hex, max_age_ms) => keyed,
            slot => slot.insert(KeyedVerifier {
                public_key: public_key.to_vec(),
                digest_hex: digest_hex.to_owned(),
                max_age_ms,
                verifier: ReportVerifier::new(public_key, digest_hex, max_age_ms)?,
                last_accepted: None,
            }),
        };
        if keyed.last_accepted.as_ref() == Some(signed) {
            // Same bytes as last time: check signature and freshness with a verifier that has
            // not seen it.
            return ReportVerifier::new(public_key, digest_hex, max_age_ms)?.check(signed, now_ms);
        }
        let report = keyed.verifier.verify(signed, now_ms)?;
        keyed.last_accepted = Some(signed.clone());
        Ok(report)
    }
}

/// What verification concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Nothing to verify yet (no attestation, no report, or the enclave still runs the previous
    /// configuration while it rolls). Never `True`, never terminal.
    Pending(String),
    /// Verification failed: `Attested=False` with this reason.
    Failed {
        /// Why, as `Attested=False` says.
        reason: Reason,
        /// What failed, precisely.
        message: String,
        /// The attestation summary when only the report failed.
        attestation: Option<Box<AttestationSummary>>,
        /// Set when the only fault is the nonce: SHA-256 (hex) of the document, which answers a
        /// challenge the operator no longer accepts (a restarted enclave answers its boot nonce).
        /// The controller may challenge such an enclave once more before giving up.
        unanswered_challenge: Option<String>,
    },
    /// The attestation and the latest report verified.
    Verified(Box<Verified>),
}

/// A verified attestation and report.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// What status shows about the document.
    pub summary: AttestationSummary,
    /// The serving CA that `user_data` binds: the CA of the published kubeconfig.
    pub serving_ca_pem: String,
    /// The verified report.
    pub report: Report,
}

/// Everything [`verify`] needs.
#[derive(Debug)]
pub struct Input<'a> {
    /// The resource (PCRs and attestation policy come from its spec).
    pub nm: &'a NautilusMaster,
    /// What the sidecar served.
    pub bundle: &'a EvidenceBundle,
    /// The challenges the operator issued.
    pub nonces: &'a IssuedNonces,
    /// The digest of the boot configuration the operator rendered.
    pub config_digest: [u8; 32],
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// The operator's policy: whether simulated attestation may be accepted at all (where the
    /// spec allows it too).
    pub simulated_allowed: bool,
}

/// How old a report may be: three probe intervals, at least 15 s.
pub fn report_max_age_ms(nm: &NautilusMaster) -> u64 {
    (u64::from(nm.spec.health.probe_interval_seconds) * 3_000).max(15_000)
}

fn failed(reason: Reason, message: impl Into<String>) -> Outcome {
    Outcome::Failed {
        reason,
        message: message.into(),
        attestation: None,
        unanswered_challenge: None,
    }
}

fn pcr_policy(nm: &NautilusMaster) -> Result<Policy, String> {
    let enclave = &nm.spec.enclave;
    let mut policy = Policy {
        allow_debug: nm.spec.attestation.allow_debug_mode,
        max_age_ms: Some(u64::from(nm.spec.attestation.max_document_age_seconds) * 1000),
        ..Policy::default()
    };
    let pinned = [
        (0u8, Some(&enclave.pcr0)),
        (1, Some(&enclave.pcr1)),
        (2, Some(&enclave.pcr2)),
        (8, enclave.pcr8.as_ref()),
    ];
    for (index, value) in pinned {
        if let Some(value) = value {
            let bytes = hex::decode(value)
                .map_err(|err| format!("spec.enclave.pcr{index} is not hex: {err}"))?;
            policy = policy.with_pcr(index, bytes);
        }
    }
    Ok(policy)
}

pub(crate) fn time_of(ms: u64) -> Time {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    Time(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Verify the relayed evidence. See the module documentation for the steps.
pub fn verify(input: &Input<'_>, reports: &mut ReportState) -> Outcome {
    let Input {
        nm,
        bundle,
        nonces,
        config_digest,
        now_ms,
        simulated_allowed,
    } = *input;
    let digest_hex = hex::encode(config_digest);
    let Some(evidence) = &bundle.attestation else {
        return Outcome::Pending("the enclave has not produced an attestation yet".into());
    };
    // The sidecar's claim is only used to wait instead of failing while the enclave rolls; it
    // can never make anything verify.
    if let Some(running) = &bundle.boot_config_digest
        && *running != digest_hex
    {
        return Outcome::Pending(format!(
            "the enclave runs boot config {}, waiting for {} to roll out",
            short(running),
            short(&digest_hex)
        ));
    }

    // 1. Genuine document?
    let allow_simulated = nm.spec.attestation.allow_simulated;
    let at = VerifyAt::UnixMillis(now_ms);
    let (document, simulated) = match AWS_VERIFIER.verify(&evidence.document, at) {
        Ok(doc) => (doc, false),
        Err(VerifyError::UntrustedRoot { .. }) if evidence.simulated_root_pem.is_some() => {
            if !allow_simulated {
                return failed(
                    Reason::AttestationFailed,
                    "the attestation document is signed by a simulated NSM, not AWS Nitro \
                     hardware, and spec.attestation.allowSimulated is false",
                );
            }
            if !simulated_allowed {
                return failed(
                    Reason::SimulatedAttestationNotAllowed,
                    "the enclave's attestation is simulated; this operator runs enclaves in pods \
                     and was not started with --allow-simulated-attestation, so no hardware \
                     vouches for this control plane",
                );
            }
            let root = evidence.simulated_root_pem.as_deref().unwrap_or_default();
            let anchor = match TrustAnchor::from_pem(root) {
                Ok(anchor) => anchor,
                Err(err) => {
                    return failed(
                        Reason::AttestationFailed,
                        format!("simulated root is unusable: {err}"),
                    );
                }
            };
            let verifier = Verifier::with_cache(anchor, Arc::clone(&SIMULATED_CACHE));
            match verifier.verify(&evidence.document, at) {
                Ok(doc) => (doc, true),
                Err(err) => {
                    return failed(
                        Reason::AttestationFailed,
                        format!("simulated attestation document does not verify: {err}"),
                    );
                }
            }
        }
        Err(err) => {
            return failed(
                Reason::AttestationFailed,
                format!("attestation document does not verify: {err}"),
            );
        }
    };

    // 2. Our enclave, our challenge, our configuration?
    let mut policy = match pcr_policy(nm) {
        Ok(policy) => policy,
        Err(message) => return failed(Reason::AttestationFailed, message),
    };
    let Some(ca_digest) = evidence.serving_ca_digest() else {
        return failed(
            Reason::AttestationFailed,
            "the serving CA in the evidence is not a PEM certificate",
        );
    };
    policy.binding = Some(Binding::v1(config_digest, ca_digest));
    policy.challenge = Some(nonces.latest.clone());
    let mut checked = policy.check(&document, now_ms);
    if let Err(PolicyError::NonceMismatch { .. }) = checked
        && let Some(previous) = nonces.acceptable_previous(now_ms)
        && document.nonce.as_deref() == Some(previous)
    {
        policy.challenge = Some(previous.to_vec());
        checked = policy.check(&document, now_ms);
    }
    if let Err(PolicyError::NonceMismatch { .. } | PolicyError::NonceMissing { .. }) = checked
        && nonces.in_grace(now_ms)
    {
        return Outcome::Pending(format!(
            "waiting for the enclave to answer the challenge issued {} ms ago",
            now_ms.saturating_sub(nonces.latest_issued_ms)
        ));
    }
    if let Err(err) = checked {
        return match err {
            PolicyError::NonceMismatch { .. } | PolicyError::NonceMissing { .. } => {
                Outcome::Failed {
                    reason: Reason::AttestationFailed,
                    message: format!(
                        "{err} (the document does not answer the operator's latest challenge: \
                         stale or replayed)"
                    ),
                    attestation: None,
                    unanswered_challenge: Some(hex::encode(Sha256::digest(&evidence.document))),
                }
            }
            other => failed(Reason::AttestationFailed, other.to_string()),
        };
    }
    let Some(public_key) = document.public_key.as_deref() else {
        return failed(
            Reason::AttestationFailed,
            "the attestation document carries no public key to verify reports with",
        );
    };
    let pcr_hex = |i: u8| document.pcr(i).map(hex::encode).unwrap_or_default();
    let pcrs: BTreeMap<String, String> = [0u8, 1, 2, 8]
        .into_iter()
        .filter(|i| document.pcr(*i).is_some())
        .map(|i| (i.to_string(), pcr_hex(i)))
        .collect();
    let summary = AttestationSummary {
        module_id: document.module_id.clone(),
        verified_at: time_of(now_ms),
        document_timestamp: time_of(document.timestamp_ms),
        pcr0_prefix: pcr_hex(0).chars().take(16).collect(),
        pcrs,
        public_key_fingerprint: hex::encode(Sha256::digest(public_key)),
        document_sha256: hex::encode(Sha256::digest(&evidence.document)),
        simulated,
        debug_mode: document.debug_mode(),
    };

    // 3. The report, signed by the attested key.
    let Some(signed) = &bundle.report else {
        return Outcome::Pending(
            "attestation verified; waiting for the first signed report".into(),
        );
    };
    match reports.verify(
        public_key,
        &digest_hex,
        report_max_age_ms(nm),
        signed,
        now_ms,
    ) {
        Ok(report) => Outcome::Verified(Box::new(Verified {
            summary,
            serving_ca_pem: evidence.serving_ca_pem.clone(),
            report,
        })),
        Err(err) => {
            let reason = match err {
                ReportError::Stale { .. }
                | ReportError::FromFuture { .. }
                | ReportError::Replayed { .. } => Reason::ReportStale,
                ReportError::PublicKey(_) | ReportError::WrongConfig { .. } => {
                    Reason::AttestationFailed
                }
                _ => Reason::ReportSignatureInvalid,
            };
            Outcome::Failed {
                reason,
                message: format!("health report refused: {err}"),
                attestation: Some(Box::new(summary)),
                unanswered_challenge: None,
            }
        }
    }
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::Status;
    use crate::fixtures::verify_case;
    use crate::observe::{EnclaveState, observe};
    use nautilus_crds::conditions::types;
    use nautilus_protocol::SimulatedNsm;
    use nautilus_protocol::wire::ReportSigner;

    fn expect_failed(outcome: &Outcome, reason: Reason, needle: &str) {
        match outcome {
            Outcome::Failed {
                reason: r, message, ..
            } => {
                assert_eq!(*r, reason, "{message}");
                assert!(message.contains(needle), "{needle:?} not in {message:?}");
            }
            other => panic!("expected {reason}, got {other:?}"),
        }
    }

    #[test]
    fn genuine_simulated_evidence_verifies_and_is_marked_simulated() {
        let c = verify_case();
        let bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        let outcome = c.run(&bundle, &mut ReportState::default());
        let Outcome::Verified(v) = &outcome else {
            panic!("{outcome:?}");
        };
        assert!(v.summary.simulated);
        assert!(!v.summary.debug_mode);
        assert_eq!(v.summary.pcr0_prefix, "1010101010101010");
        assert_eq!(v.summary.pcrs.len(), 4, "{:?}", v.summary.pcrs);
        assert_eq!(v.summary.module_id, c.enclave.nsm.module_id());
        assert_eq!(
            v.summary.public_key_fingerprint,
            hex::encode(Sha256::digest(c.enclave.signer.public_key_der()))
        );
        assert_eq!(v.report.sequence, 1);

        let obs = observe(
            &c.nm,
            &EnclaveState::SidecarUp {
                started_ms: Some(c.now),
            },
            Some(&bundle),
            &outcome,
            c.now,
        );
        let attested = obs.iter().find(|o| o.type_ == types::ATTESTED).expect("a");
        assert_eq!(
            (attested.status, attested.reason),
            (Status::True, Reason::SimulatedAttestation)
        );
        assert!(attested.message.contains("not hardware evidence"));
        assert!(
            obs.iter()
                .all(|o| o.status == Status::True && o.type_ != types::READY)
        );
        assert_eq!(obs.len(), 5);
    }

    #[test]
    fn simulated_evidence_is_refused_unless_allowed() {
        let mut c = verify_case();
        c.nm.spec.attestation.allow_simulated = false;
        let bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        expect_failed(
            &c.run(&bundle, &mut ReportState::default()),
            Reason::AttestationFailed,
            "allowSimulated is false",
        );
        // Without the simulated root it is just an untrusted root.
        let mut bare = bundle.clone();
        if let Some(a) = bare.attestation.as_mut() {
            a.simulated_root_pem = None;
        }
        expect_failed(
            &c.run(&bare, &mut ReportState::default()),
            Reason::AttestationFailed,
            "untrusted root",
        );
    }

    #[test]
    fn simulated_evidence_is_refused_when_the_operator_does_not_allow_it() {
        let mut c = verify_case();
        c.simulated_allowed = false;
        let bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        let outcome = c.run(&bundle, &mut ReportState::default());
        expect_failed(
            &outcome,
            Reason::SimulatedAttestationNotAllowed,
            "--allow-simulated-attestation",
        );
        assert!(matches!(
            outcome,
            Outcome::Failed { reason, .. } if reason.is_terminal() && reason.withdraws_trust()
        ));
        // The spec's refusal still comes first: it is the resource's own word.
        c.nm.spec.attestation.allow_simulated = false;
        expect_failed(
            &c.run(&bundle, &mut ReportState::default()),
            Reason::AttestationFailed,
            "allowSimulated is false",
        );
    }

    #[test]
    fn a_wrong_pcr_is_refused_with_both_values() {
        let mut c = verify_case();
        c.nm.spec.enclave.pcr1 = "ff".repeat(48);
        let bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        expect_failed(
            &c.run(&bundle, &mut ReportState::default()),
            Reason::AttestationFailed,
            &format!(
                "pcr1 mismatch: expected {}, attested {}",
                "ff".repeat(48),
                "11".repeat(48)
            ),
        );
    }

    #[test]
    fn pcr8_is_checked_when_the_spec_pins_it() {
        let mut c = verify_case();
        c.nm.spec.enclave.pcr8 = Some("88".repeat(48));
        let bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        expect_failed(
            &c.run(&bundle, &mut ReportState::default()),
            Reason::AttestationFailed,
            "pcr8 mismatch",
        );
    }

    #[test]
    fn a_stale_nonce_is_refused_and_the_previous_one_only_during_the_grace_period() {
        let mut c = verify_case();
        let old = c.nonces.latest.clone();
        let bundle = c.enclave.bundle(c.digest, &old, 1, c.now);
        c.nonces.refresh(vec![2; 32], c.now);
        let mut reports = ReportState::default();
        assert!(
            matches!(c.run(&bundle, &mut reports), Outcome::Verified(_)),
            "previous nonce within grace"
        );
        // Two refreshes later the document answers neither: while the latest challenge is
        // young it is "not answered yet", after the grace period a failure.
        c.nonces.refresh(vec![3; 32], c.now);
        assert!(matches!(
            c.run(&bundle, &mut reports),
            Outcome::Pending(m) if m.contains("waiting for the enclave to answer")
        ));
        c.nonces.latest_issued_ms = c.now - 20_000;
        let outcome = c.run(&bundle, &mut reports);
        expect_failed(&outcome, Reason::AttestationFailed, "stale or replayed");
        let Outcome::Failed {
            unanswered_challenge,
            ..
        } = outcome
        else {
            unreachable!()
        };
        let document = &bundle.attestation.as_ref().expect("a").document;
        assert_eq!(
            unanswered_challenge,
            Some(hex::encode(Sha256::digest(document))),
            "a nonce-only failure names the document"
        );
        let mut c = verify_case();
        let bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        c.nonces.refresh(vec![2; 32], c.now - 20_000);
        expect_failed(
            &c.run(&bundle, &mut ReportState::default()),
            Reason::AttestationFailed,
            "nonce mismatch",
        );
    }

    #[test]
    fn a_debug_document_is_refused_unless_allowed() {
        let mut c = verify_case();
        c.enclave.nsm = SimulatedNsm::new().expect("nsm"); // all PCRs zero: debug mode
        c.nm.spec.enclave.pcr0 = "00".repeat(48);
        c.nm.spec.enclave.pcr1 = "00".repeat(48);
        c.nm.spec.enclave.pcr2 = "00".repeat(48);
        let bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        expect_failed(
            &c.run(&bundle, &mut ReportState::default()),
            Reason::AttestationFailed,
            "debug mode",
        );
        c.nm.spec.attestation.allow_debug_mode = true;
        let outcome = c.run(&bundle, &mut ReportState::default());
        let Outcome::Verified(v) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(v.summary.debug_mode);
    }

    #[test]
    fn a_document_for_another_config_or_ca_is_refused() {
        let c = verify_case();
        let mut other = c.digest;
        other[0] ^= 1;
        let mut bundle = c.enclave.bundle(other, &c.nonces.latest, 1, c.now);
        bundle.boot_config_digest = Some(hex::encode(c.digest)); // the sidecar lies
        expect_failed(
            &c.run(&bundle, &mut ReportState::default()),
            Reason::AttestationFailed,
            "binding mismatch",
        );
        let mut swapped = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        if let Some(a) = swapped.attestation.as_mut() {
            a.serving_ca_pem = SimulatedNsm::new().expect("n").root_pem().to_owned();
        }
        expect_failed(
            &c.run(&swapped, &mut ReportState::default()),
            Reason::AttestationFailed,
            "binding mismatch",
        );
    }

    #[test]
    fn a_forged_report_is_refused() {
        let c = verify_case();
        let mut bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        let forger = ReportSigner::generate();
        bundle.report = Some(forger.sign(&c.enclave.report(1, &hex::encode(c.digest), c.now)));
        expect_failed(
            &c.run(&bundle, &mut ReportState::default()),
            Reason::ReportSignatureInvalid,
            "does not verify against the attested key",
        );
    }

    #[test]
    fn an_altered_report_is_refused_but_the_attestation_summary_is_kept() {
        let c = verify_case();
        let mut bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        let mut unhealthy = c.enclave.report(1, &hex::encode(c.digest), c.now);
        unhealthy.components[1].healthy = false;
        let signed = c.enclave.signer.sign(&unhealthy);
        if let Some(r) = bundle.report.as_mut() {
            // The healthy bytes with the unhealthy signature: altered in transit.
            r.signature = signed.signature;
        }
        let outcome = c.run(&bundle, &mut ReportState::default());
        expect_failed(&outcome, Reason::ReportSignatureInvalid, "does not verify");
        let Outcome::Failed { attestation, .. } = outcome else {
            unreachable!()
        };
        assert!(attestation.is_some());
    }

    #[test]
    fn stale_and_replayed_reports() {
        let c = verify_case();
        let mut reports = ReportState::default();
        let fresh = c.enclave.bundle(c.digest, &c.nonces.latest, 5, c.now);
        assert!(matches!(c.run(&fresh, &mut reports), Outcome::Verified(_)));
        // Re-reading the same report is fine.
        assert!(matches!(c.run(&fresh, &mut reports), Outcome::Verified(_)));
        // An older one is a replay.
        let mut older = fresh.clone();
        older.report = Some(c.enclave.signer.sign(&c.enclave.report(
            4,
            &hex::encode(c.digest),
            c.now,
        )));
        expect_failed(
            &c.run(&older, &mut reports),
            Reason::ReportStale,
            "not after the last",
        );
        // An old one is stale.
        let mut stale = fresh.clone();
        stale.report = Some(c.enclave.signer.sign(&c.enclave.report(
            6,
            &hex::encode(c.digest),
            c.now - 60_000,
        )));
        expect_failed(&c.run(&stale, &mut reports), Reason::ReportStale, "ms old");
    }

    #[test]
    fn pending_while_rolling_or_before_evidence() {
        let c = verify_case();
        let mut bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        bundle.boot_config_digest = Some("ab".repeat(32));
        assert!(matches!(
            c.run(&bundle, &mut ReportState::default()),
            Outcome::Pending(m) if m.contains("waiting for")
        ));
        let empty = EvidenceBundle::default();
        assert!(matches!(
            c.run(&empty, &mut ReportState::default()),
            Outcome::Pending(_)
        ));
        let mut no_report = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        no_report.report = None;
        assert!(matches!(
            c.run(&no_report, &mut ReportState::default()),
            Outcome::Pending(m) if m.contains("first signed report")
        ));
    }
}
