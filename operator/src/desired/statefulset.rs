//! The enclave StatefulSet of the pod runtime: one pod on a Nitro node running the sidecar
//! (nitro launcher) with the enclave image, hugepages for the enclave's memory, and, with
//! `spec.state`, the volume claim that holds the sealed snapshots.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    HTTPGetAction, ImageVolumeSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecurityContext, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use nautilus_crds::{HugepageSize, NautilusMaster, StateDeletionPolicy, StateSpec};

use super::*;

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
    names: &Names,
    digest_hex: &str,
    settings: &PodSettings,
) -> Result<StatefulSet> {
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

    let mut template_labels = labels(names);
    template_labels.insert(DIGEST_KEY.into(), digest_label(digest_hex));
    Ok(StatefulSet {
        metadata: meta(nm, names, &names.statefulset)?,
        spec: StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names.service.clone()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(names)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{PCR, mk_nm};
    use k8s_openapi::api::core::v1::Toleration;
    use pretty_assertions::assert_eq;
    use rstest::rstest;

    fn container(sts: &StatefulSet) -> &Container {
        &sts.spec.template.spec.as_ref().expect("pod").containers[0]
    }

    /// The StatefulSet of `nm` with a fixed digest and default settings.
    fn sts_of(nm: &NautilusMaster) -> StatefulSet {
        enclave_statefulset(
            nm,
            &Names::of(nm).expect("names"),
            &"ab".repeat(32),
            &PodSettings::default(),
        )
        .expect("sts")
    }

    fn pod(sts: &StatefulSet) -> &PodSpec {
        sts.spec.template.spec.as_ref().expect("pod")
    }

    #[test]
    fn sealed_state_gets_a_claim_a_mount_the_kms_egress_and_the_deletion_policy() {
        let mut nm = mk_nm("demo");
        let plain = sts_of(&nm);
        assert!(plain.spec.volume_claim_templates.is_none());
        nm.spec.state = Some(StateSpec {
            deletion_policy: StateDeletionPolicy::Delete,
            storage: nautilus_crds::StateStorageSpec {
                size: Quantity("3Gi".into()),
                storage_class_name: Some("gp3".into()),
            },
            ..kept_state()
        });
        let sts = sts_of(&nm);
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
        let sts = sts_of(&nm);
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
        let sts = sts_of;
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
        let sts = sts_of(&nm);
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
        let sts = enclave_statefulset(
            &nm,
            &Names::of(&nm).expect("names"),
            "d",
            &PodSettings::default(),
        )
        .expect("sts");
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
        let sts = enclave_statefulset(
            &nm,
            &Names::of(&nm).expect("names"),
            &before,
            &PodSettings::default(),
        )
        .expect("sts");
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
}
