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

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, ImageVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    Secret, SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource as _;
use nautilus_crds::render::{self, RenderError, bounded_name as bounded};
use nautilus_crds::{HugepageSize, NautilusMaster, StateDeletionPolicy, StateSpec};
use nautilus_protocol::wire::{BootConfig, EnclaveConfig};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

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
pub fn boot_config_map(nm: &NautilusMaster, boot: &BootConfig) -> Result<ConfigMap> {
    let names = Names::of(nm)?;
    let digest = boot.config.digest_hex();
    let json = serde_json::to_string_pretty(boot).map_err(|err| DesiredError::Serialize {
        what: "boot config",
        reason: err.to_string(),
    })?;
    let mut metadata = meta(nm, &names, &names.boot_config_map)?;
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

/// Settings of the enclave pod that come from the operator's flags, not from the spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSettings {
    /// Image of the `nautilus-sidecar` container.
    pub sidecar_image: String,
    /// `--log-format` of the sidecar.
    pub log_format: String,
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            sidecar_image: "ghcr.io/nautilus-operator/nautilus-sidecar:0.1.0".into(),
            log_format: "json".into(),
        }
    }
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

/// The hugepages resource name, the emptyDir medium and the quantity covering `memory_mib`.
fn hugepages(size: HugepageSize, memory_mib: u32) -> (&'static str, &'static str, Quantity) {
    match size {
        HugepageSize::TwoMi => (
            "hugepages-2Mi",
            "HugePages-2Mi",
            // 2 MiB pages: round up to an even number of MiB.
            Quantity(format!("{}Mi", memory_mib.div_ceil(2) * 2)),
        ),
        HugepageSize::OneGi => (
            "hugepages-1Gi",
            "HugePages-1Gi",
            Quantity(format!("{}Gi", memory_mib.div_ceil(1024))),
        ),
    }
}

/// Arguments of the sidecar in the `pod` runtime (nitro launcher).
pub fn sidecar_args(nm: &NautilusMaster, settings: &PodSettings) -> Result<Vec<String>> {
    let enclave = &nm.spec.enclave;
    let eif = format!(
        "{ENCLAVE_IMAGE_DIR}/{}",
        enclave.eif_path.trim_start_matches('/')
    );
    let mut args = vec![
        format!("--boot-config={BOOT_CONFIG_DIR}/{BOOT_CONFIG_KEY}"),
        "--launcher=nitro".into(),
        format!("--eif-path={eif}"),
        format!("--cpu-count={}", enclave.cpu_count),
        format!("--memory-mib={}", enclave.memory_mib),
    ];
    if let Some(cid) = enclave.enclave_cid {
        args.push(format!("--enclave-cid={cid}"));
    }
    args.extend([
        format!("--http-listen=0.0.0.0:{SIDECAR_HTTP_PORT}"),
        format!("--api-listen=0.0.0.0:{SIDECAR_API_PORT}"),
        format!(
            "--egress-allow={}",
            https_host_port(&nm.spec.auth.sui_rpc_url)?
        ),
        format!("--log-format={}", settings.log_format),
    ]);
    if let Some(state) = &nm.spec.state {
        args.push(format!("--egress-allow={}", kms_host_port(state)?));
        args.push(format!("--state-dir={STATE_DIR}"));
    }
    Ok(args)
}

/// Where the pod runtime's sidecar keeps sealed snapshots: the `state` volume claim.
pub const STATE_DIR: &str = "/var/lib/nautilus/state";
/// The sidecar image's group (`images/sidecar.Dockerfile`: `USER 65532:65532`), the owner the
/// kubelet gives the `state` volume.
pub const SIDECAR_GID: i64 = 65532;
/// The StatefulSet's volume claim template for [`STATE_DIR`].
pub const STATE_VOLUME: &str = "state";

/// Whether the volume claim templates of `existing` differ from those of `wanted` in what
/// the operator sets (names, size, storage class): such a StatefulSet cannot be updated and is
/// replaced. Fields the API server defaults (volume mode, status) do not count.
pub fn claims_differ(existing: &StatefulSet, wanted: &StatefulSet) -> bool {
    fn key(sts: &StatefulSet) -> Vec<(Option<String>, Option<Quantity>, Option<String>)> {
        sts.spec
            .volume_claim_templates
            .iter()
            .flatten()
            .map(|c| {
                let spec = c.spec.as_ref();
                (
                    c.metadata.name.clone(),
                    spec.and_then(|s| s.resources.as_ref())
                        .and_then(|r| r.requests.as_ref())
                        .and_then(|r| r.get("storage").cloned()),
                    spec.and_then(|s| s.storage_class_name.clone()),
                )
            })
            .collect()
    }
    key(existing) != key(wanted)
}

/// The `host:port` of the KMS endpoint the enclave seals with: `spec.state.kms.endpoint`, or
/// AWS KMS of the key's region. The egress proxy lets the enclave reach it and nothing else.
pub fn kms_host_port(state: &StateSpec) -> Result<String> {
    match &state.kms.endpoint {
        Some(endpoint) => https_host_port(endpoint),
        None => Ok(format!("kms.{}.amazonaws.com:443", state.kms.region)),
    }
}

/// The volume claim template that holds the sealed snapshots, and what happens to the claim
/// when the StatefulSet goes (`spec.state.deletionPolicy`).
fn state_claim(
    state: &StateSpec,
) -> (
    PersistentVolumeClaim,
    StatefulSetPersistentVolumeClaimRetentionPolicy,
) {
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(STATE_VOLUME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: state.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    state.storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    let when_deleted = match state.deletion_policy {
        StateDeletionPolicy::Retain => "Retain",
        StateDeletionPolicy::Delete => "Delete",
    };
    let policy = StatefulSetPersistentVolumeClaimRetentionPolicy {
        when_deleted: Some(when_deleted.into()),
        when_scaled: Some("Retain".into()),
    };
    (claim, policy)
}

/// The single-replica StatefulSet `<name>-enclave` whose sidecar launches the enclave.
pub fn enclave_statefulset(
    nm: &NautilusMaster,
    digest_hex: &str,
    settings: &PodSettings,
) -> Result<StatefulSet> {
    let names = Names::of(nm)?;
    let enclave = &nm.spec.enclave;
    let (hp_resource, hp_medium, hp_quantity) =
        hugepages(enclave.hugepage_size, enclave.memory_mib);
    let limits = BTreeMap::from([
        (NITRO_RESOURCE.to_owned(), Quantity("1".into())),
        (hp_resource.to_owned(), hp_quantity),
        // Kubernetes requires cpu or memory beside hugepages; these are the sidecar's own needs.
        ("cpu".to_owned(), Quantity("500m".into())),
        ("memory".to_owned(), Quantity("256Mi".into())),
    ]);
    let mut requests = limits.clone();
    requests.insert("cpu".into(), Quantity("100m".into()));
    requests.insert("memory".into(), Quantity("128Mi".into()));

    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    };
    let empty_dir = |name: &str, medium: Option<&str>| Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(Into::into),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    };
    let probe_period = i32::try_from(nm.spec.health.probe_interval_seconds).unwrap_or(5);

    let container = Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(settings.sidecar_image.clone()),
        args: Some(sidecar_args(nm, settings)?),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: SIDECAR_HTTP_PORT.into(),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("https".into()),
                container_port: SIDECAR_API_PORT.into(),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            limits: Some(limits),
            requests: Some(requests),
            ..ResourceRequirements::default()
        }),
        readiness_probe: Some(probe("/readyz", probe_period)),
        liveness_probe: Some(probe("/healthz", 10)),
        security_context: Some(SecurityContext {
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("boot-config", BOOT_CONFIG_DIR, true),
            mount("enclave-image", ENCLAVE_IMAGE_DIR, true),
            mount("hugepages", "/dev/hugepages", false),
            // nitro-cli keeps its sockets and logs here; the root filesystem is read-only.
            mount("nitro-run", "/run/nitro_enclaves", false),
            mount("nitro-log", "/var/log/nitro_enclaves", false),
        ]),
        ..Container::default()
    };
    let mut container = container;
    if nm.spec.state.is_some()
        && let Some(mounts) = container.volume_mounts.as_mut()
    {
        mounts.push(mount(STATE_VOLUME, STATE_DIR, false));
    }
    let (claims, retention) = match &nm.spec.state {
        Some(state) => {
            let (claim, policy) = state_claim(state);
            (Some(vec![claim]), Some(policy))
        }
        None => (None, None),
    };

    let node_selector = enclave.node_selector.clone().unwrap_or_else(|| {
        BTreeMap::from([(NITRO_NODE_LABEL.0.into(), NITRO_NODE_LABEL.1.into())])
    });
    let pod = PodSpec {
        containers: vec![container],
        // The namespace's default ServiceAccount with no token mounted: the sidecar and the
        // enclave never call the host's API server, and nothing has to be created per tenant
        // namespace (the operator may not create ServiceAccounts).
        service_account_name: None,
        automount_service_account_token: Some(false),
        node_selector: Some(node_selector),
        tolerations: enclave.tolerations.clone(),
        // Time for the sidecar to stop the enclave on SIGTERM: the agent seals and hands over a
        // last snapshot, then stops its control plane (the nested budgets of `stop`).
        termination_grace_period_seconds: Some(
            i64::try_from(nautilus_protocol::constants::stop::HOST.as_secs()).unwrap_or(i64::MAX),
        ),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            // The sidecar image's user (65532) writes the sealed snapshots on the `state`
            // claim: a fresh volume is root's until the kubelet gives it this group.
            fs_group: nm.spec.state.as_ref().map(|_| SIDECAR_GID),
            fs_group_change_policy: nm.spec.state.as_ref().map(|_| "OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![
            Volume {
                name: "boot-config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names.boot_config_map.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "enclave-image".into(),
                image: Some(ImageVolumeSource {
                    reference: Some(enclave.image.clone()),
                    pull_policy: Some("IfNotPresent".into()),
                }),
                ..Volume::default()
            },
            empty_dir("hugepages", Some(hp_medium)),
            empty_dir("nitro-run", None),
            empty_dir("nitro-log", None),
        ]),
        ..PodSpec::default()
    };

    let mut template_labels = labels(&names);
    template_labels.insert(DIGEST_KEY.into(), digest_label(digest_hex));
    Ok(StatefulSet {
        metadata: meta(nm, &names, &names.statefulset)?,
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names.service.clone()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&names)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(BTreeMap::from([
                        (DIGEST_KEY.into(), digest_hex.to_owned()),
                        (OWNER_NAME_KEY.into(), names.name.clone()),
                    ])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            volume_claim_templates: claims,
            persistent_volume_claim_retention_policy: retention,
            ..StatefulSetSpec::default()
        },
        ..StatefulSet::default()
    })
}

/// The Service `<name>` in front of the enclave: `httpsPort` → the sidecar's 6443.
pub fn service(nm: &NautilusMaster) -> Result<Service> {
    let names = Names::of(nm)?;
    Ok(Service {
        metadata: meta(nm, &names, &names.service)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&names)),
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
pub fn service_endpoint(nm: &NautilusMaster) -> Result<String> {
    let names = Names::of(nm)?;
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
    server: &str,
    serving_ca_pem: &str,
) -> Result<Secret> {
    let names = Names::of(nm)?;
    let text = kubeconfig(nm, server, serving_ca_pem)?;
    Ok(Secret {
        metadata: meta(nm, &names, &names.kubeconfig_secret)?,
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
    use crate::fixtures::{PCR, mk_nm};
    use k8s_openapi::api::core::v1::Toleration;
    use nautilus_crds::HugepageSize;
    use pretty_assertions::assert_eq;
    use rstest::rstest;

    fn boot(nm: &NautilusMaster) -> BootConfig {
        BootConfig {
            config: enclave_config(nm).expect("config"),
            nonce: vec![7; 32],
        }
    }

    fn container(sts: &StatefulSet) -> &Container {
        &sts.spec.template.spec.as_ref().expect("pod").containers[0]
    }

    fn pod(sts: &StatefulSet) -> &PodSpec {
        sts.spec.template.spec.as_ref().expect("pod")
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
        let cm = boot_config_map(&nm, &boot).expect("configmap");
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
    fn sealed_state_gets_a_claim_a_mount_the_kms_egress_and_the_deletion_policy() {
        let mut nm = mk_nm("demo");
        let plain =
            enclave_statefulset(&nm, &"ab".repeat(32), &PodSettings::default()).expect("sts");
        assert!(plain.spec.volume_claim_templates.is_none());
        nm.spec.state = Some(StateSpec {
            deletion_policy: StateDeletionPolicy::Delete,
            storage: nautilus_crds::StateStorageSpec {
                size: Quantity("3Gi".into()),
                storage_class_name: Some("gp3".into()),
            },
            ..kept_state()
        });
        let sts = enclave_statefulset(&nm, &"ab".repeat(32), &PodSettings::default()).expect("sts");
        let spec = &sts.spec;
        let claims = spec.volume_claim_templates.as_ref().expect("claims");
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some(STATE_VOLUME));
        let claim = claims[0].spec.as_ref().expect("claim spec");
        assert_eq!(claim.storage_class_name.as_deref(), Some("gp3"));
        assert_eq!(
            claim
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .expect("requests")["storage"],
            Quantity("3Gi".into())
        );
        let retention = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .expect("retention");
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        let c = container(&sts);
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == STATE_VOLUME && m.mount_path == STATE_DIR)
        );
        let args = c.args.as_ref().expect("args");
        assert!(args.contains(&"--egress-allow=kms.eu-west-1.amazonaws.com:443".to_owned()));
        assert!(args.contains(&format!("--state-dir={STATE_DIR}")));
        let pod_security = sts
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|p| p.security_context.as_ref())
            .expect("pod security context");
        assert_eq!(pod_security.fs_group, Some(SIDECAR_GID));
        // An endpoint override is what the enclave may reach instead.
        if let Some(state) = nm.spec.state.as_mut() {
            state.kms.endpoint = Some("https://vpce-1.kms.eu-west-1.vpce.amazonaws.com".into());
            state.deletion_policy = StateDeletionPolicy::Retain;
        }
        let sts = enclave_statefulset(&nm, &"ab".repeat(32), &PodSettings::default()).expect("sts");
        let args = container(&sts).args.clone().expect("args");
        assert!(
            args.contains(&"--egress-allow=vpce-1.kms.eu-west-1.vpce.amazonaws.com:443".to_owned()),
            "{args:?}"
        );
        assert_eq!(
            sts.spec
                .persistent_volume_claim_retention_policy
                .as_ref()
                .and_then(|r| r.when_deleted.as_deref()),
            Some("Retain")
        );
    }

    /// A `spec.state` with the schema's defaults and an AWS KMS key.
    fn kept_state() -> StateSpec {
        StateSpec {
            kms: nautilus_crds::KmsKeySpec {
                key_id: "alias/nautilus".into(),
                region: "eu-west-1".into(),
                endpoint: None,
            },
            backup_interval_seconds: 300,
            retain: 5,
            deletion_policy: StateDeletionPolicy::Retain,
            ca_generation: 0,
            restore_from_uids: Vec::new(),
            accepted_measurements: Vec::new(),
            storage: nautilus_crds::StateStorageSpec::default(),
        }
    }

    #[test]
    fn claim_templates_that_differ_replace_the_statefulset_and_defaults_do_not() {
        let plain = mk_nm("demo");
        let mut kept = mk_nm("demo");
        kept.spec.state = Some(kept_state());
        let sts = |nm: &NautilusMaster| {
            enclave_statefulset(nm, &"ab".repeat(32), &PodSettings::default()).expect("sts")
        };
        assert!(!claims_differ(&sts(&plain), &sts(&plain)));
        assert!(claims_differ(&sts(&plain), &sts(&kept)));
        assert!(claims_differ(&sts(&kept), &sts(&plain)));
        // What the API server adds to a stored claim template changes nothing.
        let mut stored = sts(&kept);
        for claim in stored.spec.volume_claim_templates.iter_mut().flatten() {
            if let Some(spec) = claim.spec.as_mut() {
                spec.volume_mode = Some("Filesystem".into());
            }
        }
        assert!(!claims_differ(&stored, &sts(&kept)));
        let mut bigger = kept.clone();
        if let Some(state) = bigger.spec.state.as_mut() {
            state.storage.size = Quantity("10Gi".into());
        }
        assert!(claims_differ(&stored, &sts(&bigger)));
    }

    #[test]
    fn statefulset_runs_the_sidecar_with_nitro_resources_and_no_privileges() {
        let nm = mk_nm("demo");
        let sts = enclave_statefulset(&nm, &"ab".repeat(32), &PodSettings::default()).expect("sts");
        assert_eq!(sts.metadata.name.as_deref(), Some("demo-enclave"));
        let spec = &sts.spec;
        assert_eq!(spec.replicas, Some(1));
        let template_meta = spec.template.metadata.as_ref().expect("meta");
        assert_eq!(
            template_meta.annotations.as_ref().expect("ann")[DIGEST_KEY],
            "ab".repeat(32)
        );
        let c = container(&sts);
        assert_eq!(c.name, SIDECAR_CONTAINER);
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/nautilus-operator/nautilus-sidecar:0.1.0")
        );
        let args = c.args.as_ref().expect("args");
        for expected in [
            "--boot-config=/etc/nautilus/boot-config.json",
            "--launcher=nitro",
            "--eif-path=/enclave-image/nautilus/enclave.eif",
            "--cpu-count=2",
            "--memory-mib=4096",
            "--egress-allow=fullnode.mainnet.sui.io:443",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        assert!(!args.iter().any(|a| a.starts_with("--enclave-cid")));
        let resources = c.resources.as_ref().expect("resources");
        for map in [&resources.limits, &resources.requests] {
            let map = map.as_ref().expect("set");
            assert_eq!(map[NITRO_RESOURCE], Quantity("1".into()));
            assert_eq!(map["hugepages-2Mi"], Quantity("4096Mi".into()));
        }
        let sc = c.security_context.as_ref().expect("sc");
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().expect("caps").drop,
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(
            sc.seccomp_profile.as_ref().expect("seccomp").type_,
            "RuntimeDefault"
        );
        let readiness = c.readiness_probe.as_ref().expect("readiness");
        let get = readiness.http_get.as_ref().expect("http");
        assert_eq!(get.path.as_deref(), Some("/readyz"));
        assert_eq!(get.port, IntOrString::String("http".into()));
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .expect("liveness")
                .http_get
                .as_ref()
                .expect("http")
                .path
                .as_deref(),
            Some("/healthz")
        );
        assert!(
            c.ports
                .as_ref()
                .expect("ports")
                .iter()
                .any(|p| p.container_port == 8080 && p.name.as_deref() == Some("http"))
        );

        let pod = pod(&sts);
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name, None);
        assert_eq!(
            pod.node_selector.as_ref().expect("selector"),
            &BTreeMap::from([("aws-nitro-enclaves-k8s-dp".to_owned(), "enabled".to_owned())])
        );
        let volumes = pod.volumes.as_ref().expect("volumes");
        let hp = volumes
            .iter()
            .find(|v| v.name == "hugepages")
            .expect("hugepages");
        assert_eq!(
            hp.empty_dir.as_ref().expect("emptyDir").medium.as_deref(),
            Some("HugePages-2Mi")
        );
        let image = volumes
            .iter()
            .find(|v| v.name == "enclave-image")
            .expect("image");
        assert_eq!(
            image
                .image
                .as_ref()
                .expect("image volume")
                .reference
                .as_deref(),
            Some("registry.example.com/nautilus/enclave:v1")
        );
        assert!(
            volumes.iter().all(|v| v.host_path.is_none()),
            "no host paths"
        );
        let cm = volumes
            .iter()
            .find(|v| v.name == "boot-config")
            .expect("cm");
        assert_eq!(cm.config_map.as_ref().expect("cm").name, "demo-boot");
    }

    #[rstest]
    #[case::two_mi_exact(HugepageSize::TwoMi, 4096, "hugepages-2Mi", "4096Mi", "HugePages-2Mi")]
    #[case::two_mi_odd(HugepageSize::TwoMi, 4097, "hugepages-2Mi", "4098Mi", "HugePages-2Mi")]
    #[case::one_gi_exact(HugepageSize::OneGi, 4096, "hugepages-1Gi", "4Gi", "HugePages-1Gi")]
    #[case::one_gi_round_up(HugepageSize::OneGi, 1500, "hugepages-1Gi", "2Gi", "HugePages-1Gi")]
    fn hugepages_cover_the_enclave_memory(
        #[case] size: HugepageSize,
        #[case] memory_mib: u32,
        #[case] resource: &str,
        #[case] quantity: &str,
        #[case] medium: &str,
    ) {
        let mut nm = mk_nm("demo");
        nm.spec.enclave.hugepage_size = size;
        nm.spec.enclave.memory_mib = memory_mib;
        let sts = enclave_statefulset(&nm, "d", &PodSettings::default()).expect("sts");
        let limits = container(&sts)
            .resources
            .as_ref()
            .expect("r")
            .limits
            .clone()
            .expect("l");
        assert_eq!(limits[resource], Quantity(quantity.into()));
        let other = if resource == "hugepages-2Mi" {
            "hugepages-1Gi"
        } else {
            "hugepages-2Mi"
        };
        assert!(!limits.contains_key(other));
        let hp = pod(&sts)
            .volumes
            .as_ref()
            .expect("v")
            .iter()
            .find(|v| v.name == "hugepages")
            .cloned()
            .expect("hugepages");
        assert_eq!(hp.empty_dir.expect("e").medium.as_deref(), Some(medium));
        assert!(
            container(&sts)
                .args
                .as_ref()
                .expect("args")
                .contains(&format!("--memory-mib={memory_mib}"))
        );
    }

    #[test]
    fn custom_node_selector_tolerations_cid_and_pcr8() {
        let mut nm = mk_nm("demo");
        nm.spec.enclave.node_selector =
            Some(BTreeMap::from([("pool".to_owned(), "nitro".to_owned())]));
        nm.spec.enclave.tolerations = Some(vec![Toleration {
            key: Some("aws-nitro-enclaves".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]);
        nm.spec.enclave.enclave_cid = Some(16);
        nm.spec.enclave.pcr8 = Some(PCR.into());
        let before = enclave_config(&mk_nm("demo")).expect("c").digest_hex();
        let sts = enclave_statefulset(&nm, &before, &PodSettings::default()).expect("sts");
        let pod = pod(&sts);
        assert_eq!(
            pod.node_selector.as_ref().expect("selector"),
            &BTreeMap::from([("pool".to_owned(), "nitro".to_owned())]),
            "the spec replaces the default selector"
        );
        assert_eq!(pod.tolerations.as_ref().expect("tolerations").len(), 1);
        assert!(
            container(&sts)
                .args
                .as_ref()
                .expect("args")
                .contains(&"--enclave-cid=16".to_owned())
        );
        // PCR8 is verified by the operator, not part of what the enclave boots with.
        assert_eq!(enclave_config(&nm).expect("c").digest_hex(), before);
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
        let svc = service(&nm).expect("svc");
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
            service_endpoint(&nm).expect("endpoint"),
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
            enclave_statefulset(nm, d, &PodSettings::default())
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
        let sts = enclave_statefulset(&mk_nm(&long_a), "d", &PodSettings::default()).expect("s");
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
        assert!(matches!(service(&nm), Err(DesiredError::Metadata("uid"))));
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
        let secret = kubeconfig_secret(&nm, "https://demo.team-a.svc:6443", pem).expect("secret");
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
