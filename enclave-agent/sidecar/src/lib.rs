//! Host-side sidecar of a Nautilus enclave.
//!
//! The sidecar runs in the enclave's pod on the parent instance. It starts the enclave, sends
//! the agent inside it the boot configuration, keeps the attestation and signed reports the
//! agent sends back, and serves them to the operator over HTTP. It also carries the enclave's
//! traffic: the API server port in, and Sui RPC and the API server's kubelet connections out
//! through an allowlisted CONNECT proxy. It
//! is not trusted (everything it relays is signed inside the enclave) and holds no Kubernetes
//! credentials.
//!
//! ```text
//!  operator ──HTTP :8080──► sidecar ──vsock :5000 (frames)──► agent (enclave)
//!  clients ───TCP :6443───► sidecar ──vsock :6443 (bytes)───► API server (enclave)
//!  Sui RPC  ◄──TCP :443──── sidecar ◄─vsock :8001 (CONNECT)── agent (enclave)
//!  kubelets ◄─TCP :10250─── sidecar ◄─vsock :8001 (CONNECT)── API server (enclave, via agent)
//! ```
//!
//! Layout:
//! - [`cli`]: the command line ([`Args`]).
//! - [`launcher`]: the [`Launcher`] trait, `nitro-cli` and child-process
//!   implementations.
//! - [`link`]: the control link to the agent (boot config out, evidence in, nonce refresh).
//! - [`evidence`]: the latest evidence, report verification, readiness.
//! - [`http`]: `/healthz`, `/readyz`, `/report`, `/metrics`, `POST /attest`, `POST /challenge`.
//! - [`challenge`]: users' one-shot challenges, on the HTTP API and on the API port.
//! - [`respond`]: text, JSON and JSON-body helpers the HTTP API and the challenge route share.
//! - [`proxy`]: the API byte proxy and the egress CONNECT proxy.
//! - [`metrics`]: Prometheus counters.
//!
//! Embedding (tests, development loops): build [`Args`] (for example with
//! `clap::Parser::try_parse_from`), call [`start`], use the addresses on [`Running`], and
//! call [`Running::shutdown`] at the end. This API is stable for the workspace's tests.

pub mod addr;
pub mod challenge;
pub mod cli;
pub mod evidence;
pub mod http;
pub mod imds;
pub mod launcher;
pub mod link;
pub mod metrics;
pub mod proxy;
pub mod respond;
pub mod state;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::bounded::{BoundedListener, Observer};
use nautilus_protocol::constants;
use nautilus_protocol::transport::{self, Endpoint, TransportError};
use nautilus_protocol::wire::BootConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use cli::{Args, BudgetArgs, Cidr, HostPort, LauncherKind, LimitArgs, ListenAddr, LogFormat};
use evidence::Evidence;
use launcher::{LaunchError, Launcher, NitroConfig, NitroLauncher, ProcessLauncher};
use link::{LinkConfig, LinkError};
use metrics::Metrics;

/// Largest boot configuration file read.
pub const MAX_BOOT_CONFIG_BYTES: u64 = 1024 * 1024;

/// Why the sidecar could not start or stopped working.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// The boot configuration file could not be read.
    #[error("cannot read the boot configuration {path}")]
    BootConfigRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The boot configuration is not a valid `BootConfig` (unknown fields included).
    #[error("boot configuration {path} is invalid: {reason}")]
    BootConfig {
        /// The file.
        path: PathBuf,
        /// What the parser reported, with line and column.
        reason: String,
    },
    /// The flags do not describe a runnable sidecar.
    #[error("{0}")]
    Config(String),
    /// The HTTP listener could not bind.
    #[error("cannot listen on {addr} for the http api")]
    HttpBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: TransportError,
    },
    /// A proxy listener could not bind.
    #[error("cannot start the {proxy} proxy")]
    ProxyBind {
        /// `api` or `egress`.
        proxy: &'static str,
        /// The cause.
        #[source]
        source: TransportError,
    },
    /// The enclave could not be started.
    #[error("cannot start the enclave")]
    Launch(#[source] LaunchError),
    /// The enclave could not be stopped.
    #[error("cannot stop the enclave")]
    Stop(#[source] LaunchError),
    /// The control link gave up.
    #[error("control link failed")]
    Link(#[from] LinkError),
    /// The enclave (or agent process) ended.
    #[error("the enclave stopped: {last_exit}")]
    EnclaveExited {
        /// How it ended, as the launcher saw it.
        last_exit: String,
    },
}

/// Read and strictly parse a boot configuration file (unknown fields are errors).
pub fn load_boot_config(path: &Path) -> Result<BootConfig, SidecarError> {
    use std::io::Read as _;
    let read_err = |source| SidecarError::BootConfigRead {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_BOOT_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_BOOT_CONFIG_BYTES {
        return Err(SidecarError::BootConfig {
            path: path.to_owned(),
            reason: format!("larger than {MAX_BOOT_CONFIG_BYTES} bytes"),
        });
    }
    let config: BootConfig =
        serde_json::from_slice(&bytes).map_err(|e| SidecarError::BootConfig {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    // The nonce's size rule (wire::check_nonce) was applied while parsing.
    Ok(config)
}

/// A running sidecar: its bound addresses, its evidence, and the handle to stop it.
///
/// Dropping it stops the listeners and the link and kills a process-launched agent, but does
/// not terminate a Nitro enclave: call [`Running::shutdown`].
#[derive(Debug)]
pub struct Running {
    http_addr: SocketAddr,
    api_endpoint: Endpoint,
    egress_endpoint: Endpoint,
    agent_endpoint: Endpoint,
    evidence: Arc<Evidence>,
    launcher: Arc<dyn Launcher>,
    tasks: Vec<JoinHandle<()>>,
    /// The control link, apart from the other tasks: a stop lets it run until the agent is done.
    link: Option<JoinHandle<()>>,
    stop_link: tokio::sync::watch::Sender<bool>,
    stop_grace: Duration,
    fatal: mpsc::Receiver<SidecarError>,
}

impl Running {
    /// Where the HTTP API listens (with the real port when 0 was asked for).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the API proxy listens.
    pub fn api_endpoint(&self) -> &Endpoint {
        &self.api_endpoint
    }

    /// Where the API proxy listens, when that is a TCP socket address.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        match &self.api_endpoint {
            Endpoint::Tcp(addr) => addr.parse().ok(),
            _ => None,
        }
    }

    /// Where the egress proxy listens (the endpoint to give the agent as `--egress-proxy`).
    pub fn egress_endpoint(&self) -> &Endpoint {
        &self.egress_endpoint
    }

    /// The agent's control endpoint the link dials.
    pub fn agent_endpoint(&self) -> &Endpoint {
        &self.agent_endpoint
    }

    /// The evidence and readiness the HTTP API serves.
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }

    /// Wait until the sidecar can no longer do its job: the enclave stopped, or the agent
    /// never answered before `--link-timeout-seconds`. Never returns otherwise.
    pub async fn wait(&mut self) -> SidecarError {
        match self.fatal.recv().await {
            Some(err) => err,
            // The senders live in tasks owned by `self`, so this only happens once they
            // finished without a fatal error, which they never do.
            None => std::future::pending().await,
        }
    }

    /// Stop gracefully: ask the agent to stop ([`Message::Stop`] on the link, which keeps
    /// storing what the agent sends, its last snapshot included) and wait until it closed the
    /// link, at most `--stop-grace-seconds` ([`constants::stop::AGENT`] by default); then stop serving, stop the enclave (terminate-enclave,
    /// or SIGTERM to the agent's process group), and remove Unix socket files this sidecar
    /// bound.
    ///
    /// [`Message::Stop`]: nautilus_protocol::wire::Message::Stop
    pub async fn shutdown(mut self) -> Result<(), SidecarError> {
        let _ = self.stop_link.send(true);
        if let Some(mut link) = self.link.take() {
            let started = std::time::Instant::now();
            match tokio::time::timeout(self.stop_grace, &mut link).await {
                Ok(_) => info!(
                    ms = started.elapsed().as_millis(),
                    "the agent stopped and closed the link"
                ),
                Err(_) => {
                    warn!(grace = ?self.stop_grace, "the agent did not stop in time; stopping the enclave");
                    link.abort();
                }
            }
        }
        // Aborted, and awaited: `abort` only asks, and the launcher watch could otherwise start
        // one more `describe-enclaves` (or process poll) while the enclave is being stopped.
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        let stopped = self.launcher.stop().await.map_err(SidecarError::Stop);
        for endpoint in [&self.api_endpoint, &self.egress_endpoint] {
            if let Endpoint::Unix(path) = endpoint {
                let _ = std::fs::remove_file(path);
            }
        }
        info!("sidecar stopped");
        stopped
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(&self.link) {
            task.abort();
        }
    }
}

fn required<T>(value: Option<T>, flag: &str, launcher: &str) -> Result<T, SidecarError> {
    value.ok_or_else(|| {
        SidecarError::Config(format!("{flag} is required with --launcher {launcher}"))
    })
}

/// Start the sidecar: read the boot configuration, bind the HTTP API and both proxies,
/// launch the enclave, and start the control link and the launcher watch.
///
/// Returns once everything is listening and the enclave was started; the agent connection
/// and its evidence arrive later (watch `/readyz`). Errors before the launch leave nothing
/// running.
pub async fn start(args: Args) -> Result<Running, SidecarError> {
    let Args {
        boot_config,
        launcher: launcher_kind,
        eif_path,
        cpu_count,
        memory_mib,
        enclave_cid,
        enclave_name,
        nitro_cli,
        agent_command,
        agent_args,
        isolate_network,
        state_dir,
        agent,
        api_upstream,
        http_listen,
        api_listen,
        egress_listen,
        egress_allow,
        egress_allow_kubelet_ports,
        egress_kubelet_cidrs,
        report_max_age_seconds,
        aws_credentials_file,
        link_timeout_seconds,
        stop_grace_seconds,
        limits,
        budgets,
        log_format: _,
    } = args;
    let [challenge_rates, connection_rates] = budgets.rates();
    let [http_limits, api_limits, egress_limits] = limits.limits();
    let frame_timeout = Duration::from_secs(limits.client_timeout_seconds);

    let boot = load_boot_config(&boot_config)?;
    let state_dir = state_dir.unwrap_or_else(|| {
        boot_config
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    });
    // Sealed state: the snapshots the agent streams out, kept under --state-dir.
    let link_state = match &boot.config.state {
        Some(state) => Some(link::LinkState {
            store: state::SnapshotStore::open(&state_dir, state.retain)
                .map_err(|e| SidecarError::Config(format!("sealed state store: {e}")))?
                .offering_only(
                    std::iter::once(state.resource_uid.clone())
                        .chain(state.restore_from_uids.iter().cloned())
                        .collect(),
                ),
            credentials: state::CredentialSource {
                // The instance role's, from the metadata service, only when nothing else is
                // given (as the AWS SDKs do): a Nitro node's case.
                imds: match &aws_credentials_file {
                    Some(_) => None,
                    None => imds::Imds::from_env().map_err(|e| {
                        SidecarError::Config(format!("sealed state credentials: {e}"))
                    })?,
                },
                file: aws_credentials_file,
            },
        }),
        None => None,
    };
    let digest = boot.config.digest_hex();
    let max_age_ms = report_max_age_seconds
        .unwrap_or_else(|| 3 * u64::from(boot.config.health.probe_interval_seconds.max(1)))
        .saturating_mul(1000);

    let (launcher, poll): (Arc<dyn Launcher>, Duration) = match launcher_kind {
        LauncherKind::Nitro if isolate_network => {
            return Err(SidecarError::Config(
                "--isolate-network is for --launcher process (an enclave has no network to isolate)"
                    .to_owned(),
            ));
        }
        LauncherKind::Nitro => (
            Arc::new(NitroLauncher::new(NitroConfig {
                nitro_cli,
                eif_path: required(eif_path, "--eif-path", "nitro")?,
                cpu_count: required(cpu_count, "--cpu-count", "nitro")?,
                memory_mib: required(memory_mib, "--memory-mib", "nitro")?,
                enclave_cid,
                enclave_name: enclave_name
                    .unwrap_or_else(|| launcher::enclave_name_for(&boot.config.cluster)),
            })),
            Duration::from_secs(5),
        ),
        LauncherKind::Process => {
            if agent.is_none() || api_upstream.is_none() {
                return Err(SidecarError::Config(
                    "--agent and --api-upstream are required with --launcher process (there is no enclave CID)".to_owned(),
                ));
            }
            if isolate_network {
                // Over TCP the isolated agent would be unreachable (its loopback is not ours).
                for (flag, endpoint) in [
                    ("--agent", agent.as_ref()),
                    ("--api-upstream", api_upstream.as_ref()),
                    ("--egress-listen", Some(&egress_listen)),
                ] {
                    if !matches!(endpoint, Some(Endpoint::Unix(_))) {
                        return Err(SidecarError::Config(format!(
                            "{flag} must be a unix: endpoint with --isolate-network (the agent \
                             has no network but its loopback)"
                        )));
                    }
                }
            }
            let mut process = ProcessLauncher::new(
                required(agent_command, "--agent-command", "process")?,
                agent_args,
            )
            .with_state_dir(state_dir.clone());
            if isolate_network {
                process = process.with_isolated_network();
            }
            (Arc::new(process), Duration::from_millis(500))
        }
    };
    if egress_allow.is_empty() {
        warn!("no --egress-allow: the egress proxy tunnels to kubelets only");
    }

    let metrics = Arc::new(Metrics::new());
    let (evidence, nonces) = Evidence::new(digest.clone(), max_age_ms, Arc::clone(&metrics));
    let evidence = Arc::new(evidence);

    // Listen before launching: the enclave dials the egress proxy as it boots.
    let http = transport::bind(&Endpoint::Tcp(http_listen.to_string()))
        .await
        .map_err(|source| SidecarError::HttpBind {
            addr: http_listen,
            source,
        })?;
    let http_addr = match http.endpoint() {
        Endpoint::Tcp(addr) => addr.parse().unwrap_or(http_listen),
        _ => http_listen,
    };
    let api = transport::bind(&api_listen.0)
        .await
        .map_err(|source| SidecarError::ProxyBind {
            proxy: "api",
            source,
        })?;
    let egress =
        transport::bind(&egress_listen)
            .await
            .map_err(|source| SidecarError::ProxyBind {
                proxy: "egress",
                source,
            })?;
    let api_endpoint = api.endpoint().clone();
    let egress_endpoint = egress.endpoint().clone();
    let observer = Arc::clone(&metrics) as Arc<dyn Observer>;
    let http = BoundedListener::new(http, "http", http_limits, Arc::clone(&observer));
    let api = BoundedListener::new(api, "api", api_limits, Arc::clone(&observer));
    let egress = BoundedListener::new(egress, "egress", egress_limits, observer);

    let info = launcher.start().await.map_err(SidecarError::Launch)?;
    let cid = info.enclave_cid.or(enclave_cid);
    evidence.set_enclave(info);
    let vsock = |port| cid.map(|cid| Endpoint::Vsock { cid, port });
    let (Some(agent_endpoint), Some(api_upstream)) = (
        agent.or_else(|| vsock(constants::CONTROL_PORT)),
        api_upstream.or_else(|| vsock(constants::API_PORT)),
    ) else {
        let _ = launcher.stop().await;
        return Err(SidecarError::Config(
            "the launcher reported no enclave CID: pass --agent and --api-upstream".to_owned(),
        ));
    };
    info!(
        boot_config_digest = %digest,
        agent = %agent_endpoint,
        http = %http_addr,
        api = %api_endpoint,
        egress = %egress_endpoint,
        report_max_age_ms = max_age_ms,
        "sidecar started"
    );

    let (fatal_tx, fatal) = mpsc::channel(4);
    let mut tasks = Vec::new();
    let (challenges, challenge_inbox) = challenge::Challenges::with_limits(
        boot.config.clone(),
        Arc::clone(&evidence),
        challenge_rates,
    );
    let challenges = Arc::new(challenges);
    tasks.push(tokio::spawn(http::serve(
        http,
        Arc::clone(&evidence),
        Arc::clone(&challenges),
    )));
    tasks.push(tokio::spawn(proxy::serve_api(
        api,
        api_upstream,
        Arc::clone(&metrics),
        Some(challenges),
        Some(proxy::ApiBudget {
            rates: connection_rates,
            peer_max_connections: budgets.api_peer_max_connections,
        }),
    )));
    tasks.push(tokio::spawn(proxy::serve_egress(
        egress,
        proxy::EgressRules {
            allow: egress_allow,
            kubelet_ports: egress_allow_kubelet_ports,
            kubelet_networks: egress_kubelet_cidrs,
        },
        Arc::clone(&metrics),
    )));
    let link_config = LinkConfig {
        endpoint: agent_endpoint.clone(),
        boot_config: boot,
        startup_deadline: Duration::from_secs(link_timeout_seconds),
        frame_timeout,
        state: link_state,
    };
    let link_evidence = Arc::clone(&evidence);
    let link_fatal = fatal_tx.clone();
    let (stop_link, stop_requested) = tokio::sync::watch::channel(false);
    let link = tokio::spawn(async move {
        let inputs = link::Inputs {
            nonces,
            challenges: challenge_inbox,
            stop: stop_requested,
        };
        if let Err(err) = link::run(link_evidence, link_config, inputs).await {
            let _ = link_fatal.send(err.into()).await;
        }
    });
    tasks.push(tokio::spawn(watch(
        Arc::clone(&launcher),
        Arc::clone(&evidence),
        poll,
        fatal_tx,
    )));

    Ok(Running {
        http_addr,
        api_endpoint,
        egress_endpoint,
        agent_endpoint,
        evidence,
        launcher,
        tasks,
        link: Some(link),
        stop_link,
        stop_grace: Duration::from_secs(stop_grace_seconds),
        fatal,
    })
}

/// Poll the launcher; report the enclave's end as fatal.
async fn watch(
    launcher: Arc<dyn Launcher>,
    evidence: Arc<Evidence>,
    every: Duration,
    fatal: mpsc::Sender<SidecarError>,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match launcher.status().await {
            Ok(info) => {
                let running = info.running;
                let last_exit = info.last_exit.clone();
                evidence.set_enclave(info);
                if !running {
                    let last_exit = last_exit.unwrap_or_else(|| "unknown".to_owned());
                    warn!(%last_exit, "enclave stopped");
                    let _ = fatal.send(SidecarError::EnclaveExited { last_exit }).await;
                    return;
                }
            }
            Err(e) => warn!(error = %e, "cannot read the enclave's state"),
        }
    }
}
