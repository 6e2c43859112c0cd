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

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use nautilus_crds::{NautilusMaster, NautilusMasterStatus, Phase};
use nautilus_protocol::wire::BootConfig;

use super::attest::{Attest, Note, Observation, attest};
use super::snapshot::{Children, Snapshot, Workload, World};
use super::{STOP_DEADLINE, STOP_INCOMPLETE};
use crate::desired::{self, DesiredError, Names, Stamped};
use crate::events::EventType;
use crate::observe::{EnclaveState, Observed};
use crate::runtime::Stopped;

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

/// The children to apply, in order, for `boot`.
pub fn children(
    nm: &NautilusMaster,
    names: &Names,
    boot: &BootConfig,
    workload: Workload<'_>,
) -> Result<Vec<Child>, DesiredError> {
    let mut out = vec![Child::ConfigMap(Stamped::new(desired::boot_config_map(
        nm, names, boot,
    )?)?)];
    if let Workload::Pod(settings) = workload {
        let digest_hex = boot.config.digest_hex();
        out.push(Child::StatefulSet(Box::new(Stamped::new(
            desired::enclave_statefulset(nm, names, &digest_hex, settings)?,
        )?)));
        out.push(Child::Service(Box::new(Stamped::new(desired::service(
            nm, names,
        )?)?)));
    }
    Ok(out)
}

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
        children(nm, names, &live.boot, live.runtime)?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::PodSettings;
    use crate::fixtures::mk_nm;
    use pretty_assertions::assert_eq;

    const BOOT_NONCE: [u8; 32] = [9; 32];

    fn at(ms: u64) -> Time {
        time_at(ms)
    }

    fn note(type_: EventType, reason: &str, note: &str) -> Note {
        Note {
            type_,
            reason: reason.into(),
            note: note.into(),
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
                Stamped::new(
                    desired::boot_config_map(&nm, &Names::of(&nm).expect("names"), &boot)
                        .expect("cm"),
                )
                .expect("hash"),
            )
        };
        assert_eq!(
            children(
                &nm,
                &Names::of(&nm).expect("names"),
                &boot,
                Workload::Pod(&settings)
            )
            .expect("children"),
            [
                stamped_cm(),
                Child::StatefulSet(Box::new(
                    Stamped::new(
                        desired::enclave_statefulset(
                            &nm,
                            &Names::of(&nm).expect("names"),
                            &digest_hex,
                            &settings
                        )
                        .expect("sts")
                    )
                    .expect("hash")
                )),
                Child::Service(Box::new(
                    Stamped::new(
                        desired::service(&nm, &Names::of(&nm).expect("names")).expect("svc")
                    )
                    .expect("hash")
                )),
            ]
        );
        assert_eq!(
            children(&nm, &Names::of(&nm).expect("names"), &boot, Workload::Local)
                .expect("children"),
            [stamped_cm()],
            "the local runtime starts its process itself"
        );
    }

    /// The children of `nm` for the pod runtime, with its boot nonce.
    fn all_children(nm: &NautilusMaster) -> Vec<Child> {
        let boot = BootConfig {
            config: desired::enclave_config(nm).expect("config"),
            nonce: BOOT_NONCE.to_vec(),
        };
        children(
            nm,
            &Names::of(nm).expect("names"),
            &boot,
            Workload::Pod(&PodSettings::default()),
        )
        .expect("children")
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
