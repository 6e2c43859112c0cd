//! The executor: the reconcile's I/O. It reads what the plan needs (the boot ConfigMap, the
//! workload, the sidecar's `/report`) and carries out what [`super::plan`] decided, in order,
//! skipping only what the watch cache shows already done (an unchanged child, a Secret already
//! gone). It decides nothing else.

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use nautilus_crds::{NautilusMaster, NautilusMasterStatus};
use nautilus_protocol::wire::{BootConfig, EvidenceBundle};

use super::attestation::Attestation;
use super::plan::{Child, Kubeconfig, Note, Plan, Stamped, Steps};
use super::{Context, Result};
use crate::api::{Cache, kube_err};
use crate::desired::{self, FIELD_MANAGER, Names};
use crate::observe::{EnclaveState, Observed};
use crate::sidecar;

/// The I/O of one reconcile of `nm`.
pub(super) struct Executor<'a> {
    pub(super) ctx: &'a Context,
    pub(super) nm: &'a NautilusMaster,
    pub(super) names: &'a Names,
    /// The watch cache, once it has its first lists; without it every read and write goes to
    /// the API server.
    pub(super) cache: Option<&'a Cache>,
}

impl Executor<'_> {
    /// The nonce of the existing boot ConfigMap, if it holds configuration `digest_hex`.
    pub(super) async fn existing_boot_nonce(&self, digest_hex: &str) -> Result<Option<Vec<u8>>> {
        let name = &self.names.boot_config_map;
        let existing = match self.cache {
            Some(cache) => Cache::get(&cache.config_maps, &self.names.namespace, name)
                .map(|cm| cm.as_ref().clone()),
            None => Api::<ConfigMap>::namespaced(self.ctx.client.clone(), &self.names.namespace)
                .get_opt(name)
                .await
                .map_err(kube_err("get", "ConfigMap", name))?,
        };
        Ok(existing.and_then(|cm| desired::existing_boot_nonce(&cm, digest_hex)))
    }

    /// Apply `children` in order, then let the runtime start what it runs itself (the local
    /// runtime's process).
    pub(super) async fn apply_children(
        &self,
        children: &[Child],
        boot: &BootConfig,
        digest_hex: &str,
    ) -> Result<()> {
        for child in children {
            self.apply(child).await?;
        }
        self.ctx.runtime.start(self.nm, boot, digest_hex).await?;
        Ok(())
    }

    /// The workload and what its sidecar serves; the workload reads `Unreachable` when the
    /// sidecar does not answer.
    pub(super) async fn observe(&self) -> Result<(Observed, Option<EvidenceBundle>)> {
        let mut workload = self
            .ctx
            .runtime
            .observe_cached(&self.ctx.client, self.cache, self.nm)
            .await?;
        let bundle = match workload.sidecar {
            Some(addr) => match sidecar::fetch_report(addr).await {
                Ok(bundle) => Some(bundle),
                Err(err) => {
                    workload.state = EnclaveState::Unreachable(err.to_string());
                    None
                }
            },
            None => None,
        };
        Ok((workload, bundle))
    }

    /// Carry out `plan`: the challenge, if any (recorded in `attestation` once delivered), then
    /// the steps that follow.
    pub(super) async fn execute(
        &self,
        plan: Plan,
        attestation: &mut Attestation,
    ) -> Result<Action> {
        let steps = match plan.challenge {
            Some(challenge) => {
                match sidecar::request_attestation(challenge.sidecar, &challenge.nonce).await {
                    Ok(()) => {
                        tracing::info!("asked the enclave for a fresh attestation");
                        attestation.challenged(
                            challenge.nonce,
                            challenge.issued_ms,
                            challenge.rechallenges,
                        );
                        challenge.delivered
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot ask for a fresh attestation");
                        plan.otherwise
                    }
                }
            }
            None => plan.otherwise,
        };
        self.steps(steps).await
    }

    async fn steps(&self, steps: Steps) -> Result<Action> {
        let Steps {
            verification,
            kubeconfig,
            status,
            events,
            requeue,
        } = steps;
        self.ctx.metrics.verification(verification.as_str());
        match kubeconfig {
            Kubeconfig::Keep => {}
            Kubeconfig::Publish(secret) => self.apply(&Child::Secret(*secret)).await?,
            Kubeconfig::Withdraw => self.withdraw_kubeconfig().await?,
        }
        if let Some(status) = status {
            self.patch_status(&status).await?;
        }
        for Note {
            type_,
            reason,
            note,
        } in events
        {
            self.ctx.publish(self.nm, type_, &reason, note).await;
        }
        Ok(Action::requeue(requeue))
    }

    /// Server-side apply `child`, unless the cache shows it applied with its hash.
    async fn apply(&self, child: &Child) -> Result<()> {
        let applied = match child {
            Child::ConfigMap(cm) => {
                self.apply_one(cm, self.cache.map(|c| &c.config_maps), "ConfigMap")
                    .await?
            }
            Child::StatefulSet(sts) => {
                if self.replace_if_claims_changed(&sts.object).await? {
                    // Recreated with the new claims at the next reconcile (the deletion's
                    // watch event brings it).
                    return Ok(());
                }
                self.apply_one(sts, self.cache.map(|c| &c.stateful_sets), "StatefulSet")
                    .await?
            }
            Child::Service(svc) => {
                self.apply_one(svc, self.cache.map(|c| &c.services), "Service")
                    .await?
            }
            Child::Secret(secret) => {
                self.apply_one(secret, self.cache.map(|c| &c.secrets), "Secret")
                    .await?
            }
        };
        if let Some(kind) = applied {
            self.ctx.metrics.child_applied(kind);
        }
        Ok(())
    }

    /// A StatefulSet's volume claim templates cannot be changed (the API server refuses the
    /// apply): when `spec.state` came, went or changed its storage, the existing StatefulSet
    /// is deleted so that the next reconcile creates it anew. Its pod goes with it; the
    /// enclave rolls anyway, since `spec.state` is part of the measured configuration.
    /// Claims of the old StatefulSet stay (their retention policy decides).
    async fn replace_if_claims_changed(
        &self,
        wanted: &k8s_openapi::api::apps::v1::StatefulSet,
    ) -> Result<bool> {
        use k8s_openapi::api::apps::v1::StatefulSet;
        let name = &self.names.statefulset;
        let api = Api::<StatefulSet>::namespaced(self.ctx.client.clone(), &self.names.namespace);
        // Without the watch cache (before its first lists) nothing is read for this: an apply
        // the API server refuses fails the reconcile, and the retry finds the cache.
        let Some(existing) = self
            .cache
            .and_then(|cache| Cache::get(&cache.stateful_sets, &self.names.namespace, name))
        else {
            return Ok(false);
        };
        if !desired::claims_differ(&existing, wanted) {
            return Ok(false);
        }
        tracing::info!(statefulset = %name, "volume claim templates changed: replacing the StatefulSet");
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
            Err(err) => Err(kube_err("delete", "StatefulSet", name)(err).into()),
        }
    }

    /// `Some(kind)` when `stamped` was applied.
    async fn apply_one<K>(
        &self,
        stamped: &Stamped<K>,
        store: Option<&kube::runtime::reflector::Store<K>>,
        kind: &'static str,
    ) -> Result<Option<&'static str>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = stamped.object.name_any();
        let api = Api::<K>::namespaced(self.ctx.client.clone(), &self.names.namespace);
        let applied = Cache::apply_changed(store, &api, &name, &stamped.object, &stamped.hash)
            .await
            .map_err(kube_err("apply", kind, &name))?;
        Ok(applied.then_some(kind))
    }

    /// Delete the kubeconfig Secret, unless the cache shows it gone.
    async fn withdraw_kubeconfig(&self) -> Result<()> {
        let name = &self.names.kubeconfig_secret;
        let cached_absent = self
            .cache
            .is_some_and(|c| Cache::get(&c.secrets, &self.names.namespace, name).is_none());
        if cached_absent {
            return Ok(());
        }
        let api = Api::<Secret>::namespaced(self.ctx.client.clone(), &self.names.namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(err) => Err(kube_err("delete", "Secret", name)(err).into()),
        }
    }

    /// Server-side apply `status` on the status subresource.
    pub(super) async fn patch_status(&self, status: &NautilusMasterStatus) -> Result<()> {
        use kube::Resource as _;
        let api: Api<NautilusMaster> =
            Api::namespaced(self.ctx.client.clone(), &self.names.namespace);
        let body = serde_json::json!({
            "apiVersion": NautilusMaster::api_version(&()),
            "kind": NautilusMaster::kind(&()),
            "status": status,
        });
        api.patch_status(
            &self.names.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_err(
            "patch status of",
            "NautilusMaster",
            &self.names.name,
        ))?;
        self.ctx.metrics.status_patched();
        Ok(())
    }
}
