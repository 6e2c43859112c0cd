//! The `nautilus-agent` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use nautilus_protocol::budget::Rate;
use nautilus_protocol::constants::{
    API_PORT, CONTROL_PORT, EGRESS_PORT, VSOCK_CID_ANY, VSOCK_CID_HOST,
};
use nautilus_protocol::nsm::{NitroNsm, Nsm, NsmError, SimulatedNsm};
use nautilus_protocol::transport::Endpoint;

use crate::boot::{BootOptions, env};
use crate::budget::LookupLimits;
use crate::budget::{self, AgentBudgets};
use crate::flags::{
    CONTROLLER_MANAGER_PORT, ComponentPorts, ETCD_CLIENT_PORT, ETCD_PEER_PORT, SCHEDULER_PORT,
};
use crate::kubernetes::Binaries;
use crate::link::{Agent, AgentOptions, LinkError};

/// Why the command line could not be turned into a running agent.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A `--simulated-pcr` value is not `INDEX=HEX`.
    #[error("invalid --simulated-pcr {0:?}: expected INDEX=HEX (48 bytes)")]
    Pcr(String),
    /// The simulated NSM could not be set up.
    #[error("simulated nsm")]
    Nsm(#[from] NsmError),
    /// `--simulated-pcr` or `--simulated-root-key` without `--nsm simulated`.
    #[error("--simulated-pcr and --simulated-root-key need --nsm simulated")]
    PcrWithoutSimulation,
    /// The simulated NSM's root key file could not be read.
    #[error("reading --simulated-root-key {path}")]
    RootKeyFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The Sui CA file could not be read.
    #[error("reading CA file {path} (--sui-ca-file or --kms-ca-file)")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The work directory could not be created.
    #[error("creating --work-dir {path}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A control-plane process a previous agent left could not be stopped.
    #[error("stopping what a previous agent left in --work-dir")]
    Reap(#[from] nautilus_lifetime::LifetimeError),
    /// The agent stopped with an error.
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Which NSM attests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NsmKind {
    /// `/dev/nsm` of a Nitro enclave.
    Nitro,
    /// A simulated NSM with a generated test root (development and tests only).
    Simulated,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The in-enclave agent: boots the control plane (`k3s`, or etcd and the Kubernetes components
/// for the `kubernetes` distribution) from the sidecar's BootConfig, attests it, supervises and
/// probes it, and streams signed health reports.
#[derive(Debug, Parser)]
#[command(name = "nautilus-agent", version)]
pub struct Args {
    /// Control link to the sidecar (vsock://CID:PORT, unix:/path or tcp://HOST:PORT).
    #[arg(
        long,
        env = "NAUTILUS_AGENT_LISTEN",
        default_value_t = Endpoint::Vsock { cid: VSOCK_CID_ANY, port: CONTROL_PORT }
    )]
    pub listen: Endpoint,
    /// Endpoint forwarded byte for byte to the local API server (bindAddress:httpsPort).
    #[arg(
        long,
        env = "NAUTILUS_AGENT_API_LISTEN",
        default_value_t = Endpoint::Vsock { cid: VSOCK_CID_ANY, port: API_PORT }
    )]
    pub api_listen: Endpoint,
    /// Which NSM attests.
    #[arg(long, value_enum, default_value = "nitro")]
    pub nsm: NsmKind,
    /// PCR value for the simulated NSM, INDEX=HEX (48 bytes); repeatable.
    #[arg(long = "simulated-pcr", value_name = "I=HEX")]
    pub simulated_pcr: Vec<String>,
    /// P-384 root key (PKCS#8 PEM) for the simulated NSM, so that its root certificate is the
    /// one the local KMS trusts (`nautilus-local-kms gen-root` writes both); default: a fresh
    /// root per run.
    #[arg(long, value_name = "FILE")]
    pub simulated_root_key: Option<PathBuf>,
    /// The control-plane program of the `k3s` distribution.
    #[arg(long, default_value = "k3s")]
    pub control_plane_command: PathBuf,
    /// Where the `kubernetes` distribution's programs are: etcd, kube-apiserver,
    /// kube-scheduler and kube-controller-manager.
    #[arg(
        long,
        env = "NAUTILUS_AGENT_KUBERNETES_BIN_DIR",
        default_value = "/usr/local/bin"
    )]
    pub kubernetes_bin_dir: PathBuf,
    /// etcd for the `kubernetes` distribution, when not `<kubernetes-bin-dir>/etcd`.
    #[arg(long, env = "NAUTILUS_AGENT_ETCD_COMMAND")]
    pub etcd_command: Option<PathBuf>,
    /// An extra trust root (PEM) for the KMS endpoint: the local KMS's CA in development.
    #[arg(long, env = "NAUTILUS_AGENT_KMS_CA_FILE")]
    pub kms_ca_file: Option<PathBuf>,
    /// etcdctl, for sealed state's snapshots (default: `<kubernetes-bin-dir>/etcdctl` if it
    /// exists, else `etcdctl` on PATH). `etcdutl` (etcd ≥ 3.5) is looked for beside it and on
    /// PATH, and restores with `--bump-revision`; without it Debian's 3.4 etcdctl restores.
    #[arg(long, env = "NAUTILUS_AGENT_ETCDCTL_COMMAND")]
    pub etcdctl_command: Option<PathBuf>,
    /// An argument of the `k3s` distribution's program; repeatable (default `server` for k3s).
    #[arg(
        long = "control-plane-arg",
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    pub control_plane_arg: Vec<String>,
    /// Where the agent writes the CA, serving certificate, webhook kubeconfig and k3s config.
    #[arg(long, default_value = "/var/lib/nautilus")]
    pub work_dir: PathBuf,
    /// Where the agent makes the Unix sockets its control plane dials (the API server's
    /// kubelet egress); default: the work directory. A socket path must fit 107 bytes, so a
    /// deep work directory needs a short one here.
    #[arg(long, env = "NAUTILUS_AGENT_SOCKET_DIR")]
    pub socket_dir: Option<PathBuf>,
    /// The TokenReview webhook's address (TLS, certificate from the agent's CA).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub webhook_listen: SocketAddr,
    /// HTTP CONNECT proxy for Sui RPC and the API server's kubelet traffic (an endpoint), or
    /// `none` to dial directly (development: then the API server dials kubelets itself).
    #[arg(long, default_value_t = Endpoint::Vsock { cid: VSOCK_CID_HOST, port: EGRESS_PORT }.to_string())]
    pub egress_proxy: String,
    /// An extra trust root (PEM) for the Sui full node's TLS (development fixtures).
    #[arg(long)]
    pub sui_ca_file: Option<PathBuf>,
    /// kube-scheduler's secure port.
    #[arg(long, env = env::SCHEDULER_PORT, default_value_t = SCHEDULER_PORT, hide = true)]
    pub scheduler_port: u16,
    /// kube-controller-manager's secure port.
    #[arg(long, env = env::CONTROLLER_MANAGER_PORT, default_value_t = CONTROLLER_MANAGER_PORT, hide = true)]
    pub controller_manager_port: u16,
    /// etcd's client port on 127.0.0.1 (`kubernetes` distribution).
    #[arg(long, env = env::ETCD_CLIENT_PORT, default_value_t = ETCD_CLIENT_PORT, hide = true)]
    pub etcd_client_port: u16,
    /// etcd's peer port on 127.0.0.1 (`kubernetes` distribution).
    #[arg(long, env = env::ETCD_PEER_PORT, default_value_t = ETCD_PEER_PORT, hide = true)]
    pub etcd_peer_port: u16,
    /// Limits on what reaches the agent from outside.
    #[command(flatten)]
    pub budgets: BudgetFlags,
    /// The `kubernetes` distribution's flag profile: `lean` (what ships) or `stock` (only what
    /// the components need to run; the benchmark's comparison, `nautilus-plane-bench`).
    #[arg(
        long,
        value_enum,
        env = "NAUTILUS_AGENT_FLAGS_PROFILE",
        default_value = "lean",
        hide = true
    )]
    pub flags_profile: crate::flags::Profile,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A rate in requests a second: a finite number above 0.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a rate above 0 (a second)")),
    }
}

/// The agent's own limits on what reaches it from outside (token buckets; see
/// `docs/architecture.md`, "Hostile clients"). Refusals are counted in the signed reports.
#[derive(Debug, Clone, clap::Args)]
pub struct BudgetFlags {
    /// Users' challenges a second the agent answers; beyond, a challenge is dropped and counted
    /// (the sidecar's budget is lower: only a relay that ignores it reaches this one).
    #[arg(long, env = "NAUTILUS_AGENT_CHALLENGE_RATE", default_value_t = budget::DEFAULT_CHALLENGE_RATE, value_parser = positive_rate)]
    pub challenge_rate: f64,
    /// Users' challenges answered in a burst.
    #[arg(long, env = "NAUTILUS_AGENT_CHALLENGE_BURST", default_value_t = budget::DEFAULT_CHALLENGE_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub challenge_burst: u32,
    /// Nonce refreshes a second the agent attests; beyond, a refresh waits for its turn and
    /// only the latest waiting nonce is attested.
    #[arg(long, env = "NAUTILUS_AGENT_NONCE_REFRESH_RATE", default_value_t = budget::DEFAULT_REFRESH_RATE, value_parser = positive_rate)]
    pub nonce_refresh_rate: f64,
    /// Nonce refreshes attested in a burst.
    #[arg(long, env = "NAUTILUS_AGENT_NONCE_REFRESH_BURST", default_value_t = budget::DEFAULT_REFRESH_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub nonce_refresh_burst: u32,
    /// Stake lookups a second sent to the full node for addresses the caches do not know;
    /// beyond, a review waits in a bounded queue or is refused ("try again").
    #[arg(long, env = "NAUTILUS_AGENT_STAKE_LOOKUP_RATE", default_value_t = budget::DEFAULT_LOOKUP_RATE, value_parser = positive_rate)]
    pub stake_lookup_rate: f64,
    /// New-address stake lookups in a burst.
    #[arg(long, env = "NAUTILUS_AGENT_STAKE_LOOKUP_BURST", default_value_t = budget::DEFAULT_LOOKUP_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub stake_lookup_burst: u32,
    /// New-address stake lookups that may wait for their turn at once; more are refused.
    #[arg(long, env = "NAUTILUS_AGENT_STAKE_LOOKUP_QUEUE", default_value_t = budget::DEFAULT_LOOKUP_QUEUE, value_parser = clap::value_parser!(usize))]
    pub stake_lookup_queue: usize,
    /// Seconds an answer below every tier is reused (the negative cache): an address that
    /// stakes after being refused waits at most this long.
    #[arg(long, env = "NAUTILUS_AGENT_STAKE_NEGATIVE_TTL_SECONDS", default_value_t = budget::DEFAULT_NEGATIVE_TTL.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub stake_negative_ttl_seconds: u64,
}

impl BudgetFlags {
    /// The limits these flags describe.
    pub fn budgets(&self) -> AgentBudgets {
        let Self {
            challenge_rate,
            challenge_burst,
            nonce_refresh_rate,
            nonce_refresh_burst,
            stake_lookup_rate,
            stake_lookup_burst,
            stake_lookup_queue,
            stake_negative_ttl_seconds,
        } = *self;
        AgentBudgets {
            challenges: Rate::new(challenge_rate, challenge_burst),
            nonce_refreshes: Rate::new(nonce_refresh_rate, nonce_refresh_burst),
            stake: LookupLimits {
                rate: Rate::new(stake_lookup_rate, stake_lookup_burst),
                queue: stake_lookup_queue,
                negative_ttl: Duration::from_secs(stake_negative_ttl_seconds),
                ..LookupLimits::default()
            },
        }
    }
}

/// How long a leftover control-plane process may take to die after SIGKILL.
const REAP_WITHIN: Duration = Duration::from_secs(10);

fn parse_pcr(text: &str) -> Result<(u8, Vec<u8>), CliError> {
    let err = || CliError::Pcr(text.to_owned());
    let (index, value) = text.split_once('=').ok_or_else(err)?;
    let index: u8 = index.trim().parse().map_err(|_| err())?;
    let value = hex::decode(value.trim()).map_err(|_| err())?;
    if value.len() != 48 {
        return Err(err());
    }
    Ok((index, value))
}

impl Args {
    /// Parse the egress proxy flag.
    pub fn egress_proxy(&self) -> Result<Option<Endpoint>, LinkError> {
        if self.egress_proxy == "none" {
            Ok(None)
        } else {
            Ok(Some(self.egress_proxy.parse()?))
        }
    }

    /// Build the agent and serve until SIGTERM or Ctrl-C, then stop the control plane.
    pub async fn run(self) -> Result<(), CliError> {
        let egress_proxy = self.egress_proxy()?;
        let Self {
            listen,
            api_listen,
            nsm,
            simulated_pcr,
            simulated_root_key,
            control_plane_command,
            kubernetes_bin_dir,
            etcd_command,
            etcdctl_command,
            kms_ca_file,
            control_plane_arg,
            work_dir,
            socket_dir,
            webhook_listen,
            egress_proxy: _,
            sui_ca_file,
            scheduler_port,
            controller_manager_port,
            flags_profile,
            etcd_client_port,
            etcd_peer_port,
            budgets,
            log_format: _,
        } = self;
        let (nsm, simulated_root_pem): (Arc<dyn Nsm>, Option<String>) = match nsm {
            NsmKind::Nitro => {
                if !simulated_pcr.is_empty() || simulated_root_key.is_some() {
                    return Err(CliError::PcrWithoutSimulation);
                }
                (Arc::new(NitroNsm), None)
            }
            NsmKind::Simulated => {
                let mut simulated = match simulated_root_key {
                    None => SimulatedNsm::new()?,
                    Some(path) => {
                        let pem = std::fs::read_to_string(&path)
                            .map_err(|source| CliError::RootKeyFile { path, source })?;
                        SimulatedNsm::with_root_key(&pem)?
                    }
                };
                for text in &simulated_pcr {
                    let (index, value) = parse_pcr(text)?;
                    simulated = simulated.with_pcr(index, &value)?;
                }
                tracing::warn!("simulated nsm: attestations are worthless as evidence");
                let root = simulated.root_pem().to_owned();
                (Arc::new(simulated), Some(root))
            }
        };
        let kms_ca_pem = match kms_ca_file {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|source| CliError::CaFile { path, source })?,
            ),
        };
        let kms_egress_proxy = egress_proxy.clone();
        let sui_ca_pem = match sui_ca_file {
            None => None,
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|source| CliError::CaFile { path, source })?,
            ),
        };
        std::fs::create_dir_all(&work_dir).map_err(|source| CliError::WorkDir {
            path: work_dir.clone(),
            source,
        })?;
        // A crashed agent's control plane dies with it (parent-death signal); what survived
        // anyway (it was between fork and exec, say) still holds the ports and the data
        // directory, so it goes before anything starts.
        for reaped in crate::boot::process_records(&work_dir)
            .reap(REAP_WITHIN)
            .await?
        {
            tracing::warn!(component = %reaped.name, pid = reaped.id.pid, "killed a control-plane process a previous agent left");
        }
        let agent = Agent::new(AgentOptions {
            listen,
            api_listen,
            boot: BootOptions {
                nsm,
                simulated_root_pem,
                control_plane_command,
                control_plane_args: control_plane_arg,
                socket_dir: socket_dir.unwrap_or_else(|| work_dir.clone()),
                work_dir,
                webhook_listen,
                egress_proxy,
                sui_ca_pem,
                ports: ComponentPorts {
                    scheduler: scheduler_port,
                    controller_manager: controller_manager_port,
                    etcd_client: etcd_client_port,
                    etcd_peer: etcd_peer_port,
                },
                kubernetes_binaries: Binaries::in_dir(&kubernetes_bin_dir, etcd_command.as_deref()),
                restart_backoff: Duration::from_secs(1),
                state: {
                    let etcdctl = etcdctl_command.unwrap_or_else(|| {
                        let beside = kubernetes_bin_dir.join("etcdctl");
                        if beside.is_file() {
                            beside
                        } else {
                            PathBuf::from("etcdctl")
                        }
                    });
                    crate::state::StateOptions {
                        key_sources: Some(Arc::new(crate::state::kms::KmsKeySources {
                            egress_proxy: kms_egress_proxy,
                            extra_ca_pem: kms_ca_pem,
                        })),
                        etcdutl: crate::state::etcd::find_etcdutl(&etcdctl),
                        etcdctl,
                    }
                },
                budgets: budgets.budgets(),
                profile: flags_profile,
            },
        });
        // Control connections run in tasks of their own: they keep running through the
        // shutdown below, which hands the last sealed snapshot over on them.
        let result = tokio::select! {
            result = Arc::clone(&agent).run() => result.map_err(CliError::from),
            () = nautilus_lifetime::shutdown_signal() => {
                tracing::info!("shutting down");
                Ok(())
            }
            () = agent.stop_requested() => {
                tracing::info!("shutting down: the sidecar asked");
                Ok(())
            }
        };
        agent.shutdown().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_brief() {
        let args = Args::try_parse_from(["nautilus-agent"]).expect("defaults");
        assert_eq!(args.listen.to_string(), "vsock://4294967295:5000");
        assert_eq!(args.api_listen.to_string(), "vsock://4294967295:6443");
        assert_eq!(args.nsm, NsmKind::Nitro);
        assert_eq!(args.webhook_listen.to_string(), "127.0.0.1:8443");
        assert_eq!(
            args.egress_proxy()
                .expect("proxy")
                .map(|e| e.to_string())
                .as_deref(),
            Some("vsock://3:8001")
        );
        assert_eq!(args.budgets.budgets(), AgentBudgets::default());
        let args =
            Args::try_parse_from(["nautilus-agent", "--egress-proxy", "none"]).expect("none");
        assert!(args.egress_proxy().expect("none").is_none());
    }

    #[test]
    fn pcrs_parse() {
        let (i, v) = parse_pcr(&format!("2={}", "ab".repeat(48))).expect("pcr");
        assert_eq!((i, v.len()), (2, 48));
        for bad in ["2", "x=ab", "2=abc", "2=abab"] {
            assert!(parse_pcr(bad).is_err(), "{bad}");
        }
    }
}
