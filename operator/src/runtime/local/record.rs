//! Adoption: the record a local sidecar leaves in its resource's work directory, so that the
//! next operator process adopts it (same boot configuration) or stops it (another one) instead
//! of starting a second one.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nautilus_lifetime::Ended;
use nautilus_protocol::wire::BootConfig;

use super::super::{Result, RuntimeError};
use super::LocalProcess;
use super::process::{Handle, localhost, same_process};

/// Name of the file in a resource's work directory that records its running sidecar, so that
/// the next operator process adopts it (or stops it) instead of starting a second one.
pub(super) const SIDECAR_STATE_FILE: &str = "sidecar.json";

/// How often (20 ms apart) a recorded process's command line is read while it is empty (a
/// process in the middle of exec shows none).
const CMDLINE_TRIES: u32 = 50;

/// Longest [`SIDECAR_STATE_FILE`] read (it is a few hundred bytes).
const MAX_STATE_FILE: u64 = 4096;

/// What [`SIDECAR_STATE_FILE`] records of a started sidecar.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct SidecarRecord {
    /// Its process id.
    pub(super) pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22): a pid reused by
    /// another process has another start time.
    pub(super) start_ticks: u64,
    /// Port of its HTTP API on 127.0.0.1.
    pub(super) http_port: u16,
    /// Port of its API proxy on [`SidecarRecord::api_ip`].
    pub(super) api_port: u16,
    /// Address of its API proxy (absent in records of operators before it: 127.0.0.1).
    #[serde(default = "localhost")]
    pub(super) api_ip: IpAddr,
    /// Whether its agent runs in a network namespace of its own (absent in records of
    /// operators before it: it does not).
    #[serde(default)]
    pub(super) isolated_network: bool,
    /// Digest of the configuration it boots.
    pub(super) digest_hex: String,
    /// When it was started (Unix milliseconds).
    pub(super) started_ms: u64,
}

/// The sidecar [`SIDECAR_STATE_FILE`] in `dir` records, if it is still running and is the one
/// of this resource (its command line names `boot_path`).
pub(super) async fn recorded(
    dir: &std::path::Path,
    boot_path: &std::path::Path,
) -> Option<SidecarRecord> {
    use tokio::io::AsyncReadExt as _;
    let file = tokio::fs::File::open(dir.join(SIDECAR_STATE_FILE))
        .await
        .ok()?;
    let mut text = Vec::new();
    file.take(MAX_STATE_FILE)
        .read_to_end(&mut text)
        .await
        .ok()?;
    let record: SidecarRecord = match serde_json::from_slice(&text) {
        Ok(record) => record,
        Err(err) => {
            tracing::warn!(dir = %dir.display(), error = %err, "ignoring an unreadable sidecar record");
            return None;
        }
    };
    let ours = format!("--boot-config={}", boot_path.display());
    // A process in the middle of exec (just started) shows an empty command line for a moment.
    let mut cmdline = Vec::new();
    for _ in 0..CMDLINE_TRIES {
        if !same_process(record.pid, record.start_ticks) {
            return None;
        }
        cmdline = tokio::fs::read(format!("/proc/{}/cmdline", record.pid))
            .await
            .ok()?;
        if !cmdline.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == ours.as_bytes())
        .then_some(record)
}

/// Write `record` to `dir`'s [`SIDECAR_STATE_FILE`] (through a temporary file, so a crash
/// leaves the old record or the new one, never half of one).
pub(super) async fn write_record(
    dir: &std::path::Path,
    record: &SidecarRecord,
) -> std::io::Result<()> {
    let tmp = dir.join(format!("{SIDECAR_STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, dir.join(SIDECAR_STATE_FILE)).await
}

/// What a previous operator process left running for a resource ([`left_behind`]).
pub(super) enum Left {
    /// Its sidecar runs this very boot configuration on this operator's network: adopt it.
    Adoptable(Box<LocalProcess>),
    /// Its sidecar runs another configuration, or on another network: stop it
    /// ([`stop_left`]).
    Other(SidecarRecord),
}

/// After an operator restart: the sidecar a previous operator process started for this
/// resource, if it still runs, and whether it runs the boot configuration `boot` (same bytes,
/// so the same configuration and nonce: its attestation stays valid) on the network this
/// operator would give it (`network`: the API publish address, and whether isolated).
pub(super) async fn left_behind(
    dir: &std::path::Path,
    boot_path: &std::path::Path,
    boot: &[u8],
    digest_hex: &str,
    network: (IpAddr, bool),
) -> Option<Left> {
    let record = recorded(dir, boot_path).await?;
    Some(
        match adoptable(&record, boot_path, boot, digest_hex, network).await {
            Some(adopted) => Left::Adoptable(Box::new(adopted)),
            None => Left::Other(record),
        },
    )
}

/// Stop a sidecar of another configuration that a previous operator process left in `dir`.
pub(super) async fn stop_left(dir: &std::path::Path, record: &SidecarRecord) {
    tracing::info!(pid = record.pid, dir = %dir.display(), "stopping a local sidecar of another configuration that a previous operator process left");
    let _ = Handle::Adopted {
        pid: record.pid,
        start_ticks: record.start_ticks,
    }
    .terminate()
    .await;
}

/// `record` as a process of this operator, if it runs `boot` (same bytes on disk, same digest)
/// on `network`.
async fn adoptable(
    record: &SidecarRecord,
    boot_path: &std::path::Path,
    boot: &[u8],
    digest_hex: &str,
    network: (IpAddr, bool),
) -> Option<LocalProcess> {
    let same_boot = tokio::fs::read(boot_path)
        .await
        .is_ok_and(|on_disk| on_disk == boot);
    (same_boot
        && record.digest_hex == digest_hex
        && (record.api_ip, record.isolated_network) == network)
        .then(|| LocalProcess {
            child: Handle::Adopted {
                pid: record.pid,
                start_ticks: record.start_ticks,
            },
            digest_hex: record.digest_hex.clone(),
            http: SocketAddr::from(([127, 0, 0, 1], record.http_port)),
            api: SocketAddr::new(record.api_ip, record.api_port),
            started_ms: record.started_ms,
            exit_reported: false,
        })
}

/// The boot configuration as the sidecar reads it from its file.
pub(super) fn boot_json(boot: &BootConfig) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(boot).map_err(|e| RuntimeError::Local {
        what: "serializing the boot config".into(),
        source: std::io::Error::other(e),
    })
}

/// Stop the sidecar `dir` records, if it still runs (the resource is being deleted): its pid
/// and how it ended.
pub(super) async fn stop_recorded(
    dir: &std::path::Path,
    boot_path: &std::path::Path,
) -> Option<(Option<u32>, Ended)> {
    let record = recorded(dir, boot_path).await?;
    tracing::info!(pid = record.pid, dir = %dir.display(), "stopping a local sidecar a previous operator process left");
    let ended = Handle::Adopted {
        pid: record.pid,
        start_ticks: record.start_ticks,
    }
    .terminate()
    .await;
    Some((Some(record.pid), ended))
}
