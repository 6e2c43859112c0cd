//! The latest evidence relayed by the agent, its verification, and the readiness it implies.
//!
//! The sidecar is not trusted by anyone: the operator verifies the attestation document's
//! chain, policy and binding, and every report's signature, itself. The sidecar still checks
//! each report against the key in the latest attestation document (decoded without chain
//! verification, [`nautilus_protocol::attestation::decode_unverified`]) so that its own
//! `/readyz` never says ready on evidence that cannot verify.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nautilus_protocol::attestation::decode_unverified;
use nautilus_protocol::bounded::LogLimit;
use nautilus_protocol::wire::{
    AttestationEvidence, BootRefused, Component, EnclaveInfo, EvidenceBundle, RefusalKind, Report,
    ReportError, ReportVerifier, SignedReport, check_nonce,
};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

pub use nautilus_protocol::wire::MAX_NONCE_BYTES;

/// Longest wait of one `GET /report?after=…` for the evidence to change: under the HTTP
/// listener's idle timeout (60 s by default), which would otherwise cut the wait.
pub const MAX_REPORT_WAIT: Duration = Duration::from_secs(30);
/// `GET /report?after=…` requests waiting at once; more are answered at once. The operator
/// keeps one waiting per sidecar (two while a replica hands over), so this only bounds what
/// anyone else who reaches the port can hold open.
pub const MAX_REPORT_WAITERS: usize = 8;

/// Why a nonce refresh could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NonceError {
    /// The control link is down.
    #[error("no link to the agent")]
    NoLink,
    /// Too many refreshes are waiting.
    #[error("too many nonce refreshes pending")]
    Busy,
    /// The nonce is empty or longer than [`MAX_NONCE_BYTES`].
    #[error("nonce must be 1 to {MAX_NONCE_BYTES} bytes, got {0}")]
    Size(usize),
}

/// The metric label of a report rejection.
pub fn reject_reason(err: &ReportError) -> &'static str {
    match err {
        ReportError::TooLarge { .. } => "too_large",
        ReportError::PublicKey(_) => "public_key",
        ReportError::BadSignature => "bad_signature",
        ReportError::Malformed(_) => "malformed",
        ReportError::WrongConfig { .. } => "wrong_config",
        ReportError::Replayed { .. } => "replayed",
        ReportError::Stale { .. } => "stale",
        ReportError::FromFuture { .. } => "from_future",
        _ => "other",
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    // Before 1970 the clock is wrong; 0 makes every report look future-dated: not ready.
    nautilus_protocol::attestation::now_unix_millis().unwrap_or(0)
}

/// Why the latest attestation gives no report key: a metric label and a one-line reason.
#[derive(Debug, Clone)]
struct KeyProblem {
    label: &'static str,
    reason: String,
}

#[derive(Debug)]
struct State {
    attestation: Option<AttestationEvidence>,
    attested_key: Option<Vec<u8>>,
    verifier: Option<ReportVerifier>,
    key_problem: Option<KeyProblem>,
    report: Option<SignedReport>,
    verdict: Option<Result<Report, String>>,
    link_up: bool,
    enclave: EnclaveInfo,
    boot_refused: Option<String>,
    boot_refused_kind: RefusalKind,
}

/// Evidence shared by the link (which writes it) and the HTTP API (which reads it).
#[derive(Debug)]
pub struct Evidence {
    boot_config_digest: String,
    max_age_ms: u64,
    metrics: Arc<Metrics>,
    nonces: mpsc::Sender<Vec<u8>>,
    /// Rejected reports are counted one by one but logged once per interval.
    rejections: LogLimit,
    state: Mutex<State>,
    /// Bumped (under the state lock) by every change to what [`Evidence::bundle`] serves.
    revision: watch::Sender<u64>,
    waiters: Semaphore,
}

impl Evidence {
    /// Evidence for a boot configuration with digest `boot_config_digest`, reports fresh for
    /// `max_age_ms`. Returns the receiving end of nonce refreshes, for the link.
    pub fn new(
        boot_config_digest: String,
        max_age_ms: u64,
        metrics: Arc<Metrics>,
    ) -> (Self, mpsc::Receiver<Vec<u8>>) {
        let (nonces, rx) = mpsc::channel(8);
        let evidence = Self {
            boot_config_digest,
            max_age_ms,
            metrics,
            nonces,
            rejections: LogLimit::default(),
            state: Mutex::new(State {
                attestation: None,
                attested_key: None,
                verifier: None,
                key_problem: None,
                report: None,
                verdict: None,
                link_up: false,
                enclave: EnclaveInfo::default(),
                boot_refused: None,
                boot_refused_kind: RefusalKind::Config,
            }),
            revision: watch::Sender::new(1),
            waiters: Semaphore::new(MAX_REPORT_WAITERS),
        };
        (evidence, rx)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Note a change to what `/report` serves; called with the state locked, so a reader of
    /// [`Evidence::revision_and_bundle`] sees a revision and the bundle it names.
    fn changed(&self, _locked: &MutexGuard<'_, State>) {
        self.revision.send_modify(|r| *r = r.wrapping_add(1));
    }

    /// The current revision and the bundle it names.
    pub fn revision_and_bundle(&self) -> (u64, EvidenceBundle) {
        let state = self.lock();
        (*self.revision.borrow(), self.bundle_of(&state))
    }

    /// Wait until the revision is no longer `seen`, at most `wait` (capped at
    /// [`MAX_REPORT_WAIT`]). Returns at once when it already differs, and when
    /// [`MAX_REPORT_WAITERS`] are already waiting (the caller paces its own requests).
    pub async fn changed_since(&self, seen: u64, wait: Duration) {
        let mut rx = self.revision.subscribe();
        if *rx.borrow_and_update() != seen {
            return;
        }
        let Ok(_permit) = self.waiters.try_acquire() else {
            self.metrics.report_waits_refused.inc();
            return;
        };
        let _ = tokio::time::timeout(
            wait.min(MAX_REPORT_WAIT),
            rx.wait_for(|revision| *revision != seen),
        )
        .await;
    }

    /// The metrics this evidence counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The report freshness limit.
    pub fn max_age_ms(&self) -> u64 {
        self.max_age_ms
    }

    /// Record whether the control link is up.
    pub fn set_link_up(&self, up: bool) {
        self.metrics.link_up.set(i64::from(up));
        self.lock().link_up = up;
    }

    /// Whether the control link is up.
    pub fn link_up(&self) -> bool {
        self.lock().link_up
    }

    /// Record the launcher's view of the enclave.
    pub fn set_enclave(&self, info: EnclaveInfo) {
        let mut state = self.lock();
        if state.enclave != info {
            state.enclave = info;
            self.changed(&state);
        }
    }

    /// The launcher's view of the enclave.
    pub fn enclave(&self) -> EnclaveInfo {
        self.lock().enclave.clone()
    }

    /// Record that the boot configuration was refused, and why. A refusal of another
    /// configuration than this sidecar's is not ours and is logged only.
    pub fn on_boot_refused(&self, refused: BootRefused) {
        if refused.config_digest != self.boot_config_digest {
            tracing::warn!(digest = %refused.config_digest, "a refusal of another configuration; ignored");
            return;
        }
        tracing::warn!(reason = %refused.reason, "the agent refused the boot configuration");
        let mut state = self.lock();
        state.boot_refused = Some(refused.reason);
        state.boot_refused_kind = refused.kind;
        self.changed(&state);
    }

    /// Ask the agent for a fresh attestation carrying `nonce`.
    pub fn request_nonce(&self, nonce: Vec<u8>) -> Result<(), NonceError> {
        check_nonce(&nonce).map_err(|e| NonceError::Size(e.0))?;
        if !self.link_up() {
            return Err(NonceError::NoLink);
        }
        self.nonces.try_send(nonce).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => NonceError::Busy,
            mpsc::error::TrySendError::Closed(_) => NonceError::NoLink,
        })
    }

    /// Keep new attestation evidence and the report key it carries.
    pub fn on_attestation(&self, evidence: AttestationEvidence) {
        self.metrics.attestations_received.inc();
        let key = decode_unverified(&evidence.document)
            .map_err(|e| KeyProblem {
                label: "undecodable_attestation",
                reason: format!("attestation document does not decode: {e}"),
            })
            .and_then(|doc| {
                doc.public_key.ok_or_else(|| KeyProblem {
                    label: "no_public_key",
                    reason: "attestation document has no public_key".to_owned(),
                })
            });
        let mut state = self.lock();
        // A boot refused for its key (retried) that now attested is no longer refused.
        if state.boot_refused_kind == RefusalKind::KeyRefused {
            state.boot_refused = None;
            state.boot_refused_kind = RefusalKind::Config;
        }
        state.attestation = Some(evidence);
        match key {
            Ok(key) if state.attested_key.as_ref() == Some(&key) && state.verifier.is_some() => {
                // Same agent boot, new nonce: keep the sequence we have seen.
                debug!("attestation refreshed, same report key");
            }
            Ok(key) => match ReportVerifier::new(&key, &self.boot_config_digest, self.max_age_ms) {
                Ok(verifier) => {
                    info!("attestation received, report key changed");
                    state.verifier = Some(verifier);
                    state.attested_key = Some(key);
                    state.key_problem = None;
                }
                Err(e) => {
                    warn!(error = %e, "attested public key is unusable");
                    state.verifier = None;
                    state.attested_key = None;
                    state.key_problem = Some(KeyProblem {
                        label: reject_reason(&e),
                        reason: e.to_string(),
                    });
                }
            },
            Err(problem) => {
                warn!(problem = %problem.reason, "attestation unusable for report verification");
                state.verifier = None;
                state.attested_key = None;
                state.key_problem = Some(problem);
            }
        }
        self.changed(&state);
    }

    /// Verify and keep a relayed report (verified at `now_ms`). The report is kept even when
    /// it fails: `/report` shows what was relayed, `/readyz` what it is worth.
    pub fn on_report(&self, signed: SignedReport, now_ms: u64) {
        self.metrics.reports_received.inc();
        let mut state = self.lock();
        let verdict = match state.verifier.as_mut() {
            Some(verifier) => verifier.verify(&signed, now_ms).map_err(|e| {
                self.metrics.reject(reject_reason(&e));
                e.to_string()
            }),
            None => Err(match &state.key_problem {
                Some(problem) => {
                    self.metrics.reject(problem.label);
                    problem.reason.clone()
                }
                None => {
                    self.metrics.reject("no_attestation");
                    "no attestation received yet".to_owned()
                }
            }),
        };
        match &verdict {
            Ok(report) => debug!(sequence = report.sequence, "report verified"),
            // A peer can send rejected reports as fast as it likes: the metric counts each,
            // the log says it once per interval.
            Err(reason) => {
                if let Some(suppressed) = self.rejections.check() {
                    warn!(%reason, suppressed, "report rejected");
                }
            }
        }
        state.report = Some(signed);
        state.verdict = Some(verdict);
        self.changed(&state);
    }

    /// `Ok` when the latest report verified, is at most `max_age_ms` old at `now_ms`, and
    /// says every component is healthy; otherwise a one-line reason.
    pub fn readiness(&self, now_ms: u64) -> Result<(), String> {
        let state = self.lock();
        if let Some(reason) = &state.boot_refused {
            return Err(format!("boot configuration refused: {}", one_line(reason)));
        }
        if !state.enclave.running {
            return Err(match &state.enclave.last_exit {
                Some(exit) => format!("enclave is not running ({exit})"),
                None => "enclave is not running".to_owned(),
            });
        }
        let report = match &state.verdict {
            None => return Err("no report received yet".to_owned()),
            Some(Err(reason)) => return Err(format!("latest report rejected: {reason}")),
            Some(Ok(report)) => report,
        };
        let age_ms = now_ms.saturating_sub(report.time_unix_ms);
        if age_ms > self.max_age_ms {
            return Err(format!(
                "latest report is {age_ms} ms old, the limit is {} ms",
                self.max_age_ms
            ));
        }
        if !report.all_healthy() {
            let unhealthy: Vec<String> = Component::ALL
                .iter()
                .filter_map(|&c| match report.component(c) {
                    None => Some(format!("{} (not reported)", c.name())),
                    Some(r) if !r.healthy => Some(match &r.message {
                        Some(m) => format!("{} ({})", c.name(), one_line(m)),
                        None => c.name().to_owned(),
                    }),
                    Some(_) => None,
                })
                .collect();
            return Err(format!("not healthy: {}", unhealthy.join(", ")));
        }
        Ok(())
    }

    /// The evidence as `/report` serves it.
    pub fn bundle(&self) -> EvidenceBundle {
        self.bundle_of(&self.lock())
    }

    fn bundle_of(&self, state: &State) -> EvidenceBundle {
        EvidenceBundle {
            boot_config_digest: Some(self.boot_config_digest.clone()),
            attestation: state.attestation.clone(),
            report: state.report.clone(),
            enclave: state.enclave.clone(),
            boot_refused: state.boot_refused.clone(),
            boot_refused_kind: (state.boot_refused.is_some()
                && !state.boot_refused_kind.is_config())
            .then_some(state.boot_refused_kind),
        }
    }
}

fn one_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use nautilus_protocol::nsm::{Nsm as _, SimulatedNsm};
    use nautilus_protocol::wire::{ComponentReport, ProcessState, ReportSigner};

    const DIGEST: &str = "abababababababababababababababababababababababababababababababab";

    fn report(sequence: u64, time: u64, healthy: bool) -> Report {
        Report {
            sequence,
            time_unix_ms: time,
            boot_config_digest: DIGEST.to_owned(),
            components: Component::ALL
                .iter()
                .map(|&component| ComponentReport {
                    component,
                    healthy: healthy || component != Component::Scheduler,
                    checked_unix_ms: time,
                    latency_ms: Some(1),
                    message: (!healthy && component == Component::Scheduler)
                        .then(|| "connection refused\nretrying".to_owned()),
                })
                .collect(),
            control_plane: ProcessState {
                running: true,
                ..ProcessState::default()
            },
            state: None,
            budget: None,
        }
    }

    fn attestation(nsm: &SimulatedNsm, signer: &ReportSigner) -> AttestationEvidence {
        AttestationEvidence {
            document: nsm
                .attest(None, Some(b"n"), Some(&signer.public_key_der()))
                .expect("attest"),
            serving_ca_pem: String::new(),
            simulated_root_pem: None,
        }
    }

    fn evidence() -> Evidence {
        let (evidence, _rx) = Evidence::new(DIGEST.into(), 3_000, Arc::default());
        evidence.set_enclave(EnclaveInfo {
            running: true,
            ..EnclaveInfo::default()
        });
        evidence
    }

    /// Every change to what `/report` serves bumps the revision; a wait on the current one
    /// ends when the next change comes, a wait on an older one at once, and a wait with
    /// nothing changing after its time (on a paused clock).
    #[tokio::test(start_paused = true)]
    async fn a_wait_on_the_revision_ends_with_the_next_change() {
        let signer = ReportSigner::generate();
        let ev = Arc::new(evidence());
        let (first, bundle) = ev.revision_and_bundle();
        assert_eq!(bundle, ev.bundle());
        // The same enclave information again is no change.
        ev.set_enclave(bundle.enclave.clone());
        assert_eq!(ev.revision_and_bundle().0, first);

        let start = tokio::time::Instant::now();
        ev.changed_since(first, Duration::from_secs(20)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(20), "nothing changed");

        let waiting = tokio::spawn({
            let ev = Arc::clone(&ev);
            async move { ev.changed_since(first, Duration::from_secs(20)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        ev.on_report(signer.sign(&report(1, 1_000, true)), 1_000);
        waiting.await.expect("wait");
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(21),
            "woken by the report"
        );
        let (second, bundle) = ev.revision_and_bundle();
        assert_ne!(second, first);
        assert!(bundle.report.is_some());

        ev.changed_since(first, Duration::from_secs(20)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(21),
            "an older revision: at once"
        );
        // Waits are capped.
        ev.changed_since(second, Duration::from_secs(3_600)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(21) + MAX_REPORT_WAIT);
    }

    /// Beyond [`MAX_REPORT_WAITERS`] a wait is answered at once and counted.
    #[tokio::test(start_paused = true)]
    async fn waiters_are_bounded() {
        let ev = Arc::new(evidence());
        let (revision, _) = ev.revision_and_bundle();
        let waiting: Vec<_> = (0..MAX_REPORT_WAITERS)
            .map(|_| {
                let ev = Arc::clone(&ev);
                tokio::spawn(async move { ev.changed_since(revision, MAX_REPORT_WAIT).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let start = tokio::time::Instant::now();
        ev.changed_since(revision, MAX_REPORT_WAIT).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(ev.metrics().report_waits_refused.get(), 1);
        ev.on_boot_refused(BootRefused {
            config_digest: DIGEST.into(),
            reason: "no".into(),
            kind: RefusalKind::Config,
        });
        for w in waiting {
            w.await.expect("woken");
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn readiness_follows_the_latest_report() {
        let nsm = SimulatedNsm::new().expect("nsm");
        let signer = ReportSigner::generate();
        let ev = evidence();
        assert_eq!(ev.readiness(1_000), Err("no report received yet".into()));
        ev.on_report(signer.sign(&report(1, 1_000, true)), 1_000);
        assert!(
            ev.readiness(1_000)
                .expect_err("no key")
                .contains("no attestation")
        );

        ev.on_attestation(attestation(&nsm, &signer));
        ev.on_report(signer.sign(&report(2, 1_000, true)), 1_000);
        assert_eq!(ev.readiness(1_500), Ok(()));
        assert!(ev.readiness(4_001).expect_err("stale").contains("ms old"));

        ev.on_report(signer.sign(&report(3, 2_000, false)), 2_000);
        assert_eq!(
            ev.readiness(2_000),
            Err("not healthy: scheduler (connection refused retrying)".into())
        );

        // A refreshed attestation with the same key keeps the sequence: a replay still fails.
        ev.on_attestation(attestation(&nsm, &signer));
        ev.on_report(signer.sign(&report(3, 2_000, true)), 2_000);
        assert!(
            ev.readiness(2_000)
                .expect_err("replay")
                .contains("sequence")
        );

        ev.set_enclave(EnclaveInfo {
            running: false,
            last_exit: Some("exit status: 1".into()),
            ..EnclaveInfo::default()
        });
        assert_eq!(
            ev.readiness(2_000),
            Err("enclave is not running (exit status: 1)".into())
        );
        let text = ev.metrics().encode();
        assert!(text.contains("reason=\"replayed\"} 1"), "{text}");
        assert!(text.contains("reason=\"no_attestation\"} 1"), "{text}");
    }

    #[test]
    fn an_altered_report_is_caught_and_kept_as_relayed() {
        let nsm = SimulatedNsm::new().expect("nsm");
        let signer = ReportSigner::generate();
        let ev = evidence();
        ev.on_attestation(attestation(&nsm, &signer));
        let signed = signer.sign(&report(1, 1_000, true));
        // What a tampering host on the link would deliver: one byte of the signed bytes flipped.
        let mut altered = signed.clone();
        let middle = altered.report.len() / 2;
        altered.report[middle] ^= 0x01;
        ev.on_report(altered.clone(), 1_000);
        assert!(
            ev.readiness(1_000)
                .expect_err("tampered")
                .contains("signature")
        );
        let relayed = ev.bundle().report.expect("kept");
        assert_eq!(
            relayed, altered,
            "served as relayed, for the operator to judge"
        );
        assert_ne!(relayed.report, signed.report);
    }

    #[test]
    fn a_garbage_document_disables_verification() {
        let signer = ReportSigner::generate();
        let ev = evidence();
        ev.on_attestation(AttestationEvidence {
            document: b"garbage".to_vec(),
            serving_ca_pem: String::new(),
            simulated_root_pem: None,
        });
        ev.on_report(signer.sign(&report(1, 1_000, true)), 1_000);
        assert!(
            ev.readiness(1_000)
                .expect_err("no key")
                .contains("does not decode")
        );
        // Counted under what the log says, not as a missing attestation.
        let text = ev.metrics().encode();
        assert!(
            text.contains("reports_rejected_total{reason=\"undecodable_attestation\"} 1"),
            "{text}"
        );
        assert!(!text.contains("no_attestation"), "{text}");
    }

    #[test]
    fn nonces_need_a_link_and_a_sane_size() {
        let (ev, mut rx) = Evidence::new(DIGEST.into(), 1, Arc::default());
        assert_eq!(ev.request_nonce(vec![1]), Err(NonceError::NoLink));
        ev.set_link_up(true);
        assert_eq!(ev.request_nonce(Vec::new()), Err(NonceError::Size(0)));
        assert_eq!(ev.request_nonce(vec![0; 513]), Err(NonceError::Size(513)));
        ev.request_nonce(vec![7; 512]).expect("queued");
        assert_eq!(rx.try_recv().expect("sent"), vec![7; 512]);
    }
}
