//! Tests only: where the shared test data lives (real attestation documents, Sui signature
//! vectors and their manifests).
//!
//! The data is not part of this repository: it lives in `shared/testdata` beside the clone.
//! Every crate's tests and benchmarks find it through [`testdata_dir`], so there is one rule for
//! where it is, and each caller skips (rather than fails) when it is absent. This crate is a
//! dev-dependency only, so no production binary or library API carries it.
//!
//! It also holds what tests of several crates use to own the processes they start:
//! [`processes_mentioning`] and [`Reaper`]; and to look at the network namespace an isolated
//! enclave runs in: [`net_namespace`], [`processes_in_net_namespace`], [`in_net_namespace_of`];
//! and OpenSSL as an independent implementation to check formats against ([`openssl`]).

use std::path::PathBuf;
use std::time::Duration;

/// Environment variable that overrides the test-data location.
pub const ENV_VAR: &str = "NAUTILUS_TESTDATA";

/// The test-data directory: `$NAUTILUS_TESTDATA` if set, else `shared/testdata` beside the
/// repository (the path is relative to this crate, `enclave-agent/test-support`).
///
/// Returns `Err` with the path that was tried when the directory does not exist.
pub fn locate() -> Result<PathBuf, PathBuf> {
    let dir = match std::env::var_os(ENV_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"),
    };
    if dir.is_dir() { Ok(dir) } else { Err(dir) }
}

/// The test-data directory, or `None` after printing `skipped: testdata not found at …`.
///
/// Meant for tests and benchmarks: `let Some(dir) = testdata_dir() else { return };`.
pub fn testdata_dir() -> Option<PathBuf> {
    match locate() {
        Ok(dir) => Some(dir),
        Err(tried) => {
            println!("skipped: testdata not found at {}", tried.display());
            None
        }
    }
}

/// The `nitro/` subdirectory of [`testdata_dir`] (real attestation documents).
pub fn nitro_dir() -> Option<PathBuf> {
    testdata_dir().map(|dir| dir.join("nitro"))
}

/// Processes whose command line mentions `needle` (a test's temporary directory), with
/// their command lines.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push((pid, cmdline));
            }
        }
    }
    found
}

/// Kills, on drop, every process still mentioning a directory: nothing a test starts may
/// outlive it, even when the agent could not stop its components (a panic, a SIGKILL).
#[derive(Debug)]
pub struct Reaper(pub String);

impl Drop for Reaper {
    fn drop(&mut self) {
        for _ in 0..50 {
            let left = processes_mentioning(&self.0);
            if left.is_empty() {
                return;
            }
            for (pid, _) in left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The network namespace `pid` runs in, as the inode of `/proc/<pid>/ns/net` (what
/// `readlink` shows as `net:[INODE]`); `None` when the process is gone.
pub fn net_namespace(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The processes that run in the network namespace `inode` ([`net_namespace`]).
pub fn processes_in_net_namespace(inode: u64) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| net_namespace(*pid) == Some(inode))
        .collect()
}

/// Run `f` on a thread of its own that joined the network namespace of `pid` (setns affects
/// the calling thread only), and return what it returned; `Err` when the namespace cannot be
/// joined. Sockets `f` opens live in that namespace, as the enclave's would.
pub fn in_net_namespace_of<T: Send + 'static>(
    pid: u32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let path = format!("/proc/{pid}/ns/net");
    let ns = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns {path}: {e}"))?;
        Ok(f())
    })
    .join()
    .map_err(|_| "the thread in the namespace panicked".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_location_is_beside_the_clone() {
        // Whether or not the data is there, the path tried ends in shared/testdata (unless the
        // environment overrides it, which then is what is tried).
        let tried = match locate() {
            Ok(dir) | Err(dir) => dir,
        };
        match std::env::var_os(ENV_VAR) {
            Some(dir) => assert_eq!(tried, PathBuf::from(dir)),
            None => assert!(tried.ends_with("../../../shared/testdata"), "{tried:?}"),
        }
    }
}

/// OpenSSL's command line, an independent implementation that tests check formats against
/// (CMS, certificates). Tests that need it skip with one line where it is missing, and fail
/// when `NAUTILUS_E2E_REQUIRE=1` says the machine must have everything.
pub mod openssl {
    use std::path::Path;
    use std::process::Command;

    /// Whether `openssl` runs here (a skip line is printed when it does not).
    pub fn available() -> bool {
        let found = Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("NAUTILUS_E2E_REQUIRE").as_deref() != Ok("1"),
                "openssl is required (NAUTILUS_E2E_REQUIRE=1)"
            );
            println!("skipped: openssl not found");
        }
        found
    }

    /// Run `openssl args…` in `dir`; panics with its standard error when it fails. Its
    /// standard output.
    pub fn run(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}
