//! `cargo dev`: the whole product on this machine, in one command.
//!
//! Against a throwaway control plane from `$KUBEBUILDER_ASSETS` (default
//! `/usr/local/kubebuilder/bin`), or else the cluster `KUBECONFIG` names, it installs the CRD,
//! runs the operator in the `local` runtime with this workspace's binaries, starts a local Sui
//! full node with one staked key, applies a development NautilusMaster, waits for `Ready`, and
//! prints `kubectl get`/`describe` and how to reach the enclave's control plane with a seal
//! token. Ctrl-C removes everything it made.
//!
//! `cargo dev --worker` also starts a worker node on this machine (a real kubelet with
//! containerd, runc and the CNI bridge in namespaces of its own, [`nautilus_e2e::worker`]; needs
//! root and `$KUBEBUILDER_ASSETS/kubelet`): the control plane is then published on the host end
//! of the worker's veth, the worker joins with `nautilusctl join` and a worker-tier key, and the
//! command prints how to run a pod on it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};
use nautilus_e2e::worker::{self, Worker, WorkerSettings};
use nautilus_e2e::{Harness, WAIT, envtest, is};
use nautilus_lifetime::shutdown_signal;

const NAMESPACE: &str = "nautilus-dev";
const NAME: &str = "dev";

/// Build the sidecar, agent, stand-in and CLI next to this binary when run through cargo, so a
/// fresh clone needs nothing but `cargo dev`.
fn build_binaries() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("NAUTILUS_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let dir = exe
        .parent()
        .context("this binary has no directory")?
        .to_path_buf();
    if let Some(cargo) = std::env::var_os("CARGO") {
        eprintln!("building nautilus-sidecar, nautilus-agent, nautilus-standin and nautilusctl…");
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--bins",
            "-p",
            "nautilus-sidecar",
            "-p",
            "nautilus-agent",
            "-p",
            "nautilusctl",
        ]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().context("running cargo build")?;
        if !status.success() {
            bail!("cargo build of the development binaries failed");
        }
    }
    Ok(dir)
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    match Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
    {
        Ok(out) => format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => format!("(kubectl did not run: {err})\n"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin_dir = build_binaries()?;
    for binary in nautilus_operator::runtime::DEVELOPMENT_BINARIES {
        if !bin_dir.join(binary).is_file() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` or set NAUTILUS_BIN_DIR",
                bin_dir.join(binary).display()
            );
        }
    }
    let assets = envtest::Assets::find();
    if let Err(missing) = &assets
        && std::env::var_os("KUBECONFIG").is_none()
    {
        bail!(
            "no API server to run against: {missing}, and KUBECONFIG is not set. Build or \
             install etcd and kube-apiserver there (see the README), or point KUBECONFIG at a \
             cluster"
        );
    }
    let cluster = nautilus_e2e::cluster("dev")
        .await
        .context("no API server")?;
    let kubeconfig = cluster.kubeconfig.clone();
    match &cluster.plane {
        Some(plane) => eprintln!(
            "throwaway control plane at {} (kubeconfig {}{})",
            plane.server,
            kubeconfig.display(),
            if plane.controller_manager {
                ", with kube-controller-manager"
            } else {
                ""
            }
        ),
        None => eprintln!("using the cluster in KUBECONFIG ({})", kubeconfig.display()),
    }

    let with_worker = std::env::args().skip(1).any(|a| a == "--worker");
    if let Some(other) = std::env::args()
        .skip(1)
        .find(|a| a != "--worker" && a != "--")
    {
        bail!("unknown argument {other:?}: the only option is --worker");
    }
    let scratch = tempfile::tempdir().context("a scratch directory")?;
    let mut worker = if with_worker {
        if !worker::available("dev") {
            bail!("--worker: this machine cannot run a worker (the line above says why)");
        }
        let mut settings = WorkerSettings::new(scratch.path().join("worker"), "dev-worker");
        settings.image_binaries = envtest::on_path("kubectl").into_iter().collect();
        Some(
            Worker::start(settings)
                .await
                .context("starting the worker's containerd")?,
        )
    } else {
        None
    };
    let publish = worker.as_ref().map(|w| w.host_ip().into());
    let h = Harness::start_in_published(cluster, NAMESPACE.to_owned(), &bin_dir, publish).await;
    let keystore = h.dir.path().join("sui.keystore");
    std::fs::write(
        &keystore,
        serde_json::to_string(&[h.staker.to_keystore_entry()])?,
    )
    .context("writing the keystore")?;
    h.create(NAME, h.development_spec()).await;
    eprintln!("created NautilusMaster {NAMESPACE}/{NAME}; waiting for Ready…");
    let started = std::time::Instant::now();
    let ready = tokio::select! {
        nm = h.wait_for(NAME, "Ready=True", WAIT, |nm| is(nm, "Ready", "True")) => Some(nm),
        () = shutdown_signal() => None,
    };
    if let Some(nm) = ready {
        println!("Ready after {:.1} s\n", started.elapsed().as_secs_f64());
        println!(
            "$ kubectl get nm -n {NAMESPACE} -o wide\n{}",
            kubectl(&kubeconfig, &["get", "nm", "-n", NAMESPACE, "-o", "wide"])
        );
        println!(
            "$ kubectl describe nm -n {NAMESPACE} {NAME}\n{}",
            kubectl(&kubeconfig, &["describe", "nm", "-n", NAMESPACE, NAME])
        );
        let enclave_kubeconfig = h.dir.path().join("enclave.kubeconfig");
        let secret = kubectl(
            &kubeconfig,
            &[
                "get",
                "secret",
                "-n",
                NAMESPACE,
                &format!("{NAME}-kubeconfig"),
                "-o",
                "jsonpath={.data.kubeconfig}",
            ],
        );
        use base64::Engine as _;
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(secret.trim()) {
            std::fs::write(&enclave_kubeconfig, bytes).context("writing the kubeconfig")?;
        }
        println!(
            "The enclave's control plane, with a seal token of the staked key {address} \
             (audience {audience}):\n\n  export PATH={bin}:$PATH\n  export \
             NAUTILUS_SUI_KEYSTORE={keystore}\n  kubectl --kubeconfig {enclave} auth whoami\n  \
             kubectl --kubeconfig {enclave} get namespaces\n\nThat kubeconfig is the operator's \
             word; check the enclave yourself and use the kubeconfig the check writes:\n\n  \
             nautilusctl verify {name} -n {namespace} --kubeconfig {host} --allow-simulated \
             --write-kubeconfig {verified}\n  kubectl --kubeconfig {verified} auth whoami\n\n\
             The host cluster: kubectl --kubeconfig {host} get nm -A\n\nCtrl-C removes \
             everything this made.",
            name = NAME,
            namespace = NAMESPACE,
            verified = h.dir.path().join("verified.kubeconfig").display(),
            address = h.staker.address(),
            audience = nm.token_audience(),
            bin = bin_dir.display(),
            keystore = keystore.display(),
            enclave = enclave_kubeconfig.display(),
            host = kubeconfig.display(),
        );
        if let Some(worker) = worker.as_mut() {
            let joined = std::time::Instant::now();
            let summary = h.join_worker(NAME, worker, scratch.path()).await;
            let node = summary["nodeName"].as_str().unwrap_or_default().to_owned();
            eprintln!("worker: nautilusctl join verified the enclave; kubelet started as {node}");
            let admin = h
                .staker
                .mint_for(&nm.token_audience(), nautilus_seal::unix_now(), 900)
                .context("minting an admin token")?;
            let enclave = h.client_with_token(NAME, &admin).await;
            let ready = tokio::select! {
                r = worker.wait_node_ready(&enclave, WAIT) => Some(r),
                () = shutdown_signal() => None,
            };
            match ready {
                Some(Ok(_)) => println!(
                    "\nWorker {node} (node IP {ip}) Ready {:.1} s after join. Run a pod on it \
                     (the only image here is {image}, imported on the worker):\n\n  \
                     kubectl --kubeconfig {enclave} run hello --image={image} \
                     --image-pull-policy=Never -- sh -c 'echo hello; sleep 3600'\n  \
                     kubectl --kubeconfig {enclave} get pods -o wide\n  kubectl --kubeconfig \
                     {enclave} logs hello\n\nThe kubelet's files: {files}; its log: {log}",
                    joined.elapsed().as_secs_f64(),
                    ip = worker.node_ip(),
                    image = worker::IMAGE,
                    enclave = enclave_kubeconfig.display(),
                    files = scratch.path().join("node").display(),
                    log = worker.kubelet_log().display(),
                ),
                Some(Err(err)) => eprintln!("worker: the Node did not go Ready: {err}"),
                None => {}
            }
        }
        shutdown_signal().await;
    }
    eprintln!("removing {NAMESPACE}/{NAME}, the operator and the control plane…");
    h.finish().await;
    if let Some(mut worker) = worker {
        worker.stop();
    }
    eprintln!("done");
    Ok(())
}
