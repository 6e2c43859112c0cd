//! Records of started processes, so that a restarted parent can stop what a crashed one left.
//!
//! One file per child, `<dir>/<name>.pid`, holding `<pid> <start time>\n`: the start time is
//! field 22 of `/proc/<pid>/stat` (clock ticks after boot), which together with the pid names
//! one process for the machine's uptime. A pid alone would not: after a crash the kernel may
//! give the pid to an unrelated process, which [`ProcessRecords::reap`] must not kill.
//!
//! Files are written whole (a temporary file renamed into place) and read with limits: at most
//! [`MAX_RECORDS`] files of at most [`MAX_RECORD_BYTES`] bytes each. A record that does not
//! parse names no process and is removed with a warning.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::{LifetimeError, Result};

/// Most record files read from one directory.
pub const MAX_RECORDS: usize = 64;
/// Largest record file read.
pub const MAX_RECORD_BYTES: u64 = 64;
/// Largest `/proc/<pid>/stat` read (a command name is at most 64 bytes; the rest is numbers).
const MAX_STAT_BYTES: u64 = 4096;
const SUFFIX: &str = ".pid";

/// One process, for as long as the machine runs: its pid and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// The pid.
    pub pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R`, `S`, `Z`, …).
    pub state: char,
    /// Its parent.
    pub ppid: i32,
    /// Its process group.
    pub pgrp: i32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

impl Stat {
    /// Parse the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses and
    /// may itself hold spaces and parentheses, so the fields are counted from the last `)`.
    pub fn parse(text: &str) -> Option<Self> {
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
        // fields[0] is field 3 (state), so field N is fields[N - 3].
        let state = fields.first()?.chars().next()?;
        let ppid = fields.get(4 - 3)?.parse().ok()?;
        let pgrp = fields.get(5 - 3)?.parse().ok()?;
        let start_ticks = fields.get(22 - 3)?.parse().ok()?;
        Some(Self {
            state,
            ppid,
            pgrp,
            start_ticks,
        })
    }

    /// Read and parse `/proc/<pid>/stat`; `None` when there is no such process.
    pub fn of(pid: u32) -> Result<Option<Self>> {
        use std::io::Read as _;
        let path = format!("/proc/{pid}/stat");
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(LifetimeError::Stat {
                    pid,
                    reason: e.to_string(),
                });
            }
        };
        let mut text = String::new();
        match file.take(MAX_STAT_BYTES).read_to_string(&mut text) {
            Ok(_) => {}
            // The process ended while we read.
            Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => return Ok(None),
            Err(e) => {
                return Err(LifetimeError::Stat {
                    pid,
                    reason: e.to_string(),
                });
            }
        }
        Self::parse(&text)
            .map(Some)
            .ok_or_else(|| LifetimeError::Stat {
                pid,
                reason: format!(
                    "unexpected format: {:?}",
                    text.chars().take(80).collect::<String>()
                ),
            })
    }
}

impl ProcessId {
    /// The process running as `pid` now.
    pub fn of(pid: u32) -> Result<Self> {
        match Stat::of(pid)? {
            Some(stat) => Ok(Self {
                pid,
                start_ticks: stat.start_ticks,
            }),
            None => Err(LifetimeError::Stat {
                pid,
                reason: "no such process".into(),
            }),
        }
    }

    /// Its stat, if this very process still exists and has not ended (a zombie has ended: it
    /// only waits for its parent to collect its status).
    fn alive(&self) -> Result<Option<Stat>> {
        Ok(Stat::of(self.pid)?
            .filter(|s| s.start_ticks == self.start_ticks && !matches!(s.state, 'Z' | 'X')))
    }

    /// Whether this very process is still running.
    pub fn is_alive(&self) -> bool {
        self.alive().ok().flatten().is_some()
    }

    fn render(&self) -> String {
        format!("{} {}\n", self.pid, self.start_ticks)
    }

    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim_end_matches('\n').split(' ');
        let pid: u32 = parts.next()?.parse().ok()?;
        let start_ticks = parts.next()?.parse().ok()?;
        (parts.next().is_none() && pid > 1).then_some(Self { pid, start_ticks })
    }
}

/// A recorded process that [`ProcessRecords::reap`] found still running and killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// The record's name.
    pub name: String,
    /// The process.
    pub id: ProcessId,
}

/// A directory of process records (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecords {
    dir: PathBuf,
}

/// Whether `name` can name a record: 1 to 48 of `a-z`, `0-9`, `-`.
fn valid_name(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl ProcessRecords {
    /// Records in `dir` (created when the first record is written).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LifetimeError + '_ {
        move |source| LifetimeError::Record {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Record `pid` (just started) as `name`, replacing an earlier record of that name.
    pub fn record(&self, name: &str, pid: u32) -> Result<ProcessId> {
        if !valid_name(name) {
            return Err(LifetimeError::Record {
                path: self.path(name),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a record name is 1 to 48 of a-z, 0-9 and -",
                ),
            });
        }
        let id = ProcessId::of(pid)?;
        std::fs::create_dir_all(&self.dir).map_err(Self::io(&self.dir))?;
        let path = self.path(name);
        let tmp = self.dir.join(format!(".{name}{SUFFIX}.tmp"));
        std::fs::write(&tmp, id.render()).map_err(Self::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Self::io(&path))?;
        Ok(id)
    }

    /// Remove the record `name` if it still names `id` (a newer start may have replaced it).
    pub fn forget(&self, name: &str, id: ProcessId) {
        let path = self.path(name);
        if read_record(&path).ok().flatten() == Some(id)
            && let Err(e) = std::fs::remove_file(&path)
        {
            warn!(path = %path.display(), error = %e, "cannot remove a process record");
        }
    }

    /// Kill every recorded process that is still the process recorded, with its process group
    /// when it leads one, wait up to `within` for each to end, and remove all records. Records
    /// of processes that ended, or whose pid now belongs to another process, are removed and
    /// nothing is signalled. Fails when a recorded process is still running after `within`.
    pub async fn reap(&self, within: Duration) -> Result<Vec<Reaped>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Self::io(&self.dir)(e)),
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Self::io(&self.dir))?;
            let file_name = entry.file_name();
            let Some(name) = file_name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .filter(|n| valid_name(n))
            else {
                continue;
            };
            if records.len() == MAX_RECORDS {
                warn!(dir = %self.dir.display(), max = MAX_RECORDS, "too many process records: the rest are ignored");
                break;
            }
            records.push((name.to_owned(), entry.path()));
        }
        let mut reaped = Vec::new();
        for (name, path) in records {
            match read_record(&path) {
                Ok(Some(id)) => {
                    if kill_recorded(&name, id, within).await? {
                        reaped.push(Reaped { name, id });
                    }
                }
                Ok(None) => {}
                Err(reason) => {
                    warn!(path = %path.display(), %reason, "ignoring a process record that does not parse")
                }
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io(&path)(e)),
            }
        }
        Ok(reaped)
    }
}

/// The record in `path`: `Ok(None)` when the file is gone, `Err` when it does not parse.
fn read_record(path: &Path) -> Result<Option<ProcessId>, String> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut text = String::new();
    file.take(MAX_RECORD_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!("longer than {MAX_RECORD_BYTES} bytes"));
    }
    ProcessId::parse(&text)
        .map(Some)
        .ok_or_else(|| "expected `<pid> <start ticks>`".to_owned())
}

/// SIGKILL `id` (its group when it leads one) if it is still that process and wait for it to
/// end. `Ok(true)` when it was running.
async fn kill_recorded(name: &str, id: ProcessId, within: Duration) -> Result<bool> {
    let Some(stat) = id.alive()? else {
        return Ok(false);
    };
    let raw = i32::try_from(id.pid).unwrap_or(i32::MAX);
    let result = if stat.pgrp == raw {
        killpg(Pid::from_raw(raw), Signal::SIGKILL)
    } else {
        kill(Pid::from_raw(raw), Signal::SIGKILL)
    };
    info!(
        name,
        pid = id.pid,
        group = stat.pgrp == raw,
        "killing a process a previous run left"
    );
    let deadline = tokio::time::Instant::now() + within;
    while id.alive()?.is_some() {
        if tokio::time::Instant::now() >= deadline {
            return Err(LifetimeError::StillRunning {
                name: name.to_owned(),
                pid: id.pid,
                millis: within.as_millis(),
                reason: result.err().map_or_else(String::new, |e| e.to_string()),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_past_odd_command_names() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 1 2";
        let stat = Stat::parse(line).expect("parses");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.pgrp, 4242);
        assert_eq!(stat.start_ticks, 987_654);
        assert!(Stat::parse("4242 (x) S 1 2").is_none());
        assert!(Stat::parse("no parenthesis").is_none());
        assert!(Stat::parse("").is_none());
    }

    #[test]
    fn this_process_has_an_identity() {
        let me = ProcessId::of(std::process::id()).expect("self");
        assert!(me.is_alive());
        let other = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(
            !other.is_alive(),
            "a different start time is another process"
        );
    }

    #[test]
    fn records_parse_strictly() {
        assert_eq!(
            ProcessId::parse("42 7\n"),
            Some(ProcessId {
                pid: 42,
                start_ticks: 7
            })
        );
        for bad in [
            "", "42", "42 7 9", "x 7", "1 7", "0 7", "42  7", "-4 7", "42 -7",
        ] {
            assert_eq!(ProcessId::parse(bad), None, "{bad:?}");
        }
        assert!(!valid_name(""));
        assert!(!valid_name("../etc"));
        assert!(!valid_name("Etcd"));
        assert!(valid_name("kube-apiserver"));
    }

    fn sleeper() -> tokio::process::Child {
        tokio::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("sleep starts")
    }

    #[tokio::test]
    async fn reaping_kills_recorded_processes_and_spares_reused_pids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = ProcessRecords::new(dir.path().join("processes"));
        assert_eq!(
            records.reap(Duration::from_secs(1)).await.expect("none"),
            []
        );

        let mut left = sleeper();
        let left_id = records
            .record("etcd", left.id().expect("pid"))
            .expect("recorded");
        // A pid that is alive but belongs to another process now: same pid, other start time.
        let mut reused = sleeper();
        let reused_pid = reused.id().expect("pid");
        let stale = ProcessId {
            start_ticks: ProcessId::of(reused_pid).expect("id").start_ticks + 1,
            pid: reused_pid,
        };
        std::fs::write(records.path("kube-apiserver"), stale.render()).expect("write");
        std::fs::write(records.path("garbage"), "not a record").expect("write");
        std::fs::write(records.path("huge"), "1".repeat(100)).expect("write");

        let reaped = records.reap(Duration::from_secs(10)).await.expect("reaps");
        assert_eq!(
            reaped,
            [Reaped {
                name: "etcd".into(),
                id: left_id
            }]
        );
        let status = left.wait().await.expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(
            reused.try_wait().expect("poll").is_none(),
            "the process now holding a recorded pid must live"
        );
        assert_eq!(
            std::fs::read_dir(records.dir()).expect("dir").count(),
            0,
            "every record is removed"
        );
        reused.kill().await.expect("kill");
    }

    #[tokio::test]
    async fn forgetting_removes_only_the_same_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = ProcessRecords::new(dir.path());
        let id = records
            .record("agent", std::process::id())
            .expect("recorded");
        records.forget(
            "agent",
            ProcessId {
                start_ticks: id.start_ticks + 1,
                ..id
            },
        );
        assert!(
            records.path("agent").exists(),
            "another process's record stays"
        );
        records.forget("agent", id);
        assert!(!records.path("agent").exists());
        assert!(records.record("../x", std::process::id()).is_err());
    }
}
