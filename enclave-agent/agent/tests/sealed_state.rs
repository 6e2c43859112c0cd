//! Sealed state against the real etcd: keys written, a snapshot taken through the maintenance
//! API and sealed, then checked, opened and restored into a fresh data directory, where a new
//! etcd finds the keys. Also: a flipped byte, another resource's snapshot and an unknown key
//! are refused before anything is restored. Without etcd and etcdctl, one `skipped:` line (a
//! failure with `NAUTILUS_E2E_REQUIRE=1`).

#[path = "support/sealed.rs"]
mod support;

use std::sync::Arc;

use nautilus_agent::kubernetes::ETCD_NAME;
use nautilus_agent::material::BootMaterial;
use nautilus_agent::state::etcd::{RestoreTarget, find_etcdutl};
use nautilus_agent::state::{self, Keeper, Offered, StateError, StateOptions};
use nautilus_protocol::nsm::SimulatedNsm;
use nautilus_protocol::sealed::SealError;
use nautilus_protocol::wire::RefusalKind;
use support::{RunningEtcd, TestKeys};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_data_and_the_pki_survive_a_sealed_snapshot() {
    let test = "etcd_data_and_the_pki_survive_a_sealed_snapshot";
    let Some((etcd, etcdctl)) = support::etcd_tools_or_skip(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = nautilus_test_support::Reaper(dir.path().display().to_string());
    let config = support::config(dir.path(), "uid-1");
    let state_config = config.state.clone().expect("state");
    let nsm = Arc::new(
        SimulatedNsm::new()
            .and_then(|n| n.with_pcr(0, &[0xa0; 48]))
            .expect("nsm"),
    );
    let keys = TestKeys::default();
    let options = StateOptions {
        key_sources: Some(Arc::new(keys.clone())),
        etcdutl: find_etcdutl(&etcdctl),
        etcdctl: etcdctl.clone(),
    };
    let work = dir.path().join("work");

    // A fresh start: no snapshot offered, a new data key.
    let prepared = state::prepare(
        &options,
        &config,
        &state_config,
        nsm.clone(),
        Offered::default(),
        &work,
    )
    .await
    .expect("fresh");
    assert_eq!(prepared.restored, None);
    assert!(prepared.kept.is_none());
    let material = BootMaterial::generate(&config).expect("material");
    let ports = support::ports();
    let running = RunningEtcd::start(&etcd, &etcdctl, &config, &material, &ports).await;
    let pairs: Vec<(String, String)> = (0..300)
        .map(|i| (format!("/registry/test/key-{i:05}"), format!("value-{i}")))
        .collect();
    running.etcdctl.put_many(&pairs).await.expect("puts");
    let layout = support::layout(&config);
    let encryption = std::fs::read_to_string(layout.encryption_config()).expect("encryption");
    let keeper = Keeper::new(
        state_config.clone(),
        "kubernetes".into(),
        prepared,
        running.etcdctl.clone(),
        material.kept(None),
        layout.encryption_config(),
        &work,
    )
    .expect("keeper");
    let snapshot = keeper.snapshot_now().await.expect("snapshot");
    assert_eq!(snapshot.sequence, 1);
    let report = keeper.report().borrow().clone();
    let last = report.last_snapshot.expect("reported");
    assert_eq!((last.sequence, last.bytes), (1, snapshot.bytes));
    assert_eq!(report.last_error, None);
    running.stop().await;

    // What the sidecar would offer: the sealed file, as it stored it.
    let sealed = std::fs::read(&snapshot.path).expect("sealed");
    let offer = |name: &str, bytes: &[u8]| {
        let path = work.join("state").join(name);
        std::fs::write(&path, bytes).expect("offer");
        Offered {
            credentials: None,
            snapshot: Some((1, path)),
        }
    };

    // A flipped byte in the body: refused, and nothing of it is left to start from.
    let mut flipped = sealed.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x01;
    let err = state::prepare(
        &options,
        &config,
        &state_config,
        nsm.clone(),
        offer("flipped.snap", &flipped),
        &work,
    )
    .await
    .expect_err("a flipped byte is refused");
    assert_eq!(
        err.refusal_kind(),
        Some(RefusalKind::SnapshotRejected),
        "{err}"
    );
    assert!(
        matches!(
            err,
            StateError::Refused {
                source: SealError::Authentication { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        !work.join("state/restore-1.db").exists(),
        "nothing restored"
    );

    // Another resource's snapshot, and another image's: refused before any key is asked for.
    let unwraps = keys.calls.lock().expect("calls").1;
    let other = support::config(dir.path(), "uid-2");
    let err = state::prepare(
        &options,
        &other,
        other.state.as_ref().expect("state"),
        nsm.clone(),
        offer("other.snap", &sealed),
        &work,
    )
    .await
    .expect_err("another resource");
    assert!(
        matches!(
            err,
            StateError::Refused {
                source: SealError::WrongResource { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let upgraded = Arc::new(
        SimulatedNsm::new()
            .and_then(|n| n.with_pcr(0, &[0xb0; 48]))
            .expect("nsm"),
    );
    let err = state::prepare(
        &options,
        &config,
        &state_config,
        upgraded,
        offer("upgraded.snap", &sealed),
        &work,
    )
    .await
    .expect_err("another image");
    assert!(
        matches!(
            err,
            StateError::Refused {
                source: SealError::Measurements { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(keys.calls.lock().expect("calls").1, unwraps, "no KMS call");
    // A key the key source does not release.
    let err = state::prepare(
        &StateOptions {
            key_sources: Some(Arc::new(TestKeys::default())),
            ..options.clone()
        },
        &config,
        &state_config,
        nsm.clone(),
        offer("unknown-key.snap", &sealed),
        &work,
    )
    .await
    .expect_err("key refused");
    assert_eq!(err.refusal_kind(), Some(RefusalKind::KeyRefused), "{err}");

    // The real restore, into a fresh data directory.
    let prepared = state::prepare(
        &options,
        &config,
        &state_config,
        nsm.clone(),
        offer("offered.snap", &sealed),
        &work,
    )
    .await
    .expect("restores");
    let restored_ref = prepared.restored.clone().expect("restored");
    assert_eq!(restored_ref.sequence, 1);
    assert_eq!(restored_ref.resource_uid, "uid-1");
    assert_eq!(restored_ref.bytes, snapshot.bytes);
    assert!(!prepared.cas_rotated);
    let kept = prepared.kept.clone().expect("pki");
    assert_eq!(kept.encryption_config.as_deref(), Some(encryption.as_str()));
    let restored = BootMaterial::generate_with(&config, Some(&kept)).expect("material");
    assert_eq!(
        restored.serving_ca.cert_der, material.serving_ca.cert_der,
        "the same CA"
    );
    std::fs::remove_dir_all(&config.control_plane.data_dir).expect("a fresh data directory");
    std::fs::create_dir_all(&layout.cred).expect("cred");
    std::fs::write(layout.encryption_config(), &encryption).expect("encryption");
    let (db, revision) = prepared.etcd_db.clone().expect("db");
    let ports = support::ports();
    let target = RestoreTarget {
        data_dir: layout.etcd_data.clone(),
        name: ETCD_NAME.to_owned(),
        peer_url: format!("https://127.0.0.1:{}", ports.etcd_peer),
    };
    let started = std::time::Instant::now();
    let bumped = state::restore_etcd(&running_tools(&options, &layout, &ports), &db, &target)
        .await
        .expect("restore");
    println!(
        "restored revision {revision} in {:?} (bumped: {bumped})",
        started.elapsed()
    );
    let running = RunningEtcd::start(&etcd, &etcdctl, &config, &restored, &ports).await;
    assert_eq!(
        running
            .etcdctl
            .count("/registry/test/")
            .await
            .expect("count"),
        300
    );
    assert_eq!(
        running
            .etcdctl
            .get("/registry/test/key-00042")
            .await
            .expect("get")
            .as_deref(),
        Some("value-42")
    );
    if !bumped {
        running.etcdctl.compact(revision).await.expect("compact");
    }
    // Sequences continue from the restored one.
    let keeper = Keeper::new(
        state_config.clone(),
        "kubernetes".into(),
        prepared,
        running.etcdctl.clone(),
        restored.kept(None),
        layout.encryption_config(),
        &work,
    )
    .expect("keeper");
    // Until it seals one, the newest snapshot it knows of is the one it restored.
    assert_eq!(
        keeper.report().borrow().last_snapshot,
        Some(restored_ref.clone()),
        "a restart does not blank the last snapshot"
    );
    let next = keeper.snapshot_now().await.expect("snapshot");
    assert_eq!(next.sequence, 2);
    assert_eq!(
        keeper
            .report()
            .borrow()
            .restored
            .as_ref()
            .map(|r| r.sequence),
        Some(1),
        "the report says what was restored"
    );
    running.stop().await;
}

fn running_tools(
    options: &StateOptions,
    layout: &nautilus_agent::kubernetes::Layout,
    ports: &nautilus_agent::flags::ComponentPorts,
) -> nautilus_agent::state::etcd::Etcdctl {
    nautilus_agent::state::etcd::Etcdctl {
        etcdctl: options.etcdctl.clone(),
        etcdutl: options.etcdutl.clone(),
        endpoint: format!("https://127.0.0.1:{}", ports.etcd_client),
        cacert: layout.tls.join("etcd/server-ca.crt"),
        cert: layout.tls.join("etcd/client.crt"),
        key: layout.tls.join("etcd/client.key"),
    }
}
