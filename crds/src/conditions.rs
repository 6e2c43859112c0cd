//! Condition types, reasons and phases of a `NautilusMaster`.
//!
//! Conditions follow `metav1.Condition`: the `type` is one of [`types`], `status` is
//! `True`/`False`/`Unknown`, the `reason` is a CamelCase value from [`reasons`], and
//! `lastTransitionTime` changes only when `status` changes. Readers (the Argo CD health check,
//! e2e tests, users' scripts) may match on these strings; they are part of the API.

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
}

/// Reasons after which the resource will not become ready without a change by a person
/// (a new spec, a new image): tools such as Argo CD report these as Degraded, not Progressing.
pub const TERMINAL_REASONS: [&str; 7] = [
    reasons::SNAPSHOT_REJECTED,
    reasons::KEY_REFUSED,
    reasons::ATTESTATION_FAILED,
    reasons::REPORT_SIGNATURE_INVALID,
    reasons::START_TIMEOUT,
    reasons::ENCLAVE_FAILED,
    reasons::CONFIG_REFUSED,
];
