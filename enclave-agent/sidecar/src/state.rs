//! Sealed state on the host: the snapshots the agent streams out, stored under
//! `<--state-dir>/snapshots/`, the newest offered back at boot, and the AWS credentials the
//! sidecar relays for the agent's KMS calls.
//!
//! The sidecar holds no key and reads only the snapshots' plaintext headers (sequence, time,
//! resource); it can withhold a snapshot or offer an older one (the agent reports what it
//! restored, so that shows), but it can neither read nor forge one.
//!
//! Storing is crash-safe: chunks go to `.incoming-<sequence>.tmp`, which is fsynced, checked
//! (a sealed header whose sequence is the stream's), renamed to
//! `snapshot-<sequence, 20 digits>.sealed`, and the directory fsynced; then all but the newest
//! `retain` are removed. A crash leaves either the old set or the new one, and a leftover
//! temporary file is removed at the next start.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use nautilus_protocol::sealed;
use nautilus_protocol::wire::{
    AwsCredentials, MAX_SNAPSHOT_BYTES, OfferedSnapshot, SnapshotAssembly, SnapshotChunk,
};

/// The snapshots' directory under `--state-dir`.
pub const SNAPSHOTS_DIR: &str = "snapshots";
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".sealed";
const INCOMING: &str = ".incoming-";

/// Why a snapshot could not be stored, or credentials read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The chunks do not form one bounded, contiguous snapshot.
    #[error("snapshot stream: {0}")]
    Stream(#[from] nautilus_protocol::wire::ChunkError),
    /// The stored bytes are not a sealed snapshot of the announced sequence.
    #[error("snapshot {sequence}: {reason}")]
    Header {
        /// The stream's sequence.
        sequence: u64,
        /// What is wrong.
        reason: String,
    },
    /// The credentials file is not what `--aws-credentials-file` takes, or the metadata
    /// service gave none.
    #[error("credentials: {0}")]
    Credentials(String),
}

impl StateError {
    /// A short snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Stream(_) => "stream",
            Self::Header { .. } => "header",
            Self::Credentials(_) => "credentials",
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |source| StateError::Io { what, path, source }
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Its sequence (from its name, checked against its header when it was stored).
    pub sequence: u64,
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

impl Stored {
    /// What the sidecar tells the agent about it.
    pub fn offer(&self) -> OfferedSnapshot {
        OfferedSnapshot {
            sequence: self.sequence,
            bytes: self.bytes,
        }
    }
}

struct Incoming {
    assembly: SnapshotAssembly,
    file: std::fs::File,
    path: PathBuf,
}

/// The snapshots of one resource, on the host's disk.
pub struct SnapshotStore {
    dir: PathBuf,
    retain: usize,
    incoming: Option<Incoming>,
    /// The resources whose snapshots are offered: this one and those it may restore from.
    /// Empty: any (tests of the store alone).
    offered_uids: Vec<String>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("dir", &self.dir)
            .field("retain", &self.retain)
            .finish_non_exhaustive()
    }
}

fn sequence_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

impl SnapshotStore {
    /// The store under `state_dir`, keeping the newest `retain` (at least one). Removes what
    /// an interrupted store left.
    pub fn open(state_dir: &Path, retain: u32) -> Result<Self, StateError> {
        let dir = state_dir.join(SNAPSHOTS_DIR);
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let entry = entry.map_err(io("listing", &dir))?;
            if entry.file_name().to_string_lossy().starts_with(INCOMING) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io("removing", &path))?;
            }
        }
        Ok(Self {
            dir,
            retain: usize::try_from(retain.max(1)).unwrap_or(usize::MAX),
            incoming: None,
            offered_uids: Vec::new(),
        })
    }

    /// Offer only snapshots whose header names one of `uids` (the resource's own UID and
    /// `restoreFromUIDs`): a retained volume or directory of a deleted resource of the same name
    /// is left alone rather than offered to its successor, which would refuse it.
    pub fn offering_only(mut self, uids: Vec<String>) -> Self {
        self.offered_uids = uids;
        self
    }

    /// Where the snapshots are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every stored snapshot, oldest first.
    pub fn list(&self) -> Result<Vec<Stored>, StateError> {
        let mut stored = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
            let entry = entry.map_err(io("listing", &self.dir))?;
            let Some(sequence) = sequence_of(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            let meta = entry.metadata().map_err(io("reading", &entry.path()))?;
            if meta.is_file() {
                stored.push(Stored {
                    sequence,
                    path: entry.path(),
                    bytes: meta.len(),
                });
            }
        }
        stored.sort_by_key(|s| s.sequence);
        Ok(stored)
    }

    /// The snapshot offered at boot: the one with the highest sequence among those whose
    /// header names a resource of [`SnapshotStore::offering_only`] (a file whose header does
    /// not parse is offered all the same when it is the newest: the agent refuses it, and the
    /// condition says why, rather than it being skipped in silence).
    pub fn newest(&self) -> Result<Option<Stored>, StateError> {
        let mut stored = self.list()?;
        if self.offered_uids.is_empty() {
            return Ok(stored.pop());
        }
        while let Some(candidate) = stored.pop() {
            let header = std::fs::File::open(&candidate.path)
                .ok()
                .and_then(|file| sealed::read_header(&mut std::io::BufReader::new(file)).ok());
            match header {
                Some((header, _)) if !self.offered_uids.contains(&header.resource_uid) => {
                    tracing::info!(
                        path = %candidate.path.display(),
                        resource = %header.resource_uid,
                        "sealed state: a snapshot of another resource is not offered"
                    );
                }
                _ => return Ok(Some(candidate)),
            }
        }
        Ok(None)
    }

    /// Drop a snapshot being received (the link dropped mid-stream).
    pub fn abort_incoming(&mut self) {
        if let Some(incoming) = self.incoming.take() {
            let _ = std::fs::remove_file(incoming.path);
        }
    }

    /// Take one chunk from the agent; the stored snapshot once its last chunk arrived.
    pub fn receive(&mut self, chunk: &SnapshotChunk) -> Result<Option<Stored>, StateError> {
        let result = self.receive_inner(chunk);
        if result.is_err() {
            self.abort_incoming();
        }
        result
    }

    fn receive_inner(&mut self, chunk: &SnapshotChunk) -> Result<Option<Stored>, StateError> {
        if chunk.offset == 0 {
            // A new stream (the previous one, if any, was cut: a reconnect restarts it).
            self.abort_incoming();
            let path = self.dir.join(format!("{INCOMING}{}.tmp", chunk.sequence));
            let file = std::fs::File::create(&path).map_err(io("creating", &path))?;
            self.incoming = Some(Incoming {
                assembly: SnapshotAssembly::new(MAX_SNAPSHOT_BYTES, None),
                file,
                path,
            });
        }
        let Some(incoming) = self.incoming.as_mut() else {
            return Err(StateError::Stream(
                nautilus_protocol::wire::ChunkError::Offset {
                    found: chunk.offset,
                    expected: 0,
                },
            ));
        };
        let last = incoming.assembly.accept(chunk)?;
        incoming
            .file
            .write_all(&chunk.data)
            .map_err(io("writing", &incoming.path))?;
        if !last {
            return Ok(None);
        }
        let Some(incoming) = self.incoming.take() else {
            return Ok(None);
        };
        let bytes = incoming.assembly.received();
        incoming
            .file
            .sync_all()
            .map_err(io("syncing", &incoming.path))?;
        drop(incoming.file);
        let checked = std::fs::File::open(&incoming.path)
            .map_err(io("reading", &incoming.path))
            .and_then(|file| {
                sealed::read_header(&mut std::io::BufReader::new(file)).map_err(|e| {
                    StateError::Header {
                        sequence: chunk.sequence,
                        reason: e.to_string(),
                    }
                })
            })
            .and_then(|(header, _)| {
                if header.sequence == chunk.sequence {
                    Ok(())
                } else {
                    Err(StateError::Header {
                        sequence: chunk.sequence,
                        reason: format!("its header says sequence {}", header.sequence),
                    })
                }
            });
        if let Err(e) = checked {
            let _ = std::fs::remove_file(&incoming.path);
            return Err(e);
        }
        let path = self
            .dir
            .join(format!("{PREFIX}{:020}{SUFFIX}", chunk.sequence));
        std::fs::rename(&incoming.path, &path).map_err(io("renaming", &incoming.path))?;
        sync_dir(&self.dir)?;
        self.prune()?;
        Ok(Some(Stored {
            sequence: chunk.sequence,
            path,
            bytes,
        }))
    }

    /// Remove all but the newest `retain` snapshots.
    pub fn prune(&self) -> Result<usize, StateError> {
        let stored = self.list()?;
        let excess = stored.len().saturating_sub(self.retain);
        for old in &stored[..excess] {
            std::fs::remove_file(&old.path).map_err(io("removing", &old.path))?;
        }
        if excess > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(excess)
    }
}

/// Where the relayed AWS credentials come from, in the AWS SDKs' order, read again at every
/// connection so rotated credentials are picked up: a file (`--aws-credentials-file`, the AWS
/// shared credentials format, profile `default`); else the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); else the instance role's, from the metadata
/// service ([`crate::imds`]) when it is enabled; else none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CredentialSource {
    /// `--aws-credentials-file`.
    pub file: Option<PathBuf>,
    /// The metadata service, when enabled.
    pub imds: Option<crate::imds::Imds>,
}

/// Largest credentials file read.
const MAX_CREDENTIALS_FILE: u64 = 64 * 1024;

impl CredentialSource {
    /// The credentials now, if any.
    pub async fn load(&self) -> Result<Option<AwsCredentials>, StateError> {
        let credentials = match &self.file {
            Some(path) => {
                let meta = std::fs::metadata(path).map_err(io("reading", path))?;
                if meta.len() > MAX_CREDENTIALS_FILE {
                    return Err(StateError::Credentials(format!(
                        "{} is over {MAX_CREDENTIALS_FILE} bytes",
                        path.display()
                    )));
                }
                let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
                Some(parse_shared_credentials(&text, "default")?)
            }
            None => {
                let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
                    (Some(access_key_id), Some(secret_access_key)) => Some(AwsCredentials {
                        access_key_id,
                        secret_access_key,
                        session_token: var("AWS_SESSION_TOKEN"),
                    }),
                    _ => match &self.imds {
                        Some(imds) => Some(imds.credentials().await.map_err(|e| {
                            StateError::Credentials(format!("instance metadata: {e}"))
                        })?),
                        None => None,
                    },
                }
            }
        };
        if let Some(c) = &credentials {
            c.check().map_err(StateError::Credentials)?;
        }
        Ok(credentials)
    }
}

/// The `profile` section of an AWS shared credentials file (`aws_access_key_id`,
/// `aws_secret_access_key`, `aws_session_token`).
pub fn parse_shared_credentials(text: &str, profile: &str) -> Result<AwsCredentials, StateError> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(StateError::Credentials(
                "a line in the profile is not key = value".into(),
            ));
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token: token,
        }),
        _ => Err(StateError::Credentials(format!(
            "profile [{profile}] needs aws_access_key_id and aws_secret_access_key"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nautilus_protocol::sealed::{FORMAT_VERSION, Sealer, SnapshotHeader};
    use nautilus_protocol::wire::chunks_of;

    fn sealed(sequence: u64, body: usize) -> Vec<u8> {
        sealed_for("uid", sequence, body)
    }

    fn sealed_for(uid: &str, sequence: u64, body: usize) -> Vec<u8> {
        let header = SnapshotHeader {
            format_version: FORMAT_VERSION,
            resource_uid: uid.into(),
            sequence,
            taken_unix_ms: 1,
            pcrs: [(0u8, "00".repeat(48))].into(),
            ca_generation: 0,
            distribution: "kubernetes".into(),
            etcd_revision: 1,
            kms_key_id: "k".into(),
            ciphertext_blob: vec![1; 8],
            salt: vec![2; 32],
        };
        let mut sealer = Sealer::new(&header, &[3; 32], Vec::new()).expect("sealer");
        sealer.write_all(&vec![4; body]).expect("write");
        sealer.finish().expect("finish").0
    }

    fn store_all(store: &mut SnapshotStore, sequence: u64, bytes: &[u8]) -> Stored {
        let chunks = chunks_of(sequence, bytes);
        let (last, rest) = chunks.split_last().expect("chunks");
        for c in rest {
            assert_eq!(store.receive(c).expect("chunk"), None);
        }
        store.receive(last).expect("last").expect("stored")
    }

    #[test]
    fn snapshots_are_stored_whole_the_newest_offered_and_retention_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = SnapshotStore::open(dir.path(), 2).expect("store");
        assert_eq!(store.newest().expect("list"), None);
        let one = sealed(1, 100_000);
        let stored = store_all(&mut store, 1, &one);
        assert_eq!(std::fs::read(&stored.path).expect("read"), one);
        assert_eq!(stored.bytes, one.len() as u64);
        store_all(&mut store, 2, &sealed(2, 10));
        store_all(&mut store, 3, &sealed(3, 10));
        let list = store.list().expect("list");
        assert_eq!(
            list.iter().map(|s| s.sequence).collect::<Vec<_>>(),
            vec![2, 3],
            "the newest two are kept"
        );
        assert_eq!(store.newest().expect("newest").map(|s| s.sequence), Some(3));
        // Nothing but the snapshots is left in the directory.
        let names: Vec<_> = std::fs::read_dir(store.dir())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // A number in the name is ordered as a number, not as text.
        store_all(&mut store, 10, &sealed(10, 10));
        assert_eq!(
            store.newest().expect("newest").map(|s| s.sequence),
            Some(10)
        );
    }

    #[test]
    fn only_snapshots_of_this_resource_or_those_it_restores_from_are_offered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = SnapshotStore::open(dir.path(), 5)
            .expect("store")
            .offering_only(vec!["mine".into(), "predecessor".into()]);
        store_all(&mut store, 1, &sealed_for("predecessor", 1, 10));
        store_all(&mut store, 2, &sealed_for("mine", 2, 10));
        // A retained snapshot of a deleted namesake, newer than ours: left alone.
        store_all(&mut store, 7, &sealed_for("namesake", 7, 10));
        assert_eq!(store.newest().expect("newest").map(|s| s.sequence), Some(2));
        let only_predecessor = SnapshotStore::open(dir.path(), 5)
            .expect("store")
            .offering_only(vec!["predecessor".into()]);
        assert_eq!(
            only_predecessor
                .newest()
                .expect("newest")
                .map(|s| s.sequence),
            Some(1)
        );
        let stranger = SnapshotStore::open(dir.path(), 5)
            .expect("store")
            .offering_only(vec!["stranger".into()]);
        assert_eq!(stranger.newest().expect("newest"), None);
    }

    #[test]
    fn a_cut_or_false_stream_never_becomes_a_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = SnapshotStore::open(dir.path(), 3).expect("store");
        let bytes = sealed(5, 200_000);
        let chunks = chunks_of(5, &bytes);
        // Cut: the link dropped mid-stream.
        store.receive(&chunks[0]).expect("first");
        store.abort_incoming();
        assert_eq!(store.newest().expect("list"), None);
        // A gap.
        store.receive(&chunks[0]).expect("first");
        assert!(store.receive(&chunks[2]).is_err());
        // A chunk that does not start a stream.
        assert!(store.receive(&chunks[1]).is_err());
        // Not a sealed snapshot, or one whose header names another sequence.
        for (sequence, bytes) in [(6, vec![0u8; 100]), (7, sealed(8, 10))] {
            let chunks = chunks_of(sequence, &bytes);
            let (last, rest) = chunks.split_last().expect("chunks");
            for c in rest {
                store.receive(c).expect("chunk");
            }
            let err = store.receive(last).expect_err("refused");
            assert_eq!(err.label(), "header", "{err}");
        }
        assert_eq!(store.newest().expect("list"), None);
        // What an interrupted store left is removed at the next start.
        store.receive(&chunks[0]).expect("first");
        drop(store);
        let store = SnapshotStore::open(dir.path(), 3).expect("reopen");
        assert_eq!(
            std::fs::read_dir(store.dir()).expect("dir").count(),
            0,
            "no temporary file left"
        );
    }

    #[tokio::test]
    async fn credentials_come_from_the_shared_file_format() {
        let text = "# comment\n[other]\naws_access_key_id = NO\n[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key=secret/key+1\naws_session_token = tok\n";
        let c = parse_shared_credentials(text, "default").expect("parses");
        assert_eq!(c.access_key_id, "AKIAEXAMPLE");
        assert_eq!(c.secret_access_key, "secret/key+1");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        assert!(parse_shared_credentials("[default]\naws_access_key_id=a\n", "default").is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials");
        std::fs::write(
            &path,
            "[default]\naws_access_key_id=a b\naws_secret_access_key=s\n",
        )
        .expect("write");
        let source = CredentialSource {
            file: Some(path),
            imds: None,
        };
        assert!(source.load().await.is_err(), "a space is not a credential");
    }
}
