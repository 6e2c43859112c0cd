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
    if let Some(memory_mib) = config.memory_mib {
        budget(memory_mib)?;
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

/// Which flags the `kubernetes` distribution runs with beyond what its components need to run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The trims of [`tuning`]: an enclave control plane's weight (the default, what ships).
    #[default]
    Lean,
    /// Only what the components need to run, with the components' own defaults otherwise: the
    /// benchmark's comparison (`nautilus-plane-bench`), never an enclave's.
    Stock,
}

/// What the enclave's memory is divided into, in MiB ([`budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// The enclave's memory (`spec.enclave.memoryMiB`).
    pub total: u32,
    /// Kernel and the image's root filesystem, which lives in enclave memory: the Kubernetes
    /// v1.36 binaries and etcd alone are about 310 MiB.
    pub image: u32,
    /// The agent (about 20 MiB resident) and headroom for the page cache of what it writes.
    pub agent: u32,
    /// etcd's Go memory limit.
    pub etcd: u32,
    /// etcd's backend quota (`--quota-backend-bytes`): its database is a file in enclave
    /// memory too.
    pub etcd_quota: u32,
    /// kube-apiserver's Go memory limit.
    pub apiserver: u32,
    /// kube-controller-manager's Go memory limit.
    pub controller_manager: u32,
    /// kube-scheduler's Go memory limit.
    pub scheduler: u32,
}

/// MiB of enclave memory taken by the kernel and the image before any process runs.
pub const IMAGE_RESERVE_MIB: u32 = 384;
/// MiB kept for the agent.
pub const AGENT_RESERVE_MIB: u32 = 64;
/// The least the `kubernetes` distribution's components need between them (measured idle about
/// 250 MiB with the lean profile, with room for a workload cluster's objects and the
/// database), so the least `memoryMiB` is [`MIN_MEMORY_MIB`].
pub const MIN_COMPONENTS_MIB: u32 = 576;
/// The smallest `memoryMiB` that holds the `kubernetes` distribution: the CRD refuses less
/// at admission, and the agent refuses to boot a configuration with less.
pub const MIN_MEMORY_MIB: u32 = IMAGE_RESERVE_MIB + AGENT_RESERVE_MIB + MIN_COMPONENTS_MIB;

/// Divide `memory_mib` between the components: what is left after the image and the agent goes
/// 45 % to kube-apiserver, 25 % to etcd (its Go heap and, as much again, its database),
/// 18 % to the controller manager and 12 % to the scheduler. Refused below [`MIN_MEMORY_MIB`].
pub fn budget(memory_mib: u32) -> Result<MemoryBudget, FlagsError> {
    if memory_mib < MIN_MEMORY_MIB {
        return Err(FlagsError::Value {
            field: "memoryMiB",
            value: memory_mib.to_string(),
            reason: "too little memory for the kubernetes distribution's control plane (see MIN_MEMORY_MIB)",
        });
    }
    let left = memory_mib - IMAGE_RESERVE_MIB - AGENT_RESERVE_MIB;
    let share = |percent: u32| left / 100 * percent + left % 100 * percent / 100;
    let etcd_total = share(25);
    Ok(MemoryBudget {
        total: memory_mib,
        image: IMAGE_RESERVE_MIB,
        agent: AGENT_RESERVE_MIB,
        etcd: etcd_total / 2,
        etcd_quota: etcd_total - etcd_total / 2,
        apiserver: share(45),
        controller_manager: share(18),
        scheduler: share(12),
    })
}

/// Environment variables per process, as `(name, value)` pairs.
pub type Env = Vec<(String, String)>;

/// What a [`Profile`] adds to each `kubernetes` component: flags applied after the base flags
/// and before [`SpecFlags`] (the configuration's values still win), and the Go runtime's
/// environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tuning {
    /// etcd's flags.
    pub etcd: Flags,
    /// kube-apiserver's flags.
    pub apiserver: Flags,
    /// kube-scheduler's flags.
    pub scheduler: Flags,
    /// kube-controller-manager's flags.
    pub controller_manager: Flags,
    /// etcd's environment.
    pub etcd_env: Env,
    /// kube-apiserver's environment.
    pub apiserver_env: Env,
    /// kube-scheduler's environment.
    pub scheduler_env: Env,
    /// kube-controller-manager's environment.
    pub controller_manager_env: Env,
}

/// Controllers an enclave's control plane does not run: the cloud's (no cloud provider runs
/// in an enclave), the storage version migrator (no migrations are driven from inside), and
/// alpha-era controllers of APIs the cluster does not serve by default. Everything a workload
/// cluster uses stays: workloads, garbage collection, namespaces, service accounts and their
/// tokens, endpoints and slices, node lifecycle, node IPAM (a CNI such as flannel reads the
/// node's `podCIDR`), CSR signing and cleaning, volumes, quotas, HPA, disruption budgets.
pub const DISABLED_CONTROLLERS: &[&str] = &[
    "cloud-node-lifecycle-controller",
    "node-route-controller",
    "service-lb-controller",
    "storage-version-migrator-controller",
    "storageversion-garbage-collector-controller",
    "kube-apiserver-serving-clustertrustbundle-publisher-controller",
    "podcertificaterequest-cleaner-controller",
    "resourcepoolstatusrequest-controller",
    "device-taint-eviction-controller",
];

/// GOGC of kube-apiserver and kube-controller-manager in the lean profile, the two large heaps:
/// the heap may grow half over the live data between collections instead of as much again
/// (Go's default of 100). etcd and the scheduler keep Go's default: their heaps are small, and
/// more collections would cost CPU for little memory.
pub const LEAN_GOGC: u32 = 50;

/// The lean profile's trims for `config`; the stock profile adds nothing. The memory limits
/// come from [`budget`] when the configuration carries `memoryMiB`.
pub fn tuning(config: &ControlPlaneConfig, profile: Profile) -> Result<Tuning, FlagsError> {
    if profile == Profile::Stock {
        return Ok(Tuning::default());
    }
    let budget = config.memory_mib.map(budget).transpose()?;
    let go = |limit: Option<u32>, gogc: Option<u32>| -> Env {
        let mut env: Env = gogc
            .map(|g| ("GOGC".to_owned(), g.to_string()))
            .into_iter()
            .collect();
        if let Some(mib) = limit {
            env.push(("GOMEMLIMIT".to_owned(), format!("{mib}MiB")));
        }
        env
    };
    let mut etcd = vec![
        // The raft log kept in memory between snapshots: 100 000 entries by default in etcd
        // 3.4, which a write-heavy minute keeps resident.
        flag("snapshot-count", 10_000),
    ];
    if let Some(b) = &budget {
        etcd.push(flag(
            "quota-backend-bytes",
            u64::from(b.etcd_quota) * 1024 * 1024,
        ));
    }
    let controllers = std::iter::once("*".to_owned())
        .chain(DISABLED_CONTROLLERS.iter().map(|c| format!("-{c}")))
        .collect::<Vec<_>>()
        .join(",");
    Ok(Tuning {
        etcd,
        apiserver: vec![
            // One tenant per control plane: API Priority and Fairness' queues, its
            // configuration objects (written at every start, a post-start hook /readyz waits
            // for) and their API are weight without a use; the max-in-flight limits (400 and
            // 200 at once) bound the load instead.
            flag("enable-priority-and-fairness", "false"),
            flag("runtime-config", "flowcontrol.apiserver.k8s.io/v1=false"),
            // No watch cache: every resource's cache (all its objects and a window of history)
            // is kept in kube-apiserver's heap and filled by a list at each start; with one
            // cluster's few watchers etcd serves lists and watches itself.
            flag("watch-cache", "false"),
        ],
        scheduler: Vec::new(),
        controller_manager: vec![flag("controllers", controllers)],
        etcd_env: go(budget.map(|b| b.etcd), None),
        apiserver_env: go(budget.map(|b| b.apiserver), Some(LEAN_GOGC)),
        scheduler_env: go(budget.map(|b| b.scheduler), None),
        controller_manager_env: go(budget.map(|b| b.controller_manager), Some(LEAN_GOGC)),
    })
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
    fn the_memory_budget_splits_what_the_image_and_agent_leave() {
        let b = budget(4096).expect("the CRD's default");
        assert_eq!(b.image + b.agent, 448);
        let components = b.etcd + b.etcd_quota + b.apiserver + b.controller_manager + b.scheduler;
        assert!(components <= 4096 - 448, "{b:?}");
        assert!(components >= 4096 - 448 - 4, "rounding only: {b:?}");
        assert!(b.apiserver > b.controller_manager && b.controller_manager > b.scheduler);
        let least = budget(MIN_MEMORY_MIB).expect("the least");
        assert!(least.apiserver >= 256, "{least:?}");
        let refused = budget(MIN_MEMORY_MIB - 1).expect_err("too little");
        assert!(refused.to_string().contains("memoryMiB"), "{refused}");
        // The CRD refuses the same at admission.
        assert_eq!(MIN_MEMORY_MIB, nautilus_crds::MIN_KUBERNETES_MEMORY_MIB);
        // And the agent refuses a configuration with less before anything runs.
        let mut cp = crate::k3s::tests::mk_config().control_plane;
        cp.distribution = "kubernetes".into();
        cp.memory_mib = Some(512);
        assert!(validate(&cp).is_err());
        cp.memory_mib = Some(MIN_MEMORY_MIB);
        validate(&cp).expect("enough");
    }

    /// The rendered sets of both profiles: stock adds nothing to what the components need to
    /// run; lean adds its trims and Go limits, and names no flag the base or spec sets decide
    /// (so it never overrides a flag the components need or the configuration chose).
    #[test]
    fn lean_adds_trims_and_limits_stock_adds_nothing() {
        let mut config = crate::k3s::tests::mk_config();
        config.control_plane.distribution = "kubernetes".into();
        assert_eq!(
            tuning(&config.control_plane, Profile::Stock).expect("stock"),
            Tuning::default()
        );
        config.control_plane.memory_mib = Some(4096);
        let lean = tuning(&config.control_plane, Profile::Lean).expect("lean");
        let get = |flags: &Flags, name: &str| {
            flags
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let b = budget(4096).expect("budget");
        assert_eq!(
            get(&lean.etcd, "quota-backend-bytes"),
            Some((u64::from(b.etcd_quota) * 1024 * 1024).to_string())
        );
        assert_eq!(get(&lean.etcd, "snapshot-count").as_deref(), Some("10000"));
        let controllers = get(&lean.controller_manager, "controllers").expect("controllers");
        assert!(controllers.starts_with("*,-"), "{controllers}");
        let disabled: Vec<&str> = controllers
            .split(',')
            .filter_map(|c| c.strip_prefix('-'))
            .collect();
        for kept in [
            "node-ipam-controller",
            "garbage-collector-controller",
            "certificatesigningrequest-signing-controller",
            "clusterrole-aggregation-controller",
        ] {
            assert!(!disabled.contains(&kept), "{kept} runs");
        }
        assert!(disabled.contains(&"cloud-node-lifecycle-controller"));
        for (env, mib, gogc) in [
            (&lean.apiserver_env, b.apiserver, true),
            (&lean.etcd_env, b.etcd, false),
            (&lean.scheduler_env, b.scheduler, false),
            (&lean.controller_manager_env, b.controller_manager, true),
        ] {
            assert!(env.contains(&("GOMEMLIMIT".to_owned(), format!("{mib}MiB"))));
            assert_eq!(
                env.contains(&("GOGC".to_owned(), LEAN_GOGC.to_string())),
                gogc,
                "{env:?}"
            );
        }
        // Without memoryMiB (a configuration from before it): no limits, the trims only.
        config.control_plane.memory_mib = None;
        let unbudgeted = tuning(&config.control_plane, Profile::Lean).expect("lean");
        assert!(get(&unbudgeted.etcd, "quota-backend-bytes").is_none());
        assert!(
            !unbudgeted
                .apiserver_env
                .iter()
                .any(|(k, _)| k == "GOMEMLIMIT")
        );

        let dir = std::path::Path::new("/w");
        let spec = spec_flags(
            &config,
            &dir.join("webhook.yaml"),
            &ComponentPorts::default(),
        )
        .expect("spec");
        let layout = crate::kubernetes::Layout::new(dir);
        let ports = ComponentPorts::default();
        for (base, trims) in [
            (crate::kubernetes::etcd_flags(&layout, &ports), &lean.etcd),
            (
                crate::kubernetes::apiserver_flags(&config, &spec, &layout, &ports),
                &lean.apiserver,
            ),
            (
                crate::kubernetes::scheduler_flags(&spec, &layout),
                &lean.scheduler,
            ),
            (
                crate::kubernetes::controller_manager_flags(&config, &spec, &layout),
                &lean.controller_manager,
            ),
        ] {
            for (name, _) in trims {
                assert!(
                    !base.iter().any(|(k, _)| k == name),
                    "the lean profile overrides {name}"
                );
            }
        }
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
