//! The attestation step of a plan ([`attest`]): from what the workload and its sidecar showed,
//! verify the evidence, decide whether to challenge the enclave with a fresh nonce, and for
//! either fate of that challenge the [`Steps`] that follow: whether to publish or withdraw the
//! kubeconfig, which status to write (none when nothing visible changed), which Events, and
//! when to requeue. Pure, like the rest of the plan.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use nautilus_crds::conditions::{Reason, types};
use nautilus_crds::{NautilusMaster, NautilusMasterStatus, SecretKeyReference};
use nautilus_protocol::wire::EvidenceBundle;

use super::RESYNC_WITHOUT_SIDECAR;
use super::attestation::{Attestation, Due};
use super::snapshot::Children;
use super::status::{StatusInput, build_status, status_changed, transitions};
use crate::conditions;
use crate::desired::{self, DesiredError, KUBECONFIG_KEY, Names, Stamped};
use crate::events::EventType;
use crate::observe::{self, Observed};
use crate::state;
use crate::verify::{self, Outcome};

/// What the attestation step of a plan sees.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// The resource, with its previous status.
    pub nm: &'a NautilusMaster,
    /// Its names.
    pub names: &'a Names,
    /// The children in the watch cache (`None` without one: the kubeconfig is then applied
    /// or deleted whatever it is).
    pub cached: Option<&'a Children>,
    /// The workload (its state is `Unreachable` when the sidecar's `/report` failed).
    pub workload: &'a Observed,
    /// What the sidecar served at `/report`.
    pub bundle: Option<&'a EvidenceBundle>,
    /// The digest of the boot configuration rendered now.
    pub digest: [u8; 32],
    /// Whether the workload is a pod (no sidecar then means nothing to probe until a watch
    /// event).
    pub pod_runtime: bool,
    /// Whether the operator accepts simulated attestation where the spec allows it
    /// ([`crate::runtime::EnclaveRuntime::allows_simulated_attestation`]).
    pub simulated_allowed: bool,
    /// Now, ms since the epoch.
    pub now_ms: u64,
    /// Now, for condition transition times.
    pub now: Time,
}

/// An Event to publish about the resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// `Normal` or `Warning`.
    pub type_: EventType,
    /// The reason (a condition's reason).
    pub reason: String,
    /// The text.
    pub note: String,
}

/// What becomes of the kubeconfig Secret.
#[derive(Clone, Debug, PartialEq)]
pub enum Kubeconfig {
    /// Nothing to do: it stays as it is (published or not).
    Keep,
    /// Apply it: the CA in it is the attested one.
    Publish(Box<Stamped<Secret>>),
    /// Delete it: the evidence shows the wrong enclave or tampering.
    Withdraw,
}

/// What the reconcile does after the challenge step.
#[derive(Clone, Debug, PartialEq)]
pub struct Steps {
    /// The verification result, as the metric counts it.
    pub verification: Reason,
    /// The kubeconfig Secret.
    pub kubeconfig: Kubeconfig,
    /// The status to apply; `None` when nothing a user sees changed.
    pub status: Option<NautilusMasterStatus>,
    /// Events, in order.
    pub events: Vec<Note>,
    /// When to reconcile again.
    pub requeue: Duration,
}

/// A challenge to send (`POST /attest`).
#[derive(Clone, Debug, PartialEq)]
pub struct Challenge {
    /// The sidecar to send it to.
    pub sidecar: SocketAddr,
    /// The fresh nonce.
    pub nonce: Vec<u8>,
    /// When it counts as issued (ms since the epoch): the reconcile's now.
    pub issued_ms: u64,
    /// The stale document (SHA-256 hex) it challenges once more, if that is why it is sent.
    pub rechallenges: Option<String>,
    /// The steps once the enclave has it.
    pub delivered: Steps,
}

/// The attestation part of a plan: the challenge, and what follows either way.
#[derive(Clone, Debug, PartialEq)]
pub struct Attest {
    /// Send this challenge first, then follow its [`Challenge::delivered`] steps if it went
    /// through.
    pub challenge: Option<Challenge>,
    /// The steps without a challenge, or when it could not be delivered.
    pub otherwise: Steps,
}

/// The message of a document answering an older challenge, once challenged again.
const RECHALLENGED: &str = "the enclave presented a document for an older challenge (it may have \
                            restarted); it was challenged again";

/// The attestation step of a plan, from `seen`. Verifies the bundle (updating the report memory
/// in `attestation`); `fresh_nonce` is the nonce of a challenge, if one is due. `attestation` is
/// only told about the challenge once it was delivered ([`Attestation::challenged`]).
pub fn attest(
    seen: &Observation<'_>,
    attestation: &mut Attestation,
    fresh_nonce: Vec<u8>,
) -> Result<Attest, DesiredError> {
    let nm = seen.nm;
    let outcome = match seen.bundle {
        Some(bundle) => {
            let (nonces, reports) = attestation.verification();
            verify::verify(
                &verify::Input {
                    nm,
                    bundle,
                    nonces,
                    config_digest: seen.digest,
                    now_ms: seen.now_ms,
                    simulated_allowed: seen.simulated_allowed,
                },
                reports,
            )
        }
        None => Outcome::Pending("no evidence from the sidecar yet".into()),
    };
    if matches!(outcome, Outcome::Verified(_)) {
        attestation.verified();
    }
    // After an operator restart, until the enclave answers this process's first challenge.
    let restarting = seen.bundle.is_some() && attestation.awaiting_first_answer(seen.now_ms);
    let refresh_ms = u64::from(nm.spec.attestation.refresh_interval_seconds) * 1000;
    let challenge = match (seen.workload.sidecar, seen.bundle) {
        (Some(sidecar), Some(bundle)) if bundle.attestation.is_some() => {
            match attestation.challenge_due(&outcome, seen.now_ms, refresh_ms) {
                Due::NotYet => None,
                Due::Challenge => Some((sidecar, None)),
                Due::Rechallenge(document) => Some((sidecar, Some(document))),
            }
        }
        _ => None,
    };
    let challenge = match challenge {
        Some((sidecar, rechallenges)) => {
            // A re-challenged document is pending the answer, not yet a failure.
            let delivered = match &rechallenges {
                Some(_) => steps(seen, &Outcome::Pending(RECHALLENGED.into()), true, true)?,
                None => steps(seen, &outcome, true, true)?,
            };
            Some(Challenge {
                sidecar,
                nonce: fresh_nonce,
                issued_ms: seen.now_ms,
                rechallenges,
                delivered,
            })
        }
        None => None,
    };
    Ok(Attest {
        challenge,
        otherwise: steps(seen, &outcome, false, restarting)?,
    })
}

/// The steps that follow `outcome`; `challenged`: a challenge was just delivered; `hold`: a
/// `Pending` outcome keeps a previous `Attested=True` verdict (a challenge was just delivered, or
/// this process awaits the answer to its first one).
fn steps(
    seen: &Observation<'_>,
    outcome: &Outcome,
    challenged: bool,
    hold: bool,
) -> Result<Steps, DesiredError> {
    let nm = seen.nm;
    let verification = match outcome {
        Outcome::Verified(v) if v.summary.simulated => Reason::SimulatedAttestation,
        Outcome::Verified(_) => Reason::Verified,
        Outcome::Failed { reason, .. } => *reason,
        Outcome::Pending(_) => Reason::Pending,
    };
    let mut requeue = if challenged {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(u64::from(nm.spec.health.probe_interval_seconds))
    };
    // Nothing to probe in the pod runtime (no sidecar up): every change that matters (the pod,
    // the children, the spec) arrives as a watch event, and no condition of a pod that is not
    // running depends on time; the requeue is only a safety net then.
    if seen.workload.sidecar.is_none() && seen.pod_runtime {
        requeue = requeue.max(RESYNC_WITHOUT_SIDECAR);
    }
    let previous = nm.status.clone().unwrap_or_default();

    // Just challenged an enclave whose current document answers a challenge this process never
    // issued (it restarted), or waiting for its answer: keep the previous verdict for the round
    // trip it takes to answer, instead of flapping Attested. Bounded: once the challenge's grace
    // has passed unanswered the outcome is a failure, not Pending, and is written. (Other
    // reconciles run meanwhile, triggered by the watches filling after a restart: holding only
    // in the reconcile that delivered the challenge let the next one, 55 ms later, write
    // Unknown.)
    let previously_attested = conditions::is_true(&previous.conditions, types::ATTESTED);
    if hold && previously_attested && matches!(outcome, Outcome::Pending(_)) {
        return Ok(Steps {
            verification,
            kubeconfig: Kubeconfig::Keep,
            status: None,
            events: Vec::new(),
            requeue,
        });
    }

    let published = || {
        Some(SecretKeyReference {
            name: seen.names.kubeconfig_secret.clone(),
            key: KUBECONFIG_KEY.into(),
        })
    };
    let cached_secret = seen.cached.map(|c| c.secret.as_deref());
    let (kubeconfig, reference) = match outcome {
        Outcome::Verified(v) => {
            let secret = Stamped::new(desired::kubeconfig_secret(
                nm,
                seen.names,
                &seen.workload.endpoint,
                &v.serving_ca_pem,
            )?)?;
            // Published with this hash already, as the watch cache shows.
            let kubeconfig = match cached_secret {
                Some(cached) if desired::applied_with(cached, &secret.hash) => Kubeconfig::Keep,
                _ => Kubeconfig::Publish(Box::new(secret)),
            };
            (kubeconfig, published())
        }
        // Evidence of the wrong enclave or of tampering: withdraw the kubeconfig (unless the
        // watch cache shows it gone). A stale report alone keeps it (the CA is still the
        // attested one; Ready says the rest).
        Outcome::Failed { reason, .. } if reason.withdraws_trust() => match cached_secret {
            Some(None) => (Kubeconfig::Keep, None),
            _ => (Kubeconfig::Withdraw, None),
        },
        Outcome::Failed { .. } | Outcome::Pending(_) => {
            (Kubeconfig::Keep, previous.kubeconfig_secret_ref.clone())
        }
    };
    let (state_observations, state) = state::observe(nm, outcome, seen.bundle, seen.now_ms);
    let mut observations =
        observe::observe(nm, &seen.workload.state, seen.bundle, outcome, seen.now_ms);
    observations.extend(state_observations);
    let status = build_status(
        nm,
        StatusInput {
            observations,
            state,
            outcome,
            placement: seen.workload.placement.clone(),
            bundle: seen.bundle,
            endpoint: seen.workload.endpoint.clone(),
            kubeconfig: reference,
            digest_hex: &hex::encode(seen.digest),
            now: seen.now.clone(),
        },
    );
    let events = transitions(&previous.conditions, &status.conditions)
        .into_iter()
        .map(|(type_, reason, note)| Note {
            type_,
            reason,
            note,
        })
        .collect();
    Ok(Steps {
        verification,
        kubeconfig,
        status: status_changed(&previous, &status).then_some(status),
        events,
        requeue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{FakeEnclave, mk_nm, mk_sim_nm};
    use crate::verify::{IssuedNonces, ReportState};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use k8s_openapi::jiff::Timestamp;
    use nautilus_crds::{ComponentHealth, EnclavePlacement, Phase};
    use pretty_assertions::assert_eq;
    use sha2::{Digest as _, Sha256};

    const PROBE: Duration = Duration::from_secs(5);
    const BOOT_NONCE: [u8; 32] = [9; 32];
    const FRESH: [u8; 32] = [5; 32];
    const GRACE_MS: u64 = 30_000;

    fn at(ms: u64) -> Time {
        Time(Timestamp::from_millisecond(i64::try_from(ms).expect("ms")).expect("time"))
    }

    /// Now: the simulated NSM stamps documents with the wall clock, which verification checks
    /// against.
    fn now_ms() -> u64 {
        nautilus_protocol::attestation::now_unix_millis().expect("clock")
    }

    fn condition(type_: &str, status: &str, reason: &str, message: &str, t: &Time) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(1),
            last_transition_time: t.clone(),
        }
    }

    fn note(type_: EventType, reason: &str, note: &str) -> Note {
        Note {
            type_,
            reason: reason.into(),
            note: note.into(),
        }
    }

    fn digest_of(nm: &NautilusMaster) -> [u8; 32] {
        desired::enclave_config(nm).expect("config").digest()
    }

    /// The attestation state of `nm`'s configuration, booted with [`BOOT_NONCE`] at `now_ms`.
    fn booted(nm: &NautilusMaster, now_ms: u64) -> Attestation {
        Attestation::boot(
            hex::encode(digest_of(nm)),
            BOOT_NONCE.to_vec(),
            now_ms,
            GRACE_MS,
        )
    }

    fn pod_placement() -> EnclavePlacement {
        EnclavePlacement {
            runtime: Some("pod".into()),
            ..EnclavePlacement::default()
        }
    }

    /// `demo`'s pod, running, its sidecar at 10.0.0.5.
    fn running() -> Observed {
        Observed {
            state: observe::EnclaveState::SidecarUp {
                started_ms: Some(now_ms()),
            },
            sidecar: Some(SocketAddr::from(([10, 0, 0, 5], 8080))),
            placement: EnclavePlacement {
                pod_name: Some("demo-enclave-0".into()),
                node_name: Some("nitro-1".into()),
                ..pod_placement()
            },
            endpoint: "https://demo.team-a.svc:6443".into(),
            config_digest: None,
        }
    }

    fn seen<'a>(
        nm: &'a NautilusMaster,
        workload: &'a Observed,
        bundle: Option<&'a EvidenceBundle>,
        now_ms: u64,
    ) -> Observation<'a> {
        Observation {
            nm,
            // Leaked: a test's names live as long as the test.
            names: Box::leak(Box::new(Names::of(nm).expect("names"))),
            cached: None,
            workload,
            bundle,
            digest: digest_of(nm),
            pod_runtime: true,
            simulated_allowed: true,
            now_ms,
            now: at(now_ms),
        }
    }

    /// No pod yet: the status says so, two Events, no challenge, the long resync; once that
    /// status is the previous one, the same observation plans nothing at all.
    #[test]
    fn a_pending_pod_gets_its_status_once_then_nothing() {
        let mut nm = mk_nm("demo");
        let now = now_ms();
        let t = at(now);
        let workload = Observed {
            state: observe::EnclaveState::Starting(
                "waiting for pod demo-enclave-0 to be created".into(),
            ),
            sidecar: None,
            placement: pod_placement(),
            endpoint: "https://demo.team-a.svc:6443".into(),
            config_digest: None,
        };
        let mut attestation = booted(&nm, now);
        let waiting = "waiting for pod demo-enclave-0 to be created";
        let not_running = "the enclave is not running";
        let not_ready = "not ready: EnclaveRunning=False (Launching), Attested=Unknown (Pending), \
                         APIServerReady=Unknown (Pending), SchedulerReady=Unknown (Pending), \
                         ControllerManagerReady=Unknown (Pending)";
        let status = NautilusMasterStatus {
            observed_generation: Some(1),
            conditions: vec![
                condition(types::ENCLAVE_RUNNING, "False", "Launching", waiting, &t),
                condition(types::ATTESTED, "Unknown", "Pending", not_running, &t),
                condition(
                    types::API_SERVER_READY,
                    "Unknown",
                    "Pending",
                    not_running,
                    &t,
                ),
                condition(
                    types::SCHEDULER_READY,
                    "Unknown",
                    "Pending",
                    not_running,
                    &t,
                ),
                condition(
                    types::CONTROLLER_MANAGER_READY,
                    "Unknown",
                    "Pending",
                    not_running,
                    &t,
                ),
                condition(types::READY, "False", "NotReady", not_ready, &t),
            ],
            phase: Some(Phase::Launching),
            attestation: None,
            components: Vec::new(),
            placement: Some(pod_placement()),
            endpoint: None,
            kubeconfig_secret_ref: None,
            boot_config_digest: Some(hex::encode(digest_of(&nm))),
            state: None,
        };
        // No challenge without a sidecar: the plan is its `otherwise` steps alone.
        let pending = |status, events| Attest {
            challenge: None,
            otherwise: Steps {
                verification: Reason::Pending,
                kubeconfig: Kubeconfig::Keep,
                status,
                events,
                requeue: RESYNC_WITHOUT_SIDECAR,
            },
        };
        let planned = attest(
            &seen(&nm, &workload, None, now),
            &mut attestation,
            FRESH.to_vec(),
        );
        assert_eq!(
            planned.expect("plan"),
            pending(
                Some(status.clone()),
                vec![
                    note(
                        EventType::Warning,
                        "Launching",
                        &format!("EnclaveRunning: (none) → False: {waiting}"),
                    ),
                    note(
                        EventType::Warning,
                        "NotReady",
                        &format!("Ready: (none) → False: {not_ready}"),
                    ),
                ],
            )
        );

        nm.status = Some(status);
        let later = now + 5_000;
        let planned = attest(
            &seen(&nm, &workload, None, later),
            &mut attestation,
            FRESH.to_vec(),
        );
        assert_eq!(planned.expect("plan"), pending(None, Vec::new()));
    }

    /// The summary verification gives `bundle` (checked in `verify`'s own tests).
    fn summary_of(
        nm: &NautilusMaster,
        bundle: &EvidenceBundle,
        nonces: &IssuedNonces,
        now: u64,
    ) -> nautilus_crds::AttestationSummary {
        let outcome = verify::verify(
            &verify::Input {
                nm,
                bundle,
                nonces,
                config_digest: digest_of(nm),
                now_ms: now,
                simulated_allowed: true,
            },
            &mut ReportState::default(),
        );
        match outcome {
            Outcome::Verified(v) => v.summary,
            Outcome::Failed { attestation, .. } => *attestation.expect("a summary"),
            other => panic!("{other:?}"),
        }
    }

    fn simulated_message(enclave: &FakeEnclave) -> String {
        format!(
            "SIMULATED attestation accepted because spec.attestation.allowSimulated is true: this \
             is not hardware evidence (module {}, pcr0 1010101010101010…); reports signed by the \
             attested key",
            enclave.nsm.module_id()
        )
    }

    /// A new process finds an attested enclave: the kubeconfig and a Ready status either way,
    /// and a challenge (it cannot know what the enclave last answered) whose delivery only
    /// shortens the requeue.
    #[test]
    fn an_attested_enclave_is_published_and_challenged_after_boot() {
        let nm = mk_sim_nm();
        let now = now_ms();
        let t = at(now);
        let enclave = FakeEnclave::new();
        let bundle = enclave.bundle(digest_of(&nm), &BOOT_NONCE, 1, now);
        let workload = running();
        let mut attestation = booted(&nm, now);
        let summary = summary_of(
            &nm,
            &bundle,
            &IssuedNonces::new(BOOT_NONCE.to_vec(), now, GRACE_MS),
            now,
        );
        let planned = attest(
            &seen(&nm, &workload, Some(&bundle), now),
            &mut attestation,
            FRESH.to_vec(),
        )
        .expect("plan");

        let secret = desired::kubeconfig_secret(
            &nm,
            &Names::of(&nm).expect("names"),
            "https://demo.team-a.svc:6443",
            &enclave.serving_ca_pem,
        )
        .expect("secret");
        let component = |name: &str| ComponentHealth {
            name: name.into(),
            healthy: true,
            last_probe_time: Some(at(now)),
            latency_millis: Some(2),
            message: None,
        };
        let running = "enclave running (process launcher, id 4242)";
        let ready = "control plane is attested and every component is healthy";
        let status = NautilusMasterStatus {
            observed_generation: Some(1),
            conditions: vec![
                condition(types::ENCLAVE_RUNNING, "True", "Running", running, &t),
                condition(
                    types::ATTESTED,
                    "True",
                    "SimulatedAttestation",
                    &simulated_message(&enclave),
                    &t,
                ),
                condition(
                    types::API_SERVER_READY,
                    "True",
                    "Healthy",
                    "api-server is healthy",
                    &t,
                ),
                condition(
                    types::SCHEDULER_READY,
                    "True",
                    "Healthy",
                    "scheduler is healthy",
                    &t,
                ),
                condition(
                    types::CONTROLLER_MANAGER_READY,
                    "True",
                    "Healthy",
                    "controller-manager is healthy",
                    &t,
                ),
                condition(types::READY, "True", "AllReady", ready, &t),
            ],
            phase: Some(Phase::Ready),
            attestation: Some(summary),
            components: vec![
                component("api-server"),
                component("scheduler"),
                component("controller-manager"),
            ],
            placement: Some(EnclavePlacement {
                enclave_id: Some("4242".into()),
                ..running_placement()
            }),
            endpoint: Some("https://demo.team-a.svc:6443".into()),
            kubeconfig_secret_ref: Some(SecretKeyReference {
                name: "demo-kubeconfig".into(),
                key: "kubeconfig".into(),
            }),
            boot_config_digest: Some(hex::encode(digest_of(&nm))),
            state: None,
        };
        let became = |type_: &str, reason: &str, message: &str| {
            note(
                EventType::Normal,
                reason,
                &format!("{type_}: (none) → True: {message}"),
            )
        };
        let steps = |requeue| Steps {
            verification: Reason::SimulatedAttestation,
            kubeconfig: Kubeconfig::Publish(Box::new(Stamped::new(secret.clone()).expect("hash"))),
            status: Some(status.clone()),
            events: vec![
                became(types::ENCLAVE_RUNNING, "Running", running),
                became(
                    types::ATTESTED,
                    "SimulatedAttestation",
                    &simulated_message(&enclave),
                ),
                became(types::API_SERVER_READY, "Healthy", "api-server is healthy"),
                became(types::SCHEDULER_READY, "Healthy", "scheduler is healthy"),
                became(
                    types::CONTROLLER_MANAGER_READY,
                    "Healthy",
                    "controller-manager is healthy",
                ),
                became(types::READY, "AllReady", ready),
            ],
            requeue,
        };
        assert_eq!(
            planned,
            Attest {
                challenge: Some(fresh_challenge(now, steps(Duration::from_secs(1)))),
                otherwise: steps(PROBE),
            }
        );
        // Planning told the state nothing about the challenge: it is due until delivered.
        assert_eq!(
            attestation.challenge_due(&Outcome::Pending(String::new()), now, 3_600_000),
            Due::Challenge
        );
    }

    /// The refresh challenge [`running`]'s sidecar gets at `now`, then `delivered`.
    fn fresh_challenge(now: u64, delivered: Steps) -> Challenge {
        Challenge {
            sidecar: SocketAddr::from(([10, 0, 0, 5], 8080)),
            nonce: FRESH.to_vec(),
            issued_ms: now,
            rechallenges: None,
            delivered,
        }
    }

    fn running_placement() -> EnclavePlacement {
        running().placement
    }

    /// A resource a previous operator process attested, and the evidence its enclave serves at
    /// `now`: a document answering that process's last challenge, which this one never issued.
    fn attested_before_a_restart(now: u64) -> (NautilusMaster, EvidenceBundle) {
        let mut nm = mk_sim_nm();
        let bundle = FakeEnclave::new().bundle(digest_of(&nm), &[7; 32], 10, now);
        let attested = condition(
            types::ATTESTED,
            "True",
            "SimulatedAttestation",
            "m",
            &at(1_000_000),
        );
        nm.status = Some(NautilusMasterStatus {
            conditions: vec![attested],
            phase: Some(Phase::Ready),
            ..NautilusMasterStatus::default()
        });
        (nm, bundle)
    }

    /// After an operator restart the enclave answers a challenge this process never issued:
    /// challenged at once, and while it answers a previously attested resource keeps its
    /// status (nothing written, no Event, the kubeconfig left alone).
    #[test]
    fn a_restart_challenges_and_holds_the_status_of_an_attested_enclave() {
        let now = now_ms();
        let (nm, bundle) = attested_before_a_restart(now);
        let workload = running();
        let mut attestation = booted(&nm, now);
        let planned = attest(
            &seen(&nm, &workload, Some(&bundle), now),
            &mut attestation,
            FRESH.to_vec(),
        )
        .expect("plan");
        let waiting = "waiting for the enclave to answer the challenge issued 0 ms ago";
        let t = at(now);
        let no_report = "waiting for a verified report";
        let not_ready = "not ready: Attested=Unknown (Pending), APIServerReady=Unknown (Pending), \
                         SchedulerReady=Unknown (Pending), ControllerManagerReady=Unknown \
                         (Pending)";
        let running = "enclave running (process launcher, id 4242)";
        let status = NautilusMasterStatus {
            observed_generation: Some(1),
            conditions: vec![
                condition(types::ENCLAVE_RUNNING, "True", "Running", running, &t),
                condition(types::ATTESTED, "Unknown", "Pending", waiting, &t),
                condition(types::API_SERVER_READY, "Unknown", "Pending", no_report, &t),
                condition(types::SCHEDULER_READY, "Unknown", "Pending", no_report, &t),
                condition(
                    types::CONTROLLER_MANAGER_READY,
                    "Unknown",
                    "Pending",
                    no_report,
                    &t,
                ),
                condition(types::READY, "Unknown", "NotReady", not_ready, &t),
            ],
            phase: Some(Phase::Degraded),
            placement: Some(EnclavePlacement {
                enclave_id: Some("4242".into()),
                ..running_placement()
            }),
            boot_config_digest: Some(hex::encode(digest_of(&nm))),
            state: None,
            ..NautilusMasterStatus::default()
        };
        assert_eq!(
            planned,
            Attest {
                challenge: Some(fresh_challenge(
                    now,
                    Steps {
                        verification: Reason::Pending,
                        kubeconfig: Kubeconfig::Keep,
                        status: None,
                        events: Vec::new(),
                        requeue: Duration::from_secs(1),
                    },
                )),
                // Undelivered, the verdict is written as it stands.
                otherwise: Steps {
                    verification: Reason::Pending,
                    kubeconfig: Kubeconfig::Keep,
                    status: Some(status),
                    events: vec![
                        note(
                            EventType::Normal,
                            "Running",
                            &format!("EnclaveRunning: (none) → True: {running}"),
                        ),
                        note(
                            EventType::Warning,
                            "Pending",
                            &format!("Attested: True → Unknown: {waiting}"),
                        ),
                        // Ready appears Unknown: not worth an Event.
                    ],
                    requeue: PROBE,
                },
            }
        );
    }

    /// The reconciles after the restart challenge was delivered (the watches filling trigger
    /// several within milliseconds) keep holding the verdict while the enclave answers, until
    /// the challenge's grace is over.
    #[test]
    fn after_a_restart_the_verdict_is_held_until_the_first_challenge_is_answered_or_late() {
        let now = now_ms();
        let (nm, bundle) = attested_before_a_restart(now);
        let workload = running();
        let mut attestation = booted(&nm, now);
        assert!(
            !attestation.awaiting_first_answer(now),
            "not before a challenge"
        );
        attestation.challenged(FRESH.to_vec(), now, None);

        let soon = attest(
            &seen(&nm, &workload, Some(&bundle), now + 55),
            &mut attestation,
            FRESH.to_vec(),
        )
        .expect("plan");
        assert_eq!(soon.challenge, None, "the challenge is out already");
        assert_eq!(soon.otherwise.status, None, "held: {:?}", soon.otherwise);
        assert!(soon.otherwise.events.is_empty());

        let late = now + GRACE_MS + 1;
        let planned = attest(
            &seen(&nm, &workload, Some(&bundle), late),
            &mut attestation,
            FRESH.to_vec(),
        )
        .expect("plan");
        assert!(!attestation.awaiting_first_answer(late));
        assert!(
            planned.otherwise.status.is_some(),
            "after the grace the verdict is written: {planned:?}"
        );

        // Once a document verified, a later Pending is not held on this account.
        let mut attestation = booted(&nm, now);
        attestation.challenged(FRESH.to_vec(), now, None);
        attestation.verified();
        assert!(!attestation.awaiting_first_answer(now + 55));
    }

    /// A document that answers an older challenge once the grace is over: challenged once more
    /// (pending while it answers), or, undelivered, refused with the kubeconfig withdrawn.
    #[test]
    fn a_stale_document_is_challenged_once_more_before_it_fails() {
        let nm = mk_sim_nm();
        let now = now_ms();
        let enclave = FakeEnclave::new();
        let bundle = enclave.bundle(digest_of(&nm), &BOOT_NONCE, 1, now);
        let document = &bundle.attestation.as_ref().expect("a").document;
        let document_sha = hex::encode(Sha256::digest(document));
        // Booted a minute ago and challenged since; the enclave still serves the boot answer.
        let mut attestation = booted(&nm, now - 60_000);
        attestation.challenged(vec![1; 32], now - 50_000, None);
        attestation.challenged(vec![2; 32], now - 40_000, None);
        let workload = running();
        let planned = attest(
            &seen(&nm, &workload, Some(&bundle), now),
            &mut attestation,
            FRESH.to_vec(),
        )
        .expect("plan");
        let challenge = planned.challenge.expect("a challenge");
        assert_eq!(challenge.rechallenges, Some(document_sha.clone()));
        assert_eq!(challenge.nonce, FRESH.to_vec());
        let delivered = challenge.delivered;
        assert_eq!(delivered.verification, Reason::Pending);
        assert_eq!(delivered.kubeconfig, Kubeconfig::Keep);
        assert_eq!(delivered.requeue, Duration::from_secs(1));
        let attested = |status: &NautilusMasterStatus| status.conditions[1].clone();
        assert_eq!(
            attested(delivered.status.as_ref().expect("a status")),
            condition(
                types::ATTESTED,
                "Unknown",
                "Pending",
                RECHALLENGED,
                &at(now)
            )
        );
        let otherwise = planned.otherwise;
        assert_eq!(otherwise.verification, Reason::AttestationFailed);
        assert_eq!(otherwise.kubeconfig, Kubeconfig::Withdraw);
        assert_eq!(otherwise.requeue, PROBE);
        let status = otherwise.status.expect("a status");
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(status.kubeconfig_secret_ref, None);
        assert_eq!(attested(&status).reason, "AttestationFailed");

        // Delivered: the same document served again once the new grace is over is refused,
        // without another re-challenge.
        attestation.challenged(FRESH.to_vec(), now - 35_000, Some(document_sha));
        let again = attest(
            &seen(&nm, &workload, Some(&bundle), now),
            &mut attestation,
            vec![6; 32],
        )
        .expect("plan");
        assert_eq!(
            again.challenge, None,
            "refresh not due, re-challenged already"
        );
        assert_eq!(again.otherwise.kubeconfig, Kubeconfig::Withdraw);
    }

    #[test]
    fn a_pod_operator_without_the_admins_word_refuses_simulated_attestation() {
        // The spec allows simulated attestation, the operator was not started to: terminal,
        // the kubeconfig withdrawn, nothing published, and no challenge keeps it alive.
        let nm = mk_sim_nm();
        let now = now_ms();
        let enclave = FakeEnclave::new();
        let bundle = enclave.bundle(digest_of(&nm), &BOOT_NONCE, 1, now);
        let workload = running();
        let mut attestation = booted(&nm, now);
        let mut observed = seen(&nm, &workload, Some(&bundle), now);
        observed.simulated_allowed = false;
        let planned = attest(&observed, &mut attestation, FRESH.to_vec()).expect("plan");
        let otherwise = planned.otherwise;
        assert_eq!(
            otherwise.verification,
            Reason::SimulatedAttestationNotAllowed
        );
        assert_eq!(otherwise.kubeconfig, Kubeconfig::Withdraw);
        let status = otherwise.status.expect("a status");
        assert_eq!(status.phase, Some(Phase::Failed));
        assert_eq!(status.kubeconfig_secret_ref, None);
        let reason_of = |type_: &str| {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == type_)
                .map(|c| (c.status.clone(), c.reason.clone()))
        };
        let refused = Some((
            "False".to_owned(),
            "SimulatedAttestationNotAllowed".to_owned(),
        ));
        assert_eq!(reason_of(types::ATTESTED), refused);
        assert_eq!(reason_of(types::READY), refused);
    }
}
