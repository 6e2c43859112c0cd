//! The reconcile loop of `NautilusMaster`: observe once, plan everything, execute.
//!
//! Every reconcile has the same three steps, for a live resource and for one being deleted:
//!
//! 1. `snapshot`: read everything the reconcile decides from, once: the resource and its names;
//!    for a live resource the [`EnclaveConfig`](nautilus_protocol::wire::EnclaveConfig) placed
//!    where it runs, the cluster's `attestation` state for it (kept while the configuration
//!    stays the same, else booted with the nonce of the existing ConfigMap when that holds the
//!    same configuration, or a new one), the children from the watch cache ([`Cache`]), what
//!    the [`EnclaveRuntime`] sees of the workload, and the sidecar's `/report`;
//! 2. `plan::plan`, pure: the children to apply (those the cache does not show applied with
//!    their hash, [`desired::APPLIED_HASH_KEY`]), whether the runtime starts the workload
//!    itself, [`verify`](crate::verify::verify) the evidence, whether to `POST /attest` a fresh
//!    nonce (at once after this process booted the state, every refresh interval, once more
//!    for a document answering an older challenge), and for either fate of that challenge
//!    whether to publish or withdraw the kubeconfig Secret, which status to apply (only when
//!    something visible changed, [`status_changed`]), which Events, when to requeue; for a
//!    resource being deleted, its `Terminating` status and what follows the runtime's stop;
//! 3. `execute`: carry the plan out, in order, deciding nothing.
//!
//! Idle costs nothing: reads come from the watch cache, a child is applied only when its cached
//! copy lacks the hash of the desired object, and the status only when it changed; so a
//! resource whose world does not change makes no request.
//!
//! Deletion goes through the finalizer [`FINALIZER`]: the runtime stops the enclave (the StatefulSet
//! is deleted and the pod, whose sidecar terminates the enclave on SIGTERM, must be gone) before
//! the finalizer is removed and the children are garbage-collected. The wait is bounded: once
//! [`STOP_DEADLINE`] has passed since the deletion began, or when the runtime could not stop
//! everything, the finalizer is removed anyway and a Warning Event [`STOP_INCOMPLETE`] says what
//! may be left.
//!
//! Modules: `snapshot` (the reads), `plan` (pure), `execute` (the writes), `attestation`
//! (per-cluster state), `status` (status and Events, pure), `watch` (the watches and the
//! controller's wiring), `error`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt as _};
use nautilus_crds::NautilusMaster;
use tokio::sync::Mutex;

use crate::api::Cache;
use crate::desired::{self, Names};
use crate::events::{EventType, Publisher};
use crate::follow::Followers;
use crate::metrics::Metrics;
use crate::runtime::EnclaveRuntime;

mod attest;
mod attestation;
mod error;
mod execute;
mod plan;
mod snapshot;
mod status;
mod watch;

use attestation::{Attestation, fresh_nonce};
pub use error::{Error, Result};
use execute::Executor;
pub use status::{StatusInput, build_status, status_changed, transitions};
pub use watch::{CRD_NAME, StartupError, check_crd, run};

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
    /// The sidecars followed, whose changes reconcile their resources at once ([`run`] takes
    /// the triggers).
    followers: Followers,
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
            followers: Followers::default(),
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

    /// Drop what is kept about a deleted resource: its attestation state, Event series and
    /// follower.
    fn forget(&self, names: &Names) {
        self.followers
            .follow(&ObjectRef::new(&names.name).within(&names.namespace), None);
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

/// Reconcile one resource (the function given to the [`Controller`](kube::runtime::Controller)).
#[tracing::instrument(skip(nm, ctx), fields(name = %nm.name_any(), namespace = nm.namespace().unwrap_or_default()))]
pub async fn reconcile(nm: Arc<NautilusMaster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = nm
        .namespace()
        .ok_or(Error::Desired(desired::DesiredError::Metadata("namespace")))?;
    let api: Api<NautilusMaster> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, nm.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(nm) => reconcile_once(&nm, &ctx, false).await,
            FinalizerEvent::Cleanup(nm) => reconcile_once(&nm, &ctx, true).await,
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

/// One reconcile of `nm` (`deleting`: the finalizer's cleanup): observe once, plan everything,
/// execute (see the module documentation).
async fn reconcile_once(nm: &NautilusMaster, ctx: &Context, deleting: bool) -> Result<Action> {
    let now = now_ms();
    let names = Names::of(nm)?;
    // The cluster's attestation state, locked for the whole reconcile.
    let cluster = ctx.cluster(&names.key());
    let mut slot = cluster.lock().await;
    let mut snapshot = snapshot::take(ctx, nm, &names, deleting, &mut slot, now).await?;
    ctx.followers
        .follow(&ObjectRef::from_obj(nm), snapshot.sidecar());
    let plan = plan::plan(&mut snapshot, now, fresh_nonce())?;
    Executor {
        ctx,
        nm,
        names: &names,
    }
    .execute(plan, snapshot.attestation())
    .await
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
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;
    use kube::runtime::{reflector, watcher};
    use nautilus_crds::conditions::types;
    use nautilus_crds::{NautilusMasterStatus, Phase};
    use nautilus_protocol::wire::BootConfig;
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
        let (client, server) = api_server();
        let (ctx, mut cache) = cached_context(client, None);
        cache.list(Vec::new(), Vec::new());
        let scenario = server.expect(pending_pod(&nm, Vec::new()));
        let (result, _, received) = reconcile_in(&ctx, &nm, scenario).await;
        assert_eq!(result.expect("ok"), Action::requeue(RESYNC_WITHOUT_SIDECAR));
        check_pending_pod(&nm, &received);
    }

    /// Before the watch cache has its first lists (or in a test without watches) the same
    /// reconcile reads through the API server: the boot ConfigMap and the pod, before it writes.
    #[tokio::test]
    async fn without_the_watch_cache_the_reads_go_to_the_api_server_first() {
        let nm = with_finalizer(mk_nm("demo"));
        let (client, server) = api_server();
        let scenario = server.expect(pending_pod(
            &nm,
            vec![Call::get(CM_PATH), Call::get(POD_PATH)],
        ));
        let (result, _, received) = reconcile_in(&context(client, None), &nm, scenario).await;
        assert_eq!(result.expect("ok"), Action::requeue(RESYNC_WITHOUT_SIDECAR));
        check_pending_pod(&nm, &received);
    }

    /// The calls of the first reconcile of `nm` whose pod is not created yet, after `reads`.
    fn pending_pod(nm: &NautilusMaster, reads: Vec<Call>) -> Vec<Call> {
        let digest = desired::enclave_config(nm).expect("config").digest_hex();
        let mut calls = reads;
        calls.extend([
            apply_child(CM_PATH, "ConfigMap").body(json!({
                "metadata": {"annotations": {desired::DIGEST_KEY: &digest}},
            })),
            apply_child(STS_PATH, "StatefulSet").body(json!({
                "spec": {"template": {"metadata": {"annotations": {desired::DIGEST_KEY: &digest}}}},
            })),
            apply_child(SVC_PATH, "Service"),
            apply_status(
                nm,
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
        ]);
        calls.extend(launching_events());
        calls
    }

    /// What the first reconcile of `nm` with a pending pod applied.
    fn check_pending_pod(nm: &NautilusMaster, received: &[Received]) {
        let digest = desired::enclave_config(nm).expect("config").digest_hex();
        let boot = boot_config_of(find(received, "PATCH", CM_PATH));
        assert_eq!(boot.nonce.len(), 32);
        assert_eq!(boot.config.digest_hex(), digest);
        let status = &find(received, "PATCH", &format!("{NM_PATH}/status")).body["status"];
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
        let existing = desired::boot_config_map(&old, &Names::of(&old).expect("names"), &old_boot)
            .expect("cm");
        let mut nm = old.clone();
        nm.spec.control_plane.https_port = 16443;
        nm.metadata.generation = Some(2);
        let new_digest = desired::enclave_config(&nm).expect("c").digest_hex();
        let (client, server) = api_server();
        let (ctx, mut cache) = cached_context(client, None);
        cache.list(vec![existing], Vec::new());
        let mut calls = vec![
            apply_child(CM_PATH, "ConfigMap").body(json!({
                "metadata": {"annotations": {desired::DIGEST_KEY: &new_digest}},
            })),
            apply_child(STS_PATH, "StatefulSet").body(json!({
                "spec": {"template": {"metadata": {"annotations": {
                    desired::DIGEST_KEY: &new_digest}}}},
            })),
            apply_child(SVC_PATH, "Service").body(json!({"spec": {"ports": [{"port": 16443}]}})),
            apply_status(
                &nm,
                json!({"observedGeneration": 2, "bootConfigDigest": &new_digest}),
            ),
        ];
        calls.extend(launching_events());
        let scenario = server.expect(calls);
        let (result, _, received) = reconcile_in(&ctx, &nm, scenario).await;
        result.expect("ok");
        let boot = boot_config_of(find(&received, "PATCH", CM_PATH));
        assert_eq!(boot.config.digest_hex(), new_digest);
        assert_ne!(
            boot.nonce, old_boot.nonce,
            "a new configuration gets a new nonce"
        );
    }

    /// The children of `demo` once its pod runs, none of them cached with its hash: each is
    /// applied.
    fn running_children() -> Vec<Call> {
        vec![
            apply_child(CM_PATH, "ConfigMap"),
            apply_child(STS_PATH, "StatefulSet"),
            apply_child(SVC_PATH, "Service"),
        ]
    }

    /// `demo`'s pod, running, its sidecar on 127.0.0.1.
    fn pod_running() -> Pod {
        serde_json::from_value(running_pod("127.0.0.1")).expect("pod")
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
        let cm = desired::boot_config_map(&nm, &Names::of(&nm).expect("names"), &boot).expect("cm");
        let enclave = FakeEnclave::new();
        let now = now_ms();
        let sidecar = FakeSidecar::start(&enclave.bundle(digest, &nonce, 1, now)).await;
        let (client, server) = api_server();
        let (ctx, mut cache) = cached_context(client, Some(sidecar.addr.port()));
        cache.list(vec![cm], vec![pod_running()]);
        let mut calls = running_children();
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
            &Names::of(&nm).expect("names"),
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
        let (ctx, mut cache) = cached_context(client, Some(sidecar.addr.port()));
        cache.list(vec![cm], vec![pod_running()]);
        // Challenged at once; status (and the kubeconfig) held for the round trip.
        let scenario = server.expect(running_children());
        let (result, server, _) = reconcile_in(&ctx, &nm, scenario).await;
        assert_eq!(result.expect("ok"), Action::requeue(Duration::from_secs(1)));
        let nonces = sidecar.attested_nonces();
        assert_eq!(nonces.len(), 1, "challenged at once");

        // The enclave answers the fresh challenge: verified again, status written.
        sidecar.set_bundle(&enclave.bundle(digest, &nonces[0], 11, now_ms()));
        let mut calls = running_children();
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
            &Names::of(&nm).expect("names"),
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
        let (ctx, mut cache) = cached_context(client, Some(sidecar.addr.port()));
        // A kubeconfig was published before: it is withdrawn.
        let published: Secret = serde_json::from_value(
            json!({"metadata": {"name": "demo-kubeconfig", "namespace": "team-a"}}),
        )
        .expect("secret");
        cache.list_all(vec![cm], vec![pod_running()], vec![published]);
        let mut calls = running_children();
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
        let (result, _, received) = reconcile_in(&ctx, &nm, scenario).await;
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
        let (ctx, mut cache) = cached_context(client, None);
        cache.list(Vec::new(), Vec::new());
        let (result, _, _) = reconcile_in(&ctx, &nm, scenario).await;
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
        let (ctx, mut cache) = cached_context(client, None);
        cache.list(Vec::new(), Vec::new());
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
        let (ctx, mut cache) = cached_context(client, None);
        cache.list(Vec::new(), Vec::new());
        let (result, _, received) = reconcile_in(&ctx, &nm, scenario).await;
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

    impl CacheWriters {
        /// The watches' first lists: `config_maps` and `pods`, and no other child.
        fn list(&mut self, config_maps: Vec<ConfigMap>, pods: Vec<Pod>) {
            self.list_all(config_maps, pods, Vec::new());
        }

        /// The watches' first lists, with `secrets` too.
        fn list_all(&mut self, config_maps: Vec<ConfigMap>, pods: Vec<Pod>, secrets: Vec<Secret>) {
            listed(&mut self.config_maps, config_maps);
            listed(&mut self.stateful_sets, Vec::new());
            listed(&mut self.services, Vec::new());
            listed(&mut self.secrets, secrets);
            listed(&mut self.pods, pods);
        }
    }

    /// A context whose watch cache the test fills ([`CacheWriters::list`]): the path production
    /// takes once the watches have their first lists.
    fn cached_context(client: Client, sidecar_port: Option<u16>) -> (Arc<Context>, CacheWriters) {
        let ctx = context(client, sidecar_port);
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
        let (ctx, mut writers) = cached_context(client, None);
        writers.list(Vec::new(), Vec::new());

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

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(6), Duration::from_secs(160));
        assert_eq!(backoff(7), Duration::from_secs(300));
        assert_eq!(backoff(100), Duration::from_secs(300));
    }
}
