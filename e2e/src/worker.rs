//! A real Kubernetes worker node for e2e tests: containerd, runc, the CNI bridge and a kubelet,
//! in namespaces of the test's own.
//!
//! [`Worker::start`] makes a network namespace and a mount namespace (held by one `sleep`
//! process), joins the network namespace to the host with a veth pair whose addresses are a /30
//! in `10.213.0.0/17` claimed per worker, starts containerd inside both namespaces with its root,
//! state, socket, configuration and CNI files under the test's directory, and imports the local
//! busybox image ([`IMAGE`], made by `e2e/hack/make-images.sh`) that serves as both the pause
//! image and the workload image. [`Worker::start_kubelet`] then starts the kubelet in the same
//! namespaces with the caller's kubeconfig and base KubeletConfiguration, overlaid with only the
//! machine-specific fields ([`overlay_kubelet_config`]). [`Worker::expose`] relays a loopback
//! port of the host (a control plane's published API port) to the host end of the veth, where
//! the worker and its pods reach it.
//!
//! Nothing here changes the host beyond the test: the mount namespace has its own `/run`,
//! `/var/lib` and `/var/log` (tmpfs), so containerd's shim sockets, CNI caches and the kubelet's
//! log links never land on the host; every mount (container root filesystems, pod network
//! namespaces, volumes) is made inside the mount namespace and is gone with it. The only host
//! objects are the veth's host end and a cgroup tree `/nautilus-e2e-w<index>-<pid>` (the kubelet's
//! `cgroupRoot`, which also holds containerd, its shims and the kubelet).
//!
//! Ownership: every process started here runs under `setpriv --pdeathsig KILL` (it dies with
//! the test process) inside that cgroup tree. containerd's shims re-parent to init and outlive
//! containerd, and containers outlive their shims, so [`Worker::stop`] (also run on drop) kills
//! every process in the cgroup tree and every process naming the test's directory (the shims'
//! `-address`) until none is left, waits for the namespaces to go with their last process,
//! deletes the veth and the cgroups. [`Worker::leftovers`] lists anything that outlived it. A
//! test process killed outright (SIGKILL, no drop) leaves its shims and containers running; the
//! next [`Worker::start`] on the machine finds its tree by the dead owner's PID in the tree's
//! name and takes it down.
//!
//! Needs root, a kubelet (`$KUBEBUILDER_ASSETS/kubelet`), and Debian's `containerd`, `runc`,
//! `containernetworking-plugins`, `busybox-static`, `iproute2`, `iptables` and util-linux
//! (`unshare`, `nsenter`, `setpriv`). [`available`] prints the one skip line naming what is
//! missing, or fails when `NAUTILUS_E2E_REQUIRE=1`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};

use nautilus_test_support::processes_mentioning;

use crate::envtest::{self, log_tail};

/// The local image: busybox, with a default command that sleeps until SIGTERM (the pause
/// image), and every busybox applet for workloads.
pub const IMAGE: &str = "nautilus.local/busybox:1.35";
/// The script that makes [`IMAGE`] as a docker-archive tarball: `make-images.sh OUT.tar [TAG]`.
pub const MAKE_IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/make-images.sh");
/// The default pod range: pods live inside the worker's network namespace only (their traffic
/// to the host is masqueraded to the node IP), so every worker may use the same range.
pub const DEFAULT_POD_CIDR: &str = "10.213.128.0/24";
/// The CNI plugins' directory (Debian's `containernetworking-plugins`).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The kubelet's port on the node IP.
pub const KUBELET_PORT: u16 = 10250;
/// How long containerd may take to open its socket, and the kubelet to register.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many /30 networks `10.213.0.0/17` holds (index 0 is never used).
const SLOTS: u32 = 8192;
/// Host-end interface names are `nautw<index>`.
const VETH_PREFIX: &str = "nautw";
/// Cgroup trees are `/nautilus-e2e-w<index>-<pid of the test process>`.
const CGROUP_PREFIX: &str = "nautilus-e2e-w";

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A file could not be written or read, or a process not started.
    #[error("{what}")]
    Io {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A setup command failed.
    #[error("{what}: `{command}` failed ({status}): {stderr}")]
    Command {
        /// What it was for.
        what: &'static str,
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A component exited or did not become ready.
    #[error("{component} {what}; the end of its log ({log}):\n{tail}")]
    NotReady {
        /// Which component.
        component: &'static str,
        /// What happened.
        what: String,
        /// Its log file.
        log: String,
        /// The last lines of that log.
        tail: String,
    },
    /// The base KubeletConfiguration or the kubeconfig is not what it should be.
    #[error("{what}")]
    Config {
        /// What is wrong.
        what: String,
        /// The parse error, if any.
        #[source]
        source: Option<serde_yaml::Error>,
    },
    /// No free address slot was found in `10.213.0.0/17`.
    #[error("no free veth slot in 10.213.0.0/17 after {0} tries")]
    NoSlot(u32),
    /// The Kubernetes API answered with an error while waiting for the node.
    #[error("reading Node {name}")]
    Api {
        /// The node.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

type Result<T, E = WorkerError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkerError {
    let what = what.into();
    move |source| WorkerError::Io { what, source }
}

/// What a worker needs that this machine lacks, empty when it has everything: root, the
/// kubelet, containerd, runc, ctr, the CNI bridge plugins, util-linux's namespace tools,
/// iproute2, iptables (the bridge plugin's masquerading) and a static busybox.
pub fn missing() -> Vec<String> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (namespaces, mounts, cgroups)".to_owned());
    }
    let kubelet = envtest::Assets::dir().join("kubelet");
    if !is_executable(&kubelet) {
        missing.push(format!("kubelet ({})", kubelet.display()));
    }
    for tool in [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "unshare",
        "nsenter",
        "setpriv",
        "ip",
        "iptables",
    ] {
        if envtest::on_path(tool).is_none() && !is_executable(&Path::new("/usr/sbin").join(tool)) {
            missing.push(tool.to_owned());
        }
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !is_executable(&Path::new(CNI_BIN_DIR).join(plugin)) {
            missing.push(format!(
                "{CNI_BIN_DIR}/{plugin} (containernetworking-plugins)"
            ));
        }
    }
    if !is_executable(Path::new("/bin/busybox")) {
        missing.push("/bin/busybox (busybox-static)".to_owned());
    }
    missing
}

/// Whether a worker can run here. If not, prints one `skipped:` line naming what is missing
/// and returns `false`, or panics when `NAUTILUS_E2E_REQUIRE=1`.
pub fn available(test: &str) -> bool {
    let missing = missing();
    if missing.is_empty() {
        return true;
    }
    let reason = format!("no {}", missing.join(", "));
    assert!(
        !crate::required(),
        "e2e {test}: {}=1 but {reason}",
        crate::REQUIRE_ENV
    );
    println!("skipped: e2e {test}: {reason}");
    false
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn program(name: &str) -> PathBuf {
    envtest::on_path(name)
        .or_else(|| Some(Path::new("/usr/sbin").join(name)).filter(|p| is_executable(p)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// How to start a worker.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Where everything lives (created if absent): logs, containerd's root, state, socket and
    /// configuration, CNI configuration and IPAM state, the kubelet's root directory and pod
    /// logs. Not removed by [`Worker::stop`] (the test's temporary directory is). Must not lie
    /// under `/run`, `/var/lib` or `/var/log`, which the worker's mount namespace covers.
    pub dir: PathBuf,
    /// The Node's name (`--hostname-override`).
    pub node_name: String,
    /// The pods' range, for the CNI bridge's host-local IPAM ([`DEFAULT_POD_CIDR`]).
    pub pod_cidr: String,
    /// The kubelet binary (default `$KUBEBUILDER_ASSETS/kubelet`).
    pub kubelet: PathBuf,
    /// A docker-archive tarball to import (default: [`MAKE_IMAGES`] makes [`IMAGE`] in `dir`).
    pub images: Option<PathBuf>,
    /// The pause image containerd uses: it must be in `images` ([`IMAGE`]).
    pub sandbox_image: String,
    /// Statically linked programs of this machine to add to `/bin` of the image that
    /// [`MAKE_IMAGES`] makes (when `images` is `None`): e.g. `kubectl`, for a pod that talks
    /// to the API server over TLS with its ServiceAccount token (busybox's TLS client cannot).
    pub image_binaries: Vec<PathBuf>,
}

impl WorkerSettings {
    /// Defaults for a node `node_name` living in `dir`.
    pub fn new(dir: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            node_name: node_name.into(),
            pod_cidr: DEFAULT_POD_CIDR.to_owned(),
            kubelet: envtest::Assets::dir().join("kubelet"),
            images: None,
            sandbox_image: IMAGE.to_owned(),
            image_binaries: Vec::new(),
        }
    }
}

/// What the kubelet is started with ([`Worker::start_kubelet`]).
#[derive(Clone, Debug)]
pub struct KubeletSettings {
    /// The kubelet's kubeconfig, used as is (in the product: the one `nautilusctl join` writes,
    /// with the seal-token exec plugin). Its server must be reachable from the worker: the host
    /// end ([`Worker::host_ip`]), e.g. through [`Worker::expose`].
    pub kubeconfig: PathBuf,
    /// The base KubeletConfiguration (in the product: the one `nautilusctl join` writes). Only
    /// the machine-specific fields are overlaid ([`overlay_kubelet_config`]).
    pub config: PathBuf,
    /// More kubelet flags (`--node-labels=…`, `--v=4`).
    pub extra_args: Vec<String>,
}

/// One running process of the worker.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn exited(&mut self) -> Option<String> {
        envtest::exit_of(&mut self.child)
    }

    fn not_ready(&self, what: String) -> WorkerError {
        WorkerError::NotReady {
            component: self.name,
            what,
            log: self.log.display().to_string(),
            tail: log_tail(&self.log),
        }
    }
}

/// The cgroup hierarchies the worker's tree lives in.
#[derive(Clone, Debug)]
struct Cgroups {
    /// `/sys/fs/cgroup` (v2), or each v1 hierarchy's mount point (`/sys/fs/cgroup/memory`…).
    hierarchies: Vec<PathBuf>,
    /// The hierarchy whose `cgroup.procs` track the worker's processes (v2: the unified one; v1:
    /// `pids`, else the first).
    tracking: PathBuf,
    /// `nautilus-e2e-w<index>-<pid>`: the kubelet's `cgroupRoot`.
    root: String,
}

impl Cgroups {
    fn discover(root: String) -> Result<Self> {
        let base = Path::new("/sys/fs/cgroup");
        if base.join("cgroup.controllers").is_file() {
            return Ok(Self {
                hierarchies: vec![base.to_owned()],
                tracking: base.to_owned(),
                root,
            });
        }
        let entries = std::fs::read_dir(base).map_err(io_err("listing /sys/fs/cgroup"))?;
        let mut hierarchies: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| !p.is_symlink() && p.join("cgroup.procs").is_file())
            .collect();
        hierarchies.sort();
        let tracking = hierarchies
            .iter()
            .find(|h| h.ends_with("pids"))
            .or(hierarchies.first())
            .cloned()
            .ok_or_else(|| WorkerError::Io {
                what: "no cgroup hierarchy under /sys/fs/cgroup".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
        Ok(Self {
            hierarchies,
            tracking,
            root,
        })
    }

    fn unified(&self) -> bool {
        self.hierarchies.len() == 1 && self.hierarchies[0] == Path::new("/sys/fs/cgroup")
    }

    /// `cgroup.procs` of `<root>/runtime` in the tracking hierarchy: containerd, its shims, the
    /// kubelet and the namespace holder.
    fn runtime_procs(&self) -> PathBuf {
        self.tracking
            .join(&self.root)
            .join("runtime")
            .join("cgroup.procs")
    }

    /// Create `<root>` in every hierarchy (cpuset filled from the parent, as a v1 cpuset must be
    /// before a task may join) and `<root>/runtime` in the tracking one.
    fn create(&self) -> Result<()> {
        for h in &self.hierarchies {
            let dir = h.join(&self.root);
            std::fs::create_dir_all(&dir)
                .map_err(io_err(format!("creating cgroup {}", dir.display())))?;
            if !self.unified() && h.ends_with("cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(h.join(file)).unwrap_or_default();
                    std::fs::write(dir.join(file), value.trim())
                        .map_err(io_err(format!("writing {}", dir.join(file).display())))?;
                }
            }
        }
        if self.unified() {
            // Hand the root's controllers down, so the kubelet's kubepods can use them.
            let dir = self.tracking.join(&self.root);
            let controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
                .map_err(io_err("reading cgroup.controllers"))?;
            let enable: Vec<String> = controllers
                .split_whitespace()
                .map(|c| format!("+{c}"))
                .collect();
            std::fs::write(dir.join("cgroup.subtree_control"), enable.join(" "))
                .map_err(io_err("writing cgroup.subtree_control"))?;
        }
        let runtime = self.tracking.join(&self.root).join("runtime");
        std::fs::create_dir_all(&runtime)
            .map_err(io_err(format!("creating cgroup {}", runtime.display())))
    }

    /// PIDs of every process in the tree (tracking hierarchy and, for v1, every other one:
    /// containers are placed in all of them by runc).
    fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for h in &self.hierarchies {
            collect_procs(&h.join(&self.root), &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The tree's cgroup directories that still exist.
    fn existing(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| h.join(&self.root))
            .filter(|d| d.is_dir())
            .collect()
    }

    /// Remove the tree, deepest first (every cgroup must be empty of processes).
    fn remove(&self) {
        for h in &self.hierarchies {
            remove_cgroup(&h.join(&self.root));
        }
    }
}

fn collect_procs(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_procs(&entry.path(), pids);
            }
        }
    }
}

fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    // A cgroup directory is removed with rmdir (its control files go with it).
    let _ = std::fs::remove_dir(dir);
}

/// The addresses of worker slot `index`: the host end and the worker end (the node IP) of the
/// /30 `10.213.0.0/17 + 4 * index`.
fn slot_addresses(index: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + 4 * (index % SLOTS);
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// A running worker node: namespaces, veth, containerd and (after
/// [`Worker::start_kubelet`]) the kubelet. Stopped, and everything it made removed, on drop.
#[derive(Debug)]
pub struct Worker {
    settings: WorkerSettings,
    dir: PathBuf,
    index: u32,
    host_ip: Ipv4Addr,
    node_ip: Ipv4Addr,
    veth: String,
    cgroups: Cgroups,
    holder: Option<Proc>,
    holder_pid: i32,
    /// `net:[inode]` and `mnt:[inode]` of the holder's namespaces.
    namespaces: Vec<String>,
    containerd: Option<Proc>,
    kubelet: Option<Proc>,
    kubelet_started: Option<Instant>,
    relays: Vec<tokio::task::JoinHandle<()>>,
    stopped: bool,
}

impl Worker {
    /// Make the namespaces and the veth, start containerd and import the images. Call from
    /// within a Tokio runtime, on a thread that outlives the worker (a test's thread or a
    /// runtime worker, not a blocking-pool thread): the processes get SIGKILL when the thread
    /// that started them ends.
    pub async fn start(settings: WorkerSettings) -> Result<Self> {
        for covered in ["/run", "/var/lib", "/var/log", "/var/run"] {
            if settings.dir.starts_with(covered) {
                return Err(WorkerError::Config {
                    what: format!(
                        "the worker's directory {} is under {covered}, which its mount namespace \
                         covers",
                        settings.dir.display()
                    ),
                    source: None,
                });
            }
        }
        std::fs::create_dir_all(&settings.dir)
            .map_err(io_err(format!("creating {}", settings.dir.display())))?;
        let dir = settings
            .dir
            .canonicalize()
            .map_err(io_err(format!("resolving {}", settings.dir.display())))?;
        for sub in [
            "containerd/root",
            "containerd/state",
            "containerd/opt",
            "cni/net.d",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io_err(format!("creating {}", dir.join(sub).display())))?;
        }

        // The namespace holder: a private mount namespace with its own /run, /var/lib and
        // /var/log, and an empty network namespace with loopback up.
        let holder_script = "mount -t tmpfs -o mode=0755 nautilus-run /run \
             && mount -t tmpfs -o mode=0755 nautilus-varlib /var/lib \
             && mount -t tmpfs -o mode=0755 nautilus-varlog /var/log \
             && ip link set lo up && exec sleep infinity";

        sweep_orphans();
        // Claim a slot: the host end's name is unique on the host, so `ip link add` fails with
        // "File exists" while another worker holds the slot. The pair is made on the host and
        // its worker end moved into the namespace below.
        let pid = std::process::id();
        let first = pid.wrapping_mul(7919) % (SLOTS - 1);
        let mut claimed = None;
        for attempt in 0..64 {
            let index = (first + attempt * 131) % (SLOTS - 1) + 1;
            let veth = format!("{VETH_PREFIX}{index}");
            let created = run_status(
                "creating the veth pair",
                Command::new(program("ip")).args([
                    "link",
                    "add",
                    &veth,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("{veth}w"),
                ]),
            );
            match created {
                Ok(()) => {
                    claimed = Some((index, veth));
                    break;
                }
                Err(WorkerError::Command { stderr, .. }) if stderr.contains("File exists") => {}
                Err(err) => return Err(err),
            }
        }
        let Some((index, veth)) = claimed else {
            return Err(WorkerError::NoSlot(64));
        };
        let (host_ip, node_ip) = slot_addresses(index);
        // From here on, dropping `w` on an error removes whatever was made.
        let mut w = Self {
            settings,
            dir,
            index,
            host_ip,
            node_ip,
            veth,
            cgroups: Cgroups::discover(format!("{CGROUP_PREFIX}{index}-{pid}"))?,
            holder: None,
            holder_pid: 0,
            namespaces: Vec::new(),
            containerd: None,
            kubelet: None,
            kubelet_started: None,
            relays: Vec::new(),
            stopped: false,
        };
        w.cgroups.create()?;
        let holder = w.spawn(
            "namespaces",
            &program("unshare"),
            &[
                "--net".into(),
                "--mount".into(),
                "--propagation".into(),
                "private".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                holder_script.into(),
            ],
            false,
        )?;
        w.holder = Some(holder);
        w.wait_holder().await?;
        let peer = format!("{}w", w.veth);
        run_status(
            "moving the veth's worker end into the namespace",
            Command::new(program("ip")).args([
                "link",
                "set",
                &peer,
                "netns",
                &w.holder_pid.to_string(),
            ]),
        )?;
        run_status(
            "naming the worker's end eth0",
            w.nsenter(&program("ip"))
                .args(["link", "set", &peer, "name", "eth0"]),
        )?;
        w.configure_network()?;
        w.write_cni_config()?;
        w.start_containerd().await?;
        w.import_images().await?;
        Ok(w)
    }

    /// Wait until the holder has made its namespaces (it has exec'd `sleep`), and note them.
    async fn wait_holder(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let Some(holder) = self.holder.as_mut() else {
            return Ok(());
        };
        let pid = i32::try_from(holder.child.id()).unwrap_or_default();
        loop {
            if let Some(what) = holder.exited() {
                return Err(holder.not_ready(what));
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            if Instant::now() > deadline {
                return Err(holder.not_ready("did not make its namespaces within 10 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.holder_pid = pid;
        self.namespaces = ["net", "mnt"]
            .iter()
            .filter_map(|ns| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok())
            .map(|l| l.display().to_string())
            .collect();
        Ok(())
    }

    /// Addresses on both ends; the worker reaches only the /30 (no default route).
    fn configure_network(&self) -> Result<()> {
        let ip = program("ip");
        let host = format!("{}/30", self.host_ip);
        let node = format!("{}/30", self.node_ip);
        run_status(
            "addressing the veth's host end",
            Command::new(&ip).args(["addr", "add", &host, "dev", &self.veth]),
        )?;
        run_status(
            "bringing the veth's host end up",
            Command::new(&ip).args(["link", "set", &self.veth, "up"]),
        )?;
        run_status(
            "addressing the worker's end",
            self.nsenter(&ip)
                .args(["addr", "add", &node, "dev", "eth0"]),
        )?;
        run_status(
            "bringing the worker's end up",
            self.nsenter(&ip).args(["link", "set", "eth0", "up"]),
        )
    }

    /// `nsenter` into the worker's namespaces, then `program`.
    fn nsenter(&self, program: &Path) -> Command {
        let mut cmd = Command::new(self::program("nsenter"));
        cmd.arg(format!("--target={}", self.holder_pid))
            .args(["--net", "--mount", "--"])
            .arg(program);
        cmd
    }

    fn write_cni_config(&self) -> Result<()> {
        let config = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "nautilus-e2e",
            "plugins": [{
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.settings.pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.dir.join("cni/ipam"),
                },
            }],
        });
        let path = self.dir.join("cni/net.d/10-nautilus-e2e.conflist");
        std::fs::write(&path, config.to_string())
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn containerd_config(&self) -> String {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = ""

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox}"
  # The sandbox forbids oom_score_adj below the caller's (-998): without this runc fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, mounted inside the worker's mount
  # namespace only.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
"#,
            root = d("containerd/root"),
            state = d("containerd/state"),
            socket = self.containerd_socket().display(),
            opt = d("containerd/opt"),
            sandbox = self.settings.sandbox_image,
            cni_bin = CNI_BIN_DIR,
            cni_conf = d("cni/net.d"),
        )
    }

    async fn start_containerd(&mut self) -> Result<()> {
        let config = self.dir.join("containerd.toml");
        std::fs::write(&config, self.containerd_config())
            .map_err(io_err(format!("writing {}", config.display())))?;
        let proc = self.spawn(
            "containerd",
            &program("containerd"),
            &[format!("--config={}", config.display())],
            true,
        )?;
        self.containerd = Some(proc);
        let socket = self.containerd_socket();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(containerd) = self.containerd.as_mut()
                && let Some(what) = containerd.exited()
            {
                return Err(containerd.not_ready(what));
            }
            if std::os::unix::net::UnixStream::connect(&socket).is_ok()
                && self.ctr(&["version"]).await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline
                && let Some(containerd) = &self.containerd
            {
                return Err(containerd.not_ready(format!(
                    "did not answer on {} within {START_TIMEOUT:?}",
                    socket.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run `ctr --address <socket> -n k8s.io <args>` (from the host: the socket is a file in
    /// the test's directory) and return its standard output.
    pub async fn ctr(&self, args: &[&str]) -> Result<String> {
        let output = tokio::process::Command::new(program("ctr"))
            .arg(format!("--address={}", self.containerd_socket().display()))
            .args(["--namespace=k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(io_err("running ctr"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(WorkerError::Command {
                what: "ctr",
                command: format!("ctr {}", args.join(" ")),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            })
        }
    }

    async fn import_images(&self) -> Result<()> {
        let archive = match &self.settings.images {
            Some(archive) => archive.clone(),
            None => {
                let archive = self.dir.join("images.tar");
                let output = tokio::process::Command::new("bash")
                    .arg(MAKE_IMAGES)
                    .arg(&archive)
                    .arg(IMAGE)
                    .args(&self.settings.image_binaries)
                    .stdin(Stdio::null())
                    .output()
                    .await
                    .map_err(io_err(format!("running {MAKE_IMAGES}")))?;
                if !output.status.success() {
                    return Err(WorkerError::Command {
                        what: "making the local images",
                        command: format!("{MAKE_IMAGES} {}", archive.display()),
                        status: output.status.to_string(),
                        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
                    });
                }
                archive
            }
        };
        let archive = archive.display().to_string();
        self.ctr(&["images", "import", &archive]).await.map(drop)
    }

    /// Start the kubelet in the worker's namespaces with `settings`: the base configuration is
    /// overlaid ([`overlay_kubelet_config`]) and written to `kubelet/config.yaml`; the log is
    /// `kubelet.log`. Returns once the process runs; [`Worker::wait_node_ready`] waits for the
    /// Node.
    pub fn start_kubelet(&mut self, settings: &KubeletSettings) -> Result<()> {
        self.start_kubelet_as(None, settings)
    }

    /// [`Worker::start_kubelet`] registering as `node_name` when given (a name known only after
    /// the worker started, such as the one `nautilusctl join` derives from a key), which
    /// [`Worker::node_name`] and [`Worker::wait_node_ready`] then use too.
    pub fn start_kubelet_as(
        &mut self,
        node_name: Option<&str>,
        settings: &KubeletSettings,
    ) -> Result<()> {
        if let Some(name) = node_name
            && self.kubelet.is_none()
        {
            self.settings.node_name = name.to_owned();
        }
        if self.kubelet.is_some() {
            return Err(WorkerError::Config {
                what: "the kubelet runs already".into(),
                source: None,
            });
        }
        let base = std::fs::read_to_string(&settings.config)
            .map_err(io_err(format!("reading {}", settings.config.display())))?;
        let config = overlay_kubelet_config(&base, &self.machine())?;
        let root = self.dir.join("kubelet");
        std::fs::create_dir_all(&root).map_err(io_err(format!("creating {}", root.display())))?;
        let config_path = self.dir.join("kubelet-config.yaml");
        std::fs::write(&config_path, config)
            .map_err(io_err(format!("writing {}", config_path.display())))?;
        let mut args = vec![
            format!("--config={}", config_path.display()),
            format!("--kubeconfig={}", settings.kubeconfig.display()),
            format!("--root-dir={}", root.display()),
            format!("--cert-dir={}", root.join("pki").display()),
            format!("--hostname-override={}", self.settings.node_name),
            format!("--node-ip={}", self.node_ip),
            "--v=2".into(),
        ];
        args.extend(settings.extra_args.iter().cloned());
        let kubelet = self.settings.kubelet.clone();
        self.kubelet_started = Some(Instant::now());
        self.kubelet = Some(self.spawn("kubelet", &kubelet, &args, true)?);
        Ok(())
    }

    /// The machine-specific KubeletConfiguration fields of this worker.
    pub fn machine(&self) -> MachineConfig {
        MachineConfig {
            container_runtime_endpoint: format!("unix://{}", self.containerd_socket().display()),
            cgroup_root: format!("/{}", self.cgroups.root),
            address: self.node_ip,
            pod_logs_dir: self.dir.join("pod-logs"),
        }
    }

    /// Wait until the Node is `Ready` (or `timeout`), failing early when the kubelet exits.
    /// Returns the time from the kubelet's start to Ready.
    pub async fn wait_node_ready(
        &mut self,
        client: &Client,
        timeout: Duration,
    ) -> Result<Duration> {
        let nodes: Api<Node> = Api::all(client.clone());
        let name = self.settings.node_name.clone();
        let deadline = Instant::now() + timeout;
        let mut last = "not registered".to_owned();
        loop {
            if let Some(kubelet) = self.kubelet.as_mut()
                && let Some(what) = kubelet.exited()
            {
                return Err(kubelet.not_ready(what));
            }
            match nodes.get_opt(&name).await {
                Ok(Some(node)) => {
                    let ready = node
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
                    if let Some(ready) = ready {
                        if ready.status == "True" {
                            return Ok(self
                                .kubelet_started
                                .map_or(Duration::ZERO, |t| t.elapsed()));
                        }
                        last = format!(
                            "Ready={} ({}: {})",
                            ready.status,
                            ready.reason.clone().unwrap_or_default(),
                            ready.message.clone().unwrap_or_default()
                        );
                    } else {
                        last = "registered, no Ready condition yet".into();
                    }
                }
                Ok(None) => {}
                Err(source) => return Err(WorkerError::Api { name, source }),
            }
            if Instant::now() > deadline {
                let what = format!("Node {name} not Ready within {timeout:?}: {last}");
                return Err(match &self.kubelet {
                    Some(kubelet) => kubelet.not_ready(what),
                    None => WorkerError::Config { what, source: None },
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Relay the host's `127.0.0.1:<port>` (say, a control plane's published API port) to
    /// `<host_ip>:<port>`, where the worker and its pods reach it. Returns the address to give
    /// the worker. The relay is a task of the current Tokio runtime, stopped by
    /// [`Worker::stop`]. A TLS server's certificate will not name the host end: give the
    /// kubeconfig a `tls-server-name` ([`rewrite_kubeconfig`]).
    pub async fn expose(&mut self, port: u16) -> Result<SocketAddr> {
        let at = SocketAddr::from((self.host_ip, port));
        let listener = tokio::net::TcpListener::bind(at)
            .await
            .map_err(io_err(format!("listening on {at}")))?;
        let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.relays.push(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
        Ok(at)
    }

    /// Route TCP to `cluster_ip:port` from the worker and its pods to `to` (DNAT in the worker's
    /// network namespace; the CNI bridge masquerades the pods' side), as kube-proxy would for
    /// that one Service: e.g. the `kubernetes` Service's cluster IP to the API server's address
    /// on the host end ([`Worker::expose`]), so that in-cluster clients (`KUBERNETES_SERVICE_HOST`)
    /// reach it. No kube-proxy runs on the worker. Names do not resolve either (no cluster DNS):
    /// give a pod `hostAliases` for `kubernetes.default.svc`.
    pub fn route_service(&self, cluster_ip: Ipv4Addr, port: u16, to: SocketAddr) -> Result<()> {
        let iptables = program("iptables");
        for chain in ["PREROUTING", "OUTPUT"] {
            run_status(
                "routing a Service's cluster IP",
                self.nsenter(&iptables).args([
                    "-t",
                    "nat",
                    "-A",
                    chain,
                    "-d",
                    &format!("{cluster_ip}/32"),
                    "-p",
                    "tcp",
                    "--dport",
                    &port.to_string(),
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &to.to_string(),
                ]),
            )?;
        }
        Ok(())
    }

    /// The node IP: the worker's end of the veth (the kubelet listens on it, port
    /// [`KUBELET_PORT`]).
    pub fn node_ip(&self) -> Ipv4Addr {
        self.node_ip
    }

    /// The host's end of the veth: where the worker reaches the host.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.settings.node_name
    }

    /// The worker's directory (logs: `containerd.log`, `kubelet.log`, `namespaces.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubelet's log.
    pub fn kubelet_log(&self) -> PathBuf {
        self.dir.join("kubelet.log")
    }

    /// containerd's log.
    pub fn containerd_log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The worker's slot: its cgroup tree is `/nautilus-e2e-w<index>-<pid>`, its host end
    /// `nautw<index>`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// PID of the process holding the worker's namespaces (`nsenter --target=<pid> --net
    /// --mount` runs a command inside; `None` once stopped).
    pub fn namespace_pid(&self) -> Option<i32> {
        (!self.stopped && self.holder_pid > 0).then_some(self.holder_pid)
    }

    /// Start `program` with `args` in the runtime cgroup, under `setpriv --pdeathsig KILL`,
    /// inside the worker's namespaces when `inside`; output to `<dir>/<name>.log`.
    fn spawn(
        &self,
        name: &'static str,
        program: &Path,
        args: &[String],
        inside: bool,
    ) -> Result<Proc> {
        let log = self.dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(format!("opening {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("opening {}", log.display())))?;
        // sh joins the cgroup and execs setpriv, which sets the parent-death signal and execs
        // nsenter (or the program): one process all along, in the cgroup before it forks.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$0" && exec "$@""#)
            .arg(self.cgroups.runtime_procs())
            .arg(self::program("setpriv"))
            .args(["--pdeathsig", "KILL", "--"]);
        if inside {
            cmd.arg(self::program("nsenter"))
                .arg(format!("--target={}", self.holder_pid))
                .args(["--net", "--mount", "--"]);
        }
        {
            use std::os::unix::process::CommandExt as _;
            cmd.process_group(0);
        }
        let child = cmd
            .arg(program)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(io_err(format!("starting {}", program.display())))?;
        Ok(Proc { name, child, log })
    }

    /// SIGKILL every process of the worker (its cgroup tree, and whatever names its directory:
    /// containerd's re-parented shims) until none is left or `within` passes; reap our children.
    fn kill_all(&mut self, within: Duration) {
        let marker = self.dir.display().to_string();
        let deadline = Instant::now() + within;
        loop {
            let mut pids = self.cgroups.pids();
            pids.extend(
                processes_mentioning(&marker)
                    .into_iter()
                    .map(|(pid, _)| pid),
            );
            pids.retain(|pid| *pid != std::process::id() as i32);
            for proc in [&mut self.kubelet, &mut self.containerd, &mut self.holder]
                .into_iter()
                .flatten()
            {
                if proc.exited().is_none() {
                    let _ = proc.child.kill();
                }
                let _ = proc.child.try_wait();
            }
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            sigkill(pids);
            std::thread::sleep(Duration::from_millis(50));
        }
        for proc in [&mut self.kubelet, &mut self.containerd, &mut self.holder]
            .into_iter()
            .flatten()
        {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }

    fn stop_processes(&mut self) {
        for relay in self.relays.drain(..) {
            relay.abort();
        }
        self.kill_all(Duration::from_secs(15));
        self.kubelet = None;
        self.containerd = None;
        self.holder = None;
    }

    /// Stop the worker: kill the kubelet, containerd, its shims and every container, wait for
    /// the namespaces (and every mount in them) to go with their last process, delete the veth
    /// and the cgroup tree. Idempotent; also run on drop. [`Worker::leftovers`] tells whether
    /// anything survived.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.stop_processes();
        // The veth goes with its network namespace, which the kernel tears down shortly after
        // the last process left it.
        let link = Path::new("/sys/class/net").join(&self.veth);
        let deadline = Instant::now() + Duration::from_secs(10);
        while link.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if link.exists() {
            let _ = Command::new(program("ip"))
                .args(["link", "del", &self.veth])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // Cgroups can be removed once the kernel has released their last task.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.cgroups.remove();
            if self.cgroups.existing().is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What outlived [`Worker::stop`] (empty when clean): processes in its cgroup tree or
    /// naming its directory, processes in its namespaces, its veth, its cgroups, and mounts
    /// under its directory.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let marker = self.dir.display().to_string();
        for pid in self.cgroups.pids() {
            left.push(format!("process {pid} in the worker's cgroup tree"));
        }
        for (pid, cmdline) in processes_mentioning(&marker) {
            left.push(format!(
                "process {pid} naming the worker's directory: {cmdline}"
            ));
        }
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for pid in entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            {
                for ns in ["net", "mnt"] {
                    if let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
                        && self.namespaces.contains(&link.display().to_string())
                    {
                        left.push(format!("process {pid} in the worker's {}", link.display()));
                    }
                }
            }
        }
        if Path::new("/sys/class/net").join(&self.veth).exists() {
            left.push(format!("network interface {}", self.veth));
        }
        for cgroup in self.cgroups.existing() {
            left.push(format!("cgroup {}", cgroup.display()));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            if let Some(target) = line.split(' ').nth(4)
                && target.starts_with(&marker)
            {
                left.push(format!("mount {target}"));
            }
        }
        left
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Take down what workers of test processes that died without stopping them (SIGKILL) left:
/// their containers and shims (which outlive the test: they are not its children), then their
/// cgroup trees and veths. Their namespaces go with their last process.
fn sweep_orphans() {
    let Ok(cgroups) = Cgroups::discover(String::new()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&cgroups.tracking) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((index, owner)) = name
            .strip_prefix(CGROUP_PREFIX)
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        let (Ok(index), Ok(owner)) = (index.parse::<u32>(), owner.parse::<u32>()) else {
            continue;
        };
        if Path::new("/proc").join(owner.to_string()).exists() {
            continue;
        }
        let orphan = Cgroups {
            root: name.clone(),
            ..cgroups.clone()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = orphan.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            sigkill(pids);
            std::thread::sleep(Duration::from_millis(50));
        }
        let veth = Path::new("/sys/class/net").join(format!("{VETH_PREFIX}{index}"));
        let deadline = Instant::now() + Duration::from_secs(5);
        while veth.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if veth.exists() {
            let _ = Command::new(program("ip"))
                .args(["link", "del", &format!("{VETH_PREFIX}{index}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        orphan.remove();
    }
}

fn run_status(what: &'static str, cmd: &mut Command) -> Result<()> {
    let command = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("{what}: running {command}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(WorkerError::Command {
            what,
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// The machine-specific KubeletConfiguration fields a worker sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// `unix://<dir>/containerd.sock`.
    pub container_runtime_endpoint: String,
    /// `/nautilus-e2e-w<index>-<pid>`.
    pub cgroup_root: String,
    /// The node IP, where the kubelet listens.
    pub address: Ipv4Addr,
    /// `<dir>/pod-logs`.
    pub pod_logs_dir: PathBuf,
}

/// SIGKILL each of `pids`; one already gone is no error.
fn sigkill(pids: Vec<i32>) {
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `base` (a KubeletConfiguration in YAML or JSON) with only the machine's fields overlaid:
/// cgroups (`cgroupDriver: cgroupfs`, `cgroupRoot`, `failCgroupV1: false`), `failSwapOn: false`,
/// the runtime endpoint, where the kubelet listens (`address`, port [`KUBELET_PORT`], healthz on
/// loopback, no read-only port), `podLogsDir`, and no static pods. Everything else (the
/// authentication and authorization, `rotateCertificates`, `serverTLSBootstrap`, cluster DNS) is
/// the base's. Fails when `base` is not a `kubelet.config.k8s.io` KubeletConfiguration.
pub fn overlay_kubelet_config(base: &str, machine: &MachineConfig) -> Result<String> {
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(base).map_err(|source| WorkerError::Config {
            what: "the base KubeletConfiguration does not parse".into(),
            source: Some(source),
        })?;
    let kind = config.get("kind").and_then(|k| k.as_str());
    let api_version = config.get("apiVersion").and_then(|k| k.as_str());
    if kind != Some("KubeletConfiguration")
        || !api_version.is_some_and(|v| v.starts_with("kubelet.config.k8s.io/"))
    {
        return Err(WorkerError::Config {
            what: format!(
                "the base is not a KubeletConfiguration (kind {kind:?}, apiVersion \
                 {api_version:?})"
            ),
            source: None,
        });
    }
    let Some(map) = config.as_mapping_mut() else {
        return Err(WorkerError::Config {
            what: "the base KubeletConfiguration is not a mapping".into(),
            source: None,
        });
    };
    let set = |map: &mut serde_yaml::Mapping, key: &str, value: serde_yaml::Value| {
        map.insert(serde_yaml::Value::from(key), value);
    };
    set(map, "cgroupDriver", "cgroupfs".into());
    set(map, "cgroupRoot", machine.cgroup_root.clone().into());
    set(map, "failCgroupV1", false.into());
    set(map, "failSwapOn", false.into());
    set(
        map,
        "containerRuntimeEndpoint",
        machine.container_runtime_endpoint.clone().into(),
    );
    set(map, "address", machine.address.to_string().into());
    set(map, "port", u64::from(KUBELET_PORT).into());
    set(map, "readOnlyPort", 0u64.into());
    set(map, "healthzBindAddress", "127.0.0.1".into());
    set(map, "healthzPort", 10248u64.into());
    set(
        map,
        "podLogsDir",
        machine.pod_logs_dir.display().to_string().into(),
    );
    map.remove("staticPodPath");
    map.remove("staticPodURL");
    serde_yaml::to_string(&config).map_err(|source| WorkerError::Config {
        what: "writing the KubeletConfiguration".into(),
        source: Some(source),
    })
}

/// Copy the kubeconfig `src` to `dst` with every cluster's `server` set to `server` and, when
/// given, `tls-server-name` set (for a server reached through [`Worker::expose`], whose
/// certificate names the original host). Users, exec plugins and CA data are kept as they are.
pub fn rewrite_kubeconfig(
    src: &Path,
    dst: &Path,
    server: &str,
    tls_server_name: Option<&str>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(src).map_err(io_err(format!("reading {}", src.display())))?;
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|source| WorkerError::Config {
            what: format!("{} does not parse", src.display()),
            source: Some(source),
        })?;
    let Some(clusters) = config.get_mut("clusters").and_then(|c| c.as_sequence_mut()) else {
        return Err(WorkerError::Config {
            what: format!("{} has no clusters", src.display()),
            source: None,
        });
    };
    for entry in clusters {
        let Some(cluster) = entry.get_mut("cluster").and_then(|c| c.as_mapping_mut()) else {
            continue;
        };
        cluster.insert("server".into(), server.into());
        if let Some(name) = tls_server_name {
            cluster.insert("tls-server-name".into(), name.into());
        }
    }
    let text = serde_yaml::to_string(&config).map_err(|source| WorkerError::Config {
        what: "writing the kubeconfig".into(),
        source: Some(source),
    })?;
    std::fs::write(dst, text).map_err(io_err(format!("writing {}", dst.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineConfig {
        MachineConfig {
            container_runtime_endpoint: "unix:///tmp/w/containerd.sock".into(),
            cgroup_root: "/nautilus-e2e-w7".into(),
            address: Ipv4Addr::new(10, 213, 0, 30),
            pod_logs_dir: PathBuf::from("/tmp/w/pod-logs"),
        }
    }

    #[test]
    fn the_overlay_sets_the_machine_and_keeps_the_rest() {
        let base = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                    authentication:\n  anonymous: {enabled: false}\n  webhook: {enabled: true}\n\
                    authorization: {mode: Webhook}\nrotateCertificates: false\n\
                    staticPodPath: /etc/kubernetes/manifests\ncgroupDriver: systemd\n\
                    address: 0.0.0.0\n";
        let out = overlay_kubelet_config(base, &machine()).expect("overlay");
        let v: serde_yaml::Value = serde_yaml::from_str(&out).expect("yaml");
        assert_eq!(v["cgroupDriver"], "cgroupfs");
        assert_eq!(v["cgroupRoot"], "/nautilus-e2e-w7");
        assert_eq!(v["failCgroupV1"], false);
        assert_eq!(v["failSwapOn"], false);
        assert_eq!(v["address"], "10.213.0.30");
        assert_eq!(v["port"], 10250);
        assert_eq!(v["readOnlyPort"], 0);
        assert_eq!(
            v["containerRuntimeEndpoint"],
            "unix:///tmp/w/containerd.sock"
        );
        assert_eq!(v["podLogsDir"], "/tmp/w/pod-logs");
        assert!(v.get("staticPodPath").is_none());
        assert_eq!(v["authorization"]["mode"], "Webhook");
        assert_eq!(v["authentication"]["webhook"]["enabled"], true);
        assert_eq!(v["rotateCertificates"], false);
    }

    #[test]
    fn the_overlay_refuses_what_is_not_a_kubelet_configuration() {
        for base in [
            "apiVersion: v1\nkind: Config\n",
            "kind: KubeletConfiguration\n",
            "- a list\n",
            "{not yaml",
        ] {
            assert!(
                overlay_kubelet_config(base, &machine()).is_err(),
                "accepted {base:?}"
            );
        }
    }

    #[test]
    fn slots_are_disjoint_slash_30s_inside_the_veth_range() {
        let (h1, n1) = slot_addresses(1);
        assert_eq!(
            (h1, n1),
            (Ipv4Addr::new(10, 213, 0, 5), Ipv4Addr::new(10, 213, 0, 6))
        );
        let (h, n) = slot_addresses(SLOTS - 1);
        assert_eq!(
            (h, n),
            (
                Ipv4Addr::new(10, 213, 127, 253),
                Ipv4Addr::new(10, 213, 127, 254)
            )
        );
        // The pod range lies outside every slot.
        assert!(DEFAULT_POD_CIDR.starts_with("10.213.128."));
    }

    #[test]
    fn a_rewritten_kubeconfig_keeps_its_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("in");
        std::fs::write(
            &src,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
             https://127.0.0.1:6443\n    certificate-authority-data: QUJD\nusers:\n- name: u\n  \
             user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      \
             command: nautilusctl\n      interactiveMode: Never\n",
        )
        .expect("write");
        let dst = dir.path().join("out");
        rewrite_kubeconfig(&src, &dst, "https://10.213.0.5:6443", Some("localhost"))
            .expect("rewrite");
        let v: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&dst).expect("read")).expect("yaml");
        let cluster = &v["clusters"][0]["cluster"];
        assert_eq!(cluster["server"], "https://10.213.0.5:6443");
        assert_eq!(cluster["tls-server-name"], "localhost");
        assert_eq!(cluster["certificate-authority-data"], "QUJD");
        assert_eq!(v["users"][0]["user"]["exec"]["command"], "nautilusctl");
    }
}
