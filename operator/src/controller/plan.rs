//! The reconcile as a plan: what to do, computed from one [`Snapshot`], with no I/O.
//!
//! [`plan`] decides everything a reconcile does:
//!
//! - for a live resource ([`Apply`]): the children to apply ([`children`]: the boot ConfigMap,
//!   and for the pod runtime the StatefulSet and Service, each stamped with its hash), less
//!   those the watch cache shows applied with that hash; whether the StatefulSet must be
//!   replaced first (its volume claims changed); whether the runtime starts the workload itself;
//!   and ([`attest`]) which challenge to send and, for each way that can go (delivered, or not
//!   sent / not delivered), the [`Steps`] that follow: whether to publish or withdraw the
//!   kubeconfig, which status to write (none when nothing visible changed), which Events, and
//!   when to requeue;
//! - for a resource being deleted ([`Cleanup`]): the `Terminating` status and its Event, how
//!   long the deletion has waited, and ([`after_stop`]) what follows what the runtime achieved.
//!
//! The executor ([`super::execute`]) carries a plan out and decides nothing. Verification's
//! report memory (replay detection) is part of the attestation state, so [`plan`] updates it;
//! everything else it decides is in its output.

use std::net::SocketAddr;
use std::time::Duration;

use crate::events::EventType;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use nautilus_crds::conditions::{Reason, types};
use nautilus_crds::{NautilusMaster, NautilusMasterStatus, Phase, SecretKeyReference};
use nautilus_protocol::wire::{BootConfig, EvidenceBundle};

use super::attestation::{Attestation, Due};
use super::snapshot::{Children, Snapshot, World};
use super::status::{StatusInput, build_status, status_changed, transitions};
use super::{RESYNC_WITHOUT_SIDECAR, STOP_DEADLINE, STOP_INCOMPLETE};
use crate::conditions;
use crate::desired::{self, DesiredError, KUBECONFIG_KEY, Names, PodSettings};
use crate::observe::{self, EnclaveState, Observed};
use crate::runtime::Stopped;
use crate::state;
use crate::verify::{self, Outcome};

/// An object to apply, stamped with [`desired::APPLIED_HASH_KEY`].
#[derive(Clone, Debug, PartialEq)]
pub struct Stamped<K> {
    /// The object, carrying its hash.
    pub object: K,
    /// The hash.
    pub hash: String,
}

impl<K: kube::Resource + serde::Serialize> Stamped<K> {
    /// `object`, stamped.
    pub fn new(mut object: K) -> Result<Self, DesiredError> {
        let hash = desired::stamp_applied_hash(&mut object)?;
        Ok(Self { object, hash })
    }
}

/// A child to server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Child {
    /// The boot ConfigMap.
    ConfigMap(Stamped<ConfigMap>),
    /// The enclave StatefulSet (pod runtime).
    StatefulSet(Box<Stamped<StatefulSet>>),
    /// The Service in front of it (pod runtime).
    Service(Box<Stamped<Service>>),
    /// The kubeconfig Secret.
    Secret(Stamped<Secret>),
}

/// Where the workload runs, as far as the plan cares.
#[derive(Clone, Copy, Debug)]
pub enum Workload<'a> {
    /// A StatefulSet with these settings, and a Service: children to apply.
    Pod(&'a PodSettings),
    /// A local process, which the runtime starts itself: no children besides the ConfigMap.
    Local,
}

/// The children to apply, in order, for `boot`.
pub fn children(
    nm: &NautilusMaster,
    boot: &BootConfig,
    workload: Workload<'_>,
) -> Result<Vec<Child>, DesiredError> {
    let mut out = vec![Child::ConfigMap(Stamped::new(desired::boot_config_map(
        nm, boot,
    )?)?)];
    if let Workload::Pod(settings) = workload {
        let digest_hex = boot.config.digest_hex();
        out.push(Child::StatefulSet(Box::new(Stamped::new(
            desired::enclave_statefulset(nm, &digest_hex, settings)?,
        )?)));
        out.push(Child::Service(Box::new(Stamped::new(desired::service(
            nm,
        )?)?)));
    }
    Ok(out)
}

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

/// The whole plan of one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// The resource is live.
    Apply(Box<Apply>),
    /// The resource is being deleted.
    Cleanup(Box<Cleanup>),
}

/// The plan of a live resource, carried out in this order.
#[derive(Clone, Debug, PartialEq)]
pub struct Apply {
    /// Delete the StatefulSet first: its volume claim templates, which cannot be changed,
    /// differ from the wanted ones (`spec.state` came, went or changed its storage). The next
    /// reconcile creates it anew (its deletion's watch event brings that reconcile); its pod
    /// goes with it, and the enclave rolls anyway, since `spec.state` is measured. Claims of
    /// the old StatefulSet stay (their retention policy decides).
    pub replace_statefulset: bool,
    /// The children to server-side apply, in order: those the watch cache does not show
    /// applied with their hash.
    pub children: Vec<Child>,
    /// Let the runtime start what it runs itself for this boot configuration (the local
    /// runtime's process: started, replaced when the configuration changed, restarted after it
    /// exited).
    pub start: Option<Start>,
    /// The challenge, and the steps that follow.
    pub attest: Attest,
}

/// What the runtime starts itself ([`Apply::start`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Start {
    /// The boot configuration.
    pub boot: BootConfig,
    /// Its digest (hex).
    pub digest_hex: String,
}

/// The plan of a resource being deleted: its status and Event (once), then stop the enclave
/// and follow [`after_stop`].
#[derive(Clone, Debug, PartialEq)]
pub struct Cleanup {
    /// `phase: Terminating`, unless the status says so already.
    pub status: Option<NautilusMasterStatus>,
    /// Events, in order.
    pub events: Vec<Note>,
    /// How long the deletion has waited so far.
    pub waited: Duration,
}

/// What follows once the runtime was asked to stop the enclave ([`after_stop`]).
#[derive(Clone, Debug, PartialEq)]
pub enum AfterStop {
    /// Still stopping, within [`STOP_DEADLINE`]: wait (says what for).
    Wait(String),
    /// Remove the finalizer, with a Warning Event when the stop could not be confirmed.
    Release(Option<Note>),
}

/// Plan one reconcile from `snapshot` at `now_ms`: everything it does, in order. For a live
/// resource this verifies the bundle (updating the report memory of the snapshot's attestation
/// state); `fresh_nonce` is the nonce of a challenge, if one is due.
pub fn plan(
    snapshot: &mut Snapshot<'_>,
    now_ms: u64,
    fresh_nonce: Vec<u8>,
) -> Result<Plan, DesiredError> {
    let Snapshot { nm, names, world } = snapshot;
    let live = match world {
        World::Deleting => return Ok(Plan::Cleanup(Box::new(cleanup(nm, now_ms)))),
        World::Live(live) => live,
    };
    let digest_hex = hex::encode(live.digest);
    let (replace_statefulset, children) = to_apply(
        children(nm, &live.boot, live.runtime)?,
        live.cached.as_ref(),
    );
    let local = matches!(live.runtime, Workload::Local);
    let start = local.then(|| Start {
        boot: live.boot.clone(),
        digest_hex: digest_hex.clone(),
    });
    // The local runtime is about to start a process (none runs, or one of another
    // configuration): the workload is starting, and what an old one serves says nothing.
    let starting;
    let (workload, bundle) = if local && live.workload.config_digest.as_deref() != Some(&digest_hex)
    {
        starting = Observed {
            state: EnclaveState::Starting("starting the local sidecar".into()),
            sidecar: None,
            ..live.workload.clone()
        };
        (&starting, None)
    } else {
        (&live.workload, live.bundle.as_ref())
    };
    let seen = Observation {
        nm,
        names,
        cached: live.cached.as_ref(),
        workload,
        bundle,
        digest: live.digest,
        pod_runtime: !local,
        simulated_allowed: live.simulated_allowed,
        now_ms,
        now: time_at(now_ms),
    };
    let attest = attest(&seen, live.attestation, fresh_nonce)?;
    Ok(Plan::Apply(Box::new(Apply {
        replace_statefulset,
        children,
        start,
        attest,
    })))
}

/// `now_ms` as a condition's transition time (the epoch for one out of range).
fn time_at(now_ms: u64) -> Time {
    Time(
        i64::try_from(now_ms)
            .ok()
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// The children of `desired` still to apply given what the watch cache holds (`None`: no
/// cache, apply all), and whether the StatefulSet must be replaced first (then it is not
/// applied in this reconcile).
fn to_apply(desired: Vec<Child>, cached: Option<&Children>) -> (bool, Vec<Child>) {
    let Some(cached) = cached else {
        return (false, desired);
    };
    let mut replace = false;
    let children = desired
        .into_iter()
        .filter(|child| match child {
            Child::ConfigMap(cm) => !desired::applied_with(cached.config_map.as_deref(), &cm.hash),
            Child::StatefulSet(sts) => match cached.statefulset.as_deref() {
                Some(existing) if desired::claims_differ(existing, &sts.object) => {
                    replace = true;
                    false
                }
                existing => !desired::applied_with(existing, &sts.hash),
            },
            Child::Service(svc) => !desired::applied_with(cached.service.as_deref(), &svc.hash),
            Child::Secret(secret) => !desired::applied_with(cached.secret.as_deref(), &secret.hash),
        })
        .collect();
    (replace, children)
}

/// The plan of a resource being deleted at `now_ms`.
fn cleanup(nm: &NautilusMaster, now_ms: u64) -> Cleanup {
    let previous = nm.status.clone().unwrap_or_default();
    let (status, events) = if previous.phase == Some(Phase::Terminating) {
        (None, Vec::new())
    } else {
        let mut status = previous;
        status.phase = Some(Phase::Terminating);
        let stopping = Note {
            type_: EventType::Normal,
            reason: "Stopping".into(),
            note: "stopping the enclave before the resource is removed".into(),
        };
        (Some(status), vec![stopping])
    };
    Cleanup {
        status,
        events,
        waited: deleting_for(nm, now_ms),
    }
}

/// What follows `stopped` when the deletion has waited `waited`: wait while the enclave stops
/// within [`STOP_DEADLINE`]; after that, or when the runtime could not stop everything, remove
/// the finalizer anyway and say what may be left ([`STOP_INCOMPLETE`]).
pub fn after_stop(stopped: Stopped, waited: Duration) -> AfterStop {
    let left = match stopped {
        Stopped::Gone => return AfterStop::Release(None),
        Stopped::Pending(what) if waited < STOP_DEADLINE => return AfterStop::Wait(what),
        Stopped::Pending(what) => format!(
            "{what} {} s after the deletion began (the bound is {} s)",
            waited.as_secs(),
            STOP_DEADLINE.as_secs()
        ),
        Stopped::Incomplete(what) => what,
    };
    AfterStop::Release(Some(Note {
        type_: EventType::Warning,
        reason: STOP_INCOMPLETE.into(),
        note: format!(
            "removing the finalizer without confirming that the enclave stopped: {left}; it may still run"
        ),
    }))
}

/// How long `nm` has been deleted at `now_ms` (zero without a `deletionTimestamp`, or one in the
/// future).
pub fn deleting_for(nm: &NautilusMaster, now_ms: u64) -> Duration {
    let since = nm
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
        .unwrap_or(now_ms);
    Duration::from_millis(now_ms.saturating_sub(since))
}

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

    #[test]
    fn children_are_the_boot_config_map_then_the_pod_runtime_workload() {
        let nm = mk_nm("demo");
        let boot = BootConfig {
            config: desired::enclave_config(&nm).expect("config"),
            nonce: BOOT_NONCE.to_vec(),
        };
        let settings = PodSettings::default();
        let digest_hex = boot.config.digest_hex();
        let stamped_cm = || {
            Child::ConfigMap(
                Stamped::new(desired::boot_config_map(&nm, &boot).expect("cm")).expect("hash"),
            )
        };
        assert_eq!(
            children(&nm, &boot, Workload::Pod(&settings)).expect("children"),
            [
                stamped_cm(),
                Child::StatefulSet(Box::new(
                    Stamped::new(
                        desired::enclave_statefulset(&nm, &digest_hex, &settings).expect("sts")
                    )
                    .expect("hash")
                )),
                Child::Service(Box::new(
                    Stamped::new(desired::service(&nm).expect("svc")).expect("hash")
                )),
            ]
        );
        assert_eq!(
            children(&nm, &boot, Workload::Local).expect("children"),
            [stamped_cm()],
            "the local runtime starts its process itself"
        );
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

    /// The children of `nm` for the pod runtime, with its boot nonce.
    fn all_children(nm: &NautilusMaster) -> Vec<Child> {
        let boot = BootConfig {
            config: desired::enclave_config(nm).expect("config"),
            nonce: BOOT_NONCE.to_vec(),
        };
        children(nm, &boot, Workload::Pod(&PodSettings::default())).expect("children")
    }

    #[test]
    fn children_the_cache_shows_applied_are_not_applied_again() {
        let nm = mk_nm("demo");
        let desired = all_children(&nm);
        // No cache: everything.
        assert_eq!(to_apply(desired.clone(), None), (false, desired.clone()));
        // An empty cache: everything too.
        let empty = Children::default();
        assert_eq!(
            to_apply(desired.clone(), Some(&empty)),
            (false, desired.clone())
        );
        // The ConfigMap and Service cached with their hashes, the StatefulSet with another.
        let [
            Child::ConfigMap(cm),
            Child::StatefulSet(sts),
            Child::Service(svc),
        ] = <[Child; 3]>::try_from(desired.clone()).expect("three children")
        else {
            panic!("unexpected children: {desired:?}")
        };
        let mut old_sts = sts.object.clone();
        old_sts
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(desired::APPLIED_HASH_KEY.into(), "old".into());
        let cached = Children {
            config_map: Some(std::sync::Arc::new(cm.object.clone())),
            statefulset: Some(std::sync::Arc::new(old_sts.clone())),
            service: Some(std::sync::Arc::new(svc.object.clone())),
            secret: None,
        };
        assert_eq!(
            to_apply(desired.clone(), Some(&cached)),
            (false, vec![Child::StatefulSet(sts.clone())])
        );
        // A StatefulSet whose volume claims differ is replaced, not applied.
        old_sts.spec.volume_claim_templates =
            Some(vec![k8s_openapi::api::core::v1::PersistentVolumeClaim {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some("state".into()),
                    ..Default::default()
                },
                ..Default::default()
            }]);
        let cached = Children {
            statefulset: Some(std::sync::Arc::new(old_sts)),
            ..cached
        };
        assert_eq!(to_apply(desired, Some(&cached)), (true, Vec::new()));
    }

    #[test]
    fn deletion_marks_the_resource_terminating_once_and_waits_within_the_bound() {
        let mut nm = mk_nm("demo");
        nm.metadata.deletion_timestamp = Some(at(1_000));
        let first = cleanup(&nm, 5_000);
        assert_eq!(
            first.status.as_ref().and_then(|s| s.phase),
            Some(Phase::Terminating)
        );
        assert_eq!(
            first.events,
            [note(
                EventType::Normal,
                "Stopping",
                "stopping the enclave before the resource is removed"
            )]
        );
        assert_eq!(first.waited, Duration::from_secs(4));
        nm.status = first.status;
        let again = cleanup(&nm, 6_000);
        assert_eq!((again.status, again.events), (None, Vec::new()));

        let pending = || Stopped::Pending("pod demo-enclave-0 on node n is still present".into());
        assert_eq!(
            after_stop(Stopped::Gone, Duration::ZERO),
            AfterStop::Release(None)
        );
        assert_eq!(
            after_stop(pending(), STOP_DEADLINE - Duration::from_secs(1)),
            AfterStop::Wait("pod demo-enclave-0 on node n is still present".into())
        );
        let AfterStop::Release(Some(late)) = after_stop(pending(), STOP_DEADLINE) else {
            panic!("released at the bound")
        };
        assert_eq!(
            (late.type_, late.reason.as_str()),
            (EventType::Warning, STOP_INCOMPLETE)
        );
        assert!(
            late.note.contains("120 s after the deletion began"),
            "{}",
            late.note
        );
        let AfterStop::Release(Some(incomplete)) = after_stop(
            Stopped::Incomplete("its work directory".into()),
            Duration::ZERO,
        ) else {
            panic!("released at once")
        };
        assert!(
            incomplete
                .note
                .contains("its work directory; it may still run")
        );
    }

    #[test]
    fn deletion_age_counts_from_the_deletion_timestamp() {
        let mut nm = mk_nm("demo");
        assert_eq!(deleting_for(&nm, 5_000), Duration::ZERO, "not deleted");
        nm.metadata.deletion_timestamp = Some(at(1_000));
        assert_eq!(deleting_for(&nm, 5_000), Duration::from_secs(4));
        // A clock behind the API server's: no negative age.
        assert_eq!(deleting_for(&nm, 500), Duration::ZERO);
    }
}
