//! `nautilusctl join` as a worker's operator runs it, against a control plane the operator
//! started on a real API server: a refused verification (a wrong PCR) writes nothing, not even
//! over a previous join's files; a verified one writes the kubelet's kubeconfig, the
//! KubeletConfiguration and the attested CA, whose exec plugin, run as the kubelet runs it (no
//! environment), mints an ExecCredential the enclave's API server admits.
//!
//! The kubelet itself, with containerd, is the worker e2e's; here, the real API server shows
//! that the node name `join` prints is one a kubelet can register (name and hostname label).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use nautilus_e2e::{
    Harness, WAIT, client_from_kubeconfig, cluster, is, nautilusctl, self_subject_review,
};
use nautilus_seal::Keystore;

/// One run of `nautilusctl join demo … --output json`: exit code and the JSON summary.
async fn join(
    h: &Harness,
    keystore: &Path,
    out: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value) {
    let mut cmd = tokio::process::Command::new(nautilusctl());
    cmd.arg("join")
        .arg("demo")
        .arg("-n")
        .arg(&h.namespace)
        .arg("--kubeconfig")
        .arg(&h.cluster.kubeconfig)
        .arg("--allow-simulated")
        .arg("--keystore")
        .arg(keystore)
        .arg("--address")
        .arg(h.staker.address().to_string())
        .arg("--out")
        .arg(out)
        .args(["--cgroup-driver", "cgroupfs", "--cgroup-v1"])
        .args(["--node-ip", "10.213.0.2", "--output", "json"])
        .args(extra)
        .env_remove("NAUTILUS_SUI_KEYSTORE")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("nautilusctl join ends within 60 s")
        .expect("nautilusctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("join printed no JSON ({e}): {stdout}\nstderr: {stderr}"));
    (output.status.code().unwrap_or(-1), summary)
}

/// Every file under `dir` with its content, in order.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| (e.path(), std::fs::read(e.path()).unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn yaml(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_writes_the_node_files_only_for_a_verified_control_plane() {
    let Some(cluster) =
        cluster("join_writes_the_node_files_only_for_a_verified_control_plane").await
    else {
        return;
    };
    let ctl = nautilusctl();
    let h = Harness::start(cluster, "join", None).await;
    h.create("demo", h.development_spec()).await;
    h.wait_for("demo", "Ready=True", WAIT, |nm| is(nm, "Ready", "True"))
        .await;

    // The worker's keystore holds two keys; --address picks the staked one, not the first.
    let keystore = h.dir.path().join("worker.keystore");
    std::fs::write(
        &keystore,
        Keystore::from_keys(vec![h.reader.clone(), h.staker.clone()]).to_json(),
    )
    .expect("write keystore");
    std::fs::set_permissions(&keystore, std::fs::Permissions::from_mode(0o600))
        .expect("chmod keystore");
    let out = h.dir.path().join("worker");

    // A control plane that is not the expected image: refused, and nothing is written.
    let other = "aa".repeat(48);
    let (code, summary) = join(&h, &keystore, &out, &["--pcr0", &other]).await;
    assert_eq!(code, 1, "{summary:#}");
    assert_eq!(summary["verified"], false, "{summary:#}");
    assert_eq!(summary["reason"], "PCRMismatch", "{summary:#}");
    assert!(!out.exists(), "a refused join created {}", out.display());

    // Verified: the three files, and the node's name and command.
    let started = std::time::Instant::now();
    let (code, summary) = join(&h, &keystore, &out, &[]).await;
    println!(
        "nautilusctl join: verified and written in {:?}",
        started.elapsed()
    );
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(summary["verified"], true, "{summary:#}");
    let node_name = nautilus_seal::tier::node_name(&h.staker.address());
    assert_eq!(summary["nodeName"], node_name.as_str());
    assert_eq!(summary["address"], h.staker.address().to_string());
    let kubeconfig = out.join("kubeconfig");
    let kubelet_config = out.join("kubelet-config.yaml");
    let ca_file = out.join("ca.crt");
    assert_eq!(summary["kubeconfig"], kubeconfig.display().to_string());
    assert_eq!(
        summary["kubeletConfig"],
        kubelet_config.display().to_string()
    );
    assert_eq!(summary["caFile"], ca_file.display().to_string());
    assert_eq!(
        summary["kubeletCommand"],
        serde_json::json!([
            "kubelet",
            format!("--config={}", kubelet_config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={node_name}"),
            "--node-ip=10.213.0.2",
        ])
    );
    let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(
        mode(&kubeconfig),
        0o600,
        "the kubeconfig names the keystore"
    );

    // The kubeconfig: the endpoint, the attested CA (the same bytes as ca.crt), the exec plugin.
    let config = yaml(&kubeconfig);
    let cluster_entry = &config["clusters"][0]["cluster"];
    assert_eq!(cluster_entry["server"], summary["endpoint"]);
    let ca_pem = std::fs::read_to_string(&ca_file).expect("ca.crt");
    assert!(
        ca_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{ca_pem}"
    );
    let embedded = base64::engine::general_purpose::STANDARD
        .decode(
            cluster_entry["certificate-authority-data"]
                .as_str()
                .expect("certificate-authority-data"),
        )
        .expect("base64");
    assert_eq!(embedded, ca_pem.as_bytes());
    let exec = &config["users"][0]["user"]["exec"];
    assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(exec["interactiveMode"], "Never");
    assert_eq!(exec["provideClusterInfo"], false);
    assert_eq!(exec["command"], ctl.display().to_string());
    let text = std::fs::read_to_string(&kubeconfig).expect("kubeconfig");
    assert!(
        !text.contains(&h.staker.to_keystore_entry()),
        "the kubeconfig holds the key itself"
    );

    // The KubeletConfiguration.
    let kc = yaml(&kubelet_config);
    assert_eq!(kc["apiVersion"], "kubelet.config.k8s.io/v1beta1");
    assert_eq!(kc["kind"], "KubeletConfiguration");
    assert_eq!(
        kc["authentication"]["x509"]["clientCAFile"],
        ca_file.display().to_string()
    );
    assert_eq!(kc["authentication"]["webhook"]["enabled"], true);
    assert_eq!(kc["authentication"]["anonymous"]["enabled"], false);
    assert_eq!(kc["authorization"]["mode"], "Webhook");
    assert_eq!(kc["serverTLSBootstrap"], true);
    assert_eq!(kc["rotateCertificates"], false);
    assert_eq!(kc["registerNode"], true);
    assert_eq!(kc["clusterDNS"], serde_json::json!(["10.43.0.10"]));
    assert_eq!(kc["clusterDomain"], "cluster.local");
    assert_eq!(kc["cgroupDriver"], "cgroupfs");
    assert_eq!(kc["failCgroupV1"], false);

    // The exec plugin as the kubelet runs it: the command and arguments of the file, with no
    // environment (no NAUTILUS_SUI_KEYSTORE, no HOME).
    let args: Vec<String> = exec["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect();
    let output = std::process::Command::new(exec["command"].as_str().expect("command"))
        .args(&args)
        .env_clear()
        .output()
        .expect("the exec plugin runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let credential: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("an ExecCredential");
    assert_eq!(credential["apiVersion"], "client.authentication.k8s.io/v1");
    assert_eq!(credential["kind"], "ExecCredential");
    assert!(credential["status"]["expirationTimestamp"].is_string());
    let token = credential["status"]["token"].as_str().expect("a token");
    let checked = std::process::Command::new(&ctl)
        .args(["token", "verify", token, "--output", "json", "--audience"])
        .arg(format!("{}/demo", h.namespace))
        .output()
        .expect("nautilusctl token verify runs");
    let checked: serde_json::Value = serde_json::from_slice(&checked.stdout).expect("json");
    assert_eq!(checked["valid"], true, "{checked:#}");
    assert_eq!(checked["address"], h.staker.address().to_string());

    // The kubeconfig used as the kubelet uses it: TLS to the attested CA only, the plugin's
    // token admitted by the enclave's API server.
    let enclave = client_from_kubeconfig(&text).await;
    let review = self_subject_review(&enclave)
        .await
        .expect("the enclave admits the token the kubelet's exec plugin mints");
    let username = review["status"]["userInfo"]["username"]
        .as_str()
        .expect("username");
    println!("the kubelet's kubeconfig authenticates as {username}");
    assert!(
        username == format!("sui:{}", h.staker.address())
            || username == format!("system:node:{node_name}"),
        "{review:#}"
    );

    // The text a person reads: the node name and the kubelet's command line.
    let text_out = h.dir.path().join("worker-text");
    let output = tokio::process::Command::new(&ctl)
        .args(["join", "demo", "-n", &h.namespace, "--allow-simulated"])
        .arg("--kubeconfig")
        .arg(&h.cluster.kubeconfig)
        .arg("--keystore")
        .arg(&keystore)
        .arg("--out")
        .arg(&text_out)
        .env_remove("NAUTILUS_SUI_KEYSTORE")
        .output()
        .await
        .expect("nautilusctl join runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    println!("{printed}");
    // Without --address: the keystore's first key, the reader's.
    let reader_node = nautilus_seal::tier::node_name(&h.reader.address());
    assert!(
        printed.contains(&format!("node name:         {reader_node}"))
            && printed.contains(&format!("--hostname-override={reader_node}"))
            && printed.contains(&format!(
                "--kubeconfig={}",
                text_out.join("kubeconfig").display()
            )),
        "{printed}"
    );

    // A later refused join leaves the node's files as they were.
    let before = snapshot(&out);
    let (code, summary) = join(&h, &keystore, &out, &["--pcr0", &other]).await;
    assert_eq!((code, summary["reason"].as_str()), (1, Some("PCRMismatch")));
    assert_eq!(
        snapshot(&out),
        before,
        "a refused join changed {}",
        out.display()
    );

    // The name is one a kubelet can register: a real API server accepts it as a Node's name
    // and as its kubernetes.io/hostname label (which the kubelet sets to the same string);
    // the full 64-digit address would not fit the label's 63 characters. Only on a throwaway
    // control plane: no Node objects on a user's cluster.
    if h.cluster.plane.is_some() {
        node_names_register(&h.client, &node_name, &h.staker.address()).await;
    }

    h.finish().await;
}

/// Create and delete a Node named `node_name` with its hostname label; and fail to create one
/// named after the whole address.
async fn node_names_register(
    client: &kube::Client,
    node_name: &str,
    address: &nautilus_seal::Address,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = |name: &str| -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
        }))
        .expect("node")
    };
    nodes
        .create(&PostParams::default(), &node(node_name))
        .await
        .expect("the API server accepts the node name");
    nodes
        .delete(node_name, &DeleteParams::default())
        .await
        .expect("delete the node");
    let full = format!("sui-{}", address.to_string().trim_start_matches("0x"));
    match nodes.create(&PostParams::default(), &node(&full)).await {
        Err(kube::Error::Api(status)) => assert!(
            status.code == 422 && status.message.contains("must be no more than 63"),
            "{status:?}"
        ),
        other => panic!("a 68-character hostname label: {other:?}"),
    }
}
