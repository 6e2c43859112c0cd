//! The enclave runtime seam: where the sidecar (and through it the enclave) runs.
//!
//! - [`EnclaveRuntime::Pod`] (production): a single-replica StatefulSet on a Nitro node with a
//!   Service in front; the operator reaches the sidecar at the pod's IP.
//! - [`EnclaveRuntime::Local`] (development): the operator starts `nautilus-sidecar --launcher
//!   process` itself, one per resource, with a simulated NSM in the agent; it works against any
//!   API server, even one without nodes. The sidecar's HTTP API is on 127.0.0.1 and its API port
//!   on [`LocalSettings::api_publish_ip`]. As an enclave has no network, the agent and every
//!   control-plane process it starts run in a network namespace of their own with only a
//!   loopback ([`LocalNetwork::Isolated`], the default; needs root), reachable only through
//!   three Unix sockets that stand in for vsock: the control link, the API port upstream and
//!   the egress proxy. The API server then listens on the same port number inside the
//!   namespace as the sidecar publishes outside, so the measured `httpsPort` is the published
//!   port. [`LocalNetwork::Host`] shares the host's network (explicit request only).
//!
//! Both report the same [`Observed`] shape, so status and conditions are computed the same way;
//! only `status.placement.runtime` tells them apart.

use std::path::PathBuf;

use kube::Client;
use nautilus_crds::NautilusMaster;
use nautilus_protocol::wire::{BootConfig, EnclaveConfig};

use crate::api::{ApiError, Cache};
use crate::desired::{self, Names};
use crate::observe::Observed;

mod local;
mod pod;

pub use local::{
    DEVELOPMENT_BINARIES, LOCAL_STOP_GRACE, LocalNetwork, LocalRuntime, LocalSettings,
    MAX_SOCKET_PATH, development_bin_dir,
};
pub use pod::PodRuntime;

/// Why the runtime could not do its part.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The desired state could not be computed.
    #[error(transparent)]
    Desired(#[from] desired::DesiredError),
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] ApiError),
    /// The enclave's network namespace cannot be made on this machine (one line: why, and
    /// what to do).
    #[error(
        "the local runtime runs each enclave in a network namespace of its own, and none can \
         be made here ({reason}): run the operator as root, or pass --local-network=host to \
         share the host's network (development only)"
    )]
    Isolation {
        /// Why, as the probe said.
        reason: String,
    },
    /// A Unix socket path of the local runtime is longer than a socket address holds.
    #[error(
        "local runtime: the socket path {path} is {len} bytes, more than the {max} a Unix \
         socket address holds; use a shorter --local-work-dir"
    )]
    SocketPath {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A local process could not be started or stopped.
    #[error("local runtime: {what}")]
    Local {
        /// What failed.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Where enclaves run.
#[derive(Debug)]
pub enum EnclaveRuntime {
    /// A StatefulSet per resource (production).
    Pod(PodRuntime),
    /// A local sidecar process per resource (development).
    Local(Box<LocalRuntime>),
}

impl EnclaveRuntime {
    /// Whether this operator accepts simulated attestation where a spec allows it: the pod
    /// runtime only when started with `--allow-simulated-attestation`; the local runtime
    /// always (it runs nothing but a simulated NSM, for development).
    pub fn allows_simulated_attestation(&self) -> bool {
        match self {
            Self::Pod(pod) => pod.allow_simulated_attestation,
            Self::Local(_) => true,
        }
    }

    /// `pod` or `local`, as `status.placement.runtime` says.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pod(_) => "pod",
            Self::Local(_) => "local",
        }
    }

    /// The configuration the enclave of `nm` runs with: `config` (rendered from the spec) where
    /// it will run. Pods run it unchanged; the local runtime gives each resource its own HTTPS
    /// port and data directory under its work directory, so that control planes started side by
    /// side on one machine share neither, and nothing lands in a host path such as
    /// `/var/lib/rancher/k3s`. The result is what gets measured and attested.
    pub async fn place(&self, names: &Names, config: EnclaveConfig) -> Result<EnclaveConfig> {
        match self {
            Self::Pod(_) => Ok(config),
            Self::Local(local) => local.place(names, config).await,
        }
    }

    /// Start what the runtime runs itself for `boot` (whose configuration digest is
    /// `digest_hex`): the local runtime's sidecar process, replaced when the configuration
    /// changed and restarted after it exited. Pods are started by the StatefulSet the
    /// controller applies, so the pod runtime does nothing here.
    pub async fn start(
        &self,
        nm: &NautilusMaster,
        names: &Names,
        boot: &BootConfig,
        digest_hex: &str,
    ) -> Result<()> {
        match self {
            Self::Pod(_) => Ok(()),
            Self::Local(local) => local.ensure(nm, names, boot, digest_hex).await,
        }
    }

    /// What runs now for `nm`, which is to boot `boot`: the pod from the watch cache when there
    /// is one (else from the API server); the local runtime's process, adopting one a previous
    /// operator process started for this very boot configuration.
    pub async fn observe(
        &self,
        client: &Client,
        cache: Option<&Cache>,
        nm: &NautilusMaster,
        names: &Names,
        boot: &BootConfig,
    ) -> Result<Observed> {
        match self {
            Self::Pod(pod) => pod.observe(client, cache, nm, names).await,
            Self::Local(local) => local.observe(names, boot).await,
        }
    }

    /// At operator shutdown: stop local processes (SIGTERM, so each sidecar stops its agent);
    /// pods keep running.
    pub async fn shutdown(&self) {
        if let Self::Local(local) = self {
            local.shutdown().await;
        }
    }

    /// Stop the enclave: [`Stopped::Gone`] once it is, [`Stopped::Pending`] while it is
    /// stopping, [`Stopped::Incomplete`] when the runtime did what it could and something may be
    /// left.
    pub async fn stop(
        &self,
        client: &Client,
        nm: &NautilusMaster,
        names: &Names,
    ) -> Result<Stopped> {
        match self {
            Self::Pod(pod) => pod.stop(client, names).await,
            Self::Local(local) => local.stop(nm, names).await,
        }
    }
}

/// What [`EnclaveRuntime::stop`] achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The enclave and everything the runtime ran for it are gone.
    Gone,
    /// Still stopping (a pod terminating); says what is awaited. Ask again.
    Pending(String),
    /// The runtime removed what it could, but could not confirm the enclave stopped; says what
    /// may be left.
    Incomplete(String),
}
