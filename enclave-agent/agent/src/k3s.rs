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
use std::time::Duration;

use nautilus_protocol::wire::{ControlPlaneConfig, EnclaveConfig};
use serde_yaml::{Mapping, Value};

use crate::boot::{BootMaterial, CertificateAuthority};

/// Why the K3s configuration could not be rendered or written.
#[derive(Debug, thiserror::Error)]
pub enum K3sError {
    /// `tlsMinVersion` is not a version K3s understands.
    #[error("invalid tls min version {0:?}: expected VersionTLS12 or VersionTLS13")]
    TlsVersion(String),
    /// A cipher suite is not a Go TLS cipher-suite name.
    #[error(
        "invalid tls cipher suite {0:?}: expected a Go cipher-suite name such as TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
    )]
    CipherSuite(String),
    /// `logLevel` is not one of the four levels.
    #[error("invalid log level {0:?}: expected debug, info, warn or error")]
    LogLevel(String),
    /// `logFormat` is not text or json.
    #[error("invalid log format {0:?}: expected text or json")]
    LogFormat(String),
    /// A value would need a character that does not belong in a flag value.
    #[error("invalid {field} {value:?}: {reason}")]
    Value {
        /// The field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Serializing the YAML failed.
    #[error("rendering the k3s config")]
    Yaml(#[from] serde_yaml::Error),
    /// Writing a file failed.
    #[error("writing {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Go's cipher-suite names that K3s' components accept (`crypto/tls` secure and insecure lists).
const CIPHER_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
];

/// Add-ons a control-plane-only K3s does not run.
const DISABLED_ADDONS: [&str; 4] = ["traefik", "servicelb", "local-storage", "metrics-server"];

/// Where the agent's files for K3s live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K3sPaths {
    /// The `--config` file.
    pub config_file: PathBuf,
    /// The kubeconfig of the token webhook.
    pub webhook_kubeconfig: PathBuf,
}

/// klog verbosity for a log level.
fn verbosity(level: &str) -> Result<u8, K3sError> {
    Ok(match level {
        "debug" => 4,
        "info" => 2,
        "warn" => 1,
        "error" => 0,
        other => return Err(K3sError::LogLevel(other.to_owned())),
    })
}

fn check_flag_value(field: &'static str, value: &str) -> Result<(), K3sError> {
    if value.is_empty() {
        return Err(K3sError::Value {
            field,
            value: value.to_owned(),
            reason: "must not be empty",
        });
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '=')
    {
        return Err(K3sError::Value {
            field,
            value: value.to_owned(),
            reason: "must not contain whitespace, control characters, ',' or '='",
        });
    }
    Ok(())
}

fn seq(items: impl IntoIterator<Item = String>) -> Value {
    Value::Sequence(items.into_iter().map(Value::String).collect())
}

/// The webhook's answer cache in kube-apiserver: no longer than the stake cache, at most 30 s,
/// so a lost stake stops granting access quickly.
pub fn webhook_cache_ttl(stake_cache_ttl_seconds: u32) -> Duration {
    Duration::from_secs(u64::from(stake_cache_ttl_seconds.min(30)))
}

/// Render the K3s `--config` YAML for `config`, with the token webhook's kubeconfig at
/// `webhook_kubeconfig`. Deterministic: the same input gives the same bytes.
pub fn render_config(
    config: &EnclaveConfig,
    webhook_kubeconfig: &Path,
) -> Result<String, K3sError> {
    let cp: &ControlPlaneConfig = &config.control_plane;
    let tls_min = match cp.tls_min_version.as_str() {
        v @ ("VersionTLS12" | "VersionTLS13") => v.to_owned(),
        other => return Err(K3sError::TlsVersion(other.to_owned())),
    };
    for suite in &cp.cipher_suites {
        if !CIPHER_SUITES.contains(&suite.as_str()) {
            return Err(K3sError::CipherSuite(suite.clone()));
        }
    }
    let v = verbosity(&cp.log_level)?;
    let log_format = match cp.log_format.as_str() {
        f @ ("text" | "json") => f.to_owned(),
        other => return Err(K3sError::LogFormat(other.to_owned())),
    };
    for (field, value) in [
        ("bindAddress", cp.bind_address.as_str()),
        ("clusterCIDR", &cp.cluster_cidr),
        ("serviceCIDR", &cp.service_cidr),
        ("clusterDNS", &cp.cluster_dns),
        ("dataDir", &cp.data_dir),
    ] {
        check_flag_value(field, value)?;
    }
    let kubeconfig = webhook_kubeconfig.display().to_string();
    check_flag_value("webhook kubeconfig path", &kubeconfig)?;

    // Arguments every Kubernetes component gets: TLS policy and logging.
    let mut common = vec![format!("tls-min-version={tls_min}")];
    if !cp.cipher_suites.is_empty() {
        common.push(format!("tls-cipher-suites={}", cp.cipher_suites.join(",")));
    }
    common.push(format!("v={v}"));
    common.push(format!("logging-format={log_format}"));

    let ttl = webhook_cache_ttl(config.auth.stake_cache_ttl_seconds).as_secs();
    let mut apiserver = vec![
        format!("authentication-token-webhook-config-file={kubeconfig}"),
        format!("authentication-token-webhook-cache-ttl={ttl}s"),
    ];
    apiserver.extend(common.iter().cloned());

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
    put("secrets-encryption", Value::Bool(cp.encrypt_secrets));
    put("debug", Value::Bool(cp.log_level == "debug"));
    put("disable-agent", Value::Bool(true));
    put("disable-cloud-controller", Value::Bool(true));
    put("disable-network-policy", Value::Bool(true));
    put(
        "disable",
        seq(DISABLED_ADDONS.iter().map(|s| (*s).to_owned())),
    );
    put("kube-apiserver-arg", seq(apiserver));
    put("kube-scheduler-arg", seq(common.iter().cloned()));
    put("kube-controller-manager-arg", seq(common.iter().cloned()));
    Ok(serde_yaml::to_string(&Value::Mapping(map))?)
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
/// default reader tier's `nautilus:readers` gets `view`, and `nautilus:editors` gets `edit`.
/// `system:masters` (admin tier) and `system:nodes` (worker tier) are built into Kubernetes;
/// any other tier group needs a binding its users create with an admin token.
pub const GROUP_BINDINGS: [(&str, &str); 2] =
    [("nautilus:readers", "view"), ("nautilus:editors", "edit")];

/// Where K3s' deploy controller applies manifests from at start and on change, relative to the
/// data directory ("auto-deploying manifests").
pub const RBAC_MANIFEST: &str = "server/manifests/nautilus-rbac.yaml";

/// ClusterRoleBindings of [`GROUP_BINDINGS`], as the YAML K3s applies from
/// [`RBAC_MANIFEST`].
pub fn rbac_manifest() -> Result<String, K3sError> {
    let mut docs = Vec::new();
    for (group, role) in GROUP_BINDINGS {
        let name = format!("nautilus-{}", group.trim_start_matches("nautilus:"));
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/managed-by": "nautilus-agent"},
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}],
        });
        docs.push(serde_yaml::to_string(&binding)?);
    }
    Ok(docs.join("---\n"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn reader_and_editor_groups_are_bound_to_view_and_edit() {
        let text = rbac_manifest().expect("manifest");
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 2);
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
                ("nautilus:editors".to_owned(), "edit".to_owned())
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
                }],
            },
            health: HealthConfig {
                probe_interval_seconds: 10,
                startup_timeout_seconds: 300,
            },
        }
    }

    const GOLDEN: &str = "\
bind-address: 127.0.0.1
https-listen-port: 6443
cluster-cidr: 10.42.0.0/16
service-cidr: 10.43.0.0/16
cluster-dns: 10.43.0.10
data-dir: /var/lib/rancher/k3s
secrets-encryption: true
debug: false
disable-agent: true
disable-cloud-controller: true
disable-network-policy: true
disable:
- traefik
- servicelb
- local-storage
- metrics-server
kube-apiserver-arg:
- authentication-token-webhook-config-file=/var/lib/nautilus/webhook-kubeconfig.yaml
- authentication-token-webhook-cache-ttl=30s
- tls-min-version=VersionTLS13
- tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
- v=2
- logging-format=json
kube-scheduler-arg:
- tls-min-version=VersionTLS13
- tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
- v=2
- logging-format=json
kube-controller-manager-arg:
- tls-min-version=VersionTLS13
- tls-cipher-suites=TLS_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
- v=2
- logging-format=json
";

    fn kubeconfig() -> PathBuf {
        PathBuf::from("/var/lib/nautilus/webhook-kubeconfig.yaml")
    }

    #[test]
    fn renders_the_golden_config() {
        let rendered = render_config(&mk_config(), &kubeconfig()).expect("renders");
        pretty_assertions::assert_eq!(rendered, GOLDEN);
        // Deterministic.
        assert_eq!(
            rendered,
            render_config(&mk_config(), &kubeconfig()).expect("again")
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
        let rendered = render_config(&config, &kubeconfig()).expect("renders");
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
        let rendered = render_config(&config, &kubeconfig()).expect("renders");
        let yaml: serde_yaml::Value = serde_yaml::from_str(&rendered).expect("valid yaml");
        // Destructure so a new field fails to compile here until it is rendered and checked.
        let ControlPlaneConfig {
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
        let cases: [(Mutate, &str); 7] = [
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
        ];
        for (mutate, needle) in cases {
            let mut config = mk_config();
            mutate(&mut config.control_plane);
            let err = render_config(&config, &kubeconfig()).expect_err("refused");
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
            }
        }
        let server_ca =
            std::fs::read_to_string(dir.path().join("server/tls/server-ca.crt")).expect("ca");
        assert_eq!(server_ca, material.serving_ca.cert_pem);
    }
}
