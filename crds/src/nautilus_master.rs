//! `NautilusMaster`: spec and status.
//!
//! Field docs are user documentation (`kubectl explain`); notes for maintainers use `//`.
//! Durations follow the Kubernetes API conventions: integers with the unit in the name
//! (`...Seconds`). Defaults live in the schema so the API server fills them in and `kubectl get -o
//! yaml` shows what is in force.

// `printcolumn(...)` repeats by design (one per column); clippy reads the repeats as duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// Regexes shared by several fields. They are anchored, as the API server requires full matches.
const HEX_48_BYTES: &str = r"^[0-9a-fA-F]{96}$";
/// A Kubernetes object UID (RFC 4122 text form).
const UID_PATTERN: &str = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// Exactly the names of `nautilus_protocol::wire::CIPHER_SUITES` (the agent refuses any other;
/// `crds/tests/schema.rs` checks that the two agree).
pub const CIPHER_SUITE_PATTERN: &str = r"^(TLS_AES_128_GCM_SHA256|TLS_AES_256_GCM_SHA384|TLS_CHACHA20_POLY1305_SHA256|TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA|TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256|TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA|TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384|TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305|TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256|TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA|TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256|TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA|TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384|TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305|TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256|TLS_RSA_WITH_AES_128_CBC_SHA|TLS_RSA_WITH_AES_128_GCM_SHA256|TLS_RSA_WITH_AES_256_CBC_SHA|TLS_RSA_WITH_AES_256_GCM_SHA384)$";
/// An absolute path without ASCII whitespace, `,` or `=`. Unicode spaces and control characters
/// (also refused by the agent in a flag value) are refused by a CEL rule on the field instead:
/// `\p{..}` classes are RE2's and Rust's but not ECMA-262's or Python's, and schema validators
/// outside the API server (`config/hack/validate.py`, editors) reject a pattern they cannot parse.
const DATA_DIR_PATTERN: &str = r"^/[^\s,=]+$";
/// The least `spec.enclave.memoryMiB` of the `kubernetes` distribution, refused below at
/// admission (a CEL rule on the spec) and by the agent (`nautilus_agent::flags::MIN_MEMORY_MIB`,
/// which a test of the agent compares with this).
pub const MIN_KUBERNETES_MEMORY_MIB: u32 = 1024;
const MOVE_STRUCT_TAG: &str =
    r"^0x[0-9a-fA-F]{1,64}::[A-Za-z_][A-Za-z0-9_]*::[A-Za-z_][A-Za-z0-9_]*(<.+>)?$";

/// Desired state of a confidential K3s control plane.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "nautilus.k3s-daas.io",
    version = "v1alpha1",
    kind = "NautilusMaster",
    plural = "nautilusmasters",
    singular = "nautilusmaster",
    shortname = "nm",
    category = "nautilus",
    namespaced,
    status = "NautilusMasterStatus",
    derive = "PartialEq",
    doc = "A K3s control plane running inside an AWS Nitro Enclave, proven by hardware attestation, whose users are admitted by their stake on the Sui chain.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Short summary of where the control plane is in its life"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the control plane is attested and serving"
    ),
    printcolumn(
        name = "Attested",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Attested\")].status",
        description = "Whether the enclave's attestation verified"
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "HTTPS endpoint of the control plane"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Snapshot",
        type_ = "integer",
        json_path = ".status.state.lastSnapshotSequence",
        priority = 1,
        description = "Sequence number of the newest sealed snapshot"
    ),
    printcolumn(
        name = "Snapshot-Time",
        type_ = "date",
        json_path = ".status.state.lastSnapshotTime",
        priority = 1,
        description = "When the newest sealed snapshot was taken"
    ),
    printcolumn(
        name = "Restored",
        type_ = "integer",
        json_path = ".status.state.restoredSequence",
        priority = 1,
        description = "Sequence number of the snapshot the running enclave restored"
    ),
    printcolumn(
        name = "PCR0",
        type_ = "string",
        json_path = ".status.attestation.pcr0Prefix",
        priority = 1,
        description = "First 16 hex characters of the attested PCR0 (enclave image measurement)"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.state) || self.controlPlane.distribution == 'kubernetes'").message("spec.state needs controlPlane.distribution kubernetes: the k3s datastore is not sealed"))]
#[x_kube(validation = Rule::new("!has(self.controlPlane) || !has(self.controlPlane.distribution) || self.controlPlane.distribution != 'kubernetes' || !has(self.enclave.memoryMiB) || self.enclave.memoryMiB >= 1024").message("the kubernetes distribution needs enclave.memoryMiB of at least 1024: the image (about 384 MiB in enclave memory), the agent and the control plane's components (see docs/architecture.md, \"Memory budget\")"))]
pub struct NautilusMasterSpec {
    /// The Nitro Enclave that runs the control plane: which image, how big, and which
    /// measurements it must prove.
    pub enclave: EnclaveSpec,

    /// Settings of the K3s control plane inside the enclave. Every setting is part of the boot
    /// configuration, whose digest the enclave binds into its attestation.
    #[serde(default)]
    pub control_plane: ControlPlaneSpec,

    /// Who may use the control plane: seal tokens signed by Sui keys, mapped to Kubernetes groups
    /// by the amount of SUI the signer has staked.
    #[serde(default)]
    pub auth: AuthSpec,

    /// How often the enclave probes its control-plane components, and how long they may take to
    /// start.
    #[serde(default)]
    pub health: HealthSpec,

    /// How attestation is refreshed and which kinds of evidence are acceptable.
    #[serde(default)]
    pub attestation: AttestationSpec,

    /// Sealed state: the control plane's datastore and PKI survive enclave restarts, sealed
    /// with an AWS KMS key that releases its data key only to an attested enclave. When unset,
    /// every enclave restart starts an empty cluster with new CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,
}

/// The enclave image, its size and its expected measurements.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnclaveSpec {
    /// Container image that carries the enclave image file (EIF), for example
    /// `registry.example.com/nautilus/enclave:v1.2.3`. Pin it by digest for reproducible
    /// measurements.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Path of the EIF inside `image`.
    #[serde(default = "default_eif_path")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/"))]
    pub eif_path: String,

    /// Number of vCPUs given to the enclave (`nitro-cli run-enclave --cpu-count`). Nitro takes
    /// whole cores, so on hyperthreaded instances this must be even.
    #[serde(default = "default_cpu_count")]
    #[schemars(range(min = 2, max = 128))]
    pub cpu_count: u32,

    /// Memory given to the enclave in MiB (`nitro-cli run-enclave --memory`). It is taken from the
    /// node's hugepages, so the pod requests at least this much of `hugepageSize`.
    #[serde(default = "default_memory_mib")]
    #[schemars(range(min = 512, max = 524288))]
    #[serde(rename = "memoryMiB")]
    pub memory_mib: u32,

    /// Fixed vsock context ID for the enclave (`--enclave-cid`). When unset, Nitro picks one and
    /// the sidecar reports it in `status.placement.enclaveCID`. CIDs 0-3 and 4294967295 are
    /// reserved.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "enclaveCID"
    )]
    #[schemars(range(min = 4, max = 4_294_967_294_u32))]
    pub enclave_cid: Option<u32>,

    /// Expected PCR0 (hash of the enclave image file), 96 hex characters as printed by
    /// `nitro-cli build-enclave`. The attestation must report exactly this value.
    #[schemars(regex(pattern = HEX_48_BYTES))]
    pub pcr0: String,

    /// Expected PCR1 (hash of the Linux kernel and boot ramfs), 96 hex characters.
    #[schemars(regex(pattern = HEX_48_BYTES))]
    pub pcr1: String,

    /// Expected PCR2 (hash of the user applications), 96 hex characters.
    #[schemars(regex(pattern = HEX_48_BYTES))]
    pub pcr2: String,

    /// Expected PCR8 (hash of the certificate that signed the EIF), 96 hex characters. Set it
    /// when the EIF is signed, to accept only images signed by your key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HEX_48_BYTES))]
    pub pcr8: Option<String>,

    /// Node labels the enclave pod must match. Defaults to the label the AWS Nitro Enclaves
    /// device plugin expects: `aws-nitro-enclaves-k8s-dp: enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the enclave pod, for Nitro nodes that are tainted for enclave workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub tolerations: Option<Vec<Toleration>>,

    /// Size of the hugepages backing enclave memory: `2Mi` or `1Gi`. It must match what the Nitro
    /// node's allocator reserved.
    #[serde(default)]
    pub hugepage_size: HugepageSize,
}

/// Size of the hugepages that back enclave memory.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HugepageSize {
    /// 2 MiB pages (`hugepages-2Mi`).
    #[default]
    #[serde(rename = "2Mi")]
    TwoMi,
    /// 1 GiB pages (`hugepages-1Gi`).
    #[serde(rename = "1Gi")]
    OneGi,
}

/// Control-plane settings (control plane only: no kubelet runs in the enclave).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!isCIDR(self.clusterCIDR) || !isCIDR(self.serviceCIDR) || (!cidr(self.clusterCIDR).containsCIDR(self.serviceCIDR) && !cidr(self.serviceCIDR).containsCIDR(self.clusterCIDR))").message("clusterCIDR and serviceCIDR must not overlap"),
    validation = Rule::new("!isCIDR(self.serviceCIDR) || !isIP(self.clusterDNS) || cidr(self.serviceCIDR).containsIP(self.clusterDNS)").message("clusterDNS must be an address inside serviceCIDR")
)]
pub struct ControlPlaneSpec {
    /// Which control plane the enclave runs: `kubernetes` (the default: etcd, kube-apiserver,
    /// kube-scheduler and kube-controller-manager started by the agent with trimmed flags and
    /// Go memory limits from `enclave.memoryMiB`, which must then be at least 1024) or `k3s`
    /// (one `k3s server` process). Both get the same attested CA, token webhook, flags, probes
    /// and restart policy; the enclave image must carry the chosen distribution's binaries. Part
    /// of the measured boot configuration; for `kubernetes` `enclave.memoryMiB` is measured too.
    #[serde(default)]
    pub distribution: Distribution,

    /// Address the API server binds inside the enclave (`--bind-address`).
    #[serde(default = "default_bind_address")]
    #[schemars(length(min = 2, max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("bindAddress must be an IPv4 or IPv6 address"))]
    pub bind_address: String,

    /// The IP address at which pods on the worker nodes reach this control plane: the in-cluster
    /// `kubernetes` Service's endpoint (`--advertise-address`), for example the host address or
    /// load balancer that publishes the enclave's API port. Its port is `httpsPort`, so the
    /// published port must equal it. The API server's certificate names the address. Unset:
    /// the endpoint is the bind address, which no pod can reach (the development runtime sets
    /// it to the address it publishes the API port on). Part of the measured configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 45))]
    #[x_kube(validation = Rule::new("isIP(self) && !ip(self).isLoopback() && !ip(self).isUnspecified()").message("advertiseAddress must be an IPv4 or IPv6 address that is neither loopback nor unspecified"))]
    pub advertise_address: Option<String>,

    /// HTTPS port of the API server (`--https-listen-port`); the Service exposes the same port.
    #[serde(default = "default_https_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub https_port: u16,

    /// Pod network of the cluster (`--cluster-cidr`).
    #[serde(default = "default_cluster_cidr", rename = "clusterCIDR")]
    #[schemars(length(min = 9, max = 49))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("clusterCIDR must be a CIDR such as 10.42.0.0/16"))]
    pub cluster_cidr: String,

    /// Service network of the cluster (`--service-cidr`).
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    #[schemars(length(min = 9, max = 49))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("serviceCIDR must be a CIDR such as 10.43.0.0/16"))]
    pub service_cidr: String,

    /// Address of the cluster DNS service (`--cluster-dns`); it must lie inside `serviceCIDR`.
    #[serde(default = "default_cluster_dns", rename = "clusterDNS")]
    #[schemars(length(min = 2, max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("clusterDNS must be an IPv4 or IPv6 address"))]
    pub cluster_dns: String,

    /// Data directory of the control plane inside the enclave (K3s `--data-dir`; the
    /// `kubernetes` distribution keeps its files in the same layout under it).
    #[serde(default = "default_data_dir")]
    #[schemars(length(min = 2, max = 256), regex(pattern = DATA_DIR_PATTERN))]
    #[x_kube(validation = Rule::new("!self.matches('[\\\\p{Z}\\\\p{Cc}]')").message("dataDir must not contain whitespace or control characters"))]
    pub data_dir: String,

    /// Encrypt Secrets at rest in the control plane's datastore (`--secrets-encryption`).
    #[serde(default = "default_true")]
    pub encrypt_secrets: bool,

    /// Lowest TLS version the API server accepts (`--tls-min-version`).
    #[serde(default)]
    pub tls_min_version: TlsMinVersion,

    /// TLS 1.2 cipher suites the API server offers (`--tls-cipher-suites`), by their Go names such
    /// as `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256`. Empty means the Kubernetes defaults. TLS 1.3
    /// suites are not configurable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(regex(pattern = CIPHER_SUITE_PATTERN)))]
    pub cipher_suites: Vec<String>,

    /// Verbosity of control-plane logs.
    #[serde(default)]
    pub log_level: LogLevel,

    /// Format of control-plane and agent logs: `json` or `text`.
    #[serde(default)]
    pub log_format: LogFormat,

    /// K3s version the enclave image is expected to carry, such as `v1.33.4+k3s1` (for the
    /// `kubernetes` distribution, the Kubernetes version such as `v1.36.2`). Informational:
    /// the image measurement (PCR0), not this field, proves what runs.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "k3sVersion"
    )]
    #[schemars(
        regex(pattern = r"^v[0-9]+\.[0-9]+\.[0-9]+(\+k3s[0-9]+)?$"),
        length(max = 64)
    )]
    pub k3s_version: Option<String>,
}

/// Which control plane the enclave runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// One `k3s server` process with its embedded components.
    K3s,
    /// etcd, kube-apiserver, kube-scheduler and kube-controller-manager as separate processes:
    /// the default, and the one every end-to-end test runs on real binaries.
    #[default]
    Kubernetes,
}

/// Lowest TLS version the API server accepts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMinVersion {
    /// TLS 1.2 and newer.
    #[default]
    VersionTLS12,
    /// TLS 1.3 only.
    VersionTLS13,
}

/// Verbosity of control-plane logs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including debug output (`--debug`).
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Warnings and errors only.
    Warn,
    /// Errors only.
    Error,
}

/// Format of logs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    #[default]
    Text,
}

/// Seal-token authentication: Sui signatures in, Kubernetes groups out, by stake.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
// The agent counts a custom type's stake only through a named u64 field (StakedSui's address
// may be written with leading zeros; the agent compares parsed type tags).
#[x_kube(validation = Rule::new("self.stakeType.matches('^0x0*3::staking_pool::StakedSui$') || has(self.stakeAmountField)").message("a stakeType other than 0x3::staking_pool::StakedSui needs stakeAmountField"))]
pub struct AuthSpec {
    /// gRPC endpoint of a Sui full node, reached from inside the enclave over TLS that the
    /// enclave verifies itself. Must be `https://`.
    #[serde(default = "default_sui_rpc_url", rename = "suiRpcURL")]
    #[schemars(
        length(min = 9, max = 512),
        regex(pattern = r"^https://[^\s/]+(:[0-9]+)?(/.*)?$")
    )]
    pub sui_rpc_url: String,

    /// Sui network the endpoint serves. Stake on any other network does not count.
    #[serde(default)]
    pub network: SuiNetwork,

    /// Chain identifier (base58 digest of the genesis checkpoint) the endpoint must report. When
    /// set, the enclave refuses an endpoint that serves another chain.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "chainID")]
    #[schemars(regex(pattern = r"^[1-9A-HJ-NP-Za-km-z]{32,44}$"))]
    pub chain_id: Option<String>,

    /// Move type whose objects count as stake. The native type is
    /// `0x3::staking_pool::StakedSui`, whose `principal` (in MIST) is summed.
    #[serde(default = "default_stake_type")]
    #[schemars(length(min = 6, max = 512), regex(pattern = MOVE_STRUCT_TAG))]
    pub stake_type: String,

    /// For a custom `stakeType`: name of the `u64` field that holds the staked amount in MIST.
    /// Ignored for `0x3::staking_pool::StakedSui`, whose amount is `principal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub stake_amount_field: Option<String>,

    /// Audience a seal token must name. Defaults to `<namespace>/<name>` of this resource, so a
    /// token minted for one control plane is useless at another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub audience: Option<String>,

    /// Longest lifetime (expiry minus issued-at) a seal token may have, in seconds.
    #[serde(default = "default_max_token_lifetime")]
    #[schemars(range(min = 60, max = 86400))]
    pub max_token_lifetime_seconds: u32,

    /// How long a stake amount read from the chain is reused, in seconds. When the chain is
    /// unreachable, only an answer younger than this is trusted; otherwise access is denied.
    #[serde(default = "default_stake_cache_ttl", rename = "stakeCacheTTLSeconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub stake_cache_ttl_seconds: u32,

    /// Access tiers, highest stake first. A token holder gets the groups of the first tier whose
    /// `minStakeMist` their stake reaches; below every tier, access is denied. Thresholds must be
    /// strictly descending and names unique.
    #[serde(default = "default_tiers")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(
        validation = Rule::new("self.map(t, -t.minStakeMist).isSorted() && self.all(t, self.exists_one(u, u.minStakeMist == t.minStakeMist))").message("tiers must be ordered by minStakeMist, strictly descending (highest stake first)"),
        validation = Rule::new("self.all(t, self.exists_one(u, u.name == t.name))").message("tier names must be unique")
    )]
    pub tiers: Vec<StakeTier>,

    /// zkLogin sign-in: seal tokens signed with a zkLogin address are accepted only when this is
    /// set, with the OpenID providers' keys to check their proofs against. The keys are part of
    /// the measured boot configuration, so the host cannot add a provider.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "zkLogin")]
    pub zk_login: Option<ZkLoginSpec>,
}

/// zkLogin verification inputs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ZkLoginSpec {
    /// Groth16 verifying key of the zkLogin circuit: `mainnet` for proofs from the production
    /// prover, `dev` for localnet test issuers only.
    #[serde(default)]
    pub verifying_key: ZkLoginVerifyingKey,

    /// The OpenID providers' signing keys (RSA JWKs) whose tokens zkLogin proofs may rest on, as
    /// the chain's authenticator state lists them.
    #[schemars(length(min = 1, max = 64))]
    pub jwks: Vec<ZkLoginJwk>,
}

/// Which Groth16 verifying key checks zkLogin proofs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ZkLoginVerifyingKey {
    /// The production zkLogin circuit's key.
    #[default]
    Mainnet,
    /// The development key, for proofs from localnet test issuers.
    Dev,
}

/// One OpenID provider key (RFC 7517 JWK) with the issuer it belongs to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ZkLoginJwk {
    /// Issuer (`iss`) of the provider, e.g. `https://accounts.google.com`.
    #[schemars(length(min = 1, max = 256))]
    pub iss: String,
    /// Key id (`kid`) within the issuer's key set.
    #[schemars(length(min = 1, max = 256))]
    pub kid: String,
    /// Key type; zkLogin uses `RSA`.
    #[schemars(length(min = 1, max = 16))]
    pub kty: String,
    /// RSA public exponent, base64url.
    #[schemars(length(min = 1, max = 16))]
    pub e: String,
    /// RSA modulus, base64url.
    #[schemars(length(min = 1, max = 1024))]
    pub n: String,
    /// Signature algorithm; zkLogin uses `RS256`.
    #[schemars(length(min = 1, max = 16))]
    pub alg: String,
}

/// A Sui network.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SuiNetwork {
    /// Sui mainnet.
    #[default]
    Mainnet,
    /// Sui testnet.
    Testnet,
    /// Sui devnet.
    Devnet,
    /// A local network (development only).
    Localnet,
}

/// One access tier: a stake threshold and the Kubernetes groups it grants.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StakeTier {
    /// Name of the tier (a DNS label), reported to the control plane in the user's `extra`
    /// field `nautilus.k3s-daas.io/tier`.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub name: String,

    /// Least stake, in MIST (1 SUI = 10^9 MIST), that reaches this tier.
    // Kubernetes integers are int64; say so instead of schemars' `uint64`.
    #[schemars(range(min = 1), extend("format" = "int64"))]
    pub min_stake_mist: u64,

    /// Kubernetes groups a member of this tier gets, for example `system:masters`. May be empty,
    /// for a tier that authenticates users without granting group-based rights.
    #[serde(default)]
    #[schemars(length(max = 32), inner(length(min = 1, max = 253)))]
    pub groups: Vec<String>,

    /// The kind of Kubernetes identity a token holder of this tier gets. `User` (the default):
    /// the username `sui:<address>` with `groups`. `Node`: the machine joins the control plane
    /// as a worker node, with the username `system:node:sui-<first 56 hex digits of the
    /// address>` in the group `system:nodes` (plus `groups`); the Node authorizer and the
    /// NodeRestriction admission plugin then let it act only on its own Node, Lease and pods.
    /// The node name is derived from the signer's address, never chosen by the signer, so one
    /// staker can never act as another staker's node; each node needs its own staked key. The
    /// kubelet uses that name (`--hostname-override`; `nautilusctl join` prints it).
    #[serde(default, skip_serializing_if = "TierIdentity::is_user")]
    pub identity: TierIdentity,
}

/// The kind of Kubernetes identity a stake tier grants.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TierIdentity {
    /// A user: `sui:<address>` with the tier's groups.
    #[default]
    User,
    /// A worker node: `system:node:sui-<address prefix>` in `system:nodes`.
    Node,
}

impl TierIdentity {
    /// Whether this is the default, [`TierIdentity::User`].
    pub fn is_user(&self) -> bool {
        *self == Self::User
    }
}

/// Health probing of the control-plane components inside the enclave.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.startupTimeoutSeconds > self.probeIntervalSeconds").message("startupTimeoutSeconds must be longer than probeIntervalSeconds"))]
pub struct HealthSpec {
    /// Seconds between probe rounds (API server `/livez` and `/readyz`, scheduler and
    /// controller-manager `/healthz`). Each round produces a signed report.
    #[serde(default = "default_probe_interval")]
    #[schemars(range(min = 1, max = 300))]
    pub probe_interval_seconds: u32,

    /// Seconds the control plane may take to become healthy after the enclave boots, before
    /// the resource is reported as failed to start.
    #[serde(default = "default_startup_timeout")]
    #[schemars(range(min = 10, max = 3600))]
    pub startup_timeout_seconds: u32,
}

/// Attestation policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.maxDocumentAgeSeconds > self.refreshIntervalSeconds").message("maxDocumentAgeSeconds must be longer than refreshIntervalSeconds, or every document expires before it is refreshed"))]
pub struct AttestationSpec {
    /// Seconds between fresh attestations. Each one answers a new nonce from the operator.
    #[serde(default = "default_refresh_interval")]
    #[schemars(range(min = 30, max = 86400))]
    pub refresh_interval_seconds: u32,

    /// Oldest attestation document, in seconds, that is still accepted.
    #[serde(default = "default_max_document_age")]
    #[schemars(range(min = 60, max = 172800))]
    pub max_document_age_seconds: u32,

    /// Accept enclaves started in debug mode (all PCRs zero). Their memory can be read by the
    /// host, so never enable this in production; status shows `debugMode: true` when it happens.
    #[serde(default)]
    pub allow_debug_mode: bool,

    /// Accept attestation documents signed by the simulated NSM of development mode instead of
    /// AWS hardware. Never enable this in production; status then carries the
    /// `SimulatedAttestation` reason.
    #[serde(default)]
    pub allow_simulated: bool,
}

/// Sealed snapshots of the control plane: what is kept, where, and who may read it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateSpec {
    /// The AWS KMS key that seals each snapshot's data key. Its key policy decides which
    /// enclave measurements may unseal (conditions on `kms:RecipientAttestation:ImageSha384` or
    /// `kms:RecipientAttestation:PCR0`...); see `config/kms/key-policy.example.json`.
    pub kms: KmsKeySpec,

    /// Seconds between snapshots. This is the recovery point: a crash loses at most the writes
    /// of the last interval (a graceful stop takes a final snapshot).
    #[serde(default = "default_backup_interval")]
    #[schemars(range(min = 10, max = 86400))]
    pub backup_interval_seconds: u32,

    /// How many sealed snapshots are kept, newest first; older ones are deleted.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 1, max = 100))]
    pub retain: u32,

    /// What happens to the sealed snapshots when the NautilusMaster is deleted: `Retain`
    /// (default: they stay, for a restore into another resource) or `Delete`.
    #[serde(default)]
    pub deletion_policy: StateDeletionPolicy,

    /// Raise by one to have the enclave make new cluster CAs and a new service-account key at
    /// its next start (the data is restored as before). Every kubeconfig and `nautilusctl
    /// verify` pin then changes; otherwise a restore keeps the CAs.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1_000_000))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("caGeneration never goes down: the CAs it names are gone"))]
    pub ca_generation: u32,

    /// UIDs of other NautilusMasters whose snapshots this one may restore: a migration into
    /// another namespace or cluster (copy their sealed snapshots into this resource's storage
    /// first; the KMS key policy must allow this enclave too).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "restoreFromUIDs"
    )]
    #[schemars(length(max = 8), inner(regex(pattern = UID_PATTERN)))]
    pub restore_from_uids: Vec<String>,

    /// Measurements of other enclave images whose snapshots this one may restore besides its
    /// own: during an image upgrade, list the old image's PCRs here (and in the KMS key
    /// policy) so that the new enclave restores the old one's state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub accepted_measurements: Vec<AcceptedMeasurements>,

    /// Where the pod runtime keeps the sealed snapshots: a PersistentVolumeClaim of the
    /// enclave's StatefulSet.
    #[serde(default)]
    pub storage: StateStorageSpec,
}

/// An AWS KMS key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KmsKeySpec {
    /// Key ID, key ARN, alias name or alias ARN.
    #[serde(rename = "keyID")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^[A-Za-z0-9:/_+=,.@-]+$")
    )]
    pub key_id: String,

    /// AWS region of the key, for example `eu-west-1`.
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")
    )]
    pub region: String,

    /// HTTPS endpoint to use instead of `https://kms.<region>.amazonaws.com` (a VPC
    /// endpoint, or the local KMS of development). The enclave reaches it through the host's
    /// egress proxy and verifies its certificate itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), regex(pattern = r"^https://[^\s/?#]+$"))]
    pub endpoint: Option<String>,
}

/// Expected PCR values of another enclave image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedMeasurements {
    /// PCR0 of that image, 96 hex characters.
    #[schemars(regex(pattern = HEX_48_BYTES))]
    pub pcr0: String,
    /// PCR1 of that image, 96 hex characters.
    #[schemars(regex(pattern = HEX_48_BYTES))]
    pub pcr1: String,
    /// PCR2 of that image, 96 hex characters.
    #[schemars(regex(pattern = HEX_48_BYTES))]
    pub pcr2: String,
    /// PCR8 of that image (its signing certificate), when it is signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HEX_48_BYTES))]
    pub pcr8: Option<String>,
}

/// What happens to sealed snapshots when their NautilusMaster is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StateDeletionPolicy {
    /// Keep them (the pod runtime keeps the PersistentVolumeClaim).
    #[default]
    Retain,
    /// Delete them with the resource.
    Delete,
}

/// The volume that holds sealed snapshots in the pod runtime.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateStorageSpec {
    /// Requested size of the PersistentVolumeClaim, for example `2Gi`. It must hold `retain`
    /// snapshots of the control plane's datastore.
    #[serde(default = "default_state_size")]
    pub size: Quantity,

    /// StorageClass of the PersistentVolumeClaim; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl Default for StateStorageSpec {
    fn default() -> Self {
        Self {
            size: default_state_size(),
            storage_class_name: None,
        }
    }
}

/// Observed state, written by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NautilusMasterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Latest observations: `EnclaveRunning`, `Attested`, `APIServerReady`, `SchedulerReady`,
    /// `ControllerManagerReady` and `Ready`, and with `spec.state` also `StateRestored` and
    /// `BackupHealthy`. (The CRD's description is generated from the reasons' enum,
    /// `conditions::reasons_documentation`.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// One-word summary of the lifecycle, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Summary of the attestation document that was last verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationSummary>,

    /// Health of each control-plane component, from the latest signed report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub components: Vec<ComponentHealth>,

    /// Where the enclave runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<EnclavePlacement>,

    /// HTTPS endpoint of the control plane (the Service in front of the enclave), for example
    /// `https://demo.team-a.svc:6443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// Secret holding a kubeconfig for the control plane: its CA is the attested serving CA and
    /// it holds no credentials (users bring seal tokens). Published only once attested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyReference>,

    /// SHA-256 (hex) of the boot configuration the enclave was given; a change rolls the enclave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_config_digest: Option<String>,

    /// The sealed state of the running enclave, from its latest signed report: which snapshot
    /// it restored and the last one it sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateStatus>,
}

/// Sealed state as the enclave reported it (signed).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StateStatus {
    /// Sequence number of the snapshot the running enclave restored at its start; absent when
    /// it started empty. A host can offer an older snapshot than the newest (a rollback):
    /// compare this with `lastSnapshotSequence` of the enclave before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_sequence: Option<u64>,
    /// When the restored snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_taken_at: Option<Time>,
    /// UID of the NautilusMaster whose snapshot was restored (another one after a migration).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "restoredFromUID"
    )]
    pub restored_from_uid: Option<String>,
    /// Sequence number of the newest snapshot the enclave sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_sequence: Option<u64>,
    /// When the newest snapshot was taken: it holds every write the control plane committed
    /// before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_time: Option<Time>,
    /// Size of the newest sealed snapshot in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_snapshot_bytes: Option<u64>,
}

/// One-word lifecycle summary.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; nothing launched yet.
    Pending,
    /// The enclave pod is being scheduled or the enclave is booting.
    Launching,
    /// The enclave runs; its attestation is being verified.
    Attesting,
    /// Attested; waiting for the control-plane components to become healthy.
    Starting,
    /// Attested and every component is healthy.
    Ready,
    /// Was ready, and a component or a report is now failing.
    Degraded,
    /// Attestation failed or the control plane did not start in time; see the conditions.
    Failed,
    /// Being deleted: the enclave is being stopped.
    Terminating,
}

/// What the operator verified in the latest attestation document.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AttestationSummary {
    /// Nitro module ID of the enclave (`i-<instance>-enc<id>`).
    pub module_id: String,
    /// When the operator verified the document.
    pub verified_at: Time,
    /// When the Nitro Security Module produced the document.
    pub document_timestamp: Time,
    /// Attested PCR values by index (hex), at least PCR0, PCR1, PCR2 and PCR8.
    pub pcrs: BTreeMap<String, String>,
    /// First 16 hex characters of PCR0, for `kubectl get -o wide`.
    pub pcr0_prefix: String,
    /// SHA-256 (hex) of the attested public key that signs health reports.
    pub public_key_fingerprint: String,
    /// SHA-256 (hex) of the whole attestation document, to find it in logs.
    #[serde(rename = "documentSHA256")]
    pub document_sha256: String,
    /// The document came from the simulated NSM of development mode, not AWS hardware.
    pub simulated: bool,
    /// The enclave runs in debug mode (PCRs all zero): the host can read its memory.
    pub debug_mode: bool,
}

/// Health of one control-plane component.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentHealth {
    /// Component name: `apiserver`, `scheduler` or `controller-manager`.
    pub name: String,
    /// The component answered its probe as healthy.
    pub healthy: bool,
    /// When the enclave last probed the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// Round-trip time of the last probe in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_millis: Option<u32>,
    /// Why the component is unhealthy, or empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Where the enclave runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnclavePlacement {
    /// How the operator runs the enclave: `pod` (a StatefulSet on a Nitro node, production) or
    /// `local` (a process the operator starts itself, development only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Name of the pod whose sidecar launched the enclave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Node that hosts the enclave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// vsock context ID of the enclave.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "enclaveCID"
    )]
    pub enclave_cid: Option<u32>,
    /// Enclave ID reported by `nitro-cli` (`i-...-enc...`).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "enclaveID")]
    pub enclave_id: Option<String>,
}

/// Reference to one key of a Secret in the resource's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyReference {
    /// Name of the Secret.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
}

impl NautilusMaster {
    /// The audience seal tokens must name: `spec.auth.audience`, or `<namespace>/<name>`.
    pub fn token_audience(&self) -> String {
        match &self.spec.auth.audience {
            Some(audience) => audience.clone(),
            None => format!(
                "{}/{}",
                self.metadata.namespace.as_deref().unwrap_or("default"),
                self.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }
}

impl Default for ControlPlaneSpec {
    fn default() -> Self {
        Self {
            distribution: Distribution::default(),
            bind_address: default_bind_address(),
            advertise_address: None,
            https_port: default_https_port(),
            cluster_cidr: default_cluster_cidr(),
            service_cidr: default_service_cidr(),
            cluster_dns: default_cluster_dns(),
            data_dir: default_data_dir(),
            encrypt_secrets: true,
            tls_min_version: TlsMinVersion::default(),
            cipher_suites: Vec::new(),
            log_level: LogLevel::default(),
            log_format: LogFormat::default(),
            k3s_version: None,
        }
    }
}

impl Default for AuthSpec {
    fn default() -> Self {
        Self {
            sui_rpc_url: default_sui_rpc_url(),
            network: SuiNetwork::default(),
            chain_id: None,
            stake_type: default_stake_type(),
            stake_amount_field: None,
            audience: None,
            max_token_lifetime_seconds: default_max_token_lifetime(),
            stake_cache_ttl_seconds: default_stake_cache_ttl(),
            tiers: default_tiers(),
            zk_login: None,
        }
    }
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            probe_interval_seconds: default_probe_interval(),
            startup_timeout_seconds: default_startup_timeout(),
        }
    }
}

impl Default for AttestationSpec {
    fn default() -> Self {
        Self {
            refresh_interval_seconds: default_refresh_interval(),
            max_document_age_seconds: default_max_document_age(),
            allow_debug_mode: false,
            allow_simulated: false,
        }
    }
}

/// The native stake type of Sui.
pub const STAKED_SUI_TYPE: &str = "0x3::staking_pool::StakedSui";

fn default_backup_interval() -> u32 {
    300
}
fn default_retain() -> u32 {
    5
}
fn default_state_size() -> Quantity {
    Quantity("2Gi".to_owned())
}
fn default_eif_path() -> String {
    "/nautilus/enclave.eif".into()
}
fn default_cpu_count() -> u32 {
    2
}
fn default_memory_mib() -> u32 {
    4096
}
fn default_bind_address() -> String {
    "0.0.0.0".into()
}
fn default_https_port() -> u16 {
    6443
}
fn default_cluster_cidr() -> String {
    "10.42.0.0/16".into()
}
fn default_service_cidr() -> String {
    "10.43.0.0/16".into()
}
fn default_cluster_dns() -> String {
    "10.43.0.10".into()
}
fn default_data_dir() -> String {
    "/var/lib/rancher/k3s".into()
}
fn default_true() -> bool {
    true
}
fn default_sui_rpc_url() -> String {
    "https://fullnode.mainnet.sui.io:443".into()
}
fn default_stake_type() -> String {
    STAKED_SUI_TYPE.into()
}
fn default_max_token_lifetime() -> u32 {
    3600
}
fn default_stake_cache_ttl() -> u32 {
    30
}
fn default_probe_interval() -> u32 {
    5
}
fn default_startup_timeout() -> u32 {
    120
}
fn default_refresh_interval() -> u32 {
    300
}
fn default_max_document_age() -> u32 {
    900
}

/// The seed system's tiers: admin (≥ 10000 MIST), worker (≥ 1000, a node identity whose
/// `nautilus:node-proxiers` group also lets kube-proxy run with its token), reader (≥ 100).
pub fn default_tiers() -> Vec<StakeTier> {
    vec![
        StakeTier {
            name: "admin".into(),
            min_stake_mist: 10_000,
            groups: vec!["system:masters".into()],
            identity: TierIdentity::User,
        },
        StakeTier {
            name: "worker".into(),
            min_stake_mist: 1_000,
            groups: vec!["nautilus:node-proxiers".into()],
            identity: TierIdentity::Node,
        },
        StakeTier {
            name: "reader".into(),
            min_stake_mist: 100,
            groups: vec!["nautilus:readers".into()],
            identity: TierIdentity::User,
        },
    ]
}
