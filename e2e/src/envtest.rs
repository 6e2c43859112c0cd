//! A throwaway Kubernetes control plane, in the envtest convention.
//!
//! [`Assets::find`] looks for `etcd` and `kube-apiserver` (and, when present,
//! `kube-controller-manager`) in `$KUBEBUILDER_ASSETS`, default `/usr/local/kubebuilder/bin`;
//! `etcd` may also come from `PATH` (Debian's `etcd-server`). [`ControlPlane::start`] runs them on
//! free loopback ports with a PKI of its own (X.509 v3, ECDSA P-256): a CA, the API server's
//! serving certificate, an admin client certificate in `system:masters`, and the service-account
//! key pair. It writes an admin kubeconfig that kubectl and kube-rs both read, and waits until
//! `/readyz` answers.
//!
//! The controller manager runs when it is there, because without it nothing collects owned
//! objects after their owner is deleted and a deleted namespace stays `Terminating`.
//!
//! Nothing started here outlives its owner: each component runs in its own process group under
//! `setpriv --pdeathsig KILL` (so a test process that is killed takes them along), and dropping
//! the [`ControlPlane`] stops them (SIGTERM, then SIGKILL) and removes their files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};

/// The environment variable naming the directory of the control-plane binaries.
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";
/// Where envtest looks when [`ASSETS_ENV`] is unset.
pub const DEFAULT_ASSETS: &str = "/usr/local/kubebuilder/bin";
/// How long the API server may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a throwaway control plane could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EnvtestError {
    /// A file could not be written, or a process not started.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be made.
    #[error("generating {0}")]
    Pki(&'static str, #[source] rcgen::Error),
    /// The admin kubeconfig does not make a client.
    #[error("building the admin client")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A component exited or never became ready.
    #[error("{component} {what}; the end of its log ({log}):\n{tail}")]
    NotReady {
        /// Which binary.
        component: &'static str,
        /// What happened.
        what: String,
        /// Its log file.
        log: String,
        /// The last lines of that log.
        tail: String,
    },
}

type Result<T, E = EnvtestError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnvtestError {
    let what = what.into();
    move |source| EnvtestError::Io { what, source }
}

/// The control-plane binaries found on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assets {
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`, when present.
    pub kube_controller_manager: Option<PathBuf>,
    /// `kube-scheduler`, when present (the harness does not run it; the enclave's `kubernetes`
    /// distribution does).
    pub kube_scheduler: Option<PathBuf>,
    /// The directory they were looked for in.
    pub dir: PathBuf,
}

impl Assets {
    /// The assets directory: `$KUBEBUILDER_ASSETS`, else [`DEFAULT_ASSETS`].
    pub fn dir() -> PathBuf {
        std::env::var_os(ASSETS_ENV)
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_ASSETS), PathBuf::from)
    }

    /// Find the binaries, or say exactly which are missing and where they were looked for.
    pub fn find() -> Result<Self, String> {
        let dir = Self::dir();
        let at = |name: &str| Some(dir.join(name)).filter(|p| is_executable(p));
        let etcd = at("etcd").or_else(|| on_path("etcd"));
        let apiserver = at("kube-apiserver");
        let source = match std::env::var_os(ASSETS_ENV) {
            Some(_) => format!("${ASSETS_ENV} ({})", dir.display()),
            None => format!("{} (${ASSETS_ENV} is unset)", dir.display()),
        };
        match (etcd, apiserver) {
            (Some(etcd), Some(kube_apiserver)) => Ok(Self {
                etcd,
                kube_apiserver,
                kube_controller_manager: at("kube-controller-manager"),
                kube_scheduler: at("kube-scheduler"),
                dir,
            }),
            (etcd, apiserver) => {
                let missing: Vec<&str> = [
                    etcd.is_none().then_some("etcd (nor on PATH)"),
                    apiserver.is_none().then_some("kube-apiserver"),
                ]
                .into_iter()
                .flatten()
                .collect();
                Err(format!("no {} in {source}", missing.join(" and ")))
            }
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `name` in a directory of `PATH`, when it is an executable file there.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// A free TCP port on 127.0.0.1 (bound and released; the component binds it right after).
pub fn free_port() -> std::io::Result<u16> {
    nautilus_lifetime::ports::free_port()
}

/// One running component.
#[derive(Debug)]
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// How it was started, to start it again the same way ([`ControlPlane::start_component`]).
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
}

/// How `child` ended, or `None` while it runs (also for the e2e worker's processes).
pub(crate) fn exit_of(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(format!("exited ({status})")),
        Ok(None) => None,
        Err(err) => Some(format!("cannot be waited for: {err}")),
    }
}

impl Component {
    fn tail(&self) -> String {
        log_tail(&self.log)
    }

    fn exited(&mut self) -> Option<String> {
        exit_of(&mut self.child)
    }

    fn not_ready(&self, what: String) -> EnvtestError {
        EnvtestError::NotReady {
            component: self.name,
            what,
            log: self.log.display().to_string(),
            tail: self.tail(),
        }
    }

    /// SIGTERM to its process group, SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let Ok(pid) = i32::try_from(self.child.id()) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return;
        };
        let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The last 40 lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Start `program` with `args` as a component: own process group, killed with its parent, output
/// appended to `<dir>/<name>.log`.
fn spawn(dir: &Path, name: &'static str, program: &Path, args: &[String]) -> Result<Component> {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_err(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("opening {}", log.display())))?;
    // setpriv (util-linux) sets the parent-death signal before it execs the component, without
    // `unsafe` code in this process.
    let mut cmd = match on_path("setpriv") {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(io_err(format!("starting {}", program.display())))?;
    Ok(Component {
        name,
        child,
        log,
        program: program.to_owned(),
        args: args.to_vec(),
        dir: dir.to_owned(),
    })
}

/// The throwaway control plane's PKI, as PEM files in its directory.
struct Pki {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    sa_key: PathBuf,
    sa_pub: PathBuf,
    kubelet_client_cert: PathBuf,
    kubelet_client_key: PathBuf,
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

fn dn(common_name: &str, organization: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Pki {
    fn generate(dir: &Path) -> Result<Self> {
        let key = |what| {
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| EnvtestError::Pki(what, e))
        };
        let now = time::OffsetDateTime::now_utc();
        let validity = |params: &mut CertificateParams| {
            params.not_before = now - Duration::from_secs(300);
            params.not_after = now + Duration::from_secs(7 * 24 * 3600);
        };

        let ca_key = key("the CA key")?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name = dn("nautilus envtest CA", "nautilus");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        validity(&mut ca);
        let ca_cert = ca
            .self_signed(&ca_key)
            .map_err(|e| EnvtestError::Pki("the CA certificate", e))?;
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |what: &'static str,
                    subject: DistinguishedName,
                    sans: Vec<SanType>,
                    usage: ExtendedKeyUsagePurpose|
         -> Result<(String, String)> {
            let leaf_key = key(what)?;
            let mut params = CertificateParams::default();
            params.distinguished_name = subject;
            params.subject_alt_names = sans;
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            validity(&mut params);
            let cert = params
                .signed_by(&leaf_key, &issuer)
                .map_err(|e| EnvtestError::Pki(what, e))?;
            Ok((cert.pem(), leaf_key.serialize_pem()))
        };
        let dns = |name: &str| {
            name.try_into()
                .map(SanType::DnsName)
                .map_err(|e| EnvtestError::Pki("a DNS name", e))
        };
        let (serving_cert_pem, serving_key_pem) = leaf(
            "the serving certificate",
            dn("kube-apiserver", "nautilus"),
            vec![
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::IpAddress([10, 0, 0, 1].into()),
                dns("localhost")?,
                dns("kubernetes")?,
                dns("kubernetes.default")?,
                dns("kubernetes.default.svc")?,
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (admin_cert_pem, admin_key_pem) = leaf(
            "the admin client certificate",
            dn("nautilus-envtest-admin", "system:masters"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        // What the API server presents to kubelets (logs, exec, port-forward), which authorize it
        // by webhook like any other user.
        let (kubelet_client_cert_pem, kubelet_client_key_pem) = leaf(
            "the kubelet client certificate",
            dn("kube-apiserver-kubelet-client", "system:masters"),
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        // kube-apiserver reads an EC public key for verifying service-account tokens only as
        // PKIX (`PUBLIC KEY`) or SEC1 (`EC PRIVATE KEY`), not as PKCS#8: give it the public half.
        let sa = key("the service-account key")?;

        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
            Ok(path)
        };
        Ok(Self {
            ca_cert: write("ca.crt", &ca_cert.pem())?,
            ca_key: write("ca.key", &ca_key_pem)?,
            serving_cert: write("apiserver.crt", &serving_cert_pem)?,
            serving_key: write("apiserver.key", &serving_key_pem)?,
            sa_key: write("sa.key", &sa.serialize_pem())?,
            sa_pub: write("sa.pub", &sa.public_key_pem())?,
            kubelet_client_cert: write("apiserver-kubelet-client.crt", &kubelet_client_cert_pem)?,
            kubelet_client_key: write("apiserver-kubelet-client.key", &kubelet_client_key_pem)?,
            ca_pem: ca_cert.pem(),
            admin_cert_pem,
            admin_key_pem,
        })
    }
}

/// A component of the throwaway control plane that a test can stop and start again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// `etcd` (its data directory is kept across a restart).
    Etcd,
    /// `kube-apiserver` (same port and certificates after a restart).
    ApiServer,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Etcd => "etcd",
            Part::ApiServer => "kube-apiserver",
        }
    }
}

/// A running throwaway control plane. Dropping it stops every component and removes its files.
#[derive(Debug)]
pub struct ControlPlane {
    components: Vec<Component>,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// An admin kubeconfig (client certificate in `system:masters`), for kubectl and kube-rs.
    pub kubeconfig: PathBuf,
    kubeconfig_text: String,
    /// Whether kube-controller-manager runs (garbage collection, namespace deletion).
    pub controller_manager: bool,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Start etcd, kube-apiserver and (when present) kube-controller-manager from `assets`, and
    /// wait until the API server is ready.
    pub async fn start(assets: &Assets) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("nautilus-envtest-")
            .tempdir()
            .map_err(io_err("creating a temporary directory"))?;
        let path = dir.path().to_path_buf();
        let pki = Pki::generate(&path)?;
        let port = || free_port().map_err(io_err("finding a free port"));
        let (etcd_client, etcd_peer, secure) = (port()?, port()?, port()?);
        let server = format!("https://127.0.0.1:{secure}");
        let kubeconfig_text = admin_kubeconfig(&server, &pki);
        let kubeconfig = path.join("admin.kubeconfig");
        std::fs::write(&kubeconfig, &kubeconfig_text)
            .map_err(io_err(format!("writing {}", kubeconfig.display())))?;
        let p = |p: &Path| p.display().to_string();

        let mut plane = Self {
            components: Vec::new(),
            server,
            kubeconfig,
            kubeconfig_text,
            controller_manager: false,
            dir,
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        plane.components.push(spawn(
            &path,
            "etcd",
            &assets.etcd,
            &[
                "--name=envtest".into(),
                format!("--data-dir={}", p(&path.join("etcd"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=envtest={peer_url}"),
                "--log-level=warn".into(),
            ],
        )?);
        plane.components.push(spawn(
            &path,
            "kube-apiserver",
            &assets.kube_apiserver,
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={secure}"),
                format!("--cert-dir={}", p(&path.join("certs"))),
                format!("--tls-cert-file={}", p(&pki.serving_cert)),
                format!("--tls-private-key-file={}", p(&pki.serving_key)),
                format!("--client-ca-file={}", p(&pki.ca_cert)),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p(&pki.sa_pub)),
                format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
                "--service-cluster-ip-range=10.0.0.0/16".into(),
                "--authorization-mode=RBAC".into(),
                "--allow-privileged=true".into(),
                // Kubelets (`worker`): a client certificate for them, dialled by the node IP (a
                // node's host name resolves nowhere here).
                format!(
                    "--kubelet-client-certificate={}",
                    p(&pki.kubelet_client_cert)
                ),
                format!("--kubelet-client-key={}", p(&pki.kubelet_client_key)),
                "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname".into(),
                "--v=1".into(),
            ],
        )?);
        let client = plane.client().await?;
        plane.wait_ready(&client).await?;
        if let Some(kcm) = &assets.kube_controller_manager {
            plane.components.push(spawn(
                &path,
                "kube-controller-manager",
                kcm,
                &[
                    format!("--kubeconfig={}", p(&plane.kubeconfig)),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--controllers=*".into(),
                    "--use-service-account-credentials=false".into(),
                    format!("--service-account-private-key-file={}", p(&pki.sa_key)),
                    format!("--root-ca-file={}", p(&pki.ca_cert)),
                    format!("--cluster-signing-cert-file={}", p(&pki.ca_cert)),
                    format!("--cluster-signing-key-file={}", p(&pki.ca_key)),
                    "--v=1".into(),
                ],
            )?);
            plane.controller_manager = true;
        }
        Ok(plane)
    }

    /// A client authenticated as the admin.
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_text)
            .map_err(|e| EnvtestError::Client(Box::new(e)))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| EnvtestError::Client(Box::new(e)))?;
        Client::try_from(config).map_err(|e| EnvtestError::Client(Box::new(e)))
    }

    async fn wait_ready(&mut self, client: &Client) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last;
        loop {
            for component in &mut self.components {
                if let Some(what) = component.exited() {
                    return Err(component.not_ready(what));
                }
            }
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| EnvtestError::Client(Box::new(e)))?;
            match client.request_text(request).await {
                Ok(text) if text.trim() == "ok" => return Ok(()),
                Ok(text) => last = text,
                Err(err) => last = err.to_string(),
            }
            if Instant::now() > deadline {
                let apiserver = &self.components[1];
                return Err(apiserver.not_ready(format!(
                    "not ready within {READY_TIMEOUT:?} (last answer: {last})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The directory holding the PKI, logs and etcd data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA file: it signs the API server's serving certificate and the client certificates
    /// (a kubelet's `authentication.x509.clientCAFile`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Start kube-scheduler from `assets` (when there is one) against this control plane, so
    /// that pods on a kubelet ([`crate::worker`]) are scheduled; stopped with the rest. Returns
    /// whether it runs.
    pub fn start_scheduler(&mut self, assets: &Assets) -> Result<bool> {
        let Some(scheduler) = &assets.kube_scheduler else {
            return Ok(false);
        };
        let port = free_port().map_err(io_err("finding a free port"))?;
        let path = self.dir.path().to_path_buf();
        let component = spawn(
            &path,
            "kube-scheduler",
            scheduler,
            &[
                format!("--kubeconfig={}", self.kubeconfig.display()),
                format!("--authentication-kubeconfig={}", self.kubeconfig.display()),
                format!("--authorization-kubeconfig={}", self.kubeconfig.display()),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--v=1".into(),
            ],
        )?;
        self.components.push(component);
        Ok(true)
    }

    /// PIDs of the running components.
    pub fn pids(&self) -> Vec<u32> {
        self.components.iter().map(|c| c.child.id()).collect()
    }

    /// Stop `part` (SIGTERM to its process group, SIGKILL after 5 s), leaving the others running.
    pub fn stop_component(&mut self, part: Part) {
        if let Some(component) = self.components.iter_mut().find(|c| c.name == part.name()) {
            component.stop(Duration::from_secs(5));
        }
    }

    /// Start `part` again after [`Self::stop_component`], exactly as it first ran: the same
    /// binary and flags, so the same ports, certificates and etcd data directory. Waits until the
    /// API server answers `/readyz` again (which needs both etcd and kube-apiserver running).
    pub async fn start_component(&mut self, part: Part) -> Result<()> {
        let Some(index) = self.components.iter().position(|c| c.name == part.name()) else {
            return Err(EnvtestError::Io {
                what: format!("{} is not part of this control plane", part.name()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        };
        let old = &mut self.components[index];
        if old.exited().is_none() {
            return Ok(());
        }
        let (dir, program, args) = (old.dir.clone(), old.program.clone(), old.args.clone());
        self.components[index] = spawn(&dir, part.name(), &program, &args)?;
        let client = self.client().await?;
        self.wait_ready(&client).await
    }

    /// Stop every component, the controller manager first and etcd last.
    pub fn stop(&mut self) {
        for mut component in self.components.drain(..).rev() {
            component.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn admin_kubeconfig(server: &str, pki: &Pki) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // JSON is YAML: kubectl and kube-rs read it alike, with nothing left to quote.
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "envtest", "cluster": {
            "server": server,
            "certificate-authority-data": b64(&pki.ca_pem),
        }}],
        "users": [{"name": "envtest-admin", "user": {
            "client-certificate-data": b64(&pki.admin_cert_pem),
            "client-key-data": b64(&pki.admin_key_pem),
        }}],
        "contexts": [{"name": "envtest", "context": {"cluster": "envtest", "user": "envtest-admin"}}],
        "current-context": "envtest",
    })
    .to_string()
}
