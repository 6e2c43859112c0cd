//! The `kubernetes` distribution on real binaries: etcd, kube-apiserver, kube-scheduler and
//! kube-controller-manager from `$KUBEBUILDER_ASSETS` (default `/usr/local/kubebuilder/bin`;
//! etcd from there or `PATH`), started by the real agent under the real sidecar (process
//! launcher), with the simulated NSM and a local Sui full node reached through the sidecar's
//! egress proxy. Without the binaries each test prints one `skipped:` line; with
//! `NAUTILUS_E2E_REQUIRE=1` it fails instead.
//!
//! A second test proves the `k3s` path's files: the real kube-apiserver started with exactly
//! the rendered K3s config's `kube-apiserver-arg` list plus the flags K3s implies, on the CA
//! files and `service.key` the agent writes for K3s.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use nautilus_test_support::Reaper;
use std::time::{Duration, Instant};

use clap::Parser as _;
use common::{
    KubernetesAssets, free_port, https_request, kubernetes_assets_or_skip, now_ms, pid_of,
    processes_mentioning, rss_kib, sidecar_http, verify_boot_evidence,
};
use nautilus_protocol::wire::{
    AuthConfig, BootConfig, Component, ControlPlaneConfig, EnclaveConfig, EvidenceBundle,
    HealthConfig, Report, ReportVerifier, TierConfig, TierIdentity,
};
use nautilus_seal::SignatureScheme;
use nautilus_seal::signer::{KeystoreKey, generate_key};
use nautilus_sui_fixture::{CHAIN_ID, Chain, TestCa, serve_tls};

const WAIT: Duration = Duration::from_secs(90);
const AUDIENCE: &str = "nautilus:real/control-plane";

/// A `kubernetes` configuration with an admin tier (10 000 MIST, `system:masters`), a worker
/// tier (1 000 MIST, a node identity) and a reader tier (100 MIST, `nautilus:readers`).
fn enclave_config(data_dir: &Path, https_port: u16, sui_rpc_url: &str) -> EnclaveConfig {
    EnclaveConfig {
        cluster: "real/control-plane".into(),
        control_plane: ControlPlaneConfig {
            distribution: "kubernetes".into(),
            bind_address: "127.0.0.1".into(),
            https_port,
            cluster_cidr: "10.42.0.0/16".into(),
            service_cidr: "10.43.0.0/16".into(),
            cluster_dns: "10.43.0.10".into(),
            data_dir: data_dir.display().to_string(),
            encrypt_secrets: true,
            tls_min_version: "VersionTLS12".into(),
            cipher_suites: vec![],
            log_level: "warn".into(),
            // The v1.36.2 binaries built on this machine (a MicroShift-vendored tree whose main
            // packages omit component-base's json log registration) refuse
            // --logging-format=json; upstream's support it.
            log_format: "text".into(),
            tls_sans: Vec::new(),
            advertise_address: None,
        },
        auth: AuthConfig {
            sui_rpc_url: sui_rpc_url.into(),
            chain_id: Some(CHAIN_ID.into()),
            stake_type: "0x3::staking_pool::StakedSui".into(),
            stake_amount_field: None,
            audience: AUDIENCE.into(),
            max_token_lifetime_seconds: 900,
            stake_cache_ttl_seconds: 30,
            zk_login: None,
            tiers: vec![
                TierConfig {
                    name: "admin".into(),
                    min_stake_mist: 10_000,
                    groups: vec!["system:masters".into()],
                    identity: Default::default(),
                },
                TierConfig {
                    name: "worker".into(),
                    min_stake_mist: 1_000,
                    groups: vec!["nautilus:node-proxiers".into()],
                    identity: TierIdentity::Node,
                },
                TierConfig {
                    name: "reader".into(),
                    min_stake_mist: 100,
                    groups: vec!["nautilus:readers".into()],
                    identity: Default::default(),
                },
            ],
        },
        health: HealthConfig {
            probe_interval_seconds: 1,
            startup_timeout_seconds: 120,
        },
        state: None,
    }
}

/// The whole system with the `kubernetes` distribution; see the module documentation.
struct Fixture {
    // Dropped in this order: the sidecar (stops the agent), the reaper (anything left), the
    // directory.
    sidecar: Option<nautilus_sidecar::Running>,
    _reaper: Reaper,
    dir: tempfile::TempDir,
    http: SocketAddr,
    api: SocketAddr,
    ca_pem: String,
    verifier: ReportVerifier,
    /// From starting the sidecar (which starts the agent) to `/readyz` 200.
    boot_to_ready: Duration,
}

impl Fixture {
    async fn start(assets: &KubernetesAssets, stakes: &[(&KeystoreKey, u64)]) -> Self {
        Self::start_with(assets, stakes, &[]).await
    }

    /// [`Fixture::start`] with more sidecar arguments.
    async fn start_with(
        assets: &KubernetesAssets,
        stakes: &[(&KeystoreKey, u64)],
        sidecar_args: &[String],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let reaper = Reaper(dir.path().display().to_string());
        let mut chain = Chain::default();
        for (key, stake) in stakes {
            chain = chain.with_stake(key.address(), *stake);
        }
        let ca = TestCa::generate();
        let node = serve_tls(Arc::new(chain), &ca).await;
        let sui_ca = dir.path().join("sui-ca.pem");
        std::fs::write(&sui_ca, &ca.ca_pem).expect("ca file");

        let boot = BootConfig {
            config: enclave_config(
                &dir.path().join("data"),
                free_port(),
                &format!("https://localhost:{}", node.port()),
            ),
            nonce: b"operator nonce".to_vec(),
        };
        let boot_path = dir.path().join("boot-config.json");
        std::fs::write(&boot_path, serde_json::to_vec(&boot).expect("json")).expect("boot");

        let sock = |name: &str| format!("unix:{}", dir.path().join(name).display());
        let (agent_sock, api_sock, egress_sock) =
            (sock("agent.sock"), sock("api.sock"), sock("egress.sock"));
        let agent_args = [
            "--listen".to_owned(),
            agent_sock.clone(),
            "--api-listen".into(),
            api_sock.clone(),
            "--nsm".into(),
            "simulated".into(),
            "--work-dir".into(),
            dir.path().join("work").display().to_string(),
            "--webhook-listen".into(),
            "127.0.0.1:0".into(),
            "--egress-proxy".into(),
            egress_sock.clone(),
            "--sui-ca-file".into(),
            sui_ca.display().to_string(),
            "--kubernetes-bin-dir".into(),
            assets.bin_dir.display().to_string(),
            "--etcd-command".into(),
            assets.etcd.display().to_string(),
            "--scheduler-port".into(),
            free_port().to_string(),
            "--controller-manager-port".into(),
            free_port().to_string(),
            "--etcd-client-port".into(),
            free_port().to_string(),
            "--etcd-peer-port".into(),
            free_port().to_string(),
            "--log-format".into(),
            "json".into(),
        ];
        let mut args = vec![
            "nautilus-sidecar".to_owned(),
            "--boot-config".into(),
            boot_path.display().to_string(),
            "--launcher".into(),
            "process".into(),
            "--agent-command".into(),
            env!("CARGO_BIN_EXE_nautilus-agent").into(),
            "--agent".into(),
            agent_sock,
            "--api-upstream".into(),
            api_sock,
            "--http-listen".into(),
            "127.0.0.1:0".into(),
            "--api-listen".into(),
            "127.0.0.1:0".into(),
            "--egress-listen".into(),
            egress_sock,
            "--egress-allow".into(),
            format!("localhost:{}", node.port()),
        ];
        for arg in agent_args {
            args.push("--agent-arg".into());
            args.push(arg);
        }
        args.extend(sidecar_args.iter().cloned());
        let started = Instant::now();
        let sidecar =
            nautilus_sidecar::start(nautilus_sidecar::Args::try_parse_from(args).expect("args"))
                .await
                .expect("sidecar starts");
        let http_addr = sidecar.http_addr();
        let api = sidecar.api_addr().expect("tcp api proxy");
        loop {
            let (status, body) = sidecar_http(http_addr, "GET", "/readyz", "").await;
            if status == 200 {
                break;
            }
            assert!(started.elapsed() < WAIT, "/readyz stayed {status}: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let boot_to_ready = started.elapsed();

        // The attestation binds this configuration and the CA the API server serves with.
        let bundle = bundle(http_addr).await;
        let attestation = bundle.attestation.expect("attestation");
        let document = verify_boot_evidence(&attestation, &boot);
        let verifier = ReportVerifier::new(
            &document.public_key.clone().expect("key"),
            boot.config.digest_hex(),
            5_000,
        )
        .expect("key");
        Self {
            sidecar: Some(sidecar),
            _reaper: reaper,
            dir,
            http: http_addr,
            api,
            ca_pem: attestation.serving_ca_pem,
            verifier,
            boot_to_ready,
        }
    }

    fn needle(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// A JSON merge patch of `path` (through [`Fixture::api_with`]).
    async fn merge_patch(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        let headers = [("Content-Type", "application/merge-patch+json")];
        self.api_with("PATCH", path, token, &headers, body).await
    }

    /// A request to the enclave's API server through the sidecar's byte proxy, TLS verified
    /// with the attested CA.
    async fn api(&self, method: &str, path: &str, token: &str, body: &str) -> (u16, String) {
        let tcp = tokio::net::TcpStream::connect(self.api)
            .await
            .expect("api proxy");
        https_request(
            Box::new(tcp),
            &self.ca_pem,
            "kubernetes",
            method,
            path,
            Some(token),
            body,
        )
        .await
    }

    /// [`Fixture::api`] with extra headers, the answer's body de-chunked.
    async fn api_with(
        &self,
        method: &str,
        path: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let tcp = tokio::net::TcpStream::connect(self.api)
            .await
            .expect("api proxy");
        let (status, text) = common::https_request_with(
            Box::new(tcp),
            &self.ca_pem,
            "kubernetes",
            method,
            path,
            Some(token),
            headers,
            body,
        )
        .await;
        (status, response_body(&text))
    }

    /// Reports from `/report` until one satisfies `pred`.
    async fn report_where(&self, what: &str, pred: impl Fn(&Report) -> bool) -> Report {
        let start = Instant::now();
        loop {
            let bundle = bundle(self.http).await;
            if let Some(signed) = bundle.report.as_ref() {
                let report = self
                    .verifier
                    .check(signed, now_ms())
                    .expect("the relayed report verifies");
                if pred(&report) {
                    return report;
                }
            }
            assert!(start.elapsed() < WAIT, "no report where {what} in {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop the sidecar (which stops the agent, which stops the components) and check that
    /// nothing is left.
    async fn shutdown(mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.shutdown().await.expect("sidecar stops the agent");
        }
        let start = Instant::now();
        loop {
            let left = processes_mentioning(&self.needle());
            if left.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "left behind after shutdown: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn bundle(addr: SocketAddr) -> EvidenceBundle {
    let (status, body) = sidecar_http(addr, "GET", "/report", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("EvidenceBundle JSON")
}

fn healthy(report: &Report, component: Component) -> bool {
    report
        .components
        .iter()
        .any(|c| c.component == component && c.healthy)
}

fn kill(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

const PODS: &str = "/api/v1/namespaces/default/pods";

fn pod(name: &str) -> String {
    format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}"}},"spec":{{"automountServiceAccountToken":false,"containers":[{{"name":"c","image":"registry.k8s.io/pause:3.10"}}]}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seal_tokens_and_tiers_on_a_real_kubernetes_control_plane() {
    let Some(assets) =
        kubernetes_assets_or_skip("seal_tokens_and_tiers_on_a_real_kubernetes_control_plane")
    else {
        return;
    };
    let admin = generate_key(SignatureScheme::Ed25519).expect("key");
    let reader = generate_key(SignatureScheme::Ed25519).expect("key");
    let unstaked = generate_key(SignatureScheme::Ed25519).expect("key");
    let fx = Fixture::start(&assets, &[(&admin, 25_000), (&reader, 500)]).await;

    // Start time and memory, once everything is healthy.
    let report = fx.report_where("all healthy", Report::all_healthy).await;
    let first_start = report.control_plane.started_unix_ms.expect("started");
    println!(
        "measured: sidecar start -> /readyz 200 (agent boot, attestation, etcd, kube-apiserver, rbac, scheduler, controller-manager healthy): {:?}; first component start -> first all-healthy report: <= {} ms",
        fx.boot_to_ready,
        report.time_unix_ms.saturating_sub(first_start)
    );
    let needle = fx.needle();
    for program in [
        "nautilus-agent",
        "etcd",
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
    ] {
        let pid = pid_of(program, &needle).unwrap_or_else(|| panic!("{program} runs"));
        println!(
            "measured: VmRSS {program} (pid {pid}): {} KiB",
            rss_kib(pid).unwrap_or_default()
        );
    }

    let now = nautilus_seal::unix_now();
    let admin_token = admin.mint_for(AUDIENCE, now, 600).expect("token");
    let reader_token = reader.mint_for(AUDIENCE, now, 600).expect("token");

    // A staked seal token is admitted by the real kube-apiserver (SelfSubjectReview).
    let review = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    let (status, body) = fx
        .api(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &admin_token,
            review,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body.contains(&format!("\"username\":\"sui:{}\"", admin.address())),
        "{body}"
    );
    assert!(body.contains("system:masters"), "{body}");

    // Tiers on real RBAC: the reader tier can get pods and not create them.
    // `view` is an aggregated ClusterRole: its rules appear once the controller manager's
    // clusterrole-aggregation controller has run, shortly after it started.
    let start = Instant::now();
    loop {
        let (status, body) = fx.api("GET", PODS, &reader_token, "").await;
        if status == 200 {
            println!(
                "measured: reader tier could list pods {:?} after all components were healthy",
                start.elapsed()
            );
            break;
        }
        assert!(
            status == 403 && start.elapsed() < WAIT,
            "reader lists pods: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = fx.api("POST", PODS, &reader_token, &pod("by-reader")).await;
    assert_eq!(status, 403, "reader cannot create pods: {body}");
    assert!(body.contains("cannot create resource"), "{body}");
    // The admin tier can (once the controller manager made the default ServiceAccount, which
    // the ServiceAccount admission plugin looks up).
    let start = Instant::now();
    loop {
        let (status, body) = fx.api("POST", PODS, &admin_token, &pod("by-admin")).await;
        if status == 201 {
            break;
        }
        assert!(
            status == 403 && body.contains("service account") && start.elapsed() < WAIT,
            "admin creates a pod: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, body) = fx
        .api("GET", &format!("{PODS}/by-admin"), &reader_token, "")
        .await;
    assert_eq!(status, 200, "reader gets the pod: {body}");

    // Unstaked, another audience, expired: 401.
    let unstaked_token = unstaked.mint_for(AUDIENCE, now, 600).expect("token");
    let other_audience = admin
        .mint_for("nautilus:someone/else", now, 600)
        .expect("token");
    let expired = admin.mint_for(AUDIENCE, now - 3_600, 600).expect("token");
    for (what, token) in [
        ("unstaked", &unstaked_token),
        ("other audience", &other_audience),
        ("expired", &expired),
    ] {
        let (status, body) = fx.api("GET", PODS, token, "").await;
        assert_eq!(status, 401, "{what}: {body}");
    }

    // Killing kube-apiserver turns APIServerReady false; it comes back.
    let apiserver = report.control_plane.pid.expect("kube-apiserver pid") as i32;
    assert_eq!(pid_of("kube-apiserver", &needle), Some(apiserver));
    let killed = Instant::now();
    kill(apiserver);
    fx.report_where("the API server unhealthy", |r| {
        !healthy(r, Component::ApiServer)
    })
    .await;
    let detected = killed.elapsed();
    let back = fx
        .report_where("the API server back", |r| {
            r.control_plane.pid.is_some_and(|p| p as i32 != apiserver) && r.all_healthy()
        })
        .await;
    println!(
        "measured: kube-apiserver killed -> unhealthy in {detected:?}, healthy again in {:?}",
        killed.elapsed()
    );
    assert!(back.control_plane.restarts >= 1);
    assert!(
        back.control_plane
            .last_exit
            .as_deref()
            .is_some_and(|e| e.starts_with("kube-apiserver: ")),
        "{:?}",
        back.control_plane.last_exit
    );
    let (status, body) = fx.api("GET", PODS, &reader_token, "").await;
    assert_eq!(status, 200, "tokens work after the restart: {body}");

    // Killing kube-scheduler turns SchedulerReady false; it comes back.
    let scheduler = pid_of("kube-scheduler", &needle).expect("scheduler runs");
    let killed = Instant::now();
    kill(scheduler);
    fx.report_where("the scheduler unhealthy", |r| {
        !healthy(r, Component::Scheduler)
    })
    .await;
    fx.report_where("the scheduler back", |r| {
        healthy(r, Component::Scheduler) && r.all_healthy()
    })
    .await;
    assert_ne!(pid_of("kube-scheduler", &needle), Some(scheduler));
    println!(
        "measured: kube-scheduler killed -> healthy again in {:?}",
        killed.elapsed()
    );

    fx.shutdown().await;
}

/// `call` every 250 ms until it answers `want` or [`WAIT`] passed; its last answer.
async fn eventually<F, Fut>(want: u16, mut call: F) -> (u16, String)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (u16, String)>,
{
    let start = Instant::now();
    loop {
        let (status, body) = call().await;
        if status == want || start.elapsed() > WAIT {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn node(name: &str) -> String {
    format!(r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}"}}}}"#)
}

/// Seal tokens of the worker tier are node identities, and the real Node authorizer and
/// NodeRestriction confine each to the node its own address names: a staker cannot register,
/// change or read as another staker's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_tokens_are_nodes_confined_to_their_own_objects() {
    let Some(assets) =
        kubernetes_assets_or_skip("worker_tokens_are_nodes_confined_to_their_own_objects")
    else {
        return;
    };
    let admin = generate_key(SignatureScheme::Ed25519).expect("key");
    let alice = generate_key(SignatureScheme::Ed25519).expect("key");
    let bob = generate_key(SignatureScheme::Secp256r1).expect("key");
    let fx = Fixture::start(&assets, &[(&admin, 25_000), (&alice, 1_500), (&bob, 1_500)]).await;
    let now = nautilus_seal::unix_now();
    let admin_token = admin.mint_for(AUDIENCE, now, 600).expect("token");
    let alice_token = alice.mint_for(AUDIENCE, now, 600).expect("token");
    let bob_token = bob.mint_for(AUDIENCE, now, 600).expect("token");
    let (alice_node, bob_node) = (
        nautilus_seal::node_name(&alice.address()),
        nautilus_seal::node_name(&bob.address()),
    );

    // The API server sees a node: `system:node:<name>` in `system:nodes`.
    let review = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    let (status, body) = fx
        .api(
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &alice_token,
            review,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body.contains(&format!("\"username\":\"system:node:{alice_node}\"")),
        "{body}"
    );
    assert!(body.contains("\"system:nodes\""), "{body}");

    // Each registers its own Node; neither can register a name it does not hold.
    let (status, body) = fx
        .api("POST", "/api/v1/nodes", &alice_token, &node(&alice_node))
        .await;
    assert_eq!(status, 201, "alice registers her node: {body}");
    let (status, body) = fx
        .api("POST", "/api/v1/nodes", &bob_token, &node(&bob_node))
        .await;
    assert_eq!(status, 201, "bob registers his node: {body}");
    let (status, body) = fx
        .api(
            "POST",
            "/api/v1/nodes",
            &alice_token,
            &node("sui-chosen-name"),
        )
        .await;
    assert_eq!(status, 403, "a node name the address does not give: {body}");

    // Bob can neither change nor delete Alice's Node, nor renew her Lease.
    let patch = r#"{"metadata":{"labels":{"stolen":"yes"}}}"#;
    let alice_path = format!("/api/v1/nodes/{alice_node}");
    let (status, body) = fx.merge_patch(&alice_path, &bob_token, patch).await;
    assert_eq!(status, 403, "bob patches alice's node: {body}");
    assert!(
        body.contains("NodeRestriction") || body.contains("forbidden"),
        "{body}"
    );
    let (status, body) = fx.api("DELETE", &alice_path, &bob_token, "").await;
    assert_eq!(status, 403, "bob deletes alice's node: {body}");
    let (status, body) = fx
        .merge_patch(
            &alice_path,
            &alice_token,
            r#"{"metadata":{"labels":{"mine":"yes"}}}"#,
        )
        .await;
    assert_eq!(status, 200, "alice labels her own node: {body}");
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let lease = |name: &str| {
        format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}"}},"spec":{{"holderIdentity":"{name}","leaseDurationSeconds":40}}}}"#
        )
    };
    let (status, body) = fx
        .api("POST", leases, &alice_token, &lease(&alice_node))
        .await;
    assert_eq!(status, 201, "alice's lease: {body}");
    let (status, body) = fx
        .api(
            "POST",
            leases,
            &bob_token,
            &lease(&format!("{alice_node}-x")),
        )
        .await;
    assert_eq!(status, 403, "bob makes a lease not his: {body}");
    let (status, body) = fx
        .merge_patch(
            &format!("{leases}/{alice_node}"),
            &bob_token,
            r#"{"spec":{"holderIdentity":"bob"}}"#,
        )
        .await;
    assert_eq!(status, 403, "bob renews alice's lease: {body}");

    // A Secret used by a pod bound to Alice's node: Alice may read it, Bob may not.
    let secrets = "/api/v1/namespaces/default/secrets";
    let (status, body) = fx
        .api(
            "POST",
            secrets,
            &admin_token,
            r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"alices"},"stringData":{"k":"v"}}"#,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let bound_pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"on-alice"}},"spec":{{"nodeName":"{alice_node}","automountServiceAccountToken":false,"containers":[{{"name":"c","image":"registry.k8s.io/pause:3.10","volumeMounts":[{{"name":"s","mountPath":"/s"}}]}}],"volumes":[{{"name":"s","secret":{{"secretName":"alices"}}}}]}}}}"#
    );
    let (status, body) = eventually(201, || fx.api("POST", PODS, &admin_token, &bound_pod)).await;
    assert_eq!(status, 201, "the admin binds a pod to alice's node: {body}");
    let secret = format!("{secrets}/alices");
    let (status, body) = eventually(200, || fx.api("GET", &secret, &alice_token, "")).await;
    assert_eq!(status, 200, "alice reads her pod's secret: {body}");
    let (status, body) = fx.api("GET", &secret, &bob_token, "").await;
    assert_eq!(status, 403, "bob reads alice's pod's secret: {body}");
    assert!(!body.contains("\"k\""), "{body}");
    // Nor may he change the pod's status, which only its node may.
    let (status, body) = fx
        .merge_patch(
            &format!("{PODS}/on-alice/status"),
            &bob_token,
            r#"{"status":{"phase":"Failed"}}"#,
        )
        .await;
    assert_eq!(status, 403, "bob changes the status of alice's pod: {body}");

    // kube-proxy with the node's token (`nautilus:node-proxiers` → system:node-proxier).
    let (status, body) = eventually(200, || {
        fx.api(
            "GET",
            "/apis/discovery.k8s.io/v1/endpointslices",
            &alice_token,
            "",
        )
    })
    .await;
    assert_eq!(
        status, 200,
        "kube-proxy's reads with a worker token: {body}"
    );

    fx.shutdown().await;
}

/// The files the agent prepares for K3s, taken by the real kube-apiserver with exactly the
/// rendered config's `kube-apiserver-arg` list plus the flags K3s implies for them (K3s'
/// own datastore, kine, is stood in for by etcd; the serving certificate K3s would issue
/// from `server-ca` by the agent's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_k3s_files_and_flags_start_a_real_kube_apiserver() {
    use nautilus_agent::{flags, k3s, kubernetes, material};
    let Some(assets) =
        kubernetes_assets_or_skip("the_k3s_files_and_flags_start_a_real_kube_apiserver")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _reaper = Reaper(dir.path().display().to_string());
    let data_dir = dir.path().join("k3s");
    let mut config = enclave_config(&data_dir, free_port(), "https://127.0.0.1:1");
    config.control_plane.distribution = "k3s".into();
    let material = material::BootMaterial::generate(&config).expect("material");
    let ports = flags::ComponentPorts {
        etcd_client: free_port(),
        etcd_peer: free_port(),
        ..flags::ComponentPorts::default()
    };
    // The webhook's kubeconfig only has to parse for the API server to start.
    let webhook_kubeconfig = dir.path().join("webhook-kubeconfig.yaml");
    std::fs::write(
        &webhook_kubeconfig,
        nautilus_agent::webhook::webhook_kubeconfig(
            "https://127.0.0.1:1/authenticate",
            &material.serving_ca.cert_pem,
        )
        .expect("kubeconfig"),
    )
    .expect("write");
    let spec = flags::spec_flags(&config, &webhook_kubeconfig, &ports).expect("flags");
    let rendered = k3s::render_config(&config, &spec).expect("k3s config");
    // What the agent writes for K3s, and only that.
    k3s::write_ca_files(&data_dir, &material).expect("ca files");
    // What K3s makes itself before it starts the API server: a serving certificate from
    // server-ca, the request-header and kubelet client certificates, the encryption config.
    let layout = kubernetes::Layout::new(&data_dir);
    kubernetes::write_files(&config, &layout, &material, "127.0.0.1:1").expect("k3s-made files");
    k3s::write_ca_files(&data_dir, &material).expect("the agent's CA files again, on top");

    let mut flags = k3s::implied_apiserver_flags(&rendered).expect("implied");
    let port = free_port();
    for (name, value) in flags.iter_mut() {
        if name == "secure-port" {
            *value = port.to_string();
        }
    }
    flags.extend([
        ("storage-backend".to_owned(), "etcd3".to_owned()),
        (
            "etcd-servers".to_owned(),
            format!("https://127.0.0.1:{}", ports.etcd_client),
        ),
        (
            "etcd-cafile".to_owned(),
            layout.tls.join("etcd/server-ca.crt").display().to_string(),
        ),
        (
            "etcd-certfile".to_owned(),
            layout.tls.join("etcd/client.crt").display().to_string(),
        ),
        (
            "etcd-keyfile".to_owned(),
            layout.tls.join("etcd/client.key").display().to_string(),
        ),
        (
            "cert-dir".to_owned(),
            layout.tls.join("temporary-certs").display().to_string(),
        ),
        ("advertise-address".to_owned(), "127.0.0.1".to_owned()),
    ]);
    let mut etcd = ProcessGuard::spawn(
        &assets.etcd,
        &flags::as_argv(&kubernetes::etcd_flags(&layout, &ports)),
        &dir.path().join("etcd.log"),
    );
    let mut apiserver = ProcessGuard::spawn(
        &assets.bin_dir.join("kube-apiserver"),
        &flags::as_argv(&flags),
        &dir.path().join("kube-apiserver.log"),
    );

    // /readyz over TLS verified with the agent's serving CA, as the agent's admin.
    let tls = Arc::new(
        nautilus_agent::client::client_config(
            &[&material.serving_ca.cert_pem],
            Some((
                &material.components.admin.cert_der,
                &material.components.admin.key_der,
            )),
        )
        .expect("tls"),
    );
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        etcd.assert_running("etcd");
        apiserver.assert_running("kube-apiserver");
        let answer = nautilus_agent::client::send(
            Arc::clone(&tls),
            nautilus_agent::client::Request {
                addr: &addr,
                server_name: "127.0.0.1",
                method: http::Method::GET,
                path: "/readyz",
                headers: Vec::new(),
                body: Vec::new(),
            },
            Duration::from_secs(2),
        )
        .await;
        if matches!(&answer, Ok((status, _)) if status.is_success()) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "kube-apiserver never ready: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "kube-apiserver ready on the k3s files and flags in {:?}",
        start.elapsed()
    );
}

/// A child process (its output in a log file) killed with its group on drop.
struct ProcessGuard(std::process::Child, std::path::PathBuf);

impl ProcessGuard {
    fn spawn(program: &Path, args: &[String], log: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let file = std::fs::File::create(log).expect("log file");
        let child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        Self(child, log.to_path_buf())
    }

    fn assert_running(&mut self, name: &str) {
        if let Ok(Some(status)) = self.0.try_wait() {
            let stderr = std::fs::read_to_string(&self.1).unwrap_or_default();
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            panic!(
                "{name} exited ({status}):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// The body of an HTTP/1.1 response `text` (head included), de-chunked when it was chunked.
fn response_body(text: &str) -> String {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return String::new();
    };
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_owned();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";

/// A kubelet's serving-certificate request for `sans`, as node `node`; the key and the object.
fn serving_csr(node: &str, name: &str, sans: &[&str]) -> (rcgen::KeyPair, String) {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName((*san).try_into().expect("dns")),
        })
        .collect();
    let pem = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let object = serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(pem),
            "signerName": "kubernetes.io/kubelet-serving",
            "usages": ["digital signature", "server auth"],
        },
    });
    (key, object.to_string())
}

fn node_object(name: &str, ip: &str, kubelet_port: u16) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        },
    })
    .to_string()
}

/// A stand-in kubelet: HTTPS on `addr` with `cert_pem` and `key`, answering every request with
/// `kubelet stand-in <name>`; counts the connections it accepted.
async fn stand_in_kubelet(
    listener: std::net::TcpListener,
    name: &'static str,
    cert_pem: &str,
    key: &rcgen::KeyPair,
) -> Arc<std::sync::atomic::AtomicUsize> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate pem");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(nautilus_agent::client::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("stand-in listener");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("kubelet stand-in {name}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    accepted
}

/// A network namespace of the test's own with a veth pair: `10.213.<octet>.1/29` on the host's
/// side, `.2` and `.3` inside; removed (with the pair) on drop. The kube-apiserver refuses to
/// proxy to loopback addresses, so a stand-in kubelet needs an address of its own.
struct Netns {
    name: String,
    octet: u8,
}

impl Netns {
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let name = format!("nautilus-kp-{pid}");
        let octet = 200 + (pid % 50) as u8;
        let host_if = format!("kph{}", pid % 100_000);
        let ns_if = format!("kpn{}", pid % 100_000);
        let ns = Self { name, octet };
        let run = |args: &[&str]| -> Result<(), String> {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(&["netns", "add", &ns.name])?;
        let host = format!("10.213.{octet}.1/29");
        let inside = [
            format!("10.213.{octet}.2/29"),
            format!("10.213.{octet}.3/29"),
        ];
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns.name,
        ])?;
        run(&["addr", "add", &host, "dev", &host_if])?;
        run(&["link", "set", &host_if, "up"])?;
        for addr in &inside {
            run(&["-n", &ns.name, "addr", "add", addr, "dev", &ns_if])?;
        }
        run(&["-n", &ns.name, "link", "set", &ns_if, "up"])?;
        run(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `10.213.<octet>.<last>`.
    fn ip(&self, last: u8) -> String {
        format!("10.213.{}.{last}", self.octet)
    }

    /// A TCP listener on `ip:port` inside the namespace.
    fn bind(&self, ip: &str, port: u16) -> std::net::TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = format!("{ip}:{port}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            // The address is configured; the veth may still be coming up.
            let start = Instant::now();
            loop {
                match std::net::TcpListener::bind(&addr) {
                    Ok(listener) => return listener,
                    Err(e) if start.elapsed() < Duration::from_secs(5) => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("bind {addr} in the namespace: {e}"),
                }
            }
        })
        .join()
        .expect("bind thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn metric_value(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// Issue 23's kubelet path on the real control plane: the agent approves a kubelet-serving CSR
/// made as the node for its own address, the controller manager signs it with the serving CA,
/// and a CSR naming another node's address stays pending. A stand-in kubelet serving that
/// certificate on an address of the test's own network namespace is then reached through the
/// API server's node proxy: over the
/// egress selector's Unix socket, the agent's bridge and the sidecar's CONNECT proxy, with the
/// API server verifying the certificate (a self-signed one is refused; a port the sidecar does
/// not allow is never dialled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_serving_certificates_and_the_path_to_kubelets_on_a_real_control_plane() {
    let Some(assets) = kubernetes_assets_or_skip(
        "kubelet_serving_certificates_and_the_path_to_kubelets_on_a_real_control_plane",
    ) else {
        return;
    };
    let netns = match Netns::create() {
        Ok(netns) => netns,
        Err(e) => {
            let line = format!(
                "skipped: kubelet_serving_certificates_and_the_path_to_kubelets_on_a_real_control_plane: cannot make a network namespace ({e})"
            );
            assert!(
                std::env::var("NAUTILUS_E2E_REQUIRE").as_deref() != Ok("1"),
                "{line}"
            );
            println!("{line}");
            return;
        }
    };
    let (worker_ip, other_ip) = (netns.ip(2), netns.ip(3));
    let admin = generate_key(SignatureScheme::Ed25519).expect("key");
    let (kubelet_port, self_signed_port, refused_port) = (free_port(), free_port(), free_port());
    // The sidecar's default kubelet rule (any address but loopback, link-local and the like),
    // on two kubelet ports.
    let fx = Fixture::start_with(
        &assets,
        &[(&admin, 25_000)],
        &[
            "--egress-allow-kubelet-port".into(),
            kubelet_port.to_string(),
            "--egress-allow-kubelet-port".into(),
            self_signed_port.to_string(),
        ],
    )
    .await;
    fx.report_where("all healthy", Report::all_healthy).await;
    let token = admin
        .mint_for(AUDIENCE, nautilus_seal::unix_now(), 600)
        .expect("token");
    let as_node = |node: &'static str| {
        [
            ("Impersonate-User", format!("system:node:{node}")),
            ("Impersonate-Group", "system:nodes".to_owned()),
        ]
    };

    // Two nodes, as their kubelets would register them.
    for (name, ip, port) in [
        ("worker-1", worker_ip.as_str(), kubelet_port),
        ("worker-2", other_ip.as_str(), refused_port),
        ("worker-3", worker_ip.as_str(), self_signed_port),
    ] {
        let (status, body) = fx
            .api_with(
                "POST",
                "/api/v1/nodes",
                &token,
                &[],
                &node_object(name, ip, port),
            )
            .await;
        assert_eq!(status, 201, "node {name}: {body}");
        assert!(body.contains(ip), "status kept on create: {body}");
    }

    // worker-1 asks for its own name and address, and for worker-2's address.
    let (key, own) = serving_csr("worker-1", "worker-1-serving", &["worker-1", &worker_ip]);
    let (_, other) = serving_csr("worker-1", "worker-1-steals", &[&other_ip]);
    let created = Instant::now();
    for csr in [&own, &other] {
        let headers = as_node("worker-1");
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = fx.api_with("POST", CSRS, &token, &headers, csr).await;
        assert_eq!(status, 201, "{body}");
        assert!(
            body.contains(r#""username":"system:node:worker-1""#),
            "made by the node: {body}"
        );
    }
    let issued = loop {
        let (status, body) = fx
            .api_with("GET", &format!("{CSRS}/worker-1-serving"), &token, &[], "")
            .await;
        assert_eq!(status, 200, "{body}");
        let object: serde_json::Value = serde_json::from_str(&body).expect("json");
        if let Some(cert) = object["status"]["certificate"].as_str() {
            let conditions = object["status"]["conditions"].to_string();
            assert!(
                conditions.contains(r#""type":"Approved""#)
                    && conditions.contains("NautilusNodeServing"),
                "{conditions}"
            );
            use base64::Engine as _;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(cert)
                .expect("base64");
            break String::from_utf8(pem).expect("pem");
        }
        assert!(
            created.elapsed() < WAIT,
            "worker-1's own request never issued: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "measured: kubelet-serving CSR created -> approved and issued in {:?}",
        created.elapsed()
    );
    // Several more approver rounds: the other node's address stays pending.
    tokio::time::sleep(nautilus_agent::csr_approver::POLL * 3).await;
    let (status, body) = fx
        .api_with("GET", &format!("{CSRS}/worker-1-steals"), &token, &[], "")
        .await;
    assert_eq!(status, 200, "{body}");
    let object: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        object["status"]["conditions"].is_null() && object["status"]["certificate"].is_null(),
        "a request for another node's address stays pending: {body}"
    );

    // The issued certificate chains to the attested serving CA, for worker-1's address.
    let hits = stand_in_kubelet(
        netns.bind(&worker_ip, kubelet_port),
        "worker-1",
        &issued,
        &key,
    )
    .await;
    let direct = tokio::net::TcpStream::connect((worker_ip.as_str(), kubelet_port))
        .await
        .expect("stand-in");
    let (status, text) = https_request(
        Box::new(direct),
        &fx.ca_pem,
        &worker_ip,
        "GET",
        "/healthz",
        None,
        "",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Through the API server: egress selector, agent bridge, sidecar CONNECT proxy.
    let (_, before) = sidecar_http(fx.http, "GET", "/metrics", "").await;
    let tunnels = "nautilus_sidecar_proxy_connections_total{proxy=\"egress\"}";
    let started = Instant::now();
    let (status, body) = fx
        .api_with(
            "GET",
            "/api/v1/nodes/worker-1/proxy/healthz",
            &token,
            &[],
            "",
        )
        .await;
    let through = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "kubelet stand-in worker-1");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2);
    let (_, after) = sidecar_http(fx.http, "GET", "/metrics", "").await;
    assert!(
        metric_value(&after, tunnels) > metric_value(&before, tunnels),
        "the API server's connection went through the sidecar's egress proxy"
    );
    println!("measured: node proxy GET through the sidecar to the stand-in kubelet: {through:?}");

    // A kubelet whose certificate is not the serving CA's is refused by the API server.
    let self_signed_key = rcgen::KeyPair::generate().expect("key");
    let self_signed = rcgen::CertificateParams::new(vec![worker_ip.clone()])
        .expect("params")
        .self_signed(&self_signed_key)
        .expect("self-signed");
    let impostor_hits = stand_in_kubelet(
        netns.bind(&worker_ip, self_signed_port),
        "impostor",
        &self_signed.pem(),
        &self_signed_key,
    )
    .await;
    let (status, body) = fx
        .api_with(
            "GET",
            "/api/v1/nodes/worker-3/proxy/healthz",
            &token,
            &[],
            "",
        )
        .await;
    assert_ne!(status, 200, "{body}");
    assert!(!body.contains("kubelet stand-in"), "{body}");
    assert!(
        body.contains("x509") || body.contains("certificate"),
        "refused for its certificate: {status} {body}"
    );
    println!(
        "impostor kubelet (self-signed certificate) refused by the API server: {status} {body}"
    );
    assert_eq!(
        impostor_hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "reached (through the proxy), then refused at the TLS handshake"
    );

    // A port the sidecar does not allow: refused by the proxy, never dialled.
    let refused_hits = stand_in_kubelet(
        netns.bind(&other_ip, refused_port),
        "worker-2",
        &self_signed.pem(),
        &self_signed_key,
    )
    .await;
    let (status, body) = fx
        .api_with(
            "GET",
            "/api/v1/nodes/worker-2/proxy/healthz",
            &token,
            &[],
            "",
        )
        .await;
    assert_ne!(status, 200, "{body}");
    assert_eq!(
        refused_hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the API server dials nothing itself"
    );
    let (_, metrics) = sidecar_http(fx.http, "GET", "/metrics", "").await;
    assert!(
        metric_value(
            &metrics,
            "nautilus_sidecar_egress_refused_total{reason=\"not_allowed\"}"
        ) >= 1,
        "{metrics}"
    );

    fx.shutdown().await;
    drop(netns);
}
