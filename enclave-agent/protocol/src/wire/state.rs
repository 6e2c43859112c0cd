//! Sealed state on the link: what the measured configuration says about it ([`StateConfig`]),
//! what the sidecar offers at boot ([`StateOffer`] and the offered snapshot's
//! [`SnapshotChunk`]s), and the snapshots the agent streams out (more [`SnapshotChunk`]s).
//!
//! ```text
//! sidecar ──BootConfig──► agent
//! sidecar ──StateOffer──► agent    (only when config.state is set) credentials it relays,
//!                                  the newest stored snapshot's sequence and size, or none
//! sidecar ──SnapshotChunk*► agent  that snapshot, offset by offset, the last one marked
//! sidecar ◄─SnapshotChunk*─ agent  every snapshot the agent seals, the same way
//! ```
//!
//! A snapshot is at most [`MAX_SNAPSHOT_BYTES`] and travels in chunks of at most
//! [`SNAPSHOT_CHUNK_BYTES`] (so a chunk's base64 fits a frame); a chunk must start where the
//! previous one ended ([`SnapshotAssembly`]). The bytes are sealed (see [`crate::sealed`]):
//! the sidecar stores and relays them, it can read neither the key nor the state.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::config::{Measurements, StateConfig};

/// Largest sealed snapshot either side accepts: 1 GiB. etcd's default backend quota is 2 GiB,
/// but an enclave's control plane with a 1 GiB database has outgrown its memory long before.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// Largest chunk of snapshot bytes in one [`SnapshotChunk`]: its base64 (60 KiB) and the JSON
/// around it stay within [`super::MAX_FRAME_BODY`].
pub const SNAPSHOT_CHUNK_BYTES: usize = 45 * 1024;
/// Most UIDs a configuration may restore from besides its own.
pub const MAX_RESTORE_UIDS: usize = 16;
/// Most measurements a configuration may accept besides the enclave's own.
pub const MAX_ACCEPTED_MEASUREMENTS: usize = 16;
/// Longest UID, KMS key id, region or endpoint, in bytes.
pub const MAX_STATE_STRING: usize = 2048;
/// Longest AWS credential field, in bytes (a session token is about 1–2 KiB).
pub const MAX_CREDENTIAL_BYTES: usize = 4096;
/// Most snapshots a sidecar may be told to keep.
pub const MAX_RETAIN: u32 = 1000;

/// Why a [`StateConfig`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state configuration: {0}")]
pub struct StateConfigError(pub String);

fn bounded(what: &str, value: &str) -> Result<(), StateConfigError> {
    if value.is_empty() || value.len() > MAX_STATE_STRING || value.chars().any(char::is_control) {
        return Err(StateConfigError(format!(
            "{what} must be 1 to {MAX_STATE_STRING} bytes without control characters"
        )));
    }
    Ok(())
}

impl Measurements {
    /// At least one PCR, indices 0 to 31, each value 96 lowercase hex digits.
    pub fn check(&self) -> Result<(), StateConfigError> {
        if self.pcrs.is_empty() {
            return Err(StateConfigError(
                "an accepted measurement names at least one PCR".into(),
            ));
        }
        for (index, value) in &self.pcrs {
            if *index > 31 {
                return Err(StateConfigError(format!("PCR index {index} is over 31")));
            }
            if value.len() != 96
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(StateConfigError(format!(
                    "PCR{index} must be 96 lowercase hex digits"
                )));
            }
        }
        Ok(())
    }

    /// Whether `pcrs` has every PCR this measurement names, with the same value.
    pub fn matches(&self, pcrs: &BTreeMap<u8, String>) -> bool {
        !self.pcrs.is_empty()
            && self
                .pcrs
                .iter()
                .all(|(index, value)| pcrs.get(index) == Some(value))
    }
}

impl StateConfig {
    /// Every value within its limits: the agent refuses any other configuration (parsing it
    /// fails), so a host cannot make the agent keep more than it should.
    pub fn check(&self) -> Result<(), StateConfigError> {
        bounded("resourceUID", &self.resource_uid)?;
        if self.restore_from_uids.len() > MAX_RESTORE_UIDS {
            return Err(StateConfigError(format!(
                "at most {MAX_RESTORE_UIDS} restoreFromUIDs"
            )));
        }
        for uid in &self.restore_from_uids {
            bounded("a restoreFromUIDs entry", uid)?;
        }
        if self.accepted_measurements.len() > MAX_ACCEPTED_MEASUREMENTS {
            return Err(StateConfigError(format!(
                "at most {MAX_ACCEPTED_MEASUREMENTS} acceptedMeasurements"
            )));
        }
        for measurement in &self.accepted_measurements {
            measurement.check()?;
        }
        if self.backup_interval_seconds == 0 {
            return Err(StateConfigError(
                "backupIntervalSeconds must be at least 1".into(),
            ));
        }
        if self.retain == 0 || self.retain > MAX_RETAIN {
            return Err(StateConfigError(format!(
                "retain must be 1 to {MAX_RETAIN}"
            )));
        }
        bounded("kms.keyID", &self.kms.key_id)?;
        bounded("kms.region", &self.kms.region)?;
        if let Some(endpoint) = &self.kms.endpoint {
            bounded("kms.endpoint", endpoint)?;
        }
        Ok(())
    }

    /// Whether a snapshot of resource `uid` may be restored here.
    pub fn restores_from(&self, uid: &str) -> bool {
        uid == self.resource_uid || self.restore_from_uids.iter().any(|u| u == uid)
    }
}

pub(super) fn checked_state<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<StateConfig>, D::Error> {
    let state = Option::<StateConfig>::deserialize(deserializer)?;
    if let Some(state) = &state {
        state.check().map_err(serde::de::Error::custom)?;
    }
    Ok(state)
}

/// AWS credentials the sidecar relays for the agent's KMS calls. The key policy, not these,
/// protects the key: they let the call be made, the attestation decides what it returns.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    #[serde(deserialize_with = "credential")]
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    #[serde(deserialize_with = "credential")]
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "optional_credential"
    )]
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the token.
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("session_token", &self.session_token.is_some())
            .finish_non_exhaustive()
    }
}

fn check_credential(value: &str) -> Result<(), String> {
    if value.is_empty()
        || value.len() > MAX_CREDENTIAL_BYTES
        || !value.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "a credential is 1 to {MAX_CREDENTIAL_BYTES} printable ASCII characters"
        ));
    }
    Ok(())
}

fn credential<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let value = String::deserialize(deserializer)?;
    check_credential(&value).map_err(serde::de::Error::custom)?;
    Ok(value)
}

fn optional_credential<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(deserializer)?;
    if let Some(value) = &value {
        check_credential(value).map_err(serde::de::Error::custom)?;
    }
    Ok(value)
}

impl AwsCredentials {
    /// Whether every field is within the limits a reader applies.
    pub fn check(&self) -> Result<(), String> {
        check_credential(&self.access_key_id)?;
        check_credential(&self.secret_access_key)?;
        if let Some(token) = &self.session_token {
            check_credential(token)?;
        }
        Ok(())
    }
}

/// The sidecar's second message when the configuration has `state`: the credentials it relays
/// and the snapshot it offers (the newest it stores), whose chunks follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StateOffer {
    /// Credentials for the KMS calls, if the sidecar has any.
    #[serde(default)]
    pub credentials: Option<AwsCredentials>,
    /// The offered snapshot, or `None`: nothing stored.
    #[serde(default)]
    pub snapshot: Option<OfferedSnapshot>,
}

/// What the sidecar says about the snapshot it offers; the snapshot itself says the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OfferedSnapshot {
    /// The sequence in its header.
    pub sequence: u64,
    /// Its size in bytes, at most [`MAX_SNAPSHOT_BYTES`].
    #[serde(deserialize_with = "snapshot_size")]
    pub bytes: u64,
}

fn snapshot_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let bytes = u64::deserialize(deserializer)?;
    if bytes > MAX_SNAPSHOT_BYTES {
        return Err(serde::de::Error::custom(format!(
            "a snapshot of {bytes} bytes exceeds the {MAX_SNAPSHOT_BYTES}-byte limit"
        )));
    }
    Ok(bytes)
}

/// A piece of a sealed snapshot, in either direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotChunk {
    /// The snapshot's sequence (its header's).
    pub sequence: u64,
    /// Where `data` starts in the snapshot.
    pub offset: u64,
    /// At most [`SNAPSHOT_CHUNK_BYTES`] bytes.
    #[serde(with = "chunk_b64")]
    pub data: Vec<u8>,
    /// Whether this is the snapshot's last chunk.
    pub last: bool,
}

mod chunk_b64 {
    use serde::{Deserializer, Serializer};

    fn check(bytes: &[u8]) -> Result<(), String> {
        if bytes.len() > super::SNAPSHOT_CHUNK_BYTES {
            return Err(format!(
                "a snapshot chunk of {} bytes exceeds {}",
                bytes.len(),
                super::SNAPSHOT_CHUNK_BYTES
            ));
        }
        Ok(())
    }

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        check(bytes).map_err(serde::ser::Error::custom)?;
        super::super::b64::serialize(bytes, serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let bytes = super::super::b64::deserialize(deserializer)?;
        check(&bytes).map_err(serde::de::Error::custom)?;
        Ok(bytes)
    }
}

/// Why a stream of [`SnapshotChunk`]s is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// A chunk of another snapshot arrived mid-stream.
    #[error("chunk of snapshot {found} inside snapshot {expected}")]
    Sequence {
        /// The chunk's sequence.
        found: u64,
        /// The snapshot being assembled.
        expected: u64,
    },
    /// A chunk does not start where the previous one ended.
    #[error("chunk at offset {found}, expected {expected}")]
    Offset {
        /// The chunk's offset.
        found: u64,
        /// Bytes received so far.
        expected: u64,
    },
    /// The snapshot grew over its limit.
    #[error("snapshot exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The snapshot's size differs from what was announced.
    #[error("snapshot of {found} bytes, {announced} announced")]
    Size {
        /// Bytes received.
        found: u64,
        /// Bytes announced.
        announced: u64,
    },
}

/// Checks a stream of chunks as it arrives: one sequence, contiguous offsets, bounded size.
#[derive(Debug, Clone)]
pub struct SnapshotAssembly {
    sequence: Option<u64>,
    received: u64,
    limit: u64,
    announced: Option<u64>,
}

impl SnapshotAssembly {
    /// A stream of at most `limit` bytes (and of exactly `announced` bytes, when given).
    pub fn new(limit: u64, announced: Option<u64>) -> Self {
        Self {
            sequence: None,
            received: 0,
            limit: limit.min(MAX_SNAPSHOT_BYTES),
            announced,
        }
    }

    /// Accept `chunk` if it continues the stream; `Ok(true)` once it was the last.
    pub fn accept(&mut self, chunk: &SnapshotChunk) -> Result<bool, ChunkError> {
        match self.sequence {
            Some(expected) if expected != chunk.sequence => {
                return Err(ChunkError::Sequence {
                    found: chunk.sequence,
                    expected,
                });
            }
            _ => self.sequence = Some(chunk.sequence),
        }
        if chunk.offset != self.received {
            return Err(ChunkError::Offset {
                found: chunk.offset,
                expected: self.received,
            });
        }
        let len = chunk.data.len() as u64;
        let total = self.received.saturating_add(len);
        if total > self.limit || self.announced.is_some_and(|a| total > a) {
            return Err(ChunkError::TooLarge {
                limit: self.announced.unwrap_or(self.limit).min(self.limit),
            });
        }
        self.received = total;
        if chunk.last
            && let Some(announced) = self.announced
            && announced != total
        {
            return Err(ChunkError::Size {
                found: total,
                announced,
            });
        }
        Ok(chunk.last)
    }

    /// Bytes accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The sequence of the stream, once a chunk arrived.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }
}

/// Split `bytes` (a whole snapshot of sequence `sequence`) into chunks, for tests and small
/// snapshots held in memory.
pub fn chunks_of(sequence: u64, bytes: &[u8]) -> Vec<SnapshotChunk> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    loop {
        let end = (offset + SNAPSHOT_CHUNK_BYTES).min(bytes.len());
        out.push(SnapshotChunk {
            sequence,
            offset: offset as u64,
            data: bytes[offset..end].to_vec(),
            last: end == bytes.len(),
        });
        if end == bytes.len() {
            return out;
        }
        offset = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EnclaveConfig, KmsConfig, Message, read_message, write_message};

    pub(crate) fn mk_state() -> StateConfig {
        StateConfig {
            resource_uid: "6f1c1e57-0000-4000-8000-000000000001".into(),
            restore_from_uids: vec![],
            accepted_measurements: vec![],
            backup_interval_seconds: 300,
            retain: 3,
            ca_generation: 0,
            kms: KmsConfig {
                key_id: "alias/nautilus".into(),
                region: "eu-west-1".into(),
                endpoint: None,
            },
        }
    }

    #[test]
    fn a_configuration_without_state_keeps_its_digest() {
        let before = crate::wire::config::tests::BEFORE_DISTRIBUTION;
        let config: EnclaveConfig = serde_json::from_str(before).expect("parses");
        assert_eq!(config.state, None);
        assert_eq!(serde_json::to_string(&config).expect("json"), before);
        let mut with_state = config.clone();
        with_state.state = Some(mk_state());
        let json = serde_json::to_string(&with_state).expect("json");
        assert!(json.ends_with(r#""state":{"resourceUID":"6f1c1e57-0000-4000-8000-000000000001","backupIntervalSeconds":300,"retain":3,"caGeneration":0,"kms":{"keyID":"alias/nautilus","region":"eu-west-1"}}}"#), "{json}");
        assert_ne!(with_state.digest(), config.digest());
        let back: EnclaveConfig = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, with_state);
    }

    #[test]
    fn state_values_are_checked_while_parsing() {
        let before = crate::wire::config::tests::BEFORE_DISTRIBUTION;
        let config: EnclaveConfig = serde_json::from_str(before).expect("parses");
        type Spoil = Box<dyn Fn(&mut StateConfig)>;
        let bad: Vec<Spoil> = vec![
            Box::new(|s| s.resource_uid.clear()),
            Box::new(|s| s.resource_uid = "a\nb".into()),
            Box::new(|s| s.backup_interval_seconds = 0),
            Box::new(|s| s.retain = 0),
            Box::new(|s| s.retain = MAX_RETAIN + 1),
            Box::new(|s| s.kms.key_id = "k".repeat(MAX_STATE_STRING + 1)),
            Box::new(|s| s.restore_from_uids = vec!["u".into(); MAX_RESTORE_UIDS + 1]),
            Box::new(|s| {
                s.accepted_measurements = vec![Measurements {
                    pcrs: BTreeMap::new(),
                }]
            }),
            Box::new(|s| {
                s.accepted_measurements = vec![Measurements {
                    pcrs: [(0, "AB".repeat(48))].into(),
                }]
            }),
            Box::new(|s| {
                s.accepted_measurements = vec![Measurements {
                    pcrs: [(32, "ab".repeat(48))].into(),
                }]
            }),
        ];
        for (i, spoil) in bad.iter().enumerate() {
            let mut state = mk_state();
            spoil(&mut state);
            let mut c = config.clone();
            c.state = Some(state);
            let json = serde_json::to_string(&c).expect("serializes");
            let err = serde_json::from_str::<EnclaveConfig>(&json).expect_err("refused");
            assert!(
                err.to_string().contains("state configuration"),
                "{i}: {err}"
            );
        }
        let mut good = mk_state();
        good.accepted_measurements = vec![Measurements {
            pcrs: [(0, "ab".repeat(48)), (8, "00".repeat(48))].into(),
        }];
        good.check().expect("good");
        assert!(good.restores_from(&good.resource_uid.clone()));
        assert!(!good.restores_from("other"));
        let unknown = r#"{"resourceUID":"u","backupIntervalSeconds":1,"retain":1,"caGeneration":0,"kms":{"keyID":"k","region":"r"},"extra":1}"#;
        assert!(serde_json::from_str::<StateConfig>(unknown).is_err());
    }

    #[test]
    fn measurements_match_on_every_pcr_they_name() {
        let a = "aa".repeat(48);
        let b = "bb".repeat(48);
        let have: BTreeMap<u8, String> = [(0, a.clone()), (1, b.clone()), (2, a.clone())].into();
        let m = |pcrs: &[(u8, &String)]| Measurements {
            pcrs: pcrs.iter().map(|(i, v)| (*i, (*v).clone())).collect(),
        };
        assert!(m(&[(0, &a), (1, &b)]).matches(&have));
        assert!(!m(&[(0, &a), (1, &a)]).matches(&have));
        assert!(!m(&[(8, &a)]).matches(&have));
        assert!(!m(&[]).matches(&have));
    }

    #[tokio::test]
    async fn state_frames_round_trip_within_one_frame() {
        let offer = Message::StateOffer(StateOffer {
            credentials: Some(AwsCredentials {
                access_key_id: "AKIAEXAMPLE".into(),
                secret_access_key: "s".repeat(40),
                session_token: Some("t".repeat(MAX_CREDENTIAL_BYTES)),
            }),
            snapshot: Some(OfferedSnapshot {
                sequence: 7,
                bytes: 123,
            }),
        });
        let full = Message::SnapshotChunk(SnapshotChunk {
            sequence: 7,
            offset: 0,
            data: vec![0xff; SNAPSHOT_CHUNK_BYTES],
            last: false,
        });
        for message in [offer, full] {
            let mut buf = Vec::new();
            write_message(&mut buf, &message)
                .await
                .expect("fits a frame");
            let mut reader = &buf[..];
            assert_eq!(read_message(&mut reader).await.expect("read"), message);
        }
        let over = Message::SnapshotChunk(SnapshotChunk {
            sequence: 7,
            offset: 0,
            data: vec![0; SNAPSHOT_CHUNK_BYTES + 1],
            last: false,
        });
        assert!(write_message(&mut Vec::new(), &over).await.is_err());
        // Readers apply the same limits.
        for body in [
            format!(
                r#"{{"sequence":1,"offset":0,"data":"{}","last":true}}"#,
                "AAAA".repeat(SNAPSHOT_CHUNK_BYTES / 3 + 1)
            ),
            r#"{"credentials":null,"snapshot":{"sequence":1,"bytes":1073741825}}"#.to_owned(),
            r#"{"credentials":{"accessKeyId":"","secretAccessKey":"x"},"snapshot":null}"#
                .to_owned(),
            r#"{"credentials":{"accessKeyId":"a b","secretAccessKey":"x"},"snapshot":null}"#
                .to_owned(),
        ] {
            let kind = if body.contains("offset") { 9 } else { 8 };
            let mut frame = vec![0, 1, kind, 0];
            frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
            frame.extend_from_slice(body.as_bytes());
            let mut reader = &frame[..];
            assert!(read_message(&mut reader).await.is_err(), "{body:.80}");
        }
    }

    #[test]
    fn credentials_never_print_their_secrets() {
        let c = AwsCredentials {
            access_key_id: "AKIA".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("token-secret".into()),
        };
        let text = format!("{c:?}");
        assert!(!text.contains("very-secret"), "{text}");
        assert!(!text.contains("token-secret"), "{text}");
    }

    #[test]
    fn a_chunk_stream_is_contiguous_bounded_and_of_one_snapshot() {
        let bytes = vec![1u8; SNAPSHOT_CHUNK_BYTES * 2 + 5];
        let chunks = chunks_of(4, &bytes);
        assert_eq!(chunks.len(), 3);
        let mut a = SnapshotAssembly::new(MAX_SNAPSHOT_BYTES, Some(bytes.len() as u64));
        assert_eq!(a.accept(&chunks[0]), Ok(false));
        assert_eq!(a.accept(&chunks[1]), Ok(false));
        assert_eq!(a.accept(&chunks[2]), Ok(true));
        assert_eq!(a.received(), bytes.len() as u64);
        // Out of order, another sequence, over the limit, short of what was announced.
        let mut a = SnapshotAssembly::new(MAX_SNAPSHOT_BYTES, None);
        assert!(matches!(
            a.accept(&chunks[1]),
            Err(ChunkError::Offset { .. })
        ));
        let mut a = SnapshotAssembly::new(MAX_SNAPSHOT_BYTES, None);
        a.accept(&chunks[0]).expect("first");
        let mut other = chunks[1].clone();
        other.sequence = 5;
        assert!(matches!(a.accept(&other), Err(ChunkError::Sequence { .. })));
        let mut a = SnapshotAssembly::new(SNAPSHOT_CHUNK_BYTES as u64 + 1, None);
        a.accept(&chunks[0]).expect("first");
        assert!(matches!(
            a.accept(&chunks[1]),
            Err(ChunkError::TooLarge { .. })
        ));
        let mut a = SnapshotAssembly::new(MAX_SNAPSHOT_BYTES, Some(bytes.len() as u64 + 1));
        for c in &chunks[..2] {
            a.accept(c).expect("chunk");
        }
        assert!(matches!(a.accept(&chunks[2]), Err(ChunkError::Size { .. })));
        assert_eq!(chunks_of(1, &[]).len(), 1);
    }
}
