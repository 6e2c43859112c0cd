//! One local sidecar process: its command line, ports and sockets, and how it is told to stop
//! (SIGTERM, then SIGKILL after [`LOCAL_STOP_GRACE`]), whether this operator process started it
//! or adopted it from a previous one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nautilus_crds::NautilusMaster;
use nautilus_lifetime::{Ended, ProcessId, Reach};

use super::super::{Result, RuntimeError};
use super::{LocalNetwork, LocalRuntime, MAX_SOCKET_PATH};
use crate::desired::{self, Names};

/// Names of the Unix sockets between a local sidecar and its agent, in the resource's socket
/// directory ([`LocalRuntime::socket_dir`]).
const AGENT_SOCKET: &str = "agent.sock";
const API_SOCKET: &str = "api.sock";
const EGRESS_SOCKET: &str = "egress.sock";

/// How long a local sidecar gets to stop its agent after SIGTERM before it is killed: the
/// outermost of the nested stop budgets, so a graceful stop's last snapshot is never cut off.
pub const LOCAL_STOP_GRACE: Duration = nautilus_protocol::constants::stop::HOST;

/// A local sidecar process: a child of this operator process, or one a previous operator
/// process started and this one adopted (it is not our child: its exit status is unknown).
#[derive(Debug)]
pub(super) enum Handle {
    /// Started by this process.
    Child(tokio::process::Child),
    /// Started by a previous operator process, identified by pid and start time.
    Adopted { pid: u32, start_ticks: u64 },
}

impl Handle {
    /// `None` while it runs, else how it ended.
    pub(super) fn exited(&mut self) -> Option<String> {
        match self {
            Self::Child(child) => match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(format!("the local sidecar process exited: {status}")),
                Err(err) => Some(format!("cannot check the local sidecar: {err}")),
            },
            Self::Adopted { pid, start_ticks } => (!same_process(*pid, *start_ticks)).then(|| {
                format!("the local sidecar process {pid} (started by a previous operator) is gone")
            }),
        }
    }

    /// Its pid, while known.
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Self::Child(child) => child.id(),
            Self::Adopted { pid, .. } => Some(*pid),
        }
    }

    /// SIGTERM (so the sidecar stops the enclave), then SIGKILL after [`LOCAL_STOP_GRACE`]; an
    /// adopted one is checked against its start time before each signal, so a reused pid is
    /// never signalled.
    pub(super) async fn terminate(&mut self) -> Ended {
        match self {
            Self::Child(child) => {
                match nautilus_lifetime::terminate_child(child, Reach::Process, LOCAL_STOP_GRACE)
                    .await
                {
                    Ok((_, ended)) => ended,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot reap a local sidecar");
                        Ended::Exited
                    }
                }
            }
            Self::Adopted { pid, start_ticks } => {
                let id = ProcessId {
                    pid: *pid,
                    start_ticks: *start_ticks,
                };
                nautilus_lifetime::terminate_process(id, LOCAL_STOP_GRACE).await
            }
        }
    }
}

/// Whether `pid` is still the process that started at `start_ticks` (and has not ended).
pub(super) fn same_process(pid: u32, start_ticks: u64) -> bool {
    ProcessId { pid, start_ticks }.is_alive()
}

pub(super) fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

/// The ports of one local sidecar and its control plane. Inside an isolated enclave's
/// namespace the components take their usual ports (below the ephemeral range, which the
/// enclave's own outgoing connections draw from); in the host network mode they are picked free,
/// below that range too ([`nautilus_lifetime::ports`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct LocalPorts {
    /// The sidecar's HTTP API, on 127.0.0.1.
    pub(super) http: u16,
    /// The sidecar's API port, on [`LocalSettings::api_publish_ip`].
    pub(super) api: u16,
    /// The agent's webhook, on the enclave's 127.0.0.1.
    pub(super) webhook: u16,
    /// kube-scheduler's health port.
    pub(super) scheduler: u16,
    /// kube-controller-manager's health port.
    pub(super) controller: u16,
    /// etcd's client port.
    pub(super) etcd_client: u16,
    /// etcd's peer port.
    pub(super) etcd_peer: u16,
}

/// The Unix sockets between a local sidecar and its agent (the stand-ins for vsock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LocalSockets {
    /// The control link: the agent listens, the sidecar dials.
    pub(super) agent: PathBuf,
    /// The API port upstream: the agent listens and forwards to its API server.
    pub(super) api: PathBuf,
    /// The egress proxy: the sidecar listens, the agent dials (Sui RPC, kubelets).
    pub(super) egress: PathBuf,
    /// Where the agent makes the sockets of its own control plane (`--socket-dir`: the API
    /// server's kubelet egress), checked for the longest of their names.
    pub(super) dir: PathBuf,
}

impl LocalSockets {
    pub(super) fn in_dir(dir: &Path) -> Result<Self> {
        let path = |name: &str| {
            let path = dir.join(name);
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(RuntimeError::SocketPath {
                    path,
                    len,
                    max: MAX_SOCKET_PATH,
                });
            }
            Ok(path)
        };
        path(nautilus_protocol::constants::KUBELET_EGRESS_SOCKET)?;
        Ok(Self {
            agent: path(AGENT_SOCKET)?,
            api: path(API_SOCKET)?,
            egress: path(EGRESS_SOCKET)?,
            dir: dir.to_owned(),
        })
    }
}

/// The host part of a URL for `ip`: an unspecified address is reached on the loopback, an IPv6
/// one in brackets.
pub(super) fn endpoint_for(ip: IpAddr, port: u16) -> String {
    let ip = match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, port))
}

impl LocalRuntime {
    /// The sidecar's command line for `nm` (development: process launcher, simulated NSM with
    /// the spec's PCRs, Unix sockets instead of vsock, the agent in a network namespace of its
    /// own unless the host's network was asked for; Sui RPC through the sidecar's egress
    /// proxy).
    pub(super) fn command(
        &self,
        nm: &NautilusMaster,
        names: &Names,
        dir: &Path,
        boot_path: &Path,
        sockets: &LocalSockets,
        ports: LocalPorts,
    ) -> Result<tokio::process::Command> {
        let LocalPorts {
            http,
            api,
            webhook,
            scheduler,
            controller,
            etcd_client,
            etcd_peer,
        } = ports;
        let unix = |path: &Path| format!("unix:{}", path.display());
        let s = &self.settings;
        let enclave = &nm.spec.enclave;
        let mut agent_args = vec![
            format!("--listen={}", unix(&sockets.agent)),
            format!("--api-listen={}", unix(&sockets.api)),
            "--nsm=simulated".to_owned(),
            format!("--simulated-pcr=0={}", enclave.pcr0),
            format!("--simulated-pcr=1={}", enclave.pcr1),
            format!("--simulated-pcr=2={}", enclave.pcr2),
        ];
        if let Some(pcr8) = &enclave.pcr8 {
            agent_args.push(format!("--simulated-pcr=8={pcr8}"));
        }
        agent_args.extend([
            format!("--control-plane-command={}", s.control_plane_command),
            format!("--work-dir={}", dir.join("agent").display()),
            format!("--socket-dir={}", sockets.dir.display()),
            format!("--webhook-listen=127.0.0.1:{webhook}"),
            format!("--egress-proxy={}", unix(&sockets.egress)),
        ]);
        if let Some(ca) = &s.sui_ca_file {
            agent_args.push(format!("--sui-ca-file={}", ca.display()));
        }
        if let Some(dir) = &s.kubernetes_bin_dir {
            agent_args.push(format!("--kubernetes-bin-dir={}", dir.display()));
        }
        if let Some(etcd) = &s.etcd_command {
            agent_args.push(format!("--etcd-command={}", etcd.display()));
        }
        if let Some(ca) = &s.kms_ca_file {
            agent_args.push(format!("--kms-ca-file={}", ca.display()));
        }
        if let Some(key) = &s.simulated_root_key {
            agent_args.push(format!("--simulated-root-key={}", key.display()));
        }
        let mut cmd = tokio::process::Command::new(&s.sidecar_binary);
        cmd.arg(format!("--boot-config={}", boot_path.display()))
            .arg("--launcher=process")
            .arg(format!("--agent-command={}", s.agent_binary.display()));
        if s.network == LocalNetwork::Isolated {
            cmd.arg("--isolate-network");
        }
        for arg in agent_args {
            cmd.arg(format!("--agent-arg={arg}"));
        }
        cmd.arg(format!("--agent={}", unix(&sockets.agent)))
            .arg(format!("--api-upstream={}", unix(&sockets.api)))
            .arg(format!("--http-listen=127.0.0.1:{http}"))
            .arg(format!(
                "--api-listen={}",
                SocketAddr::new(s.api_publish_ip, api)
            ))
            .arg(format!("--egress-listen={}", unix(&sockets.egress)))
            .arg(format!(
                "--egress-allow={}",
                desired::https_host_port(&nm.spec.auth.sui_rpc_url)?
            ));
        if let Some(state) = &nm.spec.state {
            if let Some(file) = &s.aws_credentials_file {
                cmd.arg(format!("--aws-credentials-file={}", file.display()));
            }
            cmd.arg(format!("--egress-allow={}", desired::kms_host_port(state)?))
                .arg(format!("--state-dir={}", self.state_dir(names).display()));
        }
        cmd
            // Parallel control planes on one machine must not share the health ports (with
            // the host's network; in namespaces of their own they could).
            .env("NAUTILUS_CP_SCHEDULER_PORT", scheduler.to_string())
            .env(
                "NAUTILUS_CP_CONTROLLER_MANAGER_PORT",
                controller.to_string(),
            )
            .env("NAUTILUS_CP_ETCD_CLIENT_PORT", etcd_client.to_string())
            .env("NAUTILUS_CP_ETCD_PEER_PORT", etcd_peer.to_string())
            .kill_on_drop(true);
        Ok(cmd)
    }
}
