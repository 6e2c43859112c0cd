//! The command line, as a library type so tests and embedders build it the same way `main` does.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nautilus_protocol::bounded::Limits;
use nautilus_protocol::budget::{Rate, Rates};
use nautilus_protocol::constants::{EGRESS_PORT, VSOCK_CID_ANY};
use nautilus_protocol::transport::Endpoint;

pub use crate::addr::{ArgError, Cidr, HostPort};
use crate::{challenge, proxy};

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

/// The kubelet port the API server dials (`KubeletConfiguration.port`'s default).
pub const KUBELET_PORT: u16 = 10250;

/// Connection caps and timeouts of the sidecar's listeners. A connection over a cap is closed
/// as it arrives and counted in `listener_refused_total{listener}`; a cut one in
/// `listener_timeouts_total{listener,phase}`.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Seconds a peer has for each step before it is cut: the request head and the whole
    /// request body on the HTTP API and the egress proxy, the first bytes (the TLS
    /// ClientHello) on the API proxy, the rest of a control-link frame once it started.
    #[arg(long, env = "NAUTILUS_CLIENT_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub client_timeout_seconds: u64,

    /// Concurrent connections to the HTTP API.
    #[arg(long, env = "NAUTILUS_HTTP_MAX_CONNECTIONS", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections: u64,

    /// Seconds an HTTP API connection may move no byte in either direction (a client that
    /// stops reading its answer). Between kept-alive requests the client timeout applies.
    #[arg(long, env = "NAUTILUS_HTTP_IDLE_TIMEOUT_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub http_idle_timeout_seconds: u64,

    /// Concurrent connections through the API proxy (kubectl, workers, in-cluster clients).
    #[arg(long, env = "NAUTILUS_API_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_max_connections: u64,

    /// Seconds an API proxy connection may carry no byte in either direction. Long enough for
    /// a quiet watch: kube-apiserver ends watches after 30 to 60 minutes, HTTP/2 clients
    /// (client-go, kubectl) ping every 30 s, and client-go re-opens a cut watch.
    #[arg(long, env = "NAUTILUS_API_IDLE_TIMEOUT_SECONDS", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_idle_timeout_seconds: u64,

    /// Concurrent tunnels through the egress proxy (only the agent dials it).
    #[arg(long, env = "NAUTILUS_EGRESS_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub egress_max_connections: u64,

    /// Seconds an egress tunnel may carry no byte in either direction (the agent's Sui RPC
    /// client reconnects when it needs the chain again).
    #[arg(long, env = "NAUTILUS_EGRESS_IDLE_TIMEOUT_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub egress_idle_timeout_seconds: u64,
}

impl LimitArgs {
    /// The limits of the HTTP API, the API proxy and the egress proxy, in that order.
    pub fn limits(&self) -> [Limits; 3] {
        let Self {
            client_timeout_seconds,
            http_max_connections,
            http_idle_timeout_seconds,
            api_max_connections,
            api_idle_timeout_seconds,
            egress_max_connections,
            egress_idle_timeout_seconds,
        } = *self;
        let client = Duration::from_secs(client_timeout_seconds);
        let limits = |max: u64, idle: u64| Limits {
            max_connections: usize::try_from(max).unwrap_or(usize::MAX),
            handshake_timeout: client,
            header_timeout: client,
            body_timeout: client,
            idle_timeout: Duration::from_secs(idle),
        };
        [
            limits(http_max_connections, http_idle_timeout_seconds),
            limits(api_max_connections, api_idle_timeout_seconds),
            limits(egress_max_connections, egress_idle_timeout_seconds),
        ]
    }
}

/// A rate in requests a second: a finite number above 0.
fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate above 0 (requests a second)"
        )),
    }
}

/// Budgets of what anyone can reach before proving who they are: token buckets, one for all
/// clients together and one per client address (an IPv6 address by its /64). A request over
/// one is refused before the enclave sees it and counted in `/metrics`.
#[derive(Debug, Clone, clap::Args)]
pub struct BudgetArgs {
    /// Users' challenges (`POST /challenge`) a second reaching the enclave, all clients
    /// together; each costs the enclave an attestation document. Beyond: 429 with
    /// Retry-After, `challenges_total{outcome="global_rate"}`.
    #[arg(long, env = "NAUTILUS_CHALLENGE_RATE", default_value_t = challenge::DEFAULT_RATE, value_parser = positive_rate)]
    pub challenge_rate: f64,

    /// Challenges saved up for a burst, all clients together.
    #[arg(long, env = "NAUTILUS_CHALLENGE_BURST", default_value_t = challenge::DEFAULT_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub challenge_burst: u32,

    /// Challenges a second from one client address. Beyond: 429 with Retry-After,
    /// `challenges_total{outcome="peer_rate"}`.
    #[arg(long, env = "NAUTILUS_CHALLENGE_PEER_RATE", default_value_t = challenge::DEFAULT_PEER_RATE, value_parser = positive_rate)]
    pub challenge_peer_rate: f64,

    /// Challenges one client address may save up.
    #[arg(long, env = "NAUTILUS_CHALLENGE_PEER_BURST", default_value_t = challenge::DEFAULT_PEER_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub challenge_peer_burst: u32,

    /// Challenges of the global burst kept for quiet addresses (those that spent less than
    /// half their own burst): an address flooding at its own rate gets only what lies above.
    #[arg(long, env = "NAUTILUS_CHALLENGE_RESERVE", default_value_t = challenge::DEFAULT_RESERVE)]
    pub challenge_reserve: u32,

    /// New connections a second that the API port joins to the enclave, all clients together
    /// (each is a TLS handshake the enclave's API server pays for). Beyond: the connection is
    /// closed, `connections_rate_limited_total{listener="api",scope="global"}`. Open
    /// connections are never touched.
    #[arg(long, env = "NAUTILUS_API_CONNECTION_RATE", default_value_t = proxy::DEFAULT_CONNECTION_RATE, value_parser = positive_rate)]
    pub api_connection_rate: f64,

    /// New API connections saved up for a burst (everyone reconnecting after a restart).
    #[arg(long, env = "NAUTILUS_API_CONNECTION_BURST", default_value_t = proxy::DEFAULT_CONNECTION_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_connection_burst: u32,

    /// New API connections a second from one client address.
    #[arg(long, env = "NAUTILUS_API_CONNECTION_PEER_RATE", default_value_t = proxy::DEFAULT_CONNECTION_PEER_RATE, value_parser = positive_rate)]
    pub api_connection_peer_rate: f64,

    /// New API connections one client address may save up.
    #[arg(long, env = "NAUTILUS_API_CONNECTION_PEER_BURST", default_value_t = proxy::DEFAULT_CONNECTION_PEER_BURST, value_parser = clap::value_parser!(u32).range(1..))]
    pub api_connection_peer_burst: u32,

    /// New API connections of the global burst kept for quiet addresses (those that spent
    /// less than half their own burst): addresses opening connections at their own rate, however
    /// many, get only what lies above, so a handshake flood cannot take a user's next
    /// connection.
    #[arg(long, env = "NAUTILUS_API_CONNECTION_RESERVE", default_value_t = proxy::DEFAULT_CONNECTION_RESERVE)]
    pub api_connection_reserve: u32,

    /// Connections one client address may hold open through the API port at once (0: no limit
    /// of its own, only the listener's `--api-max-connections`). Beyond: the new connection is
    /// closed, `connections_rate_limited_total{listener="api",scope="peer_open"}`.
    #[arg(long, env = "NAUTILUS_API_PEER_MAX_CONNECTIONS", default_value_t = proxy::DEFAULT_PEER_MAX_CONNECTIONS)]
    pub api_peer_max_connections: usize,
}

impl BudgetArgs {
    /// The challenge budget and the API port's connection budget, in that order.
    pub fn rates(&self) -> [Rates; 2] {
        let Self {
            challenge_rate,
            challenge_burst,
            challenge_peer_rate,
            challenge_peer_burst,
            challenge_reserve,
            api_connection_rate,
            api_connection_burst,
            api_connection_peer_rate,
            api_connection_peer_burst,
            api_connection_reserve,
            api_peer_max_connections: _,
        } = *self;
        [
            Rates {
                global: Rate::new(challenge_rate, challenge_burst),
                per_peer: Rate::new(challenge_peer_rate, challenge_peer_burst),
                max_peers: challenge::MAX_PEERS,
                reserve: challenge_reserve,
            },
            Rates {
                global: Rate::new(api_connection_rate, api_connection_burst),
                per_peer: Rate::new(api_connection_peer_rate, api_connection_peer_burst),
                max_peers: proxy::DEFAULT_CONNECTION_RATES.max_peers,
                reserve: api_connection_reserve,
            },
        ]
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

    /// The enclave's name in nitro-cli (nitro launcher): lower-case letters, digits, `.` and
    /// `-` [default: the boot configuration's cluster, `namespace/name` as `namespace.name`].
    /// On start the sidecar terminates a running enclave of this name (a crashed
    /// predecessor's) before it runs a new one.
    #[arg(long, env = "NAUTILUS_ENCLAVE_NAME")]
    pub enclave_name: Option<String>,

    /// The nitro-cli executable (nitro launcher).
    #[arg(long, env = "NAUTILUS_NITRO_CLI", default_value = "nitro-cli")]
    pub nitro_cli: PathBuf,

    /// The agent executable (process launcher).
    #[arg(long, env = "NAUTILUS_AGENT_COMMAND")]
    pub agent_command: Option<PathBuf>,

    /// An argument for the agent (process launcher); repeatable.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,

    /// Run the agent (and so its control plane) in a network namespace of its own with only a
    /// loopback, up, as a Nitro enclave has no network (process launcher; needs root). The
    /// agent is then reachable only through Unix sockets: give --agent, --api-upstream and
    /// --egress-listen as `unix:` endpoints. The sidecar fails to start when the namespace
    /// cannot be made; it never runs the agent in the host's network instead.
    #[arg(long, env = "NAUTILUS_ISOLATE_NETWORK")]
    pub isolate_network: bool,

    /// Where the process launcher records the agent's pid and start time; on start the
    /// sidecar kills an agent a crashed predecessor recorded there [default: the boot
    /// configuration's directory].
    #[arg(long, env = "NAUTILUS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

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

    /// A kubelet port the egress proxy also tunnels to, for the enclave's API server (logs,
    /// exec, attach, port-forward; TLS with the kubelet stays end to end): `CONNECT IP:PORT`
    /// with an IP literal (never a host name: the host resolves nothing for the enclave) on
    /// one of these ports; repeatable.
    #[arg(long = "egress-allow-kubelet-port", default_values_t = [KUBELET_PORT], value_parser = clap::value_parser!(u16).range(1..))]
    pub egress_allow_kubelet_ports: Vec<u16>,

    /// Networks the kubelets' addresses lie in; repeatable. When given, a kubelet tunnel goes
    /// only to an address inside one of them. [default: any address except loopback,
    /// unspecified, link-local, multicast and broadcast]
    #[arg(long = "egress-kubelet-cidr")]
    pub egress_kubelet_cidrs: Vec<Cidr>,

    /// AWS credentials relayed to the agent for its KMS calls when the configuration keeps
    /// sealed state: an AWS shared credentials file (profile `default`), read again at every
    /// connection. Without it: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// `AWS_SESSION_TOKEN` from the environment; without those, the instance role's from the
    /// metadata service (IMDSv2 at `AWS_EC2_METADATA_SERVICE_ENDPOINT`, default
    /// http://169.254.169.254; off with `AWS_EC2_METADATA_DISABLED=true`; a pod needs the
    /// instance's hop limit at 2). The key policy, not these, protects the key.
    #[arg(long, env = "NAUTILUS_AWS_CREDENTIALS_FILE")]
    pub aws_credentials_file: Option<PathBuf>,

    /// Age beyond which the latest report no longer counts for /readyz
    /// [default: 3 × the boot configuration's probe interval].
    #[arg(long, env = "NAUTILUS_REPORT_MAX_AGE_SECONDS")]
    pub report_max_age_seconds: Option<u64>,

    /// How long the first connection to the agent may take before the sidecar gives up.
    #[arg(long, env = "NAUTILUS_LINK_TIMEOUT_SECONDS", default_value_t = 120)]
    pub link_timeout_seconds: u64,

    /// How long a stopping sidecar (SIGTERM) waits for the agent to stop gracefully (seal and
    /// hand over a last snapshot, stop its control plane, close the link) before it stops the
    /// enclave regardless; 0 stops it at once. The default is the agent's own budget; the
    /// host's grace (`terminationGracePeriodSeconds`) must cover it.
    #[arg(long, env = "NAUTILUS_STOP_GRACE_SECONDS", default_value_t = nautilus_protocol::constants::stop::AGENT.as_secs(), value_parser = clap::value_parser!(u64).range(0..=600))]
    pub stop_grace_seconds: u64,

    /// Connection caps and timeouts of the HTTP API and the proxies.
    #[command(flatten)]
    pub limits: LimitArgs,

    /// Rate budgets of users' challenges and of new connections into the enclave.
    #[command(flatten)]
    pub budgets: BudgetArgs,

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
        assert_eq!(args.egress_allow_kubelet_ports, [KUBELET_PORT]);
        assert!(args.egress_kubelet_cidrs.is_empty());
        assert_eq!(
            args.egress_allow,
            [HostPort {
                host: "fullnode.example.com".into(),
                port: 443
            }]
        );
        let [challenges, connections] = args.budgets.rates();
        assert_eq!(challenges, challenge::DEFAULT_LIMITS);
        assert_eq!(connections, proxy::DEFAULT_CONNECTION_RATES);
        assert_eq!(
            args.budgets.api_peer_max_connections,
            proxy::DEFAULT_PEER_MAX_CONNECTIONS
        );
        for bad in ["0", "-1", "NaN", "inf", "many"] {
            assert!(
                Args::try_parse_from([
                    "nautilus-sidecar",
                    "--boot-config",
                    "b.json",
                    "--launcher",
                    "process",
                    "--challenge-rate",
                    bad,
                ])
                .is_err(),
                "{bad}"
            );
        }
        let [http, api, egress] = args.limits.limits();
        assert_eq!(
            (http.max_connections, http.body_timeout, http.idle_timeout),
            (128, Duration::from_secs(10), Duration::from_secs(60))
        );
        assert_eq!(
            (api.max_connections, api.handshake_timeout, api.idle_timeout),
            (1024, Duration::from_secs(10), Duration::from_secs(1800))
        );
        assert_eq!(
            (egress.max_connections, egress.idle_timeout),
            (64, Duration::from_secs(300))
        );
    }

    /// The test-only switch of old is gone from the production binary: tests that need a
    /// tampering host build one (the e2e crate's relay).
    #[test]
    fn there_is_no_tampering_switch() {
        let err = Args::try_parse_from([
            "nautilus-sidecar",
            "--boot-config",
            "/etc/nautilus/boot-config.json",
            "--launcher",
            "nitro",
            "--tamper-reports",
        ])
        .expect_err("refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(
            !Args::command()
                .get_arguments()
                .any(|arg| arg.get_id().as_str().contains("tamper")),
            "no hidden tamper flag either"
        );
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
        assert_eq!(
            "[0:0::1]:443".parse::<HostPort>().expect("v6").to_string(),
            "[::1]:443"
        );
        assert_eq!(
            "LOCALHOST:31999".parse::<HostPort>().expect("case"),
            "localhost:31999".parse::<HostPort>().expect("lower")
        );
        for bad in [
            "host",
            ":443",
            "host:0",
            "host:x",
            "host:70000",
            "a/b:1",
            "localhost:+31999",
            "LOCALHOST:031999",
            "localhost:-1",
            "localhost: 443",
            "localhost:443 ",
            "localhost.:443",
            "local..host:443",
            "-host:443",
            "host_name:443",
            "user@host:443",
            "127.0.0.01:443",
            "127.1:443",
            "0x7f.0.0.1:443",
            "2130706433:443",
            "::1:443",
            "[::1]443",
            "[::1]:0443",
            "[localhost]:443",
            "h\u{e9}te:443",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
        assert_eq!(
            "10.213.0.0/16".parse::<Cidr>().expect("v4").to_string(),
            "10.213.0.0/16"
        );
        assert_eq!(
            "fd00:0::/8".parse::<Cidr>().expect("v6").to_string(),
            "fd00::/8"
        );
        for bad in [
            "10.213.0.0",
            "10.213.0.0/33",
            "10.213.0.0/016",
            "10.213.0.0/+16",
            "10.213.0.0/",
            "10.213/16",
            "010.213.0.0/16",
            "::/129",
            "host/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kubelet_ports_and_networks_parse() {
        let args = Args::try_parse_from([
            "nautilus-sidecar",
            "--boot-config",
            "/b.json",
            "--launcher",
            "process",
            "--egress-allow-kubelet-port",
            "10250",
            "--egress-allow-kubelet-port",
            "11250",
            "--egress-kubelet-cidr",
            "10.213.0.0/16",
        ])
        .expect("parses");
        assert_eq!(args.egress_allow_kubelet_ports, [10250, 11250]);
        let net = args.egress_kubelet_cidrs[0];
        assert!(net.contains("10.213.9.9".parse().expect("ip")));
        assert!(!net.contains("10.214.0.1".parse().expect("ip")));
        assert!(!net.contains("::ffff:10.213.9.9".parse().expect("ip")));
        assert!(
            Args::try_parse_from([
                "nautilus-sidecar",
                "--boot-config",
                "/b.json",
                "--launcher",
                "process",
                "--egress-allow-kubelet-port",
                "0",
            ])
            .is_err()
        );
    }
}
