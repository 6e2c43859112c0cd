//! Test harness for the e2e suite: the whole system against a real Kubernetes API server.
//!
//! [`cluster`] decides what the suite runs against, in this order:
//! 1. a throwaway control plane ([`envtest::ControlPlane`]) when `$KUBEBUILDER_ASSETS` (default
//!    `/usr/local/kubebuilder/bin`) holds `etcd` and `kube-apiserver`;
//! 2. else the cluster `KUBECONFIG` names (kind, k3d, any conformant server). A `KUBECONFIG` that
//!    is set but does not work is a failure, not a skip;
//! 3. else one `skipped:` line that names what is missing, or a failure when
//!    `NAUTILUS_E2E_REQUIRE=1`.
//!
//! Each test then gets a fresh namespace, installs (or updates) the CRD, runs the operator in
//! this process in the `local` runtime (sidecar and agent as local processes, simulated NSM), a
//! local Sui full node over TLS, and drives NautilusMasters as a user would. Teardown deletes the
//! NautilusMasters while the operator still runs (so finalizers complete), checks that no
//! process is left, and deletes the namespace; whatever a failing test left running is killed
//! when its [`Harness`] drops.
//!
//! This crate is test support: it panics with a message where a test would.

pub mod envtest;
pub mod kms;
pub mod tamper;
pub mod transitions;
pub mod worker;

pub use transitions::{Transition, Transitions};

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use nautilus_crds::{NautilusMaster, NautilusMasterSpec};
use nautilus_operator::controller::{self, Context};
use nautilus_operator::metrics::Metrics;
use nautilus_operator::runtime::{EnclaveRuntime, LocalRuntime, LocalSettings};
use nautilus_seal::KeystoreKey;
use nautilus_sui_fixture::{Chain, TestCa};

/// Field manager of everything the suite writes.
pub const FIELD_MANAGER: &str = "nautilus-e2e";
/// Longest wait for a state the operator should reach.
pub const WAIT: Duration = Duration::from_secs(180);
/// Set to `1` to turn a missing cluster into a failure.
pub const REQUIRE_ENV: &str = "NAUTILUS_E2E_REQUIRE";

/// The API server a test runs against.
pub struct TestCluster {
    /// An admin client.
    pub client: Client,
    /// A kubeconfig file for the same server and user, for kubectl.
    pub kubeconfig: PathBuf,
    /// The throwaway control plane, when the suite started one; it stops when this drops.
    pub plane: Option<envtest::ControlPlane>,
}

impl std::fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCluster")
            .field("kubeconfig", &self.kubeconfig)
            .field("plane", &self.plane)
            .finish_non_exhaustive()
    }
}

/// The `nautilusctl` binary beside the other development binaries ([`bin_dir`]).
pub fn nautilusctl() -> PathBuf {
    let path = bin_dir().join("nautilusctl");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// A client made from a kubeconfig's text, as kubectl would use it (its CA, its exec plugin).
pub async fn client_from_kubeconfig(text: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config from kubeconfig");
    Client::try_from(config).expect("client from kubeconfig")
}

/// A `SelfSubjectReview` through `client`: who the API server takes the caller for.
pub async fn self_subject_review(client: &Client) -> Result<serde_json::Value, kube::Error> {
    client
        .request(
            http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
                .header("content-type", "application/json")
                .body(
                    br#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#
                        .to_vec(),
                )
                .expect("request"),
        )
        .await
}

/// `kubectl --kubeconfig <kubeconfig> <args>`: whether it succeeded, and its stdout and stderr.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("kubectl")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Whether [`REQUIRE_ENV`] asks for a cluster.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The API server for `test` (see the crate documentation for the order), or `None` after
/// printing the one skip line. Panics when a cluster is configured but does not work, or when
/// none is found and [`REQUIRE_ENV`] is `1`.
pub async fn cluster(test: &str) -> Option<TestCluster> {
    let assets = envtest::Assets::find();
    if let Ok(assets) = &assets {
        let plane = envtest::ControlPlane::start(assets)
            .await
            .unwrap_or_else(|err| panic!("e2e {test}: the throwaway control plane: {err}"));
        let client = plane
            .client()
            .await
            .unwrap_or_else(|err| panic!("e2e {test}: {err}"));
        return Some(TestCluster {
            client,
            kubeconfig: plane.kubeconfig.clone(),
            plane: Some(plane),
        });
    }
    let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) else {
        let reason = format!(
            "{}, and KUBECONFIG is not set",
            assets.err().unwrap_or_default()
        );
        assert!(!required(), "e2e {test}: {REQUIRE_ENV}=1 but {reason}");
        println!("skipped: e2e {test}: {reason}");
        return None;
    };
    let path = PathBuf::from(path);
    let broken = |what: String| -> ! {
        panic!(
            "e2e {test}: KUBECONFIG={} is set but {what} (unset it to skip)",
            path.display()
        )
    };
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(err) => broken(format!("cannot be read: {err}")),
    };
    let client = match Client::try_from(config) {
        Ok(client) => client,
        Err(err) => broken(format!("makes no client: {err}")),
    };
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Some(TestCluster {
            client,
            kubeconfig: path,
            plane: None,
        }),
        Ok(Err(err)) => broken(format!("its API server refused: {err}")),
        Err(_) => broken("its API server did not answer within 10 s".into()),
    }
}

/// The directory holding the development binaries the local runtime starts
/// ([`nautilus_operator::runtime::development_bin_dir`]); panics, saying how to build them, when
/// they are missing.
pub fn bin_dir() -> PathBuf {
    nautilus_operator::runtime::development_bin_dir().unwrap_or_else(|| {
        panic!(
            "nautilus-sidecar, nautilus-agent or nautilus-standin is missing: run \
             `cargo build --workspace --bins` or set NAUTILUS_BIN_DIR"
        )
    })
}

/// `local` with its network checked: isolated enclaves (the default) where this machine can
/// make network namespaces; elsewhere one line says that the enclaves share the host's network
/// in this test, and with [`REQUIRE_ENV`] `1` the test fails instead.
pub async fn with_network_checked(mut local: LocalSettings) -> LocalSettings {
    if let Err(err) = local.check_network().await {
        assert!(!required(), "{REQUIRE_ENV}=1 but {err}");
        println!("not isolated: enclaves share the host's network in this test: {err}");
        local.network = nautilus_operator::runtime::LocalNetwork::Host;
    }
    local
}

/// One test's world: a namespace, an operator scoped to it, a Sui node, a staked key.
pub struct Harness {
    /// Client of the cluster under test.
    pub client: Client,
    /// The cluster (and its throwaway control plane, if any).
    pub cluster: TestCluster,
    /// The operator's context (its runtime places each resource's control plane).
    pub ctx: Arc<Context>,
    /// The test's namespace.
    pub namespace: String,
    /// A Sui key with [`Harness::STAKE_MIST`] staked on the fixture node.
    pub staker: KeystoreKey,
    /// A Sui key with [`Harness::READER_STAKE_MIST`] staked: the default reader tier.
    pub reader: KeystoreKey,
    /// A Sui key with [`Harness::WORKER_STAKE_MIST`] staked: the default worker tier, a node
    /// identity.
    pub worker: KeystoreKey,
    /// The fixture node's chain state ([`Chain::withdraw`] unstakes a key).
    pub chain: Arc<Chain>,
    /// The control-plane distribution of [`Harness::development_spec`]: `kubernetes` when
    /// `$KUBEBUILDER_ASSETS` holds etcd, kube-apiserver, kube-scheduler and
    /// kube-controller-manager (real components), else `k3s` run by the stand-in.
    pub distribution: &'static str,
    /// Scratch space: the operator's work directory, the Sui CA file.
    pub dir: tempfile::TempDir,
    /// The fixture node's address (`https://127.0.0.1:port`).
    pub sui_url: String,
    /// The local runtime's settings (the in-process operator's, and the operator process's).
    pub local: LocalSettings,
    /// The development KMS of [`Harness::start_with_kms`], whose policy admits the PCRs of
    /// [`Harness::development_spec`].
    pub kms: Option<kms::DevKms>,
    bin: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
    process: Option<OperatorProcess>,
    processes_started: u32,
}

/// The operator running as a process of its own ([`Harness::spawn_operator`]); killed when
/// dropped.
#[derive(Debug)]
struct OperatorProcess {
    child: std::process::Child,
    log: PathBuf,
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `nautilus-e2e-<test>-<pid>`: a namespace of the test's own.
fn namespace_for(test: &str) -> String {
    format!(
        "nautilus-e2e-{}-{}",
        test.replace('_', "-").chars().take(30).collect::<String>(),
        std::process::id()
    )
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("namespace", &self.namespace)
            .field("sui_url", &self.sui_url)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// Stake of [`Harness::staker`]: the default admin tier needs 10 000.
    pub const STAKE_MIST: u64 = 20_000;
    /// Stake of [`Harness::reader`]: the default reader tier needs 100, the worker tier 1 000.
    pub const READER_STAKE_MIST: u64 = 500;
    /// Stake of [`Harness::worker`]: the default worker tier needs 1 000.
    pub const WORKER_STAKE_MIST: u64 = 1_500;

    /// Namespace, CRD, Sui node and operator for `test`. `sidecar` is a program the local
    /// runtime starts in place of `nautilus-sidecar`, with its arguments (for example
    /// `nautilus-tamper-sidecar`, see [`tamper`]); `None` runs the real sidecar.
    pub async fn start(cluster: TestCluster, test: &str, sidecar: Option<&Path>) -> Self {
        Self::start_in(cluster, namespace_for(test), sidecar, &bin_dir()).await
    }

    /// The same in a namespace of the caller's choosing (created here, deleted by
    /// [`Harness::finish`]), with the development binaries in `bin`.
    pub async fn start_in(
        cluster: TestCluster,
        namespace: String,
        sidecar: Option<&Path>,
        bin: &Path,
    ) -> Self {
        let mut h = Self::prepare(cluster, namespace, sidecar, bin, None).await;
        h.run_operator();
        h
    }

    /// [`Harness::start`] with the local runtime publishing each control plane's API port on
    /// `publish` (a veth's host end, say) rather than 127.0.0.1: its measured
    /// `advertiseAddress`, where a worker and its pods reach it.
    pub async fn start_published(cluster: TestCluster, test: &str, publish: IpAddr) -> Self {
        Self::start_in_published(cluster, namespace_for(test), &bin_dir(), Some(publish)).await
    }

    /// [`Harness::start_in`] (the real sidecar) publishing on `publish` when given.
    pub async fn start_in_published(
        cluster: TestCluster,
        namespace: String,
        bin: &Path,
        publish: Option<IpAddr>,
    ) -> Self {
        let mut h = Self::prepare(cluster, namespace, None, bin, publish).await;
        h.run_operator();
        h
    }

    /// Join `worker` to the control plane of NautilusMaster `name` as a user would: `nautilusctl
    /// join` (which verifies the enclave first) with [`Harness::worker`]'s key in a keystore
    /// under `dir`, its files in `dir/node`, then the kubelet with exactly those files
    /// (overlaid with the worker machine's cgroup and paths) as the node name `join` gives.
    /// Returns `join`'s JSON summary once the kubelet runs; [`worker::Worker`] waits for the
    /// Node. Keep `dir` out of [`Harness::dir`]: the kubelet is the worker's, not the
    /// NautilusMaster's, so it does not end with it.
    pub async fn join_worker(
        &self,
        name: &str,
        worker: &mut worker::Worker,
        dir: &Path,
    ) -> serde_json::Value {
        use std::os::unix::fs::PermissionsExt as _;
        let keystore = dir.join("worker.keystore");
        std::fs::write(
            &keystore,
            nautilus_seal::Keystore::from_keys(vec![self.worker.clone()]).to_json(),
        )
        .expect("write the worker's keystore");
        std::fs::set_permissions(&keystore, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the keystore");
        let out = dir.join("node");
        let output = tokio::process::Command::new(self.bin.join("nautilusctl"))
            .args(["join", name, "-n", &self.namespace, "--allow-simulated"])
            .arg("--kubeconfig")
            .arg(&self.cluster.kubeconfig)
            .arg("--keystore")
            .arg(&keystore)
            .arg("--out")
            .arg(&out)
            .args(["--cgroup-driver", "cgroupfs", "--cgroup-v1", "--allow-swap"])
            .arg(format!("--node-ip={}", worker.node_ip()))
            .args(["--output", "json"])
            .env_remove("NAUTILUS_SUI_KEYSTORE")
            .kill_on_drop(true)
            .output()
            .await
            .expect("nautilusctl join runs");
        let summary: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                panic!(
                    "join printed no JSON ({e}): {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        assert!(output.status.success(), "nautilusctl join: {summary:#}");
        let node_name = summary["nodeName"].as_str().expect("nodeName").to_owned();
        worker
            .start_kubelet_as(
                Some(&node_name),
                &worker::KubeletSettings {
                    kubeconfig: out.join("kubeconfig"),
                    config: out.join("kubelet-config.yaml"),
                    extra_args: Vec::new(),
                },
            )
            .expect("start the kubelet");
        summary
    }

    /// The operator, in this process, until [`Harness::finish`].
    fn run_operator(&mut self) {
        let h = self;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        h.operator = Some(tokio::spawn(controller::run(
            Arc::clone(&h.ctx),
            Some(h.namespace.clone()),
            async {
                let _ = stopped.await;
            },
        )));
        h.stop = Some(stop);
    }

    /// [`Harness::start`] (the real sidecar) with a development KMS ([`kms::DevKms`]) whose key
    /// policy admits the enclaves of [`Harness::development_spec`], and a local runtime that
    /// gives its sidecars and agents what they need to reach it: for sealed state.
    pub async fn start_with_kms(cluster: TestCluster, test: &str) -> Self {
        let mut h =
            Self::prepare_with(cluster, namespace_for(test), None, &bin_dir(), None, true).await;
        h.run_operator();
        h
    }

    /// [`Harness::development_spec`] keeping sealed state with [`Harness::kms`] (from
    /// [`Harness::start_with_kms`]): a snapshot every `backup_interval_seconds`, three kept,
    /// the given deletion policy (`Retain` or `Delete`).
    pub fn state_spec(
        &self,
        backup_interval_seconds: u32,
        deletion_policy: &str,
    ) -> NautilusMasterSpec {
        let kms = self.kms.as_ref().expect("a harness started with a KMS");
        let mut spec = serde_json::to_value(self.development_spec()).expect("spec json");
        spec["state"] = serde_json::json!({
            "kms": { "keyID": kms::KEY_ID, "region": kms::REGION, "endpoint": kms.endpoint() },
            "backupIntervalSeconds": backup_interval_seconds,
            "retain": 3,
            "deletionPolicy": deletion_policy,
        });
        serde_json::from_value(spec).expect("state spec")
    }

    /// Namespace, CRD and Sui node for `test`, with the operator as a process of its own (the
    /// `nautilus-operator` binary, [`Harness::spawn_operator`]) rather than in this process, so
    /// that a test can SIGKILL it. It runs the local runtime with the settings the in-process one
    /// would have; [`Harness::ctx`] is not running and serves only to compute what the operator
    /// computes ([`Harness::measured_digest`]).
    pub async fn start_with_operator_process(cluster: TestCluster, test: &str) -> Self {
        let mut h = Self::prepare(cluster, namespace_for(test), None, &bin_dir(), None).await;
        h.spawn_operator();
        h
    }

    async fn prepare(
        cluster: TestCluster,
        namespace: String,
        sidecar: Option<&Path>,
        bin: &Path,
        publish: Option<IpAddr>,
    ) -> Self {
        Self::prepare_with(cluster, namespace, sidecar, bin, publish, false).await
    }

    async fn prepare_with(
        cluster: TestCluster,
        namespace: String,
        sidecar: Option<&Path>,
        bin: &Path,
        publish: Option<IpAddr>,
        with_kms: bool,
    ) -> Self {
        let client = cluster.client.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .with_test_writer()
            .try_init();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"app.kubernetes.io/part-of": "nautilus-e2e"}}
        }))
        .expect("namespace");
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .expect("create the test namespace");
        install_crd(&client).await;

        let dir = tempfile::tempdir().expect("tempdir");
        let staker = nautilus_seal::signer::generate_key(nautilus_seal::SignatureScheme::Ed25519)
            .expect("key");
        let ca = TestCa::generate();
        let ca_file = dir.path().join("sui-ca.pem");
        std::fs::write(&ca_file, &ca.ca_pem).expect("write the Sui CA");
        let reader = nautilus_seal::signer::generate_key(nautilus_seal::SignatureScheme::Ed25519)
            .expect("key");
        let worker = nautilus_seal::signer::generate_key(nautilus_seal::SignatureScheme::Ed25519)
            .expect("key");
        let chain = Arc::new(
            Chain::default()
                .with_stake(staker.address(), Self::STAKE_MIST)
                .with_stake(reader.address(), Self::READER_STAKE_MIST)
                .with_stake(worker.address(), Self::WORKER_STAKE_MIST),
        );
        let sui = nautilus_sui_fixture::serve_tls(Arc::clone(&chain), &ca).await;

        // Real components for the enclave's control plane wherever they exist.
        let kubernetes = envtest::Assets::find()
            .ok()
            .filter(|a| a.kube_scheduler.is_some() && a.kube_controller_manager.is_some());
        let distribution = if kubernetes.is_some() {
            "kubernetes"
        } else {
            "k3s"
        };
        let development = LocalSettings::development(bin, dir.path().join("operator"));
        let kms = if with_kms {
            let pcr = |b: u8| format!("{b:02x}").repeat(48);
            Some(kms::DevKms::start(dir.path(), [&pcr(0x10), &pcr(0x11), &pcr(0x12)]).await)
        } else {
            None
        };
        let local = LocalSettings {
            sidecar_binary: sidecar.map_or(development.sidecar_binary.clone(), Path::to_owned),
            sui_ca_file: Some(ca_file),
            kubernetes_bin_dir: kubernetes.as_ref().map(|a| a.dir.clone()),
            etcd_command: kubernetes.map(|a| a.etcd),
            api_publish_ip: publish.unwrap_or(development.api_publish_ip),
            kms_ca_file: kms.as_ref().map(|k| k.ca_file.clone()),
            simulated_root_key: kms.as_ref().map(|k| k.root_key_file.clone()),
            aws_credentials_file: kms.as_ref().map(|k| k.credentials_file.clone()),
            ..development
        };
        let local = with_network_checked(local).await;
        let runtime = EnclaveRuntime::Local(Box::new(LocalRuntime::new(local.clone())));
        controller::check_crd(&client)
            .await
            .expect("the operator sees the CRD");
        let ctx = Arc::new(Context::new(
            client.clone(),
            runtime,
            Arc::new(Metrics::new()),
        ));
        Self {
            client,
            cluster,
            ctx,
            namespace,
            staker,
            reader,
            worker,
            chain,
            distribution,
            dir,
            sui_url: format!("https://127.0.0.1:{}", sui.port()),
            local,
            kms,
            bin: bin.to_owned(),
            stop: None,
            operator: None,
            process: None,
            processes_started: 0,
        }
    }

    /// Start the `nautilus-operator` binary (beside the development binaries) as a child process
    /// under `setpriv --pdeathsig KILL`, watching the test's namespace with the local runtime and
    /// exactly the settings the in-process operator uses (the work directory included, so a
    /// restarted operator finds what its predecessor left). Its log is `operator-<n>.log` in the
    /// test's directory. Panics if one is running already or the binary is missing.
    pub fn spawn_operator(&mut self) {
        assert!(self.process.is_none(), "an operator process runs already");
        let binary = self.bin.join("nautilus-operator");
        assert!(
            binary.is_file(),
            "{} is missing: run `cargo build -p nautilus-operator` (or set NAUTILUS_BIN_DIR)",
            binary.display()
        );
        self.processes_started += 1;
        let log_path = self
            .dir
            .path()
            .join(format!("operator-{}.log", self.processes_started));
        let log = std::fs::File::create(&log_path).expect("create the operator log");
        let log_err = log.try_clone().expect("open the operator log");
        let port = envtest::free_port().expect("a free port");
        let s = &self.local;
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(&binary)
            .arg("--runtime=local")
            .arg(format!("--namespace={}", self.namespace))
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--sidecar-binary={}", s.sidecar_binary.display()))
            .arg(format!("--agent-binary={}", s.agent_binary.display()))
            .arg(format!(
                "--control-plane-command={}",
                s.control_plane_command
            ))
            .arg(format!("--local-work-dir={}", s.work_dir.display()))
            .arg(format!("--local-network={}", s.network.name()))
            .arg(format!("--local-api-address={}", s.api_publish_ip));
        if let Some(ca) = &s.sui_ca_file {
            cmd.arg(format!("--local-sui-ca-file={}", ca.display()));
        }
        if let Some(dir) = &s.kubernetes_bin_dir {
            cmd.arg(format!("--local-kubernetes-bin-dir={}", dir.display()));
        }
        if let Some(etcd) = &s.etcd_command {
            cmd.arg(format!("--local-etcd-command={}", etcd.display()));
        }
        for (flag, file) in [
            ("--local-kms-ca-file", &s.kms_ca_file),
            ("--local-simulated-root-key", &s.simulated_root_key),
            ("--local-aws-credentials-file", &s.aws_credentials_file),
        ] {
            if let Some(file) = file {
                cmd.arg(format!("{flag}={}", file.display()));
            }
        }
        let child = cmd
            .env("KUBECONFIG", &self.cluster.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(log))
            .stderr(std::process::Stdio::from(log_err))
            .spawn()
            .unwrap_or_else(|err| panic!("starting {}: {err}", binary.display()));
        tracing::info!(pid = child.id(), log = %log_path.display(), "started the operator process");
        self.process = Some(OperatorProcess {
            child,
            log: log_path,
        });
    }

    /// The PID of the operator process ([`Harness::spawn_operator`]); `setpriv` execs it, so it
    /// is the operator's own.
    pub fn operator_pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    /// SIGKILL the operator process and reap it: no shutdown runs, so whatever it started is
    /// left as a crash leaves it.
    pub fn kill_operator(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.child.kill();
            let _ = process.child.wait();
            tracing::info!(log = %process.log.display(), "killed the operator process");
        }
    }

    /// SIGTERM the operator process (it stops its sidecars) and wait for it, at most 30 s.
    fn terminate_operator(&mut self) {
        let Some(mut process) = self.process.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(process.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(process.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the operator process ignored SIGTERM for 30 s; its log:\n{}",
            envtest::log_tail(&process.log)
        );
    }

    /// Record every change of the conditions of `name`, from now on (see [`Transitions`]).
    pub fn record_transitions(&self, name: &str) -> Transitions {
        Transitions::record(self.masters(), name)
    }

    /// The API of NautilusMasters in the test namespace.
    pub fn masters(&self) -> Api<NautilusMaster> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A development NautilusMaster: simulated attestation allowed, 1 s probes, stake read from
    /// the fixture node.
    pub fn development_spec(&self) -> NautilusMasterSpec {
        let pcr = |b: u8| format!("{b:02x}").repeat(48);
        serde_json::from_value(serde_json::json!({
            "enclave": {
                "image": "registry.example.com/nautilus/enclave:e2e",
                "pcr0": pcr(0x10), "pcr1": pcr(0x11), "pcr2": pcr(0x12),
            },
            "auth": { "suiRpcURL": self.sui_url },
            // Text logs: the JSON log format is a build option of the Kubernetes binaries.
            "controlPlane": { "distribution": self.distribution, "logFormat": "text" },
            "health": { "probeIntervalSeconds": 1, "startupTimeoutSeconds": 90 },
            "attestation": { "allowSimulated": true },
        }))
        .expect("development spec")
    }

    /// Create `name` with `spec`.
    pub async fn create(&self, name: &str, spec: NautilusMasterSpec) -> NautilusMaster {
        self.masters()
            .create(&PostParams::default(), &NautilusMaster::new(name, spec))
            .await
            .expect("create the NautilusMaster")
    }

    /// Delete `name` and wait until it is gone (its finalizer released: the enclave stopped
    /// and what the deletion policy removes, removed), at most [`WAIT`].
    pub async fn delete_and_wait_gone(&self, name: &str, params: &DeleteParams) {
        self.masters()
            .delete(name, params)
            .await
            .expect("delete a NautilusMaster");
        let deadline = Instant::now() + WAIT;
        while self
            .masters()
            .get_opt(name)
            .await
            .expect("get a NautilusMaster")
            .is_some()
        {
            assert!(
                Instant::now() < deadline,
                "{name}: the finalizer was not released within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Wait until `check` accepts the resource, or panic with the last status seen.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&NautilusMaster) -> bool,
    ) -> NautilusMaster {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(nm) = self.masters().get(name).await {
                if check(&nm) {
                    return nm;
                }
                last = Some(nm);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!(
            "{what}: not reached within {timeout:?}; last status: {}",
            last.and_then(|nm| nm.status)
                .map(|s| serde_json::to_string_pretty(&s).unwrap_or_default())
                .unwrap_or_else(|| "<none>".into())
        );
    }

    /// The kubeconfig the operator published for `name`, with the user's credentials replaced
    /// by `token` (what the `nautilusctl token exec-credential` plugin would hand kubectl).
    pub async fn client_with_token(&self, name: &str, token: &str) -> Client {
        client_from_kubeconfig(&self.kubeconfig_with_token(name, token).await).await
    }

    /// The kubeconfig the operator published for `name`, its user replaced by a static `token`
    /// (for kubectl in tests).
    pub async fn kubeconfig_with_token(&self, name: &str, token: &str) -> String {
        let mut config = self.published_kubeconfig(name).await;
        let users = config["users"]
            .as_sequence_mut()
            .expect("kubeconfig has users");
        for user in users {
            user["user"] =
                serde_yaml::to_value(serde_json::json!({ "token": token })).expect("user entry");
        }
        serde_yaml::to_string(&config).expect("kubeconfig text")
    }

    /// The kubeconfig the operator published for `name` (its `<name>-kubeconfig` Secret).
    pub async fn published_kubeconfig(&self, name: &str) -> serde_yaml::Value {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = secrets
            .get(&format!("{name}-kubeconfig"))
            .await
            .expect("kubeconfig Secret");
        let bytes = secret
            .data
            .and_then(|d| d.get("kubeconfig").cloned())
            .expect("kubeconfig key");
        serde_yaml::from_slice(&bytes.0).expect("kubeconfig YAML")
    }

    /// The CA (base64 PEM) of the kubeconfig the operator published for `name`.
    pub async fn published_ca(&self, name: &str) -> String {
        self.published_kubeconfig(name).await["clusters"][0]["cluster"]
            ["certificate-authority-data"]
            .as_str()
            .expect("CA data")
            .to_owned()
    }

    /// The executable of the control plane's API server: `kube-apiserver`, or the stand-in.
    pub fn api_server_exe(&self) -> &'static str {
        if self.distribution == "kubernetes" {
            "kube-apiserver"
        } else {
            "nautilus-standin"
        }
    }

    /// SIGKILL the one API server of `name`'s control plane, then wait at most `down` until the
    /// status says `APIServerReady=False` and not Ready, and at most `up` until it is Ready again
    /// with one API server running.
    pub async fn kill_the_api_server_and_see_it_recover(
        &self,
        name: &str,
        down: Duration,
        up: Duration,
    ) {
        let pids = self.processes(self.api_server_exe());
        assert_eq!(pids.len(), 1, "one API server runs: {pids:?}");
        let killed = std::process::Command::new("kill")
            .args(["-9", &pids[0].to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        self.wait_for(name, "APIServerReady=False", down, |nm| {
            is(nm, "APIServerReady", "False") && !is(nm, "Ready", "True")
        })
        .await;
        self.wait_for(name, "recovered to Ready=True", up, |nm| {
            is(nm, "Ready", "True")
        })
        .await;
        assert_eq!(self.processes(self.api_server_exe()).len(), 1);
    }

    /// PIDs of this test's processes whose executable name is `exe` (`nautilus-standin`,
    /// `nautilus-sidecar`, `nautilus-agent`), found through their command line or environment
    /// naming this test's work directory.
    pub fn processes(&self, exe: &str) -> Vec<u32> {
        self.scan(Some(exe))
    }

    /// The digest of the configuration the operator measures for `nm`: rendered from the spec
    /// and placed by the local runtime (its own port and data directory).
    pub async fn measured_digest(&self, nm: &NautilusMaster) -> String {
        let config = nautilus_operator::desired::enclave_config(nm).expect("config");
        let names = nautilus_operator::desired::Names::of(nm).expect("names");
        self.ctx
            .runtime
            .place(&names, config)
            .await
            .expect("placed config")
            .digest_hex()
    }

    /// PIDs of every process whose command line or environment names this test's work
    /// directory, other than this one.
    fn leftovers(&self) -> Vec<u32> {
        self.scan(None)
    }

    /// PIDs (other than this process) whose command line or environment names this test's work
    /// directory and, with `exe`, whose executable has that file name.
    fn scan(&self, exe: Option<&str>) -> Vec<u32> {
        let marker = self.dir.path().display().to_string();
        let own = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != own)
            .filter(|pid| {
                let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&read("cmdline")).into_owned();
                let environ = String::from_utf8_lossy(&read("environ")).into_owned();
                let program = cmdline.split('\0').next().unwrap_or_default();
                exe.is_none_or(|exe| {
                    Path::new(program).file_name().and_then(|n| n.to_str()) == Some(exe)
                }) && (cmdline.contains(&marker) || environ.contains(&marker))
            })
            .collect()
    }

    /// Delete every NautilusMaster of the test while the operator still runs (so its finalizer
    /// stops the enclave), stop the operator, check that no process is left, and delete the
    /// namespace. Panics if any of that fails.
    pub async fn finish(mut self) {
        let masters = self.masters();
        let list = masters
            .list(&ListParams::default())
            .await
            .expect("list the test's NautilusMasters");
        for nm in &list {
            masters
                .delete(&nm.name_any(), &DeleteParams::default())
                .await
                .expect("delete a NautilusMaster");
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = masters
                .list(&ListParams::default())
                .await
                .expect("list the test's NautilusMasters");
            if left.items.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "teardown: NautilusMasters still present 90 s after deletion (finalizer not \
                 released): {:?}",
                left.iter()
                    .map(kube::ResourceExt::name_any)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(operator) = self.operator.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), operator).await;
        }
        self.terminate_operator();
        self.ctx.runtime.shutdown().await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.leftovers().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = self.leftovers();
        assert!(
            left.is_empty(),
            "teardown: processes outlived their NautilusMaster: {left:?}"
        );
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
        // On a cluster of the user's the namespace must really go (nothing left `Terminating`);
        // a throwaway control plane is discarded whole right after.
        let collects = self.cluster.plane.is_none();
        let deadline = Instant::now() + Duration::from_secs(90);
        while collects
            && namespaces
                .get_opt(&self.namespace)
                .await
                .expect("get the namespace")
                .is_some()
        {
            assert!(
                Instant::now() < deadline,
                "teardown: namespace {} still present 90 s after deletion",
                self.namespace
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Harness {
    /// A test that failed half-way still leaves nothing running: stop the operator (which would
    /// otherwise restart a killed sidecar, whose new agent then outlives the test), then SIGKILL
    /// whatever the test started until nothing is left (bounded: 5 s). Its work directory is kept
    /// (and named on standard error) for the logs in it.
    fn drop(&mut self) {
        if let Some(operator) = self.operator.take() {
            operator.abort();
        }
        drop(self.process.take());
        // A failed test keeps its work directory: the sidecars', agents' and components' logs
        // are what tells why it failed.
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "the failed test's work directory (logs) is kept: {}",
                self.dir.path().display()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.leftovers();
            if left.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in left {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Retry a Kubernetes call until it succeeds, for at most `within` (every 500 ms), then panic
/// with `what` and the last error: for what settles after a start (RBAC, namespaces, a
/// restored control plane answering).
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(error = %err, "{what}: not yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => panic!("{what}: {err}"),
        }
    }
}

/// Install or update the CRD with server-side apply and wait until it is established.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = nautilus_crds::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let established = crds
            .get(&name)
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.conditions)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "CRD {name} not established");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status of condition `type_`, and its reason.
pub fn condition(nm: &NautilusMaster, type_: &str) -> Option<(String, String)> {
    nm.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Whether condition `type_` has `status`.
/// The conditions of a NautilusMaster, in the order a boot turns them True.
pub const CONDITIONS: [&str; 6] = [
    "EnclaveRunning",
    "Attested",
    "APIServerReady",
    "SchedulerReady",
    "ControllerManagerReady",
    "Ready",
];

/// Whether `nm`'s condition `type_` has `status`.
pub fn is(nm: &NautilusMaster, type_: &str, status: &str) -> bool {
    condition(nm, type_).is_some_and(|(s, _)| s == status)
}
