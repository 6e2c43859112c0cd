//! What the operator observes of an enclave, and the conditions that follow.
//!
//! [`Observed`] is what the runtime sees of the workload (its [`EnclaveState`], where its
//! sidecar answers, placement, endpoint); [`observe`] turns that state, the sidecar's bundle and
//! the verification [`Outcome`] into condition observations, and [`component_health`] a verified
//! report into `status.components`. Pure.

use std::net::SocketAddr;

use nautilus_crds::conditions::{Reason, types};
use nautilus_crds::{ComponentHealth, EnclavePlacement, NautilusMaster};
use nautilus_protocol::wire::{Component, EvidenceBundle, RefusalKind, Report};

use crate::conditions::{Observation, Status};
use crate::verify::{Outcome, time_of};

/// What the operator sees of the enclave's workload, before verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnclaveState {
    /// No workload yet.
    Absent,
    /// The workload exists but the sidecar is not up (pod pending, process starting).
    Starting(String),
    /// The workload failed (pod failed, crash loop, process exited).
    Failed(String),
    /// The sidecar answered `/report`; the enclave runs if the bundle says so.
    SidecarUp {
        /// When the workload started (ms since the epoch), for the startup timeout.
        started_ms: Option<u64>,
    },
    /// The workload runs but the sidecar did not answer.
    Unreachable(String),
}

/// What the runtime sees of a resource's enclave workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The workload's state.
    pub state: EnclaveState,
    /// Where the sidecar's HTTP API answers, once it should.
    pub sidecar: Option<SocketAddr>,
    /// `status.placement` (the enclave ID and CID are added from the sidecar's report).
    pub placement: EnclavePlacement,
    /// `status.endpoint`.
    pub endpoint: String,
    /// The configuration digest (hex) the workload boots, where the runtime tracks it itself
    /// (the local runtime's process); `None` for a pod, whose StatefulSet carries it.
    pub config_digest: Option<String>,
}

/// The condition observations (all but `Ready`) for the enclave's state and the outcome.
pub fn observe(
    nm: &NautilusMaster,
    enclave: &EnclaveState,
    bundle: Option<&EvidenceBundle>,
    outcome: &Outcome,
    now_ms: u64,
) -> Vec<Observation> {
    let mut out = Vec::with_capacity(5);
    let (running, started_ms) = match enclave {
        EnclaveState::Absent => {
            out.push(Observation::new(
                types::ENCLAVE_RUNNING,
                Status::Unknown,
                Reason::Pending,
                "the enclave workload has not been created yet",
            ));
            (false, None)
        }
        EnclaveState::Starting(message) => {
            out.push(Observation::new(
                types::ENCLAVE_RUNNING,
                Status::False,
                Reason::Launching,
                message.clone(),
            ));
            (false, None)
        }
        EnclaveState::Failed(message) => {
            out.push(Observation::new(
                types::ENCLAVE_RUNNING,
                Status::False,
                Reason::EnclaveFailed,
                message.clone(),
            ));
            (false, None)
        }
        EnclaveState::Unreachable(message) => {
            out.push(Observation::new(
                types::ENCLAVE_RUNNING,
                Status::False,
                Reason::Launching,
                format!("the sidecar does not answer: {message}"),
            ));
            (false, None)
        }
        EnclaveState::SidecarUp { started_ms } => {
            let info = bundle.map(|b| b.enclave.clone()).unwrap_or_default();
            if let Some(reason) = bundle.and_then(|b| b.boot_refused.as_deref()) {
                // Relayed by the host and unsigned: it can only keep the resource from being
                // ready, which a host can do anyway.
                let (reason_word, what) = match bundle.and_then(|b| b.boot_refused_kind) {
                    None | Some(RefusalKind::Config) => {
                        (Reason::ConfigRefused, "the boot configuration")
                    }
                    Some(RefusalKind::SnapshotRejected) => {
                        (Reason::SnapshotRejected, "the offered snapshot")
                    }
                    Some(RefusalKind::KeyRefused) => {
                        (Reason::KeyRefused, "to boot without its data key")
                    }
                };
                out.push(Observation::new(
                    types::ENCLAVE_RUNNING,
                    Status::False,
                    reason_word,
                    format!("the agent refused {what}: {reason}"),
                ));
                (false, None)
            } else if info.running {
                let mut message = format!("enclave running ({} launcher", info.launcher);
                if let Some(id) = &info.enclave_id {
                    message.push_str(&format!(", id {id}"));
                }
                if let Some(cid) = info.enclave_cid {
                    message.push_str(&format!(", cid {cid}"));
                }
                message.push(')');
                out.push(Observation::new(
                    types::ENCLAVE_RUNNING,
                    Status::True,
                    Reason::Running,
                    message,
                ));
                (true, *started_ms)
            } else if let Some(exit) = &info.last_exit {
                out.push(Observation::new(
                    types::ENCLAVE_RUNNING,
                    Status::False,
                    Reason::EnclaveFailed,
                    format!("the enclave exited: {exit}"),
                ));
                (false, None)
            } else {
                out.push(Observation::new(
                    types::ENCLAVE_RUNNING,
                    Status::False,
                    Reason::Launching,
                    "the sidecar is up and launching the enclave",
                ));
                (false, None)
            }
        }
    };

    let component_types = [
        (Component::ApiServer, types::API_SERVER_READY),
        (Component::Scheduler, types::SCHEDULER_READY),
        (
            Component::ControllerManager,
            types::CONTROLLER_MANAGER_READY,
        ),
    ];
    if !running {
        out.push(Observation::new(
            types::ATTESTED,
            Status::Unknown,
            Reason::Pending,
            "the enclave is not running",
        ));
        for (_, type_) in component_types {
            out.push(Observation::new(
                type_,
                Status::Unknown,
                Reason::Pending,
                "the enclave is not running",
            ));
        }
        return out;
    }

    let startup_ms = u64::from(nm.spec.health.startup_timeout_seconds) * 1000;
    let timed_out = started_ms.is_some_and(|s| now_ms.saturating_sub(s) > startup_ms);
    match outcome {
        Outcome::Verified(v) => {
            let (reason, message) = if v.summary.simulated {
                (
                    Reason::SimulatedAttestation,
                    format!(
                        "SIMULATED attestation accepted because spec.attestation.allowSimulated \
                         is true: this is not hardware evidence (module {}, pcr0 {}…); reports \
                         signed by the attested key",
                        v.summary.module_id, v.summary.pcr0_prefix
                    ),
                )
            } else {
                (
                    Reason::Verified,
                    format!(
                        "document from {} verified against the AWS Nitro root, PCRs match the \
                         spec (pcr0 {}…){}; reports signed by the attested key",
                        v.summary.module_id,
                        v.summary.pcr0_prefix,
                        if v.summary.debug_mode {
                            ", DEBUG MODE allowed by the spec"
                        } else {
                            ""
                        }
                    ),
                )
            };
            out.push(Observation::new(
                types::ATTESTED,
                Status::True,
                reason,
                message,
            ));
            let cp_timed_out = v.report.control_plane.startup_timed_out;
            for (component, type_) in component_types {
                out.push(match v.report.component(component) {
                    Some(c) if c.healthy => Observation::new(
                        type_,
                        Status::True,
                        Reason::Healthy,
                        // No probe latency or report sequence here: they change at every
                        // probe, and a message that changes is a status write (the figures
                        // ride in status.components, written only with a visible change).
                        format!("{} is healthy", component.name()),
                    ),
                    Some(c) => {
                        let why = c.message.clone().unwrap_or_else(|| "unhealthy".into());
                        if cp_timed_out || timed_out {
                            Observation::new(
                                type_,
                                Status::False,
                                Reason::StartTimeout,
                                format!(
                                    "{} not healthy within {}s of starting: {why}",
                                    component.name(),
                                    nm.spec.health.startup_timeout_seconds
                                ),
                            )
                        } else {
                            Observation::new(
                                type_,
                                Status::False,
                                Reason::Unhealthy,
                                format!("{}: {why}", component.name()),
                            )
                        }
                    }
                    None => Observation::new(
                        type_,
                        Status::Unknown,
                        Reason::Pending,
                        format!("{} is not in the report yet", component.name()),
                    ),
                });
            }
        }
        Outcome::Failed {
            reason, message, ..
        } => {
            out.push(Observation::new(
                types::ATTESTED,
                Status::False,
                *reason,
                message.clone(),
            ));
            for (_, type_) in component_types {
                out.push(Observation::new(
                    type_,
                    Status::Unknown,
                    Reason::Pending,
                    "no trusted report: verification failed",
                ));
            }
        }
        Outcome::Pending(message) => {
            out.push(Observation::new(
                types::ATTESTED,
                Status::Unknown,
                Reason::Pending,
                message.clone(),
            ));
            for (_, type_) in component_types {
                out.push(if timed_out {
                    Observation::new(
                        type_,
                        Status::False,
                        Reason::StartTimeout,
                        format!(
                            "no verified report within {}s of the enclave starting",
                            nm.spec.health.startup_timeout_seconds
                        ),
                    )
                } else {
                    Observation::new(
                        type_,
                        Status::Unknown,
                        Reason::Pending,
                        "waiting for a verified report",
                    )
                });
            }
        }
    }
    out
}

/// `status.components` from a verified report.
pub fn component_health(report: &Report) -> Vec<ComponentHealth> {
    report
        .components
        .iter()
        .map(|c| ComponentHealth {
            name: c.component.name().to_owned(),
            healthy: c.healthy,
            last_probe_time: Some(time_of(c.checked_unix_ms)),
            latency_millis: c.latency_ms,
            message: c.message.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::verify_case;
    use crate::verify::ReportState;

    #[test]
    fn observations_for_enclave_states_and_startup_timeout() {
        let c = verify_case();
        let pending = Outcome::Pending("x".into());
        let obs = observe(&c.nm, &EnclaveState::Absent, None, &pending, c.now);
        assert_eq!(obs.len(), 5);
        assert!(obs.iter().all(|o| o.status == Status::Unknown));

        let obs = observe(
            &c.nm,
            &EnclaveState::Failed("pod failed".into()),
            None,
            &pending,
            c.now,
        );
        assert_eq!(
            (obs[0].status, obs[0].reason),
            (Status::False, Reason::EnclaveFailed)
        );

        let mut bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        let started = c.now - 121_000;
        let up = EnclaveState::SidecarUp {
            started_ms: Some(started),
        };
        let obs = observe(&c.nm, &up, Some(&bundle), &pending, c.now);
        assert_eq!(obs[0].status, Status::True);
        assert!(
            obs[2..]
                .iter()
                .all(|o| o.status == Status::False && o.reason == Reason::StartTimeout),
            "{obs:?}"
        );

        bundle.enclave.running = false;
        bundle.enclave.last_exit = Some("exit status: 1".into());
        let obs = observe(&c.nm, &up, Some(&bundle), &pending, c.now);
        assert_eq!(
            (obs[0].status, obs[0].reason),
            (Status::False, Reason::EnclaveFailed)
        );
        assert!(obs[0].message.contains("exit status: 1"));

        // A refused configuration: the agent's reason, terminal until the spec changes.
        bundle.enclave.running = true;
        bundle.boot_refused = Some("invalid stake type \"0x2::coin::Coin<>\"".into());
        let obs = observe(&c.nm, &up, Some(&bundle), &pending, c.now);
        assert_eq!(
            (obs[0].status, obs[0].reason),
            (Status::False, Reason::ConfigRefused)
        );
        assert!(obs[0].message.contains("invalid stake type"), "{obs:?}");
        assert!(obs[0].reason.is_terminal());
    }

    /// A Ready resource whose enclave keeps reporting the same health must observe the same
    /// conditions at every probe: a new sequence number, probe time or latency is not something
    /// a user sees change, and a changed message would be a status write per probe.
    #[test]
    fn steady_reports_observe_identical_conditions() {
        let c = verify_case();
        let up = EnclaveState::SidecarUp {
            started_ms: Some(c.now - 5_000),
        };
        let mut reports = ReportState::default();
        let first = c
            .enclave
            .bundle(c.digest, &c.nonces.latest, 1, c.now - 1_000);
        let outcome = c.run(&first, &mut reports);
        let before = observe(&c.nm, &up, Some(&first), &outcome, c.now);

        let mut next = c.enclave.report(2, &hex::encode(c.digest), c.now);
        for component in &mut next.components {
            component.latency_ms = Some(17);
        }
        let mut second = first.clone();
        second.report = Some(c.enclave.signer.sign(&next));
        let outcome = c.run(&second, &mut reports);
        assert!(matches!(outcome, Outcome::Verified(_)), "{outcome:?}");
        let after = observe(&c.nm, &up, Some(&second), &outcome, c.now);
        assert_eq!(before, after);
    }

    #[test]
    fn an_unhealthy_component_is_reported_with_its_message() {
        let c = verify_case();
        let mut bundle = c.enclave.bundle(c.digest, &c.nonces.latest, 1, c.now);
        let mut report = c.enclave.report(1, &hex::encode(c.digest), c.now);
        report.components[1].healthy = false;
        report.components[1].message = Some("connection refused".into());
        bundle.report = Some(c.enclave.signer.sign(&report));
        let outcome = c.run(&bundle, &mut ReportState::default());
        let up = EnclaveState::SidecarUp {
            started_ms: Some(c.now),
        };
        let obs = observe(&c.nm, &up, Some(&bundle), &outcome, c.now);
        let sched = obs
            .iter()
            .find(|o| o.type_ == types::SCHEDULER_READY)
            .expect("s");
        assert_eq!(
            (sched.status, sched.reason),
            (Status::False, Reason::Unhealthy)
        );
        assert!(sched.message.contains("connection refused"));
        let Outcome::Verified(v) = outcome else {
            panic!()
        };
        let health = component_health(&v.report);
        assert_eq!(health.len(), 3);
        assert_eq!(health[1].name, "scheduler");
        assert!(!health[1].healthy);
    }
}
