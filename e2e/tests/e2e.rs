//! The whole system as a user drives it, against a real API server: a throwaway control plane
//! from `$KUBEBUILDER_ASSETS`, else the cluster `KUBECONFIG` names, else one `skipped:` line per
//! test (a failure with `NAUTILUS_E2E_REQUIRE=1`); see `nautilus_e2e::cluster`.

use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams};
use nautilus_e2e::{CONDITIONS, Harness, WAIT, cluster, condition, is, self_subject_review};
use nautilus_seal::unix_now;

fn ready(nm: &nautilus_crds::NautilusMaster) -> bool {
    is(nm, "Ready", "True")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn becomes_ready_and_admits_a_staked_seal_token() {
    let Some(cluster) = cluster("becomes_ready_and_admits_a_staked_seal_token").await else {
        return;
    };
    let h = Harness::start(cluster, "ready", None).await;
    h.create("demo", h.development_spec()).await;
    let nm = h.wait_for("demo", "Ready=True", WAIT, ready).await;

    let status = nm.status.clone().expect("status");
    assert_eq!(status.observed_generation, nm.metadata.generation);
    for type_ in CONDITIONS {
        assert_eq!(
            condition(&nm, type_).map(|(s, _)| s).as_deref(),
            Some("True"),
            "{type_}"
        );
    }
    // Simulated evidence is accepted only because the spec allows it, and says so.
    assert_eq!(
        condition(&nm, "Attested").map(|(_, r)| r).as_deref(),
        Some("SimulatedAttestation")
    );
    let attestation = status.attestation.expect("attestation summary");
    assert!(attestation.simulated);
    assert!(!attestation.debug_mode);
    assert_eq!(attestation.pcr0_prefix, "10".repeat(8));
    assert_eq!(attestation.pcrs.get("0"), Some(&"10".repeat(48)));
    assert_eq!(
        status.placement.and_then(|p| p.runtime).as_deref(),
        Some("local")
    );
    let endpoint = status.endpoint.expect("endpoint");
    assert!(endpoint.starts_with("https://"), "{endpoint}");
    let secret_ref = status.kubeconfig_secret_ref.expect("kubeconfig reference");
    assert_eq!(secret_ref.name, "demo-kubeconfig");

    // A seal token for the staked key, through the published kubeconfig (attested CA) and the
    // control plane's TokenReview webhook, as kubectl would present it.
    let token = h
        .staker
        .mint_for(&nm.token_audience(), unix_now(), 600)
        .expect("mint");
    let enclave = h.client_with_token("demo", &token).await;
    let review = self_subject_review(&enclave)
        .await
        .expect("the control plane admits the staked token");
    let user = &review["status"]["userInfo"];
    assert_eq!(user["username"], format!("sui:{}", h.staker.address()));
    assert!(
        user["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "system:masters")),
        "{user}"
    );

    if h.distribution == "kubernetes" {
        tiers_map_onto_real_rbac(&h, &nm, &enclave).await;
    }

    // A key without stake is refused.
    let broke = nautilus_seal::signer::generate_key(nautilus_seal::SignatureScheme::Ed25519)
        .expect("key")
        .mint_for(&nm.token_audience(), unix_now(), 600)
        .expect("mint");
    let refused = self_subject_review(&h.client_with_token("demo", &broke).await).await;
    assert!(refused.is_err(), "an unstaked token must be refused");

    // Idle costs nothing: with nothing changing, five probe intervals (each one a new signed
    // report the operator verifies) write neither the resource nor its kubeconfig Secret.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(h.client.clone(), &h.namespace);
    let snapshot = || async {
        let nm = h.masters().get("demo").await.expect("get demo");
        let secret = secrets.get("demo-kubeconfig").await.expect("get secret");
        (nm, secret.metadata.resource_version)
    };
    let (nm_before, secret_before) = snapshot().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (nm_after, secret_after) = snapshot().await;
    assert_eq!(
        secret_after, secret_before,
        "the kubeconfig Secret was rewritten"
    );
    assert_eq!(
        nm_after.metadata.resource_version,
        nm_before.metadata.resource_version,
        "a Ready resource was written while nothing changed: status before {}, after {}",
        serde_json::to_string(&nm_before.status).unwrap_or_default(),
        serde_json::to_string(&nm_after.status).unwrap_or_default(),
    );
    h.finish().await;
}

/// Retry `op` for up to 30 s while it fails (RBAC's aggregated roles and the default
/// ServiceAccount appear a few seconds after the controller manager starts).
/// [`nautilus_e2e::eventually`] within 30 s.
async fn eventually<T, F, Fut>(what: &str, op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    nautilus_e2e::eventually(Duration::from_secs(30), what, op).await
}

/// The reader tier (`nautilus:readers`, bound to `view`) can list pods and cannot create one;
/// the admin tier (`system:masters`) can.
async fn tiers_map_onto_real_rbac(
    h: &Harness,
    nm: &nautilus_crds::NautilusMaster,
    admin: &kube::Client,
) {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, PostParams};
    let reader_token = h
        .reader
        .mint_for(&nm.token_audience(), unix_now(), 600)
        .expect("mint");
    let reader = h.client_with_token("demo", &reader_token).await;
    let as_reader: Api<Pod> = Api::namespaced(reader, "default");
    let as_admin: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let list = kube::api::ListParams::default();
    eventually("the reader tier lists pods", || as_reader.list(&list)).await;
    let pod = |name: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "registry.example.com/pause:1"}]},
        }))
        .expect("pod")
    };
    match as_reader
        .create(&PostParams::default(), &pod("by-reader"))
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("the reader tier must not create pods: {other:?}"),
    }
    let (params, by_admin) = (PostParams::default(), pod("by-admin"));
    eventually("the admin tier creates a pod", || {
        as_admin.create(&params, &by_admin)
    })
    .await;
    let seen = as_reader.get("by-admin").await.expect("the reader gets it");
    assert_eq!(seen.metadata.name.as_deref(), Some("by-admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_control_plane_is_reported_and_recovers() {
    let Some(cluster) = cluster("a_killed_control_plane_is_reported_and_recovers").await else {
        return;
    };
    let h = Harness::start(cluster, "kill", None).await;
    h.create("demo", h.development_spec()).await;
    h.wait_for("demo", "Ready=True", WAIT, ready).await;

    // One probe interval (1 s) plus the operator's reconcile: well inside 20 s.
    h.kill_the_api_server_and_see_it_recover("demo", Duration::from_secs(20), WAIT)
        .await;
    h.finish().await;
}

/// The operator follows each sidecar's evidence (a long poll of `/report`), so what the enclave
/// reports reaches the status without waiting for the next probe interval: with the interval at
/// 300 s (the longest the CRD takes), the boot, the attestation and a killed kube-apiserver are
/// all seen long before the first requeue could have come. Without following, `Ready=True`
/// would come no sooner than 300 s after the sidecar started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enclave_changes_are_seen_without_waiting_for_the_probe_interval() {
    let Some(cluster) =
        cluster("enclave_changes_are_seen_without_waiting_for_the_probe_interval").await
    else {
        return;
    };
    let h = Harness::start(cluster, "follow", None).await;
    let mut spec = h.development_spec();
    spec.health.probe_interval_seconds = 300;
    // The CRD wants it longer than the interval.
    spec.health.startup_timeout_seconds = 600;
    // Well under the interval, and as long as any boot here takes under load.
    let within = Duration::from_secs(120);
    h.create("demo", spec).await;
    h.wait_for("demo", "Ready=True", within, ready).await;

    // The agent reports at once when a component exits, and again as soon as it is back.
    h.kill_the_api_server_and_see_it_recover("demo", within, within)
        .await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_rolls_the_enclave_and_reattests() {
    let Some(cluster) = cluster("a_spec_change_rolls_the_enclave_and_reattests").await else {
        return;
    };
    let h = Harness::start(cluster, "roll", None).await;
    h.create("demo", h.development_spec()).await;
    let before = h.wait_for("demo", "Ready=True", WAIT, ready).await;
    let old_digest = before
        .status
        .as_ref()
        .and_then(|s| s.boot_config_digest.clone())
        .expect("digest");

    h.masters()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"controlPlane": {"logLevel": "debug"}}})),
        )
        .await
        .expect("change the spec");
    let after = h
        .wait_for("demo", "re-attested with the new config", WAIT, |nm| {
            ready(nm)
                && nm.status.as_ref().is_some_and(|s| {
                    s.observed_generation == nm.metadata.generation
                        && s.boot_config_digest.as_deref() != Some(old_digest.as_str())
                })
        })
        .await;
    let expected = h.measured_digest(&after).await;
    assert_eq!(
        after
            .status
            .as_ref()
            .and_then(|s| s.boot_config_digest.clone()),
        Some(expected),
        "the attested digest is the one the operator rendered for the new spec"
    );
    let (old_doc, new_doc) = (
        before
            .status
            .and_then(|s| s.attestation)
            .map(|a| a.document_sha256),
        after
            .status
            .and_then(|s| s.attestation)
            .map(|a| a.document_sha256),
    );
    assert_ne!(old_doc, new_doc, "a new attestation document");
    h.finish().await;
}

/// A value the CRD admits but the agent refuses (a stake type whose type arguments do not
/// parse: the schema's pattern cannot check Move's nested grammar) shows the agent's reason
/// as a condition, restarts nothing, and fixing the spec makes the resource Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_configuration_is_a_condition_not_a_crash_loop() {
    let Some(cluster) = cluster("a_refused_configuration_is_a_condition_not_a_crash_loop").await
    else {
        return;
    };
    let h = Harness::start(cluster, "refused", None).await;
    let mut spec = h.development_spec();
    spec.auth.stake_type = "0x2::coin::Coin<not a type>".into();
    spec.auth.stake_amount_field = Some("value".into());
    h.create("demo", spec).await;
    let refused = |nm: &nautilus_crds::NautilusMaster| {
        condition(nm, "EnclaveRunning").is_some_and(|(s, r)| s == "False" && r == "ConfigRefused")
    };
    let nm = h
        .wait_for("demo", "EnclaveRunning=False/ConfigRefused", WAIT, refused)
        .await;
    let message = nm
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "EnclaveRunning"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(message.contains("invalid stake type"), "{message}");
    assert_eq!(
        condition(&nm, "Ready"),
        Some(("False".into(), "ConfigRefused".into())),
        "Ready carries the terminal reason"
    );

    // No crash loop: over five probe intervals the same sidecar and agent keep running (the
    // local runtime restarts a process that exits) and the condition stays.
    let sidecars = h.processes("nautilus-sidecar");
    let agents = h.processes("nautilus-agent");
    assert_eq!((sidecars.len(), agents.len()), (1, 1), "one of each");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        h.processes("nautilus-sidecar"),
        sidecars,
        "sidecar restarted"
    );
    assert_eq!(h.processes("nautilus-agent"), agents, "agent restarted");
    let nm = h.masters().get("demo").await.expect("get");
    assert!(refused(&nm), "{:?}", nm.status);

    // Fixing the spec rolls the enclave and it becomes Ready.
    h.masters()
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"auth": {
                "stakeType": "0x3::staking_pool::StakedSui",
                "stakeAmountField": null,
            }}})),
        )
        .await
        .expect("fix the spec");
    h.wait_for("demo", "Ready=True after the fix", WAIT, ready)
        .await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampering_relay_is_never_ready() {
    let Some(cluster) = cluster("a_tampering_relay_is_never_ready").await else {
        return;
    };
    // The real sidecar, its control link relayed through a host that alters every report.
    let relay = std::path::Path::new(env!("CARGO_BIN_EXE_nautilus-tamper-sidecar"));
    let h = Harness::start(cluster, "tamper", Some(relay)).await;
    h.create("demo", h.development_spec()).await;
    let mut was_ready = false;
    let nm = h
        .wait_for(
            "demo",
            "Attested=False (ReportSignatureInvalid)",
            WAIT,
            |nm| {
                was_ready |= ready(nm);
                condition(nm, "Attested")
                    .is_some_and(|(s, r)| s == "False" && r == "ReportSignatureInvalid")
            },
        )
        .await;
    assert!(!was_ready, "never Ready with corrupted reports");
    assert_eq!(
        h.processes("nautilus-sidecar").len(),
        1,
        "a real sidecar relayed them"
    );
    assert!(is(&nm, "Ready", "False"));
    assert!(
        nm.status.and_then(|s| s.kubeconfig_secret_ref).is_none(),
        "no kubeconfig for an enclave whose reports do not verify"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_stops_the_enclave_and_leaves_nothing_behind() {
    let Some(cluster) = cluster("delete_stops_the_enclave_and_leaves_nothing_behind").await else {
        return;
    };
    let h = Harness::start(cluster, "delete", None).await;
    h.create("demo", h.development_spec()).await;
    h.wait_for("demo", "Ready=True", WAIT, ready).await;
    assert_eq!(h.processes("nautilus-sidecar").len(), 1);

    h.delete_and_wait_gone("demo", &DeleteParams::foreground())
        .await;
    for exe in [
        "nautilus-sidecar",
        "nautilus-agent",
        "nautilus-standin",
        "etcd",
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
    ] {
        assert_eq!(h.processes(exe), Vec::<u32>::new(), "{exe} left behind");
    }
    // Owned children go with their owner (garbage collection by owner reference).
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(h.client.clone(), &h.namespace);
    let configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(h.client.clone(), &h.namespace);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let secret = secrets.get_opt("demo-kubeconfig").await.expect("get");
        let boot = configmaps.get_opt("demo-boot").await.expect("get");
        if secret.is_none() && boot.is_none() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "children left behind");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    h.finish().await;
}
