//! Sealed state: the enclave keeps its control plane's PKI and etcd data across restarts,
//! sealed under a data key that only an enclave the KMS key policy allows can unwrap.
//!
//! ```text
//! boot:  StateOffer (+ chunks) ─► header: UID ∈ {resourceUid} ∪ restoreFromUids,
//!                                  PCRs = own or ∈ acceptedMeasurements
//!                               ─► KeySource::unwrap(CiphertextBlob) (KMS Decrypt, Recipient)
//!                               ─► every chunk authenticated ─► PKI + etcd db (prepare)
//!        no snapshot          ─► KeySource::generate (KMS GenerateDataKey, Recipient)
//!        ─► material from the kept CAs (unless caGeneration rose) ─► etcd restored
//!        ─► etcd, kube-apiserver, … start
//! run:   every backupIntervalSeconds, and on a graceful stop: etcdctl snapshot save
//!        ─► PKI ‖ db sealed (crate::sealed) ─► streamed to the sidecar (Keeper)
//! ```
//!
//! The key comes from a [`KeySource`] made per boot by [`KeySources`] (the production one
//! speaks to KMS through `nautilus-kms`); nothing here knows KMS. A snapshot that fails any
//! check is never used: the boot is refused ([`StateError::refuses_boot`]) with a reason the
//! sidecar relays. A snapshot is one sealed file: `u32 BE` length ‖ [`KeptPki`] JSON ‖ etcd's
//! snapshot bytes, sealed as [`nautilus_protocol::sealed`] describes.

pub mod etcd;
pub mod kms;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use nautilus_protocol::nsm::{Nsm, NsmError};
use nautilus_protocol::sealed::{self, Opener, SealError, Sealer, SnapshotHeader};
use nautilus_protocol::wire::{
    AwsCredentials, EnclaveConfig, KmsConfig, MAX_SNAPSHOT_BYTES, MAX_STATE_ERROR_BYTES,
    RefusalKind, SnapshotRef, StateConfig, StateReport,
};
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::material::KeptPki;
use etcd::{EtcdError, Etcdctl, RestoreTarget};

/// The PCRs a snapshot records of the enclave that sealed it (those AWS defines).
pub const RECORDED_PCRS: [u16; 6] = [0, 1, 2, 3, 4, 8];
/// Largest PKI part of a snapshot.
pub const MAX_PKI_BYTES: usize = 1024 * 1024;
/// Longest error line in a report.
const MAX_ERROR_LINE: usize = MAX_STATE_ERROR_BYTES;

/// A 256-bit data key, zeroed when dropped.
pub struct DataKey(Box<[u8; 32]>);

impl DataKey {
    /// Wrap key bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(Box::new(bytes))
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        // Best effort (copies made on the way are not reached); black_box keeps the write.
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// Why a data key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// KMS (or the key policy) refused: the same request would be refused again.
    #[error("key refused: {0}")]
    Refused(String),
    /// KMS could not be reached or failed: a later attempt may succeed.
    #[error("key service unavailable: {0}")]
    Unavailable(String),
}

/// Where data keys come from: `generate` a new one (its wrapped form and the key) or `unwrap`
/// a wrapped one. Each call attests afresh (KMS Recipient).
pub trait KeySource: Send + Sync + std::fmt::Debug {
    /// A new data key: (`CiphertextBlob`, key).
    fn generate(&self) -> BoxFuture<'_, Result<(Vec<u8>, DataKey), KeyError>>;
    /// The key a `CiphertextBlob` wraps.
    fn unwrap<'a>(&'a self, wrapped: &'a [u8]) -> BoxFuture<'a, Result<DataKey, KeyError>>;
}

/// What a boot's [`KeySource`] is made from.
#[derive(Debug, Clone)]
pub struct KeyRequest {
    /// The KMS key.
    pub kms: KmsConfig,
    /// The credentials the sidecar relayed.
    pub credentials: Option<AwsCredentials>,
    /// The NSM for Recipient attestations.
    pub nsm: Arc<dyn Nsm>,
    /// `user_data` of those attestations ([`recipient_binding`]).
    pub user_data: Vec<u8>,
}

/// Makes the [`KeySource`] of a boot.
pub trait KeySources: Send + Sync + std::fmt::Debug {
    /// The key source for `request`.
    fn key_source(&self, request: KeyRequest) -> Result<Arc<dyn KeySource>, KeyError>;
}

/// `user_data` of the Recipient attestations made for KMS: the usual binding
/// ([`nautilus_protocol::Binding::v1`]) of the configuration, with zeros for the serving CA,
/// which does not exist yet when the key is needed (the CA comes out of the snapshot).
pub fn recipient_binding(config: &EnclaveConfig) -> Vec<u8> {
    nautilus_protocol::Binding::v1(config.digest(), [0; 32])
}

/// Why the state could not be restored or sealed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// `state` is set for the `k3s` distribution.
    #[error(
        "sealed state needs the kubernetes distribution (k3s keeps its own datastore, and cannot run here)"
    )]
    Distribution,
    /// The agent was started without a key source.
    #[error("this agent has no KMS client, so it cannot keep sealed state")]
    NoKeySource,
    /// The sidecar's offer broke the protocol.
    #[error("snapshot offer: {0}")]
    Offer(String),
    /// A file could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The data key could not be had.
    #[error("data key")]
    Key(#[from] KeyError),
    /// The offered snapshot failed a check: it is not used.
    #[error("snapshot {sequence} refused")]
    Refused {
        /// The snapshot's sequence (as its header says, or as the sidecar said).
        sequence: u64,
        /// The check it failed.
        source: SealError,
    },
    /// Sealing failed.
    #[error("sealing")]
    Seal(#[source] SealError),
    /// The snapshot's PKI part is not what this agent writes.
    #[error("snapshot {sequence}: the PKI part is malformed: {reason}")]
    Pki {
        /// The snapshot's sequence.
        sequence: u64,
        /// What is wrong.
        reason: String,
    },
    /// etcd could not save or restore.
    #[error("etcd")]
    Etcd(#[from] EtcdError),
    /// The NSM could not say this enclave's PCRs.
    #[error("reading this enclave's PCRs")]
    Nsm(#[from] NsmError),
    /// A blocking task failed.
    #[error("state task failed: {0}")]
    Task(String),
}

impl StateError {
    /// Whether the boot is refused for good (the same offer would fail the same way): a
    /// snapshot that failed a check, a key KMS refused, a configuration that cannot keep state.
    /// Otherwise the failure is of this moment (KMS unreachable, a file) and the sidecar's
    /// next connection tries again.
    pub fn refuses_boot(&self) -> bool {
        self.refusal_kind().is_some()
    }

    /// What a refusal of the boot for this error refused, if the boot is refused.
    pub fn refusal_kind(&self) -> Option<RefusalKind> {
        match self {
            Self::Distribution | Self::NoKeySource => Some(RefusalKind::Config),
            Self::Refused { .. } | Self::Pki { .. } => Some(RefusalKind::SnapshotRejected),
            Self::Key(KeyError::Refused(_)) => Some(RefusalKind::KeyRefused),
            _ => None,
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { what, path, source }
}

/// What the sidecar offered at boot, received.
#[derive(Debug, Default)]
pub struct Offered {
    /// The credentials it relays.
    pub credentials: Option<AwsCredentials>,
    /// The offered snapshot's sequence and the file it was received into.
    pub snapshot: Option<(u64, PathBuf)>,
}

/// Everything the state needs that does not come from the configuration.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// Makes the key source; `None`: this agent cannot keep state.
    pub key_sources: Option<Arc<dyn KeySources>>,
    /// `etcdctl`.
    pub etcdctl: PathBuf,
    /// `etcdutl`, when found (etcd ≥ 3.5).
    pub etcdutl: Option<PathBuf>,
}

/// The sealing side of a boot: the key, the wrapped key, this enclave's PCRs, the next
/// sequence.
struct Sealing {
    key: DataKey,
    blob: Vec<u8>,
    key_id: String,
    pcrs: BTreeMap<u8, String>,
    next_sequence: u64,
}

/// The state a boot starts from (see [`prepare`]).
pub struct Prepared {
    /// The PKI to keep; `None` on a fresh start.
    pub kept: Option<KeptPki>,
    /// The restored etcd snapshot file, to restore before etcd starts.
    pub etcd_db: Option<(PathBuf, u64)>,
    /// What the report says was restored (`None`: a fresh start, no snapshot offered).
    pub restored: Option<SnapshotRef>,
    /// Whether the CAs were made afresh (`caGeneration` rose) instead of restored.
    pub cas_rotated: bool,
    sealing: Sealing,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("restored", &self.restored)
            .finish_non_exhaustive()
    }
}

/// This enclave's PCRs as a snapshot records them.
pub fn own_pcrs(nsm: &dyn Nsm) -> Result<BTreeMap<u8, String>, NsmError> {
    let mut pcrs = BTreeMap::new();
    for index in RECORDED_PCRS {
        let value = nsm.describe_pcr(index)?;
        #[allow(clippy::cast_possible_truncation)]
        pcrs.insert(index as u8, hex::encode(value));
    }
    Ok(pcrs)
}

/// Get the data key and, when a snapshot was offered, check and open it: every check passes
/// before anything of it is returned. Runs before any material is made.
pub async fn prepare(
    options: &StateOptions,
    config: &EnclaveConfig,
    state: &StateConfig,
    nsm: Arc<dyn Nsm>,
    offered: Offered,
    work_dir: &Path,
) -> Result<Prepared, StateError> {
    if config.control_plane.distribution != "kubernetes" {
        return Err(StateError::Distribution);
    }
    let factory = options
        .key_sources
        .as_ref()
        .ok_or(StateError::NoKeySource)?;
    let pcrs = {
        let nsm = Arc::clone(&nsm);
        tokio::task::spawn_blocking(move || own_pcrs(nsm.as_ref()))
            .await
            .map_err(|e| StateError::Task(e.to_string()))??
    };
    let keys = factory.key_source(KeyRequest {
        kms: state.kms.clone(),
        credentials: offered.credentials.clone(),
        nsm,
        user_data: recipient_binding(config),
    })?;
    let Some((offered_sequence, path)) = offered.snapshot else {
        let (blob, key) = keys.generate().await?;
        info!("sealed state: no snapshot offered, starting fresh with a new data key");
        return Ok(Prepared {
            kept: None,
            etcd_db: None,
            restored: None,
            cas_rotated: false,
            sealing: Sealing {
                key,
                blob,
                key_id: state.kms.key_id.clone(),
                pcrs,
                next_sequence: 1,
            },
        });
    };
    let refused = |sequence: u64| move |source: SealError| StateError::Refused { sequence, source };
    // The header first: binding checks cost no KMS call.
    let (header, header_bytes) = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut file = std::io::BufReader::new(std::fs::File::open(&path)?);
            sealed::read_header(&mut file)
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
        .map_err(refused(offered_sequence))?
    };
    let sequence = header.sequence;
    let sealed_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    header.admits(state, &pcrs).map_err(refused(sequence))?;
    let key = keys.unwrap(&header.ciphertext_blob).await?;
    let db = work_dir
        .join("state")
        .join(format!("restore-{sequence}.db"));
    let opened = {
        let (path, db, header) = (path.clone(), db.clone(), header.clone());
        let data_key = *key.expose();
        tokio::task::spawn_blocking(move || {
            open_snapshot(&path, &header, &header_bytes, &data_key, &db)
        })
        .await
        .map_err(|e| StateError::Task(e.to_string()))?
    };
    let _ = std::fs::remove_file(&path);
    let mut kept = match opened {
        Ok(kept) => kept,
        Err(e) => {
            let _ = std::fs::remove_file(&db);
            return Err(e);
        }
    };
    let cas_rotated = state.ca_generation > header.ca_generation;
    if cas_rotated {
        info!(
            from = header.ca_generation,
            to = state.ca_generation,
            "sealed state: caGeneration rose, new CAs (same data)"
        );
        kept.cas = None;
    }
    // A configuration that names another KMS key seals from now on under a key of that one.
    let (key, blob, key_id) = if header.kms_key_id == state.kms.key_id {
        (
            key,
            header.ciphertext_blob.clone(),
            header.kms_key_id.clone(),
        )
    } else {
        let (blob, key) = keys.generate().await?;
        (key, blob, state.kms.key_id.clone())
    };
    info!(
        sequence,
        taken_unix_ms = header.taken_unix_ms,
        from_uid = %header.resource_uid,
        etcd_revision = header.etcd_revision,
        "sealed state: snapshot checked and opened"
    );
    Ok(Prepared {
        kept: Some(kept),
        etcd_db: Some((db, header.etcd_revision)),
        restored: Some(SnapshotRef {
            sequence,
            taken_unix_ms: header.taken_unix_ms,
            resource_uid: header.resource_uid.clone(),
            bytes: sealed_bytes,
        }),
        cas_rotated,
        sealing: Sealing {
            key,
            blob,
            key_id,
            pcrs,
            next_sequence: sequence.saturating_add(1),
        },
    })
}

/// Open a sealed snapshot file into its PKI and an etcd db file at `db`. Every chunk is
/// authenticated, and the end is confirmed, before this returns `Ok`.
pub fn open_snapshot(
    path: &Path,
    header: &SnapshotHeader,
    header_bytes: &[u8],
    data_key: &[u8; 32],
    db: &Path,
) -> Result<KeptPki, StateError> {
    let sequence = header.sequence;
    let refused = |source: SealError| StateError::Refused { sequence, source };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io("opening", path))?);
    // Skip the header: `read_header` already read and checked these bytes.
    let mut skip = vec![0u8; header_bytes.len()];
    file.read_exact(&mut skip).map_err(io("reading", path))?;
    if skip != header_bytes {
        return Err(refused(SealError::Header(
            "the file changed under the reader".into(),
        )));
    }
    let mut opener =
        Opener::new(header, header_bytes, data_key, file, MAX_SNAPSHOT_BYTES).map_err(refused)?;
    let mut len = [0u8; 4];
    opener
        .read_exact(&mut len)
        .map_err(|e| refused(sealed::unwrap_io(e)))?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_PKI_BYTES {
        return Err(StateError::Pki {
            sequence,
            reason: format!("{len} bytes, at most {MAX_PKI_BYTES}"),
        });
    }
    let mut pki = vec![0u8; len];
    opener
        .read_exact(&mut pki)
        .map_err(|e| refused(sealed::unwrap_io(e)))?;
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    }
    let mut out = std::fs::File::create(db).map_err(io("creating", db))?;
    std::io::copy(&mut opener, &mut out).map_err(|e| match e.get_ref() {
        Some(inner) if inner.is::<SealError>() => refused(sealed::unwrap_io(e)),
        _ => StateError::Io {
            what: "writing",
            path: db.to_path_buf(),
            source: e,
        },
    })?;
    opener.finish().map_err(refused)?;
    out.sync_all().map_err(io("syncing", db))?;
    // Parsed only once every byte authenticated.
    serde_json::from_slice(&pki).map_err(|e| StateError::Pki {
        sequence,
        reason: e.to_string(),
    })
}

/// Seal `kept` and the etcd snapshot at `db` into `out`, under `key`. Returns the sealed size.
pub fn seal_snapshot(
    header: &SnapshotHeader,
    key: &[u8; 32],
    kept: &KeptPki,
    db: &Path,
    out: &Path,
) -> Result<u64, StateError> {
    let pki = serde_json::to_vec(kept).map_err(|e| StateError::Pki {
        sequence: header.sequence,
        reason: e.to_string(),
    })?;
    let file = std::fs::File::create(out).map_err(io("creating", out))?;
    let mut sealer = Sealer::new(
        header,
        key,
        std::io::BufWriter::with_capacity(256 * 1024, file),
    )
    .map_err(StateError::Seal)?;
    let write_err = io("writing", out);
    let result = (|| {
        sealer.write_all(&u32::try_from(pki.len()).unwrap_or(u32::MAX).to_be_bytes())?;
        sealer.write_all(&pki)?;
        let mut input = std::fs::File::open(db)?;
        std::io::copy(&mut input, &mut sealer)?;
        Ok::<_, std::io::Error>(())
    })();
    result.map_err(write_err)?;
    let (writer, written) = sealer.finish().map_err(StateError::Seal)?;
    let file = writer.into_inner().map_err(|e| StateError::Io {
        what: "flushing",
        path: out.to_path_buf(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io("syncing", out))?;
    Ok(written)
}

/// A sealed snapshot ready for the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSnapshot {
    /// Its sequence.
    pub sequence: u64,
    /// The sealed file (in the work directory, enclave memory).
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// Takes and seals snapshots of a running control plane, one at a time.
pub struct Keeper {
    state: StateConfig,
    distribution: String,
    sealing: Mutex<Sealing>,
    etcd: Etcdctl,
    pki: KeptPki,
    encryption_config: PathBuf,
    dir: PathBuf,
    latest: watch::Sender<Option<SealedSnapshot>>,
    report: watch::Sender<StateReport>,
    delivered: watch::Sender<u64>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    crate::supervisor::unix_ms()
}

fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_ERROR_LINE {
        let mut end = MAX_ERROR_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
    }
    line
}

impl Keeper {
    /// A keeper for the boot `prepared` started, sealing `pki` (this boot's CAs and keys; the
    /// encryption configuration is read from `encryption_config` at each snapshot) and etcd's
    /// data through `etcd`, into files under `work_dir/state`.
    pub fn new(
        state: StateConfig,
        distribution: String,
        prepared: Prepared,
        etcd: Etcdctl,
        pki: KeptPki,
        encryption_config: PathBuf,
        work_dir: &Path,
    ) -> Result<Arc<Self>, StateError> {
        let dir = work_dir.join("state");
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        Ok(Arc::new(Self {
            state,
            distribution,
            sealing: Mutex::new(prepared.sealing),
            etcd,
            pki,
            encryption_config,
            dir,
            latest: watch::channel(None).0,
            report: watch::channel(StateReport {
                // Until this enclave seals one, the newest snapshot is the one it restored.
                last_snapshot: prepared.restored.clone(),
                restored: prepared.restored,
                last_error: None,
            })
            .0,
            delivered: watch::channel(0).0,
        }))
    }

    /// A connection handed snapshot `sequence` to the sidecar, last chunk included.
    pub fn mark_delivered(&self, sequence: u64) {
        self.delivered.send_if_modified(|d| {
            let newer = sequence > *d;
            if newer {
                *d = sequence;
            }
            newer
        });
    }

    /// Wait until snapshot `sequence` (or a later one) was handed to the sidecar, at most
    /// `timeout`; whether it was.
    pub async fn wait_delivered(&self, sequence: u64, timeout: Duration) -> bool {
        let mut delivered = self.delivered.subscribe();
        tokio::time::timeout(timeout, delivered.wait_for(|d| *d >= sequence))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The latest sealed snapshot and the ones that follow.
    pub fn snapshots(&self) -> watch::Receiver<Option<SealedSnapshot>> {
        self.latest.subscribe()
    }

    /// The state part of the reports.
    pub fn report(&self) -> watch::Receiver<StateReport> {
        self.report.subscribe()
    }

    /// Take, seal and publish a snapshot now (after one in progress, if any).
    pub async fn snapshot_now(&self) -> Result<SealedSnapshot, StateError> {
        let result = self.take().await;
        self.report.send_modify(|report| match &result {
            Ok((snapshot, taken, _)) => {
                report.last_snapshot = Some(SnapshotRef {
                    sequence: snapshot.sequence,
                    taken_unix_ms: *taken,
                    resource_uid: self.state.resource_uid.clone(),
                    bytes: snapshot.bytes,
                });
                report.last_error = None;
            }
            Err(e) => report.last_error = Some(one_line(&crate::errors::error_chain(e))),
        });
        let (snapshot, _, duration) = result?;
        info!(
            sequence = snapshot.sequence,
            bytes = snapshot.bytes,
            ms = duration.as_millis(),
            "sealed state: snapshot taken"
        );
        let previous = self.latest.send_replace(Some(snapshot.clone()));
        // A connection streaming the previous file holds it open; unlinking it is safe.
        if let Some(previous) = previous {
            let _ = std::fs::remove_file(previous.path);
        }
        Ok(snapshot)
    }

    async fn take(&self) -> Result<(SealedSnapshot, u64, Duration), StateError> {
        let mut sealing = self.sealing.lock().await;
        let started = Instant::now();
        let sequence = sealing.next_sequence;
        let db = self.dir.join(format!("etcd-{sequence}.db"));
        let _ = std::fs::remove_file(&db);
        // When the consistent copy begins: it holds everything committed before this moment.
        let taken = now_ms();
        let saved = self.etcd.save(&db).await;
        let revision = match saved {
            Ok(revision) => revision,
            Err(e) => {
                let _ = std::fs::remove_file(&db);
                return Err(e.into());
            }
        };
        let encryption_config = match std::fs::read_to_string(&self.encryption_config) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io("reading", &self.encryption_config)(e)),
        };
        let kept = KeptPki {
            encryption_config,
            ..self.pki.clone()
        };
        let header = SnapshotHeader {
            format_version: sealed::FORMAT_VERSION,
            resource_uid: self.state.resource_uid.clone(),
            sequence,
            taken_unix_ms: taken,
            pcrs: sealing.pcrs.clone(),
            ca_generation: self.state.ca_generation,
            distribution: self.distribution.clone(),
            etcd_revision: revision,
            kms_key_id: sealing.key_id.clone(),
            ciphertext_blob: sealing.blob.clone(),
            salt: sealed::random_salt(),
        };
        let out = self.dir.join(format!("sealed-{sequence}.snap"));
        let key = *sealing.key.expose();
        let sealed = {
            let (db, out) = (db.clone(), out.clone());
            tokio::task::spawn_blocking(move || seal_snapshot(&header, &key, &kept, &db, &out))
                .await
                .map_err(|e| StateError::Task(e.to_string()))
        };
        let _ = std::fs::remove_file(&db);
        let bytes = match sealed.and_then(|r| r) {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = std::fs::remove_file(&out);
                return Err(e);
            }
        };
        sealing.next_sequence = sequence.saturating_add(1);
        Ok((
            SealedSnapshot {
                sequence,
                path: out,
                bytes,
            },
            taken,
            started.elapsed(),
        ))
    }

    /// Snapshot every `backupIntervalSeconds` until the task is aborted; a failure is reported
    /// and retried at the next tick.
    pub fn start_periodic(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let keeper = Arc::clone(self);
        let every = Duration::from_secs(u64::from(self.state.backup_interval_seconds.max(1)));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(e) = keeper.snapshot_now().await {
                    warn!(error = %crate::errors::error_chain(&e), "sealed state: snapshot failed");
                }
            }
        })
    }

    /// After a restore on etcd 3.4 (no `--bump-revision`): compact at the restored revision once
    /// etcd answers, so watches from before it relist. Retries for a minute.
    pub fn compact_after_restore(self: &Arc<Self>, revision: u64) -> tokio::task::JoinHandle<()> {
        let keeper = Arc::clone(self);
        tokio::spawn(async move {
            for _ in 0..60 {
                match keeper.etcd.compact(revision).await {
                    Ok(()) => {
                        info!(revision, "sealed state: compacted at the restored revision");
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "compaction not yet possible"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            warn!(
                revision,
                "sealed state: could not compact at the restored revision"
            );
        })
    }
}

/// Restore the etcd snapshot at `db` into `target` (any data directory there is removed
/// first: the sealed state, not what a previous process left, is the truth). Returns whether
/// revisions were bumped.
pub async fn restore_etcd(
    etcd: &Etcdctl,
    db: &Path,
    target: &RestoreTarget,
) -> Result<bool, StateError> {
    match std::fs::remove_dir_all(&target.data_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing", &target.data_dir)(e)),
    }
    if let Some(parent) = target.data_dir.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    let bumped = etcd.restore(db, target).await;
    let _ = std::fs::remove_file(db);
    Ok(bumped?)
}
