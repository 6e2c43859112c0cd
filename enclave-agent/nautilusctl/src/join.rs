//! `nautilusctl join NAME`: make this machine a node of an attested control plane.
//!
//! ```text
//! worker ── the checks of `nautilusctl verify NAME` ──▶ refused: nothing written, exit 1
//!        ── verified ──▶ OUT/kubeconfig           endpoint, attested CA, seal-token exec plugin
//!                        OUT/ca.crt               the attested CA
//!                        OUT/kubelet-config.yaml  the KubeletConfiguration
//!        ── prints the node name and the kubelet's command line
//! ```
//!
//! A node trusts only an attested control plane: the verification is `verify`'s own
//! ([`crate::verify::TargetArgs::attest`]), and nothing is written unless every check passed.
//!
//! The kubelet authenticates with seal tokens: its kubeconfig is the one `verify
//! --write-kubeconfig` writes (same server, CA, audience and token lifetime), with the exec
//! plugin pointed at this `nautilusctl` and the worker's keystore and address (the path, never
//! the key). client-go runs the plugin again when a token expires. Client-certificate rotation
//! stays off: a certificate from the cluster would replace the seal token, and with it the live
//! stake check. The kubelet's serving certificate comes from a `kubernetes.io/kubelet-serving`
//! CSR (`serverTLSBootstrap`), and the API server's calls to the kubelet are authenticated with
//! a client certificate of the attested CA, then authorised through the API server (webhook).
//!
//! The node's name is not the worker's choice: the cluster derives it from the token's signer
//! ([`nautilus_seal::tier::node_name`]), so the kubelet must register under exactly that name.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use nautilus_crds::NautilusMaster;
use nautilus_seal::{Address, Keystore};
use serde::Serialize;
use serde_json::{Value, json};

use crate::attestation::Output;
use crate::token::parse_address;
use crate::usage;
use crate::verify::{self, Attested, Summary, TargetArgs};

/// The kubelet's kubeconfig, in `--out`.
pub const KUBECONFIG_FILE: &str = "kubeconfig";
/// The KubeletConfiguration, in `--out`.
pub const KUBELET_CONFIG_FILE: &str = "kubelet-config.yaml";
/// The attested CA, in `--out`.
pub const CA_FILE: &str = "ca.crt";
/// The cluster's DNS domain: the control plane's certificates and the agent's configuration
/// fix it to the Kubernetes default.
const CLUSTER_DOMAIN: &str = "cluster.local";

/// Arguments of `join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Sui CLI keystore holding the worker's key. The kubelet's kubeconfig names this path
    /// (made absolute), never the key: keep the file readable by root only.
    #[arg(long, env = "NAUTILUS_SUI_KEYSTORE", value_name = "PATH")]
    keystore: PathBuf,
    /// Address of the worker's key; default: the keystore's first key.
    #[arg(long, value_name = "ADDR", value_parser = parse_address)]
    address: Option<Address>,
    /// Directory for the kubelet's kubeconfig, KubeletConfiguration and CA (created).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/nautilus-worker")]
    out: PathBuf,
    /// The address the control plane reaches this node at (the kubelet's `--node-ip`).
    /// Default: the kubelet's choice, the address of the default route's interface.
    #[arg(long, value_name = "IP")]
    node_ip: Option<IpAddr>,
    /// Cgroup driver; it must match containerd's (`SystemdCgroup = true` is `systemd`).
    #[arg(long, value_enum, default_value_t = CgroupDriver::Systemd)]
    cgroup_driver: CgroupDriver,
    /// Let the kubelet run on a cgroup v1 machine (`failCgroupV1: false`); by default it
    /// refuses to start there.
    #[arg(long)]
    cgroup_v1: bool,
    /// Let the kubelet start with swap enabled (`failSwapOn: false`).
    #[arg(long)]
    allow_swap: bool,
    /// The container runtime's CRI socket.
    #[arg(
        long,
        value_name = "URL",
        default_value = "unix:///run/containerd/containerd.sock"
    )]
    container_runtime_endpoint: String,
    /// The `nautilusctl` the kubelet runs as its credential plugin. Default: this executable.
    #[arg(long, value_name = "PATH")]
    exec_command: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

/// The kubelet's cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CgroupDriver {
    /// systemd manages the cgroups (the kubelet's recommendation on systemd machines).
    Systemd,
    /// The kubelet and runc write cgroupfs directly.
    Cgroupfs,
}

impl CgroupDriver {
    fn as_str(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Cgroupfs => "cgroupfs",
        }
    }
}

/// What `join --output json` prints: `verify`'s summary and the node's files and command.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinSummary {
    #[serde(flatten)]
    verification: Summary,
    /// The Node the kubelet registers as.
    node_name: String,
    /// The worker key's address.
    address: String,
    kubelet_config: PathBuf,
    ca_file: PathBuf,
    /// The kubelet's command line, one argument an element.
    kubelet_command: Vec<String>,
    /// Things about this machine that stop the kubelet as configured.
    warnings: Vec<String>,
}

/// The paths and settings that go into the node's files.
#[derive(Debug, Clone)]
struct Node {
    out: PathBuf,
    keystore: PathBuf,
    address: Address,
    exec_command: PathBuf,
    cgroup_driver: CgroupDriver,
    cgroup_v1: bool,
    allow_swap: bool,
    container_runtime_endpoint: String,
}

impl Node {
    fn file(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }
}

impl JoinArgs {
    /// Run the command.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let Self {
            target,
            keystore,
            address,
            out,
            node_ip,
            cgroup_driver,
            cgroup_v1,
            allow_swap,
            container_runtime_endpoint,
            exec_command,
            output,
        } = self;
        // Everything local first, so a usage error costs no challenge.
        let store =
            Keystore::load(&keystore).map_err(|e| usage(format!("{:#}", anyhow::Error::new(e))))?;
        let address = store
            .select(address.as_ref())
            .map_err(|e| usage(format!("{:#}", anyhow::Error::new(e))))?
            .address();
        let absolute = |path: &Path, what: &str| {
            std::path::absolute(path).map_err(|e| usage(format!("{what} {}: {e}", path.display())))
        };
        let exec_command = match exec_command {
            Some(path) => absolute(&path, "--exec-command")?,
            None => std::env::current_exe().context("locating this nautilusctl")?,
        };
        let node = Node {
            out: absolute(&out, "--out")?,
            keystore: absolute(&keystore, "--keystore")?,
            address,
            exec_command,
            cgroup_driver,
            cgroup_v1,
            allow_swap,
            container_runtime_endpoint,
        };
        let warnings = machine_warnings(&node);

        let (mut summary, attested) = target.attest()?;
        let attested = match attested {
            Ok(attested) => attested,
            Err(refusal) => return Ok(verify::refused(summary, &refusal, output)),
        };
        let kubeconfig = kubelet_kubeconfig(&attested, &node)?;
        let config = kubelet_config(&attested, &node)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(&node.out)
            .map_err(|e| usage(format!("cannot create {}: {e}", node.out.display())))?;
        let (kubeconfig_path, config_path, ca_path) = (
            node.file(KUBECONFIG_FILE),
            node.file(KUBELET_CONFIG_FILE),
            node.file(CA_FILE),
        );
        verify::write_files(&[
            (&kubeconfig_path, &kubeconfig, 0o600),
            (&config_path, &config, 0o644),
            (&ca_path, &attested.verified.serving_ca_pem, 0o644),
        ])?;
        summary.kubeconfig = Some(kubeconfig_path.clone());

        let node_name = nautilus_seal::tier::node_name(&node.address);
        let mut command = vec![
            "kubelet".to_owned(),
            format!("--config={}", config_path.display()),
            format!("--kubeconfig={}", kubeconfig_path.display()),
            format!("--hostname-override={node_name}"),
        ];
        if let Some(ip) = node_ip {
            command.push(format!("--node-ip={ip}"));
        }
        let joined = JoinSummary {
            verification: summary,
            node_name,
            address: node.address.to_string(),
            kubelet_config: config_path,
            ca_file: ca_path,
            kubelet_command: command,
            warnings,
        };
        for warning in &joined.warnings {
            eprintln!("warning: {warning}");
        }
        match output {
            Output::Json => out!("{}", serde_json::to_string_pretty(&joined)?),
            Output::Text => print_text(&joined, &attested.nm, node_ip.is_some()),
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn print_text(joined: &JoinSummary, nm: &NautilusMaster, node_ip: bool) {
    verify::print_text(&joined.verification);
    out!("kubelet config:    {}", joined.kubelet_config.display());
    out!("ca:                {}", joined.ca_file.display());
    out!("address:           {}", joined.address);
    out!("node name:         {}", joined.node_name);
    out!();
    let version = nm
        .spec
        .control_plane
        .k3s_version
        .as_deref()
        .and_then(minor_version)
        .map_or_else(
            || "the control plane's minor version".to_owned(),
            |minor| format!("{minor}.x, the control plane's"),
        );
    out!("Start the kubelet as root (a kubelet of {version}):");
    out!();
    out!("  {}", joined.kubelet_command.join(" \\\n      "));
    out!();
    if !node_ip {
        out!("Add --node-ip=<address> unless the default route's address is the one the");
        out!("control plane reaches this machine at.");
    }
    out!("It needs containerd with its CRI plugin (and runc) at the configured socket, the");
    out!("CNI plugins in /opt/cni/bin and a network in /etc/cni/net.d: see the README's");
    out!("\"Join a worker\". The node registers once the key's stake reaches a tier that");
    out!(
        "grants node identity; then `kubectl get nodes` lists {}.",
        joined.node_name
    );
}

/// `v1.36` of `v1.36.2` or `v1.36.2+k3s1`.
fn minor_version(version: &str) -> Option<String> {
    let mut parts = version.splitn(3, '.');
    let major = parts.next()?;
    let minor = parts.next()?;
    Some(format!("{major}.{minor}"))
}

/// The kubelet's kubeconfig: `verify`'s (endpoint, the attested CA embedded, the seal-token
/// exec plugin with the resource's audience and token lifetime), with the plugin's command made
/// absolute and the worker's keystore and address named in its arguments: the kubelet's
/// environment (a systemd unit's) has no `NAUTILUS_SUI_KEYSTORE`, and naming the address keeps
/// the identity fixed if the keystore gains keys.
fn kubelet_kubeconfig(attested: &Attested, node: &Node) -> anyhow::Result<String> {
    let text = nautilus_crds::render::kubeconfig(
        &attested.nm,
        &attested.endpoint.url,
        &attested.verified.serving_ca_pem,
    )?;
    let mut config: Value =
        serde_yaml::from_str(&text).context("reading the rendered kubeconfig")?;
    let exec = config
        .pointer_mut("/users/0/user/exec")
        .and_then(Value::as_object_mut)
        .context("the rendered kubeconfig has no exec user")?;
    let command = utf8(&node.exec_command, "--exec-command")?;
    let keystore = utf8(&node.keystore, "--keystore")?;
    exec.insert("command".into(), Value::String(command.clone()));
    exec.get_mut("args")
        .and_then(Value::as_array_mut)
        .context("the rendered exec user has no args")?
        .extend(
            [
                "--keystore".to_owned(),
                keystore.clone(),
                "--address".to_owned(),
                node.address.to_string(),
            ]
            .map(Value::String),
        );
    exec.insert(
        "installHint".into(),
        Value::String(format!(
            "the kubelet mints its seal tokens with {command} from the keystore {keystore}; \
             run `nautilusctl join` again after moving either"
        )),
    );
    Ok(nautilus_protocol::yaml::to_string(&config)?)
}

/// `path` as a string for a YAML file, or a usage error naming the flag it came from.
fn utf8(path: &Path, what: &str) -> anyhow::Result<String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| usage(format!("{what} {} is not UTF-8", path.display())))
}

/// The KubeletConfiguration for this node.
fn kubelet_config(attested: &Attested, node: &Node) -> anyhow::Result<String> {
    let control_plane = &attested.verified.config.control_plane;
    let ca_file = utf8(&node.file(CA_FILE), "--out")?;
    let mut config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        // Who may call the kubelet's API: the enclave's API server, with a client certificate
        // of the attested CA, and whoever it authorises through SubjectAccessReviews.
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": ca_file },
        },
        "authorization": { "mode": "Webhook" },
        "readOnlyPort": 0,
        // The serving certificate through a kubelet-serving CSR the enclave approves for this
        // node's own name and addresses; never a self-signed one.
        "serverTLSBootstrap": true,
        "tlsMinVersion": control_plane.tls_min_version,
        // The client credential is the seal token: a certificate would replace it.
        "rotateCertificates": false,
        "registerNode": true,
        "clusterDNS": [control_plane.cluster_dns],
        "clusterDomain": CLUSTER_DOMAIN,
        "cgroupDriver": node.cgroup_driver.as_str(),
        "containerRuntimeEndpoint": node.container_runtime_endpoint,
        "failSwapOn": !node.allow_swap,
    });
    if node.cgroup_v1
        && let Some(map) = config.as_object_mut()
    {
        map.insert("failCgroupV1".into(), Value::Bool(false));
    }
    Ok(nautilus_protocol::yaml::to_string(&config)?)
}

/// What on this machine stops the kubelet as configured, and a keystore others can read.
fn machine_warnings(node: &Node) -> Vec<String> {
    let mut warnings = Vec::new();
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !unified && !node.cgroup_v1 {
        warnings.push(
            "this machine uses cgroup v1: the kubelet refuses to start unless joined with \
             --cgroup-v1 (failCgroupV1: false)"
                .to_owned(),
        );
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    if swaps.lines().count() > 1 && !node.allow_swap {
        warnings.push(
            "swap is on: the kubelet refuses to start unless swap is turned off (swapoff -a) \
             or joined with --allow-swap"
                .to_owned(),
        );
    }
    if let Ok(meta) = std::fs::metadata(&node.keystore) {
        use std::os::unix::fs::PermissionsExt as _;
        if meta.permissions().mode() & 0o077 != 0 {
            warnings.push(format!(
                "{} is readable by other users: the key in it makes this machine a node \
                 (chmod 600 it)",
                node.keystore.display()
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::check::Verified;
    use nautilus_protocol::nsm::{Nsm as _, SimulatedNsm};

    /// An attested control plane as `verify` returns it: the document's content does not
    /// matter to the files, only the resource, the endpoint, the configuration and the CA.
    fn attested() -> Attested {
        let mut nm = NautilusMaster::new(
            "demo",
            serde_json::from_value(json!({
                "enclave": {
                    "image": "registry.example.com/enclave:1",
                    "pcr0": "10".repeat(48), "pcr1": "11".repeat(48), "pcr2": "12".repeat(48),
                },
                "auth": { "suiRpcURL": "https://fullnode.testnet.sui.io:443" },
                "controlPlane": { "clusterDNS": "10.43.0.53" },
            }))
            .expect("spec"),
        );
        nm.metadata.namespace = Some("team-a".into());
        let config = nautilus_crds::render::enclave_config(&nm).expect("config");
        let nsm = SimulatedNsm::new().expect("nsm");
        let document = nsm.attest(None, Some(b"n"), None).expect("attest");
        let verifier = nautilus_protocol::Verifier::new(
            nautilus_protocol::TrustAnchor::from_pem(nsm.root_pem()).expect("root"),
        );
        let document = verifier
            .verify(&document, nautilus_protocol::attestation::VerifyAt::Now)
            .expect("document");
        Attested {
            nm,
            endpoint: "https://127.0.0.1:40123".parse().expect("endpoint"),
            verified: Verified {
                document,
                simulated: true,
                config,
                serving_ca_pem: nsm.root_pem().to_owned(),
                serving_ca_sha256: [0; 32],
                placed: Vec::new(),
            },
        }
    }

    fn node() -> Node {
        Node {
            out: "/var/lib/nautilus-worker".into(),
            keystore: "/root/.sui/sui_config/sui.keystore".into(),
            address: "0x2a".parse().expect("address"),
            exec_command: "/usr/local/bin/nautilusctl".into(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_v1: true,
            allow_swap: false,
            container_runtime_endpoint: "unix:///run/containerd/containerd.sock".into(),
        }
    }

    #[test]
    fn the_kubelet_kubeconfig_is_verifys_with_the_workers_key_named() {
        let attested = attested();
        let node = node();
        let text = kubelet_kubeconfig(&attested, &node).expect("kubeconfig");
        let config: Value = serde_yaml::from_str(&text).expect("yaml");
        let verify: Value = serde_yaml::from_str(
            &nautilus_crds::render::kubeconfig(
                &attested.nm,
                &attested.endpoint.url,
                &attested.verified.serving_ca_pem,
            )
            .expect("verify's"),
        )
        .expect("yaml");
        // Server, CA and contexts are verify's.
        assert_eq!(config["clusters"], verify["clusters"]);
        assert_eq!(config["current-context"], verify["current-context"]);
        assert_eq!(
            config["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:40123"
        );
        let exec = &config["users"][0]["user"]["exec"];
        assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(exec["interactiveMode"], "Never");
        assert_eq!(exec["provideClusterInfo"], false);
        assert_eq!(exec["command"], "/usr/local/bin/nautilusctl");
        let args: Vec<&str> = exec["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            args,
            [
                "token",
                "exec-credential",
                "--audience",
                "team-a/demo",
                "--ttl",
                "900s",
                "--keystore",
                "/root/.sui/sui_config/sui.keystore",
                "--address",
                &format!("0x{}2a", "0".repeat(62)),
            ]
        );
        // No credential in the file, nor anything from the environment.
        assert!(exec.get("env").is_none_or(Value::is_null), "{exec}");
    }

    #[test]
    fn the_kubelet_config_is_the_recommended_one() {
        let text = kubelet_config(&attested(), &node()).expect("config");
        let config: Value = serde_yaml::from_str(&text).expect("yaml");
        assert_eq!(config["apiVersion"], "kubelet.config.k8s.io/v1beta1");
        assert_eq!(config["kind"], "KubeletConfiguration");
        assert_eq!(
            config["authentication"]["x509"]["clientCAFile"],
            "/var/lib/nautilus-worker/ca.crt"
        );
        assert_eq!(config["authentication"]["webhook"]["enabled"], true);
        assert_eq!(config["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(config["authorization"]["mode"], "Webhook");
        assert_eq!(config["serverTLSBootstrap"], true);
        assert_eq!(config["rotateCertificates"], false);
        assert_eq!(config["registerNode"], true);
        assert_eq!(config["readOnlyPort"], 0);
        // The attested configuration's DNS address, the spec's here.
        assert_eq!(config["clusterDNS"], json!(["10.43.0.53"]));
        assert_eq!(config["clusterDomain"], "cluster.local");
        assert_eq!(config["cgroupDriver"], "cgroupfs");
        assert_eq!(config["failCgroupV1"], false);
        assert_eq!(config["failSwapOn"], true);
        let strict = Node {
            cgroup_v1: false,
            cgroup_driver: CgroupDriver::Systemd,
            ..node()
        };
        let config: Value =
            serde_yaml::from_str(&kubelet_config(&attested(), &strict).expect("config"))
                .expect("yaml");
        assert!(config.get("failCgroupV1").is_none(), "{config}");
        assert_eq!(config["cgroupDriver"], "systemd");
    }

    #[test]
    fn minor_versions() {
        assert_eq!(minor_version("v1.36.2").as_deref(), Some("v1.36"));
        assert_eq!(minor_version("v1.33.4+k3s1").as_deref(), Some("v1.33"));
        assert_eq!(minor_version("v1"), None);
    }
}
