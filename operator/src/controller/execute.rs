//! The executor: the reconcile's writes. It carries out what [`super::plan`] decided, in order,
//! and decides nothing itself; what it reads ([`super::snapshot`]) was read before the plan.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use nautilus_crds::{NautilusMaster, NautilusMasterStatus};

use super::attest::{Attest, Kubeconfig, Note, Steps};
use super::attestation::Attestation;
use super::plan::{AfterStop, Apply, Child, Cleanup, Plan, after_stop};
use super::{Context, Error, Result};
use crate::api::kube_err;
use crate::desired::{FIELD_MANAGER, Names, Stamped};
use crate::sidecar;

/// The writes of one reconcile of `nm`.
pub(super) struct Executor<'a> {
    pub(super) ctx: &'a Context,
    pub(super) nm: &'a NautilusMaster,
    pub(super) names: &'a Names,
}

impl Executor<'_> {
    /// Carry out `plan`; `attestation` is the live resource's attestation state, told about a
    /// challenge once it was delivered.
    pub(super) async fn execute(
        &self,
        plan: Plan,
        attestation: Option<&mut Attestation>,
    ) -> Result<Action> {
        match plan {
            Plan::Apply(apply) => self.apply_plan(*apply, attestation).await,
            Plan::Cleanup(cleanup) => self.cleanup(*cleanup).await,
        }
    }

    async fn apply_plan(
        &self,
        apply: Apply,
        attestation: Option<&mut Attestation>,
    ) -> Result<Action> {
        let Apply {
            replace_statefulset,
            children,
            start,
            attest,
        } = apply;
        if replace_statefulset {
            self.delete_statefulset().await?;
        }
        for child in &children {
            self.apply(child).await?;
        }
        if let Some(start) = start {
            self.ctx
                .runtime
                .start(self.nm, self.names, &start.boot, &start.digest_hex)
                .await?;
        }
        self.attest(attest, attestation).await
    }

    /// The challenge, if any (recorded in `attestation` once delivered), then the steps that
    /// follow.
    async fn attest(
        &self,
        attest: Attest,
        attestation: Option<&mut Attestation>,
    ) -> Result<Action> {
        let steps = match attest.challenge {
            Some(challenge) => {
                match sidecar::request_attestation(challenge.sidecar, &challenge.nonce).await {
                    Ok(()) => {
                        tracing::info!("asked the enclave for a fresh attestation");
                        if let Some(attestation) = attestation {
                            attestation.challenged(
                                challenge.nonce,
                                challenge.issued_ms,
                                challenge.rechallenges,
                            );
                        }
                        challenge.delivered
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot ask for a fresh attestation");
                        attest.otherwise
                    }
                }
            }
            None => attest.otherwise,
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
        self.publish(events).await;
        Ok(Action::requeue(requeue))
    }

    /// Mark the resource terminating, stop the enclave, and release the finalizer once
    /// [`after_stop`] says so.
    async fn cleanup(&self, cleanup: Cleanup) -> Result<Action> {
        let Cleanup {
            status,
            events,
            waited,
        } = cleanup;
        if let Some(status) = status {
            self.patch_status(&status).await?;
        }
        self.publish(events).await;
        let stopped = self
            .ctx
            .runtime
            .stop(&self.ctx.client, self.nm, self.names)
            .await?;
        match after_stop(stopped, waited) {
            AfterStop::Wait(what) => {
                tracing::debug!(%what, waited_seconds = waited.as_secs(), "waiting for the enclave to stop");
                Err(Error::Stopping(self.names.key()))
            }
            AfterStop::Release(warning) => {
                self.ctx.forget(self.names);
                match warning {
                    None => tracing::info!("enclave stopped; removing the finalizer"),
                    Some(warning) => {
                        tracing::warn!(note = %warning.note, "the enclave could not be confirmed stopped; removing the finalizer");
                        self.publish(vec![warning]).await;
                    }
                }
                Ok(Action::await_change())
            }
        }
    }

    async fn publish(&self, events: Vec<Note>) {
        for Note {
            type_,
            reason,
            note,
        } in events
        {
            self.ctx.publish(self.nm, type_, &reason, note).await;
        }
    }

    /// Server-side apply `child`.
    async fn apply(&self, child: &Child) -> Result<()> {
        let kind = match child {
            Child::ConfigMap(cm) => self.apply_one(cm, "ConfigMap").await?,
            Child::StatefulSet(sts) => self.apply_one(sts, "StatefulSet").await?,
            Child::Service(svc) => self.apply_one(svc, "Service").await?,
            Child::Secret(secret) => self.apply_one(secret, "Secret").await?,
        };
        self.ctx.metrics.child_applied(kind);
        Ok(())
    }

    async fn apply_one<K>(&self, stamped: &Stamped<K>, kind: &'static str) -> Result<&'static str>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = stamped.object.name_any();
        let api = Api::<K>::namespaced(self.ctx.client.clone(), &self.names.namespace);
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&stamped.object),
        )
        .await
        .map_err(kube_err("apply", kind, &name))?;
        Ok(kind)
    }

    /// Delete the StatefulSet, to be created anew with other volume claims.
    async fn delete_statefulset(&self) -> Result<()> {
        let name = &self.names.statefulset;
        tracing::info!(statefulset = %name, "volume claim templates changed: replacing the StatefulSet");
        let api = Api::<StatefulSet>::namespaced(self.ctx.client.clone(), &self.names.namespace);
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(err) => Err(kube_err("delete", "StatefulSet", name)(err).into()),
        }
    }

    /// Delete the kubeconfig Secret.
    async fn withdraw_kubeconfig(&self) -> Result<()> {
        let name = &self.names.kubeconfig_secret;
        let api = Api::<Secret>::namespaced(self.ctx.client.clone(), &self.names.namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(err) => Err(kube_err("delete", "Secret", name)(err).into()),
        }
    }

    /// Server-side apply `status` on the status subresource.
    async fn patch_status(&self, status: &NautilusMasterStatus) -> Result<()> {
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
