//! The control link to the sidecar (`--listen`, vsock 5000), and the [`Agent`] that it drives.
//!
//! ```text
//! sidecar ──BootConfig──► agent   boot once: keys, CAs, attestation, k3s files, webhook,
//!                                 control plane under supervision, prober + reporter
//! sidecar ◄─Attestation── agent   the latest evidence (again after every NonceRefresh)
//! sidecar ◄─Report──────  agent   signed, sequence +1, after every probe round and change
//! sidecar ──NonceRefresh─► agent  attest again: same key and binding, new nonce
//! sidecar ──Challenge────► agent  a user's nonce: one ChallengeAnswer, evidence unchanged
//! ```
//!
//! The agent boots once per process. A later connection (the sidecar restarted) must send the
//! same configuration; it gets the latest attestation (re-attested if its nonce differs) and the
//! reports that follow. Another configuration is refused and logged. A configuration whose
//! values cannot boot (`BootError::refuses_config`) is answered with `BootRefused` and the
//! reason before the connection closes; the next BootConfig may boot afresh. Any frame error — wrong
//! version, unknown kind, oversized, malformed or unknown-field JSON, a message out of place —
//! closes that connection with a logged reason; the agent keeps serving the next one.
//!
//! [`Agent::run`] binds the control link and starts the API forwarder ([`crate::forwarder`]);
//! the first BootConfig boots ([`crate::boot`]), which starts the reporter
//! ([`crate::reporter`]) whose signed reports every connection streams.

use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::bounded::{BoundedListener, Conn, Limits, LogLimit, Unobserved};
use nautilus_protocol::transport::{self, Endpoint, Listener, TransportError};
use nautilus_protocol::wire::{
    self, BootConfig, BootRefused, MAX_SNAPSHOT_BYTES, Message, SNAPSHOT_CHUNK_BYTES,
    SnapshotAssembly, SnapshotChunk, WireError,
};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{Instrument as _, info, info_span, warn};

use crate::boot::{BootError, BootOptions, Booted};
use crate::budget::Counters;
use crate::errors::error_chain;
use crate::forwarder::ApiForwarder;
use crate::state::{Offered, SealedSnapshot};

/// How long a new connection may take to send its BootConfig.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds of the control listener. Only the sidecar connects (one connection, a second while
/// it reconnects), so 8 is plenty. Once a frame starts it must complete within
/// [`wire::FRAME_TIMEOUT`]; between frames the sidecar may rightly stay quiet, but the agent
/// writes a report every probe interval (at most 300 s), so a connection that moves no byte
/// for 15 minutes is dead, or its reader stopped reading.
pub const CONTROL_LIMITS: Limits = Limits {
    max_connections: 8,
    handshake_timeout: FIRST_MESSAGE_TIMEOUT,
    header_timeout: wire::FRAME_TIMEOUT,
    body_timeout: wire::FRAME_TIMEOUT,
    idle_timeout: Duration::from_secs(900),
};

/// Why the agent could not listen, boot or serve a connection.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Listening failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A frame could not be read or written.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The first message did not arrive in time.
    #[error("no BootConfig within {0:?}")]
    FirstMessageTimeout(Duration),
    /// A second BootConfig differs from the one the agent booted with.
    #[error("boot config {offered} differs from the running {running}; refusing to reboot")]
    ConfigMismatch {
        /// Digest of the offered configuration.
        offered: String,
        /// Digest of the running one.
        running: String,
    },
    /// The boot (or a re-attestation) failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The sidecar's state offer broke the protocol, or could not be stored.
    #[error("state offer: {0}")]
    Offer(String),
}

/// Everything the agent runs with that does not come from the BootConfig.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Control link endpoint.
    pub listen: Endpoint,
    /// Endpoint forwarded to the API server.
    pub api_listen: Endpoint,
    /// What a boot runs with.
    pub boot: BootOptions,
}

/// The agent: the control link, the API forwarder, and the one boot of this process.
pub struct Agent {
    options: AgentOptions,
    booted: Mutex<Option<Arc<Booted>>>,
    /// Where the forwarder sends connections: the booted API server, `None` before the boot.
    api_target: watch::Sender<Option<String>>,
    forwarder: std::sync::Mutex<Option<ApiForwarder>>,
    /// The sidecar sent [`Message::Stop`].
    stop: tokio::sync::Notify,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("listen", &self.options.listen)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent that has not booted yet.
    pub fn new(options: AgentOptions) -> Arc<Self> {
        Arc::new(Self {
            options,
            booted: Mutex::new(None),
            api_target: watch::channel(None).0,
            forwarder: std::sync::Mutex::new(None),
            stop: tokio::sync::Notify::new(),
        })
    }

    /// Returns once the sidecar asked the agent to stop ([`Message::Stop`]): the caller then
    /// stops as on SIGTERM ([`Agent::shutdown`]) while the control connection keeps running,
    /// so the last snapshot travels on it, and exits, which closes the link.
    pub async fn stop_requested(&self) {
        self.stop.notified().await;
    }

    /// Bind the control link and the API forwarder, then serve until the process ends.
    pub async fn run(self: Arc<Self>) -> Result<(), LinkError> {
        let control = transport::bind(&self.options.listen).await?;
        let api = transport::bind(&self.options.api_listen).await?;
        info!(listen = %control.endpoint(), api_listen = %api.endpoint(), "agent listening");
        let forwarder = ApiForwarder::start(api, self.api_target.subscribe());
        *self
            .forwarder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(forwarder);
        self.serve_control(control).await
    }

    /// Accept control connections one after another, each served in its own task, within
    /// [`CONTROL_LIMITS`].
    pub async fn serve_control(self: Arc<Self>, listener: Listener) -> Result<(), LinkError> {
        let listener =
            BoundedListener::new(listener, "control", CONTROL_LIMITS, Arc::new(Unobserved));
        loop {
            let conn = listener.accept().await;
            let agent = Arc::clone(&self);
            let span = info_span!("control", peer = %conn.peer());
            tokio::spawn(
                async move {
                    info!("sidecar connected");
                    match agent.serve_connection(conn).await {
                        Ok(()) => info!("sidecar disconnected"),
                        Err(e) => warn!(reason = %error_chain(&e), "control connection closed"),
                    }
                }
                .instrument(span),
            );
        }
    }

    /// Stop the API forwarder, and the boot's control plane (no orphan), webhook and reporter.
    pub async fn shutdown(&self) {
        if let Some(forwarder) = self
            .forwarder
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            forwarder.stop();
        }
        let booted = self.booted.lock().await.take();
        if let Some(booted) = booted {
            booted.stop().await;
        }
    }

    async fn serve_connection(self: Arc<Self>, stream: Conn) -> Result<(), LinkError> {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, wire::read_message(&mut reader))
            .await
            .map_err(|_| LinkError::FirstMessageTimeout(FIRST_MESSAGE_TIMEOUT))??;
        let boot = match first {
            Message::BootConfig(boot) => boot,
            other => {
                return Err(WireError::Unexpected {
                    found: other.kind(),
                    expected: "BootConfig",
                }
                .into());
            }
        };
        // Sealed state: the sidecar's offer follows the BootConfig.
        let offered = match boot.config.state {
            Some(_) => Some(receive_offer(&mut reader, &self.options.boot.work_dir).await?),
            None => None,
        };
        let booted = match self.boot_or_join(&boot, offered).await {
            Ok(booted) => booted,
            Err(LinkError::Boot(e)) if e.refuses_config() => {
                // Say why before closing, so the operator can put it in the status; the same
                // configuration would be refused again, and the sidecar does not resend it.
                let kind = match &e {
                    BootError::State(state) => state.refusal_kind().unwrap_or_default(),
                    _ => wire::RefusalKind::Config,
                };
                let refused = BootRefused::new(&boot.config, &error_chain(&e)).of_kind(kind);
                warn!(digest = %refused.config_digest, kind = ?refused.kind, reason = %refused.reason, "boot configuration refused");
                wire::write_message(&mut writer, &Message::BootRefused(refused)).await?;
                return Err(LinkError::Boot(e));
            }
            Err(e) => return Err(e),
        };

        // Reads run in their own task: a frame half-read must not be dropped by a select.
        let (incoming_tx, mut incoming) = mpsc::channel::<Result<Message, WireError>>(4);
        let read_task = tokio::spawn(async move {
            loop {
                // A frame that starts must complete within FRAME_TIMEOUT; a nonce outside
                // 1..=512 bytes is refused while parsing, as the sidecar refuses it.
                let message = wire::read_message_within(&mut reader, wire::FRAME_TIMEOUT).await;
                let stop = message.is_err();
                if incoming_tx.send(message).await.is_err() || stop {
                    break;
                }
            }
        });
        let result = async {
            let mut snapshots = booted.keeper.as_ref().map(|k| k.snapshots());
            let mut attestations = booted.attestations();
            let mut reports = booted.reporter.subscribe();
            // The nonce to attest next, within the refresh rate; a later refresh replaces it.
            // A reconnecting sidecar's new nonce is attested before the first message when
            // the rate allows, so its first evidence answers it.
            let mut refresh = RefreshSlot::default();
            if !booted.attested_with(&boot.nonce) {
                refresh.arrived(boot.nonce.clone(), &booted);
                refresh.attest_if_due(&booted).await?;
            }
            let evidence = attestations.borrow_and_update().clone();
            if let Some((_, evidence)) = evidence {
                wire::write_message(&mut writer, &Message::Attestation(evidence)).await?;
            }
            // Reports made before this connection are stale for it; ask for a fresh one now.
            reports.borrow_and_update();
            booted.reporter.report_now();
            let refused_challenges = LogLimit::default();
            loop {
                refresh.attest_if_due(&booted).await?;
                tokio::select! {
                    () = tokio::time::sleep_until(refresh.due), if refresh.nonce.is_some() => {}
                    message = incoming.recv() => match message {
                        None | Some(Err(WireError::Closed)) => return Ok(()),
                        Some(Err(e)) => return Err(LinkError::Wire(e)),
                        Some(Ok(Message::NonceRefresh(nonce))) => {
                            info!(nonce_len = nonce.nonce.len(), "nonce refresh");
                            refresh.arrived(nonce.nonce, &booted);
                        }
                        Some(Ok(Message::Stop(_))) => {
                            info!("the sidecar asks the agent to stop");
                            self.stop.notify_one();
                        }
                        Some(Ok(Message::Challenge(challenge))) => {
                            if !booted.admit_challenge() {
                                if let Some(suppressed) = refused_challenges.check() {
                                    warn!(suppressed, "user challenge over the agent's rate: dropped");
                                }
                                continue;
                            }
                            if let Some(answer) = crate::challenge::answer(&booted, challenge).await {
                                Counters::count(&booted.counters.challenges_answered);
                                let answer = Message::ChallengeAnswer(answer);
                                wire::write_message(&mut writer, &answer).await?;
                            }
                        }
                        Some(Ok(other)) => {
                            return Err(WireError::Unexpected {
                                found: other.kind(),
                                expected: "NonceRefresh, Challenge or Stop",
                            }
                            .into());
                        }
                    },
                    changed = attestations.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let evidence = attestations.borrow_and_update().clone();
                        if let Some((_, evidence)) = evidence {
                            wire::write_message(&mut writer, &Message::Attestation(evidence)).await?;
                        }
                    }
                    Some(snapshot) = next_snapshot(&mut snapshots) => {
                        send_snapshot(&mut writer, &snapshot).await?;
                        if let Some(keeper) = &booted.keeper {
                            keeper.mark_delivered(snapshot.sequence);
                        }
                    }
                    changed = reports.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        let report = reports.borrow_and_update().clone();
                        if let Some(report) = report {
                            wire::write_message(&mut writer, &Message::Report(report)).await?;
                        }
                    }
                }
            }
        }
        .await;
        read_task.abort();
        result
    }

    async fn boot_or_join(
        &self,
        boot: &BootConfig,
        offered: Option<Offered>,
    ) -> Result<Arc<Booted>, LinkError> {
        let mut slot = self.booted.lock().await;
        if let Some(booted) = slot.as_ref() {
            // A running boot restored already: what a reconnecting sidecar offers is not used.
            if let Some((_, path)) = offered.and_then(|o| o.snapshot) {
                let _ = std::fs::remove_file(path);
            }
            if booted.config != boot.config {
                return Err(LinkError::ConfigMismatch {
                    offered: boot.config.digest_hex(),
                    running: booted.digest_hex.clone(),
                });
            }
            // A nonce this boot has not attested is re-attested by the connection, within the
            // refresh rate: a host that reconnects in a loop gets no more documents than one
            // that sends refreshes.
            info!(digest = %booted.digest_hex, "sidecar reconnected to the running boot");
            return Ok(Arc::clone(booted));
        }
        let booted = Arc::new(Booted::start(&self.options.boot, boot, offered).await?);
        self.api_target
            .send_replace(Some(booted.api_target.clone()));
        *slot = Some(Arc::clone(&booted));
        Ok(booted)
    }
}

/// Read the sidecar's [`wire::StateOffer`] and the offered snapshot's chunks into a file under
/// `work_dir/state` (enclave memory), checking contiguity and size as they come.
async fn receive_offer<R>(reader: &mut R, work_dir: &std::path::Path) -> Result<Offered, LinkError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncWriteExt as _;
    let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, wire::read_message(reader))
        .await
        .map_err(|_| LinkError::FirstMessageTimeout(FIRST_MESSAGE_TIMEOUT))??;
    let offer = match first {
        Message::StateOffer(offer) => offer,
        other => {
            return Err(WireError::Unexpected {
                found: other.kind(),
                expected: "StateOffer",
            }
            .into());
        }
    };
    let Some(announced) = offer.snapshot else {
        return Ok(Offered {
            credentials: offer.credentials,
            snapshot: None,
        });
    };
    let dir = work_dir.join("state");
    let offer_err = |what: &str, e: std::io::Error| LinkError::Offer(format!("{what}: {e}"));
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| offer_err("creating the state directory", e))?;
    let path = dir.join(format!(
        "offered-{}-{}.snap",
        announced.sequence,
        std::process::id()
    ));
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(|e| offer_err("creating the offered snapshot's file", e))?;
    let mut assembly = SnapshotAssembly::new(MAX_SNAPSHOT_BYTES, Some(announced.bytes));
    let received = async {
        loop {
            let chunk = match wire::read_message_within(reader, wire::FRAME_TIMEOUT).await? {
                Message::SnapshotChunk(chunk) => chunk,
                other => {
                    return Err(LinkError::Wire(WireError::Unexpected {
                        found: other.kind(),
                        expected: "SnapshotChunk",
                    }));
                }
            };
            if chunk.sequence != announced.sequence {
                return Err(LinkError::Offer(format!(
                    "chunk of snapshot {} while {} was offered",
                    chunk.sequence, announced.sequence
                )));
            }
            let last = assembly
                .accept(&chunk)
                .map_err(|e| LinkError::Offer(e.to_string()))?;
            file.write_all(&chunk.data)
                .await
                .map_err(|e| offer_err("writing the offered snapshot", e))?;
            if last {
                file.flush()
                    .await
                    .map_err(|e| offer_err("writing the offered snapshot", e))?;
                return Ok(());
            }
        }
    }
    .await;
    if let Err(e) = received {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e);
    }
    info!(
        sequence = announced.sequence,
        bytes = announced.bytes,
        "sealed state: snapshot offered"
    );
    Ok(Offered {
        credentials: offer.credentials,
        snapshot: Some((announced.sequence, path)),
    })
}

/// The next sealed snapshot to send, once one is published (pending forever without state).
async fn next_snapshot(
    snapshots: &mut Option<watch::Receiver<Option<SealedSnapshot>>>,
) -> Option<SealedSnapshot> {
    match snapshots {
        None => std::future::pending().await,
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The keeper is gone (the boot stopped): nothing more will come.
                *snapshots = None;
                return None;
            }
            rx.borrow_and_update().clone()
        }
    }
}

/// A connection's nonce refresh waiting for its token of the refresh rate: only the latest
/// waiting nonce is attested (the operator accepts its latest challenge, and the one before
/// for a while), so refreshes sent faster than the rate cost one document per token.
#[derive(Debug)]
struct RefreshSlot {
    nonce: Option<Vec<u8>>,
    /// When to try again for a token.
    due: tokio::time::Instant,
    /// Whether the waiting nonce was counted as deferred already.
    counted: bool,
}

impl Default for RefreshSlot {
    fn default() -> Self {
        Self {
            nonce: None,
            due: tokio::time::Instant::now(),
            counted: false,
        }
    }
}

/// Stream a sealed snapshot file to the sidecar as [`SnapshotChunk`]s.
async fn send_snapshot<W>(writer: &mut W, snapshot: &SealedSnapshot) -> Result<(), LinkError>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let mut file = tokio::fs::File::open(&snapshot.path)
        .await
        .map_err(|e| LinkError::Offer(format!("opening sealed snapshot: {e}")))?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = file
                .read(&mut buf[filled..])
                .await
                .map_err(|e| LinkError::Offer(format!("reading sealed snapshot: {e}")))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        let last = offset + filled as u64 >= snapshot.bytes || filled < buf.len();
        let chunk = SnapshotChunk {
            sequence: snapshot.sequence,
            offset,
            data: buf[..filled].to_vec(),
            last,
        };
        wire::write_message(writer, &Message::SnapshotChunk(chunk)).await?;
        offset += filled as u64;
        if last {
            return Ok(());
        }
    }
}

impl RefreshSlot {
    /// A refresh for `nonce` arrived: it replaces one still waiting (that one was counted as
    /// deferred when it first waited).
    fn arrived(&mut self, nonce: Vec<u8>, booted: &Booted) {
        if self.nonce.replace(nonce).is_some() && !self.counted {
            Counters::count(&booted.counters.nonce_refreshes_deferred);
        }
        self.counted = false;
        self.due = tokio::time::Instant::now();
    }

    /// Attest the waiting nonce if a token is there; otherwise note when one will be (a nonce
    /// that waits is counted as deferred once).
    async fn attest_if_due(&mut self, booted: &Booted) -> Result<(), LinkError> {
        let Some(nonce) = self.nonce.take() else {
            return Ok(());
        };
        match booted.refresh_token() {
            Ok(()) => {
                booted.attest(&nonce).await.map_err(BootError::from)?;
                Counters::count(&booted.counters.nonce_refreshes);
                Ok(())
            }
            Err(wait) => {
                if !self.counted {
                    Counters::count(&booted.counters.nonce_refreshes_deferred);
                    self.counted = true;
                }
                self.due = tokio::time::Instant::now() + wait.min(Duration::from_secs(3600));
                self.nonce = Some(nonce);
                Ok(())
            }
        }
    }
}
