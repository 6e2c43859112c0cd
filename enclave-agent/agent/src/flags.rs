//! The one source of the control plane's component flags, whichever distribution runs them.
//!
//! [`SpecFlags`] holds what the boot configuration decides for each Kubernetes component: the
//! token webhook (config file, cache TTL, `authentication.k8s.io/v1`), TLS policy, log
//! verbosity and format, and the scheduler's and controller manager's secure ports. The `k3s`
//! distribution renders them as the `kube-*-arg` lists of its config file ([`crate::k3s`]); the
//! `kubernetes` distribution appends them to the flags K3s would have set itself
//! ([`crate::kubernetes`]). Both apply them last, so they win over any base flag of the same
//! name, exactly as K3s' extra arguments do.

use std::path::Path;
use std::time::Duration;

use nautilus_protocol::wire::{self, ControlPlaneConfig, EnclaveConfig};

/// Why the boot configuration does not give valid component flags.
#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    /// `distribution` is neither `k3s` nor `kubernetes`.
    #[error("invalid distribution {0:?}: expected k3s or kubernetes")]
    Distribution(String),
    /// `tlsMinVersion` is not a version the components understand.
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
}

/// Which control plane runs in the enclave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// One `k3s server` process with its embedded components and the kine datastore.
    K3s,
    /// etcd, kube-apiserver, kube-scheduler and kube-controller-manager as separate processes
    /// started by the agent.
    Kubernetes,
}

impl Distribution {
    /// The distribution a configuration names.
    pub fn of(config: &ControlPlaneConfig) -> Result<Self, FlagsError> {
        match config.distribution.as_str() {
            "k3s" => Ok(Self::K3s),
            "kubernetes" => Ok(Self::Kubernetes),
            other => Err(FlagsError::Distribution(other.to_owned())),
        }
    }
}

/// Ports on 127.0.0.1 that the components listen on besides the API server's (which comes
/// from the configuration). The agent takes them from its flags so that several development
/// control planes can run side by side on one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComponentPorts {
    /// kube-scheduler's secure port (10259).
    pub scheduler: u16,
    /// kube-controller-manager's secure port (10257).
    pub controller_manager: u16,
    /// etcd's client port (2379; `kubernetes` only).
    pub etcd_client: u16,
    /// etcd's peer port (2380; `kubernetes` only).
    pub etcd_peer: u16,
}

/// Default kube-scheduler secure port.
pub const SCHEDULER_PORT: u16 = 10259;
/// Default kube-controller-manager secure port.
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;
/// Default etcd client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// Default etcd peer port.
pub const ETCD_PEER_PORT: u16 = 2380;

impl Default for ComponentPorts {
    fn default() -> Self {
        Self {
            scheduler: SCHEDULER_PORT,
            controller_manager: CONTROLLER_MANAGER_PORT,
            etcd_client: ETCD_CLIENT_PORT,
            etcd_peer: ETCD_PEER_PORT,
        }
    }
}

/// Flags as `(name, value)` pairs, without the leading `--`, in a fixed order.
pub type Flags = Vec<(String, String)>;

/// The flags the boot configuration decides, per component; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecFlags {
    /// kube-apiserver.
    pub apiserver: Flags,
    /// kube-scheduler.
    pub scheduler: Flags,
    /// kube-controller-manager.
    pub controller_manager: Flags,
}

/// Most names `tlsSANs` may add to the API server's certificate (the operator renders two).
pub const MAX_TLS_SANS: usize = 16;

/// klog verbosity for a log level.
pub fn verbosity(level: &str) -> Result<u8, FlagsError> {
    Ok(match level {
        "debug" => 4,
        "info" => 2,
        "warn" => 1,
        "error" => 0,
        other => return Err(FlagsError::LogLevel(other.to_owned())),
    })
}

/// Refuse a value that is empty or would need quoting in a flag or a comma-separated list.
pub fn check_flag_value(field: &'static str, value: &str) -> Result<(), FlagsError> {
    if value.is_empty() {
        return Err(FlagsError::Value {
            field,
            value: value.to_owned(),
            reason: "must not be empty",
        });
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '=')
    {
        return Err(FlagsError::Value {
            field,
            value: value.to_owned(),
            reason: "must not contain whitespace, control characters, ',' or '='",
        });
    }
    Ok(())
}

/// The webhook's answer cache in kube-apiserver: no longer than the stake cache, at most 30 s,
/// so a lost stake stops granting access quickly.
pub fn webhook_cache_ttl(stake_cache_ttl_seconds: u32) -> Duration {
    Duration::from_secs(u64::from(stake_cache_ttl_seconds.min(30)))
}

/// Validate every control-plane value of `config` that reaches a flag.
pub fn validate(config: &ControlPlaneConfig) -> Result<(), FlagsError> {
    Distribution::of(config)?;
    if !matches!(
        config.tls_min_version.as_str(),
        "VersionTLS12" | "VersionTLS13"
    ) {
        return Err(FlagsError::TlsVersion(config.tls_min_version.clone()));
    }
    for suite in &config.cipher_suites {
        if !wire::CIPHER_SUITES.contains(&suite.as_str()) {
            return Err(FlagsError::CipherSuite(suite.clone()));
        }
    }
    verbosity(&config.log_level)?;
    if !matches!(config.log_format.as_str(), "text" | "json") {
        return Err(FlagsError::LogFormat(config.log_format.clone()));
    }
    for (field, value) in [
        ("bindAddress", config.bind_address.as_str()),
        ("clusterCIDR", &config.cluster_cidr),
        ("serviceCIDR", &config.service_cidr),
        ("clusterDNS", &config.cluster_dns),
        ("dataDir", &config.data_dir),
    ] {
        check_flag_value(field, value)?;
    }
    if config.tls_sans.len() > MAX_TLS_SANS {
        return Err(FlagsError::Value {
            field: "tlsSANs",
            value: format!("{} names", config.tls_sans.len()),
            reason: "too many names",
        });
    }
    for name in &config.tls_sans {
        check_flag_value("tlsSANs", name)?;
    }
    if let Some(address) = &config.advertise_address {
        let ip = address
            .parse::<std::net::IpAddr>()
            .map_err(|_| FlagsError::Value {
                field: "advertiseAddress",
                value: address.clone(),
                reason: "not an IP address",
            })?;
        if ip.is_loopback() || ip.is_unspecified() {
            return Err(FlagsError::Value {
                field: "advertiseAddress",
                value: address.clone(),
                reason: "a loopback or unspecified address is reachable by no pod",
            });
        }
    }
    Ok(())
}

fn flag(name: &str, value: impl ToString) -> (String, String) {
    (name.to_owned(), value.to_string())
}

/// The flags `config` decides, with the token webhook's kubeconfig at `webhook_kubeconfig`
/// and the components' local ports `ports`. Deterministic.
pub fn spec_flags(
    config: &EnclaveConfig,
    webhook_kubeconfig: &Path,
    ports: &ComponentPorts,
) -> Result<SpecFlags, FlagsError> {
    let cp = &config.control_plane;
    validate(cp)?;
    let kubeconfig = webhook_kubeconfig.display().to_string();
    check_flag_value("webhook kubeconfig path", &kubeconfig)?;

    // Every Kubernetes component: TLS policy and logging.
    let mut common = vec![flag("tls-min-version", &cp.tls_min_version)];
    if !cp.cipher_suites.is_empty() {
        common.push(flag("tls-cipher-suites", cp.cipher_suites.join(",")));
    }
    common.push(flag("v", verbosity(&cp.log_level)?));
    common.push(flag("logging-format", &cp.log_format));

    let ttl = webhook_cache_ttl(config.auth.stake_cache_ttl_seconds).as_secs();
    let mut apiserver = vec![
        flag("authentication-token-webhook-config-file", &kubeconfig),
        flag("authentication-token-webhook-cache-ttl", format!("{ttl}s")),
        // Without it kube-apiserver sends authentication.k8s.io/v1beta1 reviews, which the
        // webhook (v1 only) cannot answer: every seal token would get 401.
        flag("authentication-token-webhook-version", "v1"),
        // Kubelets are dialled by address through the sidecar's CONNECT proxy
        // (`crate::kubelet_egress`): no name for the host to resolve, and one the sidecar's
        // kubelet rule accepts (IP literals only).
        flag("kubelet-preferred-address-types", "InternalIP,ExternalIP"),
    ];
    apiserver.extend(common.iter().cloned());

    // One scheduler and one controller manager per enclave: nothing to elect, and a restarted
    // component would otherwise idle until the lease its predecessor held expires.
    let local = |port: u16| {
        let mut flags = vec![
            flag("secure-port", port),
            flag("bind-address", "127.0.0.1"),
            flag("leader-elect", "false"),
        ];
        flags.extend(common.iter().cloned());
        flags
    };
    Ok(SpecFlags {
        apiserver,
        scheduler: local(ports.scheduler),
        controller_manager: local(ports.controller_manager),
    })
}

/// kube-apiserver's flag for the egress selector configuration at `config`
/// ([`crate::kubelet_egress`]), added to [`SpecFlags::apiserver`] when the agent has an egress
/// proxy (with none, development, the API server dials kubelets itself).
pub fn with_kubelet_egress(spec: &mut SpecFlags, config: &Path) -> Result<(), FlagsError> {
    let path = config.display().to_string();
    check_flag_value("egress selector config path", &path)?;
    spec.apiserver
        .push(flag("egress-selector-config-file", path));
    Ok(())
}

/// `name=value` for each flag (K3s' `kube-*-arg` lists).
pub fn as_k3s_args(flags: &Flags) -> Vec<String> {
    flags.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// `--name=value` for each flag (a command line).
pub fn as_argv(flags: &Flags) -> Vec<String> {
    flags.iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

/// `base` with `extra` applied over it the way K3s merges extra arguments: a flag named in
/// `extra` replaces the base flag of that name, in the base flag's position; new ones follow.
pub fn merge(base: &Flags, extra: &Flags) -> Flags {
    let mut merged = base.clone();
    for (name, value) in extra {
        match merged.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1.clone_from(value),
            None => merged.push((name.clone(), value.clone())),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_flags_win_in_place() {
        let base = vec![flag("a", 1), flag("b", 2)];
        let extra = vec![flag("b", 3), flag("c", 4)];
        assert_eq!(
            merge(&base, &extra),
            vec![flag("a", 1), flag("b", 3), flag("c", 4)]
        );
        assert_eq!(as_argv(&extra), vec!["--b=3", "--c=4"]);
        assert_eq!(as_k3s_args(&extra), vec!["b=3", "c=4"]);
    }

    #[test]
    fn distributions_parse() {
        let mut cp = crate::k3s::tests::mk_config().control_plane;
        assert_eq!(Distribution::of(&cp).expect("k3s"), Distribution::K3s);
        cp.distribution = "kubernetes".into();
        assert_eq!(
            Distribution::of(&cp).expect("kubernetes"),
            Distribution::Kubernetes
        );
        cp.distribution = "rke2".into();
        assert!(
            Distribution::of(&cp)
                .expect_err("refused")
                .to_string()
                .contains("rke2")
        );
    }
}
