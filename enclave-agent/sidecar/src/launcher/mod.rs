//! Starting, watching and stopping the enclave.
//!
//! A [`Launcher`] starts the enclave once, reports its state when asked, and stops it on
//! shutdown. [`NitroLauncher`] drives `nitro-cli` (run-enclave, describe-enclaves,
//! terminate-enclave); [`ProcessLauncher`] runs the agent as a child process for development.
//! What a launcher reports is host-side information ([`EnclaveInfo`]): shown in `/report`,
//! never trusted.

mod nitro;
mod process;

use futures::future::BoxFuture;
pub use nautilus_protocol::wire::EnclaveInfo;

pub use nitro::{
    MAX_ENCLAVE_NAME, NitroConfig, NitroLauncher, RunEnclaveOutput, check_enclave_name,
    enclave_name_for,
};
pub use process::ProcessLauncher;

/// Why the enclave could not be started, watched or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A command could not be run at all.
    #[error("cannot run {command}")]
    Spawn {
        /// The program.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran but failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line, shortened.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// A command took longer than allowed.
    #[error("{command} did not finish within {seconds} s")]
    Timeout {
        /// The command line, shortened.
        command: String,
        /// The limit.
        seconds: u64,
    },
    /// A command's output is not what it documents.
    #[error("cannot parse the output of {command}: {reason}")]
    Output {
        /// The command line, shortened.
        command: String,
        /// What is wrong.
        reason: String,
    },
    /// `start` was called twice, or `status`/`stop` before `start`.
    #[error("launcher is {0}")]
    State(&'static str),
    /// A previous sidecar's agent or enclave could not be stopped, or this one recorded.
    #[error("cleaning up after a previous sidecar")]
    Lifetime(#[source] nautilus_lifetime::LifetimeError),
    /// The agent was to run in a network namespace of its own, and none can be made here (not
    /// root, or no helper binary). Never a reason to run it in the host's network instead.
    #[error("cannot run the agent in a network namespace of its own")]
    Isolation(#[source] nautilus_lifetime::LifetimeError),
    /// Sending a signal failed.
    #[error("cannot signal process {pid}")]
    Signal {
        /// The process.
        pid: u32,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Starts, watches and stops one enclave. Object safe, so the sidecar holds a
/// `Box<dyn Launcher>` whichever kind runs.
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// Start the enclave and report where it runs. Called once.
    fn start(&self) -> BoxFuture<'_, Result<EnclaveInfo, LaunchError>>;
    /// The enclave's current state (`running: false` with `last_exit` once it ended).
    fn status(&self) -> BoxFuture<'_, Result<EnclaveInfo, LaunchError>>;
    /// Stop the enclave. Stopping one that already ended is not an error.
    fn stop(&self) -> BoxFuture<'_, Result<(), LaunchError>>;
}

/// The last `max` bytes of a command's output, as lossy text, for error messages.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
}
