//! The controller's wiring: the CRD check at startup, the watches (the resources, the children
//! and the enclave pods, each reflected into the watch cache), and the [`Controller`] that
//! runs [`reconcile`] over them.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Predicate as _, WatchStreamExt as _, predicates, watcher};
use kube::{Client, ResourceExt as _};
use nautilus_crds::NautilusMaster;

use super::{CONCURRENCY, Context, MANAGED_SELECTOR, error_policy, reconcile};
use crate::api::Cache;
use crate::desired;

/// The backoff of the Controller's merged trigger stream: none, since each watch already backs
/// off on its own (`default_backoff`: client-go's 0.8 s doubling to 30 s, reset after 2 min
/// without errors). kube's default puts a second backoff over the merged stream, shared by all
/// six watches: an error of any of them (and after a kube-apiserver restart each one's resume
/// fails once with 410 Expired) lengthened one sleep during which no watch was read at all. In
/// the e2e test that restarts kube-apiserver for 5 s, a spec change made after the restart was
/// not seen for over a minute (the shared backoff had reached 50 s).
#[derive(Clone, Copy, Debug, Default)]
struct EachWatchBacksOff;

impl Iterator for EachWatchBacksOff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // `None` would end the stream; zero passes the error on at once.
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for EachWatchBacksOff {
    fn reset(&mut self) {}
}

/// Name of the NautilusMaster CRD.
pub const CRD_NAME: &str = "nautilusmasters.nautilus.k3s-daas.io";

/// Why the operator cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The CRD is not installed.
    #[error(
        "the CustomResourceDefinition {CRD_NAME} is not installed; install it with \
         `kubectl apply --server-side -f crds/nautilusmaster.yaml`"
    )]
    CrdMissing,
    /// The CRD could not be read.
    #[error("cannot read the CustomResourceDefinition {CRD_NAME}")]
    CrdUnreadable(#[source] kube::Error),
}

/// Check at startup that the NautilusMaster CRD is installed.
pub async fn check_crd(client: &Client) -> Result<(), StartupError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    match api.get_opt(CRD_NAME).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(StartupError::CrdMissing),
        Err(err) => Err(StartupError::CrdUnreadable(err)),
    }
}

/// Run the controller until `shutdown` resolves: watch NautilusMaster (in `namespace`, or all
/// namespaces), the children it owns, and the enclave pods.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let ns = namespace.as_deref();
    let managed = || watcher::Config::default().labels(MANAGED_SELECTOR);
    // Status writes must not trigger another reconcile at once: only spec (generation, which
    // deletion also bumps) and finalizer changes do; the requeue after each reconcile does the
    // rest. The store still holds the latest status, which the next reconcile compares with.
    let (reader, writer) = reflector::store();
    let masters = watcher(
        api::<NautilusMaster>(&client, ns),
        watcher::Config::default(),
    )
    .default_backoff()
    // Nothing reads the managed fields, which for a resource whose spec was applied hold a copy
    // of its field names.
    .modify(|nm| nm.managed_fields_mut().clear())
    .reflect(writer)
    .applied_objects()
    .predicate_filter(
        predicates::generation.combine(predicates::finalizers),
        Default::default(),
    );
    // The children and pods are reflected into stores (the watch cache reconciles read and
    // compare against), keeping only what reconciles read: no managedFields; of the boot
    // ConfigMap its digest and nonce; of the StatefulSet, Service and Secret only metadata (their
    // applied hash; no kubeconfig in memory); of the pod its node and status.
    fn cached<K>(
        api: Api<K>,
        config: watcher::Config,
        slim: fn(&mut K),
    ) -> (
        Store<K>,
        impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
    )
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let (reader, writer) = reflector::store();
        let stream = watcher(api, config)
            .default_backoff()
            .modify(move |o| {
                o.managed_fields_mut().clear();
                slim(o);
            })
            .reflect(writer)
            .touched_objects();
        (reader, stream)
    }
    let (config_maps, config_map_events) = cached(
        api::<ConfigMap>(&client, ns),
        managed(),
        desired::slim_boot_config_map,
    );
    let (stateful_sets, stateful_set_events) =
        cached(api::<StatefulSet>(&client, ns), managed(), |sts| {
            sts.spec = Default::default();
            sts.status = None;
        });
    let (services, service_events) = cached(api::<Service>(&client, ns), managed(), |svc| {
        svc.spec = None;
        svc.status = None;
    });
    let (secrets, secret_events) = cached(api::<Secret>(&client, ns), managed(), |secret| {
        secret.data = None;
        secret.string_data = None;
    });
    let (pods, pod_events) = cached(api::<Pod>(&client, ns), managed(), |pod| {
        pod.spec = pod
            .spec
            .take()
            .map(|spec| k8s_openapi::api::core::v1::PodSpec {
                node_name: spec.node_name,
                ..Default::default()
            });
    });
    if ctx
        .cache
        .set(Cache {
            config_maps,
            stateful_sets,
            services,
            secrets,
            pods,
        })
        .is_err()
    {
        tracing::warn!("the controller was started twice on one context; keeping the first cache");
    }
    let mut controller = Controller::for_stream(masters, reader).trigger_backoff(EachWatchBacksOff);
    // A followed sidecar's evidence changed (see `crate::follow`).
    if let Some(triggers) = ctx.followers.triggers() {
        controller = controller.reconcile_on(triggers);
    }
    controller
        // Bounded: with thousands of resources (creation, an operator restart) unbounded
        // reconciles each hold their rendered objects while the API server is slow to answer,
        // which costs memory and only queues work at the API server.
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .owns_stream(config_map_events)
        .owns_stream(stateful_set_events)
        .owns_stream(service_events)
        .owns_stream(secret_events)
        .watches_stream(pod_events, |pod: Pod| {
            let name = pod.annotations().get(desired::OWNER_NAME_KEY)?.clone();
            let namespace = pod.namespace()?;
            Some(ObjectRef::<NautilusMaster>::new(&name).within(&namespace))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(object = %object, "reconciled"),
                Err(err) => tracing::debug!(error = %err, "reconcile error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The merged trigger stream passes errors on without sleeping, so one watch's errors never
    /// hold up another's events (each watch sleeps on its own errors). On a paused clock: kube's
    /// default trigger backoff would advance it by at least 0.8 s per error.
    #[tokio::test(start_paused = true)]
    async fn watch_errors_do_not_delay_the_other_watches() {
        use kube::runtime::utils::StreamBackoff;
        let items: Vec<Result<u32, &str>> = vec![Err("410"), Err("410"), Ok(1), Err("410"), Ok(2)];
        let start = tokio::time::Instant::now();
        let seen: Vec<_> = StreamBackoff::new(futures::stream::iter(items), EachWatchBacksOff)
            .collect()
            .await;
        assert_eq!(
            seen.len(),
            5,
            "the stream does not end on an error: {seen:?}"
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
