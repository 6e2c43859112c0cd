//! etcd's side of a snapshot: save through the maintenance Snapshot API (`etcdctl snapshot
//! save`, a consistent copy of the backend streamed by the running member, with the agent's
//! etcd client certificate), and restore into a fresh data directory before etcd starts.
//!
//! Restore prefers `etcdutl snapshot restore --bump-revision 1000000000 --mark-compacted`
//! (etcd ≥ 3.5, what an enclave image carries): every revision after the restore is above
//! any a client saw before, and the old ones are compacted, so watchers get "compacted" and
//! relist instead of silently missing or repeating events. Debian's etcd 3.4 has no etcdutl
//! and no bump: there `etcdctl snapshot restore` is used, and once etcd runs the agent compacts
//! at the restored revision ([`Etcdctl::compact`]), so a watch from an older revision is told to
//! relist; a client that saw revisions *above* the restored one (written after the snapshot)
//! is not told anything by 3.4, and may wait for revisions that come back with other content.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// How far `--bump-revision` moves the revision on restore (etcdutl, etcd ≥ 3.5).
pub const BUMP_REVISION: u64 = 1_000_000_000;
/// Longest a snapshot save or restore may take.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// Why an etcd tool failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// The tool could not be started.
    #[error("starting {tool}")]
    Spawn {
        /// The program.
        tool: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The tool exited with an error.
    #[error("{tool} {action} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        tool: String,
        /// What it was asked to do.
        action: &'static str,
        /// Its exit status.
        status: String,
        /// The end of its standard error.
        stderr: String,
    },
    /// The tool did not finish in time.
    #[error("{tool} {action} did not finish within {TOOL_TIMEOUT:?}")]
    TimedOut {
        /// The program.
        tool: String,
        /// What it was asked to do.
        action: &'static str,
    },
    /// `snapshot status` printed something else than its JSON.
    #[error("reading the snapshot's status: {0}")]
    Status(String),
}

/// The etcd client tools and how they reach the running member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Etcdctl {
    /// `etcdctl`.
    pub etcdctl: PathBuf,
    /// `etcdutl`, when the image has it (etcd ≥ 3.5).
    pub etcdutl: Option<PathBuf>,
    /// `https://127.0.0.1:<client port>`.
    pub endpoint: String,
    /// etcd's server CA (PEM file).
    pub cacert: PathBuf,
    /// The agent's etcd client certificate (PEM file).
    pub cert: PathBuf,
    /// Its key (PEM file).
    pub key: PathBuf,
}

/// Where restored data goes and what the member is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTarget {
    /// The data directory etcd will run on (must not exist yet).
    pub data_dir: PathBuf,
    /// The member's name (`--name`).
    pub name: String,
    /// Its peer URL.
    pub peer_url: String,
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text.len().saturating_sub(600);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].replace('\n', " | ")
}

async fn run(program: &Path, args: &[String], action: &'static str) -> Result<Vec<u8>, EtcdError> {
    run_with_input(program, args, action, None).await
}

async fn run_with_input(
    program: &Path,
    args: &[String],
    action: &'static str,
    input: Option<Vec<u8>>,
) -> Result<Vec<u8>, EtcdError> {
    use tokio::io::AsyncWriteExt as _;
    let tool = program.display().to_string();
    let mut child = Command::new(program)
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| EtcdError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(&input)
            .await
            .map_err(|source| EtcdError::Spawn {
                tool: tool.clone(),
                source,
            })?;
        // Dropping stdin closes it: the tool sees the end of its input.
    }
    let output = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| EtcdError::TimedOut {
            tool: tool.clone(),
            action,
        })?
        .map_err(|source| EtcdError::Spawn {
            tool: tool.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(EtcdError::Failed {
            tool,
            action,
            status: output.status.to_string(),
            stderr: tail(&output.stderr),
        });
    }
    Ok(output.stdout)
}

impl Etcdctl {
    fn connection(&self) -> Vec<String> {
        vec![
            format!("--endpoints={}", self.endpoint),
            format!("--cacert={}", self.cacert.display()),
            format!("--cert={}", self.cert.display()),
            format!("--key={}", self.key.display()),
            "--command-timeout=60s".to_owned(),
        ]
    }

    /// Save a consistent snapshot of the running member to `path` (which must not exist) and
    /// return its revision.
    pub async fn save(&self, path: &Path) -> Result<u64, EtcdError> {
        let mut args = self.connection();
        args.extend(["snapshot".into(), "save".into(), path.display().to_string()]);
        run(&self.etcdctl, &args, "snapshot save").await?;
        self.revision(path).await
    }

    /// The revision recorded in a snapshot file.
    pub async fn revision(&self, path: &Path) -> Result<u64, EtcdError> {
        let args = vec![
            "snapshot".to_owned(),
            "status".to_owned(),
            path.display().to_string(),
            "--write-out=json".to_owned(),
        ];
        let tool = self.etcdutl.as_deref().unwrap_or(&self.etcdctl);
        let out = run(tool, &args, "snapshot status").await?;
        let status: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| EtcdError::Status(e.to_string()))?;
        status
            .get("revision")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| EtcdError::Status(format!("no revision in {}", tail(&out))))
    }

    /// Restore `db` into `target` (a data directory that does not exist yet). Returns whether
    /// revisions were bumped (etcdutl) or must be compacted once etcd runs (etcdctl, 3.4).
    pub async fn restore(&self, db: &Path, target: &RestoreTarget) -> Result<bool, EtcdError> {
        let mut args = vec![
            "snapshot".to_owned(),
            "restore".to_owned(),
            db.display().to_string(),
            format!("--data-dir={}", target.data_dir.display()),
            format!("--name={}", target.name),
            format!("--initial-cluster={}={}", target.name, target.peer_url),
            format!("--initial-advertise-peer-urls={}", target.peer_url),
        ];
        match &self.etcdutl {
            Some(etcdutl) => {
                args.push(format!("--bump-revision={BUMP_REVISION}"));
                args.push("--mark-compacted".to_owned());
                run(etcdutl, &args, "snapshot restore").await?;
                Ok(true)
            }
            None => {
                run(&self.etcdctl, &args, "snapshot restore").await?;
                Ok(false)
            }
        }
    }

    /// Compact the running member's history at `revision`: watches from before it are told
    /// to relist (what `--mark-compacted` does at restore on etcd ≥ 3.5).
    pub async fn compact(&self, revision: u64) -> Result<(), EtcdError> {
        let mut args = self.connection();
        args.extend(["compact".into(), revision.to_string(), "--physical".into()]);
        match run(&self.etcdctl, &args, "compact").await {
            // Already compacted at or past it: what we wanted.
            Err(EtcdError::Failed { stderr, .. }) if stderr.contains("compacted") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Put `key` = `value` (tests and the benchmark fill etcd this way).
    pub async fn put(&self, key: &str, value: &str) -> Result<(), EtcdError> {
        let mut args = self.connection();
        args.extend(["put".into(), key.into(), value.into()]);
        run(&self.etcdctl, &args, "put").await.map(|_| ())
    }

    /// Put many keys, 100 per transaction (etcd's default `--max-txn-ops` is 128). Keys and
    /// values must be single tokens without spaces or quotes (tests and the benchmark).
    pub async fn put_many(&self, pairs: &[(String, String)]) -> Result<(), EtcdError> {
        for batch in pairs.chunks(100) {
            // `etcdctl txn` reads: compares, a blank line, success ops, a blank line, failure
            // ops, a blank line.
            let mut script = String::from("\n");
            for (key, value) in batch {
                script.push_str(&format!("put {key} {value}\n"));
            }
            script.push_str("\n\n");
            let mut args = self.connection();
            args.push("txn".into());
            run_with_input(&self.etcdctl, &args, "txn", Some(script.into_bytes())).await?;
        }
        Ok(())
    }

    /// The number of keys under `prefix`.
    pub async fn count(&self, prefix: &str) -> Result<u64, EtcdError> {
        let mut args = self.connection();
        args.extend([
            "get".into(),
            prefix.into(),
            "--prefix".into(),
            "--keys-only".into(),
            "--limit=1".into(),
            "--write-out=json".into(),
        ]);
        let out = run(&self.etcdctl, &args, "get").await?;
        let status: serde_json::Value =
            serde_json::from_slice(&out).map_err(|e| EtcdError::Status(e.to_string()))?;
        Ok(status
            .get("count")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0))
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<String>, EtcdError> {
        let mut args = self.connection();
        args.extend(["get".into(), key.into(), "--print-value-only".into()]);
        let out = run(&self.etcdctl, &args, "get").await?;
        let text = String::from_utf8_lossy(&out).trim_end().to_owned();
        Ok((!text.is_empty()).then_some(text))
    }
}

/// `etcdutl` beside `etcdctl` or on `PATH`, if any.
pub fn find_etcdutl(etcdctl: &Path) -> Option<PathBuf> {
    let beside = etcdctl.parent().map(|dir| dir.join("etcdutl"));
    beside
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join("etcdutl")),
        )
        .find(|p| p.is_file())
}
