//! Health reports, signed inside the enclave and checked by every reader outside it.
//!
//! A [`SignedReport`] carries the report's JSON bytes exactly as signed, so no reader has to
//! re-serialize anything to check a signature. The signature is ECDSA P-384 with SHA-384 over
//! `"nautilus-report/v1\0" || report bytes`, in the fixed 96-byte `r || s` form; the key is the
//! agent's ephemeral key, whose SubjectPublicKeyInfo DER the attestation document carries as
//! `public_key`.

use p384::ecdsa::signature::{Signer as _, Verifier as _};
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use p384::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
use serde::{Deserialize, Serialize};

/// Largest report accepted, in bytes of JSON.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// Domain separation prefix of report signatures.
const REPORT_DOMAIN: &[u8] = b"nautilus-report/v1\0";
/// Most components a report may list.
const MAX_COMPONENTS: usize = 16;

/// Why a report was refused. The relay or a replay, never the enclave, is the usual suspect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The report exceeds [`MAX_REPORT_BYTES`].
    #[error("report of {len} bytes exceeds the {MAX_REPORT_BYTES}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The attested public key is not a P-384 SubjectPublicKeyInfo.
    #[error("attested public key is not a P-384 public key: {0}")]
    PublicKey(String),
    /// The signature does not verify against the attested key.
    #[error("report signature does not verify against the attested key")]
    BadSignature,
    /// The signed bytes are not a report.
    #[error("signed report is malformed: {0}")]
    Malformed(String),
    /// The report belongs to another boot configuration.
    #[error("report is for boot config {found}, expected {expected}")]
    WrongConfig {
        /// Digest in the report.
        found: String,
        /// Digest the reader expects.
        expected: String,
    },
    /// The sequence number did not increase: a replay or a reordering.
    #[error("report sequence {found} is not after the last accepted {last}")]
    Replayed {
        /// Sequence in the report.
        found: u64,
        /// Last accepted sequence.
        last: u64,
    },
    /// The report is older than the freshness window.
    #[error("report is {age_ms} ms old, the limit is {max_age_ms} ms")]
    Stale {
        /// Its age.
        age_ms: u64,
        /// The limit.
        max_age_ms: u64,
    },
    /// The report is dated in the future beyond the allowed skew.
    #[error("report is dated {ahead_ms} ms in the future")]
    FromFuture {
        /// How far ahead.
        ahead_ms: u64,
    },
}

/// A control-plane component the agent probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// kube-apiserver: `/livez` and `/readyz`.
    ApiServer,
    /// kube-scheduler: `:10259/healthz`.
    Scheduler,
    /// kube-controller-manager: `:10257/healthz`.
    ControllerManager,
}

impl Component {
    /// Every component, in probe order.
    pub const ALL: [Self; 3] = [Self::ApiServer, Self::Scheduler, Self::ControllerManager];

    /// The name used in reports and in the resource's status.
    pub fn name(self) -> &'static str {
        match self {
            Self::ApiServer => "api-server",
            Self::Scheduler => "scheduler",
            Self::ControllerManager => "controller-manager",
        }
    }
}

/// The result of one component's probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComponentReport {
    /// Which component.
    pub component: Component,
    /// Whether every probe of it passed.
    pub healthy: bool,
    /// When it was probed (Unix milliseconds, enclave clock).
    pub checked_unix_ms: u64,
    /// How long the probe took.
    pub latency_ms: Option<u32>,
    /// Why it is unhealthy (a status code, a connection error), if it is.
    pub message: Option<String>,
}

/// The control-plane process as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessState {
    /// Whether the process is running now.
    pub running: bool,
    /// Its process id, while running.
    pub pid: Option<u32>,
    /// How many times the supervisor restarted it.
    pub restarts: u32,
    /// When the current (or last) run started (Unix milliseconds).
    pub started_unix_ms: Option<u64>,
    /// How the last run ended (`exit status: 1`, `signal: 9`), if one ended.
    pub last_exit: Option<String>,
    /// True once the components were not all healthy within the startup timeout of a start.
    pub startup_timed_out: bool,
}

/// One health report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    /// Increases by one with every report of this boot.
    pub sequence: u64,
    /// When the report was made (Unix milliseconds, enclave clock).
    pub time_unix_ms: u64,
    /// Hex SHA-256 of the boot configuration the agent runs ([`super::EnclaveConfig::digest`]).
    pub boot_config_digest: String,
    /// Per-component probe results.
    pub components: Vec<ComponentReport>,
    /// The control-plane process.
    pub control_plane: ProcessState,
    /// Sealed state, when the configuration has `state`: absent otherwise, so reports of
    /// configurations without it are what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateReport>,
    /// What the agent refused or deferred on the paths anyone can reach, since its boot;
    /// absent while every count is zero (so reports of agents without it still parse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetCounters>,
}

/// Longest [`StateReport::last_error`], in bytes.
pub const MAX_STATE_ERROR_BYTES: usize = 512;

/// What the enclave restored at its start and the last snapshot it sealed: signed, so the
/// operator can show a rollback (an older snapshot than the last one sealed) and a stale backup.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateReport {
    /// The snapshot restored before the control plane started; absent when none was offered
    /// and the enclave started an empty cluster.
    pub restored: Option<SnapshotRef>,
    /// The newest snapshot sealed and handed to the host: until this enclave seals its first,
    /// the one it restored (the newest the host holds of this state, as far as the enclave
    /// knows), so a restart does not blank the backup's status.
    pub last_snapshot: Option<SnapshotRef>,
    /// Why the last snapshot attempt failed, if the last attempt failed (one line, at most
    /// [`MAX_STATE_ERROR_BYTES`]).
    pub last_error: Option<String>,
}

/// One sealed snapshot, as its header names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotRef {
    /// Sequence number: one more than the snapshot before it, across enclave restarts.
    pub sequence: u64,
    /// When it was taken: the moment etcd began its consistent copy, which holds every write
    /// committed before it (Unix milliseconds, enclave clock).
    pub taken_unix_ms: u64,
    /// UID of the NautilusMaster it was sealed for.
    #[serde(rename = "resourceUID")]
    pub resource_uid: String,
    /// Size of the sealed snapshot in bytes.
    pub bytes: u64,
}

/// The agent's budget counters since its boot, carried in the signed [`Report`] because the
/// agent has no metrics endpoint of its own. Each count is absent while zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetCounters {
    /// Users' challenges answered with a document.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub challenges_answered: u64,
    /// Users' challenges dropped over the agent's own challenge rate (a relay that ignores
    /// the sidecar's budget).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub challenges_refused: u64,
    /// Nonce refreshes attested (the operator's re-attestation, and a reconnecting link's).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nonce_refreshes: u64,
    /// Nonce refreshes that arrived over the refresh rate: attested later, and only the
    /// latest of those waiting.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nonce_refreshes_deferred: u64,
    /// Stake lookups that went to the full node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stake_lookups: u64,
    /// Stake lookups of addresses not in the caches refused over the lookup rate ("try
    /// again"), so never sent to the full node.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stake_lookups_refused: u64,
    /// Reviews answered from the negative cache (an address below every tier, recently read).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stake_negative_hits: u64,
}

impl BudgetCounters {
    /// Whether every count is zero (the report then leaves the field out).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Report {
    /// The probe result of `component`, if the report has one.
    pub fn component(&self, component: Component) -> Option<&ComponentReport> {
        self.components.iter().find(|c| c.component == component)
    }

    /// Whether every component is listed and healthy.
    pub fn all_healthy(&self) -> bool {
        Component::ALL
            .iter()
            .all(|&c| self.component(c).is_some_and(|r| r.healthy))
    }
}

/// A report's signed bytes and their signature, as relayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedReport {
    /// The report's JSON, exactly as signed.
    #[serde(with = "super::b64")]
    pub report: Vec<u8>,
    /// ECDSA P-384 signature, 96 bytes `r || s`.
    #[serde(with = "super::b64")]
    pub signature: Vec<u8>,
}

impl SignedReport {
    /// Parse the report without checking anything: for display by parties that then verify.
    pub fn unverified_report(&self) -> Result<Report, ReportError> {
        if self.report.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge {
                len: self.report.len(),
            });
        }
        let report: Report = serde_json::from_slice(&self.report)
            .map_err(|err| ReportError::Malformed(err.to_string()))?;
        if report.components.len() > MAX_COMPONENTS {
            return Err(ReportError::Malformed(format!(
                "{} components, at most {MAX_COMPONENTS}",
                report.components.len()
            )));
        }
        Ok(report)
    }
}

/// The agent's ephemeral report-signing key. Never leaves the enclave.
pub struct ReportSigner {
    key: SigningKey,
}

impl std::fmt::Debug for ReportSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportSigner")
            .field("public_key", &hex::encode(self.public_key_der()))
            .finish_non_exhaustive()
    }
}

impl ReportSigner {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        Self {
            key: SigningKey::random(&mut rand_core::OsRng),
        }
    }

    /// The public key as SubjectPublicKeyInfo DER: what goes in the attestation's `public_key`.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key
            .verifying_key()
            .to_public_key_der()
            .map(|doc| doc.as_bytes().to_vec())
            .expect("a P-384 public key always encodes as SubjectPublicKeyInfo")
    }

    /// Serialize and sign a report.
    pub fn sign(&self, report: &Report) -> SignedReport {
        let bytes = serde_json::to_vec(report)
            .expect("Report holds only strings, integers, booleans and lists");
        let signature: Signature = self.key.sign(&signed_message(&bytes));
        SignedReport {
            report: bytes,
            signature: signature.to_bytes().to_vec(),
        }
    }
}

fn signed_message(report: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(REPORT_DOMAIN.len() + report.len());
    message.extend_from_slice(REPORT_DOMAIN);
    message.extend_from_slice(report);
    message
}

/// Checks reports of one boot: signature by the attested key, boot config, strictly
/// increasing sequence, freshness.
#[derive(Debug, Clone)]
pub struct ReportVerifier {
    key: VerifyingKey,
    boot_config_digest: String,
    max_age_ms: u64,
    max_skew_ms: u64,
    last_sequence: Option<u64>,
}

impl ReportVerifier {
    /// A verifier for reports signed by the key in an attestation's `public_key`.
    pub fn new(
        public_key_der: &[u8],
        boot_config_digest: impl Into<String>,
        max_age_ms: u64,
    ) -> Result<Self, ReportError> {
        let key = VerifyingKey::from_public_key_der(public_key_der)
            .map_err(|err| ReportError::PublicKey(err.to_string()))?;
        Ok(Self {
            key,
            boot_config_digest: boot_config_digest.into(),
            max_age_ms,
            max_skew_ms: 5_000,
            last_sequence: None,
        })
    }

    /// Allow reports dated up to `max_skew_ms` ahead of the reader's clock (default 5 s).
    pub fn with_max_skew_ms(mut self, max_skew_ms: u64) -> Self {
        self.max_skew_ms = max_skew_ms;
        self
    }

    /// Accept only reports after `sequence` (for a reader that saw it before a restart).
    pub fn with_last_sequence(mut self, sequence: u64) -> Self {
        self.last_sequence = Some(sequence);
        self
    }

    /// The last accepted sequence number.
    pub fn last_sequence(&self) -> Option<u64> {
        self.last_sequence
    }

    /// Check a report at `now_ms` and, if it passes, remember its sequence.
    pub fn verify(&mut self, signed: &SignedReport, now_ms: u64) -> Result<Report, ReportError> {
        let report = self.check(signed, now_ms)?;
        self.last_sequence = Some(report.sequence);
        Ok(report)
    }

    /// Check a report at `now_ms` without remembering it (a re-read of the same report passes).
    pub fn check(&self, signed: &SignedReport, now_ms: u64) -> Result<Report, ReportError> {
        if signed.report.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge {
                len: signed.report.len(),
            });
        }
        let signature =
            Signature::from_slice(&signed.signature).map_err(|_| ReportError::BadSignature)?;
        self.key
            .verify(&signed_message(&signed.report), &signature)
            .map_err(|_| ReportError::BadSignature)?;
        let report = signed.unverified_report()?;
        if report.boot_config_digest != self.boot_config_digest {
            return Err(ReportError::WrongConfig {
                found: report.boot_config_digest,
                expected: self.boot_config_digest.clone(),
            });
        }
        if let Some(last) = self.last_sequence
            && report.sequence <= last
        {
            return Err(ReportError::Replayed {
                found: report.sequence,
                last,
            });
        }
        if report.time_unix_ms > now_ms {
            let ahead_ms = report.time_unix_ms - now_ms;
            if ahead_ms > self.max_skew_ms {
                return Err(ReportError::FromFuture { ahead_ms });
            }
        } else {
            let age_ms = now_ms - report.time_unix_ms;
            if age_ms > self.max_age_ms {
                return Err(ReportError::Stale {
                    age_ms,
                    max_age_ms: self.max_age_ms,
                });
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_000_000_000;

    fn report(sequence: u64) -> Report {
        Report {
            sequence,
            time_unix_ms: NOW,
            boot_config_digest: "ab".repeat(32),
            components: Component::ALL
                .iter()
                .map(|&component| ComponentReport {
                    component,
                    healthy: true,
                    checked_unix_ms: NOW,
                    latency_ms: Some(3),
                    message: None,
                })
                .collect(),
            control_plane: ProcessState {
                running: true,
                pid: Some(42),
                ..ProcessState::default()
            },
            state: None,
            budget: None,
        }
    }

    #[test]
    fn budget_counters_are_absent_when_empty_and_older_reports_still_parse() {
        let plain = report(1);
        let json = serde_json::to_string(&plain).expect("json");
        assert!(!json.contains("budget"), "{json}");
        // A report of an agent without counters parses as one without any.
        let parsed: Report = serde_json::from_str(&json).expect("parses");
        assert_eq!(parsed, plain);
        let mut counted = report(2);
        counted.budget = Some(BudgetCounters {
            challenges_refused: 3,
            stake_lookups_refused: 5,
            ..BudgetCounters::default()
        });
        let json = serde_json::to_string(&counted).expect("json");
        assert!(
            json.ends_with(r#""budget":{"challengesRefused":3,"stakeLookupsRefused":5}}"#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<Report>(&json).expect("parses"),
            counted
        );
        assert!(BudgetCounters::default().is_empty());
        assert!(
            serde_json::from_str::<BudgetCounters>(r#"{"challengesRefused":1,"other":2}"#).is_err()
        );
    }

    fn verifier(signer: &ReportSigner) -> ReportVerifier {
        ReportVerifier::new(&signer.public_key_der(), "ab".repeat(32), 30_000).expect("key")
    }

    #[test]
    fn a_signed_report_verifies_and_is_all_healthy() {
        let signer = ReportSigner::generate();
        let signed = signer.sign(&report(1));
        assert_eq!(signed.signature.len(), 96);
        let got = verifier(&signer).verify(&signed, NOW + 10).expect("valid");
        assert!(got.all_healthy());
        assert_eq!(got, report(1));
    }

    #[test]
    fn altered_bytes_another_key_and_bad_signatures_are_refused() {
        let signer = ReportSigner::generate();
        let mut v = verifier(&signer);
        let signed = signer.sign(&report(1));

        let mut altered = signed.clone();
        let text = String::from_utf8(altered.report.clone()).expect("utf8");
        altered.report = text
            .replace("\"healthy\":true", "\"healthy\":false")
            .into_bytes();
        assert!(matches!(
            v.check(&altered, NOW),
            Err(ReportError::BadSignature)
        ));

        let other = ReportSigner::generate().sign(&report(1));
        assert!(matches!(
            v.check(&other, NOW),
            Err(ReportError::BadSignature)
        ));

        let mut short = signed.clone();
        short.signature.truncate(10);
        assert!(matches!(
            v.check(&short, NOW),
            Err(ReportError::BadSignature)
        ));

        v.verify(&signed, NOW).expect("the original still verifies");
    }

    #[test]
    fn replays_stale_future_and_foreign_config_reports_are_refused() {
        let signer = ReportSigner::generate();
        let mut v = verifier(&signer);
        v.verify(&signer.sign(&report(5)), NOW).expect("first");
        assert!(matches!(
            v.verify(&signer.sign(&report(5)), NOW),
            Err(ReportError::Replayed { found: 5, last: 5 })
        ));
        assert!(matches!(
            v.verify(&signer.sign(&report(4)), NOW),
            Err(ReportError::Replayed { .. })
        ));
        assert!(matches!(
            v.verify(&signer.sign(&report(6)), NOW + 30_001),
            Err(ReportError::Stale { .. })
        ));
        assert!(matches!(
            v.verify(&signer.sign(&report(6)), NOW - 5_001),
            Err(ReportError::FromFuture { .. })
        ));
        let mut foreign = report(7);
        foreign.boot_config_digest = "cd".repeat(32);
        assert!(matches!(
            v.verify(&signer.sign(&foreign), NOW),
            Err(ReportError::WrongConfig { .. })
        ));
        assert_eq!(v.last_sequence(), Some(5));
        v.verify(&signer.sign(&report(6)), NOW)
            .expect("next in order");
    }

    #[test]
    fn a_garbage_public_key_is_an_error() {
        assert!(matches!(
            ReportVerifier::new(b"not a key", "", 1),
            Err(ReportError::PublicKey(_))
        ));
    }
}
