//! The e2e worker ([`nautilus_e2e::worker`]) against a plain throwaway API server: a real
//! kubelet, containerd, runc and CNI bridge in namespaces of the test's own register a Node that
//! goes `Ready`, run a pod (scheduled by kube-scheduler when there is one, else bound by
//! `spec.nodeName`), answer `kubectl logs` and `kubectl exec` (the API server dials the kubelet
//! on the node IP), the pod reaches the host end where the API server is relayed and, through
//! the `kubernetes` Service's cluster IP routed by the worker, authenticates as its own
//! ServiceAccount at `kubernetes.default.svc`; stopping the worker leaves no process, namespace,
//! veth, cgroup or mount behind.
//!
//! Prints `measured:` lines (kubelet start to Node Ready, pod create to Running): figures for
//! the notes, not assertions.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use nautilus_e2e::envtest::{Assets, ControlPlane};
use nautilus_e2e::kubectl;
use nautilus_e2e::worker::{self, KubeletSettings, Worker, WorkerSettings};

const TEST: &str = "worker_on_a_plain_api_server";

/// A base KubeletConfiguration as a product would write it: webhook authentication (client
/// certificates from `ca`) and authorization, no certificate rotation.
fn base_kubelet_config(ca: &Path) -> String {
    serde_json::json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": ca},
        },
        "authorization": {"mode": "Webhook"},
        "rotateCertificates": false,
        "clusterDomain": "cluster.local",
        "staticPodPath": "/etc/kubernetes/manifests",
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_kubelet_on_a_plain_api_server_runs_a_pod_and_leaves_nothing() {
    if !worker::available(TEST) {
        return;
    }
    let assets = match Assets::find() {
        Ok(assets) => assets,
        Err(reason) => {
            assert!(
                !nautilus_e2e::required(),
                "e2e {TEST}: {}=1 but {reason}",
                nautilus_e2e::REQUIRE_ENV
            );
            println!("skipped: e2e {TEST}: {reason}");
            return;
        }
    };
    if nautilus_e2e::envtest::on_path("kubectl").is_none() {
        assert!(!nautilus_e2e::required(), "e2e {TEST}: no kubectl on PATH");
        println!("skipped: e2e {TEST}: no kubectl on PATH");
        return;
    }
    let mut plane = ControlPlane::start(&assets).await.expect("control plane");
    let scheduled = plane.start_scheduler(&assets).expect("kube-scheduler");
    let client = plane.client().await.expect("admin client");
    let dir = tempfile::tempdir().expect("tempdir");
    let node = format!("nautilus-worker-{}", std::process::id());

    // kubectl (static) in the image: a pod's TLS client for the API server.
    let kubectl_binary = nautilus_e2e::envtest::on_path("kubectl").expect("kubectl");
    let mut settings = WorkerSettings::new(dir.path().join("worker"), &node);
    settings.image_binaries = vec![kubectl_binary];
    let mut worker = Worker::start(settings).await.expect("start the worker");
    println!(
        "worker {node}: node IP {}, host end {}, directory {}",
        worker.node_ip(),
        worker.host_ip(),
        worker.dir().display()
    );

    // The kubelet reaches the API server through the host end of its veth.
    let port: u16 = plane
        .server
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("API server port");
    let at = worker.expose(port).await.expect("relay the API port");
    let kubeconfig = dir.path().join("kubelet.kubeconfig");
    worker::rewrite_kubeconfig(
        &plane.kubeconfig,
        &kubeconfig,
        &format!("https://{at}"),
        Some("localhost"),
    )
    .expect("kubelet kubeconfig");
    let base = dir.path().join("kubelet-base.yaml");
    std::fs::write(&base, base_kubelet_config(&plane.ca_file())).expect("base config");
    worker
        .start_kubelet(&KubeletSettings {
            kubeconfig,
            config: base,
            extra_args: Vec::new(),
        })
        .expect("start the kubelet");
    let ready = worker
        .wait_node_ready(&client, Duration::from_secs(180))
        .await
        .expect("the Node goes Ready");
    println!(
        "measured: kubelet start to Node Ready: {:.1} s",
        ready.as_secs_f64()
    );

    // No kube-proxy: the worker routes the `kubernetes` Service's cluster IP to the relayed API
    // port itself.
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "default");
    let cluster_ip: std::net::Ipv4Addr = services
        .get("kubernetes")
        .await
        .expect("the kubernetes Service")
        .spec
        .and_then(|s| s.cluster_ip)
        .and_then(|ip| ip.parse().ok())
        .expect("its cluster IP");
    worker
        .route_service(cluster_ip, 443, at)
        .expect("route the kubernetes Service");
    // The pod's ServiceAccount must exist before the pod is admitted.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(60);
    while accounts.get_opt("default").await.expect("get SA").is_none() {
        assert!(Instant::now() < deadline, "no default ServiceAccount");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A pod: echoes, then sleeps until SIGTERM.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut spec = serde_json::json!({
        "containers": [{
            "name": "main",
            "image": worker::IMAGE,
            "imagePullPolicy": "Never",
            "command": ["sh", "-c",
                "echo hello from $(hostname); trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"],
        }],
        "terminationGracePeriodSeconds": 2,
        "hostAliases": [{"ip": cluster_ip.to_string(), "hostnames": ["kubernetes.default.svc"]}],
    });
    if !scheduled {
        spec["nodeName"] = node.clone().into();
    }
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hello"},
        "spec": spec,
    }))
    .expect("pod");
    let created = Instant::now();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");
    let deadline = Instant::now() + Duration::from_secs(120);
    let running = loop {
        let pod = pods.get("hello").await.expect("get the pod");
        let status = pod.status.clone().unwrap_or_default();
        if status.phase.as_deref() == Some("Running") {
            break pod;
        }
        assert!(
            Instant::now() < deadline,
            "pod not Running within 120 s: {}\nkubelet log:\n{}",
            serde_json::to_string_pretty(&status).unwrap_or_default(),
            nautilus_e2e::envtest::log_tail(&worker.kubelet_log())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "measured: pod create to Running ({}): {:.1} s",
        if scheduled {
            "kube-scheduler"
        } else {
            "spec.nodeName"
        },
        created.elapsed().as_secs_f64()
    );
    let spec = running.spec.clone().unwrap_or_default();
    assert_eq!(spec.node_name.as_deref(), Some(node.as_str()));
    let pod_ip = running
        .status
        .and_then(|s| s.pod_ip)
        .expect("the pod has an IP");
    assert!(
        pod_ip.starts_with("10.213.128."),
        "pod IP {pod_ip} outside the worker's range"
    );

    // The API server dials the kubelet on the node IP for logs and exec.
    let admin = &plane.kubeconfig;
    let deadline = Instant::now() + Duration::from_secs(30);
    let logs = loop {
        let (ok, text) = kubectl(admin, &["logs", "-n", "default", "hello"]);
        if ok && text.contains("hello from hello") {
            break text;
        }
        assert!(Instant::now() < deadline, "kubectl logs: {text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("kubectl logs: {}", logs.trim());
    let (ok, text) = kubectl(
        admin,
        &[
            "exec",
            "-n",
            "default",
            "hello",
            "--",
            "sh",
            "-c",
            "echo exec $((6 * 7))",
        ],
    );
    assert!(ok && text.contains("exec 42"), "kubectl exec: {text}");

    // The pod reaches the host end (masqueraded to the node IP), where the API server is
    // relayed: the path a pod takes to a control plane published there. Plain HTTP to the TLS
    // port, so that the API server itself answers (busybox's TLS client offers no signature
    // algorithm that Go 1.25's TLS 1.2 server accepts).
    let url = format!("http://{at}/readyz");
    let (_, text) = kubectl(
        admin,
        &[
            "exec", "-n", "default", "hello", "--", "wget", "-q", "-O", "-", &url,
        ],
    );
    assert!(
        text.contains("400 Bad Request"),
        "the pod reaching {url}: {text}"
    );

    // The pod reaches the API server through kubernetes.default.svc with its own
    // ServiceAccount token, over TLS verified against the cluster's CA.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "kubectl auth whoami -o jsonpath='{{.status.userInfo.username}}' \
         --server=https://kubernetes.default.svc --token=\"$(cat {sa}/token)\" \
         --certificate-authority={sa}/ca.crt"
    );
    let (ok, text) = kubectl(
        admin,
        &["exec", "-n", "default", "hello", "--", "sh", "-c", &script],
    );
    assert!(
        ok && text.trim() == "system:serviceaccount:default:default",
        "the pod's own identity through kubernetes.default.svc: {text}"
    );

    // What stop() must take down is there now: containerd's shims (named by the socket under the
    // worker's directory) and processes in the worker's cgroup tree.
    let before = worker.leftovers();
    assert!(
        before.iter().any(|l| l.contains("containerd-shim-runc-v2")),
        "no shim seen before stop: {before:#?}"
    );
    assert!(
        before.iter().any(|l| l.contains("cgroup tree")),
        "no process seen in the cgroup tree before stop: {before:#?}"
    );
    let stopping = Instant::now();
    worker.stop();
    println!(
        "worker stopped in {:.1} s",
        stopping.elapsed().as_secs_f64()
    );
    let left = worker.leftovers();
    assert!(left.is_empty(), "the worker left: {left:#?}");
    drop(plane);
}
