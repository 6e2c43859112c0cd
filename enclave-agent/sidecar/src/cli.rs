//! The command line, as a library type so tests and embedders build it the same way `main` does.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use nautilus_protocol::transport::{Endpoint, TransportError, VSOCK_CID_ANY};

/// The agent's control-link port inside the enclave.
pub const AGENT_CONTROL_PORT: u32 = 5000;
/// The enclave's forwarded API server port.
pub const AGENT_API_PORT: u32 = 6443;
/// The egress proxy's vsock port, as the agent dials it (`vsock://3:8001`).
pub const EGRESS_PORT: u32 = 8001;

/// Why a command-line value could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArgError {
    /// A listen address is neither `HOST:PORT` nor an endpoint.
    #[error("invalid listen address {text:?}: expected HOST:PORT, tcp://HOST:PORT or unix:/path")]
    Listen {
        /// The text given.
        text: String,
        /// The endpoint parser's complaint, when the text had a scheme.
        #[source]
        source: Option<TransportError>,
    },
    /// An allowlist entry is not `host:port`.
    #[error("invalid --egress-allow {text:?}: {reason} (expected HOST:PORT)")]
    HostPort {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// How the enclave is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LauncherKind {
    /// An AWS Nitro Enclave, through `nitro-cli`.
    Nitro,
    /// Development: the agent as a child process.
    Process,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where a listener binds: a TCP `HOST:PORT` (the usual case), or any [`Endpoint`]
/// (`tcp://…`, `unix:/path`, `vsock://…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr(pub Endpoint);

impl FromStr for ListenAddr {
    type Err = ArgError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.contains("://") || text.starts_with("unix:") {
            return text.parse().map(ListenAddr).map_err(|e| ArgError::Listen {
                text: text.to_owned(),
                source: Some(e),
            });
        }
        text.parse::<SocketAddr>()
            .map(|addr| ListenAddr(Endpoint::Tcp(addr.to_string())))
            .map_err(|_| ArgError::Listen {
                text: text.to_owned(),
                source: None,
            })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One `--egress-allow` entry: a host (compared case-insensitively) and an exact port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Lower-case host name or address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = ArgError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| ArgError::HostPort {
            text: text.to_owned(),
            reason,
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(err("empty host"));
        }
        if host.contains(['/', ' ', '@']) {
            return Err(err("host contains a character not allowed in a host name"));
        }
        let port = port
            .parse::<u16>()
            .map_err(|_| err("port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(err("port is not a number from 1 to 65535"));
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `nautilus-sidecar`: runs beside an enclave on its host, launches it, sends it its boot
/// configuration, relays its signed evidence over HTTP, and proxies its API server and its
/// outbound Sui RPC connections. Holds no Kubernetes credentials.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "nautilus-sidecar", version)]
pub struct Args {
    /// JSON of the agent's boot configuration (the mounted ConfigMap key `boot-config.json`).
    /// Parsed strictly: an unknown field is an error.
    #[arg(long, env = "NAUTILUS_BOOT_CONFIG")]
    pub boot_config: PathBuf,

    /// How to start the enclave.
    #[arg(long, value_enum, env = "NAUTILUS_LAUNCHER")]
    pub launcher: LauncherKind,

    /// Enclave image file (nitro launcher).
    #[arg(long, env = "NAUTILUS_EIF_PATH")]
    pub eif_path: Option<PathBuf>,

    /// vCPUs for the enclave (nitro launcher).
    #[arg(long, env = "NAUTILUS_CPU_COUNT")]
    pub cpu_count: Option<u32>,

    /// Memory for the enclave in MiB (nitro launcher).
    #[arg(long, env = "NAUTILUS_MEMORY_MIB")]
    pub memory_mib: Option<u64>,

    /// vsock CID for the enclave; nitro-cli picks one when absent (nitro launcher).
    #[arg(long, env = "NAUTILUS_ENCLAVE_CID")]
    pub enclave_cid: Option<u32>,

    /// The nitro-cli executable (nitro launcher).
    #[arg(long, env = "NAUTILUS_NITRO_CLI", default_value = "nitro-cli")]
    pub nitro_cli: PathBuf,

    /// The agent executable (process launcher).
    #[arg(long, env = "NAUTILUS_AGENT_COMMAND")]
    pub agent_command: Option<PathBuf>,

    /// An argument for the agent (process launcher); repeatable.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,

    /// Control link to the agent [default: vsock://ENCLAVE_CID:5000].
    #[arg(long, env = "NAUTILUS_AGENT")]
    pub agent: Option<Endpoint>,

    /// Where connections to --api-listen go [default: vsock://ENCLAVE_CID:6443].
    #[arg(long, env = "NAUTILUS_API_UPSTREAM")]
    pub api_upstream: Option<Endpoint>,

    /// HTTP API for the operator: GET /healthz /readyz /report /metrics, POST /attest.
    #[arg(long, env = "NAUTILUS_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,

    /// The API server's port on the host, proxied byte for byte to --api-upstream.
    #[arg(long, env = "NAUTILUS_API_LISTEN", default_value = "0.0.0.0:6443")]
    pub api_listen: ListenAddr,

    /// HTTP CONNECT proxy the enclave dials for its outbound connections.
    #[arg(long, env = "NAUTILUS_EGRESS_LISTEN", default_value_t = Endpoint::Vsock { cid: VSOCK_CID_ANY, port: EGRESS_PORT })]
    pub egress_listen: Endpoint,

    /// A host:port the egress proxy may connect to (the Sui RPC endpoint); repeatable.
    /// Nothing else is reachable.
    #[arg(long = "egress-allow")]
    pub egress_allow: Vec<HostPort>,

    /// Age beyond which the latest report no longer counts for /readyz
    /// [default: 3 × the boot configuration's probe interval].
    #[arg(long, env = "NAUTILUS_REPORT_MAX_AGE_SECONDS")]
    pub report_max_age_seconds: Option<u64>,

    /// How long the first connection to the agent may take before the sidecar gives up.
    #[arg(long, env = "NAUTILUS_LINK_TIMEOUT_SECONDS", default_value_t = 120)]
    pub link_timeout_seconds: u64,

    /// Tests only: flip one byte of every relayed report, to prove that readers notice.
    #[arg(long, hide = true)]
    pub tamper_reports: bool,

    /// Log format.
    #[arg(long, value_enum, env = "NAUTILUS_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory as _, Parser as _};

    #[test]
    fn the_command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_follow_the_contract() {
        let args = Args::try_parse_from([
            "nautilus-sidecar",
            "--boot-config",
            "/etc/nautilus/boot-config.json",
            "--launcher",
            "process",
            "--agent-command",
            "nautilus-agent",
            "--agent-arg",
            "--nsm",
            "--agent-arg",
            "simulated",
            "--egress-allow",
            "Fullnode.Example.com:443",
        ])
        .expect("parses");
        assert_eq!(args.http_listen.to_string(), "0.0.0.0:8080");
        assert_eq!(args.api_listen.to_string(), "tcp://0.0.0.0:6443");
        assert_eq!(args.egress_listen.to_string(), "vsock://4294967295:8001");
        assert_eq!(args.agent_args, ["--nsm", "simulated"]);
        assert_eq!(
            args.egress_allow,
            [HostPort {
                host: "fullnode.example.com".into(),
                port: 443
            }]
        );
        assert!(!args.tamper_reports);
    }

    #[test]
    fn listen_addresses_and_allow_entries_parse_strictly() {
        assert_eq!(
            "unix:/tmp/api.sock".parse::<ListenAddr>().expect("unix").0,
            Endpoint::Unix("/tmp/api.sock".into())
        );
        assert!("localhost".parse::<ListenAddr>().is_err());
        assert!("ftp://x:1".parse::<ListenAddr>().is_err());
        assert_eq!(
            "[::1]:443".parse::<HostPort>().expect("v6").to_string(),
            "[::1]:443"
        );
        for bad in ["host", ":443", "host:0", "host:x", "host:70000", "a/b:1"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
    }
}
