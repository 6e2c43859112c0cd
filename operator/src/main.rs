//! `nautilus-operator`: reconciles NautilusMaster resources. Wiring only; the logic lives in the
//! library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use nautilus_lifetime::shutdown_signal;
use nautilus_operator::admin::Admin;
use nautilus_operator::controller::{self, Context};
use nautilus_operator::desired::PodSettings;
use nautilus_operator::metrics::Metrics;
use nautilus_operator::runtime::{
    EnclaveRuntime, LocalNetwork, LocalRuntime, LocalSettings, PodRuntime,
};

/// Where enclaves run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RuntimeKind {
    /// A StatefulSet per resource on a Nitro node (production).
    Pod,
    /// A local `nautilus-sidecar --launcher process` per resource, with a simulated NSM
    /// (development; works against any API server, even one without nodes).
    Local,
}

/// The enclave's network in the `local` runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LocalNetworkKind {
    /// A network namespace of its own per enclave, loopback only, reached through Unix
    /// sockets, as a Nitro enclave has no network (needs root).
    Isolated,
    /// The host's network (development only): a hidden network dependency goes unnoticed.
    Host,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Reconciles NautilusMaster resources into attested K3s control planes in AWS Nitro Enclaves.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Watch NautilusMasters in this namespace only (default: all namespaces).
    #[arg(long, env = "NAUTILUS_NAMESPACE")]
    namespace: Option<String>,
    /// Where enclaves run.
    #[arg(long, env = "NAUTILUS_RUNTIME", value_enum, default_value_t = RuntimeKind::Pod)]
    runtime: RuntimeKind,
    /// Image of the sidecar container in the enclave pod (`pod` runtime).
    #[arg(
        long,
        env = "NAUTILUS_SIDECAR_IMAGE",
        default_value = "ghcr.io/nautilus-operator/nautilus-sidecar:0.1.0"
    )]
    sidecar_image: String,
    /// `nautilus-sidecar` binary (`local` runtime; a bare name is looked up on PATH).
    #[arg(
        long,
        env = "NAUTILUS_SIDECAR_BINARY",
        default_value = "nautilus-sidecar"
    )]
    sidecar_binary: PathBuf,
    /// `nautilus-agent` binary (`local` runtime).
    #[arg(long, env = "NAUTILUS_AGENT_BINARY", default_value = "nautilus-agent")]
    agent_binary: PathBuf,
    /// Control-plane command the agent runs (`local` runtime): `k3s`, or a stand-in.
    #[arg(long, env = "NAUTILUS_CONTROL_PLANE_COMMAND", default_value = "k3s")]
    control_plane_command: String,
    /// Directory for the local runtime's boot configs, logs and agent state (default: a
    /// `nautilus-operator` directory under the system's temporary directory).
    #[arg(long, env = "NAUTILUS_LOCAL_WORK_DIR")]
    local_work_dir: Option<PathBuf>,
    /// Extra CA (PEM) the agents trust for the Sui full node (`local` runtime, for a
    /// development node with its own certificate).
    #[arg(long, env = "NAUTILUS_LOCAL_SUI_CA_FILE")]
    local_sui_ca_file: Option<PathBuf>,
    /// Directory with kube-apiserver, kube-scheduler and kube-controller-manager for resources
    /// of the `kubernetes` distribution (`local` runtime; e.g. `$KUBEBUILDER_ASSETS`).
    #[arg(long, env = "NAUTILUS_LOCAL_KUBERNETES_BIN_DIR")]
    local_kubernetes_bin_dir: Option<PathBuf>,
    /// etcd for resources of the `kubernetes` distribution (`local` runtime; default: `etcd` in
    /// the Kubernetes directory).
    #[arg(long, env = "NAUTILUS_LOCAL_ETCD_COMMAND")]
    local_etcd_command: Option<PathBuf>,
    /// The enclave's network (`local` runtime): a namespace of its own (`isolated`, needs root;
    /// the operator refuses to start when none can be made) or the host's (`host`, only when
    /// asked for, with a warning).
    #[arg(long, env = "NAUTILUS_LOCAL_NETWORK", value_enum, default_value_t = LocalNetworkKind::Isolated)]
    local_network: LocalNetworkKind,
    /// Address each local sidecar publishes its control plane's API port on (`local` runtime):
    /// another than the loopback lets a worker in another network namespace reach it.
    #[arg(long, env = "NAUTILUS_LOCAL_API_ADDRESS", default_value = "127.0.0.1")]
    local_api_address: std::net::IpAddr,
    /// Extra CA (PEM) the agents trust for the KMS endpoint of `spec.state` (`local` runtime,
    /// for the development KMS `nautilus-local-kms`).
    #[arg(long, env = "NAUTILUS_LOCAL_KMS_CA_FILE")]
    local_kms_ca_file: Option<PathBuf>,
    /// Root key (PKCS#8 PEM, P-384) of the agents' simulated NSM (`local` runtime), so that the
    /// development KMS, given its certificate, can verify their attestations.
    #[arg(long, env = "NAUTILUS_LOCAL_SIMULATED_ROOT_KEY")]
    local_simulated_root_key: Option<PathBuf>,
    /// AWS shared credentials file (profile `default`) the local sidecars relay to their agents
    /// for KMS (`local` runtime; default: the environment's AWS_* variables).
    #[arg(long, env = "NAUTILUS_LOCAL_AWS_CREDENTIALS_FILE")]
    local_aws_credentials_file: Option<PathBuf>,
    /// Accept simulated attestation from resources whose spec allows it (`pod` runtime; the
    /// `local` runtime always does, it has nothing else). Off by default: the cluster admin's
    /// word that enclaves without Nitro hardware may be trusted here (a test cluster). Without
    /// it such a resource gets `Attested=False` with reason `SimulatedAttestationNotAllowed`
    /// and no kubeconfig.
    #[arg(long, env = "NAUTILUS_ALLOW_SIMULATED_ATTESTATION")]
    allow_simulated_attestation: bool,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "NAUTILUS_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "NAUTILUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Run only while holding a coordination.k8s.io Lease, so several replicas can run.
    #[arg(long, env = "NAUTILUS_LEADER_ELECTION")]
    leader_election: bool,
    /// Namespace of the Lease (default: the pod's namespace from POD_NAMESPACE, else `default`).
    #[arg(long, env = "NAUTILUS_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the Lease.
    #[arg(long, env = "NAUTILUS_LEASE_NAME", default_value = "nautilus-operator")]
    lease_name: String,
}

impl Args {
    async fn run(self) -> anyhow::Result<()> {
        let Self {
            namespace,
            runtime,
            sidecar_image,
            sidecar_binary,
            agent_binary,
            control_plane_command,
            local_work_dir,
            local_sui_ca_file,
            local_kubernetes_bin_dir,
            local_etcd_command,
            local_network,
            local_api_address,
            local_kms_ca_file,
            local_simulated_root_key,
            local_aws_credentials_file,
            allow_simulated_attestation,
            listen,
            log_format,
            leader_election,
            leader_election_namespace,
            lease_name,
        } = self;
        init_tracing(log_format);

        let metrics = Arc::new(Metrics::new());
        let ready = Arc::new(AtomicBool::new(false));
        let admin = Admin {
            metrics: metrics.clone(),
            ready: ready.clone(),
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let admin_task = tokio::spawn(admin.serve(listener));
        tracing::info!(%listen, "serving /metrics, /healthz and /readyz");

        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;
        controller::check_crd(&client).await?;

        let runtime = match runtime {
            RuntimeKind::Pod => EnclaveRuntime::Pod(PodRuntime {
                allow_simulated_attestation: {
                    if allow_simulated_attestation {
                        tracing::warn!(
                            "--allow-simulated-attestation: resources whose spec allows it may be \
                             attested by a simulated NSM, which no hardware vouches for; test \
                             clusters only"
                        );
                    }
                    allow_simulated_attestation
                },
                settings: PodSettings {
                    sidecar_image,
                    log_format: match log_format {
                        LogFormat::Text => "text".into(),
                        LogFormat::Json => "json".into(),
                    },
                },
                sidecar_port: None,
            }),
            RuntimeKind::Local => {
                tracing::warn!(
                    "local runtime: enclaves are local processes with a simulated NSM; \
                     development only"
                );
                let settings = LocalSettings {
                    sidecar_binary,
                    agent_binary,
                    control_plane_command,
                    work_dir: local_work_dir
                        .unwrap_or_else(|| std::env::temp_dir().join("nautilus-operator")),
                    sui_ca_file: local_sui_ca_file,
                    kubernetes_bin_dir: local_kubernetes_bin_dir,
                    etcd_command: local_etcd_command,
                    network: match local_network {
                        LocalNetworkKind::Isolated => LocalNetwork::Isolated,
                        LocalNetworkKind::Host => LocalNetwork::Host,
                    },
                    api_publish_ip: local_api_address,
                    kms_ca_file: local_kms_ca_file,
                    simulated_root_key: local_simulated_root_key,
                    aws_credentials_file: local_aws_credentials_file,
                };
                match settings.network {
                    LocalNetwork::Isolated => {
                        // One line, before anything starts: never share the host's network
                        // because a namespace could not be made.
                        settings.check_network().await?;
                        tracing::info!(
                            api_address = %settings.api_publish_ip,
                            "local runtime: each enclave runs in a network namespace of its own"
                        );
                    }
                    LocalNetwork::Host => tracing::warn!(
                        api_address = %settings.api_publish_ip,
                        "local runtime: --local-network=host: enclaves share the host's network, \
                         so a network dependency an enclave would not have goes unnoticed"
                    ),
                }
                EnclaveRuntime::Local(Box::new(LocalRuntime::new(settings)))
            }
        };
        let ctx = Arc::new(Context::new(client.clone(), runtime, metrics));
        ready.store(true, Ordering::Relaxed);

        if leader_election {
            let lease_namespace = leader_election_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "default".into());
            let identity = nautilus_operator::controller::instance_name();
            let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &lease_name)
                .with_namespace(&lease_namespace)
                .with_identity(&identity)
                .with_duration(15)
                .with_grace(5)
                .with_field_manager(nautilus_operator::desired::FIELD_MANAGER)
                .build()
                .await
                .context("setting up leader election")?;
            let (mut leader, lease_task) = manager.watch().await;
            tracing::info!(lease = %lease_name, namespace = %lease_namespace, %identity, "waiting to become the leader");
            while !*leader.borrow_and_update() {
                leader
                    .changed()
                    .await
                    .context("the lease manager stopped")?;
            }
            tracing::info!("leading: starting the controller");
            let lost = async move {
                loop {
                    if leader.changed().await.is_err() || !*leader.borrow() {
                        break;
                    }
                }
            };
            tokio::select! {
                () = controller::run(ctx.clone(), namespace, shutdown_signal()) => {}
                () = lost => {
                    ctx.runtime.shutdown().await;
                    admin_task.abort();
                    lease_task.abort();
                    anyhow::bail!("lost the leader lease {lease_name}; exiting so a restart competes again");
                }
            }
            lease_task.abort();
        } else {
            controller::run(ctx.clone(), namespace, shutdown_signal()).await;
        }
        ctx.runtime.shutdown().await;
        admin_task.abort();
        tracing::info!("stopped");
        Ok(())
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match Args::parse().run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("nautilus-operator: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_and_flags_parse() {
        let args = Args::try_parse_from(["nautilus-operator"]).expect("defaults");
        assert_eq!(args.runtime, RuntimeKind::Pod);
        assert_eq!(args.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert!(!args.leader_election);
        assert!(!args.allow_simulated_attestation, "the admin must opt in");
        let args = Args::try_parse_from([
            "nautilus-operator",
            "--runtime=local",
            "--namespace=team-a",
            "--log-format=json",
            "--leader-election",
            "--lease-name=x",
            "--allow-simulated-attestation",
        ])
        .expect("flags");
        assert!(args.allow_simulated_attestation);
        assert_eq!(args.runtime, RuntimeKind::Local);
        assert_eq!(args.namespace.as_deref(), Some("team-a"));
        assert_eq!(args.log_format, LogFormat::Json);
        assert!(Args::try_parse_from(["nautilus-operator", "--runtime=vm"]).is_err());
    }
}
