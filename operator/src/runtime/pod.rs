//! The production runtime: a single-replica StatefulSet per resource, a Service in front.

use std::net::SocketAddr;

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
}

fn millis_of(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> Option<u64> {
    u64::try_from(t.0.as_millisecond()).ok()
}

impl PodRuntime {
    pub(super) async fn observe(
        &self,
        client: &Client,
        cache: Option<&Cache>,
        nm: &NautilusMaster,
    ) -> Result<Observed> {
        let names = Names::of(nm)?;
        let endpoint = desired::service_endpoint(nm)?;
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
            });
        };
        placement.pod_name = Some(names.pod.clone());
        let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        placement.node_name = spec_node;
        let status = pod.status.clone().unwrap_or_default();
        let phase = status.phase.clone().unwrap_or_else(|| "Unknown".into());
        let sidecar_status = status
            .container_statuses
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.name == SIDECAR_CONTAINER));
        let waiting = sidecar_status
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref());
        let state = if phase == "Failed" {
            EnclaveState::Failed(format!(
                "pod {} failed: {}",
                names.pod,
                status
                    .message
                    .clone()
                    .or(status.reason.clone())
                    .unwrap_or_default()
            ))
        } else if let Some(w) = waiting.filter(|w| {
            matches!(
                w.reason.as_deref(),
                Some(
                    "CrashLoopBackOff"
                        | "ImagePullBackOff"
                        | "ErrImagePull"
                        | "CreateContainerConfigError"
                        | "InvalidImageName"
                )
            )
        }) {
            EnclaveState::Failed(format!(
                "container {SIDECAR_CONTAINER} of pod {}: {}: {}",
                names.pod,
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            ))
        } else if phase != "Running" || status.pod_ip.is_none() {
            let scheduling = status
                .conditions
                .as_ref()
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c.type_ == "PodScheduled" && c.status != "True")
                })
                .and_then(|c| c.message.clone());
            EnclaveState::Starting(match scheduling {
                Some(m) => format!("pod {} is {phase}: {m}", names.pod),
                None => format!("pod {} is {phase}", names.pod),
            })
        } else {
            let started_ms = sidecar_status
                .and_then(|c| c.state.as_ref())
                .and_then(|s| s.running.as_ref())
                .and_then(|r| r.started_at.as_ref())
                .and_then(millis_of);
            EnclaveState::SidecarUp { started_ms }
        };
        let sidecar = match (&state, status.pod_ip.as_deref()) {
            (EnclaveState::SidecarUp { .. }, Some(ip)) => {
                ip.parse::<std::net::IpAddr>().ok().map(|ip| {
                    SocketAddr::new(ip, self.sidecar_port.unwrap_or(desired::SIDECAR_HTTP_PORT))
                })
            }
            _ => None,
        };
        // A pod of the previous configuration is still a running enclave: verification waits
        // for the new one, as the bundle names the digest it runs.
        Ok(Observed {
            state,
            sidecar,
            placement,
            endpoint,
        })
    }

    pub(super) async fn stop(&self, client: &Client, nm: &NautilusMaster) -> Result<Stopped> {
        let names = Names::of(nm)?;
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
