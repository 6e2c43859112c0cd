//! Test harness for the e2e suite: the whole system against a real Kubernetes API server.
//!
//! Each test gets a fresh namespace, installs (or updates) the CRD, runs the operator in this
//! process in the `local` runtime (sidecar and agent as local processes, simulated NSM,
//! stand-in control plane), a local Sui full node over TLS, and drives NautilusMasters as a
//! user would. Without a reachable cluster ([`cluster`] returns `None`) every test prints one
//! `skipped:` line and passes.
//!
//! Run against kind or k3d (see the README):
//!
//! ```text
//! kind create cluster            # or: k3d cluster create
//! cargo build --workspace --bins
//! KUBECONFIG=~/.kube/config cargo nextest run -p nautilus-e2e
//! ```
//!
//! This crate is test support: it panics with a message where a test would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
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

/// A client for the cluster `KUBECONFIG` names, or `None` (after printing the one skip line for
/// `test`) when there is none or it does not answer.
pub async fn cluster(test: &str) -> Option<Client> {
    let Some(path) = std::env::var_os("KUBECONFIG") else {
        println!("skipped: e2e {test}: KUBECONFIG is not set (no cluster to test against)");
        return None;
    };
    let reason = match kube::Config::infer().await {
        Err(err) => format!("cannot read {}: {err}", PathBuf::from(&path).display()),
        Ok(config) => match Client::try_from(config) {
            Err(err) => format!("cannot build a client: {err}"),
            Ok(client) => {
                match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version())
                    .await
                {
                    Ok(Ok(_)) => return Some(client),
                    Ok(Err(err)) => format!("API server did not answer: {err}"),
                    Err(_) => "API server did not answer within 10 s".to_owned(),
                }
            }
        },
    };
    println!("skipped: e2e {test}: {reason}");
    None
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

/// One test's world: a namespace, an operator scoped to it, a Sui node, a staked key.
pub struct Harness {
    /// Client of the cluster under test.
    pub client: Client,
    /// The test's namespace.
    pub namespace: String,
    /// A Sui key with [`Harness::STAKE_MIST`] staked on the fixture node.
    pub staker: KeystoreKey,
    /// Scratch space: the operator's work directory, the Sui CA file.
    pub dir: tempfile::TempDir,
    /// The fixture node's address (`https://127.0.0.1:port`).
    pub sui_url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
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

    /// Namespace, CRD, Sui node and operator for `test`. `tamper_reports` makes every sidecar
    /// corrupt the reports it relays.
    pub async fn start(client: Client, test: &str, tamper_reports: bool) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,kube=warn".into()),
            )
            .with_test_writer()
            .try_init();
        let namespace = format!(
            "nautilus-e2e-{}-{}",
            test.replace('_', "-").chars().take(30).collect::<String>(),
            std::process::id()
        );
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
        let chain = Arc::new(Chain::default().with_stake(staker.address(), Self::STAKE_MIST));
        let sui = nautilus_sui_fixture::serve_tls(chain, &ca).await;

        let bin = bin_dir();
        let runtime = EnclaveRuntime::Local(LocalRuntime::new(LocalSettings {
            sui_ca_file: Some(ca_file),
            tamper_reports,
            ..LocalSettings::development(&bin, dir.path().join("operator"))
        }));
        controller::check_crd(&client)
            .await
            .expect("the operator sees the CRD");
        let ctx = Arc::new(Context::new(
            client.clone(),
            runtime,
            Arc::new(Metrics::new()),
        ));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let operator = tokio::spawn(controller::run(ctx, Some(namespace.clone()), async {
            let _ = stopped.await;
        }));
        Self {
            client,
            namespace,
            staker,
            dir,
            sui_url: format!("https://127.0.0.1:{}", sui.port()),
            stop: Some(stop),
            operator: Some(operator),
        }
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
            "health": { "probeIntervalSeconds": 1, "startupTimeoutSeconds": 60 },
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
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = secrets
            .get(&format!("{name}-kubeconfig"))
            .await
            .expect("kubeconfig Secret");
        let bytes = secret
            .data
            .and_then(|d| d.get("kubeconfig").cloned())
            .expect("kubeconfig key");
        let mut config: serde_yaml::Value =
            serde_yaml::from_slice(&bytes.0).expect("kubeconfig YAML");
        let users = config["users"]
            .as_sequence_mut()
            .expect("kubeconfig has users");
        for user in users {
            user["user"] =
                serde_yaml::to_value(serde_json::json!({ "token": token })).expect("user entry");
        }
        let text = serde_yaml::to_string(&config).expect("kubeconfig text");
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&text).expect("kubeconfig parses");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("config from kubeconfig");
        Client::try_from(config).expect("client for the enclave's control plane")
    }

    /// PIDs of this test's processes whose executable name is `exe` (`nautilus-standin`,
    /// `nautilus-sidecar`, `nautilus-agent`), found through their command line or environment
    /// naming this test's work directory.
    pub fn processes(&self, exe: &str) -> Vec<u32> {
        let marker = self.dir.path().display().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let read = |f: &str| std::fs::read(format!("/proc/{pid}/{f}")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&read("cmdline")).into_owned();
                let environ = String::from_utf8_lossy(&read("environ")).into_owned();
                let name = cmdline.split('\0').next().unwrap_or_default();
                Path::new(name).file_name().and_then(|n| n.to_str()) == Some(exe)
                    && (cmdline.contains(&marker) || environ.contains(&marker))
            })
            .collect()
    }

    /// Stop the operator and delete the namespace.
    pub async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(operator) = self.operator.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), operator).await;
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let _ = namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await;
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
pub fn is(nm: &NautilusMaster, type_: &str, status: &str) -> bool {
    condition(nm, type_).is_some_and(|(s, _)| s == status)
}
