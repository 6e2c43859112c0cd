//! Observe once: everything a reconcile decides from, read in one go before anything is
//! decided ([`Snapshot`]). The resource and its names; for a resource that is not being
//! deleted, the configuration placed where it runs, its attestation state, the children as the
//! watch cache holds them, what the runtime sees of the workload and what its sidecar serves.
//!
//! Reading is all this module does; [`super::plan`] decides from the snapshot and
//! [`super::execute`] carries the plan out.

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::Api;
use nautilus_crds::NautilusMaster;
use nautilus_protocol::wire::{BootConfig, EvidenceBundle};

use super::attestation::{Attestation, fresh_nonce, grace_ms};
use super::{Context, Result};
use crate::api::{Cache, kube_err};
use crate::desired::{self, Names, PodSettings};
use crate::observe::{EnclaveState, Observed};
use crate::runtime::EnclaveRuntime;
use crate::sidecar;

/// What one reconcile saw.
#[derive(Debug)]
pub(super) struct Snapshot<'a> {
    /// The resource, with its previous status.
    pub nm: &'a NautilusMaster,
    /// Its names and its children's, computed once.
    pub names: &'a Names,
    /// The rest depends on whether it is being deleted.
    pub world: World<'a>,
}

/// A snapshot's world.
#[derive(Debug)]
pub(super) enum World<'a> {
    /// The resource is live: what runs for it.
    Live(Box<Live<'a>>),
    /// The resource is being deleted: the plan needs nothing more than the resource itself.
    Deleting,
}

/// Where the workload runs, as far as the plan cares.
#[derive(Clone, Copy, Debug)]
pub enum Workload<'a> {
    /// A StatefulSet with these settings, and a Service: children to apply.
    Pod(&'a PodSettings),
    /// A local process, which the runtime starts itself: no children besides the ConfigMap.
    Local,
}

/// What a reconcile of a live resource saw.
#[derive(Debug)]
pub(super) struct Live<'a> {
    /// The boot configuration: the spec's configuration placed where it runs, with the nonce
    /// of its attestation state.
    pub boot: BootConfig,
    /// Its digest.
    pub digest: [u8; 32],
    /// The per-cluster attestation state of this configuration (kept across reconciles;
    /// [`super::plan`] updates its report memory).
    pub attestation: &'a mut Attestation,
    /// The children in the watch cache; `None` without one (before its first lists), when
    /// everything is applied and nothing is known to be absent.
    pub cached: Option<Children>,
    /// Where the workload runs, as far as the plan cares.
    pub runtime: Workload<'a>,
    /// Whether the operator accepts simulated attestation where the spec allows it.
    pub simulated_allowed: bool,
    /// The workload (its state is `Unreachable` when the sidecar's `/report` failed).
    pub workload: Observed,
    /// What the sidecar served at `/report`.
    pub bundle: Option<EvidenceBundle>,
    /// The sidecar `/report` was read from (or failed to be).
    pub read_from: Option<SocketAddr>,
}

impl Snapshot<'_> {
    /// The attestation state of a live resource.
    pub fn attestation(&mut self) -> Option<&mut Attestation> {
        match &mut self.world {
            World::Live(live) => Some(&mut *live.attestation),
            World::Deleting => None,
        }
    }

    /// The sidecar whose `/report` this reconcile read: the one to follow.
    pub fn sidecar(&self) -> Option<SocketAddr> {
        match &self.world {
            World::Live(live) => live.read_from,
            World::Deleting => None,
        }
    }
}

/// The children of a resource as the watch cache holds them (slimmed: see
/// [`super::run`]).
#[derive(Clone, Debug, Default)]
pub(super) struct Children {
    /// The boot ConfigMap.
    pub config_map: Option<Arc<ConfigMap>>,
    /// The enclave StatefulSet.
    pub statefulset: Option<Arc<StatefulSet>>,
    /// The Service.
    pub service: Option<Arc<Service>>,
    /// The kubeconfig Secret.
    pub secret: Option<Arc<Secret>>,
}

impl Children {
    fn of(cache: &Cache, names: &Names) -> Self {
        let ns = &names.namespace;
        Self {
            config_map: Cache::get(&cache.config_maps, ns, &names.boot_config_map),
            statefulset: Cache::get(&cache.stateful_sets, ns, &names.statefulset),
            service: Cache::get(&cache.services, ns, &names.service),
            secret: Cache::get(&cache.secrets, ns, &names.kubeconfig_secret),
        }
    }
}

/// Take the snapshot of `nm` (`deleting`: its deletion has begun). `slot` is the cluster's
/// attestation state, held locked by the caller for the whole reconcile; it is booted here when
/// it is not for the configuration rendered now, with the nonce of the existing boot ConfigMap
/// when that holds the same configuration, else a fresh one.
pub(super) async fn take<'a>(
    ctx: &'a Context,
    nm: &'a NautilusMaster,
    names: &'a Names,
    deleting: bool,
    slot: &'a mut Option<Attestation>,
    now_ms: u64,
) -> Result<Snapshot<'a>> {
    if deleting {
        return Ok(Snapshot {
            nm,
            names,
            world: World::Deleting,
        });
    }
    let cache = ctx.cache().await;
    let config = ctx
        .runtime
        .place(names, desired::enclave_config(nm)?)
        .await?;
    let digest = config.digest();
    let digest_hex = hex::encode(digest);
    let cached = cache.map(|cache| Children::of(cache, names));
    let attestation = match slot.take() {
        Some(attestation) if attestation.is_for(&digest_hex) => slot.insert(attestation),
        _ => {
            let existing = match &cached {
                Some(children) => children.config_map.as_deref().cloned(),
                None => Api::<ConfigMap>::namespaced(ctx.client.clone(), &names.namespace)
                    .get_opt(&names.boot_config_map)
                    .await
                    .map_err(kube_err("get", "ConfigMap", &names.boot_config_map))?,
            };
            let boot_nonce = existing
                .and_then(|cm| desired::existing_boot_nonce(&cm, &digest_hex))
                .unwrap_or_else(fresh_nonce);
            slot.insert(Attestation::boot(
                digest_hex.clone(),
                boot_nonce,
                now_ms,
                grace_ms(nm),
            ))
        }
    };
    let boot = BootConfig {
        config,
        nonce: attestation.boot_nonce().to_vec(),
    };
    let mut workload = ctx
        .runtime
        .observe(&ctx.client, cache, nm, names, &boot)
        .await?;
    // A process of another configuration is about to be replaced: what it serves is not read.
    let replaced = workload
        .config_digest
        .as_ref()
        .is_some_and(|running| *running != digest_hex);
    let read_from = workload.sidecar.filter(|_| !replaced);
    let bundle = match read_from {
        Some(addr) => match sidecar::fetch_report(addr).await {
            Ok(bundle) => Some(bundle),
            Err(err) => {
                workload.state = EnclaveState::Unreachable(err.to_string());
                None
            }
        },
        None => None,
    };
    let runtime = match &ctx.runtime {
        EnclaveRuntime::Pod(pod) => Workload::Pod(&pod.settings),
        EnclaveRuntime::Local(_) => Workload::Local,
    };
    Ok(Snapshot {
        nm,
        names,
        world: World::Live(Box::new(Live {
            boot,
            digest,
            attestation,
            cached,
            runtime,
            simulated_allowed: ctx.runtime.allows_simulated_attestation(),
            workload,
            bundle,
            read_from,
        })),
    })
}
