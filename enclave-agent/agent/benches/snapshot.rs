//! Sealed-state figures against the real etcd (figures, no assertions beyond "the keys came
//! back"): at 1,000 and 10,000 keys of about 1 KiB (a ConfigMap's size), how long a snapshot
//! takes (`etcdctl snapshot save` + sealing) and how large it is, how long checking and
//! opening it takes, and how long etcd's restore takes. Prints the load average beside them.
//!
//! `cargo bench -p nautilus-agent --bench snapshot` (etcd and etcdctl on PATH or in
//! `$KUBEBUILDER_ASSETS`; one `skipped:` line without them).

#[path = "../tests/support/sealed.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use nautilus_agent::kubernetes::ETCD_NAME;
use nautilus_agent::material::BootMaterial;
use nautilus_agent::state::etcd::{Etcdctl, RestoreTarget, find_etcdutl};
use nautilus_agent::state::{self, Keeper, Offered, StateOptions};
use nautilus_protocol::nsm::SimulatedNsm;

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some((etcd, etcdctl)) = support::etcd_tools_or_skip("snapshot bench") else {
        return;
    };
    println!(
        "etcdutl: {}",
        find_etcdutl(&etcdctl).map_or("absent (etcd 3.4: etcdctl restores, no bump)".into(), |p| p
            .display()
            .to_string())
    );
    for keys in [1_000usize, 10_000] {
        run(&etcd, &etcdctl, keys).await;
    }
}

async fn run(etcd: &std::path::Path, etcdctl: &std::path::Path, keys: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = nautilus_test_support::Reaper(dir.path().display().to_string());
    let config = support::config(dir.path(), "uid-bench");
    let state_config = config.state.clone().expect("state");
    let nsm = Arc::new(SimulatedNsm::new().expect("nsm"));
    let options = StateOptions {
        key_sources: Some(Arc::new(support::TestKeys::default())),
        etcdutl: find_etcdutl(etcdctl),
        etcdctl: etcdctl.to_path_buf(),
    };
    let work = dir.path().join("work");
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
    let material = BootMaterial::generate(&config).expect("material");
    let ports = support::ports();
    let running = support::RunningEtcd::start(etcd, etcdctl, &config, &material, &ports).await;
    let filler = "x".repeat(1000);
    let pairs: Vec<(String, String)> = (0..keys)
        .map(|i| {
            (
                format!("/registry/configmaps/bench/cm-{i:06}"),
                format!("{filler}{i}"),
            )
        })
        .collect();
    let started = Instant::now();
    running.etcdctl.put_many(&pairs).await.expect("puts");
    println!(
        "{keys} keys written in {:.1?} (load {})",
        started.elapsed(),
        load()
    );
    let layout = support::layout(&config);
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
    let mut best = None;
    let mut snapshot = None;
    for _ in 0..3 {
        let started = Instant::now();
        let taken = keeper.snapshot_now().await.expect("snapshot");
        let elapsed = started.elapsed();
        best = Some(best.map_or(elapsed, |b: std::time::Duration| b.min(elapsed)));
        snapshot = Some(taken);
    }
    let snapshot = snapshot.expect("snapshot");
    println!(
        "{keys} keys: snapshot (save + seal) best of 3 {:.1?}, sealed {:.2} MiB (load {})",
        best.expect("timed"),
        snapshot.bytes as f64 / (1024.0 * 1024.0),
        load()
    );
    running.stop().await;
    let offered = work.join("state/offered.snap");
    std::fs::copy(&snapshot.path, &offered).expect("copy");
    let started = Instant::now();
    let prepared = state::prepare(
        &options,
        &config,
        &state_config,
        nsm,
        Offered {
            credentials: None,
            snapshot: Some((snapshot.sequence, offered)),
        },
        &work,
    )
    .await
    .expect("opens");
    let opened = started.elapsed();
    std::fs::remove_dir_all(&config.control_plane.data_dir).expect("fresh data dir");
    let (db, _) = prepared.etcd_db.clone().expect("db");
    let ports = support::ports();
    let tools = Etcdctl {
        endpoint: format!("https://127.0.0.1:{}", ports.etcd_client),
        ..running_tools(&options, &layout)
    };
    let started = Instant::now();
    state::restore_etcd(
        &tools,
        &db,
        &RestoreTarget {
            data_dir: layout.etcd_data.clone(),
            name: ETCD_NAME.to_owned(),
            peer_url: format!("https://127.0.0.1:{}", ports.etcd_peer),
        },
    )
    .await
    .expect("restore");
    let restored = started.elapsed();
    let material = BootMaterial::generate_with(&config, prepared.kept.as_ref()).expect("material");
    let started = Instant::now();
    let running = support::RunningEtcd::start(etcd, etcdctl, &config, &material, &ports).await;
    let up = started.elapsed();
    let count = running
        .etcdctl
        .count("/registry/configmaps/bench/")
        .await
        .expect("count");
    assert_eq!(count as usize, keys, "every key came back");
    println!(
        "{keys} keys: check + unwrap + open {opened:.1?}, etcd restore {restored:.1?}, etcd answering after {up:.1?} (load {})",
        load()
    );
    running.stop().await;
}

fn running_tools(options: &StateOptions, layout: &nautilus_agent::kubernetes::Layout) -> Etcdctl {
    Etcdctl {
        etcdctl: options.etcdctl.clone(),
        etcdutl: options.etcdutl.clone(),
        endpoint: String::new(),
        cacert: layout.tls.join("etcd/server-ca.crt"),
        cert: layout.tls.join("etcd/client.crt"),
        key: layout.tls.join("etcd/client.key"),
    }
}
