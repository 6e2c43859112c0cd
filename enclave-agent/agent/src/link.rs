//! The agent's runtime: the control link to the sidecar, the boot, the report stream, and the
//! API server forwarder.
//!
//! ```text
//! sidecar ──BootConfig──► agent   boot once: keys, CAs, attestation, k3s files, webhook,
//!                                 control plane under supervision, prober + reporter
//! sidecar ◄─Attestation── agent   the latest evidence (again after every NonceRefresh)
//! sidecar ◄─Report──────  agent   signed, sequence +1, after every probe round and change
//! sidecar ──NonceRefresh─► agent  attest again: same key and binding, new nonce
//! sidecar ──Challenge────► agent  a user's nonce: one ChallengeAnswer, evidence unchanged
//! ```
//!
//! The agent boots once per process. A later connection (the sidecar restarted) must send the
//! same configuration; it gets the latest attestation (re-attested if its nonce differs) and the
//! reports that follow. Another configuration is refused and logged. Any frame error — wrong
//! version, unknown kind, oversized, malformed or unknown-field JSON, a message out of place —
//! closes that connection with a logged reason; the agent keeps serving the next one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::bounded::{BoundedListener, Conn, Limits, Phase, Unobserved};
use nautilus_protocol::nsm::Nsm;
use nautilus_protocol::transport::{self, Endpoint, Listener, TransportError};
use nautilus_protocol::wire::{
    self, AttestationEvidence, BootConfig, ComponentReport, EnclaveConfig, Message, ProcessState,
    Report, SignedReport, WireError,
};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::auth::{self, AuthError};
use crate::boot::{BootError, BootMaterial};
use crate::client::ClientError;
use crate::control_plane::{ControlPlane, KubernetesPlan};
use crate::flags::{self, ComponentPorts, Distribution, FlagsError};
use crate::k3s::{self, K3sError};
use crate::kubernetes::{self, Binaries, KubernetesError, Readiness};
use crate::prober::{ProbeTargets, Prober};
use crate::supervisor::{SupervisorConfig, unix_ms};
use crate::webhook::{WebhookError, WebhookService, webhook_kubeconfig};

/// How long a new connection may take to send its BootConfig.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds of the control listener. Only the sidecar connects (one connection, a second while
/// it reconnects), so 8 is plenty. Once a frame starts it must complete within
/// [`wire::FRAME_TIMEOUT`]; between frames the sidecar may rightly stay quiet, but the agent
/// writes a report every probe interval (at most 300 s), so a connection that moves no byte
/// for 15 minutes is dead, or its reader stopped reading.
pub const CONTROL_LIMITS: Limits = Limits {
    max_connections: 8,
    handshake_timeout: FIRST_MESSAGE_TIMEOUT,
    header_timeout: wire::FRAME_TIMEOUT,
    body_timeout: wire::FRAME_TIMEOUT,
    idle_timeout: Duration::from_secs(900),
};

/// Bounds of the API forwarder (the sidecar's API proxy's connections): the same as the
/// sidecar's defaults for its API proxy; the first bytes (a ClientHello) within 10 s.
pub const API_LIMITS: Limits = Limits {
    max_connections: 1024,
    handshake_timeout: Duration::from_secs(10),
    header_timeout: Duration::from_secs(10),
    body_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(1800),
};

/// Environment variables given to the control-plane command.
pub mod env {
    /// The control plane's data directory (`dataDir`).
    pub const DATA_DIR: &str = "NAUTILUS_CP_DATA_DIR";
    /// The API server's bind address.
    pub const BIND_ADDRESS: &str = "NAUTILUS_CP_BIND_ADDRESS";
    /// The API server's HTTPS port.
    pub const HTTPS_PORT: &str = "NAUTILUS_CP_HTTPS_PORT";
    /// The token webhook's kubeconfig.
    pub const WEBHOOK_KUBECONFIG: &str = "NAUTILUS_CP_WEBHOOK_KUBECONFIG";
    /// A serving certificate for the API server, signed by the agent's CA (PEM file).
    pub const TLS_CERT: &str = "NAUTILUS_CP_TLS_CERT";
    /// Its private key (PKCS#8 PEM file).
    pub const TLS_KEY: &str = "NAUTILUS_CP_TLS_KEY";
    /// The agent's serving CA (PEM file).
    pub const CA_CERT: &str = "NAUTILUS_CP_CA_CERT";
    /// The rendered K3s `--config` file.
    pub const CONFIG_FILE: &str = "NAUTILUS_CP_CONFIG_FILE";
    /// kube-scheduler's secure port, when not 10259 (read by the agent's prober too).
    pub const SCHEDULER_PORT: &str = "NAUTILUS_CP_SCHEDULER_PORT";
    /// kube-controller-manager's secure port, when not 10257 (read by the prober too).
    pub const CONTROLLER_MANAGER_PORT: &str = "NAUTILUS_CP_CONTROLLER_MANAGER_PORT";
    /// etcd's client port, when not 2379 (`kubernetes` distribution; read by the agent).
    pub const ETCD_CLIENT_PORT: &str = "NAUTILUS_CP_ETCD_CLIENT_PORT";
    /// etcd's peer port, when not 2380 (`kubernetes` distribution; read by the agent).
    pub const ETCD_PEER_PORT: &str = "NAUTILUS_CP_ETCD_PEER_PORT";
}

/// Why the agent could not boot or serve a connection.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Listening failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A frame could not be read or written.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The first message did not arrive in time.
    #[error("no BootConfig within {0:?}")]
    FirstMessageTimeout(Duration),
    /// A second BootConfig differs from the one the agent booted with.
    #[error("boot config {offered} differs from the running {running}; refusing to reboot")]
    ConfigMismatch {
        /// Digest of the offered configuration.
        offered: String,
        /// Digest of the running one.
        running: String,
    },
    /// Keys, certificates or the attestation failed.
    #[error("boot failed")]
    Boot(#[from] BootError),
    /// The configuration does not make valid component flags.
    #[error("control-plane flags")]
    Flags(#[from] FlagsError),
    /// The K3s configuration could not be rendered or written.
    #[error("k3s configuration")]
    K3s(#[from] K3sError),
    /// The `kubernetes` distribution's files could not be written.
    #[error("kubernetes control-plane files")]
    Kubernetes(#[from] KubernetesError),
    /// The authenticator could not be built.
    #[error("token authentication")]
    Auth(#[from] AuthError),
    /// The webhook could not start.
    #[error("token webhook")]
    Webhook(#[from] WebhookError),
    /// The prober's TLS configuration failed.
    #[error("health prober")]
    Prober(#[from] ClientError),
    /// The webhook's TLS configuration failed.
    #[error("webhook tls: {0}")]
    Tls(String),
}

/// Everything the agent runs with that does not come from the BootConfig.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Control link endpoint.
    pub listen: Endpoint,
    /// Endpoint forwarded to the API server.
    pub api_listen: Endpoint,
    /// The NSM.
    pub nsm: Arc<dyn Nsm>,
    /// The simulated NSM's root (development only), put into the evidence.
    pub simulated_root_pem: Option<String>,
    /// The control-plane program.
    pub control_plane_command: PathBuf,
    /// Its arguments.
    pub control_plane_args: Vec<String>,
    /// Where the agent writes its files.
    pub work_dir: PathBuf,
    /// The token webhook's address.
    pub webhook_listen: SocketAddr,
    /// The egress proxy for Sui RPC (`None`: direct).
    pub egress_proxy: Option<Endpoint>,
    /// An extra trust root for the full node (PEM).
    pub sui_ca_pem: Option<String>,
    /// The components' local ports (scheduler, controller manager, etcd).
    pub ports: ComponentPorts,
    /// The `kubernetes` distribution's programs.
    pub kubernetes_binaries: Binaries,
    /// The supervisor's first restart delay.
    pub restart_backoff: Duration,
}

struct Booted {
    config: EnclaveConfig,
    digest_hex: String,
    material: Arc<BootMaterial>,
    attestation: watch::Sender<Option<(Vec<u8>, AttestationEvidence)>>,
    reports: watch::Sender<Option<SignedReport>>,
    report_now: Arc<Notify>,
    api_target: String,
    control_plane: Mutex<Option<ControlPlane>>,
    webhook: std::sync::Mutex<Option<WebhookService>>,
    reporter: tokio::task::JoinHandle<()>,
}

/// The agent.
pub struct Agent {
    options: AgentOptions,
    booted: Mutex<Option<Arc<Booted>>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("listen", &self.options.listen)
            .finish_non_exhaustive()
    }
}

/// The address to reach a server bound to `bind` on `port` from inside the enclave.
pub fn local_target(bind: &str, port: u16) -> String {
    match bind.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() => format!("127.0.0.1:{port}"),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{bind}:{port}"),
    }
}

fn is_k3s(command: &std::path::Path) -> bool {
    command.file_name().is_some_and(|name| name == "k3s")
}

impl Agent {
    /// An agent that has not booted yet.
    pub fn new(options: AgentOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            booted: Mutex::new(None),
        })
    }

    /// Bind the control link and the API forwarder, then serve until the process ends.
    pub async fn run(self: Arc<Self>) -> Result<(), LinkError> {
        let control = transport::bind(&self.options.listen).await?;
        let api = transport::bind(&self.options.api_listen).await?;
        info!(listen = %control.endpoint(), api_listen = %api.endpoint(), "agent listening");
        tokio::spawn(Arc::clone(&self).serve_api(api));
        self.serve_control(control).await
    }

    /// Accept control connections one after another, each served in its own task, within
    /// [`CONTROL_LIMITS`].
    pub async fn serve_control(self: Arc<Self>, listener: Listener) -> Result<(), LinkError> {
        let listener =
            BoundedListener::new(listener, "control", CONTROL_LIMITS, Arc::new(Unobserved));
        loop {
            let conn = listener.accept().await;
            let agent = Arc::clone(&self);
            let span = info_span!("control", peer = %conn.peer());
            tokio::spawn(
                async move {
                    info!("sidecar connected");
                    match agent.serve_connection(conn).await {
                        Ok(()) => info!("sidecar disconnected"),
                        Err(e) => warn!(reason = %error_chain(&e), "control connection closed"),
                    }
                }
                .instrument(span),
            );
        }
    }

    /// Forward every connection on `listener` to the local API server, byte for byte, within
    /// [`API_LIMITS`]: the upstream is dialled once the first bytes arrived.
    pub async fn serve_api(self: Arc<Self>, listener: Listener) {
        let listener = BoundedListener::new(listener, "api", API_LIMITS, Arc::new(Unobserved));
        loop {
            let mut stream = listener.accept().await;
            let target = self
                .booted
                .lock()
                .await
                .as_ref()
                .map(|b| b.api_target.clone());
            tokio::spawn(async move {
                let peer = stream.peer().to_owned();
                let Some(target) = target else {
                    debug!(%peer, "api connection before boot: closed");
                    return;
                };
                let mut first = vec![0u8; 4096];
                let read = tokio::time::timeout(
                    API_LIMITS.handshake_timeout,
                    tokio::io::AsyncReadExt::read(&mut stream, &mut first),
                )
                .await;
                let n = match read {
                    Ok(Ok(n)) if n > 0 => n,
                    Ok(_) => return,
                    Err(_) => {
                        stream.tag().timed_out(Phase::Handshake, &peer);
                        return;
                    }
                };
                match tokio::net::TcpStream::connect(&target).await {
                    Ok(mut upstream) => {
                        let _ = upstream.set_nodelay(true);
                        let forwarded = async {
                            tokio::io::AsyncWriteExt::write_all(&mut upstream, &first[..n]).await?;
                            drop(first);
                            tokio::io::copy_bidirectional(&mut stream, &mut upstream).await
                        };
                        if let Err(e) = forwarded.await {
                            debug!(%peer, error = %e, "api connection ended");
                        }
                    }
                    Err(e) => debug!(%peer, %target, error = %e, "api server unreachable"),
                }
            });
        }
    }

    /// Stop the control plane (no orphan) and the webhook.
    pub async fn shutdown(&self) {
        let booted = self.booted.lock().await.take();
        if let Some(booted) = booted {
            booted.reporter.abort();
            if let Some(webhook) = booted
                .webhook
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
            {
                webhook.stop();
            }
            if let Some(control_plane) = booted.control_plane.lock().await.take() {
                control_plane.stop().await;
            }
        }
    }

    async fn serve_connection(self: Arc<Self>, stream: Conn) -> Result<(), LinkError> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, wire::read_message(&mut reader))
            .await
            .map_err(|_| LinkError::FirstMessageTimeout(FIRST_MESSAGE_TIMEOUT))??;
        let boot = match first {
            Message::BootConfig(boot) => boot,
            other => {
                return Err(WireError::Unexpected {
                    found: other.kind(),
                    expected: "BootConfig",
                }
                .into());
            }
        };
        let booted = self.boot_or_join(&boot).await?;

        // Reads run in their own task: a frame half-read must not be dropped by a select.
        let (incoming_tx, mut incoming) = mpsc::channel::<Result<Message, WireError>>(4);
        let read_task = tokio::spawn(async move {
            loop {
                // A frame that starts must complete within FRAME_TIMEOUT; a nonce outside
                // 1..=512 bytes is refused while parsing, as the sidecar refuses it.
                let message = wire::read_message_within(&mut reader, wire::FRAME_TIMEOUT).await;
                let stop = message.is_err();
                if incoming_tx.send(message).await.is_err() || stop {
                    break;
                }
            }
        });
        let result = async {
            let mut attestations = booted.attestation.subscribe();
            let mut reports = booted.reports.subscribe();
            let evidence = attestations.borrow_and_update().clone();
            if let Some((_, evidence)) = evidence {
                wire::write_message(&mut writer, &Message::Attestation(evidence)).await?;
            }
            // Reports made before this connection are stale for it; ask for a fresh one now.
            reports.borrow_and_update();
            booted.report_now.notify_one();
            loop {
                tokio::select! {
                    message = incoming.recv() => match message {
                        None | Some(Err(WireError::Closed)) => return Ok(()),
                        Some(Err(e)) => return Err(LinkError::Wire(e)),
                        Some(Ok(Message::NonceRefresh(refresh))) => {
                            info!(nonce_len = refresh.nonce.len(), "nonce refresh");
                            booted.attest(&self.options, &refresh.nonce).await?;
                        }
                        Some(Ok(Message::Challenge(challenge))) => {
                            let options = &self.options;
                            let answer = crate::challenge::answer(
                                &booted.material,
                                Arc::clone(&options.nsm),
                                options.simulated_root_pem.clone(),
                                challenge,
                            );
                            if let Some(answer) = answer.await {
                                let answer = Message::ChallengeAnswer(answer);
                                wire::write_message(&mut writer, &answer).await?;
                            }
                        }
                        Some(Ok(other)) => {
                            return Err(WireError::Unexpected {
                                found: other.kind(),
                                expected: "NonceRefresh or Challenge",
                            }
                            .into());
                        }
                    },
                    changed = attestations.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let evidence = attestations.borrow_and_update().clone();
                        if let Some((_, evidence)) = evidence {
                            wire::write_message(&mut writer, &Message::Attestation(evidence)).await?;
                        }
                    }
                    changed = reports.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let report = reports.borrow_and_update().clone();
                        if let Some(report) = report {
                            wire::write_message(&mut writer, &Message::Report(report)).await?;
                        }
                    }
                }
            }
        }
        .await;
        read_task.abort();
        result
    }

    async fn boot_or_join(&self, boot: &BootConfig) -> Result<Arc<Booted>, LinkError> {
        let mut slot = self.booted.lock().await;
        if let Some(booted) = slot.as_ref() {
            if booted.config != boot.config {
                return Err(LinkError::ConfigMismatch {
                    offered: boot.config.digest_hex(),
                    running: booted.digest_hex.clone(),
                });
            }
            let same_nonce = booted
                .attestation
                .borrow()
                .as_ref()
                .is_some_and(|(nonce, _)| *nonce == boot.nonce);
            if !same_nonce {
                booted.attest(&self.options, &boot.nonce).await?;
            }
            info!(digest = %booted.digest_hex, "sidecar reconnected to the running boot");
            return Ok(Arc::clone(booted));
        }
        let booted = Arc::new(self.boot(boot).await?);
        *slot = Some(Arc::clone(&booted));
        Ok(booted)
    }

    async fn boot(&self, boot: &BootConfig) -> Result<Booted, LinkError> {
        let options = &self.options;
        let config = boot.config.clone();
        let digest_hex = config.digest_hex();
        info!(cluster = %config.cluster, digest = %digest_hex, "booting");
        let material = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || BootMaterial::generate(&config))
                .await
                .map_err(|e| BootError::Task(e.to_string()))??
        };
        let material = Arc::new(material);
        let cp = &config.control_plane;
        let api_target = local_target(&cp.bind_address, cp.https_port);

        // Everything that can fail on the configuration's values fails before anything runs,
        // so a refused boot leaves nothing behind and the next BootConfig starts afresh.
        let work = &options.work_dir;
        let ca_path = work.join("ca.crt");
        let cert_path = work.join("api-server.crt");
        let key_path = work.join("api-server.key");
        let kubeconfig_path = work.join("webhook-kubeconfig.yaml");
        let config_path = work.join("k3s-config.yaml");
        let distribution = Distribution::of(cp)?;
        let spec = flags::spec_flags(&config, &kubeconfig_path, &options.ports)?;
        let rendered = k3s::render_config(&config, &spec)?;
        let authenticator = auth::authenticator(
            &config.auth,
            options.egress_proxy.clone(),
            options.sui_ca_pem.as_deref(),
        )?;
        let tls = webhook_tls(&material)?;
        let interval = Duration::from_secs(u64::from(config.health.probe_interval_seconds.max(1)));
        let api_server_name = if cp
            .bind_address
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
        {
            "127.0.0.1".to_owned()
        } else {
            cp.bind_address.clone()
        };
        if distribution == Distribution::Kubernetes {
            let missing = options.kubernetes_binaries.missing();
            if !missing.is_empty() {
                // Not fatal: the supervisors report each spawn failure, so the operator sees
                // it in status; the image may also be fixed under a running agent in development.
                warn!(?missing, "kubernetes distribution: programs not found");
            }
        }
        let readiness = match distribution {
            Distribution::K3s => None,
            Distribution::Kubernetes => Some(Readiness::new(
                &material,
                &options.ports,
                api_target.clone(),
                api_server_name.clone(),
            )?),
        };
        let prober = Prober::new(
            ProbeTargets {
                api_server: api_target.clone(),
                api_server_name: api_server_name.clone(),
                scheduler_port: options.ports.scheduler,
                controller_manager_port: options.ports.controller_manager,
            },
            &material.serving_ca.cert_pem,
            Some((
                &material.probe_client.cert_der,
                &material.probe_client.key_der,
            )),
            interval.min(Duration::from_secs(5)),
        )?;
        let (attestation, _) = watch::channel(None);
        BootedParts {
            material: Arc::clone(&material),
            attestation: attestation.clone(),
        }
        .attest(options, &boot.nonce)
        .await?;

        // Files for the control plane.
        k3s::write(&ca_path, material.serving_ca.cert_pem.as_bytes(), false)?;
        k3s::write(&cert_path, material.api_server.cert_pem.as_bytes(), false)?;
        k3s::write(&key_path, material.api_server.key_pem.as_bytes(), true)?;
        let data_dir = std::path::Path::new(&cp.data_dir);
        let layout = kubernetes::Layout::new(data_dir);
        match distribution {
            Distribution::K3s => {
                k3s::write_ca_files(data_dir, &material)?;
                k3s::write(
                    &data_dir.join(k3s::RBAC_MANIFEST),
                    k3s::rbac_manifest()?.as_bytes(),
                    false,
                )?;
                k3s::write(&config_path, rendered.as_bytes(), false)?;
            }
            Distribution::Kubernetes => {
                kubernetes::write_files(&config, &layout, &material, &api_target)?;
            }
        }

        // The token webhook, before the API server that calls it.
        let webhook =
            WebhookService::start(options.webhook_listen, tls, Arc::new(authenticator)).await?;
        let url = format!("https://{}{}", webhook.local_addr(), crate::webhook::PATH);
        let written = webhook_kubeconfig(&url, &material.serving_ca.cert_pem)
            .map_err(LinkError::from)
            .and_then(|kubeconfig| {
                k3s::write(&kubeconfig_path, kubeconfig.as_bytes(), false).map_err(LinkError::from)
            });
        if let Err(e) = written {
            webhook.stop();
            return Err(e);
        }
        info!(webhook = %url, ?distribution, "control-plane files written");

        let (reports, _) = watch::channel(None);
        let report_now = Arc::new(Notify::new());

        // The control plane.
        let mut supervisor_config = SupervisorConfig::new(&options.control_plane_command, vec![]);
        supervisor_config.initial_backoff = options.restart_backoff;
        let control_plane = match (distribution, readiness) {
            (Distribution::Kubernetes, Some(readiness)) => {
                let argv = flags::as_argv;
                ControlPlane::kubernetes(KubernetesPlan {
                    binaries: options.kubernetes_binaries.clone(),
                    etcd: argv(&kubernetes::etcd_flags(&layout, &options.ports)),
                    apiserver: argv(&kubernetes::apiserver_flags(
                        &config,
                        &spec,
                        &layout,
                        &options.ports,
                    )),
                    scheduler: argv(&kubernetes::scheduler_flags(&spec, &layout)),
                    controller_manager: argv(&kubernetes::controller_manager_flags(
                        &config, &spec, &layout,
                    )),
                    readiness,
                    template: supervisor_config,
                })
            }
            _ => {
                let mut args = options.control_plane_args.clone();
                if is_k3s(&options.control_plane_command) {
                    if args.is_empty() {
                        args.push("server".into());
                    }
                    args.push("--config".into());
                    args.push(config_path.display().to_string());
                }
                supervisor_config.args = args;
                let path = |p: &std::path::Path| p.display().to_string();
                supervisor_config.env = vec![
                    (env::DATA_DIR.into(), cp.data_dir.clone()),
                    (env::BIND_ADDRESS.into(), cp.bind_address.clone()),
                    (env::HTTPS_PORT.into(), cp.https_port.to_string()),
                    (env::WEBHOOK_KUBECONFIG.into(), path(&kubeconfig_path)),
                    (env::TLS_CERT.into(), path(&cert_path)),
                    (env::TLS_KEY.into(), path(&key_path)),
                    (env::CA_CERT.into(), path(&ca_path)),
                    (env::CONFIG_FILE.into(), path(&config_path)),
                    (
                        env::SCHEDULER_PORT.into(),
                        options.ports.scheduler.to_string(),
                    ),
                    (
                        env::CONTROLLER_MANAGER_PORT.into(),
                        options.ports.controller_manager.to_string(),
                    ),
                ];
                ControlPlane::single(supervisor_config)
            }
        };
        let reporter = tokio::spawn(
            report_loop(ReportLoop {
                material: Arc::clone(&material),
                digest_hex: digest_hex.clone(),
                prober,
                process: control_plane.state(),
                reports: reports.clone(),
                report_now: Arc::clone(&report_now),
                interval,
                startup_timeout: Duration::from_secs(u64::from(
                    config.health.startup_timeout_seconds,
                )),
            })
            .instrument(info_span!("reporter")),
        );
        info!(digest = %digest_hex, api = %api_target, "booted");
        Ok(Booted {
            config,
            digest_hex,
            material,
            attestation,
            reports,
            report_now,
            api_target,
            control_plane: Mutex::new(Some(control_plane)),
            webhook: std::sync::Mutex::new(Some(webhook)),
            reporter,
        })
    }
}

fn webhook_tls(material: &BootMaterial) -> Result<Arc<rustls::ServerConfig>, LinkError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let key = PrivateKeyDer::try_from(material.webhook.key_der.clone())
        .map_err(|e| LinkError::Tls(e.to_owned()))?;
    rustls::ServerConfig::builder_with_provider(crate::client::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![
                CertificateDer::from(material.webhook.cert_der.clone()),
                CertificateDer::from(material.serving_ca.cert_der.clone()),
            ],
            key,
        )
        .map(Arc::new)
        .map_err(|e| LinkError::Tls(e.to_string()))
}

struct BootedParts {
    material: Arc<BootMaterial>,
    attestation: watch::Sender<Option<(Vec<u8>, AttestationEvidence)>>,
}

impl BootedParts {
    async fn attest(&self, options: &AgentOptions, nonce: &[u8]) -> Result<(), BootError> {
        let evidence = self
            .material
            .attest(
                Arc::clone(&options.nsm),
                nonce,
                options.simulated_root_pem.clone(),
            )
            .await?;
        info!(document_bytes = evidence.document.len(), "attested");
        self.attestation
            .send_replace(Some((nonce.to_vec(), evidence)));
        Ok(())
    }
}

impl Booted {
    async fn attest(&self, options: &AgentOptions, nonce: &[u8]) -> Result<(), BootError> {
        BootedParts {
            material: Arc::clone(&self.material),
            attestation: self.attestation.clone(),
        }
        .attest(options, nonce)
        .await
    }
}

struct ReportLoop {
    material: Arc<BootMaterial>,
    digest_hex: String,
    prober: Prober,
    process: watch::Receiver<ProcessState>,
    reports: watch::Sender<Option<SignedReport>>,
    report_now: Arc<Notify>,
    interval: Duration,
    startup_timeout: Duration,
}

/// Tracks whether the components became healthy within the startup timeout of each start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartupWatch {
    started_unix_ms: Option<u64>,
    healthy_since_start: bool,
    timed_out: bool,
}

impl StartupWatch {
    /// Update with the process state and a probe round at `now_ms`; returns `startup_timed_out`.
    pub fn observe(
        &mut self,
        process: &ProcessState,
        components: &[ComponentReport],
        timeout: Duration,
        now_ms: u64,
    ) -> bool {
        if process.started_unix_ms != self.started_unix_ms {
            *self = Self {
                started_unix_ms: process.started_unix_ms,
                ..Self::default()
            };
        }
        let healthy = !components.is_empty() && components.iter().all(|c| c.healthy);
        if healthy && process.running {
            self.healthy_since_start = true;
            self.timed_out = false;
        } else if !self.healthy_since_start
            && let Some(started) = self.started_unix_ms
            && now_ms.saturating_sub(started)
                > u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
        {
            self.timed_out = true;
        }
        self.timed_out
    }
}

async fn report_loop(mut r: ReportLoop) {
    let mut sequence: u64 = 0;
    let mut ticker = tokio::time::interval(r.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut components: Vec<ComponentReport> = Vec::new();
    let mut startup = StartupWatch::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => components = r.prober.round().await,
            changed = r.process.changed() => {
                if changed.is_err() {
                    return;
                }
                // The process started or ended: look again now rather than at the next tick.
                components = r.prober.round().await;
            }
            () = r.report_now.notified() => {
                if components.is_empty() {
                    components = r.prober.round().await;
                }
            }
        }
        let mut process = r.process.borrow_and_update().clone();
        let now = unix_ms();
        process.startup_timed_out = startup.observe(&process, &components, r.startup_timeout, now);
        sequence += 1;
        let report = Report {
            sequence,
            time_unix_ms: now,
            boot_config_digest: r.digest_hex.clone(),
            components: components.clone(),
            control_plane: process,
        };
        debug!(sequence, healthy = report.all_healthy(), "report");
        if report.control_plane.startup_timed_out && !report.all_healthy() {
            error!(
                sequence,
                "control plane not healthy within the startup timeout"
            );
        }
        r.reports
            .send_replace(Some(r.material.signer.sign(&report)));
    }
}

/// `error: cause: cause…` for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors already print their source; do not say it twice.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use nautilus_protocol::wire::Component;

    fn round(healthy: bool) -> Vec<ComponentReport> {
        Component::ALL
            .iter()
            .map(|&component| ComponentReport {
                component,
                healthy,
                checked_unix_ms: 0,
                latency_ms: None,
                message: None,
            })
            .collect()
    }

    #[test]
    fn startup_timeout_is_per_start() {
        let timeout = Duration::from_secs(10);
        let mut watch = StartupWatch::default();
        let mut process = ProcessState {
            running: true,
            started_unix_ms: Some(1_000),
            ..ProcessState::default()
        };
        assert!(!watch.observe(&process, &round(false), timeout, 5_000));
        assert!(watch.observe(&process, &round(false), timeout, 11_001));
        // Healthy clears it, and a later failure of the same run is not a startup timeout.
        assert!(!watch.observe(&process, &round(true), timeout, 12_000));
        assert!(!watch.observe(&process, &round(false), timeout, 30_000));
        // A new start begins a new window.
        process.started_unix_ms = Some(40_000);
        assert!(!watch.observe(&process, &round(false), timeout, 45_000));
        assert!(watch.observe(&process, &round(false), timeout, 50_001));
    }

    #[test]
    fn local_targets() {
        assert_eq!(local_target("0.0.0.0", 6443), "127.0.0.1:6443");
        assert_eq!(local_target("10.1.2.3", 6443), "10.1.2.3:6443");
        assert_eq!(local_target("::1", 6443), "[::1]:6443");
    }
}
