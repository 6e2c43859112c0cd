//! Issue 23 end to end: a real worker node joins a NautilusMaster's enclave control plane with a
//! worker-tier seal token, and a workload runs on it.
//!
//! The operator runs the `kubernetes` distribution on real binaries in the local runtime, its
//! enclave in an empty network namespace, publishing the API port on the host end of the
//! worker's veth (so that address is the measured `advertiseAddress`, the in-cluster
//! `kubernetes` endpoint). The worker ([`nautilus_e2e::worker`]: containerd, runc, the CNI bridge
//! and a kubelet in namespaces of the test's own) is prepared by `nautilusctl join`, which
//! verifies the enclave first, and its kubelet authenticates with the exec plugin `join` wrote.
//! The test shows, in order:
//! - the Node `Ready` as `sui-<address prefix>`;
//! - a Deployment's pod scheduled by the enclave's scheduler and `Running` on it;
//! - `kubectl logs` and `kubectl exec` through the enclave's API server (which reaches the
//!   kubelet only through the sidecar's egress proxy, and verifies its CSR-issued serving
//!   certificate) with an admin-tier token;
//! - the pod reaching the API server at `kubernetes.default.svc` with its own ServiceAccount
//!   token, TLS verified against the cluster's CA (no kube-proxy here: the worker routes the
//!   Service's cluster IP to the endpoint the `kubernetes` EndpointSlice names);
//! - a reader-tier token cannot create pods;
//! - after the worker's stake is withdrawn on the Sui fixture, the Node goes `NotReady`
//!   (`Unknown`) within the stake TTL plus the API server's caches plus the node monitor grace
//!   period;
//! - deleting the NautilusMaster and stopping the worker leave no process, namespace or mount.
//!
//! Prints `measured:` lines (join, kubelet start to Ready, pod create to Running, NotReady after
//! withdrawal): figures for the notes, not assertions.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{ListParams, PostParams};
use nautilus_e2e::worker::{self, Worker, WorkerSettings};
use nautilus_e2e::{Harness, WAIT, cluster, is, kubectl};

const TEST: &str = "a_worker_joins_with_a_seal_token_and_runs_a_workload";
const NAME: &str = "workers";
/// The spec's `stakeCacheTTLSeconds` here: short, so the withdrawal shows within the test.
const STAKE_TTL: u64 = 5;

/// `kubectl` until it succeeds with output containing `want`, or `within` passed.
async fn kubectl_until(kubeconfig: &Path, args: &[&str], want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (ok, text) = kubectl(kubeconfig, args);
        if ok && text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {}: {text}",
            args.join(" ")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_joins_with_a_seal_token_and_runs_a_workload() {
    if !worker::available(TEST) {
        return;
    }
    let Some(kubectl_binary) = nautilus_e2e::envtest::on_path("kubectl") else {
        assert!(!nautilus_e2e::required(), "e2e {TEST}: no kubectl on PATH");
        println!("skipped: e2e {TEST}: no kubectl on PATH");
        return;
    };
    let Some(cluster) = cluster(TEST).await else {
        return;
    };
    let scratch = tempfile::tempdir().expect("tempdir");

    // The worker's machine first: its veth's host end is where the control plane is published.
    let mut settings = WorkerSettings::new(scratch.path().join("worker"), "placeholder");
    settings.image_binaries = vec![kubectl_binary];
    // The node name is the worker key's: known once the harness made the key, so the worker
    // starts with a placeholder and the kubelet gets the real name from `join`.
    let mut worker = Worker::start(settings).await.expect("start the worker");
    let h = Harness::start_published(cluster, TEST, worker.host_ip().into()).await;
    if h.distribution != "kubernetes" {
        assert!(
            !nautilus_e2e::required(),
            "e2e {TEST}: kube-scheduler or kube-controller-manager missing"
        );
        println!(
            "skipped: e2e {TEST}: a worker needs the `kubernetes` distribution's real scheduler and controller manager"
        );
        h.finish().await;
        return;
    }

    let mut spec = h.development_spec();
    spec.auth.stake_cache_ttl_seconds = STAKE_TTL as u32;
    h.create(NAME, spec).await;
    let nm = h
        .wait_for(NAME, "Ready=True", WAIT, |nm| is(nm, "Ready", "True"))
        .await;
    let endpoint = nm
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .expect("status.endpoint");
    assert!(
        endpoint.contains(&worker.host_ip().to_string()),
        "published on the worker's host end: {endpoint}"
    );

    // `nautilusctl join` (verify the enclave, write the kubelet's files), then the kubelet.
    let joined = Instant::now();
    let summary = h.join_worker(NAME, &mut worker, scratch.path()).await;
    let node_name = nautilus_seal::node_name(&h.worker.address());
    assert_eq!(summary["nodeName"], node_name.as_str(), "{summary:#}");
    let admin_token = h
        .staker
        .mint_for(
            &format!("{}/{NAME}", h.namespace),
            nautilus_seal::unix_now(),
            900,
        )
        .expect("token");
    let enclave = h.client_with_token(NAME, &admin_token).await;
    let nodes: Api<Node> = Api::all(enclave.clone());
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(node) = nodes.get_opt(&node_name).await.expect("get node")
            && ready_status(&node).as_deref() == Some("True")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Node {node_name} did not go Ready\nkubelet log:\n{}",
            nautilus_e2e::envtest::log_tail(&worker.kubelet_log())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "measured: nautilusctl join to Node Ready (verify, files, kubelet start, registration through the sidecar): {:.1} s",
        joined.elapsed().as_secs_f64()
    );

    // The admin's kubectl, a static admin-tier token in the published kubeconfig.
    let admin = h.dir.path().join("admin.kubeconfig");
    std::fs::write(&admin, h.kubeconfig_with_token(NAME, &admin_token).await).expect("write");

    // A Deployment, scheduled by the enclave's scheduler onto the worker.
    let deployment = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {
                "metadata": {"labels": {"app": "hello"}},
                "spec": {
                    "containers": [{
                        "name": "main", "image": worker::IMAGE, "imagePullPolicy": "Never",
                        "command": ["sh", "-c",
                            "echo hello from $(hostname); trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"],
                    }],
                    "terminationGracePeriodSeconds": 2,
                    "hostAliases": [{"ip": "10.43.0.1", "hostnames": ["kubernetes.default.svc"]}],
                },
            },
        },
    });
    let manifest = h.dir.path().join("deployment.json");
    std::fs::write(&manifest, deployment.to_string()).expect("manifest");
    // The default ServiceAccount appears shortly after the controller manager starts.
    kubectl_until(
        &admin,
        &["get", "serviceaccount", "default", "-n", "default"],
        "default",
        WAIT,
    )
    .await;
    let created = Instant::now();
    let (ok, text) = kubectl(&admin, &["apply", "-f", &manifest.display().to_string()]);
    assert!(ok, "kubectl apply: {text}");
    let pods: Api<Pod> = Api::namespaced(enclave.clone(), "default");
    let deadline = Instant::now() + WAIT;
    let pod = loop {
        let list = pods
            .list(&ListParams::default().labels("app=hello"))
            .await
            .expect("list pods");
        if let Some(pod) = list
            .items
            .into_iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        {
            break pod;
        }
        assert!(
            Instant::now() < deadline,
            "no Running pod\nkubelet log:\n{}",
            nautilus_e2e::envtest::log_tail(&worker.kubelet_log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "measured: Deployment pod create to Running through the enclave's control plane: {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let pod_name = pod.metadata.name.clone().expect("pod name");
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(node_name.as_str()),
        "scheduled onto the worker"
    );

    // logs and exec: the API server dials the kubelet through the sidecar's egress proxy and
    // verifies its serving certificate (issued through a CSR the agent approved).
    let logs = kubectl_until(
        &admin,
        &["logs", "-n", "default", &pod_name],
        &format!("hello from {pod_name}"),
        Duration::from_secs(60),
    )
    .await;
    println!("kubectl logs: {}", logs.trim());
    let (ok, text) = kubectl(
        &admin,
        &[
            "exec",
            "-n",
            "default",
            &pod_name,
            "--",
            "sh",
            "-c",
            "echo exec $((6 * 7))",
        ],
    );
    assert!(ok && text.contains("exec 42"), "kubectl exec: {text}");

    // The in-cluster endpoint: the `kubernetes` EndpointSlice names the published address and
    // port. The worker routes the Service's cluster IP there (kube-proxy's job).
    let slices: Api<EndpointSlice> = Api::namespaced(enclave.clone(), "default");
    let slice = slices.get("kubernetes").await.expect("kubernetes slice");
    let address = slice
        .endpoints
        .as_deref()
        .and_then(<[_]>::first)
        .and_then(|e| e.addresses.first())
        .cloned()
        .expect("an endpoint address");
    let port = slice
        .ports
        .as_ref()
        .and_then(|p| p[0].port)
        .expect("endpoint port");
    assert_eq!(address, worker.host_ip().to_string(), "{slice:?}");
    println!("kubernetes EndpointSlice: {address}:{port}");
    let target = std::net::SocketAddr::new(worker.host_ip().into(), port as u16);
    worker
        .route_service("10.43.0.1".parse().expect("ip"), 443, target)
        .expect("route the kubernetes Service");
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "kubectl auth whoami -o jsonpath='{{.status.userInfo.username}}' \
         --server=https://kubernetes.default.svc --token=\"$(cat {sa}/token)\" \
         --certificate-authority={sa}/ca.crt"
    );
    let (ok, text) = kubectl(
        &admin,
        &[
            "exec", "-n", "default", &pod_name, "--", "sh", "-c", &script,
        ],
    );
    assert!(
        ok && text.trim() == "system:serviceaccount:default:default",
        "the pod's own identity through kubernetes.default.svc: {text}"
    );

    // A reader-tier token cannot create pods.
    let reader_token = h
        .reader
        .mint_for(
            &format!("{}/{NAME}", h.namespace),
            nautilus_seal::unix_now(),
            600,
        )
        .expect("token");
    let reader = h.client_with_token(NAME, &reader_token).await;
    let denied = Api::<Pod>::namespaced(reader, "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "metadata": {"name": "by-reader"},
                "spec": {"containers": [{"name": "c", "image": worker::IMAGE}]},
            }))
            .expect("pod"),
        )
        .await
        .expect_err("a reader creates a pod");
    assert!(
        matches!(&denied, kube::Error::Api(e) if e.code == 403),
        "{denied}"
    );

    // Stake is live: withdrawn on chain, the node's tokens stop authenticating, its Lease
    // lapses and the node controller marks it NotReady.
    let withdrawn = Instant::now();
    h.chain.withdraw(h.worker.address());
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let node = nodes.get(&node_name).await.expect("get node");
        if ready_status(&node).as_deref() != Some("True") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Node stayed Ready 180 s after the stake was withdrawn"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "measured: stake withdrawn -> Node NotReady in {:.1} s (stake TTL {STAKE_TTL} s, webhook cache, 10 s union cache, node monitor grace period)",
        withdrawn.elapsed().as_secs_f64()
    );

    // Teardown: the NautilusMaster (every enclave process, its namespace), then the worker.
    h.finish().await;
    worker.stop();
    let left = worker.leftovers();
    assert!(left.is_empty(), "the worker left: {left:#?}");
}
