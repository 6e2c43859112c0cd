//! Process lifetime with real processes: a SIGKILLed agent or sidecar leaves nothing running,
//! and a restarted agent kills what its predecessor left (`nautilus_lifetime`).
//!
//! The agent runs the stand-in control plane, and, when `$KUBEBUILDER_ASSETS` (default
//! `/usr/local/kubebuilder/bin`) holds them, the real `kubernetes` distribution (etcd,
//! kube-apiserver, kube-scheduler, kube-controller-manager; one `skipped:` line without them,
//! a failure with `NAUTILUS_E2E_REQUIRE=1`). The sidecar test runs the `nautilus-sidecar`
//! binary beside `nautilus-agent` in the target directory (or in `$NAUTILUS_BIN_DIR`): the
//! workspace test run builds it, `cargo build -p nautilus-sidecar` otherwise. Every process a
//! test starts, or finds started under it, is SIGKILLed by pid (and start time) on drop.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nautilus_lifetime::{EXEC_MODE, ProcessId, Stat};
use nautilus_protocol::transport;
use nautilus_protocol::wire::{self, Message};

/// How long the orphans may take to end once their parent is SIGKILLed.
const GONE_WITHIN: Duration = Duration::from_secs(10);

/// The program a process runs: the file name of its command line's first word.
fn program(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = raw.split(|b| *b == 0).next()?;
    Path::new(std::str::from_utf8(first).ok()?)
        .file_name()?
        .to_str()
        .map(str::to_owned)
}

/// Every running descendant of `root`, with its program.
fn descendants(root: u32) -> Vec<(ProcessId, String)> {
    let mut table = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(Some(stat)) = Stat::of(pid)
            && !matches!(stat.state, 'Z' | 'X')
        {
            table.push((pid, stat));
        }
    }
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for (pid, stat) in &table {
            if u32::try_from(stat.ppid).ok() == Some(parent) {
                parents.push(*pid);
                let id = ProcessId {
                    pid: *pid,
                    start_ticks: stat.start_ticks,
                };
                found.push((id, program(*pid).unwrap_or_default()));
            }
        }
    }
    found
}

/// Processes a test owns: each is SIGKILLed on drop if it is still the same process.
struct Owned(Vec<ProcessId>);

impl Drop for Owned {
    fn drop(&mut self) {
        for id in &self.0 {
            if id.is_alive() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(id.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A child process the test started, SIGKILLed and reaped on drop.
struct OwnedChild(std::process::Child);

impl Drop for OwnedChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `sleep 300` in its own process group, as the supervisor starts a component.
fn sleeper() -> OwnedChild {
    use std::os::unix::process::CommandExt as _;
    OwnedChild(
        Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .expect("sleep starts"),
    )
}

/// Wait until `root` has descendants running each of `programs`; returns all its descendants.
async fn wait_for_programs(root: u32, programs: &[&str], within: Duration) -> Vec<ProcessId> {
    let deadline = Instant::now() + within;
    loop {
        let found = descendants(root);
        if programs
            .iter()
            .all(|p| found.iter().any(|(_, program)| program == p))
        {
            return found.into_iter().map(|(id, _)| id).collect();
        }
        assert!(
            Instant::now() < deadline,
            "within {within:?}, {programs:?} did not all run under {root}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until none of `ids` runs; how long that took.
async fn wait_gone(ids: &[ProcessId]) -> Duration {
    let started = Instant::now();
    loop {
        let alive: Vec<(u32, Option<String>)> = ids
            .iter()
            .filter(|id| id.is_alive())
            .map(|id| (id.pid, program(id.pid)))
            .collect();
        if alive.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < GONE_WITHIN,
            "still running {GONE_WITHIN:?} after their parent was SIGKILLed: {alive:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILL `child`, collect its status, and wait until none of `below` runs; prints the
/// figure.
async fn sigkill_and_wait_gone(child: &mut std::process::Child, below: &[ProcessId], what: &str) {
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let took = wait_gone(below).await;
    println!(
        "figure: {what} ({} processes) gone {took:?} after their parent's SIGKILL",
        below.len()
    );
}

/// The record at `path` names one of `ids`.
fn assert_records_one_of(path: &Path, ids: &[ProcessId]) {
    let record = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{} is not recorded: {e}", path.display()));
    assert!(
        ids.iter()
            .any(|id| record == format!("{} {}\n", id.pid, id.start_ticks)),
        "{record} names none of {ids:?}"
    );
}

/// Boot `agent` with `boot` and keep the control link open.
async fn boot(
    agent: &AgentProcess,
    boot: nautilus_protocol::wire::BootConfig,
) -> transport::BoxedStream {
    let mut link = agent.connect().await;
    wire::write_message(&mut link, &Message::BootConfig(Box::new(boot)))
        .await
        .expect("send the boot config");
    link
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_agent_takes_its_control_plane_with_it() {
    let mut agent = AgentProcess::start();
    let _link = boot(&agent, agent.boot_config(b"lifetime nonce 1")).await;
    let agent_pid = agent.child.id();
    let plane = wait_for_programs(agent_pid, &["nautilus-standin"], WAIT).await;
    let _owned = Owned(plane.clone());
    // While it runs, the control plane is recorded for a restarted agent.
    assert_records_one_of(&agent.work_file("processes/control-plane.pid"), &plane);
    sigkill_and_wait_gone(&mut agent.child, &plane, "the stand-in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_agent_takes_the_real_kubernetes_control_plane_with_it() {
    let Some(assets) = kubernetes_assets_or_skip(
        "a_sigkilled_agent_takes_the_real_kubernetes_control_plane_with_it",
    ) else {
        return;
    };
    let mut agent = AgentProcess::start_with(|command, _| {
        command
            .arg("--kubernetes-bin-dir")
            .arg(&assets.bin_dir)
            .arg("--etcd-command")
            .arg(&assets.etcd)
            .env("NAUTILUS_CP_ETCD_CLIENT_PORT", free_port().to_string())
            .env("NAUTILUS_CP_ETCD_PEER_PORT", free_port().to_string());
    });
    let mut config = agent.boot_config(b"lifetime nonce 2");
    config.config.control_plane.distribution = "kubernetes".into();
    let _link = boot(&agent, config).await;
    let agent_pid = agent.child.id();
    let components = [
        "etcd",
        "kube-apiserver",
        "kube-scheduler",
        "kube-controller-manager",
    ];
    let plane = wait_for_programs(agent_pid, &components, Duration::from_secs(120)).await;
    let _owned = Owned(plane.clone());
    let records = nautilus_agent::boot::process_records(&agent.work_dir);
    for component in components {
        assert_records_one_of(&records.dir().join(format!("{component}.pid")), &plane);
    }

    sigkill_and_wait_gone(
        &mut agent.child,
        &plane,
        "etcd and the Kubernetes components",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_kills_the_control_plane_its_predecessor_left() {
    let mut left = sleeper();
    let left_pid = left.0.id();
    // A recorded pid now held by another process (same pid, another start time) must live.
    let mut reused = sleeper();
    let reused_id = ProcessId::of(reused.0.id()).expect("identity");
    let agent = AgentProcess::start_with(|_, work_dir| {
        let records = nautilus_agent::boot::process_records(work_dir);
        records.record("etcd", left_pid).expect("record");
        std::fs::write(
            records.dir().join("kube-apiserver.pid"),
            format!("{} {}\n", reused_id.pid, reused_id.start_ticks + 1),
        )
        .expect("stale record");
    });
    // The agent reaps before it listens.
    let _link = agent.connect().await;
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = left.0.try_wait().expect("poll") {
            break status;
        }
        assert!(Instant::now() < deadline, "the leftover still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(
        reused.0.try_wait().expect("poll").is_none(),
        "a process that merely reuses a recorded pid is not touched"
    );
    let records = nautilus_agent::boot::process_records(&agent.work_dir);
    assert_eq!(
        std::fs::read_dir(records.dir()).expect("dir").count(),
        0,
        "the old records are gone"
    );
}

/// `nautilus-sidecar` from the same build, checked to know the exec mode (a stale binary
/// would test old code).
fn sidecar_binary() -> PathBuf {
    let dir = std::env::var_os("NAUTILUS_BIN_DIR").map_or_else(
        || {
            Path::new(env!("CARGO_BIN_EXE_nautilus-agent"))
                .parent()
                .expect("target dir")
                .to_path_buf()
        },
        PathBuf::from,
    );
    let path = dir.join("nautilus-sidecar");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p nautilus-sidecar` (the workspace test run builds it)",
        path.display()
    );
    let status = Command::new(&path)
        .args([
            EXEC_MODE,
            "--parent",
            &std::process::id().to_string(),
            "--",
            "true",
        ])
        .status()
        .expect("run the sidecar");
    assert!(
        status.success(),
        "{} does not know {EXEC_MODE} ({status}): rebuild it with `cargo build -p nautilus-sidecar`",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_sidecar_takes_its_agent_and_control_plane_with_it() {
    let sidecar = sidecar_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = |name: &str| format!("unix:{}", dir.path().join(name).display());
    let boot_path = dir.path().join("boot-config.json");
    let config = standin_boot_config(&dir.path().join("data"), free_port(), b"lifetime nonce 3");
    std::fs::write(&boot_path, serde_json::to_vec(&config).expect("json")).expect("boot config");
    let mut agent_args = vec![
        "--listen".to_owned(),
        sock("agent.sock"),
        "--api-listen".into(),
        sock("api.sock"),
        "--nsm".into(),
        "simulated".into(),
        "--control-plane-command".into(),
        env!("CARGO_BIN_EXE_nautilus-standin").into(),
        "--work-dir".into(),
        dir.path().join("work").display().to_string(),
        "--webhook-listen".into(),
        "127.0.0.1:0".into(),
        "--egress-proxy".into(),
        "none".into(),
    ];
    for i in 0..3u8 {
        agent_args.push(format!("--simulated-pcr={i}={}", hex::encode(pcr(i))));
    }
    let mut command = Command::new(&sidecar);
    command
        .arg("--boot-config")
        .arg(&boot_path)
        .args(["--launcher", "process", "--agent-command"])
        .arg(env!("CARGO_BIN_EXE_nautilus-agent"))
        .args(agent_args.iter().map(|a| format!("--agent-arg={a}")))
        .arg(format!("--agent={}", sock("agent.sock")))
        .arg(format!("--api-upstream={}", sock("api.sock")))
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
        ])
        .arg(format!("--egress-listen={}", sock("egress.sock")))
        .env("NAUTILUS_CP_SCHEDULER_PORT", free_port().to_string())
        .env(
            "NAUTILUS_CP_CONTROLLER_MANAGER_PORT",
            free_port().to_string(),
        );
    let mut sidecar = OwnedChild(command.spawn().expect("the sidecar starts"));
    let sidecar_pid = sidecar.0.id();
    let below = wait_for_programs(sidecar_pid, &["nautilus-agent", "nautilus-standin"], WAIT).await;
    let _owned = Owned(below.clone());
    // The agent is recorded beside the boot configuration for a restarted sidecar.
    assert_records_one_of(&dir.path().join("agent.pid"), &below);
    sigkill_and_wait_gone(&mut sidecar.0, &below, "the agent and its stand-in").await;
}

#[test]
fn the_exec_mode_refuses_to_run_a_child_whose_parent_is_already_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("ran");
    let run = |parent: u32, program: &str| {
        Command::new(env!("CARGO_BIN_EXE_nautilus-agent"))
            .args([EXEC_MODE, "--parent", &parent.to_string(), "--", program])
            .arg(&marker)
            .output()
            .expect("runs")
    };
    // Started by this test, but told its parent is another: as if the parent died before
    // the parent-death signal was armed.
    let out = run(std::process::id() + 1, "touch");
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is gone"),
        "{out:?}"
    );
    assert!(!marker.exists(), "nothing ran");
    let out = run(std::process::id(), "/nonexistent/k3s");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    let out = run(std::process::id(), "touch");
    assert!(out.status.success(), "{out:?}");
    assert!(marker.exists(), "the program ran");
}
