//! Sealed snapshots: the enclave's state, authenticated-encrypted under a data key only an
//! attested enclave can unwrap, in a form that is written and read as a stream.
//!
//! ```text
//! +----------+-----------+--------------------+-----------------------------------------+
//! | "NAUTSNP1" | u32 BE  | header (JSON)      | chunk 0 | chunk 1 | … | chunk n (last)     |
//! | magic 8  | length    | ≤ MAX_HEADER_BYTES | u32 BE length ‖ AES-256-GCM ciphertext+tag |
//! +----------+-----------+--------------------+-----------------------------------------+
//! ```
//!
//! The header is plaintext (the sidecar and `nautilusctl` read it: sequence, time, resource)
//! and authenticated: every chunk's associated data starts with SHA-256 of the header's bytes
//! as stored, so changing one header byte makes every chunk fail. The body is the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015) over AES-256-GCM: chunk `i` of
//! [`CHUNK_BYTES`] plaintext (the last one shorter, possibly empty) is sealed with the nonce
//! `0³ ‖ u64 BE i ‖ last` and the associated data `header digest ‖ u64 BE i ‖ last`, so a
//! reordered chunk, a dropped chunk, a truncated stream (no chunk marked last) and bytes after
//! the last chunk all fail. The AES key is HKDF-SHA256 of the data key with the header's random
//! 32-byte salt, one key per snapshot: the data key (from KMS, reused while an enclave runs)
//! never encrypts two snapshots, so counter nonces never repeat under one key.
//!
//! What the header binds (resource UID, sealing enclave's PCRs) is checked by
//! [`SnapshotHeader::admits`] before any byte is used; the data key's release is the KMS key
//! policy's business.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::wire::StateConfig;

/// The first bytes of every sealed snapshot.
pub const MAGIC: &[u8; 8] = b"NAUTSNP1";
/// The header format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest header, in bytes of JSON.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Plaintext bytes per chunk (the last chunk may be shorter).
pub const CHUNK_BYTES: usize = 64 * 1024;
/// AES-GCM tag length.
const TAG_BYTES: usize = 16;
/// Domain of the key derivation and of the associated data.
const DOMAIN: &[u8] = b"nautilus-snapshot/v1";
/// Longest `CiphertextBlob` accepted (KMS's are a few hundred bytes).
pub const MAX_BLOB_BYTES: usize = 6144;

/// Why a snapshot could not be sealed or opened. Any error means: never use these bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Reading or writing failed.
    #[error("snapshot i/o")]
    Io(#[from] std::io::Error),
    /// The bytes do not start with [`MAGIC`].
    #[error("not a sealed snapshot (bad magic)")]
    Magic,
    /// The header is longer than [`MAX_HEADER_BYTES`].
    #[error("snapshot header of {0} bytes exceeds {MAX_HEADER_BYTES}")]
    HeaderTooLarge(usize),
    /// The header is not the JSON of a [`SnapshotHeader`], or a field is out of bounds.
    #[error("snapshot header is malformed: {0}")]
    Header(String),
    /// A header of another format version.
    #[error("snapshot format version {0}, this agent reads {FORMAT_VERSION}")]
    Version(u32),
    /// A chunk longer than a chunk can be.
    #[error("chunk {index} announces {len} bytes")]
    ChunkTooLarge {
        /// The chunk's index.
        index: u64,
        /// Its announced length.
        len: usize,
    },
    /// A chunk failed authentication: altered, reordered, from another snapshot or another key.
    #[error("chunk {index} does not authenticate (altered, reordered, or another key)")]
    Authentication {
        /// The chunk's index.
        index: u64,
    },
    /// The stream ended before a chunk marked last.
    #[error("snapshot is truncated: no final chunk")]
    Truncated,
    /// Bytes follow the final chunk.
    #[error("bytes follow the snapshot's final chunk")]
    TrailingData,
    /// More plaintext than the reader allows.
    #[error("snapshot plaintext exceeds {0} bytes")]
    TooLarge(u64),
    /// The snapshot was sealed for a resource this configuration does not restore from.
    #[error("snapshot belongs to resource {found}, which this resource does not restore from")]
    WrongResource {
        /// The header's UID.
        found: String,
    },
    /// The sealing enclave's measurements are neither this enclave's nor accepted.
    #[error(
        "snapshot was sealed by an enclave whose measurements are neither this one's nor accepted (PCR0 {pcr0})"
    )]
    Measurements {
        /// The header's PCR0, for the message.
        pcr0: String,
    },
    /// The key could not be derived.
    #[error("key derivation failed")]
    Key,
}

/// The plaintext header of a sealed snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotHeader {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The resource the snapshot was sealed for.
    pub resource_uid: String,
    /// Increases by one with every snapshot of a resource, across restores.
    pub sequence: u64,
    /// When it was taken: the moment etcd began its consistent copy (Unix milliseconds, the
    /// sealing enclave's clock).
    pub taken_unix_ms: u64,
    /// The sealing enclave's PCRs (index → 96 hex digits), from its own NSM.
    pub pcrs: BTreeMap<u8, String>,
    /// The configuration's `caGeneration` when it was sealed.
    pub ca_generation: u32,
    /// The control plane's distribution (`kubernetes`).
    pub distribution: String,
    /// etcd's revision in the snapshot.
    pub etcd_revision: u64,
    /// The KMS key that wrapped the data key.
    pub kms_key_id: String,
    /// The data key as KMS wrapped it (`CiphertextBlob`), for `Decrypt`.
    #[serde(with = "crate::wire::b64")]
    pub ciphertext_blob: Vec<u8>,
    /// 32 random bytes: the HKDF salt of this snapshot's AES key.
    #[serde(with = "crate::wire::b64")]
    pub salt: Vec<u8>,
}

impl SnapshotHeader {
    fn check(&self) -> Result<(), SealError> {
        if self.format_version != FORMAT_VERSION {
            return Err(SealError::Version(self.format_version));
        }
        let text_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= crate::wire::MAX_STATE_STRING
                && !s.chars().any(char::is_control)
        };
        if !text_ok(&self.resource_uid)
            || !text_ok(&self.kms_key_id)
            || !text_ok(&self.distribution)
        {
            return Err(SealError::Header(
                "a text field is empty, too long or not one line".into(),
            ));
        }
        if self.pcrs.len() > 32
            || self
                .pcrs
                .iter()
                .any(|(i, v)| *i > 31 || v.len() != 96 || !v.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(SealError::Header(
                "pcrs: indices 0 to 31, 96 hex digits each".into(),
            ));
        }
        if self.ciphertext_blob.is_empty() || self.ciphertext_blob.len() > MAX_BLOB_BYTES {
            return Err(SealError::Header(format!(
                "ciphertextBlob must be 1 to {MAX_BLOB_BYTES} bytes"
            )));
        }
        if self.salt.len() != 32 {
            return Err(SealError::Header("salt must be 32 bytes".into()));
        }
        Ok(())
    }

    /// Whether `state` may restore this snapshot on an enclave measured `own_pcrs`: the UID is
    /// the resource's or one it restores from, and the sealing enclave's PCRs are this
    /// enclave's (every PCR both name, at least PCR0) or match an accepted measurement.
    pub fn admits(
        &self,
        state: &StateConfig,
        own_pcrs: &BTreeMap<u8, String>,
    ) -> Result<(), SealError> {
        if !state.restores_from(&self.resource_uid) {
            return Err(SealError::WrongResource {
                found: self.resource_uid.clone(),
            });
        }
        let same = self.pcrs.contains_key(&0)
            && self.pcrs.len() == own_pcrs.len()
            && self.pcrs == *own_pcrs;
        if same
            || state
                .accepted_measurements
                .iter()
                .any(|m| m.matches(&self.pcrs))
        {
            return Ok(());
        }
        Err(SealError::Measurements {
            pcr0: self.pcrs.get(&0).cloned().unwrap_or_default(),
        })
    }
}

/// A fresh 32-byte salt.
pub fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 32];
    // aws-lc's system random source; it fails only when the OS has none.
    if aws_lc_rs::rand::fill(&mut salt).is_err() {
        use rand_core::RngCore as _;
        rand_core::OsRng.fill_bytes(&mut salt);
    }
    salt
}

fn chunk_key(data_key: &[u8; 32], salt: &[u8]) -> Result<LessSafeKey, SealError> {
    use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
    let prk = Salt::new(HKDF_SHA256, salt).extract(data_key);
    let info = [DOMAIN];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| SealError::Key)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn nonce_and_aad(header_digest: &[u8; 32], index: u64, last: bool) -> (Nonce, [u8; 41]) {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    let mut aad = [0u8; 41];
    aad[..32].copy_from_slice(header_digest);
    aad[32..40].copy_from_slice(&index.to_be_bytes());
    aad[40] = u8::from(last);
    (Nonce::assume_unique_for_key(nonce), aad)
}

fn header_prefix(header: &SnapshotHeader) -> Result<Vec<u8>, SealError> {
    header.check()?;
    let json = serde_json::to_vec(header).map_err(|e| SealError::Header(e.to_string()))?;
    if json.len() > MAX_HEADER_BYTES {
        return Err(SealError::HeaderTooLarge(json.len()));
    }
    let mut prefix = Vec::with_capacity(12 + json.len());
    prefix.extend_from_slice(MAGIC);
    prefix.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    prefix.extend_from_slice(&json);
    Ok(prefix)
}

/// Writes a sealed snapshot: the header at once, then the plaintext written to it in chunks;
/// [`Sealer::finish`] seals the last chunk. Dropping it unfinished leaves a truncated snapshot,
/// which no reader accepts.
pub struct Sealer<W: Write> {
    out: W,
    key: LessSafeKey,
    digest: [u8; 32],
    index: u64,
    buffer: Vec<u8>,
    written: u64,
}

impl<W: Write> std::fmt::Debug for Sealer<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<W: Write> Sealer<W> {
    /// Write `header` to `out` and prepare to seal under `data_key`.
    pub fn new(
        header: &SnapshotHeader,
        data_key: &[u8; 32],
        mut out: W,
    ) -> Result<Self, SealError> {
        let prefix = header_prefix(header)?;
        out.write_all(&prefix)?;
        Ok(Self {
            out,
            key: chunk_key(data_key, &header.salt)?,
            digest: Sha256::digest(&prefix).into(),
            index: 0,
            buffer: Vec::with_capacity(CHUNK_BYTES + TAG_BYTES),
            written: prefix.len() as u64,
        })
    }

    fn seal_chunk(&mut self, len: usize, last: bool) -> Result<(), SealError> {
        let mut chunk: Vec<u8> = self.buffer.drain(..len).collect();
        let (nonce, aad) = nonce_and_aad(&self.digest, self.index, last);
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(&aad[..]), &mut chunk)
            .map_err(|_| SealError::Key)?;
        self.out
            .write_all(&u32::try_from(chunk.len()).unwrap_or(u32::MAX).to_be_bytes())?;
        self.out.write_all(&chunk)?;
        self.written += 4 + chunk.len() as u64;
        self.index += 1;
        Ok(())
    }

    /// Seal the last chunk, flush, and return the writer and the sealed size.
    pub fn finish(mut self) -> Result<(W, u64), SealError> {
        let len = self.buffer.len();
        self.seal_chunk(len, true)?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        // A full chunk is sealed only once more data shows it is not the last.
        let room = (CHUNK_BYTES + 1).saturating_sub(self.buffer.len());
        let take = data.len().min(room.max(1));
        self.buffer.extend_from_slice(&data[..take]);
        if self.buffer.len() > CHUNK_BYTES {
            self.seal_chunk(CHUNK_BYTES, false)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Read a snapshot's header (and check its format) without any key: what the sidecar and
/// `nautilusctl` do. Returns the header and its bytes as stored (magic and length included).
pub fn read_header<R: Read>(input: &mut R) -> Result<(SnapshotHeader, Vec<u8>), SealError> {
    let mut start = [0u8; 12];
    read_exact_or(input, &mut start, SealError::Magic)?;
    if &start[..8] != MAGIC {
        return Err(SealError::Magic);
    }
    let len = u32::from_be_bytes([start[8], start[9], start[10], start[11]]) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(SealError::HeaderTooLarge(len));
    }
    let mut json = vec![0u8; len];
    read_exact_or(input, &mut json, SealError::Truncated)?;
    let header: SnapshotHeader =
        serde_json::from_slice(&json).map_err(|e| SealError::Header(e.to_string()))?;
    header.check()?;
    let mut prefix = start.to_vec();
    prefix.extend_from_slice(&json);
    Ok((header, prefix))
}

fn read_exact_or<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    short: SealError,
) -> Result<(), SealError> {
    match input.read_exact(buf) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(short),
        Err(e) => Err(SealError::Io(e)),
    }
}

/// Reads a sealed snapshot's plaintext, chunk by chunk, each authenticated before any of its
/// bytes is returned. The caller must read to the end ([`Opener::finish`]) before it uses
/// anything: truncation shows only there.
pub struct Opener<R: Read> {
    input: R,
    key: LessSafeKey,
    digest: [u8; 32],
    index: u64,
    plain: Vec<u8>,
    pos: usize,
    done: bool,
    limit: u64,
    total: u64,
}

impl<R: Read> std::fmt::Debug for Opener<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Opener<R> {
    /// Open the body that follows `header_bytes` (from [`read_header`]) in `input`, under
    /// `data_key`, refusing more than `limit` bytes of plaintext.
    pub fn new(
        header: &SnapshotHeader,
        header_bytes: &[u8],
        data_key: &[u8; 32],
        input: R,
        limit: u64,
    ) -> Result<Self, SealError> {
        Ok(Self {
            input,
            key: chunk_key(data_key, &header.salt)?,
            digest: Sha256::digest(header_bytes).into(),
            index: 0,
            plain: Vec::new(),
            pos: 0,
            done: false,
            limit,
            total: 0,
        })
    }

    fn next_chunk(&mut self) -> Result<(), SealError> {
        let mut len = [0u8; 4];
        read_exact_or(&mut self.input, &mut len, SealError::Truncated)?;
        let len = u32::from_be_bytes(len) as usize;
        if !(TAG_BYTES..=CHUNK_BYTES + TAG_BYTES).contains(&len) {
            return Err(SealError::ChunkTooLarge {
                index: self.index,
                len,
            });
        }
        let mut chunk = vec![0u8; len];
        read_exact_or(&mut self.input, &mut chunk, SealError::Truncated)?;
        // A chunk shorter than full can only be the last; a full one may be either.
        let candidates: &[bool] = if len < CHUNK_BYTES + TAG_BYTES {
            &[true]
        } else {
            &[false, true]
        };
        for &last in candidates {
            let mut attempt = chunk.clone();
            let (nonce, aad) = nonce_and_aad(&self.digest, self.index, last);
            if let Ok(plain) = self
                .key
                .open_in_place(nonce, Aad::from(&aad[..]), &mut attempt)
            {
                let plain_len = plain.len();
                attempt.truncate(plain_len);
                self.total += plain_len as u64;
                if self.total > self.limit {
                    return Err(SealError::TooLarge(self.limit));
                }
                self.plain = attempt;
                self.pos = 0;
                self.index += 1;
                if last {
                    self.done = true;
                    let mut extra = [0u8; 1];
                    if self.input.read(&mut extra)? != 0 {
                        return Err(SealError::TrailingData);
                    }
                }
                return Ok(());
            }
        }
        Err(SealError::Authentication { index: self.index })
    }

    /// Read the rest, if any, and confirm the snapshot ended with its final chunk and nothing
    /// after it.
    pub fn finish(mut self) -> Result<u64, SealError> {
        let mut sink = [0u8; 8192];
        loop {
            match self.read(&mut sink) {
                Ok(0) => return Ok(self.total),
                Ok(_) => {}
                Err(e) => return Err(unwrap_io(e)),
            }
        }
    }
}

/// The [`SealError`] an [`Opener`]'s `Read` wrapped into an I/O error, or the I/O error.
pub fn unwrap_io(error: std::io::Error) -> SealError {
    if error.get_ref().is_some_and(|inner| inner.is::<SealError>()) {
        match error
            .into_inner()
            .map(|inner| inner.downcast::<SealError>())
        {
            Some(Ok(seal)) => *seal,
            Some(Err(other)) => SealError::Io(std::io::Error::other(other)),
            None => SealError::Truncated,
        }
    } else {
        SealError::Io(error)
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk().map_err(std::io::Error::other)?;
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{KmsConfig, Measurements};

    const KEY: [u8; 32] = [7; 32];

    fn pcrs(fill: &str) -> BTreeMap<u8, String> {
        [
            (0, fill.repeat(48)),
            (1, "11".repeat(48)),
            (2, "22".repeat(48)),
        ]
        .into()
    }

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            format_version: FORMAT_VERSION,
            resource_uid: "uid-a".into(),
            sequence: 42,
            taken_unix_ms: 1_764_000_000_000,
            pcrs: pcrs("aa"),
            ca_generation: 0,
            distribution: "kubernetes".into(),
            etcd_revision: 1234,
            kms_key_id: "alias/nautilus".into(),
            ciphertext_blob: vec![9; 184],
            salt: random_salt(),
        }
    }

    fn state() -> StateConfig {
        StateConfig {
            resource_uid: "uid-a".into(),
            restore_from_uids: vec![],
            accepted_measurements: vec![],
            backup_interval_seconds: 60,
            retain: 3,
            ca_generation: 0,
            kms: KmsConfig {
                key_id: "alias/nautilus".into(),
                region: "eu-west-1".into(),
                endpoint: None,
            },
        }
    }

    fn seal(plain: &[u8]) -> Vec<u8> {
        let mut sealer = Sealer::new(&header(), &KEY, Vec::new()).expect("sealer");
        // Odd write sizes: chunking must not depend on them.
        for piece in plain.chunks(7777) {
            sealer.write_all(piece).expect("write");
        }
        let (out, written) = sealer.finish().expect("finish");
        assert_eq!(written, out.len() as u64);
        out
    }

    fn open(bytes: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, SealError> {
        let mut input = bytes;
        let (header, prefix) = read_header(&mut input)?;
        let mut opener = Opener::new(&header, &prefix, key, input, u64::MAX)?;
        let mut plain = Vec::new();
        opener.read_to_end(&mut plain).map_err(unwrap_io)?;
        opener.finish()?;
        Ok(plain)
    }

    fn plaintext(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn every_size_survives_a_round_trip() {
        for len in [
            0,
            1,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            3 * CHUNK_BYTES + 17,
        ] {
            let plain = plaintext(len);
            let sealed = seal(&plain);
            assert_eq!(open(&sealed, &KEY).expect("opens"), plain, "{len}");
            let (h, _) = read_header(&mut &sealed[..]).expect("header");
            assert_eq!(h.sequence, 42);
        }
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let sealed = seal(&plaintext(2 * CHUNK_BYTES + 100));
        // Every byte of the header, and a spread of body bytes (tags, lengths, ciphertext).
        let (_, prefix) = read_header(&mut &sealed[..]).expect("header");
        let positions = (0..prefix.len()).chain((prefix.len()..sealed.len()).step_by(997));
        for pos in positions.chain([sealed.len() - 1]) {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x01;
            assert!(open(&bad, &KEY).is_err(), "byte {pos} of {}", sealed.len());
        }
    }

    #[test]
    fn truncation_reordering_trailing_bytes_and_another_key_are_refused() {
        let sealed = seal(&plaintext(3 * CHUNK_BYTES + 5));
        let (_, prefix) = read_header(&mut &sealed[..]).expect("header");
        let full = 4 + CHUNK_BYTES + TAG_BYTES;
        let body = &sealed[prefix.len()..];
        // Three full chunks then a short final one.
        assert_eq!(body.len(), 3 * full + 4 + 5 + TAG_BYTES);
        // Dropping the final chunk: the full chunks authenticate, but none is marked last.
        let cut = &sealed[..prefix.len() + 3 * full];
        assert!(matches!(open(cut, &KEY), Err(SealError::Truncated)));
        for cut in [sealed.len() - 1, prefix.len() + 10, 5] {
            assert!(open(&sealed[..cut], &KEY).is_err(), "cut at {cut}");
        }
        // Swapping chunks 0 and 1.
        let mut swapped = prefix.clone();
        swapped.extend_from_slice(&body[full..2 * full]);
        swapped.extend_from_slice(&body[..full]);
        swapped.extend_from_slice(&body[2 * full..]);
        assert!(matches!(
            open(&swapped, &KEY),
            Err(SealError::Authentication { index: 0 })
        ));
        // Dropping a middle chunk.
        let mut dropped = prefix.clone();
        dropped.extend_from_slice(&body[..full]);
        dropped.extend_from_slice(&body[2 * full..]);
        assert!(matches!(
            open(&dropped, &KEY),
            Err(SealError::Authentication { index: 1 })
        ));
        let mut trailing = sealed.clone();
        trailing.push(0);
        assert!(matches!(
            open(&trailing, &KEY),
            Err(SealError::TrailingData)
        ));
        assert!(matches!(
            open(&sealed, &[8; 32]),
            Err(SealError::Authentication { index: 0 })
        ));
        // A chunk of another snapshot under the same key (another salt) does not fit.
        let other = seal(&plaintext(3 * CHUNK_BYTES));
        let (_, other_prefix) = read_header(&mut &other[..]).expect("header");
        let mut spliced = prefix.clone();
        spliced.extend_from_slice(&other[other_prefix.len()..]);
        assert!(open(&spliced, &KEY).is_err());
        // A plaintext limit is enforced as the chunks arrive.
        let mut input = &sealed[..];
        let (h, p) = read_header(&mut input).expect("header");
        let opener = Opener::new(&h, &p, &KEY, input, CHUNK_BYTES as u64).expect("opener");
        assert!(matches!(opener.finish(), Err(SealError::TooLarge(_))));
    }

    #[test]
    fn headers_are_checked_before_any_key_is_used() {
        assert!(matches!(
            read_header(&mut &b"NOTASNAP\0\0\0\0"[..]),
            Err(SealError::Magic)
        ));
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&(MAX_HEADER_BYTES as u32 + 1).to_be_bytes());
        assert!(matches!(
            read_header(&mut &big[..]),
            Err(SealError::HeaderTooLarge(_))
        ));
        let mut h = header();
        h.format_version = 2;
        assert!(matches!(
            Sealer::new(&h, &KEY, Vec::new()),
            Err(SealError::Version(2))
        ));
        let mut h = header();
        h.salt = vec![1; 16];
        assert!(Sealer::new(&h, &KEY, Vec::new()).is_err());
        let mut h = header();
        h.pcrs.insert(0, "zz".repeat(48));
        assert!(Sealer::new(&h, &KEY, Vec::new()).is_err());
    }

    #[test]
    fn the_binding_names_the_resource_and_the_measurements() {
        let h = header();
        let own = pcrs("aa");
        h.admits(&state(), &own)
            .expect("own resource, own measurements");
        // Another resource: refused, unless this one restores from it.
        let mut other = h.clone();
        other.resource_uid = "uid-b".into();
        assert!(matches!(
            other.admits(&state(), &own),
            Err(SealError::WrongResource { .. })
        ));
        let mut migrating = state();
        migrating.restore_from_uids = vec!["uid-b".into()];
        other.admits(&migrating, &own).expect("migration allowed");
        // Another image: refused, unless its measurements are accepted.
        let upgraded = pcrs("bb");
        assert!(matches!(
            h.admits(&state(), &upgraded),
            Err(SealError::Measurements { .. })
        ));
        let mut upgrading = state();
        upgrading.accepted_measurements = vec![Measurements {
            pcrs: [(0, "aa".repeat(48))].into(),
        }];
        h.admits(&upgrading, &upgraded).expect("old image accepted");
        upgrading.accepted_measurements = vec![Measurements {
            pcrs: [(0, "aa".repeat(48)), (1, "ff".repeat(48))].into(),
        }];
        assert!(
            h.admits(&upgrading, &upgraded).is_err(),
            "every named PCR must match"
        );
    }
}
