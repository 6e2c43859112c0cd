//! The `local` runtime with the real binaries: the operator's LocalRuntime starts
//! `nautilus-sidecar --launcher process`, which starts `nautilus-agent` (simulated NSM), which
//! starts the stand-in control plane. The operator's own client and verifier must then accept
//! the evidence, answer a re-attestation with a fresh nonce, and stop everything on delete.
//!
//! The enclave runs in a network namespace of its own (the default), reached through Unix
//! sockets only; [`an_isolated_enclave_reaches_nothing_on_the_host_and_leaves_nothing`] proves
//! it. Where no namespace can be made (not root) the isolation test prints one skip line and
//! the other runs with the host's network, saying so in one line; with
//! `NAUTILUS_E2E_REQUIRE=1` both fail instead.
//!
//! The binaries come from the workspace's target directory (`cargo nextest run --workspace`
//! builds them) or from `NAUTILUS_BIN_DIR`; when they are absent the test says so and passes.

use std::time::Duration;

use nautilus_crds::{NautilusMaster, NautilusMasterSpec};
use nautilus_operator::desired;
use nautilus_operator::observe::EnclaveState;
use nautilus_operator::runtime::{
    EnclaveRuntime, LocalNetwork, LocalRuntime, LocalSettings, development_bin_dir,
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
        // The stand-in plays `k3s`; `kubernetes` (the default) needs the real binaries.
        "controlPlane": { "distribution": "k3s" },
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
    let mut settings = LocalSettings::development(&bin, work.clone());
    if let Err(err) = settings.check_network().await {
        assert!(!required(), "NAUTILUS_E2E_REQUIRE=1 but {err}");
        println!("not isolated: the enclave shares the host's network in this test: {err}");
        settings.network = LocalNetwork::Host;
    }
    let runtime = EnclaveRuntime::Local(Box::new(LocalRuntime::new(settings)));
    let client = kube_client_unused();
    let nm = mk_nm();
    // Placed as the controller places it: its own port and data directory under `work`.
    let names = desired::Names::of(&nm).expect("names");
    let config = runtime
        .place(&names, desired::enclave_config(&nm).expect("config"))
        .await
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
        .start(&nm, &names, &boot, &hex::encode(digest))
        .await
        .expect("start");
    let observed = runtime
        .observe(&client, None, &nm, &names, &boot)
        .await
        .expect("observe");
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
        runtime.stop(&client, &nm, &names).await.expect("stop"),
        nautilus_operator::runtime::Stopped::Gone
    );
    assert_eq!(
        runtime
            .observe(&client, None, &nm, &names, &boot)
            .await
            .expect("observe")
            .state,
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
            // The local runtime's policy.
            simulated_allowed: true,
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

fn required() -> bool {
    std::env::var("NAUTILUS_E2E_REQUIRE").is_ok_and(|v| v == "1")
}

/// The parent of `pid` (`PPid` in `/proc/<pid>/status`).
fn parent_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is `ancestor` or one of its descendants.
fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        match parent_of(pid) {
            Some(parent) if parent > 1 => pid = parent,
            _ => return false,
        }
    }
    false
}

/// The pid `<dir>/agent.pid` records (the sidecar's process launcher writes `<pid> <ticks>`).
fn recorded_agent(dir: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("agent.pid"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// An enclave of the local runtime runs in a network namespace of its own: its agent and
/// control plane share it and nothing else, they cannot reach a service on the host's
/// loopback, they still serve through the sidecar (Unix sockets), the published API port is
/// the measured `httpsPort`, and deleting the resource leaves no process, namespace or socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_enclave_reaches_nothing_on_the_host_and_leaves_nothing() {
    use nautilus_test_support::{
        in_net_namespace_of, net_namespace, processes_in_net_namespace, processes_mentioning,
    };
    use std::net::{SocketAddr, TcpListener, TcpStream};

    let Some(bin) = development_bin_dir() else {
        println!(
            "skipped: nautilus-sidecar/agent/standin not built; run `cargo build --workspace` \
             or set NAUTILUS_BIN_DIR"
        );
        return;
    };
    let work = std::env::temp_dir().join(format!("nautilus-isolated-{}", std::process::id()));
    let _reaper = nautilus_test_support::Reaper(work.display().to_string());
    let settings = LocalSettings::development(&bin, work.clone());
    assert_eq!(settings.network, LocalNetwork::Isolated, "the default");
    if let Err(err) = settings.check_network().await {
        assert!(!required(), "NAUTILUS_E2E_REQUIRE=1 but {err}");
        println!("skipped: {err}");
        return;
    }
    // A service on the host's loopback: a hidden dependency on it must fail in the enclave.
    let host_service = TcpListener::bind("127.0.0.1:0").expect("bind");
    let host_addr = host_service.local_addr().expect("addr");

    let runtime = EnclaveRuntime::Local(Box::new(LocalRuntime::new(settings)));
    let client = kube_client_unused();
    let mut nm = mk_nm();
    nm.metadata.name = Some(format!("isolated-{}", std::process::id()));
    let names = desired::Names::of(&nm).expect("names");
    let config = runtime
        .place(&names, desired::enclave_config(&nm).expect("config"))
        .await
        .expect("placed");
    let https_port = config.control_plane.https_port;
    let digest = config.digest();
    let boot = BootConfig {
        config,
        nonce: vec![7; 32],
    };
    let nonces = IssuedNonces::new(
        boot.nonce.clone(),
        now_unix_millis().expect("clock"),
        30_000,
    );
    runtime
        .start(&nm, &names, &boot, &hex::encode(digest))
        .await
        .expect("start");
    let observed = runtime
        .observe(&client, None, &nm, &names, &boot)
        .await
        .expect("observe");
    // The published API port is the measured one.
    assert_eq!(observed.endpoint, format!("https://127.0.0.1:{https_port}"));
    let addr = observed.sidecar.expect("sidecar address");
    let dir = work.join(format!(
        "dev_{}",
        nm.metadata.name.as_deref().unwrap_or_default()
    ));

    // Verified and healthy: the control link, the API port and the egress proxy work over the
    // Unix sockets (the agent's Sui check goes through the egress proxy; here it is refused,
    // which the report tolerates).
    let mut reports = ReportState::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not verified within 60 s; sidecar log:\n{}",
            std::fs::read_to_string(dir.join("sidecar.log")).unwrap_or_default()
        );
        if let Ok(bundle) = sidecar::fetch_report(addr).await {
            match check(&nm, digest, &nonces, &mut reports, &bundle) {
                Outcome::Verified(v) if v.report.all_healthy() => break,
                Outcome::Failed {
                    reason, message, ..
                } => panic!("verification failed: {reason}: {message}"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let agent = recorded_agent(&dir).expect("the sidecar records its agent");
    let enclave_ns = net_namespace(agent).expect("the agent's namespace");
    assert_ne!(
        Some(enclave_ns),
        net_namespace(std::process::id()),
        "the agent shares the host's network"
    );
    // The agent and its control plane (the agent's descendants) are in the enclave's
    // namespace, and nothing else is; the sidecar is not.
    let inside = processes_in_net_namespace(enclave_ns);
    assert!(inside.contains(&agent));
    assert!(
        inside.len() >= 2,
        "the control plane is not in the agent's namespace: {inside:?}"
    );
    for pid in &inside {
        assert!(
            descends_from(*pid, agent),
            "process {pid} in the enclave's namespace is not the agent's"
        );
    }
    let sidecar_pid = parent_of(agent).expect("the agent's parent");
    assert_ne!(net_namespace(sidecar_pid), Some(enclave_ns));
    assert!(
        processes_mentioning(&work.display().to_string())
            .iter()
            .any(|(pid, cmd)| u32::try_from(*pid) == Ok(sidecar_pid)
                && cmd.contains("--isolate-network")),
        "the agent's parent is not this resource's isolating sidecar"
    );

    let (host_dial, api_inside, interfaces) = in_net_namespace_of(agent, move || {
        let timeout = Duration::from_secs(2);
        let host = TcpStream::connect_timeout(&host_addr, timeout).map(|_| ());
        let api =
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], https_port)), timeout)
                .map(|_| ());
        let interfaces: Vec<String> = std::fs::read_to_string("/proc/thread-self/net/dev")
            .unwrap_or_default()
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next().map(|i| i.trim().to_owned()))
            .collect();
        (host, api, interfaces)
    })
    .expect("join the enclave's namespace");
    assert!(
        host_dial.is_err(),
        "the enclave reached the host's 127.0.0.1:{}",
        host_addr.port()
    );
    assert!(
        api_inside.is_ok(),
        "the API server is not on the enclave's 127.0.0.1:{https_port}: {api_inside:?}"
    );
    assert_eq!(interfaces, ["lo"]);
    // From the host, the same port number is the sidecar's: it relays to the API server.
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], https_port)),
        Duration::from_secs(2),
    )
    .expect("the sidecar publishes the API port");
    drop(host_service);

    assert_eq!(
        runtime.stop(&client, &nm, &names).await.expect("stop"),
        nautilus_operator::runtime::Stopped::Gone
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !processes_in_net_namespace(enclave_ns).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes left in the enclave's namespace: {:?}",
            processes_in_net_namespace(enclave_ns)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(processes_mentioning(&work.display().to_string()), []);
    assert!(
        !work
            .join("run")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()),
        "a socket directory is left"
    );
    let _ = std::fs::remove_dir_all(&work);
}
