//! Shared test fixtures: a fake agent producing real evidence, boot configurations, and a
//! minimal HTTP/1.1 client.

#![allow(dead_code)] // Each test binary uses a different part.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use nautilus_protocol::Binding;
use nautilus_protocol::nsm::{Nsm as _, SimulatedNsm};
use nautilus_protocol::transport::{self, BoxedStream, Endpoint, Listener};
use nautilus_protocol::wire::{
    AttestationEvidence, AuthConfig, BootConfig, ChallengeAnswer, Component, ComponentReport,
    ControlPlaneConfig, EnclaveConfig, HealthConfig, Message, ProcessState, Report, ReportSigner,
    TierConfig, WireError, read_message, write_message,
};
use nautilus_sidecar::{Args, Running};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long any single step may take before a test fails.
pub const STEP: Duration = Duration::from_secs(10);

pub fn now_ms() -> u64 {
    nautilus_sidecar::evidence::now_ms()
}

pub fn enclave_config(probe_interval_seconds: u32) -> EnclaveConfig {
    EnclaveConfig {
        cluster: "tenants/alpha".to_owned(),
        control_plane: ControlPlaneConfig {
            distribution: "k3s".into(),
            bind_address: "127.0.0.1".to_owned(),
            https_port: 6443,
            cluster_cidr: "10.42.0.0/16".to_owned(),
            service_cidr: "10.43.0.0/16".to_owned(),
            cluster_dns: "10.43.0.10".to_owned(),
            data_dir: "/var/lib/nautilus/k3s".to_owned(),
            encrypt_secrets: true,
            tls_min_version: "VersionTLS13".to_owned(),
            cipher_suites: Vec::new(),
            log_level: "info".to_owned(),
            log_format: "json".to_owned(),
            tls_sans: Vec::new(),
            advertise_address: None,
            memory_mib: None,
        },
        auth: AuthConfig {
            sui_rpc_url: "https://fullnode.testnet.sui.io:443".to_owned(),
            chain_id: None,
            stake_type: "0x3::staking_pool::StakedSui".to_owned(),
            stake_amount_field: None,
            audience: "nautilus:tenants/alpha".to_owned(),
            max_token_lifetime_seconds: 3600,
            stake_cache_ttl_seconds: 60,
            zk_login: None,
            tiers: vec![TierConfig {
                name: "admin".to_owned(),
                min_stake_mist: 1,
                groups: vec!["system:masters".to_owned()],
                identity: Default::default(),
            }],
        },
        health: HealthConfig {
            probe_interval_seconds,
            startup_timeout_seconds: 120,
        },
        state: None,
    }
}

pub fn boot_config(probe_interval_seconds: u32) -> BootConfig {
    BootConfig {
        config: enclave_config(probe_interval_seconds),
        nonce: b"operator nonce 0".to_vec(),
    }
}

pub fn write_boot_config(dir: &Path, boot: &BootConfig) -> PathBuf {
    let path = dir.join("boot-config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(boot).expect("json")).expect("write");
    path
}

/// Sidecar arguments for the process launcher (a `sleep` stands in for the agent process)
/// with every listener on a free local port.
pub fn args(boot_path: &Path, agent: &Endpoint, api_upstream: &str, extra: &[&str]) -> Args {
    let mut argv = vec![
        "nautilus-sidecar".to_owned(),
        "--boot-config".to_owned(),
        boot_path.display().to_string(),
        "--launcher".to_owned(),
        "process".to_owned(),
        "--agent-command".to_owned(),
        "sleep".to_owned(),
        "--agent-arg".to_owned(),
        "600".to_owned(),
        "--agent".to_owned(),
        agent.to_string(),
        "--api-upstream".to_owned(),
        api_upstream.to_owned(),
        "--http-listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--api-listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--egress-listen".to_owned(),
        "tcp://127.0.0.1:0".to_owned(),
    ];
    // A fake agent does not answer Stop: shutdowns stop it at once, unless a test says.
    if !extra.contains(&"--stop-grace-seconds") {
        argv.extend(["--stop-grace-seconds".to_owned(), "0".to_owned()]);
    }
    argv.extend(extra.iter().map(|s| (*s).to_owned()));
    Args::try_parse_from(argv).expect("arguments parse")
}

/// A sidecar whose agent is a [`FakeAgent`] on a Unix socket in `dir`.
pub async fn sidecar(dir: &Path, probe_interval: u32, extra: &[&str]) -> (Running, FakeAgent) {
    let agent = FakeAgent::bind(dir, probe_interval).await;
    let boot_path = write_boot_config(dir, &agent.boot);
    let running = nautilus_sidecar::start(args(
        &boot_path,
        agent.endpoint(),
        "tcp://127.0.0.1:9",
        extra,
    ))
    .await
    .expect("sidecar starts");
    (running, agent)
}

/// The agent's side of the link, producing real evidence: a simulated NSM document binding
/// the config digest and a CA, with the report key as `public_key`.
pub struct FakeAgent {
    listener: Listener,
    pub nsm: SimulatedNsm,
    pub signer: ReportSigner,
    pub boot: BootConfig,
}

impl FakeAgent {
    pub async fn bind(dir: &Path, probe_interval: u32) -> Self {
        let listener = transport::bind(&Endpoint::Unix(dir.join("agent.sock")))
            .await
            .expect("bind agent socket");
        Self {
            listener,
            nsm: SimulatedNsm::new().expect("simulated nsm"),
            signer: ReportSigner::generate(),
            boot: boot_config(probe_interval),
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        self.listener.endpoint()
    }

    /// Accept a connection without reading anything (whether the sidecar dials at all).
    pub async fn listener_accept(&self) -> std::io::Result<()> {
        self.listener
            .accept()
            .await
            .map(|_| ())
            .map_err(std::io::Error::other)
    }

    /// Accept the sidecar's next connection and read its BootConfig.
    pub async fn accept(&self) -> AgentConn {
        let (stream, _) = tokio::time::timeout(STEP, self.listener.accept())
            .await
            .expect("sidecar connects in time")
            .expect("accept");
        let mut conn = AgentConn {
            stream,
            digest: self.boot.config.digest_hex(),
            sequence: 0,
            boot_nonce: Vec::new(),
        };
        match conn.recv().await {
            Message::BootConfig(boot) => {
                assert_eq!(*boot, self.boot_with(&boot.nonce));
                conn.boot_nonce = boot.nonce;
            }
            other => panic!("expected BootConfig first, got {:?}", other.kind()),
        }
        conn
    }

    fn boot_with(&self, nonce: &[u8]) -> BootConfig {
        BootConfig {
            config: self.boot.config.clone(),
            nonce: nonce.to_vec(),
        }
    }

    /// Attestation evidence for `nonce`, signed by the simulated NSM.
    pub fn evidence(&self, signer: &ReportSigner, nonce: &[u8]) -> AttestationEvidence {
        let ca_pem = self.nsm.root_pem().to_owned();
        let evidence = AttestationEvidence {
            document: Vec::new(),
            serving_ca_pem: ca_pem,
            simulated_root_pem: Some(self.nsm.root_pem().to_owned()),
        };
        let binding = Binding::v1(
            self.boot.config.digest(),
            evidence.serving_ca_digest().expect("ca digest"),
        );
        let document = self
            .nsm
            .attest(Some(&binding), Some(nonce), Some(&signer.public_key_der()))
            .expect("attest");
        AttestationEvidence {
            document,
            ..evidence
        }
    }
}

pub struct AgentConn {
    pub stream: BoxedStream,
    pub digest: String,
    pub sequence: u64,
    /// The nonce of the BootConfig this connection started with.
    pub boot_nonce: Vec<u8>,
}

impl AgentConn {
    pub async fn recv(&mut self) -> Message {
        tokio::time::timeout(STEP, read_message(&mut self.stream))
            .await
            .expect("message in time")
            .expect("message")
    }

    pub async fn send(&mut self, message: Message) {
        write_message(&mut self.stream, &message)
            .await
            .expect("send");
    }

    /// Answer a user's challenge for `nonce` with a fresh document carrying it.
    pub async fn answer(&mut self, agent: &FakeAgent, nonce: &[u8]) {
        let attestation = agent.evidence(&agent.signer, nonce);
        self.send(Message::ChallengeAnswer(ChallengeAnswer {
            nonce: nonce.to_vec(),
            attestation,
        }))
        .await;
    }

    /// Answer every challenge that arrives until the link closes (other messages are read
    /// and dropped), in a task of its own.
    pub fn answer_every_challenge(mut self, agent: FakeAgent) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match read_message(&mut self.stream).await {
                    Ok(Message::Challenge(challenge)) => {
                        self.answer(&agent, &challenge.nonce).await;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
    }

    pub async fn attest(&mut self, agent: &FakeAgent, nonce: &[u8]) {
        let evidence = agent.evidence(&agent.signer, nonce);
        self.send(Message::Attestation(evidence)).await;
    }

    /// A report of the next sequence, dated `time_ms`, with `unhealthy` components failing.
    pub fn report(&mut self, time_ms: u64, unhealthy: &[Component]) -> Report {
        self.sequence += 1;
        Report {
            sequence: self.sequence,
            time_unix_ms: time_ms,
            boot_config_digest: self.digest.clone(),
            components: Component::ALL
                .iter()
                .map(|&component| ComponentReport {
                    component,
                    healthy: !unhealthy.contains(&component),
                    checked_unix_ms: time_ms,
                    latency_ms: Some(2),
                    message: unhealthy
                        .contains(&component)
                        .then(|| "GET /healthz: connection refused".to_owned()),
                })
                .collect(),
            control_plane: ProcessState {
                running: true,
                pid: Some(4242),
                started_unix_ms: Some(time_ms),
                ..ProcessState::default()
            },
            state: None,
            budget: None,
        }
    }

    pub async fn send_report(&mut self, signer: &ReportSigner, report: &Report) {
        self.send(Message::Report(signer.sign(report))).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
        self.stream.flush().await.expect("flush");
    }

    /// Wait for the sidecar to close the connection.
    pub async fn expect_closed(&mut self) {
        let read = tokio::time::timeout(STEP, read_message(&mut self.stream))
            .await
            .expect("sidecar closes in time");
        assert!(
            matches!(read, Err(WireError::Closed | WireError::Io(_))),
            "expected the sidecar to close the link, got {read:?}"
        );
    }
}

/// One HTTP/1.1 exchange; returns the status and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: sidecar\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        stream.write_all(body).await.expect("write body");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        response
    };
    let response = tokio::time::timeout(STEP, exchange)
        .await
        .expect("http answer in time");
    let text = String::from_utf8(response).expect("utf-8 response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, b"").await
}

/// Poll `check` until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of a metric line (`name{labels} value`) in an exposition, 0 when absent.
pub fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Assert the value of `name{labels}` for each `(labels, value)` in an exposition.
pub fn assert_series(metrics: &str, name: &str, expected: &[(&str, u64)]) {
    for (labels, value) in expected {
        let series = format!("{name}{{{labels}}}");
        assert_eq!(metric(metrics, &series), *value, "{series}: {metrics}");
    }
}

/// Wait until `/readyz` answers `status` and return its body.
pub async fn readyz_becomes(running: &Running, status: u16) -> String {
    let addr = running.http_addr();
    eventually(STEP, &format!("/readyz {status}"), || async move {
        let (got, body) = get(addr, "/readyz").await;
        (got == status).then_some(body)
    })
    .await
}
