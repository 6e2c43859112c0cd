//! Children that die with their parent: `PR_SET_PDEATHSIG` set between fork and exec, without
//! `unsafe`.
//!
//! [`Tether::command`] builds `HELPER __exec-with-pdeathsig --parent <our pid> -- PROGRAM ARGS…`,
//! where `HELPER` is a binary whose `main` calls [`exec_if_requested`] first (the agent and the
//! sidecar; by default the running binary itself, as `/proc/self/exe`, which stays valid even
//! if the file was replaced on disk). In that mode the helper:
//! 1. sets its parent-death signal to SIGKILL (`nix::sys::prctl::set_pdeathsig`);
//! 2. checks that `getppid()` is still the pid it was given: if the parent died between fork
//!    and step 1 the signal will never come, so it exits (status 125) instead of running;
//! 3. with `--new-network` ([`Tether::with_new_network`]), moves itself into a network
//!    namespace of its own with only a loopback, up ([`crate::netns`]; status 123 when it
//!    cannot: it never runs the program in the parent's network instead);
//! 4. execs the program (`CommandExt::exec`, which also restores the default SIGPIPE
//!    disposition that Rust programs ignore; status 127 when the exec fails).
//!
//! The parent-death signal survives exec, so the program runs with it: when the parent's
//! forking thread ends (see the crate documentation) the kernel SIGKILLs the program. The pid
//! the parent sees is the program's (exec keeps it), so process groups, `kill_on_drop` and
//! [`crate::records`] work unchanged.
//!
//! A process whose binary never called [`exec_if_requested`] (a test harness embedding the
//! sidecar library, say) has no helper: [`Tether::this_binary`] then gives
//! [`Tether::untethered`], which starts children directly with a process group and
//! `kill_on_drop` only, as before, and says so once in the log.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{LifetimeError, Result};

/// The hidden first argument that selects the exec mode.
pub const EXEC_MODE: &str = "__exec-with-pdeathsig";

/// Exit status when the parent died before the parent-death signal was set.
pub const EXIT_PARENT_GONE: i32 = 125;
/// Exit status when the program could not be executed.
pub const EXIT_CANNOT_EXEC: i32 = 127;
/// Exit status when a network namespace was asked for and could not be made.
pub const EXIT_CANNOT_ISOLATE: i32 = 123;

/// Set once this binary's `main` called [`exec_if_requested`]: only then does it understand
/// the exec mode.
static UNDERSTOOD: AtomicBool = AtomicBool::new(false);
/// The "children are not tethered" warning is logged once per process.
static WARNED: AtomicBool = AtomicBool::new(false);

/// Call first in `main`, before a runtime or any thread starts. When the process was started in
/// the exec mode this never returns (it execs the program or exits); otherwise it marks the
/// binary as a helper for [`Tether::this_binary`] and returns. It also serves
/// [`crate::netns::PROBE_MODE`].
pub fn exec_if_requested() {
    UNDERSTOOD.store(true, Ordering::SeqCst);
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(mode) if mode == OsStr::new(EXEC_MODE) => {}
        Some(mode) if mode == OsStr::new(crate::netns::PROBE_MODE) => crate::netns::probe_mode(),
        _ => return,
    }
    let request = match ExecRequest::parse(args) {
        Ok(request) => request,
        Err(reason) => {
            eprintln!("{EXEC_MODE}: {reason}");
            std::process::exit(EXIT_CANNOT_EXEC);
        }
    };
    std::process::exit(request.exec());
}

/// What the exec mode was asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The pid of the process that started us.
    pub parent: i32,
    /// Run the program in a network namespace of its own (`--new-network`).
    pub new_network: bool,
    /// The program.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
}

impl ExecRequest {
    /// Parse the arguments after [`EXEC_MODE`]: `--parent PID [--new-network] -- PROGRAM
    /// ARGS…`.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, String> {
        let mut args = args.into_iter();
        if args.next().as_deref() != Some(OsStr::new("--parent")) {
            return Err("expected --parent PID -- PROGRAM [ARGS...]".into());
        }
        let parent = args
            .next()
            .and_then(|pid| pid.to_str().and_then(|pid| pid.parse::<i32>().ok()))
            .filter(|pid| *pid > 1)
            .ok_or("--parent needs a pid above 1")?;
        let mut next = args.next();
        let new_network = next.as_deref() == Some(OsStr::new(NEW_NETWORK));
        if new_network {
            next = args.next();
        }
        if next.as_deref() != Some(OsStr::new("--")) {
            return Err("expected -- before the program".into());
        }
        let program = args.next().ok_or("no program after --")?;
        Ok(Self {
            parent,
            new_network,
            program,
            args: args.collect(),
        })
    }

    /// Set the parent-death signal, check the parent, exec. Returns the exit status only when
    /// the program could not be run.
    fn exec(self) -> i32 {
        use nix::sys::signal::Signal;
        if let Err(errno) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
            eprintln!("{EXEC_MODE}: cannot set the parent-death signal: {errno}");
            return EXIT_CANNOT_EXEC;
        }
        let parent = nix::unistd::getppid().as_raw();
        if parent != self.parent {
            // The parent died before the signal was armed: nobody would stop us.
            eprintln!(
                "{EXEC_MODE}: parent {} is gone (now {parent}); not starting {}",
                self.parent,
                Path::new(&self.program).display()
            );
            return EXIT_PARENT_GONE;
        }
        if self.new_network
            && let Err(reason) = crate::netns::isolate()
        {
            eprintln!(
                "{EXEC_MODE}: not starting {}: {reason}",
                Path::new(&self.program).display()
            );
            return EXIT_CANNOT_ISOLATE;
        }
        let error = std::process::Command::new(&self.program)
            .args(&self.args)
            .exec();
        eprintln!(
            "{EXEC_MODE}: cannot run {}: {error}",
            Path::new(&self.program).display()
        );
        EXIT_CANNOT_EXEC
    }
}

/// The exec mode's flag for [`ExecRequest::new_network`].
const NEW_NETWORK: &str = "--new-network";

/// How children are started: through a helper that ties them to this process, or directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tether {
    helper: Option<PathBuf>,
    new_network: bool,
}

impl Tether {
    /// Through this very binary (`/proc/self/exe`) when its `main` called
    /// [`exec_if_requested`]; otherwise [`Tether::untethered`], with one warning in the log.
    pub fn this_binary() -> Self {
        if UNDERSTOOD.load(Ordering::SeqCst) {
            return Self::through("/proc/self/exe");
        }
        if !WARNED.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "this binary does not call nautilus_lifetime::exec_if_requested: children \
                 are stopped with their process group but do not die with this process"
            );
        }
        Self::untethered()
    }

    /// Through `helper`, a binary whose `main` calls [`exec_if_requested`].
    pub fn through(helper: impl Into<PathBuf>) -> Self {
        Self {
            helper: Some(helper.into()),
            new_network: false,
        }
    }

    /// Directly: a process group and `kill_on_drop`, no parent-death signal.
    pub fn untethered() -> Self {
        Self {
            helper: None,
            new_network: false,
        }
    }

    /// Whether children get the parent-death signal.
    pub fn is_tethered(&self) -> bool {
        self.helper.is_some()
    }

    /// Start each child in a network namespace of its own, empty but for its loopback
    /// ([`crate::netns`]). Only a tethered command can: [`Tether::command`] refuses otherwise,
    /// rather than run the child in this process's network.
    pub fn with_new_network(mut self) -> Self {
        self.new_network = true;
        self
    }

    /// Whether children get a network namespace of their own.
    pub fn isolates_network(&self) -> bool {
        self.new_network
    }

    /// Whether the helper can make a network namespace on this machine
    /// ([`crate::netns::probe`]); the error says why not in one line.
    pub async fn probe_new_network(&self) -> Result<()> {
        match &self.helper {
            Some(helper) => crate::netns::probe(helper).await,
            None => Err(LifetimeError::Isolation {
                reason: NO_HELPER.to_owned(),
            }),
        }
    }

    /// A command that runs `program` in its own process group (its pid is the group's id),
    /// killed when the returned child is dropped and, when tethered, when this process's
    /// calling thread ends. Add the program's arguments, environment and stdio to it as usual;
    /// spawn it from the thread this was called on or another long-lived one (see the crate
    /// documentation).
    ///
    /// When tethered the program is resolved here (a bare name through `PATH`), so a missing
    /// program is the same [`LifetimeError::NotFound`] a direct spawn would give rather than
    /// an exit of the helper. With [`Tether::with_new_network`] but no helper it is
    /// [`LifetimeError::Isolation`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<tokio::process::Command> {
        let program = program.as_ref();
        let mut command = match &self.helper {
            None if self.new_network => {
                return Err(LifetimeError::Isolation {
                    reason: NO_HELPER.to_owned(),
                });
            }
            None => tokio::process::Command::new(program),
            Some(helper) => {
                let resolved = resolve(program).map_err(|source| LifetimeError::NotFound {
                    program: Path::new(program).display().to_string(),
                    source,
                })?;
                let mut command = tokio::process::Command::new(helper);
                command
                    .arg(EXEC_MODE)
                    .arg("--parent")
                    .arg(std::process::id().to_string());
                if self.new_network {
                    command.arg(NEW_NETWORK);
                }
                command.arg("--").arg(resolved);
                command
            }
        };
        command.process_group(0).kill_on_drop(true);
        Ok(command)
    }
}

/// Why an untethered command cannot have a network namespace.
const NO_HELPER: &str = "a network namespace is made by the tether's helper, and this binary \
                         does not call nautilus_lifetime::exec_if_requested";

/// `program` as the kernel will find it: a path with a slash as is, a bare name through `PATH`.
fn resolve(program: &OsStr) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') {
        return if executable(path) {
            Ok(path.to_path_buf())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not an executable file", path.display()),
            ))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(path))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not in PATH", path.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn exec_requests_parse_strictly() {
        let request = ExecRequest::parse(os(&["--parent", "42", "--", "etcd", "--name", "--"]))
            .expect("parses");
        assert_eq!(request.parent, 42);
        assert!(!request.new_network);
        assert_eq!(request.program, "etcd");
        assert_eq!(request.args, os(&["--name", "--"]));
        let isolated = ExecRequest::parse(os(&["--parent", "42", "--new-network", "--", "etcd"]))
            .expect("parses");
        assert!(isolated.new_network);
        assert_eq!(isolated.program, "etcd");
        for bad in [
            &[][..],
            &["--parent"],
            &["--parent", "x", "--", "etcd"],
            &["--parent", "1", "--", "etcd"],
            &["--parent", "-5", "--", "etcd"],
            &["--parent", "42", "etcd"],
            &["--parent", "42", "--"],
            &["--pid", "42", "--", "etcd"],
            &["--parent", "42", "--new-network", "etcd"],
            &["--parent", "42", "--new-network", "--"],
            &["--new-network", "--parent", "42", "--", "etcd"],
        ] {
            assert!(ExecRequest::parse(os(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_tethered_command_runs_the_resolved_program_through_the_helper() {
        let tether = Tether::through("/opt/helper");
        let command = tether.command("sh").expect("sh is in PATH");
        let std = command.as_std();
        assert_eq!(std.get_program(), "/opt/helper");
        let args: Vec<&OsStr> = std.get_args().collect();
        assert_eq!(args[0], EXEC_MODE);
        assert_eq!(args[1], "--parent");
        assert_eq!(args[2], std::process::id().to_string().as_str());
        assert_eq!(args[3], "--");
        assert!(Path::new(args[4]).is_absolute(), "{args:?}");
        assert!(Path::new(args[4]).ends_with("sh"), "{args:?}");

        let missing = tether.command("/nonexistent/k3s").expect_err("missing");
        assert!(
            matches!(missing, LifetimeError::NotFound { .. }),
            "{missing}"
        );
        let missing = tether.command("no-such-program-here").expect_err("missing");
        assert!(
            matches!(missing, LifetimeError::NotFound { .. }),
            "{missing}"
        );
    }

    #[test]
    fn an_untethered_command_runs_the_program_itself() {
        let tether = Tether::untethered();
        assert!(!tether.is_tethered());
        let command = tether
            .command("/nonexistent/k3s")
            .expect("spawn reports it");
        assert_eq!(command.as_std().get_program(), "/nonexistent/k3s");
        // A test harness never called exec_if_requested.
        assert_eq!(Tether::this_binary(), Tether::untethered());
        // And cannot isolate a child's network: refused, never run in ours.
        let refused = Tether::untethered()
            .with_new_network()
            .command("sh")
            .expect_err("no helper");
        assert!(
            matches!(refused, LifetimeError::Isolation { .. }),
            "{refused}"
        );
    }

    #[test]
    fn an_isolated_command_asks_the_helper_for_a_new_network() {
        let command = Tether::through("/opt/helper")
            .with_new_network()
            .command("sh")
            .expect("sh is in PATH");
        let args: Vec<&OsStr> = command.as_std().get_args().collect();
        let pid = std::process::id().to_string();
        assert_eq!(
            &args[..5],
            &[
                OsStr::new(EXEC_MODE),
                OsStr::new("--parent"),
                OsStr::new(pid.as_str()),
                OsStr::new(NEW_NETWORK),
                OsStr::new("--"),
            ]
        );
    }
}
