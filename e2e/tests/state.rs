//! Sealed state end to end, on the real API servers and the real etcd: the enclave's control
//! plane keeps its objects and its CA across a roll and a crash, refuses a tampered snapshot,
//! gets no key when the KMS key policy does not admit its measurements, and its snapshots go
//! or stay with the resource as `deletionPolicy` says.
//!
//! The enclave's KMS is the development one (`nautilus_e2e::kms`), reached as AWS KMS would be:
//! through the sidecar's egress proxy, TLS ending in the agent, SigV4, Recipient attestation.
//! Skips (one line) without a host API server, and without the `kubernetes` distribution's
//! binaries (sealed state needs it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nautilus_crds::NautilusMaster;
use nautilus_e2e::{Harness, WAIT, cluster, condition, is};
use nautilus_seal::unix_now;

fn ready(nm: &NautilusMaster) -> bool {
    is(nm, "Ready", "True")
}

fn reason(nm: &NautilusMaster, type_: &str) -> Option<String> {
    condition(nm, type_).map(|(_, r)| r)
}

fn last_snapshot(nm: &NautilusMaster) -> u64 {
    nm.status
        .as_ref()
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.last_snapshot_sequence)
        .unwrap_or(0)
}

fn restored(nm: &NautilusMaster) -> Option<u64> {
    nm.status
        .as_ref()
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.restored_sequence)
}

/// The harness with a KMS, or `None` (skipped, said once) where sealed state cannot run.
async fn start(test: &str) -> Option<Harness> {
    let cluster = cluster(test).await?;
    let h = Harness::start_with_kms(cluster, test).await;
    if h.distribution != "kubernetes" {
        println!(
            "SKIP {test}: sealed state needs the kubernetes distribution's binaries \
             (etcd, kube-apiserver, kube-scheduler, kube-controller-manager in $KUBEBUILDER_ASSETS)"
        );
        assert!(
            !nautilus_e2e::required(),
            "NAUTILUS_E2E_REQUIRE=1 and the kubernetes binaries are missing"
        );
        h.finish().await;
        return None;
    }
    Some(h)
}

/// Where the local runtime keeps `name`'s sealed snapshots.
fn snapshot_dir(h: &Harness, name: &str) -> PathBuf {
    h.local
        .work_dir
        .join("state")
        .join(format!("{}_{name}", h.namespace))
        .join("snapshots")
}

/// The stored snapshots of `name`, oldest first (by modification time).
fn stored(h: &Harness, name: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(snapshot_dir(h, name)) else {
        return Vec::new();
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    files.into_iter().map(|(_, p)| p).collect()
}

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let path = e.path();
        if path.is_dir() {
            any_file_contains(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

/// A client of `name`'s control plane as the staker (admin tier), retried while RBAC and the
/// namespace controller settle after a start.
async fn admin(h: &Harness, name: &str) -> kube::Client {
    let nm = h.masters().get(name).await.expect("get");
    let token = h
        .staker
        .mint_for(&nm.token_audience(), unix_now(), 600)
        .expect("mint");
    h.client_with_token(name, &token).await
}

/// [`nautilus_e2e::eventually`] within 60 s.
async fn eventually<T, F, Fut>(what: &str, op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    nautilus_e2e::eventually(Duration::from_secs(60), what, op).await
}

/// When the newest snapshot was taken (whole seconds, as the status says).
fn last_snapshot_secs(nm: &NautilusMaster) -> i64 {
    nm.status
        .as_ref()
        .and_then(|s| s.state.as_ref())
        .and_then(|s| s.last_snapshot_time.as_ref())
        .map_or(0, |t| t.0.as_second())
}

/// Wait for a snapshot that holds every write made before this call: one whose etcd copy
/// began (`lastSnapshotTime`, whole seconds) in a later second than now. The status's sequence
/// alone cannot say it: the status lags the enclave by a report and a reconcile.
async fn next_snapshot(h: &Harness, name: &str) -> u64 {
    let after = i64::try_from(unix_now()).expect("time");
    let nm = h
        .wait_for(
            name,
            "a sealed snapshot begun after the writes",
            WAIT,
            |nm| last_snapshot_secs(nm) > after,
        )
        .await;
    last_snapshot(&nm)
}

fn sigkill(pid: u32) {
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -9 {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_keeps_its_objects_and_ca_across_a_roll_and_a_crash() {
    let test = "the_control_plane_keeps_its_objects_and_ca_across_a_roll_and_a_crash";
    let Some(h) = start(test).await else {
        return;
    };
    h.create("keep", h.state_spec(10, "Delete")).await;
    let nm = h
        .wait_for("keep", "Ready and started empty", WAIT, |nm| {
            ready(nm) && reason(nm, "StateRestored").as_deref() == Some("NoSnapshot")
        })
        .await;
    assert_eq!(restored(&nm), None);
    let ca = h.published_ca("keep").await;
    let post = PostParams::default();

    // Objects in the enclave's control plane, through a seal token.
    let enclave = admin(&h, "keep").await;
    let namespaces: Api<Namespace> = Api::all(enclave.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "app"}})).expect("ns");
    eventually("create namespace app", || namespaces.create(&post, &ns)).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(enclave.clone(), "app");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "settings"}, "data": {"answer": "42"}
    }))
    .expect("cm");
    eventually("create the ConfigMap", || config_maps.create(&post, &cm)).await;
    let secret_value = format!("sealed-plaintext-{}", std::process::id());
    let secrets: Api<Secret> = Api::namespaced(enclave.clone(), "app");
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "password"}, "stringData": {"value": secret_value}
    }))
    .expect("secret");
    eventually("create the Secret", || secrets.create(&post, &secret)).await;
    let sealed = next_snapshot(&h, "keep").await;
    assert!(!stored(&h, "keep").is_empty(), "the sidecar stored it");

    // 1. A spec change rolls the enclave: the new one restores. The stop is graceful (the
    //    sidecar asks the agent on the link), so its last snapshot holds even a write made
    //    just before the roll, after every periodic one.
    let before_roll: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "before-roll"}, "data": {"n": "0"}
    }))
    .expect("cm");
    eventually("create before-roll", || {
        config_maps.create(&post, &before_roll)
    })
    .await;
    let digest_before = nm
        .status
        .as_ref()
        .and_then(|s| s.boot_config_digest.clone());
    h.masters()
        .patch(
            "keep",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"health": {"probeIntervalSeconds": 2}}})),
        )
        .await
        .expect("patch");
    let nm = h
        .wait_for("keep", "rolled, restored and Ready", WAIT, |nm| {
            ready(nm)
                && nm
                    .status
                    .as_ref()
                    .and_then(|s| s.boot_config_digest.clone())
                    != digest_before
                && reason(nm, "StateRestored").as_deref() == Some("Restored")
        })
        .await;
    assert!(
        restored(&nm).is_some_and(|r| r >= sealed),
        "restored {:?}, sealed {sealed} before the roll",
        restored(&nm)
    );
    assert_eq!(
        h.published_ca("keep").await,
        ca,
        "the same CA after the roll"
    );
    let enclave = admin(&h, "keep").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(enclave.clone(), "app");
    let back = eventually("read the ConfigMap back", || config_maps.get("settings")).await;
    eventually(
        "read before-roll back (the graceful stop's last snapshot)",
        || config_maps.get("before-roll"),
    )
    .await;
    assert_eq!(
        back.data.and_then(|d| d.get("answer").cloned()).as_deref(),
        Some("42")
    );
    let secrets: Api<Secret> = Api::namespaced(enclave.clone(), "app");
    let back = eventually("read the Secret back", || secrets.get("password")).await;
    assert_eq!(
        back.data
            .and_then(|d| d.get("value").cloned())
            .map(|v| v.0)
            .as_deref(),
        Some(secret_value.as_bytes())
    );
    // Still encrypted at rest: the enclave's etcd holds no plaintext of it.
    let data_dir = h.local.work_dir.join(format!("{}_keep", h.namespace));
    assert!(
        any_file_contains(&data_dir, b"k8s:enc:aescbc:v1:"),
        "etcd under {} holds aescbc-encrypted Secrets",
        data_dir.display()
    );
    assert!(
        !any_file_contains(&data_dir, secret_value.as_bytes()),
        "the Secret's value is in plaintext under {}",
        data_dir.display()
    );

    // 2. SIGKILL the sidecar after a newer object is sealed: the objects of the last snapshot
    //    are there in the enclave that replaces it.
    let after_crash: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "before-crash"}, "data": {"n": "1"}
    }))
    .expect("cm");
    eventually("create before-crash", || {
        config_maps.create(&post, &after_crash)
    })
    .await;
    let sealed = next_snapshot(&h, "keep").await;
    let sidecars = h.processes("nautilus-sidecar");
    assert_eq!(sidecars.len(), 1, "one sidecar: {sidecars:?}");
    sigkill(sidecars[0]);
    let nm = h
        .wait_for("keep", "restored after the crash", WAIT, |nm| {
            ready(nm) && restored(nm).is_some_and(|r| r >= sealed)
        })
        .await;
    assert_eq!(reason(&nm, "StateRestored").as_deref(), Some("Restored"));
    assert_eq!(
        h.published_ca("keep").await,
        ca,
        "the same CA after the crash"
    );
    let enclave = admin(&h, "keep").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(enclave, "app");
    eventually("read before-crash back", || config_maps.get("before-crash")).await;

    // 3. Flip one byte of the newest stored snapshot, then crash again: nothing starts from
    //    it, and the condition says why.
    next_snapshot(&h, "keep").await;
    let newest = stored(&h, "keep").pop().expect("a stored snapshot");
    let mut bytes = std::fs::read(&newest).expect("read the snapshot");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&newest, &bytes).expect("write the flipped snapshot");
    let sidecars = h.processes("nautilus-sidecar");
    assert_eq!(sidecars.len(), 1, "one sidecar: {sidecars:?}");
    sigkill(sidecars[0]);
    let nm = h
        .wait_for("keep", "the tampered snapshot refused", WAIT, |nm| {
            reason(nm, "StateRestored").as_deref() == Some("SnapshotRejected")
        })
        .await;
    assert!(!ready(&nm));
    assert_eq!(
        condition(&nm, "StateRestored").map(|(s, _)| s).as_deref(),
        Some("False")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        h.processes("kube-apiserver").is_empty() && h.processes("etcd").is_empty(),
        "a control plane started from a refused snapshot"
    );

    // 4. Deleting with `Delete` takes the snapshots along.
    h.delete_and_wait_gone("keep", &DeleteParams::default())
        .await;
    assert!(
        !snapshot_dir(&h, "keep").exists(),
        "deletionPolicy Delete left {}",
        snapshot_dir(&h, "keep").display()
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_does_not_admit_the_enclave_releases_no_key_and_retain_keeps_snapshots() {
    let test = "a_policy_that_does_not_admit_the_enclave_releases_no_key";
    let Some(h) = start(test).await else {
        return;
    };
    // Measurements the key policy does not list: KMS refuses, nothing starts.
    let mut spec = h.state_spec(10, "Retain");
    spec.enclave.pcr0 = "20".repeat(48);
    h.create("stranger", spec).await;
    let nm = h
        .wait_for("stranger", "KeyRefused", WAIT, |nm| {
            reason(nm, "StateRestored").as_deref() == Some("KeyRefused")
        })
        .await;
    assert!(!ready(&nm));
    let (_, message) = nm
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "StateRestored"))
        .map(|c| (c.status.clone(), c.message.clone()))
        .expect("StateRestored");
    assert!(message.contains("AccessDenied"), "{message}");

    // `Retain` keeps the snapshots after the resource is gone.
    h.create("kept", h.state_spec(10, "Retain")).await;
    h.wait_for("kept", "Ready", WAIT, ready).await;
    next_snapshot(&h, "kept").await;
    h.delete_and_wait_gone("kept", &DeleteParams::default())
        .await;
    assert!(
        !stored(&h, "kept").is_empty(),
        "deletionPolicy Retain removed the snapshots"
    );
    h.finish().await;
}

/// The README's steps for moving a resource: its sealed files copied into the new resource's
/// storage, and its UID in `spec.state.restoreFromUIDs`. The new resource restores the old
/// one's objects and CA; without the UID the sidecar would not even offer them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_resource_restores_an_old_ones_snapshots_when_its_spec_names_that_uid() {
    let test = "a_new_resource_restores_an_old_ones_snapshots";
    let Some(h) = start(test).await else {
        return;
    };
    h.create("old", h.state_spec(10, "Retain")).await;
    let old = h.wait_for("old", "Ready", WAIT, ready).await;
    let old_uid = old.metadata.uid.clone().expect("uid");
    let ca = h.published_ca("old").await;
    let enclave = admin(&h, "old").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(enclave, "default");
    let moved: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "moved"}, "data": {"from": "old"}
    }))
    .expect("cm");
    let post = PostParams::default();
    eventually("create moved", || config_maps.create(&post, &moved)).await;
    next_snapshot(&h, "old").await;

    // One enclave per state at a time: the old resource goes first (Retain keeps its files).
    h.delete_and_wait_gone("old", &DeleteParams::default())
        .await;
    let files = stored(&h, "old");
    assert!(
        !files.is_empty(),
        "Retain kept the old resource's snapshots"
    );
    let into = snapshot_dir(&h, "new");
    std::fs::create_dir_all(&into).expect("the new resource's storage");
    for file in &files {
        std::fs::copy(file, into.join(file.file_name().expect("name"))).expect("copy");
    }

    let mut spec = h.state_spec(10, "Delete");
    spec.state.as_mut().expect("state").restore_from_uids = vec![old_uid.clone()];
    h.create("new", spec).await;
    let new = h
        .wait_for("new", "Ready, restored from the old resource", WAIT, |nm| {
            ready(nm) && reason(nm, "StateRestored").as_deref() == Some("Restored")
        })
        .await;
    assert_eq!(
        new.status
            .as_ref()
            .and_then(|s| s.state.as_ref())
            .and_then(|s| s.restored_from_uid.clone()),
        Some(old_uid),
        "restored from the old resource's snapshot"
    );
    assert_eq!(h.published_ca("new").await, ca, "the old resource's CA");
    let enclave = admin(&h, "new").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(enclave, "default");
    let back = eventually("read moved back", || config_maps.get("moved")).await;
    assert_eq!(
        back.data.and_then(|d| d.get("from").cloned()).as_deref(),
        Some("old")
    );
    h.finish().await;
}
