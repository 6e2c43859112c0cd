//! `nautilus-scale`: how the operator behaves with many NautilusMasters, against a real API server.
//!
//! It starts a throwaway control plane ([`nautilus_e2e::envtest`]: etcd, kube-apiserver and
//! kube-controller-manager, no scheduler and no kubelet, so enclave pods stay `Pending`), installs
//! the CRD, runs the operator binary in the `pod` runtime, creates N copies of the production
//! sample (`config/samples/nautilusmaster.yaml`) and reports:
//!
//! - the time from the first creation until every resource has its ConfigMap, StatefulSet,
//!   Service and a status;
//! - the operator's peak RSS (`VmHWM` of its process);
//! - writes during creation and per idle minute, counted by the API server
//!   (`apiserver_request_total` for the write verbs, on the kinds the operator writes: see
//!   [`operator_write`]), and by the operator itself (`nautilus_operator_writes_total`);
//! - the time to delete every resource with the operator running.
//!
//! Usage: `cargo run -p nautilus-e2e --release --bin nautilus-scale -- [N] [IDLE_SECONDS]`
//! (defaults 1000 and 60). The operator binary is `nautilus-operator` next to this one, or
//! `$NAUTILUS_OPERATOR`; build it with the same profile first.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt as _};
use nautilus_crds::NautilusMaster;
use nautilus_e2e::envtest::{Assets, ControlPlane, free_port};

const NAMESPACE: &str = "scale";
const SAMPLE: &str = include_str!("../../../config/samples/nautilusmaster.yaml");
const POLL: Duration = Duration::from_secs(1);

/// One `apiserver_request_total` series: (verb, group, resource, subresource) → count.
type Requests = BTreeMap<(String, String, String, String), f64>;

/// Whether a write series is the operator's. The harness only POSTs and DELETEs NautilusMasters;
/// the controller manager writes pods, StatefulSet status, core Events and its own Leases; the
/// operator server-side applies (`APPLY`) its children and status, JSON-patches finalizers
/// (`PATCH`) and publishes `events.k8s.io` Events.
fn operator_write(verb: &str, group: &str, resource: &str, subresource: &str) -> bool {
    match (verb, resource) {
        ("APPLY", "configmaps" | "statefulsets" | "services" | "secrets" | "nautilusmasters") => {
            true
        }
        ("PATCH", "nautilusmasters") => true,
        ("DELETE", "statefulsets" | "secrets") => subresource.is_empty(),
        ("POST" | "PATCH", "events") => group == "events.k8s.io",
        _ => false,
    }
}

async fn requests(client: &Client) -> anyhow::Result<Requests> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .context("building GET /metrics")?;
    let text = client
        .request_text(request)
        .await
        .context("GET /metrics of kube-apiserver")?;
    let mut out = Requests::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            labels
                .split("\",")
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let verb = label("verb");
        if !matches!(
            verb.as_str(),
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION"
        ) {
            continue;
        }
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry((
            verb,
            label("group"),
            label("resource"),
            label("subresource"),
        ))
        .or_default() += value;
    }
    Ok(out)
}

/// Writes between two snapshots: (operator's, everyone's, the operator's by series).
fn writes_between(before: &Requests, after: &Requests) -> (u64, u64, BTreeMap<String, u64>) {
    let mut operator = 0u64;
    let mut all = 0u64;
    let mut series = BTreeMap::new();
    for (key, value) in after {
        let delta = (value - before.get(key).copied().unwrap_or(0.0)).max(0.0) as u64;
        if delta == 0 {
            continue;
        }
        all += delta;
        let (verb, group, resource, subresource) = key;
        if operator_write(verb, group, resource, subresource) {
            operator += delta;
            let name = if subresource.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}/{subresource}")
            };
            series.insert(name, delta);
        }
    }
    (operator, all, series)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The largest RSS seen by sampling every 200 ms, split into anonymous memory (the heap) and
/// file pages (the binary's code), and the phase of the run it was seen in: `VmHWM` alone says
/// neither when nor what.
#[derive(Debug, Default)]
struct RssPeak {
    phase: &'static str,
    peak: (u64, u64, u64, &'static str),
}

impl RssPeak {
    fn start(pid: u32) -> std::sync::Arc<std::sync::Mutex<Self>> {
        let peak = std::sync::Arc::new(std::sync::Mutex::new(Self {
            phase: "start",
            ..Self::default()
        }));
        let sampler = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                let sample = (
                    status_kib(pid, "VmRSS:"),
                    status_kib(pid, "RssAnon:"),
                    status_kib(pid, "RssFile:"),
                );
                let (Some(rss), Some(anon), Some(file)) = sample else {
                    return;
                };
                if let Ok(mut p) = sampler.lock()
                    && rss > p.peak.0
                {
                    p.peak = (rss, anon, file, p.phase);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        peak
    }

    fn enter(this: &std::sync::Mutex<Self>, phase: &'static str) {
        if let Ok(mut p) = this.lock() {
            p.phase = phase;
        }
    }

    fn report(this: &std::sync::Mutex<Self>) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        match this.lock() {
            Ok(p) => format!(
                "{:.1} MiB ({:.1} anonymous, {:.1} file), during {}",
                mib(p.peak.0),
                mib(p.peak.1),
                mib(p.peak.2),
                p.peak.3
            ),
            Err(_) => "?".into(),
        }
    }
}

/// The operator's own count of its writes, from its `/metrics`.
fn operator_metric(port: u16) -> String {
    let Ok(out) = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
    else {
        return "(curl failed)".into();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("nautilus_operator_writes_total"))
        .collect::<Vec<_>>()
        .join("; ")
}

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn operator_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NAUTILUS_OPERATOR") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    Ok(exe
        .parent()
        .context("this binary has no directory")?
        .join("nautilus-operator"))
}

/// Counts of resources that have every child and a status.
async fn reconciled(client: &Client) -> anyhow::Result<usize> {
    let masters: Api<NautilusMaster> = Api::namespaced(client.clone(), NAMESPACE);
    let lp = ListParams::default();
    async fn names<K>(client: &Client, lp: &ListParams) -> kube::Result<HashSet<String>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Ok(Api::<K>::namespaced(client.clone(), NAMESPACE)
            .list_metadata(lp)
            .await?
            .items
            .iter()
            .map(|o| o.name_any())
            .collect())
    }
    let cms = names::<ConfigMap>(client, &lp).await?;
    let stss = names::<StatefulSet>(client, &lp).await?;
    let svcs = names::<Service>(client, &lp).await?;
    // Metadata only (a full list of N resources every second would load the API server more
    // than the operator does): the status subresource's managed-fields entry says it was written.
    let list = masters.list_metadata(&lp).await?;
    Ok(list
        .items
        .iter()
        .filter(|nm| {
            let name = nm.name_any();
            nm.metadata
                .managed_fields
                .iter()
                .flatten()
                .any(|m| m.subresource.as_deref() == Some("status"))
                && cms.contains(&format!("{name}-boot"))
                && stss.contains(&format!("{name}-enclave"))
                && svcs.contains(&name)
        })
        .count())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let idle: u64 = args.next().map_or(Ok(60), |a| a.parse())?;

    let assets = Assets::find().map_err(anyhow::Error::msg)?;
    let plane = ControlPlane::start(&assets)
        .await
        .context("starting the control plane")?;
    let client = plane.client().await.context("admin client")?;
    nautilus_e2e::install_crd(&client).await;
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .context("creating the namespace")?;

    let metrics_port = free_port()?;
    let log_path = plane.dir().join("operator.log");
    let log = std::fs::File::create(&log_path)?;
    let binary = operator_binary()?;
    // Under `setpriv --pdeathsig KILL` (it execs, so the pid is the operator's), as the control
    // plane's processes: the operator goes when this harness does, however it ends.
    let mut child = Command::new("setpriv");
    child
        .args(["--pdeathsig", "KILL", "--"])
        .arg(&binary)
        .args(["--runtime", "pod", "--listen"])
        .arg(format!("127.0.0.1:{metrics_port}"))
        .env("KUBECONFIG", &plane.kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    let operator = Operator(
        child
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?,
    );
    let pid = operator.0.id();
    eprintln!(
        "operator {} (pid {pid}), log {}",
        binary.display(),
        log_path.display()
    );
    let rss = RssPeak::start(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut sample: NautilusMaster = serde_yaml::from_str(SAMPLE).context("the sample")?;
    sample.metadata.namespace = Some(NAMESPACE.into());
    let masters: Api<NautilusMaster> = Api::namespaced(client.clone(), NAMESPACE);

    let before_create = requests(&client).await?;
    RssPeak::enter(&rss, "creation");
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = n.div_ceil(8);
    for t in 0..8 {
        let masters = masters.clone();
        let sample = sample.clone();
        tasks.spawn(async move {
            for i in (t * per_task)..((t + 1) * per_task).min(n) {
                let mut nm = sample.clone();
                let name = format!("scale-{i:05}");
                nm.spec.auth.audience = Some(format!("{NAMESPACE}/{name}"));
                nm.metadata.name = Some(name);
                masters.create(&PostParams::default(), &nm).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    let created = start.elapsed();
    eprintln!("created {n} in {:.1} s", created.as_secs_f64());
    let mut last = 0;
    let deadline = Duration::from_secs(900);
    while last < n {
        if start.elapsed() > deadline {
            bail!("only {last} of {n} reconciled after {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
        let now = reconciled(&client).await?;
        if now != last {
            eprintln!(
                "{:6.1} s: {now} of {n} reconciled",
                start.elapsed().as_secs_f64()
            );
            last = now;
        }
    }
    let all_reconciled = start.elapsed();
    let rss_create = vm_hwm_kib(pid);
    RssPeak::enter(&rss, "pod creation");

    // The steady state is every enclave pod created (and Pending: no scheduler or kubelet) and
    // its resource's status saying so. The controller manager creates the pods at its own pace.
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    loop {
        let count = pods
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len();
        if count >= n {
            break;
        }
        if start.elapsed() > deadline {
            bail!("only {count} of {n} pods after {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let all_pods = start.elapsed();
    eprintln!("{:6.1} s: all {n} pods exist", all_pods.as_secs_f64());
    // Let the last status writes and Events land, then count an idle period.
    RssPeak::enter(&rss, "idle");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before_idle = requests(&client).await?;
    let (creation_writes, creation_all, creation_series) =
        writes_between(&before_create, &before_idle);
    let metric_before_idle = operator_metric(metrics_port);
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let after_idle = requests(&client).await?;
    let metric_after_idle = operator_metric(metrics_port);
    let (idle_writes, idle_all, idle_series) = writes_between(&before_idle, &after_idle);

    println!("N = {n}, operator {}", binary.display());
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| created (harness, 8 concurrent clients) | {:.1} s |",
        created.as_secs_f64()
    );
    println!(
        "| all reconciled (children + status), from the first creation | {:.1} s |",
        all_reconciled.as_secs_f64()
    );
    println!(
        "| all enclave pods created by the controller manager | {:.1} s |",
        all_pods.as_secs_f64()
    );
    println!(
        "| operator writes from the first creation until steady (all pods + 10 s) (API server count) | {creation_writes} (all clients' writes: {creation_all}) |"
    );
    println!("| … by series | {creation_series:?} |");
    println!(
        "| operator writes in {idle} s idle (API server count) | {idle_writes} (all clients' writes: {idle_all}) |"
    );
    println!("| … by series | {idle_series:?} |");
    println!("| operator's own count before idle | {metric_before_idle} |");
    println!("| operator's own count after idle | {metric_after_idle} |");
    println!(
        "| operator peak RSS (VmHWM) after creation | {} MiB |",
        rss_create.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
    );

    // One DELETE per resource (a DELETECOLLECTION of 1000 outlives the API server's request
    // timeout), from 8 clients, then wait until the operator has let every one go.
    RssPeak::enter(&rss, "deletion");
    let delete_start = Instant::now();
    let names: Vec<String> = masters
        .list_metadata(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in names.chunks(names.len().div_ceil(8).max(1)) {
        let masters = masters.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for name in chunk {
                masters.delete(&name, &DeleteParams::default()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    loop {
        let left = masters
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len();
        if left == 0 {
            break;
        }
        if delete_start.elapsed() > deadline {
            bail!("{left} of {n} left after {deadline:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let deleted = delete_start.elapsed();
    let rss_peak = vm_hwm_kib(pid);
    println!(
        "| all deleted, operator running | {:.1} s |",
        deleted.as_secs_f64()
    );
    println!(
        "| operator peak RSS (VmHWM) at the end | {} MiB |",
        rss_peak.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
    );
    println!(
        "| operator's largest sampled RSS (200 ms) | {} |",
        RssPeak::report(&rss)
    );
    drop(operator);
    Ok(())
}
