//! Sealed state as the resource shows it: the `StateRestored` and `BackupHealthy` conditions and
//! `status.state`, from the spec, the verified (signed) report and the sidecar's relayed
//! refusal. Pure: time is a parameter.
//!
//! Only a verified report moves these conditions to `True`: what the enclave restored and the
//! last snapshot it sealed are claims of the enclave, signed with its attested key. A refusal
//! to restore is relayed unsigned (there is no report key before a boot), so it can only keep a
//! condition from being `True`, which a host can do anyway by withholding the snapshots.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nautilus_crds::conditions::{Reason, types};
use nautilus_crds::{NautilusMaster, StateSpec, StateStatus};
use nautilus_protocol::wire::{EvidenceBundle, RefusalKind, Report, SnapshotRef};

use crate::conditions::{Observation, Status};
use crate::verify::{Outcome, time_of};

/// How many backup intervals may pass without a snapshot before `BackupHealthy` turns `False`.
const STALE_AFTER_INTERVALS: u64 = 2;

/// The state conditions and `status.state` of one reconcile. Without `spec.state` both are
/// empty, and [`crate::controller`] removes state conditions a previous spec left.
pub fn observe(
    nm: &NautilusMaster,
    outcome: &Outcome,
    bundle: Option<&EvidenceBundle>,
    now_ms: u64,
) -> (Vec<Observation>, Option<StateStatus>) {
    let Some(spec) = &nm.spec.state else {
        return (Vec::new(), None);
    };
    let previous = nm.status.as_ref().and_then(|s| s.state.clone());
    if let Some(refusal) = refusal(bundle) {
        return (vec![refusal], previous);
    }
    match outcome {
        Outcome::Verified(verified) => {
            let observations = from_report(spec, &verified.report, now_ms);
            let status = verified
                .report
                .state
                .as_ref()
                .map(|state| StateStatus {
                    restored_sequence: state.restored.as_ref().map(|r| r.sequence),
                    restored_taken_at: state.restored.as_ref().map(|r| time_of(r.taken_unix_ms)),
                    restored_from_uid: state.restored.as_ref().map(|r| r.resource_uid.clone()),
                    last_snapshot_sequence: state.last_snapshot.as_ref().map(|s| s.sequence),
                    last_snapshot_time: state
                        .last_snapshot
                        .as_ref()
                        .map(|s| time_of(s.taken_unix_ms)),
                    last_snapshot_bytes: state.last_snapshot.as_ref().map(|s| s.bytes),
                })
                .or(previous);
            (observations, status)
        }
        // Nothing signed to go by: the conditions keep what the last verified report said.
        Outcome::Pending(_) | Outcome::Failed { .. } => (Vec::new(), previous),
    }
}

/// `StateRestored=False` when the agent refused to restore (relayed by the sidecar).
fn refusal(bundle: Option<&EvidenceBundle>) -> Option<Observation> {
    let bundle = bundle?;
    let reason = bundle.boot_refused.as_deref()?;
    let word = match bundle.boot_refused_kind? {
        RefusalKind::Config => return None,
        RefusalKind::SnapshotRejected => Reason::SnapshotRejected,
        RefusalKind::KeyRefused => Reason::KeyRefused,
    };
    Some(Observation::new(
        types::STATE_RESTORED,
        Status::False,
        word,
        format!("nothing was started: {reason}"),
    ))
}

fn describe(snapshot: &SnapshotRef) -> String {
    format!(
        "snapshot {} of {} taken {} ({} bytes)",
        snapshot.sequence,
        snapshot.resource_uid,
        time_text(&time_of(snapshot.taken_unix_ms)),
        snapshot.bytes
    )
}

fn time_text(time: &Time) -> String {
    time.0.to_string()
}

fn from_report(spec: &StateSpec, report: &Report, now_ms: u64) -> Vec<Observation> {
    let Some(state) = &report.state else {
        // The configuration asks for sealed state and the enclave's signed report says nothing
        // of it: an agent that does not keep state. Never `True`.
        return vec![
            Observation::new(
                types::STATE_RESTORED,
                Status::Unknown,
                Reason::Pending,
                "the enclave's report says nothing of sealed state",
            ),
            Observation::new(
                types::BACKUP_HEALTHY,
                Status::Unknown,
                Reason::Pending,
                "the enclave's report says nothing of sealed state",
            ),
        ];
    };
    let restored = match &state.restored {
        Some(snapshot) => Observation::new(
            types::STATE_RESTORED,
            Status::True,
            Reason::Restored,
            format!("restored {}", describe(snapshot)),
        ),
        None => Observation::new(
            types::STATE_RESTORED,
            Status::True,
            Reason::NoSnapshot,
            "no snapshot was offered: the enclave started an empty cluster (expected on the \
             first start only)",
        ),
    };
    let interval_ms = u64::from(spec.backup_interval_seconds) * 1000;
    let window_ms = interval_ms.saturating_mul(STALE_AFTER_INTERVALS);
    let backup = match (&state.last_snapshot, &state.last_error) {
        (_, Some(error)) => Observation::new(
            types::BACKUP_HEALTHY,
            Status::False,
            Reason::SnapshotStale,
            format!("the last snapshot failed: {error}"),
        ),
        (Some(last), None) if now_ms.saturating_sub(last.taken_unix_ms) <= window_ms => {
            Observation::new(
                types::BACKUP_HEALTHY,
                Status::True,
                Reason::SnapshotCurrent,
                format!("sealed {}", describe(last)),
            )
        }
        (Some(last), None) => Observation::new(
            types::BACKUP_HEALTHY,
            Status::False,
            Reason::SnapshotStale,
            format!(
                "the newest is {}, older than {} backup intervals",
                describe(last),
                STALE_AFTER_INTERVALS
            ),
        ),
        (None, None) => {
            let started = report.control_plane.started_unix_ms.unwrap_or(now_ms);
            if now_ms.saturating_sub(started) <= window_ms {
                Observation::new(
                    types::BACKUP_HEALTHY,
                    Status::Unknown,
                    Reason::Pending,
                    "no snapshot sealed yet since the enclave started",
                )
            } else {
                Observation::new(
                    types::BACKUP_HEALTHY,
                    Status::False,
                    Reason::SnapshotStale,
                    format!(
                        "no snapshot sealed in {} backup intervals since the enclave started",
                        STALE_AFTER_INTERVALS
                    ),
                )
            }
        }
    };
    vec![restored, backup]
}

#[cfg(test)]
mod tests {
    use super::*;
    use nautilus_crds::{KmsKeySpec, StateDeletionPolicy, StateStorageSpec};
    use nautilus_protocol::wire::{ProcessState, StateReport};

    const NOW: u64 = 1_800_000_000_000;
    const UID: &str = "0b6c9a52-5c4e-4a7e-9d1e-5d6f8a1e2b3c";

    fn spec() -> StateSpec {
        StateSpec {
            kms: KmsKeySpec {
                key_id: "alias/nautilus".into(),
                region: "eu-west-1".into(),
                endpoint: None,
            },
            backup_interval_seconds: 60,
            retain: 5,
            deletion_policy: StateDeletionPolicy::Retain,
            ca_generation: 0,
            restore_from_uids: Vec::new(),
            accepted_measurements: Vec::new(),
            storage: StateStorageSpec::default(),
        }
    }

    fn snapshot(sequence: u64, taken: u64) -> SnapshotRef {
        SnapshotRef {
            sequence,
            taken_unix_ms: taken,
            resource_uid: UID.into(),
            bytes: 4096,
        }
    }

    fn report(state: Option<StateReport>, started: u64) -> Report {
        Report {
            sequence: 1,
            time_unix_ms: NOW,
            boot_config_digest: "ab".repeat(32),
            components: Vec::new(),
            control_plane: ProcessState {
                running: true,
                started_unix_ms: Some(started),
                ..ProcessState::default()
            },
            state,
        }
    }

    fn verdicts(observations: &[Observation]) -> Vec<(&'static str, Status, Reason)> {
        observations
            .iter()
            .map(|o| (o.type_, o.status, o.reason))
            .collect()
    }

    #[test]
    fn a_restore_and_a_fresh_snapshot_are_both_true() {
        let state = StateReport {
            restored: Some(snapshot(7, NOW - 600_000)),
            last_snapshot: Some(snapshot(8, NOW - 30_000)),
            last_error: None,
        };
        let seen = from_report(&spec(), &report(Some(state), NOW - 40_000), NOW);
        assert_eq!(
            verdicts(&seen),
            [
                (types::STATE_RESTORED, Status::True, Reason::Restored),
                (types::BACKUP_HEALTHY, Status::True, Reason::SnapshotCurrent),
            ]
        );
        assert!(
            seen[0].message.contains("snapshot 7"),
            "{}",
            seen[0].message
        );
    }

    #[test]
    fn an_empty_start_says_so_and_backups_get_two_intervals_before_they_are_stale() {
        let fresh = StateReport::default();
        let young = from_report(&spec(), &report(Some(fresh.clone()), NOW - 100_000), NOW);
        assert_eq!(
            verdicts(&young),
            [
                (types::STATE_RESTORED, Status::True, Reason::NoSnapshot),
                (types::BACKUP_HEALTHY, Status::Unknown, Reason::Pending),
            ]
        );
        let old = from_report(&spec(), &report(Some(fresh), NOW - 121_000), NOW);
        assert_eq!(
            verdicts(&old)[1],
            (types::BACKUP_HEALTHY, Status::False, Reason::SnapshotStale)
        );
    }

    #[test]
    fn an_old_snapshot_or_a_failed_one_is_stale() {
        let old = StateReport {
            restored: None,
            last_snapshot: Some(snapshot(3, NOW - 121_000)),
            last_error: None,
        };
        assert_eq!(
            verdicts(&from_report(&spec(), &report(Some(old), 0), NOW))[1],
            (types::BACKUP_HEALTHY, Status::False, Reason::SnapshotStale)
        );
        let failed = StateReport {
            restored: None,
            last_snapshot: Some(snapshot(3, NOW - 1_000)),
            last_error: Some("etcd snapshot: deadline exceeded".into()),
        };
        let seen = from_report(&spec(), &report(Some(failed), 0), NOW);
        assert_eq!(
            verdicts(&seen)[1],
            (types::BACKUP_HEALTHY, Status::False, Reason::SnapshotStale)
        );
        assert!(seen[1].message.contains("deadline exceeded"));
    }

    #[test]
    fn a_report_without_state_is_never_true() {
        let seen = from_report(&spec(), &report(None, 0), NOW);
        assert!(seen.iter().all(|o| o.status == Status::Unknown), "{seen:?}");
    }

    #[test]
    fn a_relayed_refusal_names_its_kind_and_a_config_refusal_is_not_ours() {
        let mut bundle = EvidenceBundle {
            boot_config_digest: None,
            attestation: None,
            report: None,
            enclave: Default::default(),
            boot_refused: Some("snapshot 4: authentication tag mismatch".into()),
            boot_refused_kind: Some(RefusalKind::SnapshotRejected),
        };
        let seen = refusal(Some(&bundle)).expect("a refusal");
        assert_eq!(
            (seen.type_, seen.status, seen.reason),
            (
                types::STATE_RESTORED,
                Status::False,
                Reason::SnapshotRejected
            )
        );
        bundle.boot_refused_kind = Some(RefusalKind::KeyRefused);
        assert_eq!(
            refusal(Some(&bundle)).map(|o| o.reason),
            Some(Reason::KeyRefused)
        );
        bundle.boot_refused_kind = None;
        assert_eq!(refusal(Some(&bundle)), None);
    }
}
