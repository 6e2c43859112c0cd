//! The reconcile loop of `NautilusMaster`: observe, plan, execute.
//!
//! One reconcile, for a resource that is not being deleted:
//!
//! 1. render the [`EnclaveConfig`](nautilus_protocol::wire::EnclaveConfig) and its digest, and
//!    find the cluster's `attestation` state for it: kept while the configuration stays the
//!    same, else booted with the nonce of the existing ConfigMap when that holds the same
//!    configuration, or a new one;
//! 2. `plan::children`: the boot ConfigMap, and for the pod runtime the StatefulSet and
//!    Service; the executor applies them, then the [`EnclaveRuntime`] starts what it runs
//!    itself (the local runtime's process);
//! 3. the executor observes the workload and fetches the sidecar's `/report`;
//! 4. `plan::plan`, pure: [`verify`](crate::verify::verify) the evidence, decide whether to
//!    `POST /attest` a fresh nonce (at once after this process booted the state, every refresh
//!    interval, once more for a document answering an older challenge), and for either fate of
//!    that challenge whether to publish or withdraw the kubeconfig Secret, which status to apply
//!    (only when something visible changed, [`status_changed`]), which Events, when to requeue;
//! 5. the executor (`execute`) sends the challenge and carries out the steps that follow.
//!
//! Idle costs nothing: reads come from the watch cache ([`Cache`]), a child is applied only when
//! its cached copy lacks the hash of the desired object ([`desired::APPLIED_HASH_KEY`]), and the
//! status only when it changed; so a resource whose world does not change makes no request.
//!
//! Deletion goes through the finalizer [`FINALIZER`]: the runtime stops the enclave (the StatefulSet
//! is deleted and the pod, whose sidecar terminates the enclave on SIGTERM, must be gone) before
//! the finalizer is removed and the children are garbage-collected. The wait is bounded: once
//! [`STOP_DEADLINE`] has passed since the deletion began, or when the runtime could not stop
//! everything, the finalizer is removed anyway and a Warning Event [`STOP_INCOMPLETE`] says what
//! may be left.
//!
//! Modules: `plan` (pure), `execute` (the I/O), `attestation` (per-cluster state),
//! `status` (status and Events, pure), `error`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Predicate as _, WatchStreamExt as _, predicates, watcher};
use kube::{Client, ResourceExt as _};
use nautilus_crds::{NautilusMaster, Phase};
use nautilus_protocol::wire::BootConfig;
use tokio::sync::Mutex;

use crate::api::Cache;
use crate::desired::{self, Names};
use crate::events::{EventType, Publisher};
use crate::metrics::Metrics;
use crate::runtime::{EnclaveRuntime, Stopped};

mod attestation;
mod error;
mod execute;
mod plan;
mod status;

use attestation::{Attestation, fresh_nonce, grace_ms};
pub use error::{Error, Result};
use execute::Executor;
use plan::{Observation, Workload};
pub use status::{StatusInput, build_status, status_changed, transitions};

/// The finalizer that keeps a resource until its enclave is stopped.
pub const FINALIZER: &str = "nautilus.k3s-daas.io/enclave";
/// Name of the controller in Events.
pub const CONTROLLER_NAME: &str = "nautilus-operator";
/// Label selecting every object the operator manages (for the owned-object watches).
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=nautilus-operator";

/// Reconciles in flight at once.
pub const CONCURRENCY: u16 = 32;

/// Longest wait for an enclave to stop once its resource is being deleted, counted from the
/// resource's `deletionTimestamp` (so an operator restart does not reset it): four times the
/// enclave pod's 30 s termination grace period. A pod still present after it sits on a node that
/// cannot confirm its end (unreachable, kubelet down); waiting longer would keep the resource
/// forever, so the finalizer is removed and [`STOP_INCOMPLETE`] names the pod and node.
pub const STOP_DEADLINE: Duration = Duration::from_secs(120);

/// Reason of the Warning Event of a deletion that could not confirm the enclave stopped.
pub const STOP_INCOMPLETE: &str = "StopIncomplete";

/// Requeue of a pod-runtime resource with no sidecar to probe (watch events do the rest).
pub const RESYNC_WITHOUT_SIDECAR: Duration = Duration::from_secs(300);

/// Shared state of the controller.
pub struct Context {
    /// Client of the host cluster.
    pub client: Client,
    /// Where enclaves run.
    pub runtime: EnclaveRuntime,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    events: Publisher,
    /// Per cluster, its attestation state once this process booted it.
    clusters: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<Attestation>>>>>,
    /// Consecutive failures per resource, for the backoff.
    failures: std::sync::Mutex<HashMap<ObjectRef<NautilusMaster>, u32>>,
    /// Set by [`run`] once the watches exist; `None` (tests without watches) reads and writes
    /// through the API server every time.
    cache: std::sync::OnceLock<Cache>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("runtime", &self.runtime)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context with `runtime`; Events are reported as [`CONTROLLER_NAME`] from
    /// [`instance_name`].
    pub fn new(client: Client, runtime: EnclaveRuntime, metrics: Arc<Metrics>) -> Self {
        Self {
            events: Publisher::new(client.clone(), CONTROLLER_NAME, &instance_name()),
            client,
            runtime,
            metrics,
            clusters: std::sync::Mutex::new(HashMap::new()),
            failures: std::sync::Mutex::new(HashMap::new()),
            cache: std::sync::OnceLock::new(),
        }
    }

    /// The watch cache, once it has its first lists.
    async fn cache(&self) -> Option<&Cache> {
        let cache = self.cache.get()?;
        cache.ready().await.then_some(cache)
    }

    fn cluster(&self, key: &str) -> Arc<Mutex<Option<Attestation>>> {
        let mut clusters = self
            .clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clusters.entry(key.to_owned()).or_default().clone()
    }

    /// Drop what is kept about a deleted resource: its attestation state and Event series.
    fn forget(&self, names: &Names) {
        self.clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&names.key());
        self.events.forget(&names.namespace, &names.name);
    }

    async fn publish(&self, nm: &NautilusMaster, type_: EventType, reason: &str, note: String) {
        if let Err(err) = self
            .events
            .publish(nm, type_, reason, "Reconcile", note)
            .await
        {
            tracing::warn!(error = %err, reason, "cannot publish an event");
        }
    }
}

/// This replica's name: `POD_NAME`, else `HOSTNAME` (the pod name in Kubernetes), else
/// `nautilus-operator-<pid>`. The Lease holder identity and the Events' reporting instance.
pub fn instance_name() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("nautilus-operator-{}", std::process::id()))
}

/// Milliseconds since the Unix epoch (0 for a clock before 1970: evidence then reads as
/// future-dated and fails).
pub(crate) fn now_ms() -> u64 {
    nautilus_protocol::attestation::now_unix_millis().unwrap_or(0)
}

/// Reconcile one resource (the function given to the [`Controller`]).
#[tracing::instrument(skip(nm, ctx), fields(name = %nm.name_any(), namespace = nm.namespace().unwrap_or_default()))]
pub async fn reconcile(nm: Arc<NautilusMaster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = nm
        .namespace()
        .ok_or(Error::Desired(desired::DesiredError::Metadata("namespace")))?;
    let api: Api<NautilusMaster> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, nm.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(nm) => apply(&nm, &ctx).await,
            FinalizerEvent::Cleanup(nm) => cleanup(&nm, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    match &result {
        Ok(_) => {
            ctx.failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&ObjectRef::from_obj(&*nm));
        }
        Err(err) => {
            if !err.is_stopping() {
                let category = err.category();
                ctx.metrics.reconcile_failed(category);
                tracing::warn!(error = %err.chain(), category, "reconcile failed");
                ctx.publish(&nm, EventType::Warning, category, err.chain())
                    .await;
            }
        }
    }
    result
}

/// Requeue after a failure: soon while an enclave stops, otherwise with exponential backoff
/// (5 s doubling to 5 min), reset by the next success.
pub fn error_policy(nm: Arc<NautilusMaster>, err: &Error, ctx: Arc<Context>) -> Action {
    if err.is_stopping() {
        return Action::requeue(Duration::from_secs(2));
    }
    let mut failures = ctx
        .failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let n = failures.entry(ObjectRef::from_obj(&*nm)).or_insert(0);
    *n = n.saturating_add(1);
    Action::requeue(backoff(*n))
}

/// 5 s × 2^(n-1), at most 300 s.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exp).min(300))
}

/// One reconcile of a resource that is not being deleted: observe, plan, execute (see the
/// module documentation).
async fn apply(nm: &NautilusMaster, ctx: &Context) -> Result<Action> {
    let now = now_ms();
    let names = Names::of(nm)?;
    let config = ctx.runtime.place(nm, desired::enclave_config(nm)?).await?;
    let digest = config.digest();
    let digest_hex = hex::encode(digest);
    let cluster = ctx.cluster(&names.key());
    let exec = Executor {
        ctx,
        nm,
        names: &names,
        cache: ctx.cache().await,
    };
    let mut slot = cluster.lock().await;

    // 1. The attestation state of this configuration: its boot nonce is the existing
    //    ConfigMap's when that holds the same configuration, else a new one.
    let attestation = match slot.take() {
        Some(attestation) if attestation.is_for(&digest_hex) => slot.insert(attestation),
        _ => {
            let boot_nonce = exec
                .existing_boot_nonce(&digest_hex)
                .await?
                .unwrap_or_else(fresh_nonce);
            slot.insert(Attestation::boot(
                digest_hex.clone(),
                boot_nonce,
                now,
                grace_ms(nm),
            ))
        }
    };
    let boot = BootConfig {
        config,
        nonce: attestation.boot_nonce().to_vec(),
    };

    // 2. The children.
    let workload = match &ctx.runtime {
        EnclaveRuntime::Pod(pod) => Workload::Pod(&pod.settings),
        EnclaveRuntime::Local(_) => Workload::Local,
    };
    let children = plan::children(nm, &boot, workload)?;
    exec.apply_children(&children, &boot, &digest_hex).await?;

    // 3. Observe, plan, execute.
    let (observed, bundle) = exec.observe().await?;
    let seen = Observation {
        nm,
        workload: &observed,
        bundle: bundle.as_ref(),
        digest,
        pod_runtime: matches!(workload, Workload::Pod(_)),
        simulated_allowed: ctx.runtime.allows_simulated_attestation(),
        now_ms: now,
        now: Time(Timestamp::now()),
    };
    let plan = plan::plan(&seen, attestation, fresh_nonce())?;
    exec.execute(plan, attestation).await
}

async fn cleanup(nm: &NautilusMaster, ctx: &Context) -> Result<Action> {
    let names = Names::of(nm)?;
    let previous = nm.status.clone().unwrap_or_default();
    if previous.phase != Some(Phase::Terminating) {
        let mut status = previous.clone();
        status.phase = Some(Phase::Terminating);
        let exec = Executor {
            ctx,
            nm,
            names: &names,
            cache: None,
        };
        exec.patch_status(&status).await?;
        ctx.publish(
            nm,
            EventType::Normal,
            "Stopping",
            "stopping the enclave before the resource is removed".into(),
        )
        .await;
    }
    let left = match ctx.runtime.stop(&ctx.client, nm).await? {
        Stopped::Gone => None,
        Stopped::Pending(what) => {
            let waited = deleting_for(nm, now_ms());
            if waited < STOP_DEADLINE {
                tracing::debug!(%what, waited_seconds = waited.as_secs(), "waiting for the enclave to stop");
                return Err(Error::Stopping(names.key()));
            }
            Some(format!(
                "{what} {} s after the deletion began (the bound is {} s)",
                waited.as_secs(),
                STOP_DEADLINE.as_secs()
            ))
        }
        Stopped::Incomplete(what) => Some(what),
    };
    ctx.forget(&names);
    match left {
        None => tracing::info!("enclave stopped; removing the finalizer"),
        Some(what) => {
            tracing::warn!(%what, "the enclave could not be confirmed stopped; removing the finalizer");
            ctx.publish(
                nm,
                EventType::Warning,
                STOP_INCOMPLETE,
                format!(
                    "removing the finalizer without confirming that the enclave stopped: {what}; \
                     it may still run"
                ),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

/// How long `nm` has been deleted at `now_ms` (zero without a `deletionTimestamp`, or one in the
/// future).
fn deleting_for(nm: &NautilusMaster, now_ms: u64) -> Duration {
    let since = nm
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
        .unwrap_or(now_ms);
    Duration::from_millis(now_ms.saturating_sub(since))
}

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
    Controller::for_stream(masters, reader)
        .trigger_backoff(EachWatchBacksOff)
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
    use crate::fixtures::{
        ApiServer, Background, Call, FakeEnclave, FakeSidecar, JSON_PATCH, Received, Reply,
        Scenario, api_server, deleting, list, mk_nm, mk_sim_nm, not_found, running_pod,
        with_finalizer,
    };
    use crate::runtime::PodRuntime;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use nautilus_crds::NautilusMasterStatus;
    use nautilus_crds::conditions::types;
    use serde_json::{Value, json};

    const NM_PATH: &str =
        "/apis/nautilus.k3s-daas.io/v1alpha1/namespaces/team-a/nautilusmasters/demo";
    const CM_PATH: &str = "/api/v1/namespaces/team-a/configmaps/demo-boot";
    const STS_PATH: &str = "/apis/apps/v1/namespaces/team-a/statefulsets/demo-enclave";
    const SVC_PATH: &str = "/api/v1/namespaces/team-a/services/demo";
    const POD_PATH: &str = "/api/v1/namespaces/team-a/pods/demo-enclave-0";
    const SECRET_PATH: &str = "/api/v1/namespaces/team-a/secrets/demo-kubeconfig";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events?";
    /// Prefix of the path of one Event.
    const EVENTS_ONE: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events/demo.";
    /// The query of every server-side apply the operator sends.
    const SSA: &str = "?&force=true&fieldManager=nautilus-operator";

    fn context(client: Client, sidecar_port: Option<u16>) -> Arc<Context> {
        Arc::new(Context::new(
            client,
            EnclaveRuntime::Pod(PodRuntime {
                sidecar_port,
                // The scenarios' enclaves are simulated (their specs allow it).
                allow_simulated_attestation: true,
                ..PodRuntime::default()
            }),
            Arc::new(Metrics::new()),
        ))
    }

    fn to_json<T: serde::Serialize>(value: &T) -> Value {
        serde_json::to_value(value).expect("json")
    }

    /// A server-side apply of a child at `path`, owned by the resource.
    fn apply_child(path: &str, kind: &str) -> Call {
        Call::apply(format!("{path}{SSA}")).body(json!({
            "kind": kind,
            "metadata": {"ownerReferences": [{"kind": "NautilusMaster", "name": "demo",
                                              "controller": true}]},
        }))
    }

    /// The status apply, answered with `nm` carrying it (as the API server does); the body must
    /// hold `status`.
    fn apply_status(nm: &NautilusMaster, status: Value) -> Call {
        Call::apply(format!("{NM_PATH}/status{SSA}"))
            .body(json!({
                "apiVersion": "nautilus.k3s-daas.io/v1alpha1",
                "kind": "NautilusMaster",
                "status": status,
            }))
            .reply(Reply::WithStatus(to_json(nm)))
    }

    /// `status.conditions` as (type, status, reason), in the order of [`types::ALL`].
    fn conditions(expected: [(&str, &str); 6]) -> Value {
        Value::Array(
            types::ALL
                .iter()
                .zip(expected)
                .map(|(type_, (status, reason))| {
                    json!({"type": type_, "status": status, "reason": reason,
                           "observedGeneration": 1})
                })
                .collect(),
        )
    }

    /// An Event about `demo`.
    fn event(type_: &str, reason: &str, note: &str) -> Call {
        Call::post(EVENTS).body(json!({
            "type": type_,
            "reason": reason,
            "note": note,
            "action": "Reconcile",
            "reportingController": CONTROLLER_NAME,
            "regarding": {"kind": "NautilusMaster", "name": "demo", "namespace": "team-a"},
        }))
    }

    /// The two Events of a resource whose pod does not exist yet.
    fn launching_events() -> [Call; 2] {
        [
            event(
                "Warning",
                "Launching",
                "EnclaveRunning: (none) → False: waiting for pod demo-enclave-0 to be created",
            ),
            event(
                "Warning",
                "NotReady",
                "Ready: (none) → False: not ready: EnclaveRunning=False (Launching), \
                 Attested=Unknown (Pending), APIServerReady=Unknown (Pending), \
                 SchedulerReady=Unknown (Pending), ControllerManagerReady=Unknown (Pending)",
            ),
        ]
    }

    /// The first reconcile of a resource whose pod does not exist, read from an empty watch
    /// cache: the children, the status and the Events, and no read.
    fn launching_from_cache(nm: &NautilusMaster) -> Vec<Call> {
        let mut calls = vec![
            apply_child(CM_PATH, "ConfigMap"),
            apply_child(STS_PATH, "StatefulSet"),
            apply_child(SVC_PATH, "Service"),
            apply_status(nm, json!({"phase": "Launching"})),
        ];
        calls.extend(launching_events());
        calls
    }

    /// Run one reconcile of `nm` against `scenario`, then check the scenario.
    async fn reconcile_in(
        ctx: &Arc<Context>,
        nm: &NautilusMaster,
        scenario: Scenario,
    ) -> (Result<Action>, ApiServer, Vec<Received>) {
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            reconcile(Arc::new(nm.clone()), ctx.clone()),
        )
        .await
        .expect("reconcile finished in time");
        let (server, received) = scenario.verified().await;
        (result, server, received)
    }

    /// The one request of `received` to `path` (no query) with `method`.
    fn find<'a>(received: &'a [Received], method: &str, path: &str) -> &'a Received {
        received
            .iter()
            .find(|r| r.method == method && r.path() == path)
            .unwrap_or_else(|| panic!("no {method} {path} in {received:#?}"))
    }

    fn boot_config_of(cm: &Received) -> BootConfig {
        serde_json::from_str(cm.body["data"]["boot-config.json"].as_str().expect("data"))
            .expect("boot config")
    }

    #[tokio::test]
    async fn create_adds_the_finalizer_first() {
        let nm = mk_nm("demo");
        let (client, server) = api_server();
        let scenario = server.expect(vec![
            Call::patch(format!("{NM_PATH}?"))
                .content_type(JSON_PATCH)
                .body(json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
                ]))
                .reply(Reply::Json(200, to_json(&with_finalizer(nm.clone())))),
        ]);
        let (result, _, _) = reconcile_in(&context(client, None), &nm, scenario).await;
        assert_eq!(result.expect("ok"), Action::await_change());
    }

    #[tokio::test]
    async fn apply_children_and_status_while_the_pod_is_pending() {
        let nm = with_finalizer(mk_nm("demo"));
        let digest = desired::enclave_config(&nm).expect("config").digest_hex();
        let (client, server) = api_server();
        let mut calls = vec![
            Call::get(CM_PATH),
            apply_child(CM_PATH, "ConfigMap").body(json!({
                "metadata": {"annotations": {desired::DIGEST_KEY: &digest}},
            })),
            apply_child(STS_PATH, "StatefulSet").body(json!({
                "spec": {"template": {"metadata": {"annotations": {desired::DIGEST_KEY: &digest}}}},
            })),
            apply_child(SVC_PATH, "Service"),
            Call::get(POD_PATH),
            apply_status(
                &nm,
                json!({
                    "observedGeneration": 1,
                    "phase": "Launching",
                    "bootConfigDigest": &digest,
                    "placement": {"runtime": "pod"},
                    "conditions": conditions([
                        ("False", "Launching"),
                        ("Unknown", "Pending"),
                        ("Unknown", "Pending"),
                        ("Unknown", "Pending"),
                        ("Unknown", "Pending"),
                        ("False", "NotReady"),
                    ]),
                }),
            ),
        ];
        calls.extend(launching_events());
        let scenario = server.expect(calls);
        let (result, _, received) = reconcile_in(&context(client, None), &nm, scenario).await;
        assert_eq!(result.expect("ok"), Action::requeue(RESYNC_WITHOUT_SIDECAR));

        let boot = boot_config_of(find(&received, "PATCH", CM_PATH));
        assert_eq!(boot.nonce.len(), 32);
        assert_eq!(boot.config.digest_hex(), digest);
        let status = &find(&received, "PATCH", &format!("{NM_PATH}/status")).body["status"];
        assert!(
            status.get("endpoint").is_none(),
            "no endpoint before attestation"
        );
        assert!(status.get("kubeconfigSecretRef").is_none());
        assert!(status.get("attestation").is_none());
    }

    #[tokio::test]
    async fn a_spec_change_gets_a_new_nonce_and_rolls_the_enclave() {
        let old = with_finalizer(mk_nm("demo"));
        let old_boot = BootConfig {
            config: desired::enclave_config(&old).expect("config"),
            nonce: vec![9; 32],
        };
        let existing = desired::boot_config_map(&old, &old_boot).expect("cm");
        let mut nm = old.clone();
        nm.spec.control_plane.https_port = 16443;
        nm.metadata.generation = Some(2);
        let new_digest = desired::enclave_config(&nm).expect("c").digest_hex();
        let (client, server) = api_server();
        let mut calls = vec![
            Call::get(CM_PATH).reply(Reply::Json(200, to_json(&existing))),
            apply_child(CM_PATH, "ConfigMap").body(json!({
                "metadata": {"annotations": {desired::DIGEST_KEY: &new_digest}},
            })),
            apply_child(STS_PATH, "StatefulSet").body(json!({
                "spec": {"template": {"metadata": {"annotations": {
                    desired::DIGEST_KEY: &new_digest}}}},
            })),
            apply_child(SVC_PATH, "Service").body(json!({"spec": {"ports": [{"port": 16443}]}})),
            Call::get(POD_PATH),
            apply_status(
                &nm,
                json!({"observedGeneration": 2, "bootConfigDigest": &new_digest}),
            ),
        ];
        calls.extend(launching_events());
        let scenario = server.expect(calls);
        let (result, _, received) = reconcile_in(&context(client, None), &nm, scenario).await;
        result.expect("ok");
        let boot = boot_config_of(find(&received, "PATCH", CM_PATH));
        assert_eq!(boot.config.digest_hex(), new_digest);
        assert_ne!(
            boot.nonce, old_boot.nonce,
            "a new configuration gets a new nonce"
        );
    }

    /// The children of `demo` once its pod runs: the boot ConfigMap with `cm` already there.
    fn running_children(cm: Option<&ConfigMap>) -> Vec<Call> {
        let mut calls = Vec::new();
        if let Some(cm) = cm {
            calls.push(Call::get(CM_PATH).reply(Reply::Json(200, to_json(cm))));
        }
        calls.extend([
            apply_child(CM_PATH, "ConfigMap"),
            apply_child(STS_PATH, "StatefulSet"),
            apply_child(SVC_PATH, "Service"),
            Call::get(POD_PATH).reply(Reply::Json(200, running_pod("127.0.0.1"))),
        ]);
        calls
    }

    /// The Events the recorder sends for `events` (type, reason, note), in order: the first
    /// of each reason is posted, a later one with the same reason patches only its series (so
    /// the first note stays).
    fn events(events: &[(&str, &str, String)]) -> Vec<Call> {
        let mut seen: Vec<(&str, &str, u32)> = Vec::new();
        events
            .iter()
            .map(
                |(type_, reason, note)| match seen.iter_mut().find(|(r, _, _)| r == reason) {
                    Some((_, _, count)) => {
                        *count += 1;
                        Call::patch(format!("{EVENTS_ONE}*"))
                            .content_type("application/merge-patch+json")
                            .body(json!({"series": {"count": count}}))
                    }
                    None => {
                        seen.push((reason, note, 1));
                        event(type_, reason, note)
                    }
                },
            )
            .collect()
    }

    /// The reasons of a Ready `demo`'s conditions.
    const READY_REASONS: [&str; 6] = [
        "Running",
        "SimulatedAttestation",
        "Healthy",
        "Healthy",
        "Healthy",
        "AllReady",
    ];

    /// The Events of `demo` becoming Ready, for the conditions that were not `True` before
    /// (`before`: their previous status).
    fn became_ready(enclave: &FakeEnclave, before: [Option<&str>; 6]) -> Vec<Call> {
        let notes = [
            "enclave running (process launcher, id 4242)".to_owned(),
            format!(
                "SIMULATED attestation accepted because spec.attestation.allowSimulated is true: \
                 this is not hardware evidence (module {}, pcr0 1010101010101010…); reports \
                 signed by the attested key",
                enclave.nsm.module_id()
            ),
            "api-server is healthy".into(),
            "scheduler is healthy".into(),
            "controller-manager is healthy".into(),
            "control plane is attested and every component is healthy".into(),
        ];
        let list: Vec<(&str, &str, String)> = types::ALL
            .iter()
            .zip(READY_REASONS)
            .zip(before)
            .zip(notes)
            .filter(|(((_, _), before), _)| *before != Some("True"))
            .map(|(((type_, reason), before), note)| {
                let from = before.unwrap_or("(none)");
                ("Normal", reason, format!("{type_}: {from} → True: {note}"))
            })
            .collect();
        events(&list)
    }

    #[tokio::test]
    async fn an_attested_enclave_gets_a_kubeconfig_and_ready_status() {
        let nm = with_finalizer(mk_sim_nm());
        let config = desired::enclave_config(&nm).expect("config");
        let digest = config.digest();
        let nonce = vec![9u8; 32];
        let boot = BootConfig {
            config,
            nonce: nonce.clone(),
        };
        let cm = desired::boot_config_map(&nm, &boot).expect("cm");
        let enclave = FakeEnclave::new();
        let now = now_ms();
        let sidecar = FakeSidecar::start(&enclave.bundle(digest, &nonce, 1, now)).await;
        let (client, server) = api_server();
        let mut calls = running_children(Some(&cm));
        calls.extend([
            apply_child(SECRET_PATH, "Secret").body(json!({"type": "Opaque"})),
            apply_status(
                &nm,
                json!({
                    "phase": "Ready",
                    "conditions": conditions(READY_REASONS.map(|r| ("True", r))),
                    "attestation": {"simulated": true},
                    "kubeconfigSecretRef": {"name": "demo-kubeconfig", "key": "kubeconfig"},
                    "endpoint": "https://demo.team-a.svc:6443",
                    "placement": {"runtime": "pod", "podName": "demo-enclave-0",
                                  "nodeName": "nitro-1", "enclaveID": "4242"},
                }),
            ),
        ]);
        calls.extend(became_ready(&enclave, [None; 6]));
        let scenario = server.expect(calls);
        let ctx = context(client, Some(sidecar.addr.port()));
        let (result, _, received) = reconcile_in(&ctx, &nm, scenario).await;
        // A new operator process does not know the last challenge: it asked for a fresh one.
        assert_eq!(result.expect("ok"), Action::requeue(Duration::from_secs(1)));
        assert_eq!(sidecar.attested_nonces().len(), 1);

        assert_eq!(
            boot_config_of(find(&received, "PATCH", CM_PATH)).nonce,
            nonce,
            "the existing boot nonce is kept"
        );
        let secret = find(&received, "PATCH", SECRET_PATH);
        use base64::Engine as _;
        let kubeconfig = base64::engine::general_purpose::STANDARD
            .decode(secret.body["data"]["kubeconfig"].as_str().expect("data"))
            .expect("b64");
        let kubeconfig: Value = serde_yaml::from_slice(&kubeconfig).expect("yaml");
        let ca = base64::engine::general_purpose::STANDARD
            .decode(
                kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
                    .as_str()
                    .expect("ca"),
            )
            .expect("b64");
        assert_eq!(ca, enclave.serving_ca_pem.as_bytes());
        let status = &find(&received, "PATCH", &format!("{NM_PATH}/status")).body["status"];
        assert_eq!(status["components"].as_array().expect("c").len(), 3);
    }

    #[tokio::test]
    async fn after_an_operator_restart_the_enclave_is_challenged_before_status_changes() {
        let mut nm = with_finalizer(mk_sim_nm());
        let config = desired::enclave_config(&nm).expect("config");
        let digest = config.digest();
        let cm = desired::boot_config_map(
            &nm,
            &BootConfig {
                config,
                nonce: vec![9u8; 32],
            },
        )
        .expect("cm");
        // The previous operator process had refreshed the nonce; this one never saw it.
        let enclave = FakeEnclave::new();
        let sidecar = FakeSidecar::start(&enclave.bundle(digest, &[7u8; 32], 10, now_ms())).await;
        let mut previous = NautilusMasterStatus::default();
        previous.conditions.push(Condition {
            type_: types::ATTESTED.into(),
            status: "True".into(),
            reason: "SimulatedAttestation".into(),
            message: "m".into(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(1_000).expect("t")),
        });
        previous.phase = Some(Phase::Ready);
        nm.status = Some(previous);
        let (client, server) = api_server();
        let ctx = context(client, Some(sidecar.addr.port()));
        // Challenged at once; status (and the kubeconfig) held for the round trip.
        let scenario = server.expect(running_children(Some(&cm)));
        let (result, server, _) = reconcile_in(&ctx, &nm, scenario).await;
        assert_eq!(result.expect("ok"), Action::requeue(Duration::from_secs(1)));
        let nonces = sidecar.attested_nonces();
        assert_eq!(nonces.len(), 1, "challenged at once");

        // The enclave answers the fresh challenge: verified again, status written. The boot
        // state is known now: the ConfigMap is not read again.
        sidecar.set_bundle(&enclave.bundle(digest, &nonces[0], 11, now_ms()));
        let mut calls = running_children(None);
        calls.extend([
            apply_child(SECRET_PATH, "Secret"),
            apply_status(
                &nm,
                json!({
                    "phase": "Ready",
                    "conditions": [{}, {"type": "Attested", "status": "True",
                                        "lastTransitionTime": "1970-01-01T00:16:40Z"},
                                   {}, {}, {}, {}],
                }),
            ),
        ]);
        calls.extend(became_ready(
            &enclave,
            [None, Some("True"), None, None, None, None],
        ));
        let scenario = server.expect(calls);
        let (result, _, _) = reconcile_in(&ctx, &nm, scenario).await;
        result.expect("ok");
        assert_eq!(sidecar.attested_nonces().len(), 1, "no second challenge");
    }

    #[tokio::test]
    async fn a_forged_report_removes_the_kubeconfig_and_fails_attestation() {
        let nm = with_finalizer(mk_sim_nm());
        let config = desired::enclave_config(&nm).expect("config");
        let digest = config.digest();
        let nonce = vec![9u8; 32];
        let cm = desired::boot_config_map(
            &nm,
            &BootConfig {
                config,
                nonce: nonce.clone(),
            },
        )
        .expect("cm");
        let enclave = FakeEnclave::new();
        let now = now_ms();
        let mut bundle = enclave.bundle(digest, &nonce, 1, now);
        let forger = nautilus_protocol::wire::ReportSigner::generate();
        bundle.report = Some(forger.sign(&enclave.report(1, &hex::encode(digest), now)));
        let sidecar = FakeSidecar::start(&bundle).await;
        let (client, server) = api_server();
        let mut calls = running_children(Some(&cm));
        calls.extend([
            Call::delete(format!("{SECRET_PATH}?")).body(json!({})),
            apply_status(
                &nm,
                json!({
                    "phase": "Failed",
                    "conditions": conditions([
                        ("True", "Running"),
                        ("False", "ReportSignatureInvalid"),
                        ("Unknown", "Pending"),
                        ("Unknown", "Pending"),
                        ("Unknown", "Pending"),
                        ("False", "ReportSignatureInvalid"),
                    ]),
                }),
            ),
        ]);
        let refused = "health report refused: report signature does not verify against the \
                       attested key";
        calls.extend(events(&[
            (
                "Normal",
                "Running",
                "EnclaveRunning: (none) → True: enclave running (process launcher, id 4242)".into(),
            ),
            (
                "Warning",
                "ReportSignatureInvalid",
                format!("Attested: (none) → False: {refused}"),
            ),
            (
                "Warning",
                "ReportSignatureInvalid",
                format!("Ready: (none) → False: {refused}"),
            ),
        ]));
        let scenario = server.expect(calls);
        let (result, _, received) =
            reconcile_in(&context(client, Some(sidecar.addr.port())), &nm, scenario).await;
        result.expect("ok");
        let status = &find(&received, "PATCH", &format!("{NM_PATH}/status")).body["status"];
        assert!(status.get("kubeconfigSecretRef").is_none());
        assert!(status.get("endpoint").is_none());
    }

    /// The calls of a deletion up to the pod lookup, which answers `pod`.
    fn stopping(nm: &NautilusMaster, pod: Reply) -> Vec<Call> {
        vec![
            apply_status(nm, json!({"phase": "Terminating"})),
            event(
                "Normal",
                "Stopping",
                "stopping the enclave before the resource is removed",
            ),
            Call::delete(format!("{STS_PATH}?")).body(json!({"propagationPolicy": "Background"})),
            Call::get(POD_PATH).reply(pod),
        ]
    }

    /// The JSON patch that removes the finalizer of `nm`, answered with `nm`.
    fn removes_the_finalizer(nm: &NautilusMaster) -> Call {
        Call::patch(format!("{NM_PATH}?"))
            .content_type(JSON_PATCH)
            .body(json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ]))
            .reply(Reply::Json(200, to_json(nm)))
    }

    #[tokio::test]
    async fn delete_stops_the_enclave_then_removes_the_finalizer() {
        let nm = deleting(mk_nm("demo"));
        let (client, server) = api_server();
        let mut calls = stopping(&nm, not_found());
        calls.push(removes_the_finalizer(&nm));
        let scenario = server.expect(calls);
        let (result, _, _) = reconcile_in(&context(client, None), &nm, scenario).await;
        assert_eq!(result.expect("ok"), Action::await_change());
    }

    #[tokio::test]
    async fn delete_waits_while_the_enclave_pod_still_runs() {
        let nm = deleting(mk_nm("demo"));
        let (client, server) = api_server();
        let mut calls = stopping(&nm, Reply::Json(200, running_pod("10.0.0.5")));
        // The orphaned pod is deleted, not left to the garbage collector; the finalizer stays.
        calls.push(Call::delete(format!("{POD_PATH}?")).body(json!({})));
        let scenario = server.expect(calls);
        let ctx = context(client, None);
        let (result, _, _) = reconcile_in(&ctx, &nm, scenario).await;
        let err = result.expect_err("waits");
        assert!(err.is_stopping());
        assert_eq!(err.category(), "EnclaveStopping");
        assert_eq!(
            error_policy(Arc::new(nm), &err, ctx),
            Action::requeue(Duration::from_secs(2))
        );
    }

    #[tokio::test]
    async fn delete_gives_up_on_a_pod_that_outlives_the_stop_deadline() {
        // Deleted longer ago than the bound; its pod is terminating but never goes (its node
        // cannot confirm): the finalizer goes anyway, and a Warning Event names what is left.
        let mut nm = deleting(mk_nm("demo"));
        let past = Timestamp::now() - (STOP_DEADLINE + Duration::from_secs(1));
        nm.metadata.deletion_timestamp = Some(Time(past));
        let mut pod = running_pod("10.0.0.5");
        pod["metadata"]["deletionTimestamp"] = json!(Time(past));
        let (client, server) = api_server();
        // Already terminating: no second pod deletion.
        let mut calls = stopping(&nm, Reply::Json(200, pod));
        calls.push(Call::post(EVENTS).body(json!({"type": "Warning", "reason": STOP_INCOMPLETE})));
        calls.push(removes_the_finalizer(&nm));
        let scenario = server.expect(calls);
        let (result, _, received) = reconcile_in(&context(client, None), &nm, scenario).await;
        assert_eq!(result.expect("ok"), Action::await_change());
        let note = received
            .iter()
            .find(|r| r.body["reason"] == STOP_INCOMPLETE)
            .and_then(|r| r.body["note"].as_str())
            .expect("a StopIncomplete Event with a note");
        for part in [
            "pod demo-enclave-0 on node nitro-1 is still present",
            "the bound is 120 s",
            "it may still run",
        ] {
            assert!(note.contains(part), "{part:?} in {note:?}");
        }
    }

    #[test]
    fn deletion_age_counts_from_the_deletion_timestamp() {
        let mut nm = mk_nm("demo");
        assert_eq!(deleting_for(&nm, 5_000), Duration::ZERO, "not deleted");
        nm.metadata.deletion_timestamp =
            Some(Time(Timestamp::from_millisecond(1_000).expect("time")));
        assert_eq!(deleting_for(&nm, 5_000), Duration::from_secs(4));
        // A clock behind the API server's: no negative age.
        assert_eq!(deleting_for(&nm, 500), Duration::ZERO);
    }

    #[tokio::test]
    async fn startup_checks_that_the_crd_is_installed() {
        let (client, server) = api_server();
        let scenario = server.expect(vec![Call::get(format!(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD_NAME}"
        ))]);
        let err = check_crd(&client).await.expect_err("missing");
        scenario.verified().await;
        assert!(
            err.to_string()
                .contains("kubectl apply --server-side -f crds/nautilusmaster.yaml")
        );
    }

    /// The `local` runtime end to end through the reconcile loop: real sidecar, agent (simulated
    /// NSM) and stand-in, API server mocked. Skips (saying so) when the binaries are not built.
    ///
    /// How many reconciles it takes, and which of them find the enclave attested, is the real
    /// processes' business: each reconcile's scenario lists every call it may make, in order,
    /// and marks optional the ones that depend on how far the enclave got.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_runtime_reaches_ready_through_the_reconcile_loop_and_stops() {
        use crate::runtime::{LocalRuntime, LocalSettings, development_bin_dir};
        let Some(bin) = development_bin_dir() else {
            println!("skipped: nautilus-sidecar/agent/standin not built (cargo build --workspace)");
            return;
        };
        let mut nm = with_finalizer(mk_sim_nm());
        nm.spec.health.probe_interval_seconds = 1;
        // The stand-in plays `k3s` (one process); `kubernetes`, the default, needs the real
        // binaries, which the e2e suite and the agent's real-control-plane tests run.
        nm.spec.control_plane.distribution = nautilus_crds::Distribution::K3s;
        let work = std::env::temp_dir().join(format!("nautilus-op-loop-{}", std::process::id()));
        let (client, mut server) = api_server();
        let ctx = Arc::new(Context::new(
            client,
            EnclaveRuntime::Local(Box::new(LocalRuntime::new(LocalSettings::development(
                &bin,
                work.clone(),
            )))),
            Arc::new(Metrics::new()),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut first = true;
        let status = loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not Ready within 60 s: {:#?}",
                nm.status
            );
            let mut calls = Vec::new();
            if first {
                calls.push(Call::get(CM_PATH));
            }
            // No StatefulSet or Service in the local runtime, and no pod to read.
            calls.push(apply_child(CM_PATH, "ConfigMap"));
            calls.push(apply_child(SECRET_PATH, "Secret").optional());
            calls.push(
                Call::apply(format!("{NM_PATH}/status{SSA}"))
                    .reply(Reply::WithStatus(to_json(&nm)))
                    .optional(),
            );
            // Six conditions, each an Event when it changes: new ones posted, repeated ones
            // (the recorder keeps a series) patched.
            for _ in 0..6 {
                calls.push(Call::post(EVENTS).optional());
                calls.push(Call::patch(format!("{EVENTS_ONE}*")).optional());
            }
            let (action, next, received) = reconcile_in(&ctx, &nm, server.expect(calls)).await;
            server = next;
            first = false;
            let action = action.expect("reconcile");
            if let Some(last) = received
                .iter()
                .rfind(|r| r.path() == format!("{NM_PATH}/status"))
            {
                let status: NautilusMasterStatus =
                    serde_json::from_value(last.body["status"].clone()).expect("status");
                nm.status = Some(status);
            }
            let status = nm.status.clone().unwrap_or_default();
            if status.phase == Some(Phase::Ready) {
                assert!(
                    received.iter().any(|r| r.path() == SECRET_PATH),
                    "the kubeconfig is published with Ready"
                );
                break status;
            }
            assert_ne!(status.phase, Some(Phase::Failed), "{status:#?}");
            assert!(action != Action::await_change());
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let attested = status
            .conditions
            .iter()
            .find(|c| c.type_ == types::ATTESTED)
            .expect("attested");
        assert_eq!(attested.reason, "SimulatedAttestation");
        assert_eq!(
            status.placement.as_ref().and_then(|p| p.runtime.as_deref()),
            Some("local")
        );
        assert!(
            status
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("https://127.0.0.1:"))
        );
        assert_eq!(status.components.len(), 3);

        // Delete: the processes stop and the finalizer goes.
        let mut gone = nm.clone();
        gone.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let scenario = server.expect(vec![
            apply_status(&gone, json!({"phase": "Terminating"})),
            event(
                "Normal",
                "Stopping",
                "stopping the enclave before the resource is removed",
            ),
            Call::patch(format!("{NM_PATH}?"))
                .content_type(JSON_PATCH)
                .body(json!([{}, {"op": "remove", "path": "/metadata/finalizers/0"}]))
                .reply(Reply::Json(200, to_json(&gone))),
        ]);
        let (result, _, _) = reconcile_in(&ctx, &gone, scenario).await;
        assert_eq!(result.expect("cleanup"), Action::await_change());
        let _ = std::fs::remove_dir_all(&work);
    }

    /// Answers the controller's lists and watches: `nm` in the NautilusMaster list, its status
    /// writes as MODIFIED events on the next NautilusMaster watch (as the API server reports
    /// them), and empty lists and watches for the children.
    fn watches(nm: &NautilusMaster) -> Background {
        let nm = to_json(nm);
        let mut modified: Vec<String> = Vec::new();
        Box::new(move |request: &Received| {
            let masters = request.path().ends_with("/nautilusmasters");
            if request.method == "PATCH" && request.path() == format!("{NM_PATH}/status") {
                let mut object = nm.clone();
                object["status"] = request.body["status"].clone();
                object["metadata"]["resourceVersion"] = json!(format!("{}", 10 + modified.len()));
                modified.push(json!({"type": "MODIFIED", "object": object}).to_string());
                return None;
            }
            if request.method != "GET" {
                return None;
            }
            let watch = request.uri.contains("watch=true");
            let children = ["configmaps", "statefulsets", "services", "secrets", "pods"]
                .iter()
                .any(|plural| request.path().ends_with(&format!("/{plural}")));
            match (watch, masters) {
                (true, true) => Some(Reply::Raw(
                    200,
                    std::mem::take(&mut modified).join("\n").into_bytes(),
                )),
                (true, false) => Some(Reply::Raw(200, Vec::new())),
                (false, true) => Some(list(vec![nm.clone()])),
                (false, false) => children.then(|| list(Vec::new())),
            }
        })
    }

    /// The wired controller: lists and watches, reconciles, shuts down on request, and its own
    /// status write (reported back on the watch, as the API server does) does not start a storm
    /// of reconciles: the next one is the requeue after the probe interval.
    #[tokio::test]
    async fn the_controller_reconciles_once_per_probe_interval_not_per_status_write() {
        let nm = with_finalizer(mk_nm("demo"));
        let (client, server) = api_server();
        // One reconcile in 3 s with a 5 s probe interval. It reads from the watch cache: no GET.
        let scenario = server.expect_with(launching_from_cache(&nm), watches(&nm));
        let ctx = context(client, None);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(ctx.clone(), None, async move {
            let _ = stopped.await;
        }));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("shut down")
            .expect("joined");
        scenario.verified().await;
        assert!(
            ctx.metrics
                .encode()
                .contains("nautilus_operator_reconciles_total 1")
        );
    }

    /// Writers of a [`Cache`] filled by hand (the watch events a test decides).
    struct CacheWriters {
        config_maps: reflector::store::Writer<ConfigMap>,
        stateful_sets: reflector::store::Writer<StatefulSet>,
        services: reflector::store::Writer<Service>,
        secrets: reflector::store::Writer<Secret>,
        pods: reflector::store::Writer<Pod>,
    }

    fn listed<K>(writer: &mut reflector::store::Writer<K>, objects: Vec<K>)
    where
        K: kube::Resource<DynamicType = ()> + Clone,
    {
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
    }

    fn cached_context(client: Client) -> (Arc<Context>, CacheWriters) {
        let ctx = context(client, None);
        let (config_maps, cm_writer) = reflector::store();
        let (stateful_sets, sts_writer) = reflector::store();
        let (services, svc_writer) = reflector::store();
        let (secrets, secret_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        ctx.cache
            .set(Cache {
                config_maps,
                stateful_sets,
                services,
                secrets,
                pods,
            })
            .expect("fresh context");
        let writers = CacheWriters {
            config_maps: cm_writer,
            stateful_sets: sts_writer,
            services: svc_writer,
            secrets: secret_writer,
            pods: pod_writer,
        };
        (ctx, writers)
    }

    #[tokio::test]
    async fn an_idle_resource_reads_the_cache_and_writes_nothing() {
        let nm = with_finalizer(mk_nm("demo"));
        let (client, server) = api_server();
        let (ctx, mut writers) = cached_context(client);
        listed(&mut writers.config_maps, Vec::new());
        listed(&mut writers.stateful_sets, Vec::new());
        listed(&mut writers.services, Vec::new());
        listed(&mut writers.secrets, Vec::new());
        listed(&mut writers.pods, Vec::new());

        // First reconcile: nothing cached, so every child and the status are written, and
        // nothing is read from the API server.
        let scenario = server.expect(launching_from_cache(&nm));
        let (result, server, first) = reconcile_in(&ctx, &nm, scenario).await;
        result.expect("ok");
        let cm: ConfigMap = find(&first, "PATCH", CM_PATH).object();
        assert!(
            cm.annotations().contains_key(desired::APPLIED_HASH_KEY),
            "the applied object carries its hash"
        );

        // The watches now hold what was applied, and the resource its status.
        listed(&mut writers.config_maps, vec![cm]);
        listed(
            &mut writers.stateful_sets,
            vec![find(&first, "PATCH", STS_PATH).object()],
        );
        listed(
            &mut writers.services,
            vec![find(&first, "PATCH", SVC_PATH).object()],
        );
        let mut nm = nm;
        nm.status = Some(
            serde_json::from_value(
                find(&first, "PATCH", &format!("{NM_PATH}/status")).body["status"].clone(),
            )
            .expect("status"),
        );

        // Second reconcile, nothing changed: no request at all.
        let (result, server, _) = reconcile_in(&ctx, &nm, server.expect(Vec::new())).await;
        assert_eq!(result.expect("ok"), Action::requeue(RESYNC_WITHOUT_SIDECAR));

        // A child whose cached copy differs (edited, or from an older spec) is applied again.
        let mut sts: StatefulSet = find(&first, "PATCH", STS_PATH).object();
        sts.annotations_mut()
            .insert(desired::APPLIED_HASH_KEY.into(), "old".into());
        listed(&mut writers.stateful_sets, vec![sts]);
        let scenario = server.expect(vec![apply_child(STS_PATH, "StatefulSet")]);
        let (result, _, _) = reconcile_in(&ctx, &nm, scenario).await;
        result.expect("ok");
        let metrics = ctx.metrics.encode();
        assert!(
            metrics.contains("nautilus_operator_writes_total{kind=\"StatefulSet\"} 2"),
            "{metrics}"
        );
    }

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

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(6), Duration::from_secs(160));
        assert_eq!(backoff(7), Duration::from_secs(300));
        assert_eq!(backoff(100), Duration::from_secs(300));
    }
}
