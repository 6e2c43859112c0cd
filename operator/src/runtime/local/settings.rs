//! The local runtime's settings: the binaries it starts, where, and on which network.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use super::super::{Result, RuntimeError};

/// Paths and commands of the local runtime.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    /// `nautilus-sidecar` binary.
    pub sidecar_binary: PathBuf,
    /// `nautilus-agent` binary.
    pub agent_binary: PathBuf,
    /// The control-plane command the agent runs (`k3s`, or a stand-in).
    pub control_plane_command: String,
    /// Directory under which each resource gets a work directory.
    pub work_dir: PathBuf,
    /// An extra CA (PEM file) the agent trusts for the Sui full node's TLS, for a development
    /// node with its own certificate; `None` trusts the webpki roots only.
    pub sui_ca_file: Option<PathBuf>,
    /// Where the agent finds kube-apiserver, kube-scheduler and kube-controller-manager for
    /// resources of the `kubernetes` distribution (`None`: the agent's default).
    pub kubernetes_bin_dir: Option<PathBuf>,
    /// The etcd the agent starts for the `kubernetes` distribution (`None`: `etcd` in
    /// `kubernetes_bin_dir`).
    pub etcd_command: Option<PathBuf>,
    /// Whether the enclave gets a network of its own ([`LocalNetwork::Isolated`]) or shares
    /// the host's.
    pub network: LocalNetwork,
    /// Address the sidecar publishes each control plane's API port on (127.0.0.1 by default;
    /// another, such as a veth's, lets a worker in another network namespace reach it).
    pub api_publish_ip: IpAddr,
    /// An extra CA (PEM file) the agent trusts for the KMS endpoint of `spec.state` (the local
    /// KMS of development); `None` trusts the webpki roots only.
    pub kms_ca_file: Option<PathBuf>,
    /// The root key (PKCS#8 PEM, P-384) of the agents' simulated NSM, so that a local KMS
    /// given its certificate can verify their Recipient attestations; `None`: a fresh root per
    /// agent, which no KMS knows.
    pub simulated_root_key: Option<PathBuf>,
    /// An AWS shared credentials file (profile `default`) the sidecars relay to their agents
    /// for the KMS calls of `spec.state`; `None`: the sidecars' environment
    /// (`AWS_ACCESS_KEY_ID`, ...), which they inherit from the operator.
    pub aws_credentials_file: Option<PathBuf>,
}

/// The enclave's network in the local runtime.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LocalNetwork {
    /// A network namespace of its own with only a loopback, as an enclave has no network: the
    /// sidecar runs the agent under `--isolate-network`. Needs root; the default.
    #[default]
    Isolated,
    /// The host's network (development only, on explicit request; logged as a warning): a
    /// network dependency an enclave would not have goes unnoticed.
    Host,
}

impl LocalNetwork {
    /// `isolated` or `host`, as the operator's `--local-network` says.
    pub fn name(self) -> &'static str {
        match self {
            Self::Isolated => "isolated",
            Self::Host => "host",
        }
    }
}

/// The longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The binaries a development setup of the local runtime starts.
pub const DEVELOPMENT_BINARIES: [&str; 3] =
    ["nautilus-sidecar", "nautilus-agent", "nautilus-standin"];

impl LocalSettings {
    /// The [`DEVELOPMENT_BINARIES`] in `dir`, with the stand-in as the control plane; no extra
    /// Sui CA.
    pub fn development(dir: &std::path::Path, work_dir: PathBuf) -> Self {
        Self {
            sidecar_binary: dir.join("nautilus-sidecar"),
            agent_binary: dir.join("nautilus-agent"),
            control_plane_command: dir.join("nautilus-standin").display().to_string(),
            work_dir,
            sui_ca_file: None,
            kubernetes_bin_dir: None,
            etcd_command: None,
            network: LocalNetwork::Isolated,
            api_publish_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            kms_ca_file: None,
            simulated_root_key: None,
            aws_credentials_file: None,
        }
    }

    /// Whether the enclaves can run as [`LocalSettings::network`] says: with
    /// [`LocalNetwork::Isolated`], whether a network namespace can be made here
    /// ([`RuntimeError::Isolation`] says why not, in one line). Call it once at start. The
    /// probe runs the agent binary, which shares the sidecar's `nautilus-lifetime` helper (the
    /// sidecar binary may be a test's stand-in that wraps the real one).
    pub async fn check_network(&self) -> Result<()> {
        match self.network {
            LocalNetwork::Host => Ok(()),
            LocalNetwork::Isolated => nautilus_lifetime::netns::probe(&self.agent_binary)
                .await
                .map_err(|err| RuntimeError::Isolation {
                    reason: match err {
                        nautilus_lifetime::LifetimeError::Isolation { reason } => reason,
                        other => other.to_string(),
                    },
                }),
        }
    }
}

/// Where the [`DEVELOPMENT_BINARIES`] were built, for tests: `NAUTILUS_BIN_DIR`, else the
/// cargo target directory of the running test (`target/<profile>/deps/<test>` →
/// `target/<profile>`). `None` unless all of them are there.
pub fn development_bin_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("NAUTILUS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .ok()?
            .parent()?
            .parent()?
            .to_path_buf(),
    };
    DEVELOPMENT_BINARIES
        .iter()
        .all(|b| dir.join(b).is_file())
        .then_some(dir)
}
