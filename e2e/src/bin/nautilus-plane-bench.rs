//! `nautilus-plane-bench`: the `kubernetes` distribution's boot time, memory and API path,
//! with the project's flags (`lean`) beside stock flags, on the real binaries.
//!
//! For each profile it boots the control plane `--boots` times from a fresh work directory, the
//! way an enclave does: the real `nautilus-sidecar` (process launcher) starts the real
//! `nautilus-agent` (simulated NSM) with a boot configuration of the `kubernetes` distribution
//! (`memoryMiB` 4096, the CRD's default), and the agent starts etcd (Debian's) and
//! kube-apiserver, kube-scheduler and kube-controller-manager from `$KUBEBUILDER_ASSETS`
//! (default `/usr/local/kubebuilder/bin`). The `stock` profile runs the same binaries with only
//! the flags they need to run (`nautilus-agent --flags-profile stock`); `lean` is what ships.
//!
//! It reports, per profile:
//! - the boot timeline, p50 over the boots, from starting the sidecar: the agent booted (keys,
//!   attestation, files), etcd healthy, kube-apiserver ready, each component healthy in the
//!   signed report, and the sidecar's `/readyz` 200 (Ready);
//! - on the last boot: RSS per process (`VmRSS`) and the enclave's processes in all (agent,
//!   etcd, kube-apiserver, kube-scheduler, kube-controller-manager), idle after `--settle`
//!   seconds, and again after writing 1,000 ConfigMaps and 100 Deployments, each process split
//!   into anonymous, file-backed and shared pages (`/proc/<pid>/status`, `smaps_rollup`);
//! - API latency p50/p99 (sequential) and throughput (`--concurrency` at once) of `list` and
//!   `create`, with one client (the agent's admin kubeconfig) directly at kube-apiserver and
//!   through the sidecar's API port (sidecar → agent forwarder → kube-apiserver), the two paths
//!   interleaved request by request (latency) and round by round (throughput);
//!
//! then a table of both profiles and the ratios lean / stock. With `--operator` it also measures
//! a NautilusMaster's creation → `Ready=True` in the local runtime (the e2e [`Harness`]: a
//! throwaway API server, the operator in this process, sidecar, agent, simulated attestation and
//! verification), p50 over `--boots`, with `probeIntervalSeconds` `--probe-interval` (the CRD's
//! default, 5; `--profiles none` skips the boots above).
//!
//! Each boot's directory (data directory, etcd's database) is made in `--tmp` (default
//! `$TMPDIR`, else `/dev/shm`: an enclave's file system is its memory).
//!
//! Usage (release build; the development binaries beside this one):
//! `cargo build --release -p nautilus-agent -p nautilus-sidecar --bins &&
//!  cargo run --release -p nautilus-e2e --bin nautilus-plane-bench -- --boots 5`
//! With `--operator`: `NAUTILUS_BIN_DIR=<target>/release TMPDIR=/dev/shm` as well (the local
//! runtime starts the development binaries from there, and makes its directories in `$TMPDIR`).
//!
//! Every process it starts dies with it: the sidecar is tethered (parent-death signal) and
//! stopped with SIGTERM (which stops the agent and its components), and whatever still mentions
//! a boot's directory is killed when the boot ends ([`Reaper`]).
//!
//! [`Harness`]: nautilus_e2e::Harness

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt as _};
use nautilus_e2e::envtest::{Assets, free_port};
use nautilus_protocol::wire::{
    AuthConfig, BootConfig, Component, ControlPlaneConfig, EnclaveConfig, EvidenceBundle,
    HealthConfig, TierConfig,
};
use nautilus_test_support::{Reaper, processes_mentioning};

/// The enclave's processes, in the order the table lists them; the sidecar runs on the host.
const ENCLAVE: [&str; 5] = [
    "nautilus-agent",
    "etcd",
    "kube-apiserver",
    "kube-scheduler",
    "kube-controller-manager",
];
const SIDECAR: &str = "nautilus-sidecar";
/// Longest wait for a boot.
const BOOT_WAIT: Duration = Duration::from_secs(120);
/// How often the boot is looked at.
const POLL: Duration = Duration::from_millis(20);
/// The CRD's default `memoryMiB`.
const MEMORY_MIB: u32 = 4096;

#[derive(Debug, Clone)]
struct Options {
    boots: usize,
    settle: Duration,
    requests: usize,
    concurrency: usize,
    configmaps: usize,
    deployments: usize,
    profiles: Vec<String>,
    operator: bool,
    /// `probeIntervalSeconds` of the operator phase's resources (the CRD's default, 5).
    probe_interval: u32,
    /// Where each boot's directory (data directory, etcd's database, sockets) is made.
    tmp: PathBuf,
}

fn parse_options() -> Result<Options> {
    let mut o = Options {
        boots: 5,
        settle: Duration::from_secs(20),
        requests: 300,
        concurrency: 8,
        configmaps: 1000,
        deployments: 100,
        profiles: vec!["lean".into(), "stock".into()],
        operator: false,
        probe_interval: 5,
        tmp: default_tmp(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--boots" => o.boots = value("--boots")?.parse()?,
            "--settle" => o.settle = Duration::from_secs(value("--settle")?.parse()?),
            "--requests" => o.requests = value("--requests")?.parse()?,
            "--concurrency" => o.concurrency = value("--concurrency")?.parse()?,
            "--configmaps" => o.configmaps = value("--configmaps")?.parse()?,
            "--deployments" => o.deployments = value("--deployments")?.parse()?,
            "--profiles" => {
                o.profiles = match value("--profiles")?.as_str() {
                    "none" => Vec::new(),
                    list => list.split(',').map(str::to_owned).collect(),
                };
            }
            "--probe-interval" => o.probe_interval = value("--probe-interval")?.parse()?,
            "--operator" => o.operator = true,
            "--tmp" => o.tmp = PathBuf::from(value("--tmp")?),
            "-h" | "--help" => {
                println!(
                    "nautilus-plane-bench [--boots N] [--settle S] [--requests N] [--concurrency N] \
                     [--configmaps N] [--deployments N] [--profiles lean,stock|none] [--operator [--probe-interval S]] [--tmp DIR]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    if o.boots == 0 || o.concurrency == 0 || o.requests < o.concurrency {
        bail!("--boots must be at least 1 and --requests at least --concurrency");
    }
    for p in &o.profiles {
        if p != "lean" && p != "stock" {
            bail!("unknown profile {p:?}: lean or stock");
        }
    }
    Ok(o)
}

/// Where the boots' directories go by default: `$TMPDIR` when set; else a memory file system
/// (`/dev/shm`) when there is one, as in an enclave, whose file system is its memory (a Nitro
/// enclave boots from an initramfs and has no disk), so etcd's writes and fsyncs cost what they
/// cost there; else `/tmp`. The `--operator` phase's harness makes its directories in
/// `$TMPDIR` (run with `TMPDIR=/dev/shm` for the same).
fn default_tmp() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if std::env::var_os("TMPDIR").is_none() && shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// The 1-minute load average, for every figure (the machine is shared).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

fn uptime() -> String {
    std::process::Command::new("uptime")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn boot_config(data_dir: &Path, https_port: u16, sui_url: &str) -> BootConfig {
    BootConfig {
        config: EnclaveConfig {
            cluster: "bench/plane".into(),
            control_plane: ControlPlaneConfig {
                distribution: "kubernetes".into(),
                bind_address: "127.0.0.1".into(),
                https_port,
                cluster_cidr: "10.42.0.0/16".into(),
                service_cidr: "10.43.0.0/16".into(),
                cluster_dns: "10.43.0.10".into(),
                data_dir: data_dir.display().to_string(),
                encrypt_secrets: true,
                tls_min_version: "VersionTLS12".into(),
                cipher_suites: Vec::new(),
                log_level: "warn".into(),
                // The v1.36.2 binaries built here refuse json (see docs/architecture.md).
                log_format: "text".into(),
                tls_sans: Vec::new(),
                advertise_address: None,
                memory_mib: Some(MEMORY_MIB),
            },
            auth: AuthConfig {
                sui_rpc_url: sui_url.into(),
                chain_id: Some(nautilus_sui_fixture::CHAIN_ID.into()),
                stake_type: "0x3::staking_pool::StakedSui".into(),
                stake_amount_field: None,
                audience: "nautilus:bench/plane".into(),
                max_token_lifetime_seconds: 900,
                stake_cache_ttl_seconds: 30,
                zk_login: None,
                tiers: vec![TierConfig {
                    name: "admin".into(),
                    min_stake_mist: 10_000,
                    groups: vec!["system:masters".into()],
                    identity: Default::default(),
                }],
            },
            health: HealthConfig {
                probe_interval_seconds: 5,
                startup_timeout_seconds: 120,
            },
            state: None,
        },
        nonce: b"bench nonce".to_vec(),
    }
}

/// A plain HTTP request to the sidecar's HTTP API: status and body.
async fn sidecar_http(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Milestones of one boot, from starting the sidecar.
#[derive(Debug, Default, Clone)]
struct Timeline {
    /// The agent logged "booted" (keys, attestation, files, webhook).
    booted: Option<Duration>,
    etcd: Option<Duration>,
    apiserver: Option<Duration>,
    /// Each component healthy in a signed report.
    components: BTreeMap<&'static str, Duration>,
    /// `/readyz` 200.
    ready: Option<Duration>,
}

const MILESTONES: [&str; 8] = [
    "agent booted",
    "etcd healthy",
    "kube-apiserver ready",
    "api-server healthy",
    "scheduler healthy",
    "controller-manager healthy",
    "all healthy (report)",
    "Ready (/readyz)",
];

impl Timeline {
    fn get(&self, milestone: &str) -> Option<Duration> {
        match milestone {
            "agent booted" => self.booted,
            "etcd healthy" => self.etcd,
            "kube-apiserver ready" => self.apiserver,
            "api-server healthy" => self.components.get("api-server").copied(),
            "scheduler healthy" => self.components.get("scheduler").copied(),
            "controller-manager healthy" => self.components.get("controller-manager").copied(),
            "all healthy (report)" => {
                if self.components.len() == Component::ALL.len() {
                    self.components.values().max().copied()
                } else {
                    None
                }
            }
            "Ready (/readyz)" => self.ready,
            _ => None,
        }
    }
}

/// One booted control plane: the sidecar process and everything under its directory.
struct Plane {
    child: tokio::process::Child,
    // Dropped after the child: kills whatever still mentions the directory.
    _reaper: Reaper,
    dir: tempfile::TempDir,
    http: SocketAddr,
    proxy: SocketAddr,
    https_port: u16,
    timeline: Timeline,
}

impl Plane {
    async fn boot(
        profile: &str,
        assets: &Assets,
        bin: &Path,
        sui: &SuiNode,
        tmp: &Path,
    ) -> Result<Self> {
        // Short, so the agent's Unix sockets fit.
        let dir = tempfile::Builder::new()
            .prefix("npb-")
            .tempdir_in(tmp)
            .with_context(|| format!("tempdir in {}", tmp.display()))?;
        let reaper = Reaper(dir.path().display().to_string());
        let https_port = free_port()?;
        let boot = boot_config(&dir.path().join("data"), https_port, &sui.url);
        let boot_path = dir.path().join("boot.json");
        std::fs::write(&boot_path, serde_json::to_vec(&boot)?)?;
        let sock = |name: &str| format!("unix:{}", dir.path().join(name).display());
        let (agent_sock, api_sock, egress_sock) =
            (sock("agent.sock"), sock("api.sock"), sock("egress.sock"));
        let (http_port, proxy_port) = (free_port()?, free_port()?);
        let agent_args = [
            "--listen".to_owned(),
            agent_sock.clone(),
            "--api-listen".into(),
            api_sock.clone(),
            "--nsm".into(),
            "simulated".into(),
            "--work-dir".into(),
            dir.path().join("work").display().to_string(),
            "--webhook-listen".into(),
            "127.0.0.1:0".into(),
            "--egress-proxy".into(),
            egress_sock.clone(),
            "--sui-ca-file".into(),
            sui.ca_file.display().to_string(),
            "--kubernetes-bin-dir".into(),
            assets.dir.display().to_string(),
            "--etcd-command".into(),
            assets.etcd.display().to_string(),
            "--scheduler-port".into(),
            free_port()?.to_string(),
            "--controller-manager-port".into(),
            free_port()?.to_string(),
            "--etcd-client-port".into(),
            free_port()?.to_string(),
            "--etcd-peer-port".into(),
            free_port()?.to_string(),
            "--flags-profile".into(),
            profile.into(),
            "--log-format".into(),
            "json".into(),
        ];
        let mut args = vec![
            "--boot-config".to_owned(),
            boot_path.display().to_string(),
            "--launcher".into(),
            "process".into(),
            "--agent-command".into(),
            bin.join("nautilus-agent").display().to_string(),
            "--agent".into(),
            agent_sock,
            "--api-upstream".into(),
            api_sock,
            "--http-listen".into(),
            format!("127.0.0.1:{http_port}"),
            "--api-listen".into(),
            format!("127.0.0.1:{proxy_port}"),
            "--egress-listen".into(),
            egress_sock,
            "--egress-allow".into(),
            format!("localhost:{}", sui.port),
        ];
        for arg in agent_args {
            args.push("--agent-arg".into());
            args.push(arg);
        }
        let log_path = dir.path().join("sidecar.log");
        let log = std::fs::File::create(&log_path)?;
        let started = Instant::now();
        let child = nautilus_lifetime::Tether::this_binary()
            .command(bin.join(SIDECAR))?
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting nautilus-sidecar")?;
        let http = SocketAddr::from(([127, 0, 0, 1], http_port));
        let proxy = SocketAddr::from(([127, 0, 0, 1], proxy_port));
        let mut plane = Self {
            child,
            _reaper: reaper,
            dir,
            http,
            proxy,
            https_port,
            timeline: Timeline::default(),
        };
        plane.watch_boot(started, &log_path).await?;
        Ok(plane)
    }

    /// Follow the boot until `/readyz` says 200 (and every component was seen healthy).
    async fn watch_boot(&mut self, started: Instant, log: &Path) -> Result<()> {
        let t = &mut self.timeline;
        loop {
            let now = started.elapsed();
            if now > BOOT_WAIT {
                bail!(
                    "not ready within {BOOT_WAIT:?}; etcd's last lines:\n{}\nthe sidecar's log ends:\n{}",
                    component_tail(log, "etcd"),
                    nautilus_e2e::envtest::log_tail(log)
                );
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "the sidecar exited ({status}):\n{}",
                    nautilus_e2e::envtest::log_tail(log)
                );
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let seen = |needle: &str| text.contains(needle);
            if t.booted.is_none() && seen("\"booted\"") {
                t.booted = Some(now);
            }
            if t.etcd.is_none() && seen("etcd healthy\"") {
                t.etcd = Some(now);
            }
            if t.apiserver.is_none() && seen("kube-apiserver ready\"") {
                t.apiserver = Some(now);
            }
            if let Ok((200, body)) = sidecar_http(self.http, "/report").await
                && let Ok(bundle) = serde_json::from_str::<EvidenceBundle>(&body)
                && let Some(report) = bundle
                    .report
                    .as_ref()
                    .and_then(|r| r.unverified_report().ok())
            {
                for c in &report.components {
                    if c.healthy {
                        t.components.entry(c.component.name()).or_insert(now);
                    }
                }
            }
            if t.ready.is_none()
                && let Ok((200, _)) = sidecar_http(self.http, "/readyz").await
            {
                t.ready = Some(now);
            }
            if t.ready.is_some() && t.components.len() == Component::ALL.len() {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The admin kubeconfig's client, at kube-apiserver itself or through the sidecar.
    async fn client(&self, through_sidecar: bool) -> Result<Client> {
        let path = self.dir.path().join("data/server/cred/admin.kubeconfig");
        let kubeconfig = kube::config::Kubeconfig::read_from(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        let port = if through_sidecar {
            self.proxy.port()
        } else {
            self.https_port
        };
        config.cluster_url = format!("https://127.0.0.1:{port}").parse()?;
        Ok(Client::try_from(config)?)
    }

    /// RSS (MiB) of every process under this boot, by program.
    fn rss(&self) -> BTreeMap<String, f64> {
        let mut rss = BTreeMap::new();
        for (pid, _) in processes_mentioning(&self.dir.path().display().to_string()) {
            let Some(name) = program(pid) else { continue };
            if let Some(kib) = vm_rss_kib(pid) {
                *rss.entry(name).or_insert(0.0) += kib as f64 / 1024.0;
            }
        }
        rss
    }

    /// What the resident memory of each enclave process is (the profile that bounds it), from
    /// `/proc/<pid>/smaps_rollup` and `/proc/<pid>/status`: anonymous (heap, stacks: what GOGC
    /// and GOMEMLIMIT act on), file-backed (the binary's own pages, shared with the page cache
    /// that holds the file anyway), shared memory (etcd's database mapped from a memory file
    /// system), and the proportional set size. Lines to print, and the anonymous and
    /// proportional MiB in all (processes mapping one binary, as a multi-call build's
    /// components do, share its pages: RSS counts them in each, PSS splits them).
    fn rss_split(&self) -> (Vec<String>, f64, f64) {
        let mut lines = Vec::new();
        let mut anon_total = 0.0;
        let mut pss_total = 0.0;
        for (pid, _) in processes_mentioning(&self.dir.path().display().to_string()) {
            let Some(name) = program(pid) else { continue };
            if !ENCLAVE.contains(&name.as_str()) {
                continue;
            }
            let mib = |f: &str| status_kib(pid, f).unwrap_or(0) as f64 / 1024.0;
            let rollup = |f: &str| rollup_kib(pid, f).unwrap_or(0) as f64 / 1024.0;
            anon_total += mib("RssAnon:");
            pss_total += rollup("Pss:");
            lines.push(format!(
                "{name}: Rss {:.0} MiB = anon {:.0} + file {:.0} + shmem {:.0}; Pss {:.0} (file {:.0}); VmHWM {:.0} MiB",
                mib("VmRSS:"),
                mib("RssAnon:"),
                mib("RssFile:"),
                mib("RssShmem:"),
                rollup("Pss:"),
                rollup("Pss_File:"),
                mib("VmHWM:")
            ));
        }
        lines.sort();
        (lines, anon_total, pss_total)
    }

    /// SIGTERM the sidecar (it stops the agent, which stops the components), wait, then the
    /// reaper kills whatever is left.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        let needle = self.dir.path().display().to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The last lines the agent logged for `component` (its output, its exits) in the sidecar's log.
fn component_tail(log: &Path, component: &str) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let needle = format!("\"component\":\"{component}\"");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(&needle)).collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The program `pid` runs, as the basename of its `argv[0]`.
fn program(pid: i32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|&b| b == 0).next()?;
    let name = Path::new(std::str::from_utf8(argv0).ok()?)
        .file_name()?
        .to_str()?
        .to_owned();
    Some(name)
}

/// A `Field: N kB` line of `/proc/<pid>/<file>` (`status`, `smaps_rollup`), in KiB.
fn proc_kib(pid: i32, file: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn status_kib(pid: i32, field: &str) -> Option<u64> {
    proc_kib(pid, "status", field)
}

/// A field of `/proc/<pid>/smaps_rollup`, in KiB.
fn rollup_kib(pid: i32, field: &str) -> Option<u64> {
    proc_kib(pid, "smaps_rollup", field)
}

fn vm_rss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn enclave_total(rss: &BTreeMap<String, f64>) -> f64 {
    ENCLAVE.iter().filter_map(|p| rss.get(*p)).sum()
}

/// The local Sui node the agent's authenticator is configured with (nothing here calls it).
struct SuiNode {
    url: String,
    port: u16,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl SuiNode {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ca = nautilus_sui_fixture::TestCa::generate();
        let addr =
            nautilus_sui_fixture::serve_tls(Arc::new(nautilus_sui_fixture::Chain::default()), &ca)
                .await;
        let ca_file = dir.path().join("sui-ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem)?;
        Ok(Self {
            url: format!("https://localhost:{}", addr.port()),
            port: addr.port(),
            ca_file,
            _dir: dir,
        })
    }
}

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// Latency and throughput of one operation on one path.
#[derive(Debug, Clone, Copy, Default)]
struct ApiFigures {
    p50_ms: f64,
    p99_ms: f64,
    per_second: f64,
}

fn small_configmap(name: String, bytes: usize) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("data".to_owned(), "x".repeat(bytes))])),
        ..Default::default()
    }
}

/// Rounds of the throughput measurement per path; the paths take turns round by round.
const THROUGHPUT_ROUNDS: usize = 4;

/// `list` (50 ConfigMaps a page) or `create` (a small ConfigMap), measured on each path of
/// `paths` (`(name, client)`) with the same client code. Latency: `requests` sequential calls per
/// path, the paths alternating call by call; throughput: `requests` calls `concurrency` at once
/// per path, in [`THROUGHPUT_ROUNDS`] rounds, the paths alternating round by round. Interleaved so
/// that a change of this shared machine's load falls on every path alike (measured one after
/// the other, the ratio of two paths swung by ±30 % between runs).
async fn measure(
    paths: &[(&str, &Client)],
    namespace: &str,
    op: &str,
    requests: usize,
    concurrency: usize,
) -> Result<Vec<ApiFigures>> {
    let one = |api: Api<ConfigMap>, op: String, name: String| async move {
        let started = Instant::now();
        match op.as_str() {
            "list" => {
                api.list(&ListParams::default().limit(50)).await?;
            }
            _ => {
                api.create(&PostParams::default(), &small_configmap(name, 64))
                    .await?;
            }
        }
        Ok::<_, kube::Error>(started.elapsed())
    };
    let apis: Vec<Api<ConfigMap>> = paths
        .iter()
        .map(|(_, client)| Api::namespaced((*client).clone(), namespace))
        .collect();
    // Warm the connections.
    for api in &apis {
        api.list(&ListParams::default().limit(1)).await?;
    }
    let mut samples = vec![Vec::with_capacity(requests); paths.len()];
    for i in 0..requests {
        for (p, api) in apis.iter().enumerate() {
            let name = format!("{op}-{}-{i}", paths[p].0);
            samples[p].push(one(api.clone(), op.to_owned(), name).await?);
        }
    }
    let per_round = (requests / THROUGHPUT_ROUNDS / concurrency).max(1);
    let mut done = vec![(0usize, Duration::ZERO); paths.len()];
    for round in 0..THROUGHPUT_ROUNDS {
        for (p, api) in apis.iter().enumerate() {
            let started = Instant::now();
            let tasks: Vec<_> = (0..concurrency)
                .map(|t| {
                    let (api, op) = (api.clone(), op.to_owned());
                    let prefix = format!("{op}-{}-r{round}-t{t}", paths[p].0);
                    tokio::spawn(async move {
                        for i in 0..per_round {
                            one(api.clone(), op.clone(), format!("{prefix}-{i}")).await?;
                        }
                        Ok::<_, kube::Error>(())
                    })
                })
                .collect();
            for task in tasks {
                task.await??;
            }
            done[p].0 += per_round * concurrency;
            done[p].1 += started.elapsed();
        }
    }
    Ok(samples
        .iter_mut()
        .zip(done)
        .map(|(samples, (n, took))| {
            let (p50_ms, p99_ms) = percentiles(samples);
            ApiFigures {
                p50_ms,
                p99_ms,
                per_second: n as f64 / took.as_secs_f64(),
            }
        })
        .collect())
}

fn deployment(name: String) -> Result<Deployment> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }))?)
}

async fn ensure_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Write the ConfigMaps (1 KiB each) and Deployments, `concurrency` at once, then wait until
/// the controller manager made every Deployment's pod (they stay Pending: no node).
async fn load_objects(client: &Client, o: &Options) -> Result<Duration> {
    let ns = "bench-load";
    ensure_namespace(client, ns).await?;
    let started = Instant::now();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let items: Vec<usize> = (0..o.configmaps + o.deployments).collect();
    for chunk in items.chunks(o.concurrency) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let (cms, deps) = (cms.clone(), deps.clone());
            let configmaps = o.configmaps;
            set.spawn(async move {
                if i < configmaps {
                    cms.create(
                        &PostParams::default(),
                        &small_configmap(format!("load-{i}"), 1024),
                    )
                    .await
                    .map(|_| ())
                } else {
                    let d = deployment(format!("load-{}", i - configmaps))
                        .map_err(|e| kube::Error::Service(e.into()))?;
                    deps.create(&PostParams::default(), &d).await.map(|_| ())
                }
            });
        }
        while let Some(done) = set.join_next().await {
            done??;
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = pods.list(&ListParams::default()).await?.items.len();
        if n >= o.deployments {
            break;
        }
        if Instant::now() > deadline {
            println!("  (only {n} of {} pods after 120 s)", o.deployments);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(started.elapsed())
}

/// Everything measured for one profile.
#[derive(Debug, Default)]
struct ProfileResult {
    timelines: Vec<Timeline>,
    rss_idle: BTreeMap<String, f64>,
    rss_loaded: BTreeMap<String, f64>,
    /// Anonymous RSS of the enclave's processes in all, idle and after the objects.
    anon_idle: f64,
    anon_loaded: f64,
    /// Proportional set size of the enclave's processes in all, idle and after the objects.
    pss_idle: f64,
    pss_loaded: f64,
    /// (op, path) → figures.
    api: BTreeMap<(String, String), ApiFigures>,
    load_time: Duration,
    loads: Vec<String>,
}

impl ProfileResult {
    fn milestone_p50(&self, milestone: &str) -> Option<f64> {
        let mut v: Vec<f64> = self
            .timelines
            .iter()
            .filter_map(|t| t.get(milestone))
            .map(|d| d.as_secs_f64())
            .collect();
        median(&mut v)
    }
}

#[allow(clippy::too_many_arguments)]
async fn boot_once(
    profile: &str,
    i: usize,
    last: bool,
    o: &Options,
    assets: &Assets,
    bin: &Path,
    sui: &SuiNode,
    result: &mut ProfileResult,
) -> Result<()> {
    {
        let plane = Plane::boot(profile, assets, bin, sui, &o.tmp).await?;
        let t = plane.timeline.clone();
        println!(
            "{profile} boot {}: booted {:?} etcd {:?} apiserver {:?} components {:?} ready {:?} (load {})",
            i + 1,
            t.booted,
            t.etcd,
            t.apiserver,
            t.components,
            t.ready,
            load()
        );
        result.timelines.push(t);
        if !last {
            plane.stop().await;
            return Ok(());
        }
        // The last boot: memory and the API path.
        tokio::time::sleep(o.settle).await;
        result.rss_idle = plane.rss();
        let (lines, anon, pss) = plane.rss_split();
        for line in lines {
            println!("{profile} idle {line}");
        }
        result.anon_idle = anon;
        result.pss_idle = pss;
        result.loads.push(format!("idle RSS: {}", uptime()));
        println!(
            "{profile} idle RSS {:.0} MiB in the enclave {:?} ({})",
            enclave_total(&result.rss_idle),
            result.rss_idle,
            uptime()
        );
        let direct = plane.client(false).await?;
        let proxied = plane.client(true).await?;
        ensure_namespace(&direct, "bench").await?;
        let paths = [("direct", &direct), ("sidecar", &proxied)];
        for op in ["list", "create"] {
            let figures = measure(&paths, "bench", op, o.requests, o.concurrency)
                .await
                .with_context(|| format!("{op}: direct and through the sidecar"))?;
            for ((path, _), figures) in paths.iter().zip(figures) {
                println!(
                    "{profile} {op} {path}: p50 {:.2} ms p99 {:.2} ms {:.0}/s (load {})",
                    figures.p50_ms,
                    figures.p99_ms,
                    figures.per_second,
                    load()
                );
                result.api.insert((op.into(), (*path).into()), figures);
            }
        }
        result.loads.push(format!("API: {}", uptime()));
        result.load_time = load_objects(&direct, o).await?;
        tokio::time::sleep(o.settle).await;
        result.rss_loaded = plane.rss();
        let (lines, anon, pss) = plane.rss_split();
        for line in lines {
            println!("{profile} loaded {line}");
        }
        result.anon_loaded = anon;
        result.pss_loaded = pss;
        result.loads.push(format!("loaded RSS: {}", uptime()));
        println!(
            "{profile} RSS after {} ConfigMaps + {} Deployments (written in {:.1} s): {:.0} MiB {:?} ({})",
            o.configmaps,
            o.deployments,
            result.load_time.as_secs_f64(),
            enclave_total(&result.rss_loaded),
            result.rss_loaded,
            uptime()
        );
        plane.stop().await;
    }
    Ok(())
}

/// Creation → Ready of NautilusMasters in the local runtime, through the e2e harness.
async fn operator_boots(boots: usize, probe_interval: u32) -> Result<Vec<f64>> {
    let Some(cluster) = nautilus_e2e::cluster("plane_bench").await else {
        bail!("no API server for the operator phase (see the skip line above)");
    };
    let h = nautilus_e2e::Harness::start(cluster, "plane_bench", None).await;
    if h.distribution != "kubernetes" {
        bail!("the harness runs {} here, not kubernetes", h.distribution);
    }
    let mut times = Vec::new();
    for i in 0..boots {
        let name = format!("bench-{i}");
        let started = Instant::now();
        let mut spec = h.development_spec();
        spec.health.probe_interval_seconds = probe_interval;
        spec.health.startup_timeout_seconds =
            spec.health.startup_timeout_seconds.max(probe_interval + 1);
        h.create(&name, spec).await;
        // When each condition was first seen True (polled every 50 ms): the timeline.
        let mut seen: Vec<(&str, f64)> = Vec::new();
        let nm = loop {
            if let Some(nm) = h.masters().get_opt(&name).await? {
                for type_ in nautilus_e2e::CONDITIONS {
                    if !seen.iter().any(|(t, _)| *t == type_)
                        && nautilus_e2e::is(&nm, type_, "True")
                    {
                        seen.push((type_, started.elapsed().as_secs_f64()));
                    }
                }
                if nautilus_e2e::is(&nm, "Ready", "True") {
                    break nm;
                }
            }
            if started.elapsed() > BOOT_WAIT {
                bail!("{name} not Ready within {BOOT_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let took = started.elapsed().as_secs_f64();
        let timeline: Vec<String> = seen.iter().map(|(t, at)| format!("{t} {at:.2}")).collect();
        println!(
            "operator boot {}: creation → Ready {:.2} s (load {}) {}; True at: {}",
            i + 1,
            took,
            load(),
            nm.name_any(),
            timeline.join(", ")
        );
        times.push(took);
        h.masters()
            .delete(&name, &Default::default())
            .await
            .context("delete")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while h.masters().get_opt(&name).await?.is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    h.finish().await;
    Ok(times)
}

fn fmt_s(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2} s"))
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}", a / b)
    }
}

fn print_table(results: &[(String, ProfileResult)], o: &Options) {
    let names: Vec<&str> = results.iter().map(|(n, _)| n.as_str()).collect();
    let both = names.contains(&"lean") && names.contains(&"stock");
    let get = |n: &str| results.iter().find(|(p, _)| p == n).map(|(_, r)| r);
    println!();
    println!(
        "## Boot (p50 over {} boots, from starting the sidecar)",
        o.boots
    );
    print!("| milestone |");
    for n in &names {
        print!(" {n} |");
    }
    if both {
        print!(" lean/stock |");
    }
    println!();
    println!("|---|{}", "---|".repeat(names.len() + usize::from(both)));
    for m in MILESTONES {
        print!("| {m} |");
        for (_, r) in results {
            print!(" {} |", fmt_s(r.milestone_p50(m)));
        }
        if both {
            let (l, s) = (
                get("lean").and_then(|r| r.milestone_p50(m)),
                get("stock").and_then(|r| r.milestone_p50(m)),
            );
            match (l, s) {
                (Some(l), Some(s)) => print!(" {} |", ratio(l, s)),
                _ => print!(" - |"),
            }
        }
        println!();
    }
    type Pick = fn(&ProfileResult) -> &BTreeMap<String, f64>;
    type Total = fn(&ProfileResult) -> f64;
    for (phase, pick, anon, pss) in [
        (
            "idle",
            (|r: &ProfileResult| &r.rss_idle) as Pick,
            (|r: &ProfileResult| r.anon_idle) as Total,
            (|r: &ProfileResult| r.pss_idle) as Total,
        ),
        (
            "after the objects",
            |r: &ProfileResult| &r.rss_loaded,
            |r: &ProfileResult| r.anon_loaded,
            |r: &ProfileResult| r.pss_loaded,
        ),
    ] {
        println!();
        println!("## RSS {phase} (MiB, last boot)");
        print!("| process |");
        for n in &names {
            print!(" {n} |");
        }
        if both {
            print!(" lean/stock |");
        }
        println!();
        println!("|---|{}", "---|".repeat(names.len() + usize::from(both)));
        let rows: Vec<String> = ENCLAVE
            .iter()
            .map(|s| (*s).to_owned())
            .chain([
                SIDECAR.to_owned(),
                "enclave in all".to_owned(),
                "… of which anonymous".to_owned(),
                "enclave in all, PSS".to_owned(),
            ])
            .collect();
        for row in rows {
            let value = |r: &ProfileResult| {
                if row == "enclave in all" {
                    enclave_total(pick(r))
                } else if row == "… of which anonymous" {
                    anon(r)
                } else if row == "enclave in all, PSS" {
                    pss(r)
                } else {
                    pick(r).get(&row).copied().unwrap_or(0.0)
                }
            };
            print!("| {row} |");
            for (_, r) in results {
                print!(" {:.0} |", value(r));
            }
            if both && let (Some(l), Some(s)) = (get("lean"), get("stock")) {
                print!(" {} |", ratio(value(l), value(s)));
            }
            println!();
        }
    }
    println!();
    println!(
        "## API ({} sequential requests per path for p50/p99, the paths alternating; {} per path at {} at once for throughput, in {} rounds alternating)",
        o.requests, o.requests, o.concurrency, THROUGHPUT_ROUNDS
    );
    println!(
        "| profile | op | direct p50 | sidecar p50 | direct p99 | sidecar p99 | direct /s | sidecar /s | sidecar/direct p50 | sidecar/direct /s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (n, r) in results {
        for op in ["list", "create"] {
            let d = r
                .api
                .get(&(op.into(), "direct".into()))
                .copied()
                .unwrap_or_default();
            let s = r
                .api
                .get(&(op.into(), "sidecar".into()))
                .copied()
                .unwrap_or_default();
            println!(
                "| {n} | {op} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.0} | {:.0} | {} | {} |",
                d.p50_ms,
                s.p50_ms,
                d.p99_ms,
                s.p99_ms,
                d.per_second,
                s.per_second,
                ratio(s.p50_ms, d.p50_ms),
                ratio(s.per_second, d.per_second)
            );
        }
    }
    if both && let (Some(l), Some(s)) = (get("lean"), get("stock")) {
        println!();
        println!("## lean / stock, API");
        println!("| op | path | p50 | /s |");
        println!("|---|---|---|---|");
        for op in ["list", "create"] {
            for path in ["direct", "sidecar"] {
                let key = (op.to_owned(), path.to_owned());
                let (a, b) = (
                    l.api.get(&key).copied().unwrap_or_default(),
                    s.api.get(&key).copied().unwrap_or_default(),
                );
                println!(
                    "| {op} | {path} | {} | {} |",
                    ratio(a.p50_ms, b.p50_ms),
                    ratio(a.per_second, b.per_second)
                );
            }
        }
    }
    println!();
    for (n, r) in results {
        for l in &r.loads {
            println!("load, {n}, {l}");
        }
    }
}

fn main() -> Result<()> {
    // First, before any thread: the sidecar is started through this binary so that it dies
    // with it.
    nautilus_lifetime::exec_if_requested();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> Result<()> {
    let o = parse_options()?;
    let assets = Assets::find().map_err(|e| anyhow::anyhow!(e))?;
    if assets.kube_scheduler.is_none() || assets.kube_controller_manager.is_none() {
        bail!(
            "kube-scheduler or kube-controller-manager is missing in {}",
            assets.dir.display()
        );
    }
    // The development binaries beside this one (a `cargo run --release`), else the harness's.
    let beside = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .filter(|d| d.join(SIDECAR).is_file() && d.join("nautilus-agent").is_file());
    let bin = match beside {
        Some(dir) if std::env::var_os("NAUTILUS_BIN_DIR").is_none() => dir,
        _ => nautilus_e2e::bin_dir(),
    };
    println!(
        "nautilus-plane-bench: binaries {} and {}, development binaries {}, boots in {} (operator phase in {}); {}",
        assets.dir.display(),
        assets.etcd.display(),
        bin.display(),
        o.tmp.display(),
        std::env::temp_dir().display(),
        uptime()
    );
    let sui = SuiNode::start().await?;
    // The boots of the profiles alternate, so a change of the machine's load falls on both.
    let mut results: Vec<(String, ProfileResult)> = o
        .profiles
        .iter()
        .map(|p| (p.clone(), ProfileResult::default()))
        .collect();
    for i in 0..o.boots {
        for (profile, result) in &mut results {
            let last = i + 1 == o.boots;
            boot_once(profile, i, last, &o, &assets, &bin, &sui, result).await?;
        }
    }
    if !results.is_empty() {
        print_table(&results, &o);
    }
    if o.operator {
        let mut times = operator_boots(o.boots, o.probe_interval).await?;
        println!();
        println!(
            "## Operator (local runtime, lean, probeIntervalSeconds {}): creation → Ready p50 {} over {} ({})",
            o.probe_interval,
            fmt_s(median(&mut times)),
            o.boots,
            uptime()
        );
    }
    Ok(())
}
