//! The vsock link between the sidecar (host) and the agent (enclave), and the evidence the
//! sidecar hands to the operator.
//!
//! Every message travels in one frame:
//!
//! ```text
//! +---------+------+----------+-------------+--------------------+
//! | version | kind | reserved | body length | body (JSON, UTF-8) |
//! | u16 BE  | u8   | u8 = 0   | u32 BE      | ≤ MAX_FRAME_BODY   |
//! +---------+------+----------+-------------+--------------------+
//! ```
//!
//! Readers refuse a frame of another version, an unknown kind, a non-zero reserved byte, a
//! body longer than [`MAX_FRAME_BODY`], a body that is not exactly the message's JSON (unknown
//! fields included), a nonce that is empty or over 512 bytes ([`check_nonce`]: the same rule
//! on both sides), and, with [`read_message_within`], a frame whose rest does not follow its
//! first byte within [`FRAME_TIMEOUT`]. The code is generic over
//! [`tokio::io::AsyncRead`]/[`AsyncWrite`], so vsock, Unix and TCP streams all carry it.
//!
//! | kind | message | direction |
//! |---|---|---|
//! | 1 | [`BootConfig`] | sidecar → agent, once per connection |
//! | 2 | [`AttestationEvidence`] | agent → sidecar, after boot and after each nonce refresh |
//! | 3 | [`SignedReport`] | agent → sidecar, every probe round and on every change |
//! | 4 | [`NonceRefresh`] | sidecar → agent, when the operator asks for a fresh attestation |
//! | 5 | [`Challenge`] | sidecar → agent, when a user asks for a document of their own ([`ChallengeResponse`] over HTTP) |
//! | 6 | [`ChallengeAnswer`] | agent → sidecar, one per [`Challenge`]; the served evidence stays as it was |
//! | 7 | [`BootRefused`] | agent → sidecar, instead of a boot, when the configuration's values are refused |
//! | 8 | [`StateOffer`] | sidecar → agent, right after [`BootConfig`] when the configuration keeps state |
//! | 9 | [`SnapshotChunk`] | either way: the offered snapshot (sidecar → agent), the sealed ones (agent → sidecar) |
//!
//! The host relays but is not trusted: reports are signed by the agent's ephemeral key
//! ([`ReportSigner`]), whose public half the NSM puts in the attestation document, and every
//! reader checks them with a [`ReportVerifier`].
//!
//! [`AsyncWrite`]: tokio::io::AsyncWrite

pub(crate) mod b64;
mod challenge;
mod config;
mod evidence;
mod frame;
mod report;
mod state;

pub use challenge::{Challenge, ChallengeAnswer, ChallengeRequest, ChallengeResponse};
pub use config::{
    AuthConfig, BootConfig, BootRefused, CIPHER_SUITES, ControlPlaneConfig, EnclaveConfig,
    HealthConfig, JwkConfig, KmsConfig, MAX_NONCE_BYTES, MAX_REFUSAL_BYTES, Measurements,
    NonceRefresh, NonceSizeError, RefusalKind, StateConfig, StopRequest, TierConfig, TierIdentity,
    ZkLoginConfig, check_nonce,
};
pub use evidence::{AttestationEvidence, EnclaveInfo, EvidenceBundle};
pub use frame::{
    FRAME_HEADER_LEN, FRAME_TIMEOUT, MAX_FRAME_BODY, Message, MessageKind, PROTOCOL_VERSION,
    WireError, read_message, read_message_within, write_message,
};
pub use report::{
    BudgetCounters, Component, ComponentReport, MAX_REPORT_BYTES, MAX_STATE_ERROR_BYTES,
    ProcessState, Report, ReportError, ReportSigner, ReportVerifier, SignedReport, SnapshotRef,
    StateReport,
};
pub use state::{
    AwsCredentials, ChunkError, MAX_ACCEPTED_MEASUREMENTS, MAX_CREDENTIAL_BYTES, MAX_RESTORE_UIDS,
    MAX_RETAIN, MAX_SNAPSHOT_BYTES, MAX_STATE_STRING, OfferedSnapshot, SNAPSHOT_CHUNK_BYTES,
    SnapshotAssembly, SnapshotChunk, StateConfigError, StateOffer, chunks_of,
};
