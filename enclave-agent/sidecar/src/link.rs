//! The control link to the agent: connect, send the boot configuration, relay evidence.
//!
//! The link dials the agent (vsock in production) with exponential backoff, reset only after a
//! connection that lasted. On each
//! connection it sends [`BootConfig`] first — with the latest nonce the operator asked for —
//! then keeps every [`AttestationEvidence`] and [`SignedReport`] it receives in
//! [`Evidence`], and forwards nonce refreshes and users' challenges ([`Inbox`]; their answers
//! go back to the request that asked, not into [`Evidence`]). Any frame error (malformed, oversized, wrong
//! version, unexpected kind, a frame not complete within the frame timeout) or a closed stream
//! drops the connection with a logged reason and
//! a metric, and the link dials again, except after a [`BootRefused`]: the agent would refuse
//! the same configuration again, so the link keeps the reason in [`Evidence`] (for `/report`
//! and `/readyz`) and dials no more. If no connection succeeds before the startup deadline
//! the link gives up: the enclave did not come up.
//!
//! [`AttestationEvidence`]: nautilus_protocol::wire::AttestationEvidence
//! [`SignedReport`]: nautilus_protocol::wire::SignedReport

use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::transport::{self, BoxedStream, Endpoint, TransportError};
use nautilus_protocol::wire::{
    BootConfig, BootRefused, Challenge, MAX_FRAME_BODY, Message, NonceRefresh, RefusalKind,
    SNAPSHOT_CHUNK_BYTES, SnapshotChunk, StateOffer, StopRequest, WireError, read_message_within,
    write_message,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::challenge::Inbox;
use crate::evidence::{Evidence, now_ms};
use crate::state::{CredentialSource, SnapshotStore, Stored};

/// First delay between connection attempts.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long after a refused data key the boot is offered again.
const KEY_REFUSED_RETRY: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Longest wait for one connection attempt (a vsock connect to an enclave that is still
/// booting can hang rather than fail).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the link stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The agent never answered before the startup deadline.
    #[error("no connection to the agent at {endpoint} within {seconds} s")]
    Deadline {
        /// The agent's endpoint.
        endpoint: String,
        /// The deadline.
        seconds: u64,
        /// The last connection error.
        #[source]
        source: Option<TransportError>,
    },
}

/// How the link runs.
#[derive(Debug)]
pub struct LinkConfig {
    /// The agent's control endpoint.
    pub endpoint: Endpoint,
    /// The boot configuration to send on every connection.
    pub boot_config: BootConfig,
    /// How long the first connection may take.
    pub startup_deadline: Duration,
    /// How long a frame may take once its first byte arrived
    /// ([`FRAME_TIMEOUT`](nautilus_protocol::wire::FRAME_TIMEOUT) by default).
    pub frame_timeout: Duration,
    /// Sealed state, when the configuration keeps it.
    pub state: Option<LinkState>,
}

/// The sidecar's side of sealed state on the link.
#[derive(Debug)]
pub struct LinkState {
    /// Where snapshots are stored and offered from.
    pub store: SnapshotStore,
    /// The credentials relayed with the offer.
    pub credentials: CredentialSource,
}

/// The metric label of a dropped connection.
pub fn drop_reason(err: &WireError) -> &'static str {
    match err {
        WireError::Io(_) => "io",
        WireError::Closed => "closed",
        WireError::Truncated => "truncated",
        WireError::Version { .. } => "version",
        WireError::UnknownKind(_) => "unknown_kind",
        WireError::Reserved(_) => "reserved",
        WireError::TooLarge { .. } => "too_large",
        WireError::Malformed { .. } => "malformed",
        WireError::Unexpected { .. } => "unexpected",
        WireError::TimedOut(_) => "timeout",
        _ => "other",
    }
}

/// What reaches the link from the rest of the sidecar.
#[derive(Debug)]
pub struct Inputs {
    /// The operator's nonces (closed: the sidecar is shutting down).
    pub nonces: mpsc::Receiver<Vec<u8>>,
    /// Users' challenges.
    pub challenges: Inbox,
    /// Turns `true` when the sidecar stops: the agent is asked to stop ([`Message::Stop`]) and
    /// the link ends once the agent closed it, storing what it sends until then.
    pub stop: watch::Receiver<bool>,
}

/// Run the link until the startup deadline passes without a connection (the only error), the
/// nonce channel closes, or a stop was asked for and the agent closed the link (the sidecar is
/// shutting down).
pub async fn run(
    evidence: Arc<Evidence>,
    mut config: LinkConfig,
    mut inputs: Inputs,
) -> Result<(), LinkError> {
    let started = Instant::now();
    let mut connected_once = false;
    let mut backoff = INITIAL_BACKOFF;
    loop {
        if *inputs.stop.borrow() {
            // No agent on the line to ask: the enclave is stopped as it is.
            return Ok(());
        }
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, transport::connect(&config.endpoint))
            .await
            .unwrap_or_else(|_| {
                Err(TransportError::Connect {
                    endpoint: config.endpoint.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connection attempt timed out",
                    ),
                })
            });
        match attempt {
            Ok(stream) => {
                if connected_once {
                    evidence.metrics().link_reconnects.inc();
                }
                connected_once = true;
                let session_started = Instant::now();
                // Nonces asked for while the link was down: the latest one goes in BootConfig.
                while let Ok(nonce) = inputs.nonces.try_recv() {
                    config.boot_config.nonce = nonce;
                }
                info!(endpoint = %config.endpoint, "connected to the agent");
                evidence.set_link_up(true);
                let end = session(stream, &evidence, &mut config, &mut inputs).await;
                evidence.set_link_up(false);
                inputs.challenges.link_dropped();
                // An agent that drops every connection at once (a refused configuration, a
                // protocol mismatch) is retried ever more slowly, not in a tight loop.
                if session_started.elapsed() >= STABLE_SESSION {
                    backoff = INITIAL_BACKOFF;
                }
                match end {
                    SessionEnd::Shutdown => return Ok(()),
                    SessionEnd::Refused => {
                        evidence.metrics().drop_link("boot_refused");
                        warn!(endpoint = %config.endpoint, "boot configuration refused; not offering it again");
                        // The same configuration would be refused again: wait for shutdown (a
                        // new configuration comes with a new sidecar). Nonces asked for
                        // meanwhile are refused already, with no link up.
                        tokio::select! {
                            () = async { while inputs.nonces.recv().await.is_some() {} } => {}
                            () = stopped(&mut inputs.stop) => {}
                        }
                        return Ok(());
                    }
                    SessionEnd::KeyRefused => {
                        // KMS would not release the key: the key policy may be fixed, so the
                        // same configuration is offered again, slowly (each try is a KMS call).
                        evidence.metrics().drop_link("key_refused");
                        warn!(endpoint = %config.endpoint, retry_in = ?KEY_REFUSED_RETRY, "the data key was refused; offering the boot again later");
                        backoff = KEY_REFUSED_RETRY;
                    }
                    SessionEnd::Wire(err) => {
                        let reason = drop_reason(&err);
                        evidence.metrics().drop_link(reason);
                        warn!(endpoint = %config.endpoint, reason, error = %err, "agent link dropped, reconnecting");
                    }
                }
            }
            Err(err) => {
                if !connected_once && started.elapsed() >= config.startup_deadline {
                    return Err(LinkError::Deadline {
                        endpoint: config.endpoint.to_string(),
                        seconds: config.startup_deadline.as_secs(),
                        source: Some(err),
                    });
                }
                tracing::debug!(error = %err, "agent not reachable yet");
            }
        }
        if inputs.nonces.is_closed() {
            return Ok(());
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut inputs.stop) => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Returns once a stop was asked for (never if the sender is gone without asking).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

enum SessionEnd {
    Shutdown,
    /// KMS refused the data key ([`RefusalKind::KeyRefused`]): tried again after a while.
    KeyRefused,
    /// The boot configuration was refused (by the agent, or too large to send).
    Refused,
    Wire(WireError),
}

/// Aborts the reader task when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn session(
    stream: BoxedStream,
    evidence: &Evidence,
    config: &mut LinkConfig,
    inputs: &mut Inputs,
) -> SessionEnd {
    let LinkConfig {
        boot_config,
        state,
        frame_timeout,
        ..
    } = config;
    let frame_timeout = *frame_timeout;
    let (mut reader, mut writer) = tokio::io::split(stream);
    match write_message(
        &mut writer,
        &Message::BootConfig(Box::new(boot_config.clone())),
    )
    .await
    {
        Ok(()) => {}
        Err(WireError::TooLarge { len }) => {
            // No agent could read it: a refusal as certain as the agent's own.
            let reason = format!(
                "the boot configuration is {len} bytes as a frame, over the limit of {MAX_FRAME_BODY}"
            );
            evidence.on_boot_refused(BootRefused::new(&boot_config.config, &reason));
            return SessionEnd::Refused;
        }
        Err(err) => return SessionEnd::Wire(err),
    }
    if boot_config.config.state.is_some()
        && let Some(link_state) = state.as_mut()
        && let Err(err) = offer_state(&mut writer, link_state, evidence).await
    {
        return SessionEnd::Wire(err);
    }
    // read_message is not cancel-safe, so it runs in its own task and hands over whole
    // messages through a channel, which is.
    let (tx, mut rx) = mpsc::channel(16);
    let _reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            // A frame that starts must complete within FRAME_TIMEOUT: a peer that announces a
            // body and sends part of it does not hold the link.
            let message = read_message_within(&mut reader, frame_timeout).await;
            let failed = message.is_err();
            if tx.send(message).await.is_err() || failed {
                break;
            }
        }
    }));
    let Inputs {
        nonces,
        challenges,
        stop,
    } = inputs;
    // Once the agent was asked to stop, its closing the link is the end that was asked for.
    let mut stopping = false;
    loop {
        // Biased: a stop first; then the operator's nonce refresh goes out before any user's
        // challenge waiting beside it, so users' challenges (bounded by their budget anyway)
        // never delay the operator's re-attestation by more than the one document the agent
        // may be making.
        tokio::select! {
            biased;
            () = stopped(stop), if !stopping => {
                stopping = true;
                if let Err(err) = write_message(&mut writer, &Message::Stop(StopRequest {})).await {
                    return SessionEnd::Wire(err);
                }
                info!("asked the agent to stop");
            }
            nonce = nonces.recv() => {
                let Some(nonce) = nonce else {
                    return SessionEnd::Shutdown;
                };
                boot_config.nonce = nonce.clone();
                let refresh = Message::NonceRefresh(NonceRefresh { nonce });
                if let Err(err) = write_message(&mut writer, &refresh).await {
                    return SessionEnd::Wire(err);
                }
                info!("nonce refresh sent to the agent");
            }
            message = rx.recv() => match message {
                None | Some(Err(WireError::Closed)) if stopping => {
                    // A snapshot cut off by the close is not kept.
                    if let Some(link_state) = state.as_mut() {
                        link_state.store.abort_incoming();
                    }
                    return SessionEnd::Shutdown;
                }
                Some(Ok(Message::Attestation(attestation))) => evidence.on_attestation(attestation),
                Some(Ok(Message::Report(report))) => evidence.on_report(report, now_ms()),
                Some(Ok(Message::ChallengeAnswer(answer))) => challenges.answered(answer),
                Some(Ok(Message::SnapshotChunk(chunk))) => match state.as_mut() {
                    Some(link_state) => store_chunk(link_state, &chunk, evidence),
                    None => {
                        return SessionEnd::Wire(WireError::Unexpected {
                            found: nautilus_protocol::wire::MessageKind::SnapshotChunk,
                            expected: "no snapshot: the configuration keeps no state",
                        });
                    }
                },
                Some(Ok(Message::BootRefused(refused))) => {
                    let kind = refused.kind;
                    evidence.on_boot_refused(refused);
                    if kind == RefusalKind::KeyRefused {
                        return SessionEnd::KeyRefused;
                    }
                    return SessionEnd::Refused;
                }
                Some(Ok(other)) => {
                    return SessionEnd::Wire(WireError::Unexpected {
                        found: other.kind(),
                        expected: "Attestation, Report, ChallengeAnswer or BootRefused",
                    });
                }
                Some(Err(err)) => {
                    if let Some(link_state) = state.as_mut() {
                        link_state.store.abort_incoming();
                    }
                    return SessionEnd::Wire(err);
                }
                None => {
                    if let Some(link_state) = state.as_mut() {
                        link_state.store.abort_incoming();
                    }
                    return SessionEnd::Wire(WireError::Closed);
                }
            },
            nonce = challenges.next() => {
                let Some(nonce) = nonce else {
                    return SessionEnd::Shutdown;
                };
                let challenge = Message::Challenge(Challenge { nonce });
                if let Err(err) = write_message(&mut writer, &challenge).await {
                    return SessionEnd::Wire(err);
                }
                tracing::debug!("user challenge sent to the agent");
            }
        }
    }
}

/// Send the [`StateOffer`] (credentials, newest stored snapshot) and that snapshot's chunks.
async fn offer_state<W>(
    writer: &mut W,
    state: &mut LinkState,
    evidence: &Evidence,
) -> Result<(), WireError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let credentials = state.credentials.load().await.unwrap_or_else(|e| {
        warn!(error = %e, "sealed state: no credentials relayed");
        None
    });
    let newest = state.store.newest().unwrap_or_else(|e| {
        warn!(error = %e, "sealed state: cannot list stored snapshots; offering none");
        None
    });
    let offer = StateOffer {
        credentials,
        snapshot: newest.as_ref().map(Stored::offer),
    };
    write_message(writer, &Message::StateOffer(offer)).await?;
    let Some(stored) = newest else {
        info!("sealed state: no snapshot stored, offering none");
        return Ok(());
    };
    let mut file = tokio::fs::File::open(&stored.path).await?;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() && offset + (filled as u64) < stored.bytes {
            let n = file.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let end = offset + filled as u64;
        if end < stored.bytes && filled < buf.len() {
            // The file shrank under us: the offer would not match what was announced.
            return Err(WireError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "stored snapshot shrank while offered",
            )));
        }
        let last = end >= stored.bytes;
        let chunk = SnapshotChunk {
            sequence: stored.sequence,
            offset,
            data: buf[..filled].to_vec(),
            last,
        };
        write_message(writer, &Message::SnapshotChunk(chunk)).await?;
        offset = end;
        if last {
            break;
        }
    }
    evidence.metrics().snapshots_offered.inc();
    info!(
        sequence = stored.sequence,
        bytes = stored.bytes,
        "sealed state: snapshot offered"
    );
    Ok(())
}

/// Store one chunk; count and log a stored or refused snapshot.
fn store_chunk(state: &mut LinkState, chunk: &SnapshotChunk, evidence: &Evidence) {
    let metrics = evidence.metrics();
    match state.store.receive(chunk) {
        Ok(None) => {}
        Ok(Some(stored)) => {
            metrics.snapshots_received.inc();
            metrics
                .last_snapshot_sequence
                .set(i64::try_from(stored.sequence).unwrap_or(i64::MAX));
            metrics
                .last_snapshot_timestamp_seconds
                .set(i64::try_from(now_ms() / 1000).unwrap_or(i64::MAX));
            if let Ok(list) = state.store.list() {
                metrics
                    .snapshots_stored
                    .set(i64::try_from(list.len()).unwrap_or(i64::MAX));
            }
            info!(
                sequence = stored.sequence,
                bytes = stored.bytes,
                "sealed state: snapshot stored"
            );
        }
        Err(e) => {
            metrics
                .snapshots_refused
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: e.label().to_owned(),
                })
                .inc();
            warn!(sequence = chunk.sequence, error = %e, "sealed state: snapshot not stored");
        }
    }
}
