//! Processes that do not outlive the process that started them.
//!
//! The agent starts its control plane (k3s, or etcd and the Kubernetes components) and the
//! sidecar's process launcher starts the agent. A process group and `kill_on_drop` stop those
//! children only when the parent unwinds; a parent that is SIGKILLed (or crashes, or is
//! OOM-killed) leaves them running, holding their ports and data directories. Two mechanisms
//! close that gap, shared by both binaries:
//!
//! - [`tether`]: every child is started through a hidden mode of the parent's own binary
//!   ([`EXEC_MODE`]) that sets `PR_SET_PDEATHSIG` (SIGKILL) on itself, checks that its parent is
//!   still the one that started it, and then execs the real program. The kernel then kills the
//!   child when its parent dies, however it dies. `unsafe_code` is forbidden, so a `pre_exec`
//!   hook is not available; the re-exec is the safe way to run code in the child between fork
//!   and exec.
//! - [`records`]: the parent writes each child's pid and start time (from `/proc/<pid>/stat`)
//!   into a directory; a restarted parent kills the recorded processes that are still the same
//!   processes (same pid *and* start time, so a reused pid is left alone) before it starts
//!   anything new.
//!
//! Limits (also in `docs/architecture.md`):
//! - **pdeathsig is per thread.** Linux sends the signal when the *thread* that forked the
//!   child exits, not when the process does. Children must therefore be spawned from threads
//!   that live as long as the process: the main thread or a tokio runtime worker (tokio's
//!   `Command::spawn` forks on the calling thread). Never spawn from `spawn_blocking` or
//!   `block_in_place`: blocking-pool threads exit after ten idle seconds, and the child would be
//!   killed with them.
//! - **Only the direct child is tethered.** Its own children (a program that forks helpers)
//!   are not, unless they stay in its process group, which the parent's orderly stop and
//!   [`records`] kill as a whole.
//! - **The signal is cleared by a set-user-ID or set-group-ID exec** (and by file
//!   capabilities); none of the programs started here is one.
//!
//! Layout:
//! - [`tether`]: [`Tether`], [`exec_if_requested`] (called first in each binary's `main`).
//! - [`records`]: [`ProcessRecords`], [`ProcessId`].
//! - [`netns`]: a network namespace of a child's own ([`Tether::with_new_network`]), and
//!   [`netns::probe`] for whether the machine can make one.
//! - [`stop`]: the one stop policy (SIGTERM, a grace, SIGKILL) for children
//!   ([`terminate_child`]) and for processes a previous run left ([`terminate_process`]), and
//!   [`shutdown_signal`], the SIGTERM/Ctrl-C wait of every service binary.

pub mod netns;
pub mod ports;
pub mod records;
pub mod stop;
pub mod tether;

pub use records::{ProcessId, ProcessRecords, Reaped, Stat};
pub use stop::{Ended, Reach, shutdown_signal, terminate_child, terminate_process};
pub use tether::{EXEC_MODE, Tether, exec_if_requested};

/// Why a process could not be started, recorded or reaped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifetimeError {
    /// The program to start was not found (the same error `spawn` gives).
    #[error("cannot find the program {program}")]
    NotFound {
        /// The program as given.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/<pid>/stat` could not be read or parsed.
    #[error("cannot read the status of process {pid}: {reason}")]
    Stat {
        /// The process.
        pid: u32,
        /// What went wrong.
        reason: String,
    },
    /// The records directory or a record in it could not be read or written.
    #[error("process record {path}")]
    Record {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A network namespace of its own was asked for a child and cannot be made.
    #[error("cannot isolate the network: {reason}")]
    Isolation {
        /// Why, in one line.
        reason: String,
    },
    /// A recorded process that is still running could not be killed.
    #[error("process {pid} (recorded as {name}) is still running after {millis} ms: {reason}")]
    StillRunning {
        /// The record's name.
        name: String,
        /// The process.
        pid: u32,
        /// How long it was given.
        millis: u128,
        /// The last error, if a signal failed.
        reason: String,
    },
}

/// This crate's result type.
pub type Result<T, E = LifetimeError> = std::result::Result<T, E>;
