//! Shared by `tests/sealed_state.rs` and `benches/snapshot.rs`: a real etcd on the agent's own
//! certificates and flags, and a test-only key source.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use nautilus_agent::flags::ComponentPorts;
use nautilus_agent::kubernetes::{self, Layout};
use nautilus_agent::material::BootMaterial;
use nautilus_agent::state::etcd::{Etcdctl, find_etcdutl};
use nautilus_agent::state::{DataKey, KeyError, KeyRequest, KeySource, KeySources};
use nautilus_protocol::wire::EnclaveConfig;

/// etcd and etcdctl, or what is missing.
pub fn etcd_tools() -> Result<(PathBuf, PathBuf), String> {
    let find = |name: &str| {
        let assets = std::env::var_os("KUBEBUILDER_ASSETS").map_or_else(
            || PathBuf::from("/usr/local/kubebuilder/bin"),
            PathBuf::from,
        );
        std::iter::once(assets.join(name))
            .chain(
                std::env::var_os("PATH")
                    .iter()
                    .flat_map(std::env::split_paths)
                    .map(|d| d.join(name)),
            )
            .find(|p| p.is_file())
    };
    match (find("etcd"), find("etcdctl")) {
        (Some(etcd), Some(etcdctl)) => Ok((etcd, etcdctl)),
        (etcd, etcdctl) => Err([
            etcd.is_none().then_some("etcd"),
            etcdctl
                .is_none()
                .then_some("etcdctl (Debian's etcd-client)"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" and ")
            + " not found in $KUBEBUILDER_ASSETS or on PATH"),
    }
}

/// The tools, or `None` after one `skipped:` line (a failure with `NAUTILUS_E2E_REQUIRE=1`).
pub fn etcd_tools_or_skip(test: &str) -> Option<(PathBuf, PathBuf)> {
    match etcd_tools() {
        Ok(tools) => Some(tools),
        Err(missing) => {
            assert!(
                std::env::var("NAUTILUS_E2E_REQUIRE").as_deref() != Ok("1"),
                "{test}: {missing} (NAUTILUS_E2E_REQUIRE=1)"
            );
            println!("skipped: {test}: {missing}");
            None
        }
    }
}

fn free_port() -> u16 {
    nautilus_lifetime::ports::free_port().expect("free port")
}

/// A `kubernetes` configuration keeping state, with its data directory under `dir`.
pub fn config(dir: &Path, resource_uid: &str) -> EnclaveConfig {
    serde_json::from_value(serde_json::json!({
        "cluster": "ns/sealed",
        "controlPlane": {
            "distribution": "kubernetes",
            "bindAddress": "127.0.0.1", "httpsPort": free_port(), "clusterCIDR": "10.42.0.0/16",
            "serviceCIDR": "10.43.0.0/16", "clusterDNS": "10.43.0.10",
            "dataDir": dir.join("data").display().to_string(), "encryptSecrets": true,
            "tlsMinVersion": "VersionTLS12", "cipherSuites": [], "logLevel": "info",
            "logFormat": "text"
        },
        "auth": {
            "suiRpcURL": "https://fullnode.testnet.sui.io:443",
            "stakeType": "0x3::staking_pool::StakedSui", "audience": "ns/sealed",
            "maxTokenLifetimeSeconds": 3600, "stakeCacheTTLSeconds": 60, "tiers": []
        },
        "health": { "probeIntervalSeconds": 5, "startupTimeoutSeconds": 120 },
        "state": {
            "resourceUID": resource_uid, "backupIntervalSeconds": 3600, "retain": 3,
            "caGeneration": 0, "kms": { "keyID": "alias/test", "region": "local" }
        }
    }))
    .expect("config")
}

/// A running etcd, started with the agent's own flags and certificates.
pub struct RunningEtcd {
    child: tokio::process::Child,
    /// Its client tools, with the agent's client certificate.
    pub etcdctl: Etcdctl,
}

impl RunningEtcd {
    /// Write `material`'s files for `config` and start etcd on `layout`'s data directory
    /// (restored or empty).
    pub async fn start(
        etcd: &Path,
        etcdctl: &Path,
        config: &EnclaveConfig,
        material: &BootMaterial,
        ports: &ComponentPorts,
    ) -> Self {
        let layout = layout(config);
        kubernetes::write_files(config, &layout, material, "127.0.0.1:1").expect("files");
        let flags = nautilus_agent::flags::as_argv(&kubernetes::etcd_flags(&layout, ports));
        let child = tokio::process::Command::new(etcd)
            .args(&flags)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("etcd starts");
        let etcdctl = Etcdctl {
            etcdctl: etcdctl.to_path_buf(),
            etcdutl: find_etcdutl(etcdctl),
            endpoint: format!("https://127.0.0.1:{}", ports.etcd_client),
            cacert: layout.tls.join("etcd/server-ca.crt"),
            cert: layout.tls.join("etcd/client.crt"),
            key: layout.tls.join("etcd/client.key"),
        };
        let running = Self { child, etcdctl };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if running.etcdctl.get("health-probe").await.is_ok() {
                return running;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd did not answer within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kill it and wait for it to end.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The layout under `config`'s data directory.
pub fn layout(config: &EnclaveConfig) -> Layout {
    Layout::new(Path::new(&config.control_plane.data_dir))
}

/// Free etcd ports.
pub fn ports() -> ComponentPorts {
    ComponentPorts {
        scheduler: free_port(),
        controller_manager: free_port(),
        etcd_client: free_port(),
        etcd_peer: free_port(),
    }
}

/// A key source for tests only: keys live in this process's memory, a blob names one. Unknown
/// blobs are refused, as KMS refuses a blob it did not make.
#[derive(Debug, Default, Clone)]
pub struct TestKeys {
    keys: Arc<Mutex<HashMap<Vec<u8>, [u8; 32]>>>,
    /// How many times each call was made.
    pub calls: Arc<Mutex<(u32, u32)>>,
}

impl KeySource for TestKeys {
    fn generate(&self) -> BoxFuture<'_, Result<(Vec<u8>, DataKey), KeyError>> {
        Box::pin(async move {
            let key: [u8; 32] = std::array::from_fn(|_| rand_byte());
            let blob: Vec<u8> = (0..64).map(|_| rand_byte()).collect();
            self.keys.lock().expect("keys").insert(blob.clone(), key);
            self.calls.lock().expect("calls").0 += 1;
            Ok((blob, DataKey::new(key)))
        })
    }

    fn unwrap<'a>(&'a self, wrapped: &'a [u8]) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        Box::pin(async move {
            self.calls.lock().expect("calls").1 += 1;
            self.keys
                .lock()
                .expect("keys")
                .get(wrapped)
                .map(|k| DataKey::new(*k))
                .ok_or_else(|| KeyError::Refused("unknown ciphertext blob".into()))
        })
    }
}

impl KeySources for TestKeys {
    fn key_source(&self, _request: KeyRequest) -> Result<Arc<dyn KeySource>, KeyError> {
        Ok(Arc::new(self.clone()))
    }
}

fn rand_byte() -> u8 {
    use rand_core::RngCore as _;
    let mut b = [0u8; 1];
    rand_core::OsRng.fill_bytes(&mut b);
    b[0]
}
