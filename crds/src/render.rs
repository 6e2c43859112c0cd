//! What a `NautilusMaster`'s spec renders to besides Kubernetes objects, shared by the operator
//! (which sends and publishes it) and `nautilusctl verify` (which recomputes it from the spec a
//! user trusts): the measured [`EnclaveConfig`] and the client kubeconfig.
//!
//! Both sides must produce the same bytes: the configuration's digest is what the enclave
//! attests (and names the resource: `cluster` is `namespace/name`), and the kubeconfig is what
//! a user gets either from the operator's Secret or from their own verification.

use nautilus_protocol::wire::{
    AuthConfig, ControlPlaneConfig, EnclaveConfig, HealthConfig, JwkConfig, KmsConfig,
    Measurements, StateConfig, TierConfig, TierIdentity as WireTierIdentity, ZkLoginConfig,
};
use serde::Serialize;

use crate::{AcceptedMeasurements, NautilusMaster, StateSpec, TierIdentity};

/// Lifetime of the seal tokens the kubeconfig's exec plugin mints, unless the spec allows less.
pub const DEFAULT_TOKEN_TTL_SECONDS: u32 = 900;

/// Why a spec could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The object has no name or namespace (it was not read from the API server).
    #[error("nautilusmaster has no {0}")]
    Metadata(&'static str),
    /// A value could not be serialized.
    #[error("cannot serialize {what}: {reason}")]
    Serialize {
        /// What was serialized.
        what: &'static str,
        /// What serde reported.
        reason: String,
    },
}

fn namespace_name(nm: &NautilusMaster) -> Result<(&str, &str), RenderError> {
    let namespace = nm
        .metadata
        .namespace
        .as_deref()
        .ok_or(RenderError::Metadata("namespace"))?;
    let name = nm
        .metadata
        .name
        .as_deref()
        .ok_or(RenderError::Metadata("name"))?;
    Ok((namespace, name))
}

/// Longest name of a Service (a DNS-1035 label).
pub const MAX_SERVICE_NAME: usize = 63;

/// `name + suffix`, or when longer than `max`, a prefix of `name`, `-`, 8 hex digits of the
/// SHA-256 of `name`, then `suffix`. The result never ends the prefix on `-` or `.`.
///
/// The operator names every child with it; the Service's name is also part of the measured
/// configuration ([`service_name`]), so it lives here with the rendering.
pub fn bounded_name(name: &str, suffix: &str, max: usize) -> String {
    use sha2::Digest as _;
    if name.len() + suffix.len() <= max {
        return format!("{name}{suffix}");
    }
    let hash = &hex::encode(sha2::Sha256::digest(name.as_bytes()))[..8];
    let keep = max.saturating_sub(suffix.len() + 1 + hash.len());
    // Names are ASCII (DNS subdomains), so byte slicing is on character boundaries.
    let prefix = name
        .get(..keep.min(name.len()))
        .unwrap_or_default()
        .trim_end_matches(['-', '.']);
    format!("{prefix}-{hash}{suffix}")
}

/// The name of the host Service in front of a resource named `name`: the name itself, bounded
/// to a DNS-1035 label (`nm-` first when it does not start with a letter).
pub fn service_name(name: &str) -> String {
    let service = bounded_name(name, "", MAX_SERVICE_NAME);
    // Services are DNS-1035 labels: they must start with a letter.
    if service.starts_with(|c: char| c.is_ascii_lowercase()) {
        service
    } else {
        bounded_name(&format!("nm-{name}"), "", MAX_SERVICE_NAME)
    }
}

/// The names the enclave's API server certificate carries for the host Service, so that the
/// endpoint the operator publishes (`https://<service>.<namespace>.svc:<port>`) passes a
/// client's hostname check: `<service>.<namespace>.svc` and `…svc.cluster.local`.
pub fn service_sans(namespace: &str, name: &str) -> Vec<String> {
    let service = service_name(name);
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// The string an enum serializes to (`VersionTLS12`, `info`, `json`, ...).
fn serialized<T: Serialize>(value: &T, what: &'static str) -> Result<String, RenderError> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => Ok(s),
        Ok(other) => Err(RenderError::Serialize {
            what,
            reason: format!("expected a string, got {other}"),
        }),
        Err(err) => Err(RenderError::Serialize {
            what,
            reason: err.to_string(),
        }),
    }
}

/// The measured configuration the enclave boots with, from the spec.
///
/// This is the one canonical rendering: the operator sends it (placed where the runtime runs
/// it, see `EnclaveRuntime::place`) and `nautilusctl verify` recomputes it from the spec a user
/// trusts, so both compare the digest the enclave attests with the same bytes.
pub fn enclave_config(nm: &NautilusMaster) -> Result<EnclaveConfig, RenderError> {
    let (namespace, name) = namespace_name(nm)?;
    let cp = &nm.spec.control_plane;
    let auth = &nm.spec.auth;
    Ok(EnclaveConfig {
        cluster: format!("{namespace}/{name}"),
        control_plane: ControlPlaneConfig {
            distribution: serialized(&cp.distribution, "distribution")?,
            bind_address: cp.bind_address.clone(),
            https_port: cp.https_port,
            cluster_cidr: cp.cluster_cidr.clone(),
            service_cidr: cp.service_cidr.clone(),
            cluster_dns: cp.cluster_dns.clone(),
            data_dir: cp.data_dir.clone(),
            encrypt_secrets: cp.encrypt_secrets,
            tls_min_version: serialized(&cp.tls_min_version, "tlsMinVersion")?,
            cipher_suites: cp.cipher_suites.clone(),
            log_level: serialized(&cp.log_level, "logLevel")?,
            log_format: serialized(&cp.log_format, "logFormat")?,
            tls_sans: service_sans(namespace, name),
            advertise_address: cp.advertise_address.clone(),
        },
        auth: AuthConfig {
            sui_rpc_url: auth.sui_rpc_url.clone(),
            chain_id: auth.chain_id.clone(),
            stake_type: auth.stake_type.clone(),
            stake_amount_field: auth.stake_amount_field.clone(),
            audience: nm.token_audience(),
            max_token_lifetime_seconds: auth.max_token_lifetime_seconds,
            stake_cache_ttl_seconds: auth.stake_cache_ttl_seconds,
            tiers: auth
                .tiers
                .iter()
                .map(|t| TierConfig {
                    name: t.name.clone(),
                    min_stake_mist: t.min_stake_mist,
                    groups: t.groups.clone(),
                    identity: match t.identity {
                        TierIdentity::User => WireTierIdentity::User,
                        TierIdentity::Node => WireTierIdentity::Node,
                    },
                })
                .collect(),
            zk_login: match &auth.zk_login {
                None => None,
                Some(z) => Some(ZkLoginConfig {
                    verifying_key: serialized(&z.verifying_key, "zkLogin.verifyingKey")?,
                    jwks: z
                        .jwks
                        .iter()
                        .map(|j| JwkConfig {
                            iss: j.iss.clone(),
                            kid: j.kid.clone(),
                            kty: j.kty.clone(),
                            e: j.e.clone(),
                            n: j.n.clone(),
                            alg: j.alg.clone(),
                        })
                        .collect(),
                }),
            },
        },
        health: HealthConfig {
            probe_interval_seconds: nm.spec.health.probe_interval_seconds,
            startup_timeout_seconds: nm.spec.health.startup_timeout_seconds,
        },
        state: match &nm.spec.state {
            None => None,
            Some(state) => Some(state_config(nm, state)?),
        },
    })
}

/// The measured form of `spec.state`: the resource's UID is bound into every snapshot, so
/// rendering it needs the object as the API server returned it.
fn state_config(nm: &NautilusMaster, state: &StateSpec) -> Result<StateConfig, RenderError> {
    let uid = nm
        .metadata
        .uid
        .as_deref()
        .ok_or(RenderError::Metadata("uid"))?;
    let pcrs = |m: &AcceptedMeasurements| {
        let mut pcrs = std::collections::BTreeMap::new();
        pcrs.insert(0, m.pcr0.to_ascii_lowercase());
        pcrs.insert(1, m.pcr1.to_ascii_lowercase());
        pcrs.insert(2, m.pcr2.to_ascii_lowercase());
        if let Some(pcr8) = &m.pcr8 {
            pcrs.insert(8, pcr8.to_ascii_lowercase());
        }
        Measurements { pcrs }
    };
    Ok(StateConfig {
        resource_uid: uid.to_owned(),
        restore_from_uids: state.restore_from_uids.clone(),
        accepted_measurements: state.accepted_measurements.iter().map(pcrs).collect(),
        backup_interval_seconds: state.backup_interval_seconds,
        retain: state.retain,
        ca_generation: state.ca_generation,
        kms: KmsConfig {
            key_id: state.kms.key_id.clone(),
            region: state.kms.region.clone(),
            endpoint: state.kms.endpoint.clone(),
        },
    })
}

/// The kubeconfig (YAML) for the control plane at `server` trusting `serving_ca_pem`: one
/// cluster, one context, and a user whose credentials come from the `nautilusctl` exec plugin.
/// It holds no credential.
pub fn kubeconfig(
    nm: &NautilusMaster,
    server: &str,
    serving_ca_pem: &str,
) -> Result<String, RenderError> {
    use base64::Engine as _;
    let (namespace, name) = namespace_name(nm)?;
    let cluster = format!("{namespace}/{name}");
    let ttl = DEFAULT_TOKEN_TTL_SECONDS.min(nm.spec.auth.max_token_lifetime_seconds);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": cluster,
            "cluster": {
                "server": server,
                "certificate-authority-data":
                    base64::engine::general_purpose::STANDARD.encode(serving_ca_pem),
            },
        }],
        "users": [{
            "name": "seal-token",
            "user": {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": "nautilusctl",
                    "args": [
                        "token", "exec-credential",
                        "--audience", nm.token_audience(),
                        "--ttl", format!("{ttl}s"),
                    ],
                    "installHint": "nautilusctl mints seal tokens from your Sui keystore; \
                        set NAUTILUS_SUI_KEYSTORE to its path (and --address to pick a key)",
                    "interactiveMode": "Never",
                    "provideClusterInfo": false,
                },
            },
        }],
        "contexts": [{
            "name": cluster,
            "context": { "cluster": cluster, "user": "seal-token" },
        }],
        "current-context": cluster,
    });
    // A namespace or name such as `no` or `on` must stay a string for client-go's YAML 1.1.
    nautilus_protocol::yaml::to_string(&config).map_err(|err| RenderError::Serialize {
        what: "kubeconfig",
        reason: err.to_string(),
    })
}
