//! The status a reconcile writes, and the Events of its condition transitions, computed from the
//! previous status and the observations: pure.

use crate::events::EventType;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use nautilus_crds::conditions::types;
use nautilus_crds::{
    EnclavePlacement, NautilusMaster, NautilusMasterStatus, Phase, SecretKeyReference, StateStatus,
};
use nautilus_protocol::wire::EvidenceBundle;

use crate::conditions::{self, Observation, Status};
use crate::observe;
use crate::verify::Outcome;

/// Inputs of [`build_status`] besides the resource.
#[derive(Debug)]
pub struct StatusInput<'a> {
    /// Condition observations (without `Ready`).
    pub observations: Vec<Observation>,
    /// `status.state`, from [`crate::state::observe`].
    pub state: Option<StateStatus>,
    /// The verification outcome.
    pub outcome: &'a Outcome,
    /// Placement from the runtime.
    pub placement: EnclavePlacement,
    /// What the sidecar served, if anything.
    pub bundle: Option<&'a EvidenceBundle>,
    /// The control plane's endpoint.
    pub endpoint: String,
    /// The kubeconfig Secret, when published.
    pub kubeconfig: Option<SecretKeyReference>,
    /// The boot configuration's digest.
    pub digest_hex: &'a str,
    /// Now.
    pub now: Time,
}

/// The whole status to apply: conditions merged into the previous ones (transition times kept
/// where the status did not change), `Ready`, the phase and the summaries.
pub fn build_status(nm: &NautilusMaster, input: StatusInput<'_>) -> NautilusMasterStatus {
    let previous = nm.status.clone().unwrap_or_default();
    let generation = nm.metadata.generation.unwrap_or(0);
    let mut conditions_now = previous.conditions.clone();
    if nm.spec.state.is_none() {
        // A spec that no longer keeps state leaves no state conditions behind.
        conditions_now.retain(|c| !types::STATE.contains(&c.type_.as_str()));
    }
    for observation in input.observations {
        conditions::merge(&mut conditions_now, observation, generation, &input.now);
    }
    let ready = conditions::ready(&conditions_now);
    conditions::merge(&mut conditions_now, ready, generation, &input.now);
    // Keep the order of `types::ALL` whatever order the previous status had.
    conditions_now.sort_by_key(|c| {
        types::ALL
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(usize::MAX)
    });
    let was_ready = matches!(previous.phase, Some(Phase::Ready | Phase::Degraded))
        || conditions::is_true(&previous.conditions, types::READY);
    let phase = conditions::phase(&conditions_now, false, was_ready);
    let (attestation, components) = match input.outcome {
        Outcome::Verified(v) => (
            Some(v.summary.clone()),
            observe::component_health(&v.report),
        ),
        Outcome::Failed { attestation, .. } => (attestation.as_deref().cloned(), Vec::new()),
        Outcome::Pending(_) => (None, Vec::new()),
    };
    let mut placement = input.placement;
    if let Some(info) = input.bundle.map(|b| &b.enclave) {
        placement.enclave_id = info.enclave_id.clone();
        placement.enclave_cid = info.enclave_cid;
    }
    NautilusMasterStatus {
        observed_generation: Some(generation),
        conditions: conditions_now,
        phase: Some(phase),
        attestation,
        components,
        placement: Some(placement),
        // Published with the kubeconfig: an endpoint is worth using only once attested.
        endpoint: (input.kubeconfig.is_some() && !input.endpoint.is_empty())
            .then_some(input.endpoint),
        kubeconfig_secret_ref: input.kubeconfig,
        boot_config_digest: Some(input.digest_hex.to_owned()),
        state: input.state,
    }
}

/// Whether `new` differs from `old` in anything a user would see. Per-probe values
/// (`attestation.verifiedAt`, `components[].lastProbeTime` and `latencyMillis`) do not count:
/// they are written with
/// the rest of the status when something else changes, never on their own, so an idle resource
/// costs no writes (as node heartbeats moved out of Node status into Leases, KEP-589).
///
/// The two are compared as the API server stores them, in their JSON form: `old` was read back
/// from it, and a `metav1.Time` there has whole seconds, so an in-memory time with milliseconds
/// (the attestation document's timestamp) would otherwise differ from its stored self at every
/// reconcile and be written again each time.
pub fn status_changed(old: &NautilusMasterStatus, new: &NautilusMasterStatus) -> bool {
    fn stored_without_probe_times(status: &NautilusMasterStatus) -> Option<serde_json::Value> {
        let mut status = status.clone();
        if let Some(attestation) = status.attestation.as_mut() {
            attestation.verified_at = Time(Timestamp::UNIX_EPOCH);
        }
        for component in &mut status.components {
            component.last_probe_time = None;
            component.latency_millis = None;
        }
        serde_json::to_value(status).ok()
    }
    // A status that cannot be serialized could not be written either: count it as changed,
    // so the patch reports the error.
    match (
        stored_without_probe_times(old),
        stored_without_probe_times(new),
    ) {
        (Some(old), Some(new)) => old != new,
        _ => true,
    }
}

/// Events for conditions whose status changed (or that appeared): `Normal` when they became
/// `True`, `Warning` otherwise; the reason is the condition's reason.
pub fn transitions(old: &[Condition], new: &[Condition]) -> Vec<(EventType, String, String)> {
    new.iter()
        .filter_map(|c| {
            let before = old.iter().find(|o| o.type_ == c.type_);
            if before.is_some_and(|b| b.status == c.status) {
                return None;
            }
            let from = before.map_or("(none)", |b| b.status.as_str());
            let status = Status::of(c);
            let type_ = if status == Status::True {
                EventType::Normal
            } else {
                EventType::Warning
            };
            // Unknown at creation is not worth a warning.
            if before.is_none() && status == Status::Unknown {
                return None;
            }
            Some((
                type_,
                c.reason.clone(),
                format!("{}: {from} → {}: {}", c.type_, c.status, c.message),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mk_nm;

    #[test]
    fn probe_times_alone_are_no_status_change() {
        use nautilus_crds::ComponentHealth;
        let component = |healthy, at: i64, latency| ComponentHealth {
            name: "apiserver".into(),
            healthy,
            last_probe_time: Some(Time(Timestamp::from_second(at).expect("time"))),
            latency_millis: Some(latency),
            message: None,
        };
        let old = NautilusMasterStatus {
            phase: Some(Phase::Ready),
            components: vec![component(true, 1_000, 3)],
            ..NautilusMasterStatus::default()
        };
        let mut probed = old.clone();
        probed.components = vec![component(true, 1_005, 4)];
        assert!(!status_changed(&old, &probed), "a new probe alone");
        let mut failing = old.clone();
        failing.components = vec![component(false, 1_005, 4)];
        assert!(status_changed(&old, &failing), "health changed");
        let mut moved = old.clone();
        moved.phase = Some(Phase::Degraded);
        assert!(status_changed(&old, &moved));
    }

    /// What the operator computes carries milliseconds (the document's timestamp); what it
    /// reads back from the API server has whole seconds. The two are the same status.
    #[test]
    fn a_status_read_back_from_the_api_server_is_unchanged() {
        let computed = NautilusMasterStatus {
            phase: Some(Phase::Ready),
            attestation: Some(nautilus_crds::AttestationSummary {
                module_id: "i-0123-enc0123".into(),
                verified_at: Time(Timestamp::from_millisecond(1_764_620_025_456).expect("time")),
                document_timestamp: Time(
                    Timestamp::from_millisecond(1_764_620_020_123).expect("time"),
                ),
                pcrs: std::collections::BTreeMap::new(),
                pcr0_prefix: "10".repeat(8),
                public_key_fingerprint: "ab".repeat(32),
                document_sha256: "cd".repeat(32),
                simulated: true,
                debug_mode: false,
            }),
            ..NautilusMasterStatus::default()
        };
        let stored: NautilusMasterStatus =
            serde_json::from_value(serde_json::to_value(&computed).expect("to json"))
                .expect("from json");
        assert_ne!(stored, computed, "the round trip drops the milliseconds");
        assert!(!status_changed(&stored, &computed));
        let mut later = computed.clone();
        if let Some(a) = later.attestation.as_mut() {
            a.document_timestamp =
                Time(Timestamp::from_millisecond(1_764_620_021_123).expect("time"));
        }
        assert!(
            status_changed(&stored, &later),
            "a new document is a change"
        );
    }

    #[test]
    fn status_keeps_transition_times_and_orders_conditions() {
        use crate::conditions::Status;
        use nautilus_crds::conditions::Reason;
        let mut nm = mk_nm("demo");
        let t0 = Time(Timestamp::from_second(1_000).expect("t"));
        let t1 = Time(Timestamp::from_second(2_000).expect("t"));
        let outcome = Outcome::Pending("x".into());
        let input = |now: &Time, status: Status| StatusInput {
            state: None,
            observations: vec![Observation::new(
                types::ENCLAVE_RUNNING,
                status,
                Reason::Launching,
                "m",
            )],
            outcome: &outcome,
            placement: EnclavePlacement::default(),
            bundle: None,
            endpoint: String::new(),
            kubeconfig: None,
            digest_hex: "d",
            now: now.clone(),
        };
        let first = build_status(&nm, input(&t0, Status::False));
        nm.status = Some(first.clone());
        let second = build_status(&nm, input(&t1, Status::False));
        assert_eq!(second.conditions[0].last_transition_time, t0);
        assert_eq!(second.conditions.last().expect("ready").type_, types::READY);
        assert!(second.endpoint.is_none());
        let events = transitions(&first.conditions, &second.conditions);
        assert!(events.is_empty(), "{events:?}");
        let third = build_status(&nm, input(&t1, Status::True));
        assert_eq!(third.conditions[0].last_transition_time, t1);
        let events = transitions(&second.conditions, &third.conditions);
        let running = events
            .iter()
            .find(|e| e.2.starts_with("EnclaveRunning: False → True"))
            .expect("EnclaveRunning event");
        assert_eq!(running.0, EventType::Normal);
        // Ready moves from False (a condition was False) to Unknown (others not observed).
        assert!(
            events
                .iter()
                .any(|e| e.0 == EventType::Warning && e.2.starts_with("Ready: False → Unknown")),
            "{events:?}"
        );
        assert_eq!(events.len(), 2);
    }
}
