//! A harness for the agent binary: the real `nautilus-agent` with the simulated NSM and the
//! stand-in control plane, driven by an in-test fake sidecar over a Unix socket.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use nautilus_protocol::attestation::{AttestationDocument, TrustAnchor, Verifier, VerifyAt};
use nautilus_protocol::transport::{self, BoxedStream, Endpoint};
use nautilus_protocol::wire::{
    self, AttestationEvidence, AuthConfig, BootConfig, ControlPlaneConfig, EnclaveConfig,
    HealthConfig, Message, Report, ReportVerifier, TierConfig,
};
use nautilus_protocol::{Binding, Policy};
pub use nautilus_test_support::processes_mentioning;

/// Generous bound for anything the tests wait for.
pub const WAIT: Duration = Duration::from_secs(20);

/// A port that was free a moment ago, below the ephemeral range (a component's port there can
/// be taken by another connection's source port before the component binds it).
pub fn free_port() -> u16 {
    nautilus_lifetime::ports::free_port().expect("a free port")
}

/// PCR values the agent's simulated NSM is given (not all zeros: not a debug enclave).
pub fn pcr(index: u8) -> Vec<u8> {
    vec![index + 0x40; 48]
}

/// A running agent.
pub struct AgentProcess {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub control: Endpoint,
    pub api: Endpoint,
    pub work_dir: PathBuf,
    pub data_dir: PathBuf,
    pub https_port: u16,
}

impl AgentProcess {
    /// Start the agent binary with the stand-in as its control plane.
    pub fn start() -> Self {
        Self::start_with(|_, _| {})
    }

    /// The same, after `setup` added to the command and prepared the work directory (which it
    /// gets before the agent runs).
    pub fn start_with(setup: impl FnOnce(&mut Command, &Path)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let control = Endpoint::Unix(dir.path().join("agent.sock"));
        let api = Endpoint::Unix(dir.path().join("api.sock"));
        let work_dir = dir.path().join("work");
        let data_dir = dir.path().join("data");
        let mut command = Command::new(env!("CARGO_BIN_EXE_nautilus-agent"));
        command
            .arg("--listen")
            .arg(control.to_string())
            .arg("--api-listen")
            .arg(api.to_string())
            .args(["--nsm", "simulated"])
            .arg("--control-plane-command")
            .arg(env!("CARGO_BIN_EXE_nautilus-standin"))
            .arg("--work-dir")
            .arg(&work_dir)
            .args(["--webhook-listen", "127.0.0.1:0", "--egress-proxy", "none"])
            .env("NAUTILUS_CP_SCHEDULER_PORT", free_port().to_string())
            .env(
                "NAUTILUS_CP_CONTROLLER_MANAGER_PORT",
                free_port().to_string(),
            )
            .env("RUST_LOG", "info");
        for i in 0..3u8 {
            command
                .arg("--simulated-pcr")
                .arg(format!("{i}={}", hex::encode(pcr(i))));
        }
        setup(&mut command, &work_dir);
        let child = command.spawn().expect("agent starts");
        Self {
            dir,
            child,
            control,
            api,
            work_dir,
            data_dir,
            https_port: free_port(),
        }
    }

    /// The boot configuration for this agent, with `nonce`.
    pub fn boot_config(&self, nonce: &[u8]) -> BootConfig {
        standin_boot_config(&self.data_dir, self.https_port, nonce)
    }

    /// Connect to the control link, waiting for the agent to listen.
    pub async fn connect(&self) -> BoxedStream {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match transport::connect(&self.control).await {
                Ok(stream) => return stream,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("agent never listened: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Switch the stand-in's health.
    pub fn set_health(&self, json: &str) {
        std::fs::create_dir_all(&self.data_dir).expect("data dir");
        let tmp = self.data_dir.join("standin-health.json.tmp");
        std::fs::write(&tmp, json).expect("write health");
        std::fs::rename(&tmp, self.data_dir.join("standin-health.json")).expect("rename");
    }

    pub fn work_file(&self, name: &str) -> PathBuf {
        self.work_dir.join(name)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return; // Already reaped: its pid may belong to someone else now.
        }
        // SIGTERM lets the agent stop the stand-in; SIGKILL after a grace.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `k3s` boot configuration (run by the stand-in) on 127.0.0.1:`https_port` with its data in
/// `data_dir`, one admin tier, 1 s probes, and `nonce`.
pub fn standin_boot_config(data_dir: &Path, https_port: u16, nonce: &[u8]) -> BootConfig {
    BootConfig {
        config: EnclaveConfig {
            cluster: "test/agent".into(),
            control_plane: ControlPlaneConfig {
                distribution: "k3s".into(),
                bind_address: "127.0.0.1".into(),
                https_port,
                cluster_cidr: "10.42.0.0/16".into(),
                service_cidr: "10.43.0.0/16".into(),
                cluster_dns: "10.43.0.10".into(),
                data_dir: data_dir.display().to_string(),
                encrypt_secrets: true,
                tls_min_version: "VersionTLS12".into(),
                cipher_suites: vec![],
                log_level: "info".into(),
                log_format: "text".into(),
                tls_sans: Vec::new(),
                advertise_address: None,
                memory_mib: None,
            },
            auth: AuthConfig {
                sui_rpc_url: "https://127.0.0.1:1".into(),
                chain_id: None,
                stake_type: "0x3::staking_pool::StakedSui".into(),
                stake_amount_field: None,
                audience: "nautilus:test/agent".into(),
                max_token_lifetime_seconds: 900,
                stake_cache_ttl_seconds: 30,
                zk_login: None,
                tiers: vec![TierConfig {
                    name: "admin".into(),
                    min_stake_mist: 1,
                    groups: vec!["system:masters".into()],
                    identity: Default::default(),
                }],
            },
            health: HealthConfig {
                probe_interval_seconds: 1,
                startup_timeout_seconds: 30,
            },
            state: None,
        },
        nonce: nonce.to_vec(),
    }
}

/// Read the next message within `WAIT`.
pub async fn next(stream: &mut BoxedStream) -> Message {
    tokio::time::timeout(WAIT, wire::read_message(stream))
        .await
        .expect("a message in time")
        .expect("a valid message")
}

/// Read until an attestation arrives.
pub async fn next_attestation(stream: &mut BoxedStream) -> AttestationEvidence {
    loop {
        if let Message::Attestation(evidence) = next(stream).await {
            return evidence;
        }
    }
}

/// Read reports (skipping attestations) until `pred` holds; every report must verify.
pub async fn report_where(
    stream: &mut BoxedStream,
    verifier: &mut ReportVerifier,
    what: &str,
    pred: impl Fn(&Report) -> bool,
) -> Report {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, wire::read_message(stream))
            .await
            .unwrap_or_else(|_| panic!("no report where {what} within {WAIT:?}"))
            .expect("valid message");
        if let Message::Report(signed) = message {
            let report = verifier
                .verify(&signed, now_ms())
                .expect("every report verifies: signature, config, sequence, freshness");
            if pred(&report) {
                return report;
            }
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Verify `evidence` as the operator would: the simulated root, the PCRs, the nonce, and the
/// binding of the configuration digest and the CA.
pub fn verify_evidence(
    evidence: &AttestationEvidence,
    boot: &BootConfig,
    nonce: &[u8],
) -> AttestationDocument {
    let root = evidence
        .simulated_root_pem
        .as_deref()
        .expect("simulated mode carries its root");
    let verifier = Verifier::new(TrustAnchor::from_pem(root).expect("root"));
    let document = verifier
        .verify(&evidence.document, VerifyAt::Now)
        .expect("document verifies against the simulated root");
    let ca_digest = evidence.serving_ca_digest().expect("CA PEM");
    let policy = Policy {
        challenge: Some(nonce.to_vec()),
        binding: Some(Binding::v1(boot.config.digest(), ca_digest)),
        max_age_ms: Some(60_000),
        ..Policy::default()
    }
    .with_pcr(0, pcr(0))
    .with_pcr(1, pcr(1))
    .with_pcr(2, pcr(2));
    policy
        .check(&document, now_ms())
        .expect("policy: pcrs, nonce, binding");
    document
}

/// Verify `evidence` for `boot` against its simulated root: the boot nonce and the binding of
/// the configuration digest and the CA (PCRs as the agent was given them, debug allowed).
pub fn verify_boot_evidence(
    evidence: &AttestationEvidence,
    boot: &BootConfig,
) -> AttestationDocument {
    let root = evidence
        .simulated_root_pem
        .as_deref()
        .expect("simulated mode carries its root");
    let document = Verifier::new(TrustAnchor::from_pem(root).expect("root"))
        .verify(&evidence.document, VerifyAt::Now)
        .expect("document verifies");
    Policy {
        challenge: Some(boot.nonce.clone()),
        binding: Some(Binding::v1(
            boot.config.digest(),
            evidence.serving_ca_digest().expect("ca"),
        )),
        allow_debug: true,
        ..Policy::default()
    }
    .check(&document, now_ms())
    .expect("nonce and binding");
    document
}

/// One HTTP/1.1 request over TLS on `stream`, the server's certificate verified with `ca_pem`
/// for `server_name` (also the Host header), a JSON `body`, and a bearer `token` if given.
/// Returns the status code and the whole response text.
pub async fn https_request(
    stream: BoxedStream,
    ca_pem: &str,
    server_name: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    https_request_with(stream, ca_pem, server_name, method, path, token, &[], body).await
}

/// [`https_request`] with extra request headers (`Impersonate-User`, say; a `Content-Type`
/// among them replaces `application/json`).
#[allow(clippy::too_many_arguments)]
pub async fn https_request_with(
    stream: BoxedStream,
    ca_pem: &str,
    server_name: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = nautilus_agent::client::client_config(&[ca_pem], None).expect("tls config");
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, stream)
        .await
        .expect("the server's certificate chains to the given CA");
    let mut auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    for (name, value) in headers {
        auth.push_str(&format!("{name}: {value}\r\n"));
    }
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"))
    {
        auth.push_str("Content-Type: application/json\r\n");
    }
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server_name}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// The `kubernetes` distribution's programs for tests: kube-apiserver, kube-scheduler and
/// kube-controller-manager from `$KUBEBUILDER_ASSETS` (default `/usr/local/kubebuilder/bin`,
/// the envtest convention), etcd from there or else from `PATH`.
#[derive(Debug, Clone)]
pub struct KubernetesAssets {
    /// The directory holding the three Kubernetes programs.
    pub bin_dir: PathBuf,
    /// etcd.
    pub etcd: PathBuf,
}

/// Where the assets are, or exactly what is missing.
pub fn kubernetes_assets() -> Result<KubernetesAssets, String> {
    let dir = PathBuf::from(
        std::env::var_os("KUBEBUILDER_ASSETS")
            .unwrap_or_else(|| "/usr/local/kubebuilder/bin".into()),
    );
    let mut missing: Vec<String> = [
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
    ]
    .iter()
    .filter(|name| !dir.join(name).is_file())
    .map(|name| dir.join(name).display().to_string())
    .collect();
    let etcd = if dir.join("etcd").is_file() {
        Some(dir.join("etcd"))
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|p| p.join("etcd"))
                .find(|p| p.is_file())
        })
    };
    if etcd.is_none() {
        missing.push(format!(
            "etcd (neither {} nor on PATH)",
            dir.join("etcd").display()
        ));
    }
    match etcd {
        Some(etcd) if missing.is_empty() => Ok(KubernetesAssets { bin_dir: dir, etcd }),
        _ => Err(missing.join(", ")),
    }
}

/// The assets, or `None` after printing one `skipped:` line; with `NAUTILUS_E2E_REQUIRE=1` a
/// missing asset fails the test instead.
pub fn kubernetes_assets_or_skip(test: &str) -> Option<KubernetesAssets> {
    match kubernetes_assets() {
        Ok(assets) => Some(assets),
        Err(missing) => {
            assert!(
                std::env::var("NAUTILUS_E2E_REQUIRE").as_deref() != Ok("1"),
                "{test}: NAUTILUS_E2E_REQUIRE=1 but missing: {missing}"
            );
            println!("skipped: {test}: missing {missing}");
            None
        }
    }
}

/// The pid of the one process whose command line starts with a program named `program` and
/// mentions `needle`.
pub fn pid_of(program: &str, needle: &str) -> Option<i32> {
    processes_mentioning(needle)
        .into_iter()
        .find(|(_, cmdline)| {
            cmdline
                .split(' ')
                .next()
                .is_some_and(|p| Path::new(p).file_name().is_some_and(|n| n == program))
        })
        .map(|(pid, _)| pid)
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A plain HTTP/1.1 request to the sidecar's API: status and body.
pub async fn sidecar_http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
