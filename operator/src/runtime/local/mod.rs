//! The development runtime: one local `nautilus-sidecar` process per resource.
//!
//! `settings` (what it starts, where, on which network), `process` (one sidecar process: its
//! command line, ports, sockets, and stopping it), `record` (adoption across operator
//! restarts); this module keeps the table of processes, one lock per resource, and places,
//! starts, observes and stops them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, PoisonError};

use nautilus_crds::{EnclavePlacement, NautilusMaster, StateDeletionPolicy};
use nautilus_lifetime::{Ended, ProcessId};
use nautilus_protocol::wire::{BootConfig, EnclaveConfig};
use tokio::sync::Mutex;

use super::{Result, RuntimeError, Stopped};
use crate::desired::{self, Names};
use crate::observe::{EnclaveState, Observed};

mod process;
mod record;
mod settings;

use nautilus_lifetime::ports::{free_port, free_port_on};
pub use process::LOCAL_STOP_GRACE;
use process::{Handle, LocalPorts, LocalSockets, endpoint_for, localhost};
use record::{Left, SidecarRecord, boot_json, left_behind, stop_left, stop_recorded, write_record};
pub use settings::{
    DEVELOPMENT_BINARIES, LocalNetwork, LocalSettings, MAX_SOCKET_PATH, development_bin_dir,
};

/// The development runtime: one local sidecar process per resource.
#[derive(Debug)]
pub struct LocalRuntime {
    settings: LocalSettings,
    /// Each resource's sidecar behind a lock of its own: stopping one (up to
    /// [`LOCAL_STOP_GRACE`]) or adopting one holds up no other resource. The map's own lock is
    /// held only to find a slot, never across an await.
    processes: std::sync::Mutex<HashMap<String, Slot>>,
    /// The HTTPS port each resource's control plane got, kept for the resource's lifetime (and
    /// across operator restarts, in the work directory) because it is part of the measured
    /// configuration: a new port would roll the enclave.
    https_ports: std::sync::Mutex<HashMap<String, u16>>,
}

/// One resource's local sidecar, if it has one, behind the resource's own lock.
type Slot = Arc<Mutex<Option<LocalProcess>>>;

/// Name of the file in a resource's work directory that keeps its control plane's HTTPS port.
const HTTPS_PORT_FILE: &str = "https-port";

#[derive(Debug)]
struct LocalProcess {
    child: Handle,
    digest_hex: String,
    http: SocketAddr,
    /// Where its API port is published.
    api: SocketAddr,
    started_ms: u64,
    exit_reported: bool,
}

impl LocalRuntime {
    /// At operator shutdown: stop every local sidecar (SIGTERM, so each stops its agent).
    pub(super) async fn shutdown(&self) {
        let slots: Vec<Slot> = self.table().drain().map(|(_, slot)| slot).collect();
        for slot in slots {
            if let Some(mut p) = slot.lock().await.take() {
                p.child.terminate().await;
            }
        }
    }

    /// The table of slots (its lock is never held across an await).
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot of the resource `key`, made empty when it has none.
    fn slot(&self, key: &str) -> Slot {
        Arc::clone(self.table().entry(key.to_owned()).or_default())
    }

    /// A local runtime with no processes yet.
    pub fn new(settings: LocalSettings) -> Self {
        Self {
            settings,
            processes: std::sync::Mutex::default(),
            https_ports: std::sync::Mutex::default(),
        }
    }

    /// The work directory of one resource.
    /// Where the sidecar of `names` keeps sealed snapshots: beside the work directories, not
    /// in one, because it outlives the resource when `spec.state.deletionPolicy` is `Retain`.
    /// (Work directories are `<namespace>_<name>`, so `state` is never one.)
    fn state_dir(&self, names: &Names) -> PathBuf {
        self.settings
            .work_dir
            .join("state")
            .join(format!("{}_{}", names.namespace, names.name))
    }

    fn resource_dir(&self, names: &Names) -> PathBuf {
        self.settings
            .work_dir
            .join(format!("{}_{}", names.namespace, names.name))
    }

    /// The directory of one resource's Unix sockets: `run/<16 hex digits of the SHA-256 of
    /// namespace/name>` under the work directory, short whatever the names' lengths, as a
    /// socket path may have at most [`MAX_SOCKET_PATH`] bytes.
    fn socket_dir(&self, names: &Names) -> PathBuf {
        use sha2::{Digest as _, Sha256};
        let digest = hex::encode(Sha256::digest(names.key().as_bytes()));
        self.settings
            .work_dir
            .join("run")
            .join(digest.get(..16).unwrap_or(&digest))
    }

    /// The network this operator gives its sidecars: the API publish address, and whether
    /// isolated (an adopted sidecar must have the same).
    fn network(&self) -> (IpAddr, bool) {
        (
            self.settings.api_publish_ip,
            self.settings.network == LocalNetwork::Isolated,
        )
    }

    /// The address the sidecars publish their API ports on, which placing a configuration
    /// measures as its `advertiseAddress` when it is not loopback.
    pub fn api_publish_ip(&self) -> IpAddr {
        self.settings.api_publish_ip
    }

    /// Where the enclave's configuration is placed on this machine: its HTTPS port, data
    /// directory and bind address. With an isolated network the HTTPS port is also the port
    /// the sidecar publishes on [`LocalSettings::api_publish_ip`] (the API server listens on
    /// that port number inside the enclave's namespace), picked free there; with the host's
    /// network the two must differ, so the sidecar gets a port of its own in
    /// [`LocalRuntime::ensure`].
    pub(super) async fn place(
        &self,
        names: &Names,
        mut config: EnclaveConfig,
    ) -> Result<EnclaveConfig> {
        let dir = self.resource_dir(names);
        let local_err = |what: String| move |source| RuntimeError::Local { what, source };
        // Where clients reach this control plane: the measured advertise address (the in-cluster
        // `kubernetes` endpoint) is set from it here.
        let publish = self.settings.api_publish_ip;
        let key = names.key();
        let known = self
            .https_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .copied();
        let port = match known {
            Some(port) => port,
            None => {
                let file = dir.join(HTTPS_PORT_FILE);
                let kept = tokio::fs::read_to_string(&file)
                    .await
                    .ok()
                    .and_then(|text| text.trim().parse::<u16>().ok())
                    .filter(|port| *port != 0);
                let port = match kept {
                    Some(port) => port,
                    None => {
                        let on = match self.settings.network {
                            LocalNetwork::Isolated => publish,
                            LocalNetwork::Host => localhost(),
                        };
                        let port = free_port_on(on)
                            .map_err(local_err(format!("finding a free port on {on}")))?;
                        tokio::fs::create_dir_all(&dir)
                            .await
                            .map_err(local_err(format!("creating {}", dir.display())))?;
                        tokio::fs::write(&file, port.to_string())
                            .await
                            .map_err(local_err(format!("writing {}", file.display())))?;
                        port
                    }
                };
                *self
                    .https_ports
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(key)
                    .or_insert(port)
            }
        };
        config.control_plane.bind_address = "127.0.0.1".into();
        config.control_plane.https_port = port;
        config.control_plane.data_dir = dir.join("data").display().to_string();
        // The published endpoint is the in-cluster `kubernetes` endpoint (same port number as
        // the API server's, see above), so pods on workers reach this control plane. Loopback
        // is reachable by no pod (the API server refuses it as an endpoint), so then the spec's
        // value, usually none, stays.
        if !publish.is_loopback() && !publish.is_unspecified() {
            config.control_plane.advertise_address = Some(publish.to_string());
        }
        Ok(config)
    }

    pub(super) async fn ensure(
        &self,
        nm: &NautilusMaster,
        names: &Names,
        boot: &BootConfig,
        digest_hex: &str,
    ) -> Result<()> {
        let key = names.key();
        let slot = self.slot(&key);
        let mut process = slot.lock().await;
        let local_err = |what: String| move |source| RuntimeError::Local { what, source };
        let dir = self.resource_dir(names);
        let boot_path = dir.join(desired::BOOT_CONFIG_KEY);
        let json = boot_json(boot)?;
        if let Some(p) = process.as_mut() {
            let alive = p.child.exited().is_none();
            if alive && p.digest_hex == digest_hex {
                return Ok(());
            }
            if alive {
                // A new configuration: replace the enclave, as a new pod revision would.
                p.child.terminate().await;
            } else if p.digest_hex == digest_hex && !p.exit_reported {
                // It exited: leave it for observe() to report once; the reconcile that
                // reported it restarts it (as the kubelet restarts a container).
                return Ok(());
            }
            *process = None;
        } else {
            match left_behind(&dir, &boot_path, &json, digest_hex, self.network()).await {
                Some(Left::Adoptable(adopted)) => {
                    tracing::info!(cluster = %key, http = %adopted.http, "adopted the local sidecar a previous operator process started");
                    *process = Some(*adopted);
                    return Ok(());
                }
                Some(Left::Other(record)) => stop_left(&dir, &record).await,
                None => {}
            }
        }
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(local_err(format!("creating {}", dir.display())))?;
        tokio::fs::write(&boot_path, json)
            .await
            .map_err(local_err(format!("writing {}", boot_path.display())))?;
        let socket_dir = self.socket_dir(names);
        let sockets = LocalSockets::in_dir(&socket_dir)?;
        tokio::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&socket_dir)
            .await
            .map_err(local_err(format!("creating {}", socket_dir.display())))?;
        let free = || free_port().map_err(local_err("finding a free port".into()));
        let publish = self.settings.api_publish_ip;
        let ports = LocalPorts {
            http: free()?,
            // Isolated: the API server's own port number, which `place` picked free on the
            // publish address (it is measured as `httpsPort`). Host: the API server holds
            // that port on this network, so the sidecar needs another.
            api: match self.settings.network {
                LocalNetwork::Isolated => boot.config.control_plane.https_port,
                LocalNetwork::Host => free_port_on(publish)
                    .map_err(local_err(format!("finding a free port on {publish}")))?,
            },
            ..match self.settings.network {
                // The enclave's own loopback: the components' usual ports, below the ephemeral
                // range, where the enclave's own outgoing connections take their source ports:
                // one of them held the controller manager's port before it bound it, when ports
                // were picked with bind(0) (CI, "address already in use", the probe answered by
                // another server). The host mode picks free ports below that range too.
                LocalNetwork::Isolated => LocalPorts {
                    webhook: 8443,
                    scheduler: 10259,
                    controller: 10257,
                    etcd_client: 2379,
                    etcd_peer: 2380,
                    ..LocalPorts::default()
                },
                LocalNetwork::Host => LocalPorts {
                    webhook: free()?,
                    scheduler: free()?,
                    controller: free()?,
                    etcd_client: free()?,
                    etcd_peer: free()?,
                    ..LocalPorts::default()
                },
            }
        };
        let log_path = dir.join("sidecar.log");
        let log = tokio::fs::File::create(&log_path)
            .await
            .map_err(local_err(format!("creating {}", log_path.display())))?
            .into_std()
            .await;
        let log_err = log
            .try_clone()
            .map_err(local_err(format!("opening {}", log_path.display())))?;
        let mut cmd = self.command(nm, names, &dir, &boot_path, &sockets, ports)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Its own process group: a terminal's Ctrl-C reaches the operator only, whose
            // shutdown stops the sidecars in order; an operator that is killed leaves them
            // running for the next one to adopt, as pods outlive an operator.
            .process_group(0);
        let child = cmd.spawn().map_err(local_err(format!(
            "starting {}",
            self.settings.sidecar_binary.display()
        )))?;
        // The protocol crate's wall clock (no dependency back on the controller).
        let started_ms = nautilus_protocol::attestation::now_unix_millis().unwrap_or(0);
        let record = child.id().and_then(|pid| {
            Some(SidecarRecord {
                pid,
                start_ticks: ProcessId::of(pid).ok()?.start_ticks,
                http_port: ports.http,
                api_port: ports.api,
                api_ip: publish,
                isolated_network: self.settings.network == LocalNetwork::Isolated,
                digest_hex: digest_hex.to_owned(),
                started_ms,
            })
        });
        match record {
            Some(record) => write_record(&dir, &record)
                .await
                .map_err(local_err(format!(
                    "recording the sidecar in {}",
                    dir.display()
                )))?,
            None => {
                tracing::warn!(cluster = %key, "the local sidecar exited at once; not recorded")
            }
        }
        tracing::info!(
            cluster = %key,
            pid = child.id().unwrap_or(0),
            http = ports.http,
            api = %SocketAddr::new(publish, ports.api),
            network = self.settings.network.name(),
            log = %log_path.display(),
            "started a local sidecar"
        );
        *process = Some(LocalProcess {
            child: Handle::Child(child),
            digest_hex: digest_hex.to_owned(),
            http: SocketAddr::from(([127, 0, 0, 1], ports.http)),
            api: SocketAddr::new(publish, ports.api),
            started_ms,
            exit_reported: false,
        });
        Ok(())
    }

    /// What runs for `names`: its process, else one a previous operator process started for
    /// this very `boot` (same bytes: same configuration and nonce), which is adopted.
    pub(super) async fn observe(&self, names: &Names, boot: &BootConfig) -> Result<Observed> {
        let placement = EnclavePlacement {
            runtime: Some("local".into()),
            ..EnclavePlacement::default()
        };
        let key = names.key();
        let slot = self.slot(&key);
        let mut process = slot.lock().await;
        if process.is_none() {
            let dir = self.resource_dir(names);
            let left = left_behind(
                &dir,
                &dir.join(desired::BOOT_CONFIG_KEY),
                &boot_json(boot)?,
                &boot.config.digest_hex(),
                self.network(),
            )
            .await;
            if let Some(Left::Adoptable(adopted)) = left {
                tracing::info!(cluster = %key, http = %adopted.http, "adopted the local sidecar a previous operator process started");
                *process = Some(*adopted);
            }
        }
        let Some(p) = process.as_mut() else {
            return Ok(Observed {
                state: EnclaveState::Absent,
                sidecar: None,
                placement,
                endpoint: String::new(),
                config_digest: None,
            });
        };
        let endpoint = endpoint_for(p.api.ip(), p.api.port());
        let state = match p.child.exited() {
            None => EnclaveState::SidecarUp {
                started_ms: Some(p.started_ms),
            },
            Some(how) => {
                p.exit_reported = true;
                EnclaveState::Failed(how)
            }
        };
        let sidecar = matches!(state, EnclaveState::SidecarUp { .. }).then_some(p.http);
        Ok(Observed {
            state,
            sidecar,
            placement,
            endpoint,
            config_digest: Some(p.digest_hex.clone()),
        })
    }

    pub(super) async fn stop(&self, nm: &NautilusMaster, names: &Names) -> Result<Stopped> {
        let key = names.key();
        let slot = self.slot(&key);
        let mut process = slot.lock().await;
        let dir = self.resource_dir(names);
        let mut left = Vec::new();
        let ended = match process.take() {
            Some(mut p) => Some((p.child.pid(), p.child.terminate().await)),
            // Deleted while no operator ran: stop what a previous one left.
            None => stop_recorded(&dir, &dir.join(desired::BOOT_CONFIG_KEY)).await,
        };
        // Still under the slot's lock, so no start of this resource comes between.
        self.table().remove(&key);
        if let Some((pid, Ended::Killed)) = ended {
            left.push(format!(
                "the local sidecar (pid {}) did not exit within {} s of SIGTERM and was \
                 killed, so it did not stop its agent in order",
                pid.unwrap_or(0),
                LOCAL_STOP_GRACE.as_secs()
            ));
        }
        // The resource is gone: its work directory (logs, data directory, port) and its
        // sockets go with it.
        self.https_ports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        let mut dirs = vec![
            ("work directory", dir),
            ("socket directory", self.socket_dir(names)),
        ];
        // Sealed snapshots stay unless the spec says they go with the resource.
        if nm
            .spec
            .state
            .as_ref()
            .is_some_and(|s| s.deletion_policy == StateDeletionPolicy::Delete)
        {
            dirs.push(("sealed snapshots", self.state_dir(names)));
        }
        for (what, dir) in dirs {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "cannot remove the {what}");
                    left.push(format!("its {what} {} ({err})", dir.display()));
                }
            }
        }
        Ok(if left.is_empty() {
            Stopped::Gone
        } else {
            Stopped::Incomplete(left.join("; "))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use kube::Client;

    use super::process::same_process;
    use super::record::SIDECAR_STATE_FILE;
    use super::*;
    use crate::fixtures::mk_nm;
    use crate::runtime::EnclaveRuntime;

    fn local(binary: &str) -> LocalRuntime {
        LocalRuntime::new(LocalSettings {
            sidecar_binary: binary.into(),
            agent_binary: "nautilus-agent".into(),
            control_plane_command: "nautilus-standin".into(),
            work_dir: std::env::temp_dir().join(format!("nautilus-op-test-{}", std::process::id())),
            sui_ca_file: Some("/etc/sui-ca.pem".into()),
            kubernetes_bin_dir: Some("/opt/kubernetes/bin".into()),
            etcd_command: None,
            network: LocalNetwork::Isolated,
            api_publish_ip: localhost(),
            kms_ca_file: None,
            simulated_root_key: None,
            aws_credentials_file: None,
        })
    }

    /// Write an executable shell script to `path` (a stand-in for the sidecar binary).
    fn write_script(path: &std::path::Path, text: impl AsRef<[u8]>) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(path, text).expect("script");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn names_of(nm: &NautilusMaster) -> Names {
        Names::of(nm).expect("names")
    }

    fn boot(nm: &NautilusMaster) -> BootConfig {
        BootConfig {
            config: desired::enclave_config(nm).expect("config"),
            nonce: vec![1; 32],
        }
    }

    #[tokio::test]
    async fn local_runtime_starts_observes_and_stops_a_process() {
        // A script that ignores its flags and sleeps stands in for the sidecar.
        let script = std::env::temp_dir().join(format!("fake-sidecar-{}.sh", std::process::id()));
        write_script(&script, "#!/bin/sh\nexec sleep 30\n");
        let rt = local(script.to_str().expect("utf8"));
        let nm = mk_nm("demo");
        let observed = rt
            .observe(&names_of(&nm), &boot(&nm))
            .await
            .expect("observe");
        assert_eq!(observed.state, EnclaveState::Absent);

        rt.ensure(&nm, &names_of(&nm), &boot(&nm), "d1")
            .await
            .expect("ensure");
        let observed = rt
            .observe(&names_of(&nm), &boot(&nm))
            .await
            .expect("observe");
        assert!(matches!(observed.state, EnclaveState::SidecarUp { .. }));
        assert_eq!(observed.placement.runtime.as_deref(), Some("local"));
        assert!(observed.endpoint.starts_with("https://127.0.0.1:"));
        let addr = observed.sidecar.expect("addr");
        assert!(addr.ip().is_loopback());

        // Same digest: the same process.
        rt.ensure(&nm, &names_of(&nm), &boot(&nm), "d1")
            .await
            .expect("ensure");
        assert_eq!(
            rt.observe(&names_of(&nm), &boot(&nm))
                .await
                .expect("o")
                .sidecar,
            Some(addr)
        );

        assert_eq!(
            rt.stop(&nm, &names_of(&nm)).await.expect("stop"),
            Stopped::Gone
        );
        assert_eq!(
            rt.observe(&names_of(&nm), &boot(&nm))
                .await
                .expect("o")
                .state,
            EnclaveState::Absent
        );

        // Operator shutdown stops whatever still runs.
        let rt = EnclaveRuntime::Local(Box::new(rt));
        let client = {
            let (service, _handle) = tower_test::mock::pair::<
                http::Request<kube::client::Body>,
                http::Response<kube::client::Body>,
            >();
            Client::new(service, "default")
        };
        rt.start(&nm, &names_of(&nm), &boot(&nm), "d2")
            .await
            .expect("start");
        assert!(
            rt.observe(&client, None, &nm, &names_of(&nm), &boot(&nm))
                .await
                .expect("o")
                .sidecar
                .is_some()
        );
        rt.shutdown().await;
        assert_eq!(
            rt.observe(&client, None, &nm, &names_of(&nm), &boot(&nm))
                .await
                .expect("o")
                .state,
            EnclaveState::Absent
        );
        let _ = std::fs::remove_file(&script);
    }

    #[tokio::test]
    async fn local_runtime_reports_a_process_that_exited_then_restarts_it() {
        // Exits the first time, runs the second.
        let dir = std::env::temp_dir().join(format!("nautilus-op-exit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mark = dir.join("mark");
        let script = dir.join("sidecar.sh");
        write_script(
            &script,
            format!(
                "#!/bin/sh\nif [ -f {m} ]; then exec sleep 30; fi\ntouch {m}\nexit 3\n",
                m = mark.display()
            ),
        );
        let rt = local(script.to_str().expect("utf8"));
        let nm = mk_nm("demo");
        rt.ensure(&nm, &names_of(&nm), &boot(&nm), "d1")
            .await
            .expect("ensure");
        let mut seen = false;
        for _ in 0..50 {
            if let EnclaveState::Failed(m) = rt
                .observe(&names_of(&nm), &boot(&nm))
                .await
                .expect("o")
                .state
            {
                assert!(m.contains("exited"), "{m}");
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(seen, "the exit was not observed");
        // Reported once, the next ensure restarts it.
        rt.ensure(&nm, &names_of(&nm), &boot(&nm), "d1")
            .await
            .expect("restart");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = rt.observe(&names_of(&nm), &boot(&nm)).await.expect("o");
        assert!(
            matches!(after.state, EnclaveState::SidecarUp { .. }),
            "{after:?}"
        );
        assert_eq!(
            rt.stop(&nm, &names_of(&nm)).await.expect("stop"),
            Stopped::Gone
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sidecar_that_ignores_sigterm_is_killed_and_the_stop_says_so() {
        // A stopped or hung sidecar cannot stop its agent: it is killed after the grace (no
        // real time passes on the paused clock), and the stop is reported incomplete.
        let dir = std::env::temp_dir().join(format!("nautilus-op-hung-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let script = dir.join("sidecar.sh");
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        write_script(
            &script,
            format!(
                "#!/bin/sh\ntrap '' TERM\ntouch {}\nexec sleep 30\n",
                ready.display()
            ),
        );
        let rt = local(script.to_str().expect("utf8"));
        let nm = mk_nm("demo");
        rt.ensure(&nm, &names_of(&nm), &boot(&nm), "d1")
            .await
            .expect("ensure");
        // Real time (the clock is paused): until the script ignores SIGTERM.
        for _ in 0..200 {
            if ready.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        assert!(ready.exists(), "the fake sidecar did not start");
        // Another resource's sidecar, started before and answering while this one is stopped.
        let other = mk_nm("other");
        std::fs::remove_file(&ready).expect("rm ready");
        rt.ensure(&other, &names_of(&other), &boot(&other), "d1")
            .await
            .expect("ensure");
        for _ in 0..200 {
            if ready.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        assert!(ready.exists(), "the other fake sidecar did not start");
        let rt = Arc::new(rt);
        let stopping = tokio::spawn({
            let (rt, nm) = (Arc::clone(&rt), nm.clone());
            async move { rt.stop(&nm, &names_of(&nm)).await }
        });
        // Until the stop holds the resource's slot (it then waits for the grace).
        let slot = rt.slot(&Names::of(&nm).expect("names").key());
        for _ in 0..1000 {
            if slot.try_lock().is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(slot.try_lock().is_err(), "the stop did not start");
        // One lock over every resource made this wait for the whole grace (the paused clock
        // then ran it out and the stop finished first).
        let seen = rt
            .observe(&names_of(&other), &boot(&other))
            .await
            .expect("observe")
            .state;
        assert!(matches!(seen, EnclaveState::SidecarUp { .. }), "{seen:?}");
        assert!(
            !stopping.is_finished(),
            "another resource waited for this one's stop"
        );
        let Stopped::Incomplete(what) = stopping.await.expect("join").expect("stop") else {
            panic!("a killed sidecar is an incomplete stop");
        };
        // The other one ignores SIGTERM too.
        assert!(matches!(
            rt.stop(&other, &names_of(&other))
                .await
                .expect("stop other"),
            Stopped::Incomplete(_)
        ));
        assert!(
            what.contains(&format!(
                "did not exit within {} s of SIGTERM and was killed",
                LOCAL_STOP_GRACE.as_secs()
            )),
            "{what}"
        );
        assert_eq!(
            rt.observe(&names_of(&nm), &boot(&nm))
                .await
                .expect("o")
                .state,
            EnclaveState::Absent
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An operator process that dies (here: its runtime is leaked, so nothing stops its
    /// children) leaves its sidecar running; the next one adopts it while the boot
    /// configuration is the same, stops it for another one, and stops a recorded one when the
    /// resource is deleted. A record whose pid now names another process is ignored.
    #[tokio::test]
    async fn a_restarted_operator_adopts_its_predecessors_sidecar_or_stops_it() {
        let dir = std::env::temp_dir().join(format!("nautilus-op-adopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // The runtimes are leaked on purpose, so if an assertion fails half-way nothing would
        // stop their sidecars: this does, whatever happens.
        let _reaper = nautilus_test_support::Reaper(dir.display().to_string());
        // A shell loop keeps its arguments (`--boot-config=...`) in its command line.
        let script = dir.join("sidecar.sh");
        write_script(&script, "#!/bin/sh\nwhile :; do sleep 1; done\n");
        let settings = |work: &str| LocalSettings {
            work_dir: dir.join(work),
            ..local(script.to_str().expect("utf8")).settings
        };
        let nm = mk_nm("demo");
        let boot1 = boot(&nm);
        let mut boot2 = boot(&nm);
        boot2.nonce = vec![2; 32];
        let pid_of = |rt: &LocalRuntime| {
            let record: SidecarRecord = serde_json::from_slice(
                &std::fs::read(
                    rt.resource_dir(&Names::of(&nm).expect("names"))
                        .join(SIDECAR_STATE_FILE),
                )
                .expect("record"),
            )
            .expect("json");
            record
        };

        let first = LocalRuntime::new(settings("work"));
        first
            .ensure(&nm, &names_of(&nm), &boot1, "d1")
            .await
            .expect("ensure");
        let addr = first
            .observe(&names_of(&nm), &boot(&nm))
            .await
            .expect("o")
            .sidecar
            .expect("up");
        let record = pid_of(&first);
        assert!(same_process(record.pid, record.start_ticks));
        std::mem::forget(first);

        // Same boot configuration: adopted, not restarted.
        let second = LocalRuntime::new(settings("work"));
        second
            .ensure(&nm, &names_of(&nm), &boot1, "d1")
            .await
            .expect("ensure");
        let seen = second.observe(&names_of(&nm), &boot(&nm)).await.expect("o");
        assert_eq!(seen.sidecar, Some(addr), "{seen:?}");
        assert!(
            matches!(seen.state, EnclaveState::SidecarUp { started_ms: Some(ms) } if ms == record.started_ms)
        );
        assert_eq!(pid_of(&second), record, "no second sidecar was started");
        std::mem::forget(second);

        // Another boot configuration (a new nonce): the old one is stopped, a new one started.
        let third = LocalRuntime::new(settings("work"));
        third
            .ensure(&nm, &names_of(&nm), &boot2, "d1")
            .await
            .expect("ensure");
        assert!(
            !same_process(record.pid, record.start_ticks),
            "the old sidecar still runs"
        );
        let replaced = pid_of(&third);
        assert_ne!(replaced.pid, record.pid);
        assert!(same_process(replaced.pid, replaced.start_ticks));
        std::mem::forget(third);

        // Deleted while no operator ran: the next one's stop ends the recorded sidecar.
        let fourth = LocalRuntime::new(settings("work"));
        assert_eq!(
            fourth.stop(&nm, &names_of(&nm)).await.expect("stop"),
            Stopped::Gone
        );
        assert!(
            !same_process(replaced.pid, replaced.start_ticks),
            "the sidecar outlived its resource"
        );

        // A record naming a process that is not this resource's sidecar (here: this test)
        // is neither adopted nor signalled.
        let other = LocalRuntime::new(settings("other"));
        let other_dir = other.resource_dir(&Names::of(&nm).expect("names"));
        std::fs::create_dir_all(&other_dir).expect("dir");
        let me = std::process::id();
        let foreign = SidecarRecord {
            pid: me,
            start_ticks: ProcessId::of(me).expect("own start").start_ticks,
            ..record.clone()
        };
        write_record(&other_dir, &foreign).await.expect("write");
        std::fs::write(other_dir.join(desired::BOOT_CONFIG_KEY), b"{}").expect("boot");
        other
            .ensure(&nm, &names_of(&nm), &boot1, "d1")
            .await
            .expect("ensure");
        assert_ne!(pid_of(&other).pid, me, "a foreign process was adopted");
        assert_eq!(
            other.stop(&nm, &names_of(&nm)).await.expect("stop"),
            Stopped::Gone
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn ports() -> LocalPorts {
        LocalPorts {
            http: 3,
            api: 4,
            webhook: 6,
            scheduler: 7,
            controller: 8,
            etcd_client: 9,
            etcd_peer: 10,
        }
    }

    fn args_of(cmd: &tokio::process::Command) -> Vec<String> {
        cmd.as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn local_command_passes_the_spec_pcrs_unix_sockets_and_separate_ports() {
        let rt = local("nautilus-sidecar");
        let mut nm = mk_nm("demo");
        nm.spec.enclave.pcr8 = Some("88".repeat(48));
        let dir = std::path::Path::new("/tmp/x");
        let sockets = LocalSockets::in_dir(Path::new("/tmp/r")).expect("short");
        let cmd = rt
            .command(
                &nm,
                &names_of(&nm),
                dir,
                &dir.join("boot-config.json"),
                &sockets,
                ports(),
            )
            .expect("cmd");
        let args = args_of(&cmd);
        for expected in [
            "--launcher=process",
            "--isolate-network",
            "--agent-arg=--nsm=simulated",
            "--agent-arg=--listen=unix:/tmp/r/agent.sock",
            "--agent=unix:/tmp/r/agent.sock",
            "--agent-arg=--api-listen=unix:/tmp/r/api.sock",
            "--api-upstream=unix:/tmp/r/api.sock",
            "--http-listen=127.0.0.1:3",
            "--api-listen=127.0.0.1:4",
            "--agent-arg=--webhook-listen=127.0.0.1:6",
            "--agent-arg=--egress-proxy=unix:/tmp/r/egress.sock",
            "--egress-listen=unix:/tmp/r/egress.sock",
            "--agent-arg=--sui-ca-file=/etc/sui-ca.pem",
            "--agent-arg=--control-plane-command=nautilus-standin",
            "--agent-arg=--kubernetes-bin-dir=/opt/kubernetes/bin",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        assert!(
            args.iter()
                .any(|a| a == &format!("--agent-arg=--simulated-pcr=8={}", "88".repeat(48)))
        );
        let envs: Vec<_> = cmd.as_std().get_envs().collect();
        for (name, port) in [
            ("NAUTILUS_CP_SCHEDULER_PORT", "7"),
            ("NAUTILUS_CP_CONTROLLER_MANAGER_PORT", "8"),
            ("NAUTILUS_CP_ETCD_CLIENT_PORT", "9"),
            ("NAUTILUS_CP_ETCD_PEER_PORT", "10"),
        ] {
            assert!(
                envs.iter()
                    .any(|(k, v)| *k == name && v.is_some_and(|v| v.to_string_lossy() == port)),
                "{name}={port} in {envs:?}"
            );
        }
    }

    #[test]
    fn the_host_network_and_another_publish_address_are_on_the_command_line() {
        let mut rt = local("nautilus-sidecar");
        rt.settings.network = LocalNetwork::Host;
        rt.settings.api_publish_ip = "10.213.0.1".parse().expect("ip");
        let nm = mk_nm("demo");
        let dir = Path::new("/tmp/x");
        let sockets = LocalSockets::in_dir(Path::new("/tmp/r")).expect("short");
        let args = args_of(
            &rt.command(
                &nm,
                &names_of(&nm),
                dir,
                &dir.join("boot-config.json"),
                &sockets,
                ports(),
            )
            .expect("cmd"),
        );
        assert!(!args.iter().any(|a| a == "--isolate-network"), "{args:?}");
        assert!(
            args.iter().any(|a| a == "--api-listen=10.213.0.1:4"),
            "{args:?}"
        );
        // The links are Unix sockets in both modes.
        assert!(args.iter().any(|a| a == "--agent=unix:/tmp/r/agent.sock"));
    }

    #[test]
    fn socket_paths_stay_short_or_are_refused() {
        let rt = local("nautilus-sidecar");
        let mut nm = mk_nm("demo");
        nm.metadata.name = Some("n".repeat(200));
        let names = Names::of(&nm).expect("names");
        // A long name does not lengthen the socket paths.
        let dir = rt.socket_dir(&names);
        assert_eq!(
            dir.parent(),
            Some(rt.settings.work_dir.join("run").as_path())
        );
        assert_eq!(dir.file_name().map(|n| n.len()), Some(16));
        LocalSockets::in_dir(&dir).expect("short enough");
        // A work directory too long for any socket is refused, naming the path.
        let long = Path::new("/tmp").join("w".repeat(100));
        let Err(RuntimeError::SocketPath { path, len, max }) = LocalSockets::in_dir(&long) else {
            panic!("a path over 107 bytes was accepted");
        };
        assert!(path.starts_with(&long));
        assert!(len > max && max == 107);
    }

    #[test]
    fn endpoints_name_the_publish_address() {
        assert_eq!(endpoint_for(localhost(), 6443), "https://127.0.0.1:6443");
        assert_eq!(
            endpoint_for("0.0.0.0".parse().expect("ip"), 1),
            "https://127.0.0.1:1"
        );
        assert_eq!(
            endpoint_for("::".parse().expect("ip"), 1),
            "https://[::1]:1"
        );
        assert_eq!(
            endpoint_for("10.213.0.1".parse().expect("ip"), 2),
            "https://10.213.0.1:2"
        );
    }

    #[tokio::test]
    async fn an_isolated_sidecar_publishes_the_measured_https_port() {
        // The fake sidecar records its arguments.
        let dir = std::env::temp_dir().join(format!("nautilus-op-port-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let seen = dir.join("args");
        let script = dir.join("sidecar.sh");
        write_script(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" > {}\nexec sleep 30\n",
                seen.display()
            ),
        );
        let rt = LocalRuntime::new(LocalSettings {
            work_dir: dir.join("work"),
            ..local(script.to_str().expect("utf8")).settings
        });
        let nm = mk_nm("demo");
        let placed = rt
            .place(
                &names_of(&nm),
                desired::enclave_config(&nm).expect("config"),
            )
            .await
            .expect("placed");
        let port = placed.control_plane.https_port;
        // Kept: a second placement (or a restarted operator) gets the same port.
        assert_eq!(
            LocalRuntime::new(rt.settings.clone())
                .place(
                    &names_of(&nm),
                    desired::enclave_config(&nm).expect("config")
                )
                .await
                .expect("placed")
                .control_plane
                .https_port,
            port
        );
        let boot = BootConfig {
            config: placed,
            nonce: vec![1; 32],
        };
        rt.ensure(&nm, &names_of(&nm), &boot, "d1")
            .await
            .expect("ensure");
        let observed = rt.observe(&names_of(&nm), &boot).await.expect("observe");
        assert_eq!(observed.endpoint, format!("https://127.0.0.1:{port}"));
        let mut args = String::new();
        for _ in 0..100 {
            args = std::fs::read_to_string(&seen).unwrap_or_default();
            if !args.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            args.contains(&format!("--api-listen=127.0.0.1:{port} ")),
            "{args}"
        );
        assert!(args.contains("--isolate-network"), "{args}");
        assert_eq!(
            rt.stop(&nm, &names_of(&nm)).await.expect("stop"),
            Stopped::Gone
        );
        assert!(
            !rt.socket_dir(&Names::of(&nm).expect("names")).exists(),
            "the socket directory is left"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
