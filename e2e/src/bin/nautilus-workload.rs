//! `nautilus-workload`: what running workloads on an enclave control plane costs, side by side
//! with a plain control plane, in one run (issue 23's figures).
//!
//! ```text
//! cargo run --release -p nautilus-e2e --bin nautilus-workload [-- PODS [LISTS]]
//! ```
//!
//! Two rounds on this machine, each with a fresh real worker ([`nautilus_e2e::worker`]: kubelet,
//! containerd, runc, CNI bridge), one after the other so they do not share the two cores:
//! 1. **plain**: a throwaway etcd + kube-apiserver + kube-controller-manager + kube-scheduler
//!    ([`nautilus_e2e::envtest`]), the kubelet with an admin client certificate, API calls
//!    straight to the API server;
//! 2. **enclave**: the operator's local runtime with the `kubernetes` distribution in an isolated
//!    enclave, the worker joined with `nautilusctl join` (a worker-tier seal token through the
//!    exec plugin), API calls through the sidecar's published port with an admin-tier seal token.
//!
//! It reports, per round: the kubelet's start (plain) or `nautilusctl join` (enclave) to Node
//! Ready; pod create to Running for `PODS` pods one after the other (p50, max), scheduled by the
//! control plane's own scheduler; and `LISTS` lists of the default namespace's pods on one
//! connection (p50, p99). Then the enclave/plain ratios. Needs root, the Kubernetes binaries in
//! `$KUBEBUILDER_ASSETS` (kubelet included) and the worker's Debian packages; says what is
//! missing otherwise.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use nautilus_e2e::envtest::{Assets, ControlPlane};
use nautilus_e2e::worker::{self, KubeletSettings, Worker, WorkerSettings};
use nautilus_e2e::{Harness, WAIT, is};

/// One round's figures.
#[derive(Debug)]
struct Round {
    to_ready: Duration,
    pod_starts: Vec<Duration>,
    lists: Vec<Duration>,
}

fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `pods` pods created one after the other, each timed from create to Running; then `lists`
/// lists of the namespace's pods.
async fn measure(
    client: &Client,
    pods: usize,
    lists: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    // The ServiceAccount admission plugin needs the default ServiceAccount first.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + WAIT;
    while accounts.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            bail!("no default ServiceAccount");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut starts = Vec::with_capacity(pods);
    for i in 0..pods {
        let name = format!("bench-{i}");
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "containers": [{
                    "name": "main", "image": worker::IMAGE, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1 & wait $!; done"],
                }],
                "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": false,
            },
        }))?;
        let created = Instant::now();
        api.create(&PostParams::default(), &pod).await?;
        loop {
            let phase = api.get(&name).await?.status.and_then(|s| s.phase);
            if phase.as_deref() == Some("Running") {
                break;
            }
            if created.elapsed() > WAIT {
                bail!("pod {name} not Running within {WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        starts.push(created.elapsed());
    }
    let mut latencies = Vec::with_capacity(lists);
    for _ in 0..lists {
        let started = Instant::now();
        api.list(&ListParams::default()).await?;
        latencies.push(started.elapsed());
    }
    Ok((starts, latencies))
}

async fn plain(
    assets: &Assets,
    scratch: &Path,
    pods: usize,
    lists: usize,
) -> anyhow::Result<Round> {
    let mut plane = ControlPlane::start(assets).await?;
    if !plane.start_scheduler(assets)? {
        bail!("no kube-scheduler in {}", assets.dir.display());
    }
    let client = plane.client().await?;
    let mut w = Worker::start(WorkerSettings::new(scratch.join("plain"), "plain-worker")).await?;
    let port: u16 = plane
        .server
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("the API server's port")?;
    let at = w.expose(port).await?;
    let kubeconfig = scratch.join("plain.kubeconfig");
    worker::rewrite_kubeconfig(
        &plane.kubeconfig,
        &kubeconfig,
        &format!("https://{at}"),
        Some("localhost"),
    )?;
    let base = scratch.join("plain-kubelet.yaml");
    std::fs::write(
        &base,
        serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {"anonymous": {"enabled": false}, "webhook": {"enabled": true},
                "x509": {"clientCAFile": plane.ca_file()}},
            "authorization": {"mode": "Webhook"},
            "rotateCertificates": false,
        })
        .to_string(),
    )?;
    let started = Instant::now();
    w.start_kubelet(&KubeletSettings {
        kubeconfig,
        config: base,
        extra_args: Vec::new(),
    })?;
    w.wait_node_ready(&client, WAIT).await?;
    let to_ready = started.elapsed();
    let (pod_starts, lists) = measure(&client, pods, lists).await?;
    w.stop();
    drop(plane);
    Ok(Round {
        to_ready,
        pod_starts,
        lists,
    })
}

async fn enclave(scratch: &Path, pods: usize, lists: usize) -> anyhow::Result<Round> {
    let mut w = Worker::start(WorkerSettings::new(
        scratch.join("enclave"),
        "enclave-worker",
    ))
    .await?;
    let Some(cluster) = nautilus_e2e::cluster("workload-bench").await else {
        bail!("no API server for the operator");
    };
    // The development binaries beside this one (cargo run), unless NAUTILUS_BIN_DIR says.
    let bin = match std::env::var_os("NAUTILUS_BIN_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::current_exe()?
            .parent()
            .context("the binary's directory")?
            .to_path_buf(),
    };
    let h = Harness::start_in_published(
        cluster,
        format!("nautilus-workload-{}", std::process::id()),
        &bin,
        Some(w.host_ip().into()),
    )
    .await;
    if h.distribution != "kubernetes" {
        bail!("the enclave round needs the kubernetes distribution's real components");
    }
    h.create("bench", h.development_spec()).await;
    let nm = h
        .wait_for("bench", "Ready=True", WAIT, |nm| is(nm, "Ready", "True"))
        .await;
    let joined = Instant::now();
    h.join_worker("bench", &mut w, scratch).await;
    let admin = h
        .staker
        .mint_for(&nm.token_audience(), nautilus_seal::unix_now(), 900)?;
    let client = h.client_with_token("bench", &admin).await;
    w.wait_node_ready(&client, WAIT).await?;
    let to_ready = joined.elapsed();
    let (pod_starts, lists) = measure(&client, pods, lists).await?;
    h.finish().await;
    w.stop();
    Ok(Round {
        to_ready,
        pod_starts,
        lists,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--");
    let pods: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    let lists: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    if !worker::available("nautilus-workload") {
        bail!("this machine cannot run a worker (the line above says why)");
    }
    let assets = Assets::find().map_err(|missing| anyhow::anyhow!("{missing}"))?;
    let scratch = tempfile::tempdir()?;
    eprintln!("round 1: plain control plane…");
    let plain = plain(&assets, scratch.path(), pods, lists).await?;
    eprintln!("round 2: enclave control plane…");
    let enclave = enclave(scratch.path(), pods, lists).await?;
    println!(
        "| | plain (direct, client certificate) | enclave (through the sidecar, seal token) | enclave / plain |"
    );
    println!("|---|---|---|---|");
    let row = |what: &str, p: Duration, e: Duration| {
        println!(
            "| {what} | {:.1} ms | {:.1} ms | {:.2} |",
            ms(p),
            ms(e),
            e.as_secs_f64() / p.as_secs_f64().max(f64::EPSILON)
        );
    };
    row(
        "kubelet start (plain) / join (enclave) → Node Ready",
        plain.to_ready,
        enclave.to_ready,
    );
    row(
        &format!("pod create → Running, p50 of {pods}"),
        quantile(&plain.pod_starts, 0.5),
        quantile(&enclave.pod_starts, 0.5),
    );
    row(
        &format!("pod create → Running, max of {pods}"),
        quantile(&plain.pod_starts, 1.0),
        quantile(&enclave.pod_starts, 1.0),
    );
    row(
        &format!("list pods, p50 of {lists}"),
        quantile(&plain.lists, 0.5),
        quantile(&enclave.lists, 0.5),
    );
    row(
        &format!("list pods, p99 of {lists}"),
        quantile(&plain.lists, 0.99),
        quantile(&enclave.lists, 0.99),
    );
    Ok(())
}
