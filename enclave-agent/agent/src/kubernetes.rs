//! The `kubernetes` distribution: etcd, kube-apiserver, kube-scheduler and
//! kube-controller-manager from the enclave image, started by the agent in order.
//!
//! ```text
//! etcd ──listening──► kube-apiserver ──/readyz──► kube-scheduler
//!   └─/health (logged)                          ├─► kube-controller-manager
//!                                               └─► tier RBAC (while they start)
//! ```
//!
//! The files sit where K3s keeps its own (`<dataDir>/server/tls`, `…/cred`, `…/db/etcd`), with
//! K3s' names, so a reader of one data directory knows the other. The CAs are the same files
//! the `k3s` distribution gets ([`crate::k3s::write_ca_files`]); the leaf certificates that K3s
//! would issue itself come from [`crate::material::ComponentCertificates`]. The API server's flags
//! are the ones K3s gives its embedded API server ([`crate::k3s::implied_apiserver_flags`] is
//! compared with [`apiserver_flags`] in the tests), with etcd in place of kine and the API
//! server listening on `bindAddress:httpsPort` itself rather than behind K3s' supervisor.
//!
//! A scheduler or controller manager started before the API server has bootstrapped its RBAC
//! exits (`forbidden`), so they start only after `/readyz` answered 200 (polled 50 ms after
//! the start, then half as long again each time up to [`GATE_PROBE_MAX`]); the tier groups'
//! ClusterRoleBindings ([`crate::k3s::GROUP_BINDINGS`]) are applied with the agent's own
//! `system:masters` client certificate while they start. Each process then has its own supervisor with the
//! restart policy of the `k3s` distribution.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::wire::EnclaveConfig;
use tracing::{info, warn};

use crate::client::{self, ClientError, Request};
use crate::flags::{self, ComponentPorts, Flags, SpecFlags};
use crate::k3s::{self, K3sError};
use crate::material::{BootMaterial, LeafCertificate};

/// Why the `kubernetes` distribution's files could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    /// Writing a file failed.
    #[error(transparent)]
    Write(#[from] K3sError),
    /// Reading an existing encryption configuration failed.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A kubeconfig or manifest could not be serialized.
    #[error("rendering {what}")]
    Render {
        /// What.
        what: &'static str,
        /// The cause.
        source: serde_json::Error,
    },
}

/// The four programs, by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kube-scheduler.
    pub kube_scheduler: PathBuf,
    /// kube-controller-manager.
    pub kube_controller_manager: PathBuf,
}

impl Binaries {
    /// The programs in `dir`, etcd at `etcd` when given.
    pub fn in_dir(dir: &Path, etcd: Option<&Path>) -> Self {
        Self {
            etcd: etcd.map_or_else(|| dir.join("etcd"), Path::to_path_buf),
            kube_apiserver: dir.join("kube-apiserver"),
            kube_scheduler: dir.join("kube-scheduler"),
            kube_controller_manager: dir.join("kube-controller-manager"),
        }
    }

    /// Every program, in start order.
    pub fn all(&self) -> [&Path; 4] {
        [
            &self.etcd,
            &self.kube_apiserver,
            &self.kube_scheduler,
            &self.kube_controller_manager,
        ]
    }

    /// The programs that are not files here.
    pub fn missing(&self) -> Vec<&Path> {
        self.all().into_iter().filter(|p| !p.is_file()).collect()
    }
}

/// Where the files of the `kubernetes` distribution live, under the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// `<dataDir>/server/tls`.
    pub tls: PathBuf,
    /// `<dataDir>/server/cred`.
    pub cred: PathBuf,
    /// `<dataDir>/server/db/etcd`.
    pub etcd_data: PathBuf,
}

impl Layout {
    /// The layout under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        let server = data_dir.join("server");
        Self {
            tls: server.join("tls"),
            cred: server.join("cred"),
            etcd_data: server.join("db").join("etcd"),
        }
    }

    fn tls(&self, name: &str) -> String {
        self.tls.join(name).display().to_string()
    }

    /// The kubeconfig of `user` (`scheduler`, `controller`, `admin`).
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.cred.join(format!("{user}.kubeconfig"))
    }

    /// The secrets encryption configuration.
    pub fn encryption_config(&self) -> PathBuf {
        self.cred.join("encryption-config.json")
    }
}

/// `https://` URL of the API server as the components inside the enclave reach it.
pub fn api_url(api_target: &str) -> String {
    format!("https://{api_target}")
}

fn f(name: &str, value: impl ToString) -> (String, String) {
    (name.to_owned(), value.to_string())
}

/// The etcd member's name (a restore names it the same).
pub const ETCD_NAME: &str = "nautilus";

/// etcd's flags: one member on loopback, TLS with client certificates on both ports.
pub fn etcd_flags(layout: &Layout, ports: &ComponentPorts) -> Flags {
    let client = format!("https://127.0.0.1:{}", ports.etcd_client);
    let peer = format!("https://127.0.0.1:{}", ports.etcd_peer);
    vec![
        f("name", ETCD_NAME),
        f("data-dir", layout.etcd_data.display()),
        f("listen-client-urls", &client),
        f("advertise-client-urls", &client),
        f("listen-peer-urls", &peer),
        f("initial-advertise-peer-urls", &peer),
        f("initial-cluster", format!("nautilus={peer}")),
        f("initial-cluster-state", "new"),
        f("cert-file", layout.tls("etcd/server-client.crt")),
        f("key-file", layout.tls("etcd/server-client.key")),
        f("trusted-ca-file", layout.tls("etcd/server-ca.crt")),
        f("client-cert-auth", "true"),
        f("peer-cert-file", layout.tls("etcd/peer-server-client.crt")),
        f("peer-key-file", layout.tls("etcd/peer-server-client.key")),
        f("peer-trusted-ca-file", layout.tls("etcd/peer-ca.crt")),
        f("peer-client-cert-auth", "true"),
        f("logger", "zap"),
        f("log-outputs", "stderr"),
    ]
}

/// kube-apiserver's flags: what K3s sets for its embedded API server, etcd for storage, the
/// API server itself on `bindAddress:httpsPort`, then the configuration's [`SpecFlags`].
pub fn apiserver_flags(
    config: &EnclaveConfig,
    spec: &SpecFlags,
    layout: &Layout,
    ports: &ComponentPorts,
) -> Flags {
    let cp = &config.control_plane;
    let unspecified = cp
        .bind_address
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    let mut base = vec![
        f("allow-privileged", "true"),
        f("authorization-mode", "Node,RBAC"),
        f(
            "service-account-signing-key-file",
            layout.tls("service.key"),
        ),
        f("service-cluster-ip-range", &cp.service_cidr),
        f("service-node-port-range", "30000-32767"),
        f("secure-port", cp.https_port),
        f("bind-address", &cp.bind_address),
        f("tls-cert-file", layout.tls("serving-kube-apiserver.crt")),
        f(
            "tls-private-key-file",
            layout.tls("serving-kube-apiserver.key"),
        ),
        f("service-account-key-file", layout.tls("service.key")),
        f(
            "service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
        ),
        f(
            "api-audiences",
            "https://kubernetes.default.svc.cluster.local,k3s",
        ),
        f("kubelet-certificate-authority", layout.tls("server-ca.crt")),
        f(
            "kubelet-client-certificate",
            layout.tls("client-kube-apiserver.crt"),
        ),
        f(
            "kubelet-client-key",
            layout.tls("client-kube-apiserver.key"),
        ),
        f(
            "requestheader-client-ca-file",
            layout.tls("request-header-ca.crt"),
        ),
        f(
            "requestheader-allowed-names",
            crate::material::REQUEST_HEADER_CN,
        ),
        f(
            "proxy-client-cert-file",
            layout.tls("client-auth-proxy.crt"),
        ),
        f("proxy-client-key-file", layout.tls("client-auth-proxy.key")),
        f("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        f("requestheader-group-headers", "X-Remote-Group"),
        f("requestheader-username-headers", "X-Remote-User"),
        f("client-ca-file", layout.tls("client-ca.crt")),
        f("enable-admission-plugins", "NodeRestriction"),
        f("anonymous-auth", "false"),
        f("profiling", "false"),
    ];
    if cp.encrypt_secrets {
        base.push(f(
            "encryption-provider-config",
            layout.encryption_config().display(),
        ));
    }
    // Storage and the parts K3s' supervisor does for its embedded API server.
    base.extend([
        f("storage-backend", "etcd3"),
        f(
            "etcd-servers",
            format!("https://127.0.0.1:{}", ports.etcd_client),
        ),
        f("etcd-cafile", layout.tls("etcd/server-ca.crt")),
        f("etcd-certfile", layout.tls("etcd/client.crt")),
        f("etcd-keyfile", layout.tls("etcd/client.key")),
        f("cert-dir", layout.tls("temporary-certs")),
        // The address the `kubernetes` Service's endpoints name: the published endpoint when
        // the configuration gives one. The host's interfaces are not the enclave's, so never
        // let the API server guess one.
        f(
            "advertise-address",
            match &cp.advertise_address {
                Some(address) => address.as_str(),
                None if unspecified => "127.0.0.1",
                None => cp.bind_address.as_str(),
            },
        ),
    ]);
    flags::merge(&base, &spec.apiserver)
}

fn delegating(layout: &Layout, user: &str) -> Flags {
    let kubeconfig = layout.kubeconfig(user).display().to_string();
    vec![
        f("kubeconfig", &kubeconfig),
        f("authentication-kubeconfig", &kubeconfig),
        f("authorization-kubeconfig", &kubeconfig),
        // The client CA from the file, not only from kube-system's
        // extension-apiserver-authentication ConfigMap: a component that starts before the API
        // server has published it answers the agent's authenticated probe with 401 until it
        // reloads (seen as StartTimeout on a loaded machine).
        f("client-ca-file", layout.tls("client-ca.crt")),
        f("profiling", "false"),
    ]
}

/// kube-scheduler's flags.
pub fn scheduler_flags(spec: &SpecFlags, layout: &Layout) -> Flags {
    flags::merge(&delegating(layout, "scheduler"), &spec.scheduler)
}

/// kube-controller-manager's flags (K3s' signing CAs: client certificates from the client CA,
/// kubelet serving certificates from the serving CA).
pub fn controller_manager_flags(
    config: &EnclaveConfig,
    spec: &SpecFlags,
    layout: &Layout,
) -> Flags {
    let cp = &config.control_plane;
    let mut base = delegating(layout, "controller");
    let (client_ca, client_key) = (layout.tls("client-ca.crt"), layout.tls("client-ca.key"));
    base.extend([
        f(
            "service-account-private-key-file",
            layout.tls("service.key"),
        ),
        f("allocate-node-cidrs", "true"),
        f("cluster-cidr", &cp.cluster_cidr),
        f("service-cluster-ip-range", &cp.service_cidr),
        f("root-ca-file", layout.tls("server-ca.crt")),
        f("use-service-account-credentials", "true"),
        f(
            "cluster-signing-kube-apiserver-client-cert-file",
            &client_ca,
        ),
        f(
            "cluster-signing-kube-apiserver-client-key-file",
            &client_key,
        ),
        f("cluster-signing-kubelet-client-cert-file", &client_ca),
        f("cluster-signing-kubelet-client-key-file", &client_key),
        f(
            "cluster-signing-kubelet-serving-cert-file",
            layout.tls("server-ca.crt"),
        ),
        f(
            "cluster-signing-kubelet-serving-key-file",
            layout.tls("server-ca.key"),
        ),
        f("cluster-signing-legacy-unknown-cert-file", &client_ca),
        f("cluster-signing-legacy-unknown-key-file", &client_key),
    ]);
    flags::merge(&base, &spec.controller_manager)
}

/// A kubeconfig for `server` trusting `ca_file`, presenting the certificate files.
pub fn kubeconfig(
    server: &str,
    ca_file: &Path,
    cert_file: &Path,
    key_file: &Path,
) -> Result<String, KubernetesError> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": server,
            "certificate-authority": ca_file.display().to_string(),
        }}],
        "users": [{"name": "user", "user": {
            "client-certificate": cert_file.display().to_string(),
            "client-key": key_file.display().to_string(),
        }}],
        "contexts": [{"name": "default", "context": {"cluster": "local", "user": "user"}}],
        "current-context": "default",
    });
    serde_json::to_string_pretty(&config).map_err(|source| KubernetesError::Render {
        what: "a kubeconfig",
        source,
    })
}

fn encryption_config() -> Result<String, KubernetesError> {
    use base64::Engine as _;
    use rand_core::RngCore as _;
    let mut key = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut key);
    let config = serde_json::json!({
        "kind": "EncryptionConfiguration",
        "apiVersion": "apiserver.config.k8s.io/v1",
        "resources": [{
            "resources": ["secrets"],
            "providers": [
                {"aescbc": {"keys": [{
                    "name": "aescbckey",
                    "secret": base64::engine::general_purpose::STANDARD.encode(key),
                }]}},
                {"identity": {}},
            ],
        }],
    });
    serde_json::to_string_pretty(&config).map_err(|source| KubernetesError::Render {
        what: "the encryption configuration",
        source,
    })
}

/// Write the CAs, the components' certificates and kubeconfigs, and (when secrets are
/// encrypted and none exists yet) the encryption configuration.
pub fn write_files(
    config: &EnclaveConfig,
    layout: &Layout,
    material: &BootMaterial,
    api_target: &str,
) -> Result<(), KubernetesError> {
    let data_dir = Path::new(&config.control_plane.data_dir);
    k3s::write_ca_files(data_dir, material)?;
    let leaf = |name: &str, cert: &LeafCertificate| -> Result<(), KubernetesError> {
        k3s::write(
            &layout.tls.join(format!("{name}.crt")),
            cert.cert_pem.as_bytes(),
            false,
        )?;
        k3s::write(
            &layout.tls.join(format!("{name}.key")),
            cert.key_pem.as_bytes(),
            true,
        )?;
        Ok(())
    };
    let c = &material.components;
    leaf("serving-kube-apiserver", &material.api_server)?;
    leaf("etcd/server-client", &c.etcd_server)?;
    leaf("etcd/peer-server-client", &c.etcd_peer)?;
    leaf("etcd/client", &c.etcd_client)?;
    leaf("client-scheduler", &c.scheduler)?;
    leaf("client-controller", &c.controller_manager)?;
    leaf("client-admin", &c.admin)?;
    leaf("client-kube-apiserver", &c.kubelet_client)?;
    leaf("client-auth-proxy", &c.auth_proxy)?;
    let server = api_url(api_target);
    for (user, cert) in [
        ("scheduler", "client-scheduler"),
        ("controller", "client-controller"),
        ("admin", "client-admin"),
    ] {
        let text = kubeconfig(
            &server,
            &layout.tls.join("server-ca.crt"),
            &layout.tls.join(format!("{cert}.crt")),
            &layout.tls.join(format!("{cert}.key")),
        )?;
        k3s::write(&layout.kubeconfig(user), text.as_bytes(), true)?;
    }
    let encryption = layout.encryption_config();
    if config.control_plane.encrypt_secrets {
        // Kept across restarts of the agent on the same data directory, as K3s keeps its own:
        // a new key would make the stored Secrets unreadable.
        let present = encryption
            .try_exists()
            .map_err(|source| KubernetesError::Read {
                path: encryption.clone(),
                source,
            })?;
        if !present {
            k3s::write(&encryption, encryption_config()?.as_bytes(), true)?;
        }
    }
    std::fs::create_dir_all(layout.tls.join("temporary-certs")).map_err(|source| {
        KubernetesError::Write(K3sError::Io {
            path: layout.tls.join("temporary-certs"),
            source,
        })
    })?;
    Ok(())
}

/// What the launcher checks before it starts the next component, and the admin client that
/// applies the tier groups' bindings.
#[derive(Debug, Clone)]
pub struct Readiness {
    etcd_addr: String,
    etcd_tls: Arc<rustls::ClientConfig>,
    api_addr: String,
    api_name: String,
    admin_tls: Arc<rustls::ClientConfig>,
}

/// How long one readiness request may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    /// Checks for the etcd at `127.0.0.1:<etcd_client>` and the API server at `api_addr`
    /// (certificate checked for `api_name`).
    pub fn new(
        material: &BootMaterial,
        ports: &ComponentPorts,
        api_addr: String,
        api_name: String,
    ) -> Result<Self, ClientError> {
        let c = &material.components;
        Ok(Self {
            etcd_addr: format!("127.0.0.1:{}", ports.etcd_client),
            etcd_tls: Arc::new(client::client_config(
                &[&material.etcd_server_ca.cert_pem],
                Some((&c.etcd_client.cert_der, &c.etcd_client.key_der)),
            )?),
            api_addr,
            api_name,
            admin_tls: Arc::new(client::client_config(
                &[&material.serving_ca.cert_pem],
                Some((&c.admin.cert_der, &c.admin.key_der)),
            )?),
        })
    }

    /// etcd's client port accepts connections: etcd binds its listeners first thing, well
    /// before it is healthy.
    pub async fn etcd_listening(&self) -> Result<(), String> {
        let stream = tokio::time::timeout(
            CHECK_TIMEOUT,
            tokio::net::TcpStream::connect(&self.etcd_addr),
        )
        .await
        .map_err(|_| format!("no connection within {CHECK_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
        // A port from the ephemeral range (development and tests pick them that way) can be
        // given to this very connection as its source: it then connects to itself (a TCP
        // simultaneous open), which says nothing of etcd and holds the port etcd is about to
        // bind. Seen in CI: the API server started at once and etcd failed "address already in
        // use" for half a minute. Go's dialer makes the same check.
        if stream.local_addr().ok() == stream.peer_addr().ok() {
            return Err("connected to itself: etcd is not listening yet".to_owned());
        }
        Ok(())
    }

    /// etcd answers `/health` with `"health":"true"`.
    pub async fn etcd_healthy(&self) -> Result<(), String> {
        let (status, body) = client::send(
            Arc::clone(&self.etcd_tls),
            Request {
                addr: &self.etcd_addr,
                server_name: "127.0.0.1",
                method: http::Method::GET,
                path: "/health",
                headers: Vec::new(),
                body: Vec::new(),
            },
            CHECK_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&body);
        if status == http::StatusCode::OK && text.replace(' ', "").contains(r#""health":"true""#) {
            Ok(())
        } else {
            Err(format!("{status} {}", text.trim()))
        }
    }

    /// One request to the API server as the agent's admin (`system:masters`).
    pub(crate) async fn api(
        &self,
        method: http::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(http::StatusCode, String), String> {
        let headers = content_type
            .map(|t| vec![(http::header::CONTENT_TYPE, t.to_owned())])
            .unwrap_or_default();
        let (status, body) = client::send(
            Arc::clone(&self.admin_tls),
            Request {
                addr: &self.api_addr,
                server_name: &self.api_name,
                method,
                path,
                headers,
                body,
            },
            CHECK_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// The API server answers `/readyz` with 200.
    pub async fn api_ready(&self) -> Result<(), String> {
        match self
            .api(http::Method::GET, "/readyz", None, Vec::new())
            .await?
        {
            (http::StatusCode::OK, _) => Ok(()),
            (status, body) => Err(format!("{status} {}", body.trim())),
        }
    }

    /// Server-side apply every tier group's ClusterRoleBinding, and the API server's own as a
    /// kubelet client ([`k3s::kubelet_api_admin_binding`]), as `nautilus-agent`.
    pub async fn apply_rbac(&self) -> Result<(), String> {
        let bindings = k3s::group_bindings()
            .into_iter()
            .chain([k3s::kubelet_api_admin_binding()]);
        for binding in bindings {
            let name = binding["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let path = format!(
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}?fieldManager=nautilus-agent&force=true"
            );
            let body = serde_json::to_vec(&binding).map_err(|e| e.to_string())?;
            match self
                .api(
                    http::Method::PATCH,
                    &path,
                    Some("application/apply-patch+yaml"),
                    body,
                )
                .await?
            {
                (status, _) if status.is_success() => {}
                (status, body) => return Err(format!("{name}: {status} {}", body.trim())),
            }
        }
        Ok(())
    }
}

/// The longest pause between two checks of a start gate. kube-apiserver's `/readyz` is on the
/// boot's critical path and takes seconds, so a longer pause (500 ms before) adds half of it on
/// average to every boot; a check costs one TLS handshake with the API server.
pub const GATE_PROBE_MAX: Duration = Duration::from_millis(100);

/// Poll `check` until it passes, 50 ms after the first try, then half as long again each time up
/// to [`GATE_PROBE_MAX`]: a component is seen ready within a fraction of its own start time.
/// Its reason is logged now and then.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let started = tokio::time::Instant::now();
    let mut last_log = started;
    let mut pause = crate::reporter::STARTUP_PROBE_FIRST;
    loop {
        match check().await {
            Ok(()) => {
                info!(elapsed_ms = started.elapsed().as_millis() as u64, "{what}");
                return;
            }
            Err(reason) if last_log.elapsed() >= Duration::from_secs(10) => {
                warn!(reason = %reason, "still waiting: {what}");
                last_log = tokio::time::Instant::now();
            }
            Err(_) => {}
        }
        tokio::time::sleep(pause).await;
        pause = crate::reporter::next_startup_pause(pause, GATE_PROBE_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k3s::tests::mk_config;
    use std::collections::BTreeMap;

    fn spec(config: &EnclaveConfig) -> SpecFlags {
        flags::spec_flags(
            config,
            Path::new("/var/lib/nautilus/webhook-kubeconfig.yaml"),
            &ComponentPorts::default(),
        )
        .expect("flags")
    }

    /// Flags whose difference between the distributions is the point of the distribution:
    /// K3s' supervisor listens on `httpsPort` and proxies to its embedded API server on the
    /// next port on loopback; K3s stores in kine (set by K3s at run time, not in the base map
    /// compared here) where `kubernetes` runs etcd.
    const DISTRIBUTION_SPECIFIC: [&str; 9] = [
        "secure-port",
        "bind-address",
        "advertise-address",
        "storage-backend",
        "etcd-servers",
        "etcd-cafile",
        "etcd-certfile",
        "etcd-keyfile",
        "cert-dir",
    ];

    #[test]
    fn the_kubernetes_service_names_the_advertised_address_which_the_certificate_names_too() {
        let mut config = mk_config();
        let layout = Layout::new(Path::new(&config.control_plane.data_dir));
        let advertised = |config: &EnclaveConfig| {
            apiserver_flags(config, &spec(config), &layout, &ComponentPorts::default())
                .into_iter()
                .find(|(k, _)| k == "advertise-address")
                .map(|(_, v)| v)
        };
        config.control_plane.advertise_address = Some("10.213.0.1".into());
        assert_eq!(advertised(&config).as_deref(), Some("10.213.0.1"));
        assert!(
            crate::material::api_server_sans(&config.control_plane)
                .contains(&"10.213.0.1".to_owned())
        );
        // Unset: the bind address, and loopback for an unspecified one (never a guess).
        config.control_plane.advertise_address = None;
        assert_eq!(advertised(&config).as_deref(), Some("127.0.0.1"));
        config.control_plane.bind_address = "0.0.0.0".into();
        assert_eq!(advertised(&config).as_deref(), Some("127.0.0.1"));
        // A loopback address would be refused by the API server's endpoint validation: the
        // boot refuses it first.
        config.control_plane.advertise_address = Some("127.0.0.2".into());
        assert!(crate::flags::validate(&config.control_plane).is_err());
    }

    #[test]
    fn both_distributions_run_the_api_server_with_the_same_effective_flags() {
        for encrypt in [true, false] {
            let mut config = mk_config();
            config.control_plane.encrypt_secrets = encrypt;
            let spec = spec(&config);
            let rendered = k3s::render_config(&config, &spec).expect("k3s config");
            let k3s: BTreeMap<_, _> = k3s::implied_apiserver_flags(&rendered)
                .expect("k3s flags")
                .into_iter()
                .collect();
            let layout = Layout::new(Path::new(&config.control_plane.data_dir));
            let kubernetes: BTreeMap<_, _> =
                apiserver_flags(&config, &spec, &layout, &ComponentPorts::default())
                    .into_iter()
                    .collect();
            let strip = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
                m.iter()
                    .filter(|(k, _)| !DISTRIBUTION_SPECIFIC.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            pretty_assertions::assert_eq!(strip(&k3s), strip(&kubernetes));
            // Every spec flag is in both, with the spec's value.
            for (name, value) in &spec.apiserver {
                assert_eq!(k3s.get(name), Some(value), "k3s {name}");
                assert_eq!(kubernetes.get(name), Some(value), "kubernetes {name}");
            }
            assert_eq!(
                kubernetes
                    .get("authentication-token-webhook-version")
                    .map(String::as_str),
                Some("v1")
            );
            assert_eq!(
                k3s.contains_key("encryption-provider-config"),
                encrypt,
                "secrets encryption follows the spec"
            );
            // Where they differ, it is where the API server listens and what stores.
            assert_eq!(k3s["secure-port"], "6444");
            assert_eq!(kubernetes["secure-port"], "6443");
            assert_eq!(kubernetes["bind-address"], "127.0.0.1");
        }
    }

    #[test]
    fn scheduler_and_controller_manager_take_the_spec_flags_last() {
        let config = mk_config();
        let spec = spec(&config);
        let layout = Layout::new(Path::new("/data"));
        let scheduler: BTreeMap<_, _> = scheduler_flags(&spec, &layout).into_iter().collect();
        let manager: BTreeMap<_, _> = controller_manager_flags(&config, &spec, &layout)
            .into_iter()
            .collect();
        for (map, port, user) in [
            (&scheduler, "10259", "scheduler"),
            (&manager, "10257", "controller"),
        ] {
            assert_eq!(map["secure-port"], port);
            assert_eq!(map["bind-address"], "127.0.0.1");
            assert_eq!(map["leader-elect"], "false");
            assert_eq!(map["tls-min-version"], "VersionTLS13");
            assert_eq!(
                map["kubeconfig"],
                format!("/data/server/cred/{user}.kubeconfig")
            );
        }
        assert_eq!(manager["cluster-cidr"], "10.42.0.0/16");
        assert_eq!(
            manager["service-account-private-key-file"],
            "/data/server/tls/service.key"
        );
    }

    #[test]
    fn etcd_listens_only_on_the_given_loopback_ports() {
        let ports = ComponentPorts {
            etcd_client: 32379,
            etcd_peer: 32380,
            ..ComponentPorts::default()
        };
        let flags: BTreeMap<_, _> = etcd_flags(&Layout::new(Path::new("/d")), &ports)
            .into_iter()
            .collect();
        assert_eq!(flags["listen-client-urls"], "https://127.0.0.1:32379");
        assert_eq!(flags["listen-peer-urls"], "https://127.0.0.1:32380");
        assert_eq!(flags["initial-cluster"], "nautilus=https://127.0.0.1:32380");
        assert_eq!(flags["client-cert-auth"], "true");
        assert_eq!(flags["data-dir"], "/d/server/db/etcd");
    }

    #[test]
    fn files_land_with_k3s_names_and_keys_stay_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = mk_config();
        config.control_plane.data_dir = dir.path().display().to_string();
        let material = BootMaterial::generate(&config).expect("material");
        let layout = Layout::new(dir.path());
        write_files(&config, &layout, &material, "127.0.0.1:6443").expect("written");
        for name in [
            "serving-kube-apiserver.crt",
            "etcd/server-client.key",
            "client-admin.crt",
            "service.key",
        ] {
            assert!(layout.tls.join(name).is_file(), "{name}");
        }
        let admin: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(layout.kubeconfig("admin")).expect("kubeconfig"),
        )
        .expect("json");
        assert_eq!(
            admin["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
        let encryption = std::fs::read_to_string(layout.encryption_config()).expect("enc");
        // Kept on a second boot on the same data directory.
        write_files(&config, &layout, &material, "127.0.0.1:6443").expect("again");
        assert_eq!(
            std::fs::read_to_string(layout.encryption_config()).expect("enc"),
            encryption
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(layout.tls.join("client-admin.key"))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0);
    }
}
