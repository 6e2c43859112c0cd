//! The `local` runtime with the real binaries: the operator's LocalRuntime starts
//! `nautilus-sidecar --launcher process`, which starts `nautilus-agent` (simulated NSM), which
//! starts the stand-in control plane. The operator's own client and verifier must then accept
//! the evidence, answer a re-attestation with a fresh nonce, and stop everything on delete.
//!
//! The binaries come from the workspace's target directory (`cargo nextest run --workspace`
//! builds them) or from `NAUTILUS_BIN_DIR`; when they are absent the test says so and passes.

use std::time::Duration;

use nautilus_crds::{NautilusMaster, NautilusMasterSpec};
use nautilus_operator::desired;
use nautilus_operator::observe::EnclaveState;
use nautilus_operator::runtime::{
    EnclaveRuntime, LocalRuntime, LocalSettings, development_bin_dir,
};
use nautilus_operator::sidecar;
use nautilus_operator::verify::{self, IssuedNonces, Outcome, ReportState};
use nautilus_protocol::attestation::now_unix_millis;
use nautilus_protocol::wire::BootConfig;

fn mk_nm() -> NautilusMaster {
    let pcr = |b: u8| hex::encode([b; 48]);
    let spec: NautilusMasterSpec = serde_json::from_value(serde_json::json!({
        "enclave": {
            "image": "registry.example.com/nautilus/enclave:dev",
            "pcr0": pcr(0x10), "pcr1": pcr(0x11), "pcr2": pcr(0x12), "pcr8": pcr(0x18),
        },
        "auth": { "suiRpcURL": "https://127.0.0.1:9" },
        "health": { "probeIntervalSeconds": 1, "startupTimeoutSeconds": 60 },
        "attestation": { "allowSimulated": true },
    }))
    .expect("spec");
    let mut nm = NautilusMaster::new(&format!("local-{}", std::process::id()), spec);
    nm.metadata.namespace = Some("dev".into());
    nm.metadata.uid = Some("00000000-0000-4000-8000-00000000000a".into());
    nm.metadata.generation = Some(1);
    nm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_runtime_boots_attests_refreshes_and_stops() {
    let Some(bin) = development_bin_dir() else {
        println!(
            "skipped: nautilus-sidecar/agent/standin not built; run `cargo build --workspace` \
             or set NAUTILUS_BIN_DIR"
        );
        return;
    };
    let work = std::env::temp_dir().join(format!("nautilus-local-test-{}", std::process::id()));
    let runtime = EnclaveRuntime::Local(Box::new(LocalRuntime::new(LocalSettings::development(
        &bin,
        work.clone(),
    ))));
    let client = kube_client_unused();
    let nm = mk_nm();
    // Placed as the controller places it: its own port and data directory under `work`.
    let config = runtime
        .place(&nm, desired::enclave_config(&nm).expect("config"))
        .expect("placed");
    assert_eq!(config.control_plane.bind_address, "127.0.0.1");
    assert!(
        config
            .control_plane
            .data_dir
            .starts_with(&*work.to_string_lossy())
    );
    let digest = config.digest();
    let now = now_unix_millis().expect("clock");
    let boot = BootConfig {
        config,
        nonce: vec![5; 32],
    };
    let mut nonces = IssuedNonces::new(boot.nonce.clone(), now, 30_000);
    runtime
        .start(&nm, &boot, &hex::encode(digest))
        .await
        .expect("start");
    let observed = runtime.observe(&client, &nm).await.expect("observe");
    assert_eq!(observed.placement.runtime.as_deref(), Some("local"));
    let addr = observed.sidecar.expect("sidecar address");

    let mut reports = ReportState::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let verify_once = |nonces: &IssuedNonces,
                       reports: &mut ReportState,
                       bundle: &nautilus_protocol::wire::EvidenceBundle| {
        check(&nm, digest, nonces, reports, bundle)
    };
    let log = work
        .join(format!(
            "dev_{}",
            nm.metadata.name.as_deref().unwrap_or_default()
        ))
        .join("sidecar.log");
    let verified = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not verified within 60 s; sidecar log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        if let Ok(bundle) = sidecar::fetch_report(addr).await {
            match verify_once(&nonces, &mut reports, &bundle) {
                Outcome::Verified(v) if v.report.all_healthy() => break v,
                Outcome::Failed {
                    reason, message, ..
                } => {
                    panic!("verification failed: {reason}: {message}")
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(verified.summary.simulated);
    assert_eq!(verified.summary.pcrs["8"], hex::encode([0x18; 48]));

    // Re-attest with a fresh nonce: the next document answers it.
    let fresh = vec![6; 32];
    sidecar::request_attestation(addr, &fresh)
        .await
        .expect("attest");
    nonces.refresh(fresh.clone(), now_unix_millis().expect("clock"));
    nonces.previous = None; // only the fresh nonce counts from here
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no document with the fresh nonce"
        );
        let bundle = sidecar::fetch_report(addr).await.expect("report");
        if let Outcome::Verified(_) = verify_once(&nonces, &mut reports, &bundle) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Delete: the process goes, and with it the sidecar's port.
    assert_eq!(
        runtime.stop(&client, &nm).await.expect("stop"),
        nautilus_operator::runtime::Stopped::Gone
    );
    assert_eq!(
        runtime.observe(&client, &nm).await.expect("observe").state,
        EnclaveState::Absent
    );
    assert!(
        sidecar::fetch_report(addr).await.is_err(),
        "sidecar still answers"
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn check(
    nm: &NautilusMaster,
    digest: [u8; 32],
    nonces: &IssuedNonces,
    reports: &mut ReportState,
    bundle: &nautilus_protocol::wire::EvidenceBundle,
) -> Outcome {
    verify::verify(
        &verify::Input {
            nm,
            bundle,
            nonces,
            config_digest: digest,
            now_ms: now_unix_millis().expect("clock"),
        },
        reports,
    )
}

/// The local runtime never calls the API; a client over a service that answers nothing will do.
fn kube_client_unused() -> kube::Client {
    let (service, _handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    kube::Client::new(service, "default")
}
