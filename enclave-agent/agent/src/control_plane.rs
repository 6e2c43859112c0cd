//! The running control plane, whichever distribution: one supervised `k3s server` (or a
//! stand-in), or the `kubernetes` distribution's four supervised processes started in order.
//!
//! Either way the reporter sees one [`ProcessState`]. For the `kubernetes` distribution it is
//! the aggregate of the four processes ([`aggregate`]): running only while all four run; the
//! pid is kube-apiserver's; restarts are summed; the start time is the earliest current start
//! (so a component that crash-loops from the beginning still runs into the startup timeout,
//! while one restarted after the control plane was healthy does not reopen it); the last exit
//! names its component (`kube-scheduler: signal: 9`).

use std::sync::Arc;

use nautilus_protocol::wire::ProcessState;
use tokio::sync::{Mutex, Notify, watch};
use tracing::{Instrument as _, info, info_span};

use crate::kubernetes::{self, Binaries, Readiness};
use crate::supervisor::{Supervisor, SupervisorConfig};

/// Component names, in start order.
pub const ETCD: &str = "etcd";
/// kube-apiserver.
pub const KUBE_APISERVER: &str = "kube-apiserver";
/// kube-scheduler.
pub const KUBE_SCHEDULER: &str = "kube-scheduler";
/// kube-controller-manager.
pub const KUBE_CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// How to start the `kubernetes` distribution's processes.
#[derive(Debug, Clone)]
pub struct KubernetesPlan {
    /// The programs.
    pub binaries: Binaries,
    /// etcd's arguments.
    pub etcd: Vec<String>,
    /// kube-apiserver's arguments.
    pub apiserver: Vec<String>,
    /// kube-scheduler's arguments.
    pub scheduler: Vec<String>,
    /// kube-controller-manager's arguments.
    pub controller_manager: Vec<String>,
    /// Each component's environment ([`crate::flags::Tuning`]: the Go runtime's limits).
    pub env: ComponentEnv,
    /// What is checked between the steps.
    pub readiness: Readiness,
    /// The supervisors' restart delay and grace, as for the `k3s` distribution.
    pub template: SupervisorConfig,
}

/// Environment variables per component of the `kubernetes` distribution.
#[derive(Debug, Clone, Default)]
pub struct ComponentEnv {
    /// etcd's.
    pub etcd: crate::flags::Env,
    /// kube-apiserver's.
    pub apiserver: crate::flags::Env,
    /// kube-scheduler's.
    pub scheduler: crate::flags::Env,
    /// kube-controller-manager's.
    pub controller_manager: crate::flags::Env,
}

struct Member {
    name: &'static str,
    supervisor: Supervisor,
}

type Members = Arc<Mutex<Vec<Member>>>;

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    state: watch::Receiver<ProcessState>,
    inner: Inner,
}

enum Inner {
    Single(Supervisor),
    Group {
        members: Members,
        launcher: tokio::task::JoinHandle<()>,
        aggregator: tokio::task::JoinHandle<()>,
    },
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(s) => f.debug_tuple("Single").field(s).finish(),
            Self::Group { .. } => f.debug_struct("Group").finish_non_exhaustive(),
        }
    }
}

/// The aggregate of the named processes' states, `expected` of them in all; `last_exit` is the
/// latest exit seen (already prefixed with its component). See the module documentation.
pub fn aggregate(
    expected: usize,
    members: &[(&str, ProcessState)],
    last_exit: Option<String>,
) -> ProcessState {
    ProcessState {
        running: members.len() == expected && members.iter().all(|(_, s)| s.running),
        pid: members
            .iter()
            .find(|(name, _)| *name == KUBE_APISERVER)
            .and_then(|(_, s)| s.pid),
        restarts: members
            .iter()
            .fold(0u32, |sum, (_, s)| sum.saturating_add(s.restarts)),
        started_unix_ms: members.iter().filter_map(|(_, s)| s.started_unix_ms).min(),
        last_exit,
        startup_timed_out: false,
    }
}

impl ControlPlane {
    /// Run one supervised command (`k3s server …` or a stand-in).
    pub fn single(config: SupervisorConfig) -> Self {
        let supervisor = Supervisor::start(config);
        Self {
            state: supervisor.state(),
            inner: Inner::Single(supervisor),
        }
    }

    /// Start the `kubernetes` distribution: etcd, kube-apiserver once etcd listens, then the scheduler and controller manager once the API server is ready, and the tier
    /// bindings while they start; then approve kubelet serving certificates ([`crate::csr_approver`]) until stopped.
    pub fn kubernetes(plan: KubernetesPlan) -> Self {
        let members: Members = Arc::new(Mutex::new(Vec::new()));
        let added = Arc::new(Notify::new());
        let (state_tx, state) = watch::channel(ProcessState::default());
        let aggregator = tokio::spawn(
            aggregate_loop(Arc::clone(&members), Arc::clone(&added), state_tx)
                .instrument(info_span!("control-plane")),
        );
        let launcher = tokio::spawn(
            launch(plan, Arc::clone(&members), added).instrument(info_span!("control-plane")),
        );
        Self {
            state,
            inner: Inner::Group {
                members,
                launcher,
                aggregator,
            },
        }
    }

    /// The (aggregate) process state.
    pub fn state(&self) -> watch::Receiver<ProcessState> {
        self.state.clone()
    }

    /// Stop everything: the scheduler and controller manager first, then the API server, then
    /// etcd, each SIGTERM then SIGKILL after the grace.
    pub async fn stop(self) {
        match self.inner {
            Inner::Single(supervisor) => supervisor.stop().await,
            Inner::Group {
                members,
                launcher,
                aggregator,
            } => {
                launcher.abort();
                let _ = launcher.await;
                let mut members = std::mem::take(&mut *members.lock().await);
                // Last started, first stopped; the two last ones together.
                let mut tail = Vec::new();
                while members
                    .last()
                    .is_some_and(|m| m.name == KUBE_SCHEDULER || m.name == KUBE_CONTROLLER_MANAGER)
                {
                    tail.extend(members.pop());
                }
                futures::future::join_all(tail.into_iter().map(|m| m.supervisor.stop())).await;
                while let Some(member) = members.pop() {
                    member.supervisor.stop().await;
                }
                aggregator.abort();
            }
        }
    }
}

async fn launch(plan: KubernetesPlan, members: Members, added: Arc<Notify>) {
    let start = |name: &'static str,
                 command: &std::path::Path,
                 args: &[String],
                 env: &crate::flags::Env| {
        let mut config = plan.template.clone();
        config.name = name.into();
        config.command = command.to_path_buf();
        config.args = args.to_vec();
        config.env.extend(env.iter().cloned());
        let members = Arc::clone(&members);
        let added = Arc::clone(&added);
        async move {
            members.lock().await.push(Member {
                name,
                supervisor: Supervisor::start(config),
            });
            added.notify_one();
        }
    };
    let r = &plan.readiness;
    let env = &plan.env;
    // kube-apiserver starts once etcd listens, not once it is healthy: the API server spends
    // its first second or more (on two cores) building its API groups before it dials etcd, and
    // its etcd client retries until etcd answers, so waiting for etcd's health only put etcd's
    // start on the critical path. Not before etcd listens: the API server's many dials of a
    // port nobody has bound yet could each, rarely, connect the socket to itself (its
    // ephemeral port chosen equal to etcd's, as the ports of development and tests are) and
    // hold the port etcd then cannot bind. etcd's health is waited for (and logged) beside.
    start(ETCD, &plan.binaries.etcd, &plan.etcd, &env.etcd).await;
    kubernetes::wait_for("etcd listening", || r.etcd_listening()).await;
    start(
        KUBE_APISERVER,
        &plan.binaries.kube_apiserver,
        &plan.apiserver,
        &env.apiserver,
    )
    .await;
    tokio::join!(
        kubernetes::wait_for("etcd healthy", || r.etcd_healthy()),
        kubernetes::wait_for("kube-apiserver ready", || r.api_ready()),
    );
    // The scheduler and controller manager need the API server's own bootstrap RBAC (which
    // `/readyz` waits for), not the tier groups' bindings: they start at once and the bindings
    // are applied while they start (well before either is healthy, so before Ready).
    start(
        KUBE_SCHEDULER,
        &plan.binaries.kube_scheduler,
        &plan.scheduler,
        &env.scheduler,
    )
    .await;
    start(
        KUBE_CONTROLLER_MANAGER,
        &plan.binaries.kube_controller_manager,
        &plan.controller_manager,
        &env.controller_manager,
    )
    .await;
    kubernetes::wait_for("tier groups bound", || r.apply_rbac()).await;
    info!("all components started");
    // Kubelets joining later get their serving certificates through this approver; it runs
    // until the control plane stops (the launcher task is aborted then).
    crate::csr_approver::Approver::new(plan.readiness.clone())
        .run()
        .await;
}

async fn aggregate_loop(
    members: Members,
    added: Arc<Notify>,
    state_tx: watch::Sender<ProcessState>,
) {
    const EXPECTED: usize = 4;
    let mut last_exits: Vec<Option<String>> = Vec::new();
    let mut last_exit: Option<String> = None;
    loop {
        let mut receivers: Vec<(&'static str, watch::Receiver<ProcessState>)> = members
            .lock()
            .await
            .iter()
            .map(|m| (m.name, m.supervisor.state()))
            .collect();
        let states: Vec<(&str, ProcessState)> = receivers
            .iter_mut()
            .map(|(name, rx)| (*name, rx.borrow_and_update().clone()))
            .collect();
        last_exits.resize(states.len(), None);
        for ((name, state), seen) in states.iter().zip(last_exits.iter_mut()) {
            if state.last_exit.is_some() && state.last_exit != *seen {
                seen.clone_from(&state.last_exit);
                last_exit = state.last_exit.as_ref().map(|e| format!("{name}: {e}"));
            }
        }
        let aggregate = aggregate(EXPECTED, &states, last_exit.clone());
        state_tx.send_if_modified(|current| {
            if *current == aggregate {
                false
            } else {
                *current = aggregate;
                true
            }
        });
        let changes = receivers
            .iter_mut()
            .map(|(_, rx)| Box::pin(rx.changed()))
            .collect::<Vec<_>>();
        if changes.is_empty() {
            added.notified().await;
        } else {
            tokio::select! {
                (result, _, _) = futures::future::select_all(changes) => {
                    if result.is_err() {
                        // A supervisor ended (the control plane is stopping).
                        added.notified().await;
                    }
                }
                () = added.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(pid: u32, started: u64, restarts: u32) -> ProcessState {
        ProcessState {
            running: true,
            pid: Some(pid),
            restarts,
            started_unix_ms: Some(started),
            ..ProcessState::default()
        }
    }

    #[test]
    fn the_aggregate_runs_only_when_all_four_run() {
        let some = [
            (ETCD, running(1, 100, 0)),
            (KUBE_APISERVER, running(2, 200, 0)),
        ];
        let state = aggregate(4, &some, None);
        assert!(!state.running, "two of four");
        assert_eq!(state.pid, Some(2), "the API server's pid");
        assert_eq!(state.started_unix_ms, Some(100));
        let mut all = some.to_vec();
        all.push((KUBE_SCHEDULER, running(3, 300, 2)));
        all.push((KUBE_CONTROLLER_MANAGER, running(4, 300, 1)));
        let state = aggregate(4, &all, Some("kube-scheduler: signal: 9".into()));
        assert!(state.running);
        assert_eq!(state.restarts, 3);
        assert_eq!(
            state.last_exit.as_deref(),
            Some("kube-scheduler: signal: 9")
        );
        all[2].1.running = false;
        all[2].1.pid = None;
        assert!(!aggregate(4, &all, None).running);
    }
}
