//! The development loop end to end over real sockets: the sidecar (process launcher running the
//! agent binary) + the agent + the control plane + the simulated NSM + a local Sui full node
//! reached through the sidecar's egress proxy with TLS verified inside the agent.
//!
//! The control plane is the `kubernetes` distribution on real binaries when
//! `$KUBEBUILDER_ASSETS` (default `/usr/local/kubebuilder/bin`, etcd there or on `PATH`)
//! provides them, else the stand-in (one line says so; `NAUTILUS_E2E_REQUIRE=1` fails instead).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use nautilus_test_support::Reaper;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser as _;
use common::{
    free_port, https_request, kubernetes_assets, now_ms, sidecar_http, verify_boot_evidence,
};
use nautilus_protocol::attestation::{TrustAnchor, Verifier, VerifyAt};
use nautilus_protocol::wire::{
    AuthConfig, BootConfig, ControlPlaneConfig, EnclaveConfig, EvidenceBundle, HealthConfig,
    Report, ReportVerifier, TierConfig,
};
use nautilus_seal::SignatureScheme;
use nautilus_seal::signer::generate_key;
use nautilus_sui_fixture::{CHAIN_ID, Chain, TestCa, serve_tls};

const WAIT: Duration = Duration::from_secs(90);

/// Poll `/readyz` until it answers `status`; returns how long it took.
async fn readyz_becomes(addr: SocketAddr, status: u16) -> Duration {
    let start = Instant::now();
    loop {
        let (got, body) = sidecar_http(addr, "GET", "/readyz", "").await;
        if got == status {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "/readyz stayed {got} ({body}), wanted {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bundle(addr: SocketAddr) -> EvidenceBundle {
    let (status, body) = sidecar_http(addr, "GET", "/report", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("EvidenceBundle JSON")
}

fn latest_report(bundle: &EvidenceBundle, verifier: &ReportVerifier) -> Report {
    verifier
        .check(bundle.report.as_ref().expect("report"), now_ms())
        .expect("the relayed report verifies")
}

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` through the sidecar's API proxy,
/// TLS verified with the attested CA.
async fn self_subject_review(api: SocketAddr, ca_pem: &str, token: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(api)
        .await
        .expect("api proxy");
    https_request(
        Box::new(tcp),
        ca_pem,
        "kubernetes",
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        Some(token),
        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_agent_standin_and_sui_node_run_the_whole_loop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().display().to_string());
    let assets = match kubernetes_assets() {
        Ok(assets) => Some(assets),
        Err(missing) => {
            assert!(
                std::env::var("NAUTILUS_E2E_REQUIRE").as_deref() != Ok("1"),
                "NAUTILUS_E2E_REQUIRE=1 but missing: {missing}"
            );
            println!("dev loop on the stand-in control plane: missing {missing}");
            None
        }
    };

    // A Sui full node (TLS with a throwaway CA) where the admin key has stake.
    let admin = generate_key(SignatureScheme::Ed25519).expect("key");
    let chain = Arc::new(Chain::default().with_stake(admin.address(), 25_000));
    let ca = TestCa::generate();
    let node = serve_tls(chain, &ca).await;
    let sui_ca = dir.path().join("sui-ca.pem");
    std::fs::write(&sui_ca, &ca.ca_pem).expect("ca file");

    let audience = "nautilus:dev/loop";
    let boot = BootConfig {
        config: EnclaveConfig {
            cluster: "dev/loop".into(),
            control_plane: ControlPlaneConfig {
                distribution: if assets.is_some() {
                    "kubernetes"
                } else {
                    "k3s"
                }
                .into(),
                bind_address: "127.0.0.1".into(),
                https_port: free_port(),
                cluster_cidr: "10.42.0.0/16".into(),
                service_cidr: "10.43.0.0/16".into(),
                cluster_dns: "10.43.0.10".into(),
                data_dir: dir.path().join("k3s").display().to_string(),
                encrypt_secrets: true,
                tls_min_version: "VersionTLS12".into(),
                cipher_suites: vec![],
                log_level: "info".into(),
                // The v1.36.2 binaries built on this machine (a MicroShift-vendored tree whose
                // main packages omit component-base's json log registration) refuse
                // --logging-format=json; upstream's support it.
                log_format: "text".into(),
                tls_sans: Vec::new(),
                advertise_address: None,
            },
            auth: AuthConfig {
                sui_rpc_url: format!("https://localhost:{}", node.port()),
                chain_id: Some(CHAIN_ID.into()),
                stake_type: "0x3::staking_pool::StakedSui".into(),
                stake_amount_field: None,
                audience: audience.into(),
                max_token_lifetime_seconds: 900,
                stake_cache_ttl_seconds: 30,
                zk_login: None,
                tiers: vec![TierConfig {
                    name: "admin".into(),
                    min_stake_mist: 10_000,
                    groups: vec!["system:masters".into()],
                    identity: Default::default(),
                }],
            },
            health: HealthConfig {
                probe_interval_seconds: 1,
                startup_timeout_seconds: 120,
            },
            state: None,
        },
        nonce: b"operator nonce".to_vec(),
    };
    let boot_path = dir.path().join("boot-config.json");
    std::fs::write(&boot_path, serde_json::to_vec(&boot).expect("json")).expect("boot file");

    let agent_sock = format!("unix:{}", dir.path().join("agent.sock").display());
    let api_sock = format!("unix:{}", dir.path().join("api.sock").display());
    let egress_sock = format!("unix:{}", dir.path().join("egress.sock").display());
    let work = dir.path().join("work").display().to_string();
    let scheduler = free_port().to_string();
    let manager = free_port().to_string();
    let sui_ca_arg = sui_ca.display().to_string();
    let mut agent_args = vec![
        "--listen",
        &agent_sock,
        "--api-listen",
        &api_sock,
        "--nsm",
        "simulated",
        "--control-plane-command",
        env!("CARGO_BIN_EXE_nautilus-standin"),
        "--work-dir",
        &work,
        "--webhook-listen",
        "127.0.0.1:0",
        "--egress-proxy",
        &egress_sock,
        "--sui-ca-file",
        &sui_ca_arg,
        "--scheduler-port",
        &scheduler,
        "--controller-manager-port",
        &manager,
    ];
    let bin_dir = assets.as_ref().map(|a| a.bin_dir.display().to_string());
    let etcd = assets.as_ref().map(|a| a.etcd.display().to_string());
    let (etcd_client, etcd_peer) = (free_port().to_string(), free_port().to_string());
    if let (Some(bin_dir), Some(etcd)) = (&bin_dir, &etcd) {
        agent_args.extend([
            "--kubernetes-bin-dir",
            bin_dir,
            "--etcd-command",
            etcd,
            "--etcd-client-port",
            &etcd_client,
            "--etcd-peer-port",
            &etcd_peer,
        ]);
    }
    let agent_args: Vec<String> = agent_args.into_iter().map(str::to_owned).collect();
    let mut args = vec![
        "nautilus-sidecar".to_owned(),
        "--boot-config".into(),
        boot_path.display().to_string(),
        "--launcher".into(),
        "process".into(),
        "--agent-command".into(),
        env!("CARGO_BIN_EXE_nautilus-agent").into(),
        "--agent".into(),
        agent_sock.clone(),
        "--api-upstream".into(),
        api_sock.clone(),
        "--http-listen".into(),
        "127.0.0.1:0".into(),
        "--api-listen".into(),
        "127.0.0.1:0".into(),
        "--egress-listen".into(),
        egress_sock.clone(),
        "--egress-allow".into(),
        format!("localhost:{}", node.port()),
    ];
    for arg in agent_args {
        args.push("--agent-arg".into());
        args.push(arg);
    }
    let sidecar =
        nautilus_sidecar::start(nautilus_sidecar::Args::try_parse_from(args).expect("args"))
            .await
            .expect("sidecar starts");
    let http_addr = sidecar.http_addr();
    let api_addr = sidecar.api_addr().expect("tcp api proxy");

    // /readyz turns 200 once a verified, fresh, all-healthy report arrived.
    let ready = readyz_becomes(http_addr, 200).await;
    println!(
        "dev loop ({}): sidecar start -> /readyz 200 in {ready:?}",
        boot.config.control_plane.distribution
    );

    // The attestation from /report verifies with the simulated root and binds digest and CA.
    let evidence = bundle(http_addr).await;
    assert_eq!(evidence.boot_config_digest, Some(boot.config.digest_hex()));
    let attestation = evidence.attestation.clone().expect("attestation");
    let document = verify_boot_evidence(&attestation, &boot);
    let verifier = ReportVerifier::new(
        &document.public_key.clone().expect("key"),
        boot.config.digest_hex(),
        3_000,
    )
    .expect("key");
    let report = latest_report(&evidence, &verifier);
    assert!(report.all_healthy());

    // A seal token through the whole path: API proxy → API server (stand-in) → TokenReview
    // webhook → stake through the sidecar's egress proxy → the node, TLS verified inside.
    let token = admin
        .mint_for(audience, nautilus_seal::unix_now(), 600)
        .expect("token");
    let (status, body) = self_subject_review(api_addr, &attestation.serving_ca_pem, &token).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body.contains(&format!("\"username\":\"sui:{}\"", admin.address())),
        "{body}"
    );
    assert!(body.contains("system:masters"), "{body}");
    let (status, body) = self_subject_review(
        api_addr,
        &attestation.serving_ca_pem,
        "sui-seal.v1.e30.AAAA",
    )
    .await;
    assert_eq!(status, 401, "{body}");

    // Kill the control plane: /readyz 503 within one probe interval, then it recovers.
    let pid = report.control_plane.pid.expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let down = readyz_becomes(http_addr, 503).await;
    assert!(down < Duration::from_millis(1_500), "503 after {down:?}");
    readyz_becomes(http_addr, 200).await;
    let report = latest_report(&bundle(http_addr).await, &verifier);
    assert!(report.control_plane.restarts >= 1);
    assert_ne!(report.control_plane.pid, Some(pid));

    // POST /attest: the next attestation carries the operator's new nonce.
    let nonce = b"fresh operator nonce".to_vec();
    let body = format!(
        r#"{{"nonce":"{}"}}"#,
        base64::engine::general_purpose::STANDARD.encode(&nonce)
    );
    let (status, _) = sidecar_http(http_addr, "POST", "/attest", &body).await;
    assert_eq!(status, 202);
    let start = Instant::now();
    loop {
        let attestation = bundle(http_addr).await.attestation.expect("attestation");
        let root = attestation.simulated_root_pem.clone().expect("root");
        let document = Verifier::new(TrustAnchor::from_pem(&root).expect("root"))
            .verify(&attestation.document, VerifyAt::Now)
            .expect("verifies");
        if document.nonce.as_deref() == Some(nonce.as_slice()) {
            break;
        }
        assert!(start.elapsed() < WAIT, "no attestation with the new nonce");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    sidecar.shutdown().await.expect("sidecar stops the agent");
}
