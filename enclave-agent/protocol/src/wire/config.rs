//! What the agent is told to run: the boot configuration and the nonce.

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest as _, Sha256};

/// Largest nonce: the NSM refuses more than 512 bytes.
pub const MAX_NONCE_BYTES: usize = 512;

/// Why a nonce is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nonce must be 1 to {MAX_NONCE_BYTES} bytes, got {0}")]
pub struct NonceSizeError(pub usize);

/// The one rule for a nonce, on every side of every link: 1 to [`MAX_NONCE_BYTES`] bytes.
///
/// An empty nonce would make a document that answers no challenge; a longer one the NSM
/// refuses. Readers of [`BootConfig`] and [`NonceRefresh`] apply it while parsing (a frame
/// carrying another nonce is malformed), writers while serializing, and the sidecar's
/// `POST /attest` before it queues a refresh.
pub fn check_nonce(nonce: &[u8]) -> Result<(), NonceSizeError> {
    if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES {
        return Err(NonceSizeError(nonce.len()));
    }
    Ok(())
}

/// Serde for nonce fields: base64 with [`check_nonce`] applied both ways.
pub(super) mod nonce_b64 {
    use serde::{Deserializer, Serializer};

    pub(in crate::wire) fn serialize<S: Serializer>(
        bytes: &[u8],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        super::check_nonce(bytes).map_err(serde::ser::Error::custom)?;
        super::super::b64::serialize(bytes, serializer)
    }

    pub(in crate::wire) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let bytes = super::super::b64::deserialize(deserializer)?;
        super::check_nonce(&bytes).map_err(serde::de::Error::custom)?;
        Ok(bytes)
    }
}

/// The sidecar's first message: the configuration to boot and the operator's challenge.
///
/// The nonce sits beside the configuration, not inside it, so that a fresh nonce does not
/// change the configuration digest bound into the attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootConfig {
    /// The measured configuration.
    pub config: EnclaveConfig,
    /// The operator's challenge for the first attestation document (1 to 512 bytes).
    #[serde(with = "nonce_b64")]
    pub nonce: Vec<u8>,
}

/// Longest [`BootRefused::reason`], in bytes.
pub const MAX_REFUSAL_BYTES: usize = 1024;

/// The agent's answer to a [`BootConfig`] whose values it refuses (a cipher suite it does not
/// know, a stake type that does not parse, ...): it will refuse the same configuration again,
/// so the sidecar does not offer it again, and the operator says why in the resource's status.
///
/// Unsigned: before a boot there is no report key. It is therefore a claim the host relays and
/// could forge, which gains a host nothing it could not do already (withhold the boot); a
/// refusal never makes anything verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootRefused {
    /// Hex digest of the refused configuration.
    pub config_digest: String,
    /// Why, one line of at most [`MAX_REFUSAL_BYTES`] bytes.
    #[serde(deserialize_with = "refusal_reason")]
    pub reason: String,
    /// What was refused: the configuration itself (absent from the JSON), or the sealed state
    /// it asked the agent to restore.
    #[serde(default, skip_serializing_if = "RefusalKind::is_config")]
    pub kind: RefusalKind,
}

/// What a [`BootRefused`] refused. The operator picks the condition from it, never from the
/// reason's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RefusalKind {
    /// A value of the configuration the agent cannot run.
    #[default]
    Config,
    /// The offered snapshot failed a check (integrity, resource, measurements): nothing was
    /// started from it.
    SnapshotRejected,
    /// KMS would not release the data key to this enclave.
    KeyRefused,
}

impl RefusalKind {
    /// Whether this is [`RefusalKind::Config`], the default.
    pub fn is_config(&self) -> bool {
        *self == Self::Config
    }
}

impl BootRefused {
    /// The same refusal, of another kind.
    pub fn of_kind(self, kind: RefusalKind) -> Self {
        Self { kind, ..self }
    }

    /// A refusal of `config` for `reason`, made one line and cut to [`MAX_REFUSAL_BYTES`] at a
    /// character boundary.
    pub fn new(config: &EnclaveConfig, reason: &str) -> Self {
        let mut line = String::with_capacity(reason.len().min(MAX_REFUSAL_BYTES));
        for c in reason.chars() {
            let c = if c.is_control() { ' ' } else { c };
            if line.len() + c.len_utf8() > MAX_REFUSAL_BYTES {
                break;
            }
            line.push(c);
        }
        Self {
            config_digest: config.digest_hex(),
            reason: line,
            kind: RefusalKind::Config,
        }
    }
}

fn refusal_reason<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let reason = String::deserialize(deserializer)?;
    if reason.len() > MAX_REFUSAL_BYTES || reason.chars().any(char::is_control) {
        return Err(serde::de::Error::custom(format!(
            "a refusal reason is one line of at most {MAX_REFUSAL_BYTES} bytes"
        )));
    }
    Ok(reason)
}

/// A request for a new attestation document carrying a fresh nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NonceRefresh {
    /// The operator's new challenge (1 to 512 bytes).
    #[serde(with = "nonce_b64")]
    pub nonce: Vec<u8>,
}

/// The sidecar asks the agent to stop gracefully: the host is stopping the enclave (a pod
/// deleted or replaced, a roll), and signals do not cross the enclave's boundary. The agent
/// seals a last snapshot while etcd still runs and hands it over on the link, stops its control
/// plane in order, then closes the link; within [`crate::constants::stop::AGENT`], after which
/// the host stops the enclave regardless.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StopRequest {}

/// Everything the agent runs with, rendered by the operator from the resource's spec.
///
/// Field names follow the CRD's spec; the operator converts, so the wire format does not move
/// when the API grows a field the enclave does not need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnclaveConfig {
    /// `namespace/name` of the NautilusMaster, for logs and reports.
    pub cluster: String,
    /// The K3s control plane's settings.
    pub control_plane: ControlPlaneConfig,
    /// Seal-token authentication.
    pub auth: AuthConfig,
    /// Health probing.
    pub health: HealthConfig,
    /// Sealed state: the datastore and PKI kept across enclave restarts. Absent: nothing is
    /// kept, and configurations without it keep their digest. Its values are checked while
    /// parsing ([`StateConfig::check`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::state::checked_state"
    )]
    pub state: Option<StateConfig>,
}

/// Sealed state (see the CRD's `spec.state`): what the agent needs to seal snapshots of the
/// control plane and to decide which snapshots it may restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateConfig {
    /// UID of the NautilusMaster: bound into every snapshot the enclave seals.
    #[serde(rename = "resourceUID")]
    pub resource_uid: String,
    /// UIDs of other NautilusMasters whose snapshots this enclave may restore (a migration).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        rename = "restoreFromUIDs"
    )]
    pub restore_from_uids: Vec<String>,
    /// Measurements of other enclave images whose snapshots this enclave may restore besides
    /// its own (an image upgrade).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_measurements: Vec<Measurements>,
    /// Seconds between periodic snapshots.
    pub backup_interval_seconds: u32,
    /// How many snapshots the host keeps, newest first.
    pub retain: u32,
    /// Raised by a person to rotate the cluster's CAs; otherwise a restore keeps them.
    #[serde(rename = "caGeneration")]
    pub ca_generation: u32,
    /// The KMS key that seals the data key.
    pub kms: KmsConfig,
}

/// A set of PCR values: PCR index to 96 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Measurements {
    /// PCR index to value (hex).
    pub pcrs: std::collections::BTreeMap<u8, String>,
}

/// The AWS KMS key that seals the state (see the CRD's `spec.state.kms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KmsConfig {
    /// Key ID or ARN.
    #[serde(rename = "keyID")]
    pub key_id: String,
    /// AWS region of the key.
    pub region: String,
    /// HTTPS endpoint override (a VPC endpoint, or the local KMS of development); absent means
    /// `https://kms.<region>.amazonaws.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// The control plane's settings (see the CRD's `spec.controlPlane`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// `k3s` (one binary) or `kubernetes` (etcd, kube-apiserver, kube-scheduler,
    /// kube-controller-manager started by the agent). Absent from the canonical JSON when
    /// `k3s`, so configurations from before the field keep their digest.
    #[serde(
        default = "default_distribution",
        skip_serializing_if = "is_default_distribution"
    )]
    pub distribution: String,
    /// Address the API server binds.
    pub bind_address: String,
    /// HTTPS port of the API server.
    pub https_port: u16,
    /// Pod network.
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: String,
    /// Service network.
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: String,
    /// Cluster DNS service address.
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: String,
    /// K3s data directory inside the enclave.
    pub data_dir: String,
    /// Encrypt Secrets at rest.
    pub encrypt_secrets: bool,
    /// `VersionTLS12` or `VersionTLS13`.
    pub tls_min_version: String,
    /// Go cipher-suite names; empty means the K3s defaults.
    pub cipher_suites: Vec<String>,
    /// `debug`, `info`, `warn` or `error`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// DNS names the API server's certificate carries besides its own (bind address,
    /// loopback, the `kubernetes` Service): the host Service's names that the published
    /// endpoint uses. Measured, so the host cannot add a name. Absent from the canonical JSON
    /// when empty, so configurations without it keep their digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "tlsSANs")]
    pub tls_sans: Vec<String>,
    /// The IP address the in-cluster `kubernetes` Service's endpoints name
    /// (`--advertise-address`): where pods on worker nodes reach the API server, i.e. the
    /// published endpoint, whose port must be `httpsPort`. The API server's certificate names
    /// it. Absent: the bind address (loopback when unspecified), reachable by no pod. Absent
    /// from the canonical JSON when unset, so configurations without it keep their digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<String>,
    /// The enclave's memory in MiB (`spec.enclave.memoryMiB`) for the `kubernetes`
    /// distribution: the agent derives each component's Go memory limit and etcd's quota from
    /// it. Absent from the canonical JSON when unset (the `k3s` distribution, configurations
    /// from before the field), so their digest does not move; without it the components run
    /// without limits.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "memoryMiB")]
    pub memory_mib: Option<u32>,
}

/// Go's cipher-suite names that the control-plane components accept (`crypto/tls` secure and
/// insecure lists): the agent refuses any other, and the CRD's pattern for `cipherSuites` names
/// exactly these (a test in `nautilus-crds` compares them).
pub const CIPHER_SUITES: &[&str] = &[
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

/// The distribution a configuration without `distribution` runs.
pub const DEFAULT_DISTRIBUTION: &str = "k3s";

fn default_distribution() -> String {
    DEFAULT_DISTRIBUTION.to_owned()
}

fn is_default_distribution(value: &str) -> bool {
    value == DEFAULT_DISTRIBUTION
}

/// Seal-token authentication (see the CRD's `spec.auth`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// Sui full node gRPC endpoint (`https://host[:port]`).
    #[serde(rename = "suiRpcURL")]
    pub sui_rpc_url: String,
    /// Expected chain identifier, if pinned.
    #[serde(rename = "chainID")]
    pub chain_id: Option<String>,
    /// Move type of stake objects.
    pub stake_type: String,
    /// The u64 field counted for a custom stake type.
    pub stake_amount_field: Option<String>,
    /// Audience every token must name.
    pub audience: String,
    /// Longest accepted token lifetime.
    pub max_token_lifetime_seconds: u32,
    /// How long a stake lookup is trusted.
    #[serde(rename = "stakeCacheTTLSeconds")]
    pub stake_cache_ttl_seconds: u32,
    /// Tiers, highest stake first.
    pub tiers: Vec<TierConfig>,
    /// zkLogin verification inputs; without them zkLogin tokens are refused. Absent from the
    /// canonical JSON when unset, so configurations without zkLogin keep their digest.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "zkLogin")]
    pub zk_login: Option<ZkLoginConfig>,
}

/// zkLogin verification inputs (see the CRD's `spec.auth.zkLogin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZkLoginConfig {
    /// `mainnet` or `dev`.
    pub verifying_key: String,
    /// The OpenID providers' keys.
    pub jwks: Vec<JwkConfig>,
}

/// One OpenID provider key (RFC 7517 JWK) and its issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwkConfig {
    /// Issuer.
    pub iss: String,
    /// Key id.
    pub kid: String,
    /// Key type (`RSA`).
    pub kty: String,
    /// Public exponent, base64url.
    pub e: String,
    /// Modulus, base64url.
    pub n: String,
    /// Algorithm (`RS256`).
    pub alg: String,
}

/// One stake tier: same fields and JSON names as the CRD's and the seal crate's tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TierConfig {
    /// Tier name, reported in the user's extra fields.
    pub name: String,
    /// Least stake, in MIST, that reaches the tier.
    pub min_stake_mist: u64,
    /// Kubernetes groups the tier grants.
    pub groups: Vec<String>,
    /// The kind of identity the tier grants; left out when it is `User`, so configurations
    /// without node tiers keep their digests.
    #[serde(default, skip_serializing_if = "TierIdentity::is_user")]
    pub identity: TierIdentity,
}

/// The kind of Kubernetes identity a tier grants (the CRD's `StakeTier.identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TierIdentity {
    /// `sui:<address>` with the tier's groups.
    #[default]
    User,
    /// `system:node:<name bound to the address>` in `system:nodes`.
    Node,
}

impl TierIdentity {
    /// Whether this is [`TierIdentity::User`], the default.
    pub fn is_user(&self) -> bool {
        *self == Self::User
    }
}

/// Health probing (see the CRD's `spec.health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds between probe rounds.
    pub probe_interval_seconds: u32,
    /// Seconds the control plane may take to become healthy after a start.
    pub startup_timeout_seconds: u32,
}

impl EnclaveConfig {
    /// SHA-256 of the configuration's canonical JSON (this type's serialization: fields in
    /// declaration order, no whitespace).
    ///
    /// Operator and agent both compute it from the parsed value, so a relay that reformats the
    /// JSON changes nothing, and one that changes a value changes the digest.
    pub fn digest(&self) -> [u8; 32] {
        let canonical = serde_json::to_vec(self)
            .expect("EnclaveConfig holds only strings, integers, booleans and lists");
        Sha256::digest(canonical).into()
    }

    /// [`EnclaveConfig::digest`] as lowercase hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::wire) const BEFORE_DISTRIBUTION: &str = r#"{"cluster":"ns/x","controlPlane":{"bindAddress":"127.0.0.1","httpsPort":6443,"clusterCIDR":"10.42.0.0/16","serviceCIDR":"10.43.0.0/16","clusterDNS":"10.43.0.10","dataDir":"/var/lib/rancher/k3s","encryptSecrets":true,"tlsMinVersion":"VersionTLS12","cipherSuites":[],"logLevel":"info","logFormat":"text"},"auth":{"suiRpcURL":"https://fullnode.testnet.sui.io:443","chainID":null,"stakeType":"0x3::staking_pool::StakedSui","stakeAmountField":null,"audience":"ns/x","maxTokenLifetimeSeconds":3600,"stakeCacheTTLSeconds":60,"tiers":[]},"health":{"probeIntervalSeconds":10,"startupTimeoutSeconds":300}}"#;

    #[test]
    fn k3s_is_the_default_and_keeps_the_digest_of_configs_without_the_field() {
        let config: EnclaveConfig = serde_json::from_str(BEFORE_DISTRIBUTION).expect("parses");
        assert_eq!(config.control_plane.distribution, "k3s");
        // The canonical JSON of a k3s config is byte-for-byte what it was before the field.
        assert_eq!(
            serde_json::to_string(&config).expect("json"),
            BEFORE_DISTRIBUTION
        );
        let mut kubernetes = config.clone();
        kubernetes.control_plane.distribution = "kubernetes".into();
        let json = serde_json::to_string(&kubernetes).expect("json");
        assert!(json.contains(r#""distribution":"kubernetes""#), "{json}");
        assert_ne!(kubernetes.digest(), config.digest());
        let back: EnclaveConfig = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, kubernetes);
    }
}
