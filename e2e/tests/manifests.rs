//! What users apply, applied as users apply it: `kubectl` (which reads YAML 1.1) against a real
//! API server, for the generated CRD and every manifest under `config/` (but Argo CD's, which
//! need Argo CD), and the CRD's schema and CEL rules as the API server itself enforces them.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};
use nautilus_e2e::{TestCluster, cluster, install_crd};
use serde_json::{Value, json};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Run kubectl against the test cluster; panics with its output unless it succeeds without a
/// warning.
fn kubectl(cluster: &TestCluster, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs (it is on every development and CI machine)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "kubectl {args:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stderr.contains("Warning:"),
        "kubectl {args:?} warned:\n{stderr}"
    );
    stdout
}

/// Every YAML file under `dir` that holds Kubernetes objects (not kustomizations, not CI helpers).
fn manifests(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("config/ is readable")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            manifests(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml")
            && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        {
            let text = std::fs::read_to_string(&path).expect("manifest is readable");
            let objects: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
                .map(|d| serde::Deserialize::deserialize(d).expect("manifest is YAML"))
                .collect();
            let kinds_ok = objects.iter().all(|o| o.get("kind").is_some());
            // config/argocd holds an Argo CD Application (Argo CD's own CRD) and the health
            // check's fixtures (status snapshots, not objects to apply); config/hack holds CI
            // helpers.
            let foreign = path
                .components()
                .any(|c| c.as_os_str() == "hack" || c.as_os_str() == "argocd");
            if kinds_ok && !foreign && !objects.is_empty() {
                out.push(path);
            }
        }
    }
}

fn namespaces_of(files: &[PathBuf]) -> Vec<String> {
    let mut namespaces = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path).expect("manifest");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let object: Value = serde::Deserialize::deserialize(doc).expect("yaml");
            let ns = object["metadata"]["namespace"].as_str().map(str::to_owned);
            if let Some(ns) = ns.filter(|ns| !namespaces.contains(ns)) {
                namespaces.push(ns);
            }
        }
    }
    namespaces
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_and_every_config_manifest_apply_with_kubectl() {
    let Some(cluster) = cluster("the_crd_and_every_config_manifest_apply_with_kubectl").await
    else {
        return;
    };
    let root = workspace_root();
    // The copy kustomize installs, applied client-side first (the path an older kubectl or a
    // plain `kubectl apply -f` takes; the last-applied annotation must fit), as a dry run so the
    // server-side apply below creates the object the README's first command creates.
    kubectl(
        &cluster,
        &[
            "apply",
            "--dry-run=server",
            "-f",
            root.join("config/crd/nautilusmaster.yaml")
                .to_str()
                .expect("utf8"),
        ],
    );
    let crd = root.join(nautilus_crds::CRD_PATH);
    kubectl(
        &cluster,
        &["apply", "--server-side", "-f", crd.to_str().expect("utf8")],
    );
    kubectl(
        &cluster,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/nautilusmasters.nautilus.k3s-daas.io",
        ],
    );
    // The API server publishes the CRD's OpenAPI a moment after it is established; then the
    // JWK modulus field reads as the string field `n` (YAML 1.1 would have made it `false`).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let explained = loop {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args(["explain", "nautilusmaster.spec.auth.zkLogin.jwks"])
            .output()
            .expect("kubectl runs");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl explain never found the CRD: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert!(
        explained
            .lines()
            .any(|l| l.trim_start().starts_with("n\t<string>")),
        "{explained}"
    );

    let mut files = Vec::new();
    manifests(&root.join("config"), &mut files);
    files.retain(|f| !f.ends_with("config/crd/nautilusmaster.yaml"));
    assert!(files.len() >= 8, "config/ manifests found: {files:?}");
    // Namespaces the manifests name are created for real (only those that did not exist, and
    // removed again); every object is then applied with a server-side dry run, which parses,
    // defaults, validates (strict field validation, CEL) and admits it without keeping it.
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let mut created = Vec::new();
    for ns in namespaces_of(&files) {
        if api.get_opt(&ns).await.expect("get namespace").is_none() {
            // --save-config: as if applied, so config/default/namespace.yaml applies cleanly.
            kubectl(&cluster, &["create", "namespace", &ns, "--save-config"]);
            created.push(ns);
        }
    }
    for file in &files {
        let out = kubectl(
            &cluster,
            &[
                "apply",
                "--dry-run=server",
                "-f",
                file.to_str().expect("utf8"),
            ],
        );
        assert!(
            !out.trim().is_empty(),
            "{}: nothing applied",
            file.display()
        );
    }
    for ns in created {
        let _ = api.delete(&ns, &DeleteParams::default()).await;
    }
}

fn sample() -> Value {
    let text = std::fs::read_to_string(workspace_root().join("config/samples/nautilusmaster.yaml"))
        .expect("sample");
    let mut sample: Value = serde_yaml::from_str(&text).expect("sample is YAML");
    sample["metadata"]["namespace"] = json!("default");
    sample
}

fn set(object: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    object
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("parent exists")
        .insert(key.to_owned(), value);
}

/// The API server's own answer to creating `object` (server-side dry run, strict field
/// validation): `Ok` or the refusal message.
async fn create(client: &kube::Client, object: &Value) -> Result<(), String> {
    let request = http::Request::post(
        "/apis/nautilus.k3s-daas.io/v1alpha1/namespaces/default/nautilusmasters?dryRun=All&fieldValidation=Strict",
    )
    .header("content-type", "application/json")
    .body(serde_json::to_vec(object).expect("json"))
    .expect("request");
    client
        .request::<Value>(request)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_enforces_the_crd_schema_and_cel_rules() {
    let Some(cluster) = cluster("the_api_server_enforces_the_crd_schema_and_cel_rules").await
    else {
        return;
    };
    install_crd(&cluster.client).await;
    create(&cluster.client, &sample())
        .await
        .expect("the sample is admitted");

    let tier = |name: &str, stake: u64| json!({"name": name, "minStakeMist": stake});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/spec/controlPlane/serviceCIDR",
            json!("10.42.128.0/20"),
            "clusterCIDR and serviceCIDR must not overlap",
        ),
        (
            "/spec/controlPlane/serviceCIDR",
            json!("10.0.0.0/8"),
            "clusterCIDR and serviceCIDR must not overlap",
        ),
        (
            "/spec/controlPlane/clusterDNS",
            json!("10.42.0.10"),
            "clusterDNS must be an address inside serviceCIDR",
        ),
        (
            "/spec/controlPlane/clusterCIDR",
            json!("10.42.0.0/33"),
            "clusterCIDR must be a CIDR",
        ),
        (
            "/spec/controlPlane/bindAddress",
            json!("localhost"),
            "bindAddress must be an IPv4 or IPv6 address",
        ),
        (
            "/spec/auth/tiers",
            json!([tier("a", 10), tier("b", 20)]),
            "strictly descending",
        ),
        ("/spec/auth/tiers", json!([]), "spec.auth.tiers"),
        ("/spec/enclave/pcr0", json!("abcd"), "spec.enclave.pcr0"),
        (
            "/spec/enclave/enclaveCID",
            json!(3),
            "spec.enclave.enclaveCID",
        ),
        (
            "/spec/enclave/hugepageSize",
            json!("4Ki"),
            "Unsupported value",
        ),
        (
            "/spec/controlPlane/tlsMinVersion",
            json!("VersionTLS11"),
            "Unsupported value",
        ),
        (
            "/spec/auth/suiRpcURL",
            json!("http://fullnode.mainnet.sui.io"),
            "spec.auth.suiRpcURL",
        ),
        (
            "/spec/health/probeIntervalSeconds",
            json!(200),
            "startupTimeoutSeconds must be longer",
        ),
        (
            "/spec/attestation/refreshIntervalSeconds",
            json!(1000),
            "maxDocumentAgeSeconds must be longer",
        ),
        (
            "/spec/enclave/memoryMiB",
            json!(128),
            "spec.enclave.memoryMiB",
        ),
        (
            "/spec/enclave/cpus",
            json!(2),
            "unknown field \"spec.enclave.cpus\"",
        ),
        // Values the agent would refuse at boot (ConfigRefused), refused here first.
        (
            "/spec/controlPlane/cipherSuites",
            json!(["TLS_FAKE_SUITE"]),
            "spec.controlPlane.cipherSuites[0]",
        ),
        (
            "/spec/controlPlane/dataDir",
            json!("/var/lib/a\u{a0}b"),
            "spec.controlPlane.dataDir",
        ),
        (
            "/spec/auth/stakeType",
            json!("0x2::coin::Coin<0x2::sui::SUI>"),
            "needs stakeAmountField",
        ),
    ];
    let mut wrong = Vec::new();
    for (pointer, value, expected) in cases {
        let mut object = sample();
        set(&mut object, pointer, value.clone());
        match create(&cluster.client, &object).await {
            Ok(()) => wrong.push(format!("{pointer} = {value}: admitted")),
            Err(message) if message.contains(expected) => {}
            Err(message) => wrong.push(format!(
                "{pointer} = {value}: refused, but without {expected:?}: {message}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
