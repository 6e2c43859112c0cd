//! AWS Nitro Enclaves through `nitro-cli`.
//!
//! `nitro-cli run-enclave` prints progress lines and then one JSON object (`EnclaveName`,
//! `EnclaveID`, `ProcessID`, `EnclaveCID`, `NumberOfCPUs`, `CPUIDs`, `MemoryMiB`);
//! `describe-enclaves` prints a JSON array of such objects with `State` (`RUNNING`, …) and
//! `Flags`; `terminate-enclave --enclave-id ID` stops one. The executable's path is
//! configurable, so tests run a script that prints recorded output.
//!
//! An enclave is not a child of the sidecar: it keeps running when the sidecar is killed, and
//! a restarted sidecar would start a second one beside it. So every enclave is started with a
//! stable name (`--enclave-name`, [`NitroConfig::enclave_name`]), and [`Launcher::start`] first
//! lists the enclaves (`describe-enclaves`) and terminates each one of that name, or of that
//! name with the `_N` suffix nitro-cli appends when a name is taken. A listing that cannot be
//! read or parsed stops the start (fail closed: better no enclave than two). Names are
//! limited to lower-case letters, digits, `.` and `-` ([`check_enclave_name`]), so no other
//! sidecar's name ends in `_N`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde::Deserialize;
use tracing::{info, warn};

use super::{EnclaveInfo, LaunchError, Launcher, tail};

/// Longest accepted nitro-cli output.
const MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// run-enclave allocates and scrubs the enclave's memory first: give it time.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Every other nitro-cli command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Most enclaves accepted in a describe-enclaves listing (a parent instance runs a handful).
const MAX_LISTED: usize = 256;
/// Longest enclave name.
pub const MAX_ENCLAVE_NAME: usize = 128;

/// Why `name` cannot name an enclave: 1 to [`MAX_ENCLAVE_NAME`] of `a-z`, `0-9`, `.`, `-`.
pub fn check_enclave_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_ENCLAVE_NAME {
        return Err(format!(
            "an enclave name is 1 to {MAX_ENCLAVE_NAME} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(format!(
            "enclave name {name:?} may hold only a-z, 0-9, '.' and '-'"
        ));
    }
    Ok(())
}

/// The enclave name for a resource's `cluster` (`namespace/name`): `namespace.name`
/// (a namespace holds no `.`, so the first one separates), lower-cased.
pub fn enclave_name_for(cluster: &str) -> String {
    cluster.replace('/', ".").to_ascii_lowercase()
}

/// Whether a listed enclave name is `ours`, or `ours` with the `_N` suffix nitro-cli adds to a
/// name already in use.
fn is_ours(listed: &str, ours: &str) -> bool {
    listed.strip_prefix(ours).is_some_and(|rest| {
        rest.is_empty()
            || rest
                .strip_prefix('_')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// How to run the enclave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NitroConfig {
    /// The `nitro-cli` executable.
    pub nitro_cli: PathBuf,
    /// The enclave image.
    pub eif_path: PathBuf,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vsock CID; nitro-cli chooses one when `None`.
    pub enclave_cid: Option<u32>,
    /// The enclave's name ([`check_enclave_name`]): a running enclave of this name is
    /// terminated before a new one starts.
    pub enclave_name: String,
}

/// What `nitro-cli run-enclave` prints about the enclave it started.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunEnclaveOutput {
    /// Enclave name.
    #[serde(default)]
    pub enclave_name: Option<String>,
    /// Enclave id, used to describe and terminate it.
    #[serde(rename = "EnclaveID")]
    pub enclave_id: String,
    /// The nitro-cli process that holds the enclave.
    #[serde(default, rename = "ProcessID")]
    pub process_id: Option<u32>,
    /// The enclave's vsock CID.
    #[serde(rename = "EnclaveCID")]
    pub enclave_cid: u64,
    /// vCPUs given.
    #[serde(default, rename = "NumberOfCPUs")]
    pub number_of_cpus: Option<u32>,
    /// The vCPU ids given.
    #[serde(default, rename = "CPUIDs")]
    pub cpu_ids: Vec<u32>,
    /// Memory given.
    #[serde(default, rename = "MemoryMiB")]
    pub memory_mib: Option<u64>,
}

/// One entry of `nitro-cli describe-enclaves`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribedEnclave {
    #[serde(default)]
    enclave_name: Option<String>,
    #[serde(rename = "EnclaveID")]
    enclave_id: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    flags: Option<String>,
}

impl RunEnclaveOutput {
    /// Parse run-enclave's standard output: progress lines, then the JSON object.
    pub fn parse(stdout: &[u8]) -> Result<Self, String> {
        if stdout.len() > MAX_OUTPUT_BYTES {
            return Err(format!("{} bytes of output", stdout.len()));
        }
        let start = json_start(stdout, b'{').ok_or("no JSON object in the output")?;
        let mut stream = serde_json::Deserializer::from_slice(&stdout[start..]).into_iter::<Self>();
        match stream.next() {
            Some(Ok(out)) => Ok(out),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no JSON object in the output".to_owned()),
        }
    }
}

fn parse_described(stdout: &[u8]) -> Result<Vec<DescribedEnclave>, String> {
    if stdout.len() > MAX_OUTPUT_BYTES {
        return Err(format!("{} bytes of output", stdout.len()));
    }
    let start = json_start(stdout, b'[').ok_or("no JSON array in the output")?;
    let mut stream =
        serde_json::Deserializer::from_slice(&stdout[start..]).into_iter::<Vec<DescribedEnclave>>();
    match stream.next() {
        Some(Ok(list)) if list.len() > MAX_LISTED => Err(format!(
            "{} enclaves listed, more than {MAX_LISTED}",
            list.len()
        )),
        Some(Ok(list)) => Ok(list),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("no JSON array in the output".to_owned()),
    }
}

/// Offset of the first line that starts with `open` (after blanks).
fn json_start(text: &[u8], open: u8) -> Option<usize> {
    let mut offset = 0;
    for line in text.split(|&b| b == b'\n') {
        let indent = line.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if line.get(indent) == Some(&open) {
            return Some(offset + indent);
        }
        offset += line.len() + 1;
    }
    None
}

/// Runs the enclave with `nitro-cli`.
#[derive(Debug)]
pub struct NitroLauncher {
    config: NitroConfig,
    started: Mutex<Option<RunEnclaveOutput>>,
}

impl NitroLauncher {
    /// A launcher for `config`; nothing runs until [`Launcher::start`].
    pub fn new(config: NitroConfig) -> Self {
        Self {
            config,
            started: Mutex::new(None),
        }
    }

    fn started(&self) -> Option<RunEnclaveOutput> {
        self.started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn run(&self, args: &[String], timeout: Duration) -> Result<Vec<u8>, LaunchError> {
        let command = format!(
            "{} {}",
            self.config.nitro_cli.display(),
            args.first().map(String::as_str).unwrap_or_default()
        );
        let mut cmd = tokio::process::Command::new(&self.config.nitro_cli);
        cmd.args(args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        let output = tokio::time::timeout(timeout, cmd.output())
            .await
            .map_err(|_| LaunchError::Timeout {
                command: command.clone(),
                seconds: timeout.as_secs(),
            })?
            .map_err(|source| LaunchError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(LaunchError::Failed {
                command,
                status: output.status.to_string(),
                stderr: tail(&output.stderr, 2048),
            });
        }
        Ok(output.stdout)
    }

    async fn describe(&self) -> Result<Vec<DescribedEnclave>, LaunchError> {
        let stdout = self
            .run(&["describe-enclaves".to_owned()], COMMAND_TIMEOUT)
            .await?;
        parse_described(&stdout).map_err(|reason| LaunchError::Output {
            command: "nitro-cli describe-enclaves".to_owned(),
            reason,
        })
    }

    fn info(started: &RunEnclaveOutput, running: bool, last_exit: Option<String>) -> EnclaveInfo {
        EnclaveInfo {
            launcher: "nitro".to_owned(),
            enclave_id: Some(started.enclave_id.clone()),
            enclave_cid: u32::try_from(started.enclave_cid).ok(),
            running,
            last_exit,
        }
    }

    async fn terminate(&self, enclave_id: &str) -> Result<(), LaunchError> {
        let args = [
            "terminate-enclave".to_owned(),
            "--enclave-id".to_owned(),
            enclave_id.to_owned(),
        ];
        self.run(&args, COMMAND_TIMEOUT).await.map(drop)
    }

    /// Terminate every listed enclave of our name (a previous sidecar's).
    async fn terminate_leftovers(&self) -> Result<(), LaunchError> {
        let ours = &self.config.enclave_name;
        for enclave in self.describe().await? {
            if enclave
                .enclave_name
                .as_deref()
                .is_some_and(|name| is_ours(name, ours))
            {
                warn!(
                    enclave_id = %enclave.enclave_id,
                    enclave_name = ?enclave.enclave_name,
                    state = %enclave.state,
                    "terminating the enclave a previous sidecar left"
                );
                self.terminate(&enclave.enclave_id).await?;
            }
        }
        Ok(())
    }

    async fn start_inner(&self) -> Result<EnclaveInfo, LaunchError> {
        if self.started().is_some() {
            return Err(LaunchError::State("already started"));
        }
        check_enclave_name(&self.config.enclave_name).map_err(|reason| LaunchError::Output {
            command: "nitro-cli run-enclave".to_owned(),
            reason,
        })?;
        self.terminate_leftovers().await?;
        let mut args = vec![
            "run-enclave".to_owned(),
            "--enclave-name".to_owned(),
            self.config.enclave_name.clone(),
            "--eif-path".to_owned(),
            self.config.eif_path.display().to_string(),
            "--cpu-count".to_owned(),
            self.config.cpu_count.to_string(),
            "--memory".to_owned(),
            self.config.memory_mib.to_string(),
        ];
        if let Some(cid) = self.config.enclave_cid {
            args.push("--enclave-cid".to_owned());
            args.push(cid.to_string());
        }
        let stdout = self.run(&args, RUN_TIMEOUT).await?;
        let out = RunEnclaveOutput::parse(&stdout).map_err(|reason| LaunchError::Output {
            command: "nitro-cli run-enclave".to_owned(),
            reason,
        })?;
        if out
            .enclave_name
            .as_deref()
            .is_some_and(|name| name != self.config.enclave_name)
        {
            // nitro-cli renamed it: an enclave of our name started meanwhile. Two would run.
            let _ = self.terminate(&out.enclave_id).await;
            return Err(LaunchError::Output {
                command: "nitro-cli run-enclave".to_owned(),
                reason: format!(
                    "the enclave was named {:?}, not {:?}: another enclave of that name is running",
                    out.enclave_name.as_deref().unwrap_or_default(),
                    self.config.enclave_name
                ),
            });
        }
        if u32::try_from(out.enclave_cid).is_err() {
            return Err(LaunchError::Output {
                command: "nitro-cli run-enclave".to_owned(),
                reason: format!("EnclaveCID {} does not fit a vsock CID", out.enclave_cid),
            });
        }
        info!(
            enclave_id = %out.enclave_id,
            enclave_cid = out.enclave_cid,
            cpus = ?out.cpu_ids,
            memory_mib = ?out.memory_mib,
            "enclave started"
        );
        let info = Self::info(&out, true, None);
        *self
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(out);
        Ok(info)
    }

    async fn status_inner(&self) -> Result<EnclaveInfo, LaunchError> {
        let started = self.started().ok_or(LaunchError::State("not started"))?;
        let listed = self.describe().await?;
        Ok(
            match listed.iter().find(|e| e.enclave_id == started.enclave_id) {
                Some(e) if e.state.eq_ignore_ascii_case("RUNNING") => {
                    if e.flags.as_deref().is_some_and(|f| f.contains("DEBUG")) {
                        warn!(flags = ?e.flags, "enclave runs in debug mode: its attestation has zero PCRs");
                    }
                    Self::info(&started, true, None)
                }
                Some(e) => Self::info(&started, false, Some(format!("state {}", e.state))),
                None => Self::info(
                    &started,
                    false,
                    Some("no longer listed by describe-enclaves".to_owned()),
                ),
            },
        )
    }

    async fn stop_inner(&self) -> Result<(), LaunchError> {
        let Some(started) = self.started() else {
            return Ok(());
        };
        match self.terminate(&started.enclave_id).await {
            Ok(_) => {
                info!(enclave_id = %started.enclave_id, "enclave terminated");
                Ok(())
            }
            Err(err) => {
                // Already gone is what we wanted.
                match self.describe().await {
                    Ok(list) if !list.iter().any(|e| e.enclave_id == started.enclave_id) => Ok(()),
                    _ => Err(err),
                }
            }
        }
    }
}

impl Launcher for NitroLauncher {
    fn start(&self) -> BoxFuture<'_, Result<EnclaveInfo, LaunchError>> {
        self.start_inner().boxed()
    }

    fn status(&self) -> BoxFuture<'_, Result<EnclaveInfo, LaunchError>> {
        self.status_inner().boxed()
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), LaunchError>> {
        self.stop_inner().boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// run-enclave's output as nitro-cli 1.4 prints it.
    const RUN_OUTPUT: &str = r#"Start allocating memory...
Started enclave with enclave-cid: 16, memory: 4096 MiB, cpu-ids: [1, 3]
{
  "EnclaveName": "nautilus",
  "EnclaveID": "i-0f73a4b4cb74cc9f2-enc0192e4188fef781d",
  "ProcessID": 12345,
  "EnclaveCID": 16,
  "NumberOfCPUs": 2,
  "CPUIDs": [
    1,
    3
  ],
  "MemoryMiB": 4096
}
"#;

    #[test]
    fn run_enclave_output_parses_after_progress_lines() {
        let out = RunEnclaveOutput::parse(RUN_OUTPUT.as_bytes()).expect("parses");
        assert_eq!(out.enclave_id, "i-0f73a4b4cb74cc9f2-enc0192e4188fef781d");
        assert_eq!(out.enclave_cid, 16);
        assert_eq!(out.cpu_ids, [1, 3]);
        assert_eq!(out.memory_mib, Some(4096));
        assert_eq!(out.process_id, Some(12345));
        assert_eq!(out.number_of_cpus, Some(2));
        assert_eq!(out.enclave_name.as_deref(), Some("nautilus"));
        assert!(RunEnclaveOutput::parse(b"Start allocating memory...\n").is_err());
        assert!(RunEnclaveOutput::parse(b"{\"EnclaveID\": 1}").is_err());
    }

    #[test]
    fn describe_output_parses() {
        let list = parse_described(
            br#"[
  {
    "EnclaveName": "nautilus",
    "EnclaveID": "i-1-enc2",
    "ProcessID": 12345,
    "EnclaveCID": 16,
    "NumberOfCPUs": 2,
    "CPUIDs": [1, 3],
    "MemoryMiB": 4096,
    "State": "RUNNING",
    "Flags": "NONE",
    "Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": "00"}
  }
]"#,
        )
        .expect("parses");
        assert_eq!(list[0].enclave_id, "i-1-enc2");
        assert_eq!(list[0].enclave_name.as_deref(), Some("nautilus"));
        assert_eq!(list[0].state, "RUNNING");
        assert_eq!(parse_described(b"[]").expect("empty"), []);
        let many = format!(
            "[{}]",
            vec![r#"{"EnclaveID":"x"}"#; MAX_LISTED + 1].join(",")
        );
        assert!(parse_described(many.as_bytes()).is_err());
        for garbage in [
            &b"nitro-cli: error"[..],
            b"[{\"EnclaveName\": 1}]",
            b"[{}]",
            b"{}",
        ] {
            assert!(parse_described(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn enclave_names_are_checked_and_matched_with_nitro_clis_suffix() {
        assert_eq!(enclave_name_for("team-a/Prod.1"), "team-a.prod.1");
        assert!(check_enclave_name("team-a.prod").is_ok());
        for bad in [
            "",
            "a_1",
            "a/b",
            "A",
            "a b",
            &"a".repeat(MAX_ENCLAVE_NAME + 1),
        ] {
            assert!(check_enclave_name(bad).is_err(), "{bad:?}");
        }
        assert!(is_ours("ns.db", "ns.db"));
        assert!(is_ours("ns.db_2", "ns.db"));
        for foreign in ["ns.db2", "ns.db_", "ns.db_x", "ns.d", "ns.db-1", "other"] {
            assert!(!is_ours(foreign, "ns.db"), "{foreign}");
        }
    }
}
