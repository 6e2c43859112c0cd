//! Runs the control-plane command and keeps it running.
//!
//! The command starts in its own process group with the documented environment; each line it
//! writes to stdout or stderr becomes a `tracing` event carrying the component name. When it
//! exits it is started again after a backoff that doubles from [`SupervisorConfig::initial_backoff`]
//! up to [`SupervisorConfig::max_backoff`], and resets once a run has lasted at least
//! `max_backoff` (a run that long was not a crash loop). [`Supervisor::stop`] sends SIGTERM to
//! the process group, waits [`SupervisorConfig::stop_grace`], then SIGKILLs it; the child is
//! also killed if the supervisor is dropped (`kill_on_drop`).
//!
//! A SIGKILLed agent runs no destructor, so two more things tie the control plane to it
//! (`nautilus_lifetime`): the command is started through [`SupervisorConfig::tether`], which
//! gives it a parent-death signal (the kernel SIGKILLs it when the agent dies), and its pid and
//! start time are written to [`SupervisorConfig::records`], which the next agent on the same
//! work directory reaps before it boots. The child is spawned from the supervisor's task, on a
//! tokio worker thread, which lives as long as the agent: the parent-death signal follows the
//! forking *thread*, so a supervisor must never spawn from `spawn_blocking`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nautilus_lifetime::{ProcessId, ProcessRecords, Tether};
use nautilus_protocol::wire::ProcessState;
use tokio::io::AsyncRead;
use tokio::process::Child;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

/// How to run the control plane.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Name in logs (`control-plane`).
    pub name: String,
    /// The program.
    pub command: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables added to the agent's own.
    pub env: Vec<(String, String)>,
    /// First restart delay.
    pub initial_backoff: Duration,
    /// Longest restart delay.
    pub max_backoff: Duration,
    /// Time between SIGTERM and SIGKILL on stop.
    pub stop_grace: Duration,
    /// How the command is tied to the agent (default [`Tether::this_binary`]: a parent-death
    /// signal in the agent binary, a process group only where the binary cannot re-exec
    /// itself, as in unit tests).
    pub tether: Tether,
    /// Where the running command's pid and start time are recorded as [`Self::name`], for a
    /// restarted agent to reap (`None`: not recorded).
    pub records: Option<ProcessRecords>,
}

impl SupervisorConfig {
    /// `command args…` with the default backoff (1 s doubling to 30 s) and a 10 s stop grace.
    pub fn new(command: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Self {
            name: "control-plane".into(),
            command: command.into(),
            args,
            env: Vec::new(),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            stop_grace: nautilus_protocol::constants::stop::COMPONENT,
            tether: Tether::this_binary(),
            records: None,
        }
    }
}

/// A running supervisor.
#[derive(Debug)]
pub struct Supervisor {
    state: watch::Receiver<ProcessState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Longest output line logged as one event; longer ones are split.
const MAX_LINE: usize = 16 * 1024;

/// Log every line of `reader` as an event. Bytes that are not UTF-8 are replaced rather than
/// ending the forwarding: a stream nobody reads fills its pipe and stalls (or, once closed,
/// kills) the component writing to it.
fn forward_lines<R: AsyncRead + Unpin + Send + 'static>(
    name: String,
    stream: &'static str,
    mut reader: R,
) {
    use tokio::io::AsyncReadExt as _;
    tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 8 * 1024];
        loop {
            let n = match reader.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    warn!(component = %name, stream, error = %e, "cannot read output");
                    break;
                }
            };
            pending.extend_from_slice(&chunk[..n]);
            while let Some(end) = pending
                .iter()
                .position(|b| *b == b'\n')
                .or_else(|| (pending.len() >= MAX_LINE).then_some(MAX_LINE))
            {
                let line: Vec<u8> = pending.drain(..end.min(pending.len())).collect();
                if pending.first() == Some(&b'\n') {
                    pending.remove(0);
                }
                let text = String::from_utf8_lossy(&line);
                info!(component = %name, stream, "{}", text.trim_end_matches('\r'));
            }
        }
        if !pending.is_empty() {
            info!(component = %name, stream, "{}", String::from_utf8_lossy(&pending));
        }
    });
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status: {code}"),
        (None, Some(signal)) => format!("signal: {signal}"),
        _ => status.to_string(),
    }
}

/// SIGTERM the child's process group (it leads one: `process_group(0)`), wait `grace`, then
/// SIGKILL it.
async fn terminate(child: &mut Child, grace: Duration) {
    let _ = nautilus_lifetime::terminate_child(child, nautilus_lifetime::Reach::Group, grace).await;
}

impl Supervisor {
    /// Start the command now and supervise it until [`Supervisor::stop`].
    pub fn start(config: SupervisorConfig) -> Self {
        let (state_tx, state) = watch::channel(ProcessState::default());
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(config, state_tx, stop_rx));
        Self {
            state,
            stop: Some(stop),
            task,
        }
    }

    /// The process state, updated on every start and exit.
    pub fn state(&self) -> watch::Receiver<ProcessState> {
        self.state.clone()
    }

    /// Terminate the process (SIGTERM, then SIGKILL after the grace) and stop restarting it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Dropping the task drops the child, which kill_on_drop kills.
        self.task.abort();
    }
}

/// Record the started child for a restarted agent to reap; a failure is logged, not fatal
/// (the parent-death signal still holds).
fn record(config: &SupervisorConfig, pid: Option<u32>) -> Option<ProcessId> {
    let (records, pid) = (config.records.as_ref()?, pid?);
    records
        .record(&config.name, pid)
        .inspect_err(
            |e| warn!(component = %config.name, pid, error = %e, "cannot record the process"),
        )
        .ok()
}

fn forget(config: &SupervisorConfig, recorded: Option<ProcessId>) {
    if let (Some(records), Some(id)) = (config.records.as_ref(), recorded) {
        records.forget(&config.name, id);
    }
}

async fn run(
    config: SupervisorConfig,
    state_tx: watch::Sender<ProcessState>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = config.initial_backoff;
    let mut restarts: u32 = 0;
    loop {
        let began = Instant::now();
        let spawned = config
            .tether
            .command(&config.command)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string()))
            .and_then(|mut command| {
                command
                    .args(&config.args)
                    .envs(config.env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            });
        match spawned {
            Err(e) => {
                warn!(component = %config.name, command = %config.command.display(), error = %e, "cannot start the control plane");
                state_tx.send_modify(|s| {
                    s.running = false;
                    s.pid = None;
                    s.restarts = restarts;
                    s.last_exit = Some(format!("spawn failed: {e}"));
                });
            }
            Ok(mut child) => {
                let pid = child.id();
                info!(component = %config.name, pid, restarts, tethered = config.tether.is_tethered(), "control plane started");
                let recorded = record(&config, pid);
                if let Some(out) = child.stdout.take() {
                    forward_lines(config.name.clone(), "stdout", out);
                }
                if let Some(err) = child.stderr.take() {
                    forward_lines(config.name.clone(), "stderr", err);
                }
                state_tx.send_modify(|s| {
                    s.running = true;
                    s.pid = pid;
                    s.restarts = restarts;
                    s.started_unix_ms = Some(unix_ms());
                });
                tokio::select! {
                    status = child.wait() => {
                        let exit = match status {
                            Ok(status) => describe_exit(status),
                            Err(e) => format!("wait failed: {e}"),
                        };
                        warn!(component = %config.name, pid, exit = %exit, "control plane exited");
                        forget(&config, recorded);
                        state_tx.send_modify(|s| {
                            s.running = false;
                            s.pid = None;
                            s.last_exit = Some(exit);
                        });
                    }
                    _ = &mut stop => {
                        info!(component = %config.name, pid, "stopping the control plane");
                        terminate(&mut child, config.stop_grace).await;
                        forget(&config, recorded);
                        state_tx.send_modify(|s| {
                            s.running = false;
                            s.pid = None;
                            s.last_exit = Some("stopped".into());
                        });
                        return;
                    }
                }
                if began.elapsed() >= config.max_backoff {
                    backoff = config.initial_backoff;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(config.max_backoff);
        restarts = restarts.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn wait_for(
        rx: &mut watch::Receiver<ProcessState>,
        what: &str,
        f: impl Fn(&ProcessState) -> bool,
    ) -> ProcessState {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| f(s)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("supervisor alive")
            .clone()
    }

    fn fast(command: &str, args: &[&str]) -> SupervisorConfig {
        let mut config =
            SupervisorConfig::new(command, args.iter().map(|s| (*s).to_owned()).collect());
        config.initial_backoff = Duration::from_millis(50);
        config.max_backoff = Duration::from_millis(200);
        config.stop_grace = Duration::from_secs(2);
        config
    }

    #[tokio::test]
    async fn restarts_a_crashing_command_with_backoff() {
        let sup = Supervisor::start(fast("sh", &["-c", "exit 3"]));
        let mut rx = sup.state();
        let state = wait_for(&mut rx, "two restarts", |s| s.restarts >= 2 && !s.running).await;
        assert_eq!(state.last_exit.as_deref(), Some("exit status: 3"));
        sup.stop().await;
    }

    #[tokio::test]
    async fn a_killed_process_is_reported_and_restarted() {
        let mut config = fast("sh", &["-c", "echo up; exec sleep 30"]);
        config.env.push(("NAUTILUS_TEST".into(), "1".into()));
        let sup = Supervisor::start(config);
        let mut rx = sup.state();
        let first = wait_for(&mut rx, "running", |s| s.running).await;
        let pid = first.pid.expect("pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        let exited = wait_for(&mut rx, "exit", |s| !s.running).await;
        assert_eq!(exited.last_exit.as_deref(), Some("signal: 9"));
        let again = wait_for(&mut rx, "restart", |s| s.running && s.restarts == 1).await;
        assert_ne!(again.pid, Some(pid));
        sup.stop().await;
        // The stopped process is gone (kill(pid, 0) fails).
        let pid = again.pid.expect("pid");
        assert!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err(),
            "process {pid} must be gone"
        );
    }

    #[tokio::test]
    async fn output_that_is_not_utf8_keeps_being_read() {
        // 200 KiB after a byte that is not UTF-8: more than a pipe holds, so the command ends
        // by itself only if its output is still read (else it blocks or dies of SIGPIPE).
        let script = r#"printf '\377\n' >&2; i=0; while [ $i -lt 2000 ]; do echo "line $i: ..................................................................................................." >&2; i=$((i+1)); done; exit 7"#;
        let sup = Supervisor::start(fast("sh", &["-c", script]));
        let mut rx = sup.state();
        let state = wait_for(&mut rx, "exit", |s| s.last_exit.is_some()).await;
        assert_eq!(state.last_exit.as_deref(), Some("exit status: 7"));
        sup.stop().await;
    }

    #[tokio::test]
    async fn a_missing_command_is_reported() {
        let sup = Supervisor::start(fast("/nonexistent/k3s", &[]));
        let mut rx = sup.state();
        let state = wait_for(&mut rx, "spawn failure", |s| s.last_exit.is_some()).await;
        assert!(!state.running);
        assert!(state.last_exit.expect("exit").contains("spawn failed"));
        sup.stop().await;
    }
}
