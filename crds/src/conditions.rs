//! Condition types, reasons and phases of a `NautilusMaster`.
//!
//! Conditions follow `metav1.Condition`: the `type` is one of [`types`], `status` is
//! `True`/`False`/`Unknown`, the `reason` is a CamelCase value from [`reasons`], and
//! `lastTransitionTime` changes only when `status` changes. Readers (the Argo CD health check,
//! e2e tests, users' scripts) may match on these strings; they are part of the API.
//!
//! The operator decides on [`Reason`], never on the strings: [`Reason::as_str`] is the one place
//! a reason becomes the text status carries, [`Reason::is_terminal`] the one list of terminal
//! ones, and [`reasons_documentation`] the text the CRD's `status.conditions` gives users.

/// Condition `type` values, in the order the operator evaluates them.
pub mod types {
    /// The enclave was launched on a Nitro node and its sidecar is reachable.
    pub const ENCLAVE_RUNNING: &str = "EnclaveRunning";
    /// The enclave's attestation document verified against the AWS Nitro root, the spec's PCRs,
    /// the operator's nonce and the boot configuration, and the latest report is signed by the
    /// attested key.
    pub const ATTESTED: &str = "Attested";
    /// The control plane's API server answers `/livez` and `/readyz` inside the enclave.
    pub const API_SERVER_READY: &str = "APIServerReady";
    /// The scheduler answers `/healthz` inside the enclave.
    pub const SCHEDULER_READY: &str = "SchedulerReady";
    /// The controller manager answers `/healthz` inside the enclave.
    pub const CONTROLLER_MANAGER_READY: &str = "ControllerManagerReady";
    /// Every other condition is `True`: the control plane is attested and serving.
    pub const READY: &str = "Ready";

    /// Only with `spec.state`: the enclave restored its sealed state (or found none to restore
    /// and started empty) before it started the control plane.
    pub const STATE_RESTORED: &str = "StateRestored";
    /// Only with `spec.state`: the enclave sealed a snapshot within the last two backup
    /// intervals, and the host stored it.
    pub const BACKUP_HEALTHY: &str = "BackupHealthy";

    /// The condition types of sealed state, maintained only when `spec.state` is set. `Ready`
    /// does not wait for them: a control plane serves while its backups fail, and says so.
    pub const STATE: [&str; 2] = [STATE_RESTORED, BACKUP_HEALTHY];

    /// Every condition type the operator maintains.
    pub const ALL: [&str; 6] = [
        ENCLAVE_RUNNING,
        ATTESTED,
        API_SERVER_READY,
        SCHEDULER_READY,
        CONTROLLER_MANAGER_READY,
        READY,
    ];
}

/// Condition `reason` values (CamelCase, as `metav1.Condition` requires).
pub mod reasons {
    /// Nothing has been observed yet for this condition.
    pub const PENDING: &str = "Pending";
    /// The enclave pod is scheduled but the enclave is not running yet.
    pub const LAUNCHING: &str = "Launching";
    /// The enclave is running.
    pub const RUNNING: &str = "Running";
    /// The enclave or its pod failed; the message says how.
    pub const ENCLAVE_FAILED: &str = "EnclaveFailed";
    /// The agent refused the boot configuration (a value the schema admits but the enclave
    /// cannot run); the message gives the agent's reason. It is refused again until the spec
    /// changes.
    pub const CONFIG_REFUSED: &str = "ConfigRefused";
    /// The attestation document and the latest report verified.
    pub const VERIFIED: &str = "Verified";
    /// The attestation verified, but it was simulated and the spec allows that (development only).
    pub const SIMULATED_ATTESTATION: &str = "SimulatedAttestation";
    /// The attestation document failed verification; the message names the check.
    pub const ATTESTATION_FAILED: &str = "AttestationFailed";
    /// A report's signature did not verify against the attested key.
    pub const REPORT_SIGNATURE_INVALID: &str = "ReportSignatureInvalid";
    /// The latest report is older than allowed.
    pub const REPORT_STALE: &str = "ReportStale";
    /// The component answered its health probe.
    pub const HEALTHY: &str = "Healthy";
    /// The component did not answer its health probe, or answered not-ready.
    pub const UNHEALTHY: &str = "Unhealthy";
    /// The control plane did not become healthy within `spec.health.startupTimeoutSeconds`.
    pub const START_TIMEOUT: &str = "StartTimeout";
    /// The enclave restored a sealed snapshot; the message gives its sequence, time and
    /// resource.
    pub const RESTORED: &str = "Restored";
    /// No snapshot was offered, so the enclave started an empty cluster. On a first start this
    /// is expected; after one, it means the host withheld the snapshots.
    pub const NO_SNAPSHOT: &str = "NoSnapshot";
    /// The offered snapshot failed a check (integrity, resource, measurements) and nothing was
    /// started from it; the message says which.
    pub const SNAPSHOT_REJECTED: &str = "SnapshotRejected";
    /// KMS refused to release the data key to this enclave (its key policy does not allow the
    /// attested measurements, or the credentials may not call it).
    pub const KEY_REFUSED: &str = "KeyRefused";
    /// A snapshot was sealed within the last two backup intervals.
    pub const SNAPSHOT_CURRENT: &str = "SnapshotCurrent";
    /// The newest snapshot is older than two backup intervals, or the last one failed; the
    /// message says why.
    pub const SNAPSHOT_STALE: &str = "SnapshotStale";
    /// Every condition is `True`.
    pub const ALL_READY: &str = "AllReady";
    /// At least one condition is not `True`; the message names it.
    pub const NOT_READY: &str = "NotReady";
    /// The enclave's attestation is simulated and the spec allows that, but this operator runs
    /// enclaves in pods and was not started with `--allow-simulated-attestation`: the cluster
    /// admin's policy refuses a control plane no hardware vouches for. Nothing is published.
    pub const SIMULATED_ATTESTATION_NOT_ALLOWED: &str = "SimulatedAttestationNotAllowed";
}

/// Reasons after which the resource will not become ready without a change by a person
/// (a new spec, a new image): tools such as Argo CD report these as Degraded, not Progressing.
/// Kept as a literal for the Argo CD health check's test, which compares its Lua list with this
/// one; [`Reason::is_terminal`] must agree (a test says so).
pub const TERMINAL_REASONS: [&str; 8] = [
    reasons::SNAPSHOT_REJECTED,
    reasons::KEY_REFUSED,
    reasons::ATTESTATION_FAILED,
    reasons::REPORT_SIGNATURE_INVALID,
    reasons::START_TIMEOUT,
    reasons::ENCLAVE_FAILED,
    reasons::CONFIG_REFUSED,
    reasons::SIMULATED_ATTESTATION_NOT_ALLOWED,
];

/// A condition reason, as the operator decides on it. The strings are [`reasons`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// [`reasons::PENDING`].
    Pending,
    /// [`reasons::LAUNCHING`].
    Launching,
    /// [`reasons::RUNNING`].
    Running,
    /// [`reasons::ENCLAVE_FAILED`].
    EnclaveFailed,
    /// [`reasons::CONFIG_REFUSED`].
    ConfigRefused,
    /// [`reasons::VERIFIED`].
    Verified,
    /// [`reasons::SIMULATED_ATTESTATION`].
    SimulatedAttestation,
    /// [`reasons::SIMULATED_ATTESTATION_NOT_ALLOWED`].
    SimulatedAttestationNotAllowed,
    /// [`reasons::ATTESTATION_FAILED`].
    AttestationFailed,
    /// [`reasons::REPORT_SIGNATURE_INVALID`].
    ReportSignatureInvalid,
    /// [`reasons::REPORT_STALE`].
    ReportStale,
    /// [`reasons::HEALTHY`].
    Healthy,
    /// [`reasons::UNHEALTHY`].
    Unhealthy,
    /// [`reasons::START_TIMEOUT`].
    StartTimeout,
    /// [`reasons::ALL_READY`].
    AllReady,
    /// [`reasons::NOT_READY`].
    NotReady,
    /// [`reasons::RESTORED`].
    Restored,
    /// [`reasons::NO_SNAPSHOT`].
    NoSnapshot,
    /// [`reasons::SNAPSHOT_REJECTED`].
    SnapshotRejected,
    /// [`reasons::KEY_REFUSED`].
    KeyRefused,
    /// [`reasons::SNAPSHOT_CURRENT`].
    SnapshotCurrent,
    /// [`reasons::SNAPSHOT_STALE`].
    SnapshotStale,
}

impl Reason {
    /// Every reason, in the order the CRD documents them.
    pub const ALL: [Reason; 22] = [
        Reason::Pending,
        Reason::Launching,
        Reason::Running,
        Reason::EnclaveFailed,
        Reason::ConfigRefused,
        Reason::Verified,
        Reason::SimulatedAttestation,
        Reason::SimulatedAttestationNotAllowed,
        Reason::AttestationFailed,
        Reason::ReportSignatureInvalid,
        Reason::ReportStale,
        Reason::Healthy,
        Reason::Unhealthy,
        Reason::StartTimeout,
        Reason::AllReady,
        Reason::NotReady,
        Reason::Restored,
        Reason::NoSnapshot,
        Reason::SnapshotRejected,
        Reason::KeyRefused,
        Reason::SnapshotCurrent,
        Reason::SnapshotStale,
    ];

    /// The CamelCase string a condition carries: the only place a reason is rendered.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Pending => reasons::PENDING,
            Reason::Launching => reasons::LAUNCHING,
            Reason::Running => reasons::RUNNING,
            Reason::EnclaveFailed => reasons::ENCLAVE_FAILED,
            Reason::ConfigRefused => reasons::CONFIG_REFUSED,
            Reason::Verified => reasons::VERIFIED,
            Reason::SimulatedAttestation => reasons::SIMULATED_ATTESTATION,
            Reason::SimulatedAttestationNotAllowed => reasons::SIMULATED_ATTESTATION_NOT_ALLOWED,
            Reason::AttestationFailed => reasons::ATTESTATION_FAILED,
            Reason::ReportSignatureInvalid => reasons::REPORT_SIGNATURE_INVALID,
            Reason::ReportStale => reasons::REPORT_STALE,
            Reason::Healthy => reasons::HEALTHY,
            Reason::Unhealthy => reasons::UNHEALTHY,
            Reason::StartTimeout => reasons::START_TIMEOUT,
            Reason::AllReady => reasons::ALL_READY,
            Reason::NotReady => reasons::NOT_READY,
            Reason::Restored => reasons::RESTORED,
            Reason::NoSnapshot => reasons::NO_SNAPSHOT,
            Reason::SnapshotRejected => reasons::SNAPSHOT_REJECTED,
            Reason::KeyRefused => reasons::KEY_REFUSED,
            Reason::SnapshotCurrent => reasons::SNAPSHOT_CURRENT,
            Reason::SnapshotStale => reasons::SNAPSHOT_STALE,
        }
    }

    /// The reason a condition read back from status carries, if it is one of ours.
    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether the resource will not become ready without a change by a person: tools report
    /// it as Degraded, not Progressing.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            Reason::AttestationFailed
                | Reason::ReportSignatureInvalid
                | Reason::StartTimeout
                | Reason::EnclaveFailed
                | Reason::ConfigRefused
                | Reason::SimulatedAttestationNotAllowed
                | Reason::SnapshotRejected
                | Reason::KeyRefused
        )
    }

    /// Whether verification failed on evidence of the wrong enclave or of tampering, so that
    /// nothing attested may stay published (a stale report alone is no such evidence).
    pub const fn withdraws_trust(self) -> bool {
        matches!(
            self,
            Reason::AttestationFailed
                | Reason::ReportSignatureInvalid
                | Reason::SimulatedAttestationNotAllowed
        )
    }

    /// One sentence for users: what the reason means.
    pub const fn meaning(self) -> &'static str {
        match self {
            Reason::Pending => "nothing observed yet",
            Reason::Launching => "the enclave is starting",
            Reason::Running => "the enclave runs",
            Reason::EnclaveFailed => "the enclave or its pod failed",
            Reason::ConfigRefused => "the agent refused the boot configuration",
            Reason::Verified => "the attestation and the latest report verified",
            Reason::SimulatedAttestation => {
                "verified, but simulated, as the spec allows (development only)"
            }
            Reason::SimulatedAttestationNotAllowed => {
                "simulated attestation, which this operator was not started to allow"
            }
            Reason::AttestationFailed => "the attestation document failed verification",
            Reason::ReportSignatureInvalid => "a report's signature did not verify",
            Reason::ReportStale => "the latest report is too old, replayed or from the future",
            Reason::Healthy => "the component answered its probe",
            Reason::Unhealthy => "the component did not answer its probe, or not ready",
            Reason::StartTimeout => "not healthy within spec.health.startupTimeoutSeconds",
            Reason::AllReady => "every condition is True",
            Reason::NotReady => "a condition is not True; the message names it",
            Reason::Restored => "the enclave restored a sealed snapshot before it started",
            Reason::NoSnapshot => "no snapshot was offered; the enclave started an empty cluster",
            Reason::SnapshotRejected => {
                "the offered snapshot failed a check; nothing was started from it"
            }
            Reason::KeyRefused => "KMS would not release the data key to this enclave",
            Reason::SnapshotCurrent => "a snapshot was sealed within two backup intervals",
            Reason::SnapshotStale => "no snapshot within two backup intervals, or the last failed",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CRD's description of `status.conditions`: the types, then every [`Reason`] with its
/// meaning, terminal ones marked.
pub fn reasons_documentation() -> String {
    let reasons = Reason::ALL
        .iter()
        .map(|r| {
            let terminal = if r.is_terminal() { ", terminal" } else { "" };
            format!("`{}` ({}{terminal})", r.as_str(), r.meaning())
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "Latest observations: {}. Reasons: {reasons}. A terminal reason does not clear without \
         a change by a person (a new spec, a new image, another operator policy).",
        types::ALL
            .iter()
            .chain(types::STATE.iter())
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_renders_once_and_parses_back() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{r:?} renders like another reason");
            assert_eq!(Reason::parse(r.as_str()), Some(r));
            assert!(r.as_str().chars().all(|c| c.is_ascii_alphabetic()));
            assert!(r.as_str().starts_with(|c: char| c.is_ascii_uppercase()));
        }
        assert_eq!(Reason::parse("EnclaveStopping"), None);
    }

    #[test]
    fn the_terminal_list_is_the_enums() {
        let from_enum: Vec<&str> = Reason::ALL
            .into_iter()
            .filter(|r| r.is_terminal())
            .map(Reason::as_str)
            .collect();
        let mut listed = TERMINAL_REASONS.to_vec();
        let mut sorted = from_enum.clone();
        listed.sort_unstable();
        sorted.sort_unstable();
        assert_eq!(listed, sorted);
        // Withdrawing trust is terminal: nothing clears it but a person.
        assert!(
            Reason::ALL
                .into_iter()
                .filter(|r| r.withdraws_trust())
                .all(Reason::is_terminal)
        );
    }
}
