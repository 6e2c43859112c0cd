//! The K3s control plane's configuration: the `--config` YAML rendered from the boot
//! configuration, and the custom CA files placed in its data directory before the first start.
//!
//! Everything the resource's spec configures reaches K3s: bind address, HTTPS port, cluster and
//! service CIDRs, cluster DNS, data directory, secrets encryption, and per component the TLS
//! minimum version, cipher suites, log verbosity and log format. The control plane runs alone
//! (`disable-agent: true`: no kubelet, no containers in the enclave) without the packaged
//! add-ons, and kube-apiserver authenticates bearer tokens through the agent's TokenReview
//! webhook.
//!
//! K3s skips generating its CAs when it finds them under `<data-dir>/server/tls` at the first
//! start ("custom CA certificates", `k3s certificate rotate-ca` documentation); all of
//! `server-ca`, `client-ca`, `request-header-ca`, `etcd/server-ca`, `etcd/peer-ca` and
//! `service.key` must then be present. The serving CA is the one the attestation binds; the
//! others are separate CAs made by the agent, so the CA the operator trusts for serving never
//! signs client identities.

use std::path::{Path, PathBuf};

use nautilus_protocol::wire::{ControlPlaneConfig, EnclaveConfig};
use serde_yaml::{Mapping, Value};

use crate::flags::{self, Flags, FlagsError, SpecFlags};
use crate::material::{BootMaterial, CertificateAuthority};

/// Why the K3s configuration could not be rendered or written.
#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    /// A value of the configuration does not make a valid flag.
    #[error(transparent)]
    Flags(#[from] FlagsError),
    /// Reading YAML back failed.
    #[error("reading the k3s config")]
    Yaml(#[from] serde_yaml::Error),
    /// Rendering YAML failed.
    #[error("rendering k3s YAML")]
    Render(#[from] nautilus_protocol::yaml::YamlError),
    /// Writing a file failed.
    #[error("writing {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Add-ons a control-plane-only K3s does not run.
const DISABLED_ADDONS: [&str; 4] = ["traefik", "servicelb", "local-storage", "metrics-server"];

fn seq(items: impl IntoIterator<Item = String>) -> Value {
    Value::Sequence(items.into_iter().map(Value::String).collect())
}

/// Render the K3s `--config` YAML for `config` with the component flags `spec` (from
/// [`crate::flags::spec_flags`] for the same configuration). Deterministic: the same input
/// gives the same bytes.
pub fn render_config(config: &EnclaveConfig, spec: &SpecFlags) -> Result<String, K3sError> {
    let cp: &ControlPlaneConfig = &config.control_plane;
    flags::validate(cp)?;
    let mut map = Mapping::new();
    let mut put = |key: &str, value: Value| {
        map.insert(Value::String(key.to_owned()), value);
    };
    put("bind-address", Value::String(cp.bind_address.clone()));
    put("https-listen-port", Value::Number(cp.https_port.into()));
    put("cluster-cidr", Value::String(cp.cluster_cidr.clone()));
    put("service-cidr", Value::String(cp.service_cidr.clone()));
    put("cluster-dns", Value::String(cp.cluster_dns.clone()));
    put("data-dir", Value::String(cp.data_dir.clone()));
    // K3s issues its serving certificate itself (from the agent's server CA): the host
    // Service's names must be in it too, as in the `kubernetes` distribution's.
    if !cp.tls_sans.is_empty() || cp.advertise_address.is_some() {
        put(
            "tls-san",
            seq(cp.tls_sans.iter().chain(&cp.advertise_address).cloned()),
        );
    }
    // The `kubernetes` Service's endpoint, as the `kubernetes` distribution's
    // `--advertise-address`.
    if let Some(address) = &cp.advertise_address {
        put("advertise-address", Value::String(address.clone()));
    }
    put("secrets-encryption", Value::Bool(cp.encrypt_secrets));
    put("debug", Value::Bool(cp.log_level == "debug"));
    put("disable-agent", Value::Bool(true));
    put("disable-cloud-controller", Value::Bool(true));
    put("disable-network-policy", Value::Bool(true));
    // K3s' own egress selector (its agents' tunnel, `agent` mode by default) would write
    // `--egress-selector-config-file` itself; the agent's own (`crate::kubelet_egress`, in
    // `kube-apiserver-arg`) goes through the sidecar instead.
    put("egress-selector-mode", Value::String("disabled".into()));
    put(
        "disable",
        seq(DISABLED_ADDONS.iter().map(|s| (*s).to_owned())),
    );
    put(
        "kube-apiserver-arg",
        seq(flags::as_k3s_args(&spec.apiserver)),
    );
    put(
        "kube-scheduler-arg",
        seq(flags::as_k3s_args(&spec.scheduler)),
    );
    put(
        "kube-controller-manager-arg",
        seq(flags::as_k3s_args(&spec.controller_manager)),
    );
    // Go's YAML 1.1 readers see the same strings (a group or value such as `on` stays a string).
    Ok(nautilus_protocol::yaml::to_string(&Value::Mapping(map))?)
}

/// The port K3s' embedded kube-apiserver listens on behind its supervisor: `https-listen-port`
/// + 1 unless set otherwise (K3s `daemons/control` defaults).
pub fn embedded_apiserver_port(https_listen_port: u16) -> u16 {
    https_listen_port.saturating_add(1)
}

/// The flags K3s gives its embedded kube-apiserver for the config file `rendered`, as
/// K3s' `daemons/control/server.go` builds them (`apiServer`: a base map from the config,
/// then every `kube-apiserver-arg` over it), restricted to the flags that do not depend on
/// K3s' own datastore (kine) and supervisor. This is what the `kubernetes` distribution's
/// API server flags are compared with, so both distributions provably run the API server the
/// same way.
pub fn implied_apiserver_flags(rendered: &str) -> Result<Flags, K3sError> {
    let yaml: Value = serde_yaml::from_str(rendered)?;
    let text = |key: &str| yaml[key].as_str().unwrap_or_default().to_owned();
    let data_dir = text("data-dir");
    let tls = format!("{data_dir}/server/tls");
    let cred = format!("{data_dir}/server/cred");
    let https = yaml["https-listen-port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(6443);
    let f = |k: &str, v: String| (k.to_owned(), v);
    let mut base = vec![
        f("allow-privileged", "true".into()),
        f("authorization-mode", "Node,RBAC".into()),
        f(
            "service-account-signing-key-file",
            format!("{tls}/service.key"),
        ),
        f("service-cluster-ip-range", text("service-cidr")),
        f("service-node-port-range", "30000-32767".into()),
        f("secure-port", embedded_apiserver_port(https).to_string()),
        f("bind-address", "127.0.0.1".into()),
        f("tls-cert-file", format!("{tls}/serving-kube-apiserver.crt")),
        f(
            "tls-private-key-file",
            format!("{tls}/serving-kube-apiserver.key"),
        ),
        f("service-account-key-file", format!("{tls}/service.key")),
        f(
            "service-account-issuer",
            "https://kubernetes.default.svc.cluster.local".into(),
        ),
        f(
            "api-audiences",
            "https://kubernetes.default.svc.cluster.local,k3s".into(),
        ),
        f(
            "kubelet-certificate-authority",
            format!("{tls}/server-ca.crt"),
        ),
        f(
            "kubelet-client-certificate",
            format!("{tls}/client-kube-apiserver.crt"),
        ),
        f(
            "kubelet-client-key",
            format!("{tls}/client-kube-apiserver.key"),
        ),
        f(
            "requestheader-client-ca-file",
            format!("{tls}/request-header-ca.crt"),
        ),
        f(
            "requestheader-allowed-names",
            crate::material::REQUEST_HEADER_CN.into(),
        ),
        f(
            "proxy-client-cert-file",
            format!("{tls}/client-auth-proxy.crt"),
        ),
        f(
            "proxy-client-key-file",
            format!("{tls}/client-auth-proxy.key"),
        ),
        f(
            "requestheader-extra-headers-prefix",
            "X-Remote-Extra-".into(),
        ),
        f("requestheader-group-headers", "X-Remote-Group".into()),
        f("requestheader-username-headers", "X-Remote-User".into()),
        f("client-ca-file", format!("{tls}/client-ca.crt")),
        f("enable-admission-plugins", "NodeRestriction".into()),
        f("anonymous-auth", "false".into()),
        f("profiling", "false".into()),
    ];
    if yaml["secrets-encryption"].as_bool() == Some(true) {
        base.push(f(
            "encryption-provider-config",
            format!("{cred}/encryption-config.json"),
        ));
    }
    let extra: Flags = yaml["kube-apiserver-arg"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .filter_map(|arg| arg.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(flags::merge(&base, &extra))
}

/// Write a file readable only by the agent's user (`private`: keys) or by everyone
/// (certificates, configuration), creating its directory.
pub fn write(path: &Path, contents: &[u8], private: bool) -> Result<(), K3sError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| K3sError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    Ok(())
}

/// The CA files K3s looks for under `<data-dir>/server/tls`, relative to that directory.
pub const CA_FILES: [&str; 11] = [
    "server-ca.crt",
    "server-ca.key",
    "client-ca.crt",
    "client-ca.key",
    "request-header-ca.crt",
    "request-header-ca.key",
    "etcd/server-ca.crt",
    "etcd/server-ca.key",
    "etcd/peer-ca.crt",
    "etcd/peer-ca.key",
    "service.key",
];

/// Place the agent's CAs where K3s takes them instead of generating its own.
pub fn write_ca_files(data_dir: &Path, material: &BootMaterial) -> Result<(), K3sError> {
    let tls = data_dir.join("server").join("tls");
    let put_ca = |name: &str, ca: &CertificateAuthority| -> Result<(), K3sError> {
        write(
            &tls.join(format!("{name}.crt")),
            ca.cert_pem.as_bytes(),
            false,
        )?;
        write(
            &tls.join(format!("{name}.key")),
            ca.key_pem.as_bytes(),
            true,
        )
    };
    put_ca("server-ca", &material.serving_ca)?;
    put_ca("client-ca", &material.client_ca)?;
    put_ca("request-header-ca", &material.request_header_ca)?;
    put_ca("etcd/server-ca", &material.etcd_server_ca)?;
    put_ca("etcd/peer-ca", &material.etcd_peer_ca)?;
    write(
        &tls.join("service.key"),
        material.service_account_key_pem.as_bytes(),
        true,
    )
}

/// Groups the enclave's control plane grants a built-in ClusterRole to, and that role: the
/// default reader tier's `nautilus:readers` gets `view`, `nautilus:editors` gets `edit`, and the
/// default worker tier's `nautilus:node-proxiers` gets `system:node-proxier`, what kube-proxy on
/// a worker needs beyond the Node authorizer (Services, EndpointSlices, Nodes, Events) with the
/// node's own seal token.
/// `system:masters` (admin tier) is built into Kubernetes, and a node identity (worker tier) is
/// authorized by the Node authorizer; any other tier group needs a binding its users create
/// with an admin token.
pub const GROUP_BINDINGS: [(&str, &str); 3] = [
    ("nautilus:readers", "view"),
    ("nautilus:editors", "edit"),
    ("nautilus:node-proxiers", "system:node-proxier"),
];

/// Where K3s' deploy controller applies manifests from at start and on change, relative to the
/// data directory ("auto-deploying manifests").
pub const RBAC_MANIFEST: &str = "server/manifests/nautilus-rbac.yaml";

/// ClusterRoleBindings of [`GROUP_BINDINGS`], as JSON objects.
pub fn group_bindings() -> Vec<serde_json::Value> {
    GROUP_BINDINGS
        .iter()
        .map(|(group, role)| {
            let name = format!("nautilus-{}", group.trim_start_matches("nautilus:"));
            serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {
                    "name": name,
                    "labels": {"app.kubernetes.io/managed-by": "nautilus-agent"},
                },
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
            })
        })
        .collect()
}

/// The ClusterRoleBinding K3s makes for its API server's kubelet client
/// (`kube-apiserver-kubelet-admin`): the user [`crate::material::KUBELET_CLIENT_CN`] may use
/// every kubelet API (logs, exec, attach, port-forward, metrics), which a kubelet in webhook
/// authorization mode asks the API server about. The `kubernetes` distribution applies it
/// with [`group_bindings`]; K3s makes its own.
pub fn kubelet_api_admin_binding() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {
            "name": "nautilus-kube-apiserver-kubelet-admin",
            "labels": {"app.kubernetes.io/managed-by": "nautilus-agent"},
        },
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": crate::material::KUBELET_CLIENT_CN}],
    })
}

/// ClusterRoleBindings of [`GROUP_BINDINGS`], as the YAML K3s applies from
/// [`RBAC_MANIFEST`] (the `kubernetes` distribution applies [`group_bindings`] itself).
pub fn rbac_manifest() -> Result<String, K3sError> {
    let mut docs = Vec::new();
    for binding in group_bindings() {
        docs.push(nautilus_protocol::yaml::to_string(&binding)?);
    }
    Ok(docs.join("---\n"))
}

#[cfg(test)]
pub(crate) mod tests {

    #[test]
    fn reader_and_editor_groups_are_bound_to_view_and_edit() {
        let text = rbac_manifest().expect("manifest");
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 3);
        let bound: Vec<(String, String)> = docs
            .iter()
            .map(|d| {
                assert_eq!(d["kind"].as_str(), Some("ClusterRoleBinding"));
                (
                    d["subjects"][0]["name"].as_str().expect("group").to_owned(),
                    d["roleRef"]["name"].as_str().expect("role").to_owned(),
                )
            })
            .collect();
        assert_eq!(
            bound,
            vec![
                ("nautilus:readers".to_owned(), "view".to_owned()),
                ("nautilus:editors".to_owned(), "edit".to_owned()),
                (
                    "nautilus:node-proxiers".to_owned(),
                    "system:node-proxier".to_owned()
                )
            ]
        );
    }

    #[test]
    fn every_default_tier_group_grants_something() {
        for tier in nautilus_crds::default_tiers() {
            for group in &tier.groups {
                assert!(
                    ["system:masters", "system:nodes"].contains(&group.as_str())
                        || GROUP_BINDINGS.iter().any(|(g, _)| g == group),
                    "default tier {} grants group {group}, which nothing binds",
                    tier.name
                );
            }
        }
    }
    use super::*;
    use nautilus_protocol::wire::{AuthConfig, HealthConfig, TierConfig};

    pub(crate) fn mk_config() -> EnclaveConfig {
        EnclaveConfig {
            cluster: "default/demo".into(),
            control_plane: ControlPlaneConfig {
                distribution: "k3s".into(),
                bind_address: "127.0.0.1".into(),
                https_port: 6443,
                cluster_cidr: "10.42.0.0/16".into(),
                service_cidr: "10.43.0.0/16".into(),
                cluster_dns: "10.43.0.10".into(),
                data_dir: "/var/lib/rancher/k3s".into(),
                encrypt_secrets: true,
                tls_min_version: "VersionTLS13".into(),
                cipher_suites: vec![
                    "TLS_AES_128_GCM_SHA256".into(),
                    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into(),
                ],
                log_level: "info".into(),
                log_format: "json".into(),
                tls_sans: vec![
                    "demo.default.svc".into(),
                    "demo.default.svc.cluster.local".into(),
                ],
                advertise_address: Some("192.0.2.10".into()),
            },
            auth: AuthConfig {
                sui_rpc_url: "https://fullnode.testnet.sui.io:443".into(),
                chain_id: None,
                stake_type: "0x3::staking_pool::StakedSui".into(),
                stake_amount_field: None,
                audience: "nautilus:default/demo".into(),
                max_token_lifetime_seconds: 3600,
                stake_cache_ttl_seconds: 60,
                zk_login: None,
                tiers: vec![TierConfig {
                    name: "admin".into(),
                    min_stake_mist: 1,
                    groups: vec!["system:masters".into()],
                    identity: Default::default(),
                }],
            },
            health: HealthConfig {
                probe_interval_seconds: 10,
                startup_timeout_seconds: 300,
            },
            state: None,
        }
    }

    const GOLDEN: &str = "\
advertise-address: '192.0.2.10'
bind-address: '127.0.0.1'
cluster-cidr: '10.42.0.0/16'
cluster-dns: '10.43.0.10'
data-dir: /var/lib/rancher/k3s
debug: false
disable:
- traefik
- servicelb
- local-storage
- metrics-server
disable-agent: true
disable-cloud-controller: true
disable-network-policy: true
egress-selector-mode: disabled
https-listen-port: 6443
kube-apiserver-arg:
- authentication-token-webhook-config-file=/var/lib/nautilus/webhook-kubeconfig.yaml
- authentication-token-webhook-cache-ttl=30s
- authentication-token-webhook-version=v1
- kubelet-preferred-address-types=InternalIP,ExternalIP
- tls-min-version=VersionTLS13
- tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
- v=2
- logging-format=json
kube-controller-manager-arg:
- secure-port=10257
- bind-address=127.0.0.1
- leader-elect=false
- tls-min-version=VersionTLS13
- tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
- v=2
- logging-format=json
kube-scheduler-arg:
- secure-port=10259
- bind-address=127.0.0.1
- leader-elect=false
- tls-min-version=VersionTLS13
- tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
- v=2
- logging-format=json
secrets-encryption: true
service-cidr: '10.43.0.0/16'
tls-san:
- demo.default.svc
- demo.default.svc.cluster.local
- '192.0.2.10'
";

    fn kubeconfig() -> PathBuf {
        PathBuf::from("/var/lib/nautilus/webhook-kubeconfig.yaml")
    }

    fn render(config: &EnclaveConfig) -> Result<String, K3sError> {
        let spec = flags::spec_flags(config, &kubeconfig(), &flags::ComponentPorts::default())?;
        render_config(config, &spec)
    }

    #[test]
    fn renders_the_golden_config() {
        let rendered = render(&mk_config()).expect("renders");
        pretty_assertions::assert_eq!(rendered, GOLDEN);
        // Deterministic.
        assert_eq!(rendered, render(&mk_config()).expect("again"));
    }

    /// K3s' API server reaches kubelets the way the `kubernetes` distribution's does: through
    /// the agent's egress selector (K3s' own tunnel is off), by address.
    #[test]
    fn k3s_dials_kubelets_through_the_agents_egress_selector() {
        let config = mk_config();
        let mut spec = flags::spec_flags(&config, &kubeconfig(), &flags::ComponentPorts::default())
            .expect("flags");
        flags::with_kubelet_egress(
            &mut spec,
            Path::new("/var/lib/nautilus/egress-selector.yaml"),
        )
        .expect("egress");
        let rendered = render_config(&config, &spec).expect("renders");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&rendered).expect("yaml");
        assert_eq!(yaml["egress-selector-mode"], "disabled");
        let implied = implied_apiserver_flags(&rendered).expect("implied");
        let get = |name: &str| {
            implied
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("egress-selector-config-file"),
            Some("/var/lib/nautilus/egress-selector.yaml")
        );
        assert_eq!(
            get("kubelet-preferred-address-types"),
            Some("InternalIP,ExternalIP")
        );
        assert_eq!(
            get("kubelet-certificate-authority"),
            Some("/var/lib/rancher/k3s/server/tls/server-ca.crt"),
            "kubelet serving certificates are verified"
        );
    }

    #[test]
    fn debug_text_tls12_without_suites() {
        let mut config = mk_config();
        let cp = &mut config.control_plane;
        cp.log_level = "debug".into();
        cp.log_format = "text".into();
        cp.tls_min_version = "VersionTLS12".into();
        cp.cipher_suites.clear();
        cp.encrypt_secrets = false;
        config.auth.stake_cache_ttl_seconds = 5;
        let rendered = render(&config).expect("renders");
        for needle in [
            "debug: true",
            "secrets-encryption: false",
            "- v=4",
            "- logging-format=text",
            "- tls-min-version=VersionTLS12",
            "authentication-token-webhook-cache-ttl=5s",
        ] {
            assert!(rendered.contains(needle), "{needle} missing in\n{rendered}");
        }
        assert!(!rendered.contains("tls-cipher-suites"));
    }

    #[test]
    fn every_control_plane_field_reaches_k3s() {
        let config = mk_config();
        let rendered = render(&config).expect("renders");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&rendered).expect("valid yaml");
        // Destructure so a new field fails to compile here until it is rendered and checked.
        let ControlPlaneConfig {
            distribution: _,
            bind_address,
            https_port,
            cluster_cidr,
            service_cidr,
            cluster_dns,
            data_dir,
            encrypt_secrets,
            tls_min_version,
            cipher_suites,
            log_level: _,
            log_format,
            tls_sans,
            advertise_address,
        } = &config.control_plane;
        assert_eq!(yaml["bind-address"].as_str(), Some(bind_address.as_str()));
        assert_eq!(
            yaml["https-listen-port"].as_u64(),
            Some(u64::from(*https_port))
        );
        assert_eq!(yaml["cluster-cidr"].as_str(), Some(cluster_cidr.as_str()));
        assert_eq!(yaml["service-cidr"].as_str(), Some(service_cidr.as_str()));
        assert_eq!(yaml["cluster-dns"].as_str(), Some(cluster_dns.as_str()));
        assert_eq!(yaml["data-dir"].as_str(), Some(data_dir.as_str()));
        assert_eq!(yaml["secrets-encryption"].as_bool(), Some(*encrypt_secrets));
        let sans: Vec<&str> = yaml["tls-san"]
            .as_sequence()
            .expect("tls-san")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        let advertise_address = advertise_address.as_deref().expect("set in mk_config");
        let expected: Vec<&str> = tls_sans
            .iter()
            .map(String::as_str)
            .chain([advertise_address])
            .collect();
        assert_eq!(
            sans, expected,
            "K3s issues its certificate for the Service's names and the advertised address"
        );
        assert_eq!(yaml["advertise-address"].as_str(), Some(advertise_address));
        for component in [
            "kube-apiserver-arg",
            "kube-scheduler-arg",
            "kube-controller-manager-arg",
        ] {
            let args: Vec<&str> = yaml[component]
                .as_sequence()
                .expect("args")
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            assert!(args.contains(&format!("tls-min-version={tls_min_version}").as_str()));
            assert!(
                args.contains(&format!("tls-cipher-suites={}", cipher_suites.join(",")).as_str())
            );
            assert!(args.contains(&"v=2"), "log level info is v=2");
            assert!(args.contains(&format!("logging-format={log_format}").as_str()));
        }
        assert_eq!(yaml["disable-agent"].as_bool(), Some(true));
    }

    #[test]
    fn invalid_values_are_errors() {
        type Mutate = fn(&mut ControlPlaneConfig);
        let cases: [(Mutate, &str); 8] = [
            (|c| c.tls_min_version = "TLS1.2".into(), "tls min version"),
            (
                |c| c.tls_min_version = "VersionTLS10".into(),
                "tls min version",
            ),
            (
                |c| c.cipher_suites = vec!["TLS_FAKE".into()],
                "cipher suite",
            ),
            (|c| c.log_level = "verbose".into(), "log level"),
            (|c| c.log_format = "xml".into(), "log format"),
            (|c| c.data_dir = "/var/lib/k3s data".into(), "dataDir"),
            (|c| c.cluster_cidr = String::new(), "clusterCIDR"),
            (|c| c.tls_sans = vec!["a b.svc".into()], "tlsSANs"),
        ];
        for (mutate, needle) in cases {
            let mut config = mk_config();
            mutate(&mut config.control_plane);
            let err = render(&config).expect_err("refused");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn ca_files_land_where_k3s_looks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let material = BootMaterial::generate(&mk_config()).expect("material");
        write_ca_files(dir.path(), &material).expect("written");
        for name in CA_FILES {
            let path = dir.path().join("server/tls").join(name);
            let text = std::fs::read_to_string(&path).expect(name);
            assert!(text.starts_with("-----BEGIN"), "{name}");
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&path).expect("meta").permissions(),
            );
            if name.ends_with(".key") {
                assert_eq!(mode & 0o077, 0, "{name} is private");
                // SEC1, as K3s' custom-CA script makes them and as kube-apiserver's
                // --service-account-key-file requires for EC keys.
                assert!(
                    text.starts_with("-----BEGIN EC PRIVATE KEY-----\n"),
                    "{name}: {}",
                    text.lines().next().unwrap_or_default()
                );
            }
        }
        let server_ca =
            std::fs::read_to_string(dir.path().join("server/tls/server-ca.crt")).expect("ca");
        assert_eq!(server_ca, material.serving_ca.cert_pem);
    }
}
