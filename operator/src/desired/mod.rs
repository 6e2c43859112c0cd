//! Desired state: the children of a `NautilusMaster`, computed from its spec alone.
//!
//! Every function here is pure (no API calls, no clock, no randomness: the nonce is an input),
//! so the whole mapping from spec to objects is tested with tables of specs. The controller
//! applies what these functions return with server-side apply.
//!
//! ```text
//! spec ──enclave_config──▶ EnclaveConfig ──digest──▶ boot config digest
//!                              │                        ├──▶ ConfigMap <name>-boot (label + annotation)
//!                              └── + nonce ──▶ BootConfig ┘
//!                                                       └──▶ StatefulSet <name>-enclave (pod annotation:
//!                                                              a new digest rolls the enclave)
//! spec ──▶ Service <name> (httpsPort → 6443)
//! attested serving CA + endpoint ──▶ Secret <name>-kubeconfig (exec plugin, no credentials)
//! ```
//!
//! The enclave StatefulSet of the pod runtime (its pod, sidecar arguments, hugepages and sealed
//! state claim) is in `statefulset`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource as _;
use nautilus_crds::render::{self, RenderError, bounded_name as bounded};
use nautilus_crds::{NautilusMaster, StateSpec};
use nautilus_protocol::wire::{BootConfig, EnclaveConfig};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

mod statefulset;

pub use statefulset::{PodSettings, claims_differ, enclave_statefulset, sidecar_args};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "nautilus-operator";
/// Label: the NautilusMaster a child belongs to (its name, shortened with a hash when long).
pub const CLUSTER_LABEL: &str = "nautilus.k3s-daas.io/cluster";
/// Label and annotation: the boot configuration digest (the label holds its first 32 hex digits,
/// as label values are limited to 63 characters).
pub const DIGEST_KEY: &str = "nautilus.k3s-daas.io/boot-config-digest";
/// Annotation of the enclave pod: the name of its NautilusMaster (labels may hold a shortened
/// name), so pod events map back to the resource.
pub const OWNER_NAME_KEY: &str = "nautilus.k3s-daas.io/owner-name";
/// Key of the boot configuration in the ConfigMap.
pub const BOOT_CONFIG_KEY: &str = "boot-config.json";
/// Key of the kubeconfig in the Secret.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// Name of the sidecar container.
pub const SIDECAR_CONTAINER: &str = "nautilus-sidecar";
/// The Nitro Enclaves device plugin's extended resource.
pub const NITRO_RESOURCE: &str = "aws.ec2.nitro/nitro_enclaves";
/// Node label the Nitro Enclaves device plugin runs on, the default node selector.
pub const NITRO_NODE_LABEL: (&str, &str) = ("aws-nitro-enclaves-k8s-dp", "enabled");
/// Port of the sidecar's HTTP API (`/healthz`, `/readyz`, `/report`, `/attest`).
pub const SIDECAR_HTTP_PORT: u16 = 8080;
/// Port the sidecar listens on for the control plane's HTTPS traffic.
pub const SIDECAR_API_PORT: u16 = 6443;
/// Where the boot config ConfigMap is mounted in the sidecar.
pub const BOOT_CONFIG_DIR: &str = "/etc/nautilus";
/// Where the enclave image (the OCI image carrying the EIF) is mounted, read-only.
pub const ENCLAVE_IMAGE_DIR: &str = "/enclave-image";
/// Lifetime of the seal tokens the kubeconfig's exec plugin mints, unless the spec allows less.
pub use nautilus_crds::render::DEFAULT_TOKEN_TTL_SECONDS;
/// Annotation carrying the SHA-256 of the desired object the operator last applied: a child whose
/// cached copy carries the hash of the object rendered now is not applied again.
pub const APPLIED_HASH_KEY: &str = "nautilus.k3s-daas.io/applied-hash";

/// Longest StatefulSet name whose pods' `controller-revision-hash` label still fits 63 characters.
const MAX_STATEFULSET_NAME: usize = 52;
/// Longest ConfigMap/Secret name we produce (they allow 253; keep them readable).
const MAX_OBJECT_NAME: usize = 253;
/// Longest label value.
const MAX_LABEL_VALUE: usize = 63;

/// Why the desired state could not be computed. Each is a spec or metadata problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DesiredError {
    /// The object has no name or namespace (it was not read from the API server).
    #[error("nautilusmaster has no {0}")]
    Metadata(&'static str),
    /// `spec.auth.suiRpcURL` is not an `https://host[:port]` URL.
    #[error("spec.auth.suiRpcURL {url:?} is not an https://host[:port] url")]
    SuiRpcUrl {
        /// The URL.
        url: String,
    },
    /// A value could not be serialized.
    #[error("cannot serialize {what}: {reason}")]
    Serialize {
        /// What was serialized.
        what: &'static str,
        /// What serde reported.
        reason: String,
    },
}

impl From<RenderError> for DesiredError {
    fn from(err: RenderError) -> Self {
        match err {
            RenderError::Metadata(field) => Self::Metadata(field),
            RenderError::Serialize { what, reason } => Self::Serialize { what, reason },
            other => Self::Serialize {
                what: "spec",
                reason: other.to_string(),
            },
        }
    }
}

/// Stamp `object` with [`APPLIED_HASH_KEY`]: the SHA-256 (hex) of its JSON without that
/// annotation. Returns the hash.
///
/// The hash covers exactly what the operator applies (its managed fields), so "the cached child
/// carries this hash" means "applying it again would change nothing the operator owns".
pub fn stamp_applied_hash<K>(object: &mut K) -> Result<String>
where
    K: kube::Resource + Serialize,
{
    if let Some(annotations) = object.meta_mut().annotations.as_mut() {
        annotations.remove(APPLIED_HASH_KEY);
    }
    let json = serde_json::to_vec(object).map_err(|e| DesiredError::Serialize {
        what: "a child object",
        reason: e.to_string(),
    })?;
    let hash = hex::encode(Sha256::digest(&json));
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(APPLIED_HASH_KEY.to_owned(), hash.clone());
    Ok(hash)
}

/// An object to apply, stamped with [`APPLIED_HASH_KEY`].
#[derive(Clone, Debug, PartialEq)]
pub struct Stamped<K> {
    /// The object, carrying its hash.
    pub object: K,
    /// The hash.
    pub hash: String,
}

impl<K: kube::Resource + Serialize> Stamped<K> {
    /// `object`, stamped ([`stamp_applied_hash`]).
    pub fn new(mut object: K) -> Result<Self> {
        let hash = stamp_applied_hash(&mut object)?;
        Ok(Self { object, hash })
    }
}

/// Whether `cached` (the watch cache's copy of a child) was last applied with `hash`.
pub fn applied_with<K: kube::Resource>(cached: Option<&K>, hash: &str) -> bool {
    cached
        .and_then(|c| c.meta().annotations.as_ref())
        .and_then(|a| a.get(APPLIED_HASH_KEY))
        .is_some_and(|h| h == hash)
}

/// Result of this module.
pub type Result<T, E = DesiredError> = std::result::Result<T, E>;

/// Names of a NautilusMaster's children. Names that would exceed Kubernetes' limits are cut and
/// given an 8-hex-digit hash of the full name, so they stay unique and stable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// Namespace of the resource and of every child.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// ConfigMap `<name>-boot`.
    pub boot_config_map: String,
    /// StatefulSet `<name>-enclave`.
    pub statefulset: String,
    /// Pod of the StatefulSet (`<statefulset>-0`).
    pub pod: String,
    /// Service `<name>`.
    pub service: String,
    /// Secret `<name>-kubeconfig`.
    pub kubeconfig_secret: String,
    /// Value of [`CLUSTER_LABEL`].
    pub cluster_label: String,
}

impl Names {
    /// `namespace/name`: the resource's key in the operator's per-cluster state, and the
    /// cluster name in its configuration and kubeconfig.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The names of `nm`'s children.
    pub fn of(nm: &NautilusMaster) -> Result<Self> {
        let name = nm
            .metadata
            .name
            .clone()
            .ok_or(DesiredError::Metadata("name"))?;
        let namespace = nm
            .metadata
            .namespace
            .clone()
            .ok_or(DesiredError::Metadata("namespace"))?;
        let statefulset = bounded(&name, "-enclave", MAX_STATEFULSET_NAME);
        let service = render::service_name(&name);
        Ok(Self {
            boot_config_map: bounded(&name, "-boot", MAX_OBJECT_NAME),
            pod: format!("{statefulset}-0"),
            statefulset,
            service,
            kubeconfig_secret: bounded(&name, "-kubeconfig", MAX_OBJECT_NAME),
            cluster_label: bounded(&name, "", MAX_LABEL_VALUE),
            namespace,
            name,
        })
    }
}

/// Labels every child carries. The first three also select the enclave pod.
pub fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut labels = selector_labels(names);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "nautilus-operator".into(),
    );
    labels.insert("app.kubernetes.io/part-of".into(), "nautilus".into());
    labels
}

/// Labels that select the enclave pod (immutable in the StatefulSet, so never add to them).
pub fn selector_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "nautilus-enclave".into()),
        (
            "app.kubernetes.io/instance".into(),
            names.cluster_label.clone(),
        ),
        (CLUSTER_LABEL.into(), names.cluster_label.clone()),
    ])
}

/// The owner reference every child carries (controller, blocking owner deletion).
pub fn owner_reference(nm: &NautilusMaster) -> Result<OwnerReference> {
    nm.controller_owner_ref(&())
        .ok_or(DesiredError::Metadata("uid"))
}

fn meta(nm: &NautilusMaster, names: &Names, name: &str) -> Result<ObjectMeta> {
    Ok(ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names)),
        owner_references: Some(vec![owner_reference(nm)?]),
        ..ObjectMeta::default()
    })
}

/// The measured configuration the enclave boots with, from the spec
/// ([`nautilus_crds::render::enclave_config`], which `nautilusctl verify` recomputes too).
pub fn enclave_config(nm: &NautilusMaster) -> Result<EnclaveConfig> {
    Ok(render::enclave_config(nm)?)
}

/// The ConfigMap `<name>-boot` holding the BootConfig JSON under [`BOOT_CONFIG_KEY`].
pub fn boot_config_map(nm: &NautilusMaster, names: &Names, boot: &BootConfig) -> Result<ConfigMap> {
    let digest = boot.config.digest_hex();
    let json = serde_json::to_string_pretty(boot).map_err(|err| DesiredError::Serialize {
        what: "boot config",
        reason: err.to_string(),
    })?;
    let mut metadata = meta(nm, names, &names.boot_config_map)?;
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(DIGEST_KEY.into(), digest_label(&digest));
    metadata.annotations = Some(BTreeMap::from([(DIGEST_KEY.into(), digest)]));
    Ok(ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(BOOT_CONFIG_KEY.into(), json)])),
        ..ConfigMap::default()
    })
}

/// The label form of a digest: its first 32 hex digits.
pub fn digest_label(digest_hex: &str) -> String {
    digest_hex.chars().take(32).collect()
}

/// The nonce stored in an existing boot ConfigMap, if it holds the configuration `digest_hex`.
///
/// Reusing it keeps the ConfigMap (and so the running enclave) stable across reconciles and
/// operator restarts; a new configuration gets a new nonce.
pub fn existing_boot_nonce(config_map: &ConfigMap, digest_hex: &str) -> Option<Vec<u8>> {
    let data = config_map.data.as_ref()?;
    let (digest, nonce) = match data.get(BOOT_CONFIG_KEY) {
        Some(json) => {
            let boot: BootConfig = serde_json::from_str(json).ok()?;
            (boot.config.digest_hex(), boot.nonce)
        }
        None => (
            data.get(CACHED_DIGEST_KEY)?.clone(),
            hex::decode(data.get(CACHED_NONCE_KEY)?).ok()?,
        ),
    };
    (digest == digest_hex && !nonce.is_empty()).then_some(nonce)
}

/// Key of the digest in a boot ConfigMap slimmed for the watch cache ([`slim_boot_config_map`]).
const CACHED_DIGEST_KEY: &str = "cached.boot-config-digest";
/// Key of the nonce (hex) in a boot ConfigMap slimmed for the watch cache.
const CACHED_NONCE_KEY: &str = "cached.boot-nonce";

/// Keep of a boot ConfigMap only what reconciles read from the watch cache: the digest of the
/// configuration it holds and its nonce ([`existing_boot_nonce`] reads either form), not the
/// whole configuration; a thousand resources' configurations are megabytes the operator never
/// reads back. The digest is computed from the configuration itself, not taken from the
/// annotation. A ConfigMap that does not hold a boot configuration keeps no data.
pub fn slim_boot_config_map(config_map: &mut ConfigMap) {
    let parsed = config_map
        .data
        .as_ref()
        .and_then(|data| data.get(BOOT_CONFIG_KEY))
        .and_then(|json| serde_json::from_str::<BootConfig>(json).ok());
    config_map.data = parsed.map(|boot| {
        BTreeMap::from([
            (CACHED_DIGEST_KEY.to_owned(), boot.config.digest_hex()),
            (CACHED_NONCE_KEY.to_owned(), hex::encode(&boot.nonce)),
        ])
    });
    config_map.binary_data = None;
}

/// `host:port` of an `https://host[:port][/path]` URL (port 443 when absent), for the sidecar's
/// egress allowlist.
pub fn https_host_port(url: &str) -> Result<String> {
    let err = || DesiredError::SuiRpcUrl { url: url.into() };
    let rest = url.strip_prefix("https://").ok_or_else(err)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err(err());
    }
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(err)?;
        return match after {
            "" => Ok(format!("[{host}]:443")),
            port => {
                let port = port.strip_prefix(':').ok_or_else(err)?;
                port.parse::<u16>().map_err(|_| err())?;
                Ok(format!("[{host}]:{port}"))
            }
        };
    }
    match authority.split_once(':') {
        None => Ok(format!("{authority}:443")),
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(authority.to_owned())
        }
        Some(_) => Err(err()),
    }
}

/// The `host:port` of the KMS endpoint the enclave seals with: `spec.state.kms.endpoint`, or
/// AWS KMS of the key's region. The egress proxy lets the enclave reach it and nothing else.
pub fn kms_host_port(state: &StateSpec) -> Result<String> {
    match &state.kms.endpoint {
        Some(endpoint) => https_host_port(endpoint),
        None => Ok(format!("kms.{}.amazonaws.com:443", state.kms.region)),
    }
}

/// The Service `<name>` in front of the enclave: `httpsPort` → the sidecar's 6443.
pub fn service(nm: &NautilusMaster, names: &Names) -> Result<Service> {
    Ok(Service {
        metadata: meta(nm, names, &names.service)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(names)),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: nm.spec.control_plane.https_port.into(),
                target_port: Some(IntOrString::Int(SIDECAR_API_PORT.into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// The control plane's endpoint through the Service: `https://<svc>.<ns>.svc:<httpsPort>`.
pub fn service_endpoint(nm: &NautilusMaster, names: &Names) -> Result<String> {
    Ok(format!(
        "https://{}.{}.svc:{}",
        names.service, names.namespace, nm.spec.control_plane.https_port
    ))
}

/// The kubeconfig (YAML) for the control plane at `server` trusting `serving_ca_pem`
/// ([`nautilus_crds::render::kubeconfig`], the one `nautilusctl verify` writes too): one
/// cluster, one context, and a user whose credentials come from the `nautilusctl` exec plugin.
/// It holds no credential.
pub fn kubeconfig(nm: &NautilusMaster, server: &str, serving_ca_pem: &str) -> Result<String> {
    Ok(render::kubeconfig(nm, server, serving_ca_pem)?)
}

/// The Secret `<name>-kubeconfig` holding [`kubeconfig`] under [`KUBECONFIG_KEY`].
pub fn kubeconfig_secret(
    nm: &NautilusMaster,
    names: &Names,
    server: &str,
    serving_ca_pem: &str,
) -> Result<Secret> {
    let text = kubeconfig(nm, server, serving_ca_pem)?;
    Ok(Secret {
        metadata: meta(nm, names, &names.kubeconfig_secret)?,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            KUBECONFIG_KEY.into(),
            ByteString(text.into_bytes()),
        )])),
        ..Secret::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::mk_nm;

    use pretty_assertions::assert_eq;
    use rstest::rstest;

    fn boot(nm: &NautilusMaster) -> BootConfig {
        BootConfig {
            config: enclave_config(nm).expect("config"),
            nonce: vec![7; 32],
        }
    }

    #[test]
    fn enclave_config_converts_the_spec() {
        let mut nm = mk_nm("demo");
        nm.spec.control_plane.log_format = nautilus_crds::LogFormat::Json;
        nm.spec.control_plane.tls_min_version = nautilus_crds::TlsMinVersion::VersionTLS13;
        let config = enclave_config(&nm).expect("config");
        assert_eq!(config.cluster, "team-a/demo");
        assert_eq!(config.auth.audience, "team-a/demo");
        assert_eq!(config.control_plane.tls_min_version, "VersionTLS13");
        assert_eq!(config.control_plane.log_level, "info");
        assert_eq!(config.control_plane.log_format, "json");
        assert_eq!(config.auth.tiers.len(), 3);
        assert_eq!(config.auth.tiers[0].name, "admin");
        assert_eq!(config.auth.tiers[0].min_stake_mist, 10_000);
        assert_eq!(config.health.probe_interval_seconds, 5);

        nm.spec.auth.audience = Some("cluster-a.example".into());
        let other = enclave_config(&nm).expect("config");
        assert_eq!(other.auth.audience, "cluster-a.example");
        assert_ne!(config.digest(), other.digest(), "audience is measured");
    }

    #[test]
    fn the_distribution_is_measured_and_absent_when_k3s() {
        let mut nm = mk_nm("demo");
        // `kubernetes` is the CRD's default; an explicit `k3s` keeps the digest it had before
        // (neither the distribution nor the memory budget in the canonical JSON).
        assert_eq!(
            nm.spec.control_plane.distribution,
            nautilus_crds::Distribution::Kubernetes
        );
        nm.spec.control_plane.distribution = nautilus_crds::Distribution::K3s;
        let k3s = enclave_config(&nm).expect("config");
        assert_eq!(k3s.control_plane.distribution, "k3s");
        let json = serde_json::to_string(&k3s).expect("json");
        assert!(!json.contains("distribution"), "default omitted: {json}");
        assert!(!json.contains("memoryMiB"), "k3s carries no budget: {json}");
        nm.spec.control_plane.distribution = nautilus_crds::Distribution::Kubernetes;
        let kubernetes = enclave_config(&nm).expect("config");
        assert_eq!(kubernetes.control_plane.distribution, "kubernetes");
        assert_eq!(
            kubernetes.control_plane.memory_mib,
            Some(nm.spec.enclave.memory_mib),
            "the budget is measured"
        );
        assert_ne!(
            k3s.digest(),
            kubernetes.digest(),
            "distribution is measured"
        );
    }

    #[test]
    fn zklogin_keys_are_measured_and_absent_when_unset() {
        let nm = mk_nm("demo");
        let plain = enclave_config(&nm).expect("config");
        assert!(plain.auth.zk_login.is_none());
        let json = serde_json::to_string(&plain).expect("json");
        assert!(
            !json.contains("zkLogin"),
            "unset zkLogin keeps older digests: {json}"
        );

        let mut with = mk_nm("demo");
        with.spec.auth.zk_login = Some(
            serde_json::from_value(serde_json::json!({
                "verifyingKey": "dev",
                "jwks": [{"iss": "https://oauth.sui.io", "kid": "sui-key-id", "kty": "RSA",
                          "e": "AQAB", "n": "wdar6d", "alg": "RS256"}]
            }))
            .expect("zkLogin spec"),
        );
        let config = enclave_config(&with).expect("config");
        let zk = config.auth.zk_login.as_ref().expect("zkLogin");
        assert_eq!(zk.verifying_key, "dev");
        assert_eq!(zk.jwks[0].kid, "sui-key-id");
        assert_ne!(plain.digest(), config.digest(), "issuer keys are measured");
    }

    #[test]
    fn boot_config_map_carries_the_nonce_and_the_digest() {
        let nm = mk_nm("demo");
        let boot = boot(&nm);
        let digest = boot.config.digest_hex();
        let cm = boot_config_map(&nm, &Names::of(&nm).expect("names"), &boot).expect("configmap");
        assert_eq!(cm.metadata.name.as_deref(), Some("demo-boot"));
        let labels = cm.metadata.labels.as_ref().expect("labels");
        assert_eq!(labels[DIGEST_KEY], digest[..32]);
        assert_eq!(labels[CLUSTER_LABEL], "demo");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "nautilus-operator");
        assert_eq!(
            cm.metadata.annotations.as_ref().expect("ann")[DIGEST_KEY],
            digest
        );
        let parsed: BootConfig =
            serde_json::from_str(&cm.data.as_ref().expect("data")[BOOT_CONFIG_KEY]).expect("json");
        assert_eq!(parsed, boot);
        assert_eq!(existing_boot_nonce(&cm, &digest), Some(vec![7; 32]));
        assert_eq!(
            existing_boot_nonce(&cm, &"00".repeat(32)),
            None,
            "other config"
        );
        // The watch cache's slim copy answers the same, in a fraction of the bytes.
        let mut slim = cm.clone();
        slim_boot_config_map(&mut slim);
        assert_eq!(existing_boot_nonce(&slim, &digest), Some(vec![7; 32]));
        assert_eq!(existing_boot_nonce(&slim, &"00".repeat(32)), None);
        let size = |cm: &ConfigMap| serde_json::to_vec(cm).expect("json").len();
        assert!(
            size(&slim) * 2 < size(&cm),
            "{} vs {}",
            size(&slim),
            size(&cm)
        );
        // Not a boot configuration: nothing kept, no nonce.
        let mut garbage = cm.clone();
        garbage.data = Some(BTreeMap::from([(BOOT_CONFIG_KEY.into(), "{".into())]));
        slim_boot_config_map(&mut garbage);
        assert_eq!(garbage.data, None);
        assert_eq!(existing_boot_nonce(&garbage, &digest), None);
        let owner = &cm.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.kind, "NautilusMaster");
        assert_eq!(owner.uid, "0a1b2c3d-0000-4000-8000-000000000001");
    }

    #[test]
    fn ipv6_bind_address_and_port_reach_the_config_and_the_service() {
        let mut nm = mk_nm("demo");
        nm.spec.control_plane.bind_address = "::".into();
        nm.spec.control_plane.https_port = 16443;
        let config = enclave_config(&nm).expect("config");
        assert_eq!(config.control_plane.bind_address, "::");
        assert_ne!(
            config.digest_hex(),
            enclave_config(&mk_nm("demo")).expect("c").digest_hex()
        );
        let svc = service(&nm, &Names::of(&nm).expect("names")).expect("svc");
        let port = &svc
            .spec
            .as_ref()
            .expect("spec")
            .ports
            .as_ref()
            .expect("ports")[0];
        assert_eq!(port.port, 16443);
        assert_eq!(port.target_port, Some(IntOrString::Int(6443)));
        assert_eq!(port.name.as_deref(), Some("https"));
        assert_eq!(
            service_endpoint(&nm, &Names::of(&nm).expect("names")).expect("endpoint"),
            "https://demo.team-a.svc:16443"
        );
    }

    #[test]
    fn spec_changes_roll_the_enclave() {
        let nm = mk_nm("demo");
        let mut changed = mk_nm("demo");
        changed.spec.health.probe_interval_seconds = 7;
        let a = enclave_config(&nm).expect("a").digest_hex();
        let b = enclave_config(&changed).expect("b").digest_hex();
        assert_ne!(a, b);
        let annotation = |nm: &NautilusMaster, d: &str| {
            enclave_statefulset(
                nm,
                &Names::of(nm).expect("names"),
                d,
                &PodSettings::default(),
            )
            .expect("sts")
            .spec
            .template
            .metadata
            .expect("meta")
            .annotations
            .expect("ann")[DIGEST_KEY]
                .clone()
        };
        assert_ne!(annotation(&nm, &a), annotation(&changed, &b));
    }

    #[rstest]
    #[case::short("demo", "demo-enclave", "demo", "demo-boot")]
    #[case::digit_first("1demo", "1demo-enclave", "nm-1demo", "1demo-boot")]
    fn short_names(#[case] name: &str, #[case] sts: &str, #[case] svc: &str, #[case] cm: &str) {
        let names = Names::of(&mk_nm(name)).expect("names");
        assert_eq!(
            (
                names.statefulset.as_str(),
                names.service.as_str(),
                names.boot_config_map.as_str()
            ),
            (sts, svc, cm)
        );
        assert_eq!(names.pod, format!("{sts}-0"));
    }

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_unique() {
        let long_a = format!("{}-a", "x".repeat(100));
        let long_b = format!("{}-b", "x".repeat(100));
        let a = Names::of(&mk_nm(&long_a)).expect("a");
        let b = Names::of(&mk_nm(&long_b)).expect("b");
        assert!(a.statefulset.len() <= 52, "{}", a.statefulset);
        assert!(a.statefulset.ends_with("-enclave"));
        assert!(a.service.len() <= 63);
        assert!(a.cluster_label.len() <= 63);
        assert_ne!(a.statefulset, b.statefulset);
        assert_ne!(a.service, b.service);
        assert_ne!(a.cluster_label, b.cluster_label);
        assert_eq!(a.boot_config_map, format!("{long_a}-boot"), "fits 253");
        // Stable across calls.
        assert_eq!(a, Names::of(&mk_nm(&long_a)).expect("again"));
        let sts = enclave_statefulset(
            &mk_nm(&long_a),
            &Names::of(&mk_nm(&long_a)).expect("names"),
            "d",
            &PodSettings::default(),
        )
        .expect("s");
        for value in sts.metadata.labels.expect("labels").values() {
            assert!(value.len() <= 63, "{value}");
        }
        let very_long = "y".repeat(253);
        let names = Names::of(&mk_nm(&very_long)).expect("names");
        assert!(names.boot_config_map.len() <= 253);
        assert!(names.kubeconfig_secret.ends_with("-kubeconfig"));
        assert!(names.kubeconfig_secret.len() <= 253);
    }

    #[test]
    fn a_name_cut_before_a_dash_does_not_end_in_a_dash() {
        let name = format!("{}-{}", "a".repeat(42), "b".repeat(40));
        let cut = bounded(&name, "-enclave", 52);
        assert!(!cut.contains("--"), "{cut}");
        assert!(cut.len() <= 52);
    }

    #[test]
    fn missing_metadata_is_an_error() {
        let mut nm = mk_nm("demo");
        nm.metadata.namespace = None;
        assert!(matches!(
            enclave_config(&nm),
            Err(DesiredError::Metadata("namespace"))
        ));
        let mut nm = mk_nm("demo");
        nm.metadata.uid = None;
        assert!(matches!(
            service(&nm, &Names::of(&nm).expect("names")),
            Err(DesiredError::Metadata("uid"))
        ));
    }

    #[rstest]
    #[case(
        "https://fullnode.mainnet.sui.io:443",
        Some("fullnode.mainnet.sui.io:443")
    )]
    #[case("https://fullnode.mainnet.sui.io", Some("fullnode.mainnet.sui.io:443"))]
    #[case("https://node.example:9000/grpc", Some("node.example:9000"))]
    #[case("https://[::1]:9000", Some("[::1]:9000"))]
    #[case("https://[2001:db8::1]", Some("[2001:db8::1]:443"))]
    #[case("http://node.example", None)]
    #[case("https://", None)]
    #[case("https://user@node.example", None)]
    #[case("https://node.example:99999", None)]
    #[case("https://[::1", None)]
    fn sui_url_to_egress_allowlist(#[case] url: &str, #[case] expected: Option<&str>) {
        assert_eq!(https_host_port(url).ok().as_deref(), expected);
    }

    #[test]
    fn kubeconfig_trusts_the_attested_ca_and_holds_no_credentials() {
        use base64::Engine as _;
        let mut nm = mk_nm("demo");
        nm.spec.auth.max_token_lifetime_seconds = 300;
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let secret = kubeconfig_secret(
            &nm,
            &Names::of(&nm).expect("names"),
            "https://demo.team-a.svc:6443",
            pem,
        )
        .expect("secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-kubeconfig"));
        let bytes = &secret.data.as_ref().expect("data")[KUBECONFIG_KEY].0;
        let config: serde_json::Value = serde_yaml::from_slice(bytes).expect("yaml");
        let cluster = &config["clusters"][0]["cluster"];
        assert_eq!(cluster["server"], "https://demo.team-a.svc:6443");
        let ca = base64::engine::general_purpose::STANDARD
            .decode(cluster["certificate-authority-data"].as_str().expect("ca"))
            .expect("base64");
        assert_eq!(ca, pem.as_bytes());
        let user = &config["users"][0]["user"];
        let exec = &user["exec"];
        assert_eq!(exec["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(exec["command"], "nautilusctl");
        assert_eq!(
            exec["args"],
            serde_json::json!([
                "token",
                "exec-credential",
                "--audience",
                "team-a/demo",
                "--ttl",
                "300s"
            ])
        );
        assert_eq!(exec["interactiveMode"], "Never");
        let user_keys: Vec<_> = user.as_object().expect("obj").keys().collect();
        assert_eq!(
            user_keys,
            ["exec"],
            "no token, no client certificate, no password"
        );
        assert_eq!(config["current-context"], "team-a/demo");
        assert_eq!(config["contexts"][0]["context"]["user"], "seal-token");
    }
}
