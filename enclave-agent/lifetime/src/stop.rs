//! The one stop policy: SIGTERM, wait a grace period, then SIGKILL; and the one wait for the
//! signals that end a service.
//!
//! A process asked to stop gets SIGTERM so that it can stop what it runs in order (the sidecar
//! its agent, the agent its control plane), and SIGKILL once the grace is over, so that a hung
//! or stopped process cannot hold a stop up for ever. [`terminate_child`] stops a child of this
//! process (reaping it), [`terminate_process`] one a previous run left, known only by its
//! [`ProcessId`] (checked before each signal, so a pid the kernel gave to another process is
//! never signalled). Both say whether the grace sufficed ([`Ended`]); the callers choose the
//! grace and say what a kill means for them.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::ProcessId;

/// Whom the signals reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The process alone (it stops its own children on SIGTERM).
    Process,
    /// The process group the child leads (`process_group(0)`): the child and what it started.
    Group,
}

/// How a stop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited within the grace (on SIGTERM, or before).
    Exited,
    /// It ignored SIGTERM for the whole grace and was killed: it did not stop in order.
    Killed,
}

fn signal(pid: u32, reach: Reach, signal: Signal) -> nix::Result<()> {
    let pid = Pid::from_raw(i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?);
    match reach {
        Reach::Process => kill(pid, signal),
        Reach::Group => killpg(pid, signal),
    }
}

/// Stop `child`: SIGTERM (to its group with [`Reach::Group`]), wait up to `grace` for it to
/// exit, else SIGKILL and wait. Its exit status, and whether it had to be killed. A child that
/// already exited is only reaped.
pub async fn terminate_child(
    child: &mut tokio::process::Child,
    reach: Reach,
    grace: Duration,
) -> std::io::Result<(ExitStatus, Ended)> {
    let Some(pid) = child.id() else {
        return Ok((child.wait().await?, Ended::Exited));
    };
    if let Err(errno) = signal(pid, reach, Signal::SIGTERM) {
        tracing::warn!(pid, ?reach, error = %errno, "cannot send SIGTERM");
    }
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return Ok((status?, Ended::Exited));
    }
    tracing::warn!(
        pid,
        ?reach,
        grace_ms = grace.as_millis(),
        "did not exit after SIGTERM; killing it"
    );
    let _ = signal(pid, reach, Signal::SIGKILL);
    child.start_kill().or_else(|err| match child.try_wait() {
        Ok(Some(_)) => Ok(()),
        _ => Err(err),
    })?;
    Ok((child.wait().await?, Ended::Killed))
}

/// How often [`terminate_process`] looks whether the process ended.
const POLL: Duration = Duration::from_millis(50);

/// Stop `id`, a process this one did not start (so it cannot be waited for): SIGTERM to the
/// process, then SIGKILL after `grace`; each signal only while it is still that process.
pub async fn terminate_process(id: ProcessId, grace: Duration) -> Ended {
    if !id.is_alive() {
        return Ended::Exited;
    }
    if let Err(errno) = signal(id.pid, Reach::Process, Signal::SIGTERM) {
        tracing::warn!(pid = id.pid, error = %errno, "cannot send SIGTERM");
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !id.is_alive() {
            return Ended::Exited;
        }
        tokio::time::sleep(POLL).await;
    }
    if !id.is_alive() {
        return Ended::Exited;
    }
    tracing::warn!(
        pid = id.pid,
        grace_ms = grace.as_millis(),
        "did not exit after SIGTERM; killing it"
    );
    let _ = signal(id.pid, Reach::Process, Signal::SIGKILL);
    Ended::Killed
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C): when a service is asked to end. Where SIGTERM cannot
/// be watched, on Ctrl-C only.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", script]).kill_on_drop(true).process_group(0);
        cmd
    }

    #[tokio::test]
    async fn a_child_that_exits_on_sigterm_is_not_killed() {
        let mut child = sh("trap 'exit 3' TERM; while :; do sleep 0.05; done")
            .spawn()
            .expect("spawn");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, ended) = terminate_child(&mut child, Reach::Process, Duration::from_secs(10))
            .await
            .expect("stop");
        assert_eq!((status.code(), ended), (Some(3), Ended::Exited));
        // Stopping it again only reaps it.
        let (_, again) = terminate_child(&mut child, Reach::Process, Duration::from_secs(10))
            .await
            .expect("again");
        assert_eq!(again, Ended::Exited);
    }

    #[tokio::test]
    async fn a_group_that_ignores_sigterm_is_killed_after_the_grace() {
        // The shell and its sleep both ignore SIGTERM; the group is killed, grandchild too.
        let mut child = sh("trap '' TERM; sleep 30 & echo $!; wait")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut out = child.stdout.take().expect("stdout");
        let mut line = Vec::new();
        {
            use tokio::io::AsyncReadExt as _;
            let mut byte = [0u8; 1];
            while out.read(&mut byte).await.expect("read") == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
        }
        let grandchild: u32 = String::from_utf8(line)
            .expect("utf8")
            .trim()
            .parse()
            .expect("pid");
        let grandchild = ProcessId::of(grandchild).expect("alive");
        let started = std::time::Instant::now();
        let (status, ended) = terminate_child(&mut child, Reach::Group, Duration::from_millis(300))
            .await
            .expect("stop");
        assert_eq!(ended, Ended::Killed);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        for _ in 0..100 {
            if !grandchild.is_alive() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!grandchild.is_alive(), "the group's other member survived");
    }

    #[tokio::test]
    async fn a_process_known_by_id_is_signalled_only_while_it_is_that_process() {
        let mut child = sh("trap '' TERM; while :; do sleep 0.05; done")
            .spawn()
            .expect("spawn");
        let id = ProcessId::of(child.id().expect("pid")).expect("id");
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Another start time: not that process, so nothing is sent.
        let other = ProcessId {
            pid: id.pid,
            start_ticks: id.start_ticks + 1,
        };
        assert_eq!(
            terminate_process(other, Duration::from_millis(100)).await,
            Ended::Exited
        );
        assert!(child.try_wait().expect("poll").is_none(), "signalled");
        assert_eq!(
            terminate_process(id, Duration::from_millis(300)).await,
            Ended::Killed
        );
        let status = child.wait().await.expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }
}
