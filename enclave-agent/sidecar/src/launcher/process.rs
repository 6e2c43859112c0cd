//! Development: the agent as a child process.
//!
//! The child gets its own process group, so stopping it also stops what it started (the
//! control plane): SIGTERM to the group, then SIGKILL after a grace period. Its standard
//! output and error are the sidecar's.
//!
//! A SIGKILLed sidecar cannot stop it, so (`nautilus_lifetime`) the agent is started through
//! the sidecar's [`Tether`] (a parent-death signal: the kernel kills the agent with the
//! sidecar, and the agent's own tether then kills its control plane), and its pid and start
//! time are recorded in the state directory as `agent`; [`Launcher::start`] first kills an
//! agent a previous sidecar recorded there that still runs. `start` is called from a tokio
//! worker thread (never `spawn_blocking`), which lives as long as the sidecar: the
//! parent-death signal follows the forking thread.
//!
//! With [`ProcessLauncher::with_isolated_network`] (the sidecar's `--isolate-network`) the agent
//! runs in a network namespace of its own, empty but for its loopback, as a Nitro enclave has
//! no network: the tether's helper makes it between fork and exec, after arming the parent-death
//! signal ([`nautilus_lifetime::netns`]), so the agent's pid, process group and tether are
//! unchanged, and everything the agent starts inherits the namespace. It is reachable only
//! through the Unix sockets given to it (the control link, the API port, the egress proxy).
//! No name pins the namespace: it ends with the last process in it. `start` first checks that
//! the machine can make one and fails with that one reason if not; it never falls back to the
//! host's network.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use nautilus_lifetime::{ProcessId, ProcessRecords, Tether};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Child;
use tracing::{info, warn};

use super::{EnclaveInfo, LaunchError, Launcher};

/// How long the agent may take to exit after SIGTERM (it normally exited already: the
/// sidecar asked it to stop on the link first).
const GRACE: Duration = nautilus_protocol::constants::stop::ENCLAVE;
/// How long a previous sidecar's agent may take to die after SIGKILL.
const REAP_WITHIN: Duration = Duration::from_secs(10);
/// The record's name in the state directory.
const RECORD: &str = "agent";

#[derive(Debug, Default)]
struct Inner {
    child: Option<Child>,
    pid: Option<u32>,
    recorded: Option<ProcessId>,
    started: bool,
    last_exit: Option<String>,
}

/// Runs the agent command as a child process.
#[derive(Debug)]
pub struct ProcessLauncher {
    command: PathBuf,
    args: Vec<String>,
    tether: Tether,
    isolate_network: bool,
    records: Option<ProcessRecords>,
    inner: Mutex<Inner>,
}

impl ProcessLauncher {
    /// A launcher for `command args…`, tied to this process by [`Tether::this_binary`] and
    /// recording nothing; nothing runs until [`Launcher::start`].
    pub fn new(command: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Self {
            command: command.into(),
            args,
            tether: Tether::this_binary(),
            isolate_network: false,
            records: None,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Start the agent through `tether` instead.
    pub fn with_tether(mut self, tether: Tether) -> Self {
        self.tether = tether;
        self
    }

    /// Run the agent in a network namespace of its own, loopback only (see the module
    /// documentation). Needs a tethered launcher: [`Launcher::start`] fails otherwise.
    pub fn with_isolated_network(mut self) -> Self {
        self.isolate_network = true;
        self
    }

    /// Record the agent in `dir` (and reap a previous sidecar's agent from it on start).
    pub fn with_state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.records = Some(ProcessRecords::new(dir));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn info(inner: &Inner, running: bool) -> EnclaveInfo {
        EnclaveInfo {
            launcher: "process".to_owned(),
            enclave_id: inner.pid.map(|pid| pid.to_string()),
            enclave_cid: None,
            running,
            last_exit: inner.last_exit.clone(),
        }
    }

    async fn start_inner(&self) -> Result<EnclaveInfo, LaunchError> {
        if self.lock().started {
            return Err(LaunchError::State("already started"));
        }
        let tether = if self.isolate_network {
            let tether = self.tether.clone().with_new_network();
            tether
                .probe_new_network()
                .await
                .map_err(LaunchError::Isolation)?;
            tether
        } else {
            self.tether.clone()
        };
        if let Some(records) = &self.records {
            for reaped in records
                .reap(REAP_WITHIN)
                .await
                .map_err(LaunchError::Lifetime)?
            {
                warn!(pid = reaped.id.pid, dir = %records.dir().display(), "killed the agent a previous sidecar left");
            }
        }
        let mut inner = self.lock();
        if inner.started {
            return Err(LaunchError::State("already started"));
        }
        let spawn_error = |source| LaunchError::Spawn {
            command: self.command.display().to_string(),
            source,
        };
        let child = tether
            .command(&self.command)
            .map_err(|e| match e {
                nautilus_lifetime::LifetimeError::Isolation { .. } => LaunchError::Isolation(e),
                e => spawn_error(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    e.to_string(),
                )),
            })?
            .args(&self.args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(spawn_error)?;
        inner.pid = child.id();
        inner.child = Some(child);
        inner.started = true;
        if let (Some(records), Some(pid)) = (&self.records, inner.pid) {
            match records.record(RECORD, pid) {
                Ok(id) => inner.recorded = Some(id),
                Err(e) => warn!(pid, error = %e, "cannot record the agent process"),
            }
        }
        info!(command = %self.command.display(), pid = ?inner.pid, tethered = tether.is_tethered(), isolated_network = tether.isolates_network(), "agent process started");
        Ok(Self::info(&inner, true))
    }

    fn forget(&self) {
        let recorded = self.lock().recorded.take();
        if let (Some(records), Some(id)) = (&self.records, recorded) {
            records.forget(RECORD, id);
        }
    }

    fn status_inner(&self) -> Result<EnclaveInfo, LaunchError> {
        let mut inner = self.lock();
        if !inner.started {
            return Err(LaunchError::State("not started"));
        }
        let exited = match inner.child.as_mut() {
            None => true,
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => {
                    inner.last_exit = Some(status.to_string());
                    inner.child = None;
                    if let (Some(records), Some(id)) = (&self.records, inner.recorded.take()) {
                        records.forget(RECORD, id);
                    }
                    true
                }
                Ok(None) => false,
                Err(e) => {
                    warn!(error = %e, "cannot poll the agent process");
                    false
                }
            },
        };
        Ok(Self::info(&inner, !exited))
    }

    async fn stop_inner(&self) -> Result<(), LaunchError> {
        let (child, pid) = {
            let mut inner = self.lock();
            (inner.child.take(), inner.pid)
        };
        let (Some(mut child), Some(pid)) = (child, pid) else {
            return Ok(());
        };
        let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        // The group may hold the control plane too.
        let (status, _) =
            nautilus_lifetime::terminate_child(&mut child, nautilus_lifetime::Reach::Group, GRACE)
                .await
                .map_err(|source| LaunchError::Signal { pid, source })?;
        // Whatever the agent left in its group goes with it.
        let _ = killpg(group, Signal::SIGKILL);
        self.forget();
        info!(pid, %status, "agent process stopped");
        self.lock().last_exit = Some(status.to_string());
        Ok(())
    }
}

impl Launcher for ProcessLauncher {
    fn start(&self) -> BoxFuture<'_, Result<EnclaveInfo, LaunchError>> {
        self.start_inner().boxed()
    }

    fn status(&self) -> BoxFuture<'_, Result<EnclaveInfo, LaunchError>> {
        let result = self.status_inner();
        async move { result }.boxed()
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), LaunchError>> {
        self.stop_inner().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_runs_reports_its_exit_and_stops() {
        let launcher = ProcessLauncher::new("sleep", vec!["30".to_owned()]);
        let info = launcher.start().await.expect("starts");
        assert!(info.running);
        assert!(info.enclave_id.is_some());
        assert!(launcher.start().await.is_err(), "second start refused");
        assert!(launcher.status().await.expect("status").running);
        launcher.stop().await.expect("stops");
        let after = launcher.status().await.expect("status");
        assert!(!after.running);
        assert!(
            after
                .last_exit
                .as_deref()
                .is_some_and(|e| e.contains("signal")),
            "{after:?}"
        );
        launcher.stop().await.expect("stopping twice is fine");
    }

    #[tokio::test]
    async fn an_exit_is_seen_by_status() {
        let launcher = ProcessLauncher::new("sh", vec!["-c".to_owned(), "exit 3".to_owned()]);
        launcher.start().await.expect("starts");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info = launcher.status().await.expect("status");
            if !info.running {
                assert_eq!(info.last_exit.as_deref(), Some("exit status: 3"));
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never exited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_agent_a_previous_sidecar_left_is_killed_before_the_new_one_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut left = tokio::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("sleep");
        let left_pid = left.id().expect("pid");
        ProcessRecords::new(dir.path())
            .record(RECORD, left_pid)
            .expect("recorded");
        let launcher =
            ProcessLauncher::new("sleep", vec!["30".to_owned()]).with_state_dir(dir.path());
        let info = launcher.start().await.expect("starts");
        let status = left
            .try_wait()
            .expect("poll")
            .expect("the leftover is dead");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        let new_pid: u32 = info.enclave_id.expect("pid").parse().expect("number");
        let record = std::fs::read_to_string(dir.path().join("agent.pid")).expect("record");
        assert!(record.starts_with(&format!("{new_pid} ")), "{record}");
        launcher.stop().await.expect("stops");
        assert!(
            !dir.path().join("agent.pid").exists(),
            "a stopped agent is forgotten"
        );
    }

    #[tokio::test]
    async fn a_missing_command_is_a_spawn_error() {
        let launcher = ProcessLauncher::new("/nonexistent/nautilus-agent", Vec::new());
        assert!(matches!(
            launcher.start().await,
            Err(LaunchError::Spawn { .. })
        ));
    }
}
