//! The production runtime: a single-replica StatefulSet per resource, a Service in front.

use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams};
use nautilus_crds::{EnclavePlacement, NautilusMaster};

use super::{Result, Stopped};
use crate::api::{Cache, kube_err};
use crate::desired::{self, Names, PodSettings, SIDECAR_CONTAINER};
use crate::observe::{EnclaveState, Observed};

/// The production runtime: StatefulSet + Service.
#[derive(Clone, Debug, Default)]
pub struct PodRuntime {
    /// Settings of the enclave pod from the operator's flags.
    pub settings: PodSettings,
    /// Port of the sidecar's HTTP API on the pod IP (8080; tests use another).
    pub sidecar_port: Option<u16>,
    /// The cluster admin's policy (`--allow-simulated-attestation`): whether a resource whose
    /// spec allows simulated attestation may be attested by a simulated NSM. Off by default:
    /// anyone who can create a NautilusMaster could otherwise get a kubeconfig that trusts a
    /// CA no hardware vouched for.
    pub allow_simulated_attestation: bool,
}

impl PodRuntime {
    pub(super) async fn observe(
        &self,
        client: &Client,
        cache: Option<&Cache>,
        nm: &NautilusMaster,
        names: &Names,
    ) -> Result<Observed> {
        let endpoint = desired::service_endpoint(nm, names)?;
        let pod = match cache {
            Some(cache) => {
                Cache::get(&cache.pods, &names.namespace, &names.pod).map(|p| p.as_ref().clone())
            }
            None => Api::<Pod>::namespaced(client.clone(), &names.namespace)
                .get_opt(&names.pod)
                .await
                .map_err(kube_err("get", "Pod", &names.pod))?,
        };
        let mut placement = EnclavePlacement {
            runtime: Some("pod".into()),
            ..EnclavePlacement::default()
        };
        let Some(pod) = pod else {
            return Ok(Observed {
                state: EnclaveState::Starting(format!(
                    "waiting for pod {} to be created",
                    names.pod
                )),
                sidecar: None,
                placement,
                endpoint,
                config_digest: None,
            });
        };
        placement.pod_name = Some(names.pod.clone());
        placement.node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let (state, pod_ip) = pod_state(&names.pod, &pod);
        let sidecar = pod_ip
            .map(|ip| SocketAddr::new(ip, self.sidecar_port.unwrap_or(desired::SIDECAR_HTTP_PORT)));
        // A pod of the previous configuration is still a running enclave: verification waits
        // for the new one, as the bundle names the digest it runs.
        Ok(Observed {
            state,
            sidecar,
            placement,
            endpoint,
            config_digest: None,
        })
    }

    pub(super) async fn stop(&self, client: &Client, names: &Names) -> Result<Stopped> {
        let sts_api = Api::<StatefulSet>::namespaced(client.clone(), &names.namespace);
        match sts_api
            .delete(&names.statefulset, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => {
                return Err(kube_err("delete", "StatefulSet", &names.statefulset)(err).into());
            }
        }
        let pods = Api::<Pod>::namespaced(client.clone(), &names.namespace);
        let pod = pods
            .get_opt(&names.pod)
            .await
            .map_err(kube_err("get", "Pod", &names.pod))?;
        // Delete the orphaned pod rather than wait for the garbage collector (whose rate limit
        // makes a mass deletion take minutes); with its default grace period, as the collector
        // would, so the sidecar still stops the enclave on SIGTERM.
        if let Some(pod) = &pod
            && pod.metadata.deletion_timestamp.is_none()
        {
            match pods.delete(&names.pod, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(Stopped::Gone),
                Err(err) => return Err(kube_err("delete", "Pod", &names.pod)(err).into()),
            }
        }
        Ok(match pod {
            None => Stopped::Gone,
            Some(pod) => Stopped::Pending(format!(
                "pod {} on node {} is still present",
                names.pod,
                pod.spec
                    .and_then(|s| s.node_name)
                    .unwrap_or_else(|| "(none)".into())
            )),
        })
    }
}

fn millis_of(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<u64> {
    u64::try_from(t.0.as_millisecond()).ok()
}

/// Waiting reasons of the sidecar container that will not resolve by themselves: the enclave
/// is reported failed rather than starting.
const TERMINAL_WAITING_REASONS: [&str; 5] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// What the status of the enclave's pod `pod` (named `name`) says: the workload's state, and
/// the pod's IP once the sidecar is up (an IP that does not parse is no address). Pure: the
/// Kubernetes strings are read here and nowhere else.
pub(super) fn pod_state(name: &str, pod: &Pod) -> (EnclaveState, Option<IpAddr>) {
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    let sidecar = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == SIDECAR_CONTAINER));
    let container_state = sidecar.and_then(|c| c.state.as_ref());
    let waiting = container_state.and_then(|s| s.waiting.as_ref());
    if phase == "Failed" {
        let why = status.message.or(status.reason).unwrap_or_default();
        return (
            EnclaveState::Failed(format!("pod {name} failed: {why}")),
            None,
        );
    }
    if let Some(w) = waiting.filter(|w| {
        w.reason
            .as_deref()
            .is_some_and(|r| TERMINAL_WAITING_REASONS.contains(&r))
    }) {
        return (
            EnclaveState::Failed(format!(
                "container {SIDECAR_CONTAINER} of pod {name}: {}: {}",
                w.reason.as_deref().unwrap_or_default(),
                w.message.as_deref().unwrap_or_default()
            )),
            None,
        );
    }
    let Some(ip) = status.pod_ip.as_deref().filter(|_| phase == "Running") else {
        let scheduling = status
            .conditions
            .as_ref()
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status != "True")
            })
            .and_then(|c| c.message.as_deref());
        let state = EnclaveState::Starting(match scheduling {
            Some(m) => format!("pod {name} is {phase}: {m}"),
            None => format!("pod {name} is {phase}"),
        });
        return (state, None);
    };
    let started_ms = container_state
        .and_then(|s| s.running.as_ref())
        .and_then(|r| r.started_at.as_ref())
        .and_then(millis_of);
    (EnclaveState::SidecarUp { started_ms }, ip.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod from its `status` as JSON.
    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [], "nodeName": "n1"},
            "status": status,
        }))
        .expect("pod")
    }

    fn sidecar_waiting(reason: &str) -> serde_json::Value {
        serde_json::json!({
            "phase": "Pending",
            "containerStatuses": [{
                "name": SIDECAR_CONTAINER, "image": "i", "imageID": "", "ready": false,
                "restartCount": 3,
                "state": {"waiting": {"reason": reason, "message": "back-off"}},
            }],
        })
    }

    #[test]
    fn pod_status_is_parsed_into_the_enclave_state() {
        let running = serde_json::json!({
            "phase": "Running", "podIP": "10.0.0.7",
            "containerStatuses": [{
                "name": SIDECAR_CONTAINER, "image": "i", "imageID": "", "ready": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-01-02T03:04:05Z"}},
            }],
        });
        let started_ms = 1_767_323_045_000;
        let cases: Vec<(&str, serde_json::Value, EnclaveState, Option<&str>)> = vec![
            (
                "no status at all",
                serde_json::json!(null),
                EnclaveState::Starting("pod p is Unknown".into()),
                None,
            ),
            (
                "pending, unschedulable",
                serde_json::json!({"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "False", "message": "0/3 nodes fit"},
                ]}),
                EnclaveState::Starting("pod p is Pending: 0/3 nodes fit".into()),
                None,
            ),
            (
                "pending, scheduled",
                serde_json::json!({"phase": "Pending", "conditions": [
                    {"type": "PodScheduled", "status": "True", "message": "ignored"},
                ]}),
                EnclaveState::Starting("pod p is Pending".into()),
                None,
            ),
            (
                "running without an IP yet",
                serde_json::json!({"phase": "Running"}),
                EnclaveState::Starting("pod p is Running".into()),
                None,
            ),
            (
                "an IP but not running",
                serde_json::json!({"phase": "Pending", "podIP": "10.0.0.7"}),
                EnclaveState::Starting("pod p is Pending".into()),
                None,
            ),
            (
                "failed, with a message",
                serde_json::json!({"phase": "Failed", "reason": "Evicted", "message": "low memory"}),
                EnclaveState::Failed("pod p failed: low memory".into()),
                None,
            ),
            (
                "failed, reason only",
                serde_json::json!({"phase": "Failed", "reason": "Evicted"}),
                EnclaveState::Failed("pod p failed: Evicted".into()),
                None,
            ),
            (
                "crash loop",
                sidecar_waiting("CrashLoopBackOff"),
                EnclaveState::Failed(format!(
                    "container {SIDECAR_CONTAINER} of pod p: CrashLoopBackOff: back-off"
                )),
                None,
            ),
            (
                "image pull",
                sidecar_waiting("ErrImagePull"),
                EnclaveState::Failed(format!(
                    "container {SIDECAR_CONTAINER} of pod p: ErrImagePull: back-off"
                )),
                None,
            ),
            (
                "a waiting reason that resolves by itself",
                sidecar_waiting("ContainerCreating"),
                EnclaveState::Starting("pod p is Pending".into()),
                None,
            ),
            (
                "running",
                running.clone(),
                EnclaveState::SidecarUp {
                    started_ms: Some(started_ms),
                },
                Some("10.0.0.7"),
            ),
            (
                "running, an IPv6 address",
                {
                    let mut s = running.clone();
                    s["podIP"] = "fd00::7".into();
                    s
                },
                EnclaveState::SidecarUp {
                    started_ms: Some(started_ms),
                },
                Some("fd00::7"),
            ),
            (
                "running, an address that does not parse",
                {
                    let mut s = running.clone();
                    s["podIP"] = "10.0.0.300".into();
                    s
                },
                EnclaveState::SidecarUp {
                    started_ms: Some(started_ms),
                },
                None,
            ),
            (
                "running, another container's status only",
                serde_json::json!({"phase": "Running", "podIP": "10.0.0.7", "containerStatuses": [{
                    "name": "other", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                }]}),
                EnclaveState::SidecarUp { started_ms: None },
                Some("10.0.0.7"),
            ),
        ];
        for (what, status, state, ip) in cases {
            let got = pod_state("p", &pod(status));
            let want = (state, ip.map(|ip| ip.parse::<IpAddr>().expect("ip")));
            assert_eq!(got, want, "{what}");
        }
    }
}
