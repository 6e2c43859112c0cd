//! The boot: from the sidecar's first `BootConfig` to a running, attested control plane.
//!
//! ```text
//! BootConfig ─► material (report key, CAs, certificates; material.rs)
//!            ─► every value checked: distribution, flags, K3s config, authenticator, TLS,
//!               prober                          (a refused boot leaves nothing behind)
//!            ─► attestation (Nsm::attest: binding, nonce, report key)
//!            ─► files: CA, serving certificate, K3s config and CA files, or the
//!               `kubernetes` distribution's certificates, kubeconfigs and flags
//!            ─► token webhook (WebhookService) and its kubeconfig
//!            ─► kubelet egress bridge and the API server's egress selector (with a proxy)
//!            ─► control plane (ControlPlane: one supervised `k3s`, or etcd,
//!               kube-apiserver, kube-scheduler, kube-controller-manager in order)
//!            ─► reporter (signed reports every probe interval)
//! ```
//!
//! The agent boots once per process (`Booted::start`); a nonce refresh attests again with the
//! same key and binding (`Booted::attest`); `Booted::stop` ends the reporter, the webhook
//! and the control plane (no orphan).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::budget::TokenBucket;
use nautilus_protocol::nsm::Nsm;
use nautilus_protocol::transport::Endpoint;
use nautilus_protocol::wire::{AttestationEvidence, BootConfig, EnclaveConfig};
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::auth::{self, AuthError};
use crate::budget::{AgentBudgets, Counters};
use crate::client::ClientError;
use crate::control_plane::{ComponentEnv, ControlPlane, KubernetesPlan};
use crate::flags::{self, ComponentPorts, Distribution, Flags, FlagsError};
use crate::k3s::{self, K3sError};
use crate::kubelet_egress::{self, KubeletEgress};
use crate::kubernetes::{self, Binaries, KubernetesError, Readiness};
use crate::material::{BootMaterial, MaterialError};
use crate::prober::{ProbeTargets, Prober};
use crate::reporter::{Reporter, ReporterConfig};
use crate::state::{self, Keeper, Offered, StateError, StateOptions};
use crate::supervisor::SupervisorConfig;
use crate::webhook::{WebhookError, WebhookService, webhook_kubeconfig};

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

/// Why the agent could not boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Keys, certificates or the attestation failed.
    #[error("boot failed")]
    Material(#[from] MaterialError),
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
    /// The API server's way to the kubelets could not be set up.
    #[error("kubelet egress")]
    KubeletEgress(#[from] crate::kubelet_egress::KubeletEgressError),
    /// The sealed state could not be restored (or a snapshot was refused).
    #[error("sealed state")]
    State(#[from] StateError),
}

impl BootError {
    /// Whether the configuration's values are what failed, so the same configuration would
    /// fail again (the agent answers `BootRefused`); otherwise the failure is of this machine
    /// or this moment (the NSM, a file, a port) and a later attempt may succeed.
    pub fn refuses_config(&self) -> bool {
        use crate::egress::EgressError;
        use crate::stake::StakeError;
        match self {
            Self::Flags(_) | Self::K3s(K3sError::Flags(_)) => true,
            Self::Auth(AuthError::Tiers(_) | AuthError::ZkLoginKey(_)) => true,
            Self::Auth(AuthError::Stake(
                StakeError::InvalidStakeType { .. } | StakeError::MissingAmountField(_),
            )) => true,
            Self::Auth(AuthError::Egress(EgressError::Url { .. })) => true,
            // rcgen refuses a name the configuration asked the certificate to carry.
            Self::Material(MaterialError::Certificate { .. }) => true,
            // A snapshot that failed a check, a key KMS refused: never started from.
            Self::State(e) => e.refuses_boot(),
            _ => false,
        }
    }
}

/// Everything a boot runs with that does not come from the BootConfig.
#[derive(Debug, Clone)]
pub struct BootOptions {
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
    /// Where the agent makes the Unix sockets its control plane dials (paths of at most 107
    /// bytes).
    pub socket_dir: PathBuf,
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
    /// What sealed state needs besides the configuration.
    pub state: StateOptions,
    /// Limits on what reaches the agent from outside ([`crate::budget`]).
    pub budgets: AgentBudgets,
    /// The `kubernetes` distribution's flag profile ([`flags::Profile::Lean`] but in the
    /// benchmark's comparison).
    pub profile: flags::Profile,
}

/// Where the control plane's processes are recorded (pid and start time, one file per
/// component), under the work directory: the next agent on that directory kills what a crashed
/// one left before it boots (`nautilus_lifetime::ProcessRecords::reap`).
pub fn process_records(work_dir: &std::path::Path) -> nautilus_lifetime::ProcessRecords {
    nautilus_lifetime::ProcessRecords::new(work_dir.join("processes"))
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

/// The latest attestation (with the nonce it answers) and what makes the next one.
struct Attestations {
    material: Arc<BootMaterial>,
    nsm: Arc<dyn Nsm>,
    simulated_root_pem: Option<String>,
    latest: watch::Sender<Option<(Vec<u8>, AttestationEvidence)>>,
}

impl Attestations {
    /// A document for `nonce` with this boot's key and binding, published nowhere.
    async fn document(&self, nonce: &[u8]) -> Result<AttestationEvidence, MaterialError> {
        self.material
            .attest(
                Arc::clone(&self.nsm),
                nonce,
                self.simulated_root_pem.clone(),
            )
            .await
    }

    async fn attest(&self, nonce: &[u8]) -> Result<(), MaterialError> {
        let evidence = self.document(nonce).await?;
        info!(document_bytes = evidence.document.len(), "attested");
        self.latest.send_replace(Some((nonce.to_vec(), evidence)));
        Ok(())
    }
}

/// A booted enclave: its configuration, attestation, reporter, webhook and control plane.
pub(crate) struct Booted {
    /// The configuration it booted with.
    pub(crate) config: EnclaveConfig,
    /// Its digest, hex.
    pub(crate) digest_hex: String,
    /// `host:port` of the API server, for the forwarder.
    pub(crate) api_target: String,
    /// The signed reports.
    pub(crate) reporter: Reporter,
    attestations: Attestations,
    control_plane: Mutex<Option<ControlPlane>>,
    webhook: std::sync::Mutex<Option<WebhookService>>,
    kubelet_egress: Option<KubeletEgress>,
    /// The sealed state's keeper, when the configuration keeps state.
    pub(crate) keeper: Option<Arc<Keeper>>,
    state_tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// What the budgets let through and refused since this boot (in every report).
    pub(crate) counters: Arc<Counters>,
    challenges: std::sync::Mutex<TokenBucket>,
    refreshes: std::sync::Mutex<TokenBucket>,
}

/// How long a graceful stop waits for its last snapshot to be taken and sealed (within the
/// nested stop budgets of [`nautilus_protocol::constants::stop`]).
pub const FINAL_SNAPSHOT_TIMEOUT: Duration = nautilus_protocol::constants::stop::FINAL_SNAPSHOT;
/// … and for the link to hand it to the sidecar.
pub const FINAL_DELIVERY_TIMEOUT: Duration = nautilus_protocol::constants::stop::FINAL_DELIVERY;

impl Booted {
    /// Boot `boot.config`, attesting with `boot.nonce` (see the module documentation).
    pub(crate) async fn start(
        options: &BootOptions,
        boot: &BootConfig,
        offered: Option<Offered>,
    ) -> Result<Self, BootError> {
        let config = boot.config.clone();
        let digest_hex = config.digest_hex();
        info!(cluster = %config.cluster, digest = %digest_hex, "booting");
        // Sealed state first: the key, and the snapshot checked and opened, before any
        // material is made (the CAs may come out of it).
        let prepared = match &config.state {
            Some(state_config) => Some(
                state::prepare(
                    &options.state,
                    &config,
                    state_config,
                    Arc::clone(&options.nsm),
                    offered.unwrap_or_default(),
                    &options.work_dir,
                )
                .await?,
            ),
            None => None,
        };
        let material = {
            let config = config.clone();
            let kept = prepared.as_ref().and_then(|p| p.kept.clone());
            tokio::task::spawn_blocking(move || BootMaterial::generate_with(&config, kept.as_ref()))
                .await
                .map_err(|e| MaterialError::Task(e.to_string()))??
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
        let egress_selector_path = work.join(kubelet_egress::CONFIG);
        let mut spec = flags::spec_flags(&config, &kubeconfig_path, &options.ports)?;
        if options.egress_proxy.is_some() {
            flags::with_kubelet_egress(&mut spec, &egress_selector_path)?;
        }
        let tuning = flags::tuning(cp, options.profile)?;
        let rendered = k3s::render_config(&config, &spec)?;
        let counters = Arc::new(Counters::default());
        let authenticator = auth::authenticator(
            &config.auth,
            options.egress_proxy.clone(),
            options.sui_ca_pem.as_deref(),
            options.budgets.stake,
            Arc::clone(&counters),
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
        let attestations = Attestations {
            material: Arc::clone(&material),
            nsm: Arc::clone(&options.nsm),
            simulated_root_pem: options.simulated_root_pem.clone(),
            latest: watch::channel(None).0,
        };
        attestations.attest(&boot.nonce).await?;

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
                if let Some(prepared) = &prepared {
                    // The sealed state, not what a previous process left, is the truth: a
                    // restored encryption configuration replaces any on disk, a fresh start
                    // removes it (and etcd's data, below).
                    let encryption = layout.encryption_config();
                    match prepared
                        .kept
                        .as_ref()
                        .and_then(|k| k.encryption_config.as_ref())
                    {
                        Some(text) => k3s::write(&encryption, text.as_bytes(), true)?,
                        None => {
                            let _ = std::fs::remove_file(&encryption);
                        }
                    }
                }
                kubernetes::write_files(&config, &layout, &material, &api_target)?;
            }
        }

        // The token webhook, before the API server that calls it.
        let webhook =
            WebhookService::start(options.webhook_listen, tls, Arc::new(authenticator)).await?;
        let url = format!("https://{}{}", webhook.local_addr(), crate::webhook::PATH);
        let written = webhook_kubeconfig(&url, &material.serving_ca.cert_pem)
            .map_err(BootError::from)
            .and_then(|kubeconfig| {
                k3s::write(&kubeconfig_path, kubeconfig.as_bytes(), false).map_err(BootError::from)
            });
        if let Err(e) = written {
            webhook.stop();
            return Err(e);
        }
        info!(webhook = %url, ?distribution, "control-plane files written");

        // The API server's way to the kubelets, before the API server that dials it.
        let kubelet_egress = match &options.egress_proxy {
            None => None,
            Some(proxy) => {
                let started = async {
                    let socket = options.socket_dir.join(kubelet_egress::SOCKET);
                    k3s::write(
                        &egress_selector_path,
                        kubelet_egress::egress_selector_config(&socket)?.as_bytes(),
                        false,
                    )?;
                    Ok::<_, BootError>(KubeletEgress::start(&socket, proxy.clone()).await?)
                }
                .await;
                match started {
                    Ok(bridge) => Some(bridge),
                    Err(e) => {
                        webhook.stop();
                        return Err(e);
                    }
                }
            }
        };

        // Sealed state: etcd's data restored (or emptied) before etcd starts.
        let (keeper, restored_revision) = match (prepared, &config.state) {
            (Some(prepared), Some(state_config)) => {
                let etcd = state::etcd::Etcdctl {
                    etcdctl: options.state.etcdctl.clone(),
                    etcdutl: options.state.etcdutl.clone(),
                    endpoint: format!("https://127.0.0.1:{}", options.ports.etcd_client),
                    cacert: layout.tls.join("etcd/server-ca.crt"),
                    cert: layout.tls.join("etcd/client.crt"),
                    key: layout.tls.join("etcd/client.key"),
                };
                let restored = match &prepared.etcd_db {
                    Some((db, revision)) => {
                        let target = state::etcd::RestoreTarget {
                            data_dir: layout.etcd_data.clone(),
                            name: kubernetes::ETCD_NAME.to_owned(),
                            peer_url: format!("https://127.0.0.1:{}", options.ports.etcd_peer),
                        };
                        let restored = state::restore_etcd(&etcd, db, &target).await;
                        match restored {
                            Ok(bumped) => (!bumped).then_some(*revision),
                            Err(e) => {
                                webhook.stop();
                                return Err(e.into());
                            }
                        }
                    }
                    None => {
                        let _ = std::fs::remove_dir_all(&layout.etcd_data);
                        None
                    }
                };
                let kept = material.kept(None);
                let keeper = Keeper::new(
                    state_config.clone(),
                    cp.distribution.clone(),
                    prepared,
                    etcd,
                    kept,
                    layout.encryption_config(),
                    &options.work_dir,
                );
                match keeper {
                    Ok(keeper) => (Some(keeper), restored),
                    Err(e) => {
                        webhook.stop();
                        return Err(e.into());
                    }
                }
            }
            _ => (None, None),
        };

        // The control plane.
        let mut supervisor_config = SupervisorConfig::new(&options.control_plane_command, vec![]);
        supervisor_config.initial_backoff = options.restart_backoff;
        supervisor_config.records = Some(process_records(&options.work_dir));
        let control_plane = match (distribution, readiness) {
            (Distribution::Kubernetes, Some(readiness)) => {
                // The profile's trims over the base flags; they name no flag the spec sets.
                let argv = |base: Flags, trims: &Flags| flags::as_argv(&flags::merge(&base, trims));
                ControlPlane::kubernetes(KubernetesPlan {
                    binaries: options.kubernetes_binaries.clone(),
                    etcd: argv(
                        kubernetes::etcd_flags(&layout, &options.ports),
                        &tuning.etcd,
                    ),
                    apiserver: argv(
                        kubernetes::apiserver_flags(&config, &spec, &layout, &options.ports),
                        &tuning.apiserver,
                    ),
                    scheduler: argv(
                        kubernetes::scheduler_flags(&spec, &layout),
                        &tuning.scheduler,
                    ),
                    controller_manager: argv(
                        kubernetes::controller_manager_flags(&config, &spec, &layout),
                        &tuning.controller_manager,
                    ),
                    env: ComponentEnv {
                        etcd: tuning.etcd_env,
                        apiserver: tuning.apiserver_env,
                        scheduler: tuning.scheduler_env,
                        controller_manager: tuning.controller_manager_env,
                    },
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
        let reporter = Reporter::start(ReporterConfig {
            material: Arc::clone(&material),
            digest_hex: digest_hex.clone(),
            prober,
            process: control_plane.state(),
            interval,
            startup_timeout: Duration::from_secs(u64::from(config.health.startup_timeout_seconds)),
            state: keeper.as_ref().map(|k| k.report()),
            counters: Arc::clone(&counters),
        });
        let mut state_tasks = Vec::new();
        if let Some(keeper) = &keeper {
            state_tasks.push(keeper.start_periodic());
            if let Some(revision) = restored_revision {
                state_tasks.push(keeper.compact_after_restore(revision));
            }
        }
        info!(digest = %digest_hex, api = %api_target, "booted");
        Ok(Booted {
            config,
            digest_hex,
            attestations,
            reporter,
            api_target,
            control_plane: Mutex::new(Some(control_plane)),
            webhook: std::sync::Mutex::new(Some(webhook)),
            kubelet_egress,
            keeper,
            state_tasks: std::sync::Mutex::new(state_tasks),
            counters,
            challenges: std::sync::Mutex::new(TokenBucket::new(
                options.budgets.challenges,
                std::time::Instant::now(),
            )),
            refreshes: std::sync::Mutex::new(TokenBucket::new(
                options.budgets.nonce_refreshes,
                std::time::Instant::now(),
            )),
        })
    }

    /// The latest attestation evidence and the ones that follow.
    pub(crate) fn attestations(&self) -> watch::Receiver<Option<(Vec<u8>, AttestationEvidence)>> {
        self.attestations.latest.subscribe()
    }

    /// Whether the latest attestation answers `nonce`.
    pub(crate) fn attested_with(&self, nonce: &[u8]) -> bool {
        self.attestations
            .latest
            .borrow()
            .as_ref()
            .is_some_and(|(attested, _)| attested == nonce)
    }

    /// Attest again with `nonce`: the same key and binding.
    pub(crate) async fn attest(&self, nonce: &[u8]) -> Result<(), MaterialError> {
        self.attestations.attest(nonce).await
    }

    /// Whether a user's challenge is within the agent's challenge rate (one refused is
    /// counted).
    pub(crate) fn admit_challenge(&self) -> bool {
        let taken = self
            .challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_take(std::time::Instant::now());
        if taken.is_err() {
            Counters::count(&self.counters.challenges_refused);
        }
        taken.is_ok()
    }

    /// A token of the nonce-refresh rate, or how long until there is one.
    pub(crate) fn refresh_token(&self) -> Result<(), Duration> {
        self.refreshes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_take(std::time::Instant::now())
    }

    /// A one-shot document for a user's `nonce` (the same key and binding), which replaces
    /// nothing: the operator's evidence stays the latest attestation.
    pub(crate) async fn challenge(
        &self,
        nonce: &[u8],
    ) -> Result<AttestationEvidence, MaterialError> {
        self.attestations.document(nonce).await
    }

    /// Stop the reporter, the webhook and the control plane (no orphan).
    pub(crate) async fn stop(&self) {
        for task in self
            .state_tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
        // The last snapshot while etcd still runs, handed to the sidecar before anything stops.
        if let Some(keeper) = &self.keeper {
            match tokio::time::timeout(FINAL_SNAPSHOT_TIMEOUT, keeper.snapshot_now()).await {
                Ok(Ok(snapshot)) => {
                    if !keeper
                        .wait_delivered(snapshot.sequence, FINAL_DELIVERY_TIMEOUT)
                        .await
                    {
                        warn!(
                            sequence = snapshot.sequence,
                            "sealed state: the final snapshot did not reach the sidecar"
                        );
                    }
                }
                Ok(Err(e)) => {
                    warn!(error = %crate::errors::error_chain(&e), "sealed state: final snapshot failed")
                }
                Err(_) => warn!("sealed state: final snapshot timed out"),
            }
        }
        self.reporter.stop();
        // The control plane before the webhook it calls: requests a kube-apiserver drains while
        // it stops (a kubelet's, say) are still authenticated rather than retried against an
        // unreachable webhook.
        if let Some(control_plane) = self.control_plane.lock().await.take() {
            control_plane.stop().await;
        }
        if let Some(webhook) = self
            .webhook
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            webhook.stop();
        }
        if let Some(bridge) = &self.kubelet_egress {
            bridge.stop();
        }
    }
}

fn webhook_tls(material: &BootMaterial) -> Result<Arc<rustls::ServerConfig>, BootError> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let key = PrivateKeyDer::try_from(material.webhook.key_der.clone())
        .map_err(|e| BootError::Tls(e.to_owned()))?;
    rustls::ServerConfig::builder_with_provider(crate::client::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| BootError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            vec![
                CertificateDer::from(material.webhook.cert_der.clone()),
                CertificateDer::from(material.serving_ca.cert_der.clone()),
            ],
            key,
        )
        .map(Arc::new)
        .map_err(|e| BootError::Tls(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_targets() {
        assert_eq!(local_target("0.0.0.0", 6443), "127.0.0.1:6443");
        assert_eq!(local_target("10.1.2.3", 6443), "10.1.2.3:6443");
        assert_eq!(local_target("::1", 6443), "[::1]:6443");
    }
}
